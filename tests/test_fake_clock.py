"""The test clock itself (agent/clock.py FakeClock): every fake-clock test stands on it, so a
deadline it misses by a rounding error is a flaky test somewhere else."""

from __future__ import annotations

import asyncio

from agent.clock import FakeClock


async def test_a_deadline_that_differs_in_the_last_bit_still_wakes():
    """1000 + 58.207 + 120 is 1178.207 but 1000 + 177.207 + 1 is 1178.2069999999999: a
    sleeper planned one way and a test advancing the other way met 1 run in ~40 (the 2.1 DER
    control end test), when the CSMS's milliseconds made such a pair."""
    clock = FakeClock(start_wall=1_800_000_000.0)
    await clock.advance(58.207)
    sleeper = asyncio.ensure_future(clock.sleep(120.0))
    await clock.advance(178.207 - 58.207 - 1)
    assert not sleeper.done()
    await clock.advance(1.0)
    assert sleeper.done()


async def test_a_sleep_counts_from_when_it_was_asked_for():
    """sleep_or hands clock.sleep() to ensure_future; the deadline must be taken then, not
    when that task first runs, or a clock that moved in between pushes it later."""
    clock = FakeClock(start_wall=1_800_000_000.0)
    pending = clock.sleep(10.0)
    assert clock.pending() == [10.0]
    await clock.advance(5.0)
    sleeper = asyncio.ensure_future(pending)
    await clock.advance(5.0)
    assert sleeper.done()


async def test_time_never_steps_back_when_a_sleeper_wakes_within_the_tolerance():
    clock = FakeClock(start_wall=1_800_000_000.0)
    await clock.advance(58.207)
    sleeper = asyncio.ensure_future(clock.sleep(120.0))
    before = clock.monotonic()
    await clock.advance(178.207 - 58.207)
    assert sleeper.done()
    assert clock.monotonic() >= before + 120.0 - 1e-9
