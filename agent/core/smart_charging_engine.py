"""The smart-charging engine: the validation of profiles and the composite schedule.

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
- 2.1 adds three things (the adapters of 1.6 and 2.0.1 never produce them): PriorityCharging
  profiles come before TxProfile and TxDefault while the transaction uses priority charging
  (``priority``: a per-call fact the scheduler keeps, K21 / K22); a LocalGeneration profile
  adds its capacity on top of the capped result, up to the rating (K27); a Dynamic profile
  is one period counted from its last update (``dyn_update_time``), its duration the time an
  update stays good (K28.FR.13).  A period's V2X fields (``operation_mode``, ``setpoint``,
  ``discharge_limit``, the curves) do not change the composite, except that an Idle period
  is 0 and a period without a limit (allowed in some modes) is bounded by the rating only;
  :func:`v2x_at` names the period in force for :mod:`agent.core.v2x_modes`.
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
from datetime import UTC, datetime, timedelta
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from enum import StrEnum

from agent.core.smart_charging import (
    _SETPOINT_MODES,
    BASE_KINDS,
    BASE_PURPOSES,
    LIMIT_OPTIONAL,
    ChargingProfile,
    ChargingSchedule,
    ChargingSchedulePeriod,
    CompositePeriod,
    Kind,
    OperationMode,
    Purpose,
    RateUnit,
    Recurrency,
    V2xPeriod,
)

__all__ = ["composite", "curve_power", "limit_at", "next_change", "profile_in_force",
           "station_composite", "v2x_at", "validate"]

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
    allowed_purposes: Collection[str] = BASE_PURPOSES,
    allowed_kinds: Collection[str] = BASE_KINDS,
    operation_modes: Collection[str] = (OperationMode.CHARGING_ONLY,),
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
    anything a CSMS sends: K01.FR.22), ``phase_switching`` (ACPhaseSwitchingSupported),
    ``allowed_purposes`` / ``allowed_kinds`` (what the version knows: 2.1 adds PriorityCharging,
    LocalGeneration and Dynamic), ``operation_modes`` (the V2X modes the station can apply:
    V2XChargingCtrlr.SupportedOperationModes; 1.6 and 2.0.1 only ChargingOnly).
    """
    problems: list[str] = []
    try:
        _validate(profile, problems, max_stack_level=max_stack_level, max_periods=max_periods,
                  max_schedules=max_schedules, allowed_units=allowed_units, evse_ids=evse_ids,
                  transactions=transactions or {}, remote_start=remote_start,
                  require_transaction_id=require_transaction_id,
                  external_allowed=external_allowed, phase_switching=phase_switching,
                  allowed_purposes={str(p) for p in allowed_purposes},
                  allowed_kinds={str(k) for k in allowed_kinds},
                  operation_modes={str(m) for m in operation_modes})
    except Exception as exc:  # a malformed object is a problem to report, not a crash
        problems.append(f"malformed profile: {type(exc).__name__}: {exc}")
    return problems


def _validate(profile: ChargingProfile, problems: list[str], *, max_stack_level: int | None,
              max_periods: int | None, max_schedules: int, allowed_units: Collection[str],
              evse_ids: Collection[int] | None, transactions: Mapping[int, object],
              remote_start: bool, require_transaction_id: bool, external_allowed: bool,
              phase_switching: bool, allowed_purposes: Collection[str],
              allowed_kinds: Collection[str], operation_modes: Collection[str]) -> None:
    add = problems.append
    purpose = _enum(Purpose, profile.purpose)
    kind = _enum(Kind, profile.kind)
    if purpose is not None and purpose.value not in allowed_purposes:
        purpose = None
    if kind is not None and kind.value not in allowed_kinds:
        kind = None
    if not _is_int(profile.id):
        add(f"profile id {profile.id!r} is not an integer")
    if purpose is None:
        add(f"unknown purpose {profile.purpose!r}: expected one of "
            f"{', '.join(p.value for p in Purpose if p.value in allowed_purposes)}")
    if kind is None:
        add(f"unknown kind {profile.kind!r}: expected "
            f"{', '.join(k.value for k in Kind if k.value in allowed_kinds)}")

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

    _validate_dynamic(profile, kind, add)
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
        _validate_v2x(schedule, purpose, where, add, operation_modes)
        if purpose is Purpose.PRIORITY and schedule.duration_s is not None:
            add(f"{where}a priority charging schedule has no duration: it lasts as long as "
                f"its transaction (2.1 K01.FR.70)")
    if kind is Kind.DYNAMIC and (len(schedules) != 1 or len(schedules[0].periods) != 1):
        add("a dynamic profile has one charging schedule with one period, whose limit the "
            "updates replace (2.1 K28)")


