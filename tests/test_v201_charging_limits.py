"""2.0.1 K11-K14, external charging limits: the energy manager's limits told to the CSMS.

The station's external limits are load management's (limit source ``site``) and the MQTT
energy manager's (``mqtt``); both reach the 2.0.1 block through the core's
``ChargingProfiles.set_external``, which the tests call directly where the MQTT broker would
(the bridge itself is tested against Mosquitto in test_mqtt.py).  Checked: NotifyChargingLimit
for a new limit and a significant change only (K11.FR.02, K12.FR.02), with the schedule when
NotifyChargingLimitWithSchedules is set (K11.FR.03), ClearedChargingLimit (K13.FR.02),
TransactionEvent ChargingRateChanged (K11.FR.04, K13.FR.03), updates held at least
REPORT_INTERVAL_S apart, GetCompositeSchedule showing the external limit (K11.FR.06), and
1.6 unaffected.  The part 6 test cases in the spec folder have no K11-K14 case to name these
after; they are named after the requirements.
"""

from __future__ import annotations

from typing import Any

import pytest

from agent.ocpp.v201.charging_limits import REPORT_INTERVAL_S, ChargingLimits, significant
from tests.conftest import (
    VERSIONS_201_PLUS,
    charging201,
    eventually,
    online,
    online201,
    tx_events,
    version_rig,
)

SID = "CP1"


def notifies(csms: Any) -> list[dict]:
    return csms.messages(SID, "NotifyChargingLimit")


def block(agent: Any) -> ChargingLimits:
    return next(agent.adapters[v] for v in ("2.0.1", "2.1") if v in agent.adapters).block(
        ChargingLimits)


async def looked(agent: Any) -> None:
    """Until the reporter has looked at what changed last (it runs after every change)."""
    before = block(agent).passes
    await eventually(lambda: block(agent).passes > before, "the reporter looked")


def rate_changes(csms: Any) -> list[dict]:
    return tx_events(csms, SID, eventType="Updated", triggerReason="ChargingRateChanged")


def test_significance_is_relative_to_the_value_told():
    assert not significant(16, 15.5, 10)
    assert significant(16, 14, 10)
    assert not significant(10, 11, 10)  # exactly 10 %: not more than
    assert significant(0, 1, 10) and not significant(0, 0, 10)


@pytest.mark.parametrize("v2", VERSIONS_201_PLUS)
async def test_K11_K13_limit_notified_on_significant_changes_rate_and_clear(v2, short_dir):
    async with version_rig(v2, short_dir, fake_clock=True) as (csms, make):
        agent = await make()
        link = await online201(agent, csms)
        clock = agent.clock
        service = agent.station.charging_profiles
        evse = agent.station.evses[1]
        await charging201(agent, csms)
        assert evse.limit_a == 32

        # the energy manager limits EVSE 1 to 16 A (the bridge sets the source, then tells)
        await evse.set_limit("mqtt", 16)
        service.set_external("mqtt", 1, 16)
        first = await csms.wait_for("NotifyChargingLimit", station_id=SID)
        assert first == {"evseId": 1, "chargingLimit": {"chargingLimitSource": "EMS",
                                                        "isGridCritical": False}}
        await eventually(lambda: len(rate_changes(csms)) == 1, "ChargingRateChanged (K11.FR.04)")

        # 15.5 A is 3 % less than what the CSMS was told: not significant, not told
        await evse.set_limit("mqtt", 15.5)
        service.set_external("mqtt", 1, 15.5)
        await looked(agent)
        assert len(notifies(csms)) == 1 and len(rate_changes(csms)) == 1

        # with schedules asked for, 10 A (37 % less) is told with its schedule
        res = await link.call("SetVariables", {"setVariableData": [{
            "component": {"name": "SmartChargingCtrlr"},
            "variable": {"name": "NotifyChargingLimitWithSchedules"},
            "attributeValue": "true"}]})
        assert res["setVariableResult"][0]["attributeStatus"] == "Accepted"
        service.set_external("mqtt", 1, 10)
        told = await csms.wait_for("NotifyChargingLimit", station_id=SID, count=2)
        (schedule,) = told["chargingSchedule"]
        assert schedule["chargingRateUnit"] == "A"
        assert schedule["chargingSchedulePeriod"] == [{"startPeriod": 0, "limit": 10}]

        # another update within REPORT_INTERVAL_S waits, and then tells the value of then
        service.set_external("mqtt", 1, 6)
        await looked(agent)
        assert len(notifies(csms)) == 2
        service.set_external("mqtt", 1, 7)
        await clock.advance(REPORT_INTERVAL_S)
        third = await csms.wait_for("NotifyChargingLimit", station_id=SID, count=3)
        assert third["chargingSchedule"][0]["chargingSchedulePeriod"][0]["limit"] == 7

        # K13: the limit goes: ClearedChargingLimit, and the rate back up is a rate change
        await evse.set_limit("mqtt", None)
        service.set_external("mqtt", 1, None)
        cleared = await csms.wait_for("ClearedChargingLimit", station_id=SID)
        assert cleared == {"chargingLimitSource": "EMS", "evseId": 1}
        await clock.advance(REPORT_INTERVAL_S)
        await eventually(lambda: len(rate_changes(csms)) == 2, "ChargingRateChanged (K13.FR.03)")
        assert len(notifies(csms)) == 3


