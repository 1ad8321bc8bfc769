"""1.6 security extension (whitepaper edition 2): SecurityEventNotification, ExtendedTriggerMessage.

Security events come from the station's bus (:mod:`agent.core.security_events`, in 2.0.1
names); the critical ones of the whitepaper's section 8 go through the durable outbox in 1.6
spelling (``FailedToAuthenticateAtCentralSystem``, ``InvalidCentralSystemCertificate``, ...),
every one goes to the security log (A04.FR.04).  Besides the "Critical: Yes" rows, three
events are pushed because a requirement says so in so many words: InvalidFirmwareSigningCertificate
(L01.FR.02) and InvalidFirmwareSignature (L01.FR.03) "SHALL send a SecurityEventNotification.req",
and InvalidTLSCipherSuite (A00.FR.318: "trigger an InvalidTLSCipherSuite security event (send
to the Central System via a SecurityEventNotification.req)").

ExtendedTriggerMessage (whitepaper 5.5, the 2.0.1 TriggerMessage renamed) triggers the
RemoteTrigger profile's messages (BootNotification, Heartbeat, MeterValues, StatusNotification:
sent the way TriggerMessage sends them) and those of the security extension: LogStatusNotification
(the block owning GetLog, else "Idle": no upload running), FirmwareStatusNotification, which
here means SignedFirmwareStatusNotification (the block owning SignedUpdateFirmware claims it as
"SignedFirmwareStatusNotification", else "Idle", as L01.FR.28 answers once nothing is running),
and SignChargePointCertificate (the block owning the station certificate; NotImplemented
without one).  The security extension is no feature profile: SupportedFeatureProfiles is not
changed by it.
"""

from __future__ import annotations

import logging
from typing import Any

from agent.ocpp.blocks import Block, handles
from agent.ocpp.security_delivery import SecurityEventSender
from agent.ocpp.v16.remote_trigger import OWN, RemoteTrigger

log = logging.getLogger("cp_agent.v16")

# Whitepaper section 8, "CRITICAL: Yes", and the three events a requirement makes pushed.
CRITICAL = frozenset({
    "FirmwareUpdated", "SettingSystemTime", "StartupOfTheDevice", "ResetOrReboot",
    "SecurityLogWasCleared", "MemoryExhaustion", "TamperDetectionActivated",
    "InvalidFirmwareSigningCertificate", "InvalidFirmwareSignature", "InvalidTLSCipherSuite",
})
# 2.0.1 name (the bus's) -> the whitepaper's spelling.
NAMES = {
    "FailedToAuthenticateAtCsms": "FailedToAuthenticateAtCentralSystem",
    "CsmsFailedToAuthenticate": "CentralSystemFailedToAuthenticate",
    "InvalidCsmsCertificate": "InvalidCentralSystemCertificate",
    "InvalidChargingStationCertificate": "InvalidChargePointCertificate",
}
# 1.6 has no TimeAdjustmentReportingThreshold; a correction beyond the 2.0.1 default (20 s)
# is a "change of the system time", less is drift.
CLOCK_REPORT_THRESHOLD_S = 20.0

# ExtendedTriggerMessage.requestedMessage -> the name a block claims it under (TRIGGERS).
EXTENDED_TARGETS = {
    "LogStatusNotification": "LogStatusNotification",
    "FirmwareStatusNotification": "SignedFirmwareStatusNotification",
    "SignChargePointCertificate": "SignChargePointCertificate",
}
# ... and what is sent when no block claims it (None: NotImplemented).
EXTENDED_IDLE: dict[str, tuple[str, dict] | None] = {
    "LogStatusNotification": ("LogStatusNotification", {"status": "Idle"}),
    "FirmwareStatusNotification": ("SignedFirmwareStatusNotification", {"status": "Idle"}),
    "SignChargePointCertificate": None,
}


class Security(SecurityEventSender, Block):
    CRITICAL = CRITICAL
    NAMES = NAMES

    def clock_corrected(self, delta: float) -> None:
        if abs(delta) > CLOCK_REPORT_THRESHOLD_S:
            log.info("clock corrected by %+.1f s to the Central System time", delta)
            self.station.security_events.record("SettingSystemTime",
                                                f"clock corrected by {delta:+.1f} s")

    # ------------------------------------------------------------------ ExtendedTrigger

    @handles("ExtendedTriggerMessage")
    async def extended_trigger_message(self, p: dict) -> dict:
        what = p["requestedMessage"]
        connector_id = p.get("connectorId") or None
        if connector_id is not None and connector_id not in self.station.evses:
            return {"status": "Rejected"}
        if what in OWN:
            try:
                remote = self.adapter.block(RemoteTrigger)
            except LookupError:
                return {"status": "NotImplemented"}
            self.adapter.spawn(self._own(remote, what, connector_id), f"v16-xtrigger-{what}")
            return {"status": "Accepted"}
        name = EXTENDED_TARGETS.get(what)
        if name is None:
            return {"status": "NotImplemented"}
        target = self.adapter.trigger_target(name)
        if target is not None:
            self.adapter.spawn(self._then(target, connector_id), f"v16-xtrigger-{what}")
            return {"status": "Accepted"}
        idle = EXTENDED_IDLE[what]
        if idle is None:
            return {"status": "NotImplemented"}
        self.adapter.spawn(self._idle(*idle), f"v16-xtrigger-{what}")
        return {"status": "Accepted"}

    async def _own(self, remote: RemoteTrigger, what: str, connector_id: int | None) -> None:
        await self.adapter.after_answer()
        await remote.send(what, connector_id)

    async def _then(self, target: Any, connector_id: int | None) -> None:
        await self.adapter.after_answer()
        await target(connector_id)

    async def _idle(self, action: str, payload: dict) -> None:
        await self.adapter.after_answer()
        await self.adapter.send_quiet(action, payload)


__all__ = ["CRITICAL", "EXTENDED_TARGETS", "NAMES", "Security"]

