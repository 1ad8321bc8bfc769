"""The protocol adapter: one OCPP version as a composition of functional blocks.

What every version does the same way lives here once: the task groups (for the agent's
lifetime, and for one connection), the registration (BootNotification until Accepted, and
*not* again after a mere reconnect: OCPP-J 1.6 5.4 / 2.0.1 part 4 say a station "should not
send a BootNotification unless one or more of the elements in the BootNotification have
changed"), the heartbeat, clock sync, sending CALLs, the durable outbox sender and the status
queue.  What differs is in the blocks the version's registry entry lists
(:mod:`agent.ocpp.registry`): their CALL handlers, settings and device-model variables, and
their reactions to the core's events, which this class hands to every block that has them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent.clock import Clock, may_hold_deferred, parse_iso, sleep_or
from agent.core.model import EvseSnapshot, StopReason, TxPoint, TxRecord
from agent.core.security_events import SecurityEvent
from agent.core.settings import Settings
from agent.core.station import Station
from agent.link.outbox import Hold, OutboxSender
from agent.link.rpc import CallFailed, CallTimeout, ConnectionLost, OcppCallError, RpcSession
from agent.ocpp.blocks import Block, Handler
from agent.ocpp.status import StatusQueue
from agent.storage import OutboxItem, Storage
from hal.interfaces import FaultKind

if TYPE_CHECKING:
    from agent.ocpp.registry import VersionSpec

log = logging.getLogger("cp_agent.adapter")

BOOT_RETRY_S = 60.0  # after a failed BootNotification (CALLERROR, unusable answer)
# A CSMS time this far from ours re-plans what depends on the wall clock (sync_clock).
CLOCK_MOVED_S = 1.0

# A block's method sending a triggered message (for one EVSE / connector, or None: all).
Trigger = Callable[[int | None], Awaitable[None]]


@dataclass
class EvseInfo:
    """What the configuration says of an EVSE (the device model reports it)."""

    id: int
    phases: int
    max_power_w: float
    connector_type: str = "cType2"
    connectors: tuple[tuple[int, str], ...] = ()  # (connectorId, type); empty: one, as above

    @property
    def connector_list(self) -> tuple[tuple[int, str], ...]:
        return self.connectors or ((1, self.connector_type),)


@dataclass
class StationContext:
    """Everything an adapter is built from; the composition root fills it in."""

    station: Station
    storage: Storage
    clock: Clock
    settings: Settings
    station_id: str
    vendor: str
    model: str
    serial_number: str | None
    firmware_version: str
    security_profile: int = 0
    message_timeout_s: float = 30.0
    evses: list[EvseInfo] = field(default_factory=list)
    defaults: dict[str, Any] = field(default_factory=dict)
    request_reset: Callable[[str], Awaitable[None]] | None = None
    # The link's network profiles (agent.link.network.NetworkPlan): security profile, slots,
    # password rotation, reconnect; None in tests that build adapters without a link.
    network: Any = None


class Adapter:
    """One OCPP version's personality of the station; lives as long as the agent."""

    def __init__(self, spec: VersionSpec, ctx: StationContext) -> None:
        self.spec = spec
        self.version = spec.version
        self.subprotocol = spec.subprotocol
        self.ctx = ctx
        self.station = ctx.station
        self.storage = ctx.storage
        self.clock = ctx.clock
        self.settings = ctx.settings
        self.rpc: RpcSession | None = None
        self.registration: str | None = None  # Accepted / Pending / Rejected of the last boot
        self.accepted = asyncio.Event()
        self.registration_seen = asyncio.Event()  # set at every Boot answer (tests, demo)
        self.boots = 0  # BootNotifications sent by this process
        self._accepted_boot: dict | None = None  # the payload accepted in this process
        self._boot_wakeup = asyncio.Event()
        self._heartbeat_wakeup = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self._session_tasks: set[asyncio.Task] = set()
        self.blocks: list[Block] = [cls(self) for cls in spec.blocks]
        for block in self.blocks:
            self.settings.register(block.settings_defs())
        self.status = StatusQueue("StatusNotification", self.clock, ready=self._status_ready)
        self.outbox = OutboxSender(
            self.storage, self.clock, prepare=self._prepare_outbox,
            on_result=self._outbox_result, on_done=self._outbox_done,
            on_dropped=self._outbox_dropped,
            attempts=lambda: self.settings["TransactionMessageAttempts"],
            retry_interval=lambda: self.settings["TransactionMessageRetryInterval"])
        self._owners: dict[str, Block] = {}
        handlers: dict[str, Handler] = {}
        for block in self.blocks:
            for action in block.OUTBOX_ACTIONS:
                self._owners[action] = block
            for action, handler in block.routes().items():
                if action in handlers:
                    raise ValueError(f"OCPP {self.version}: {action} is handled twice")
                handlers[action] = handler
        self.handlers: dict[str, Handler] = {
            action: self._guarded(action, fn) for action, fn in handlers.items()}
        self._triggers: dict[str, Trigger] = {}
        for block in self.blocks:
            for message, method in block.TRIGGERS.items():
                fn = getattr(block, method, None)
                if not callable(fn):
                    raise TypeError(f"{type(block).__name__}.TRIGGERS[{message!r}] names "
                                    f"{method!r}, which is not a method of it")
                if message in self._triggers:
                    raise ValueError(f"OCPP {self.version}: triggered {message} is claimed "
                                     "twice")
                self._triggers[message] = fn
        self.settings.listeners.append(self._setting_changed)

    # ------------------------------------------------------------------ composition

    def block(self, cls: type[Block]) -> Any:
        """The instance of a block class in this version (blocks that work together)."""
        for block in self.blocks:
            if isinstance(block, cls):
                return block
        raise LookupError(f"OCPP {self.version} has no {cls.__name__}")

    def _each(self, hook: str, *args: Any) -> None:
        for block in self.blocks:
            fn = getattr(block, hook, None)
            if fn is not None:
                fn(*args)

    @property
    def outbox_actions(self) -> frozenset[str]:
        return frozenset(self._owners)

    @property
    def active(self) -> bool:
        """True while the core reports to this adapter (the version last negotiated)."""
        return self.station.observer is self

    def activate(self) -> None:
        """Take charge of the core: its events, its transaction and authorization rules, and
        the delivery of its security events."""
        self.station.observer = self
        self.station.security_events.deliver_to(self._security_event)
        self.spec.activate(self)

    def _security_event(self, event: SecurityEvent) -> None:
        self._each("security_event", event)

    def trigger_target(self, message: str) -> Trigger | None:
        """The method of the block that sends ``message`` when a CSMS triggers it (its
        ``TRIGGERS``), or None when no block of this version claims it (NotImplemented)."""
        return self._triggers.get(message)

    # ------------------------------------------------------------------ tasks

    def spawn(self, coro: Awaitable[Any], name: str, *, session: bool = False) -> asyncio.Task:
        """Run ``coro`` as a referenced task (an unreferenced one can vanish with its error);
        ``session`` tasks end with the connection."""
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        group = self._session_tasks if session else self._tasks
        group.add(task)
        task.add_done_callback(lambda t: self._reap(t, group))
        return task

    @staticmethod
    def _reap(task: asyncio.Task, group: set) -> None:
        group.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if isinstance(exc, ConnectionLost):
            log.debug("task %s ended with the connection", task.get_name())
        elif exc is not None:
            log.error("task %s failed", task.get_name(), exc_info=exc)

    async def start(self) -> None:
        """Agent start-up."""
        self._each("start")

    async def stop(self) -> None:
        for task in list(self._tasks) + list(self._session_tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, *self._session_tasks, return_exceptions=True)

    async def sleep_or(self, seconds: float, event: asyncio.Event) -> None:
        """Sleep on the injected clock, but wake early when ``event`` is set."""
        await sleep_or(self.clock, seconds, event)

    # ------------------------------------------------------------------ one connection

    async def run_session(self, rpc: RpcSession) -> None:
        """Everything one websocket connection does, until it drops (then we are cancelled)."""
        self.rpc = rpc
        self.accepted.clear()
        try:
            await self._register()
            self._each("session_started")
            self.spawn(self.status.run(self.call, lambda p: self.spec.prepare_status(self, p)),
                       f"{self.version}-status", session=True)
            self.spawn(self._heartbeat(), f"{self.version}-heartbeat", session=True)
            self.spawn(self.outbox.run(rpc), f"{self.version}-outbox", session=True)
            await asyncio.Event().wait()
        finally:
            for task in list(self._session_tasks):
                task.cancel()
            await asyncio.gather(*self._session_tasks, return_exceptions=True)
            self.accepted.clear()
            self.rpc = None
            if self.registration != "Accepted":
                self.registration = None  # offline: the offline rules apply, not the answer
            self._each("session_ended")

    async def _register(self) -> None:
        """BootNotification until Accepted; after a mere reconnect, only if it changed."""
        provisioning = self.spec.provisioning(self)
        if self._accepted_boot is not None and \
                self._accepted_boot == provisioning.boot_elements():
            log.info("reconnected; registration still Accepted, no new BootNotification")
            self.registration = "Accepted"
            self.accepted.set()
            return
        reason = provisioning.boot_reason()
        while True:
            assert self.rpc is not None
            self._boot_wakeup.clear()
            payload = provisioning.boot_payload(reason)
            self.boots += 1
            try:
                res = await self.rpc.call("BootNotification", payload)
            except CallTimeout:
                continue
            except ConnectionLost:
                raise
            except CallFailed as exc:
                log.warning("BootNotification failed (%s); retrying in %.0f s", exc,
                            BOOT_RETRY_S)
                await self.sleep_or(BOOT_RETRY_S, self._boot_wakeup)
                continue
            self.registration = res["status"]
            provisioning.registration_answered(self.registration)
            self.registration_seen.set()
            self.sync_clock(res.get("currentTime"))
            interval = int(res.get("interval", 0))
            if self.registration == "Accepted":
                if interval > 0:
                    self.settings.set_internal("HeartbeatInterval", interval)
                self._accepted_boot = provisioning.boot_elements()
                provisioning.boot_accepted()
                self.accepted.set()
                log.info("BootNotification accepted (heartbeat %s s)",
                         self.settings["HeartbeatInterval"])
                return
            wait = interval if interval > 0 else BOOT_RETRY_S
            log.info("BootNotification %s; next attempt in %s s", self.registration, wait)
            await self.sleep_or(wait, self._boot_wakeup)
            if self._boot_wakeup.is_set():
                reason = "Triggered"  # TriggerMessage(BootNotification) while not accepted

    def boot_now(self) -> None:
        """A TriggerMessage(BootNotification) while not accepted: the next attempt goes now."""
        self._boot_wakeup.set()

    def forget_registration(self) -> None:
        """An element of the BootNotification changed: the next connection boots again."""
        self._accepted_boot = None

    def sync_clock(self, current_time: str | None) -> None:
        if not current_time:
            return
        trusted = self.clock.trustworthy
        try:
            delta = self.clock.sync(parse_iso(current_time))
        except ValueError:
            log.warning("CSMS sent an unreadable currentTime %r", current_time)
            return
        self.spec.clock_corrected(self, delta)
        self._each("clock_synced", delta)  # e.g. timers on the wall clock re-arm
        if not trusted or abs(delta) >= CLOCK_MOVED_S:
            # Messages held for want of a trustworthy time may go now, and the limits of
            # profiles with absolute windows (and DER controls) are planned on the new time:
            # a station whose clock was far off judged them over or not yet begun. Every
            # Heartbeat answer syncs too; a sub-second correction wakes neither (an empty
            # outbox peek per heartbeat was 4 % of an idle swarm station).
            self.outbox.wake()
            profiles = getattr(self.station, "charging_profiles", None)
            if profiles is not None:
                profiles.wake()

    def _setting_changed(self, name: str, value: Any) -> None:
        if name == "HeartbeatInterval":
            self._heartbeat_wakeup.set()

    async def _heartbeat(self) -> None:
        """Heartbeat every HeartbeatInterval; a changed interval restarts the wait at once."""
        await self.accepted.wait()
        while True:
            interval = self.settings["HeartbeatInterval"]
            self._heartbeat_wakeup.clear()
            if interval <= 0:
                await self._heartbeat_wakeup.wait()
                continue
            await self.sleep_or(interval, self._heartbeat_wakeup)
            if self._heartbeat_wakeup.is_set():
                continue
            try:
                res = await self.call("Heartbeat", {})
            except CallFailed:
                continue
            self.sync_clock(res.get("currentTime"))

    # ------------------------------------------------------------------ sending

    @property
    def online(self) -> bool:
        return self.rpc is not None and self.accepted.is_set()

    async def call(self, action: str, payload: dict, *, pending_ok: bool = False) -> dict:
        """Send a CALL; before acceptance only what the CSMS asked for (``pending_ok``)."""
        rpc = self.rpc
        allowed = self.accepted.is_set() or (pending_ok and self.registration == "Pending")
        if rpc is None or not allowed:
            raise ConnectionLost(f"{action}: not connected or not accepted")
        return await rpc.call(action, payload)

    async def ask(self, action: str, payload: dict) -> dict | None:
        """A question whose answer decides something (Authorize): the answer, ``{}`` when the
        CSMS answered with an error (an answer all the same: 2.0.1 C13.FR.04), or None when
        the CSMS could not be reached (not connected, no answer in time)."""
        try:
            return await self.call(action, payload)
        except (CallTimeout, ConnectionLost) as exc:
            log.warning("%s not answered: %s", action, exc)
            return None
        except CallFailed as exc:
            log.warning("%s answered with an error (%s)", action, exc)
            return {}

    async def send_quiet(self, action: str, payload: dict, *, pending_ok: bool = False) -> None:
        """A message that is not transaction-related: sent once if online, never queued.
        A triggered Heartbeat's answer sets the clock as the periodic one's does (a CSMS
        triggers one to correct a station's time)."""
        try:
            res = await self.call(action, payload, pending_ok=pending_ok)
        except CallFailed as exc:
            log.info("%s not delivered: %s", action, exc)
            return
        if action == "Heartbeat" and isinstance(res, dict):
            self.sync_clock(res.get("currentTime"))

    async def send_unconfirmed(self, action: str, payload: dict) -> bool:
        """A 2.1 SEND (NotifyPeriodicEventStream): no answer awaited, never retried, not held
        behind a CALL in flight, and dropped rather than queued while offline or not
        accepted (2.1 part 4, 4.2.4).  True when it went out."""
        rpc = self.rpc
        if rpc is None or not self.accepted.is_set():
            log.debug("%s dropped: not connected or not accepted", action)
            return False
        try:
            await rpc.send_unconfirmed(action, payload)
        except ConnectionLost as exc:
            log.debug("%s dropped: %s", action, exc)
            return False
        return True

    async def after_answer(self) -> None:
        """Let the CALLRESULT of the handler that spawned us go out before what it caused."""
        rpc = self.rpc
        if rpc is not None:
            await rpc.drain(timeout=5.0)

    def _guarded(self, action: str, fn: Handler) -> Handler:
        async def handler(payload: dict) -> dict:
            refusal = self.spec.refuse_call(self, action)
            if refusal is not None:
                raise OcppCallError("SecurityError", refusal)
            return await fn(payload)
        return handler

    # ------------------------------------------------------------------ status

    def _status_ready(self, key: Hashable) -> bool:
        return self.spec.status_ready(self, key)

    def queue_status(self, key: Hashable, payload: dict) -> None:
        self.status.put(key, payload)

    # ------------------------------------------------------------------ outbox

    def _owner(self, item: OutboxItem) -> Block | None:
        return self._owners.get(item.action)

    def _prepare_outbox(self, item: OutboxItem) -> dict | None:
        """Real times for deferred stamps, then the owning block's own completion; None drops
        what this version cannot send (e.g. queued for another version)."""
        owner = self._owner(item)
        if owner is None:
            log.error("%s #%s was queued for another OCPP version; dropping it", item.action,
                      item.id)
            return None
        if may_hold_deferred(item.text):
            payload, held = self.clock.resolve_payload(item.payload)
        else:  # the stored text holds no marker: a copy to prepare, without the walk
            payload, held = dict(item.payload), False
        if held:
            log.info("%s #%s waits for the CSMS time (no trustworthy clock yet)", item.action,
                     item.id)
            raise Hold()
        prepare = getattr(owner, "prepare_outbox", None)
        return prepare(item, payload) if prepare is not None else payload

    def _outbox_result(self, item: OutboxItem, result: dict) -> None:
        owner = self._owner(item)
        hook = getattr(owner, "outbox_result", None) if owner is not None else None
        if hook is not None:
            hook(item, result)

    def _outbox_dropped(self, item: OutboxItem) -> None:
        """The outbox gave up on ``item``; runs inside the commit that drops it."""
        owner = self._owner(item)
        hook = getattr(owner, "outbox_dropped", None) if owner is not None else None
        if hook is not None:
            hook(item)

    def _outbox_done(self, item: OutboxItem) -> None:
        owner = self._owner(item)
        hook = getattr(owner, "outbox_done", None) if owner is not None else None
        if hook is not None:
            hook(item)
        self.status.wake()  # a status held for a transaction message may go now

    def enqueue(self, action: str, payload: dict, tx_ref: str | None = None) -> None:
        """Queue a message durably (call inside the storage transaction of its cause)."""
        self.storage.outbox_put(action, payload, tx_ref=tx_ref)
        self.outbox.wake()

    # ------------------------------------------------------------------ CoreObserver

    def status_changed(self, snap: EvseSnapshot, fault: FaultKind | None) -> None:
        self._each("status_changed", snap, fault)

    def transaction_started(self, tx: TxRecord, snap: EvseSnapshot, trigger: TxPoint) -> None:
        self._each("transaction_started", tx, snap, trigger)

    def transaction_ended(self, tx: TxRecord, reason: StopReason, snap: EvseSnapshot) -> None:
        self._each("transaction_ended", tx, reason, snap)

    def transaction_recovered(self, tx: TxRecord) -> None:
        self._each("transaction_recovered", tx)

    def transaction_resumed(self, tx: TxRecord, snap: EvseSnapshot) -> None:
        self._each("transaction_resumed", tx, snap)

    def session_event(self, evse_id: int, event: str, detail: dict) -> None:
        self._each("session_event", evse_id, event, detail)

    def fault_changed(self, evse_id: int, kind: FaultKind, active: bool, detail: str) -> None:
        self._each("fault_changed", evse_id, kind, active, detail)
