"""2.0.1 block G, availability: StatusNotification, ChangeAvailability, and the
ChargingStation / EVSE / Connector variables that describe the station as it is.

The core reports each EVSE's status once it settled; this block folds it to the five 2.0.1
connector states (Available, Occupied, Reserved, Unavailable, Faulted) and queues only a
change of those on the shared status queue.  After a boot, and after an outage longer than
OfflineThreshold, every connector is reported; after a short outage only what changed (B01,
B04: the CSMS's picture is still right).  ChangeAvailability (G03/G04) reports the state of
every connector concerned, even when it did not change.
"""

from __future__ import annotations

from typing import Any, ClassVar

from agent.core.model import ConnectorStatus, EvseSnapshot
from agent.ocpp.adapter import EvseInfo
from agent.ocpp.blocks import handles
from agent.ocpp.v201.device_model import (
    AVAILABILITY_STATES,
    Attr,
    VarDef,
    VariableBlock,
    b,
    num,
    ro,
    rw,
)
from agent.ocpp.v201.monitoring import Monitoring
from hal.interfaces import FaultKind

NOMINAL_VOLTAGE = 230.0


def connector_status(snap: EvseSnapshot) -> str:
    """The 2.0.1 ConnectorStatusEnumType of an EVSE's (only) connector."""
    st = snap.status
    if st == ConnectorStatus.FAULTED:
        return "Faulted"
    if st == ConnectorStatus.UNAVAILABLE:
        return "Unavailable"
    if snap.ev_connected:
        return "Occupied"
    if st == ConnectorStatus.RESERVED:
        return "Reserved"
    if not snap.operative:
        return "Unavailable"
    return "Available"


