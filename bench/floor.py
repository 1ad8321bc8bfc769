"""The agent side by side with the floor: a bare ``ocpp`` client of the same libraries.

    python -m bench.floor [--runs 10] [--seconds 60] [--ocpp 1.6 2.0.1 2.1] [--quick]

An absolute start-up time or RSS says as much about the machine as about the agent.  This
script runs, in one process tree and one run, the agent (``python -m agent run --config FILE``
on the mock HAL, its state file kept from a previous start as on a rebooting station) and
``bench/bare_client.py`` (``ocpp``'s ``ChargePoint`` over websockets doing only BootNotification
and heartbeats) against the same CSMS on 127.0.0.1 in this process, and prints each figure and
the ratio agent / floor, which is what the targets are set on (issue 18):

* start-up: exec until the CSMS receives the BootNotification (answered Accepted at once);
  the two programs are started alternately, ``--runs`` times each, so that drift of the machine
  weighs on both alike; median and p90 of each, ratio of the medians;
* idle RSS: both started once more, side by side, connected and idle for ``--seconds`` with
  HeartbeatInterval 10 s from the boot answer; VmHWM of each at the end, and the ratio.

Each OCPP version is measured on its own (the agent offering only that version, the bare
client using that version's ``ChargePoint``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench._common import REPO, Report, percentile, proc_status_kb, station_config
from bench.lightcsms import LightCsms

VERSIONS = ("1.6", "2.0.1", "2.1")
TIMEOUT = 30.0
HEARTBEAT_S = 10
# Issue 18: the agent may cost at most this much more than the floor.
STARTUP_RATIO_TARGET = 1.2
RSS_RATIO_TARGET = 1.1


def cpu_s(pid: int) -> float | None:
    """CPU seconds of every live thread of a process, to the nanosecond (schedstat)."""
    total = 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            total += int((task / "schedstat").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return total / 1e9


class _Boots:
    """The BootNotification each station's CSMS connection delivers: when, and the CPU the
    station's process had used by then (read before the CSMS answers)."""

    def __init__(self) -> None:
        self.waiters: dict[str, asyncio.Future[tuple[float, float | None]]] = {}
        self.pids: dict[str, int] = {}

    def on_call(self, station: str, action: str, payload: dict, at: float) -> None:
        if action != "BootNotification":
            return
        future = self.waiters.get(station)
        if future is not None and not future.done():
            pid = self.pids.get(station)
            future.set_result((at, cpu_s(pid) if pid else None))

    def expect(self, station: str) -> asyncio.Future[tuple[float, float | None]]:
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self.waiters[station] = future
        self.pids.pop(station, None)
        return future


def child_env(pycache: Path) -> dict[str, str]:
    """The environment both programs run in: bytecode cached, in a directory of the run's own.

    An installed agent runs from its .pyc files (pip compiles them at install time), as do the
    libraries in site-packages; a shell with PYTHONDONTWRITEBYTECODE set would make every start
    of the agent compile its ~100 modules from source, a cost no station pays and the floor
    (all in site-packages) does not either.  A private PYTHONPYCACHEPREFIX gives both programs
    the same cached bytecode after the uncounted first start, without writing into the tree.
    """
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(pycache)
    return env


class _Programs:
    """How to start the agent and the bare client of one version, and what they are called."""

    def __init__(self, version: str, url: str, tmp: Path, private_pycache: bool = True) -> None:
        tag = version.replace(".", "")
        self.version = version
        self.ids = {"agent": f"FLOORA{tag}", "bare": f"FLOORB{tag}"}
        self.url = url
        self.config = config = tmp / f"agent-{tag}.yaml"
        doc = station_config(url, tmp, self.ids["agent"])
        doc["ocpp"]["versions"] = [version]
        config.write_text(json.dumps(doc, indent=1))
        self.cmds = {
            "agent": [sys.executable, "-m", "agent", "run", "--config", str(config)],
            "bare": [sys.executable, "-m", "bench.bare_client", "--url", url,
                     "--id", self.ids["bare"], "--ocpp", version],
        }
        self.env = child_env(tmp / "pycache") if private_pycache else None
        if self.env is not None:
            # What systemd's StateDirectory= gives cp-agent.service: where the agent keeps the
            # parsed configuration for its next start (agent/config_cache.py).
            self.env["STATE_DIRECTORY"] = str(tmp)

    async def spawn(self, name: str, boots: _Boots) -> asyncio.subprocess.Process:
        proc = await asyncio.create_subprocess_exec(
            *self.cmds[name], cwd=REPO, env=self.env, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE)
        boots.pids[self.ids[name]] = proc.pid
        return proc


