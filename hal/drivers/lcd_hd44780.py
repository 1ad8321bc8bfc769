"""HD44780 character LCD behind a PCF8574 I2C backpack (the "1602 / 2004 I2C" modules).

The backpack is an 8-bit I2C port expander wired to the LCD's 4-bit interface; on the common
modules P0 = RS (0 command, 1 data), P1 = R/W (kept low: write only), P2 = E (the LCD latches
D4..D7 on its falling edge), P3 = backlight transistor, P4..P7 = D4..D7.  Every byte for the
LCD goes as two nibbles, high first, each written three times to the expander: with E low (RS
and data settle), E high, E low again.  One I2C write carries a whole row, so a redraw of a
20x4 screen is a handful of transfers; the LCD needs 37 us per byte, far less than the nine
bit times of the next expander byte at 100 kHz, so only clear and the power-on steps wait.

Initialisation is the datasheet's "by instruction" sequence (figure 24): three 0x3 nibbles
(8-bit function set, whatever state a brown-out left the controller in), one 0x2 (4-bit
mode), then function set, display on, clear, entry mode. It runs on ``open`` and again after
any failed transfer, so an LCD that lost power comes back on the next redraw.

Characters go through the controller's ROM (code page A00: ASCII without backslash and tilde,
plus a few accented letters and symbols); the euro sign, which A00 lacks, is defined in CGRAM
slot 0 at initialisation. Anything else is shown as its unaccented letter, or ``?``.
"""

from __future__ import annotations

import asyncio
import logging
import unicodedata
from collections.abc import Sequence

from hal.drivers.base import DeviceDriver, DriverError, ProbeResult
from hal.drivers.i2c import I2cBus
from hal.interfaces import Display, FaultKind, HalError

log = logging.getLogger(__name__)

# Expander bits of the common backpack wiring.
RS = 0x01
RW = 0x02
EN = 0x04
BACKLIGHT = 0x08

# Instructions (HD44780U datasheet, table 6).
CLEAR = 0x01
ENTRY_INCREMENT = 0x06  # entry mode set: address +1, no display shift
DISPLAY_ON = 0x0C  # display on, cursor off, blink off
FUNCTION_4BIT = 0x20  # function set, 4-bit interface, 1 line, 5x8 dots
TWO_LINES = 0x08  # function set N bit (also for 4-row modules: they are 2 long lines)
SET_CGRAM = 0x40
SET_DDRAM = 0x80

CLEAR_WAIT_S = 0.002  # clear and return home take 1.52 ms
POWER_ON_WAIT_S = 0.05  # > 40 ms after Vcc rises to 2.7 V

EURO = 0x00  # CGRAM character 0
EURO_GLYPH = (0b00110, 0b01001, 0b11100, 0b01000, 0b11100, 0b01001, 0b00110, 0b00000)

# A00 ROM codes of the non-ASCII characters it has (datasheet table 4).
_ROM_EXTRAS = {"°": 0xDF, "µ": 0xE4, "ä": 0xE1, "ö": 0xEF, "ü": 0xF5, "ß": 0xE2, "ñ": 0xEE,
               "Ω": 0xF4, "π": 0xF7, "α": 0xE0, "ε": 0xE3, "σ": 0xE5, "Σ": 0xF6, "÷": 0xFD,
               "€": EURO, "¥": 0x5C}
# ASCII characters whose A00 code shows something else (0x5C is a yen sign, 0x7E an arrow).
_ASCII_STAND_INS = {"\\": "/", "~": "-"}


def row_offsets(columns: int, rows: int) -> tuple[int, ...]:
    """Display-RAM address of the first character of each row: rows 2 and 3 of a 4-row
    module continue rows 0 and 1 (0x00, 0x40, columns, 0x40 + columns)."""
    return (0x00, 0x40, columns, 0x40 + columns)[:rows]


def rom_code(ch: str) -> int:
    """The A00 ROM code that shows ``ch`` best."""
    ch = _ASCII_STAND_INS.get(ch, ch)
    if ch in _ROM_EXTRAS:
        return _ROM_EXTRAS[ch]
    if " " <= ch <= "}":
        return ord(ch)
    base = unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode()
    if len(base) >= 1 and " " <= base[0] <= "}" and base[0] not in _ASCII_STAND_INS:
        return ord(base[0])
    return ord("?")


