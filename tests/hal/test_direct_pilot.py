"""Direct pilot: PWM duty from the IEC 61851 formula, pilot voltage through an ADS1115 on a
fake I2C bus, state thresholds and the diode check."""

from __future__ import annotations

import asyncio

import pytest
from halsim import FakeAds1115, FakeSMBus, PilotCircuit

from hal.drivers.ads1115 import Ads1115
from hal.drivers.base import NoAnswer
from hal.drivers.direct_pilot import (
    DirectPilot,
    PilotChannel,
    PilotThresholds,
    current_for_duty,
    duty_for_current,
)
from hal.drivers.gpio import PwmOut
from hal.drivers.i2c import I2cBus
from hal.drivers.pwm_sysfs import SysfsPwm
from hal.interfaces import FaultCleared, FaultKind, FaultRaised, HalError, PilotChanged, PilotState


@pytest.mark.parametrize(
    ("amps", "duty"),
    [(0, 1.0), (5.9, 1.0), (6, 0.10), (10, 1 / 6), (16, 0.266667), (32, 0.533333),
     (51, 0.85), (63, 0.892), (80, 0.96), (100, 0.96)],
)
def test_duty_formula(amps, duty):
    assert duty_for_current(amps) == pytest.approx(duty, abs=1e-6)


@pytest.mark.parametrize("amps", [6, 8, 13, 16, 20, 32, 40, 51, 53, 63, 70, 80])
def test_duty_round_trip(amps):
    assert current_for_duty(duty_for_current(amps)) == pytest.approx(amps, abs=0.01)


def test_formula_seam_never_offers_more():
    # 51-52.5 A gives a duty just under 85 %, which an EV reads with the low-range formula:
    # a quirk of the standard, harmless because the EV then draws less than offered
    assert duty_for_current(52) == pytest.approx(0.848)
    assert current_for_duty(duty_for_current(52)) == pytest.approx(50.88)


@pytest.mark.parametrize(
    ("volts", "state"),
    [(12.0, "A"), (11.0, "A"), (9.0, "B"), (8.0, "B"), (6.0, "C"), (5.0, "C"), (3.0, "D"),
     (2.0, "D"), (0.0, "E"), (-5.0, "E"), (-12.0, "F")],
)
def test_thresholds(volts, state):
    assert PilotThresholds().classify(volts) == PilotState(state)


class Rig:
    def __init__(self, pin_factory, sink, *, diode_check=True):
        self.pwm = PwmOut(18, pin_factory=pin_factory)
        self.circuit = PilotCircuit(lambda: self.pwm.duty)
        self.ads = FakeAds1115(self.circuit.adc_volts)
        self.smbus = FakeSMBus({0x48: self.ads})
        self.bus = I2cBus("i2c-1", 1, opener=self.smbus.opener, timeout_s=1.0)
        adc = Ads1115(self.bus, 0x48, full_scale_v=4.096, data_rate=860)
        self.pilot = DirectPilot(1, self.pwm, adc, sink=sink,
                                 high=PilotChannel(0, 4.0), low=PilotChannel(1, -4.0),
                                 diode_check=diode_check, poll_interval_s=0.01,
                                 debounce_samples=2)
        self.pin = pin_factory.pin(18)

    async def poll(self, n=2):
        for _ in range(n):
            await self.pilot.poll_once()

    async def close(self):
        await self.pilot.close()
        await self.bus.close()


@pytest.fixture
async def rig(pin_factory, sink):
    r = Rig(pin_factory, sink)
    yield r
    await r.close()


async def test_ads1115_single_shot_registers(rig):
    adc = Ads1115(rig.bus, 0x48, full_scale_v=4.096, data_rate=860)
    rig.circuit.state = "B"
    assert await adc.read_volts(0) == pytest.approx(9.0 / 4.0, abs=1e-3)
    cfg = rig.ads.configs_written[-1]
    assert cfg >> 15 == 1  # start a single conversion
    assert (cfg >> 12) & 0b111 == 0b100  # AIN0 against GND
    assert (cfg >> 9) & 0b111 == 0b001  # +-4.096 V
    assert (cfg >> 8) & 1 == 1  # single-shot mode
    assert (cfg >> 5) & 0b111 == 0b111  # 860 SPS
    assert cfg & 0b11 == 0b11  # comparator off
    assert await adc.read_volts(1) == pytest.approx(9.0 / -4.0, abs=1e-3)  # no PWM: +9 V
    assert (rig.ads.configs_written[-1] >> 12) & 0b111 == 0b101


async def test_ads1115_that_never_finishes(rig):
    rig.ads.busy_polls = 10_000
    adc = Ads1115(rig.bus, 0x48)
    with pytest.raises(NoAnswer, match="never finished"):
        await adc.read_volts(0)


async def test_session_states_and_pwm(rig, events):
    await rig.pilot.open()
    assert rig.pin.state == 1.0  # steady +12 V: available, nothing offered
    assert rig.pin.frequency == 1000
    assert rig.pilot.pilot_state() == PilotState.A
    rig.circuit.state = "B"
    await rig.poll()
    assert events.events == [PilotChanged(1, PilotState.B)]
    await rig.pilot.set_current_limit(16)
    assert rig.pin.state == pytest.approx(16 / 0.6 / 100, abs=1e-5)
    assert rig.pilot.current_limit == 16
    rig.circuit.state = "C"
    await rig.poll()
    assert rig.pilot.pilot_state() == PilotState.C
    await rig.pilot.set_current_limit(0)
    assert rig.pin.state == 1.0 and rig.pilot.current_limit == 0
    rig.circuit.state = "A"
    await rig.poll()
    assert [e.state for e in events.of(PilotChanged)] == [PilotState.B, PilotState.C, PilotState.A]
    assert not events.of(FaultRaised)


