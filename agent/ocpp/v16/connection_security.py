"""1.6 security whitepaper, the connection: the SecurityProfile and AuthorizationKey keys.

The profiles themselves live in the link's :class:`~agent.link.network.NetworkPlan`
(``ctx.network``); this block is their 1.6 view.

- **AuthorizationKey** (A01, whitepaper 7.2): write-only, 16-40 characters.  GetConfiguration
  lists it without a value; the value is never logged.  Accepted, it is tried at once (the
  station reconnects, A01 scenario step 3-4); refused by the Central System (HTTP 401) the
  previous key comes back, with a FailedToAuthenticateAtCentralSystem security event.
- **SecurityProfile** (A05, whitepaper 7.6): only upward.  Rejected when it is not higher
  (A05.FR.01) or a prerequisite is missing (A05.FR.02-04: an AuthorizationKey for 1-2, an
  installed CentralSystemRootCertificate for 2-3, a station certificate for 3).  Accepted, the
  station reconnects with it (A05.FR.06/07: the URL keeps host, port and path, the scheme
  becomes wss:// for 2 and 3); if that connection fails NetworkProfileConnectionAttempts
  times (3) it falls back to the previous profile (A05.FR.08) and the key reads as before.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from agent.core.settings import SettingDef, defs_once
from agent.ocpp.blocks import Block
from agent.redaction import SECRETS

log = logging.getLogger("cp_agent.v16")

AUTHORIZATION_KEY = "AuthorizationKey"
SECURITY_PROFILE = "SecurityProfile"
# Whitepaper A00.FR.205: at least 16 bytes, at most 20 bytes as 40 hexadecimal digits; any
# printable ASCII without spaces is accepted (Central Systems send text keys as well).
_KEY_RE = re.compile(r"[\x21-\x7e]{16,40}")


class ConnectionSecurity(Block):
    """SecurityProfile and AuthorizationKey on top of the link's network profiles."""

    @property
    def plan(self) -> Any:
        return self.adapter.ctx.network

    def settings_defs(self) -> tuple[SettingDef, ...]:
        # SecurityProfile reads as the plan's (its default); stored only when it rises.
        level = self.plan.security_profile if self.plan is not None else 0
        return defs_once((type(self), level), lambda: (
            SettingDef(AUTHORIZATION_KEY, "str", "", secret=True),
            SettingDef(SECURITY_PROFILE, "int", level, min=0, max=3)))

    def start(self) -> None:
        if self.plan is not None:
            self.plan.listeners.append(self._show_level)

    def _show_level(self) -> None:
        level = self.plan.security_profile
        if self.settings[SECURITY_PROFILE] != level:
            self.settings.set_internal(SECURITY_PROFILE, level)

    def change_key(self, key: str, value: str) -> str | None:
        """ChangeConfiguration of a key this block owns: its status; None for other keys."""
        name = key.lower()
        if name == AUTHORIZATION_KEY.lower():
            return self._change_password(value)
        if name == SECURITY_PROFILE.lower():
            return self._change_level(value)
        return None

    def _change_password(self, value: str) -> str:
        SECRETS.add(value, station_id=self.adapter.ctx.station_id)  # never in a log
        if not _KEY_RE.fullmatch(value):
            log.info("AuthorizationKey rejected: not 16-40 printable characters")
            return "Rejected"
        plan = self.plan
        if plan is None:
            return "Rejected"
        plan.rotate_password(value)
        log.info("AuthorizationKey changed (A01)")  # never the value (A01.FR.12)
        self.station.security_events.record("ReconfigurationOfSecurityParameters",
                                            "AuthorizationKey changed")
        active = plan.active
        if active is not None and active.security_profile in (1, 2):
            self.adapter.spawn(self._reconnect("new AuthorizationKey"), "v16-reconnect")
        return "Accepted"

    def _change_level(self, value: str) -> str:
        plan = self.plan
        try:
            level = int(value.strip())
        except ValueError:
            return "Rejected"
        if plan is None:
            return "Rejected"
        current = plan.security_profile
        if level <= current:  # A05.FR.01: never lower, nor the same again
            log.info("SecurityProfile %d rejected: not above the current %d", level, current)
            return "Rejected"
        problem = plan.prerequisites(level)
        if problem is not None:  # A05.FR.02-04
            log.warning("SecurityProfile %d rejected: %s", level, problem)
            return "Rejected"
        plan.upgrade(level)  # the key (and its security event) changes once it connected
        self.adapter.spawn(self._reconnect(f"security profile {level}"), "v16-reconnect")
        return "Accepted"

    async def _reconnect(self, reason: str) -> None:
        await self.adapter.after_answer()
        await self.plan.reconnect(reason)
