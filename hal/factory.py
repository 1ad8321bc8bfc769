"""From the ``hal:`` section of the YAML config to a running :class:`hal.interfaces.Hal`.

Two steps on purpose: :func:`parse_hal_config` validates everything up front (so a typo in
a pin number is reported with its key path when the agent starts, not when the first EV
plugs in), and :func:`build_hal` constructs drivers without touching hardware (so
``cp-agent doctor`` can build the station and then probe each device on its own).

The hardware half lives in :mod:`hal.hardware_factory` and is imported only for
``driver: hardware``: the drivers and their libraries (gpiozero, pymodbus, smbus2, pyserial)
cost an agent on the mock HAL (the demo, CI, every swarm station) 3 MB and 0.1 s of start-up.

See docs/hardware.md for the shape of the section, and the bench-rig block at the end of
config.example.yaml for a complete bench rig.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hal.interfaces import Hal
from hal.mock import MockHal

if TYPE_CHECKING:
    from hal.hardware_factory import HardwareConfig


class HalConfigError(ValueError):
    """A bad ``hal:`` section; the message starts with the key path of the culprit."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path



@dataclass(frozen=True)
class MockConfig:
    phases: int = 3
    max_current_a: float = 32.0
    ev_max_current_a: float = 16.0



@dataclass(frozen=True)
class HalConfig:
    driver: str  # mock | hardware
    evse_ids: tuple[int, ...]
    mock: MockConfig | None = None
    hardware: HardwareConfig | None = None
    path: str = "hal"



# ============================================================== validation helpers

_REQUIRED: Any = object()


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


Conv = Callable[[Any, str], Any]


class _Map:
    """A YAML mapping being read: typed lookups with key paths, unknown keys rejected."""

    def __init__(self, raw: Any, path: str, allowed: Iterable[str]) -> None:
        if raw is None:
            raise HalConfigError(path, "missing; expected a mapping")
        if not isinstance(raw, dict):
            raise HalConfigError(path, f"{_show(raw)} is not allowed; expected a mapping")
        self.raw = raw
        self.path = path
        self.allowed = tuple(allowed)
        for key in raw:
            if key not in self.allowed:
                raise HalConfigError(f"{path}.{key}", "unknown key; allowed here: "
                                                      + ", ".join(self.allowed))

    def at(self, key: str) -> str:
        return f"{self.path}.{key}"

    def has(self, key: str) -> bool:
        return self.raw.get(key) is not None

    def get(self, key: str, conv: Conv, default: Any = _REQUIRED, what: str = "") -> Any:
        value = self.raw.get(key)
        if value is None:
            if default is _REQUIRED:
                hint = f"; expected {what}" if what else ""
                raise HalConfigError(self.at(key), f"missing{hint}")
            return default
        return conv(value, self.at(key))


def _bad(path: str, value: Any, expected: str) -> HalConfigError:
    return HalConfigError(path, f"{_show(value)} is not allowed; expected {expected}")


def _int(lo: int, hi: int) -> Conv:
    def conv(v: Any, path: str) -> int:
        if isinstance(v, str):
            try:
                v2 = int(v, 0)
            except ValueError:
                raise _bad(path, v, f"an integer {lo}..{hi}") from None
        elif isinstance(v, int) and not isinstance(v, bool):
            v2 = v
        else:
            raise _bad(path, v, f"an integer {lo}..{hi}")
        if not lo <= v2 <= hi:
            raise _bad(path, v, f"an integer {lo}..{hi}")
        return v2
    return conv


def _num(lo: float, hi: float, *, lo_open: bool = False) -> Conv:
    expected = f"a number {'>' if lo_open else '>='} {lo:g} and <= {hi:g}"

    def conv(v: Any, path: str) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise _bad(path, v, expected)
        if v > hi or v < lo or (lo_open and v == lo):
            raise _bad(path, v, expected)
        return float(v)
    return conv


def _nonzero(v: Any, path: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or v == 0:
        raise _bad(path, v, "a non-zero number")
    return float(v)


def _real(v: Any, path: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise _bad(path, v, "a number")
    return float(v)


def _bool(v: Any, path: str) -> bool:
    if not isinstance(v, bool):
        raise _bad(path, v, "true or false")
    return v


def _choice(*options: Any) -> Conv:
    def conv(v: Any, path: str) -> Any:
        if v not in options:
            raise _bad(path, v, "one of " + ", ".join(str(o) for o in options))
        return v
    return conv


def _text(v: Any, path: str) -> str:
    if not isinstance(v, str) or not v.strip():
        raise _bad(path, v, "a non-empty string")
    return v



# ============================================================== parsing

def parse_hal_config(raw: dict, evse_ids: list[int], path: str = "hal") -> HalConfig:
    """Validate the ``hal:`` mapping; raise :class:`HalConfigError` naming the key path."""
    if raw is None:
        raw = {"driver": "mock"}
    if not isinstance(raw, dict):
        raise _bad(path, raw, "a mapping")
    driver = raw.get("driver")
    if driver is None:
        raise HalConfigError(f"{path}.driver", "missing; expected mock or hardware")
    _choice("mock", "hardware")(driver, f"{path}.driver")
    ids = tuple(evse_ids)
    if not ids:
        raise HalConfigError(path, "the station declares no EVSEs")
    if driver == "mock":
        m = _Map(raw, path, ("driver", "phases", "max_current_a", "ev_max_current_a"))
        if list(ids) != list(range(1, len(ids) + 1)):
            raise HalConfigError(f"{path}.driver", f"mock numbers EVSEs 1..{len(ids)}, "
                                                   f"but the station declares {list(ids)}")
        mock = MockConfig(
            phases=m.get("phases", _choice(1, 2, 3), 3),
            max_current_a=m.get("max_current_a", _num(6, 80), 32.0),
            ev_max_current_a=m.get("ev_max_current_a", _num(0, 80, lo_open=True), 16.0),
        )
        return HalConfig("mock", ids, mock=mock, path=path)
    from hal.hardware_factory import parse_hardware

    return parse_hardware(raw, ids, path)


def build_hal(cfg: HalConfig, monotonic: Callable[[], float] = time.monotonic, *,
              pin_factory: Any = None, i2c_opener: Any = None, evdev_opener: Any = None) -> Hal:
    """Construct the station's HAL without touching hardware.

    The keyword-only arguments replace the real libraries' entry points (a gpiozero
    ``MockFactory``, a fake ``SMBus``, a fake evdev device) so that tests and simulations run
    the real driver code.
    """
    if cfg.driver == "mock":
        mock = cfg.mock or MockConfig()
        return MockHal(evse_count=len(cfg.evse_ids), phases=mock.phases,
                       max_current_a=mock.max_current_a,
                       ev_max_current_a=mock.ev_max_current_a, monotonic=monotonic)
    from hal.hardware_factory import build_hardware

    return build_hardware(cfg, monotonic, pin_factory=pin_factory, i2c_opener=i2c_opener,
                          evdev_opener=evdev_opener)
