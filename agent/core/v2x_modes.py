"""V2X operation modes (2.1 block Q): what a charging schedule period asks of a bidirectional
power stage, turned into a signed setpoint and discharge caps for the EVSE.

The smart-charging scheduler (:mod:`agent.core.charging_profiles`) owns the timing: at every
boundary, and whenever an input here changes (the grid frequency moved by more than
``LocalFrequencyUpdateThreshold``, an aFRR signal came, an external setpoint, a DER control
started or stopped), it asks :meth:`OperationModes.plan` for each EVSE whose stage takes
setpoints and hands the result to :meth:`OperationModes.drive`.  The EVSE controller
(:mod:`agent.core.evse` with :mod:`agent.core.v2x`) holds every setpoint to the EV's and the
stage's limits, the pilot's offer and the discharge caps, and lets nothing out of the EV
unless a bidirectional transfer mode is possible and allowed.

What each mode does here (values in the period's rate unit, W = A x 230 V x phases in use):

- **ChargingOnly** (every 1.6 / 2.0.1 period): no setpoint; the composite limit drives the
  pilot.  **Idle**: the composite is 0 (the engine paints it so): nothing flows.
- **CentralSetpoint**: the period's setpoint.  **ExternalSetpoint**: the setpoint a local
  energy manager gives (:meth:`OperationModes.set_external_setpoint`: the MQTT bridge,
  ``ctl external``); while it has none in force (never given, withdrawn, or not renewed
  within its validity: stale) the period's own setpoint, else 0 W.  Not the last value: a
  stale discharge would go on exporting the EV's battery for a house load that may be gone,
  a stale charge would go on loading a fuse the energy manager was protecting; the period's
  setpoint is the CSMS's own value within the period's limits, and 0 is neither.
  **ExternalLimits**: the external limit source (``mqtt``) caps the charge as it always
  does, within the period's limits; an external charge limit in W
  (:meth:`OperationModes.set_external_limit`) is the setpoint (charge at most that).  In
  both external modes the external charge / discharge limits (W) bound the setpoint, and
  the discharge limit is a discharge cap of the EVSE (source ``external``); they are kept
  when not renewed (a limit only ever restricts).
  **LocalLoadBalancing**: no setpoint, the site's load manager (limit source ``site``)
  shares the connection, within the period's limits.
- **LocalFrequency** (FCR): ``v2xBaseline`` + the v2xFreqWattCurve at the grid frequency the
  EVSE's meter measures (the mock HAL: ``ctl grid-frequency HZ``), recomputed when it moved
  by ``LocalFrequencyUpdateThreshold`` mHz or more.  **CentralFrequency** (aFRR): the
  baseline + the v2xSignalWattCurve at the last AFRRSignal in force (its timestamp
  reached); the baseline alone before any signal.
- Every setpoint is held within the period's limit (charge) and dischargeLimit, and the
  composite's caps (station maximum, external constraints).  The dischargeLimit is also a
  discharge cap of the EVSE (source ``csms``), as is a DER LimitMaxDischarge (source
  ``der``).
- DER controls in force (:mod:`agent.core.der`) act on top, the grid operator's functions
  before the CSMS's schedule: a FreqWatt curve sets the setpoint from the frequency in
  every mode but Idle, a FreqDroop (without FreqWatt) moves the period's setpoint (or, with
  none, the power measured when the excursion began) by its droop; LimitMaxDischarge and
  VoltWatt cap discharge (the more restrictive cap wins), a VoltWatt below 0 makes a
  setpoint charge at least that; a grid outside an EnterService window or a tripping
  ride-through curve (a DER alarm) stops discharge altogether.  On a stage with reactive
  control the reactive function in force gives the stage a var setpoint, and a setpoint
  that would leave it too little of the VA rating gives way (reactive priority); on a stage
  with ramp rates a Gradients control sets them.  Re-planned when the voltage moved by
  ``VOLTAGE_THRESHOLD_V`` or, for a reactive function that follows the measured power, the
  power by ``POWER_THRESHOLD`` of the stage's rating.
- A discharge needs the power path closed: while the setpoint is negative the pilot is
  offered at least the EVSE's minimum current even if the charge limit is lower (the
  setpoint, at most the charge limit, governs what flows; it is given to the stage before
  the offer rises, and taken back only after the offer fell).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from agent.clock import Clock
from agent.core.smart_charging import (
    CompositePeriod,
    OperationMode,
    V2xPeriod,
    curve_power,
)
from agent.core.v2x import NOMINAL_VOLTAGE, bounds, stage_limits
from agent.core.v2x_names import (
    CHARGE_ONLY_MODES,
    DEFAULT_THRESHOLD_MHZ,
    FREQUENCY_THRESHOLD_SETTING,
)
from hal.interfaces import HalError, PowerLimits, ReactiveLimits

if TYPE_CHECKING:
    from agent.core.der import DerControls
    from agent.core.evse import EvseController

log = logging.getLogger("cp_agent.v2x")

SOURCE_PROFILE = "csms"  # the discharge cap a period's dischargeLimit sets
SOURCE_DER = "der"  # the discharge cap of DER controls
SOURCE_EXTERNAL = "external"  # the discharge cap an external energy manager sets
EXTERNAL_MODES = frozenset({OperationMode.EXTERNAL_SETPOINT, OperationMode.EXTERNAL_LIMITS})
FREQUENCY_MODES = frozenset({OperationMode.LOCAL_FREQUENCY, OperationMode.CENTRAL_FREQUENCY})


@dataclass(frozen=True, slots=True)
class V2xPlan:
    """What one EVSE is to do now: a signed setpoint in W (None: plain current-limited
    charging), its discharge caps per source (W >= 0; None: none), and whether the power path
    must stay up for a discharge (the pilot offered at least the minimum current)."""

    mode: OperationMode
    setpoint_w: float | None
    discharge_caps: Mapping[str, float | None] = field(default_factory=dict)
    hold_offer: bool = False
    why: str = ""  # what set the setpoint (log, status)
    # DER controls on a stage that can: reactive power (var, DER sign: positive injects;
    # None: unity power factor) and ramp rates ((normal, soft-start) W/s; None: no limit).
    reactive_var: float | None = None
    ramp_w_s: tuple[float | None, float | None] | None = None
    why_reactive: str = ""


@dataclass(frozen=True, slots=True)
class AfrrSignal:
    signal: int
    at: datetime  # from when it applies (AFRRSignalRequest.timestamp)


class OperationModes:
    """The V2X inputs of one station and the plan they make for each EVSE."""

    def __init__(self, evses: Mapping[int, EvseController], settings: Any, clock: Clock,
                 *, der: DerControls | None = None, poll_s: float = 1.0) -> None:
        self.evses = evses
        self.settings = settings
        self.clock = clock
        self.der = der
        self.poll_s = poll_s
        self.wake: Callable[[], None] = lambda: None  # the scheduler's (ChargingProfiles sets)
        self.external_setpoints: dict[int, float] = {}  # EVSE (0: each) -> W
        self.external_until: dict[int, datetime] = {}  # EVSE (0: each) -> valid until
        self.external_caps: dict[int, dict[str, float]] = {}  # EVSE -> charge/discharge W
        self._stale_logged: set[int] = set()
        self.external_limits = False  # an external limit source (MQTT) is configured
        self.external_setpoint_source = False  # something gives external setpoints
        self.afrr: AfrrSignal | None = None
        self.plans: dict[int, V2xPlan] = {}  # the last plan per EVSE (status, tests)
        self._driven: dict[int, tuple[Any, Any]] = {}  # EVSE -> (session, setpoint) given
        self._caps: dict[int, dict[str, float | None]] = {}  # EVSE -> discharge caps given
        self._used_hz: dict[int, float | None] = {}  # the frequency each plan was made at
        self._used_v: dict[int, float | None] = {}  # the voltage (mean of the phases)
        self._used_p: dict[int, float] = {}  # the measured power a reactive function used
        self._droop_pre: dict[int, float] = {}  # the power a FreqDroop excursion began at
        self._stage_failed: dict[int, str] = {}  # the last reactive / ramp error logged
        self._grid_needed = asyncio.Event()

    # ------------------------------------------------------------------ inputs

    def set_external_setpoint(self, evse_id: int, watts: float | None, *,
                              valid_s: float | None = None) -> None:
        """A local energy manager's setpoint for ExternalSetpoint periods (0: every EVSE;
        None: withdrawn), in force for ``valid_s`` seconds (None: until withdrawn); one not
        renewed by then is stale (see the module)."""
        self.external_until.pop(evse_id, None)
        self._stale_logged.discard(evse_id)
        if watts is None:
            self.external_setpoints.pop(evse_id, None)
        else:
            self.external_setpoints[evse_id] = float(watts)
            if valid_s is not None:
                self.external_until[evse_id] = self.clock.now() + timedelta(seconds=valid_s)
        self.wake()

    def set_external_limit(self, evse_id: int, direction: str, watts: float | None) -> None:
        """A local energy manager's ``charge`` or ``discharge`` limit (W >= 0; None: lifted)
        for the external modes."""
        if direction not in ("charge", "discharge"):
            raise ValueError(f"external limit {direction!r}: expected charge or discharge")
        caps = self.external_caps.setdefault(evse_id, {})
        if watts is None:
            caps.pop(direction, None)
        else:
            caps[direction] = max(0.0, float(watts))
        self.wake()

    def external_setpoint(self, evse_id: int, now: datetime | None = None
                          ) -> tuple[float | None, bool]:
        """The external setpoint in force for EVSE ``evse_id`` (its own, else the station's)
        and whether the one given went stale."""
        key = evse_id if evse_id in self.external_setpoints else 0
        watts = self.external_setpoints.get(key)
        until = self.external_until.get(key)
        if watts is not None and until is not None and (now or self.clock.now()) >= until:
            return None, True
        return watts, False

    def set_afrr(self, signal: int, at: datetime) -> None:
        """An aFRR activation signal (AFRRSignal) for CentralFrequency periods, from ``at``."""
        self.afrr = AfrrSignal(int(signal), at)
        self.wake()

    def frequency(self, evse: EvseController) -> float | None:
        """The grid frequency the EVSE's meter measures now (None: it does not say)."""
        reading = evse.reading
        hz = getattr(reading, "frequency_hz", None) if reading is not None else None
        return float(hz) if isinstance(hz, int | float) and hz > 0 else None

    def threshold_hz(self) -> float:
        try:
            mhz = int(self.settings.get(FREQUENCY_THRESHOLD_SETTING, DEFAULT_THRESHOLD_MHZ))
        except (TypeError, ValueError):
            mhz = DEFAULT_THRESHOLD_MHZ
        return max(0, mhz) / 1000.0

    def supported(self, evse_id: int = 0) -> list[str]:
        """The operation modes EVSE ``evse_id`` (0: every EVSE) can apply, in the order of
        OperationModeEnumType: Idle and ChargingOnly everywhere (the pilot does them); the
        setpoint modes where the power stage takes setpoints; LocalFrequency where the
        meter also measures frequency; the external ones only with an external source."""
        evses = [e for i, e in self.evses.items() if evse_id in (0, i)]
        setpoints = bool(evses) and all(e.hw.ev.supports_setpoint for e in evses)
        frequency = bool(evses) and all("frequency" in _measures(e) for e in evses)
        out = [OperationMode(m) for m in CHARGE_ONLY_MODES]  # Idle, ChargingOnly
        if setpoints:
            out += [OperationMode.CENTRAL_SETPOINT]
            if self.external_setpoint_source:
                out.append(OperationMode.EXTERNAL_SETPOINT)
            if self.external_limits:
                out.append(OperationMode.EXTERNAL_LIMITS)
            out.append(OperationMode.CENTRAL_FREQUENCY)
            if frequency:
                out.append(OperationMode.LOCAL_FREQUENCY)
            out.append(OperationMode.LOCAL_LOAD_BALANCING)
        return [m.value for m in out]

    # ------------------------------------------------------------------ the plan

    def plan(self, evse: EvseController, period: V2xPeriod | None,
             own: CompositePeriod | None, now: datetime) -> V2xPlan:
        """The setpoint and caps for ``evse`` now, from the V2X period in force (None: none)
        and its composite ``own`` (None: no profile caps it)."""
        mode = period.mode if period is not None else OperationMode.CHARGING_ONLY
        volts = NOMINAL_VOLTAGE * max(1, evse.phases_in_use)
        unit = period.rate_unit if period is not None else "A"

        def watts(value: object) -> float | None:
            if value is None:
                return None
            return float(Decimal(str(value))) * (volts if unit == "A" else 1.0)

        q = period.period if period is not None else None
        charge_cap = float(own.limit) * volts if own is not None else None
        profile_cap = None
        if q is not None and q.discharge_limit is not None:
            profile_cap = max(0.0, -(watts(q.discharge_limit) or 0.0))
        hz = self.frequency(evse)
        setpoint: float | None = None
        why = ""
        baseline = float(q.v2x_baseline) if q is not None and q.v2x_baseline is not None \
            else 0.0
        ext = self.external_caps.get(evse.id, {}) if q is not None and mode in EXTERNAL_MODES \
            else {}
        if q is None or mode in (OperationMode.CHARGING_ONLY, OperationMode.IDLE,
                                 OperationMode.LOCAL_LOAD_BALANCING):
            pass
        elif mode is OperationMode.EXTERNAL_LIMITS:
            if "charge" in ext:
                setpoint, why = ext["charge"], "the external charge limit"
        elif mode is OperationMode.CENTRAL_SETPOINT:
            setpoint, why = watts(q.setpoint), "the CSMS's setpoint"
        elif mode is OperationMode.EXTERNAL_SETPOINT:
            external, stale = self.external_setpoint(evse.id, now)
            gone = "the external setpoint went stale" if stale else "no external setpoint"
            if stale and evse.id not in self._stale_logged:
                self._stale_logged.add(evse.id)
                log.warning("evse %s: the external setpoint was not renewed in time: %s",
                            evse.id, "the period's setpoint" if q.setpoint is not None
                            else "0 W")
            if external is not None:
                setpoint, why = external, "the external setpoint"
            elif q.setpoint is not None:
                setpoint, why = watts(q.setpoint), f"the period's setpoint ({gone})"
            else:
                setpoint, why = 0.0, f"idle ({gone})"
        elif mode is OperationMode.LOCAL_FREQUENCY:
            if hz is not None and q.freq_watt:
                setpoint = baseline + float(curve_power(q.freq_watt, Decimal(str(hz))))
                why = f"the frequency-watt curve at {hz:g} Hz"
            else:
                setpoint, why = baseline, "the baseline (no frequency measured)"
        elif mode is OperationMode.CENTRAL_FREQUENCY:
            signal = self.afrr if self.afrr is not None and self.afrr.at <= now else None
            if signal is not None and q.signal_watt:
                setpoint = baseline + float(curve_power(q.signal_watt, signal.signal))
                why = f"the signal-watt curve at aFRR signal {signal.signal}"
            else:
                setpoint, why = baseline, "the baseline (no aFRR signal yet)"

        der_cap: float | None = None
        ramp: tuple[float | None, float | None] | None = None
        der = self.der
        stage = stage_limits(evse.hw.ev, max_current_a=evse.max_current_a,
                             phases=evse.phases_in_use)
        if der is not None and der.controls:
            effect = der.effect(now, hz=hz, volts=_volts(evse), v_avg=_mean_volts(evse),
                                max_charge_w=stage.max_charge_w,
                                max_discharge_w=stage.max_discharge_w, setpoint_w=setpoint,
                                droop_pre_w=self._droop_pre.get(evse.id, _power(evse)))
            self._droop_seen(evse, effect.droop, setpoint)
            der_cap, ramp = effect.discharge_cap_w, effect.ramp_w_s
            if effect.setpoint_w is not None and mode is not OperationMode.IDLE:
                setpoint, why = effect.setpoint_w, effect.why
            if effect.charge_floor_w is not None and setpoint is not None:
                setpoint = max(setpoint, effect.charge_floor_w)  # the caps below still win
        if setpoint is not None:
            for cap in (charge_cap, ext.get("charge")):
                if cap is not None:
                    setpoint = min(setpoint, cap)
            for cap in (profile_cap, der_cap, ext.get("discharge")):
                if cap is not None:
                    setpoint = max(setpoint, -cap)
            setpoint = round(setpoint, 3)
        reactive, why_q = None, ""
        if der is not None and der.controls:
            reactive, setpoint, why_q = self._reactive(
                evse, now, setpoint, stage, {SOURCE_PROFILE: profile_cap, SOURCE_DER: der_cap})
        self._used_hz[evse.id] = hz
        self._used_v[evse.id] = _mean_volts(evse)
        if mode in FREQUENCY_MODES or (der is not None and der.needs_grid(now)):
            self._grid_needed.set()
        plan = V2xPlan(mode, setpoint, {SOURCE_PROFILE: profile_cap, SOURCE_DER: der_cap,
                                        SOURCE_EXTERNAL: ext.get("discharge")},
                       hold_offer=setpoint is not None and setpoint < 0, why=why,
                       reactive_var=reactive, ramp_w_s=ramp, why_reactive=why_q)
        self.plans[evse.id] = plan
        return plan

    # ------------------------------------------------------------------ DER parts of a plan

    def _droop_seen(self, evse: EvseController, droop: bool, setpoint: float | None) -> None:
        """A FreqDroop excursion works from the power before it (IEEE 1547's P_pre): without a
        profile setpoint, the power measured when it began, kept until it is over."""
        if not droop:
            self._droop_pre.pop(evse.id, None)
        elif setpoint is None and evse.id not in self._droop_pre:
            measured = _power(evse)
            if measured is not None:
                self._droop_pre[evse.id] = measured

    def _reactive(self, evse: EvseController, now: datetime, setpoint: float | None,
                  stage: PowerLimits, caps: Mapping[str, float | None]
                  ) -> tuple[float | None, float | None, str]:
        """(var, setpoint, why): the reactive power of the DER function in force on a stage
        with reactive control, and the setpoint held so that both fit its ratings."""
        der, ev = self.der, evse.hw.ev
        if der is None or not _flag(ev, "supports_reactive"):
            return None, setpoint, ""
        try:
            limits = ev.reactive_limits
        except Exception:  # noqa: BLE001 - a driver's bug: no reactive power asked of it
            limits = None
        if not isinstance(limits, ReactiveLimits):
            return None, setpoint, ""
        if setpoint is not None:
            # What will flow once the power path is up: the setpoint within the EVSE's
            # bounds (the offer at the rating: the pilot may still rise).
            merged = {k: v for k, v in evse.discharge_limits.items() if k not in caps}
            merged.update({k: v for k, v in caps.items() if v is not None})
            b = bounds(ev, offer_a=evse.max_current_a, phases=evse.phases_in_use,
                       max_current_a=evse.max_current_a, allowed_modes=evse.allowed_transfer,
                       discharge_limits=merged)
            p_w = b.clamp(setpoint)
        else:
            p_w = _power(evse) or 0.0
        r = der.reactive(now, p_w=p_w, setpoint_w=setpoint, v_avg=_mean_volts(evse),
                         limits=limits, max_w=max(stage.max_charge_w, stage.max_discharge_w))
        held = r.setpoint_w
        if held is not None and held != setpoint:
            held = _toward_zero(held)  # the rounding never adds power
        if setpoint is None:
            self._used_p[evse.id] = p_w  # re-planned when the measured power moves
        else:
            self._used_p.pop(evse.id, None)
        return (None if r.var is None else _toward_zero(r.var)), held, r.why

    async def drive(self, evse: EvseController, plan: V2xPlan) -> None:
        """Give the EVSE the plan's caps and setpoint (only what changed: the caps outlive a
        session, the setpoint belongs to the session it was given in)."""
        caps = self._caps.setdefault(evse.id, {})
        for source, cap in plan.discharge_caps.items():
            if caps.get(source, "unset") != cap:
                await evse.set_discharge_limit(source, cap)
                caps[source] = cap
        await self._drive_stage(evse, plan)  # ramp rates and reactive power (DER)
        session, setpoint = self._driven.get(evse.id, (None, None))
        if session is not evse.session:
            setpoint = None  # a new session starts without a setpoint of ours
        if setpoint == plan.setpoint_w:
            # Nothing to change; in particular "no setpoint" where this service never gave
            # one leaves a setpoint set by hand (``ctl setpoint``) alone.
            self._driven[evse.id] = (evse.session, setpoint)
            return
        self._driven[evse.id] = (evse.session, plan.setpoint_w)
        log.info("evse %s: V2X %s, setpoint %s%s", evse.id, plan.mode.value,
                 "none" if plan.setpoint_w is None else f"{plan.setpoint_w:g} W",
                 f" ({plan.why})" if plan.why else "")
        await evse.set_power_setpoint(plan.setpoint_w)

    async def _drive_stage(self, evse: EvseController, plan: V2xPlan) -> None:
        """Give a stage that takes them the plan's ramp rates and reactive power (only what
        differs from what it follows). Neither moves energy by itself, so neither is a
        safety matter: a stage that refuses is logged (once per cause) and the plan goes
        on; the contactor rules and the setpoint's bounds are the EVSE's, unchanged."""
        ev = evse.hw.ev
        steps: list[tuple[str, Callable[[], Any]]] = []
        rates = plan.ramp_w_s or (None, None)
        try:
            if _flag(ev, "supports_ramp_rate") and tuple(ev.ramp_rates) != rates:
                steps.append((f"ramp rates {rates}", lambda: ev.set_ramp_rates(*rates)))
            if _flag(ev, "supports_reactive") and ev.reactive_setpoint != plan.reactive_var:
                steps.append((f"reactive setpoint {plan.reactive_var}",
                              lambda: ev.set_reactive_setpoint(plan.reactive_var)))
        except Exception:  # noqa: BLE001 - a driver's bug never stops the scheduler
            log.exception("evse %s: the power stage's ramp / reactive state unreadable",
                          evse.id)
            return
        for what, step in steps:
            try:
                await step()
                log.info("evse %s: DER %s%s", evse.id, what,
                         f" ({plan.why_reactive})" if "reactive" in what and plan.why_reactive
                         else "")
                self._stage_failed.pop(evse.id, None)
            except (HalError, NotImplementedError, ValueError, TimeoutError) as exc:
                if self._stage_failed.get(evse.id) != str(exc):
                    log.error("evse %s: power stage refused the %s: %s", evse.id, what, exc)
                    self._stage_failed[evse.id] = str(exc)

    def next_change(self, now: datetime) -> datetime | None:
        """When a plan may change by time alone: a DER control's start or end, an aFRR
        signal's timestamp, an external setpoint's end of validity."""
        out = self.der.next_change(now) if self.der is not None else None
        if self.afrr is not None and self.afrr.at > now and (out is None or self.afrr.at < out):
            out = self.afrr.at
        for until in self.external_until.values():  # an external setpoint goes stale
            if until > now and (out is None or until < out):
                out = until
        return out

    # ------------------------------------------------------------------ the grid watcher

    async def run(self) -> None:
        """While a plan depends on the grid (a frequency mode, a DER control that watches
        frequency or voltage), look at the meters every ``poll_s``: re-plan when the
        frequency moved by the threshold, and let the DER controls judge alarms."""
        while True:
            if not self._grid_needed.is_set():
                await self._grid_needed.wait()
            await self.clock.sleep(self.poll_s)
            self._grid_needed.clear()
            try:
                self.check_grid()
            except Exception:  # noqa: BLE001 - the watcher never dies of one bad reading
                log.exception("V2X grid watcher")
            if any(p.mode in FREQUENCY_MODES for p in self.plans.values()) or (
                    self.der is not None and self.der.needs_grid(self.clock.now())):
                self._grid_needed.set()

    def _der_inputs_moved(self) -> bool:
        """Whether the voltage or the active power a DER function in force follows moved
        enough since its plan was made."""
        assert self.der is not None
        watched = self.der.watches(self.clock.now())
        moved = False
        for evse_id, evse in self.evses.items():
            if evse_id not in self.plans:
                continue  # a charge-only EVSE: no plan follows its readings
            if "voltage" in watched:
                v, used_v = _mean_volts(evse), self._used_v.get(evse_id)
                if v is not None and (used_v is None
                                      or abs(v - used_v) >= VOLTAGE_THRESHOLD_V - 1e-9):
                    moved = True
            used_p = self._used_p.get(evse_id)
            if "power" in watched and used_p is not None:
                p = _power(evse)
                rating = stage_limits(evse.hw.ev, max_current_a=evse.max_current_a,
                                      phases=evse.phases_in_use)
                step = POWER_THRESHOLD * max(rating.max_charge_w, rating.max_discharge_w, 1.0)
                if p is not None and abs(p - used_p) >= step:
                    moved = True
        return moved

    def check_grid(self) -> None:
        """One look at the readings: wake the scheduler when a plan's frequency moved by
        the threshold or a DER alarm started or ended."""
        moved = False
        threshold = self.threshold_hz()
        for evse_id, evse in self.evses.items():
            hz = self.frequency(evse)
            used = self._used_hz.get(evse_id)
            if hz is not None and (used is None or abs(hz - used) >= threshold - 1e-9):
                if used != hz:
                    moved = True
        if self.der is not None:
            moved = self._der_inputs_moved() or moved
        alarms = False
        if self.der is not None:
            readings = {i: (self.frequency(e), _volts(e)) for i, e in self.evses.items()}
            alarms = self.der.check_alarms(self.clock.now(), readings)
        if moved or alarms:
            self.wake()


VOLTAGE_THRESHOLD_V = 1.0  # a volt-var / volt-watt plan is made again when V moved this much
POWER_THRESHOLD = 0.01  # a watt-var / power-factor plan, when P moved this share of rating


def _measures(evse: EvseController) -> frozenset[str]:
    try:
        return frozenset(evse.hw.meter.measures)
    except Exception:  # noqa: BLE001 - a driver that cannot say measures nothing more
        return frozenset()


def _flag(obj: Any, name: str) -> bool:
    try:
        return getattr(obj, name, False) is True
    except Exception:  # noqa: BLE001 - a driver's bug reads as "cannot"
        return False


def _toward_zero(value: float) -> float:
    return math.trunc(value * 1000) / 1000 + 0.0


def _power(evse: EvseController) -> float | None:
    """The active power the EVSE's meter measures now (HAL sign; None: no reading)."""
    reading = evse.reading
    watts = getattr(reading, "power_w", None) if reading is not None else None
    return float(watts) if isinstance(watts, int | float) and math.isfinite(watts) else None


def _mean_volts(evse: EvseController) -> float | None:
    """The mean of the phase voltages the EVSE's meter measures (what a volt-var or a
    volt-watt curve is judged on; None: it does not say)."""
    reading = evse.reading
    volts = getattr(reading, "voltage_v", None) if reading is not None else None
    values = [float(v) for v in volts or () if isinstance(v, int | float) and v > 0]
    return sum(values) / len(values) if values else None


def _volts(evse: EvseController) -> tuple[float, float] | None:
    """The lowest and the highest phase voltage the EVSE's meter measures (None: it does not
    say)."""
    reading = evse.reading
    volts = getattr(reading, "voltage_v", None) if reading is not None else None
    if not volts:
        return None
    values = [float(v) for v in volts if isinstance(v, int | float) and v > 0]
    return (min(values), max(values)) if values else None


__all__ = ["AfrrSignal", "FREQUENCY_THRESHOLD_SETTING", "OperationModes", "V2xPlan"]
