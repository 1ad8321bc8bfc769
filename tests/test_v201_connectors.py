"""2.0.1 G: availability per connector, on an EVSE with two connectors (a socket and a cable).

The station, each EVSE and each connector keep their own Operative / Inoperative state
(G03/G04); a connector can be used when all three are Operative, and an EVSE feeds one EV at a
time, so while an EV uses one connector the others are Unavailable.  Every state is persisted
and a change that would take the running transaction's connector out of service is Scheduled.
"""

from __future__ import annotations

import asyncio

import pytest

from agent.testing.csms import TestCsms
from tests.conftest import charging201, eventually, on_versions_201_plus, online, online201

# Every test here runs on 2.0.1 and 2.1 (2.1 carries these blocks over).
v2 = on_versions_201_plus()

TWO_CONNECTORS = "evses: [{id: 1, connectors: [{id: 1, type: cType2}, {id: 2, type: cCCS2}]}]"
TWO_EVSES = ("evses: [{id: 1, connectors: [{id: 1}, {id: 2}]}, "
             "{id: 2, connectors: [{id: 1}]}]")


def last_status(csms: TestCsms, evse_id: int, connector_id: int) -> str | None:
    found = [p["connectorStatus"] for p in csms.messages("CP1", "StatusNotification")
             if (p["evseId"], p["connectorId"]) == (evse_id, connector_id)]
    return found[-1] if found else None


def reported(csms: TestCsms, since: int) -> list[tuple[int, int, str]]:
    return [(m.payload["evseId"], m.payload["connectorId"], m.payload["connectorStatus"])
            for m in csms.log[since:] if m.kind == "CALL" and m.direction == "cs->csms"
            and m.action == "StatusNotification"]


async def change(link, status: str, evse: dict | None = None) -> dict:
    request: dict = {"operationalStatus": status}
    if evse is not None:
        request["evse"] = evse
    return await link.call("ChangeAvailability", request)


async def test_boot_reports_every_connector_and_the_device_model_has_both(csms201,
                                                                           make_agent201):
    agent = await make_agent201(extra=TWO_CONNECTORS)
    link = await online201(agent, csms201)
    await eventually(lambda: last_status(csms201, 1, 2) == "Available", "connector 2")
    assert last_status(csms201, 1, 1) == "Available"
    res = await link.call("GetVariables", {"getVariableData": [
        {"component": {"name": "Connector", "evse": {"id": 1, "connectorId": c}},
         "variable": {"name": "ConnectorType"}} for c in (1, 2)]})
    assert [r["attributeValue"] for r in res["getVariableResult"]] == ["cType2", "cCCS2"]


async def test_TC_G_07_08_CS_one_connector_inoperative_the_other_charges(csms201,
                                                                          make_agent201):
    agent = await make_agent201(extra=TWO_CONNECTORS)
    link = await online201(agent, csms201)
    await eventually(lambda: last_status(csms201, 1, 2) == "Available", "boot statuses")
    mark = len(csms201.log)
    assert (await change(link, "Inoperative", {"id": 1, "connectorId": 2}))["status"] == \
        "Accepted"
    await eventually(lambda: reported(csms201, mark) == [(1, 2, "Unavailable")],
                     "only connector 2 reported, Unavailable")
    assert agent.station.evses[1].operative, "the EVSE still charges through connector 1"
    # An EV at the inoperative connector gets no energy, whatever the card.
    agent.hal.plug(1, connector=2)
    agent.hal.tap("TAG1")
    await agent.station.quiet()
    assert not agent.hal.evses[1].contactor.commanded_closed
    assert agent.station.evses[1].tx is None
    agent.hal.unplug(1)
    await agent.station.quiet()
    # Through connector 1 it charges; connector 2 stays Unavailable meanwhile.
    started = await charging201(agent, csms201, "TAG2", evse=1)
    assert started["evse"] == {"id": 1, "connectorId": 1}
    assert last_status(csms201, 1, 1) == "Occupied"
    assert last_status(csms201, 1, 2) == "Unavailable"
    agent.hal.unplug(1)
    await csms201.wait_for("TransactionEvent", station_id="CP1",
                           predicate=lambda p: p["eventType"] == "Ended")
    await eventually(lambda: last_status(csms201, 1, 1) == "Available", "connector 1 free")
    mark = len(csms201.log)
    assert (await change(link, "Operative", {"id": 1, "connectorId": 2}))["status"] == \
        "Accepted"
    await eventually(lambda: reported(csms201, mark) == [(1, 2, "Available")],
                     "connector 2 Available again")


