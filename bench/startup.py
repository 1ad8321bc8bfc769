"""Start-up time: from `cp-agent run` being exec'd to its BootNotification being accepted.

    python -m bench.startup [--runs 20] [--quick]

Each run starts ``python -m agent run --config FILE`` (mock HAL, state file kept between runs
as on a station that reboots) against the bench CSMS listening on 127.0.0.1 in this process.
The clock starts just before the process is spawned and stops when the CSMS receives the
BootNotification, which it answers Accepted at once.  The agent is then stopped with SIGTERM
(the way systemd stops it) and the time to exit is reported too.

For scale the script also times a bare interpreter (``python -c pass``) and the import of the
agent's modules alone, which is where most of the start-up goes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._common import REPO, Report, percentile, station_config
from bench.lightcsms import LightCsms

STATION = "START1"
TIMEOUT = 30.0


def _time_command(args: list[str], runs: int) -> float:
    """Median wall time of a short command, in seconds."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(args, check=True, cwd=REPO)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


async def _one_run(config: Path, booted: asyncio.Queue) -> tuple[float, float]:
    """(seconds to BootNotification accepted, seconds from SIGTERM to exit)."""
    while not booted.empty():
        booted.get_nowait()
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "run", "--config", str(config), cwd=REPO,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        t_boot = await asyncio.wait_for(booted.get(), TIMEOUT)
    except TimeoutError:
        proc.kill()
        _, err = await proc.communicate()
        raise RuntimeError(f"no BootNotification within {TIMEOUT} s; agent said:\n"
                           f"{err.decode(errors='replace')[-2000:]}") from None
    t_term = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    _, err = await proc.communicate()
    t_exit = time.perf_counter()
    if proc.returncode != 0:
        raise RuntimeError(f"agent exited {proc.returncode}:\n{err.decode(errors='replace')}")
    return t_boot - t0, t_exit - t_term


async def run(runs: int, quick: bool) -> Report:
    report = Report("startup", quick)
    booted: asyncio.Queue[float] = asyncio.Queue()

    def on_call(station: str, action: str, payload: dict, at: float) -> None:
        if station == STATION and action == "BootNotification":
            booted.put_nowait(at)

    csms = LightCsms(on_call=on_call)
    url = await csms.start()
    with tempfile.TemporaryDirectory(prefix="cpa-bench-", dir="/tmp") as tmp:
        config = Path(tmp) / "agent.yaml"
        doc = station_config(url, Path(tmp), STATION)
        config.write_text(json.dumps(doc, indent=1))
        try:
            await _one_run(config, booted)  # first boot creates the state file; not counted
            boots, exits = [], []
            for _ in range(runs):
                boot, stop = await _one_run(config, booted)
                boots.append(boot)
                exits.append(stop)
        finally:
            await csms.stop()
    bare = _time_command([sys.executable, "-c", "pass"], 3 if quick else 10)
    imports = _time_command([sys.executable, "-c", "import agent.cli, agent.app"],
                            3 if quick else 10)
    report.add("start -> BootNotification accepted, median", statistics.median(boots), "s", 0.6)
    report.add("start -> BootNotification accepted, p90", percentile(boots, 90), "s")
    report.add("start -> BootNotification accepted, min", min(boots), "s")
    report.add("SIGTERM -> exit, median", statistics.median(exits), "s")
    report.add("bare interpreter (python -c pass), median", bare, "s")
    report.add("interpreter + import of the agent, median", imports, "s")
    report.details.update(runs=runs, boots_s=boots, pid=os.getpid())
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="start-up benchmark: exec to boot accepted")
    p.add_argument("--runs", type=int, default=None, help="measured starts (default 20)")
    p.add_argument("--quick", action="store_true", help="3 runs: checks the script, not speed")
    ns = p.parse_args(argv)
    runs = ns.runs or (3 if ns.quick else 20)
    report = asyncio.run(run(runs, ns.quick))
    report.emit()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
