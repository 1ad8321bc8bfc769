"""The shared meter tick: every station of a loop sampled from one timer (agent.clock.ticker).

A swarm's 10,000 stations each had a timer and a task wake-up a second for the meter poll;
these tests prove that the one tick that replaced them keeps what each station's own loop
did: the cadence, the two-failures rule, fault raise and clear, the power-loss journal, the
end of sampling when a station stops, and that a process's stations share one timer.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from agent.clock import Clock, FakeClock, Ticker, ticker
from agent.core.model import Token
from agent.core.station import METER_FSYNC_EVERY, Station
from agent.storage import Storage
from hal.interfaces import FaultKind, HalError, MeterReading
from hal.mock import MockHal, MockMeter
from tests.conftest import eventually
from tests.test_core import Recorder


class _Rig:
    """Stations on one clock, each with a counter of the samples its EVSEs took."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.stations: list[Station] = []
        self.samples: list[dict[int, int]] = []
        self._storages: list[Storage] = []

    async def add(self, evses: int = 1, persist_s: float = 10.0) -> Station:
        storage = Storage(":memory:")
        self._storages.append(storage)
        hal = MockHal(evses, monotonic=self.clock.monotonic, ev_max_current_a=16)
        station = Station(hal, storage, self.clock, meter_poll_s=1.0,
                          meter_persist_s=persist_s)
        rec = Recorder(storage)
        station.observer = rec
        station.authorizer = rec
        counts = dict.fromkeys(station.evses, 0)
        for evse in station.evses.values():
            evse.meter_listeners.append(
                lambda e, c=counts: c.__setitem__(e.id, c[e.id] + 1))
        await station.start()
        await station.quiet()
        self.stations.append(station)
        self.samples.append(counts)
        return station

    async def close(self) -> None:
        for station in self.stations:
            await station.stop()
        for storage in self._storages:
            storage.close()


@pytest.fixture
async def rig():
    r = _Rig(FakeClock())
    yield r
    await r.close()


def _sleepers(clock: FakeClock, seconds: float) -> int:
    return sum(1 for d in clock.pending() if abs(d - seconds) < 1e-6)


async def test_one_tick_samples_every_station_and_evse_every_period(rig):
    """Three stations (four EVSEs) on one clock: one sleeper for all, and every EVSE is
    sampled once per second, a reading stored each time."""
    a = await rig.add()
    b = await rig.add(evses=2)
    c = await rig.add()
    await eventually(lambda: len(ticker(rig.clock, 1.0)) == 4, "four EVSEs subscribed")
    assert _sleepers(rig.clock, 1.0) == 1, rig.clock.pending()
    assert all(n == 0 for counts in rig.samples for n in counts.values())
    for second in range(1, 6):
        await rig.clock.advance(1.0)
        assert [list(c.values()) for c in rig.samples] == [[second], [second, second],
                                                           [second]]
    hal = b.hal
    hal.plug(2)
    assert await b.present_token(Token("GOOD"), evse_id=2) == "authorized"
    await b.quiet()
    before = b.evses[2].reading.energy_import_wh
    await rig.clock.advance(1.0)
    assert b.evses[2].reading.energy_import_wh > before, "the tick's reading is the meter's"
    assert a.evses[1].reading.energy_import_wh == c.evses[1].reading.energy_import_wh == 0.0


async def test_a_station_joining_later_is_sampled_within_one_period(rig):
    await rig.add()
    await rig.clock.advance(0.4)
    await rig.add()
    await rig.clock.advance(0.6)  # the first station's tick: the newcomer's first sample
    assert [c[1] for c in rig.samples] == [1, 1]
    await rig.clock.advance(1.0)
    assert [c[1] for c in rig.samples] == [2, 2]
    assert _sleepers(rig.clock, 1.0) == 1


async def test_a_silent_meter_is_a_fault_after_two_failures_and_clears_with_a_reading(rig):
    station = await rig.add()
    evse = station.evses[1]
    rec = station.observer
    station.hal.sims[1].meter_fault = True
    await rig.clock.advance(1.0)
    assert FaultKind.METER not in evse.faults, "one lost frame is not a fault yet"
    await rig.clock.advance(1.0)
    await eventually(lambda: FaultKind.METER in evse.faults, "meter fault after two")
    assert "does not answer" in evse.faults[FaultKind.METER]
    await rig.clock.advance(3.0)
    assert rec.events.count((1, f"fault:{FaultKind.METER}:True")) == 1, rec.events
    station.hal.sims[1].meter_fault = False
    await rig.clock.advance(1.0)
    await eventually(lambda: FaultKind.METER not in evse.faults, "fault cleared")
    assert (1, f"fault:{FaultKind.METER}:False") in rec.events
    count = rig.samples[0][1]
    await rig.clock.advance(1.0)
    assert rig.samples[0][1] == count + 1, "sampled from the tick again after the clear"