def _validate_v2x(schedule: ChargingSchedule, purpose: Purpose | None, where: str, add,
                  operation_modes: Collection[str]) -> None:
    """2.1 V2X fields of each period: the mode is one the station applies, and the fields
    the mode needs are there and agree with one another."""
    for number, period in enumerate(schedule.periods, start=1):
        at = f"{where}period {number}: "
        raw = period.operation_mode
        mode = OperationMode.CHARGING_ONLY if raw is None else _enum(OperationMode, raw)
        if mode is None:
            add(f"{at}unknown operationMode {raw!r}")
            continue
        if mode.value not in operation_modes:
            add(f"{at}operationMode {mode.value} is not supported here "
                f"(V2XChargingCtrlr.SupportedOperationModes: {', '.join(sorted(operation_modes))})")
            continue
        if mode not in (OperationMode.CHARGING_ONLY, OperationMode.IDLE) \
                and purpose not in (Purpose.TX, Purpose.TX_DEFAULT, None):
            add(f"{at}operationMode {mode.value} belongs on a transaction profile (TxProfile or "
                f"TxDefaultProfile), not {purpose.value} (2.1 K01.FR.71 for PriorityCharging)")
        if period.limit is None and mode not in LIMIT_OPTIONAL:
            add(f"{at}a period without a limit needs an operationMode that does not require one "
                f"({', '.join(sorted(m.value for m in LIMIT_OPTIONAL))}), not {mode.value}")
        values: dict[str, Decimal] = {}
        for name, value in (("setpoint", period.setpoint), ("dischargeLimit",
                                                           period.discharge_limit),
                            ("v2xBaseline", period.v2x_baseline)):
            if value is None:
                continue
            number_ = _dec(value)
            if number_ is None:
                add(f"{at}{name} {value!r} is not a number")
            else:
                values[name] = number_
        if values.get("dischargeLimit", _ZERO) > 0:
            add(f"{at}dischargeLimit {values['dischargeLimit']} is positive: a discharge limit "
                f"is <= 0, as a discharging setpoint is")
        if mode is OperationMode.CENTRAL_SETPOINT and period.setpoint is None:
            add(f"{at}a CentralSetpoint period needs a setpoint")
        if period.setpoint is not None and mode not in _SETPOINT_MODES:
            add(f"{at}a setpoint belongs to a CentralSetpoint or ExternalSetpoint period, not "
                f"{mode.value}")
        sp, low, high = values.get("setpoint"), values.get("dischargeLimit"), _dec(period.limit)
        if sp is not None and low is not None and sp < low:
            add(f"{at}setpoint {sp} is below dischargeLimit {low}")
        if sp is not None and high is not None and sp > high:
            add(f"{at}setpoint {sp} is above the limit {high}")
        if mode is OperationMode.LOCAL_FREQUENCY and not period.freq_watt:
            add(f"{at}v2xFreqWattCurve is missing in a LocalFrequency period")
        for name, curve in (("v2xFreqWattCurve", period.freq_watt),
                            ("v2xSignalWattCurve", period.signal_watt)):
            if curve is None:
                continue
            xs = [_dec(x) for x, _ in curve]
            ys = [_dec(y) for _, y in curve]
            if not curve or any(v is None for v in (*xs, *ys)):
                add(f"{at}{name} has points that are not numbers")
            elif any(b <= a for a, b in zip(xs, xs[1:], strict=False)):
                add(f"{at}{name}: its points must be in increasing order of "
                    f"{'frequency' if name == 'v2xFreqWattCurve' else 'signal'}")


