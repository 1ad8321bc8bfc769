"""The DER controls that shape reactive power and ramps (issue 17, 2.1 block R): FixedPF,
FixedVar, VoltVar, VoltWatt, WattPF, WattVar, FreqDroop and Gradients applied by the core
(agent/core/der.py, agent/core/v2x_modes.py) to the mock HAL's bidirectional stage
(hal/mock_v2x.py), mostly at the core's level on a fake clock, and end to end against the
strict 2.1 test CSMS: the P and Q of each type at a given grid and power, the ratings never
exceeded (hypothesis), a gradient's ramp in simulated time, the controls after a restart,
and the reactive measurands in TransactionEvent.
"""

from __future__ import annotations

import asyncio
import math
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.clock import FakeClock
from agent.core.der import DerControls, freq_droop, supported_types, validate_control
from agent.core.smart_charging import ChargingSchedulePeriod, OperationMode, V2xPeriod
from agent.core.v2x_modes import OperationModes
from hal.interfaces import MeterReading, ReactiveLimits
from hal.mock import MockHal
from hal.mock_v2x import BidiSim, V2xParams
from tests.conftest import charging201, eventually, online201
from tests.test_timing import rig
from tests.test_v21_v2x import ALLOW, V2X_HAL, install, period, profile, sample, stage

SID = "CP1"
LIMITS = ReactiveLimits(max_va=11_000, max_inject_var=5000, max_absorb_var=5000)
MAX_W = 11_000.0
TAN = {pf: math.sqrt(1 - pf * pf) / pf for pf in (0.9, 0.95)}
VOLT_VAR = {"priority": 0, "yUnit": "PctMaxVar",
            "curveData": [{"x": 92, "y": 30}, {"x": 98, "y": 0}, {"x": 102, "y": 0},
                          {"x": 108, "y": -30}]}


