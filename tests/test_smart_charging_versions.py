"""Smart charging behaviour 1.6 and 2.0.1 share, tested once per version on the fake clock.

The engine and the scheduler are the core's, so a schedule must move the pilot at the same
instants whichever version installed it: not a second early, on time, below 6 A the EV pauses
and a later period resumes it, offline too (2.0.1 K06), and after a restart.  Each version
differs only in how the CSMS says "this station maximum" and how the station reports a
suspension, which :class:`Kit` maps.  The agent runs for real against the strict test CSMS;
its clock is a :class:`FakeClock` (see tests/test_timing.py).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from agent.clock import FakeClock, iso
from tests.conftest import charging, charging201, eventually
from tests.test_timing import online as timing_online
from tests.test_timing import rig

pytestmark = pytest.mark.asyncio
SID = "CP1"


class Kit:
    version: str

    def station_max(self, periods: list[tuple[int, float]], start: datetime) -> tuple[str, dict]:
        """The action and payload installing a station-maximum profile of ``periods``."""
        raise NotImplementedError

    async def charging(self, agent: Any, csms: Any) -> None:
        raise NotImplementedError

    def suspended_evse(self, action: str, p: dict) -> bool:
        """Whether a message reports EVSE 1 as paused by the station (SuspendedEVSE)."""
        raise NotImplementedError

    def charging_again(self, action: str, p: dict) -> bool:
        raise NotImplementedError

    report_action: str


class Kit16(Kit):
    version = "1.6"
    report_action = "StatusNotification"

    def station_max(self, periods, start):
        return "SetChargingProfile", {"connectorId": 0, "csChargingProfiles": {
            "chargingProfileId": 1, "stackLevel": 0,
            "chargingProfilePurpose": "ChargePointMaxProfile", "chargingProfileKind": "Absolute",
            "chargingSchedule": {"chargingRateUnit": "A", "startSchedule": iso(start),
                                 "chargingSchedulePeriod": [{"startPeriod": s, "limit": lim}
                                                            for s, lim in periods]}}}

    async def charging(self, agent, csms):
        await charging(agent, csms)

    def suspended_evse(self, action, p):
        return p["connectorId"] == 1 and p["status"] == "SuspendedEVSE"

    def charging_again(self, action, p):
        return p["connectorId"] == 1 and p["status"] == "Charging"


class Kit201(Kit):
    version = "2.0.1"
    report_action = "TransactionEvent"

    def station_max(self, periods, start):
        return "SetChargingProfile", {"evseId": 0, "chargingProfile": {
            "id": 1, "stackLevel": 0, "chargingProfilePurpose": "ChargingStationMaxProfile",
            "chargingProfileKind": "Absolute",
            "chargingSchedule": [{"id": 1, "chargingRateUnit": "A", "startSchedule": iso(start),
                                  "chargingSchedulePeriod": [{"startPeriod": s, "limit": lim}
                                                             for s, lim in periods]}]}}

    async def charging(self, agent, csms):
        await charging201(agent, csms)

    def suspended_evse(self, action, p):
        return p["transactionInfo"].get("chargingState") == "SuspendedEVSE"

    def charging_again(self, action, p):
        return p["transactionInfo"].get("chargingState") == "Charging"


class Kit21(Kit201):
    version = "2.1"  # the 2.0.1 messages carried over (2.1 adds optional fields only)


@pytest.fixture(params=[Kit16(), Kit201(), Kit21()], ids=["1.6", "2.0.1", "2.1"])
def kit(request: pytest.FixtureRequest) -> Kit:
    return request.param


def pilot(agent: Any, evse: int = 1) -> float:
    return agent.hal.evses[evse].ev.current_limit


async def station_max(kit: Kit, csms: Any, agent: Any, periods: list[tuple[int, float]]
                      ) -> datetime:
    """A station-maximum profile whose schedule starts at the current second; its start."""
    start = agent.clock.now().replace(microsecond=0)
    action, payload = kit.station_max(periods, start)
    res = await csms.stations[SID].call(action, payload)
    assert res["status"] == "Accepted", res
    return start


async def until(agent: Any, at: datetime, before: float, *, expect_before: float,
                expect_after: float) -> None:
    """Advance the fake clock to ``before`` s ahead of ``at``: the pilot still shows
    ``expect_before``; then just past ``at``: it shows ``expect_after``."""
    clock: FakeClock = agent.clock
    await clock.advance((at - clock.now()).total_seconds() - before)
    await agent.station.quiet()
    assert pilot(agent) == expect_before, f"changed {before} s early"
    await clock.advance(before + 0.01)
    await eventually(lambda: pilot(agent) == expect_after, f"{expect_after} A at {at}")


async def test_three_period_profile_moves_the_pilot_at_its_boundaries(kit, short_dir):
    async with rig(kit.version, short_dir) as (csms, make):
        agent = await make()
        csms.now = agent.clock.now  # a Heartbeat answer must not set the fake clock back
        await timing_online(agent)
        await kit.charging(agent, csms)
        full = agent.station.evses[1].max_current_a
        await eventually(lambda: pilot(agent) == full, "the full offer")
        start = await station_max(kit, csms, agent, [(0, 16), (600, 10), (1200, 13)])
        await eventually(lambda: pilot(agent) == 16, "period 1")
        await until(agent, start + timedelta(seconds=600), 1, expect_before=16,
                    expect_after=10)
        await until(agent, start + timedelta(seconds=1200), 1, expect_before=10,
                    expect_after=13)
        assert agent.hal.evses[1].contactor.commanded_closed
        assert agent.station.evses[1].limit_a == 13


async def test_limit_below_minimum_suspends_and_a_later_period_resumes(kit, short_dir):
    async with rig(kit.version, short_dir) as (csms, make):
        agent = await make()
        csms.now = agent.clock.now  # a Heartbeat answer must not set the fake clock back
        await timing_online(agent)
        await kit.charging(agent, csms)
        start = await station_max(kit, csms, agent, [(0, 12), (300, 4), (900, 8)])
        await eventually(lambda: pilot(agent) == 12, "period 1")
        await until(agent, start + timedelta(seconds=300), 1, expect_before=12,
                    expect_after=0)
        await eventually(lambda: not agent.hal.evses[1].contactor.commanded_closed,
                         "the contactor opened")
        await csms.wait_for(kit.report_action, station_id=SID,
                            predicate=lambda p: kit.suspended_evse(kit.report_action, p))
        charging_reports = len([p for p in csms.messages(SID, kit.report_action)
                                if kit.charging_again(kit.report_action, p)])
        await until(agent, start + timedelta(seconds=900), 1, expect_before=0,
                    expect_after=8)
        await eventually(lambda: agent.hal.evses[1].contactor.commanded_closed,
                         "the contactor closed again")
        await csms.wait_for(kit.report_action, station_id=SID, count=charging_reports + 1,
                            predicate=lambda p: kit.charging_again(kit.report_action, p))


async def test_profiles_keep_applying_while_offline(kit, short_dir):
    """2.0.1 K06 (and 1.6 alike): the schedule is the station's once installed."""
    async with rig(kit.version, short_dir) as (csms, make):
        agent = await make()
        csms.now = agent.clock.now  # a Heartbeat answer must not set the fake clock back
        await timing_online(agent)
        await kit.charging(agent, csms)
        # A short period: while offline the link retries every 0.05-0.2 s of fake time.
        start = await station_max(kit, csms, agent, [(0, 14), (20, 9)])
        await eventually(lambda: pilot(agent) == 14, "period 1")
        await csms.pause()
        await eventually(lambda: not agent.adapter.online, "the connection is gone")
        await until(agent, start + timedelta(seconds=20), 1, expect_before=14,
                    expect_after=9)
        assert agent.station.evses[1].limit_source == "csms"
        await csms.resume()
        await agent.clock.advance(1)
        await eventually(lambda: agent.adapter.online, "back online")


