"""OCPP 1.6J Core and RemoteTrigger: the real agent against the strict test CSMS over websockets.

Every test runs `Agent` exactly as `cp-agent run` builds it, on the mock HAL, connected over a
real websocket on 127.0.0.1 to a CSMS built with the `ocpp` package's server side, which
validates every message against the official JSON schemas (the `csms` fixture fails the test
on any violation).
"""

from __future__ import annotations

import asyncio
import json

import pytest

from agent.testing.csms import NO_REPLY, CsmsCallError
from tests.conftest import charging, online

pytestmark = pytest.mark.asyncio


# ---------------------------------------------------------------- BootNotification, Heartbeat


async def test_boot_accepted_then_status_of_every_connector(csms, make_agent):
    agent = await make_agent(evses=2)
    await online(agent, csms)
    boot = csms.messages("CP1", "BootNotification")[0]
    assert boot["chargePointVendor"] == "cp-agent"
    assert boot["firmwareVersion"].startswith("cp-agent")
    for cid in (0, 1, 2):
        await csms.wait_for("StatusNotification", station_id="CP1",
                            predicate=lambda p, c=cid: p["connectorId"] == c
                            and p["status"] == "Available")
    assert agent.settings["HeartbeatInterval"] == csms.heartbeat_interval


async def test_clock_offset_taken_from_csms(csms, make_agent):
    from datetime import UTC, datetime, timedelta

    future = datetime.now(UTC) + timedelta(days=400)
    csms.now = lambda: future
    agent = await make_agent()
    await online(agent, csms)
    assert abs(agent.clock.now().timestamp() - future.timestamp()) < 5


# ---------------------------------------------------------------- transactions


async def test_full_session_start_meter_values_stop(csms, make_agent):
    agent = await make_agent(defaults={
        "MeterValueSampleInterval": 1,
        "MeterValuesSampledData": "Energy.Active.Import.Register,Power.Active.Import,"
                                  "Current.Import,Voltage,Current.Offered",
        "StopTxnSampledData": "Energy.Active.Import.Register"})
    await online(agent, csms)
    auth_before = len(csms.messages("CP1", "Authorize"))
    start = await charging(agent, csms, "TAG1")
    assert len(csms.messages("CP1", "Authorize")) == auth_before + 1
    assert start["meterStart"] == 0
    mv = await csms.wait_for("MeterValues", station_id="CP1", timeout=5,
                             predicate=lambda p: "transactionId" in p)
    measurands = {v.get("measurand") for v in mv["meterValue"][0]["sampledValue"]}
    assert {"Energy.Active.Import.Register", "Power.Active.Import", "Current.Import",
            "Voltage", "Current.Offered"} <= measurands
    tx_id = next(iter(csms.transactions))
    assert mv["transactionId"] == tx_id
    await csms.wait_for("StatusNotification", station_id="CP1",
                        predicate=lambda p: p["status"] == "Charging")
    agent.hal.unplug(1)
    stop = await csms.wait_for("StopTransaction", station_id="CP1")
    assert stop["transactionId"] == tx_id
    assert stop["reason"] == "EVDisconnected"
    assert stop["meterStop"] >= start["meterStart"]
    assert stop["transactionData"][0]["sampledValue"][0]["context"] == "Transaction.Begin"
    assert stop["transactionData"][-1]["sampledValue"][0]["context"] == "Transaction.End"
    await csms.wait_for("StatusNotification", station_id="CP1",
                        predicate=lambda p: p["status"] == "Available" and p["connectorId"] == 1,
                        count=2)
    assert not agent.hal.evses[1].contactor.commanded_closed


async def test_local_stop_with_same_card_sends_idtag_and_finishing(csms, make_agent):
    agent = await make_agent()
    await online(agent, csms)
    await charging(agent, csms, "TAG1")
    agent.hal.tap("TAG1")
    stop = await csms.wait_for("StopTransaction", station_id="CP1")
    assert stop["reason"] == "Local" and stop["idTag"] == "TAG1"
    await csms.wait_for("StatusNotification", station_id="CP1",
                        predicate=lambda p: p["status"] == "Finishing")
    assert not agent.hal.evses[1].contactor.commanded_closed


