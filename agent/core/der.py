"""DER controls (2.1 block R): the grid-support settings a grid operator gives a station whose
power stage can feed energy back, kept, scheduled and applied as limit / setpoint sources.

A control has an id, a type (DERControlEnumType), whether it is a *default* control (in force
whenever no scheduled control of its type is) or a *scheduled* one (in force from its
startTime for its duration), a priority (0 highest) and its setting, kept as the CSMS wrote
it (the field names of 2.1's schemas, SetDERControlRequest.json: ``curveData``,
``pctMaxDischargePower``, ``displacement``, ``overDroop``, ...; not the ``ocpp`` package's
dataclass names, several of which are wrong).  Precedence among controls of one type and
kind: the lower priority number, then the newer; a control outranked by one whose time
overlaps its own is *superseded* (reported so, and named in ``supersededIds`` when the newer
one is set or starts).

Applied by :mod:`agent.core.v2x_modes` to every EVSE whose stage takes setpoints (sign
convention of the DER types: positive active power feeds the grid (discharge), positive
reactive power is injected (over-excited); the HAL's active power is the other way round,
positive into the EV).  Voltages on a curve's x axis or in a window: above 150 volts, else
% of the 230 V nominal (a VoltVar curve's ``reactivePowerParams.vRef``, in %, moves its
points); the voltage judged is the mean of the EVSE meter's phases.  Active power on a
curve's x axis (WattPF, WattVar) is % of the stage's maximum active power (the larger of its
charge and discharge rating), DER sign.

Active power (a setpoint and discharge caps, :meth:`DerControls.effect`):

- **LimitMaxDischarge**: discharge capped at ``pctMaxDischargePower`` % of the stage's rating.
- **FreqWatt**: the setpoint from the curve at the measured frequency; ``y`` is % of the
  stage's maximum (PctMaxW / PctWAvail).
- **FreqDroop** (where no FreqWatt is in force): inside ``underFreq`` .. ``overFreq`` nothing
  changes; beyond, the steady state of a droop, P = P_pre - (f - overFreq) / (f_nom x
  overDroop) x P_rated above, P_pre + (underFreq - f) / (f_nom x underDroop) x P_rated below
  (f_nom 50 Hz, 60 Hz where the band is above 55 Hz; droop per unit, a value above 1 read as
  %); P_pre is the profile's setpoint, else the power measured when the excursion began.
  ``responseTime`` is not modelled (the steady state applies at the next re-plan).
- **VoltWatt**: the curve at the voltage caps discharge at ``y`` % (PctMaxW / PctWAvail) of
  the discharge rating; a negative ``y`` forbids discharge and makes a setpoint charge at
  least ``-y`` % of the charge rating.
- **EnterService**: discharge only while the grid is inside its voltage and frequency window
  (delay, randomDelay and rampRate are not applied).
- **Ride-through curves** (HV/LV/HF/LF MustTrip, MayTrip, MomCess): the grid beyond the curve's
  threshold (the lowest ``y`` of an HV / HF curve, the highest of an LV / LF one; voltage in
  % of nominal for PctEffectiveV, else volts; frequency in Hz) is an *alarm*, reported when
  it starts and ends; MustTrip and MomCess also stop discharge while it lasts.
- **Gradients**: ``gradient`` and ``softGradient`` are ramp rates in % of the stage's maximum
  active power per second (IEEE 2030.5's setGradW / setSoftGradW, where the schema's "in
  seconds" cannot be meant; 0: no limit), given to a stage that takes ramp rates; the soft
  one applies when the stage starts from standstill.

Reactive power (:meth:`DerControls.reactive`, only on a stage with reactive control): one
function at a time, the one of the lowest priority number (a tie: FixedPF, FixedVar,
VoltVar, WattVar, WattPF).

- **FixedPFAbsorb** while the stage absorbs active power (charges the EV), **FixedPFInject**
  while it injects (discharges), as IEEE 2030.5's opModFixedPFAbsorbW / InjectW:
  |Q| = |P| tan(acos(displacement)), absorbed when ``excitation`` is true, injected else.
- **FixedVar**: ``setpoint`` % of the stage's var range (PctMaxVar), of what the active
  power leaves of it (PctVarAvail) or of its maximum active power (PctMaxW); positive
  injects.
- **VoltVar**: Q from the curve at the voltage (``y`` in PctMaxVar / PctVarAvail / PctMaxW).
- **WattVar**: Q from the curve at the active power (``y`` as VoltVar's).
- **WattPF**: the power factor from the curve at the active power; ``y`` > 0 absorbs,
  ``y`` < 0 injects (the schema's reading of a power-factor ``y``), |y| is cos phi.

The active power a reactive function works from is the setpoint held within the EVSE's
bounds where there is one, else the measured power.  Q and P together stay within the
stage's ratings: Q within its var range, sqrt(P^2 + Q^2) within its VA; where a setpoint
would leave too little room, the setpoint gives way (reactive priority, the grid code's
function first), a power-factor function keeping its power factor; without a setpoint the
pilot's charge comes first and Q gets what is left.  Hysteresis, response times and the
autonomous vRef adjustment are not modelled.

``APPLIED`` is every type but PowerMonitoringMustTrip, which is answered NotSupported
(``supported_types``), as are the reactive types on a stage without reactive control and
Gradients on one without ramp rates.

Persisted in the state file with which start / stop notifications were delivered, so a
restart neither loses a control nor announces one twice, and one that started or ended while
the station was down or offline is announced afterwards (with the instant it did).  Alarms
are live state: not persisted, judged again from the next reading.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from agent.clock import Clock, parse_iso
from agent.core.smart_charging import curve_power
from agent.core.v2x_names import (  # noqa: F401 - re-exported: the names DER code uses
    APPLIED,
    CONTROL_TYPES,
    DER_STORE_KEY,
    RAMP_TYPES,
    REACTIVE_TYPES,
    SETTING_FIELD,
    setting_field,
    stage_supports,
    supported_types,
)
from hal.interfaces import ReactiveLimits

log = logging.getLogger("cp_agent.der")

STORE_KEY = DER_STORE_KEY  # agent/core/v2x_names.py: start-up checks it without this module
MAX_CONTROLS = 64  # DERCtrlr: what the state file keeps (a new one beyond: Rejected)
NOMINAL_V = 230.0

# The order a tie of priorities between reactive functions is broken in.
_REACTIVE_ORDER = ("FixedPFAbsorb", "FixedPFInject", "FixedVar", "VoltVar", "WattVar",
                   "WattPF")
_VAR_UNITS = ("PctMaxVar", "PctVarAvail", "PctMaxW")
_WATT_UNITS = ("PctMaxW", "PctWAvail")
_VOLTAGE = frozenset({"EnterService", "VoltVar", "VoltWatt"})
_FREQUENCY = frozenset({"EnterService", "FreqWatt", "FreqDroop"})
_POWER = frozenset({"FixedPFAbsorb", "FixedPFInject", "WattPF", "WattVar", "FixedVar"})
_UNSCHEDULED = frozenset({"EnterService", "Gradients"})  # their types have no start / duration
_TRIP = {"HVMustTrip": "OverVoltage", "HVMomCess": "OverVoltage", "HVMayTrip": "OverVoltage",
         "LVMustTrip": "UnderVoltage", "LVMomCess": "UnderVoltage", "LVMayTrip": "UnderVoltage",
         "HFMustTrip": "OverFrequency", "HFMayTrip": "OverFrequency",
         "LFMustTrip": "UnderFrequency"}
_STOPS_DISCHARGE = frozenset(t for t in _TRIP if not t.endswith("MayTrip"))


@dataclass(frozen=True, slots=True)
class DerControl:
    control_id: str
    control_type: str
    is_default: bool
    setting: Mapping[str, Any]
    seq: int  # installation order (the newer wins a tie of priorities)
    started: bool = False  # NotifyDERStartStop(started) delivered
    stopped: bool = False  # NotifyDERStartStop(ended) delivered

    @property
    def priority(self) -> int:
        value = self.setting.get("priority", 0)
        return value if isinstance(value, int) else 0

    @property
    def start(self) -> datetime | None:
        text = self.setting.get("startTime")
        try:
            return parse_iso(text) if isinstance(text, str) else None
        except ValueError:
            return None

    @property
    def end(self) -> datetime | None:
        start, duration = self.start, self.setting.get("duration")
        if start is None or not isinstance(duration, int | float):
            return None
        return start + timedelta(seconds=float(duration))

    @property
    def scheduled(self) -> bool:
        """In force for a window (a scheduled control of a type that has one)."""
        return not self.is_default and self.control_type not in _UNSCHEDULED

    def active(self, at: datetime) -> bool:
        if not self.scheduled:
            return True
        start, end = self.start, self.end
        return start is not None and end is not None and start <= at < end

    def outranks(self, other: DerControl) -> bool:
        return (self.priority, -self.seq) < (other.priority, -other.seq)

    def overlaps(self, other: DerControl) -> bool:
        if not self.scheduled or not other.scheduled:
            return True
        a, b, c, d = self.start, self.end, other.start, other.end
        return None not in (a, b, c, d) and a < d and c < b  # type: ignore[operator]


@dataclass(frozen=True, slots=True)
class DerEffect:
    """What the DER controls in force ask of one EVSE's active power now (HAL sign: positive
    into the EV).  ``charge_floor_w``: a setpoint charges at least this (VoltWatt below 0);
    ``ramp_w_s``: (normal, soft-start) W/s of a Gradients control (None: none in force; a
    rate of None in it: no limit); ``droop``: a FreqDroop excursion is under way."""

    setpoint_w: float | None = None
    discharge_cap_w: float | None = None
    why: str = ""
    charge_floor_w: float | None = None
    ramp_w_s: tuple[float | None, float | None] | None = None
    droop: bool = False


@dataclass(frozen=True, slots=True)
class DerReactive:
    """The reactive power the controls in force ask (DER sign: positive injects), and the
    setpoint held so that both fit the stage's ratings (HAL sign; None: none)."""

    var: float | None  # None: no reactive function in force (unity power factor)
    setpoint_w: float | None
    control_type: str = ""
    why: str = ""