async def test_schedule_is_resumed_after_a_restart(kit, short_dir):
    async with rig(kit.version, short_dir) as (csms, make):
        agent = await make()
        csms.now = agent.clock.now  # a Heartbeat answer must not set the fake clock back
        await timing_online(agent)
        start = await station_max(kit, csms, agent, [(0, 12), (3600, 7)])
        await agent.stop()
        again = await make()
        csms.now = again.clock.now  # the new agent's fake time, or each Heartbeat sets it back
        await timing_online(again)
        assert [p.id for p in again.station.charging_profiles.profiles] == [1]
        await kit.charging(again, csms)
        await eventually(lambda: pilot(again) == 12, "period 1 after the restart")
        await until(again, start + timedelta(seconds=3600), 1, expect_before=12,
                    expect_after=7)


async def test_a_clock_correction_replans_an_absolute_schedule(kit, short_dir):
    """The CSMS sets the station's clock past a period boundary (a Heartbeat answer): the
    schedule is planned on the corrected time at once, not when the sleep computed on the
    old time would have ended (no fake time passes here at all)."""
    async with rig(kit.version, short_dir) as (csms, make):
        agent = await make()
        csms.now = agent.clock.now
        await timing_online(agent)
        await kit.charging(agent, csms)
        start = await station_max(kit, csms, agent, [(0, 12), (3600, 7)])
        await eventually(lambda: pilot(agent) == 12, "period 1")
        later = start + timedelta(seconds=3700)
        csms.now = lambda: later
        res = await csms.stations[SID].call("TriggerMessage", {"requestedMessage": "Heartbeat"})
        assert res["status"] == "Accepted", res
        await eventually(lambda: abs((agent.clock.now() - later).total_seconds()) < 5,
                         "the clock corrected by the Heartbeat answer")
        await eventually(lambda: pilot(agent) == 7, "period 2 on the corrected clock")
