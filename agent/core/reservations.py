"""Reservations: an EVSE (or any EVSE) kept for one token or its group until an expiry time.

Fleet depots reserve chargers for the vehicles due back. The rules are the same in 1.6
(3.11, 5.1, 5.13) and 2.0.1 (H01-H04), so they live here once and the versions only map
their messages:

- A reservation names an EVSE, or none (1.6 connector 0, 2.0.1 without evseId, optionally
  with a connectorType). A reserved EVSE is taken only by the reserving token or a token of
  its group (1.6 "the incoming idTag or the parent idTag match the idTag or parent idTag of
  the reservation"; 2.0.1 H03.FR.04-08 with groupIdToken). The group of an incoming token is
  what its authorization said (local list, cache or the CSMS's answer).
- A reservation of no particular EVSE keeps enough EVSEs free for the reservations of that
  kind (1.6: "one connector remains available for the reserved idTag"): other tokens may
  take EVSEs as long as that stays possible, and the EVSEs it needs show Reserved (2.0.1
  H01.FR.20 / H01.FR.24, for a connector type too).
- It ends when its token (or group) is authorized on it ("used": its id goes into the
  session's transaction, 1.6 StartTransaction.reservationId, 2.0.1 H03.FR.09 and
  TransactionEvent.reservationId), at its expiry (a timer that wakes at the soonest expiry on
  the injectable clock), when cancelled, or when its EVSE becomes faulted or unavailable (1.6
  5.13 (3), 2.0.1 TC_H_20 / TC_H_21).
- Reservations are rows in the state file (:mod:`agent.storage.reservations`): they survive a
  restart, and one that expired while the station was off is reported expired at start-up.

Listeners (the active version's reservation block) hear every end with its reason (Expired,
Removed, Cancelled, Used) inside the storage transaction that deletes the row, so a message
they queue in the outbox commits with it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from agent.clock import Clock, iso, parse_iso, sleep_or
from agent.core.service_settings import RESERVATION_PROFILE, RESERVATION_SETTINGS
from agent.core.settings import Settings
from agent.storage import Storage, StorageError

if TYPE_CHECKING:
    from agent.core.evse import EvseController

log = logging.getLogger("cp_agent.reservations")

# The 1.6 feature profile and the settings the rules read (ReserveConnectorZeroSupported,
# ReservationEnabled): declared where the blocks read them without building this service.
PROFILE = RESERVATION_PROFILE

# Answers to a reservation request (1.6 ReservationStatus, 2.0.1 ReserveNowStatusEnumType).
ACCEPTED, FAULTED, OCCUPIED, REJECTED, UNAVAILABLE = (
    "Accepted", "Faulted", "Occupied", "Rejected", "Unavailable")
# Why a reservation ended (what listeners are told).
EXPIRED, REMOVED, CANCELLED, USED = "Expired", "Removed", "Cancelled", "Used"
# An expiry this close is due (float rounding between the timer and the wall clock).
_DUE_SLACK_S = 0.001


@dataclass(frozen=True)
class Reservation:
    """One reservation, as both versions mean it."""

    id: int
    evse_id: int | None  # None: any EVSE (1.6 connector 0, 2.0.1 without evseId)
    expires_at: float  # wall-clock epoch seconds
    token: str  # 1.6 idTag, 2.0.1 idToken.idToken
    token_type: str | None = None  # 2.0.1 idToken.type
    group: str | None = None  # 1.6 parentIdTag, 2.0.1 groupIdToken.idToken
    connector_type: str | None = None  # 2.0.1 connectorType (with no evseId)

    def matches(self, token_id: str, parent: str | None) -> bool:
        """The token, or a token of the group, may use it (identifiers compare without regard
        to case: 1.6 IdToken is a CiString, 2.0.1 identifiers are case-insensitive)."""
        own = {self.token.casefold()} | ({self.group.casefold()} if self.group else set())
        return token_id.casefold() in own or (bool(parent) and parent.casefold() in own)

    def stored(self) -> dict[str, Any]:
        out: dict[str, Any] = {"token": self.token}
        for name in ("token_type", "group", "connector_type"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


class Reservations:
    """The station's reservations: the rules above, the expiry timer, persistence."""

    def __init__(self, evses: dict[int, EvseController], storage: Storage, clock: Clock,
                 settings: Settings,
                 spawn: Callable[[Coroutine[Any, Any, None], str], asyncio.Task] | None = None,
                 ) -> None:
        self.evses = evses
        self._spawn = spawn
        self.storage = storage
        self.clock = clock
        self.settings = settings
        settings.register(RESERVATION_SETTINGS)
        # Connector type per EVSE (2.0.1 ConnectorEnumType), for reservations of a type.
        self.connector_types: dict[int, str] = {}
        # Told of every end: (reservation, reason); runs inside the commit deleting it.
        self.listeners: list[Callable[[Reservation, str], None]] = []
        self._by_id: dict[int, Reservation] = {}
        self._wake = asyncio.Event()
        self._refresh_task: asyncio.Task[None] | None = None
        self._refresh_due = False
        self._free_seen: frozenset[int] | None = None
        self._load()

    # ------------------------------------------------------------------ persistence

    def _load(self) -> None:
        try:
            rows = self.storage.reservations_all()
        except StorageError as exc:
            log.error("reservations not read: %s", exc)
            return
        for rid, evse_id, expires, data in rows:
            try:
                when = parse_iso(expires).timestamp()
                res = Reservation(rid, evse_id, when, str(data["token"]),
                                  data.get("token_type"), data.get("group"),
                                  data.get("connector_type"))
            except (KeyError, ValueError, TypeError) as exc:
                log.error("stored reservation %s is unreadable (%s); dropping it", rid, exc)
                self._delete_quietly(rid)
                continue
            self._by_id[rid] = res
        if self._by_id:
            log.info("%d reservation(s) kept from before the restart", len(self._by_id))

    def _delete_quietly(self, rid: int) -> None:
        try:
            self.storage.reservation_delete(rid)
        except StorageError as exc:
            log.error("reservation %s not removed from the state file: %s", rid, exc)

    # ------------------------------------------------------------------ views

    def all(self) -> list[Reservation]:
        return sorted(self._by_id.values(), key=lambda r: r.id)

    def get(self, reservation_id: int) -> Reservation | None:
        return self._by_id.get(reservation_id)

    def _usable(self, e: EvseController) -> bool:
        return e.operative and e.blocking_fault is None

    def _is_free(self, e: EvseController) -> bool:
        """Free for a newcomer: usable, and no authorized or ended session on it (an EV
        plugged in without a token does not take an EVSE: a reserved one stays Reserved,
        2.0.1 G03.FR.09)."""
        s = e.session
        return self._usable(e) and (s is None or (not s.authorized and s.ended_reason is None))

    def _specific(self, evse_id: int) -> Reservation | None:
        return next((r for r in self._by_id.values() if r.evse_id == evse_id), None)

    def _unspecified(self, exclude: int | None = None) -> list[Reservation]:
        return [r for r in self._by_id.values() if r.evse_id is None and r.id != exclude]

    def _free_pool(self, exclude_reservation: int | None = None) -> list[int]:
        """EVSEs free and not reserved as such: what reservations of no EVSE may count on."""
        taken = {r.evse_id for r in self._by_id.values()
                 if r.evse_id is not None and r.id != exclude_reservation}
        return [i for i, e in self.evses.items() if i not in taken and self._is_free(e)]

    def _fits(self, r: Reservation, evse_id: int) -> bool:
        return r.connector_type is None or self.connector_types.get(evse_id) == r.connector_type

    def _feasible(self, free: Iterable[int], wanted: Iterable[Reservation]) -> bool:
        """Can every reservation in ``wanted`` still get an EVSE of its own from ``free``?
        Those of a connector type take one of theirs first; the others take what is left."""
        pool = Counter(self.connector_types.get(i) for i in free)
        untyped = 0
        for r in wanted:
            if r.connector_type is None:
                untyped += 1
            elif pool[r.connector_type] > 0:
                pool[r.connector_type] -= 1
            else:
                return False
        return sum(pool.values()) >= untyped

    def holds(self, evse_id: int) -> bool:
        """Whether a reservation holds ``evse_id`` now (it shows Reserved while idle): its
        own, or reservations of no EVSE that need it (no other free EVSE left for them)."""
        if self._specific(evse_id) is not None:
            return True
        unspecified = self._unspecified()
        if not unspecified:
            return False
        free = self._free_pool()
        if evse_id not in free:
            return False
        return not self._feasible([i for i in free if i != evse_id], unspecified)

    def reserved_for(self, evse_id: int, token_id: str, parent: str | None) -> bool:
        """``evse_id`` is reserved as such for this token or its group."""
        r = self._specific(evse_id)
        return r is not None and r.matches(token_id, parent)

    def admit(self, evse_id: int, token_id: str,
              parent: str | None) -> tuple[bool, Reservation | None]:
        """May this token (of group ``parent``) take ``evse_id``; and the reservation it uses
        there, if any. Reserved as such: only its token or group. Otherwise a reservation of
        no EVSE that the token holds is used; a token without one may take the EVSE as long
        as the reservations of no EVSE keep enough free EVSEs."""
        specific = self._specific(evse_id)
        if specific is not None:
            ok = specific.matches(token_id, parent)
            return ok, specific if ok else None
        unspecified = self._unspecified()
        mine = next((r for r in unspecified
                     if r.matches(token_id, parent) and self._fits(r, evse_id)), None)
        if mine is not None:
            return True, mine
        if not unspecified:
            return True, None
        rest = [i for i in self._free_pool() if i != evse_id]
        return self._feasible(rest, unspecified), None

    # ------------------------------------------------------------------ commands

    def reserve(self, r: Reservation) -> str:
        """A reservation request: Accepted, Faulted, Occupied, Rejected or Unavailable.

        A request with the id of a reservation already made replaces it (1.6 5.13, 2.0.1
        H01.FR.02): it is judged as if the old one were gone, and the old one stays when the
        new one cannot be made.
        """
        if not self.settings["ReservationEnabled"]:
            log.info("reservation %s refused: reservations are disabled", r.id)
            return REJECTED
        if r.expires_at <= self.clock.wall():
            log.info("reservation %s refused: its expiry %s has passed", r.id,
                     iso(datetime.fromtimestamp(r.expires_at, UTC)))
            return REJECTED
        status = self._judge_specific(r) if r.evse_id is not None else self._judge_any(r)
        if status != ACCEPTED:
            log.info("reservation %s (EVSE %s, token %s) refused: %s", r.id,
                     r.evse_id if r.evse_id is not None else "any", r.token, status)
            return status
        try:
            self.storage.reservation_put(r.id, r.evse_id, _iso(r.expires_at), r.stored())
        except StorageError as exc:
            log.error("reservation %s not made: %s", r.id, exc)
            return REJECTED
        replaced = self._by_id.get(r.id)
        self._by_id[r.id] = r
        log.info("reservation %s %s: EVSE %s for token %s%s until %s", r.id,
                 "replaced" if replaced else "made",
                 r.evse_id if r.evse_id is not None else "any"
                 + (f" ({r.connector_type})" if r.connector_type else ""), r.token,
                 f" (group {r.group})" if r.group else "",
                 iso(datetime.fromtimestamp(r.expires_at, UTC)))
        self._changed()
        return ACCEPTED

    def _judge_specific(self, r: Reservation) -> str:
        assert r.evse_id is not None
        e = self.evses.get(r.evse_id)
        if e is None:
            return REJECTED
        if r.connector_type is not None and not self._fits(r, r.evse_id):
            return REJECTED
        if e.blocking_fault is not None:
            return FAULTED
        if not e.operative:
            return UNAVAILABLE
        s = e.session
        if s is not None or e.ev_connected or e.tx is not None:
            return OCCUPIED
        other = self._specific(r.evse_id)
        if other is not None and other.id != r.id:
            return OCCUPIED  # "reserved for the same or another idTag"
        unspecified = self._unspecified(exclude=r.id)
        if unspecified:
            rest = [i for i in self._free_pool(exclude_reservation=r.id) if i != r.evse_id]
            if not self._feasible(rest, unspecified):
                return OCCUPIED  # needed by the reservations of no EVSE
        return ACCEPTED

    def _judge_any(self, r: Reservation) -> str:
        if not self.settings["ReserveConnectorZeroSupported"]:
            return REJECTED
        compatible = [e for i, e in self.evses.items() if self._fits(r, i)]
        if not compatible:
            return REJECTED  # no connector of that type here
        if all(e.blocking_fault is not None for e in compatible):
            return FAULTED
        if not any(self._usable(e) for e in compatible):
            return UNAVAILABLE
        if self._feasible(self._free_pool(exclude_reservation=r.id),
                          [*self._unspecified(exclude=r.id), r]):
            return ACCEPTED
        return OCCUPIED

    def cancel(self, reservation_id: int) -> bool:
        """CancelReservation: whether there was such a reservation (Accepted / Rejected)."""
        r = self._by_id.get(reservation_id)
        if r is None:
            return False
        self._end(r, CANCELLED)
        return True

    def use(self, r: Reservation, evse_id: int) -> None:
        """Its token was authorized on ``evse_id``: the reservation is used (its id travels
        with the session into the transaction)."""
        if self._by_id.get(r.id) == r:
            log.info("reservation %s used on EVSE %s", r.id, evse_id)
            self._end(r, USED)

    def _end(self, r: Reservation, reason: str) -> None:
        self._by_id.pop(r.id, None)
        try:
            with self.storage.atomic():
                self.storage.reservation_delete(r.id)
                for listener in list(self.listeners):
                    listener(r, reason)
        except StorageError as exc:
            # Gone from memory all the same: an expiry must not fire for ever, and a row left
            # behind ends at the next start-up (its expiry has passed by then, or it is used).
            log.error("reservation %s ended (%s) but the state file was not updated: %s",
                      r.id, reason, exc)
        if reason != USED:
            log.info("reservation %s ended: %s", r.id, reason.lower())
        self._changed()

    # ------------------------------------------------------------------ reacting

    def _changed(self) -> None:
        """Something about the reservations changed: re-arm the timer, refresh statuses."""
        self._wake.set()
        self._free_seen = None
        self._schedule_refresh()

    def rearm(self) -> None:
        """The wall clock may have moved (the CSMS time adopted): recompute the timer."""
        self._wake.set()

    def evse_changed(self, evse: EvseController) -> None:
        """An EVSE's state changed (called after each of its inputs, must be cheap).

        A reservation whose EVSE became faulted or unavailable is removed (1.6 5.13 (3),
        2.0.1 TC_H_20 / TC_H_21), one of no EVSE when no EVSE it could use is left; and when
        the free EVSEs changed, the others' statuses are derived again (which of them a
        reservation of no EVSE holds depends on all of them).
        """
        if not self._by_id:
            return
        for r in list(self._by_id.values()):
            if r.evse_id is not None:
                e = self.evses.get(r.evse_id)
                if e is None or not self._usable(e):
                    log.info("reservation %s: EVSE %s is %s", r.id, r.evse_id,
                             "faulted" if e is not None and e.blocking_fault else "unavailable")
                    self._end(r, REMOVED)
            elif not any(self._usable(e) for i, e in self.evses.items() if self._fits(r, i)):
                log.info("reservation %s: no EVSE it could use is available", r.id)
                self._end(r, REMOVED)
        free = frozenset(i for i, e in self.evses.items() if self._is_free(e))
        if free != self._free_seen:
            self._free_seen = free
            self._schedule_refresh()

    def _schedule_refresh(self) -> None:
        self._refresh_due = True
        if self._refresh_task is not None and not self._refresh_task.done():
            return  # the running refresh goes round once more
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return  # not running yet: the first status of each EVSE is derived anyway
        coro = self._refresh()
        self._refresh_task = (self._spawn(coro, "reservations-status") if self._spawn
                              else asyncio.get_running_loop().create_task(coro))

    async def _refresh(self) -> None:
        while self._refresh_due:
            self._refresh_due = False
            for e in list(self.evses.values()):
                await e.refresh_status()

    # ------------------------------------------------------------------ expiry

    def _expire_due(self) -> None:
        now = self.clock.wall() + _DUE_SLACK_S
        for r in [r for r in self._by_id.values() if r.expires_at <= now]:
            log.info("reservation %s (EVSE %s, token %s) expired", r.id,
                     r.evse_id if r.evse_id is not None else "any", r.token)
            self._end(r, EXPIRED)

    async def run(self) -> None:
        """The expiry timer: sleeps until the soonest expiry (or a change), never polls."""
        while True:
            self._wake.clear()
            self._expire_due()
            soonest = min((r.expires_at for r in self._by_id.values()), default=None)
            if soonest is None:
                await self._wake.wait()
                continue
            await sleep_or(self.clock, max(0.0, soonest - self.clock.wall()), self._wake)


def _iso(epoch: float) -> str:
    return iso(datetime.fromtimestamp(epoch, UTC))


def when(text: str) -> float:
    """An expiry date from a CSMS (ISO 8601) as epoch seconds; ValueError if unreadable."""
    try:
        return parse_iso(text).timestamp()
    except (OverflowError, OSError, TypeError) as exc:
        raise ValueError(f"{text!r}: {exc}") from None
