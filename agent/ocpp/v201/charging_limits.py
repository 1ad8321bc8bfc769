"""2.0.1 block K, external charging limits (use cases K11-K14): what the energy manager at the
station does, told to the CSMS.

The station has two limit sources that are an external system's rather than the CSMS's: local
load management (the site's connection shared among the EVSEs, limit source ``site``) and the
MQTT energy manager (``mqtt``).  The core keeps the limit each sets, per EVSE and for the whole
station, as an in-memory ExternalConstraints profile with chargingLimitSource EMS
(:meth:`agent.core.charging_profiles.ChargingProfiles.set_external`), which the composite
schedule includes (K11.FR.06).  This block tells the CSMS of them:

- NotifyChargingLimit (K11.FR.02, K12.FR.02) when a limit appears, or changes by more than
  SmartChargingCtrlr.LimitChangeSignificance percent of the value last told, with the
  schedule when SmartChargingCtrlr.NotifyChargingLimitWithSchedules is true (K11.FR.03,
  K12.FR.03); never with chargingLimitSource CSO (K11.FR.05, K12.FR.04); evseId only for an
  EVSE (the schema: > 0), none for the station's own limit;
- ClearedChargingLimit (K13.FR.02) when it goes;
- TransactionEvent(Updated, ChargingRateChanged) (K11.FR.04, K13.FR.03) when such a change
  moves the rate offered to a running transaction by more than LimitChangeSignificance.

K14 (a local controller in between) puts no requirement on the station.  Load management
samples every second, so small steps are not reported (the significance), and one EVSE's
reports are at least :data:`REPORT_INTERVAL_S` apart: a limit that keeps moving is told as
it stands then, not every step of the way (a new limit and a cleared one are told at once).
NotifyChargingLimit is not a transaction message, so it is not queued while offline: after a
reconnect what differs from what the CSMS was told goes out.  1.6 has no such messages; the
core's external limits do not touch it.
"""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar

from agent.clock import iso
from agent.core.charging_profiles import EXTERNAL_PROFILE_ID, EXTERNAL_SOURCES
from agent.core.model import EvseSnapshot, StopReason, TxPoint, TxRecord
from agent.link.rpc import CallFailed, ConnectionLost
from agent.ocpp.v201.device_model import VarDef, VariableBlock, ro, rw
from agent.ocpp.v201.transactions import Transactions

log = logging.getLogger("cp_agent.v201")

CTRLR = "SmartChargingCtrlr"
REPORT_INTERVAL_S = 10.0  # the least time between two updates of one EVSE's limit / rate
IDLE_S = 3600.0


def significant(old: float | Decimal, new: float | Decimal, percent: float) -> bool:
    """Whether ``new`` differs from ``old`` by more than ``percent`` percent of ``old`` (from
    0 any change is)."""
    old_f, new_f = float(old), float(new)
    if old_f == new_f:
        return False
    if old_f == 0:
        return True
    return abs(new_f - old_f) * 100.0 > percent * abs(old_f) + 1e-9


