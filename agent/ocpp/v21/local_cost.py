"""2.1 block I, local cost calculation (I07-I12): the station prices sessions itself from the
tariffs the CSMS gives it.

- I07 SetDefaultTariff: a default tariff for one EVSE (or, ``evseId`` 0, each EVSE). Its
  ``tariffId`` names its content: the same id with other content is ``DuplicateTariffId``, the
  same tariff again is Accepted (and installed at one more EVSE). A tariff with a ``validFrom``
  in the future waits; at each EVSE the newest tariff in force prices new transactions (one
  without ``validFrom`` counts from when it was installed) and the ones it supersedes are
  removed. More price elements than ``MaxElements[Tariff]``: ``TooManyElements``; an unknown
  EVSE, a bad tariff (:func:`agent.core.tariffs.parse_tariff` names the problem) or a station
  with tariffs disabled: ``Rejected`` with a reasonCode and the reason.
- I08 the driver's tariff: the ``tariff`` of an AuthorizeResponse prices the transaction of
  that idToken instead of the default (also when the authorization comes after the
  transaction began: it prices the whole transaction). One this station cannot use follows
  ``HandleFailedTariff[Tariff]``: ``UseDefaultTariff`` (the default prices it) or
  ``CentralCost`` (the station calculates nothing, the CSMS's totals are shown, I02/I03).
  Deauthorize is not offered (an authorization verdict is the core's, not a tariff's).
- I09 GetTariffs: the assignments: default tariffs with their EVSEs (narrowed to the one
  asked for) and ``validFrom``, the tariffs of running transactions (the EVSE and, for a
  driver's, the idToken), drivers' tariffs waiting for their transaction; ``NoTariff`` when
  there are none.
- I10 ClearTariffs: by ids and / or EVSE (0 or none: every EVSE); one result per id asked for
  (``NoTariff`` where it was not installed), or per tariff cleared, or one ``NoTariff``. A
  running transaction keeps the tariff it has (its own copy).
- I11 ChangeTransactionTariff: a new tariff from now on for a running, locally priced
  transaction (a new charging period, an Updated event ``TariffChanged`` with the cost so
  far); ``TxNotFound``, ``NoCurrencyChange``, ``TooManyElements``, ``ConditionNotSupported``,
  or ``Rejected`` (bad tariff, or a transaction whose cost the CSMS calculates).
- I12 the cost: every event of a locally priced transaction names its ``tariffId``; every
  ``Interval[Cost]`` seconds (with ``Enabled[RunningCost]``) an Updated event
  ``RunningCost`` carries ``costDetails`` with the cost so far, and the Ended event carries the
  final ``costDetails`` (charging periods, totals per dimension with and without tax,
  usage). The running and final totals are shown on the display (and so on the status page)
  through :class:`agent.core.cost.Costs`; a total the CSMS sends afterwards (CostUpdated, a
  ``totalCost``) is shown instead. The pricing itself is :mod:`agent.core.tariffs`.

Samples of a priced transaction are taken at least every ``Interval[Tariff]`` seconds, at
every change of its charging state, at every report and at its end, and kept with its tariffs
in the state file (:mod:`agent.storage.tariffs`), so a restart (a resumed transaction, or one
ended as PowerLoss) prices the same history: a cost once reported is never lowered.
Time-of-day conditions are local time: ``ClockCtrlr.TimeZone`` (an IANA name) or
``TimeOffset`` (``+01:00``), else UTC. The station is an AC one for ``evseKind``.

Variables (TariffCostCtrlr, the 2.1 appendix's dm_components_vars): ``Enabled[Tariff]`` and
``Enabled[Cost]`` (the same values as 2.0.1's tariff / cost display: both true for local
calculation), ``Available[Tariff]`` / ``Available[Cost]`` true, plus ``Enabled[RunningCost]``,
``Interval[Tariff]``, ``Interval[Cost]``, ``MaxElements[Tariff]``,
``ConditionsSupported[Tariff]`` and ``HandleFailedTariff[Tariff]`` here. Settlement and the
payment terminal (NotifySettlement, web and ad hoc payments, VatNumberValidation) are not
part of this; a TransactionEventResponse's ``transactionLimit.maxCost`` is not enforced.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar

from agent.clock import iso, parse_iso
from agent.core.model import EvseSnapshot, StopReason, Token, TxRecord
from agent.core.service_settings import COST_ENABLED, TARIFF_ENABLED
from agent.ocpp.blocks import handles
from agent.ocpp.v201.device_model import VarDef, VariableBlock, ro, rw
from agent.ocpp.v201.transactions import Transactions
from agent.storage import StorageError
from hal.interfaces import FaultKind

if TYPE_CHECKING:
    from agent.core.cost import Tariff
    from agent.core.tariffs import CostCalculator, CostResult, LocalTariff, Sample

# The tariff engine (agent/core/tariffs.py, with agent/core/cost.py) is imported where a tariff
# is parsed or a priced transaction sampled, not at the top: a station with no tariff never
# runs it, and it is ~0.3 MB of an idle 2.1 station's memory (issue 18).  Nothing here is on
# a path that switches or limits energy.

log = logging.getLogger("cp_agent.v21")

MAX_ELEMENTS = 16  # TariffCostCtrlr.MaxElements[Tariff]
MAX_DEFAULT_TARIFFS = 32  # installed at once
DRIVER_TARIFFS_KEPT = 32  # drivers' tariffs waiting for their transaction
DEFAULT, DRIVER, CENTRAL = "DefaultTariff", "DriverTariff", "Central"
FAILED_TARIFF = ("UseDefaultTariff", "CentralCost")
_OFFSET = re.compile(r"^([+-])(\d{2}):?(\d{2})$")


def status_info(code: str, text: str) -> dict[str, str]:
    return {"reasonCode": code[:20], "additionalInfo": text[:1024]}


def _sample_json(s: Sample) -> dict[str, Any]:
    out: dict[str, Any] = {"at": iso(s.at), "e": str(s.energy_wh), "c": s.charging}
    if s.power_w is not None:
        out["p"] = str(s.power_w)
    if s.current_a is not None:
        out["i"] = str(s.current_a)
    return out


def _sample_of(data: dict[str, Any]) -> Sample:
    from agent.core.tariffs import Sample

    return Sample(parse_iso(data["at"]), Decimal(data["e"]), bool(data["c"]),
                  Decimal(data["p"]) if "p" in data else None,
                  Decimal(data["i"]) if "i" in data else None)


def _amount(value: Decimal | None) -> int | float | None:
    from agent.core.tariffs import json_number

    return None if value is None else json_number(value)


def cost_details(result: CostResult) -> dict[str, Any]:
    """A :class:`CostResult` as 2.1 CostDetailsType."""
    from agent.core.tariffs import json_number

    periods = []
    for p in result.periods:
        dims: list[dict[str, Any]] = [{"type": "Energy", "volume": json_number(
            round(p.energy_wh, 3))}]
        if p.charging_s:
            dims.append({"type": "ChargingTime", "volume": json_number(round(p.charging_s, 3))})
        if p.idle_s:  # the schema spells it IdleTIme
            dims.append({"type": "IdleTIme", "volume": json_number(round(p.idle_s, 3))})
        for kind, value in (("MinPower", p.min_power_w), ("MaxPower", p.max_power_w),
                            ("MinCurrent", p.min_current_a), ("MaxCurrent", p.max_current_a)):
            if value is not None:
                dims.append({"type": kind, "volume": json_number(round(value, 3))})
        periods.append({"tariffId": p.tariff_id, "startPeriod": iso(p.start),
                        "dimensions": dims})
    total: dict[str, Any] = {"currency": result.currency, "typeOfCost": result.type_of_cost}
    for dim, amount in result.dimensions.items():
        price: dict[str, Any] = {"exclTax": _amount(amount.excl), "inclTax": _amount(amount.incl)}
        rates = result.tax_rates.get(dim) or ()
        if rates:
            price["taxRates"] = [r.as_dict() for r in rates][:5]
        total[dim] = price
    total["total"] = {k: v for k, v in (("exclTax", _amount(result.total.excl)),
                                        ("inclTax", _amount(result.total.incl)))
                      if v is not None}
    out: dict[str, Any] = {
        "totalCost": total,
        "totalUsage": {"energy": json_number(round(result.energy_wh, 3)),
                       # TotalUsageType: chargingTime is the whole session, idleTime the part
                       # without energy transfer.
                       "chargingTime": int(round(result.duration_s)),
                       "idleTime": int(round(result.idle_s))},
    }
    if periods:
        out["chargingPeriods"] = periods
    return out


def failed_details(currency: str, reason: str) -> dict[str, Any]:
    return {"failureToCalculate": True, "failureReason": reason[:500],
            "totalCost": {"currency": currency, "typeOfCost": "NormalCost", "total": {}},
            "totalUsage": {"energy": 0, "chargingTime": 0, "idleTime": 0}}


@dataclass
class Installed:
    """A default tariff and the EVSEs it is installed at."""

    raw: dict[str, Any]
    tariff: LocalTariff
    evses: set[int]
    installed_at: datetime
    seq: int

    @property
    def effective_from(self) -> datetime:
        return self.tariff.valid_from or self.installed_at


@dataclass
class Priced:
    """A transaction the station prices (or, kind CENTRAL, decided not to)."""

    local_id: str
    evse_id: int
    token: str | None
    kind: str
    segments: list[dict[str, Any]] = field(default_factory=list)  # {"from", "after", "tariff"}
    calc: CostCalculator | None = None
    samples: int = 0
    last_sample_mono: float = 0.0
    last_report_mono: float = 0.0
    last_charging: bool | None = None
    shown: Decimal | None = None
    done: bool = False

    def row(self) -> dict[str, Any]:
        return {"token": self.token, "kind": self.kind, "segments": self.segments}


class LocalCost21(VariableBlock):
    VARIABLES: ClassVar[tuple[VarDef, ...]] = (
        rw("TariffCostCtrlr", "Enabled", "boolean", "true", instance="RunningCost"),
        rw("TariffCostCtrlr", "Interval", "integer", "15", instance="Tariff", unit="s",
           min_limit=1, max_limit=3600),
        rw("TariffCostCtrlr", "Interval", "integer", "60", instance="Cost", unit="s",
           min_limit=1, max_limit=86400),
        ro("TariffCostCtrlr", "MaxElements", "integer", str(MAX_ELEMENTS), instance="Tariff"),
        ro("TariffCostCtrlr", "ConditionsSupported", "boolean", "true", instance="Tariff"),
        rw("TariffCostCtrlr", "HandleFailedTariff", "OptionList", FAILED_TARIFF[0],
           instance="Tariff", values_list=FAILED_TARIFF),
    )

    def __init__(self, adapter: Any) -> None:
        super().__init__(adapter)
        self._installed: dict[str, Installed] = {}
        self._priced: dict[str, Priced] = {}
        self._drivers: dict[str, tuple[dict[str, Any] | None, LocalTariff | None]] = {}
        self._loaded = False
        self._seq = 0

    # ------------------------------------------------------------------ settings

    def _var(self, name: str, instance: str | None = None) -> str:
        return self.dm.value("TariffCostCtrlr", name, instance, default="")

    def _interval(self, instance: str) -> float:
        try:
            return max(1.0, float(self._var("Interval", instance)))
        except ValueError:
            return 60.0

    def enabled(self) -> bool:
        """Local cost calculation on: TariffCostCtrlr.Enabled[Tariff] and Enabled[Cost]."""
        return bool(self.settings.get(TARIFF_ENABLED, True)) and \
            bool(self.settings.get(COST_ENABLED, True))

    def _tz(self) -> tzinfo:
        name = self.dm.value("ClockCtrlr", "TimeZone", default="").strip()
        if name:
            # zoneinfo (with sysconfig, for its TZPATH) is ~0.3 MB an idle station without a
            # time zone does not need (issue 18): imported by the first tariff that asks.
            from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

            try:
                return ZoneInfo(name)
            except (ZoneInfoNotFoundError, ValueError):
                log.warning("ClockCtrlr.TimeZone %r is not a time zone: tariffs use UTC", name)
        match = _OFFSET.match(self.dm.value("ClockCtrlr", "TimeOffset", default="").strip())
        if match:
            minutes = int(match.group(2)) * 60 + int(match.group(3))
            return timezone(timedelta(minutes=-minutes if match.group(1) == "-" else minutes))
        return UTC

    def _parse(self, raw: Any) -> LocalTariff:
        from agent.core.tariffs import parse_tariff

        return parse_tariff(raw, max_elements=MAX_ELEMENTS)

    def _costs(self) -> Any:
        return getattr(self.station, "cost", None)

    # ------------------------------------------------------------------ state file

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        try:
            rows = self.storage.tariffs_all()
            tx_rows = self.storage.tx_tariffs_all()
        except StorageError as exc:
            log.error("tariffs not read: %s", exc)
            return
        if not rows and not tx_rows:
            return
        from agent.core.tariffs import TariffError

        for tariff_id, raw, evses, installed_at in rows:
            try:
                self._seq += 1
                self._installed[tariff_id] = Installed(raw, self._parse(raw), set(evses),
                                                       parse_iso(installed_at), self._seq)
            except (TariffError, ValueError) as exc:
                log.warning("stored tariff %s dropped: %s", tariff_id, exc)
        for local_id, evse_id, data in tx_rows:
            try:
                priced = Priced(local_id, evse_id, data.get("token"), str(data["kind"]),
                                list(data.get("segments") or []))
                if priced.kind != CENTRAL:
                    self._replay(priced, self.storage.tx_cost_samples(local_id))
                self._priced[local_id] = priced
            except (KeyError, TypeError, ValueError, TariffError, StorageError) as exc:
                log.warning("stored tariff of transaction %s dropped: %s", local_id, exc)

    def _replay(self, priced: Priced, samples: list[dict[str, Any]]) -> None:
        """Rebuild the calculation from the kept samples, exactly as it went live."""
        from agent.core.tariffs import CostCalculator

        first = priced.segments[0]
        priced.calc = CostCalculator(parse_iso(first["from"]), self._parse(first["tariff"]),
                                     tz=self._tz())
        changes = priced.segments[1:]
        for n, data in enumerate(samples, start=1):
            priced.calc.add(_sample_of(data))
            for seg in changes:
                if seg.get("after") == n:
                    priced.calc.change_tariff(parse_iso(seg["from"]),
                                              self._parse(seg["tariff"]))
        priced.samples = len(samples)

    def _save_installed(self, inst: Installed) -> None:
        self.storage.tariff_put(inst.tariff.tariff_id, inst.raw, sorted(inst.evses),
                                iso(inst.installed_at))

    def _save_priced(self, priced: Priced) -> None:
        try:
            self.storage.tx_tariff_put(priced.local_id, priced.evse_id, priced.row())
        except StorageError as exc:
            log.error("transaction %s: tariff not saved: %s", priced.local_id, exc)

    # ------------------------------------------------------------------ default tariffs

    def _prune(self, now: datetime) -> None:
        """At each EVSE the newest tariff in force supersedes the older ones."""
        for evse_id in self.station.evses:
            here = [i for i in self._installed.values() if evse_id in i.evses]
            current = max((i for i in here if i.effective_from <= now),
                          key=lambda i: (i.effective_from, i.seq), default=None)
            if current is None:
                continue
            for inst in here:
                if inst is not current and (inst.effective_from, inst.seq) < (
                        current.effective_from, current.seq):
                    inst.evses.discard(evse_id)
                    self._persist(inst)

    def _persist(self, inst: Installed) -> None:
        try:
            if inst.evses:
                self._save_installed(inst)
            else:
                self._installed.pop(inst.tariff.tariff_id, None)
                self.storage.tariff_delete(inst.tariff.tariff_id)
        except StorageError as exc:
            log.error("tariff %s not saved: %s", inst.tariff.tariff_id, exc)

    def default_for(self, evse_id: int, at: datetime) -> Installed | None:
        """The default tariff that prices a transaction starting at ``at`` on ``evse_id``."""
        self._load()
        return max((i for i in self._installed.values()
                    if evse_id in i.evses and i.effective_from <= at),
                   key=lambda i: (i.effective_from, i.seq), default=None)

    @handles("SetDefaultTariff")
    async def set_default_tariff(self, p: dict) -> dict:
        from agent.core.tariffs import TariffError

        self._load()
        evse_id = int(p["evseId"])
        if not self.enabled():
            return {"status": "Rejected", "statusInfo": status_info(
                "Disabled", "tariffs are disabled (TariffCostCtrlr.Enabled[Tariff] / "
                "Enabled[Cost])")}
        if evse_id != 0 and evse_id not in self.station.evses:
            return {"status": "Rejected", "statusInfo": status_info(
                "UnknownEvse", f"this station has no EVSE {evse_id}")}
        try:
            tariff = self._parse(p["tariff"])
        except TariffError as exc:
            return {"status": exc.status, "statusInfo": status_info("InvalidTariff", str(exc))}
        raw = p["tariff"]
        existing = self._installed.get(tariff.tariff_id)
        if existing is not None and existing.raw != raw:
            return {"status": "DuplicateTariffId", "statusInfo": status_info(
                "DuplicateTariffId", f"tariff {tariff.tariff_id} is installed with other "
                "content: a changed tariff needs a new tariffId")}
        if existing is None and len(self._installed) >= MAX_DEFAULT_TARIFFS:
            return {"status": "Rejected", "statusInfo": status_info(
                "TooManyTariffs", f"at most {MAX_DEFAULT_TARIFFS} default tariffs are "
                "installed at once")}
        evses = set(self.station.evses) if evse_id == 0 else {evse_id}
        # At the precision of the timestamps it is compared with (a transaction's start is
        # stamped to the millisecond): a session started in the same millisecond is priced.
        now = parse_iso(iso(self.clock.now()))
        if existing is None:
            self._seq += 1
            existing = Installed(raw, tariff, set(), now, self._seq)
            self._installed[tariff.tariff_id] = existing
        existing.evses |= evses
        try:
            self._save_installed(existing)
        except StorageError as exc:
            existing.evses -= evses
            if not existing.evses:
                self._installed.pop(tariff.tariff_id, None)
            return {"status": "Rejected", "statusInfo": status_info("StorageError", str(exc))}
        self._prune(now)
        log.info("default tariff %s installed at EVSE %s", tariff.tariff_id,
                 ", ".join(str(e) for e in sorted(evses)))
        return {"status": "Accepted"}

    @handles("GetTariffs")
    async def get_tariffs(self, p: dict) -> dict:
        self._load()
        evse_id = int(p["evseId"])
        if not self.enabled():
            return {"status": "Rejected", "statusInfo": status_info(
                "Disabled", "tariffs are disabled")}
        if evse_id != 0 and evse_id not in self.station.evses:
            return {"status": "Rejected", "statusInfo": status_info(
                "UnknownEvse", f"this station has no EVSE {evse_id}")}
        self._prune(self.clock.now())
        found: dict[tuple[str, str], dict[str, Any]] = {}

        def add(tariff: LocalTariff, kind: str, evses: set[int], tokens: set[str]) -> None:
            if evse_id != 0:
                evses = evses & {evse_id}
                if not evses:
                    return
            entry = found.setdefault((tariff.tariff_id, kind), {
                "tariffId": tariff.tariff_id, "tariffKind": kind, "evses": set(),
                "tokens": set(), "validFrom": tariff.valid_from})
            entry["evses"] |= evses
            entry["tokens"] |= tokens

        for inst in self._installed.values():
            add(inst.tariff, DEFAULT, set(inst.evses), set())
        for priced in self._priced.values():
            if priced.kind == CENTRAL or priced.done or priced.calc is None:
                continue
            add(priced.calc.tariff, priced.kind, {priced.evse_id},
                {priced.token} if priced.kind == DRIVER and priced.token else set())
        if evse_id == 0:
            for token, (_, tariff) in self._drivers.items():
                if tariff is not None:
                    add(tariff, DRIVER, set(), {token})
        if not found:
            return {"status": "NoTariff"}
        out = []
        for entry in found.values():
            item: dict[str, Any] = {"tariffId": entry["tariffId"],
                                    "tariffKind": entry["tariffKind"]}
            if entry["validFrom"] is not None:
                item["validFrom"] = iso(entry["validFrom"])
            if entry["evses"]:
                item["evseIds"] = sorted(entry["evses"])
            if entry["tokens"]:
                item["idTokens"] = sorted(entry["tokens"])
            out.append(item)
        return {"status": "Accepted", "tariffAssignments": out}

    @handles("ClearTariffs")
    async def clear_tariffs(self, p: dict) -> dict:
        self._load()
        evse_id = p.get("evseId")
        where = set(self.station.evses) if not evse_id else {int(evse_id)}
        ids = p.get("tariffIds")
        results: list[dict[str, Any]] = []
        targets = ids if ids else [i for i, inst in self._installed.items()
                                   if inst.evses & where]
        for tariff_id in targets:
            inst = self._installed.get(tariff_id)
            if inst is None or not inst.evses & where:
                results.append({"tariffId": tariff_id, "status": "NoTariff"})
                continue
            inst.evses -= where
            self._persist(inst)
            results.append({"tariffId": tariff_id, "status": "Accepted"})
            log.info("default tariff %s cleared at EVSE %s", tariff_id,
                     ", ".join(str(e) for e in sorted(where)))
        return {"clearTariffsResult": results or [{"status": "NoTariff"}]}

    # ------------------------------------------------------------------ drivers' tariffs

    def authorize_answered(self, token: Token, answer: dict) -> None:
        """I08: the tariff of an AuthorizeResponse is the driver's (or, if this station
        cannot use it, HandleFailedTariff decides)."""
        raw = answer.get("tariff")
        if raw is None:
            return
        from agent.core.tariffs import REJECTED, TariffError

        self._load()
        try:
            if not self.enabled():
                raise TariffError(REJECTED, "tariffs are disabled")
            tariff: LocalTariff | None = self._parse(raw)
        except TariffError as exc:
            how = self._var("HandleFailedTariff", "Tariff") or FAILED_TARIFF[0]
            log.warning("driver's tariff for %s not usable (%s): %s", token.id, exc, how)
            if how != "CentralCost":
                return  # the default tariff prices the transaction
            raw, tariff = None, None  # the CSMS calculates
        self._drivers.pop(token.id, None)
        self._drivers[token.id] = (raw, tariff)
        while len(self._drivers) > DRIVER_TARIFFS_KEPT:
            del self._drivers[next(iter(self._drivers))]
        costs = self._costs()
        if tariff is not None and tariff.description and costs is not None:
            info = answer.get("idTokenInfo") or {}
            if not (isinstance(info, dict) and info.get("personalMessage")):
                known, languages = costs.driver_info(token.id)
                text = self._describe(tariff, languages)
                if text is not None and known is None:
                    costs.driver(token.id, text, languages)

    @staticmethod
    def _describe(tariff: LocalTariff, languages: tuple[str, ...]) -> Tariff | None:
        if not tariff.description:
            return None
        from agent.core.cost import Tariff

        wanted = [lang.split("-")[0].lower() for lang in languages]
        for lang in wanted:
            for content, language, fmt in tariff.description:
                if language and language.split("-")[0].lower() == lang:
                    return Tariff(content, language, fmt)
        content, language, fmt = tariff.description[0]
        return Tariff(content, language, fmt)

    # ------------------------------------------------------------------ pricing a transaction

    def _token_of(self, tx: TxRecord) -> str | None:
        return tx.id_token or tx.auth_token or None

    def _started_at(self, tx: TxRecord) -> datetime:
        stamp = self.clock.resolve(tx.started_at) if tx.started_at else None
        try:
            return parse_iso(stamp) if stamp else self.clock.now()
        except ValueError:
            return self.clock.now()

    def _priced_for(self, tx: TxRecord) -> Priced | None:
        """The pricing of ``tx``: found, or decided now (its first event)."""
        self._load()
        priced = self._priced.get(tx.local_id)
        if priced is not None:
            return None if priced.kind == CENTRAL else priced
        if not self.enabled():
            return None
        start = self._started_at(tx)
        token = self._token_of(tx)
        raw, tariff, kind = None, None, CENTRAL
        if token is not None and token in self._drivers:
            raw, tariff = self._drivers.pop(token)
            kind = DRIVER if tariff is not None else CENTRAL
        else:
            self._prune(start)
            inst = self.default_for(tx.evse_id, start)
            if inst is not None:
                raw, tariff, kind = inst.raw, inst.tariff, DEFAULT
        priced = Priced(tx.local_id, tx.evse_id, token, kind)
        self._priced[tx.local_id] = priced
        if tariff is None or raw is None:
            self._save_priced(priced)
            log.info("transaction %s: no tariff, its cost is the CSMS's", tx.local_id)
            return None
        from agent.core.tariffs import CostCalculator

        priced.segments = [{"from": iso(start), "after": 0, "tariff": raw}]
        priced.calc = CostCalculator(start, tariff, tz=self._tz())
        self._save_priced(priced)
        snap = self.station.evses[tx.evse_id].snapshot()
        self._sample(priced, snap, at=start, energy=Decimal(0))
        log.info("transaction %s priced by tariff %s (%s)", tx.local_id, tariff.tariff_id,
                 kind)
        self._tariff_text(priced, tariff)
        self._watch(priced)
        return priced

    def _tariff_text(self, priced: Priced, tariff: LocalTariff) -> None:
        costs = self._costs()
        if costs is None:
            return
        languages = costs.driver_info(priced.token)[1]
        text = self._describe(tariff, languages)
        known = costs.of(priced.local_id)
        if text is not None and (known is None or known.tariff is None):
            costs.tariff_update(priced.local_id, priced.evse_id, text, languages)

    def _sample(self, priced: Priced, snap: EvseSnapshot | None, *,
                at: datetime | None = None, energy: Decimal | None = None,
                charging: bool | None = None) -> None:
        """Take (and keep) a sample of the transaction now."""
        from agent.core.cost import CostError, to_decimal
        from agent.core.tariffs import Sample

        assert priced.calc is not None
        reading = snap.reading if snap is not None else None
        if energy is None:
            wh = snap.energy_wh if snap is not None else None
            try:
                energy = to_decimal(wh) if wh is not None else None
            except CostError:
                energy = None
            if energy is None:
                energy = priced.calc.result().energy_wh
        if charging is None:
            charging = snap is not None and snap.charging_state == "Charging"
        power = current = None
        if reading is not None:
            try:
                power = to_decimal(reading.power_w)
                if reading.current_a:
                    current = sum((to_decimal(a) for a in reading.current_a), Decimal(0))
            except CostError:
                power = current = None
        sample = Sample(at or self.clock.now(), energy, charging, power, current)
        priced.calc.add(sample)
        priced.samples += 1
        priced.last_sample_mono = self.clock.monotonic()
        priced.last_charging = charging
        try:
            self.storage.tx_cost_sample_add(priced.local_id, _sample_json(sample))
        except StorageError as exc:
            log.error("transaction %s: cost sample not saved: %s", priced.local_id, exc)

    def cost_so_far(self, local_id: str, snap: EvseSnapshot) -> Decimal | None:
        """What the transaction has cost up to ``snap`` (including tax where known), when
        this station prices it; None when its cost is the CSMS's (E16 maxCost)."""
        from agent.core.cost import CostError, to_decimal
        from agent.core.tariffs import Sample

        self._load()
        priced = self._priced.get(local_id)
        if priced is None or priced.kind == CENTRAL or priced.calc is None or priced.done:
            return None
        wh = snap.energy_wh
        try:
            energy = to_decimal(wh) if wh is not None else priced.calc.result().energy_wh
        except CostError:
            energy = priced.calc.result().energy_wh
        sample = Sample(self.clock.now(), energy, snap.charging_state == "Charging", None, None)
        return priced.calc.preview(sample).total.shown

    def prices(self, local_id: str) -> bool:
        """Whether this station prices the transaction (its tariff decided, not central)."""
        self._load()
        priced = self._priced.get(local_id)
        return priced is not None and priced.kind != CENTRAL and priced.calc is not None

    def _show(self, priced: Priced, result: CostResult, *, final: bool = False) -> None:
        from agent.core.cost import CostError

        costs = self._costs()
        total = result.total.shown
        if costs is None or (total == priced.shown and not final):
            return
        priced.shown = total
        try:
            costs.update(priced.local_id, priced.evse_id, total, final=final)
        except CostError as exc:  # pragma: no cover - a Decimal is always an amount
            log.warning("transaction %s: cost not shown: %s", priced.local_id, exc)

    def _watch(self, priced: Priced) -> None:
        priced.last_report_mono = self.clock.monotonic()
        self.adapter.spawn(self._run(priced), f"v21-local-cost-{priced.local_id}")

    async def _run(self, priced: Priced) -> None:
        """Sample every Interval[Tariff]; report every Interval[Cost] (RunningCost)."""
        while not priced.done:
            now = self.clock.monotonic()
            next_sample = priced.last_sample_mono + self._interval("Tariff")
            running = self._var("Enabled", "RunningCost").lower() == "true"
            next_report = priced.last_report_mono + self._interval("Cost") if running \
                else float("inf")
            await self.clock.sleep(max(0.05, min(next_sample, next_report) - now))
            if priced.done:
                return
            evse = self.station.find_tx(local_id=priced.local_id)
            if evse is None or evse.tx is None:
                if self.storage.tx_get(priced.local_id) is None:
                    return
                continue  # not running (yet) after a restart
            now = self.clock.monotonic()
            if running and now >= priced.last_report_mono + self._interval("Cost") \
                    and self.adapter.active and self.adapter.online:  # none queued offline
                priced.last_report_mono = now
                self._sample(priced, evse.snapshot())
                self.adapter.block(Transactions).updated(evse.tx, "RunningCost", meter=[])
            elif now >= priced.last_sample_mono + self._interval("Tariff"):
                self._sample(priced, evse.snapshot())
            assert priced.calc is not None
            self._show(priced, priced.calc.result())

    def status_changed(self, snap: EvseSnapshot, fault: FaultKind | None) -> None:
        """A change of the charging state is a sample (charging time / idle time)."""
        if snap.tx is None:
            return
        priced = self._priced.get(snap.tx.local_id)
        if priced is None or priced.kind == CENTRAL or priced.done or priced.calc is None:
            return
        if (snap.charging_state == "Charging") != priced.last_charging:
            self._sample(priced, snap)
            self._show(priced, priced.calc.result())

    def session_event(self, evse_id: int, event: str, detail: dict) -> None:
        """A driver authorized after the transaction began: their tariff prices it."""
        if event != "authorized":
            return
        evse = self.station.evses.get(evse_id)
        tx = evse.tx if evse is not None else None
        token = str(detail.get("token") or "")
        if tx is None or token not in self._drivers:
            return
        priced = self._priced.get(tx.local_id)
        raw, tariff = self._drivers[token]
        if priced is None or priced.kind == DRIVER or priced.done:
            return
        del self._drivers[token]
        start = self._started_at(tx)
        priced.token = token
        try:
            self.storage.tx_tariff_forget(tx.local_id)
        except StorageError as exc:
            log.error("transaction %s: old tariff not removed: %s", tx.local_id, exc)
        if tariff is None or raw is None:  # the driver's cost is the CSMS's
            priced.kind, priced.calc, priced.segments = CENTRAL, None, []
            priced.done = True
            self._save_priced(priced)
            return
        was_watched = priced.calc is not None
        priced.kind, priced.samples = DRIVER, 0
        from agent.core.tariffs import CostCalculator

        priced.segments = [{"from": iso(start), "after": 0, "tariff": raw}]
        priced.calc = CostCalculator(start, tariff, tz=self._tz())
        self._save_priced(priced)
        self._sample(priced, evse.snapshot(), at=start, energy=Decimal(0))
        self._sample(priced, evse.snapshot())
        log.info("transaction %s: the driver's tariff %s prices it", tx.local_id,
                 tariff.tariff_id)
        self._tariff_text(priced, tariff)
        if not was_watched:
            self._watch(priced)

    # ------------------------------------------------------------------ the events' fields

    def transaction_event_extra(self, tx: TxRecord, payload: dict) -> None:
        """Called by the transactions block for every TransactionEvent it queues: the
        tariffId and, for RunningCost / TariffChanged / Ended, the costDetails."""
        try:
            priced = self._priced_for(tx)
            if priced is None or priced.calc is None:
                return
            payload["transactionInfo"]["tariffId"] = priced.calc.tariff.tariff_id
            trigger = payload.get("triggerReason")
            if payload.get("eventType") == "Ended":
                self._final_sample(priced, tx, payload)
            elif trigger not in ("RunningCost", "TariffChanged"):
                return
            result = priced.calc.result()
            payload["costDetails"] = cost_details(result)
            self._show(priced, result, final=payload.get("eventType") == "Ended")
        except Exception as exc:  # noqa: BLE001 - the event goes, with the failure named
            log.exception("transaction %s: cost not calculated", tx.local_id)
            if payload.get("eventType") == "Ended" or payload.get("triggerReason") in (
                    "RunningCost", "TariffChanged"):
                costs = self._costs()
                currency = costs.currency if costs is not None else "EUR"
                payload["costDetails"] = failed_details(currency, f"{type(exc).__name__}")

    def _final_sample(self, priced: Priced, tx: TxRecord, payload: dict) -> None:
        from agent.core.cost import CostError, to_decimal

        assert priced.calc is not None
        priced.done = True
        stamp = self.clock.resolve(str(payload.get("timestamp") or ""))
        try:
            at = parse_iso(stamp) if stamp else self.clock.now()
        except ValueError:
            at = self.clock.now()
        energy = None
        if tx.meter_stop_wh is not None:
            try:
                energy = to_decimal(tx.meter_stop_wh) - to_decimal(tx.meter_start_wh)
            except CostError:
                energy = None
        evse = self.station.evses.get(tx.evse_id)
        snap = evse.snapshot() if evse is not None and evse.tx is tx else None
        self._sample(priced, snap, at=at, energy=energy, charging=False)

    def transaction_ended(self, tx: TxRecord, reason: StopReason, snap: EvseSnapshot) -> None:
        self._forget(tx.local_id)

    def transaction_recovered(self, tx: TxRecord) -> None:
        self._forget(tx.local_id)

    def transaction_resumed(self, tx: TxRecord, snap: EvseSnapshot) -> None:
        self._load()
        priced = self._priced.get(tx.local_id)
        if priced is not None and priced.kind != CENTRAL and priced.calc is not None:
            self._watch(priced)

    def _forget(self, local_id: str) -> None:
        priced = self._priced.pop(local_id, None)
        if priced is not None:
            priced.done = True
        try:
            self.storage.tx_tariff_forget(local_id)
        except StorageError as exc:
            log.error("transaction %s: tariff not forgotten: %s", local_id, exc)

    # ------------------------------------------------------------------ I11

    @handles("ChangeTransactionTariff")
    async def change_transaction_tariff(self, p: dict) -> dict:
        from agent.core.tariffs import TariffError

        self._load()
        local_id = str(p["transactionId"])
        evse = self.station.find_tx(local_id=local_id)
        if evse is None or evse.tx is None:
            return {"status": "TxNotFound", "statusInfo": status_info(
                "TxNotFound", f"no transaction {local_id} runs on this station")}
        tx = evse.tx
        try:
            tariff = self._parse(p["tariff"])
        except TariffError as exc:
            return {"status": exc.status, "statusInfo": status_info("InvalidTariff", str(exc))}
        priced = self._priced_for(tx)
        if priced is None or priced.calc is None:
            return {"status": "Rejected", "statusInfo": status_info(
                "CentralCost", "the CSMS calculates the cost of this transaction")}
        if tariff.currency != priced.calc.currency:
            return {"status": "NoCurrencyChange", "statusInfo": status_info(
                "NoCurrencyChange", f"the transaction is priced in {priced.calc.currency}, "
                f"not {tariff.currency}")}
        now = self.clock.now()
        self._sample(priced, evse.snapshot(), at=now)
        priced.calc.change_tariff(now, tariff)
        priced.segments.append({"from": iso(now), "after": priced.samples,
                                "tariff": p["tariff"]})
        if priced.kind == DEFAULT:
            priced.kind = DRIVER  # a tariff for this transaction alone
        self._save_priced(priced)
        log.info("transaction %s: tariff %s from now on", local_id, tariff.tariff_id)
        costs = self._costs()
        text = self._describe(tariff, costs.driver_info(priced.token)[1]
                              if costs is not None else ())
        if text is not None and costs is not None:
            costs.tariff_update(local_id, evse.id, text)
        self.adapter.block(Transactions).updated(tx, "TariffChanged", meter=[])
        return {"status": "Accepted"}