def curve_power(points: Sequence[tuple[object, object]], x: float | Decimal) -> Decimal:
    """The power of a V2X curve at ``x`` (frequency or aFRR signal): linear between its
    points, flat beyond its ends (a grid code's droop curve saturates there)."""
    pts = [(_dec(a), _dec(b)) for a, b in points]
    pts = [(a, b) for a, b in pts if a is not None and b is not None]
    if not pts:
        return _ZERO
    at = _dec(x) if not isinstance(x, Decimal) else x
    if at is None:
        return _ZERO
    if at <= pts[0][0]:
        return pts[0][1]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False):
        if at <= x1:
            return y0 + (y1 - y0) * (at - x0) / (x1 - x0) if x1 != x0 else y1
    return pts[-1][1]


def _validate_dynamic(profile: ChargingProfile, kind: Kind | None, add) -> None:
    """2.1 K28: dynUpdateInterval / dynUpdateTime belong to Dynamic profiles only."""
    interval, stamp = profile.dyn_update_interval, profile.dyn_update_time
    if kind is not Kind.DYNAMIC:
        for name, value in (("dynUpdateInterval", interval), ("dynUpdateTime", stamp)):
            if value is not None:
                add(f"{name} is only for a Dynamic profile, not {profile.kind} "
                    f"(2.1 K01.FR.122)")
        return
    if interval is not None and (not _is_int(interval) or interval < 0):
        add(f"dynUpdateInterval {interval!r} is not a whole number of seconds >= 0")
    if stamp is not None and not isinstance(stamp, datetime):
        add(f"dynUpdateTime {stamp!r} is not a date and time")


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
        if period.limit is None:
            pass  # 2.1: a V2X mode may leave it out (_validate_v2x judges)
        elif limit is None:
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
_NO_LIMIT = Decimal(10) ** 9  # far above any rating, which caps it in _combine

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
    priority: bool = False,
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

    2.1: with ``priority`` (the transaction uses priority charging, K21 / K22) the
    PriorityCharging profiles of the EVSE or the station come before its TxProfile and
    TxDefault (where they apply; their gaps fall through to those), still capped by the
    station maximum and the external constraints.  A LocalGeneration profile (the EVSE's own,
    else the station's, by stack level) adds its capacity on top of the capped result (2.1
    K27: locally generated power is not drawn through the grid connection the caps protect),
    never beyond the EVSE's rating.
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

    priority_layers = (
        _segments(p, origin, window, anchor, floor=tx_at) for p in ranked
        if priority and tx_at is not None and p.purpose == Purpose.PRIORITY
        and p.evse_id in (0, evse_id))
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
        _paint(_chain(priority_layers, tx_layers, default_layers), window),
        caps(Purpose.STATION_MAX, 0, 0),
        caps(Purpose.EXTERNAL, 0, 0),
        caps(Purpose.EXTERNAL, evse_id, anchor),
    ]
    adds = _paint((_segments(p, origin, window, anchor) for p in ranked
                   if p.purpose == Purpose.LOCAL_GENERATION and p.evse_id in (0, evse_id)),
                  window)
    return _to_seconds(_combine(groups, window, evse_max_a, phases, voltage, unit, adds),
                       window)


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
    business; this says how much there is to share.  The station's LocalGeneration (2.1)
    adds to it, up to ``station_max_a``.
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
    return _to_seconds(_combine(groups, window, station_max_a, phases, voltage, unit,
                                group(Purpose.LOCAL_GENERATION)), window)


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
    priority: bool = False,
) -> CompositePeriod:
    """The limit at one instant: what the scheduler hands the EVSE at each boundary."""
    (first, *_) = composite(profiles, evse_id=evse_id, window_start=at, window_s=1,
                            tx_start=tx_start, evse_max_a=evse_max_a, phases=phases,
                            voltage=voltage, unit=unit, transaction_id=transaction_id,
                            priority=priority)
    return first


