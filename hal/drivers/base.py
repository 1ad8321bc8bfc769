"""Plumbing shared by every driver: errors with causes, event delivery, health, probes.

Drivers meet trouble in three places: a command the core is waiting for (answered with
``HalError``), a background poll nobody is waiting for (answered with ``FaultRaised`` /
``FaultCleared`` events) and the doctor / self-check (answered with a :class:`ProbeResult`
whose text names the likely cause).  The classes here keep those three consistent, so one
failing device produces one fault, one recovery and one clear line of diagnosis.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from hal.interfaces import FaultCleared, FaultKind, FaultRaised, HalEvent, Listener

log = logging.getLogger(__name__)

Monotonic = Callable[[], float]


class DriverError(Exception):
    """A low-level wrapper failed; the message already says what to check."""


class PortUnavailable(DriverError):
    """The port, bus or pin could not be opened (missing, busy, no permission)."""


class NoAnswer(DriverError):
    """The device stayed silent (wrong address, wiring, baud rate, powered off)."""


class DeviceRejected(DriverError):
    """The device answered, but refused the request (wrong register map, wrong model)."""


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """One line of the doctor's report (and one entry of the HAL self-check)."""

    device: str
    ok: bool
    detail: str
    required: bool = True


class EventSink:
    """Delivers HAL events to the single listener on the event-loop thread.

    Events emitted before ``attach`` (e.g. a welded contactor found while starting) are
    kept and delivered on attach, because losing the first fault is worse than reporting
    it late.  A listener that raises is logged, never allowed to kill the poller that
    emitted the event.
    """

    def __init__(self) -> None:
        self._listener: Listener | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[HalEvent] = []
        self._lock = threading.Lock()

    def bind_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def attach(self, listener: Listener) -> None:
        with self._lock:
            self._listener = listener
            pending, self._pending = self._pending, []
        for event in pending:
            self._deliver(listener, event)

    def detach(self) -> None:
        with self._lock:
            self._listener = None

    def emit(self, event: HalEvent) -> None:
        """Emit from the event-loop thread."""
        with self._lock:
            listener = self._listener
            if listener is None:
                self._pending.append(event)
                return
        self._deliver(listener, event)

    def emit_threadsafe(self, event: HalEvent) -> None:
        """Emit from any thread (gpiozero callbacks, executor threads)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            with self._lock:
                self._pending.append(event)
            return
        loop.call_soon_threadsafe(self.emit, event)

    @staticmethod
    def _deliver(listener: Listener, event: HalEvent) -> None:
        try:
            listener(event)
        except Exception:  # the core's bug must not stop our pollers
            log.exception("HAL listener raised on %r", event)


class Health:
    """One device's fault state: a FaultRaised on the way down, a FaultCleared on the way up.

    ``announce_raise=False`` is for devices whose failures the core learns from a command's
    ``HalError`` (the meter read): raising an event too would report the fault twice, but the
    recovery can only be noticed here, so FaultCleared is still sent.
    """

    def __init__(self, sink: EventSink, evse_id: int, kind: FaultKind, name: str, *,
                 announce_raise: bool = True) -> None:
        self.sink = sink
        self.evse_id = evse_id
        self.kind = kind
        self.name = name
        self.announce_raise = announce_raise
        self.faulted = False
        self.detail = ""

    def failed(self, detail: str, *, announce: bool | None = None) -> bool:
        """Record a failure; returns True on the transition from healthy.

        ``announce=False`` latches silently: the caller is raising ``HalError`` to a
        waiting command, which already tells the core.
        """
        self.detail = detail
        if self.faulted:
            return False
        self.faulted = True
        log.warning("%s: %s", self.name, detail)
        if self.announce_raise if announce is None else announce:
            self.sink.emit(FaultRaised(self.evse_id, self.kind, detail))
        return True

    def recovered(self) -> bool:
        if not self.faulted:
            return False
        self.faulted = False
        self.detail = ""
        log.info("%s: recovered", self.name)
        self.sink.emit(FaultCleared(self.evse_id, self.kind))
        return True


class DeviceDriver(abc.ABC):
    """Lifecycle every real device shares, so the HAL and the doctor treat them alike.

    Construction never touches hardware (a config can be built and checked on a laptop);
    ``open`` acquires, ``probe`` proves the device answers, ``run`` is the optional
    background work (polling), ``close`` releases.
    """

    label: str = "device"
    required: bool = True
    #: what to report when ``open`` raises during HAL start (None: log only, the device
    #: reports its own trouble or is cosmetic)
    open_fault: FaultKind | None = None
    fault_evse: int = 0

    async def open(self) -> None:  # noqa: B027 - most devices have nothing to open
        """Acquire the device; raise DriverError (with the likely cause) on failure."""

    async def close(self) -> None:  # noqa: B027
        """Release the device; must not raise."""

    @abc.abstractmethod
    async def probe(self) -> ProbeResult: ...

    def background(self) -> Callable[[], Awaitable[None]] | None:
        """The polling loop to run while the HAL is started, or None."""
        return None


async def sleep_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Wait ``seconds`` unless ``stop`` is set first; True when stopping."""
    if stop.is_set():
        return True
    try:
        await asyncio.wait_for(stop.wait(), timeout=max(0.0, seconds))
    except TimeoutError:
        return False
    return True


class Backoff:
    """Retry delays for reopening a lost device: fast at first, never hammering."""

    def __init__(self, first_s: float = 0.5, max_s: float = 30.0) -> None:
        self.first_s = first_s
        self.max_s = max_s
        self._next = first_s

    def next(self) -> float:
        delay = self._next
        self._next = min(self.max_s, self._next * 2)
        return delay

    def reset(self) -> None:
        self._next = self.first_s