async def _stop(proc: asyncio.subprocess.Process, what: str) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"{what} exited {proc.returncode}:\n{err.decode(errors='replace')}")


async def _boot_time(programs: _Programs, name: str, boots: _Boots) -> tuple[float, float | None]:
    """(seconds from exec to the CSMS receiving the BootNotification, CPU seconds used by
    then); the process is stopped afterwards."""
    what = f"{name} {programs.version}"
    booted = boots.expect(programs.ids[name])
    t0 = time.perf_counter()
    proc = await programs.spawn(name, boots)
    try:
        t_boot, cpu = await asyncio.wait_for(booted, TIMEOUT)
    except TimeoutError:
        proc.kill()
        _, err = await proc.communicate()
        raise RuntimeError(f"{what}: no BootNotification within {TIMEOUT} s:\n"
                           f"{err.decode(errors='replace')[-2000:]}") from None
    await _stop(proc, what)
    return t_boot - t0, cpu


async def _idle_peaks(programs: _Programs, boots: _Boots,
                      seconds: float) -> tuple[dict[str, float], dict[str, tuple]]:
    """Both programs at once, idle ``seconds`` once booted: VmHWM of each in MB, and the
    (wall, CPU) seconds each took to boot, side by side."""
    procs: dict[str, asyncio.subprocess.Process] = {}
    booted = {name: boots.expect(programs.ids[name]) for name in programs.cmds}
    started: dict[str, float] = {}
    try:
        for name in programs.cmds:
            started[name] = time.perf_counter()
            procs[name] = await programs.spawn(name, boots)
        await asyncio.wait_for(asyncio.gather(*booted.values()), TIMEOUT)
        boot = {name: (f.result()[0] - started[name], f.result()[1])
                for name, f in booted.items()}
        await asyncio.sleep(seconds)  # the idle window itself, not a synchronisation
        peaks = {}
        for name, proc in procs.items():
            kb = proc_status_kb(proc.pid, "VmHWM")
            if kb is None:
                raise RuntimeError(f"{name} {programs.version} is gone before the end of the "
                                   "idle window")
            peaks[name] = kb / 1024
    finally:
        for name, proc in procs.items():
            await _stop(proc, f"{name} {programs.version}")
    return peaks, boot


async def measure_version(version: str, runs: int, seconds: float, boots: _Boots, url: str,
                          tmp: Path, quick: bool = False, instructions: bool = False) -> dict:
    """Start-up samples of both programs and their idle peaks, for one OCPP version.

    Quick mode (the test suite) only starts the idle pair, in the environment as it is, and
    takes its boots as the start-up samples: seconds, and figures not worth quoting."""
    programs = _Programs(version, url, tmp, private_pycache=not quick)
    if quick:
        peaks, boot = await _idle_peaks(programs, boots, seconds)
        return {"wall_s": {n: [w] for n, (w, _) in boot.items()},
                "cpu_s": {n: [c] if c is not None else [] for n, (_, c) in boot.items()},
                "vmhwm_mb": peaks}
    # Not counted: the agent's first start creates its state file; both fill the bytecode
    # cache and warm the page cache.
    for name in programs.cmds:
        await _boot_time(programs, name, boots)
    wall: dict[str, list[float]] = {name: [] for name in programs.cmds}
    cpu: dict[str, list[float]] = {name: [] for name in programs.cmds}
    order = list(programs.cmds)
    for i in range(runs):
        for name in order if i % 2 == 0 else reversed(order):
            w, c = await _boot_time(programs, name, boots)
            wall[name].append(w)
            if c is not None:
                cpu[name].append(c)
    peaks, _ = await _idle_peaks(programs, boots, seconds)
    result = {"wall_s": wall, "cpu_s": cpu, "vmhwm_mb": peaks}
    if instructions:
        counts = await asyncio.gather(*(_instructions(programs, n) for n in programs.cmds))
        result["instructions"] = dict(zip(programs.cmds, counts, strict=True))
    return result


# Runs a program until it is about to send its BootNotification, then exits at once: what
# `--instructions` counts under callgrind (a count, unlike a time, does not move with the
# machine's load).  argv: agent CONFIG | bare URL ID VERSION.
_UNTIL_BOOT = """
import os, runpy, sys
which, args = sys.argv[1], sys.argv[2:]
if which == "agent":
    from agent.link import rpc
    call = rpc.RpcSession.call
    async def stop_at_boot(self, action, *a, **k):
        if action == "BootNotification":
            os._exit(0)
        return await call(self, action, *a, **k)
    rpc.RpcSession.call = stop_at_boot
    sys.argv = ["cp-agent", "run", "--config", *args]
    runpy.run_module("agent", run_name="__main__", alter_sys=True)
else:
    from ocpp.charge_point import ChargePoint
    async def stop_at_boot(self, *a, **k):
        os._exit(0)
    ChargePoint.call = stop_at_boot
    sys.argv = ["bare_client", "--url", args[0], "--id", args[1], "--ocpp", args[2]]
    runpy.run_module("bench.bare_client", run_name="__main__", alter_sys=True)
"""


