"""The station core: EVSEs, token routing, meter sampling and recovery, for any OCPP version.

It takes HAL events and adapter commands and emits version-neutral events through the
:class:`CoreObserver` (the active protocol adapter).  It never speaks OCPP.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from agent.clock import Clock, ticker
from agent.core.authorization import AuthorizationPolicy
from agent.core.charging_profiles import ChargingProfiles
from agent.core.evse import CONNECTOR, EVSE, NOMINAL_VOLTAGE, STATION, EvseController, TxRules
from agent.core.metering import Metering
from agent.core.model import (
    Authorizer,
    AuthResult,
    CoreObserver,
    EvseSnapshot,
    ResumptionRules,
    StopReason,
    Token,
    TxRecord,
)
from agent.core.resumption import why_not_resumed
from agent.core.security_events import SecurityEvents
from agent.core.settings import Settings
from agent.core.v2x_names import DER_STORE_KEY, der_stored, takes_setpoints
from agent.storage import Storage, StorageError
from hal.interfaces import (
    EvChanged,
    FaultCleared,
    FaultKind,
    FaultRaised,
    Hal,
    HalError,
    HalEvent,
    MeterReading,
    PilotChanged,
    TokenPresented,
)

if TYPE_CHECKING:  # built only with hal.iso15118 (agent/app.py): not loaded otherwise
    from agent.core.der import DerControls  # built on first use, see _build_der
    from agent.core.iso15118 import Iso15118Service
    from agent.core.reservations import Reservation, Reservations  # built on first use
    from agent.core.v2x_modes import OperationModes  # built on first use, see _build_v2x

log = logging.getLogger("cp_agent.core")

# Every this many journal writes of the meter, one is fsynced (see Storage.tx_meter): with the
# default meter_persist_s of 10 s, a power cut loses at most a minute of readings even when no
# other write happens, while kill -9 loses at most meter_persist_s.
METER_FSYNC_EVERY = 6
# A meter register read at start-up is trusted for meterStop after a power cut only if it is
# at most this many seconds of full power ahead of the last journalled reading (more means the
# energy flowed while we were not looking, or a different meter: not ours to bill).
RECOVERY_SLACK_S = 5.0
# Cards whose last tap's outcome is kept (for ``ctl tap``; a bench taps a handful).
TAPS_KEPT = 32
# How far an energy register may read below the previous reading before it counts as going
# backwards (decoding a float register and rounding can move it by a fraction of a Wh).
REGISTER_SLACK_WH = 1.0


def implausible(reading: MeterReading, previous: MeterReading | None) -> str | None:
    """Why ``reading`` cannot be what the meter measured (None: it can be).

    A billing register never runs backwards or below zero, and no quantity is infinite or
    NaN; a driver (or a meter's firmware) that hands up such a value must not have it billed,
    journalled as meterStop or sent to the CSMS (JSON has no NaN): the reading counts as a
    failed read, so the meter fault follows (found by the hardware-faults campaign).
    """
    for name in ("energy_import_wh", "energy_export_wh", "power_w"):
        value = getattr(reading, name)
        if not isinstance(value, int | float) or not math.isfinite(value):
            return f"meter reads {name} {value!r}"
    for name in ("voltage_v", "current_a"):
        if not all(math.isfinite(v) for v in getattr(reading, name)):
            return f"meter reads {name} {getattr(reading, name)!r}"
    for name in ("energy_import_wh", "energy_export_wh"):
        if getattr(reading, name) < 0:
            return f"energy register negative: {getattr(reading, name):.0f} Wh ({name})"
    if (previous is not None
            and reading.energy_import_wh < previous.energy_import_wh - REGISTER_SLACK_WH):
        return (f"energy register went back {previous.energy_import_wh:.0f} -> "
                f"{reading.energy_import_wh:.0f} Wh")
    return None


class _NullObserver:
    """Stands in until an adapter is attached, so the core never has to check for one."""

    def status_changed(self, snap, fault) -> None:  # noqa: ANN001
        pass

    def transaction_started(self, tx, snap, trigger) -> None:  # noqa: ANN001
        pass

    def transaction_ended(self, tx, reason, snap) -> None:  # noqa: ANN001
        pass

    def session_event(self, evse_id, event, detail) -> None:  # noqa: ANN001
        pass

    def fault_changed(self, evse_id, kind, active, detail) -> None:  # noqa: ANN001
        pass

    def transaction_recovered(self, tx) -> None:  # noqa: ANN001
        pass

    def transaction_resumed(self, tx, snap) -> None:  # noqa: ANN001
        pass


class Station:
    """Composition of EVSE controllers over one HAL, plus station-wide concerns."""

    def __init__(self, hal: Hal, storage: Storage, clock: Clock, *,
                 settings: Settings | None = None,
                 evse_limits: dict[int, tuple[float, float]] | None = None,
                 evse_connectors: dict[int, tuple[int, ...]] | None = None,
                 meter_poll_s: float = 1.0, meter_persist_s: float = 10.0) -> None:
        self.hal = hal
        self.storage = storage
        self.clock = clock
        self.settings = settings if settings is not None else Settings(storage)
        self.observer: CoreObserver = _NullObserver()
        self.authorization = AuthorizationPolicy(self.settings, storage, clock)
        self.authorizer: Authorizer | None = self.authorization
        self.meter_poll_s = meter_poll_s
        self.meter_persist_s = meter_persist_s
        self.station_faults: dict[FaultKind, str] = {}
        self.evses: dict[int, EvseController] = {}
        limits = evse_limits or {}
        for evse_id, hw in sorted(hal.evses.items()):
            max_a, min_a = limits.get(evse_id, (hw.max_current_a, 6.0))
            self.evses[evse_id] = EvseController(
                hw, max_current_a=max_a, min_current_a=min_a, storage=storage, clock=clock,
                observer=lambda: self.observer, settings=self.settings, settle=self.settled,
                connectors=(evse_connectors or {}).get(evse_id))
        self.metering = Metering(self.evses, self.settings, clock)
        self.charging_profiles = ChargingProfiles(self.evses, storage, clock)
        self.security_events = SecurityEvents(clock)
        # ISO 15118 high-level communication (agent/core/iso15118.py): set by the composition
        # root when hal.iso15118 is configured, else None.
        self.iso15118: Iso15118Service | None = None
        # Services a station may never use (diagnostics uploads, ...), built on first use:
        # see provide().
        self._factories: dict[str, Callable[[], Any]] = {}
        self._when_built: dict[str, list[Callable[[Any], None]]] = {}
        # Reservations (agent/core/reservations.py) on the first ReserveNow, or at start-up
        # when the state file holds one; until then no EVSE is reserved.
        self.provide("reservations", self._build_reservations)
        self._reservation_timer: asyncio.Task | None = None
        self._started = False  # start() has begun the station's tasks
        # 2.1 V2X operation modes and DER controls (agent/core/v2x_modes.py, der.py),
        # planned by the scheduler: built now where a power stage takes setpoints (the
        # EVSEs they plan for) or the state file keeps a DER control (one settings read:
        # a control is never ignored after a restart); otherwise on first use.
        self.provide("der", self._build_der)
        self.provide("v2x_modes", self._build_v2x)
        self._v2x_watcher: asyncio.Task | None = None
        if der_stored(storage.get_setting(DER_STORE_KEY)):
            self.der  # noqa: B018 - built now
        if any(takes_setpoints(e.hw.ev) for e in self.evses.values()):
            self.v2x_modes  # noqa: B018 - built now
        # Whether transactions survive a restart (the active version's, see use_resumption).
        self.resumption: Callable[[], ResumptionRules] | None = None
        self.resumed: list[TxRecord] = []  # the transactions resumed at start-up
        self.not_resumed: dict[str, str] = {}  # local id -> why it was not (for the log)
        self._tasks: set[asyncio.Task] = set()
        self._token_tasks: set[asyncio.Task] = set()
        self.taps: dict[str, asyncio.Task[str]] = {}  # the last present_token per card
        self._shared_taps: dict[int, str] = {}  # EVSE -> card tapped at a shared reader
        self._event_queue: asyncio.Queue[HalEvent] = asyncio.Queue()
        self._stopping = False
        self.hal_events: list[Callable[[HalEvent], None]] = []  # taps for timelines / tests
        self.traces: list[Callable[[int, str, dict], None]] = []
        for evse in self.evses.values():
            evse.trace = self._trace

    # ------------------------------------------------------------------ services on first use

    def provide(self, name: str, factory: Callable[[], Any]) -> None:
        """``station.<name>`` is built by ``factory`` when first read, not now.

        An idle station never pays the import and construction of a service it is not asked
        for (docs/performance.md, issue 18); whoever needs it reads the attribute as before.
        A service with start-up duties (resuming a job a restart cut) is read by the
        composition root only when a cheap check finds something to resume."""
        self._factories[name] = factory

    def built(self, name: str) -> Any | None:
        """The service ``name`` if it exists already, without building it (None if not):
        for questions whose answer is "nothing" while nobody has used the service."""
        return self.__dict__.get(name)

    def when_built(self, name: str, callback: Callable[[Any], None]) -> None:
        """``callback(service)`` once the service exists (at once if it does): what a block
        would otherwise do to the service at its start, without building it."""
        service = self.__dict__.get(name)
        if service is not None:
            callback(service)
        else:
            self._when_built.setdefault(name, []).append(callback)

    def __getattr__(self, name: str) -> Any:
        # Only reached for attributes that do not exist: the services of provide().
        factory = self.__dict__.get("_factories", {}).pop(name, None)
        if factory is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        try:
            service = factory()
        except BaseException as exc:
            self._factories[name] = factory  # the next use tries again
            if isinstance(exc, AttributeError):  # would read as "no such service"
                raise RuntimeError(f"building station.{name} failed: {exc}") from exc
            raise
        setattr(self, name, service)
        for callback in self._when_built.pop(name, []):
            callback(service)
        return service

    def _build_reservations(self) -> Reservations:
        """The reservation service, hooked into every EVSE (Reserved status, the end of a
        reservation whose EVSE became faulted or unavailable) and, on a running station,
        with its expiry timer armed."""
        from agent.core.reservations import Reservations

        service = Reservations(self.evses, self.storage, self.clock, self.settings,
                               spawn=self.spawn)
        for evse in self.evses.values():
            evse.reservation_hold = service.holds
            evse.state_listeners.append(service.evse_changed)
        self._arm_reservations(service)
        return service

    def _arm_reservations(self, service: Reservations) -> None:
        """The expiry timer runs from the station's start to its stop (start() arms the
        timer of a service built before it)."""
        if self._started and self._reservation_timer is None and not self._stopping:
            self._reservation_timer = self.spawn(service.run(), "reservations")

    def _reservations_stored(self) -> bool:
        """The start-up check: one row query (an unreadable table counts as stored, so that
        the service is built and says what is wrong)."""
        try:
            return self.storage.reservations_any()
        except StorageError:
            return True

    def _build_der(self) -> DerControls:
        """The DER controls, as the state file keeps them; the scheduler re-plans on every
        change (the operation modes apply them to the stages that take setpoints)."""
        from agent.core.der import DerControls

        der = DerControls(self.storage, self.clock)
        der.listeners.append(self.charging_profiles.wake)
        self.charging_profiles.wake()
        return der

    def _build_v2x(self) -> OperationModes:
        """The V2X operation modes, planned by the scheduler at every evaluation, with the
        DER controls once they exist (without them: no DER constraint, as with none kept);
        on a running station with their grid watcher started."""
        from agent.core.v2x_modes import OperationModes

        modes = OperationModes(self.evses, self.settings, self.clock, der=self.built("der"),
                               poll_s=self.meter_poll_s)
        modes.wake = self.charging_profiles.wake
        self.charging_profiles.v2x = modes
        self.when_built("der", lambda der: setattr(modes, "der", der))
        self._watch_grid(modes)
        self.charging_profiles.wake()
        return modes

    def _watch_grid(self, modes: OperationModes) -> None:
        """The V2X grid watcher runs from the station's start to its stop (start() starts
        the one of modes built before it)."""
        if self._started and self._v2x_watcher is None and not self._stopping:
            self._v2x_watcher = self.spawn(modes.run(), "v2x-grid")

    def _trace(self, evse_id: int, what: str, detail: dict) -> None:
        for listener in self.traces:
            listener(evse_id, what, detail)

    # ------------------------------------------------------------------ life cycle

    def spawn(self, coro, name: str) -> asyncio.Task:  # noqa: ANN001
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())

    async def start(self) -> None:
        """Open every contactor, then begin taking events and sampling meters."""
        for evse in self.evses.values():
            await evse.emergency_open()
        attach = getattr(self.clock, "attach_store", None)
        if attach is not None:  # clock anchors of earlier boots resolve deferred timestamps
            attach(self.storage)
        await self.hal.start(self._on_hal_event)
        for evse in self.evses.values():
            try:
                reading = await asyncio.wait_for(evse.hw.meter.read(), 5.0)
                why = implausible(reading, None)
                if why is not None:
                    raise HalError(FaultKind.METER, why)  # short: it is the 1.6 info
                evse.reading = reading
            except (HalError, TimeoutError) as exc:
                await evse.raise_fault(FaultKind.METER, str(exc) or "meter read timed out")
        await self._resume()  # before the pilot: a resumed session meets the EV as its own
        if self.built("reservations") is None and self._reservations_stored():
            self.reservations  # noqa: B018 - built now: EVSEs show Reserved from the start
        for evse in self.evses.values():
            await evse.on_pilot()  # adopt the pilot state the hardware has now
        self.spawn(self._event_pump(), "hal-events")
        for evse in self.evses.values():
            self.spawn(self._sampler(evse), f"meter-{evse.id}")
        self.metering.start()
        self.spawn(self.charging_profiles.run(), "smart-charging")
        self._started = True
        modes = self.built("v2x_modes")
        if modes is not None:  # built before the start: its grid watcher runs from now
            self._watch_grid(modes)
        reservations = self.built("reservations")
        if reservations is not None:  # built before the start: its timer runs from now
            self._arm_reservations(reservations)

    async def stop(self) -> None:
        """Open every contactor first; nothing else in shutdown may delay that."""
        self._stopping = True
        for evse in self.evses.values():
            await evse.emergency_open()
            evse.close()
        await self.metering.stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await asyncio.wait_for(self.hal.stop(), 5.0)
        except Exception as exc:  # noqa: BLE001
            log.error("hal stop: %s", exc)

    # ------------------------------------------------------------------ HAL events

    def _on_hal_event(self, event: HalEvent) -> None:
        for tap in self.hal_events:
            tap(event)
        self._event_queue.put_nowait(event)

    async def _event_pump(self) -> None:
        while True:
            event = await self._event_queue.get()
            try:
                await self._handle(event)
            except Exception:
                log.exception("error handling %s", event)
            finally:
                self._event_queue.task_done()

    async def settled(self) -> None:
        """Wait until every HAL event received so far has been handled (tests, benches)."""
        await self._event_queue.join()

    async def quiet(self, timeout: float = 5.0) -> None:
        """Wait until the HAL events so far are handled and every status change is reported:
        what the control socket answers after a bench command is the state it led to."""
        async with asyncio.timeout(timeout):
            await self.settled()
            while self._token_tasks:  # a card being authorized (may take a round trip)
                await asyncio.wait(set(self._token_tasks))
                await self.settled()
            for evse in self.evses.values():
                await evse.reported()
            await self.settled()

    # ------------------------------------------------------------------ the version's rules

    def use_rules(self, rules: TxRules) -> None:
        """When transactions start and stop, as the active OCPP version says. A version's
        rules replace the previous version's, resumption included (none until it says)."""
        for evse in self.evses.values():
            evse.rules = rules
        self.resumption = None

    def use_resumption(self, rules: Callable[[], ResumptionRules] | None) -> None:
        """Whether (and when) transactions a restart interrupted go on instead of ending with
        PowerLoss (2.1 E17); read at start-up. Call after :meth:`use_rules`."""
        self.resumption = rules

    async def _handle(self, event: HalEvent) -> None:
        if isinstance(event, PilotChanged):
            evse = self.evses.get(event.evse_id)
            if evse is not None:
                await evse.on_pilot()
                await self._follow_the_ev(evse)
        elif isinstance(event, TokenPresented):
            # Authorization may take a network round trip: never hold up pilot events for it.
            task = self.spawn(self.present_token(Token(event.uid, event.token_type),
                                                 event.evse_id), f"token-{event.uid}")
            self._token_tasks.add(task)
            task.add_done_callback(self._token_tasks.discard)
            # What became of the tap, for whoever asked for it (``ctl tap`` prints it).
            self.taps.pop(event.uid, None)
            self.taps[event.uid] = task
            if len(self.taps) > TAPS_KEPT:
                del self.taps[next(iter(self.taps))]
        elif isinstance(event, FaultRaised):
            if event.evse_id == 0:
                await self.station_fault(event.kind, True, event.detail)
            elif event.evse_id in self.evses:
                await self.evses[event.evse_id].raise_fault(event.kind, event.detail)
        elif isinstance(event, FaultCleared):
            if event.evse_id == 0:
                await self.station_fault(event.kind, False)
            elif event.evse_id in self.evses:
                await self.evses[event.evse_id].clear_fault(event.kind)
        elif isinstance(event, EvChanged):  # the EV's limits / modes / battery moved
            evse = self.evses.get(event.evse_id)
            if evse is not None:
                await evse.on_ev_changed()

    async def station_fault(self, kind: FaultKind, active: bool, detail: str = "") -> None:
        """A fault of the station as a whole (a shared reader, the grid meter of load
        management) raised or cleared: reported once per change, every EVSE's status again."""
        if active:
            if kind in self.station_faults:
                return
            log.warning("station fault %s: %s", kind, detail)
            self.station_faults[kind] = detail
            self.observer.fault_changed(0, kind, True, detail)
            for evse in self.evses.values():
                async with evse.mutex:
                    evse._update_status()
        elif self.station_faults.pop(kind, None) is not None:
            log.info("station fault %s cleared", kind)
            self.observer.fault_changed(0, kind, False, "")

    # ------------------------------------------------------------------ tokens

    async def _follow_the_ev(self, evse: EvseController) -> None:
        """A card tapped at a shared reader before any EV was plugged in went to the first
        free EVSE; the driver then plugs in wherever they like. When an EV arrives at an EVSE
        with nobody authorized while such a card waits on another EVSE (no transaction, no EV
        there yet), the authorization moves to the EV: one reader, several sockets."""
        if not self._waits_for_authorization(evse) or (evse.session and evse.session.token):
            return
        for other in self.evses.values():
            s = other.session
            if (other is evse or s is None or not s.authorized or s.token is None
                    or other.tx is not None or other.ev_connected
                    or s.remote_start_id is not None or s.reservation_id is not None
                    or self._shared_taps.get(other.id) != s.token.id or s.auth is None):
                continue
            token, result = s.token, s.auth
            admitted, reservation = self._reservation_for(token, evse, result.parent)
            if not admitted:
                return
            log.info("token %s: the EV was plugged in at EVSE %s, not %s: the authorization "
                     "follows it", token.id, evse.id, other.id)
            del self._shared_taps[other.id]
            await other.deauthorize(StopReason.LOCAL)
            await self._take(evse, token, result, reservation)
            return

    @staticmethod
    def _waits_for_authorization(evse: EvseController) -> bool:
        """An EV is plugged in and its session has no (accepted) token yet."""
        s = evse.session
        return evse.ev_connected and (s is None or (not s.authorized
                                                    and s.ended_reason is None))

    def _group_of(self, evse: EvseController) -> str | None:
        """The group of the session on ``evse``: the one the CSMS named (in the authorization
        or the transaction answer), else the one the local list or cache knows for its card
        (a session started offline as unknown, 1.6 3.10 offline group stop)."""
        s, tx = evse.session, evse.tx
        group = (tx.parent if tx else None) or (s.auth.parent if s and s.auth else None)
        if not group and s is not None and s.token is not None:
            group = self.authorization.known_parent(s.token.id)
        return group or None

    def _evse_for_token(self, token: Token, evse_id: int | None, parent: str | None = None,
                        *, strict: bool = True) -> EvseController | None:
        """Where a card presented at ``evse_id`` (None: a shared reader) goes. ``strict``:
        only where a reservation lets this card (of group ``parent``) in; not strict, before
        its authorization told its group, a reservation is no obstacle yet (H03.FR.08: the
        CSMS is asked for the group of a card presented at a reserved EVSE)."""
        if evse_id is not None:
            return self.evses.get(evse_id)
        candidates = [e for e in self.evses.values()
                      if e.operative and e.blocking_fault is None]
        reservations = self.built("reservations")  # none built: nothing is reserved

        def admitted(e: EvseController) -> bool:
            return (not strict or reservations is None
                    or reservations.admit(e.id, token.id, parent)[0])

        for e in candidates:  # an EV waiting for authorization comes first
            if self._waits_for_authorization(e) and admitted(e):
                return e
        idle = [e for e in candidates if e.session is None and not e.ev_connected]
        for e in idle:  # then the EVSE reserved for this card (tap before plug)
            if reservations is not None and reservations.reserved_for(e.id, token.id, parent):
                return e
        for e in idle:  # then a free EVSE
            if admitted(e):
                return e
        return None

    def _reservation_for(self, token: Token, target: EvseController,
                         parent: str | None) -> tuple[bool, Reservation | None]:
        """Whether a reservation lets ``token`` take ``target``, and the one it uses there;
        the group is the authorization's, else what the local list or cache knows. Without
        a reservation service (none was ever made) every EVSE is free to take."""
        reservations = self.built("reservations")
        if reservations is None:
            return True, None
        group = parent or self.authorization.known_parent(token.id)
        ok, reservation = reservations.admit(target.id, token.id, group)
        if not ok:
            log.info("token %s: EVSE %s is reserved for another token", token.id, target.id)
        return ok, reservation

    async def _take(self, target: EvseController, token: Token, result: AuthResult,
                    reservation: Reservation | None,
                    remote_start_id: int | None = None) -> bool:
        ok = await target.authorize(token, result, remote_start_id=remote_start_id,
                                    reservation_id=reservation.id if reservation else None)
        if ok and reservation is not None:
            self.reservations.use(reservation, target.id)
        return ok

    async def present_token(self, token: Token, evse_id: int | None = None) -> str:
        """A card was presented: stop the session it owns, or authorize a new one.

        Returns what happened ("stopped", "authorized", "rejected", "ignored") for the caller
        (the control socket prints it; the benchmark times it).
        """
        for e in self.evses.values():  # a cable kept locked after the EV left
            if e.hold_locked and await e.release_hold(token.id):
                return "unlocked"
        for e in self.evses.values():  # the same card stops its own session, no round trip
            s = e.session
            if s is not None and s.authorized and s.token is not None and s.token.id == token.id:
                await e.deauthorize(StopReason.LOCAL, by=token.id)
                return "stopped"
        target = self._evse_for_token(token, evse_id, strict=False)
        running = [e for e in self.evses.values()
                   if e.session is not None and e.session.authorized and e.tx is not None]
        if target is None and not running:
            log.info("token %s: no EVSE can take it", token.id)
            return "ignored"
        if self.authorizer is None:
            return "rejected"
        result = await self.authorizer.authorize(token, target.id if target else None)
        # A card of the group of a running session stops it (1.6 3.10: "the same token, or
        # another token in the same group, [may] stop the transaction"; 2.0.1 C09, TC_C_39_CS:
        # with the EV plugged in and charging). The group is on equal footing with the card
        # that started the session, which stops it wherever it is presented, so a shared
        # reader stops the group's session even while another EVSE has an EV waiting (that EV
        # is no sign of what the card is meant for). The one exception: the card was presented
        # at the reader of one EVSE and an EV waits there for authorization: that is a second
        # car of the group, and the card starts it. A refused card stops nothing (TC_C_42_CS).
        starts_here = (evse_id is not None and target is not None
                       and self._waits_for_authorization(target))
        if result.accepted and result.parent and not starts_here:
            for e in running:
                if self._group_of(e) == result.parent:
                    await e.deauthorize(StopReason.LOCAL, by=token.id)
                    return "stopped"
        if target is None or not result.accepted:
            log.info("token %s: %s (%s)", token.id, result.status, result.source)
            return "rejected"
        group = result.parent or self.authorization.known_parent(token.id)
        if evse_id is None:  # its group is known now: where may it go
            target = self._evse_for_token(token, None, group) or target
        ok, reservation = self._reservation_for(token, target, group)
        if not ok:
            return "rejected"
        ok = await self._take(target, token, result, reservation)
        if ok and evse_id is None and not target.ev_connected:
            self._shared_taps[target.id] = token.id  # may follow the EV (_follow_the_ev)
        return "authorized" if ok else "rejected"

    def remote_start_target(self, evse_id: int | None,
                            token: Token | None = None) -> EvseController | None:
        """Where a remote start goes: the EVSE named, else the one reserved for ``token``,
        else one with an EV waiting, else the first free one; None when none can take a new
        authorization (in use, inoperative, faulted, no such EVSE, or reserved for another
        token: 1.6 5.13, 2.0.1 TC_H_02_CS; the group of ``token`` is what the local list or
        cache knows, the answer cannot wait for an Authorize)."""
        candidates = ([self.evses[evse_id]] if evse_id in self.evses else []) \
            if evse_id is not None else list(self.evses.values())
        free = [e for e in candidates if e.operative and e.blocking_fault is None
                and not e.resetting and (e.session is None or (not e.session.authorized
                                           and e.session.ended_reason is None))]
        reservations = self.built("reservations")  # none built: nothing is reserved
        if token is not None and reservations is not None:
            group = self.authorization.known_parent(token.id)
            free = [e for e in free if reservations.admit(e.id, token.id, group)[0]]
            mine = [e for e in free if reservations.reserved_for(e.id, token.id, group)]
            if mine and evse_id is None:
                return next((e for e in mine if e.ev_connected), mine[0])
        if not free:
            return None
        return next((e for e in free if e.ev_connected), free[0])

    async def authorize_at(self, evse_id: int, token: Token, result: AuthResult) -> bool:
        """Authorize ``token`` (already judged: ``result``) on EVSE ``evse_id``, as a card at
        its reader would be: the reservations still decide (ISO 15118 Plug & Charge, whose
        contract was authorized by agent/core/iso15118.py). False when it is not taken."""
        target = self.evses.get(evse_id)
        if target is None or not result.accepted:
            return False
        ok, reservation = self._reservation_for(token, target, result.parent)
        return ok and await self._take(target, token, result, reservation)

    async def remote_start(self, token: Token, evse_id: int,
                           remote_start_id: int | None = None) -> EvseController | None:
        """Authorize a session the CSMS asked for (first through the authorization policy
        when AuthorizeRemoteTxRequests says so); None when it does not happen."""
        result = AuthResult("Accepted", source="remote")
        if self.settings["AuthorizeRemoteTxRequests"]:
            result = await self.authorization.authorize(token, evse_id)
            if not result.accepted:
                log.info("remote start for %s refused: %s", token.id, result.status)
                return None
        target = self.evses.get(evse_id)
        if target is None:
            return None
        ok, reservation = self._reservation_for(token, target, result.parent)
        if not ok:
            return None
        ok = await self._take(target, token, result, reservation, remote_start_id)
        return target if ok else None

    def invalid_id_late(self, local_id: str) -> None:
        """The CSMS said late (in the answer to a transaction message) that the token of a
        running transaction is not valid (1.6 3.5.4, 2.0.1 E05)."""
        evse = self.find_tx(local_id=local_id)
        if evse is not None:
            self.spawn(self._invalid_id(evse, local_id), f"invalid-id-{evse.id}")

    async def _invalid_id(self, evse: EvseController, local_id: str) -> None:
        """After MaxEnergyOnInvalidId Wh, deauthorize (StopTransactionOnInvalidId) or only
        stop the energy."""
        limit = self.settings["MaxEnergyOnInvalidId"]
        while limit > 0:
            tx = evse.tx
            if tx is None or tx.local_id != local_id:
                return
            if (evse.energy_wh() or 0.0) >= limit:
                break
            await self.clock.sleep(max(0.5, self.meter_poll_s))
        tx = evse.tx
        if tx is None or tx.local_id != local_id:
            return
        if self.settings["StopTransactionOnInvalidId"]:
            await evse.deauthorize(StopReason.DEAUTHORIZED)
        else:
            await evse.suspend(False)

    # ------------------------------------------------------------------ queries

    def find_tx(self, remote_id: str | None = None,
                local_id: str | None = None) -> EvseController | None:
        for e in self.evses.values():
            tx = e.tx
            if tx is None:
                continue
            if remote_id is not None and tx.remote_id == remote_id:
                return e
            if local_id is not None and tx.local_id == local_id:
                return e
        return None

    def snapshots(self) -> list[EvseSnapshot]:
        return [e.snapshot() for e in self.evses.values()]

    @property
    def any_transaction(self) -> bool:
        return any(e.tx is not None for e in self.evses.values())

    async def end_all(self, reason: StopReason) -> None:
        for e in self.evses.values():
            try:
                await e.end_transaction(reason)
            except Exception:  # one EVSE's failure (e.g. storage) must not keep others open
                log.exception("evse %s: ending its transaction failed", e.id)

    async def set_operative(self, evse_id: int, operative: bool) -> str:
        """Availability for one EVSE, or all of them (0): Scheduled if any is busy."""
        targets = list(self.evses.values()) if evse_id == 0 else [self.evses[evse_id]]
        results = [await e.set_operative(operative) for e in targets]
        return "Scheduled" if "Scheduled" in results else "Accepted"

    async def set_availability(self, operative: bool, evse_id: int | None = None,
                               connector_id: int | None = None) -> str:
        """One level of the availability hierarchy: the station (no ``evse_id``), an EVSE, or
        one connector of it. Each level keeps its own state (2.0.1 G03/G04: making the
        station Operative again leaves an EVSE set Inoperative on its own Inoperative).
        Scheduled when a running transaction holds the change back (the idle EVSEs change at
        once), else Accepted. Unknown EVSE or connector: ValueError."""
        if evse_id is None:
            results = [await e.set_availability(STATION, operative)
                       for e in self.evses.values()]
        else:
            evse = self.evses.get(evse_id)
            if evse is None:
                raise ValueError(f"no EVSE {evse_id}")
            results = [await evse.set_availability(
                EVSE if connector_id is None else CONNECTOR, operative, connector_id)]
        return "Scheduled" if "Scheduled" in results else "Accepted"

    async def reset_evse(self, evse_id: int, reason: StopReason,
                         while_down: Callable[[], Awaitable[None]] | None = None) -> None:
        """Reset one EVSE on its own (:meth:`EvseController.reset`), with the HAL's reset of
        its hardware (``Hal.reset_evse``)."""
        evse = self.evses[evse_id]
        await evse.reset(reason, restart=lambda: self.hal.reset_evse(evse_id),
                         while_down=while_down)

    def open_transactions(self) -> list[TxRecord]:
        """Transactions the journal has open: after a restart, those a power cut interrupted."""
        return self.storage.tx_open()

    # ------------------------------------------------------------------ power-loss recovery

    async def _resume(self) -> None:
        """Resume the open transactions the active version's rules let go on (see
        agent/core/resumption.py); :meth:`recover` closes the others."""
        if self.resumption is None:
            return
        try:
            rules = self.resumption()
            open_txs = self.storage.tx_open()
        except Exception as exc:  # noqa: BLE001 - resumption is optional, closing is not
            log.error("transactions cannot be resumed: %s", exc)
            return
        for tx in open_txs:
            evse = self.evses.get(tx.evse_id)
            try:
                why = why_not_resumed(tx, evse, rules, self.clock, self.authorization)
            except StorageError as exc:
                why = f"its authorization cannot be checked ({exc})"
            if why is not None:
                self.not_resumed[tx.local_id] = why
                continue
            assert evse is not None
            await evse.adopt_resumed(tx, allow_energy=rules.allow_energy)
            self.resumed.append(tx)
            log.warning("transaction %s (EVSE %s, token %s) was open at start-up: it goes on "
                        "(interrupted at most %.0f s, meter %.1f Wh now)", tx.local_id,
                        tx.evse_id, tx.id_token or tx.auth_token,
                        self.clock.elapsed_since(tx.last_meter_at or tx.started_at) or 0.0,
                        evse.reading.energy_import_wh if evse.reading else tx.last_meter_wh)
            self.observer.transaction_resumed(tx, evse.snapshot())

    def recover(self) -> list[TxRecord]:
        """Close, exactly once, every transaction a power cut or crash left open (and
        :meth:`start` did not resume, see agent/core/resumption.py).

        Run at start-up, after the meters were read and before any connection. Each
        transaction ends with reason PowerLoss, stamped with the time of its last journalled
        reading (when power was last seen on), not the restart time, which would bill the
        outage. Its meterStop is the meter's own register when plausible, else the journal
        (:meth:`recovered_meter`). The observer (the adapter of the version last in use)
        queues its end message in the same SQLite transaction that closes the journal entry,
        so a second crash during recovery can neither lose it nor queue it twice.
        """
        closed = []
        resumed = {tx.local_id for tx in self.resumed}
        not_resumed = self.not_resumed
        for tx in self.storage.tx_open():
            if tx.local_id in resumed:
                continue  # it goes on (resumed at start-up)
            meter, source = self.recovered_meter(tx)
            when = tx.last_meter_at or tx.started_at
            why = not_resumed.get(tx.local_id)
            log.warning("transaction %s (EVSE %s, token %s) was open at start-up: closing it "
                        "with PowerLoss, meterStop %.1f Wh (%s)%s", tx.local_id, tx.evse_id,
                        tx.id_token, meter, source, f"; not resumed: {why}" if why else "")
            with self.storage.atomic():
                self.storage.tx_close(tx.local_id, when, StopReason.POWER_LOSS.value, meter)
                tx.meter_stop_wh, tx.stopped_at = meter, when
                tx.stop_reason, tx.closed = StopReason.POWER_LOSS.value, True
                self.observer.transaction_recovered(tx)
            closed.append(tx)
        return closed

    def recovered_meter(self, tx: TxRecord) -> tuple[float, str]:
        """meterStop of a transaction found open: the meter's register if plausible, else the
        last journalled reading (at most ``meter_persist_s`` behind at the moment of the cut).

        A power cut stops the charging and, with it, a meter that keeps its register: reading
        it now gives the exact value. A lower register (meter replaced or reset) or one far
        ahead (energy that flowed while nobody journalled it) is not trusted.
        """
        journal = tx.last_meter_wh
        evse = self.evses.get(tx.evse_id)
        reading = evse.reading if evse is not None else None
        if evse is None or reading is None:
            return journal, "last journalled reading; meter not readable"
        register = reading.energy_import_wh
        max_w = evse.max_current_a * evse.phases * NOMINAL_VOLTAGE
        slack_wh = max_w * (self.meter_persist_s + RECOVERY_SLACK_S) / 3600.0
        if journal <= register <= journal + slack_wh:
            return register, "meter register at start-up"
        return journal, (f"last journalled reading; register {register:.1f} Wh "
                         f"not consistent with it")

    # ------------------------------------------------------------------ meter sampling

    async def sample(self, evse: EvseController) -> None:
        """One reading now (tests, benches): as the sampler judges it, but one bad reading
        is the fault at once."""
        try:
            reading = await asyncio.wait_for(evse.hw.meter.read(), 5.0)
            why = implausible(reading, evse.reading)
            if why is not None:
                raise HalError(FaultKind.METER, why)
        except (HalError, TimeoutError) as exc:
            await evse.on_meter(None, str(exc) or "meter read timed out")
            return
        await evse.on_meter(reading, None)

    async def _sampler(self, evse: EvseController) -> None:
        """Poll the meter: live figures, fault detection, and the power-loss meter journal.

        A meter that answers at once (the mock HAL's: ``answers_at_once`` and ``read_now``)
        is read from the one tick its clock shares with every other station of the loop
        (``agent.clock.ticker``): a function call per EVSE and period where a timer and a
        task wake-up each were 86 % of a swarm's steady-state CPU. What has to suspend (a
        meter fault to raise or clear, a setpoint to drive) still runs as a task, and the
        next ticks skip this EVSE until it is done, as the loop below waits for it. Any other
        meter (Modbus, a test's gated one) keeps this task's own loop with its 5 s timeout.
        Cancelling this task (``Station.stop``) ends the sampling either way.
        """
        poll = _MeterPoll(self, evse)
        if _ticks(evse.hw.meter) and self.meter_poll_s > 0:
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            poll.done = done
            tick = ticker(self.clock, self.meter_poll_s)
            handle = tick.add(poll.tick, poll.fail)
            try:
                await done  # never set: a failure ends the task with its exception
            finally:
                tick.remove(handle)
            return
        while True:
            await self.clock.sleep(self.meter_poll_s)
            await poll.read_and_apply(evse.hw.meter)


