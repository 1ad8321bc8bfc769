"""The smart-charging engine's 2.1 additions, pure: PriorityCharging (K21 / K22),
LocalGeneration (K27) and Dynamic profiles (K28), worked examples and properties.

The 1.6 / 2.0.1 rules are tests/test_smart_charging_engine.py's (whose helpers this reuses);
these check what 2.1 adds on top and that it leaves those rules alone where it does not apply.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from agent.core.charging_profiles import profile_from_json, profile_to_json
from agent.core.smart_charging import (
    ChargingProfile,
    ChargingSchedule,
    CompositePeriod,
    Kind,
    Purpose,
    composite,
    next_change,
    profile_in_force,
    station_composite,
    validate,
)
from tests.test_smart_charging_engine import (
    PROPERTY,
    STEP,
    T0,
    WINDOW,
    P,
    at,
    evse_max,
    plain,
    profile,
    profiles_strategy,
    tx_starts,
    well_formed,
)

D = Decimal
ALL = {"allowed_purposes": frozenset(Purpose), "allowed_kinds": frozenset(Kind)}
TX = T0 - timedelta(hours=1)  # a transaction running since an hour before the window
LEAN = settings(PROPERTY, max_examples=40)  # the suite's time is shared


def evse_composite(profiles, *, window_s: int = 86_400, evse: int = 1, tx_start=None,
                   max_a: float = 32, unit: str = "A", priority: bool = False
                   ) -> list[CompositePeriod]:
    return composite(profiles, evse_id=evse, window_start=T0, window_s=window_s,
                     tx_start=tx_start, evse_max_a=max_a, phases=3, unit=unit,
                     priority=priority)


def dynamic(limit, *, updated=T0, duration=None, purpose=Purpose.TX_DEFAULT, stack=1, evse=1,
            interval=None, pid=7) -> ChargingProfile:
    return ChargingProfile(
        id=pid, stack_level=stack, purpose=purpose, kind=Kind.DYNAMIC, evse_id=evse,
        schedules=[ChargingSchedule("A", [P(0, limit)], duration_s=duration)],
        dyn_update_interval=interval, dyn_update_time=updated)


# ---------------------------------------------------------------------- priority (K21 / K22)


def test_priority_profile_replaces_tx_default_and_tx_profile_only_while_used():
    profiles = [profile(Purpose.TX_DEFAULT, [(0, 8)], kind=Kind.RELATIVE, pid=1),
                profile(Purpose.TX, [(0, 10)], kind=Kind.RELATIVE, pid=2),
                profile(Purpose.PRIORITY, [(0, 30)], kind=Kind.RELATIVE, evse=0, pid=3)]
    assert plain(evse_composite(profiles, tx_start=TX)) == [(0, 10)]
    assert plain(evse_composite(profiles, tx_start=TX, priority=True)) == [(0, 30)]
    # No transaction: nothing to give priority to, the default shows.
    assert plain(evse_composite(profiles, priority=True)) == [(0, 8)]


def test_priority_stays_under_the_station_maximum_and_external_constraints():
    profiles = [profile(Purpose.TX_DEFAULT, [(0, 8)], kind=Kind.RELATIVE, pid=1),
                profile(Purpose.PRIORITY, [(0, 30)], kind=Kind.RELATIVE, pid=3),
                profile(Purpose.STATION_MAX, [(0, 20)], evse=0, pid=4),
                profile(Purpose.EXTERNAL, [(0, 18)], evse=1, pid=5)]
    assert plain(evse_composite(profiles, tx_start=TX, priority=True)) == [(0, 18)]


def test_priority_gap_falls_through_to_the_transaction_profiles():
    ends = T0 + timedelta(hours=2)
    profiles = [profile(Purpose.TX_DEFAULT, [(0, 8)], kind=Kind.RELATIVE, pid=1),
                profile(Purpose.PRIORITY, [(0, 25)], kind=Kind.RELATIVE, pid=3,
                        valid_to=ends)]
    assert plain(evse_composite(profiles, tx_start=TX, priority=True,
                                window_s=4 * 3600)) == [(0, 25), (7200, 8)]
    assert next_change(profiles, T0, evse_id=1, tx_start=TX, priority=True) == ends
    assert profile_in_force(profiles, T0, evse_id=1, tx_start=TX, priority=True).id == 3
    assert profile_in_force(profiles, T0, evse_id=1, tx_start=TX).id == 1


# ---------------------------------------------------------------------- local generation (K27)


def test_local_generation_is_added_on_top_of_the_composite():
    """K27's example: 2 kW of local generation over a 5 kW default is 7 kW."""
    profiles = [profile(Purpose.TX_DEFAULT, [(0, 5000)], unit="W", kind=Kind.RELATIVE, pid=1),
                profile(Purpose.LOCAL_GENERATION, [(0, 2000)], unit="W", pid=2)]
    assert plain(evse_composite(profiles, tx_start=TX, unit="W")) == [(0, 7000)]


