"""Outbox replay: sessions recorded while the CSMS was down, delivered after it comes back.

    python -m bench.outbox_replay [--sessions 100] [--messages 100] [--quick]
                                  [--state-dir DIR] [--snapshot FILE] [--profile FILE]
    python -m bench.outbox_replay --instructions [--sessions 12] [--messages 100]

The agent is the real one on the mock HAL, with a fake clock so that a day of offline charging
takes seconds: EVs plug in, cards are accepted offline (AllowOfflineTxForUnknownId), the core
starts transactions, the 1.6 adapter samples MeterValues every (fake) second and the EVs
unplug.  Every StartTransaction, MeterValues and StopTransaction goes through the adapter into
the SQLite outbox exactly as it does in the field (100 sessions x 100 messages = 10,000).

Then the bench CSMS (another process, so its work is not the agent's) starts listening on the
URL the agent has been failing to reach, the agent reconnects, boots and replays the outbox:
one CALL in flight at a time, each item deleted only when its CALLRESULT arrived.  Measured:
from the websocket connection being open to the last item acknowledged, and the CSMS's count
of what it received.

Each acknowledgement is one fsynced commit, so on a shared VM the disk's flush latency moves
the figure more than anything the agent does: the script prints the agent's CPU time during
the replay and probes the flush latency of the state directory right after, and
``--state-dir /dev/shm`` (tmpfs, where a flush costs nothing) shows the link's own cost
without the disk.  ``--snapshot FILE`` records the offline sessions once into FILE and then
replays copies of it (the agent restarts on the copy, as a station rebooted while offline
would), which saves the ~40 s recording when comparing changes.

The figure depends on the bench CSMS as much as on the agent: with one CALL in flight, every
message waits for the CSMS's own work and for the other process to be woken.  The default is
what the other benches use (``bench.lightcsms`` on websockets' asyncio server,
permessage-deflate on, both processes where the scheduler puts them).  ``--csms lean`` answers
on websockets' Sans-I/O layer inside the receive callback, ``--no-compression`` leaves out
both sides' zlib work, and ``--pin same|split`` pins the agent and the CSMS to one CPU or to
one each (waking an idle vCPU of a VM costs more than the CSMS's work).  The report names the
setting and prints the CSMS's CPU during the replay, so that which side was the bottleneck
can be read off it.

``--instructions`` counts the agent's own work per replayed message, a figure the machine's
load cannot move: it records two outboxes (``--base-sessions``, default 2, and
``--sessions``, default 12, sessions of ``--messages`` each, on tmpfs), replays a copy of
each under callgrind (the CSMS process is not counted, and the bare round trip is skipped)
and divides the difference of the two counts by the difference of the message counts, so
that start-up, boot and shutdown cancel out.  About five minutes on two cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from websockets.asyncio.client import connect

from agent.app import Agent
from agent.clock import FakeClock
from agent.config import load_config_text
from bench._common import REPO, CsmsProcess, Profile, Report, free_port, station_config

STATION = "REPLAY1"
TIMEOUT = 120.0


async def _record_offline(agent: Agent, clock: FakeClock, sessions: int, messages: int,
                          evses: int) -> int:
    """Run ``sessions`` sessions of ``messages`` outbox items each, ``evses`` at a time."""
    hal = agent.hal
    storage = agent.storage
    meter_values = messages - 2  # plus StartTransaction and StopTransaction
    done = 0
    while done < sessions:
        batch = min(evses, sessions - done)
        base = storage.outbox_count()
        for evse in range(1, batch + 1):
            hal.plug(evse)
            hal.tap(f"OFFLINE-{done + evse}", evse)
        await agent.station.settled()
        # The taps authorize in tasks of their own; each start queues one message.
        queued = agent.adapters["1.6"].outbox.queued
        async with asyncio.timeout(TIMEOUT):
            while storage.outbox_count() < base + batch:
                queued.clear()
                if storage.outbox_count() < base + batch:
                    await queued.wait()
        # Every tick of the fake clock makes each running session sample once.
        target = base + batch * (1 + meter_values)
        while storage.outbox_count() < target:
            await clock.advance(1.0)
        if storage.outbox_count() != target:
            raise RuntimeError(f"outbox holds {storage.outbox_count()}, expected {target}: "
                               f"the samplers did not tick together")
        for evse in range(1, batch + 1):
            hal.unplug(evse)
        await agent.station.settled()
        if storage.outbox_count() != base + batch * messages:
            raise RuntimeError("unplugging did not queue one StopTransaction per session")
        done += batch
    return storage.outbox_count()


def _state_kb(state_dir: Path) -> float:
    return sum(p.stat().st_size for p in state_dir.glob(f"{STATION}.sqlite3*")) / 1024


async def _bare_round_trip_ms(url: str, payload: dict, count: int,
                              compression: bool = True) -> float:
    """The floor under the replay at this moment: a bare websockets client, same CSMS, one
    MeterValues CALL at a time, nothing stored, validated or logged (median of ``count``);
    with the agent's permessage-deflate setting."""
    took = []
    async with connect(url + "FLOOR1", subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                       max_size=1 << 20, compression="deflate" if compression else None) as ws:
        await ws.send(json.dumps([2, "boot", "BootNotification",
                                  {"chargePointVendor": "bench", "chargePointModel": "floor"}]))
        await ws.recv()
        for _ in range(count):
            t = time.perf_counter()
            await ws.send(json.dumps([2, str(uuid.uuid4()), "MeterValues", payload],
                                     separators=(",", ":")))
            json.loads(await ws.recv())
            took.append(time.perf_counter() - t)
    return sorted(took)[count // 2] * 1000


def _recorded(snapshot: str | None) -> bool:
    return snapshot is not None and os.path.exists(snapshot)


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _sys_s() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


def _flush_ms(directory: Path, count: int = 200) -> float:
    """Median fdatasync of an 8 KiB overwrite in ``directory``: what one ack commit waits for."""
    path = directory / "flush-probe"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"\0" * 8192 * count)
        os.fsync(fd)
        took = []
        for i in range(count):
            os.pwrite(fd, b"x" * 8192, i * 8192)
            t = time.perf_counter()
            os.fdatasync(fd)
            took.append(time.perf_counter() - t)
    finally:
        os.close(fd)
        path.unlink()
    return sorted(took)[count // 2] * 1000


async def run(sessions: int, messages: int, evses: int, quick: bool,
              profile: Profile | None = None, state_dir: str = "/tmp",
              snapshot: str | None = None, floor_count: int | None = None,
              timeout: float = TIMEOUT, compression: bool = True, csms_kind: str = "websockets",
              pin: str = "none") -> Report:
    report = Report("outbox_replay", quick)
    port = free_port()
    url = f"ws://127.0.0.1:{port}/"
    clock = FakeClock(start_wall=time.time())
    tmp = tempfile.TemporaryDirectory(prefix="cpa-bench-", dir=state_dir)
    doc = station_config(url, Path(tmp.name), STATION, evses=evses, min_backoff_s=1,
                         max_backoff_s=2, defaults={
                             "MeterValueSampleInterval": 1, "HeartbeatInterval": 3600,
                             "AllowOfflineTxForUnknownId": True,
                             "MeterValuesSampledData": "Energy.Active.Import.Register,"
                                                       "Power.Active.Import,Current.Import"})
    doc["ocpp"]["compression"] = compression
    cfg = load_config_text(json.dumps(doc), "bench")
    first_frame: list[float] = []  # when the BootNotification went out: the link was open
    sample: dict = {}  # a MeterValues as the agent sent it, for the floor measurement

    def on_frame(direction: str, kind: str, unique_id: str, action: str, payload: dict) -> None:
        if not first_frame:
            first_frame.append(time.perf_counter())
        if not sample and direction == "out" and action == "MeterValues":
            sample.update(payload)

    csms = CsmsProcess(port=port, lean=csms_kind == "lean")
    affinity = os.sched_getaffinity(0)  # given back at the end (--pin), before the report
    state_file = Path(tmp.name) / f"{STATION}.sqlite3"
    agent: Agent | None = None
    try:
        recording_s: float | None = None
        if not _recorded(snapshot):
            agent = Agent(cfg, clock=clock, control=False, on_frame=on_frame)
            await agent.start()
            t_rec = time.perf_counter()
            await _record_offline(agent, clock, sessions, messages, evses)
            recording_s = time.perf_counter() - t_rec
        if snapshot is not None:
            if agent is not None:
                await agent.stop()  # checkpoints and closes the file
                agent = None
                shutil.copyfile(state_file, snapshot)
            else:
                shutil.copyfile(snapshot, state_file)
            agent = Agent(cfg, clock=clock, control=False, on_frame=on_frame)
            await agent.start()
        assert agent is not None
        queued = agent.storage.outbox_count()
        tx_queued = sessions * messages
        other = queued - tx_queued  # e.g. a SecurityEventNotification of the start-up
        db_kb = _state_kb(Path(tmp.name))

        await csms.start()
        _pin(pin, csms.pid)
        profile = profile or Profile(None)
        profile.start()
        csms_cpu_up = csms.cpu_s()
        cpu_up, sys_up = _cpu_s(), _sys_s()
        t_up = time.perf_counter()
        await clock.advance(3.0)  # past the reconnect backoff the link is sleeping through
        async with asyncio.timeout(timeout):
            await agent.adapters["1.6"].accepted.wait()
            t_booted = time.perf_counter()
            t_connected = first_frame[0] if first_frame else t_booted
            while agent.storage.outbox_count():
                agent.adapters["1.6"].outbox.idle.clear()
                if agent.storage.outbox_count():
                    await agent.adapters["1.6"].outbox.idle.wait()
        t_done = time.perf_counter()
        cpu_s, sys_s = _cpu_s() - cpu_up, _sys_s() - sys_up
        csms_cpu_s = csms.cpu_s() - csms_cpu_up
        profile.stop()
        flush_ms = _flush_ms(Path(tmp.name))
        stats = await csms.stats()  # before the floor's station adds its own CALLs
        if floor_count is None:
            floor_count = 50 if quick else 2000
        floor_ms = (await _bare_round_trip_ms(url, sample, floor_count, compression)
                    if floor_count > 0 and sample else None)
        calls = stats["calls"]
        delivered = sum(calls.get(a, 0) for a in
                        ("StartTransaction", "MeterValues", "StopTransaction"))
        replay_s = t_done - t_up
        setting = (f"{'deflate' if compression else 'no compression'}, CSMS {csms_kind}, "
                   f"pinned {pin}")
        report.add(f"CSMS back -> {tx_queued} transaction messages acknowledged",
                   replay_s, "s", 3.0 if tx_queued >= 10_000 else None,
                   note=setting + (f"; +{other} other queued message(s)" if other else ""))
        report.add("  of which: CSMS back -> connection open", t_connected - t_up, "s",
                   note="the reconnect backoff is skipped with the fake clock")
        report.add("  of which: connection open -> BootNotification accepted",
                   t_booted - t_connected, "s")
        report.add("replay throughput after the boot", queued / (t_done - t_booted), "msg/s")
        report.add("bare websocket round trip, same CSMS, right after (median)", floor_ms, "ms",
                   note="the floor: no storage, validation or logging")
        report.add("replay cost per message above that floor",
                   (t_done - t_booted) / queued * 1000 - floor_ms if floor_ms else None, "ms",
                   note="after the boot: the agent's own work and its flush")
        report.add("agent CPU during the replay", cpu_s, "s",
                   note="user + system, the CSMS process not included")
        report.add("agent CPU per message", cpu_s / queued * 1000, "ms",
                   note=f"of which system {sys_s / queued * 1000:.3f} ms")
        report.add("bench CSMS CPU during the replay", csms_cpu_s, "s",
                   note="its own process, /proc ticks of 10 ms")
        report.add(f"flush latency of {state_dir} (median fdatasync, probed after)", flush_ms,
                   "ms", note="one per acknowledgement")
        report.add("transaction messages the CSMS received", delivered, "")
        report.add("sessions the CSMS saw started / stopped",
                   stats["tx_started"], "", note=f"{stats['tx_stopped']} stopped")
        report.add("recording the sessions offline (not part of the replay)", recording_s, "s",
                   note="" if recording_s is not None else f"copied from {snapshot}")
        report.add("state file size with the full outbox", db_kb / 1024, "MB")
        report.details.update(sessions=sessions, messages_per_session=messages, evses=evses,
                              compression=compression, csms=csms_kind, pin=pin,
                              csms_cpu_s=csms_cpu_s,
                              state_dir=state_dir, agent_cpu_s=cpu_s, agent_sys_s=sys_s,
                              flush_ms=flush_ms,
                              floor_round_trip_ms=floor_ms,
                              other_queued=other, csms_calls=calls,
                              outbox_sent=agent.adapters["1.6"].outbox.sent,
                              outbox_dropped=agent.adapters["1.6"].outbox.dropped)
        if delivered != tx_queued or stats["tx_stopped"] != sessions:
            raise RuntimeError(f"the CSMS got {delivered} of {tx_queued} messages and "
                               f"{stats['tx_stopped']} of {sessions} stops")
    finally:
        if agent is not None:
            await agent.stop()
        await csms.stop()
        tmp.cleanup()
        os.sched_setaffinity(0, affinity)
    return report


def _pin(pin: str, csms_pid: int) -> None:
    """Pin this process (the agent and the floor's client) and the CSMS: ``same`` puts both on
    the first usable CPU, ``split`` one on each of the first two; ``none`` leaves them."""
    if pin == "none":
        return
    cpus = sorted(os.sched_getaffinity(0))
    if pin == "split" and len(cpus) < 2:
        raise SystemExit("--pin split needs two usable CPUs")
    mine, theirs = cpus[0], cpus[0] if pin == "same" else cpus[1]
    os.sched_setaffinity(0, {mine})
    os.sched_setaffinity(csms_pid, {theirs})


def _callgrind(args: list[str], out_file: str) -> float:
    """Instructions (callgrind's Ir) of one replay in this interpreter, the CSMS not counted."""
    env = dict(os.environ, PYTHONHASHSEED="0")
    proc = subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_file}", sys.executable,
         "-m", "bench.outbox_replay", *args], cwd=os.getcwd(), env=env, capture_output=True,
        text=True, check=False)
    for line in proc.stderr.splitlines():
        if "Collected :" in line and proc.returncode == 0:
            return float(line.split(":")[-1])
    raise RuntimeError(f"callgrind of the replay ({' '.join(args)}) failed "
                       f"(exit {proc.returncode}):\n{proc.stdout[-1500:]}{proc.stderr[-1500:]}")


