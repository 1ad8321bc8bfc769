"""TI ADS1115 16-bit ADC on I2C, read in single-shot mode.

Registers: 0x00 conversion (signed 16 bit, MSB first), 0x01 config.  Config bits: 15 OS
(write 1 = start a conversion, reads 1 when idle), 14:12 MUX (100-111 = AIN0-AIN3 against
GND), 11:9 PGA (full-scale range), 8 MODE (1 = single shot), 7:5 data rate, 1:0 comparator
queue (11 = comparator off).  Single shot is used so that each reading is a fresh
conversion of the channel we asked for, never a stale value from the previous channel.
"""

from __future__ import annotations

import asyncio

from hal.drivers.base import DeviceRejected, NoAnswer
from hal.drivers.i2c import I2cBus

REG_CONVERSION = 0x00
REG_CONFIG = 0x01

FULL_SCALE_V = {6.144: 0b000, 4.096: 0b001, 2.048: 0b010, 1.024: 0b011, 0.512: 0b100,
                0.256: 0b101}
DATA_RATES = {8: 0b000, 16: 0b001, 32: 0b010, 64: 0b011, 128: 0b100, 250: 0b101, 475: 0b110,
              860: 0b111}


class Ads1115:
    def __init__(self, bus: I2cBus, address: int = 0x48, *, full_scale_v: float = 4.096,
                 data_rate: int = 860) -> None:
        if full_scale_v not in FULL_SCALE_V:
            raise ValueError(f"full_scale_v must be one of {sorted(FULL_SCALE_V)}")
        if data_rate not in DATA_RATES:
            raise ValueError(f"data_rate must be one of {sorted(DATA_RATES)}")
        self.bus = bus
        self.address = address
        self.full_scale_v = full_scale_v
        self.data_rate = data_rate
        # one conversion at a time: the self-check probing while the poller reads must not
        # start channel 1 between our channel-0 start and its result
        self._lock = asyncio.Lock()

    def describe(self) -> str:
        return f"ADS1115 at {self.address:#04x} on {self.bus.describe()}"

    def config_word(self, channel: int) -> int:
        if not 0 <= channel <= 3:
            raise ValueError("channel must be 0..3")
        return (0x8000 | ((0b100 | channel) << 12) | (FULL_SCALE_V[self.full_scale_v] << 9)
                | 0x0100 | (DATA_RATES[self.data_rate] << 5) | 0b11)

    async def read_config(self) -> int:
        raw = await self.bus.transfer(self.address, bytes([REG_CONFIG]), 2)
        return int.from_bytes(raw, "big")

    async def read_volts(self, channel: int) -> float:
        """One single-ended conversion of AIN``channel``, in volts at the ADC pin."""
        async with self._lock:
            return await self._convert(channel)

    async def _convert(self, channel: int) -> float:
        cfg = self.config_word(channel)
        await self.bus.write(self.address, bytes([REG_CONFIG, cfg >> 8, cfg & 0xFF]))
        conversion_s = 1.0 / self.data_rate
        await asyncio.sleep(conversion_s)  # the conversion's own duration
        for _ in range(20):
            if await self.read_config() & 0x8000:
                break
            await asyncio.sleep(conversion_s / 4)
        else:
            raise NoAnswer(f"{self.describe()}: conversion never finished")
        raw = await self.bus.transfer(self.address, bytes([REG_CONVERSION]), 2)
        if len(raw) != 2:
            raise DeviceRejected(f"{self.describe()}: short read")
        value = int.from_bytes(raw, "big", signed=True)
        return value * self.full_scale_v / 32768.0