def profile_in_force(
    profiles: Iterable[ChargingProfile],
    at: datetime,
    *,
    evse_id: int,
    tx_start: datetime | None = None,
    transaction_id: str | int | None = None,
    priority: bool = False,
) -> ChargingProfile | None:
    """The transaction-level profile (PriorityCharging while ``priority``, else TxProfile,
    else TxDefault) that sets the EVSE's
    transaction limit at ``at``, by the precedence :func:`composite` paints with; None when
    none applies then.  Its first schedule's ``min_rate`` is the EV's minChargingRate, which
    a local balancing algorithm heeds (1.6 3.13 Load Balancing)."""
    if evse_id == 0:
        return None
    origin = _utc(at)
    tx_at = _offset_us(tx_start, origin) if tx_start is not None else None
    anchor = tx_at if tx_at is not None else 0
    ranked = _ranked(profiles, evse_id)
    if tx_at is not None and priority:
        for p in ranked:
            if (p.purpose == Purpose.PRIORITY and p.evse_id in (0, evse_id)
                    and _segments(p, origin, 1, anchor, floor=tx_at)):
                return p
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


def v2x_at(
    profiles: Iterable[ChargingProfile],
    at: datetime,
    *,
    evse_id: int,
    tx_start: datetime | None = None,
    transaction_id: str | int | None = None,
    priority: bool = False,
) -> V2xPeriod | None:
    """The V2X period in force on the EVSE at ``at``: the period of the profile that
    :func:`profile_in_force` names (PriorityCharging, TxProfile or TxDefault, by the same
    precedence as the composite), or None when none applies.  The caps (station maximum,
    external constraints) bound its charge side through the composite; its mode, setpoint,
    discharge limit and curves come from here."""
    listed = list(profiles)
    profile = profile_in_force(listed, at, evse_id=evse_id, tx_start=tx_start,
                               transaction_id=transaction_id, priority=priority)
    if profile is None or not profile.schedules:
        return None
    origin = _utc(at)
    anchor = _offset_us(tx_start, origin) if tx_start is not None else 0
    period = _period_at(profile, origin, anchor)
    if period is None:
        return None
    mode = _enum(OperationMode, period.operation_mode or OperationMode.CHARGING_ONLY)
    unit = "W" if str(profile.schedules[0].rate_unit) == "W" else "A"
    return V2xPeriod(profile, period, unit,
                     mode if isinstance(mode, OperationMode) else OperationMode.CHARGING_ONLY)


def _period_at(profile: ChargingProfile, origin: datetime,
               rel_anchor: int) -> ChargingSchedulePeriod | None:
    """The period of the profile's first schedule in force at ``origin`` (None: none), by the
    anchors :func:`_segments` uses."""
    schedule = profile.schedules[0]
    rows: dict[int, ChargingSchedulePeriod] = {}
    for q in schedule.periods:
        start = _span_us(q.start_s)
        if start is not None:
            rows[start] = q
    table = sorted(rows.items(), key=lambda kv: kv[0])
    if not table:
        return None
    length = _schedule_length(schedule)
    recurrence = _RECURRENCE_US.get(_enum(Recurrency, profile.recurrency))  # type: ignore[arg-type]
    if profile.kind == Kind.RECURRING and schedule.start is not None and recurrence:
        first = _offset_us(schedule.start, origin)
        length = min(length, recurrence)
        k = -first // recurrence
        if k < 0:
            return None
        a = first + k * recurrence
    elif profile.kind == Kind.DYNAMIC and isinstance(profile.dyn_update_time, datetime):
        a = _offset_us(profile.dyn_update_time, origin)
    elif profile.kind not in (Kind.RELATIVE, Kind.DYNAMIC) and schedule.start is not None:
        a = _offset_us(schedule.start, origin)
    else:
        a = rel_anchor
    if not a <= 0 < a + length:
        return None
    found: ChargingSchedulePeriod | None = None
    for start, q in table:
        if a + start > 0:
            break
        found = q
    return found


