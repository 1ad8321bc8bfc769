"""Local cost calculation (OCPP 2.1 block I, I07-I12): a tariff structure and what a session
cost under it, in exact decimals.

2.1 lets the CSMS hand the station a machine-readable tariff (``TariffType``) instead of a
text, so that the station prices the session itself: the running cost on its display without a
round trip per kWh, and the cost breakdown (``CostDetailsType``) in the last transaction
event. This module is the pure part of it: :func:`parse_tariff` turns a tariff as the CSMS sent
it into a :class:`LocalTariff` (or raises :class:`TariffError` naming what is wrong and which
answer status that is), and :class:`CostCalculator` prices a session's timeline of
:class:`Sample` (wall time, the transaction's energy, charging or idle, power, current). No
clock, no storage, no OCPP message: the 2.1 block (:mod:`agent.ocpp.v21.local_cost`) feeds it
and says the result the 2.1 way.

How a session is priced (the reading this station takes where the spec leaves room):

- A sample holds from its time until the next one: its charging state decides whether the
  time between them is charging time or idle time, its power and current are what a power or
  current condition sees in that stretch. The energy between two samples is spread over the
  stretch in proportion to time (nothing finer is known).
- Conditions that are predictable are followed exactly: a stretch is cut where a time of day
  (``startTimeOfDay`` / ``endTimeOfDay``, local time) or a day (``dayOfWeek``, dates)
  changes, where the transaction's duration, charging time or idle time crosses a
  ``min/max(Charging|Idle)Time``, and where its energy crosses a ``minEnergy`` / ``maxEnergy``.
  Power and current conditions are what the samples say (the 2.1 block samples at least every
  ``TariffCostCtrlr.Interval[Tariff]`` seconds, the spec's bound for them). Each piece is priced
  at the first price element of each dimension whose conditions all hold in it (evaluated at
  the piece's middle, so a cut exactly on a boundary is never ambiguous); no element: that
  dimension costs nothing there. ``minIdleTime`` / ``maxIdleTime`` count the idle time of the
  whole transaction so far, as ``idleTime`` does.
- Energy is priced per kWh (samples are in Wh), charging and idle time per minute (to the
  microsecond). The fixed fee is the first ``fixedFee`` element whose conditions hold at the
  start of the transaction, charged once in its first period. ``paymentBrand`` /
  ``paymentRecognition`` conditions never hold (this station takes no ad hoc payments), nor
  does an ``evseKind`` other than the station's. Reservation prices are accepted and not
  charged (the station does not know how long the reservation before the session lasted).
- A charging period (``ChargingPeriodType``) lasts while the same tariff and the same price
  element of energy, charging time and idle time apply; a new one starts when any of them
  changes (a time-of-day change, an idle fee starting, a new tariff for the transaction).
- Taxes: each dimension's ``taxRates`` apply to its amount excluding tax; rates of stack 0 on
  the net amount, stack 1 on the amount with the stack 0 taxes, and so on (rates of one stack
  level add up). Without ``taxRates`` a dimension carries no tax (inclTax = exclTax).
- Arithmetic is :class:`decimal.Decimal` (50 significant digits), never a float; what is
  summed is fixed-point (cut instants to the microsecond, energy to the micro-Wh, each
  piece's cost to 10^-12 of the currency), so every sum is exact and the cost of a session
  is exactly the sum of its periods. What is *reported* is rounded half up to the
  currency's minor unit (ISO 4217, e.g. 2 digits for EUR, 0 for JPY): each dimension's exclTax
  and inclTax, and the total as the sum of the rounded dimensions, so that the lines of a
  receipt add up to its total.
- ``minCost`` / ``maxCost`` bound each half of the rounded total: exclTax by the bound's
  exclTax, inclTax by its inclTax; below the minimum a half is the minimum (``typeOfCost``
  MinCost), above the maximum the maximum (MaxCost); the dimensions stay as calculated. A bound
  given only in exclTax has the inclTax its own taxRates give (none: the same amount, so the
  driver never pays more than the amount the bound states); one given only in inclTax does not
  bound exclTax.
- Cost never decreases during a session: prices and taxes must not be negative
  (:func:`parse_tariff` refuses them; discharge rewards are not supported), every piece adds
  to the total, and the bounds are monotone. The timeline a cost was reported from must be
  kept: the next cost extends it (:class:`CostCalculator` is incremental for that reason).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from decimal import ROUND_HALF_UP, Decimal, localcontext
from typing import Any

from agent.core.cost import MINOR_UNITS, CostError, to_decimal

PRECISION = 50  # significant digits of every calculation
# Fixed-point resolution of what is summed: cut instants (s), energy (Wh), each piece's cost.
# With them every sum is exact, so a session is exactly the sum of its periods.
TIME_Q = Decimal("1e-6")
ENERGY_Q = Decimal("1e-6")
COST_Q = Decimal("1e-12")
MAX_PIECES = 10_000  # per sample interval: a clock jump never turns into an endless loop
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
DIMENSIONS = ("fixed", "energy", "chargingTime", "idleTime")
_TIME = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])$")
_DATE = re.compile(r"^[12][0-9]{3}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$")
_CURRENCY = re.compile(r"^[A-Z]{3}$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
ZERO = Decimal(0)

# TariffSetStatusEnumType / TariffChangeStatusEnumType values a bad tariff is answered with.
REJECTED = "Rejected"
TOO_MANY_ELEMENTS = "TooManyElements"
CONDITION_NOT_SUPPORTED = "ConditionNotSupported"


class TariffError(ValueError):
    """A tariff this station cannot use: ``status`` is the answer (Rejected, TooManyElements,
    ConditionNotSupported), the message names the field and the problem."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


