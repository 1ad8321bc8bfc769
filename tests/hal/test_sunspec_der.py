"""The SunSpec DER power stage driver (hal/drivers/sunspec_der.py) against a pymodbus server
on 127.0.0.1 holding a SunSpec map built here from the published model definitions (models
1, 701, 702, 704, 713; offsets from the ID register, as sunspec/models json/ lays them out):
discovery, measurements with scale factors and signs, setpoints written and read back,
"not implemented" sentinels, a device that goes silent and comes back.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import pytest
from halsim import ModbusSim, SimUnit, put, s16

from agent.core.v2x import bounds
from hal.drivers.base import DeviceRejected
from hal.drivers.modbus_bus import ModbusBus, TcpLink
from hal.drivers.sunspec_der import SunSpecDer, SunSpecDerMeter, SunSpecDerStage
from hal.factory import HalConfigError, build_hal, parse_hal_config
from hal.interfaces import (
    EnergyTransferMode,
    EvChanged,
    EvConnection,
    FaultCleared,
    FaultKind,
    FaultRaised,
    HalError,
    PilotState,
)

FAST = dict(timeout_s=0.15, retries=1)

# The models' lengths (registers after ID and L) and the points used, offset from ID.
LENGTH = {1: 66, 701: 153, 702: 50, 704: 65, 713: 7}
P701 = dict(ACType=2, St=3, W=10, Var=12, PF=13, A=14, LNV=16, Hz=17, TotWhInj=19,
            TotWhAbs=23, AL1=45, VL1=47, AL2=68, VL2=70, AL3=91, VL3=93, A_SF=113, V_SF=114,
            Hz_SF=115, W_SF=116, PF_SF=117, Var_SF=119, TotWh_SF=120)
P702 = dict(WMaxRtg=2, WChaRteMaxRtg=10, WDisChaRteMaxRtg=11, AMaxRtg=17, WMax=26,
            WChaRteMax=34, WDisChaRteMax=35, AMax=41, W_SF=45, A_SF=50)
P704 = dict(WSetEna=22, WSetMod=23, WSet=24, WSetRvrt=26, WSetEnaRvrt=30, WSetRvrtTms=31,
            WSet_SF=55)
P713 = dict(WHRtg=2, WHAvail=3, SoC=4, Sta=6, WH_SF=7, Pct_SF=8)


def u64(value: int) -> list[int]:
    return list(struct.unpack(">HHHH", struct.pack(">Q", value)))


def u32(value: int) -> list[int]:
    return list(struct.unpack(">HH", struct.pack(">I", value)))


def i32(value: int) -> list[int]:
    return list(struct.unpack(">HH", struct.pack(">i", value)))


def text(value: str, words: int) -> list[int]:
    raw = value.encode().ljust(2 * words, b"\0")
    return list(struct.unpack(f">{words}H", raw))


@dataclass
class DerDevice:
    """A SunSpec DER device's register image; ``at[model]`` is its ID register's address."""

    unit: SimUnit
    at: dict[int, int] = field(default_factory=dict)

    def set(self, model: int, point: str, regs: list[int] | int) -> None:
        offsets = {701: P701, 702: P702, 704: P704, 713: P713}[model]
        put(self.unit.holding, self.at[model] + offsets[point], regs)

    def get(self, model: int, point: str, words: int = 1) -> list[int]:
        offsets = {701: P701, 702: P702, 704: P704, 713: P713}[model]
        a = self.at[model] + offsets[point]
        return [self.unit.holding.get(a + i, 0) for i in range(words)]


def der_device(unit_id: int = 1, *, base: int = 40000, models=(1, 701, 702, 704, 713)
               ) -> DerDevice:
    """A bidirectional DC stage: 11 kW each way (10 kW discharge rated), EV accepting 7.4 kW
    charge and 5 kW discharge now, exporting 5.5 kW, SoC 55.3 % of 60 kWh."""
    d = DerDevice(SimUnit(unit_id))
    h = d.unit.holding
    put(h, base, [0x5375, 0x6E53])
    addr = base + 2
    for model in models:
        d.at[model] = addr
        put(h, addr, [model, LENGTH[model]])
        for i in range(LENGTH[model]):
            h.setdefault(addr + 2 + i, 0)
        addr += 2 + LENGTH[model]
    put(h, addr, [0xFFFF, 0])
    if 1 in models:
        put(h, d.at[1] + 2, text("Bidi Inc", 16))
        put(h, d.at[1] + 18, text("DC-11", 16))
        put(h, d.at[1] + 42, text("2.4.1", 8))
        put(h, d.at[1] + 50, text("SN0042", 16))
    if 701 in models:
        for point, regs in dict(
                ACType=2, St=1, W=550, W_SF=1,  # 5500 W injected into the grid
                Var=s16(-120), Var_SF=0, PF=s16(-950), PF_SF=s16(-3),
                Hz=u32(49980), Hz_SF=s16(-3), VL1=2301, VL2=2312, VL3=2293, LNV=2302,
                V_SF=s16(-1), AL1=s16(-800), AL2=s16(-797), AL3=s16(-803), A_SF=s16(-2),
                TotWhAbs=u64(123456), TotWhInj=u64(2000), TotWh_SF=1).items():
            d.set(701, point, regs)
    if 702 in models:
        for point, regs in dict(WMaxRtg=1100, WChaRteMaxRtg=1100, WDisChaRteMaxRtg=1000,
                                WMax=1100, WChaRteMax=740, WDisChaRteMax=500, W_SF=1,
                                AMaxRtg=16, AMax=16, A_SF=0).items():
            d.set(702, point, regs)
    if 704 in models:
        d.set(704, "WSet_SF", 1)
    if 713 in models:
        for point, regs in dict(WHRtg=6000, WH_SF=1, SoC=553, Pct_SF=s16(-1), Sta=0).items():
            d.set(713, point, regs)
    return d


class Pilot(EvConnection):
    """The EVSE's own EV side (a board or a direct pilot), which the stage wraps."""

    def __init__(self, state: PilotState = PilotState.C) -> None:
        self.state = state
        self.limit = 0.0

    def pilot_state(self) -> PilotState:
        return self.state

    async def set_current_limit(self, amps: float) -> None:
        self.limit = amps

    @property
    def current_limit(self) -> float:
        return self.limit


