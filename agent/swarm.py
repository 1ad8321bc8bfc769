"""`cp-agent swarm`: thousands of stations in one process, each the real agent on a mock HAL.

A CSMS under test should see what a fleet of real chargers sends, not a replay of canned
frames: so every swarm station is an :class:`agent.app.Agent` exactly as `cp-agent run` builds
it (own identity, own SQLite state file, own websocket, own protocol adapter and outbox), on
its own :class:`hal.mock.MockHal`.  Only the person at the charger is simulated: a driver
plugs in, taps a card, charges, sometimes pauses, stops with the card or just unplugs; the
core, the adapter and the link do the rest, so MeterValues, StatusNotifications, offline
queueing and reconnects behave as they do in the field.

Stations connect at a ramp rate (``--ramp``) so that a load test does not begin with a
thundering herd unless asked to (``--ramp 0``).  The charging ratio is the long-run share of
stations with a session; idle and session times are exponential, so the swarm is in its
steady state from the first second.  Several swarm processes with disjoint id prefixes add up
to one bigger fleet.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import itertools
import json
import logging
import math
import os
import random
import resource
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TextIO

from agent.app import Agent
from agent.clock import Clock
from agent.config import (
    AgentConfig,
    ControlConfig,
    EvseConfig,
    LogConfig,
    OcppConfig,
    StationConfig,
    StorageConfig,
)
from agent.storage import MEMORY, Storage
from hal.interfaces import PilotState
from hal.mock import MockHal

log = logging.getLogger("cp_agent.swarm")

# Agents stopped at once at the end: each stop closes a websocket and a database.
_STOP_BATCH = 200
# Stations built between two gc.freeze() calls during the ramp. gc.freeze() only moves the
# collector's lists (O(1)), so every station is frozen once started: with 250 between two
# calls the collections of the ramp still scanned up to 250 stations each (1.6 ms of GC per
# boot, measured with gc.callbacks; 0.25 ms with 1), for ~20 objects per station kept.
_FREEZE_EVERY = 1
# At the end a station is done when nothing is queued, nothing is in flight and the link has
# been silent this long (the status that follows an unplug goes out right after it).
_QUIET_S = 0.2


@dataclass
class SwarmOptions:
    """What `cp-agent swarm` is asked to do (see ``cp-agent swarm -h``)."""

    csms: str
    count: int
    ocpp: str = "1.6"
    id_prefix: str = "SWARM-"
    first_index: int = 1
    charging_ratio: float = 0.1
    ramp: float = 50.0  # stations per second; 0: all at once
    duration: float = 0.0  # seconds from the start; 0: until stopped
    session_s: float = 300.0  # mean time from plug-in to unplug
    meter_interval: int = 60  # MeterValueSampleInterval, seconds
    evses: int = 1
    id_tag: str | None = None  # one card for every station; default: one card per station
    password: str | None = None  # HTTP basic auth (security profile 1, or 2 with wss://)
    # Given: one SQLite file per station there, kept (a swarm can be resumed with its queued
    # messages). None: the load-test mode, every station's state in an in-memory SQLite
    # database (same schema and transactions, nothing fsynced, gone with the process) and
    # the files beside it (security log) in a temporary directory removed at the end.
    state_dir: str | None = None
    seed: int | None = None
    progress_s: float = 1.0
    drain_s: float = 15.0  # at the end, how long finished sessions may take to be delivered
    # One shard of a bigger fleet (a Kubernetes Indexed Job's pod): stations
    # first_index + shard * count ... + count - 1, so every shard's ids are its own.
    shard: int | None = None
    workers: int = 1  # processes on this machine, each with a disjoint part of --count
    report: str = "text"  # or "json": one JSON object a line (workers, merging, scripts)
    loop: str = "auto"  # asyncio event loop: uvloop when installed, else the standard one
    id_width: int = 0  # digits of the station number; 0: those of the last one (min. 5)
    # permessage-deflate offered on every station's websocket (ocpp.compression, on as in a
    # station's default configuration, so a CSMS sees what a fleet sends). Off saves each
    # station ~40 KiB of zlib state and the deflate of every frame, and the CSMS its
    # inflate: for a load test of the CSMS's message handling rather than of its deflate.
    compression: bool = True

    @property
    def first(self) -> int:
        """The number of this process's (or shard's) first station."""
        return self.first_index + (self.shard or 0) * self.count

    def validate(self) -> None:
        if self.count < 1:
            raise ValueError("--count must be at least 1")
        if self.first_index < 0:
            raise ValueError("--first-index must be >= 0")
        if self.shard is not None and self.shard < 0:
            raise ValueError(f"--shard must be >= 0, not {self.shard}")
        if self.workers < 1 or self.workers > self.count:
            raise ValueError("--workers must be between 1 and --count")
        if self.report not in ("text", "json"):
            raise ValueError("--report is text or json")
        if self.loop not in ("auto", "asyncio", "uvloop"):
            raise ValueError("--loop is auto, asyncio or uvloop")
        if not 0.0 <= self.charging_ratio <= 1.0:
            raise ValueError("--charging-ratio must be between 0 and 1")
        if self.ramp < 0 or self.duration < 0 or self.session_s <= 0:
            raise ValueError("--ramp and --duration must be >= 0, --session-s > 0")
        if self.evses < 1:
            raise ValueError("--evses must be at least 1")
        width = self.id_width or max(5, len(str(self.first + self.count - 1)))
        if len(str(self.first + self.count - 1)) > width:
            raise ValueError(f"--id-width {width} is too small for station number "
                             f"{self.first + self.count - 1}")
        if len(self.id_prefix) + width > 48:
            raise ValueError("--id-prefix is too long for a 48-character station id")


@dataclass
class SwarmSummary:
    """What the swarm did, counted on the stations' side of the wire."""

    stations: int = 0  # started
    booted: int = 0  # accepted at least once
    all_booted_after_s: float | None = None
    max_connected: int = 0
    sessions_started: int = 0  # transaction starts the CSMS acknowledged
    sessions_completed: int = 0  # transaction ends the CSMS acknowledged
    auth_accepted: int = 0  # Authorize answers accepting the card
    auth_refused: Counter = field(default_factory=Counter)  # the others, by status
    # Cards the CSMS refused in its answer to a transaction message (1.6 StartTransaction,
    # 2.0.1 TransactionEvent), e.g. a session started on a cached or offline authorization.
    tx_auth_refused: int = 0
    sent: Counter = field(default_factory=Counter)  # our CALLs by action
    acknowledged: Counter = field(default_factory=Counter)  # CALLRESULTs to our CALLs
    received: Counter = field(default_factory=Counter)  # CSMS CALLs by action
    call_errors_received: int = 0
    call_errors_sent: int = 0
    connection_failures: int = 0
    errors_logged: int = 0
    last_error: str | None = None
    elapsed_s: float = 0.0
    cpu_s: float = 0.0
    peak_rss_kb: int = 0  # of the process; merged: of the biggest worker
    rss_per_station_kb: float | None = None
    interrupted: bool = False
    # Seconds from each station's start to its first accepted BootNotification.
    boot_s: list[float] = field(default_factory=list)
    workers: int = 1  # processes this summary adds up

    @property
    def failed(self) -> int:
        """Stations started that were never accepted."""
        return self.stations - self.booted

    def boot_percentile(self, p: float) -> float | None:
        """Nearest-rank percentile of the boot times (p in 0..100), None before any boot."""
        if not self.boot_s:
            return None
        ordered = sorted(self.boot_s)
        rank = max(1, math.ceil(p / 100 * len(ordered)))
        return ordered[min(rank, len(ordered)) - 1]

    def to_json(self) -> dict[str, Any]:
        """Everything, as JSON types (what a worker or a shard reports for merging)."""
        doc = {f.name: getattr(self, f.name) for f in fields(self)}
        for name in ("auth_refused", "sent", "acknowledged", "received"):
            doc[name] = dict(doc[name])
        doc["boot_s"] = [round(x, 4) for x in self.boot_s]
        return doc

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> SwarmSummary:
        known = {f.name for f in fields(cls)}
        summary = cls(**{k: v for k, v in doc.items() if k in known})
        for name in ("auth_refused", "sent", "acknowledged", "received"):
            setattr(summary, name, Counter(getattr(summary, name) or {}))
        return summary

    @classmethod
    def merge(cls, parts: list[SwarmSummary]) -> SwarmSummary:
        """One summary of several processes: counts add up, times and the peak take the
        largest, memory per station is the total grown over the total of stations."""
        out = cls(workers=0)
        rss_total = 0.0
        rss_stations = 0
        for part in parts:
            for name in ("stations", "booted", "sessions_started", "sessions_completed",
                         "auth_accepted", "tx_auth_refused", "call_errors_received",
                         "call_errors_sent", "connection_failures", "errors_logged",
                         "max_connected", "workers"):
                setattr(out, name, getattr(out, name) + getattr(part, name))
            for name in ("auth_refused", "sent", "acknowledged", "received"):
                getattr(out, name).update(getattr(part, name))
            out.cpu_s += part.cpu_s
            out.elapsed_s = max(out.elapsed_s, part.elapsed_s)
            out.peak_rss_kb = max(out.peak_rss_kb, part.peak_rss_kb)
            out.boot_s.extend(part.boot_s)
            out.interrupted = out.interrupted or part.interrupted
            out.last_error = part.last_error or out.last_error
            if part.rss_per_station_kb is not None and part.stations:
                rss_total += part.rss_per_station_kb * part.stations
                rss_stations += part.stations
        times = [p.all_booted_after_s for p in parts]
        if parts and all(t is not None for t in times):
            out.all_booted_after_s = max(t for t in times if t is not None)
        out.rss_per_station_kb = rss_total / rss_stations if rss_stations else None
        return out

    @property
    def errors(self) -> int:
        return (self.call_errors_received + self.call_errors_sent + self.connection_failures
                + self.errors_logged)

    @property
    def messages(self) -> int:
        return sum(self.sent.values())


