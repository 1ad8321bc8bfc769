"""1.6 LocalAuthListManagement profile: GetLocalListVersion, SendLocalList (1.6 5.10, 5.15).

Entries are stored in the neutral form of :class:`agent.core.authorization.AuthInfo`, so the
list survives a move to another OCPP version.
"""

from __future__ import annotations

import logging
from typing import ClassVar

from agent.core.settings import SettingDef
from agent.ocpp.blocks import Block, handles
from agent.ocpp.v16.authorization import auth_info
from agent.storage import StorageError

log = logging.getLogger("cp_agent.v16")

PROFILE = "LocalAuthListManagement"


class LocalList(Block):
    PROFILE: ClassVar[str] = PROFILE
    SETTINGS = (SettingDef("SendLocalListMaxLength", "int", 1000, readonly=True,
                           profile=PROFILE),)

    @property
    def enabled(self) -> bool:
        return bool(self.settings["LocalAuthListEnabled"])

    @handles("GetLocalListVersion")
    async def get_local_list_version(self, p: dict) -> dict:
        if not self.enabled:
            return {"listVersion": -1}
        return {"listVersion": self.storage.local_list_version()}

    @handles("SendLocalList")
    async def send_local_list(self, p: dict) -> dict:
        """Full or differential update, all of it with its version or nothing (1.6 5.15)."""
        if not self.enabled:
            return {"status": "NotSupported"}
        entries: dict[str, dict | None] = {}
        items = p.get("localAuthorizationList") or []
        if len(items) > self.settings["SendLocalListMaxLength"]:
            return {"status": "Failed"}
        for item in items:
            if item["idTag"] in entries:
                return {"status": "Failed"}  # "idTags ... MUST be unique" (6.41)
            info = item.get("idTagInfo")
            entries[item["idTag"]] = auth_info(info).stored() if info is not None else None
        version = p["listVersion"]
        try:
            if p["updateType"] == "Full":
                if any(v is None for v in entries.values()):
                    return {"status": "Failed"}  # idTagInfo is required in a full update
                if len(entries) > self.settings["LocalAuthListMaxLength"]:
                    return {"status": "Failed"}
                self.storage.local_list_replace(version, entries)  # type: ignore[arg-type]
            else:
                if version <= self.storage.local_list_version():
                    return {"status": "VersionMismatch"}
                added = sum(1 for k, v in entries.items()
                            if v is not None and self.storage.local_list_get(k) is None)
                removed = sum(1 for k, v in entries.items()
                              if v is None and self.storage.local_list_get(k) is not None)
                if (self.storage.local_list_count() + added - removed
                        > self.settings["LocalAuthListMaxLength"]):
                    return {"status": "Failed"}
                self.storage.local_list_apply(version, entries)
        except StorageError as exc:
            log.error("local authorization list not updated: %s", exc)
            return {"status": "Failed"}
        return {"status": "Accepted"}
