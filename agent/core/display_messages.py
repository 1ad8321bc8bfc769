"""The messages a CSMS configured for the station's display (2.0.1 SetDisplayMessage, block O),
kept in the state file and chosen by priority, state, time window, transaction and language.

Apart from the screen's own pages (:mod:`agent.core.display`) because most stations never get
such a message: the board is built by the first SetDisplayMessage (or GetDisplayMessages,
ClearDisplayMessage), or at start-up when the state file holds a message
(``Storage.display_messages_any``); until then the screen shows the station's own pages only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from agent.clock import parse_iso
from agent.core.service_settings import (
    MESSAGE_CAPACITY,
    MESSAGE_STATES,
    PRIORITIES,
    SHOWN_FORMATS,
    primary,
)
from agent.storage import Storage, StorageError

log = logging.getLogger("cp_agent.display")


class MessageError(ValueError):
    """A message the board cannot take; ``reason`` is a 2.0.1 reason code."""

    def __init__(self, reason: str, text: str) -> None:
        super().__init__(text)
        self.reason = reason


@dataclass(frozen=True)
class DisplayMessage:
    """One message a CSMS configured, as the station uses it (``info`` as it was sent)."""

    id: int
    priority: str
    content: str
    format: str
    language: str | None
    state: str | None
    start: datetime | None
    end: datetime | None
    transaction_id: str | None
    info: dict[str, Any]
    seq: int = 0  # order of arrival: the newest AlwaysFront wins
    # The same message in other languages (2.1 messageExtra): (content, format, language).
    extra: tuple[tuple[str, str, str | None], ...] = ()

    def variants(self) -> list[tuple[str, str, str | None]]:
        """Every text of the message that the display can show: (content, format, language),
        the main one first."""
        return [v for v in [(self.content, self.format, self.language), *self.extra]
                if v[1] in SHOWN_FORMATS]

    def languages(self) -> set[str]:
        """The primary language subtags it is given in (empty: for everyone)."""
        return {p for _, _, lang in self.variants() if (p := primary(lang))}

    def text_for(self, preferred: list[str]) -> str:
        """The text in the first of the ``preferred`` languages it has, else its main one."""
        shown = self.variants()
        for lang in preferred:
            for content, _, language in shown:
                if primary(language) == lang:
                    return content
        return shown[0][0] if shown else self.content

    @classmethod
    def parse(cls, info: dict[str, Any], seq: int = 0) -> DisplayMessage:
        """From a 2.0.1 MessageInfoType; :class:`MessageError` for what cannot be shown."""
        content = info.get("message") if isinstance(info.get("message"), dict) else {}
        try:
            message_id = int(info["id"])
        except (KeyError, TypeError, ValueError):
            raise MessageError("MissingParam", "a message needs an id") from None
        priority = info.get("priority")
        if priority not in PRIORITIES:
            raise MessageError("UnsupportedParam", f"priority {priority!r}")
        state = info.get("state")
        if state is not None and state not in MESSAGE_STATES:
            raise MessageError("UnsupportedParam", f"state {state!r}")
        text = content.get("content")
        if not isinstance(text, str):
            raise MessageError("MissingParam", "a message needs content")
        start = end = None
        try:
            if info.get("startDateTime"):
                start = parse_iso(str(info["startDateTime"]))
            if info.get("endDateTime"):
                end = parse_iso(str(info["endDateTime"]))
        except ValueError as exc:
            raise MessageError("InvalidValue", f"date-time: {exc}") from None
        if start is not None and end is not None and end <= start:
            raise MessageError("InvalidValue", "endDateTime is not after startDateTime")
        tx = info.get("transactionId")
        extra = tuple(
            (x["content"], str(x.get("format") or "UTF8"), x.get("language"))
            for x in info.get("messageExtra") or ()
            if isinstance(x, dict) and isinstance(x.get("content"), str))
        return cls(message_id, priority, text, str(content.get("format") or "UTF8"),
                   content.get("language"), state, start, end,
                   str(tx) if tx is not None else None, dict(info), seq, extra)

    def active(self, now: datetime, state: str, running: set[str]) -> bool:
        return ((self.start is None or self.start <= now)
                and (self.end is None or now < self.end)
                and (self.state is None or self.state == state)
                and (self.transaction_id is None or self.transaction_id in running))


class MessageBoard:
    """The messages a CSMS configured, persisted; replaced by id, cleared, expired."""

    def __init__(self, storage: Storage, capacity: int = MESSAGE_CAPACITY) -> None:
        self._storage = storage
        self.capacity = capacity
        self._messages: dict[int, DisplayMessage] = {}
        self._seq = 0
        self.listeners: list[Callable[[], None]] = []
        try:
            rows = storage.display_messages_all()
        except StorageError as exc:
            log.error("display messages not read: %s", exc)
            rows = []
        for message_id, info in rows:
            try:
                self._seq += 1
                self._messages[message_id] = DisplayMessage.parse(info, self._seq)
            except MessageError as exc:
                log.warning("stored display message %s dropped: %s", message_id, exc)

    def __len__(self) -> int:
        return len(self._messages)

    def __contains__(self, message_id: int) -> bool:
        return message_id in self._messages

    def all(self) -> list[DisplayMessage]:
        return sorted(self._messages.values(), key=lambda m: m.seq)

    def put(self, info: dict[str, Any]) -> DisplayMessage:
        """Store a message (one with the same id is replaced, 2.0.1 O06); raises
        :class:`MessageError` when it cannot be parsed or the board is full."""
        message = DisplayMessage.parse(info, self._seq + 1)
        if message.id not in self._messages and len(self._messages) >= self.capacity:
            raise MessageError("OutOfStorage", f"the station keeps {self.capacity} messages")
        self._storage.display_message_put(message.id, message.info)
        self._seq += 1
        self._messages[message.id] = message
        log.info("display message %s set (%s%s)", message.id, message.priority,
                 f", transaction {message.transaction_id}" if message.transaction_id else "")
        self._changed()
        return message

    def remove(self, ids: Iterable[int], why: str = "cleared") -> int:
        gone = [i for i in ids if i in self._messages]
        if not gone:
            return 0
        self._storage.display_message_delete(gone)
        for message_id in gone:
            del self._messages[message_id]
        log.info("display message(s) %s %s", ", ".join(map(str, gone)), why)
        self._changed()
        return len(gone)

    def purge(self, now: datetime, running: set[str]) -> None:
        """Messages past their endDateTime, and those of transactions that ended, go."""
        expired = [m.id for m in self._messages.values() if m.end is not None and now >= m.end]
        ended = [m.id for m in self._messages.values()
                 if m.transaction_id is not None and m.transaction_id not in running]
        try:
            if expired:
                self.remove(expired, "expired")
            if ended:
                self.remove(ended, "removed: their transaction ended")
        except StorageError as exc:
            log.error("display messages not purged: %s", exc)

    def active(self, now: datetime, state: str, running: set[str]) -> list[DisplayMessage]:
        return [m for m in self.all() if m.active(now, state, running)]

    def _changed(self) -> None:
        for listener in list(self.listeners):
            listener()