# ====================================================================== the model


@dataclass(frozen=True)
class TaxRate:
    type: str
    tax: Decimal  # percent
    stack: int = 0

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "tax": _json_number(self.tax)}
        if self.stack:
            out["stack"] = self.stack
        return out


@dataclass(frozen=True)
class Conditions:
    """TariffConditionsType (and the fixed price's reduced TariffConditionsFixedType)."""

    start_time: int | None = None  # seconds after local midnight
    end_time: int | None = None
    days: frozenset[int] | None = None  # 0 = Monday
    valid_from: date | None = None  # local, inclusive
    valid_to: date | None = None  # local, exclusive
    evse_kind: str | None = None
    payment: bool = False  # paymentBrand / paymentRecognition (never holds here)
    min_energy: Decimal | None = None  # Wh of the transaction
    max_energy: Decimal | None = None
    min_current: Decimal | None = None  # A, sum of the phases
    max_current: Decimal | None = None
    min_power: Decimal | None = None  # W
    max_power: Decimal | None = None
    min_time: Decimal | None = None  # s since the transaction started
    max_time: Decimal | None = None
    min_charging_time: Decimal | None = None  # s of charging so far
    max_charging_time: Decimal | None = None
    min_idle_time: Decimal | None = None  # s of idle time so far
    max_idle_time: Decimal | None = None

    def times_of_day(self) -> set[int]:
        return {t for t in (self.start_time, self.end_time) if t is not None}


@dataclass(frozen=True)
class PriceElement:
    price: Decimal  # per kWh, per minute or fixed, excluding tax
    conditions: Conditions | None = None


@dataclass(frozen=True)
class Component:
    """One dimension of a tariff: its price elements (the first that applies counts) and taxes."""

    prices: tuple[PriceElement, ...]
    tax_rates: tuple[TaxRate, ...] = ()


@dataclass(frozen=True)
class Bound:
    """A minCost / maxCost (PriceType): at least one of the two halves."""

    excl: Decimal | None
    incl: Decimal | None
    tax_rates: tuple[TaxRate, ...] = ()


@dataclass(frozen=True)
class LocalTariff:
    tariff_id: str
    currency: str
    energy: Component | None = None
    charging_time: Component | None = None
    idle_time: Component | None = None
    fixed_fee: Component | None = None
    min_cost: Bound | None = None
    max_cost: Bound | None = None
    valid_from: datetime | None = None
    # (content, language, format) of the description for the driver
    description: tuple[tuple[str, str | None, str], ...] = ()

    def timed(self) -> tuple[Component | None, Component | None, Component | None]:
        return self.energy, self.charging_time, self.idle_time

    def has_conditions(self) -> bool:
        return any(p.conditions is not None for c in (*self.timed(), self.fixed_fee)
                   if c is not None for p in c.prices)


# ====================================================================== parsing


def _number(value: Any, where: str, *, negative: bool = False) -> Decimal:
    try:
        number = to_decimal(value)
    except CostError:
        raise TariffError(REJECTED, f"{where} {value!r} is not a number") from None
    if number < 0 and not negative:
        raise TariffError(REJECTED, f"{where} {value} is negative (this station prices "
                                    "charging only; discharge rewards are not supported)")
    return number


def _time_of_day(value: Any, where: str) -> int:
    match = _TIME.match(value) if isinstance(value, str) else None
    if match is None:
        raise TariffError(REJECTED, f"{where} {value!r} is not a time of day HH:MM")
    return int(match.group(1)) * 3600 + int(match.group(2)) * 60


