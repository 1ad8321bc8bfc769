"""Contactor, LEDs and lock on gpiozero's mock pins: the real driver code, simulated wiring."""

from __future__ import annotations

import pytest
from halsim import wire

from hal.drivers.base import EventSink, PortUnavailable
from hal.drivers.contactor import GpioContactor
from hal.drivers.gpio import DigitalIn, DigitalOut, PinFactoryUnavailable, PwmOut
from hal.drivers.indicators import LedIndicator
from hal.drivers.lock import GpioLock
from hal.interfaces import FaultCleared, FaultKind, FaultRaised, HalError, IndicatorState

COIL, FEEDBACK = 17, 27
SETTLE = 0.05


def contactor(pin_factory, sink, *, coil_active_high=True, fb_active_high=True,
              feedback=True, pull="down") -> GpioContactor:
    coil = DigitalOut(COIL, active_high=coil_active_high, pin_factory=pin_factory)
    fb = (DigitalIn(FEEDBACK, active_high=fb_active_high, pull=pull, pin_factory=pin_factory)
          if feedback else None)
    return GpioContactor(1, coil, fb, sink=sink, settle_s=SETTLE)


async def test_wired_feedback_follows_coil(pin_factory, sink, events):
    wire(pin_factory, COIL, FEEDBACK)
    c = contactor(pin_factory, sink)
    await c.open()
    assert c.feedback_closed() is False
    await c.set(True)
    assert pin_factory.pin(COIL).state == 1
    assert c.commanded_closed and c.feedback_closed() is True
    await c.set(False)
    assert pin_factory.pin(COIL).state == 0
    assert c.feedback_closed() is False
    assert not events.of(FaultRaised)
    assert (await c.probe()).ok
    await c.close()


async def test_active_low_coil_and_feedback(pin_factory, sink):
    # relay boards that switch on a low level, aux contact read the same way
    wire(pin_factory, COIL, FEEDBACK)
    c = contactor(pin_factory, sink, coil_active_high=False, fb_active_high=False, pull="up")
    await c.open()
    assert pin_factory.pin(COIL).state == 1  # open contactor = coil pin high
    assert c.feedback_closed() is False
    await c.set(True)
    assert pin_factory.pin(COIL).state == 0
    assert c.feedback_closed() is True
    await c.close()
    assert pin_factory.pin(COIL).state in (0, 1)  # released, not asserting anything


async def test_welded_contact_is_reported_and_latched(pin_factory, sink, events):
    c = contactor(pin_factory, sink)  # feedback not wired to the coil: we drive it
    await c.open()
    fb = pin_factory.pin(FEEDBACK)
    fb.drive_high()  # the contact welds while the coil is off
    fault = await events.wait_for(lambda e: isinstance(e, FaultRaised))
    assert fault.kind == FaultKind.WELDED and fault.evse_id == 1
    with pytest.raises(HalError) as exc:
        await c.set(True)
    assert exc.value.kind == FaultKind.WELDED
    assert pin_factory.pin(COIL).state == 0  # refused: coil never energised
    with pytest.raises(HalError) as exc:
        await c.set(False)
    assert exc.value.kind == FaultKind.WELDED
    assert not (await c.probe()).ok
    fb.drive_low()  # the contact finally opens
    cleared = await events.wait_for(lambda e: isinstance(e, FaultCleared))
    assert cleared.kind == FaultKind.WELDED
    coil = pin_factory.pin(COIL)
    coil.clear_states()
    with pytest.raises(HalError) as exc:  # no longer refused as welded: the coil is driven
        await c.set(True)                 # (and, nothing wired here, the contact never closes)
    assert exc.value.kind == FaultKind.CONTACTOR_FAILED
    assert [s.state for s in coil.states] == [0, 1, 0]
    await c.close()


async def test_welded_at_open_command_raises_without_event(pin_factory, sink, events):
    wire(pin_factory, COIL, FEEDBACK)
    c = contactor(pin_factory, sink)
    await c.open()
    await c.set(True)
    pin_factory.pin(COIL).input_pin = None  # the contact no longer follows the coil
    with pytest.raises(HalError) as exc:
        await c.set(False)
    assert exc.value.kind == FaultKind.WELDED
    assert not events.of(FaultRaised)  # the command's caller was told; no duplicate event
    await c.close()


async def test_failed_contactor_drops_coil(pin_factory, sink):
    c = contactor(pin_factory, sink)  # feedback stays low: the contactor never pulls in
    await c.open()
    with pytest.raises(HalError) as exc:
        await c.set(True)
    assert exc.value.kind == FaultKind.CONTACTOR_FAILED
    assert pin_factory.pin(COIL).state == 0 and not c.commanded_closed
    await c.close()


async def test_dropout_while_closed_raises_then_clears(pin_factory, sink, events):
    c = contactor(pin_factory, sink)
    await c.open()
    fb = pin_factory.pin(FEEDBACK)
    fb.drive_high()  # contact closes together with the coil below
    await c.set(True)
    fb.drive_low()  # coil supply lost: the contactor drops out on its own
    fault = await events.wait_for(lambda e: isinstance(e, FaultRaised))
    assert fault.kind == FaultKind.CONTACTOR_FAILED
    fb.drive_high()
    cleared = await events.wait_for(lambda e: isinstance(e, FaultCleared))
    assert cleared.kind == FaultKind.CONTACTOR_FAILED
    await c.close()


