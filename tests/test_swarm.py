"""Swarm mode: many real agents in one process against the strict test CSMS.

What a swarm reports must be what the CSMS saw, frame for frame, or a load test lies; and the
CSMS fixture fails the test on any schema or protocol violation by any station.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import sys
from collections import Counter
from pathlib import Path

import pytest

from agent.clock import Clock
from agent.core.station import Station
from agent.storage import Storage
from agent.swarm import SwarmOptions, run_swarm
from agent.testing.csms import CS_TO_CSMS, CSMS_TO_CS
from hal.mock import MockHal, MockMeter
from tests.conftest import VERSIONS_201_PLUS

REPO = Path(__file__).resolve().parent.parent


def _seen(csms, direction: str, kind: str) -> Counter:
    return Counter(m.action for m in csms.log if m.direction == direction and m.kind == kind)


async def test_every_station_boots_sessions_complete_and_counts_match_the_csms(csms, short_dir):
    out = io.StringIO()
    options = SwarmOptions(csms=csms.url, count=5, id_prefix="T-", charging_ratio=0.9,
                           ramp=50, duration=3.0, session_s=0.8, meter_interval=1, seed=7,
                           state_dir=str(short_dir), drain_s=10)
    summary = await run_swarm(options, out)

    ids = {f"T-{i:05d}" for i in range(1, 6)}
    booted = {m.station_id for m in csms.log if m.action == "BootNotification"
              and m.direction == CSMS_TO_CS and m.kind == "CALLRESULT"
              and m.payload["status"] == "Accepted"}
    assert booted == ids
    assert summary.stations == summary.booted == 5
    assert summary.all_booted_after_s is not None

    # Every CALL the stations sent reached the CSMS, and every answer it gave came back.
    assert summary.sent == _seen(csms, CS_TO_CSMS, "CALL")
    assert summary.acknowledged == _seen(csms, CSMS_TO_CS, "CALLRESULT")
    assert summary.errors == 0, summary.last_error

    # Sessions ran to the end: each transaction the CSMS opened was also closed.
    assert summary.sessions_started > 0
    started = [t for t in csms.transactions.values() if t["start"] is not None]
    stopped = [t for t in started if t["stop"] is not None]
    assert summary.sessions_started == len(started)
    assert summary.sessions_completed == len(stopped) == len(started)
    assert {t["station_id"] for t in started} <= ids
    assert summary.sent["MeterValues"] > 0, "charging sessions sample the meter"
    reasons = Counter(t["stop"]["reason"] for t in stopped)
    assert set(reasons) <= {"Local", "EVDisconnected"}, reasons

    text = out.getvalue()
    assert "Swarm summary" in text
    assert "5 started, 5 booted" in text
    assert f"{summary.sessions_started} started, {summary.sessions_completed} completed" in text
    # Each station kept its own persisted state.
    assert {p.name for p in short_dir.glob("T-*.sqlite3")} == {f"{i}.sqlite3" for i in ids}


@pytest.mark.parametrize("version", VERSIONS_201_PLUS)
async def test_swarm_speaks_2_0_1_and_its_counts_match_the_csms(short_dir, version):
    from agent.testing.csms import TestCsms

    csms = TestCsms(versions=(version,))
    await csms.start()
    try:
        options = SwarmOptions(csms=csms.url, count=3, ocpp=version, id_prefix="V-",
                               charging_ratio=0.9, ramp=50, duration=2.5, session_s=0.6,
                               meter_interval=1, seed=11, state_dir=str(short_dir))
        summary = await run_swarm(options, io.StringIO())
    finally:
        await csms.stop()
    assert csms.violations == []
    assert summary.booted == 3
    assert summary.sent == _seen(csms, CS_TO_CSMS, "CALL")
    events = Counter(p["eventType"] for p in csms.messages(action="TransactionEvent"))
    assert summary.sessions_started == events["Started"] > 0
    assert summary.sessions_completed == events["Ended"] == events["Started"]
    assert summary.errors == 0, summary.last_error


async def test_refused_cards_are_counted_as_the_csms_answered_them(csms, short_dir):
    csms.authorize = lambda tag: "Invalid" if tag.endswith("00002") else "Accepted"
    out = io.StringIO()
    options = SwarmOptions(csms=csms.url, count=3, id_prefix="A-", charging_ratio=0.9,
                           ramp=50, duration=2.5, session_s=0.6, meter_interval=1, seed=5,
                           state_dir=str(short_dir), drain_s=10)
    summary = await run_swarm(options, out)

    verdicts = Counter(m.payload["idTagInfo"]["status"] for m in csms.log
                       if m.action == "Authorize" and m.kind == "CALLRESULT"
                       and m.direction == CSMS_TO_CS)
    assert verdicts["Invalid"] > 0 and verdicts["Accepted"] > 0, verdicts
    assert summary.auth_refused == Counter({"Invalid": verdicts["Invalid"]})
    assert summary.auth_accepted == verdicts["Accepted"]
    assert summary.tx_auth_refused == 0
    # The refused station never started a session.
    assert all(t["station_id"] != "A-00002" for t in csms.transactions.values())
    assert (f"authorizations   {verdicts['Accepted']} accepted, {verdicts['Invalid']} refused "
            f"(Invalid {verdicts['Invalid']})") in out.getvalue()
    assert summary.errors == 0, summary.last_error


async def test_ramp_spaces_out_the_connections(csms, short_dir):
    options = SwarmOptions(csms=csms.url, count=4, id_prefix="R-", charging_ratio=0.0,
                           ramp=4, duration=3.0, state_dir=str(short_dir), drain_s=2)
    summary = await run_swarm(options, io.StringIO())
    assert summary.booted == 4
    connects = sorted(t for t, sid, what in csms.connection_log
                      if what.startswith("connected"))
    assert len(connects) == 4
    # 4 stations at 4/s: the last one connects about 0.75 s after the first, not at once.
    assert connects[-1] - connects[0] >= 0.6
    assert summary.sent["StartTransaction"] == 0, "charging ratio 0: nobody charges"


async def test_cli_swarm_stops_cleanly_on_ctrl_c(csms, short_dir):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "swarm", "--csms", csms.url, "--count", "3",
        "--id-prefix", "C-", "--ramp", "0", "--charging-ratio", "1", "--session-s", "30",
        "--state-dir", str(short_dir), "--seed", "3", cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        # Everyone is charging (ratio 1): interrupt in the middle of the sessions.
        for sid in ("C-00001", "C-00002", "C-00003"):
            await csms.wait_for("StartTransaction", station_id=sid, timeout=20)
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = out.decode()
    assert proc.returncode == 0, err.decode()[-2000:]
    assert "Swarm summary (interrupted)" in text
    assert "3 started, 3 booted" in text
    # The interrupted sessions were finished, not abandoned.
    started = [t for t in csms.transactions.values() if t["start"] is not None]
    assert len(started) == 3
    assert all(t["stop"] is not None for t in started)


class _GatedMeter(MockMeter):
    """A meter whose next read waits for the test to open the gate."""

    def __init__(self, inner: MockMeter) -> None:
        super().__init__(inner._sim)
        self.gate: asyncio.Future | None = None
        self.reading = asyncio.Event()

    async def read(self):  # noqa: ANN201
        if self.gate is not None:
            self.reading.set()
            await self.gate
        return await super().read()


async def test_station_stops_even_when_cancelled_as_a_meter_read_completes(short_dir):
    """With thousands of stations sampling every second, a stop lands on a completing read.

    Python 3.11's asyncio.wait_for returns the result instead of raising when the cancel and
    the completion arrive in the same loop iteration; the sampler loop then never ended and
    the swarm (or a single agent under systemd) hung in Station.stop().
    """
    hal = MockHal(1)
    meter = _GatedMeter(hal.evses[1].meter)
    hal.evses[1].meter = meter
    storage = Storage(short_dir / "s.sqlite3")
    station = Station(hal, storage, Clock(), meter_poll_s=0.001)
    try:
        await station.start()
        meter.gate = asyncio.get_running_loop().create_future()
        await asyncio.wait_for(meter.reading.wait(), 5)
        sampler = next(t for t in station._tasks if t.get_name() == "meter-1")
        meter.gate.set_result(None)  # the read completes in the next loop iteration, the
        async with asyncio.timeout(5):  # iteration stop()'s cancel is delivered in
            await station.stop()
        assert sampler.cancelled()
    finally:
        storage.close()


# ---------------------------------------------------------------------- many processes

def _accepted_boots(csms) -> Counter:
    return Counter(m.station_id for m in csms.log if m.action == "BootNotification"
                   and m.direction == CSMS_TO_CS and m.kind == "CALLRESULT"
                   and m.payload["status"] == "Accepted")


async def test_workers_split_the_fleet_and_ctrl_c_stops_them_all_cleanly(csms):
    """--workers 3: three processes, disjoint ranges, one merged summary; a single Ctrl-C
    to the parent (workers have their own session, so it alone hears the terminal) makes
    every worker finish its sessions. State in memory: no --state-dir, the load-test mode."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "swarm", "--csms", csms.url, "--count", "6",
        "--workers", "3", "--id-prefix", "W-", "--first-index", "11", "--ramp", "0",
        "--charging-ratio", "1", "--session-s", "60", "--seed", "4", cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    ids = {f"W-{i:05d}" for i in range(11, 17)}
    try:
        for sid in sorted(ids):
            await csms.wait_for("StartTransaction", station_id=sid, timeout=30)
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    text = out.decode()
    assert proc.returncode == 0, text[-2000:] + err.decode()[-2000:]
    # Every station booted exactly once, none outside the range, no id twice.
    assert _accepted_boots(csms) == Counter({sid: 1 for sid in ids})
    # The interrupted sessions were finished (StopTransaction delivered) in every worker.
    started = [t for t in csms.transactions.values() if t["start"] is not None]
    assert {t["station_id"] for t in started} == ids
    assert all(t["stop"] is not None for t in started)
    # One merged summary whose counts are the CSMS's.
    assert "Swarm summary (interrupted)" in text
    assert "6 started in 3 processes, 6 booted" in text
    calls = sum(_seen(csms, CS_TO_CSMS, "CALL").values())
    assert f"messages sent    {calls} CALLs" in text
    assert f"sessions         {len(started)} started, {len(started)} completed" in text


