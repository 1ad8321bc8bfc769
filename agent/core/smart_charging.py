"""The smart-charging engine: charging profiles, their validation and the composite schedule.

OCPP 1.6 (SetChargingProfile, GetCompositeSchedule, section 3.13) and 2.0.1 (use cases K01 and
K08) describe one machine with two spellings, so its rules live here once, in neutral terms.
The adapters map their JSON to :class:`ChargingProfile` and the result back; the scheduler asks
:func:`composite` / :func:`limit_at` for the limit and :func:`next_change` for when to ask
again.  Everything here is a pure function of its arguments (profiles, instants, the EVSE's
ratings): no clock, no store, no I/O.  That is what lets the scheduler call it at every
boundary, the adapters answer GetCompositeSchedule from the same code that drives the pilot,
and the tests check it against thousands of random profiles.

How a composite is made, and where each rule comes from:

- A profile applies at an instant when ``valid_from <= t < valid_to`` and ``t`` lies inside
  its schedule ``[start, start + duration)``: Absolute from startSchedule; Recurring from the
  most recent daily / weekly repetition of startSchedule (never before startSchedule itself);
  Relative from the start of the transaction, or from the window's start when there is none
  (what a transaction starting then would get).  No duration, or duration 0, means "the last
  period goes on" (1.6 7.13: "If the duration is left empty, the last period will continue
  indefinitely"; 0 is not a usable length, and reading it as "never" would silently drop a
  limit).  Periods past the duration, or past the recurrence, are not executed (1.6 5.16.4).
- Within a purpose the highest stack level that applies wins at each instant (1.6 3.13.2);
  a gap in it falls through to the lower levels.  TxProfile (only the running transaction's)
  overrules TxDefault (3.13.1) at each instant, so TxDefault shows again where the TxProfile's
  schedule has ended.  TxDefault of the EVSE and the station-wide TxDefault (EVSE 0, "applicable
  to all connectors") form one stack; at equal stack levels the EVSE's own wins (3.13.1: "the
  TxDefaultProfile SHALL be replaced only for that specific connector"; 2.0.1 K01.FR.52/53 keep
  the levels distinct anyway).
- The result is the minimum, at every instant, of that transaction-level limit, the station
  maximum (ChargePointMax / ChargingStationMax on EVSE 0), every ExternalConstraints and the
  EVSE's own rating (3.13.3: "calculated by taking the minimum value for each time interval").
  Where nothing applies the EVSE's rating fills the gap (3.13.6: no profiles, no constraints).
  A limit of 0 is a limit like any other.
- W and A meet through ``A = W / (voltage * phases)`` (1.6 7.12), with the phases that are in
  use at that instant: the fewest that the EVSE has and any applying period allows (a period
  without numberPhases allows all of the EVSE's; 7.12's "3 SHALL be assumed" on a three-phase
  EVSE).  Watts become amps rounded *down* to 0.1 A (the messages' one-digit fraction), so a
  conversion never lifts a limit.

Limits are :class:`~decimal.Decimal` throughout (the messages carry decimals, and 0.1 steps
must compare exactly); results never hold two adjacent periods with the same limit and phases.
Times are handled to the microsecond and reported in whole seconds; a second in which a limit
changes gets the lower of its limits.  Datetimes without a time zone are taken as UTC.
Recurrence counts exact 24 h / 7 d in UTC: a station that wants local-time days across a DST
change needs a profile for that day, as 1.6 3.13.7 notes.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from enum import StrEnum
from typing import NamedTuple

__all__ = [
    "ChargingProfile", "ChargingSchedule", "ChargingSchedulePeriod", "CompositePeriod", "Kind",
    "Purpose", "RateUnit", "Recurrency", "composite", "limit_at", "next_change",
    "profile_in_force", "station_composite", "validate",
]


class Purpose(StrEnum):
    """What a profile limits.  1.6 ChargePointMaxProfile and 2.0.1 ChargingStationMaxProfile
    are one value: both cap the whole station, on EVSE 0."""

    STATION_MAX = "StationMax"
    TX_DEFAULT = "TxDefault"
    TX = "Tx"
    EXTERNAL = "ExternalConstraints"


class Kind(StrEnum):
    """Where a schedule's periods count from."""

    ABSOLUTE = "Absolute"
    RECURRING = "Recurring"
    RELATIVE = "Relative"


class Recurrency(StrEnum):
    DAILY = "Daily"
    WEEKLY = "Weekly"


class RateUnit(StrEnum):
    A = "A"  # amperes per phase
    W = "W"  # total watts