class _ErrorCounter(logging.Handler):
    """Counts ERROR records from every agent: 2,000 stations must not print 2,000 lines."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.count = 0
        self.last: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        with contextlib.suppress(Exception):
            self.last = f"{record.name}: {record.getMessage()}"[:200]


class _Station:
    """One simulated charger: the real agent, its mock HAL and the driver using it."""

    __slots__ = ("index", "id", "agent", "hal", "rng", "tag", "driver", "booted",
                 "tx_events", "sessions", "outstanding", "last_frame", "started_at",
                 "booted_at")

    def __init__(self, index: int, station_id: str, agent: Agent, hal: MockHal,
                 rng: random.Random, tag: str) -> None:
        self.index = index
        self.id = station_id
        self.agent = agent
        self.hal = hal
        self.rng = rng
        self.tag = tag
        self.driver: asyncio.Task | None = None
        self.booted = False
        self.tx_events: dict[str, str] = {}  # 2.x TransactionEvent eventType by message id
        self.sessions = 0
        self.outstanding = 0  # our CALL in flight (0 or 1: OCPP-J allows one)
        self.last_frame = 0.0
        self.started_at = 0.0
        self.booted_at: float | None = None  # monotonic, of the first accepted boot


class Swarm:
    """Runs ``options.count`` stations until the duration is over or :meth:`request_stop`."""

    def __init__(self, options: SwarmOptions, out: TextIO = sys.stdout) -> None:
        options.validate()
        self.options = options
        self.out = out
        self.summary = SwarmSummary()
        self.stations: list[_Station] = []
        self._stop = asyncio.Event()
        self._stop_requests = 0
        self.all_booted = asyncio.Event()  # every station was accepted at least once
        self._errors = _ErrorCounter()
        self._frames = 0
        self._t0 = 0.0
        self._json = options.report == "json"
        self._tty = not self._json and hasattr(out, "isatty") and out.isatty()
        self._rng = random.Random(options.seed)
        self._state_dir: Path | None = None
        self._temporary = False
        self._memory = not options.state_dir

    # ------------------------------------------------------------------ control

    def request_stop(self) -> None:
        """Ctrl-C. First call: finish sessions and stop cleanly. Second: stop without waiting."""
        self.summary.interrupted = True
        self.stop()

    def stop(self) -> None:
        """End the run as if its duration were over (benchmarks decide when)."""
        self._stop_requests += 1
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    @property
    def frames(self) -> int:
        """Frames sent and received by all stations so far."""
        return self._frames

    # ------------------------------------------------------------------ the run

    async def run(self) -> SwarmSummary:
        opts = self.options
        # A socket each; with state files four more (database, WAL, shared memory, lock).
        _raise_nofile(opts.count * (2 if self._memory else 6 + 2 * opts.evses) + 256)
        self._setup_state_dir()
        logging.getLogger().addHandler(self._errors)
        cpu0 = _cpu_s()
        rss0 = _rss_kb()
        self._t0 = time.monotonic()
        progress = asyncio.create_task(self._progress(), name="swarm-progress")
        try:
            await self._ramp()
            if opts.duration > 0:
                left = opts.duration - (time.monotonic() - self._t0)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), max(0.0, left))
            else:
                await self._stop.wait()
            rss_running = _rss_kb()
            if self.stations:
                self.summary.rss_per_station_kb = (rss_running - rss0) / len(self.stations)
            await self._drain()
        finally:
            await self._stop_all()
            gc.unfreeze()  # the stopped agents are garbage now; let the collector have them
            progress.cancel()
            await asyncio.gather(progress, return_exceptions=True)
            logging.getLogger().removeHandler(self._errors)
            self._cleanup_state_dir()
        s = self.summary
        s.elapsed_s = time.monotonic() - self._t0
        s.cpu_s = _cpu_s() - cpu0
        s.peak_rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        s.errors_logged = self._errors.count
        s.last_error = s.last_error or self._errors.last
        self._print_summary()
        return s

    def _setup_state_dir(self) -> None:
        if self.options.state_dir:
            self._state_dir = Path(self.options.state_dir)
            self._state_dir.mkdir(parents=True, exist_ok=True)
        else:
            self._state_dir = Path(tempfile.mkdtemp(prefix="cp-agent-swarm-"))
            self._temporary = True

    def _cleanup_state_dir(self) -> None:
        if self._temporary and self._state_dir is not None:
            shutil.rmtree(self._state_dir, ignore_errors=True)

    async def _ramp(self) -> None:
        opts = self.options
        # Creating a state file (schema migrations, fsyncs) takes 7-40 ms depending on how
        # busy the disk is, opening an existing one ~1.5 ms: created in worker threads ahead of
        # the ramp, the event loop serving the running stations only ever opens them.
        with ThreadPoolExecutor(max_workers=min(16, opts.count),
                                thread_name_prefix="swarm-state") as pool:
            ids = [self._station_id(opts.first + n) for n in range(opts.count)]
            prepared = [pool.submit(_prepare_state, self._state_path(i))
                        if not self._memory else _done() for i in ids]
            try:
                await self._start_stations(ids, prepared)
            finally:
                for future in prepared:
                    future.cancel()
        # Everything built so far lives as long as the run: keep it out of the collector's
        # full scans, which at thousands of agents would pause every station at once.
        gc.collect()
        gc.freeze()

    async def _start_stations(self, ids: list[str], prepared: list[Future]) -> None:
        opts = self.options
        start = time.monotonic()
        for n, station_id in enumerate(ids):
            if self.stopping:
                return
            if opts.ramp > 0:
                delay = start + n / opts.ramp - time.monotonic()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stop.wait(), delay)
                    if self.stopping:
                        return
            await asyncio.wrap_future(prepared[n])
            station = self._build(opts.first + n, station_id)
            self.stations.append(station)
            self.summary.stations += 1
            station.started_at = time.monotonic()
            await station.agent.start()
            station.driver = asyncio.create_task(self._drive(station), name=f"drive-{station.id}")
            if n % _FREEZE_EVERY == _FREEZE_EVERY - 1:
                # The stations built so far live as long as the run: out of the collector's
                # sight already during the ramp, or each collection there would scan them
                # (seconds at 10,000 stations, every station paused meanwhile). What is
                # cyclic garbage at this moment stays until the end (gc.unfreeze()).
                gc.freeze()
            if opts.ramp == 0 and n % 50 == 49:
                await asyncio.sleep(0)  # let the loop breathe while building

    def _station_id(self, index: int) -> str:
        opts = self.options
        width = opts.id_width or max(5, len(str(opts.first + opts.count - 1)))
        return f"{opts.id_prefix}{index:0{width}d}"

    def _state_path(self, station_id: str) -> Path:
        assert self._state_dir is not None
        return self._state_dir / f"{station_id}.sqlite3"

    def _build(self, index: int, station_id: str) -> _Station:
        opts = self.options
        assert self._state_dir is not None
        rng = random.Random(f"{opts.seed}-{station_id}" if opts.seed is not None
                            else self._rng.random())
        profile = 0
        if opts.password:
            profile = 2 if opts.csms.startswith("wss://") else 1
        cfg = AgentConfig(
            station=StationConfig(id=station_id, vendor="cp-agent", model="swarm",
                                  serial_number=station_id[-25:]),
            ocpp=OcppConfig(url=opts.csms, versions=[opts.ocpp], password=opts.password,
                            security_profile=profile, compression=opts.compression,
                            defaults={
                                "MeterValueSampleInterval": opts.meter_interval,
                                "MeterValuesSampledData": "Energy.Active.Import.Register,"
                                                          "Power.Active.Import",
                            }),
            storage=StorageConfig(path=MEMORY if self._memory
                                  else str(self._state_path(station_id))),
            control=ControlConfig(socket=str(self._state_dir / "unused.sock")),
            evses=[EvseConfig(id=i) for i in range(1, opts.evses + 1)],
            hal={"driver": "mock"},
            log=LogConfig(level="warning"),
        )
        cfg.validate()
        clock = Clock()
        # No display: nobody reads a simulated station's screen, and its redraw loop would
        # cost every station CPU.
        hal = MockHal(opts.evses, monotonic=clock.monotonic, display=None,
                      ev_max_current_a=rng.choice((10.0, 16.0, 16.0, 32.0)))
        station: _Station | None = None
        tag = opts.id_tag or f"TAG{station_id}"[-20:]
        agent = Agent(cfg, clock=clock, hal=hal, control=False, state_dir=self._state_dir,
                      on_frame=lambda *a: self._on_frame(station, *a), frame_history=0)
        station = _Station(index, station_id, agent, hal, rng, tag)
        return station

    # ------------------------------------------------------------------ the driver

    async def _drive(self, st: _Station) -> None:
        """The person at the charger: idle, plug, tap, charge (maybe pause), stop, unplug."""
        opts = self.options
        rng = st.rng
        ratio = opts.charging_ratio
        if ratio <= 0:
            return
        session = opts.session_s
        idle_mean = session * (1 - ratio) / ratio
        # Start in the steady state: a share `ratio` of stations is mid-session already.
        in_session = rng.random() < ratio
        await st.agent.adapter.accepted.wait()
        while True:
            if not in_session and idle_mean > 0:
                await asyncio.sleep(rng.expovariate(1 / idle_mean))
            in_session = False
            evse = rng.randint(1, opts.evses)
            length = rng.expovariate(1 / session)
            step = min(5.0, length * 0.05)  # walking to the reader, putting the cable away
            st.hal.plug(evse)
            await asyncio.sleep(rng.uniform(0.2, 1.0) * step)
            st.hal.tap(st.tag, evse if opts.evses > 1 else None)
            st.sessions += 1
            if rng.random() < 0.3:  # the EV pauses (battery conditioning, full, timer)
                await asyncio.sleep(length * rng.uniform(0.2, 0.6))
                st.hal.set_ev_state(evse, PilotState.B)
                await asyncio.sleep(length * rng.uniform(0.05, 0.2))
                st.hal.set_ev_state(evse, PilotState.C)
                await asyncio.sleep(length * rng.uniform(0.1, 0.2))
            else:
                await asyncio.sleep(length)
            if rng.random() < 0.5:  # stops with the card first, then unplugs
                st.hal.tap(st.tag, evse if opts.evses > 1 else None)
                await asyncio.sleep(rng.uniform(0.2, 1.0) * step)
            st.hal.unplug(evse)

    # ------------------------------------------------------------------ counting

    def _on_frame(self, st: _Station | None, direction: str, kind: str, unique_id: str,
                  action: str, payload: dict) -> None:
        self._frames += 1
        s = self.summary
        if st is not None:
            st.last_frame = time.monotonic()
            if direction == "out" and kind == "CALL":
                # A new connection starts with a boot: what was in flight is gone.
                st.outstanding = 1 if action == "BootNotification" else st.outstanding + 1
            elif direction == "in" and kind in ("CALLRESULT", "CALLERROR"):
                st.outstanding = max(0, st.outstanding - 1)
        if direction == "out":
            if kind == "CALL":
                s.sent[action] += 1
                if action == "TransactionEvent" and st is not None:
                    st.tx_events[unique_id] = payload.get("eventType", "")
            elif kind == "CALLERROR":
                s.call_errors_sent += 1
            return
        if kind == "CALLRESULT":
            s.acknowledged[action] += 1
            verdict = _auth_status(payload)
            if action == "Authorize" and verdict is not None:
                if verdict == "Accepted":
                    s.auth_accepted += 1
                else:
                    s.auth_refused[verdict] += 1
            elif verdict not in (None, "Accepted") and action in ("StartTransaction",
                                                                  "TransactionEvent"):
                s.tx_auth_refused += 1
            if action == "BootNotification" and payload.get("status") == "Accepted":
                if st is not None and not st.booted:
                    st.booted = True
                    s.booted += 1
                    now = time.monotonic()
                    st.booted_at = now
                    s.boot_s.append(now - st.started_at)
                    if s.booted == self.options.count:
                        s.all_booted_after_s = now - self._t0
                        self.all_booted.set()
                        if self._json:
                            self._emit({"type": "all_booted", "after_s": s.all_booted_after_s})
            elif action == "StartTransaction":
                s.sessions_started += 1
            elif action == "StopTransaction":
                s.sessions_completed += 1
            elif action == "TransactionEvent" and st is not None:
                event = st.tx_events.pop(unique_id, "")
                if event == "Started":
                    s.sessions_started += 1
                elif event == "Ended":
                    s.sessions_completed += 1
        elif kind == "CALLERROR":
            s.call_errors_received += 1
            if st is not None:
                st.tx_events.pop(unique_id, None)
            s.last_error = f"{action} answered {payload.get('errorCode')}"
        elif kind == "CALL":
            s.received[action] += 1

    def census(self) -> tuple[int, int, int]:
        """(connected, booted now, charging now); also counts failed connection attempts."""
        connected = booted = charging = 0
        for st in self.stations:
            agent = st.agent
            link = agent.link
            if link.failed.is_set():
                link.failed.clear()
                self.summary.connection_failures += 1
                self.summary.last_error = link.last_error
            if link.state == "connected":
                connected += 1
            if agent.adapter.online:
                booted += 1
            for evse in st.hal.evses.values():
                if evse.contactor.commanded_closed:
                    charging += 1
                    break
        self.summary.max_connected = max(self.summary.max_connected, connected)
        return connected, booted, charging

    async def _progress(self) -> None:
        opts = self.options
        period = opts.progress_s if self._tty or self._json else max(opts.progress_s, 5.0)
        last_frames, last_t = 0, time.monotonic()
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            connected, booted, charging = self.census()
            rate = (self._frames - last_frames) / max(now - last_t, 1e-9)
            last_frames, last_t = self._frames, now
            errors = self.summary.errors + self._errors.count
            if self._json:
                self._emit({"type": "progress", "started": len(self.stations),
                            "connected": connected, "booted": booted, "charging": charging,
                            "frames": self._frames, "errors": errors})
                continue
            line = (f"[{now - self._t0:7.1f}s] stations {len(self.stations)}/{opts.count}  "
                    f"connected {connected}  booted {booted}  charging {charging}  "
                    f"msgs/s {rate:7.1f}  errors {errors}")
            if self._tty:
                print("\r\x1b[2K" + line, end="", file=self.out, flush=True)
            else:
                print(line, file=self.out, flush=True)

    # ------------------------------------------------------------------ the end

    async def _drain(self) -> None:
        """Drivers go home: every EV is unplugged and finished sessions are delivered."""
        for st in self.stations:
            if st.driver is not None:
                st.driver.cancel()
        await asyncio.gather(*(st.driver for st in self.stations if st.driver),
                             return_exceptions=True)
        if self._stop_requests > 1:
            return
        for st in self.stations:
            for evse_id, sim in st.hal.sims.items():
                if sim.plugged:
                    st.hal.unplug(evse_id)
        deadline = time.monotonic() + self.options.drain_s

        async def delivered(st: _Station) -> None:
            agent = st.agent
            await agent.station.settled()
            adapter = agent.adapter
            while adapter.online and self._stop_requests <= 1:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                if agent.storage.outbox_count():
                    adapter.outbox.idle.clear()
                    if agent.storage.outbox_count():
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(adapter.outbox.idle.wait(), left)
                    continue
                silent = time.monotonic() - st.last_frame
                if st.outstanding == 0 and silent >= _QUIET_S:
                    return
                await asyncio.sleep(min(left, max(_QUIET_S - silent, 0.02)))

        await asyncio.gather(*(delivered(st) for st in self.stations), return_exceptions=True)

    async def _stop_all(self) -> None:
        for st in self.stations:
            if st.driver is not None and not st.driver.done():
                st.driver.cancel()
        for i in range(0, len(self.stations), _STOP_BATCH):
            batch = self.stations[i:i + _STOP_BATCH]
            results = await asyncio.gather(*(st.agent.stop() for st in batch),
                                           return_exceptions=True)
            for st, res in zip(batch, results, strict=True):
                if isinstance(res, BaseException):
                    self.summary.errors_logged += 1
                    self.summary.last_error = f"{st.id}: stop failed: {res!r}"[:200]
        self.census()

    def _print_summary(self) -> None:
        if self._json:
            self._emit(summary_doc(self.summary, self.options))
            return
        if self._tty:
            print(file=self.out)
        print_summary(self.summary, self.options, self.out)

    def _emit(self, doc: dict[str, Any]) -> None:
        """One JSON line on the output (``--report json``: workers, shards, scripts)."""
        print(json.dumps(doc, separators=(",", ":")), file=self.out, flush=True)


def summary_doc(summary: SwarmSummary, opts: SwarmOptions) -> dict[str, Any]:
    """The last line of ``--report json``: the summary and the range it covers."""
    return {"type": "summary", "summary": summary.to_json(), "options": {
        "csms": opts.csms, "ocpp": opts.ocpp, "ramp": opts.ramp,
        "charging_ratio": opts.charging_ratio, "first": opts.first, "count": opts.count,
        "shard": opts.shard}}


def print_summary(s: SwarmSummary, opts: SwarmOptions, out: TextIO) -> None:
    """The human summary of one swarm process, or of several merged."""
    booted_at = (f", all booted after {s.all_booted_after_s:.1f} s"
                 if s.all_booted_after_s is not None else "")
    per_station = (f", {s.rss_per_station_kb / 1024:.2f} MB per station"
                   if s.rss_per_station_kb is not None else "")
    sent = ", ".join(f"{a} {n}" for a, n in sorted(s.sent.items()))
    received = ", ".join(f"{a} {n}" for a, n in sorted(s.received.items())) or "none"
    p50, p99 = s.boot_percentile(50), s.boot_percentile(99)
    boot = (f"; boot p50 {p50:.2f} s, p99 {p99:.2f} s" if p50 is not None and p99 is not None
            else "")
    workers = f" in {s.workers} processes" if s.workers > 1 else ""
    print("", file=out)
    print("Swarm summary" + (" (interrupted)" if s.interrupted else ""), file=out)
    print(f"  CSMS             {opts.csms} (OCPP {opts.ocpp})", file=out)
    print(f"  duration         {s.elapsed_s:.1f} s (ramp "
          f"{opts.ramp:g} stations/s, charging ratio {opts.charging_ratio:g})", file=out)
    print(f"  stations         {s.stations} started{workers}, {s.booted} booted{booted_at}, "
          f"{s.failed} never booted, at most {s.max_connected} connected at once{boot}",
          file=out)
    print(f"  sessions         {s.sessions_started} started, {s.sessions_completed} "
          f"completed", file=out)
    refused = sum(s.auth_refused.values())
    why = ", ".join(f"{status} {n}" for status, n in sorted(s.auth_refused.items()))
    print(f"  authorizations   {s.auth_accepted} accepted, {refused} refused"
          + (f" ({why})" if why else "")
          + (f"; {s.tx_auth_refused} card(s) refused in transaction answers"
             if s.tx_auth_refused else ""), file=out)
    print(f"  messages sent    {s.messages} CALLs ({s.messages / max(s.elapsed_s, 1e-9):.1f}"
          f"/s): {sent}", file=out)
    print(f"  answers          {sum(s.acknowledged.values())} CALLRESULTs, "
          f"{s.call_errors_received} CALLERRORs", file=out)
    print(f"  CSMS requests    {received}", file=out)
    print(f"  errors           {s.errors} (failed connection attempts "
          f"{s.connection_failures}, CALLERRORs received {s.call_errors_received}, sent "
          f"{s.call_errors_sent}, logged {s.errors_logged})"
          + (f"; last: {s.last_error}" if s.last_error else ""), file=out)
    load = 100 * s.cpu_s / max(s.elapsed_s, 1e-9)
    what = "processes" if s.workers > 1 else "process"
    peak = "peak RSS of the biggest" if s.workers > 1 else "peak RSS"
    print(f"  {what:<16} CPU {s.cpu_s:.1f} s ({load:.0f}% of one core), {peak} "
          f"{s.peak_rss_kb / 1024:.0f} MB{per_station}", file=out, flush=True)


# ---------------------------------------------------------------------- process helpers


def _auth_status(payload: dict) -> str | None:
    """The CSMS's verdict on a card in an answer (1.6 idTagInfo, 2.x idTokenInfo), if any."""
    info = payload.get("idTagInfo") or payload.get("idTokenInfo")
    status = info.get("status") if isinstance(info, dict) else None
    return status if isinstance(status, str) else None


