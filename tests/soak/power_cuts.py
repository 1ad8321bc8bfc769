"""Power cuts at scale: SIGKILLs of a real `cp-agent run` at random points of random sessions.

    python -m tests.soak.power_cuts [--cuts 1000] [--versions 1.6,2.0.1,2.1] [--seed N] [--quick]

``cp-agent run`` runs as a subprocess (mock HAL inside it, driven through its control socket)
against an in-process strict test CSMS, one of each per OCPP version, the versions side by side.
Each cycle starts the agent on the same state file, plugs and taps random sessions on two
EVSEs, maybe takes the CSMS down (an outage) or brings it back, maybe ends some sessions, and
then SIGKILLs the agent at a random point: mid-charge, right after a control command, or inside
the CSMS's handler for a transaction message (processed, never answered).  At the end the CSMS
comes back, the agent drains its outbox and stops cleanly, and the CSMS's record is checked:
every session the agent had journalled exists exactly once, with its start, meter values and
end in order, a plausible meterStop, PowerLoss where it was cut; and the state file passes
SQLite's ``PRAGMA integrity_check``.

The kill points are drawn from a seeded RNG (``--seed``; the test reads ``CP_POWER_CUT_SEED``)
so a failure can be replayed; waiting a random time before a kill *is* the kill point, not a
way of synchronising with the agent.  tests/test_power_cut.py uses the same rig (``Daemon``,
``Campaign``) for its 20-kill 1.6 run and its damaged / locked state file tests.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.clock import parse_iso
from agent.testing.csms import TestCsms

ROOT = Path(__file__).resolve().parent.parent.parent
CP_AGENT = [sys.executable, "-m", "agent"]
STATION = "PCUT"
PERSIST_S = 0.5  # storage.meter_persist_s of the agent under test
POLL_S = 1.0  # the core's meter poll interval
FULL_POWER_W = 16 * 3 * 230.0  # what the mock EV draws: 16 A on three phases
JITTER_S = 2.0  # scheduling slack for a loaded 2-core test machine
VERSIONS = ("1.6", "2.0.1", "2.1")
TX_ACTIONS_16 = ("StartTransaction", "MeterValues", "StopTransaction")


def config(directory: Path, url: str, version: str = "1.6", station: str = STATION) -> Path:
    """A `cp-agent run` configuration on two mock EVSEs, journalling every 0.5 s."""
    cfg = directory / "config.yaml"
    doc = {
        "station": {"id": station},
        "ocpp": {"url": url, "versions": [version], "call_timeout_s": 3,
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
        self.keep_logs = 3  # run logs kept on disk (a campaign of 1,000 runs keeps the last 3)

    async def start(self, timeout: float = 20.0) -> None:
        self.runs += 1
        stale = self.dir / f"run{self.runs - self.keep_logs}.log"
        if self.runs > self.keep_logs and stale.exists():
            stale.unlink()
        env = dict(os.environ, NOTIFY_SOCKET=str(self.notify_path), PYTHONPATH=str(ROOT),
                   **self.extra_env)
        log = open(self.dir / f"run{self.runs}.log", "wb")  # noqa: ASYNC230 - local, tiny
        self.proc = await asyncio.create_subprocess_exec(
            *CP_AGENT, "run", "--config", str(self.config), cwd=ROOT, env=env,
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        await self.wait_notify("READY=1", timeout)

    async def wait_notify(self, needle: str, timeout: float = 20.0) -> str:
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while True:
                data = (await loop.sock_recv(self.notify, 4096)).decode()
                self.statuses.append(data)
                del self.statuses[:-50]
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
        if not answer.get("ok"):
            raise RuntimeError(f"control command {cmd} {args} failed: {answer}")
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
    tx_id: str | None = None  # the agent's own transaction id (2.0.1's transactionId)
    obs: list[tuple[float, float]] = field(default_factory=list)  # (monotonic, meter Wh)
    unplugged_at: float | None = None  # the campaign ended it normally (or tried to)
    killed_at: float | None = None  # the process died while it was open


class Model:
    """What the campaign did, to check the CSMS's record against."""

    def __init__(self, prefix: str = "S") -> None:
        self.sessions: dict[str, Session] = {}
        self.active: dict[int, Session] = {}  # EVSE -> session believed open
        self.n = 0
        self.prefix = prefix

    def observe(self, status: dict) -> None:
        now = time.monotonic()
        for evse in status["evses"]:
            s = self.active.get(evse["evse"])
            if s is not None and evse["token"] == s.tag and evse["local_transaction_id"]:
                s.seen = True
                s.tx_id = evse["local_transaction_id"]
                if evse["meter_wh"] is not None:
                    s.obs.append((now, evse["meter_wh"]))
                    del s.obs[:-4]  # only the newest readings matter

    def killed(self, when: float) -> None:
        for s in self.active.values():
            if s.killed_at is None:
                s.killed_at = when
        self.active.clear()  # the mock EVs are gone with the process


