"""1.6 Core profile: DataTransfer.  A vendorId a block claims (``DATA_TRANSFER_VENDOR``, e.g.
the ISO 15118 Plug & Charge application note's, agent/ocpp/v16/iso15118_pnc.py) goes to that
block's ``vendor_data_transfer``; any other message id of our own vendor is unknown."""

from __future__ import annotations

from typing import ClassVar

from agent.ocpp.blocks import Block, handles


class DataTransfer(Block):
    PROFILE: ClassVar[str] = "Core"

    @handles("DataTransfer")
    async def data_transfer(self, p: dict) -> dict:
        for block in self.adapter.blocks:
            claimed = getattr(block, "DATA_TRANSFER_VENDOR", None)
            if claimed is not None and claimed == p["vendorId"]:
                return await block.vendor_data_transfer(p)
        if p["vendorId"] != self.adapter.ctx.vendor:
            return {"status": "UnknownVendorId"}
        return {"status": "UnknownMessageId"}
