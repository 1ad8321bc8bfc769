"""Station configuration: YAML in, typed and validated objects out.

A charger's configuration is typed in by installers in the field; a typo must stop the agent at
start-up with a message naming the key path, the bad value and what is allowed, not surface as
odd behaviour weeks later.  So every key is declared here, unknown keys are errors, and the
`hal:` section is handed to :mod:`hal.factory`, which validates it the same way.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import shutil
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from agent import config_cache
from agent.ocpp import registry
from hal.config_kit import yaml_repr

SUPPORTED_VERSIONS = registry.versions()


class ConfigError(Exception):
    """A configuration problem; the message names the key path, value and what is allowed."""


def _check(cond: bool, path: str, value: Any, allowed: str) -> None:
    if not cond:
        # Values as the YAML file spells them: null, true/false, 'text'.
        raise ConfigError(f"{path}: {yaml_repr(value)} is not allowed; expected {allowed}")


# The charge point identity: OCPP 2.0.1 makes it an identifierString of at most 48 characters
# without ':' (it is the basic-auth user name; part 4, 3.1.1). Of identifierString's set this
# keeps the characters that need no percent-encoding in the connection URL, which every CSMS
# matches alike: ASCII letters and digits, '-', '_', '.'.
STATION_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,48}")
STATION_ID_ALLOWED = "1-48 characters: letters A-Z a-z, digits 0-9, '-', '_', '.'"


@dataclass
class StationConfig:
    id: str = "CP001"
    vendor: str = "cp-agent"
    model: str = "cp-agent-mock"
    serial_number: str | None = None
    firmware_version: str | None = None

    def validate(self, path: str) -> None:
        _check(STATION_ID_RE.fullmatch(self.id) is not None, f"{path}.id", self.id,
               STATION_ID_ALLOWED)
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
    # Security profile 3: the station certificate (PEM, chain) and its private key (PEM) as
    # provisioned in the factory; imported into the certificate store at start-up.
    client_cert_file: str | None = None
    client_key_file: str | None = None
    call_timeout_s: float = 30.0
    # permessage-deflate on the websocket (RFC 7692), if the CSMS agrees: a 1.6 MeterValues
    # frame shrinks ~13x (730 -> 57 bytes), which a metered cellular link pays for; it costs
    # ~60 k instructions and ~40 KiB of zlib state per connection. false for a LAN/loopback.
    compression: bool = True
    reconnect: ReconnectConfig = field(default_factory=ReconnectConfig)
    # Initial values of 1.6 configuration keys / 2.0.1 variables, before the CSMS changes them.
    defaults: dict[str, Any] = field(default_factory=dict)

    def validate(self, path: str) -> None:
        try:
            parts = urlsplit(self.url)
        except ValueError:  # e.g. an unclosed [ of an IPv6 address
            parts = urlsplit("")
        _check(parts.scheme in ("ws", "wss") and bool(parts.hostname), f"{path}.url", self.url,
               "a ws:// or wss:// URL with a host (the station id is appended to it)")
        try:
            port = parts.port  # ValueError for ws://host:notaport or a port above 65535
        except ValueError:
            port = -1
        _check(port is None or 0 < port < 65536, f"{path}.url", self.url,
               "a port number 1-65535 after the host, e.g. ws://csms.example.com:9000/ocpp "
               "(or no port: 80 for ws://, 443 for wss://)")
        _check(len(self.versions) > 0, f"{path}.versions", self.versions,
               f"a non-empty list of {list(SUPPORTED_VERSIONS)}")
        for i, v in enumerate(self.versions):
            _check(v in SUPPORTED_VERSIONS, f"{path}.versions[{i}]", v,
                   f"one of {list(SUPPORTED_VERSIONS)}")
        _check(len(set(self.versions)) == len(self.versions), f"{path}.versions",
               self.versions, "each version at most once")
        _check(self.security_profile in (0, 1, 2, 3), f"{path}.security_profile",
               self.security_profile,
               "0 (none), 1 (basic auth), 2 (TLS + basic auth) or 3 (TLS with the station "
               "certificate)")
        if self.security_profile == 1:
            _check(parts.scheme == "ws", f"{path}.url", self.url,
                   "a ws:// URL for security profile 1 (use profile 2 for wss://)")
        if self.security_profile in (1, 2):
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
            _check(os.path.isfile(self.ca_file) and os.access(self.ca_file, os.R_OK),
                   f"{path}.ca_file", self.ca_file,
                   "the path of a readable PEM file of CA certificates (a relative path is "
                   "relative to the configuration file)")
        self._validate_identity(path)
        _check(0 < self.call_timeout_s <= 300, f"{path}.call_timeout_s", self.call_timeout_s,
               "a number of seconds in (0, 300]")
        self.reconnect.validate(f"{path}.reconnect")

    def _validate_identity(self, path: str) -> None:
        """Security profile 3 authenticates with the station certificate: both files, readable
        PEM, the key belonging to the certificate, and no password that would go unused."""
        if self.security_profile == 3:
            _check(self.password is None, f"{path}.password", "***",
                   "no password: security profile 3 authenticates with the station "
                   "certificate (ocpp.client_cert_file), never with basic auth")
            for key in ("client_cert_file", "client_key_file"):
                _check(getattr(self, key) is not None, f"{path}.{key}", None,
                       "the station certificate chain and its private key (PEM files) for "
                       "security profile 3, as provisioned in the factory")
        files = {k: getattr(self, k) for k in ("client_cert_file", "client_key_file")}
        given = [k for k, v in files.items() if v is not None]
        if not given:
            return
        for key in ("client_cert_file", "client_key_file"):
            _check(key in given, f"{path}.{key}", None,
                   "a PEM file too: client_cert_file and client_key_file go together")
            value = files[key]
            _check(os.path.isfile(value) and os.access(value, os.R_OK), f"{path}.{key}", value,
                   "the path of a readable PEM file (a relative path is relative to the "
                   "configuration file)")
        from agent.link.profiles import check_key_pair  # the module that wraps ssl

        problem = check_key_pair(files["client_cert_file"], files["client_key_file"])
        _check(problem is None, f"{path}.client_key_file", files["client_key_file"],
               f"the private key of ocpp.client_cert_file in PEM ({problem})")


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
        _check(1 <= len(self.connectors) <= 8, f"{path}.connectors", len(self.connectors),
               "1 to 8 connectors (an EVSE feeds one EV at a time through one of them)")
        for i, c in enumerate(self.connectors):
            c.validate(f"{path}.connectors[{i}]")
        ids = [c.id for c in self.connectors]
        _check(ids == list(range(1, len(ids) + 1)), f"{path}.connectors", ids,
               "connector ids numbered 1, 2, ... without gaps or repeats (2.0.1 connectorId)")


@dataclass
class LogConfig:
    level: str = "info"
    frames: bool = False  # every OCPP frame at info level (logger cp_agent.frames), redacted
    # `cp-agent run` also writes <state dir>/logs/agent.log (what GetDiagnostics / GetLog
    # upload), rotated at file_max_kb and kept as file_count files: bounded on an SD card.
    file: bool = True
    file_max_kb: int = 1024
    file_count: int = 5

    def validate(self, path: str) -> None:
        _check(self.level in ("debug", "info", "warning", "error"), f"{path}.level",
               self.level, "debug, info, warning or error")
        _check(16 <= self.file_max_kb <= 1_048_576, f"{path}.file_max_kb", self.file_max_kb,
               "16 to 1048576 (KiB per file)")
        _check(1 <= self.file_count <= 100, f"{path}.file_count", self.file_count,
               "1 to 100 files (agent.log and its rotated copies)")


@dataclass
class MqttConfig:
    """The optional bridge to a home or depot energy manager (agent/integrations/mqtt.py).

    There is no default broker: a station that should not talk MQTT simply has no ``mqtt:``
    section, and one that has it must say where the broker is.
    """

    host: str = ""
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None  # PEM CA(s) of the broker's certificate; None: the system CAs
    topic_prefix: str | None = None  # None: cp-agent/<station.id>
    publish_interval_s: float = 10.0  # every retained topic is republished at least this often
    limit_timeout_s: float = 60.0  # a limit not renewed within this is stale (kept, warned)
    setpoint_timeout_s: float = 30.0  # an external setpoint (set/setpoint_w) is valid this long
    reconnect: ReconnectConfig = field(
        default_factory=lambda: ReconnectConfig(min_backoff_s=1.0, max_backoff_s=60.0))

    def validate(self, path: str) -> None:
        _check(bool(self.host) and not any(c.isspace() for c in self.host), f"{path}.host",
               self.host, "the broker's host name or IP address (required in an mqtt: section)")
        _check(0 < self.port < 65536, f"{path}.port", self.port, "a TCP port in [1, 65535]")
        if self.password is not None:
            _check(bool(self.username), f"{path}.username", self.username,
                   "a user name (a password is set)")
        if self.ca_file is not None:
            _check(self.tls, f"{path}.tls", self.tls, "true (a ca_file is set)")
            _check(os.path.isfile(self.ca_file), f"{path}.ca_file", self.ca_file,
                   "the path of a readable PEM file of CA certificates")
        if self.topic_prefix is not None:
            p = self.topic_prefix
            ok = (0 < len(p) <= 200 and not p.startswith("/") and not p.endswith("/")
                  and "//" not in p and not any(c in p for c in "+#\0"))
            _check(ok, f"{path}.topic_prefix", p,
                   "1-200 characters without wildcards (+, #), empty levels or a leading or "
                   "trailing '/'")
        _check(1 <= self.publish_interval_s <= 3600, f"{path}.publish_interval_s",
               self.publish_interval_s, "seconds in [1, 3600]")
        _check(1 <= self.limit_timeout_s <= 86400, f"{path}.limit_timeout_s",
               self.limit_timeout_s, "seconds in [1, 86400]")
        _check(1 <= self.setpoint_timeout_s <= 3600, f"{path}.setpoint_timeout_s",
               self.setpoint_timeout_s, "seconds in [1, 3600]")
        self.reconnect.validate(f"{path}.reconnect")

    def prefix(self, station_id: str) -> str:
        """The topic prefix: the configured one, else ``cp-agent/<station id>``."""
        return self.topic_prefix or f"cp-agent/{station_id}"


@dataclass
class SiteConfig:
    """Local load management (agent/core/load_management.py): the connection's limit.

    ``grid_meter`` is a meter declared as the ``hal:`` section declares an EVSE's (on
    ``driver: hardware`` a Modbus meter on a bus under ``hal.modbus``; on the mock HAL
    ``{type: mock}``, the simulated connection); hal.factory validates it against the HAL.
    ``fallback_current_a`` is what the whole site may draw (shared) while the grid meter is
    silent for ``silent_samples`` samples in a row.
    """

    max_current_a: float | None = None
    grid_meter: dict[str, Any] | None = None
    fallback_current_a: float | None = None
    min_current_a: float = 6.0
    silent_samples: int = 3

    def validate(self, path: str) -> None:
        _check(self.max_current_a is not None, f"{path}.max_current_a", self.max_current_a,
               "the connection's current per phase in amps (the main fuse), e.g. 35")
        assert self.max_current_a is not None
        _check(0 < self.max_current_a <= 4000, f"{path}.max_current_a", self.max_current_a,
               "amps per phase in (0, 4000]")
        _check(6 <= self.min_current_a <= 80, f"{path}.min_current_a", self.min_current_a,
               "amps in [6, 80] (below 6 A an EV is paused, IEC 61851)")
        _check(1 <= self.silent_samples <= 100, f"{path}.silent_samples", self.silent_samples,
               "a number of samples in [1, 100]")
        if self.grid_meter is not None:
            _check(isinstance(self.grid_meter.get("type"), str), f"{path}.grid_meter.type",
                   self.grid_meter.get("type"),
                   "a meter type as under hal (mock on the mock HAL, or a Modbus meter type)")
            _check(self.fallback_current_a is not None, f"{path}.fallback_current_a",
                   self.fallback_current_a, "amps for the whole site while the grid meter is "
                   "silent (required with a grid_meter), e.g. 16")
        if self.fallback_current_a is not None:
            _check(0 <= self.fallback_current_a <= self.max_current_a,
                   f"{path}.fallback_current_a", self.fallback_current_a,
                   f"amps in [0, max_current_a={self.max_current_a:g}] (for the whole site)")


def _check_command(argv: list[str] | None, path: str, required: bool = False) -> None:
    if argv is None and not required:
        return
    _check(bool(argv) and all(isinstance(a, str) and a for a in argv or []), path, argv,
           "a command as a list: the program, then its arguments, e.g. [rauc, install]")
    assert argv is not None
    _check(shutil.which(argv[0]) is not None, path, argv,
           f"a program that exists and is executable ({argv[0]!r} was not found"
           + ("" if os.path.isabs(argv[0]) else " on PATH") + ")")


@dataclass
class CommandInstallerConfig:
    """``firmware.command``: an executable installs the image (swupdate, RAUC, Mender...)."""

    install: list[str] | None = None  # the image path is appended; exit 0 = installed
    confirm: list[str] | None = None  # after the new firmware's accepted boot
    roll_back: list[str] | None = None  # when it never got there
    version: list[str] | None = None  # prints the running version
    reboot: list[str] | None = None  # None: only the agent restarts
    timeout_s: float = 1800.0

    def validate(self, path: str) -> None:
        _check_command(self.install, f"{path}.install", required=True)
        for key in ("confirm", "roll_back", "version", "reboot"):
            _check_command(getattr(self, key), f"{path}.{key}")
        _check(1 <= self.timeout_s <= 86400, f"{path}.timeout_s", self.timeout_s,
               "seconds in [1, 86400]")


@dataclass
class PythonPackageConfig:
    """``firmware.python_package``: a wheel / sdist of cp-agent into a fresh venv."""

    link: str = "/opt/cp-agent/venv"  # the symlink ExecStart runs through
    venvs: str | None = None  # where the environments go; None: <link's directory>/venvs
    python: str | None = None  # the interpreter that builds them; None: the running one's
    pip_args: list[str] = field(default_factory=list)  # e.g. [--no-index, --find-links, DIR]
    inherit: bool = True  # the new venv sees the running one's packages (.pth): offline, fast
    timeout_s: float = 600.0

    def validate(self, path: str) -> None:
        _check(os.path.isabs(self.link), f"{path}.link", self.link, "an absolute path")
        if self.venvs is not None:
            _check(os.path.isabs(self.venvs), f"{path}.venvs", self.venvs, "an absolute path")
        if self.python is not None:
            _check_command([self.python], f"{path}.python")
        _check(1 <= self.timeout_s <= 86400, f"{path}.timeout_s", self.timeout_s,
               "seconds in [1, 86400]")


FIRMWARE_INSTALLERS = ("mock", "command", "python_package", "none")


@dataclass
class FirmwareConfig:
    """Remote firmware updates (agent/core/firmware.py, agent/platform/)."""

    installer: str | None = None  # None: mock on the mock HAL, none on hardware
    allow_unsigned: bool | None = None  # None: true with the mock installer, else false
    confirm_timeout_s: float = 600.0  # new firmware without an accepted boot: rolled back
    download_timeout_s: float = 60.0  # connect / silence limit of one download attempt
    retries: int = 3  # when the request gives none
    retry_interval_s: float = 60.0  # when the request gives none
    command: CommandInstallerConfig | None = None
    python_package: PythonPackageConfig | None = None

    def kind(self, hal_driver: Any) -> str:
        if self.installer is not None:
            return self.installer
        return "mock" if hal_driver == "mock" else "none"

    def unsigned_ok(self, hal_driver: Any) -> bool:
        if self.allow_unsigned is not None:
            return self.allow_unsigned
        return self.kind(hal_driver) == "mock"

    def validate(self, path: str) -> None:
        if self.installer is not None:
            _check(self.installer in FIRMWARE_INSTALLERS, f"{path}.installer", self.installer,
                   f"one of {', '.join(FIRMWARE_INSTALLERS)}")
        if self.installer == "command":
            _check(self.command is not None, f"{path}.command", None,
                   "a command: section with install: [...] (installer is command)")
        if self.installer == "python_package" and self.python_package is None:
            self.python_package = PythonPackageConfig()
        for key, kind in (("command", "command"), ("python_package", "python_package")):
            section = getattr(self, key)
            if section is None:
                continue
            _check(self.installer == kind, f"{path}.{key}", "{...}",
                   f"no {key}: section unless installer is {kind}")
            section.validate(f"{path}.{key}")
        _check(1 <= self.confirm_timeout_s <= 86400, f"{path}.confirm_timeout_s",
               self.confirm_timeout_s, "seconds in [1, 86400]")
        _check(1 <= self.download_timeout_s <= 3600, f"{path}.download_timeout_s",
               self.download_timeout_s, "seconds in [1, 3600]")
        _check(0 <= self.retries <= 100, f"{path}.retries", self.retries, "0 to 100")
        _check(0 <= self.retry_interval_s <= 86400, f"{path}.retry_interval_s",
               self.retry_interval_s, "seconds in [0, 86400]")


# Hosts the status page may listen on without a credential: only this machine can reach them.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})


def parse_listen(text: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:8080`` for IPv6) as (host, port); ValueError if it is not one."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError("an IPv6 address needs brackets")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("not host:port")
    return host, int(port)


@dataclass
class WebConfig:
    """The local status page, JSON API and metrics (agent/web); off unless ``listen`` is set.

    The page shows the station's state and, on the mock HAL, drives it: whatever other
    machines can reach must ask for a credential, and that credential is never the CSMS one.
    """

    listen: str | None = None  # host:port; port 0 picks a free one (cp-agent demo)
    token: str | None = None  # bearer token: Authorization: Bearer ... or ?token=...
    user: str | None = None  # HTTP basic auth, together with password
    password: str | None = None

    @property
    def credential(self) -> bool:
        return self.token is not None or self.user is not None

    def validate(self, path: str, ocpp_password: str | None) -> None:
        if self.token is not None:
            _check(16 <= len(self.token) <= 256 and self.token.isprintable()
                   and " " not in self.token, f"{path}.token", "***",
                   "16-256 printable characters without spaces")
            _check(self.token != ocpp_password, f"{path}.token", "***",
                   "a token other than ocpp.password (the CSMS credential stays off the web)")
        if self.user is not None or self.password is not None:
            _check(self.user is not None, f"{path}.user", self.user,
                   f"a user name when {path}.password is set (HTTP basic auth)")
            _check(self.password is not None, f"{path}.password", self.password,
                   f"a password when {path}.user is set (HTTP basic auth)")
        if self.user is not None:
            _check(0 < len(self.user) <= 64 and ":" not in self.user, f"{path}.user",
                   self.user, "1-64 characters without ':'")
        if self.password is not None:
            _check(8 <= len(self.password) <= 128, f"{path}.password", "***",
                   "8-128 characters")
            _check(self.password != ocpp_password, f"{path}.password", "***",
                   "a password other than ocpp.password (the CSMS credential stays off the web)")
        if self.listen is None:
            return
        try:
            host, _ = parse_listen(self.listen)
        except ValueError:
            host = ""
        _check(bool(host), f"{path}.listen", self.listen,
               "host:port, e.g. 127.0.0.1:8080 ([::1]:8080 for IPv6; port 0: a free port)")
        _check(host in LOOPBACK_HOSTS or self.credential, f"{path}.listen", self.listen,
               f"127.0.0.1, ::1 or localhost, unless {path}.token or {path}.user and "
               f"{path}.password are set (other machines could reach the page)")


@dataclass
class AgentConfig:
    station: StationConfig = field(default_factory=StationConfig)
    ocpp: OcppConfig = field(default_factory=OcppConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    evses: list[EvseConfig] = field(default_factory=lambda: [EvseConfig()])
    hal: dict[str, Any] = field(default_factory=lambda: {"driver": "mock"})
    log: LogConfig = field(default_factory=LogConfig)
    mqtt: MqttConfig | None = None  # no section: no bridge, and aiomqtt is never imported
    web: WebConfig = field(default_factory=WebConfig)  # listen unset: agent.web not imported
    site: SiteConfig | None = None  # no section: no local load management
    firmware: FirmwareConfig = field(default_factory=FirmwareConfig)
    source: str | None = None  # the file it came from, for messages

    def validate(self) -> None:
        self.station.validate("station")
        self.ocpp.validate("ocpp")
        self.storage.validate("storage")
        self.control.validate("control")
        self.log.validate("log")
        self.web.validate("web", self.ocpp.password)
        if self.mqtt is not None:
            self.mqtt.validate("mqtt")
        if self.site is not None:
            self.site.validate("site")
        self.firmware.validate("firmware")
        _check(len(self.evses) >= 1, "evses", self.evses, "at least one EVSE")
        seen: set[int] = set()
        for i, e in enumerate(self.evses):
            e.validate(f"evses[{i}]")
            _check(e.id not in seen, f"evses[{i}].id", e.id, "an id not used by another EVSE")
            seen.add(e.id)
        ids = sorted(seen)
        _check(ids == list(range(1, len(ids) + 1)), "evses", ids,
               "EVSE ids numbered 1, 2, ... without gaps (OCPP connector/EVSE numbering)")
        for i, e in enumerate(self.evses):
            # 1.6 numbers connectors across the station (one per EVSE here): an EVSE with
            # several connectors has no 1.6 form.
            _check(len(e.connectors) == 1 or "1.6" not in self.ocpp.versions,
                   f"evses[{i}].connectors", len(e.connectors),
                   "one connector per EVSE while ocpp.versions offers 1.6 (several connectors "
                   "per EVSE need OCPP 2.0.1 only)")
        _check(isinstance(self.hal, dict) and "driver" in self.hal, "hal", self.hal,
               "a mapping with a 'driver' key (mock or hardware)")
        # Last, so that a section's own mistake is named first: a password that would never
        # be sent (profile 0 sends no Authorization header) is a mistake, not a default.
        if self.ocpp.password is not None and self.ocpp.security_profile == 0:
            _check(False, "ocpp.security_profile", 0,
                   "1 (basic auth over ws://) or 2 (over wss://) when ocpp.password is set: "
                   "with security profile 0 the password is never sent")

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
        if len(errors) == 1 and any(dataclasses.is_dataclass(a) for a in args):
            raise errors[0]  # an optional section's own error names the key inside it
        raise ConfigError(f"{path}: {yaml_repr(value)} is not allowed; expected {_type_name(tp)}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{path}: {yaml_repr(value)} is not allowed; "
                              f"expected {_type_name(tp)}")
        (item_tp,) = typing.get_args(tp)
        return [_convert(v, item_tp, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: {yaml_repr(value)} is not allowed; expected a mapping")
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
    raise ConfigError(f"{path}: {yaml_repr(value)} is not allowed; expected {_type_name(tp)}")


def _build(cls: Any, raw: Any, path: str) -> Any:
    where = path or "the top level"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: {yaml_repr(raw)} is not allowed; expected a mapping")
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


# Keys whose value is a file path. A relative one is relative to the configuration file (the
# working directory is / under systemd), resolved before validation looks at the file. The
# hal: section's paths are device nodes (/dev/ttyUSB0), left as written.
PATH_KEYS = ("storage.path", "control.socket", "ocpp.ca_file", "ocpp.client_cert_file",
             "ocpp.client_key_file", "mqtt.ca_file")

# Keys a configuration must give: without them an empty file would be station CP001 talking
# to a CSMS on 127.0.0.1.
REQUIRED_KEYS = {
    "station.id": "the charge point identity, e.g. CP001",
    "ocpp.url": "the CSMS websocket URL, e.g. ws://csms.example.com:9000/ocpp",
}


def _resolve_paths(cfg: AgentConfig, base: str) -> None:
    for key in PATH_KEYS:
        section, name = key.split(".")
        obj = getattr(cfg, section, None)
        value = getattr(obj, name, None)
        if isinstance(value, str) and value and value != ":memory:" and not os.path.isabs(value):
            setattr(obj, name, os.path.join(base, value))


def _check_required(raw: Any, source: str) -> None:
    missing = []
    for key in REQUIRED_KEYS:
        node = raw
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            missing.append(key)
    if not missing:
        return
    what = " and ".join(f"{key} ({REQUIRED_KEYS[key]})" for key in missing)
    empty = f"{source} is empty; " if raw is None else ""
    raise ConfigError(f"{empty}{', '.join(missing)}: missing; every configuration must give "
                      f"{what}")


if TYPE_CHECKING:
    import yaml  # imported where a file is parsed: a start on a cached document needs none


def _yaml_error(exc: yaml.YAMLError, source: str, text: str) -> str:
    """The YAML error with the file's name, line and column (PyYAML says "<unicode string>")."""
    import yaml

    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        detail = exc.problem or "syntax error"
        if exc.context:
            detail += f" ({exc.context}"
            cm = exc.context_mark
            if cm is not None and (cm.line, cm.column) != (mark.line, mark.column):
                detail += f" at line {cm.line + 1}, column {cm.column + 1}"
            detail += ")"
        return f"{source}: line {mark.line + 1}, column {mark.column + 1}: not valid YAML: {detail}"
    if isinstance(exc, yaml.reader.ReaderError):
        before = text[:exc.position]
        line = before.count("\n") + 1
        column = exc.position - (before.rfind("\n") + 1) + 1
        char = exc.character if isinstance(exc.character, str) else chr(exc.character)
        return (f"{source}: line {line}, column {column}: not valid YAML: character "
                f"{char!r} (U+{ord(char):04X}) is not allowed in YAML ({exc.reason})")
    return f"{source}: not valid YAML: {exc}"