@dataclass(frozen=True, slots=True)
class DerAlarm:
    control_type: str
    fault: str  # GridEventFaultEnumType
    ended: bool
    at: datetime
    info: str = ""


def validate_control(control_type: object, is_default: object,
                     setting: object) -> tuple[str, str] | None:
    """(reason code, why) when a SetDERControl cannot be kept; None when it can."""
    if control_type not in CONTROL_TYPES:
        return "InvalidValue", f"unknown controlType {control_type!r}"
    name = setting_field(str(control_type))
    if not isinstance(setting, Mapping):
        return "MissingParam", f"a {control_type} control needs its {name} setting"
    problems: list[str] = []
    if not isinstance(setting.get("priority"), int) or setting["priority"] < 0:
        problems.append("priority is not an integer >= 0")
    if not is_default and control_type not in _UNSCHEDULED:
        start, duration = setting.get("startTime"), setting.get("duration")
        if start is None or duration is None:
            return "MissingParam", (f"a scheduled {control_type} control needs startTime and "
                                    f"duration (only a default control has neither)")
        try:
            parse_iso(str(start))
        except ValueError:
            problems.append(f"startTime {start!r} is not a date and time")
        if not isinstance(duration, int | float) or not duration > 0:
            problems.append(f"duration {duration!r} is not a number of seconds > 0")
    if name == "curve":
        points = setting.get("curveData") or []
        xs = [p.get("x") for p in points if isinstance(p, Mapping)]
        if not points or len(xs) != len(points) or not all(_finite(x) for x in xs) \
                or not all(_finite(p.get("y")) for p in points):
            problems.append("curveData has points that are not numbers")
        elif any(b <= a for a, b in zip(xs, xs[1:], strict=False)):
            problems.append("curveData: its x values must increase")
        unit = setting.get("yUnit")
        if control_type in ("FreqWatt", "VoltWatt") and unit not in _WATT_UNITS:
            problems.append(f"a {control_type} curve gives power: yUnit PctMaxW or PctWAvail, "
                            f"not {unit!r}")
        if control_type in ("VoltVar", "WattVar") and unit not in _VAR_UNITS:
            problems.append(f"a {control_type} curve gives reactive power: yUnit "
                            f"{', '.join(_VAR_UNITS)}, not {unit!r}")
        if control_type == "WattPF" and not problems and not all(
                0 < abs(p["y"]) <= 1 for p in points):
            problems.append("a WattPF curve gives power factors: every y in [-1, 0) or (0, 1]")
        vref = (setting.get("reactivePowerParams") or {}).get("vRef") \
            if isinstance(setting.get("reactivePowerParams"), Mapping) else None
        if control_type == "VoltVar" and vref is not None \
                and (not _finite(vref) or not 50 <= vref <= 150):
            problems.append(f"reactivePowerParams.vRef {vref!r} is not a percentage of the "
                            f"nominal voltage in [50, 150]")
    elif control_type in ("FixedPFAbsorb", "FixedPFInject"):
        if not _finite(setting.get("displacement")) or not 0 < setting["displacement"] <= 1:
            problems.append("displacement (cos phi) is not above 0 and at most 1")
        if not isinstance(setting.get("excitation"), bool):
            problems.append("excitation (true: absorbing, false: injecting) is not a boolean")
    elif control_type == "FixedVar":
        if not _finite(setting.get("setpoint")) or not -100 <= setting["setpoint"] <= 100:
            problems.append("setpoint is not a percentage between -100 and 100")
        if setting.get("unit") not in _VAR_UNITS:
            problems.append(f"unit {setting.get('unit')!r}: a var setpoint is a percentage "
                            f"of {', '.join(_VAR_UNITS)}")
    elif control_type == "FreqDroop":
        keys = ("overFreq", "underFreq", "overDroop", "underDroop", "responseTime")
        if not all(_finite(setting.get(k)) for k in keys):
            problems.append(f"{', '.join(keys)} are not all numbers")
        elif not setting["underFreq"] < setting["overFreq"]:
            problems.append("underFreq is not below overFreq")
        elif not (setting["overDroop"] > 0 and setting["underDroop"] > 0):
            problems.append("a droop is not above 0")
        elif setting["responseTime"] < 0:
            problems.append("responseTime is below 0")
    elif control_type == "Gradients":
        if not all(_finite(setting.get(k)) and setting[k] >= 0
                   for k in ("gradient", "softGradient")):
            problems.append("gradient and softGradient are not numbers >= 0 (% of the rated "
                            "power per second, 0: no limit)")
    elif control_type == "LimitMaxDischarge":
        pct = setting.get("pctMaxDischargePower")
        if pct is not None and (not _finite(pct) or not 0 <= pct <= 100):
            problems.append("pctMaxDischargePower is not a percentage between 0 and 100")
    elif control_type == "EnterService":
        if not all(_finite(setting.get(k)) for k in ("highVoltage", "lowVoltage", "highFreq",
                                                     "lowFreq")):
            problems.append("the voltage and frequency window are not numbers")
        elif setting["lowVoltage"] > setting["highVoltage"] \
                or setting["lowFreq"] > setting["highFreq"]:
            problems.append("the low end of the window is above its high end")
    return ("InvalidValue", "; ".join(problems)) if problems else None


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class DerControls:
    """The DER controls of one station (see the module docstring)."""

    def __init__(self, storage: Any, clock: Clock) -> None:
        self.storage = storage
        self.clock = clock
        self.controls: dict[str, DerControl] = {}
        self.alarms: dict[str, DerAlarm] = {}  # control type -> the alarm in progress
        self.alarm_queue: list[DerAlarm] = []  # alarms to report (started and ended)
        self.listeners: list[Callable[[], None]] = []  # a control or an alarm changed
        self._seq = 0
        self._load()

    # ------------------------------------------------------------------ persistence

    def _load(self) -> None:
        raw = self.storage.get_setting(STORE_KEY)
        try:
            rows = json.loads(raw) if raw else []
        except ValueError:
            log.error("stored DER controls unreadable: none apply")
            rows = []
        for row in rows if isinstance(rows, list) else []:
            try:
                c = DerControl(str(row["id"]), str(row["type"]), bool(row["default"]),
                               dict(row["setting"]), int(row["seq"]), bool(row.get("started")),
                               bool(row.get("stopped")))
            except (KeyError, TypeError, ValueError) as exc:
                log.error("stored DER control unreadable, dropped: %s", exc)
                continue
            self.controls[c.control_id] = c
            self._seq = max(self._seq, c.seq)

    def _save(self) -> None:
        rows = [{"id": c.control_id, "type": c.control_type, "default": c.is_default,
                 "setting": dict(c.setting), "seq": c.seq, "started": c.started,
                 "stopped": c.stopped} for c in self.controls.values()]
        self.storage.set_setting(STORE_KEY, json.dumps(rows, separators=(",", ":")))

    def _changed(self) -> None:
        for listener in list(self.listeners):
            try:
                listener()
            except Exception:  # noqa: BLE001 - a reporter never breaks a control
                log.exception("DER listener failed")

    # ------------------------------------------------------------------ commands

    def set(self, control_id: str, control_type: str, is_default: bool,
            setting: Mapping[str, Any]) -> tuple[str, str, list[str]]:
        """Keep a control (validated by the caller): ("Accepted", "", superseded ids) or
        ("Rejected", reason code, []) when the store is full."""
        old = self.controls.get(control_id)
        if old is None and len(self.controls) >= MAX_CONTROLS:
            return "Rejected", "OutOfStorage", []
        self._seq += 1
        new = DerControl(control_id, control_type, bool(is_default), dict(setting), self._seq)
        now = self.clock.now()
        if new.scheduled and new.end is not None and new.end <= now:
            new = replace(new, started=True, stopped=True)  # over before it was set
        self.controls[control_id] = new
        self._save()
        superseded = [c.control_id for c in self.controls.values()
                      if c.control_id != control_id and c.control_type == control_type
                      and c.is_default == new.is_default and new.overlaps(c)
                      and new.outranks(c)]
        log.info("DER control %s (%s, %s, priority %s) set%s", control_id, control_type,
                 "default" if is_default else "scheduled", new.priority,
                 f", superseding {superseded}" if superseded else "")
        self._changed()
        return "Accepted", "", superseded

    def select(self, *, control_id: str | None = None, control_type: str | None = None,
               is_default: bool | None = None) -> list[DerControl]:
        """The controls a Get / Clear names (a controlId alone decides when given)."""
        if control_id is not None:
            c = self.controls.get(control_id)
            return [c] if c is not None else []
        return [c for c in self.controls.values()
                if (control_type is None or c.control_type == control_type)
                and (is_default is None or c.is_default == is_default)]

    def clear(self, ids: Iterable[str]) -> int:
        gone = [i for i in ids if self.controls.pop(i, None) is not None]
        if gone:
            self._save()
            log.info("DER control(s) %s cleared", gone)
            self._changed()
        return len(gone)

    def superseded(self, control: DerControl) -> bool:
        """Whether another control of its type and kind, overlapping it, outranks it."""
        return any(c.control_id != control.control_id and c.control_type == control.control_type
                   and c.is_default == control.is_default and c.overlaps(control)
                   and c.outranks(control) for c in self.controls.values())

    # ------------------------------------------------------------------ in force

    def in_force(self, at: datetime) -> dict[str, DerControl]:
        """Control type -> the control that applies at ``at``: the best scheduled one whose
        window holds it, else the best default one."""
        out: dict[str, DerControl] = {}
        for kind in (False, True):  # scheduled first, then defaults where none is
            for c in self.controls.values():
                if c.is_default != kind or not c.active(at):
                    continue
                if kind and c.control_type in out and not out[c.control_type].is_default:
                    continue
                best = out.get(c.control_type)
                if best is None or (best.is_default == c.is_default and c.outranks(best)):
                    out[c.control_type] = c
        return out

    def watches(self, at: datetime) -> frozenset[str]:
        """What the controls in force read: "frequency", "voltage", "power" (the active
        power a reactive function follows)."""
        force = self.in_force(at)
        out = set()
        for t in force:
            if t in _FREQUENCY or t in _TRIP and _TRIP[t].endswith("Frequency"):
                out.add("frequency")
            if t in _VOLTAGE or t in _TRIP and _TRIP[t].endswith("Voltage"):
                out.add("voltage")
            if t in _POWER:
                out.add("power")
        return frozenset(out)

    def needs_grid(self, at: datetime) -> bool:
        """Whether a control in force reads the grid (frequency, voltage, active power)."""
        return bool(self.watches(at))

    def effect(self, at: datetime, *, hz: float | None, volts: tuple[float, float] | None,
               max_charge_w: float, max_discharge_w: float, v_avg: float | None = None,
               setpoint_w: float | None = None, droop_pre_w: float | None = None
               ) -> DerEffect:
        """What the controls in force ask of a stage of that rating, at that grid, of its
        active power; ``setpoint_w`` is the profile's (HAL sign), ``droop_pre_w`` the power
        a FreqDroop excursion started from (used without a setpoint)."""
        force = self.in_force(at)
        setpoint: float | None = None
        cap: float | None = None
        floor: float | None = None
        why = ""
        droop = False
        rated = max(max_charge_w, max_discharge_w)
        lmd = force.get("LimitMaxDischarge")
        if lmd is not None and _finite(lmd.setting.get("pctMaxDischargePower")):
            cap = max(0.0, float(lmd.setting["pctMaxDischargePower"])) / 100 * max_discharge_w
        fw = force.get("FreqWatt")
        fd = force.get("FreqDroop")
        if fw is not None and hz is not None:
            pct = _curve(fw.setting, hz)
            setpoint = -pct / 100 * (max_discharge_w if pct > 0 else max_charge_w)
            why = f"DER FreqWatt {fw.control_id} at {hz:g} Hz"
        elif fd is not None and hz is not None:
            pre = setpoint_w if setpoint_w is not None else droop_pre_w
            delta = freq_droop(fd.setting, hz, rated)
            if delta is not None and pre is not None:
                droop = True
                setpoint = pre - delta  # delta in the DER sign: more injection, less charge
                why = f"DER FreqDroop {fd.control_id} at {hz:g} Hz"
        vw = force.get("VoltWatt")
        if vw is not None and v_avg is not None:
            pct = _curve(vw.setting, voltage_pct(vw.setting, v_avg))
            if pct >= 0:
                vw_cap = pct / 100 * max_discharge_w
                cap = vw_cap if cap is None else min(cap, vw_cap)
            else:
                cap, floor = 0.0, -pct / 100 * max_charge_w
            why = why or f"DER VoltWatt {vw.control_id} at {v_avg:g} V"
        es = force.get("EnterService")
        if es is not None and not _inside(es.setting, hz, volts):
            cap, why = 0.0, why or f"DER EnterService {es.control_id}: grid outside its window"
        if any(a.control_type in _STOPS_DISCHARGE and a.control_type in force
               for a in self.alarms.values()):
            cap = 0.0
        ramp = None
        gr = force.get("Gradients")
        if gr is not None:
            ramp = tuple(float(gr.setting[k]) / 100 * rated
                         if _finite(gr.setting.get(k)) and gr.setting[k] > 0 and rated > 0
                         else None for k in ("gradient", "softGradient"))
        return DerEffect(setpoint, cap, why, floor, ramp, droop)  # type: ignore[arg-type]

    def reactive(self, at: datetime, *, p_w: float, setpoint_w: float | None,
                 v_avg: float | None, limits: ReactiveLimits, max_w: float) -> DerReactive:
        """The reactive power of the function in force, at active power ``p_w`` (HAL sign:
        what will flow: the setpoint within the EVSE's bounds, else the measured power), and
        ``setpoint_w`` (None: none) held so that the pair fits ``limits`` (see the module
        docstring)."""
        force = self.in_force(at)
        der_p = -p_w  # DER sign: positive injects
        candidates = [c for t, c in force.items() if t in REACTIVE_TYPES
                      and not (t == "FixedPFAbsorb" and der_p >= 0)
                      and not (t == "FixedPFInject" and der_p <= 0)
                      and not (t == "VoltVar" and v_avg is None)]
        if not candidates:
            return DerReactive(None, setpoint_w)
        c = min(candidates, key=lambda c: (c.priority, _REACTIVE_ORDER.index(c.control_type)))
        try:
            return self._reactive(c, p_w, setpoint_w, v_avg, limits, max_w)
        except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
            # A setting kept by an older version that this one cannot read: unity power
            # factor rather than a scheduler that stops.
            log.error("DER control %s (%s) not applied: %s", c.control_id, c.control_type, exc)
            return DerReactive(None, setpoint_w)

    def _reactive(self, c: DerControl, p_w: float, setpoint_w: float | None,
                  v_avg: float | None, limits: ReactiveLimits, max_w: float) -> DerReactive:
        der_p = -p_w
        t, st = c.control_type, c.setting
        avail = math.sqrt(max(0.0, limits.max_va ** 2 - p_w ** 2))

        def var_of(pct: float, unit: object) -> float:
            side = limits.max_inject_var if pct >= 0 else limits.max_absorb_var
            base = {"PctMaxVar": side, "PctVarAvail": min(side, avail),
                    "PctMaxW": max_w}.get(str(unit), side)
            return pct / 100 * base

        pf: float | None = None  # tan(phi) of a power-factor function, signed as Q
        if t in ("FixedPFAbsorb", "FixedPFInject"):
            d = float(st["displacement"])
            pf = _tan(d) * (-1.0 if st.get("excitation") else 1.0)
            why = f"DER {t} {c.control_id}: cos phi {d:g}"
        elif t == "WattPF":
            y = _curve(st, der_p / max_w * 100 if max_w > 0 else 0.0)
            y = max(-1.0, min(1.0, y)) or 1.0
            pf = _tan(abs(y)) * (-1.0 if y > 0 else 1.0)
            why = f"DER WattPF {c.control_id}: cos phi {abs(y):g} at {-p_w:g} W"
        elif t == "FixedVar":
            q = var_of(float(st["setpoint"]), st.get("unit"))
            why = f"DER FixedVar {c.control_id}"
        elif t == "VoltVar":
            assert v_avg is not None
            q = var_of(_curve(st, voltage_pct(st, v_avg)), st.get("yUnit"))
            why = f"DER VoltVar {c.control_id} at {v_avg:g} V"
        else:  # WattVar
            q = var_of(_curve(st, der_p / max_w * 100 if max_w > 0 else 0.0), st.get("yUnit"))
            why = f"DER WattVar {c.control_id} at {-p_w:g} W"
        if pf is not None:
            q, setpoint = _hold_pf(p_w, pf, setpoint_w, limits)
        else:
            q, setpoint = _hold_var(p_w, q, setpoint_w, limits)
        return DerReactive(q + 0.0, setpoint, t, why)

    def next_change(self, now: datetime) -> datetime | None:
        """The next start or end of a scheduled control after ``now``."""
        best: datetime | None = None
        for c in self.controls.values():
            if not c.scheduled:
                continue
            for moment in (c.start, c.end):
                if moment is not None and moment > now and (best is None or moment < best):
                    best = moment
        return best

    # ------------------------------------------------------------------ notifications

    def due(self, now: datetime) -> list[tuple[DerControl, bool, datetime, list[str]]]:
        """NotifyDERStartStop owed now: (control, started, when, superseded ids), oldest
        first; a control whose window ended and was announced is dropped once announced."""
        out = []
        for c in self.controls.values():
            if not c.scheduled or c.start is None or c.end is None:
                continue
            if not c.started and c.start <= now:
                # What its start takes out of force: the defaults of its type, and the
                # scheduled ones of its type in force then that it outranks.
                others = [o.control_id for o in self.controls.values()
                          if o.control_id != c.control_id and o.control_type == c.control_type
                          and o.active(c.start) and (o.is_default or c.outranks(o))]
                out.append((c, True, c.start, others))
            if not c.stopped and c.end <= now:
                out.append((c, False, c.end, []))
        out.sort(key=lambda row: row[2])
        return out

    def announced(self, control_id: str, started: bool) -> None:
        """A NotifyDERStartStop was delivered; a control announced ended is gone."""
        c = self.controls.get(control_id)
        if c is None:
            return
        c = replace(c, started=True) if started else replace(c, started=True, stopped=True)
        if c.stopped:
            del self.controls[control_id]
        else:
            self.controls[control_id] = c
        self._save()

    def check_alarms(self, at: datetime,
                     readings: Mapping[int, tuple[float | None,
                                                  tuple[float, float] | None]]) -> bool:
        """Judge the ride-through curves in force against the readings (EVSE -> (Hz, (low V,
        high V))); queue an alarm for each that starts or ends; whether any did."""
        force = self.in_force(at)
        changed = False
        for control_type, fault in _TRIP.items():
            c = force.get(control_type)
            beyond = c is not None and any(_beyond(c, fault, hz, volts)
                                           for hz, volts in readings.values())
            current = self.alarms.get(control_type)
            if beyond and current is None:
                alarm = DerAlarm(control_type, fault, False, at,
                                 f"{control_type} threshold crossed ({c.control_id})")
                self.alarms[control_type] = alarm
                self.alarm_queue.append(alarm)
                log.warning("DER alarm: %s (%s)", fault, control_type)
                changed = True
            elif not beyond and current is not None:
                del self.alarms[control_type]
                self.alarm_queue.append(DerAlarm(control_type, fault, True, at))
                log.info("DER alarm ended: %s (%s)", fault, control_type)
                changed = True
        if changed:
            self._changed()
        return changed


