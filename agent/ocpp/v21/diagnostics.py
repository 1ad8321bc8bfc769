"""2.1 GetLog (N01): the 2.0.1 block; 2.1's new logType DataCollectorLog is refused."""

from __future__ import annotations

from agent.ocpp.blocks import handles
from agent.ocpp.v201.diagnostics import Diagnostics

# LogEnumType values whose logs this station collects (the 2.0.1 block's).
COLLECTED = frozenset({"DiagnosticsLog", "SecurityLog"})


class Diagnostics21(Diagnostics):
    @handles("GetLog")
    async def get_log(self, p: dict) -> dict:
        if p["logType"] not in COLLECTED:
            return {"status": "Rejected",
                    "statusInfo": {"reasonCode": "UnsupportedParam",
                                   "additionalInfo": f"logType {p['logType']} is not collected "
                                                     "by this station (no DataCollector)"}}
        return await super().get_log(p)
