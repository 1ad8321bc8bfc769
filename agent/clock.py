"""Time for the agent: one injectable source of monotonic and wall-clock time.

Many controller boards have no real-time clock and boot in 1970; the CSMS tells us the time
(BootNotification, Heartbeat).  Once it has, the wall clock is *anchored to the monotonic clock*
(CSMS time at the sync + monotonic seconds since), so an NTP step or a manual ``date`` after the
sync cannot make timestamps jump, and intervals never use the wall clock at all.

Before the first sync, the system clock is used if it is plausible (2024 or later).  If it is
not, nothing dated can be produced honestly, so :meth:`Clock.stamp` hands out a *deferred*
timestamp instead: a marker holding the kernel boot id and the monotonic time.  Messages are
queued with the marker in place and :meth:`Clock.resolve_payload` turns it into a real time once
the CSMS time is known; anchors (monotonic -> wall of a boot) are persisted so that a marker
written before a crash (same kernel boot) or before a power cut (a boot that later synced) can
still be resolved by the next process.  No 1970 timestamp ever leaves the station.

Tests inject :class:`FakeClock` to run schedules in milliseconds.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Protocol

log = logging.getLogger("cp_agent.clock")

# Before this instant the system clock is certainly wrong (no RTC, no NTP yet).
_PLAUSIBLE_EPOCH = datetime(2024, 1, 1, tzinfo=UTC).timestamp()

# Deferred timestamps look like "~<boot id>@<monotonic seconds>"; no RFC 3339 time starts with
# "~", so a marker can never be mistaken for a real time (and a CSMS would reject one).
_DEFERRED = "~"

# Settings keys of persisted anchors: "clock.anchor.<boot id>" -> "<monotonic> <wall>".
_ANCHOR_PREFIX = "clock.anchor."
_ANCHORS_KEPT = 8
# A CSMS time at most this far behind ours is the answer's latency or its millisecond rounding,
# not a correction of a wrong clock: it is adopted (timers and intervals follow it exactly), but
# a timestamp handed out holds at the last one until the corrected clock passes it, so the
# timestamps of one process never go backwards. A larger step back is a real correction: the
# timestamps follow it at once.
MAX_BACKWARD_HELD_S = 1.0


def iso(dt: datetime) -> str:
    """OCPP timestamps: UTC, millisecond precision, 'Z' suffix (accepted by every CSMS)."""
    dt = dt.astimezone(UTC)
    # Formatted by hand, at half strftime's cost (every CALL of every swarm station stamps
    # one). The year has four digits as RFC 3339 wants: glibc's %Y wrote year 127 as "127",
    # which parse_iso (and a CSMS) cannot read back (the hostile-frames campaign found it in
    # a stored firmware retrieveDate).
    return (f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T{dt.hour:02d}:{dt.minute:02d}:"
            f"{dt.second:02d}.{dt.microsecond // 1000:03d}Z")


def parse_iso(text: str) -> datetime:
    """Parse an OCPP timestamp; naive times are taken as UTC (some CSMSs omit the zone)."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt


def is_deferred(value: object) -> bool:
    """True for a marker from :meth:`Clock.stamp` that still waits for the real time."""
    return isinstance(value, str) and value.startswith(_DEFERRED)


def may_hold_deferred(text: str) -> bool:
    """False only when the JSON ``text`` of a message certainly holds no marker.

    A marker is a JSON string starting with "~", which ``json.dumps`` never escapes, so its
    text contains '"~'.  A message read back from storage without one needs no
    :meth:`Clock.resolve_payload` walk (the outbox replay asks for every message).
    """
    return not text or f'"{_DEFERRED}' in text


def _split_marker(text: str) -> tuple[str, float] | None:
    boot, sep, mono = text[len(_DEFERRED):].rpartition("@")
    if not sep:
        return None
    try:
        return boot, float(mono)
    except ValueError:
        return None


