"""2.0.1 block P: DataTransfer (no vendor extensions yet: every message id is unknown)."""

from __future__ import annotations

from agent.ocpp.blocks import Block, handles


class DataTransfer(Block):
    @handles("DataTransfer")
    async def data_transfer(self, p: dict) -> dict:
        if p["vendorId"] != self.adapter.ctx.vendor:
            return {"status": "UnknownVendorId"}
        return {"status": "UnknownMessageId"}
