"""Power cuts and broken state files, with the agent as a real process.

``cp-agent run`` runs as a subprocess (mock HAL inside it, driven through its control socket)
against the in-process strict test CSMS.  The power-cut test SIGKILLs it at many points (in
the middle of charging, while the CSMS is processing a transaction message whose answer the
agent will never read, right after a plug/tap/unplug, during an outage), restarts it on the
same state file each time, and at the end checks the CSMS's record: every session accounted
for exactly once, each with a plausible meterStop.

The kill points are drawn from a seeded RNG (``CP_POWER_CUT_SEED`` overrides the seed) so a
failure can be replayed; waiting a random time before a kill *is* the kill point, not a way of
synchronising with the agent.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.clock import parse_iso
from agent.testing.csms import TestCsms

ROOT = Path(__file__).resolve().parent.parent
CP_AGENT = [sys.executable, "-m", "agent"]
STATION = "PCUT"
KILLS = 20
PERSIST_S = 0.5  # storage.meter_persist_s of the agent under test
POLL_S = 1.0  # the core's meter poll interval
FULL_POWER_W = 16 * 3 * 230.0  # what the mock EV draws: 16 A on three phases
JITTER_S = 2.0  # scheduling slack for a loaded 2-core test machine


def _config(directory: Path, url: str) -> Path:
    cfg = directory / "config.yaml"
    doc = {
        "station": {"id": STATION},
        "ocpp": {"url": url, "versions": ["1.6"], "call_timeout_s": 3,
                 "reconnect": {"min_backoff_s": 0.05, "max_backoff_s": 0.3},
                 "defaults": {"MeterValueSampleInterval": 1,
                              "AllowOfflineTxForUnknownId": True,
                              "TransactionMessageRetryInterval": 1}},
        "storage": {"path": str(directory / "state.sqlite3"), "meter_persist_s": PERSIST_S},
        "control": {"socket": str(directory / "ctl.sock")},
        "evses": [{"id": 1}, {"id": 2}],
        "hal": {"driver": "mock", "ev_max_current_a": 16},
        "log": {"level": "info"},
    }
    cfg.write_text(json.dumps(doc))  # JSON is YAML
    return cfg


class Daemon:
    """One `cp-agent run` process at a time on the same state file; READY via sd_notify."""

    def __init__(self, directory: Path, config: Path, env: dict[str, str] | None = None) -> None:
        self.dir = directory
        self.config = config
        self.sock = directory / "ctl.sock"
        self.notify_path = directory / "notify"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(self.notify_path))
        self.notify.setblocking(False)
        self.extra_env = env or {}
        self.proc: asyncio.subprocess.Process | None = None
        self.runs = 0
        self.statuses: list[str] = []

    async def start(self) -> None:
        self.runs += 1
        env = dict(os.environ, NOTIFY_SOCKET=str(self.notify_path), PYTHONPATH=str(ROOT),
                   **self.extra_env)
        log = open(self.dir / f"run{self.runs}.log", "wb")  # noqa: ASYNC230 - local, tiny
        self.proc = await asyncio.create_subprocess_exec(
            *CP_AGENT, "run", "--config", str(self.config), cwd=ROOT, env=env,
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        await self.wait_notify("READY=1")

    async def wait_notify(self, needle: str, timeout: float = 20.0) -> str:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while True:
                data = (await loop.sock_recv(self.notify, 4096)).decode()
                self.statuses.append(data)
                if needle in data:
                    return data

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)

    async def wait_exit(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        return await asyncio.wait_for(self.proc.wait(), timeout)

    async def ctl(self, cmd: str, **args: Any) -> Any:
        """The control socket's own protocol (what `cp-agent ctl` speaks), without a process."""
        reader, writer = await asyncio.open_unix_connection(str(self.sock))
        try:
            writer.write(json.dumps({"cmd": cmd, "args": args}).encode() + b"\n")
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), 10)
        finally:
            writer.close()
        if not line:
            raise ConnectionError("the agent closed the control connection (killed?)")
        answer = json.loads(line)
        assert answer["ok"], answer
        return answer["result"]

    def ctl_cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([*CP_AGENT, "ctl", "--socket", str(self.sock), *args],
                              capture_output=True, text=True, timeout=30, cwd=ROOT)

    async def close(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self.notify.close()

    def logs(self) -> str:
        return "\n".join(f"--- run {i}\n" + (self.dir / f"run{i}.log").read_text()[-3000:]
                         for i in range(max(1, self.runs - 2), self.runs + 1)
                         if (self.dir / f"run{i}.log").exists())


@dataclass
class Session:
    tag: str
    evse: int
    seen: bool = False  # the agent reported its transaction (journalled)
    obs: list[tuple[float, float]] = field(default_factory=list)  # (monotonic, meter Wh)
    unplugged_at: float | None = None  # the test ended it normally (or tried to)
    killed_at: float | None = None  # the process died while it was open


class Model:
    """What the test did, to check the CSMS's record against."""

    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}
        self.active: dict[int, Session] = {}  # EVSE -> session believed open
        self.n = 0

    def observe(self, status: dict) -> None:
        now = time.monotonic()
        for evse in status["evses"]:
            s = self.active.get(evse["evse"])
            if s is not None and evse["token"] == s.tag and evse["local_transaction_id"]:
                s.seen = True
                if evse["meter_wh"] is not None:
                    s.obs.append((now, evse["meter_wh"]))

    def killed(self, when: float) -> None:
        for s in self.active.values():
            if s.killed_at is None:
                s.killed_at = when
        self.active.clear()  # the mock EVs are gone with the process


