"""The agent's own log on the board: ``<state dir>/logs/agent.log``, rotated and bounded.

The journal is the technician's view; this file is the CSMS's: GetDiagnostics / GetLog upload
it (:mod:`agent.core.diagnostics`).  So every line starts with a UTC ISO 8601 time a time
window can be cut by, taken from the agent's clock (anchored to the CSMS time on boards
without a real-time clock, where the system time may still say 1970), and the files are
bounded (``log.file_max_kb`` x ``log.file_count``) so an SD card never fills up.  Only
``cp-agent run`` installs it: swarm stations and tests in one process share the root logger
and would write each other's lines.  The security log (``security.log``) uses the same handler
class and line format, so both can be cut by the same window.

The rotation is :class:`RotatingFile`, not ``logging.handlers.RotatingFileHandler``: that module
brings ``pickle``, ``queue`` and the socket / syslog / HTTP handlers with it, ~0.4 MB of an idle
agent's resident memory for one class of twenty lines (issue 18).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

LOG_DIR = "logs"
AGENT_LOG = "agent.log"
SECURITY_LOG = "security.log"


def log_dir(state_dir: Path) -> Path:
    """Where the agent's log files live, beside the state file."""
    return Path(state_dir) / LOG_DIR


def stamp(epoch: float) -> str:
    """The line prefix: UTC, millisecond precision, 'Z' (parsed back by the diagnostics)."""
    dt = datetime.fromtimestamp(epoch, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


class ClockFormatter(logging.Formatter):
    """``<UTC ISO time> LEVEL logger: message``; the time from ``wall`` (the agent's clock)."""

    def __init__(self, wall: Callable[[], float] | None = None) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")
        self.wall = wall

    def format(self, record: logging.LogRecord) -> str:
        # The record's own time is the system clock; the agent's may be corrected by the CSMS.
        # A record formatted right away (the handler emits synchronously) is close enough.
        epoch = self.wall() if self.wall is not None else record.created
        return f"{stamp(epoch)} {super().format(record)}"


class RotatingFile(logging.FileHandler):
    """``path`` rolled over to ``path.1`` (``path.1`` to ``path.2``, ...) before a line would
    take it to ``max_bytes``; at most ``backups`` rolled copies are kept.

    The stdlib's handler with the same rules, and one difference: with no backups it empties
    the file instead of appending to it for ever, so ``file_count: 1`` is bounded too.
    """

    def __init__(self, path: Path, max_bytes: int, backups: int) -> None:
        super().__init__(path, mode="a", encoding="utf-8")
        self.max_bytes = max_bytes
        self.backups = backups

    def emit(self, record: logging.LogRecord) -> None:
        try:
            if self._should_roll(record):
                self._roll()
            super().emit(record)
        except Exception:  # logging must never take the agent down: what the stdlib does
            self.handleError(record)

    def _should_roll(self, record: logging.LogRecord) -> bool:
        if self.max_bytes <= 0:
            return False
        # Only a regular file rolls over (bpo-45401: not /dev/null or a pipe).
        if os.path.exists(self.baseFilename) and not os.path.isfile(self.baseFilename):
            return False
        if self.stream is None:
            self.stream = self._open()
        line = self.format(record) + self.terminator
        self.stream.seek(0, 2)
        return self.stream.tell() + len(line) >= self.max_bytes

    def _roll(self) -> None:
        if self.stream is not None:
            self.stream.close()
            self.stream = None  # type: ignore[assignment]
        base = self.baseFilename
        if self.backups > 0:
            for i in range(self.backups - 1, 0, -1):
                older, newer = f"{base}.{i}", f"{base}.{i + 1}"
                if os.path.exists(older):
                    os.replace(older, newer)
            if os.path.exists(base):
                os.replace(base, f"{base}.1")
            self.stream = self._open()
        else:
            self.stream = open(base, "w", encoding=self.encoding)  # noqa: SIM115


def rotating_handler(path: Path, *, max_kb: int = 1024, count: int = 5,
                     wall: Callable[[], float] | None = None) -> logging.Handler:
    """A size-bounded file handler: ``path`` plus ``count - 1`` rotated copies (path.1 ...).

    Raises OSError when the directory cannot be created or the file not opened.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = RotatingFile(path, max_kb * 1024, max(0, count - 1))
    handler.setFormatter(ClockFormatter(wall))
    return handler


def rotated_files(path: Path) -> list[Path]:
    """``path`` and its rotated copies that exist, oldest first (path.N ... path.1, path)."""
    copies = []
    for candidate in path.parent.glob(path.name + ".*"):
        suffix = candidate.name[len(path.name) + 1:]
        if suffix.isdigit():
            copies.append((int(suffix), candidate))
    out = [p for _, p in sorted(copies, reverse=True)]
    if path.exists():
        out.append(path)
    return out


def install_agent_log(state_dir: Path, *, max_kb: int, count: int, level: int | None = None,
                      wall: Callable[[], float] | None = None) -> logging.Handler | None:
    """Add ``agent.log`` to the root logger (``cp-agent run``); None, with a warning, when the
    directory is not writable: a read-only card must not keep a station from charging."""
    path = log_dir(state_dir) / AGENT_LOG
    try:
        handler = rotating_handler(path, max_kb=max_kb, count=count, wall=wall)
    except OSError as exc:
        logging.getLogger("cp_agent").warning("no log file %s: %s", path, exc)
        return None
    if level is not None:
        handler.setLevel(level)
    logging.getLogger().addHandler(handler)
    return handler


__all__ = ["AGENT_LOG", "LOG_DIR", "SECURITY_LOG", "ClockFormatter", "RotatingFile",
           "install_agent_log", "log_dir", "rotated_files", "rotating_handler", "stamp"]
