"""OCPP 2.0.1 block E (transactions) and J sampled meter values, agent against a strict CSMS.

Every TransactionEvent is checked by the csms201 fixture against the official schema; these
tests check what the schema cannot: trigger reasons, charging states, stopped reasons, seqNo
continuity across restarts, the offline flag and the retry rules.
"""

from __future__ import annotations

import asyncio

import pytest

from agent.core.model import Token
from agent.testing.csms import CsmsCallError
from tests.conftest import charging201, on_versions_201_plus, online201, tx_events

pytestmark = pytest.mark.asyncio
# Every test here applies to 2.1 as well (its csms201 / make_agent201 speak each).
v2 = on_versions_201_plus()


def summary(events: list[dict]) -> list[tuple]:
    return [(e["eventType"], e["triggerReason"], e["transactionInfo"].get("chargingState"))
            for e in events]


async def ended(csms, **kw) -> dict:
    return await csms.wait_for("TransactionEvent", station_id="CP1", timeout=kw.pop("t", 5),
                               predicate=lambda p: p["eventType"] == "Ended")


async def state(csms, value: str, count: int = 1) -> dict:
    return await csms.wait_for("TransactionEvent", station_id="CP1", count=count,
                               predicate=lambda p: p["transactionInfo"].get("chargingState")
                               == value)


def energy(events: list[dict], context: str) -> float:
    for e in events:
        for mv in e.get("meterValue", []):
            for sv in mv["sampledValue"]:
                if sv.get("context") == context and sv.get(
                        "measurand", "Energy.Active.Import.Register") == \
                        "Energy.Active.Import.Register":
                    return sv["value"]
    raise AssertionError(f"no {context} energy in {events}")


def crash(agent) -> None:
    """Make the next stop behave like a power cut: transactions stay open in the journal."""
    agent.reset_kind = "simulated power cut"


# ---------------------------------------------------------------- E01/E02/E03 start points


async def test_TC_E_01_03_CS_power_path_closed_cable_plugged_first(csms201, make_agent201):
    agent = await make_agent201()
    await online201(agent, csms201)
    agent.hal.plug(1)
    occupied = await csms201.wait_for("StatusNotification", station_id="CP1",
                                      predicate=lambda p: p["connectorStatus"] == "Occupied")
    assert occupied["evseId"] == 1 and occupied["connectorId"] == 1
    assert tx_events(csms201) == [], "TxStartPoint PowerPathClosed: not started by the plug"
    agent.hal.tap("TAG1")
    await csms201.wait_for("Authorize", station_id="CP1")
    await state(csms201, "Charging")
    await agent.station.sample(agent.station.evses[1])  # a meter reading while charging
    agent.hal.unplug(1)
    await ended(csms201)
    events = tx_events(csms201)
    started = events[0]
    assert started["eventType"] == "Started" and started["triggerReason"] == "Authorized"
    assert started["idToken"] == {"idToken": "TAG1", "type": "ISO14443"}
    assert started["evse"] == {"id": 1, "connectorId": 1}
    assert started["meterValue"][0]["sampledValue"][0]["context"] == "Transaction.Begin"
    assert summary(events)[-1] == ("Ended", "EVCommunicationLost", "Idle")
    assert events[-1]["transactionInfo"]["stoppedReason"] == "EVDisconnected"
    assert {e["transactionInfo"]["transactionId"] for e in events} == {
        started["transactionInfo"]["transactionId"]}
    assert [e["seqNo"] for e in events] == list(range(len(events)))
    assert not any(e.get("offline") for e in events)
    assert energy(events, "Transaction.End") > energy(events, "Transaction.Begin")
    await csms201.wait_for("StatusNotification", station_id="CP1", count=2,
                           predicate=lambda p: p["connectorStatus"] == "Available")


async def test_TC_E_04_CS_authorization_first_then_cable(csms201, make_agent201):
    agent = await make_agent201()
    await online201(agent, csms201)
    agent.hal.tap("TAG1")
    await csms201.wait_for("Authorize", station_id="CP1")
    await asyncio.wait_for(agent.station.settled(), 5)
    assert tx_events(csms201) == []
    agent.hal.plug(1)
    await state(csms201, "Charging")
    started = tx_events(csms201, eventType="Started")[0]
    assert started["triggerReason"] == "CablePluggedIn"
    assert started["idToken"]["idToken"] == "TAG1"


