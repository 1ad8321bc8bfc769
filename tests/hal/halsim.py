"""Simulated devices for the driver tests: the real driver code runs against them.

- Modbus: a pymodbus server on the master side of a pseudo-terminal (RTU; the driver opens
  the slave /dev/pts/N like a /dev/ttyUSB0) or on 127.0.0.1 port 0 (TCP), serving register
  images that tests change at will, able to go silent per device or altogether.
- I2C: a fake smbus2 ``SMBus`` (only ``i2c_rdwr``, which is all the drivers use) with a
  PN532 that speaks the frame protocol and an ADS1115 with its config/conversion registers.
- evdev: a fake input device for keyboard-wedge readers.

The encoders here use ``struct`` directly, independently of the driver's decoding, so a
decoding bug cannot cancel itself out.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import fcntl
import functools
import os
import struct
import sys
import threading
import types
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import serial
import serial.serialposix
import yaml
from gpiozero.pins.mock import MockConnectedPin, MockPWMPin
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
from smbus2.smbus2 import I2C_M_RD

from hal.interfaces import HalEvent

# ================================================================== events


class EventLog:
    """A HAL listener that tests can wait on (no sleeps: waits end when the event arrives)."""

    def __init__(self) -> None:
        self.events: list[HalEvent] = []
        self._changed = asyncio.Event()

    def __call__(self, event: HalEvent) -> None:
        self.events.append(event)
        self._changed.set()

    def of(self, kind: type) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    async def wait_for(self, pred: Callable[[HalEvent], bool], timeout: float = 5.0) -> Any:
        """The first event (already seen or arriving) for which ``pred`` is true."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        seen = 0
        while True:
            for e in self.events[seen:]:
                if pred(e):
                    return e
            seen = len(self.events)
            self._changed.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"no matching event within {timeout} s; got {self.events}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=remaining)

    def clear(self) -> None:
        self.events.clear()


