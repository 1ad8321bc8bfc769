"""OCPP 1.6J: the feature profiles Core, LocalAuthListManagement, RemoteTrigger, SmartCharging,
Reservation.

The version is this registry entry (:data:`SPEC`) and the block modules it lists; where does
1.6 handle X: ``grep -rn '@handles("X")' agent/ocpp/v16``.
"""

from __future__ import annotations

from collections.abc import Hashable

from agent.core.evse import TxRules
from agent.core.model import TxPoint
from agent.ocpp.adapter import Adapter
from agent.ocpp.registry import VersionSpec
from agent.ocpp.v16.authorization import Authorization
from agent.ocpp.v16.availability import Availability
from agent.ocpp.v16.certificates import Certificates
from agent.ocpp.v16.connection_security import ConnectionSecurity
from agent.ocpp.v16.data_transfer import DataTransfer
from agent.ocpp.v16.diagnostics import Diagnostics
from agent.ocpp.v16.firmware import Firmware
from agent.ocpp.v16.local_list import LocalList
from agent.ocpp.v16.metering import STREAMS, Metering
from agent.ocpp.v16.pnc import PlugAndCharge16  # the full block only with ISO 15118
from agent.ocpp.v16.provisioning import Provisioning
from agent.ocpp.v16.remote_trigger import RemoteTrigger
from agent.ocpp.v16.reservation import Reservations
from agent.ocpp.v16.security import Security
from agent.ocpp.v16.smart_charging import SmartCharging
from agent.ocpp.v16.transactions import Transactions


def _activate(adapter: Adapter) -> None:
    settings = adapter.settings

    def stop_points() -> frozenset[TxPoint]:
        # Energy stops when the EV leaves; the transaction too, unless the key keeps it open.
        if settings["StopTransactionOnEVSideDisconnect"]:
            return frozenset({TxPoint.POWER_PATH_CLOSED})
        return frozenset({TxPoint.AUTHORIZED})

    station = adapter.station
    station.use_rules(TxRules(start_points=lambda: frozenset({TxPoint.POWER_PATH_CLOSED}),
                              stop_points=stop_points))
    station.authorization.use(adapter.block(Authorization).rules())
    station.metering.use(STREAMS, adapter.block(Metering).sink)
    adapter.block(PlugAndCharge16).activate()  # Plug & Charge through DataTransfer


def _clock_corrected(adapter: Adapter, delta: float) -> None:
    adapter.block(Security).clock_corrected(delta)


def _status_ready(adapter: Adapter, key: Hashable) -> bool:
    return key == 0 or adapter.block(Availability).ready(int(key))  # type: ignore[arg-type]


SPEC = VersionSpec(
    version="1.6",
    subprotocol="ocpp1.6",
    blocks=(Provisioning, Authorization, LocalList, Availability, Metering, Transactions,
            RemoteTrigger, DataTransfer, SmartCharging, Reservations, Diagnostics, Firmware,
            Certificates, Security, ConnectionSecurity, PlugAndCharge16),
    provisioning=lambda adapter: adapter.block(Provisioning),
    activate=_activate,
    status_ready=_status_ready,
    clock_corrected=_clock_corrected,
)
