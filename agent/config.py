"""Station configuration: YAML in, typed and validated objects out.

A charger's configuration is typed in by installers in the field; a typo must stop the agent at
start-up with a message naming the key path, the bad value and what is allowed, not surface as
odd behaviour weeks later.  So every key is declared here, unknown keys are errors, and the
`hal:` section is handed to :mod:`hal.factory`, which validates it the same way.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from agent.ocpp import registry

SUPPORTED_VERSIONS = registry.versions()


class ConfigError(Exception):
    """A configuration problem; the message names the key path, value and what is allowed."""


def _check(cond: bool, path: str, value: Any, allowed: str) -> None:
    if not cond:
        raise ConfigError(f"{path}: {value!r} is not allowed; expected {allowed}")


@dataclass
class StationConfig:
    id: str = "CP001"
    vendor: str = "cp-agent"
    model: str = "cp-agent-mock"
    serial_number: str | None = None
    firmware_version: str | None = None

    def validate(self, path: str) -> None:
        # The identity is a URL path segment (OCPP-J: no ':' for basic auth, printable ASCII).
        ok = 0 < len(self.id) <= 48 and all(c.isalnum() or c in "-_.*" for c in self.id)
        _check(ok, f"{path}.id", self.id, "1-48 characters of letters, digits, '-', '_', '.'")
        _check(0 < len(self.vendor) <= 20, f"{path}.vendor", self.vendor, "1-20 characters")
        _check(0 < len(self.model) <= 20, f"{path}.model", self.model, "1-20 characters")
        if self.serial_number is not None:
            _check(len(self.serial_number) <= 25, f"{path}.serial_number",
                   self.serial_number, "at most 25 characters")


@dataclass
class ReconnectConfig:
    min_backoff_s: float = 1.0
    max_backoff_s: float = 300.0

    def validate(self, path: str) -> None:
        _check(self.min_backoff_s > 0, f"{path}.min_backoff_s", self.min_backoff_s, "> 0")
        _check(self.max_backoff_s >= self.min_backoff_s, f"{path}.max_backoff_s",
               self.max_backoff_s, f">= min_backoff_s ({self.min_backoff_s})")


@dataclass
class OcppConfig:
    url: str = "ws://127.0.0.1:9000/ocpp"
    versions: list[str] = field(default_factory=lambda: ["1.6"])
    password: str | None = None
    security_profile: int = 0
    # PEM file of the CA(s) that signed the CSMS certificate (wss://); None: the system CAs.
    ca_file: str | None = None
    call_timeout_s: float = 30.0
    reconnect: ReconnectConfig = field(default_factory=ReconnectConfig)
    # Initial values of 1.6 configuration keys / 2.0.1 variables, before the CSMS changes them.
    defaults: dict[str, Any] = field(default_factory=dict)

    def validate(self, path: str) -> None:
        parts = urlsplit(self.url)
        _check(parts.scheme in ("ws", "wss") and bool(parts.hostname), f"{path}.url", self.url,
               "a ws:// or wss:// URL with a host (the station id is appended to it)")
        _check(len(self.versions) > 0, f"{path}.versions", self.versions,
               f"a non-empty list of {list(SUPPORTED_VERSIONS)}")
        for i, v in enumerate(self.versions):
            _check(v in SUPPORTED_VERSIONS, f"{path}.versions[{i}]", v,
                   f"one of {list(SUPPORTED_VERSIONS)}"
                   + (" (OCPP 2.1 is not supported yet)" if v == "2.1" else ""))
        _check(len(set(self.versions)) == len(self.versions), f"{path}.versions",
               self.versions, "each version at most once")
        _check(self.security_profile in (0, 1, 2), f"{path}.security_profile",
               self.security_profile,
               "0 (none), 1 (basic auth) or 2 (TLS + basic auth); profile 3 (client "
               "certificates) is not supported yet")
        if self.security_profile == 1:
            _check(parts.scheme == "ws", f"{path}.url", self.url,
                   "a ws:// URL for security profile 1 (use profile 2 for wss://)")
        if self.security_profile >= 1:
            _check(bool(self.password), f"{path}.password", self.password,
                   f"a password (security profile {self.security_profile} uses HTTP basic auth)")
        if self.security_profile >= 2:
            _check(parts.scheme == "wss", f"{path}.url", self.url,
                   f"a wss:// URL (security profile {self.security_profile} requires TLS)")
        if self.password is not None:
            # 1.6 security whitepaper / 2.0.1: 16-40 chars; we accept 1-40 for bench CSMSs.
            _check(0 < len(self.password) <= 40, f"{path}.password", "***",
                   "1-40 characters")
        if self.ca_file is not None:
            _check(os.path.isfile(self.ca_file), f"{path}.ca_file", self.ca_file,
                   "the path of a readable PEM file of CA certificates")
        _check(0 < self.call_timeout_s <= 300, f"{path}.call_timeout_s", self.call_timeout_s,
               "a number of seconds in (0, 300]")
        self.reconnect.validate(f"{path}.reconnect")


@dataclass
class StorageConfig:
    path: str = "/var/lib/cp-agent/state.sqlite3"
    # How often the running meter reading of a transaction is persisted (power-loss meterStop).
    meter_persist_s: float = 10.0

    def validate(self, path: str) -> None:
        _check(bool(self.path), f"{path}.path", self.path, "a file path")
        _check(0.5 <= self.meter_persist_s <= 300, f"{path}.meter_persist_s",
               self.meter_persist_s, "seconds in [0.5, 300]")


@dataclass
class ControlConfig:
    socket: str = "/run/cp-agent/control.sock"

    def validate(self, path: str) -> None:
        _check(0 < len(os.fsencode(self.socket)) < 108, f"{path}.socket", self.socket,
               "a Unix socket path shorter than 108 bytes")


@dataclass
class ConnectorConfig:
    id: int = 1
    type: str = "cType2"

    def validate(self, path: str) -> None:
        _check(self.id >= 1, f"{path}.id", self.id, "an integer >= 1")


@dataclass
class EvseConfig:
    id: int = 1
    max_current_a: float = 32.0
    min_current_a: float = 6.0
    phases: int = 3
    connectors: list[ConnectorConfig] = field(default_factory=lambda: [ConnectorConfig()])

    def validate(self, path: str) -> None:
        _check(self.id >= 1, f"{path}.id", self.id, "an integer >= 1")
        _check(6 <= self.max_current_a <= 80, f"{path}.max_current_a", self.max_current_a,
               "amps in [6, 80] (IEC 61851 AC)")
        _check(6 <= self.min_current_a <= self.max_current_a, f"{path}.min_current_a",
               self.min_current_a, f"amps in [6, max_current_a={self.max_current_a}]")
        _check(self.phases in (1, 3), f"{path}.phases", self.phases, "1 or 3")
        _check(len(self.connectors) == 1, f"{path}.connectors", len(self.connectors),
               "exactly one connector per EVSE (more are not supported yet)")
        for i, c in enumerate(self.connectors):
            c.validate(f"{path}.connectors[{i}]")


@dataclass
class LogConfig:
    level: str = "info"
    frames: bool = False  # every OCPP frame at info level (logger cp_agent.frames), redacted

    def validate(self, path: str) -> None:
        _check(self.level in ("debug", "info", "warning", "error"), f"{path}.level",
               self.level, "debug, info, warning or error")


@dataclass
class AgentConfig:
    station: StationConfig = field(default_factory=StationConfig)
    ocpp: OcppConfig = field(default_factory=OcppConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    evses: list[EvseConfig] = field(default_factory=lambda: [EvseConfig()])
    hal: dict[str, Any] = field(default_factory=lambda: {"driver": "mock"})
    log: LogConfig = field(default_factory=LogConfig)
    source: str | None = None  # the file it came from, for messages

    def validate(self) -> None:
        self.station.validate("station")
        self.ocpp.validate("ocpp")
        self.storage.validate("storage")
        self.control.validate("control")
        self.log.validate("log")
        _check(len(self.evses) >= 1, "evses", self.evses, "at least one EVSE")
        seen: set[int] = set()
        for i, e in enumerate(self.evses):
            e.validate(f"evses[{i}]")
            _check(e.id not in seen, f"evses[{i}].id", e.id, "an id not used by another EVSE")
            seen.add(e.id)
        ids = sorted(seen)
        _check(ids == list(range(1, len(ids) + 1)), "evses", ids,
               "EVSE ids numbered 1, 2, ... without gaps (OCPP connector/EVSE numbering)")
        _check(isinstance(self.hal, dict) and "driver" in self.hal, "hal", self.hal,
               "a mapping with a 'driver' key (mock or hardware)")

    @property
    def evse_ids(self) -> list[int]:
        return [e.id for e in self.evses]


# ------------------------------------------------------------------ generic loader


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {str: "a string", int: "an integer", float: "a number", bool: "true/false",
            type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(value: Any, tp: Any, path: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, path)
            except ConfigError as exc:
                errors.append(exc)
        raise ConfigError(f"{path}: {value!r} is not allowed; expected {_type_name(tp)}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: {value!r} is not allowed; expected {_type_name(tp)}")
        (item_tp,) = typing.get_args(tp)
        return [_convert(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: {value!r} is not allowed; expected a mapping")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            # YAML reads `version: 1.6` as a float and `id: 42` as an int; both mean text here.
            return str(value)
    raise ConfigError(f"{path}: {value!r} is not allowed; expected {_type_name(tp)}")


def _build(cls: Any, raw: Any, path: str) -> Any:
    where = path or "the top level"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: {raw!r} is not allowed; expected a mapping")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    kwargs = {}
    for key, value in raw.items():
        key_path = f"{path}.{key}" if path else str(key)
        if key not in fields:
            raise ConfigError(f"{key_path}: unknown key; allowed keys here: "
                              f"{', '.join(sorted(fields))}")
        kwargs[key] = _convert(value, hints[key], key_path)
    return cls(**kwargs)


def load_config_text(text: str, source: str = "<string>") -> AgentConfig:
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    cfg = _build(AgentConfig, raw, "")
    # Versions written unquoted in YAML arrive as floats: 1.6 -> "1.6" is fine, 2.0.1 is a str.
    cfg.source = source
    cfg.validate()
    return cfg


def load_config(path: str | os.PathLike[str]) -> AgentConfig:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: configuration file not found") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read configuration: {exc.strerror}") from None
    cfg = load_config_text(text, str(p))
    # Relative paths in the file are relative to the file, not to the working directory.
    base = p.resolve().parent
    if not os.path.isabs(cfg.storage.path):
        cfg.storage.path = str(base / cfg.storage.path)
    if cfg.ocpp.ca_file is not None and not os.path.isabs(cfg.ocpp.ca_file):
        cfg.ocpp.ca_file = str(base / cfg.ocpp.ca_file)
    if not os.path.isabs(cfg.control.socket):
        cfg.control.socket = str(base / cfg.control.socket)
    return cfg
