"""The smart-charging engine (agent/core/smart_charging.py): validation, composite, next change.

The worked examples come from OCPP 1.6 edition 2 section 3.13 and 5.16, the 2.0.1 errata
2023-12 and the 2.0.1 part 6 test cases, with their numbers where the text gives numbers.  The
property tests compare the engine with a deliberately naive reference written here (a profile
applies at an instant if..., the highest stack level wins, the minimum of the purposes) at
every minute of the window, for random profiles of every purpose, kind and stack level.
"""

from __future__ import annotations

import bisect
from datetime import UTC, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.core.smart_charging import (
    BASE_KINDS,
    BASE_PURPOSES,
    ChargingProfile,
    ChargingSchedule,
    ChargingSchedulePeriod,
    CompositePeriod,
    Kind,
    Purpose,
    Recurrency,
    composite,
    limit_at,
    next_change,
    station_composite,
    validate,
)

D = Decimal
P = ChargingSchedulePeriod
T0 = datetime(2024, 5, 6, tzinfo=UTC)  # a Monday, 00:00 UTC
H = 3600
DAY = 86_400


def profile(purpose: Purpose, periods, *, kind: Kind = Kind.ABSOLUTE,
            start: datetime | None = T0, duration: int | None = None, unit: str = "A",
            stack: int = 0, evse: int = 1, recurrency: Recurrency | None = None,
            valid_from: datetime | None = None, valid_to: datetime | None = None,
            transaction_id=None, pid: int = 1, min_rate=None) -> ChargingProfile:
    if kind is Kind.RELATIVE:
        start = None
    return ChargingProfile(
        id=pid, stack_level=stack, purpose=purpose, kind=kind,
        schedules=[ChargingSchedule(unit, [p if isinstance(p, P) else P(*p) for p in periods],
                                    duration_s=duration, start=start, min_rate=min_rate)],
        recurrency=recurrency, valid_from=valid_from, valid_to=valid_to,
        transaction_id=transaction_id, evse_id=evse)


def evse_composite(profiles, *, start: datetime = T0, window_s: int = DAY, evse: int = 1,
                   tx_start: datetime | None = None, max_a: float = 32, phases: int = 3,
                   unit: str = "A", transaction_id=None) -> list[CompositePeriod]:
    return composite(profiles, evse_id=evse, window_start=start, window_s=window_s,
                     tx_start=tx_start, evse_max_a=max_a, phases=phases, unit=unit,
                     transaction_id=transaction_id)


def plain(periods: list[CompositePeriod]) -> list[tuple[int, Decimal]]:
    """(start, limit) pairs, for examples where the phases are not the point."""
    return [(p.start_s, p.limit) for p in periods]


# ====================================================================== worked examples

# ---------------------------------------------------------------------- 1.6 3.13.7


def daily_6kw_profile() -> ChargingProfile:
    """1.6 3.13.7, verbatim: a daily TxDefaultProfile limiting to 6 kW from 08:00 to 20:00."""
    return ChargingProfile(
        id=100, stack_level=0, purpose=Purpose.TX_DEFAULT, kind=Kind.RECURRING,
        recurrency=Recurrency.DAILY, evse_id=0,
        schedules=[ChargingSchedule("W", [P(0, 11000, 3), P(28800, 6000, 3),
                                          P(72000, 11000, 3)],
                                    duration_s=86400,
                                    start=datetime(2013, 1, 1, tzinfo=UTC))])


def test_spec_1_6_3_13_7_daily_profile_is_valid():
    assert validate(daily_6kw_profile()) == []


def test_spec_1_6_3_13_7_daily_profile_limits_to_6kw_between_8_and_20_every_day():
    # Eleven years after its startSchedule the profile still recurs at the same hours.
    result = evse_composite([daily_6kw_profile()], unit="W")
    assert result == [(0, 11000, 3), (28800, 6000, 3), (72000, 11000, 3)]


def test_spec_1_6_3_13_7_daily_profile_in_amps_rounds_down_per_phase():
    # 7.12: current per phase = power / (line voltage * numberPhases) = 11000 / 690 = 15.94.
    result = evse_composite([daily_6kw_profile()])
    assert result == [(0, D("15.9"), 3), (28800, D("8.6"), 3), (72000, D("15.9"), 3)]


def test_spec_1_6_3_13_7_window_starting_mid_morning_wraps_into_the_next_repetition():
    result = evse_composite([daily_6kw_profile()], start=T0 + timedelta(hours=6), unit="W")
    assert plain(result) == [(0, 11000), (2 * H, 6000), (14 * H, 11000)]


def test_spec_1_6_3_13_7_next_change_is_the_next_period_boundary():
    profiles = [daily_6kw_profile()]
    assert next_change(profiles, T0 + timedelta(hours=9), evse_id=1) == T0 + timedelta(hours=20)
    assert next_change(profiles, T0 + timedelta(hours=21), evse_id=1) == T0 + timedelta(days=1)
    assert next_change(profiles, T0 + timedelta(hours=8), evse_id=1) == T0 + timedelta(hours=20)


# ---------------------------------------------------------------------- 1.6 3.13.2

# The text gives no figures for its stacking example ("full power" / "reduced power"); these
# are 32 A and 8 A on a 32 A EVSE.
FULL, REDUCED = 32, 8


