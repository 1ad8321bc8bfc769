"""Soak: N sessions in a row on the injectable clock, looking for what grows.

    python -m tests.soak.soak [--sessions 10000] [--versions 1.6,2.0.1] [--quick]

The agent (the real ``Agent`` on the mock HAL, two EVSEs) runs on a ``FakeClock`` against the
bench's permissive CSMS in another process (so that its memory is not the agent's).  Session
after session, alternating EVSEs: plug, tap (accepted online), charge for two minutes of
simulated time with meter values every 30 s, unplug, every message acknowledged.  Sampled at
every tenth of the run: resident memory, the state file (database and WAL), the rows of the
transaction journal, the outbox and the dropped table, the asyncio tasks and the open file
descriptors (/proc/self/fd).  The first sample is taken after a warm-up (5 % of the sessions);
the figures compare it with the end.  A journal or an outbox that keeps rows for finished
sessions, a task or a descriptor per session that is never released: each shows as growth.
Exits 1 when the journal or outbox keeps finished sessions, or when tasks or descriptors grow
with the number of sessions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agent.app import Agent
from agent.clock import FakeClock
from agent.config import load_config_text
from bench._common import CsmsProcess, Report, free_port, rss_kb

SAMPLE_S = 30
SESSION_S = 120
TIMEOUT = 60.0


def _config(url: str, state: Path, version: str) -> Any:
    doc = {
        "station": {"id": "SOAK", "vendor": "cp-agent", "model": "soak"},
        "ocpp": {"url": url, "versions": [version], "call_timeout_s": 10,
                 "reconnect": {"min_backoff_s": 0.05, "max_backoff_s": 0.5},
                 "defaults": {"MeterValueSampleInterval": SAMPLE_S, "HeartbeatInterval": 600,
                              "MeterValuesSampledData": "Energy.Active.Import.Register,"
                                                        "Power.Active.Import"}},
        "storage": {"path": str(state / "state.sqlite3"), "meter_persist_s": 10},
        "control": {"socket": str(state / "ctl.sock")},
        "evses": [{"id": 1}, {"id": 2}],
        "hal": {"driver": "mock", "ev_max_current_a": 16},
        "log": {"level": "warning"},
    }
    return load_config_text(json.dumps(doc), "soak")


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _sample(agent: Agent, state: Path, done: int) -> dict:
    conn = agent.storage._require()

    def rows(table: str) -> int:
        return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]

    files = {p.name: p.stat().st_size for p in state.glob("state.sqlite3*")}
    return {"sessions": done, "rss_kb": rss_kb(), "tasks": len(asyncio.all_tasks()),
            "fds": _fds(), "db_kb": sum(files.values()) / 1024,
            "wal_kb": files.get("state.sqlite3-wal", 0) / 1024,
            "journal_rows": rows("transactions"), "outbox_rows": rows("outbox"),
            "dropped_rows": rows("dropped")}


async def _session(agent: Agent, clock: FakeClock, version: str, n: int) -> None:
    evse = 1 + n % 2
    adapter = agent.adapters[version]
    agent.hal.plug(evse)
    agent.hal.tap(f"SOAK-{n}", evse)
    changed = asyncio.Event()

    def trace(_evse: int, _what: str, _detail: dict) -> None:
        changed.set()

    agent.station.traces.append(trace)
    try:
        async with asyncio.timeout(TIMEOUT):
            while agent.station.evses[evse].tx is None:  # authorized online, then started
                changed.clear()
                await changed.wait()
    finally:
        agent.station.traces.remove(trace)
    for _ in range(SESSION_S // SAMPLE_S):
        await clock.advance(SAMPLE_S)
    agent.hal.unplug(evse)
    await agent.station.settled()
    async with asyncio.timeout(TIMEOUT):
        while agent.storage.outbox_count():
            adapter.outbox.idle.clear()
            if agent.storage.outbox_count():
                await adapter.outbox.idle.wait()


async def soak(version: str, sessions: int, problems: list[str]) -> dict:
    port = free_port()
    csms = CsmsProcess(port=port, heartbeat=600)
    url = await csms.start()
    clock = FakeClock(start_wall=time.time())
    state = Path(tempfile.mkdtemp(prefix="cpa-soak-", dir="/tmp"))
    agent = Agent(_config(url, state, version), clock=clock, control=False)
    samples: list[dict] = []
    warm = max(2, sessions // 20)
    every = max(1, sessions // 10)
    tasks_before = fds_before = 0
    t0 = time.perf_counter()
    try:
        tasks_before, fds_before = len(asyncio.all_tasks()), _fds()
        await agent.start()
        await asyncio.wait_for(agent.adapters[version].accepted.wait(), 30)
        for n in range(sessions):
            await _session(agent, clock, version, n)
            done = n + 1
            if done == warm or (done > warm and done % every == 0) or done == sessions:
                samples.append(_sample(agent, state, done))
                s = samples[-1]
                # Progress on stderr: a full run takes most of an hour; the figures stay
                # on stdout at the end.
                print(f"soak {version}: {done}/{sessions} sessions, "
                      f"{time.perf_counter() - t0:.0f} s, RSS {s['rss_kb'] / 1024:.1f} MB, "
                      f"db {s['db_kb']:.0f} kB, tasks {s['tasks']}, fds {s['fds']}",
                      file=sys.stderr, flush=True)
        stats = await csms.stats()
    finally:
        await agent.stop()
        await csms.stop()
        shutil.rmtree(state, ignore_errors=True)
    elapsed = time.perf_counter() - t0
    tasks_after, fds_after = len(asyncio.all_tasks()), _fds()
    first, last = samples[0], samples[-1]
    out = {"version": version, "sessions": sessions, "elapsed_s": elapsed,
           "first": first, "last": last, "samples": samples,
           "tasks_before_start": tasks_before, "tasks_after_stop": tasks_after,
           "fds_before_start": fds_before, "fds_after_stop": fds_after,
           "csms_tx_started": stats["tx_started"], "csms_tx_stopped": stats["tx_stopped"]}
    if stats["tx_stopped"] != sessions:
        problems.append(f"{version}: the CSMS saw {stats['tx_stopped']} of {sessions} stops")
    if last["journal_rows"] > 2:
        problems.append(f"{version}: the journal keeps {last['journal_rows']} transactions "
                        f"after {sessions} finished sessions (not pruned)")
    if last["outbox_rows"]:
        problems.append(f"{version}: {last['outbox_rows']} outbox rows left")
    if last["tasks"] > first["tasks"] + 2:
        problems.append(f"{version}: asyncio tasks grew {first['tasks']} -> {last['tasks']}")
    if last["fds"] > first["fds"] + 2:
        problems.append(f"{version}: file descriptors grew {first['fds']} -> {last['fds']}")
    if tasks_after > tasks_before or fds_after > fds_before:
        problems.append(f"{version}: after stop {tasks_after} tasks (before start "
                        f"{tasks_before}), {fds_after} descriptors (before {fds_before})")
    return out


async def run(sessions: int, versions: tuple[str, ...], quick: bool) -> int:
    report = Report("soak", quick)
    problems: list[str] = []
    results = []
    for v in versions:
        results.append(await soak(v, sessions, problems))
    for r in results:
        v, first, last = r["version"], r["first"], r["last"]
        report.add(f"{v}: sessions in a row", r["sessions"], "",
                   note=f"{r['elapsed_s']:.0f} s, "
                        f"{r['sessions'] * SESSION_S / 3600:.0f} h of simulated charging")
        report.add(f"{v}: RSS after warm-up -> end", last["rss_kb"] / 1024, "MB",
                   note=f"from {first['rss_kb'] / 1024:.1f} MB at session {first['sessions']}")
        report.add(f"{v}: state file (db + WAL) at the end", last["db_kb"], "kB",
                   note=f"from {first['db_kb']:.0f} kB; WAL {last['wal_kb']:.0f} kB")
        report.add(f"{v}: journal / outbox / dropped rows at the end", last["journal_rows"], "",
                   note=f"outbox {last['outbox_rows']}, dropped {last['dropped_rows']}")
        report.add(f"{v}: asyncio tasks after warm-up -> end", last["tasks"], "",
                   note=f"from {first['tasks']}; {r['tasks_before_start']} before start, "
                        f"{r['tasks_after_stop']} after stop")
        report.add(f"{v}: open file descriptors after warm-up -> end", last["fds"], "",
                   note=f"from {first['fds']}; {r['fds_before_start']} before start, "
                        f"{r['fds_after_stop']} after stop")
    report.details.update(results=results, problems=problems)
    report.emit()
    for p in problems:
        print("PROBLEM " + p, file=sys.stderr)
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.soak.soak",
                                description=__doc__.splitlines()[0])
    p.add_argument("--sessions", type=int, default=10_000, help="per version")
    p.add_argument("--versions", default="1.6,2.0.1")
    p.add_argument("--quick", action="store_true", help="20 sessions per version")
    ns = p.parse_args(argv)
    versions = tuple(v.strip() for v in ns.versions.split(",") if v.strip())
    logging.getLogger().setLevel(logging.ERROR)
    return asyncio.run(run(20 if ns.quick else ns.sessions, versions, ns.quick))


if __name__ == "__main__":
    raise SystemExit(main())
