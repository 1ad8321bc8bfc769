"""OCPP 1.6J adapter: maps the version-neutral core to 1.6 messages and back.

Core + RemoteTrigger profiles, with the local authorization list and cache.  Transaction
messages (StartTransaction, MeterValues of a transaction, StopTransaction) never go straight to
the wire: they are committed to the durable outbox together with the state change that caused
them and sent from there, so nothing is lost across outages and power cuts.  What is only known
at send time is filled in then: the transactionId (from the journal, once the Start was
confirmed) and the real time of events recorded while the clock could not be trusted.

Authorization follows 1.6 section 3.5: the local list has priority over the cache, a local or
cached hit with LocalPreAuthorize needs no round trip, and offline the rules are
LocalAuthorizeOffline / AllowOfflineTxForUnknownId, where an identifier known to be invalid or
expired is always refused.  See docs/durability.md for the promises and their limits.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from agent.clock import Clock, iso, parse_iso
from agent.core.model import (
    AuthResult,
    EvseSnapshot,
    StopReason,
    Token,
    TxPoint,
    TxRecord,
)
from agent.core.station import Station
from agent.link.outbox import Hold, OutboxSender
from agent.link.rpc import (
    CallErrorReceived,
    CallFailed,
    CallTimeout,
    ConnectionLost,
    OcppCallError,
    ResponseInvalid,
    RpcSession,
)
from agent.ocpp.adapter_base import AdapterBase
from agent.ocpp.v16.keys import ConfigurationKeys
from agent.storage import OutboxItem, Storage, StorageError
from hal.interfaces import FaultKind, MeterReading

# Entries kept in the authorization cache before the oldest make room (1.6 3.5.1).
AUTH_CACHE_MAX = 10000
# A meter register read at start-up is trusted for meterStop after a power cut only if it is
# at most this many seconds of full power ahead of the last journalled reading (more means the
# energy flowed while we were not looking, or a different meter: not ours to bill).
RECOVERY_SLACK_S = 5.0
NOMINAL_VOLTAGE = 230.0
# Authorization statuses that make an identifier valid for charging (1.6 3.5.2).
VALID_STATUSES = ("Accepted",)

log = logging.getLogger("cp_agent.v16")

ERROR_CODES = {
    FaultKind.METER: "PowerMeterFailure",
    FaultKind.WELDED: "PowerSwitchFailure",
    FaultKind.CONTACTOR_FAILED: "PowerSwitchFailure",
    FaultKind.PILOT: "EVCommunicationError",
    FaultKind.READER: "ReaderFailure",
    FaultKind.LOCK: "ConnectorLockFailure",
    FaultKind.EV_BOARD: "InternalError",
    FaultKind.OVER_CURRENT: "OverCurrentFailure",
    FaultKind.OVER_VOLTAGE: "OverVoltage",
    FaultKind.UNDER_VOLTAGE: "UnderVoltage",
    FaultKind.OVER_TEMPERATURE: "HighTemperature",
    FaultKind.GROUND_FAILURE: "GroundFailure",
    FaultKind.INTERNAL: "InternalError",
}

TX_ACTIONS = ("StartTransaction", "StopTransaction", "MeterValues")
TRIGGERABLE = ("BootNotification", "DiagnosticsStatusNotification", "FirmwareStatusNotification",
               "Heartbeat", "MeterValues", "StatusNotification")


def _fmt(value: float) -> str:
    """Meter values travel as decimal strings; trim float noise so they read like a meter."""
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return text if text not in ("-0", "") else "0"


def sampled_values(reading: MeterReading, measurands: list[str], context: str,
                   offered_a: float | None = None) -> list[dict]:
    """1.6 SampledValue entries for the measurands the meter can give."""
    out: list[dict] = []
    for m in measurands:
        if m == "Energy.Active.Import.Register":
            out.append({"value": _fmt(reading.energy_import_wh), "context": context,
                        "measurand": m, "unit": "Wh", "location": "Outlet"})
        elif m == "Energy.Active.Export.Register":
            out.append({"value": _fmt(reading.energy_export_wh), "context": context,
                        "measurand": m, "unit": "Wh", "location": "Outlet"})
        elif m == "Power.Active.Import":
            out.append({"value": _fmt(max(0.0, reading.power_w)), "context": context,
                        "measurand": m, "unit": "W", "location": "Outlet"})
        elif m == "Current.Import":
            for i, a in enumerate(reading.current_a):
                out.append({"value": _fmt(a), "context": context, "measurand": m,
                            "phase": f"L{i + 1}", "unit": "A", "location": "Outlet"})
        elif m == "Voltage":
            for i, v in enumerate(reading.voltage_v):
                out.append({"value": _fmt(v), "context": context, "measurand": m,
                            "phase": f"L{i + 1}-N", "unit": "V", "location": "Outlet"})
        elif m == "Current.Offered" and offered_a is not None:
            out.append({"value": _fmt(offered_a), "context": context, "measurand": m,
                        "unit": "A", "location": "Outlet"})
        elif m == "Frequency" and reading.frequency_hz is not None:
            out.append({"value": _fmt(reading.frequency_hz), "context": context,
                        "measurand": m})
        elif m == "SoC" and reading.soc_percent is not None:
            out.append({"value": _fmt(reading.soc_percent), "context": context,
                        "measurand": m, "unit": "Percent", "location": "EV"})
        elif m == "Temperature" and reading.temperature_c is not None:
            out.append({"value": _fmt(reading.temperature_c), "context": context,
                        "measurand": m, "unit": "Celsius", "location": "Body"})
    return out


class V16Adapter(AdapterBase):
    """The 1.6 personality of the station. One instance lives as long as the agent."""

    version = "1.6"
    subprotocol = "ocpp1.6"

    def __init__(self, *, station: Station, storage: Storage, clock: Clock, keys:
                 ConfigurationKeys, station_id: str, vendor: str, model: str,
                 serial_number: str | None, firmware_version: str,
                 request_reset: Callable[[str], Awaitable[None]] | None = None) -> None:
        self.station = station
        self.storage = storage
        self.clock = clock
        self.keys = keys
        self.station_id = station_id
        self.vendor = vendor
        self.model = model
        self.serial_number = serial_number
        self.firmware_version = firmware_version
        self.request_reset = request_reset
        self.rpc: RpcSession | None = None
        self.registration: str | None = None  # Accepted / Pending / Rejected of the last boot
        self.accepted = asyncio.Event()
        self.registration_seen = asyncio.Event()  # set at every Boot answer (tests, demo)
        self._status: dict[int, dict] = {}  # latest StatusNotification per connector, unsent
        self._status_wakeup = asyncio.Event()
        self._heartbeat_wakeup = asyncio.Event()
        self._init_tasks()
        self._stop_samples: dict[str, list[dict]] = {}  # StopTxn*Data per local tx id
        self.outbox = OutboxSender(storage, clock, prepare=self._prepare_outbox,
                                   on_result=self._outbox_result,
                                   attempts=lambda: self.keys["TransactionMessageAttempts"],
                                   retry_interval=lambda: self.keys[
                                       "TransactionMessageRetryInterval"],
                                   on_done=self._outbox_done)
        self.handlers: dict[str, Callable[[dict], Awaitable[dict]]] = {
            "RemoteStartTransaction": self._on_remote_start,
            "RemoteStopTransaction": self._on_remote_stop,
            "Reset": self._on_reset,
            "ChangeAvailability": self._on_change_availability,
            "GetConfiguration": self._on_get_configuration,
            "ChangeConfiguration": self._on_change_configuration,
            "UnlockConnector": self._on_unlock,
            "DataTransfer": self._on_data_transfer,
            "ClearCache": self._on_clear_cache,
            "TriggerMessage": self._on_trigger,
            "GetLocalListVersion": self._on_get_local_list_version,
            "SendLocalList": self._on_send_local_list,
        }
        self._wire_core()

    # ------------------------------------------------------------------ wiring

    def _wire_core(self) -> None:
        self.attach()
        self.keys.listeners.append(self._key_changed)

    def attach(self) -> None:
        """Make the core follow 1.6 rules (at start-up, or when a CSMS negotiates 1.6 again)."""
        for evse in self.station.evses.values():
            evse.connection_timeout_s = lambda: float(self.keys["ConnectionTimeOut"])
            evse.unlock_on_ev_disconnect = lambda: bool(
                self.keys["UnlockConnectorOnEVSideDisconnect"])
            evse.start_points = lambda: frozenset({TxPoint.POWER_PATH_CLOSED})
            evse.stop_points = self._stop_points

    def _stop_points(self) -> frozenset[TxPoint]:
        if self.keys["StopTransactionOnEVSideDisconnect"]:
            return frozenset({TxPoint.POWER_PATH_CLOSED})
        return frozenset({TxPoint.AUTHORIZED})

    def _key_changed(self, name: str, value: Any) -> None:
        if name == "HeartbeatInterval":
            self._heartbeat_wakeup.set()

    async def start(self, *, recover: bool = True) -> None:
        """Agent start-up: recover transactions a power cut left open, start the samplers.

        ``recover`` is False when another OCPP version's adapter was the last one in use: that
        one closes the transactions, each exactly once.
        """
        if recover:
            self._recover()
        for evse in self.station.evses.values():
            self.spawn(self._tx_sampler(evse.id), f"v16-sampled-{evse.id}")
        self.spawn(self._aligned_sampler(), "v16-aligned")

    # ------------------------------------------------------------------ session (per link)

    async def run_session(self, rpc: RpcSession) -> None:
        """Everything one websocket connection does, until it drops (then we are cancelled)."""
        self.rpc = rpc
        self.accepted.clear()
        self.registration = None
        try:
            await self._boot()
            for evse in self.station.evses.values():  # bring the CSMS up to date
                self._queue_status(evse.snapshot(), self._fault_of(evse.id))
            self._queue_station_status()
            self.spawn(self._status_sender(), "v16-status", session=True)
            self.spawn(self._heartbeat(), "v16-heartbeat", session=True)
            self.spawn(self.outbox.run(rpc), "v16-outbox", session=True)
            await asyncio.Event().wait()
        finally:
            await self._end_session_tasks()
            self.accepted.clear()
            self.rpc = None

    async def _boot(self) -> None:
        payload: dict[str, Any] = {"chargePointVendor": self.vendor,
                                   "chargePointModel": self.model,
                                   "firmwareVersion": self.firmware_version}
        if self.serial_number:
            payload["chargePointSerialNumber"] = self.serial_number
        while True:
            assert self.rpc is not None
            try:
                res = await self.rpc.call("BootNotification", payload)
            except CallErrorReceived as exc:
                log.warning("BootNotification refused with %s; retrying in 60 s", exc.code)
                await self.clock.sleep(60)
                continue
            except CallTimeout:
                continue
            except ConnectionLost:
                raise
            except CallFailed as exc:
                log.warning("BootNotification answer unusable (%s); retrying in 60 s", exc)
                await self.clock.sleep(60)
                continue
            self.registration = res["status"]
            self.rpc.ignore_calls = self.registration == "Rejected"
            self.registration_seen.set()
            self._sync_clock(res.get("currentTime"))
            interval = int(res.get("interval", 0))
            if self.registration == "Accepted":
                if interval > 0:
                    self.keys.set_internal("HeartbeatInterval", interval)
                self.accepted.set()
                log.info("BootNotification accepted (heartbeat %s s)",
                         self.keys["HeartbeatInterval"])
                return
            wait = interval if interval > 0 else 60
            log.info("BootNotification %s; next attempt in %s s", self.registration, wait)
            await self.clock.sleep(wait)

    def _sync_clock(self, current_time: str | None) -> None:
        if not current_time:
            return
        try:
            delta = self.clock.sync(parse_iso(current_time))
        except ValueError:
            log.warning("CSMS sent an unreadable currentTime %r", current_time)
            return
        if abs(delta) > 2:
            log.info("clock corrected by %+.1f s to the CSMS time", delta)
        self.outbox.wake()  # messages held for want of a trustworthy time may go now

    async def _call(self, action: str, payload: dict) -> dict:
        rpc = self.rpc
        if rpc is None or not self.accepted.is_set():
            raise ConnectionLost(f"{action}: not connected")
        return await rpc.call(action, payload)

    # ------------------------------------------------------------------ status

    def _fault_of(self, evse_id: int) -> FaultKind | None:
        evse = self.station.evses[evse_id]
        return evse.blocking_fault or next(iter(evse.faults), None)

    def _queue_status(self, snap: EvseSnapshot, fault: FaultKind | None) -> None:
        payload: dict[str, Any] = {
            "connectorId": snap.evse_id,
            "errorCode": ERROR_CODES.get(fault, "OtherError") if fault else "NoError",
            "status": snap.status.value,
        }
        if self.clock.trustworthy:  # optional in 1.6: better none than 1970
            payload["timestamp"] = self.clock.now_iso()
        if fault is not None:
            payload["vendorErrorCode"] = str(fault)[:50]
            detail = self.station.evses[snap.evse_id].faults.get(fault, "")
            if detail:
                payload["info"] = detail[:50]
        self._status.pop(snap.evse_id, None)
        self._status[snap.evse_id] = payload
        self._status_wakeup.set()

    def _queue_station_status(self) -> None:
        evses = self.station.evses.values()
        fault = next(iter(self.station.station_faults), None)
        if all(not e.operative for e in evses):
            status = "Unavailable"
        else:
            status = "Available"
        payload: dict[str, Any] = {"connectorId": 0, "status": status,
                                   "errorCode": ERROR_CODES[fault] if fault else "NoError"}
        if self.clock.trustworthy:
            payload["timestamp"] = self.clock.now_iso()
        if fault is not None:
            payload["vendorErrorCode"] = str(fault)
            detail = self.station.station_faults.get(fault, "")
            if detail:
                payload["info"] = detail[:50]
        self._status.pop(0, None)
        self._status[0] = payload
        self._status_wakeup.set()

    async def _status_sender(self) -> None:
        await self.accepted.wait()
        while True:
            await self._status_wakeup.wait()
            self._status_wakeup.clear()
            while self._status:
                connector_id = next(iter(self._status))
                payload = self._status.pop(connector_id)
                try:
                    await self._call("StatusNotification", payload)
                except (CallErrorReceived, ResponseInvalid) as exc:
                    log.warning("StatusNotification refused: %s", exc)
                except CallTimeout:
                    # A CSMS that does not answer: keep the newest status and try again at the
                    # next change, rather than give up on statuses for this connection.
                    self._status.setdefault(connector_id, payload)
                    break
                except ConnectionLost:
                    # Keep the newest status for the next connection; do not resend stale ones.
                    self._status.setdefault(connector_id, payload)
                    raise

    # ------------------------------------------------------------------ CoreObserver

    def status_changed(self, snap: EvseSnapshot, fault: FaultKind | None) -> None:
        self._queue_status(snap, fault)

    def fault_changed(self, evse_id: int, kind: FaultKind, active: bool, detail: str) -> None:
        if evse_id == 0:
            self._queue_station_status()

    def session_event(self, evse_id: int, event: str, detail: dict) -> None:
        pass

    def transaction_started(self, tx: TxRecord, snap: EvseSnapshot, trigger: TxPoint) -> None:
        if not tx.parent:
            # The group of the starting card, if the local list or cache knows it, lets a card
            # of the same group stop the session even offline (1.6 3.10).
            known = self._local_info(tx.id_token)
            if known is not None and known[0].get("parentIdTag"):
                tx.parent = known[0]["parentIdTag"]
                self.storage.tx_update(tx.local_id, parent=tx.parent)
        payload = {"connectorId": tx.evse_id, "idTag": tx.id_token[:20],
                   "meterStart": int(round(tx.meter_start_wh)), "timestamp": tx.started_at}
        if tx.reservation_id is not None:
            payload["reservationId"] = tx.reservation_id
        self.storage.outbox_put("StartTransaction", payload, tx_ref=tx.local_id)
        self._stop_samples[tx.local_id] = []
        if snap.reading is not None:
            self._collect_stop_sample(tx.local_id, snap.reading, "Transaction.Begin")
        self.outbox.wake()

    def transaction_ended(self, tx: TxRecord, reason: StopReason, snap: EvseSnapshot) -> None:
        payload: dict[str, Any] = {
            "meterStop": int(round(tx.meter_stop_wh if tx.meter_stop_wh is not None
                                   else tx.last_meter_wh)),
            "timestamp": tx.stopped_at or self.clock.stamp(),
            "transactionId": 0,  # filled in from the journal when the Start is confirmed
            "reason": reason.value if reason.value in _V16_REASONS else "Other",
        }
        stopped_by = tx.stopped_by or tx.id_token
        if reason in (StopReason.LOCAL,) and stopped_by:
            payload["idTag"] = stopped_by[:20]
        if snap.reading is not None:
            self._collect_stop_sample(tx.local_id, snap.reading, "Transaction.End")
        data = self._stop_samples.pop(tx.local_id, [])
        if data:
            payload["transactionData"] = data
        self.storage.outbox_put("StopTransaction", payload, tx_ref=tx.local_id)
        self.outbox.wake()

    def _collect_stop_sample(self, local_id: str, reading: MeterReading, context: str,
                             aligned: bool = False) -> None:
        measurands = self.keys["StopTxnAlignedData" if aligned else "StopTxnSampledData"]
        if not measurands:
            return
        values = sampled_values(reading, measurands, context)
        bucket = self._stop_samples.setdefault(local_id, [])
        if values and len(bucket) < 500:  # bounded: a week-long session must not grow RAM
            bucket.append({"timestamp": self.clock.stamp(), "sampledValue": values})

    # ------------------------------------------------------------------ recovery

    def _recover(self) -> None:
        """Close, exactly once, every transaction a power cut or crash left open.

        1.6 has no way to resume a transaction across a restart, so each one ends with reason
        PowerLoss, stamped with the time of its last journalled meter reading (when the power
        was last seen on) rather than the restart time, which would bill the outage.  The Stop
        is queued in the same SQLite transaction that closes the journal entry, so a second
        crash during recovery can neither lose it nor queue it twice.
        """
        for tx in self.storage.tx_open():
            meter, source = self._recovered_meter(tx)
            when = tx.last_meter_at or tx.started_at
            log.warning("transaction %s (connector %s, %s) was open at start-up: closing it "
                        "with PowerLoss, meterStop %.1f Wh (%s)", tx.local_id, tx.evse_id,
                        tx.id_token, meter, source)
            with self.storage.atomic():
                self.storage.tx_close(tx.local_id, when, StopReason.POWER_LOSS.value, meter)
                tx.meter_stop_wh, tx.stopped_at = meter, when
                payload = {"meterStop": int(round(meter)), "timestamp": when,
                           "transactionId": 0, "reason": "PowerLoss"}
                self.storage.outbox_put("StopTransaction", payload, tx_ref=tx.local_id)
        if self.storage.outbox_count():
            self.outbox.wake()

    def _recovered_meter(self, tx: TxRecord) -> tuple[float, str]:
        """meterStop of a transaction found open: the meter's register if plausible, else the
        last journalled reading (at most ``meter_persist_s`` behind at the moment of the cut).

        A power cut stops the charging and, with it, a meter that keeps its register: reading
        it now gives the exact value.  A lower register (meter replaced or reset) or one far
        ahead (energy that flowed while nobody journalled it) is not trusted.
        """
        journal = tx.last_meter_wh
        evse = self.station.evses.get(tx.evse_id)
        reading = evse.reading if evse is not None else None
        if reading is None:
            return journal, "last journalled reading; meter not readable"
        register = reading.energy_import_wh
        max_w = (evse.max_current_a * max(1, evse.hw.phases) * NOMINAL_VOLTAGE
                 if evse is not None else 0.0)
        slack_wh = max_w * (self.station.meter_persist_s + RECOVERY_SLACK_S) / 3600.0
        if journal <= register <= journal + slack_wh:
            return register, "meter register at start-up"
        return journal, (f"last journalled reading; register {register:.1f} Wh "
                         f"not consistent with it")

    # ------------------------------------------------------------------ outbox hooks

    def _prepare_outbox(self, item: OutboxItem) -> dict | None:
        """Fill in the CSMS transaction id and real times; None drops a message that can no
        longer be sent; :class:`Hold` keeps it (and all behind it) until the time is known."""
        payload, held = self.clock.resolve_payload(item.payload)
        if held:
            log.info("%s #%s waits for the CSMS time (no trustworthy clock yet)", item.action,
                     item.id)
            raise Hold()
        if item.tx_ref is None or item.action == "StartTransaction":
            return payload
        tx = self.storage.tx_get(item.tx_ref)
        if tx is None or tx.remote_id is None:
            log.error("%s for transaction %s has no transactionId (its Start was never "
                      "confirmed); dropping it", item.action, item.tx_ref)
            return None
        try:
            payload["transactionId"] = int(tx.remote_id)
        except ValueError:
            log.error("transaction %s has an unusable CSMS id %r; dropping its %s",
                      item.tx_ref, tx.remote_id, item.action)
            return None
        return payload

    def _outbox_result(self, item: OutboxItem, result: dict) -> None:
        """Runs inside the SQLite transaction that acks the item (see OutboxSender)."""
        info = result.get("idTagInfo")
        id_tag = item.payload.get("idTag")
        if isinstance(info, dict) and isinstance(id_tag, str):
            # 1.6 4.8 / 4.10: StartTransaction.conf and StopTransaction.conf update the cache.
            self._cache_put(id_tag, info)
            self._check_list_conflict(id_tag, info)
        if item.action != "StartTransaction" or item.tx_ref is None:
            return
        tx_id = result.get("transactionId")
        self.storage.tx_set_remote_id(item.tx_ref, str(tx_id))
        parent = info.get("parentIdTag") if isinstance(info, dict) else None
        if parent:
            self.storage.tx_update(item.tx_ref, parent=parent)
        evse = self.station.find_tx(local_id=item.tx_ref)
        if evse is not None and evse.tx is not None:
            evse.tx.remote_id = str(tx_id)
            if parent:
                evse.tx.parent = parent
        status = info.get("status", "Accepted") if isinstance(info, dict) else "Accepted"
        if status not in VALID_STATUSES and evse is not None and evse.tx is not None:
            # The CSMS answered late (the start was queued offline, or authorized locally with
            # outdated data): 1.6 3.5.4 says stop, or only stop the energy.
            log.warning("StartTransaction %s: idTag %s", tx_id, status)
            self.spawn(self._invalid_id(evse, evse.tx.local_id), "v16-invalid-id")

    def _outbox_done(self, item: OutboxItem) -> None:
        if item.action == "StopTransaction" and item.tx_ref is not None:
            if self.storage.tx_outbox_pending(item.tx_ref) == 0:
                self.storage.tx_forget(item.tx_ref)

    # ------------------------------------------------------------------ meter values

    async def _tx_sampler(self, evse_id: int) -> None:
        """MeterValueSampleInterval samples of a running transaction, through the outbox."""
        evse = self.station.evses[evse_id]
        while True:
            interval = self.keys["MeterValueSampleInterval"]
            await self.clock.sleep(interval if interval > 0 else 5)
            tx = evse.tx
            if interval <= 0 or tx is None or evse.reading is None:
                continue
            if self.station.observer is not self:
                continue  # another OCPP version's adapter is in charge
            self._collect_stop_sample(tx.local_id, evse.reading, "Sample.Periodic")
            values = sampled_values(evse.reading, self.keys["MeterValuesSampledData"],
                                    "Sample.Periodic", evse.hw.ev.current_limit)
            if values:
                stamp = self.clock.stamp()
                payload = {"connectorId": evse_id, "transactionId": 0,
                           "meterValue": [{"timestamp": stamp, "sampledValue": values}]}
                self._queue_sample(payload, tx, evse.reading, stamp)

    def _queue_sample(self, payload: dict, tx: TxRecord, reading: MeterReading,
                      stamp: str) -> None:
        """Queue a transaction's MeterValues and journal the same reading in one commit.

        Journalling it keeps the power-loss Stop (meterStop, timestamp) never behind a sample
        the CSMS already has.  A failing disk costs a sample, not the sampler.
        """
        try:
            with self.storage.atomic():
                self.storage.outbox_put("MeterValues", payload, tx_ref=tx.local_id)
                self.storage.tx_meter(tx.local_id, reading.energy_import_wh, stamp)
        except (StorageError, KeyError) as exc:
            log.error("MeterValues of transaction %s not queued: %s", tx.local_id, exc)
            return
        tx.last_meter_wh, tx.last_meter_at = reading.energy_import_wh, stamp
        self.outbox.wake()

    async def _aligned_sampler(self) -> None:
        """ClockAlignedDataInterval samples, on the wall-clock boundaries (from midnight UTC)."""
        while True:
            interval = self.keys["ClockAlignedDataInterval"]
            if interval <= 0 or not self.clock.trustworthy:
                await self.clock.sleep(5)  # no boundaries to align to without the real time
                continue
            now = self.clock.wall()
            nxt = math.floor(now / interval + 1) * interval
            await self.clock.sleep(max(0.05, nxt - now))
            if self.keys["ClockAlignedDataInterval"] != interval:
                continue
            if self.station.observer is not self:
                continue  # another OCPP version's adapter is in charge
            stamp = datetime.fromtimestamp(nxt, UTC)
            for evse in self.station.evses.values():
                if evse.reading is None:
                    continue
                tx = evse.tx
                if tx is not None:
                    self._collect_stop_sample(tx.local_id, evse.reading, "Sample.Clock",
                                              aligned=True)
                values = sampled_values(evse.reading, self.keys["MeterValuesAlignedData"],
                                        "Sample.Clock", evse.hw.ev.current_limit)
                if not values:
                    continue
                mv = [{"timestamp": iso(stamp),
                       "sampledValue": values}]
                if tx is not None:
                    self._queue_sample({"connectorId": evse.id, "transactionId": 0,
                                        "meterValue": mv}, tx, evse.reading, iso(stamp))
                elif self.online:
                    self.spawn(self._send_quiet("MeterValues", {"connectorId": evse.id,
                                                                "meterValue": mv}),
                               "v16-aligned-send")

    async def _send_quiet(self, action: str, payload: dict) -> None:
        """A message that is not transaction-related: sent once if online, never queued."""
        try:
            await self._call(action, payload)
        except CallFailed as exc:
            log.info("%s not delivered: %s", action, exc)

    # ------------------------------------------------------------------ authorization

    def _cache_put(self, id_tag: str, info: dict) -> None:
        """Remember the CSMS's verdict; never for a listed identifier (1.6 3.5.3)."""
        if not self.keys["AuthorizationCacheEnabled"]:
            return
        if self._list_enabled and self.storage.local_list_get(id_tag) is not None:
            return
        expiry = info.get("expiryDate")
        try:
            if expiry is not None:
                parse_iso(expiry)
        except ValueError:
            expiry = None  # a schema-valid but odd date: keep the verdict, not the expiry
        self.storage.auth_cache_put(id_tag, info, expiry, limit=AUTH_CACHE_MAX)

    @property
    def _list_enabled(self) -> bool:
        return self.keys.get("LocalAuthListEnabled") is not False

    def _local_info(self, id_tag: str) -> tuple[dict, str] | None:
        """(idTagInfo, source) from the local list, else the cache (expired entries too)."""
        if self._list_enabled:
            entry = self.storage.local_list_get(id_tag)
            if entry is not None:
                return entry, "local_list"
        if self.keys["AuthorizationCacheEnabled"]:
            entry = self.storage.auth_cache_get(id_tag, include_expired=True)
            if entry is not None:
                return entry, "cache"
        return None

    def _local_lookup(self, token: Token) -> AuthResult | None:
        """Local list first, then the cache; None when neither knows the token.

        An accepted entry with an expiry date cannot be judged while the clock is not
        trustworthy (no RTC, no CSMS yet): it then counts as unknown, never as valid.
        """
        found = self._local_info(token.id)
        if found is None:
            return None
        info, source = found
        if (info.get("status") in VALID_STATUSES and info.get("expiryDate")
                and not self.clock.trustworthy):
            return None
        return self._result(info, source)

    def _result(self, info: dict, source: str) -> AuthResult:
        status = info.get("status", "Invalid")
        expiry = info.get("expiryDate")
        if status in VALID_STATUSES and expiry:
            try:
                if parse_iso(expiry).timestamp() < self.clock.wall():
                    status = "Expired"
            except ValueError:
                pass
        return AuthResult(status, parent=info.get("parentIdTag"), source=source,
                          expires_at=expiry)

    def _check_list_conflict(self, id_tag: str, info: dict) -> None:
        """1.6 3.5.2: a CSMS verdict that contradicts the local list is reported on connector 0."""
        if not self._list_enabled:
            return
        entry = self.storage.local_list_get(id_tag)
        if entry is None:
            return
        listed = self._result(entry, "local_list").accepted
        if listed == (info.get("status") in VALID_STATUSES):
            return
        log.warning("local list says %s for %s, the CSMS %s: reporting LocalListConflict",
                    entry.get("status"), id_tag, info.get("status"))
        self._queue_station_status()
        self._status[0]["errorCode"] = "LocalListConflict"
        self._status[0]["info"] = f"idTag {id_tag}"[:50]

    async def authorize(self, token: Token, evse_id: int | None) -> AuthResult:
        """Authorizer for the core: local sources, online Authorize, offline rules.

        Offline (or when the CSMS does not answer in time), per 1.6 3.5: an identifier the
        local list or cache knows as not valid, or as expired, is refused whatever the keys
        say; a valid one is accepted with LocalAuthorizeOffline; any other is accepted only
        with AllowOfflineTxForUnknownId.
        """
        try:
            local = self._local_lookup(token)
        except StorageError as exc:
            log.error("local authorization sources unreadable: %s", exc)
            local = None
        if local is not None and local.accepted and self.keys["LocalPreAuthorize"]:
            return local  # no round trip: the contactor can close at once
        if self.online:
            try:
                res = await self._call("Authorize", {"idTag": token.id[:20]})
            except CallFailed as exc:
                log.warning("Authorize not answered: %s", exc)
            else:
                info = res.get("idTagInfo", {})
                try:
                    self._cache_put(token.id, info)
                    self._check_list_conflict(token.id, info)
                except StorageError as exc:
                    log.error("authorization cache not updated: %s", exc)
                return self._result(info, "online")
        # Offline.
        if local is not None and not local.accepted:
            return AuthResult(local.status, parent=local.parent, source="offline")
        if local is not None and self.keys["LocalAuthorizeOffline"]:
            return local
        if self.keys["AllowOfflineTxForUnknownId"]:
            return AuthResult("Accepted", source="offline_unknown")
        return AuthResult("Invalid", source="offline")

    # ------------------------------------------------------------------ CSMS -> CP handlers

    def _evse_or_none(self, connector_id: int | None):  # noqa: ANN202
        if connector_id is None:
            return None
        return self.station.evses.get(connector_id)

    async def _on_remote_start(self, p: dict) -> dict:
        token = Token(p["idTag"])
        connector_id = p.get("connectorId")
        if connector_id is not None:
            evse = self._evse_or_none(connector_id)
            if evse is None:
                return {"status": "Rejected"}
            candidates = [evse]
        else:
            candidates = list(self.station.evses.values())
        free = [e for e in candidates if e.operative and e.blocking_fault is None
                and (e.session is None or (not e.session.authorized
                                           and e.session.ended_reason is None))]
        if not free:
            return {"status": "Rejected"}
        target = free[0] if connector_id is not None else (
            next((e for e in free if e.ev_connected), free[0]))
        self.spawn(self._remote_start(token, target.id), "v16-remote-start")
        return {"status": "Accepted"}

    async def _remote_start(self, token: Token, evse_id: int) -> None:
        result = AuthResult("Accepted", source="remote")
        if self.keys["AuthorizeRemoteTxRequests"]:
            result = await self.authorize(token, evse_id)
            if not result.accepted:
                log.info("remote start for %s refused: %s", token.id, result.status)
                return
        await self.station.remote_start(token, evse_id, result=result)

    async def _on_remote_stop(self, p: dict) -> dict:
        evse = self.station.find_tx(remote_id=str(p["transactionId"]))
        if evse is None:
            return {"status": "Rejected"}
        self.spawn(evse.deauthorize(StopReason.REMOTE), "v16-remote-stop")
        return {"status": "Accepted"}

    async def _on_reset(self, p: dict) -> dict:
        kind = p["type"]
        if self.request_reset is None:
            return {"status": "Rejected"}
        self.spawn(self._reset(kind), "v16-reset")
        return {"status": "Accepted"}

    async def _reset(self, kind: str) -> None:
        reason = StopReason.HARD_RESET if kind == "Hard" else StopReason.SOFT_RESET
        await self.station.end_all(reason)
        assert self.request_reset is not None
        await self.request_reset(kind)

    async def _on_change_availability(self, p: dict) -> dict:
        connector_id = p["connectorId"]
        operative = p["type"] == "Operative"
        if connector_id != 0 and connector_id not in self.station.evses:
            return {"status": "Rejected"}
        status = await self.station.set_operative(connector_id, operative)
        if connector_id == 0:
            self._queue_station_status()
        return {"status": status}

    async def _on_get_configuration(self, p: dict) -> dict:
        wanted = p.get("key")
        known, unknown = [], []
        items = {d.name: (d, v) for d, v in self.keys.items()}
        names = wanted if wanted else list(items)
        for name in names:
            if name in items:
                d, v = items[name]
                known.append({"key": d.name, "readonly": d.readonly, "value": d.format(v)[:500]})
            else:
                unknown.append(name[:50])
        out: dict[str, Any] = {}
        if known:
            out["configurationKey"] = known
        if unknown:
            out["unknownKey"] = unknown
        return out

    async def _on_change_configuration(self, p: dict) -> dict:
        return {"status": self.keys.change(p["key"], p["value"])}

    async def _on_unlock(self, p: dict) -> dict:
        evse = self._evse_or_none(p["connectorId"])
        if evse is None:
            return {"status": "NotSupported"}
        return {"status": await evse.unlock()}

    async def _on_data_transfer(self, p: dict) -> dict:
        if p["vendorId"] != self.vendor:
            return {"status": "UnknownVendorId"}
        return {"status": "UnknownMessageId"}

    async def _on_clear_cache(self, p: dict) -> dict:
        self.storage.auth_cache_clear()
        return {"status": "Accepted"}

    async def _on_get_local_list_version(self, p: dict) -> dict:
        if self.keys.get("LocalAuthListEnabled") is False:
            return {"listVersion": -1}
        return {"listVersion": self.storage.local_list_version()}

    async def _on_send_local_list(self, p: dict) -> dict:
        """Full or differential update, all of it with its version or nothing (1.6 5.15)."""
        if self.keys.get("LocalAuthListEnabled") is False:
            return {"status": "NotSupported"}
        entries: dict[str, dict | None] = {}
        items = p.get("localAuthorizationList") or []
        if len(items) > self.keys["SendLocalListMaxLength"]:
            return {"status": "Failed"}
        for item in items:
            if item["idTag"] in entries:
                return {"status": "Failed"}  # "idTags ... MUST be unique" (6.41)
            entries[item["idTag"]] = item.get("idTagInfo")
        version = p["listVersion"]
        try:
            if p["updateType"] == "Full":
                if any(v is None for v in entries.values()):
                    return {"status": "Failed"}  # idTagInfo is required in a full update
                if len(entries) > self.keys["LocalAuthListMaxLength"]:
                    return {"status": "Failed"}
                self.storage.local_list_replace(version, entries)  # type: ignore[arg-type]
            else:
                if version <= self.storage.local_list_version():
                    return {"status": "VersionMismatch"}
                added = sum(1 for k, v in entries.items()
                            if v is not None and self.storage.local_list_get(k) is None)
                removed = sum(1 for k, v in entries.items()
                              if v is None and self.storage.local_list_get(k) is not None)
                if (self.storage.local_list_count() + added - removed
                        > self.keys["LocalAuthListMaxLength"]):
                    return {"status": "Failed"}
                self.storage.local_list_apply(version, entries)
        except StorageError as exc:
            log.error("local authorization list not updated: %s", exc)
            return {"status": "Failed"}
        return {"status": "Accepted"}

    async def _on_trigger(self, p: dict) -> dict:
        what = p["requestedMessage"]
        connector_id = p.get("connectorId")
        if what not in TRIGGERABLE:
            return {"status": "NotImplemented"}
        if connector_id is not None and connector_id != 0 and \
                connector_id not in self.station.evses:
            return {"status": "Rejected"}
        self.spawn(self._triggered(what, connector_id), f"v16-trigger-{what}")
        return {"status": "Accepted"}

    async def _triggered(self, what: str, connector_id: int | None) -> None:
        # The triggered message follows the TriggerMessage.conf: let the answer go out first.
        rpc = self.rpc
        if rpc is not None:
            await rpc.drain(timeout=5.0)
        if what == "BootNotification":
            payload: dict[str, Any] = {"chargePointVendor": self.vendor,
                                       "chargePointModel": self.model,
                                       "firmwareVersion": self.firmware_version}
            if self.serial_number:
                payload["chargePointSerialNumber"] = self.serial_number
            try:
                res = await self._call("BootNotification", payload)
                self._sync_clock(res.get("currentTime"))
            except CallFailed as exc:
                log.info("triggered BootNotification: %s", exc)
        elif what == "Heartbeat":
            await self._send_quiet("Heartbeat", {})
        elif what == "StatusNotification":
            if connector_id in (None, 0):
                self._queue_station_status()
            targets = ([self.station.evses[connector_id]] if connector_id
                       else list(self.station.evses.values()))
            for evse in targets:
                self._queue_status(evse.snapshot(), self._fault_of(evse.id))
        elif what == "MeterValues":
            targets = ([self.station.evses[connector_id]] if connector_id
                       else list(self.station.evses.values()))
            for evse in targets:
                if evse.reading is None or not self.clock.trustworthy:
                    continue
                values = sampled_values(evse.reading, self.keys["MeterValuesSampledData"],
                                        "Trigger", evse.hw.ev.current_limit)
                mv: dict[str, Any] = {"connectorId": evse.id, "meterValue": [
                    {"timestamp": self.clock.now_iso(), "sampledValue": values}]}
                tx = evse.tx
                if tx is not None and tx.remote_id is not None:
                    mv["transactionId"] = int(tx.remote_id)
                await self._send_quiet("MeterValues", mv)
        elif what == "DiagnosticsStatusNotification":
            await self._send_quiet("DiagnosticsStatusNotification", {"status": "Idle"})
        elif what == "FirmwareStatusNotification":
            await self._send_quiet("FirmwareStatusNotification", {"status": "Idle"})


_V16_REASONS = {"EmergencyStop", "EVDisconnected", "HardReset", "Local", "Other", "PowerLoss",
                "Reboot", "Remote", "SoftReset", "UnlockCommand", "DeAuthorized"}

__all__ = ["V16Adapter", "OcppCallError"]
