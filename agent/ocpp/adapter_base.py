"""What every protocol adapter does the same way, whatever the OCPP version.

Both adapters own two groups of tasks (for the agent's lifetime, and for one connection), send
Heartbeats at the interval the CSMS set, and wait on "this long, or until something changes".
Keeping that here means a fix to task handling or to the heartbeat lands in every version.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

from agent.clock import Clock
from agent.core.evse import EvseController
from agent.core.model import StopReason
from agent.core.station import Station
from agent.link.rpc import CallFailed, ConnectionLost, RpcSession

log = logging.getLogger("cp_agent.adapter")


class AdapterBase:
    """Subclasses set ``clock``, ``keys``, ``rpc``, ``accepted`` and ``_heartbeat_wakeup``,
    call :meth:`_init_tasks`, and implement ``_call`` and ``_sync_clock``."""

    clock: Clock
    keys: Any
    station: Station
    rpc: RpcSession | None
    accepted: asyncio.Event
    _heartbeat_wakeup: asyncio.Event

    def _init_tasks(self) -> None:
        self._tasks: set[asyncio.Task] = set()
        self._session_tasks: set[asyncio.Task] = set()

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

    async def _end_session_tasks(self) -> None:
        for task in list(self._session_tasks):
            task.cancel()
        await asyncio.gather(*self._session_tasks, return_exceptions=True)

    async def stop(self) -> None:
        for task in list(self._tasks) + list(self._session_tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, *self._session_tasks, return_exceptions=True)

    async def _sleep_or(self, seconds: float, event: asyncio.Event) -> None:
        """Sleep on the injected clock, but wake early when ``event`` is set."""
        sleeper = asyncio.ensure_future(self.clock.sleep(seconds))
        waker = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waker.cancel()

    async def _heartbeat(self) -> None:
        """Heartbeat every HeartbeatInterval; a changed interval restarts the wait at once."""
        await self.accepted.wait()
        while True:
            interval = self.keys["HeartbeatInterval"]
            self._heartbeat_wakeup.clear()
            if interval <= 0:
                await self._heartbeat_wakeup.wait()
                continue
            await self._sleep_or(interval, self._heartbeat_wakeup)
            if self._heartbeat_wakeup.is_set():
                continue
            try:
                res = await self._call("Heartbeat", {})
            except CallFailed:
                continue
            self._sync_clock(res.get("currentTime"))

    async def _invalid_id(self, evse: EvseController, local_id: str) -> None:
        """The CSMS said late that the session's token is not valid (1.6 3.5.4, 2.0.1 E05):
        after MaxEnergyOnInvalidId Wh, deauthorize (StopTransactionOnInvalidId) or suspend."""
        limit = self.keys["MaxEnergyOnInvalidId"]
        while limit > 0:
            tx = evse.tx
            if tx is None or tx.local_id != local_id:
                return
            if (evse.energy_wh() or 0.0) >= limit:
                break
            await self.clock.sleep(max(0.5, self.station.meter_poll_s))
        tx = evse.tx
        if tx is None or tx.local_id != local_id:
            return
        if self.keys["StopTransactionOnInvalidId"]:
            await evse.deauthorize(StopReason.DEAUTHORIZED)
        else:
            await evse.suspend(False)

    async def _call(self, action: str, payload: dict) -> dict:
        raise NotImplementedError

    def _sync_clock(self, current_time: str | None) -> None:
        raise NotImplementedError

    @property
    def online(self) -> bool:
        return self.rpc is not None and self.accepted.is_set()
