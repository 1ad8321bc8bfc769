"""Regression tests for what the reliability campaigns (tests/soak/, issue 18) found.

Each test names the campaign that found the failure; the campaign itself runs in quick mode in
tests/test_campaigns.py.
"""

from __future__ import annotations

import asyncio

import pytest

from agent.ocpp.v201.metering import Metering
from agent.ocpp.v201.transactions import Transactions
from tests.conftest import charging201, online201, tx_events

pytestmark = pytest.mark.asyncio


def _energy(event: dict, context: str) -> float:
    for mv in event.get("meterValue", []):
        for sv in mv["sampledValue"]:
            if sv.get("context") == context and sv.get(
                    "measurand", "Energy.Active.Import.Register") == \
                    "Energy.Active.Import.Register":
                return float(sv["value"])
    raise AssertionError(f"no {context} energy register in {event}")


async def test_power_loss_ended_never_predates_or_undercuts_an_updated_event(
        csms201, make_agent201):
    """power_cuts: on 2.0.1 the PowerLoss Ended was stamped at the last journalled reading,
    which could be older (and lower) than a periodic Updated the CSMS already had; events of
    one transaction then went back in time and energy."""
    agent = await make_agent201()
    await online201(agent, csms201)
    await charging201(agent, csms201)
    evse = agent.station.evses[1]
    agent.hal.sims[1].energy_wh += 50.0  # the EV drew 50 Wh since the last journalled reading
    await agent.station.sample(evse)
    block = agent.adapter.block(Transactions)
    meter = agent.adapter.block(Metering).meter(1, ["Energy.Active.Import.Register"],
                                                "Sample.Periodic")
    block.updated(evse.tx, "MeterValuePeriodic", meter=meter)
    agent.reset_kind = "simulated power cut"  # the next stop leaves the transaction open
    await agent.stop()
    again = await make_agent201()
    await online201(again, csms201)
    await csms201.wait_for("TransactionEvent", station_id="CP1",
                           predicate=lambda p: p["eventType"] == "Ended")
    events = tx_events(csms201)
    periodic = [e for e in events if e["triggerReason"] == "MeterValuePeriodic"][-1]
    end = events[-1]
    assert end["transactionInfo"]["stoppedReason"] == "PowerLoss"
    assert end["timestamp"] >= periodic["timestamp"], (periodic, end)
    assert _energy(end, "Transaction.End") >= _energy(periodic, "Sample.Periodic")
    stamps = [e["timestamp"] for e in events]
    assert stamps == sorted(stamps)
    await asyncio.wait_for(again.adapter.outbox.idle.wait(), 5)
