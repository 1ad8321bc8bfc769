"""The hal: section: validation messages that point at the culprit, and building."""

from __future__ import annotations

import copy
import io

import pytest
import yaml
from halsim import ROOT, example_bench_rig

from agent.doctor import doctor
from hal.drivers.contactor import GpioContactor
from hal.drivers.direct_pilot import DirectPilot
from hal.drivers.evse_boards import EvseWbBoard, PhoenixEvEth
from hal.drivers.hardware import HardwareHal
from hal.drivers.meters import RegisterMapMeter, SunSpecMeter
from hal.drivers.pn532 import Pn532Reader
from hal.factory import HalConfigError, build_hal, parse_hal_config
from hal.mock import MockHal

MINIMAL = {
    "driver": "hardware",
    "modbus": {"rs485": {"type": "rtu", "port": "/dev/ttyUSB0"}},
    "evses": [{
        "id": 1,
        "contactor": {"coil": 17},
        "meter": {"type": "sdm630", "bus": "rs485", "unit_id": 1},
        "ev": {"type": "evse_wb", "bus": "rs485", "unit_id": 2},
    }],
}


def with_(path: str, value, base=MINIMAL) -> dict:
    """A copy of ``base`` with the dotted ``path`` (list indexes as numbers) set."""
    cfg = copy.deepcopy(base)
    node = cfg
    parts = [int(p) if p.isdigit() else p for p in path.split(".")]
    for p in parts[:-1]:
        node = node[p]
    node[parts[-1]] = value
    return cfg


def error(raw, ids=(1,)) -> str:
    with pytest.raises(HalConfigError) as exc:
        parse_hal_config(raw, list(ids))
    return str(exc.value)


def test_mock_config_builds_mock_hal():
    cfg = parse_hal_config({"driver": "mock", "phases": 1, "ev_max_current_a": 10}, [1, 2])
    hal = build_hal(cfg)
    assert isinstance(hal, MockHal)
    assert sorted(hal.evses) == [1, 2]
    assert hal.evses[1].phases == 1
    assert hal.sims[1].ev_max_current == 10


def test_mock_errors():
    assert error({"driver": "mock", "phases": 4}) == (
        "hal.phases: 4 is not allowed; expected one of 1, 2, 3")
    assert error({"driver": "mock", "speed": 1}).startswith("hal.speed: unknown key; allowed")
    assert "mock numbers EVSEs 1..2" in error({"driver": "mock"}, ids=(1, 5))
    assert error({"driver": "simulated"}) == (
        "hal.driver: 'simulated' is not allowed; expected one of mock, hardware")
    assert error({}) == "hal.driver: missing; expected mock or hardware"


@pytest.mark.parametrize(("path", "value", "message"), [
    ("evses.0.meter.unit_id", 300,
     "hal.evses[0].meter.unit_id: 300 (0x12C) is not allowed; expected an address 1..247 "
     "(0x01..0xF7)"),
    ("evses.0.meter.bus", "rs232",
     "hal.evses[0].meter.bus: 'rs232' is not allowed; expected one of the buses under "
     "hal.modbus (rs485)"),
    ("evses.0.meter.type", "sdm72",
     "hal.evses[0].meter.type: 'sdm72' is not allowed; expected one of sdm630, sdm120, "
     "abb_b23, abb_b24, sunspec, generic"),
    ("evses.0.contactor.coil", 99,
     "hal.evses[0].contactor.coil: 99 is not allowed; expected a BCM GPIO number 0..53 or a "
     "gpiozero pin name like 'GPIO17'"),
    ("evses.0.contactor.settle", 1,
     "hal.evses[0].contactor.settle: unknown key; allowed here: coil, feedback, settle_s, "
     "required"),
    ("evses.0.contactor.feedback", {"pin": "GPIO17"},
     "hal.evses[0].contactor.feedback.pin: 'GPIO17' is not allowed; GPIO17 is already used "
     "by hal.evses[0].contactor.coil"),
    ("evses.0.id", 3,
     "hal.evses[0].id: 3 is not allowed; expected one of the station's EVSE ids [1]"),
    ("evses.0.ev.poll_interval_s", 0,
     "hal.evses[0].ev.poll_interval_s: 0 is not allowed; expected a number >= 0.05 and <= 10"),
    ("modbus.rs485.parity", "X",
     "hal.modbus.rs485.parity: 'X' is not allowed; expected one of N, E, O"),
    ("modbus.rs485.baudrate", 9601,
     "hal.modbus.rs485.baudrate: 9601 is not allowed; expected one of 1200, 2400, 4800, "
     "9600, 19200, 38400, 57600, 115200"),
    ("evses.0.ev", {"type": "direct_pilot", "pwm": {"pin": 18},
                    "adc": {"high": {"channel": 0}}, "diode_check": True},
     "hal.evses[0].ev.diode_check: true is not allowed without adc.low (the negative peak "
     "channel the check reads)"),
    ("evses.0.meter", None, "hal.evses[0].meter: missing; every EVSE needs a meter"),
    ("readers", [{"type": "pn532", "evse": 2}],
     "hal.readers[0].evse: 2 is not allowed; expected one of 1"),
    ("readers", [{"type": "rdm6300"}],
     "hal.readers[0].port: missing; expected a serial device"),
    ("evses.0.lock", {"type": "motor", "lock_pin": 5},
     "hal.evses[0].lock.unlock_pin: missing; a motor lock needs both directions"),
])
def test_errors_name_path_value_and_allowed(path, value, message):
    assert error(with_(path, value)) == message


