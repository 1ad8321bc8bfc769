"""The operator's view: a local status page, ``/api/status`` and ``/metrics``, in the agent.

A technician at a charger, or a developer at a bench, wants to see what the station is doing
without a terminal: per EVSE the pilot, contactor, status, offered current and session, the
link to the CSMS, the last OCPP frames, and (on the mock HAL) buttons that play the EV and
the driver.  Prometheus wants the same figures as metrics.

This package is imported only when ``web.listen`` is configured (see ``Agent.start``): a
station without the page never loads aiohttp or prometheus-client.  It reads the agent
through its public, read-only surface (``status()``, snapshots, the frame log) and acts only
through ``handle_control``, exactly like ``cp-agent ctl``.
"""

from __future__ import annotations

from agent.web.server import WebServer, start_web

__all__ = ["WebServer", "start_web"]
