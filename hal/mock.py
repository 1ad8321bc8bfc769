"""The mock HAL: a simulated station and EV, indistinguishable from real drivers above the HAL.

The simulated EV follows IEC 61851 as a real car does: plugging in gives state B, and it moves
to C once the pilot offers at least 6 A (unless told to pause), drawing
``min(offered, ev_max_current)`` at nominal voltage on its phases.  The meter integrates
energy over the injected monotonic clock, so a fast clock in tests makes energy flow fast.
Faults are injected by name (:class:`FaultKind`) from tests or from ``cp-agent ctl``.

What it measures: the meter gives energy, power, current and voltage per phase and frequency
(no temperature sensor); the EV tells its state of charge while plugged in (from
``ev_soc_percent`` at the plug, rising with the energy into a 40 kWh battery), unless
``ev_soc_percent=None`` makes it an EV that says nothing. This EV charges only and takes no
power setpoint; ``v2x`` makes chosen EVSEs bidirectional instead (hal/mock_v2x.py).

With ``world_file`` the simulated world outlives the agent: which EVs are plugged (and
paused) and each meter's register are written to that JSON file on every change and meter
read, and read back at the next start, as a real station's EVs and billing meters outlive a
power cut or a crash of its controller (what the power-cut tests and benches need). The
contactor and the offer are not kept: every start begins with them off.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from hal.interfaces import (
    ConnectorLock,
    Contactor,
    Display,
    EvConnection,
    EvseHardware,
    FaultCleared,
    FaultKind,
    FaultRaised,
    Hal,
    HalError,
    HalEvent,
    Indicator,
    IndicatorState,
    Listener,
    MeterReading,
    PilotChanged,
    PilotState,
    PowerMeter,
    TokenPresented,
    TokenReader,
)

NOMINAL_VOLTAGE = 230.0
MIN_PILOT_CURRENT = 6.0
EV_BATTERY_WH = 40_000.0
MOCK_METER_MEASURES = frozenset({"energy_import", "energy_export", "power", "current",
                                 "voltage", "frequency"})

Monotonic = Callable[[], float]
# What ``cp-agent ctl ev EVSE --soc ...`` may change on a bidirectional EV (hal/mock_v2x.py),
# and the V2xParams field each sets: here, so that the control socket knows the names
# without loading the V2X mock on a station that has none.
EV_SETTINGS = {"soc": "soc_percent", "min_soc": "min_soc_percent",
               "max_soc": "max_soc_percent", "target_soc": "target_soc_percent",
               "battery_wh": "battery_wh", "max_charge_w": "ev_max_charge_w",
               "max_discharge_w": "ev_max_discharge_w", "bidirectional": "ev_bidirectional"}

if TYPE_CHECKING:
    from hal.mock_v2x import V2xParams

log = logging.getLogger("cp_agent.hal.mock")


class _Sim:
    """Physics of one EVSE + EV pair, shared by its mock devices."""

    def __init__(self, evse_id: int, phases: int, ev_max_current: float, now: Monotonic,
                 emit: Callable[[HalEvent], None], ev_soc: float | None = None) -> None:
        self.evse_id = evse_id
        self.phases = phases  # the phases the EV is fed on now
        self.max_phases = phases  # what the EVSE is wired for
        self.phase_switches = 0  # how often the relay switched (tests)
        self.ev_max_current = ev_max_current
        self.ev_soc = ev_soc  # the EV's state of charge when plugged (None: it never says)
        self.soc_at_plug: float | None = None
        self.wh_at_plug = 0.0
        self.now = now
        self.emit = emit
        self.plugged = False
        self.connector = 1  # which connector of the EVSE the EV is plugged into
        self.resets = 0  # EVSE resets asked of this board (tests)
        self.paused = False  # the EV does not ask for energy (stays in B)
        self.forced: PilotState | None = None  # `ctl ev EVSE STATE` / pilot fault
        self.offered = 0.0
        self.setpoint_w: float | None = None  # signed power setpoint (negative: discharge)
        # The grid as this EVSE's meter sees it (``MockHal.set_grid``; V2X frequency modes,
        # DER alarms).
        self.grid_hz = 50.0
        self.grid_v = NOMINAL_VOLTAGE
        self.coil_closed = False
        self.welded = False
        self.dropped = False  # the contactor does not close (or drops out) with the coil on
        self.meter_fault = False
        self.energy_wh = 0.0
        self._last_t = now()
        self._state = PilotState.A
        self.persist: Callable[[], None] | None = None  # the world file, if any

    # -- physics
    def pilot(self) -> PilotState:
        if self.forced is not None:
            return self.forced
        if not self.plugged:
            return PilotState.A
        if not self.paused and self.offered >= MIN_PILOT_CURRENT:
            return PilotState.C
        return PilotState.B

    def power_closed(self) -> bool:
        return (self.coil_closed and not self.dropped) or self.welded

    def current(self) -> float:
        if self.power_closed() and self.pilot().wants_energy:
            if self.offered >= MIN_PILOT_CURRENT:
                return min(self.offered, self.ev_max_current)
        return 0.0

    def power(self) -> float:
        return self.current() * NOMINAL_VOLTAGE * self.phases

    def arrive(self, soc: float | None = None) -> None:
        """An EV is plugged in (integrated up to now): its SoC counts from here."""
        if not self.plugged:
            self.wh_at_plug = self.energy_wh
            self.soc_at_plug = self.ev_soc if soc is None else soc

    def soc(self) -> float | None:
        if not self.plugged or self.soc_at_plug is None:
            return None
        self.integrate()
        gained = (self.energy_wh - self.wh_at_plug) / EV_BATTERY_WH * 100.0
        return round(min(100.0, self.soc_at_plug + gained), 2)

    def integrate(self) -> None:
        t = self.now()
        dt = max(0.0, t - self._last_t)
        self._last_t = t
        self.energy_wh += self.power() * dt / 3600.0

    def changed(self) -> None:
        """Call after any input changed: integrates up to now, emits a pilot change if any."""
        new = self.pilot()
        if new != self._state:
            self._state = new
            self.emit(PilotChanged(self.evse_id, new))
        if self.persist is not None:
            self.persist()

    def world(self) -> dict:
        """What outlives the agent process (see the module's ``world_file``)."""
        self.integrate()
        return {"plugged": self.plugged, "paused": self.paused, "connector": self.connector,
                "energy_wh": self.energy_wh, "wh_at_plug": self.wh_at_plug,
                "soc_at_plug": self.soc_at_plug}

    def restore(self, world: dict) -> None:
        self.plugged = bool(world.get("plugged", False))
        self.paused = bool(world.get("paused", False))
        self.connector = int(world.get("connector", 1))
        self.energy_wh = float(world.get("energy_wh", 0.0))
        self.wh_at_plug = float(world.get("wh_at_plug", 0.0))
        soc = world.get("soc_at_plug")
        self.soc_at_plug = float(soc) if soc is not None else None
        self._state = self.pilot()


class MockContactor(Contactor):
    def __init__(self, sim: _Sim) -> None:
        self._sim = sim

    async def set(self, closed: bool) -> None:
        self._sim.integrate()
        self._sim.coil_closed = closed
        self._sim.changed()
        fb = self.feedback_closed()
        if fb != closed:
            kind = FaultKind.WELDED if fb else FaultKind.CONTACTOR_FAILED
            raise HalError(kind, f"evse {self._sim.evse_id}: contactor feedback "
                                 f"{'closed' if fb else 'open'} while commanded "
                                 f"{'closed' if closed else 'open'}")

    @property
    def commanded_closed(self) -> bool:
        return self._sim.coil_closed

    def feedback_closed(self) -> bool | None:
        return self._sim.power_closed()


class MockMeter(PowerMeter):
    def __init__(self, sim: _Sim) -> None:
        self._sim = sim
        # The last reading and what it was made of: an idle EVSE reads the same every
        # second, and a reading is immutable, so the same one is handed out again.
        self._last: tuple[tuple[float, float, int, float, float], MeterReading] | None = None

    @property
    def answers_at_once(self) -> bool:
        """Whether read() never suspends (so needs no timeout, and :meth:`read_now` gives
        the same reading without a coroutine): this class's read, not a subclass's that may
        wait for something (tests gate or delay reads that way)."""
        return type(self).read is MockMeter.read

    @property
    def phases(self) -> int:
        return self._sim.phases

    @property
    def measures(self) -> frozenset[str]:
        return MOCK_METER_MEASURES

    async def read(self) -> MeterReading:
        return self.read_now()

    def read_now(self) -> MeterReading:
        """The reading, synchronously: what the station's shared meter tick calls (one
        function call per station and second instead of a coroutine and a task step)."""
        sim = self._sim
        if sim.meter_fault:
            raise HalError(FaultKind.METER, f"evse {sim.evse_id}: meter does not answer")
        sim.integrate()
        if sim.persist is not None:
            sim.persist()
        amps = sim.current()
        n = sim.phases
        key = (sim.energy_wh, amps, n, sim.grid_v, sim.grid_hz)
        last = self._last
        if last is not None and last[0] == key:
            return last[1]
        reading = MeterReading(
            energy_import_wh=round(sim.energy_wh, 3),
            power_w=round(amps * NOMINAL_VOLTAGE * n, 1),  # = sim.power(), not recomputed
            voltage_v=(sim.grid_v,) * n,
            current_a=(round(amps, 2),) * n,
            frequency_hz=sim.grid_hz,
        )
        self._last = (key, reading)
        return reading


class MockGridMeter(PowerMeter):
    """The meter of the whole connection (house or depot): the other loads on it
    (``MockHal.house_load_a``, the same on every phase) plus the station's own EVSEs."""

    def __init__(self, hal: MockHal) -> None:
        self._hal = hal

    async def read(self) -> MeterReading:
        hal = self._hal
        if hal.grid_meter_silent:
            raise HalError(FaultKind.METER, "grid meter does not answer")
        amps = [hal.house_load_a] * 3
        for sim in hal.sims.values():
            sim.integrate()
            for phase in range(min(3, sim.phases)):
                amps[phase] += sim.current()
        return MeterReading(
            energy_import_wh=0.0,
            power_w=round(sum(amps) * NOMINAL_VOLTAGE, 1),
            voltage_v=(NOMINAL_VOLTAGE,) * 3,
            current_a=tuple(round(a, 3) for a in amps),
            frequency_hz=50.0,
        )


class MockEv(EvConnection):
    def __init__(self, sim: _Sim) -> None:
        self._sim = sim

    def pilot_state(self) -> PilotState:
        return self._sim.pilot()

    async def set_current_limit(self, amps: float) -> None:
        self._sim.integrate()
        self._sim.offered = max(0.0, float(amps))
        self._sim.changed()

    @property
    def current_limit(self) -> float:
        return self._sim.offered

    @property
    def measures(self) -> frozenset[str]:
        return frozenset() if self._sim.ev_soc is None else frozenset({"soc"})

    @property
    def soc_percent(self) -> float | None:
        return self._sim.soc()

    # The plain mock EV is a pilot-only AC car: it takes no setpoint (the default of the
    # interface). A bidirectional EV and power stage are hal/mock_v2x.py (``v2x`` option),
    # whose EV side overrides these.
    @property
    def power_setpoint(self) -> float | None:
        return self._sim.setpoint_w

    # A three-phase mock EVSE has the phase-selection relay of 3-to-1 switching boards.
    @property
    def supports_phase_switch(self) -> bool:
        return self._sim.max_phases == 3

    async def set_phases(self, n: int) -> None:
        sim = self._sim
        if not self.supports_phase_switch or n not in (1, 3):
            raise HalError(FaultKind.EV_BOARD, f"evse {sim.evse_id}: cannot feed {n} phase(s)")
        if sim.coil_closed:  # a relay switched under load arcs: the core must open first
            raise HalError(FaultKind.EV_BOARD,
                           f"evse {sim.evse_id}: phase switch with the contactor closed")
        sim.integrate()
        if sim.phases != n:
            sim.phases = n
            sim.phase_switches += 1

    @property
    def phases_in_use(self) -> int | None:
        return self._sim.phases

    @property
    def plugged_connector(self) -> int | None:
        return self._sim.connector if self._sim.plugged else None


class MockLock(ConnectorLock):
    def __init__(self) -> None:
        self._locked = False
        self.fail = False

    async def set_locked(self, locked: bool) -> bool:
        if self.fail:
            return False
        self._locked = locked
        return True

    @property
    def locked(self) -> bool:
        return self._locked


class MockIndicator(Indicator):
    def __init__(self) -> None:
        self.state = IndicatorState.OFF

    def show(self, state: IndicatorState) -> None:
        self.state = state


class MockDisplay(Display):
    """A character display that keeps what it was told to show (``ctl status``, the status
    page, tests). It holds the core to the contract a real LCD has: too many rows or too long
    a line is an error here, not silently cut off as on the glass."""

    def __init__(self, columns: int = 20, rows: int = 4) -> None:
        self._columns = columns
        self._rows = rows
        self.lines: list[str] = [""] * rows
        self.writes = 0  # how often the screen was redrawn (redraw-on-change tests)
        self.broken = False  # the display stops taking text (the core must charge on)

    @property
    def columns(self) -> int:
        return self._columns

    @property
    def rows(self) -> int:
        return self._rows

    async def show(self, lines: Sequence[str]) -> None:
        if self.broken:
            raise HalError(FaultKind.INTERNAL, "mock display does not answer")
        if len(lines) > self._rows:
            raise HalError(FaultKind.INTERNAL, f"{len(lines)} lines for a display of "
                                               f"{self._rows} rows")
        for line in lines:
            if len(line) > self._columns:
                raise HalError(FaultKind.INTERNAL, f"line {line!r} is longer than "
                                                   f"{self._columns} columns")
        self.lines = [*lines, *[""] * (self._rows - len(lines))]
        self.writes += 1


class MockReader(TokenReader):
    def __init__(self, name: str = "rfid") -> None:
        self.name = name
        self.gone = False

    def healthy(self) -> bool:
        return not self.gone


class MockHal(Hal):
    """A station of ``evse_count`` EVSEs with simulated EVs, one shared RFID reader."""

    def __init__(self, evse_count: int = 1, *, phases: int = 3, max_current_a: float = 32.0,
                 ev_max_current_a: float = 16.0, ev_soc_percent: float | None = 30.0,
                 monotonic: Monotonic = time.monotonic,
                 display: tuple[int, int] | None = (20, 4),
                 world_file: str | None = None,
                 v2x: Mapping[int, V2xParams] | None = None) -> None:
        """``v2x``: the EVSEs whose EV and power stage are bidirectional, each with its EV's
        battery and limits (hal/mock_v2x.py); the others keep the plain charge-only EV."""
        super().__init__()
        # A bench rig's 20x4 character LCD unless told otherwise (columns, rows; None: none).
        self.display: MockDisplay | None = MockDisplay(*display) if display else None
        self._listener: Listener | None = None
        self._pending: list[HalEvent] = []
        self.sims: dict[int, _Sim] = {}
        self.reader = MockReader()
        self.readers = [self.reader]
        self.house_load_a = 0.0  # the other loads on the site's connection, per phase
        self.grid_meter_silent = False  # the simulated grid meter stops answering
        self._grid_meter: MockGridMeter | None = None
        for evse_id in range(1, evse_count + 1):
            sim = _Sim(evse_id, phases, ev_max_current_a, monotonic, self._emit,
                       ev_soc=ev_soc_percent)
            self.sims[evse_id] = sim
            self.evses[evse_id] = EvseHardware(
                evse_id=evse_id,
                contactor=MockContactor(sim),
                meter=MockMeter(sim),
                ev=MockEv(sim),
                lock=MockLock(),
                indicator=MockIndicator(),
                max_current_a=max_current_a,
                phases=phases,
            )
        if v2x:
            from hal.mock_v2x import make_bidirectional

            for evse_id, params in v2x.items():
                make_bidirectional(self, self._sim(evse_id).evse_id, params)
        self.world_file = world_file
        if world_file is not None:
            self._load_world(world_file)
            for sim in self.sims.values():
                sim.persist = self._save_world

    def _load_world(self, path: str) -> None:
        try:
            with open(path, encoding="utf-8") as f:
                world = json.load(f)
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("mock world file %s not read, starting afresh: %s", path, exc)
            return
        for key, state in (world.get("evses") or {}).items():
            sim = self.sims.get(int(key))
            if sim is not None and isinstance(state, dict):
                sim.restore(state)

    def _save_world(self) -> None:
        path = self.world_file
        if path is None:
            return
        tmp = f"{path}.tmp"
        try:
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump({"evses": {str(i): sim.world() for i, sim in self.sims.items()}}, f)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("mock world file %s not written: %s", path, exc)
            with contextlib.suppress(OSError):
                os.unlink(tmp)

    def _emit(self, event: HalEvent) -> None:
        if self._listener is None:
            self._pending.append(event)
        else:
            self._listener(event)

    async def start(self, listener: Listener) -> None:
        for evse in self.evses.values():
            try:
                await evse.contactor.set(False)
            except HalError as exc:  # welded at start-up: reported, never hidden
                self._pending.append(FaultRaised(evse.evse_id, exc.kind, str(exc)))
        self._listener = listener
        pending, self._pending = self._pending, []
        for event in pending:
            listener(event)

    async def stop(self) -> None:
        for evse in self.evses.values():
            try:
                await evse.contactor.set(False)
            except HalError:
                pass
            await evse.ev.set_current_limit(0)
        self._listener = None

    async def reset_evse(self, evse_id: int) -> None:
        """The simulated board restarts: its PWM is off (the EV, still plugged, waits in B)."""
        sim = self._sim(evse_id)
        sim.integrate()
        sim.resets += 1
        sim.offered = 0.0
        sim.changed()

    def grid_meter(self) -> MockGridMeter:
        """The simulated meter of the whole connection (``site.grid_meter: {type: mock}``)."""
        if self._grid_meter is None:
            self._grid_meter = MockGridMeter(self)
        return self._grid_meter

    # ------------------------------------------------------------ bench controls

    def set_grid(self, *, frequency_hz: float | None = None,
                 voltage_v: float | None = None) -> dict:
        """The grid every EVSE's meter measures (``ctl grid-frequency``, ``ctl grid-voltage``):
        what the V2X frequency modes and the DER controls read."""
        for name, value, low, high in (("frequency", frequency_hz, 40.0, 70.0),
                                       ("voltage", voltage_v, 50.0, 500.0)):
            if value is not None and not low <= float(value) <= high:
                raise ValueError(f"grid {name} {value!r}: expected a number in [{low:g}, "
                                 f"{high:g}]")
        for sim in self.sims.values():
            sim.integrate()
            if frequency_hz is not None:
                sim.grid_hz = float(frequency_hz)
            if voltage_v is not None:
                sim.grid_v = float(voltage_v)
        first = next(iter(self.sims.values()), None)
        return {"frequency_hz": first.grid_hz if first else None,
                "voltage_v": first.grid_v if first else None}

    def set_house_load(self, amps: float) -> None:
        """The other loads on the connection (house, depot), in amps per phase."""
        amps = float(amps)
        if not 0 <= amps <= 10_000:
            raise ValueError(f"house load {amps:g} A: expected amps in [0, 10000]")
        self.house_load_a = amps

    def set_ev(self, evse_id: int, **changes: object) -> dict:
        """Change the bidirectional EV of ``evse_id`` (battery, state of charge, limits:
        hal/mock_v2x.py ``EV_SETTINGS``); the EV as it is afterwards."""
        from hal.mock_v2x import set_ev

        return set_ev(self, evse_id, **changes)

    def _sim(self, evse_id: int) -> _Sim:
        try:
            return self.sims[evse_id]
        except KeyError:
            raise ValueError(f"no EVSE {evse_id} (this station has {sorted(self.sims)})") from None

    def plug(self, evse_id: int, *, ev_max_current_a: float | None = None,
             soc_percent: float | None = None, connector: int = 1) -> None:
        """An EV arrives (``soc_percent``: its state of charge, else the HAL's default), at
        ``connector`` of an EVSE with several."""
        sim = self._sim(evse_id)
        if not isinstance(connector, int) or connector < 1:
            raise ValueError(f"connector {connector!r}: expected an id >= 1")
        sim.integrate()
        sim.arrive(soc_percent)
        sim.connector = connector
        sim.plugged = True
        sim.paused = False
        if ev_max_current_a is not None:
            sim.ev_max_current = ev_max_current_a
        sim.changed()

    def unplug(self, evse_id: int) -> None:
        sim = self._sim(evse_id)
        sim.integrate()
        sim.plugged = False
        sim.paused = False
        if sim.forced in (PilotState.B, PilotState.C, PilotState.D):
            sim.forced = None
        sim.changed()

    def set_ev_state(self, evse_id: int, state: PilotState | str) -> None:
        """Force what the EV does: A unplugs, B pauses, C/D resume asking, E/F are pilot faults."""
        state = PilotState(state)
        sim = self._sim(evse_id)
        sim.integrate()
        if state in (PilotState.B, PilotState.C, PilotState.D):
            sim.arrive()
        if state == PilotState.A:
            sim.plugged, sim.paused, sim.forced = False, False, None
        elif state == PilotState.B:
            sim.plugged, sim.paused, sim.forced = True, True, None
        elif state == PilotState.C:
            sim.plugged, sim.paused, sim.forced = True, False, None
        else:  # D is C with ventilation; E/F are errors and override everything
            if state == PilotState.D:
                sim.plugged, sim.paused = True, False
            sim.forced = state
        sim.changed()

    def tap(self, uid: str, evse_id: int | None = None) -> bool:
        """Present a card; returns False when the reader is faulted (the tap is lost)."""
        if evse_id is not None:
            self._sim(evse_id)
        if self.reader.gone:
            return False
        self._emit(TokenPresented(uid=uid, evse_id=evse_id, reader=self.reader.name))
        return True

    def inject_fault(self, evse_id: int, kind: FaultKind | str) -> None:
        kind = FaultKind(kind)
        if kind == FaultKind.READER:
            self.reader.gone = True
            self._emit(FaultRaised(0, kind, "mock reader unplugged"))
            return
        sim = self._sim(evse_id)
        sim.integrate()
        if kind == FaultKind.METER:
            sim.meter_fault = True  # discovered by the core on its next read
        elif kind == FaultKind.WELDED:
            sim.welded = True
            if not sim.coil_closed:
                self._emit(FaultRaised(evse_id, kind, "feedback closed while coil open"))
        elif kind == FaultKind.CONTACTOR_FAILED:
            sim.dropped = True  # as the GPIO driver's feedback watch reports a drop-out
            if sim.coil_closed:
                self._emit(FaultRaised(evse_id, kind, "feedback opened while the coil is on"))
        elif kind == FaultKind.PILOT:
            sim.forced = PilotState.E
        elif kind == FaultKind.LOCK:
            lock = self.evses[evse_id].lock
            assert isinstance(lock, MockLock)
            lock.fail = True
        else:
            self._emit(FaultRaised(evse_id, kind, "injected"))
        sim.changed()

    def fail_diode(self, evse_id: int) -> None:
        """The EV's pilot diode goes missing (or CP shorts while the PWM runs): reported as
        hal/drivers/direct_pilot.py reports its diode check, a PILOT fault and state F."""
        sim = self._sim(evse_id)
        sim.integrate()
        self._emit(FaultRaised(evse_id, FaultKind.PILOT,
                               "diode check failed: pilot low level +0.0 V, expected -12 V "
                               "(EV diode missing or CP shorted)"))
        sim.forced = PilotState.F
        sim.changed()

    def clear_fault(self, evse_id: int, kind: FaultKind | str) -> None:
        kind = FaultKind(kind)
        if kind == FaultKind.READER:
            self.reader.gone = False
            self._emit(FaultCleared(0, kind))
            return
        sim = self._sim(evse_id)
        sim.integrate()
        if kind == FaultKind.METER:
            sim.meter_fault = False
        elif kind == FaultKind.WELDED:
            sim.welded = False
        elif kind == FaultKind.CONTACTOR_FAILED:
            sim.dropped = False
        elif kind == FaultKind.PILOT:
            if sim.forced in (PilotState.E, PilotState.F):
                sim.forced = None
        elif kind == FaultKind.LOCK:
            lock = self.evses[evse_id].lock
            assert isinstance(lock, MockLock)
            lock.fail = False
        sim.changed()
        self._emit(FaultCleared(evse_id, kind))
