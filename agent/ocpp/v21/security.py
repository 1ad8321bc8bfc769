"""2.1 block A, security: the 2.0.1 block with 2.1's list of critical events and variables.

2.1 part 2 appendix 1 (v2.0) adds DiscardedRenewedClientCertificate as critical (pushed to the
CSMS: the station went back to its previous certificate because the renewed one did not get
it connected, see agent/link/network.py) and CsmsFailedToAuthenticate as not critical
(security log only).

SecurityCtrlr.AllowSecurityProfileDowngrade (2.1 appendices 3.1.16) is reported, read-only
and false: this station never lowers its security profile (the highest one that connected is
its floor), so a CSMS learns that a 3 -> 2 downgrade will be refused.
"""

from __future__ import annotations

from agent.ocpp.v201.device_model import VarDef, ro
from agent.ocpp.v201.security import CRITICAL, Security

CRITICAL_21 = CRITICAL | {"DiscardedRenewedClientCertificate"}


class Security21(Security):
    CRITICAL = CRITICAL_21

    def live_variables(self) -> list[VarDef]:
        # Live, so that an ocpp.defaults entry cannot make it say what the station won't do.
        return [*super().live_variables(),
                ro("SecurityCtrlr", "AllowSecurityProfileDowngrade", "boolean",
                   lambda: "false")]


__all__ = ["CRITICAL_21", "Security21"]
