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


def test_a_csms_time_slightly_behind_never_makes_a_timestamp_go_back():
    """power_cuts: after a reconnection the BootNotification's currentTime, a few ms behind
    the station (the answer's latency, millisecond rounding), stepped the clock back, and the
    next TransactionEvent of a running transaction was stamped before the previous one. The
    correction is adopted (the clock, its timers and intervals run on the CSMS's time) but
    timestamps hold at the last one handed out until it catches up; a real correction back is
    followed at once."""
    from datetime import UTC, datetime, timedelta

    from agent.clock import MAX_BACKWARD_HELD_S, FakeClock, parse_iso

    clock = FakeClock()  # a plausible system clock: real times are handed out before a sync
    first = parse_iso(clock.stamp())
    before = clock.wall()
    correction = clock.sync(datetime.fromtimestamp(before, UTC) - timedelta(milliseconds=40))
    assert correction == pytest.approx(-0.04, abs=1e-6)
    assert clock.wall() == pytest.approx(before - 0.04, abs=1e-6), "the correction is adopted"
    assert parse_iso(clock.stamp()) == first, "a timestamp went back in time"
    clock._mono += 0.03  # still behind the last timestamp: held
    assert parse_iso(clock.now_iso()) == first
    clock._mono += 0.02  # past it: the CSMS's time from now on
    later = parse_iso(clock.stamp())
    assert later > first
    assert later.timestamp() == pytest.approx(before + 0.01, abs=1e-3)
    # Ahead is always applied at once, and so is a real correction back.
    now = clock.wall()
    assert clock.sync(datetime.fromtimestamp(now + 0.04, UTC)) == pytest.approx(0.04, abs=1e-3)
    now = clock.wall()
    clock.sync(datetime.fromtimestamp(now - 10 * MAX_BACKWARD_HELD_S, UTC))
    assert parse_iso(clock.stamp()).timestamp() == pytest.approx(
        now - 10 * MAX_BACKWARD_HELD_S, abs=1e-3)