def _done() -> Future:
    future: Future = Future()
    future.set_result(None)
    return future


def _prepare_state(path: Path) -> None:
    """Create (and migrate) a station's state file, in a worker thread; no-op if it exists."""
    if not path.exists():
        Storage(path).close()


def _raise_nofile(wanted: int) -> None:
    """Lift the soft limit of open files to the hard one; warn if even that is too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(wanted, soft)
    if soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft < wanted:
        log.warning("file descriptor limit %d is below the ~%d this swarm needs; raise it "
                    "(ulimit -n) or start fewer stations per process", soft, wanted)


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _rss_kb() -> int:
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            return int(f.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# Where a Kubernetes Indexed Job tells each pod its index (0 .. completions - 1).
SHARD_ENV = "JOB_COMPLETION_INDEX"


def resolve_shard(value: str | None, env_name: str = SHARD_ENV,
                  environ: dict[str, str] | None = None) -> int | None:
    """``--shard``: a number, or ``env`` for the index the environment gives (the pod's
    JOB_COMPLETION_INDEX in an Indexed Job), so one manifest starts every shard."""
    if value is None:
        return None
    text = value
    if value == "env":
        text = (os.environ if environ is None else environ).get(env_name, "")
        if not text:
            raise ValueError(f"--shard env: the environment has no {env_name} (set by a "
                             f"Kubernetes Indexed Job; give --shard N elsewhere)")
    try:
        shard = int(text)
    except ValueError:
        raise ValueError(f"--shard {value}: expected a number >= 0 or 'env'"
                         + (f", and {env_name} is {text!r}" if value == "env" else "")) from None
    if shard < 0:
        raise ValueError(f"--shard must be >= 0, not {shard}")
    return shard


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """``--loop``: uvloop (the ``swarm`` extra) cuts the event loop's own cost per timer and
    per socket write, which is most of what thousands of idle stations spend; ``auto`` uses
    it when installed. The agent's code is the same on either loop."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ValueError("--loop uvloop: uvloop is not installed "
                             "(pip install 'cp-agent[swarm]')") from None
        return None
    return uvloop.new_event_loop


