"""What the status page shows: the agent's state as one JSON document, session samples, and the
configuration with its secrets removed.

Everything here reads the agent (``status()``, snapshots, the link's public attributes);
nothing writes to it.  The samples behind the chart are kept here, not in the core: only a
station with the page pays for them, and their number is bounded however long a session runs.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.clock import iso
from agent.config import AgentConfig
from hal.interfaces import FaultKind
from hal.mock import MockHal

if TYPE_CHECKING:
    from agent.app import Agent
    from agent.core.model import EvseSnapshot

log = logging.getLogger("cp_agent.web")

REDACTED = "***"
# The smart-charging schedule the page draws: from the current minute, this long.  Counting
# from the minute, not the second, keeps the document unchanged (no push) while nothing moves.
SCHEDULE_S = 6 * 3600
# 1.6 and 2.0.1 names of the engine's profile purposes, as the CSMS operator knows them.
_PURPOSE_WORDS = {
    "1.6": {"StationMax": "ChargePointMaxProfile", "TxDefault": "TxDefaultProfile",
            "Tx": "TxProfile", "ExternalConstraints": "ExternalConstraints"},
    "2.0.1": {"StationMax": "ChargingStationMaxProfile", "TxDefault": "TxDefaultProfile",
              "Tx": "TxProfile", "ExternalConstraints": "ChargingStationExternalConstraints"},
}
_PURPOSE_WORDS["2.1"] = _PURPOSE_WORDS["2.0.1"]  # 2.1 names them as 2.0.1 does
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
    """The page's document: ``agent.status()`` per EVSE plus the session, its limit sources,
    its smart-charging schedule and profiles, the site's load management, the link's details,
    and whether bench controls apply (mock HAL).  ``samples`` adds the chart's whole series
    (for a page that just connected; afterwards points arrive one by one)."""
    status = agent.status()
    snaps = {s.evse_id: s for s in agent.station.snapshots()}
    now = agent.clock.now()
    evses = []
    for entry in status["evses"]:
        snap = snaps.get(entry["evse"])
        reading = snap.reading if snap is not None else None
        evses.append({
            **entry,
            "current_a": list(reading.current_a) if reading else [],
            "voltage_v": list(reading.voltage_v) if reading else [],
            # Reactive power (load convention: positive absorbed) and cos phi, where the
            # meter gives them (a stage with reactive control: the DER functions' effect).
            "reactive_var": reading.power_reactive_var if reading else None,
            "power_factor": reading.power_factor if reading else None,
            "phases": snap.phases if snap is not None else None,
            "session": _session(agent, tracker.series.get(entry["evse"]), samples),
            "sessions": tracker.sessions.get(entry["evse"], 0),
            "limits": limits_view(snap) if snap is not None else [],
            "schedule": schedule_view(agent, entry["evse"], now),
            "profiles": profiles_view(agent, entry["evse"], now),
        })
    return {
        "station": status["station"], "agent_version": __version__,
        "link": link_view(agent), "station_faults": status["station_faults"],
        "site": site_view(agent),
        # What the driver's display shows now (lines of text), None without a display.
        "display": status.get("display"),
        "evses": evses, "bench": isinstance(agent.hal, MockHal),
        "fault_kinds": [k.value for k in FaultKind],
    }



# ---------------------------------------------------------------------- smart charging, site


def _amps(value: Any) -> float:
    return round(float(value), 1)


def _utc(moment: datetime | None) -> datetime | None:
    """As the engine reads them: a time without a zone is UTC."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=UTC)


def _when(moment: datetime | None) -> str | None:
    moment = _utc(moment)
    return iso(moment) if moment is not None else None


def limits_view(snap: EvseSnapshot) -> list[dict[str, Any]]:
    """Every limit source on the EVSE now, its own maximum first; ``binding`` marks the one
    that sets the offer (``limit_source``: the lowest, "evse" when none is below it)."""
    rows = []
    if snap.max_current_a is not None:
        rows.append({"source": "evse", "limit_a": _amps(snap.max_current_a)})
    rows += [{"source": name, "limit_a": _amps(amps)} for name, amps in snap.limits]
    for row in rows:
        row["binding"] = row["source"] == snap.limit_source
    return rows


def schedule_view(agent: Agent, evse_id: int, now: datetime) -> dict[str, Any]:
    """The composite schedule from the current minute on: ``ChargingProfiles.composite``,
    the call GetCompositeSchedule answers from and the scheduler applies (so the chart is
    what the EVSE will follow, the other limit sources aside)."""
    start = now.replace(second=0, microsecond=0)
    try:
        periods = agent.station.charging_profiles.composite(evse_id, SCHEDULE_S, "A", start)
    except Exception as exc:  # noqa: BLE001 - the page shows the error, the agent goes on
        log.warning("status page: composite schedule of EVSE %s failed: %s", evse_id, exc)
        return {"start": iso(start), "duration_s": SCHEDULE_S, "unit": "A", "periods": [],
                "error": f"{type(exc).__name__}: {exc}"}
    return {"start": iso(start), "duration_s": SCHEDULE_S, "unit": "A",
            "periods": [{"start_s": p.start_s, "limit_a": _amps(p.limit),
                         "number_phases": p.number_phases} for p in periods]}


def composite_now(agent: Agent, evse_id: int) -> float | None:
    """The smart-charging limit of ``evse_id`` this second (its rating without profiles)."""
    try:
        periods = agent.station.charging_profiles.composite(evse_id, 1, "A")
    except Exception:  # noqa: BLE001 - a metric is never worth a failed scrape
        return None
    return float(periods[0].limit) if periods else None


def profiles_view(agent: Agent, evse_id: int, now: datetime) -> list[dict[str, Any]]:
    """The profiles installed for ``evse_id`` and for the whole station (EVSE 0)."""
    words = _PURPOSE_WORDS.get(agent.link.version or agent.cfg.ocpp.versions[0],
                               _PURPOSE_WORDS["1.6"])
    out = []
    for p in agent.station.charging_profiles.profiles:
        if p.evse_id not in (0, evse_id):
            continue
        valid_from, valid_to = _utc(p.valid_from), _utc(p.valid_to)
        valid_now = ((valid_from is None or valid_from <= now)
                     and (valid_to is None or now < valid_to))
        out.append({
            "id": p.id, "purpose": words.get(str(p.purpose), str(p.purpose)),
            "stack_level": p.stack_level, "kind": str(p.kind),
            "recurrency": str(p.recurrency) if p.recurrency is not None else None,
            "evse_id": p.evse_id, "transaction_id": p.transaction_id,
            "valid_from": _when(valid_from), "valid_to": _when(valid_to),
            "valid_now": valid_now,
            "schedules": [{
                "rate_unit": str(sch.rate_unit), "start": _when(sch.start),
                "duration_s": sch.duration_s,
                "min_rate": float(sch.min_rate) if sch.min_rate is not None else None,
                "periods": [{"start_s": q.start_s, "limit": float(q.limit),
                             "number_phases": q.number_phases} for q in sch.periods],
            } for sch in p.schedules],
        })
    return out


def site_view(agent: Agent) -> dict[str, Any] | None:
    """Load management as the page shows it (None without a ``site:`` section)."""
    if agent.load is None:
        return None
    site = agent.load.status()
    grid = site.get("grid_current_a")
    return {**site, "grid_max_a": max(grid) if grid else None,
            "shares": {str(k): v for k, v in site["shares"].items()}}