def _date(value: Any, where: str) -> date:
    if not isinstance(value, str) or not _DATE.match(value):
        raise TariffError(REJECTED, f"{where} {value!r} is not a date YYYY-MM-DD")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise TariffError(REJECTED, f"{where} {value!r} is not a date") from None


def _range(c: dict, lo: str, hi: str, where: str, *, integer: bool = False
           ) -> tuple[Decimal | None, Decimal | None]:
    low = _number(c[lo], f"{where}.{lo}", negative=True) if lo in c else None
    high = _number(c[hi], f"{where}.{hi}", negative=True) if hi in c else None
    for name, v in ((lo, low), (hi, high)):
        if integer and v is not None and v != v.to_integral_value():
            raise TariffError(REJECTED, f"{where}.{name} {v} is not a whole number of seconds")
    if low is not None and high is not None and (
            (low >= 0 and high >= 0 and high <= low) or (low < 0 and high < 0 and high >= low)):
        raise TariffError(REJECTED, f"{where}: {hi} {high} is not beyond {lo} {low} "
                                    "(the range is empty)")
    return low, high


def _conditions(c: Any, where: str, *, fixed: bool) -> Conditions:
    if not isinstance(c, dict):
        raise TariffError(REJECTED, f"{where} is not an object")
    days = None
    if "dayOfWeek" in c:
        names = c["dayOfWeek"]
        if not isinstance(names, list) or not names or any(d not in DAYS for d in names):
            raise TariffError(REJECTED, f"{where}.dayOfWeek {names!r} is not a list of days "
                                        "Monday..Sunday")
        days = frozenset(DAYS.index(d) for d in names)
    start = _time_of_day(c["startTimeOfDay"], f"{where}.startTimeOfDay") \
        if "startTimeOfDay" in c else None
    end = _time_of_day(c["endTimeOfDay"], f"{where}.endTimeOfDay") \
        if "endTimeOfDay" in c else None
    valid_from = _date(c["validFromDate"], f"{where}.validFromDate") \
        if "validFromDate" in c else None
    valid_to = _date(c["validToDate"], f"{where}.validToDate") if "validToDate" in c else None
    if valid_from is not None and valid_to is not None and valid_to <= valid_from:
        raise TariffError(REJECTED, f"{where}: validToDate {valid_to} is not after "
                                    f"validFromDate {valid_from}")
    kind = c.get("evseKind")
    if kind is not None and kind not in ("AC", "DC"):
        raise TariffError(REJECTED, f"{where}.evseKind {kind!r} is neither AC nor DC")
    base = Conditions(start, end, days, valid_from, valid_to, kind,
                      payment="paymentBrand" in c or "paymentRecognition" in c)
    if fixed:
        return base
    e = _range(c, "minEnergy", "maxEnergy", where)
    i = _range(c, "minCurrent", "maxCurrent", where)
    p = _range(c, "minPower", "maxPower", where)
    t = _range(c, "minTime", "maxTime", where, integer=True)
    ct = _range(c, "minChargingTime", "maxChargingTime", where, integer=True)
    it = _range(c, "minIdleTime", "maxIdleTime", where, integer=True)
    return Conditions(start, end, days, valid_from, valid_to, kind, base.payment,
                      *e, *i, *p, *t, *ct, *it)


def _tax_rates(items: Any, where: str) -> tuple[TaxRate, ...]:
    if items is None:
        return ()
    if not isinstance(items, list):
        raise TariffError(REJECTED, f"{where}.taxRates is not a list")
    out = []
    for n, item in enumerate(items):
        w = f"{where}.taxRates[{n}]"
        if not isinstance(item, dict) or not isinstance(item.get("type"), str):
            raise TariffError(REJECTED, f"{w} has no type")
        stack = item.get("stack", 0)
        if not isinstance(stack, int) or isinstance(stack, bool) or stack < 0:
            raise TariffError(REJECTED, f"{w}.stack {stack!r} is not a level 0, 1, 2, ...")
        out.append(TaxRate(item["type"], _number(item.get("tax"), f"{w}.tax"), stack))
    return tuple(out)


def _component(data: Any, name: str, price_key: str, *, max_elements: int,
               conditions_supported: bool) -> Component | None:
    if data is None:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("prices"), list) or \
            not data["prices"]:
        raise TariffError(REJECTED, f"{name}.prices is missing or empty")
    prices = data["prices"]
    if len(prices) > max_elements:
        raise TariffError(TOO_MANY_ELEMENTS, f"{name} has {len(prices)} price elements, this "
                                             f"station takes at most {max_elements}")
    out = []
    for n, item in enumerate(prices):
        w = f"{name}.prices[{n}]"
        if not isinstance(item, dict) or price_key not in item:
            raise TariffError(REJECTED, f"{w} has no {price_key}")
        conditions = None
        if item.get("conditions") is not None:
            if not conditions_supported:
                raise TariffError(CONDITION_NOT_SUPPORTED,
                                  f"{w} has conditions, which this station does not support")
            conditions = _conditions(item["conditions"], f"{w}.conditions",
                                     fixed=name == "fixedFee")
        out.append(PriceElement(_number(item[price_key], f"{w}.{price_key}"), conditions))
    return Component(tuple(out), _tax_rates(data.get("taxRates"), name))


