"""Swarm: thousands of real agents in one process (or a few), connected, booted, then steady.

    python -m bench.swarm [--count 2000] [--ramp 50] [--window 60] [--workers N]
                          [--loop auto|asyncio|uvloop] [--charging-ratio 0.1]
                          [--csms-processes K] [--quick] [--profile FILE]

The swarm is ``agent.swarm.Swarm``, what `cp-agent swarm` runs: every station a full
``Agent`` on its own mock HAL (state in memory, the swarm's load-test mode), with simulated
drivers (charging ratio 0.1 unless ``--charging-ratio``, mean session 300 s, MeterValues
every 60 s).  The CSMS is the
bench CSMS in another process, so the CPU measured here is the agents' and their simulated
hardware's, and the CSMS's own CPU is reported separately.  One CSMS process holds at most
15,000 stations (a process may have no more than 20,000 descriptors on some machines), so
from 15,001 stations on the CSMS is several processes sharing its port (``CsmsShards``) and
its CPU is theirs added up.  With ``--workers N`` the stations
are split over N `cp-agent swarm` processes (``agent.swarm.Workers``, as ``--workers`` does)
and their CPU and memory are added up.

Phases and figures:

1. ramp: stations start at ``--ramp`` per second; time from the first start until every
   station had its BootNotification accepted (HeartbeatInterval 60 s from the boot answer),
   and the p50 / p99 of each station's own start-to-accepted time;
2. settle for a few seconds, then a steady-state window (``--window`` s): CPU of the swarm
   process(es) as % of one core and per booted station (µs of CPU a second), messages per
   second, how many stations were charging; the share of the ramp and of the window the
   process waited for a CPU (schedstat), since on a loaded machine the swarm's figures are
   what it got, not what it needs;
3. resident memory grown since just before the ramp, divided by the number of stations.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import logging
import time
from pathlib import Path

from agent.swarm import Swarm, SwarmOptions, SwarmSummary, Workers, loop_factory
from bench._common import (
    CsmsShards,
    Profile,
    Report,
    csms_shards_for,
    proc_cpu_s,
    proc_status_kb,
    raise_nofile,
    rss_kb,
)

TIMEOUT_BOOT = 600.0
# Short enough that every station heartbeats inside the steady-state window.
HEARTBEAT_S = 60


def _run_delay_s(pid: int | str = "self") -> float:
    """Seconds the process's main thread was runnable but waiting for a CPU (schedstat):
    on a loaded machine what the swarm could not run, so its CPU figures are a share."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def _options(url: str, count: int, ramp: float, workers: int, loop: str,
             charging_ratio: float = 0.1) -> SwarmOptions:
    return SwarmOptions(csms=url, count=count, ramp=ramp, charging_ratio=charging_ratio,
                        session_s=300,
                        meter_interval=60, seed=1, drain_s=30, progress_s=1.0,
                        workers=workers, loop=loop)


