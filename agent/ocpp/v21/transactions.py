"""2.1 block E, transactions: the 2.0.1 block with E17, resuming a transaction after an
interruption.

2.1 lets a transaction survive a power cut or a restart (a crash, a watchdog, a Reset
ImmediateAndResume) when ``TxCtrlr.ResumptionTimeout`` (the spec's TxResumptionTimeout) is
above 0 and the station was off no longer than that: the core decides
(agent/core/resumption.py, with the rules :meth:`Transactions21.resumption` reads here) and
restores the session; this block says it: TransactionEvent Updated, triggerReason TxResumed,
with the charging state the EVSE settled in after the restart (Charging, or SuspendedEVSE when
``TxCtrlr.AllowEnergyTransferResumption`` is false and energy stays off) and the energy
register before and after the interruption (contexts Interruption.Begin / Interruption.End).
The transactionId and the seqNo sequence are the transaction's own, carried on from the
journal. A transaction that may not resume ends with PowerLoss as on 2.0.1.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from agent.core.model import EvseSnapshot, ResumptionRules, StopReason, TxRecord
from agent.core.resumption import last_alive
from agent.ocpp.v201.device_model import VarDef, rw
from agent.ocpp.v201.metering import register_value
from agent.ocpp.v201.transactions import Transactions
from hal.interfaces import FaultKind

log = logging.getLogger("cp_agent.v21")

# The 2.1 appendix (v2.0) names them ResumptionTimeout and AllowEnergyTransferResumption (the
# use case's text says TxResumptionTimeout / TxAllowEnergyTransferResumption); TxCtrlr holds
# them, beside the other transaction settings.
RESUMPTION_TIMEOUT = ("TxCtrlr", "ResumptionTimeout")
ALLOW_ENERGY = ("TxCtrlr", "AllowEnergyTransferResumption")


class Transactions21(Transactions):
    VARIABLES: ClassVar[tuple[VarDef, ...]] = (
        *Transactions.VARIABLES,
        # 0 (the factory value): nothing resumes, every open transaction ends with PowerLoss.
        rw(*RESUMPTION_TIMEOUT, "integer", "0", unit="s", min_limit=0, max_limit=86400),
        rw(*ALLOW_ENERGY, "boolean", "true"),
    )

    def __init__(self, adapter: Any) -> None:
        super().__init__(adapter)
        # EVSE -> (local id, meter values) of a resumption not announced yet
        self._resuming: dict[int, tuple[str, list[dict]]] = {}

    def resumption(self) -> ResumptionRules:
        """The core's rules for transactions a restart interrupted (read at start-up)."""
        return ResumptionRules(timeout_s=float(self.dm.integer(*RESUMPTION_TIMEOUT)),
                               allow_energy=self.dm.flag(*ALLOW_ENERGY))

    def transaction_resumed(self, tx: TxRecord, snap: EvseSnapshot) -> None:
        """The core resumed ``tx`` at start-up: announced once its EVSE settled (the first
        status it reports), so the CSMS hears the charging state the restart led to."""
        meter = []
        if tx.last_meter_at:
            meter.append(register_value(tx.last_meter_wh, "Interruption.Begin",
                                        last_alive(tx)))
        now = snap.reading.energy_import_wh if snap.reading is not None else tx.last_meter_wh
        meter.append(register_value(now, "Interruption.End", self.clock.stamp()))
        self._resuming[tx.evse_id] = (tx.local_id, meter)

    def _announce(self, snap: EvseSnapshot, tx: TxRecord | None) -> bool:
        pending = self._resuming.get(snap.evse_id)
        if pending is None or tx is None or tx.local_id != pending[0]:
            return False
        del self._resuming[snap.evse_id]
        self._event(tx, "Updated", "TxResumed", charging_state=snap.charging_state,
                    meter=pending[1])
        return True

    def status_changed(self, snap: EvseSnapshot, fault: FaultKind | None) -> None:
        if not self._announce(snap, snap.tx):
            super().status_changed(snap, fault)

    def transaction_ended(self, tx: TxRecord, reason: StopReason, snap: EvseSnapshot) -> None:
        self._announce(snap, tx)  # ended before its EVSE settled: resumed first, then ended
        super().transaction_ended(tx, reason, snap)
