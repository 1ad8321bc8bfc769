"""OCPP 2.1: the 2.0.1 blocks carried over, with the few 2.1 replaced, plus 2.1's own.

2.1 "builds upon the foundation of 2.0.1": the same functional blocks and device model, more
fields, some enumerations opened to strings (idToken.type, connectorType,
chargingLimitSource), and new messages.  So this version is not a copy: :data:`SPEC` takes
the block tuple of :data:`agent.ocpp.v201.SPEC` at import time (a block added to 2.0.1 joins
2.1 by itself), swaps in a 2.1 subclass where 2.1 changed that block's messages
(:data:`REPLACED`), and appends the 2.1-only blocks (:data:`ADDED`).  Where a carried-over
block differs only in a detail (the idToken length, which TransactionEvents continue one
another) the 2.0.1 block reads ``self.adapter.version``.

Both device models share the settings store: a variable is one value whichever version set it.
Where does 2.1 handle X: ``grep -rn '@handles("X")' agent/ocpp/v21 agent/ocpp/v201``.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from agent.ocpp import v201
from agent.ocpp.blocks import Block
from agent.ocpp.registry import VersionSpec
from agent.ocpp.v21.certificates import Certificates21
from agent.ocpp.v21.der import Der21
from agent.ocpp.v21.diagnostics import Diagnostics21
from agent.ocpp.v21.display import DisplayMessages21
from agent.ocpp.v21.event_streams import EventStreams
from agent.ocpp.v21.firmware import Firmware21
from agent.ocpp.v21.iso15118 import Iso15118_21
from agent.ocpp.v21.local_cost import LocalCost21
from agent.ocpp.v21.monitoring import Monitoring21
from agent.ocpp.v21.network import NetworkProfiles21
from agent.ocpp.v21.provisioning import Provisioning21
from agent.ocpp.v21.security import Security21
from agent.ocpp.v21.smart_charging import SmartCharging21
from agent.ocpp.v21.transaction_limits import TransactionLimits21
from agent.ocpp.v21.transactions import Transactions21
from agent.ocpp.v21.unsupported import Unsupported21
from agent.ocpp.v21.v2x import V2x21
from agent.ocpp.v201.certificates import Certificates
from agent.ocpp.v201.device_model import factory_names as factory_names_201
from agent.ocpp.v201.diagnostics import Diagnostics
from agent.ocpp.v201.display import DisplayMessages
from agent.ocpp.v201.firmware import Firmware
from agent.ocpp.v201.iso15118 import Iso15118
from agent.ocpp.v201.monitoring import Monitoring
from agent.ocpp.v201.network import NetworkProfiles
from agent.ocpp.v201.provisioning import Provisioning
from agent.ocpp.v201.security import Security
from agent.ocpp.v201.smart_charging import SmartCharging
from agent.ocpp.v201.transactions import Transactions

# 2.0.1 block -> its 2.1 form (only where 2.1 changed the block's messages).
REPLACED: dict[type[Block], type[Block]] = {
    Provisioning: Provisioning21,
    Security: Security21,
    NetworkProfiles: NetworkProfiles21,
    SmartCharging: SmartCharging21,
    Diagnostics: Diagnostics21,
    DisplayMessages: DisplayMessages21,
    Firmware: Firmware21,
    Monitoring: Monitoring21,
    Transactions: Transactions21,
    Certificates: Certificates21,
    Iso15118: Iso15118_21,
}
# Blocks 2.1 has and 2.0.1 has not.
ADDED: tuple[type[Block], ...] = (TransactionLimits21, EventStreams, LocalCost21, V2x21,
                                  Der21, Unsupported21)


def carried_over(blocks: tuple[type[Block], ...]) -> tuple[type[Block], ...]:
    """2.0.1's blocks in 2.1: each replaced by its 2.1 subclass where there is one."""
    return tuple(REPLACED.get(cls, cls) for cls in blocks)


BLOCKS = (*carried_over(v201.SPEC.blocks), *ADDED)


def factory_names(defaults: dict[str, Any]) -> dict[str, Any]:
    return factory_names_201(defaults, BLOCKS)


def _activate(adapter: Any) -> None:
    """2.0.1's rules, and E17: transactions a restart interrupted may resume."""
    v201.SPEC.activate(adapter)
    adapter.station.use_resumption(adapter.block(Transactions21).resumption)


SPEC: VersionSpec = replace(
    v201.SPEC,
    version="2.1",
    subprotocol="ocpp2.1",
    blocks=BLOCKS,
    # The other hooks are 2.0.1's: they find their blocks by class, and a 2.1 subclass is one.
    factory_names=factory_names,
    activate=_activate,
)