async def test_shards_from_the_environment_add_up_to_one_fleet(csms):
    """What the pods of a Kubernetes Indexed Job run: the same command, the shard from
    JOB_COMPLETION_INDEX, JSON reports that `--merge` adds up."""
    from agent.swarm import merge_reports
    base = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "swarm", "--csms", csms.url, "--count", "3",
        "--shard", "env", "--id-prefix", "K-", "--ramp", "0", "--charging-ratio", "0.9",
        "--session-s", "0.5", "--meter-interval", "1", "--duration", "2.5", "--seed", "9",
        "--report", "json", cwd=REPO, env={**base, "JOB_COMPLETION_INDEX": str(index)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE) for index in (0, 1)]
    outputs = []
    for proc in procs:
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()[-2000:]
        outputs.append(out.decode())
    # Shard 0 has stations 1-3, shard 1 stations 4-6: every one booted once.
    assert _accepted_boots(csms) == Counter({f"K-{i:05d}": 1 for i in range(1, 7)})
    # What `kubectl logs ... | cp-agent swarm --merge -` does with the pods' output.
    out = io.StringIO()
    merged = merge_reports("".join(outputs).splitlines(), out)
    text = out.getvalue()
    assert merged.failed == 0 and merged.errors == 0, merged.last_error
    assert "6 started in 2 processes, 6 booted, " in text
    assert f"messages sent    {sum(_seen(csms, CS_TO_CSMS, 'CALL').values())} CALLs" in text
    events = [t for t in csms.transactions.values() if t["start"] is not None]
    assert f"sessions         {len(events)} started" in text