async def wait_until(cond: Callable[[], bool], timeout: float = 5.0, step: float = 0.005) -> None:
    """Poll a condition that has no event to wait on (e.g. a register the driver wrote)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(step)


# ================================================================== GPIO


class ConnectedPin(MockConnectedPin, MockPWMPin):
    """An output wired to an input (a coil and its auxiliary contact), usable in a factory
    whose pins are PWM-capable (the pilot output shares the factory)."""


class InvertingPin(ConnectedPin):
    """An output whose input sees the opposite level: an auxiliary contact that closes to
    GND (against a pull-up) when the coil is energised."""

    def _change_state(self, value: Any) -> bool:
        if self.input_pin:
            if value:
                self.input_pin.drive_low()
            else:
                self.input_pin.drive_high()
        return MockPWMPin._change_state(self, value)


class LockMotorPin(ConnectedPin):
    """One H-bridge input of a socket-lock motor: a pulse on it moves the actuator, whose
    position switch (``input_pin``, active = locked) then stays where it went."""

    locks = True

    def _change_state(self, value: Any) -> bool:
        if value and self.input_pin:
            if self.locks:
                self.input_pin.drive_high()
            else:
                self.input_pin.drive_low()
        return MockPWMPin._change_state(self, value)


class UnlockMotorPin(LockMotorPin):
    locks = False


def wire_lock(factory: Any, lock_pin: int, unlock_pin: int, switch_pin: int) -> None:
    """A motor lock actuator with its position switch, as on a Type 2 socket."""
    switch = factory.pin(switch_pin)
    factory.pin(lock_pin, pin_class=LockMotorPin, input_pin=switch)
    factory.pin(unlock_pin, pin_class=UnlockMotorPin, input_pin=switch)


def wire(factory: Any, out_pin: int, in_pin: int, *, to_gnd: bool = False) -> None:
    """Connect ``out_pin`` to ``in_pin``: the feedback contact follows the coil
    (``to_gnd``: the contact pulls the input low when closed)."""
    factory.pin(out_pin, pin_class=InvertingPin if to_gnd else ConnectedPin,
                input_pin=factory.pin(in_pin))


# ================================================================== register encoders


def f32(value: float, little: bool = False) -> list[int]:
    hi, lo = struct.unpack(">HH", struct.pack(">f", value))
    return [lo, hi] if little else [hi, lo]


def u32(value: int) -> list[int]:
    return list(struct.unpack(">HH", struct.pack(">I", value)))


def s32(value: int) -> list[int]:
    return list(struct.unpack(">HH", struct.pack(">i", value)))


def u64(value: int) -> list[int]:
    return list(struct.unpack(">HHHH", struct.pack(">Q", value)))


def s16(value: int) -> int:
    return struct.unpack(">H", struct.pack(">h", value))[0]


def put(table: dict[int, int], address: int, regs: list[int] | int) -> None:
    if isinstance(regs, int):
        regs = [regs]
    for i, r in enumerate(regs):
        table[address + i] = r & 0xFFFF


# ================================================================== Modbus simulation


@dataclass
class SimUnit:
    """One Modbus device's memory; tests mutate it while the server runs."""

    unit_id: int
    holding: dict[int, int] = field(default_factory=dict)
    input: dict[int, int] = field(default_factory=dict)
    coils: dict[int, bool] = field(default_factory=dict)
    silent: bool = False
    writes: list[tuple[int, int, list[Any]]] = field(default_factory=list)  # (fc, addr, vals)
    on_write: Callable[[int, int, list[Any]], None] | None = None

    def sim_device(self) -> SimDevice:
        def block(table: dict[int, int]) -> list[SimData]:
            if not table:
                return [SimData(0, count=1, values=0, datatype=DataType.REGISTERS)]
            lo, hi = min(table), max(table)
            return [SimData(lo, count=hi - lo + 1, values=0, datatype=DataType.REGISTERS)]

        coil_base = (min(self.coils) // 16) * 16 if self.coils else 0
        coil_span = ((max(self.coils) - coil_base) // 16 + 1) * 16 if self.coils else 16
        coils = [SimData(coil_base, values=[False] * coil_span, datatype=DataType.BITS)]
        dis = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]
        return SimDevice(id=self.unit_id,
                         simdata=(coils, dis, block(self.holding), block(self.input)),
                         action=functools.partial(_action, self))


async def _action(unit: SimUnit, fc: int, start: int, address: int, count: int,
                  regs: list[int], set_values: list[Any] | None) -> None:
    if set_values is not None:
        unit.writes.append((fc, address, list(set_values)))
        if fc in (6, 16):
            for i, v in enumerate(set_values):
                unit.holding[address + i] = int(v) & 0xFFFF
        elif fc in (5, 15):
            for i, v in enumerate(set_values):
                unit.coils[address + i] = bool(v)
        if unit.on_write is not None:
            unit.on_write(fc, address, list(set_values))
        return None
    if fc in (3, 4):
        table = unit.holding if fc == 3 else unit.input
        for i in range(count):
            regs[address - start + i] = table.get(address + i, 0)
    return None


class PtyMasterSerial(serial.serialposix.Serial):
    """pyserial on an already open pty master fd ("ptymaster://<fd>"), so that a pymodbus
    serial server can sit at the far end of the line the driver opens by path."""

    def open(self) -> None:
        fd = int(str(self.portstr).split("://", 1)[1])
        self.fd = os.dup(fd)
        fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) | os.O_NONBLOCK)
        self.pipe_abort_read_r, self.pipe_abort_read_w = os.pipe()
        self.pipe_abort_write_r, self.pipe_abort_write_w = os.pipe()
        self.is_open = True

    def _reconfigure_port(self, force_update: bool = False) -> None:
        """The slave side sets the line discipline; nothing to do on the master."""

    def from_url(self, url: str) -> str:
        return url


def _install_pty_handler() -> None:
    if "halsim_serial_handlers" in sys.modules:
        return
    pkg = types.ModuleType("halsim_serial_handlers")
    pkg.__path__ = []  # a package, as pyserial imports ".protocol_<name>" from it
    mod = types.ModuleType("halsim_serial_handlers.protocol_ptymaster")
    mod.Serial = PtyMasterSerial  # type: ignore[attr-defined]
    sys.modules["halsim_serial_handlers"] = pkg
    sys.modules["halsim_serial_handlers.protocol_ptymaster"] = mod
    serial.protocol_handler_packages.append("halsim_serial_handlers")