def weekly_default() -> ChargingProfile:
    """3.13.2: a TxDefaultProfile with a duration and recurrence of one week that allows full
    power on weekdays from 23:00 to 06:00 and from 00:00 to 24:00 in weekends, reduced power
    at other times.  It starts on a Monday at 00:00."""
    periods = [P(0, FULL)]
    for day in range(5):  # Monday .. Friday
        periods += [P(day * DAY + 6 * H, REDUCED), P(day * DAY + 23 * H, FULL)]
    return profile(Purpose.TX_DEFAULT, periods, kind=Kind.RECURRING,
                   start=T0 - timedelta(weeks=52), duration=7 * DAY,
                   recurrency=Recurrency.WEEKLY, evse=0, pid=1)


def holiday(day: datetime) -> ChargingProfile:
    """3.13.2: "other TxDefaultProfiles that define exceptions to this rule, for example for
    holidays": full power all day, on a higher stack level, valid on that day only."""
    return profile(Purpose.TX_DEFAULT, [(0, FULL)], start=day, stack=1, evse=0, pid=2,
                   valid_from=day, valid_to=day + timedelta(days=1))


def test_spec_1_6_3_13_2_weekly_default_is_reduced_during_weekday_daytime_only():
    week = evse_composite([weekly_default()], window_s=7 * DAY)
    expected = [(0, FULL)]
    for day in range(5):
        expected += [(day * DAY + 6 * H, REDUCED), (day * DAY + 23 * H, FULL)]
    assert plain(week) == expected


def test_spec_1_6_3_13_2_holiday_exception_on_a_higher_stack_level_prevails_that_day():
    wednesday = T0 + timedelta(days=2)
    profiles = [weekly_default(), holiday(wednesday)]
    assert plain(evse_composite(profiles, start=wednesday)) == [(0, FULL)]
    # The day after, and the same weekday a week later, the weekly rule is back.
    normal_day = [(0, FULL), (6 * H, REDUCED), (23 * H, FULL)]
    assert plain(evse_composite(profiles, start=wednesday + timedelta(days=1))) == normal_day
    assert plain(evse_composite(profiles, start=wednesday + timedelta(days=7))) == normal_day


def test_spec_1_6_3_13_2_highest_stack_level_without_duration_never_falls_back():
    base = profile(Purpose.TX_DEFAULT, [(0, 16)], stack=0, pid=1)
    top = profile(Purpose.TX_DEFAULT, [(0, 10)], stack=1, pid=2)
    assert plain(evse_composite([base, top], window_s=30 * DAY)) == [(0, 10)]
    assert next_change([base, top], T0 + timedelta(hours=1), evse_id=1) is None


def test_spec_1_6_3_13_2_higher_stack_level_with_a_duration_falls_back_when_it_ends():
    base = profile(Purpose.TX_DEFAULT, [(0, 16)], stack=0, pid=1)
    top = profile(Purpose.TX_DEFAULT, [(0, 10)], stack=1, duration=2 * H, pid=2)
    assert plain(evse_composite([base, top])) == [(0, 10), (2 * H, 16)]


def test_spec_1_6_3_13_2_profile_valid_from_the_future_reverts_to_default_until_then():
    # "the Charge Point SHALL replace the installed profile and SHALL revert to default
    # behavior until validFrom is reached"
    replaced = profile(Purpose.TX_DEFAULT, [(0, 10)], start=T0 - timedelta(days=1),
                       valid_from=T0 + timedelta(hours=3))
    assert plain(evse_composite([replaced])) == [(0, 32), (3 * H, 10)]
    assert next_change([replaced], T0, evse_id=1) == T0 + timedelta(hours=3)


def test_spec_1_6_3_13_2_profile_stops_applying_at_valid_to():
    ending = profile(Purpose.TX_DEFAULT, [(0, 10)], valid_to=T0 + timedelta(hours=5))
    assert plain(evse_composite([ending])) == [(0, 10), (5 * H, 32)]


# ---------------------------------------------------------------------- 1.6 3.13.3

# No figures in the text either: a ChargePointMaxProfile of 20 A for an hour, then 10 A, and a
# TxDefaultProfile of 16 A for half an hour, then 32 A: intervals of different lengths.


def station_max_20_then_10() -> ChargingProfile:
    return profile(Purpose.STATION_MAX, [(0, 20), (H, 10)], evse=0, pid=10)


def default_16_then_32() -> ChargingProfile:
    return profile(Purpose.TX_DEFAULT, [(0, 16), (1800, 32)], evse=0, pid=11)


def test_spec_1_6_3_13_3_composite_takes_the_minimum_for_each_time_interval():
    result = evse_composite([station_max_20_then_10(), default_16_then_32()])
    assert plain(result) == [(0, 16), (1800, 20), (H, 10)]


def test_spec_1_6_3_13_3_tx_profile_overrules_the_default_for_its_transaction_only():
    tx = profile(Purpose.TX, [(0, 6)], duration=2700, pid=12, transaction_id=7)
    profiles = [station_max_20_then_10(), default_16_then_32(), tx]
    during = evse_composite(profiles, tx_start=T0, transaction_id=7)
    assert plain(during) == [(0, 6), (2700, 20), (H, 10)]
    # Without a transaction (or for another one) the TxProfile has no say.
    assert plain(evse_composite(profiles)) == [(0, 16), (1800, 20), (H, 10)]
    assert plain(evse_composite(profiles, tx_start=T0, transaction_id=8)) == [
        (0, 16), (1800, 20), (H, 10)]