@pytest.fixture
async def rig(sink):
    """A served DER device, its bus, the shared device object, the stage and its meter."""
    dev = der_device()
    sim = ModbusSim(dev.unit)
    port = await sim.start_tcp()
    bus = ModbusBus("lan", TcpLink("127.0.0.1", port), **FAST)
    der = SunSpecDer(bus, 1)
    pilot = Pilot()
    stage = SunSpecDerStage(1, der, pilot, sink=sink, reversion_s=30)
    meter = SunSpecDerMeter(1, der, sink=sink)
    try:
        yield dev, sim, der, stage, meter, pilot
    finally:
        await bus.close()
        await sim.stop()


async def served(dev: DerDevice) -> tuple[ModbusSim, ModbusBus]:
    sim = ModbusSim(dev.unit)
    port = await sim.start_tcp()
    return sim, ModbusBus("lan", TcpLink("127.0.0.1", port), **FAST)


# ---------------------------------------------------------------- discovery


@pytest.mark.parametrize("base", [40000, 0, 50000])
async def test_discovery_walks_the_chain_from_the_marker(base):
    dev = der_device(base=base)
    sim, bus = await served(dev)
    try:
        der = SunSpecDer(bus, 1)
        models = await der.discover()
        assert models == dev.at
        assert der.common == {"Mn": "Bidi Inc", "Md": "DC-11", "Vr": "2.4.1", "SN": "SN0042"}
    finally:
        await bus.close()
        await sim.stop()


async def test_a_device_without_the_der_controls_is_refused_by_name(sink):
    sim, bus = await served(der_device(models=(1, 701, 702)))
    try:
        with pytest.raises(DeviceRejected, match=r"without DER model\(s\) 704 \(models "
                                                 r"found: 1, 701, 702\)"):
            await SunSpecDer(bus, 1).discover()
        probe = await SunSpecDerStage(1, SunSpecDer(bus, 1), Pilot(), sink=sink).probe()
        assert not probe.ok and "704" in probe.detail
    finally:
        await bus.close()
        await sim.stop()


