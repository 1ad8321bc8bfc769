"""A bidirectional power stage over Modbus that follows the SunSpec DER information model.

Which register model: the SunSpec Alliance's DER models (701-713, the IEEE 1547-2018
functions as Modbus models), found the way every SunSpec device is found: the "SunS" marker
at 40000 (or 0, or 50000, or the configured base) and the chain of models after it, each an
ID register, a length register and that many registers of points. This driver reads and
writes, at the offsets of the published model definitions (sunspec/models, json/):

- model 1 (common): manufacturer, model, version, serial number, for the doctor's line;
- model 701 (DER AC measurement): ``W``, ``Var``, ``PF``, ``Hz``, the phase voltages and
  currents, ``TotWhInj`` / ``TotWhAbs``, each with its scale factor: the EVSE's meter;
- model 702 (DER capacity): the ratings ``WMaxRtg``, ``WChaRteMaxRtg``, ``WDisChaRteMaxRtg``,
  ``AMaxRtg`` (the stage's limits) and the settings ``WMax``, ``WChaRteMax``,
  ``WDisChaRteMax`` (what the device allows now: the EV's limits, see below);
- model 704 (DER AC controls): ``WSetEna``, ``WSetMod`` (WATTS), ``WSet`` and its reversion
  (``WSetRvrt`` = 0 W, ``WSetEnaRvrt``, ``WSetRvrtTms``): the setpoint, written and read back;
  the reactive power setpoint ``VarSetEna``, ``VarSetMod`` (VARS, or VAR_MAX_PCT with
  ``VarSetPct`` on a device without ``VarSet``), ``VarSetPri`` (REACTIVE: the core leaves the
  room, the device keeps the vars when the VA rating is reached), ``VarSet`` and its reversion
  to 0 var (``VarSetRvrt``, ``VarSetEnaRvrt``, ``VarSetRvrtTms``), with the constant power
  factor modes (``PFWInjEna``, ``PFWAbsEna``) disabled first: IEEE 1547 allows one reactive
  mode at a time, and the core turns a FixedPF control into vars itself; the normal ramp rate
  ``WRmp`` (%/s of ``WMax``, ``WRmpRef`` W_MAX). 704 has no soft-start ramp (model 703's
  ``ESRmpTms`` is the enter-service ramp, not mapped): a soft-start rate is not applied.
  The reactive range comes from 702: ``VAMax`` / ``VAMaxRtg``, ``VarMaxInj`` /
  ``VarMaxInjRtg``, ``VarMaxAbs`` / ``VarMaxAbsRtg``;
- model 713 (DER storage capacity): ``WHRtg``, ``SoC``: the EV's battery as the DC stage sees
  it (optional: without it the EV's energy state is unknown).

Signs: SunSpec counts power the DER *injects into the grid* as positive (generation); the
HAL counts power *into the EV* as positive. Every power crossing this module is negated, and
``TotWhAbs`` (absorbed from the grid) is the import register, ``TotWhInj`` the export one.

Assumptions a real device may contradict (check with ``cp-agent doctor`` and the first
session): the device is one DC charger whose storage (713) is the connected EV's battery;
its controller lowers ``WChaRteMax`` / ``WDisChaRteMax`` to what the EV's BMS accepts, so
those are reported as the EV's limits while an EV is plugged; the pilot (plug state, current
offer) comes from the EVSE's own EV-side driver, which this one wraps.

Faults: a point a device marks as not implemented (0x8000 int16 / scale factor, 0xFFFF
uint16 / enum16, 0x80000000 int32, 0xFFFFFFFF uint32, all ones uint64) is never read as a
number: an optional one drops out, a required one (701 ``W``, ``TotWhAbs``, their scale
factors; 704 ``WSetEna``, ``WSet_SF``) makes the read fail with a message naming the point.
A scale factor outside -10..10 is a fault too. The meter's failures are ``HalError(METER)``
(the core's sampling waits for them, as for every meter); the stage's (a setpoint the device
does not take, its control models gone silent) are ``INTERNAL``: raised to a waiting
command, announced as ``FaultRaised`` from the background poll, and ``FaultCleared`` on the
first good exchange after. A chain that moved (a firmware update) is walked again.

Safety: a setpoint is written with a reversion timer (``reversion_s``) and refreshed well
within it, so an agent that dies or loses the bus leaves the device at 0 W when the timer
runs out, not at the last setpoint; closing the driver disables the setpoint.
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from hal.drivers.base import (
    DeviceDriver,
    DeviceRejected,
    DriverError,
    EventSink,
    Health,
    ProbeResult,
    sleep_or_stop,
)
from hal.drivers.meters import SUNSPEC_BASES, SUNSPEC_MARKER, _ModbusMeterBase
from hal.drivers.modbus_bus import ModbusBus
from hal.interfaces import (
    EnergyTransferMode,
    EvChanged,
    EvConnection,
    EvEnergyState,
    FaultKind,
    HalError,
    MeterReading,
    PilotState,
    PowerLimits,
    ReactiveLimits,
)

log = logging.getLogger(__name__)

COMMON, MEASURE, CAPACITY, CONTROLS, STORAGE = 1, 701, 702, 704, 713
REQUIRED_MODELS = (MEASURE, CAPACITY, CONTROLS)
# The least length (registers after ID and L) each model must have to hold the points read.
MIN_LENGTH = {COMMON: 65, MEASURE: 119, CAPACITY: 49, CONTROLS: 54, STORAGE: 7}
MAX_CHAIN = 64  # models walked before giving up (a chain without an end marker)

# Point offsets from a model's ID register, as the published definitions lay them out.
M701 = {"ACType": 2, "St": 3, "W": 10, "Var": 12, "PF": 13, "A": 14, "LNV": 16, "Hz": 17,
        "TotWhInj": 19, "TotWhAbs": 23, "AL1": 45, "VL1": 47, "AL2": 68, "VL2": 70,
        "AL3": 91, "VL3": 93, "A_SF": 113, "V_SF": 114, "Hz_SF": 115, "W_SF": 116,
        "PF_SF": 117, "Var_SF": 119, "TotWh_SF": 120}
M702 = {"WMaxRtg": 2, "VAMaxRtg": 7, "VarMaxInjRtg": 8, "VarMaxAbsRtg": 9,
        "WChaRteMaxRtg": 10, "WDisChaRteMaxRtg": 11, "AMaxRtg": 17, "WMax": 26, "VAMax": 31,
        "VarMaxInj": 32, "VarMaxAbs": 33, "WChaRteMax": 34, "WDisChaRteMax": 35, "AMax": 41,
        "W_SF": 45, "VA_SF": 47, "Var_SF": 48, "A_SF": 50}
M704 = {"PFWInjEna": 2, "PFWAbsEna": 8, "WSetEna": 22, "WSetMod": 23, "WSet": 24,
        "WSetRvrt": 26, "WSetEnaRvrt": 30, "WSetRvrtTms": 31, "VarSetEna": 35, "VarSetMod": 36,
        "VarSetPri": 37, "VarSet": 38, "VarSetRvrt": 40, "VarSetPct": 42, "VarSetPctRvrt": 43,
        "VarSetEnaRvrt": 44, "VarSetRvrtTms": 45, "WRmp": 49, "WRmpRef": 50, "WSet_SF": 55,
        "VarSet_SF": 57, "VarSetPct_SF": 58}
M713 = {"WHRtg": 2, "SoC": 4, "Sta": 6, "WH_SF": 7, "Pct_SF": 8}
M1 = {"Mn": (2, 16), "Md": (18, 16), "Vr": (42, 8), "SN": (50, 16)}
READ_SPAN = {MEASURE: 121, CAPACITY: 51, CONTROLS: 59, STORAGE: 9, COMMON: 66}

WSETMOD_WATTS = 1
VARSETMOD_VAR_MAX_PCT, VARSETMOD_VARS = 1, 4
VARSETPRI_REACTIVE = 1
WRMPREF_W_MAX = 1
ENABLED, DISABLED = 1, 0
STORAGE_ERROR = 2  # 713 Sta
PHASES_OF_ACTYPE = {0: 1, 1: 2, 2: 3}  # SINGLE_PHASE, SPLIT_PHASE, THREE_PHASE
MODES = ("DC_BPT", "AC_BPT")

NOT_INT16 = 0x8000
NOT_UINT16 = 0xFFFF
NOT_INT32 = 0x80000000
NOT_UINT32 = 0xFFFFFFFF
NOT_UINT64 = 0xFFFFFFFFFFFFFFFF


# ------------------------------------------------------------------ decoding


def _u(regs: Sequence[int], at: int, words: int) -> int:
    value = 0
    for r in regs[at:at + words]:
        value = (value << 16) | (r & 0xFFFF)
    return value


def _int16(regs: Sequence[int], at: int) -> int | None:
    raw = regs[at] & 0xFFFF
    return None if raw == NOT_INT16 else struct.unpack(">h", struct.pack(">H", raw))[0]


def _uint16(regs: Sequence[int], at: int) -> int | None:
    raw = regs[at] & 0xFFFF
    return None if raw == NOT_UINT16 else raw


def _int32(regs: Sequence[int], at: int) -> int | None:
    raw = _u(regs, at, 2)
    return None if raw == NOT_INT32 else struct.unpack(">i", struct.pack(">I", raw))[0]


def _uint32(regs: Sequence[int], at: int) -> int | None:
    raw = _u(regs, at, 2)
    return None if raw == NOT_UINT32 else raw


def _uint64(regs: Sequence[int], at: int) -> int | None:
    raw = _u(regs, at, 4)
    return None if raw == NOT_UINT64 else raw


def _int32_regs(value: int) -> list[int]:
    return list(struct.unpack(">HH", struct.pack(">i", value)))


def _string(regs: Sequence[int], at: int, words: int) -> str:
    raw = b"".join(struct.pack(">H", r & 0xFFFF) for r in regs[at:at + words])
    return raw.split(b"\0", 1)[0].decode("ascii", "replace").strip()


class _Points:
    """One model's registers read at once, decoded by point name with its scale factor."""

    def __init__(self, model: int, regs: Sequence[int], offsets: dict[str, int]) -> None:
        self.model = model
        self.regs = regs
        self.offsets = offsets

    def has(self, name: str) -> bool:
        """Whether the model is long enough to hold the point (an older, shorter 704)."""
        return self.offsets[name] < len(self.regs)

    def sf(self, name: str, *, required: bool = False) -> int | None:
        if not self.has(name):
            if required:
                raise DeviceRejected(f"SunSpec model {self.model}: the model is too short to "
                                     f"hold {name}")
            return None
        value = _int16(self.regs, self.offsets[name])
        if value is None:
            if required:
                raise DeviceRejected(f"SunSpec model {self.model}: scale factor {name} is "
                                     "not implemented")
            return None
        if not -10 <= value <= 10:
            raise DeviceRejected(f"SunSpec model {self.model}: scale factor {name} = {value} "
                                 "is outside -10..10")
        return value

    def value(self, name: str, kind: Callable[[Sequence[int], int], int | None],
              sf: str | None, *, required: bool = False) -> float | None:
        """The point's value scaled (None: not implemented, or its scale factor is not)."""
        raw = kind(self.regs, self.offsets[name]) if self.has(name) else None
        scale = self.sf(sf, required=required) if sf is not None else 0
        if raw is None or scale is None:
            if required:
                raise DeviceRejected(f"SunSpec model {self.model}: {name} is not implemented")
            return None
        return raw * 10.0 ** scale


