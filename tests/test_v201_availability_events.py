"""2.0.1 G: AvailabilityState changes of Connector, EVSE and ChargingStation as NotifyEvent.

The test cases of block G (TC_G_02/04/06/08/17/18/19/21_CS) validate a NotifyEvent with
trigger Delta, the component and ``variable.name`` AvailabilityState next to the
StatusNotification; the errata (2.8.1) add the same for Reserved (H01.FR.20/23/24).  These
tests check which components are reported when, and that nothing is reported twice (one
message per change, none for a TriggerMessage or a state that did not change).
"""

from __future__ import annotations

from typing import Any

import pytest

from agent.testing.csms import TestCsms
from tests.conftest import VERSIONS_201_PLUS, eventually, online201

TWO_CONNECTORS = "evses: [{id: 1, connectors: [{id: 1, type: cType2}, {id: 2, type: cCCS2}]}]"
Entry = tuple[str, int | None, int | None, str]


def state_events(csms: TestCsms, since: int = 0) -> list[list[Entry]]:
    """The AvailabilityState NotifyEvents since log index ``since``: per message, its
    (component, evse, connector, actualValue) entries in order."""
    out = []
    for m in csms.log[since:]:
        if m.kind != "CALL" or m.direction != "cs->csms" or m.action != "NotifyEvent":
            continue
        entries = [(e["component"]["name"], e["component"].get("evse", {}).get("id"),
                    e["component"].get("evse", {}).get("connectorId"), e["actualValue"])
                   for e in m.payload["eventData"]
                   if e["variable"]["name"] == "AvailabilityState"]
        if entries:
            out.append(entries)
    return out


def raw_events(csms: TestCsms) -> list[dict[str, Any]]:
    return [e for p in csms.messages("CP1", "NotifyEvent") for e in p["eventData"]
            if e["variable"]["name"] == "AvailabilityState"]


async def change(link: Any, status: str, evse: dict | None = None) -> dict:
    request: dict = {"operationalStatus": status}
    if evse is not None:
        request["evse"] = evse
    return await link.call("ChangeAvailability", request)


@pytest.mark.parametrize("v2", VERSIONS_201_PLUS)
async def test_TC_G_18_19_21_CS_boot_reports_every_component_in_one_event(
        csms201, make_agent201):
    agent = await make_agent201(evses=2)
    await online201(agent, csms201)
    await eventually(lambda: state_events(csms201), "the boot's NotifyEvent")
    assert state_events(csms201) == [[
        ("Connector", 1, 1, "Available"), ("Connector", 2, 1, "Available"),
        ("EVSE", 1, None, "Available"), ("EVSE", 2, None, "Available"),
        ("ChargingStation", None, None, "Available")]]
    event = raw_events(csms201)[0]
    assert (event["trigger"], event["eventNotificationType"]) == ("Delta",
                                                                  "HardWiredNotification")
    assert event["component"] == {"name": "Connector", "evse": {"id": 1, "connectorId": 1}}
    ids = [e["eventId"] for e in raw_events(csms201)]
    assert len(set(ids)) == len(ids)


async def test_TC_G_01_02_CS_plug_and_unplug_one_event_each(csms201, make_agent201):
    agent = await make_agent201()
    await online201(agent, csms201)
    await eventually(lambda: state_events(csms201), "the boot's NotifyEvent")
    mark = len(csms201.log)
    agent.hal.plug(1)
    await eventually(lambda: state_events(csms201, mark) == [
        [("Connector", 1, 1, "Occupied"), ("EVSE", 1, None, "Occupied")]], "Occupied")
    mark = len(csms201.log)
    agent.hal.unplug(1)
    await eventually(lambda: state_events(csms201, mark) == [
        [("Connector", 1, 1, "Available"), ("EVSE", 1, None, "Available")]], "Available")
    # A TriggerMessage(StatusNotification) is a StatusNotification only: nothing changed.
    link = await csms201.wait_station("CP1")
    mark = len(csms201.log)
    before = len(csms201.messages("CP1", "StatusNotification"))
    res = await link.call("TriggerMessage", {"requestedMessage": "StatusNotification",
                                             "evse": {"id": 1, "connectorId": 1}})
    assert res["status"] == "Accepted"
    await csms201.wait_for("StatusNotification", station_id="CP1", count=before + 1)
    await agent.station.quiet()
    assert state_events(csms201, mark) == []


async def test_TC_G_03_04_CS_evse_inoperative_and_back(csms201, make_agent201):
    agent = await make_agent201(evses=2)
    link = await online201(agent, csms201)
    await eventually(lambda: state_events(csms201), "the boot's NotifyEvent")
    mark = len(csms201.log)
    assert (await change(link, "Inoperative", {"id": 2}))["status"] == "Accepted"
    await eventually(lambda: state_events(csms201, mark) == [
        [("Connector", 2, 1, "Unavailable"), ("EVSE", 2, None, "Unavailable")]],
        "EVSE 2 and its connector Unavailable, the station still Available")
    mark = len(csms201.log)
    assert (await change(link, "Operative", {"id": 2}))["status"] == "Accepted"
    await eventually(lambda: state_events(csms201, mark) == [
        [("Connector", 2, 1, "Available"), ("EVSE", 2, None, "Available")]], "back")


async def test_TC_G_05_06_CS_station_inoperative_and_back(csms201, make_agent201):
    agent = await make_agent201()
    link = await online201(agent, csms201)
    await eventually(lambda: state_events(csms201), "the boot's NotifyEvent")
    mark = len(csms201.log)
    assert (await change(link, "Inoperative"))["status"] == "Accepted"
    await eventually(lambda: state_events(csms201, mark) == [
        [("Connector", 1, 1, "Unavailable"), ("EVSE", 1, None, "Unavailable"),
         ("ChargingStation", None, None, "Unavailable")]], "everything Unavailable")
    mark = len(csms201.log)
    assert (await change(link, "Operative"))["status"] == "Accepted"
    await eventually(lambda: state_events(csms201, mark) == [
        [("Connector", 1, 1, "Available"), ("EVSE", 1, None, "Available"),
         ("ChargingStation", None, None, "Available")]], "everything Available")


async def test_TC_G_07_08_CS_one_connector_only_the_connector(csms201, make_agent201):
    """The EVSE stays Available through its other connector: only the connector's state
    is news."""
    agent = await make_agent201(extra=TWO_CONNECTORS)
    link = await online201(agent, csms201)
    await eventually(lambda: state_events(csms201), "the boot's NotifyEvent")
    mark = len(csms201.log)
    assert (await change(link, "Inoperative", {"id": 1, "connectorId": 2}))["status"] == \
        "Accepted"
    await eventually(lambda: state_events(csms201, mark) == [
        [("Connector", 1, 2, "Unavailable")]], "connector 2 Unavailable")
    mark = len(csms201.log)
    assert (await change(link, "Operative", {"id": 1, "connectorId": 2}))["status"] == \
        "Accepted"
    await eventually(lambda: state_events(csms201, mark) == [
        [("Connector", 1, 2, "Available")]], "connector 2 Available")
    assert len(csms201.violations) == 0
