"""I2C through smbus2: the only module that imports it.

Raw combined transfers (``i2c_rdwr``) are used rather than SMBus block commands because the
PN532 speaks its own framing and the ADS1115 wants a pointer write followed by a repeated
start.  smbus2 blocks in an ioctl, so every transfer runs in a worker thread, serialised by a
thread lock (a transfer abandoned by a timeout must not overlap the next one on the wire)
and bounded by a timeout on the loop side.
"""

from __future__ import annotations

import asyncio
import errno
import grp
import os
import threading
from collections.abc import Callable
from typing import Any

from smbus2 import SMBus, i2c_msg

from hal.drivers.base import DriverError, NoAnswer, PortUnavailable

SMBusOpener = Callable[[int], Any]


class I2cBus:
    """One /dev/i2c-N adapter, shared by every device on it."""

    def __init__(self, name: str, bus: int, *, timeout_s: float = 1.0,
                 opener: SMBusOpener | None = None) -> None:
        self.name = name
        self.bus = bus
        self.timeout_s = timeout_s
        self._opener: SMBusOpener = opener or SMBus
        self._smbus: Any = None
        self._thread_lock = threading.Lock()
        self._lock = asyncio.Lock()

    @property
    def device_path(self) -> str:
        return f"/dev/i2c-{self.bus}"

    def describe(self) -> str:
        return f"I2C bus {self.bus} ({self.device_path})"

    async def open(self) -> None:
        async with self._lock:
            await self._ensure_open()

    async def _ensure_open(self) -> None:
        if self._smbus is not None:
            return
        try:
            self._smbus = await asyncio.wait_for(asyncio.to_thread(self._opener, self.bus),
                                                 timeout=self.timeout_s)
        except TimeoutError as exc:
            raise PortUnavailable(f"{self.device_path}: opening timed out") from exc
        except OSError as exc:
            raise PortUnavailable(self._open_cause(exc)) from exc

    def _open_cause(self, exc: OSError) -> str:
        path = self.device_path
        if exc.errno == errno.ENOENT:
            return (f"{path} does not exist: enable I2C (raspi-config, or dtparam=i2c_arm=on "
                    "in config.txt) or fix the bus number")
        if exc.errno == errno.EACCES:
            try:
                group = grp.getgrgid(os.stat(path).st_gid).gr_name
            except (KeyError, OSError):
                group = "i2c"
            return f"permission denied on {path}: add the service user to group '{group}'"
        return f"{path}: {exc.strerror or exc}"

    async def close(self) -> None:
        smbus, self._smbus = self._smbus, None
        if smbus is not None:
            with self._thread_lock:
                try:
                    smbus.close()
                except OSError:
                    pass

    def _xfer(self, address: int, write: bytes | None, read_len: int) -> bytes:
        with self._thread_lock:
            smbus = self._smbus
            if smbus is None:
                raise PortUnavailable(f"{self.device_path} is closed")
            msgs = []
            if write:
                msgs.append(i2c_msg.write(address, write))
            rd = i2c_msg.read(address, read_len) if read_len else None
            if rd is not None:
                msgs.append(rd)
            smbus.i2c_rdwr(*msgs)
            return bytes(rd) if rd is not None else b""

    async def transfer(self, address: int, write: bytes | None = None, read_len: int = 0) -> bytes:
        """Write then read (repeated start) in one transaction; either part may be empty."""
        async with self._lock:
            await self._ensure_open()
            try:
                return await asyncio.wait_for(
                    asyncio.to_thread(self._xfer, address, write, read_len),
                    timeout=self.timeout_s)
            except TimeoutError as exc:
                raise NoAnswer(f"{self.describe()}: transfer to {address:#04x} timed out "
                               f"after {self.timeout_s:g} s (bus stuck?)") from exc
            except OSError as exc:
                if exc.errno in (errno.EREMOTEIO, errno.ENXIO, errno.EIO, errno.ETIMEDOUT):
                    raise NoAnswer(f"no device answers at {address:#04x} on {self.describe()}: "
                                   "check wiring, power and the address (i2cdetect -y "
                                   f"{self.bus})") from exc
                raise DriverError(f"{self.describe()}, device {address:#04x}: "
                                  f"{exc.strerror or exc}") from exc

    async def write(self, address: int, data: bytes) -> None:
        await self.transfer(address, data, 0)

    async def read(self, address: int, length: int) -> bytes:
        return await self.transfer(address, None, length)