def test_every_station_evse_needs_hardware():
    assert error(MINIMAL, ids=(1, 2)) == (
        "hal.evses: no hardware declared for EVSE [2]; every EVSE of the station ([1, 2]) "
        "needs an entry")


def test_tcp_unit_ids_allow_0_to_255():
    raw = with_("modbus", {"lan": {"type": "tcp", "host": "10.0.0.2"}})
    raw = with_("evses.0.meter", {"type": "sunspec", "bus": "lan", "unit_id": 0}, raw)
    raw = with_("evses.0.ev", {"type": "phoenix_ev_eth", "bus": "lan"}, raw)
    cfg = parse_hal_config(raw, [1])
    assert cfg.hardware.evses[0].ev.unit_id == 180  # the Phoenix default
    assert error(with_("evses.0.meter.unit_id", 256, raw)).endswith(
        "an address 0..255 (0x00..0xFF)")


def test_generic_register_errors():
    generic = {"type": "generic", "bus": "rs485", "unit_id": 4,
               "registers": {"power_w": {"address": 52}}}
    assert error(with_("evses.0.meter", generic)) == (
        "hal.evses[0].meter.registers.energy_import_wh: missing; a meter must at least give "
        "the imported energy")
    bad_type = copy.deepcopy(generic)
    bad_type["registers"]["energy_import_wh"] = {"address": 72, "type": "float16"}
    assert error(with_("evses.0.meter", bad_type)) == (
        "hal.evses[0].meter.registers.energy_import_wh.type: 'float16' is not allowed; "
        "expected one of uint16, int16, uint32, int32, uint64, int64, float32, float64")
    bad_list = copy.deepcopy(generic)
    bad_list["registers"]["energy_import_wh"] = 72
    bad_list["registers"]["voltage_v"] = [{"address": 0}, {"adress": 2}]
    assert error(with_("evses.0.meter", bad_list)).startswith(
        "hal.evses[0].meter.registers.voltage_v[1].adress: unknown key")
    unknown_q = copy.deepcopy(generic)
    unknown_q["registers"] = {"energy_import_wh": 72, "soc": 80}
    assert error(with_("evses.0.meter", unknown_q)).startswith(
        "hal.evses[0].meter.registers.soc: unknown quantity")


