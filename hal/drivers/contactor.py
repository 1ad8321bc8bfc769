"""The main contactor on a GPIO coil output, checked by its auxiliary (feedback) contact.

A contactor that does not do what it was told is the most dangerous fault a charger has:
a welded contact keeps the cable live after the session, a failed one makes the EV think
it is charging.  The feedback is therefore checked twice: right after every command (the
caller gets ``HalError`` if it has not agreed within the settle time) and in the background
(a contact that welds or drops out on its own raises a fault event after the settle time,
so contact bounce is not reported).  A welded contact is latched: ``set(True)`` is refused
until the contact has been seen open with the coil off.
"""

from __future__ import annotations

import asyncio
import logging

from hal.drivers.base import DeviceDriver, DriverError, EventSink, Health, ProbeResult
from hal.drivers.gpio import DigitalIn, DigitalOut
from hal.interfaces import Contactor, FaultKind, HalError

log = logging.getLogger(__name__)


class GpioContactor(Contactor, DeviceDriver):
    def __init__(self, evse_id: int, coil: DigitalOut, feedback: DigitalIn | None = None, *,
                 sink: EventSink, settle_s: float = 0.3, required: bool = True) -> None:
        self.evse_id = evse_id
        self.coil = coil
        self.feedback = feedback
        self.settle_s = settle_s
        self.required = required
        self.open_fault = FaultKind.INTERNAL
        self.fault_evse = evse_id
        fb = f", feedback GPIO {feedback.pin}" if feedback else ""
        self.label = f"evse {evse_id} contactor (coil GPIO {coil.pin}{fb})"
        self._commanded = False
        self._open_error: str | None = None
        self._welded = Health(sink, evse_id, FaultKind.WELDED, self.label)
        self._dropped = Health(sink, evse_id, FaultKind.CONTACTOR_FAILED, self.label)
        self._fb_changed = asyncio.Event()
        self._in_command = False
        self._check: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        try:
            self.coil.open()
            self.coil.set(False)
            if self.feedback is not None:
                self.feedback.open(self._on_feedback, asyncio.get_running_loop())
        except DriverError as exc:
            self._open_error = str(exc)
            raise
        self._open_error = None
        self._commanded = False
        if self.feedback is not None:
            self._schedule_check()

    async def close(self) -> None:
        if self._check is not None:
            self._check.cancel()
            self._check = None
        if self.coil.is_open:
            try:
                self.coil.set(False)
            except DriverError:
                log.exception("%s: could not drop the coil on close", self.label)
        self._commanded = False
        self.coil.close()
        if self.feedback is not None:
            self.feedback.close()

    async def probe(self) -> ProbeResult:
        try:
            if not self.coil.is_open:
                await self.open()
        except DriverError as exc:
            return ProbeResult(self.label, False, str(exc), self.required)
        coil = "on" if self._commanded else "off"
        if self.feedback is None:
            return ProbeResult(self.label, True, f"coil {coil} (no feedback contact configured)",
                               self.required)
        try:
            fb = self.feedback.active
        except DriverError as exc:
            return ProbeResult(self.label, False, str(exc), self.required)
        if fb == self._commanded:
            return ProbeResult(self.label, True,
                               f"coil {coil}, feedback {'closed' if fb else 'open'}",
                               self.required)
        if fb:
            cause = ("feedback says closed while the coil is off: welded contact, or the "
                     "feedback polarity (active_high) or pull is wrong")
        else:
            cause = ("feedback says open while the coil is on: contactor not switching "
                     "(coil supply, relay driver) or feedback not wired")
        return ProbeResult(self.label, False, cause, self.required)

    # ------------------------------------------------------------------ Contactor

    @property
    def commanded_closed(self) -> bool:
        return self._commanded

    def feedback_closed(self) -> bool | None:
        if self.feedback is None or not self.feedback.is_open:
            return None
        try:
            return self.feedback.active
        except DriverError:
            return None

    async def set(self, closed: bool) -> None:
        if not self.coil.is_open:
            # opening on first use lets the core's "open everything" at start-up drive the
            # coil off even before the HAL is started
            try:
                await self.open()
            except DriverError as exc:
                raise HalError(FaultKind.INTERNAL,
                               f"{self.label}: coil output unavailable: {exc}") from exc
        if closed and self._welded.faulted:
            raise HalError(FaultKind.WELDED,
                           f"{self.label}: refusing to close, contact welded "
                           f"({self._welded.detail})")
        self._in_command = True
        if self._check is not None:
            self._check.cancel()
            self._check = None
        try:
            try:
                self.coil.set(closed)
            except DriverError as exc:
                raise HalError(FaultKind.INTERNAL, f"{self.label}: {exc}") from exc
            self._commanded = closed
            if self.feedback is None:
                return
            fb = await self._settled_feedback(closed)
            if fb == closed:
                self._judge(fb)
                return
            if fb:  # commanded open, still closed
                detail = "feedback closed while commanded open (welded contact)"
                self._welded.failed(detail, announce=False)
                raise HalError(FaultKind.WELDED, f"{self.label}: {detail}")
            # commanded closed, never closed: take the coil off again rather than leave an
            # unknown contactor energised
            try:
                self.coil.set(False)
            except DriverError:
                log.exception("%s: could not drop the coil", self.label)
            self._commanded = False
            raise HalError(FaultKind.CONTACTOR_FAILED,
                           f"{self.label}: feedback stayed open {self.settle_s:g} s after "
                           "closing (contactor failed or feedback not wired)")
        finally:
            self._in_command = False

    # ------------------------------------------------------------------ feedback

    async def _settled_feedback(self, wanted: bool) -> bool:
        """Wait up to the settle time for the feedback to agree; returns its last value."""
        assert self.feedback is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settle_s
        while True:
            self._fb_changed.clear()
            fb = self.feedback.active
            remaining = deadline - loop.time()
            if fb == wanted or remaining <= 0:
                return fb
            try:
                await asyncio.wait_for(self._fb_changed.wait(), timeout=remaining)
            except TimeoutError:
                return self.feedback.active

    def _on_feedback(self, _active: bool) -> None:
        self._fb_changed.set()
        if not self._in_command:
            self._schedule_check()

    def _schedule_check(self) -> None:
        if self._check is not None:
            self._check.cancel()
        loop = asyncio.get_running_loop()
        self._check = loop.call_later(self.settle_s, self._background_check)

    def _background_check(self) -> None:
        self._check = None
        if self._in_command or self.feedback is None or not self.feedback.is_open:
            return
        try:
            fb = self.feedback.active
        except DriverError:
            return
        self._judge(fb)

    def _judge(self, fb: bool) -> None:
        """Turn a settled feedback value into fault transitions."""
        if fb == self._commanded:
            self._dropped.recovered()
            if not fb:
                self._welded.recovered()
        elif fb:
            self._welded.failed("feedback closed while the coil is off (welded contact)")
        else:
            self._dropped.failed("feedback opened while the coil is on (contactor dropped out)")
