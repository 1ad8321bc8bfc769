"""The security log: ``<state dir>/logs/security.log``, every security event, rotated, bounded.

A04.FR.04 (1.6 whitepaper and 2.0.1): every security event, critical or not, is stored in a
security log, "in a rolling format"; N01 (GetLog with logType SecurityLog) uploads it.  One
line per event, in the line format of ``agent.log`` (:mod:`agent.logfiles`) so one time window
cuts both::

    2024-05-01T10:00:00.000Z WARNING security: StartupOfTheDevice boot reason PowerUp

that is the UTC time on the agent's clock, then the event type, then its techInfo.  The files
are ``security.log`` and at most ``count - 1`` rotated copies of ``max_kb`` each: the log never
fills the card, and a flood of one kind of event is throttled before it gets here
(:class:`agent.core.security_events.SecurityEvents`).  The agent writes it only for its own
state directory; a card that cannot be written costs the log, never the charging.

Agents that share a state directory (the stations of a swarm, ``Agent(state_dir=...)``) must
not share the log: a GetLog SecurityLog to one of them would upload every station's lines.
Each then keeps its own: a file named after the station (``name``), or, when the agent's state
is in memory (the swarm's load-test mode), the lines themselves in a buffer of the same
rolling kind (:meth:`SecurityLog.in_memory`, ``memory_kb``; the oldest lines go first), which
costs a swarm of thousands neither a file each nor an open, append and close per event.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

from agent.clock import parse_iso
from agent.core.security_events import SecurityEvent
from agent.logfiles import SECURITY_LOG, log_dir, rotated_files, rotating_handler, stamp
from agent.redaction import SECRETS, RedactingFilter

log = logging.getLogger("cp_agent.security")

MAX_KB = 256
COUNT = 4  # security.log and three rotated copies: at most 1 MiB
MEMORY_KB = 32  # an in-memory log: a few hundred lines, the last ones
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]|^\.")


class SecurityLog:
    """Writes security events to ``<state dir>/logs/<name>`` (or to memory); a bus listener."""

    def __init__(self, state_dir: Path | None, *, wall: Callable[[], float] | None = None,
                 max_kb: int = MAX_KB, count: int = COUNT, name: str = SECURITY_LOG,
                 memory_kb: int | None = None) -> None:
        """``memory_kb`` set: the lines are kept in memory, at most that many KiB of them
        (``state_dir`` unused and ``path`` None); else they go to the rotated file."""
        self.path: Path | None = (None if memory_kb is not None or state_dir is None
                                  else log_dir(state_dir) / name)
        self._wall = wall
        self._max_kb = max_kb
        self._count = count
        self._lock = threading.Lock()
        self._handler: logging.Handler | None = None
        self._broken = False
        self.written = 0
        self._memory: deque[str] | None = None
        self._memory_max = 0
        self._memory_size = 0
        if self.path is None:
            self._memory = deque()
            self._memory_max = max(1, MEMORY_KB if memory_kb is None else memory_kb) * 1024

    @classmethod
    def in_memory(cls, *, wall: Callable[[], float] | None = None,
                  memory_kb: int = MEMORY_KB) -> SecurityLog:
        """A log of its own kept in memory (an agent whose state is in memory and whose
        directory other agents share)."""
        return cls(None, wall=wall, memory_kb=memory_kb)

    @classmethod
    def of_agent(cls, state_dir: Path, station_id: str, *, shared: bool, memory: bool,
                 wall: Callable[[], float] | None = None) -> SecurityLog:
        """The log of one agent: ``logs/security.log`` in a directory of its own; in a
        directory ``shared`` with other agents, in memory when its state is (``memory``),
        else ``logs/security-<station>.log``."""
        if not shared:
            return cls(state_dir, wall=wall)
        if memory:
            return cls.in_memory(wall=wall)
        return cls(state_dir, wall=wall, name=f"security-{own_name(station_id)}.log")

    def _open(self) -> logging.Handler | None:
        assert self.path is not None
        if self._handler is None and not self._broken:
            try:
                self._handler = rotating_handler(self.path, max_kb=self._max_kb,
                                                 count=self._count, wall=self._wall)
            except OSError as exc:
                self._broken = True  # said once; the events still reach the journal
                log.error("no security log %s: %s", self.path, exc)
                return None
            self._handler.addFilter(RedactingFilter())
        return self._handler

    def write(self, event: SecurityEvent) -> None:
        """One line for ``event`` (the bus listener).  The file is opened for the line and
        closed after it: events are rare, and a swarm of stations in one process must not
        hold a descriptor each."""
        if self._memory is not None:
            self._remember(event)
            return
        with self._lock:
            handler = self._open()
            if handler is None:
                return
            text = f"{event.kind} {event.info}".rstrip()
            record = logging.LogRecord("security", logging.WARNING, __file__, 0, "%s",
                                       (text,), None)
            try:
                handler.handle(record)  # RotatingFileHandler reports its own I/O errors
            finally:
                handler.close()
                self._handler = None
            self.written += 1

    def _remember(self, event: SecurityEvent) -> None:
        """The line the file would get (same format, same redaction), kept in memory."""
        text = f"{event.kind} {event.info}".rstrip()
        epoch = self._wall() if self._wall is not None else time.time()
        line = SECRETS.redact(f"{stamp(epoch)} WARNING security: {text}") + "\n"
        with self._lock:
            memory = self._memory
            assert memory is not None
            memory.append(line)
            self._memory_size += len(line)
            while self._memory_size > self._memory_max and len(memory) > 1:
                self._memory_size -= len(memory.popleft())
            self.written += 1

    def lines(self) -> Iterator[str]:
        """Every line of the log, oldest first, each ending in a newline: what GetLog cuts to
        its time window.  A snapshot: lines written meanwhile are not in it."""
        if self._memory is not None:
            with self._lock:
                return iter(list(self._memory))
        return self._file_lines()

    def _file_lines(self) -> Iterator[str]:
        assert self.path is not None
        for path in rotated_files(self.path):
            try:
                with path.open(encoding="utf-8", errors="replace") as f:
                    yield from f
            except OSError as exc:  # rotated away while we read: what was read counts
                log.warning("reading %s: %s", path, exc)

    def files(self, start: datetime | None = None, end: datetime | None = None) -> list[Path]:
        """The log files (oldest first) holding events between ``start`` and ``end``: what a
        GetLog with oldestTimestamp / latestTimestamp uploads.  A file is in when its first
        line is not after ``end`` and its last line not before ``start``.  None for a log
        kept in memory (:meth:`lines` has it)."""
        if self.path is None:
            return []
        with self._lock:
            out = []
            for path in rotated_files(self.path):
                first, last = _span(path)
                if first is None or last is None:
                    continue
                if end is not None and first > end:
                    continue
                if start is not None and last < start:
                    continue
                out.append(path)
            return out

    def close(self) -> None:
        with self._lock:
            if self._handler is not None:
                self._handler.close()
                self._handler = None


def own_name(station_id: str) -> str:
    """``station_id`` as a file name: what the file system or a shell would misread becomes
    ``_`` (the ids of one swarm differ in their digits, which stay)."""
    return _UNSAFE.sub("_", station_id) or "_"


def _line_time(line: str) -> datetime | None:
    head = line.split(" ", 1)[0]
    try:
        return parse_iso(head)
    except ValueError:
        return None


def _span(path: Path) -> tuple[datetime | None, datetime | None]:
    """The times of the first and the last line of a log file."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None, None
    stamps = [t for t in (_line_time(x) for x in (lines[:1] + lines[-1:])) if t is not None]
    if not stamps:
        return None, None
    return stamps[0], stamps[-1]


__all__ = ["COUNT", "MAX_KB", "MEMORY_KB", "SecurityLog", "own_name"]
