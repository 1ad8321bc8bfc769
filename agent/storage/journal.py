"""The transaction journal: one row per charging session, what a restart needs to finish it.

``tx_begin`` records a session in the ``atomic()`` block that queues its Start message; the
meter reading, the CSMS's transaction id, the event sequence number and the typed extras
(:data:`TX_EXTRAS`) are kept up to date while it runs; ``tx_close`` marks it finished. After a
crash, ``tx_open()`` lists the sessions to resume or close, each exactly once: put ``tx_close``
and the Stop's ``outbox_put`` in one ``atomic()`` block and a duplicate close rolls back its
Stop too. A row is forgotten only when it is closed and the outbox holds none of its messages.

:class:`TxRecord` (and its extras) is defined in :mod:`agent.core.model`; extras are stored as
JSON in the ``data`` column, so adding one needs no migration.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from agent.core.model import TX_EXTRAS, TxRecord, tx_extras, tx_extras_from
from agent.storage.engine import Repository, _dumps, _finite
from agent.storage.outbox import pending_for

_TX_COLUMNS = (
    "local_id, evse_id, connector_id, id_token, token_type, started_at, meter_start_wh, "
    "remote_id, last_meter_wh, last_meter_at, stopped_at, stop_reason, meter_stop_wh, "
    "seq_no, data, closed"
)


class JournalRepository(Repository):
    """The ``transactions`` table: ``tx_*``."""

    def tx_begin(self, rec: TxRecord) -> None:
        data = _dumps(tx_extras(rec))
        with self._write(f"recording the start of transaction {rec.local_id}") as conn:
            try:
                conn.execute(
                    f"INSERT INTO transactions ({_TX_COLUMNS}) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        rec.local_id,
                        rec.evse_id,
                        rec.connector_id,
                        rec.id_token,
                        rec.token_type,
                        rec.started_at,
                        _finite("meter_start_wh", rec.meter_start_wh),
                        rec.remote_id,
                        _finite("last_meter_wh", rec.last_meter_wh),
                        rec.last_meter_at,
                        rec.stopped_at,
                        rec.stop_reason,
                        None
                        if rec.meter_stop_wh is None
                        else _finite("meter_stop_wh", rec.meter_stop_wh),
                        rec.seq_no,
                        data,
                        int(rec.closed),
                    ),
                )
            except sqlite3.IntegrityError as exc:
                raise ValueError(f"transaction {rec.local_id!r} already exists") from exc

    @staticmethod
    def _tx_record(row: sqlite3.Row) -> TxRecord:
        return TxRecord(
            local_id=row["local_id"],
            evse_id=row["evse_id"],
            connector_id=row["connector_id"],
            id_token=row["id_token"],
            token_type=row["token_type"],
            started_at=row["started_at"],
            meter_start_wh=row["meter_start_wh"],
            remote_id=row["remote_id"],
            last_meter_wh=row["last_meter_wh"],
            last_meter_at=row["last_meter_at"],
            stopped_at=row["stopped_at"],
            stop_reason=row["stop_reason"],
            meter_stop_wh=row["meter_stop_wh"],
            seq_no=row["seq_no"],
            closed=bool(row["closed"]),
            **tx_extras_from(json.loads(row["data"])),
        )

    def tx_get(self, local_id: str) -> TxRecord | None:
        rows = self._read(
            f"SELECT {_TX_COLUMNS} FROM transactions WHERE local_id = ?",
            (local_id,),
            "reading a transaction",
        )
        return self._tx_record(rows[0]) if rows else None

    def tx_by_remote(self, remote_id: str) -> TxRecord | None:
        """If a CSMS reused an id, the open (then the newest) transaction wins."""
        rows = self._read(
            f"SELECT {_TX_COLUMNS} FROM transactions WHERE remote_id = ? "
            "ORDER BY closed, rowid DESC LIMIT 1",
            (str(remote_id),),
            "looking up a transaction",
        )
        return self._tx_record(rows[0]) if rows else None

    def _tx_update(self, doing: str, local_id: str, assignments: str, params: tuple) -> None:
        with self._write(doing) as conn:
            cur = conn.execute(
                f"UPDATE transactions SET {assignments} WHERE local_id = ?", (*params, local_id)
            )
            if cur.rowcount == 0:
                raise KeyError(f"no transaction {local_id!r}")

    def tx_set_remote_id(self, local_id: str, remote_id: str) -> None:
        self._tx_update(
            "saving the CSMS transaction id", local_id, "remote_id = ?", (str(remote_id),)
        )

    def tx_meter(self, local_id: str, wh: float, at: str, *, durable: bool = False) -> None:
        """Record the latest meter reading: one UPDATE by primary key, and no fsync.

        Unlike almost every other write it does not wait for the disk (see
        :meth:`Engine._write_unsynced`). It runs every few seconds per EVSE for hours, and an
        fsync each time costs latency on the event loop and wear on SD cards and eMMC, for a
        value that is only a fallback (the meter keeps its own register).
        WAL with synchronous=NORMAL still survives kill -9 and stays consistent on power loss;
        a power cut loses at most the readings since the last fsynced commit, which any other
        write (or a WAL checkpoint) provides. Inside ``atomic()`` it commits with the block.
        ``durable=True`` commits with fsync: the caller does so now and then, which bounds what
        a power cut can lose even when nothing else is written.
        """
        value = _finite("wh", wh)
        cur = self._write_unsynced(
            "UPDATE transactions SET last_meter_wh = ?, last_meter_at = ? WHERE local_id = ?",
            (value, at, local_id),
            f"recording a meter reading for transaction {local_id}",
            durable=durable,
        )
        if cur.rowcount == 0:
            raise KeyError(f"no transaction {local_id!r}")

    def tx_update(self, local_id: str, **fields: Any) -> None:
        """Persist some of a record's typed extras (:data:`TX_EXTRAS`); others are kept.

        Merging lets independent pieces (remote start, reservation, the reporting adapter) each
        record their own fields without reading the record first and clobbering each other.
        """
        unknown = set(fields) - set(TX_EXTRAS)
        if unknown:
            raise TypeError(f"not a transaction extra: {', '.join(sorted(unknown))}")
        data = dict(fields)
        _dumps(data)  # fail on a bad value before opening a transaction
        with self._write(f"updating transaction {local_id}") as conn:
            row = conn.execute(
                "SELECT data FROM transactions WHERE local_id = ?", (local_id,)
            ).fetchone()
            if row is None:
                raise KeyError(f"no transaction {local_id!r}")
            merged = json.loads(row[0]) | data
            conn.execute(
                "UPDATE transactions SET data = ? WHERE local_id = ?", (_dumps(merged), local_id)
            )

    def tx_next_seq(self, local_id: str) -> int:
        """Hand out a TransactionEvent seqNo; persisted before return, so never handed out twice.

        Call it inside the ``atomic()`` block that queues the event, so a failed queue does not
        burn a number and leave a gap the CSMS would wait for.
        """
        with self._write(f"numbering an event of transaction {local_id}") as conn:
            row = conn.execute(
                "SELECT seq_no FROM transactions WHERE local_id = ?", (local_id,)
            ).fetchone()
            if row is None:
                raise KeyError(f"no transaction {local_id!r}")
            conn.execute(
                "UPDATE transactions SET seq_no = seq_no + 1 WHERE local_id = ?", (local_id,)
            )
        return row[0]

    def tx_close(self, local_id: str, stopped_at: str, reason: str, meter_stop_wh: float) -> None:
        """Mark the session finished; closing twice raises ``ValueError``.

        Refusing the second close is what makes "exactly one Stop message" enforceable: put
        ``tx_close`` and the ``outbox_put`` of the Stop in one ``atomic()`` block, and a
        duplicate close (e.g. recovery racing a normal stop) rolls back its Stop as well.
        """
        value = _finite("meter_stop_wh", meter_stop_wh)
        with self._write(f"closing transaction {local_id}") as conn:
            row = conn.execute(
                "SELECT closed FROM transactions WHERE local_id = ?", (local_id,)
            ).fetchone()
            if row is None:
                raise KeyError(f"no transaction {local_id!r}")
            if row[0]:
                raise ValueError(f"transaction {local_id!r} is already closed")
            conn.execute(
                "UPDATE transactions SET stopped_at = ?, stop_reason = ?, meter_stop_wh = ?, "
                "closed = 1 WHERE local_id = ?",
                (stopped_at, reason, value, local_id),
            )

    def tx_open(self) -> list[TxRecord]:
        rows = self._read(
            f"SELECT {_TX_COLUMNS} FROM transactions WHERE closed = 0 ORDER BY rowid",
            (),
            "reading open transactions",
        )
        return [self._tx_record(row) for row in rows]

    def tx_forget(self, local_id: str) -> None:
        """Delete a finished record; refuses (``ValueError``) while it is still needed.

        The journal entry is what lets a restart resume or close a session, so it may only go
        once it is closed and none of its messages is still waiting for the CSMS. Forgetting an
        unknown id is a no-op.
        """
        with self._write(f"forgetting transaction {local_id}") as conn:
            row = conn.execute(
                "SELECT closed FROM transactions WHERE local_id = ?", (local_id,)
            ).fetchone()
            if row is None:
                return
            if not row[0]:
                raise ValueError(f"transaction {local_id!r} is still open")
            pending = pending_for(conn, local_id)
            if pending:
                raise ValueError(
                    f"transaction {local_id!r} still has {pending} unacknowledged message(s)"
                )
            conn.execute("DELETE FROM transactions WHERE local_id = ?", (local_id,))

    def tx_outbox_pending(self, local_id: str) -> int:
        conn = self._require()
        with self._translate("counting messages"):
            return pending_for(conn, local_id)
