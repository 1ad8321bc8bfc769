"""OCPP 2.1 smart charging: dynamic profiles (K28), priority charging (K21 / K22) and
LocalGeneration (K27), the real agent against the strict 2.1 test CSMS (every frame checked
against the 2.1 schemas), on the fake clock where time matters.

Names follow the 2.1 conformance cases: TC_K_118_CS (priority, remote), TC_K_119_CS
(priority, local), TC_K_121_CS (dynamic, pull), TC_K_122_CS (dynamic, push), TC_K_123_CS
(dynamic, validations), TC_K_129_CS (PriorityCharging kept over a reboot).  The 2.0.1 K block
runs on 2.1 as well (tests/test_v201_smart_charging.py).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from agent.clock import FakeClock, iso
from tests.conftest import charging201, eventually, online201
from tests.test_timing import rig

pytestmark = pytest.mark.asyncio
SID = "CP1"


def pilot(agent: Any, evse: int = 1) -> float:
    return agent.hal.evses[evse].ev.current_limit


def cp(pid: int, purpose: str = "TxDefaultProfile", *, kind: str = "Relative",
       limit: float = 10, level: int = 0, start: Any = None, **extra: Any) -> dict:
    sched: dict[str, Any] = {"id": pid, "chargingRateUnit": "A",
                             "chargingSchedulePeriod": [{"startPeriod": 0, "limit": limit}]}
    if start is not None:
        sched["startSchedule"] = iso(start)
    sched.update(extra.pop("schedule", {}))
    return {"id": pid, "stackLevel": level, "chargingProfilePurpose": purpose,
            "chargingProfileKind": kind, "chargingSchedule": [sched], **extra}


async def install(link: Any, evse: int, profile: dict, status: str = "Accepted") -> dict:
    res = await link.call("SetChargingProfile", {"evseId": evse, "chargingProfile": profile})
    assert res["status"] == status, res
    return res


async def session(agent: Any, csms: Any) -> tuple[Any, str]:
    link = await online201(agent, csms)
    started = await charging201(agent, csms)
    return link, started["transactionInfo"]["transactionId"]


# ---------------------------------------------------------------------- K28 dynamic


async def test_TC_K_122_CS_dynamic_updates_pushed_move_the_pilot_at_once(short_dir):
    async with rig("2.1", short_dir) as (csms, make):
        agent = await make()
        link, _ = await session(agent, csms)
        await install(link, 1, cp(5, kind="Dynamic", limit=16))
        await eventually(lambda: pilot(agent) == 16, "the dynamic limit")
        res = await link.call("UpdateDynamicSchedule", {
            "chargingProfileId": 5, "scheduleUpdate": {"limit": 9.5}})
        assert res == {"status": "Accepted"}
        # At once: the fake clock does not move.
        await eventually(lambda: pilot(agent) == 9.5, "the updated limit")
        stored = agent.station.charging_profiles.get(5)
        assert stored.dyn_update_time == agent.clock.now()  # K28.FR.09


async def test_TC_K_123_CS_dynamic_updates_and_profiles_that_are_refused(short_dir):
    async with rig("2.1", short_dir) as (csms, make):
        agent = await make()
        link, _ = await session(agent, csms)
        await install(link, 1, cp(5, kind="Dynamic", limit=16))
        await install(link, 1, cp(6, level=1))

        async def update(pid: int, upd: dict) -> dict:
            return await link.call("UpdateDynamicSchedule",
                                   {"chargingProfileId": pid, "scheduleUpdate": upd})

        for pid, upd, code in ((99, {"limit": 8}, "InvalidProfileId"),
                               (6, {"limit": 8}, "InvalidProfile"),
                               (5, {"setpoint": 8}, "UnsupportedParam"),
                               (5, {"dischargeLimit": -3, "limit": 8}, "UnsupportedParam"),
                               (5, {}, "MissingParam"),
                               (5, {"limit": -1}, "InvalidValue")):
            res = await update(pid, upd)
            assert res["status"] == "Rejected", (pid, upd, res)
            assert res["statusInfo"]["reasonCode"] == code, (pid, upd, res)
        assert agent.station.charging_profiles.get(5).schedules[0].periods[0].limit == 16
        # Profiles 2.1 refuses: two periods, dynUpdateInterval on a non-dynamic one.
        two = cp(7, kind="Dynamic", level=2, schedule={"chargingSchedulePeriod": [
            {"startPeriod": 0, "limit": 8}, {"startPeriod": 60, "limit": 6}]})
        res = await install(link, 1, two, "Rejected")
        assert res["statusInfo"]["reasonCode"] == "InvalidSchedule"
        res = await install(link, 1, cp(8, level=3, dynUpdateInterval=30), "Rejected")
        assert res["statusInfo"]["reasonCode"] == "InvalidProfile"
        assert "K01.FR.122" in res["statusInfo"]["additionalInfo"]


async def test_TC_K_121_CS_dynamic_profile_pulled_every_interval(short_dir):
    answers = iter([8, 11])
    async with rig("2.1", short_dir) as (csms, make):
        csms.overrides["PullDynamicScheduleUpdate"] = lambda link, p: {
            "status": "Accepted", "scheduleUpdate": {"limit": next(answers)}}
        agent = await make()
        clock: FakeClock = agent.clock
        link, _ = await session(agent, csms)
        await install(link, 1, cp(5, kind="Dynamic", limit=16, dynUpdateInterval=60))
        await eventually(lambda: pilot(agent) == 16, "the installed limit")
        await clock.advance(59)
        await agent.station.quiet()
        assert csms.messages(SID, "PullDynamicScheduleUpdate") == []  # not before its time
        await clock.advance(1)
        pull = await csms.wait_for("PullDynamicScheduleUpdate", station_id=SID)
        assert pull == {"chargingProfileId": 5}
        await eventually(lambda: pilot(agent) == 8, "the pulled limit")
        await clock.advance(60)
        await csms.wait_for("PullDynamicScheduleUpdate", station_id=SID, count=2)
        await eventually(lambda: pilot(agent) == 11, "the second pulled limit")
        # Reported as installed, with what 2.1 adds (K09).
        res = await link.call("GetChargingProfiles", {"requestId": 4, "chargingProfile": {
            "chargingProfileId": [5]}})
        assert res["status"] == "Accepted"
        report = await csms.wait_for("ReportChargingProfiles", station_id=SID)
        (profile,) = report["chargingProfile"]
        assert profile["chargingProfileKind"] == "Dynamic"
        assert profile["dynUpdateInterval"] == 60
        assert profile["chargingSchedule"][0]["chargingSchedulePeriod"][0]["limit"] == 11
        assert profile["dynUpdateTime"] == iso(agent.station.charging_profiles.get(5)
                                               .dyn_update_time)


async def test_dynamic_profile_not_updated_within_its_duration_gives_way(short_dir):
    """K28.FR.13-.15: past dynUpdateTime + duration the next valid profile applies, until an
    update makes the dynamic one valid again; a refused pull keeps nothing alive."""
    async with rig("2.1", short_dir) as (csms, make):
        csms.overrides["PullDynamicScheduleUpdate"] = lambda link, p: {"status": "Rejected"}
        agent = await make()
        clock: FakeClock = agent.clock
        link, _ = await session(agent, csms)
        await install(link, 1, cp(1, limit=12))
        await install(link, 1, cp(5, kind="Dynamic", limit=8, level=1, dynUpdateInterval=30,
                                  schedule={"duration": 120}))
        await eventually(lambda: pilot(agent) == 8, "the dynamic limit")
        await clock.advance(119)
        await agent.station.quiet()
        assert pilot(agent) == 8
        assert len(csms.messages(SID, "PullDynamicScheduleUpdate")) >= 1  # refused, so stale
        await clock.advance(1.5)
        await eventually(lambda: pilot(agent) == 12, "the TxDefault below it")
        res = await link.call("UpdateDynamicSchedule", {"chargingProfileId": 5,
                                                        "scheduleUpdate": {"limit": 7}})
        assert res == {"status": "Accepted"}
        await eventually(lambda: pilot(agent) == 7, "valid again after an update")


# ---------------------------------------------------------------------- K21 / K22 priority


async def test_TC_K_118_CS_priority_charging_requested_by_the_csms(short_dir):
    async with rig("2.1", short_dir) as (csms, make):
        agent = await make()
        link, tx = await session(agent, csms)
        await install(link, 1, cp(1, limit=8))
        await eventually(lambda: pilot(agent) == 8, "the default")
        res = await link.call("UsePriorityCharging", {"transactionId": tx, "activate": True})
        assert res["status"] == "NoProfile"
        await install(link, 0, cp(2, "PriorityCharging", limit=24))
        assert pilot(agent) == 8  # installed, not used
        res = await link.call("UsePriorityCharging", {"transactionId": tx, "activate": True})
        assert res == {"status": "Accepted"}
        await eventually(lambda: pilot(agent) == 24, "the priority limit")
        note = await csms.wait_for("NotifyPriorityCharging", station_id=SID)
        assert note == {"transactionId": tx, "activated": True}
        comp = await link.call("GetCompositeSchedule", {"evseId": 1, "duration": 60})
        assert comp["schedule"]["chargingSchedulePeriod"][0]["limit"] == 24
        res = await link.call("UsePriorityCharging", {"transactionId": tx, "activate": False})
        assert res == {"status": "Accepted"}
        await eventually(lambda: pilot(agent) == 8, "back to the default")
        note = await csms.wait_for("NotifyPriorityCharging", station_id=SID, count=2)
        res = await link.call("UsePriorityCharging", {"transactionId": "nope", "activate": True})
        assert res["status"] == "Rejected"
        assert res["statusInfo"]["reasonCode"] == "TxNotFound"
        # A priority profile has no duration (K01.FR.70), and reports with its purpose.
        res = await install(link, 0, cp(3, "PriorityCharging", level=1,
                                        schedule={"duration": 600}), "Rejected")
        assert res["statusInfo"]["reasonCode"] == "InvalidSchedule"
        res = await link.call("GetChargingProfiles", {"requestId": 8, "chargingProfile": {
            "chargingProfilePurpose": "PriorityCharging"}})
        assert res["status"] == "Accepted"
        report = await csms.wait_for("ReportChargingProfiles", station_id=SID)
        assert [p["id"] for p in report["chargingProfile"]] == [2]


async def test_TC_K_119_CS_priority_asked_at_the_station_and_ended_by_clearing(short_dir):
    async with rig("2.1", short_dir) as (csms, make):
        agent = await make()
        link, tx = await session(agent, csms)
        await install(link, 1, cp(1, limit=8))
        await install(link, 1, cp(2, "PriorityCharging", limit=20))
        answer = await agent.handle_control({"cmd": "priority",
                                             "args": {"evse": 1, "on": True}})
        assert answer["priority"] == "Accepted"
        await eventually(lambda: pilot(agent) == 20, "the priority limit")
        note = await csms.wait_for("NotifyPriorityCharging", station_id=SID)
        assert note == {"transactionId": tx, "activated": True}
        res = await link.call("ClearChargingProfile", {"chargingProfileCriteria": {
            "chargingProfilePurpose": "PriorityCharging"}})
        assert res["status"] == "Accepted"
        await eventually(lambda: pilot(agent) == 8, "the default again")
        note = await csms.wait_for("NotifyPriorityCharging", station_id=SID, count=2)
        assert note == {"transactionId": tx, "activated": False}
        answer = await agent.handle_control({"cmd": "priority",
                                             "args": {"evse": 1, "on": True}})
        assert answer["priority"] == "NoProfile"


async def test_TC_K_129_CS_priority_profile_kept_over_a_reboot(short_dir):
    async with rig("2.1", short_dir) as (csms, make):
        agent = await make()
        link = await online201(agent, csms)
        await install(link, 0, cp(2, "PriorityCharging", limit=20))
        await install(link, 1, cp(3, "LocalGeneration", kind="Absolute", limit=4,
                                  start=agent.clock.now() - timedelta(minutes=1)))
        await agent.stop()
        again = await make()
        await online201(again, csms)
        kept = {p.id: str(p.purpose) for p in again.station.charging_profiles.profiles}
        assert kept == {2: "PriorityCharging", 3: "LocalGeneration"}


# ---------------------------------------------------------------------- K27 local generation


async def test_local_generation_adds_to_the_limit_and_the_variables_say_what_is_built(
        short_dir):
    async with rig("2.1", short_dir) as (csms, make):
        agent = await make()
        link, _ = await session(agent, csms)
        await install(link, 1, cp(1, limit=8))
        await install(link, 1, cp(3, "LocalGeneration", kind="Absolute", limit=5,
                                  start=agent.clock.now() - timedelta(minutes=1)))
        await eventually(lambda: pilot(agent) == 13, "8 A plus 5 A generated on site")
        comp = await link.call("GetCompositeSchedule", {"evseId": 1, "duration": 60})
        assert comp["schedule"]["chargingSchedulePeriod"][0]["limit"] == 13
        res = await link.call("GetVariables", {"getVariableData": [
            {"component": {"name": "SmartChargingCtrlr"}, "variable": {"name": name}}
            for name in ("SupportsDynamicProfiles", "SupportedAdditionalPurposes",
                         "SupportsRandomizedDelay")]})
        values = [r["attributeValue"] for r in res["getVariableResult"]]
        assert values == ["true", "PriorityCharging,LocalGeneration", "false"]


async def test_ctl_priority_command_line_and_no_transaction(short_dir):
    from agent.control import _build_parser, _request_args

    ns = _build_parser().parse_args(["priority", "1", "off"])
    assert _request_args(ns) == {"evse": 1, "on": False}
    async with rig("2.1", short_dir) as (csms, make):
        agent = await make()
        await online201(agent, csms)
        answer = await agent.handle_control({"cmd": "priority",
                                             "args": {"evse": 1, "on": True}})
        assert answer["priority"] == "Rejected"  # no transaction to give priority to
        with pytest.raises(ValueError, match="priority needs on"):
            await agent.handle_control({"cmd": "priority", "args": {"evse": 1}})