def test_split_gives_disjoint_contiguous_ranges_of_one_id_format():
    from agent.swarm import split

    options = SwarmOptions(csms="ws://127.0.0.1:1/", count=10, first_index=1, shard=9,
                           workers=3, ramp=30)
    parts = split(options)
    assert [(p.first, p.count) for p in parts] == [(91, 4), (95, 3), (98, 3)]
    assert {p.id_width for p in parts} == {5}
    assert sum(p.ramp for p in parts) == pytest.approx(30)
    assert all(p.workers == 1 and p.report == "json" for p in parts)


def test_shard_index_comes_from_the_argument_or_the_environment():
    from agent.swarm import resolve_shard

    assert resolve_shard(None) is None
    assert resolve_shard("2") == 2
    assert resolve_shard("env", environ={"JOB_COMPLETION_INDEX": "7"}) == 7
    assert resolve_shard("env", "MY_INDEX", environ={"MY_INDEX": "0"}) == 0
    with pytest.raises(ValueError, match="no JOB_COMPLETION_INDEX"):
        resolve_shard("env", environ={})
    with pytest.raises(ValueError, match="expected a number"):
        resolve_shard("env", environ={"JOB_COMPLETION_INDEX": "x"})
    with pytest.raises(ValueError, match=">= 0"):
        resolve_shard("-1")
    assert SwarmOptions(csms="ws://h/", count=100, shard=7).first == 701