class Availability(VariableBlock):
    VARIABLES: ClassVar[tuple[VarDef, ...]] = (
        rw("OCPPCommCtrlr", "OfflineThreshold", "integer", "60", unit="s", min_limit=0,
           max_limit=86400),
        rw("OCPPCommCtrlr", "MinimumStatusDuration", "integer", unit="s", min_limit=0,
           max_limit=3600, setting="MinimumStatusDuration"),
        ro("ChargingStation", "Available", "boolean", "true"),
    )

    def __init__(self, adapter: Any) -> None:
        super().__init__(adapter)
        self._queued: dict[int, str] = {}  # last connectorStatus queued per EVSE
        self._connected_once = False
        self._offline_since: float | None = None

    def _evse_infos(self) -> list[EvseInfo]:
        infos = self.adapter.ctx.evses
        if infos:
            return infos
        return [EvseInfo(e.id, e.phases, e.max_current_a * NOMINAL_VOLTAGE * e.phases)
                for e in self.station.evses.values()]

    def live_variables(self) -> list[VarDef]:
        monitoring = self.adapter.block(Monitoring)
        infos = self._evse_infos()
        v = [
            ro("ChargingStation", "AvailabilityState", "OptionList",
               lambda: self.availability(None), values_list=AVAILABILITY_STATES),
            ro("ChargingStation", "Problem", "boolean",
               lambda: b(monitoring.problem("ChargingStation", None))),
            ro("ChargingStation", "SupplyPhases", "integer",
               str(max((e.phases for e in infos), default=3))),
        ]
        for e in infos:
            eid = e.id
            v += [
                ro("EVSE", "AvailabilityState", "OptionList",
                   lambda eid=eid: self.availability(eid), values_list=AVAILABILITY_STATES,
                   evse=eid),
                ro("EVSE", "Available", "boolean", "true", evse=eid),
                ro("EVSE", "Problem", "boolean",
                   lambda eid=eid: b(monitoring.problem("EVSE", eid)), evse=eid),
                VarDef("EVSE", "Power", "decimal",
                       (Attr("Actual", "ReadOnly",
                             getter=lambda eid=eid: num(self._power_w(eid))),
                        Attr("MaxSet", "ReadOnly", getter=lambda p=e.max_power_w: num(p))),
                       evse=eid, unit="W", max_limit=e.max_power_w),
                ro("EVSE", "SupplyPhases", "integer", str(e.phases), evse=eid),
                ro("Connector", "AvailabilityState", "OptionList",
                   lambda eid=eid: self.availability(eid), values_list=AVAILABILITY_STATES,
                   evse=eid, connector=1),
                ro("Connector", "Available", "boolean", "true", evse=eid, connector=1),
                ro("Connector", "ConnectorType", "string", e.connector_type, evse=eid,
                   connector=1),
                ro("Connector", "SupplyPhases", "integer", str(e.phases), evse=eid,
                   connector=1),
            ]
        return v

    # ------------------------------------------------------------------ live values

    def availability(self, evse_id: int | None) -> str:
        if evse_id is None:
            snaps = self.station.snapshots()
            return "Unavailable" if snaps and all(not s.operative for s in snaps) \
                else "Available"
        evse = self.station.evses.get(evse_id)
        return connector_status(evse.snapshot()) if evse is not None else "Unavailable"

    def _power_w(self, evse_id: int) -> float:
        evse = self.station.evses.get(evse_id)
        reading = evse.snapshot().reading if evse is not None else None
        return max(0.0, reading.power_w) if reading is not None else 0.0

    # ------------------------------------------------------------------ StatusNotification

    def _payload(self, snap: EvseSnapshot, status: str) -> dict[str, Any]:
        return {"timestamp": self.clock.stamp(), "connectorStatus": status,
                "evseId": snap.evse_id, "connectorId": snap.connector_id}

    def queue(self, evse_id: int, *, force: bool = False,
              snap: EvseSnapshot | None = None) -> None:
        """Queue the connector's state if it changed (or ``force``: report it anyway)."""
        if snap is None:
            evse = self.station.evses.get(evse_id)
            if evse is None:
                return
            snap = evse.snapshot()
        status = connector_status(snap)
        if not force and self._queued.get(evse_id) == status:
            return
        self._queued[evse_id] = status
        self.adapter.queue_status(evse_id, self._payload(snap, status))

    def resolved(self, payload: dict[str, Any]) -> dict[str, Any]:
        """A status about to be sent: a deferred stamp that cannot be resolved becomes now."""
        out, held = self.clock.resolve_payload(payload)
        if held and "timestamp" in out:
            out = {**out, "timestamp": self.clock.now_iso()}
        return out

    def session_started(self) -> None:
        """B01/B04: every connector after a boot or a long outage, else only what changed."""
        threshold = self.dm.integer("OCPPCommCtrlr", "OfflineThreshold")
        long_outage = (self._offline_since is None
                       or self.clock.monotonic() - self._offline_since > threshold)
        force = not self._connected_once or long_outage
        self._connected_once = True
        for evse_id in self.station.evses:
            self.queue(evse_id, force=force)

    def session_ended(self) -> None:
        self._offline_since = self.clock.monotonic()

    def status_changed(self, snap: EvseSnapshot, fault: FaultKind | None) -> None:
        self.queue(snap.evse_id, snap=snap)

    async def triggered(self, evse_ids: list[int]) -> None:
        """TriggerMessage(StatusNotification): the state now, even if unchanged (F06); while
        the boot is Pending, sent at once (the status sender waits for Accepted)."""
        for evse_id in evse_ids:
            self.queue(evse_id, force=True)
        if not self.adapter.accepted.is_set():
            for evse_id in evse_ids:
                payload = self.adapter.status.pop(evse_id)
                if payload is not None:
                    await self.adapter.send_quiet("StatusNotification", self.resolved(payload),
                                                  pending_ok=True)

    # ------------------------------------------------------------------ ChangeAvailability

    @handles("ChangeAvailability")
    async def change_availability(self, p: dict) -> dict:
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
        for evse_id in targets:  # G03/G04: every connector concerned, even unchanged
            self.queue(evse_id, force=True)
        return {"status": status}