async def test_TC_E_09_CS_start_on_ev_connected_then_authorized(csms201, make_agent201):
    agent = await make_agent201(defaults={"TxCtrlr.TxStartPoint": "EVConnected"})
    await online201(agent, csms201)
    agent.hal.plug(1)
    started = await csms201.wait_for("TransactionEvent", station_id="CP1")
    assert (started["eventType"], started["triggerReason"]) == ("Started", "CablePluggedIn")
    assert started["transactionInfo"]["chargingState"] == "EVConnected"
    assert "idToken" not in started
    agent.hal.tap("TAG1")
    await state(csms201, "Charging")
    events = tx_events(csms201)
    authorized = [e for e in events if e["triggerReason"] == "Authorized"]
    assert len(authorized) == 1 and authorized[0]["eventType"] == "Updated"
    assert authorized[0]["idToken"]["idToken"] == "TAG1"
    assert [e["seqNo"] for e in events] == list(range(len(events)))


async def test_TC_E_10_CS_start_on_authorized_before_the_ev(csms201, make_agent201):
    agent = await make_agent201(defaults={"TxCtrlr.TxStartPoint": "Authorized"})
    await online201(agent, csms201)
    agent.hal.tap("TAG1")
    started = await csms201.wait_for("TransactionEvent", station_id="CP1")
    assert (started["eventType"], started["triggerReason"]) == ("Started", "Authorized")
    assert started["transactionInfo"]["chargingState"] == "Idle"
    await asyncio.wait_for(agent.station.settled(), 5)
    assert tx_events(csms201, eventType="Ended") == [], \
        "TxStopPoint EVConnected was never reached, so it cannot end the transaction"
    agent.hal.plug(1)
    await state(csms201, "Charging")
    plugged = [e for e in tx_events(csms201) if e["triggerReason"] == "CablePluggedIn"]
    assert len(plugged) == 1
    assert plugged[0]["transactionInfo"]["chargingState"] == "EVConnected"


async def test_TC_E_39_05_CS_authorized_but_no_cable_times_out(csms201, make_agent201):
    agent = await make_agent201(defaults={"TxCtrlr.TxStartPoint": "Authorized",
                                          "TxCtrlr.EVConnectionTimeOut": 1})
    await online201(agent, csms201)
    agent.hal.tap("TAG1")
    end = await ended(csms201)
    assert end["triggerReason"] == "EVConnectTimeout"
    assert end["transactionInfo"]["stoppedReason"] == "Timeout"
    # The EVSE is free again: a new session can start.
    agent.hal.plug(1)
    agent.hal.tap("TAG2")
    await csms201.wait_for("TransactionEvent", station_id="CP1", count=2,
                           predicate=lambda p: p["eventType"] == "Started")


async def test_TC_E_02_CS_start_on_energy_transfer(csms201, make_agent201):
    agent = await make_agent201(defaults={"TxCtrlr.TxStartPoint": "EnergyTransfer"})
    await online201(agent, csms201)
    agent.hal.plug(1)
    agent.hal.tap("TAG1")
    started = await csms201.wait_for("TransactionEvent", station_id="CP1")
    assert started["eventType"] == "Started"
    assert started["triggerReason"] == "ChargingStateChanged"
    assert started["transactionInfo"]["chargingState"] == "Charging"
    assert started["idToken"]["idToken"] == "TAG1"


async def test_TC_E_38_CS_ev_not_ready_is_suspended_ev(csms201, make_agent201):
    agent = await make_agent201()
    await online201(agent, csms201)
    assert await agent.station.present_token(Token("TAG1")) == "authorized"
    agent.hal.set_ev_state(1, "B")  # plugged in, not asking for energy
    suspended = await state(csms201, "SuspendedEV")
    assert suspended["triggerReason"] == "ChargingStateChanged"
    started = tx_events(csms201, eventType="Started")[0]
    assert started["transactionInfo"]["chargingState"] == "EVConnected"
    assert not agent.hal.evses[1].contactor.commanded_closed


# ---------------------------------------------------------------- E06-E10 stop points


async def test_TC_E_15_CS_stop_authorized_locally(csms201, make_agent201):
    agent = await make_agent201()
    await online201(agent, csms201)
    await charging201(agent, csms201)
    agent.hal.tap("TAG1")
    end = await ended(csms201)
    assert end["triggerReason"] == "StopAuthorized"
    assert end["transactionInfo"]["stoppedReason"] == "Local"
    assert end["transactionInfo"]["chargingState"] == "EVConnected"
    assert not agent.hal.evses[1].contactor.commanded_closed


