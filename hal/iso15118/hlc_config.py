"""``hal.iso15118``: where the SECC listens, what it offers, where its certificates are.

Validated when the agent starts, every error naming its key path (hal/config_kit.py)::

    hal:
      iso15118:
        enabled: true
        interface: eth1            # the PLC modem of EVSE 1 (mock HAL: lo, the default)
        interfaces: {2: eth2}      # more EVSEs, one modem each
        protocols: [ISO_15118_2, DIN_SPEC_70121]
        pnc: true                  # offer Plug & Charge (contract certificates, needs TLS)
        pki_dir: /etc/cp-agent/pki # the ISO 15118 certificates, iso15118_2/certs|private_keys
        free_service: false
        cert_install: false        # offer the EV certificate installation / update
        evse_ids: {1: "DE*ABC*E1"} # the EVSEID each EVSE tells the EV
        python: /opt/cp-agent/.venv-iso15118/bin/python
        start_sidecar: true        # false: systemd runs hal/iso15118/sidecar.py itself
        socket_dir: /run/cp-agent  # the sidecars' sockets (default: beside the state file)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hal.config_kit import ConfigMap, HalConfigError, bad, boolean, integer, text

PROTOCOLS = ("ISO_15118_2", "DIN_SPEC_70121", "ISO_15118_20_AC", "ISO_15118_20_DC")
LOOPBACK = "lo"
REPO = Path(__file__).resolve().parents[2]
KEYS = ("enabled", "interface", "interfaces", "protocols", "pnc", "pki_dir", "free_service",
        "cert_install", "enforce_tls", "evse_ids", "python", "start_sidecar", "socket_dir",
        "sdp_port", "log_messages")


def default_python() -> str:
    """The sidecar venv's interpreter: $CP_AGENT_ISO15118_VENV, else .venv-iso15118 beside
    the sources (scripts/iso15118_venv.sh makes it)."""
    venv = os.environ.get("CP_AGENT_ISO15118_VENV") or str(REPO / ".venv-iso15118")
    return str(Path(venv) / "bin" / "python")


@dataclass(frozen=True)
class Iso15118Config:
    enabled: bool = False
    interfaces: dict[int, str] = field(default_factory=dict)  # EVSE -> network interface
    protocols: tuple[str, ...] = ("ISO_15118_2", "DIN_SPEC_70121")
    pnc: bool = False
    pki_dir: str | None = None
    free_service: bool = False
    cert_install: bool = False
    enforce_tls: bool = False
    evse_ids: dict[int, str] = field(default_factory=dict)
    python: str = field(default_factory=default_python)
    start_sidecar: bool = True
    socket_dir: str | None = None
    sdp_port: int = 0  # loopback only; 0: a free port per EVSE
    log_messages: bool = False
    path: str = "hal.iso15118"

    @property
    def auth_modes(self) -> tuple[str, ...]:
        return ("EIM", "PNC") if self.pnc else ("EIM",)


def _iface(v: Any, path: str) -> str:
    name = text(v, path)
    if not name or "/" in name or len(name) > 15 or name != name.strip():
        raise bad(path, v, "a network interface name (e.g. eth1, the PLC modem's)")
    return name


def _absolute(v: Any, path: str) -> str:
    if not isinstance(v, str) or not os.path.isabs(v):
        raise bad(path, v, "an absolute path")
    return v


def parse_iso15118(raw: Any, evse_ids: tuple[int, ...], *, mock: bool,
                   path: str = "hal.iso15118") -> Iso15118Config | None:
    """The section, checked; None when absent. ``mock``: the mock HAL, whose EVs speak
    ISO 15118 over the loopback interface only."""
    if raw is None:
        return None
    m = ConfigMap(raw, path, KEYS)
    enabled = m.get("enabled", boolean, True)
    interfaces: dict[int, str] = {}
    if m.has("interface"):
        interfaces[evse_ids[0]] = m.get("interface", _iface)
    extra = raw.get("interfaces")
    if extra is not None:
        if not isinstance(extra, dict):
            raise bad(m.at("interfaces"), extra, "a mapping of EVSE id to interface")
        for key, iface in extra.items():
            where = f"{m.at('interfaces')}.{key}"
            if not isinstance(key, int) or key not in evse_ids:
                raise HalConfigError(where, f"no EVSE {key!r} (the station has "
                                            f"{list(evse_ids)})")
            interfaces[key] = _iface(iface, where)
    if mock:
        for iface in interfaces.values():
            if iface != LOOPBACK:
                raise HalConfigError(f"{path}.interface", f"{iface!r} on the mock HAL; its "
                                     "EVs speak ISO 15118 over the loopback interface, lo")
        interfaces = {e: LOOPBACK for e in evse_ids}
    elif enabled and not interfaces:
        raise HalConfigError(f"{path}.interface", "missing; name the PLC modem's network "
                                                  "interface (e.g. eth1)")
    protocols = m.get("protocols", _protocols, ("ISO_15118_2", "DIN_SPEC_70121"))
    pnc = m.get("pnc", boolean, False)
    pki_dir = m.get("pki_dir", _absolute, None)
    if pnc and enabled and pki_dir is None:
        raise HalConfigError(f"{path}.pki_dir", "missing; Plug & Charge (pnc: true) needs the "
                                                "SECC certificate and the V2G / MO roots")
    names = raw.get("evse_ids") or {}
    if not isinstance(names, dict):
        raise bad(m.at("evse_ids"), names, "a mapping of EVSE id to EVSEID")
    for key, value in names.items():
        if key not in evse_ids or not isinstance(value, str) or not 7 <= len(value) <= 37:
            raise bad(f"{m.at('evse_ids')}.{key}", value,
                      f"an EVSEID of 7-37 characters for one of the EVSEs {list(evse_ids)}")
    sdp_port = m.get("sdp_port", integer(0, 65535), 0 if mock else 15118)
    if not mock and sdp_port != 15118:
        raise HalConfigError(f"{path}.sdp_port", "only the loopback interface of the mock "
                                                 "HAL may move SDP off port 15118")
    return Iso15118Config(
        enabled=enabled, interfaces=interfaces, protocols=protocols, pnc=pnc, pki_dir=pki_dir,
        free_service=m.get("free_service", boolean, False),
        cert_install=m.get("cert_install", boolean, False),
        enforce_tls=m.get("enforce_tls", boolean, False),
        evse_ids=dict(names), python=m.get("python", _absolute, default_python()),
        start_sidecar=m.get("start_sidecar", boolean, True),
        socket_dir=m.get("socket_dir", _absolute, None), sdp_port=sdp_port,
        log_messages=m.get("log_messages", boolean, False), path=path)


def _protocols(v: Any, path: str) -> tuple[str, ...]:
    if not isinstance(v, list) or not v:
        raise bad(path, v, f"a non-empty list of {', '.join(PROTOCOLS)}")
    for i, name in enumerate(v):
        if name not in PROTOCOLS:
            raise bad(f"{path}[{i}]", name, f"one of {', '.join(PROTOCOLS)}")
    if len(set(v)) != len(v):
        raise bad(path, v, "each protocol once")
    return tuple(v)
