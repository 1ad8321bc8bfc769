"""OCPP 2.0.1 J (clock-aligned meter values), N (NotifyEvent), P (DataTransfer), security
events, and a spec-correct answer to every request the CSMS may send."""

from __future__ import annotations

import json

import pytest

from agent.clock import parse_iso
from tests.conftest import charging201, on_versions_201_plus, online201

pytestmark = pytest.mark.asyncio
# Every test here applies to 2.1 as well (its csms201 / make_agent201 speak each).
v2 = on_versions_201_plus()


def on_second(stamp: str) -> bool:
    return parse_iso(stamp).microsecond == 0


# ---------------------------------------------------------------- J clock-aligned


async def test_TC_J_01_CS_aligned_meter_values_without_transaction(csms201, make_agent201):
    agent = await make_agent201(evses=2, defaults={
        "AlignedDataCtrlr.Interval": 1,
        "AlignedDataCtrlr.Measurands": "Energy.Active.Import.Register,Voltage"})
    await online201(agent, csms201)
    await csms201.wait_for("MeterValues", station_id="CP1", count=2, timeout=5)
    first, second = csms201.messages("CP1", "MeterValues")[:2]
    assert {first["evseId"], second["evseId"]} == {1, 2}
    assert first["meterValue"][0]["timestamp"] == second["meterValue"][0]["timestamp"]
    assert on_second(first["meterValue"][0]["timestamp"]), "on the interval boundary"
    values = first["meterValue"][0]["sampledValue"]
    assert {v["context"] for v in values} == {"Sample.Clock"}
    assert {v["measurand"] for v in values} == {"Energy.Active.Import.Register", "Voltage"}


async def test_TC_J_02_03_CS_aligned_values_during_a_transaction(csms201, make_agent201):
    agent = await make_agent201(defaults={
        "AlignedDataCtrlr.Interval": 1,
        "AlignedDataCtrlr.TxEndedInterval": 1,
        "AlignedDataCtrlr.TxEndedMeasurands": "Energy.Active.Import.Register"})
    await online201(agent, csms201)
    await charging201(agent, csms201)
    clock = await csms201.wait_for("TransactionEvent", station_id="CP1", timeout=5,
                                   predicate=lambda p: p["triggerReason"] == "MeterValueClock")
    assert clock["eventType"] == "Updated"
    assert clock["meterValue"][0]["sampledValue"][0]["context"] == "Sample.Clock"
    assert on_second(clock["meterValue"][0]["timestamp"])
    # And once more, so that the Ended carries at least one aligned TxEnded sample.
    await csms201.wait_for("TransactionEvent", station_id="CP1", count=2, timeout=5,
                           predicate=lambda p: p["triggerReason"] == "MeterValueClock")
    agent.hal.unplug(1)
    end = await csms201.wait_for("TransactionEvent", station_id="CP1",
                                 predicate=lambda p: p["eventType"] == "Ended")
    contexts = [v["context"] for mv in end["meterValue"] for v in mv["sampledValue"]]
    assert "Sample.Clock" in contexts and contexts[-1] == "Transaction.End"


# ---------------------------------------------------------------- N events


def fault_event(p: dict) -> bool:
    """A fault's NotifyEvent (not an AvailabilityState change, which goes out as one too)."""
    return p["eventData"][0]["variable"]["name"] != "AvailabilityState"


