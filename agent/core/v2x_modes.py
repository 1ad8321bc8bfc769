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
  energy manager gives (:meth:`OperationModes.set_external_setpoint`; the period's own
  setpoint, if any, until it speaks).  **ExternalLimits**: no setpoint, the external limit
  source (``mqtt``) caps the charge as it always does, within the period's limits.
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
- DER controls in force (:mod:`agent.core.der`) act on top: a FreqWatt curve sets the
  setpoint from the frequency in every mode but Idle (the grid operator's function comes
  before the CSMS's schedule), LimitMaxDischarge caps discharge to its percentage of the
  stage's rating, and a grid outside an EnterService window or a tripping ride-through curve
  (a DER alarm) stops discharge altogether.
- A discharge needs the power path closed: while the setpoint is negative the pilot is
  offered at least the EVSE's minimum current even if the charge limit is lower (the
  setpoint, at most the charge limit, governs what flows; it is given to the stage before
  the offer rises, and taken back only after the offer fell).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from agent.clock import Clock
from agent.core.smart_charging import (
    CompositePeriod,
    OperationMode,
    V2xPeriod,
    curve_power,
)
from agent.core.v2x import NOMINAL_VOLTAGE, stage_limits

if TYPE_CHECKING:
    from agent.core.der import DerControls
    from agent.core.evse import EvseController

log = logging.getLogger("cp_agent.v2x")

FREQUENCY_THRESHOLD_SETTING = "LocalFrequencyUpdateThreshold"  # mHz (V2XChargingCtrlr)
DEFAULT_THRESHOLD_MHZ = 20
SOURCE_PROFILE = "csms"  # the discharge cap a period's dischargeLimit sets
SOURCE_DER = "der"  # the discharge cap of DER controls
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
        self.external_limits = False  # an external limit source (MQTT) is configured
        self.external_setpoint_source = False  # something gives external setpoints
        self.afrr: AfrrSignal | None = None
        self.plans: dict[int, V2xPlan] = {}  # the last plan per EVSE (status, tests)
        self._driven: dict[int, tuple[Any, Any]] = {}  # EVSE -> (session, setpoint) given
        self._caps: dict[int, dict[str, float | None]] = {}  # EVSE -> discharge caps given
        self._used_hz: dict[int, float | None] = {}  # the frequency each plan was made at
        self._grid_needed = asyncio.Event()

    # ------------------------------------------------------------------ inputs

    def set_external_setpoint(self, evse_id: int, watts: float | None) -> None:
        """A local energy manager's setpoint for ExternalSetpoint periods (0: every EVSE;
        None: withdrawn)."""
        if watts is None:
            self.external_setpoints.pop(evse_id, None)
        else:
            self.external_setpoints[evse_id] = float(watts)
        self.wake()

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
        out = [OperationMode.IDLE, OperationMode.CHARGING_ONLY]
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
        if q is None or mode in (OperationMode.CHARGING_ONLY, OperationMode.IDLE,
                                 OperationMode.EXTERNAL_LIMITS,
                                 OperationMode.LOCAL_LOAD_BALANCING):
            pass
        elif mode is OperationMode.CENTRAL_SETPOINT:
            setpoint, why = watts(q.setpoint), "the CSMS's setpoint"
        elif mode is OperationMode.EXTERNAL_SETPOINT:
            external = self.external_setpoints.get(evse.id, self.external_setpoints.get(0))
            if external is not None:
                setpoint, why = external, "the external setpoint"
            elif q.setpoint is not None:
                setpoint, why = watts(q.setpoint), "the period's setpoint (no external one yet)"
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
        der = self.der
        if der is not None and der.controls:
            stage = stage_limits(evse.hw.ev, max_current_a=evse.max_current_a,
                                 phases=evse.phases_in_use)
            effect = der.effect(now, hz=hz, volts=_volts(evse),
                                max_charge_w=stage.max_charge_w,
                                max_discharge_w=stage.max_discharge_w)
            der_cap = effect.discharge_cap_w
            if effect.setpoint_w is not None and mode is not OperationMode.IDLE:
                setpoint, why = effect.setpoint_w, effect.why
        if setpoint is not None:
            if charge_cap is not None:
                setpoint = min(setpoint, charge_cap)
            for cap in (profile_cap, der_cap):
                if cap is not None:
                    setpoint = max(setpoint, -cap)
            setpoint = round(setpoint, 3)
        self._used_hz[evse.id] = hz
        if mode in FREQUENCY_MODES or (der is not None and der.needs_grid(now)):
            self._grid_needed.set()
        plan = V2xPlan(mode, setpoint, {SOURCE_PROFILE: profile_cap, SOURCE_DER: der_cap},
                       hold_offer=setpoint is not None and setpoint < 0, why=why)
        self.plans[evse.id] = plan
        return plan

    async def drive(self, evse: EvseController, plan: V2xPlan) -> None:
        """Give the EVSE the plan's caps and setpoint (only what changed: the caps outlive a
        session, the setpoint belongs to the session it was given in)."""
        caps = self._caps.setdefault(evse.id, {})
        for source, cap in plan.discharge_caps.items():
            if caps.get(source, "unset") != cap:
                await evse.set_discharge_limit(source, cap)
                caps[source] = cap
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

    def next_change(self, now: datetime) -> datetime | None:
        """When a plan may change by time alone: a DER control's start or end, an aFRR
        signal's timestamp."""
        out = self.der.next_change(now) if self.der is not None else None
        if self.afrr is not None and self.afrr.at > now and (out is None or self.afrr.at < out):
            out = self.afrr.at
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
        alarms = False
        if self.der is not None:
            readings = {i: (self.frequency(e), _volts(e)) for i, e in self.evses.items()}
            alarms = self.der.check_alarms(self.clock.now(), readings)
        if moved or alarms:
            self.wake()


def _measures(evse: EvseController) -> frozenset[str]:
    try:
        return frozenset(evse.hw.meter.measures)
    except Exception:  # noqa: BLE001 - a driver that cannot say measures nothing more
        return frozenset()


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