@dataclass(frozen=True, slots=True)
class DerRatings:
    """Model 702 in the HAL's terms (W and A magnitudes; None: not implemented)."""

    w_max_rtg: float | None
    w_cha_max_rtg: float | None
    w_discha_max_rtg: float | None
    a_max_rtg: float | None
    w_max: float | None
    w_cha_max: float | None
    w_discha_max: float | None
    a_max: float | None
    va_max: float | None = None  # the settings where implemented, else the ratings
    var_inject_max: float | None = None
    var_absorb_max: float | None = None


@dataclass(frozen=True, slots=True)
class ControlCaps:
    """What model 704 of this device implements beyond the active power setpoint."""

    var_watts: bool  # VarSet with VarSet_SF (mode VARS)
    var_pct: bool  # VarSetPct with VarSetPct_SF (mode VAR_MAX_PCT)
    var_pri: bool  # VarSetPri
    var_reversion: bool  # VarSetEnaRvrt / VarSetRvrtTms
    pf_modes: tuple[str, ...]  # PFWInjEna / PFWAbsEna where implemented
    ramp: bool  # WRmp
    ramp_ref: bool  # WRmpRef
    wrmp_default: int | None  # WRmp as found: what "no ramp limit" restores

    @property
    def reactive(self) -> bool:
        return self.var_watts or self.var_pct


