"""Regression tests for what the hardware-faults campaign (tests/soak/hardware_faults.py) found.

The campaign plays every fault on every version and runs in quick mode in
tests/test_campaigns.py; each test here pins one finding on the version it was found on.
"""

from __future__ import annotations

import math

from agent.core.station import implausible
from hal.interfaces import FaultKind, MeterReading
from tests.conftest import charging, charging201, eventually, online, online201, tx_events


def test_a_reading_no_meter_can_give_is_refused():
    """hardware_faults: a negative, backwards-running or NaN energy register went up as the
    truth (billed, journalled as meterStop, NaN even sent as invalid JSON)."""
    good = MeterReading(energy_import_wh=1_000_000.0, power_w=11_040.0,
                        voltage_v=(230.0,) * 3, current_a=(16.0,) * 3)
    assert implausible(good, None) is None
    assert implausible(good, MeterReading(energy_import_wh=1_000_000.6)) is None  # rounding
    assert "negative" in implausible(MeterReading(energy_import_wh=-5000.0), None)
    assert "went back 1000000 -> 900000" in implausible(
        MeterReading(energy_import_wh=900_000.0), good)
    assert implausible(MeterReading(energy_import_wh=math.nan), None)
    assert implausible(MeterReading(energy_import_wh=1.0, power_w=math.inf), None)
    assert implausible(MeterReading(energy_import_wh=1.0, current_a=(math.nan,)), None)


async def test_a_meter_register_running_backwards_stops_the_energy_until_it_is_right(
        csms, make_agent):
    """hardware_faults (meter_backwards): the register read lower than before mid-session;
    now the EVSE is Faulted (PowerMeterFailure), the contactor opens, the session goes on and
    charges again once the register reads plausibly; meterStop never undercuts meterStart."""
    agent = await make_agent(start=False)
    agent.hal.sims[1].energy_wh = 1_000_000.0  # a meter that has counted 1 MWh already
    await agent.start()
    await online(agent, csms)
    start = await charging(agent, csms)
    evse, sim = agent.station.evses[1], agent.hal.sims[1]
    await eventually(lambda: evse.hw.contactor.commanded_closed, "charging")
    sim.energy_wh -= 100_000.0  # the register jumps 100 kWh back
    await agent.station.sample(evse)
    assert FaultKind.METER in evse.faults
    assert not evse.hw.contactor.commanded_closed and evse.offered_a == 0
    status = await csms.wait_for("StatusNotification", station_id="CP1",
                                 predicate=lambda p: p["status"] == "Faulted")
    assert status["errorCode"] == "PowerMeterFailure" and "went back" in status["info"]
    sim.energy_wh += 100_000.0
    await agent.station.sample(evse)
    assert FaultKind.METER not in evse.faults
    await eventually(lambda: evse.hw.contactor.commanded_closed, "charging again")
    agent.hal.unplug(1)
    stop = await csms.wait_for("StopTransaction", station_id="CP1")
    assert stop["meterStop"] >= start["meterStart"]


async def test_16_a_faulted_pilot_is_other_error_never_ev_communication_error(csms, make_agent):
    """hardware_faults (pilot_e / pilot_f / diode): a pilot fault went out as Faulted with
    EVCommunicationError, which 1.6 4.9 allows only with Preparing, SuspendedEV,
    SuspendedEVSE and Finishing."""
    agent = await make_agent()
    await online(agent, csms)
    await charging(agent, csms)
    agent.hal.fail_diode(1)  # as the direct-pilot driver reports its diode check
    faulted = await csms.wait_for("StatusNotification", station_id="CP1",
                                  predicate=lambda p: p["status"] == "Faulted")
    assert faulted["errorCode"] == "OtherError" and faulted["vendorErrorCode"] == "pilot"
    assert faulted["info"].startswith("diode check failed")
    agent.hal.clear_fault(1, FaultKind.PILOT)
    await csms.wait_for("StatusNotification", station_id="CP1",
                        predicate=lambda p: p["connectorId"] == 1
                        and p["errorCode"] == "NoError")
    assert not [p for p in csms.messages("CP1", "StatusNotification")
                if p["errorCode"] == "EVCommunicationError" and p["status"] == "Faulted"]


