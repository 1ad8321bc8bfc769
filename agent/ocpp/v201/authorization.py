"""2.0.1 block C, authorization: Authorize, ClearCache, the AuthCtrlr / AuthCacheCtrlr variables.

The rules (local list before cache, LocalPreAuthorize, the offline rules, post-authorization,
cache lifetime, no transactions before the boot is accepted unless TxBeforeAcceptedEnabled)
are the core's :mod:`agent.core.authorization`; this block only asks the 2.0.1 way, maps
idTokenInfo to the neutral verdict and says when the registration is not accepted (B02/B03).
"""

from __future__ import annotations

from typing import Any, ClassVar

from agent.core.authorization import AuthInfo, AuthRules
from agent.core.model import Token
from agent.ocpp.blocks import handles
from agent.ocpp.v201.device_model import VarDef, VariableBlock, ro, rw

TOKEN_TYPES = frozenset({"Central", "eMAID", "ISO14443", "ISO15693", "KeyCode", "Local",
                         "MacAddress", "NoAuthorization"})
ID_TOKEN_MAX = 36  # IdTokenType.idToken is identifierString[36]
# 2.1 made IdTokenType.type a string (its standardized values, 2.1 appendix 7.1, add these
# three; others may be used) and idToken 255 long.
ID_TOKEN_MAX_21 = 255
TOKEN_TYPE_MAX_21 = 20


def id_token_max(version: str = "2.0.1") -> int:
    return ID_TOKEN_MAX_21 if version == "2.1" else ID_TOKEN_MAX


def token_type(kind: str | None, version: str = "2.0.1") -> str:
    """A token type the version knows (2.0.1 IdTokenEnumType; 2.1 any short string);
    anything else is the station's own."""
    if version == "2.1":
        return kind if kind and len(kind) <= TOKEN_TYPE_MAX_21 else "Local"
    return kind if kind in TOKEN_TYPES else "Local"


def id_token(token: Token, version: str = "2.0.1") -> dict[str, str]:
    return {"idToken": token.id[:id_token_max(version)], "type": token_type(token.type, version)}


def auth_info(id_token_info: dict[str, Any] | None) -> AuthInfo:
    """A 2.0.1 idTokenInfo as the neutral verdict (groupIdToken is the 1.6 parent)."""
    info = id_token_info or {}
    group = info.get("groupIdToken")
    parent = group.get("idToken") if isinstance(group, dict) else None
    return AuthInfo(str(info.get("status", "Invalid")), parent,
                    info.get("cacheExpiryDateTime"))


class Authorization(VariableBlock):
    VARIABLES: ClassVar[tuple[VarDef, ...]] = (
        ro("AuthCtrlr", "Enabled", "boolean", "true"),
        rw("AuthCtrlr", "AuthorizeRemoteStart", "boolean", setting="AuthorizeRemoteTxRequests"),
        rw("AuthCtrlr", "LocalAuthorizeOffline", "boolean", setting="LocalAuthorizeOffline"),
        rw("AuthCtrlr", "LocalPreAuthorize", "boolean", setting="LocalPreAuthorize"),
        rw("AuthCtrlr", "OfflineTxForUnknownIdEnabled", "boolean",
           setting="AllowOfflineTxForUnknownId"),
        rw("AuthCtrlr", "DisableRemoteAuthorization", "boolean",
           setting="DisableRemoteAuthorization"),
        rw("AuthCacheCtrlr", "Enabled", "boolean", setting="AuthorizationCacheEnabled"),
        ro("AuthCacheCtrlr", "Available", "boolean", "true"),
        # 0: entries stay until the cache makes room (the neutral setting's default).
        rw("AuthCacheCtrlr", "LifeTime", "integer", unit="s", min_limit=0, max_limit=31536000,
           setting="AuthCacheLifeTime"),
        rw("AuthCacheCtrlr", "DisablePostAuthorize", "boolean",
           setting="AuthCacheDisablePostAuthorize"),
    )

    def rules(self) -> AuthRules:
        return AuthRules(
            ask=self.ask, online=lambda: self.adapter.online,
            # B02/B03: Pending or Rejected (of this connection's boot) refuses new sessions.
            not_accepted=lambda: self.adapter.registration in ("Pending", "Rejected"))

    async def ask(self, token: Token) -> AuthInfo | None:
        res = await self.adapter.ask("Authorize",
                                    {"idToken": id_token(token, self.adapter.version)})
        if res:
            for block in self.adapter.blocks:  # the driver's tariff text (I01, tariff.py)
                hook = getattr(block, "authorize_answered", None)
                if hook is not None:
                    hook(token, res)
        return None if res is None else auth_info(res.get("idTokenInfo"))

    @handles("ClearCache")
    async def clear_cache(self, p: dict) -> dict:
        if not self.settings["AuthorizationCacheEnabled"]:
            return {"status": "Rejected"}
        self.storage.auth_cache_clear()
        return {"status": "Accepted"}
