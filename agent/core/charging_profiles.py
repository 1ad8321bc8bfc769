"""Installed charging profiles and the scheduler that drives the pilot from them.

The engine (:mod:`agent.core.smart_charging`) says what the limit is at an instant and when it
may change next; this service owns the profiles a CSMS installed (persisted in the state
file, so they survive restarts), applies the installation and clearing rules, and keeps every
EVSE's ``"csms"`` limit source equal to the engine's answer:

- installing a profile replaces the one with the same id, and the one with the same purpose
  and stack level on the same EVSE (1.6 3.13.2; 2.0.1 K01.FR.05);
- clearing selects by id, or by EVSE / purpose / stack level (any of them, none: all);
- a TxProfile lives as long as its transaction: it goes when the transaction ends, and a
  TxProfile found at start-up (its transaction ended with the power) is dropped;
- the scheduler re-evaluates at the engine's ``next_change``, on every install / clear, when a
  transaction starts or ends, when a session becomes active or inactive, and at start-up;
- the station maximum (ChargePointMax / ChargingStationMax on EVSE 0) is shared: when the
  EVSEs' own composites together exceed it, the EVSEs with an active session share it with
  load management's fairness (:func:`allocate` over :func:`agent.core.sharing.share`:
  the oldest first, at least each one's minimum - its minChargingRate where that is higher -,
  the newest paused when there is not enough, never above its own composite), and the idle
  ones get nothing until their session begins, so two EVSEs never draw twice the maximum;
- the phases of the composite (numberPhases) drive a board that can switch 3-to-1;
- external limits (load management's share, the MQTT energy manager's limit: limit sources
  ``site`` and ``mqtt``) are kept here too, in memory only, as ExternalConstraints profiles
  with chargingLimitSource EMS (:meth:`ChargingProfiles.set_external`), so that a composite
  schedule and a profile report can show them; they live as long as their source says so,
  never in the state file, and the scheduler never applies them (their sources do);
- 2.1 V2X: for every EVSE whose stage takes setpoints the scheduler asks ``self.v2x``
  (:mod:`agent.core.v2x_modes`) for a plan (setpoint, discharge caps) from the period in
  force and the DER controls, and drives it around the limits (a setpoint before an offer
  rises, "none" after it fell); its next change counts among the boundaries.

Version-neutral: the adapters map their JSON to :class:`ChargingProfile` and back.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import ROUND_FLOOR, Decimal
from typing import TYPE_CHECKING, Any

from agent.clock import Clock, parse_iso
from agent.core.evse import NOMINAL_VOLTAGE, EvseController
from agent.core.sharing import (  # load management's fairness, without the load manager
    SITE_SOURCE,
    Demand,
    lowered_first,
    rises,
    session_active,
    share,
)
from agent.core.smart_charging import (
    ChargingProfile,
    ChargingSchedule,
    ChargingSchedulePeriod,
    CompositePeriod,
    Kind,
    Purpose,
)
from agent.storage import Storage, StorageError

if TYPE_CHECKING:
    from types import ModuleType

log = logging.getLogger("cp_agent.smart_charging")

SOURCE = "csms"  # the EVSE limit source this service sets
# Limit sources that are themselves shares of a common limit: the scheduler's sharing never
# takes one as an EVSE's cap (load management takes "csms" as one; both ways round would
# let each pin the other at its last answer).
SHARERS = frozenset({SOURCE, SITE_SOURCE})
# Local limit sources that are an external system's limits (2.0.1 ExternalConstraints):
# source -> (chargingLimitSource, isGridCritical).  The site limit protects the connection.
EXTERNAL_SOURCES: dict[str, tuple[str, bool]] = {SITE_SOURCE: ("EMS", True),
                                                 "mqtt": ("EMS", False)}
# Ids of the in-memory ExternalConstraints profiles: this + the EVSE id (0: the station).
EXTERNAL_PROFILE_ID = 2_000_000_000
_TENTH = Decimal("0.1")
# The longest the scheduler sleeps without a known change (a guard, not a poll: the engine
# says when to wake; this only bounds a sleep across a wall-clock step).
MAX_SLEEP_S = 3600.0

_ENGINE: ModuleType | None = None


def engine() -> ModuleType:
    """The smart-charging engine (agent/core/smart_charging_engine.py), imported on first use.

    A station without a profile never evaluates one: its limits, shares and phases are what
    the scheduler sets with no profile, which needs none of the engine (issue 18).  The
    service imports it the moment it holds a profile (read at start-up, installed), before
    the scheduler can apply that profile, so applying a limit never waits on an import.
    """
    global _ENGINE
    if _ENGINE is None:
        from agent.core import smart_charging_engine

        _ENGINE = smart_charging_engine
    return _ENGINE


# ---------------------------------------------------------------------- (de)serialisation


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def profile_to_json(p: ChargingProfile) -> str:
    return json.dumps({
        "id": p.id, "stack_level": p.stack_level, "purpose": str(p.purpose),
        "kind": str(p.kind), "recurrency": _plain(p.recurrency),
        "valid_from": _plain(p.valid_from), "valid_to": _plain(p.valid_to),
        "transaction_id": p.transaction_id, "evse_id": p.evse_id,
        "dyn_update_interval": p.dyn_update_interval,
        "dyn_update_time": _plain(p.dyn_update_time),
        "schedules": [{
            "rate_unit": str(s.rate_unit), "duration_s": s.duration_s,
            "start": _plain(s.start), "min_rate": _plain(s.min_rate), "id": s.id,
            "periods": [_period_json(q) for q in s.periods],
        } for s in p.schedules],
    }, separators=(",", ":"))


def _period_json(q: ChargingSchedulePeriod) -> dict:
    out = {"start_s": q.start_s, "limit": _plain(q.limit), "number_phases": q.number_phases,
           "phase_to_use": q.phase_to_use}
    # 2.1 V2X: only what is set, so that the state files of 1.6 / 2.0.1 stay as they were.
    for name in ("operation_mode", "setpoint", "discharge_limit", "v2x_baseline"):
        value = getattr(q, name)
        if value is not None:
            out[name] = _plain(value)
    for name in ("freq_watt", "signal_watt"):
        value = getattr(q, name)
        if value is not None:
            out[name] = [[_plain(x), _plain(y)] for x, y in value]
    return out


def _period_from(q: dict) -> ChargingSchedulePeriod:
    def curve(name: str) -> tuple | None:
        points = q.get(name)
        return None if points is None else tuple((_num(x), _num(y)) for x, y in points)

    return ChargingSchedulePeriod(
        q["start_s"], _num(q["limit"]), q.get("number_phases"), q.get("phase_to_use"),
        operation_mode=q.get("operation_mode"), setpoint=_num(q.get("setpoint")),
        discharge_limit=_num(q.get("discharge_limit")),
        v2x_baseline=_num(q.get("v2x_baseline")), freq_watt=curve("freq_watt"),
        signal_watt=curve("signal_watt"))


def _when(text: str | None) -> datetime | None:
    return parse_iso(text) if text else None


def _num(value: Any) -> Any:
    return Decimal(value) if isinstance(value, str) else value


def profile_from_json(text: str) -> ChargingProfile:
    d = json.loads(text)
    return ChargingProfile(
        id=d["id"], stack_level=d["stack_level"], purpose=d["purpose"], kind=d["kind"],
        recurrency=d.get("recurrency"), valid_from=_when(d.get("valid_from")),
        valid_to=_when(d.get("valid_to")), transaction_id=d.get("transaction_id"),
        evse_id=d.get("evse_id", 0), dyn_update_interval=d.get("dyn_update_interval"),
        dyn_update_time=_when(d.get("dyn_update_time")),
        schedules=[ChargingSchedule(
            rate_unit=s["rate_unit"], duration_s=s.get("duration_s"), start=_when(s.get("start")),
            min_rate=_num(s.get("min_rate")), id=s.get("id"),
            periods=[_period_from(q) for q in s["periods"]],
        ) for s in d["schedules"]])


# ---------------------------------------------------------------------- sharing


def allocate(station_a: float | None, own_a: Mapping[int, float],
             demands: Sequence[Demand]) -> dict[int, float]:
    """What each EVSE may take of the station maximum ``station_a`` (amps per phase) now.

    ``own_a`` is every EVSE's own composite (its limit if it were alone), ``demands`` the
    EVSEs with an active session (their ``max_a`` at most their own composite).  When the own
    composites fit together under the maximum (or there is none), each EVSE keeps its own: no
    sharing is needed, and no order of session starts can exceed it.  Otherwise the active
    EVSEs share it by :func:`agent.core.sharing.share` and the idle ones get 0: an
    idle EVSE must not hold back capacity, and it is given its share the moment its session
    becomes active (the scheduler is woken then).  The result never sums above
    ``station_a`` and nobody gets more than its own composite.
    """
    own = {evse_id: max(0.0, float(a)) for evse_id, a in own_a.items()}
    if station_a is None or sum(own.values()) <= station_a + 1e-9:
        return own
    capped = [Demand(d.evse_id, d.since, min(d.max_a, own.get(d.evse_id, 0.0)), d.min_a)
              for d in demands if d.evse_id in own]
    shares = share(max(0.0, station_a), capped)
    return {evse_id: min(shares.get(evse_id, 0.0), amps) for evse_id, amps in own.items()}


# ---------------------------------------------------------------------- the service


class ChargingProfiles:
    """The installed profiles of one station, and the task applying them to its EVSEs."""

    def __init__(self, evses: Mapping[int, EvseController], storage: Storage,
                 clock: Clock) -> None:
        self.evses = evses
        self.storage = storage
        self.clock = clock
        self._profiles: dict[int, ChargingProfile] = {}  # insertion order = installation order
        self._wake = asyncio.Event()
        self._tx_seen: dict[int, str | None] = {}  # EVSE -> local id of the tx last seen
        self.applied: dict[int, float | None] = {}  # EVSE -> amps last set (None: no limit)
        self._anchors: dict[str, datetime] = {}
        self.evaluations = 0  # how often the scheduler ran (tests wait on it)
        self._evaluated = asyncio.Event()
        self._sharing_inputs: dict[int, tuple] = {}  # EVSE -> what its share depends on
        # EVSE id (0: the station) -> local limit source -> (amps, since): external limits
        self._external: dict[int, dict[str, tuple[Decimal, datetime]]] = {}
        # Called with the EVSE id (0: the station) whose external limit changed (2.0.1 K11-K13)
        self.external_listeners: list[Callable[[int], None]] = []
        # 2.1 priority charging (K21 / K22): EVSE -> local id of the transaction using it
        self._priority: dict[int, str] = {}
        # Called with (EVSE id, local transaction id, activated) when that changes
        self.priority_listeners: list[Callable[[int, str, bool], None]] = []
        # Called after a dynamic profile was installed, updated or removed (2.1 K28 pulls)
        self.dynamic_listeners: list[Callable[[], None]] = []
        # 2.1 V2X operation modes (agent/core/v2x_modes.py): the setpoints and discharge
        # caps of the EVSEs whose power stage takes setpoints, planned at every evaluation.
        self.v2x: Any = None
        for evse in evses.values():
            listeners = getattr(evse, "tx_listeners", None)
            if listeners is not None:
                listeners.append(self.wake)
            state = getattr(evse, "state_listeners", None)
            if state is not None:
                state.append(self._evse_changed)
        self._load()

    def _load(self) -> None:
        try:
            rows = self.storage.profiles_all()
        except StorageError as exc:
            log.error("charging profiles could not be read, none apply: %s", exc)
            return
        if rows:
            engine()  # at construction, before the station starts: see engine()
        for pid, text in rows:
            try:
                self._profiles[pid] = profile_from_json(text)
            except (ValueError, KeyError, TypeError) as exc:
                log.error("stored charging profile %s is unreadable, ignored: %s", pid, exc)

    # ------------------------------------------------------------------ queries

    @property
    def profiles(self) -> list[ChargingProfile]:
        return list(self._profiles.values())

    def get(self, profile_id: int) -> ChargingProfile | None:
        return self._profiles.get(profile_id)

    def transactions(self) -> dict[int, str | None]:
        """EVSE id -> the CSMS id of its running transaction (None until known)."""
        return {i: e.tx.remote_id for i, e in self.evses.items() if e.tx is not None}

    def local_transactions(self) -> dict[int, str]:
        """EVSE id -> the station's own id of its running transaction: the transactionId of
        2.0.1, where the station names transactions (1.6 uses :meth:`transactions`)."""
        return {i: e.tx.local_id for i, e in self.evses.items() if e.tx is not None}

    def tx_start(self, evse: EvseController) -> datetime | None:
        tx = evse.tx
        if tx is None:
            return None
        try:
            return parse_iso(self.clock.resolve(tx.started_at) or "")
        except (TypeError, ValueError):  # a start not yet placed in time: from when first seen
            return self._anchors.setdefault(tx.local_id, self.clock.now())

    def composite(self, evse_id: int, duration_s: int, unit: str = "A",
                  start: datetime | None = None, *,
                  external: bool = True) -> list[CompositePeriod]:
        """The composite of ``evse_id`` (0: the station) from ``start`` (default now).

        ``external``: with the external limits in force now (2.0.1 K11.FR.06: they are the
        ExternalConstraints of the composite); 1.6 has no such purpose and leaves them out."""
        start = start or self.clock.now()
        profiles = self.profiles + (self.external_profiles if external else [])
        if evse_id == 0:
            evses = list(self.evses.values())
            rating = sum(e.max_current_a for e in evses) if evses else 0.0
            phases = max((e.phases for e in evses), default=3)
            return engine().composite(profiles, evse_id=0, window_start=start,
                                      window_s=duration_s, evse_max_a=rating, phases=phases,
                                      unit=unit)
        evse = self.evses[evse_id]
        tx = evse.tx
        return engine().composite(profiles, evse_id=evse_id, window_start=start,
                                  window_s=duration_s, tx_start=self.tx_start(evse),
                                  evse_max_a=evse.max_current_a, phases=evse.phases, unit=unit,
                                  transaction_id=tx.remote_id if tx is not None else None,
                                  priority=self.priority_active(evse_id))

    # ------------------------------------------------------------------ commands

    def install(self, profile: ChargingProfile, *, replace_level: bool = True) -> None:
        """Store ``profile``, replacing what it replaces (same id; with ``replace_level``
        also same purpose, stack level and EVSE: 1.6 3.13.2), and re-evaluate the limits.
        2.0.1 passes ``replace_level=False``: there an equal purpose and stack level is
        refused beforehand when the validity periods overlap (K01.FR.06) and may coexist when
        they do not.  Validation is the caller's (``validate``).  A Dynamic profile (2.1 K28)
        counts from now: its dyn_update_time is the station's clock at installation."""
        engine()  # before the profile is held: the scheduler applies it without an import
        if profile.kind == Kind.DYNAMIC:
            profile = replace(profile, dyn_update_time=self.clock.now())
        replaced = [pid for pid, p in self._profiles.items()
                    if replace_level and pid != profile.id
                    and str(p.purpose) == str(profile.purpose)
                    and p.stack_level == profile.stack_level and p.evse_id == profile.evse_id]
        self.storage.profiles_put(profile.id, profile.evse_id, str(profile.purpose),
                                  profile.stack_level, profile_to_json(profile),
                                  replace=replaced)
        for pid in replaced:
            del self._profiles[pid]
        self._profiles.pop(profile.id, None)
        self._profiles[profile.id] = profile
        log.info("charging profile %s installed (%s, stack level %s, EVSE %s)%s", profile.id,
                 profile.purpose, profile.stack_level, profile.evse_id,
                 f", replacing {replaced}" if replaced else "")
        self._profiles_changed()
        self.wake()

    def would_replace(self, profile: ChargingProfile) -> int:
        """How many installed profiles installing ``profile`` removes."""
        return sum(1 for pid, p in self._profiles.items()
                   if pid == profile.id or (str(p.purpose) == str(profile.purpose)
                                            and p.stack_level == profile.stack_level
                                            and p.evse_id == profile.evse_id))

    def clear(self, *, profile_id: int | None = None, evse_id: int | None = None,
              purpose: str | None = None, stack_level: int | None = None) -> bool:
        """Remove the profiles selected; whether anything was removed.

        With ``profile_id`` only that profile; otherwise every profile matching all the given
        criteria (none given: all of them)."""
        if profile_id is not None:
            ids = [profile_id] if profile_id in self._profiles else []
        else:
            ids = [pid for pid, p in self._profiles.items()
                   if (evse_id is None or p.evse_id == evse_id)
                   and (purpose is None or str(p.purpose) == str(purpose))
                   and (stack_level is None or p.stack_level == stack_level)]
        if not ids:
            return False
        self._remove(ids, "cleared")
        return True

    def clear_ids(self, ids: Iterable[int]) -> bool:
        """Remove exactly the installed profiles among ``ids`` (one commit); whether any was
        (2.0.1 selects by criteria itself, leaving out what a CSMS may not clear)."""
        chosen = [pid for pid in dict.fromkeys(ids) if pid in self._profiles]
        if not chosen:
            return False
        self._remove(chosen, "cleared")
        return True

    def _remove(self, ids: list[int], why: str) -> None:
        self.storage.profiles_delete(ids)
        for pid in ids:
            self._profiles.pop(pid, None)
        log.info("charging profile(s) %s %s", ids, why)
        self._profiles_changed()
        self.wake()

    def wake(self) -> None:
        """Re-evaluate the limits now (a profile or a transaction changed)."""
        self._wake.set()

    def _profiles_changed(self) -> None:
        """Tell the listeners what installing / removing may have changed: a priority profile
        gone under a transaction using it, the dynamic profiles to pull."""
        for evse_id, tx_id in list(self._priority.items()):
            if not self.priority_profiles(evse_id):
                self._set_priority(evse_id, tx_id, False, "its priority profile was removed")
        for listener in list(self.dynamic_listeners):
            try:
                listener()
            except Exception:  # noqa: BLE001 - a listener never breaks an install
                log.exception("dynamic profile listener failed")

    # ------------------------------------------------------------------ 2.1 K28 dynamic

    def dynamic_profiles(self) -> list[ChargingProfile]:
        return [p for p in self._profiles.values() if p.kind == Kind.DYNAMIC]

    def update_dynamic(self, profile_id: int, limit: Decimal | float | int) -> str | None:
        """A new limit for Dynamic profile ``profile_id`` (UpdateDynamicSchedule, the answer
        to a PullDynamicScheduleUpdate, or an external system: 2.1 K28.FR.06-.08), applied at
        once and counted from now (K28.FR.09: dyn_update_time; also what revives a profile
        whose duration had run out, K28.FR.14).  None when applied, else why not."""
        profile = self._profiles.get(profile_id)
        if profile is None:
            return f"no charging profile {profile_id} is installed"
        if profile.kind != Kind.DYNAMIC:
            return (f"charging profile {profile_id} is {profile.kind}, not Dynamic: only a "
                    f"dynamic profile takes schedule updates")
        try:
            value = Decimal(str(limit))
        except ArithmeticError:
            value = Decimal("NaN")
        if isinstance(limit, bool) or not value.is_finite() or value < 0:
            return f"limit {limit!r} is not a number >= 0"
        schedule = profile.schedules[0]
        first = schedule.periods[0]
        updated = replace(profile, dyn_update_time=self.clock.now(), schedules=[
            replace(schedule, periods=[replace(first, limit=value)]), *profile.schedules[1:]])
        self.storage.profiles_put(updated.id, updated.evse_id, str(updated.purpose),
                                  updated.stack_level, profile_to_json(updated), replace=[])
        self._profiles[profile_id] = updated
        log.info("dynamic charging profile %s: limit %s %s", profile_id, value,
                 schedule.rate_unit)
        self._profiles_changed()
        self.wake()
        return None

    def pull_due(self) -> dict[int, datetime]:
        """Dynamic profile id -> when it is due for a pull (dyn_update_time plus
        dynUpdateInterval, K28.FR.10); profiles without an interval are pushed, not pulled."""
        out: dict[int, datetime] = {}
        for p in self.dynamic_profiles():
            interval = p.dyn_update_interval
            if isinstance(interval, int) and interval > 0 and p.dyn_update_time is not None:
                out[p.id] = p.dyn_update_time + timedelta(seconds=interval)
        return out

    # ------------------------------------------------------------------ 2.1 K21 / K22 priority

    def priority_profiles(self, evse_id: int) -> list[ChargingProfile]:
        """The PriorityCharging profiles that can serve a transaction on ``evse_id``: its own
        and the station's (EVSE 0), not yet past their validTo."""
        now = self.clock.now()
        return [p for p in self._profiles.values()
                if p.purpose == Purpose.PRIORITY and p.evse_id in (0, evse_id)
                and (p.valid_to is None or p.valid_to > now)]

    def priority_active(self, evse_id: int) -> bool:
        """Whether the transaction running on ``evse_id`` charges with priority now."""
        evse = self.evses.get(evse_id)
        tx_id = self._priority.get(evse_id)
        return tx_id is not None and evse is not None and evse.tx is not None \
            and evse.tx.local_id == tx_id

    def use_priority(self, evse_id: int, activate: bool, *, by: str = "the CSMS") -> str:
        """Priority charging on or off for the transaction on ``evse_id`` (2.1 K21: the CSMS's
        UsePriorityCharging; K22: the EV driver at the station, ``by`` says who).

        "Accepted"; "Rejected" when no transaction runs there; "NoProfile" when priority is
        asked for but no PriorityCharging profile can serve it.  Turning it off is always
        Accepted (the profile may have gone meanwhile).  While on, the transaction's limit
        comes from the priority profile instead of its TxProfile / TxDefault; it ends with
        the transaction, and with the last priority profile that could serve it."""
        evse = self.evses.get(evse_id)
        if evse is None or evse.tx is None:
            return "Rejected"
        tx_id = evse.tx.local_id
        if activate and not self.priority_profiles(evse_id):
            return "NoProfile"
        self._set_priority(evse_id, tx_id, activate, f"asked by {by}")
        return "Accepted"

    def _set_priority(self, evse_id: int, tx_id: str, on: bool, why: str) -> None:
        was = self.priority_active(evse_id)
        if on:
            self._priority[evse_id] = tx_id
        else:
            self._priority.pop(evse_id, None)
        if was == on:
            return
        log.info("evse %s: priority charging %s (%s)", evse_id, "on" if on else "off", why)
        self.wake()
        for listener in list(self.priority_listeners):
            try:
                listener(evse_id, tx_id, on)
            except Exception:  # noqa: BLE001 - a reporter never breaks the switch
                log.exception("priority charging listener failed")

    # ------------------------------------------------------------------ the scheduler

    def _drop_ended_tx_profiles(self) -> None:
        """A TxProfile goes with its transaction; at start-up (first look) one on an EVSE
        without a transaction belongs to a transaction that ended with the power."""
        for evse_id, evse in self.evses.items():
            tx = evse.tx
            current = tx.local_id if tx is not None else None
            first = evse_id not in self._tx_seen
            seen = self._tx_seen.get(evse_id)
            self._tx_seen[evse_id] = current
            if self._priority.get(evse_id) not in (None, current):
                del self._priority[evse_id]  # priority charging ends with its transaction
            if first and current is not None:
                continue
            if not first and (seen is None or seen == current):
                continue
            stale = [pid for pid, p in self._profiles.items()
                     if p.purpose == Purpose.TX and p.evse_id == evse_id]
            if stale:
                self._remove(stale, f"removed: their transaction on EVSE {evse_id} ended")

    async def apply(self, at: datetime | None = None) -> datetime | None:
        """Set every EVSE's limit for now (or ``at``, a change the scheduler slept until and
        the clock's rounding may put a microsecond ahead of now); the next instant at which
        one may change."""
        self._drop_ended_tx_profiles()
        now = self.clock.now()
        if at is not None and at > now:
            now = at
        soonest: datetime | None = None
        profiles = self.profiles
        own: dict[int, CompositePeriod | None] = {}
        for evse_id, evse in self.evses.items():
            own[evse_id] = None
            if not profiles:
                continue
            tx = evse.tx
            tx_id = tx.remote_id if tx is not None else None
            tx_start = self.tx_start(evse)
            priority = self.priority_active(evse_id)
            # profiles held: the engine was imported when they were read or installed
            sc = engine()
            own[evse_id] = sc.limit_at(profiles, now, evse_id=evse_id, tx_start=tx_start,
                                       evse_max_a=evse.max_current_a, phases=evse.phases,
                                       transaction_id=tx_id, priority=priority)
            change = sc.next_change(profiles, now, evse_id=evse_id, tx_start=tx_start,
                                    transaction_id=tx_id, priority=priority)
            if change is not None and (soonest is None or change < soonest):
                soonest = change
        plans = self._v2x_plans(profiles, now, own)
        if self.v2x is not None:
            change = self.v2x.next_change(now)
            if change is not None and (soonest is None or change < soonest):
                soonest = change
        shares = self._shares(profiles, now, own)
        targets: dict[int, float | None] = {}
        for evse_id, evse in self.evses.items():
            amps: float | None = shares[evse_id]
            plan = plans.get(evse_id)
            if plan is not None and plan.hold_offer and amps is not None \
                    and amps < evse.min_current_a:
                amps = evse.min_current_a  # a discharge needs the power path (v2x_modes)
            targets[evse_id] = None if amps is not None and amps >= evse.max_current_a else amps
        # A setpoint goes to the stage before the offer rises, and "no setpoint" only after
        # the offer fell, so the power path held up for a discharge never charges.
        for evse_id, plan in plans.items():
            if plan.setpoint_w is not None:
                await self.v2x.drive(self.evses[evse_id], plan)
        # Lowered limits first, then the phase switches, raised limits last: a share moving
        # from one EVSE to another never adds up to more than the station maximum, not even
        # between two set_limit, and an EVSE switches phases at the lower of its two limits.
        switched = False
        for evse_id in lowered_first(self.applied, targets):
            evse, amps = self.evses[evse_id], targets[evse_id]
            if not switched and rises(self.applied.get(evse_id), amps):
                await self._switch_all(own)
                switched = True
            if self.applied.get(evse_id, "unset") != amps:
                log.info("evse %s: smart charging limit %s", evse_id,
                         "none" if amps is None else f"{amps:g} A")
                self.applied[evse_id] = amps
                await evse.set_limit(SOURCE, amps)
        if not switched:
            await self._switch_all(own)
        for evse_id, plan in plans.items():
            if plan.setpoint_w is None:
                await self.v2x.drive(self.evses[evse_id], plan)
        return soonest

    def _v2x_plans(self, profiles: list[ChargingProfile], now: datetime,
                   own: Mapping[int, CompositePeriod | None]) -> dict[int, Any]:
        """The V2X plan of every EVSE whose stage takes setpoints (2.1 operation modes, DER
        controls); none without the V2X service."""
        v2x = self.v2x
        if v2x is None:
            return {}
        plans = {}
        for evse_id, evse in self.evses.items():
            if not evse.hw.ev.supports_setpoint:
                continue
            tx = evse.tx
            period = engine().v2x_at(
                profiles, now, evse_id=evse_id, tx_start=self.tx_start(evse),
                transaction_id=tx.remote_id if tx is not None else None,
                priority=self.priority_active(evse_id)) if profiles else None
            plans[evse_id] = v2x.plan(evse, period, own.get(evse_id), now)
        return plans

    async def _switch_all(self, own: Mapping[int, CompositePeriod | None]) -> None:
        for evse_id, evse in self.evses.items():
            period = own[evse_id]
            await self._switch_phases(evse, period.number_phases if period is not None
                                      else evse.phases)

    def _shares(self, profiles: list[ChargingProfile], now: datetime,
                own: Mapping[int, CompositePeriod | None]) -> dict[int, float]:
        """Each EVSE's limit: its own composite, and the station maximum shared (allocate)."""
        own_a = {evse_id: float(p.limit) if p is not None else evse.max_current_a
                 for evse_id, evse in self.evses.items() for p in (own[evse_id],)}
        if not any(p.purpose == Purpose.STATION_MAX for p in profiles):
            return own_a
        evses = list(self.evses.values())
        (station, *_) = engine().station_composite(
            profiles, window_start=now, window_s=1,
            station_max_a=sum(e.max_current_a for e in evses),
            phases=max((e.phases for e in evses), default=3), voltage=NOMINAL_VOLTAGE,
            tx_default=False)
        demands = []
        for evse_id, evse in self.evses.items():
            if not session_active(evse):
                continue
            caps = [own_a[evse_id], *(a for src, a in evse.limits.items() if src not in SHARERS)]
            cap = min(caps)
            rate = self.min_rate_a(evse_id, at=now)
            floor = max(evse.min_current_a, min(rate, cap)) if rate is not None \
                else evse.min_current_a
            since = evse.session.authorized_at if evse.session is not None else None
            demands.append(Demand(evse_id, since if since is not None else 0.0, cap, floor))
        return allocate(float(station.limit), own_a, demands)

    async def _switch_phases(self, evse: EvseController, wanted: int) -> None:
        """Follow the composite's numberPhases on a board that switches 3-to-1 (1 or 3)."""
        if wanted not in (1, 3) or not evse.hw.ev.supports_phase_switch:
            return
        if wanted != evse.phases_in_use:
            await evse.set_phases(wanted)

    def _evse_changed(self, evse: EvseController) -> None:
        """After each input of an EVSE: re-share when what its share depends on changed (a
        session became active or inactive, a non-sharing limit source moved)."""
        inputs = (session_active(evse),
                  tuple(sorted((s, a) for s, a in evse.limits.items() if s not in SHARERS)))
        if self._sharing_inputs.get(evse.id) != inputs:
            self._sharing_inputs[evse.id] = inputs
            self.wake()

    # ------------------------------------------------------------------ minChargingRate

    def min_rate_a(self, evse_id: int, at: datetime | None = None) -> float | None:
        """The minChargingRate in force on the EVSE (amps per phase), or None.

        1.6 3.13 / 2.0.1 ChargingScheduleType: the lowest rate the EV charges efficiently at,
        "intended to be used by a local smart charging algorithm": a share below it pauses
        the EV instead (the scheduler's sharing and load management use it as the minimum).
        It is the one of the transaction-level profile setting the limit then."""
        rate = self.min_rate(evse_id, at=at, unit="A")
        return float(rate) if rate is not None else None

    def min_rate(self, evse_id: int, at: datetime | None = None,
                 unit: str = "A") -> Decimal | None:
        """The minChargingRate in force on the EVSE in ``unit`` (GetCompositeSchedule 1.6)."""
        evse = self.evses.get(evse_id)
        if evse is None:
            return None
        tx = evse.tx
        # No profile: none in force (what the engine answers), without importing it.
        profile = None if not self._profiles else engine().profile_in_force(
            self.profiles, at or self.clock.now(), evse_id=evse_id, tx_start=self.tx_start(evse),
            transaction_id=tx.remote_id if tx is not None else None,
            priority=self.priority_active(evse_id))
        if profile is None or not profile.schedules:
            return None
        schedule = profile.schedules[0]
        try:
            rate = Decimal(str(schedule.min_rate)) if schedule.min_rate is not None else None
        except ArithmeticError:
            return None
        if rate is None or not rate.is_finite() or rate <= 0:
            return None
        have = "W" if str(schedule.rate_unit) == "W" else "A"
        if have == unit:
            return rate
        volts = Decimal(str(NOMINAL_VOLTAGE)) * evse.phases_in_use
        if unit == "W":
            return rate * volts
        return (rate / volts).quantize(_TENTH, ROUND_FLOOR)

    @property
    def phase_switching(self) -> bool:
        """Whether every EVSE can switch 3-to-1 phases during a transaction (1.6
        ConnectorSwitch3to1PhaseSupported, 2.0.1 SmartChargingCtrlr.Phases3to1)."""
        evses = list(self.evses.values())
        return bool(evses) and all(e.hw.ev.supports_phase_switch for e in evses)

    # ------------------------------------------------------------------ external limits

    def set_external(self, source: str, evse_id: int, amps: float | None) -> None:
        """An energy manager's limit on the EVSE (0: the whole station) now; None: gone.

        Called by the limit sources that are an external system's (load management's share
        and its headroom, the MQTT limit), after they set it on the EVSE.  Kept in memory
        only: an external limit lives while its source says so, and a restart starts
        without one until the source speaks again.  The listeners (2.0.1 K11-K13) hear of
        every change; what is significant enough to report is theirs to judge."""
        current = self._external.setdefault(evse_id, {})
        old = current.get(source)
        if amps is None:
            if old is None:
                return
            del current[source]
        else:
            value = Decimal(str(max(0.0, float(amps)))).quantize(_TENTH, ROUND_FLOOR)
            if old is not None and old[0] == value:
                return
            current[source] = (value, self.clock.now())
        for listener in list(self.external_listeners):
            try:
                listener(evse_id)
            except Exception:  # noqa: BLE001 - a reporter never breaks a limit source
                log.exception("external limit listener failed")

    def external_limit(self, evse_id: int) -> tuple[Decimal, str] | None:
        """The lowest external limit on the EVSE (0: the station) and its source, or None."""
        current = self._external.get(evse_id)
        if not current:
            return None
        source, (amps, _) = min(current.items(), key=lambda kv: (kv[1][0], kv[0]))
        return amps, source

    def external_profile(self, evse_id: int) -> ChargingProfile | None:
        """The external limit on the EVSE (0: the station) as an ExternalConstraints profile
        (an absolute schedule from when it took this value, with no end)."""
        current = self._external.get(evse_id)
        if not current:
            return None
        source, (amps, since) = min(current.items(), key=lambda kv: (kv[1][0], kv[0]))
        return ChargingProfile(
            id=EXTERNAL_PROFILE_ID + evse_id, stack_level=0, purpose=Purpose.EXTERNAL,
            kind=Kind.ABSOLUTE, evse_id=evse_id,
            charging_limit_source=EXTERNAL_SOURCES.get(source, ("Other", False))[0],
            schedules=[ChargingSchedule("A", [ChargingSchedulePeriod(0, amps)],
                                        start=since.replace(microsecond=0))])

    @property
    def external_profiles(self) -> list[ChargingProfile]:
        """Every external limit in force, as ExternalConstraints profiles (never stored)."""
        out = []
        for evse_id in sorted(self._external):
            profile = self.external_profile(evse_id)
            if profile is not None:
                out.append(profile)
        return out

    async def run(self) -> None:
        """The scheduler task: apply, then sleep until the next change or a wake-up."""
        due: datetime | None = None
        while True:
            self._wake.clear()
            try:
                soonest = await self.apply(due)
            except StorageError as exc:
                log.error("smart charging: %s", exc)
                soonest = None
            self.evaluations += 1
            self._evaluated.set()
            delay = MAX_SLEEP_S
            if soonest is not None:
                delay = min(MAX_SLEEP_S, max(0.0, (soonest - self.clock.now()).total_seconds()))
            if self._wake.is_set():
                continue
            sleeper = asyncio.ensure_future(self._sleep_until(soonest, delay))
            waker = asyncio.ensure_future(self._wake.wait())
            due = None
            try:
                await asyncio.wait((sleeper, waker), return_when=asyncio.FIRST_COMPLETED)
                if sleeper.done() and not waker.done() and delay < MAX_SLEEP_S:
                    due = soonest
            finally:  # gather, not suppress: this task's own cancellation must propagate
                sleeper.cancel()
                waker.cancel()
                await asyncio.gather(sleeper, waker, return_exceptions=True)

    async def _sleep_until(self, soonest: datetime | None, delay: float) -> None:
        """Sleep until ``soonest``, measured when the sleep begins: a task starts on a later
        turn of the loop than it was made on, and time may have moved in between (a clock
        correction; a test advancing its fake clock), which a delay computed before would
        then overshoot by."""
        if soonest is not None and delay < MAX_SLEEP_S:
            delay = min(delay, max(0.0, (soonest - self.clock.now()).total_seconds()))
        await self.clock.sleep(delay)

    async def evaluated(self, timeout: float = 5.0) -> None:
        """Until the scheduler has run once more after now (tests, bench)."""
        target = self.evaluations + 1
        async with asyncio.timeout(timeout):
            while self.evaluations < target:
                self._evaluated.clear()
                await self._evaluated.wait()