def main(options: SwarmOptions, out: TextIO = sys.stdout, log_level: str = "error"
         ) -> SwarmSummary:
    """Run the swarm (or its workers) on the chosen event loop, stopping on Ctrl-C/SIGTERM."""
    with asyncio.Runner(loop_factory=loop_factory(options.loop)) as runner:
        return runner.run(run_swarm(options, out, install_signals=True, log_level=log_level))


def _on_signals(handler: Callable[[], None]) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, handler)


async def run_swarm(options: SwarmOptions, out: TextIO = sys.stdout,
                    install_signals: bool = False, log_level: str = "error") -> SwarmSummary:
    """Run a swarm to its end; with ``install_signals`` Ctrl-C / SIGTERM stop it cleanly.

    With ``options.workers`` > 1 the stations are split over that many worker processes
    (see :class:`Workers`) and the summary is theirs merged.
    """
    if options.workers > 1:
        workers = Workers(options, out, log_level=log_level)
        if install_signals:
            _on_signals(workers.request_stop)
        return await workers.run()
    swarm = Swarm(options, out)
    if install_signals:
        _on_signals(swarm.request_stop)
    return await swarm.run()


# ---------------------------------------------------------------------- worker processes

# The password reaches the workers in their environment, not on a command line `ps` shows.
PASSWORD_ENV = "CP_AGENT_SWARM_PASSWORD"