async def test_probe_names_the_device_and_its_ratings(rig):
    _, _, _, stage, _, _ = rig
    probe = await stage.probe()
    assert probe.ok, probe.detail
    assert probe.detail == ("Bidi Inc DC-11 SN SN0042 version 2.4.1, models 1, 701, 702, 704, "
                            "713, charge 11000 W, discharge 10000 W, storage SoC 55.3 %")


# ---------------------------------------------------------------- measurements


async def test_measurements_with_scale_factors_and_the_hal_sign(rig):
    _, _, _, _, meter, _ = rig
    r = await meter.read()
    assert r.power_w == -5500  # injected into the grid: out of the EV
    assert r.energy_import_wh == 1234560 and r.energy_export_wh == 20000  # TotWh_SF 1
    assert r.frequency_hz == pytest.approx(49.98)
    assert r.voltage_v == pytest.approx((230.1, 231.2, 229.3))
    assert r.current_a == pytest.approx((8.0, 7.97, 8.03))
    assert r.power_factor == pytest.approx(0.95) and r.power_reactive_var == 120
    assert meter.phases == 3
    assert {"frequency", "energy_export", "power_factor"} <= meter.measures


async def test_limits_modes_and_battery_from_the_device(rig, events):
    dev, _, _, stage, _, pilot = rig
    await stage.refresh()
    assert EvChanged(1) in events.events
    s = stage.stage_limits
    assert (s.max_charge_w, s.max_discharge_w, s.max_charge_a) == (11000, 10000, 16)
    e = stage.ev_limits  # the device's present settings: what the EV's BMS accepts
    assert (e.max_charge_w, e.max_discharge_w) == (7400, 5000)
    assert stage.energy_transfer_modes == {EnergyTransferMode.DC, EnergyTransferMode.DC_BPT}
    assert stage.energy_state.soc_percent == pytest.approx(55.3)
    assert stage.energy_state.capacity_wh == 60000 and stage.soc_percent == pytest.approx(55.3)
    # What the core makes of it: discharge up to the EV's 5 kW, charge up to its 7.4 kW.
    b = bounds(stage, offer_a=16, phases=3, max_current_a=16)
    assert (b.max_charge_w, b.max_discharge_w, b.no_discharge) == (7400, 5000, "")
    events.clear()
    await stage.refresh()
    assert events.of(EvChanged) == []  # nothing changed: nothing told
    dev.set(702, "WDisChaRteMax", 0)  # the EV no longer lets itself be discharged
    await stage.refresh()
    assert EvChanged(1) in events.events and not stage.ev_limits.can_discharge
    pilot.state = PilotState.A  # unplugged: no EV, nothing known of it
    assert stage.ev_limits is None and stage.energy_state is None
    assert stage.energy_transfer_modes == frozenset()


# ---------------------------------------------------------------- setpoints


async def test_setpoints_are_written_and_read_back(rig):
    dev, _, _, stage, _, pilot = rig
    await stage.refresh()
    await stage.set_power_setpoint(-4000)  # discharge 4 kW: 4 kW generation on the device
    assert dev.get(704, "WSetMod") == [1] and dev.get(704, "WSetEna") == [1]
    assert dev.get(704, "WSet", 2) == i32(400)  # WSet_SF 1
    assert dev.get(704, "WSetRvrt", 2) == i32(0)  # reverts to 0 W ...
    assert dev.get(704, "WSetEnaRvrt") == [1]
    assert dev.get(704, "WSetRvrtTms", 2) == u32(30)  # ... after 30 s without a refresh
    assert stage.power_setpoint == -4000
    await stage.set_power_setpoint(3000)
    assert dev.get(704, "WSet", 2) == i32(-300) and stage.power_setpoint == 3000
    await stage.set_power_setpoint(50000)  # beyond the rating: held to it
    assert dev.get(704, "WSet", 2) == i32(-1100) and stage.power_setpoint == 11000
    await stage.set_power_setpoint(None)
    assert dev.get(704, "WSetEna") == [0] and stage.power_setpoint is None
    # The pilot is the wrapped EV side's.
    await stage.set_current_limit(16)
    assert pilot.limit == 16 and stage.current_limit == 16 and stage.pilot_state() is \
        PilotState.C


