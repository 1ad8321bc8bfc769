"""Register maps as data: what a meter's registers mean, and how to read them in few requests.

Every supported meter (and any meter declared in the YAML config) is one :class:`MeterMap`,
so adding a meter is a table, not code.  Decoding is done here with ``struct`` rather than
with pymodbus's helpers, which keeps the pymodbus dependency in ``modbus_bus`` and lets the
maps be checked without a bus.
"""

from __future__ import annotations

import enum
import math
import struct
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field


class DataType(enum.StrEnum):
    UINT16 = "uint16"
    INT16 = "int16"
    UINT32 = "uint32"
    INT32 = "int32"
    UINT64 = "uint64"
    INT64 = "int64"
    FLOAT32 = "float32"
    FLOAT64 = "float64"

    @property
    def words(self) -> int:
        return _FORMATS[self][1]


_FORMATS: dict[DataType, tuple[str, int]] = {
    DataType.UINT16: ("H", 1),
    DataType.INT16: ("h", 1),
    DataType.UINT32: ("I", 2),
    DataType.INT32: ("i", 2),
    DataType.UINT64: ("Q", 4),
    DataType.INT64: ("q", 4),
    DataType.FLOAT32: ("f", 2),
    DataType.FLOAT64: ("d", 4),
}

WORD_ORDERS = ("big", "little")

# MeterReading fields a map may fill; per-phase ones become tuples, a list under a scalar
# quantity is summed (e.g. a meter that only reports per-phase power).
PHASE_QUANTITIES = ("voltage_v", "current_a")
SCALAR_QUANTITIES = ("energy_import_wh", "energy_export_wh", "power_w", "frequency_hz",
                     "power_reactive_var", "power_factor", "temperature_c")
QUANTITIES = SCALAR_QUANTITIES + PHASE_QUANTITIES
# The measure (hal.interfaces.MEASURES) each quantity gives.
MEASURE_OF = {
    "energy_import_wh": "energy_import", "energy_export_wh": "energy_export",
    "power_w": "power", "frequency_hz": "frequency", "power_reactive_var": "power_reactive",
    "power_factor": "power_factor", "temperature_c": "temperature", "voltage_v": "voltage",
    "current_a": "current",
}


def measures_of(quantities: Iterable[str]) -> frozenset[str]:
    """What a meter filling these MeterReading fields measures."""
    return frozenset(MEASURE_OF[q] for q in quantities if q in MEASURE_OF)


def decode(regs: Sequence[int], dtype: DataType, word_order: str = "big") -> float:
    """Registers (big-endian bytes within each word, as Modbus sends them) to a number.

    ``word_order="little"`` is for devices that send the low word first (many Modbus
    gateways and some meters call this "swapped" or "CDAB").
    """
    fmt, words = _FORMATS[dtype]
    if len(regs) < words:
        raise ValueError(f"{dtype} needs {words} registers, got {len(regs)}")
    chunk = list(regs[:words])
    if word_order == "little":
        chunk.reverse()
    raw = b"".join(int(r & 0xFFFF).to_bytes(2, "big") for r in chunk)
    return struct.unpack(">" + fmt, raw)[0]


@dataclass(frozen=True, slots=True)
class RegisterSpec:
    """One value: where it is, how it is encoded, and the factor to our unit (W, Wh, V, A)."""

    address: int
    function: int = 3
    dtype: DataType = DataType.FLOAT32
    scale: float = 1.0
    word_order: str = "big"

    @property
    def words(self) -> int:
        return self.dtype.words


@dataclass(frozen=True, slots=True)
class ReadBlock:
    function: int
    address: int
    count: int

    def covers(self, spec: RegisterSpec) -> bool:
        return (spec.function == self.function and self.address <= spec.address
                and spec.address + spec.words <= self.address + self.count)


@dataclass(frozen=True)
class MeterMap:
    """A meter's registers.  ``max_gap`` is how many unused registers one read may span
    (0 = only adjacent values are read together, safe for devices that refuse reads of
    undefined registers); ``max_count`` is the device's limit per request."""

    name: str
    quantities: Mapping[str, tuple[RegisterSpec, ...]]
    phases: int = 3
    max_gap: int = 0
    max_count: int = 125
    blocks: tuple[ReadBlock, ...] = field(init=False)

    def __post_init__(self) -> None:
        if "energy_import_wh" not in self.quantities:
            raise ValueError(f"meter map {self.name!r} has no energy_import_wh register")
        unknown = set(self.quantities) - set(QUANTITIES)
        if unknown:
            raise ValueError(f"meter map {self.name!r}: unknown quantities {sorted(unknown)}")
        specs = [s for specs in self.quantities.values() for s in specs]
        object.__setattr__(self, "blocks", tuple(plan_reads(specs, self.max_gap, self.max_count)))

    @property
    def measures(self) -> frozenset[str]:
        """What a meter with this map can give: what is mapped, nothing else."""
        return measures_of(self.quantities)


def plan_reads(specs: Iterable[RegisterSpec], max_gap: int = 0,
               max_count: int = 125) -> list[ReadBlock]:
    """Group values into as few requests as the device allows."""
    out: list[ReadBlock] = []
    by_fn: dict[int, list[RegisterSpec]] = {}
    for s in specs:
        by_fn.setdefault(s.function, []).append(s)
    for fn in sorted(by_fn):
        start = end = -1
        for s in sorted(by_fn[fn], key=lambda s: s.address):
            s_end = s.address + s.words
            if start >= 0 and s.address <= end + max_gap and max(end, s_end) - start <= max_count:
                end = max(end, s_end)
                continue
            if start >= 0:
                out.append(ReadBlock(fn, start, end - start))
            start, end = s.address, s_end
        if start >= 0:
            out.append(ReadBlock(fn, start, end - start))
    return out


def extract(spec: RegisterSpec, data: Mapping[ReadBlock, Sequence[int]]) -> float | None:
    """The scaled value of ``spec`` from the blocks read; None when the meter says NaN."""
    for block, regs in data.items():
        if block.covers(spec):
            off = spec.address - block.address
            value = decode(regs[off:off + spec.words], spec.dtype, spec.word_order)
            if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
                return None
            return value * spec.scale
    raise KeyError(f"register {spec.address} (function {spec.function}) was not read")
