"""The SunSpec DER stage's reactive power and ramp controls (model 704's VarSet / VarSetPct /
PF modes / WRmp, model 702's var range) against the simulated SunSpec map of
test_sunspec_der.py, offsets from the published sunspec/models json/ definitions."""

from __future__ import annotations

import pytest
from halsim import put, s16
from test_sunspec_der import Pilot, der_device, i32, served, u32

from agent.core.der import RAMP_TYPES, REACTIVE_TYPES, stage_supports
from hal.drivers.sunspec_der import SunSpecDer, SunSpecDerStage
from hal.interfaces import FaultCleared, FaultKind, FaultRaised, HalError, ReactiveLimits

# Model 704 / 702 points beyond those test_sunspec_der.py sets, offset from the ID register.
P704 = dict(PFWInjEna=2, PFWAbsEna=8, VarSetEna=35, VarSetMod=36, VarSetPri=37, VarSet=38,
            VarSetRvrt=40, VarSetPct=42, VarSetPctRvrt=43, VarSetEnaRvrt=44, VarSetRvrtTms=45,
            WRmp=49, WRmpRef=50, VarSet_SF=57, VarSetPct_SF=58)
P702 = dict(VAMaxRtg=7, VarMaxInjRtg=8, VarMaxAbsRtg=9, VAMax=31, VarMaxInj=32, VarMaxAbs=33,
            VA_SF=47, Var_SF=48)


def reactive_device(**points704: int | list[int]):
    """The 11 kW DC stage of test_sunspec_der.py rated 11 kVA and 4.8 kvar either way, with
    the reactive and ramp points of 704 implemented (a constant PF mode left on by someone)."""
    dev = der_device()
    h = dev.unit.holding
    for name, value in dict(VAMaxRtg=1100, VA_SF=1, VarMaxInjRtg=480, VarMaxAbsRtg=480,
                            Var_SF=1, VAMax=0xFFFF, VarMaxInj=0xFFFF,
                            VarMaxAbs=0xFFFF).items():
        put(h, dev.at[702] + P702[name], value)
    for name, value in {**dict(PFWInjEna=1, PFWAbsEna=0, VarSet_SF=1, VarSetPct_SF=s16(-1),
                               WRmp=10, WRmpRef=0), **points704}.items():
        put(h, dev.at[704] + P704[name], value)
    return dev


def get(dev, point: str, words: int = 1) -> list[int]:
    a = dev.at[704] + P704[point]
    return [dev.unit.holding.get(a + i, 0) for i in range(words)]


@pytest.fixture
async def stage_of(sink):
    opened = []

    async def make(dev):
        sim, bus = await served(dev)
        stage = SunSpecDerStage(1, SunSpecDer(bus, 1), Pilot(), sink=sink, reversion_s=30)
        opened.append((sim, bus, stage))
        await stage.open()
        return stage

    yield make
    for sim, bus, _ in opened:
        await bus.close()
        await sim.stop()


async def test_reactive_setpoint_written_with_its_reversion(stage_of):
    dev = reactive_device()
    stage = await stage_of(dev)
    assert stage.supports_reactive and stage.supports_ramp_rate
    assert stage.reactive_limits == ReactiveLimits(11000, 4800, 4800)
    assert set(REACTIVE_TYPES) <= set(stage_supports(stage))  # the core offers VoltVar & co
    assert get(dev, "VarSetEna") == [0]  # nothing left from a previous run

    await stage.set_reactive_setpoint(3000)  # inject 3 kvar (over-excited)
    assert get(dev, "VarSetMod") == [4] and get(dev, "VarSetPri") == [1]  # VARS, REACTIVE
    assert get(dev, "VarSet", 2) == i32(300)  # VarSet_SF 1: DER sign, as the device counts
    assert get(dev, "VarSetRvrt", 2) == i32(0)  # reverts to 0 var ...
    assert get(dev, "VarSetEnaRvrt") == [1] and get(dev, "VarSetRvrtTms", 2) == u32(30)
    assert get(dev, "VarSetEna") == [1]
    assert get(dev, "PFWInjEna") == [0]  # one reactive mode at a time
    assert stage.reactive_setpoint == 3000

    await stage.set_reactive_setpoint(-9000)  # absorb beyond the range: held to 4.8 kvar
    assert get(dev, "VarSet", 2) == i32(-480) and stage.reactive_setpoint == -4800
    # 10 kW discharging leaves sqrt(11000^2 - 10000^2) = 4583 var of the VA rating.
    await stage.set_power_setpoint(-10000)
    await stage.set_reactive_setpoint(4800)
    assert get(dev, "VarSet", 2) == i32(458) and stage.reactive_setpoint == 4580

    await stage.set_reactive_setpoint(None)  # unity power factor
    assert get(dev, "VarSetEna") == [0] and stage.reactive_setpoint is None
    await stage.set_reactive_setpoint(1000)
    await stage.close()
    assert get(dev, "VarSetEna") == [0] and dev.get(704, "WSetEna") == [0]