def _safe_load(text: str) -> Any:
    """``yaml.safe_load`` through libyaml when available (a commented configuration like
    config.example.yaml loads in ~1 ms instead of ~55 ms, docs/performance.md).  A document
    libyaml refuses is parsed again by the pure-Python parser, so an error reads as it always
    did (that one names the offending character or alias, libyaml does not)."""
    import yaml

    fast = getattr(yaml, "CSafeLoader", None)  # None: PyYAML built without libyaml
    if fast is not None:
        try:
            return yaml.load(text, Loader=fast)
        except yaml.YAMLError:
            pass
    return yaml.safe_load(text)


def _parse(text: str, source: str) -> Any:
    """The YAML document of ``text``; a ConfigError naming line and column if it is not YAML."""
    import yaml

    try:
        return _safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_error(exc, source, text)) from None


def load_config_text(text: str, source: str = "<string>",
                     base_dir: str | os.PathLike[str] | None = None, *,
                     raw: Any = config_cache.MISS) -> AgentConfig:
    """Parse and validate ``text``; relative paths are relative to ``base_dir`` if given.
    ``raw``: the document ``text`` parses to, when it is known already (the parse cache)."""
    if raw is config_cache.MISS:
        raw = _parse(text, source)
    cfg = _build(AgentConfig, raw, "")
    # Versions written unquoted in YAML arrive as floats: 1.6 -> "1.6" is fine, 2.0.1 is a str.
    cfg.source = source
    if base_dir is not None:
        _resolve_paths(cfg, os.fspath(base_dir))
    cfg.validate()
    # After validation, so a file with a wrong value and no station.id names the wrong value.
    _check_required(raw, source)
    return cfg


def load_config(path: str | os.PathLike[str]) -> AgentConfig:
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{p}: configuration file not found") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read configuration: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        hint = " (it looks like UTF-16)" if data[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise ConfigError(f"{p}: not UTF-8 text: byte 0x{data[exc.start]:02x} at offset "
                          f"{exc.start} (line {line}, column {column}) is not valid UTF-8"
                          f"{hint}; save the file as UTF-8") from None
    # Relative paths in the file are relative to the file, not to the working directory.
    base_dir = p.resolve().parent
    raw = config_cache.lookup(data)  # the document of exactly these bytes, parsed before
    if raw is not config_cache.MISS:
        return load_config_text(text, str(p), base_dir=base_dir, raw=raw)
    raw = _parse(text, str(p))
    # Kept only for a configuration that is valid, to be read at the next start instead of
    # parsed; everything below runs on it as on a parse.
    cfg = load_config_text(text, str(p), base_dir=base_dir, raw=copy.deepcopy(raw))
    config_cache.store(data, raw)
    return cfg
