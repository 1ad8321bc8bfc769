"""Secrets never reach a log: one registry of the station's secrets and a guard on every record.

The frame log (:mod:`agent.frames`) removes passwords from OCPP payloads by field name; this
module is the last line behind it and behind every other ``log.warning(...)`` in the agent: a
password quoted in an exception text, a basic-auth header a library logs at debug level, a PEM
private key pasted into a configuration error.  Whoever learns a secret (the composition root
from the configuration, the security blocks when a CSMS sets a new BasicAuthPassword /
AuthorizationKey) registers it in :data:`SECRETS`; :func:`install` puts a log-record factory
in place that masks every registered secret and every PEM private-key block in every record,
at every level, before any handler (console, journal, ``agent.log``, pytest's capture) sees it.

A record factory rather than a filter on some handlers: filters on a logger do not apply to
records propagated from its children, and handlers come and go (``agent.log``, a test's
``caplog``); the factory runs once per record that passes its logger's level, whoever handles
it.  :class:`RedactingFilter` does the same for a handler that is given records made elsewhere.
"""

from __future__ import annotations

import base64
import binascii
import logging
import re
import threading
from collections.abc import Iterable
from typing import Any

MASK = "***"
# Secrets shorter than this are not masked: every three-letter word in the log would go.
MIN_SECRET = 4
PEM_MARKER = "-----BEGIN"
# A private key in PEM: the whole block when it is complete, else from its header on.
_PEM_KEY = re.compile(
    r"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?(?:-----END \1PRIVATE KEY-----|\Z)", re.S)
_PEM_KEY_HEADER = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----")


class Secrets:
    """The values that must never appear in a log line (thread-safe; grows, never leaks)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: frozenset[str] = frozenset()
        self._ordered: tuple[str, ...] = ()  # longest first: a secret inside another goes last

    def add(self, value: str | None, *, station_id: str | None = None) -> None:
        """Register ``value`` and the forms it travels in: with ``station_id``, the HTTP basic
        auth credential ``base64(id:value)``; a hexadecimal value (the 1.6 AuthorizationKey)
        also as the text it encodes."""
        if not value:
            return
        forms = {value}
        if station_id is not None:
            forms.add(base64.b64encode(f"{station_id}:{value}".encode()).decode())
        if len(value) % 2 == 0 and re.fullmatch(r"[0-9a-fA-F]+", value):
            try:
                forms.add(binascii.unhexlify(value).decode("utf-8"))
            except (UnicodeDecodeError, binascii.Error):
                pass
        forms = {f for f in forms if len(f) >= MIN_SECRET}
        with self._lock:
            if forms <= self._values:
                return
            self._values = self._values | forms
            self._ordered = tuple(sorted(self._values, key=len, reverse=True))

    def add_all(self, values: Iterable[str | None]) -> None:
        for value in values:
            self.add(value)

    @property
    def values(self) -> frozenset[str]:
        return self._values

    def redact(self, text: str) -> str:
        """``text`` with every registered secret and private-key block masked."""
        if PEM_MARKER in text:
            text = _PEM_KEY.sub(f"[private key {MASK}]", text)
        for secret in self._ordered:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def clear(self) -> None:
        """Forget every secret (tests only)."""
        with self._lock:
            self._values = frozenset()
            self._ordered = ()


#: The process's registry: every agent in the process (tests, a swarm) adds its own.
SECRETS = Secrets()


def leaks(text: str, secrets: Iterable[str] | None = None) -> list[str]:
    """What in ``text`` must not be there, described without repeating it: registered secrets
    (by length and first character) and private-key PEM headers."""
    found = []
    for secret in (SECRETS.values if secrets is None else secrets):
        if secret and secret in text:
            found.append(f"a registered secret ({len(secret)} chars, starting {secret[0]!r})")
    if PEM_MARKER in text and _PEM_KEY_HEADER.search(text):
        found.append("a PEM private key")
    return found


def redact_record(record: logging.LogRecord, secrets: Secrets = SECRETS) -> None:
    """Mask ``record`` in place: its message (arguments merged in), traceback and stack."""
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a bad format string is logging's to report
        return
    clean = secrets.redact(message)
    if clean != message or record.args:
        record.msg, record.args = clean, None
    if record.exc_info and not record.exc_text:
        record.exc_text = logging.Formatter().formatException(record.exc_info)
    if record.exc_text:
        record.exc_text = secrets.redact(record.exc_text)
    if record.stack_info:
        record.stack_info = secrets.redact(record.stack_info)


class RedactingFilter(logging.Filter):
    """A handler filter doing what the installed factory does, for records made elsewhere."""

    def __init__(self, secrets: Secrets = SECRETS) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record, self.secrets)
        return True


_installed = False
_install_lock = threading.Lock()


def install(secrets: Secrets = SECRETS) -> None:
    """Mask secrets in every log record from now on (idempotent; the agent calls it)."""
    global _installed
    with _install_lock:
        if _installed:
            return
        previous = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            redact_record(record, secrets)
            return record

        logging.setLogRecordFactory(factory)
        _installed = True


__all__ = ["MASK", "SECRETS", "RedactingFilter", "Secrets", "install", "leaks",
           "redact_record"]