async def test_rejected_card_never_starts(csms, make_agent):
    csms.authorize = {"BAD": "Blocked"}
    agent = await make_agent()
    await online(agent, csms)
    agent.hal.plug(1)
    agent.hal.tap("BAD")
    await csms.wait_for("Authorize", station_id="CP1")
    await asyncio.wait_for(agent.station.settled(), 5)
    assert csms.messages("CP1", "StartTransaction") == []
    assert not agent.hal.evses[1].contactor.commanded_closed


async def test_invalid_id_on_start_stops_with_deauthorized(csms, make_agent):
    agent = await make_agent(defaults={"LocalPreAuthorize": True})
    await online(agent, csms)
    # The card is in the local list as Accepted, but the CSMS says Invalid on start.
    await csms.stations["CP1"].call("SendLocalList", {
        "listVersion": 1, "updateType": "Full",
        "localAuthorizationList": [{"idTag": "OLD", "idTagInfo": {"status": "Accepted"}}]})
    csms.authorize = {"OLD": "Invalid"}
    agent.hal.plug(1)
    agent.hal.tap("OLD")
    stop = await csms.wait_for("StopTransaction", station_id="CP1")
    assert stop["reason"] == "DeAuthorized"
    assert csms.messages("CP1", "Authorize") == [], "local pre-authorization: no round trip"


async def test_stop_transaction_on_ev_side_disconnect_false_keeps_tx(csms, make_agent):
    agent = await make_agent(defaults={"StopTransactionOnEVSideDisconnect": False})
    await online(agent, csms)
    await charging(agent, csms)
    agent.hal.unplug(1)
    await csms.wait_for("StatusNotification", station_id="CP1",
                        predicate=lambda p: p["status"] == "SuspendedEVSE")
    assert csms.messages("CP1", "StopTransaction") == []
    agent.hal.tap("TAG1")
    stop = await csms.wait_for("StopTransaction", station_id="CP1")
    assert stop["reason"] == "Local"


# ---------------------------------------------------------------- remote start / stop


async def test_remote_start_and_stop(csms, make_agent):
    agent = await make_agent()
    link = await online(agent, csms)
    agent.hal.plug(1)
    res = await link.call("RemoteStartTransaction", {"idTag": "REMOTE1", "connectorId": 1})
    assert res["status"] == "Accepted"
    start = await csms.wait_for("StartTransaction", station_id="CP1")
    assert start["idTag"] == "REMOTE1"
    assert csms.messages("CP1", "Authorize") == [], "AuthorizeRemoteTxRequests is false"
    await asyncio.wait_for(agent.adapters["1.6"].outbox.idle.wait(), 5)
    tx_id = next(iter(csms.transactions))
    assert (await link.call("RemoteStopTransaction", {"transactionId": tx_id + 100}))[
        "status"] == "Rejected"
    assert (await link.call("RemoteStopTransaction", {"transactionId": tx_id}))[
        "status"] == "Accepted"
    stop = await csms.wait_for("StopTransaction", station_id="CP1")
    assert stop["reason"] == "Remote"


async def test_remote_start_authorizes_first_when_configured(csms, make_agent):
    csms.authorize = lambda tag: "Invalid" if tag == "NOPE" else "Accepted"
    agent = await make_agent(defaults={"AuthorizeRemoteTxRequests": True})
    link = await online(agent, csms)
    agent.hal.plug(1)
    assert (await link.call("RemoteStartTransaction", {"idTag": "NOPE"}))["status"] == "Accepted"
    await csms.wait_for("Authorize", station_id="CP1")
    await asyncio.wait_for(agent.station.settled(), 5)
    assert csms.messages("CP1", "StartTransaction") == []
    assert (await link.call("RemoteStartTransaction", {"idTag": "YES"}))["status"] == "Accepted"
    await csms.wait_for("StartTransaction", station_id="CP1")


async def test_remote_start_rejected_when_busy_or_unknown_connector(csms, make_agent):
    agent = await make_agent()
    link = await online(agent, csms)
    assert (await link.call("RemoteStartTransaction", {"idTag": "X", "connectorId": 7}))[
        "status"] == "Rejected"
    await charging(agent, csms)
    assert (await link.call("RemoteStartTransaction", {"idTag": "X", "connectorId": 1}))[
        "status"] == "Rejected"


# ---------------------------------------------------------------- Reset, availability, unlock