@dataclass(frozen=True, slots=True)
class ChargingSchedulePeriod:
    """From ``start_s`` seconds after the schedule's start until the next period's start."""

    start_s: int
    limit: Decimal | float | int
    number_phases: int | None = None
    phase_to_use: int | None = None


@dataclass(frozen=True, slots=True)
class ChargingSchedule:
    rate_unit: RateUnit | str
    periods: Sequence[ChargingSchedulePeriod]
    duration_s: int | None = None
    start: datetime | None = None  # startSchedule
    min_rate: Decimal | float | None = None
    id: int | None = None  # 2.0.1 ChargingScheduleType.id (1.6 schedules have none)

    def __post_init__(self) -> None:
        object.__setattr__(self, "periods", tuple(self.periods))


@dataclass(frozen=True, slots=True)
class ChargingProfile:
    """A version-neutral charging profile.

    ``evse_id`` 0 is the station (1.6 connector 0).  ``schedules`` holds one schedule in 1.6
    and up to three in 2.0.1 (alternatives offered to an ISO 15118 EV); the composite uses the
    first, the one a station without ISO 15118 executes.
    """

    id: int
    stack_level: int
    purpose: Purpose | str
    kind: Kind | str
    schedules: Sequence[ChargingSchedule]
    recurrency: Recurrency | str | None = None
    valid_from: datetime | None = None
    valid_to: datetime | None = None
    transaction_id: str | int | None = None
    evse_id: int = 0
    # Who set it (2.0.1 ChargingLimitSourceEnumType): "CSO" for what the CSMS installs;
    # an ExternalConstraints profile names the external system ("EMS", "SO", "Other").
    charging_limit_source: str = "CSO"

    def __post_init__(self) -> None:
        object.__setattr__(self, "schedules", tuple(self.schedules))


class CompositePeriod(NamedTuple):
    """One period of a composite: from ``start_s`` (seconds after the window's start) until
    the next period's start, or the window's end."""

    start_s: int
    limit: Decimal
    number_phases: int


# ---------------------------------------------------------------------- validation


def validate(
    profile: ChargingProfile,
    *,
    max_stack_level: int | None = None,
    max_periods: int | None = None,
    max_schedules: int = 1,
    allowed_units: Collection[str] = ("A", "W"),
    evse_ids: Collection[int] | None = None,
    transactions: Mapping[int, object] | None = None,
    remote_start: bool = False,
    require_transaction_id: bool = False,
    external_allowed: bool = False,
    phase_switching: bool = False,
) -> list[str]:
    """Every reason to reject ``profile``, each in words a CSMS operator can act on; [] = fine.

    A SetChargingProfile must be answered, whatever it holds, so this never raises: a bad
    profile is a list of problems (the adapter turns them into Rejected and a reason), and all
    of them at once, not the first one only.

    The station's capabilities come in as arguments, so that both versions use one rule set:
    ``max_stack_level`` (ChargeProfileMaxStackLevel), ``max_periods`` per schedule
    (ChargingScheduleMaxPeriods), ``max_schedules`` (1 in 1.6, 3 in 2.0.1), ``allowed_units``
    (ChargingScheduleAllowedChargingRateUnit), ``evse_ids`` (the EVSEs that exist; None: do not
    check), ``transactions`` (EVSE id -> the id of the transaction running there, None while
    it has none yet; an EVSE that is absent has no transaction), ``remote_start`` (the profile
    came inside RemoteStartTransaction / RequestStartTransaction, before its transaction
    exists), ``require_transaction_id`` (2.0.1 K01.FR.03), ``external_allowed`` (False for
    anything a CSMS sends: K01.FR.22), ``phase_switching`` (ACPhaseSwitchingSupported).
    """
    problems: list[str] = []
    try:
        _validate(profile, problems, max_stack_level=max_stack_level, max_periods=max_periods,
                  max_schedules=max_schedules, allowed_units=allowed_units, evse_ids=evse_ids,
                  transactions=transactions or {}, remote_start=remote_start,
                  require_transaction_id=require_transaction_id,
                  external_allowed=external_allowed, phase_switching=phase_switching)
    except Exception as exc:  # a malformed object is a problem to report, not a crash
        problems.append(f"malformed profile: {type(exc).__name__}: {exc}")
    return problems


