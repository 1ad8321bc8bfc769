"""2.0.1 block F, remote control: RequestStartTransaction, RequestStopTransaction,
UnlockConnector, TriggerMessage.

Which EVSE a remote start goes to and whether it is authorized first (AuthorizeRemoteStart)
are the core's (:meth:`Station.remote_start_target`, :meth:`Station.remote_start`).  What a
request causes (the session, a triggered message) follows its answer, never precedes it.
"""

from __future__ import annotations

import logging
from typing import Any

from agent.core.model import StopReason, Token
from agent.ocpp.blocks import Block, handles
from agent.ocpp.v201.availability import Availability
from agent.ocpp.v201.metering import Metering
from agent.ocpp.v201.transactions import Transactions

log = logging.getLogger("cp_agent.v201")

TRIGGERABLE = ("BootNotification", "Heartbeat", "StatusNotification", "MeterValues",
               "TransactionEvent", "LogStatusNotification", "FirmwareStatusNotification")

class RemoteControl(Block):
    # ------------------------------------------------------------------ F01/F02 start

    @handles("RequestStartTransaction")
    async def request_start(self, p: dict) -> dict:
        if self.adapter.registration != "Accepted":
            return {"status": "Rejected"}  # B02: no transactions while Pending
        evse_id = p.get("evseId")
        if evse_id is not None and evse_id not in self.station.evses:
            return {"status": "Rejected", "statusInfo": {"reasonCode": "UnknownEvse"}}
        target = self.station.remote_start_target(evse_id)
        if target is None:
            return {"status": "Rejected"}
        token = Token(p["idToken"]["idToken"], p["idToken"]["type"])
        answer: dict[str, Any] = {"status": "Accepted"}
        tx = target.snapshot().tx
        if tx is not None:
            answer["transactionId"] = tx.local_id  # F01: it runs already (TxStartPoint)
        self.adapter.spawn(self._start(token, target.id, p["remoteStartId"]),
                           "v201-remote-start")
        return answer

    async def _start(self, token: Token, evse_id: int, remote_start_id: int) -> None:
        await self.adapter.after_answer()
        self.adapter.block(Transactions).expect_token(evse_id, token)
        await self.station.remote_start(token, evse_id, remote_start_id)

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
        if evse is None or p["connectorId"] != evse.connector_id:
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
        if what not in TRIGGERABLE:
            return {"status": "NotImplemented"}
        evse_id = evse_p["id"] if evse_p else None
        if evse_id is not None and evse_id != 0 and evse_id not in self.station.evses:
            return {"status": "Rejected"}
        if evse_p and evse_p.get("connectorId") not in (None, 1):
            return {"status": "Rejected"}
        targets = [evse_id] if evse_id else list(self.station.evses)
        if what == "BootNotification":
            if self.adapter.registration == "Accepted":
                return {"status": "Rejected"}  # F06.FR.17
            self.adapter.boot_now()
            return {"status": "Accepted"}
        if what == "TransactionEvent" and not any(
                self.station.evses[e].snapshot().tx is not None for e in targets):
            return {"status": "Rejected"}
        self.adapter.spawn(self._triggered(what, targets), f"v201-trigger-{what}")
        return {"status": "Accepted"}

    async def _triggered(self, what: str, targets: list[int]) -> None:
        await self.adapter.after_answer()
        if what == "Heartbeat":
            await self.adapter.send_quiet("Heartbeat", {}, pending_ok=True)
        elif what == "StatusNotification":
            await self.adapter.block(Availability).triggered(targets)
        elif what == "MeterValues":
            await self.adapter.block(Metering).triggered(targets)
        elif what == "TransactionEvent":
            self.adapter.block(Transactions).triggered(targets)
        elif what in ("LogStatusNotification", "FirmwareStatusNotification"):
            await self.adapter.send_quiet(what, {"status": "Idle"}, pending_ok=True)
