"""2.0.1 block A, security: SecurityEventNotification and the SecurityCtrlr variables.

Security events go through the durable outbox (A04: the critical ones must reach the CSMS even
across outages and power cuts).  The basic-auth password a CSMS sets (BasicAuthPassword,
write-only) is kept as a 2.0.1 variable; the composition root hands it to the link's
connection profiles, and changing it is itself a security event.
"""

from __future__ import annotations

import logging
from typing import ClassVar

from agent.ocpp.v201.device_model import Attr, VarDef, VariableBlock, check_password, ro, rw

log = logging.getLogger("cp_agent.v201")


class Security(VariableBlock):
    OUTBOX_ACTIONS = frozenset({"SecurityEventNotification"})
    VARIABLES: ClassVar[tuple[VarDef, ...]] = (
        rw("SecurityCtrlr", "OrganizationName", "string", "", max_limit=50),
        ro("SecurityCtrlr", "CertificateEntries", "integer", "0"),
        VarDef("SecurityCtrlr", "BasicAuthPassword", "string",
               (Attr("Actual", "WriteOnly", default=""),), min_limit=16, max_limit=40,
               check=check_password),
    )

    def live_variables(self) -> list[VarDef]:
        ctx = self.adapter.ctx
        return [
            ro("SecurityCtrlr", "SecurityProfile", "integer", str(ctx.security_profile)),
            ro("SecurityCtrlr", "Identity", "string", ctx.station_id, max_limit=48),
        ]

    def event(self, kind: str, info: str = "") -> None:
        """Queue a security event durably (A04)."""
        payload = {"type": kind, "timestamp": self.clock.stamp()}
        if info:
            payload["techInfo"] = info[:255]
        self.adapter.enqueue("SecurityEventNotification", payload)

    def variable_changed(self, d: VarDef, value: str) -> None:
        if d.component == "SecurityCtrlr" and d.name == "BasicAuthPassword":
            self.event("ReconfigurationOfSecurityParameters", "BasicAuthPassword changed")

    def clock_corrected(self, delta: float) -> None:
        """A clock set from the CSMS by more than TimeAdjustmentReportingThreshold (A04)."""
        threshold = self.dm.integer("ClockCtrlr", "TimeAdjustmentReportingThreshold")
        if threshold > 0 and abs(delta) > threshold:
            log.info("clock corrected by %+.1f s to the CSMS time", delta)
            self.event("SettingSystemTime", f"clock corrected by {delta:+.1f} s")
