"""What the status page shows: the agent's state as one JSON document, session samples, and the
configuration with its secrets removed.

Everything here reads the agent (``status()``, snapshots, the link's public attributes);
nothing writes to it.  The samples behind the chart are kept here, not in the core: only a
station with the page pays for them, and their number is bounded however long a session runs.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.config import AgentConfig
from hal.interfaces import FaultKind
from hal.mock import MockHal

if TYPE_CHECKING:
    from agent.app import Agent
    from agent.core.model import EvseSnapshot

REDACTED = "***"
# Chart samples kept per session; past this, every other one goes and the interval doubles,
# so a whole session stays on the chart at a coarser grain (720 points: 12 min at 1 s).
MAX_POINTS = 720
SAMPLE_INTERVAL_S = 1.0
# Any configuration key containing one of these words is a secret (case-insensitive).
_SECRET_WORDS = ("password", "passwd", "secret", "token", "key", "credential", "user")
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]*@")


def strip_userinfo(text: str) -> str:
    """``ws://user:pw@host/x`` -> ``ws://***@host/x``: URLs are shown, their passwords not."""
    return _URL_USERINFO.sub(rf"\1{REDACTED}@", text)


def _secret(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


def scrub(value: Any) -> Any:
    """``value`` with every entry named like a secret replaced (unset ones stay ``None``)."""
    if isinstance(value, dict):
        return {k: (REDACTED if _secret(str(k)) and v not in (None, "") else scrub(v))
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrub(v) for v in value]
    if isinstance(value, str):
        return strip_userinfo(value)
    return value


def public_config(cfg: AgentConfig) -> dict[str, Any]:
    """The configuration as loaded, secrets removed: the OCPP password, the web credentials,
    and anything named password / key / token / secret (e.g. AuthorizationKey in defaults)."""
    return scrub(dataclasses.asdict(cfg))


@dataclass
class Series:
    """Power and current over one session (a transaction), for the chart."""

    session: str  # the transaction's local id
    t0: float  # monotonic time it was first seen
    started_at: str | None  # the transaction's start (ISO, or a marker until the clock is set)
    token: str | None
    interval: float = SAMPLE_INTERVAL_S
    points: list[list[float]] = field(default_factory=list)  # [t s, W, A, offered A]
    active: bool = True
    duration_s: float = 0.0
    energy_wh: float | None = None
    last_at: float | None = None  # monotonic time of the newest point


class SessionTracker:
    """Samples every EVSE's running session and counts sessions, on the agent's clock.

    ``poll()`` is cheap and idempotent: it is called every second by the server's ticker and
    after every change the core traces, so a session that starts is seen at once and its
    first point is drawn without waiting for the next tick.
    """

    def __init__(self, agent: Agent, *, interval: float = SAMPLE_INTERVAL_S,
                 max_points: int = MAX_POINTS) -> None:
        self.agent = agent
        self.interval = interval
        self.max_points = max_points
        self.series: dict[int, Series] = {}
        self.sessions: dict[int, int] = dict.fromkeys(agent.station.evses, 0)
        # Called with (evse id, session id, point) for each new point: the live push.
        self.on_point: Callable[[int, str, list[float]], None] | None = None

    def poll(self) -> None:
        now = self.agent.clock.monotonic()
        for snap in self.agent.station.snapshots():
            self._poll_one(snap, now)

    def _poll_one(self, snap: EvseSnapshot, now: float) -> None:
        series = self.series.get(snap.evse_id)
        local_id = snap.tx_local_id
        if local_id is not None and (series is None or series.session != local_id):
            tx = snap.tx
            series = Series(local_id, now, tx.started_at if tx else None, snap.token,
                            interval=self.interval)
            self.series[snap.evse_id] = series
            self.sessions[snap.evse_id] = self.sessions.get(snap.evse_id, 0) + 1
        if series is None:
            return
        if local_id != series.session:
            series.active = False  # ended: the chart keeps showing it until the next one
            return
        series.duration_s = now - series.t0
        series.energy_wh = snap.energy_wh
        series.token = snap.token or series.token
        if series.last_at is not None and now - series.last_at < series.interval * 0.95:
            return
        series.last_at = now
        current = max(snap.reading.current_a) if snap.reading and snap.reading.current_a \
            else 0.0
        point = [round(series.duration_s, 2), round(snap.power_w or 0.0, 1),
                 round(current, 2), round(snap.offered_a, 1)]
        series.points.append(point)
        if len(series.points) > self.max_points:
            series.points = series.points[::2]
            series.interval *= 2
        if self.on_point is not None:
            self.on_point(snap.evse_id, series.session, point)


def _resolve(agent: Agent, stamp: str | None) -> str | None:
    return agent.clock.resolve(stamp) if stamp else None


def _session(agent: Agent, series: Series | None, samples: bool) -> dict[str, Any] | None:
    if series is None:
        return None
    out: dict[str, Any] = {
        "id": series.session, "active": series.active,
        "started_at": _resolve(agent, series.started_at), "token": series.token,
        "duration_s": round(series.duration_s, 1),
        "energy_wh": round(series.energy_wh, 1) if series.energy_wh is not None else None,
        "interval_s": series.interval, "points": len(series.points),
    }
    if samples:
        out["samples"] = [list(p) for p in series.points]
    return out


def link_view(agent: Agent) -> dict[str, Any]:
    """The link to the CSMS as an operator wants to see it (no credential in it)."""
    link = agent.link
    return {
        "state": link.state, "url": strip_userinfo(link.url), "version": link.version,
        "offered_versions": list(agent.cfg.ocpp.versions),
        "security_profile": agent.cfg.ocpp.security_profile,
        "connected_since": _resolve(agent, link.connected_since),
        "registration": agent.adapter.registration, "last_error": link.last_error,
        "connects": link.connects, "outbox": agent.storage.outbox_count(),
    }


def build_view(agent: Agent, tracker: SessionTracker, *, samples: bool = False
               ) -> dict[str, Any]:
    """The page's document: ``agent.status()`` per EVSE plus the session, the link's details,
    and whether bench controls apply (mock HAL).  ``samples`` adds the chart's whole series
    (for a page that just connected; afterwards points arrive one by one)."""
    status = agent.status()
    snaps = {s.evse_id: s for s in agent.station.snapshots()}
    evses = []
    for entry in status["evses"]:
        snap = snaps.get(entry["evse"])
        reading = snap.reading if snap is not None else None
        evses.append({
            **entry,
            "current_a": list(reading.current_a) if reading else [],
            "voltage_v": list(reading.voltage_v) if reading else [],
            "phases": snap.phases if snap is not None else None,
            "session": _session(agent, tracker.series.get(entry["evse"]), samples),
            "sessions": tracker.sessions.get(entry["evse"], 0),
        })
    return {
        "station": status["station"], "agent_version": __version__,
        "link": link_view(agent), "station_faults": status["station_faults"],
        "evses": evses, "bench": isinstance(agent.hal, MockHal),
        "fault_kinds": [k.value for k in FaultKind],
    }

