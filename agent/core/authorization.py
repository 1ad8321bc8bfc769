"""Authorization policy: the one place that decides whether a token may charge.

Both versions follow the same rules (1.6 3.5, 2.0.1 C01-C15): the local list has priority over
the cache; a local or cached hit with LocalPreAuthorize needs no round trip; online, the CSMS's
answer is what counts; offline (the CSMS cannot be reached: no connection, or no answer in
time) the rules are LocalAuthorizeOffline / AllowOfflineTxForUnknownId, where an identifier
known to be invalid or expired is always refused.  A CALLERROR to Authorize is an answer, not an
outage (2.0.1 C13.FR.04): the token is refused, the offline rules do not apply.

What differs between versions is only how the CSMS is asked (1.6 idTagInfo, 2.0.1 idTokenInfo)
and a few rules 1.6 has no key for; the active adapter supplies them as :class:`AuthRules`.
The cache and the local list store verdicts in one neutral form (:class:`AuthInfo`), so a
station that moves between versions keeps its local list.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from agent.clock import Clock, iso, parse_iso
from agent.core.model import AuthResult, Token
from agent.core.settings import Settings
from agent.storage import Storage, StorageError

log = logging.getLogger("cp_agent.auth")

# Entries kept in the authorization cache before the oldest make room (1.6 3.5.1).
AUTH_CACHE_MAX = 10000
# Verdicts kept for the bench tool to explain a refused card with.
VERDICTS_KEPT = 32


@dataclass(frozen=True)
class AuthInfo:
    """A CSMS verdict about a token, as the cache and the local list keep it."""

    status: str  # Accepted, Blocked, Expired, Invalid, ConcurrentTx, Unknown, ...
    parent: str | None = None  # 1.6 parentIdTag / 2.0.1 groupIdToken.idToken
    expiry: str | None = None  # when the entry stops being valid (ISO 8601)

    @property
    def accepted(self) -> bool:
        return self.status == "Accepted"

    def stored(self) -> dict[str, Any]:
        out: dict[str, Any] = {"status": self.status}
        if self.parent:
            out["parent"] = self.parent
        if self.expiry:
            out["expiry"] = self.expiry
        return out

    @classmethod
    def from_stored(cls, data: dict[str, Any]) -> AuthInfo:
        """Read an entry; entries written before the neutral form carry 1.6 or 2.0.1 names."""
        group = data.get("groupIdToken")
        parent = data.get("parent") or data.get("parentIdTag") or (
            group.get("idToken") if isinstance(group, dict) else None)
        expiry = data.get("expiry") or data.get("expiryDate") or data.get("cacheExpiryDateTime")
        return cls(str(data.get("status", "Invalid")), parent, expiry)


def _valid_iso(text: str | None) -> str | None:
    if not text:
        return None
    try:
        parse_iso(text)
    except ValueError:
        return None  # a schema-valid but odd date: keep the verdict, not the expiry
    return text


@dataclass
class AuthRules:
    """What the active OCPP version contributes to the policy.

    ``ask`` sends the version's Authorize and returns the verdict, or None when the CSMS could
    not be reached (not connected, not accepted, no answer in time): only then do the offline
    rules apply.  ``online`` says whether asking makes sense at all right now.
    """

    ask: Callable[[Token], Awaitable[AuthInfo | None]]
    online: Callable[[], bool]
    # 2.0.1 B02/C: no transactions before the boot is accepted unless TxBeforeAcceptedEnabled.
    not_accepted: Callable[[], bool] = field(default=lambda: False)
    # 1.6 3.5.2: a CSMS verdict contradicting the local list is reported (LocalListConflict).
    on_conflict: Callable[[str, AuthInfo, AuthInfo], None] | None = None


class AuthorizationPolicy:
    """The core's authorizer: local sources, the CSMS, the offline rules."""

    def __init__(self, settings: Settings, storage: Storage, clock: Clock) -> None:
        self.settings = settings
        self.storage = storage
        self.clock = clock
        self.rules: AuthRules | None = None
        self.verdicts: dict[str, AuthResult] = {}  # the last verdict per token, newest last

    def use(self, rules: AuthRules) -> None:
        """The adapter of the negotiated version takes over asking the CSMS."""
        self.rules = rules

    # ------------------------------------------------------------------ local sources

    @property
    def list_enabled(self) -> bool:
        return bool(self.settings.get("LocalAuthListEnabled", True))

    def _local_info(self, token_id: str) -> tuple[AuthInfo, str] | None:
        if self.list_enabled:
            entry = self.storage.local_list_get(token_id)
            if entry is not None:
                return AuthInfo.from_stored(entry), "local_list"
        if self.settings["AuthorizationCacheEnabled"]:
            entry = self.storage.auth_cache_get(token_id)
            if entry is not None:
                return AuthInfo.from_stored(entry), "cache"
            # Past the cache lifetime the token is unknown again; but an entry whose own
            # (CSMS) expiry passed is known to be expired, and refused as such offline.
            stale = self.storage.auth_cache_get(token_id, include_expired=True)
            if stale is not None and AuthInfo.from_stored(stale).expiry:
                return AuthInfo.from_stored(stale), "cache"
        return None

    def known_parent(self, token_id: str) -> str | None:
        """The group of a token as the local list or cache knows it (offline group stop)."""
        try:
            found = self._local_info(token_id)
        except StorageError:
            return None
        return found[0].parent if found else None

    def lookup(self, token: Token) -> AuthResult | None:
        """Local list first, then the cache; None when neither knows the token.

        An accepted entry with an expiry date cannot be judged while the clock is not
        trustworthy (no RTC, no CSMS yet): it then counts as unknown, never as valid.
        """
        found = self._local_info(token.id)
        if found is None:
            return None
        info, source = found
        if info.accepted and info.expiry and not self.clock.trustworthy:
            return None
        return self._judged(info, source)

    def _judged(self, info: AuthInfo, source: str) -> AuthResult:
        """A stored verdict as it stands now: an accepted entry past its expiry is Expired."""
        status = info.status
        if info.accepted and info.expiry:
            try:
                if parse_iso(info.expiry).timestamp() < self.clock.wall():
                    status = "Expired"
            except ValueError:
                pass
        return AuthResult(status, parent=info.parent, source=source, expires_at=info.expiry)

    def remember(self, token_id: str, info: AuthInfo) -> None:
        """Keep a CSMS verdict in the cache; never for a listed identifier (1.6 3.5.3).

        A storage failure costs the cache entry, never the authorization in progress.
        """
        try:
            self._check_conflict(token_id, info)
            if not self.settings["AuthorizationCacheEnabled"]:
                return
            if self.list_enabled and self.storage.local_list_get(token_id) is not None:
                return
            # The CSMS's expiry travels with the verdict (past it, the entry reads Expired);
            # the cache lifetime (2.0.1 AuthCacheCtrlr.LifeTime) only bounds how long the entry
            # stays: past it the token is unknown again, not invalid.
            stored = AuthInfo(info.status, info.parent, _valid_iso(info.expiry))
            lifetime = int(self.settings.get("AuthCacheLifeTime", 0) or 0)
            leaves = (iso(datetime.fromtimestamp(self.clock.wall() + lifetime, UTC))
                      if lifetime > 0 else None)
            self.storage.auth_cache_put(token_id, stored.stored(), leaves, limit=AUTH_CACHE_MAX)
        except StorageError as exc:
            log.error("authorization cache not updated: %s", exc)

    def _check_conflict(self, token_id: str, info: AuthInfo) -> None:
        rules = self.rules
        if rules is None or rules.on_conflict is None or not self.list_enabled:
            return
        entry = self.storage.local_list_get(token_id)
        if entry is None:
            return
        listed = AuthInfo.from_stored(entry)
        if self._judged(listed, "local_list").accepted != info.accepted:
            rules.on_conflict(token_id, listed, info)

    def local_list_version(self) -> int:
        """The version the CSMS is told (GetLocalListVersion, and what a differential update
        must exceed): 0 while the list is empty, whatever version the update that emptied it
        carried ("A version number of 0 (zero) SHALL be used to indicate that the local
        authorization list is empty", 1.6 5.10; 2.0.1 D01 alike); else the last update's."""
        if self.storage.local_list_count() == 0:
            return 0
        return self.storage.local_list_version()

    def update_local_list(self, version: int, entries: dict[str, AuthInfo | None], *,
                          full: bool) -> str:
        """SendLocalList, all of it with its version or nothing (1.6 5.15, 2.0.1 D01/D02).

        ``entries`` maps tokens to their verdict, None to remove one (differential only).
        Returns Accepted, VersionMismatch (a differential update not newer than the list),
        OutOfStorage (more than LocalAuthListMaxLength entries) or Failed (the state file).
        """
        stored = {k: v.stored() if v is not None else None for k, v in entries.items()}
        limit = self.settings["LocalAuthListMaxLength"]
        try:
            if full:
                kept = {k: v for k, v in stored.items() if v is not None}
                if len(kept) > limit:
                    return "OutOfStorage"
                self.storage.local_list_replace(version, kept)
                return "Accepted"
            if version <= self.local_list_version():
                return "VersionMismatch"
            added = sum(1 for k, v in stored.items()
                        if v is not None and self.storage.local_list_get(k) is None)
            removed = sum(1 for k, v in stored.items()
                          if v is None and self.storage.local_list_get(k) is not None)
            if self.storage.local_list_count() + added - removed > limit:
                return "OutOfStorage"
            self.storage.local_list_apply(version, stored)
        except StorageError as exc:
            log.error("local authorization list not updated: %s", exc)
            return "Failed"
        return "Accepted"

    def _post_authorize_disabled(self, source: str) -> bool:
        name = ("AuthCacheDisablePostAuthorize" if source == "cache"
                else "LocalAuthListDisablePostAuthorize")
        return bool(self.settings.get(name, False))

    # ------------------------------------------------------------------ the decision

    async def authorize(self, token: Token, evse_id: int | None) -> AuthResult:
        """Authorizer for the core (see the module docstring for the rules).

        The last verdicts are kept per token (:attr:`verdicts`): ``ctl tap`` explains a
        refused card with them.
        """
        result = await self._decide(token, evse_id)
        self.verdicts.pop(token.id, None)
        self.verdicts[token.id] = result
        if len(self.verdicts) > VERDICTS_KEPT:
            del self.verdicts[next(iter(self.verdicts))]
        return result

    async def _decide(self, token: Token, evse_id: int | None) -> AuthResult:
        rules = self.rules
        if rules is not None and rules.not_accepted() and not self.settings.get(
                "TxBeforeAcceptedEnabled", False):
            log.info("token %s refused: the CSMS has not accepted this station yet", token.id)
            return AuthResult("Invalid", source="not_accepted")
        try:
            local = self.lookup(token)
        except StorageError as exc:
            log.error("local authorization sources unreadable: %s", exc)
            local = None
        if local is not None and local.accepted and self.settings["LocalPreAuthorize"]:
            return local  # no round trip: the contactor can close at once
        if rules is not None and rules.online():
            if self.settings.get("DisableRemoteAuthorization", False):
                return local if local is not None else AuthResult("Unknown", source="local")
            if (local is not None and not local.accepted
                    and self._post_authorize_disabled(local.source)):
                return local
            info = await rules.ask(token)
            if info is not None:
                self.remember(token.id, info)
                # The status of an online answer is what it says: its expiry date only bounds
                # how long the cache may keep it.
                return AuthResult(info.status, parent=info.parent, source="online",
                                  expires_at=info.expiry)
        # Offline: the CSMS cannot be reached.
        if local is not None and not local.accepted:
            return AuthResult(local.status, parent=local.parent, source="offline")
        if local is not None and self.settings["LocalAuthorizeOffline"]:
            return local
        # A valid entry that LocalAuthorizeOffline does not let us use counts as unknown.
        if self.settings["AllowOfflineTxForUnknownId"]:
            return AuthResult("Accepted", source="offline_unknown")
        return AuthResult("Unknown" if local is None else "Invalid", source="offline")