class Pty:
    """A pseudo-terminal pair: ``path`` is what the driver opens, ``master`` the far end."""

    def __init__(self) -> None:
        self.master, self.slave = os.openpty()
        self.path = os.ttyname(self.slave)

    def close(self) -> None:
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


class ModbusSim:
    """A pymodbus server holding several SimUnits (one RS-485 line or one TCP endpoint)."""

    def __init__(self, *units: SimUnit) -> None:
        self.units = {u.unit_id: u for u in units}
        self.silent = False
        self.server: Any = None
        self.pty: Pty | None = None
        self.port = 0

    def _trace_pdu(self, sending: bool, pdu: Any) -> Any:
        if sending:
            return pdu
        unit = self.units.get(pdu.dev_id)
        if self.silent or unit is None or unit.silent:
            return None  # like a device that is off, or an id nobody has on the line
        return pdu

    async def start_rtu(self, baudrate: int = 19200) -> str:
        _install_pty_handler()
        self.pty = Pty()
        self.server = ModbusSerialServer(
            [u.sim_device() for u in self.units.values()],
            port=f"ptymaster://{self.pty.master}", baudrate=baudrate,
            trace_pdu=self._trace_pdu)
        await self.server.serve_forever(background=True)
        return self.pty.path

    async def start_tcp(self, port: int = 0) -> int:
        self.server = ModbusTcpServer([u.sim_device() for u in self.units.values()],
                                      address=("127.0.0.1", port), trace_pdu=self._trace_pdu)
        await self.server.serve_forever(background=True)
        self.port = self.server.transport.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.shutdown()
            self.server = None
        if self.pty is not None:
            self.pty.close()
            self.pty = None


# ------------------------------------------------------------------ meter images


def sdm630_unit(unit_id: int = 1, *, volts=(230.1, 231.2, 229.3), amps=(10.5, 10.6, 10.4),
                power=7250.0, kwh=1234.5, export_kwh=1.5, hz=50.02, var=-120.0,
                pf=0.98) -> SimUnit:
    u = SimUnit(unit_id)
    for i, v in enumerate(volts):
        put(u.input, 0x00 + 2 * i, f32(v))
    for i, a in enumerate(amps):
        put(u.input, 0x06 + 2 * i, f32(a))
    put(u.input, 0x34, f32(power))
    put(u.input, 0x3C, f32(var))
    put(u.input, 0x3E, f32(pf))
    put(u.input, 0x46, f32(hz))
    put(u.input, 0x48, f32(kwh))
    put(u.input, 0x4A, f32(export_kwh))
    return u


def set_sdm_energy(unit: SimUnit, kwh: float, power: float, register_power: int = 0x34) -> None:
    put(unit.input, 0x48, f32(kwh))
    put(unit.input, register_power, f32(power))


def sdm120_unit(unit_id: int = 1, *, volts=230.4, amps=6.1, power=1400.0, kwh=88.25,
                hz=49.98) -> SimUnit:
    u = SimUnit(unit_id)
    put(u.input, 0x00, f32(volts))
    put(u.input, 0x06, f32(amps))
    put(u.input, 0x0C, f32(power))
    put(u.input, 0x18, f32(0.0))
    put(u.input, 0x1E, f32(0.99))
    put(u.input, 0x46, f32(hz))
    put(u.input, 0x48, f32(kwh))
    put(u.input, 0x4A, f32(0.0))
    return u


def abb_b23_unit(unit_id: int = 1, *, wh_centi=123456, volts_deci=(2301, 2312, 2293),
                 amps_centi=(1050, 1060, 1040), power_centi=725000, hz_centi=5002,
                 pf_milli=980) -> SimUnit:
    u = SimUnit(unit_id)
    put(u.holding, 0x5000, u64(wh_centi))  # 0.01 kWh
    put(u.holding, 0x5004, u64(150))
    for i, v in enumerate(volts_deci):
        put(u.holding, 0x5B00 + 2 * i, u32(v))
    for i, a in enumerate(amps_centi):
        put(u.holding, 0x5B0C + 2 * i, u32(a))
    put(u.holding, 0x5B14, s32(power_centi))
    put(u.holding, 0x5B1C, s32(-12000))
    put(u.holding, 0x5B2C, hz_centi)
    put(u.holding, 0x5B3A, s16(pf_milli))
    return u