def test_spec_1_6_3_13_3_station_max_caps_every_evse_and_the_station_composite():
    # "the limit value of ChargePointMaxProfile is the limit for all connectors combined":
    # each EVSE may get up to all of it; dividing it is the load balancer's job.
    profiles = [station_max_20_then_10()]
    for evse in (1, 2):
        assert plain(evse_composite(profiles, evse=evse)) == [(0, 20), (H, 10)]
    station = station_composite(profiles, window_start=T0, window_s=DAY, station_max_a=63,
                                phases=3)
    assert plain(station) == [(0, 20), (H, 10)]


def test_spec_1_6_3_13_6_no_profiles_means_no_constraints_but_the_evse_rating():
    assert evse_composite([]) == [(0, 32, 3)]
    assert evse_composite([], unit="W") == [(0, 22080, 3)]
    assert evse_composite([], phases=1, max_a=16, unit="W") == [(0, 3680, 1)]


# ---------------------------------------------------------------------- 1.6 5.16.4 notes


def test_spec_1_6_5_16_periods_beyond_the_duration_are_not_executed():
    p = profile(Purpose.TX_DEFAULT, [(0, 10), (H, 6)], duration=1800)
    assert plain(evse_composite([p])) == [(0, 10), (1800, 32)]


def test_spec_1_6_5_16_last_period_is_kept_until_the_duration_has_ended():
    p = profile(Purpose.TX_DEFAULT, [(0, 10), (H, 6)], duration=3 * H)
    assert plain(evse_composite([p])) == [(0, 10), (H, 6), (3 * H, 32)]


def test_spec_1_6_5_16_recurrence_cuts_off_what_is_longer_than_its_period():
    p = profile(Purpose.TX_DEFAULT, [(0, 10), (20 * H, 6), (25 * H, 2)], kind=Kind.RECURRING,
                duration=30 * H, recurrency=Recurrency.DAILY)
    # The 25 h period never runs, the 30 h duration is cut to 24 h: the next day starts over.
    result = evse_composite([p], window_s=2 * DAY)
    assert plain(result) == [(0, 10), (20 * H, 6), (DAY, 10), (DAY + 20 * H, 6)]


def test_recurring_profile_does_not_apply_before_its_start_schedule():
    p = profile(Purpose.TX_DEFAULT, [(0, 10)], kind=Kind.RECURRING, duration=H,
                start=T0 + timedelta(hours=2), recurrency=Recurrency.DAILY)
    assert plain(evse_composite([p], window_s=2 * DAY)) == [
        (0, 32), (2 * H, 10), (3 * H, 32), (DAY + 2 * H, 10), (DAY + 3 * H, 32)]


# ---------------------------------------------------------------------- 1.6 7.12 units


def test_spec_1_6_7_12_watts_without_number_phases_mean_three_phases_on_a_3_phase_evse():
    p = profile(Purpose.TX_DEFAULT, [(0, 11000)], unit="W")
    assert evse_composite([p]) == [(0, D("15.9"), 3)]


def test_spec_1_6_7_12_watts_on_one_phase_divide_by_one_phase():
    p = profile(Purpose.TX_DEFAULT, [P(0, 3680, 1)], unit="W")
    assert evse_composite([p]) == [(0, 16, 1)]


def test_amps_become_watts_with_the_phases_in_use():
    p = profile(Purpose.TX_DEFAULT, [P(0, 16, 1), P(H, 16, 3)])
    assert evse_composite([p], unit="W") == [(0, 3680, 1), (H, 11040, 3)]
    assert evse_composite([p], unit="W", phases=1) == [(0, 3680, 1)]


def test_a_single_phase_period_restricts_the_phases_of_the_result():
    cap = profile(Purpose.STATION_MAX, [P(0, 22000)], unit="W", evse=0, pid=2)
    tx = profile(Purpose.TX_DEFAULT, [P(0, 32, 1)], pid=3)
    # One phase in use: the 22 kW cap allows 95.6 A on it, so the EVSE's 32 A rules.
    assert evse_composite([cap, tx]) == [(0, 32, 1)]


def test_converted_limits_are_rounded_down_never_up():
    p = profile(Purpose.TX_DEFAULT, [(0, 7399)], unit="W")  # 10.72 A
    (period,) = evse_composite([p])
    assert period.limit == D("10.7")


def test_decimal_limits_stay_exact():
    p = profile(Purpose.TX_DEFAULT, [(0, 0.1 + 0.2), (60, D("7.2"))])
    assert plain(evse_composite([p])) == [(0, D("0.30000000000000004")), (60, D("7.2"))]
    q = profile(Purpose.TX_DEFAULT, [(0, 7.2)])
    assert evse_composite([q])[0].limit == D("7.2")


# ---------------------------------------------------------------------- 2.0.1


def test_spec_2_0_1_part6_renegotiate_charging_limits_tx_profile_of_300_s():
    # Table 246 RenegotiateChargingLimits: TxProfile, duration 300, startPeriod 0, limit 10
    # (A) or 10000 (W).
    amps = profile(Purpose.TX, [(0, 10)], duration=300, kind=Kind.RELATIVE, transaction_id="t1")
    assert plain(evse_composite([amps], tx_start=T0, transaction_id="t1")) == [(0, 10), (300, 32)]
    watts = profile(Purpose.TX, [(0, 10000)], duration=300, kind=Kind.RELATIVE, unit="W",
                    transaction_id="t1")
    assert plain(evse_composite([watts], tx_start=T0, unit="W")) == [(0, 10000), (300, 22080)]