@pytest.mark.parametrize("kind", ["Soft", "Hard"])
async def test_reset_ends_transactions_and_requests_restart(csms, make_agent, kind):
    agent = await make_agent()
    link = await online(agent, csms)
    await charging(agent, csms)
    assert (await link.call("Reset", {"type": kind}))["status"] == "Accepted"
    stop = await csms.wait_for("StopTransaction", station_id="CP1")
    assert stop["reason"] == f"{kind}Reset"
    await asyncio.wait_for(agent.wait(), 5)
    assert agent.reset_kind == kind
    assert not agent.hal.evses[1].contactor.commanded_closed


async def test_change_availability(csms, make_agent):
    agent = await make_agent(evses=2)
    link = await online(agent, csms)
    assert (await link.call("ChangeAvailability", {"connectorId": 3, "type": "Inoperative"}))[
        "status"] == "Rejected"
    assert (await link.call("ChangeAvailability", {"connectorId": 2, "type": "Inoperative"}))[
        "status"] == "Accepted"
    await csms.wait_for("StatusNotification", station_id="CP1",
                        predicate=lambda p: p["connectorId"] == 2 and p["status"] == "Unavailable")
    await charging(agent, csms, evse=1)
    assert (await link.call("ChangeAvailability", {"connectorId": 0, "type": "Inoperative"}))[
        "status"] == "Scheduled"
    assert agent.hal.evses[1].contactor.commanded_closed, "scheduled: the session goes on"
    agent.hal.unplug(1)
    await csms.wait_for("StatusNotification", station_id="CP1",
                        predicate=lambda p: p["connectorId"] == 1 and p["status"] == "Unavailable")
    agent.hal.plug(1)
    agent.hal.tap("TAG9")
    await asyncio.wait_for(agent.station.settled(), 5)
    assert not agent.hal.evses[1].contactor.commanded_closed
    assert (await link.call("ChangeAvailability", {"connectorId": 0, "type": "Operative"}))[
        "status"] == "Accepted"


async def test_availability_persists_across_restart(csms, make_agent):
    agent = await make_agent()
    link = await online(agent, csms)
    await link.call("ChangeAvailability", {"connectorId": 1, "type": "Inoperative"})
    await agent.stop()
    again = await make_agent()
    await online(again, csms)
    assert again.station.evses[1].operative is False


async def test_unlock_connector_stops_transaction(csms, make_agent):
    agent = await make_agent()
    link = await online(agent, csms)
    await charging(agent, csms)
    assert (await link.call("UnlockConnector", {"connectorId": 1}))["status"] == "Unlocked"
    stop = await csms.wait_for("StopTransaction", station_id="CP1")
    assert stop["reason"] == "UnlockCommand"
    assert (await link.call("UnlockConnector", {"connectorId": 5}))["status"] == "NotSupported"
    agent.hal.inject_fault(1, "lock")
    assert (await link.call("UnlockConnector", {"connectorId": 1}))["status"] == "UnlockFailed"


# ---------------------------------------------------------------- configuration


async def test_get_configuration_all_known_and_unknown(csms, make_agent):
    agent = await make_agent()
    link = await online(agent, csms)
    everything = await link.call("GetConfiguration", {})
    keys = {k["key"]: k for k in everything["configurationKey"]}
    for required in ("AuthorizeRemoteTxRequests", "ClockAlignedDataInterval",
                     "ConnectionTimeOut", "ConnectorPhaseRotation", "GetConfigurationMaxKeys",
                     "HeartbeatInterval", "LocalAuthorizeOffline", "LocalPreAuthorize",
                     "MeterValuesAlignedData", "MeterValuesSampledData",
                     "MeterValueSampleInterval", "NumberOfConnectors", "ResetRetries",
                     "StopTransactionOnEVSideDisconnect", "StopTransactionOnInvalidId",
                     "StopTxnAlignedData", "StopTxnSampledData", "SupportedFeatureProfiles",
                     "TransactionMessageAttempts", "TransactionMessageRetryInterval",
                     "UnlockConnectorOnEVSideDisconnect"):
        assert required in keys, required
    assert keys["NumberOfConnectors"] == {"key": "NumberOfConnectors", "readonly": True,
                                          "value": "1"}
    some = await link.call("GetConfiguration", {"key": ["HeartbeatInterval", "Bogus"]})
    assert [k["key"] for k in some["configurationKey"]] == ["HeartbeatInterval"]
    assert some["unknownKey"] == ["Bogus"]
    assert agent.settings["HeartbeatInterval"] == 300