def test_example_config_parses_and_builds():
    raw = example_bench_rig()["hal"]
    cfg = parse_hal_config(raw, [1, 2])
    hal = build_hal(cfg)
    assert isinstance(hal, HardwareHal)
    e1, e2 = hal.evses[1], hal.evses[2]
    assert isinstance(e1.contactor, GpioContactor) and e1.contactor.feedback is not None
    assert isinstance(e1.meter, RegisterMapMeter) and e1.meter.map.name == "sdm630"
    assert isinstance(e1.ev, EvseWbBoard) and e1.lock is not None and e1.indicator is not None
    assert isinstance(e2.ev, DirectPilot) and e2.ev.diode_check
    assert e2.phases == 1 and e1.phases == 3  # from the meters
    # both meters and the board share one bus object (one client, one lock)
    assert e1.meter.bus is e1.ev.bus is e2.meter.bus
    assert len(hal.modbus_buses) == 1
    # the PN532 and the ADS1115 share one I2C adapter
    assert len(hal.i2c_buses) == 1
    assert isinstance(hal.readers[0], Pn532Reader)
    assert hal.readers[0].bus is e2.ev.adc.bus


def test_tcp_combination_builds():
    raw = with_("modbus", {"lan": {"type": "tcp", "host": "10.0.0.2", "port": 1502}})
    raw = with_("evses.0.meter", {"type": "sunspec", "bus": "lan", "unit_id": 1,
                                  "base_address": 40000}, raw)
    raw = with_("evses.0.ev", {"type": "phoenix_ev_eth", "bus": "lan", "unit_id": 255}, raw)
    hal = build_hal(parse_hal_config(raw, [1]))
    assert isinstance(hal.evses[1].meter, SunSpecMeter)
    assert isinstance(hal.evses[1].ev, PhoenixEvEth)
    assert hal.evses[1].meter.base_address == 40000


async def test_doctor_on_mock():
    out = io.StringIO()
    assert await doctor(parse_hal_config({"driver": "mock"}, [1]), out) == 0
    assert out.getvalue().startswith("PASS  mock HAL")


async def test_doctor_names_causes_when_nothing_is_there(tmp_path):
    """A laptop without the rig: every line fails, each with a cause a person can act on."""
    raw = with_("modbus.rs485.port", str(tmp_path / "ttyUSB0"))
    raw = with_("gpio", {"pin_factory": "mock"}, raw)
    raw["readers"] = [{"type": "rdm6300", "port": str(tmp_path / "ttyS0"), "required": False}]
    raw["evses"][0]["indicator"] = {"available": 22}
    out = io.StringIO()
    code = await doctor(parse_hal_config(raw, [1]), out)
    lines = out.getvalue().splitlines()
    assert code == 1
    text = "\n".join(lines)
    assert lines[0].startswith("FAIL  modbus bus rs485 (Modbus RTU ")
    assert "ttyUSB0 does not exist: adapter unplugged or wrong name" in lines[0]
    assert any(line.startswith("PASS  evse 1 contactor") for line in lines)  # mock pins
    assert any(line.startswith("FAIL  evse 1 meter (sdm630, id 1") for line in lines)
    assert any(line.startswith("FAIL  evse 1 EV board (evse_wb, id 2") for line in lines)
    assert any(line.startswith("PASS  evse 1 LEDs") and "(optional)" in line for line in lines)
    assert any(line.startswith("WARN  reader rdm6300") and "ttyS0 does not exist" in line
               for line in lines)
    assert lines[-1] == "3 required device(s) failing: the agent will not report READY."
    assert text.count("\n") == len(lines) - 1


def test_generic_meter_snippet_in_hardware_doc_parses():
    doc = (ROOT / "README.md").read_text().split("### Adding a meter by register map", 1)[1]
    snippet = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    meter = yaml.safe_load(snippet)["meter"]
    cfg = parse_hal_config(with_("evses.0.meter", meter), [1])
    regmap = cfg.hardware.evses[0].meter.regmap
    assert regmap.name == "acme-3000"
    assert regmap.quantities["energy_import_wh"][0].scale == 1000
    assert regmap.quantities["power_w"][0].function == 3
    assert len(regmap.quantities["voltage_v"]) == 3


def test_missing_sections_say_missing():
    assert error(with_("evses.0.contactor", None)) == (
        "hal.evses[0].contactor: missing; expected a mapping")
    assert error(with_("evses.0.ev", {"type": "direct_pilot", "pwm": {"pin": 18}})) == (
        "hal.evses[0].ev.adc: missing; expected a mapping")
    assert error(with_("evses", [])) == (
        "hal.evses: [] is not allowed; expected a non-empty list of EVSE declarations")