def next_change(
    profiles: Iterable[ChargingProfile],
    now: datetime,
    *,
    evse_id: int,
    tx_start: datetime | None = None,
    transaction_id: str | int | None = None,
    priority: bool = False,
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
    for profile, anchor in _relevant(list(profiles), evse_id, tx, transaction_id, priority):
        best = min(best, _first_boundary(profile, origin, anchor))
        if profile.purpose in (Purpose.TX, Purpose.PRIORITY) and tx is not None and tx > origin:
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
        if period.operation_mode == OperationMode.IDLE:
            limit = _ZERO  # 2.1 Idle: no energy transfer, whatever the limit says
        elif period.limit is None:
            limit = _NO_LIMIT  # 2.1 V2X without a limit: the rating bounds it
        elif limit is None or limit < 0:
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
    elif profile.kind == Kind.DYNAMIC and isinstance(profile.dyn_update_time, datetime):
        anchors = (_offset_us(profile.dyn_update_time, origin),)  # 2.1 K28.FR.13: from it
    elif profile.kind not in (Kind.RELATIVE, Kind.DYNAMIC) and schedule.start is not None:
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
             voltage: float, unit: str, adds: list[_Segment] | None = None
             ) -> list[tuple[int, Decimal, int]]:
    """The minimum of the groups and the rating at every instant, in ``unit``; plus ``adds``
    (2.1 LocalGeneration) where they apply, never above the rating."""
    out_unit = "W" if str(unit) == "W" else "A"
    volts = _dec(voltage) or Decimal(230)
    cap = _dec(cap_a)
    cap = cap if cap is not None and cap > 0 else _ZERO
    n_max = phases if phases in (1, 2, 3) else 3
    bounds = {0}
    extra = adds or []
    for group in (*groups, extra):
        for s, e, _ in group:
            bounds.add(s)
            if e < window:
                bounds.add(e)
    pointers = [0] * len(groups)
    add_at = 0
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
        rating = cap if out_unit == "A" else cap * volts * n
        limit = rating
        for value_limit, value_unit, _ in active:
            value_limit = _in_unit(value_limit, value_unit, out_unit, volts, n)
            if value_limit < limit:
                limit = value_limit
        while add_at < len(extra) and extra[add_at][1] <= at:
            add_at += 1
        if add_at < len(extra) and extra[add_at][0] <= at and limit < rating:
            value_limit, value_unit, _ = extra[add_at][2]
            limit = min(rating, limit + _in_unit(value_limit, value_unit, out_unit, volts, n))
        if not out or out[-1][1] != limit or out[-1][2] != n:
            out.append((at, limit, n))
    return out


def _in_unit(limit: Decimal, unit: str, out_unit: str, volts: Decimal, n: int) -> Decimal:
    """A limit in ``out_unit`` with ``n`` phases in use (amps rounded down to 0.1 A)."""
    if unit == out_unit:
        return limit
    if out_unit == "A":
        return (limit / (volts * n)).quantize(_TENTH, ROUND_FLOOR)
    return limit * volts * n


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
              transaction_id: str | int | None, priority: bool = False
              ) -> Iterator[tuple[ChargingProfile, datetime | None]]:
    """The profiles that can shape the EVSE's composite, each with the fixed instant a Relative
    schedule counts from there (None: it counts from whenever it is asked)."""
    for p in profiles:
        if p.purpose in (Purpose.STATION_MAX, Purpose.EXTERNAL) and p.evse_id == 0:
            yield p, None
        elif evse_id == 0:
            if p.purpose in (Purpose.TX_DEFAULT, Purpose.LOCAL_GENERATION) and p.evse_id == 0:
                yield p, None
        elif p.purpose in (Purpose.TX_DEFAULT, Purpose.LOCAL_GENERATION) \
                and p.evse_id in (0, evse_id):
            yield p, tx
        elif (p.purpose == Purpose.PRIORITY and priority and tx is not None
              and p.evse_id in (0, evse_id)):
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
    elif profile.kind == Kind.DYNAMIC and isinstance(profile.dyn_update_time, datetime):
        bases = (_offset_us(profile.dyn_update_time, origin),)
    elif profile.kind not in (Kind.RELATIVE, Kind.DYNAMIC) and schedule.start is not None:
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
