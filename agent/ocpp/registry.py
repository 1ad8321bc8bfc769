"""The version registry: which OCPP versions this agent speaks and what each is made of.

Everything outside the protocol adapters (configuration, CLI, composition root, demo, swarm)
asks this module instead of naming versions: which versions exist, their websocket
subprotocol, their block modules, and what each puts in the durable outbox.  Adding a version
is an entry here plus the block modules that differ from the versions before it.

Each version's package (``agent/ocpp/v16``, ``agent/ocpp/v201``, ``agent/ocpp/v21``) defines its
:class:`VersionSpec` as ``SPEC`` in its ``__init__``; the packages are imported lazily, only
for the versions a station offers (each costs start-up time and memory).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.core.model import EvseSnapshot
    from agent.ocpp.adapter import Adapter
    from agent.ocpp.blocks import Block


@dataclass(frozen=True)
class VersionSpec:
    """One OCPP version: its blocks and the few hooks the shared adapter asks it."""

    version: str
    subprotocol: str
    blocks: tuple[type[Block], ...]
    # The block that builds BootNotification (boot_payload, boot_reason, ...).
    provisioning: Callable[[Adapter], Any]
    # Take charge of the core: transaction rules, authorization rules, metering streams.
    activate: Callable[[Adapter], None]
    # Why a CSMS CALL is refused with SecurityError right now, or None (2.0.1 B03.FR.08).
    refuse_call: Callable[[Adapter, str], str | None] = lambda adapter, action: None
    # Whether the status of ``key`` may be sent now (1.6: not before its StartTransaction).
    status_ready: Callable[[Adapter, Hashable], bool] = lambda adapter, key: True
    # Last-moment completion of a status payload (e.g. a deferred timestamp).
    prepare_status: Callable[[Adapter, dict], dict] = lambda adapter, payload: payload
    # The clock was set from the CSMS time (2.0.1: a security event past a threshold).
    clock_corrected: Callable[[Adapter, float], None] = lambda adapter, delta: None
    # 1.6: the CSMS assigns transaction ids; 2.0.1: the station's own id is the transactionId.
    csms_assigns_tx_id: bool = True
    # ``ocpp.defaults`` in this version's names -> factory values of the neutral settings
    # (e.g. 2.0.1 SampledDataCtrlr.TxUpdatedInterval is MeterValueSampleInterval).
    factory_names: Callable[[dict[str, Any]], dict[str, Any]] = lambda defaults: {}
    # An EVSE's connector status in this version's words (1.6 ChargePointStatus by default;
    # 2.0.1 folds it to ConnectorStatusEnumType): what the status page and ctl show.
    connector_status: Callable[[EvseSnapshot], str] = lambda snap: snap.status.value


# version -> the package defining its SPEC
_PACKAGES = {
    "1.6": "agent.ocpp.v16",
    "2.0.1": "agent.ocpp.v201",
    "2.1": "agent.ocpp.v21",
}
# What OCPP-J names each version's websocket subprotocol (including versions not built yet,
# so that a CSMS agreeing one of them is reported as such).
SUBPROTOCOLS = {"1.6": "ocpp1.6", "2.0.1": "ocpp2.0.1", "2.1": "ocpp2.1"}


def versions() -> tuple[str, ...]:
    """The versions this agent implements, oldest first."""
    return tuple(_PACKAGES)


def spec(version: str) -> VersionSpec:
    try:
        package = _PACKAGES[version]
    except KeyError:
        raise LookupError(f"OCPP {version} is not implemented; this agent speaks "
                          f"{', '.join(_PACKAGES)}") from None
    return importlib.import_module(package).SPEC


def factory_settings(defaults: dict[str, Any], offered: list[str]) -> dict[str, Any]:
    """``ocpp.defaults`` as neutral setting names: what the offered versions' names mean,
    plus the names as written (1.6 keys are the neutral names)."""
    out = dict(defaults)
    for version in offered:
        for name, value in spec(version).factory_names(defaults).items():
            out.setdefault(name, value)
    return out


def subprotocol(version: str) -> str:
    return SUBPROTOCOLS[version]


def version_of(subprotocol_name: str | None) -> str | None:
    return next((v for v, sp in SUBPROTOCOLS.items() if sp == subprotocol_name), None)
