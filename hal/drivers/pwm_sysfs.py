"""Hardware PWM through the kernel's sysfs interface (/sys/class/pwm/pwmchipN/pwmM).

The control pilot is a 1 kHz signal whose duty cycle *is* the current offer; software PWM
(lgpio) jitters with CPU load, the SoC's PWM block does not.  On a Raspberry Pi enable it
with ``dtoverlay=pwm,pin=18,func=2`` (pwmchip0 channel 0 on a Pi 4; the chip number differs
on a Pi 5, see ``ls /sys/class/pwm``).  No library is needed, only file writes, done in a
worker thread because sysfs writes can block while the driver reconfigures.
"""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path

from hal.drivers.base import DriverError, PortUnavailable


class SysfsPwm:
    def __init__(self, chip: int, channel: int, *, frequency_hz: float = 1000.0,
                 active_high: bool = True, root: str | Path = "/sys/class/pwm",
                 export_timeout_s: float = 2.0) -> None:
        self.chip = chip
        self.channel = channel
        self.frequency_hz = frequency_hz
        self.active_high = active_high
        self.root = Path(root)
        self.export_timeout_s = export_timeout_s
        self.period_ns = int(round(1e9 / frequency_hz))
        self._duty = 0.0
        self._open = False

    @property
    def label(self) -> str:
        return f"hardware PWM pwmchip{self.chip}/pwm{self.channel}"

    @property
    def chip_dir(self) -> Path:
        return self.root / f"pwmchip{self.chip}"

    @property
    def pwm_dir(self) -> Path:
        return self.chip_dir / f"pwm{self.channel}"

    def _write(self, name: str, value: str | int) -> None:
        path = self.pwm_dir / name
        try:
            path.write_text(f"{value}\n")
        except PermissionError as exc:
            raise PortUnavailable(f"{path}: permission denied (a udev rule must give the "
                                  "service user write access to /sys/class/pwm)") from exc
        except OSError as exc:
            raise DriverError(f"{path}: {exc.strerror or exc}") from exc

    async def open(self, initial_duty: float = 0.0) -> None:
        if not self.chip_dir.is_dir():
            raise PortUnavailable(f"{self.chip_dir} does not exist: enable the PWM overlay "
                                  "(dtoverlay=pwm...) or fix chip/channel")
        if not self.pwm_dir.is_dir():
            try:
                await asyncio.to_thread((self.chip_dir / "export").write_text,
                                        f"{self.channel}\n")
            except OSError as exc:
                if exc.errno != errno.EBUSY:  # EBUSY: exported meanwhile
                    raise PortUnavailable(f"{self.chip_dir}/export: "
                                          f"{exc.strerror or exc}") from exc
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.export_timeout_s
            # udev needs a moment to create (and chmod) the channel directory
            while not self.pwm_dir.is_dir():
                if loop.time() > deadline:
                    raise PortUnavailable(f"{self.pwm_dir} did not appear after export")
                await asyncio.sleep(0.05)
        await asyncio.to_thread(self._configure, initial_duty)
        self._open = True

    def _configure(self, duty: float) -> None:
        self._write("enable", 0)
        self._write("duty_cycle", 0)  # duty must never exceed the period, even transiently
        self._write("period", self.period_ns)
        self._write("duty_cycle", self._duty_ns(duty))
        self._write("enable", 1)
        self._duty = duty

    def _duty_ns(self, fraction: float) -> int:
        fraction = min(1.0, max(0.0, fraction))
        if not self.active_high:
            fraction = 1.0 - fraction
        return int(round(self.period_ns * fraction))

    async def set_duty(self, fraction: float) -> None:
        if not self._open:
            raise DriverError(f"{self.label}: not open")
        await asyncio.to_thread(self._write, "duty_cycle", self._duty_ns(fraction))
        self._duty = fraction

    @property
    def duty(self) -> float:
        return self._duty

    async def close(self) -> None:
        if self._open:
            self._open = False
            try:
                await asyncio.to_thread(self._write, "enable", 0)
            except DriverError:
                pass
