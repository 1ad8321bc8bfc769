"""2.0.1 block G, availability: StatusNotification, ChangeAvailability, and the
ChargingStation / EVSE / Connector variables that describe the station as it is.

The core reports each EVSE's status once it settled; this block folds it to the five 2.0.1
connector states (Available, Occupied, Reserved, Unavailable, Faulted) and queues only a
change of those on the shared status queue.  After a boot, and after an outage longer than
OfflineThreshold, every connector is reported; after a short outage only what changed (B01,
B04: the CSMS's picture is still right).  ChangeAvailability (G03/G04) reports the state of
every connector concerned, even when it did not change.  Each change of the AvailabilityState of
a Connector, an EVSE or the ChargingStation also goes out as a NotifyEvent (trigger Delta,
:mod:`agent.ocpp.v201.availability_events`), with the same rules for what is reported when.
"""

from __future__ import annotations

from typing import Any, ClassVar

from agent.core.model import ConnectorStatus, EvseSnapshot
from agent.ocpp.adapter import EvseInfo
from agent.ocpp.blocks import handles
from agent.ocpp.v201.availability_events import (
    STATION_KEY,
    AvailabilityEvents,
    connector_key,
    evse_key,
)
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
MAX_SET_SOURCE = "maxset"  # the limit source of EVSE.Power MaxSet


def connector_status(snap: EvseSnapshot, connector_id: int | None = None) -> str:
    """The 2.0.1 ConnectorStatusEnumType of one connector of an EVSE (default: the one in
    use, or the only one).

    An EVSE feeds one EV at a time: while an EV is plugged into one connector (or its
    transaction is open), the others are Unavailable. A connector set Inoperative, or below
    an Inoperative EVSE or station, is Unavailable (G03/G04: each level its own state).
    """
    st = snap.status
    c = snap.connector_id if connector_id is None else connector_id
    operative = dict(snap.connectors).get(c, False) if snap.connectors else snap.operative
    if st == ConnectorStatus.FAULTED:
        return "Faulted"
    if st == ConnectorStatus.UNAVAILABLE or snap.resetting:
        return "Unavailable"
    if st == ConnectorStatus.RESERVED and operative:
        return "Reserved"  # also with an EV plugged in, until its idToken comes (G03.FR.09)
    if c != snap.connector_id and (snap.ev_connected or snap.tx is not None):
        return "Unavailable"  # the EVSE serves its EV through another connector
    if snap.ev_connected:
        return "Occupied"
    if not operative:
        return "Unavailable"
    return "Available"


def connector_ids(snap: EvseSnapshot) -> list[int]:
    return [c for c, _ in snap.connectors] or [snap.connector_id]