def _ticks(meter: object) -> bool:
    """Whether ``meter`` can be read from the shared tick (synchronously, never waiting)."""
    return bool(getattr(meter, "answers_at_once", False)) and callable(
        getattr(meter, "read_now", None))


_INF = math.inf


def _surely_plausible(reading: MeterReading, previous: MeterReading | None) -> bool:
    """True when :func:`implausible` would find nothing wrong with ``reading``, decided in a
    few comparisons for the plain floats a meter driver hands up (the shared tick runs this
    for every EVSE every second); False means "ask :func:`implausible`", which has the last
    word (on anything but a float, on any doubt)."""
    e = reading.energy_import_wh
    x = reading.energy_export_wh
    p = reading.power_w
    if not (type(e) is float and type(x) is float and type(p) is float
            and 0.0 <= e < _INF and 0.0 <= x < _INF and -_INF < p < _INF):
        return False
    for v in reading.voltage_v:
        if not (type(v) is float and -_INF < v < _INF):
            return False
    for v in reading.current_a:
        if not (type(v) is float and -_INF < v < _INF):
            return False
    return previous is None or e >= previous.energy_import_wh - REGISTER_SLACK_WH


class _MeterPoll:
    """The meter poll of one EVSE (``Station._sampler``): the two-failures rule and the
    power-loss journal, shared by the sampler's own loop and the clock's shared tick."""

    __slots__ = ("station", "evse", "failures", "persists", "journal_ok", "last_persist",
                 "busy", "done", "_meter", "_read_now")

    def __init__(self, station: Station, evse: EvseController) -> None:
        self.station = station
        self.evse = evse
        self.failures = 0
        self.persists = 0
        self.journal_ok = True
        self.last_persist = station.clock.monotonic()
        self.busy = False  # a step that had to suspend is under way: ticks skip this EVSE
        self.done: asyncio.Future[None] | None = None
        self._meter: object = None  # the meter _read_now belongs to (a test may swap it)
        self._read_now: Callable[[], MeterReading] | None = None

    def judge(self, reading: MeterReading | None, error: BaseException | None
              ) -> tuple[MeterReading | None, str | None]:
        """(reading, None) for a good reading; (None, why) for the second failure in a row
        and after (one lost frame on RS-485 is not a fault yet); (None, None) otherwise."""
        if error is None and reading is not None:
            previous = self.evse.reading
            if reading is previous or _surely_plausible(reading, previous):
                self.failures = 0
                return reading, None
            why = implausible(reading, previous)
            if why is None:
                self.failures = 0
                return reading, None
            if self.failures == 0:
                log.warning("evse %s: %s: reading refused", self.evse.id, why)
            error = HalError(FaultKind.METER, why)  # short: it is the 1.6 info
        self.failures += 1
        if self.failures >= 2:
            return None, str(error) or "meter read timed out"
        return None, None

    async def apply(self, reading: MeterReading | None, error: str | None) -> None:
        """What a judged sample does: tell the EVSE (awaited), then journal the reading."""
        if reading is None:
            if error is not None:
                await self.evse.on_meter(None, error)
            return
        await self.evse.on_meter(reading, None)
        self.journal(reading)

    def tick(self) -> None:
        """One sample from the shared tick: synchronous unless something has to suspend."""
        if self.busy:
            return
        evse = self.evse
        meter = evse.hw.meter
        if meter is not self._meter:
            self._meter = meter
            self._read_now = meter.read_now if _ticks(meter) else None  # type: ignore[attr-defined]
        read_now = self._read_now
        if read_now is None:  # swapped for a meter that may wait: read it in a task
            self._step(self.read_and_apply(meter))
            return
        try:
            reading, error = read_now(), None
        except HalError as exc:
            reading, error = None, exc
        good, why = self.judge(reading, error)
        if good is None:
            if why is not None and not evse.on_meter_now(None, why):
                self._step(self.apply(None, why))
            return
        if not evse.on_meter_now(good, None):
            self._step(self.apply(good, None))
        elif evse.setpoint_request is not None:  # a listener asked for one just now
            self._step(self._hold_then_journal(good))
        else:
            self.journal(good)

    async def read_and_apply(self, meter: object) -> None:
        """One sample through the meter's coroutine (a meter that may wait, or one the tick
        cannot read): read, judge, apply."""
        error: BaseException | None = None
        reading: MeterReading | None = None
        try:
            if getattr(meter, "answers_at_once", False):
                # A read that never suspends cannot time out: no timer to arm and cancel.
                reading = await meter.read()  # type: ignore[attr-defined]
            else:
                # Not wait_for: on Python 3.11 it can swallow a cancel that arrives as the
                # read completes, and the sampler would then outlive Station.stop().
                async with asyncio.timeout(5.0):
                    reading = await meter.read()  # type: ignore[attr-defined]
        except (HalError, TimeoutError) as exc:
            error = exc
        await self.apply(*self.judge(reading, error))

    async def _hold_then_journal(self, reading: MeterReading) -> None:
        await self.evse.on_meter(None, None)
        self.journal(reading)

    def _step(self, coro: Awaitable[None]) -> None:
        self.busy = True
        self.station.spawn(self._run_step(coro), f"meter-{self.evse.id}-step")

    async def _run_step(self, coro: Awaitable[None]) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the sampler ends with it, as its own loop would have
            self.fail(exc)
        finally:
            self.busy = False

    def fail(self, exc: BaseException) -> None:
        """A sample failed unexpectedly: the sampler task ends with ``exc`` (logged)."""
        done = self.done
        if done is not None and not done.done():
            done.set_exception(exc)

    def journal(self, reading: MeterReading) -> None:
        """Every ``meter_persist_s`` of a transaction, its meter reading to the journal (what
        power-loss recovery closes it with), fsynced every ``METER_FSYNC_EVERY``-th time."""
        station, evse = self.station, self.evse
        tx = evse.tx
        if tx is None:
            return
        now = station.clock.monotonic()
        if now - self.last_persist < station.meter_persist_s:
            return
        self.last_persist = now
        self.persists += 1
        tx.last_meter_wh = reading.energy_import_wh
        tx.last_meter_at = station.clock.stamp()
        try:
            station.storage.tx_meter(tx.local_id, reading.energy_import_wh, tx.last_meter_at,
                                     durable=self.persists % METER_FSYNC_EVERY == 0)
        except (StorageError, KeyError) as exc:
            # The sampler also detects meter faults: it must outlive a bad disk.
            if self.journal_ok:
                log.error("evse %s: meter readings not journalled: %s", evse.id, exc)
            self.journal_ok = False
        else:
            if not self.journal_ok:
                log.info("evse %s: meter readings journalled again", evse.id)
            self.journal_ok = True
