"""What every benchmark shares: the machine description, figures, /proc readings, a CSMS process.

Figures are printed, compared with the issue's targets and written as one ``RESULT {json}``
line, so that docs/performance.md can be regenerated and tests/test_bench.py can check that a
script still produces its figures.  Nothing here asserts a time: a slow machine is a finding,
not a failure.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import platform
import resource
import socket
import sys
from collections import Counter
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO

REPO = Path(__file__).resolve().parent.parent
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


# ---------------------------------------------------------------------- the machine


def machine() -> dict[str, Any]:
    """What the figures depend on: CPU, cores, memory, kernel, Python and key packages."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_mb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_mb = int(line.split()[1]) // 1024
    except OSError:
        pass
    versions = {}
    for pkg in ("ocpp", "websockets", "jsonschema"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    return {
        "cpu": cpu, "arch": platform.machine(), "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)), "mem_mb": mem_mb,
        "kernel": platform.release(), "python": platform.python_version(),
        "implementation": platform.python_implementation(), **versions,
    }


def machine_line(m: dict[str, Any] | None = None) -> str:
    m = m or machine()
    return (f"machine: {m['cpu']} ({m['arch']}), {m['usable_cores']} cores, "
            f"{m['mem_mb']} MB RAM, Linux {m['kernel']}, {m['implementation']} {m['python']}, "
            f"ocpp {m['ocpp']}, websockets {m['websockets']}")


# ---------------------------------------------------------------------- figures


@dataclass
class Figure:
    name: str
    value: float | None
    unit: str
    target: float | None = None  # upper bound from the issue, same unit
    note: str = ""

    @property
    def reached(self) -> bool | None:
        if self.target is None or self.value is None:
            return None
        return self.value <= self.target


@dataclass
class Report:
    """Figures of one benchmark run; ``emit`` prints them for people and for machines."""

    bench: str
    quick: bool
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def add(self, name: str, value: float | None, unit: str, target: float | None = None,
            note: str = "") -> None:
        self.figures.append(Figure(name, value, unit, target, note))

    def emit(self, out: TextIO = sys.stdout) -> None:
        m = machine()
        print("", file=out)
        print(f"== {self.bench}{' (quick mode: too few runs to quote)' if self.quick else ''}",
              file=out)
        print(machine_line(m), file=out)
        width = max((len(f.name) for f in self.figures), default=10)
        for f in self.figures:
            value = "n/a" if f.value is None else _fmt(f.value)
            line = f"  {f.name:<{width}}  {value:>10} {f.unit:<6}"
            if f.target is not None:
                verdict = {True: "reached", False: "NOT reached", None: "n/a"}[f.reached]
                line += f"  target <= {_fmt(f.target)} {f.unit}: {verdict}"
            if f.note:
                line += f"  ({f.note})"
            print(line, file=out)
        doc = {"bench": self.bench, "quick": self.quick, "machine": m,
               "figures": [{"name": f.name, "value": f.value, "unit": f.unit,
                            "target": f.target, "reached": f.reached, "note": f.note}
                           for f in self.figures],
               "details": self.details}
        print("RESULT " + json.dumps(doc, default=str), file=out, flush=True)


def _fmt(v: float) -> str:
    if v == 0 or abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def percentile(values: list[float], p: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), p in [0, 100]."""
    if not values:
        raise ValueError("no values")
    s = sorted(values)
    k = (len(s) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


# ---------------------------------------------------------------------- /proc


def proc_status_kb(pid: int | str, key: str) -> int | None:
    """A ``kB`` field of /proc/PID/status: VmRSS (now), VmHWM (peak RSS)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def proc_cpu_s(pid: int | str = "self") -> float:
    """User + system CPU seconds a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kb() -> int:
    """Resident set of this process now (not the peak)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * PAGE_KB


def peak_rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def raise_nofile() -> int:
    """Lift the soft file-descriptor limit to the hard one (thousands of sockets and files)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------- configuration


def station_config(url: str, state_dir: Path, station_id: str = "BENCH1", *,
                   evses: int = 1, defaults: dict | None = None,
                   min_backoff_s: float = 0.05, max_backoff_s: float = 0.5) -> dict:
    """A `cp-agent run` configuration (as a dict; JSON is YAML) on the mock HAL."""
    return {
        "station": {"id": station_id, "vendor": "cp-agent", "model": "bench"},
        "ocpp": {"url": url, "versions": ["1.6"], "defaults": defaults or {},
                 "call_timeout_s": 10,
                 "reconnect": {"min_backoff_s": min_backoff_s, "max_backoff_s": max_backoff_s}},
        "storage": {"path": str(state_dir / f"{station_id}.sqlite3")},
        "control": {"socket": str(state_dir / f"{station_id}.sock")},
        "evses": [{"id": i} for i in range(1, evses + 1)],
        "hal": {"driver": "mock", "ev_max_current_a": 16},
        "log": {"level": "warning"},
    }


# ---------------------------------------------------------------------- the CSMS process


class CsmsProcess:
    """``python -m bench.lightcsms`` in its own process, driven over its stdin/stdout."""

    def __init__(self, *, heartbeat: int = 300, port: int = 0, reuse_port: bool = False,
                 lean: bool = False) -> None:
        self.heartbeat = heartbeat
        self.port = port
        self.reuse_port = reuse_port
        self.lean = lean  # bench.lightcsms --lean: websockets' Sans-I/O layer, no tasks
        self.proc: asyncio.subprocess.Process | None = None
        self.url = ""
        self.final_stats: dict | None = None
        self._waiters: dict[int, asyncio.Future] = {}
        self._next = 0
        self._reader: asyncio.Task | None = None

    async def start(self) -> str:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.lightcsms", "--port", str(self.port),
            "--heartbeat", str(self.heartbeat), *(["--reuse-port"] if self.reuse_port else []),
            *(["--lean"] if self.lean else []),
            cwd=REPO,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=1 << 24)
        assert self.proc.stdout is not None
        first = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        if not first:
            raise RuntimeError("the bench CSMS did not start")
        self.url = json.loads(first)["url"]
        self._reader = asyncio.create_task(self._read())
        return self.url

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                break
            doc = json.loads(line)
            future = self._waiters.pop(doc.get("id"), None) if "id" in doc else None
            if future is not None and not future.done():
                future.set_result(doc)
            elif "stats" in doc:
                self.final_stats = doc["stats"]
        for future in self._waiters.values():
            if not future.done():
                future.set_exception(RuntimeError("the bench CSMS exited"))

    async def request(self, cmd: dict, timeout: float = 30.0) -> dict:
        assert self.proc is not None and self.proc.stdin is not None
        self._next += 1
        cmd = {**cmd, "id": self._next}
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        self._waiters[self._next] = future
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        await self.proc.stdin.drain()
        return await asyncio.wait_for(future, timeout)

    async def stats(self, ids: bool = False) -> dict:
        """Counters; ``ids`` adds the connected and booted stations' ids (for merging)."""
        return (await self.request({"cmd": "stats", **({"ids": True} if ids else {})}))["stats"]

    async def holds(self, station: str) -> float | None:
        """perf_counter at which ``station`` connected to this process, None if it is not."""
        doc = await self.request({"cmd": "holds", "station": station})
        return doc["since"] if doc.get("holds") else None

    def cpu_s(self) -> float:
        """CPU seconds the process has used so far."""
        return proc_cpu_s(self.pid)

    async def call(self, station: str, action: str, payload: dict) -> tuple[float, dict]:
        doc = await self.request({"cmd": "call", "station": station, "action": action,
                                  "payload": payload})
        if "error" in doc:
            raise RuntimeError(f"{action} to {station}: {doc['error']}")
        return doc["sent_at"], doc["result"]

    async def stop(self) -> dict | None:
        proc = self.proc
        if proc is None:
            return self.final_stats
        self.proc = None
        if proc.stdin is not None and not proc.stdin.is_closing():
            proc.stdin.write(b'{"cmd": "quit"}\n')
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        return self.final_stats


STATIONS_PER_SHARD = 15_000  # well below the 20,000 descriptors a process may have


def csms_shards_for(count: int) -> int:
    """How many CSMS processes ``count`` stations need (each holds STATIONS_PER_SHARD)."""
    return max(1, math.ceil(count / STATIONS_PER_SHARD))


def merge_stats(docs: list[dict]) -> dict:
    """The stats of several CSMS processes as one CSMS's: counters and CPU added up, calls
    added per action, connected / booted stations counted once across the processes when the
    docs carry their ids.  ``peak_connections`` and ``peak_rss_kb`` are sums of each process's
    own peak, an upper bound of the group's (the peaks need not coincide)."""
    if len(docs) == 1:
        return docs[0]
    merged: dict[str, Any] = {}
    calls: Counter[str] = Counter()
    for doc in docs:
        calls.update(doc.get("calls", {}))
        for key, value in doc.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                merged[key] = merged.get(key, 0) + value
    merged["calls"] = dict(calls)
    for key, ids in (("connections", "station_ids"), ("booted", "booted_ids")):
        if all(ids in doc for doc in docs):
            merged[key] = len(set().union(*(doc[ids] for doc in docs)))
    merged["processes"] = len(docs)
    return merged


class CsmsShards:
    """The bench CSMS as ``shards`` processes sharing one port (SO_REUSEPORT), driven as one.

    A process holds no more connections than its descriptor limit (20,000 on some machines,
    and not to be raised there); the kernel spreads the stations over the processes, so a
    group of K holds K times as many.  ``stats()``, ``call()``, ``stop()`` and ``cpu_s()``
    answer for the group; with one shard it is exactly ``CsmsProcess``, without SO_REUSEPORT.
    """

    def __init__(self, *, heartbeat: int = 300, port: int = 0, shards: int = 1) -> None:
        if shards < 1:
            raise ValueError(f"shards must be at least 1, not {shards}")
        self.shards = [CsmsProcess(heartbeat=heartbeat, port=port, reuse_port=shards > 1)
                       for _ in range(shards)]
        self.url = ""

    async def start(self) -> str:
        """The first process picks the port (or binds the one given), the others join it."""
        first, *rest = self.shards
        try:
            self.url = await first.start()
            port = int(self.url.rstrip("/").rsplit(":", 1)[1])
            for shard in rest:
                shard.port = port
            started = await asyncio.gather(*(shard.start() for shard in rest),
                                           return_exceptions=True)
            for outcome in started:
                if isinstance(outcome, BaseException):
                    raise outcome
        except BaseException:
            await self.stop()
            raise
        if any(shard.url != self.url for shard in rest):
            await self.stop()
            raise RuntimeError(f"the CSMS processes did not share one port: "
                               f"{[shard.url for shard in self.shards]}")
        return self.url

    @property
    def pids(self) -> list[int]:
        return [shard.pid for shard in self.shards]

    @property
    def pid(self) -> int:
        if len(self.shards) != 1:
            raise AttributeError(f"{len(self.shards)} CSMS processes: use pids or cpu_s()")
        return self.shards[0].pid

    def cpu_s(self) -> float:
        """CPU seconds the processes have used so far, added up."""
        return sum(shard.cpu_s() for shard in self.shards)

    async def stats(self) -> dict:
        if len(self.shards) == 1:
            return await self.shards[0].stats()
        docs = await asyncio.gather(*(shard.stats(ids=True) for shard in self.shards))
        merged = merge_stats(list(docs))
        merged.pop("station_ids", None)
        merged.pop("booted_ids", None)
        return merged

    async def shard_of(self, station: str) -> CsmsProcess:
        """The process holding ``station``'s connection (its newest, should an old one still
        linger in another process after a reconnect)."""
        if len(self.shards) == 1:
            return self.shards[0]
        since = await asyncio.gather(*(shard.holds(station) for shard in self.shards))
        held = [(t, i) for i, t in enumerate(since) if t is not None]
        if not held:
            raise RuntimeError(f"{station} is not connected to any of the "
                               f"{len(self.shards)} CSMS processes")
        return self.shards[max(held)[1]]

    async def call(self, station: str, action: str, payload: dict) -> tuple[float, dict]:
        """As ``CsmsProcess.call``; the look-up of the shard comes before ``sent_at``."""
        return await (await self.shard_of(station)).call(station, action, payload)

    async def stop(self) -> dict | None:
        """Stops every process; their final stats merged (None if one had none)."""
        finals = await asyncio.gather(*(shard.stop() for shard in self.shards))
        if len(finals) == 1:
            return finals[0]
        if any(doc is None for doc in finals):
            return None
        merged = merge_stats([doc for doc in finals if doc is not None])
        merged.pop("station_ids", None)
        merged.pop("booted_ids", None)
        return merged


# ---------------------------------------------------------------------- profiles


class Profile:
    """pyinstrument around the measured phase only, when asked (``--profile FILE``).

    Text goes to FILE, an HTML flame view next to it (FILE.html).  pyinstrument is in the
    ``bench`` extra; without it, asking for a profile is an error, not a silent no-op.
    """

    def __init__(self, path: str | None) -> None:
        self.path = path
        self._profiler: Any = None

    def start(self) -> None:
        if not self.path:
            return
        from pyinstrument import Profiler

        self._profiler = Profiler(interval=0.0005, async_mode="disabled")
        self._profiler.start()

    def stop(self) -> None:
        if self._profiler is None:
            return
        self._profiler.stop()
        assert self.path is not None
        Path(self.path).write_text(self._profiler.output_text(unicode=True, show_all=False))
        Path(self.path + ".html").write_text(self._profiler.output_html())
        self._profiler = None
