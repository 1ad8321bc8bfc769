"""Status LEDs (available / charging / fault) on GPIO outputs.

Three LEDs are what bench rigs and most simple wallboxes have; the mapping below keeps
every HAL indicator state distinguishable with them (steady vs. blinking), so a person
standing at the station can tell "ready", "waiting for the EV", "charging" and "broken"
apart.  ``show`` never raises: a dead LED must not stop a charging session.
"""

from __future__ import annotations

import logging

from hal.drivers.base import DeviceDriver, DriverError, ProbeResult
from hal.drivers.gpio import DigitalOut
from hal.interfaces import Indicator, IndicatorState

log = logging.getLogger(__name__)

# state -> (available, charging, fault); "on", "off" or "blink"
PATTERNS: dict[IndicatorState, tuple[str, str, str]] = {
    IndicatorState.OFF: ("off", "off", "off"),
    IndicatorState.AVAILABLE: ("on", "off", "off"),
    IndicatorState.OCCUPIED: ("off", "blink", "off"),
    IndicatorState.CHARGING: ("off", "on", "off"),
    IndicatorState.FAULT: ("off", "off", "on"),
    IndicatorState.UNAVAILABLE: ("off", "off", "blink"),
}


class LedIndicator(Indicator, DeviceDriver):
    def __init__(self, evse_id: int, *, available: DigitalOut | None = None,
                 charging: DigitalOut | None = None, fault: DigitalOut | None = None,
                 blink_s: float = 0.5, required: bool = False) -> None:
        self.evse_id = evse_id
        self.leds = (available, charging, fault)
        self.blink_s = blink_s
        self.required = required
        pins = ", ".join(f"{n} GPIO {led.pin}" for n, led in
                         zip(("available", "charging", "fault"), self.leds, strict=True) if led)
        self.label = f"evse {evse_id} LEDs ({pins})"
        self.state = IndicatorState.OFF

    async def open(self) -> None:
        for led in self.leds:
            if led is not None:
                led.open()
        self.show(self.state)

    async def close(self) -> None:
        for led in self.leds:
            if led is not None:
                led.close()

    async def probe(self) -> ProbeResult:
        try:
            await self.open()
        except DriverError as exc:
            return ProbeResult(self.label, False, str(exc), self.required)
        return ProbeResult(self.label, True, "outputs claimed", self.required)

    def show(self, state: IndicatorState) -> None:
        self.state = state
        for led, mode in zip(self.leds, PATTERNS[state], strict=True):
            if led is None or not led.is_open:
                continue
            try:
                if mode == "blink":
                    led.blink(self.blink_s, self.blink_s)
                else:
                    led.set(mode == "on")
            except DriverError:
                log.exception("%s: cannot show %s", self.label, state)