async def test_debounce_ignores_a_single_glitch(rig, events):
    await rig.pilot.open()
    rig.circuit.state = "E"
    await rig.pilot.poll_once()  # one bad sample
    rig.circuit.state = "A"
    await rig.poll()
    assert not events.events


async def test_diode_check(rig, events):
    await rig.pilot.open()
    rig.circuit.state = "B"
    rig.circuit.diode = False  # a car (or a test box) without the pilot diode
    await rig.poll()
    assert rig.pilot.pilot_state() == PilotState.B  # no PWM yet: nothing to check
    await rig.pilot.set_current_limit(16)
    await rig.poll()
    assert rig.pilot.pilot_state() == PilotState.F
    fault = events.of(FaultRaised)[0]
    assert fault.kind == FaultKind.PILOT and "diode" in fault.detail
    probe = await rig.pilot.probe()
    assert not probe.ok and "diode" in probe.detail
    rig.circuit.diode = True
    await rig.poll()
    assert rig.pilot.pilot_state() == PilotState.B
    assert events.events[-2:] == [FaultCleared(1, FaultKind.PILOT), PilotChanged(1, PilotState.B)]


async def test_adc_gone_is_a_pilot_fault(rig, events):
    await rig.pilot.open()
    rig.circuit.state = "C"
    await rig.poll()
    rig.ads.gone = True  # I2C NACKs from now on
    await rig.pilot.poll_once()
    assert rig.pilot.pilot_state() == PilotState.F
    fault = events.of(FaultRaised)[0]
    assert fault.kind == FaultKind.PILOT and "0x48" in fault.detail
    probe = await rig.pilot.probe()
    assert not probe.ok and "i2cdetect" in probe.detail
    rig.ads.gone = False
    await rig.poll()
    assert rig.pilot.pilot_state() == PilotState.C
    assert FaultCleared(1, FaultKind.PILOT) in events.events


async def test_background_loop_reports_changes(rig, events):
    await rig.pilot.open()
    task = asyncio.create_task(rig.pilot.background()())
    try:
        rig.circuit.state = "B"
        await events.wait_for(lambda e: e == PilotChanged(1, PilotState.B))
        rig.circuit.state = "C"
        await events.wait_for(lambda e: e == PilotChanged(1, PilotState.C))
    finally:
        await rig.pilot.close()
        await asyncio.wait_for(task, 2)


async def test_probe_names_a_shorted_pilot(rig):
    rig.circuit.state = "E"
    probe = await rig.pilot.probe()
    assert not probe.ok and "state E" in probe.detail
    rig.circuit.state = "A"
    probe = await rig.pilot.probe()
    assert probe.ok and "+12.0 V" in probe.detail


async def test_missing_i2c_adapter(pin_factory, sink, events):
    r = Rig(pin_factory, sink)
    r.smbus.unplugged = True
    try:
        await r.pilot.open()
        assert r.pilot.pilot_state() == PilotState.F
        assert "/dev/i2c-1 does not exist" in events.of(FaultRaised)[0].detail
    finally:
        await r.close()


async def test_sysfs_pwm(tmp_path, pin_factory):
    chip = tmp_path / "pwmchip0"
    chip.mkdir()
    (chip / "export").write_text("")
    ch = chip / "pwm0"
    ch.mkdir()  # what the kernel creates on export
    for name in ("period", "duty_cycle", "enable"):
        (ch / name).write_text("0\n")
    pwm = SysfsPwm(0, 0, frequency_hz=1000, root=tmp_path)
    await pwm.open(initial_duty=1.0)
    assert (ch / "period").read_text() == "1000000\n"
    assert (ch / "duty_cycle").read_text() == "1000000\n"
    assert (ch / "enable").read_text() == "1\n"
    await pwm.set_duty(duty_for_current(16))
    assert (ch / "duty_cycle").read_text() == "266667\n"
    inverted = SysfsPwm(0, 0, frequency_hz=1000, root=tmp_path, active_high=False)
    await inverted.open(initial_duty=0.25)
    assert (ch / "duty_cycle").read_text() == "750000\n"
    await pwm.close()
    assert (ch / "enable").read_text() == "0\n"


async def test_sysfs_pwm_missing_chip(tmp_path):
    from hal.drivers.base import PortUnavailable

    with pytest.raises(PortUnavailable, match="dtoverlay"):
        await SysfsPwm(3, 0, root=tmp_path).open()


async def test_pwm_failure_is_a_pilot_hal_error(pin_factory, sink):
    r = Rig(pin_factory, sink)
    other = PwmOut(18, pin_factory=pin_factory)
    await other.open()  # someone else holds the pin
    try:
        with pytest.raises(HalError) as exc:
            await r.pilot.set_current_limit(16)
        assert exc.value.kind == FaultKind.PILOT
    finally:
        await other.close()
        await r.close()
