"""OCPP 1.6 SmartCharging (3.13, 5.5, 5.7, 5.16): the real agent against the strict test CSMS.

The first part runs on the real clock: every message, invalid profiles, replacement and
clearing rules, remote start with a TxProfile, persistence across a restart.  The second runs
the agent on a :class:`FakeClock` (as tests/test_timing.py does) to check that the pilot moves
at a schedule's boundaries, not a second early, and that a limit below 6 A pauses the EV.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agent.clock import iso
from agent.core.smart_charging import Purpose
from tests.conftest import charging, eventually, online

pytestmark = pytest.mark.asyncio


def profile(pid: int = 1, purpose: str = "ChargePointMaxProfile", *, level: int = 0,
            kind: str = "Absolute", unit: str = "A", periods: list[tuple[int, float]] | None = None,
            start: datetime | None = None, **extra: Any) -> dict:
    schedule: dict[str, Any] = {
        "chargingRateUnit": unit,
        "chargingSchedulePeriod": [{"startPeriod": s, "limit": lim}
                                   for s, lim in (periods or [(0, 10)])]}
    if kind == "Absolute":
        schedule["startSchedule"] = iso(start or datetime.now(UTC) - timedelta(minutes=1))
    out = {"chargingProfileId": pid, "stackLevel": level, "chargingProfilePurpose": purpose,
           "chargingProfileKind": kind, "chargingSchedule": schedule}
    out.update(extra)
    return out


async def set_profile(link: Any, connector: int, cs: dict) -> str:
    res = await link.call("SetChargingProfile", {"connectorId": connector,
                                                 "csChargingProfiles": cs})
    return res["status"]


def pilot(agent: Any, evse: int = 1) -> float:
    return agent.hal.evses[evse].ev.current_limit


# ---------------------------------------------------------------- configuration


async def test_smart_charging_profile_and_keys_are_declared(csms, make_agent):
    agent = await make_agent()
    link = await online(agent, csms)
    res = await link.call("GetConfiguration", {})
    keys = {k["key"]: k for k in res["configurationKey"]}
    assert "SmartCharging" in keys["SupportedFeatureProfiles"]["value"].split(",")
    for key in ("ChargeProfileMaxStackLevel", "ChargingScheduleAllowedChargingRateUnit",
                "ChargingScheduleMaxPeriods", "MaxChargingProfilesInstalled",
                "ConnectorSwitch3to1PhaseSupported"):
        assert keys[key]["readonly"] is True, key
    assert keys["ChargingScheduleAllowedChargingRateUnit"]["value"] == "Current,Power"


# ---------------------------------------------------------------- SetChargingProfile


async def test_station_max_caps_the_pilot_and_clearing_lifts_it(csms, make_agent):
    agent = await make_agent()
    link = await online(agent, csms)
    await charging(agent, csms)
    await eventually(lambda: pilot(agent) == 32, "the full offer")
    assert await set_profile(link, 0, profile(1, periods=[(0, 10)])) == "Accepted"
    await eventually(lambda: pilot(agent) == 10, "the pilot capped at 10 A")
    assert agent.station.evses[1].limit_source == "csms"
    res = await link.call("ClearChargingProfile", {"id": 1})
    assert res["status"] == "Accepted"
    await eventually(lambda: pilot(agent) == 32, "the cap lifted")
    assert (await link.call("ClearChargingProfile", {"id": 1}))["status"] == "Unknown"


async def test_power_limit_is_converted_with_the_evse_phases(csms, make_agent):
    agent = await make_agent()
    link = await online(agent, csms)
    await charging(agent, csms)
    # 6900 W on three phases at 230 V: 10 A per phase
    assert await set_profile(link, 0, profile(1, unit="W", periods=[(0, 6900)])) == "Accepted"
    await eventually(lambda: pilot(agent) == 10, "6900 W as 10 A")


async def test_tx_profile_applies_to_its_transaction_and_goes_with_it(csms, make_agent):
    agent = await make_agent()
    link = await online(agent, csms)
    await charging(agent, csms)
    tx_id = next(iter(csms.transactions))
    cs = profile(5, "TxProfile", kind="Relative", periods=[(0, 12)], transactionId=tx_id)
    assert await set_profile(link, 1, cs) == "Accepted"
    await eventually(lambda: pilot(agent) == 12, "the TxProfile's 12 A")
    agent.hal.unplug(1)
    await csms.wait_for("StopTransaction", station_id="CP1")
    service = agent.station.charging_profiles
    await eventually(lambda: service.get(5) is None, "the TxProfile removed at the end")


async def test_tx_default_profile_applies_to_the_next_transaction(csms, make_agent):
    agent = await make_agent()
    link = await online(agent, csms)
    cs = profile(2, "TxDefaultProfile", kind="Relative", periods=[(0, 8)])
    assert await set_profile(link, 0, cs) == "Accepted"
    await charging(agent, csms)
    await eventually(lambda: pilot(agent) == 8, "the default's 8 A")
    assert agent.station.charging_profiles.get(2) is not None


@pytest.mark.parametrize(("connector", "cs", "problem"), [
    (1, profile(1, "TxProfile", kind="Relative"), "no transaction is running"),
    (0, profile(1, level=99), "stack level 99 is above the maximum"),
    (1, profile(1, "ChargePointMaxProfile"), "belongs on EVSE 0"),
    (0, profile(1, "TxProfile", kind="Relative"), "needs an EVSE > 0"),
    (0, profile(1, "TxDefaultProfile", kind="Relative", start=datetime.now(UTC)) | {
        "chargingSchedule": {"chargingRateUnit": "A", "startSchedule": iso(datetime.now(UTC)),
                             "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 6}]}},
     "must not have startSchedule"),
    (0, profile(1, "TxDefaultProfile", kind="Recurring"), "needs a recurrency kind"),
    (0, profile(1, periods=[(i * 60, 10) for i in range(30)]), "ChargingScheduleMaxPeriods"),
    (0, profile(1, validFrom="2030-01-02T00:00:00Z", validTo="2030-01-01T00:00:00Z"),
     "is not before validTo"),
    (7, profile(1), "connector 7 does not exist"),
    (0, profile(1, transactionId=3), "only valid if the purpose is TxProfile"),
])
async def test_invalid_profiles_are_rejected_with_the_reason_logged(
        csms, make_agent, caplog, connector, cs, problem):
    agent = await make_agent()
    link = await online(agent, csms)
    with caplog.at_level(logging.WARNING, logger="cp_agent.v16"):
        assert await set_profile(link, connector, cs) == "Rejected"
    assert problem in caplog.text
    assert agent.station.charging_profiles.profiles == []
    assert agent.storage.profiles_all() == []


async def test_same_purpose_and_stack_level_replaces_and_same_id_replaces(csms, make_agent):
    agent = await make_agent()
    link = await online(agent, csms)
    service = agent.station.charging_profiles
    assert await set_profile(link, 0, profile(1, level=1, periods=[(0, 20)])) == "Accepted"
    assert await set_profile(link, 0, profile(2, level=1, periods=[(0, 16)])) == "Accepted"
    assert [p.id for p in service.profiles] == [2], "same purpose + stack level replaces"
    assert await set_profile(link, 0, profile(2, level=2, periods=[(0, 14)])) == "Accepted"
    assert [(p.id, p.stack_level) for p in service.profiles] == [(2, 2)], "same id replaces"
    cs = profile(3, "TxDefaultProfile", level=2, kind="Relative", periods=[(0, 9)])
    assert await set_profile(link, 0, cs) == "Accepted"
    assert sorted(p.id for p in service.profiles) == [2, 3], "another purpose stays"


async def test_max_profiles_installed_is_enforced(csms, make_agent):
    agent = await make_agent(defaults={"MaxChargingProfilesInstalled": 2})
    link = await online(agent, csms)
    assert await set_profile(link, 0, profile(1, level=1)) == "Accepted"
    assert await set_profile(link, 0, profile(2, level=2)) == "Accepted"
    assert await set_profile(link, 0, profile(3, level=3)) == "Rejected"
    assert await set_profile(link, 0, profile(4, level=2)) == "Accepted", "a replacement fits"
    assert sorted(p.id for p in agent.station.charging_profiles.profiles) == [1, 4]


# ---------------------------------------------------------------- ClearChargingProfile


async def test_clear_by_purpose_stack_level_connector_and_all(csms, make_agent):
    agent = await make_agent(evses=2)
    link = await online(agent, csms)
    service = agent.station.charging_profiles
    for pid, connector, purpose, level in ((1, 0, "ChargePointMaxProfile", 0),
                                           (2, 0, "TxDefaultProfile", 0),
                                           (3, 1, "TxDefaultProfile", 1),
                                           (4, 2, "TxDefaultProfile", 1)):
        cs = profile(pid, purpose, level=level,
                     kind="Relative" if purpose != "ChargePointMaxProfile" else "Absolute")
        assert await set_profile(link, connector, cs) == "Accepted"

    async def clear(**criteria: Any) -> str:
        return (await link.call("ClearChargingProfile", criteria))["status"]

    assert await clear(connectorId=2, chargingProfilePurpose="TxDefaultProfile") == "Accepted"
    assert sorted(p.id for p in service.profiles) == [1, 2, 3]
    assert await clear(chargingProfilePurpose="TxDefaultProfile", stackLevel=1) == "Accepted"
    assert sorted(p.id for p in service.profiles) == [1, 2]
    assert await clear(chargingProfilePurpose="TxProfile") == "Unknown"
    assert await clear(id=99) == "Unknown"
    assert await clear() == "Accepted"
    assert service.profiles == [] and agent.storage.profiles_all() == []
    assert await clear() == "Unknown"


# ---------------------------------------------------------------- GetCompositeSchedule


async def test_composite_schedule_of_station_and_connector(csms, make_agent):
    agent = await make_agent()
    link = await online(agent, csms)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=10)
    cs = profile(1, periods=[(0, 20), (310, 10)], start=start)
    assert await set_profile(link, 0, cs) == "Accepted"
    res = await link.call("GetCompositeSchedule", {"connectorId": 1, "duration": 600})
    assert res["status"] == "Accepted" and res["connectorId"] == 1
    sched = res["chargingSchedule"]
    assert sched["chargingRateUnit"] == "A" and sched["duration"] == 600
    assert sched["startSchedule"] == res["scheduleStart"]
    begin = datetime.fromisoformat(res["scheduleStart"].replace("Z", "+00:00"))
    assert abs((begin - datetime.now(UTC)).total_seconds()) < 5
    periods = [(p["startPeriod"], p["limit"]) for p in sched["chargingSchedulePeriod"]]
    change = int((start + timedelta(seconds=310) - begin).total_seconds())
    assert periods == [(0, 20), (change, 10)]
    watts = await link.call("GetCompositeSchedule", {"connectorId": 0, "duration": 600,
                                                     "chargingRateUnit": "W"})
    assert watts["status"] == "Accepted"
    limits = [p["limit"] for p in watts["chargingSchedule"]["chargingSchedulePeriod"]]
    assert limits == [20 * 230 * 3, 10 * 230 * 3]
    unknown = await link.call("GetCompositeSchedule", {"connectorId": 5, "duration": 60})
    assert unknown == {"status": "Rejected"}


async def test_composite_schedule_without_profiles_is_the_rating(csms, make_agent):
    agent = await make_agent()
    link = await online(agent, csms)
    res = await link.call("GetCompositeSchedule", {"connectorId": 1, "duration": 60})
    assert res["status"] == "Accepted"
    assert res["chargingSchedule"]["chargingSchedulePeriod"] == [
        {"startPeriod": 0, "limit": agent.station.evses[1].max_current_a, "numberPhases": 3}]


# ---------------------------------------------------------------- RemoteStartTransaction


async def test_remote_start_with_a_tx_profile(csms, make_agent):
    agent = await make_agent()
    link = await online(agent, csms)
    agent.hal.plug(1)
    cs = profile(7, "TxProfile", kind="Relative", periods=[(0, 11)])
    res = await link.call("RemoteStartTransaction", {"idTag": "REMOTE1", "connectorId": 1,
                                                     "chargingProfile": cs})
    assert res["status"] == "Accepted"
    await csms.wait_for("StartTransaction", station_id="CP1")
    await eventually(lambda: pilot(agent) == 11, "the remote start's profile")
    tx = agent.station.charging_profiles.get(7)
    assert tx is not None and tx.purpose == Purpose.TX and tx.evse_id == 1


@pytest.mark.parametrize("cs", [
    profile(7, "TxDefaultProfile", kind="Relative"),
    profile(7, "TxProfile", kind="Relative", transactionId=5),
    profile(7, "TxProfile", kind="Relative", level=99),
])
async def test_remote_start_with_an_unusable_profile_is_rejected(csms, make_agent, caplog, cs):
    agent = await make_agent()
    link = await online(agent, csms)
    with caplog.at_level(logging.WARNING, logger="cp_agent.v16"):
        res = await link.call("RemoteStartTransaction", {"idTag": "R", "connectorId": 1,
                                                         "chargingProfile": cs})
    assert res["status"] == "Rejected"
    assert "rejected" in caplog.text
    assert agent.station.charging_profiles.profiles == []
    assert csms.messages("CP1", "StartTransaction") == []


# ---------------------------------------------------------------- persistence


async def test_profiles_survive_a_restart(csms, make_agent):
    agent = await make_agent()
    link = await online(agent, csms)
    assert await set_profile(link, 0, profile(1, periods=[(0, 9)])) == "Accepted"
    cs = profile(2, "TxDefaultProfile", level=3, kind="Relative", periods=[(0, 14)])
    assert await set_profile(link, 0, cs) == "Accepted"
    await agent.stop()
    again = await make_agent()
    link = await online(again, csms)
    assert sorted(p.id for p in again.station.charging_profiles.profiles) == [1, 2]
    await charging(again, csms)
    await eventually(lambda: pilot(again) == 9, "the station max still applies")
    res = await link.call("GetCompositeSchedule", {"connectorId": 1, "duration": 60})
    assert res["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] == 9