def _first(*values: float | None) -> float | None:
    return next((v for v in values if v is not None), None)


# ------------------------------------------------------------------ the device


class SunSpecDer:
    """One SunSpec DER device on a bus: its model chain and its points.

    Both halves of a stage (the meter and the EV side) share one, so the chain is walked
    once and a move is noticed by either.
    """

    def __init__(self, bus: ModbusBus, unit_id: int, *, base_address: int | None = None
                 ) -> None:
        self.bus = bus
        self.unit_id = unit_id
        self.base_address = base_address
        self.models: dict[int, int] | None = None  # model id -> address of its ID register
        self.lengths: dict[int, int] = {}  # model id -> its L register
        self.common: dict[str, str] = {}
        self._lock = asyncio.Lock()

    def describe(self) -> str:
        return f"SunSpec DER id {self.unit_id} on {self.bus.name} {self.bus.link.describe()}"

    async def discover(self) -> dict[int, int]:
        """Walk the chain from the marker; the models found (the DER ones required)."""
        async with self._lock:
            if self.models is not None:
                return self.models
            bases = (self.base_address,) if self.base_address is not None else SUNSPEC_BASES
            base = None
            for candidate in bases:
                try:
                    regs = await self.bus.read_registers(self.unit_id, candidate, 2)
                except DeviceRejected:
                    continue
                if regs == SUNSPEC_MARKER:
                    base = candidate
                    break
            if base is None:
                where = ", ".join(str(b) for b in bases)
                raise DeviceRejected(f"device id {self.unit_id}: no SunSpec marker 'SunS' at "
                                     f"{where} (not a SunSpec device, or set base_address)")
            found: dict[int, int] = {}
            addr = base + 2
            for _ in range(MAX_CHAIN):
                model_id, length = await self.bus.read_registers(self.unit_id, addr, 2)
                if model_id == 0xFFFF:
                    break
                need = MIN_LENGTH.get(model_id)
                if need is not None and length < need:
                    raise DeviceRejected(f"device id {self.unit_id}: SunSpec model {model_id} "
                                         f"at {addr} is {length} registers long; at least "
                                         f"{need} expected (an older draft of the model?)")
                if model_id not in found:
                    found[model_id] = addr
                    self.lengths[model_id] = length
                addr += 2 + length
            missing = [m for m in REQUIRED_MODELS if m not in found]
            if missing:
                have = ", ".join(str(m) for m in found) or "none"
                raise DeviceRejected(f"device id {self.unit_id}: SunSpec device without DER "
                                     f"model(s) {', '.join(map(str, missing))} (models "
                                     f"found: {have}); a power stage needs 701, 702 and 704")
            if COMMON in found:
                regs = await self.bus.read_registers(self.unit_id, found[COMMON],
                                                     READ_SPAN[COMMON])
                self.common = {k: _string(regs, at, n) for k, (at, n) in M1.items()}
            log.info("%s: SunSpec models %s", self.describe(),
                     ", ".join(f"{m} at {a}" for m, a in found.items()))
            self.models = found
            return found

    async def points(self, model: int, offsets: dict[str, int]) -> _Points | None:
        """One model's points (None: the device has no such model)."""
        models = await self.discover()
        addr = models.get(model)
        if addr is None:
            return None
        span = READ_SPAN[model]
        if model in self.lengths:  # never past the model's end (704 grew over its drafts)
            span = min(span, 2 + self.lengths[model])
        try:
            regs = await self.bus.read_registers(self.unit_id, addr, span)
        except DeviceRejected:
            self.models = None  # the chain may have moved: walk it again next time
            raise
        if regs[0] != model:
            self.models = None
            raise DeviceRejected(f"device id {self.unit_id}: model {model} is no longer at "
                                 f"{addr} (found {regs[0]}); the chain is walked again")
        return _Points(model, regs, offsets)

    async def measure(self) -> tuple[dict[str, object], int]:
        """Model 701 as MeterReading fields (HAL signs) and the phases of its AC type."""
        p = await self.points(MEASURE, M701)
        assert p is not None  # required by discover
        ac_type = _uint16(p.regs, M701["ACType"])
        phases = PHASES_OF_ACTYPE.get(ac_type if ac_type is not None else 2, 3)
        w = p.value("W", _int16, "W_SF", required=True)
        imported = p.value("TotWhAbs", _uint64, "TotWh_SF", required=True)
        exported = p.value("TotWhInj", _uint64, "TotWh_SF")
        var = p.value("Var", _int16, "Var_SF")
        pf = p.value("PF", _int16, "PF_SF")
        volts = [p.value(f"VL{i}", _uint16, "V_SF") for i in range(1, phases + 1)]
        if all(v is None for v in volts):
            volts = [p.value("LNV", _uint16, "V_SF")] * phases
        amps = [p.value(f"AL{i}", _int16, "A_SF") for i in range(1, phases + 1)]
        if all(a is None for a in amps) and phases == 1:
            amps = [p.value("A", _int16, "A_SF")]
        values: dict[str, object] = {
            "energy_import_wh": round(imported, 3),  # absorbed from the grid: into the EV
            "energy_export_wh": None if exported is None else round(exported, 3),
            "power_w": round(-w, 3),  # SunSpec: generation positive; the HAL: into the EV
            "power_reactive_var": None if var is None else round(-var, 3),
            "power_factor": None if pf is None or abs(pf) > 1 else round(-pf, 4),
            "frequency_hz": p.value("Hz", _uint32, "Hz_SF"),
            "voltage_v": tuple(round(v, 3) for v in volts if v is not None),
            "current_a": tuple(round(abs(a), 3) for a in amps if a is not None),
        }
        return values, phases

    async def ratings(self) -> DerRatings:
        p = await self.points(CAPACITY, M702)
        assert p is not None

        def w(name: str) -> float | None:
            return p.value(name, _uint16, "W_SF")

        def a(name: str) -> float | None:
            return p.value(name, _uint16, "A_SF")

        def va(name: str) -> float | None:
            return p.value(name, _uint16, "VA_SF")

        def var(name: str) -> float | None:
            return p.value(name, _uint16, "Var_SF")

        return DerRatings(w("WMaxRtg"), w("WChaRteMaxRtg"), w("WDisChaRteMaxRtg"),
                          a("AMaxRtg"), w("WMax"), w("WChaRteMax"), w("WDisChaRteMax"),
                          a("AMax"), _first(va("VAMax"), va("VAMaxRtg")),
                          _first(var("VarMaxInj"), var("VarMaxInjRtg")),
                          _first(var("VarMaxAbs"), var("VarMaxAbsRtg")))

    async def storage(self) -> tuple[float | None, float | None, int | None]:
        """Model 713: (SoC %, WHRtg Wh, Sta); all None without the model."""
        p = await self.points(STORAGE, M713)
        if p is None:
            return None, None, None
        soc = p.value("SoC", _uint16, "Pct_SF")
        if soc is not None and not 0 <= soc <= 100:
            raise DeviceRejected(f"SunSpec model 713: SoC {soc:g} % is outside 0..100")
        return soc, p.value("WHRtg", _uint16, "WH_SF"), _uint16(p.regs, M713["Sta"])

    async def controls(self) -> _Points:
        p = await self.points(CONTROLS, M704)
        assert p is not None
        return p

    async def write_setpoint(self, watts: float | None, reversion_s: int) -> float | None:
        """Write a setpoint (HAL sign; None: disable it) and read it back; returns what the
        device holds, in HAL watts (None: disabled)."""
        ctl = await self.controls()
        addr = (self.models or {})[CONTROLS]
        if _uint16(ctl.regs, M704["WSetEna"]) is None:
            raise DeviceRejected("SunSpec model 704: WSetEna is not implemented: the device "
                                 "takes no active power setpoint")
        if watts is None:
            await self.bus.write_register(self.unit_id, addr + M704["WSetEna"], DISABLED)
        else:
            sf = ctl.sf("WSet_SF", required=True)
            assert sf is not None
            raw = int(round(-watts / 10.0 ** sf))  # generation positive on the device
            raw = max(-0x7FFFFFFF, min(0x7FFFFFFF, raw))
            await self.bus.write_registers(
                self.unit_id, addr + M704["WSetMod"],
                [WSETMOD_WATTS, *_int32_regs(raw), *_int32_regs(0)])  # WSet, WSetRvrt 0 W
            if reversion_s > 0:
                await self.bus.write_registers(
                    self.unit_id, addr + M704["WSetEnaRvrt"],
                    [ENABLED, (reversion_s >> 16) & 0xFFFF, reversion_s & 0xFFFF])
            await self.bus.write_register(self.unit_id, addr + M704["WSetEna"], ENABLED)
        back = await self.controls()
        enabled = _uint16(back.regs, M704["WSetEna"])
        if watts is None:
            if enabled != DISABLED:
                raise DeviceRejected(f"SunSpec model 704: WSetEna reads {enabled} after "
                                     "writing DISABLED: the device did not take it")
            return None
        held = _int32(back.regs, M704["WSet"])
        mode = _uint16(back.regs, M704["WSetMod"])
        if enabled != ENABLED or mode != WSETMOD_WATTS or held != raw:
            raise DeviceRejected(f"SunSpec model 704: the setpoint did not take (WSetEna "
                                 f"{enabled}, WSetMod {mode}, WSet {held} after writing "
                                 f"{ENABLED}, {WSETMOD_WATTS}, {raw})")
        return -raw * 10.0 ** sf

    async def control_caps(self) -> ControlCaps:
        """What 704 implements of the reactive and ramp controls (an unimplemented point reads
        its sentinel, a short model lacks it)."""
        ctl = await self.controls()

        def enum(name: str) -> bool:
            return ctl.has(name) and _uint16(ctl.regs, M704[name]) is not None

        def sf(name: str) -> bool:
            try:
                return ctl.sf(name) is not None
            except DeviceRejected:  # out of range: unusable
                return False

        var_watts = (enum("VarSetEna") and enum("VarSetMod") and ctl.has("VarSet")
                     and _int32(ctl.regs, M704["VarSet"]) is not None and sf("VarSet_SF"))
        var_pct = (enum("VarSetEna") and enum("VarSetMod") and ctl.has("VarSetPct")
                   and _int16(ctl.regs, M704["VarSetPct"]) is not None and sf("VarSetPct_SF"))
        wrmp = _uint16(ctl.regs, M704["WRmp"]) if ctl.has("WRmp") else None
        return ControlCaps(
            var_watts=var_watts, var_pct=var_pct, var_pri=enum("VarSetPri"),
            var_reversion=enum("VarSetEnaRvrt") and ctl.has("VarSetRvrtTms"),
            pf_modes=tuple(n for n in ("PFWInjEna", "PFWAbsEna") if enum(n)),
            ramp=wrmp is not None, ramp_ref=enum("WRmpRef"), wrmp_default=wrmp)

    async def write_reactive(self, var: float | None, reversion_s: int, caps: ControlCaps,
                             var_max: tuple[float, float]) -> float | None:
        """Write a reactive power setpoint (DER sign: positive injects; None: disable it) and
        read it back; returns what the device holds in var (None: disabled). ``var_max`` is
        (inject, absorb), the range a VAR_MAX_PCT setting is a percentage of."""
        if not caps.reactive:
            raise DeviceRejected("SunSpec model 704: neither VarSet nor VarSetPct is "
                                 "implemented: the device takes no reactive power setpoint")
        addr = (self.models or {})[CONTROLS]
        if var is None:
            await self.bus.write_register(self.unit_id, addr + M704["VarSetEna"], DISABLED)
            back = await self.controls()
            enabled = _uint16(back.regs, M704["VarSetEna"])
            if enabled != DISABLED:
                raise DeviceRejected(f"SunSpec model 704: VarSetEna reads {enabled} after "
                                     "writing DISABLED: the device did not take it")
            return None
        ctl = await self.controls()
        for name in caps.pf_modes:  # one reactive mode at a time (IEEE 1547 5.3)
            if _uint16(ctl.regs, M704[name]) != DISABLED:
                await self.bus.write_register(self.unit_id, addr + M704[name], DISABLED)
        if caps.var_watts:
            mode, point, sf = VARSETMOD_VARS, "VarSet", ctl.sf("VarSet_SF", required=True)
            assert sf is not None
            raw = max(-0x7FFFFFFF, min(0x7FFFFFFF, int(round(var / 10.0 ** sf))))
            await self.bus.write_register(self.unit_id, addr + M704["VarSetMod"], mode)
            await self.bus.write_registers(self.unit_id, addr + M704["VarSet"],
                                           [*_int32_regs(raw), *_int32_regs(0)])  # Rvrt 0
        else:
            mode, point = VARSETMOD_VAR_MAX_PCT, "VarSetPct"
            sf = ctl.sf("VarSetPct_SF", required=True)
            assert sf is not None
            base = var_max[0] if var >= 0 else var_max[1]
            if base <= 0:
                raise DeviceRejected("SunSpec model 704: a VarSetPct setpoint needs the "
                                     "reactive range of model 702 (VarMaxInj / VarMaxAbs)")
            raw = max(-0x7FFF, min(0x7FFF, int(round(var / base * 100.0 / 10.0 ** sf))))
            await self.bus.write_register(self.unit_id, addr + M704["VarSetMod"], mode)
            await self.bus.write_registers(self.unit_id, addr + M704["VarSetPct"],
                                           [raw & 0xFFFF, 0])  # VarSetPctRvrt 0 %
        if caps.var_pri:
            await self.bus.write_register(self.unit_id, addr + M704["VarSetPri"],
                                          VARSETPRI_REACTIVE)
        if caps.var_reversion and reversion_s > 0:
            await self.bus.write_registers(
                self.unit_id, addr + M704["VarSetEnaRvrt"],
                [ENABLED, (reversion_s >> 16) & 0xFFFF, reversion_s & 0xFFFF])
        await self.bus.write_register(self.unit_id, addr + M704["VarSetEna"], ENABLED)
        back = await self.controls()
        enabled = _uint16(back.regs, M704["VarSetEna"])
        held_mode = _uint16(back.regs, M704["VarSetMod"])
        held = (_int32(back.regs, M704["VarSet"]) if point == "VarSet"
                else _int16(back.regs, M704["VarSetPct"]))
        if enabled != ENABLED or held_mode != mode or held != raw:
            raise DeviceRejected(f"SunSpec model 704: the reactive setpoint did not take "
                                 f"(VarSetEna {enabled}, VarSetMod {held_mode}, {point} {held} "
                                 f"after writing {ENABLED}, {mode}, {raw})")
        if point == "VarSet":
            return raw * 10.0 ** sf
        return raw * 10.0 ** sf / 100.0 * (var_max[0] if raw >= 0 else var_max[1])

    async def write_ramp(self, percent_per_s: int, caps: ControlCaps) -> int:
        """Write WRmp (whole % of WMax per second) and read it back."""
        if not caps.ramp:
            raise DeviceRejected("SunSpec model 704: WRmp is not implemented: the device "
                                 "takes no ramp rate")
        addr = (self.models or {})[CONTROLS]
        if caps.ramp_ref:
            await self.bus.write_register(self.unit_id, addr + M704["WRmpRef"], WRMPREF_W_MAX)
        await self.bus.write_register(self.unit_id, addr + M704["WRmp"], percent_per_s)
        back = await self.controls()
        held = _uint16(back.regs, M704["WRmp"])
        if held != percent_per_s:
            raise DeviceRejected(f"SunSpec model 704: WRmp reads {held} after writing "
                                 f"{percent_per_s}: the device did not take the ramp rate")
        return percent_per_s


