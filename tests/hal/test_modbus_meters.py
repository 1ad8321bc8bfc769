"""Meters over Modbus: a pymodbus server at the far end of a pty (RTU) or on 127.0.0.1 (TCP)
serves each meter's register map with known values; the real driver reads them."""

from __future__ import annotations

import asyncio
import os
import stat

import pytest
from halsim import (
    ModbusSim,
    abb_b23_unit,
    evse_wb_unit,
    f32,
    put,
    sdm120_unit,
    sdm630_unit,
    set_sdm_energy,
    sunspec_unit,
)

from hal.drivers.base import DeviceRejected, NoAnswer, PortUnavailable
from hal.drivers.evse_boards import EvseWbBoard
from hal.drivers.meters import BUILTIN_MAPS, RegisterMapMeter, SunSpecMeter
from hal.drivers.modbus_bus import ModbusBus, RtuLink, TcpLink
from hal.factory import parse_hal_config
from hal.interfaces import FaultCleared, FaultKind, HalError

FAST = dict(timeout_s=0.15, retries=1)


async def rtu(*units, baudrate=19200):
    sim = ModbusSim(*units)
    path = await sim.start_rtu(baudrate)
    bus = ModbusBus("rs485", RtuLink(path, baudrate=baudrate), **FAST)
    return sim, bus


async def tcp(*units):
    sim = ModbusSim(*units)
    port = await sim.start_tcp()
    bus = ModbusBus("lan", TcpLink("127.0.0.1", port), **FAST)
    return sim, bus


async def shutdown(sim, bus):
    await bus.close()
    await sim.stop()


async def test_sdm630_over_rtu(sink):
    sim, bus = await rtu(sdm630_unit(1))
    try:
        m = RegisterMapMeter(1, bus, 1, BUILTIN_MAPS["sdm630"], sink=sink)
        r = await m.read()
        assert r.energy_import_wh == pytest.approx(1_234_500, abs=0.1)
        assert r.energy_export_wh == pytest.approx(1_500)
        assert r.voltage_v == pytest.approx((230.1, 231.2, 229.3), abs=1e-3)
        assert r.current_a == pytest.approx((10.5, 10.6, 10.4), abs=1e-3)
        assert r.power_w == pytest.approx(7250)
        assert r.frequency_hz == pytest.approx(50.02, abs=1e-3)
        assert r.power_factor == pytest.approx(0.98, abs=1e-3)
        assert m.phases == 3
        # one bulk request for the whole map
        assert len(BUILTIN_MAPS["sdm630"].blocks) == 1
    finally:
        await shutdown(sim, bus)


async def test_sdm120_over_rtu(sink):
    sim, bus = await rtu(sdm120_unit(7), baudrate=9600)
    try:
        m = RegisterMapMeter(1, bus, 7, BUILTIN_MAPS["sdm120"], sink=sink)
        r = await m.read()
        assert r.energy_import_wh == pytest.approx(88_250)
        assert r.voltage_v == pytest.approx((230.4,), abs=1e-3)
        assert r.current_a == pytest.approx((6.1,), abs=1e-3)
        assert r.power_w == pytest.approx(1400)
        assert m.phases == 1
    finally:
        await shutdown(sim, bus)


async def test_abb_b23_over_rtu(sink):
    sim, bus = await rtu(abb_b23_unit(3))
    try:
        m = RegisterMapMeter(1, bus, 3, BUILTIN_MAPS["abb_b23"], sink=sink)
        r = await m.read()
        assert r.energy_import_wh == pytest.approx(1_234_560)  # 123456 x 0.01 kWh
        assert r.energy_export_wh == pytest.approx(1_500)
        assert r.voltage_v == pytest.approx((230.1, 231.2, 229.3))
        assert r.current_a == pytest.approx((10.5, 10.6, 10.4))
        assert r.power_w == pytest.approx(7250)
        assert r.power_reactive_var == pytest.approx(-120)
        assert r.frequency_hz == pytest.approx(50.02)
        assert r.power_factor == pytest.approx(0.98)
    finally:
        await shutdown(sim, bus)


@pytest.mark.parametrize("model", [203, 213])
async def test_sunspec_discovery_over_tcp(sink, model):
    sim, bus = await tcp(sunspec_unit(1, model))
    try:
        m = SunSpecMeter(1, bus, 1, sink=sink)
        r = await m.read()
        assert m.model is not None and m.model[0] == model
        assert m.model[1] == 40000 + 2 + 68 + 28  # after "SunS", model 1 and model 120
        assert r.energy_import_wh == pytest.approx(5_432_100)
        assert r.energy_export_wh == pytest.approx(1000)
        assert r.voltage_v == pytest.approx((230.0, 231.0, 232.0))
        assert r.current_a == pytest.approx((16.0, 15.5, 15.0))
        assert r.power_w == pytest.approx(11000)
        assert r.frequency_hz == pytest.approx(50.0)
        assert r.power_factor == pytest.approx(0.97)
    finally:
        await shutdown(sim, bus)


