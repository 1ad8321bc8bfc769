"""OCPP 2.0.1 block K, smart charging (K01, K05, K06, K07, K08, K09, K10): the real agent
against the strict test CSMS, which checks every frame against the 2.0.1 schemas.

Test names follow the conformance cases TC_K_xx where one exists (the shared part 6 only
carries TC_K_38_CS; the numbers of the others are those of the public K test lists, which
CS and CSMS cases share).  Behaviour 1.6 and 2.0.1 share (a schedule moving the pilot at its
boundaries on the fake clock, a limit below 6 A pausing the EV, offline and restart) is in
tests/test_smart_charging_versions.py, once for both versions.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agent.ocpp.v201 import smart_charging as block
from agent.ocpp.v201.smart_charging import from_profile, reason_code, to_profile
from tests.conftest import charging201, eventually, on_versions_201_plus, online201

pytestmark = pytest.mark.asyncio
v2 = on_versions_201_plus()  # 2.1's K block is 2.0.1's plus tests/test_v21_smart_charging.py

TOKEN = {"idToken": "REMOTE1", "type": "Central"}


def profile(pid: int = 1, purpose: str = "ChargingStationMaxProfile", *, level: int = 0,
            kind: str = "Absolute", unit: str = "A",
            periods: list[tuple[int, float]] | None = None, start: datetime | None = None,
            schedule: dict | None = None, **extra: Any) -> dict:
    sched: dict[str, Any] = {
        "id": pid * 10, "chargingRateUnit": unit,
        "chargingSchedulePeriod": [{"startPeriod": s, "limit": lim}
                                   for s, lim in (periods or [(0, 10)])]}
    if kind == "Absolute":
        sched["startSchedule"] = (start or datetime.now(UTC) - timedelta(minutes=1)
                                  ).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    sched.update(schedule or {})
    out = {"id": pid, "stackLevel": level, "chargingProfilePurpose": purpose,
           "chargingProfileKind": kind, "chargingSchedule": [sched]}
    out.update(extra)
    return out


def tx_default(pid: int, level: int = 0, limit: float = 8) -> dict:
    return profile(pid, "TxDefaultProfile", level=level, kind="Relative",
                   periods=[(0, limit)])


async def set_profile(link: Any, evse: int, cp: dict) -> dict:
    return await link.call("SetChargingProfile", {"evseId": evse, "chargingProfile": cp})


def pilot(agent: Any, evse: int = 1) -> float:
    return agent.hal.evses[evse].ev.current_limit


def installed(agent: Any) -> list[int]:
    return sorted(p.id for p in agent.station.charging_profiles.profiles)


async def get_var(link: Any, component: str, variable: str,
                  instance: str | None = None) -> str:
    var: dict[str, Any] = {"name": variable}
    if instance:
        var["instance"] = instance
    res = await link.call("GetVariables", {"getVariableData": [
        {"component": {"name": component}, "variable": var}]})
    result = res["getVariableResult"][0]
    assert result["attributeStatus"] == "Accepted", result
    return result["attributeValue"]


# ---------------------------------------------------------------- SmartChargingCtrlr


async def test_smart_charging_ctrlr_variables(csms201, make_agent201):
    agent = await make_agent201()
    link = await online201(agent, csms201)
    assert await get_var(link, "SmartChargingCtrlr", "Enabled") == "true"
    assert await get_var(link, "SmartChargingCtrlr", "Available") == "true"
    assert await get_var(link, "SmartChargingCtrlr", "RateUnit") == "A,W"
    assert await get_var(link, "SmartChargingCtrlr", "PeriodsPerSchedule") == "24"
    assert await get_var(link, "SmartChargingCtrlr", "ProfileStackLevel") == "8"
    switching = agent.station.charging_profiles.phase_switching  # what the boards can
    assert await get_var(link, "SmartChargingCtrlr", "Phases3to1") == str(switching).lower()
    assert await get_var(link, "SmartChargingCtrlr", "ACPhaseSwitchingSupported") == "false"
    assert await get_var(link, "SmartChargingCtrlr", "Entries", "ChargingProfiles") == "0"
    assert (await set_profile(link, 0, profile(1)))["status"] == "Accepted"
    assert await get_var(link, "SmartChargingCtrlr", "Entries", "ChargingProfiles") == "1"
    res = await link.call("SetVariables", {"setVariableData": [{
        "component": {"name": "SmartChargingCtrlr"}, "variable": {"name": "ProfileStackLevel"},
        "attributeValue": "99"}]})
    assert res["setVariableResult"][0]["attributeStatus"] == "Rejected"  # read-only
    report = await link.call("GetReport", {"requestId": 3, "componentVariable": [
        {"component": {"name": "SmartChargingCtrlr"},
         "variable": {"name": "Entries", "instance": "ChargingProfiles"}}]})
    assert report["status"] == "Accepted"
    notify = await csms201.wait_for("NotifyReport", station_id="CP1",
                                    predicate=lambda p: p["requestId"] == 3)
    entry = notify["reportData"][0]
    assert entry["variableCharacteristics"]["maxLimit"] == block.MAX_ENTRIES
    assert entry["variableAttribute"][0]["mutability"] == "ReadOnly"


# ---------------------------------------------------------------- K01 SetChargingProfile


async def test_TC_K_03_CS_charging_station_max_profile_caps_the_pilot(csms201, make_agent201):
    agent = await make_agent201()
    link = await online201(agent, csms201)
    await charging201(agent, csms201)
    full = agent.station.evses[1].max_current_a
    await eventually(lambda: pilot(agent) == full, "the EVSE's full offer")
    assert await set_profile(link, 0, profile(1, periods=[(0, 10)])) == {"status": "Accepted"}
    await eventually(lambda: pilot(agent) == 10, "the pilot capped at 10 A")
    assert agent.station.evses[1].limit_a == 10
    assert agent.station.evses[1].limit_source == "csms"


async def test_TC_K_01_CS_tx_default_profile_on_one_evse(csms201, make_agent201):
    agent = await make_agent201(evses=2)
    link = await online201(agent, csms201)
    assert (await set_profile(link, 2, tx_default(2, limit=7)))["status"] == "Accepted"
    await charging201(agent, csms201, evse=1)
    await eventually(lambda: pilot(agent, 1) == agent.station.evses[1].max_current_a,
                     "EVSE 1 not limited")
    await charging201(agent, csms201, tag="TAG2", evse=2)
    await eventually(lambda: pilot(agent, 2) == 7, "EVSE 2 limited by its default")


async def test_TC_K_10_CS_tx_default_profile_on_all_evses(csms201, make_agent201):
    agent = await make_agent201(evses=2)
    link = await online201(agent, csms201)
    assert (await set_profile(link, 0, tx_default(2, limit=9)))["status"] == "Accepted"
    await charging201(agent, csms201, evse=1)
    await charging201(agent, csms201, tag="TAG2", evse=2)
    await eventually(lambda: pilot(agent, 1) == 9 and pilot(agent, 2) == 9, "both at 9 A")


async def test_K07_tx_default_applies_at_once_to_a_running_transaction(csms201, make_agent201):
    agent = await make_agent201()
    link = await online201(agent, csms201)
    await charging201(agent, csms201)
    await eventually(lambda: pilot(agent) == agent.station.evses[1].max_current_a,
                     "the full offer")
    assert (await set_profile(link, 0, tx_default(2, limit=12)))["status"] == "Accepted"
    await eventually(lambda: pilot(agent) == 12, "the running transaction limited at once")


async def test_TC_K_60_CS_tx_profile_for_the_running_transaction(csms201, make_agent201):
    agent = await make_agent201()
    link = await online201(agent, csms201)
    started = await charging201(agent, csms201)
    tx_id = started["transactionInfo"]["transactionId"]
    await set_profile(link, 0, tx_default(1, limit=13))
    cp = profile(5, "TxProfile", kind="Relative", periods=[(0, 11)], transactionId=tx_id)
    assert (await set_profile(link, 1, cp))["status"] == "Accepted"
    await eventually(lambda: pilot(agent) == 11, "the TxProfile overrules the default")
    other = profile(6, "TxProfile", level=1, kind="Relative", transactionId="not-this-one")
    res = await set_profile(link, 1, other)
    assert res["status"] == "Rejected" and res["statusInfo"]["reasonCode"] == "TxNotFound"
    missing = profile(6, "TxProfile", level=1, kind="Relative")
    res = await set_profile(link, 1, missing)
    assert res["status"] == "Rejected" and res["statusInfo"]["reasonCode"] == "MissingParam"
    agent.hal.unplug(1)
    await csms201.wait_for("TransactionEvent", station_id="CP1",
                           predicate=lambda p: p["eventType"] == "Ended")
    await eventually(lambda: installed(agent) == [1], "the TxProfile went with its transaction")


async def test_TC_K_02_CS_tx_profile_without_a_transaction_is_rejected(csms201, make_agent201):
    agent = await make_agent201()
    link = await online201(agent, csms201)
    res = await set_profile(link, 1, profile(1, "TxProfile", kind="Relative",
                                             transactionId="abc"))
    assert res["status"] == "Rejected"
    assert res["statusInfo"]["reasonCode"] == "TxNotFound"
    assert "K01.FR.09" in res["statusInfo"]["additionalInfo"]
    assert installed(agent) == []


INVALID = [
    (1, profile(1), "InvalidValue", "belongs on EVSE 0"),
    (0, profile(1, "TxProfile", kind="Relative"), "InvalidValue", "needs an EVSE > 0"),
    (0, profile(1, "ChargingStationExternalConstraints"), "InvalidValue", "K01.FR.22"),
    (7, tx_default(1), "UnknownEvse", "EVSE 7 does not exist"),
    (0, profile(1, level=99), "InvalidStackLevel", "SmartChargingCtrlr.ProfileStackLevel"),
    (0, profile(1, periods=[(i * 60, 10) for i in range(30)]), "TooManyElements",
     "SmartChargingCtrlr.PeriodsPerSchedule"),
    (0, profile(1) | {"chargingSchedule": profile(1)["chargingSchedule"] * 2},
     "TooManyElements", "at most 1 allowed"),
    (0, profile(1, periods=[(5, 10)]), "InvalidSchedule", "K01.FR.31"),
    (0, profile(1, periods=[(0, 10), (60, 8), (60, 6)]), "InvalidSchedule", "K01.FR.35"),
    (0, profile(1, periods=[(0, -1)]), "InvalidSchedule", "negative"),
    (0, profile(1) | {"chargingSchedule": [
        {"id": 1, "chargingRateUnit": "A", "chargingSchedulePeriod": [
            {"startPeriod": 0, "limit": 6}]}]}, "InvalidSchedule", "K01.FR.40"),
    (0, tx_default(1) | {"chargingSchedule": [
        {"id": 1, "chargingRateUnit": "A", "startSchedule": "2030-01-01T00:00:00Z",
         "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 6}]}]},
     "InvalidSchedule", "K01.FR.41"),
    (0, profile(1, kind="Relative"), "InvalidProfile", "K01.FR.38"),
    (0, profile(1, "TxDefaultProfile", kind="Recurring"), "InvalidProfile", "recurrency"),
    (0, profile(1, validFrom="2030-01-02T00:00:00Z", validTo="2030-01-01T00:00:00Z"),
     "InvalidProfile", "is not before validTo"),
    (0, tx_default(1) | {"transactionId": "t1"}, "InvalidProfile", "transaction profile"),
    (0, profile(1, schedule={"chargingSchedulePeriod": [
        {"startPeriod": 0, "limit": 10, "numberPhases": 1, "phaseToUse": 2}]}),
     "InvalidSchedule", "K01.FR.20"),
    (0, profile(1, schedule={"chargingSchedulePeriod": [
        {"startPeriod": 0, "limit": 10, "numberPhases": 3, "phaseToUse": 2}]}),
     "InvalidSchedule", "K01.FR.19"),
]


@pytest.mark.parametrize(("evse", "cp", "reason", "text"), INVALID,
                         ids=[f"{r}-{t[:20]}" for _, _, r, t in INVALID])
async def test_TC_K_invalid_profiles_are_rejected_with_a_reason(
        csms201, make_agent201, caplog, evse, cp, reason, text):
    agent = await make_agent201()
    link = await online201(agent, csms201)
    with caplog.at_level(logging.WARNING, logger="cp_agent.v201"):
        res = await set_profile(link, evse, cp)
    assert res["status"] == "Rejected"
    assert res["statusInfo"]["reasonCode"] == reason, res
    assert text in res["statusInfo"]["additionalInfo"], res
    assert "rejected" in caplog.text
    assert installed(agent) == [] and agent.storage.profiles_all() == []


async def test_rate_unit_not_offered_is_rejected(csms201, make_agent201):
    agent = await make_agent201(defaults={"SmartChargingCtrlr.RateUnit": "A"})
    link = await online201(agent, csms201)
    res = await set_profile(link, 0, profile(1, unit="W", periods=[(0, 6900)]))
    assert res["status"] == "Rejected"
    assert res["statusInfo"]["reasonCode"] == "UnsupportedRateUnit"
    assert (await set_profile(link, 0, profile(1)))["status"] == "Accepted"
    composite = await link.call("GetCompositeSchedule", {"evseId": 0, "duration": 60,
                                                         "chargingRateUnit": "W"})
    assert composite["status"] == "Rejected"
    assert composite["statusInfo"]["reasonCode"] == "UnsupportedRateUnit"


async def test_watts_are_converted_with_the_evse_phases(csms201, make_agent201):
    agent = await make_agent201()
    link = await online201(agent, csms201)
    await charging201(agent, csms201)
    res = await set_profile(link, 0, profile(1, unit="W", periods=[(0, 6900)]))
    assert res["status"] == "Accepted"
    await eventually(lambda: pilot(agent) == 10, "6900 W on 3 x 230 V as 10 A")


async def test_K01_FR_05_06_same_id_replaces_same_level_with_overlap_is_refused(
        csms201, make_agent201):
    agent = await make_agent201(evses=2)
    link = await online201(agent, csms201)
    assert (await set_profile(link, 0, profile(1, level=1, periods=[(0, 20)])))[
        "status"] == "Accepted"
    res = await set_profile(link, 0, profile(2, level=1, periods=[(0, 16)]))
    assert res["status"] == "Rejected"
    assert res["statusInfo"]["reasonCode"] == "DuplicateProfile"
    assert "profile 1" in res["statusInfo"]["additionalInfo"]
    assert installed(agent) == [1]
    # the same id replaces, whatever changed
    assert (await set_profile(link, 0, profile(1, level=2, periods=[(0, 14)])))[
        "status"] == "Accepted"
    assert [(p.id, p.stack_level) for p in agent.station.charging_profiles.profiles] == [(1, 2)]
    # same purpose and level, validity periods apart: both stay
    later = datetime.now(UTC) + timedelta(days=1)
    first = profile(3, level=3, validTo=later.strftime("%Y-%m-%dT%H:%M:%SZ"))
    second = profile(4, level=3, validFrom=later.strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert (await set_profile(link, 0, first))["status"] == "Accepted"
    assert (await set_profile(link, 0, second))["status"] == "Accepted"
    assert installed(agent) == [1, 3, 4]
    # another EVSE is another place
    assert (await set_profile(link, 1, tx_default(5, level=1)))["status"] == "Accepted"
    assert (await set_profile(link, 2, tx_default(6, level=1)))["status"] == "Accepted"


async def test_K01_FR_52_53_station_and_evse_tx_defaults_need_distinct_levels(
        csms201, make_agent201):
    agent = await make_agent201()
    link = await online201(agent, csms201)
    assert (await set_profile(link, 1, tx_default(1, level=2)))["status"] == "Accepted"
    res = await set_profile(link, 0, tx_default(2, level=2))
    assert res["status"] == "Rejected" and "K01.FR.52" in res["statusInfo"]["additionalInfo"]
    assert res["statusInfo"]["reasonCode"] == "DuplicateProfile"
    assert (await set_profile(link, 0, tx_default(2, level=3)))["status"] == "Accepted"
    res = await set_profile(link, 1, tx_default(3, level=3))
    assert res["status"] == "Rejected" and "K01.FR.53" in res["statusInfo"]["additionalInfo"]


async def test_entries_max_limit_is_enforced(csms201, make_agent201, monkeypatch):
    monkeypatch.setattr(block, "MAX_ENTRIES", 2)
    agent = await make_agent201()
    link = await online201(agent, csms201)
    assert (await set_profile(link, 0, profile(1, level=1)))["status"] == "Accepted"
    assert (await set_profile(link, 0, profile(2, level=2)))["status"] == "Accepted"
    res = await set_profile(link, 0, profile(3, level=3))
    assert res["status"] == "Rejected" and res["statusInfo"]["reasonCode"] == "OutOfStorage"
    assert (await set_profile(link, 0, profile(2, level=4)))["status"] == "Accepted"
    assert installed(agent) == [1, 2]


# ---------------------------------------------------------------- K05 remote start


async def test_TC_K_37_CS_remote_start_with_a_tx_profile(csms201, make_agent201):
    agent = await make_agent201()
    link = await online201(agent, csms201)
    agent.hal.plug(1)
    cp = profile(7, "TxProfile", kind="Relative", periods=[(0, 11)])
    res = await link.call("RequestStartTransaction", {
        "idToken": TOKEN, "remoteStartId": 5, "evseId": 1, "chargingProfile": cp})
    assert res == {"status": "Accepted"}
    started = await csms201.wait_for("TransactionEvent", station_id="CP1",
                                     predicate=lambda p: p["eventType"] == "Started")
    tx_id = started["transactionInfo"]["transactionId"]
    await eventually(lambda: pilot(agent) == 11, "the remote start's profile drives the pilot")
    assert agent.station.evses[1].limit_a == 11
    service = agent.station.charging_profiles
    await eventually(lambda: service.get(7).transaction_id == tx_id,
                     "the station filled in the transactionId (F01.FR.11)")
    res = await link.call("GetChargingProfiles", {"requestId": 9, "chargingProfile": {
        "chargingProfilePurpose": "TxProfile"}})
    assert res["status"] == "Accepted"
    report = await csms201.wait_for("ReportChargingProfiles", station_id="CP1")
    assert report["chargingProfile"][0]["transactionId"] == tx_id
    assert report["evseId"] == 1 and report["chargingLimitSource"] == "CSO"


async def test_K05_remote_start_into_a_running_transaction_names_it(csms201, make_agent201):
    agent = await make_agent201(defaults={"TxCtrlr.TxStartPoint": "EVConnected"})
    link = await online201(agent, csms201)
    agent.hal.plug(1)
    started = await csms201.wait_for("TransactionEvent", station_id="CP1",
                                     predicate=lambda p: p["eventType"] == "Started")
    cp = profile(7, "TxProfile", kind="Relative", periods=[(0, 9)])
    res = await link.call("RequestStartTransaction", {
        "idToken": TOKEN, "remoteStartId": 6, "chargingProfile": cp})
    assert res["status"] == "Accepted"
    tx_id = started["transactionInfo"]["transactionId"]
    assert res["transactionId"] == tx_id
    await eventually(lambda: pilot(agent) == 9, "the profile applies to the running one")
    assert agent.station.charging_profiles.get(7).transaction_id == tx_id


@pytest.mark.parametrize(("cp", "reason"), [
    (tx_default(7), "InvalidProfile"),
    (profile(7, "TxProfile", kind="Relative", transactionId="t1"), "InvalidProfile"),
    (profile(7, "TxProfile", kind="Relative", level=99), "InvalidStackLevel"),
    (profile(7, "TxProfile", kind="Relative", periods=[(3, 10)]), "InvalidSchedule"),
])
async def test_K05_remote_start_with_an_unusable_profile_is_rejected(
        csms201, make_agent201, cp, reason):
    agent = await make_agent201()
    link = await online201(agent, csms201)
    res = await link.call("RequestStartTransaction", {
        "idToken": TOKEN, "remoteStartId": 5, "evseId": 1, "chargingProfile": cp})
    assert res["status"] == "Rejected"
    assert res["statusInfo"]["reasonCode"] == reason
    assert installed(agent) == []
    agent.hal.plug(1)
    await agent.station.quiet()
    assert not agent.station.evses[1].snapshot().authorized, "no session was started"


async def test_K05_profile_of_a_refused_remote_start_is_forgotten(csms201, make_agent201):
    csms201.authorize = lambda token: "Blocked"
    agent = await make_agent201(defaults={"AuthCtrlr.AuthorizeRemoteStart": True})
    link = await online201(agent, csms201)
    cp = profile(7, "TxProfile", kind="Relative", periods=[(0, 9)])
    res = await link.call("RequestStartTransaction", {
        "idToken": TOKEN, "remoteStartId": 5, "evseId": 1, "chargingProfile": cp})
    assert res["status"] == "Accepted"
    await csms201.wait_for("Authorize", station_id="CP1")
    await eventually(lambda: installed(agent) == [], "the profile of the refused start gone")


# ---------------------------------------------------------------- K08 GetCompositeSchedule


async def test_TC_K_43_CS_composite_schedule_of_an_evse_and_the_station(csms201,
                                                                         make_agent201):
    agent = await make_agent201()
    link = await online201(agent, csms201)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=10)
    cp = profile(1, periods=[(0, 20), (310, 10)], start=start)
    assert (await set_profile(link, 0, cp))["status"] == "Accepted"
    res = await link.call("GetCompositeSchedule", {"evseId": 1, "duration": 600})
    assert res["status"] == "Accepted"
    sched = res["schedule"]
    assert sched["evseId"] == 1 and sched["duration"] == 600
    assert sched["chargingRateUnit"] == "A"
    begin = datetime.fromisoformat(sched["scheduleStart"].replace("Z", "+00:00"))
    assert abs((begin - datetime.now(UTC)).total_seconds()) < 5
    change = int((start + timedelta(seconds=310) - begin).total_seconds())
    assert sched["chargingSchedulePeriod"] == [
        {"startPeriod": 0, "limit": 20, "numberPhases": 3},
        {"startPeriod": change, "limit": 10, "numberPhases": 3}]
    watts = await link.call("GetCompositeSchedule", {"evseId": 0, "duration": 600,
                                                     "chargingRateUnit": "W"})
    assert watts["status"] == "Accepted" and watts["schedule"]["evseId"] == 0
    assert [q["limit"] for q in watts["schedule"]["chargingSchedulePeriod"]] == [
        20 * 230 * 3, 10 * 230 * 3]


async def test_K08_composite_is_the_lowest_of_the_profiles_during_a_transaction(
        csms201, make_agent201):
    agent = await make_agent201()
    link = await online201(agent, csms201)
    await charging201(agent, csms201)
    assert (await set_profile(link, 0, profile(1, periods=[(0, 14)])))["status"] == "Accepted"
    assert (await set_profile(link, 1, tx_default(2, limit=10.5)))["status"] == "Accepted"
    res = await link.call("GetCompositeSchedule", {"evseId": 1, "duration": 60})
    assert res["schedule"]["chargingSchedulePeriod"] == [
        {"startPeriod": 0, "limit": 10.5, "numberPhases": 3}]
    await eventually(lambda: pilot(agent) == 10.5, "the pilot follows the same number")


async def test_K08_composite_without_profiles_unknown_evse_and_bad_duration(
        csms201, make_agent201):
    agent = await make_agent201()
    link = await online201(agent, csms201)
    res = await link.call("GetCompositeSchedule", {"evseId": 1, "duration": 60})
    assert res["status"] == "Accepted"
    assert res["schedule"]["chargingSchedulePeriod"] == [
        {"startPeriod": 0, "limit": agent.station.evses[1].max_current_a, "numberPhases": 3}]
    unknown = await link.call("GetCompositeSchedule", {"evseId": 5, "duration": 60})
    assert unknown["status"] == "Rejected"
    assert unknown["statusInfo"]["reasonCode"] == "UnknownEvse"
    zero = await link.call("GetCompositeSchedule", {"evseId": 1, "duration": 0})
    assert zero["status"] == "Rejected" and zero["statusInfo"]["reasonCode"] == "InvalidValue"


# ---------------------------------------------------------------- K09 GetChargingProfiles


async def _four_profiles(link: Any) -> dict[int, dict]:
    sent = {1: (0, profile(1, periods=[(0, 30)])), 2: (0, tx_default(2, level=1)),
            3: (1, tx_default(3, level=2)), 4: (2, tx_default(4, level=3))}
    for evse, cp in sent.values():
        assert (await set_profile(link, evse, cp))["status"] == "Accepted"
    return {pid: cp for pid, (_, cp) in sent.items()}


async def reports(csms: Any, request_id: int, count: int) -> list[dict]:
    await csms.wait_for("ReportChargingProfiles", station_id="CP1", count=count,
                        predicate=lambda p: p["requestId"] == request_id)
    return [p for p in csms.messages("CP1", "ReportChargingProfiles")
            if p["requestId"] == request_id]


@pytest.mark.parametrize(("request_", "expected"), [
    ({}, {(0, "CSO"): [1, 2], (1, "CSO"): [3], (2, "CSO"): [4]}),          # TC_K_31
    ({"evseId": 0}, {(0, "CSO"): [1, 2]}),                                  # TC_K_29
    ({"evseId": 1, "chargingProfile": {"chargingProfilePurpose": "TxDefaultProfile"}},
     {(1, "CSO"): [3]}),                                                    # TC_K_35
    ({"chargingProfile": {"chargingProfileId": [4, 99]}}, {(2, "CSO"): [4]}),
    ({"chargingProfile": {"stackLevel": 1}}, {(0, "CSO"): [2]}),
    ({"chargingProfile": {"chargingLimitSource": ["CSO", "SO"]}},
     {(0, "CSO"): [1, 2], (1, "CSO"): [3], (2, "CSO"): [4]}),
])
async def test_TC_K_get_charging_profiles_reports_by_criteria(
        csms201, make_agent201, request_, expected):
    agent = await make_agent201(evses=2)
    link = await online201(agent, csms201)
    sent = await _four_profiles(link)
    payload = {"requestId": 21, "chargingProfile": {}} | request_
    assert (await link.call("GetChargingProfiles", payload)) == {"status": "Accepted"}
    got = await reports(csms201, 21, len(expected))
    assert [m["tbc"] for m in got] == [True] * (len(got) - 1) + [False]
    assert {(m["evseId"], m["chargingLimitSource"]): [q["id"] for q in m["chargingProfile"]]
            for m in got} == expected
    for message in got:
        for reported in message["chargingProfile"]:
            original = sent[reported["id"]]
            assert reported["chargingSchedule"][0]["id"] == original["chargingSchedule"][0]["id"]
            assert reported["chargingSchedule"][0]["chargingSchedulePeriod"] == \
                original["chargingSchedule"][0]["chargingSchedulePeriod"]
            assert reported["chargingProfilePurpose"] == original["chargingProfilePurpose"]


@pytest.mark.parametrize("criteria", [
    {"stackLevel": 7}, {"chargingLimitSource": ["EMS"]}, {"chargingProfileId": [99]},
    {"chargingProfilePurpose": "TxProfile"}])
async def test_TC_K_get_charging_profiles_without_a_match_is_no_profiles(
        csms201, make_agent201, criteria):
    agent = await make_agent201(evses=2)
    link = await online201(agent, csms201)
    await _four_profiles(link)
    res = await link.call("GetChargingProfiles", {"requestId": 1, "chargingProfile": criteria})
    assert res == {"status": "NoProfiles"}
    await agent.station.quiet()
    assert csms201.messages("CP1", "ReportChargingProfiles") == []


async def test_K09_report_is_split_by_the_declared_limits(csms201, make_agent201):
    agent = await make_agent201(defaults={
        "DeviceDataCtrlr.ItemsPerMessage[ReportChargingProfiles]": 2})
    link = await online201(agent, csms201)
    for level in range(5):
        assert (await set_profile(link, 0, tx_default(level + 1, level=level)))[
            "status"] == "Accepted"
    assert (await link.call("GetChargingProfiles", {"requestId": 4, "chargingProfile": {}})
            )["status"] == "Accepted"
    got = await reports(csms201, 4, 3)
    assert [[q["stackLevel"] for q in m["chargingProfile"]] for m in got] == [[0, 1], [2, 3],
                                                                               [4]]
    assert [m["tbc"] for m in got] == [True, True, False]


async def test_K09_report_split_by_bytes_per_message(csms201, make_agent201):
    agent = await make_agent201(defaults={
        "DeviceDataCtrlr.BytesPerMessage[ReportChargingProfiles]": 400})
    link = await online201(agent, csms201)
    for level in range(3):
        cp = profile(level + 1, "TxDefaultProfile", level=level, kind="Relative",
                     periods=[(i * 600, 10 + i) for i in range(4)])
        assert (await set_profile(link, 0, cp))["status"] == "Accepted"
    assert (await link.call("GetChargingProfiles", {"requestId": 8, "chargingProfile": {}})
            )["status"] == "Accepted"
    got = await reports(csms201, 8, 3)
    assert [len(m["chargingProfile"]) for m in got] == [1, 1, 1]
    assert all(len(json.dumps(m, separators=(",", ":"))) <= 400 for m in got)


async def test_external_constraints_report_their_source_and_cannot_be_touched(
        csms201, make_agent201):
    agent = await make_agent201()
    link = await online201(agent, csms201)
    service = agent.station.charging_profiles
    service.set_external("mqtt", 0, 12.0)  # the energy manager's limit (a local source)
    ems = service.external_profiles[0]
    assert (await set_profile(link, 0, profile(1)))["status"] == "Accepted"
    assert (await link.call("GetChargingProfiles", {"requestId": 2, "chargingProfile": {}})
            )["status"] == "Accepted"
    got = await reports(csms201, 2, 2)
    assert {m["chargingLimitSource"]: [q["id"] for q in m["chargingProfile"]] for m in got} \
        == {"CSO": [1], "EMS": [ems.id]}
    external = next(m for m in got if m["chargingLimitSource"] == "EMS")["chargingProfile"][0]
    assert external["chargingProfilePurpose"] == "ChargingStationExternalConstraints"
    assert external["chargingSchedule"][0]["chargingSchedulePeriod"][0]["limit"] == 12
    only = await link.call("GetChargingProfiles", {"requestId": 3, "chargingProfile": {
        "chargingLimitSource": ["EMS"]}})
    assert only["status"] == "Accepted"
    await reports(csms201, 3, 1)
    # the CSMS can neither replace nor clear it
    res = await set_profile(link, 0, profile(ems.id, level=5))
    assert res["status"] == "Rejected" and res["statusInfo"]["reasonCode"] == "DuplicateProfile"
    res = await link.call("ClearChargingProfile", {"chargingProfileId": ems.id})
    assert res["status"] == "Unknown"
    res = await link.call("ClearChargingProfile", {"chargingProfileCriteria": {
        "chargingProfilePurpose": "ChargingStationExternalConstraints"}})
    assert res["status"] == "Unknown"
    assert (await link.call("ClearChargingProfile", {}))["status"] == "Accepted"
    assert installed(agent) == [] and [p.id for p in service.external_profiles] == [ems.id]


# ---------------------------------------------------------------- K10 ClearChargingProfile


async def test_TC_K_08_CS_clear_without_a_profile_is_unknown(csms201, make_agent201):
    agent = await make_agent201()
    link = await online201(agent, csms201)
    assert (await link.call("ClearChargingProfile", {"chargingProfileId": 1}))["status"] == \
        "Unknown"
    assert (await link.call("ClearChargingProfile", {}))["status"] == "Unknown"


async def test_K10_clear_by_id_lifts_the_limit(csms201, make_agent201):
    agent = await make_agent201()
    link = await online201(agent, csms201)
    await charging201(agent, csms201)
    assert (await set_profile(link, 0, profile(1, periods=[(0, 10)])))["status"] == "Accepted"
    await eventually(lambda: pilot(agent) == 10, "capped")
    res = await link.call("ClearChargingProfile", {"chargingProfileId": 1})
    assert res == {"status": "Accepted"}
    await eventually(lambda: pilot(agent) == agent.station.evses[1].max_current_a,
                     "the cap lifted")
    assert agent.storage.profiles_all() == []


async def test_K10_clear_by_criteria(csms201, make_agent201):
    agent = await make_agent201(evses=2)
    link = await online201(agent, csms201)
    await _four_profiles(link)

    async def clear(**criteria: Any) -> str:
        payload = {"chargingProfileCriteria": criteria} if criteria else {}
        return (await link.call("ClearChargingProfile", payload))["status"]

    assert await clear(evseId=2, chargingProfilePurpose="TxDefaultProfile") == "Accepted"
    assert installed(agent) == [1, 2, 3]
    assert await clear(chargingProfilePurpose="TxDefaultProfile", stackLevel=2) == "Accepted"
    assert installed(agent) == [1, 2]
    assert await clear(chargingProfilePurpose="TxProfile") == "Unknown"
    assert await clear(evseId=0, stackLevel=0) == "Accepted"
    assert installed(agent) == [2]
    assert await clear() == "Accepted"
    assert installed(agent) == [] and agent.storage.profiles_all() == []


# ---------------------------------------------------------------- K06 persistence


async def test_K06_profiles_and_their_schedule_ids_survive_a_restart(csms201, make_agent201):
    agent = await make_agent201()
    link = await online201(agent, csms201)
    assert (await set_profile(link, 0, profile(1, periods=[(0, 9)])))["status"] == "Accepted"
    assert (await set_profile(link, 0, tx_default(2, level=3, limit=14)))["status"] == \
        "Accepted"
    await agent.stop()
    again = await make_agent201()
    link = await online201(again, csms201)
    assert installed(again) == [1, 2]
    await charging201(again, csms201)
    await eventually(lambda: pilot(again) == 9, "the station max still applies")
    res = await link.call("GetChargingProfiles", {"requestId": 5, "chargingProfile": {}})
    assert res["status"] == "Accepted"
    got = await reports(csms201, 5, 1)
    assert [q["chargingSchedule"][0]["id"] for q in got[0]["chargingProfile"]] == [10, 20]


# ---------------------------------------------------------------- the mapping itself


async def test_to_profile_and_back_keep_what_the_csms_sent():
    cp = profile(3, "TxProfile", level=2, kind="Relative", periods=[(0, 7.2), (60, 16)],
                 transactionId="tx-1", validTo="2030-01-01T00:00:00.000Z",
                 schedule={"duration": 3600, "minChargingRate": 6.1})
    cp["chargingSchedule"][0]["chargingSchedulePeriod"][1]["numberPhases"] = 1
    back = from_profile(to_profile(cp, 1))
    assert back == cp


async def test_reason_codes_of_the_problems():
    assert reason_code("EVSE 3 does not exist (2.0.1 K01.FR.28)") == "UnknownEvse"
    assert reason_code("profile 1 has the same purpose and stack level 2 on EVSE 0 and a "
                       "validity period that overlaps (K01.FR.06, K01.FR.39)") == \
        "DuplicateProfile"
    assert reason_code("something nobody foresaw") == "InvalidProfile"