def _kernel_boot_id() -> str:
    """Linux names every kernel boot; the monotonic clock is only comparable within one."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            text = f.read().strip()
        if text:
            return text
    except OSError:
        pass
    return "proc-" + uuid.uuid4().hex  # no boot id: markers resolve within this process only


_BOOT_ID: str | None = None


def _default_boot_id() -> str:
    global _BOOT_ID
    if _BOOT_ID is None:
        _BOOT_ID = _kernel_boot_id()
    return _BOOT_ID


class SettingsStore(Protocol):
    """The part of :class:`agent.storage.Storage` the clock persists its anchors in."""

    def settings(self, prefix: str = "") -> dict[str, str]: ...
    def set_setting(self, key: str, value: str) -> None: ...
    def delete_setting(self, key: str) -> None: ...


class Clock:
    """Real time, corrected to the CSMS clock once it has been heard."""

    def __init__(self, boot_id: str | None = None) -> None:
        self._offset = 0.0  # csms_time - system_time at the last sync, seconds (diagnostics)
        self._synced = False
        self._sync_mono: float | None = None
        self._sync_wall: float | None = None
        self.boot_id = boot_id or _default_boot_id()
        #: (monotonic, wall) pairs of other boots, to resolve markers written there.
        self.anchors: dict[str, tuple[float, float]] = {}
        self._store: SettingsStore | None = None
        self._saved: tuple[float, float] | None = None
        # The anchor an earlier process of this same kernel boot saved (kill -9, restart):
        # the monotonic clock went on, so it still tells the time (see elapsed_since).
        self._own_anchor: tuple[float, float] | None = None
        # The wall time of the last timestamp handed out (see MAX_BACKWARD_HELD_S).
        self._handed: float | None = None

    def monotonic(self) -> float:
        return time.monotonic()

    def _system(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def wall(self) -> float:
        """Seconds since the epoch: the CSMS time carried on by the monotonic clock once synced."""
        if self._sync_mono is not None and self._sync_wall is not None:
            return self._sync_wall + (self.monotonic() - self._sync_mono)
        return self._system()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.wall(), UTC)

    def now_iso(self) -> str:
        """The time for a message: never before the previous one, unless the clock was
        corrected back by more than ``MAX_BACKWARD_HELD_S`` (then it follows at once)."""
        value = self.wall()
        last = self._handed
        if last is not None and 0 < last - value <= MAX_BACKWARD_HELD_S:
            value = last
        else:
            self._handed = value
        return iso(datetime.fromtimestamp(value, UTC))

    @property
    def trustworthy(self) -> bool:
        """False while we have neither a CSMS time nor a plausible system clock."""
        return self._synced or self._system() >= _PLAUSIBLE_EPOCH

    @property
    def synced(self) -> bool:
        return self._synced

    def sync(self, csms_time: datetime | str) -> float:
        """Adopt the CSMS time; returns the correction applied (seconds), for logging.

        A CSMS time before 2024 is ignored (returns 0.0): a backend with a broken clock must not
        make a good station clock bad, nor push it back to 1970. A CSMS time at most
        ``MAX_BACKWARD_HELD_S`` behind ours (the answer's latency) is adopted, but timestamps
        hold at the last one handed out until the clock passes it (the power-cut campaign found
        a TransactionEvent stamped before the previous one of its transaction after a
        reconnection's BootNotification); see :meth:`now_iso`.
        """
        if isinstance(csms_time, str):
            csms_time = parse_iso(csms_time)
        target = csms_time.timestamp()
        if target < _PLAUSIBLE_EPOCH:
            log.warning("ignoring implausible CSMS time %s", csms_time.isoformat())
            return 0.0
        before = self.wall()
        self._sync_mono = self.monotonic()
        self._sync_wall = target
        self._offset = target - self._system()
        self._synced = True
        self._save_anchor()
        return target - before

    @property
    def offset(self) -> float:
        """How far the agent's time is from the system clock now (positive: system is behind)."""
        return self.wall() - self._system()

    # ------------------------------------------------------------------ deferred timestamps

    def stamp(self) -> str:
        """The time of an event that may be reported later (queued messages, the journal).

        An ISO timestamp when the clock can be trusted, otherwise a marker that
        :meth:`resolve` turns into one once the CSMS has told us the time.
        """
        if self.trustworthy:
            return self.now_iso()
        return f"{_DEFERRED}{self.boot_id}@{self.monotonic():.3f}"

    def resolve(self, value: str) -> str | None:
        """A real timestamp for ``value`` (unchanged if it is one); None if not yet known."""
        if not is_deferred(value):
            return value
        parts = _split_marker(value)
        if parts is None:
            return None
        boot, mono = parts
        if boot == self.boot_id:
            if not self.trustworthy:
                return None
            return iso(datetime.fromtimestamp(self.wall() - (self.monotonic() - mono), UTC))
        anchor = self.anchors.get(boot)
        if anchor is not None:
            return iso(datetime.fromtimestamp(anchor[1] + (mono - anchor[0]), UTC))
        return None

    def boot_started(self) -> float:
        """Wall time at which this boot's monotonic clock read zero (when power came back)."""
        return self.wall() - self.monotonic()

    def elapsed_since(self, stamp: str | None) -> float | None:
        """Seconds from the instant ``stamp`` (from :meth:`stamp`, maybe of an earlier process
        or boot) until now, or None when that cannot be known honestly.

        Within one kernel boot (a crash, kill -9, a restart of the service) the monotonic
        clock went on: a marker of this boot gives the exact figure, and so does an anchor an
        earlier process of this boot saved, even before this process heard the CSMS time.
        Across a reboot (a power cut) only wall times compare: the stamp's own, or a marker of
        a boot that later synced (its anchor), against a trustworthy clock now. A board
        without a real-time clock that has not heard the CSMS yet cannot tell how long it was
        off (None); nor can a clock that reads earlier than the stamp (a stale clock file).
        """
        if not stamp:
            return None
        if is_deferred(stamp):
            parts = _split_marker(stamp)
            if parts is None:
                return None
            boot, mono = parts
            if boot == self.boot_id:
                return max(0.0, self.monotonic() - mono)
            resolved = self.resolve(stamp)
            if resolved is None:
                return None
            stamp = resolved
        try:
            then = parse_iso(stamp).timestamp()
        except ValueError:
            return None
        if self.trustworthy:
            now = self.wall()
        elif self._own_anchor is not None:
            mono0, wall0 = self._own_anchor
            now = wall0 + (self.monotonic() - mono0)
        else:
            return None
        elapsed = now - then
        return elapsed if elapsed >= 0 else None

    def resolve_payload(self, payload: Any) -> tuple[Any, bool]:
        """Replace every marker in a message; returns (payload, held).

        ``held`` is True when a marker of *this* boot cannot be resolved yet (the clock is not
        trustworthy): send nothing, wait for the CSMS time.  A marker of an earlier boot that
        never learnt the time cannot be placed exactly; it gets the time this boot started, the
        latest instant it can have happened, which keeps every queued message in order.
        """
        held = False

        def walk(node: Any) -> Any:
            nonlocal held
            if isinstance(node, dict):
                return {k: walk(v) for k, v in node.items()}
            if isinstance(node, list):
                return [walk(v) for v in node]
            if is_deferred(node):
                resolved = self.resolve(node)
                if resolved is not None:
                    return resolved
                parts = _split_marker(node)
                if (parts is None or parts[0] != self.boot_id) and self.trustworthy:
                    log.warning("time of an event before the last power cut is unknown (no "
                                "RTC, no CSMS contact); reporting the time power came back")
                    return iso(datetime.fromtimestamp(self.boot_started(), UTC))
                held = True
            return node

        out = walk(payload)
        return out, held

    # ------------------------------------------------------------------ anchors

    def attach_store(self, store: SettingsStore) -> None:
        """Load anchors of earlier boots and persist this boot's anchor at every sync."""
        self._store = store
        for key, text in store.settings(_ANCHOR_PREFIX).items():
            boot = key[len(_ANCHOR_PREFIX):]
            try:
                mono, wall = (float(x) for x in text.split())
            except ValueError:
                continue
            if boot != self.boot_id:
                self.anchors[boot] = (mono, wall)
            else:
                self._own_anchor = (mono, wall)
        if self._synced:
            self._save_anchor()

    def _save_anchor(self) -> None:
        store = self._store
        if store is None or self._sync_mono is None or self._sync_wall is None:
            return
        anchor = (self._sync_mono, self._sync_wall)
        saved = self._saved
        # The anchor only has to place markers of this boot; refresh it when the time moved.
        if saved is not None and abs((saved[1] - saved[0]) - (anchor[1] - anchor[0])) < 1.0:
            return
        try:
            store.set_setting(_ANCHOR_PREFIX + self.boot_id, f"{anchor[0]:.3f} {anchor[1]:.3f}")
            self._saved = anchor
            old = sorted(store.settings(_ANCHOR_PREFIX).items(),
                         key=lambda kv: float(kv[1].split()[-1]) if kv[1].split() else 0.0)
            for key, _ in old[:-_ANCHORS_KEPT]:
                store.delete_setting(key)
        except Exception as exc:  # noqa: BLE001 - an anchor is worth a log line, not a crash
            log.warning("could not persist the clock anchor: %s", exc)


# How far past a FakeClock.advance target a sleeper still wakes (float sums; see advance).
FAKE_EPSILON_S = 1e-6


class FakeClock(Clock):
    """A clock that only moves when told to; ``sleep`` waits for :meth:`advance`."""

    def __init__(self, start_wall: float = 1_800_000_000.0, boot_id: str | None = None) -> None:
        super().__init__(boot_id=boot_id or "fake-" + uuid.uuid4().hex)
        self._mono = 1000.0
        self._wall0 = start_wall
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._n = 0

    def monotonic(self) -> float:
        return self._mono

    def _system(self) -> float:
        return self._wall0 + self._mono

    def jump(self, seconds: float) -> None:
        """Step the *system* clock (NTP step, manual ``date``) without moving monotonic time."""
        self._wall0 += seconds

    def sleep(self, seconds: float) -> Awaitable[None]:  # type: ignore[override]
        """The sleep is registered when this is called, not when the task awaiting it first
        runs: ``sleep_or`` hands it to ``ensure_future`` right after its caller read ``now()``,
        and if ``advance()`` moved on before that task started, a deadline taken then would
        land past the one computed (a 2.1 DER control's end was announced only after the
        test's next advance: a flaky test under load)."""
        if seconds <= 0:
            return asyncio.sleep(0)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._n += 1
        heapq.heappush(self._sleepers, (self._mono + seconds, self._n, fut))
        return fut

    def pending(self) -> list[float]:
        """How far ahead each sleeper wakes, soonest first (tests wait for a sleep to begin)."""
        return sorted(due - self._mono for due, _, fut in self._sleepers if not fut.done())

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking sleepers in order and letting each run before the next."""
        target = self._mono + seconds
        # A deadline is a sum of floats (a wall-clock wait added to monotonic time), and a
        # test advancing "to the deadline" sums differently: the two may differ in the last
        # bit, and the sleeper then did not wake (a 2.1 DER control's end, 1 run in ~40).
        while self._sleepers and self._sleepers[0][0] <= target + FAKE_EPSILON_S:
            due, _, fut = heapq.heappop(self._sleepers)
            self._mono = max(self._mono, due)
            if not fut.done():
                fut.set_result(None)
            for _ in range(5):
                await asyncio.sleep(0)
        self._mono = max(self._mono, target)
        for _ in range(5):
            await asyncio.sleep(0)


TickCallback = Callable[[], None]

# Subscribers called between two yields to the loop within one tick: at ~10 µs each, a
# swarm's 10,000 stations are sampled in slices of a few milliseconds instead of holding the
# loop (and every websocket) for a tenth of a second.
TICK_SLICE = 256


class Ticker:
    """One periodic wake-up shared by every subscriber of the same period and time source.

    A timer and a task wake-up per subscriber per period is what thousands of swarm stations
    polling their meter every second spent most of their CPU on; one tick calling each
    subscriber in turn costs a function call each. Ticks are on an absolute schedule from the
    first subscription (``start + k * period``, on the injected clock, so a :class:`FakeClock`
    drives them as it drives every sleep); a tick the loop was too busy to run on time is
    skipped, not caught up in a burst. A subscriber joins at the next tick (its first call
    comes within one period) and is never called after :meth:`remove`. With no subscribers
    left the tick stops, and the next subscription starts a new one with its own phase: a
    single station is polled exactly ``period`` after it subscribed, then every period.

    Callbacks run synchronously in the tick's task and must not raise: one that does is
    removed and handed its exception through ``on_error`` (the station's sampler task ends
    with it, as it did when each sampler was a loop of its own).
    """

    __slots__ = ("clock", "period", "_subs", "_task", "_start", "_n", "_key", "_registry",
                 "ticks")

    def __init__(self, clock: Clock, period: float, registry: dict, key: object) -> None:
        if not period > 0:
            raise ValueError(f"tick period {period!r}: expected a positive number of seconds")
        self.clock = clock
        self.period = float(period)
        self._subs: dict[int, tuple[TickCallback, Callable[[BaseException], None] | None]] = {}
        self._task: asyncio.Task | None = None
        self._start = clock.monotonic()
        self._n = 0
        self._key = key
        self._registry = registry
        self.ticks = 0  # ticks run so far (tests, benches)

    def __len__(self) -> int:
        return len(self._subs)

    def add(self, callback: TickCallback,
            on_error: Callable[[BaseException], None] | None = None) -> int:
        """Call ``callback()`` at every tick from the next one on; returns the handle for
        :meth:`remove`."""
        self._n += 1
        self._subs[self._n] = (callback, on_error)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="clock-tick")
        return self._n

    def remove(self, handle: int) -> None:
        """No further call for ``handle``, not even in a tick under way (idempotent)."""
        self._subs.pop(handle, None)
        if not self._subs:
            self._retire()

    def _retire(self) -> None:
        if self._registry.get(self._key) is self:
            del self._registry[self._key]
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _run(self) -> None:
        clock, period = self.clock, self.period
        me = asyncio.current_task()
        k = 1
        try:
            while self._subs and self._task is me:
                now = clock.monotonic()
                due = self._start + k * period
                if due < now - period:  # ticks missed (a loop too busy): skip, no burst
                    k = int((now - self._start) / period) + 1
                    due = self._start + k * period
                await clock.sleep(due - now)
                k += 1
                self.ticks += 1
                await self._call_all()
        finally:
            if self._task is me:
                self._task = None
                if self._registry.get(self._key) is self:
                    del self._registry[self._key]

    async def _call_all(self) -> None:
        subs = self._subs
        for n, handle in enumerate(list(subs)):
            if n and n % TICK_SLICE == 0:
                await asyncio.sleep(0)
            entry = subs.get(handle)
            if entry is None:  # removed since this tick began
                continue
            try:
                entry[0]()
            except Exception as exc:  # noqa: BLE001 - one subscriber never stops the others
                subs.pop(handle, None)
                if entry[1] is not None:
                    entry[1](exc)
                else:
                    log.exception("tick subscriber failed; removed")


# The ticks of clocks that keep the real time (every plain Clock of a loop: a swarm's
# stations have a clock each, for their own CSMS time, but one time to tick on).
_REAL_TICKS: dict[tuple[asyncio.AbstractEventLoop, float], Ticker] = {}


def ticker(clock: Clock, period: float) -> Ticker:
    """The tick of ``period`` seconds on ``clock``'s time in the running loop, shared.

    Every clock whose ``sleep`` and ``monotonic`` are :class:`Clock`'s own shares one tick
    per loop and period (they all keep the same time); a clock that keeps its own time (a
    :class:`FakeClock`, any subclass overriding either) has ticks of its own, driven by its
    own ``sleep``.
    """
    loop = asyncio.get_running_loop()
    cls = type(clock)
    if cls.sleep is Clock.sleep and cls.monotonic is Clock.monotonic:
        registry: dict = _REAL_TICKS
    else:
        registry = clock.__dict__.setdefault("_tickers", {})
    key = (loop, float(period))
    tick = registry.get(key)
    if tick is None:
        tick = registry[key] = Ticker(clock, period, registry, key)
    return tick


async def sleep_or(clock: Clock, seconds: float, event: asyncio.Event) -> None:
    """Sleep ``seconds`` on the injected clock, but wake as soon as ``event`` is set: the one
    way every loop of the agent waits for "the next due time, or something changed"."""
    sleeper = asyncio.ensure_future(clock.sleep(seconds))
    waker = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        sleeper.cancel()
        waker.cancel()
