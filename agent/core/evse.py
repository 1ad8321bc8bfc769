"""One EVSE: the session life cycle and the safety invariants, independent of OCPP versions.

Every input (pilot change, fault, authorization, command) mutates state under one lock and
then calls :meth:`EvseController._reconcile`, which derives the outputs from the state alone:
the PWM offer, the contactor and the connector status.  Deriving instead of sequencing means
no combination of events can leave the contactor closed when an invariant says open:

    contactor closed  <=>  EV asks (C/D) and session authorized and energy allowed
                           and EVSE operative and no blocking fault and offer >= minimum
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from agent.clock import Clock
from agent.core.model import (
    BLOCKING_FAULTS,
    AuthResult,
    ConnectorStatus,
    CoreObserver,
    EvseSnapshot,
    Session,
    StopReason,
    Token,
    TxPoint,
    TxRecord,
)
from agent.core.settings import Settings
from agent.storage import Storage, StorageError
from hal.interfaces import (
    EvseHardware,
    FaultKind,
    HalError,
    IndicatorState,
    MeterReading,
    PilotState,
)

log = logging.getLogger("cp_agent.evse")

_INDICATOR = {
    ConnectorStatus.AVAILABLE: IndicatorState.AVAILABLE,
    ConnectorStatus.PREPARING: IndicatorState.OCCUPIED,
    ConnectorStatus.CHARGING: IndicatorState.CHARGING,
    ConnectorStatus.SUSPENDED_EV: IndicatorState.OCCUPIED,
    ConnectorStatus.SUSPENDED_EVSE: IndicatorState.OCCUPIED,
    ConnectorStatus.FINISHING: IndicatorState.OCCUPIED,
    ConnectorStatus.RESERVED: IndicatorState.OCCUPIED,
    ConnectorStatus.UNAVAILABLE: IndicatorState.UNAVAILABLE,
    ConnectorStatus.FAULTED: IndicatorState.FAULT,
}


NOMINAL_VOLTAGE = 230.0  # converts a limit in W to amps per phase
# How long an EV may take to answer a raised offer (B -> C) before SuspendedEV is reported.
EV_ANSWER_GRACE_S = 2.0


async def _settled() -> None:
    return None


def _default_points() -> frozenset[TxPoint]:
    return frozenset({TxPoint.POWER_PATH_CLOSED})


@dataclass
class TxRules:
    """When transactions start and stop: the active OCPP version's rules (1.6 fixed points
    with StopTransactionOnEVSideDisconnect, 2.0.1 TxStartPoint / TxStopPoint)."""

    start_points: Callable[[], frozenset[TxPoint]] = field(default=_default_points)
    stop_points: Callable[[], frozenset[TxPoint]] = field(default=_default_points)


class EvseController:
    """State and outputs of one EVSE (with one connector)."""

    def __init__(self, hw: EvseHardware, *, connector_id: int = 1, max_current_a: float,
                 min_current_a: float = 6.0, storage: Storage, clock: Clock,
                 observer: Callable[[], CoreObserver], settings: Settings | None = None,
                 settle: Callable[[], Awaitable[None]] | None = None) -> None:
        self.hw = hw
        self.id = hw.evse_id
        self.connector_id = connector_id
        self.max_current_a = min(max_current_a, hw.max_current_a)
        self.min_current_a = min_current_a
        self._storage = storage
        self._clock = clock
        self._observer = observer
        # Serializes every input of this EVSE (not the connector lock: that is ``hw.lock``).
        self.mutex = asyncio.Lock()
        self.session: Session | None = None
        self.faults: dict[FaultKind, str] = {}
        self.operative = storage.get_setting(f"core.evse.{self.id}.operative") != "0"
        self.pending_operative: bool | None = None  # ChangeAvailability scheduled after the tx
        self._settings = settings
        self.limits: dict[str, float] = {}  # amps per limit source (smart charging, load mgmt)
        self.reserved_for: dict | None = None
        self.reading: MeterReading | None = None
        self.status = ConnectorStatus.UNAVAILABLE
        self._last_reported: tuple[ConnectorStatus, FaultKind | None] | None = None
        self._report_task: asyncio.Task[None] | None = None
        self._settle: Callable[[], Awaitable[None]] = settle or _settled
        self._connection_timer: asyncio.Task[None] | None = None
        self.rules = TxRules()
        self.tx_changed = asyncio.Event()  # set whenever a transaction starts or ends
        self.tx_listeners: list[Callable[[], None]] = []  # called then too (smart charging)
        self.offer_raised_at: float | None = None  # monotonic time the PWM offer last rose
        self.hold_locked = False
        self.hold_token: str | None = None
        self._ev_was_connected = False  # pilot connected at the last on_pilot
        self._logged_pilot: PilotState | None = None  # the pilot state the log last told
        # Observers of what the EVSE does to its hardware (demo timeline, latency benchmark).
        self.trace: Callable[[int, str, dict], None] | None = None

    # ------------------------------------------------------------------ views

    @property
    def pilot(self):  # noqa: ANN201 - PilotState
        return self.hw.ev.pilot_state()

    @property
    def ev_connected(self) -> bool:
        return self.pilot.connected

    @property
    def blocking_fault(self) -> FaultKind | None:
        for kind in self.faults:
            if kind in BLOCKING_FAULTS:
                return kind
        return None

    @property
    def limit_a(self) -> float:
        """What the EVSE may offer now: its maximum, capped by every limit source."""
        return min(self.max_current_a, *self.limits.values()) if self.limits \
            else self.max_current_a

    @property
    def limit_source(self) -> str:
        """Which source sets :attr:`limit_a` ("evse" when none is below the EVSE maximum)."""
        best, source = self.max_current_a, "evse"
        for name, amps in self.limits.items():
            if amps < best:
                best, source = amps, name
        return source

    @property
    def offered_a(self) -> float:
        """The current offered to the EV on the pilot right now (0: none)."""
        return self.hw.ev.current_limit

    @property
    def phases(self) -> int:
        return max(1, self.hw.phases)

    @property
    def has_lock(self) -> bool:
        return self.hw.lock is not None

    @property
    def tx(self) -> TxRecord | None:
        s = self.session
        return s.tx if s is not None and s.ended_reason is None else None

    def energy_wh(self) -> float | None:
        tx = self.tx
        if tx is None or self.reading is None:
            return None
        return max(0.0, self.reading.energy_import_wh - tx.meter_start_wh)

    def _setting(self, name: str, default: object) -> object:
        settings = self._settings
        return settings.get(name, default) if settings is not None else default

    def snapshot(self) -> EvseSnapshot:
        tx = self.tx
        s = self.session
        fault = self.fault
        return EvseSnapshot(
            evse_id=self.id, connector_id=self.connector_id, status=self.status,
            pilot=self.pilot, contactor_closed=self.hw.contactor.commanded_closed,
            offered_a=self.offered_a, limit_a=self.limit_a, limit_source=self.limit_source,
            operative=self.operative, faults=tuple(self.faults),
            token=self.session.token.id if self.session and self.session.token else None,
            tx_local_id=tx.local_id if tx else None,
            tx_remote_id=tx.remote_id if tx else None,
            energy_wh=self.energy_wh(),
            power_w=self.reading.power_w if self.reading else None,
            reading=self.reading, min_current_a=self.min_current_a, phases=self.phases,
            has_lock=self.has_lock, authorized=bool(s and s.authorized),
            charging_state=self.charging_state(), blocking_fault=self.blocking_fault,
            fault=fault, fault_detail=self.faults.get(fault, "") if fault else "", tx=tx,
            remote_start_id=s.remote_start_id if s else None,
            deauth_reason=s.deauth_reason if s else None,
        )

    @property
    def fault(self) -> FaultKind | None:
        """The fault to report: the blocking one first, else any other (e.g. the reader)."""
        return self.blocking_fault or next(iter(self.faults), None)

    def charging_state(self) -> str:
        """What the energy flow is doing (2.0.1 ChargingStateEnumType names)."""
        if not self.ev_connected:
            return "Idle"
        if self.hw.contactor.commanded_closed and self.pilot.wants_energy:
            return "Charging"
        s = self.session
        if s is None or not s.authorized:
            return "EVConnected"
        if self.offered_a >= self.min_current_a and not self.pilot.wants_energy:
            return "SuspendedEV"
        return "SuspendedEVSE"

    # ------------------------------------------------------------------ derivations

    def _offer(self) -> float:
        s = self.session
        if (s is None or not s.authorized or not s.energy_allowed or s.ended_reason is not None
                or not self.operative or self.blocking_fault is not None
                or not self.ev_connected):
            return 0.0
        limit = self.limit_a
        return limit if limit >= self.min_current_a else 0.0

    def _want_locked(self) -> bool:
        """The plug stays locked while an authorized session has the EV connected."""
        if self.hold_locked:
            return True
        s = self.session
        return (s is not None and s.authorized and s.ended_reason is None
                and self.ev_connected)

    async def _drive_lock(self, locked: bool) -> None:
        lock = self.hw.lock
        if lock is None or lock.locked == locked:
            return
        try:
            ok = await asyncio.wait_for(lock.set_locked(locked), 5.0)
        except (TimeoutError, HalError):
            ok = False
        if ok:
            self._trace("lock", locked=locked)
        else:
            self._raise_fault(FaultKind.LOCK,
                              f"connector lock did not {'lock' if locked else 'unlock'}")

    def _lock_engaged(self) -> bool:
        return self.hw.lock is None or self.hw.lock.locked

    def _derive_status(self) -> ConnectorStatus:
        s = self.session
        if self.blocking_fault is not None:
            return ConnectorStatus.FAULTED
        if s is not None and s.tx is not None and s.ended_reason is None:
            if self.hw.contactor.commanded_closed and self.pilot.wants_energy:
                return ConnectorStatus.CHARGING
            if self.offered_a >= self.min_current_a and self.ev_connected:
                return ConnectorStatus.SUSPENDED_EV
            if not self.ev_connected:
                # Transaction kept open across an unplug (StopTransactionOnEVSideDisconnect
                # false): the EVSE is waiting for the EV, not offering energy.
                return ConnectorStatus.SUSPENDED_EVSE
            return ConnectorStatus.SUSPENDED_EVSE
        if s is not None and s.ended_reason is not None and self.ev_connected:
            return ConnectorStatus.FINISHING
        if not self.operative:
            return ConnectorStatus.UNAVAILABLE
        if self.ev_connected or (s is not None and s.authorized):
            return ConnectorStatus.PREPARING
        if self.reserved_for is not None:
            return ConnectorStatus.RESERVED
        return ConnectorStatus.AVAILABLE

    # ------------------------------------------------------------------ the one output path

    def _trace(self, what: str, **detail: object) -> None:
        if self.trace is not None:
            self.trace(self.id, what, detail)

    async def _set_contactor(self, closed: bool) -> None:
        was_closed = self.hw.contactor.commanded_closed
        try:
            await self.hw.contactor.set(closed)
            self._trace("contactor", closed=closed)
            if closed != was_closed:
                log.info("evse %s: contactor %s", self.id,
                         f"closed ({self.offered_a:g} A offered)" if closed else "opened")
        except HalError as exc:
            self._raise_fault(exc.kind, str(exc))
            if closed:
                # Closing failed: make sure we are not left half-closed.
                try:
                    await self.hw.contactor.set(False)
                except HalError:
                    pass

    async def _reconcile(self) -> None:
        """Drive the outputs from the state. Must be called with ``self.mutex`` held."""
        try:
            offer = self._offer()
            want_closed = offer >= self.min_current_a and self.pilot.wants_energy
            if not want_closed and self.hw.contactor.commanded_closed:
                await self._set_contactor(False)
            if self.offered_a != offer:
                if offer > self.offered_a:
                    self.offer_raised_at = self._clock.monotonic()
                try:
                    self._trace("pwm", amps=offer)
                    await self.hw.ev.set_current_limit(offer)
                except HalError as exc:
                    self._raise_fault(exc.kind, str(exc))
                    offer = 0.0
                    want_closed = False
            if offer <= 0 and self.hw.ev.power_setpoint is not None:
                await self.hw.ev.set_power_setpoint(None)  # a setpoint ends with the offer
            # Energy never flows into an unlocked plug (IEC 61851-1): lock first, and unlock
            # only once the contactor is open (it was opened above when not wanted).
            await self._drive_lock(self._want_locked())
            # The fault handling above may have changed the picture: ask again before closing.
            if (want_closed and not self.hw.contactor.commanded_closed
                    and self._offer() >= self.min_current_a and self.pilot.wants_energy
                    and self._lock_engaged()):
                await self._set_contactor(True)
                if self.hw.contactor.commanded_closed and self.session is not None:
                    self._observer().session_event(self.id, "power_path_closed", {})
            self._check_tx_points()
        except Exception:
            log.exception("evse %s: error in EVSE logic; opening the contactor", self.id)
            await self.emergency_open()
            raise
        finally:
            self._update_status()

    async def emergency_open(self) -> None:
        """Open the contactor and stop the PWM whatever else is going on (invariant 1)."""
        if self.hw.contactor.commanded_closed:
            log.info("evse %s: contactor opened at once (safety stop)", self.id)
        actions = [lambda: self.hw.contactor.set(False),
                   lambda: self.hw.ev.set_current_limit(0)]
        if self.hw.ev.power_setpoint is not None:
            actions.append(lambda: self.hw.ev.set_power_setpoint(None))
        for action in actions:
            try:
                await action()
            except Exception as exc:  # noqa: BLE001 - nothing may stop the opening
                log.error("evse %s: emergency open: %s", self.id, exc)

    def _update_status(self) -> None:
        new = self._derive_status()
        if new != self.status:
            self._trace("status", status=new.value)
        self.status = new
        if self.hw.indicator is not None:
            try:
                self.hw.indicator.show(_INDICATOR[self.status])
            except Exception as exc:  # noqa: BLE001 - an LED is never worth a crash
                log.warning("evse %s: indicator: %s", self.id, exc)
        if (self.status, self.fault) != self._last_reported and self._report_task is None:
            self._report_task = asyncio.get_running_loop().create_task(
                self._report_settled(), name=f"evse{self.id}-status")

    async def _report_settled(self) -> None:
        """Report the status the EVSE settles in, not every step on the way there.

        An offer makes the EV answer a moment later (B -> C), so a session start would show
        SuspendedEV for a millisecond before Charging. The report waits until the HAL events
        received so far are handled and, for a SuspendedEV right after the offer rose, until
        the EV had ``EV_ANSWER_GRACE_S`` to take it.
        """
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._settle(), 1.0)
                left = self._grace_left()
                if left <= 0:
                    break
                await self._clock.sleep(left)
            key = (self.status, self.fault)
            if key != self._last_reported:
                self._last_reported = key
                self._observer().status_changed(self.snapshot(), self.fault)
        finally:
            self._report_task = None

    def _grace_left(self) -> float:
        raised = self.offer_raised_at
        if self.status != ConnectorStatus.SUSPENDED_EV or raised is None:
            return 0.0
        return raised + EV_ANSWER_GRACE_S - self._clock.monotonic()

    async def settled_snapshot(self) -> EvseSnapshot:
        """The EVSE once the input in progress (if any) has driven its outputs.

        Adapters learn of a session event while the input that caused it is still being
        handled; what they report about it must be the state that input leads to.
        """
        async with self.mutex:
            return self.snapshot()

    async def reported(self) -> None:
        """Wait until the current status has been reported (control socket, tests)."""
        task = self._report_task
        if task is not None:
            await asyncio.shield(task)

    def close(self) -> None:
        task = self._report_task
        if task is not None:
            task.cancel()

    # ------------------------------------------------------------------ transactions

    def _points_reached(self) -> set[TxPoint]:
        s = self.session
        reached: set[TxPoint] = set()
        if self.ev_connected:
            reached.add(TxPoint.EV_CONNECTED)
        if s is not None and s.authorized:
            reached.add(TxPoint.AUTHORIZED)
            if self.ev_connected:
                reached.add(TxPoint.POWER_PATH_CLOSED)
        if self.hw.contactor.commanded_closed and self.pilot.wants_energy:
            reached.add(TxPoint.ENERGY_TRANSFER)
        return reached

    def _check_tx_points(self) -> None:
        s = self.session
        reached = self._points_reached()
        if s is None:
            return
        if s.tx is None and s.ended_reason is None:
            hit = reached & self.rules.start_points()
            if hit:
                s.tx_points_seen = set(reached)
                self._start_tx(sorted(hit)[0])
        elif s.tx is not None and s.ended_reason is None:
            # A stop point ends the transaction when it is no longer valid, so only once it
            # has been reached (2.0.1: TxStartPoint Authorized with TxStopPoint EVConnected
            # must not end a transaction before the EV was ever plugged in).
            seen = s.tx_points_seen
            seen |= reached
            missing = (self.rules.stop_points() & seen) - reached
            if missing:
                if TxPoint.EV_CONNECTED in missing or (
                        TxPoint.POWER_PATH_CLOSED in missing and not self.ev_connected):
                    reason = StopReason.EV_DISCONNECTED
                elif s.deauth_reason is not None:
                    reason = s.deauth_reason
                elif TxPoint.ENERGY_TRANSFER in missing:
                    reason = StopReason.STOPPED_BY_EV
                else:
                    reason = StopReason.LOCAL
                self._end_tx(reason)

    def _meter_wh(self) -> float:
        return self.reading.energy_import_wh if self.reading is not None else 0.0

    def _storage_failed(self, exc: StorageError, doing: str) -> None:
        """A transaction change could not be made durable: fault the EVSE, energy stays off.

        Charging on without a journal would be exactly the lost transaction this agent exists
        to prevent; the fault (InternalError towards the CSMS) lasts until a restart.
        """
        log.error("evse %s: %s failed, EVSE taken out of service: %s", self.id, doing, exc)
        self._raise_fault(FaultKind.INTERNAL, f"state storage failed ({exc.kind})")

    def _start_tx(self, trigger: TxPoint) -> None:
        s = self.session
        assert s is not None
        token = s.token
        now = self._clock.stamp()
        rec = TxRecord(
            local_id=uuid.uuid4().hex, evse_id=self.id, connector_id=self.connector_id,
            id_token=token.id if token else "", token_type=token.type if token else None,
            started_at=now, meter_start_wh=self._meter_wh(), remote_id=None,
            last_meter_wh=self._meter_wh(), last_meter_at=now, stopped_at=None,
            stop_reason=None, meter_stop_wh=None, seq_no=0,
            closed=False, remote_start_id=s.remote_start_id,
            parent=s.auth.parent if s.auth else None,
            auth_source=s.auth.source if s.auth else None,
        )
        try:
            with self._storage.atomic():
                self._storage.tx_begin(rec)
                s.tx = rec
                self._observer().transaction_started(rec, self.snapshot(), trigger)
        except BaseException as exc:
            s.tx = None  # rolled back: memory must not claim a transaction the journal lacks
            if isinstance(exc, StorageError):
                self._storage_failed(exc, "recording the start of a transaction")
            raise
        self.tx_changed.set()
        for listener in self.tx_listeners:
            listener()
        log.info("evse %s: transaction %s started (%s, token %s, meter %.1f Wh)", self.id,
                 rec.local_id, trigger, rec.id_token, rec.meter_start_wh)

    def _end_tx(self, reason: StopReason) -> None:
        s = self.session
        assert s is not None and s.tx is not None
        tx = s.tx
        now = self._clock.stamp()
        meter = self._meter_wh() if self.reading is not None else tx.last_meter_wh
        try:
            with self._storage.atomic():
                self._storage.tx_close(tx.local_id, now, reason.value, meter)
                tx.stopped_at, tx.stop_reason = now, reason.value
                tx.meter_stop_wh, tx.closed = meter, True
                s.ended_reason = reason
                self._observer().transaction_ended(tx, reason, self.snapshot())
        except BaseException as exc:
            # Rolled back: the transaction is still open in the journal, so it must stay open
            # here too; the next reconcile (or the recovery after a restart) ends it again.
            tx.stopped_at, tx.stop_reason, tx.meter_stop_wh, tx.closed = None, None, None, False
            s.ended_reason = None
            if isinstance(exc, StorageError):
                self._storage_failed(exc, "recording the end of a transaction")
            raise
        log.info("evse %s: transaction %s%s ended (%s, %.1f Wh)", self.id, tx.local_id,
                 f" (CSMS transaction {tx.remote_id})" if tx.remote_id else "", reason,
                 meter - tx.meter_start_wh)
        if self.pending_operative is not None:
            self._apply_operative(self.pending_operative)
        self.tx_changed.set()
        for listener in self.tx_listeners:
            listener()

    def _maybe_release_session(self) -> None:
        """Forget the session once nothing of it remains (EV gone, transaction over or none)."""
        s = self.session
        if s is None:
            return
        if self.ev_connected:
            return
        if s.tx is not None and s.ended_reason is None:
            return  # transaction kept open across an unplug
        if s.authorized and s.tx is None and s.ended_reason is None:
            return  # authorized, waiting for the plug (ConnectionTimeOut running)
        if s.tx is None and s.remote_start_id is not None and s.authorized:
            return
        self.session = None
        self._cancel_connection_timer()

    # ------------------------------------------------------------------ inputs

    def _log_pilot(self) -> None:
        """One line per pilot change, saying what it means at the charger."""
        before, now = self._logged_pilot, self.pilot
        if now == before or (before is None and now == PilotState.A):
            self._logged_pilot = now
            return
        self._logged_pilot = now
        if now.is_error:
            meaning = "pilot error"
        elif now.connected and (before is None or not before.connected):
            meaning = "EV plugged in"
        elif not now.connected:
            meaning = "EV unplugged"
        elif now.wants_energy:
            meaning = "EV asks for energy"
        else:
            meaning = "EV does not ask for energy"
        log.info("evse %s: pilot %s: %s", self.id,
                 f"{before} -> {now}" if before is not None else f"{now} at start-up", meaning)

    async def on_pilot(self) -> None:
        async with self.mutex:
            self._log_pilot()
            s = self.session
            was_connected, self._ev_was_connected = self._ev_was_connected, self.ev_connected
            if self.ev_connected and s is None:
                self.session = Session()
                self._observer().session_event(self.id, "ev_connected", {})
            elif self.ev_connected and not was_connected:
                # A plug into a session that exists already (authorized first, or a
                # transaction kept open across an unplug): 2.0.1 reports it (CablePluggedIn).
                self._observer().session_event(self.id, "ev_connected", {})
            if self.ev_connected:
                self._cancel_connection_timer()
            if self.pilot.wants_energy:
                self.offer_raised_at = None  # the EV answered the offer
            if self.pilot.is_error:
                self._raise_fault(FaultKind.PILOT, f"pilot state {self.pilot.value}")
            elif FaultKind.PILOT in self.faults:
                self._clear_fault(FaultKind.PILOT)
            if (not self.ev_connected and s is not None and self.hw.lock is not None
                    and self.hw.lock.locked and not self._setting(
                        "UnlockConnectorOnEVSideDisconnect", True)):
                self.hold_locked = True
                self.hold_token = s.token.id if s.token else None
            if not self.ev_connected and s is not None and was_connected:
                self._observer().session_event(self.id, "ev_disconnected", {})
            await self._reconcile()
            self._maybe_release_session()
            self._update_status()

    async def authorize(self, token: Token, result: AuthResult, *,
                        remote_start_id: int | None = None) -> bool:
        """Accept an authorized token for this EVSE; False when the EVSE cannot take it."""
        async with self.mutex:
            if not result.accepted:
                return False
            if not self.operative or self.blocking_fault is not None:
                log.info("evse %s: token %s not taken: the EVSE is %s", self.id, token.id,
                         "inoperative" if not self.operative else f"faulted ({self.fault})")
                return False
            s = self.session
            if s is not None and (s.authorized or s.ended_reason is not None):
                log.info("evse %s: token %s not taken: the EVSE has a session already",
                         self.id, token.id)
                return False
            if s is None:
                s = self.session = Session()
            s.token, s.auth = token, result
            s.authorized_at = self._clock.monotonic()
            s.remote_start_id = remote_start_id
            self.reserved_for = None
            log.info("evse %s: token %s authorized (%s, %s)", self.id, token.id,
                     result.status, result.source)
            self._observer().session_event(self.id, "authorized",
                                           {"token": token.id, "type": token.type})
            if not self.ev_connected:
                self._start_connection_timer()
            await self._reconcile()
            return True

    async def deauthorize(self, reason: StopReason, by: str | None = None) -> bool:
        """End the authorization (local/remote stop, invalid id): energy stops at once.

        Whether the transaction ends now or at the next stop point (e.g. the unplug, with a
        2.0.1 TxStopPoint of EVConnected) is decided by the stop points, as for every end.
        ``by`` names the token that asked (another card of the same group may stop a session);
        adapters find it as ``tx.stopped_by`` when the transaction ends.
        """
        async with self.mutex:
            s = self.session
            if s is None or not s.authorized or s.ended_reason is not None:
                return False
            s.auth = AuthResult("Invalid", source="deauthorized")
            s.deauth_reason = reason
            log.info("evse %s: authorization ended (%s%s)", self.id, reason,
                     f", by token {by}" if by is not None else "")
            if by is not None and s.tx is not None:
                s.tx.stopped_by = by
            self._observer().session_event(self.id, "deauthorized", {"reason": reason.value})
            await self._reconcile()
            if s.tx is None:
                s.token, s.auth = None, None  # back to waiting for an authorization
                self._cancel_connection_timer()
            self._maybe_release_session()
            self._update_status()
            return True

    async def suspend(self, allowed: bool) -> None:
        """Stop or resume energy without ending the session (e.g. invalid id, no tx stop)."""
        async with self.mutex:
            if self.session is not None:
                self.session.energy_allowed = allowed
            await self._reconcile()

    async def set_limit(self, source: str, value: float | None, unit: str = "A") -> None:
        """A limit source (smart charging, local load management, DER, ...) caps this EVSE.

        ``value`` None removes the source's limit. A limit in W becomes amps per phase at the
        nominal voltage. The offer to the EV is re-evaluated at once: below the minimum the EV
        is paused (SuspendedEVSE) and resumes when the limit rises again.
        """
        if value is not None:
            if unit == "W":
                value = value / (NOMINAL_VOLTAGE * self.phases)
            elif unit != "A":
                raise ValueError(f"limit unit {unit!r}: expected 'A' or 'W'")
            value = max(0.0, float(value))
        async with self.mutex:
            if value is None:
                self.limits.pop(source, None)
            else:
                self.limits[source] = value
            await self._reconcile()

    async def set_power_setpoint(self, watts: float | None) -> None:
        """A signed power setpoint for a bidirectional power stage (negative: discharge).

        The contactor invariants do not change: a setpoint moves energy only while the
        session may, and the pilot's offer stays the bound of what flows into the EV.
        """
        ev = self.hw.ev
        if not ev.supports_setpoint:
            raise ValueError(f"EVSE {self.id}: its power stage takes no setpoint")
        async with self.mutex:
            await ev.set_power_setpoint(watts if self._offer() > 0 else None)

    async def raise_fault(self, kind: FaultKind, detail: str = "") -> None:
        async with self.mutex:
            self._raise_fault(kind, detail)
            await self._reconcile()

    async def clear_fault(self, kind: FaultKind) -> None:
        async with self.mutex:
            self._clear_fault(kind)
            await self._reconcile()

    def _raise_fault(self, kind: FaultKind, detail: str) -> None:
        if kind not in self.faults:
            self.faults[kind] = detail
            log.warning("evse %s: fault %s: %s", self.id, kind, detail)
            self._observer().fault_changed(self.id, kind, True, detail)

    def _clear_fault(self, kind: FaultKind) -> None:
        if self.faults.pop(kind, None) is not None or kind in self.faults:
            log.info("evse %s: fault %s cleared", self.id, kind)
            self._observer().fault_changed(self.id, kind, False, "")

    async def set_operative(self, operative: bool) -> str:
        """ChangeAvailability: Accepted now, or Scheduled until the transaction ends."""
        async with self.mutex:
            if self.tx is not None and not operative:
                self.pending_operative = operative
                return "Scheduled"
            self._apply_operative(operative)
            await self._reconcile()
            return "Accepted"

    def _apply_operative(self, operative: bool) -> None:
        self.pending_operative = None
        self.operative = operative
        self._storage.set_setting(f"core.evse.{self.id}.operative", "1" if operative else "0")

    async def unlock(self) -> str:
        """UnlockConnector: ends a running transaction first, then releases the lock."""
        async with self.mutex:
            s = self.session
            if s is not None and s.tx is not None and s.ended_reason is None:
                s.auth = AuthResult("Invalid", source="deauthorized")
                s.deauth_reason = StopReason.UNLOCK_COMMAND
                await self._reconcile()
                if s.ended_reason is None:
                    self._end_tx(StopReason.UNLOCK_COMMAND)
                self._update_status()
            if self.hw.lock is None:
                return "NotSupported"
            self.hold_locked, self.hold_token = False, None
            try:
                ok = await asyncio.wait_for(self.hw.lock.set_locked(False), 5.0)
            except (TimeoutError, HalError):
                ok = False
            return "Unlocked" if ok else "UnlockFailed"

    async def release_hold(self, token_id: str) -> bool:
        """The card of a session whose cable was kept locked after the EV left unlocks it."""
        async with self.mutex:
            if not self.hold_locked or self.hold_token != token_id:
                return False
            self.hold_locked, self.hold_token = False, None
            await self._reconcile()
            return True

    async def end_transaction(self, reason: StopReason) -> bool:
        """Stop a running transaction now whatever the stop points say (reset, power loss)."""
        async with self.mutex:
            s = self.session
            if s is None or s.tx is None or s.ended_reason is not None:
                return False
            s.auth = AuthResult("Invalid", source="deauthorized")
            s.deauth_reason = reason
            await self._set_contactor(False)
            self._end_tx(reason)
            await self._reconcile()
            self._maybe_release_session()
            self._update_status()
            return True

    def adopt_recovered(self, tx: TxRecord) -> None:
        """A transaction found open after a restart is already closed by the adapter."""
        self.session = None

    async def on_meter(self, reading: MeterReading | None, error: str | None) -> None:
        """Called by the station's sampler; the meter is the ground truth for energy."""
        if reading is not None:
            self.reading = reading
            if FaultKind.METER in self.faults:
                await self.clear_fault(FaultKind.METER)
        elif error is not None and FaultKind.METER not in self.faults:
            await self.raise_fault(FaultKind.METER, error)

    # ------------------------------------------------------------------ ConnectionTimeOut

    def _start_connection_timer(self) -> None:
        self._cancel_connection_timer()
        timeout = float(self._setting("ConnectionTimeOut", 60))
        if timeout > 0:
            self._connection_timer = asyncio.get_running_loop().create_task(
                self._connection_timeout(timeout), name=f"evse{self.id}-conn-timeout")

    def _cancel_connection_timer(self) -> None:
        t = self._connection_timer
        if t is not None and t is not asyncio.current_task():
            t.cancel()
        self._connection_timer = None

    async def _connection_timeout(self, timeout: float) -> None:
        await self._clock.sleep(timeout)
        self._connection_timer = None
        async with self.mutex:
            s = self.session
            if s is None or self.ev_connected or s.ended_reason is not None:
                return
            log.info("evse %s: no EV plugged within %.0f s; authorization dropped",
                     self.id, timeout)
            self._observer().session_event(self.id, "connection_timeout", {})
            if s.tx is not None:
                s.auth = AuthResult("Invalid", source="timeout")
                self._end_tx(StopReason.TIMEOUT)
            self.session = None
            await self._reconcile()