async def test_a_setpoint_the_device_does_not_take_is_a_fault(rig):
    dev, _, _, stage, _, _ = rig
    await stage.refresh()

    def refuse(fc: int, address: int, values: list) -> None:
        if address == dev.at[704] + P704["WSetEna"] and values == [1]:
            put(dev.unit.holding, address, 0)  # a device locked against remote control

    dev.unit.on_write = refuse
    with pytest.raises(HalError) as exc:
        await stage.set_power_setpoint(-2000)
    assert exc.value.kind == FaultKind.INTERNAL
    assert "the setpoint did not take (WSetEna 0" in str(exc.value)
    assert stage.energy_transfer_modes == {EnergyTransferMode.DC}  # in trouble: no discharge


# ---------------------------------------------------------------- sentinels


async def test_not_implemented_points_drop_out_or_fail_by_name(rig):
    dev, _, _, stage, meter, _ = rig
    dev.set(701, "Hz", u32(0xFFFFFFFF))
    dev.set(701, "TotWhInj", u64(0xFFFFFFFFFFFFFFFF))
    dev.set(701, "PF_SF", 0x8000)
    r = await meter.read()
    assert r.frequency_hz is None and r.energy_export_wh == 0 and r.power_factor is None
    assert not {"frequency", "energy_export", "power_factor"} & meter.measures
    dev.set(702, "WChaRteMax", 0xFFFF)  # no present setting: the rating stands for it
    dev.set(713, "SoC", 0xFFFF)
    await stage.refresh()
    assert stage.ev_limits.max_charge_w == 11000 and stage.energy_state is None

    dev.set(701, "W_SF", 0x8000)
    with pytest.raises(HalError) as exc:
        await meter.read()
    assert exc.value.kind == FaultKind.METER
    assert "model 701: scale factor W_SF is not implemented" in str(exc.value)
    dev.set(701, "W_SF", 1)
    dev.set(701, "TotWhAbs", u64(0xFFFFFFFFFFFFFFFF))
    with pytest.raises(HalError, match="model 701: TotWhAbs is not implemented"):
        await meter.read()
    dev.set(701, "TotWhAbs", u64(1))
    dev.set(701, "W_SF", 11)
    with pytest.raises(HalError, match="W_SF = 11 is outside -10..10"):
        await meter.read()
    dev.set(704, "WSet_SF", 0x8000)
    with pytest.raises(HalError, match="WSet_SF is not implemented"):
        await stage.set_power_setpoint(-1000)


# ---------------------------------------------------------------- device gone, and back


async def test_a_silent_device_is_a_fault_until_it_answers(rig, events):
    dev, _, _, stage, meter, _ = rig
    await stage.refresh()
    await stage.set_power_setpoint(-3000)
    await meter.read()
    writes = len(dev.unit.writes)
    dev.unit.silent = True  # powered off, or its Ethernet gone
    with pytest.raises(HalError) as exc:
        await meter.read()
    assert exc.value.kind == FaultKind.METER and "no answer from device id 1" in str(exc.value)
    await stage.poll_once()
    raised = events.of(FaultRaised)
    assert [(e.evse_id, e.kind) for e in raised] == [(1, FaultKind.INTERNAL)]
    assert EnergyTransferMode.DC_BPT not in stage.energy_transfer_modes
    with pytest.raises(HalError) as exc:
        await stage.set_power_setpoint(-3000)
    assert exc.value.kind == FaultKind.INTERNAL

    dev.unit.silent = False
    put(dev.unit.holding, dev.at[704] + P704["WSetEna"], 0)  # it reverted meanwhile
    await stage.poll_once()  # answers again: the setpoint the core wants is written again
    assert FaultCleared(1, FaultKind.INTERNAL) in events.events
    assert len(dev.unit.writes) > writes and dev.get(704, "WSetEna") == [1]
    assert dev.get(704, "WSet", 2) == i32(300) and stage.power_setpoint == -3000
    assert EnergyTransferMode.DC_BPT in stage.energy_transfer_modes
    await meter.read()
    assert FaultCleared(1, FaultKind.METER) in events.events