@dataclass
class Outcome:
    """The verdict of one version's campaign: figures and the broken promises."""

    version: str
    cuts: int = 0
    kinds: Counter = field(default_factory=Counter)
    sessions_tapped: int = 0
    sessions_journalled: int = 0
    transactions: int = 0
    power_losses: int = 0
    lost: int = 0
    duplicated: int = 0
    resends: int = 0
    worst_lag_wh: float = 0.0
    integrity: str = "not checked"
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        self.problems.append(f"{self.version}: {text}")


class Campaign:
    """Cycles of start / sessions / outage / SIGKILL of one version's agent, then the check."""

    def __init__(self, version: str, directory: Path, cuts: int, seed: int) -> None:
        self.version = version
        self.dir = directory
        self.cuts = cuts
        self.seed = seed
        self.rng = random.Random(f"{seed}-{version}")
        self.csms = TestCsms(versions=(version,))
        self.model = Model(prefix="S")
        self.outcome = Outcome(version)
        self.d: Daemon | None = None
        self._armed: dict[str, tuple[str | None, asyncio.Event]] = {}

    @property
    def v16(self) -> bool:
        return self.version == "1.6"

    # ------------------------------------------------------------------ the kill inside the CSMS

    def _arm(self, action: str, event_type: str | None, fired: asyncio.Event) -> None:
        """The CSMS processes the next such message, then the station dies before the answer."""
        d, m = self.d, self.model
        assert d is not None

        def hook(link: Any, payload: dict) -> None:
            if event_type is not None and payload.get("eventType") != event_type:
                return None  # not the one: answered normally, the hook stays armed
            self.csms.overrides.pop(action, None)
            m.killed(time.monotonic())
            d.kill()
            fired.set()
            return None  # fall through: recorded as processed, answered to a dead socket

        self.csms.overrides[action] = hook

    async def _start_session(self, evse: int) -> None:
        m, d = self.model, self.d
        assert d is not None
        m.n += 1
        s = Session(f"{m.prefix}{m.n:04d}", evse)
        m.sessions[s.tag] = s
        m.active[evse] = s
        await d.ctl("plug", evse=evse)
        await d.ctl("tap", token=s.tag, evse=evse)

    async def _end_session(self, evse: int) -> None:
        m, d = self.model, self.d
        assert d is not None
        s = m.active[evse]
        m.observe(await d.ctl("status"))  # the last reading before the unplug
        s.unplugged_at = time.monotonic()
        m.active.pop(evse, None)  # (a kill during the status call already cleared it)
        await d.ctl("unplug", evse=evse)

    async def _until_drained(self, timeout: float = 60.0) -> None:
        """Wait until the agent's outbox is empty, re-checking whenever the CSMS hears something."""
        d = self.d
        assert d is not None
        changed = asyncio.Event()
        self.csms.on_message = lambda *_: changed.set()
        try:
            async with asyncio.timeout(timeout):
                while True:
                    changed.clear()
                    status = await d.ctl("status")
                    if status["outbox"] == 0 and status["link"] == "connected":
                        return
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(changed.wait(), 2.0)
        finally:
            self.csms.on_message = None

    # ------------------------------------------------------------------ the run

    async def run(self, *, cli_check: bool = False) -> Outcome:
        url = await self.csms.start()
        self.d = d = Daemon(self.dir, config(self.dir, url, self.version))
        rng, m = self.rng, self.model
        outage = False
        try:
            for cycle in range(self.cuts):
                await d.start()
                if cycle == 0 and cli_check:  # the bench tool itself works against the daemon
                    res = await asyncio.to_thread(d.ctl_cli, "plug", "1")
                    if res.returncode != 0:
                        raise RuntimeError(f"cp-agent ctl plug failed: {res.stderr}")
                    await d.ctl("unplug", evse=1)
                # Outages: some cycles run (and die) with the CSMS down.
                if not outage and rng.random() < 0.2:
                    await self.csms.pause(abrupt=True)
                    outage = True
                elif outage and rng.random() < 0.5:
                    await self.csms.resume()
                    outage = False
                for evse in (1, 2):
                    if rng.random() < 0.8:
                        await self._start_session(evse)
                await asyncio.sleep(rng.uniform(0.2, 1.2))  # charging (scenario time)
                for evse in sorted(m.active):
                    if rng.random() < 0.4:
                        await self._end_session(evse)
                await self._kill(rng, outage)
                code = await d.wait_exit()
                if code != -signal.SIGKILL:
                    raise RuntimeError(f"the agent exited with {code}, not by the SIGKILL")
                m.killed(time.monotonic())  # sessions begun after the kill never existed
                self.outcome.cuts += 1
            # Back to normal: the CSMS up, one last start, everything delivered, clean stop.
            if outage:
                await self.csms.resume()
            await d.start()
            await self._until_drained()
            assert d.proc is not None
            d.proc.send_signal(signal.SIGTERM)
            code = await d.wait_exit()
            if code != 0:
                self.outcome.problem(f"the last run exited {code} on SIGTERM, not 0")
        except BaseException:
            print(d.logs(), file=sys.stderr)
            raise
        finally:
            await d.close()
            await self.csms.stop()
        self.check()
        return self.outcome

    async def _kill(self, rng: random.Random, outage: bool) -> None:
        d, m, kinds = self.d, self.model, self.outcome.kinds
        assert d is not None
        kind = rng.choice(["timed", "timed", "after-ctl", "in-csms", "in-csms"])
        if kind == "in-csms" and outage:
            kind = "timed"
        kinds["in-csms armed" if kind == "in-csms" else kind] += 1
        if kind == "after-ctl":
            m.killed(time.monotonic())
            d.kill()
            return
        if kind == "timed":
            await asyncio.sleep(rng.uniform(0.0, 1.5))  # the kill point itself
            m.observe(await d.ctl("status"))
            m.killed(time.monotonic())
            d.kill()
            return
        if self.v16:
            action = rng.choice(TX_ACTIONS_16)
            event_type = None
            ending, starting = action == "StopTransaction", action == "StartTransaction"
        else:
            action = "TransactionEvent"
            event_type = rng.choice(["Started", "Updated", "Ended"])
            ending, starting = event_type == "Ended", event_type == "Started"
        fired = asyncio.Event()
        self._arm(action, event_type, fired)
        label = f"in-csms {action}" + (f" {event_type}" if event_type else "")
        try:
            if ending and m.active:
                await self._end_session(rng.choice(sorted(m.active)))
            elif starting:
                for evse in (1, 2):
                    if evse not in m.active:
                        await self._start_session(evse)
            m.observe(await d.ctl("status"))
            await asyncio.wait_for(fired.wait(), rng.uniform(1.0, 2.5))
        except TimeoutError:  # nothing of that kind was sent: a timed kill instead
            self.csms.overrides.pop(action, None)
            m.observe(await d.ctl("status"))
            m.killed(time.monotonic())
            d.kill()
        except (ConnectionError, OSError, RuntimeError):
            if not fired.is_set():  # the hook fired while we were talking to the agent
                raise
        if fired.is_set():
            kinds[f"{label} fired"] += 1

    # ------------------------------------------------------------------ the check

    def check(self) -> Outcome:
        out = self.outcome
        if self.csms.violations:
            out.problems += [f"{self.version}: CSMS saw a violation: {v}"
                             for v in self.csms.violations[:20]]
        if self.csms.internal_errors:
            out.problems += [f"{self.version}: test CSMS bug: {e}"
                             for e in self.csms.internal_errors[:5]]
        out.sessions_tapped = len(self.model.sessions)
        out.sessions_journalled = sum(1 for s in self.model.sessions.values() if s.seen)
        if self.v16:
            self._check_16()
        else:
            self._check_2x()
        out.integrity = integrity_check(self.dir / "state.sqlite3")
        if out.integrity != "ok":
            out.problem(f"PRAGMA integrity_check: {out.integrity}")
        return out

    def _lag(self, s: Session, meter_stop: float, reason: str, start_time: float | None,
             stop_time: float | None) -> None:
        """meterStop against the readings the campaign saw before the session's end."""
        out = self.outcome
        ended_normally = s.unplugged_at is not None and (
            s.killed_at is None or s.unplugged_at < s.killed_at)
        end = s.unplugged_at if ended_normally else s.killed_at
        before = [(t, wh) for t, wh in s.obs if end is None or t <= end]
        if not before or end is None:
            return
        t_obs, wh_obs = before[-1]
        upper = wh_obs + FULL_POWER_W * (end - t_obs + JITTER_S) / 3600 + 1
        if meter_stop > upper:
            out.problem(f"{s.tag}: meterStop {meter_stop} above what it can have drawn "
                        f"({wh_obs} Wh seen {end - t_obs:.1f} s before the end)")
        if reason == "PowerLoss":
            lag_wh = wh_obs - meter_stop
            out.worst_lag_wh = max(out.worst_lag_wh, lag_wh)
            allowed = FULL_POWER_W * (PERSIST_S + POLL_S + JITTER_S) / 3600 + 1
            if lag_wh > allowed:
                out.problem(f"{s.tag}: meterStop {meter_stop} lags the last reading seen "
                            f"({wh_obs}) by {lag_wh:.1f} Wh, more than {allowed:.1f}")

    def _reason_ok(self, s: Session, reason: str, normal: tuple[str, ...]) -> None:
        ended_normally = s.unplugged_at is not None and (
            s.killed_at is None or s.unplugged_at < s.killed_at)
        if s.killed_at is not None and not ended_normally and reason != "PowerLoss":
            self.outcome.problem(f"{s.tag}: cut while open, but ended with {reason}")
        elif ended_normally and reason not in normal + ("PowerLoss",):
            self.outcome.problem(f"{s.tag}: unplugged, but ended with {reason}")

    def _check_16(self) -> None:
        out, csms = self.outcome, self.csms
        calls = [(i, msg) for i, msg in enumerate(csms.log)
                 if msg.direction == "cs->csms" and msg.kind == "CALL"
                 and msg.action in TX_ACTIONS_16]
        starts: dict[str, list[dict]] = {}
        first_start: dict[str, int] = {}
        first_stop: dict[int, int] = {}
        stops: dict[int, list[dict]] = {}
        mvs: dict[int, list[tuple[int, dict]]] = {}
        for i, msg in calls:
            p = msg.payload
            if msg.action == "StartTransaction":
                starts.setdefault(p["idTag"], []).append(p)
                first_start.setdefault(p["idTag"], i)
            elif msg.action == "StopTransaction":
                stops.setdefault(p["transactionId"], []).append(p)
                first_stop.setdefault(p["transactionId"], i)
            elif "transactionId" in p:
                mvs.setdefault(p["transactionId"], []).append((i, p))
        for tag, payloads in starts.items():  # repeats must be identical resends
            if any(p != payloads[0] for p in payloads):
                out.duplicated += 1
                out.problem(f"{tag}: differing StartTransactions {payloads}")
        by_tag: dict[str, tuple[int, dict]] = {}
        for tx_id, rec in csms.transactions.items():
            if rec["start"] is None:
                out.problem(f"transaction {tx_id} has no start: {rec}")
                continue
            tag = rec["start"]["idTag"]
            if tag in by_tag:
                out.duplicated += 1
                out.problem(f"{tag} started twice as different transactions")
            by_tag[tag] = (tx_id, rec)
        out.transactions = len(by_tag)
        for tag, s in self.model.sessions.items():
            if s.seen and tag not in by_tag:
                out.lost += 1
                out.problem(f"session {tag} was journalled but never reached the CSMS")
            if tag not in by_tag:
                continue
            tx_id, rec = by_tag[tag]
            stop, start = rec["stop"], rec["start"]
            if stop is None:
                out.lost += 1
                out.problem(f"session {tag} (transaction {tx_id}) never stopped")
                continue
            sent = stops.get(tx_id, [stop])
            if any(p != sent[0] for p in sent):
                out.duplicated += 1
                out.problem(f"{tag}: differing StopTransactions {sent}")
            if stop["meterStop"] < start["meterStart"]:
                out.problem(f"{tag}: meterStop {stop['meterStop']} < meterStart")
            t_start, t_stop = parse_iso(start["timestamp"]), parse_iso(stop["timestamp"])
            if t_start > t_stop:
                out.problem(f"{tag}: stopped before it started {start} {stop}")
            for i, p in mvs.get(tx_id, []):  # Start, its MeterValues, its Stop; on the wire
                if not first_start.get(tag, -1) < i < first_stop.get(tx_id, 1 << 60):
                    out.problem(f"{tag}: MeterValues out of order")
                for mv in p["meterValue"]:  # and in time, and never above the end
                    if not t_start <= parse_iso(mv["timestamp"]) <= t_stop:
                        out.problem(f"{tag}: sample {mv['timestamp']} outside the session")
                    wh = _energy_wh(mv)
                    if wh is not None and wh > stop["meterStop"] + 1:
                        out.problem(f"{tag}: a sample of {wh} Wh, meterStop {stop['meterStop']}")
            if stop["reason"] == "PowerLoss":
                out.power_losses += 1
            self._reason_ok(s, stop["reason"], ("EVDisconnected",))
            self._lag(s, stop["meterStop"], stop["reason"], None, None)
        out.resends = sum(rec.get("start_repeats", 0) + rec.get("stop_repeats", 0)
                          for rec in csms.transactions.values())

    def _check_2x(self) -> None:
        out, csms = self.outcome, self.csms
        by_tag: dict[str, set[str]] = {}
        for tx_id, rec in csms.transactions.items():
            for e in rec["events"]:
                token = e.get("idToken", {}).get("idToken")
                if token:
                    by_tag.setdefault(token, set()).add(tx_id)
        out.transactions = len(csms.transactions)
        for tag, s in self.model.sessions.items():
            ids = by_tag.get(tag, set())
            if s.seen and s.tx_id is not None:
                ids = ids | ({s.tx_id} if s.tx_id in csms.transactions else set())
            if len(ids) > 1:
                out.duplicated += 1
                out.problem(f"{tag}: reported as several transactions {sorted(ids)}")
            if s.seen and not ids:
                out.lost += 1
                out.problem(f"session {tag} was journalled but never reached the CSMS")
            if not ids:
                continue
            tx_id = sorted(ids)[0]
            events = csms.transactions[tx_id]["events"]
            firsts: dict[int, dict] = {}
            order: list[dict] = []
            for e in events:
                seq = e["seqNo"]
                if seq in firsts:
                    if e != firsts[seq]:
                        out.duplicated += 1
                        out.problem(f"{tag}: seqNo {seq} sent twice, differently")
                    else:
                        out.resends += 1
                    continue
                firsts[seq] = e
                order.append(e)
            seqs = [e["seqNo"] for e in order]
            if seqs != sorted(seqs):
                out.problem(f"{tag}: seqNo out of order on the wire: {seqs}")
            if seqs and seqs != list(range(seqs[0], seqs[0] + len(seqs))):
                out.lost += 1
                out.problem(f"{tag}: a gap in seqNo {seqs}")
            kinds = [e["eventType"] for e in order]
            if kinds[0] != "Started" or kinds.count("Started") != 1:
                out.problem(f"{tag}: events do not begin with one Started: {kinds}")
            ended = [e for e in order if e["eventType"] == "Ended"]
            if len(ended) != 1 or kinds[-1] != "Ended":
                out.lost += 1
                out.problem(f"session {tag} (transaction {tx_id}) never ended: {kinds}")
                continue
            stamps = [parse_iso(e["timestamp"]) for e in order]
            if stamps != sorted(stamps):
                out.problem(f"{tag}: event timestamps out of order")
            end = ended[0]
            reason = end["transactionInfo"].get("stoppedReason", "Local")
            if reason == "PowerLoss":
                out.power_losses += 1
            self._reason_ok(s, reason, ("EVDisconnected", "Local"))
            meter_stop = _register(end, "Transaction.End")
            meter_start = _register(order[0], "Transaction.Begin")
            if meter_stop is None:
                out.problem(f"{tag}: Ended carries no Transaction.End energy register")
                continue
            if meter_start is not None and meter_stop < meter_start:
                out.problem(f"{tag}: end register {meter_stop} < start {meter_start}")
            for e in order[:-1]:
                for mv in e.get("meterValue", []):
                    wh = _energy_wh(mv)
                    if wh is not None and wh > meter_stop + 0.01:
                        out.problem(f"{tag}: seqNo {e['seqNo']} reported {wh} Wh, "
                                    f"the end {meter_stop} Wh")
            self._lag(s, meter_stop, reason, None, None)


