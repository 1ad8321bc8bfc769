"""OCPP 2.0.1 adapter: maps the version-neutral core to 2.0.1 messages and back.

The core reports session milestones and state changes; this adapter turns them into the
2.0.1 vocabulary: TransactionEvent Started/Updated/Ended with trigger reasons and charging
states, StatusNotification per connector, NotifyEvent for hardware faults, and the device
model behind GetVariables / SetVariables / reports.

Transaction messages, security events and fault events are committed to the durable outbox
together with the state change that caused them (the core calls ``transaction_started`` /
``transaction_ended`` inside its storage transaction), each TransactionEvent with a seqNo
taken from the journal in that same commit, so numbers are gap-free across power cuts.

Charging-state changes are reported once the core has settled: a plug-in makes the EV switch
from B to C a few milliseconds later, and reporting every intermediate state would flood the
CSMS with Updated events nobody needs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from agent.clock import Clock, iso, parse_iso
from agent.core.evse import EvseController
from agent.core.model import (
    AuthResult,
    ConnectorStatus,
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
from agent.ocpp.v201.device_model import (
    MEASURANDS_201,
    NETWORK_SLOTS,
    DeviceModel,
    EvseInfo,
    LiveValues,
    StationInfo,
    VarDef,
    split_report,
    standard_variables,
)
from agent.storage import OutboxItem, Storage
from hal.interfaces import FaultKind, MeterReading

log = logging.getLogger("cp_agent.v201")

TOKEN_TYPES = frozenset({"Central", "eMAID", "ISO14443", "ISO15693", "KeyCode", "Local",
                         "MacAddress", "NoAuthorization"})

# Which device-model component and variable reports a hardware fault (NotifyEvent).
FAULT_COMPONENT: dict[FaultKind, tuple[str, str]] = {
    FaultKind.METER: ("FiscalMetering", "Problem"),
    FaultKind.WELDED: ("PowerContactor", "Problem"),
    FaultKind.CONTACTOR_FAILED: ("PowerContactor", "Problem"),
    FaultKind.PILOT: ("CPPWMController", "Problem"),
    FaultKind.READER: ("TokenReader", "Problem"),
    FaultKind.LOCK: ("ConnectorPlugRetentionLock", "Problem"),
    FaultKind.EV_BOARD: ("Controller", "Problem"),
    FaultKind.OVER_CURRENT: ("OverCurrentProtection", "Active"),
    FaultKind.OVER_VOLTAGE: ("ElectricalFeed", "Problem"),
    FaultKind.UNDER_VOLTAGE: ("ElectricalFeed", "Problem"),
    FaultKind.OVER_TEMPERATURE: ("TemperatureSensor", "Active"),
    FaultKind.GROUND_FAILURE: ("RCD", "Tripped"),
    FaultKind.INTERNAL: ("Controller", "Problem"),
}

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
}
DEAUTH_TRIGGER = {"Local": "StopAuthorized", "Remote": "RemoteStop",
                  "DeAuthorized": "Deauthorized"}

TRIGGERABLE = ("BootNotification", "Heartbeat", "StatusNotification", "MeterValues",
               "TransactionEvent", "LogStatusNotification", "FirmwareStatusNotification")

# Requests of features this station does not offer, answered with the status the spec gives
# for "not supported / nothing there" instead of a CALLERROR, so a CSMS gets a usable answer.
UNSUPPORTED_ANSWERS: dict[str, dict] = {
    "CancelReservation": {"status": "Rejected"},
    "ReserveNow": {"status": "Rejected"},
    "SetChargingProfile": {"status": "Rejected",
                           "statusInfo": {"reasonCode": "UnsupportedRequest"}},
    "GetChargingProfiles": {"status": "NoProfiles"},
    "ClearChargingProfile": {"status": "Unknown"},
    "GetCompositeSchedule": {"status": "Rejected",
                             "statusInfo": {"reasonCode": "UnsupportedRequest"}},
    "SetDisplayMessage": {"status": "Rejected"},
    "GetDisplayMessages": {"status": "Unknown"},
    "ClearDisplayMessage": {"status": "Unknown"},
    "GetLog": {"status": "Rejected"},
    "UpdateFirmware": {"status": "Rejected"},
    "PublishFirmware": {"status": "Rejected"},
    "UnpublishFirmware": {"status": "NoFirmware"},
    "GetInstalledCertificateIds": {"status": "NotFound"},
    "DeleteCertificate": {"status": "NotFound"},
    "InstallCertificate": {"status": "Rejected"},
    "CertificateSigned": {"status": "Rejected"},
    "CustomerInformation": {"status": "Rejected"},
    "SetMonitoringBase": {"status": "NotSupported"},
    "SetMonitoringLevel": {"status": "Rejected"},
    "GetMonitoringReport": {"status": "NotSupported"},
    "CostUpdated": {},
}

ENDED_SAMPLES_MAX = 200  # bounded: a week-long session must not grow RAM or the Ended message


def _fmt(value: float) -> float:
    """Numbers as a meter shows them: no float noise, integers where there is no fraction."""
    rounded = round(value, 3)
    return int(rounded) if rounded == int(rounded) else rounded


def sampled_values(reading: MeterReading, measurands: list[str], context: str,
                   offered_a: float | None = None) -> list[dict]:
    """2.0.1 SampledValue entries (numbers, unitOfMeasure) for what the meter can give."""
    out: list[dict] = []

    def add(value: float, measurand: str, unit: str, **extra: str) -> None:
        item = {"value": _fmt(value), "context": context, "measurand": measurand,
                "unitOfMeasure": {"unit": unit}}
        item.update(extra)
        out.append(item)

    for m in measurands:
        if m == "Energy.Active.Import.Register":
            add(reading.energy_import_wh, m, "Wh", location="Outlet")
        elif m == "Energy.Active.Export.Register":
            add(reading.energy_export_wh, m, "Wh", location="Outlet")
        elif m == "Power.Active.Import":
            add(max(0.0, reading.power_w), m, "W", location="Outlet")
        elif m == "Current.Import":
            for i, a in enumerate(reading.current_a):
                add(a, m, "A", phase=f"L{i + 1}", location="Outlet")
        elif m == "Voltage":
            for i, volts in enumerate(reading.voltage_v):
                add(volts, m, "V", phase=f"L{i + 1}-N", location="Outlet")
        elif m == "Current.Offered" and offered_a is not None:
            add(offered_a, m, "A", location="Outlet")
        elif m == "Frequency" and reading.frequency_hz is not None:
            add(reading.frequency_hz, m, "Hz")
        elif m == "SoC" and reading.soc_percent is not None:
            add(reading.soc_percent, m, "Percent", location="EV")
    return out


class V201Adapter(AdapterBase):
    """The 2.0.1 personality of the station. One instance lives as long as the agent."""

    version = "2.0.1"
    subprotocol = "ocpp2.0.1"
    # What this adapter puts in the outbox; anything else found there was queued for another
    # OCPP version and cannot be sent on a 2.0.1 connection.
    OUTBOX_ACTIONS = frozenset({"TransactionEvent", "SecurityEventNotification", "NotifyEvent"})

    def __init__(self, *, station: Station, storage: Storage, clock: Clock,
                 keys: ConfigurationKeys, station_id: str, vendor: str, model: str,
                 serial_number: str | None, firmware_version: str, security_profile: int = 0,
                 message_timeout_s: float = 30.0, evses: list[EvseInfo] | None = None,
                 defaults: dict[str, Any] | None = None,
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
        if evses is None:
            evses = [EvseInfo(e.id, e.hw.phases, e.max_current_a * 230.0 * e.hw.phases)
                     for e in station.evses.values()]
        info = StationInfo(identity=station_id, vendor=vendor, model=model,
                           serial_number=serial_number, firmware_version=firmware_version,
                           security_profile=security_profile,
                           message_timeout_s=int(message_timeout_s), evses=evses)
        live = LiveValues(availability=self._availability, problem=self._problem,
                          power_w=self._power_w, now_iso=clock.now_iso,
                          local_list_entries=storage.local_list_count)
        self.dm = DeviceModel(storage, keys, standard_variables(info, live), defaults)
        self.dm.listeners.append(self._variable_changed)
        self.keys.listeners.append(self._key_changed)
        self.rpc: RpcSession | None = None
        self.registration: str | None = None
        self.accepted = asyncio.Event()
        self._boot_wakeup = asyncio.Event()
        self._heartbeat_wakeup = asyncio.Event()
        self._sampling_changed = asyncio.Event()
        self._status: dict[int, dict] = {}  # StatusNotification per EVSE, latest not yet sent
        self._status_queued: dict[int, str] = {}  # last connectorStatus queued per EVSE
        self._status_wakeup = asyncio.Event()
        self._init_tasks()
        self._state_sent: dict[str, str] = {}  # last chargingState reported, per tx
        self._pending_trigger: dict[int, str] = {}  # trigger reason awaiting the settle
        self._last_event: dict[int, str] = {}  # last session event per EVSE
        self._settling: set[int] = set()
        self._ended_samples: dict[str, list[dict]] = {}
        self._connected_once = False
        self._offline_since: float | None = None
        self._reset_scheduled = False
        self._startup_reason: str | None = None
        self.outbox = OutboxSender(storage, clock, prepare=self._prepare_outbox,
                                   on_result=self._outbox_result,
                                   attempts=lambda: self.keys["TransactionMessageAttempts"],
                                   retry_interval=lambda: self.keys[
                                       "TransactionMessageRetryInterval"],
                                   on_done=self._outbox_done)
        handlers: dict[str, Callable[[dict], Awaitable[dict]]] = {
            "GetVariables": self._on_get_variables,
            "SetVariables": self._on_set_variables,
            "GetBaseReport": self._on_get_base_report,
            "GetReport": self._on_get_report,
            "Reset": self._on_reset,
            "SetNetworkProfile": self._on_set_network_profile,
            "RequestStartTransaction": self._on_request_start,
            "RequestStopTransaction": self._on_request_stop,
            "GetTransactionStatus": self._on_get_transaction_status,
            "UnlockConnector": self._on_unlock,
            "TriggerMessage": self._on_trigger,
            "ChangeAvailability": self._on_change_availability,
            "ClearCache": self._on_clear_cache,
            "GetLocalListVersion": self._on_get_local_list_version,
            "SendLocalList": self._on_send_local_list,
            "DataTransfer": self._on_data_transfer,
            "SetVariableMonitoring": self._on_set_variable_monitoring,
            "ClearVariableMonitoring": self._on_clear_variable_monitoring,
        }
        for action, answer in UNSUPPORTED_ANSWERS.items():
            handlers[action] = self._fixed(answer)
        self.handlers: dict[str, Callable[[dict], Awaitable[dict]]] = {
            action: self._guarded(action, fn) for action, fn in handlers.items()}

    # ------------------------------------------------------------------ wiring

    def attach(self) -> None:
        """Make the core follow 2.0.1 rules: TxStartPoint / TxStopPoint, EVConnectionTimeOut."""
        for evse in self.station.evses.values():
            evse.connection_timeout_s = lambda: float(self.keys["ConnectionTimeOut"])
            evse.start_points = self._start_points
            evse.stop_points = self._stop_points

    @property
    def active(self) -> bool:
        """True while the core reports to this adapter (the last negotiated version)."""
        return self.station.observer is self

    def _points(self, variable: str) -> frozenset[TxPoint]:
        return frozenset(TxPoint(p) for p in self.dm.members("TxCtrlr", variable)
                         if p in TxPoint._value2member_map_)

    def _start_points(self) -> frozenset[TxPoint]:
        return self._points("TxStartPoint") or frozenset({TxPoint.POWER_PATH_CLOSED})

    def _stop_points(self) -> frozenset[TxPoint]:
        points = set(self._points("TxStopPoint"))
        if self.keys["StopTransactionOnEVSideDisconnect"]:
            # E10: an EV-side unplug ends the transaction whatever TxStopPoint says.
            points.add(TxPoint.EV_CONNECTED)
        return frozenset(points) or frozenset({TxPoint.POWER_PATH_CLOSED})

    def _key_changed(self, name: str, value: Any) -> None:
        if name == "HeartbeatInterval":
            self._heartbeat_wakeup.set()
        elif name in ("MeterValueSampleInterval", "ClockAlignedDataInterval"):
            self._sampling_changed.set()

    def _variable_changed(self, d: VarDef, value: str) -> None:
        if d.name in ("TxEndedInterval", "Interval", "TxUpdatedInterval"):
            self._sampling_changed.set()
        if d.component == "SecurityCtrlr" and d.name == "BasicAuthPassword":
            self._security_event("ReconfigurationOfSecurityParameters",
                                 "BasicAuthPassword changed")

    async def start(self, *, recover: bool = True) -> None:
        """Agent start-up: close what a power cut left open, start samplers, note the boot."""
        if recover:
            self._recover()
        self._startup_reason = self._boot_reason()  # reported after the first 2.0.1 boot
        for evse in self.station.evses.values():
            self.spawn(self._periodic(evse.id, "SampledDataCtrlr", "TxUpdatedInterval",
                                      self._sample_updated), f"v201-updated-{evse.id}")
            self.spawn(self._periodic(evse.id, "SampledDataCtrlr", "TxEndedInterval",
                                      self._sample_ended), f"v201-ended-{evse.id}")
        self.spawn(self._aligned("Interval", self._aligned_send), "v201-aligned")
        self.spawn(self._aligned("TxEndedInterval", self._aligned_collect), "v201-aligned-end")

    # ------------------------------------------------------------------ session (per link)

    async def run_session(self, rpc: RpcSession) -> None:
        """Everything one websocket connection does, until it drops (then we are cancelled)."""
        self.rpc = rpc
        self.accepted.clear()
        self.registration = None
        try:
            await self._boot()
            if self._startup_reason is not None:
                reason, self._startup_reason = self._startup_reason, None
                self._security_event(
                    "StartupOfTheDevice" if reason == "PowerUp" else "ResetOrReboot",
                    f"boot reason {reason}")
            self._statuses_after_boot()
            self.spawn(self._status_sender(), "v201-status", session=True)
            self.spawn(self._heartbeat(), "v201-heartbeat", session=True)
            self.spawn(self.outbox.run(rpc), "v201-outbox", session=True)
            await asyncio.Event().wait()
        finally:
            await self._end_session_tasks()
            self.accepted.clear()
            self.rpc = None
            self.registration = None  # offline: the offline rules apply, not the boot answer
            self._offline_since = self.clock.monotonic()

    def _boot_reason(self) -> str:
        return self.storage.get_setting("v201.boot_reason") or "PowerUp"

    def _boot_payload(self, reason: str) -> dict:
        station: dict[str, Any] = {"model": self.model[:20], "vendorName": self.vendor[:50],
                                   "firmwareVersion": self.firmware_version[:50]}
        if self.serial_number:
            station["serialNumber"] = self.serial_number[:25]
        return {"chargingStation": station, "reason": reason}

    async def _boot(self) -> None:
        reason = self._boot_reason()
        while True:
            assert self.rpc is not None
            self._boot_wakeup.clear()
            try:
                res = await self.rpc.call("BootNotification", self._boot_payload(reason))
            except CallTimeout:
                continue
            except ConnectionLost:
                raise
            except CallFailed as exc:
                log.warning("BootNotification failed (%s); retrying in 60 s", exc)
                await self._sleep_or(60, self._boot_wakeup)
                continue
            self.registration = res["status"]
            self._sync_clock(res.get("currentTime"))
            interval = int(res.get("interval", 0))
            if self.registration == "Accepted":
                if interval > 0:
                    self.keys.set_internal("HeartbeatInterval", interval)
                self.storage.delete_setting("v201.boot_reason")
                self.accepted.set()
                log.info("BootNotification accepted (heartbeat %s s)",
                         self.keys["HeartbeatInterval"])
                return
            wait = interval if interval > 0 else 60
            log.info("BootNotification %s; next attempt in %s s", self.registration, wait)
            await self._sleep_or(wait, self._boot_wakeup)
            if self._boot_wakeup.is_set():
                reason = "Triggered"  # TriggerMessage(BootNotification) while not accepted

    def _sync_clock(self, current_time: str | None) -> None:
        if not current_time:
            return
        try:
            delta = self.clock.sync(parse_iso(current_time))
        except ValueError:
            log.warning("CSMS sent an unreadable currentTime %r", current_time)
            return
        threshold = self.dm.integer("ClockCtrlr", "TimeAdjustmentReportingThreshold")
        if threshold > 0 and abs(delta) > threshold:
            log.info("clock corrected by %+.1f s to the CSMS time", delta)
            self._security_event("SettingSystemTime", f"clock corrected by {delta:+.1f} s")

    async def _call(self, action: str, payload: dict, *, pending_ok: bool = False) -> dict:
        """Send a CALL; before acceptance only what the CSMS asked for (pending_ok)."""
        rpc = self.rpc
        allowed = self.accepted.is_set() or (pending_ok and self.registration == "Pending")
        if rpc is None or not allowed:
            raise ConnectionLost(f"{action}: not connected or not accepted")
        return await rpc.call(action, payload)

    async def _send_quiet(self, action: str, payload: dict, *, pending_ok: bool = False) -> None:
        """A message that is not transaction-related: sent once if online, never queued."""
        try:
            await self._call(action, payload, pending_ok=pending_ok)
        except CallFailed as exc:
            log.info("%s not delivered: %s", action, exc)

    # ------------------------------------------------------------------ handler helpers

    def _guarded(self, action: str,
                 fn: Callable[[dict], Awaitable[dict]]) -> Callable[[dict], Awaitable[dict]]:
        async def handler(payload: dict) -> dict:
            # B03.FR.08: while Rejected, every CSMS request is refused with SecurityError.
            if self.registration == "Rejected":
                raise OcppCallError("SecurityError",
                                    f"{action} refused: BootNotification was Rejected")
            return await fn(payload)
        return handler

    @staticmethod
    def _fixed(answer: dict) -> Callable[[dict], Awaitable[dict]]:
        async def handler(payload: dict) -> dict:
            return dict(answer)
        return handler

    async def _after_answer(self) -> None:
        """Let the CALLRESULT of the handler that spawned us go out before what it caused."""
        rpc = self.rpc
        if rpc is not None:
            await rpc.drain(timeout=5.0)

    # ------------------------------------------------------------------ status

    def _connector_status(self, evse: EvseController) -> str:
        st = evse.status
        if st == ConnectorStatus.FAULTED:
            return "Faulted"
        if st == ConnectorStatus.UNAVAILABLE:
            return "Unavailable"
        if evse.ev_connected:
            return "Occupied"
        if st == ConnectorStatus.RESERVED:
            return "Reserved"
        if not evse.operative:
            return "Unavailable"
        return "Available"

    def _availability(self, evse_id: int | None) -> str:
        if evse_id is None:
            evses = list(self.station.evses.values())
            return "Unavailable" if evses and all(not e.operative for e in evses) \
                else "Available"
        return self._connector_status(self.station.evses[evse_id])

    def _problem(self, component: str, evse_id: int | None) -> bool:
        if evse_id is None:
            if component == "TokenReader":
                return FaultKind.READER in self.station.station_faults
            return bool(self.station.station_faults) or any(
                e.blocking_fault is not None for e in self.station.evses.values())
        evse = self.station.evses.get(evse_id)
        if evse is None:
            return False
        if component == "EVSE":
            return bool(evse.faults)
        return any(FAULT_COMPONENT.get(k, ("",))[0] == component for k in evse.faults)

    def _power_w(self, evse_id: int) -> float:
        reading = self.station.evses[evse_id].reading
        return max(0.0, reading.power_w) if reading is not None else 0.0

    def _queue_status(self, evse_id: int, *, force: bool = False) -> None:
        evse = self.station.evses[evse_id]
        status = self._connector_status(evse)
        if not force and self._status_queued.get(evse_id) == status:
            return
        self._status_queued[evse_id] = status
        self._status.pop(evse_id, None)
        self._status[evse_id] = {"timestamp": self.clock.stamp(), "connectorStatus": status,
                                 "evseId": evse_id, "connectorId": evse.connector_id}
        self._status_wakeup.set()

    def _statuses_after_boot(self) -> None:
        """B01: every connector after a boot; after a short outage only what changed."""
        threshold = self.dm.integer("OCPPCommCtrlr", "OfflineThreshold")
        long_outage = (self._offline_since is None
                       or self.clock.monotonic() - self._offline_since > threshold)
        force = not self._connected_once or long_outage
        self._connected_once = True
        for evse_id in self.station.evses:
            self._queue_status(evse_id, force=force)

    async def _status_sender(self) -> None:
        await self.accepted.wait()
        while True:
            await self._status_wakeup.wait()
            self._status_wakeup.clear()
            while self._status:
                evse_id = next(iter(self._status))
                payload = self._status.pop(evse_id)
                try:
                    await self._call("StatusNotification", self._resolved(payload))
                except (CallErrorReceived, ResponseInvalid) as exc:
                    log.warning("StatusNotification refused: %s", exc)
                except (CallTimeout, ConnectionLost):
                    self._status.setdefault(evse_id, payload)
                    raise

    # ------------------------------------------------------------------ CoreObserver

    def status_changed(self, snap: EvseSnapshot, fault: FaultKind | None) -> None:
        self._queue_status(snap.evse_id)
        if self.station.evses[snap.evse_id].tx is not None:
            self._schedule_settle(snap.evse_id)

    def fault_changed(self, evse_id: int, kind: FaultKind, active: bool, detail: str) -> None:
        """N: a hardware fault raised or cleared becomes a NotifyEvent (HardWiredNotification)."""
        component, variable = FAULT_COMPONENT.get(kind, ("Controller", "Problem"))
        comp: dict[str, Any] = {"name": component}
        if evse_id == 0:
            if component != "TokenReader":
                comp = {"name": "ChargingStation"}
        else:
            comp["evse"] = {"id": evse_id}
            if component == "ConnectorPlugRetentionLock":
                comp["evse"]["connectorId"] = 1
        event: dict[str, Any] = {
            "eventId": self._next_event_id(), "timestamp": self.clock.stamp(),
            "trigger": "Delta", "actualValue": "true" if active else "false",
            "techCode": str(kind)[:50], "eventNotificationType": "HardWiredNotification",
            "component": comp, "variable": {"name": variable},
        }
        if detail:
            event["techInfo"] = detail[:500]
        if not active:
            event["cleared"] = True
        if evse_id:
            tx = self.station.evses[evse_id].tx if evse_id in self.station.evses else None
            if tx is not None:
                event["transactionId"] = tx.local_id
        self.storage.outbox_put("NotifyEvent", {"generatedAt": self.clock.stamp(),
                                                "seqNo": 0, "eventData": [event]})
        self.outbox.wake()

    def _next_event_id(self) -> int:
        n = int(self.storage.get_setting("v201.event_id") or "0") + 1
        self.storage.set_setting("v201.event_id", str(n))
        return n

    def session_event(self, evse_id: int, event: str, detail: dict) -> None:
        evse = self.station.evses.get(evse_id)
        if evse is None:
            return
        self._last_event[evse_id] = event
        tx = evse.tx
        if tx is None:
            return
        s = evse.session
        if event == "ev_connected":
            # The EV came (back) to a running transaction: report the plug at once, before
            # the EV starts drawing, so the CSMS sees CablePluggedIn then Charging.
            self._tx_event(tx, "Updated", "CablePluggedIn", charging_state="EVConnected")
        elif event == "authorized":
            remote = s.remote_start_id if s is not None else None
            if remote is not None and tx.remote_start_id is None:
                tx.remote_start_id = remote
                self.storage.tx_update(tx.local_id, remote_start_id=remote)
            self._pending_trigger[evse_id] = "RemoteStart" if remote is not None \
                else "Authorized"
            self._schedule_settle(evse_id)
        elif event == "deauthorized":
            self._pending_trigger[evse_id] = DEAUTH_TRIGGER.get(detail.get("reason", ""),
                                                                "StopAuthorized")
            self._schedule_settle(evse_id)
        elif event == "ev_disconnected":
            self._pending_trigger[evse_id] = "EVCommunicationLost"
            self._schedule_settle(evse_id)
        elif event == "connection_timeout":
            self._pending_trigger[evse_id] = "EVConnectTimeout"
            self._schedule_settle(evse_id)

    def _schedule_settle(self, evse_id: int) -> None:
        if evse_id in self._settling:
            return
        self._settling.add(evse_id)
        self.spawn(self._settle(evse_id), f"v201-settle-{evse_id}")

    async def _settle(self, evse_id: int) -> None:
        """Report the charging state once the EVSE (and the EV's answer to it) has settled."""
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.station.settled(), 1.0)
            evse = self.station.evses[evse_id]
            async with evse.lock:
                self._settling.discard(evse_id)
                self._report_state(evse)
        finally:
            self._settling.discard(evse_id)

    def _report_state(self, evse: EvseController) -> None:
        tx = evse.tx
        trigger = self._pending_trigger.pop(evse.id, None)
        if tx is None or not self.active:
            return
        state = self._charging_state(evse)
        if trigger is None and state == self._charging_state_sent(tx):
            return
        s = evse.session
        with_token = trigger in ("Authorized", "RemoteStart")
        self._tx_event(tx, "Updated", trigger or "ChargingStateChanged", charging_state=state,
                       token=s.token if with_token and s is not None else None,
                       remote_start_id=tx.remote_start_id
                       if trigger == "RemoteStart" else None)

    def _charging_state_sent(self, tx: TxRecord) -> str | None:
        return self._state_sent.get(tx.local_id)

    @staticmethod
    def _charging_state(evse: EvseController) -> str:
        if not evse.ev_connected:
            return "Idle"
        if evse.hw.contactor.commanded_closed and evse.pilot.wants_energy:
            return "Charging"
        s = evse.session
        if s is None or not s.authorized:
            return "EVConnected"
        if evse.hw.ev.current_limit >= evse.min_current_a and not evse.pilot.wants_energy:
            return "SuspendedEV"
        return "SuspendedEVSE"

    def transaction_started(self, tx: TxRecord, snap: EvseSnapshot, trigger: TxPoint) -> None:
        evse = self.station.evses[tx.evse_id]
        s = evse.session
        remote = s.remote_start_id if s is not None else None
        last = self._last_event.get(tx.evse_id)
        if trigger == TxPoint.EV_CONNECTED or (
                trigger == TxPoint.POWER_PATH_CLOSED and last == "ev_connected"):
            reason = "CablePluggedIn"
        elif trigger == TxPoint.ENERGY_TRANSFER:
            reason = "RemoteStart" if remote is not None else "ChargingStateChanged"
        else:
            reason = "RemoteStart" if remote is not None else "Authorized"
        self._pending_trigger.pop(tx.evse_id, None)
        self._ended_samples[tx.local_id] = []
        self._mark_started(tx)
        meter = []
        if snap.reading is not None:
            meter = self._meter_value(snap.reading, self.dm.members(
                "SampledDataCtrlr", "TxStartedMeasurands"), "Transaction.Begin", evse,
                stamp=tx.started_at)
        token = s.token if s is not None and s.authorized else None
        charging = self._charging_state(evse)
        if charging in ("SuspendedEV", "SuspendedEVSE"):
            # The offer went out in this very step: neither the EV nor the contactor has had
            # a chance to answer it. A suspension that lasts is reported by the settle a
            # moment later (E_38: ChargingStateChanged to SuspendedEV).
            charging = "EVConnected"
        self._tx_event(tx, "Started", reason, charging_state=charging,
                       token=token, meter=meter, remote_start_id=remote,
                       timestamp=tx.started_at)

    def transaction_ended(self, tx: TxRecord, reason: StopReason, snap: EvseSnapshot) -> None:
        evse = self.station.evses[tx.evse_id]
        s = evse.session
        self._pending_trigger.pop(tx.evse_id, None)
        trigger = END_TRIGGER.get(reason, "AbnormalCondition")
        stopped = STOPPED_REASON.get(reason, "Other")
        deauth = s.deauth_reason if s is not None else None
        if reason == StopReason.EV_DISCONNECTED and deauth in (
                StopReason.LOCAL, StopReason.REMOTE, StopReason.DEAUTHORIZED):
            stopped = deauth.value  # stopped earlier by a card or the CSMS, ended by the unplug
        self._ensure_started(tx)
        meter = list(self._ended_samples.pop(tx.local_id, []))
        if snap.reading is not None:
            measurands = self.dm.members("SampledDataCtrlr", "TxEndedMeasurands")
            if "Energy.Active.Import.Register" not in measurands:
                measurands = ["Energy.Active.Import.Register", *measurands]
            meter += self._meter_value(snap.reading, measurands, "Transaction.End", evse,
                                       stamp=tx.stopped_at)
        stopper = tx.stopped_by
        token = None
        if reason == StopReason.LOCAL and stopper and stopper != tx.id_token:
            token = Token(stopper, tx.token_type or "ISO14443")  # another card of the group
        self._tx_event(tx, "Ended", trigger, charging_state=self._charging_state(evse),
                       stopped_reason=stopped, meter=meter, timestamp=tx.stopped_at,
                       token=token)
        self._state_sent.pop(tx.local_id, None)
        if self._reset_scheduled and not self.station.any_transaction:
            self.spawn(self._reset("OnIdle"), "v201-scheduled-reset")

    # ------------------------------------------------------------------ transaction events

    def _mark_started(self, tx: TxRecord) -> None:
        tx.reported_as = self.version
        self.storage.tx_update(tx.local_id, reported_as=self.version)

    def _ensure_started(self, tx: TxRecord) -> None:
        """A transaction begun under another OCPP version gets its Started here, once."""
        if tx.reported_as == self.version:
            return
        log.info("transaction %s began under another OCPP version: reporting its start",
                 tx.local_id)
        self._mark_started(tx)
        meter = [{"timestamp": tx.started_at, "sampledValue": [{
            "value": _fmt(tx.meter_start_wh), "context": "Transaction.Begin",
            "measurand": "Energy.Active.Import.Register", "unitOfMeasure": {"unit": "Wh"}}]}]
        token = Token(tx.id_token, tx.token_type or "ISO14443") if tx.id_token else None
        self._tx_event(tx, "Started", "Authorized" if token else "CablePluggedIn",
                       charging_state="EVConnected", token=token, meter=meter,
                       timestamp=tx.started_at, offline=True)

    def _tx_event(self, tx: TxRecord, event_type: str, trigger: str, *,
                  charging_state: str | None = None, token: Token | None = None,
                  meter: list[dict] | None = None, stopped_reason: str | None = None,
                  remote_start_id: int | None = None, timestamp: str | None = None,
                  offline: bool | None = None) -> None:
        """Queue one TransactionEvent with the next seqNo, in one commit."""
        if event_type != "Started":
            self._ensure_started(tx)
        info: dict[str, Any] = {"transactionId": tx.local_id}
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
        if (not self.online) if offline is None else offline:
            payload["offline"] = True
        if token is not None:
            payload["idToken"] = {"idToken": token.id[:36], "type": _token_type(token.type)}
        if meter:
            payload["meterValue"] = meter
        with self.storage.atomic():
            payload["seqNo"] = self.storage.tx_next_seq(tx.local_id)
            self.storage.outbox_put("TransactionEvent", payload, tx_ref=tx.local_id)
        self.outbox.wake()

    def _meter_value(self, reading: MeterReading, measurands: list[str], context: str,
                     evse: EvseController, stamp: str | None = None) -> list[dict]:
        values = sampled_values(reading, [m for m in measurands if m in MEASURANDS_201],
                                context, evse.hw.ev.current_limit)
        if not values:
            return []
        return [{"timestamp": stamp or self.clock.stamp(), "sampledValue": values}]

    # ------------------------------------------------------------------ samplers

    async def _periodic(self, evse_id: int, component: str, variable: str,
                        action: Callable[[EvseController, TxRecord], None]) -> None:
        evse = self.station.evses[evse_id]
        while True:
            interval = self.dm.integer(component, variable)
            self._sampling_changed.clear()
            await self._sleep_or(interval if interval > 0 else 5, self._sampling_changed)
            if self._sampling_changed.is_set():
                continue
            tx = evse.tx
            if interval > 0 and tx is not None and evse.reading is not None and self.active:
                action(evse, tx)

    def _sample_updated(self, evse: EvseController, tx: TxRecord) -> None:
        assert evse.reading is not None
        meter = self._meter_value(evse.reading, self.dm.members(
            "SampledDataCtrlr", "TxUpdatedMeasurands"), "Sample.Periodic", evse)
        if meter:
            self._tx_event(tx, "Updated", "MeterValuePeriodic", meter=meter)

    def _sample_ended(self, evse: EvseController, tx: TxRecord) -> None:
        assert evse.reading is not None
        self._collect(tx, self._meter_value(evse.reading, self.dm.members(
            "SampledDataCtrlr", "TxEndedMeasurands"), "Sample.Periodic", evse))

    def _collect(self, tx: TxRecord, meter: list[dict]) -> None:
        bucket = self._ended_samples.setdefault(tx.local_id, [])
        if meter and len(bucket) < ENDED_SAMPLES_MAX:
            bucket.extend(meter)

    async def _aligned(self, variable: str,
                       action: Callable[[datetime], None]) -> None:
        """Clock-aligned work on the wall-clock boundaries (counted from midnight UTC)."""
        while True:
            interval = self.dm.integer("AlignedDataCtrlr", variable)
            self._sampling_changed.clear()
            if interval <= 0 or not self.clock.trustworthy:  # no boundaries without the time
                await self._sleep_or(5, self._sampling_changed)
                continue
            now = self.clock.wall()
            nxt = math.floor(now / interval + 1) * interval
            await self._sleep_or(max(0.05, nxt - now), self._sampling_changed)
            if self._sampling_changed.is_set() or not self.active:
                continue
            action(datetime.fromtimestamp(nxt, UTC))

    def _aligned_send(self, stamp: datetime) -> None:
        measurands = self.dm.members("AlignedDataCtrlr", "Measurands")
        if self.dm.flag("AlignedDataCtrlr", "SendDuringIdle") and self.station.any_transaction:
            return  # J06: aligned data only while idle
        for evse in self.station.evses.values():
            if evse.reading is None:
                continue
            meter = self._meter_value(evse.reading, measurands, "Sample.Clock", evse,
                                      stamp=iso(stamp))
            if not meter:
                continue
            tx = evse.tx
            if tx is not None:
                self._tx_event(tx, "Updated", "MeterValueClock", meter=meter)
            elif self.online:
                self.spawn(self._send_quiet("MeterValues", {"evseId": evse.id,
                                                            "meterValue": meter}),
                           "v201-aligned-send")

    def _aligned_collect(self, stamp: datetime) -> None:
        measurands = self.dm.members("AlignedDataCtrlr", "TxEndedMeasurands")
        for evse in self.station.evses.values():
            tx = evse.tx
            if tx is not None and evse.reading is not None:
                self._collect(tx, self._meter_value(evse.reading, measurands, "Sample.Clock",
                                                    evse, stamp=iso(stamp)))

    # ------------------------------------------------------------------ recovery

    def _recover(self) -> None:
        """Close, exactly once, every transaction a power cut or crash left open (E PowerLoss)."""
        for tx in self.storage.tx_open():
            meter = tx.last_meter_wh
            # Stamped when power was last seen on (the last journalled reading), not now:
            # the restart time would bill the outage.
            now = tx.last_meter_at or tx.started_at
            log.warning("transaction %s was open at start-up: ending it (PowerLoss, %.1f Wh)",
                        tx.local_id, meter)
            with self.storage.atomic():
                self._ensure_started(tx)
                self.storage.tx_close(tx.local_id, now, StopReason.POWER_LOSS.value, meter)
                tx.meter_stop_wh, tx.stopped_at, tx.closed = meter, now, True
                end = [{"timestamp": tx.last_meter_at or now, "sampledValue": [{
                    "value": _fmt(meter), "context": "Transaction.End",
                    "measurand": "Energy.Active.Import.Register",
                    "unitOfMeasure": {"unit": "Wh"}}]}]
                self._tx_event(tx, "Ended", "AbnormalCondition", charging_state="Idle",
                               stopped_reason="PowerLoss", meter=end, timestamp=now,
                               offline=True)

    # ------------------------------------------------------------------ outbox hooks

    def _prepare_outbox(self, item: OutboxItem) -> dict | None:
        """Real times for deferred stamps; None drops what no 2.0.1 CSMS can take."""
        if item.action not in self.OUTBOX_ACTIONS:
            log.error("%s #%s was queued for another OCPP version; dropping it", item.action,
                      item.id)
            return None
        payload, held = self.clock.resolve_payload(item.payload)
        if held:
            raise Hold()  # recorded before the clock was known: wait for the CSMS time
        return payload

    def _resolved(self, payload: dict) -> dict:
        """A message sent directly: a deferred stamp that cannot be resolved becomes now."""
        out, held = self.clock.resolve_payload(payload)
        if held and "timestamp" in out:
            out = {**out, "timestamp": self.clock.now_iso()}
        return out

    def _outbox_result(self, item: OutboxItem, result: dict) -> None:
        if item.action != "TransactionEvent" or item.tx_ref is None:
            return
        info = result.get("idTokenInfo")
        token = item.payload.get("idToken")
        if info is None or token is None:
            return
        self._cache_put(token["idToken"], info)
        evse = self.station.find_tx(local_id=item.tx_ref)
        if info.get("status") != "Accepted" and evse is not None:
            log.warning("transaction %s: idToken %s", item.tx_ref, info.get("status"))
            self.spawn(self._invalid_id(evse, item.tx_ref), "v201-invalid-id")

    def _outbox_done(self, item: OutboxItem) -> None:
        if item.action == "TransactionEvent" and item.tx_ref is not None and \
                item.payload.get("eventType") == "Ended":
            if self.storage.tx_outbox_pending(item.tx_ref) == 0:
                self.storage.tx_forget(item.tx_ref)

    def _security_event(self, kind: str, info: str = "") -> None:
        """Security events are queued durably: the critical ones must reach the CSMS."""
        payload = {"type": kind, "timestamp": self.clock.stamp()}
        if info:
            payload["techInfo"] = info[:255]
        self.storage.outbox_put("SecurityEventNotification", payload)
        self.outbox.wake()

    # ------------------------------------------------------------------ authorization

    def _cache_put(self, id_token: str, info: dict) -> None:
        if not self.keys["AuthorizationCacheEnabled"]:
            return
        lifetime = self.dm.integer("AuthCacheCtrlr", "LifeTime")
        expires = self.clock.wall() + lifetime if lifetime > 0 else None
        given = info.get("cacheExpiryDateTime")
        if given:
            try:
                stamp = parse_iso(given).timestamp()
                expires = stamp if expires is None else min(expires, stamp)
            except ValueError:
                pass
        at = iso(datetime.fromtimestamp(expires, UTC)) if expires is not None else None
        self.storage.auth_cache_put(id_token, info, at)

    def _local_lookup(self, token: Token) -> AuthResult | None:
        """Local list first, then the cache; None when neither knows the token."""
        if self.keys["LocalAuthListEnabled"]:
            entry = self.storage.local_list_get(token.id)
            if entry is not None:
                return self._result(entry, "local_list")
        if self.keys["AuthorizationCacheEnabled"]:
            entry = self.storage.auth_cache_get(token.id)
            if entry is not None:
                return self._result(entry, "cache")
        return None

    def _result(self, info: dict, source: str) -> AuthResult:
        status = info.get("status", "Invalid")
        expiry = info.get("cacheExpiryDateTime") or info.get("expiryDate")
        if status == "Accepted" and expiry:
            try:
                if parse_iso(expiry).timestamp() < self.clock.wall():
                    status = "Expired"
            except ValueError:
                pass
        group = info.get("groupIdToken")
        parent = group.get("idToken") if isinstance(group, dict) else info.get("parentIdTag")
        return AuthResult(status, parent=parent, source=source, expires_at=expiry)

    async def authorize(self, token: Token, evse_id: int | None) -> AuthResult:
        """Authorizer for the core: local sources, online Authorize, offline rules (C01-C15)."""
        if self.registration in ("Pending", "Rejected") and not self.dm.flag(
                "TxCtrlr", "TxBeforeAcceptedEnabled"):
            log.info("token %s refused: the CSMS has not accepted this station yet", token.id)
            return AuthResult("Invalid", source="not_accepted")
        local = self._local_lookup(token)
        if local is not None and local.accepted and self.keys["LocalPreAuthorize"]:
            return local  # no round trip: the contactor can close at once
        remote_disabled = self.dm.flag("AuthCtrlr", "DisableRemoteAuthorization")
        if self.online and not remote_disabled:
            if local is not None and not local.accepted and self._post_authorize_off(local):
                return local
            try:
                res = await self._call("Authorize", {"idToken": {
                    "idToken": token.id[:36], "type": _token_type(token.type)}})
            except CallFailed as exc:
                log.warning("Authorize not answered: %s", exc)
            else:
                info = res.get("idTokenInfo", {"status": "Invalid"})
                self._cache_put(token.id, info)
                return self._result(info, "online")
        if self.online and remote_disabled:
            return local if local is not None else AuthResult("Unknown", source="local")
        # Offline.
        if local is not None and self.keys["LocalAuthorizeOffline"]:
            return local
        if local is None and self.keys["AllowOfflineTxForUnknownId"]:
            return AuthResult("Accepted", source="offline_unknown")
        return AuthResult(local.status if local else "Unknown", source="offline")

    def _post_authorize_off(self, local: AuthResult) -> bool:
        if local.source == "cache":
            return self.dm.flag("AuthCacheCtrlr", "DisablePostAuthorize")
        return self.dm.flag("LocalAuthListCtrlr", "DisablePostAuthorize")

    # ------------------------------------------------------------------ B: provisioning

    async def _on_get_variables(self, p: dict) -> dict:
        items = p["getVariableData"]
        limit = self.dm.integer("DeviceDataCtrlr", "ItemsPerMessage", "GetVariables")
        results = []
        for i, item in enumerate(items):
            if limit > 0 and i >= limit:
                # B06.FR.05: never more answers than ItemsPerMessageGetVariables.
                rejected = {"attributeStatus": "Rejected", "component": item["component"],
                            "variable": item["variable"],
                            "attributeStatusInfo": {"reasonCode": "TooManyElements"}}
                if "attributeType" in item:
                    rejected["attributeType"] = item["attributeType"]
                results.append(rejected)
                continue
            results.append(self.dm.get_variable(item))
        return {"getVariableResult": results}

    async def _on_set_variables(self, p: dict) -> dict:
        items = p["setVariableData"]
        limit = self.dm.integer("DeviceDataCtrlr", "ItemsPerMessage", "SetVariables")
        results = []
        for i, item in enumerate(items):
            if limit > 0 and i >= limit:
                results.append({"attributeType": item.get("attributeType", "Actual"),
                                "attributeStatus": "Rejected",
                                "component": item["component"], "variable": item["variable"],
                                "attributeStatusInfo": {"reasonCode": "TooManyElements"}})
                continue
            result, _ = self.dm.set_variable(item)
            results.append(result)
        return {"setVariableResult": results}

    async def _on_get_base_report(self, p: dict) -> dict:
        entries = self.dm.base_report(p["reportBase"])
        if not entries:
            return {"status": "EmptyResultSet"}
        self.spawn(self._send_report(p["requestId"], entries), "v201-report")
        return {"status": "Accepted"}

    async def _on_get_report(self, p: dict) -> dict:
        entries = self.dm.custom_report(p.get("componentVariable"), p.get("componentCriteria"))
        if not entries:
            return {"status": "EmptyResultSet"}
        self.spawn(self._send_report(p["requestId"], entries), "v201-report")
        return {"status": "Accepted"}

    async def _send_report(self, request_id: int, entries: list[dict]) -> None:
        """NotifyReport messages cut by ItemsPerMessage / BytesPerMessage (GetReport)."""
        await self._after_answer()
        generated = self.clock.now_iso()
        header = {"requestId": request_id, "generatedAt": generated}
        chunks = split_report(
            entries, header,
            self.dm.integer("DeviceDataCtrlr", "ItemsPerMessage", "GetReport"),
            self.dm.integer("DeviceDataCtrlr", "BytesPerMessage", "GetReport"))
        for seq, chunk in enumerate(chunks):
            payload = {**header, "seqNo": seq, "reportData": chunk}
            if seq < len(chunks) - 1:
                payload["tbc"] = True
            try:
                await self._call("NotifyReport", payload, pending_ok=True)
            except CallFailed as exc:
                log.warning("report %s stopped at part %d: %s", request_id, seq, exc)
                return

    async def _on_reset(self, p: dict) -> dict:
        if self.request_reset is None:
            return {"status": "Rejected"}
        if p.get("evseId") is not None:
            # B11/B12: resetting one EVSE is optional; this station resets as a whole.
            return {"status": "Rejected", "statusInfo": {"reasonCode": "UnsupportedRequest"}}
        if p["type"] == "OnIdle" and self.station.any_transaction:
            self._reset_scheduled = True
            self.storage.set_setting("v201.boot_reason", "ScheduledReset")
            return {"status": "Scheduled"}
        self.spawn(self._reset(p["type"]), "v201-reset")
        return {"status": "Accepted"}

    async def _reset(self, kind: str) -> None:
        await self._after_answer()
        if self.storage.get_setting("v201.boot_reason") != "ScheduledReset":
            self.storage.set_setting("v201.boot_reason", "RemoteReset")
        await self.station.end_all(StopReason.HARD_RESET)
        assert self.request_reset is not None
        await self.request_reset(kind)

    async def _on_set_network_profile(self, p: dict) -> dict:
        slot = str(p["configurationSlot"])
        data = p["connectionData"]
        current = self.dm.integer("SecurityCtrlr", "SecurityProfile")
        url = data["ocppCsmsUrl"]
        if (slot not in NETWORK_SLOTS or data["ocppVersion"] != "OCPP20"
                or data["ocppTransport"] != "JSON" or data["securityProfile"] < current
                or data["securityProfile"] not in (0, 1, 2)
                or not url.startswith(("ws://", "wss://"))):
            return {"status": "Rejected"}
        self.storage.set_setting(f"v201.network_profile.{slot}", json.dumps(data))
        self._security_event("ReconfigurationOfSecurityParameters",
                             f"network profile slot {slot} set")
        return {"status": "Accepted"}

    # ------------------------------------------------------------------ E/F: transactions

    def _free_evses(self, evse_id: int | None) -> list[EvseController]:
        candidates = ([self.station.evses[evse_id]] if evse_id is not None
                      else list(self.station.evses.values()))
        return [e for e in candidates if e.operative and e.blocking_fault is None
                and (e.session is None or (not e.session.authorized
                                           and e.session.ended_reason is None))]

    async def _on_request_start(self, p: dict) -> dict:
        if self.registration != "Accepted":
            return {"status": "Rejected"}  # B02: no transactions while Pending
        evse_id = p.get("evseId")
        if evse_id is not None and evse_id not in self.station.evses:
            return {"status": "Rejected", "statusInfo": {"reasonCode": "UnknownEvse"}}
        free = self._free_evses(evse_id)
        if not free:
            return {"status": "Rejected"}
        target = free[0] if evse_id is not None else next(
            (e for e in free if e.ev_connected), free[0])
        token_p = p["idToken"]
        token = Token(token_p["idToken"], token_p["type"])
        answer: dict[str, Any] = {"status": "Accepted"}
        if target.tx is not None:
            answer["transactionId"] = target.tx.local_id  # F01.FR.??: already started
        self.spawn(self._remote_start(token, target.id, p["remoteStartId"]),
                   "v201-remote-start")
        return answer

    async def _remote_start(self, token: Token, evse_id: int, remote_start_id: int) -> None:
        await self._after_answer()
        result = AuthResult("Accepted", source="remote")
        if self.keys["AuthorizeRemoteTxRequests"]:
            result = await self.authorize(token, evse_id)
            if not result.accepted:
                log.info("remote start for %s refused: %s", token.id, result.status)
                return
        await self.station.remote_start(token, evse_id, remote_start_id=remote_start_id,
                                        result=result)

    async def _on_request_stop(self, p: dict) -> dict:
        evse = self.station.find_tx(local_id=p["transactionId"])
        if evse is None:
            return {"status": "Rejected"}
        self.spawn(self._remote_stop(evse), "v201-remote-stop")
        return {"status": "Accepted"}

    async def _remote_stop(self, evse: EvseController) -> None:
        await self._after_answer()
        if not await evse.deauthorize(StopReason.REMOTE):
            await evse.end_transaction(StopReason.REMOTE)

    async def _on_get_transaction_status(self, p: dict) -> dict:
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

    async def _on_unlock(self, p: dict) -> dict:
        evse = self.station.evses.get(p["evseId"])
        if evse is None or p["connectorId"] != evse.connector_id:
            return {"status": "UnknownConnector"}
        if evse.tx is not None and evse.session is not None and evse.session.authorized:
            return {"status": "OngoingAuthorizedTransaction"}  # F05.FR.02
        if evse.hw.lock is None:
            return {"status": "UnlockFailed"}
        status = await evse.unlock()
        return {"status": "Unlocked" if status == "Unlocked" else "UnlockFailed"}

    async def _on_trigger(self, p: dict) -> dict:
        what = p["requestedMessage"]
        evse_p = p.get("evse")
        if what not in TRIGGERABLE:
            return {"status": "NotImplemented"}
        evse_id = evse_p["id"] if evse_p else None
        if evse_id is not None and evse_id != 0 and evse_id not in self.station.evses:
            return {"status": "Rejected"}
        if evse_p and evse_p.get("connectorId") not in (None, 1):
            return {"status": "Rejected"}
        targets = ([self.station.evses[evse_id]] if evse_id
                   else list(self.station.evses.values()))
        if what == "BootNotification":
            if self.registration == "Accepted":
                return {"status": "Rejected"}  # F06.FR.17
            self._boot_wakeup.set()
            return {"status": "Accepted"}
        if what == "TransactionEvent" and not any(e.tx is not None for e in targets):
            return {"status": "Rejected"}
        self.spawn(self._triggered(what, targets), f"v201-trigger-{what}")
        return {"status": "Accepted"}

    async def _triggered(self, what: str, targets: list[EvseController]) -> None:
        await self._after_answer()
        if what == "Heartbeat":
            await self._send_quiet("Heartbeat", {}, pending_ok=True)
        elif what == "StatusNotification":
            for evse in targets:
                self._queue_status(evse.id, force=True)
            if not self.accepted.is_set():
                for evse in targets:
                    payload = self._status.pop(evse.id, None)
                    if payload is not None:
                        await self._send_quiet("StatusNotification", payload, pending_ok=True)
        elif what == "MeterValues":
            measurands = self.dm.members("AlignedDataCtrlr", "Measurands")
            for evse in targets:
                if evse.reading is None:
                    continue
                meter = self._meter_value(evse.reading, measurands, "Trigger", evse)
                if meter:
                    await self._send_quiet("MeterValues", {"evseId": evse.id,
                                                           "meterValue": meter},
                                           pending_ok=True)
        elif what == "TransactionEvent":
            measurands = self.dm.members("SampledDataCtrlr", "TxUpdatedMeasurands")
            for evse in targets:
                async with evse.lock:
                    tx = evse.tx
                    if tx is None:
                        continue
                    meter = (self._meter_value(evse.reading, measurands, "Trigger", evse)
                             if evse.reading is not None else [])
                    self._tx_event(tx, "Updated", "Trigger",
                                   charging_state=self._charging_state(evse), meter=meter)
        elif what == "LogStatusNotification":
            await self._send_quiet("LogStatusNotification", {"status": "Idle"},
                                   pending_ok=True)
        elif what == "FirmwareStatusNotification":
            await self._send_quiet("FirmwareStatusNotification", {"status": "Idle"},
                                   pending_ok=True)

    # ------------------------------------------------------------------ G: availability

    async def _on_change_availability(self, p: dict) -> dict:
        operative = p["operationalStatus"] == "Operative"
        evse_p = p.get("evse")
        if evse_p is None or evse_p["id"] == 0:
            if evse_p is not None and evse_p.get("connectorId") is not None:
                return {"status": "Rejected"}
            status = await self.station.set_operative(0, operative)
            targets = list(self.station.evses)
        else:
            evse = self.station.evses.get(evse_p["id"])
            if evse is None or evse_p.get("connectorId") not in (None, evse.connector_id):
                return {"status": "Rejected"}
            status = await self.station.set_operative(evse.id, operative)
            targets = [evse.id]
        for evse_id in targets:  # G03/G04: the state of every connector concerned, even unchanged
            self._queue_status(evse_id, force=True)
        return {"status": status}

    # ------------------------------------------------------------------ C/D: authorization

    async def _on_clear_cache(self, p: dict) -> dict:
        if not self.keys["AuthorizationCacheEnabled"]:
            return {"status": "Rejected"}
        self.storage.auth_cache_clear()
        return {"status": "Accepted"}

    async def _on_get_local_list_version(self, p: dict) -> dict:
        if not self.keys["LocalAuthListEnabled"]:
            return {"versionNumber": 0}
        return {"versionNumber": self.storage.local_list_version()}

    async def _on_send_local_list(self, p: dict) -> dict:
        if not self.keys["LocalAuthListEnabled"]:
            return {"status": "Failed", "statusInfo": {"reasonCode": "NotEnabled"}}
        items = p.get("localAuthorizationList", [])
        if len(items) > self.dm.integer("LocalAuthListCtrlr", "ItemsPerMessage"):
            return {"status": "Failed", "statusInfo": {"reasonCode": "TooManyElements"}}
        entries: dict[str, dict | None] = {}
        for item in items:
            entries[item["idToken"]["idToken"]] = item.get("idTokenInfo")
        version = p["versionNumber"]
        if p["updateType"] == "Full":
            full = {k: v for k, v in entries.items() if v}
            if len(full) > self.keys["LocalAuthListMaxLength"]:
                return {"status": "Failed", "statusInfo": {"reasonCode": "OutOfStorage"}}
            self.storage.local_list_replace(version, full)
        else:
            if version <= self.storage.local_list_version():
                return {"status": "VersionMismatch"}
            self.storage.local_list_apply(version, entries)
        return {"status": "Accepted"}

    # ------------------------------------------------------------------ N, P

    async def _on_set_variable_monitoring(self, p: dict) -> dict:
        # No monitors are implemented (MonitoringCtrlr absent): each request is refused as such.
        return {"setMonitoringResult": [
            {"status": "UnsupportedMonitorType", "type": d["type"], "severity": d["severity"],
             "component": d["component"], "variable": d["variable"]}
            for d in p["setMonitoringData"]]}

    async def _on_clear_variable_monitoring(self, p: dict) -> dict:
        return {"clearMonitoringResult": [{"status": "NotFound", "id": i} for i in p["id"]]}

    async def _on_data_transfer(self, p: dict) -> dict:
        if p["vendorId"] != self.vendor:
            return {"status": "UnknownVendorId"}
        return {"status": "UnknownMessageId"}


def _token_type(kind: str | None) -> str:
    return kind if kind in TOKEN_TYPES else "Local"


__all__ = ["V201Adapter", "sampled_values"]
