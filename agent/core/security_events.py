"""Security events, version-neutral: every layer reports them here, the adapters deliver them.

The 1.6 security whitepaper (section 8) and the 2.0.1 appendices (appendix 1) name the events
(``FailedToAuthenticateAtCsms``, ``InvalidCsmsCertificate``, ``InvalidFirmwareSignature``,
...).  Whoever sees one (the link on a failed TLS handshake or a refused password, the RPC layer
on a frame that is no OCPP message, the certificate store on a bad chain, the firmware service
on a bad signature, the composition root at start-up) calls :meth:`SecurityEvents.record`
with the 2.0.1 name; 1.6 spellings are accepted and folded onto it.  One entry point, so that
no version reports an event twice or forgets one:

- every *listener* gets every event: the security log (A04.FR.04 / N01.FR.05: every event,
  critical or not, is stored in it);
- the one *delivery target* gets it too: the adapter in charge (:meth:`deliver_to`, called by
  ``Adapter.activate``), whose security block decides by its version's table whether the event
  is critical and, if so, queues a SecurityEventNotification in the durable outbox.  Events
  recorded while no adapter is in charge (the bus exists before the adapters) wait in a short
  backlog and go to the first target.

Flood control is here, once: a kind with a *throttle* (``InvalidMessages`` from a CSMS sending
garbage, ``MemoryExhaustion`` on a full disk) is recorded at most ``burst`` times per
``window`` seconds; what is suppressed is counted and named in the next one let through.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from agent.clock import Clock

log = logging.getLogger("cp_agent.security")

# The 2.0.1 names (appendix 1, v1.3): the bus's vocabulary.
EVENT_TYPES = frozenset({
    "FirmwareUpdated", "FailedToAuthenticateAtCsms", "CsmsFailedToAuthenticate",
    "SettingSystemTime", "StartupOfTheDevice", "ResetOrReboot", "SecurityLogWasCleared",
    "ReconfigurationOfSecurityParameters", "MemoryExhaustion", "InvalidMessages",
    "AttemptedReplayAttacks", "TamperDetectionActivated", "InvalidFirmwareSignature",
    "InvalidFirmwareSigningCertificate", "InvalidCsmsCertificate",
    "InvalidChargingStationCertificate", "InvalidTLSVersion", "InvalidTLSCipherSuite",
    "MaintenanceLoginAccepted", "MaintenanceLoginFailed",
    "DiscardedRenewedClientCertificate",  # 2.1 appendix 1 (v2.0)
})
# 1.6 spellings (whitepaper section 8) of the same events.
ALIASES_16 = {
    "FailedToAuthenticateAtCentralSystem": "FailedToAuthenticateAtCsms",
    "CentralSystemFailedToAuthenticate": "CsmsFailedToAuthenticate",
    "InvalidCentralSystemCertificate": "InvalidCsmsCertificate",
    "InvalidChargePointCertificate": "InvalidChargingStationCertificate",
}
# Neutral settings that are security parameters (1.6 security extension keys): a change is a
# ReconfigurationOfSecurityParameters event (2.0.1 SecurityCtrlr variables report their own).
SECURITY_SETTINGS = frozenset({
    "SecurityProfile", "AuthorizationKey", "CpoName", "AdditionalRootCertificateCheck",
    "CertificateSignedMaxChainSize", "CertificateStoreMaxLength",
})
# Kinds that can come in floods, and how many of each are recorded per window (seconds).
THROTTLES = {
    "InvalidMessages": (10, 600.0),  # a CSMS sending garbage: ten per ten minutes
    "MemoryExhaustion": (1, 3600.0),  # every failed write of a full disk would raise it
    # once per failed connection attempt (backoff down to seconds): a few per hour
    "FailedToAuthenticateAtCsms": (3, 3600.0),
    "InvalidCsmsCertificate": (3, 3600.0),
    "InvalidTLSVersion": (3, 3600.0),
    "InvalidTLSCipherSuite": (3, 3600.0),
}
# Where a requested reset is remembered, so that the next start says ResetOrReboot.
RESET_KEY = "security.reset_requested"
TYPE_MAX = 50  # SecurityEventNotification.type: string[50] in both versions
INFO_MAX = 255  # techInfo: string[0..255]
BACKLOG = 100  # events kept for a delivery target that is not there yet


class KeyValue(Protocol):
    """The part of the storage the start-up / reset bookkeeping uses."""

    def get_setting(self, key: str) -> str | None: ...
    def set_setting(self, key: str, value: str) -> None: ...
    def delete_setting(self, key: str) -> None: ...


@dataclass(frozen=True)
class SecurityEvent:
    kind: str  # the 2.0.1 event type name, e.g. "InvalidCsmsCertificate"
    info: str  # techInfo: free text for a technician, never a secret
    stamp: str  # ISO time on the station clock (deferred stamp before the clock is known)


@dataclass
class _Throttle:
    burst: int
    window: float
    times: deque[float]
    suppressed: int = 0


class SecurityEvents:
    """The station's security event bus."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.listeners: list[Callable[[SecurityEvent], None]] = []
        # Masks secrets in techInfo (the agent installs agent.redaction's): info "never
        # contains a secret" is a promise of the callers, this keeps it if one forgets.
        self.scrub: Callable[[str], str] = lambda text: text
        self._target: Callable[[SecurityEvent], None] | None = None
        self._backlog: deque[SecurityEvent] = deque(maxlen=BACKLOG)
        self._throttles: dict[str, _Throttle] = {}
        for kind, (burst, window) in THROTTLES.items():
            self.throttle(kind, burst=burst, window=window)
        self.recorded = 0
        self.suppressed = 0

    def throttle(self, kind: str, *, burst: int, window: float) -> None:
        """Record ``kind`` at most ``burst`` times per ``window`` seconds (monotonic)."""
        if burst < 1 or window <= 0:
            raise ValueError(f"throttle of {kind}: burst >= 1 and window > 0 needed")
        self._throttles[kind] = _Throttle(burst, window, deque())

    def deliver_to(self, target: Callable[[SecurityEvent], None] | None) -> None:
        """Make ``target`` the one that delivers events to the CSMS (the adapter in charge);
        what was recorded while there was none goes to it now, oldest first."""
        self._target = target
        while target is not None and self._backlog:
            self._call(target, self._backlog.popleft())

    def _admit(self, kind: str) -> int | None:
        """None when ``kind`` is throttled now; else how many were suppressed before it."""
        throttle = self._throttles.get(kind)
        if throttle is None:
            return 0
        now = self.clock.monotonic()
        while throttle.times and now - throttle.times[0] >= throttle.window:
            throttle.times.popleft()
        if len(throttle.times) >= throttle.burst:
            throttle.suppressed += 1
            self.suppressed += 1
            return None
        throttle.times.append(now)
        count, throttle.suppressed = throttle.suppressed, 0
        return count

    def record(self, kind: str, info: str = "") -> SecurityEvent | None:
        """Report a security event (any thread of the loop; never raises).  Returns the event,
        or None when its kind is throttled right now."""
        kind = ALIASES_16.get(kind, kind)
        if kind not in EVENT_TYPES:
            log.warning("security event %r is not in the OCPP list; recorded as it is", kind)
        before = self._admit(kind)
        if before is None:
            log.debug("security event %s suppressed (throttled)", kind)
            return None
        if before:
            info = f"{info} (+{before} suppressed)" if info else f"+{before} suppressed"
        try:
            info = self.scrub(info)
        except Exception:  # noqa: BLE001 - a broken scrubber must not leak: drop the text
            log.exception("scrubbing techInfo of %s failed", kind)
            info = ""
        event = SecurityEvent(kind[:TYPE_MAX], info[:INFO_MAX], self.clock.stamp())
        self.recorded += 1
        log.warning("security event %s%s", event.kind, f": {event.info}" if event.info else "")
        for listener in list(self.listeners):
            self._call(listener, event)
        if self._target is not None:
            self._call(self._target, event)
        else:
            self._backlog.append(event)
        return event

    # ------------------------------------------------------------------ start-up / reset

    def reset_requested(self, store: KeyValue, kind: str) -> None:
        """A reset is about to happen (CSMS Reset, ctl): the next start reports ResetOrReboot."""
        store.set_setting(RESET_KEY, kind[:40] or "reset")

    def started(self, store: KeyValue) -> SecurityEvent | None:
        """The agent starts: StartupOfTheDevice, or ResetOrReboot after a requested reset."""
        kind = store.get_setting(RESET_KEY)
        if kind is not None:
            store.delete_setting(RESET_KEY)
            return self.record("ResetOrReboot", f"restarted after a {kind} reset")
        return self.record("StartupOfTheDevice", "cp-agent started")

    @staticmethod
    def _call(listener: Callable[[SecurityEvent], None], event: SecurityEvent) -> None:
        try:
            listener(event)
        except Exception:  # a listener's failure must not hide the event from the others
            log.exception("security event listener failed for %s", event.kind)


__all__ = ["ALIASES_16", "EVENT_TYPES", "RESET_KEY", "SECURITY_SETTINGS", "THROTTLES",
           "SecurityEvent", "SecurityEvents"]