# ------------------------------------------------------------------ the HAL's two faces


class SunSpecDerMeter(_ModbusMeterBase):
    """The EVSE's meter from model 701: signed power, import and export registers."""

    kind_name = "sunspec_der"

    def __init__(self, evse_id: int, der: SunSpecDer, *, sink: EventSink,
                 required: bool = True) -> None:
        super().__init__(evse_id, der.bus, der.unit_id, sink=sink, phases=3,
                         required=required)
        self.der = der
        self._measures: frozenset[str] = frozenset({
            "energy_import", "energy_export", "power", "current", "voltage", "frequency",
            "power_reactive", "power_factor"})
        self._known = False

    @property
    def measures(self) -> frozenset[str]:
        return self._measures

    async def _read(self) -> MeterReading:
        values, phases = await self.der.measure()
        self._phases = phases
        if not self._known:  # what this device implements, from its first reading on
            names = {"energy_import_wh": "energy_import", "energy_export_wh": "energy_export",
                     "power_w": "power", "current_a": "current", "voltage_v": "voltage",
                     "frequency_hz": "frequency", "power_reactive_var": "power_reactive",
                     "power_factor": "power_factor"}
            self._measures = frozenset(n for k, n in names.items()
                                       if values.get(k) not in (None, ()))
            self._known = True
        kwargs = {k: v for k, v in values.items() if v is not None}
        kwargs.setdefault("energy_export_wh", 0.0)
        return MeterReading(**kwargs)  # type: ignore[arg-type]


