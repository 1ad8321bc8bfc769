"""1.6 authorization: Authorize, ClearCache, LocalListConflict (1.6 3.5).

The rules (local list, cache, LocalPreAuthorize, offline rules, late verdicts) are the core's
:mod:`agent.core.authorization`; this block only asks the 1.6 way and maps idTagInfo.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from agent.core.authorization import AuthInfo, AuthRules
from agent.core.model import Token
from agent.ocpp.blocks import Block, handles
from agent.ocpp.v16.availability import Availability

log = logging.getLogger("cp_agent.v16")

ID_TAG_MAX = 20  # IdToken is CiString20


def auth_info(id_tag_info: dict[str, Any] | None) -> AuthInfo:
    """A 1.6 idTagInfo as the neutral verdict."""
    info = id_tag_info or {}
    return AuthInfo(str(info.get("status", "Invalid")), info.get("parentIdTag"),
                    info.get("expiryDate"))


class Authorization(Block):
    PROFILE: ClassVar[str] = "Core"

    def rules(self) -> AuthRules:
        return AuthRules(ask=self.ask, online=lambda: self.adapter.online,
                         on_conflict=self._conflict)

    async def ask(self, token: Token) -> AuthInfo | None:
        res = await self.adapter.ask("Authorize", {"idTag": token.id[:ID_TAG_MAX]})
        return None if res is None else auth_info(res.get("idTagInfo"))

    def remember(self, id_tag: str, id_tag_info: dict[str, Any]) -> None:
        """1.6 4.8 / 4.10: StartTransaction.conf and StopTransaction.conf update the cache."""
        self.station.authorization.remember(id_tag, auth_info(id_tag_info))

    def _conflict(self, id_tag: str, listed: AuthInfo, answer: AuthInfo) -> None:
        """1.6 3.5.2: a CSMS verdict that contradicts the local list is reported on
        connector 0 (LocalListConflict)."""
        log.warning("local list says %s for %s, the CSMS %s: reporting LocalListConflict",
                    listed.status, id_tag, answer.status)
        self.adapter.block(Availability).queue_station_status(error_code="LocalListConflict",
                                          info=f"idTag {id_tag}")

    @handles("ClearCache")
    async def clear_cache(self, p: dict) -> dict:
        self.storage.auth_cache_clear()
        return {"status": "Accepted"}
