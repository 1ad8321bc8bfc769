"""DER controls (2.1 block R): the grid-support settings a grid operator gives a station whose
power stage can feed energy back, kept, scheduled and applied as limit / setpoint sources.

A control has an id, a type (DERControlEnumType), whether it is a *default* control (in force
whenever no scheduled control of its type is) or a *scheduled* one (in force from its
startTime for its duration), a priority (0 highest) and its setting, kept as the CSMS wrote
it (the field names of 2.1's DER types: ``curveData``, ``pctMaxDischargePower``, ...; the
core reads the few it applies).  Precedence among controls of one type and kind: the lower
priority number, then the newer; a control outranked by one whose time overlaps its own is
*superseded* (reported so, and named in ``supersededIds`` when the newer one is set or
starts).

Applied by :mod:`agent.core.v2x_modes` to every EVSE whose stage takes setpoints:

- **LimitMaxDischarge**: discharge capped at ``pctMaxDischargePower`` % of the stage's rating.
- **FreqWatt**: the setpoint from the curve at the measured frequency; ``y`` is % of the
  stage's maximum (PctMaxW / PctWAvail), in the DER sign convention: positive feeds the grid
  (discharge), negative draws from it (charge).
- **EnterService**: discharge only while the grid is inside its voltage and frequency window
  (voltages above 150 are volts, others % of the 230 V nominal).
- **Ride-through curves** (HV/LV/HF/LF MustTrip, MayTrip, MomCess): the grid beyond the curve's
  threshold (the lowest ``y`` of an HV / HF curve, the highest of an LV / LF one; voltage in
  % of nominal for PctEffectiveV, else volts; frequency in Hz) is an *alarm*, reported when
  it starts and ends; MustTrip and MomCess also stop discharge while it lasts.
- The others (FixedPFAbsorb / Inject, FixedVar, VoltVar, VoltWatt, WattPF, WattVar,
  FreqDroop, Gradients, PowerMonitoringMustTrip) are stored, scheduled, reported and
  notified like the rest, but not applied: the power stages this agent drives take a real
  power setpoint only (no reactive power, no ramp rate).

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

log = logging.getLogger("cp_agent.der")

STORE_KEY = "core.der.controls"
MAX_CONTROLS = 64  # DERCtrlr: what the state file keeps (a new one beyond: Rejected)
NOMINAL_V = 230.0

CONTROL_TYPES = (
    "EnterService", "FreqDroop", "FreqWatt", "FixedPFAbsorb", "FixedPFInject", "FixedVar",
    "Gradients", "HFMustTrip", "HFMayTrip", "HVMustTrip", "HVMomCess", "HVMayTrip",
    "LimitMaxDischarge", "LFMustTrip", "LVMustTrip", "LVMomCess", "LVMayTrip",
    "PowerMonitoringMustTrip", "VoltVar", "VoltWatt", "WattPF", "WattVar")
# The setting field of each type (SetDERControlRequest); every other type is a curve.
SETTING_FIELD = {"EnterService": "enterService", "FixedPFAbsorb": "fixedPFAbsorb",
                 "FixedPFInject": "fixedPFInject", "FixedVar": "fixedVar",
                 "FreqDroop": "freqDroop", "Gradients": "gradient",
                 "LimitMaxDischarge": "limitMaxDischarge"}
APPLIED = frozenset({"LimitMaxDischarge", "FreqWatt", "EnterService", "HVMustTrip",
                     "HVMomCess", "HVMayTrip", "LVMustTrip", "LVMomCess", "LVMayTrip",
                     "HFMustTrip", "HFMayTrip", "LFMustTrip"})
_UNSCHEDULED = frozenset({"EnterService", "Gradients"})  # their types have no start / duration
_TRIP = {"HVMustTrip": "OverVoltage", "HVMomCess": "OverVoltage", "HVMayTrip": "OverVoltage",
         "LVMustTrip": "UnderVoltage", "LVMomCess": "UnderVoltage", "LVMayTrip": "UnderVoltage",
         "HFMustTrip": "OverFrequency", "HFMayTrip": "OverFrequency",
         "LFMustTrip": "UnderFrequency"}
_STOPS_DISCHARGE = frozenset(t for t in _TRIP if not t.endswith("MayTrip"))


def setting_field(control_type: str) -> str:
    return SETTING_FIELD.get(control_type, "curve")


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
    """What the DER controls in force ask of one EVSE now."""

    setpoint_w: float | None = None
    discharge_cap_w: float | None = None
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
        if control_type == "FreqWatt" and setting.get("yUnit") not in ("PctMaxW", "PctWAvail"):
            problems.append(f"a FreqWatt curve gives power: yUnit PctMaxW or PctWAvail, not "
                            f"{setting.get('yUnit')!r}")
    elif control_type in ("FixedPFAbsorb", "FixedPFInject"):
        if not _finite(setting.get("displacement")) or not 0 <= setting["displacement"] <= 1:
            problems.append("displacement (cos phi) is not between 0 and 1")
    elif control_type == "FixedVar":
        if not _finite(setting.get("setpoint")) or not -100 <= setting["setpoint"] <= 100:
            problems.append("setpoint is not a percentage between -100 and 100")
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

    def needs_grid(self, at: datetime) -> bool:
        """Whether a control in force reads the grid (frequency or voltage)."""
        return any(t == "FreqWatt" or t == "EnterService" or t in _TRIP
                   for t in self.in_force(at))

    def effect(self, at: datetime, *, hz: float | None, volts: tuple[float, float] | None,
               max_charge_w: float, max_discharge_w: float) -> DerEffect:
        """What the controls in force ask of a stage of that rating, at that grid."""
        force = self.in_force(at)
        setpoint: float | None = None
        cap: float | None = None
        why = ""
        lmd = force.get("LimitMaxDischarge")
        if lmd is not None and _finite(lmd.setting.get("pctMaxDischargePower")):
            cap = max(0.0, float(lmd.setting["pctMaxDischargePower"])) / 100 * max_discharge_w
        fw = force.get("FreqWatt")
        if fw is not None and hz is not None:
            points = [(Decimal(str(p["x"])), Decimal(str(p["y"])))
                      for p in fw.setting.get("curveData") or []]
            pct = float(curve_power(points, Decimal(str(hz))))
            setpoint = -pct / 100 * (max_discharge_w if pct > 0 else max_charge_w)
            why = f"DER FreqWatt {fw.control_id} at {hz:g} Hz"
        es = force.get("EnterService")
        if es is not None and not _inside(es.setting, hz, volts):
            cap, why = 0.0, why or f"DER EnterService {es.control_id}: grid outside its window"
        if any(a.control_type in _STOPS_DISCHARGE and a.control_type in force
               for a in self.alarms.values()):
            cap = 0.0
        return DerEffect(setpoint, cap, why)

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
           "setting_field", "validate_control"]