def sunspec_unit(unit_id: int, model: int, *, base: int = 40000, volts=(230.0, 231.0, 232.0),
                 amps=(16.0, 15.5, 15.0), watts=11000.0, wh_import=5_432_100.0,
                 wh_export=1000.0, hz=50.0, pf_pct=97.0) -> SimUnit:
    """A SunSpec device: "SunS", common model 1, a filler model, then meter ``model``."""
    u = SimUnit(unit_id)
    h = u.holding
    put(h, base, [0x5375, 0x6E53])
    addr = base + 2
    put(h, addr, [1, 66])  # common model, 66 registers of manufacturer strings etc.
    for i in range(66):
        h[addr + 2 + i] = 0x2020
    addr += 2 + 66
    put(h, addr, [120, 26])  # some other model to walk past (nameplate)
    for i in range(26):
        h[addr + 2 + i] = 0
    addr += 2 + 26
    if model in (201, 202, 203, 204):
        length = 105
        put(h, addr, [model, length])
        d = [0] * length
        # scale factors: A -2, V -1, Hz -2, W 0, VAR 0, PF -1, TotWh 0
        d[0] = int(round(sum(amps) * 100))
        for i, a in enumerate(amps):
            d[1 + i] = int(round(a * 100))
        d[4] = s16(-2)
        d[5] = int(round(sum(volts) / 3 * 10))
        for i, v in enumerate(volts):
            d[6 + i] = int(round(v * 10))
        d[13] = s16(-1)
        d[14] = int(round(hz * 100))
        d[15] = s16(-2)
        d[16] = s16(int(watts))
        d[20] = 0
        d[26] = s16(-300)
        d[30] = 0
        d[31] = s16(int(round(pf_pct * 10)))
        d[35] = s16(-1)
        d[36:38] = u32(int(wh_export))
        d[44:46] = u32(int(wh_import))
        d[52] = 0
        put(h, addr + 2, d)
    else:
        length = 124
        put(h, addr, [model, length])
        d = [0] * length
        nan = f32(float("nan"))
        for i in range(0, length - 1, 2):
            d[i:i + 2] = nan
        d[0:2] = f32(sum(amps))
        for i, a in enumerate(amps):
            d[2 + 2 * i:4 + 2 * i] = f32(a)
        for i, v in enumerate(volts):
            d[10 + 2 * i:12 + 2 * i] = f32(v)
        d[24:26] = f32(hz)
        d[26:28] = f32(watts)
        d[42:44] = f32(-300.0)
        d[50:52] = f32(pf_pct)
        d[58:60] = f32(wh_export)
        d[66:68] = f32(wh_import)
        put(h, addr + 2, d)
    addr += 2 + length
    put(h, addr, [0xFFFF, 0])
    return u


SUNSPEC_MODEL_ADDRESS = 40000 + 2 + 68 + 28  # where sunspec_unit puts the meter model


def set_sunspec_energy(unit: SimUnit, model: int, wh: float, base: int = 40000) -> None:
    data = base + 2 + 68 + 28 + 2
    if model in (201, 202, 203, 204):
        put(unit.holding, data + 44, u32(int(wh)))
    else:
        put(unit.holding, data + 66, f32(wh))


def evse_wb_unit(unit_id: int = 2, *, vehicle_state: int = 1, default_amps: int = 16) -> SimUnit:
    u = SimUnit(unit_id)
    put(u.holding, 1000, [default_amps, 0, vehicle_state, 32, 0, 18, 1, 0])
    put(u.holding, 2000, default_amps)
    return u


def phoenix_unit(unit_id: int = 180, *, status: str = "A") -> SimUnit:
    u = SimUnit(unit_id)
    put(u.input, 100, [ord(status), 0, 0, 0, 0, 0])
    put(u.holding, 528, 6)
    u.coils[400] = False
    return u


# ================================================================== I2C simulation