def _validate(profile: ChargingProfile, problems: list[str], *, max_stack_level: int | None,
              max_periods: int | None, max_schedules: int, allowed_units: Collection[str],
              evse_ids: Collection[int] | None, transactions: Mapping[int, object],
              remote_start: bool, require_transaction_id: bool, external_allowed: bool,
              phase_switching: bool) -> None:
    add = problems.append
    purpose = _enum(Purpose, profile.purpose)
    kind = _enum(Kind, profile.kind)
    if not _is_int(profile.id):
        add(f"profile id {profile.id!r} is not an integer")
    if purpose is None:
        add(f"unknown purpose {profile.purpose!r}: expected one of "
            f"{', '.join(p.value for p in Purpose)}")
    if kind is None:
        add(f"unknown kind {profile.kind!r}: expected Absolute, Recurring or Relative")

    level = profile.stack_level
    if not _is_int(level) or level < 0:
        add(f"stack level {level!r} is not an integer >= 0")
    elif max_stack_level is not None and level > max_stack_level:
        add(f"stack level {level} is above the maximum {max_stack_level} "
            f"(ChargeProfileMaxStackLevel)")

    evse = profile.evse_id
    if not _is_int(evse) or evse < 0:
        add(f"EVSE id {evse!r} is not an integer >= 0")
        evse = None
    elif evse_ids is not None and evse != 0 and evse not in evse_ids:
        add(f"EVSE {evse} does not exist (2.0.1 K01.FR.28)")

    if purpose is Purpose.STATION_MAX:
        if evse not in (None, 0):
            add(f"a station-maximum profile caps the whole station and belongs on EVSE 0, "
                f"not EVSE {evse} (1.6 3.13.1: ChargePointMaxProfile only at connector 0)")
        if kind is Kind.RELATIVE:
            add("a station-maximum profile cannot be Relative: it has no transaction to "
                "count from (2.0.1 K01.FR.38)")
    if purpose is Purpose.EXTERNAL and not external_allowed:
        add("ExternalConstraints are set by an external system, never by the CSMS "
            "(2.0.1 K01.FR.22)")
    if purpose is Purpose.TX:
        _validate_tx(profile, evse, add, transactions=transactions, remote_start=remote_start,
                     require_transaction_id=require_transaction_id)
    elif profile.transaction_id is not None:
        add(f"transactionId {profile.transaction_id!r} belongs only on a transaction profile "
            f"(1.6 7.8: only valid if the purpose is TxProfile)")

    recurrency = profile.recurrency
    if recurrency is not None and _enum(Recurrency, recurrency) is None:
        add(f"unknown recurrency {recurrency!r}: expected Daily or Weekly")
    if kind is Kind.RECURRING and recurrency is None:
        add("a recurring profile needs a recurrency kind (Daily or Weekly)")

    vf, vt = profile.valid_from, profile.valid_to
    for name, value in (("validFrom", vf), ("validTo", vt)):
        if value is not None and not isinstance(value, datetime):
            add(f"{name} {value!r} is not a date and time")
    if isinstance(vf, datetime) and isinstance(vt, datetime) and _utc(vf) >= _utc(vt):
        add(f"validFrom {vf.isoformat()} is not before validTo {vt.isoformat()}: "
            f"the profile would never be valid")

    schedules = profile.schedules
    if not schedules:
        add("the profile has no charging schedule")
        return
    if len(schedules) > max_schedules:
        add(f"{len(schedules)} charging schedules, at most {max_schedules} allowed "
            f"(1.6 takes one; 2.0.1 up to three)")
    for index, schedule in enumerate(schedules):
        where = f"schedule {index + 1}: " if len(schedules) > 1 else ""
        _validate_schedule(schedule, kind, where, add, max_periods=max_periods,
                           allowed_units=allowed_units, phase_switching=phase_switching)


def _validate_tx(profile: ChargingProfile, evse: int | None, add, *,
                 transactions: Mapping[int, object], remote_start: bool,
                 require_transaction_id: bool) -> None:
    tx_id = profile.transaction_id
    if evse == 0:
        add("a transaction profile needs an EVSE > 0: a transaction runs on one EVSE "
            "(1.6 3.13.1, 2.0.1 K01.FR.16)")
    if remote_start:
        if tx_id is not None:
            add(f"a profile inside a remote start must not name a transaction "
                f"({tx_id!r}): the transaction does not exist yet (1.6 5.16.2)")
        return
    if evse is None or evse == 0:
        return
    if evse not in transactions:
        add(f"no transaction is running on EVSE {evse}: a transaction profile cannot be "
            f"set without or ahead of its transaction (1.6 3.13.1, 5.16.4; 2.0.1 K01.FR.09)")
        return
    running = transactions[evse]
    if tx_id is None:
        if require_transaction_id:
            add("a transaction profile must name its transaction (2.0.1 K01.FR.03)")
    elif running is not None and str(tx_id) != str(running):
        add(f"transaction {tx_id!r} is not the one running on EVSE {evse} ({running!r}) "
            f"(2.0.1 K01.FR.33)")


