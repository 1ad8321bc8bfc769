"""The station maximum shared among the EVSEs, minChargingRate, and 3-to-1 phase switching.

The sharing is pure (:func:`agent.core.charging_profiles.allocate` over load management's
``share``): hypothesis checks that at every instant of random profiles the EVSEs' limits sum to
at most the station composite and nobody gets more than its own composite.  Then the real
agent on both versions: two EVSEs under a 20 A station maximum get 10 A each, never more than
20 A together at any pilot change, and the one left charging gets the whole.  minChargingRate
pauses the newest session instead of offering it an inefficient share; the mock HAL's
phase-selection relay follows the composite's numberPhases with the contactor open.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.clock import iso
from agent.core.charging_profiles import allocate
from agent.core.load_management import Demand
from agent.core.smart_charging import (
    ChargingProfile,
    ChargingSchedule,
    ChargingSchedulePeriod,
    Kind,
    Purpose,
    limit_at,
    profile_in_force,
    station_composite,
)
from hal.interfaces import EvConnection
from hal.mock import MockHal
from tests.conftest import eventually, online, online201, version_rig

EPS = 1e-6
T0 = datetime(2024, 5, 6, tzinfo=UTC)
VERSIONS = ("1.6", "2.0.1")

# ---------------------------------------------------------------------- the pure sharing

own_maps = st.dictionaries(st.integers(1, 6), st.floats(0, 80, allow_nan=False), max_size=6)


@given(st.one_of(st.none(), st.floats(0, 200, allow_nan=False)), own_maps, st.data())
def test_allocation_fits_the_station_and_each_own_composite(station_a, own, data):
    active = data.draw(st.lists(st.sampled_from(sorted(own)), unique=True) if own
                       else st.just([]))
    demands = [Demand(i, data.draw(st.floats(0, 1e6, allow_nan=False)), own[i],
                      data.draw(st.sampled_from([6.0, 8.0, 10.0]))) for i in active]
    result = allocate(station_a, own, demands)
    assert set(result) == set(own)
    for evse_id, amps in result.items():
        assert 0 <= amps <= own[evse_id] + EPS
    if station_a is not None:
        assert sum(result.values()) <= station_a + EPS
        if sum(own.values()) > station_a + EPS:  # shared: the idle reserve nothing
            assert all(result[i] == 0 for i in own if i not in active)
    else:
        assert result == own


def _profile(pid: int, purpose: Purpose, evse: int, periods: list[tuple[int, float]],
             unit: str = "A", stack: int = 0) -> ChargingProfile:
    return ChargingProfile(
        id=pid, stack_level=stack, purpose=purpose, kind=Kind.ABSOLUTE, evse_id=evse,
        schedules=[ChargingSchedule(unit, [ChargingSchedulePeriod(s, Decimal(str(v)))
                                           for s, v in periods], start=T0)])


def _periods(unit: str) -> Any:
    top = 40 if unit == "A" else 30_000
    return st.lists(st.tuples(st.integers(1, 3600), st.integers(0, top)), max_size=4).map(
        lambda rest: [(0, rest[0][1] if rest else top // 2),
                      *sorted({s: v for s, v in rest}.items())])


@settings(max_examples=60, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_shared_limits_fit_the_station_composite_at_every_instant(data):
    station_profiles = [
        _profile(i + 1, Purpose.STATION_MAX, 0, data.draw(_periods(u)), u, stack=i)
        for i, u in enumerate(data.draw(st.lists(st.sampled_from("AW"), min_size=1,
                                                 max_size=2)))]
    evse_profiles = [
        _profile(10 + i, Purpose.TX_DEFAULT, evse, data.draw(_periods(u)), u)
        for i, (evse, u) in enumerate(data.draw(st.lists(
            st.tuples(st.integers(1, 3), st.sampled_from("AW")), max_size=3,
            unique_by=lambda t: t[0])))]
    profiles = station_profiles + evse_profiles
    active = data.draw(st.lists(st.integers(1, 3), unique=True))
    for second in data.draw(st.lists(st.integers(0, 4000), min_size=1, max_size=5)):
        at = T0 + timedelta(seconds=second)
        own = {e: float(limit_at(profiles, at, evse_id=e, evse_max_a=32, phases=3).limit)
               for e in (1, 2, 3)}
        (station, *_) = station_composite(profiles, window_start=at, window_s=1,
                                          station_max_a=96, phases=3, tx_default=False)
        demands = [Demand(e, float(e), own[e]) for e in active]
        result = allocate(float(station.limit), own, demands)
        assert sum(result.values()) <= float(station.limit) + EPS, (at, result, station)
        for e, amps in result.items():
            assert amps <= own[e] + EPS


def test_min_charging_rate_pauses_the_newest_rather_than_an_inefficient_share():
    own = {1: 20.0, 2: 20.0}
    # 14 A for two: 7 A each is below the EV's 8 A minChargingRate, so the newest pauses
    paused = allocate(14.0, own, [Demand(1, 1.0, 20.0, 8.0), Demand(2, 2.0, 20.0, 8.0)])
    assert paused == {1: 14.0, 2: 0.0}
    fair = allocate(14.0, own, [Demand(1, 1.0, 20.0, 6.0), Demand(2, 2.0, 20.0, 6.0)])
    assert fair == {1: 7.0, 2: 7.0}


def test_the_transaction_profile_in_force_carries_the_min_rate():
    default = ChargingProfile(
        id=1, stack_level=0, purpose=Purpose.TX_DEFAULT, kind=Kind.ABSOLUTE, evse_id=0,
        schedules=[ChargingSchedule("A", [ChargingSchedulePeriod(0, 16)], start=T0,
                                    min_rate=Decimal("8"))])
    tx = ChargingProfile(
        id=2, stack_level=0, purpose=Purpose.TX, kind=Kind.RELATIVE, evse_id=1,
        schedules=[ChargingSchedule("A", [ChargingSchedulePeriod(0, 12)], duration_s=60,
                                    min_rate=Decimal("10"))])
    at = T0 + timedelta(seconds=30)
    assert profile_in_force([default, tx], at, evse_id=1) is default  # no transaction
    assert profile_in_force([default, tx], at, evse_id=1, tx_start=T0) is tx
    later = T0 + timedelta(seconds=90)  # the TxProfile's 60 s are over: the default again
    assert profile_in_force([default, tx], later, evse_id=1, tx_start=T0) is default
    assert profile_in_force([default, tx], at, evse_id=0) is None


# ---------------------------------------------------------------------- on the wire


def _station_max(version: str, limit: float, *, pid: int = 1) -> tuple[str, dict]:
    """The tiny mapping: a station maximum of ``limit`` A as each version says it."""
    start = iso(datetime.now(UTC) - timedelta(minutes=1))
    periods = [{"startPeriod": 0, "limit": limit}]
    if version == "1.6":
        return "SetChargingProfile", {"connectorId": 0, "csChargingProfiles": {
            "chargingProfileId": pid, "stackLevel": 0,
            "chargingProfilePurpose": "ChargePointMaxProfile",
            "chargingProfileKind": "Absolute", "chargingSchedule": {
                "startSchedule": start, "chargingRateUnit": "A",
                "chargingSchedulePeriod": periods}}}
    return "SetChargingProfile", {"evseId": 0, "chargingProfile": {
        "id": pid, "stackLevel": 0, "chargingProfilePurpose": "ChargingStationMaxProfile",
        "chargingProfileKind": "Absolute", "chargingSchedule": [{
            "id": pid, "startSchedule": start, "chargingRateUnit": "A",
            "chargingSchedulePeriod": periods}]}}


def _tx_default(version: str, limit: float, min_rate: float, pid: int = 2) -> tuple[str, dict]:
    if version == "1.6":
        return "SetChargingProfile", {"connectorId": 0, "csChargingProfiles": {
            "chargingProfileId": pid, "stackLevel": 0,
            "chargingProfilePurpose": "TxDefaultProfile", "chargingProfileKind": "Relative",
            "chargingSchedule": {"chargingRateUnit": "A", "minChargingRate": min_rate,
                                 "chargingSchedulePeriod": [{"startPeriod": 0,
                                                             "limit": limit}]}}}
    return "SetChargingProfile", {"evseId": 0, "chargingProfile": {
        "id": pid, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
        "chargingProfileKind": "Relative", "chargingSchedule": [{
            "id": pid, "chargingRateUnit": "A", "minChargingRate": min_rate,
            "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit}]}]}}


async def _online(version: str, agent: Any, csms: Any) -> Any:
    return await (online(agent, csms) if version == "1.6" else online201(agent, csms))


def pilot(agent: Any, evse: int) -> float:
    return agent.hal.evses[evse].ev.current_limit


def _watch_sum(agent: Any) -> list[float]:
    """Every sum of the pilot offers, checked after each change of any EVSE's offer."""
    sums: list[float] = []

    def on_trace(evse_id: int, what: str, detail: dict) -> None:
        if what == "pwm":
            offers = {e: pilot(agent, e) for e in agent.station.evses}
            offers[evse_id] = detail["amps"]
            sums.append(sum(offers.values()))

    agent.station.traces.append(on_trace)
    return sums