def _register(event: dict, context: str) -> float | None:
    for mv in event.get("meterValue", []):
        for sv in mv["sampledValue"]:
            if (sv.get("measurand", "Energy.Active.Import.Register")
                    == "Energy.Active.Import.Register" and sv.get("context") == context):
                return float(sv["value"])
    return None


def _energy_wh(mv: dict) -> float | None:
    """The energy register of one meterValue, in Wh (None when it has none)."""
    for sv in mv["sampledValue"]:
        if sv.get("measurand", "Energy.Active.Import.Register") != \
                "Energy.Active.Import.Register" or sv.get("phase"):
            continue
        unit = sv.get("unit") or sv.get("unitOfMeasure", {}).get("unit", "Wh")
        scale = 10 ** sv.get("unitOfMeasure", {}).get("multiplier", 0)
        value = float(sv["value"]) * scale
        return value * 1000 if unit == "kWh" else value
    return None


def integrity_check(path: Path) -> str:
    """SQLite's own verdict on the state file (and its WAL), read-only."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        return f"cannot open: {exc}"
    try:
        rows = conn.execute("PRAGMA integrity_check").fetchall()
        return "; ".join(str(r[0]) for r in rows)
    except sqlite3.Error as exc:
        return f"failed: {exc}"
    finally:
        conn.close()


# ---------------------------------------------------------------------- the script


async def run(cuts: int, versions: tuple[str, ...], seed: int, quick: bool) -> int:
    from bench._common import Report

    report = Report("power_cuts", quick)
    per = {v: cuts // len(versions) + (1 if i < cuts % len(versions) else 0)
           for i, v in enumerate(versions)}
    dirs = {v: tempfile.mkdtemp(prefix=f"cpa-pc{v.replace('.', '')}-", dir="/tmp")
            for v in versions}
    t0 = time.perf_counter()
    campaigns = [Campaign(v, Path(dirs[v]), per[v], seed) for v in versions]
    results = await asyncio.gather(*(c.run() for c in campaigns), return_exceptions=True)
    elapsed = time.perf_counter() - t0
    failed = 0
    for c, res in zip(campaigns, results, strict=True):
        if isinstance(res, BaseException):
            print(f"{c.version}: the campaign itself failed: {res!r}", file=sys.stderr)
            failed += 1
            continue
    outs = [r for r in results if isinstance(r, Outcome)]
    problems = [p for o in outs for p in o.problems]
    report.add("SIGKILLs", sum(o.cuts for o in outs), "",
               note=", ".join(f"{o.version}: {o.cuts}" for o in outs))
    report.add("sessions tapped", sum(o.sessions_tapped for o in outs), "",
               note=f"{sum(o.sessions_journalled for o in outs)} journalled before a cut or end")
    report.add("transactions at the CSMS", sum(o.transactions for o in outs), "",
               note=f"{sum(o.power_losses for o in outs)} ended PowerLoss")
    report.add("sessions lost", sum(o.lost for o in outs), "")
    report.add("sessions duplicated", sum(o.duplicated for o in outs), "")
    report.add("identical resends after a cut", sum(o.resends for o in outs), "",
               note="the at-least-once window; a deduplicating CSMS sees one session")
    report.add("worst meterStop lag behind the last reading seen", max(
        (o.worst_lag_wh for o in outs), default=0.0), "Wh",
        note=f"bound {FULL_POWER_W * (PERSIST_S + POLL_S + JITTER_S) / 3600 + 1:.1f} Wh")
    report.add("state files passing PRAGMA integrity_check",
               sum(1 for o in outs if o.integrity == "ok"), "", note=f"of {len(outs)}")
    report.add("campaign wall time", elapsed, "s")
    report.details.update(seed=seed, versions=list(versions), problems=problems[:50],
                          per_version={o.version: {
                              "cuts": o.cuts, "kinds": dict(o.kinds),
                              "sessions": o.sessions_tapped, "transactions": o.transactions,
                              "power_losses": o.power_losses, "lost": o.lost,
                              "duplicated": o.duplicated, "resends": o.resends,
                              "worst_lag_wh": round(o.worst_lag_wh, 2),
                              "integrity": o.integrity} for o in outs})
    report.emit()
    for p in problems[:50]:
        print("PROBLEM " + p, file=sys.stderr)
    if not problems and not failed:
        import shutil

        for d in dirs.values():
            shutil.rmtree(d, ignore_errors=True)
    else:
        print(f"state directories kept: {', '.join(dirs.values())}", file=sys.stderr)
    return 1 if problems or failed else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.soak.power_cuts",
                                description=__doc__.splitlines()[0])
    p.add_argument("--cuts", type=int, default=1000, help="SIGKILLs in all (split per version)")
    p.add_argument("--versions", default=",".join(VERSIONS))
    p.add_argument("--seed", type=int, default=int(os.environ.get("CP_POWER_CUT_SEED",
                                                                  "16061606")))
    p.add_argument("--quick", action="store_true", help="1 cut per version")
    ns = p.parse_args(argv)
    versions = tuple(v.strip() for v in ns.versions.split(",") if v.strip())
    unknown = [v for v in versions if v not in VERSIONS]
    if unknown:
        p.error(f"unknown version(s) {unknown}; choose from {', '.join(VERSIONS)}")
    cuts = len(versions) if ns.quick else ns.cuts
    return asyncio.run(run(cuts, versions, ns.seed, ns.quick))


if __name__ == "__main__":
    raise SystemExit(main())