class FakeSMBus:
    """smbus2.SMBus's ``i2c_rdwr`` over simulated devices; unknown addresses NACK."""

    def __init__(self, devices: dict[int, Any] | None = None) -> None:
        self.devices: dict[int, Any] = dict(devices or {})
        self.unplugged = False
        self.closed = False
        self.opens = 0
        self._lock = threading.Lock()

    def opener(self, bus: int) -> FakeSMBus:
        if self.unplugged:
            raise FileNotFoundError(errno.ENOENT, f"No such file: /dev/i2c-{bus}")
        self.opens += 1
        self.closed = False
        return self

    def i2c_rdwr(self, *msgs: Any) -> None:
        with self._lock:
            for msg in msgs:
                dev = self.devices.get(msg.addr)
                if dev is None or self.unplugged or getattr(dev, "gone", False):
                    raise OSError(errno.EREMOTEIO, "Remote I/O error")
                if msg.flags & I2C_M_RD:
                    data = dev.read(msg.len)
                    ctypes.memmove(msg.buf, bytes(data), msg.len)
                else:
                    dev.write(bytes(msg))

    def close(self) -> None:
        self.closed = True


def pn532_frame(payload: bytes) -> bytes:
    length = len(payload)
    return (bytes([0, 0, 0xFF, length, (0x100 - length) & 0xFF]) + payload
            + bytes([(-sum(payload)) & 0xFF, 0]))


class FakePn532:
    """The PN532's I2C side: frames in, ACK + answer out, a status byte before each read."""

    ACK = bytes([0, 0, 0xFF, 0, 0xFF, 0])

    def __init__(self) -> None:
        self.card: bytes | None = None
        self.commands: list[tuple[int, bytes]] = []
        self.bad_frames = 0
        self.not_ready_polls = 1  # each frame is "not ready" for this many status polls
        self._out: deque[bytes] = deque()
        self._wait = 0
        self.gone = False

    def write(self, data: bytes) -> None:
        # preamble 00, start 00 FF, LEN, LCS, TFI D4, cmd, params..., DCS, postamble 00
        if data[:3] != b"\x00\x00\xff" or (data[3] + data[4]) & 0xFF:
            self.bad_frames += 1
            return
        body = data[5:5 + data[3]]
        if (sum(body) + data[5 + data[3]]) & 0xFF or body[0] != 0xD4:
            self.bad_frames += 1
            return
        cmd, params = body[1], bytes(body[2:])
        self.commands.append((cmd, params))
        if cmd == 0x02:
            answer = bytes([0x32, 0x01, 0x06, 0x07])
        elif cmd in (0x14, 0x32):
            answer = b""
        elif cmd == 0x4A:
            if self.card is None:
                answer = bytes([0])
            else:
                answer = bytes([1, 1, 0x00, 0x04, 0x08, len(self.card)]) + self.card
        else:
            self._out.extend([self.ACK, pn532_frame(b"\x7f")])
            self._wait = self.not_ready_polls
            return
        self._out.extend([self.ACK, pn532_frame(bytes([0xD5, cmd + 1]) + answer)])
        self._wait = self.not_ready_polls

    def read(self, n: int) -> bytes:
        if not self._out or self._wait > 0:
            self._wait = max(0, self._wait - 1)
            return bytes(n)  # status 0: busy
        if n == 1:
            return b"\x01"
        frame = self._out.popleft()
        self._wait = self.not_ready_polls if self._out else 0
        return (b"\x01" + frame + bytes(n))[:n]

    def polls(self) -> int:
        return sum(1 for c, _ in self.commands if c == 0x4A)


class FakeAds1115:
    """ADS1115 registers: config (OS/MUX/PGA/MODE/DR/COMP), conversion; ``volts(ch)`` is
    sampled when a single-shot conversion starts."""

    FSR = {0: 6.144, 1: 4.096, 2: 2.048, 3: 1.024, 4: 0.512, 5: 0.256, 6: 0.256, 7: 0.256}

    def __init__(self, volts: Callable[[int], float]) -> None:
        self.volts = volts
        self.pointer = 0
        self.config = 0x8583
        self.conversion = 0
        self.busy_polls = 1
        self._busy = 0
        self.configs_written: list[int] = []
        self.gone = False

    def write(self, data: bytes) -> None:
        self.pointer = data[0]
        if len(data) == 3 and self.pointer == 1:
            value = (data[1] << 8) | data[2]
            self.configs_written.append(value)
            self.config = value & 0x7FFF
            if value & 0x8000:
                mux = (value >> 12) & 0b111
                assert mux >= 0b100, "the driver must read single-ended inputs"
                fsr = self.FSR[(value >> 9) & 0b111]
                raw = int(round(self.volts(mux - 4) / fsr * 32768))
                self.conversion = max(-32768, min(32767, raw))
                self._busy = self.busy_polls

    def read(self, n: int) -> bytes:
        if self.pointer == 1:
            if self._busy:
                self._busy -= 1
                return (self.config & 0x7FFF).to_bytes(2, "big")[:n]
            return (self.config | 0x8000).to_bytes(2, "big")[:n]
        return self.conversion.to_bytes(2, "big", signed=True)[:n]


