"""Durable agent state in one SQLite file.

A charge point is switched off at the breaker, browns out, or is killed by the watchdog, and
the CSMS still has to receive every transaction message exactly once. So everything that must
survive a restart lives here, in a single file that is easy to back up and to move aside:
settings changed by the CSMS, the transaction journal, the outbox of transaction-related
messages, the authorization cache and the local authorization list.

Choices that follow from that:

- WAL journal with ``synchronous=FULL``: every commit is fsynced before the method returns,
  so a power cut right after ``outbox_put()`` cannot lose the message. The one exception is
  :meth:`Storage.tx_meter` (see there).
- Explicit transactions (``isolation_level=None``) so that :meth:`Storage.atomic` decides what
  commits together, not the ``sqlite3`` module's implicit BEGIN heuristics.
- An exclusive ``flock`` on ``<path>.lock``: two agents writing one outbox would send messages
  twice, so the second one must refuse to start rather than share.
- Numbered migrations in ``PRAGMA user_version``, each applied in its own transaction, and an
  ``application_id`` so that a foreign SQLite file is never "migrated" into ours.
- Every failure leaves as :class:`StorageError` whose message names the file, what is wrong
  and what an installer can do about it; the process owner reads logs, not tracebacks.

Calls are synchronous and short: the agent is single-threaded asyncio and each call is a small
write, cheaper than a thread hop. Never ``await`` inside ``with storage.atomic():``, or another
task's writes would land in the same transaction.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from agent.core.model import TX_EXTRAS, TxRecord, tx_extras, tx_extras_from

__all__ = ["MIGRATIONS", "OutboxItem", "Storage", "StorageError", "TxRecord"]

MEMORY = ":memory:"

# "CPAG": lets us tell our own database from any other SQLite file someone points us at.
APPLICATION_ID = 0x43504147

# Only another process (an operator's sqlite3 shell, a backup job) can hold the database lock,
# since the flock keeps other agents out. Wait a little for it, not long enough to starve the
# watchdog.
BUSY_TIMEOUT_MS = 2000

# Keep the WAL from growing without bound on small flash after a burst of writes.
JOURNAL_SIZE_LIMIT = 1024 * 1024

# Dropped messages are kept for diagnostics only; bound them so a CSMS that rejects everything
# cannot fill the disk.
DROPPED_KEEP = 500

# Schema migrations: MIGRATIONS[n] brings a database from version n to n + 1. Append only;
# never edit a released script, databases in the field have already run it. The runner wraps
# each script in a transaction and bumps user_version in it, so scripts hold no BEGIN/COMMIT.
MIGRATIONS: list[str] = [
    # 1: initial schema
    f"""
    PRAGMA application_id = {APPLICATION_ID};

    CREATE TABLE settings (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID;

    -- AUTOINCREMENT: ids are never reused, even when the queue drains, so an id held by the
    -- sender can never come to mean a different message, and FIFO-by-id stays FIFO.
    CREATE TABLE outbox (
        id           INTEGER PRIMARY KEY AUTOINCREMENT,
        action       TEXT    NOT NULL,
        payload      TEXT    NOT NULL,
        tx_ref       TEXT,
        attempts     INTEGER NOT NULL DEFAULT 0,
        next_attempt REAL    NOT NULL DEFAULT 0,
        created      TEXT    NOT NULL
    );
    CREATE INDEX outbox_tx_ref ON outbox (tx_ref) WHERE tx_ref IS NOT NULL;

    CREATE TABLE dropped (
        id         INTEGER PRIMARY KEY,
        action     TEXT    NOT NULL,
        payload    TEXT    NOT NULL,
        tx_ref     TEXT,
        attempts   INTEGER NOT NULL,
        created    TEXT    NOT NULL,
        dropped_at TEXT    NOT NULL,
        reason     TEXT    NOT NULL
    );

    CREATE TABLE transactions (
        local_id       TEXT    PRIMARY KEY,
        evse_id        INTEGER NOT NULL,
        connector_id   INTEGER NOT NULL,
        id_token       TEXT    NOT NULL,
        token_type     TEXT,
        started_at     TEXT    NOT NULL,
        meter_start_wh REAL    NOT NULL,
        remote_id      TEXT,
        last_meter_wh  REAL    NOT NULL,
        last_meter_at  TEXT,
        stopped_at     TEXT,
        stop_reason    TEXT,
        meter_stop_wh  REAL,
        seq_no         INTEGER NOT NULL DEFAULT 0,
        data           TEXT    NOT NULL DEFAULT '{{}}',
        closed         INTEGER NOT NULL DEFAULT 0
    );
    -- not UNIQUE: some CSMSs hand out the same id (0, -1) for every rejected start
    CREATE INDEX transactions_remote_id ON transactions (remote_id);

    CREATE TABLE auth_cache (
        id_token   TEXT PRIMARY KEY,
        info       TEXT NOT NULL,
        expires_at TEXT,
        stored_at  TEXT NOT NULL
    ) WITHOUT ROWID;

    CREATE TABLE local_list (
        id_token TEXT PRIMARY KEY,
        info     TEXT NOT NULL
    ) WITHOUT ROWID;

    -- the agent's own bookkeeping (local list version, ...), kept apart from CSMS settings
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID;
    """,
    # 2: how often each queued message was handed to the link. A message with sends > 0 found
    # at start-up may have reached the CSMS before the crash: resending it is the 1.6
    # duplicate window, which the agent can then at least name in its log.
    """
    ALTER TABLE outbox ADD COLUMN sends INTEGER NOT NULL DEFAULT 0;
    """,
]

# SQLite primary result codes we give advice for (extended codes carry these in the low byte).
_SQLITE_PERM = 3
_SQLITE_BUSY = 5
_SQLITE_LOCKED = 6
_SQLITE_NOMEM = 7
_SQLITE_READONLY = 8
_SQLITE_IOERR = 10
_SQLITE_CORRUPT = 11
_SQLITE_FULL = 13
_SQLITE_CANTOPEN = 14
_SQLITE_NOTADB = 26

# For errors raised without a code (or by old Python builds), recognise them by their text.
_MESSAGE_CODES = (
    ("file is not a database", _SQLITE_NOTADB),
    ("malformed", _SQLITE_CORRUPT),
    ("disk is full", _SQLITE_FULL),
    ("readonly", _SQLITE_READONLY),
    ("unable to open", _SQLITE_CANTOPEN),
    ("disk i/o error", _SQLITE_IOERR),
    ("is locked", _SQLITE_BUSY),
)


class StorageError(Exception):
    """The state file cannot be used; the message says which file, why, and what to do.

    ``kind`` lets the caller choose a reaction without parsing the text: "locked" (another
    cp-agent owns the file), "busy", "damaged", "full", "readonly", "io", "foreign", "newer",
    "closed" or "other".
    """

    def __init__(self, message: str, kind: str = "other") -> None:
        super().__init__(message)
        self.kind = kind


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


_TX_COLUMNS = (
    "local_id, evse_id, connector_id, id_token, token_type, started_at, meter_start_wh, "
    "remote_id, last_meter_wh, last_meter_at, stopped_at, stop_reason, meter_stop_wh, "
    "seq_no, data, closed"
)
_OUTBOX_COLUMNS = "id, action, payload, tx_ref, attempts, next_attempt, created, sends"


def _dumps(value: dict) -> str:
    """Serialise before touching the database, so a bad payload fails the caller, not a commit.

    NaN/Infinity are refused: they are not JSON, and a message carrying them would be rejected
    by the CSMS on every retry instead of failing once, here, where the bug is.
    """
    if not isinstance(value, dict):
        raise TypeError(f"expected a dict, got {type(value).__name__}")
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _finite(name: str, value: float) -> float:
    """SQLite stores NaN as NULL, which would come back as None in a float field."""
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return value


def _parse_ts(value: str) -> datetime:
    """Compare instants, not strings: 'Z', '+00:00' and fractional seconds all occur."""
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _iso(epoch: float) -> str:
    return (
        datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


def _primary_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF
    text = str(exc).lower()
    for fragment, mapped in _MESSAGE_CODES:
        if fragment in text:
            return mapped
    return None


class Storage:
    """The agent's durable state; open one per state file, for the life of the process."""

    def __init__(
        self, path: str | os.PathLike[str], *, clock: Callable[[], float] = time.time
    ) -> None:
        """Open (creating if needed), lock, check and migrate the database.

        ``clock`` returns epoch seconds; it stamps ``created``/``dropped_at`` and decides
        auth-cache expiry, so tests can move time without sleeping.
        """
        self._path = os.fspath(path)
        self._memory = self._path == MEMORY
        self._clock = clock
        self._depth = 0
        self._lock_fd: int | None = None
        self._conn: sqlite3.Connection | None = None
        try:
            if not self._memory:
                self._lock_fd = self._acquire_lock()
            created = not self._memory and not os.path.exists(self._path)
            self._conn = self._connect()
            self._check_integrity()
            self._migrate()
            if created:
                self._sync_directory()
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ lifecycle

    @property
    def path(self) -> str:
        return self._path

    def close(self) -> None:
        """Release the database and the lock; safe to call twice.

        The lock file is left in place on purpose: unlinking it would let a starting agent lock
        a fresh inode while a third one still holds the old one.
        """
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._depth = 0
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "open" if self._conn is not None else "closed"
        return f"<Storage {self._path!r} {state}>"

    def _acquire_lock(self) -> int:
        lock_path = self._path + ".lock"
        try:
            # O_CLOEXEC: helper programs we spawn must not inherit (and so prolong) the lock.
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise self._os_error(exc, lock_path, "creating its lock file") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self._lock_holder(fd)
            os.close(fd)
            raise StorageError(
                f"state database {self._path} is locked by another process{holder}: another "
                f"cp-agent is already running with this state file. Stop that instance, or "
                f"give each instance its own state file (two agents sharing one outbox would "
                f"send transaction messages twice).",
                "locked",
            ) from None
        except OSError as exc:
            os.close(fd)
            raise self._os_error(exc, lock_path, "locking it") from exc
        # The pid is a courtesy for the next process that finds the file locked.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    @staticmethod
    def _lock_holder(fd: int) -> str:
        try:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        except OSError:
            return ""
        return f" (pid {text})" if text.isdigit() else ""

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self._path, isolation_level=None)
        except sqlite3.Error as exc:
            raise self._sqlite_error(exc, "opening it") from exc
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if not self._memory and str(mode).lower() != "wal":
                raise StorageError(
                    f"state database {self._path}: SQLite refused write-ahead logging "
                    f"(journal_mode is {mode!r}). Put the state file on a local filesystem "
                    f"(not a network share)."
                )
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")
        except sqlite3.Error as exc:
            conn.close()
            raise self._sqlite_error(exc, "opening it") from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _check_integrity(self) -> None:
        """Catch a damaged file at start-up, not halfway through a charging session."""
        conn = self._require()
        with self._translate("checking its integrity"):
            rows = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
        if rows != ["ok"]:
            raise StorageError(
                f"state database {self._path} is damaged (integrity check: "
                f"{'; '.join(map(str, rows))}). {self._damaged_advice()}",
                "damaged",
            )

    def _migrate(self) -> None:
        conn = self._require()
        with self._translate("reading its schema version"):
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            objects = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        foreign = app_id != APPLICATION_ID and (app_id != 0 or version != 0 or objects != 0)
        if foreign:
            raise StorageError(
                f"{self._path} is an SQLite database but not a cp-agent state database "
                f"(application_id {app_id:#x}, user_version {version}). Point the agent at "
                f"another file; this one was left untouched.",
                "foreign",
            )
        known = len(MIGRATIONS)
        if version > known:
            raise StorageError(
                f"state database {self._path} has schema version {version}, written by a newer "
                f"cp-agent; this version understands up to {known}. Install the newer agent "
                f"again, or move the file aside to start afresh (its queued messages and "
                f"settings would then be lost).",
                "newer",
            )
        for number in range(version, known):
            script = (
                f"BEGIN IMMEDIATE;\n{MIGRATIONS[number]};\n"
                f"PRAGMA user_version = {number + 1};\nCOMMIT;"
            )
            try:
                conn.executescript(script)
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                raise self._sqlite_error(
                    exc, f"migrating its schema from version {number} to {number + 1}"
                ) from exc

    def _sync_directory(self) -> None:
        """A new file's directory entry is only durable once the directory is fsynced."""
        directory = os.path.dirname(os.path.abspath(self._path))
        try:
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass  # some filesystems cannot fsync a directory; SQLite's own syncs still apply
        finally:
            os.close(fd)

    # ------------------------------------------------------------------ errors

    def _require(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StorageError(f"state database {self._path} is closed", "closed")
        return self._conn

    @contextlib.contextmanager
    def _translate(self, doing: str) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise self._sqlite_error(exc, doing) from exc

    def _damaged_advice(self) -> str:
        return (
            "Stop the agent and move the file aside (with its -wal and -shm files) to start "
            "with an empty one, losing its queued messages, open transactions and CSMS "
            "settings; or restore it from a backup."
        )

    def _sqlite_error(self, exc: sqlite3.Error, doing: str) -> StorageError:
        code = _primary_code(exc)
        where = f"state database {self._path}"
        if code == _SQLITE_NOTADB:
            return StorageError(
                f"{where} is not an SQLite database or its header is damaged ({exc}). "
                f"{self._damaged_advice()}",
                "damaged",
            )
        if code == _SQLITE_CORRUPT:
            return StorageError(f"{where} is damaged ({exc}). {self._damaged_advice()}",
                                "damaged")
        if code == _SQLITE_FULL:
            return StorageError(
                f"{where}: the disk is full ({exc}) while {doing}. Free space on that "
                f"filesystem; until then nothing new can be recorded.",
                "full",
            )
        if code in (_SQLITE_READONLY, _SQLITE_CANTOPEN, _SQLITE_PERM):
            return StorageError(f"{where}: cannot write ({exc}) while {doing}. {self._access()}",
                                "readonly")
        if code in (_SQLITE_BUSY, _SQLITE_LOCKED):
            return StorageError(
                f"{where} is busy ({exc}) while {doing}: another program (an sqlite3 shell, a "
                f"backup job) holds a lock on it. Close that program.",
                "busy",
            )
        if code == _SQLITE_IOERR:
            return StorageError(
                f"{where}: I/O error ({exc}) while {doing}. The storage medium may be failing "
                f"or was removed; check the kernel log (dmesg).",
                "io",
            )
        if code == _SQLITE_NOMEM:
            return StorageError(f"{where}: out of memory ({exc}) while {doing}.")
        return StorageError(f"{where}: SQLite error while {doing}: {exc}")

    def _os_error(self, exc: OSError, file: str, doing: str) -> StorageError:
        where = f"state database {self._path}"
        if exc.errno == errno.ENOSPC:
            return StorageError(
                f"{where}: the disk is full ({exc.strerror}) while {doing}. Free space on "
                f"that filesystem.",
                "full",
            )
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT):
            return StorageError(
                f"{where}: cannot write {file} ({exc.strerror}) while {doing}. {self._access()}",
                "readonly",
            )
        return StorageError(f"{where}: {exc.strerror or exc} on {file} while {doing}.", "io")

    def _access(self) -> str:
        """Say which of the usual causes applies, so the fix is obvious from the log line."""
        directory = os.path.dirname(os.path.abspath(self._path))
        uid = os.geteuid()
        if not os.path.isdir(directory):
            return (
                f"Directory {directory} does not exist: create it (e.g. StateDirectory= in the "
                f"systemd unit) or point the agent at an existing one."
            )
        try:
            if os.statvfs(directory).f_flag & os.ST_RDONLY:
                return (
                    f"The filesystem holding {directory} is mounted read-only: remount it "
                    f"read-write or put the state file on a writable one."
                )
        except OSError:
            pass
        if not os.access(directory, os.W_OK | os.X_OK, effective_ids=True):
            return (
                f"Directory {directory} is not writable by uid {uid}, and SQLite must create "
                f"the -wal, -shm and .lock files next to the database: make it writable, or "
                f"put the state file in a writable directory."
            )
        for file in (self._path, self._path + "-wal", self._path + "-shm", self._path + ".lock"):
            if os.path.exists(file) and not os.access(file, os.W_OK, effective_ids=True):
                return f"{file} is not writable by uid {uid}: fix its owner or mode."
        return "Check ownership and permissions of the file and its directory."

    # ------------------------------------------------------------------ transactions

    @contextlib.contextmanager
    def atomic(self) -> Iterator[None]:
        """Commit everything inside as one unit, e.g. ``tx_close`` plus its Stop message.

        Nested blocks become savepoints, so a helper that uses ``atomic()`` itself can be called
        inside a bigger unit; an exception rolls back the innermost block and propagates. Every
        write method runs through here, which is what makes them join an enclosing block.
        """
        conn = self._require()
        if self._depth == 0:
            with self._translate("starting a transaction"):
                conn.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield
            except BaseException:
                self._depth = 0
                with contextlib.suppress(sqlite3.Error):
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                raise
            self._depth = 0
            if not conn.in_transaction:
                # SQLite rolled back on its own (e.g. disk full) and a caller swallowed it.
                raise StorageError(
                    f"state database {self._path}: the transaction was rolled back by SQLite "
                    f"after an earlier error; nothing in it was saved."
                )
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                with contextlib.suppress(sqlite3.Error):
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                raise self._sqlite_error(exc, "committing") from exc
        else:
            name = f"sp{self._depth}"
            with self._translate("starting a savepoint"):
                conn.execute(f"SAVEPOINT {name}")
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                with contextlib.suppress(sqlite3.Error):
                    if conn.in_transaction:
                        conn.execute(f"ROLLBACK TO {name}")
                        conn.execute(f"RELEASE {name}")
                raise
            self._depth -= 1
            with self._translate("releasing a savepoint"):
                conn.execute(f"RELEASE {name}")

    @contextlib.contextmanager
    def _write(self, doing: str) -> Iterator[sqlite3.Connection]:
        with self._translate(doing), self.atomic():
            yield self._require()

    def _read(self, sql: str, params: tuple = (), doing: str = "reading") -> list[sqlite3.Row]:
        conn = self._require()
        with self._translate(doing):
            return conn.execute(sql, params).fetchall()

    # ------------------------------------------------------------------ settings

    def get_setting(self, key: str) -> str | None:
        rows = self._read("SELECT value FROM settings WHERE key = ?", (key,), "reading a setting")
        return rows[0][0] if rows else None

    def set_setting(self, key: str, value: str) -> None:
        if not isinstance(value, str):
            raise TypeError(f"setting {key!r}: value must be a str, got {type(value).__name__}")
        with self._write(f"saving setting {key!r}") as conn:
            conn.execute(
                "INSERT INTO settings (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def delete_setting(self, key: str) -> None:
        with self._write(f"deleting setting {key!r}") as conn:
            conn.execute("DELETE FROM settings WHERE key = ?", (key,))

    def settings(self, prefix: str = "") -> dict[str, str]:
        rows = self._read(
            "SELECT key, value FROM settings WHERE substr(key, 1, ?) = ? ORDER BY key",
            (len(prefix), prefix),
            "reading settings",
        )
        return {row[0]: row[1] for row in rows}

    # ------------------------------------------------------------------ outbox

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

    @staticmethod
    def _outbox_item(row: sqlite3.Row) -> OutboxItem:
        return OutboxItem(
            id=row["id"],
            action=row["action"],
            payload=json.loads(row["payload"]),
            tx_ref=row["tx_ref"],
            attempts=row["attempts"],
            next_attempt=row["next_attempt"],
            created=row["created"],
            sends=row["sends"],
        )

    def outbox_ack(self, item_id: int) -> None:
        """Idempotent: a duplicate or late CALLRESULT for a gone item is not an error."""
        with self._write("removing an acknowledged message") as conn:
            conn.execute("DELETE FROM outbox WHERE id = ?", (item_id,))

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
        conn = self._require()
        sql = "UPDATE outbox SET sends = sends + 1 WHERE id = ?"
        with self._translate("counting a send"):
            if self._depth:
                conn.execute(sql, (item_id,))
            else:
                conn.execute("PRAGMA synchronous = NORMAL")
                try:
                    conn.execute(sql, (item_id,))
                finally:
                    conn.execute("PRAGMA synchronous = FULL")

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

    # ------------------------------------------------------------------ transaction journal

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

        This is the one write that does not wait for the disk. It runs every few seconds per
        EVSE for hours, and an fsync each time costs latency on the event loop and wear on SD
        cards and eMMC, for a value that is only a fallback (the meter keeps its own register).
        WAL with synchronous=NORMAL still survives kill -9 and stays consistent on power loss;
        a power cut loses at most the readings since the last fsynced commit, which any other
        write (or a WAL checkpoint) provides. Inside ``atomic()`` it commits with the block.
        ``durable=True`` commits with fsync: the caller does so now and then, which bounds what
        a power cut can lose even when nothing else is written.
        """
        value = _finite("wh", wh)
        conn = self._require()
        sql = "UPDATE transactions SET last_meter_wh = ?, last_meter_at = ? WHERE local_id = ?"
        with self._translate(f"recording a meter reading for transaction {local_id}"):
            if self._depth or durable:
                cur = conn.execute(sql, (value, at, local_id))
            else:
                # Autocommit statement: its own small transaction, committed without fsync.
                conn.execute("PRAGMA synchronous = NORMAL")
                try:
                    cur = conn.execute(sql, (value, at, local_id))
                finally:
                    conn.execute("PRAGMA synchronous = FULL")
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
            pending = conn.execute(
                "SELECT count(*) FROM outbox WHERE tx_ref = ?", (local_id,)
            ).fetchone()[0]
            if pending:
                raise ValueError(
                    f"transaction {local_id!r} still has {pending} unacknowledged message(s)"
                )
            conn.execute("DELETE FROM transactions WHERE local_id = ?", (local_id,))

    def tx_outbox_pending(self, local_id: str) -> int:
        rows = self._read(
            "SELECT count(*) FROM outbox WHERE tx_ref = ?", (local_id,), "counting messages"
        )
        return rows[0][0]

    # ------------------------------------------------------------------ authorization

    def auth_cache_get(self, id_token: str, *, include_expired: bool = False) -> dict | None:
        """The cached info, or None if absent or past its ``expires_at`` (by the injected clock).

        An expired entry is left in place: deleting it would turn every read into an fsync.
        ``include_expired`` returns it anyway, for a caller that judges expiry with its own
        (CSMS-corrected) clock: an identifier known to be expired must be rejected offline,
        not mistaken for an unknown one.
        """
        rows = self._read(
            "SELECT info, expires_at FROM auth_cache WHERE id_token = ?",
            (id_token,),
            "reading the authorization cache",
        )
        if not rows:
            return None
        info, expires_at = rows[0]
        if expires_at is not None and not include_expired:
            now = datetime.fromtimestamp(self._clock(), UTC)
            if _parse_ts(expires_at) <= now:
                return None
        return json.loads(info)

    def auth_cache_put(self, id_token: str, info: dict, expires_at: str | None, *,
                       limit: int | None = None) -> None:
        """Insert or update an entry; with ``limit``, make room as 1.6 section 3.5.1 says.

        When the cache is full, NOT-valid entries (status other than Accepted) go first, then
        the oldest valid ones.
        """
        text = _dumps(info)
        if expires_at is not None:
            _parse_ts(expires_at)  # reject a malformed timestamp now, not at every lookup
        with self._write("updating the authorization cache") as conn:
            conn.execute(
                "INSERT INTO auth_cache (id_token, info, expires_at, stored_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (id_token) DO UPDATE SET "
                "info = excluded.info, expires_at = excluded.expires_at, "
                "stored_at = excluded.stored_at",
                (id_token, text, expires_at, _iso(self._clock())),
            )
            if limit is not None:
                excess = conn.execute("SELECT count(*) FROM auth_cache").fetchone()[0] - limit
                if excess > 0:
                    conn.execute(
                        "DELETE FROM auth_cache WHERE id_token IN (SELECT id_token FROM "
                        "auth_cache WHERE id_token != ? ORDER BY "
                        "(json_extract(info, '$.status') = 'Accepted'), stored_at LIMIT ?)",
                        (id_token, excess),
                    )

    def auth_cache_count(self) -> int:
        return self._read("SELECT count(*) FROM auth_cache", (), "counting the cache")[0][0]

    def auth_cache_clear(self) -> None:
        with self._write("clearing the authorization cache") as conn:
            conn.execute("DELETE FROM auth_cache")

    def local_list_version(self) -> int:
        """0 means no list was ever installed (the value both 1.6 and 2.0.1 report then)."""
        rows = self._read(
            "SELECT value FROM meta WHERE key = 'local_list_version'",
            (),
            "reading the local list version",
        )
        return int(rows[0][0]) if rows else 0

    def local_list_get(self, id_token: str) -> dict | None:
        rows = self._read(
            "SELECT info FROM local_list WHERE id_token = ?",
            (id_token,),
            "reading the local authorization list",
        )
        return json.loads(rows[0][0]) if rows else None

    def local_list_replace(self, version: int, entries: dict[str, dict]) -> None:
        """Full update: the old list and version are replaced together or not at all."""
        encoded = [(token, _dumps(info)) for token, info in entries.items()]
        with self._write("replacing the local authorization list") as conn:
            conn.execute("DELETE FROM local_list")
            conn.executemany("INSERT INTO local_list (id_token, info) VALUES (?, ?)", encoded)
            self._set_list_version(conn, version)

    def local_list_apply(self, version: int, entries: dict[str, dict | None]) -> None:
        """Differential update (None deletes a token); all of it and the version, or nothing."""
        upserts = [(t, _dumps(info)) for t, info in entries.items() if info is not None]
        deletes = [(t,) for t, info in entries.items() if info is None]
        with self._write("updating the local authorization list") as conn:
            conn.executemany("DELETE FROM local_list WHERE id_token = ?", deletes)
            conn.executemany(
                "INSERT INTO local_list (id_token, info) VALUES (?, ?) "
                "ON CONFLICT (id_token) DO UPDATE SET info = excluded.info",
                upserts,
            )
            self._set_list_version(conn, version)

    @staticmethod
    def _set_list_version(conn: sqlite3.Connection, version: int) -> None:
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('local_list_version', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(int(version)),),
        )

    def local_list_count(self) -> int:
        return self._read("SELECT count(*) FROM local_list", (), "counting the local list")[0][0]
