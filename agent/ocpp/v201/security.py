"""2.0.1 block A, security: SecurityEventNotification and the SecurityCtrlr variables.

Security events come from the station's bus (:mod:`agent.core.security_events`); the critical
ones of appendix 1 (v1.3, with the 2023 errata making the two firmware events critical) go
through the durable outbox (A04: they must reach the CSMS even across outages and power cuts,
:mod:`agent.ocpp.security_delivery`), every one goes to the security log.  The basic-auth
password a CSMS sets (BasicAuthPassword, write-only) is kept as a 2.0.1 variable; the
composition root hands it to the link's connection profiles, and changing it is itself a
security event.
"""

from __future__ import annotations

import logging
from typing import ClassVar

from agent.ocpp.security_delivery import SecurityEventSender
from agent.ocpp.v201.device_model import Attr, VarDef, VariableBlock, check_password, ro
from agent.redaction import SECRETS

log = logging.getLogger("cp_agent.v201")

# Appendix 1 "Critical: Yes" (v1.3), plus InvalidFirmwareSignature and
# InvalidFirmwareSigningCertificate (errata 2023-12, 2.18.1: critical because of L01.FR.02/03).
CRITICAL = frozenset({
    "FirmwareUpdated", "SettingSystemTime", "StartupOfTheDevice", "ResetOrReboot",
    "SecurityLogWasCleared", "MemoryExhaustion", "TamperDetectionActivated",
    "InvalidFirmwareSignature", "InvalidFirmwareSigningCertificate", "InvalidCsmsCertificate",
    "InvalidChargingStationCertificate", "InvalidTLSVersion", "InvalidTLSCipherSuite",
    "MaintenanceLoginAccepted", "MaintenanceLoginFailed",
})


class Security(SecurityEventSender, VariableBlock):
    CRITICAL = CRITICAL
    VARIABLES: ClassVar[tuple[VarDef, ...]] = (
        VarDef("SecurityCtrlr", "BasicAuthPassword", "string",
               (Attr("Actual", "WriteOnly", default=""),), min_limit=16, max_limit=40,
               check=check_password),
    )

    def live_variables(self) -> list[VarDef]:
        ctx = self.adapter.ctx
        return [
            # Live: a CSMS may raise it (A05); the link's network profiles know it.
            ro("SecurityCtrlr", "SecurityProfile", "integer",
               lambda: str(ctx.network.security_profile if ctx.network is not None
                           else ctx.security_profile)),
            ro("SecurityCtrlr", "Identity", "string", ctx.station_id, max_limit=48),
        ]

    def event(self, kind: str, info: str = "") -> None:
        """Report a security event (the station's bus; kept for the blocks that call it)."""
        self.station.security_events.record(kind, info)

    def variable_changed(self, d: VarDef, value: str) -> None:
        if any(a.mutability == "WriteOnly" for a in d.attrs):
            SECRETS.add(value, station_id=self.adapter.ctx.station_id)  # never in a log
        if d.component == "SecurityCtrlr" and d.name == "BasicAuthPassword":
            self.event("ReconfigurationOfSecurityParameters", "BasicAuthPassword changed")

    def clock_corrected(self, delta: float) -> None:
        """A clock set from the CSMS by more than TimeAdjustmentReportingThreshold (A04)."""
        threshold = self.dm.integer("ClockCtrlr", "TimeAdjustmentReportingThreshold")
        if threshold > 0 and abs(delta) > threshold:
            log.info("clock corrected by %+.1f s to the CSMS time", delta)
            self.event("SettingSystemTime", f"clock corrected by {delta:+.1f} s")
