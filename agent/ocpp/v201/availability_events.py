"""AvailabilityState changes as NotifyEvent (2.0.1 G01 / G03 / G04 / H01, and 2.1).

The device model's AvailabilityState of the Connector, EVSE and ChargingStation components
"replaces the status values reported by the StatusNotification" (part 2 appendices); the
errata (2.8.1) allow a NotifyEvent "instead of" the StatusNotification, and the conformance
tests of block G (TC_G_02/04/06/08/17/18/19/21_CS) look for both. This station sends both: the
StatusNotification a CSMS of 2.0.1 relies on, and a NotifyEvent with trigger Delta,
eventNotificationType HardWiredNotification (no monitor is involved: the firmware reports it)
and the component's state as actualValue.

What a CSMS should hear is the state, not every step on the way to it, so this is a state
queue like :class:`agent.ocpp.status.StatusQueue`: one pending event per component, a newer
state replacing an unsent one, all pending events in one NotifyEvent (Connector entries first,
then EVSE, then ChargingStation: the test cases read ``eventData[0]``), kept across a lost
connection, given up on a CALLERROR, retried after a time-out. Nothing of it is durable: after
a restart the boot reports every component afresh.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from agent.clock import Clock
from agent.link.rpc import CallErrorReceived, CallTimeout, ConnectionLost, ResponseInvalid
from agent.ocpp.status import RETRY_AFTER_TIMEOUT_S
from agent.ocpp.v201.monitoring import EVENT_ID
from agent.storage import Storage, StorageError

log = logging.getLogger("cp_agent.v201")

VARIABLE = "AvailabilityState"
# (component name, evse id, connector id): the component an AvailabilityState belongs to.
Key = tuple[str, int | None, int | None]
_RANK = {"Connector": 0, "EVSE": 1, "ChargingStation": 2}


def connector_key(evse_id: int, connector_id: int) -> Key:
    return ("Connector", evse_id, connector_id)


def evse_key(evse_id: int) -> Key:
    return ("EVSE", evse_id, None)


STATION_KEY: Key = ("ChargingStation", None, None)


def _component(key: Key) -> dict[str, Any]:
    name, evse_id, connector_id = key
    out: dict[str, Any] = {"name": name}
    if evse_id is not None:
        out["evse"] = {"id": evse_id}
        if connector_id is not None:
            out["evse"]["connectorId"] = connector_id
    return out


class AvailabilityEvents:
    """The AvailabilityState last queued per component, and the NotifyEvents carrying it."""

    def __init__(self, clock: Clock, storage: Storage) -> None:
        self._clock = clock
        self._storage = storage
        self._queued: dict[Key, str] = {}  # the state last queued per component
        self._pending: dict[Key, tuple[str, str]] = {}  # key -> (state, stamp)
        self._wakeup = asyncio.Event()
        self.sent = 0  # NotifyEvent messages delivered (tests, diagnostics)

    def observe(self, key: Key, state: str, *, force: bool = False) -> None:
        """The component is in ``state`` now: queue an event if that is news (or ``force``:
        the CSMS asked, e.g. ChangeAvailability, or a boot)."""
        if not force and self._queued.get(key) == state:
            return
        self._queued[key] = state
        self._pending[key] = (state, self._clock.stamp())
        self._wakeup.set()

    def __len__(self) -> int:
        return len(self._pending)

    def _next_ids(self, n: int) -> list[int]:
        """Event ids from the station's one counter (shared with the fault events, so ids
        keep growing across both kinds and across restarts)."""
        try:
            first = int(self._storage.get_setting(EVENT_ID) or "0") + 1
            self._storage.set_setting(EVENT_ID, str(first + n - 1))
        except (StorageError, ValueError) as exc:
            log.error("event id counter not updated (%s); ids may repeat after a restart", exc)
            first = 1
        return list(range(first, first + n))

    def _payload(self, batch: dict[Key, tuple[str, str]]) -> dict[str, Any]:
        keys = sorted(batch, key=lambda k: (_RANK.get(k[0], 9), k[1] or 0, k[2] or 0))
        events = []
        for event_id, key in zip(self._next_ids(len(keys)), keys, strict=True):
            state, stamp = batch[key]
            events.append({
                "eventId": event_id, "timestamp": self._clock.resolve(stamp) or
                self._clock.now_iso(), "trigger": "Delta", "actualValue": state,
                "eventNotificationType": "HardWiredNotification",
                "component": _component(key), "variable": {"name": VARIABLE}})
        return {"generatedAt": self._clock.now_iso(), "seqNo": 0, "eventData": events}

    def _restore(self, batch: dict[Key, tuple[str, str]]) -> None:
        for key, value in batch.items():
            self._pending.setdefault(key, value)  # unless a newer state came meanwhile

    async def run(self, call: Callable[[str, dict], Awaitable[dict]]) -> None:
        """Deliver until the connection drops (ConnectionLost propagates)."""
        while True:
            self._wakeup.clear()
            if not self._pending:
                await self._wakeup.wait()
                continue
            batch, self._pending = self._pending, {}
            try:
                await call("NotifyEvent", self._payload(batch))
                self.sent += 1
            except (CallErrorReceived, ResponseInvalid) as exc:
                log.warning("NotifyEvent (%s) refused: %s", VARIABLE, exc)
            except CallTimeout:
                self._restore(batch)
                await self._pause(RETRY_AFTER_TIMEOUT_S)
            except ConnectionLost:
                self._restore(batch)
                raise

    async def _pause(self, seconds: float) -> None:
        sleeper = asyncio.ensure_future(self._clock.sleep(seconds))
        waker = asyncio.ensure_future(self._wakeup.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waker.cancel()