async def test_a_register_going_back_is_refused_then_a_fault(rig, caplog):
    station = await rig.add()
    evse = station.evses[1]
    sim = station.hal.sims[1]
    sim.energy_wh = 5000.0
    await rig.clock.advance(1.0)
    assert evse.reading.energy_import_wh == 5000.0
    sim.energy_wh = 100.0
    with caplog.at_level(logging.WARNING, logger="cp_agent.core"):
        await rig.clock.advance(1.0)
    assert evse.reading.energy_import_wh == 5000.0, "the implausible reading is not stored"
    assert FaultKind.METER not in evse.faults
    assert any("went back" in r.getMessage() for r in caplog.records)
    await rig.clock.advance(1.0)
    await eventually(lambda: FaultKind.METER in evse.faults, "fault on the second one")
    assert "went back" in evse.faults[FaultKind.METER]


async def test_a_stopped_station_is_no_longer_sampled_and_the_last_stop_ends_the_tick(rig):
    a = await rig.add()
    b = await rig.add()
    await rig.clock.advance(1.0)
    tick = ticker(rig.clock, 1.0)
    assert len(tick) == 2
    await a.stop()
    rig.stations.remove(a)
    assert len(tick) == 1
    assert not any(t.get_name().startswith("meter-") for t in a._tasks)
    await rig.clock.advance(3.0)
    assert [c[1] for c in rig.samples] == [1, 4]
    await b.stop()
    rig.stations.remove(b)
    assert len(tick) == 0
    await eventually(lambda: _sleepers(rig.clock, 1.0) == 0, "no tick sleeper left")
    assert ticker(rig.clock, 1.0) is not tick, "a new subscription starts a new tick"


async def test_the_journal_is_written_every_persist_interval_and_fsynced_every_sixth(rig):
    station = await rig.add(persist_s=10.0)
    calls: list[tuple[float, bool]] = []
    real = station.storage.tx_meter

    def spy(local_id, wh, at, durable=True):  # noqa: ANN001, ANN202
        calls.append((wh, durable))
        return real(local_id, wh, at, durable=durable)

    station.storage.tx_meter = spy
    station.hal.plug(1)
    assert await station.present_token(Token("GOOD")) == "authorized"
    await station.quiet()
    tx = station.evses[1].tx
    assert tx is not None
    for _ in range(6 * 10):
        await rig.clock.advance(1.0)
    assert len(calls) == 6, calls
    assert [d for _, d in calls] == [False] * (METER_FSYNC_EVERY - 1) + [True]
    assert calls[-1][0] == tx.last_meter_wh > calls[0][0] > 0
    assert station.storage.tx_open()[0].last_meter_wh == tx.last_meter_wh


async def test_a_read_that_raises_ends_only_that_sampler(rig, caplog):
    """A meter read failing with an unexpected error ends that EVSE's sampler (logged, as
    the task of its own loop ended), not the tick of the others."""
    a = await rig.add()
    await rig.add()

    class Broken(MockMeter):
        def read_now(self) -> MeterReading:
            raise RuntimeError("driver bug")

    a.hal.evses[1].meter = Broken(a.hal.sims[1])
    with caplog.at_level(logging.ERROR, logger="cp_agent.core"):
        await rig.clock.advance(1.0)
        await eventually(lambda: not any(t.get_name() == "meter-1" for t in a._tasks),
                         "the broken EVSE's sampler ended")
    assert any("meter-1 failed" in r.getMessage() for r in caplog.records)
    await rig.clock.advance(2.0)
    assert [c[1] for c in rig.samples] == [0, 3]


async def test_a_meter_that_may_suspend_keeps_its_own_loop(rig):
    """A meter whose read may wait (a subclass overriding read, as a Modbus driver's does)
    is not read from the tick: its sampler sleeps on its own and reads with a timeout."""
    hal_meter_gate = asyncio.Event()
    hal_meter_gate.set()

    class Waiting(MockMeter):
        async def read(self) -> MeterReading:
            await hal_meter_gate.wait()
            return await super().read()

    storage = Storage(":memory:")
    hal = MockHal(1, monotonic=rig.clock.monotonic)
    hal.evses[1].meter = Waiting(hal.sims[1])
    station = Station(hal, storage, rig.clock, meter_poll_s=1.0)
    seen = []
    station.evses[1].meter_listeners.append(lambda e: seen.append(e.reading))
    try:
        await station.start()
        await eventually(lambda: _sleepers(rig.clock, 1.0) == 1, "its own sleeper")
        assert len(ticker(rig.clock, 1.0)) == 0
        await rig.clock.advance(1.0)
        await eventually(lambda: len(seen) == 1, "sampled by its own loop")
    finally:
        await station.stop()
        storage.close()


