"""2.0.1 block H, reservation: ReserveNow (H01, for an EVSE, for none, for a connector type),
CancelReservation (H02), the reserved EVSE used by its idToken or groupIdToken (H03),
ReservationStatusUpdate (H04) and the ReservationCtrlr variables.

The rules are the core's (:class:`agent.core.reservations.Reservations`, shared with 1.6):
the answer, who may use a reserved EVSE, which EVSEs a reservation of no EVSE holds (H01.FR.20
/ H01.FR.24: shown Reserved when as many are left as there are reservations), the expiry
timer, the end when an EVSE becomes faulted or unavailable. This block maps the messages and
says why a reservation ended the 2.0.1 way: ReservationStatusUpdate Expired or Removed (not
for a cancellation the CSMS asked for, nor for a reservation used), queued in the durable
outbox in the commit that removes it. The connector status Reserved is the availability
block's StatusNotification; the reservationId of the transaction that used a reservation is
the transactions block's (TransactionEvent.reservationId). The service is built by the first
ReserveNow (or at start-up when the state file holds a reservation): until then nothing is
reserved, and this block hooks into it when it is built.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, ClassVar

from agent.core.service_settings import RESERVATION_SETTINGS
from agent.ocpp.blocks import handles
from agent.ocpp.v201.device_model import VarDef, VariableBlock, ro, rw

if TYPE_CHECKING:
    from agent.core.reservations import Reservation

log = logging.getLogger("cp_agent.v201")

STATUS_UPDATE = "ReservationStatusUpdate"
# connectorType values that name no type: a reservation of any connector.
_NO_TYPE = frozenset({"Unknown", "Undetermined"})
# Why the station ended a reservation, as agent.core.reservations says it (EXPIRED, REMOVED;
# a test keeps them equal): the ends ReservationStatusUpdate reports.
_REPORTED_ENDS = frozenset({"Expired", "Removed"})


class Reservations(VariableBlock):
    SETTINGS = RESERVATION_SETTINGS  # the variables below read them before any reservation
    OUTBOX_ACTIONS = frozenset({STATUS_UPDATE})
    VARIABLES: ClassVar[tuple[VarDef, ...]] = (
        rw("ReservationCtrlr", "Enabled", "boolean", setting="ReservationEnabled"),
        ro("ReservationCtrlr", "Available", "boolean", "true"),
        ro("ReservationCtrlr", "NonEvseSpecific", "boolean",
           setting="ReserveConnectorZeroSupported"),
    )

    def __init__(self, adapter: Any) -> None:
        super().__init__(adapter)
        self.when_service("reservations", self._hook)

    def _hook(self, service: Any) -> None:
        for info in self.adapter.ctx.evses:  # what a reservation of a connectorType matches
            service.connector_types.setdefault(info.id, info.connector_type)
        service.listeners.append(self._ended)

    @property
    def service(self) -> Any:
        return self.station.reservations

    def clock_synced(self, delta: float) -> None:
        """The CSMS time was adopted (boot answer, Heartbeat): expiries are wall-clock times,
        so the timer measures from the corrected time (none built: no timer to move)."""
        service = self.built_service("reservations")
        if service is not None:
            service.rearm()

    def _ended(self, reservation: Reservation, reason: str) -> None:
        """H04: the station ended a reservation (runs inside the commit that removes it)."""
        if not self.adapter.active or reason not in _REPORTED_ENDS:
            return
        self.adapter.enqueue(STATUS_UPDATE, {"reservationId": reservation.id,
                                             "reservationUpdateStatus": reason})

    # ------------------------------------------------------------------ CSMS requests

    @handles("ReserveNow")
    async def reserve_now(self, p: dict) -> dict:
        from agent.core.reservations import Reservation, when

        evse_id = p.get("evseId") or None  # 0: no particular EVSE, as when omitted
        if evse_id is not None and evse_id not in self.station.evses:
            log.info("ReserveNow %s: no EVSE %s", p["id"], evse_id)
            return {"status": "Rejected", "statusInfo": {"reasonCode": "UnknownEvse"}}
        try:
            expires = when(p["expiryDateTime"])
        except ValueError:
            log.info("ReserveNow %s: unreadable expiryDateTime %r", p["id"],
                     p["expiryDateTime"])
            return {"status": "Rejected", "statusInfo": {"reasonCode": "InvalidValue"}}
        group = p.get("groupIdToken") or {}
        kind = p.get("connectorType")
        reservation = Reservation(
            id=p["id"], evse_id=evse_id, expires_at=expires, token=p["idToken"]["idToken"],
            token_type=p["idToken"]["type"], group=group.get("idToken") or None,
            connector_type=None if kind in _NO_TYPE else kind)
        return {"status": self.service.reserve(reservation)}

    @handles("CancelReservation")
    async def cancel_reservation(self, p: dict) -> dict:
        service = self.built_service("reservations")  # none built: none to cancel
        found = service is not None and service.cancel(p["reservationId"])
        return {"status": "Accepted" if found else "Rejected"}
