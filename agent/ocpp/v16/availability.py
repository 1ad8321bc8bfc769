"""1.6 Core profile, connector state: StatusNotification, ChangeAvailability, UnlockConnector.

The core reports each connector's status once it settled (no SuspendedEV flicker on a session
start); this block turns it into 1.6 StatusNotification payloads for the shared status queue,
which sends the newest one per connector, afresh after every reconnect.  A status that says a
transaction is running waits until that transaction's StartTransaction reached the CSMS, so a
CSMS never hears "Charging" for a transaction it does not know yet.
"""

from __future__ import annotations

from typing import Any, ClassVar

from agent.core.model import EvseSnapshot
from agent.ocpp.blocks import Block, handles
from hal.interfaces import FaultKind

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
INFO_MAX = 50  # info and vendorErrorCode are CiString50
# The only statuses EVCommunicationError may go with (1.6 section 4.9).
WARNING_STATUSES = frozenset({"Preparing", "SuspendedEV", "SuspendedEVSE", "Finishing"})


class Availability(Block):
    PROFILE: ClassVar[str] = "Core"

    def _stamped(self, payload: dict[str, Any]) -> dict[str, Any]:
        if self.clock.trustworthy:  # optional in 1.6: better none than 1970
            payload["timestamp"] = self.clock.now_iso()
        return payload

    def queue_status(self, snap: EvseSnapshot) -> None:
        fault = snap.fault
        code = ERROR_CODES.get(fault, "OtherError") if fault else "NoError"
        if code == "EVCommunicationError" and snap.status.value not in WARNING_STATUSES:
            # 1.6 4.9: EVCommunicationError is a warning, only with these statuses; a pilot
            # fault that took the connector out of service (Faulted) is an OtherError, its
            # vendorErrorCode and info saying which (found by the hardware-faults campaign).
            code = "OtherError"
        payload: dict[str, Any] = {
            "connectorId": snap.evse_id,
            "errorCode": code,
            "status": snap.status.value,
        }
        if fault is not None:
            payload["vendorErrorCode"] = str(fault)[:INFO_MAX]
            if snap.fault_detail:
                payload["info"] = snap.fault_detail[:INFO_MAX]
        self.adapter.queue_status(snap.evse_id, self._stamped(payload))

    def queue_station_status(self, *, error_code: str | None = None,
                             info: str | None = None) -> None:
        """Connector 0: the station as a whole (Available unless every EVSE is inoperative)."""
        evses = self.station.evses.values()
        fault = next(iter(self.station.station_faults), None)
        status = "Unavailable" if all(not e.operative for e in evses) else "Available"
        payload: dict[str, Any] = {
            "connectorId": 0, "status": status,
            "errorCode": error_code or (ERROR_CODES[fault] if fault else "NoError")}
        if fault is not None:
            payload["vendorErrorCode"] = str(fault)
            detail = self.station.station_faults.get(fault, "")
            if detail:
                payload["info"] = detail[:INFO_MAX]
        if info:
            payload["info"] = info[:INFO_MAX]
        self.adapter.queue_status(0, self._stamped(payload))

    def queue_all(self) -> None:
        for snap in self.station.snapshots():
            self.queue_status(snap)
        self.queue_station_status()

    def ready(self, connector_id: int) -> bool:
        """A status of a running transaction waits for its StartTransaction's answer (while
        that is still queued: a Start the CSMS refused for good holds nothing back)."""
        evse = self.station.evses.get(connector_id)
        tx = evse.tx if evse is not None else None
        return (tx is None or tx.remote_id is not None
                or self.storage.tx_outbox_pending(tx.local_id) == 0)

    # ------------------------------------------------------------------ core events

    def session_started(self) -> None:
        self.queue_all()  # bring the CSMS up to date after every (re)connect

    def status_changed(self, snap: EvseSnapshot, fault: FaultKind | None) -> None:
        self.queue_status(snap)

    def fault_changed(self, evse_id: int, kind: FaultKind, active: bool, detail: str) -> None:
        if evse_id == 0:
            self.queue_station_status()

    # ------------------------------------------------------------------ CSMS requests

    @handles("ChangeAvailability")
    async def change_availability(self, p: dict) -> dict:
        connector_id = p["connectorId"]
        operative = p["type"] == "Operative"
        if connector_id != 0 and connector_id not in self.station.evses:
            return {"status": "Rejected"}
        if connector_id == 0:
            # "Applies to the Charge Point and all Connectors": the station level (which a
            # 2.0.1 CSMS may have set too), and Operative lifts every level below it.
            status = await self.station.set_availability(operative)
            if operative:
                await self._lift(list(self.station.evses))
            self.queue_station_status()
        else:
            status = await self.station.set_operative(connector_id, operative)
            if operative:
                await self._lift([connector_id])
        return {"status": status}

    async def _lift(self, evse_ids: list[int]) -> None:
        """1.6 has one connector per EVSE: Operative for it clears what a 2.0.1 CSMS may have
        left Inoperative below it (EVSE and connector levels)."""
        for evse_id in evse_ids:
            await self.station.set_operative(evse_id, True)
            for connector_id in self.station.evses[evse_id].connector_ids:
                await self.station.set_availability(True, evse_id, connector_id)

    @handles("UnlockConnector")
    async def unlock_connector(self, p: dict) -> dict:
        evse = self.station.evses.get(p["connectorId"])
        if evse is None:
            return {"status": "NotSupported"}
        return {"status": await evse.unlock()}