async def _start_session(d: Daemon, m: Model, evse: int) -> None:
    m.n += 1
    s = Session(f"S{m.n:03d}", evse)
    m.sessions[s.tag] = s
    m.active[evse] = s
    await d.ctl("plug", evse=evse)
    await d.ctl("tap", token=s.tag, evse=evse)


async def _end_session(d: Daemon, m: Model, evse: int) -> None:
    s = m.active[evse]
    m.observe(await d.ctl("status"))  # the last reading before the unplug
    s.unplugged_at = time.monotonic()
    m.active.pop(evse, None)  # (a kill during the status call already cleared it)
    await d.ctl("unplug", evse=evse)


def _kill_inside(csms: TestCsms, d: Daemon, action: str, m: Model, fired: asyncio.Event):
    """Override: the CSMS processes the message, then the station dies before the answer."""

    def hook(link, payload):
        csms.overrides.pop(action, None)
        m.killed(time.monotonic())
        d.kill()
        fired.set()
        return None  # fall through: recorded as processed, answered to a dead socket

    return hook


async def _until_drained(d: Daemon, csms: TestCsms, timeout: float = 30.0) -> None:
    """Wait until the agent's outbox is empty, re-checking whenever the CSMS hears something."""
    changed = asyncio.Event()
    csms.on_message = lambda *_: changed.set()
    try:
        async with asyncio.timeout(timeout):
            while True:
                changed.clear()
                status = await d.ctl("status")
                if status["outbox"] == 0 and status["link"] == "connected":
                    return
                await changed.wait()
    finally:
        csms.on_message = None


async def test_sigkill_at_random_points_every_session_accounted_once(short_dir):
    seed = int(os.environ.get("CP_POWER_CUT_SEED", "16061606"))
    rng = random.Random(seed)
    csms = TestCsms(versions=("1.6",))
    url = await csms.start()
    d = Daemon(short_dir, _config(short_dir, url))
    m = Model()
    kinds: dict[str, int] = {}
    outage = False
    try:
        for cycle in range(KILLS):
            await d.start()
            if cycle == 0:  # the bench tool itself works against the daemon
                res = await asyncio.to_thread(d.ctl_cli, "plug", "1")
                assert res.returncode == 0, res.stderr
                await d.ctl("unplug", evse=1)
            # Outages: some cycles run (and die) with the CSMS down.
            if not outage and rng.random() < 0.2:
                await csms.pause(abrupt=True)
                outage = True
            elif outage and rng.random() < 0.5:
                await csms.resume()
                outage = False
            for evse in (1, 2):
                if rng.random() < 0.8:
                    await _start_session(d, m, evse)
            await asyncio.sleep(rng.uniform(0.2, 1.2))  # charging (scenario time)
            for evse in sorted(m.active):
                if rng.random() < 0.4:
                    await _end_session(d, m, evse)
            kind = rng.choice(["timed", "timed", "after-ctl", "in-csms", "in-csms"])
            if kind == "in-csms" and outage:
                kind = "timed"
            label = "in-csms armed" if kind == "in-csms" else kind
            kinds[label] = kinds.get(label, 0) + 1
            if kind == "after-ctl":
                m.killed(time.monotonic())
                d.kill()
            elif kind == "in-csms":
                action = rng.choice(["StartTransaction", "MeterValues", "StopTransaction"])
                fired = asyncio.Event()
                csms.overrides[action] = _kill_inside(csms, d, action, m, fired)
                try:
                    if action == "StopTransaction" and m.active:
                        await _end_session(d, m, rng.choice(sorted(m.active)))
                    elif action == "StartTransaction":
                        for evse in (1, 2):
                            if evse not in m.active:
                                await _start_session(d, m, evse)
                    m.observe(await d.ctl("status"))
                    await asyncio.wait_for(fired.wait(), rng.uniform(1.0, 2.5))
                except TimeoutError:  # nothing of that kind was sent: a timed kill instead
                    csms.overrides.pop(action, None)
                    m.observe(await d.ctl("status"))
                    m.killed(time.monotonic())
                    d.kill()
                except (ConnectionError, OSError, AssertionError):
                    assert fired.is_set()  # the hook fired while we were talking to the agent
                if fired.is_set():
                    kinds[f"in-csms {action} fired"] = kinds.get(f"in-csms {action} fired", 0) + 1
            else:
                await asyncio.sleep(rng.uniform(0.0, 1.5))  # the kill point itself
                m.observe(await d.ctl("status"))
                m.killed(time.monotonic())
                d.kill()
            assert await d.wait_exit() == -signal.SIGKILL
            m.killed(time.monotonic())  # sessions begun after the kill never existed
        # Back to normal: the CSMS up, one last start, everything delivered, clean stop.
        if outage:
            await csms.resume()
        await d.start()
        await _until_drained(d, csms)
        assert d.proc is not None
        d.proc.send_signal(signal.SIGTERM)
        assert await d.wait_exit() == 0
    except BaseException:
        print(d.logs())
        raise
    finally:
        await d.close()
        await csms.stop()
    _check_record(csms, m, seed, kinds)


