"""Bidirectional power (V2X) in the core: the bounds a signed power setpoint is held to.

The EVSE controller (agent/core/evse.py) keeps one requested setpoint per session and drives
the power stage with what this module makes of it, on every reconcile and every meter
sample: never beyond the EV's or the power stage's limits, never into the EV beyond the
pilot's offer (the limit sources' minimum), and never out of the EV unless a bidirectional
energy transfer mode is what the EV and the stage can do now, the protocol allows one (the
CSMS's allowed modes, where the V2X block has set them) and the discharge limit sources
leave room. Nothing here touches hardware or knows an OCPP version; the numbers in, the
numbers out.

Sign convention everywhere: positive is into the EV (charge, import at the EVSE's meter),
negative out of it (discharge, export).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from hal.interfaces import EnergyTransferMode, EvConnection, EvEnergyState, PowerLimits

NOMINAL_VOLTAGE = 230.0  # as the controller converts amps per phase to watts (AC)


@dataclass(frozen=True, slots=True)
class SetpointBounds:
    """How far a setpoint may go now: ``max_charge_w`` into the EV, ``max_discharge_w`` out
    of it (both >= 0), the least each side can follow, and why discharge is not possible
    (empty when it is)."""

    max_charge_w: float
    max_discharge_w: float
    min_charge_w: float = 0.0
    min_discharge_w: float = 0.0
    no_discharge: str = ""

    def clamp(self, watts: float) -> float:
        """``watts`` held within the bounds; a magnitude below a side's minimum is 0 (the
        stage cannot follow it: it idles rather than overshoots)."""
        if not math.isfinite(watts):
            return 0.0
        if watts >= 0:
            w = min(watts, self.max_charge_w)
            return w if w >= self.min_charge_w and w > 0 else 0.0
        w = min(-watts, self.max_discharge_w)
        return -w if w >= self.min_discharge_w and w > 0 else 0.0


@dataclass(frozen=True, slots=True)
class PowerStageSnapshot:
    """What the control socket, the page and the adapters may read of a power stage that
    takes setpoints (the V2X block reports the EV's and the stage's limits from here)."""

    bidirectional: bool  # a discharge is possible now (modes, limits, protocol)
    modes: tuple[str, ...]  # the energy transfer modes the EV and the stage can do now
    allowed_modes: tuple[str, ...] | None  # what the CSMS allows (None: not restricted)
    setpoint_requested_w: float | None  # what was asked for this session
    setpoint_w: float | None  # what the power stage follows now
    max_charge_w: float
    max_discharge_w: float
    ev_limits: PowerLimits | None
    stage_limits: PowerLimits | None
    energy: EvEnergyState | None
    discharge_limits: tuple[tuple[str, float], ...] = ()  # (source, W) caps on discharge
    no_discharge: str = ""  # why not, when ``bidirectional`` is False

    def as_dict(self) -> dict:
        """JSON for ``ctl status`` and /api/view."""
        def limits(p: PowerLimits | None) -> dict | None:
            if p is None:
                return None
            return {"max_charge_w": p.max_charge_w, "max_discharge_w": p.max_discharge_w,
                    "max_charge_a": p.max_charge_a, "max_discharge_a": p.max_discharge_a,
                    "min_charge_w": p.min_charge_w, "min_discharge_w": p.min_discharge_w}

        e = self.energy
        return {
            "bidirectional": self.bidirectional, "modes": list(self.modes),
            "allowed_modes": list(self.allowed_modes) if self.allowed_modes is not None
            else None,
            "setpoint_requested_w": self.setpoint_requested_w, "setpoint_w": self.setpoint_w,
            "max_charge_w": round(self.max_charge_w, 1),
            "max_discharge_w": round(self.max_discharge_w, 1),
            "ev_limits": limits(self.ev_limits), "stage_limits": limits(self.stage_limits),
            "discharge_limits": {name: w for name, w in self.discharge_limits},
            "no_discharge": self.no_discharge or None,
            "ev": None if e is None else {
                "soc_percent": e.soc_percent, "capacity_wh": e.capacity_wh,
                "min_soc_percent": e.min_soc_percent, "target_soc_percent": e.target_soc_percent,
                "max_soc_percent": e.max_soc_percent, "stored_wh": e.stored_wh,
                "target_energy_wh": e.target_energy_wh, "min_energy_wh": e.min_energy_wh,
                "max_energy_wh": e.max_energy_wh},
        }


def parse_modes(values: Iterable[str]) -> frozenset[EnergyTransferMode]:
    """Mode names (ISO 15118-20 / OCPP 2.1 spelling) to modes; an unknown name is an error
    naming it (a CSMS frame is validated before it gets here, so this is a programming or
    configuration error)."""
    out = set()
    for v in values:
        try:
            out.add(EnergyTransferMode(v))
        except ValueError:
            known = ", ".join(m.value for m in EnergyTransferMode)
            raise ValueError(f"energy transfer mode {v!r}: expected one of {known}") from None
    return frozenset(out)


def _safe(read: object, default: object) -> object:
    """A driver property that fails reads as its safe default (nothing known, no discharge)."""
    try:
        return read()  # type: ignore[operator]
    except Exception:  # noqa: BLE001 - a driver's bug never widens a bound
        return default


def stage_limits(ev: EvConnection, *, max_current_a: float, phases: int) -> PowerLimits:
    """The power stage's rating: the driver's, else the EVSE's current rating on its phases
    and no discharge (what every charge-only EVSE is)."""
    limits = _safe(lambda: ev.stage_limits, None)
    if isinstance(limits, PowerLimits):
        return limits
    return PowerLimits(max_charge_w=max_current_a * NOMINAL_VOLTAGE * phases,
                       max_charge_a=max_current_a)


def merge_limits(a: PowerLimits | None, b: PowerLimits | None) -> PowerLimits | None:
    """The stricter of two statements of the same side's limits (each maximum the lower,
    each minimum the higher, never above its maximum); one alone stands; None: none."""
    if a is None or b is None:
        return a if b is None else b

    def low(x: float | None, y: float | None) -> float | None:
        return y if x is None else x if y is None else min(x, y)

    charge = min(a.max_charge_w, b.max_charge_w)
    discharge = min(a.max_discharge_w, b.max_discharge_w)
    return PowerLimits(max_charge_w=charge, max_discharge_w=discharge,
                       max_charge_a=low(a.max_charge_a, b.max_charge_a),
                       max_discharge_a=low(a.max_discharge_a, b.max_discharge_a),
                       min_charge_w=min(charge, max(a.min_charge_w, b.min_charge_w)),
                       min_discharge_w=min(discharge, max(a.min_discharge_w,
                                                          b.min_discharge_w)))


def ev_side(ev: EvConnection, reported_limits: PowerLimits | None = None,
            reported_modes: frozenset[EnergyTransferMode] | None = None
            ) -> tuple[PowerLimits | None, frozenset[EnergyTransferMode]]:
    """The EV's limits and modes as the bounds use them: the driver's EV side, held to what
    the EV itself states over high-level communication (ISO 15118-20: its charge / discharge
    limits, its energy service) where it did. A mode counts only when both allow it (an EV
    that chose plain AC is not discharged because the stage could)."""
    ev_lim = _safe(lambda: ev.ev_limits, None)
    ev_lim = ev_lim if isinstance(ev_lim, PowerLimits) else None
    raw_modes = _safe(lambda: ev.energy_transfer_modes, frozenset())
    modes = frozenset(m for m in raw_modes if isinstance(m, EnergyTransferMode)) \
        if isinstance(raw_modes, (set, frozenset)) else frozenset()
    if reported_modes is not None:
        modes = modes & reported_modes if modes else frozenset(reported_modes)
    return merge_limits(ev_lim, reported_limits), modes


def bounds(ev: EvConnection, *, offer_a: float, phases: int, max_current_a: float,
           allowed_modes: frozenset[EnergyTransferMode] | None = None,
           discharge_limits: Mapping[str, float] | None = None,
           reported_limits: PowerLimits | None = None,
           reported_modes: frozenset[EnergyTransferMode] | None = None) -> SetpointBounds:
    """The bounds of a setpoint on ``ev`` now.

    ``offer_a`` is the pilot's offer (0: no energy may flow at all, either way), ``phases``
    the phases the EV is fed on, ``max_current_a`` the EVSE's rating (it bounds discharge
    current as it bounds charge current). A limit in A applies on AC modes only (converted at
    the nominal voltage on ``phases``): on DC the stage's driver, which knows the battery
    voltage, holds its own currents. ``reported_*``: what the EV stated over ISO 15118
    (:func:`ev_side`).
    """
    if offer_a <= 0:
        return SetpointBounds(0.0, 0.0, no_discharge="no energy may flow now (no offer)")
    stage = stage_limits(ev, max_current_a=max_current_a, phases=phases)
    ev_lim, modes = ev_side(ev, reported_limits, reported_modes)
    dc = bool(modes) and all(m.dc for m in modes)
    per_watt = NOMINAL_VOLTAGE * max(1, phases)

    charge = [offer_a * per_watt, stage.max_charge_w]
    if ev_lim is not None:
        charge.append(ev_lim.max_charge_w)
    if not dc:
        charge += [a * per_watt for a in (stage.max_charge_a,
                                          ev_lim.max_charge_a if ev_lim else None)
                   if a is not None]
    min_charge = max(stage.min_charge_w, ev_lim.min_charge_w if ev_lim else 0.0)

    why = ""
    if not any(m.bidirectional for m in modes):
        why = "no bidirectional energy transfer mode (the EV or the stage is charge-only)"
    elif allowed_modes is not None and not any(m.bidirectional and m in modes
                                               for m in allowed_modes):
        why = "the CSMS allows no bidirectional energy transfer mode for this session"
    elif ev_lim is None or not ev_lim.can_discharge:
        why = "the EV states no discharge limit"
    elif not stage.can_discharge:
        why = "the power stage cannot discharge"
    discharge = 0.0
    min_discharge = 0.0
    if not why:
        caps = [stage.max_discharge_w, ev_lim.max_discharge_w, max_current_a * per_watt]
        if not dc:
            caps += [a * per_watt for a in (stage.max_discharge_a, ev_lim.max_discharge_a)
                     if a is not None]
        caps += [max(0.0, w) for w in (discharge_limits or {}).values()]
        discharge = max(0.0, min(caps))
        min_discharge = max(stage.min_discharge_w, ev_lim.min_discharge_w)
        if discharge <= 0:
            why = "a discharge limit is 0"
    return SetpointBounds(max(0.0, min(charge)), discharge, min_charge, min_discharge, why)
