"""From the ``hal:`` section of the YAML config to a running :class:`hal.interfaces.Hal`.

Two steps on purpose: :func:`parse_hal_config` validates everything up front (so a typo in
a pin number is reported with its key path when the agent starts, not when the first EV
plugs in), and :func:`build_hal` constructs drivers without touching hardware (so
``cp-agent doctor`` can build the station and then probe each device on its own).

The hardware half lives in :mod:`hal.hardware_factory` and is imported only for
``driver: hardware``: the drivers and their libraries (gpiozero, pymodbus, smbus2, pyserial)
cost an agent on the mock HAL (the demo, CI, every swarm station) 3 MB and 0.1 s of start-up.
The validation helpers both halves share (typed lookups with key paths, unknown-key errors)
live in :mod:`hal.config_kit`, which loads nothing else.

See docs/hardware.md for the shape of the section, and the bench-rig block at the end of
config.example.yaml for a complete bench rig.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hal.config_kit import ConfigMap, HalConfigError, bad, choice, number, yaml_repr
from hal.display_config import DEFAULT_MOCK_SIZE, DisplayConfig, parse_display
from hal.interfaces import Hal, PowerMeter
from hal.mock import MockHal

if TYPE_CHECKING:
    from hal.hardware_factory import HardwareConfig
    from hal.iso15118.hlc_config import Iso15118Config
    from hal.mock_v2x import V2xParams  # loaded only where hal.v2x asks for it

__all__ = ["GridMeterConfig", "HalConfig", "HalConfigError", "MockConfig", "build_grid_meter",
           "build_hal", "parse_grid_meter", "parse_hal_config"]


@dataclass(frozen=True)
class MockConfig:
    phases: int = 3
    max_current_a: float = 32.0
    ev_max_current_a: float = 16.0
    display: DisplayConfig | None = DisplayConfig("mock", *DEFAULT_MOCK_SIZE)
    # Where the simulated world (EVs plugged, meter registers) outlives the agent process, as
    # real EVs and meters outlive a restart of their controller (power-cut benches and tests).
    world_file: str | None = None
    # The EVSEs with a bidirectional EV and power stage (hal/mock_v2x.py), with their EV.
    v2x: tuple[tuple[int, V2xParams], ...] = ()



@dataclass(frozen=True)
class HalConfig:
    driver: str  # mock | hardware
    evse_ids: tuple[int, ...]
    mock: MockConfig | None = None
    hardware: HardwareConfig | None = None
    path: str = "hal"
    # ISO 15118 high-level communication (hal/iso15118/hlc_config.py), on either driver.
    iso15118: Iso15118Config | None = None



# ============================================================== parsing

def parse_hal_config(raw: dict, evse_ids: list[int], path: str = "hal") -> HalConfig:
    """Validate the ``hal:`` mapping; raise :class:`HalConfigError` naming the key path."""
    if raw is None:
        raw = {"driver": "mock"}
    if not isinstance(raw, dict):
        raise bad(path, raw, "a mapping")
    driver = raw.get("driver")
    if driver is None:
        raise HalConfigError(f"{path}.driver", "missing; expected mock or hardware")
    choice("mock", "hardware")(driver, f"{path}.driver")
    ids = tuple(evse_ids)
    if not ids:
        raise HalConfigError(path, "the station declares no EVSEs")
    iso15118 = None
    if "iso15118" in raw:  # the same on both drivers: read here, out of their sections
        from hal.iso15118.hlc_config import parse_iso15118

        iso15118 = parse_iso15118(raw["iso15118"], ids, mock=driver == "mock",
                                  path=f"{path}.iso15118")
        raw = {k: v for k, v in raw.items() if k != "iso15118"}
    if driver == "mock":
        m = ConfigMap(raw, path, ("driver", "phases", "max_current_a", "ev_max_current_a",
                                  "display", "world_file", "v2x"))
        if list(ids) != list(range(1, len(ids) + 1)):
            raise HalConfigError(f"{path}.driver", f"mock numbers EVSEs 1..{len(ids)}, "
                                                   f"but the station declares {list(ids)}")
        mock = MockConfig(
            phases=m.get("phases", choice(1, 2, 3), 3),
            max_current_a=m.get("max_current_a", number(6, 80), 32.0),
            ev_max_current_a=m.get("ev_max_current_a", number(0, 80, lo_open=True), 16.0),
            display=parse_display(raw.get("display"), m.at("display"), "mock"),
            world_file=m.get("world_file", _absolute_path, None),
            v2x=_parse_v2x(raw.get("v2x"), m.at("v2x"), ids),
        )
        return HalConfig("mock", ids, mock=mock, path=path, iso15118=iso15118)
    from hal.hardware_factory import parse_hardware

    return HalConfig("hardware", ids, hardware=parse_hardware(raw, ids, path), path=path,
                     iso15118=iso15118)


def _parse_v2x(raw: Any, path: str, ids: tuple[int, ...]) -> tuple[tuple[int, V2xParams], ...]:
    """``hal.v2x`` of the mock (hal/mock_v2x.py), which is imported only when the section
    asks for a bidirectional EV: a charge-only mock station never loads it."""
    if raw is None or raw is False:
        return ()
    from hal.mock_v2x import parse_v2x

    return parse_v2x(raw, path, ids)


def _absolute_path(v: Any, path: str) -> str:
    if not isinstance(v, str) or not os.path.isabs(v):
        raise bad(path, v, "an absolute file path (e.g. /var/lib/cp-agent/mock-world.json)")
    return v


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
                       ev_max_current_a=mock.ev_max_current_a, monotonic=monotonic,
                       world_file=mock.world_file, v2x=dict(mock.v2x),
                       display=(mock.display.columns, mock.display.rows) if mock.display
                       else None)
    from hal.hardware_factory import build_hardware

    return build_hardware(cfg, monotonic, pin_factory=pin_factory, i2c_opener=i2c_opener,
                          evdev_opener=evdev_opener)


# ============================================================== the site's grid meter

@dataclass(frozen=True)
class GridMeterConfig:
    """``site.grid_meter``: on the mock HAL ``{type: mock}`` (the simulated connection: the
    mock's house load plus its EVSEs), on hardware any meter the HAL supports."""

    type: str
    meter: Any = None  # hal.hardware_factory.MeterConfig on driver: hardware
    path: str = "site.grid_meter"


def parse_grid_meter(raw: Any, hal_cfg: HalConfig, hal_raw: dict | None,
                     path: str = "site.grid_meter") -> GridMeterConfig:
    """Validate a grid meter declaration against the HAL it is part of."""
    if not isinstance(raw, dict):
        raise bad(path, raw, "a mapping declaring a meter (type: ...)")
    if hal_cfg.driver == "mock":
        if raw.get("type") != "mock":
            raise HalConfigError(f"{path}.type", f"{yaml_repr(raw.get('type'))} is not allowed; "
                                                 "expected mock (the simulated grid meter of "
                                                 "hal.driver: mock)")
        ConfigMap(raw, path, ("type",))
        return GridMeterConfig("mock", path=path)
    if raw.get("type") == "mock":
        raise HalConfigError(f"{path}.type", "'mock' is not allowed; the simulated grid meter "
                                             "needs hal.driver: mock")
    from hal.hardware_factory import parse_grid_meter as parse_hw

    meter = parse_hw(raw, hal_raw or {}, path)
    return GridMeterConfig(meter.type, meter=meter, path=path)


def build_grid_meter(cfg: GridMeterConfig, hal: Hal, hal_cfg: HalConfig) -> PowerMeter:
    """The grid meter, built on (and registered with) the station's HAL."""
    if cfg.type == "mock":
        if not isinstance(hal, MockHal):
            raise HalConfigError(f"{cfg.path}.type", "mock needs the mock HAL")
        return hal.grid_meter()
    from hal.hardware_factory import attach_grid_meter

    return attach_grid_meter(hal, hal_cfg, cfg.meter)