async def test_real_clocks_of_one_loop_share_one_tick():
    """A swarm gives each station a Clock of its own (its own CSMS time): they all keep the
    same time, so the stations of one loop are sampled from one timer task."""
    storages, stations = [], []
    samples = [0, 0, 0]
    try:
        for n in range(3):
            storage = Storage(":memory:")
            storages.append(storage)
            clock = Clock()
            hal = MockHal(1, monotonic=clock.monotonic)
            station = Station(hal, storage, clock, meter_poll_s=0.05)
            station.evses[1].meter_listeners.append(
                lambda e, n=n: samples.__setitem__(n, samples[n] + 1))
            await station.start()
            stations.append(station)
        tick = ticker(Clock(), 0.05)
        await eventually(lambda: len(tick) == 3, "three stations on one tick")
        ticks = [t for t in asyncio.all_tasks() if t.get_name() == "clock-tick"]
        assert len(ticks) == 1
        await eventually(lambda: min(samples) >= 3, "every station sampled")
        assert max(samples) - min(samples) <= 1, samples
    finally:
        for station in stations:
            await station.stop()
        for storage in storages:
            storage.close()
    assert len(tick) == 0
    await eventually(lambda: not [t for t in asyncio.all_tasks()
                                  if t.get_name() == "clock-tick"], "the tick task ended")


async def test_ticker_schedule_skips_missed_ticks_and_rejects_a_bad_period():
    clock = FakeClock()
    calls: list[float] = []
    tick = ticker(clock, 2.0)
    handle = tick.add(lambda: calls.append(clock.monotonic()))
    t0 = clock.monotonic()
    await eventually(lambda: _sleepers(clock, 2.0) == 1, "armed")
    await clock.advance(2.0)
    await clock.advance(2.0)
    assert calls == [t0 + 2.0, t0 + 4.0]
    tick.remove(handle)
    tick.remove(handle)  # idempotent
    assert len(tick) == 0
    with pytest.raises(ValueError, match="tick period"):
        Ticker(clock, 0.0, {}, None)


async def test_a_subscriber_removed_during_a_tick_is_not_called():
    clock = FakeClock()
    tick = ticker(clock, 1.0)
    called: list[str] = []
    handles: dict[str, int] = {}

    def first() -> None:
        called.append("first")
        tick.remove(handles["second"])

    handles["first"] = tick.add(first)
    handles["second"] = tick.add(lambda: called.append("second"))
    await eventually(lambda: _sleepers(clock, 1.0) == 1, "armed")
    await clock.advance(1.0)
    assert called == ["first"]
    tick.remove(handles["first"])


def test_mock_meter_reads_the_same_at_once_and_awaited():
    hal = MockHal(1)
    meter = hal.evses[1].meter
    assert meter.answers_at_once
    assert asyncio.run(meter.read()) == meter.read_now()
    hal.sims[1].meter_fault = True
    with pytest.raises(HalError):
        meter.read_now()


async def test_while_a_fault_is_being_raised_the_ticks_skip_that_evse(rig):
    """Raising the meter fault suspends (it reports, it reconciles the outputs): it runs as a
    task, and until it is done the tick neither reads that meter again nor starts a second
    step, as the sampler's own loop waited for it; the other station is sampled meanwhile."""
    a = await rig.add()
    await rig.add()
    evse = a.evses[1]
    gate = asyncio.Event()
    real = evse.raise_fault

    async def slow_raise(kind, detail):  # noqa: ANN001, ANN202
        await gate.wait()
        await real(kind, detail)

    evse.raise_fault = slow_raise
    reads = 0
    meter = a.hal.evses[1].meter
    read_now = meter.read_now

    def counting() -> MeterReading:
        nonlocal reads
        reads += 1
        return read_now()

    meter.read_now = counting
    a.hal.sims[1].meter_fault = True
    await rig.clock.advance(2.0)  # two failures: the raise starts and waits at the gate
    assert reads == 2
    await eventually(lambda: any(t.get_name() == "meter-1-step" for t in a._tasks),
                     "the raise runs as a task")
    await rig.clock.advance(3.0)
    assert reads == 2, "no read while the step is under way"
    assert rig.samples[1][1] == 5, "the other station was sampled every second"
    gate.set()
    await eventually(lambda: FaultKind.METER in evse.faults, "raised once the gate opened")
    await rig.clock.advance(1.0)
    assert reads == 3
