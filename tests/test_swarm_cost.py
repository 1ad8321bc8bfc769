"""What the swarm's per-boot savings must leave unchanged.

A database in memory skips the pragmas and the synchronous toggles that only mean something
for a file (nothing is ever synced): its writes, rollbacks and unsynced writes must behave as
before, and a file keeps every pragma.  ``--compression off`` is a swarm option that reaches
each station's configuration and the worker processes, and the CSMS then sees websockets
without permessage-deflate; on (the default) they offer it, as a station does.
"""

from __future__ import annotations

import asyncio
import gc
import io
from pathlib import Path

import pytest

from agent.cli import build_parser
from agent.storage import MEMORY, Storage
from agent.swarm import Swarm, SwarmOptions, split, worker_argv
from tests.test_storage import make_tx


def _traced(storage: Storage) -> list[str]:
    seen: list[str] = []
    conn = storage._require()
    conn.set_trace_callback(seen.append)
    return seen


def test_memory_storage_writes_and_rolls_back_without_pragmas() -> None:
    with Storage(MEMORY) as s:
        seen = _traced(s)
        s.tx_begin(make_tx())
        s.tx_meter("L1", 1234.5, "2025-01-01T10:05:00Z")  # an unsynced write
        item = s.outbox_put("StopTransaction", {"n": 1}, tx_ref="L1")
        s.outbox_mark_sent(item)  # another
        with pytest.raises(RuntimeError), s.atomic():
            s.set_setting("k", "v")
            s.tx_meter("L1", 2000.0, "2025-01-01T10:06:00Z")
            raise RuntimeError("undo both")
        assert not [q for q in seen if q.upper().startswith("PRAGMA")], seen
        rec = s.tx_get("L1")
        assert rec is not None and rec.last_meter_wh == 1234.5
        assert s.get_setting("k") is None
        assert [i.sends for i in s.outbox_peek(5)] == [1]


def test_a_state_file_keeps_its_pragmas_and_unsynced_writes(tmp_path: Path) -> None:
    with Storage(tmp_path / "state.sqlite3") as s:
        conn = s._require()
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] > 0
        seen = _traced(s)
        s.tx_begin(make_tx())
        s.tx_meter("L1", 1.0, "2025-01-01T10:05:00Z")
        toggles = [q for q in seen if q.upper().startswith("PRAGMA SYNCHRONOUS")]
        assert toggles == ["PRAGMA synchronous = NORMAL", "PRAGMA synchronous = FULL"]
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2


def test_memory_databases_of_a_process_keep_their_data_apart() -> None:
    a, b = Storage(MEMORY), Storage(MEMORY)
    try:
        a.set_setting("who", "a")
        a.outbox_put("Heartbeat", {})
        assert b.get_setting("who") is None and b.outbox_count() == 0
        with pytest.raises(RuntimeError), b.atomic():
            b.set_setting("who", "b")
            raise RuntimeError("b rolls back")
        assert (a.get_setting("who"), b.get_setting("who")) == ("a", None)
        assert a.outbox_count() == 1
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("on", [True, False], ids=["compression-on", "compression-off"])
def test_compression_option_reaches_stations_workers_and_cli(on: bool) -> None:
    swarm = Swarm(SwarmOptions(csms="ws://127.0.0.1:9/", count=2, seed=1, compression=on))
    swarm._setup_state_dir()
    try:
        st = swarm._build(1, "CP-00001")
        assert st.agent.cfg.ocpp.compression is on
        st.agent.storage.close()
    finally:
        swarm._cleanup_state_dir()
    part = split(SwarmOptions(csms="ws://h/", count=4, workers=2, compression=on))[0]
    argv = worker_argv(part)
    flag = argv[argv.index("--compression") + 1]
    assert flag == ("on" if on else "off")
    ns = build_parser().parse_args(["swarm", *argv[argv.index("--csms"):]])
    assert (ns.compression == "on") is on
    assert build_parser().parse_args(["swarm", "--csms", "ws://h/"]).compression == "on"


@pytest.mark.parametrize("on", [True, False], ids=["compression-on", "compression-off"])
async def test_csms_sees_deflate_offered_only_with_compression_on(csms, on: bool) -> None:
    swarm = Swarm(SwarmOptions(csms=csms.url, count=2, id_prefix="Z-", charging_ratio=0.0,
                               ramp=0, seed=3, compression=on, drain_s=2), io.StringIO())
    run = asyncio.create_task(swarm.run())
    try:
        await asyncio.wait_for(swarm.all_booted.wait(), 30)
        offered = [csms.stations[st.id].request_headers.get("Sec-WebSocket-Extensions") or ""
                   for st in swarm.stations]
        agreed = [st.agent.link._ws is not None and bool(st.agent.link._ws.protocol.extensions)
                  for st in swarm.stations]
    finally:
        swarm.stop()
        summary = await asyncio.wait_for(run, 30)
    assert summary.booted == 2 and summary.errors == 0, summary.last_error
    assert [("permessage-deflate" in x) for x in offered] == [on, on], offered
    assert agreed == [on, on]


async def test_the_ramp_freezes_every_station_it_started(csms, monkeypatch) -> None:
    import agent.swarm as swarm_mod

    freezes: list[int] = []
    real = gc.freeze
    monkeypatch.setattr(swarm_mod.gc, "freeze", lambda: (freezes.append(1), real())[1])
    swarm = Swarm(SwarmOptions(csms=csms.url, count=3, id_prefix="F-", charging_ratio=0.0,
                               ramp=0, duration=0.5, seed=5, drain_s=1), io.StringIO())
    summary = await swarm.run()
    assert summary.booted == 3
    # One freeze after each station's start, one after the ramp.
    assert len(freezes) == 3 + 1
