"""What the V2X operation modes and the DER controls are known by when neither is built.

``agent.core.v2x_modes`` and ``agent.core.der`` are built on first use (``Station.provide``,
docs/performance.md, issue 18): an idle station without a power stage that takes setpoints
and without a stored DER control never imports them. Yet every 2.1 station declares their
settings and device-model variables, and start-up must find out cheaply whether a control
is stored. Those names and tables live here, and the two services read theirs from here,
so they cannot drift apart (tests/test_lazy_services_b.py checks the rest).
"""

from __future__ import annotations

from typing import Any

# V2XChargingCtrlr.LocalFrequencyUpdateThreshold (mHz): how far the grid frequency moves
# before a LocalFrequency plan is made again.
FREQUENCY_THRESHOLD_SETTING = "LocalFrequencyUpdateThreshold"
DEFAULT_THRESHOLD_MHZ = 20
# The operation modes an EVSE whose stage takes no setpoint applies (the pilot does them):
# what ``OperationModes.supported`` answers for it, and the answer while nothing built them.
CHARGE_ONLY_MODES = ("Idle", "ChargingOnly")

# Where the DER controls are kept in the state file (a JSON list; "[]" once all cleared).
DER_STORE_KEY = "core.der.controls"

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
# What a stage needs for a type: real-power ones need setpoints only (every stage here).
REACTIVE_TYPES = frozenset({"FixedPFAbsorb", "FixedPFInject", "FixedVar", "VoltVar", "WattPF",
                            "WattVar"})
RAMP_TYPES = frozenset({"Gradients"})
APPLIED = frozenset({"LimitMaxDischarge", "FreqWatt", "FreqDroop", "VoltWatt", "EnterService",
                     "HVMustTrip", "HVMomCess", "HVMayTrip", "LVMustTrip", "LVMomCess",
                     "LVMayTrip", "HFMustTrip", "HFMayTrip", "LFMustTrip"}) \
    | REACTIVE_TYPES | RAMP_TYPES


def der_stored(raw: str | None) -> bool:
    """Whether the state file's DER entry (``DER_STORE_KEY``'s value) may hold a control:
    anything but nothing and the empty list counts, an unreadable entry too (the service
    says what it makes of it, never start-up's guess)."""
    return raw is not None and raw.strip() not in ("", "[]")


def setting_field(control_type: str) -> str:
    return SETTING_FIELD.get(control_type, "curve")


def supported_types(*, reactive: bool, ramp: bool) -> tuple[str, ...]:
    """The control types a stage that takes setpoints can follow (DCDERCtrlr
    SupportedControls), in the schema's order: the real-power ones always, the reactive ones
    with reactive control, Gradients with ramp rates."""
    return tuple(t for t in CONTROL_TYPES if t in APPLIED
                 and (reactive or t not in REACTIVE_TYPES) and (ramp or t not in RAMP_TYPES))


def stage_supports(ev: Any) -> tuple[str, ...]:
    """:func:`supported_types` of a HAL EV side (a driver property that fails: not there)."""
    if not flag(ev, "supports_setpoint"):
        return ()
    return supported_types(reactive=flag(ev, "supports_reactive"),
                           ramp=flag(ev, "supports_ramp_rate"))


def takes_setpoints(ev: Any) -> bool:
    """Whether a HAL EV side's power stage takes setpoints: the EVSEs the V2X operation
    modes plan for (a station with one builds them at start-up)."""
    return flag(ev, "supports_setpoint")


def flag(obj: Any, name: str) -> bool:
    """A driver's capability flag: only a real ``True`` counts."""
    try:
        return getattr(obj, name, False) is True
    except Exception:  # noqa: BLE001 - a driver's bug reads as "cannot"
        return False


__all__ = ["APPLIED", "CHARGE_ONLY_MODES", "CONTROL_TYPES", "DEFAULT_THRESHOLD_MHZ",
           "DER_STORE_KEY", "FREQUENCY_THRESHOLD_SETTING", "RAMP_TYPES", "REACTIVE_TYPES",
           "SETTING_FIELD", "der_stored", "flag", "setting_field", "stage_supports",
           "supported_types", "takes_setpoints"]
