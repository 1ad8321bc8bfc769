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
import logging
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

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
from agent.storage import Storage
from hal.interfaces import PilotState
from hal.mock import MockHal

log = logging.getLogger("cp_agent.swarm")

# Agents stopped at once at the end: each stop closes a websocket and a database.
_STOP_BATCH = 200
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
    state_dir: str | None = None  # default: a temporary directory, removed at the end
    seed: int | None = None
    progress_s: float = 1.0
    drain_s: float = 15.0  # at the end, how long finished sessions may take to be delivered

    def validate(self) -> None:
        if self.count < 1:
            raise ValueError("--count must be at least 1")
        if not 0.0 <= self.charging_ratio <= 1.0:
            raise ValueError("--charging-ratio must be between 0 and 1")
        if self.ramp < 0 or self.duration < 0 or self.session_s <= 0:
            raise ValueError("--ramp and --duration must be >= 0, --session-s > 0")
        if self.evses < 1:
            raise ValueError("--evses must be at least 1")
        width = len(str(self.first_index + self.count - 1))
        if len(self.id_prefix) + max(width, 5) > 48:
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
    peak_rss_kb: int = 0
    rss_per_station_kb: float | None = None
    interrupted: bool = False

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
                 "tx_events", "sessions", "outstanding", "last_frame")

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
        self._tty = hasattr(out, "isatty") and out.isatty()
        self._rng = random.Random(options.seed)
        self._state_dir: Path | None = None
        self._temporary = False

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
        _raise_nofile(opts.count * (6 + 2 * opts.evses) + 256)
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
            ids = [self._station_id(opts.first_index + n) for n in range(opts.count)]
            prepared = [pool.submit(_prepare_state, self._state_path(i)) for i in ids]
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
            station = self._build(opts.first_index + n, station_id)
            self.stations.append(station)
            self.summary.stations += 1
            await station.agent.start()
            station.driver = asyncio.create_task(self._drive(station), name=f"drive-{station.id}")
            if opts.ramp == 0 and n % 50 == 49:
                await asyncio.sleep(0)  # let the loop breathe while building

    def _station_id(self, index: int) -> str:
        opts = self.options
        width = max(5, len(str(opts.first_index + opts.count - 1)))
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
                            security_profile=profile, defaults={
                                "MeterValueSampleInterval": opts.meter_interval,
                                "MeterValuesSampledData": "Energy.Active.Import.Register,"
                                                          "Power.Active.Import",
                            }),
            storage=StorageConfig(path=str(self._state_path(station_id))),
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
        agent = Agent(cfg, clock=clock, hal=hal, control=False,
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
                    if s.booted == self.options.count:
                        s.all_booted_after_s = time.monotonic() - self._t0
                        self.all_booted.set()
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
        period = opts.progress_s if self._tty else max(opts.progress_s, 5.0)
        last_frames, last_t = 0, time.monotonic()
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            connected, booted, charging = self.census()
            rate = (self._frames - last_frames) / max(now - last_t, 1e-9)
            last_frames, last_t = self._frames, now
            errors = self.summary.errors + self._errors.count
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
        s = self.summary
        opts = self.options
        out = self.out
        if self._tty:
            print(file=out)
        booted_at = (f", all booted after {s.all_booted_after_s:.1f} s"
                     if s.all_booted_after_s is not None else "")
        per_station = (f", {s.rss_per_station_kb / 1024:.2f} MB per station"
                       if s.rss_per_station_kb is not None else "")
        sent = ", ".join(f"{a} {n}" for a, n in sorted(s.sent.items()))
        received = ", ".join(f"{a} {n}" for a, n in sorted(s.received.items())) or "none"
        print("", file=out)
        print("Swarm summary" + (" (interrupted)" if s.interrupted else ""), file=out)
        print(f"  CSMS             {opts.csms} (OCPP {opts.ocpp})", file=out)
        print(f"  duration         {s.elapsed_s:.1f} s (ramp "
              f"{opts.ramp:g} stations/s, charging ratio {opts.charging_ratio:g})", file=out)
        print(f"  stations         {s.stations} started, {s.booted} booted{booted_at}, "
              f"at most {s.max_connected} connected at once", file=out)
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
        print(f"  process          CPU {s.cpu_s:.1f} s ({load:.0f}% of one core), peak RSS "
              f"{s.peak_rss_kb / 1024:.0f} MB{per_station}", file=out, flush=True)


# ---------------------------------------------------------------------- process helpers


def _auth_status(payload: dict) -> str | None:
    """The CSMS's verdict on a card in an answer (1.6 idTagInfo, 2.x idTokenInfo), if any."""
    info = payload.get("idTagInfo") or payload.get("idTokenInfo")
    status = info.get("status") if isinstance(info, dict) else None
    return status if isinstance(status, str) else None


def _prepare_state(path: Path) -> None:
    """Create (and migrate) a station's state file, in a worker thread; no-op if it exists."""
    if not path.exists():
        Storage(path).close()


def _raise_nofile(wanted: int) -> None:
    """Each station holds a socket and four files (database, WAL, shared memory, lock)."""
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


async def run_swarm(options: SwarmOptions, out: TextIO = sys.stdout,
                    install_signals: bool = False) -> SwarmSummary:
    """Run a swarm to its end; with ``install_signals`` Ctrl-C / SIGTERM stop it cleanly."""
    swarm = Swarm(options, out)
    if install_signals:
        import signal

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, swarm.request_stop)
    return await swarm.run()


__all__ = ["Swarm", "SwarmOptions", "SwarmSummary", "run_swarm"]

