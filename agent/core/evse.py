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
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

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
from agent.core.resumption import session_token
from agent.core.settings import Settings
from agent.storage import Storage, StorageError
from hal.interfaces import (
    EnergyTransferMode,
    EvseHardware,
    FaultKind,
    HalError,
    IndicatorState,
    MeterReading,
    PilotState,
    PowerLimits,
)

if TYPE_CHECKING:  # agent.core.v2x: imported where a stage takes setpoints (see _v2x)
    from agent.core.v2x import PowerStageSnapshot, SetpointBounds

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


def _v2x() -> Any:
    """agent.core.v2x, the bounds of a signed setpoint: imported by the first EVSE whose
    power stage takes setpoints (or whose session the CSMS restricts), so that a charge-only
    station never loads it (docs/performance.md, issue 18)."""
    from agent.core import v2x

    return v2x


def _default_points() -> frozenset[TxPoint]:
    return frozenset({TxPoint.POWER_PATH_CLOSED})


@dataclass
class TxRules:
    """When transactions start and stop: the active OCPP version's rules (1.6 fixed points
    with StopTransactionOnEVSideDisconnect, 2.0.1 TxStartPoint / TxStopPoint)."""

    start_points: Callable[[], frozenset[TxPoint]] = field(default=_default_points)
    stop_points: Callable[[], frozenset[TxPoint]] = field(default=_default_points)


# Availability levels (2.0.1 G03/G04: the station, the EVSE and each connector have their own
# Operative / Inoperative state; a connector can be used only when all three are Operative).
STATION, EVSE, CONNECTOR = "station", "evse", "connector"
STATION_OPERATIVE_KEY = "core.station.operative"