def evse_state(snap: EvseSnapshot) -> str:
    """The AvailabilityState of an EVSE: its connector in use, or the best of its
    connectors (Available when one of them is)."""
    states = [connector_status(snap, c) for c in connector_ids(snap)]
    return next((st for st in AVAILABILITY_STATES if st in states), "Unavailable")


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
        self._queued: dict[tuple[int, int], str] = {}  # last connectorStatus queued per
        # (EVSE, connector)
        self._connected_once = False
        self._offline_since: float | None = None
        # AvailabilityState changes as NotifyEvent, delivered by a task of each session.
        self.events = AvailabilityEvents(self.clock, self.storage)

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
                # B11.FR.10: this EVSE can be reset on its own (Reset with evseId).
                ro("EVSE", "AllowReset", "boolean", "true", evse=eid),
                ro("EVSE", "Problem", "boolean",
                   lambda eid=eid: b(monitoring.problem("EVSE", eid)), evse=eid),
                # Actual: measured; MaxSet: the most this EVSE may deliver, the configured
                # maximum until the CSMS sets less (applied as the "maxset" limit source,
                # persisted); maxLimit: what the hardware is rated for.
                ro("EVSE", "Power", "decimal", lambda eid=eid: num(self._power_w(eid)),
                   attrs=(Attr("MaxSet", "ReadWrite", default=num(e.max_power_w)),),
                   evse=eid, unit="W", min_limit=0, max_limit=e.max_power_w),
                ro("EVSE", "SupplyPhases", "integer", str(e.phases), evse=eid),
            ]
            for cid, ctype in e.connector_list:
                v += [
                    ro("Connector", "AvailabilityState", "OptionList",
                       lambda eid=eid, cid=cid: self.availability(eid, cid),
                       values_list=AVAILABILITY_STATES, evse=eid, connector=cid),
                    ro("Connector", "Available", "boolean", "true", evse=eid, connector=cid),
                    ro("Connector", "ConnectorType", "string", ctype, evse=eid,
                       connector=cid),
                    ro("Connector", "SupplyPhases", "integer", str(e.phases), evse=eid,
                       connector=cid),
                ]
        return v

    # ------------------------------------------------------------------ EVSE.Power MaxSet

    def start(self) -> None:
        """A MaxSet the CSMS set before the restart caps its EVSE from the start on."""
        for info in self._evse_infos():
            self._apply_max_set(info.id)

    def attribute_changed(self, d: VarDef, kind: str, value: str) -> None:
        if (d.component, d.name, kind) == ("EVSE", "Power", "MaxSet") and d.evse is not None:
            self._apply_max_set(d.evse)

    def _apply_max_set(self, evse_id: int) -> None:
        evse = self.station.evses.get(evse_id)
        info = next((i for i in self._evse_infos() if i.id == evse_id), None)
        if evse is None or info is None:
            return
        try:
            watts = float(self.dm.value("EVSE", "Power", evse=evse_id, attribute="MaxSet"))
        except (KeyError, ValueError):
            return
        cap = None if watts >= info.max_power_w else watts
        self.adapter.spawn(evse.set_limit(MAX_SET_SOURCE, cap, "W"), f"v201-maxset-{evse_id}")

    # ------------------------------------------------------------------ live values

    def availability(self, evse_id: int | None, connector_id: int | None = None) -> str:
        """AvailabilityState of the station, an EVSE (its connector in use, or the best of
        its connectors) or one connector."""
        if evse_id is None:
            snaps = self.station.snapshots()
            return "Unavailable" if snaps and all(not s.operative for s in snaps) \
                else "Available"
        evse = self.station.evses.get(evse_id)
        if evse is None:
            return "Unavailable"
        snap = evse.snapshot()
        if connector_id is not None:
            return connector_status(snap, connector_id)
        return evse_state(snap)

    def _power_w(self, evse_id: int) -> float:
        evse = self.station.evses.get(evse_id)
        reading = evse.snapshot().reading if evse is not None else None
        return max(0.0, reading.power_w) if reading is not None else 0.0

    # ------------------------------------------------------------------ StatusNotification

    def _payload(self, snap: EvseSnapshot, connector_id: int, status: str) -> dict[str, Any]:
        return {"timestamp": self.clock.stamp(), "connectorStatus": status,
                "evseId": snap.evse_id, "connectorId": connector_id}

    def queue(self, evse_id: int, *, force: bool = False,
              snap: EvseSnapshot | None = None, connector_id: int | None = None,
              events: bool = True, station: bool = False) -> None:
        """Queue the state of each connector of the EVSE (or only ``connector_id``) that
        changed (or ``force``: report it anyway), and the AvailabilityState events of the
        connectors, the EVSE and the station that changed (``force`` with ``events``: of the
        connectors and, without ``connector_id``, the EVSE; ``station``: the station's too).
        ``events`` false: a forced StatusNotification only (TriggerMessage), no forced
        NotifyEvent."""
        if snap is None:
            evse = self.station.evses.get(evse_id)
            if evse is None:
                return
            snap = evse.snapshot()
        force_events = force and events
        for cid in connector_ids(snap):
            if connector_id is not None and cid != connector_id:
                continue
            status = connector_status(snap, cid)
            self.events.observe(connector_key(evse_id, cid), status, force=force_events)
            key = (evse_id, cid)
            if not force and self._queued.get(key) == status:
                continue
            self._queued[key] = status
            self.adapter.queue_status(key, self._payload(snap, cid, status))
        self.events.observe(evse_key(evse_id), evse_state(snap),
                            force=force_events and connector_id is None)
        self.events.observe(STATION_KEY, self.availability(None), force=station and events)

    async def delivered(self, evse_id: int, timeout: float = 5.0) -> None:
        """Wait (at most ``timeout`` s) until the queued states of the EVSE's connectors went
        out: an EVSE reset is seen as Unavailable before the EVSE comes back. Offline, the
        CSMS gets the state of the moment on reconnection instead."""
        evse = self.station.evses.get(evse_id)
        if evse is None or not self.adapter.online:
            return
        keys = [(evse_id, c) for c in evse.connector_ids]
        await self.adapter.status.flushed(keys, timeout)

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
            self.queue(evse_id, force=force, station=force)
        self.adapter.spawn(self.events.run(self.adapter.call), f"{self.adapter.version}-events",
                           session=True)

    def session_ended(self) -> None:
        self._offline_since = self.clock.monotonic()

    def status_changed(self, snap: EvseSnapshot, fault: FaultKind | None) -> None:
        self.queue(snap.evse_id, snap=snap)

    async def triggered(self, evse_ids: list[int], connector_id: int | None = None) -> None:
        """TriggerMessage(StatusNotification): the state now, even if unchanged (F06), of
        every connector of the EVSEs (or of ``connector_id``); while the boot is Pending,
        sent at once (the status sender waits for Accepted)."""
        for evse_id in evse_ids:
            self.queue(evse_id, force=True, connector_id=connector_id, events=False)
        if not self.adapter.accepted.is_set():
            for evse_id in evse_ids:
                for cid in self.station.evses[evse_id].connector_ids:
                    payload = self.adapter.status.pop((evse_id, cid))
                    if payload is not None:
                        await self.adapter.send_quiet("StatusNotification",
                                                      self.resolved(payload), pending_ok=True)

    # ------------------------------------------------------------------ ChangeAvailability

    @handles("ChangeAvailability")
    async def change_availability(self, p: dict) -> dict:
        """G03/G04: the station, an EVSE or one connector; each level keeps its own state,
        persisted, Scheduled while a transaction on what it concerns runs."""
        operative = p["operationalStatus"] == "Operative"
        evse_p = p.get("evse")
        connector_id = evse_p.get("connectorId") if evse_p is not None else None
        if evse_p is None or evse_p["id"] == 0:
            if connector_id is not None:
                return {"status": "Rejected",
                        "statusInfo": {"reasonCode": "UnknownConnector",
                                       "additionalInfo": "a connectorId needs an EVSE id"}}
            status = await self.station.set_availability(operative)
            targets = list(self.station.evses)
        else:
            evse = self.station.evses.get(evse_p["id"])
            if evse is None:
                return {"status": "Rejected", "statusInfo": {"reasonCode": "UnknownEvse"}}
            if connector_id is not None and connector_id not in evse.connector_ids:
                return {"status": "Rejected",
                        "statusInfo": {"reasonCode": "UnknownConnector"}}
            status = await self.station.set_availability(operative, evse.id, connector_id)
            targets = [evse.id]
        station_level = evse_p is None or evse_p["id"] == 0
        for evse_id in targets:  # G03/G04: every connector concerned, even unchanged
            self.queue(evse_id, force=True, connector_id=connector_id, station=station_level)
        return {"status": status}
