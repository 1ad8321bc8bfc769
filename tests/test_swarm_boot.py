"""What a swarm station is given of its own at boot, and what it shares with the others.

The stations of a swarm share one state directory (``Agent(state_dir=...)``); what must not be
shared is what a CSMS can read back or change per station: its security log (GetLog
SecurityLog) and its certificates.  The boot's savings (settings read from one copy of the
table, definitions made once per process) must leave every value and every write as before.
"""

from __future__ import annotations

import io
import sqlite3
import tarfile
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.clock import iso, parse_iso
from agent.core.diagnostics import LogKind, Window, line_time
from agent.core.plug_and_charge import PNC_SETTINGS, pnc_settings
from agent.core.security_events import SecurityEvent
from agent.core.settings import SettingDef, Settings, defs_once, not_v16
from agent.redaction import SECRETS
from agent.security.security_log import SecurityLog, own_name
from agent.storage import MEMORY, Storage, StorageError
from agent.swarm import Swarm, SwarmOptions


def _members(data: bytes) -> dict[str, str]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            f = tar.extractfile(member)
            assert f is not None
            out[member.name.partition("/")[2]] = f.read().decode()
    return out


def _swarm(state_dir: Path | None, **kw) -> Swarm:
    swarm = Swarm(SwarmOptions(csms="ws://127.0.0.1:9/", count=2, seed=1,
                               state_dir=str(state_dir) if state_dir else None, **kw))
    swarm._setup_state_dir()
    return swarm


# ====================================================================== the security log


@pytest.mark.parametrize("files", [False, True], ids=["in-memory", "state-dir"])
async def test_a_swarm_station_uploads_only_its_own_security_log(files: bool, short_dir: Path):
    swarm = _swarm(short_dir / "state" if files else None)
    try:
        stations = [swarm._build(1 + n, f"CP-{n:05d}") for n in range(2)]
        for st in stations:
            await st.agent.start()  # StartupOfTheDevice, on each
            st.agent.station.security_events.record("SettingSystemTime", f"set on {st.id}")
        archives = {}
        for st in stations:
            archive = await st.agent.diagnostics.collect(LogKind.SECURITY, Window())
            archives[st.id] = _members(archive.data)["security.log"]
        for st in stations:
            await st.agent.stop()
        mine, theirs = archives["CP-00000"], archives["CP-00001"]
        assert "set on CP-00000" in mine and "set on CP-00001" not in mine
        assert "set on CP-00001" in theirs and "set on CP-00000" not in theirs
        for text in (mine, theirs):  # both events, in the file's line format
            lines = text.splitlines()
            assert [line.split()[3] for line in lines] == ["StartupOfTheDevice",
                                                           "SettingSystemTime"]
            assert all(line_time(line) is not None for line in lines)
        logs = swarm._state_dir / "logs"  # type: ignore[operator]
        if files:
            assert sorted(p.name for p in logs.iterdir()) == [
                "security-CP-00000.log", "security-CP-00001.log"]
        else:
            assert not logs.exists()  # the load-test mode writes no file per station
    finally:
        swarm._cleanup_state_dir()


def test_the_in_memory_log_rolls_over_keeps_the_newest_and_masks_secrets():
    seclog = SecurityLog.in_memory(wall=lambda: 1_700_000_000.0, memory_kb=1)
    SECRETS.add("s3cret-in-techinfo")
    for n in range(100):
        seclog.write(SecurityEvent("SettingSystemTime", f"event {n:03d}", ""))
    seclog.write(SecurityEvent("InvalidCsmsCertificate", "key s3cret-in-techinfo", ""))
    lines = list(seclog.lines())
    assert sum(len(x) for x in lines) <= 1024
    assert len(lines) < 101 and seclog.written == 101
    assert lines[-1] == "2023-11-14T22:13:20.000Z WARNING security: InvalidCsmsCertificate " \
                       "key ***\n"
    assert lines[-2].endswith("event 099\n")  # the oldest went first
    assert seclog.path is None and seclog.files() == []


def test_a_station_of_its_own_keeps_security_log_as_before(tmp_path: Path):
    seclog = SecurityLog.of_agent(tmp_path, "CP/1", shared=False, memory=True)
    assert seclog.path == tmp_path / "logs" / "security.log"
    shared = SecurityLog.of_agent(tmp_path, "CP/1", shared=True, memory=False)
    assert shared.path == tmp_path / "logs" / "security-CP_1.log"
    shared.write(SecurityEvent("SettingSystemTime", "on disk", ""))
    assert [line.rstrip("\n").rsplit(" ", 2)[1:] for line in shared.lines()] == [
        ["on", "disk"]]
    assert own_name("../x") == "_._x" and own_name("") == "_"


# ====================================================================== certificates