async def test_sunspec_measures_what_the_device_implements(sink):
    """Until the first reading a SunSpec meter may give what its model has registers for;
    then what the device implements (here: no frequency, NaN in the float model)."""
    sim, bus = await tcp(sunspec_unit(1, 213, hz=float("nan")))
    try:
        m = SunSpecMeter(1, bus, 1, sink=sink)
        assert "frequency" in m.measures
        r = await m.read()
        assert r.frequency_hz is None
        assert m.measures == {"energy_import", "energy_export", "power", "current", "voltage",
                              "power_reactive", "power_factor"}
    finally:
        await shutdown(sim, bus)


async def test_register_map_meter_measures_what_its_map_maps(sink):
    sim, bus = await rtu(sdm120_unit(7), baudrate=9600)
    try:
        m = RegisterMapMeter(1, bus, 7, BUILTIN_MAPS["sdm120"], sink=sink)
        assert m.measures == BUILTIN_MAPS["sdm120"].measures
        assert "frequency" in m.measures and "temperature" not in m.measures
    finally:
        await shutdown(sim, bus)


async def test_sunspec_at_base_zero_and_rediscovery(sink):
    unit = sunspec_unit(1, 203, base=0)
    sim, bus = await tcp(unit)
    try:
        m = SunSpecMeter(1, bus, 1, sink=sink)
        assert (await m.read()).energy_import_wh == pytest.approx(5_432_100)
        assert m.model is not None and m.model[1] == 2 + 68 + 28
    finally:
        await shutdown(sim, bus)


async def test_not_a_sunspec_device(sink):
    sim, bus = await tcp(sdm630_unit(1))  # holding registers do not hold "SunS"
    try:
        m = SunSpecMeter(1, bus, 1, sink=sink)
        with pytest.raises(HalError) as exc:
            await m.read()
        assert exc.value.kind == FaultKind.METER
        assert "SunSpec marker" in str(exc.value)
        probe = await m.probe()
        assert not probe.ok and "SunS" in probe.detail
    finally:
        await shutdown(sim, bus)


async def test_generic_meter_from_yaml_map(sink):
    """A meter the code has never heard of, declared only in YAML (input registers for
    energy, holding registers for power, little-endian words, integer volts x10)."""
    unit = sdm630_unit(9)
    put(unit.input, 0x100, f32(4321.5, little=True))  # kWh, low word first
    put(unit.holding, 0x10, [0, 0, 0])
    put(unit.holding, 0x10, [2301, 2302, 2303])
    put(unit.holding, 0x20, [0x0000, 0x1C20])  # 7200 W as int32
    cfg = parse_hal_config({
        "driver": "hardware",
        "modbus": {"rs485": {"type": "rtu", "port": "/dev/null"}},
        "evses": [{
            "id": 1,
            "contactor": {"coil": 17},
            "ev": {"type": "evse_wb", "bus": "rs485", "unit_id": 2},
            "meter": {
                "type": "generic", "bus": "rs485", "unit_id": 9, "phases": 3,
                "name": "acme-3000",
                "defaults": {"function": 3, "type": "uint16"},
                "registers": {
                    "energy_import_wh": {"address": 0x100, "function": 4, "type": "float32",
                                         "word_order": "little", "scale": 1000},
                    "voltage_v": [{"address": 0x10, "scale": 0.1}, {"address": 0x11, "scale": 0.1},
                                  {"address": 0x12, "scale": 0.1}],
                    "power_w": {"address": 0x20, "type": "int32"},
                },
                "max_gap": 16,
            },
        }],
    }, [1])
    regmap = cfg.hardware.evses[0].meter.regmap
    sim, bus = await rtu(unit)
    try:
        m = RegisterMapMeter(1, bus, 9, regmap, sink=sink)
        r = await m.read()
        assert r.energy_import_wh == pytest.approx(4_321_500)
        assert r.voltage_v == pytest.approx((230.1, 230.2, 230.3))
        assert r.power_w == 7200
        assert m.label.startswith("evse 1 meter (acme-3000")
        assert len(regmap.blocks) == 2  # holding 0x10..0x21 in one read, input 0x100 in one
    finally:
        await shutdown(sim, bus)


