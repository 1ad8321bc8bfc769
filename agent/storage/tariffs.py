"""Tariffs for the station's own cost calculation (OCPP 2.1 local cost), tables ``tariffs``,
``tx_tariffs`` and ``tx_cost_samples``.

A default tariff the CSMS installed (SetDefaultTariff) stays until it is cleared or replaced,
reboot or not: a row per tariff, as the CSMS sent it (JSON), with the EVSEs it is installed
at. A transaction priced by the station keeps its own copy of the tariffs that priced it (the
default or the driver's, and any ChangeTransactionTariff since), so clearing a default never
changes the price of a session under way, and the timeline of samples it was priced from, so
that after a restart the running cost goes on from the same history (the cost already reported
never changes). Both go when the transaction's last event is queued. The rules are
:mod:`agent.ocpp.v21.local_cost`'s and :mod:`agent.core.tariffs`'; this stores rows.
"""

from __future__ import annotations

import json
from typing import Any

from agent.storage.engine import Repository, _dumps


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


class TariffRepository(Repository):
    """``tariff_*``, ``tx_tariff_*`` and ``tx_cost_sample*``."""

    # ------------------------------------------------------------------ default tariffs

    def tariffs_all(self) -> list[tuple[str, dict[str, Any], list[int], str]]:
        """(tariff id, tariff, EVSE ids, installed at) in the order they were installed; a
        row whose JSON cannot be read comes back with an empty tariff (dropped by the caller
        with a log line)."""
        rows = self._read("SELECT tariff_id, data, evses, installed_at FROM tariffs "
                          "ORDER BY seq", (), "reading tariffs")
        out = []
        for r in rows:
            data, evses = _loads(r[1]), _loads(r[2])
            out.append((str(r[0]), data if isinstance(data, dict) else {},
                        [int(e) for e in evses] if isinstance(evses, list) else [],
                        str(r[3])))
        return out

    def tariff_put(self, tariff_id: str, data: dict[str, Any], evses: list[int],
                   installed_at: str) -> None:
        text = _dumps(data)
        with self._write(f"saving tariff {tariff_id}") as conn:
            seq = conn.execute("SELECT coalesce(max(seq), 0) + 1 FROM tariffs").fetchone()[0]
            conn.execute(
                "INSERT INTO tariffs (tariff_id, data, evses, installed_at, seq) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (tariff_id) DO UPDATE SET "
                "data = excluded.data, evses = excluded.evses",
                (tariff_id, text, json.dumps(sorted(evses)), installed_at, seq))

    def tariff_delete(self, tariff_id: str) -> None:
        with self._write(f"removing tariff {tariff_id}") as conn:
            conn.execute("DELETE FROM tariffs WHERE tariff_id = ?", (tariff_id,))

    # ------------------------------------------------------------------ per transaction

    def tx_tariff_put(self, local_id: str, evse_id: int, data: dict[str, Any]) -> None:
        text = _dumps(data)
        with self._write(f"saving the tariff of transaction {local_id}") as conn:
            conn.execute(
                "INSERT INTO tx_tariffs (local_id, evse_id, data) VALUES (?, ?, ?) "
                "ON CONFLICT (local_id) DO UPDATE SET evse_id = excluded.evse_id, "
                "data = excluded.data", (local_id, evse_id, text))

    def tx_tariffs_all(self) -> list[tuple[str, int, dict[str, Any]]]:
        rows = self._read("SELECT local_id, evse_id, data FROM tx_tariffs", (),
                          "reading transaction tariffs")
        out = []
        for r in rows:
            data = _loads(r[2])
            out.append((str(r[0]), int(r[1]), data if isinstance(data, dict) else {}))
        return out

    def tx_cost_sample_add(self, local_id: str, data: dict[str, Any]) -> None:
        text = _dumps(data)
        with self._write(f"saving a cost sample of transaction {local_id}") as conn:
            seq = conn.execute("SELECT coalesce(max(seq), 0) + 1 FROM tx_cost_samples "
                               "WHERE local_id = ?", (local_id,)).fetchone()[0]
            conn.execute("INSERT INTO tx_cost_samples (local_id, seq, data) VALUES (?, ?, ?)",
                         (local_id, seq, text))

    def tx_cost_samples(self, local_id: str) -> list[dict[str, Any]]:
        rows = self._read("SELECT data FROM tx_cost_samples WHERE local_id = ? ORDER BY seq",
                          (local_id,), "reading cost samples")
        return [d for r in rows if isinstance(d := _loads(r[0]), dict)]

    def tx_tariff_forget(self, local_id: str) -> None:
        """The transaction's tariffs and samples (its last event, with the cost, is queued)."""
        with self._write(f"forgetting the tariff of transaction {local_id}") as conn:
            conn.execute("DELETE FROM tx_tariffs WHERE local_id = ?", (local_id,))
            conn.execute("DELETE FROM tx_cost_samples WHERE local_id = ?", (local_id,))