def test_spec_2_0_1_errata_708_relative_profile_stays_relative_to_power_path_closed():
    # "When a ChargingProfile is received for a transaction that is already charging, then the
    # charging schedule periods should remain relative to the PowerPathClosed moment."
    power_path_closed = T0 - timedelta(minutes=30)
    p = profile(Purpose.TX, [(0, 10), (H, 16)], kind=Kind.RELATIVE, transaction_id="t1")
    result = evse_composite([p], tx_start=power_path_closed, transaction_id="t1")
    assert plain(result) == [(0, 10), (1800, 16)]
    assert next_change([p], T0, evse_id=1, tx_start=power_path_closed) == T0 + timedelta(
        minutes=30)


def test_spec_2_0_1_k08_composite_for_evse_0_is_the_station_composite():
    profiles = [station_max_20_then_10(), default_16_then_32()]
    via_composite = composite(profiles, evse_id=0, window_start=T0, window_s=DAY,
                              evse_max_a=63, phases=3)
    assert via_composite == station_composite(profiles, window_start=T0, window_s=DAY,
                                              station_max_a=63, phases=3)
    assert plain(via_composite) == [(0, 16), (1800, 20), (H, 10)]


def test_external_constraints_cap_the_station_and_the_evse():
    ext_station = profile(Purpose.EXTERNAL, [(0, 25)], evse=0, pid=1)
    ext_evse = profile(Purpose.EXTERNAL, [(0, 12), (H, 40)], evse=2, pid=2)
    default = profile(Purpose.TX_DEFAULT, [(0, 30)], evse=0, pid=3)
    assert plain(evse_composite([ext_station, ext_evse, default], evse=2)) == [(0, 12), (H, 25)]
    assert plain(evse_composite([ext_station, ext_evse, default], evse=1)) == [(0, 25)]


def test_evse_tx_default_prevails_over_the_station_wide_one_at_the_same_stack_level():
    station_wide = profile(Purpose.TX_DEFAULT, [(0, 16)], evse=0, pid=1)
    own = profile(Purpose.TX_DEFAULT, [(0, 10)], evse=1, pid=2, duration=H)
    assert plain(evse_composite([station_wide, own], evse=1)) == [(0, 10), (H, 16)]
    assert plain(evse_composite([station_wide, own], evse=2)) == [(0, 16)]


def test_station_wide_tx_default_on_a_higher_stack_level_prevails_over_the_evse_one():
    # 3.13.2 stacking holds across EVSE 0 and the EVSE: the highest level wins.
    station_holiday = profile(Purpose.TX_DEFAULT, [(0, 32)], evse=0, stack=2, pid=1)
    own = profile(Purpose.TX_DEFAULT, [(0, 10)], evse=1, stack=1, pid=2)
    assert plain(evse_composite([station_holiday, own], evse=1)) == [(0, 32)]


def test_tx_profile_does_not_apply_before_its_transaction_started():
    tx = profile(Purpose.TX, [(0, 10)], start=T0 - timedelta(hours=1))
    assert plain(evse_composite([tx], tx_start=T0 + timedelta(hours=1))) == [(0, 32), (H, 10)]


def test_naive_datetimes_are_taken_as_utc():
    p = profile(Purpose.TX_DEFAULT, [(0, 10)], start=datetime(2024, 5, 6, 1),
                valid_to=datetime(2024, 5, 6, 2))
    assert plain(evse_composite([p])) == [(0, 32), (H, 10), (2 * H, 32)]


def test_a_second_with_a_change_inside_gets_the_lower_limit():
    drop = T0 + timedelta(seconds=10, milliseconds=500)
    rise = T0 + timedelta(seconds=20, milliseconds=500)
    p = profile(Purpose.TX_DEFAULT, [(0, 6)], start=drop, valid_to=rise)
    assert plain(evse_composite([p], window_s=60)) == [(0, 32), (10, 6), (21, 32)]


def test_limit_at_is_the_first_period_of_the_composite_from_that_instant():
    p = daily_6kw_profile()
    assert limit_at([p], T0 + timedelta(hours=9), evse_id=1, evse_max_a=32, phases=3,
                    unit="W") == (0, 6000, 3)


def test_an_empty_window_has_no_periods():
    assert evse_composite([daily_6kw_profile()], window_s=0) == []


# ---------------------------------------------------------------------- regressions


def test_regression_zero_limit_is_a_limit_not_no_limit():
    zero_tx = profile(Purpose.TX, [(0, 0)], pid=1)
    assert evse_composite([zero_tx], tx_start=T0) == [(0, 0, 3)]
    zero_max = profile(Purpose.STATION_MAX, [(0, 0)], evse=0, pid=2)
    assert evse_composite([zero_max]) == [(0, 0, 3)]
    assert station_composite([zero_max], window_start=T0, window_s=H, station_max_a=63,
                             phases=3) == [(0, 0, 3)]
    low = profile(Purpose.TX_DEFAULT, [(0, 16)], stack=0, pid=3)
    top = profile(Purpose.TX_DEFAULT, [(0, 0), (H, 8)], stack=1, pid=4)
    assert plain(evse_composite([low, top])) == [(0, 0), (H, 8)]
    assert evse_composite([profile(Purpose.TX_DEFAULT, [(0, 0)], unit="W")], unit="W") == [
        (0, 0, 3)]