async def test_TC_E_14_CS_stop_point_ev_connected_ends_at_the_unplug(csms201, make_agent201):
    agent = await make_agent201(defaults={"TxCtrlr.TxStopPoint": "EVConnected"})
    await online201(agent, csms201)
    await charging201(agent, csms201)
    agent.hal.tap("TAG1")
    stop = await csms201.wait_for("TransactionEvent", station_id="CP1",
                                  predicate=lambda p: p["triggerReason"] == "StopAuthorized")
    assert stop["eventType"] == "Updated"
    assert stop["transactionInfo"]["chargingState"] == "EVConnected"
    assert not agent.hal.evses[1].contactor.commanded_closed
    agent.hal.unplug(1)
    end = await ended(csms201)
    assert end["triggerReason"] == "EVCommunicationLost"
    assert end["transactionInfo"]["chargingState"] == "Idle"
    assert end["transactionInfo"]["stoppedReason"] == "Local"


async def test_TC_E_17_CS_ev_side_disconnect_ends_the_transaction(csms201, make_agent201):
    agent = await make_agent201(defaults={"TxCtrlr.TxStopPoint": "Authorized"})
    await online201(agent, csms201)
    await charging201(agent, csms201)
    agent.hal.unplug(1)  # StopTxOnEVSideDisconnect is true by default
    end = await ended(csms201)
    assert (end["triggerReason"], end["transactionInfo"]["stoppedReason"]) == (
        "EVCommunicationLost", "EVDisconnected")
    assert end["transactionInfo"]["chargingState"] == "Idle"


async def test_TC_E_26_CS_ev_side_disconnect_suspends_then_resumes(csms201, make_agent201):
    agent = await make_agent201(defaults={"TxCtrlr.TxStopPoint": "Authorized",
                                          "TxCtrlr.StopTxOnEVSideDisconnect": False})
    await online201(agent, csms201)
    await charging201(agent, csms201)
    agent.hal.unplug(1)
    lost = await csms201.wait_for("TransactionEvent", station_id="CP1",
                                  predicate=lambda p: p["triggerReason"]
                                  == "EVCommunicationLost")
    assert lost["eventType"] == "Updated"
    assert lost["transactionInfo"]["chargingState"] == "Idle"
    await csms201.wait_for("StatusNotification", station_id="CP1", count=2,
                           predicate=lambda p: p["connectorStatus"] == "Available")
    agent.hal.plug(1)
    await state(csms201, "Charging", count=2)
    events = tx_events(csms201)
    assert summary(events)[-2:] == [("Updated", "CablePluggedIn", "EVConnected"),
                                    ("Updated", "ChargingStateChanged", "Charging")]
    assert tx_events(csms201, eventType="Ended") == []


async def test_TC_E_22_CS_stop_point_energy_transfer_ends_when_the_ev_pauses(
        csms201, make_agent201):
    agent = await make_agent201(defaults={"TxCtrlr.TxStopPoint": "EnergyTransfer"})
    await online201(agent, csms201)
    await charging201(agent, csms201)
    agent.hal.set_ev_state(1, "B")
    end = await ended(csms201)
    assert end["triggerReason"] == "ChargingStateChanged"
    assert end["transactionInfo"]["stoppedReason"] == "StoppedByEV"


async def test_TC_E_16_CS_invalid_id_in_transaction_response_deauthorizes(csms201,
                                                                         make_agent201):
    agent = await make_agent201(defaults={"LocalPreAuthorize": True})
    link = await online201(agent, csms201)
    await link.call("SendLocalList", {"versionNumber": 1, "updateType": "Full",
                                      "localAuthorizationList": [{
                                          "idToken": {"idToken": "OLD", "type": "ISO14443"},
                                          "idTokenInfo": {"status": "Accepted"}}]})
    csms201.authorize = {"OLD": "Invalid"}
    agent.hal.plug(1)
    agent.hal.tap("OLD")
    end = await ended(csms201)
    assert end["triggerReason"] == "Deauthorized"
    assert end["transactionInfo"]["stoppedReason"] == "DeAuthorized"
    assert csms201.messages("CP1", "Authorize") == [], "local pre-authorization: no round trip"
    assert agent.storage.local_list_get("OLD") is not None


# ---------------------------------------------------------------- E12-E14 delivery


