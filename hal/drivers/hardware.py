"""The hardware HAL: real devices, opened, supervised and probed as one station.

Nothing here knows a device model; the factory (``hal.factory``) decides which drivers make
up the station, and this class gives them a common life: contactors are claimed and opened
first (safety before anything else), every other device is opened with a time limit, each
polling loop runs under a supervisor that restarts it if it ever crashes, and the same
probes serve ``self_check`` (READY or not) and ``cp-agent doctor``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from hal.drivers.base import (
    DeviceDriver,
    DriverError,
    EventSink,
    ProbeResult,
)
from hal.drivers.contactor import GpioContactor
from hal.drivers.i2c import I2cBus
from hal.drivers.modbus_bus import ModbusBus
from hal.interfaces import (
    EvseHardware,
    FaultKind,
    FaultRaised,
    Hal,
    HalError,
    Listener,
    SelfCheckResult,
    TokenReader,
)

log = logging.getLogger(__name__)

OPEN_TIMEOUT_S = 15.0
PROBE_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 5.0


class ModbusBusProbe(DeviceDriver):
    """The doctor's line for a Modbus line itself, so that "permission denied on
    /dev/ttyUSB0" is printed once, before the devices that fail because of it."""

    def __init__(self, bus: ModbusBus, required: bool) -> None:
        self.bus = bus
        self.required = required
        self.label = f"modbus bus {bus.name} ({bus.describe()})"

    async def probe(self) -> ProbeResult:
        try:
            await self.bus.open()
        except DriverError as exc:
            return ProbeResult(self.label, False, str(exc), self.required)
        return ProbeResult(self.label, True, "port open" if self.bus.is_rtu else "connected",
                           self.required)


class I2cBusProbe(DeviceDriver):
    def __init__(self, bus: I2cBus, required: bool) -> None:
        self.bus = bus
        self.required = required
        self.label = f"i2c bus {bus.bus} ({bus.device_path})"

    async def probe(self) -> ProbeResult:
        try:
            await self.bus.open()
        except DriverError as exc:
            return ProbeResult(self.label, False, str(exc), self.required)
        return ProbeResult(self.label, True, "adapter open", self.required)


class HardwareHal(Hal):
    def __init__(self, *, sink: EventSink, evses: dict[int, EvseHardware],
                 readers: list[TokenReader], devices: list[DeviceDriver],
                 modbus_buses: list[ModbusBus], i2c_buses: list[I2cBus],
                 bus_probes: list[DeviceDriver]) -> None:
        super().__init__()
        self.evses = evses
        self.readers = readers
        self.sink = sink
        self.devices = devices
        self.modbus_buses = modbus_buses
        self.i2c_buses = i2c_buses
        self.bus_probes = bus_probes
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self, listener: Listener) -> None:
        self.sink.bind_loop(asyncio.get_running_loop())
        contactors = [d for d in self.devices if isinstance(d, GpioContactor)]
        others = [d for d in self.devices if not isinstance(d, GpioContactor)]
        for dev in contactors + others:
            await self._open(dev)
        for evse in self.evses.values():
            if isinstance(evse.contactor, GpioContactor) and not evse.contactor.coil.is_open:
                continue  # already reported by _open
            try:
                await evse.contactor.set(False)
            except HalError as exc:  # welded at start-up: reported, never hidden
                self.sink.emit(FaultRaised(evse.evse_id, exc.kind, str(exc)))
        for dev in self.devices:
            fn = dev.background()
            if fn is not None:
                self._tasks.append(asyncio.create_task(self._supervise(dev, fn),
                                                       name=f"hal: {dev.label}"))
        self._started = True
        self.sink.attach(listener)

    async def _open(self, dev: DeviceDriver) -> None:
        try:
            await asyncio.wait_for(dev.open(), timeout=OPEN_TIMEOUT_S)
        except (DriverError, TimeoutError) as exc:
            detail = str(exc) or f"opening timed out after {OPEN_TIMEOUT_S:g} s"
            if dev.open_fault is not None:
                self.sink.emit(FaultRaised(dev.fault_evse, dev.open_fault, detail))
            log.warning("%s: %s", dev.label, detail)
        except Exception as exc:
            log.exception("%s: unexpected error while opening", dev.label)
            if dev.open_fault is not None:
                self.sink.emit(FaultRaised(dev.fault_evse, FaultKind.INTERNAL, repr(exc)))

    async def _supervise(self, dev: DeviceDriver, fn: Callable[[], Awaitable[None]]) -> None:
        """Keep a device's polling loop alive: a bug in one driver must not silently stop
        pilot or reader supervision for the rest of the agent's life."""
        while True:
            try:
                await fn()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s: background loop crashed, restarting", dev.label)
                await asyncio.sleep(1.0)

    async def stop(self) -> None:
        for evse in self.evses.values():
            # withdraw the offer first so the EV stops drawing, then open under (less) load
            with contextlib.suppress(HalError, TimeoutError):
                await asyncio.wait_for(evse.ev.set_current_limit(0), timeout=STOP_TIMEOUT_S)
            with contextlib.suppress(HalError, TimeoutError):
                await asyncio.wait_for(evse.contactor.set(False), timeout=STOP_TIMEOUT_S)
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_TIMEOUT_S)
        await self.release()
        self.sink.detach()
        self._started = False

    async def release(self) -> None:
        """Close every device and bus (the doctor's exit; ``stop`` ends with it)."""
        for dev in reversed(self.devices):
            try:
                await asyncio.wait_for(dev.close(), timeout=STOP_TIMEOUT_S)
            except Exception:
                log.exception("%s: close failed", dev.label)
        for bus in self.modbus_buses:
            await bus.close()
        for i2c in self.i2c_buses:
            await i2c.close()

    # ------------------------------------------------------------------ probing

    async def probe_all(self) -> list[ProbeResult]:
        """Every bus and device, in wiring order, each bounded in time."""
        results = []
        for dev in self.bus_probes + self.devices:
            try:
                results.append(await asyncio.wait_for(dev.probe(), timeout=PROBE_TIMEOUT_S))
            except TimeoutError:
                results.append(ProbeResult(dev.label, False,
                                           f"no result within {PROBE_TIMEOUT_S:g} s",
                                           dev.required))
            except Exception as exc:  # a probe bug is a failed probe, not a crashed doctor
                log.exception("%s: probe crashed", dev.label)
                results.append(ProbeResult(dev.label, False, repr(exc), dev.required))
        return results

    async def self_check(self) -> list[SelfCheckResult]:
        """The doctor's probes; an optional device that fails does not block READY but
        stays visible in the detail."""
        out = []
        for r in await self.probe_all():
            if r.ok:
                out.append(SelfCheckResult(r.device, True, r.detail))
            elif r.required:
                out.append(SelfCheckResult(r.device, False, r.detail))
            else:
                out.append(SelfCheckResult(r.device, True, f"optional, failing: {r.detail}"))
        return out