class EvseController:
    """State and outputs of one EVSE: one power path (contactor, meter, pilot) serving one EV
    at a time through one of its connectors (a socket and a tethered cable, say)."""

    def __init__(self, hw: EvseHardware, *, connector_id: int = 1, max_current_a: float,
                 min_current_a: float = 6.0, storage: Storage, clock: Clock,
                 observer: Callable[[], CoreObserver], settings: Settings | None = None,
                 settle: Callable[[], Awaitable[None]] | None = None,
                 connectors: Sequence[int] | None = None) -> None:
        self.hw = hw
        self.id = hw.evse_id
        self.connector_ids: tuple[int, ...] = tuple(connectors) if connectors else (
            connector_id,)
        self.max_current_a = min(max_current_a, hw.max_current_a)
        self.min_current_a = min_current_a
        self._storage = storage
        self._clock = clock
        self._observer = observer
        # Serializes every input of this EVSE (not the connector lock: that is ``hw.lock``).
        self.mutex = asyncio.Lock()
        self.session: Session | None = None
        self.faults: dict[FaultKind, str] = {}
        # The wanted state of each availability level is persisted at once (a change scheduled
        # for after the transaction too: after a restart that transaction is over); what
        # applies now is ``_levels``, and ``_pending`` what waits for the transaction's end.
        self._levels: dict[tuple[str, int], bool] = {
            key: storage.get_setting(self._level_setting(key)) != "0"
            for key in [(STATION, 0), (EVSE, 0), *((CONNECTOR, c) for c in self.connector_ids)]}
        self._pending: dict[tuple[str, int], bool] = {}
        self.resetting = False  # an EVSE reset (2.0.1 B11/B12) is under way: Unavailable
        self._settings = settings
        self.limits: dict[str, float] = {}  # amps per limit source (smart charging, load mgmt)
        # Bidirectional power (agent/core/v2x.py): the signed setpoint asked for the session
        # (W, None: plain current-limited charging), caps on discharge per source (W), and the
        # energy transfer modes the protocol allows the session (None: not restricted). The
        # setpoint and the allowed modes belong to one session and go with it.
        self.setpoint_request: float | None = None
        self.discharge_limits: dict[str, float] = {}
        self.allowed_transfer: frozenset[EnergyTransferMode] | None = None
        # What the EV itself states over ISO 15118-20 (its limits, its energy service's
        # modes; None: nothing), set by agent/core/iso15118.py for the HLC session.
        self.ev_reported: tuple[PowerLimits | None, frozenset[EnergyTransferMode] | None] = \
            (None, None)
        self._v2x_session: Session | None = None
        self._no_discharge_logged = ""
        # Whether a reservation holds this EVSE now (agent/core/reservations.py; the station
        # sets it): while idle and not authorized, the EVSE shows Reserved.
        self.reservation_hold: Callable[[int], bool] | None = None
        self.reading: MeterReading | None = None
        self.status = ConnectorStatus.UNAVAILABLE
        self._last_reported: tuple[ConnectorStatus, FaultKind | None] | None = None
        self._report_task: asyncio.Task[None] | None = None
        self._settle: Callable[[], Awaitable[None]] = settle or _settled
        self._connection_timer: asyncio.Task[None] | None = None
        self.rules = TxRules()
        self.tx_changed = asyncio.Event()  # set whenever a transaction starts or ends
        self.tx_listeners: list[Callable[[], None]] = []  # called then too (smart charging)
        # Called after every input has driven the outputs (the smart-charging scheduler
        # watches which EVSEs have an active session); must be cheap and must not block.
        self.state_listeners: list[Callable[[EvseController], None]] = []
        # Called after every meter reading was taken in (2.x variable monitors look at the
        # new figures); must be cheap and must not block.
        self.meter_listeners: list[Callable[[EvseController], None]] = []
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
    def connector_id(self) -> int:
        """The connector in use: the one the EV is plugged into (the HAL says, where the EVSE
        has several), else the one of the open transaction, else the first."""
        if len(self.connector_ids) > 1:
            plugged = getattr(self.hw.ev, "plugged_connector", None)
            if plugged in self.connector_ids and self.ev_connected:
                return plugged
            s = self.session
            if s is not None and s.tx is not None:
                return s.tx.connector_id
        return self.connector_ids[0]

    # ------------------------------------------------------------------ availability

    def _level_setting(self, key: tuple[str, int]) -> str:
        level, connector = key
        if level == STATION:
            return STATION_OPERATIVE_KEY
        if level == EVSE:
            return f"core.evse.{self.id}.operative"  # the key of state files before levels
        return f"core.evse.{self.id}.connector.{connector}.operative"

    def connector_operative(self, connector_id: int) -> bool:
        """Whether ``connector_id`` may be used: the station, the EVSE and the connector
        itself are Operative (a lower level never overrides a higher one, G03/G04)."""
        return (self._levels[(STATION, 0)] and self._levels[(EVSE, 0)]
                and self._levels.get((CONNECTOR, connector_id), False))

    @property
    def operative(self) -> bool:
        """Whether this EVSE may charge now: with an EV (or a transaction), through the
        connector in use; without one, through any of its connectors."""
        if self.ev_connected or self.tx is not None or len(self.connector_ids) == 1:
            return self.connector_operative(self.connector_id)
        return any(self.connector_operative(c) for c in self.connector_ids)

    @property
    def pending_operative(self) -> bool | None:
        """The EVSE level's change scheduled for the end of the transaction, if any."""
        return self._pending.get((EVSE, 0))

    def level_operative(self, level: str, connector_id: int = 0) -> bool:
        """The state one level has now (not the combined one: see :meth:`operative`)."""
        return self._levels.get((level, connector_id if level == CONNECTOR else 0), False)

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
    def phases_in_use(self) -> int:
        """The phases the EV is fed on now (fewer than :attr:`phases` after a 3-to-1 switch)."""
        n = self.hw.ev.phases_in_use
        return n if isinstance(n, int) and 1 <= n <= self.phases else self.phases

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
            max_current_a=self.max_current_a, limits=tuple(self.limits.items()),
            connectors=tuple((c, self.connector_operative(c)) for c in self.connector_ids),
            resetting=self.resetting, power_stage=self.power_stage_snapshot(),
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
                or not self.ev_connected or self.resetting):
            return 0.0
        limit = self.limit_a
        return limit if limit >= self.min_current_a else 0.0

    def _power_path_live(self) -> bool:
        """Whether the socket may carry voltage: the contactor commanded closed, its feedback
        saying closed, or a welded fault not yet cleared."""
        return (self.hw.contactor.commanded_closed or self.hw.contactor.feedback_closed() is True
                or FaultKind.WELDED in self.faults)

    def _want_locked(self) -> bool:
        """The plug stays locked while an authorized session has the EV connected, and
        whatever the session does while the contacts are (or may be) welded: a plug pulled out
        of a live socket exposes its pins (found by the hardware-faults campaign)."""
        if self.hold_locked:
            return True
        if self._power_path_live() and (self.ev_connected or self._lock_engaged_now()):
            return True  # an empty socket is not locked for it, a plug in it stays locked
        s = self.session
        return (s is not None and s.authorized and s.ended_reason is None
                and self.ev_connected)

    async def _drive_lock(self, locked: bool) -> None:
        lock = self.hw.lock
        if lock is None or lock.locked == locked:
            return
        try:
            # Not wait_for: on Python 3.11 it swallows a cancel that arrives as the lock
            # answers, and the cancelled task (Station.stop()'s) would go on for ever.
            async with asyncio.timeout(5.0):
                ok = await lock.set_locked(locked)
        except (TimeoutError, HalError):
            ok = False
        if ok:
            self._trace("lock", locked=locked)
        else:
            self._raise_fault(FaultKind.LOCK,
                              f"connector lock did not {'lock' if locked else 'unlock'}")

    def _lock_engaged_now(self) -> bool:
        return self.hw.lock is not None and self.hw.lock.locked

    def _lock_engaged(self) -> bool:
        return self.hw.lock is None or self.hw.lock.locked

    def _derive_status(self) -> ConnectorStatus:
        s = self.session
        if self.blocking_fault is not None:
            return ConnectorStatus.FAULTED
        if self.resetting:
            return ConnectorStatus.UNAVAILABLE
        if (self.operative and self.reservation_hold is not None
                and (s is None or (not s.authorized and s.ended_reason is None))
                and self.reservation_hold(self.id)):
            # Reserved until the reserving token comes, an EV plugged in or not (1.6 has no
            # transition from Reserved on a plug-in; 2.0.1 G03.FR.09).
            return ConnectorStatus.RESERVED
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
            await self._drive_setpoint(offer)  # a setpoint ends with the offer
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
            for listener in self.state_listeners:
                try:
                    listener(self)
                except Exception:  # noqa: BLE001 - an observer never breaks the EVSE
                    log.exception("evse %s: state listener failed", self.id)

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
                    async with asyncio.timeout(1.0):  # not wait_for: see _drive_lock
                        await self._settle()
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

    async def refresh_status(self) -> None:
        """Derive the status again after a change outside this EVSE (a reservation made,
        ended, or another EVSE taken: which EVSEs a reservation of no EVSE holds)."""
        async with self.mutex:
            self._update_status()

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
            closed=False, remote_start_id=s.remote_start_id, reservation_id=s.reservation_id,
            parent=s.auth.parent if s.auth else None,
            auth_source=s.auth.source if s.auth else None,
            auth_expires_at=s.auth.expires_at if s.auth and s.auth.accepted else None,
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
        self._apply_pending()
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
                        remote_start_id: int | None = None,
                        reservation_id: int | None = None) -> bool:
        """Accept an authorized token for this EVSE; False when the EVSE cannot take it.

        ``reservation_id``: the reservation this authorization uses; it goes into the
        session's transaction (1.6 StartTransaction / 2.0.1 TransactionEvent reservationId),
        also into one that started already (2.0.1 TxStartPoint EVConnected).
        """
        async with self.mutex:
            if not result.accepted:
                return False
            if not self.operative or self.blocking_fault is not None or self.resetting:
                log.info("evse %s: token %s not taken: the EVSE is %s", self.id, token.id,
                         f"faulted ({self.fault})" if self.blocking_fault is not None
                         else "being reset" if self.resetting else "inoperative")
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
            s.reservation_id = reservation_id
            if reservation_id is not None and s.tx is not None and s.tx.reservation_id is None:
                s.tx.reservation_id = reservation_id
                try:
                    self._storage.tx_update(s.tx.local_id, reservation_id=reservation_id)
                except (StorageError, KeyError) as exc:
                    log.error("evse %s: reservation %s not journalled with transaction %s: %s",
                              self.id, reservation_id, s.tx.local_id, exc)
            if s.tx is not None:  # authorized into a running transaction: a restart needs it
                self._journal_session(s.tx, auth_token=token.id, auth_token_type=token.type,
                                      auth_expires_at=result.expires_at, deauth_reason=None)
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
            if s.tx is not None and s.ended_reason is None:  # open until its stop point
                self._journal_session(s.tx, deauth_reason=reason.value)
            if s.tx is None:
                s.token, s.auth = None, None  # back to waiting for an authorization
                s.reservation_id = None
                self._cancel_connection_timer()
            self._maybe_release_session()
            self._update_status()
            return True

    async def suspend(self, allowed: bool) -> None:
        """Stop or resume energy without ending the session (e.g. invalid id, no tx stop)."""
        async with self.mutex:
            if self.session is not None:
                self.session.energy_allowed = allowed
                if self.session.tx is not None and self.session.ended_reason is None:
                    self._journal_session(self.session.tx, energy_suspended=not allowed)
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

    async def set_phases(self, n: int) -> bool:
        """Feed the EV on ``n`` phases (3-to-1 switching); whether it is fed so now.

        The relay never switches under load: with the contactor closed, the offer goes to 0
        and the contactor opens first; the next reconcile closes it again on the new phases
        (the EV sees a short pause, as IEC 61851-1 phase switching has it). A board that
        cannot switch, or a switch that fails, leaves the phases as they were (logged).
        """
        ev = self.hw.ev
        if n == self.phases_in_use:
            return True
        if not ev.supports_phase_switch or n not in (1, 3) or n > self.phases:
            return False
        async with self.mutex:
            if self.hw.contactor.commanded_closed:
                try:
                    await self.hw.ev.set_current_limit(0)  # the EV stops drawing first
                except HalError as exc:
                    self._raise_fault(exc.kind, str(exc))
                await self._set_contactor(False)
            if self.hw.contactor.commanded_closed:  # did not open: a fault is reported
                return False
            try:
                async with asyncio.timeout(5.0):  # not wait_for: see _drive_lock
                    await ev.set_phases(n)
                log.info("evse %s: EV fed on %d phase(s) from now on", self.id, n)
                ok = True
            except (HalError, TimeoutError, NotImplementedError) as exc:
                log.warning("evse %s: switching to %d phase(s) failed: %s", self.id, n,
                            exc or "timed out")
                ok = False
            await self._reconcile()
            return ok and self.phases_in_use == n

    async def set_power_setpoint(self, value: float | None, unit: str = "W") -> float | None:
        """A signed power setpoint for a bidirectional power stage (negative: discharge) for
        the session now on this EVSE; returns what the stage follows now (None: none).

        The contactor invariants do not change: a setpoint moves energy only while the
        session may (the contactor closes by the same rules as for charging), the pilot's
        offer stays the bound of what flows into the EV, and the EV's and the stage's limits
        and the discharge limit sources bound it either way (agent/core/v2x.py). Without a
        session there is nothing to set: the request is dropped (a stale discharge never
        meets the next EV). A value in A is per phase at the nominal voltage, as limits are.
        """
        ev = self.hw.ev
        if not ev.supports_setpoint:
            raise ValueError(f"EVSE {self.id}: its power stage takes no setpoint")
        if value is not None:
            if unit == "A":
                value = value * NOMINAL_VOLTAGE * self.phases_in_use
            elif unit != "W":
                raise ValueError(f"setpoint unit {unit!r}: expected 'W' or 'A'")
            value = float(value)
            if value != value or value in (float("inf"), float("-inf")):
                raise ValueError(f"setpoint {value!r}: expected a finite number of watts")
        async with self.mutex:
            if self._own_v2x_session() is None:
                value = None
            self.setpoint_request = value
            await self._reconcile()
            return ev.power_setpoint

    async def set_discharge_limit(self, source: str, watts: float | None) -> None:
        """A source (a V2X profile's dischargeLimit, a DER LimitMaxDischarge) caps what may
        flow out of the EV, in W (None removes it). Kept across sessions, as limits are."""
        if watts is not None:
            watts = max(0.0, float(watts))
        async with self.mutex:
            if watts is None:
                self.discharge_limits.pop(source, None)
            else:
                self.discharge_limits[source] = watts
            await self._reconcile()

    async def set_allowed_transfer(self, modes: Sequence[str] | None) -> bool:
        """The energy transfer modes the protocol allows this session (2.1: the CSMS's
        AuthorizeResponse / NotifyAllowedEnergyTransfer; None lifts the restriction); False
        when no session is there to take them (they belong to one session)."""
        allowed = _v2x().parse_modes(modes) if modes is not None else None
        async with self.mutex:
            if self._own_v2x_session() is None:
                return False
            self.allowed_transfer = allowed
            await self._reconcile()
            return True

    def _own_v2x_session(self) -> Session | None:
        """The session the setpoint and the allowed modes belong to (forgetting both when it
        has ended or another one took its place)."""
        s = self.session if self.session is not None and self.session.ended_reason is None \
            else None
        if s is not self._v2x_session:
            self._v2x_session = s
            self.setpoint_request = None
            self.allowed_transfer = None
        return s

    async def set_ev_reported(self, limits: PowerLimits | None,
                              modes: frozenset[EnergyTransferMode] | None) -> None:
        """What the EV states over high-level communication (ISO 15118-20 ChargeParameter
        Discovery: its charge / discharge limits, the energy service it chose): the
        setpoint's bounds hold to the stricter of it and the driver's EV side from now on;
        (None, None) forgets it (the HLC session ended)."""
        async with self.mutex:
            self.ev_reported = (limits, modes)
            await self._reconcile()

    def setpoint_bounds(self, offer: float) -> SetpointBounds:
        """How far a setpoint could go at an offer of ``offer`` A (agent/core/v2x.py)."""
        return self._setpoint_bounds(offer)

    def _setpoint_bounds(self, offer: float) -> SetpointBounds:
        limits, modes = self.ev_reported
        return _v2x().bounds(
            self.hw.ev, offer_a=offer, phases=self.phases_in_use,
            max_current_a=self.max_current_a, allowed_modes=self.allowed_transfer,
            discharge_limits=self.discharge_limits, reported_limits=limits,
            reported_modes=modes)

    async def _drive_setpoint(self, offer: float) -> None:
        """Give the power stage the requested setpoint within every bound now (mutex held)."""
        ev = self.hw.ev
        if not ev.supports_setpoint:
            return
        self._own_v2x_session()
        want: float | None = None
        if offer > 0 and self.setpoint_request is not None:
            b = self._setpoint_bounds(offer)
            want = round(b.clamp(self.setpoint_request), 3)
            if self.setpoint_request < 0 and b.no_discharge \
                    and b.no_discharge != self._no_discharge_logged:
                log.warning("evse %s: discharge of %.0f W refused: %s", self.id,
                            -self.setpoint_request, b.no_discharge)
            self._no_discharge_logged = b.no_discharge if self.setpoint_request < 0 else ""
        if ev.power_setpoint == want:
            return
        try:
            self._trace("setpoint", watts=want)
            await ev.set_power_setpoint(want)
        except HalError as exc:
            self._raise_fault(exc.kind, str(exc))
        except NotImplementedError as exc:
            log.error("evse %s: power stage refused a setpoint: %s", self.id, exc)

    def power_stage_snapshot(self) -> PowerStageSnapshot | None:
        """The power stage as the adapters and the page read it (None: it takes no
        setpoint: a charge-only EVSE)."""
        ev = self.hw.ev
        if not ev.supports_setpoint:
            return None
        s = self.session
        request = self.setpoint_request if s is not None and s is self._v2x_session \
            and s.ended_reason is None else None
        b = self._setpoint_bounds(self._offer())
        # The bounds with an offer, so that "could it discharge" is answered while idle too.
        could = self._setpoint_bounds(max(self._offer(), self.min_current_a))
        v2x = _v2x()
        try:
            ev_limits, ev_modes = v2x.ev_side(ev, *self.ev_reported)
            modes = tuple(sorted(m.value for m in ev_modes))
            energy = ev.energy_state
        except Exception:  # noqa: BLE001 - a snapshot never fails on a driver's bug
            modes, ev_limits, energy = (), None, None
        return v2x.PowerStageSnapshot(
            bidirectional=not could.no_discharge, modes=modes,
            allowed_modes=tuple(sorted(m.value for m in self.allowed_transfer))
            if self.allowed_transfer is not None else None,
            setpoint_requested_w=request, setpoint_w=ev.power_setpoint,
            max_charge_w=b.max_charge_w, max_discharge_w=b.max_discharge_w,
            ev_limits=ev_limits, energy=energy,
            stage_limits=v2x.stage_limits(ev, max_current_a=self.max_current_a,
                                      phases=self.phases_in_use),
            discharge_limits=tuple(self.discharge_limits.items()),
            no_discharge=could.no_discharge)

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
        """ChangeAvailability of the EVSE: Accepted now, or Scheduled until the transaction
        ends."""
        return await self.set_availability(EVSE, operative)

    async def set_availability(self, level: str, operative: bool,
                               connector_id: int | None = None) -> str:
        """One availability level (``STATION``, ``EVSE``, ``CONNECTOR`` with its id) becomes
        Operative / Inoperative: at once ("Accepted"), or, when it would take the running
        transaction's connector out of service, at the transaction's end ("Scheduled").

        The wanted state is persisted now, so a restart (which ends the transaction) applies
        it; asking for the state a level already has is Accepted as well (G03.FR.03).
        """
        if level == CONNECTOR:
            if connector_id not in self.connector_ids:
                raise ValueError(f"EVSE {self.id} has no connector {connector_id}")
            key = (CONNECTOR, connector_id)
        elif level in (STATION, EVSE):
            key = (level, 0)
        else:
            raise ValueError(f"availability level {level!r}: expected station, evse or "
                             "connector")
        async with self.mutex:
            self._storage.set_setting(self._level_setting(key), "1" if operative else "0")
            tx = self.tx
            if (not operative and tx is not None
                    and (level != CONNECTOR or connector_id == tx.connector_id)):
                self._pending[key] = operative
                return "Scheduled"
            self._pending.pop(key, None)
            self._levels[key] = operative
            await self._reconcile()
            return "Accepted"

    def _apply_pending(self) -> None:
        """The transaction ended: the availability changes scheduled for it apply now."""
        for key, operative in self._pending.items():
            self._levels[key] = operative
        self._pending.clear()

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
            if self._power_path_live():
                log.warning("evse %s: unlock refused: the power path may be live (%s)", self.id,
                            "welded" if FaultKind.WELDED in self.faults else "contactor closed")
                return "UnlockFailed"
            self.hold_locked, self.hold_token = False, None
            try:
                async with asyncio.timeout(5.0):  # not wait_for: see _drive_lock
                    ok = await self.hw.lock.set_locked(False)
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

    async def reset(self, reason: StopReason, restart: Callable[[], Awaitable[None]] | None = None,
                    while_down: Callable[[], Awaitable[None]] | None = None) -> None:
        """Reset this EVSE alone (2.0.1 B11/B12 with an evseId); the rest of the station goes on.

        Its transaction ends (``reason``; the contactor opens first), an authorization still
        waiting for the EV is dropped, and the EVSE is Unavailable while ``restart`` (the
        HAL's reset of its board) runs and ``while_down`` (the adapter reporting it) waits.
        Then it adopts the pilot state as at start-up and shows its own availability again.
        Faults are not cleared by a reset: they follow the hardware (a welded contactor stays
        a fault).
        """
        async with self.mutex:
            s = self.session
            if s is not None and s.tx is not None and s.ended_reason is None:
                s.auth = AuthResult("Invalid", source="deauthorized")
                s.deauth_reason = reason
                await self._set_contactor(False)
                self._end_tx(reason)
            elif s is not None and s.authorized and s.ended_reason is None:
                s.token, s.auth = None, None
                self._cancel_connection_timer()
            self.resetting = True
            log.info("evse %s: reset", self.id)
            await self._reconcile()
            self._maybe_release_session()
            self._update_status()
        try:
            await self.reported()
            if restart is not None:
                try:
                    async with asyncio.timeout(30.0):
                        await restart()
                except (HalError, TimeoutError, NotImplementedError) as exc:
                    log.warning("evse %s: the board's reset failed: %s", self.id,
                                exc or "timed out")
            if while_down is not None:
                await while_down()
        finally:
            async with self.mutex:
                self.resetting = False
                await self._reconcile()
            await self.on_pilot()  # the state the hardware has now, as at start-up
            log.info("evse %s: back after its reset", self.id)

    def adopt_recovered(self, tx: TxRecord) -> None:
        """A transaction found open after a restart is already closed by the adapter."""
        self.session = None

    def _journal_session(self, tx: TxRecord, **fields: object) -> None:
        """Keep the session state a resumption after a restart needs (TX_EXTRAS) in the
        journal; a storage failure costs that, never the session."""
        for name, value in fields.items():
            setattr(tx, name, value)
        try:
            self._storage.tx_update(tx.local_id, **fields)
        except (StorageError, KeyError) as exc:
            log.error("evse %s: session state of transaction %s not journalled: %s",
                      self.id, tx.local_id, exc)

    async def adopt_resumed(self, tx: TxRecord, *, allow_energy: bool) -> None:
        """Take back a transaction a restart interrupted (agent/core/resumption.py decided it
        may go on): its session as the journal has it, before the pilot is adopted.

        Nothing is driven here: the next input (the pilot at start-up) reconciles, so energy
        flows again only through the invariants, and not at all unless ``allow_energy`` (and
        the session had not been suspended or deauthorized before the cut). Availability
        changes that were scheduled for the end of this transaction (persisted as wanted
        states) wait for its end again.
        """
        async with self.mutex:
            token = session_token(tx)
            s = Session(token=token, tx=tx, remote_start_id=tx.remote_start_id,
                        reservation_id=tx.reservation_id)
            if token is not None:
                if tx.deauth_reason:
                    s.auth = AuthResult("Invalid", source="deauthorized")
                    try:
                        s.deauth_reason = StopReason(tx.deauth_reason)
                    except ValueError:
                        s.deauth_reason = StopReason.OTHER
                else:
                    s.auth = AuthResult("Accepted", parent=tx.parent,
                                        source=tx.auth_source or "resumed",
                                        expires_at=tx.auth_expires_at)
                    s.authorized_at = self._clock.monotonic()
            s.energy_allowed = allow_energy and not tx.energy_suspended
            self.session = s
            # Energy has not flowed since the restart: a stop point EnergyTransfer counts from
            # when it flows again, not from before the cut.
            s.tx_points_seen = self._points_reached() - {TxPoint.ENERGY_TRANSFER}
            self._ev_was_connected = self.ev_connected  # the same plug, not a new one
            for key in [(STATION, 0), (EVSE, 0), (CONNECTOR, tx.connector_id)]:
                if key in self._levels and not self._levels[key]:
                    self._pending[key] = False
                    self._levels[key] = True
            log.info("evse %s: transaction %s resumed (token %s, energy %s)", self.id,
                     tx.local_id, token.id if token else "none",
                     "allowed" if s.energy_allowed else "suspended")
        self.tx_changed.set()
        for listener in self.tx_listeners:
            listener()

    async def on_ev_changed(self) -> None:
        """The EV side's limits, modes or battery changed (HAL ``EvChanged``): the outputs,
        the setpoint among them, follow at once."""
        async with self.mutex:
            await self._reconcile()

    async def on_meter(self, reading: MeterReading | None, error: str | None) -> None:
        """Called by the station's sampler; the meter is the ground truth for energy.

        ``on_meter(None, None)`` only holds a setpoint to the EV's limits again."""
        if reading is not None:
            self.reading = reading
            if FaultKind.METER in self.faults:
                await self.clear_fault(FaultKind.METER)
            self._meter_listeners()
        elif error is not None and FaultKind.METER not in self.faults:
            await self.raise_fault(FaultKind.METER, error)
        if self.setpoint_request is not None:
            # The EV's limits move without telling (its battery fills, it lowers what it
            # gives): a setpoint is held to them again every sample, not only on inputs.
            async with self.mutex:
                await self._drive_setpoint(self._offer())

    def on_meter_now(self, reading: MeterReading | None, error: str | None) -> bool:
        """:meth:`on_meter` without suspending, where nothing in it has to: True when it is
        done (the reading stored and the listeners told, or a failure already reported),
        False when nothing was done and :meth:`on_meter` must be awaited instead (a meter
        fault to raise or clear, a setpoint to drive). The shared meter tick of a swarm
        calls this for thousands of EVSEs a second; a listener that sets a setpoint leaves
        ``setpoint_request`` set for the caller to drive with ``on_meter(None, None)``."""
        if self.setpoint_request is not None:
            return False
        if reading is not None:
            if FaultKind.METER in self.faults:
                return False
            self.reading = reading
            self._meter_listeners()
        elif error is not None and FaultKind.METER not in self.faults:
            return False
        return True

    def _meter_listeners(self) -> None:
        for listener in self.meter_listeners:
            try:
                listener(self)
            except Exception:  # noqa: BLE001 - an observer never breaks the EVSE
                log.exception("evse %s: meter listener failed", self.id)

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