async def test_swarm_stations_have_certificates_of_their_own_made_on_first_use(short_dir):
    swarm = _swarm(None)
    try:
        a, b = (swarm._build(1 + n, f"CP-{n:05d}").agent for n in range(2))
        assert a.certificates.directory != b.certificates.directory
        assert not (swarm._state_dir / "certs").exists()  # type: ignore[operator]
        a.certificates.new_csr("CP-00000")
        assert a.certificates.directory.stat().st_mode & 0o777 == 0o700
        assert a.certificates.pending_count() == 1
        assert b.certificates.pending_count() == 0 and not b.certificates.directory.exists()
        for agent in (a, b):
            agent.storage.close()
    finally:
        swarm._cleanup_state_dir()


# ====================================================================== settings


def test_settings_reads_come_from_one_query_and_writes_go_through(tmp_path: Path):
    path = tmp_path / "state.sqlite3"
    storage = Storage(path)
    storage.set_setting("a.one", "1")
    statements: list[str] = []
    storage._conn.set_trace_callback(statements.append)  # type: ignore[union-attr]
    for key in ("a.one", "a.two", "b.x", "a.one"):
        storage.get_setting(key)
    assert [s for s in statements if s.startswith("SELECT")] == [
        "SELECT key, value FROM settings"]
    storage.set_setting("a.two", "2")
    storage.set_setting("b.x", "x")
    storage.delete_setting("a.one")
    assert storage.get_setting("a.one") is None and storage.get_setting("a.two") == "2"
    # Every write is in the file at once, committed: another connection sees it.
    other = sqlite3.connect(path)
    assert dict(other.execute("SELECT key, value FROM settings")) == {"a.two": "2", "b.x": "x"}
    other.close()
    storage.set_setting("a.\u00e9", "e")
    storage.set_setting("a.Z", "z")
    sql = storage._read("SELECT key, value FROM settings WHERE substr(key, 1, 2) = 'a.' "
                        "ORDER BY key")
    assert list(storage.settings("a.").items()) == [(r[0], r[1]) for r in sql]
    storage.close()
    with pytest.raises(StorageError, match="closed"):
        storage.get_setting("a.two")
    again = Storage(path)
    assert again.settings() == {"a.Z": "z", "a.two": "2", "a.\u00e9": "e", "b.x": "x"}
    again.close()


def test_a_rolled_back_setting_is_not_read_back():
    storage = Storage(MEMORY)
    storage.set_setting("kept", "old")
    with pytest.raises(RuntimeError), storage.atomic():
        storage.set_setting("kept", "new")
        storage.set_setting("gone", "1")
        assert storage.get_setting("kept") == "new"  # inside: what the transaction sees
        raise RuntimeError("power cut")
    assert storage.get_setting("kept") == "old" and storage.get_setting("gone") is None
    with storage.atomic():
        storage.set_setting("outer", "1")
        with pytest.raises(RuntimeError), storage.atomic():
            storage.delete_setting("kept")
            storage.set_setting("inner", "1")
            raise RuntimeError("a helper failed")
    assert storage.settings() == {"kept": "old", "outer": "1"}
    storage.close()


def test_definitions_made_once_are_the_ones_made_each_time():
    assert not_v16(PNC_SETTINGS) is not_v16(PNC_SETTINGS)
    assert not_v16(PNC_SETTINGS) == tuple(replace(d, v16=False) for d in PNC_SETTINGS)

    class NoIso:
        iso15118 = None

    assert pnc_settings(NoIso()) == not_v16(PNC_SETTINGS)
    made = []
    one = defs_once(("test", 1), lambda: made.append(1) or [SettingDef("T1", "int", 1)])
    assert defs_once(("test", 1), lambda: made.append(2) or []) is one and made == [1]
    assert defs_once(("test", 2), lambda: [SettingDef("T2", "int", 2)])[0].name == "T2"
    settings = Settings(Storage(MEMORY))
    settings.register(one)
    settings.register(one)  # the same definitions again: accepted
    with pytest.raises(ValueError, match="defined twice"):
        settings.register([SettingDef("T1", "int", 5)])


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_stations_of_different_shapes_in_one_process_keep_their_own_keys(version, short_dir):
    """The definitions made once are keyed by what they depend on (EVSE count, security
    profile): a two-EVSE station built after a one-EVSE one still says two."""
    agents = []
    for evses in (1, 2, 1):
        swarm = _swarm(None, evses=evses, ocpp=version)
        agents.append((swarm, swarm._build(1, f"CP-{evses}").agent))
    try:
        for (_, agent), evses in zip(agents, (1, 2, 1), strict=True):
            assert len(agent.station.evses) == evses
            if version == "1.6":
                assert agent.settings["NumberOfConnectors"] == evses
                assert agent.settings["ConnectorPhaseRotationMaxLength"] == evses + 1
                assert agent.settings["SecurityProfile"] == 0
                assert "Core" in agent.settings["SupportedFeatureProfiles"]
    finally:
        for swarm, agent in agents:
            agent.storage.close()
            swarm._cleanup_state_dir()


