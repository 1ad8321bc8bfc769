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
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from agent.clock import parse_iso
from agent.core.security_events import SecurityEvent
from agent.logfiles import SECURITY_LOG, log_dir, rotated_files, rotating_handler
from agent.redaction import RedactingFilter

log = logging.getLogger("cp_agent.security")

MAX_KB = 256
COUNT = 4  # security.log and three rotated copies: at most 1 MiB


class SecurityLog:
    """Writes security events to ``<state dir>/logs/security.log``; a bus listener."""

    def __init__(self, state_dir: Path, *, wall: Callable[[], float] | None = None,
                 max_kb: int = MAX_KB, count: int = COUNT) -> None:
        self.path = log_dir(state_dir) / SECURITY_LOG
        self._wall = wall
        self._max_kb = max_kb
        self._count = count
        self._lock = threading.Lock()
        self._handler: logging.Handler | None = None
        self._broken = False
        self.written = 0

    def _open(self) -> logging.Handler | None:
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

    def files(self, start: datetime | None = None, end: datetime | None = None) -> list[Path]:
        """The log files (oldest first) holding events between ``start`` and ``end``: what a
        GetLog with oldestTimestamp / latestTimestamp uploads.  A file is in when its first
        line is not after ``end`` and its last line not before ``start``."""
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


__all__ = ["COUNT", "MAX_KB", "SecurityLog"]
