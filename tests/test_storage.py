"""Tests for agent.storage: the API, migrations, failure messages, and crash durability.

Crash tests run the writer in a child process and synchronise on its stdout (a line per
completed call), then kill it: nothing waits on time.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from agent import storage as storage_mod
from agent.storage import MIGRATIONS, OutboxItem, Storage, StorageError, TxRecord

REPO = Path(__file__).resolve().parents[1]
NOBODY = 65534


def make_tx(local_id: str = "L1", **changes: object) -> TxRecord:
    fields: dict = dict(
        local_id=local_id,
        evse_id=1,
        connector_id=1,
        id_token="04A2B3C4",
        token_type="ISO14443",
        started_at="2025-01-01T10:00:00.000Z",
        meter_start_wh=1000.0,
        remote_id=None,
        last_meter_wh=1000.0,
        last_meter_at=None,
        stopped_at=None,
        stop_reason=None,
        meter_stop_wh=None,
        seq_no=0,
        closed=False,
    )
    fields.update(changes)
    return TxRecord(**fields)


class FakeClock:
    def __init__(self, now: float = 1_735_725_600.0) -> None:  # 2025-01-01T10:00:00Z
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state.db"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(db_path: Path, clock: FakeClock) -> Iterator[Storage]:
    s = Storage(db_path, clock=clock)
    yield s
    s.close()


def raw(path: Path) -> contextlib.closing[sqlite3.Connection]:
    """A plain connection, to look at or tamper with the file behind Storage's back."""
    return contextlib.closing(sqlite3.connect(path, isolation_level=None))


def raw_sql(path: Path, statement: str) -> list[tuple]:
    with raw(path) as conn:
        return conn.execute(statement).fetchall()


def run_child(script: str, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    )


def read_until(proc: subprocess.Popen[str], marker: str) -> list[str]:
    """Lines the child printed before ``marker``; fails with its stderr if it died first."""
    assert proc.stdout is not None
    lines = []
    while True:
        line = proc.stdout.readline()
        if not line:
            proc.kill()
            _, err = proc.communicate()
            pytest.fail(f"child exited before {marker!r}:\n{err}")
        line = line.strip()
        if line == marker:
            return lines
        lines.append(line)


def sigkill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL


# ---------------------------------------------------------------- opening and schema