async def test_hardware_fault_and_its_clearing_are_notify_events(csms201, make_agent201):
    agent = await make_agent201()
    await online201(agent, csms201)
    agent.hal.inject_fault(1, "welded")
    raised = await csms201.wait_for("NotifyEvent", station_id="CP1", predicate=fault_event)
    event = raised["eventData"][0]
    assert event["component"] == {"name": "PowerContactor", "evse": {"id": 1}}
    assert event["variable"] == {"name": "Problem"}
    assert (event["actualValue"], event["trigger"]) == ("true", "Delta")
    assert event["eventNotificationType"] == "HardWiredMonitor"
    assert event["variableMonitoringId"] >= 100_000  # a hard-wired monitor's id
    assert event["techCode"] == "welded" and "cleared" not in event
    faulted = await csms201.wait_for("StatusNotification", station_id="CP1",
                                     predicate=lambda p: p["connectorStatus"] == "Faulted")
    assert faulted["evseId"] == 1
    agent.hal.clear_fault(1, "welded")
    cleared = (await csms201.wait_for("NotifyEvent", station_id="CP1", count=2,
                                      predicate=fault_event))["eventData"][0]
    assert cleared["actualValue"] == "false" and cleared["cleared"] is True
    assert cleared["eventId"] > event["eventId"]
    await csms201.wait_for("StatusNotification", station_id="CP1", count=2,
                           predicate=lambda p: p["connectorStatus"] == "Available")


async def test_station_wide_reader_fault_names_the_token_reader(csms201, make_agent201):
    agent = await make_agent201()
    await online201(agent, csms201)
    agent.hal.inject_fault(0, "reader")
    event = (await csms201.wait_for("NotifyEvent", station_id="CP1",
                                    predicate=fault_event))["eventData"][0]
    assert event["component"] == {"name": "TokenReader"}
    assert event["actualValue"] == "true"


# ---------------------------------------------------------------- P, security


async def test_TC_P_01_CS_data_transfer(csms201, make_agent201):
    agent = await make_agent201()
    link = await online201(agent, csms201)
    assert (await link.call("DataTransfer", {"vendorId": "acme"}))["status"] == \
        "UnknownVendorId"
    assert (await link.call("DataTransfer", {"vendorId": "cp-agent", "messageId": "x"}))[
        "status"] == "UnknownMessageId"


async def test_clock_correction_beyond_threshold_is_a_security_event(csms201, make_agent201):
    from datetime import UTC, datetime, timedelta

    future = datetime.now(UTC) + timedelta(days=3)
    csms201.now = lambda: future
    agent = await make_agent201()
    await online201(agent, csms201)
    event = await csms201.wait_for("SecurityEventNotification", station_id="CP1",
                                   predicate=lambda p: p["type"] == "SettingSystemTime")
    assert "corrected" in event["techInfo"]
    assert abs(agent.clock.now().timestamp() - future.timestamp()) < 5


# ---------------------------------------------------------------- every request answered


UNSUPPORTED = [
    ("PublishFirmware", {"requestId": 1, "location": "https://example.com/fw.bin",
                         "checksum": "0123456789abcdef0123456789abcdef"}, "Rejected"),
    ("CustomerInformation", {"requestId": 1, "report": True, "clear": False}, "Rejected"),
    ("GetInstalledCertificateIds", {}, "NotFound"),
    ("InstallCertificate", {"certificateType": "CSMSRootCertificate",
                            "certificate": "x"}, "Rejected"),
    ("UnpublishFirmware", {"checksum": "0" * 32}, "NoFirmware"),
]


async def test_every_request_without_a_feature_gets_a_spec_answer(csms201, make_agent201):
    agent = await make_agent201()
    link = await online201(agent, csms201)
    for action, payload, status in UNSUPPORTED:
        res = await link.call(action, payload)
        assert res["status"] == status, action
    cleared = await link.call("ClearVariableMonitoring", {"id": [4, 5]})
    assert [r["status"] for r in cleared["clearMonitoringResult"]] == ["NotFound", "NotFound"]
    assert await link.call("CostUpdated", {"totalCost": 1.5, "transactionId": "x"}) == {}
    # An action 2.0.1 does not know at all: NotImplemented, and the link stays up.
    await link.send_raw(json.dumps([2, "u1", "NoSuchAction", {}]))
    assert (await link.recv_raw_reply("u1"))[2] == "NotImplemented"
    assert agent.link.state == "connected"