@pytest.mark.parametrize("version", VERSIONS)
async def test_two_evses_share_the_station_maximum_and_one_gets_it_all_when_alone(
        version, short_dir):
    async with version_rig(version, short_dir, evses=2) as (csms, make):
        agent = await make()
        link = await _online(version, agent, csms)
        sums = _watch_sum(agent)
        action, payload = _station_max(version, 20)
        assert (await link.call(action, payload))["status"] == "Accepted"
        agent.hal.plug(1)
        agent.hal.tap("TAG1")
        await eventually(lambda: pilot(agent, 1) == 20, "EVSE 1 alone gets the 20 A")
        agent.hal.plug(2)
        agent.hal.tap("TAG2")
        await eventually(lambda: pilot(agent, 1) == 10 and pilot(agent, 2) == 10,
                         "10 A each while both charge")
        await eventually(lambda: agent.hal.sims[2].current() == 10,
                         "the EV draws what it was offered")
        agent.hal.unplug(1)
        await eventually(lambda: pilot(agent, 2) == 20 and pilot(agent, 1) == 0,
                         "EVSE 2 gets the whole once EVSE 1 is done")
        assert sums and max(sums) <= 20, f"the offers summed to {max(sums)} A"


async def test_min_charging_rate_pauses_the_newest_and_the_composite_reports_it(short_dir):
    async with version_rig("1.6", short_dir, evses=2) as (csms, make):
        agent = await make()
        link = await online(agent, csms)
        for action, payload in (_station_max("1.6", 14), _tx_default("1.6", 16, 8)):
            assert (await link.call(action, payload))["status"] == "Accepted"
        agent.hal.plug(1)
        agent.hal.tap("TAG1")
        await eventually(lambda: pilot(agent, 1) == 14, "EVSE 1 alone gets the 14 A")
        agent.hal.plug(2)
        agent.hal.tap("TAG2")
        await csms.wait_for("StartTransaction", station_id="CP1",
                            predicate=lambda p: p["connectorId"] == 2)
        service = agent.station.charging_profiles
        service.wake()  # one evaluation that surely sees both sessions active
        await service.evaluated()
        # 7 A each would be below the EVs' 8 A minChargingRate: EVSE 2 waits instead
        assert pilot(agent, 1) == 14 and pilot(agent, 2) == 0
        res = await link.call("GetCompositeSchedule", {"connectorId": 2, "duration": 60})
        assert res["chargingSchedule"]["minChargingRate"] == 8
        agent.hal.unplug(1)
        await eventually(lambda: pilot(agent, 2) == 14, "EVSE 2 charges once EVSE 1 left")


