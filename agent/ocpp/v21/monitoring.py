"""2.1 block N, monitoring: the 2.0.1 block plus the monitors of periodic event streams.

2.1 gave SetMonitoringData a ``periodicEventStream`` element (N04, N11): a Periodic or
PeriodicClockAligned monitor carrying it reports through a stream instead of a NotifyEvent per
value.  Those monitors are kept by :mod:`agent.ocpp.v21.event_streams`; every other monitor
request gets the 2.0.1 block's answer (:mod:`agent.ocpp.v201.monitoring`, which also knows
2.1's TargetDelta / TargetDeltaRelative), so the two versions never disagree about a monitor
both have.  The stream monitors share the other monitors' id space, count as duplicates of
an ordinary monitor with the same component / variable / type / severity, appear in
GetMonitoringReport, and go with the custom monitors on SetMonitoringBase FactoryDefault /
HardWiredOnly.  ClearVariableMonitoring of a stream monitor closes its stream (N06).

The 2.1 monitoring variable this needs, ``MonitoringCtrlr.MaxPeriodicEventStreams`` (how many
streams the station keeps open, fixed; an installer may set another in ``ocpp.defaults``), is
declared here.
"""

from __future__ import annotations

from typing import Any, ClassVar

from agent.ocpp.v21.event_streams import EventStreams, StreamMonitor
from agent.ocpp.v201.device_model import VarDef, ro
from agent.ocpp.v201.monitoring import Monitoring
from agent.ocpp.v201.monitors import CUSTOM, Monitor

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

    def start(self) -> None:
        super().start()
        self.streams.new_monitor_id = self.allocate_id

    def set_one(self, data: dict) -> dict:
        if self.streams.claims(data):
            return self.streams.set_monitor(data)
        return super().set_one(data)

    def clear_one(self, monitor_id: int) -> dict:
        if self.streams.has_monitor(monitor_id):
            self.streams.clear_monitor(monitor_id)
            return {"status": "Accepted", "id": monitor_id}
        return super().clear_one(monitor_id)

    def _other_monitors(self) -> list[Monitor]:
        return [Monitor(m.id, m.component, m.variable, m.type, m.value, m.severity,
                        transaction=m.transaction, kind=CUSTOM)
                for m in self.streams.monitors()]

    def _drop_custom(self) -> None:
        super()._drop_custom()
        for m in self.streams.monitors():
            self.streams.clear_monitor(m.id)  # its stream is closed

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
