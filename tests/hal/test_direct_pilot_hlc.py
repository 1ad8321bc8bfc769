"""The direct pilot's 5 % duty cycle for ISO 15118 (IEC 61851-1 Annex A, ISO 15118-3): on
the mock pins and the simulated pilot circuit of test_direct_pilot.py."""

from __future__ import annotations

import pytest
from test_direct_pilot import Rig

from hal.drivers.direct_pilot import DIGITAL_DUTY, duty_for_current
from hal.drivers.evse_boards import EvseWbBoard, PhoenixEvEth
from hal.interfaces import FaultRaised, PilotChanged, PilotState


@pytest.fixture
async def rig(pin_factory, sink):
    r = Rig(pin_factory, sink)
    steps: list[tuple[float, float]] = []  # (seconds, the PWM's duty while waiting)

    async def sleep(seconds: float) -> None:
        steps.append((seconds, r.pin.state))
        await r.pilot.poll_once()  # the loop polls during the step: nothing may be read

    r.pilot._sleep = sleep
    r.steps = steps
    yield r
    await r.close()


async def test_five_percent_while_an_ev_is_plugged_in(rig, events):
    assert rig.pilot.supports_digital_communication
    await rig.pilot.open()
    await rig.pilot.set_digital_communication(True)
    assert rig.pin.state == 1.0  # no EV: steady +12 V
    rig.circuit.state = "B"
    await rig.poll()
    assert rig.pin.state == pytest.approx(DIGITAL_DUTY)  # B2 at 5 %: the EV starts SLAC
    # The offer is the core's: it counts, but the duty cycle no longer tells it.
    await rig.pilot.set_current_limit(16)
    assert rig.pin.state == pytest.approx(DIGITAL_DUTY) and rig.pilot.current_limit == 16
    await rig.pilot.set_current_limit(0)
    assert rig.pin.state == pytest.approx(DIGITAL_DUTY) and rig.pilot.current_limit == 0
    rig.circuit.state = "C"
    await rig.poll()
    assert rig.pilot.pilot_state() == PilotState.C  # read through the 5 % PWM
    await rig.pilot.set_current_limit(16)
    rig.circuit.state = "A"  # unplugged: no 5 % without an EV (the core ends the offer)
    await rig.poll()
    assert rig.pin.state == pytest.approx(duty_for_current(16))
    await rig.pilot.set_current_limit(0)
    assert rig.pin.state == 1.0
    assert not events.of(FaultRaised)


async def test_back_to_nominal_duty_through_state_f(rig, events):
    await rig.pilot.open()
    await rig.pilot.set_digital_communication(True)
    rig.circuit.state = "B"
    await rig.poll()
    await rig.pilot.set_current_limit(13)
    assert rig.pin.state == pytest.approx(DIGITAL_DUTY)
    events.clear()
    rig.circuit.state = "E"  # what a read would see while we hold the line: never reported
    await rig.pilot.set_digital_communication(False)
    assert rig.steps == [(4.0, 0.0)]  # 5 % -> -12 V (state F) for T_step_EF -> nominal
    assert rig.pin.state == pytest.approx(duty_for_current(13))  # the limit's duty again
    assert not events.of(PilotChanged) and rig.pilot.pilot_state() == PilotState.B
    rig.circuit.state = "C"
    await rig.poll()
    assert rig.pilot.pilot_state() == PilotState.C
    # Off without an EV (or without 5 % on the line): no F step, straight to the limit's duty.
    await rig.pilot.set_digital_communication(True)
    rig.circuit.state = "A"
    await rig.poll()
    await rig.pilot.set_digital_communication(False)
    assert len(rig.steps) == 1


async def test_limit_changes_during_the_f_step_apply_after_it(rig):
    await rig.pilot.open()
    await rig.pilot.set_digital_communication(True)
    rig.circuit.state = "B"
    await rig.poll()

    async def sleep(seconds: float) -> None:
        await rig.pilot.set_current_limit(0)  # the core pauses the EV meanwhile
        assert rig.pin.state == 0.0  # the step holds the line at -12 V
    rig.pilot._sleep = sleep
    await rig.pilot.set_digital_communication(False)
    assert rig.pin.state == 1.0 and rig.pilot.current_limit == 0


def test_the_modbus_boards_offer_no_five_percent():
    # Neither register map has a 5 % / HLC setting: the boards make the PWM from the amps.
    assert EvseWbBoard.supports_digital_communication.fget(None) is False  # type: ignore
    assert PhoenixEvEth.supports_digital_communication.fget(None) is False  # type: ignore