def test_local_generation_is_added_after_the_caps_and_never_above_the_rating():
    profiles = [profile(Purpose.TX_DEFAULT, [(0, 20)], kind=Kind.RELATIVE, pid=1),
                profile(Purpose.STATION_MAX, [(0, 12)], evse=0, pid=2),
                profile(Purpose.LOCAL_GENERATION, [(0, 5), (3600, 30)], evse=0, pid=3)]
    assert plain(evse_composite(profiles, tx_start=TX, max_a=32,
                                window_s=7200)) == [(0, 17), (3600, 32)]
    # Alone it is no limit at all: the EVSE's rating.
    alone = [profiles[2]]
    assert plain(evse_composite(alone, max_a=16)) == [(0, 16)]


def test_the_highest_local_generation_profile_counts_not_their_sum():
    profiles = [profile(Purpose.TX_DEFAULT, [(0, 10)], kind=Kind.RELATIVE, pid=1),
                profile(Purpose.LOCAL_GENERATION, [(0, 6)], stack=0, pid=2),
                profile(Purpose.LOCAL_GENERATION, [(0, 2)], stack=1, evse=0, pid=3)]
    assert plain(evse_composite(profiles, tx_start=TX)) == [(0, 12)]


def test_station_local_generation_raises_the_station_composite():
    profiles = [profile(Purpose.STATION_MAX, [(0, 20)], evse=0, pid=1),
                profile(Purpose.LOCAL_GENERATION, [(0, 6)], evse=0, pid=2)]
    (only,) = station_composite(profiles, window_start=T0, window_s=3600, station_max_a=64,
                                phases=3, tx_default=False)
    assert only.limit == 26
    (capped,) = station_composite(profiles, window_start=T0, window_s=3600, station_max_a=22,
                                  phases=3, tx_default=False)
    assert capped.limit == 22


# ---------------------------------------------------------------------- dynamic (K28)


def test_dynamic_profile_holds_its_limit_from_its_last_update():
    assert plain(evse_composite([dynamic(11)], tx_start=TX)) == [(0, 11)]
    assert next_change([dynamic(11)], T0, evse_id=1, tx_start=TX) is None


def test_dynamic_profile_not_updated_within_its_duration_falls_back():
    """K28.FR.13 / .15: dynUpdateTime + duration passed: the next valid profile applies."""
    profiles = [profile(Purpose.TX_DEFAULT, [(0, 6)], kind=Kind.RELATIVE, stack=0, pid=1),
                dynamic(14, updated=T0 - timedelta(seconds=60), duration=300)]
    assert plain(evse_composite(profiles, tx_start=TX, window_s=600)) == [(0, 14), (240, 6)]
    assert next_change(profiles, T0, evse_id=1, tx_start=TX) == T0 + timedelta(seconds=240)
    # K28.FR.14: an update makes it valid again, for another duration.
    revived = [profiles[0], dynamic(9, updated=T0 + timedelta(seconds=400), duration=300)]
    assert plain(evse_composite(revived, tx_start=TX, window_s=900)) == [
        (0, 6), (400, 9), (700, 6)]