# ========================================================== a pristine database in memory


def test_a_copied_database_in_memory_is_pristine_until_its_first_write(tmp_path: Path):
    """Start-up reads of a pristine database are answered without SQLite; any write, whether
    it commits, rolls back or is unsynced, ends that, and a state file is never pristine."""
    Storage(MEMORY).close()  # the process's image of the schema exists from here on
    with Storage(MEMORY) as s:
        assert s.pristine
        statements: list[str] = []
        assert s._conn is not None
        s._conn.set_trace_callback(statements.append)
        assert s.get_setting("link.version") is None
        assert s.profiles_all() == [] and s.tx_costs_any() is False
        assert statements == []  # nothing compiled, nothing run
        with pytest.raises(RuntimeError), s.atomic():
            raise RuntimeError("rolled back")
        assert not s.pristine  # even a rolled-back write ends it
    with Storage(MEMORY) as s:
        s.tx_cost_put("L1", 1, {"cost": 1.5})
        assert not s.pristine and s.tx_costs_any() is True
    with Storage(MEMORY) as s:
        s.profiles_put(7, 1, "TxDefaultProfile", 0, "{}")
        assert not s.pristine and s.profiles_all() == [(7, "{}")]
    with Storage(MEMORY) as s:
        s.set_setting("k", "v")
        assert s.get_setting("k") == "v"
    with Storage(MEMORY) as s:
        s._write_unsynced("INSERT INTO settings (key, value) VALUES ('k', 'v')", (), "test")
        assert not s.pristine
    s = Storage(MEMORY)
    s.close()
    assert not s.pristine
    with pytest.raises(StorageError):
        s.profiles_all()  # a closed database still says so
    with Storage(tmp_path / "new.sqlite3") as f:
        assert not f.pristine


def test_a_database_in_memory_starts_at_the_current_schema_version():
    """The copy skips the migrations; it is still exactly what they give."""
    from agent.storage import MIGRATIONS

    Storage(MEMORY).close()
    with Storage(MEMORY) as s:
        assert s._conn is not None
        assert s._conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        s.outbox_put("Heartbeat", {})
        assert [i.action for i in s.outbox_peek(5)] == ["Heartbeat"]


@pytest.mark.parametrize("versions", [("1.6",), ("1.6", "2.0.1")])
async def test_only_a_station_in_memory_with_one_version_skips_the_foreign_message_query(
        versions, short_dir: Path, monkeypatch):
    from agent.app import Agent
    from tests.conftest import agent_config

    cfg = agent_config("ws://127.0.0.1:9/", short_dir, versions=versions)
    cfg = replace(cfg, storage=replace(cfg.storage, path=MEMORY))
    agent = Agent(cfg, control=False, state_dir=short_dir)
    asked: list[frozenset] = []
    real = agent.storage.outbox_foreign
    monkeypatch.setattr(agent.storage, "outbox_foreign",
                        lambda allowed: asked.append(frozenset(allowed)) or real(allowed))
    try:
        agent._on_version(agent.adapters["1.6"])
        assert len(asked) == (0 if len(versions) == 1 else 1)
    finally:
        agent.storage.close()


# ====================================================================== OCPP timestamps


@given(st.datetimes(timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30)),
                                               timezone(timedelta(hours=-8))])))
def test_iso_is_what_strftime_gave(dt: datetime):
    """``iso`` formats by hand (cheaper per CALL); the text is the strftime one with the
    year in four digits (glibc does not pad %Y), and parse_iso reads it back."""
    u = dt.astimezone(UTC)
    want = f"{u.year:04d}" + u.strftime("-%m-%dT%H:%M:%S.") + f"{u.microsecond // 1000:03d}Z"
    assert iso(dt) == want
    assert parse_iso(want) == u.replace(microsecond=u.microsecond // 1000 * 1000)


def test_a_year_below_1000_is_written_in_four_digits_and_read_back():
    dt = datetime(127, 9, 18, 6, 47, 1, tzinfo=UTC)
    assert iso(dt) == "0127-09-18T06:47:01.000Z"
    assert parse_iso(iso(dt)) == dt


async def test_a_swarm_station_starts_without_asking_sqlite_for_costs(short_dir: Path):
    """The start-up costs check comes before the first write, so a copied database in memory
    answers it itself; a station whose state file holds costs is covered elsewhere."""
    swarm = _swarm(None)
    try:
        st = swarm._build(1, "CP-00001")
        conn = st.agent.storage._conn
        assert conn is not None
        statements: list[str] = []
        conn.set_trace_callback(statements.append)
        await st.agent.start()
        assert statements, "the start-up security event was written"
        assert not [s for s in statements if "tx_costs" in s]
        assert not [s for s in statements if "FROM settings" in s]
        await st.agent.stop()
    finally:
        swarm._cleanup_state_dir()
