"""The HD44780 + PCF8574 character LCD driver against a fake I2C bus that decodes the wire.

The fake is the expander and the controller: it watches the expander's output bytes, latches
D4..D7 with RS on each falling edge of E (as the HD44780 does), pairs the nibbles into bytes
once the controller is in 4-bit mode, and executes the instructions (function set, display
on/off, clear, entry mode, DDRAM / CGRAM address) and data writes into its display RAM.  Its
screen is read back from the RAM with the datasheet's row addresses, independently of the
driver's own tables, so an encoding bug in the driver cannot cancel itself out.
"""

from __future__ import annotations

import pytest
from gpiozero.pins.mock import MockFactory, MockPWMPin
from halsim import FakeSMBus

from hal.config_kit import HalConfigError
from hal.drivers.i2c import I2cBus
from hal.drivers.lcd_hd44780 import Hd44780Lcd
from hal.factory import build_hal, parse_hal_config
from hal.interfaces import HalError
from hal.mock import MockHal

RS, RW, EN, BL = 0x01, 0x02, 0x04, 0x08
# The datasheet's DDRAM addresses of each row's first character (2-line mode).
ROWS = {(16, 2): (0x00, 0x40), (20, 4): (0x00, 0x40, 0x14, 0x54), (16, 4): (0x00, 0x40, 0x10,
                                                                              0x50)}
EURO_ROWS = (0b00110, 0b01001, 0b11100, 0b01000, 0b11100, 0b01001, 0b00110, 0b00000)
A00 = {0xE1: "ä", 0xEF: "ö", 0xF5: "ü", 0xE2: "ß", 0xDF: "°", 0xE4: "µ"}


class FakeLcd:
    """A PCF8574 backpack with an HD44780 behind it, as seen from the I2C bus."""

    def __init__(self) -> None:
        self.out = 0
        self.eight_bit = True  # the controller's state after power-on
        self.two_lines = False
        self.display_on = False
        self.increment = True
        self._half: tuple[int, int] | None = None
        self.ddram = bytearray(b" " * 0x80)
        self.cgram = bytearray(64)
        self.addr = 0
        self.in_cgram = False
        self.commands: list[int] = []
        self.data_bytes = 0
        self.bytes_seen = 0
        self.backlight_off_bytes = 0
        self.rw_seen = False
        self.gone = False

    # -- the expander
    def write(self, data: bytes) -> None:
        for byte in data:
            self.bytes_seen += 1
            if not byte & BL:
                self.backlight_off_bytes += 1
            if byte & RW:
                self.rw_seen = True
            if self.out & EN and not byte & EN:  # falling edge of E: the LCD latches
                self._latch(self.out)
            self.out = byte

    def read(self, n: int) -> bytes:
        return bytes([self.out]) * n

    @property
    def backlight(self) -> bool:
        return bool(self.out & BL)

    # -- the controller
    def _latch(self, byte: int) -> None:
        rs, nibble = byte & RS, byte >> 4
        if self.eight_bit:  # D0..D3 are not wired: they read as 0
            self._execute(nibble << 4, rs)
            return
        if self._half is None:
            self._half = (nibble, rs)
            return
        high, rs_high = self._half
        self._half = None
        assert rs_high == rs, "RS changed between the two nibbles of one byte"
        self._execute(high << 4 | nibble, rs)

    def _execute(self, value: int, rs: int) -> None:
        if rs:
            self.data_bytes += 1
            if self.in_cgram:
                self.cgram[self.addr & 0x3F] = value
            else:
                self.ddram[self.addr & 0x7F] = value
            self.addr += 1 if self.increment else -1
            return
        self.commands.append(value)
        if value & 0x80:
            self.in_cgram, self.addr = False, value & 0x7F
        elif value & 0x40:
            self.in_cgram, self.addr = True, value & 0x3F
        elif value & 0x20:
            self.eight_bit = bool(value & 0x10)
            self.two_lines = bool(value & 0x08)
        elif value & 0x08:
            self.display_on = bool(value & 0x04)
        elif value & 0x04:
            self.increment = bool(value & 0x02)
        elif value == 0x01:
            self.ddram[:] = b" " * 0x80
            self.addr, self.in_cgram = 0, False

    def char(self, code: int) -> str:
        if code < 8:
            glyph = tuple(self.cgram[code * 8:code * 8 + 8])
            return "€" if glyph == EURO_ROWS else f"<cg{code}>"
        return A00.get(code, chr(code))

    def screen(self, columns: int, rows: int) -> list[str]:
        return ["".join(self.char(self.ddram[start + i]) for i in range(columns))
                for start in ROWS[(columns, rows)]]


