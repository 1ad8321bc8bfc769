"""What the driver is shown that must outlive a restart (tables ``display_messages`` and
``tx_costs``).

Messages a CSMS configured for the display (2.0.1 SetDisplayMessage) stay until it clears
them or they expire, reboot or not; each row is the message as the CSMS sent it (JSON), with
the id it is replaced and cleared by. The cost of a transaction (the running total a CSMS sent
during it, the final total after it) is kept per transaction so that the driver who unplugs
after a power cut still sees the total; the newest rows are kept, older ones pruned. The rules
(what is shown when, what replaces what) are the core's (:mod:`agent.core.display`,
:mod:`agent.core.cost`); this stores rows.
"""

from __future__ import annotations

import json
from typing import Any

from agent.storage.engine import Repository, _dumps

# Costs of this many transactions are kept (the display shows the last one per EVSE).
TX_COSTS_KEPT = 64


def _loads(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


class DisplayRepository(Repository):
    """``display_message_*`` and ``tx_cost_*``."""

    # ------------------------------------------------------------------ display messages

    def display_messages_all(self) -> list[tuple[int, dict[str, Any]]]:
        """(id, message) of every stored message, in the order they were set. A row whose JSON
        cannot be read comes back empty; the core drops it with a log line."""
        rows = self._read("SELECT id, data FROM display_messages ORDER BY seq", (),
                          "reading display messages")
        return [(int(r[0]), _loads(r[1])) for r in rows]

    def display_messages_any(self) -> bool:
        """Whether any message is stored: the one-row question start-up asks before it
        builds the message board (most stations never get a message)."""
        return bool(self._read("SELECT 1 FROM display_messages LIMIT 1", (),
                               "reading display messages"))

    def display_message_put(self, message_id: int, data: dict[str, Any]) -> None:
        """Store a message, replacing one with the same id (2.0.1 O06)."""
        text = _dumps(data)
        with self._write(f"saving display message {message_id}") as conn:
            seq = conn.execute("SELECT coalesce(max(seq), 0) + 1 FROM display_messages"
                               ).fetchone()[0]
            conn.execute(
                "INSERT INTO display_messages (id, data, seq) VALUES (?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET data = excluded.data, seq = excluded.seq",
                (message_id, text, seq))

    def display_message_delete(self, ids: list[int]) -> int:
        """Remove messages; how many were there."""
        if not ids:
            return 0
        with self._write("removing display messages") as conn:
            removed = 0
            for message_id in ids:
                removed += conn.execute("DELETE FROM display_messages WHERE id = ?",
                                        (message_id,)).rowcount
            return removed

    # ------------------------------------------------------------------ transaction costs

    def tx_costs_any(self) -> bool:
        """Whether any transaction cost is stored: the one-row question start-up asks before
        it builds the costs (a station whose CSMS never sent one has none)."""
        if self.pristine:  # a database in memory nothing has written to
            return False
        return bool(self._read("SELECT 1 FROM tx_costs LIMIT 1", (), "reading costs"))

    def tx_cost_put(self, local_id: str, evse_id: int, data: dict[str, Any]) -> None:
        """Store what is known of one transaction's cost (replacing the earlier state) and
        prune the oldest rows beyond :data:`TX_COSTS_KEPT`."""
        text = _dumps(data)
        with self._write(f"saving the cost of transaction {local_id}") as conn:
            seq = conn.execute("SELECT coalesce(max(seq), 0) + 1 FROM tx_costs").fetchone()[0]
            conn.execute(
                "INSERT INTO tx_costs (local_id, evse_id, data, seq) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (local_id) DO UPDATE SET evse_id = excluded.evse_id, "
                "data = excluded.data, seq = excluded.seq", (local_id, evse_id, text, seq))
            conn.execute("DELETE FROM tx_costs WHERE seq <= ?", (seq - TX_COSTS_KEPT,))

    def tx_costs_all(self) -> list[tuple[str, int, dict[str, Any]]]:
        """(local id, EVSE, data) of the kept transaction costs, oldest first."""
        rows = self._read("SELECT local_id, evse_id, data FROM tx_costs ORDER BY seq", (),
                          "reading transaction costs")
        return [(str(r[0]), int(r[1]), _loads(r[2])) for r in rows]