def test_merge_adds_up_and_flags_overlapping_ranges():
    from agent.swarm import SwarmSummary, merge_reports, summary_doc

    a = SwarmSummary(stations=2, booted=2, sessions_started=3, boot_s=[0.1, 0.3],
                     sent=Counter({"BootNotification": 2}), rss_per_station_kb=400.0,
                     all_booted_after_s=5.0, cpu_s=1.0)
    b = SwarmSummary(stations=2, booted=1, sessions_started=1, boot_s=[0.2],
                     sent=Counter({"BootNotification": 3}), rss_per_station_kb=600.0,
                     all_booted_after_s=None, cpu_s=2.0)
    merged = SwarmSummary.merge([a, b])
    assert (merged.stations, merged.booted, merged.failed, merged.workers) == (4, 3, 1, 2)
    assert merged.sent == Counter({"BootNotification": 5})
    assert merged.rss_per_station_kb == pytest.approx(500.0)
    assert merged.all_booted_after_s is None  # one part never had all its stations booted
    assert merged.boot_percentile(50) == 0.2 and merged.boot_percentile(99) == 0.3
    # A shard index used twice is a finding, not a silently double-counted fleet.
    opts = SwarmOptions(csms="ws://h/", count=2, shard=0)
    lines = [json.dumps(summary_doc(x, opts)) for x in (a, b)]
    out = io.StringIO()
    merged = merge_reports(["noise", *lines], out)
    assert "station ranges overlap: 1..2" in merged.last_error
    with pytest.raises(ValueError, match="no swarm summary"):
        merge_reports(["{}"], io.StringIO())


def test_kubernetes_indexed_job_runs_the_shard_entry_point():
    import yaml

    from agent.cli import build_parser
    from agent.swarm import resolve_shard

    doc = yaml.safe_load((REPO / "deploy" / "k8s" / "swarm-job.yaml").read_text())
    assert doc["apiVersion"] == "batch/v1" and doc["kind"] == "Job"
    spec = doc["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["parallelism"] == spec["completions"] >= 2
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    argv = container["command"] + container["args"]
    assert argv[:2] == ["cp-agent", "swarm"]
    # The arguments are the CLI's own, the shard comes from the Job's index.
    env = {e["name"]: e.get("value") for e in container["env"]}
    args = [a.replace("$(CSMS_URL)", env["CSMS_URL"]) for a in argv[2:]]
    ns = build_parser().parse_args(["swarm", *args])
    assert ns.shard == "env" and ns.shard_env == "JOB_COMPLETION_INDEX"
    assert ns.report == "json"
    shard = resolve_shard(ns.shard, ns.shard_env, environ={"JOB_COMPLETION_INDEX": "3"})
    options = SwarmOptions(csms=ns.csms, count=ns.count, id_prefix=ns.id_prefix,
                           shard=shard, workers=ns.workers, report=ns.report)
    options.validate()
    assert options.first == 3 * ns.count + 1