def lcd_on(fake: FakeLcd, *, columns: int = 20, rows: int = 4, address: int = 0x27,
           **kw: object) -> tuple[Hd44780Lcd, FakeSMBus]:
    smbus = FakeSMBus({address: fake})
    bus = I2cBus("i2c-1", 1, opener=smbus.opener)
    return Hd44780Lcd(bus, address, columns=columns, rows=rows, **kw), smbus  # type: ignore[arg-type]


async def test_initialises_in_4_bit_mode_and_shows_four_rows():
    fake = FakeLcd()
    lcd, _ = lcd_on(fake)
    await lcd.open()
    assert not fake.eight_bit, "the controller was not switched to 4-bit mode"
    assert fake.two_lines and fake.display_on and fake.increment
    assert 0x01 in fake.commands, "no clear at initialisation"
    assert fake.backlight and not fake.rw_seen
    lines = ["Charging", "12.34 kWh  7.4 kW", "Cost 3.31 €", "Tariff 0.39 €/kWh"]
    await lcd.show(lines)
    assert fake.screen(20, 4) == [line.ljust(20) for line in lines]


@pytest.mark.parametrize("size", [(16, 2), (16, 4), (20, 4)])
async def test_rows_land_at_the_datasheet_addresses(size):
    columns, rows = size
    fake = FakeLcd()
    lcd, _ = lcd_on(fake, columns=columns, rows=rows)
    lines = [f"row {i} " + "x" * 30 for i in range(rows)]
    await lcd.show(lines)  # initialises on first use; lines longer than the glass are cut
    assert fake.screen(columns, rows) == [line[:columns] for line in lines]


async def test_only_rows_that_changed_are_written_again():
    fake = FakeLcd()
    lcd, _ = lcd_on(fake)
    await lcd.show(["Charging", "1.00 kWh  7.4 kW", "", ""])
    before = fake.data_bytes
    await lcd.show(["Charging", "1.01 kWh  7.4 kW", "", ""])
    assert fake.data_bytes - before == 20, "more than the one changed row was rewritten"
    before = fake.data_bytes
    await lcd.show(["Charging", "1.01 kWh  7.4 kW"])  # missing rows are blank rows
    assert fake.data_bytes == before, "an unchanged screen was written again"
    assert fake.screen(20, 4)[1] == "1.01 kWh  7.4 kW".ljust(20)


async def test_characters_the_rom_lacks_are_stood_in_for():
    fake = FakeLcd()
    lcd, _ = lcd_on(fake, columns=16, rows=2)
    await lcd.show(["Grüße 20°C 5€", "a\\b~c Éé 中"])
    assert fake.screen(16, 2) == ["Grüße 20°C 5€".ljust(16), "a/b-c Ee ?".ljust(16)]


async def test_backlight_off_is_kept_in_every_byte():
    fake = FakeLcd()
    lcd, _ = lcd_on(fake, backlight=False)
    await lcd.show(["dark"])
    assert fake.bytes_seen > 0 and fake.backlight_off_bytes == fake.bytes_seen
    assert fake.screen(20, 4)[0] == "dark".ljust(20)


async def test_a_display_that_lost_power_is_initialised_again():
    fake = FakeLcd()
    lcd, smbus = lcd_on(fake)
    await lcd.show(["first"])
    fake.gone = True  # unplugged: the backpack stops acknowledging
    with pytest.raises(HalError, match="0x27"):
        await lcd.show(["second"])
    fresh = FakeLcd()  # plugged back in: a controller in its power-on state (8-bit)
    smbus.devices[0x27] = fresh
    await lcd.show(["third"])
    assert not fresh.eight_bit
    assert fresh.screen(20, 4)[0] == "third".ljust(20)