def _curve(setting: Mapping[str, Any], x: float) -> float:
    points = [(Decimal(str(p["x"])), Decimal(str(p["y"])))
              for p in setting.get("curveData") or []]
    return float(curve_power(points, Decimal(str(x))))


def voltage_pct(setting: Mapping[str, Any], volts: float) -> float:
    """``volts`` on a voltage curve's x axis: % of the nominal, moved by a VoltVar curve's
    vRef; a curve whose x are above 150 is in volts and gets volts."""
    xs = [p.get("x") for p in setting.get("curveData") or [] if isinstance(p, Mapping)]
    if xs and all(_finite(x) and x > 150 for x in xs):
        return volts
    params = setting.get("reactivePowerParams")
    vref = params.get("vRef") if isinstance(params, Mapping) else None
    ref = float(vref) if _finite(vref) and vref > 0 else 100.0
    return volts / NOMINAL_V * 100 * 100 / ref


def freq_droop(setting: Mapping[str, Any], hz: float, rated_w: float) -> float | None:
    """The steady-state change of a FreqDroop in W, DER sign (positive: more injection);
    None inside its dead band (or a setting that says nothing)."""
    try:
        over, under = float(setting["overFreq"]), float(setting["underFreq"])
        k_over, k_under = float(setting["overDroop"]), float(setting["underDroop"])
    except (KeyError, TypeError, ValueError):
        return None
    nominal = 60.0 if (over + under) / 2 > 55 else 50.0
    k_over = k_over / 100 if k_over > 1 else k_over
    k_under = k_under / 100 if k_under > 1 else k_under
    if hz > over and k_over > 0:
        return -(hz - over) / (nominal * k_over) * rated_w
    if hz < under and k_under > 0:
        return (under - hz) / (nominal * k_under) * rated_w
    return None