def split(options: SwarmOptions) -> list[SwarmOptions]:
    """This process's stations cut into ``workers`` contiguous, disjoint ranges.

    Each part ramps at its share of the rate, so that together they connect at ``ramp``; all
    use the id width of the last station of the whole range, so one fleet has one format.
    """
    n = options.workers
    first = options.first
    width = options.id_width or max(5, len(str(first + options.count - 1)))
    base, extra = divmod(options.count, n)
    parts = []
    for w in range(n):
        count = base + (1 if w < extra else 0)
        parts.append(replace(options, count=count, first_index=first, shard=None, workers=1,
                             report="json", id_width=width,
                             ramp=options.ramp * count / options.count))
        first += count
    return parts


def worker_argv(part: SwarmOptions, log_level: str = "error") -> list[str]:
    """The command line of one worker: `cp-agent swarm` itself, reporting JSON lines."""
    argv = [sys.executable, "-m", "agent", "swarm", "--csms", part.csms,
            "--count", str(part.count), "--first-index", str(part.first),
            "--id-width", str(part.id_width), "--id-prefix", part.id_prefix,
            "--ocpp", part.ocpp, "--charging-ratio", repr(part.charging_ratio),
            "--ramp", repr(part.ramp), "--duration", repr(part.duration),
            "--session-s", repr(part.session_s), "--meter-interval", str(part.meter_interval),
            "--evses", str(part.evses), "--report", "json", "--loop", part.loop,
            "--log-level", log_level, "--compression", "on" if part.compression else "off"]
    for flag, value in (("--id-tag", part.id_tag), ("--state-dir", part.state_dir),
                        ("--seed", part.seed)):
        if value is not None:
            argv += [flag, str(value)]
    return argv


