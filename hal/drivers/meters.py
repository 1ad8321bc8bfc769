"""Energy meters over Modbus: register-map meters (Eastron, ABB, any YAML-declared meter)
and SunSpec meters found by walking the SunSpec model chain.

A meter that stops answering is reported the way the HAL contract asks: ``read`` raises
``HalError(METER)`` (the core's sampling task is waiting for it), and the first good read
afterwards sends ``FaultCleared`` so the core can clear the fault it raised.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from hal.drivers.base import (
    DeviceDriver,
    DeviceRejected,
    DriverError,
    EventSink,
    Health,
    ProbeResult,
)
from hal.drivers.modbus_bus import ModbusBus
from hal.drivers.registers import (
    PHASE_QUANTITIES,
    DataType,
    MeterMap,
    ReadBlock,
    RegisterSpec,
    decode,
    extract,
    measures_of,
)
from hal.interfaces import FaultKind, HalError, MeterReading, PowerMeter

log = logging.getLogger(__name__)


def _f32(address: int, scale: float = 1.0, function: int = 4) -> tuple[RegisterSpec, ...]:
    return (RegisterSpec(address, function, DataType.FLOAT32, scale),)


# Eastron SDM630 (Modbus protocol v2): input registers, IEEE 754 float32, high word first.
SDM630 = MeterMap(
    "sdm630",
    {
        "voltage_v": _f32(0x00) + _f32(0x02) + _f32(0x04),
        "current_a": _f32(0x06) + _f32(0x08) + _f32(0x0A),
        "power_w": _f32(0x34),
        "power_reactive_var": _f32(0x3C),
        "power_factor": _f32(0x3E),
        "frequency_hz": _f32(0x46),
        "energy_import_wh": _f32(0x48, 1000.0),  # kWh
        "energy_export_wh": _f32(0x4A, 1000.0),
    },
    phases=3, max_gap=40, max_count=80,
)

# Eastron SDM120: the same layout, one phase.
SDM120 = MeterMap(
    "sdm120",
    {
        "voltage_v": _f32(0x00),
        "current_a": _f32(0x06),
        "power_w": _f32(0x0C),
        "power_reactive_var": _f32(0x18),
        "power_factor": _f32(0x1E),
        "frequency_hz": _f32(0x46),
        "energy_import_wh": _f32(0x48, 1000.0),
        "energy_export_wh": _f32(0x4A, 1000.0),
    },
    phases=1, max_gap=30, max_count=80,
)


def _abb(address: int, dtype: DataType, scale: float) -> tuple[RegisterSpec, ...]:
    return (RegisterSpec(address, 3, dtype, scale),)


# ABB B23 / B24 (EQ meters): holding registers, fixed-point integers, high word first.
ABB_B2X = MeterMap(
    "abb_b23",
    {
        "energy_import_wh": _abb(0x5000, DataType.UINT64, 10.0),  # 0.01 kWh
        "energy_export_wh": _abb(0x5004, DataType.UINT64, 10.0),
        "voltage_v": (_abb(0x5B00, DataType.UINT32, 0.1) + _abb(0x5B02, DataType.UINT32, 0.1)
                      + _abb(0x5B04, DataType.UINT32, 0.1)),
        "current_a": (_abb(0x5B0C, DataType.UINT32, 0.01) + _abb(0x5B0E, DataType.UINT32, 0.01)
                      + _abb(0x5B10, DataType.UINT32, 0.01)),
        "power_w": _abb(0x5B14, DataType.INT32, 0.01),
        "power_reactive_var": _abb(0x5B1C, DataType.INT32, 0.01),
        "frequency_hz": _abb(0x5B2C, DataType.UINT16, 0.01),
        "power_factor": _abb(0x5B3A, DataType.INT16, 0.001),
    },
    phases=3, max_gap=60, max_count=125,
)

BUILTIN_MAPS: dict[str, MeterMap] = {
    "sdm630": SDM630,
    "sdm120": SDM120,
    "abb_b23": ABB_B2X,
    "abb_b24": ABB_B2X,
}


class _ModbusMeterBase(PowerMeter, DeviceDriver):
    kind_name = "meter"

    def __init__(self, evse_id: int, bus: ModbusBus, unit_id: int, *, sink: EventSink,
                 phases: int, required: bool = True) -> None:
        self.evse_id = evse_id
        self.bus = bus
        self.unit_id = unit_id
        self._phases = phases
        self.required = required
        self.label = (f"evse {evse_id} meter ({self.kind_name}, id {unit_id} "
                      f"on {bus.name} {bus.link.describe()})")
        self._health = Health(sink, evse_id, FaultKind.METER, self.label, announce_raise=False)

    @property
    def phases(self) -> int:
        return self._phases

    async def _read(self) -> MeterReading:
        raise NotImplementedError

    async def read(self) -> MeterReading:
        try:
            reading = await self._read()
        except DriverError as exc:
            self._health.failed(str(exc))
            raise HalError(FaultKind.METER, f"evse {self.evse_id} meter: {exc}") from exc
        except Exception as exc:  # a decoding bug must still look like a meter fault
            log.exception("%s: unexpected error", self.label)
            self._health.failed(repr(exc))
            raise HalError(FaultKind.METER, f"evse {self.evse_id} meter: {exc!r}") from exc
        self._health.recovered()
        return reading

    async def probe(self) -> ProbeResult:
        try:
            r = await self._read()
        except DriverError as exc:
            return ProbeResult(self.label, False, str(exc), self.required)
        volts = "/".join(f"{v:.1f}" for v in r.voltage_v) or "?"
        return ProbeResult(self.label, True,
                           f"{r.energy_import_wh / 1000:.3f} kWh imported, {volts} V, "
                           f"{r.power_w:.0f} W", self.required)


class RegisterMapMeter(_ModbusMeterBase):
    """Any meter described by a :class:`MeterMap` (built-in or from the YAML config)."""

    def __init__(self, evse_id: int, bus: ModbusBus, unit_id: int, regmap: MeterMap, *,
                 sink: EventSink, phases: int | None = None, required: bool = True) -> None:
        self.map = regmap
        self.kind_name = regmap.name
        super().__init__(evse_id, bus, unit_id, sink=sink,
                         phases=phases if phases is not None else regmap.phases,
                         required=required)

    @property
    def measures(self) -> frozenset[str]:
        return self.map.measures

    async def _read(self) -> MeterReading:
        data: dict[ReadBlock, list[int]] = {}
        for block in self.map.blocks:
            data[block] = await self.bus.read_registers(self.unit_id, block.address, block.count,
                                                        function=block.function)
        values: dict[str, object] = {}
        for name, specs in self.map.quantities.items():
            got = [extract(s, data) for s in specs]
            if name in PHASE_QUANTITIES:
                values[name] = tuple(round(v, 3) for v in got[: self._phases] if v is not None)
            elif all(v is None for v in got):
                values[name] = None
            else:
                values[name] = round(sum(v for v in got if v is not None), 3)
        if values.get("energy_import_wh") is None:
            raise DeviceRejected(f"meter id {self.unit_id}: energy register reads as NaN")
        return _reading(values)


def _reading(values: dict[str, object]) -> MeterReading:
    kwargs = {k: v for k, v in values.items() if v is not None}
    kwargs.setdefault("energy_export_wh", 0.0)
    kwargs.setdefault("power_w", 0.0)
    return MeterReading(**kwargs)  # type: ignore[arg-type]


SUNSPEC_MARKER = [0x5375, 0x6E53]  # "SunS"
SUNSPEC_BASES = (40000, 0, 50000)
SUNSPEC_INT_MODELS = {201: 1, 202: 2, 203: 3, 204: 3}  # model -> phases (int + scale factor)
SUNSPEC_FLOAT_MODELS = {211: 1, 212: 2, 213: 3, 214: 3}  # float32
_INT_NOT_IMPL = 0x8000
# The values every SunSpec meter model (201-204, 211-214) has a register for.
SUNSPEC_MEASURES = measures_of(("energy_import_wh", "energy_export_wh", "power_w", "current_a",
                                "voltage_v", "frequency_hz", "power_reactive_var",
                                "power_factor"))


def _sf(raw: int) -> int | None:
    return None if raw == _INT_NOT_IMPL else int(decode([raw], DataType.INT16))


def _scaled_int(regs: Sequence[int], sf: int | None, signed: bool = True) -> float | None:
    if sf is None:
        return None
    raw = regs[0]
    if signed:
        if raw == _INT_NOT_IMPL:
            return None
        value = decode([raw], DataType.INT16)
    else:
        if raw == 0xFFFF:
            return None
        value = raw
    return value * 10.0 ** sf


class SunSpecMeter(_ModbusMeterBase):
    """A meter exposing a SunSpec meter model (201-204 int+SF, 211-214 float).

    The model is found by reading the "SunS" marker and walking the model chain, so one
    driver covers every SunSpec meter at whatever address the vendor put it; the location is
    remembered, and looked up again if the device starts refusing it (after a firmware
    update the chain can move).

    What it measures is what the model has registers for until the first reading of a
    (re)discovered model; from then on what that reading held: a device marks a value it
    does not implement (0x8000, NaN, an unimplemented scale factor) in every reading.
    """

    kind_name = "sunspec"

    def __init__(self, evse_id: int, bus: ModbusBus, unit_id: int, *, sink: EventSink,
                 base_address: int | None = None, required: bool = True) -> None:
        super().__init__(evse_id, bus, unit_id, sink=sink, phases=3, required=required)
        self.base_address = base_address
        self.model: tuple[int, int] | None = None  # (model id, address of its ID register)
        self._measures = SUNSPEC_MEASURES
        self._measures_known = False  # narrowed by the first reading of the model found

    @property
    def measures(self) -> frozenset[str]:
        return self._measures

    async def discover(self) -> tuple[int, int]:
        bases = (self.base_address,) if self.base_address is not None else SUNSPEC_BASES
        base = None
        for candidate in bases:
            try:
                regs = await self.bus.read_registers(self.unit_id, candidate, 2, function=3)
            except DeviceRejected:
                continue
            if regs == SUNSPEC_MARKER:
                base = candidate
                break
        if base is None:
            where = ", ".join(str(b) for b in bases)
            raise DeviceRejected(f"device id {self.unit_id}: no SunSpec marker 'SunS' at {where} "
                                 "(not a SunSpec meter, or set base_address)")
        addr = base + 2
        for _ in range(64):
            model_id, length = await self.bus.read_registers(self.unit_id, addr, 2, function=3)
            if model_id == 0xFFFF:
                break
            if model_id in SUNSPEC_INT_MODELS or model_id in SUNSPEC_FLOAT_MODELS:
                self.model = (model_id, addr)
                self._measures_known = False
                self._phases = (SUNSPEC_INT_MODELS | SUNSPEC_FLOAT_MODELS)[model_id]
                log.info("%s: SunSpec model %d at %d", self.label, model_id, addr)
                return self.model
            addr += 2 + length
        raise DeviceRejected(f"device id {self.unit_id}: SunSpec device without a meter model "
                             "(201-204, 211-214)")

    async def _read(self) -> MeterReading:
        model_id, addr = self.model or await self.discover()
        try:
            if model_id in SUNSPEC_INT_MODELS:
                regs = await self.bus.read_registers(self.unit_id, addr + 2, 53, function=3)
                values = self._decode_int(regs)
            else:
                regs = await self.bus.read_registers(self.unit_id, addr + 2, 68, function=3)
                values = self._decode_float(regs)
        except DeviceRejected:
            self.model = None  # the chain moved: look again next time
            raise
        if values.get("energy_import_wh") is None:
            raise DeviceRejected(f"SunSpec model {model_id}: TotWhImp not implemented")
        if not self._measures_known:
            self._measures = measures_of(k for k, v in values.items() if v not in (None, ()))
            self._measures_known = True
        return _reading(values)

    def _decode_int(self, d: Sequence[int]) -> dict[str, object]:
        n = self._phases
        a_sf, v_sf, hz_sf, w_sf, var_sf, pf_sf, wh_sf = (
            _sf(d[4]), _sf(d[13]), _sf(d[15]), _sf(d[20]), _sf(d[30]), _sf(d[35]), _sf(d[52]))

        def acc32(i: int) -> float | None:
            if wh_sf is None:
                return None
            return decode(d[i:i + 2], DataType.UINT32) * 10.0 ** wh_sf

        volts = [_scaled_int(d[6 + i:], v_sf) for i in range(n)]
        amps = [_scaled_int(d[1 + i:], a_sf) for i in range(n)]
        pf = _scaled_int(d[31:], pf_sf)
        return {
            "energy_import_wh": acc32(44),
            "energy_export_wh": acc32(36),
            "power_w": _scaled_int(d[16:], w_sf),
            "power_reactive_var": _scaled_int(d[26:], var_sf),
            "power_factor": None if pf is None else pf / 100.0,  # SunSpec PF is in percent
            "frequency_hz": _scaled_int(d[14:], hz_sf),
            "voltage_v": tuple(round(v, 3) for v in volts if v is not None),
            "current_a": tuple(round(a, 3) for a in amps if a is not None),
        }

    def _decode_float(self, d: Sequence[int]) -> dict[str, object]:
        n = self._phases

        def f(i: int) -> float | None:
            v = decode(d[i:i + 2], DataType.FLOAT32)
            return None if v != v else float(v)  # NaN = not implemented

        pf = f(50)
        volts = [f(10 + 2 * i) for i in range(n)]
        amps = [f(2 + 2 * i) for i in range(n)]
        return {
            "energy_import_wh": f(66),
            "energy_export_wh": f(58),
            "power_w": f(26),
            "power_reactive_var": f(42),
            "power_factor": None if pf is None else pf / 100.0,
            "frequency_hz": f(24),
            "voltage_v": tuple(round(v, 3) for v in volts if v is not None),
            "current_a": tuple(round(a, 3) for a in amps if a is not None),
        }
