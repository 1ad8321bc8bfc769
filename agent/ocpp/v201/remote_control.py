"""2.0.1 block F, remote control: RequestStartTransaction (with K05's TxProfile, checked
and named by the smart-charging block), RequestStopTransaction, UnlockConnector,
TriggerMessage.

Which EVSE a remote start goes to and whether it is authorized first (AuthorizeRemoteStart)
are the core's (:meth:`Station.remote_start_target`, :meth:`Station.remote_start`).  What a
request causes (the session, a triggered message) follows its answer, never precedes it.
"""

from __future__ import annotations

import logging
from typing import Any

from agent.core.model import StopReason, Token
from agent.core.smart_charging import ChargingProfile
from agent.ocpp.blocks import Block, handles
from agent.ocpp.v201.availability import Availability
from agent.ocpp.v201.metering import Metering
from agent.ocpp.v201.smart_charging import SmartCharging
from agent.ocpp.v201.transactions import Transactions

log = logging.getLogger("cp_agent.v201")

# F06: what this block sends itself when triggered; the rest is sent by the block claiming it
# (its TRIGGERS: SignChargingStationCertificate, PublishFirmwareStatusNotification, ...), and
# the two status messages without such a block say "Idle" (no upload / update running).
OWN = ("BootNotification", "Heartbeat", "StatusNotification", "MeterValues",
       "TransactionEvent")
IDLE_FALLBACK = ("LogStatusNotification", "FirmwareStatusNotification")
TRIGGERABLE = OWN + IDLE_FALLBACK

class RemoteControl(Block):
    # ------------------------------------------------------------------ F01/F02 start

    @handles("RequestStartTransaction")
    async def request_start(self, p: dict) -> dict:
        if self.adapter.registration != "Accepted":
            return {"status": "Rejected"}  # B02: no transactions while Pending
        evse_id = p.get("evseId")
        if evse_id is not None and evse_id not in self.station.evses:
            return {"status": "Rejected", "statusInfo": {"reasonCode": "UnknownEvse"}}
        token = Token(p["idToken"]["idToken"], p["idToken"]["type"])
        target = self.station.remote_start_target(evse_id, token)
        if target is None:
            return {"status": "Rejected"}
        profile: ChargingProfile | None = None
        if p.get("chargingProfile") is not None:  # K05 / F01.FR.08: this start's TxProfile
            checked = self.adapter.block(SmartCharging).remote_start_profile(
                p["chargingProfile"], target.id)
            if isinstance(checked, dict):
                return checked  # Rejected, with the reason
            profile = checked
        answer: dict[str, Any] = {"status": "Accepted"}
        tx = target.snapshot().tx
        if tx is not None:
            answer["transactionId"] = tx.local_id  # F01: it runs already (TxStartPoint)
        self.adapter.spawn(self._start(token, target.id, p["remoteStartId"], profile,
                                       p["idToken"].get("additionalInfo")),
                           "v201-remote-start")
        return answer

    async def _start(self, token: Token, evse_id: int, remote_start_id: int,
                     profile: ChargingProfile | None = None,
                     additional: list[dict] | None = None) -> None:
        await self.adapter.after_answer()
        if profile is not None:  # before the session: its transaction starts with the limit
            self.adapter.block(SmartCharging).service.install(profile, replace_level=False)
        self.adapter.block(Transactions).expect_token(evse_id, token, additional)
        started = await self.station.remote_start(token, evse_id, remote_start_id)
        if started is None and profile is not None:
            self.adapter.block(SmartCharging).forget_remote_start(profile.id)

    # ------------------------------------------------------------------ F03 stop

    @handles("RequestStopTransaction")
    async def request_stop(self, p: dict) -> dict:
        evse = self.station.find_tx(local_id=p["transactionId"])
        if evse is None:
            return {"status": "Rejected"}
        self.adapter.spawn(self._stop(evse.id), "v201-remote-stop")
        return {"status": "Accepted"}

    async def _stop(self, evse_id: int) -> None:
        await self.adapter.after_answer()
        evse = self.station.evses[evse_id]
        if not await evse.deauthorize(StopReason.REMOTE):
            await evse.end_transaction(StopReason.REMOTE)

    # ------------------------------------------------------------------ F05 unlock

    @handles("UnlockConnector")
    async def unlock_connector(self, p: dict) -> dict:
        evse = self.station.evses.get(p["evseId"])
        if evse is None or p["connectorId"] not in evse.connector_ids:
            return {"status": "UnknownConnector"}
        snap = evse.snapshot()
        if snap.tx is not None and snap.authorized:
            return {"status": "OngoingAuthorizedTransaction"}  # F05.FR.02
        if not snap.has_lock:
            return {"status": "UnlockFailed"}
        status = await evse.unlock()
        return {"status": "Unlocked" if status == "Unlocked" else "UnlockFailed"}

    # ------------------------------------------------------------------ F06 trigger

    @handles("TriggerMessage")
    async def trigger_message(self, p: dict) -> dict:
        what = p["requestedMessage"]
        evse_p = p.get("evse")
        target = None if what in OWN else self.adapter.trigger_target(what)
        if target is None and what not in TRIGGERABLE:
            return {"status": "NotImplemented"}
        evse_id = evse_p["id"] if evse_p else None
        if evse_id is not None and evse_id != 0 and evse_id not in self.station.evses:
            return {"status": "Rejected"}
        connector_id = evse_p.get("connectorId") if evse_p else None
        known = self.station.evses[evse_id].connector_ids if evse_id else (1,)
        if connector_id is not None and connector_id not in known:
            return {"status": "Rejected"}
        if target is not None:
            self.adapter.spawn(self._then(target, evse_id or None), f"v201-trigger-{what}")
            return {"status": "Accepted"}
        targets = [evse_id] if evse_id else list(self.station.evses)
        if what == "BootNotification":
            if self.adapter.registration == "Accepted":
                return {"status": "Rejected"}  # F06.FR.17
            self.adapter.boot_now()
            return {"status": "Accepted"}
        if what == "TransactionEvent" and not any(
                self.station.evses[e].snapshot().tx is not None for e in targets):
            return {"status": "Rejected"}
        self.adapter.spawn(self._triggered(what, targets, connector_id),
                           f"v201-trigger-{what}")
        return {"status": "Accepted"}

    async def _then(self, target: Any, evse_id: int | None) -> None:
        await self.adapter.after_answer()
        await target(evse_id)

    async def _triggered(self, what: str, targets: list[int],
                         connector_id: int | None = None) -> None:
        await self.adapter.after_answer()
        if what == "Heartbeat":
            await self.adapter.send_quiet("Heartbeat", {}, pending_ok=True)
        elif what == "StatusNotification":
            await self.adapter.block(Availability).triggered(targets, connector_id)
        elif what == "MeterValues":
            await self.adapter.block(Metering).triggered(targets)
        elif what == "TransactionEvent":
            self.adapter.block(Transactions).triggered(targets)
        elif what in ("LogStatusNotification", "FirmwareStatusNotification"):
            await self.adapter.send_quiet(what, {"status": "Idle"}, pending_ok=True)
