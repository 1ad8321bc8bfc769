"""The outbox: transaction-related messages, committed before they are sent.

A message is queued (``outbox_put``) in the same commit as the state change it reports and
removed only when its CALLRESULT arrives (``outbox_ack``), so a power cut (kill -9) between the
two loses nothing: after a restart the link layer (:mod:`agent.link.outbox`) sends what is left,
oldest first. A message the CSMS keeps refusing is moved to the ``dropped`` table rather than
deleted (``outbox_drop``), so a lost transaction can be explained later.

The journal (:mod:`agent.storage.journal`) refers to queued messages by ``tx_ref``; it asks
:func:`pending_for` how many are still waiting instead of querying this table itself.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field

from agent.storage.engine import Repository, _dumps, _finite, _iso

# Dropped messages are kept for diagnostics only; bound them so a CSMS that rejects everything
# cannot fill the disk.
DROPPED_KEEP = 500

_OUTBOX_COLUMNS = "id, action, payload, tx_ref, attempts, next_attempt, created, sends"


@dataclass
class OutboxItem:
    id: int
    action: str
    payload: dict
    tx_ref: str | None
    attempts: int
    next_attempt: float
    created: str
    sends: int = 0  # times handed to the link (survives restarts; see migration 2)
    # The payload as stored (JSON), e.g. to tell without a walk that it holds no deferred
    # timestamp; "" when the item was not read from the table.
    text: str = field(default="", repr=False, compare=False)


def pending_for(conn: sqlite3.Connection, tx_ref: str) -> int:
    """How many queued messages carry ``tx_ref``; runs on the caller's connection/transaction."""
    return conn.execute("SELECT count(*) FROM outbox WHERE tx_ref = ?", (tx_ref,)).fetchone()[0]


class OutboxRepository(Repository):
    """The ``outbox`` queue (FIFO by id) and the ``dropped`` messages kept for diagnostics."""

    def outbox_put(self, action: str, payload: dict, tx_ref: str | None = None) -> int:
        """Queue a message; once this returns it survives kill -9 and power loss."""
        text = _dumps(payload)
        with self._write(f"queueing {action}") as conn:
            cur = conn.execute(
                "INSERT INTO outbox (action, payload, tx_ref, created) VALUES (?, ?, ?, ?)",
                (action, text, tx_ref, _iso(self._clock())),
            )
        assert cur.lastrowid is not None
        return cur.lastrowid

    def outbox_peek(self, limit: int = 1) -> list[OutboxItem]:
        """Oldest first, regardless of ``next_attempt``: the head blocks the queue (FIFO)."""
        rows = self._read(
            f"SELECT {_OUTBOX_COLUMNS} FROM outbox ORDER BY id LIMIT ?",
            (limit,),
            "reading the outbox",
        )
        return [self._outbox_item(row) for row in rows]

    def outbox_find(self, action: str) -> list[OutboxItem]:
        """The queued messages of one action, oldest first (e.g. is such an event waiting)."""
        rows = self._read(
            f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE action = ? ORDER BY id",
            (action,),
            "reading the outbox",
        )
        return [self._outbox_item(row) for row in rows]

    def outbox_foreign(self, actions: frozenset[str] | set[str]) -> list[OutboxItem]:
        """The queued messages whose action is not one of ``actions``, oldest first.

        Asked at every connection (messages queued for another OCPP version): SQLite looks
        at the action column only, instead of the caller loading a whole backlog.
        """
        marks = ", ".join("?" * len(actions))
        rows = self._read(
            f"SELECT {_OUTBOX_COLUMNS} FROM outbox WHERE action NOT IN ({marks}) ORDER BY id",
            tuple(sorted(actions)),
            "reading the outbox",
        )
        return [self._outbox_item(row) for row in rows]

    @staticmethod
    def _outbox_item(row: sqlite3.Row) -> OutboxItem:
        text = row["payload"]
        return OutboxItem(
            id=row["id"],
            action=row["action"],
            payload=json.loads(text),
            tx_ref=row["tx_ref"],
            attempts=row["attempts"],
            next_attempt=row["next_attempt"],
            created=row["created"],
            sends=row["sends"],
            text=text,
        )

    def outbox_ack(self, item_id: int) -> None:
        """Idempotent: a duplicate or late CALLRESULT for a gone item is not an error.

        One statement, so it needs no savepoint of its own: alone it is an fsynced commit,
        inside ``atomic()`` (the sender's ack with the answer's effects) part of that one.
        """
        self._write_unsynced("DELETE FROM outbox WHERE id = ?", (item_id,),
                             "removing an acknowledged message", durable=True)

    def outbox_retry(self, item_id: int, next_attempt: float) -> None:
        """Count a failed attempt; ``next_attempt`` is epoch seconds so it survives a reboot."""
        when = _finite("next_attempt", next_attempt)
        with self._write("scheduling a retry") as conn:
            cur = conn.execute(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt = ? WHERE id = ?",
                (when, item_id),
            )
            if cur.rowcount == 0:
                raise KeyError(f"no outbox item {item_id}")

    def outbox_mark_sent(self, item_id: int) -> None:
        """Count a hand-over to the link, just before the frame goes out.

        Not fsynced (like :meth:`tx_meter`): it survives kill -9, and what a power cut may lose
        is only diagnostics (the log line naming a possible duplicate), never a message.
        """
        self._write_unsynced(
            "UPDATE outbox SET sends = sends + 1 WHERE id = ?", (item_id,), "counting a send"
        )

    def outbox_update(self, item_id: int, payload: dict) -> None:
        """Replace a queued payload, e.g. to fill in the CSMS transaction id once it is known."""
        text = _dumps(payload)
        with self._write("updating a queued message") as conn:
            cur = conn.execute("UPDATE outbox SET payload = ? WHERE id = ?", (text, item_id))
            if cur.rowcount == 0:
                raise KeyError(f"no outbox item {item_id}")

    def outbox_count(self) -> int:
        return self._read("SELECT count(*) FROM outbox", (), "counting the outbox")[0][0]

    def outbox_drop(self, item_id: int, reason: str = "") -> None:
        """Give up on a message but keep a copy, so a lost transaction can be explained later.

        Idempotent like ``outbox_ack``. Only the newest ``DROPPED_KEEP`` copies are kept.
        """
        with self._write("dropping a message") as conn:
            cur = conn.execute(
                "INSERT INTO dropped (id, action, payload, tx_ref, attempts, created, "
                "dropped_at, reason) SELECT id, action, payload, tx_ref, attempts, created, ?, ? "
                "FROM outbox WHERE id = ?",
                (_iso(self._clock()), reason, item_id),
            )
            if cur.rowcount == 0:
                return
            conn.execute("DELETE FROM outbox WHERE id = ?", (item_id,))
            conn.execute(
                "DELETE FROM dropped WHERE id NOT IN "
                "(SELECT id FROM dropped ORDER BY id DESC LIMIT ?)",
                (DROPPED_KEEP,),
            )

    def outbox_dropped(self, limit: int = 100) -> list[dict]:
        """Recently dropped messages, newest first (diagnostics, e.g. a log upload)."""
        rows = self._read(
            "SELECT id, action, payload, tx_ref, attempts, created, dropped_at, reason "
            "FROM dropped ORDER BY id DESC LIMIT ?",
            (limit,),
            "reading dropped messages",
        )
        return [dict(row) | {"payload": json.loads(row["payload"])} for row in rows]
