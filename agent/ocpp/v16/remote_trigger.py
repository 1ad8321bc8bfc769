"""1.6 RemoteTrigger profile: TriggerMessage (1.6 5.17).

The triggered message follows the TriggerMessage.conf, never before it; a BootNotification
sent on request does not re-register the station (its answer only sets the clock).  This block
sends BootNotification, Heartbeat, MeterValues and StatusNotification itself (the security
extension's ExtendedTriggerMessage reuses :meth:`RemoteTrigger.send`); a message another block
owns (DiagnosticsStatusNotification, FirmwareStatusNotification: its ``TRIGGERS``) is sent by
that block's method after the answer.  With no such block the status messages answer "Idle":
nothing of the kind is going on (the station runs no upload or update).
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from agent.link.rpc import CallFailed
from agent.ocpp.blocks import Block, handles
from agent.ocpp.v16.availability import Availability
from agent.ocpp.v16.metering import meter_value
from agent.ocpp.v16.provisioning import Provisioning

log = logging.getLogger("cp_agent.v16")

PROFILE = "RemoteTrigger"
OWN = ("BootNotification", "Heartbeat", "MeterValues", "StatusNotification")
# Sent as "Idle" when no block owns them (the station has no upload / update running).
IDLE_FALLBACK = ("DiagnosticsStatusNotification", "FirmwareStatusNotification")
TRIGGERABLE = OWN + IDLE_FALLBACK


class RemoteTrigger(Block):
    PROFILE: ClassVar[str] = PROFILE

    def connector_ok(self, connector_id: int | None) -> bool:
        return connector_id in (None, 0) or connector_id in self.station.evses

    @handles("TriggerMessage")
    async def trigger_message(self, p: dict) -> dict:
        what = p["requestedMessage"]
        connector_id = p.get("connectorId")
        if what not in TRIGGERABLE:
            return {"status": "NotImplemented"}
        if not self.connector_ok(connector_id):
            return {"status": "Rejected"}
        target = None if what in OWN else self.adapter.trigger_target(what)
        if target is not None:
            self.adapter.spawn(self._then(target, connector_id or None), f"v16-trigger-{what}")
        else:
            self.adapter.spawn(self._triggered(what, connector_id), f"v16-trigger-{what}")
        return {"status": "Accepted"}

    async def _then(self, target: Any, connector_id: int | None) -> None:
        await self.adapter.after_answer()
        await target(connector_id)

    async def _triggered(self, what: str, connector_id: int | None) -> None:
        await self.adapter.after_answer()
        if what in IDLE_FALLBACK:
            await self.adapter.send_quiet(what, {"status": "Idle"})
        else:
            await self.send(what, connector_id)

    async def send(self, what: str, connector_id: int | None) -> None:
        """Send one of :data:`OWN` as triggered (for ``connector_id``, or all when None/0)."""
        targets = ([self.station.evses[connector_id]] if connector_id
                   else list(self.station.evses.values()))
        if what == "BootNotification":
            payload = self.adapter.block(Provisioning).boot_payload(None)
            try:
                res = await self.adapter.call("BootNotification", payload)
                self.adapter.sync_clock(res.get("currentTime"))
            except CallFailed as exc:
                log.info("triggered BootNotification: %s", exc)
        elif what == "Heartbeat":
            await self.adapter.send_quiet("Heartbeat", {})
        elif what == "StatusNotification":
            availability = self.adapter.block(Availability)
            if connector_id in (None, 0):
                availability.queue_station_status()
            for evse in targets:
                availability.queue_status(evse.snapshot())
        elif what == "MeterValues":
            for evse in targets:
                if not self.clock.trustworthy:
                    continue
                value = self.station.metering.measure(
                    evse, self.settings["MeterValuesSampledData"], "Trigger")
                if value is None:
                    continue
                mv: dict[str, Any] = {"connectorId": evse.id, "meterValue": [meter_value(value)]}
                tx = evse.tx
                if tx is not None and tx.remote_id is not None:
                    mv["transactionId"] = int(tx.remote_id)
                await self.adapter.send_quiet("MeterValues", mv)
        else:
            raise ValueError(f"RemoteTrigger does not send {what}")