def _tan(cos_phi: float) -> float:
    c = max(1e-6, min(1.0, cos_phi))
    return math.sqrt(1.0 - c * c) / c


def _hold_var(p_w: float, q: float, setpoint: float | None,
              limits: ReactiveLimits) -> tuple[float, float | None]:
    """Q within the var range; then reactive priority over a setpoint (it gives way to
    sqrt(VA^2 - Q^2)), or, without one, Q within what the active power leaves."""
    q = max(-limits.max_absorb_var, min(limits.max_inject_var, q))
    q = max(-limits.max_va, min(limits.max_va, q))
    room_p = math.sqrt(max(0.0, limits.max_va ** 2 - q * q))
    if setpoint is not None:
        if abs(setpoint) > room_p:
            setpoint = math.copysign(room_p, setpoint)
        return q, setpoint
    room_q = math.sqrt(max(0.0, limits.max_va ** 2 - p_w * p_w))
    return max(-room_q, min(room_q, q)), None


def _hold_pf(p_w: float, tan_phi: float, setpoint: float | None,
             limits: ReactiveLimits) -> tuple[float, float | None]:
    """Q = |P| tan(phi) (signed by ``tan_phi``); with a setpoint, P gives way so that the
    power factor holds within the var range and the VA rating; without one, Q is cut."""
    t = abs(tan_phi)
    q_limit = limits.max_inject_var if tan_phi >= 0 else limits.max_absorb_var
    if setpoint is None:
        q = math.copysign(min(abs(p_w) * t, q_limit), tan_phi)
        return _hold_var(p_w, q, None, limits)
    allowed = limits.max_va / math.sqrt(1.0 + t * t)
    if t > 0:
        allowed = min(allowed, q_limit / t)
    p = min(abs(p_w), allowed)
    setpoint = math.copysign(min(abs(setpoint), allowed), setpoint)
    q = math.copysign(min(p * t, q_limit), tan_phi)
    return q, setpoint


