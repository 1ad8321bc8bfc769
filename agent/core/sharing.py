"""Sharing one current limit among EVSEs: the fairness both the smart-charging scheduler (the
station maximum) and local load management (the site's connection) apply.

Kept apart from :mod:`agent.core.load_management` so that the scheduler, which every station
runs, does not import the load manager, which only a station with a ``site:`` section builds
(docs/performance.md, issue 18). The sharing is the pure function :func:`share`
(unit-tested with hypothesis in tests/test_load_management.py).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.core.evse import EvseController

SITE_SOURCE = "site"  # the EVSE limit source of load management (LoadManager)


@dataclass(frozen=True, slots=True)
class Demand:
    """One EVSE with an active session: what it may take and when its session began."""

    evse_id: int
    since: float  # when the session was authorized (monotonic): the newest pause first
    max_a: float  # the most it may draw (its maximum, capped by the other limit sources)
    min_a: float = 6.0


def session_active(evse: EvseController) -> bool:
    """Whether the EVSE has a session that may draw now (it takes a share of a shared limit:
    load management's headroom, the station maximum of the smart-charging scheduler)."""
    s = evse.session
    return (s is not None and s.authorized and s.energy_allowed and s.ended_reason is None
            and evse.ev_connected and evse.operative and evse.blocking_fault is None)


def lowered_first(current: Mapping[int, float | None],
                  targets: Mapping[int, float | None]) -> list[int]:
    """The EVSE ids in the order to set ``targets`` (None: no limit): the lowered limits
    before the raised ones, so that capacity moving from one EVSE to another is freed before
    it is taken, and the sum stays within the shared limit between two ``set_limit``."""
    return sorted(targets, key=lambda i: (rises(current.get(i), targets[i]), i))


def rises(old: float | None, new: float | None) -> bool:
    """Whether a limit goes up from ``old`` to ``new`` (None: no limit)."""
    return (math.inf if new is None else new) > (math.inf if old is None else old)


def _floor(amps: float) -> float:
    """Down to 0.1 A: rounding must never take the sum above the headroom."""
    return math.floor(amps * 10 + 1e-9) / 10


def share(headroom_a: float, demands: Sequence[Demand]) -> dict[int, float]:
    """Share ``headroom_a`` among ``demands``; the EVSE id -> amps (0: paused).

    The oldest sessions are served first: as many as their minimums fit, the newest paused.
    Those served get a fair share (water filling: equal amps, an EVSE capped below it leaves
    the rest to the others), never below their minimum, never above their ``max_a``, and the
    sum never exceeds the headroom. A demand whose ``max_a`` is below its minimum cannot
    charge anyway (another source paused it) and gets 0 without taking anything.
    """
    headroom = max(0.0, float(headroom_a))
    out = {d.evse_id: 0.0 for d in demands}
    able = sorted((d for d in demands if d.max_a >= d.min_a), key=lambda d: (d.since, d.evse_id))
    served: list[Demand] = []
    used = 0.0
    for d in able:
        if used + d.min_a > headroom + 1e-9:
            break  # this one and every newer one are paused
        served.append(d)
        used += d.min_a
    # Water filling above the minimums: raise everyone's level until the headroom is used.
    give = {d.evse_id: d.min_a for d in served}
    left = headroom - used
    open_ = [d for d in served if d.max_a > d.min_a]
    while left > 1e-9 and open_:
        step = left / len(open_)
        nxt = []
        for d in open_:
            room = d.max_a - give[d.evse_id]
            add = min(room, step)
            give[d.evse_id] += add
            left -= add
            if room - add > 1e-9:
                nxt.append(d)
        if len(nxt) == len(open_):
            break  # nobody capped: the level is final
        open_ = nxt
    mins = {d.evse_id: d.min_a for d in served}
    for evse_id, amps in give.items():
        floored = _floor(amps)
        out[evse_id] = floored if floored >= mins[evse_id] else amps
    return out


__all__ = ["Demand", "SITE_SOURCE", "lowered_first", "rises", "session_active", "share"]