async def test_welded_contacts_keep_the_plug_locked_until_the_fault_clears(csms, make_agent):
    """hardware_faults (welded): the session ended, the contactor was found welded, and the
    plug was unlocked anyway: the driver could pull it out of a live socket. Now the lock holds
    (UnlockConnector answers UnlockFailed) until the welded fault clears."""
    agent = await make_agent()
    link = await online(agent, csms)
    await charging(agent, csms)
    evse = agent.station.evses[1]
    lock = evse.hw.lock
    assert lock is not None and lock.locked
    agent.hal.inject_fault(1, FaultKind.WELDED)  # shows when the contactor is told to open
    agent.hal.tap("TAG1")  # the driver ends the session
    await csms.wait_for("StopTransaction", station_id="CP1")
    await eventually(lambda: FaultKind.WELDED in evse.faults, "welded found")
    assert lock.locked and evse.hw.contactor.feedback_closed() is True
    assert (await link.call("UnlockConnector", {"connectorId": 1}))["status"] == "UnlockFailed"
    assert lock.locked
    agent.hal.clear_fault(1, FaultKind.WELDED)
    await eventually(lambda: not lock.locked, "unlocked once the contacts opened")


async def test_2x_a_fault_that_stops_the_energy_is_an_abnormal_condition(csms201, make_agent201):
    """hardware_faults (every blocking fault mid-transaction): the TransactionEvent Updated
    said ChargingStateChanged; a fault is TriggerReason AbnormalCondition. Its clearing
    (energy again) is a plain ChargingStateChanged."""
    agent = await make_agent201()
    await online201(agent, csms201)
    await charging201(agent, csms201)
    agent.hal.inject_fault(1, FaultKind.GROUND_FAILURE)
    suspended = await csms201.wait_for(
        "TransactionEvent", station_id="CP1",
        predicate=lambda p: p["transactionInfo"].get("chargingState") == "SuspendedEVSE")
    assert suspended["eventType"] == "Updated"
    assert suspended["triggerReason"] == "AbnormalCondition"
    agent.hal.clear_fault(1, FaultKind.GROUND_FAILURE)
    again = await csms201.wait_for(
        "TransactionEvent", station_id="CP1", count=2,
        predicate=lambda p: p["transactionInfo"].get("chargingState") == "Charging")
    assert again["triggerReason"] == "ChargingStateChanged"
    assert [e["triggerReason"] for e in tx_events(csms201)].count("AbnormalCondition") == 1


SITE = """
site:
  max_current_a: 32
  grid_meter: {type: mock}
  fallback_current_a: 10
  silent_samples: 2
"""


async def test_a_silent_grid_meter_is_reported_as_the_site_on_its_fallback(csms, make_agent):
    """hardware_faults (grid_meter_gone): the site fell back to its fallback limit and only
    the log said so. Now the station reports it (1.6 connector 0 PowerMeterFailure, 2.x a
    NotifyEvent of the station) and clears it when the meter answers again."""
    agent = await make_agent(extra=SITE)
    await online(agent, csms)
    await charging(agent, csms)
    agent.hal.grid_meter_silent = True
    for _ in range(2):
        await agent.load.step()
    assert agent.load.mode == "fallback"
    await eventually(lambda: agent.station.evses[1].offered_a == 10, "the fallback offered")
    warn = await csms.wait_for("StatusNotification", station_id="CP1",
                               predicate=lambda p: p["connectorId"] == 0
                               and p["errorCode"] == "PowerMeterFailure")
    assert warn["status"] == "Available" and "fallback" in warn["info"]
    def fine(p: dict) -> bool:
        return p["connectorId"] == 0 and p["errorCode"] == "NoError"

    before = len([p for p in csms.messages("CP1", "StatusNotification") if fine(p)])
    agent.hal.grid_meter_silent = False
    await agent.load.step()
    await csms.wait_for("StatusNotification", station_id="CP1", count=before + 1,
                        predicate=fine)
    assert agent.station.station_faults == {} and agent.load.mode == "grid_meter"