def _inside(setting: Mapping[str, Any], hz: float | None,
            volts: tuple[float, float] | None) -> bool:
    try:
        if hz is not None and not setting["lowFreq"] <= hz <= setting["highFreq"]:
            return False
        if volts is not None:
            low, high = (_as_volts(setting["lowVoltage"]), _as_volts(setting["highVoltage"]))
            if volts[0] < low or volts[1] > high:
                return False
    except (KeyError, TypeError):
        return True  # a setting that says nothing does not stop discharge
    return True


def _as_volts(value: float) -> float:
    return float(value) if value > 150 else float(value) / 100 * NOMINAL_V


def _beyond(c: DerControl, fault: str, hz: float | None,
            volts: tuple[float, float] | None) -> bool:
    ys = [p.get("y") for p in c.setting.get("curveData") or [] if isinstance(p, Mapping)]
    ys = [float(y) for y in ys if _finite(y)]
    if not ys:
        return False
    if fault in ("OverVoltage", "UnderVoltage"):
        if volts is None:
            return False
        pct = c.setting.get("yUnit") == "PctEffectiveV"
        scale = (lambda y: y / 100 * NOMINAL_V) if pct else (lambda y: y)
        if fault == "OverVoltage":
            return volts[1] > scale(min(ys))
        return volts[0] < scale(max(ys))
    if hz is None:
        return False
    return hz > min(ys) if fault == "OverFrequency" else hz < max(ys)


__all__ = ["APPLIED", "CONTROL_TYPES", "DerAlarm", "DerControl", "DerControls", "DerEffect",
           "DerReactive", "REACTIVE_TYPES", "freq_droop", "setting_field", "stage_supports",
           "supported_types", "validate_control", "voltage_pct"]