class PilotCircuit:
    """The EV side of a control pilot as the peak detectors see it.

    The high plateau follows the EV's state (12/9/6/3 V); while the PWM runs the low
    plateau is -12 V, unless the EV's diode is missing (then it mirrors the high level).
    ``duty`` comes from the PWM output the driver drives.
    """

    LEVELS = {"A": 12.0, "B": 9.0, "C": 6.0, "D": 3.0, "E": 0.0, "F": -12.0}

    def __init__(self, duty: Callable[[], float], high_scale: float = 4.0,
                 low_scale: float = -4.0) -> None:
        self.duty = duty
        self.state: str | None = "A"  # forced state; None = behave like a car (below)
        self.plugged = False
        self.wants_energy = True
        self.diode = True
        self.high_scale = high_scale
        self.low_scale = low_scale

    def ev_state(self) -> str:
        if self.state is not None:
            return self.state
        if not self.plugged:
            return "A"
        d = self.duty()
        # a car asks for energy (C) only when the pilot offers at least 6 A (10 % duty)
        return "C" if self.wants_energy and 0.1 <= d < 1.0 else "B"

    def high(self) -> float:
        return self.LEVELS[self.ev_state()]

    def low(self) -> float:
        d = self.duty()
        if not 0.0 < d < 1.0:
            return self.high()  # no PWM: the signal is a steady level
        if self.ev_state() == "A" or self.diode:
            return -12.0
        return -self.high()

    def adc_volts(self, channel: int) -> float:
        if channel == 0:
            return self.high() / self.high_scale
        return self.low() / self.low_scale


# ================================================================== evdev simulation


@dataclass
class FakeKeyEvent:
    type: int
    code: int
    value: int


class FakeInputDevice:
    name = "Fake USB RFID"
    CODES = {**{c: 2 + i for i, c in enumerate("1234567890")},
             **{c: 30 + i for i, c in enumerate("ASDFGHJKL")},
             **{c: 16 + i for i, c in enumerate("QWERTYUIOP")},
             **{c: 44 + i for i, c in enumerate("ZXCVBNM")}}

    def __init__(self) -> None:
        self.queue: asyncio.Queue[list[FakeKeyEvent] | None] = asyncio.Queue()
        self.grabbed = False
        self.closed = False

    def grab(self) -> None:
        self.grabbed = True

    def ungrab(self) -> None:
        self.grabbed = False

    def close(self) -> None:
        self.closed = True

    async def async_read(self) -> list[FakeKeyEvent]:
        events = await self.queue.get()
        if events is None:
            raise OSError(errno.ENODEV, "No such device")
        return events

    def type_line(self, text: str) -> None:
        events = []
        for ch in text:
            code = self.CODES[ch.upper()]
            events += [FakeKeyEvent(4, 4, 0x70000), FakeKeyEvent(1, code, 1),
                       FakeKeyEvent(1, code, 0), FakeKeyEvent(0, 0, 0)]
        events += [FakeKeyEvent(1, 28, 1), FakeKeyEvent(1, 28, 0)]
        self.queue.put_nowait(events)

    def unplug(self) -> None:
        self.queue.put_nowait(None)


ROOT = Path(__file__).resolve().parents[2]


def example_bench_rig() -> dict:
    """The bench-rig block at the end of config.example.yaml, uncommented and parsed.

    The example ships commented out (the default config runs on the mock HAL); the tests load
    exactly that text so the documented rig cannot drift from what the drivers accept.
    """
    text = (ROOT / "config.example.yaml").read_text()
    block = text.split("# >>> bench-rig\n", 1)[1].split("# <<< bench-rig", 1)[0]
    lines = [line[2:] if line.startswith("# ") else line[1:] for line in block.splitlines()]
    return yaml.safe_load("\n".join(lines))
