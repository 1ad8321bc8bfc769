"""Serial ports through pyserial: the only module that imports it (Modbus RTU goes through
pymodbus, which brings its own pyserial transport).

pyserial blocks, so opening and reading run in worker threads; a read is bounded by the
port's own timeout and by a loop-side timeout, and ``close`` cancels a pending read so that
stopping the agent never waits on a silent reader.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import os
from typing import Any

import serial

from hal.drivers.base import DriverError, PortUnavailable


class SerialPort:
    def __init__(self, port: str, *, baudrate: int = 9600, bytesize: int = 8,
                 parity: str = "N", stopbits: int = 1) -> None:
        self.port = port
        self.baudrate = baudrate
        self.bytesize = bytesize
        self.parity = parity
        self.stopbits = stopbits
        self._ser: Any = None

    def describe(self) -> str:
        return f"{self.port} {self.baudrate} {self.bytesize}{self.parity}{self.stopbits}"

    @property
    def is_open(self) -> bool:
        return self._ser is not None

    def _open_blocking(self) -> Any:
        return serial.serial_for_url(self.port, baudrate=self.baudrate, bytesize=self.bytesize,
                                     parity=self.parity, stopbits=self.stopbits, timeout=0.5,
                                     exclusive=True)

    async def open(self) -> None:
        if self._ser is not None:
            return
        try:
            self._ser = await asyncio.wait_for(asyncio.to_thread(self._open_blocking), timeout=5.0)
        except TimeoutError as exc:
            raise PortUnavailable(f"{self.port}: opening timed out") from exc
        except (serial.SerialException, OSError, ValueError) as exc:
            raise PortUnavailable(self._cause(exc)) from exc

    def _cause(self, exc: BaseException) -> str:
        code = getattr(exc, "errno", None)
        if code == errno.ENOENT or (not os.path.exists(self.port) and "://" not in self.port):
            return (f"{self.port} does not exist: reader unplugged or wrong name "
                    "(see ls /dev/serial/by-id/)")
        if code == errno.EACCES:
            try:
                group = grp.getgrgid(os.stat(self.port).st_gid).gr_name
            except (KeyError, OSError):
                group = "dialout"
            return f"permission denied on {self.port}: add the service user to group '{group}'"
        if "lock" in str(exc).lower():
            return f"{self.port} is in use by another process"
        return f"{self.port}: {exc}"

    async def read(self, max_bytes: int, timeout_s: float) -> bytes:
        """Up to ``max_bytes``; returns early with what arrived within ``timeout_s``."""
        ser = self._ser
        if ser is None:
            raise DriverError(f"{self.port}: not open")
        try:
            if ser.timeout != timeout_s:
                ser.timeout = timeout_s  # reconfigures the tty: fails too when unplugged
            return await asyncio.wait_for(asyncio.to_thread(self._read_some, ser, max_bytes),
                                          timeout=timeout_s + 2.0)
        except TimeoutError as exc:
            raise DriverError(f"{self.port}: read hung") from exc
        except (serial.SerialException, OSError) as exc:
            raise DriverError(f"{self.port}: {exc} (device unplugged?)") from exc

    @staticmethod
    def _read_some(ser: Any, max_bytes: int) -> bytes:
        first = ser.read(1)  # blocks up to the timeout for the first byte
        if not first:
            return b""
        waiting = ser.in_waiting
        return first + (ser.read(min(waiting, max_bytes - 1)) if waiting else b"")

    async def write(self, data: bytes) -> None:
        ser = self._ser
        if ser is None:
            raise DriverError(f"{self.port}: not open")
        try:
            await asyncio.wait_for(asyncio.to_thread(ser.write, data), timeout=2.0)
        except (TimeoutError, serial.SerialException, OSError) as exc:
            raise DriverError(f"{self.port}: write failed: {exc}") from exc

    async def close(self) -> None:
        ser, self._ser = self._ser, None
        if ser is None:
            return
        with contextlib.suppress(Exception):
            ser.cancel_read()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(ser.close)