async def test_the_connector_in_use_is_the_one_the_ev_is_plugged_into(csms201, make_agent201):
    agent = await make_agent201(extra=TWO_CONNECTORS)
    await online201(agent, csms201)
    agent.hal.plug(1, connector=2)
    agent.hal.tap("TAG1")
    started = await csms201.wait_for("TransactionEvent", station_id="CP1",
                                     predicate=lambda p: p["eventType"] == "Started")
    assert started["evse"] == {"id": 1, "connectorId": 2}
    await eventually(lambda: last_status(csms201, 1, 2) == "Occupied"
                     and last_status(csms201, 1, 1) == "Unavailable",
                     "connector 2 Occupied, connector 1 Unavailable while the EVSE is in use")


async def test_TC_G_17_CS_connector_of_the_transaction_is_scheduled_the_other_is_not(
        csms201, make_agent201):
    agent = await make_agent201(extra=TWO_CONNECTORS)
    link = await online201(agent, csms201)
    await charging201(agent, csms201, "TAG1", evse=1)
    assert (await change(link, "Inoperative", {"id": 1, "connectorId": 1}))["status"] == \
        "Scheduled"
    assert (await change(link, "Inoperative", {"id": 1, "connectorId": 2}))["status"] == \
        "Accepted"
    assert agent.hal.evses[1].contactor.commanded_closed, "scheduled: the session goes on"
    agent.hal.unplug(1)
    await csms201.wait_for("TransactionEvent", station_id="CP1",
                           predicate=lambda p: p["eventType"] == "Ended")
    await eventually(lambda: last_status(csms201, 1, 1) == "Unavailable",
                     "connector 1 Unavailable once the transaction ended")
    assert last_status(csms201, 1, 2) == "Unavailable"
    assert not agent.station.evses[1].operative


async def test_TC_G_05_06_19_21_CS_levels_are_independent_and_persist(csms201, make_agent201):
    agent = await make_agent201(extra=TWO_EVSES)
    link = await online201(agent, csms201)
    await change(link, "Inoperative", {"id": 2})
    await change(link, "Inoperative", {"id": 1, "connectorId": 2})
    assert (await change(link, "Inoperative"))["status"] == "Accepted"
    await eventually(lambda: all(last_status(csms201, e, c) == "Unavailable"
                                 for e, c in ((1, 1), (1, 2), (2, 1))), "all Unavailable")
    mark = len(csms201.log)
    assert (await change(link, "Operative"))["status"] == "Accepted"
    # TC_G_06_CS: every connector reported; those Inoperative on their own level stay so.
    # A status of the earlier change may still be on its way: judge the last one of each.
    await eventually(lambda: {(e, c): st for e, c, st in reported(csms201, mark)} == {
        (1, 1): "Available", (1, 2): "Unavailable", (2, 1): "Unavailable"},
        "the station Operative again, the EVSE and connector levels as they were")
    assert not agent.station.evses[2].operative
    # The station Inoperative again, then a restart: every level as it was left.
    await change(link, "Inoperative")
    await agent.stop()
    csms201.log.clear()
    again = await make_agent201(extra=TWO_EVSES)
    link = await online201(again, csms201)
    await eventually(lambda: len(csms201.messages("CP1", "StatusNotification")) >= 3,
                     "the boot statuses")
    assert {(p["evseId"], p["connectorId"]): p["connectorStatus"]
            for p in csms201.messages("CP1", "StatusNotification")} == {
        (1, 1): "Unavailable", (1, 2): "Unavailable", (2, 1): "Unavailable"}
    await change(link, "Operative")
    await change(link, "Operative", {"id": 2})
    await eventually(lambda: last_status(csms201, 1, 1) == "Available"
                     and last_status(csms201, 2, 1) == "Available", "Operative again")
    assert last_status(csms201, 1, 2) == "Unavailable"
    res = await link.call("GetVariables", {"getVariableData": [
        {"component": {"name": "Connector", "evse": {"id": 1, "connectorId": c}},
         "variable": {"name": "AvailabilityState"}} for c in (1, 2)]})
    assert [r["attributeValue"] for r in res["getVariableResult"]] == \
        ["Available", "Unavailable"]


