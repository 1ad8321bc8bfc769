"""2.0.1 block N, diagnostics: hardware faults as NotifyEvent, the variable-monitoring answers.

A fault the core reports (raised or cleared) becomes a NotifyEvent of kind
HardWiredNotification on the component that has it (PowerContactor, FiscalMetering, ...),
queued durably like the transaction messages.  Those components are declared here, per EVSE,
with their Problem-like variable, so that every NotifyEvent names a component/variable pair
the CSMS also finds in a FullInventory report.  No monitors are implemented (there is no
MonitoringCtrlr): SetVariableMonitoring / ClearVariableMonitoring answer so.
"""

from __future__ import annotations

from typing import Any

from agent.ocpp.blocks import handles
from agent.ocpp.v201.device_model import VarDef, VariableBlock, b, ro
from hal.interfaces import FaultKind

# Which device-model component and variable reports a hardware fault.
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
# The per-EVSE components of those faults (the token reader is the station's).
FAULT_COMPONENTS = tuple(dict.fromkeys(
    pair for pair in FAULT_COMPONENT.values() if pair[0] != "TokenReader"))
EVENT_ID = "v201.event_id"  # the last eventId used, so ids grow across restarts


class Monitoring(VariableBlock):
    OUTBOX_ACTIONS = frozenset({"NotifyEvent"})

    def live_variables(self) -> list[VarDef]:
        out = [ro("TokenReader", "Problem", "boolean",
                  lambda: b(self.problem("TokenReader", None)))]
        for eid in self.station.evses:
            for comp, var in FAULT_COMPONENTS:
                connector = 1 if comp == "ConnectorPlugRetentionLock" else None
                out.append(ro(comp, var, "boolean",
                              lambda comp=comp, eid=eid: b(self.problem(comp, eid)),
                              evse=eid, connector=connector))
        return out

    def problem(self, component: str, evse_id: int | None) -> bool:
        """Whether ``component`` (of EVSE ``evse_id``, or of the station) has a fault now."""
        if evse_id is None:
            if component == "TokenReader":
                return FaultKind.READER in self.station.station_faults
            return bool(self.station.station_faults) or any(
                s.blocking_fault is not None for s in self.station.snapshots())
        evse = self.station.evses.get(evse_id)
        if evse is None:
            return False
        faults = evse.snapshot().faults
        if component == "EVSE":
            return bool(faults)
        return any(FAULT_COMPONENT.get(k, ("",))[0] == component for k in faults)

    # ------------------------------------------------------------------ core events

    def fault_changed(self, evse_id: int, kind: FaultKind, active: bool, detail: str) -> None:
        """A hardware fault raised or cleared becomes a NotifyEvent (N07, Delta)."""
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
        evse = self.station.evses.get(evse_id) if evse_id else None
        tx = evse.snapshot().tx if evse is not None else None
        if tx is not None:
            event["transactionId"] = tx.local_id
        self.adapter.enqueue("NotifyEvent", {"generatedAt": self.clock.stamp(), "seqNo": 0,
                                             "eventData": [event]})

    def _next_event_id(self) -> int:
        n = int(self.storage.get_setting(EVENT_ID) or "0") + 1
        self.storage.set_setting(EVENT_ID, str(n))
        return n

    # ------------------------------------------------------------------ CSMS requests

    @handles("SetVariableMonitoring")
    async def set_variable_monitoring(self, p: dict) -> dict:
        return {"setMonitoringResult": [
            {"status": "UnsupportedMonitorType", "type": d["type"], "severity": d["severity"],
             "component": d["component"], "variable": d["variable"]}
            for d in p["setMonitoringData"]]}

    @handles("ClearVariableMonitoring")
    async def clear_variable_monitoring(self, p: dict) -> dict:
        return {"clearMonitoringResult": [{"status": "NotFound", "id": i} for i in p["id"]]}
