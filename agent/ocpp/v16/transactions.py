"""1.6 transactions: StartTransaction, MeterValues and StopTransaction through the outbox, and
RemoteStartTransaction / RemoteStopTransaction.

Transaction messages never go straight to the wire: they are committed to the durable outbox
together with the journal change that caused them (the core calls ``transaction_started`` /
``transaction_ended`` inside that storage transaction) and sent from there, so nothing is lost
across outages and power cuts.  What is only known at send time is filled in then: the
transactionId (from the journal, once the Start was confirmed) and the real time of events
recorded while the clock could not be trusted.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from agent.core.model import EvseSnapshot, StopReason, Token, TxPoint, TxRecord
from agent.ocpp.blocks import Block, handles
from agent.ocpp.v16.authorization import ID_TAG_MAX, Authorization, auth_info
from agent.ocpp.v16.metering import fmt, meter_value
from agent.storage import OutboxItem

log = logging.getLogger("cp_agent.v16")

TX_ACTIONS = frozenset({"StartTransaction", "StopTransaction", "MeterValues"})
REASONS = frozenset({"EmergencyStop", "EVDisconnected", "HardReset", "Local", "Other",
                     "PowerLoss", "Reboot", "Remote", "SoftReset", "UnlockCommand",
                     "DeAuthorized"})


# Transactions whose CSMS id ``prepare_outbox`` keeps at hand; more at once only happen after
# messages went missing (a full cache is simply emptied, and read again from the journal).
REMOTE_IDS_KEPT = 64


class Transactions(Block):
    PROFILE: ClassVar[str] = "Core"
    OUTBOX_ACTIONS = TX_ACTIONS

    def __init__(self, adapter: Any) -> None:
        super().__init__(adapter)
        # tx_ref -> the CSMS transactionId, as the journal gave it to ``prepare_outbox``: a
        # replay sends ~100 messages per transaction, and reading the journal row for each
        # was ~10 % of the agent's work per message (docs/performance.md).  Only a confirmed
        # id is kept (it never changes afterwards); an answer to or a drop of the
        # transaction's StartTransaction forgets it, so that an id read inside an ack's
        # commit that was then rolled back cannot outlive the Start it came from.
        self._remote_ids: dict[str, int] = {}

    # ------------------------------------------------------------------ core events

    def _stop_sample(self, tx: TxRecord, snap: EvseSnapshot, context: str) -> None:
        evse = self.station.evses[tx.evse_id]
        self.station.metering.collect(tx, self.station.metering.measure(
            evse, self.settings["StopTxnSampledData"], context))

    def transaction_started(self, tx: TxRecord, snap: EvseSnapshot, trigger: TxPoint) -> None:
        payload: dict[str, Any] = {
            "connectorId": tx.evse_id, "idTag": tx.id_token[:ID_TAG_MAX],
            "meterStart": int(round(tx.meter_start_wh)), "timestamp": tx.started_at}
        if tx.reservation_id is not None:
            payload["reservationId"] = tx.reservation_id
        self.adapter.enqueue("StartTransaction", payload, tx_ref=tx.local_id)
        self._stop_sample(tx, snap, "Transaction.Begin")

    def transaction_ended(self, tx: TxRecord, reason: StopReason, snap: EvseSnapshot) -> None:
        meter_stop = tx.meter_stop_wh if tx.meter_stop_wh is not None else tx.last_meter_wh
        payload: dict[str, Any] = {
            "meterStop": int(round(meter_stop)),
            "timestamp": tx.stopped_at or self.clock.stamp(),
            "transactionId": 0,  # filled in from the journal when the Start is confirmed
            "reason": reason.value if reason.value in REASONS else "Other",
        }
        stopped_by = tx.stopped_by or tx.id_token
        if reason == StopReason.LOCAL and stopped_by:
            payload["idTag"] = stopped_by[:ID_TAG_MAX]
        self._stop_sample(tx, snap, "Transaction.End")
        data = [meter_value(v) for v in self.station.metering.collected(tx)]
        if data:
            payload["transactionData"] = data
        self.adapter.enqueue("StopTransaction", payload, tx_ref=tx.local_id)

    def transaction_recovered(self, tx: TxRecord) -> None:
        """1.6 cannot resume a transaction across a restart: it ends with PowerLoss."""
        meter = tx.meter_stop_wh if tx.meter_stop_wh is not None else tx.last_meter_wh
        payload = {"meterStop": int(round(meter)),
                   "timestamp": tx.stopped_at, "transactionId": 0, "reason": "PowerLoss"}
        self.adapter.enqueue("StopTransaction", payload, tx_ref=tx.local_id)

    # ------------------------------------------------------------------ outbox hooks

    def prepare_outbox(self, item: OutboxItem, payload: dict) -> dict | None:
        """Fill in the CSMS transaction id; None drops a message that can no longer be sent."""
        if item.tx_ref is None or item.action == "StartTransaction":
            return payload
        known = self._remote_ids.get(item.tx_ref)
        if known is not None:
            payload["transactionId"] = known
            return payload
        tx = self.storage.tx_get(item.tx_ref)
        if tx is not None and tx.remote_id is None and tx.start_requeued:
            log.error("%s for transaction %s dropped: the CSMS refused its StartTransaction "
                      "for good (the transaction is undeliverable; its messages are kept in "
                      "the dropped table)", item.action, item.tx_ref)
            return None
        if tx is None or tx.remote_id is None:
            log.error("%s for transaction %s has no transactionId (its Start was never "
                      "confirmed); dropping it", item.action, item.tx_ref)
            return None
        try:
            remote_id = int(tx.remote_id)
        except ValueError:
            log.error("transaction %s has an unusable CSMS id %r; dropping its %s",
                      item.tx_ref, tx.remote_id, item.action)
            return None
        if len(self._remote_ids) >= REMOTE_IDS_KEPT:
            self._remote_ids.clear()
        self._remote_ids[item.tx_ref] = remote_id
        payload["transactionId"] = remote_id
        return payload

    def outbox_result(self, item: OutboxItem, result: dict) -> None:
        """Runs inside the SQLite transaction that acks the item (see OutboxSender)."""
        info = result.get("idTagInfo")
        id_tag = item.payload.get("idTag")
        if isinstance(info, dict) and isinstance(id_tag, str):
            self.adapter.block(Authorization).remember(id_tag, info)
        if item.action != "StartTransaction" or item.tx_ref is None:
            return
        self._remote_ids.pop(item.tx_ref, None)
        tx_id = str(result.get("transactionId"))
        self.storage.tx_set_remote_id(item.tx_ref, tx_id)
        log.info("transaction %s is CSMS transaction %s", item.tx_ref, tx_id)
        parent = info.get("parentIdTag") if isinstance(info, dict) else None
        if parent:
            self.storage.tx_update(item.tx_ref, parent=parent)
        evse = self.station.find_tx(local_id=item.tx_ref)
        if evse is not None and evse.tx is not None:
            evse.tx.remote_id = tx_id
            if parent:
                evse.tx.parent = parent
        if isinstance(info, dict) and not auth_info(info).accepted and evse is not None:
            # The CSMS answered late (the start was queued offline, or authorized locally with
            # outdated data): 1.6 3.5.4 says stop, or only stop the energy.
            log.warning("StartTransaction %s: idTag %s", tx_id, info.get("status"))
            self.station.invalid_id_late(item.tx_ref)

    def outbox_dropped(self, item: OutboxItem) -> None:
        """A message given up after TransactionMessageAttempts (runs in the drop's commit).

        1.6 3.7.1 says to discard it and go on with the next transaction-related message. For
        a StartTransaction that would lose the session: every later message of it lacks a
        transactionId. So a Start dropped for the first time is queued afresh, once, at the
        back of the queue (a transient CSMS fault should not cost the session), and the
        messages of the transaction still queued (its MeterValues, its Stop if it ended) move
        behind it, in their order. Dropped a second time, the transaction is undeliverable:
        an error names it, and its later messages are dropped (``prepare_outbox``); all of
        them stay in the dropped table. See docs/durability.md.
        """
        if item.action != "StartTransaction" or item.tx_ref is None:
            return
        self._remote_ids.pop(item.tx_ref, None)
        tx = self.storage.tx_get(item.tx_ref)
        if tx is None or tx.remote_id is not None:
            return
        if tx.start_requeued:
            log.error("transaction %s (connector %s, idTag %s, started %s, meterStart %.0f Wh) "
                      "is undeliverable: the CSMS refused its StartTransaction for good twice; "
                      "it is kept in the dropped table", tx.local_id, tx.connector_id,
                      tx.id_token, tx.started_at, tx.meter_start_wh)
            return
        later = [i for i in self.storage.outbox_peek(self.storage.outbox_count())
                 if i.tx_ref == item.tx_ref]
        self.storage.tx_update(tx.local_id, start_requeued=True)
        self.adapter.enqueue("StartTransaction", item.payload, tx_ref=item.tx_ref)
        for queued in later:  # removed and queued again, behind the new Start
            self.storage.outbox_ack(queued.id)
            self.adapter.enqueue(queued.action, queued.payload, tx_ref=queued.tx_ref)
        evse = self.station.find_tx(local_id=item.tx_ref)
        if evse is not None and evse.tx is not None:
            evse.tx.start_requeued = True
        log.warning("StartTransaction of transaction %s refused for good: queued once more at "
                    "the back of the queue, with its %d later message(s) behind it",
                    tx.local_id, len(later))

    def outbox_done(self, item: OutboxItem) -> None:
        if item.action == "StopTransaction" and item.tx_ref is not None:
            self._remote_ids.pop(item.tx_ref, None)
            if self.storage.tx_outbox_pending(item.tx_ref) == 0:
                self.storage.tx_forget(item.tx_ref)

    # ------------------------------------------------------------------ remote control

    @handles("RemoteStartTransaction")
    async def remote_start(self, p: dict) -> dict:
        if self.adapter.registration != "Accepted":
            return {"status": "Rejected"}  # 4.2: nothing of the kind before the boot
        connector_id = p.get("connectorId")
        if connector_id is not None and connector_id not in self.station.evses:
            return {"status": "Rejected"}
        target = self.station.remote_start_target(connector_id, Token(p["idTag"]))
        if target is None:
            return {"status": "Rejected"}
        if p.get("chargingProfile") is not None:  # SmartCharging: a TxProfile for this start
            from agent.ocpp.v16.smart_charging import SmartCharging

            try:
                block = self.adapter.block(SmartCharging)
            except LookupError:
                return {"status": "Rejected"}
            profile = block.remote_start_profile(p["chargingProfile"], target.id)
            if profile is None:
                return {"status": "Rejected"}
            block.service.install(profile)
        self.adapter.spawn(self._remote_start(Token(p["idTag"]), target.id), "v16-remote-start")
        return {"status": "Accepted"}

    async def _remote_start(self, token: Token, evse_id: int) -> None:
        await self.adapter.after_answer()
        await self.station.remote_start(token, evse_id)

    @handles("RemoteStopTransaction")
    async def remote_stop(self, p: dict) -> dict:
        if self.adapter.registration != "Accepted":
            return {"status": "Rejected"}
        evse = self.station.find_tx(remote_id=str(p["transactionId"]))
        if evse is None:
            return {"status": "Rejected"}
        self.adapter.spawn(evse.deauthorize(StopReason.REMOTE), "v16-remote-stop")
        return {"status": "Accepted"}


__all__ = ["Transactions", "TX_ACTIONS", "fmt"]
