"""2.1 block A, security events: the 2.0.1 block with 2.1's list of critical events.

2.1 part 2 appendix 1 (v2.0) adds DiscardedRenewedClientCertificate as critical (pushed to the
CSMS) and CsmsFailedToAuthenticate as not critical (security log only).
"""

from __future__ import annotations

from agent.ocpp.v201.security import CRITICAL, Security

CRITICAL_21 = CRITICAL | {"DiscardedRenewedClientCertificate"}


class Security21(Security):
    CRITICAL = CRITICAL_21