def test_regression_duration_0_means_no_duration_not_an_empty_schedule():
    p = profile(Purpose.TX_DEFAULT, [(0, 10), (H, 12)], duration=0)
    assert plain(evse_composite([p], window_s=10 * DAY)) == [(0, 10), (H, 12)]
    assert next_change([p], T0 + timedelta(hours=2), evse_id=1) is None
    assert validate(p) == []


def test_regression_relative_profile_without_transaction_counts_from_the_window_start():
    p = profile(Purpose.TX_DEFAULT, [(0, 10), (H, 20)], kind=Kind.RELATIVE, evse=0)
    assert plain(evse_composite([p])) == [(0, 10), (H, 20)]
    later = T0 + timedelta(hours=5)
    assert plain(evse_composite([p], start=later)) == [(0, 10), (H, 20)]
    # Asked at any moment, a transaction starting then would get period 0: nothing to wait for.
    assert limit_at([p], later, evse_id=1, evse_max_a=32, phases=3).limit == 10
    assert next_change([p], later, evse_id=1) is None


def test_regression_station_wide_tx_default_is_not_summed_or_split_across_evses():
    default = profile(Purpose.TX_DEFAULT, [(0, 16)], evse=0)
    station = station_composite([default], window_start=T0, window_s=DAY, station_max_a=63,
                                phases=3)
    assert station == [(0, 16, 3)]  # not 32 (two EVSEs' worth), not 63
    for evse in (1, 2):
        assert evse_composite([default], evse=evse) == [(0, 16, 3)]  # not 8 each


def test_regression_unsorted_or_repeated_period_starts_do_not_crash_the_composite():
    p = profile(Purpose.TX_DEFAULT, [(H, 6), (0, 10), (H, 8)])
    assert validate(p)  # rejected by validation ...
    assert plain(evse_composite([p])) == [(0, 10), (H, 8)]  # ... and still safe to compute


# ====================================================================== validation


def test_validate_reports_every_problem_at_once():
    bad = ChargingProfile(
        id=1, stack_level=9, purpose=Purpose.TX, kind=Kind.RELATIVE, evse_id=0,
        schedules=[ChargingSchedule("W", [P(10, -1), P(5, 6)], start=T0)])
    problems = validate(bad, max_stack_level=8, allowed_units=("A",))
    text = "\n".join(problems)
    for fragment in ("stack level 9 is above the maximum 8", "EVSE > 0",
                     "rate unit W is not supported", "must not have startSchedule",
                     "first period starts at 10 s, not 0", "limit -1 is negative",
                     "starts must increase"):
        assert fragment in text, (fragment, problems)


@pytest.mark.parametrize(("kwargs", "fragment"), [
    (dict(kind=Kind.ABSOLUTE, start=None), "absolute profile needs startSchedule"),
    (dict(kind=Kind.RECURRING, start=None, recurrency=Recurrency.DAILY),
     "recurring profile needs startSchedule"),
    (dict(kind=Kind.RECURRING), "needs a recurrency kind"),
    (dict(stack=-1), "stack level -1"),
    (dict(duration=-5), "duration -5"),
    (dict(min_rate=-1), "minChargingRate"),
    (dict(transaction_id=3), "belongs only on a transaction profile"),
    (dict(valid_from=T0, valid_to=T0), "never be valid"),
    (dict(evse=7), "EVSE 7 does not exist"),
])
def test_validate_rejects_a_default_profile_with(kwargs, fragment):
    p = profile(Purpose.TX_DEFAULT, [(0, 16)], **kwargs)
    problems = validate(p, evse_ids={1, 2})
    assert any(fragment in problem for problem in problems), problems


def test_validate_rejects_periods_that_do_not_start_at_0_or_do_not_increase():
    assert any("not 0" in x for x in validate(profile(Purpose.TX_DEFAULT, [(60, 16)])))
    same = validate(profile(Purpose.TX_DEFAULT, [(0, 16), (60, 10), (60, 8)]))
    assert any("period 3" in x and "must increase" in x for x in same), same
    down = validate(profile(Purpose.TX_DEFAULT, [(0, 16), (600, 10), (300, 8)]))
    assert any("period 3: starts at 300 s" in x for x in down), down


def test_validate_rejects_limits_that_are_negative_or_no_number():
    assert any("negative" in x for x in validate(profile(Purpose.TX_DEFAULT, [(0, -0.1)])))
    assert any("not a number" in x
               for x in validate(profile(Purpose.TX_DEFAULT, [(0, float("nan"))])))
    assert validate(profile(Purpose.TX_DEFAULT, [(0, 0)])) == []  # zero is fine


def test_validate_station_max_belongs_on_evse_0_and_is_not_relative():
    on_evse = validate(profile(Purpose.STATION_MAX, [(0, 16)], evse=1))
    assert any("belongs on EVSE 0" in x for x in on_evse), on_evse
    relative = validate(profile(Purpose.STATION_MAX, [(0, 16)], evse=0, kind=Kind.RELATIVE))
    assert any("cannot be Relative" in x for x in relative), relative
    assert validate(profile(Purpose.STATION_MAX, [(0, 16)], evse=0)) == []


