"""The hal: validation kit: errors that name the key path and the bad value."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hal import factory
from hal.config_kit import (
    ConfigMap,
    HalConfigError,
    boolean,
    choice,
    integer,
    nonzero,
    number,
    real,
    show,
    text,
)


def test_factory_raises_the_kits_error_class() -> None:
    # callers catch hal.factory.HalConfigError; it must be the very class the kit raises
    assert factory.HalConfigError is HalConfigError


def test_unknown_key_names_its_path_and_lists_the_allowed_keys() -> None:
    with pytest.raises(HalConfigError) as exc:
        ConfigMap({"coil": 17, "feedbak": 27}, "hal.evses[0].contactor",
                  ("coil", "feedback", "settle_s"))
    assert exc.value.path == "hal.evses[0].contactor.feedbak"
    assert str(exc.value) == ("hal.evses[0].contactor.feedbak: unknown key; allowed here: "
                              "coil, feedback, settle_s")


@pytest.mark.parametrize("raw, message", [
    (None, "hal.gpio: missing; expected a mapping"),
    ([1, 2], "hal.gpio: [1, 2] is not allowed; expected a mapping"),
])
def test_a_section_must_be_a_mapping(raw, message) -> None:
    with pytest.raises(HalConfigError) as exc:
        ConfigMap(raw, "hal.gpio", ("pin_factory",))
    assert str(exc.value) == message


def test_get_converts_defaults_and_names_missing_keys() -> None:
    m = ConfigMap({"retries": "0x3", "port": None}, "hal.modbus.rs485",
                  ("retries", "port", "timeout_s"))
    assert m.at("retries") == "hal.modbus.rs485.retries"
    assert m.get("retries", integer(0, 10)) == 3
    assert m.get("timeout_s", number(0.01, 30), 0.5) == 0.5
    assert not m.has("port")  # an explicit null counts as absent
    with pytest.raises(HalConfigError) as exc:
        m.get("port", text, what="a serial device")
    assert str(exc.value) == "hal.modbus.rs485.port: missing; expected a serial device"


def test_a_bad_value_is_quoted_with_its_path_and_what_was_expected() -> None:
    m = ConfigMap({"retries": 11}, "hal.modbus.rs485", ("retries",))
    with pytest.raises(HalConfigError) as exc:
        m.get("retries", integer(0, 10))
    assert exc.value.path == "hal.modbus.rs485.retries"
    assert str(exc.value) == ("hal.modbus.rs485.retries: 11 is not allowed; "
                              "expected an integer 0..10")


@pytest.mark.parametrize("conv, value, expected", [
    (integer(1, 247), True, "true is not allowed; expected an integer 1..247"),
    (integer(1, 247), "twelve", "'twelve' is not allowed; expected an integer 1..247"),
    (number(0, 80, lo_open=True), 0, "0 is not allowed; expected a number > 0 and <= 80"),
    (number(6, 80), "16", "'16' is not allowed; expected a number >= 6 and <= 80"),
    (nonzero, 0, "0 is not allowed; expected a non-zero number"),
    (real, False, "false is not allowed; expected a number"),
    (boolean, "false", "'false' is not allowed; expected true or false"),
    (choice("N", "E", "O"), "X", "'X' is not allowed; expected one of N, E, O"),
    (text, "  ", "'  ' is not allowed; expected a non-empty string"),
])
def test_converters_refuse_with_the_value_and_the_expectation(conv, value, expected) -> None:
    with pytest.raises(HalConfigError) as exc:
        conv(value, "hal.x")
    assert str(exc.value) == f"hal.x: {expected}"


def test_converters_accept_and_normalise() -> None:
    assert integer(0, 0xFF)("0x48", "p") == 0x48
    assert number(0, 1)(1, "p") == 1.0 and isinstance(number(0, 1)(1, "p"), float)
    assert nonzero(-4, "p") == -4.0
    assert real(0, "p") == 0.0
    assert boolean(False, "p") is False
    assert choice(1, 2, 3)(2, "p") == 2
    assert text("/dev/ttyUSB0", "p") == "/dev/ttyUSB0"


def test_show_cuts_long_values() -> None:
    assert show("abc") == "'abc'"
    long = show("x" * 100)
    assert len(long) == 60 and long.endswith("...")


def test_the_kit_and_the_mock_hal_load_no_driver() -> None:
    code = ("import sys, hal.factory\n"
            "hal.factory.build_hal(hal.factory.parse_hal_config({'driver': 'mock'}, [1, 2]))\n"
            "print([m for m in sys.modules\n"
            "       if m.startswith('hal.drivers') or m == 'hal.hardware_factory'])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2]).stdout
    assert out.strip() == "[]"