def _bound(data: Any, name: str) -> Bound | None:
    if data is None:
        return None
    if not isinstance(data, dict) or ("exclTax" not in data and "inclTax" not in data):
        raise TariffError(REJECTED, f"{name} has neither exclTax nor inclTax")
    excl = _number(data["exclTax"], f"{name}.exclTax") if "exclTax" in data else None
    incl = _number(data["inclTax"], f"{name}.inclTax") if "inclTax" in data else None
    return Bound(excl, incl, _tax_rates(data.get("taxRates"), name))


def parse_tariff(data: Any, *, max_elements: int = 16,
                 conditions_supported: bool = True) -> LocalTariff:
    """A TariffType as the CSMS sent it (JSON), checked; raises :class:`TariffError`."""
    if not isinstance(data, dict):
        raise TariffError(REJECTED, "the tariff is not an object")
    tariff_id = data.get("tariffId")
    if not isinstance(tariff_id, str) or not tariff_id.strip():
        raise TariffError(REJECTED, "tariffId is missing")
    currency = data.get("currency")
    if not isinstance(currency, str) or not _CURRENCY.match(currency):
        raise TariffError(REJECTED, f"currency {currency!r} is not an ISO 4217 code such as "
                                    "EUR")
    valid_from = None
    if data.get("validFrom") is not None:
        try:
            valid_from = datetime.fromisoformat(str(data["validFrom"]).replace("Z", "+00:00"))
        except ValueError:
            raise TariffError(REJECTED, f"validFrom {data['validFrom']!r} is not a date and "
                                        "time") from None
        if valid_from.tzinfo is None:
            valid_from = valid_from.replace(tzinfo=UTC)
    kw = {"max_elements": max_elements, "conditions_supported": conditions_supported}
    energy = _component(data.get("energy"), "energy", "priceKwh", **kw)
    charging = _component(data.get("chargingTime"), "chargingTime", "priceMinute", **kw)
    idle = _component(data.get("idleTime"), "idleTime", "priceMinute", **kw)
    fixed = _component(data.get("fixedFee"), "fixedFee", "priceFixed", **kw)
    for name, key in (("reservationTime", "priceMinute"), ("reservationFixed", "priceFixed")):
        _component(data.get(name), name, key, **kw)  # checked, not charged (module docstring)
    min_cost = _bound(data.get("minCost"), "minCost")
    max_cost = _bound(data.get("maxCost"), "maxCost")
    if min_cost is not None and max_cost is not None:
        for half in ("excl", "incl"):
            lo, hi = getattr(min_cost, half), getattr(max_cost, half)
            if lo is not None and hi is not None and hi < lo:
                raise TariffError(REJECTED, f"maxCost {hi} is below minCost {lo}")
    description = tuple(
        (d["content"], d.get("language"), str(d.get("format") or "UTF8"))
        for d in data.get("description") or () if isinstance(d, dict)
        and isinstance(d.get("content"), str))
    return LocalTariff(tariff_id, currency, energy, charging, idle, fixed, min_cost, max_cost,
                       valid_from, description)


# ====================================================================== the timeline


@dataclass(frozen=True)
class Sample:
    """What the station saw at one instant of a transaction: ``energy_wh`` is the energy of
    the transaction so far, ``charging`` whether energy flows from now until the next sample,
    ``power_w`` / ``current_a`` (sum of the phases) for power and current conditions."""

    at: datetime
    energy_wh: Decimal
    charging: bool
    power_w: Decimal | None = None
    current_a: Decimal | None = None


@dataclass
class Period:
    """One charging period: the tariff and the price elements that applied, what was used and
    what it cost (unrounded, excluding and including tax, per dimension)."""

    tariff_id: str
    start: datetime
    key: tuple
    energy_wh: Decimal = ZERO
    charging_s: Decimal = ZERO
    idle_s: Decimal = ZERO
    min_power_w: Decimal | None = None
    max_power_w: Decimal | None = None
    min_current_a: Decimal | None = None
    max_current_a: Decimal | None = None
    excl: dict[str, Decimal] = field(default_factory=dict)
    incl: dict[str, Decimal] = field(default_factory=dict)

    @property
    def total_excl(self) -> Decimal:
        return sum(self.excl.values(), ZERO)

    @property
    def total_incl(self) -> Decimal:
        return sum(self.incl.values(), ZERO)

    def _seen(self, power: Decimal | None, current: Decimal | None) -> None:
        if power is not None:
            self.min_power_w = power if self.min_power_w is None else min(self.min_power_w, power)
            self.max_power_w = power if self.max_power_w is None else max(self.max_power_w, power)
        if current is not None:
            self.min_current_a = current if self.min_current_a is None else \
                min(self.min_current_a, current)
            self.max_current_a = current if self.max_current_a is None else \
                max(self.max_current_a, current)


