"""Swarm: 2,000 real agents in one process, connected, booted, then in their steady state.

    python -m bench.swarm [--count 2000] [--ramp 50] [--window 60] [--quick]

The swarm is ``agent.swarm.Swarm``, what `cp-agent swarm` runs: every station a full
``Agent`` on its own mock HAL and SQLite file, with simulated drivers (charging ratio 0.1,
mean session 300 s, MeterValues every 60 s).  The CSMS is the bench CSMS in another process,
so the CPU measured here (this process, from getrusage) is the agents' and their simulated
hardware's, and the CSMS's own CPU is reported separately.

Phases and figures:

1. ramp: stations start at ``--ramp`` per second; time from the first start until every
   station had its BootNotification accepted (HeartbeatInterval 60 s from the boot answer);
2. settle for a few seconds, then a steady-state window (``--window`` s): CPU of this process
   as % of one core, messages per second, how many stations were charging;
3. resident memory grown since just before the ramp, divided by the number of stations.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import time

from agent.swarm import Swarm, SwarmOptions
from bench._common import CsmsProcess, Profile, Report, proc_cpu_s, raise_nofile, rss_kb

TIMEOUT_BOOT = 300.0
# Short enough that every station heartbeats inside the steady-state window.
HEARTBEAT_S = 60


async def run(count: int, ramp: float, window: float, settle: float, quick: bool,
              profile: Profile) -> Report:
    report = Report("swarm", quick)
    nofile = raise_nofile()
    csms = CsmsProcess(heartbeat=HEARTBEAT_S)
    url = await csms.start()
    out = io.StringIO()
    swarm = Swarm(SwarmOptions(csms=url, count=count, ramp=ramp, charging_ratio=0.1,
                               session_s=300, meter_interval=60, seed=1, drain_s=30,
                               progress_s=3600), out)
    rss0 = rss_kb()
    task = asyncio.create_task(swarm.run())
    try:
        async with asyncio.timeout(TIMEOUT_BOOT):
            done, _ = await asyncio.wait({task, asyncio.ensure_future(swarm.all_booted.wait())},
                                         return_when=asyncio.FIRST_COMPLETED)
        if task in done:
            raise RuntimeError(f"the swarm ended before booting:\n{out.getvalue()}")
        booted_after = swarm.summary.all_booted_after_s
        await asyncio.sleep(settle)  # let the boot's StatusNotifications drain (not measured)
        connected, booted, _ = swarm.census()
        cpu0, t0, frames0 = proc_cpu_s(), time.perf_counter(), swarm.frames
        csms_cpu0 = proc_cpu_s(csms.pid)
        charging_samples: list[int] = []
        profile.start()
        end = t0 + window
        while (left := end - time.perf_counter()) > 0:
            await asyncio.sleep(min(1.0, left))  # sampling the census once a second
            charging_samples.append(swarm.census()[2])
        profile.stop()
        cpu1, t1, frames1 = proc_cpu_s(), time.perf_counter(), swarm.frames
        csms_cpu1 = proc_cpu_s(csms.pid)
        rss1 = rss_kb()
        swarm.stop()
        summary = await asyncio.wait_for(task, 120)
        stats = await csms.stats()
    finally:
        if not task.done():
            swarm.stop()
            await asyncio.gather(task, return_exceptions=True)
        await csms.stop()
    span = t1 - t0
    cpu_pct = (cpu1 - cpu0) / span * 100
    per_station_mb = (rss1 - rss0) / count / 1024
    report.add(f"{count} stations connected and booted, from the first start", booted_after,
               "s", 60.0 if count >= 2000 else None, note=f"ramp {ramp:g}/s")
    report.add(f"steady-state CPU of the swarm process ({span:.0f} s window)", cpu_pct,
               "% core", 100.0, note=f"{cpu1 - cpu0:.1f} CPU s")
    report.add("resident memory per station", per_station_mb, "MB", 2.0,
               note=f"{(rss1 - rss0) / 1024:.0f} MB for {count}")
    report.add("peak RSS of the swarm process", summary.peak_rss_kb / 1024, "MB")
    report.add("stations charging during the window (mean)",
               sum(charging_samples) / max(1, len(charging_samples)), "",
               note=f"charging ratio 0.1 of {count}")
    report.add("frames per second during the window", (frames1 - frames0) / span, "msg/s")
    report.add("CPU of the bench CSMS process in the window", (csms_cpu1 - csms_cpu0) / span
               * 100, "% core", note="not part of the swarm's figure")
    report.add("connected / booted at the window start", connected, "",
               note=f"{booted} booted")
    report.details.update(
        count=count, ramp=ramp, window_s=span, nofile=nofile,
        sessions_started=summary.sessions_started,
        sessions_completed=summary.sessions_completed, errors=summary.errors,
        last_error=summary.last_error, sent=dict(summary.sent),
        csms_calls=stats["calls"], csms_peak_connections=stats["peak_connections"],
        summary_text=out.getvalue())
    if summary.errors:
        print(out.getvalue())
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="swarm benchmark: many agents in one process")
    p.add_argument("--count", type=int, default=None, help="stations (default 2000)")
    p.add_argument("--ramp", type=float, default=None,
                   help="stations started per second (default 50 as in cp-agent swarm; "
                        "0 = all at once)")
    p.add_argument("--window", type=float, default=None,
                   help="steady-state measurement window in seconds (default 60)")
    p.add_argument("--quick", action="store_true", help="20 stations, 3 s: checks the script")
    p.add_argument("--profile", metavar="FILE", help="pyinstrument profile of the window")
    ns = p.parse_args(argv)
    count = ns.count or (20 if ns.quick else 2000)
    ramp = ns.ramp if ns.ramp is not None else 50.0
    window = ns.window or (3.0 if ns.quick else 60.0)
    logging.basicConfig(level=logging.CRITICAL)
    report = asyncio.run(run(count, ramp, window, 1.0 if ns.quick else 10.0, ns.quick,
                             Profile(ns.profile)))
    report.emit()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
