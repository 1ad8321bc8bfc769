"""1.6 Plug & Charge's place among the 1.6 blocks, at no cost on a station without ISO 15118.

The application note's DataTransfer messages (agent/ocpp/v16/iso15118_pnc.py) mean something
only to a station that speaks ISO 15118 (``hal.iso15118`` enabled: ``station.iso15118``).
Without it the block's whole behaviour is to declare the note's settings, hidden from the 1.6
configuration keys, and to leave the vendorId unknown (a DataTransfer for it is answered
UnknownVendorId by the DataTransfer block); that is this class.  With ISO 15118, making one
makes the full block instead (a subclass, so ``adapter.block(PlugAndCharge16)`` finds it), and
only then are iso15118_pnc and agent.core.plug_and_charge imported.
"""

from __future__ import annotations

from typing import Any, ClassVar

from agent.core.pnc_settings import PNC_SETTINGS
from agent.core.settings import SettingDef, defs_once, not_v16
from agent.ocpp.blocks import Block

# The V2G CSR's resend schedule (the note takes 2.0.1 A02.FR.17/18's keys).
SIGNING_SETTINGS = (
    SettingDef("CertSigningWaitMinimum", "int", 300, min=0, max=86400),
    SettingDef("CertSigningRepeatTimes", "int", 1, min=0, max=10),
)


class PlugAndCharge16(Block):
    DATA_TRANSFER_VENDOR: ClassVar[str | None] = None  # no ISO 15118: no vendorId claimed

    def __new__(cls, adapter: Any) -> PlugAndCharge16:
        if cls is PlugAndCharge16 and getattr(adapter.station, "iso15118", None) is not None:
            from agent.ocpp.v16.iso15118_pnc import PlugAndCharge16Iso

            return PlugAndCharge16Iso.__new__(PlugAndCharge16Iso, adapter)
        return super().__new__(cls)

    def settings_defs(self) -> tuple[SettingDef, ...]:
        return defs_once(PlugAndCharge16, lambda: (*not_v16(PNC_SETTINGS),
                                                   *not_v16(SIGNING_SETTINGS)))

    def activate(self) -> None:
        """This version took charge: without ISO 15118 there is nothing to answer."""


__all__ = ["SIGNING_SETTINGS", "PlugAndCharge16"]
