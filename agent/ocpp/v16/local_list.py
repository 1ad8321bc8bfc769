"""1.6 LocalAuthListManagement profile: GetLocalListVersion, SendLocalList (1.6 5.10, 5.15).

Entries are stored in the neutral form of :class:`agent.core.authorization.AuthInfo`, so the
list survives a move to another OCPP version.
"""

from __future__ import annotations

from typing import ClassVar

from agent.core.authorization import AuthInfo
from agent.core.settings import SettingDef
from agent.ocpp.blocks import Block, handles
from agent.ocpp.v16.authorization import auth_info

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
        return {"listVersion": self.station.authorization.local_list_version()}

    @handles("SendLocalList")
    async def send_local_list(self, p: dict) -> dict:
        """Full or differential update, all of it with its version or nothing (1.6 5.15)."""
        if not self.enabled:
            return {"status": "NotSupported"}
        entries: dict[str, AuthInfo | None] = {}
        items = p.get("localAuthorizationList") or []
        if len(items) > self.settings["SendLocalListMaxLength"]:
            return {"status": "Failed"}
        full = p["updateType"] == "Full"
        for item in items:
            if item["idTag"] in entries:
                return {"status": "Failed"}  # "idTags ... MUST be unique" (6.41)
            info = item.get("idTagInfo")
            if info is None and full:
                return {"status": "Failed"}  # idTagInfo is required in a full update
            entries[item["idTag"]] = auth_info(info) if info is not None else None
        result = self.station.authorization.update_local_list(p["listVersion"], entries,
                                                               full=full)
        # 1.6 has no word for a full list: Failed.
        return {"status": "Failed" if result == "OutOfStorage" else result}