@dataclass(frozen=True)
class Amount:
    """An amount excluding and including tax (either may be unknown for a bound)."""

    excl: Decimal | None
    incl: Decimal | None

    @property
    def shown(self) -> Decimal:
        """What the driver is shown: including tax where known."""
        return self.incl if self.incl is not None else (self.excl or ZERO)


@dataclass(frozen=True)
class CostResult:
    """A session's cost so far (see the module docstring for the rounding)."""

    currency: str
    type_of_cost: str  # NormalCost, MinCost, MaxCost
    dimensions: dict[str, Amount]  # rounded, per dimension the tariffs have
    total: Amount  # rounded, after minCost / maxCost
    exact_excl: Decimal  # unrounded sum of the periods, before the bounds
    exact_incl: Decimal
    periods: tuple[Period, ...]
    energy_wh: Decimal
    duration_s: Decimal
    charging_s: Decimal
    idle_s: Decimal
    tax_rates: dict[str, tuple[TaxRate, ...]]


def _ts(at: datetime) -> Decimal:
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return Decimal((at - _EPOCH) // _US) / 1_000_000


def _dt(ts: Decimal) -> datetime:
    return _EPOCH + timedelta(microseconds=int(ts * 1_000_000))


def with_tax(net: Decimal, rates: Iterable[TaxRate]) -> Decimal:
    """``net`` with its taxes: stack 0 on the net amount, each further stack on the amount
    with the stacks below it."""
    by_stack: dict[int, Decimal] = {}
    for rate in rates:
        by_stack[rate.stack] = by_stack.get(rate.stack, ZERO) + rate.tax
    amount = net
    with localcontext() as ctx:
        ctx.prec = PRECISION
        for stack in sorted(by_stack):
            amount += amount * by_stack[stack] / 100
    return amount


def minor_unit(currency: str) -> Decimal:
    return Decimal(1).scaleb(-MINOR_UNITS.get(currency.upper(), 2))


def round_amount(amount: Decimal, currency: str) -> Decimal:
    """Half up to the currency's minor unit (2.675 EUR -> 2.68)."""
    return amount.quantize(minor_unit(currency), rounding=ROUND_HALF_UP)


def _within(value: Decimal | None, low: Decimal | None, high: Decimal | None) -> bool:
    """min inclusive, max exclusive; negative bounds (discharge) count from zero outwards."""
    if low is None and high is None:
        return True
    if value is None:
        return False  # a condition on something the station does not measure never holds
    if low is not None and not (value <= low if low < 0 else value >= low):
        return False
    return high is None or (value > high if high < 0 else value < high)


@dataclass
class _State:
    """Where the pricing stands at one instant of the session."""

    ts: Decimal
    energy: Decimal
    charging_s: Decimal
    idle_s: Decimal


class CostCalculator:
    """Prices one transaction incrementally: :meth:`add` each sample in time order (the first
    at the transaction's start), :meth:`change_tariff` when the transaction gets a new tariff
    (ChangeTransactionTariff), :meth:`result` at any time. The result after some samples
    never changes when more are added (what was reported stays reported)."""

    def __init__(self, start: datetime, tariff: LocalTariff, *, tz: tzinfo = UTC,
                 evse_kind: str | None = "AC") -> None:
        self.tz = tz
        self.evse_kind = evse_kind
        self.currency = tariff.currency
        self._start = _ts(start)
        self._segments: list[tuple[Decimal, LocalTariff]] = [(self._start, tariff)]
        self._last: Sample | None = None
        self._state = _State(self._start, ZERO, ZERO, ZERO)
        self._periods: list[Period] = []
        self._tax_rates: dict[str, tuple[TaxRate, ...]] = {}
        self._fixed_charged = False
        self._fixed_price: tuple[Decimal, tuple[TaxRate, ...]] | None = None

    @property
    def tariff(self) -> LocalTariff:
        return self._segments[-1][1]

    @property
    def samples_end(self) -> datetime | None:
        return self._last.at if self._last is not None else None

    # ------------------------------------------------------------------ feeding

    def change_tariff(self, at: datetime, tariff: LocalTariff) -> None:
        """``tariff`` prices the transaction from ``at`` on (no earlier than the last
        sample); the currency cannot change."""
        if tariff.currency != self.currency:
            raise TariffError(REJECTED, f"currency {tariff.currency} differs from the "
                                        f"transaction's {self.currency}")
        ts = max(_ts(at), self._state.ts)
        self._segments.append((ts, tariff))
        if self._last is not None:  # its charging period starts now
            with localcontext() as ctx:
                ctx.prec = PRECISION
                self._piece(ts, ts, ZERO, self._last)

    def add(self, sample: Sample) -> None:
        """The next sample (a sample before the last one is taken as at the last one)."""
        with localcontext() as ctx:
            ctx.prec = PRECISION
            if self._last is None:
                self._charge_fixed(sample)
                self._last = sample
                self._state.energy = ZERO
                self._piece(self._state.ts, self._state.ts, ZERO, sample)  # opens a period
                self._state.energy = max(sample.energy_wh, ZERO)
                return
            a = self._state.ts
            b = max(_ts(sample.at), a)
            e_a = self._state.energy
            e_b = max(sample.energy_wh, e_a)  # a meter never gives energy back here
            prev = self._last
            if b == a:
                self._piece(a, a, e_b - e_a, prev)
            else:
                t = a
                for _ in range(MAX_PIECES):
                    cut, energy_at_cut = self._next_cut(t, a, b, e_a, e_b, prev.charging)
                    if cut >= b:
                        break
                    if energy_at_cut is None:
                        energy_at_cut = (e_a + (e_b - e_a) * (cut - a) / (b - a)
                                         ).quantize(ENERGY_Q)
                    self._piece(t, cut, energy_at_cut - self._state.energy, prev)
                    t = cut
                # the rest of the stretch: exactly the energy left, so the pieces add up
                self._piece(t, b, e_b - self._state.energy, prev)
            self._state.ts, self._state.energy = b, e_b
            self._last = sample

    # ------------------------------------------------------------------ pricing

    def _segment_at(self, ts: Decimal) -> tuple[int, LocalTariff]:
        index = 0
        for n, (start, _) in enumerate(self._segments):
            if start <= ts:
                index = n
        return index, self._segments[index][1]

    def _holds(self, c: Conditions | None, mid: Decimal, state: _State,
               sample: Sample) -> bool:
        if c is None:
            return True
        local = _dt(mid).astimezone(self.tz)
        if c.start_time is not None or c.end_time is not None:
            now = local.hour * 3600 + local.minute * 60 + local.second + \
                Decimal(local.microsecond) / 1_000_000
            start = c.start_time or 0
            end = c.end_time if c.end_time else 86400
            inside = start <= now < end if start < end else (now >= start or now < end)
            if not inside:
                return False
        if c.days is not None and local.weekday() not in c.days:
            return False
        if c.valid_from is not None and local.date() < c.valid_from:
            return False
        if c.valid_to is not None and local.date() >= c.valid_to:
            return False
        if c.evse_kind is not None and c.evse_kind != self.evse_kind:
            return False
        if c.payment:
            return False
        return (_within(state.energy, c.min_energy, c.max_energy)
                and _within(sample.current_a, c.min_current, c.max_current)
                and _within(sample.power_w, c.min_power, c.max_power)
                and _within(mid - self._start, c.min_time, c.max_time)
                and _within(state.charging_s, c.min_charging_time, c.max_charging_time)
                and _within(state.idle_s, c.min_idle_time, c.max_idle_time))

    def _element(self, component: Component | None, mid: Decimal, state: _State,
                 sample: Sample) -> int | None:
        if component is None:
            return None
        for n, element in enumerate(component.prices):
            if self._holds(element.conditions, mid, state, sample):
                return n
        return None

    def _charge_fixed(self, first: Sample) -> None:
        tariff = self._segments[0][1]
        if tariff.fixed_fee is None:
            return
        for element in tariff.fixed_fee.prices:
            if self._holds(element.conditions, self._start, self._state, first):
                self._fixed_price = (element.price, tariff.fixed_fee.tax_rates)
                return

    def _piece(self, t0: Decimal, t1: Decimal, energy: Decimal, sample: Sample) -> None:
        """Price [t0, t1) with ``energy`` Wh in it, the state of ``sample``."""
        mid = (t0 + t1) / 2
        seg, tariff = self._segment_at(mid if t1 > t0 else t0)
        d = t1 - t0
        # The state in the middle of the piece (its thresholds are cut at, so any point works).
        st = self._state
        half = d / 2
        state = _State(mid, st.energy + energy / 2,
                       st.charging_s + (half if sample.charging else ZERO),
                       st.idle_s + (ZERO if sample.charging else half))
        e_i = self._element(tariff.energy, mid, state, sample)
        c_i = self._element(tariff.charging_time, mid, state, sample)
        i_i = self._element(tariff.idle_time, mid, state, sample)
        key = (seg, e_i, c_i, i_i)
        if not self._periods or self._periods[-1].key != key:
            self._periods.append(Period(tariff.tariff_id, _dt(t0), key))
        period = self._periods[-1]
        if not self._fixed_charged:
            self._fixed_charged = True
            price = self._fixed_price
            if price is not None:
                self._add(period, "fixed", price[0], price[1])
        if tariff.energy is not None:
            self._tax_rates.setdefault("energy", tariff.energy.tax_rates)
            if e_i is not None:
                element = tariff.energy.prices[e_i]
                self._add(period, "energy", element.price * energy / 1000,
                          tariff.energy.tax_rates)
        timed = tariff.charging_time if sample.charging else tariff.idle_time
        name = "chargingTime" if sample.charging else "idleTime"
        index = c_i if sample.charging else i_i
        for dim, comp in (("chargingTime", tariff.charging_time),
                          ("idleTime", tariff.idle_time)):
            if comp is not None:
                self._tax_rates.setdefault(dim, comp.tax_rates)
        if timed is not None and index is not None:
            self._add(period, name, timed.prices[index].price * d / 60, timed.tax_rates)
        period.energy_wh += energy
        if sample.charging:
            period.charging_s += d
            st.charging_s += d
        else:
            period.idle_s += d
            st.idle_s += d
        st.energy += energy
        st.ts = t1
        period._seen(sample.power_w, sample.current_a)

    def _add(self, period: Period, dim: str, net: Decimal, rates: tuple[TaxRate, ...]) -> None:
        net = net.quantize(COST_Q)
        period.excl[dim] = period.excl.get(dim, ZERO) + net
        period.incl[dim] = period.incl.get(dim, ZERO) + with_tax(net, rates).quantize(COST_Q)
        self._tax_rates.setdefault(dim, rates)

    # ------------------------------------------------------------------ where to cut

    def _next_cut(self, t: Decimal, a: Decimal, b: Decimal, e_a: Decimal, e_b: Decimal,
                  charging: bool) -> tuple[Decimal, Decimal | None]:
        """The first instant after ``t`` (``b`` if none before it) at which a predictable
        condition may change: a new tariff, a time of day or a day, a duration or an energy
        threshold; with the energy there when it is an energy threshold (exactly)."""
        best, energy = b, None
        for start, _ in self._segments:
            if t < start < best:
                best = start
        _, tariff = self._segment_at(t)
        conditions = [p.conditions for c in tariff.timed() if c is not None
                      for p in c.prices if p.conditions is not None]
        if not conditions:
            return best, None
        st = self._state
        # the state at t (pieces before t in this interval were already added to st)
        times = {0}
        for c in conditions:
            times |= c.times_of_day()
        local = _dt(t).astimezone(self.tz)
        for day in (local.date(), local.date() + timedelta(days=1)):
            for seconds in times:
                at = datetime.combine(day, time(seconds // 3600, seconds % 3600 // 60),
                                      tzinfo=self.tz)
                ts = _ts(at.astimezone(UTC))
                if t < ts < best:
                    best = ts
        for c in conditions:
            for bound in (c.min_time, c.max_time):
                if bound is not None and t < self._start + bound < best:
                    best = self._start + bound
            so_far = st.charging_s if charging else st.idle_s
            for bound in ((c.min_charging_time, c.max_charging_time) if charging
                          else (c.min_idle_time, c.max_idle_time)):
                if bound is not None and bound > so_far and t + (bound - so_far) < best:
                    best = (t + (bound - so_far)).quantize(TIME_Q)
        if e_b > e_a:
            for c in conditions:
                for bound in (c.min_energy, c.max_energy):
                    if bound is not None and st.energy < bound <= e_b:
                        at = (a + (bound - e_a) * (b - a) / (e_b - e_a)).quantize(TIME_Q)
                        if t < at <= best:
                            best, energy = at, bound
        return best, energy

    # ------------------------------------------------------------------ the result

    def preview(self, sample: Sample) -> CostResult:
        """The result if ``sample`` came next, leaving this calculator as it is: a limit on
        the cost is checked at every meter reading, while samples are kept only every
        Interval[Tariff] (each one is a row of the state file)."""
        ahead = copy.deepcopy(self)
        ahead.add(sample)
        return ahead.result()

    def result(self) -> CostResult:
        with localcontext() as ctx:
            ctx.prec = PRECISION
            currency = self.currency
            names = [d for d in DIMENSIONS if d in self._tax_rates]
            dims: dict[str, Amount] = {}
            for dim in names:
                excl = sum((p.excl.get(dim, ZERO) for p in self._periods), ZERO)
                incl = sum((p.incl.get(dim, ZERO) for p in self._periods), ZERO)
                dims[dim] = Amount(round_amount(excl, currency), round_amount(incl, currency))
            total_excl = sum((a.excl for a in dims.values() if a.excl is not None), ZERO)
            total_incl = sum((a.incl for a in dims.values() if a.incl is not None), ZERO)
            total = Amount(round_amount(total_excl, currency), round_amount(total_incl, currency))
            total, kind = self._bounded(total)
            return CostResult(
                currency, kind, dims, total,
                sum((p.total_excl for p in self._periods), ZERO),
                sum((p.total_incl for p in self._periods), ZERO),
                tuple(self._periods), self._state.energy, self._state.ts - self._start,
                sum((p.charging_s for p in self._periods), ZERO),
                sum((p.idle_s for p in self._periods), ZERO), dict(self._tax_rates))

    def _bounded(self, total: Amount) -> tuple[Amount, str]:
        """minCost / maxCost on each half of the rounded total (see the module docstring)."""
        tariff = self.tariff
        low = self._bound_amount(tariff.min_cost) if tariff.min_cost is not None else None
        high = self._bound_amount(tariff.max_cost) if tariff.max_cost is not None else None
        raised = lowered = False
        halves = []
        for half in ("excl", "incl"):
            value = getattr(total, half)
            assert value is not None
            hi = getattr(high, half) if high is not None else None
            lo = getattr(low, half) if low is not None else None
            bounded = value if hi is None else min(value, hi)
            bounded = bounded if lo is None else max(bounded, lo)
            raised |= bounded > value
            lowered |= bounded < value
            halves.append(bounded)
        kind = "MinCost" if raised else "MaxCost" if lowered else "NormalCost"
        return Amount(*halves), kind

    def _bound_amount(self, bound: Bound) -> Amount:
        """A bound's two halves: a missing inclTax from its taxRates (none: the same amount),
        a missing exclTax is no bound on the amount excluding tax."""
        excl = bound.excl
        incl = bound.incl
        if incl is None and excl is not None:
            incl = with_tax(excl, bound.tax_rates)
        return Amount(None if excl is None else round_amount(excl, self.currency),
                      None if incl is None else round_amount(incl, self.currency))


def calculate(tariffs: Sequence[tuple[datetime, LocalTariff]], samples: Sequence[Sample], *,
              tz: tzinfo = UTC, evse_kind: str | None = "AC") -> CostResult:
    """The cost of a session: ``tariffs`` (from when each priced it; the first from the
    start) over ``samples`` (the first at the start, the last at the end or now)."""
    if not tariffs or not samples:
        raise ValueError("a session needs a tariff and at least one sample")
    calc = CostCalculator(tariffs[0][0], tariffs[0][1], tz=tz, evse_kind=evse_kind)
    pending = list(tariffs[1:])
    for sample in samples:
        while pending and pending[0][0] <= sample.at:
            at, tariff = pending.pop(0)
            if calc.samples_end is not None and calc.samples_end < at:
                calc.add(_interpolated(calc, at, sample))
            calc.change_tariff(at, tariff)
        calc.add(sample)
    return calc.result()


def _interpolated(calc: CostCalculator, at: datetime, nxt: Sample) -> Sample:
    """A sample at ``at`` between the calculator's last one and ``nxt`` (energy by time)."""
    last = calc._last
    assert last is not None
    a, b, t = _ts(last.at), _ts(nxt.at), _ts(at)
    with localcontext() as ctx:
        ctx.prec = PRECISION
        energy = last.energy_wh + (nxt.energy_wh - last.energy_wh) * (t - a) / (b - a) \
            if b > a else nxt.energy_wh
    return Sample(at, energy, last.charging, last.power_w, last.current_a)


def _json_number(value: Decimal) -> int | float:
    """A decimal for a JSON payload: an int when whole, else the float of its shortest
    spelling (3.31 stays 3.31 in the JSON text)."""
    if value == value.to_integral_value():
        return int(value)
    return float(value)


json_number = _json_number

__all__ = [
    "CONDITION_NOT_SUPPORTED", "REJECTED", "TOO_MANY_ELEMENTS", "Amount", "Bound",
    "Component", "Conditions", "CostCalculator", "CostResult", "LocalTariff", "Period",
    "PriceElement", "Sample", "TariffError", "TaxRate", "calculate", "json_number",
    "minor_unit", "parse_tariff", "round_amount", "with_tax",
]
