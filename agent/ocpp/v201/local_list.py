"""2.0.1 block D, local authorization list: GetLocalListVersion, SendLocalList.

Entries are stored in the neutral form of :class:`agent.core.authorization.AuthInfo`, so the
list survives a move to another OCPP version; the core's policy reads them.
"""

from __future__ import annotations

from typing import ClassVar

from agent.core.authorization import AuthInfo
from agent.ocpp.blocks import handles
from agent.ocpp.v201.authorization import auth_info
from agent.ocpp.v201.device_model import VarDef, VariableBlock, ro, rw


class LocalList(VariableBlock):
    VARIABLES: ClassVar[tuple[VarDef, ...]] = (
        rw("LocalAuthListCtrlr", "Enabled", "boolean", setting="LocalAuthListEnabled"),
        ro("LocalAuthListCtrlr", "Available", "boolean", "true"),
        ro("LocalAuthListCtrlr", "ItemsPerMessage", "integer", "1000"),
        ro("LocalAuthListCtrlr", "BytesPerMessage", "integer", "262144"),
        rw("LocalAuthListCtrlr", "DisablePostAuthorize", "boolean",
           setting="LocalAuthListDisablePostAuthorize"),
    )

    def live_variables(self) -> list[VarDef]:
        return [ro("LocalAuthListCtrlr", "Entries", "integer",
                   lambda: str(self.storage.local_list_count()), max_limit=10000)]

    @property
    def enabled(self) -> bool:
        return bool(self.settings["LocalAuthListEnabled"])

    @handles("GetLocalListVersion")
    async def get_local_list_version(self, p: dict) -> dict:
        if not self.enabled:
            return {"versionNumber": 0}
        return {"versionNumber": self.station.authorization.local_list_version()}

    @handles("SendLocalList")
    async def send_local_list(self, p: dict) -> dict:
        """Full or differential update, all of it with its version or nothing (D01, D02)."""
        if not self.enabled:
            return {"status": "Failed", "statusInfo": {"reasonCode": "NotEnabled"}}
        items = p.get("localAuthorizationList", [])
        if len(items) > self.dm.integer("LocalAuthListCtrlr", "ItemsPerMessage"):
            return {"status": "Failed", "statusInfo": {"reasonCode": "TooManyElements"}}
        entries: dict[str, AuthInfo | None] = {}
        for item in items:
            info = item.get("idTokenInfo")
            entries[item["idToken"]["idToken"]] = auth_info(info) if info else None
        result = self.station.authorization.update_local_list(
            p["versionNumber"], entries, full=p["updateType"] == "Full")
        if result == "OutOfStorage":
            return {"status": "Failed", "statusInfo": {"reasonCode": "OutOfStorage"}}
        return {"status": result}
