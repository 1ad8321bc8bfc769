"""What every token reader shares: debouncing, and a supervised read loop.

Readers report the same card over and over while it lies on the antenna (a PN532 polled
four times a second, an RDM6300 clone that repeats its frame); the core must see one tap.
The read loop turns a reader that disappears (USB unplugged, I2C NACKs) into a READER
fault, keeps trying to reopen it with a backoff, and clears the fault once it reads again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from hal.drivers.base import (
    Backoff,
    DeviceDriver,
    DriverError,
    EventSink,
    Health,
    Monotonic,
    ProbeResult,
    sleep_or_stop,
)
from hal.interfaces import FaultKind, TokenPresented, TokenReader

log = logging.getLogger(__name__)


class Debouncer:
    """Accepts a UID when it differs from the last one, or when the last sighting of it is
    at least ``hold_off_s`` old.  Every sighting refreshes the time, so a card left on the
    reader is reported once; lifting it and tapping again after the hold-off reports again."""

    def __init__(self, hold_off_s: float = 2.0, monotonic: Monotonic = time.monotonic) -> None:
        self.hold_off_s = hold_off_s
        self._now = monotonic
        self._uid: str | None = None
        self._seen = 0.0

    def accept(self, uid: str) -> bool:
        now = self._now()
        fresh = uid != self._uid or now - self._seen >= self.hold_off_s
        self._uid, self._seen = uid, now
        return fresh


class ReaderDriver(TokenReader, DeviceDriver):
    """Base of the concrete readers: subclasses implement open/close/poll of the device."""

    kind_name = "reader"

    def __init__(self, name: str, *, sink: EventSink, evse_id: int | None = None,
                 token_type: str = "ISO14443", hold_off_s: float = 2.0,
                 poll_interval_s: float = 0.0, monotonic: Monotonic = time.monotonic,
                 required: bool = True, where: str = "") -> None:
        self.name = name
        self.sink = sink
        self.evse_id = evse_id
        self.token_type = token_type
        self.poll_interval_s = poll_interval_s
        self.required = required
        self.debouncer = Debouncer(hold_off_s, monotonic)
        self.label = f"reader {name} ({self.kind_name}{', ' + where if where else ''})"
        self._health = Health(sink, evse_id or 0, FaultKind.READER, self.label)
        self._device_open = False
        self._stop = asyncio.Event()

    # subclass hooks -------------------------------------------------------------

    async def _open_device(self) -> None:
        raise NotImplementedError

    async def _close_device(self) -> None:
        raise NotImplementedError

    async def _poll_once(self) -> None:
        """Wait (bounded) for a token and hand it to :meth:`_present`; raise DriverError
        when the reader is in trouble."""
        raise NotImplementedError

    async def _identify(self) -> str:
        """What the probe prints when the device answers."""
        return "opened"

    # ---------------------------------------------------------------------------

    def healthy(self) -> bool:
        return self._device_open and not self._health.faulted

    def _present(self, uid: str) -> None:
        if self.debouncer.accept(uid):
            log.info("%s: token %s", self.label, uid)
            self.sink.emit(TokenPresented(uid=uid, evse_id=self.evse_id, reader=self.name,
                                          token_type=self.token_type))

    async def _try_open(self) -> bool:
        try:
            await self._open_device()
        except DriverError as exc:
            self._health.failed(str(exc))
            return False
        self._device_open = True
        return True

    async def _safe_close(self) -> None:
        self._device_open = False
        with contextlib.suppress(Exception):
            await self._close_device()

    async def open(self) -> None:
        self._stop.clear()
        await self._try_open()  # failures are reported as READER faults and retried

    async def close(self) -> None:
        self._stop.set()
        await self._safe_close()

    def background(self) -> Callable[[], Awaitable[None]]:
        return self._run

    async def _run(self) -> None:
        self._stop.clear()
        backoff = Backoff(0.5, 10.0)
        while not self._stop.is_set():
            if not self._device_open and not await self._try_open():
                if await sleep_or_stop(self._stop, backoff.next()):
                    return
                continue
            try:
                await self._poll_once()
            except Exception as exc:  # DriverError, or a driver bug: either way, recover
                if not isinstance(exc, DriverError):
                    log.exception("%s: unexpected error", self.label)
                self._health.failed(str(exc) or repr(exc))
                await self._safe_close()
                if await sleep_or_stop(self._stop, backoff.next()):
                    return
                continue
            backoff.reset()
            self._health.recovered()
            if self.poll_interval_s and await sleep_or_stop(self._stop, self.poll_interval_s):
                return

    async def probe(self) -> ProbeResult:
        try:
            if not self._device_open:
                await self._open_device()
                self._device_open = True
            detail = await self._identify()
        except DriverError as exc:
            return ProbeResult(self.label, False, str(exc), self.required)
        return ProbeResult(self.label, True, detail, self.required)
