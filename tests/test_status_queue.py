"""StatusQueue's wake-ups: a held status goes once ``wake()`` says its reason may be gone, and
a wake-up with nothing pending does not make the sender run (the outbox calls ``wake()``
after every acknowledged message, 10,000 times in a replay)."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable

from agent.clock import FakeClock
from agent.ocpp.status import StatusQueue


async def test_a_held_status_goes_after_wake_and_an_empty_wake_does_not_run_the_sender(
        ) -> None:
    ready = {1: False}
    sent: list[dict] = []
    looked: list[Hashable] = []
    delivered = asyncio.Event()

    def is_ready(key: Hashable) -> bool:
        looked.append(key)
        return ready[key]  # type: ignore[index]

    async def call(action: str, payload: dict) -> dict:
        sent.append(payload)
        delivered.set()
        return {}

    queue = StatusQueue("StatusNotification", FakeClock(), ready=is_ready)
    task = asyncio.ensure_future(queue.run(call))
    try:
        queue.put(1, {"status": "Charging"})
        for _ in range(20):
            await asyncio.sleep(0)
        assert sent == [] and looked == [1], "held while not ready"
        ready[1] = True
        queue.wake()
        await asyncio.wait_for(delivered.wait(), 5)
        assert sent == [{"status": "Charging"}]
        looked.clear()
        queue.wake()  # nothing pending: the sender is not woken at all
        assert not queue._wakeup.is_set()
        for _ in range(20):
            await asyncio.sleep(0)
        assert looked == []
        delivered.clear()
        queue.put(1, {"status": "Finishing"})  # a new payload still wakes it
        await asyncio.wait_for(delivered.wait(), 5)
        assert sent == [{"status": "Charging"}, {"status": "Finishing"}]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
