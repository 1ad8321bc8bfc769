"""The mock HAL's bidirectional EV and power stage (``hal: {driver: mock, v2x: ...}``).

A battery with a capacity and a state of charge that moves with every watt-hour in and out,
behind a power stage that follows a signed setpoint (positive charges the EV, negative
discharges it) and whose meter counts an import and an export register separately and
reports signed power. Physics, in order of precedence:

- energy moves only while the contactor is closed (or welded), the pilot is in C/D and the
  pilot offers at least 6 A: discharging needs what charging needs;
- into the EV: at most the pilot's offer, the EV's and the stage's charge limits, and never
  past the EV's maximum state of charge;
- out of it: only when the EV is bidirectional (its energy transfer modes include a BPT
  one), at most the EV's and the stage's discharge limits, and never below the EV's minimum
  state of charge;
- without a setpoint the stage charges at what the pilot offers (as the plain mock EV does);
- ramp rates (``set_ramp_rates``, the DER Gradients control): the active power moves toward
  what it is asked at that many W/s, the soft-start rate when it starts from standstill;
  a bound that falls (offer, limits, state of charge, contactor) applies at once;
- reactive power (``set_reactive_setpoint``, DER sign: positive injects): only while the
  power path is up, within the stage's var range and what the active power leaves of its
  VA rating (active power first, as a last resort: the core leaves the room itself); the
  meter shows it in the load convention (positive: import, absorbed) with the power factor,
  and the current magnitudes carry the apparent power.

The battery is lossless and the power constant (or, while it ramps, linear) between two
events of the injected clock, so the state of charge, the registers and the integrated power
agree to the float: what the
energy-conservation tests hold it to. A state-of-charge bound reached between two samples
stops the flow at that instant (the step is cut there), as a BMS would.

Nothing here speaks ISO 15118-20: the EV's modes, limits and battery are what an
ISO 15118-20 stack would tell the charger, set from the configuration or ``cp-agent ctl ev``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from hal.interfaces import (
    EnergyTransferMode,
    EvChanged,
    EvEnergyState,
    FaultKind,
    HalError,
    HalEvent,
    MeterReading,
    PowerLimits,
    ReactiveLimits,
)
from hal.mock import (  # EV_SETTINGS: what ``ctl ev`` may change (hal/mock.py keeps it)
    EV_SETTINGS,
    MIN_PILOT_CURRENT,
    NOMINAL_VOLTAGE,
    MockEv,
    MockMeter,
    Monotonic,
    _Sim,
)

if TYPE_CHECKING:
    from hal.mock import MockHal

BIDI_MODES = ("AC_BPT", "DC_BPT")
# The reactive range of a stage that states none: 44 % of its VA rating either way, what
# IEEE 1547-2018 asks of a category B DER (EN 50549-1's cos phi 0.9 at full power is 43.6 %).
DEFAULT_VAR_SHARE = 0.44


@dataclass(frozen=True)
class V2xParams:
    """One bidirectional EV and its power stage. Powers in W (None: from the currents on the
    EVSE's phases at 230 V), percentages of ``battery_wh``."""

    battery_wh: float = 60_000.0
    soc_percent: float = 50.0  # at the plug
    min_soc_percent: float = 20.0  # the EV lets itself be discharged down to this
    max_soc_percent: float = 100.0  # and charged up to this
    target_soc_percent: float = 80.0  # what it wants at departure
    ev_max_charge_w: float | None = None  # default: the EV's current on the EVSE's phases
    ev_max_discharge_w: float | None = None  # default: as much as it charges
    stage_max_charge_w: float | None = None  # default: the EVSE's rating on its phases
    stage_max_discharge_w: float | None = None  # default: as much as it charges
    mode: str = "AC_BPT"  # AC_BPT (an AC stage, ISO 15118-20 BPT) or DC_BPT (a DC stage)
    ev_bidirectional: bool = True  # False: a charge-only EV on the bidirectional stage
    stage_max_va: float | None = None  # default: the larger of its charge and discharge W
    stage_max_var: float | None = None  # either way; default: 44 % of the VA rating
    reactive: bool = True  # the stage follows reactive power setpoints (False: P only)
    ramp: bool = True  # the stage takes ramp rates (False: it follows setpoints at once)

    def __post_init__(self) -> None:
        check_params(self)


def check_params(p: V2xParams) -> None:
    """Refuse a battery that cannot exist; the message names the parameter."""
    if not 0 < p.battery_wh <= 1_000_000:
        raise ValueError(f"battery_wh {p.battery_wh!r}: expected Wh in (0, 1000000]")
    for name in ("soc_percent", "min_soc_percent", "max_soc_percent", "target_soc_percent"):
        v = getattr(p, name)
        if not 0 <= v <= 100:
            raise ValueError(f"{name} {v!r}: expected a percentage in [0, 100]")
    if p.min_soc_percent > p.max_soc_percent:
        raise ValueError(f"min_soc_percent {p.min_soc_percent:g} is above max_soc_percent "
                         f"{p.max_soc_percent:g}")
    for name in ("ev_max_charge_w", "ev_max_discharge_w", "stage_max_charge_w",
                 "stage_max_discharge_w", "stage_max_va", "stage_max_var"):
        v = getattr(p, name)
        if v is not None and not 0 <= v <= 1_000_000:
            raise ValueError(f"{name} {v!r}: expected W in [0, 1000000]")
    if p.mode not in BIDI_MODES:
        raise ValueError(f"mode {p.mode!r}: expected one of {', '.join(BIDI_MODES)}")


class BidiSim(_Sim):
    """One EVSE's physics with a bidirectional stage and a battery (see the module)."""

    def __init__(self, evse_id: int, phases: int, ev_max_current: float, now: Monotonic,
                 emit: Callable[[HalEvent], None], *, params: V2xParams,
                 stage_max_current_a: float) -> None:
        super().__init__(evse_id, phases, ev_max_current, now, emit,
                         ev_soc=params.soc_percent)
        self.params = params
        self.stage_max_current_a = stage_max_current_a
        self.export_wh = 0.0
        self.stored_wh = params.soc_percent / 100.0 * params.battery_wh
        self.reactive_var: float | None = None  # the reactive setpoint (DER sign)
        self.ramp_w_s: float | None = None  # normal ramp rate (None: at once)
        self.soft_ramp_w_s: float | None = None  # from standstill
        self._p = 0.0  # the active power now (W, signed): where a ramp has got to
        self._standstill = True  # the last ramp started from 0 W and has not arrived

    # -- the limits as the HAL reports them
    def ev_limits(self) -> PowerLimits:
        p, per = self.params, NOMINAL_VOLTAGE * self.max_phases
        charge = p.ev_max_charge_w if p.ev_max_charge_w is not None \
            else self.ev_max_current * per
        discharge = 0.0
        if p.ev_bidirectional:
            discharge = p.ev_max_discharge_w if p.ev_max_discharge_w is not None else charge
        return PowerLimits(max_charge_w=charge, max_discharge_w=discharge)

    def stage_limits(self) -> PowerLimits:
        p, per = self.params, NOMINAL_VOLTAGE * self.max_phases
        charge = p.stage_max_charge_w if p.stage_max_charge_w is not None \
            else self.stage_max_current_a * per
        discharge = p.stage_max_discharge_w if p.stage_max_discharge_w is not None else charge
        return PowerLimits(max_charge_w=charge, max_discharge_w=discharge,
                           max_charge_a=self.stage_max_current_a,
                           max_discharge_a=self.stage_max_current_a)

    def modes(self) -> frozenset[EnergyTransferMode]:
        if not self.plugged:
            return frozenset()
        if self.params.mode == "DC_BPT":
            plain = EnergyTransferMode.DC
        else:
            plain = {1: EnergyTransferMode.AC_SINGLE_PHASE, 2: EnergyTransferMode.AC_TWO_PHASE
                     }.get(self.phases, EnergyTransferMode.AC_THREE_PHASE)
        if not self.params.ev_bidirectional:
            return frozenset({plain})
        return frozenset({plain, EnergyTransferMode(self.params.mode)})

    def _floor_wh(self) -> float:
        return self.params.min_soc_percent / 100.0 * self.params.battery_wh

    def _ceiling_wh(self) -> float:
        return self.params.max_soc_percent / 100.0 * self.params.battery_wh

    # -- physics
    def _flowing(self) -> bool:
        return (self.power_closed() and self.pilot().wants_energy
                and self.offered >= MIN_PILOT_CURRENT and self.plugged)

    def reactive_limits(self) -> ReactiveLimits:
        p, stage = self.params, self.stage_limits()
        va = p.stage_max_va if p.stage_max_va is not None \
            else max(stage.max_charge_w, stage.max_discharge_w)
        var = p.stage_max_var if p.stage_max_var is not None else DEFAULT_VAR_SHARE * va
        return ReactiveLimits(max_va=va, max_inject_var=min(var, va),
                              max_absorb_var=min(var, va))

    def _window(self) -> tuple[float, float, float]:
        """(lowest, highest, aimed at): the signed power that may flow now and what the
        stage aims at (the setpoint, else the pilot's offer, held within the two)."""
        if not self._flowing():
            return 0.0, 0.0, 0.0
        ev, stage = self.ev_limits(), self.stage_limits()
        per = NOMINAL_VOLTAGE * self.phases
        charge = min(self.offered * per, self.ev_max_current * per, ev.max_charge_w,
                     stage.max_charge_w, self.stage_max_current_a * per)
        discharge = 0.0
        if EnergyTransferMode(self.params.mode) in self.modes():
            discharge = min(ev.max_discharge_w, stage.max_discharge_w,
                            self.stage_max_current_a * per)
        if self.params.reactive:  # active power alone never beyond the VA rating either
            va = self.reactive_limits().max_va
            charge, discharge = min(charge, va), min(discharge, va)
        hi = charge if self.stored_wh < self._ceiling_wh() else 0.0
        lo = -discharge if self.stored_wh > self._floor_wh() else 0.0
        want = charge if self.setpoint_w is None else self.setpoint_w
        return lo, hi, max(lo, min(hi, want))

    def power(self) -> float:
        """Signed W at this instant (positive into the EV)."""
        self.integrate()
        return self._p

    def reactive(self) -> float:
        """Reactive power at this instant, DER sign (positive: injected into the grid)."""
        self.integrate()
        if self.reactive_var is None or not self.params.reactive or not self._flowing():
            return 0.0
        rl = self.reactive_limits()
        q = max(-rl.max_absorb_var, min(rl.max_inject_var, self.reactive_var))
        room = math.sqrt(max(0.0, rl.max_va ** 2 - self._p ** 2))
        return max(-room, min(room, q))

    def current(self) -> float:
        """Signed amps per phase (negative: out of the EV), so the grid meter nets it."""
        return self.power() / (NOMINAL_VOLTAGE * self.phases)

    def integrate(self) -> None:
        t = self.now()
        dt = max(0.0, t - self._last_t)
        self._last_t = t
        lo, hi, target = self._window()
        p0 = max(lo, min(hi, self._p))  # a bound that fell applies at once
        if p0 == 0.0 and target == 0.0:
            self._standstill = True
        rate = self.soft_ramp_w_s if self._standstill else self.ramp_w_s
        if rate is None:
            p0 = target
        # The segment: from p0 toward the target at ``rate``, then flat.
        if p0 == target or rate is None:
            pieces = [(p0, p0, dt)]
            p1 = p0
        else:
            reach = abs(target - p0) / rate
            if reach >= dt:
                p1 = p0 + math.copysign(rate * dt, target - p0)
                pieces = [(p0, p1, dt)]
            else:
                p1 = target
                pieces = [(p0, target, reach), (target, target, dt - reach)]
        e_in = e_out = 0.0
        for a, b, d in pieces:
            pos, neg = _areas(a, b, d)
            e_in += pos / 3600.0
            e_out += neg / 3600.0
        cut = False
        room_up = max(0.0, self._ceiling_wh() - self.stored_wh)
        room_down = max(0.0, self.stored_wh - self._floor_wh())
        if e_in - e_out > room_up:
            e_in, cut = e_out + room_up, True
        elif e_out - e_in > room_down:
            e_out, cut = e_in + room_down, True
        self.energy_wh += e_in
        self.export_wh += e_out
        self.stored_wh += e_in - e_out
        self._p = 0.0 if cut else p1
        if p1 == target and target != 0.0:
            self._standstill = False

    def arrive(self, soc: float | None = None) -> None:
        if not self.plugged:
            super().arrive(soc)
            level = self.params.soc_percent if soc is None else soc
            if not 0 <= level <= 100:
                raise ValueError(f"soc {level!r}: expected a percentage in [0, 100]")
            self.stored_wh = level / 100.0 * self.params.battery_wh

    def soc(self) -> float | None:
        if not self.plugged:
            return None
        self.integrate()
        return round(self.stored_wh / self.params.battery_wh * 100.0, 4)

    def energy_state(self) -> EvEnergyState | None:
        soc = self.soc()
        if soc is None:
            return None
        p = self.params
        return EvEnergyState(soc_percent=soc, capacity_wh=p.battery_wh,
                             min_soc_percent=p.min_soc_percent,
                             target_soc_percent=p.target_soc_percent,
                             max_soc_percent=p.max_soc_percent)

    # -- the world file (hal/mock.py): registers and battery outlive the agent too
    def world(self) -> dict:
        out = super().world()
        out.update(export_wh=self.export_wh, stored_wh=self.stored_wh)
        return out

    def restore(self, world: dict) -> None:
        super().restore(world)
        self.export_wh = float(world.get("export_wh", 0.0))
        if world.get("stored_wh") is not None:
            self.stored_wh = float(world["stored_wh"])


def _areas(a: float, b: float, d: float) -> tuple[float, float]:
    """The positive and the negative area (W s) under a power moving linearly from ``a`` to
    ``b`` over ``d`` seconds (split where it crosses 0)."""
    if d <= 0:
        return 0.0, 0.0
    if a >= 0 and b >= 0:
        return (a + b) / 2 * d, 0.0
    if a <= 0 and b <= 0:
        return 0.0, -(a + b) / 2 * d
    t0 = d * a / (a - b)  # where it crosses 0
    first, second = a * t0 / 2, b * (d - t0) / 2
    return (first, -second) if a > 0 else (second, -first)


class MockBidiMeter(MockMeter):
    """Import and export registers apart, signed power, current magnitudes per phase."""

    def __init__(self, sim: BidiSim) -> None:
        super().__init__(sim)
        self._bidi = sim

    @property
    def measures(self) -> frozenset[str]:
        extra = {"power_reactive", "power_factor"} if self._bidi.params.reactive else set()
        return super().measures | extra

    async def read(self) -> MeterReading:
        sim = self._bidi
        if sim.meter_fault:
            raise HalError(FaultKind.METER, f"evse {sim.evse_id}: meter does not answer")
        sim.integrate()
        if sim.persist is not None:
            sim.persist()
        power = sim.power()
        q = sim.reactive()
        apparent = math.hypot(power, q)
        n = sim.phases
        reactive = sim.params.reactive
        return MeterReading(
            energy_import_wh=round(sim.energy_wh, 6),
            energy_export_wh=round(sim.export_wh, 6),
            power_w=round(power, 3),
            voltage_v=(sim.grid_v,) * n,
            current_a=(round(apparent / (NOMINAL_VOLTAGE * n), 3),) * n,
            frequency_hz=sim.grid_hz,
            # The meter counts in the load convention: vars the stage injects are exported.
            power_reactive_var=round(-q, 3) + 0.0 if reactive else None,
            power_factor=round(abs(power) / apparent, 4) if reactive and apparent > 1e-6
            else None,
        )


class MockBidiEv(MockEv):
    """The EV side of a bidirectional stage: setpoint, modes, limits and battery."""

    def __init__(self, sim: BidiSim) -> None:
        super().__init__(sim)
        self._bidi = sim

    @property
    def supports_setpoint(self) -> bool:
        return True

    async def set_power_setpoint(self, watts: float | None) -> None:
        sim = self._bidi
        sim.integrate()  # what flowed so far flowed at the old setpoint
        sim.setpoint_w = None if watts is None else float(watts)
        sim.changed()

    # -- reactive power and ramp rates (the DER controls' part of the stage)
    @property
    def supports_reactive(self) -> bool:
        return self._bidi.params.reactive

    @property
    def reactive_limits(self) -> ReactiveLimits | None:
        return self._bidi.reactive_limits() if self._bidi.params.reactive else None

    async def set_reactive_setpoint(self, var: float | None) -> None:
        sim = self._bidi
        if not sim.params.reactive:
            raise NotImplementedError(f"evse {sim.evse_id}: this stage has no reactive control")
        if var is not None and not math.isfinite(var):
            raise HalError(FaultKind.EV_BOARD, f"evse {sim.evse_id}: reactive setpoint "
                                               f"{var!r} is not a number of var")
        sim.integrate()
        sim.reactive_var = None if var is None else float(var)
        sim.changed()

    @property
    def reactive_setpoint(self) -> float | None:
        return self._bidi.reactive_var

    @property
    def supports_ramp_rate(self) -> bool:
        return self._bidi.params.ramp

    async def set_ramp_rates(self, normal_w_per_s: float | None,
                             soft_start_w_per_s: float | None = None) -> None:
        sim = self._bidi
        if not sim.params.ramp:
            raise NotImplementedError(f"evse {sim.evse_id}: this stage takes no ramp rate")
        for name, rate in (("normal", normal_w_per_s), ("soft-start", soft_start_w_per_s)):
            if rate is not None and not (math.isfinite(rate) and rate > 0):
                raise HalError(FaultKind.EV_BOARD, f"evse {sim.evse_id}: {name} ramp rate "
                                                   f"{rate!r} is not a number of W/s > 0")
        sim.integrate()  # what flowed so far flowed at the old rates
        sim.ramp_w_s = None if normal_w_per_s is None else float(normal_w_per_s)
        sim.soft_ramp_w_s = None if soft_start_w_per_s is None else float(soft_start_w_per_s)
        sim.changed()

    @property
    def ramp_rates(self) -> tuple[float | None, float | None]:
        return (self._bidi.ramp_w_s, self._bidi.soft_ramp_w_s)

    @property
    def measures(self) -> frozenset[str]:
        return frozenset({"soc"})

    @property
    def energy_transfer_modes(self) -> frozenset[EnergyTransferMode]:
        return self._bidi.modes()

    @property
    def ev_limits(self) -> PowerLimits | None:
        return self._bidi.ev_limits() if self._bidi.plugged else None

    @property
    def stage_limits(self) -> PowerLimits | None:
        return self._bidi.stage_limits()

    @property
    def energy_state(self) -> EvEnergyState | None:
        return self._bidi.energy_state()


# ---------------------------------------------------------------- wiring and bench controls

def make_bidirectional(hal: MockHal, evse_id: int, params: V2xParams) -> BidiSim:
    """Replace the simulated EV and meter of one mock EVSE by a bidirectional pair (before
    the HAL starts; the contactor, lock and indicator stay as they are)."""
    old = hal.sims[evse_id]
    hw = hal.evses[evse_id]
    sim = BidiSim(evse_id, old.max_phases, old.ev_max_current, old.now, old.emit,
                  params=params, stage_max_current_a=hw.max_current_a)
    hal.sims[evse_id] = sim
    hw.contactor._sim = sim  # type: ignore[attr-defined]  # the mock contactor's own sim
    hw.meter = MockBidiMeter(sim)
    hw.ev = MockBidiEv(sim)
    return sim




def set_ev(hal: MockHal, evse_id: int, **changes: Any) -> dict[str, Any]:
    """Change the simulated EV on a bidirectional EVSE (its battery, its limits); ``soc``
    moves the battery now. Returns the EV as it is afterwards. A bad value changes nothing."""
    sim = hal.sims.get(evse_id)
    if sim is None:
        raise ValueError(f"no EVSE {evse_id} (this station has {sorted(hal.sims)})")
    if not isinstance(sim, BidiSim):
        raise ValueError(f"EVSE {evse_id} has no bidirectional EV (hal.v2x in the config)")
    unknown = sorted(set(changes) - set(EV_SETTINGS))
    if unknown:
        raise ValueError(f"unknown EV setting(s) {', '.join(unknown)}; expected "
                         f"{', '.join(EV_SETTINGS)}")
    fields: dict[str, Any] = {}
    for key, value in changes.items():
        if value is None:
            continue
        if key == "bidirectional":
            if not isinstance(value, bool):
                raise ValueError(f"bidirectional {value!r}: expected true or false")
        elif isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{key} {value!r}: expected a number")
        fields[EV_SETTINGS[key]] = value
    sim.integrate()  # up to now at the old values
    soc_now = sim.soc() if sim.plugged else None
    new = replace(sim.params, **fields)  # validates (V2xParams.__post_init__)
    sim.params = new  # soc_percent: the EV's now, and what the next one arrives with
    if "soc_percent" in fields:
        sim.stored_wh = new.soc_percent / 100.0 * new.battery_wh
    elif "battery_wh" in fields:  # another battery at the same state of charge
        level = soc_now if soc_now is not None else new.soc_percent
        sim.stored_wh = level / 100.0 * new.battery_wh
    sim.changed()
    sim.emit(EvChanged(evse_id))  # the core holds its setpoint to the new limits at once
    return ev_view(sim)


def ev_view(sim: BidiSim) -> dict[str, Any]:
    p = sim.params
    return {"soc_percent": sim.soc(), "battery_wh": p.battery_wh,
            "min_soc_percent": p.min_soc_percent, "max_soc_percent": p.max_soc_percent,
            "target_soc_percent": p.target_soc_percent,
            "max_charge_w": sim.ev_limits().max_charge_w,
            "max_discharge_w": sim.ev_limits().max_discharge_w,
            "bidirectional": p.ev_bidirectional, "mode": p.mode}


# ---------------------------------------------------------------- configuration

_KEYS = ("evses", "battery_wh", "soc_percent", "min_soc_percent", "max_soc_percent",
         "target_soc_percent", "ev_max_charge_w", "ev_max_discharge_w", "stage_max_charge_w",
         "stage_max_discharge_w", "mode", "ev_bidirectional", "stage_max_va", "stage_max_var",
         "reactive", "ramp")


def parse_v2x(raw: Any, path: str, evse_ids: tuple[int, ...]) -> tuple[tuple[int, V2xParams], ...]:
    """``hal.v2x`` of the mock: ``true`` (every EVSE bidirectional, default battery),
    ``false`` / absent (none), or a mapping of the :class:`V2xParams` fields plus ``evses``
    (the ids to make bidirectional, default all). Errors name the key path."""
    from hal.config_kit import ConfigMap, HalConfigError, bad, boolean, choice, number

    if raw is None or raw is False:
        return ()
    if raw is True:
        return tuple((i, V2xParams()) for i in evse_ids)
    if not isinstance(raw, dict):
        raise bad(path, raw, "true, false or a mapping (evses, battery_wh, soc_percent, ...)")
    m = ConfigMap(raw, path, _KEYS)
    ids = m.get("evses", _id_list(evse_ids), evse_ids)
    pct = number(0, 100)
    watts = number(0, 1_000_000)
    fields = {
        "battery_wh": m.get("battery_wh", number(0, 1_000_000, lo_open=True), None),
        "soc_percent": m.get("soc_percent", pct, None),
        "min_soc_percent": m.get("min_soc_percent", pct, None),
        "max_soc_percent": m.get("max_soc_percent", pct, None),
        "target_soc_percent": m.get("target_soc_percent", pct, None),
        "ev_max_charge_w": m.get("ev_max_charge_w", watts, None),
        "ev_max_discharge_w": m.get("ev_max_discharge_w", watts, None),
        "stage_max_charge_w": m.get("stage_max_charge_w", watts, None),
        "stage_max_discharge_w": m.get("stage_max_discharge_w", watts, None),
        "mode": m.get("mode", choice(*BIDI_MODES), None),
        "ev_bidirectional": m.get("ev_bidirectional", boolean, None),
        "stage_max_va": m.get("stage_max_va", watts, None),
        "stage_max_var": m.get("stage_max_var", watts, None),
        "reactive": m.get("reactive", boolean, None),
        "ramp": m.get("ramp", boolean, None),
    }
    try:
        params = V2xParams(**{k: v for k, v in fields.items() if v is not None})
    except ValueError as exc:  # levels that contradict each other (min above max)
        raise HalConfigError(path, str(exc)) from None
    return tuple((i, params) for i in ids)


def _id_list(evse_ids: tuple[int, ...]) -> Callable[[Any, str], tuple[int, ...]]:
    from hal.config_kit import HalConfigError, bad

    def conv(v: Any, path: str) -> tuple[int, ...]:
        if not isinstance(v, list) or not v:
            raise bad(path, v, f"a non-empty list of EVSE ids out of {list(evse_ids)}")
        out = []
        for i, item in enumerate(v):
            if isinstance(item, bool) or not isinstance(item, int) or item not in evse_ids:
                raise HalConfigError(f"{path}[{i}]", f"{item!r} is not an EVSE of this "
                                                     f"station; expected one of {list(evse_ids)}")
            if item in out:
                raise HalConfigError(f"{path}[{i}]", f"EVSE {item} is listed twice")
            out.append(item)
        return tuple(out)

    return conv
