"""OCPP 2.0.1 block B (provisioning) and the device model, against the strict test CSMS.

Named after the conformance test cases of OCPP-2.0.1_part6_test_cases.txt where one applies.
The csms201 fixture fails every test on any schema or protocol violation by the station.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from agent.core.model import Token
from agent.ocpp.v201.provisioning import Provisioning
from tests.conftest import charging201, eventually, on_versions_201_plus, online201, tx_events

pytestmark = pytest.mark.asyncio
# Every test here applies to 2.1 as well (its csms201 / make_agent201 speak each).
v2 = on_versions_201_plus()


def gv(component: str, variable: str, attr: str | None = None, **kw) -> dict:
    item: dict = {"component": {"name": component, **kw.get("comp", {})},
                  "variable": {"name": variable, **kw.get("var", {})}}
    if attr is not None:
        item["attributeType"] = attr
    return item


def sv(component: str, variable: str, value: str, attr: str | None = None, **kw) -> dict:
    return {**gv(component, variable, attr, **kw), "attributeValue": value}


async def get_one(link, component: str, variable: str, attr: str | None = None, **kw) -> dict:
    res = await link.call("GetVariables", {"getVariableData": [
        gv(component, variable, attr, **kw)]})
    return res["getVariableResult"][0]


async def set_one(link, component: str, variable: str, value: str, attr: str | None = None,
                  **kw) -> dict:
    res = await link.call("SetVariables", {"setVariableData": [
        sv(component, variable, value, attr, **kw)]})
    return res["setVariableResult"][0]


async def report(csms, link, request: dict, action: str = "GetBaseReport") -> list[dict]:
    """Ask for a report; return every NotifyReport of it, checking seqNo and tbc."""
    before = len(csms.messages("CP1", "NotifyReport"))
    res = await link.call(action, request)
    assert res["status"] == "Accepted", res
    last = await csms.wait_for("NotifyReport", station_id="CP1", timeout=5,
                               predicate=lambda p: p["requestId"] == request["requestId"]
                               and not p.get("tbc", False))
    parts = [p for p in csms.messages("CP1", "NotifyReport")[before:]
             if p["requestId"] == request["requestId"]]
    assert parts[-1] is last or parts[-1] == last
    assert [p["seqNo"] for p in parts] == list(range(len(parts)))
    assert all(p.get("tbc") is True for p in parts[:-1])
    return parts


def entries(parts: list[dict]) -> dict[tuple, dict]:
    out = {}
    for p in parts:
        for e in p.get("reportData", []):
            comp = e["component"]
            key = (comp["name"], comp.get("evse", {}).get("id"), e["variable"]["name"],
                   e["variable"].get("instance"))
            out[key] = e
    return out


# ---------------------------------------------------------------- B01-B04 boot


async def test_TC_B_01_CS_cold_boot_accepted(csms201, make_agent201):
    agent = await make_agent201(evses=2)
    await online201(agent, csms201)
    boot = csms201.messages("CP1", "BootNotification")[0]
    assert boot["reason"] == "PowerUp"
    assert boot["chargingStation"] == {"model": "cp-agent-mock", "vendorName": "cp-agent",
                                       "firmwareVersion": boot["chargingStation"][
                                           "firmwareVersion"]}
    statuses = csms201.messages("CP1", "StatusNotification")
    assert {(s["evseId"], s["connectorId"], s["connectorStatus"]) for s in statuses} == {
        (1, 1, "Available"), (2, 1, "Available")}
    security = await csms201.wait_for("SecurityEventNotification", station_id="CP1")
    assert security["type"] == "StartupOfTheDevice"
    assert agent.settings["HeartbeatInterval"] == csms201.heartbeat_interval


async def test_TC_B_02_CS_pending_allows_configuration_and_triggered_boot(csms201,
                                                                         make_agent201):
    csms201.boot_status = "Pending"
    csms201.boot_interval = 300
    agent = await make_agent201()
    await csms201.wait_for("BootNotification", station_id="CP1")
    link = await csms201.wait_station("CP1")
    assert (await set_one(link, "OCPPCommCtrlr", "OfflineThreshold", "300"))[
        "attributeStatus"] == "Accepted"
    got = await get_one(link, "OCPPCommCtrlr", "OfflineThreshold")
    assert (got["attributeStatus"], got["attributeValue"]) == ("Accepted", "300")
    parts = await report(csms201, link, {"requestId": 7, "reportBase": "FullInventory"})
    assert parts
    start = await link.call("RequestStartTransaction", {
        "idToken": {"idToken": "X", "type": "ISO14443"}, "remoteStartId": 1})
    assert start["status"] == "Rejected"
    # TxBeforeAcceptedEnabled is false: not even a card the cache knows starts a session.
    agent.storage.auth_cache_put("CACHED", {"status": "Accepted"}, None)
    agent.hal.plug(1)
    assert await agent.station.present_token(Token("CACHED")) == "rejected"
    csms201.boot_status = "Accepted"
    res = await link.call("TriggerMessage", {"requestedMessage": "BootNotification"})
    assert res["status"] == "Accepted"
    boot = await csms201.wait_for("BootNotification", station_id="CP1", count=2, timeout=5)
    assert boot["reason"] == "Triggered"
    await online201(agent, csms201)


async def test_TC_B_30_CS_requests_while_rejected_get_security_error(csms201, make_agent201):
    from agent.testing.csms import CsmsCallError

    csms201.boot_status = "Rejected"
    csms201.boot_interval = 300
    await make_agent201()
    await csms201.wait_for("BootNotification", station_id="CP1")
    link = await csms201.wait_station("CP1")
    with pytest.raises(CsmsCallError) as exc:
        await link.call("GetBaseReport", {"requestId": 1, "reportBase": "FullInventory"})
    assert exc.value.code == "SecurityError"


# ---------------------------------------------------------------- B06 GetVariables


async def test_TC_B_06_07_CS_get_variables_single_and_multiple(csms201, make_agent201):
    agent = await make_agent201()
    link = await online201(agent, csms201)
    await set_one(link, "OCPPCommCtrlr", "OfflineThreshold", "300")
    res = await link.call("GetVariables", {"getVariableData": [
        gv("OCPPCommCtrlr", "OfflineThreshold", "Actual"),
        gv("AuthCtrlr", "LocalAuthorizeOffline", "Actual")]})
    results = res["getVariableResult"]
    assert [(r["attributeStatus"], r["attributeType"], r["attributeValue"]) for r in results] \
        == [("Accepted", "Actual", "300"), ("Accepted", "Actual", "true")]
    assert results[0]["variable"] == {"name": "OfflineThreshold"}


@pytest.mark.parametrize("item, status", [
    (gv("UnknownComponent", "OfflineThreshold"), "UnknownComponent"),  # TC_B_32_CS
    (gv("OCPPCommCtrlr", "UnknownVariable"), "UnknownVariable"),  # TC_B_33_CS
    (gv("OCPPCommCtrlr", "OfflineThreshold", "Target"), "NotSupportedAttributeType"),  # B_34
    (gv("EVSE", "Power", comp={"evse": {"id": 9}}), "UnknownComponent"),
    (gv("SecurityCtrlr", "BasicAuthPassword"), "Rejected"),  # write-only
    (gv("EVSE", "Power", "MaxSet", comp={"evse": {"id": 1}}), "Accepted"),
])
async def test_TC_B_32_33_34_CS_get_variables_every_result_status(csms201, make_agent201,
                                                                  item, status):
    agent = await make_agent201()
    link = await online201(agent, csms201)
    res = (await link.call("GetVariables", {"getVariableData": [item]}))["getVariableResult"][0]
    assert res["attributeStatus"] == status
    assert res["component"] == item["component"] and res["variable"] == item["variable"]
    if status == "Accepted":
        assert float(res["attributeValue"]) == 32 * 230 * 3  # MaxSet of EVSE.Power


async def test_TC_B_08_CS_get_variables_limited_to_items_per_message(csms201, make_agent201):
    agent = await make_agent201(defaults={"DeviceDataCtrlr.ItemsPerMessage[GetVariables]": 2})
    link = await online201(agent, csms201)
    limit = await get_one(link, "DeviceDataCtrlr", "ItemsPerMessage",
                          var={"instance": "GetVariables"})
    assert limit["attributeValue"] == "2"
    res = await link.call("GetVariables", {"getVariableData": [
        gv("OCPPCommCtrlr", "HeartbeatInterval"), gv("TxCtrlr", "EVConnectionTimeOut"),
        gv("OCPPCommCtrlr", "OfflineThreshold")]})
    statuses = [r["attributeStatus"] for r in res["getVariableResult"]]
    assert statuses == ["Accepted", "Accepted", "Rejected"]
    assert res["getVariableResult"][2]["attributeStatusInfo"]["reasonCode"] == "TooManyElements"


# ---------------------------------------------------------------- B05 SetVariables


async def test_TC_B_09_10_CS_set_variables_persist_and_apply(csms201, make_agent201):
    agent = await make_agent201()
    link = await online201(agent, csms201)
    res = await link.call("SetVariables", {"setVariableData": [
        sv("OCPPCommCtrlr", "OfflineThreshold", "300", "Actual"),
        sv("OCPPCommCtrlr", "HeartbeatInterval", "1")]})
    assert [r["attributeStatus"] for r in res["setVariableResult"]] == ["Accepted", "Accepted"]
    assert res["setVariableResult"][0]["attributeType"] == "Actual"
    await csms201.wait_for("Heartbeat", station_id="CP1", timeout=5)  # applied at once
    # The same setting as 1.6's HeartbeatInterval key: one value, whichever protocol set it.
    assert agent.settings["HeartbeatInterval"] == 1
    await agent.stop()
    csms201.heartbeat_interval = 0  # the boot answer does not override it
    again = await make_agent201()
    link = await online201(again, csms201)
    assert (await get_one(link, "OCPPCommCtrlr", "OfflineThreshold"))["attributeValue"] == "300"
    assert (await get_one(link, "OCPPCommCtrlr", "HeartbeatInterval"))["attributeValue"] == "1"


@pytest.mark.parametrize("item, status, reason", [
    (sv("UnknownComponent", "OfflineThreshold", "1"), "UnknownComponent", None),  # TC_B_35
    (sv("OCPPCommCtrlr", "UnknownVariable", "1"), "UnknownVariable", None),  # TC_B_36
    (sv("OCPPCommCtrlr", "OfflineThreshold", "1", "Target"), "NotSupportedAttributeType",
     None),  # TC_B_37
    (sv("OCPPCommCtrlr", "MessageTimeout", "10", var={"instance": "Default"}), "Rejected",
     "ReadOnly"),  # TC_B_39
    (sv("OCPPCommCtrlr", "NetworkConfigurationPriority", "2,1"), "RebootRequired", None),
    (sv("TxCtrlr", "TxStartPoint", "ParkingBayOccupancy"), "Rejected", "InvalidValue"),
    (sv("TxCtrlr", "TxStopPoint", ""), "Rejected", "InvalidValue"),
    (sv("SampledDataCtrlr", "TxUpdatedMeasurands", "Voltage,Temperature"), "Rejected",
     "InvalidValue"),  # 2.0.1 has no Temperature measurand
    (sv("SecurityCtrlr", "BasicAuthPassword", "short"), "Rejected", "InvalidValue"),
])
async def test_TC_B_35_36_37_39_CS_set_variables_every_result_status(
        csms201, make_agent201, item, status, reason):
    agent = await make_agent201()
    link = await online201(agent, csms201)
    res = (await link.call("SetVariables", {"setVariableData": [item]}))["setVariableResult"][0]
    assert res["attributeStatus"] == status
    assert res["component"] == item["component"] and res["variable"] == item["variable"]
    if reason is not None:
        assert res["attributeStatusInfo"]["reasonCode"] == reason


@pytest.mark.parametrize("value", ["1", "1.1", "true", "2030-01-01T00:00:00Z", "abc"])
async def test_TC_B_11_CS_set_variables_invalidly_formatted_values(csms201, make_agent201,
                                                                   value):
    agent = await make_agent201()
    link = await online201(agent, csms201)
    expected = {
        ("OCPPCommCtrlr", "OfflineThreshold"): value == "1",
        ("SmartChargingCtrlr", "LimitChangeSignificance"): value in ("1", "1.1"),
        ("AuthCtrlr", "AuthorizeRemoteStart"): value == "true",
        ("ClockCtrlr", "NextTimeOffsetTransitionDateTime"): value.startswith("2030"),
    }
    for (component, variable), ok in expected.items():
        res = await set_one(link, component, variable, value)
        assert res["attributeStatus"] == ("Accepted" if ok else "Rejected"), (variable, value)
        if not ok:
            assert res["attributeStatusInfo"]["reasonCode"] == "InvalidValue"


async def test_1_6_key_and_2_0_1_variable_are_one_setting(csms201, make_agent201):
    agent = await make_agent201(defaults={"MeterValueSampleInterval": 42})
    link = await online201(agent, csms201)
    got = await get_one(link, "SampledDataCtrlr", "TxUpdatedInterval")
    assert got["attributeValue"] == "42"
    await set_one(link, "TxCtrlr", "EVConnectionTimeOut", "77")
    assert agent.settings["ConnectionTimeOut"] == 77
    assert agent.storage.get_setting("setting.ConnectionTimeOut") == "77"


async def test_basic_auth_password_set_by_csms_is_used_and_reported(csms201, make_agent201):
    csms201.passwords = {"CP1": "first-password-0001"}
    agent = await make_agent201(profile=1, password="first-password-0001")
    link = await online201(agent, csms201)
    seen: list = []
    agent.station.security_events.listeners.append(seen.append)
    # A01.FR.03: the CSMS accepts only the new password once it sent it.
    csms201.passwords = {"CP1": "0123456789abcdefXYZ"}
    res = await set_one(link, "SecurityCtrlr", "BasicAuthPassword", "0123456789abcdefXYZ")
    assert res["attributeStatus"] == "Accepted"
    # Not critical (appendix 1): the security log has it, it is not pushed.
    assert any(e.kind == "ReconfigurationOfSecurityParameters" and "BasicAuthPassword" in e.info
               for e in seen)
    # The station reconnects at once with the new password (TC_A_09_CS).
    await eventually(lambda: agent.link.connects == 2 and agent.link.connected.is_set(),
                     "reconnected with the new password")
    assert agent.link.last_error is None


# ---------------------------------------------------------------- B07/B08 reports


async def test_TC_B_12_CS_configuration_inventory_reports_writable_variables(
        csms201, make_agent201):
    agent = await make_agent201()
    link = await online201(agent, csms201)
    found = entries(await report(csms201, link, {"requestId": 3,
                                                 "reportBase": "ConfigurationInventory"}))
    assert found, "something to configure"
    for e in found.values():
        attribute = e["variableAttribute"][0]
        assert attribute["mutability"] in ("ReadWrite", "WriteOnly")
        assert "variableCharacteristics" in e
        if e["variableCharacteristics"]["dataType"] in ("OptionList", "SequenceList",
                                                        "MemberList"):
            assert e["variableCharacteristics"]["valuesList"]
    for needed in (("AlignedDataCtrlr", None, "Interval", None),
                   ("TxCtrlr", None, "TxStartPoint", None),
                   ("OCPPCommCtrlr", None, "MessageAttempts", "TransactionEvent"),
                   ("SampledDataCtrlr", None, "TxUpdatedMeasurands", None)):
        assert needed in found, needed
    password = found[("SecurityCtrlr", None, "BasicAuthPassword", None)]
    assert "value" not in password["variableAttribute"][0], "write-only: never reported"


async def test_TC_B_13_53_CS_full_inventory_has_the_mandatory_variables(csms201,
                                                                        make_agent201):
    agent = await make_agent201(evses=2)
    link = await online201(agent, csms201)
    found = entries(await report(csms201, link, {"requestId": 4,
                                                 "reportBase": "FullInventory"}))
    mandatory = [
        ("AlignedDataCtrlr", None, "Interval", None), ("AlignedDataCtrlr", None, "Measurands",
                                                       None),
        ("AlignedDataCtrlr", None, "TxEndedInterval", None),
        ("AlignedDataCtrlr", None, "TxEndedMeasurands", None),
        ("AuthCtrlr", None, "AuthorizeRemoteStart", None),
        ("AuthCtrlr", None, "LocalAuthorizeOffline", None),
        ("AuthCtrlr", None, "LocalPreAuthorize", None),
        ("ChargingStation", None, "AvailabilityState", None),
        ("ChargingStation", None, "Available", None),
        ("ChargingStation", None, "SupplyPhases", None),
        ("ClockCtrlr", None, "DateTime", None), ("ClockCtrlr", None, "TimeSource", None),
        ("DeviceDataCtrlr", None, "BytesPerMessage", "GetReport"),
        ("DeviceDataCtrlr", None, "ItemsPerMessage", "GetVariables"),
        ("OCPPCommCtrlr", None, "MessageTimeout", "Default"),
        ("OCPPCommCtrlr", None, "MessageAttemptInterval", "TransactionEvent"),
        ("OCPPCommCtrlr", None, "NetworkConfigurationPriority", None),
        ("OCPPCommCtrlr", None, "OfflineThreshold", None),
        ("OCPPCommCtrlr", None, "ResetRetries", None),
        ("OCPPCommCtrlr", None, "UnlockOnEVSideDisconnect", None),
        ("SampledDataCtrlr", None, "TxEndedInterval", None),
        ("SampledDataCtrlr", None, "TxStartedMeasurands", None),
        ("SecurityCtrlr", None, "SecurityProfile", None),
        ("TxCtrlr", None, "EVConnectionTimeOut", None),
        ("TxCtrlr", None, "StopTxOnEVSideDisconnect", None),
        ("TxCtrlr", None, "StopTxOnInvalidId", None), ("TxCtrlr", None, "TxStopPoint", None),
        ("LocalAuthListCtrlr", None, "Entries", None),
        ("AuthCacheCtrlr", None, "Enabled", None), ("ReservationCtrlr", None, "Enabled", None),
        ("SmartChargingCtrlr", None, "Enabled", None),
    ]
    for evse in (1, 2):
        mandatory += [("EVSE", evse, "AvailabilityState", None), ("EVSE", evse, "Power", None),
                      ("Connector", evse, "ConnectorType", None),
                      ("Connector", evse, "AvailabilityState", None)]
    missing = [m for m in mandatory if m not in found]
    assert missing == []
    power = found[("EVSE", 1, "Power", None)]
    assert {a["type"] for a in power["variableAttribute"]} == {"Actual", "MaxSet"}
    assert power["variableCharacteristics"]["unit"] == "W"


async def test_notify_report_split_by_items_and_bytes_per_message(csms201, make_agent201):
    agent = await make_agent201(defaults={"DeviceDataCtrlr.ItemsPerMessage[GetReport]": 5,
                                          "DeviceDataCtrlr.BytesPerMessage[GetReport]": 1500})
    link = await online201(agent, csms201)
    parts = await report(csms201, link, {"requestId": 5, "reportBase": "FullInventory"})
    assert len(parts) > 10
    for p in parts:
        assert 1 <= len(p["reportData"]) <= 5
        assert len(json.dumps(p, separators=(",", ":"))) <= 1500 or len(p["reportData"]) == 1
    total = sum(len(p["reportData"]) for p in parts)
    assert total == len(agent.adapter.block(Provisioning).dm.defs)


async def test_TC_B_15_CS_summary_inventory_is_supported(csms201, make_agent201):
    agent = await make_agent201()
    link = await online201(agent, csms201)
    agent.hal.inject_fault(1, "welded")
    await csms201.wait_for("StatusNotification", station_id="CP1",
                           predicate=lambda p: p["connectorStatus"] == "Faulted")
    found = entries(await report(csms201, link, {"requestId": 6,
                                                 "reportBase": "SummaryInventory"}))
    assert found[("EVSE", 1, "Problem", None)]["variableAttribute"][0]["value"] == "true"
    assert found[("Connector", 1, "AvailabilityState", None)]["variableAttribute"][0][
        "value"] == "Faulted"
    assert not any(k[0] == "OCPPCommCtrlr" for k in found)


async def test_get_report_with_component_variables_and_criteria(csms201, make_agent201):
    agent = await make_agent201(evses=2)
    link = await online201(agent, csms201)
    found = entries(await report(csms201, link, {
        "requestId": 8, "componentVariable": [
            {"component": {"name": "EVSE", "evse": {"id": 2}}},
            {"component": {"name": "TxCtrlr"}, "variable": {"name": "TxStartPoint"}}]},
        action="GetReport"))
    assert ("TxCtrlr", None, "TxStartPoint", None) in found
    assert ("EVSE", 2, "Power", None) in found
    assert not any(k[:2] == ("EVSE", 1) for k in found)
    assert ("TxCtrlr", None, "TxStopPoint", None) not in found
    # Criterion Problem: only components with a problem; none yet.
    res = await link.call("GetReport", {"requestId": 9, "componentCriteria": ["Problem"]})
    assert res["status"] == "EmptyResultSet"
    agent.hal.inject_fault(2, "welded")
    await csms201.wait_for("NotifyEvent", station_id="CP1", predicate=lambda p: p[
        "eventData"][0]["variable"]["name"] != "AvailabilityState")
    found = entries(await report(csms201, link, {"requestId": 10,
                                                 "componentCriteria": ["Problem"]},
                                 action="GetReport"))
    assert {(k[0], k[1]) for k in found} >= {("EVSE", 2), ("PowerContactor", 2)}
    assert not any(k[1] == 1 for k in found)


# ---------------------------------------------------------------- B11/B12 reset


async def test_TC_B_20_CS_reset_on_idle_without_transaction(csms201, make_agent201):
    agent = await make_agent201()
    link = await online201(agent, csms201)
    assert (await link.call("Reset", {"type": "OnIdle"}))["status"] == "Accepted"
    await asyncio.wait_for(agent.wait(), 5)
    assert agent.reset_kind == "OnIdle"
    await agent.stop()
    again = await make_agent201()
    await online201(again, csms201)
    boot = csms201.messages("CP1", "BootNotification")[-1]
    assert boot["reason"] == "RemoteReset"
    security = csms201.messages("CP1", "SecurityEventNotification")[-1]
    assert security["type"] == "ResetOrReboot"


async def test_TC_B_21_CS_reset_on_idle_waits_for_the_transaction(csms201, make_agent201):
    agent = await make_agent201()
    link = await online201(agent, csms201)
    await charging201(agent, csms201)
    assert (await link.call("Reset", {"type": "OnIdle"}))["status"] == "Scheduled"
    assert agent.hal.evses[1].contactor.commanded_closed, "scheduled: charging goes on"
    assert not agent._stop.is_set()
    agent.hal.tap("TAG1")  # the driver stops
    await asyncio.wait_for(agent.wait(), 5)
    await agent.stop()  # as the daemon does: the Ended goes out before the restart
    ended = tx_events(csms201, eventType="Ended")
    assert ended and ended[0]["triggerReason"] == "StopAuthorized"
    again = await make_agent201()
    await online201(again, csms201)
    assert csms201.messages("CP1", "BootNotification")[-1]["reason"] == "ScheduledReset"


async def test_TC_B_22_CS_reset_immediate_ends_the_transaction(csms201, make_agent201):
    agent = await make_agent201()
    link = await online201(agent, csms201)
    await charging201(agent, csms201)
    assert (await link.call("Reset", {"type": "Immediate"}))["status"] == "Accepted"
    await asyncio.wait_for(agent.wait(), 5)
    ended = await csms201.wait_for("TransactionEvent", station_id="CP1",
                                   predicate=lambda p: p["eventType"] == "Ended")
    assert ended["triggerReason"] == "ResetCommand"
    assert ended["transactionInfo"]["stoppedReason"] == "ImmediateReset"
    assert ended["transactionInfo"]["chargingState"] == "EVConnected"
    assert "idToken" not in ended
    assert not agent.hal.evses[1].contactor.commanded_closed
    await agent.stop()
    again = await make_agent201()
    await online201(again, csms201)
    assert csms201.messages("CP1", "BootNotification")[-1]["reason"] == "RemoteReset"


async def test_TC_B_23_CS_unavailable_persists_reset(csms201, make_agent201):
    agent = await make_agent201(evses=2)
    link = await online201(agent, csms201)
    await link.call("ChangeAvailability", {"operationalStatus": "Inoperative",
                                           "evse": {"id": 1, "connectorId": 1}})
    assert (await link.call("Reset", {"type": "OnIdle"}))["status"] == "Accepted"
    await asyncio.wait_for(agent.wait(), 5)
    await agent.stop()
    csms201.log.clear()
    again = await make_agent201(evses=2)
    await online201(again, csms201)
    statuses = {s["evseId"]: s["connectorStatus"]
                for s in csms201.messages("CP1", "StatusNotification")}
    assert statuses == {1: "Unavailable", 2: "Available"}


async def test_reset_of_an_unknown_evse_is_rejected(csms201, make_agent201):
    """TC_B_28_CS's Rejected is left for an EVSE the station does not have: resetting one
    EVSE is supported (tests/test_v201_reset_evse.py)."""
    agent = await make_agent201()
    link = await online201(agent, csms201)
    res = await link.call("Reset", {"type": "Immediate", "evseId": 2})
    assert res == {"status": "Rejected", "statusInfo": {"reasonCode": "UnknownEvse"}}
    assert not agent._stop.is_set()


# ---------------------------------------------------------------- B09 network profile


async def test_TC_B_43_CS_set_network_profile_rejected_and_stored(csms201, make_agent201):
    agent = await make_agent201()
    link = await online201(agent, csms201)
    data = {"ocppVersion": "OCPP20", "ocppTransport": "JSON",
            "ocppCsmsUrl": "wss://csms.example.com/ocpp", "messageTimeout": 30,
            "securityProfile": 2, "ocppInterface": "Wired0"}
    bad = await link.call("SetNetworkProfile", {"configurationSlot": 999,
                                                "connectionData": data})
    assert bad["status"] == "Rejected"
    ok = await link.call("SetNetworkProfile", {"configurationSlot": 2, "connectionData": data})
    assert ok["status"] == "Accepted"
    stored = json.loads(agent.storage.get_setting("v201.network_profile.2"))
    assert stored["ocppCsmsUrl"] == "wss://csms.example.com/ocpp"
    # Not critical (appendix 1): in the security log, not pushed to the CSMS.
    log_text = agent.security_log.path.read_text()
    assert "ReconfigurationOfSecurityParameters network profile slot 2 set" in log_text
    assert not [p for p in csms201.messages("CP1", "SecurityEventNotification")
                if p["type"] == "ReconfigurationOfSecurityParameters"]