def _validate_schedule(schedule: ChargingSchedule, kind: Kind | None, where: str, add, *,
                       max_periods: int | None, allowed_units: Collection[str],
                       phase_switching: bool) -> None:
    unit = _enum(RateUnit, schedule.rate_unit)
    if unit is None:
        add(f"{where}unknown rate unit {schedule.rate_unit!r}: expected A or W")
    elif unit.value not in {str(u) for u in allowed_units}:
        add(f"{where}rate unit {unit.value} is not supported here "
            f"(ChargingScheduleAllowedChargingRateUnit; 2.0.1 K01.FR.26)")

    start = schedule.start
    if start is not None and not isinstance(start, datetime):
        add(f"{where}startSchedule {start!r} is not a date and time")
    if kind is Kind.ABSOLUTE and start is None:
        add(f"{where}an absolute profile needs startSchedule: its periods count from it "
            f"(2.0.1 K01.FR.40)")
    elif kind is Kind.RECURRING and start is None:
        add(f"{where}a recurring profile needs startSchedule: it is what recurs "
            f"(2.0.1 K01.FR.40)")
    elif kind is Kind.RELATIVE and start is not None:
        add(f"{where}a relative profile must not have startSchedule: it counts from the "
            f"transaction's start (2.0.1 K01.FR.41)")

    duration = schedule.duration_s
    if duration is not None and (not _is_int(duration) or duration < 0):
        add(f"{where}duration {duration!r} is not a whole number of seconds >= 0")
    if schedule.min_rate is not None:
        rate = _dec(schedule.min_rate)
        if rate is None or rate < 0:
            add(f"{where}minChargingRate {schedule.min_rate!r} is not a number >= 0")

    periods = schedule.periods
    if not periods:
        add(f"{where}the schedule has no periods")
        return
    if max_periods is not None and len(periods) > max_periods:
        add(f"{where}{len(periods)} periods, at most {max_periods} allowed "
            f"(ChargingScheduleMaxPeriods)")
    previous: int | None = None
    for number, period in enumerate(periods, start=1):
        at = f"{where}period {number}: "
        start_s = period.start_s
        if not _is_int(start_s):
            add(f"{at}start {start_s!r} is not a whole number of seconds")
        else:
            if number == 1 and start_s != 0:
                add(f"{at}the first period starts at {start_s} s, not 0 "
                    f"(1.6 5.16.4, 2.0.1 K01.FR.31)")
            if previous is not None and start_s <= previous:
                add(f"{at}starts at {start_s} s, not after the previous period's {previous} s: "
                    f"starts must increase (2.0.1 K01.FR.35)")
            previous = start_s
        limit = _dec(period.limit)
        if limit is None:
            add(f"{at}limit {period.limit!r} is not a number")
        elif limit < 0:
            add(f"{at}limit {limit} is negative")
        phases = period.number_phases
        if phases is not None and (not _is_int(phases) or phases not in (1, 2, 3)):
            add(f"{at}numberPhases {phases!r} is not 1, 2 or 3")
        use = period.phase_to_use
        if use is not None:
            if not _is_int(use) or use not in (1, 2, 3):
                add(f"{at}phaseToUse {use!r} is not 1, 2 or 3")
            if phases != 1:
                add(f"{at}phaseToUse needs numberPhases 1 (2.0.1 K01.FR.19)")
            if not phase_switching:
                add(f"{at}phaseToUse needs an EVSE that switches phases "
                    f"(ACPhaseSwitchingSupported; 2.0.1 K01.FR.20)")


# ---------------------------------------------------------------------- the composite

_US = 1_000_000                      # the timeline counts microseconds from the window start
_ONE_US = timedelta(microseconds=1)
_INF = 1 << 62
_RECURRENCE_US = {Recurrency.DAILY: 86_400 * _US, Recurrency.WEEKLY: 7 * 86_400 * _US}
_TENTH = Decimal("0.1")
_ZERO = Decimal(0)

# A value on the timeline: (limit, unit "A"/"W", number of phases or None).
_Value = tuple[Decimal, str, int | None]
_Segment = tuple[int, int, _Value]   # [start_us, end_us) -> value


