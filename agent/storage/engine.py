"""The storage engine: one SQLite file, opened, locked, checked, migrated and written safely.

A charge point is switched off at the breaker, browns out, or is killed by the watchdog, and
the CSMS still has to receive every transaction message exactly once. Everything that must
survive a restart therefore lives in a single SQLite file that is easy to back up and to move
aside. This module owns that file and knows nothing about what is stored in it: the tables
belong to the repositories (``settings``, ``outbox``, ``journal``, ``authorization``) and the
schema to :mod:`agent.storage.migrations`; :class:`agent.storage.Storage` puts them together.

Choices that follow from that:

- WAL journal with ``synchronous=FULL``: every commit is fsynced before the method returns,
  so a power cut right after ``outbox_put()`` cannot lose the message. The exceptions go
  through :meth:`Engine._write_unsynced`, and each says at its call site why it may
  (``tx_meter``, ``outbox_mark_sent``).
- Explicit transactions (``isolation_level=None``) so that :meth:`Engine.atomic` decides what
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
import logging
import math
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Self

MEMORY = ":memory:"

# "CPAG": lets us tell our own database from any other SQLite file someone points us at.
APPLICATION_ID = 0x43504147

# Only another process (an operator's sqlite3 shell, a backup job) can hold the database lock,
# since the flock keeps other agents out. Wait a little for it, not long enough to starve the
# watchdog.
BUSY_TIMEOUT_MS = 2000

# Keep the WAL from growing without bound on small flash after a burst of writes.
JOURNAL_SIZE_LIMIT = 1024 * 1024

# A database in memory (degraded mode, tests, a swarm's thousands of stations) keeps every
# page resident: with 1 KiB pages an empty migrated schema is 28 KiB instead of 96 KiB, and
# a connection costs ~80 KiB of RSS instead of ~250. Files keep SQLite's default page size.
MEMORY_PAGE_SIZE = 1024

# The migrated empty schema of each engine class, serialized once per process: a new database
# in memory is a copy of it (0.1 ms) instead of running every migration script (1.6 ms).
_MEMORY_IMAGES: dict[type, bytes] = {}

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



class Repository:
    """The base of every table repository: the part of the engine a repository may use.

    A repository is a mixin holding one table's (or a few related tables') SQL; it becomes
    usable once :class:`agent.storage.Storage` mixes it with :class:`Engine`. Its writes go
    through :meth:`Engine._write` (or, where losing the last write to a power cut is
    acceptable, :meth:`Engine._write_unsynced`) so they join an enclosing ``atomic()`` block,
    its reads through :meth:`Engine._read`, and anything else it runs on the connection sits
    inside :meth:`Engine._translate`, so every failure still leaves as a :class:`StorageError`.
    The declarations below are for readers and type checkers only; :class:`Engine` has them.
    """

    _clock: Callable[[], float]
    # Rollbacks so far (Engine.atomic): a repository that caches what it read reloads after
    # one, since a rollback may have undone writes its cache already holds.
    _rollbacks: int

    if TYPE_CHECKING:

        @property
        def pristine(self) -> bool: ...

        def _require(self) -> sqlite3.Connection: ...

        def _translate(self, doing: str) -> AbstractContextManager[None]: ...

        def _write(self, doing: str) -> AbstractContextManager[sqlite3.Connection]: ...

        def _write_unsynced(
            self, sql: str, params: tuple, doing: str, *, durable: bool = False
        ) -> sqlite3.Cursor: ...

        def _read(
            self, sql: str, params: tuple = (), doing: str = "reading"
        ) -> list[sqlite3.Row]: ...


class Engine:
    """One open state file: lock, connection, schema version, transactions, error translation.

    Not used on its own: :class:`agent.storage.Storage` mixes the repositories into it and
    supplies the schema through :meth:`_migrations`. Open one per state file, for the life of
    the process.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, clock: Callable[[], float] = time.time
    ) -> None:
        """Open (creating if needed), lock, check and migrate the database.

        ``clock`` returns epoch seconds; the repositories take their timestamps and expiry
        decisions from it (e.g. outbox ``created``/``dropped_at``, auth-cache expiry), so tests
        can move time without sleeping.
        """
        self._path = os.fspath(path)
        self._memory = self._path == MEMORY
        self._clock = clock
        self._depth = 0
        self._rollbacks = 0
        self._lock_fd: int | None = None
        self._conn: sqlite3.Connection | None = None
        # A database in memory starts as the process's copy of the empty migrated schema:
        # until its first write every table is known to be empty (see ``pristine``).
        self._pristine = False
        # Told when the disk is full (the station's MemoryExhaustion security event); set by
        # the composition root. Must not write to this database.
        self.on_full: Callable[[str], None] | None = None
        try:
            if not self._memory:
                self._lock_fd = self._acquire_lock()
            created = not self._memory and not os.path.exists(self._path)
            self._conn = self._connect()
            if self._memory:
                # Nothing to check in a copy made a moment ago (and the check would keep
                # ~150 KiB of SQLite's memory per connection resident).
                # The copy is this class's own migrated schema: nothing to check or
                # migrate (the three schema queries were where SQLite parsed the schema,
                # which the first real statement now does instead).
                self._pristine = self._load_memory_image()
            else:
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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "open" if self._conn is not None else "closed"
        return f"<{type(self).__name__} {self._path!r} {state}>"

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
            if self._memory:
                # A private database in memory: no other connection can lock it, its journal
                # is in memory whatever is asked (journal_mode answers "memory") and nothing
                # is ever synced, so the four pragmas below would change nothing (they were
                # ~85 us of a swarm station's boot).
                return conn
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

    def _load_memory_image(self) -> bool:
        """Start a database in memory from the process's copy of the migrated schema.

        The copy is what running the migrations on an empty database gives, so the database
        is what a freshly created and migrated file would be. True when it was copied (it is
        empty and up to date), False for the first database of the class in this process,
        which ran the migrations itself.
        """
        cls = type(self)
        conn = self._require()
        image = _MEMORY_IMAGES.get(cls)
        with self._translate("creating it in memory"):
            if image is None:
                conn.execute(f"PRAGMA page_size = {MEMORY_PAGE_SIZE}")
                self._migrate()
                _MEMORY_IMAGES[cls] = conn.serialize()
                return False
            conn.deserialize(image)
            return True

    @property
    def pristine(self) -> bool:
        """True while this is a database in memory copied from the empty migrated schema that
        nothing has written to yet: every table is empty, so a start-up read of one (stored
        settings, profiles, costs) can be answered without compiling its statement. A state
        file is never pristine, even a new one: only the copy's contents are known for sure.
        Any write transaction, or a single unsynced write, ends it, whether it commits or not.
        """
        return self._pristine and self._conn is not None  # a closed one says so on a read

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

    def _migrations(self) -> Sequence[str]:
        """The schema, as numbered scripts: item n brings a database from version n to n + 1.

        The engine runs them and creates no table of its own; the composed class says which
        scripts make up its schema (:data:`agent.storage.MIGRATIONS` for ``Storage``).
        """
        return ()

    def _migrate(self) -> None:
        migrations = self._migrations()
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
        known = len(migrations)
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
                f"BEGIN IMMEDIATE;\n{migrations[number]};\n"
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

    def _full(self, error: StorageError) -> StorageError:
        hook = getattr(self, "on_full", None)
        if hook is not None:
            try:
                hook(str(error))
            except Exception:  # noqa: BLE001 - the caller still gets its StorageError
                logging.getLogger("cp_agent.storage").exception("on_full hook failed")
        return error

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
            return self._full(StorageError(
                f"{where}: the disk is full ({exc}) while {doing}. Free space on that "
                f"filesystem; until then nothing new can be recorded.",
                "full",
            ))
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
            return self._full(StorageError(
                f"{where}: the disk is full ({exc.strerror}) while {doing}. Free space on "
                f"that filesystem.",
                "full",
            ))
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
        self._pristine = False
        if self._depth == 0:
            # try/except rather than ``_translate`` on the paths every write takes: a
            # generator context manager per statement was ~5 % of an outbox replay's CPU.
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._sqlite_error(exc, "starting a transaction") from exc
            self._depth = 1
            try:
                yield
            except BaseException:
                self._depth = 0
                self._rollbacks += 1
                with contextlib.suppress(sqlite3.Error):
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                raise
            self._depth = 0
            if not conn.in_transaction:
                # SQLite rolled back on its own (e.g. disk full) and a caller swallowed it.
                self._rollbacks += 1
                raise StorageError(
                    f"state database {self._path}: the transaction was rolled back by SQLite "
                    f"after an earlier error; nothing in it was saved."
                )
            try:
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollbacks += 1
                with contextlib.suppress(sqlite3.Error):
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                raise self._sqlite_error(exc, "committing") from exc
        else:
            name = f"sp{self._depth}"
            try:
                conn.execute(f"SAVEPOINT {name}")
            except sqlite3.Error as exc:
                raise self._sqlite_error(exc, "starting a savepoint") from exc
            self._depth += 1
            try:
                yield
            except BaseException:
                self._depth -= 1
                self._rollbacks += 1
                with contextlib.suppress(sqlite3.Error):
                    if conn.in_transaction:
                        conn.execute(f"ROLLBACK TO {name}")
                        conn.execute(f"RELEASE {name}")
                raise
            self._depth -= 1
            try:
                conn.execute(f"RELEASE {name}")
            except sqlite3.Error as exc:
                raise self._sqlite_error(exc, "releasing a savepoint") from exc

    @contextlib.contextmanager
    def _write(self, doing: str) -> Iterator[sqlite3.Connection]:
        with self._translate(doing), self.atomic():
            yield self._require()

    def _write_unsynced(
        self, sql: str, params: tuple, doing: str, *, durable: bool = False
    ) -> sqlite3.Cursor:
        """Run one write statement whose commit does not wait for the disk.

        For frequent writes of values that are cheap to lose (each caller says why its value
        is): WAL with ``synchronous=NORMAL`` still survives kill -9 and stays consistent on
        power loss, and a power cut loses at most the writes since the last fsynced commit,
        which any other write (or a WAL checkpoint) provides. The statement runs as its own
        autocommit transaction; inside ``atomic()`` it commits with the block instead, and
        ``durable=True`` commits it with fsync like any other write.
        """
        conn = self._require()
        self._pristine = False
        try:
            if self._depth or durable or self._memory:  # a database in memory never syncs
                return conn.execute(sql, params)
            # Autocommit statement: its own small transaction, committed without fsync.
            conn.execute("PRAGMA synchronous = NORMAL")
            try:
                return conn.execute(sql, params)
            finally:
                conn.execute("PRAGMA synchronous = FULL")
        except sqlite3.Error as exc:
            raise self._sqlite_error(exc, doing) from exc

    def _read(self, sql: str, params: tuple = (), doing: str = "reading") -> list[sqlite3.Row]:
        conn = self._require()
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise self._sqlite_error(exc, doing) from exc
