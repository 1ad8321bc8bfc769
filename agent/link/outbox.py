"""Delivery of the durable outbox: transaction messages, in order, exactly once acknowledged.

An item stays in SQLite until its CALLRESULT arrives.  A lost connection leaves it there for the
next one (a timeout does not count as an attempt: the CSMS never saw it, or its answer was
lost); a CALLERROR counts, and after TransactionMessageAttempts / MessageAttempts the item is
dropped (kept in the `dropped` table for diagnosis) so one poisoned message cannot block every
later session forever.  Strict FIFO keeps Start before MeterValues before Stop.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from agent.clock import Clock
from agent.ocpp.rpc import (
    CallErrorReceived,
    CallTimeout,
    ConnectionLost,
    ResponseInvalid,
    RpcSession,
)
from agent.storage import OutboxItem, Storage

log = logging.getLogger("cp_agent.outbox")


class OutboxSender:
    def __init__(self, storage: Storage, clock: Clock, *,
                 prepare: Callable[[OutboxItem], dict | None],
                 on_result: Callable[[OutboxItem, dict], None],
                 attempts: Callable[[], int], retry_interval: Callable[[], float],
                 on_done: Callable[[OutboxItem], None] | None = None) -> None:
        self._storage = storage
        self._clock = clock
        self._prepare = prepare
        self._on_result = on_result
        self._attempts = attempts
        self._retry_interval = retry_interval
        self._on_done = on_done
        self._wakeup = asyncio.Event()
        self.sent = 0
        self.dropped = 0
        self.idle = asyncio.Event()  # set whenever the outbox is empty (tests, clean shutdown)
        self.queued = asyncio.Event()  # set on every new item; observers clear it

    def wake(self) -> None:
        """Called after each outbox_put: something new to deliver."""
        self.queued.set()
        self.idle.clear()
        self._wakeup.set()

    async def run(self, rpc: RpcSession) -> None:
        """Deliver until the connection drops (ConnectionLost / CallTimeout end the loop)."""
        while True:
            items = self._storage.outbox_peek(1)
            if not items:
                self.idle.set()
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            item = items[0]
            delay = item.next_attempt - self._clock.wall()
            if delay > 0:
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), timeout=delay)
                except TimeoutError:
                    pass
                continue
            payload = self._prepare(item)
            if payload is None:
                self._storage.outbox_drop(item.id, "cannot be completed")
                self.dropped += 1
                continue
            try:
                result = await rpc.call(item.action, payload)
            except (CallErrorReceived, ResponseInvalid) as exc:
                if item.attempts + 1 >= self._attempts():
                    log.error("%s #%s refused %d times (%s): dropped", item.action, item.id,
                              item.attempts + 1, exc.code)
                    self._storage.outbox_drop(item.id, f"{exc.code}: {exc.description}")
                    self.dropped += 1
                    if self._on_done is not None:
                        self._on_done(item)
                else:
                    wait = self._retry_interval() * (item.attempts + 1)
                    log.warning("%s #%s refused (%s); retry in %.0f s", item.action, item.id,
                                exc.code, wait)
                    self._storage.outbox_retry(item.id, self._clock.wall() + wait)
                continue
            except CallTimeout:
                # No answer: the item stays and goes again (not an attempt: the CSMS may never
                # have seen it). A dead link is noticed by the ping and ends this loop.
                log.warning("%s #%s: no answer; will send again", item.action, item.id)
                await self._clock.sleep(min(10.0, self._retry_interval()))
                continue
            except ConnectionLost:
                return  # the item stays; the next connection starts again
            with self._storage.atomic():
                self._on_result(item, result)
                self._storage.outbox_ack(item.id)
            self.sent += 1
            if self._on_done is not None:
                self._on_done(item)