def _number(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


class ChargingLimits(VariableBlock):
    VARIABLES: ClassVar[tuple[VarDef, ...]] = (
        rw(CTRLR, "LimitChangeSignificance", "decimal", "10", unit="Percent",
           min_limit=0, max_limit=100),
        rw(CTRLR, "NotifyChargingLimitWithSchedules", "boolean", "false"),
        # The site limit protects the connection's fuse and the MQTT limit is the installer's
        # energy manager: the station always follows them, whatever a CSMS would like.
        ro(CTRLR, "ExternalControlSignalsEnabled", "boolean", "true"),
    )

    def __init__(self, adapter: Any) -> None:
        super().__init__(adapter)
        # What the CSMS was told: EVSE (0: station) -> (amps, chargingLimitSource).
        self._told: dict[int, tuple[Decimal, str]] = {}
        self._told_at: dict[int, float] = {}  # EVSE -> monotonic time of the last update
        self._rate_told: dict[str, float] = {}  # transaction (local id) -> rate told / at start
        self._rate_at: dict[str, float] = {}
        self._rate_dirty: set[int] = set()  # EVSEs whose rate an external change may move
        self._dirty = asyncio.Event()
        self.notified = 0  # reports sent (tests)
        self.passes = 0  # looks at what changed (tests wait on it)
        service = getattr(self.station, "charging_profiles", None)
        if service is not None:
            service.external_listeners.append(self._external_changed)

    @property
    def service(self) -> Any:
        return self.station.charging_profiles

    # ------------------------------------------------------------------ core events

    def _external_changed(self, evse_id: int) -> None:
        if not self.adapter.active:
            return
        self._rate_dirty.update(self.station.evses if evse_id == 0 else (evse_id,))
        self._dirty.set()

    def transaction_started(self, tx: TxRecord, snap: EvseSnapshot, trigger: TxPoint) -> None:
        self._rate_told[tx.local_id] = snap.limit_a

    def transaction_ended(self, tx: TxRecord, reason: StopReason, snap: EvseSnapshot) -> None:
        self._rate_told.pop(tx.local_id, None)
        self._rate_at.pop(tx.local_id, None)

    def session_started(self) -> None:
        self._dirty.set()  # what changed while offline
        self._rate_dirty.update(self.station.evses)
        self.adapter.spawn(self._reporter(), "v201-charging-limits", session=True)

    # ------------------------------------------------------------------ reporting

    def _significance(self) -> float:
        try:
            value = float(Decimal(self.dm.value(CTRLR, "LimitChangeSignificance")))
        except (InvalidOperation, ValueError, LookupError):
            value = 10.0
        return min(100.0, max(0.0, value))

    async def _reporter(self) -> None:
        """Tell the CSMS what changed, one message at a time, until the connection goes."""
        while True:
            self._dirty.clear()
            wait = IDLE_S
            try:
                for evse_id in (0, *sorted(self.station.evses)):
                    wait = min(wait, await self._report_limit(evse_id))
                dirty, self._rate_dirty = self._rate_dirty, set()
                for evse_id in sorted(dirty):
                    later = self._report_rate(evse_id)
                    if later is not None:
                        self._rate_dirty.add(evse_id)
                        wait = min(wait, later)
            except ConnectionLost:
                return
            self.passes += 1
            if not self._dirty.is_set():
                await self.adapter.sleep_or(wait, self._dirty)

    def _hold_off(self, last: float | None) -> float:
        """Seconds until another update may go (0: now)."""
        if last is None:
            return 0.0
        return max(0.0, last + REPORT_INTERVAL_S - self.clock.monotonic())

    async def _report_limit(self, evse_id: int) -> float:
        """Tell one EVSE's (0: the station's) external limit if it needs telling; the seconds
        until it may need another look (an update held back), else IDLE_S."""
        now = self.service.external_limit(evse_id)
        told = self._told.get(evse_id)
        if now is None:
            if told is None:
                return IDLE_S
            payload: dict[str, Any] = {"chargingLimitSource": told[1]}
            if evse_id > 0:
                payload["evseId"] = evse_id
            await self._send("ClearedChargingLimit", payload)
            self._told.pop(evse_id, None)
            self._told_at.pop(evse_id, None)
            log.info("external charging limit on %s cleared: told the CSMS",
                     f"EVSE {evse_id}" if evse_id else "the station")
            return IDLE_S
        amps, source = now
        limit_source, critical = EXTERNAL_SOURCES.get(source, ("Other", False))
        if limit_source == "CSO":  # K11.FR.05 / K12.FR.04: never CSO
            limit_source = "Other"
        if told is not None:
            if not significant(told[0], amps, self._significance()):
                return IDLE_S
            wait = self._hold_off(self._told_at.get(evse_id))
            if wait > 0:
                return wait
        payload = {"chargingLimit": {"chargingLimitSource": limit_source,
                                     "isGridCritical": critical}}
        if evse_id > 0:
            payload["evseId"] = evse_id
        if self.dm.flag(CTRLR, "NotifyChargingLimitWithSchedules"):
            profile = self.service.external_profile(evse_id)
            if profile is not None:
                schedule = profile.schedules[0]
                payload["chargingSchedule"] = [{
                    "id": EXTERNAL_PROFILE_ID + evse_id, "chargingRateUnit": "A",
                    "startSchedule": iso(schedule.start),
                    "chargingSchedulePeriod": [
                        {"startPeriod": q.start_s, "limit": _number(Decimal(str(q.limit)))}
                        for q in schedule.periods]}]
        await self._send("NotifyChargingLimit", payload)
        self._told[evse_id] = (amps, limit_source)
        if told is not None:
            self._told_at[evse_id] = self.clock.monotonic()
        log.info("external charging limit on %s: %s A (%s): told the CSMS",
                 f"EVSE {evse_id}" if evse_id else "the station", amps, source)
        return IDLE_S

    def _report_rate(self, evse_id: int) -> float | None:
        """K11.FR.04 / K13.FR.03: an Updated(ChargingRateChanged) of the running transaction
        when the rate offered moved significantly; the seconds to wait if held back."""
        evse = self.station.evses.get(evse_id)
        snap = evse.snapshot() if evse is not None else None
        if snap is None or snap.tx is None:
            return None
        tx = snap.tx
        rate = snap.limit_a
        before = self._rate_told.setdefault(tx.local_id, rate)
        if not significant(before, rate, self._significance()):
            return None
        wait = self._hold_off(self._rate_at.get(tx.local_id))
        if wait > 0:
            return wait
        self.adapter.block(Transactions).updated(tx, "ChargingRateChanged", meter=[])
        self._rate_told[tx.local_id] = rate
        self._rate_at[tx.local_id] = self.clock.monotonic()
        log.info("evse %s: charging rate %g A -> %g A after an external limit: "
                 "TransactionEvent ChargingRateChanged", evse_id, before, rate)
        return None

    async def _send(self, action: str, payload: dict) -> None:
        try:
            await self.adapter.call(action, payload)
        except ConnectionLost:
            raise
        except CallFailed as exc:  # answered with an error, or not in time: told all the same
            log.warning("%s: %s", action, exc)
        self.notified += 1


__all__ = ["ChargingLimits", "significant"]