# ---------------------------------------------------------------------- phase switching


def _one_phase_max(limit: float) -> tuple[str, dict]:
    action, payload = _station_max("1.6", limit)
    payload["csChargingProfiles"]["chargingSchedule"]["chargingSchedulePeriod"][0][
        "numberPhases"] = 1
    return action, payload


async def test_the_mock_relay_follows_number_phases_with_the_contactor_open(short_dir):
    async with version_rig("1.6", short_dir) as (csms, make):
        agent = await make()
        link = await online(agent, csms)
        res = await link.call("GetConfiguration", {"key": ["ConnectorSwitch3to1PhaseSupported"]})
        assert res["configurationKey"][0]["value"] == "true"  # the mock has the relay
        sim = agent.hal.sims[1]
        closed_while_switching: list[bool] = []
        real = type(agent.hal.evses[1].ev).set_phases

        async def spy(self: Any, n: int) -> None:
            closed_while_switching.append(sim.coil_closed)
            await real(self, n)

        agent.hal.evses[1].ev.set_phases = spy.__get__(agent.hal.evses[1].ev)
        closes: list[tuple[int, float]] = []  # (phases, offer) whenever the contactor closes
        agent.station.traces.append(
            lambda e, what, d: closes.append((sim.phases, pilot(agent, 1)))
            if what == "contactor" and d["closed"] else None)
        agent.hal.plug(1)
        agent.hal.tap("TAG1")
        await eventually(lambda: sim.current() > 0, "charging on three phases")
        assert sim.phases == 3
        action, payload = _one_phase_max(16)
        assert (await link.call(action, payload))["status"] == "Accepted"
        await eventually(lambda: sim.phases == 1 and sim.current() == 16,
                         "charging on one phase at 16 A")
        res = await link.call("ClearChargingProfile", {})
        assert res["status"] == "Accepted"
        await eventually(lambda: sim.phases == 3 and sim.current() > 0, "three phases again")
        assert closed_while_switching == [False, False]
        # closed on one phase only at the one-phase limit, never at the old 32 A
        assert (1, 16) in closes and all(offer <= 16 for n, offer in closes if n == 1)
        assert sim.phase_switches == 2


