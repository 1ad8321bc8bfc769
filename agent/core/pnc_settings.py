"""The Plug & Charge settings, without the Plug & Charge logic (agent/core/plug_and_charge.py).

Every version declares them (1.6 configuration keys of the OCA application note, 2.x
ISO15118Ctrlr variables) whether or not the station speaks ISO 15118; the logic that reads
them is loaded only by a station that does (docs/performance.md, issue 18).
"""

from __future__ import annotations

from typing import Any

from agent.core.settings import SettingDef, not_v16

# Neutral settings: 1.6 configuration keys of the application note, 2.x ISO15118Ctrlr variables.
PNC_SETTINGS: tuple[SettingDef, ...] = (
    SettingDef("ISO15118PnCEnabled", "bool", True),
    SettingDef("CentralContractValidationAllowed", "bool", True),
    SettingDef("ContractValidationOffline", "bool", True),
    SettingDef("ContractCertificateInstallationEnabled", "bool", True, v16=False),
    SettingDef("V2GCertificateInstallationEnabled", "bool", True, v16=False),
)


def pnc_settings(station: Any) -> tuple[SettingDef, ...]:
    """:data:`PNC_SETTINGS` as this station declares them: 1.6 configuration keys only when it
    speaks ISO 15118 (a CSMS reads ISO15118PnCEnabled to learn whether the station does
    Plug & Charge at all, per the application note)."""
    if getattr(station, "iso15118", None) is not None:
        return PNC_SETTINGS
    return not_v16(PNC_SETTINGS)


__all__ = ["PNC_SETTINGS", "pnc_settings"]