def encode(text: str) -> bytes:
    return bytes(rom_code(ch) for ch in text)


class Hd44780Lcd(Display, DeviceDriver):
    """One character LCD on one backpack; ``show`` rewrites only the rows that changed."""

    def __init__(self, bus: I2cBus, address: int = 0x27, *, columns: int = 16, rows: int = 2,
                 backlight: bool = True, required: bool = False) -> None:
        if rows not in (1, 2, 4) or columns * rows > 80 or columns > 40:
            raise ValueError(f"{columns}x{rows} is not a single-controller HD44780 size")
        self.bus = bus
        self.address = address
        self._columns = columns
        self._rows = rows
        self.backlight = backlight
        self.required = required
        self.label = f"display HD44780 {columns}x{rows} at {address:#04x} on {bus.describe()}"
        self._ready = False
        self._shown: list[bytes | None] = [None] * rows
        self._lock = asyncio.Lock()

    @property
    def columns(self) -> int:
        return self._columns

    @property
    def rows(self) -> int:
        return self._rows

    # ------------------------------------------------------------------ wire level

    @property
    def _bl(self) -> int:
        return BACKLIGHT if self.backlight else 0

    def _nibble(self, nibble: int, rs: int) -> bytes:
        b = ((nibble & 0x0F) << 4) | rs | self._bl
        return bytes((b, b | EN, b))

    def _byte(self, value: int, rs: int) -> bytes:
        return self._nibble(value >> 4, rs) + self._nibble(value, rs)

    async def _write(self, data: bytes) -> None:
        await self.bus.write(self.address, data)

    async def _command(self, value: int) -> None:
        await self._write(self._byte(value, 0))

    # ------------------------------------------------------------------ life cycle

    async def _init(self) -> None:
        self._ready = False
        await asyncio.sleep(POWER_ON_WAIT_S)
        await self._write(bytes((self._bl,)))  # RS, R/W and E low; backlight as configured
        for wait in (0.0045, 0.00015, 0.00015):
            await self._write(self._nibble(0x3, 0))
            await asyncio.sleep(wait)
        await self._write(self._nibble(0x2, 0))
        await self._command(FUNCTION_4BIT | (TWO_LINES if self._rows > 1 else 0))
        await self._command(DISPLAY_ON)
        await self._command(CLEAR)
        await asyncio.sleep(CLEAR_WAIT_S)
        await self._command(ENTRY_INCREMENT)
        glyph = b"".join(self._byte(row, RS) for row in EURO_GLYPH)
        await self._write(self._byte(SET_CGRAM | (EURO << 3), 0) + glyph)
        self._shown = [None] * self._rows
        self._ready = True

    async def open(self) -> None:
        async with self._lock:
            await self._init()

    async def close(self) -> None:
        self._ready = False

    async def probe(self) -> ProbeResult:
        try:
            async with self._lock:
                if self._ready:  # the backpack acknowledges; the screen stays as it is
                    await self._write(bytes((self._bl,)))
                else:
                    await self._init()
        except DriverError as exc:
            self._ready = False
            return ProbeResult(self.label, False, str(exc), self.required)
        return ProbeResult(self.label, True, "answers", self.required)

    # ------------------------------------------------------------------ Display

    async def show(self, lines: Sequence[str]) -> None:
        if len(lines) > self._rows:
            raise HalError(FaultKind.INTERNAL, f"{self.label}: {len(lines)} lines for "
                                               f"{self._rows} rows")
        rows = [encode(line[:self._columns]).ljust(self._columns, b" ") for line in lines]
        rows += [b" " * self._columns] * (self._rows - len(rows))
        offsets = row_offsets(self._columns, self._rows)
        async with self._lock:
            try:
                if not self._ready:
                    await self._init()
                for i, data in enumerate(rows):
                    if self._shown[i] == data:
                        continue
                    frame = self._byte(SET_DDRAM | offsets[i], 0) + b"".join(
                        self._byte(c, RS) for c in data)
                    await self._write(frame)
                    self._shown[i] = data
            except DriverError as exc:
                self._ready = False  # initialise again next time: it may have lost power
                raise HalError(FaultKind.INTERNAL, f"{self.label}: {exc}") from exc