def test_validate_tx_profile_needs_its_running_transaction():
    tx = profile(Purpose.TX, [(0, 16)], kind=Kind.RELATIVE, transaction_id="t1")
    assert any("no transaction is running on EVSE 1" in x for x in validate(tx))
    assert validate(tx, transactions={1: "t1"}) == []
    other = validate(tx, transactions={1: "t2"})
    assert any("is not the one running on EVSE 1" in x for x in other), other
    # 1.6 before StartTransaction.conf: running, id not known yet.
    assert validate(tx, transactions={1: None}) == []
    unnamed = profile(Purpose.TX, [(0, 16)], kind=Kind.RELATIVE)
    assert validate(unnamed, transactions={1: "t1"}) == []
    assert any("must name its transaction" in x
               for x in validate(unnamed, transactions={1: "t1"}, require_transaction_id=True))


def test_validate_tx_profile_in_a_remote_start_has_no_transaction_yet():
    unnamed = profile(Purpose.TX, [(0, 16)], kind=Kind.RELATIVE)
    assert validate(unnamed, remote_start=True) == []
    named = profile(Purpose.TX, [(0, 16)], kind=Kind.RELATIVE, transaction_id=5)
    assert any("must not name a transaction" in x for x in validate(named, remote_start=True))


def test_validate_tx_profile_on_evse_0_is_rejected():
    problems = validate(profile(Purpose.TX, [(0, 16)], evse=0), transactions={1: "t"})
    assert any("EVSE > 0" in x for x in problems), problems


def test_validate_external_constraints_only_from_an_external_system():
    ext = profile(Purpose.EXTERNAL, [(0, 16)], evse=0)
    assert any("K01.FR.22" in x for x in validate(ext))
    assert validate(ext, external_allowed=True) == []


def test_validate_limits_on_periods_schedules_and_units():
    many = profile(Purpose.TX_DEFAULT, [(i * 60, 16) for i in range(5)])
    assert any("5 periods, at most 4" in x for x in validate(many, max_periods=4))
    two = ChargingProfile(id=1, stack_level=0, purpose=Purpose.TX_DEFAULT, kind=Kind.ABSOLUTE,
                          schedules=[ChargingSchedule("A", [P(0, 16)], start=T0)] * 2)
    assert any("2 charging schedules, at most 1" in x for x in validate(two))
    assert validate(two, max_schedules=3) == []
    assert any("unknown rate unit" in x
               for x in validate(profile(Purpose.TX_DEFAULT, [(0, 16)], unit="kW")))
    empty = ChargingProfile(id=1, stack_level=0, purpose=Purpose.TX_DEFAULT, kind=Kind.ABSOLUTE,
                            schedules=[])
    assert any("no charging schedule" in x for x in validate(empty))
    no_periods = profile(Purpose.TX_DEFAULT, [])
    assert any("no periods" in x for x in validate(no_periods))


def test_validate_phase_to_use_needs_one_phase_and_phase_switching():
    p = profile(Purpose.TX_DEFAULT, [P(0, 16, 3, 2)])
    problems = validate(p)
    assert any("K01.FR.19" in x for x in problems) and any("K01.FR.20" in x for x in problems)
    ok = profile(Purpose.TX_DEFAULT, [P(0, 16, 1, 2)])
    assert validate(ok, phase_switching=True) == []
    assert any("numberPhases 4" in x
               for x in validate(profile(Purpose.TX_DEFAULT, [P(0, 16, 4)])))


def test_validate_stack_level_above_the_maximum():
    assert any("above the maximum 3" in x
               for x in validate(profile(Purpose.TX_DEFAULT, [(0, 16)], stack=4),
                                 max_stack_level=3))
    assert validate(profile(Purpose.TX_DEFAULT, [(0, 16)], stack=3), max_stack_level=3) == []


anything = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**6), st.text(max_size=5),
                     st.floats(allow_nan=True), st.decimals(allow_nan=True),
                     st.datetimes(timezones=st.sampled_from([None, UTC])))


@settings(max_examples=300, deadline=None)
@given(fields=st.fixed_dictionaries({
    "id": anything, "stack_level": anything, "purpose": anything, "kind": anything,
    "recurrency": anything, "valid_from": anything, "valid_to": anything,
    "transaction_id": anything, "evse_id": anything}),
    sched=st.fixed_dictionaries({"rate_unit": anything, "duration_s": anything,
                                 "start": anything, "min_rate": anything}),
    periods=st.lists(st.builds(P, anything, anything, anything, anything), max_size=4))
def test_validate_never_raises_and_says_what_is_wrong(fields, sched, periods):
    p = ChargingProfile(schedules=[ChargingSchedule(periods=periods, **sched)], **fields)
    problems = validate(p, evse_ids={1}, transactions={1: "x"})
    assert isinstance(problems, list) and all(isinstance(x, str) and x for x in problems)


# ====================================================================== properties

# The reference: a naive reading of the rules, one instant at a time.

STEP = 60              # every time in the generated profiles is a whole minute from T0
WINDOW = 8 * H


def ref_applies(p: ChargingProfile, t: datetime, anchor: datetime) -> tuple[Decimal, int | None
                                                                             ] | None:
    """The limit ``p`` sets at ``t`` (in its own unit), or None if it does not apply."""
    if p.valid_from is not None and t < p.valid_from:
        return None
    if p.valid_to is not None and t >= p.valid_to:
        return None
    s = p.schedules[0]
    duration = s.duration_s or None
    if p.kind is Kind.RECURRING:
        every = DAY if p.recurrency is Recurrency.DAILY else 7 * DAY
        if t < s.start:
            return None
        n = (t - s.start).total_seconds() // every
        base = s.start + timedelta(seconds=n * every)
        duration = min(duration or every, every)
    elif p.kind is Kind.ABSOLUTE:
        base = s.start
    else:
        base = anchor
    offset = (t - base).total_seconds()
    if offset < 0 or (duration is not None and offset >= duration):
        return None
    started = [q for q in s.periods if q.start_s <= offset]
    if not started:
        return None
    last = max(started, key=lambda q: q.start_s)
    return D(str(last.limit)), last.number_phases


