"""Modbus RTU (RS-485 through pyserial) and Modbus TCP through pymodbus.

This is the only module that imports pymodbus, so its API churn (``slave=`` became
``device_id=`` in 3.10) stays here.  One :class:`ModbusBus` is one physical line or one TCP
endpoint: every device on it (a meter and an EVSE board sharing the RS-485 pair) goes
through the same client and the same lock, because RS-485 is half-duplex and two masters
talking at once garble both answers.  Timeouts and retries are ours rather than pymodbus's
so that a silent device costs a known, bounded time, and every failure is turned into a
:class:`DriverError` whose text says what to check.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import grp
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerType

from hal.drivers.base import DeviceRejected, NoAnswer, PortUnavailable

log = logging.getLogger(__name__)

# pymodbus logs every timeout at ERROR with a hex dump; we report the same failure once,
# with a cause, so keep its own chatter down unless someone configured it explicitly.
_pymodbus_log = logging.getLogger("pymodbus")
if _pymodbus_log.level == logging.NOTSET:
    _pymodbus_log.setLevel(logging.CRITICAL)

EXCEPTION_HINTS = {
    1: "illegal function (input vs. holding registers? wrong device type?)",
    2: "illegal data address (register not in this device's map: wrong type or model?)",
    3: "illegal data value",
    4: "device failure",
    5: "acknowledge (busy, retry later)",
    6: "device busy",
    10: "gateway path unavailable",
    11: "gateway target did not respond",
}


@dataclass(frozen=True, slots=True)
class RtuLink:
    port: str
    baudrate: int = 9600
    parity: str = "N"
    stopbits: int = 1
    bytesize: int = 8

    def describe(self) -> str:
        return f"{self.port} {self.baudrate} {self.bytesize}{self.parity}{self.stopbits}"


@dataclass(frozen=True, slots=True)
class TcpLink:
    host: str
    port: int = 502

    def describe(self) -> str:
        return f"{self.host}:{self.port}"


class ModbusBus:
    """A shared Modbus line: one client, one lock, bounded time per request."""

    def __init__(self, name: str, link: RtuLink | TcpLink, *, timeout_s: float = 0.5,
                 retries: int = 2, request_gap_s: float = 0.0) -> None:
        self.name = name
        self.link = link
        self.timeout_s = timeout_s
        self.retries = retries
        self.request_gap_s = request_gap_s
        self._client: Any = None
        self._lock = asyncio.Lock()

    def describe(self) -> str:
        kind = "RTU" if isinstance(self.link, RtuLink) else "TCP"
        return f"Modbus {kind} {self.link.describe()}"

    @property
    def is_rtu(self) -> bool:
        return isinstance(self.link, RtuLink)

    # ------------------------------------------------------------------ connection

    async def open(self) -> None:
        """Connect now (instead of on the first request); raises PortUnavailable."""
        async with self._lock:
            await self._connect()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def _make_client(self) -> Any:
        link = self.link
        if isinstance(link, RtuLink):
            return AsyncModbusSerialClient(
                link.port, framer=FramerType.RTU, baudrate=link.baudrate,
                bytesize=link.bytesize, parity=link.parity, stopbits=link.stopbits,
                timeout=self.timeout_s, retries=0, reconnect_delay=0, name=self.name)
        return AsyncModbusTcpClient(link.host, port=link.port, timeout=self.timeout_s,
                                    retries=0, reconnect_delay=0, name=self.name)

    async def _connect(self) -> None:
        if self._client is not None and self._client.connected:
            return
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()
            self._client = None
        if isinstance(self.link, RtuLink) and (cause := _serial_precheck(self.link.port)):
            raise PortUnavailable(cause)
        client = self._make_client()
        try:
            ok = await asyncio.wait_for(client.connect(), timeout=self.timeout_s + 2.0)
        except (TimeoutError, OSError):
            ok = False
        if not ok:
            with contextlib.suppress(Exception):
                client.close()
            raise PortUnavailable(await self._diagnose_connect())
        self._client = client

    async def _diagnose_connect(self) -> str:
        link = self.link
        if isinstance(link, RtuLink):
            return _serial_busy_cause(link.port) or f"{link.port}: cannot open the serial port"
        try:
            _r, w = await asyncio.wait_for(asyncio.open_connection(link.host, link.port),
                                          timeout=self.timeout_s + 2.0)
        except ConnectionRefusedError:
            return (f"{link.host}:{link.port} refused the connection (nothing listens there: "
                    "wrong port, or Modbus TCP disabled on the device)")
        except TimeoutError:
            return (f"{link.host}:{link.port} does not answer (wrong IP address, device off, "
                    "or a firewall/network problem)")
        except socket.gaierror as exc:
            return f"cannot resolve host {link.host!r}: {exc}"
        except OSError as exc:
            return f"{link.host}:{link.port}: {exc.strerror or exc}"
        w.close()
        return f"{link.host}:{link.port}: TCP connects but the Modbus client did not start"

    # ------------------------------------------------------------------ requests

    async def _transact(self, unit: int, what: str,
                        call: Callable[[Any], Awaitable[Any]]) -> Any:
        async with self._lock:
            for _attempt in range(self.retries + 1):
                await self._connect()
                if self.request_gap_s:
                    await asyncio.sleep(self.request_gap_s)  # line turnaround some devices need
                try:
                    rr = await asyncio.wait_for(call(self._client), timeout=self.timeout_s + 1.0)
                except (ModbusIOException, TimeoutError):
                    continue  # silence or a garbled frame: worth another try
                except ConnectionException:
                    await self.close()
                    continue
                except ModbusException as exc:
                    raise DeviceRejected(f"device id {unit} on {self.describe()}: {exc}") from exc
                if rr.isError():
                    code = getattr(rr, "exception_code", None)
                    if code in (10, 11):  # a TCP gateway telling us the RTU device is silent
                        continue
                    hint = EXCEPTION_HINTS.get(code, "") if isinstance(code, int) else ""
                    raise DeviceRejected(
                        f"device id {unit} on {self.describe()} refused {what}: "
                        f"Modbus exception {code}" + (f", {hint}" if hint else ""))
                return rr
            raise NoAnswer(self._silence_cause(unit))

    def _silence_cause(self, unit: int) -> str:
        tries = self.retries + 1
        base = (f"no answer from device id {unit} on {self.describe()} "
                f"({tries} {'try' if tries == 1 else 'tries'} of {self.timeout_s:g} s)")
        if isinstance(self.link, RtuLink):
            return (base + ": check the device id, baud rate and parity, A/B wiring, "
                           "termination and that the device is powered")
        return base + ": check the unit id and that the device is powered"

    async def read_registers(self, unit: int, address: int, count: int, *,
                             function: int = 3) -> list[int]:
        """Read ``count`` registers with function 3 (holding) or 4 (input)."""
        if function not in (3, 4):
            raise ValueError(f"function must be 3 or 4, not {function}")

        def call(c: Any) -> Awaitable[Any]:
            fn = c.read_holding_registers if function == 3 else c.read_input_registers
            return fn(address, count=count, device_id=unit)

        rr = await self._transact(unit, f"reading {count} registers at {address} "
                                        f"(function {function})", call)
        regs = list(rr.registers)
        if len(regs) < count:
            raise DeviceRejected(f"device id {unit} on {self.describe()} answered "
                                 f"{len(regs)} of {count} registers at {address}")
        return regs[:count]

    async def write_register(self, unit: int, address: int, value: int) -> None:
        await self._transact(unit, f"writing register {address}",
                             lambda c: c.write_register(address, value, device_id=unit))

    async def write_registers(self, unit: int, address: int, values: list[int]) -> None:
        await self._transact(unit, f"writing {len(values)} registers at {address}",
                             lambda c: c.write_registers(address, values, device_id=unit))

    async def write_coil(self, unit: int, address: int, value: bool) -> None:
        await self._transact(unit, f"writing coil {address}",
                             lambda c: c.write_coil(address, value, device_id=unit))


def _serial_precheck(port: str) -> str | None:
    """Name the usual reasons a serial port cannot be opened, before pymodbus hides them."""
    if "://" in port:  # pyserial URL handlers (socket://, rfc2217://) have no device node
        return None
    if not os.path.exists(port):
        return (f"{port} does not exist: adapter unplugged or wrong name "
                "(see ls /dev/serial/by-id/)")
    if not os.access(port, os.R_OK | os.W_OK):
        try:
            group = grp.getgrgid(os.stat(port).st_gid).gr_name
        except (KeyError, OSError):
            group = "dialout"
        return f"permission denied on {port}: add the service user to group '{group}'"
    return None


def _serial_busy_cause(port: str) -> str | None:
    if "://" in port:
        return None
    try:
        fd = os.open(port, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.EACCES:
            return f"permission denied on {port}"
        return f"{port}: {exc.strerror}"
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return (f"{port} is in use by another process (a running cp-agent service, "
                "ModemManager or a terminal program)")
    except OSError:
        return None
    finally:
        os.close(fd)
    return None