async def _wait_booted(task: asyncio.Task, booted: asyncio.Event, out: io.StringIO,
                       timeout: float) -> bool:
    """True once every station booted; False when ``timeout`` passed first (the figures of
    the window are still worth having: how far it got is one of them)."""
    waiter = asyncio.ensure_future(booted.wait())
    done, _ = await asyncio.wait({task, waiter}, timeout=timeout,
                                 return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if task in done:
        raise RuntimeError(f"the swarm ended before booting:\n{out.getvalue()}")
    return bool(done)


async def run(count: int, ramp: float, window: float, settle: float, quick: bool,
              profile: Profile, workers: int = 1, loop: str = "auto",
              boot_timeout: float = TIMEOUT_BOOT, charging_ratio: float = 0.1,
              csms_shards: int | None = None) -> Report:
    """``csms_shards``: CSMS processes sharing the port (default: as many as ``count``
    needs, see ``csms_shards_for``)."""
    report = Report("swarm", quick)
    nofile = raise_nofile()
    shards = csms_shards or csms_shards_for(count)
    csms = CsmsShards(heartbeat=HEARTBEAT_S, shards=shards)
    url = await csms.start()
    out = io.StringIO()
    options = _options(url, count, ramp, workers, loop, charging_ratio)
    options.progress_s = 3600 if workers == 1 else 1.0
    runner: Swarm | Workers = Swarm(options, out) if workers == 1 else Workers(options, out)
    rss0 = rss_kb()
    task = asyncio.create_task(runner.run())
    ramp_cpu0 = proc_cpu_s()  # workers: not started yet, their CPU counts from 0

    def cpu() -> float:  # of the process(es) running the stations
        if isinstance(runner, Swarm):
            return proc_cpu_s()
        return sum(proc_cpu_s(w.proc.pid) for w in runner.workers
                   if w.proc is not None and w.proc.returncode is None)

    def waited() -> float:  # run-queue wait of the process(es) running the stations
        if isinstance(runner, Swarm):
            return _run_delay_s()
        return sum(_run_delay_s(w.proc.pid) for w in runner.workers
                   if w.proc is not None and w.proc.returncode is None)

    def census() -> tuple[int, int, int, int]:  # connected, booted, charging, frames
        if isinstance(runner, Swarm):
            return (*runner.census(), runner.frames)
        keys = ("connected", "booted", "charging", "frames")
        return tuple(sum(int(w.progress.get(k, 0)) for w in runner.workers)  # type: ignore[return-value]
                     for k in keys)

    ramp_t0, ramp_wait0 = time.perf_counter(), waited()
    try:
        all_booted = await _wait_booted(task, runner.all_booted, out, boot_timeout)
        ramp_cpu = cpu() - (ramp_cpu0 if isinstance(runner, Swarm) else 0.0)
        ramp_span = time.perf_counter() - ramp_t0
        ramp_waited = waited() - ramp_wait0
        ramp_end = time.monotonic()
        # Station-seconds the booted ones ran during the ramp (their steady state is in the
        # ramp's CPU; taken out below at the window's rate per station).
        booted_s = (sum(max(0.0, ramp_end - st.booted_at) for st in runner.stations
                        if st.booted_at is not None)
                    if isinstance(runner, Swarm) else None)
        booted_by_timeout = census()[1]
        booted_after = None if not all_booted else (
            runner.summary.all_booted_after_s if isinstance(runner, Swarm)
            else max(w.booted_at or 0.0 for w in runner.workers))
        await asyncio.sleep(settle)  # let the boot's StatusNotifications drain (not measured)
        connected, booted, _, frames0 = census()
        cpu0, t0, wait0 = cpu(), time.perf_counter(), waited()
        csms_cpu0 = csms.cpu_s()
        charging_samples: list[int] = []
        profile.start()
        end = t0 + window
        while (left := end - time.perf_counter()) > 0:
            await asyncio.sleep(min(1.0, left))  # sampling the census once a second
            charging_samples.append(census()[2])
        profile.stop()
        cpu1, t1, frames1 = cpu(), time.perf_counter(), census()[3]
        wait1 = waited()
        csms_cpu1 = csms.cpu_s()
        rss1 = rss_kb()
        worker_rss = ([proc_status_kb(w.proc.pid, "VmRSS") or 0 for w in runner.workers
                       if w.proc is not None] if isinstance(runner, Workers) else [])
        if isinstance(runner, Swarm):
            runner.stop()
        else:
            runner.request_stop()
        summary: SwarmSummary = await asyncio.wait_for(task, 300)
        stats = await csms.stats()
    finally:
        if not task.done():
            if isinstance(runner, Swarm):
                runner.stop()
            else:
                runner.request_stop()
            await asyncio.gather(task, return_exceptions=True)
        await csms.stop()
    span = t1 - t0
    cpu_pct = (cpu1 - cpu0) / span * 100
    if isinstance(runner, Swarm):
        built = max(1, summary.stations)
        per_station_mb = (rss1 - rss0) / built / 1024
        rss_note = f"{(rss1 - rss0) / 1024:.0f} MB for {built} started"
    else:  # each worker measured its own growth over its ramp
        per_station_mb = (summary.rss_per_station_kb or 0.0) / 1024
        rss_note = (f"{workers} workers, {sum(worker_rss) / 1024:.0f} MB resident in all, "
                    f"interpreters included")
    p50, p99 = summary.boot_percentile(50), summary.boot_percentile(99)
    where = "one process" if workers == 1 else f"{workers} processes"
    report.add(f"{count} stations connected and booted ({where}), from the first start",
               booted_after, "s", 60.0 if count >= 2000 else None,
               note=f"ramp {ramp:g}/s" + ("" if all_booted else
                                          f"; {booted_by_timeout} booted after "
                                          f"{boot_timeout:g} s"))
    report.add("CPU per booted station over the ramp (build, start, connect, boot; the "
               "booted ones' steady state included)",
               ramp_cpu / max(1, booted_by_timeout) * 1000, "ms",
               note=f"{ramp_cpu:.0f} CPU s for {booted_by_timeout} booted")
    report.add("CPU share the swarm got during the ramp (its CPU / wall; waiting for a "
               "CPU)", ramp_cpu / max(ramp_span, 1e-9) * 100, "% core",
               note=f"runnable but waiting {ramp_waited / max(ramp_span, 1e-9) * 100:.0f} % "
                    f"of the ramp's {ramp_span:.0f} s")
    per_station_us = (cpu1 - cpu0) / max(span, 1e-9) / max(1, booted) * 1e6
    if booted_s is not None:
        boot_ms = (ramp_cpu - per_station_us * 1e-6 * booted_s) / max(1, booted_by_timeout)
        report.add("CPU per boot (the ramp's CPU less the booted ones' steady state at the "
                   "window's rate)", boot_ms * 1000, "ms",
                   note=f"{booted_s:.0f} station-seconds booted during the ramp")
    report.add("boot of one station, start to BootNotification accepted, p50", p50, "s")
    report.add("boot of one station, p99", p99, "s")
    report.add(f"steady-state CPU of the swarm process{'es' if workers > 1 else ''} "
               f"({span:.0f} s window)", cpu_pct,
               "% core", 100.0 * workers, note=f"{cpu1 - cpu0:.1f} CPU s")
    report.add("steady-state CPU per booted station", per_station_us, "µs/s",
               note=f"{booted} booted; the process waited for a CPU "
                    f"{(wait1 - wait0) / span * 100:.0f} % of the window")
    report.add("resident memory per station", per_station_mb, "MB", 1.0, note=rss_note)
    report.add("peak RSS of the (biggest) swarm process", summary.peak_rss_kb / 1024, "MB")
    report.add("stations charging during the window (mean)",
               sum(charging_samples) / max(1, len(charging_samples)), "",
               note=f"charging ratio {charging_ratio:g} of {count}")
    report.add("frames per second during the window", (frames1 - frames0) / span, "msg/s")
    report.add("CPU of the bench CSMS process in the window", (csms_cpu1 - csms_cpu0) / span
               * 100, "% core", note="not part of the swarm's figure; "
                                     f"{shards} CSMS process{'es' if shards > 1 else ''}")
    report.add("connected / booted at the window start", connected, "",
               note=f"{booted} booted")
    report.details.update(
        count=count, ramp=ramp, workers=workers, loop=loop, window_s=span, nofile=nofile,
        booted=summary.booted, failed=summary.failed,
        sessions_started=summary.sessions_started,
        sessions_completed=summary.sessions_completed, errors=summary.errors,
        last_error=summary.last_error, sent=dict(summary.sent),
        csms_calls=stats["calls"], csms_peak_connections=stats["peak_connections"],
        csms_processes=shards, csms_accept_failed=stats.get("accept_failed", 0),
        summary_text=out.getvalue()[-4000:])
    if summary.errors:
        print(out.getvalue()[-4000:])
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="swarm benchmark: many agents in one process")
    p.add_argument("--count", type=int, default=None, help="stations (default 2000)")
    p.add_argument("--ramp", type=float, default=None,
                   help="stations started per second (default 50 as in cp-agent swarm; "
                        "0 = all at once)")
    p.add_argument("--window", type=float, default=None,
                   help="steady-state measurement window in seconds (default 60)")
    p.add_argument("--workers", type=int, default=1,
                   help="swarm processes (default 1: the stations in this process)")
    p.add_argument("--loop", default="auto", choices=["auto", "asyncio", "uvloop"],
                   help="event loop of the swarm (default auto: uvloop when installed)")
    p.add_argument("--boot-timeout", type=float, default=TIMEOUT_BOOT,
                   help=f"measure the window anyway after this long (default {TIMEOUT_BOOT:g})")
    p.add_argument("--charging-ratio", type=float, default=0.1,
                   help="long-run share of stations in a session (default 0.1; 0: idle "
                        "stations only, what the agent costs without the drivers' traffic)")
    p.add_argument("--csms-processes", type=int, default=None, metavar="K",
                   help="bench CSMS processes sharing its port (default: one per 15,000 "
                        "stations)")
    p.add_argument("--quick", action="store_true", help="20 stations, 3 s: checks the script")
    p.add_argument("--profile", metavar="FILE", help="pyinstrument profile of the window")
    ns = p.parse_args(argv)
    count = ns.count or (20 if ns.quick else 2000)
    ramp = ns.ramp if ns.ramp is not None else 50.0
    window = ns.window or (3.0 if ns.quick else 60.0)
    logging.basicConfig(level=logging.CRITICAL)
    factory = loop_factory(ns.loop) if ns.workers == 1 else None
    with asyncio.Runner(loop_factory=factory) as runner:
        report = runner.run(run(count, ramp, window, 1.0 if ns.quick else 10.0, ns.quick,
                                Profile(ns.profile), ns.workers, ns.loop, ns.boot_timeout,
                                ns.charging_ratio, ns.csms_processes))
    report.emit()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