async def test_the_hal_contract_for_phase_switching():
    hal = MockHal(1)
    ev = hal.evses[1].ev
    assert ev.supports_phase_switch and ev.phases_in_use == 3
    hal.sims[1].coil_closed = True
    with pytest.raises(Exception, match="contactor closed"):
        await ev.set_phases(1)
    assert ev.phases_in_use == 3
    one_phase = MockHal(1, phases=1).evses[1].ev
    assert not one_phase.supports_phase_switch
    # a real driver that says nothing cannot switch
    assert EvConnection.supports_phase_switch.fget(object()) is False  # type: ignore[arg-type]


async def test_load_management_heeds_min_charging_rate_and_publishes_its_limits():
    from agent.clock import FakeClock
    from agent.core.load_management import LoadManager, SiteLimits
    from agent.core.station import Station
    from agent.storage import Storage
    from tests.test_core import Recorder
    from tests.test_load_management import tick, two_charging

    clock = FakeClock()
    storage = Storage(":memory:")
    hal = MockHal(2, monotonic=clock.monotonic, ev_max_current_a=16)
    station = Station(hal, storage, clock, meter_poll_s=1.0)
    station.observer = station.authorizer = Recorder(storage)
    service = station.charging_profiles
    service.install(ChargingProfile(
        id=1, stack_level=0, purpose=Purpose.TX_DEFAULT, kind=Kind.RELATIVE, evse_id=0,
        schedules=[ChargingSchedule("A", [ChargingSchedulePeriod(0, 32)],
                                    min_rate=Decimal(8))]))
    lm = LoadManager(station.evses, SiteLimits(14.0), clock, interval_s=1.0, profiles=service)
    await station.start()
    lm.start()
    try:
        await two_charging(station, hal, lm, clock)
        # 7 A each is below the EVs' 8 A minChargingRate: the newer session waits
        assert [hal.sims[i].current() for i in (1, 2)] == [14.0, 0.0]
        assert service.external_limit(0) == (Decimal(14), "site")
        assert service.external_limit(1) == (Decimal(14), "site")
        assert service.external_limit(2) == (Decimal(0), "site")
        hal.unplug(1)
        await tick(station, lm, clock)
        await tick(station, lm, clock)
        assert hal.sims[2].current() == 14.0
        assert service.external_limit(1) is None  # idle: no limit of the site's to tell
    finally:
        await lm.stop()
        await station.stop()
        storage.close()
    assert service.external_profiles == []  # load management stopped: no site limits
