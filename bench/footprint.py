"""Footprint of an idle, connected agent: peak resident memory and CPU over a minute.

    python -m bench.footprint [--seconds 60] [--quick]

Runs ``python -m agent run`` (mock HAL, one EVSE) against the bench CSMS on 127.0.0.1 in this
process, with HeartbeatInterval 10 s (from the boot answer) and meter sampling every second
(the core polls the meter each second; MeterValueSampleInterval is set to 1 too).  Once the
boot is accepted and the first StatusNotifications are through, the agent's CPU time is read
from /proc/PID/stat at the start and end of the window, and its peak RSS (VmHWM) at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._common import REPO, Report, proc_cpu_s, proc_status_kb, station_config
from bench.lightcsms import LightCsms

STATION = "IDLE1"
TIMEOUT = 30.0

# `cp-agent run` with the hardware factory made unimportable: build_hal then falls back to the
# mock HAL directly, which is what a factory importing its drivers lazily would cost.
_NO_FACTORY = ("import sys; sys.modules['hal.factory'] = None; from agent.cli import main; "
               "raise SystemExit(main())")

# Cumulative imports, each measured in a fresh interpreter: where the resident memory goes.
_IMPORT_STEPS = (
    ("bare interpreter", ""),
    ("+ asyncio (with ssl)", "import asyncio"),
    ("+ websockets client, yaml, sqlite3", "import websockets.asyncio.client, yaml, sqlite3"),
    ("+ jsonschema", "import jsonschema"),
    ("+ ocpp (1.6 enums, messages)", "import ocpp.v16.enums, ocpp.messages"),
    ("+ the agent (cli, app, adapters)", "import agent.cli, agent.app"),
    ("+ hal.factory (hardware drivers)", "import hal.factory"),
)


def _smaps_private_kb(pid: int) -> int | None:
    """Memory only this process holds (private clean + dirty), what a second agent would add."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except OSError:
        return None
    total = 0
    for line in text.splitlines():
        if line.startswith(("Private_Clean:", "Private_Dirty:")):
            total += int(line.split()[1])
    return total


def import_breakdown() -> list[tuple[str, float]]:
    """(step, MB of VmHWM after it) for the cumulative import steps above."""
    rows = []
    code = ""
    for label, stmt in _IMPORT_STEPS:
        code = f"{code}; {stmt}" if stmt else code
        probe = (f"{code.lstrip('; ')}\nimport re\n"
                 "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read())[1])")
        out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, check=True,
                             capture_output=True, text=True).stdout
        rows.append((label, int(out.split()[-1]) / 1024))
    return rows


async def run(seconds: float, quick: bool, no_factory: bool = False) -> Report:
    report = Report("footprint", quick)
    seen: dict[str, int] = {}
    changed = asyncio.Event()

    def on_call(station: str, action: str, payload: dict, at: float) -> None:
        seen[action] = seen.get(action, 0) + 1
        changed.set()

    csms = LightCsms(heartbeat_interval=10, on_call=on_call)
    url = await csms.start()
    with tempfile.TemporaryDirectory(prefix="cpa-bench-", dir="/tmp") as tmp:
        config = Path(tmp) / "agent.yaml"
        doc = station_config(url, Path(tmp), STATION, defaults={
            "MeterValueSampleInterval": 1, "HeartbeatInterval": 10})
        config.write_text(json.dumps(doc, indent=1))
        entry = ["-c", _NO_FACTORY] if no_factory else ["-m", "agent"]
        proc = await asyncio.create_subprocess_exec(
            sys.executable, *entry, "run", "--config", str(config), cwd=REPO,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        try:
            # Booted and both StatusNotifications (connector 1 and 0) answered: idle from here.
            async with asyncio.timeout(TIMEOUT):
                while seen.get("StatusNotification", 0) < 2:
                    changed.clear()
                    await changed.wait()
            rss_booted = proc_status_kb(proc.pid, "VmRSS")
            cpu0, t0 = proc_cpu_s(proc.pid), time.perf_counter()
            beats0 = seen.get("Heartbeat", 0)
            await asyncio.sleep(seconds)  # the measurement window itself, not a synchronisation
            cpu1, t1 = proc_cpu_s(proc.pid), time.perf_counter()
            beats = seen.get("Heartbeat", 0) - beats0
            peak = proc_status_kb(proc.pid, "VmHWM")
            rss = proc_status_kb(proc.pid, "VmRSS")
            private = _smaps_private_kb(proc.pid)
        finally:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
            _, err = await proc.communicate()
            await csms.stop()
        if proc.returncode != 0:
            raise RuntimeError(f"agent exited {proc.returncode}:\n{err.decode(errors='replace')}")
    window = t1 - t0
    cpu_pct = (cpu1 - cpu0) / window * 100
    label = "peak RSS (VmHWM), idle connected agent"
    if no_factory:
        label += ", hal.factory not imported"
    report.add(label, peak / 1024 if peak else None, "MB", 40)
    report.add("RSS after boot", rss_booted / 1024 if rss_booted else None, "MB")
    report.add("RSS at the end of the window", rss / 1024 if rss else None, "MB")
    report.add("private memory (not shared)", private / 1024 if private else None, "MB")
    report.add(f"CPU over {window:.0f} s idle (% of one core)", cpu_pct, "%", 0.5,
               note=f"{cpu1 - cpu0:.2f} CPU s; /proc ticks are 10 ms")
    report.add("heartbeats in the window", beats, "")
    report.details.update(window_s=window, cpu_s=cpu1 - cpu0, csms_calls=seen,
                          hal_factory_imported=not no_factory)
    previous = 0.0
    for label, mb in import_breakdown():
        report.add(f"import profile: {label}", mb, "MB", note=f"+{mb - previous:.1f} MB")
        previous = mb
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="idle footprint benchmark: RSS and CPU")
    p.add_argument("--seconds", type=float, default=None, help="idle window (default 60)")
    p.add_argument("--quick", action="store_true", help="3 s window: checks the script")
    p.add_argument("--no-hal-factory", action="store_true",
                   help="run the agent with hal.factory unimportable (mock HAL fallback): "
                        "what lazily imported hardware drivers would save")
    ns = p.parse_args(argv)
    seconds = ns.seconds or (3.0 if ns.quick else 60.0)
    report = asyncio.run(run(seconds, ns.quick, ns.no_hal_factory))
    report.emit()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