@pytest.mark.parametrize("key, value, status", [
    ("MeterValueSampleInterval", "10", "Accepted"),
    ("MeterValueSampleInterval", "ten", "Rejected"),
    ("MeterValueSampleInterval", "-1", "Rejected"),
    ("NumberOfConnectors", "4", "Rejected"),
    ("NoSuchKey", "1", "NotSupported"),
    ("MeterValuesSampledData", "Energy.Active.Import.Register,Voltage", "Accepted"),
    ("MeterValuesSampledData", "Energy.Reactive.Bogus", "Rejected"),
    ("StopTransactionOnInvalidId", "maybe", "Rejected"),
    ("StopTransactionOnInvalidId", "FALSE", "Accepted"),
])
async def test_change_configuration(csms, make_agent, key, value, status):
    agent = await make_agent()
    link = await online(agent, csms)
    assert (await link.call("ChangeConfiguration", {"key": key, "value": value}))[
        "status"] == status


async def test_changed_configuration_persists_and_applies(csms, make_agent):
    agent = await make_agent()
    link = await online(agent, csms)
    assert (await link.call("ChangeConfiguration", {"key": "HeartbeatInterval",
                                                    "value": "1"}))["status"] == "Accepted"
    await csms.wait_for("Heartbeat", station_id="CP1", timeout=5)
    await link.call("ChangeConfiguration", {"key": "MeterValueSampleInterval", "value": "42"})
    await agent.stop()
    csms.heartbeat_interval = 0  # boot answer does not override it
    again = await make_agent()
    await online(again, csms)
    assert again.settings["MeterValueSampleInterval"] == 42


# ---------------------------------------------------------------- misc operations


async def test_data_transfer_and_clear_cache(csms, make_agent):
    agent = await make_agent()
    link = await online(agent, csms)
    assert (await link.call("DataTransfer", {"vendorId": "acme"}))["status"] == "UnknownVendorId"
    assert (await link.call("DataTransfer", {"vendorId": "cp-agent", "messageId": "x"}))[
        "status"] == "UnknownMessageId"
    agent.hal.tap("CACHED")
    await csms.wait_for("Authorize", station_id="CP1")
    await asyncio.wait_for(agent.station.settled(), 5)
    assert agent.storage.auth_cache_get("CACHED") is not None
    assert (await link.call("ClearCache", {}))["status"] == "Accepted"
    assert agent.storage.auth_cache_get("CACHED") is None


@pytest.mark.parametrize("what, action", [
    ("BootNotification", "BootNotification"),
    ("Heartbeat", "Heartbeat"),
    ("StatusNotification", "StatusNotification"),
    ("MeterValues", "MeterValues"),
    ("DiagnosticsStatusNotification", "DiagnosticsStatusNotification"),
    ("FirmwareStatusNotification", "FirmwareStatusNotification"),
])
async def test_trigger_message(csms, make_agent, what, action):
    agent = await make_agent()
    link = await online(agent, csms)
    before = len(csms.messages("CP1", action))
    res = await link.call("TriggerMessage", {"requestedMessage": what, "connectorId": 1}
                          if what in ("StatusNotification", "MeterValues") else
                          {"requestedMessage": what})
    assert res["status"] == "Accepted"
    await csms.wait_for(action, station_id="CP1", count=before + 1)
    # The triggered message follows the TriggerMessage answer on the wire.
    idx_answer = next(i for i, m in enumerate(csms.log) if m.action == "TriggerMessage"
                      and m.kind == "CALLRESULT")
    idx_msg = [i for i, m in enumerate(csms.log) if m.action == action and m.kind == "CALL"
               and m.direction == "cs->csms"][before]
    assert idx_msg > idx_answer


async def test_trigger_message_bad_connector_rejected(csms, make_agent):
    agent = await make_agent()
    link = await online(agent, csms)
    res = await link.call("TriggerMessage", {"requestedMessage": "StatusNotification",
                                             "connectorId": 9})
    assert res["status"] == "Rejected"


