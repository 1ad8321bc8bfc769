"""2.1 E16, transactions with limits: a TransactionEventResponse may carry a
``transactionLimit`` (maxEnergy, maxTime, maxCost, maxSoC) for the transaction it answers.

This station applies all four (``TxCtrlr.SupportedLimits``) where it can measure them: energy
and time always; maxCost when the station prices the transaction itself (2.1 local cost, a
tariff in force for it), against the running cost including tax; maxSoC when the EV reports
its state of charge (a bidirectional / ISO 15118 EV; the meter or the EV side).  It confirms
the limits it now enforces with an Updated event (triggerReason ``LimitSet``,
``transactionInfo.transactionLimit``: only the applied ones, so the CSMS sees what is in
force), and when one is reached it ends the authorization with the matching trigger
(EnergyLimitReached, TimeLimitReached, CostLimitReached, SoCLimitReached) and stopped reason
(the same names; for the cost, which ReasonEnumType lacks, LocalOutOfCredit); whether the
transaction ends then or at the unplug is TxStopPoint's, as for every stop.  A maxCost on a
transaction the CSMS prices, or a maxSoC for an EV that says nothing of its battery, is
logged and not confirmed.

A limit is the complete set in force: a new ``transactionLimit`` replaces the previous one,
the same one repeated in a later answer changes nothing.  Limits are persisted (with the ack
of the answer that set them, in the same commit), so a transaction that survives a restart
keeps its limits.  maxTime counts from the transaction's start (its ``started_at``).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from decimal import Decimal
from typing import Any, ClassVar

from agent.clock import parse_iso
from agent.core.model import EvseSnapshot, StopReason, TxRecord
from agent.ocpp.v201.device_model import VarDef, VariableBlock, ro
from agent.ocpp.v201.transactions import Transactions
from agent.storage import OutboxItem

log = logging.getLogger("cp_agent.v21")

LIMIT_KINDS = ("maxEnergy", "maxTime", "maxCost", "maxSoC")  # TransactionLimitType
APPLIED = LIMIT_KINDS  # each where it can be measured (see the module docstring)
STORE_KEY = "v21.tx_limits"  # JSON {transactionId: {"maxEnergy": Wh, "maxTime": s, ...}}


def applicable(limit: dict[str, Any], can: Callable[[str], bool] = lambda kind: True,
               ) -> tuple[dict[str, float], list[str]]:
    """The limits of a TransactionLimitType this station applies (a finite number, and
    ``can(kind)``: measurable for this transaction), and the ones it ignores."""
    applied: dict[str, float] = {}
    for kind in APPLIED:
        value = limit.get(kind)
        if isinstance(value, int | float) and not isinstance(value, bool) and \
                math.isfinite(value) and can(kind):
            applied[kind] = value
    ignored = [k for k in LIMIT_KINDS if k in limit and k not in applied]
    return applied, ignored


class TransactionLimits21(VariableBlock):
    VARIABLES: ClassVar[tuple[VarDef, ...]] = (
        ro("TxCtrlr", "SupportedLimits", "MemberList", ",".join(APPLIED),
           values_list=LIMIT_KINDS),
    )

    def __init__(self, adapter: Any) -> None:
        super().__init__(adapter)
        self._limits: dict[str, dict[str, float]] = {}
        self._watching: set[str] = set()
        self._last: dict[str, dict[str, Any]] = {}  # the last transactionLimit seen per tx

    # ------------------------------------------------------------------ persistence

    def _load(self) -> None:
        raw = self.storage.get_setting(STORE_KEY)
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            log.warning("stored transaction limits unreadable: dropped")
            data = {}
        self._limits = {str(k): dict(v) for k, v in data.items() if isinstance(v, dict)}

    def _save(self) -> None:
        if self._limits:
            self.storage.set_setting(STORE_KEY, json.dumps(self._limits, sort_keys=True))
        else:
            self.storage.delete_setting(STORE_KEY)

    def _forget(self, local_id: str) -> None:
        self._last.pop(local_id, None)
        if self._limits.pop(local_id, None) is not None:
            self._save()

    def start(self) -> None:
        """Limits of transactions that were running before a restart are watched again."""
        self._load()
        for local_id in list(self._limits):
            self._watch_soon(local_id)

    def limits(self, local_id: str) -> dict[str, float] | None:
        """The limits in force for a transaction (None: none)."""
        return self._limits.get(local_id)

    # ------------------------------------------------------------------ the CSMS sets one

    def transaction_answered(self, item: OutboxItem, result: dict) -> None:
        """A TransactionEventResponse (inside the commit acknowledging the event: never
        raise, the event would be sent again)."""
        limit = result.get("transactionLimit")
        if not isinstance(limit, dict) or item.tx_ref is None:
            return
        if item.payload.get("eventType") == "Ended":
            return  # nothing left to limit
        try:
            self._take(item.tx_ref, limit)
        except Exception:  # noqa: BLE001 - a limit is never worth a resent event
            log.exception("transaction %s: transactionLimit not taken", item.tx_ref)

    def _take(self, local_id: str, limit: dict[str, Any]) -> None:
        evse = self.station.find_tx(local_id=local_id)
        tx = evse.tx if evse is not None else None
        if tx is None or self._last.get(local_id) == limit:
            return  # it ended meanwhile, or the answer repeats the limit in force
        self._last[local_id] = dict(limit)
        applied, ignored = applicable(limit, lambda kind: self._measurable(kind, evse))
        if ignored:
            log.warning("transaction %s: transaction limits %s not supported (applied: %s)",
                        local_id, ", ".join(ignored), ", ".join(applied) or "none")
        if not applied or applied == self._limits.get(local_id):
            return
        self._limits[local_id] = applied
        self._save()
        log.info("transaction %s: limits set %s", local_id, applied)
        self.adapter.block(Transactions).limit_set(tx, dict(applied))
        self._watch_soon(local_id)

    # ------------------------------------------------------------------ enforcement

    def _watch_soon(self, local_id: str) -> None:
        if local_id in self._watching:
            return
        self._watching.add(local_id)
        self.adapter.spawn(self._watch(local_id), f"v21-tx-limit-{local_id}")

    def _poll_s(self) -> float:
        return max(0.5, float(getattr(self.station, "meter_poll_s", 1.0)))

    def _measurable(self, kind: str, evse: Any) -> bool:
        if kind == "maxCost":
            cost = self._local_cost()
            return cost is not None and evse.tx is not None and cost.prices(evse.tx.local_id)
        if kind == "maxSoC":
            return self._soc(evse) is not None
        return True

    def _local_cost(self) -> Any:
        from agent.ocpp.v21.local_cost import LocalCost21

        try:
            return self.adapter.block(LocalCost21)
        except (KeyError, LookupError):
            return None

    def _soc(self, evse: Any) -> float | None:
        """The EV's state of charge now, from the meter or the EV side (the core's metering
        decides which), or None when nothing reports it."""
        value = self.station.metering.measure(evse, ["SoC"], "Other")
        if value is None:
            return None
        return next((float(s.value) for s in value.samples if s.measurand == "SoC"), None)

    def _elapsed(self, tx: TxRecord) -> float | None:
        try:
            return self.clock.wall() - parse_iso(tx.started_at).timestamp()
        except (ValueError, TypeError, AttributeError):
            return None  # a stamp the clock could not resolve yet

    def _reached(self, evse: Any, snap: EvseSnapshot, tx: TxRecord,
                 limit: dict[str, float]) -> tuple[StopReason | None, float]:
        """The limit reached (or None) and how long to wait before looking again."""
        wait = self._poll_s()
        energy = snap.energy_wh
        if "maxEnergy" in limit and energy is not None and energy >= limit["maxEnergy"]:
            return StopReason.ENERGY_LIMIT, wait
        if "maxCost" in limit and (cost := self._local_cost()) is not None:
            spent = cost.cost_so_far(tx.local_id, snap)
            if spent is not None and spent >= Decimal(str(limit["maxCost"])):
                return StopReason.COST_LIMIT, wait
        if "maxSoC" in limit:
            soc = self._soc(evse)
            if soc is not None and soc >= limit["maxSoC"]:
                return StopReason.SOC_LIMIT, wait
        if "maxTime" in limit:
            elapsed = self._elapsed(tx)
            if elapsed is not None:
                left = limit["maxTime"] - elapsed
                if left <= 0:
                    return StopReason.TIME_LIMIT, wait
                wait = min(wait, left)
        return None, wait

    async def _watch(self, local_id: str) -> None:
        try:
            while (limit := self._limits.get(local_id)) is not None:
                evse = self.station.find_tx(local_id=local_id)
                tx = evse.tx if evse is not None else None
                if evse is None or tx is None:
                    record = self.storage.tx_get(local_id)
                    if record is None or record.closed:
                        self._forget(local_id)
                        return
                    await self.clock.sleep(self._poll_s())  # not running again yet
                    continue
                reason, wait = self._reached(evse, evse.snapshot(), tx, limit)
                if reason is not None:
                    log.info("transaction %s: %s (%s)", local_id, reason.value, limit)
                    if not await evse.deauthorize(reason):
                        await evse.end_transaction(reason)
                    return
                await self.clock.sleep(wait)
        finally:
            self._watching.discard(local_id)

    def transaction_ended(self, tx: TxRecord, reason: StopReason, snap: EvseSnapshot) -> None:
        self._forget(tx.local_id)
