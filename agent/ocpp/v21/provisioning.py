"""2.1 block B, provisioning: the 2.0.1 block with 2.1's Reset and device-model additions.

Reset gained ``ImmediateAndResume`` (reset now, resume the transactions afterwards: E17).
This station does not resume transactions yet, so with a transaction running the request is
Rejected (UnsupportedParam) instead of ending the transactions the CSMS wants kept; with none
running it is an Immediate reset.

The device model is the 2.0.1 one (same components and variables, same storage: one setting
is one value whichever of 1.6, 2.0.1 or 2.1 changed it) plus the variables 2.1's appendix
(v2.0) added that describe what the carried-over blocks do (:data:`VARIABLES_21`).
"""

from __future__ import annotations

from typing import ClassVar

from agent.ocpp.blocks import handles
from agent.ocpp.v201.device_model import VarDef, ro
from agent.ocpp.v201.provisioning import Provisioning

VARIABLES_21: tuple[VarDef, ...] = (
    # 2.1 F06: the customTrigger values TriggerMessage takes (none: CustomTrigger is
    # answered NotImplemented).
    ro("CustomizationCtrlr", "CustomTriggers", "MemberList", ""),
    # The local list's cacheExpiryDateTime does not make an entry "not present" here (an
    # expired entry is refused as expired).
    ro("LocalAuthListCtrlr", "SupportsExpiryDateTime", "boolean", "false"),
)


class Provisioning21(Provisioning):
    VARIABLES: ClassVar[tuple[VarDef, ...]] = (*Provisioning.VARIABLES, *VARIABLES_21)

    @handles("Reset")
    async def reset(self, p: dict) -> dict:
        if p["type"] == "ImmediateAndResume":
            if self.station.any_transaction:
                return {"status": "Rejected", "statusInfo": {
                    "reasonCode": "UnsupportedParam",
                    "additionalInfo": "ImmediateAndResume: this station cannot resume "
                                      "transactions after a reset yet; use Immediate or "
                                      "OnIdle"}}
            p = {**p, "type": "Immediate"}  # nothing to resume: the same as Immediate
        return await super().reset(p)
