"""OCPP 2.0.1 block F (remote control) and G (availability) against the strict test CSMS."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import charging201, on_versions_201_plus, online201, tx_events

pytestmark = pytest.mark.asyncio
# Every test here applies to 2.1 as well (its csms201 / make_agent201 speak each).
v2 = on_versions_201_plus()

TOKEN = {"idToken": "REMOTE1", "type": "Central"}


async def started_event(csms) -> dict:
    return await csms.wait_for("TransactionEvent", station_id="CP1",
                               predicate=lambda p: p["eventType"] == "Started")


async def ended_event(csms) -> dict:
    return await csms.wait_for("TransactionEvent", station_id="CP1",
                               predicate=lambda p: p["eventType"] == "Ended")


# ---------------------------------------------------------------- F01/F02 remote start


async def test_TC_F_01_CS_remote_start_with_cable_plugged_in_first(csms201, make_agent201):
    agent = await make_agent201()
    link = await online201(agent, csms201)
    agent.hal.plug(1)
    res = await link.call("RequestStartTransaction", {"idToken": TOKEN, "remoteStartId": 42,
                                                      "evseId": 1})
    assert res == {"status": "Accepted"}
    started = await started_event(csms201)
    assert started["triggerReason"] == "RemoteStart"
    assert started["transactionInfo"]["remoteStartId"] == 42
    assert started["idToken"] == TOKEN
    assert csms201.messages("CP1", "Authorize") == [], "AuthorizeRemoteStart is false"
    await csms201.wait_for("TransactionEvent", station_id="CP1",
                           predicate=lambda p: p["transactionInfo"].get("chargingState")
                           == "Charging")


async def test_TC_F_01_CS_remote_start_into_a_started_transaction_returns_its_id(
        csms201, make_agent201):
    agent = await make_agent201(defaults={"TxCtrlr.TxStartPoint": "EVConnected"})
    link = await online201(agent, csms201)
    agent.hal.plug(1)
    started = await started_event(csms201)
    res = await link.call("RequestStartTransaction", {"idToken": TOKEN, "remoteStartId": 7})
    assert res["status"] == "Accepted"
    assert res["transactionId"] == started["transactionInfo"]["transactionId"]
    remote = await csms201.wait_for("TransactionEvent", station_id="CP1",
                                    predicate=lambda p: p["triggerReason"] == "RemoteStart")
    assert remote["eventType"] == "Updated"
    assert remote["transactionInfo"]["remoteStartId"] == 7
    assert remote["idToken"] == TOKEN


@pytest.mark.parametrize("authorize_first", [True, False])
async def test_TC_F_02_03_CS_remote_start_first_then_cable(csms201, make_agent201,
                                                           authorize_first):
    csms201.authorize = lambda token: "Blocked" if token == "NOPE" else "Accepted"
    agent = await make_agent201(defaults={"AuthCtrlr.AuthorizeRemoteStart": authorize_first})
    link = await online201(agent, csms201)
    if authorize_first:
        refused = await link.call("RequestStartTransaction", {
            "idToken": {"idToken": "NOPE", "type": "ISO14443"}, "remoteStartId": 1})
        assert refused["status"] == "Accepted"  # the answer precedes the authorization
        await csms201.wait_for("Authorize", station_id="CP1")
        await asyncio.wait_for(agent.adapter.outbox.idle.wait(), 5)
    authorized = asyncio.Event()
    remote_start = agent.station.remote_start

    async def watched(*args, **kw):
        result = await remote_start(*args, **kw)
        authorized.set()
        return result

    agent.station.remote_start = watched
    res = await link.call("RequestStartTransaction", {"idToken": TOKEN, "remoteStartId": 2})
    assert res["status"] == "Accepted"
    await asyncio.wait_for(authorized.wait(), 5)  # F02: the start comes first, then the EV
    agent.hal.plug(1)
    started = await started_event(csms201)
    assert started["transactionInfo"]["remoteStartId"] == 2
    assert started["triggerReason"] == "CablePluggedIn"
    assert len(csms201.messages("CP1", "Authorize")) == (2 if authorize_first else 0)
    assert len(tx_events(csms201, eventType="Started")) == 1


async def test_TC_F_04_CS_remote_start_cable_timeout(csms201, make_agent201):
    agent = await make_agent201(defaults={"TxCtrlr.TxStartPoint": "Authorized",
                                          "TxCtrlr.EVConnectionTimeOut": 1})
    link = await online201(agent, csms201)
    await link.call("RequestStartTransaction", {"idToken": TOKEN, "remoteStartId": 3})
    started = await started_event(csms201)
    assert started["triggerReason"] == "RemoteStart"
    end = await ended_event(csms201)
    assert end["triggerReason"] == "EVConnectTimeout"


async def test_remote_start_rejected_for_unknown_or_busy_evse(csms201, make_agent201):
    agent = await make_agent201()
    link = await online201(agent, csms201)
    unknown = await link.call("RequestStartTransaction", {"idToken": TOKEN,
                                                          "remoteStartId": 1, "evseId": 5})
    assert unknown["status"] == "Rejected"
    await charging201(agent, csms201)
    busy = await link.call("RequestStartTransaction", {"idToken": TOKEN, "remoteStartId": 2,
                                                       "evseId": 1})
    assert busy["status"] == "Rejected"


# ---------------------------------------------------------------- F03 remote stop


async def test_TC_F_08_09_CS_remote_stop(csms201, make_agent201):
    agent = await make_agent201()
    link = await online201(agent, csms201)
    started = await charging201(agent, csms201)
    tx_id = started["transactionInfo"]["transactionId"]
    assert (await link.call("RequestStopTransaction", {"transactionId": "other"}))[
        "status"] == "Rejected"
    assert (await link.call("RequestStopTransaction", {"transactionId": tx_id}))[
        "status"] == "Accepted"
    end = await ended_event(csms201)
    assert end["triggerReason"] == "RemoteStop"
    assert end["transactionInfo"]["stoppedReason"] == "Remote"
    assert not agent.hal.evses[1].contactor.commanded_closed


# ---------------------------------------------------------------- F05 unlock


async def test_TC_F_05_06_10_CS_unlock_connector(csms201, make_agent201):
    agent = await make_agent201()
    link = await online201(agent, csms201)
    unknown = await link.call("UnlockConnector", {"evseId": 3, "connectorId": 1})
    assert unknown["status"] == "UnknownConnector"
    assert (await link.call("UnlockConnector", {"evseId": 1, "connectorId": 1}))[
        "status"] == "Unlocked"
    await charging201(agent, csms201)
    busy = await link.call("UnlockConnector", {"evseId": 1, "connectorId": 1})
    assert busy["status"] == "OngoingAuthorizedTransaction"
    assert agent.hal.evses[1].contactor.commanded_closed, "the session goes on"
    agent.hal.tap("TAG1")
    await ended_event(csms201)
    agent.hal.inject_fault(1, "lock")
    failed = await link.call("UnlockConnector", {"evseId": 1, "connectorId": 1})
    assert failed["status"] == "UnlockFailed"


# ---------------------------------------------------------------- F06 trigger message


async def _trigger(csms, link, request: dict, action: str) -> dict:
    before = len(csms.messages("CP1", action))
    res = await link.call("TriggerMessage", request)
    assert res["status"] == "Accepted"
    message = await csms.wait_for(action, station_id="CP1", count=before + 1)
    answer = next(i for i, m in enumerate(csms.log) if m.action == "TriggerMessage"
                  and m.kind == "CALLRESULT")
    sent = [i for i, m in enumerate(csms.log) if m.action == action and m.kind == "CALL"
            and m.direction == "cs->csms"][before]
    assert sent > answer, "the triggered message follows the answer"
    return message


async def test_TC_F_11_12_CS_trigger_meter_values(csms201, make_agent201):
    agent = await make_agent201(evses=2)
    link = await online201(agent, csms201)
    one = await _trigger(csms201, link, {"requestedMessage": "MeterValues",
                                         "evse": {"id": 2}}, "MeterValues")
    assert one["evseId"] == 2
    assert one["meterValue"][0]["sampledValue"][0]["context"] == "Trigger"
    await link.call("TriggerMessage", {"requestedMessage": "MeterValues"})
    await csms201.wait_for("MeterValues", station_id="CP1", count=3)
    assert {m["evseId"] for m in csms201.messages("CP1", "MeterValues")[1:]} == {1, 2}


async def test_TC_F_13_CS_trigger_transaction_event(csms201, make_agent201):
    agent = await make_agent201()
    link = await online201(agent, csms201)
    no_tx = await link.call("TriggerMessage", {"requestedMessage": "TransactionEvent",
                                               "evse": {"id": 1}})
    assert no_tx["status"] == "Rejected"
    await charging201(agent, csms201)
    event = await _trigger(csms201, link, {"requestedMessage": "TransactionEvent",
                                           "evse": {"id": 1}}, "TransactionEvent")
    assert event["triggerReason"] == "Trigger" and event["eventType"] == "Updated"
    assert event["transactionInfo"]["chargingState"] == "Charging"
    assert event["meterValue"][0]["sampledValue"][0]["context"] == "Trigger"


@pytest.mark.parametrize("what, action, check", [
    ("Heartbeat", "Heartbeat", None),  # TC_F_20_CS
    ("StatusNotification", "StatusNotification", ("connectorStatus", "Available")),  # F_23
    ("FirmwareStatusNotification", "FirmwareStatusNotification", ("status", "Idle")),  # F_18
    ("LogStatusNotification", "LogStatusNotification", ("status", "Idle")),  # TC_F_15_CS
])
async def test_TC_F_15_18_20_23_CS_trigger_message(csms201, make_agent201, what, action,
                                                   check):
    agent = await make_agent201()
    link = await online201(agent, csms201)
    message = await _trigger(csms201, link, {"requestedMessage": what, "evse": {"id": 1}},
                             action)
    if check is not None:
        assert message[check[0]] == check[1]


async def test_TC_F_24_CS_trigger_status_occupied(csms201, make_agent201):
    agent = await make_agent201()
    link = await online201(agent, csms201)
    agent.hal.plug(1)
    await csms201.wait_for("StatusNotification", station_id="CP1",
                           predicate=lambda p: p["connectorStatus"] == "Occupied")
    again = await _trigger(csms201, link, {"requestedMessage": "StatusNotification",
                                           "evse": {"id": 1, "connectorId": 1}},
                           "StatusNotification")
    assert again["connectorStatus"] == "Occupied"


async def test_TC_F_26_27_CS_trigger_boot_rejected_and_not_implemented(csms201,
                                                                       make_agent201):
    agent = await make_agent201()
    link = await online201(agent, csms201)
    boot = await link.call("TriggerMessage", {"requestedMessage": "BootNotification"})
    assert boot["status"] == "Rejected", "already accepted"
    # ISO 15118 certificates are out of scope: no block claims the V2G signing trigger.
    sign = await link.call("TriggerMessage", {"requestedMessage": "SignV2GCertificate"})
    assert sign["status"] == "NotImplemented"
    bad = await link.call("TriggerMessage", {"requestedMessage": "StatusNotification",
                                             "evse": {"id": 4}})
    assert bad["status"] == "Rejected"


# ---------------------------------------------------------------- G availability


async def test_TC_G_01_02_CS_connector_status_follows_the_plug(csms201, make_agent201):
    agent = await make_agent201()
    await online201(agent, csms201)
    agent.hal.plug(1)
    await csms201.wait_for("StatusNotification", station_id="CP1",
                           predicate=lambda p: p["connectorStatus"] == "Occupied")
    agent.hal.unplug(1)
    await csms201.wait_for("StatusNotification", station_id="CP1", count=2,
                           predicate=lambda p: p["connectorStatus"] == "Available")
    statuses = [s["connectorStatus"] for s in csms201.messages("CP1", "StatusNotification")]
    assert statuses == ["Available", "Occupied", "Available"]


@pytest.mark.parametrize("evse, targets", [
    ({"id": 2}, {2}),  # TC_G_03_CS / TC_G_04_CS: one EVSE
    ({"id": 2, "connectorId": 1}, {2}),  # TC_G_07_CS / TC_G_08_CS: one connector
    (None, {1, 2}),  # TC_G_05_CS / TC_G_06_CS: the whole station
])
async def test_TC_G_03_to_08_CS_change_availability(csms201, make_agent201, evse, targets):
    agent = await make_agent201(evses=2)
    link = await online201(agent, csms201)
    request: dict = {"operationalStatus": "Inoperative"}
    if evse is not None:
        request["evse"] = evse
    csms201.log.clear()
    assert (await link.call("ChangeAvailability", request))["status"] == "Accepted"
    for target in targets:
        await csms201.wait_for("StatusNotification", station_id="CP1",
                               predicate=lambda p, t=target: p["evseId"] == t
                               and p["connectorStatus"] == "Unavailable")
    for target in targets:
        assert not agent.station.evses[target].operative
    # TC_G_10_CS / G_13 / G_16: the same state again is Accepted and reported again.
    assert (await link.call("ChangeAvailability", request))["status"] == "Accepted"
    await csms201.wait_for("StatusNotification", station_id="CP1", count=2 * len(targets),
                           predicate=lambda p: p["connectorStatus"] == "Unavailable")
    agent.hal.plug(min(targets))
    agent.hal.tap("TAG9")
    await asyncio.wait_for(agent.station.settled(), 5)
    assert not agent.hal.evses[min(targets)].contactor.commanded_closed
    request["operationalStatus"] = "Operative"
    assert (await link.call("ChangeAvailability", request))["status"] == "Accepted"
    await csms201.wait_for("StatusNotification", station_id="CP1",
                           predicate=lambda p: p["connectorStatus"] == "Occupied")
    assert all(agent.station.evses[t].operative for t in targets)


@pytest.mark.parametrize("evse", [{"id": 1}, {"id": 1, "connectorId": 1}, None])
async def test_TC_G_11_14_17_CS_change_availability_with_a_transaction_is_scheduled(
        csms201, make_agent201, evse):
    agent = await make_agent201()
    link = await online201(agent, csms201)
    await charging201(agent, csms201)
    request: dict = {"operationalStatus": "Inoperative"}
    if evse is not None:
        request["evse"] = evse
    assert (await link.call("ChangeAvailability", request))["status"] == "Scheduled"
    assert agent.hal.evses[1].contactor.commanded_closed, "scheduled: the session goes on"
    agent.hal.unplug(1)
    await csms201.wait_for("TransactionEvent", station_id="CP1",
                           predicate=lambda p: p["eventType"] == "Ended")
    unavailable = await csms201.wait_for("StatusNotification", station_id="CP1",
                                         predicate=lambda p: p["connectorStatus"]
                                         == "Unavailable")
    assert (unavailable["evseId"], unavailable["connectorId"]) == (1, 1)


async def test_TC_G_18_21_CS_availability_persists_across_reboot(csms201, make_agent201):
    agent = await make_agent201(evses=2)
    link = await online201(agent, csms201)
    await link.call("ChangeAvailability", {"operationalStatus": "Inoperative",
                                           "evse": {"id": 2}})
    await agent.stop()
    csms201.log.clear()
    again = await make_agent201(evses=2)
    await online201(again, csms201)
    statuses = {s["evseId"]: s["connectorStatus"]
                for s in csms201.messages("CP1", "StatusNotification")}
    assert statuses == {1: "Available", 2: "Unavailable"}


async def test_change_availability_of_unknown_evse_or_connector_rejected(csms201,
                                                                         make_agent201):
    agent = await make_agent201()
    link = await online201(agent, csms201)
    for evse in ({"id": 3}, {"id": 1, "connectorId": 2}):
        res = await link.call("ChangeAvailability", {"operationalStatus": "Inoperative",
                                                     "evse": evse})
        assert res["status"] == "Rejected"
    assert agent.station.evses[1].operative