async def test_TC_E_40_43_CS_offline_events_are_queued_and_flagged(csms201, make_agent201):
    agent = await make_agent201()
    await online201(agent, csms201)
    started = await charging201(agent, csms201)
    await csms201.pause()
    # Local stop while offline: the same card, known without a round trip.
    assert await agent.station.present_token(Token("TAG1")) == "stopped"
    agent.hal.unplug(1)
    await asyncio.wait_for(agent.station.settled(), 5)
    assert agent.storage.outbox_count() >= 1
    await csms201.resume()
    end = await ended(csms201, t=15)
    assert end["offline"] is True
    assert end["transactionInfo"]["transactionId"] == \
        started["transactionInfo"]["transactionId"]
    assert end["triggerReason"] == "StopAuthorized"
    events = tx_events(csms201)
    assert [e["seqNo"] for e in events] == list(range(len(events)))


async def test_power_loss_ends_the_transaction_with_continuing_seq_no(csms201, make_agent201):
    agent = await make_agent201()
    await online201(agent, csms201)
    started = await charging201(agent, csms201)
    sent = len(tx_events(csms201))
    crash(agent)
    await agent.stop()
    again = await make_agent201()
    await online201(again, csms201)
    end = await ended(csms201)
    assert end["transactionInfo"]["transactionId"] == \
        started["transactionInfo"]["transactionId"]
    assert (end["triggerReason"], end["transactionInfo"]["stoppedReason"]) == (
        "AbnormalCondition", "PowerLoss")
    assert end["seqNo"] == sent, "seqNo continues from the journal, no gap, no repeat"
    assert end["offline"] is True
    await asyncio.wait_for(again.adapter.outbox.idle.wait(), 5)
    assert again.storage.tx_open() == []
    assert len(tx_events(csms201, eventType="Ended")) == 1


async def test_power_loss_while_offline_reports_started_then_ended(csms201, make_agent201):
    agent = await make_agent201(defaults={"AuthCtrlr.OfflineTxForUnknownIdEnabled": True})
    await online201(agent, csms201)
    await csms201.pause()
    closed = asyncio.Event()
    agent.station.traces.append(
        lambda evse, what, d: closed.set() if what == "contactor" and d["closed"] else None)
    agent.hal.plug(1)
    agent.hal.tap("NEW1")
    await asyncio.wait_for(closed.wait(), 5)
    crash(agent)
    await agent.stop()
    await csms201.resume()
    again = await make_agent201()
    await online201(again, csms201)
    await ended(csms201)
    events = tx_events(csms201)
    assert [e["seqNo"] for e in events] == list(range(len(events)))
    assert (events[0]["eventType"], events[-1]["eventType"]) == ("Started", "Ended")
    assert all(e["offline"] for e in events)
    assert events[-1]["transactionInfo"]["stoppedReason"] == "PowerLoss"


async def test_TC_E_28_30_32_CS_get_transaction_status(csms201, make_agent201):
    agent = await make_agent201()
    link = await online201(agent, csms201)
    unknown = await link.call("GetTransactionStatus", {"transactionId": "no-such-tx"})
    assert unknown == {"ongoingIndicator": False, "messagesInQueue": False}
    started = await charging201(agent, csms201)
    tx_id = started["transactionInfo"]["transactionId"]
    ongoing = await link.call("GetTransactionStatus", {"transactionId": tx_id})
    assert ongoing == {"ongoingIndicator": True, "messagesInQueue": False}
    agent.hal.unplug(1)
    await ended(csms201)
    await asyncio.wait_for(agent.adapter.outbox.idle.wait(), 5)
    done = await link.call("GetTransactionStatus", {"transactionId": tx_id})
    assert done == {"ongoingIndicator": False, "messagesInQueue": False}
    assert await link.call("GetTransactionStatus", {}) == {"messagesInQueue": False}


async def test_TC_E_29_33_CS_get_transaction_status_with_messages_in_queue(
        csms201, make_agent201):
    agent = await make_agent201(defaults={"TransactionMessageRetryInterval": 60})
    link = await online201(agent, csms201)
    started = await charging201(agent, csms201)

    def refuse(link_, payload):
        raise CsmsCallError("InternalError", "try again later")

    csms201.overrides["TransactionEvent"] = refuse
    agent.hal.unplug(1)
    await csms201.wait_for("TransactionEvent", station_id="CP1",
                           predicate=lambda p: p["eventType"] == "Ended")
    tx_id = started["transactionInfo"]["transactionId"]
    status = await link.call("GetTransactionStatus", {"transactionId": tx_id})
    assert status == {"ongoingIndicator": False, "messagesInQueue": True}
    assert (await link.call("GetTransactionStatus", {}))["messagesInQueue"] is True
    await csms201.pause()  # no point in flushing a refused queue at the agent's stop
    await csms201.wait_disconnect("CP1")


