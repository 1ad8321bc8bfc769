"""Long outage: a day offline on the injectable clock, then reconnection; and a full disk.

    python -m tests.soak.long_outage [--messages 10000] [--versions 1.6,2.0.1] [--quick]

**The day offline.**  The agent (the real ``Agent`` on the mock HAL, two EVSEs, cards allowed
offline) runs on a ``FakeClock`` while its CSMS is down: sessions follow one another on both
EVSEs for 24 simulated hours, their meter values sampled at the interval that makes
``--messages`` transaction messages in that day (10,000: about every 17 s).  Then the strict
test CSMS comes up on the URL the agent has been failing to reach; the agent reconnects and
replays.  Checked: every queued message arrives, in the order it was queued, none lost, none
doubled (identical resends aside), and each the CSMS validated.

**The full disk.**  A fresh agent, offline, one session charging; then the state database is
capped at its current size (``PRAGMA max_page_count``, SQLite's own SQLITE_FULL, portable), and
the session ends and another begins.  Expected: a clear fault (the EVSE Faulted, InternalError,
"state storage failed (full)", the MemoryExhaustion security event logged), the contactor not
closing for the new session, the transaction messages queued before the disk filled kept, and
nothing else queued.  After reconnection the kept messages are delivered and the fault is
reported to the CSMS.  A restart with space again closes the session the full disk left open
(PowerLoss), once.

Prints the figures and exits 1 when a promise broke.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from agent.app import Agent
from agent.clock import FakeClock
from agent.config import load_config_text
from agent.testing.csms import TestCsms
from bench._common import Report, free_port

TX_ACTIONS = ("StartTransaction", "MeterValues", "StopTransaction", "TransactionEvent")
TIMEOUT = 300.0


def _config(url: str, state: Path, version: str, interval: int) -> Any:
    doc = {
        "station": {"id": "OUTAGE", "vendor": "cp-agent", "model": "outage"},
        "ocpp": {"url": url, "versions": [version], "call_timeout_s": 10,
                 "reconnect": {"min_backoff_s": 1, "max_backoff_s": 60},
                 "defaults": {"MeterValueSampleInterval": interval,
                              "HeartbeatInterval": 3600,
                              "AllowOfflineTxForUnknownId": True,
                              "MeterValuesSampledData": "Energy.Active.Import.Register"}},
        "storage": {"path": str(state / "state.sqlite3"), "meter_persist_s": 10},
        "control": {"socket": str(state / "ctl.sock")},
        "evses": [{"id": 1}, {"id": 2}],
        "hal": {"driver": "mock", "ev_max_current_a": 16},
        "log": {"level": "warning"},
    }
    return load_config_text(json.dumps(doc), "outage")


def _size_mb(state: Path) -> float:
    return sum(f.stat().st_size for f in state.glob("state.sqlite3*")) / 2**20


def _key(action: str, p: dict) -> tuple:
    """What identifies a transaction message, with or without its late transactionId."""
    if action == "TransactionEvent":
        return (action, p["transactionInfo"]["transactionId"], p["seqNo"])
    if action == "StartTransaction":
        return (action, p["connectorId"], p["idTag"], p["timestamp"])
    if action == "StopTransaction":
        return (action, p["timestamp"], p["meterStop"])
    return (action, p["connectorId"], p["meterValue"][0]["timestamp"])


async def _settle(agent: Agent) -> None:
    for _ in range(3):
        await asyncio.wait_for(agent.station.settled(), 30)
        await asyncio.sleep(0)


async def _offline_day(agent: Agent, clock: FakeClock, interval: int, per_session: int,
                       target: int) -> int:
    """Sessions one after another on both EVSEs until ``target`` messages are queued."""
    hal, storage = agent.hal, agent.storage
    n = 0
    while storage.outbox_count() < target:
        for evse in (1, 2):
            n += 1
            hal.plug(evse)
            hal.tap(f"DAY-{n}", evse)
        await _settle(agent)
        ticks = max(1, min(per_session, (target - storage.outbox_count()) // 2))
        for _ in range(ticks):
            await clock.advance(interval)
        for evse in (1, 2):
            hal.unplug(evse)
        await _settle(agent)
        await clock.advance(interval)
    return n


def _outbox_snapshot(agent: Agent) -> list[tuple[str, dict]]:
    items = agent.storage.outbox_peek(limit=10**7)
    return [(i.action, i.payload) for i in items]


async def _drain(agent: Agent, version: str, clock: FakeClock) -> None:
    adapter = agent.adapters[version]
    async with asyncio.timeout(TIMEOUT):
        while not adapter.accepted.is_set():
            await clock.advance(5.0)  # past the reconnect back-off the link sleeps through
            await asyncio.sleep(0.05)
        while agent.storage.outbox_count():
            adapter.outbox.idle.clear()
            if agent.storage.outbox_count():
                try:
                    await asyncio.wait_for(adapter.outbox.idle.wait(), 0.5)
                except TimeoutError:
                    await clock.advance(5.0)  # a retry interval, if any


async def day_offline(version: str, messages: int, hours: float,
                      problems: list[str]) -> dict:
    evses = 2
    interval = max(1, int(hours * 3600) * evses // messages)
    per_session = 49 if version == "1.6" else 48  # ~100 messages a session
    port = free_port()
    url = f"ws://127.0.0.1:{port}/"
    clock = FakeClock(start_wall=time.time() - hours * 3600 - 3600)
    state = Path(tempfile.mkdtemp(prefix="cpa-outage-", dir="/tmp"))
    agent = Agent(_config(url, state, version, interval), clock=clock, control=False)
    csms = TestCsms(versions=(version,), port=port)
    out: dict[str, Any] = {"version": version, "interval_s": interval}
    try:
        await agent.start()
        t0 = clock.monotonic()
        out["sessions"] = await _offline_day(agent, clock, interval, per_session, messages)
        out["offline_h"] = (clock.monotonic() - t0) / 3600
        queued = _outbox_snapshot(agent)
        composition = Counter(a for a, _ in queued)
        tx_queued = [(a, p) for a, p in queued if a in TX_ACTIONS]
        out["queued"] = len(queued)
        out["tx_queued"] = len(tx_queued)
        out["composition"] = dict(composition)
        out["db_mb"] = _size_mb(state)
        await csms.start()
        t_up = time.perf_counter()
        await _drain(agent, version, clock)
        out["replay_s"] = time.perf_counter() - t_up
        # Two EVSEs can queue equal-looking messages (same time, same meter): compare the
        # sequences as they are, and count what is missing or extra as multisets.
        delivered = [_key(m.action, m.payload) for m in csms.log
                     if m.direction == "cs->csms" and m.kind == "CALL"
                     and m.action in TX_ACTIONS]
        expected = [_key(a, p) for a, p in tx_queued]
        missing = Counter(expected) - Counter(delivered)
        extra = Counter(delivered) - Counter(expected)
        out["delivered"] = len(delivered)
        out["lost"] = sum(missing.values())
        out["duplicated"] = sum(extra.values())
        out["in_order"] = delivered == expected
        if missing:
            problems.append(f"{version}: {out['lost']} queued messages never arrived, "
                            f"first {list(missing)[:3]}")
        if extra:
            problems.append(f"{version}: {out['duplicated']} messages arrived twice (no "
                            f"restart, no timeout: nothing should be resent)")
        if not out["in_order"] and not missing and not extra:
            first = next(i for i, (a, b) in enumerate(zip(delivered, expected, strict=False))
                         if a != b)
            problems.append(f"{version}: out of order at #{first}: got {delivered[first]}, "
                            f"queued {expected[first]}")
        if csms.violations:
            problems += [f"{version}: CSMS saw: {v}" for v in csms.violations[:10]]
    finally:
        await agent.stop()
        await csms.stop()
        shutil.rmtree(state, ignore_errors=True)
    return out


def _fill_disk(agent: Agent) -> int:
    """Cap the state database at its size and fill its free pages: SQLITE_FULL from now on
    for anything that needs space (what freeing rows gives back can be used again)."""
    import sqlite3

    conn = agent.storage._require()
    conn.execute("CREATE TABLE IF NOT EXISTS soak_filler (x BLOB)")
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")
    filled = 0
    for size in (65536, 4096, 256, 16):
        while True:
            try:
                conn.execute("INSERT INTO soak_filler VALUES (zeroblob(?))", (size,))
            except sqlite3.OperationalError:  # database or disk is full
                break
            filled += size
    return filled // 1024


async def disk_full(version: str, problems: list[str]) -> dict:
    """Offline, the disk fills while a session charges; what the station does about it."""
    port = free_port()
    url = f"ws://127.0.0.1:{port}/"
    clock = FakeClock(start_wall=time.time() - 3600)
    state = Path(tempfile.mkdtemp(prefix="cpa-full-", dir="/tmp"))
    cfg = _config(url, state, version, 10)
    agent = Agent(cfg, clock=clock, control=False)
    csms = TestCsms(versions=(version,), port=port)
    out: dict[str, Any] = {"version": version}
    errors: list[str] = []

    class _Grab(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.levelno >= logging.ERROR:
                errors.append(record.getMessage()[:200])

    grab = _Grab()
    logging.getLogger().addHandler(grab)
    try:
        await agent.start()
        agent.hal.plug(1)
        agent.hal.tap("FULL-1", 1)
        await _settle(agent)
        for _ in range(6):
            await clock.advance(10)
        await _settle(agent)
        before = _outbox_snapshot(agent)
        first_full: list[int] = []  # the outbox size when SQLite first said the disk is full
        told = agent.storage.on_full

        def on_full(text: str) -> None:
            if not first_full:
                first_full.append(agent.storage.outbox_count())
            if told is not None:
                told(text)

        agent.storage.on_full = on_full
        out["filler_kb"] = _fill_disk(agent)  # no free page from now on
        for _ in range(30):  # meter samples while full: lost, the sampler lives on
            await clock.advance(10)
        agent.hal.unplug(1)  # the end cannot be journalled
        await _settle(agent)
        agent.hal.plug(2)
        agent.hal.tap("FULL-2", 2)  # a new session cannot start
        await _settle(agent)
        for _ in range(3):
            await clock.advance(10)
        await _settle(agent)
        after = _outbox_snapshot(agent)
        evse1, evse2 = agent.station.evses[1], agent.station.evses[2]
        snap1, snap2 = evse1.snapshot(), evse2.snapshot()
        out["kept"] = [a for a, _ in before] == [a for a, _ in after][:len(before)]
        # Rows still fit in the free bytes of a table's last page after the cap; once SQLite
        # said "full", nothing more may be queued (nothing is deleted while offline).
        at_full = first_full[0] if first_full else len(after)
        out["fitted_after_cap"] = dict(Counter(a for a, _ in after[len(before):at_full]))
        # The one exception: the MemoryExhaustion security event, the fault report itself
        # (queued if its few bytes still fit, else kept in memory until they do).
        late = [(a, p) for a, p in after[at_full:]
                if not (a == "SecurityEventNotification" and "MemoryExhaustion" in json.dumps(p))]
        out["memory_exhaustion_queued"] = len(after) - at_full - len(late)
        out["queued_while_full"] = len(late)
        out["queued_while_full_actions"] = [a for a, _ in late]
        out["full_seen"] = bool(first_full)
        if not first_full:
            problems.append(f"{version} disk full: SQLite never reported the disk full")
        if any(a not in TX_ACTIONS for a in out["fitted_after_cap"]):
            problems.append(f"{version} disk full: not only transaction messages were queued "
                            f"in the last free bytes: {out['fitted_after_cap']}")
        out["outbox_before"] = dict(Counter(a for a, _ in before))
        out["evse1"] = f"{snap1.status} {evse1.blocking_fault}"
        out["evse2"] = f"{snap2.status} {evse2.blocking_fault}"
        out["contactor2_closed"] = evse2.hw.contactor.commanded_closed
        out["errors_logged"] = len(errors)
        out["memory_exhaustion_logged"] = any("MemoryExhaustion" in e or "full" in e
                                              for e in errors)
        if not out["kept"]:
            problems.append(f"{version} disk full: queued transaction messages were lost")
        if out["queued_while_full"]:
            problems.append(f"{version} disk full: {out['queued_while_full_actions']} "
                            f"queued after SQLite said the disk is full")
        if out["contactor2_closed"]:
            problems.append(f"{version} disk full: a session started without its journal")
        # Reconnection, still full: the kept messages go out, the fault is reported.
        await csms.start()
        await _drain(agent, version, clock)
        faulted = [p for p in csms.messages("OUTAGE", "StatusNotification")
                   if p.get("status") == "Faulted" or p.get("connectorStatus") == "Faulted"]
        out["faulted_reported"] = len(faulted)
        out["fault_info"] = (faulted[0].get("info") or faulted[0].get("errorCode")
                             if faulted else None)
        got = [m.action for m in csms.log if m.direction == "cs->csms" and m.kind == "CALL"
               and m.action in TX_ACTIONS]
        out["delivered_after_full"] = len(got)
        if not faulted:
            problems.append(f"{version} disk full: no Faulted status reached the CSMS")
        if len(got) < sum(1 for a, _ in before if a in TX_ACTIONS):
            problems.append(f"{version} disk full: kept messages not all delivered")
        await agent.stop()
        # Space again: a restart closes the session the full disk left open, once.
        again = Agent(cfg, clock=clock, control=False)
        await again.start()
        try:
            await _drain(again, version, clock)
            ends = [m.payload for m in csms.log if m.direction == "cs->csms"
                    and m.kind == "CALL" and (m.action == "StopTransaction" or (
                        m.action == "TransactionEvent" and m.payload["eventType"] == "Ended"))]
            out["ends_after_restart"] = len(ends)
            reasons = [e.get("reason") or e["transactionInfo"].get("stoppedReason")
                       for e in ends]
            out["end_reasons"] = reasons
            if len(ends) != 1:
                problems.append(f"{version} disk full: {len(ends)} ends of the one session "
                                f"after the restart ({reasons})")
        finally:
            await again.stop()
        if csms.violations:
            problems += [f"{version} disk full: CSMS saw: {v}" for v in csms.violations[:10]]
    finally:
        logging.getLogger().removeHandler(grab)
        if not agent._stopped:
            await agent.stop()
        await csms.stop()
        shutil.rmtree(state, ignore_errors=True)
    return out


async def run(messages: int, hours: float, versions: tuple[str, ...], quick: bool) -> int:
    report = Report("long_outage", quick)
    problems: list[str] = []
    days, fulls = [], []
    for v in versions:
        days.append(await day_offline(v, messages, hours, problems))
        fulls.append(await disk_full(v, problems))
    for d in days:
        v = d["version"]
        report.add(f"{v}: offline", d["offline_h"], "h",
                   note=f"{d['sessions']} sessions, a sample every {d['interval_s']} s")
        report.add(f"{v}: transaction messages queued", d["tx_queued"], "",
                   note=f"outbox {d['composition']}; state file {d['db_mb']:.1f} MB")
        report.add(f"{v}: delivered after reconnection", d["delivered"], "",
                   note="in order" if d["in_order"] else "OUT OF ORDER")
        report.add(f"{v}: lost", d["lost"], "")
        report.add(f"{v}: identical resends", d["duplicated"], "")
        report.add(f"{v}: CSMS back -> outbox empty", d["replay_s"], "s",
                   note="strict test CSMS in the same process, validating every frame")
    for f in fulls:
        v = f["version"]
        report.add(f"{v} disk full: items queued once SQLite said full", f["queued_while_full"],
                   "", note=(f"kept {f['outbox_before']}" if f["kept"] else
                             "queued messages LOST") + f"; fitted in the last free bytes "
                   f"before that: {f['fitted_after_cap']}")
        report.add(f"{v} disk full: MemoryExhaustion security events queued",
                   f["memory_exhaustion_queued"], "")
        report.add(f"{v} disk full: Faulted statuses at the CSMS", f["faulted_reported"], "",
                   note=f"{f['fault_info']!r}; EVSE 1 {f['evse1']}; EVSE 2 {f['evse2']}")
        report.add(f"{v} disk full: ends after a restart with space", f.get(
            "ends_after_restart", 0), "", note=", ".join(map(str, f.get("end_reasons", []))))
    report.details.update(days=days, disk_full=fulls, problems=problems[:40])
    report.emit()
    for p in problems[:40]:
        print("PROBLEM " + p, file=sys.stderr)
    return 1 if problems else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.soak.long_outage",
                                description=__doc__.splitlines()[0])
    p.add_argument("--messages", type=int, default=10_000,
                   help="transaction messages queued in the day (per version)")
    p.add_argument("--versions", default="1.6,2.0.1")
    p.add_argument("--hours", type=float, default=24.0, help="length of the outage")
    p.add_argument("--quick", action="store_true", help="80 messages in 6 min per version")
    ns = p.parse_args(argv)
    versions = tuple(v.strip() for v in ns.versions.split(",") if v.strip())
    logging.getLogger().setLevel(logging.ERROR)  # counted by the disk-full phase, not shown
    logging.getLogger().addHandler(logging.NullHandler())
    return asyncio.run(run(80 if ns.quick else ns.messages, 0.1 if ns.quick else ns.hours,
                           versions, ns.quick))


if __name__ == "__main__":
    raise SystemExit(main())
