"""2.0.1 block B, provisioning: BootNotification, the device model's Get/SetVariables and
reports, Reset, SetNetworkProfile.

The registration loop itself (retry at the interval, no new boot after a mere reconnect) is the
shared adapter's; this block says what 2.0.1 sends (the boot reason survives a restart in the
``v201.boot_reason`` setting, so a Reset reports RemoteReset / ScheduledReset on the way back)
and reports the start-up as a security event after the first accepted boot.  It owns the
device model: the union of every block's variables, built on first use.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from agent.core.model import EvseSnapshot, StopReason, TxRecord
from agent.ocpp.blocks import handles
from agent.ocpp.firmware_json import built_service
from agent.ocpp.v201.availability import Availability
from agent.ocpp.v201.device_model import (
    DeviceModel,
    VarDef,
    VariableBlock,
    ro,
    rw,
)
from agent.transfer.protocols import PROTOCOLS

log = logging.getLogger("cp_agent.v201")

BOOT_REASON = "v201.boot_reason"  # why the next BootNotification happens, if not PowerUp


class Provisioning(VariableBlock):
    VARIABLES: ClassVar[tuple[VarDef, ...]] = (
        # -------------------------------------------------------------- OCPPCommCtrlr
        rw("OCPPCommCtrlr", "HeartbeatInterval", "integer", unit="s", min_limit=0,
           max_limit=86400, setting="HeartbeatInterval"),
        rw("OCPPCommCtrlr", "WebSocketPingInterval", "integer", unit="s", min_limit=0,
           max_limit=3600, setting="WebSocketPingInterval"),
        rw("OCPPCommCtrlr", "ResetRetries", "integer", min_limit=0, max_limit=10,
           setting="ResetRetries"),
        # What agent/transfer (firmware downloads, log uploads) speaks.
        ro("OCPPCommCtrlr", "FileTransferProtocols", "MemberList", ",".join(PROTOCOLS),
           values_list=PROTOCOLS),
        # NetworkConfigurationPriority, NetworkProfileConnectionAttempts: network.py.
        ro("OCPPCommCtrlr", "QueueAllMessages", "boolean", "false"),
        rw("OCPPCommCtrlr", "RetryBackOffRepeatTimes", "integer", "5", min_limit=0,
           max_limit=30),
        rw("OCPPCommCtrlr", "RetryBackOffRandomRange", "integer", "10", unit="s",
           min_limit=0, max_limit=3600),
        rw("OCPPCommCtrlr", "RetryBackOffWaitMinimum", "integer", "1", unit="s",
           min_limit=0, max_limit=3600),
        # -------------------------------------------------------------- DeviceDataCtrlr
        ro("DeviceDataCtrlr", "ItemsPerMessage", "integer", "32", instance="GetReport"),
        ro("DeviceDataCtrlr", "ItemsPerMessage", "integer", "32", instance="GetVariables"),
        ro("DeviceDataCtrlr", "ItemsPerMessage", "integer", "32", instance="SetVariables"),
        ro("DeviceDataCtrlr", "BytesPerMessage", "integer", "16384", instance="GetReport"),
        ro("DeviceDataCtrlr", "BytesPerMessage", "integer", "16384", instance="GetVariables"),
        ro("DeviceDataCtrlr", "BytesPerMessage", "integer", "16384", instance="SetVariables"),
        ro("DeviceDataCtrlr", "ValueSize", "integer", "2500"),
        # -------------------------------------------------------------- ClockCtrlr
        rw("ClockCtrlr", "TimeSource", "SequenceList", "Heartbeat", values_list=("Heartbeat",)),
        rw("ClockCtrlr", "TimeZone", "string", "", max_limit=50),
        rw("ClockCtrlr", "TimeOffset", "string", "", max_limit=6),
        rw("ClockCtrlr", "NextTimeOffsetTransitionDateTime", "dateTime", ""),
        rw("ClockCtrlr", "TimeAdjustmentReportingThreshold", "integer", "20", unit="s",
           min_limit=0),
    )

    def __init__(self, adapter: Any) -> None:
        super().__init__(adapter)
        self._dm: DeviceModel | None = None
        self._reset_scheduled = False
        self._evse_resets: set[int] = set()  # EVSEs whose OnIdle reset waits for their tx

    def live_variables(self) -> list[VarDef]:
        ctx = self.adapter.ctx
        out = [
            ro("OCPPCommCtrlr", "MessageTimeout", "integer", str(int(ctx.message_timeout_s)),
               instance="Default", unit="s"),
            ro("ClockCtrlr", "DateTime", "dateTime", self.clock.now_iso),
            ro("ChargingStation", "VendorName", "string", ctx.vendor),
            ro("ChargingStation", "Model", "string", ctx.model),
            ro("Controller", "FirmwareVersion", "string", ctx.firmware_version),
        ]
        if ctx.serial_number:
            out.append(ro("ChargingStation", "SerialNumber", "string", ctx.serial_number))
        return out

    @property
    def dm(self) -> DeviceModel:
        """The device model of every block of this version (built once, on first use)."""
        if self._dm is None:
            defs = [d for block in self.adapter.blocks for d in block.variables()]
            dm = DeviceModel(self.settings, self.storage, defs, self.adapter.ctx.defaults)
            for block in self.adapter.blocks:
                hook = getattr(block, "variable_changed", None)
                if hook is not None:
                    dm.listeners.append(hook)
                attribute_hook = getattr(block, "attribute_changed", None)
                if attribute_hook is not None:
                    dm.attribute_listeners.append(attribute_hook)
            self._dm = dm
        return self._dm

    def start(self) -> None:
        self.dm  # noqa: B018 - build it now: it carries over values of older state files

    # ------------------------------------------------------------------ BootNotification

    def boot_elements(self) -> dict[str, Any]:
        ctx = self.adapter.ctx
        station: dict[str, Any] = {"model": ctx.model[:20], "vendorName": ctx.vendor[:50],
                                   "firmwareVersion": ctx.firmware_version[:50]}
        if ctx.serial_number:
            station["serialNumber"] = ctx.serial_number[:25]
        return {"chargingStation": station}

    def boot_payload(self, reason: str | None) -> dict[str, Any]:
        return {**self.boot_elements(), "reason": reason or "PowerUp"}

    def boot_reason(self) -> str:
        self._reason_sent = self.storage.get_setting(BOOT_REASON)
        return self._reason_sent or "PowerUp"

    def registration_answered(self, status: str) -> None:
        pass  # while Rejected, CSMS requests get SecurityError (SPEC.refuse_call)

    def boot_accepted(self) -> None:
        # StartupOfTheDevice / ResetOrReboot: recorded by the composition root at start-up.
        # Only the reason this boot carried is used up: one set while it was on its way (a
        # firmware update resumed at start-up reboots for FirmwareUpdate) is for the next.
        if self.storage.get_setting(BOOT_REASON) == getattr(self, "_reason_sent", None):
            self.storage.delete_setting(BOOT_REASON)

    # ------------------------------------------------------------------ B05/B06 variables

    @handles("GetVariables")
    async def get_variables(self, p: dict) -> dict:
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

    @handles("SetVariables")
    async def set_variables(self, p: dict) -> dict:
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

    # ------------------------------------------------------------------ B07/B08 reports

    @handles("GetBaseReport")
    async def get_base_report(self, p: dict) -> dict:
        entries = self.dm.base_report(p["reportBase"])
        if not entries:
            return {"status": "EmptyResultSet"}
        self.adapter.spawn(self._send_report(p["requestId"], entries), "v201-report")
        return {"status": "Accepted"}

    @handles("GetReport")
    async def get_report(self, p: dict) -> dict:
        entries = self.dm.custom_report(p.get("componentVariable"), p.get("componentCriteria"))
        if not entries:
            return {"status": "EmptyResultSet"}
        self.adapter.spawn(self._send_report(p["requestId"], entries), "v201-report")
        return {"status": "Accepted"}

    async def _send_report(self, request_id: int, entries: list[dict]) -> None:
        await self.send_report_parts("NotifyReport", "reportData", request_id, entries)

    # ------------------------------------------------------------------ B11/B12 reset

    @handles("Reset")
    async def reset(self, p: dict) -> dict:
        evse_id = p.get("evseId")
        if evse_id is not None and evse_id != 0:
            return self._reset_evse(evse_id, p["type"])
        if self.adapter.ctx.request_reset is None:
            return {"status": "Rejected"}
        firmware = built_service(self.station)  # never built: no update at work
        if firmware is not None and firmware.busy():
            # Appendix reason code FwUpdateInProgress: the update must not be cut (it would
            # resume, but the CSMS asked for a reset now, which cannot happen now).
            return {"status": "Rejected", "statusInfo": {
                "reasonCode": "FwUpdateInProgress",
                "additionalInfo": "a firmware update is downloading or installing"}}
        if p["type"] == "OnIdle" and self.station.any_transaction:
            self._reset_scheduled = True
            self.storage.set_setting(BOOT_REASON, "ScheduledReset")
            return {"status": "Scheduled"}
        self.adapter.spawn(self._reset(p["type"]), "v201-reset")
        return {"status": "Accepted"}

    async def _reset(self, kind: str) -> None:
        await self.adapter.after_answer()
        if self.storage.get_setting(BOOT_REASON) != "ScheduledReset":
            self.storage.set_setting(BOOT_REASON, "RemoteReset")
        await self.station.end_all(StopReason.HARD_RESET)
        request_reset = self.adapter.ctx.request_reset
        assert request_reset is not None
        await request_reset(kind)

    def _reset_evse(self, evse_id: int, kind: str) -> dict:
        """B11/B12 with an evseId: that EVSE alone (its transaction ended with ImmediateReset,
        Unavailable while it restarts), the others go on. OnIdle with its transaction running
        is Scheduled (B12.FR.07) and happens when that transaction ends."""
        evse = self.station.evses.get(evse_id)
        if evse is None:
            return {"status": "Rejected", "statusInfo": {"reasonCode": "UnknownEvse"}}
        if self.dm.value("EVSE", "AllowReset", evse=evse_id, default="true") != "true":
            return {"status": "Rejected", "statusInfo": {"reasonCode": "UnsupportedRequest"}}
        if kind == "OnIdle" and evse.snapshot().tx is not None:
            self._evse_resets.add(evse_id)
            return {"status": "Scheduled"}
        self._evse_resets.discard(evse_id)  # an Immediate one replaces a scheduled one
        self.adapter.spawn(self._reset_one(evse_id), f"v201-reset-evse-{evse_id}")
        return {"status": "Accepted"}

    async def _reset_one(self, evse_id: int, *, answered: bool = True) -> None:
        if answered:
            await self.adapter.after_answer()
        availability = self.adapter.block(Availability)
        await self.station.reset_evse(evse_id, StopReason.HARD_RESET,
                                      while_down=lambda: availability.delivered(evse_id))

    def transaction_ended(self, tx: TxRecord, reason: StopReason, snap: EvseSnapshot) -> None:
        """B12: a Reset OnIdle waits for the last transaction to end (of its EVSE, for the
        reset of one EVSE)."""
        if tx.evse_id in self._evse_resets:
            self._evse_resets.discard(tx.evse_id)
            self.adapter.spawn(self._reset_one(tx.evse_id, answered=False),
                               f"v201-scheduled-reset-evse-{tx.evse_id}")
        if self._reset_scheduled and not self.station.any_transaction:
            self._reset_scheduled = False
            self.adapter.spawn(self._reset("OnIdle"), "v201-scheduled-reset")

    # B09 SetNetworkProfile: agent/ocpp/v201/network.py (the link's network profiles).
