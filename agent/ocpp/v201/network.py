"""2.0.1 blocks A and B, the connection: SetNetworkProfile (B09), the priority of the network
profiles (B10), security profile upgrades (A05) and the basic-auth password (A01).

The profiles themselves live in the link's :class:`~agent.link.network.NetworkPlan`
(``ctx.network``), version-neutrally: this block is the 2.0.1 view of it.

- SetNetworkProfile stores a slot (validated: a slot of NetworkConfigurationPriority's
  valuesList, B09.FR.05; OCPP20 over JSON; never a lower security profile than the station's,
  B09.FR.04 / TC_A_22_CS; the URL scheme the profile needs).  Accepted even for a profile
  whose certificates are missing (TC_A_20/21_CS step 2).
- NetworkConfigurationPriority takes effect after a restart (RebootRequired, then Reset
  OnIdle: TC_A_19_CS, TC_B_45_CS); a list naming a slot whose higher security profile lacks
  its CSMS root or station certificate is Rejected (A05.FR.02/03, TC_A_20/21_CS).  Once a
  higher profile connected, the slots below it leave the list (TC_A_19_CS step 13).
- BasicAuthPassword (write-only) is handed to the plan and applied by reconnecting at once
  (TC_A_09_CS); if the CSMS refuses it the previous one comes back (FailedToAuthenticateAtCsms).
"""

from __future__ import annotations

import json
import logging
from typing import Any

from agent.link.network import ProfileSpec, url_problem
from agent.ocpp.blocks import handles
from agent.ocpp.v201.device_model import NETWORK_SLOTS, VarDef, VariableBlock, ro, rw

log = logging.getLogger("cp_agent.v201")

PASSWORD_VARIABLE = ("SecurityCtrlr", "BasicAuthPassword")


class NetworkProfiles(VariableBlock):
    """The 2.0.1 face of the link's network profiles."""

    @property
    def plan(self) -> Any:
        return self.adapter.ctx.network

    def live_variables(self) -> list[VarDef]:
        return [
            rw("OCPPCommCtrlr", "NetworkConfigurationPriority", "SequenceList", "1",
               values_list=NETWORK_SLOTS, reboot=True, check=self._check_priority),
            rw("OCPPCommCtrlr", "NetworkProfileConnectionAttempts", "integer", "3",
               min_limit=1, max_limit=100),
            ro("OCPPCommCtrlr", "ActiveNetworkProfile", "string", self._active_slot),
        ]

    def _active_slot(self) -> str:
        plan = self.plan
        return (plan.active_slot or "") if plan is not None else ""

    def _check_priority(self, text: str) -> str | None:
        plan = self.plan
        if plan is None:
            return None
        slots = [x.strip() for x in text.split(",") if x.strip()]
        return plan.check_priority(slots)

    # ------------------------------------------------------------------ B09

    @handles("SetNetworkProfile")
    async def set_network_profile(self, p: dict) -> dict:
        slot = str(p["configurationSlot"])
        data = p["connectionData"]
        problem = self._profile_problem(slot, data)
        if problem is not None:
            log.info("SetNetworkProfile slot %s rejected: %s", slot, problem)
            return {"status": "Rejected",
                    "statusInfo": {"reasonCode": "InvalidValue", "additionalInfo": problem[:512]}}
        # The CSMS's connectionData as sent (reports, diagnostics) and the plan's profile.
        self.storage.set_setting(f"v201.network_profile.{slot}", json.dumps(data))
        if self.plan is not None:
            self.plan.set_slot(ProfileSpec(slot, data["ocppCsmsUrl"], data["securityProfile"],
                                           ("2.0.1",)))
        self.station.security_events.record("ReconfigurationOfSecurityParameters",
                                            f"network profile slot {slot} set")
        return {"status": "Accepted"}

    def _profile_problem(self, slot: str, data: dict) -> str | None:
        if slot not in NETWORK_SLOTS:
            return f"configurationSlot {slot} is not one of {','.join(NETWORK_SLOTS)}"
        if data["ocppVersion"] != "OCPP20" or data["ocppTransport"] != "JSON":
            return "this station speaks OCPP 2.0.1 over JSON only"
        level = data["securityProfile"]
        if level not in (0, 1, 2, 3):
            return f"securityProfile {level} does not exist"
        current = self.plan.security_profile if self.plan is not None else \
            self.adapter.ctx.security_profile
        if level < current:
            return f"securityProfile {level} is below this station's {current} (no downgrade)"
        if data.get("vpn") is not None or data.get("apn") is not None:
            return "VPN and APN settings are not managed by this station"
        return url_problem(data["ocppCsmsUrl"], level)

    # ------------------------------------------------------------------ A01

    def variable_changed(self, d: VarDef, value: str) -> None:
        if (d.component, d.name) != PASSWORD_VARIABLE or self.plan is None:
            return
        plan = self.plan
        plan.rotate_password(value)
        # One copy of the secret: the plan's (the device model's is write-only anyway).
        self.storage.delete_setting("v201.dm.SecurityCtrlr/BasicAuthPassword")
        if plan.active is not None and plan.active.security_profile in (1, 2):
            self.adapter.spawn(self._reconnect("new basic-auth password"), "v201-reconnect")

    async def _reconnect(self, reason: str) -> None:
        await self.adapter.after_answer()
        await self.plan.reconnect(reason)
