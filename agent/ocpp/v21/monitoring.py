"""2.1 block N, monitoring: the 2.0.1 block plus the monitors of periodic event streams.

2.1 gave SetMonitoringData a ``periodicEventStream`` element (N04, N11): a Periodic or
PeriodicClockAligned monitor carrying it reports through a stream instead of a NotifyEvent per
value.  Those monitors are the ones this station keeps (:mod:`agent.ocpp.v21.event_streams`);
every other monitor request (the 2.0.1 types and 2.1's TargetDelta / TargetDeltaRelative
without a stream) gets the 2.0.1 block's answer, so the two versions never disagree about a
monitor both have.  ClearVariableMonitoring of a stream monitor closes its stream (N06).

The 2.1 monitoring variable this needs, ``MonitoringCtrlr.MaxPeriodicEventStreams`` (how many
streams the station keeps open, fixed; an installer may set another in ``ocpp.defaults``), is
declared here.
"""

from __future__ import annotations

from typing import Any, ClassVar

from agent.ocpp.blocks import handles
from agent.ocpp.v21.event_streams import EventStreams, StreamMonitor
from agent.ocpp.v201.device_model import VarDef, ro
from agent.ocpp.v201.monitoring import Monitoring

MAX_PERIODIC_EVENT_STREAMS = "4"


class Monitoring21(Monitoring):
    VARIABLES: ClassVar[tuple[VarDef, ...]] = (
        *Monitoring.VARIABLES,
        ro("MonitoringCtrlr", "MaxPeriodicEventStreams", "integer", MAX_PERIODIC_EVENT_STREAMS,
           min_limit=0),
    )

    @property
    def streams(self) -> EventStreams:
        return self.adapter.block(EventStreams)

    @handles("SetVariableMonitoring")
    async def set_variable_monitoring(self, p: dict) -> dict:
        data = p["setMonitoringData"]
        results: list[dict | None] = [None] * len(data)
        rest = []
        for i, item in enumerate(data):
            if self.streams.claims(item):
                results[i] = self.streams.set_monitor(item)
            else:
                rest.append(i)
        if rest:
            other = await super().set_variable_monitoring(
                {**p, "setMonitoringData": [data[i] for i in rest]})
            for i, result in zip(rest, other["setMonitoringResult"], strict=True):
                results[i] = result
        return {"setMonitoringResult": results}

    @handles("ClearVariableMonitoring")
    async def clear_variable_monitoring(self, p: dict) -> dict:
        ids = p["id"]
        results: list[dict | None] = [None] * len(ids)
        rest = []
        for i, monitor_id in enumerate(ids):
            if self.streams.has_monitor(monitor_id):
                self.streams.clear_monitor(monitor_id)
                results[i] = {"status": "Accepted", "id": monitor_id}
            else:
                rest.append(i)
        if rest:
            other = await super().clear_variable_monitoring({**p, "id": [ids[i] for i in rest]})
            for i, result in zip(rest, other["clearMonitoringResult"], strict=True):
                results[i] = result
        return {"clearMonitoringResult": results}

    def periodic_event(self, monitor: StreamMonitor, value: str) -> dict:
        """A NotifyEvent for one value of a monitor whose stream the CSMS rejected."""
        event: dict[str, Any] = {
            "eventId": self._next_event_id(), "timestamp": self.clock.now_iso(),
            "trigger": "Periodic", "actualValue": value,
            "eventNotificationType": "CustomMonitor", "component": monitor.component,
            "variable": monitor.variable, "variableMonitoringId": monitor.id,
            "severity": monitor.severity,
        }
        evse_id = (monitor.component.get("evse") or {}).get("id")
        evse = self.station.evses.get(evse_id) if evse_id is not None else None
        tx = evse.snapshot().tx if evse is not None else None
        if tx is not None:
            event["transactionId"] = tx.local_id
        return {"generatedAt": self.clock.now_iso(), "seqNo": 0, "eventData": [event]}


__all__ = ["MAX_PERIODIC_EVENT_STREAMS", "Monitoring21"]
