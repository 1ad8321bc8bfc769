"""The local cost engine (agent/core/tariffs.py): worked tariffs against hand-computed
amounts, the validation of bad tariffs, and properties of every session (the cost never
decreases, it is the sum of its periods, the incremental calculation is the batch one)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal as D
from decimal import localcontext
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.core.tariffs import (
    CostCalculator,
    Sample,
    TariffError,
    calculate,
    parse_tariff,
    round_amount,
    with_tax,
)

MONDAY = datetime(2025, 1, 6, 14, 0, tzinfo=UTC)  # a Monday in winter (Amsterdam: UTC+1)


def tariff(**fields):
    return parse_tariff({"tariffId": "T", "currency": "EUR", **fields})


def at(minutes: float) -> datetime:
    return MONDAY + timedelta(minutes=minutes)


def charge(minutes: float, kwh: float, charging: bool = True, **kw) -> Sample:
    return Sample(at(minutes), D(str(kwh)) * 1000, charging, **kw)


def test_energy_only():
    t = tariff(energy={"prices": [{"priceKwh": 0.25}]})
    r = calculate([(MONDAY, t)], [charge(0, 0), charge(60, 10)])
    assert r.total.excl == D("2.50") and r.total.incl == D("2.50")
    assert r.type_of_cost == "NormalCost" and list(r.dimensions) == ["energy"]
    assert len(r.periods) == 1 and r.periods[0].energy_wh == 10000


def test_energy_charging_time_and_an_idle_fee_after_30_minutes():
    # 2 h charging 22 kWh, then 1 h idle: 22 x 0.30 + 120 min x 0.02 + (60 - 30) min x 0.10
    t = tariff(energy={"prices": [{"priceKwh": 0.30}]},
               chargingTime={"prices": [{"priceMinute": 0.02}]},
               idleTime={"prices": [{"priceMinute": 0.10, "conditions": {"minIdleTime": 1800}}]})
    r = calculate([(MONDAY, t)], [charge(0, 0), charge(120, 22, charging=False),
                                  charge(180, 22, charging=False)])
    assert {k: v.excl for k, v in r.dimensions.items()} == {
        "energy": D("6.60"), "chargingTime": D("2.40"), "idleTime": D("3.00")}
    assert r.total.excl == D("12.00")
    assert [p.start for p in r.periods] == [at(0), at(150)]  # the idle fee starts a period
    assert [(p.charging_s, p.idle_s) for p in r.periods] == [(7200, 1800), (0, 1800)]
    assert (r.duration_s, r.charging_s, r.idle_s, r.energy_wh) == (10800, 7200, 3600, 22000)


def test_a_time_of_day_change_in_the_middle_of_a_session_in_local_time():
    # 18:00-20:00 UTC is 19:00-21:00 in Amsterdam; day rate until 20:00 local, then night.
    t = tariff(energy={"prices": [
        {"priceKwh": 0.40, "conditions": {"startTimeOfDay": "08:00", "endTimeOfDay": "20:00"}},
        {"priceKwh": 0.20}]})
    start = datetime(2025, 1, 6, 18, 0, tzinfo=UTC)
    samples = [Sample(start, D(0), True), Sample(start + timedelta(hours=2), D(22000), True)]
    r = calculate([(start, t)], samples, tz=ZoneInfo("Europe/Amsterdam"))
    assert r.dimensions["energy"].excl == D("6.60")  # 11 kWh x 0.40 + 11 kWh x 0.20
    assert [p.start for p in r.periods] == [start, start + timedelta(hours=1)]
    assert [p.energy_wh for p in r.periods] == [11000, 11000]
    r = calculate([(start, t)], samples)  # the same session on a UTC station: all day rate
    assert r.dimensions["energy"].excl == D("8.80") and len(r.periods) == 1


def test_an_energy_threshold_is_cut_exactly_between_samples():
    t = tariff(energy={"prices": [{"priceKwh": 0.30, "conditions": {"maxEnergy": 10000}},
                                  {"priceKwh": 0.25}]})
    r = calculate([(MONDAY, t)], [charge(0, 0), charge(90, 15)])
    assert r.dimensions["energy"].excl == D("4.25")  # 10 x 0.30 + 5 x 0.25
    assert [p.start for p in r.periods] == [at(0), at(60)]


@pytest.mark.parametrize(("kwh", "kind", "total", "energy"), [
    (1, "MinCost", D("5.00"), D("0.25")),
    (20, "NormalCost", D("5.00"), D("5.00")),
    (100, "MaxCost", D("10.00"), D("25.00")),
])
def test_min_and_max_cost(kwh, kind, total, energy):
    t = tariff(energy={"prices": [{"priceKwh": 0.25}]}, minCost={"exclTax": 5},
               maxCost={"exclTax": 10, "taxRates": [{"type": "VAT", "tax": 21}]})
    r = calculate([(MONDAY, t)], [charge(0, 0), charge(60, kwh)])
    assert (r.type_of_cost, r.total.excl, r.dimensions["energy"].excl) == (kind, total, energy)
    if kind == "MaxCost":
        assert r.total.incl == D("12.10")  # the bound's own tax rates give its inclTax
    if kind == "MinCost":
        assert r.total.incl == D("5.00")  # a bound without tax rates carries none


def test_taxes_stack_and_add_up():
    vat = [{"type": "VAT", "tax": 19}, {"type": "levy", "tax": 2, "stack": 1}]
    t = tariff(energy={"prices": [{"priceKwh": 0.30}], "taxRates": vat},
               fixedFee={"prices": [{"priceFixed": 1}],
                         "taxRates": [{"type": "A", "tax": 10}, {"type": "B", "tax": 5}]})
    r = calculate([(MONDAY, t)], [charge(0, 0), charge(60, 10)])
    assert r.dimensions["energy"].excl == D("3.00")
    assert r.dimensions["energy"].incl == D("3.64")  # 3.00 x 1.19 x 1.02 = 3.6414
    assert r.dimensions["fixed"].incl == D("1.15")  # 10 % + 5 % on the same base
    assert r.total.incl == D("4.79") and r.total.excl == D("4.00")
    assert with_tax(D(100), ()) == 100


def test_rounding_half_up_to_the_minor_unit_and_the_exact_sum():
    t = tariff(chargingTime={"prices": [{"priceMinute": 0.35}]})
    r = calculate([(MONDAY, t)], [charge(0, 0), Sample(MONDAY + timedelta(seconds=10),
                                                         D(1), True)])
    assert r.exact_excl == D("0.058333333333")  # kept to 10^-12 ...
    assert r.total.excl == D("0.06")  # ... and reported half up to the cent
    assert round_amount(D("2.675"), "EUR") == D("2.68")
    assert round_amount(D("1234.5"), "JPY") == D("1235")
    yen = parse_tariff({"tariffId": "Y", "currency": "JPY", "energy": {
        "prices": [{"priceKwh": 33.3}]}})
    assert calculate([(MONDAY, yen)], [charge(0, 0), charge(60, 1)]).total.excl == 33


def test_fixed_fee_at_the_start_only_and_its_conditions():
    t = tariff(fixedFee={"prices": [
        {"priceFixed": 2.5, "conditions": {"dayOfWeek": ["Saturday", "Sunday"]}},
        {"priceFixed": 1.0, "conditions": {"paymentBrand": "VISA"}},
        {"priceFixed": 0.5}]})
    r = calculate([(MONDAY, t)], [charge(0, 0), charge(600, 50)])
    assert r.dimensions["fixed"].excl == D("0.50")  # a Monday; no payment brand here
    sunday = MONDAY - timedelta(days=1)
    r = calculate([(sunday, t)], [Sample(sunday, D(0), True)])
    assert r.dimensions["fixed"].excl == D("2.50") and len(r.periods) == 1


def test_a_new_tariff_during_the_session_starts_a_period():
    day = tariff(energy={"prices": [{"priceKwh": 0.40}]})
    night = parse_tariff({"tariffId": "N", "currency": "EUR",
                          "energy": {"prices": [{"priceKwh": 0.10}]}})
    r = calculate([(MONDAY, day), (at(30), night)], [charge(0, 0), charge(60, 10)])
    assert r.dimensions["energy"].excl == D("2.50")  # 5 x 0.40 + 5 x 0.10
    assert [(p.tariff_id, p.start) for p in r.periods] == [("T", at(0)), ("N", at(30))]
    chf = parse_tariff({"tariffId": "C", "currency": "CHF", "energy": {
        "prices": [{"priceKwh": 0.1}]}})
    calc = CostCalculator(MONDAY, day)
    with pytest.raises(TariffError, match="differs"):
        calc.change_tariff(at(1), chf)


@pytest.mark.parametrize(("fields", "status", "words"), [
    ({"currency": "euro"}, "Rejected", "currency 'euro' is not an ISO 4217 code"),
    ({"tariffId": ""}, "Rejected", "tariffId is missing"),
    ({"energy": {"prices": [{"priceKwh": -0.1}]}}, "Rejected",
     "energy.prices[0].priceKwh -0.1 is negative"),
    ({"energy": {"prices": []}}, "Rejected", "energy.prices is missing or empty"),
    ({"idleTime": {"prices": [{"priceMinute": 0.1}] * 17}}, "TooManyElements",
     "idleTime has 17 price elements, this station takes at most 16"),
    ({"energy": {"prices": [{"priceKwh": 1, "conditions": {"endTimeOfDay": "7:00"}}]}},
     "Rejected", "energy.prices[0].conditions.endTimeOfDay '7:00' is not a time of day"),
    ({"energy": {"prices": [{"priceKwh": 1, "conditions": {"dayOfWeek": ["Mon"]}}]}},
     "Rejected", "dayOfWeek ['Mon'] is not a list of days"),
    ({"energy": {"prices": [{"priceKwh": 1, "conditions": {"minPower": 5000,
                                                           "maxPower": 1000}}]}},
     "Rejected", "maxPower 1000 is not beyond minPower 5000"),
    ({"chargingTime": {"prices": [{"priceMinute": 1, "conditions": {
        "validFromDate": "2025-02-01", "validToDate": "2025-01-01"}}]}},
     "Rejected", "validToDate 2025-01-01 is not after validFromDate 2025-02-01"),
    ({"minCost": {"exclTax": 9}, "maxCost": {"exclTax": 5}}, "Rejected",
     "maxCost 5 is below minCost 9"),
    ({"energy": {"prices": [{"priceKwh": 1}], "taxRates": [{"type": "VAT", "tax": "x"}]}},
     "Rejected", "energy.taxRates[0].tax 'x' is not a number"),
    ({"validFrom": "tomorrow"}, "Rejected", "validFrom 'tomorrow' is not a date and time"),
])
def test_a_bad_tariff_is_refused_naming_the_problem(fields, status, words):
    with pytest.raises(TariffError) as err:
        parse_tariff({"tariffId": "T", "currency": "EUR", **fields})
    assert err.value.status == status and words in str(err.value)


def test_conditions_on_a_station_without_them():
    with pytest.raises(TariffError) as err:
        parse_tariff({"tariffId": "T", "currency": "EUR", "energy": {"prices": [
            {"priceKwh": 1, "conditions": {"minPower": 1}}]}}, conditions_supported=False)
    assert err.value.status == "ConditionNotSupported"


# ---------------------------------------------------------------------- properties

_MONEY = st.decimals(min_value=0, max_value=2, places=3)
_TIMES = st.sampled_from(["00:00", "06:30", "08:00", "12:00", "18:00", "22:15"])


@st.composite
def _conditions(draw):
    c = {}
    if draw(st.booleans()):
        c["startTimeOfDay"], c["endTimeOfDay"] = draw(_TIMES), draw(_TIMES)
    if draw(st.booleans()):
        c["minEnergy"] = draw(st.integers(0, 20000))
    if draw(st.booleans()):
        c["minPower"], c["maxPower"] = 0, draw(st.integers(1000, 20000))
    if draw(st.booleans()):
        c["minIdleTime"] = draw(st.integers(0, 3600))
    if draw(st.booleans()):
        c["maxChargingTime"] = draw(st.integers(1, 7200))
    return c or None


@st.composite
def _component(draw, key):
    prices = []
    for _ in range(draw(st.integers(1, 3))):
        element = {key: float(draw(_MONEY))}
        if (conditions := draw(_conditions())) is not None:
            element["conditions"] = conditions
        prices.append(element)
    out = {"prices": prices}
    if draw(st.booleans()):
        out["taxRates"] = [{"type": "VAT", "tax": float(draw(_MONEY)) * 10,
                            "stack": draw(st.integers(0, 1))}]
    return out


@st.composite
def _tariffs(draw):
    data = {"tariffId": "P", "currency": draw(st.sampled_from(["EUR", "JPY", "KWD"]))}
    for name, key in (("energy", "priceKwh"), ("chargingTime", "priceMinute"),
                      ("idleTime", "priceMinute"), ("fixedFee", "priceFixed")):
        if draw(st.booleans()):
            data[name] = draw(_component(key))
    if draw(st.booleans()):
        data["maxCost"] = {"exclTax": float(draw(_MONEY)) * 20}
    if draw(st.booleans()):
        data["minCost"] = {"inclTax": float(draw(_MONEY))}
    return data


@st.composite
def _sessions(draw):
    start = datetime(2025, 3, 29, 20, 0, tzinfo=UTC) + timedelta(
        minutes=draw(st.integers(0, 60 * 24)))
    samples, t, energy = [Sample(start, D(0), draw(st.booleans()))], start, D(0)
    for _ in range(draw(st.integers(1, 12))):
        t += timedelta(seconds=draw(st.integers(0, 3 * 3600)))
        energy += D(draw(st.integers(0, 30000)))
        samples.append(Sample(t, energy, draw(st.booleans()),
                              power_w=D(draw(st.integers(0, 22000))),
                              current_a=D(draw(st.integers(0, 32)))))
    return samples


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_tariffs(), samples=_sessions())
def test_the_cost_never_decreases_and_is_the_sum_of_its_periods(data, samples):
    try:
        t = parse_tariff(data)
    except TariffError:  # e.g. minCost above a drawn maxCost
        return
    calc = CostCalculator(samples[0].at, t, tz=ZoneInfo("Europe/Amsterdam"))
    shown = []
    for n, sample in enumerate(samples, start=1):
        calc.add(sample)
        r = calc.result()
        with localcontext(prec=50):  # the engine's precision
            assert r.exact_excl == sum((p.total_excl for p in r.periods), D(0))
            assert r.exact_incl == sum((p.total_incl for p in r.periods), D(0))
            assert sum((p.energy_wh for p in r.periods), D(0)) == r.energy_wh
        assert r.exact_incl >= r.exact_excl >= 0
        assert r.energy_wh == sample.energy_wh
        shown.append((r.total.excl, r.total.incl, r.exact_excl))
        if n in (2, len(samples)):  # the incremental result is the batch one
            batch = calculate([(samples[0].at, t)], samples[:n],
                              tz=ZoneInfo("Europe/Amsterdam"))
            assert (batch.total, batch.exact_excl, len(batch.periods)) == (
                r.total, r.exact_excl, len(r.periods))
    for before, after in zip(shown, shown[1:], strict=False):
        assert all(a is None or b is None or a >= b for b, a in zip(before, after,
                                                                      strict=True)), shown
