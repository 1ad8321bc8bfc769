"""``/metrics``: the agent's figures in the Prometheus text format.

One registry per agent (several agents share a process in tests and the swarm, and the
library's global registry would mix them), and one collector that reads the agent when
scraped: nothing is updated on the hot path, a scrape costs one ``status()``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
    StateSetMetricFamily,
)

from agent import __version__
from agent.core.model import ConnectorStatus
from agent.web.view import SessionTracker, composite_now, strip_userinfo
from hal.interfaces import FaultKind, PilotState

if TYPE_CHECKING:
    from agent.app import Agent

LINK_STATES = ("disconnected", "connecting", "connected")


class AgentCollector:
    """Collects at scrape time; ``frames`` counts OCPP frames (direction, kind, action)."""

    def __init__(self, agent: Agent, tracker: SessionTracker,
                 frames: Counter[tuple[str, str, str]]) -> None:
        self.agent = agent
        self.tracker = tracker
        self.frames = frames

    def collect(self) -> Iterator[Metric]:
        agent = self.agent
        status = agent.status()
        link = agent.link
        info = InfoMetricFamily("cp_agent", "The agent and its station",
                                labels=["station", "version"])
        info.add_metric([status["station"], __version__], {})
        yield info

        up = GaugeMetricFamily("cp_agent_link_up", "1 while connected to the CSMS")
        up.add_metric([], 1.0 if link.state == "connected" else 0.0)
        yield up
        state = StateSetMetricFamily("cp_agent_link_state", "State of the CSMS link")
        state.add_metric([], {s: link.state == s for s in LINK_STATES})
        yield state
        link_info = InfoMetricFamily("cp_agent_link", "The CSMS link's URL, OCPP version and "
                                     "security profile")
        link_info.add_metric([], {"url": strip_userinfo(link.url),
                                  "ocpp_version": link.version or "",
                                  "security_profile": str(agent.cfg.ocpp.security_profile),
                                  "registration": status["registration"] or ""})
        yield link_info
        connects = CounterMetricFamily("cp_agent_link_connects", "Connections established")
        connects.add_metric([], link.connects)
        yield connects
        outbox = GaugeMetricFamily("cp_agent_outbox_messages",
                                   "Transaction messages waiting for the CSMS (durable outbox)")
        outbox.add_metric([], status["outbox"])
        yield outbox
        messages = CounterMetricFamily("cp_agent_ocpp_messages", "OCPP frames sent and received",
                                       labels=["direction", "kind", "action"])
        for (direction, kind, action), n in sorted(self.frames.items()):
            messages.add_metric([direction, kind, action], n)
        yield messages
        station_faults = GaugeMetricFamily("cp_agent_station_faults",
                                           "Faults of the station as a whole (e.g. the reader)")
        station_faults.add_metric([], len(status["station_faults"]))
        yield station_faults

        yield from self._evses(status)
        yield from self._site(status.get("site"))

    def _site(self, site: dict | None) -> Iterator[Metric]:
        """Load management, only with a ``site:`` section."""
        if site is None:
            return
        limit = GaugeMetricFamily("cp_agent_site_limit_a",
                                  "The site connection's limit per phase (site.max_current_a)")
        limit.add_metric([], site["max_current_a"])
        headroom = GaugeMetricFamily("cp_agent_site_headroom_a",
                                     "What the other loads leave the station, per phase (A)")
        if site["headroom_a"] is not None:
            headroom.add_metric([], site["headroom_a"])
        grid = GaugeMetricFamily("cp_agent_site_grid_current_a",
                                 "The grid meter's current per phase (A), last good reading",
                                 labels=["phase"])
        for i, amps in enumerate(site["grid_current_a"] or (), start=1):
            grid.add_metric([f"L{i}"], amps)
        fallback = GaugeMetricFamily("cp_agent_site_fallback",
                                     "1 while the grid meter is silent and the site shares "
                                     "site.fallback_current_a")
        fallback.add_metric([], 1.0 if site["fallback"] else 0.0)
        yield from (limit, headroom, grid, fallback)

    def _evses(self, status: dict) -> Iterator[Metric]:
        labels = ["evse"]
        energy = CounterMetricFamily("cp_agent_evse_energy_import_wh",
                                     "Energy meter register (Wh imported)", labels=labels)
        session_energy = GaugeMetricFamily("cp_agent_evse_session_energy_wh",
                                           "Energy of the running transaction (Wh)",
                                           labels=labels)
        power = GaugeMetricFamily("cp_agent_evse_power_w", "Active power (W)", labels=labels)
        current = GaugeMetricFamily("cp_agent_evse_current_a", "Current per phase (A)",
                                    labels=["evse", "phase"])
        offered = GaugeMetricFamily("cp_agent_evse_offered_current_a",
                                    "Current offered on the pilot now (A)", labels=labels)
        limit = GaugeMetricFamily("cp_agent_evse_current_limit_a",
                                  "What the EVSE may offer, and the limit source setting it",
                                  labels=["evse", "source"])
        state = StateSetMetricFamily("cp_agent_evse_status", "Connector status (1.6 names)",
                                     labels=labels)
        pilot = StateSetMetricFamily("cp_agent_evse_pilot", "Control pilot state (IEC 61851)",
                                     labels=labels)
        contactor = GaugeMetricFamily("cp_agent_evse_contactor_closed",
                                      "1 while the contactor is closed", labels=labels)
        sessions = CounterMetricFamily("cp_agent_evse_sessions",
                                       "Transactions started since the agent started",
                                       labels=labels)
        faults = GaugeMetricFamily("cp_agent_evse_fault", "1 while this fault is active",
                                   labels=["evse", "kind"])
        composite = GaugeMetricFamily("cp_agent_evse_composite_limit_a",
                                      "The smart-charging composite schedule's limit now (A; "
                                      "the EVSE's rating without profiles)", labels=labels)
        snaps = {s.evse_id: s for s in self.agent.station.snapshots()}
        for e in status["evses"]:
            evse = str(e["evse"])
            if e["meter_wh"] is not None:
                energy.add_metric([evse], e["meter_wh"])
            session_energy.add_metric([evse], e["energy_wh"] or 0.0)
            power.add_metric([evse], e["power_w"] or 0.0)
            snap = snaps.get(e["evse"])
            if snap is not None and snap.reading is not None:
                for i, amps in enumerate(snap.reading.current_a, start=1):
                    current.add_metric([evse, f"L{i}"], amps)
            offered.add_metric([evse], e["current_limit_a"])
            limit.add_metric([evse, e["limit_source"]], e["max_current_a"])
            state.add_metric([evse], {s.value: e["status"] == s.value for s in ConnectorStatus})
            pilot.add_metric([evse], {p.value: e["pilot"] == p.value for p in PilotState})
            contactor.add_metric([evse], 1.0 if e["contactor"] == "closed" else 0.0)
            sessions.add_metric([evse], self.tracker.sessions.get(e["evse"], 0))
            active = set(e["faults"])
            for kind in FaultKind:
                faults.add_metric([evse, kind.value], 1.0 if kind.value in active else 0.0)
            amps = composite_now(self.agent, e["evse"])
            if amps is not None:
                composite.add_metric([evse], amps)
        yield from (energy, session_energy, power, current, offered, limit, state, pilot,
                    contactor, sessions, faults, composite)


def registry_for(agent: Agent, tracker: SessionTracker,
                 frames: Counter[tuple[str, str, str]]) -> CollectorRegistry:
    """A registry of this agent alone (never the process-wide default)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(AgentCollector(agent, tracker, frames))  # type: ignore[arg-type]
    return registry


def exposition(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
