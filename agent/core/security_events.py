"""Security events, version-neutral: every layer reports them here, the adapters deliver them.

The 1.6 security whitepaper and the 2.0.1 appendices name the events
(``FailedToAuthenticateAtCsms``, ``InvalidCsmsCertificate``, ``InvalidFirmwareSignature``,
...).  Whoever sees one (the link on a failed TLS handshake, the certificate store on a bad
chain, the firmware service on a bad signature) calls :meth:`SecurityEvents.record`; each
listener (an adapter queueing a SecurityEventNotification through its durable outbox, the
security log) gets it.  One entry point, so that no version reports an event twice or
forgets one.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from agent.clock import Clock

log = logging.getLogger("cp_agent.security")


@dataclass(frozen=True)
class SecurityEvent:
    kind: str  # the spec's event type name, e.g. "InvalidCsmsCertificate"
    info: str  # techInfo: free text for a technician, never a secret
    stamp: str  # ISO time on the station clock (deferred stamp before the clock is known)


class SecurityEvents:
    """The station's security event bus."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.listeners: list[Callable[[SecurityEvent], None]] = []

    def record(self, kind: str, info: str = "") -> SecurityEvent:
        event = SecurityEvent(kind, info[:255], self.clock.stamp())
        log.warning("security event %s%s", kind, f": {event.info}" if event.info else "")
        for listener in list(self.listeners):
            try:
                listener(event)
            except Exception:  # a listener's failure must not hide the event from the others
                log.exception("security event listener failed for %s", kind)
        return event


__all__ = ["SecurityEvent", "SecurityEvents"]
