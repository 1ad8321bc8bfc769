"""``hal.display``: the driver's character display, checked up front.

Both halves of the HAL factory read it: the mock HAL (``type: mock``, or ``none`` for a
station without a screen) and the hardware HAL (``type: hd44780``: an HD44780-compatible
character LCD behind a PCF8574 I2C backpack, the module bench rigs use). Like the rest of the
``hal:`` section, every mistake is reported with its key path when the agent starts, not when
the first driver walks up to the station. This module imports only :mod:`hal.config_kit`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hal.config_kit import ConfigMap, HalConfigError, address, bad, boolean, choice, integer

# What an HD44780 drives with one controller (80 characters of display RAM): 40x4 modules
# carry two controllers and two enable lines, which a PCF8574 backpack cannot drive.
LCD_SIZES = ((8, 1), (8, 2), (16, 1), (16, 2), (16, 4), (20, 2), (20, 4), (24, 2), (40, 1),
             (40, 2))
# PCF8574 (0x20-0x27) and PCF8574A (0x38-0x3F): the backpack's three address jumpers.
PCF8574_ADDRESSES = (0x20, 0x27)
PCF8574A_ADDRESSES = (0x38, 0x3F)
DEFAULT_MOCK_SIZE = (20, 4)


@dataclass(frozen=True)
class DisplayConfig:
    type: str  # mock | hd44780 | none
    columns: int = 20
    rows: int = 4
    bus: int = 1  # hd44780: /dev/i2c-N
    address: int = 0x27  # hd44780: the backpack's I2C address
    backlight: bool = True
    required: bool = False  # a dead LCD keeps the station out of READY only when true


def _size(m: ConfigMap, default: tuple[int, int]) -> tuple[int, int]:
    columns = m.get("columns", integer(1, 80), default[0])
    rows = m.get("rows", integer(1, 8), default[1])
    if (columns, rows) not in LCD_SIZES:
        sizes = ", ".join(f"{c}x{r}" for c, r in LCD_SIZES)
        raise HalConfigError(m.path, f"{columns} columns x {rows} rows is not allowed; an "
                                     f"HD44780 character display is one of {sizes}")
    return columns, rows


def _pcf8574_address(v: Any, path: str) -> int:
    value = address(0x03, 0x77)(v, path)
    if not (PCF8574_ADDRESSES[0] <= value <= PCF8574_ADDRESSES[1]
            or PCF8574A_ADDRESSES[0] <= value <= PCF8574A_ADDRESSES[1]):
        raise HalConfigError(path, f"{value} (0x{value:02X}) is not allowed; a PCF8574 "
                                   "backpack answers at 0x20..0x27 (PCF8574A: 0x38..0x3F), "
                                   "see i2cdetect -y <bus>")
    return value


def parse_display(raw: Any, path: str, driver: str) -> DisplayConfig | None:
    """The ``display:`` mapping of ``hal:`` for ``driver`` (mock | hardware); None: no screen.

    On the mock HAL an absent section means the simulated 20x4 display a bench rig has
    (``type: none`` removes it); on hardware an absent section means no display.
    """
    if raw is None:
        return DisplayConfig("mock", *DEFAULT_MOCK_SIZE) if driver == "mock" else None
    if not isinstance(raw, dict):
        raise bad(path, raw, "a mapping with type: " + ("mock or none" if driver == "mock"
                                                         else "hd44780 or none"))
    kind = raw.get("type")
    if kind is None:
        raise HalConfigError(f"{path}.type", "missing; expected "
                             + ("mock or none" if driver == "mock" else "hd44780 or none"))
    if driver == "mock":
        if kind == "hd44780":
            raise HalConfigError(f"{path}.type", "'hd44780' is not allowed with hal.driver: "
                                                 "mock; expected mock or none (a real LCD "
                                                 "needs driver: hardware)")
        choice("mock", "none")(kind, f"{path}.type")
    else:
        if kind == "mock":
            raise HalConfigError(f"{path}.type", "'mock' is not allowed with hal.driver: "
                                                 "hardware; expected hd44780 or none")
        choice("hd44780", "none")(kind, f"{path}.type")
    if kind == "none":
        ConfigMap(raw, path, ("type",))
        return None
    if kind == "mock":
        m = ConfigMap(raw, path, ("type", "columns", "rows"))
        return DisplayConfig("mock", *_size(m, DEFAULT_MOCK_SIZE))
    m = ConfigMap(raw, path, ("type", "bus", "address", "columns", "rows", "backlight",
                              "required"))
    columns, rows = _size(m, (16, 2))
    return DisplayConfig(
        "hd44780", columns, rows,
        bus=m.get("bus", integer(0, 99), 1),
        address=m.get("address", _pcf8574_address, 0x27),
        backlight=m.get("backlight", boolean, True),
        required=m.get("required", boolean, False))