def _check_record(csms: TestCsms, m: Model, seed: int, kinds: dict[str, int]) -> None:
    assert csms.violations == [] and csms.internal_errors == []
    calls = [(i, msg) for i, msg in enumerate(csms.log)
             if msg.direction == "cs->csms" and msg.kind == "CALL"
             and msg.action in ("StartTransaction", "StopTransaction", "MeterValues")]
    starts: dict[str, list[dict]] = {}
    for _, msg in calls:
        if msg.action == "StartTransaction":
            starts.setdefault(msg.payload["idTag"], []).append(msg.payload)
    # Starts: per session at most one distinct message; repeats are identical resends.
    for tag, payloads in starts.items():
        assert all(p == payloads[0] for p in payloads), f"{tag}: differing Starts {payloads}"
    records = {tx_id: rec for tx_id, rec in csms.transactions.items()}
    by_tag: dict[str, tuple[int, dict]] = {}
    for tx_id, rec in records.items():
        assert rec["start"] is not None, f"transaction {tx_id} has no start: {rec}"
        tag = rec["start"]["idTag"]
        assert tag not in by_tag, f"{tag} started twice as different transactions"
        by_tag[tag] = (tx_id, rec)
    assert set(by_tag) == set(starts)
    lags: list[float] = []
    for tag, s in m.sessions.items():
        if s.seen:
            assert tag in by_tag, f"session {tag} was journalled but never reached the CSMS"
        if tag not in by_tag:
            continue
        tx_id, rec = by_tag[tag]
        stop = rec["stop"]
        assert stop is not None, f"session {tag} (transaction {tx_id}) never stopped"
        stops = [msg.payload for _, msg in calls if msg.action == "StopTransaction"
                 and msg.payload["transactionId"] == tx_id]
        assert all(p == stops[0] for p in stops), f"{tag}: differing Stops {stops}"
        start = rec["start"]
        assert stop["meterStop"] >= start["meterStart"]
        # Order on the wire: Start, then its MeterValues, then its Stop.
        first_start = next(i for i, msg in calls if msg.action == "StartTransaction"
                           and msg.payload["idTag"] == tag)
        first_stop = next(i for i, msg in calls if msg.action == "StopTransaction"
                          and msg.payload["transactionId"] == tx_id)
        t_start, t_stop = parse_iso(start["timestamp"]), parse_iso(stop["timestamp"])
        assert t_start <= t_stop, (tag, start, stop)
        for i, msg in calls:
            if msg.action == "MeterValues" and msg.payload.get("transactionId") == tx_id:
                assert first_start < i < first_stop, f"{tag}: MeterValues out of order"
                for mv in msg.payload["meterValue"]:  # and in time: a Stop never predates
                    assert t_start <= parse_iso(mv["timestamp"]) <= t_stop, (tag, mv, stop)
        ended_normally = s.unplugged_at is not None and (
            s.killed_at is None or s.unplugged_at < s.killed_at)
        if s.killed_at is not None and not ended_normally:
            assert stop["reason"] == "PowerLoss", (tag, stop)
        elif ended_normally:
            assert stop["reason"] in ("EVDisconnected", "PowerLoss"), (tag, stop)
        # meterStop against the readings the test saw before the end.
        before = [(t, wh) for t, wh in s.obs
                  if t <= (s.unplugged_at if ended_normally else (s.killed_at or 1e18))]
        if not before:
            continue
        t_obs, wh_obs = before[-1]
        end = s.unplugged_at if ended_normally else s.killed_at
        assert end is not None
        upper = wh_obs + FULL_POWER_W * (end - t_obs + JITTER_S) / 3600 + 1
        assert stop["meterStop"] <= upper, (tag, stop, wh_obs)
        if stop["reason"] == "PowerLoss":
            lag_wh = wh_obs - stop["meterStop"]
            lags.append(lag_wh)
            allowed = FULL_POWER_W * (PERSIST_S + POLL_S + JITTER_S) / 3600 + 1
            assert lag_wh <= allowed, (tag, stop, wh_obs, lag_wh)
    repeats = sum(rec.get("start_repeats", 0) + rec.get("stop_repeats", 0)
                  for rec in records.values())
    power_losses = sum(1 for rec in records.values() if rec["stop"]["reason"] == "PowerLoss")
    seen = sum(1 for s in m.sessions.values() if s.seen)
    print(f"\npower-cut test: seed {seed}, {KILLS} kills {kinds}, {len(m.sessions)} sessions "
          f"tapped ({seen} seen journalled), {len(records)} transactions at the CSMS "
          f"({power_losses} PowerLoss), "
          f"{repeats} identical resends after a kill, meterStop lag behind the last reading "
          f"seen before a kill: max {max(lags, default=0):.1f} Wh")
    assert len(records) >= KILLS // 2, "the scenario must really exercise sessions"
    assert power_losses >= KILLS // 4