@pytest.mark.parametrize("v2", VERSIONS_201_PLUS)
async def test_K12_load_management_limits_are_external_constraints(v2, short_dir):
    site = "site: {max_current_a: 20}"
    async with version_rig(v2, short_dir, extra=site) as (csms, make):
        agent = await make()
        link = await online201(agent, csms)
        # the connection's limit for the whole station: no evseId, critical for the grid
        station = await csms.wait_for("NotifyChargingLimit", station_id=SID,
                                      predicate=lambda p: "evseId" not in p)
        assert station["chargingLimit"] == {"chargingLimitSource": "EMS", "isGridCritical": True}
        await charging201(agent, csms)
        await csms.wait_for("NotifyChargingLimit", station_id=SID,
                            predicate=lambda p: p.get("evseId") == 1)
        # K11.FR.06: the composite schedule includes the external limit
        res = await link.call("GetCompositeSchedule", {"evseId": 1, "duration": 60})
        assert res["status"] == "Accepted"
        assert res["schedule"]["chargingSchedulePeriod"][0]["limit"] == 20
        (profile,) = [p for p in agent.station.charging_profiles.external_profiles
                      if p.evse_id == 1]
        assert profile.purpose == "ExternalConstraints"
        assert profile.charging_limit_source == "EMS"
        # not a profile of the state file: it lives as long as load management says so
        assert all(pid != profile.id for pid, _ in agent.storage.profiles_all())
        agent.hal.unplug(1)
        await csms.wait_for("ClearedChargingLimit", station_id=SID,
                            predicate=lambda p: p.get("evseId") == 1)


@pytest.mark.parametrize("v2", VERSIONS_201_PLUS)
async def test_K11_variables_are_declared(v2, short_dir):
    async with version_rig(v2, short_dir) as (csms, make):
        agent = await make()
        link = await online201(agent, csms)
        res = await link.call("GetVariables", {"getVariableData": [
            {"component": {"name": "SmartChargingCtrlr"}, "variable": {"name": name}}
            for name in ("LimitChangeSignificance", "NotifyChargingLimitWithSchedules",
                         "ExternalControlSignalsEnabled")]})
        values = {r["variable"]["name"]: (r["attributeStatus"], r.get("attributeValue"))
                  for r in res["getVariableResult"]}
        assert values == {"LimitChangeSignificance": ("Accepted", "10"),
                          "NotifyChargingLimitWithSchedules": ("Accepted", "false"),
                          "ExternalControlSignalsEnabled": ("Accepted", "true")}


@pytest.mark.parametrize("version", ["1.6"])
async def test_external_limits_leave_1_6_alone(version, short_dir):
    async with version_rig(version, short_dir) as (csms, make):
        agent = await make()
        link = await online(agent, csms)
        agent.station.charging_profiles.set_external("mqtt", 1, 10)
        res = await link.call("GetCompositeSchedule", {"connectorId": 1, "duration": 60})
        # 1.6 has no ExternalConstraints: its composite is the CSMS's (here: the rating)
        assert res["chargingSchedule"]["chargingSchedulePeriod"][0]["limit"] == 32