async def test_TC_E_50_CS_retries_then_drops_after_message_attempts(csms201, make_agent201):
    agent = await make_agent201(defaults={
        "OCPPCommCtrlr.MessageAttempts[TransactionEvent]": 2,
        "OCPPCommCtrlr.MessageAttemptInterval[TransactionEvent]": 1})
    await online201(agent, csms201)
    calls = []

    def refuse(link_, payload):
        calls.append(payload["seqNo"])
        raise CsmsCallError("InternalError", "refused for the test")

    csms201.overrides["TransactionEvent"] = refuse
    agent.hal.plug(1)
    agent.hal.tap("TAG1")
    # The Started is refused twice (1 s apart), then given up; later events still flow.
    await csms201.wait_for("TransactionEvent", station_id="CP1", count=3, timeout=10)
    assert calls[:2] == [0, 0] and calls[2] == 1
    dropped = agent.storage.outbox_dropped()
    assert [d["payload"]["seqNo"] for d in dropped if d["action"] == "TransactionEvent"] == [0]
    await csms201.pause()
    await csms201.wait_disconnect("CP1")


# ---------------------------------------------------------------- J sampled meter values


async def test_TC_J_07_09_10_CS_sampled_meter_values(csms201, make_agent201):
    measurands = "Energy.Active.Import.Register,Power.Active.Import,Current.Import,Voltage"
    agent = await make_agent201(defaults={
        "SampledDataCtrlr.TxUpdatedInterval": 1,
        "SampledDataCtrlr.TxUpdatedMeasurands": measurands,
        "SampledDataCtrlr.TxStartedMeasurands": "Energy.Active.Import.Register,Voltage",
        "SampledDataCtrlr.TxEndedInterval": 1,
        "SampledDataCtrlr.TxEndedMeasurands": "Energy.Active.Import.Register"})
    await online201(agent, csms201)
    started = await charging201(agent, csms201)
    begin = started["meterValue"][0]["sampledValue"]
    assert {v["measurand"] for v in begin} == {"Energy.Active.Import.Register", "Voltage"}
    assert {v["context"] for v in begin} == {"Transaction.Begin"}
    periodic = await csms201.wait_for(
        "TransactionEvent", station_id="CP1", timeout=5,
        predicate=lambda p: p["triggerReason"] == "MeterValuePeriodic" and any(
            v["measurand"] == "Power.Active.Import" and v["value"] > 0
            for v in p["meterValue"][0]["sampledValue"]))
    values = periodic["meterValue"][0]["sampledValue"]
    assert {v["measurand"] for v in values} == set(measurands.split(","))
    assert {v["context"] for v in values} == {"Sample.Periodic"}
    assert {v["phase"] for v in values if v["measurand"] == "Voltage"} == {
        "L1-N", "L2-N", "L3-N"}
    power = next(v for v in values if v["measurand"] == "Power.Active.Import")
    assert power["unitOfMeasure"] == {"unit": "W"} and power["value"] > 0
    await csms201.wait_for("TransactionEvent", station_id="CP1", count=2, timeout=5,
                           predicate=lambda p: p["triggerReason"] == "MeterValuePeriodic")
    agent.hal.unplug(1)
    end = await ended(csms201)
    contexts = [v["context"] for mv in end["meterValue"] for v in mv["sampledValue"]]
    assert "Sample.Periodic" in contexts and contexts[-1] == "Transaction.End"


async def test_TC_C_17_CS_invalid_id_without_stop_suspends_the_energy(csms201, make_agent201):
    agent = await make_agent201(defaults={"LocalPreAuthorize": True,
                                          "TxCtrlr.StopTxOnInvalidId": False})
    link = await online201(agent, csms201)
    await link.call("SendLocalList", {"versionNumber": 1, "updateType": "Full",
                                      "localAuthorizationList": [{
                                          "idToken": {"idToken": "OLD", "type": "ISO14443"},
                                          "idTokenInfo": {"status": "Accepted"}}]})
    csms201.authorize = {"OLD": "Invalid"}
    agent.hal.plug(1)
    agent.hal.tap("OLD")
    suspended = await state(csms201, "SuspendedEVSE")
    assert suspended["eventType"] == "Updated"
    assert not agent.hal.evses[1].contactor.commanded_closed
    assert tx_events(csms201, eventType="Ended") == [], "the transaction goes on"