async def test_status_notification_error_codes_for_faults(csms, make_agent):
    agent = await make_agent()
    await online(agent, csms)
    for kind, code in (("pilot", "OtherError"), ("welded", "PowerSwitchFailure")):
        csms.log.clear()
        agent.hal.inject_fault(1, kind)
        await csms.wait_for("StatusNotification", station_id="CP1",
                            predicate=lambda p, c=code: p["status"] == "Faulted"
                            and p["errorCode"] == c)
        agent.hal.clear_fault(1, kind)
        await csms.wait_for("StatusNotification", station_id="CP1",
                            predicate=lambda p: p["status"] == "Available"
                            and p["connectorId"] == 1)
    agent.hal.inject_fault(0, "reader")
    await csms.wait_for("StatusNotification", station_id="CP1",
                        predicate=lambda p: p["connectorId"] == 0
                        and p["errorCode"] == "ReaderFailure")


# ---------------------------------------------------------------- RPC robustness on the link


async def test_every_call_is_answered_even_malformed_or_unknown(csms, make_agent):
    agent = await make_agent()
    link = await online(agent, csms)
    await link.send_raw(json.dumps([2, "u1", "NoSuchAction", {}]))
    assert (await link.recv_raw_reply("u1"))[2] == "NotImplemented"
    # A known action no block handles (a 1.6 security-extension message that only a station
    # sends, here sent to it): NotSupported.
    await link.send_raw(json.dumps([2, "u2", "SignCertificate", {"csr": "x"}]))
    assert (await link.recv_raw_reply("u2"))[2] == "NotSupported"
    await link.send_raw(json.dumps([2, "u3", "ChangeConfiguration", {"key": "x"}]))
    assert (await link.recv_raw_reply("u3"))[2] == "ProtocolError"
    await link.send_raw(json.dumps([2, "u4", "Reset", {"type": "Sideways"}]))
    assert (await link.recv_raw_reply("u4"))[2] == "PropertyConstraintViolation"
    await link.send_raw("[2, \"u5\", ")
    await link.send_raw(json.dumps([2, "u6", "ClearCache", {}]))
    assert (await link.recv_raw_reply("u6"))[0] == 3, "still alive after garbage"
    assert agent.link.state == "connected"


async def test_csms_answering_call_error_or_never(csms, make_agent):
    """StatusNotification refused or unanswered does not stall the agent."""
    csms.overrides["Authorize"] = lambda link, p: NO_REPLY
    agent = await make_agent(defaults={"LocalAuthorizeOffline": False,
                                       "AllowOfflineTxForUnknownId": False})
    await online(agent, csms)
    csms.overrides["StatusNotification"] = _refuse
    agent.hal.plug(1)
    agent.hal.tap("TAG1")
    await csms.wait_for("Authorize", station_id="CP1")
    # TAG2's Authorize waits for TAG1's to time out (one CALL in flight), then goes through.
    del csms.overrides["Authorize"]
    agent.hal.tap("TAG2")
    await csms.wait_for("StartTransaction", station_id="CP1", timeout=10)


def _refuse(link, payload):
    raise CsmsCallError("InternalError", "refused for the test")


async def test_rejected_station_does_not_answer_csms_calls(csms, make_agent):
    """1.6 4.2.1: while Rejected the Charge Point SHALL NOT respond to CSMS messages."""
    csms.boot_status = "Rejected"
    csms.boot_interval = 30
    agent = await make_agent()
    link = await csms.wait_station("CP1")
    await asyncio.wait_for(agent.adapters["1.6"].registration_seen.wait(), 5)
    assert agent.adapters["1.6"].registration == "Rejected"
    with pytest.raises(TimeoutError):
        await link.call("GetConfiguration", {}, timeout=0.5)
    assert csms.messages("CP1", "StatusNotification") == []


async def test_unlock_connector_on_ev_side_disconnect_false_keeps_cable_locked(csms, make_agent):
    agent = await make_agent(defaults={"UnlockConnectorOnEVSideDisconnect": False})
    link = await online(agent, csms)
    await charging(agent, csms)
    lock = agent.hal.evses[1].lock
    assert lock.locked
    agent.hal.unplug(1)
    await csms.wait_for("StopTransaction", station_id="CP1")
    await asyncio.wait_for(agent.station.settled(), 5)
    assert lock.locked, "the cable stays locked at the station"
    assert (await link.call("UnlockConnector", {"connectorId": 1}))["status"] == "Unlocked"
    assert not lock.locked