async def test_probe_of_a_working_display_leaves_the_screen_alone():
    fake = FakeLcd()
    lcd, _ = lcd_on(fake)
    await lcd.show(["Charging"])
    clears = fake.commands.count(0x01)
    result = await lcd.probe()
    assert result.ok and fake.commands.count(0x01) == clears
    assert fake.screen(20, 4)[0] == "Charging".ljust(20)


async def test_probe_names_a_missing_backpack():
    lcd, _ = lcd_on(FakeLcd(), address=0x3F)
    lcd.bus._opener = FakeSMBus({}).opener  # nothing answers on the bus
    result = await lcd.probe()
    assert not result.ok and "0x3f" in result.detail and not result.required


# ---------------------------------------------------------------------- configuration

def hardware_hal(display: object) -> dict:
    return {"driver": "hardware",
            "modbus": {"rs485": {"type": "rtu", "port": "/dev/ttyUSB0"}},
            "evses": [{"id": 1, "contactor": {"coil": 17},
                       "meter": {"type": "sdm630", "bus": "rs485", "unit_id": 1},
                       "ev": {"type": "evse_wb", "bus": "rs485", "unit_id": 2}}],
            "display": display}


async def test_hardware_display_is_built_on_its_i2c_bus():
    cfg = parse_hal_config(hardware_hal({"type": "hd44780", "bus": 1, "address": 0x27,
                                         "columns": 20, "rows": 4}), [1])
    fake = FakeLcd()
    smbus = FakeSMBus({0x27: fake})
    factory = MockFactory(pin_class=MockPWMPin)
    try:
        hal = build_hal(cfg, pin_factory=factory, i2c_opener=smbus.opener)
        assert isinstance(hal.display, Hd44780Lcd)
        assert (hal.display.columns, hal.display.rows) == (20, 4)
        result = await hal.display.probe()
        assert result.ok, result.detail
        await hal.display.show(["Available"])
        assert fake.screen(20, 4)[0] == "Available".ljust(20)
    finally:
        factory.reset()


@pytest.mark.parametrize("display, path, words", [
    ({"type": "hd44780", "columns": 21, "rows": 4}, "hal.display", "16x2"),
    ({"type": "hd44780", "columns": 40, "rows": 4}, "hal.display", "20x4"),
    ({"type": "hd44780", "address": 0x50}, "hal.display.address", "0x20..0x27"),
    ({"type": "hd44780", "address": "0x27x"}, "hal.display.address", "0x27x"),
    ({"type": "hd44780", "bus": "one"}, "hal.display.bus", "integer"),
    ({"type": "hd44780", "colums": 20}, "hal.display.colums", "unknown key"),
    ({"type": "mock"}, "hal.display.type", "driver: hardware"),
    ({"type": "st7920"}, "hal.display.type", "hd44780"),
    ({"columns": 20}, "hal.display.type", "missing"),
    ("lcd", "hal.display", "mapping"),
])
def test_hardware_display_config_errors_name_the_key(display, path, words):
    with pytest.raises(HalConfigError) as err:
        parse_hal_config(hardware_hal(display), [1])
    assert err.value.path == path
    assert words in str(err.value)


def test_pcf8574a_addresses_are_accepted():
    cfg = parse_hal_config(hardware_hal({"type": "hd44780", "address": 0x3F}), [1])
    assert cfg.hardware is not None and cfg.hardware.display is not None
    assert cfg.hardware.display.address == 0x3F
    assert (cfg.hardware.display.columns, cfg.hardware.display.rows) == (16, 2)


def test_mock_display_size_and_none():
    hal = build_hal(parse_hal_config({"driver": "mock"}, [1]))
    assert isinstance(hal, MockHal) and hal.display is not None
    assert (hal.display.columns, hal.display.rows) == (20, 4)
    hal = build_hal(parse_hal_config({"driver": "mock", "display": {"type": "mock",
                                                                    "columns": 16,
                                                                    "rows": 2}}, [1]))
    assert hal.display is not None and (hal.display.columns, hal.display.rows) == (16, 2)
    hal = build_hal(parse_hal_config({"driver": "mock", "display": {"type": "none"}}, [1]))
    assert hal.display is None
    with pytest.raises(HalConfigError, match="driver: hardware"):
        parse_hal_config({"driver": "mock", "display": {"type": "hd44780"}}, [1])