# ====================================================================== damaged / locked state


async def test_damaged_database_runs_degraded_reports_it_and_recovers_once_repaired(
        csms, short_dir):
    state = short_dir / "state.sqlite3"
    state.write_bytes(b"this is not an SQLite database " * 200)
    d = Daemon(short_dir, _config(short_dir, csms.url), env={"CP_AGENT_STORAGE_RETRY_S": "0.3"})
    try:
        await d.start()
        degraded = await d.wait_notify("DEGRADED")
        assert "damaged" in degraded and str(state) in degraded
        faulted = await csms.wait_for("StatusNotification", station_id=STATION, timeout=10,
                                      predicate=lambda p: p["connectorId"] == 1
                                      and p["status"] == "Faulted")
        assert faulted["errorCode"] == "InternalError"
        assert faulted["info"] == "state database unusable (damaged)"
        await csms.wait_for("StatusNotification", station_id=STATION, timeout=10,
                            predicate=lambda p: p["connectorId"] == 0
                            and p["errorCode"] == "InternalError")
        await d.ctl("plug", evse=1)
        await d.ctl("tap", token="NOPE", evse=1)
        link = csms.stations[STATION]
        res = await link.call("RemoteStartTransaction", {"idTag": "NOPE", "connectorId": 1})
        assert res["status"] == "Rejected"
        status = await d.ctl("status")
        assert status["evses"][0]["contactor"] == "open"
        assert status["evses"][0]["status"] == "Faulted"
        assert csms.messages(STATION, "StartTransaction") == []
        assert "CRITICAL" in (short_dir / "run1.log").read_text()
        # The operator moves the damaged file aside: the agent restarts itself, healthy.
        shutil.move(state, short_dir / "state.sqlite3.damaged")
        await d.wait_notify("READY=1")
        await csms.wait_for("BootNotification", station_id=STATION, count=2, timeout=15)
        await csms.wait_for("StatusNotification", station_id=STATION, timeout=10,
                            predicate=lambda p: p["connectorId"] == 1
                            and p["status"] in ("Available", "Preparing"))
        await d.ctl("unplug", evse=1)
        await d.ctl("plug", evse=1)
        await d.ctl("tap", token="AFTER", evse=1)
        await csms.wait_for("StartTransaction", station_id=STATION, timeout=10)
        assert d.proc is not None
        d.proc.send_signal(signal.SIGTERM)
        assert await d.wait_exit() == 0
    except BaseException:
        print(d.logs())
        raise
    finally:
        await d.close()


async def test_state_file_locked_by_another_agent_exits_3_naming_the_holder(csms, short_dir):
    config = _config(short_dir, csms.url)
    d = Daemon(short_dir, config)
    try:
        await d.start()
        res = await asyncio.to_thread(
            subprocess.run, [*CP_AGENT, "run", "--config", str(config)], capture_output=True,
            text=True, timeout=30, cwd=ROOT)
        assert res.returncode == 3
        assert "locked by another process" in res.stderr
        assert f"pid {d.proc.pid}" in res.stderr  # type: ignore[union-attr]
        assert (await d.ctl("status"))["link"] in ("connected", "connecting", "disconnected")
    finally:
        await d.close()


pytestmark = pytest.mark.asyncio
