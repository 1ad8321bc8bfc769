"""Reservations the CSMS made (table ``reservations``).

A depot's driver who reserved a charger must still find it reserved after the controller
rebooted, and a reservation whose expiry passed while the station was off must still be
reported as expired. So each accepted reservation is a row: its id, the EVSE it holds (NULL:
any EVSE, 1.6 connector 0 / 2.0.1 without evseId), its expiry and the rest as JSON. The rules
(who may use it, when it ends) are the core's (:mod:`agent.core.reservations`); this stores rows.
"""

from __future__ import annotations

import json
from typing import Any

from agent.storage.engine import Repository, _dumps


class ReservationRepository(Repository):
    """``reservations_*``: rows of (id, evse or NULL, expiry ISO 8601, JSON of the rest)."""

    def reservations_all(self) -> list[tuple[int, int | None, str, dict[str, Any]]]:
        """Every stored reservation as (id, evse_id, expires_at, data), oldest id first.

        A row whose JSON cannot be read comes back with empty data; the core drops it (with a
        log line) rather than failing the start-up over one bad row.
        """
        rows = self._read("SELECT id, evse_id, expires_at, data FROM reservations ORDER BY id",
                          (), "reading reservations")
        out = []
        for r in rows:
            try:
                data = json.loads(r[3])
            except ValueError:
                data = {}
            out.append((int(r[0]), None if r[1] is None else int(r[1]), str(r[2]),
                        data if isinstance(data, dict) else {}))
        return out

    def reservations_any(self) -> bool:
        """Whether any reservation is stored: the one-row question start-up asks before it
        builds the reservation service (an idle station has none, and never builds it)."""
        return bool(self._read("SELECT 1 FROM reservations LIMIT 1", (),
                               "reading reservations"))

    def reservation_put(self, reservation_id: int, evse_id: int | None, expires_at: str,
                        data: dict[str, Any]) -> None:
        """Store a reservation, replacing one with the same id (1.6 5.13, 2.0.1 H01.FR.02)."""
        text = _dumps(data)
        with self._write(f"saving reservation {reservation_id}") as conn:
            conn.execute(
                "INSERT INTO reservations (id, evse_id, expires_at, data) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET evse_id = excluded.evse_id, "
                "expires_at = excluded.expires_at, data = excluded.data",
                (reservation_id, evse_id, expires_at, text))

    def reservation_delete(self, reservation_id: int) -> bool:
        """Remove one; whether it was there."""
        with self._write(f"removing reservation {reservation_id}") as conn:
            cur = conn.execute("DELETE FROM reservations WHERE id = ?", (reservation_id,))
            return cur.rowcount > 0