def test_memory_database_needs_no_file_or_lock(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with Storage(":memory:") as s:
        s.set_setting("a", "1")
        assert s.get_setting("a") == "1"
    assert list(tmp_path.iterdir()) == []


def test_new_file_is_wal_full_sync_and_current_schema(store: Storage, db_path: Path) -> None:
    conn = store._conn
    assert conn is not None
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == storage_mod.BUSY_TIMEOUT_MS
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    assert conn.execute("PRAGMA application_id").fetchone()[0] == storage_mod.APPLICATION_ID
    assert Path(str(db_path) + ".lock").read_text().strip() == str(os.getpid())


def test_reopen_is_idempotent_and_keeps_data(db_path: Path) -> None:
    with Storage(db_path) as s:
        s.set_setting("ocpp16/HeartbeatInterval", "300")
        s.outbox_put("StatusNotification", {"status": "Available"})
    for _ in range(2):
        with Storage(db_path) as s:
            assert s.get_setting("ocpp16/HeartbeatInterval") == "300"
            assert s.outbox_count() == 1
    assert raw_sql(db_path, "PRAGMA user_version") == [(len(MIGRATIONS),)]


def test_migrations_run_in_order_on_an_older_database(db_path: Path, monkeypatch) -> None:
    with Storage(db_path) as s:
        s.set_setting("k", "v")
    extra = [
        "CREATE TABLE profiles (id INTEGER PRIMARY KEY, body TEXT NOT NULL)",
        "ALTER TABLE profiles ADD COLUMN evse_id INTEGER; INSERT INTO profiles VALUES (1,'x',0)",
    ]
    monkeypatch.setattr(storage_mod, "MIGRATIONS", [*MIGRATIONS, *extra])
    with Storage(db_path) as s:
        assert s.get_setting("k") == "v"
    assert raw_sql(db_path, "PRAGMA user_version") == [(len(MIGRATIONS) + 2,)]
    assert raw_sql(db_path, "SELECT id, body, evse_id FROM profiles") == [(1, "x", 0)]


def test_failed_migration_is_rolled_back_and_reported(db_path: Path, monkeypatch) -> None:
    Storage(db_path).close()
    bad = "CREATE TABLE half_done (a); INSERT INTO no_such_table VALUES (1)"
    monkeypatch.setattr(storage_mod, "MIGRATIONS", [*MIGRATIONS, bad])
    with pytest.raises(StorageError) as err:
        Storage(db_path)
    message = str(err.value)
    assert str(db_path) in message and "migrating" in message
    assert raw_sql(db_path, "PRAGMA user_version") == [(len(MIGRATIONS),)]
    tables = raw_sql(db_path, "SELECT name FROM sqlite_master WHERE type = 'table'")
    assert ("half_done",) not in tables
    # the failed attempt released the lock, so the old code can still open the file
    monkeypatch.setattr(storage_mod, "MIGRATIONS", MIGRATIONS)
    Storage(db_path).close()


def test_database_from_newer_schema_is_refused(db_path: Path) -> None:
    Storage(db_path).close()
    raw_sql(db_path, f"PRAGMA user_version = {len(MIGRATIONS) + 3}")
    with pytest.raises(StorageError) as err:
        Storage(db_path)
    message = str(err.value)
    assert str(db_path) in message
    assert "newer" in message and str(len(MIGRATIONS) + 3) in message


def test_foreign_sqlite_database_is_refused_and_untouched(db_path: Path) -> None:
    raw_sql(db_path, "CREATE TABLE photos (id INTEGER)")
    with pytest.raises(StorageError, match="not a cp-agent state database"):
        Storage(db_path)
    assert raw_sql(db_path, "PRAGMA user_version") == [(0,)]
    assert raw_sql(db_path, "SELECT name FROM sqlite_master") == [("photos",)]


def test_empty_existing_file_is_initialised(db_path: Path) -> None:
    db_path.touch()
    with Storage(db_path) as s:
        assert s.outbox_count() == 0


def test_closed_storage_raises_and_close_is_idempotent(db_path: Path) -> None:
    s = Storage(db_path)
    s.close()
    s.close()
    with pytest.raises(StorageError, match="closed"):
        s.outbox_count()
    assert "closed" in repr(s)


# ---------------------------------------------------------------- settings


def test_settings_roundtrip_overwrite_delete(store: Storage) -> None:
    assert store.get_setting("ocpp16/MeterValueSampleInterval") is None
    store.set_setting("ocpp16/MeterValueSampleInterval", "60")
    store.set_setting("ocpp16/MeterValueSampleInterval", "30")
    assert store.get_setting("ocpp16/MeterValueSampleInterval") == "30"
    store.delete_setting("ocpp16/MeterValueSampleInterval")
    store.delete_setting("ocpp16/MeterValueSampleInterval")  # absent: no error
    assert store.get_setting("ocpp16/MeterValueSampleInterval") is None


def test_settings_prefix_is_literal(store: Storage) -> None:
    store.set_setting("v201/OCPPCommCtrlr/HeartbeatInterval", "60")
    store.set_setting("v201/AuthCtrlr/Enabled", "true")
    store.set_setting("v16/HeartbeatInterval", "300")
    store.set_setting("v2%_x", "wildcards must not match")
    assert store.settings("v201/") == {
        "v201/AuthCtrlr/Enabled": "true",
        "v201/OCPPCommCtrlr/HeartbeatInterval": "60",
    }
    assert store.settings("v2%_") == {"v2%_x": "wildcards must not match"}
    assert len(store.settings()) == 4


def test_setting_value_must_be_str(store: Storage) -> None:
    with pytest.raises(TypeError):
        store.set_setting("x", 5)  # type: ignore[arg-type]


# ---------------------------------------------------------------- outbox


def test_outbox_is_fifo_and_roundtrips_payloads(store: Storage) -> None:
    payload = {"connectorId": 1, "meterValue": [{"sampledValue": [{"value": "12.5"}]}], "ü": "ß"}
    a = store.outbox_put("MeterValues", payload, "L1")
    b = store.outbox_put("StatusNotification", {"status": "Charging"})
    assert b > a
    assert store.outbox_count() == 2
    head = store.outbox_peek()
    assert head == [OutboxItem(a, "MeterValues", payload, "L1", 0, 0.0, "2025-01-01T10:00:00.000Z")]
    assert [i.id for i in store.outbox_peek(10)] == [a, b]
    assert store.outbox_peek(10)[1].tx_ref is None
    created = datetime.fromisoformat(head[0].created)
    assert created.tzinfo is not None and created.utcoffset().total_seconds() == 0


def test_outbox_ack_removes_and_is_idempotent(store: Storage) -> None:
    a = store.outbox_put("A", {})
    b = store.outbox_put("B", {})
    store.outbox_ack(a)
    store.outbox_ack(a)
    assert [i.id for i in store.outbox_peek(5)] == [b]
    store.outbox_ack(b)
    assert store.outbox_peek(5) == [] and store.outbox_count() == 0
    # ids are never reused, even after the queue drained
    assert store.outbox_put("C", {}) > b


def test_outbox_retry_counts_attempts(store: Storage) -> None:
    a = store.outbox_put("StartTransaction", {"connectorId": 1})
    store.outbox_retry(a, 1_735_725_630.5)
    store.outbox_retry(a, 1_735_725_690.0)
    item = store.outbox_peek()[0]
    assert (item.attempts, item.next_attempt) == (2, 1_735_725_690.0)
    with pytest.raises(KeyError):
        store.outbox_retry(999, 0.0)


def test_outbox_update_replaces_payload(store: Storage) -> None:
    a = store.outbox_put("StopTransaction", {"transactionId": "L1", "meterStop": 1500})
    store.outbox_update(a, {"transactionId": 42, "meterStop": 1500})
    assert store.outbox_peek()[0].payload == {"transactionId": 42, "meterStop": 1500}
    with pytest.raises(KeyError):
        store.outbox_update(999, {})


def test_outbox_drop_keeps_a_diagnostic_copy(store: Storage, clock: FakeClock) -> None:
    a = store.outbox_put("MeterValues", {"n": 1}, "L1")
    store.outbox_retry(a, 0.0)
    clock.now += 60
    store.outbox_drop(a, reason="attempts exhausted")
    store.outbox_drop(a, reason="again")  # already gone: no-op
    assert store.outbox_count() == 0
    assert store.outbox_dropped() == [
        {
            "id": a,
            "action": "MeterValues",
            "payload": {"n": 1},
            "tx_ref": "L1",
            "attempts": 1,
            "created": "2025-01-01T10:00:00.000Z",
            "dropped_at": "2025-01-01T10:01:00.000Z",
            "reason": "attempts exhausted",
        }
    ]


def test_dropped_table_is_bounded(store: Storage, monkeypatch) -> None:
    monkeypatch.setattr("agent.storage.outbox.DROPPED_KEEP", 3)
    ids = [store.outbox_put("A", {"i": i}) for i in range(5)]
    for item_id in ids:
        store.outbox_drop(item_id)
    assert [d["id"] for d in store.outbox_dropped()] == ids[:1:-1]


def test_outbox_rejects_unserialisable_payloads_before_writing(store: Storage) -> None:
    with pytest.raises(ValueError):
        store.outbox_put("MeterValues", {"value": float("nan")})
    with pytest.raises(TypeError):
        store.outbox_put("MeterValues", {"when": datetime.now(UTC)})
    with pytest.raises(TypeError):
        store.outbox_put("MeterValues", ["not", "a", "dict"])  # type: ignore[arg-type]
    assert store.outbox_count() == 0


# ---------------------------------------------------------------- transaction journal


def test_tx_begin_get_roundtrip(store: Storage) -> None:
    rec = make_tx(remote_start_id=7, parent="FAMILY", token_type=None)
    store.tx_begin(rec)
    assert store.tx_get("L1") == rec
    assert store.tx_get("nope") is None
    with pytest.raises(ValueError, match="already exists"):
        store.tx_begin(make_tx())


def test_tx_remote_id_lookup(store: Storage) -> None:
    store.tx_begin(make_tx("L1"))
    assert store.tx_by_remote("17") is None
    store.tx_set_remote_id("L1", "17")
    found = store.tx_by_remote("17")
    assert found is not None and found.local_id == "L1" and found.remote_id == "17"
    with pytest.raises(KeyError):
        store.tx_set_remote_id("nope", "1")


def test_tx_by_remote_prefers_the_open_one_when_an_id_is_reused(store: Storage) -> None:
    store.tx_begin(make_tx("old", remote_id="0"))
    store.tx_begin(make_tx("new", remote_id="0"))
    store.tx_begin(make_tx("newer", remote_id="0"))
    store.tx_close("newer", "2025-01-01T11:00:00Z", "Local", 1200.0)
    store.tx_close("old", "2025-01-01T11:00:00Z", "Local", 1200.0)
    found = store.tx_by_remote("0")
    assert found is not None and found.local_id == "new"


def test_tx_meter_updates_and_keeps_full_sync(store: Storage) -> None:
    store.tx_begin(make_tx())
    store.tx_meter("L1", 1234.5, "2025-01-01T10:05:00Z")
    rec = store.tx_get("L1")
    assert rec is not None
    assert (rec.last_meter_wh, rec.last_meter_at) == (1234.5, "2025-01-01T10:05:00Z")
    assert store._conn is not None
    assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2
    with pytest.raises(KeyError):
        store.tx_meter("nope", 1.0, "2025-01-01T10:05:00Z")
    with pytest.raises(ValueError):
        store.tx_meter("L1", float("inf"), "2025-01-01T10:05:00Z")
    assert store._conn.execute("PRAGMA synchronous").fetchone()[0] == 2


def test_tx_meter_inside_atomic_commits_with_the_block(store: Storage) -> None:
    store.tx_begin(make_tx())
    with pytest.raises(RuntimeError), store.atomic():
        store.tx_meter("L1", 2000.0, "2025-01-01T10:05:00Z")
        raise RuntimeError
    rec = store.tx_get("L1")
    assert rec is not None and rec.last_meter_wh == 1000.0


def test_tx_update_merges_extras(store: Storage) -> None:
    store.tx_begin(make_tx(remote_start_id=7))
    store.tx_update("L1", reservation_id=3)
    store.tx_update("L1", remote_start_id=8)
    rec = store.tx_get("L1")
    assert rec is not None and (rec.remote_start_id, rec.reservation_id) == (8, 3)
    with pytest.raises(KeyError):
        store.tx_update("nope", parent="X")
    with pytest.raises(TypeError, match="not a transaction extra"):
        store.tx_update("L1", closed=True)


def test_tx_rows_of_older_versions_still_read(store: Storage) -> None:
    """A journal row written before the extras were typed ({"v201": true}) reads the same."""
    store.tx_begin(make_tx())
    conn = store._require()
    conn.execute("UPDATE transactions SET data = ? WHERE local_id = 'L1'",
                 ('{"v201": true, "remote_start_id": 4, "someday": 1}',))
    rec = store.tx_get("L1")
    assert rec is not None and rec.reported_as == "2.0.1" and rec.remote_start_id == 4


def test_tx_next_seq_is_persisted(db_path: Path) -> None:
    with Storage(db_path) as s:
        s.tx_begin(make_tx(seq_no=0))
        assert [s.tx_next_seq("L1") for _ in range(3)] == [0, 1, 2]
        with pytest.raises(KeyError):
            s.tx_next_seq("nope")
    with Storage(db_path) as s:
        assert s.tx_next_seq("L1") == 3
        rec = s.tx_get("L1")
        assert rec is not None and rec.seq_no == 4


def test_tx_close_and_open_list(store: Storage) -> None:
    store.tx_begin(make_tx("L1"))
    store.tx_begin(make_tx("L2", evse_id=2))
    store.tx_begin(make_tx("L3", evse_id=3))
    store.tx_close("L2", "2025-01-01T11:00:00Z", "EVDisconnected", 4321.0)
    assert [t.local_id for t in store.tx_open()] == ["L1", "L3"]
    rec = store.tx_get("L2")
    assert rec is not None and rec.closed
    assert (rec.stopped_at, rec.stop_reason, rec.meter_stop_wh) == (
        "2025-01-01T11:00:00Z",
        "EVDisconnected",
        4321.0,
    )
    with pytest.raises(ValueError, match="already closed"):
        store.tx_close("L2", "2025-01-01T11:01:00Z", "Local", 4400.0)
    with pytest.raises(KeyError):
        store.tx_close("nope", "2025-01-01T11:00:00Z", "Local", 1.0)


def test_tx_close_and_stop_message_commit_together(store: Storage) -> None:
    store.tx_begin(make_tx())
    with store.atomic():
        store.tx_close("L1", "2025-01-01T11:00:00Z", "Local", 1500.0)
        store.outbox_put("StopTransaction", {"meterStop": 1500}, "L1")
    assert store.tx_open() == [] and store.tx_outbox_pending("L1") == 1
    # a second close (say, recovery racing a normal stop) takes its Stop down with it
    with pytest.raises(ValueError), store.atomic():
        store.outbox_put("StopTransaction", {"meterStop": 1500}, "L1")
        store.tx_close("L1", "2025-01-01T11:00:00Z", "Local", 1500.0)
    assert store.tx_outbox_pending("L1") == 1


def test_tx_forget_only_when_closed_and_acknowledged(store: Storage) -> None:
    store.tx_begin(make_tx())
    stop = store.outbox_put("StopTransaction", {}, "L1")
    store.outbox_put("Heartbeat", {})
    with pytest.raises(ValueError, match="still open"):
        store.tx_forget("L1")
    store.tx_close("L1", "2025-01-01T11:00:00Z", "Local", 1500.0)
    assert store.tx_outbox_pending("L1") == 1
    with pytest.raises(ValueError, match="unacknowledged"):
        store.tx_forget("L1")
    store.outbox_ack(stop)
    assert store.tx_outbox_pending("L1") == 0
    store.tx_forget("L1")
    store.tx_forget("L1")  # unknown: no-op
    assert store.tx_get("L1") is None


# ---------------------------------------------------------------- authorization


def test_auth_cache(store: Storage, clock: FakeClock) -> None:
    assert store.auth_cache_get("AA") is None
    store.auth_cache_put("AA", {"status": "Accepted"}, "2025-01-01T10:10:00Z")
    store.auth_cache_put("BB", {"status": "Blocked"}, None)
    store.auth_cache_put("CC", {"status": "Accepted"}, "2025-01-01T10:10:00")  # naive = UTC
    assert store.auth_cache_get("AA") == {"status": "Accepted"}
    store.auth_cache_put("AA", {"status": "Expired"}, "2025-01-01T10:10:00+00:00")
    assert store.auth_cache_get("AA") == {"status": "Expired"}
    clock.now += 600  # exactly at expiry: no longer valid
    assert store.auth_cache_get("AA") is None
    assert store.auth_cache_get("CC") is None
    assert store.auth_cache_get("BB") == {"status": "Blocked"}
    store.auth_cache_clear()
    assert store.auth_cache_get("BB") is None
    with pytest.raises(ValueError):
        store.auth_cache_put("DD", {}, "tomorrow")


def test_local_list_replace_and_apply(store: Storage) -> None:
    assert store.local_list_version() == 0 and store.local_list_count() == 0
    store.local_list_replace(3, {"AA": {"status": "Accepted"}, "BB": {"status": "Blocked"}})
    assert store.local_list_version() == 3 and store.local_list_count() == 2
    assert store.local_list_get("BB") == {"status": "Blocked"}
    store.local_list_apply(4, {"BB": None, "CC": {"status": "Accepted"}, "AA": {"status": "X"}})
    assert store.local_list_version() == 4
    assert store.local_list_get("BB") is None
    assert store.local_list_get("AA") == {"status": "X"}
    assert store.local_list_count() == 2
    store.local_list_replace(5, {"DD": {"status": "Accepted"}})
    assert store.local_list_count() == 1 and store.local_list_get("AA") is None
    store.local_list_replace(6, {})
    assert store.local_list_count() == 0 and store.local_list_version() == 6


def test_local_list_update_is_all_or_nothing(store: Storage) -> None:
    store.local_list_replace(1, {"AA": {"status": "Accepted"}})
    with pytest.raises(ValueError):
        store.local_list_apply(2, {"BB": {"status": "Accepted"}, "CC": {"x": float("nan")}})
    with pytest.raises(RuntimeError), store.atomic():
        store.local_list_replace(3, {"ZZ": {}})
        raise RuntimeError
    assert store.local_list_version() == 1
    assert store.local_list_count() == 1 and store.local_list_get("AA") is not None


# ---------------------------------------------------------------- atomic()


def test_atomic_commits_and_rolls_back(store: Storage) -> None:
    with store.atomic():
        store.set_setting("a", "1")
        store.outbox_put("A", {})
    assert store.get_setting("a") == "1"

    class Boom(Exception):
        pass

    with pytest.raises(Boom), store.atomic():
        store.set_setting("a", "2")
        store.outbox_put("B", {})
        raise Boom
    assert store.get_setting("a") == "1" and store.outbox_count() == 1


def test_atomic_nesting_uses_savepoints(store: Storage) -> None:
    with store.atomic():
        store.set_setting("outer", "1")
        with pytest.raises(KeyError), store.atomic():
            store.set_setting("inner", "1")
            raise KeyError("inner fails")
        with store.atomic(), store.atomic():
            store.set_setting("deep", "1")
    assert store.settings() == {"outer": "1", "deep": "1"}

    with pytest.raises(ZeroDivisionError), store.atomic():
        with store.atomic():
            store.set_setting("lost", "1")
        _ = 1 / 0
    assert store.get_setting("lost") is None


def test_other_connections_see_nothing_until_commit(store: Storage, db_path: Path) -> None:
    with store.atomic():
        store.outbox_put("A", {})
        assert raw_sql(db_path, "SELECT count(*) FROM outbox") == [(0,)]
    assert raw_sql(db_path, "SELECT count(*) FROM outbox") == [(1,)]


# ---------------------------------------------------------------- crash durability

WRITER = """
import os, sys
from agent.storage import Storage, TxRecord
s = Storage(sys.argv[1])
s.tx_begin(TxRecord("L1", 1, 1, "AA", None, "2025-01-01T10:00:00Z", 100.0, None, 100.0, None,
                    None, None, None, 0, False))
s.set_setting("v16/HeartbeatInterval", "120")
for i in range(int(sys.argv[2])):
    print(s.outbox_put("MeterValues", {"i": i}, "L1"), flush=True)
s.tx_meter("L1", 555.0, "2025-01-01T10:05:00Z")
print(s.tx_next_seq("L1"), flush=True)
if sys.argv[3] == "exit":
    os._exit(0)          # no close(), no atexit, no flush of anything Python holds
print("ready", flush=True)
sys.stdin.read()         # parked here until the parent kills us
"""


def check_survivors(db_path: Path, ids: list[str]) -> None:
    with Storage(db_path) as s:
        items = s.outbox_peek(100)
        assert [str(i.id) for i in items] == ids[:-1]
        assert [i.payload for i in items] == [{"i": n} for n in range(len(items))]
        rec = s.tx_get("L1")
        assert rec is not None and rec.last_meter_wh == 555.0 and rec.seq_no == 1
        assert s.get_setting("v16/HeartbeatInterval") == "120"


def test_writes_survive_os_exit_without_close(db_path: Path) -> None:
    proc = run_child(WRITER, str(db_path), "20", "exit")
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    ids = out.split()
    assert len(ids) == 21
    check_survivors(db_path, ids)


def test_writes_survive_sigkill_and_lock_names_the_holder(db_path: Path) -> None:
    proc = run_child(WRITER, str(db_path), "20", "kill")
    try:
        ids = read_until(proc, "ready")
        with pytest.raises(StorageError) as err:
            Storage(db_path)
        message = str(err.value)
        assert "locked by another process" in message
        assert f"pid {proc.pid}" in message and str(db_path) in message
    finally:
        sigkill(proc)
    check_survivors(db_path, ids)  # also shows the dead holder's lock is gone


ATOMIC_KILL = """
import sys
from agent.storage import Storage, TxRecord
s = Storage(sys.argv[1])
s.tx_begin(TxRecord("L1", 1, 1, "AA", None, "2025-01-01T10:00:00Z", 100.0, None, 100.0, None,
                    None, None, None, 0, False))
with s.atomic():
    s.tx_close("L1", "2025-01-01T11:00:00Z", "Local", 900.0)
    s.outbox_put("StopTransaction", {"meterStop": 900}, "L1")
    print("inside", flush=True)
    sys.stdin.read()
"""


def test_sigkill_inside_atomic_keeps_neither_half(db_path: Path) -> None:
    proc = run_child(ATOMIC_KILL, str(db_path))
    try:
        read_until(proc, "inside")
    finally:
        sigkill(proc)
    with Storage(db_path) as s:
        assert [t.local_id for t in s.tx_open()] == ["L1"]
        assert s.outbox_count() == 0


# ---------------------------------------------------------------- failures


def test_second_storage_on_same_file_is_locked_out(db_path: Path) -> None:
    first = Storage(db_path)
    with pytest.raises(StorageError) as err:
        Storage(db_path)
    assert "locked by another process" in str(err.value)
    assert str(db_path) in str(err.value)
    first.close()
    Storage(db_path).close()


def test_garbage_file_gives_clear_error(db_path: Path) -> None:
    db_path.write_bytes(b"this is not a database, it is a shopping list\n" * 200)
    with pytest.raises(StorageError) as err:
        Storage(db_path)
    message = str(err.value)
    assert str(db_path) in message
    assert "not an SQLite database" in message and "move the file aside" in message
    assert err.value.__cause__ is not None  # the SQLite detail stays available for debugging
    db_path.unlink()
    Storage(db_path).close()  # the failed open did not keep the lock


def test_damaged_database_gives_clear_error(db_path: Path) -> None:
    with Storage(db_path) as s:
        for i in range(200):
            s.outbox_put("DataTransfer", {"i": i, "blob": "x" * 500})
    page = raw_sql(db_path, "PRAGMA page_size")[0][0]
    with open(db_path, "r+b") as f:
        f.seek(page)  # keep the header page, scribble over the table pages
        f.write(b"\xa5\x5a" * (page * 4))
    with pytest.raises(StorageError) as err:
        Storage(db_path)
    message = str(err.value)
    assert str(db_path) in message and "damaged" in message and "backup" in message


@contextlib.contextmanager
def unprivileged() -> Iterator[None]:
    """Root ignores directory permissions, so drop to 'nobody' for the duration."""
    if os.geteuid() != 0:
        yield
        return
    try:
        os.setegid(NOBODY)
        os.seteuid(NOBODY)
    except PermissionError:
        pytest.skip("running as root without the right to change uid")
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


@pytest.fixture
def ro_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory the test process cannot write to once it is made read-only.

    As root the check runs as 'nobody', who cannot reach into pytest's 0700 tmp_path, so the
    directory is made under /tmp instead.
    """
    if os.geteuid() == 0:
        parent = Path(tempfile.mkdtemp(prefix="cp-agent-storage-"))
        parent.chmod(0o755)
    else:
        parent = tmp_path
    directory = parent / "state"
    directory.mkdir()
    try:
        yield directory
    finally:
        directory.chmod(0o755)
        if parent is not tmp_path:
            for p in sorted(parent.rglob("*"), reverse=True):
                p.unlink() if p.is_file() else p.rmdir()
            parent.rmdir()


def test_read_only_directory_gives_clear_error(ro_dir: Path) -> None:
    ro_dir.chmod(0o555)
    path = ro_dir / "state.db"
    with unprivileged(), pytest.raises(StorageError) as err:
        Storage(path)
    message = str(err.value)
    assert str(path) in message and "not writable" in message and str(ro_dir) in message


def test_existing_database_in_read_only_directory_gives_clear_error(ro_dir: Path) -> None:
    path = ro_dir / "state.db"
    with Storage(path) as s:
        s.outbox_put("A", {})
    for f in ro_dir.iterdir():  # the files stay writable; only new ones cannot be created
        f.chmod(stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IWGRP | 0o006)
    ro_dir.chmod(0o555)
    with unprivileged(), pytest.raises(StorageError) as err:
        Storage(path)
    message = str(err.value)
    assert str(path) in message and "not writable" in message


def test_missing_directory_gives_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "state.db"
    with pytest.raises(StorageError) as err:
        Storage(path)
    assert str(path) in str(err.value) and "does not exist" in str(err.value)


def test_full_disk_gives_clear_error_and_loses_nothing(store: Storage) -> None:
    store.outbox_put("A", {"n": 1})
    conn = store._conn
    assert conn is not None
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")  # the file can no longer grow
    with pytest.raises(StorageError) as err:
        store.outbox_put("B", {"blob": "x" * 200_000})
    message = str(err.value)
    assert str(store.path) in message and "disk is full" in message and "Free space" in message
    with pytest.raises(StorageError, match="disk is full"), store.atomic():
        store.set_setting("k", "v")
        store.outbox_put("C", {"blob": "y" * 200_000})
    conn.execute("PRAGMA max_page_count = 1073741823")
    assert [i.payload for i in store.outbox_peek(5)] == [{"n": 1}]
    assert store.get_setting("k") is None
    store.outbox_put("D", {})  # usable again once there is room
    assert store.outbox_count() == 2


# ---------------------------------------------------------------- engine / repository split


def test_engine_alone_knows_no_table(tmp_path: Path) -> None:
    """The engine runs the schema it is given and has none of its own; its SQL names no table.

    This is what keeps a new repository (profiles, certificates, ...) out of the engine.
    """
    import ast
    import re

    from agent.storage import engine

    with engine.Engine(tmp_path / "bare.db") as bare:
        conn = bare._require()
        assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 0
    for method in ("get_setting", "outbox_put", "tx_begin", "auth_cache_get", "local_list_get"):
        assert hasattr(Storage, method) and not hasattr(engine.Engine, method)

    sql_names = re.compile(r"\b(?:FROM|INTO|UPDATE|TABLE|JOIN)\s+(\w+)")
    tree = ast.parse(Path(engine.__file__).read_text())
    strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)]
    named = {m for s in strings if isinstance(s, str) for m in sql_names.findall(s)}
    assert named <= {"sqlite_master"}, f"engine.py has table-specific SQL: {sorted(named)}"


def test_new_repository_is_a_mixin_and_a_migration(db_path: Path) -> None:
    """A repository written against the engine's surface joins atomic() and error translation."""
    from agent.storage.engine import Repository

    class ProfileRepository(Repository):
        def profile_put(self, evse_id: int, body: str) -> None:
            with self._write("saving a charging profile") as conn:
                conn.execute("INSERT INTO profiles (evse_id, body) VALUES (?, ?)", (evse_id, body))

        def profile_count(self) -> int:
            return self._read("SELECT count(*) FROM profiles", (), "counting profiles")[0][0]

    class WithProfiles(Storage, ProfileRepository):
        def _migrations(self) -> list[str]:
            return [*MIGRATIONS, "CREATE TABLE profiles (evse_id INTEGER, body TEXT NOT NULL)"]

    with Storage(db_path) as s:
        s.set_setting("k", "v")
    s = WithProfiles(db_path)  # an existing state file gains the table, keeps its data
    try:
        assert s.get_setting("k") == "v" and s.profile_count() == 0
        with pytest.raises(RuntimeError), s.atomic():  # one unit with the other repositories
            s.profile_put(1, "{}")
            s.outbox_put("SetChargingProfile", {})
            raise RuntimeError
        assert s.profile_count() == 0 and s.outbox_count() == 0
        s.profile_put(1, "{}")
        assert s.profile_count() == 1
    finally:
        s.close()
    with pytest.raises(StorageError) as err:
        s.profile_count()
    assert err.value.kind == "closed"
    assert raw_sql(db_path, "PRAGMA user_version") == [(len(MIGRATIONS) + 1,)]