async def test_a_device_without_varset_takes_a_percentage(stage_of):
    dev = reactive_device(VarSet=[0x8000, 0x0000])  # int32 "not implemented"
    stage = await stage_of(dev)
    assert stage.supports_reactive
    await stage.set_reactive_setpoint(2400)  # half the 4.8 kvar range
    assert get(dev, "VarSetMod") == [1]  # VAR_MAX_PCT
    assert get(dev, "VarSetPct") == [500] and get(dev, "VarSetPctRvrt") == [0]  # 50.0 %
    assert stage.reactive_setpoint == pytest.approx(2400)
    await stage.set_reactive_setpoint(-1200)
    assert get(dev, "VarSetPct") == [s16(-250)] and stage.reactive_setpoint == \
        pytest.approx(-1200)


async def test_a_device_without_reactive_control_says_so(stage_of):
    dev = reactive_device(VarSet=[0x8000, 0x0000], VarSetPct=0x8000, WRmp=0xFFFF)
    stage = await stage_of(dev)
    assert not stage.supports_reactive and stage.reactive_limits is None
    assert not stage.supports_ramp_rate
    assert not set(REACTIVE_TYPES) & set(stage_supports(stage))
    assert not set(RAMP_TYPES) & set(stage_supports(stage))
    with pytest.raises(NotImplementedError, match="no reactive power setpoint"):
        await stage.set_reactive_setpoint(1000)
    with pytest.raises(NotImplementedError, match="no WRmp"):
        await stage.set_ramp_rates(100)
    # No var range in 702: reactive points alone are not enough to ask for vars.
    dev2 = reactive_device()
    for name in ("VarMaxInjRtg", "VarMaxAbsRtg"):
        put(dev2.unit.holding, dev2.at[702] + P702[name], 0xFFFF)
    assert not (await stage_of(dev2)).supports_reactive


async def test_a_reactive_setpoint_the_device_refuses_is_a_fault(stage_of):
    dev = reactive_device()
    stage = await stage_of(dev)

    def locked(fc: int, address: int, values: list) -> None:
        if address == dev.at[704] + P704["VarSetEna"] and values == [1]:
            put(dev.unit.holding, address, 0)

    dev.unit.on_write = locked
    with pytest.raises(HalError) as exc:
        await stage.set_reactive_setpoint(2000)
    assert exc.value.kind == FaultKind.INTERNAL
    assert "the reactive setpoint did not take (VarSetEna 0" in str(exc.value)
    with pytest.raises(HalError, match="not a number of var"):
        await stage.set_reactive_setpoint(float("nan"))


async def test_ramp_rate_in_percent_of_wmax(stage_of):
    dev = reactive_device()
    stage = await stage_of(dev)
    await stage.set_ramp_rates(2200, 50)  # 20 % of the 11 kW WMax per second
    assert get(dev, "WRmp") == [20] and get(dev, "WRmpRef") == [1]  # W_MAX
    assert stage.ramp_rates == (2200, 50)  # the soft-start rate: 704 has no point for it
    await stage.set_ramp_rates(10)  # 0.09 %/s: never 0, which would freeze the power
    assert get(dev, "WRmp") == [1]
    await stage.set_ramp_rates(None)  # no limit: the device's own WRmp again
    assert get(dev, "WRmp") == [10] and stage.ramp_rates == (None, None)
    with pytest.raises(HalError, match="normal ramp rate -5"):
        await stage.set_ramp_rates(-5)


async def test_a_device_back_from_silence_gets_its_reactive_setpoint_again(stage_of, events):
    dev = reactive_device()
    stage = await stage_of(dev)
    await stage.set_reactive_setpoint(-2000)
    dev.unit.silent = True
    await stage.poll_once()
    assert [e.kind for e in events.of(FaultRaised)] == [FaultKind.INTERNAL]
    dev.unit.silent = False
    put(dev.unit.holding, dev.at[704] + P704["VarSetEna"], 0)  # its reversion timer ran out
    await stage.poll_once()
    assert FaultCleared(1, FaultKind.INTERNAL) in events.events
    assert get(dev, "VarSetEna") == [1] and get(dev, "VarSet", 2) == i32(-200)
