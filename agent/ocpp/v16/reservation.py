"""1.6 Reservation profile: ReserveNow, CancelReservation (1.6 3.11, 5.1, 5.13) and the key
ReserveConnectorZeroSupported (9.3.1).

A thin mapping onto the core's :class:`agent.core.reservations.Reservations`, which decides
the answer (Accepted, Faulted, Occupied, Rejected, Unavailable), keeps the reserved connector
for its idTag or parentIdTag, ends the reservation (used, expired, cancelled, connector
faulted or unavailable) and puts its id into the StartTransaction of the session that used it
(:mod:`agent.ocpp.v16.transactions`). The connector's Reserved status, and Available again
when the reservation ends, are the ordinary StatusNotifications of the availability block.
Connector 0 means no particular connector: the core then keeps one free for the idTag.
The service is built by the first ReserveNow (or at start-up when the state file holds a
reservation); until then no connector is reserved and CancelReservation finds nothing.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from agent.core.service_settings import RESERVATION_PROFILE, RESERVATION_SETTINGS
from agent.ocpp.blocks import Block, handles

log = logging.getLogger("cp_agent.v16")

_KEYS = tuple(d for d in RESERVATION_SETTINGS if d.v16)  # ReserveConnectorZeroSupported


class Reservations(Block):
    PROFILE: ClassVar[str] = RESERVATION_PROFILE
    SETTINGS = _KEYS

    @property
    def service(self) -> Any:
        return self.station.reservations

    def clock_synced(self, delta: float) -> None:
        """The CSMS time was adopted (boot answer, Heartbeat): expiries are wall-clock times,
        so the timer measures from the corrected time (none built: no timer to move)."""
        service = self.built_service("reservations")
        if service is not None:
            service.rearm()

    @handles("ReserveNow")
    async def reserve_now(self, p: dict) -> dict:
        from agent.core.reservations import Reservation, when

        connector_id = p["connectorId"]
        if connector_id != 0 and connector_id not in self.station.evses:
            log.info("ReserveNow %s: no connector %s", p["reservationId"], connector_id)
            return {"status": "Rejected"}
        try:
            expires = when(p["expiryDate"])
        except ValueError:
            log.info("ReserveNow %s: unreadable expiryDate %r", p["reservationId"],
                     p["expiryDate"])
            return {"status": "Rejected"}
        reservation = Reservation(
            id=p["reservationId"], evse_id=connector_id or None, expires_at=expires,
            token=p["idTag"], group=p.get("parentIdTag") or None)
        return {"status": self.service.reserve(reservation)}

    @handles("CancelReservation")
    async def cancel_reservation(self, p: dict) -> dict:
        service = self.built_service("reservations")  # none built: none to cancel
        found = service is not None and service.cancel(p["reservationId"])
        return {"status": "Accepted" if found else "Rejected"}
