"""2.0.1 B11/B12: Reset of one EVSE (evseId), against the strict test CSMS.

The EVSE alone restarts (the mock HAL's board reset, the core's session and outputs): its
transaction ends with ResetCommand / ImmediateReset, it is reported Unavailable while it
restarts and comes back in its own availability; the rest of the station goes on charging and
the agent does not restart.
"""

from __future__ import annotations

import asyncio

from agent.testing.csms import TestCsms
from tests.conftest import charging201, eventually, on_versions_201_plus, online201, tx_events

# Every test here runs on 2.0.1 and 2.1 (2.1 carries these blocks over).
v2 = on_versions_201_plus()


def statuses(csms: TestCsms, evse_id: int, since: int = 0) -> list[str]:
    return [m.payload["connectorStatus"] for m in csms.log[since:]
            if m.kind == "CALL" and m.action == "StatusNotification"
            and m.direction == "cs->csms" and m.payload["evseId"] == evse_id]


async def test_TC_B_25_CS_reset_one_evse_without_transaction(csms201, make_agent201):
    agent = await make_agent201(evses=2)
    link = await online201(agent, csms201)
    mark = len(csms201.log)
    res = await link.call("Reset", {"type": "OnIdle", "evseId": 1})
    assert res == {"status": "Accepted"}
    await eventually(lambda: statuses(csms201, 1, mark) == ["Unavailable", "Available"],
                     "EVSE 1 Unavailable during its reset, then Available")
    assert agent.hal.sims[1].resets == 1 and agent.hal.sims[2].resets == 0
    assert statuses(csms201, 2, mark) == [], "EVSE 2 is not touched"
    assert not agent._stop.is_set(), "the station does not restart"
    # It works as before: a session starts on it.
    await charging201(agent, csms201, "TAG1", evse=1)


async def test_TC_B_26_CS_reset_one_evse_on_idle_waits_for_its_transaction(csms201,
                                                                           make_agent201):
    agent = await make_agent201(evses=2)
    link = await online201(agent, csms201)
    await charging201(agent, csms201, "TAG1", evse=1)
    res = await link.call("Reset", {"type": "OnIdle", "evseId": 1})
    assert res == {"status": "Scheduled"}
    await agent.station.quiet()
    assert agent.hal.evses[1].contactor.commanded_closed, "scheduled: the session goes on"
    assert agent.hal.sims[1].resets == 0
    mark = len(csms201.log)
    agent.hal.tap("TAG1")  # StopAuthorized
    ended = await csms201.wait_for("TransactionEvent", station_id="CP1",
                                   predicate=lambda p: p["eventType"] == "Ended")
    assert ended["triggerReason"] == "StopAuthorized"
    await eventually(lambda: agent.hal.sims[1].resets == 1, "the reset after the transaction")
    await eventually(lambda: statuses(csms201, 1, mark)[-2:] == ["Unavailable", "Occupied"],
                     "Unavailable while resetting, then the EV still plugged in")
    assert not agent._stop.is_set()


async def test_TC_B_27_CS_reset_one_evse_immediate_ends_only_its_transaction(csms201,
                                                                             make_agent201):
    agent = await make_agent201(evses=2)
    link = await online201(agent, csms201)
    first = await charging201(agent, csms201, "TAG1", evse=1)
    second = await charging201(agent, csms201, "TAG2", evse=2)
    mark = len(csms201.log)
    res = await link.call("Reset", {"type": "Immediate", "evseId": 1})
    assert res == {"status": "Accepted"}
    ended = await csms201.wait_for("TransactionEvent", station_id="CP1",
                                   predicate=lambda p: p["eventType"] == "Ended")
    assert ended["transactionInfo"]["transactionId"] == \
        first["transactionInfo"]["transactionId"]
    assert ended["triggerReason"] == "ResetCommand"
    assert ended["transactionInfo"]["stoppedReason"] == "ImmediateReset"
    assert ended["transactionInfo"]["chargingState"] == "EVConnected"
    await eventually(lambda: statuses(csms201, 1, mark) == ["Unavailable", "Occupied"],
                     "Unavailable while resetting, then Occupied (EV still plugged in)")
    await agent.station.quiet()
    assert not agent.hal.evses[1].contactor.commanded_closed
    assert agent.station.evses[1].tx is None
    assert agent.hal.evses[2].contactor.commanded_closed, "EVSE 2 charges on"
    assert agent.station.evses[2].tx is not None
    assert len(tx_events(csms201, eventType="Ended")) == 1
    assert second["transactionInfo"]["transactionId"] == \
        agent.station.evses[2].tx.local_id
    # After the EV left, EVSE 1 takes a new session.
    agent.hal.unplug(1)
    await agent.station.quiet()
    await charging201(agent, csms201, "TAG3", evse=1)
    assert not agent._stop.is_set()


async def test_reset_of_an_inoperative_evse_brings_it_back_inoperative(csms201,
                                                                       make_agent201):
    agent = await make_agent201()
    link = await online201(agent, csms201)
    res = await link.call("ChangeAvailability", {"operationalStatus": "Inoperative",
                                                 "evse": {"id": 1}})
    assert res["status"] == "Accepted"
    await csms201.wait_for("StatusNotification", station_id="CP1",
                           predicate=lambda p: p["connectorStatus"] == "Unavailable")
    assert (await link.call("Reset", {"type": "Immediate", "evseId": 1}))["status"] == \
        "Accepted"
    await eventually(lambda: agent.hal.sims[1].resets == 1, "the EVSE reset")
    await agent.station.quiet()
    assert not agent.station.evses[1].operative
    assert agent.station.evses[1].snapshot().status.value == "Unavailable"
    await asyncio.wait_for(agent.adapter.outbox.idle.wait(), 5)


async def test_allow_reset_is_reported_per_evse(csms201, make_agent201):
    agent = await make_agent201(evses=2)
    link = await online201(agent, csms201)
    res = await link.call("GetVariables", {"getVariableData": [
        {"component": {"name": "EVSE", "evse": {"id": e}},
         "variable": {"name": "AllowReset"}} for e in (1, 2)]})
    assert [r["attributeValue"] for r in res["getVariableResult"]] == ["true", "true"]
    assert agent.station.evses[1].operative