def instructions(small: int, large: int, messages: int, evses: int,
                 keep: str | None = None, extra: tuple[str, ...] = ()) -> Report:
    """The agent's instructions per replayed message: two replays under callgrind, the
    difference of their counts over the difference of their message counts (start-up, boot
    and shutdown cancel out)."""
    if shutil.which("valgrind") is None:
        raise SystemExit("--instructions needs valgrind (apt-get install valgrind)")
    if large <= small:
        raise SystemExit("--sessions must be larger than --base-sessions")
    report = Report("outbox_replay_instructions", False)
    counts: dict[int, float] = {}
    with tempfile.TemporaryDirectory(prefix="cpa-bench-ir-", dir="/dev/shm") as work:
        for n in (small, large):
            snapshot = os.path.join(work, f"outbox-{n}x{messages}.sqlite3")
            args = ["--sessions", str(n), "--messages", str(messages), "--evses", str(evses),
                    "--snapshot", snapshot, "--state-dir", "/dev/shm", "--floor-count", "0",
                    "--timeout", "3600", *extra]
            # Records the snapshot (and replays it once, uncounted), then the counted replay.
            subprocess.run([sys.executable, "-m", "bench.outbox_replay", *args],
                           cwd=os.getcwd(), check=True, capture_output=True)
            out = os.path.join(keep or work, f"callgrind.replay-{n}x{messages}")
            counts[n] = _callgrind(args, out)
    per = (counts[large] - counts[small]) / ((large - small) * messages)
    report.add(f"agent instructions, replay of {small * messages} messages", counts[small], "")
    report.add(f"agent instructions, replay of {large * messages} messages", counts[large], "")
    report.add("agent instructions per replayed message", per / 1e6, "M",
               note="callgrind, the difference of the two over the difference of messages")
    report.details.update(small_sessions=small, large_sessions=large, messages=messages,
                          evses=evses, instructions=counts, per_message=per, cwd=os.getcwd(),
                          repo=str(REPO))
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="outbox replay benchmark")
    p.add_argument("--sessions", type=int, default=None, help="offline sessions (default 100)")
    p.add_argument("--messages", type=int, default=None,
                   help="outbox messages per session, Start and Stop included (default 100)")
    p.add_argument("--evses", type=int, default=10, help="sessions running at once")
    p.add_argument("--quick", action="store_true", help="4 x 20 messages: checks the script")
    p.add_argument("--profile", metavar="FILE", help="pyinstrument profile of the replay")
    p.add_argument("--state-dir", default="/tmp", metavar="DIR",
                   help="where the state file lives (default /tmp; /dev/shm leaves the disk "
                        "out)")
    p.add_argument("--snapshot", metavar="FILE",
                   help="record into FILE once, then replay copies of it (same --sessions and "
                        "--messages each time)")
    p.add_argument("--floor-count", type=int, default=None, metavar="N",
                   help="round trips of the bare websocket floor (default 2000, quick 50; "
                        "0 skips it)")
    p.add_argument("--timeout", type=float, default=TIMEOUT, help=argparse.SUPPRESS)
    p.add_argument("--instructions", action="store_true",
                   help="count the agent's instructions per replayed message under callgrind "
                        "(a replay of --sessions, default 12, minus one of --base-sessions)")
    p.add_argument("--base-sessions", type=int, default=2, metavar="N",
                   help="with --instructions: sessions of the smaller replay (default 2)")
    p.add_argument("--callgrind-dir", metavar="DIR",
                   help="with --instructions: keep the callgrind outputs in DIR "
                        "(for callgrind_annotate)")
    p.add_argument("--no-compression", action="store_true",
                   help="the agent (and the floor) without permessage-deflate "
                        "(ocpp.compression: false)")
    p.add_argument("--csms", choices=("websockets", "lean"), default="websockets",
                   help="the bench CSMS's server: websockets' asyncio server (default, as the "
                        "other benches) or its Sans-I/O layer answering in the receive "
                        "callback (lean: less of the CSMS's own work per round trip)")
    p.add_argument("--pin", choices=("none", "same", "split"), default="none",
                   help="pin the agent and the CSMS to one CPU (same) or one each (split)")
    ns = p.parse_args(argv)
    if ns.instructions:
        report = instructions(ns.base_sessions, ns.sessions or 12, ns.messages or 100,
                              min(ns.evses, ns.base_sessions), ns.callgrind_dir,
                              ("--no-compression",) if ns.no_compression else ())
        report.emit()
        return 0
    sessions = ns.sessions or (4 if ns.quick else 100)
    messages = ns.messages or (20 if ns.quick else 100)
    if messages < 2:
        p.error("--messages must be at least 2 (Start and Stop)")
    logging.basicConfig(level=logging.CRITICAL)
    report = asyncio.run(run(sessions, messages, min(ns.evses, sessions), ns.quick,
                             Profile(ns.profile), ns.state_dir, ns.snapshot,
                             ns.floor_count, ns.timeout, not ns.no_compression, ns.csms,
                             ns.pin))
    report.emit()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
