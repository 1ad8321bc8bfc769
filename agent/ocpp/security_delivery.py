"""SecurityEventNotification through the durable outbox: what the 1.6 and 2.0.1 blocks share.

The rule (1.6 whitepaper A04 and section 8, 2.0.1 A04 and appendix 1): every security event
is stored in the security log (A04.FR.04; the agent's :class:`agent.security.security_log.
SecurityLog` listens to the bus for that), and the *critical* ones are also pushed to the CSMS
with SecurityEventNotification (A04.FR.01), "queued with a guaranteed delivery" while offline
(A04.FR.02).  Which events are critical is each version's table, so each version's security
block declares ``CRITICAL``; the others go to the log only.

Ownership: the adapter in charge gets every event from the bus (``Adapter.activate`` makes it
the bus's delivery target; the composition root activates one in its constructor, before
anything can happen) and its block commits the notification to the SQLite outbox at once, so
an event at start-up or a TLS failure before registration is on disk before the first
connection, and goes out after the BootNotification is accepted like any queued message.  The
queued payload uses the 2.0.1 name; a block spells it its own way when sending
(:meth:`prepare_outbox`), so an event queued under one version and delivered after the CSMS
switched to the other is neither dropped as foreign (the action has the same name in both) nor
misspelt.

Repeated connection failures (a CSMS with a bad certificate retried every minute for a week)
queue one notification per kind while one is still waiting, as the 2.0.1 errata ask for
A00.FR.316 ("a security event only needs to be sent once for repeated failed connection
attempts, in order to avoid overflow to the offline queue"); the log still has every one.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import TYPE_CHECKING, ClassVar

from agent.core.security_events import INFO_MAX, TYPE_MAX, SecurityEvent
from agent.storage import OutboxItem, StorageError

if TYPE_CHECKING:
    from agent.ocpp.adapter import Adapter
    from agent.storage import Storage

log = logging.getLogger("cp_agent.security")

ACTION = "SecurityEventNotification"
# Kinds raised by every failed connection attempt: one waiting notification is enough.
ONCE_WHILE_WAITING = frozenset({
    "FailedToAuthenticateAtCsms", "CsmsFailedToAuthenticate", "InvalidCsmsCertificate",
    "InvalidTLSVersion", "InvalidTLSCipherSuite",
})
UNQUEUED_MAX = 50  # events held in memory while the outbox cannot be written (disk full)


class SecurityEventSender:
    """Mixin of a version's security block: critical events into the outbox, sent in order."""

    OUTBOX_ACTIONS: ClassVar[frozenset[str]] = frozenset({ACTION})
    CRITICAL: ClassVar[frozenset[str]] = frozenset()
    NAMES: ClassVar[dict[str, str]] = {}  # 2.0.1 name -> this version's spelling

    adapter: Adapter
    storage: Storage

    def __init__(self, adapter: Adapter) -> None:
        super().__init__(adapter)  # type: ignore[call-arg]  # the Block after us in the MRO
        self._unqueued: deque[dict] = deque(maxlen=UNQUEUED_MAX)

    def critical(self, kind: str) -> bool:
        return kind in self.CRITICAL

    def security_event(self, event: SecurityEvent) -> None:
        """The adapter's hook (only the adapter in charge gets it)."""
        if not self.critical(event.kind):
            return  # the security log has it (A04.FR.04); not pushed
        payload = {"type": event.kind, "timestamp": event.stamp}
        if event.info:
            payload["techInfo"] = event.info
        self._flush_unqueued()
        self._queue(payload)

    def _queue(self, payload: dict) -> None:
        try:
            if payload["type"] in ONCE_WHILE_WAITING and self._waiting(payload["type"]):
                log.info("%s already waits in the outbox; not queued again", payload["type"])
                return
            self.adapter.enqueue(ACTION, payload)
        except StorageError as exc:
            # Disk full (MemoryExhaustion itself) or I/O error: keep it here, try again at the
            # next event and the next connection rather than lose it.
            log.error("SecurityEventNotification %s not queued: %s", payload["type"], exc)
            self._unqueued.append(payload)

    def _flush_unqueued(self) -> None:
        held = self._unqueued
        while held:
            payload = held.popleft()
            before = len(held)
            self._queue(payload)
            if len(held) > before:  # still failing: it went back to the end; stop here
                held.rotate(1)
                return

    def _waiting(self, kind: str) -> bool:
        return any(item.payload.get("type") in (kind, self.NAMES.get(kind))
                   for item in self.storage.outbox_find(ACTION))

    def session_started(self) -> None:
        self._flush_unqueued()

    def prepare_outbox(self, item: OutboxItem, payload: dict) -> dict:
        """The queued (2.0.1-named) event in this version's words."""
        kind = str(payload.get("type", ""))
        out = {**payload, "type": self.NAMES.get(kind, kind)[:TYPE_MAX]}
        if "techInfo" in out:
            out["techInfo"] = str(out["techInfo"])[:INFO_MAX]
        return out


__all__ = ["ACTION", "ONCE_WHILE_WAITING", "SecurityEventSender"]