def composite(
    profiles: Iterable[ChargingProfile],
    *,
    evse_id: int,
    window_start: datetime,
    window_s: int,
    tx_start: datetime | None = None,
    evse_max_a: float,
    phases: int,
    voltage: float = 230.0,
    unit: str = "A",
    transaction_id: str | int | None = None,
) -> list[CompositePeriod]:
    """The limit of EVSE ``evse_id`` over ``[window_start, window_start + window_s)``.

    This is GetCompositeSchedule's answer and the scheduler's input alike, so the two cannot
    disagree.  ``tx_start`` is the running transaction's anchor for Relative profiles (1.6: the
    start of charging; 2.0.1 errata 2023-12: the PowerPathClosed moment); None means no
    transaction, so TxProfiles do not apply and Relative ones count from ``window_start``.
    ``transaction_id``, when given, narrows TxProfiles to that transaction's (and those that
    name none, as a remote start's).  ``evse_max_a`` is the EVSE's rating in amps per phase,
    ``phases`` its phases; the result is in ``unit``.  ``evse_id`` 0 gives
    :func:`station_composite` with ``evse_max_a`` as the station's rating.
    """
    if evse_id == 0:
        return station_composite(profiles, window_start=window_start, window_s=window_s,
                                 station_max_a=evse_max_a, phases=phases, voltage=voltage,
                                 unit=unit)
    origin = _utc(window_start)
    window = _span_us(window_s)
    if window is None or window <= 0:
        return []
    tx_at = _offset_us(tx_start, origin) if tx_start is not None else None
    anchor = tx_at if tx_at is not None else 0
    ranked = _ranked(profiles, evse_id)

    tx_layers = (
        _segments(p, origin, window, anchor, floor=tx_at) for p in ranked
        if tx_at is not None and p.purpose == Purpose.TX and p.evse_id == evse_id
        and _tx_matches(p, transaction_id))
    default_layers = (
        _segments(p, origin, window, anchor) for p in ranked
        if p.purpose == Purpose.TX_DEFAULT and p.evse_id in (0, evse_id))

    def caps(purpose: Purpose, evse: int, rel: int) -> list[_Segment]:
        return _paint((_segments(p, origin, window, rel) for p in ranked
                       if p.purpose == purpose and p.evse_id == evse), window)

    groups = [
        _paint(_chain(tx_layers, default_layers), window),
        caps(Purpose.STATION_MAX, 0, 0),
        caps(Purpose.EXTERNAL, 0, 0),
        caps(Purpose.EXTERNAL, evse_id, anchor),
    ]
    return _to_seconds(_combine(groups, window, evse_max_a, phases, voltage, unit), window)


def station_composite(
    profiles: Iterable[ChargingProfile],
    *,
    window_start: datetime,
    window_s: int,
    station_max_a: float,
    phases: int,
    voltage: float = 230.0,
    unit: str = "A",
    tx_default: bool = True,
) -> list[CompositePeriod]:
    """What the station as a whole may draw (GetCompositeSchedule for EVSE 0).

    The station maximum and the station's ExternalConstraints, capped by ``station_max_a``
    (the grid connection / the station's rating), and with ``tx_default`` also the
    station-wide TxDefault: counted once, as the limit of one transaction under the default
    policy, never added up over the EVSEs.  Every per-EVSE composite fits under this result
    with ``tx_default=False`` at every instant; with ``tx_default=True`` too, unless an EVSE's
    own TxDefault or its TxProfile overrides the station-wide default upwards (they may: they
    replace it for that EVSE).  Relative profiles count from ``window_start``.

    Sharing the station maximum between EVSEs that charge at the same time (1.6 3.13.3: "the
    combined energy flow of all connectors SHALL NOT be greater") is the load balancer's
    business; this says how much there is to share.
    """
    origin = _utc(window_start)
    window = _span_us(window_s)
    if window is None or window <= 0:
        return []
    ranked = _ranked(profiles, 0)

    def group(purpose: Purpose) -> list[_Segment]:
        return _paint((_segments(p, origin, window, 0) for p in ranked
                       if p.purpose == purpose and p.evse_id == 0), window)

    groups = [group(Purpose.STATION_MAX), group(Purpose.EXTERNAL)]
    if tx_default:
        groups.append(group(Purpose.TX_DEFAULT))
    return _to_seconds(_combine(groups, window, station_max_a, phases, voltage, unit), window)


def limit_at(
    profiles: Iterable[ChargingProfile],
    at: datetime,
    *,
    evse_id: int,
    tx_start: datetime | None = None,
    evse_max_a: float,
    phases: int,
    voltage: float = 230.0,
    unit: str = "A",
    transaction_id: str | int | None = None,
) -> CompositePeriod:
    """The limit at one instant: what the scheduler hands the EVSE at each boundary."""
    (first, *_) = composite(profiles, evse_id=evse_id, window_start=at, window_s=1,
                            tx_start=tx_start, evse_max_a=evse_max_a, phases=phases,
                            voltage=voltage, unit=unit, transaction_id=transaction_id)
    return first


