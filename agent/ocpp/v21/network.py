"""2.1 SetNetworkProfile (B09): the 2.0.1 block with 2.1's NetworkConnectionProfileType.

2.1 made ``ocppVersion`` optional and ignored (the handshake decides: a profile offers the
versions this station offers), added ``ocppInterface`` Any, and per-profile ``identity`` /
``basicAuthPassword``, which are refused (the link has one identity and one password).
Everything else (slots, no security downgrade, the URL, storage, the security event) is the
2.0.1 block's.
"""

from __future__ import annotations

import json
import logging

from agent.link.network import ProfileSpec
from agent.ocpp.blocks import handles
from agent.ocpp.v201.network import NetworkProfiles

log = logging.getLogger("cp_agent.v21")


class NetworkProfiles21(NetworkProfiles):
    def _versions_21(self, data: dict) -> tuple[tuple[str, ...], str | None]:
        """(the profile's versions, why it is refused or None).

        2.1: ``ocppVersion`` "is ignored, since the OCPP version to use is determined during
        the websocket handshake": a profile offers what this station offers.
        """
        plan = self.plan
        versions = tuple(plan.cfg.versions) if plan is not None else (self.adapter.version,)
        if data.get("identity") not in (None, self.adapter.ctx.station_id):
            return (), "a per-profile identity is not supported (the station has one identity)"
        if data.get("basicAuthPassword") is not None:
            return (), "a per-profile basicAuthPassword is not supported; set " \
                       "SecurityCtrlr.BasicAuthPassword"
        return versions, None

    @handles("SetNetworkProfile")
    async def set_network_profile(self, p: dict) -> dict:
        slot = str(p["configurationSlot"])
        data = p["connectionData"]
        versions, problem = self._versions_21(data)
        if problem is None:
            # The 2.0.1 checks (slot, transport, security profile, VPN/APN, URL).
            problem = self._profile_problem(slot, {**data, "ocppVersion": "OCPP20"})
        if problem is not None:
            log.info("SetNetworkProfile slot %s rejected: %s", slot, problem)
            return {"status": "Rejected",
                    "statusInfo": {"reasonCode": "InvalidValue",
                                   "additionalInfo": problem[:1024]}}
        self.storage.set_setting(f"v201.network_profile.{slot}", json.dumps(data))
        if self.plan is not None:
            self.plan.set_slot(ProfileSpec(slot, data["ocppCsmsUrl"], data["securityProfile"],
                                           versions))
        self.station.security_events.record("ReconfigurationOfSecurityParameters",
                                            f"network profile slot {slot} set")
        return {"status": "Accepted"}