def test_dynamic_fields_survive_the_state_file():
    p = dynamic(12, interval=30, duration=120, purpose=Purpose.PRIORITY)
    back = profile_from_json(profile_to_json(p))
    assert (back.kind, back.purpose, back.dyn_update_interval, back.dyn_update_time) == (
        Kind.DYNAMIC, Purpose.PRIORITY, 30, T0)
    assert back.schedules[0].periods[0].limit == 12


# ---------------------------------------------------------------------- validation


def test_versions_before_2_1_do_not_know_the_new_purposes_and_kinds():
    priority = profile(Purpose.PRIORITY, [(0, 16)], evse=0)
    assert any("unknown purpose" in p for p in validate(priority))
    assert validate(priority, **ALL) == []
    assert any("unknown kind" in p for p in validate(dynamic(8)))
    assert validate(dynamic(8), **ALL) == []


def test_2_1_rules_for_priority_and_dynamic_profiles():
    lasting = profile(Purpose.PRIORITY, [(0, 16)], duration=600)
    assert any("K01.FR.70" in p for p in validate(lasting, **ALL))
    two = ChargingProfile(id=1, stack_level=0, purpose=Purpose.TX_DEFAULT, kind=Kind.DYNAMIC,
                          evse_id=1, schedules=[ChargingSchedule("A", [P(0, 8), P(60, 6)])])
    assert any("one period" in p for p in validate(two, **ALL))
    absolute = ChargingProfile(id=1, stack_level=0, purpose=Purpose.TX_DEFAULT,
                               kind=Kind.ABSOLUTE, evse_id=1, dyn_update_interval=60,
                               schedules=[ChargingSchedule("A", [P(0, 8)], start=T0)])
    assert any("K01.FR.122" in p for p in validate(absolute, **ALL))
    assert any("dynUpdateInterval" in p for p in validate(dynamic(8, interval=-1), **ALL))


# ---------------------------------------------------------------------- properties


@LEAN
@given(profiles=profiles_strategy(), evse=st.sampled_from([1, 2]), tx_start=tx_starts,
       max_a=evse_max, level=st.integers(0, 3), limit=st.integers(0, 40),
       on=st.sampled_from([0, 1, 2]))
def test_priority_profiles_change_nothing_while_not_used(profiles, evse, tx_start, max_a,
                                                         level, limit, on):
    base = evse_composite(profiles, evse=evse, tx_start=tx_start, max_a=max_a, window_s=WINDOW)
    more = [*profiles, profile(Purpose.PRIORITY, [(0, limit)], kind=Kind.RELATIVE, stack=level,
                               evse=on, pid=99)]
    assert evse_composite(more, evse=evse, tx_start=tx_start, max_a=max_a,
                          window_s=WINDOW) == base


@LEAN
@given(profiles=profiles_strategy(), evse=st.sampled_from([1, 2]), tx_start=tx_starts,
       max_a=evse_max, extra=st.integers(0, 40).map(lambda x: D(x) / 2),
       on=st.sampled_from([0, 1, 2]))
def test_local_generation_never_lowers_the_limit_nor_lifts_it_beyond_rating_or_itself(
        profiles, evse, tx_start, max_a, extra, on):
    base = evse_composite(profiles, evse=evse, tx_start=tx_start, max_a=max_a, window_s=WINDOW)
    more = [*profiles, profile(Purpose.LOCAL_GENERATION, [(0, extra)], evse=on, pid=99)]
    result = evse_composite(more, evse=evse, tx_start=tx_start, max_a=max_a, window_s=WINDOW)
    well_formed(result, WINDOW)
    for offset in range(0, WINDOW, STEP):
        got, was = at(result, offset).limit, at(base, offset).limit
        assert was <= got <= D(str(max_a))
        if on in (0, evse):
            assert got == min(D(str(max_a)), was + extra)
        else:
            assert got == was
