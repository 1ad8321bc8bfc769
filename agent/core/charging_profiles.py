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
  transaction starts or ends, and at start-up.  The station maximum (EVSE 0) caps each EVSE
  (the engine's composite includes it); sharing it among EVSEs is load management's business.

Version-neutral: the adapters map their JSON to :class:`ChargingProfile` and back.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from agent.clock import Clock, parse_iso
from agent.core.evse import EvseController
from agent.core.smart_charging import (
    ChargingProfile,
    ChargingSchedule,
    ChargingSchedulePeriod,
    CompositePeriod,
    Purpose,
    composite,
    limit_at,
    next_change,
)
from agent.storage import Storage, StorageError

log = logging.getLogger("cp_agent.smart_charging")

SOURCE = "csms"  # the EVSE limit source this service sets
# The longest the scheduler sleeps without a known change (a guard, not a poll: the engine
# says when to wake; this only bounds a sleep across a wall-clock step).
MAX_SLEEP_S = 3600.0


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
        "schedules": [{
            "rate_unit": str(s.rate_unit), "duration_s": s.duration_s,
            "start": _plain(s.start), "min_rate": _plain(s.min_rate),
            "periods": [{"start_s": q.start_s, "limit": _plain(q.limit),
                         "number_phases": q.number_phases, "phase_to_use": q.phase_to_use}
                        for q in s.periods],
        } for s in p.schedules],
    }, separators=(",", ":"))


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
        evse_id=d.get("evse_id", 0),
        schedules=[ChargingSchedule(
            rate_unit=s["rate_unit"], duration_s=s.get("duration_s"), start=_when(s.get("start")),
            min_rate=_num(s.get("min_rate")),
            periods=[ChargingSchedulePeriod(q["start_s"], _num(q["limit"]),
                                            q.get("number_phases"), q.get("phase_to_use"))
                     for q in s["periods"]],
        ) for s in d["schedules"]])


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
        for evse in evses.values():
            listeners = getattr(evse, "tx_listeners", None)
            if listeners is not None:
                listeners.append(self.wake)
        self._load()

    def _load(self) -> None:
        try:
            rows = self.storage.profiles_all()
        except StorageError as exc:
            log.error("charging profiles could not be read, none apply: %s", exc)
            return
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

    def tx_start(self, evse: EvseController) -> datetime | None:
        tx = evse.tx
        if tx is None:
            return None
        try:
            return parse_iso(self.clock.resolve(tx.started_at) or "")
        except (TypeError, ValueError):  # a start not yet placed in time: from when first seen
            return self._anchors.setdefault(tx.local_id, self.clock.now())

    def composite(self, evse_id: int, duration_s: int, unit: str = "A",
                  start: datetime | None = None) -> list[CompositePeriod]:
        """The composite of ``evse_id`` (0: the station) from ``start`` (default now)."""
        start = start or self.clock.now()
        if evse_id == 0:
            evses = list(self.evses.values())
            rating = sum(e.max_current_a for e in evses) if evses else 0.0
            phases = max((e.phases for e in evses), default=3)
            return composite(self.profiles, evse_id=0, window_start=start, window_s=duration_s,
                             evse_max_a=rating, phases=phases, unit=unit)
        evse = self.evses[evse_id]
        tx = evse.tx
        return composite(self.profiles, evse_id=evse_id, window_start=start,
                         window_s=duration_s, tx_start=self.tx_start(evse),
                         evse_max_a=evse.max_current_a, phases=evse.phases, unit=unit,
                         transaction_id=tx.remote_id if tx is not None else None)

    # ------------------------------------------------------------------ commands

    def install(self, profile: ChargingProfile) -> None:
        """Store ``profile``, replacing what it replaces (same id; same purpose, stack level
        and EVSE), and re-evaluate the limits.  Validation is the caller's (``validate``)."""
        replaced = [pid for pid, p in self._profiles.items()
                    if pid != profile.id and str(p.purpose) == str(profile.purpose)
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

    def _remove(self, ids: list[int], why: str) -> None:
        self.storage.profiles_delete(ids)
        for pid in ids:
            self._profiles.pop(pid, None)
        log.info("charging profile(s) %s %s", ids, why)
        self.wake()

    def wake(self) -> None:
        """Re-evaluate the limits now (a profile or a transaction changed)."""
        self._wake.set()

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
        for evse_id, evse in self.evses.items():
            tx = evse.tx
            tx_id = tx.remote_id if tx is not None else None
            tx_start = self.tx_start(evse)
            amps: float | None = None
            if profiles:
                period = limit_at(profiles, now, evse_id=evse_id, tx_start=tx_start,
                                  evse_max_a=evse.max_current_a, phases=evse.phases,
                                  transaction_id=tx_id)
                if period.limit < Decimal(str(evse.max_current_a)):
                    amps = float(period.limit)
                change = next_change(profiles, now, evse_id=evse_id, tx_start=tx_start,
                                     transaction_id=tx_id)
                if change is not None and (soonest is None or change < soonest):
                    soonest = change
            if self.applied.get(evse_id, "unset") != amps:
                log.info("evse %s: smart charging limit %s", evse_id,
                         "none" if amps is None else f"{amps:g} A")
                self.applied[evse_id] = amps
                await evse.set_limit(SOURCE, amps)
        return soonest

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
            sleeper = asyncio.ensure_future(self.clock.sleep(delay))
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

    async def evaluated(self, timeout: float = 5.0) -> None:
        """Until the scheduler has run once more after now (tests, bench)."""
        target = self.evaluations + 1
        async with asyncio.timeout(timeout):
            while self.evaluations < target:
                self._evaluated.clear()
                await self._evaluated.wait()
