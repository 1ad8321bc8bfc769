"""The hardware half of the HAL factory: driver declarations in YAML, checked and built.

Imported by :mod:`hal.factory` only for ``driver: hardware``, so the mock HAL never loads a
driver or a hardware library. The validation helpers both halves use live in
:mod:`hal.config_kit`; this module imports nothing from :mod:`hal.factory` at run time.
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hal.config_kit import (
    ConfigMap,
    Conv,
    HalConfigError,
    address,
    address_choice,
    bad,
    boolean,
    choice,
    integer,
    nonzero,
    number,
    real,
    show,
    text,
)
from hal.display_config import DisplayConfig, parse_display
from hal.drivers.ads1115 import DATA_RATES, FULL_SCALE_V, Ads1115
from hal.drivers.base import DeviceDriver, EventSink, Monotonic
from hal.drivers.contactor import GpioContactor
from hal.drivers.direct_pilot import DirectPilot, PilotChannel
from hal.drivers.evse_boards import EvseWbBoard, PhoenixEvEth
from hal.drivers.gpio import (
    PIN_FACTORIES,
    DigitalIn,
    DigitalOut,
    PinFactoryUnavailable,
    PwmOut,
    load_pin_factory,
)
from hal.drivers.hardware import HardwareHal, I2cBusProbe, ModbusBusProbe
from hal.drivers.i2c import I2cBus, SMBusOpener
from hal.drivers.indicators import LedIndicator
from hal.drivers.keyboard_wedge import DeviceOpener, KeyboardWedgeReader
from hal.drivers.lcd_hd44780 import Hd44780Lcd
from hal.drivers.lock import GpioLock
from hal.drivers.meters import BUILTIN_MAPS, RegisterMapMeter, SunSpecMeter
from hal.drivers.modbus_bus import ModbusBus, RtuLink, TcpLink
from hal.drivers.pn532 import PN532_I2C_ADDRESS, Pn532Reader
from hal.drivers.pwm_sysfs import SysfsPwm
from hal.drivers.rdm6300 import Rdm6300Reader
from hal.drivers.registers import (
    PHASE_QUANTITIES,
    QUANTITIES,
    WORD_ORDERS,
    DataType,
    MeterMap,
    RegisterSpec,
)
from hal.drivers.serial_port import SerialPort
from hal.drivers.sunspec_der import MODES as DER_MODES
from hal.drivers.sunspec_der import SunSpecDer, SunSpecDerMeter, SunSpecDerStage
from hal.drivers.tokens import ReaderDriver
from hal.interfaces import EvConnection, EvseHardware, Hal, PowerMeter, TokenReader

if TYPE_CHECKING:  # the result type only: at run time this module never imports hal.factory
    from hal.factory import HalConfig

# ============================================================== configuration model

PinName = int | str

METER_TYPES = tuple(BUILTIN_MAPS) + ("sunspec", "generic")
BOARD_TYPES = ("evse_wb", "evse_din", "phoenix_ev_eth")
EV_TYPES = BOARD_TYPES + ("direct_pilot",)
READER_TYPES = ("pn532", "rdm6300", "keyboard")
TOKEN_TYPES = ("ISO14443", "ISO15693", "KeyCode", "Local", "MacAddress", "Central", "eMAID")


@dataclass(frozen=True)
class ModbusBusConfig:
    name: str
    type: str  # rtu | tcp
    port: str = ""  # rtu: serial device
    baudrate: int = 9600
    parity: str = "N"
    stopbits: int = 1
    bytesize: int = 8
    host: str = ""  # tcp
    tcp_port: int = 502
    timeout_s: float = 0.5
    retries: int = 2
    request_gap_s: float = 0.0


@dataclass(frozen=True)
class OutputPin:
    pin: PinName
    active_high: bool = True


@dataclass(frozen=True)
class InputPin:
    pin: PinName
    active_high: bool = True
    pull: str = "none"


@dataclass(frozen=True)
class ContactorConfig:
    coil: OutputPin
    feedback: InputPin | None = None
    settle_s: float = 0.3
    required: bool = True


@dataclass(frozen=True)
class MeterConfig:
    type: str
    bus: str
    unit_id: int
    phases: int | None = None
    regmap: MeterMap | None = None  # generic only
    base_address: int | None = None  # sunspec only
    required: bool = True


@dataclass(frozen=True)
class BoardConfig:
    type: str  # evse_wb | evse_din | phoenix_ev_eth
    bus: str
    unit_id: int
    poll_interval_s: float = 0.5
    required: bool = True


@dataclass(frozen=True)
class PwmConfig:
    type: str  # gpio | sysfs
    pin: PinName | None = None
    chip: int = 0
    channel: int = 0
    frequency_hz: float = 1000.0
    active_high: bool = True


@dataclass(frozen=True)
class AdcConfig:
    i2c_bus: int
    address: int = 0x48
    full_scale_v: float = 4.096
    data_rate: int = 860
    high: PilotChannel = PilotChannel(0, 4.0, 0.0)
    low: PilotChannel | None = None


@dataclass(frozen=True)
class DirectPilotConfig:
    pwm: PwmConfig
    adc: AdcConfig
    diode_check: bool = True
    poll_interval_s: float = 0.1
    debounce_samples: int = 2
    required: bool = True
    type: str = "direct_pilot"


@dataclass(frozen=True)
class LockConfig:
    type: str  # motor | solenoid
    lock: OutputPin
    unlock: OutputPin | None = None
    feedback: InputPin | None = None
    pulse_s: float = 0.6
    timeout_s: float = 2.0
    required: bool = True


@dataclass(frozen=True)
class IndicatorConfig:
    available: OutputPin | None = None
    charging: OutputPin | None = None
    fault: OutputPin | None = None
    blink_s: float = 0.5
    required: bool = False


@dataclass(frozen=True)
class DerStageConfig:
    """A bidirectional power stage speaking the SunSpec DER models (hal/drivers/sunspec_der.py)."""

    bus: str
    unit_id: int = 1
    base_address: int | None = None
    mode: str = "DC_BPT"  # the bidirectional transfer mode it offers (DC_BPT | AC_BPT)
    reversion_s: int = 30  # the device falls back to 0 W when not refreshed within this
    poll_interval_s: float = 1.0
    required: bool = True


@dataclass(frozen=True)
class EvseConfig:
    id: int
    contactor: ContactorConfig
    meter: MeterConfig | None  # None: the der_stage's model 701 is the meter
    ev: BoardConfig | DirectPilotConfig
    lock: LockConfig | None = None
    indicator: IndicatorConfig | None = None
    der_stage: DerStageConfig | None = None


@dataclass(frozen=True)
class ReaderConfig:
    type: str
    name: str
    evse: int | None = None
    token_type: str = "ISO14443"
    hold_off_s: float = 2.0
    required: bool = True
    i2c_bus: int = 1  # pn532
    address: int = PN532_I2C_ADDRESS  # pn532
    poll_interval_s: float = 0.25  # pn532
    port: str = ""  # rdm6300
    baudrate: int = 9600  # rdm6300
    device: str = ""  # keyboard
    grab: bool = True  # keyboard


@dataclass(frozen=True)
class HardwareConfig:
    pin_factory: str | None
    modbus: dict[str, ModbusBusConfig]
    evses: tuple[EvseConfig, ...]
    readers: tuple[ReaderConfig, ...] = ()
    display: DisplayConfig | None = None



_PIN_RE = re.compile(r"^(GPIO|BCM|BOARD|J8:|P1:)?\d+$|^[A-Z0-9_:]+$", re.IGNORECASE)


def _pin(v: Any, path: str) -> PinName:
    if isinstance(v, int) and not isinstance(v, bool):
        if not 0 <= v <= 53:
            raise bad(path, v, "a BCM GPIO number 0..53 or a gpiozero pin name like 'GPIO17'")
        return v
    if isinstance(v, str) and _PIN_RE.match(v):
        return v
    raise bad(path, v, "a BCM GPIO number 0..53 or a gpiozero pin name like 'GPIO17'")


def _pin_key(pin: PinName) -> str:
    if isinstance(pin, int):
        return f"GPIO{pin}"
    m = re.match(r"^(?:GPIO|BCM)(\d+)$", pin, re.IGNORECASE)
    return f"GPIO{int(m.group(1))}" if m else pin.upper()


class _Pins:
    """Catches a pin declared twice: two devices driving one GPIO is a wiring bug that
    gpiozero would only report, less clearly, at start-up."""

    def __init__(self) -> None:
        self.owner: dict[str, str] = {}

    def claim(self, pin: PinName, path: str) -> None:
        key = _pin_key(pin)
        if key in self.owner:
            raise HalConfigError(path, f"{show(pin)} is not allowed; {key} is already used "
                                       f"by {self.owner[key]}")
        self.owner[key] = path



def parse_hardware(raw: dict, ids: tuple[int, ...], path: str) -> HardwareConfig:
    """The ``driver: hardware`` part of :func:`hal.factory.parse_hal_config`, which wraps the
    result in its :class:`~hal.factory.HalConfig` (so this module needs nothing from it)."""
    m = ConfigMap(raw, path, ("driver", "gpio", "modbus", "evses", "readers", "display"))
    pin_factory = None
    if m.has("gpio"):
        g = ConfigMap(raw["gpio"], m.at("gpio"), ("pin_factory",))
        pin_factory = g.get("pin_factory", choice("default", *PIN_FACTORIES), None)
    buses = _parse_buses(raw.get("modbus"), m.at("modbus"))
    pins = _Pins()
    evses_raw = raw.get("evses")
    if not isinstance(evses_raw, list) or not evses_raw:
        raise bad(m.at("evses"), evses_raw, "a non-empty list of EVSE declarations")
    evses = []
    for i, e in enumerate(evses_raw):
        evses.append(_parse_evse(e, f"{path}.evses[{i}]", buses, pins))
    seen: dict[int, str] = {}
    for i, e in enumerate(evses):
        p = f"{path}.evses[{i}].id"
        if e.id in seen:
            raise HalConfigError(p, f"{e.id} is not allowed; already declared by {seen[e.id]}")
        if e.id not in ids:
            raise HalConfigError(p, f"{e.id} is not allowed; expected one of the station's "
                                    f"EVSE ids {list(ids)}")
        seen[e.id] = p
    missing = [i for i in ids if i not in seen]
    if missing:
        raise HalConfigError(m.at("evses"), f"no hardware declared for EVSE {missing}; every "
                                            f"EVSE of the station ({list(ids)}) needs an entry")
    readers_raw = raw.get("readers") or []
    if not isinstance(readers_raw, list):
        raise bad(m.at("readers"), readers_raw, "a list of reader declarations")
    readers = []
    names: set[str] = set()
    for i, r in enumerate(readers_raw):
        rc = _parse_reader(r, f"{path}.readers[{i}]", i, ids)
        if rc.name in names:
            raise HalConfigError(f"{path}.readers[{i}].name",
                                 f"{rc.name!r} is not allowed; reader names must be unique")
        names.add(rc.name)
        readers.append(rc)
    display = parse_display(raw.get("display"), m.at("display"), "hardware")
    return HardwareConfig(pin_factory, buses, tuple(evses), tuple(readers), display)



def _parse_buses(raw: Any, path: str) -> dict[str, ModbusBusConfig]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise bad(path, raw, "a mapping of bus name to bus settings")
    buses = {}
    for name, b in raw.items():
        p = f"{path}.{name}"
        if not isinstance(name, str) or not re.match(r"^[A-Za-z][A-Za-z0-9_-]*$", name):
            raise HalConfigError(p, f"{show(name)} is not allowed as a bus name; expected "
                                   "letters, digits, _ or -")
        if not isinstance(b, dict):
            raise bad(p, b, "a mapping with type: rtu or type: tcp")
        kind = b.get("type")
        choice("rtu", "tcp")(kind, f"{p}.type")
        common = ("type", "timeout_s", "retries", "request_gap_s")
        if kind == "rtu":
            m = ConfigMap(b, p, common + ("port", "baudrate", "parity", "stopbits", "bytesize"))
            buses[name] = ModbusBusConfig(
                name, "rtu",
                port=m.get("port", text, what="a serial device such as /dev/ttyUSB0"),
                baudrate=m.get("baudrate", choice(1200, 2400, 4800, 9600, 19200, 38400,
                                                  57600, 115200), 9600),
                parity=m.get("parity", choice("N", "E", "O"), "N"),
                stopbits=m.get("stopbits", choice(1, 2), 1),
                bytesize=m.get("bytesize", choice(7, 8), 8),
                timeout_s=m.get("timeout_s", number(0.01, 30), 0.5),
                retries=m.get("retries", integer(0, 10), 2),
                request_gap_s=m.get("request_gap_s", number(0, 1), 0.0),
            )
        else:
            m = ConfigMap(b, p, common + ("host", "port"))
            buses[name] = ModbusBusConfig(
                name, "tcp",
                host=m.get("host", text, what="a host name or IP address"),
                tcp_port=m.get("port", integer(1, 65535), 502),
                timeout_s=m.get("timeout_s", number(0.01, 30), 1.0),
                retries=m.get("retries", integer(0, 10), 1),
                request_gap_s=m.get("request_gap_s", number(0, 1), 0.0),
            )
    return buses


def _out_pin(raw: Any, path: str, pins: _Pins) -> OutputPin:
    if not isinstance(raw, dict):  # shorthand: just the pin
        pin = _pin(raw, path)
        pins.claim(pin, path)
        return OutputPin(pin)
    m = ConfigMap(raw, path, ("pin", "active_high"))
    pin = m.get("pin", _pin, what="a GPIO pin")
    pins.claim(pin, m.at("pin"))
    return OutputPin(pin, m.get("active_high", boolean, True))


def _in_pin(raw: Any, path: str, pins: _Pins) -> InputPin:
    if not isinstance(raw, dict):
        pin = _pin(raw, path)
        pins.claim(pin, path)
        return InputPin(pin)
    m = ConfigMap(raw, path, ("pin", "active_high", "pull"))
    pin = m.get("pin", _pin, what="a GPIO pin")
    pins.claim(pin, m.at("pin"))
    return InputPin(pin, m.get("active_high", boolean, True),
                    m.get("pull", choice("up", "down", "none"), "none"))


def _unit_id(bus: ModbusBusConfig) -> Conv:
    # The unit id is the device's Modbus address: errors show it in decimal and hex.
    return address(1, 247) if bus.type == "rtu" else address(0, 255)


def _bus_ref(m: ConfigMap, buses: dict[str, ModbusBusConfig]) -> ModbusBusConfig:
    name = m.raw.get("bus")
    if name is None:
        raise HalConfigError(m.at("bus"), "missing; expected the name of a bus under hal.modbus")
    if name not in buses:
        known = ", ".join(buses) or "none declared"
        raise HalConfigError(m.at("bus"), f"{show(name)} is not allowed; expected one of the "
                                          f"buses under hal.modbus ({known})")
    return buses[name]


def _parse_evse(raw: Any, path: str, buses: dict[str, ModbusBusConfig], pins: _Pins) -> EvseConfig:
    # current limits and phase count are the station's evses[] settings; the hal section
    # only says which devices make up the EVSE
    m = ConfigMap(raw, path, ("id", "contactor", "meter", "ev", "lock", "indicator",
                              "der_stage"))
    evse_id = m.get("id", integer(1, 99), what="the EVSE id (1, 2, ...)")
    c = ConfigMap(m.raw.get("contactor"), m.at("contactor"),
                  ("coil", "feedback", "settle_s", "required"))
    if not c.has("coil"):
        raise HalConfigError(c.at("coil"), "missing; expected the coil output pin")
    contactor = ContactorConfig(
        coil=_out_pin(c.raw["coil"], c.at("coil"), pins),
        feedback=_in_pin(c.raw["feedback"], c.at("feedback"), pins) if c.has("feedback") else None,
        settle_s=c.get("settle_s", number(0.01, 5), 0.3),
        required=c.get("required", boolean, True),
    )
    der = _parse_der_stage(m.raw["der_stage"], m.at("der_stage"), buses) \
        if m.has("der_stage") else None
    meter = None if der is not None and not m.has("meter") else \
        _parse_meter(m.raw.get("meter"), m.at("meter"), buses)
    ev = _parse_ev(m.raw.get("ev"), m.at("ev"), buses, pins)
    lock = _parse_lock(m.raw["lock"], m.at("lock"), pins) if m.has("lock") else None
    indicator = None
    if m.has("indicator"):
        i = ConfigMap(m.raw["indicator"], m.at("indicator"),
                      ("available", "charging", "fault", "blink_s", "required"))
        leds = {k: _out_pin(i.raw[k], i.at(k), pins) if i.has(k) else None
                for k in ("available", "charging", "fault")}
        if not any(leds.values()):
            raise HalConfigError(i.path, "declares no LED; expected at least one of available, "
                                         "charging, fault")
        indicator = IndicatorConfig(**leds, blink_s=i.get("blink_s", number(0.05, 5), 0.5),
                                    required=i.get("required", boolean, False))
    return EvseConfig(id=evse_id, contactor=contactor, meter=meter, ev=ev, lock=lock,
                      indicator=indicator, der_stage=der)


def _parse_der_stage(raw: Any, path: str, buses: dict[str, ModbusBusConfig]) -> DerStageConfig:
    if not isinstance(raw, dict):
        raise bad(path, raw, "a mapping with bus (a Modbus bus under hal.modbus), unit_id, ...")
    m = ConfigMap(raw, path, ("bus", "unit_id", "base_address", "mode", "reversion_s",
                              "poll_interval_s", "required"))
    bus = _bus_ref(m, buses)
    cfg = DerStageConfig(
        bus=bus.name,
        unit_id=m.get("unit_id", _unit_id(bus), 1),
        base_address=m.get("base_address", address(0, 65535), None),
        mode=m.get("mode", choice(*DER_MODES), "DC_BPT"),
        reversion_s=m.get("reversion_s", integer(0, 3600), 30),
        poll_interval_s=m.get("poll_interval_s", number(0.1, 60), 1.0),
        required=m.get("required", boolean, True))
    if cfg.reversion_s and cfg.reversion_s < 3 * cfg.poll_interval_s:
        raise HalConfigError(m.at("reversion_s"), f"{cfg.reversion_s} is not allowed; expected "
                             f"at least 3 x poll_interval_s ({3 * cfg.poll_interval_s:g} s), so "
                             "the setpoint is refreshed before the device reverts, or 0 (no "
                             "reversion timer)")
    return cfg


def _parse_meter(raw: Any, path: str, buses: dict[str, ModbusBusConfig]) -> MeterConfig:
    if raw is None:
        raise HalConfigError(path, "missing; every EVSE needs a meter")
    if not isinstance(raw, dict):
        raise bad(path, raw, "a mapping")
    kind = raw.get("type")
    choice(*METER_TYPES)(kind, f"{path}.type")
    keys = ("type", "bus", "unit_id", "phases", "required")
    if kind == "sunspec":
        keys += ("base_address",)
    if kind == "generic":
        keys += ("registers", "defaults", "max_gap", "max_count", "name")
    m = ConfigMap(raw, path, keys)
    bus = _bus_ref(m, buses)
    cfg = MeterConfig(
        type=kind, bus=bus.name,
        unit_id=m.get("unit_id", _unit_id(bus), what="the meter's Modbus device id"),
        phases=m.get("phases", choice(1, 2, 3), None),
        base_address=m.get("base_address", address(0, 65535), None) if kind == "sunspec" else None,
        required=m.get("required", boolean, True),
    )
    if kind == "generic":
        regmap = _parse_register_map(m, cfg.phases or 3)
        cfg = dataclasses.replace(cfg, regmap=regmap)
    return cfg


def _parse_register_map(m: ConfigMap, phases: int) -> MeterMap:
    defaults: dict[str, Any] = {"function": 3, "type": "float32", "scale": 1.0,
                                "word_order": "big"}
    if m.has("defaults"):
        d = ConfigMap(m.raw["defaults"], m.at("defaults"),
                      ("function", "type", "scale", "word_order"))
        defaults.update({k: v for k, v in d.raw.items() if v is not None})
    regs_raw = m.raw.get("registers")
    if not isinstance(regs_raw, dict) or not regs_raw:
        raise bad(m.at("registers"), regs_raw,
                  "a mapping of quantity to register, e.g. energy_import_wh: {address: 72}")
    quantities: dict[str, tuple[RegisterSpec, ...]] = {}
    for name, spec in regs_raw.items():
        p = f"{m.at('registers')}.{name}"
        if name not in QUANTITIES:
            raise HalConfigError(p, "unknown quantity; allowed: " + ", ".join(QUANTITIES))
        items = spec if isinstance(spec, list) else [spec]
        if not items:
            raise bad(p, spec, "a register or a list of registers")
        if name in PHASE_QUANTITIES and len(items) > 3:
            raise bad(p, spec, "at most 3 registers (L1, L2, L3)")
        quantities[name] = tuple(
            _parse_register(item, f"{p}[{j}]" if isinstance(spec, list) else p, defaults)
            for j, item in enumerate(items))
    if "energy_import_wh" not in quantities:
        raise HalConfigError(f"{m.at('registers')}.energy_import_wh",
                             "missing; a meter must at least give the imported energy")
    name = m.get("name", text, "generic")
    max_gap = m.get("max_gap", integer(0, 120), 0)
    max_count = m.get("max_count", integer(1, 125), 125)
    for q, specs in quantities.items():
        for s in specs:
            if s.words > max_count:
                raise HalConfigError(f"{m.at('max_count')}", f"{max_count} is not allowed; "
                                     f"{q} needs {s.words} registers in one read")
    return MeterMap(name, quantities, phases=phases, max_gap=max_gap, max_count=max_count)


def _parse_register(raw: Any, path: str, defaults: dict[str, Any]) -> RegisterSpec:
    if isinstance(raw, int) and not isinstance(raw, bool):
        raw = {"address": raw}
    r = ConfigMap(raw, path, ("address", "function", "type", "scale", "word_order"))
    merged = {**defaults, **{k: v for k, v in r.raw.items() if v is not None}}
    base = r.path
    if merged.get("address") is None:
        raise HalConfigError(f"{base}.address", "missing; expected a register address "
                                                "0..65535 (0-based, as sent on the wire)")
    return RegisterSpec(
        address=address(0, 65535)(merged["address"], f"{base}.address"),
        function=choice(3, 4)(merged["function"], f"{base}.function"),
        dtype=DataType(choice(*[t.value for t in DataType])(merged["type"], f"{base}.type")),
        scale=nonzero(merged["scale"], f"{base}.scale"),
        word_order=choice(*WORD_ORDERS)(merged["word_order"], f"{base}.word_order"),
    )


def _parse_ev(raw: Any, path: str, buses: dict[str, ModbusBusConfig],
              pins: _Pins) -> BoardConfig | DirectPilotConfig:
    if raw is None:
        raise HalConfigError(path, "missing; every EVSE needs an EV side "
                                   "(an EVSE board or a direct pilot)")
    if not isinstance(raw, dict):
        raise bad(path, raw, "a mapping")
    kind = raw.get("type")
    choice(*EV_TYPES)(kind, f"{path}.type")
    if kind in BOARD_TYPES:
        m = ConfigMap(raw, path, ("type", "bus", "unit_id", "poll_interval_s", "required"))
        bus = _bus_ref(m, buses)
        default_id = 180 if kind == "phoenix_ev_eth" else 1
        return BoardConfig(kind, bus.name,
                           unit_id=m.get("unit_id", _unit_id(bus), default_id),
                           poll_interval_s=m.get("poll_interval_s", number(0.05, 10), 0.5),
                           required=m.get("required", boolean, True))
    m = ConfigMap(raw, path, ("type", "pwm", "adc", "diode_check", "poll_interval_s",
                              "debounce_samples", "required"))
    pw = m.raw.get("pwm")
    if not isinstance(pw, dict):
        raise bad(m.at("pwm"), pw,
                  "a mapping with type: gpio (pin) or type: sysfs (chip, channel)")
    pwm_type = pw.get("type", "gpio")
    choice("gpio", "sysfs")(pwm_type, f"{m.at('pwm')}.type")
    if pwm_type == "gpio":
        p = ConfigMap(pw, m.at("pwm"), ("type", "pin", "active_high", "frequency_hz"))
        pin = p.get("pin", _pin, what="the GPIO of the pilot PWM output")
        pins.claim(pin, p.at("pin"))
        pwm = PwmConfig("gpio", pin=pin, active_high=p.get("active_high", boolean, True),
                        frequency_hz=p.get("frequency_hz", number(100, 10000), 1000.0))
    else:
        p = ConfigMap(pw, m.at("pwm"), ("type", "chip", "channel", "active_high", "frequency_hz"))
        pwm = PwmConfig("sysfs", chip=p.get("chip", integer(0, 31), 0),
                        channel=p.get("channel", integer(0, 15), 0),
                        active_high=p.get("active_high", boolean, True),
                        frequency_hz=p.get("frequency_hz", number(100, 10000), 1000.0))
    a = ConfigMap(m.raw.get("adc"), m.at("adc"),
                  ("i2c_bus", "address", "full_scale_v", "data_rate", "high", "low"))
    high = _parse_channel(a.raw.get("high"), a.at("high"), default_scale=4.0)
    if high is None:
        high = PilotChannel(0, 4.0, 0.0)
    low = _parse_channel(a.raw.get("low"), a.at("low"), default_scale=-4.0)
    if low is not None and low.channel == high.channel:
        raise HalConfigError(f"{a.at('low')}.channel", f"{low.channel} is not allowed; the high "
                                                       "channel already uses it")
    adc = AdcConfig(
        i2c_bus=a.get("i2c_bus", integer(0, 99), 1),
        address=a.get("address", address_choice(0x48, 0x49, 0x4A, 0x4B), 0x48),
        full_scale_v=a.get("full_scale_v", choice(*FULL_SCALE_V), 4.096),
        data_rate=a.get("data_rate", choice(*DATA_RATES), 860),
        high=high, low=low)
    diode = m.get("diode_check", boolean, low is not None)
    if diode and low is None:
        raise HalConfigError(m.at("diode_check"), "true is not allowed without adc.low (the "
                                                  "negative peak channel the check reads)")
    return DirectPilotConfig(
        pwm=pwm, adc=adc, diode_check=diode,
        poll_interval_s=m.get("poll_interval_s", number(0.01, 5), 0.1),
        debounce_samples=m.get("debounce_samples", integer(1, 10), 2),
        required=m.get("required", boolean, True))


def _parse_channel(raw: Any, path: str, default_scale: float) -> PilotChannel | None:
    if raw is None:
        return None
    c = ConfigMap(raw, path, ("channel", "scale", "offset"))
    return PilotChannel(c.get("channel", integer(0, 3), what="the ADS1115 input 0..3"),
                        c.get("scale", nonzero, default_scale), c.get("offset", real, 0.0))


def _parse_lock(raw: Any, path: str, pins: _Pins) -> LockConfig:
    if not isinstance(raw, dict):
        raise bad(path, raw, "a mapping with type: motor or type: solenoid")
    kind = raw.get("type")
    choice("motor", "solenoid")(kind, f"{path}.type")
    keys = ("type", "lock_pin", "feedback", "timeout_s", "required")
    keys += ("unlock_pin", "pulse_s") if kind == "motor" else ()
    m = ConfigMap(raw, path, keys)
    if not m.has("lock_pin"):
        raise HalConfigError(m.at("lock_pin"), "missing; expected the lock output pin")
    lock = _out_pin(m.raw["lock_pin"], m.at("lock_pin"), pins)
    unlock = None
    if kind == "motor":
        if not m.has("unlock_pin"):
            raise HalConfigError(m.at("unlock_pin"), "missing; a motor lock needs both directions")
        unlock = _out_pin(m.raw["unlock_pin"], m.at("unlock_pin"), pins)
    return LockConfig(
        kind, lock, unlock,
        feedback=_in_pin(m.raw["feedback"], m.at("feedback"), pins) if m.has("feedback") else None,
        pulse_s=m.get("pulse_s", number(0.05, 5), 0.6) if kind == "motor" else 0.0,
        timeout_s=m.get("timeout_s", number(0.1, 30), 2.0),
        required=m.get("required", boolean, True))


def _parse_reader(raw: Any, path: str, index: int, evse_ids: tuple[int, ...]) -> ReaderConfig:
    if not isinstance(raw, dict):
        raise bad(path, raw, "a mapping with type: " + ", ".join(READER_TYPES))
    kind = raw.get("type")
    choice(*READER_TYPES)(kind, f"{path}.type")
    common = ("type", "name", "evse", "token_type", "hold_off_s", "required")
    specific = {"pn532": ("i2c_bus", "address", "poll_interval_s"),
                "rdm6300": ("port", "baudrate"),
                "keyboard": ("device", "grab")}[kind]
    m = ConfigMap(raw, path, common + specific)
    evse = m.get("evse", choice(*evse_ids), None)
    base = dict(type=kind, name=m.get("name", text, f"{kind}{index}"), evse=evse,
                token_type=m.get("token_type", choice(*TOKEN_TYPES), "ISO14443"),
                hold_off_s=m.get("hold_off_s", number(0, 60), 2.0),
                required=m.get("required", boolean, True))
    if kind == "pn532":
        return ReaderConfig(**base, i2c_bus=m.get("i2c_bus", integer(0, 99), 1),
                            address=m.get("address", address(0x08, 0x77), PN532_I2C_ADDRESS),
                            poll_interval_s=m.get("poll_interval_s", number(0.02, 5), 0.25))
    if kind == "rdm6300":
        return ReaderConfig(**base, port=m.get("port", text, what="a serial device"),
                            baudrate=m.get("baudrate", choice(9600, 19200, 38400, 57600,
                                                              115200), 9600))
    return ReaderConfig(**base, device=m.get("device", text,
                                             what="an input device such as "
                                                  "/dev/input/by-id/...-event-kbd"),
                        grab=m.get("grab", boolean, True))


# ============================================================== building

@dataclass
class _Builder:
    hw: HardwareConfig
    monotonic: Monotonic
    pin_factory: Any
    i2c_opener: SMBusOpener | None
    evdev_opener: DeviceOpener | None
    sink: EventSink = field(default_factory=EventSink)
    modbus: dict[str, ModbusBus] = field(default_factory=dict)
    i2c: dict[int, I2cBus] = field(default_factory=dict)
    required_modbus: set[str] = field(default_factory=set)
    required_i2c: set[int] = field(default_factory=set)

    def bus(self, name: str, required: bool) -> ModbusBus:
        if required:
            self.required_modbus.add(name)
        if name not in self.modbus:
            c = self.hw.modbus[name]
            link = (RtuLink(c.port, c.baudrate, c.parity, c.stopbits, c.bytesize)
                    if c.type == "rtu" else TcpLink(c.host, c.tcp_port))
            self.modbus[name] = ModbusBus(name, link, timeout_s=c.timeout_s, retries=c.retries,
                                          request_gap_s=c.request_gap_s)
        return self.modbus[name]

    def i2c_bus(self, number: int, required: bool) -> I2cBus:
        if required:
            self.required_i2c.add(number)
        if number not in self.i2c:
            self.i2c[number] = I2cBus(f"i2c-{number}", number, opener=self.i2c_opener)
        return self.i2c[number]

    def out(self, p: OutputPin) -> DigitalOut:
        return DigitalOut(p.pin, active_high=p.active_high, pin_factory=self.pin_factory)

    def inp(self, p: InputPin) -> DigitalIn:
        return DigitalIn(p.pin, active_high=p.active_high, pull=p.pull,
                         pin_factory=self.pin_factory)

    def meter(self, evse_id: int, c: MeterConfig) -> PowerMeter:
        bus = self.bus(c.bus, c.required)
        if c.type == "sunspec":
            return SunSpecMeter(evse_id, bus, c.unit_id, sink=self.sink,
                                base_address=c.base_address, required=c.required)
        regmap = c.regmap if c.type == "generic" else BUILTIN_MAPS[c.type]
        assert regmap is not None
        return RegisterMapMeter(evse_id, bus, c.unit_id, regmap, sink=self.sink,
                                phases=c.phases, required=c.required)

    def ev(self, evse_id: int, c: BoardConfig | DirectPilotConfig) -> EvConnection:
        if isinstance(c, BoardConfig):
            bus = self.bus(c.bus, c.required)
            if c.type == "phoenix_ev_eth":
                return PhoenixEvEth(evse_id, bus, c.unit_id, sink=self.sink,
                                    poll_interval_s=c.poll_interval_s, required=c.required)
            return EvseWbBoard(evse_id, bus, c.unit_id, sink=self.sink,
                               poll_interval_s=c.poll_interval_s, required=c.required,
                               model_name=c.type)
        pwm: Any
        if c.pwm.type == "gpio":
            assert c.pwm.pin is not None
            pwm = PwmOut(c.pwm.pin, active_high=c.pwm.active_high,
                         frequency_hz=c.pwm.frequency_hz, pin_factory=self.pin_factory)
        else:
            pwm = SysfsPwm(c.pwm.chip, c.pwm.channel, frequency_hz=c.pwm.frequency_hz,
                           active_high=c.pwm.active_high)
        adc = Ads1115(self.i2c_bus(c.adc.i2c_bus, c.required), c.adc.address,
                      full_scale_v=c.adc.full_scale_v, data_rate=c.adc.data_rate)
        return DirectPilot(evse_id, pwm, adc, sink=self.sink, high=c.adc.high, low=c.adc.low,
                           diode_check=c.diode_check, poll_interval_s=c.poll_interval_s,
                           debounce_samples=c.debounce_samples, required=c.required)

    def reader(self, c: ReaderConfig) -> ReaderDriver:
        common = dict(sink=self.sink, evse_id=c.evse, token_type=c.token_type,
                      hold_off_s=c.hold_off_s, monotonic=self.monotonic, required=c.required)
        if c.type == "pn532":
            return Pn532Reader(c.name, self.i2c_bus(c.i2c_bus, c.required), address=c.address,
                               poll_interval_s=c.poll_interval_s, **common)  # type: ignore[arg-type]
        if c.type == "rdm6300":
            return Rdm6300Reader(c.name, SerialPort(c.port, baudrate=c.baudrate),
                                 **common)  # type: ignore[arg-type]
        return KeyboardWedgeReader(c.name, c.device, grab=c.grab, opener=self.evdev_opener,
                                   **common)  # type: ignore[arg-type]


def build_hardware(cfg: HalConfig, monotonic: Monotonic = time.monotonic, *,
                   pin_factory: Any = None, i2c_opener: SMBusOpener | None = None,
                   evdev_opener: DeviceOpener | None = None) -> Hal:
    """The ``driver: hardware`` part of :func:`hal.factory.build_hal`."""
    hw = cfg.hardware
    if hw is None:
        raise HalConfigError(f"{cfg.path}.driver", "hardware selected but not parsed")
    if pin_factory is None and hw.pin_factory not in (None, "default"):
        try:
            pin_factory = load_pin_factory(hw.pin_factory)
        except Exception as exc:  # reported per pin by the drivers, see PinFactoryUnavailable
            pin_factory = PinFactoryUnavailable(str(exc))
    b = _Builder(hw, monotonic, pin_factory, i2c_opener, evdev_opener)
    evses: dict[int, EvseHardware] = {}
    devices: list[DeviceDriver] = []
    for e in hw.evses:
        cc = e.contactor
        contactor = GpioContactor(e.id, b.out(cc.coil), b.inp(cc.feedback) if cc.feedback else None,
                                  sink=b.sink, settle_s=cc.settle_s, required=cc.required)
        ev = b.ev(e.id, e.ev)
        stage_parts: list[DeviceDriver] = []
        if e.der_stage is not None:  # a SunSpec DER stage wraps the pilot's EV side
            dc = e.der_stage
            der = SunSpecDer(b.bus(dc.bus, dc.required), dc.unit_id,
                             base_address=dc.base_address)
            if isinstance(ev, DeviceDriver):
                stage_parts.append(ev)
            ev = SunSpecDerStage(e.id, der, ev, sink=b.sink, mode=dc.mode,
                                 reversion_s=dc.reversion_s, poll_interval_s=dc.poll_interval_s,
                                 required=dc.required)
            meter = b.meter(e.id, e.meter) if e.meter is not None else \
                SunSpecDerMeter(e.id, der, sink=b.sink, required=dc.required)
        else:
            assert e.meter is not None
            meter = b.meter(e.id, e.meter)
        lock = None
        if e.lock is not None:
            lc = e.lock
            lock = GpioLock(e.id, lock_out=b.out(lc.lock),
                            unlock_out=b.out(lc.unlock) if lc.unlock else None,
                            feedback=b.inp(lc.feedback) if lc.feedback else None,
                            pulse_s=lc.pulse_s, timeout_s=lc.timeout_s, required=lc.required)
        indicator = None
        if e.indicator is not None:
            ic = e.indicator
            indicator = LedIndicator(
                e.id, available=b.out(ic.available) if ic.available else None,
                charging=b.out(ic.charging) if ic.charging else None,
                fault=b.out(ic.fault) if ic.fault else None,
                blink_s=ic.blink_s, required=ic.required)
        evses[e.id] = EvseHardware(e.id, contactor, meter, ev, lock=lock, indicator=indicator,
                                   phases=meter.phases)
        devices.extend(d for d in (contactor, meter, *stage_parts, ev, lock, indicator)
                       if isinstance(d, DeviceDriver))
    readers: list[TokenReader] = [b.reader(r) for r in hw.readers]
    devices.extend(r for r in readers if isinstance(r, DeviceDriver))
    display = None
    if hw.display is not None:
        d = hw.display
        display = Hd44780Lcd(b.i2c_bus(d.bus, d.required), d.address, columns=d.columns,
                             rows=d.rows, backlight=d.backlight, required=d.required)
        devices.append(display)
    bus_probes: list[DeviceDriver] = [
        ModbusBusProbe(bus, name in b.required_modbus) for name, bus in b.modbus.items()]
    bus_probes += [I2cBusProbe(bus, n in b.required_i2c) for n, bus in b.i2c.items()]
    hal = HardwareHal(sink=b.sink, evses=evses, readers=readers, devices=devices,
                      modbus_buses=list(b.modbus.values()), i2c_buses=list(b.i2c.values()),
                      bus_probes=bus_probes)
    hal.display = display
    return hal


# ============================================================== the site's grid meter

def parse_grid_meter(raw: Any, hal_raw: dict, path: str) -> MeterConfig:
    """A meter of the whole connection, declared as an EVSE's meter is (``type``, ``bus``
    naming a bus under ``hal.modbus``, ``unit_id``...)."""
    buses = _parse_buses(hal_raw.get("modbus"), "hal.modbus")
    return _parse_meter(raw, path, buses)


def attach_grid_meter(hal: Hal, cfg: HalConfig, meter_cfg: MeterConfig) -> PowerMeter:
    """Build the grid meter on the HAL's own buses (one RS-485 bus, one owner) and add it to
    the HAL's devices, so that it is opened, probed and closed with them."""
    hw = cfg.hardware
    if not isinstance(hal, HardwareHal) or hw is None:
        raise HalConfigError("site.grid_meter", "a Modbus grid meter needs driver: hardware")
    b = _Builder(hw, time.monotonic, None, None, None, sink=hal.sink)
    b.modbus = {bus.name: bus for bus in hal.modbus_buses}
    meter = b.meter(0, meter_cfg)
    for bus in b.modbus.values():
        if bus not in hal.modbus_buses:  # a bus only the grid meter is on
            hal.modbus_buses.append(bus)
            hal.bus_probes.append(ModbusBusProbe(bus, meter_cfg.required))
    if isinstance(meter, DeviceDriver):
        meter.label = f"site grid meter ({meter_cfg.type}, id {meter_cfg.unit_id} on " \
                      f"{meter_cfg.bus})"
        hal.devices.append(meter)
    return meter