def profile_in_force(
    profiles: Iterable[ChargingProfile],
    at: datetime,
    *,
    evse_id: int,
    tx_start: datetime | None = None,
    transaction_id: str | int | None = None,
) -> ChargingProfile | None:
    """The transaction-level profile (TxProfile, else TxDefault) that sets the EVSE's
    transaction limit at ``at``, by the precedence :func:`composite` paints with; None when
    none applies then.  Its first schedule's ``min_rate`` is the EV's minChargingRate, which
    a local balancing algorithm heeds (1.6 3.13 Load Balancing)."""
    if evse_id == 0:
        return None
    origin = _utc(at)
    tx_at = _offset_us(tx_start, origin) if tx_start is not None else None
    anchor = tx_at if tx_at is not None else 0
    ranked = _ranked(profiles, evse_id)
    if tx_at is not None:
        for p in ranked:
            if (p.purpose == Purpose.TX and p.evse_id == evse_id and _tx_matches(p, transaction_id)
                    and _segments(p, origin, 1, anchor, floor=tx_at)):
                return p
    for p in ranked:
        if (p.purpose == Purpose.TX_DEFAULT and p.evse_id in (0, evse_id)
                and _segments(p, origin, 1, anchor)):
            return p
    return None


def next_change(
    profiles: Iterable[ChargingProfile],
    now: datetime,
    *,
    evse_id: int,
    tx_start: datetime | None = None,
    transaction_id: str | int | None = None,
) -> datetime | None:
    """The first instant after ``now`` at which :func:`limit_at` may give another answer.

    The scheduler sleeps until then (or until a profile or a transaction changes) instead of
    polling.  It is a candidate, not a promise: a period boundary, validFrom / validTo, a
    schedule's end, the next recurrence, the transaction's start; the limit may turn out the
    same there.  Before it, nothing can change.  None: nothing will change, ever.  A Relative
    profile without a transaction counts from whenever it is asked (see :func:`composite`), so
    only its validity bounds its answer.  ``evse_id`` 0: the station's composite.
    """
    origin = _utc(now)
    tx = _utc(tx_start) if tx_start is not None else None
    best = _INF
    for profile, anchor in _relevant(list(profiles), evse_id, tx, transaction_id):
        best = min(best, _first_boundary(profile, origin, anchor))
        if profile.purpose == Purpose.TX and tx is not None and tx > origin:
            best = min(best, _offset_us(tx, origin))
    return origin + timedelta(microseconds=best) if best < _INF else None


# ---------------------------------------------------------------------- internals


def _chain(*iterables: Iterable[list[_Segment]]) -> Iterator[list[_Segment]]:
    for iterable in iterables:
        yield from iterable


def _ranked(profiles: Iterable[ChargingProfile], evse_id: int) -> list[ChargingProfile]:
    """Highest precedence first: stack level, then the EVSE's own over the station-wide one,
    then the one installed last (listed last) - two such should not exist, but if they do the
    newer one is what the CSMS meant."""
    listed = list(profiles)
    order = sorted(
        range(len(listed)),
        key=lambda i: (-_level(listed[i]), 0 if listed[i].evse_id == evse_id != 0 else 1, -i))
    return [listed[i] for i in order]


def _level(profile: ChargingProfile) -> int:
    return profile.stack_level if _is_int(profile.stack_level) else -1


def _tx_matches(profile: ChargingProfile, transaction_id: str | int | None) -> bool:
    return (transaction_id is None or profile.transaction_id is None
            or str(profile.transaction_id) == str(transaction_id))


def _table(schedule: ChargingSchedule) -> list[tuple[int, _Value]]:
    """The schedule's periods as (start_us, value), sorted; a period that repeats a start
    replaces the earlier one.  Bad values are made safe rather than refused (validation refuses
    them): a limit that is not a number, or a negative one, counts as 0."""
    unit = "W" if str(schedule.rate_unit) == "W" else "A"
    rows: dict[int, _Value] = {}
    for period in schedule.periods:
        start = _span_us(period.start_s)
        if start is None:
            continue
        limit = _dec(period.limit)
        if limit is None or limit < 0:
            limit = _ZERO
        phases = period.number_phases
        rows[start] = (limit, unit, phases if phases in (1, 2, 3) else None)
    return sorted(rows.items())


def _schedule_length(schedule: ChargingSchedule) -> int:
    duration = _span_us(schedule.duration_s) if schedule.duration_s is not None else None
    return duration if duration is not None and duration > 0 else _INF


