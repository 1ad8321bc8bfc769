"""Smart-charging composite: time to compute 24 h of limits from 100 installed profiles.

    python -m bench.composite [--runs 500] [--quick]

The scheduler re-computes an EVSE's composite at every period boundary and the adapters answer
GetCompositeSchedule from the same function, so it must stay cheap on a controller board.  Two
sets of 100 profiles, fixed by a seed so that runs compare:

- a station mix: a 10-EVSE station with 5 station maxima, 5 external constraints, 10
  station-wide TxDefaults, and 4 TxDefaults and 4 TxProfiles per EVSE (of which EVSE 1's
  composite sees about 30);
- the worst case: all 100 apply to EVSE 1 (TxDefault and TxProfile on 10 stack levels each,
  station maxima, external constraints), so every profile is read.

Profiles are half-hourly daily / weekly recurring schedules (48 periods), absolute and relative
ones with durations, and validity windows that leave holes in the higher stack levels, so that
the lower levels are really consulted.  Measured: ``composite`` over 24 h in A (and in W),
``station_composite``, ``next_change`` and ``validate`` of one profile; median and p99 of
``--runs`` calls each, in one process, after a warm-up.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from agent.core.smart_charging import (
    ChargingProfile,
    ChargingSchedule,
    ChargingSchedulePeriod,
    Kind,
    Purpose,
    Recurrency,
    composite,
    next_change,
    station_composite,
    validate,
)
from bench._common import Report, percentile

NOW = datetime(2024, 5, 8, 7, 13, tzinfo=UTC)
DAY = 86_400
TARGET_MS = 5.0


def _periods(rng: random.Random, count: int, span_s: int, unit: str) -> list:
    step = span_s // count
    top = 32 if unit == "A" else 22000
    return [ChargingSchedulePeriod(i * step, Decimal(rng.randrange(0, top * 10)) / 10,
                                   rng.choice([None, 1, 3]))
            for i in range(count)]


def _profile(rng: random.Random, pid: int, purpose: Purpose, evse: int,
             stack: int) -> ChargingProfile:
    unit = rng.choice(["A", "A", "W"])
    shape = rng.random()
    relative = (purpose is Purpose.TX and shape < 0.5) or (
        shape < 0.2 and purpose is not Purpose.STATION_MAX)
    if relative:
        kind, recurrency, start = Kind.RELATIVE, None, None
        schedule = ChargingSchedule(unit, _periods(rng, rng.randint(4, 24), 6 * 3600, unit),
                                    duration_s=rng.choice([None, 4 * 3600, 8 * 3600]))
    elif shape < 0.4:
        kind, recurrency = Kind.ABSOLUTE, None
        start = NOW - timedelta(hours=rng.randint(0, 12))
        schedule = ChargingSchedule(unit, _periods(rng, 24, 12 * 3600, unit),
                                    duration_s=rng.choice([12 * 3600, 24 * 3600]), start=start)
    else:
        kind = Kind.RECURRING
        recurrency = rng.choice([Recurrency.DAILY, Recurrency.WEEKLY])
        span = DAY if recurrency is Recurrency.DAILY else 7 * DAY
        start = datetime(2024, 1, 1, tzinfo=UTC)  # a Monday
        schedule = ChargingSchedule(unit, _periods(rng, 48, span, unit), duration_s=span,
                                    start=start)
    valid_from = valid_to = None
    if stack > 0 and rng.random() < 0.7:  # exceptions: the levels below show through
        valid_from = NOW + timedelta(hours=rng.randint(-6, 18))
        valid_to = valid_from + timedelta(hours=rng.randint(1, 8))
    return ChargingProfile(id=pid, stack_level=stack, purpose=purpose, kind=kind,
                           schedules=[schedule], recurrency=recurrency, valid_from=valid_from,
                           valid_to=valid_to, evse_id=evse,
                           transaction_id="tx-1" if purpose is Purpose.TX else None)


def station_mix(seed: int = 16) -> list[ChargingProfile]:
    rng = random.Random(seed)
    out: list[ChargingProfile] = []
    for stack in range(5):
        out.append(_profile(rng, len(out), Purpose.STATION_MAX, 0, stack))
        out.append(_profile(rng, len(out), Purpose.EXTERNAL, 0, stack))
    for stack in range(10):
        out.append(_profile(rng, len(out), Purpose.TX_DEFAULT, 0, stack))
    for evse in range(1, 11):
        for stack in range(4):
            out.append(_profile(rng, len(out), Purpose.TX_DEFAULT, evse, 10 + stack))
            out.append(_profile(rng, len(out), Purpose.TX, evse, stack))
    return out


def worst_case(seed: int = 61) -> list[ChargingProfile]:
    rng = random.Random(seed)
    out: list[ChargingProfile] = []
    per_purpose = [(Purpose.STATION_MAX, 0, 20), (Purpose.EXTERNAL, 0, 10),
                   (Purpose.EXTERNAL, 1, 10), (Purpose.TX_DEFAULT, 0, 20),
                   (Purpose.TX_DEFAULT, 1, 20), (Purpose.TX, 1, 20)]
    for purpose, evse, count in per_purpose:
        for stack in range(count):
            out.append(_profile(rng, len(out), purpose, evse, stack))
    return out


def _time_ms(fn: Callable[[], object], runs: int) -> list[float]:
    for _ in range(min(20, runs)):
        fn()
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return samples


def run(runs: int, quick: bool) -> Report:
    report = Report("composite", quick)
    tx_start = NOW - timedelta(minutes=40)
    details: dict[str, object] = {"runs": runs}
    for label, profiles in (("station mix", station_mix()), ("all on EVSE 1", worst_case())):
        assert len(profiles) == 100, len(profiles)

        def evse(unit: str, profiles: list[ChargingProfile] = profiles) -> list:
            return composite(profiles, evse_id=1, window_start=NOW, window_s=DAY,
                             tx_start=tx_start, transaction_id="tx-1", evse_max_a=32, phases=3,
                             unit=unit)

        periods = evse("A")
        amps = _time_ms(lambda: evse("A"), runs)
        watts = _time_ms(lambda: evse("W"), runs)
        report.add(f"composite 24 h, 100 profiles ({label}), median",
                   statistics.median(amps), "ms", TARGET_MS,
                   note=f"{len(periods)} result periods")
        report.add(f"composite 24 h, 100 profiles ({label}), p99", percentile(amps, 99), "ms")
        report.add(f"composite 24 h in W ({label}), median", statistics.median(watts), "ms")
        details[label] = {"result_periods": len(periods), "composite_a_ms": amps[:50]}

    profiles = station_mix()
    station = _time_ms(lambda: station_composite(profiles, window_start=NOW, window_s=DAY,
                                                 station_max_a=125, phases=3), runs)
    report.add("station_composite 24 h (station mix), median", statistics.median(station), "ms")
    worst = worst_case()
    nxt = _time_ms(lambda: next_change(worst, NOW, evse_id=1, tx_start=tx_start,
                                       transaction_id="tx-1"), runs)
    report.add("next_change (all on EVSE 1), median", statistics.median(nxt), "ms")
    one = worst[-1]
    checks = _time_ms(lambda: validate(one, max_stack_level=50, max_periods=48,
                                       evse_ids=range(1, 11), transactions={1: "tx-1"}),
                      runs)
    report.add("validate one 48-period profile, median", statistics.median(checks), "ms")
    report.details.update(details)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="smart-charging composite benchmark")
    p.add_argument("--runs", type=int, default=None, help="calls timed per figure (default 500)")
    p.add_argument("--quick", action="store_true", help="20 calls: checks the script, not speed")
    ns = p.parse_args(argv)
    runs = ns.runs or (20 if ns.quick else 500)
    run(runs, ns.quick).emit()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