def ref_winner(candidates, t, anchor):
    """Highest stack level first, the EVSE's own before EVSE 0's: the first that applies."""
    for p in sorted(candidates, key=lambda p: (-p.stack_level, p.evse_id == 0)):
        hit = ref_applies(p, t, anchor)
        if hit is not None:
            return p, hit
    return None


def ref_groups(profiles, t, *, evse, tx_start):
    """The prevailing (profile, limit) per purpose group at ``t``."""
    anchor = tx_start if tx_start is not None else WINDOW_START
    groups = {}
    tx = [p for p in profiles if p.purpose is Purpose.TX and p.evse_id == evse
          and tx_start is not None and t >= tx_start]
    defaults = [p for p in profiles if p.purpose is Purpose.TX_DEFAULT and p.evse_id in (0, evse)]
    groups["tx"] = ref_winner(tx, t, anchor) or ref_winner(defaults, t, anchor)
    groups["max"] = ref_winner([p for p in profiles if p.purpose is Purpose.STATION_MAX
                                and p.evse_id == 0], t, WINDOW_START)
    groups["ext0"] = ref_winner([p for p in profiles if p.purpose is Purpose.EXTERNAL
                                 and p.evse_id == 0], t, WINDOW_START)
    groups["ext"] = ref_winner([p for p in profiles if p.purpose is Purpose.EXTERNAL
                                and p.evse_id == evse], t, anchor)
    return {name: hit for name, hit in groups.items() if hit is not None}


WINDOW_START = T0


def at(periods: list[CompositePeriod], offset_s: int) -> CompositePeriod:
    starts = [p.start_s for p in periods]
    return periods[bisect.bisect_right(starts, offset_s) - 1]


def minutes(lo: int, hi: int):
    return st.integers(lo, hi).map(lambda m: m * STEP)


@st.composite
def profiles_strategy(draw, *, units=("A",), phases=(None,)):
    count = draw(st.integers(0, 8))
    out = []
    seen = set()
    for pid in range(count):
        # The 1.6 / 2.0.1 purposes and kinds (2.1's: tests/test_smart_charging_21_engine.py).
        purpose = draw(st.sampled_from([p for p in Purpose if p in BASE_PURPOSES]))
        if purpose is Purpose.STATION_MAX:
            evse = 0
        elif purpose is Purpose.TX:
            evse = draw(st.sampled_from([1, 2]))
        else:
            evse = draw(st.sampled_from([0, 1, 2]))
        stack = draw(st.integers(0, 3))
        if (purpose, evse, stack) in seen:  # one per purpose, EVSE and level, as stored
            continue
        seen.add((purpose, evse, stack))
        kind = draw(st.sampled_from([k for k in Kind if k in BASE_KINDS]))
        start = T0 + timedelta(seconds=draw(minutes(-48 * 60, 10 * 60)))
        n = draw(st.integers(1, 4))
        offsets = sorted(draw(st.sets(minutes(1, 10 * 60), min_size=n - 1, max_size=n - 1)))
        unit = draw(st.sampled_from(units))
        top = 40 if unit == "A" else 30000
        limits = st.one_of(st.just(0), st.integers(0, top * 10).map(lambda x: D(x) / 10))
        periods = [P(o, draw(limits), draw(st.sampled_from(phases))) for o in [0, *offsets]]
        duration = draw(st.one_of(st.none(), st.just(0), minutes(1, 30 * 60)))
        valid_from = draw(st.one_of(st.none(), minutes(-60, 9 * 60).map(
            lambda s: T0 + timedelta(seconds=s))))
        valid_to = draw(st.one_of(st.none(), minutes(0, 10 * 60).map(
            lambda s: T0 + timedelta(seconds=s))))
        out.append(profile(purpose, periods, kind=kind, start=start, duration=duration,
                           unit=unit, stack=stack, evse=evse, pid=pid,
                           recurrency=draw(st.sampled_from(list(Recurrency)))
                           if kind is Kind.RECURRING else None,
                           valid_from=valid_from, valid_to=valid_to))
    return out