class _Worker:
    __slots__ = ("part", "proc", "progress", "summary", "booted_at", "reader")

    def __init__(self, part: SwarmOptions) -> None:
        self.part = part
        self.proc: asyncio.subprocess.Process | None = None
        self.progress: dict[str, Any] = {}
        self.summary: SwarmSummary | None = None
        self.booted_at: float | None = None
        self.reader: asyncio.Task | None = None


class Workers:
    """``--workers N``: N `cp-agent swarm` processes on disjoint station ranges, one summary.

    Each worker is the same entry point a Kubernetes pod runs (``--report json``), started in
    its own session so that a terminal's Ctrl-C reaches only this parent, which passes each
    stop request on exactly once: the first lets every worker finish its sessions and
    deliver their StopTransactions, a second one stops them without waiting.
    """

    def __init__(self, options: SwarmOptions, out: TextIO = sys.stdout, *,
                 log_level: str = "error") -> None:
        options.validate()
        self.options = options
        self.out = out
        self.log_level = log_level
        self.workers = [_Worker(part) for part in split(options)]
        self.all_booted = asyncio.Event()
        self.interrupted = False
        self._t0 = 0.0
        self._tty = hasattr(out, "isatty") and out.isatty()

    def request_stop(self) -> None:
        self.interrupted = True
        for w in self.workers:
            if w.proc is not None and w.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(signal.SIGINT)

    async def run(self) -> SwarmSummary:
        env = dict(os.environ)
        if self.options.password:
            env[PASSWORD_ENV] = self.options.password
        self._t0 = time.monotonic()
        for w in self.workers:
            w.proc = await asyncio.create_subprocess_exec(
                *worker_argv(w.part, self.log_level), stdout=asyncio.subprocess.PIPE,
                stdin=asyncio.subprocess.DEVNULL, env=env, start_new_session=True,
                limit=1 << 24)
            w.reader = asyncio.create_task(self._read(w), name="swarm-worker")
        progress = asyncio.create_task(self._progress(), name="swarm-progress")
        try:
            for w in self.workers:
                assert w.proc is not None and w.reader is not None
                await w.reader
                await w.proc.wait()
        finally:
            progress.cancel()
            await asyncio.gather(progress, return_exceptions=True)
            for w in self.workers:  # cancelled ourselves: leave no orphan behind
                if w.proc is not None and w.proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        w.proc.send_signal(signal.SIGTERM)
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(w.proc.wait(), 60)
        summary = self.summary()
        if self._tty:
            print(file=self.out)
        if self.options.report == "json":
            print(json.dumps(summary_doc(summary, self.options)), file=self.out, flush=True)
        else:
            print_summary(summary, self.options, self.out)
        return summary

    def summary(self) -> SwarmSummary:
        parts = []
        for n, w in enumerate(self.workers):
            if w.summary is not None:
                parts.append(w.summary)
                continue
            # A worker that died without its summary: its stations count as never booted.
            code = w.proc.returncode if w.proc is not None else None
            parts.append(SwarmSummary(
                stations=w.part.count, booted=int(w.progress.get("booted", 0)),
                errors_logged=1, last_error=f"worker {n} (stations {w.part.first}.."
                f"{w.part.first + w.part.count - 1}) ended (exit status {code}) without a "
                f"summary"))
        merged = SwarmSummary.merge(parts)
        booted = [w.booted_at for w in self.workers if w.booted_at is not None]
        # The parent's clock, from its start: worker start-up included.
        merged.all_booted_after_s = max(booted) if len(booted) == len(self.workers) else None
        merged.interrupted = merged.interrupted or self.interrupted
        return merged

    async def _read(self, w: _Worker) -> None:
        assert w.proc is not None and w.proc.stdout is not None
        async for raw in w.proc.stdout:
            try:
                doc = json.loads(raw)
            except ValueError:
                continue  # not ours (a library printing): ignored
            kind = doc.get("type") if isinstance(doc, dict) else None
            if kind == "progress":
                w.progress = doc
            elif kind == "all_booted":
                w.booted_at = time.monotonic() - self._t0
                if all(x.booted_at is not None for x in self.workers):
                    self.all_booted.set()
            elif kind == "summary":
                w.summary = SwarmSummary.from_json(doc["summary"])

    async def _progress(self) -> None:
        opts = self.options
        period = opts.progress_s if self._tty else max(opts.progress_s, 5.0)
        last_frames, last_t = 0, time.monotonic()
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            total = {k: sum(int(w.progress.get(k, 0)) for w in self.workers)
                     for k in ("started", "connected", "booted", "charging", "frames",
                               "errors")}
            rate = (total["frames"] - last_frames) / max(now - last_t, 1e-9)
            last_frames, last_t = total["frames"], now
            running = sum(1 for w in self.workers
                          if w.proc is not None and w.proc.returncode is None)
            if opts.report == "json":
                print(json.dumps({"type": "progress", **total}), file=self.out, flush=True)
                continue
            line = (f"[{now - self._t0:7.1f}s] workers {running}/{len(self.workers)}  "
                    f"stations {total['started']}/{opts.count}  connected "
                    f"{total['connected']}  booted {total['booted']}  charging "
                    f"{total['charging']}  msgs/s {rate:7.1f}  errors {total['errors']}")
            if self._tty:
                print("\r\x1b[2K" + line, end="", file=self.out, flush=True)
            else:
                print(line, file=self.out, flush=True)


