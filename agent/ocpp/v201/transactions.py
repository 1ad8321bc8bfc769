"""2.0.1 block E, transactions: TransactionEvent Started / Updated / Ended through the outbox,
TxStartPoint / TxStopPoint, GetTransactionStatus.

When a transaction starts and ends is the core's decision, by the points this block reads
from TxCtrlr (:meth:`Transactions.start_points` / :meth:`stop_points`).  This block says it
the 2.0.1 way: trigger reasons, charging states, stopped reasons, the idToken of the session
(or of the card of the group that stopped it), remoteStartId, and meter values.

Every TransactionEvent is committed to the durable outbox together with the state change that
caused it (the core calls ``transaction_started`` / ``transaction_ended`` inside its storage
transaction), with a seqNo taken from the journal in that same commit, so numbers are gap-free
across power cuts.  A transaction a power cut left open is ended by the core at start-up
(``transaction_recovered``: AbnormalCondition / PowerLoss, with the meter value the core
chose); one begun under another OCPP version gets its Started here first (``reported_as``).

Charging-state changes are reported once the EVSE settled: the core reports a status only
when it settled, and a session event (authorized, deauthorized, unplugged) is reported once
the input that caused it has driven the outputs, so the CSMS hears the state it led to, not
the steps on the way (a plug-in makes the EV switch from B to C a few milliseconds later).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, ClassVar

from agent.core.model import EvseSnapshot, StopReason, Token, TxPoint, TxRecord
from agent.ocpp.blocks import handles
from agent.ocpp.v201.authorization import auth_info, id_token, id_token_max
from agent.ocpp.v201.device_model import TX_POINTS, VarDef, VariableBlock, ro, rw
from agent.ocpp.v201.metering import Metering, meter_value, register_value
from agent.storage import OutboxItem
from hal.interfaces import FaultKind

log = logging.getLogger("cp_agent.v201")

VERSION = "2.0.1"
# Versions whose TransactionEvents continue one another (2.1 carries on a transaction 2.0.1
# reported: same transactionId, same seqNo sequence), so neither sends a second Started.
SAME_EVENTS = frozenset({"2.0.1", "2.1"})

END_TRIGGER = {
    StopReason.LOCAL: "StopAuthorized",
    StopReason.REMOTE: "RemoteStop",
    StopReason.EV_DISCONNECTED: "EVCommunicationLost",
    StopReason.DEAUTHORIZED: "Deauthorized",
    StopReason.HARD_RESET: "ResetCommand",
    StopReason.SOFT_RESET: "ResetCommand",
    StopReason.REBOOT: "ResetCommand",
    StopReason.POWER_LOSS: "AbnormalCondition",
    StopReason.EMERGENCY_STOP: "AbnormalCondition",
    StopReason.UNLOCK_COMMAND: "UnlockCommand",
    StopReason.TIMEOUT: "EVConnectTimeout",
    StopReason.STOPPED_BY_EV: "ChargingStateChanged",
    StopReason.OTHER: "AbnormalCondition",
    StopReason.ENERGY_LIMIT: "EnergyLimitReached",  # 2.1 E16 transaction limits
    StopReason.TIME_LIMIT: "TimeLimitReached",
    StopReason.COST_LIMIT: "CostLimitReached",  # 2.1 only (the limits block is 2.1's)
    StopReason.SOC_LIMIT: "SoCLimitReached",  # TriggerReasonEnumType spells it so
}
STOPPED_REASON = {
    StopReason.LOCAL: "Local",
    StopReason.REMOTE: "Remote",
    StopReason.EV_DISCONNECTED: "EVDisconnected",
    StopReason.DEAUTHORIZED: "DeAuthorized",
    StopReason.HARD_RESET: "ImmediateReset",
    StopReason.SOFT_RESET: "ImmediateReset",
    StopReason.REBOOT: "Reboot",
    StopReason.POWER_LOSS: "PowerLoss",
    StopReason.EMERGENCY_STOP: "EmergencyStop",
    StopReason.UNLOCK_COMMAND: "Other",
    StopReason.TIMEOUT: "Timeout",
    StopReason.STOPPED_BY_EV: "StoppedByEV",
    StopReason.OTHER: "Other",
    StopReason.ENERGY_LIMIT: "EnergyLimitReached",
    StopReason.TIME_LIMIT: "TimeLimitReached",
    # 2.1's ReasonEnumType has no cost limit; LocalOutOfCredit (new in 2.1 beside the limits)
    # is the station's own credit check running out, which a maxCost on the local cost is.
    StopReason.COST_LIMIT: "LocalOutOfCredit",
    StopReason.SOC_LIMIT: "SOCLimitReached",
}
DEAUTH_TRIGGER = {"Local": "StopAuthorized", "Remote": "RemoteStop",
                  "DeAuthorized": "Deauthorized", "EnergyLimitReached": "EnergyLimitReached",
                  "TimeLimitReached": "TimeLimitReached", "CostLimitReached": "CostLimitReached",
                  "SOCLimitReached": "SoCLimitReached"}
# Session events that change the charging state, reported (settled) with this trigger.
EVENT_TRIGGER = {"ev_disconnected": "EVCommunicationLost",
                 "connection_timeout": "EVConnectTimeout"}
# How long a report waits for the EVSE input that caused it to finish driving the outputs.


def _check_tx_points(text: str) -> str | None:
    return None if text.strip() else "at least one point is needed"


class Transactions(VariableBlock):
    OUTBOX_ACTIONS = frozenset({"TransactionEvent"})
    VARIABLES: ClassVar[tuple[VarDef, ...]] = (
        rw("OCPPCommCtrlr", "MessageAttempts", "integer", instance="TransactionEvent",
           min_limit=1, max_limit=100, setting="TransactionMessageAttempts"),
        rw("OCPPCommCtrlr", "MessageAttemptInterval", "integer", instance="TransactionEvent",
           unit="s", min_limit=1, max_limit=86400, setting="TransactionMessageRetryInterval"),
        rw("OCPPCommCtrlr", "UnlockOnEVSideDisconnect", "boolean",
           setting="UnlockConnectorOnEVSideDisconnect"),
        rw("TxCtrlr", "EVConnectionTimeOut", "integer", unit="s", min_limit=1,
           max_limit=3600, setting="ConnectionTimeOut"),
        rw("TxCtrlr", "StopTxOnEVSideDisconnect", "boolean",
           setting="StopTransactionOnEVSideDisconnect"),
        rw("TxCtrlr", "StopTxOnInvalidId", "boolean", setting="StopTransactionOnInvalidId"),
        rw("TxCtrlr", "MaxEnergyOnInvalidId", "integer", unit="Wh", min_limit=0,
           setting="MaxEnergyOnInvalidId"),
        rw("TxCtrlr", "TxStartPoint", "MemberList", "PowerPathClosed", values_list=TX_POINTS,
           check=_check_tx_points),
        rw("TxCtrlr", "TxStopPoint", "MemberList", "EVConnected,Authorized",
           values_list=TX_POINTS, check=_check_tx_points),
        ro("TxCtrlr", "TxBeforeAcceptedEnabled", "boolean", setting="TxBeforeAcceptedEnabled"),
    )

    def __init__(self, adapter: Any) -> None:
        super().__init__(adapter)
        self._state_sent: dict[str, str] = {}  # last chargingState reported, per tx
        self._pending_trigger: dict[int, str] = {}  # trigger reason awaiting the settle
        self._fault_told: dict[str, object] = {}  # the blocking fault last reported, per tx
        self._last_event: dict[int, str] = {}  # last session event per EVSE
        self._settling: set[int] = set()
        self._tokens: dict[int, Token] = {}  # the token of each EVSE's last authorization
        self._expected: dict[int, Token] = {}  # tokens of remote starts under way
        self._reservation_told: set[str] = set()  # transactions whose reservationId went
        # idToken.additionalInfo a remote start gave its token (e.g. 2.1 ad hoc payment
        # references), echoed wherever the transaction names that token.
        self._additional: dict[str, list[dict]] = {}

    # ------------------------------------------------------------------ the core's rules

    def _points(self, variable: str) -> frozenset[TxPoint]:
        return frozenset(TxPoint(p) for p in self.dm.members("TxCtrlr", variable)
                         if p in TxPoint._value2member_map_)

    def start_points(self) -> frozenset[TxPoint]:
        return self._points("TxStartPoint") or frozenset({TxPoint.POWER_PATH_CLOSED})

    def stop_points(self) -> frozenset[TxPoint]:
        points = set(self._points("TxStopPoint"))
        if self.settings["StopTransactionOnEVSideDisconnect"]:
            # E10: an EV-side unplug ends the transaction whatever TxStopPoint says.
            points.add(TxPoint.EV_CONNECTED)
        return frozenset(points) or frozenset({TxPoint.POWER_PATH_CLOSED})

    def expect_token(self, evse_id: int, token: Token,
                     additional: list[dict] | None = None) -> None:
        """A remote start is about to authorize ``token`` on ``evse_id`` (its type is the
        CSMS's, e.g. Central; ``additional``: its idToken.additionalInfo)."""
        self._expected[evse_id] = token
        if additional:
            self._additional[token.id] = additional
            while len(self._additional) > 2 * max(1, len(self.station.evses)):
                del self._additional[next(iter(self._additional))]  # starts that never began

    # ------------------------------------------------------------------ core events

    def session_event(self, evse_id: int, event: str, detail: dict) -> None:
        evse = self.station.evses.get(evse_id)
        if evse is None:
            return
        self._last_event[evse_id] = event
        if event == "authorized":
            self._tokens[evse_id] = self._token_of(evse_id, detail)
        snap = evse.snapshot()
        tx = snap.tx
        if tx is None:
            return
        if event == "ev_connected":
            # The EV came (back) to a running transaction: report the plug at once, before
            # the EV starts drawing, so the CSMS sees CablePluggedIn then Charging.
            self._event(tx, "Updated", "CablePluggedIn", charging_state="EVConnected")
        elif event == "authorized":
            remote = snap.remote_start_id
            if remote is not None and tx.remote_start_id is None:
                tx.remote_start_id = remote
                self.storage.tx_update(tx.local_id, remote_start_id=remote)
            self._settle_with(evse_id, "RemoteStart" if remote is not None else "Authorized")
        elif event == "deauthorized":
            self._settle_with(evse_id, DEAUTH_TRIGGER.get(detail.get("reason", ""),
                                                          "StopAuthorized"))
        elif event in EVENT_TRIGGER:
            self._settle_with(evse_id, EVENT_TRIGGER[event])

    def _token_of(self, evse_id: int, detail: dict) -> Token:
        token_id = str(detail.get("token", ""))
        expected = self._expected.pop(evse_id, None)
        kind = detail.get("type")
        if kind is None:
            kind = expected.type if expected is not None and expected.id == token_id \
                else "ISO14443"
        return Token(token_id, kind)

    def status_changed(self, snap: EvseSnapshot, fault: FaultKind | None) -> None:
        # The core reports a status once the EVSE settled: its charging state can go now,
        # unless a session event's report is under way (it reads the state when it goes).
        tx = snap.tx
        if tx is not None and self._fault_told.get(tx.local_id) != snap.blocking_fault:
            # A fault that stops (or a clearing that resumes) the energy of a transaction is
            # an AbnormalCondition, not a mere ChargingStateChanged (found by the
            # hardware-faults campaign); a session event's own trigger goes first.
            if snap.blocking_fault is not None:
                self._pending_trigger.setdefault(snap.evse_id, "AbnormalCondition")
            self._fault_told[tx.local_id] = snap.blocking_fault
        if tx is not None and snap.evse_id not in self._settling:
            self._report(snap)

    def transaction_started(self, tx: TxRecord, snap: EvseSnapshot, trigger: TxPoint) -> None:
        remote = snap.remote_start_id
        last = self._last_event.get(tx.evse_id)
        if trigger == TxPoint.EV_CONNECTED or (
                trigger == TxPoint.POWER_PATH_CLOSED and last == "ev_connected"):
            reason = "CablePluggedIn"
        elif trigger == TxPoint.ENERGY_TRANSFER:
            reason = "RemoteStart" if remote is not None else "ChargingStateChanged"
        else:
            reason = "RemoteStart" if remote is not None else "Authorized"
        self._pending_trigger.pop(tx.evse_id, None)
        self._mark_started(tx)
        meter = self.adapter.block(Metering).meter(
            tx.evse_id, self.dm.members("SampledDataCtrlr", "TxStartedMeasurands"),
            "Transaction.Begin", stamp=tx.started_at)
        token = (Token(tx.id_token, tx.token_type or "ISO14443")
                 if snap.authorized and tx.id_token else None)
        charging = snap.charging_state
        if charging in ("SuspendedEV", "SuspendedEVSE"):
            # The offer went out in this very step: neither the EV nor the contactor has had
            # a chance to answer it. A suspension that lasts is reported once the EVSE
            # settled (E_38: ChargingStateChanged to SuspendedEV).
            charging = "EVConnected"
        self._event(tx, "Started", reason, charging_state=charging, token=token, meter=meter,
                    remote_start_id=remote, timestamp=tx.started_at)

    def transaction_ended(self, tx: TxRecord, reason: StopReason, snap: EvseSnapshot) -> None:
        self._pending_trigger.pop(tx.evse_id, None)
        trigger = END_TRIGGER.get(reason, "AbnormalCondition")
        stopped = STOPPED_REASON.get(reason, "Other")
        deauth = snap.deauth_reason
        if reason == StopReason.EV_DISCONNECTED and deauth in (
                StopReason.LOCAL, StopReason.REMOTE, StopReason.DEAUTHORIZED,
                StopReason.ENERGY_LIMIT, StopReason.TIME_LIMIT, StopReason.COST_LIMIT,
                StopReason.SOC_LIMIT):
            # stopped earlier by a card, the CSMS or a limit, ended by the unplug
            stopped = STOPPED_REASON[deauth]
        self._ensure_started(tx)
        meter = [mv for v in self.station.metering.collected(tx)
                 if (mv := meter_value(v)) is not None]
        measurands = list(self.settings["StopTxnSampledData"])
        if "Energy.Active.Import.Register" not in measurands:
            measurands.insert(0, "Energy.Active.Import.Register")
        meter += self.adapter.block(Metering).meter(tx.evse_id, measurands, "Transaction.End",
                                                    stamp=tx.stopped_at)
        stopper = tx.stopped_by
        token = None
        if reason == StopReason.LOCAL and stopper and stopper != tx.id_token:
            token = Token(stopper, tx.token_type or "ISO14443")  # another card of the group
        self._event(tx, "Ended", trigger, charging_state=snap.charging_state,
                    stopped_reason=stopped, meter=meter, timestamp=tx.stopped_at, token=token)
        self._additional.pop(tx.id_token, None)
        self._state_sent.pop(tx.local_id, None)
        self._fault_told.pop(tx.local_id, None)

    def transaction_recovered(self, tx: TxRecord) -> None:
        """A transaction a power cut left open, closed by the core at start-up (E, PowerLoss):
        stamped when power was last seen on, with the meter value the core chose."""
        self._ensure_started(tx)
        meter = tx.meter_stop_wh if tx.meter_stop_wh is not None else tx.last_meter_wh
        stamp = tx.stopped_at or tx.last_meter_at or tx.started_at
        self._event(tx, "Ended", "AbnormalCondition", charging_state="Idle",
                    stopped_reason="PowerLoss",
                    meter=[register_value(meter, "Transaction.End", stamp)], timestamp=stamp,
                    offline=True)

    # ------------------------------------------------------------------ settled reports

    def _settle_with(self, evse_id: int, trigger: str) -> None:
        self._pending_trigger[evse_id] = trigger
        if evse_id in self._settling:
            return
        self._settling.add(evse_id)
        self.adapter.spawn(self._settle(evse_id), f"v201-settle-{evse_id}")

    async def _settle(self, evse_id: int) -> None:
        """Report the charging state once the EVSE (and the EV's answer to it) has settled."""
        evse = self.station.evses[evse_id]
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.station.settled(), 1.0)
            snap = await evse.settled_snapshot()
        finally:
            self._settling.discard(evse_id)
        self._report(snap)

    def _report(self, snap: EvseSnapshot) -> None:
        trigger = self._pending_trigger.pop(snap.evse_id, None)
        tx = snap.tx
        if tx is None or not self.adapter.active:
            return
        state = snap.charging_state
        if trigger is None and state == self._state_sent.get(tx.local_id):
            return
        token = self._tokens.get(snap.evse_id) if trigger in ("Authorized", "RemoteStart") \
            else None
        if trigger == "StopAuthorized" and tx.stopped_by:
            # A card stopped the authorization before the stop point ends the transaction
            # (C09, TC_C_39_CS: the card of the group that stopped it is named).
            token = Token(tx.stopped_by, tx.token_type or "ISO14443")
        self._event(tx, "Updated", trigger or "ChargingStateChanged", charging_state=state,
                    token=token,
                    remote_start_id=tx.remote_start_id if trigger == "RemoteStart" else None)

    # ------------------------------------------------------------------ TransactionEvent

    def _mark_started(self, tx: TxRecord) -> None:
        tx.reported_as = self.adapter.version
        self.storage.tx_update(tx.local_id, reported_as=self.adapter.version)

    def _ensure_started(self, tx: TxRecord) -> None:
        """A transaction begun under another OCPP version gets its Started here, once."""
        if tx.reported_as in SAME_EVENTS:
            return
        log.info("transaction %s began under another OCPP version: reporting its start",
                 tx.local_id)
        self._mark_started(tx)
        token = Token(tx.id_token, tx.token_type or "ISO14443") if tx.id_token else None
        self._event(tx, "Started", "Authorized" if token else "CablePluggedIn",
                    charging_state="EVConnected", token=token,
                    meter=[register_value(tx.meter_start_wh, "Transaction.Begin",
                                          tx.started_at)],
                    timestamp=tx.started_at, offline=True)

    def _event(self, tx: TxRecord, event_type: str, trigger: str, *,
               charging_state: str | None = None, token: Token | None = None,
               meter: list[dict] | None = None, stopped_reason: str | None = None,
               remote_start_id: int | None = None, timestamp: str | None = None,
               offline: bool | None = None, more_info: dict | None = None) -> None:
        """Queue one TransactionEvent with the next seqNo, in one commit (``more_info``:
        further transactionInfo fields, e.g. 2.1's transactionLimit)."""
        if event_type != "Started":
            self._ensure_started(tx)
        info: dict[str, Any] = {"transactionId": tx.local_id, **(more_info or {})}
        if charging_state is not None:
            info["chargingState"] = charging_state
            self._state_sent[tx.local_id] = charging_state
        if stopped_reason is not None:
            info["stoppedReason"] = stopped_reason
        if remote_start_id is not None:
            info["remoteStartId"] = remote_start_id
        payload: dict[str, Any] = {
            "eventType": event_type, "timestamp": timestamp or self.clock.stamp(),
            "triggerReason": trigger, "seqNo": 0, "transactionInfo": info,
            "evse": {"id": tx.evse_id, "connectorId": tx.connector_id},
        }
        if (not self.adapter.online) if offline is None else offline:
            payload["offline"] = True
        if token is not None:
            payload["idToken"] = id_token(token, self.adapter.version)
            if token.id in self._additional:
                payload["idToken"]["additionalInfo"] = self._additional[token.id]
        if (tx.reservation_id is not None and tx.local_id not in self._reservation_told
                and (event_type == "Started" or trigger in ("Authorized", "RemoteStart"))):
            # H03: the reservation this transaction ends; on its Started event, or on the
            # authorization that used it when the transaction began earlier (TxStartPoint
            # EVConnected).
            payload["reservationId"] = tx.reservation_id
            self._reservation_told.add(tx.local_id)
        if event_type == "Ended":
            self._reservation_told.discard(tx.local_id)
        if meter:
            payload["meterValue"] = meter
        for block in self.adapter.blocks:  # fields other blocks add (2.1 tariffId, costDetails)
            extend = getattr(block, "transaction_event_extra", None)
            if extend is not None:
                extend(tx, payload)
        # An event of a running transaction stamped now also journals the reading now, in the
        # same commit (as 1.6 does for its MeterValues): a power-loss Ended, stamped at the
        # last journalled reading, then never predates an event or reports less energy than a
        # sample the CSMS already has (found by tests/soak/power_cuts.py).
        journal = event_type == "Updated" and timestamp is None
        reading = self.station.evses[tx.evse_id].reading if journal else None
        with self.storage.atomic():
            payload["seqNo"] = self.storage.tx_next_seq(tx.local_id)
            self.adapter.enqueue("TransactionEvent", payload, tx_ref=tx.local_id)
            if journal:
                wh = reading.energy_import_wh if reading is not None else tx.last_meter_wh
                self.storage.tx_meter(tx.local_id, wh, payload["timestamp"])
        if journal:
            tx.last_meter_wh, tx.last_meter_at = wh, payload["timestamp"]

    def updated(self, tx: TxRecord, trigger: str, *, meter: list[dict]) -> None:
        """An Updated event carrying meter values (MeterValuePeriodic, MeterValueClock)."""
        self._event(tx, "Updated", trigger, meter=meter)

    def limit_set(self, tx: TxRecord, limit: dict[str, Any]) -> None:
        """2.1 E16: the limits now in force for the transaction (Updated, LimitSet)."""
        self._event(tx, "Updated", "LimitSet", more_info={"transactionLimit": limit})

    def triggered(self, evse_ids: list[int]) -> None:
        """TriggerMessage(TransactionEvent): an Updated of each running transaction (F06)."""
        measurands = self.settings["MeterValuesSampledData"]
        for evse_id in evse_ids:
            snap = self.station.evses[evse_id].snapshot()
            if snap.tx is None:
                continue
            meter = self.adapter.block(Metering).meter(evse_id, measurands, "Trigger")
            self._event(snap.tx, "Updated", "Trigger", charging_state=snap.charging_state,
                        meter=meter)

    # ------------------------------------------------------------------ outbox hooks

    def prepare_outbox(self, item: OutboxItem, payload: dict) -> dict:
        """A TransactionEvent queued under 2.1 (TxResumed, E17) that a 2.0.1 CSMS gets after
        the station changed versions says its trigger in 2.0.1 words."""
        if self.adapter.version == VERSION and payload.get("triggerReason") == "TxResumed":
            payload = {**payload, "triggerReason": "ChargingStateChanged"}
        if self.adapter.version == VERSION and ("costDetails" in payload or "tariffId" in
                                                payload["transactionInfo"]):
            # 2.1 local cost (its trigger reasons are 2.1's too): 2.0.1 has neither field.
            info = {k: v for k, v in payload["transactionInfo"].items() if k != "tariffId"}
            trigger = payload["triggerReason"]
            payload = {**{k: v for k, v in payload.items() if k != "costDetails"},
                       "transactionInfo": info,
                       "triggerReason": "ChargingStateChanged" if trigger in (
                           "RunningCost", "TariffChanged") else trigger}
        return payload

    def outbox_result(self, item: OutboxItem, result: dict) -> None:
        """Runs inside the SQLite transaction that acks the item (see OutboxSender)."""
        if item.tx_ref is None:
            return
        for block in self.adapter.blocks:  # tariff and cost of the answer (I02/I03/I06)
            hook = getattr(block, "transaction_answered", None)
            if hook is not None:
                hook(item, result)
        info = result.get("idTokenInfo")
        token = item.payload.get("idToken")
        if not isinstance(info, dict) or not isinstance(token, dict):
            return
        verdict = auth_info(info)
        self.station.authorization.remember(token["idToken"], verdict)
        evse = self.station.find_tx(local_id=item.tx_ref)
        tx = evse.tx if evse is not None else None
        if verdict.parent and tx is not None and token["idToken"] == tx.id_token[
                :id_token_max(self.adapter.version)]:
            # C09: the groupIdToken the CSMS names for the card of the transaction is its
            # group, as 1.6 takes StartTransaction.conf's parentIdTag: a card of the group may
            # stop it (e.g. a session started offline, or authorized without a group).
            tx.parent = verdict.parent
            self.storage.tx_update(tx.local_id, parent=verdict.parent)
        if not verdict.accepted and evse is not None:
            # E05 / C: the CSMS answered late (started offline, or authorized locally with
            # outdated data): stop after MaxEnergyOnInvalidId, or only stop the energy.
            log.warning("transaction %s: idToken %s", item.tx_ref, verdict.status)
            self.station.invalid_id_late(item.tx_ref)

    def outbox_done(self, item: OutboxItem) -> None:
        if item.tx_ref is not None and item.payload.get("eventType") == "Ended":
            if self.storage.tx_outbox_pending(item.tx_ref) == 0:
                self.storage.tx_forget(item.tx_ref)

    # ------------------------------------------------------------------ CSMS requests

    @handles("GetTransactionStatus")
    async def get_transaction_status(self, p: dict) -> dict:
        tx_id = p.get("transactionId")
        if tx_id is None:
            queued = any(i.action == "TransactionEvent"
                         for i in self.storage.outbox_peek(100000))
            return {"messagesInQueue": queued}
        tx = self.storage.tx_get(tx_id)
        if tx is None:
            return {"ongoingIndicator": False, "messagesInQueue": False}
        return {"ongoingIndicator": not tx.closed,
                "messagesInQueue": self.storage.tx_outbox_pending(tx_id) > 0}