async def test_a_moved_chain_is_walked_again(sink):
    dev = der_device()
    sim, bus = await served(dev)
    try:
        der = SunSpecDer(bus, 1)
        meter = SunSpecDerMeter(1, der, sink=sink)
        await meter.read()
        moved = der_device(base=0)  # a firmware update put the map elsewhere
        dev.unit.holding.clear()
        dev.unit.holding.update(moved.unit.holding)
        await sim.stop()
        sim = ModbusSim(dev.unit)  # the served blocks follow the new image
        await sim.start_tcp(bus.link.port)
        with pytest.raises(HalError):
            await meter.read()  # the old address answers garbage or nothing
        r = await meter.read()
        assert r.power_w == -5500 and der.models == moved.at
    finally:
        await bus.close()
        await sim.stop()


async def test_close_disables_the_setpoint(rig):
    dev, _, _, stage, _, _ = rig
    await stage.refresh()
    await stage.set_power_setpoint(-1000)
    await stage.close()
    assert dev.get(704, "WSetEna") == [0]


# ---------------------------------------------------------------- configuration


HW = {
    "driver": "hardware",
    "modbus": {"lan": {"type": "tcp", "host": "10.0.0.5"},
               "rs485": {"type": "rtu", "port": "/dev/ttyUSB0"}},
    "evses": [{"id": 1, "contactor": {"coil": 17},
               "ev": {"type": "evse_wb", "bus": "rs485", "unit_id": 2},
               "der_stage": {"bus": "lan", "unit_id": 3}}],
}


def der_cfg(**der) -> dict:
    import copy

    raw = copy.deepcopy(HW)
    raw["evses"][0]["der_stage"].update(der)
    return raw


@pytest.mark.parametrize("der, needle", [
    ({"bus": "can"}, "hal.evses[0].der_stage.bus: 'can' is not allowed; expected one of the "
                     "buses under hal.modbus (lan, rs485)"),
    ({"mode": "AC"}, "hal.evses[0].der_stage.mode: 'AC' is not allowed; expected one of "
                     "DC_BPT, AC_BPT"),
    ({"reversion_s": 2}, "hal.evses[0].der_stage.reversion_s: 2 is not allowed; expected at "
                         "least 3 x poll_interval_s (3 s)"),
    ({"speed": 1}, "hal.evses[0].der_stage.speed: unknown key"),
    ({"unit_id": 300}, "hal.evses[0].der_stage.unit_id: 300 (0x12C) is not allowed"),
])
def test_der_stage_config_errors_name_the_key(der, needle):
    with pytest.raises(HalConfigError) as exc:
        parse_hal_config(der_cfg(**der), [1])
    assert needle in str(exc.value)


def test_der_stage_builds_the_stage_and_its_meter(pin_factory):
    from hal.drivers.evse_boards import EvseWbBoard
    from hal.drivers.meters import RegisterMapMeter

    hal = build_hal(parse_hal_config(der_cfg(mode="AC_BPT", reversion_s=0), [1]),
                    pin_factory=pin_factory)
    hw = hal.evses[1]
    assert isinstance(hw.ev, SunSpecDerStage) and isinstance(hw.ev.inner, EvseWbBoard)
    assert hw.ev.supports_setpoint and hw.ev.mode is EnergyTransferMode.AC_BPT
    assert isinstance(hw.meter, SunSpecDerMeter) and hw.meter.der is hw.ev.der
    assert hw.ev.inner in hal.devices and hw.ev in hal.devices  # both polled
    # A meter of its own (a certified one) is the EVSE's meter; the stage still controls.
    raw = der_cfg()
    raw["evses"][0]["meter"] = {"type": "sdm630", "bus": "rs485", "unit_id": 1}
    hal = build_hal(parse_hal_config(raw, [1]), pin_factory=pin_factory)
    assert isinstance(hal.evses[1].meter, RegisterMapMeter)
    assert isinstance(hal.evses[1].ev, SunSpecDerStage)