tx_starts = st.one_of(st.none(), minutes(-6 * 60, 2 * 60).map(lambda s: T0 + timedelta(seconds=s)))
evse_max = st.sampled_from([6, 16, 32, D("13.5")])
PROPERTY = settings(max_examples=100, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def well_formed(periods: list[CompositePeriod], window_s: int) -> None:
    assert periods and periods[0].start_s == 0
    for a, b in zip(periods, periods[1:], strict=False):
        assert a.start_s < b.start_s < window_s
        assert (a.limit, a.number_phases) != (b.limit, b.number_phases)


@PROPERTY
@given(profiles=profiles_strategy(), evse=st.sampled_from([1, 2]), tx_start=tx_starts,
       max_a=evse_max)
def test_composite_is_the_minimum_of_the_prevailing_limits_at_every_instant(
        profiles, evse, tx_start, max_a):
    result = evse_composite(profiles, evse=evse, tx_start=tx_start, max_a=max_a,
                            window_s=WINDOW)
    well_formed(result, WINDOW)
    for offset in range(0, WINDOW, STEP):
        t = T0 + timedelta(seconds=offset)
        groups = ref_groups(profiles, t, evse=evse, tx_start=tx_start)
        got = at(result, offset).limit
        # Never above any prevailing profile's limit, the station max or the EVSE's rating.
        assert got <= max_a
        for _, (limit, _) in groups.values():
            assert got <= limit
        # Where one purpose speaks, it is exactly that purpose's winning stack level.
        if len(groups) == 1:
            ((_, (limit, _)),) = groups.values()
            assert got == min(limit, D(str(max_a)))
        assert got == min([D(str(max_a))] + [limit for _, (limit, _) in groups.values()])


@PROPERTY
@given(profiles=profiles_strategy(units=("A", "W"), phases=(None, 1, 3)),
       evse=st.sampled_from([1, 2]), tx_start=tx_starts, max_a=evse_max,
       phases=st.sampled_from([1, 3]), unit=st.sampled_from(["A", "W"]))
def test_composite_in_mixed_units_never_exceeds_any_prevailing_limit(
        profiles, evse, tx_start, max_a, phases, unit):
    result = evse_composite(profiles, evse=evse, tx_start=tx_start, max_a=max_a,
                            window_s=WINDOW, phases=phases, unit=unit)
    well_formed(result, WINDOW)
    volts = D(230)
    for offset in range(0, WINDOW, STEP):
        t = T0 + timedelta(seconds=offset)
        got = at(result, offset)
        n = got.number_phases
        assert 1 <= n <= phases
        rating = D(str(max_a)) if unit == "A" else D(str(max_a)) * volts * n
        assert got.limit <= rating
        for p, (limit, number_phases) in ref_groups(profiles, t, evse=evse,
                                                     tx_start=tx_start).values():
            assert number_phases is None or n <= number_phases
            own = p.schedules[0].rate_unit
            if own != unit:
                limit = ((limit / (volts * n)).quantize(D("0.1"), ROUND_FLOOR) if unit == "A"
                         else limit * volts * n)
            assert got.limit <= limit


@PROPERTY
@given(profiles=profiles_strategy(), max_a=evse_max)
def test_every_evse_composite_fits_in_the_station_composite(profiles, max_a):
    envelope = station_composite(profiles, window_start=T0, window_s=WINDOW, station_max_a=40,
                                 phases=3, tx_default=False)
    station_only = [p for p in profiles if p.evse_id == 0]
    station = station_composite(station_only, window_start=T0, window_s=WINDOW,
                                station_max_a=40, phases=3)
    well_formed(envelope, WINDOW)
    for evse in (1, 2):
        mine = evse_composite(profiles, evse=evse, max_a=max_a, window_s=WINDOW,
                              tx_start=T0 - timedelta(hours=1))
        defaults_only = evse_composite(station_only, evse=evse, max_a=max_a, window_s=WINDOW)
        for offset in range(0, WINDOW, STEP):
            assert at(mine, offset).limit <= at(envelope, offset).limit
            assert at(defaults_only, offset).limit <= at(station, offset).limit


@PROPERTY
@given(profiles=profiles_strategy(units=("A", "W"), phases=(None, 1, 3)),
       max_a=evse_max, phases=st.sampled_from([1, 3]), unit=st.sampled_from(["A", "W"]))
def test_clearing_every_profile_gives_back_the_evse_maximum(profiles, max_a, phases, unit):
    cleared = evse_composite([], max_a=max_a, phases=phases, unit=unit, window_s=WINDOW)
    full = D(str(max_a)) if unit == "A" else D(str(max_a)) * 230 * phases
    assert cleared == [(0, full, phases)]
    # ... whatever was installed before: the engine keeps no state.
    evse_composite(profiles, max_a=max_a, phases=phases, unit=unit, window_s=WINDOW)
    assert evse_composite([], max_a=max_a, phases=phases, unit=unit,
                          window_s=WINDOW) == cleared


@PROPERTY
@given(profiles=profiles_strategy(), evse=st.sampled_from([0, 1, 2]), tx_start=tx_starts,
       now=minutes(0, 4 * 60))
def test_nothing_changes_before_next_change(profiles, evse, tx_start, now):
    start = T0 + timedelta(seconds=now)
    if evse == 0:
        tx_start = None
    upcoming = next_change(profiles, start, evse_id=evse, tx_start=tx_start)
    assert upcoming is None or upcoming > start
    horizon = start + timedelta(hours=10)
    until = min(upcoming, horizon) if upcoming is not None else horizon

    def limit(moment):
        return limit_at(profiles, moment, evse_id=evse, tx_start=tx_start, evse_max_a=32,
                        phases=3)

    first = limit(start)
    moment = start
    while moment < until:
        assert limit(moment) == first, (moment, upcoming)
        moment += timedelta(seconds=STEP)


@PROPERTY
@given(profiles=profiles_strategy(units=("A", "W", "kW"), phases=(None, 1, 3, 7)),
       evse=st.sampled_from([1, 2]), tx_start=tx_starts)
def test_composite_of_profiles_that_fail_validation_is_still_well_formed(
        profiles, evse, tx_start):
    result = evse_composite(profiles, evse=evse, tx_start=tx_start, window_s=WINDOW)
    well_formed(result, WINDOW)
    assert all(0 <= p.limit <= 32 for p in result)