def merge_reports(lines: list[str], out: TextIO = sys.stdout) -> SwarmSummary:
    """The merged summary of the JSON reports of several swarm processes (the pods of a
    Kubernetes Indexed Job: ``kubectl logs ... | cp-agent swarm --merge -``)."""
    parts: list[SwarmSummary] = []
    options: list[dict[str, Any]] = []
    for line in lines:
        line = line.strip()
        if not line.startswith("{"):
            continue  # kubectl's prefixes, blank lines, anything else
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if isinstance(doc, dict) and doc.get("type") == "summary":
            parts.append(SwarmSummary.from_json(doc["summary"]))
            options.append(doc.get("options") or {})
    if not parts:
        raise ValueError("no swarm summary found (the lines a `cp-agent swarm --report json` "
                         "process prints last)")
    merged = SwarmSummary.merge(parts)
    first = options[0]
    view = SwarmOptions(csms=str(first.get("csms", "?")), count=merged.stations or 1,
                        ocpp=str(first.get("ocpp", "?")),
                        ramp=sum(float(o.get("ramp", 0)) for o in options),
                        charging_ratio=float(first.get("charging_ratio", 0)))
    ranges = sorted((int(o["first"]), int(o["count"])) for o in options
                    if "first" in o and "count" in o)
    for (a, n), (b, _) in itertools.pairwise(ranges):
        if b < a + n:
            merged.last_error = (f"station ranges overlap: {a}..{a + n - 1} and from {b} "
                                 f"(two shards with the same index?)")
            merged.errors_logged += 1
    print_summary(merged, view, out)
    return merged


__all__ = ["PASSWORD_ENV", "SHARD_ENV", "Swarm", "SwarmOptions", "SwarmSummary", "Workers",
           "loop_factory", "main", "merge_reports", "print_summary", "resolve_shard", "run_swarm",
           "split", "worker_argv"]