def _segments(profile: ChargingProfile, origin: datetime, window: int, rel_anchor: int, *,
              floor: int | None = None) -> list[_Segment]:
    """Where in the window ``profile`` applies and with which value, sorted and disjoint."""
    if not profile.schedules:
        return []
    schedule = profile.schedules[0]
    lo, hi = max(0, floor) if floor is not None else 0, window
    if profile.valid_from is not None:
        lo = max(lo, _offset_us(profile.valid_from, origin))
    if profile.valid_to is not None:
        hi = min(hi, _offset_us(profile.valid_to, origin))
    if lo >= hi:
        return []
    table = _table(schedule)
    if not table:
        return []
    length = _schedule_length(schedule)
    anchors: Iterable[int]
    recurrence = _RECURRENCE_US.get(_enum(Recurrency, profile.recurrency))  # type: ignore[arg-type]
    if profile.kind == Kind.RECURRING and schedule.start is not None and recurrence:
        first = _offset_us(schedule.start, origin)
        length = min(length, recurrence)
        k = max(0, (lo - first) // recurrence)
        anchors = range(first + k * recurrence, hi, recurrence)
    elif profile.kind != Kind.RELATIVE and schedule.start is not None:
        anchors = (_offset_us(schedule.start, origin),)
    else:  # Relative, or Absolute without startSchedule: 1.6 7.13 "relative to start of charging"
        anchors = (rel_anchor,)
    out: list[_Segment] = []
    n = len(table)
    for a in anchors:
        s_lo, s_hi = max(a, lo), min(a + length, hi)
        if s_lo >= s_hi:
            continue
        for i in range(n):
            ps = a + table[i][0]
            if ps >= s_hi:
                break
            pe = a + table[i + 1][0] if i + 1 < n else _INF
            s, e = max(ps, s_lo), min(pe, s_hi)
            if s < e:
                out.append((s, e, table[i][1]))
    return out


def _paint(layers: Iterable[list[_Segment]], window: int) -> list[_Segment]:
    """Stack the layers, highest precedence first: each fills only what is still uncovered.

    Layers come lazily so that those under a fully covering one are never computed."""
    holes = [(0, window)]
    out: list[_Segment] = []
    for segs in layers:
        if not holes:
            break
        if not segs:
            continue
        new_holes: list[tuple[int, int]] = []
        i, n = 0, len(segs)
        for hs, he in holes:
            cur = hs
            while i < n and segs[i][1] <= hs:
                i += 1
            j = i
            while j < n:
                s, e, v = segs[j]
                if s >= he:
                    break
                if s > cur:
                    new_holes.append((cur, s))
                else:
                    s = cur
                end = e if e < he else he
                if end > s:
                    out.append((s, end, v))
                    cur = end
                if e > he:
                    break
                j += 1
            i = j
            if cur < he:
                new_holes.append((cur, he))
        holes = new_holes
    out.sort(key=lambda seg: seg[0])
    return out


def _combine(groups: list[list[_Segment]], window: int, cap_a: float, phases: int,
             voltage: float, unit: str) -> list[tuple[int, Decimal, int]]:
    """The minimum of the groups and the rating at every instant, in ``unit``."""
    out_unit = "W" if str(unit) == "W" else "A"
    volts = _dec(voltage) or Decimal(230)
    cap = _dec(cap_a)
    cap = cap if cap is not None and cap > 0 else _ZERO
    n_max = phases if phases in (1, 2, 3) else 3
    bounds = {0}
    for group in groups:
        for s, e, _ in group:
            bounds.add(s)
            if e < window:
                bounds.add(e)
    pointers = [0] * len(groups)
    out: list[tuple[int, Decimal, int]] = []
    active: list[_Value] = []
    for at in sorted(bounds):
        active.clear()
        n = n_max
        for gi, group in enumerate(groups):
            k = pointers[gi]
            while k < len(group) and group[k][1] <= at:
                k += 1
            pointers[gi] = k
            if k < len(group) and group[k][0] <= at:
                value = group[k][2]
                active.append(value)
                if value[2] is not None and value[2] < n:
                    n = value[2]
        limit = cap if out_unit == "A" else cap * volts * n
        for value_limit, value_unit, _ in active:
            if value_unit != out_unit:
                if out_unit == "A":
                    value_limit = (value_limit / (volts * n)).quantize(_TENTH, ROUND_FLOOR)
                else:
                    value_limit = value_limit * volts * n
            if value_limit < limit:
                limit = value_limit
        if not out or out[-1][1] != limit or out[-1][2] != n:
            out.append((at, limit, n))
    return out


def _to_seconds(periods: list[tuple[int, Decimal, int]], window: int) -> list[CompositePeriod]:
    """Whole seconds, the messages' resolution: a second in which the limit changes takes the
    lower of its limits, so rounding never lifts a limit for a fraction of a second."""
    out: list[list] = []

    def put(second: int, limit: Decimal, n: int) -> None:
        if out and out[-1][0] == second:
            if (limit, n) < (out[-1][1], out[-1][2]):
                out[-1][1:] = [limit, n]
        else:
            out.append([second, limit, n])

    for index, (start, limit, n) in enumerate(periods):
        second, fraction = divmod(start, _US)
        if fraction == 0 or index == 0:
            put(second, limit, n)
            continue
        end = periods[index + 1][0] if index + 1 < len(periods) else window
        if out and out[-1][0] == second:
            put(second, limit, n)
        else:  # the previous period covers the start of this second
            _, prev_limit, prev_n = periods[index - 1]
            put(second, *min((limit, n), (prev_limit, prev_n)))
        if end > (second + 1) * _US:
            put(second + 1, limit, n)
    result: list[CompositePeriod] = []
    for second, limit, n in out:
        if not result or result[-1].limit != limit or result[-1].number_phases != n:
            result.append(CompositePeriod(second, limit, n))
    return result


def _relevant(profiles: list[ChargingProfile], evse_id: int, tx: datetime | None,
              transaction_id: str | int | None
              ) -> Iterator[tuple[ChargingProfile, datetime | None]]:
    """The profiles that can shape the EVSE's composite, each with the fixed instant a Relative
    schedule counts from there (None: it counts from whenever it is asked)."""
    for p in profiles:
        if p.purpose in (Purpose.STATION_MAX, Purpose.EXTERNAL) and p.evse_id == 0:
            yield p, None
        elif evse_id == 0:
            if p.purpose == Purpose.TX_DEFAULT and p.evse_id == 0:
                yield p, None
        elif p.purpose == Purpose.TX_DEFAULT and p.evse_id in (0, evse_id):
            yield p, tx
        elif p.purpose == Purpose.EXTERNAL and p.evse_id == evse_id:
            yield p, tx
        elif (p.purpose == Purpose.TX and p.evse_id == evse_id and tx is not None
              and _tx_matches(p, transaction_id)):
            yield p, tx


def _first_boundary(profile: ChargingProfile, origin: datetime,
                    anchor: datetime | None) -> int:
    """The first of the profile's boundaries after ``origin``, in microseconds from it (_INF:
    none).  Integers and a bisection, not datetimes: the scheduler asks after every change."""
    best = _INF
    for bound in (profile.valid_from, profile.valid_to):
        if isinstance(bound, datetime):
            offset = _offset_us(bound, origin)
            if 0 < offset < best:
                best = offset
    if not profile.schedules:
        return best
    schedule = profile.schedules[0]
    starts = sorted({us for us in (_span_us(p.start_s) for p in schedule.periods)
                     if us is not None})
    length = _schedule_length(schedule)
    recurrence = _RECURRENCE_US.get(_enum(Recurrency, profile.recurrency))  # type: ignore[arg-type]
    if profile.kind == Kind.RECURRING and schedule.start is not None and recurrence:
        first = _offset_us(schedule.start, origin)
        length = min(length, recurrence)
        k = max(0, -first // recurrence)
        bases = (first + k * recurrence, first + (k + 1) * recurrence)
    elif profile.kind != Kind.RELATIVE and schedule.start is not None:
        bases = (_offset_us(schedule.start, origin),)
    elif anchor is not None:
        bases = (_offset_us(anchor, origin),)
    else:  # counts from whenever it is asked: its periods never move under the asker
        return best
    for base in bases:
        candidates = [base, base + length if length < _INF else _INF]
        i = bisect_right(starts, -base)  # the first period that starts after origin
        if i < len(starts) and starts[i] < length:
            candidates.append(base + starts[i])
        for candidate in candidates:
            if 0 < candidate < best:
                best = candidate
    return best


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _offset_us(moment: datetime, origin: datetime) -> int:
    return (_utc(moment) - origin) // _ONE_US


def _span_us(seconds: object) -> int | None:
    """Seconds (int, float or Decimal) as whole microseconds; None for what is no number."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float | Decimal):
        return None
    if isinstance(seconds, int):
        return seconds * _US
    value = _dec(seconds)
    return int(value * _US) if value is not None else None


def _dec(value: object) -> Decimal | None:
    """A finite Decimal, exactly as written (a float goes through its shortest repr, so 7.2
    stays 7.2); None for anything that is no number."""
    if isinstance(value, bool):
        return None
    try:
        if isinstance(value, Decimal):
            result = value
        elif isinstance(value, int):
            result = Decimal(value)
        elif isinstance(value, float):
            result = Decimal(repr(value))
        elif isinstance(value, str):
            result = Decimal(value.strip())
        else:
            return None
    except (InvalidOperation, ValueError):
        return None
    return result if result.is_finite() else None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _enum(enum: type[StrEnum], value: object) -> StrEnum | None:
    try:
        return enum(value)
    except (ValueError, TypeError):
        return None
