"""1.6 Core profile, provisioning: BootNotification, configuration keys, Reset.

The registration loop itself (retry at the interval, no new boot after a mere reconnect) is the
shared adapter's; this block says what 1.6 sends and how 1.6 reacts to the answer (4.2.1: a
Rejected station does not answer the CSMS's calls).
"""

from __future__ import annotations

from typing import Any, ClassVar

from agent.core.model import StopReason
from agent.core.settings import SettingDef, defs_once
from agent.ocpp.blocks import Block, handles
from agent.ocpp.v16.keys import ConfigurationView

PROFILE = "Core"


class Provisioning(Block):
    PROFILE: ClassVar[str] = PROFILE

    def __init__(self, adapter: Any) -> None:
        super().__init__(adapter)
        self.keys = ConfigurationView(self.settings)

    def settings_defs(self) -> tuple[SettingDef, ...]:
        n = len(self.station.evses)
        profiles: list[str] = []
        for block in self.adapter.spec.blocks:
            profile = getattr(block, "PROFILE", None)
            if profile and profile not in profiles:
                profiles.append(profile)
        return defs_once((type(self), n, *profiles),
                         lambda: self._settings_defs(n, profiles))

    @staticmethod
    def _settings_defs(n: int, profiles: list[str]) -> tuple[SettingDef, ...]:
        return (
            SettingDef("BlinkRepeat", "int", 3, min=0, max=100),
            SettingDef("ConnectorPhaseRotation", "csl", ["0.RST"], max_items=n + 1),
            SettingDef("ConnectorPhaseRotationMaxLength", "int", n + 1, readonly=True),
            SettingDef("GetConfigurationMaxKeys", "int", 64, readonly=True),
            SettingDef("LightIntensity", "int", 100, min=0, max=100),
            SettingDef("MeterValuesAlignedDataMaxLength", "int", 9, readonly=True),
            SettingDef("MeterValuesSampledDataMaxLength", "int", 9, readonly=True),
            SettingDef("NumberOfConnectors", "int", n, readonly=True),
            SettingDef("StopTxnAlignedDataMaxLength", "int", 9, readonly=True),
            SettingDef("StopTxnSampledDataMaxLength", "int", 9, readonly=True),
            SettingDef("SupportedFeatureProfiles", "csl", profiles, readonly=True),
            SettingDef("SupportedFeatureProfilesMaxLength", "int", 6, readonly=True),
        )

    # ------------------------------------------------------------------ BootNotification

    def boot_elements(self) -> dict[str, Any]:
        ctx = self.adapter.ctx
        payload: dict[str, Any] = {"chargePointVendor": ctx.vendor[:20],
                                   "chargePointModel": ctx.model[:20],
                                   "firmwareVersion": ctx.firmware_version[:50]}
        if ctx.serial_number:
            payload["chargePointSerialNumber"] = ctx.serial_number[:25]
        return payload

    def boot_payload(self, reason: str | None) -> dict[str, Any]:
        return self.boot_elements()  # 1.6 has no boot reason

    def boot_reason(self) -> str | None:
        return None

    def registration_answered(self, status: str) -> None:
        rpc = self.adapter.rpc
        if rpc is not None:
            rpc.ignore_calls = status == "Rejected"  # 4.2.1

    def boot_accepted(self) -> None:
        pass

    # ------------------------------------------------------------------ configuration

    @handles("GetConfiguration")
    async def get_configuration(self, p: dict) -> dict:
        return self.keys.get_configuration(p.get("key"))

    @handles("ChangeConfiguration")
    async def change_configuration(self, p: dict) -> dict:
        # Keys whose change does more than store a value (SecurityProfile, AuthorizationKey)
        # belong to the block that owns them: ``change_key`` answers, or None passes.
        for block in self.adapter.blocks:
            hook = getattr(block, "change_key", None)
            if hook is not None:
                status = hook(p["key"], p["value"])
                if status is not None:
                    return {"status": status}
        return {"status": self.keys.change(p["key"], p["value"])}

    # ------------------------------------------------------------------ Reset

    @handles("Reset")
    async def reset(self, p: dict) -> dict:
        if self.adapter.ctx.request_reset is None:
            return {"status": "Rejected"}
        self.adapter.spawn(self._reset(p["type"]), "v16-reset")
        return {"status": "Accepted"}

    async def _reset(self, kind: str) -> None:
        await self.adapter.after_answer()
        reason = StopReason.HARD_RESET if kind == "Hard" else StopReason.SOFT_RESET
        await self.station.end_all(reason)
        request_reset = self.adapter.ctx.request_reset
        assert request_reset is not None
        await request_reset(kind)
