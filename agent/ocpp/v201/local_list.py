"""2.0.1 block D, local authorization list: GetLocalListVersion, SendLocalList.

Entries are stored in the neutral form of :class:`agent.core.authorization.AuthInfo`, so the
list survives a move to another OCPP version; the core's policy reads them.
"""

from __future__ import annotations

import logging
from typing import ClassVar

from agent.ocpp.blocks import handles
from agent.ocpp.v201.authorization import auth_info
from agent.ocpp.v201.device_model import VarDef, VariableBlock, ro, rw
from agent.storage import StorageError

log = logging.getLogger("cp_agent.v201")


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
        return {"versionNumber": self.storage.local_list_version()}

    @handles("SendLocalList")
    async def send_local_list(self, p: dict) -> dict:
        """Full or differential update, all of it with its version or nothing (D01, D02)."""
        if not self.enabled:
            return {"status": "Failed", "statusInfo": {"reasonCode": "NotEnabled"}}
        items = p.get("localAuthorizationList", [])
        if len(items) > self.dm.integer("LocalAuthListCtrlr", "ItemsPerMessage"):
            return {"status": "Failed", "statusInfo": {"reasonCode": "TooManyElements"}}
        entries: dict[str, dict | None] = {}
        for item in items:
            info = item.get("idTokenInfo")
            entries[item["idToken"]["idToken"]] = (auth_info(info).stored() if info
                                                   else None)
        version = p["versionNumber"]
        limit = self.settings["LocalAuthListMaxLength"]
        out_of_storage = {"status": "Failed", "statusInfo": {"reasonCode": "OutOfStorage"}}
        try:
            if p["updateType"] == "Full":
                full = {k: v for k, v in entries.items() if v}
                if len(full) > limit:
                    return out_of_storage
                self.storage.local_list_replace(version, full)
            else:
                if version <= self.storage.local_list_version():
                    return {"status": "VersionMismatch"}
                added = sum(1 for k, v in entries.items()
                            if v is not None and self.storage.local_list_get(k) is None)
                removed = sum(1 for k, v in entries.items()
                              if v is None and self.storage.local_list_get(k) is not None)
                if self.storage.local_list_count() + added - removed > limit:
                    return out_of_storage
                self.storage.local_list_apply(version, entries)
        except StorageError as exc:
            log.error("local authorization list not updated: %s", exc)
            return {"status": "Failed"}
        return {"status": "Accepted"}