async def test_meter_goes_silent_mid_session_and_comes_back(sink, events):
    unit = sdm630_unit(1, kwh=10.0, power=7000)
    sim, bus = await rtu(unit)
    try:
        m = RegisterMapMeter(1, bus, 1, BUILTIN_MAPS["sdm630"], sink=sink)
        assert (await m.read()).energy_import_wh == pytest.approx(10_000)
        set_sdm_energy(unit, 10.5, 7000)
        assert (await m.read()).energy_import_wh == pytest.approx(10_500)
        unit.silent = True
        with pytest.raises(HalError) as exc:
            await m.read()
        assert exc.value.kind == FaultKind.METER
        assert "no answer from device id 1" in str(exc.value)
        assert not events.events  # the command's HalError is the report, no duplicate event
        with pytest.raises(HalError):  # still silent: still an error, still no event
            await m.read()
        unit.silent = False
        set_sdm_energy(unit, 11.0, 7000)
        assert (await m.read()).energy_import_wh == pytest.approx(11_000)
        assert events.events == [FaultCleared(1, FaultKind.METER)]
    finally:
        await shutdown(sim, bus)


async def test_tcp_meter_server_going_away_and_back(sink, events):
    unit = sunspec_unit(1, 213)
    sim = ModbusSim(unit)
    port = await sim.start_tcp()
    bus = ModbusBus("lan", TcpLink("127.0.0.1", port), **FAST)
    try:
        m = SunSpecMeter(1, bus, 1, sink=sink)
        await m.read()
        await sim.stop()  # the meter's Ethernet goes down
        with pytest.raises(HalError) as exc:
            await m.read()
        assert exc.value.kind == FaultKind.METER
        sim2 = ModbusSim(unit)
        await sim2.start_tcp(port)  # back on the same address
        try:
            r = await m.read()  # reconnects on its own
            assert r.energy_import_wh == pytest.approx(5_432_100)
            assert FaultCleared(1, FaultKind.METER) in events.events
        finally:
            await sim2.stop()
    finally:
        await bus.close()
        await sim.stop()


async def test_exception_response_names_the_likely_cause(sink):
    sim, bus = await rtu(sdm120_unit(1))
    try:
        with pytest.raises(DeviceRejected, match="illegal data address"):
            await bus.read_registers(1, 0x5000, 4, function=3)
        # the wrong meter type configured: an SDM120 read as an ABB
        m = RegisterMapMeter(1, bus, 1, BUILTIN_MAPS["abb_b23"], sink=sink)
        probe = await m.probe()
        assert not probe.ok and "wrong type or model" in probe.detail
    finally:
        await shutdown(sim, bus)


async def test_unknown_device_id_is_silence(sink):
    sim, bus = await rtu(sdm630_unit(1))
    try:
        with pytest.raises(NoAnswer, match="device id 5"):
            await bus.read_registers(5, 0, 2, function=4)
        # the bus is still usable afterwards
        assert len(await bus.read_registers(1, 0, 2, function=4)) == 2
    finally:
        await shutdown(sim, bus)


async def test_shared_line_meter_and_board_interleave(sink):
    """A meter and an EVSE board on one RS-485 pair, hammered concurrently: the bus lock
    keeps every answer with its own request."""
    meter_unit = sdm630_unit(1, kwh=42.0)
    board_unit = evse_wb_unit(2, vehicle_state=2)
    sim, bus = await rtu(meter_unit, board_unit)
    try:
        meter = RegisterMapMeter(1, bus, 1, BUILTIN_MAPS["sdm630"], sink=sink)
        board = EvseWbBoard(1, bus, 2, sink=sink)

        async def meter_reads():
            for _ in range(8):
                assert (await meter.read()).energy_import_wh == pytest.approx(42_000)

        async def board_work():
            for amps in (6, 10, 16, 32, 13, 8, 20, 16):
                await board.set_current_limit(amps)
                await board.poll_once()
                assert board.pilot_state().value == "B"
                assert board_unit.holding[1000] == amps

        await asyncio.wait_for(asyncio.gather(meter_reads(), board_work()), timeout=30)
    finally:
        await shutdown(sim, bus)


async def test_serial_port_problems_are_named(tmp_path):
    missing = ModbusBus("x", RtuLink(str(tmp_path / "ttyUSB9")), **FAST)
    with pytest.raises(PortUnavailable, match="does not exist"):
        await missing.read_registers(1, 0, 1)
    if os.geteuid() != 0:  # root can open anything
        locked = tmp_path / "ttyS0"
        locked.write_text("")
        locked.chmod(stat.S_IRUSR)
        bus = ModbusBus("x", RtuLink(str(locked)), **FAST)
        with pytest.raises(PortUnavailable, match="permission denied.*group"):
            await bus.open()


async def test_tcp_refused_is_named():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    bus = ModbusBus("lan", TcpLink("127.0.0.1", port), **FAST)
    with pytest.raises(PortUnavailable, match="refused"):
        await bus.read_registers(1, 0, 1)