async def _instructions(programs: _Programs, name: str) -> float:
    """Instructions (callgrind's Ir) from exec to the BootNotification about to be sent."""
    args = ([str(programs.config)] if name == "agent"
            else [programs.url, programs.ids["bare"], programs.version])
    env = dict(programs.env or os.environ, PYTHONHASHSEED="0")
    proc = await asyncio.create_subprocess_exec(
        "valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable,
        "-c", _UNTIL_BOOT, name, *args, cwd=REPO, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    for line in err.decode(errors="replace").splitlines():
        if "Collected :" in line:
            return float(line.split(":")[-1])
    raise RuntimeError(f"callgrind of {name} {programs.version} counted nothing:\n"
                       f"{err.decode(errors='replace')[-2000:]}")


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


async def run(versions: list[str], runs: int, seconds: float, quick: bool,
              instructions: bool = False) -> Report:
    report = Report("floor", quick)
    boots = _Boots()
    csms = LightCsms(heartbeat_interval=HEARTBEAT_S, on_call=boots.on_call)
    url = await csms.start()
    results = {}
    try:
        with tempfile.TemporaryDirectory(prefix="cpa-bench-", dir="/tmp") as tmp:
            for version in versions:
                results[version] = await measure_version(version, runs, seconds, boots, url,
                                                         Path(tmp), quick, instructions)
    finally:
        await csms.stop()
    for version, r in results.items():
        v = f"OCPP {version}"
        wall, cpu, mb = r["wall_s"], r["cpu_s"], r["vmhwm_mb"]
        for name, label in (("bare", "bare client"), ("agent", "agent")):
            report.add(f"{v} start-up, {label}, median", _median(wall[name]), "s",
                       note=f"p90 {percentile(wall[name], 90):.3f} s")
        report.add(f"{v} start-up ratio agent / floor (medians)",
                   _ratio(_median(wall["agent"]), _median(wall["bare"])), "x",
                   STARTUP_RATIO_TARGET)
        for name, label in (("bare", "bare client"), ("agent", "agent")):
            report.add(f"{v} CPU to boot, {label}, median", _median(cpu[name]), "s")
        report.add(f"{v} CPU to boot ratio agent / floor (medians)",
                   _ratio(_median(cpu["agent"]), _median(cpu["bare"])), "x",
                   note="steadier than wall time on a busy machine")
        if "instructions" in r:
            ir = r["instructions"]
            report.add(f"{v} instructions to boot, bare client", ir["bare"] / 1e6, "M")
            report.add(f"{v} instructions to boot, agent", ir["agent"] / 1e6, "M")
            report.add(f"{v} instructions to boot ratio agent / floor",
                       _ratio(ir["agent"], ir["bare"]), "x", note="callgrind, deterministic")
        report.add(f"{v} idle VmHWM, bare client", mb["bare"], "MB")
        report.add(f"{v} idle VmHWM, agent", mb["agent"], "MB")
        report.add(f"{v} idle VmHWM ratio agent / floor", _ratio(mb["agent"], mb["bare"]),
                   "x", RSS_RATIO_TARGET)
    report.details.update(runs=runs, idle_s=seconds, heartbeat_s=HEARTBEAT_S, results=results)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=None,
                   help="measured starts of each program per version (default 10)")
    p.add_argument("--seconds", type=float, default=None, help="idle window (default 60)")
    p.add_argument("--ocpp", nargs="+", choices=VERSIONS, default=None,
                   help="versions to measure (default all)")
    p.add_argument("--quick", action="store_true",
                   help="one start of each side by side, 1 s idle: checks the script")
    p.add_argument("--instructions", action="store_true",
                   help="also count each program's instructions to its boot under valgrind's "
                        "callgrind (about a minute per program): a figure load cannot move")
    ns = p.parse_args(argv)
    if ns.instructions and (ns.quick or not shutil.which("valgrind")):
        p.error("--instructions needs valgrind on the PATH and is not for --quick")
    runs = ns.runs or (1 if ns.quick else 10)
    seconds = ns.seconds if ns.seconds is not None else (1.0 if ns.quick else 60.0)
    report = asyncio.run(run(ns.ocpp or list(VERSIONS), runs, seconds, ns.quick,
                             ns.instructions))
    report.emit()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
