"""Pytest plugin: no log record of any test carries a secret or a private key.

Registered from ``tests/conftest.py`` (``pytest_plugins``).  One handler on the root logger looks
at every record that is emitted while the suite runs (the message with its arguments, the
traceback, the stack) and notes what must not be there: a value of the agent's secret registry
(:data:`agent.redaction.SECRETS`: the configured passwords and those a CSMS set), a value a test
registered with :func:`register`, or a PEM private-key header.  At the end of each test an
autouse fixture fails the test if anything was noted, naming the logger and level but never
repeating the secret.

Every level of the agent's loggers, DEBUG and INFO included: a record below its logger's
level is never made, so the ``cp_agent`` logger (:data:`GUARDED`) is set to a level below
DEBUG for the suite, and ``Logger.handle`` scans and drops each record that only this level
made: the others go their usual way (the root's handlers: pytest's capture, caplog), so what
the tests and their reports see is unchanged.  (Not ``propagate = False`` with a forwarding
handler: pytest attaches its capture handlers to every non-propagating logger.)  websockets' own
DEBUG records (every frame) are not made: ``cp-agent run`` pins that logger to WARNING, so
they never reach a station's log, and they would be nine records in ten.

Cheap on purpose: one substring test per secret per record, the texts of one test's records
kept until its end (to check them for secrets registered later).  Measured on four of the
largest modules (firmware, reservations, 2.0.1 smart charging, rpc: 469 tests): about 2,800
records scanned, 2,100 of them made only for the guard, 0.07 s of 29 s CPU time.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest

from agent.redaction import SECRETS, leaks

_EXTRA: set[str] = set()  # secrets a test knows of, whether or not the agent registered them


def register(secret: str | None) -> None:
    """Check every later record for ``secret`` too (a test's password, key, token)."""
    if secret and len(secret) >= 4:
        _EXTRA.add(secret)


def record_text(record: logging.LogRecord) -> str:
    """Everything of ``record`` a handler could write: message, traceback, stack."""
    try:
        text = record.getMessage()
    except Exception:  # noqa: BLE001 - a broken format string is not a leak
        text = str(record.msg)
    if record.exc_text:
        text += "\n" + record.exc_text
    elif record.exc_info:
        text += "\n" + logging.Formatter().formatException(record.exc_info)
    if record.stack_info:
        text += "\n" + record.stack_info
    return text


def record_leaks(record: logging.LogRecord) -> list[str]:
    """What in ``record`` must not be in a log (descriptions, never the secret itself)."""
    return leaks(record_text(record), SECRETS.values | _EXTRA)


def known_secrets() -> frozenset[str]:
    return frozenset(SECRETS.values | _EXTRA)


class LeakCollector(logging.Handler):
    """Notes every leaking record (logger, level, what leaked) for the running test.

    A secret can be registered after a record carrying it was made (a CSMS frame logged
    before the handler that learns the new password ran): the texts of the test's records
    are kept until :meth:`take`, which checks them again for the secrets that came since.
    """

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.found: list[str] = []
        self._texts: list[tuple[str, str]] = []
        self._known = known_secrets()

    def emit(self, record: logging.LogRecord) -> None:
        text = record_text(record)
        where = f"{record.name} {record.levelname} ({record.pathname}:{record.lineno})"
        self._texts.append((where, text))
        found = leaks(text, SECRETS.values | _EXTRA)
        if found:
            self.found.append(f"{where}: {', '.join(found)}")

    def take(self) -> list[str]:
        """What leaked since the last call, the secrets registered meanwhile included."""
        known = known_secrets()
        late = known - self._known
        if late:
            self.found.extend(f"{where}: {', '.join(found)} (registered after it was logged)"
                              for where, text in self._texts
                              if (found := [f for f in leaks(text, late)
                                            if "PEM" not in f]))
        found, self.found = self.found, []
        self._texts, self._known = [], known
        return found


_collector = LeakCollector()

# Loggers whose every record is scanned, at every level (CP_AGENT_GUARD_EVERY_LEVEL=0: only
# the records emitted anyway, to measure what the guard costs).
GUARDED = "cp_agent" if os.environ.get("CP_AGENT_GUARD_EVERY_LEVEL", "1") != "0" else None
_PROBE = 1  # below DEBUG: every record is made; a test's own set_level replaces it
_logger_handle = logging.Logger.handle


def _threshold(name: str) -> int:
    """The effective level the record's logger would have without the guard (its own or an
    ancestor's set level, the guard's probe level not counted)."""
    logger: logging.Logger | None = logging.getLogger(name)
    while logger is not None:
        if logger.level and not (logger.level == _PROBE and logger.name == GUARDED):
            return logger.level
        logger = logger.parent
    return logging.NOTSET


def _guarded_handle(self: logging.Logger, record: logging.LogRecord) -> None:
    """``Logger.handle`` for the suite: a guarded record that only the probe level made is
    scanned and dropped; everything else goes its usual way (and is scanned by the collector
    on the root logger, like every emitted record)."""
    name = record.name
    if (GUARDED is not None and (name == GUARDED or name.startswith(GUARDED + "."))
            and record.levelno < _threshold(name)):
        _collector.handle(record)
        return
    _logger_handle(self, record)


def pytest_configure(config: pytest.Config) -> None:
    logging.getLogger().addHandler(_collector)
    if GUARDED is not None:
        logger = logging.getLogger(GUARDED)
        if logger.level == logging.NOTSET:
            logger.setLevel(_PROBE)
        logging.Logger.handle = _guarded_handle  # type: ignore[method-assign]


def pytest_unconfigure(config: pytest.Config) -> None:
    logging.getLogger().removeHandler(_collector)
    logging.Logger.handle = _logger_handle  # type: ignore[method-assign]
    if GUARDED is not None and logging.getLogger(GUARDED).level == _PROBE:
        logging.getLogger(GUARDED).setLevel(logging.NOTSET)


@pytest.fixture(autouse=True)
def _no_secret_in_logs() -> Iterator[None]:
    _collector.take()  # what an earlier test's stragglers logged is not this test's
    yield
    found = _collector.take()
    assert not found, "secrets in log records:\n  " + "\n  ".join(found)


__all__ = ["LeakCollector", "record_leaks", "register"]