async def test_bounce_shorter_than_settle_is_not_a_fault(pin_factory, sink, events):
    c = contactor(pin_factory, sink)
    await c.open()
    fb = pin_factory.pin(FEEDBACK)
    for _ in range(5):
        fb.drive_high()
        fb.drive_low()
    # a later, real fault proves the monitor ran: only that one is reported
    fb.drive_high()
    fault = await events.wait_for(lambda e: isinstance(e, FaultRaised))
    assert fault.kind == FaultKind.WELDED
    assert len(events.of(FaultRaised)) == 1
    await c.close()


async def test_no_feedback_contactor(pin_factory, sink):
    c = contactor(pin_factory, sink, feedback=False)
    await c.open()
    await c.set(True)
    assert c.feedback_closed() is None and c.commanded_closed
    r = await c.probe()
    assert r.ok and "no feedback" in r.detail
    await c.close()


async def test_contactor_opens_on_first_use(pin_factory, sink):
    # the core opens every contactor before the HAL is started: that must drive the coil
    wire(pin_factory, COIL, FEEDBACK)
    c = contactor(pin_factory, sink)
    await c.set(False)
    assert c.coil.is_open and pin_factory.pin(COIL).state == 0
    await c.close()


async def test_unavailable_coil_raises_internal(sink):
    coil = DigitalOut(COIL, pin_factory=PinFactoryUnavailable("no GPIO here"))
    c = GpioContactor(1, coil, None, sink=sink)
    with pytest.raises(HalError) as exc:
        await c.set(False)
    assert exc.value.kind == FaultKind.INTERNAL and "no GPIO here" in str(exc.value)


async def test_pin_in_use_and_bad_factory_name_the_cause(pin_factory):
    a = DigitalOut(5, pin_factory=pin_factory)
    a.open()
    b = DigitalOut(5, pin_factory=pin_factory)
    with pytest.raises(PortUnavailable, match="already in use"):
        b.open()
    broken = DigitalOut(6, pin_factory=PinFactoryUnavailable("lgpio missing"))
    with pytest.raises(PortUnavailable, match="lgpio missing"):
        broken.open()
    a.close()


async def test_indicator_patterns(pin_factory):
    leds = [DigitalOut(p, pin_factory=pin_factory) for p in (22, 23, 24)]
    ind = LedIndicator(1, available=leds[0], charging=leds[1], fault=leds[2], blink_s=0.01)
    await ind.open()
    ind.show(IndicatorState.AVAILABLE)
    assert [led.value for led in leds] == [True, False, False]
    ind.show(IndicatorState.CHARGING)
    assert [led.value for led in leds] == [False, True, False]
    ind.show(IndicatorState.FAULT)
    assert [led.value for led in leds] == [False, False, True]
    ind.show(IndicatorState.OCCUPIED)
    assert leds[1].blinking and not leds[0].value
    ind.show(IndicatorState.OFF)
    assert not any(led.value or led.blinking for led in leds)
    await ind.close()
    ind.show(IndicatorState.FAULT)  # closed LEDs are skipped, never raise


async def test_motor_lock_with_switch(pin_factory):
    lock_out = DigitalOut(5, pin_factory=pin_factory)
    unlock_out = DigitalOut(6, pin_factory=pin_factory)
    switch = DigitalIn(13, pull="down", pin_factory=pin_factory)
    lock = GpioLock(1, lock_out=lock_out, unlock_out=unlock_out, feedback=switch,
                    pulse_s=0.01, timeout_s=0.2)
    await lock.open()
    sw = pin_factory.pin(13)
    sw.drive_high()  # the actuator reaches "locked" during the pulse
    assert await lock.set_locked(True) is True
    assert lock.locked
    assert lock_out.value is False  # pulse ended
    # unlocking, but the switch stays "locked": jammed actuator
    assert await lock.set_locked(False) is False
    assert lock.locked
    await lock.close()


async def test_solenoid_lock_without_switch(pin_factory):
    out = DigitalOut(5, pin_factory=pin_factory)
    lock = GpioLock(1, lock_out=out)
    await lock.open()
    assert await lock.set_locked(True) and out.value and lock.locked
    assert await lock.set_locked(False) and not out.value and not lock.locked
    await lock.close()


async def test_pwm_out_on_mock_pin(pin_factory):
    pwm = PwmOut(18, frequency_hz=1000, pin_factory=pin_factory)
    await pwm.open(initial_duty=1.0)
    assert pin_factory.pin(18).state == 1.0
    await pwm.set_duty(0.2667)
    assert pin_factory.pin(18).state == pytest.approx(0.2667)
    assert pin_factory.pin(18).frequency == 1000
    await pwm.close()


def test_event_sink_queues_until_attached_and_survives_listener_errors():
    sink = EventSink()
    sink.emit(FaultRaised(1, FaultKind.WELDED))
    got = []

    def listener(e):
        got.append(e)
        raise RuntimeError("core bug")

    sink.attach(listener)
    assert got == [FaultRaised(1, FaultKind.WELDED)]
    sink.emit(FaultCleared(1, FaultKind.WELDED))  # the raising listener does not propagate
    assert len(got) == 2
