"""Local load management: the station never draws more than the site's connection allows.

Every sample (the meter poll interval) :class:`LoadManager` works out the headroom per phase
of the connection and shares it among the EVSEs with an active session, as the limit source
``"site"`` (:meth:`EvseController.set_limit`); the core offers the lowest of all sources, so
the CSMS's limits still bind when they are lower.

- With a grid meter: headroom = ``max_current_a`` - (grid current - own EVSEs' current), per
  phase, the lowest phase binding. The EVSEs' meters are read with the grid meter, and each
  one's current is taken as the smaller of its reading and its offer now, so an EV that
  lags behind a lowered offer can only make the other loads look larger (the safe side).
- Without one: the static ``max_current_a`` is shared.
- A grid meter that goes silent (``silent_samples`` reads in a row fail) falls back to
  ``fallback_current_a`` for the whole site, shared like the static limit, until it answers
  again. Until then the shares of the last good sample are kept. Entering and leaving the
  fallback is told to ``on_fallback`` (the station reports it to the CSMS as a fault of the
  station: the operator must learn that the site runs on its fallback, not only the log).

The sharing itself is the pure function :func:`share` of :mod:`agent.core.sharing`, which
the smart-charging scheduler shares (re-exported here). This module is imported only where a
``site:`` section builds the load manager (agent/app.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agent.clock import Clock
from agent.core.sharing import (  # noqa: F401 - re-exported: load management's sharing
    SITE_SOURCE,
    Demand,
    lowered_first,
    rises,
    session_active,
    share,
)
from hal.interfaces import HalError, PowerMeter

if TYPE_CHECKING:
    from agent.core.charging_profiles import ChargingProfiles
    from agent.core.evse import EvseController

log = logging.getLogger("cp_agent.load")

SOURCE = SITE_SOURCE
READ_TIMEOUT_S = 5.0


def headroom_per_phase(max_current_a: float, grid_a: Sequence[float],
                       own_a: Sequence[float]) -> tuple[float, ...]:
    """Per phase: the site limit minus the other loads (grid minus the station's own)."""
    return tuple(max(0.0, max_current_a - (g - (own_a[i] if i < len(own_a) else 0.0)))
                 for i, g in enumerate(grid_a))


@dataclass(frozen=True)
class SiteLimits:
    """What :class:`LoadManager` needs of the ``site:`` configuration."""

    max_current_a: float
    min_current_a: float = 6.0
    fallback_current_a: float = 0.0
    silent_samples: int = 3


class LoadManager:
    """Applies :func:`share` every sample; ``mode`` says what the headroom came from."""

    def __init__(self, evses: dict[int, EvseController], limits: SiteLimits, clock: Clock, *,
                 grid_meter: PowerMeter | None = None, interval_s: float = 1.0,
                 profiles: ChargingProfiles | None = None,
                 on_fallback: Callable[[bool, str], Awaitable[None]] | None = None) -> None:
        self.evses = evses
        self.on_fallback = on_fallback
        # The smart-charging service: the EVs' minChargingRate, and where the shares and the
        # headroom are published as external limits (2.0.1 ExternalConstraints, K11-K13).
        self.profiles = profiles
        self.limits = limits
        self.clock = clock
        self.grid_meter = grid_meter
        self.interval_s = interval_s
        self.mode = "grid_meter" if grid_meter is not None else "static"
        self.failures = 0
        self.grid_a: tuple[float, ...] | None = None  # the last grid reading, per phase
        self.headroom_a: float | None = None
        self.shares: dict[int, float] = {}
        self.samples = 0
        self.sampled = asyncio.Condition()  # notified after every applied sample (tests)
        self._task: asyncio.Task[None] | None = None
        self._step_lock = asyncio.Lock()  # the task and ``ctl house-load`` both step

    # -------------------------------------------------------------- what the EVSEs want

    def _active(self, evse: EvseController) -> bool:
        return session_active(evse)

    def demands(self) -> list[Demand]:
        out = []
        for evse in self.evses.values():
            if not self._active(evse):
                continue
            others = [a for src, a in evse.limits.items() if src != SOURCE]
            cap = min([evse.max_current_a, *others])
            since = evse.session.authorized_at if evse.session else None
            floor = max(evse.min_current_a, self.limits.min_current_a)
            # minChargingRate (1.6 3.13 Load Balancing): below it the EV charges
            # inefficiently, so a share under it pauses instead; never above what it may draw.
            rate = self.profiles.min_rate_a(evse.id) if self.profiles is not None else None
            if rate is not None:
                floor = max(floor, min(rate, cap))
            out.append(Demand(evse.id, since if since is not None else 0.0, cap, floor))
        return out

    async def own_current(self) -> tuple[float, float, float]:
        """The station's own draw per phase, read with the grid meter (the same instant, so
        a change of offer between two samples is not mistaken for another load), at its
        lowest plausible: an EV lags behind a lowered offer, never ahead of it."""
        own = [0.0, 0.0, 0.0]
        for evse in self.evses.values():
            if not evse.hw.contactor.commanded_closed:
                continue
            try:
                async with asyncio.timeout(READ_TIMEOUT_S):
                    r = await evse.hw.meter.read()
            except (HalError, TimeoutError):
                r = evse.reading  # the station's sampler reports the fault
            if r is None:
                continue
            for i, amps in enumerate(r.current_a[:3]):
                own[i] += max(0.0, min(amps, evse.offered_a))
        return own[0], own[1], own[2]

    # -------------------------------------------------------------- one sample

    async def _read_grid(self) -> tuple[float, ...] | None:
        assert self.grid_meter is not None
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                reading = await self.grid_meter.read()
        except (HalError, TimeoutError) as exc:
            self.failures += 1
            if self.failures == self.limits.silent_samples:
                log.warning("site: grid meter silent for %d samples (%s): falling back to "
                            "%.1f A for the whole site", self.failures, str(exc) or "timed out",
                            self.limits.fallback_current_a)
            return None
        if not reading.current_a:
            self.failures += 1
            return None
        if self.failures >= self.limits.silent_samples:
            log.info("site: grid meter answers again: sharing the measured headroom")
        self.failures = 0
        return tuple(reading.current_a)

    async def step(self) -> None:
        """One sample: work out the headroom, share it, set the ``site`` limits."""
        async with self._step_lock:
            await self._step()
        async with self.sampled:
            self.sampled.notify_all()

    async def _step(self) -> None:
        was_fallback = self.mode == "fallback"
        await self._share()
        now_fallback = self.mode == "fallback"
        if now_fallback != was_fallback and self.on_fallback is not None:
            detail = (f"grid meter silent: site at {self.limits.fallback_current_a:g} A "
                      "fallback" if now_fallback else "")
            try:
                await self.on_fallback(now_fallback, detail)
            except Exception:  # noqa: BLE001 - the report never stops the sharing
                log.exception("site: reporting the fallback failed")

    async def _share(self) -> None:
        headroom: float | None
        if self.grid_meter is None:
            headroom, self.mode = self.limits.max_current_a, "static"
        else:
            grid = await self._read_grid()
            if grid is not None:
                self.grid_a, self.mode = grid, "grid_meter"
                own = await self.own_current()
                headroom = min(headroom_per_phase(self.limits.max_current_a, grid, own))
            elif self.failures >= self.limits.silent_samples:
                headroom, self.mode = self.limits.fallback_current_a, "fallback"
            else:
                headroom = None  # one lost reading: keep the last shares
        if headroom is not None:
            self.headroom_a = headroom
            active = self.demands()
            shares = share(headroom, active)
            targets = {evse_id: shares.get(evse_id, 0.0) for evse_id in self.evses}
            current = {evse_id: e.limits.get(SOURCE) for evse_id, e in self.evses.items()}
            for evse_id in lowered_first(current, targets):
                await self._apply(evse_id, targets[evse_id])
            self.shares = shares
            self._publish(headroom, shares)
        self.samples += 1

    def _publish(self, headroom: float, shares: dict[int, float]) -> None:
        """The site's limits as external limits: the headroom for the station, and each
        active EVSE's share (an idle EVSE's 0 is no limit of the site's, only no session)."""
        if self.profiles is None:
            return
        self.profiles.set_external(SOURCE, 0, headroom)
        for evse_id in self.evses:
            self.profiles.set_external(SOURCE, evse_id, shares.get(evse_id))

    async def _apply(self, evse_id: int, amps: float) -> None:
        evse = self.evses[evse_id]
        if evse.limits.get(SOURCE) != amps:
            await evse.set_limit(SOURCE, amps)

    # -------------------------------------------------------------- the task

    async def run(self) -> None:
        while True:
            try:
                await self.step()
            except Exception:
                log.exception("site: load management sample failed")
            await self.clock.sleep(self.interval_s)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run(), name="site-load")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self.profiles is not None:  # no sampling, no site limit to tell of
            for evse_id in (0, *self.evses):
                self.profiles.set_external(SOURCE, evse_id, None)

    def status(self) -> dict:
        return {"mode": self.mode, "max_current_a": self.limits.max_current_a,
                "grid_current_a": list(self.grid_a) if self.grid_a is not None else None,
                "headroom_a": self.headroom_a, "shares": dict(self.shares),
                # Whether the site runs on its fallback, and how close a meter is to it.
                "fallback": self.mode == "fallback",
                "fallback_current_a": self.limits.fallback_current_a,
                "grid_meter": self.grid_meter is not None,
                "failed_reads": self.failures, "silent_samples": self.limits.silent_samples,
                "min_current_a": self.limits.min_current_a}