class Mem:
    """The state file's settings, in memory (what DerControls persists to)."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def get_setting(self, key: str) -> str | None:
        return self.values.get(key)

    def set_setting(self, key: str, value: str) -> None:
        self.values[key] = value


def make_der(*controls: tuple[str, dict], storage: Mem | None = None,
             clock: FakeClock | None = None) -> DerControls:
    der = DerControls(storage or Mem(), clock or FakeClock())
    for i, (control_type, setting) in enumerate(controls):
        assert validate_control(control_type, True, setting) is None, (control_type, setting)
        assert der.set(f"c{i}", control_type, True, setting)[0] == "Accepted"
    return der


def q_of(der: DerControls, p_w: float, *, setpoint: float | None = None, volts: float = 230.0,
         limits: ReactiveLimits = LIMITS) -> Any:
    return der.reactive(der.clock.now(), p_w=p_w, setpoint_w=setpoint, v_avg=volts,
                        limits=limits, max_w=MAX_W)


def effect(der: DerControls, *, hz: float = 50.0, volts: float = 230.0,
           setpoint: float | None = None, pre: float | None = None) -> Any:
    return der.effect(der.clock.now(), hz=hz, volts=(volts, volts), v_avg=volts,
                      max_charge_w=MAX_W, max_discharge_w=MAX_W, setpoint_w=setpoint,
                      droop_pre_w=pre)


# ====================================================================== reactive functions


def test_fixed_power_factor_follows_the_direction_of_the_active_power():
    """FixedPFInject while the stage injects (discharges), FixedPFAbsorb while it absorbs
    (charges); the excitation flag says which way the vars go."""
    der = make_der(("FixedPFInject", {"priority": 0, "displacement": 0.9, "excitation": False}),
                   ("FixedPFAbsorb", {"priority": 0, "displacement": 0.95, "excitation": True}))
    r = q_of(der, -4000)  # discharging 4 kW (HAL sign)
    assert r.control_type == "FixedPFInject" and r.var == pytest.approx(4000 * TAN[0.9])
    r = q_of(der, 6000)  # charging 6 kW
    assert r.control_type == "FixedPFAbsorb" and r.var == pytest.approx(-6000 * TAN[0.95])
    assert q_of(der, 0).var is None  # standing still: no power factor to hold


def test_a_power_factor_setpoint_gives_way_to_the_va_rating_keeping_its_power_factor():
    der = make_der(("FixedPFInject", {"priority": 0, "displacement": 0.9, "excitation": False}))
    r = q_of(der, -11_000, setpoint=-11_000)
    assert r.setpoint_w == pytest.approx(-9900)  # 0.9 x 11 kVA
    assert r.var == pytest.approx(9900 * TAN[0.9])
    assert math.hypot(r.setpoint_w, r.var) == pytest.approx(11_000)
    # Without a setpoint the pilot's charge comes first: the vars get what is left.
    r = q_of(der, -10_500)
    assert r.setpoint_w is None and r.var == pytest.approx(math.sqrt(11_000**2 - 10_500**2))


@pytest.mark.parametrize("unit,pct,p_w,expected", [
    ("PctMaxVar", 40, 0, 2000),
    ("PctMaxVar", -60, 0, -3000),
    ("PctMaxW", 10, 0, 1100),
    ("PctVarAvail", 50, 10_000, 0.5 * math.sqrt(11_000**2 - 10_000**2)),
])
def test_fixed_var_is_a_share_of_the_unit_it_names(unit, pct, p_w, expected):
    der = make_der(("FixedVar", {"priority": 0, "setpoint": pct, "unit": unit}))
    assert q_of(der, p_w).var == pytest.approx(expected)


def test_fixed_var_has_priority_over_a_setpoint_but_not_over_the_pilots_charge():
    der = make_der(("FixedVar", {"priority": 0, "setpoint": 100, "unit": "PctMaxVar"}))
    r = q_of(der, -11_000, setpoint=-11_000)
    assert r.var == 5000 and r.setpoint_w == pytest.approx(-math.sqrt(11_000**2 - 5000**2))
    r = q_of(der, 10_000)  # plain charging at 10 kW: 4.58 kvar left
    assert r.var == pytest.approx(math.sqrt(11_000**2 - 10_000**2)) and r.setpoint_w is None


@pytest.mark.parametrize("volts,expected_pct", [
    (230.0, 0.0), (218.5, 15.0), (241.5, -15.0), (250.0, -30.0), (200.0, 30.0)])
def test_volt_var_gives_the_curves_reactive_power_at_the_measured_voltage(volts, expected_pct):
    der = make_der(("VoltVar", VOLT_VAR))
    assert q_of(der, 0, volts=volts).var == pytest.approx(expected_pct / 100 * 5000)


def test_volt_var_curve_in_volts_and_a_moved_reference_voltage():
    in_volts = {**VOLT_VAR, "curveData": [{"x": 211.6, "y": 30}, {"x": 225.4, "y": 0},
                                          {"x": 234.6, "y": 0}, {"x": 248.4, "y": -30}]}
    assert q_of(make_der(("VoltVar", in_volts)), 0, volts=241.5).var == pytest.approx(-750)
    shifted = {**VOLT_VAR, "reactivePowerParams": {"vRef": 102}}
    # 241.5 V is 105 % of 230 V, 102.94 % of the moved reference.
    assert q_of(make_der(("VoltVar", shifted)), 0, volts=241.5).var == pytest.approx(
        -30 * (105 / 1.02 - 102) / 6 / 100 * 5000)


def test_watt_var_and_watt_pf_follow_the_active_power():
    watt_var = {"priority": 0, "yUnit": "PctMaxVar",
                "curveData": [{"x": -100, "y": -20}, {"x": 0, "y": 0}, {"x": 50, "y": 0},
                              {"x": 100, "y": 40}]}
    der = make_der(("WattVar", watt_var))
    assert q_of(der, -11_000, setpoint=-11_000).var == pytest.approx(2000)  # full injection
    assert q_of(der, 5500).var == pytest.approx(-500)  # charging half: absorbing
    watt_pf = {"priority": 0, "yUnit": "Not_Applicable",
               "curveData": [{"x": 0, "y": 1}, {"x": 50, "y": 1}, {"x": 100, "y": 0.9}]}
    der = make_der(("WattPF", watt_pf))
    r = q_of(der, -8250)  # 75 % injection: cos phi 0.95, y > 0 absorbs
    assert r.var == pytest.approx(-8250 * TAN[0.95])
    assert q_of(der, -2000).var == pytest.approx(0.0)


def test_one_reactive_function_at_a_time_the_lowest_priority_number():
    der = make_der(("FixedVar", {"priority": 3, "setpoint": 20, "unit": "PctMaxVar"}),
                   ("VoltVar", {**VOLT_VAR, "priority": 1}))
    assert q_of(der, 0, volts=241.5).control_type == "VoltVar"
    der = make_der(("FixedVar", {"priority": 1, "setpoint": 20, "unit": "PctMaxVar"}),
                   ("VoltVar", {**VOLT_VAR, "priority": 1}))
    assert q_of(der, 0, volts=241.5).control_type == "FixedVar"  # a tie: the fixed order


# ====================================================================== active power functions


def test_volt_watt_caps_discharge_and_below_zero_makes_a_setpoint_charge():
    der = make_der(("VoltWatt", {"priority": 0, "yUnit": "PctMaxW", "curveData": [
        {"x": 106, "y": 100}, {"x": 110, "y": 0}, {"x": 112, "y": -20}]}))
    assert effect(der).discharge_cap_w == pytest.approx(MAX_W)
    assert effect(der, volts=248.4).discharge_cap_w == pytest.approx(0.5 * MAX_W)
    high = effect(der, volts=257.6)
    assert high.discharge_cap_w == 0 and high.charge_floor_w == pytest.approx(0.2 * MAX_W)


@pytest.mark.parametrize("hz,expected", [(50.1, None), (50.45, -3900.0), (49.3, -7200.0),
                                         (51.0, -1480.0)])
def test_freq_droop_moves_the_setpoint_by_its_droop_outside_the_dead_band(hz, expected):
    """Discharging 5 kW (HAL -5000 W), droop 5 % of 50 Hz on an 11 kW rating: 0.25 Hz over
    the band is 1100 W less injection, 0.5 Hz under it 2200 W more."""
    setting = {"priority": 0, "overFreq": 50.2, "underFreq": 49.8, "overDroop": 0.05,
               "underDroop": 5, "responseTime": 1}  # 5: a percentage, read as 0.05
    e = effect(make_der(("FreqDroop", setting)), hz=hz, setpoint=-5000)
    if expected is None:
        assert e.setpoint_w is None and not e.droop  # inside the dead band: the plan's own
    else:
        assert e.setpoint_w == pytest.approx(expected) and e.droop
    assert freq_droop({**setting, "overFreq": 60.036, "underFreq": 59.964}, 60.336, 1000) \
        == pytest.approx(-0.3 / (60 * 0.05) * 1000)  # a 60 Hz grid


def test_freq_watt_comes_before_freq_droop_and_gradients_become_ramp_rates():
    droop = {"priority": 0, "overFreq": 50.2, "underFreq": 49.8, "overDroop": 0.05,
             "underDroop": 0.05, "responseTime": 1}
    curve = {"priority": 0, "yUnit": "PctMaxW",
             "curveData": [{"x": 49.5, "y": 50}, {"x": 50.5, "y": -50}]}
    der = make_der(("FreqDroop", droop), ("FreqWatt", curve),
                   ("Gradients", {"priority": 0, "gradient": 10, "softGradient": 0}))
    e = effect(der, hz=49.5, setpoint=2000)
    assert e.setpoint_w == pytest.approx(-0.5 * MAX_W) and "FreqWatt" in e.why
    assert e.ramp_w_s == (pytest.approx(1100), None)  # 0: no soft-start limit


def test_types_and_settings_that_cannot_be_followed_are_refused():
    bad = [
        ("FixedVar", {"priority": 0, "setpoint": 10, "unit": "PctEffectiveV"}),
        ("FixedPFInject", {"priority": 0, "displacement": 0, "excitation": False}),
        ("WattPF", {"priority": 0, "yUnit": "Not_Applicable",
                    "curveData": [{"x": 0, "y": 0}, {"x": 100, "y": 0.9}]}),
        ("VoltVar", {**VOLT_VAR, "yUnit": "PctEffectiveV"}),
        ("VoltVar", {**VOLT_VAR, "reactivePowerParams": {"vRef": 230}}),
        ("VoltWatt", {**VOLT_VAR, "yUnit": "PctMaxVar"}),
        ("FreqDroop", {"priority": 0, "overFreq": 49.8, "underFreq": 50.2, "overDroop": 0.05,
                       "underDroop": 0.05, "responseTime": 1}),
        ("Gradients", {"priority": 0, "gradient": -1, "softGradient": 0}),
    ]
    for control_type, setting in bad:
        problem = validate_control(control_type, True, setting)
        assert problem is not None and problem[0] == "InvalidValue", (control_type, setting)
    every = supported_types(reactive=True, ramp=True)
    assert {"VoltVar", "WattPF", "Gradients", "FreqDroop"} <= set(every)
    assert "PowerMonitoringMustTrip" not in every
    plain = supported_types(reactive=False, ramp=False)
    assert "LimitMaxDischarge" in plain and "VoltWatt" in plain
    assert not {"FixedVar", "VoltVar", "WattVar", "Gradients"} & set(plain)


def test_controls_survive_a_restart_of_the_core():
    storage, clock = Mem(), FakeClock()
    make_der(("VoltVar", VOLT_VAR), ("Gradients", {"priority": 0, "gradient": 5,
                                                  "softGradient": 1}),
             storage=storage, clock=clock)
    again = DerControls(storage, clock)  # a new process over the same state file
    assert q_of(again, 0, volts=241.5).var == pytest.approx(-750)
    assert effect(again).ramp_w_s == (pytest.approx(550), pytest.approx(110))


# ====================================================================== the mock stage


async def _stage(params: V2xParams, *, ramp: tuple[float, float] | None = None
                 ) -> tuple[MockHal, list[float]]:
    """A bidirectional EVSE driven by hand: ramp rates set, then plugged, offered 32 A and
    its contactor closed at t = 0 of a hand-moved clock."""
    now = [0.0]
    hal = MockHal(1, monotonic=lambda: now[0], max_current_a=32.0, ev_max_current_a=32.0,
                  v2x={1: params}, display=None)
    await hal.start(lambda event: None)
    hw = hal.evses[1]
    if ramp is not None:
        await hw.ev.set_ramp_rates(*ramp)
    hal.plug(1)
    await hw.ev.set_current_limit(32)
    await hw.contactor.set(True)
    return hal, now


async def test_mock_stage_ramps_at_its_rates_and_drops_to_a_falling_bound_at_once():
    params = V2xParams(battery_wh=500_000, stage_max_charge_w=11_000,
                       stage_max_discharge_w=11_000)
    hal, now = await _stage(params, ramp=(1000.0, 500.0))
    hw, meter = hal.evses[1], hal.evses[1].meter
    now[0] = 4.0
    assert (await meter.read()).power_w == pytest.approx(2000)  # soft start: 500 W/s
    now[0] = 22.0
    r = await meter.read()
    assert r.power_w == pytest.approx(11_000)
    assert r.energy_import_wh == pytest.approx(11_000 * 22 / 2 / 3600)
    await hw.ev.set_power_setpoint(-11_000)  # normal rate now: 22 s from +11 kW to -11 kW
    now[0] = 33.0
    r = await meter.read()
    assert r.power_w == pytest.approx(0, abs=1e-6)
    assert r.energy_import_wh == pytest.approx(11_000 * 22 / 2 / 3600 + 11_000 * 11 / 2 / 3600)
    now[0] = 44.0
    r = await meter.read()
    assert r.power_w == pytest.approx(-11_000)
    assert r.energy_export_wh == pytest.approx(11_000 * 11 / 2 / 3600)
    await hw.ev.set_power_setpoint(None)  # back to charging at the offer, ramping up
    now[0] = 50.0
    assert (await meter.read()).power_w == pytest.approx(-5000)
    now[0] = 70.0
    await hw.ev.set_current_limit(10)  # the pilot's offer falls: at once, not ramped
    assert (await meter.read()).power_w == pytest.approx(10 * 230 * 3)


async def test_mock_stage_reactive_power_within_its_var_range_and_va_rating():
    params = V2xParams(battery_wh=500_000, stage_max_charge_w=11_000,
                       stage_max_discharge_w=11_000)
    hal, now = await _stage(params)
    hw, meter = hal.evses[1], hal.evses[1].meter
    assert "power_reactive" in meter.measures and hw.ev.supports_reactive
    await hw.ev.set_reactive_setpoint(3000)  # inject 3 kvar while charging 11 kW: no room
    r = await meter.read()
    assert r.power_w == 11_000 and r.power_reactive_var == 0 and r.power_factor == 1
    await hw.ev.set_power_setpoint(6000)
    r = await meter.read()
    assert r.power_reactive_var == -3000  # injected: exported, as a meter counts it
    assert r.power_factor == pytest.approx(6000 / math.hypot(6000, 3000), abs=1e-4)
    assert r.current_a[0] == pytest.approx(math.hypot(6000, 3000) / 690, abs=1e-3)
    await hw.ev.set_reactive_setpoint(-9000)  # beyond 44 % of 11 kVA
    assert (await meter.read()).power_reactive_var == pytest.approx(0.44 * 11_000)
    await hw.contactor.set(False)
    r = await meter.read()
    assert r.power_reactive_var == 0 and r.power_factor is None  # nothing flows


async def test_a_stage_without_reactive_control_says_so():
    hal, _ = await _stage(V2xParams(reactive=False, ramp=False))
    hw = hal.evses[1]
    assert not hw.ev.supports_reactive and hw.ev.reactive_limits is None
    assert not hw.ev.supports_ramp_rate and "power_reactive" not in hw.meter.measures
    with pytest.raises(NotImplementedError):
        await hw.ev.set_reactive_setpoint(100)
    r = await hw.meter.read()
    assert r.power_reactive_var is None and r.power_factor is None


# ====================================================================== the ratings, always

REACTIVE = st.one_of(
    st.builds(lambda t, d, e: (t, {"priority": 0, "displacement": d, "excitation": e}),
              st.sampled_from(["FixedPFAbsorb", "FixedPFInject"]), st.floats(0.05, 1.0),
              st.booleans()),
    st.builds(lambda pct, unit: ("FixedVar", {"priority": 0, "setpoint": pct, "unit": unit}),
              st.floats(-100, 100), st.sampled_from(["PctMaxVar", "PctVarAvail", "PctMaxW"])),
    st.builds(lambda kind, xs, ys, unit: (kind, {
        "priority": 0, "yUnit": unit,
        "curveData": [{"x": x, "y": y} for x, y in zip(xs, ys, strict=False)]}),
        st.sampled_from(["VoltVar", "WattVar"]),
        st.lists(st.floats(-100, 120), min_size=2, max_size=4, unique=True).map(sorted),
        st.lists(st.floats(-100, 100), min_size=4, max_size=4),
        st.sampled_from(["PctMaxVar", "PctVarAvail", "PctMaxW"])),
    st.builds(lambda xs, ys: ("WattPF", {
        "priority": 0, "yUnit": "Not_Applicable",
        "curveData": [{"x": x, "y": y} for x, y in zip(xs, ys, strict=False)]}),
        st.lists(st.floats(-100, 100), min_size=2, max_size=3, unique=True).map(sorted),
        st.lists(st.floats(0.1, 1.0).flatmap(lambda y: st.sampled_from([y, -y])),
                 min_size=3, max_size=3)),
)
ACTIVE = st.one_of(
    st.none(),
    st.just(("LimitMaxDischarge", {"priority": 0, "pctMaxDischargePower": 40})),
    st.just(("VoltWatt", {"priority": 0, "yUnit": "PctMaxW", "curveData": [
        {"x": 104, "y": 100}, {"x": 110, "y": -30}]})),
    st.just(("FreqDroop", {"priority": 0, "overFreq": 50.1, "underFreq": 49.9,
                           "overDroop": 0.04, "underDroop": 0.04, "responseTime": 1})),
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reactive=st.lists(REACTIVE, min_size=1, max_size=2), active=ACTIVE,
       va=st.floats(2000, 30_000), var_share=st.one_of(st.just(0.44), st.floats(0, 1)),
       stage_w=st.one_of(st.just(1.0), st.floats(0.1, 1.0)),  # P rating / VA rating
       setpoint=st.one_of(st.none(), st.sampled_from([-40_000.0, 40_000.0]),
                          st.floats(-40_000, 40_000)),
       measured_share=st.floats(-1, 1), volts=st.floats(180, 280), hz=st.floats(48, 52))
def test_p_and_q_stay_within_the_stages_ratings_for_any_control_and_grid(
        reactive, active, va, var_share, stage_w, setpoint, measured_share, volts, hz):
    """Whatever the controls in force, the grid and the setpoint: the plan's Q is within the
    stage's var range and, with its setpoint, within the VA rating; and what the mock stage
    then makes of it (metered P and Q) is within both."""
    params = V2xParams(battery_wh=1_000_000, stage_max_charge_w=va * stage_w,
                       stage_max_discharge_w=va * stage_w, stage_max_va=va,
                       stage_max_var=va * var_share)

    async def scenario() -> None:
        hal, now = await _stage(params)
        hw = hal.evses[1]
        limits = hw.ev.reactive_limits
        clock = FakeClock()
        der = make_der(*reactive, *([active] if active else []), clock=clock)
        measured = measured_share * va * stage_w
        evse = SimpleNamespace(
            id=1, hw=hw, phases_in_use=3, max_current_a=32.0, discharge_limits={},
            allowed_transfer=None, session=None,
            reading=MeterReading(energy_import_wh=0, power_w=measured, voltage_v=(volts,) * 3,
                                 frequency_hz=hz))
        modes = OperationModes({1: evse}, {}, clock, der=der)
        v2x = None
        if setpoint is not None:
            v2x = V2xPeriod(None, ChargingSchedulePeriod(0, None, operation_mode="CentralSetpoint",
                                                         setpoint=setpoint),
                            "W", OperationMode.CENTRAL_SETPOINT)
        plan = modes.plan(evse, v2x, None, clock.now())  # type: ignore[arg-type]
        q = plan.reactive_var or 0.0
        tol = 1e-6 * va + 1e-6
        assert -limits.max_absorb_var - tol <= q <= limits.max_inject_var + tol
        if plan.setpoint_w is not None:
            assert math.hypot(min(abs(plan.setpoint_w), va * stage_w), q) <= va + tol
        else:
            assert math.hypot(measured, q) <= va + tol
        # The stage follows the plan: what flows is within its ratings too.
        await hw.ev.set_power_setpoint(plan.setpoint_w)
        await hw.ev.set_reactive_setpoint(plan.reactive_var)
        now[0] += 1.0
        r = await hw.meter.read()
        q_flow = -(r.power_reactive_var or 0.0)
        assert -limits.max_absorb_var - 1e-3 <= q_flow <= limits.max_inject_var + 1e-3
        assert math.hypot(r.power_w, q_flow) <= va + 1e-2

    asyncio.run(scenario())


# ====================================================================== end to end (2.1)

MEASURANDS = ("Energy.Active.Import.Register,Power.Active.Export,Power.Reactive.Import,"
              "Power.Reactive.Export,Power.Factor")


async def test_volt_var_on_a_discharge_session_is_metered_and_reapplied_after_a_restart(
        short_dir):
    """VoltVar on the mock's stage (22 kVA, 44 % of it in vars): at 105 % voltage it absorbs
    15 % of its range; the TransactionEvents carry Power.Reactive.Import and Power.Factor
    (validated by the strict CSMS); after a restart the control is applied again."""
    control = {"controlId": "vv", "controlType": "VoltVar", "isDefault": True,
               "curve": VOLT_VAR}
    async with rig("2.1", short_dir, defaults={
            "SampledDataCtrlr.TxUpdatedInterval": 10,
            "SampledDataCtrlr.TxUpdatedMeasurands": MEASURANDS}) as (csms, make):
        agent = await make(extra=V2X_HAL)
        link = await online201(agent, csms)
        assert (await link.call("SetDERControl", control)) == {"status": "Accepted"}
        started = await charging201(agent, csms)
        await link.call("NotifyAllowedEnergyTransfer", {
            "transactionId": started["transactionInfo"]["transactionId"],
            "allowedEnergyTransfer": ALLOW})
        await install(link, 1, profile(1, [period(0, operationMode="CentralSetpoint",
                                                  setpoint=-6000)]))
        await eventually(lambda: stage(agent) == -6000, "discharging at 6 kW")
        ev = agent.hal.evses[1].ev
        absorb = ev.reactive_limits.max_absorb_var
        assert absorb == pytest.approx(0.44 * 32 * 230 * 3)
        assert ev.reactive_setpoint == 0  # 230 V: inside the curve's dead band
        agent.hal.set_grid(voltage_v=241.5)
        await sample(agent)
        await sample(agent)
        await eventually(lambda: ev.reactive_setpoint == pytest.approx(-0.15 * absorb, abs=1e-2),
                         "absorbing along the volt-var curve")

        def metered(p: dict) -> dict:
            return {v["measurand"]: v["value"] for mv in p.get("meterValue", [])
                    for v in mv["sampledValue"]}

        for _ in range(30):  # one fake second at a time until a sample went out
            if any("Power.Reactive.Import" in metered(p) and metered(p)["Power.Reactive.Import"]
                   > 0 for p in csms.messages(SID, "TransactionEvent")):
                break
            await sample(agent)
        values = next(metered(p) for p in csms.messages(SID, "TransactionEvent")
                      if metered(p).get("Power.Reactive.Import", 0) > 0)
        assert values["Power.Reactive.Import"] == pytest.approx(0.15 * absorb, abs=1e-2)
        assert values["Power.Reactive.Export"] == 0
        assert values["Power.Factor"] == pytest.approx(
            6000 / math.hypot(6000, 0.15 * absorb), abs=1e-3)
        await agent.stop()

        again = await make(extra=V2X_HAL)
        await online201(again, csms)
        assert set(again.station.der.controls) == {"vv"}
        again.hal.set_grid(voltage_v=218.5)  # 95 %: now it injects
        await sample(again)
        await sample(again)
        ev2 = again.hal.evses[1].ev
        await eventually(lambda: ev2.reactive_setpoint == pytest.approx(
            0.15 * ev2.reactive_limits.max_inject_var, abs=1e-2), "injecting after the restart")


async def test_gradients_ramp_the_stage_and_a_stage_without_them_is_not_supported(short_dir):
    """Gradients 10 %/s, soft start 5 %/s of the 22 kW stage: the charge starts in 10 s of
    simulated time (11 kW at 1104 W/s), the setpoint -11 kW takes 10 s more (2208 W/s).
    On a stage without reactive control or ramp rates those types are NotSupported."""
    gradients = {"controlId": "gr", "controlType": "Gradients", "isDefault": True,
                 "gradient": {"priority": 0, "gradient": 10, "softGradient": 5}}
    async with rig("2.1", short_dir) as (csms, make):
        agent = await make(extra=V2X_HAL)
        link = await online201(agent, csms)
        clock: FakeClock = agent.clock
        assert (await link.call("SetDERControl", gradients)) == {"status": "Accepted"}
        ev, meter = agent.hal.evses[1].ev, agent.hal.evses[1].meter
        await eventually(lambda: ev.ramp_rates == (pytest.approx(2208), pytest.approx(1104)),
                         "the stage's ramp rates")
        started = await charging201(agent, csms)  # the power path is up: 0 W so far
        assert (await meter.read()).power_w == 0
        await clock.advance(5)
        assert (await meter.read()).power_w == pytest.approx(5520, abs=1e-2)
        await clock.advance(5)
        assert (await meter.read()).power_w == pytest.approx(11_040, abs=1e-2)
        await link.call("NotifyAllowedEnergyTransfer", {
            "transactionId": started["transactionInfo"]["transactionId"],
            "allowedEnergyTransfer": ALLOW})
        await install(link, 1, profile(1, [period(0, operationMode="CentralSetpoint",
                                                  setpoint=-11_040)]))
        await eventually(lambda: stage(agent) == -11_040, "the setpoint given")
        export0 = (await meter.read()).energy_export_wh
        await clock.advance(5)
        assert (await meter.read()).power_w == pytest.approx(0, abs=1e-2)
        await clock.advance(5)
        r = await meter.read()
        assert r.power_w == pytest.approx(-11_040, abs=1e-2)
        assert r.energy_export_wh - export0 == pytest.approx(11_040 * 5 / 2 / 3600, abs=1e-3)

        plain = await make(station_id="CP2", extra="hal: {driver: mock, ev_max_current_a: 16, "
                                                   "v2x: {reactive: false, ramp: false}}")
        link2 = await online201(plain, csms)
        for payload in ({"controlId": "vv", "controlType": "VoltVar", "isDefault": True,
                         "curve": VOLT_VAR}, {**gradients}):
            res = await link2.call("SetDERControl", payload)
            assert res["status"] == "NotSupported", res
            assert res["statusInfo"]["reasonCode"] == "UnsupportedParam"
        res = await link2.call("SetDERControl", {
            "controlId": "lmd", "controlType": "LimitMaxDischarge", "isDefault": True,
            "limitMaxDischarge": {"priority": 0, "pctMaxDischargePower": 50}})
        assert res == {"status": "Accepted"}
        res = await link2.call("GetVariables", {"getVariableData": [
            {"component": {"name": "DCDERCtrlr", "evse": {"id": 1}},
             "variable": {"name": "SupportedControls"}}]})
        supported = res["getVariableResult"][0]["attributeValue"].split(",")
        assert "LimitMaxDischarge" in supported and "VoltVar" not in supported
        assert "Gradients" not in supported
        assert isinstance(agent.hal.sims[1], BidiSim)
