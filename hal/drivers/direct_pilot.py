"""Control pilot driven directly by the controller: PWM out, pilot voltage in via an ADS1115.

The current offer is the PWM duty cycle (IEC 61851-1 Annex A): 6-51 A -> duty = A / 0.6 %,
51-80 A -> duty = A / 2.5 + 64 %; no offer -> steady +12 V (duty 100 %).  The EV answers by
loading the pilot, which moves the high level of the square wave: 12 V A, 9 V B, 6 V C,
3 V D, 0 V E (short), -12 V F.

An ADS1115 integrates over ~1.2 ms, longer than one 1 kHz pilot period, so it cannot see
the plateaus of the square wave directly.  The expected front end therefore has a positive
peak detector (high level, ``high`` channel) and optionally a negative one (low level,
``low`` channel): the low level must be -12 V while the PWM runs, otherwise the EV's diode
is missing or the pilot is shorted (the diode check).  ``scale``/``offset`` turn volts at the
ADC pin back into pilot volts for whatever divider the board uses.

ISO 15118 (``set_digital_communication``): while high-level communication is on, an EV
that is plugged in (B, C, D) sees 5 % duty cycle, "digital communication required" (IEC
61851-1 Annex A): the EV learns its limit from the HLC messages, not from the duty cycle,
and the pilot oscillates whatever current the core offers, so that SLAC and the V2G session
can run before the session is authorized (Plug & Charge).  The offer still counts for the
core (``current_limit``), and the contactor rules are the core's as ever (C/D, authorized,
at least 6 A); an EV that does not speak HLC does not draw at 5 %.  In state A the output is
the steady +12 V of "no EV".  HLC off again (the session broke, the EV does not speak it):
5 % -> state F (-12 V, the PWM stopped low) for ``ef_step_s`` -> the nominal duty of the
current limit, the sequence ISO 15118-3 gives for the step back to basic charging
([V2G3-M06-05]: B2/C2 at 5 % -> E or F -> B2 nominal).  During that step the driver does not
read the pilot (it drives it to -12 V itself): the last state stands, and the core has
offered 0 A first so that the contactor is open (agent/core/iso15118.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from hal.drivers.ads1115 import Ads1115
from hal.drivers.base import (
    DeviceDriver,
    DriverError,
    EventSink,
    Health,
    ProbeResult,
    sleep_or_stop,
)
from hal.interfaces import EvConnection, FaultKind, HalError, PilotChanged, PilotState

log = logging.getLogger(__name__)

MIN_CURRENT_A = 6.0
MAX_CURRENT_A = 80.0
DIODE_LOW_MAX_V = -10.5  # the low plateau must be at least this negative
DIGITAL_DUTY = 0.05  # 5 %: digital communication required (IEC 61851-1 Table A.8)
EF_STEP_S = 4.0  # state F between 5 % and nominal duty (ISO 15118-3 T_step_EF, at least 4 s)


def duty_for_current(amps: float) -> float:
    """Duty cycle (0..1) that offers ``amps``; 1.0 is the steady +12 V of "no offer"."""
    if amps < MIN_CURRENT_A:
        return 1.0
    amps = min(amps, MAX_CURRENT_A)
    percent = amps / 0.6 if amps <= 51.0 else amps / 2.5 + 64.0
    return round(percent / 100.0, 6)


def current_for_duty(duty: float) -> float:
    """What an EV reads from ``duty`` (the inverse of :func:`duty_for_current`)."""
    percent = duty * 100.0
    if 10.0 <= percent <= 85.0:
        return round(percent * 0.6, 3)
    if 85.0 < percent <= 96.0:
        return round((percent - 64.0) * 2.5, 3)
    return 0.0


@dataclass(frozen=True, slots=True)
class PilotThresholds:
    """Boundaries between the nominal levels (midpoints of IEC 61851-1 Table A.4)."""

    a: float = 10.5
    b: float = 7.5
    c: float = 4.5
    d: float = 1.5
    e: float = -1.5  # between e and d: ~0 V, state E
    f: float = -10.5  # at or below: -12 V, state F

    def classify(self, high_v: float) -> PilotState:
        if high_v >= self.a:
            return PilotState.A
        if high_v >= self.b:
            return PilotState.B
        if high_v >= self.c:
            return PilotState.C
        if high_v >= self.d:
            return PilotState.D
        if high_v <= self.f:
            return PilotState.F
        return PilotState.E  # 0 V, or a level no valid state has


@dataclass(frozen=True, slots=True)
class PilotChannel:
    """An ADC input and the linear map from volts at the pin to pilot volts."""

    channel: int
    scale: float
    offset: float = 0.0

    def pilot_volts(self, adc_volts: float) -> float:
        return adc_volts * self.scale + self.offset


class PwmOutput(Protocol):
    label: str

    async def open(self, initial_duty: float = 0.0) -> None: ...

    async def set_duty(self, fraction: float) -> None: ...

    async def close(self) -> None: ...

    @property
    def duty(self) -> float: ...


class DirectPilot(EvConnection, DeviceDriver):
    def __init__(self, evse_id: int, pwm: PwmOutput, adc: Ads1115, *, sink: EventSink,
                 high: PilotChannel, low: PilotChannel | None = None,
                 diode_check: bool = True, poll_interval_s: float = 0.1,
                 debounce_samples: int = 2, thresholds: PilotThresholds | None = None,
                 required: bool = True, ef_step_s: float = EF_STEP_S,
                 sleep: Callable[[float], Awaitable[None]] | None = None) -> None:
        self.evse_id = evse_id
        self.pwm = pwm
        self.adc = adc
        self.sink = sink
        self.high = high
        self.low = low
        self.diode_check = diode_check and low is not None
        self.poll_interval_s = poll_interval_s
        self.debounce_samples = max(1, debounce_samples)
        self.thresholds = thresholds or PilotThresholds()
        self.required = required
        self.label = f"evse {evse_id} control pilot ({pwm.label}, {adc.describe()})"
        self._health = Health(sink, evse_id, FaultKind.PILOT, self.label)
        self._state = PilotState.A
        self._candidate: PilotState | None = None
        self._seen = 0
        self._limit = 0.0
        self._pwm_open = False
        self._digital = False  # ISO 15118: 5 % while an EV is connected
        self._stepping = False  # the F step from 5 % back to nominal duty
        self.ef_step_s = ef_step_s
        self._sleep = sleep or asyncio.sleep
        self._stop = asyncio.Event()
        self.last_high_v: float | None = None
        self.last_low_v: float | None = None

    # ------------------------------------------------------------------ EvConnection

    def pilot_state(self) -> PilotState:
        return self._state

    @property
    def current_limit(self) -> float:
        return self._limit

    async def set_current_limit(self, amps: float) -> None:
        duty = duty_for_current(amps)
        await self._output(DIGITAL_DUTY if self._digital_now() else duty)
        self._limit = 0.0 if duty >= 1.0 else min(float(amps), MAX_CURRENT_A)

    def _digital_now(self) -> bool:
        return self._digital and self._state.connected

    def _wanted_duty(self) -> float:
        """5 % for a connected EV under HLC, else the duty of the current limit."""
        return DIGITAL_DUTY if self._digital_now() else duty_for_current(self._limit)

    async def _output(self, duty: float | None = None) -> None:
        """Drive the PWM to ``duty`` (default: what the state asks); nothing during the F
        step, whose end does it."""
        if self._stepping:
            return
        if duty is None:
            duty = self._wanted_duty()
        try:
            if not self._pwm_open:
                await self._open_pwm()
            await self.pwm.set_duty(duty)
        except DriverError as exc:
            raise HalError(FaultKind.PILOT, f"evse {self.evse_id} pilot PWM: {exc}") from exc

    @property
    def supports_digital_communication(self) -> bool:
        return True

    @property
    def digital_communication(self) -> bool:
        return self._digital

    async def set_digital_communication(self, on: bool) -> None:
        if on == self._digital:
            return
        at_five = self._pwm_open and self.pwm.duty == DIGITAL_DUTY
        self._digital = on
        if on or not at_five:
            await self._output()
            return
        # 5 % -> F -> nominal: the EV sees the EVSE restart the pilot for basic charging.
        log.info("%s: 5 %% duty cycle off: state F for %.0f s, then nominal duty",
                 self.label, self.ef_step_s)
        self._stepping = True
        try:
            try:
                await self.pwm.set_duty(0.0)  # steady -12 V
            except DriverError as exc:
                raise HalError(FaultKind.PILOT, f"evse {self.evse_id} pilot PWM: {exc}"
                               ) from exc
            await self._sleep(self.ef_step_s)
        finally:
            self._stepping = False
            self._candidate, self._seen = None, 0  # what was read before the step is stale
        await self._output()

    # ------------------------------------------------------------------ measuring

    async def measure(self) -> tuple[PilotState, str | None]:
        """One reading: the state, and a diode-check failure text if there is one."""
        high_v = self.high.pilot_volts(await self.adc.read_volts(self.high.channel))
        self.last_high_v = high_v
        state = self.thresholds.classify(high_v)
        duty = self.pwm.duty
        if (self.diode_check and self.low is not None and 0.0 < duty < 1.0
                and state in (PilotState.B, PilotState.C, PilotState.D)):
            low_v = self.low.pilot_volts(await self.adc.read_volts(self.low.channel))
            self.last_low_v = low_v
            if low_v > DIODE_LOW_MAX_V:
                return PilotState.F, (f"diode check failed: pilot low level {low_v:+.1f} V, "
                                      "expected -12 V (EV diode missing or CP shorted)")
        return state, None

    def _set_state(self, state: PilotState) -> None:
        if state != self._state:
            self._state = state
            self.sink.emit(PilotChanged(self.evse_id, state))

    async def poll_once(self, *, debounce: bool = True) -> None:
        if self._stepping:
            return  # the driver holds the pilot at -12 V itself: nothing to read
        try:
            if not self._pwm_open:
                await self._open_pwm()
            state, diode_fault = await self.measure()
        except DriverError as exc:
            self._candidate, self._seen = None, 0
            self._health.failed(f"pilot: {exc}")
            self._set_state(PilotState.F)
            return
        if debounce and state != self._candidate:
            self._candidate, self._seen = state, 1
        else:
            self._candidate, self._seen = state, self._seen + 1
        if debounce and self._seen < self.debounce_samples:
            return
        if diode_fault:
            self._health.failed(diode_fault)
        else:
            self._health.recovered()
        connected = self._state.connected
        self._set_state(state)
        if self._digital and state.connected != connected:
            try:  # plugged in: 5 %; unplugged: steady +12 V again
                await self._output()
            except HalError as exc:
                self._health.failed(str(exc))

    # ------------------------------------------------------------------ lifecycle

    async def _open_pwm(self) -> None:
        await self.pwm.open(initial_duty=1.0)  # steady +12 V: available, nothing offered
        self._pwm_open = True

    async def open(self) -> None:
        """Start the oscillator at "no offer" and take a first reading; trouble becomes a
        PILOT fault (and state F), retried by the polling loop, never an exception."""
        self._stop.clear()
        await self.poll_once(debounce=False)

    async def close(self) -> None:
        self._stop.set()
        if self._pwm_open:
            self._pwm_open = False
            await self.pwm.close()

    def background(self) -> Callable[[], Awaitable[None]]:
        return self._run

    async def _run(self) -> None:
        self._stop.clear()
        while not await sleep_or_stop(self._stop, self.poll_interval_s):
            await self.poll_once()

    async def probe(self) -> ProbeResult:
        try:
            if not self._pwm_open:
                await self._open_pwm()
            state, diode_fault = await self.measure()
        except DriverError as exc:
            return ProbeResult(self.label, False, str(exc), self.required)
        v = self.last_high_v if self.last_high_v is not None else float("nan")
        if diode_fault:
            return ProbeResult(self.label, False, diode_fault, self.required)
        if state == PilotState.E:
            return ProbeResult(self.label, False,
                               f"pilot high level {v:+.1f} V (state E): CP shorted to PE, "
                               "the +-12 V supply is off, or scale/offset are wrong",
                               self.required)
        if state == PilotState.F:
            return ProbeResult(self.label, False,
                               f"pilot high level {v:+.1f} V (state F): the PWM output is "
                               "stuck low or inverted (check pwm.active_high)", self.required)
        return ProbeResult(self.label, True, f"pilot high level {v:+.1f} V (state {state.value})",
                           self.required)
