"""Pytest plugin: no log record of any test carries a secret or a private key.

Registered from ``tests/conftest.py`` (``pytest_plugins``).  One handler on the root logger looks
at every record that is emitted while the suite runs (the message with its arguments, the
traceback, the stack) and notes what must not be there: a value of the agent's secret registry
(:data:`agent.redaction.SECRETS`: the configured passwords and those a CSMS set), a value a test
registered with :func:`register`, or a PEM private-key header.  At the end of each test an
autouse fixture fails the test if anything was noted, naming the logger and level but never
repeating the secret.

Cheap on purpose: one substring test per secret per record, no copy of the records kept, and
nothing at all for records below the loggers' levels (they are never made).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from agent.redaction import SECRETS, leaks

_EXTRA: set[str] = set()  # secrets a test knows of, whether or not the agent registered them


def register(secret: str | None) -> None:
    """Check every later record for ``secret`` too (a test's password, key, token)."""
    if secret and len(secret) >= 4:
        _EXTRA.add(secret)


def record_leaks(record: logging.LogRecord) -> list[str]:
    """What in ``record`` must not be in a log (descriptions, never the secret itself)."""
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
    return leaks(text, SECRETS.values | _EXTRA)


class LeakCollector(logging.Handler):
    """Notes every leaking record (logger, level, what leaked) for the running test."""

    def __init__(self) -> None:
        super().__init__(logging.NOTSET)
        self.found: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        found = record_leaks(record)
        if found:
            self.found.append(f"{record.name} {record.levelname} "
                              f"({record.pathname}:{record.lineno}): {', '.join(found)}")

    def take(self) -> list[str]:
        found, self.found = self.found, []
        return found


_collector = LeakCollector()


def pytest_configure(config: pytest.Config) -> None:
    logging.getLogger().addHandler(_collector)


def pytest_unconfigure(config: pytest.Config) -> None:
    logging.getLogger().removeHandler(_collector)


@pytest.fixture(autouse=True)
def _no_secret_in_logs() -> Iterator[None]:
    _collector.take()  # what an earlier test's stragglers logged is not this test's
    yield
    found = _collector.take()
    assert not found, "secrets in log records:\n  " + "\n  ".join(found)


__all__ = ["LeakCollector", "record_leaks", "register"]
