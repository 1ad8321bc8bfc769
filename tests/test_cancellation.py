"""A task of the core that is cancelled ends, whatever it was waiting for at that instant.

On Python 3.11 ``asyncio.wait_for(aw, timeout)`` returns ``aw``'s result instead of raising
CancelledError when the cancel arrives in the same loop turn as ``aw`` completes (it runs
``aw`` in a task of its own and, on the cancel, finds it done).  A task that swallowed its
cancel goes on: a ``while True`` task (the HAL event pump, the smart-charging scheduler)
then waits on its queue or clock for ever and ``Station.stop()``, which gathers them, never
returns.  This is what stalled tests/test_core.py::test_invariant_under_random_sequences:
about one random sequence in six ends with the EVSE's status report swallowing the cancel of
``Station.stop()``, and one whose shutdown meets a lock movement hangs.

Here the cancel is made to arrive exactly as the awaited hardware answers (the lock's
``set_locked`` cancels the caller and returns), so each test is deterministic.
"""

from __future__ import annotations

import asyncio

from agent.clock import FakeClock
from agent.core.model import StopReason, Token
from agent.core.station import Station
from agent.storage import Storage
from hal.mock import MockHal, MockLock
from tests.test_core import Recorder


class CancellingLock(MockLock):
    """Moves at once, and cancels ``victim`` as it answers (the shutdown's cancel arriving
    in the very loop turn the hardware answers)."""

    def __init__(self) -> None:
        super().__init__()
        self.victim: asyncio.Task | None = None
        self.moves = 0

    async def set_locked(self, locked: bool) -> bool:
        self.moves += 1
        if self.victim is not None:
            self.victim.cancel()
            self.victim = None
        return await super().set_locked(locked)


async def _charging_station() -> tuple[Station, MockHal, CancellingLock, Storage]:
    clock = FakeClock()
    storage = Storage(":memory:")
    hal = MockHal(1, monotonic=clock.monotonic)
    lock = CancellingLock()
    hal.evses[1].lock = lock
    station = Station(hal, storage, clock)
    rec = Recorder(storage)
    station.observer = rec
    station.authorizer = rec
    await station.start()
    hal.plug(1)
    await station.present_token(Token("GOOD"))
    await asyncio.wait_for(station.quiet(), 5)
    assert lock.locked and hal.evses[1].contactor.commanded_closed
    return station, hal, lock, storage


async def test_a_cancel_as_the_lock_answers_is_not_swallowed():
    station, hal, lock, storage = await _charging_station()
    evse = station.evses[1]
    try:
        task = asyncio.create_task(evse.deauthorize(StopReason.REMOTE))
        lock.victim = task  # the lock opens as the session ends: cancel right then
        done, _ = await asyncio.wait({task}, timeout=5)
        assert done, "deauthorize hung"
        assert task.cancelled(), "the cancel was swallowed: the task went on as if not asked"
        assert lock.moves == 2 and not lock.locked  # the lock did move
        assert not hal.evses[1].contactor.commanded_closed
    finally:
        await asyncio.wait_for(station.stop(), 5)
        storage.close()


async def test_stop_returns_when_its_cancel_meets_a_lock_movement():
    """The HAL event pump handles an unplug (the lock opens) as Station.stop() cancels it."""
    station, hal, lock, storage = await _charging_station()
    try:
        pump = next(t for t in station._tasks if t.get_name() == "hal-events")
        lock.victim = pump
        hal.unplug(1)  # the pump takes the event, the lock opens, the cancel arrives
        await asyncio.wait_for(asyncio.wait({pump}), 5)
        assert pump.cancelled()
    finally:
        # Without the fix the pump outlives its cancel and this never returns.
        await asyncio.wait_for(station.stop(), 5)
        storage.close()
    assert not hal.evses[1].contactor.commanded_closed
