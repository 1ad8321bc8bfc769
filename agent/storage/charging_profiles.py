"""Charging profiles the CSMS installed (table ``charging_profiles``).

Each row holds one neutral :class:`agent.core.smart_charging.ChargingProfile` as JSON, plus the
columns the replacement and clearing rules select on (id, EVSE, purpose, stack level).  ``seq``
keeps the order of installation: the engine lets the newer of two equal profiles win.  The
rules themselves are the core's (:mod:`agent.core.charging_profiles`); this stores rows.
"""

from __future__ import annotations

from agent.storage.engine import Repository


class ChargingProfileRepository(Repository):
    """``profiles_*``: the ``charging_profiles`` table, rows of (id, evse, purpose, level, json)."""

    def profiles_all(self) -> list[tuple[int, str]]:
        """(id, JSON) of every installed profile, oldest installation first."""
        if self.pristine:  # a database in memory nothing has written to: none installed
            return []
        rows = self._read("SELECT id, data FROM charging_profiles ORDER BY seq", (),
                          "reading charging profiles")
        return [(int(r[0]), r[1]) for r in rows]

    def profiles_put(self, profile_id: int, evse_id: int, purpose: str, stack_level: int,
                     data: str, *, replace: list[int] | None = None) -> None:
        """Install one profile, removing those in ``replace`` in the same commit."""
        with self._write(f"saving charging profile {profile_id}") as conn:
            for old in replace or ():
                conn.execute("DELETE FROM charging_profiles WHERE id = ?", (old,))
            seq = conn.execute("SELECT coalesce(max(seq), 0) + 1 FROM charging_profiles"
                               ).fetchone()[0]
            conn.execute(
                "INSERT INTO charging_profiles (id, evse_id, purpose, stack_level, data, seq) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET "
                "evse_id = excluded.evse_id, purpose = excluded.purpose, "
                "stack_level = excluded.stack_level, data = excluded.data, seq = excluded.seq",
                (profile_id, evse_id, purpose, stack_level, data, seq))

    def profiles_delete(self, ids: list[int]) -> None:
        if not ids:
            return
        with self._write("removing charging profiles") as conn:
            conn.executemany("DELETE FROM charging_profiles WHERE id = ?", [(i,) for i in ids])