async def test_unknown_connector_rejected_and_trigger_per_connector(csms201, make_agent201):
    agent = await make_agent201(extra=TWO_CONNECTORS)
    link = await online201(agent, csms201)
    res = await change(link, "Inoperative", {"id": 1, "connectorId": 3})
    assert res["status"] == "Rejected"
    assert agent.station.evses[1].operative
    await eventually(lambda: last_status(csms201, 1, 2) == "Available", "boot statuses")
    mark = len(csms201.log)
    res = await link.call("TriggerMessage", {"requestedMessage": "StatusNotification",
                                             "evse": {"id": 1, "connectorId": 2}})
    assert res["status"] == "Accepted"
    await eventually(lambda: reported(csms201, mark) == [(1, 2, "Available")],
                     "the one connector asked for")
    res = await link.call("TriggerMessage", {"requestedMessage": "StatusNotification",
                                             "evse": {"id": 1, "connectorId": 3}})
    assert res["status"] == "Rejected"
    await asyncio.wait_for(agent.adapter.outbox.idle.wait(), 5)


async def test_16_connector_0_is_the_station_level_and_operative_lifts_every_level(
        csms, make_agent):
    """1.6 ChangeAvailability(0) "applies to the Charge Point and all Connectors": it is the
    station level (so a 2.0.1 CSMS's station-level state is the same one), and Operative
    clears what was set Inoperative below it."""
    agent = await make_agent(evses=2)
    link = await online(agent, csms)
    assert (await link.call("ChangeAvailability", {"connectorId": 2,
                                                   "type": "Inoperative"}))["status"] == \
        "Accepted"
    assert (await link.call("ChangeAvailability", {"connectorId": 0,
                                                   "type": "Inoperative"}))["status"] == \
        "Accepted"
    evse1 = agent.station.evses[1]
    assert not evse1.operative and not evse1.level_operative("station")
    assert evse1.level_operative("evse"), "EVSE 1's own level untouched"
    assert (await link.call("ChangeAvailability", {"connectorId": 0,
                                                   "type": "Operative"}))["status"] == \
        "Accepted"
    await agent.station.quiet()
    assert all(e.operative for e in agent.station.evses.values())
    await eventually(lambda: any(p["connectorId"] == 2 and p["status"] == "Available"
                                 for p in csms.messages("CP1", "StatusNotification")[-3:]),
                     "connector 2 Available again")


async def test_ctl_plug_into_a_chosen_connector(csms201, make_agent201):
    """``cp-agent ctl plug 1 --connector 2``: the EV is at connector 2, which the transaction
    names; a connector the EVSE has not is refused with the ones it has."""
    agent = await make_agent201(extra=TWO_CONNECTORS)
    await online201(agent, csms201)
    with pytest.raises(ValueError, match=r"EVSE 1 has no connector 3; its connectors are \[1, 2\]"):
        await agent.handle_control({"cmd": "plug", "args": {"evse": 1, "connector": 3}})
    assert not agent.station.evses[1].ev_connected
    await agent.handle_control({"cmd": "plug", "args": {"evse": 1, "connector": 2}})
    agent.hal.tap("TAG1")
    started = await csms201.wait_for("TransactionEvent", station_id="CP1",
                                     predicate=lambda p: p["eventType"] == "Started")
    assert started["evse"] == {"id": 1, "connectorId": 2}
