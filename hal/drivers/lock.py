"""Connector (socket) lock on GPIO: a motor actuator pulsed in either direction, or a
solenoid held while locked, optionally confirmed by a position switch.

Type 2 socket actuators are driven by short pulses and then stay put without power, so the
motor variant never holds its outputs on; without a position switch the lock can only
report that it pulsed, which is why a feedback input is strongly recommended.
"""

from __future__ import annotations

import asyncio
import logging

from hal.drivers.base import DeviceDriver, DriverError, ProbeResult
from hal.drivers.gpio import DigitalIn, DigitalOut
from hal.interfaces import ConnectorLock, FaultKind

log = logging.getLogger(__name__)


class GpioLock(ConnectorLock, DeviceDriver):
    def __init__(self, evse_id: int, *, lock_out: DigitalOut, unlock_out: DigitalOut | None = None,
                 feedback: DigitalIn | None = None, pulse_s: float = 0.6,
                 timeout_s: float = 2.0, required: bool = True) -> None:
        """``unlock_out`` given: motor (pulse lock_out or unlock_out); absent: solenoid
        (lock_out held on while locked)."""
        self.evse_id = evse_id
        self.lock_out = lock_out
        self.unlock_out = unlock_out
        self.feedback = feedback
        self.pulse_s = pulse_s
        self.timeout_s = timeout_s
        self.required = required
        self.open_fault = FaultKind.LOCK
        self.fault_evse = evse_id
        kind = "motor" if unlock_out is not None else "solenoid"
        self.label = f"evse {evse_id} connector lock ({kind}, GPIO {lock_out.pin})"
        self._locked = False
        self._moved = asyncio.Event()

    async def open(self) -> None:
        self.lock_out.open()
        if self.unlock_out is not None:
            self.unlock_out.open()
        if self.feedback is not None:
            self.feedback.open(lambda _a: self._moved.set(), asyncio.get_running_loop())
            self._locked = self.feedback.active

    async def close(self) -> None:
        for dev in (self.lock_out, self.unlock_out, self.feedback):
            if dev is not None:
                dev.close()

    async def probe(self) -> ProbeResult:
        try:
            await self.open()
            where = ""
            if self.feedback is not None:
                where = f", switch says {'locked' if self.feedback.active else 'unlocked'}"
        except DriverError as exc:
            return ProbeResult(self.label, False, str(exc), self.required)
        return ProbeResult(self.label, True, f"outputs claimed{where}", self.required)

    @property
    def locked(self) -> bool:
        if self.feedback is not None and self.feedback.is_open:
            try:
                return self.feedback.active
            except DriverError:
                return self._locked
        return self._locked

    async def set_locked(self, locked: bool) -> bool:
        if not self.lock_out.is_open:
            return False
        try:
            if self.unlock_out is None:
                self.lock_out.set(locked)
            else:
                out = self.lock_out if locked else self.unlock_out
                out.set(True)
                try:
                    await asyncio.sleep(self.pulse_s)  # actuator travel time, not a sync
                finally:
                    out.set(False)
        except DriverError:
            log.exception("%s: actuator output failed", self.label)
            return False
        if self.feedback is None:
            self._locked = locked
            return True
        ok = await self._wait_position(locked)
        self._locked = self.feedback.active if self.feedback.is_open else self._locked
        return ok

    async def _wait_position(self, locked: bool) -> bool:
        assert self.feedback is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        while True:
            self._moved.clear()
            try:
                if self.feedback.active == locked:
                    return True
            except DriverError:
                return False
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            try:
                await asyncio.wait_for(self._moved.wait(), timeout=remaining)
            except TimeoutError:
                return self.feedback.active == locked
