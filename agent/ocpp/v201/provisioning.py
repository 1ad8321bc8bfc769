"""2.0.1 block B, provisioning: BootNotification, the device model's Get/SetVariables and
reports, Reset, SetNetworkProfile.

The registration loop itself (retry at the interval, no new boot after a mere reconnect) is the
shared adapter's; this block says what 2.0.1 sends (the boot reason survives a restart in the
``v201.boot_reason`` setting, so a Reset reports RemoteReset / ScheduledReset on the way back)
and reports the start-up as a security event after the first accepted boot.  It owns the
device model: the union of every block's variables, built on first use.
"""

from __future__ import annotations

import json
import logging
from typing import Any, ClassVar

from agent.core.model import EvseSnapshot, StopReason, TxRecord
from agent.link.rpc import CallFailed
from agent.ocpp.blocks import handles
from agent.ocpp.v201.device_model import (
    NETWORK_SLOTS,
    DeviceModel,
    VarDef,
    VariableBlock,
    ro,
    rw,
    split_report,
)
from agent.ocpp.v201.security import Security

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
        ro("OCPPCommCtrlr", "FileTransferProtocols", "MemberList", "",
           values_list=("HTTPS",)),
        rw("OCPPCommCtrlr", "NetworkConfigurationPriority", "SequenceList", "1",
           values_list=NETWORK_SLOTS, reboot=True),
        rw("OCPPCommCtrlr", "NetworkProfileConnectionAttempts", "integer", "3", min_limit=1,
           max_limit=100),
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
        # Why this process started, reported once the first boot is accepted.
        self._startup_reason: str | None = self.boot_reason()

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
        return self.storage.get_setting(BOOT_REASON) or "PowerUp"

    def registration_answered(self, status: str) -> None:
        pass  # while Rejected, CSMS requests get SecurityError (SPEC.refuse_call)

    def boot_accepted(self) -> None:
        self.storage.delete_setting(BOOT_REASON)
        if self._startup_reason is not None:
            reason, self._startup_reason = self._startup_reason, None
            self.adapter.block(Security).event(
                "StartupOfTheDevice" if reason == "PowerUp" else "ResetOrReboot",
                f"boot reason {reason}")

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
        """NotifyReport messages cut by ItemsPerMessage / BytesPerMessage (GetReport)."""
        await self.adapter.after_answer()
        header = {"requestId": request_id, "generatedAt": self.clock.now_iso()}
        chunks = split_report(
            entries, header,
            self.dm.integer("DeviceDataCtrlr", "ItemsPerMessage", "GetReport"),
            self.dm.integer("DeviceDataCtrlr", "BytesPerMessage", "GetReport"))
        for seq, chunk in enumerate(chunks):
            payload = {**header, "seqNo": seq, "reportData": chunk}
            if seq < len(chunks) - 1:
                payload["tbc"] = True
            try:
                await self.adapter.call("NotifyReport", payload, pending_ok=True)
            except CallFailed as exc:
                log.warning("report %s stopped at part %d: %s", request_id, seq, exc)
                return

    # ------------------------------------------------------------------ B11/B12 reset

    @handles("Reset")
    async def reset(self, p: dict) -> dict:
        if self.adapter.ctx.request_reset is None:
            return {"status": "Rejected"}
        if p.get("evseId") is not None:
            # B11/B12: resetting one EVSE is optional; this station resets as a whole.
            return {"status": "Rejected", "statusInfo": {"reasonCode": "UnsupportedRequest"}}
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

    def transaction_ended(self, tx: TxRecord, reason: StopReason, snap: EvseSnapshot) -> None:
        """B12: a Reset OnIdle waits for the last transaction to end."""
        if self._reset_scheduled and not self.station.any_transaction:
            self._reset_scheduled = False
            self.adapter.spawn(self._reset("OnIdle"), "v201-scheduled-reset")

    # ------------------------------------------------------------------ B09 network profile

    @handles("SetNetworkProfile")
    async def set_network_profile(self, p: dict) -> dict:
        """Validated and stored for the link's connection profiles; used from a restart on."""
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
        self.adapter.block(Security).event("ReconfigurationOfSecurityParameters",
                                           f"network profile slot {slot} set")
        return {"status": "Accepted"}
