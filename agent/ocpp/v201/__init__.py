"""OCPP 2.0.1: the functional blocks A (security), B (provisioning), C (authorization),
D (local list), E (transactions), F (remote control), G (availability), H (reservation),
I (tariff and cost), J (meter values),
K (smart charging), M (certificate management), N (diagnostics), O (display messages) and
P (data transfer),
with a spec answer for the features not built yet.

The version is this registry entry (:data:`SPEC`) and the block modules it lists; each block
declares its device-model variables (``variables()``), and the device model is their union
(:mod:`agent.ocpp.v201.device_model`, owned by the provisioning block).  Where does 2.0.1
handle X: ``grep -rn '@handles("X")' agent/ocpp/v201``.
"""

from __future__ import annotations

from agent.core.evse import TxRules
from agent.ocpp.adapter import Adapter
from agent.ocpp.registry import VersionSpec
from agent.ocpp.v201.authorization import Authorization
from agent.ocpp.v201.availability import Availability, connector_status
from agent.ocpp.v201.certificates import Certificates
from agent.ocpp.v201.charging_limits import ChargingLimits
from agent.ocpp.v201.data_transfer import DataTransfer
from agent.ocpp.v201.device_model import factory_names
from agent.ocpp.v201.diagnostics import Diagnostics
from agent.ocpp.v201.display import DisplayMessages
from agent.ocpp.v201.firmware import Firmware
from agent.ocpp.v201.iso15118 import Iso15118
from agent.ocpp.v201.local_list import LocalList
from agent.ocpp.v201.metering import STREAMS, Metering
from agent.ocpp.v201.monitoring import Monitoring
from agent.ocpp.v201.network import NetworkProfiles
from agent.ocpp.v201.provisioning import Provisioning
from agent.ocpp.v201.remote_control import RemoteControl
from agent.ocpp.v201.reservation import Reservations
from agent.ocpp.v201.security import Security
from agent.ocpp.v201.smart_charging import SmartCharging
from agent.ocpp.v201.tariff import TariffCost
from agent.ocpp.v201.transactions import Transactions
from agent.ocpp.v201.unsupported import Unsupported


def _activate(adapter: Adapter) -> None:
    station = adapter.station
    transactions = adapter.block(Transactions)
    station.use_rules(TxRules(start_points=transactions.start_points,
                              stop_points=transactions.stop_points))
    station.authorization.use(adapter.block(Authorization).rules())
    station.metering.use(STREAMS, adapter.block(Metering).sink)
    adapter.block(Iso15118).activate()  # Plug & Charge: the SECC's questions come to us


def _refuse_call(adapter: Adapter, action: str) -> str | None:
    # B03.FR.08: while Rejected, every CSMS request is refused with SecurityError.
    if adapter.registration == "Rejected":
        return f"{action} refused: BootNotification was Rejected"
    return None


def _clock_corrected(adapter: Adapter, delta: float) -> None:
    adapter.block(Security).clock_corrected(delta)


SPEC = VersionSpec(
    version="2.0.1",
    subprotocol="ocpp2.0.1",
    blocks=(Provisioning, Security, NetworkProfiles, Authorization, LocalList, Availability,
            Metering, Transactions, RemoteControl, Reservations, SmartCharging, ChargingLimits,
            Monitoring, Diagnostics, Firmware, DataTransfer, Certificates, DisplayMessages,
            TariffCost, Iso15118, Unsupported),
    provisioning=lambda adapter: adapter.block(Provisioning),
    activate=_activate,
    refuse_call=_refuse_call,
    clock_corrected=_clock_corrected,
    # A status queued before the clock was known carries a deferred stamp: resolve it now.
    prepare_status=lambda adapter, payload: adapter.block(Availability).resolved(payload),
    csms_assigns_tx_id=False,
    factory_names=factory_names,
    connector_status=connector_status,
)
