"""Status reporting: the latest state per connector, delivered when the CSMS can take it.

StatusNotification is not a transaction message: only the newest state of a connector matters,
so it is never queued durably. What both versions need, and what this does once:

- one pending payload per key (connector / EVSE): a newer state replaces an unsent one;
- after a reconnect the adapter queues every connector afresh (what the CSMS saw may be stale);
- a payload may be held back while ``ready(key)`` says no (1.6: a Charging status waits
  until the StartTransaction of its transaction reached the CSMS);
- a CSMS that does not answer (time-out) costs nothing: the payload stays and goes again, and
  the sender goes on with the others; a CALLERROR drops that payload (the CSMS saw it and
  refused); a lost connection keeps everything for the next one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable

from agent.clock import Clock
from agent.link.rpc import CallErrorReceived, CallTimeout, ConnectionLost, ResponseInvalid

log = logging.getLogger("cp_agent.status")

# After a time-out, how long before the same payload is tried again (unless something changes).
RETRY_AFTER_TIMEOUT_S = 10.0


class StatusQueue:
    def __init__(self, action: str, clock: Clock, *,
                 ready: Callable[[Hashable], bool] | None = None) -> None:
        self.action = action
        self._clock = clock
        self._ready = ready or (lambda key: True)
        self._pending: dict[Hashable, dict] = {}
        self._wakeup = asyncio.Event()
        self._in_flight: Hashable | None = None
        self._progress = asyncio.Event()  # set after every delivery attempt
        self.sent = 0

    def put(self, key: Hashable, payload: dict) -> None:
        self._pending.pop(key, None)  # re-insert: the newest goes to the back of the queue
        self._pending[key] = payload
        self._wakeup.set()

    def get(self, key: Hashable) -> dict | None:
        return self._pending.get(key)

    def pop(self, key: Hashable) -> dict | None:
        return self._pending.pop(key, None)

    def wake(self) -> None:
        """Something a held payload waits for may have happened (see ``ready``).

        With nothing pending nothing can be held, and waking the sender would only cost it a
        loop iteration: the outbox calls this after every acknowledged message, 10,000 times in
        a replay (docs/performance.md); ``put`` wakes it for whatever comes next.
        """
        if self._pending:
            self._wakeup.set()

    def __len__(self) -> int:
        return len(self._pending)

    async def flushed(self, keys: list[Hashable], timeout: float) -> bool:
        """Wait until nothing of ``keys`` is pending or in flight (sent, or refused), at most
        ``timeout`` seconds; whether that happened."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    self._progress.clear()
                    if not any(k in self._pending or k == self._in_flight for k in keys):
                        return True
                    await self._progress.wait()
        except TimeoutError:
            return False

    async def _pause(self, seconds: float) -> None:
        sleeper = asyncio.ensure_future(self._clock.sleep(seconds))
        waker = asyncio.ensure_future(self._wakeup.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            waker.cancel()

    async def run(self, call: Callable[[str, dict], Awaitable[dict]],
                  prepare: Callable[[dict], dict] = lambda p: p) -> None:
        """Deliver until the connection drops (ConnectionLost propagates)."""
        while True:
            self._wakeup.clear()
            timed_out = False
            for key in [k for k in self._pending if self._ready(k)]:
                payload = self._pending.pop(key, None)
                if payload is None:
                    continue
                self._in_flight = key
                try:
                    await call(self.action, prepare(payload))
                    self.sent += 1
                except (CallErrorReceived, ResponseInvalid) as exc:
                    log.warning("%s refused: %s", self.action, exc)
                except CallTimeout:
                    self._pending.setdefault(key, payload)  # unless a newer one came
                    timed_out = True
                except ConnectionLost:
                    self._pending.setdefault(key, payload)
                    raise
                finally:
                    self._in_flight = None
                    self._progress.set()
            if self._wakeup.is_set():
                continue
            if timed_out:
                await self._pause(RETRY_AFTER_TIMEOUT_S)
            else:
                await self._wakeup.wait()