class SunSpecDerStage(EvConnection, DeviceDriver):
    """The EV side of a bidirectional SunSpec DER stage: the pilot from ``inner`` (the EVSE's
    board or direct pilot), the setpoint, limits, modes and battery from the device."""

    def __init__(self, evse_id: int, der: SunSpecDer, inner: EvConnection, *,
                 sink: EventSink, mode: str = "DC_BPT", reversion_s: int = 30,
                 poll_interval_s: float = 1.0, required: bool = True) -> None:
        if mode not in MODES:
            raise ValueError(f"mode {mode!r}: expected one of {', '.join(MODES)}")
        self.evse_id = evse_id
        self.der = der
        self.inner = inner
        self.sink = sink
        self.mode = EnergyTransferMode(mode)
        self.reversion_s = reversion_s
        self.poll_interval_s = poll_interval_s
        self.required = required
        self.label = f"evse {evse_id} power stage ({der.describe()})"
        self._health = Health(sink, evse_id, FaultKind.INTERNAL, self.label)
        self._ratings: DerRatings | None = None
        self._storage: tuple[float | None, float | None, int | None] = (None, None, None)
        self._setpoint: float | None = None  # what the device holds (HAL W)
        self._wanted: float | None = None  # what the core asked for
        self._written_at: float | None = None  # loop time of the last write
        self._caps: ControlCaps | None = None  # 704's reactive / ramp points, read at open
        self._var: float | None = None  # the reactive setpoint the device holds (DER sign)
        self._var_wanted: float | None = None
        self._var_written_at: float | None = None
        self._ramps: tuple[float | None, float | None] = (None, None)  # what the core asked
        self._stop = asyncio.Event()

    # ------------------------------------------------------------------ the pilot (inner)

    def pilot_state(self) -> PilotState:
        return self.inner.pilot_state()

    async def set_current_limit(self, amps: float) -> None:
        await self.inner.set_current_limit(amps)

    @property
    def current_limit(self) -> float:
        return self.inner.current_limit

    @property
    def supports_phase_switch(self) -> bool:
        return self.inner.supports_phase_switch

    async def set_phases(self, n: int) -> None:
        await self.inner.set_phases(n)

    @property
    def phases_in_use(self) -> int | None:
        return self.inner.phases_in_use

    @property
    def plugged_connector(self) -> int | None:
        return self.inner.plugged_connector

    @property
    def supports_digital_communication(self) -> bool:
        return self.inner.supports_digital_communication

    async def set_digital_communication(self, on: bool) -> None:
        await self.inner.set_digital_communication(on)

    # ------------------------------------------------------------------ the stage

    @property
    def supports_setpoint(self) -> bool:
        return True

    @property
    def power_setpoint(self) -> float | None:
        return self._setpoint

    async def set_power_setpoint(self, watts: float | None) -> None:
        if watts is not None:
            limits = self.stage_limits
            if limits is not None:  # a wish, not a bypass: held to the rating here too
                watts = max(-limits.max_discharge_w, min(limits.max_charge_w, float(watts)))
        self._wanted = watts
        await self._write(watts, announce=False)

    async def _write(self, watts: float | None, *, announce: bool) -> None:
        try:
            held = await self.der.write_setpoint(watts, self.reversion_s)
        except DriverError as exc:
            self._health.failed(str(exc), announce=announce)
            if announce:
                return
            raise HalError(FaultKind.INTERNAL, f"evse {self.evse_id} power stage: {exc}"
                           ) from exc
        self._setpoint = held
        self._written_at = asyncio.get_running_loop().time()
        self._health.recovered()

    def _connected(self) -> bool:
        try:
            return self.inner.pilot_state().connected
        except Exception:  # noqa: BLE001 - a pilot we cannot read is no EV
            return False

    @property
    def energy_transfer_modes(self) -> frozenset[EnergyTransferMode]:
        if not self._connected():
            return frozenset()
        plain = EnergyTransferMode.DC if self.mode.dc else EnergyTransferMode.AC_THREE_PHASE
        if self._health.faulted or self._storage[2] == STORAGE_ERROR:
            return frozenset({plain})  # a stage in trouble never discharges
        return frozenset({plain, self.mode})

    @property
    def stage_limits(self) -> PowerLimits | None:
        r = self._ratings
        if r is None:
            return None
        rating = _first(r.w_max, r.w_max_rtg)
        charge = _first(r.w_cha_max_rtg, rating) or 0.0
        discharge = _first(r.w_discha_max_rtg, rating) or 0.0
        if rating is not None:
            charge, discharge = min(charge, rating), min(discharge, rating)
        amps = _first(r.a_max, r.a_max_rtg)
        return PowerLimits(max_charge_w=charge, max_discharge_w=discharge,
                           max_charge_a=amps, max_discharge_a=amps)

    @property
    def ev_limits(self) -> PowerLimits | None:
        r, stage = self._ratings, self.stage_limits
        if r is None or stage is None or not self._connected():
            return None
        return PowerLimits(max_charge_w=_first(r.w_cha_max, stage.max_charge_w) or 0.0,
                           max_discharge_w=_first(r.w_discha_max, stage.max_discharge_w) or 0.0)

    @property
    def energy_state(self) -> EvEnergyState | None:
        soc, capacity, _ = self._storage
        if soc is None or not self._connected():
            return None
        return EvEnergyState(soc_percent=soc, capacity_wh=capacity)

    # ------------------------------------------------------------------ reactive power, ramps

    @property
    def supports_reactive(self) -> bool:
        return self._caps is not None and self._caps.reactive \
            and self.reactive_limits is not None

    @property
    def reactive_limits(self) -> ReactiveLimits | None:
        """From model 702: the VA rating (the larger active rating where the device states
        none) and the var range each way; None when the device states no var range."""
        r = self._ratings
        if r is None or self._caps is None or not self._caps.reactive:
            return None
        if r.var_inject_max is None and r.var_absorb_max is None:
            return None
        va = _first(r.va_max, r.w_max, r.w_max_rtg)
        if va is None:
            return None
        inject = min(r.var_inject_max if r.var_inject_max is not None else 0.0, va)
        absorb = min(r.var_absorb_max if r.var_absorb_max is not None else 0.0, va)
        return ReactiveLimits(max_va=va, max_inject_var=inject, max_absorb_var=absorb)

    def _var_room(self, var: float) -> float:
        """``var`` held within the range and what the active setpoint leaves of the VA
        rating (the core leaves room itself: a last resort)."""
        limits = self.reactive_limits
        if limits is None:
            return var
        var = max(-limits.max_absorb_var, min(limits.max_inject_var, var))
        p = self._setpoint or 0.0
        room = math.sqrt(max(0.0, limits.max_va ** 2 - p ** 2))
        return max(-room, min(room, var))

    async def set_reactive_setpoint(self, var: float | None) -> None:
        if self._caps is None or not self._caps.reactive:
            raise NotImplementedError(f"{self.label}: model 704 has no reactive power setpoint")
        if var is not None and not math.isfinite(var):
            raise HalError(FaultKind.INTERNAL, f"evse {self.evse_id} power stage: reactive "
                                               f"setpoint {var!r} is not a number of var")
        wanted = None if var is None else self._var_room(float(var))
        self._var_wanted = wanted
        await self._write_var(wanted, announce=False)

    async def _write_var(self, var: float | None, *, announce: bool) -> None:
        assert self._caps is not None
        limits = self.reactive_limits
        span = (limits.max_inject_var, limits.max_absorb_var) if limits else (0.0, 0.0)
        try:
            held = await self.der.write_reactive(var, self.reversion_s, self._caps, span)
        except DriverError as exc:
            self._health.failed(str(exc), announce=announce)
            if announce:
                return
            raise HalError(FaultKind.INTERNAL, f"evse {self.evse_id} power stage: {exc}"
                           ) from exc
        self._var = held
        self._var_written_at = asyncio.get_running_loop().time()
        self._health.recovered()

    @property
    def reactive_setpoint(self) -> float | None:
        return self._var

    @property
    def supports_ramp_rate(self) -> bool:
        return self._caps is not None and self._caps.ramp

    async def set_ramp_rates(self, normal_w_per_s: float | None,
                             soft_start_w_per_s: float | None = None) -> None:
        """WRmp in whole % of WMax per second (at least 1: 0 would hold the power where it
        is); None restores the device's own WRmp. 704 has no soft-start rate: it is
        remembered, not applied (the normal rate holds from standstill too)."""
        caps = self._caps
        if caps is None or not caps.ramp:
            raise NotImplementedError(f"{self.label}: model 704 has no WRmp")
        for name, rate in (("normal", normal_w_per_s), ("soft-start", soft_start_w_per_s)):
            if rate is not None and not (math.isfinite(rate) and rate > 0):
                raise HalError(FaultKind.INTERNAL, f"evse {self.evse_id} power stage: {name} "
                                                   f"ramp rate {rate!r} is not a number of "
                                                   "W/s > 0")
        if normal_w_per_s is None:
            percent = caps.wrmp_default
        else:
            r = self._ratings
            w_max = _first(r.w_max, r.w_max_rtg) if r is not None else None
            if not w_max:
                raise HalError(FaultKind.INTERNAL, f"evse {self.evse_id} power stage: a ramp "
                                                   "rate needs WMax (model 702)")
            percent = max(1, min(0xFFFE, int(round(normal_w_per_s / w_max * 100.0))))
        if percent is not None:
            try:
                await self.der.write_ramp(percent, caps)
            except DriverError as exc:
                self._health.failed(str(exc), announce=False)
                raise HalError(FaultKind.INTERNAL, f"evse {self.evse_id} power stage: {exc}"
                               ) from exc
        self._ramps = (normal_w_per_s, soft_start_w_per_s)

    @property
    def ramp_rates(self) -> tuple[float | None, float | None]:
        return self._ramps

    @property
    def measures(self) -> frozenset[str]:
        has_storage = self.der.models is None or STORAGE in self.der.models
        return frozenset({"soc"}) if has_storage else frozenset()

    @property
    def soc_percent(self) -> float | None:
        state = self.energy_state
        return state.soc_percent if state is not None else None

    # ------------------------------------------------------------------ life cycle

    async def refresh(self) -> None:
        """Read the ratings and the battery; tell the core when they changed."""
        ratings = await self.der.ratings()
        storage = await self.der.storage()
        changed = (ratings, storage) != (self._ratings, self._storage)
        self._ratings, self._storage = ratings, storage
        if changed:
            self.sink.emit(EvChanged(self.evse_id))

    async def open(self) -> None:
        try:
            await self.refresh()
            await self._write(None, announce=True)  # no setpoint left from a previous run
            self._caps = await self.der.control_caps()
            if self._caps.reactive:
                await self._write_var(None, announce=True)  # nor a reactive one
        except DriverError as exc:
            self._health.failed(str(exc))

    async def poll_once(self) -> None:
        """One round of the background work: the limits and battery, and the setpoint
        refreshed before its reversion timer runs out."""
        try:
            await self.refresh()
        except DriverError as exc:
            self._health.failed(str(exc))
            return
        now = asyncio.get_running_loop().time()

        def due(at: float | None) -> bool:
            return self.reversion_s > 0 and (at is None or now - at >= self.reversion_s / 3)

        if self._caps is None:  # open() could not read them: the device was away
            try:
                self._caps = await self.der.control_caps()
            except DriverError as exc:
                self._health.failed(str(exc))
                return
        faulted = self._health.faulted  # after a fault, both setpoints are written again
        if faulted or (self._wanted is not None and due(self._written_at)):
            await self._write(self._wanted, announce=True)
        if self._caps.reactive and (faulted or (self._var_wanted is not None
                                                and due(self._var_written_at))):
            await self._write_var(self._var_wanted, announce=True)

    def background(self) -> Callable[[], Awaitable[None]]:
        async def loop() -> None:
            while not self._stop.is_set():
                await self.poll_once()
                if await sleep_or_stop(self._stop, self.poll_interval_s):
                    return

        return loop

    async def close(self) -> None:
        self._stop.set()
        self._wanted = self._var_wanted = None
        try:
            await asyncio.wait_for(self.der.write_setpoint(None, 0), timeout=2.0)
            if self._caps is not None and self._caps.reactive:
                await asyncio.wait_for(self.der.write_reactive(None, 0, self._caps, (0, 0)),
                                       timeout=2.0)
        except Exception:  # noqa: BLE001 - closing never raises; the reversion timer remains
            log.warning("%s: could not disable the setpoint on close (the device reverts "
                        "to 0 W after %d s)", self.label, self.reversion_s)

    async def probe(self) -> ProbeResult:
        try:
            models = await self.der.discover()
            await self.refresh()
        except DriverError as exc:
            return ProbeResult(self.label, False, str(exc), self.required)
        c = self.der.common
        who = " ".join(v for v in (c.get("Mn"), c.get("Md")) if v) or "SunSpec DER"
        limits = self.stage_limits
        soc = self._storage[0]
        detail = (f"{who}" + (f" SN {c['SN']}" if c.get("SN") else "")
                  + (f" version {c['Vr']}" if c.get("Vr") else "")
                  + f", models {', '.join(str(m) for m in sorted(models))}")
        if limits is not None:
            detail += (f", charge {limits.max_charge_w:.0f} W, discharge "
                       f"{limits.max_discharge_w:.0f} W")
        if soc is not None:
            detail += f", storage SoC {soc:g} %"
        return ProbeResult(self.label, True, detail, self.required)


__all__ = ["SunSpecDer", "SunSpecDerMeter", "SunSpecDerStage"]
