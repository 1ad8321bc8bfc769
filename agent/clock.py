"""Time for the agent: one injectable source of monotonic and wall-clock time.

Many controller boards have no real-time clock and boot in 1970; the CSMS tells us the time
(BootNotification, Heartbeat).  We keep an offset to it, so every timestamp the agent sends is
corrected, and a clock jump of the system never makes intervals run wild (intervals use the
monotonic clock only).  Tests inject :class:`FakeClock` to run schedules in milliseconds.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from datetime import UTC, datetime

# Before this instant the system clock is certainly wrong (no RTC, no NTP yet).
_PLAUSIBLE_EPOCH = datetime(2024, 1, 1, tzinfo=UTC).timestamp()


def iso(dt: datetime) -> str:
    """OCPP timestamps: UTC, millisecond precision, 'Z' suffix (accepted by every CSMS)."""
    dt = dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> datetime:
    """Parse an OCPP timestamp; naive times are taken as UTC (some CSMSs omit the zone)."""
    dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt


class Clock:
    """Real time, corrected by the offset to the CSMS clock."""

    def __init__(self) -> None:
        self._offset = 0.0  # csms_time - system_time, seconds
        self._synced = False

    def monotonic(self) -> float:
        return time.monotonic()

    def _system(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def wall(self) -> float:
        """Seconds since the epoch, corrected to the CSMS clock once it has been heard."""
        return self._system() + self._offset

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.wall(), UTC)

    def now_iso(self) -> str:
        return iso(self.now())

    @property
    def trustworthy(self) -> bool:
        """False while we have neither a CSMS time nor a plausible system clock."""
        return self._synced or self._system() >= _PLAUSIBLE_EPOCH

    def sync(self, csms_time: datetime | str) -> float:
        """Adopt the CSMS time; returns the correction applied (seconds), for logging."""
        if isinstance(csms_time, str):
            csms_time = parse_iso(csms_time)
        new_offset = csms_time.timestamp() - self._system()
        delta = new_offset - self._offset
        self._offset = new_offset
        self._synced = True
        return delta

    @property
    def offset(self) -> float:
        return self._offset


class FakeClock(Clock):
    """A clock that only moves when told to; ``sleep`` waits for :meth:`advance`."""

    def __init__(self, start_wall: float = 1_800_000_000.0) -> None:
        super().__init__()
        self._mono = 1000.0
        self._wall0 = start_wall
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._n = 0

    def monotonic(self) -> float:
        return self._mono

    def _system(self) -> float:
        return self._wall0 + self._mono

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._n += 1
        heapq.heappush(self._sleepers, (self._mono + seconds, self._n, fut))
        await fut

    async def advance(self, seconds: float) -> None:
        """Move time forward, waking sleepers in order and letting each run before the next."""
        target = self._mono + seconds
        while self._sleepers and self._sleepers[0][0] <= target:
            due, _, fut = heapq.heappop(self._sleepers)
            self._mono = max(self._mono, due)
            if not fut.done():
                fut.set_result(None)
            for _ in range(5):
                await asyncio.sleep(0)
        self._mono = target
        for _ in range(5):
            await asyncio.sleep(0)
