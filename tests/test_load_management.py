"""Local load management: the site's connection limit shared among the charging EVSEs.

The sharing is a pure function (properties with hypothesis, worked examples); the service
runs on the core with the mock HAL's simulated grid meter (the house load plus the station's
own EVSEs) on a fake clock; ``ctl house-load`` goes through a real agent's handle_control.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.app import Agent
from agent.clock import FakeClock
from agent.config import ConfigError, load_config_text
from agent.core.load_management import (
    SOURCE,
    Demand,
    LoadManager,
    SiteLimits,
    headroom_per_phase,
    share,
)
from agent.core.model import Token
from agent.core.station import Station
from agent.storage import Storage
from hal.factory import HalConfigError, parse_grid_meter, parse_hal_config
from hal.mock import MockHal
from tests.conftest import agent_config, strict_csms
from tests.test_core import Recorder

EPS = 1e-6

# ------------------------------------------------------------------ the pure sharing


demand_lists = st.lists(
    st.builds(Demand, evse_id=st.integers(1, 1000),
              since=st.floats(0, 1e6, allow_nan=False),
              max_a=st.floats(0, 80, allow_nan=False),
              min_a=st.sampled_from([6.0, 6.0, 8.0, 10.0])),
    max_size=8, unique_by=lambda d: d.evse_id)


@given(st.floats(-10, 400, allow_nan=False), demand_lists)
def test_shares_never_exceed_the_headroom(headroom, demands):
    shares = share(headroom, demands)
    assert set(shares) == {d.evse_id for d in demands}
    assert sum(shares.values()) <= max(0.0, headroom) + EPS


@given(st.floats(0, 400, allow_nan=False), demand_lists)
def test_nobody_below_its_minimum_or_above_its_maximum_unless_paused(headroom, demands):
    shares = share(headroom, demands)
    for d in demands:
        amps = shares[d.evse_id]
        assert amps == 0.0 or d.min_a - EPS <= amps <= d.max_a + EPS


@given(st.floats(0, 400, allow_nan=False), demand_lists)
def test_the_newest_sessions_are_paused_first(headroom, demands):
    shares = share(headroom, demands)
    able = sorted((d for d in demands if d.max_a >= d.min_a), key=lambda d: (d.since, d.evse_id))
    paused = [shares[d.evse_id] == 0.0 for d in able]
    # Once one session is paused, every newer one is too.
    assert paused == sorted(paused)


@given(st.floats(0, 400, allow_nan=False), demand_lists)
def test_headroom_is_used_unless_everyone_is_at_their_maximum(headroom, demands):
    shares = share(headroom, demands)
    able = [d for d in demands if d.max_a >= d.min_a]
    served = [d for d in able if shares[d.evse_id] > 0]
    unserved = [d for d in able if shares[d.evse_id] == 0]
    left = headroom - sum(shares.values())
    if not unserved and served and all(shares[d.evse_id] < d.max_a - 0.1 for d in served):
        # Only the rounding down to 0.1 A per EVSE is left over.
        assert left <= 0.1 * len(served) + EPS


def test_examples():
    a = Demand(1, since=1.0, max_a=32.0)
    b = Demand(2, since=2.0, max_a=32.0)
    c = Demand(3, since=3.0, max_a=32.0)
    assert share(30, [a, b]) == {1: 15.0, 2: 15.0}
    assert share(40, [a, Demand(2, since=2.0, max_a=10.0)]) == {1: 30.0, 2: 10.0}
    assert share(100, [a, b]) == {1: 32.0, 2: 32.0}
    assert share(13, [a, b, c]) == {1: 6.5, 2: 6.5, 3: 0.0}  # the newest waits
    assert share(5, [a, b]) == {1: 0.0, 2: 0.0}
    assert share(20, [c, b, a]) == {1: 6.6, 2: 6.6, 3: 6.6}
    # Another source (the CSMS) already holds EVSE 2 below 6 A: it takes nothing.
    assert share(12, [a, Demand(2, since=2.0, max_a=0.0)]) == {1: 12.0, 2: 0.0}
    assert share(10, []) == {}


def test_headroom_per_phase_subtracts_the_other_loads_only():
    # grid 30/20/10 A, of which the station draws 16 A on every phase: others 14/4/-6.
    assert headroom_per_phase(35, (30, 20, 10), (16, 16, 16)) == (21, 31, 35 + 6)
    assert headroom_per_phase(35, (50, 0, 0), (0, 0, 0)) == (0.0, 35, 35)


# ------------------------------------------------------------------ the service on the core

SITE_A = 25.0
FALLBACK_A = 10.0


@pytest.fixture
async def site():
    clock = FakeClock()
    storage = Storage(":memory:")
    hal = MockHal(2, monotonic=clock.monotonic, ev_max_current_a=16)
    station = Station(hal, storage, clock, meter_poll_s=1.0)
    rec = Recorder(storage)
    station.observer = rec
    station.authorizer = rec
    lm = LoadManager(station.evses, SiteLimits(SITE_A, fallback_current_a=FALLBACK_A,
                                               silent_samples=3),
                     clock, grid_meter=hal.grid_meter(), interval_s=1.0)
    await station.start()
    lm.start()
    await station.quiet()
    yield station, hal, lm, clock
    await lm.stop()
    await station.stop()
    storage.close()


async def tick(station: Station, lm: LoadManager, clock: FakeClock) -> None:
    """One sample interval: the meters are sampled and the shares applied."""
    n = lm.samples
    await clock.advance(1.0)
    async with asyncio.timeout(5):
        async with lm.sampled:
            await lm.sampled.wait_for(lambda: lm.samples > n)
    await station.quiet()


async def grid_max(hal: MockHal) -> float:
    return max((await hal.grid_meter().read()).current_a)


def own(hal: MockHal) -> float:
    return sum(sim.current() for sim in hal.sims.values())


async def two_charging(station: Station, hal: MockHal, lm: LoadManager,
                       clock: FakeClock) -> None:
    hal.plug(1)
    await station.quiet()
    assert await station.present_token(Token("GOOD"), 1) == "authorized"
    await clock.advance(0.5)  # the second session is the newer one
    hal.plug(2)
    await station.quiet()
    assert await station.present_token(Token("GOOD2"), 2) == "authorized"
    await tick(station, lm, clock)
    await tick(station, lm, clock)


async def test_house_load_steps_never_trip_the_fuse_for_longer_than_a_sample(site):
    station, hal, lm, clock = site
    await two_charging(station, hal, lm, clock)
    assert hal.sims[1].current() == pytest.approx(12.5)
    assert hal.sims[2].current() == pytest.approx(12.5)
    assert station.evses[1].limit_source == SOURCE
    for house in (0, 5, 10, 14, 3, 19.5, 20, 24, 30, 8, 0, 12, 1):
        hal.set_house_load(house)  # a step between two samples
        for _ in range(2):
            await tick(station, lm, clock)
            # After a sample the connection is within its limit again, unless the house
            # alone is above it: then the station draws nothing.
            if house <= SITE_A:
                assert await grid_max(hal) <= SITE_A + EPS, f"house {house} A"
            else:
                assert own(hal) == 0.0
            assert sum(e.offered_a for e in station.evses.values()) <= \
                max(0.0, SITE_A - house) + EPS
        room = SITE_A - house
        if room >= 12:
            assert hal.sims[1].current() > 0 and hal.sims[2].current() > 0
        elif room >= 6:  # one fits: the newest session (EVSE 2) waits
            assert hal.sims[1].current() > 0 and hal.sims[2].current() == 0
            assert station.evses[2].snapshot().status.value == "SuspendedEVSE"
        else:
            assert own(hal) == 0.0


async def test_grid_meter_loss_falls_back_to_the_site_fallback_and_recovers(site):
    station, hal, lm, clock = site
    await two_charging(station, hal, lm, clock)
    hal.set_house_load(5)
    await tick(station, lm, clock)
    await tick(station, lm, clock)
    assert lm.mode == "grid_meter" and own(hal) == pytest.approx(20)
    hal.grid_meter_silent = True
    await tick(station, lm, clock)
    await tick(station, lm, clock)
    assert lm.mode == "grid_meter", "one or two lost readings keep the last shares"
    assert own(hal) == pytest.approx(20)
    await tick(station, lm, clock)
    assert lm.mode == "fallback"
    # 10 A for the whole site: one session at 10 A, the newest paused.
    assert own(hal) <= FALLBACK_A + EPS
    assert hal.sims[1].current() == pytest.approx(10) and hal.sims[2].current() == 0
    hal.grid_meter_silent = False
    await tick(station, lm, clock)
    await tick(station, lm, clock)
    assert lm.mode == "grid_meter"
    assert hal.sims[1].current() == pytest.approx(10)
    assert hal.sims[2].current() == pytest.approx(10)


async def test_without_a_grid_meter_the_static_limit_is_shared():
    clock = FakeClock()
    storage = Storage(":memory:")
    hal = MockHal(2, monotonic=clock.monotonic, ev_max_current_a=16)
    station = Station(hal, storage, clock, meter_poll_s=1.0)
    rec = Recorder(storage)
    station.observer = rec
    station.authorizer = rec
    lm = LoadManager(station.evses, SiteLimits(20.0), clock, interval_s=1.0)
    await station.start()
    lm.start()
    try:
        await two_charging(station, hal, lm, clock)
        assert lm.mode == "static"
        assert [hal.sims[i].current() for i in (1, 2)] == [10.0, 10.0]
        hal.set_house_load(100)  # nobody measures it: the static limit is all there is
        await tick(station, lm, clock)
        assert own(hal) == 20.0
        # The CSMS's lower limit still binds, and the other EVSE gets what it leaves.
        await station.evses[1].set_limit("csms", 6.0)
        await tick(station, lm, clock)
        assert [hal.sims[i].current() for i in (1, 2)] == [6.0, 14.0]
        assert station.evses[1].limits["site"] == 6.0  # no more than the CSMS allows
        assert station.evses[2].limit_source == SOURCE
    finally:
        await lm.stop()
        await station.stop()
        storage.close()


# ------------------------------------------------------------------ configuration

SITE_YAML = """
station: {id: CP1}
ocpp: {url: "ws://127.0.0.1:9000/ocpp"}
evses: [{id: 1}, {id: 2}]
"""


def test_site_config_is_validated_with_the_key_named():
    cfg = load_config_text(SITE_YAML + "site: {max_current_a: 35, grid_meter: {type: mock}, "
                           "fallback_current_a: 16}")
    assert cfg.site is not None and cfg.site.max_current_a == 35
    assert cfg.site.min_current_a == 6.0
    assert load_config_text(SITE_YAML).site is None
    for text, key in (
        ("site: {fallback_current_a: 6}", "site.max_current_a"),
        ("site: {max_current_a: -3}", "site.max_current_a"),
        ("site: {max_current_a: 35, grid_meter: {type: mock}}", "site.fallback_current_a"),
        ("site: {max_current_a: 35, fallback_current_a: 40}", "site.fallback_current_a"),
        ("site: {max_current_a: 35, min_current_a: 3}", "site.min_current_a"),
        ("site: {max_current_a: 35, fuse: 3}", "site.fuse"),
        ("site: {max_current_a: 35, grid_meter: {bus: x}, fallback_current_a: 6}",
         "site.grid_meter.type"),
    ):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config_text(SITE_YAML + text)


def test_grid_meter_is_validated_against_the_hal():
    mock = parse_hal_config({"driver": "mock"}, [1])
    assert parse_grid_meter({"type": "mock"}, mock, {"driver": "mock"}).type == "mock"
    with pytest.raises(HalConfigError, match=r"site\.grid_meter\.type"):
        parse_grid_meter({"type": "sdm630", "bus": "rs485"}, mock, {"driver": "mock"})
    hw_raw = {
        "driver": "hardware",
        "modbus": {"rs485": {"type": "rtu", "port": "/dev/ttyUSB0"}},
        "evses": [{"id": 1, "contactor": {"coil": 17},
                   "meter": {"type": "sdm630", "bus": "rs485", "unit_id": 1},
                   "ev": {"type": "evse_wb", "bus": "rs485", "unit_id": 2}}],
    }
    hw = parse_hal_config(hw_raw, [1])
    grid = parse_grid_meter({"type": "sdm630", "bus": "rs485", "unit_id": 5}, hw, hw_raw)
    assert grid.meter.unit_id == 5 and grid.meter.bus == "rs485"
    with pytest.raises(HalConfigError, match=r"site\.grid_meter\.bus"):
        parse_grid_meter({"type": "sdm630", "bus": "nope", "unit_id": 5}, hw, hw_raw)
    with pytest.raises(HalConfigError, match=r"site\.grid_meter\.type"):
        parse_grid_meter({"type": "mock"}, hw, hw_raw)


# ------------------------------------------------------------------ ctl house-load


async def test_ctl_house_load_changes_the_offer(short_dir):
    async with strict_csms(("1.6",)) as csms:
        cfg = agent_config(csms.url, short_dir, extra=(
            "site: {max_current_a: 20, grid_meter: {type: mock}, fallback_current_a: 10}"))
        agent = Agent(cfg, clock=FakeClock(start_wall=time.time()), control=False)
        await agent.start()
        try:
            await asyncio.wait_for(agent.adapter.accepted.wait(), 5)
            agent.hal.plug(1)
            agent.hal.tap("TAG1")
            await agent.station.quiet()
            status = await agent.handle_control({"cmd": "house-load", "args": {"amps": 0}})
            await csms.wait_for("StartTransaction", station_id="CP1")
            assert status["evses"][0]["current_limit_a"] == 20.0  # the whole connection
            status = await agent.handle_control({"cmd": "house-load", "args": {"amps": 8}})
            evse = status["evses"][0]
            assert evse["current_limit_a"] == 12.0
            assert evse["limit_source"] == "site"
            assert status["site"]["mode"] == "grid_meter"
            # The sample saw 8 + 16 A; with the new offer the connection carries 8 + 12 A.
            assert max(status["site"]["grid_current_a"]) == pytest.approx(24.0)
            assert await grid_max(agent.hal) == pytest.approx(20.0)
            status = await agent.handle_control({"cmd": "house-load", "args": {"amps": 17}})
            assert status["evses"][0]["current_limit_a"] == 0.0  # 3 A left: paused
            with pytest.raises(ValueError, match="amps"):
                await agent.handle_control({"cmd": "house-load", "args": {}})
        finally:
            await agent.stop()
