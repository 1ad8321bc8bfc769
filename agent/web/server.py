"""The HTTP server of the operator's view (aiohttp): the page, its event stream, the JSON API,
the bench controls and the metrics.

Protection, in the order a request meets it:

- it listens on 127.0.0.1 unless configured otherwise, and the configuration refuses any other
  address without a credential (``agent.config.WebConfig``);
- on a loopback address the Host header must name a loopback host too, so a web page that
  rebinds its own DNS name to 127.0.0.1 cannot read the station through the visitor's browser;
- when a credential is configured every request needs it: a bearer token (``Authorization:
  Bearer`` or ``?token=``, which the page passes to its event stream) or HTTP basic auth;
- a control request must be a JSON POST from the page's own origin (a cross-site form or
  script cannot send one, with or without credentials the browser would add by itself), and
  bench controls exist only on the mock HAL;
- no response carries a secret: the configuration is scrubbed, frames are redacted by the
  frame log, URLs lose their user info.

Live updates are Server-Sent Events: one document (``view``) whenever it changes, OCPP frames
as they pass, and chart points as they are sampled.  The document is built once per change for
all clients; a client that cannot keep up is resynchronised instead of slowing the others.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import json
import logging
from collections import Counter, deque
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from aiohttp import web

from agent.config import LOOPBACK_HOSTS, parse_listen
from agent.frames import Frame
from agent.web import metrics
from agent.web.page import CONTENT_SECURITY_POLICY, PAGE
from agent.web.view import SessionTracker, build_view, public_config

if TYPE_CHECKING:
    from agent.app import Agent

log = logging.getLogger("cp_agent.web")

FRAMES_SHOWN = 100  # frames a page gets when it connects (the log keeps more)
KEEPALIVE_S = 15.0  # an SSE comment this often: proxies keep the stream, dead clients show
CLIENT_QUEUE = 1000  # messages waiting for one client; more: it is resynchronised
BENCH_COMMANDS = frozenset({"plug", "unplug", "ev", "tap", "fault", "clear-fault"})
_JSON_HEADERS = {"Cache-Control": "no-store"}


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str, ensure_ascii=False)


def _equal(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def _host_name(host: str) -> str:
    """The host part of a Host header (``[::1]:8080`` -> ``::1``, ``a:80`` -> ``a``)."""
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rpartition(":")[0] if ":" in host else host


class _Client:
    """One open event stream: its pending messages, and what wakes its writer."""

    def __init__(self) -> None:
        self.queue: deque[tuple[str, str]] = deque()
        self.wake = asyncio.Event()
        self.resync = False

    def put(self, event: str, data: str) -> None:
        if len(self.queue) >= CLIENT_QUEUE:
            self.queue.clear()
            self.resync = True  # it fell behind: start it afresh rather than lose frames
        else:
            self.queue.append((event, data))
        self.wake.set()


class WebServer:
    """Serves the page, ``/events``, ``/api/status``, ``/api/view``, ``/api/frames``,
    ``/config``, ``/api/control`` and ``/metrics`` for one agent."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.cfg = agent.cfg.web
        assert self.cfg.listen is not None
        host, self.port = parse_listen(self.cfg.listen)
        # "localhost" may resolve to two addresses, each with its own free port: pick one.
        self.host = "127.0.0.1" if host == "localhost" else host
        self.loopback = host in LOOPBACK_HOSTS
        self.url: str | None = None
        self.tracker = SessionTracker(agent)
        self.tracker.on_point = self._on_point
        self.frame_counts: Counter[tuple[str, str, str]] = Counter()
        self.registry = metrics.registry_for(agent, self.tracker, self.frame_counts)
        self._clients: set[_Client] = set()
        self._last_view: str | None = None
        self._poke_pending = False
        self._closing = False
        self._tasks: list[asyncio.Task] = []
        self._runner: web.AppRunner | None = None
        self._frames: asyncio.Queue[Frame] | None = None

    # ------------------------------------------------------------------ life cycle

    def _app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=64 * 1024)
        app.router.add_get("/", self._page)
        app.router.add_get("/events", self._events)
        app.router.add_get("/api/status", self._status)
        app.router.add_get("/api/view", self._view)
        app.router.add_get("/api/frames", self._frames_api)
        app.router.add_get("/config", self._config)
        app.router.add_post("/api/control", self._control)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def start(self) -> str:
        """Listen, follow the frame log and the core; returns the URL (port 0 resolved)."""
        self._runner = web.AppRunner(self._app(), access_log=None, shutdown_timeout=2.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port)
        await site.start()
        port = self._runner.addresses[0][1]
        shown = f"[{self.host}]" if ":" in self.host else self.host
        self.url = f"http://{shown}:{port}/"
        self._frames = self.agent.frames.follow()
        self.agent.station.traces.append(self._on_trace)
        self.agent.station.hal_events.append(self._on_hal_event)
        self._tasks.append(asyncio.create_task(self._follow_frames(), name="web-frames"))
        self._tasks.append(asyncio.create_task(self._tick(), name="web-tick"))
        return self.url

    async def stop(self) -> None:
        """Close every event stream, then the server; detach from the core and the log."""
        self._closing = True
        for client in list(self._clients):
            client.wake.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        if self._frames is not None:
            self.agent.frames.leave(self._frames)
            self._frames = None
        with contextlib.suppress(ValueError):
            self.agent.station.traces.remove(self._on_trace)
        with contextlib.suppress(ValueError):
            self.agent.station.hal_events.remove(self._on_hal_event)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # ------------------------------------------------------------------ change feed

    def _on_trace(self, evse_id: int, what: str, detail: dict) -> None:
        self._poke()

    def _on_hal_event(self, event: object) -> None:
        self._poke()

    def _poke(self) -> None:
        """Something changed: refresh once the core finished its step (coalesced)."""
        if self._poke_pending or self._closing:
            return
        self._poke_pending = True
        asyncio.get_running_loop().call_soon(self._refresh)

    def _refresh(self) -> None:
        self._poke_pending = False
        if self._closing:
            return
        try:
            self.tracker.poll()
            self._publish_view()
        except Exception:  # noqa: BLE001 - the page must never take the agent down
            log.exception("status page refresh failed")

    async def _tick(self) -> None:
        """Once a second: chart points, and the figures that change without an event
        (power, energy, duration, link state, outbox)."""
        while True:
            await self.agent.clock.sleep(self.tracker.interval)
            self._refresh()

    async def _follow_frames(self) -> None:
        assert self._frames is not None
        while True:
            frame = await self._frames.get()
            self.frame_counts[(frame.direction, frame.kind, frame.action)] += 1
            if self._clients:
                self._broadcast("frames", _dumps({"frames": [frame.as_dict()]}))
            self._poke()  # a frame may change the registration, outbox, link

    def _on_point(self, evse_id: int, session: str, point: list[float]) -> None:
        if self._clients:
            self._broadcast("sample", _dumps({"evse": evse_id, "session": session,
                                              "point": point}))

    def _publish_view(self) -> None:
        if not self._clients:
            self._last_view = None
            return
        text = _dumps(build_view(self.agent, self.tracker))
        if text != self._last_view:
            self._last_view = text
            self._broadcast("view", text)

    def _broadcast(self, event: str, data: str) -> None:
        for client in self._clients:
            client.put(event, data)

    # ------------------------------------------------------------------ protection

    def _authorized(self, request: web.Request) -> bool:
        cfg = self.cfg
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if cfg.token is not None:
            if scheme.lower() == "bearer" and _equal(value.strip(), cfg.token):
                return True
            given = request.query.get("token")
            if given is not None and _equal(given, cfg.token):
                return True
        if cfg.user is not None and cfg.password is not None and scheme.lower() == "basic":
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return False
            user, sep, password = decoded.partition(":")
            # Both compared, always: the time taken says nothing about which one was wrong.
            ok_user = _equal(user, cfg.user)
            ok_password = _equal(password, cfg.password)
            return bool(sep) and ok_user and ok_password
        return False

    def _challenge(self) -> web.Response:
        scheme = 'Basic realm="cp-agent", charset="UTF-8"' if self.cfg.user is not None \
            else 'Bearer realm="cp-agent"'
        return web.json_response({"error": "authentication required"}, status=401,
                                 headers={"WWW-Authenticate": scheme, **_JSON_HEADERS})

    @web.middleware
    async def _guard(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.loopback and _host_name(request.host) not in LOOPBACK_HOSTS:
            return web.json_response({"error": "this page answers on a loopback host only"},
                                     status=421)
        if self.cfg.credential and not self._authorized(request):
            return self._challenge()
        response = await handler(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        response.headers.setdefault("X-Frame-Options", "DENY")
        return response

    # ------------------------------------------------------------------ handlers

    async def _page(self, request: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html", charset="utf-8",
                            headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY,
                                     "Cache-Control": "no-store"})

    async def _status(self, request: web.Request) -> web.Response:
        """The same JSON as ``cp-agent ctl status --json``."""
        return web.json_response(self.agent.status(), dumps=_dumps, headers=_JSON_HEADERS)

    async def _view(self, request: web.Request) -> web.Response:
        return web.json_response(build_view(self.agent, self.tracker, samples=True),
                                 dumps=_dumps, headers=_JSON_HEADERS)

    async def _frames_api(self, request: web.Request) -> web.Response:
        try:
            limit = int(request.query.get("limit", FRAMES_SHOWN))
        except ValueError:
            return web.json_response({"error": "limit must be an integer"}, status=400)
        frames = self.agent.frames.recent(max(0, limit)) if limit > 0 else []
        return web.json_response({"frames": [f.as_dict() for f in frames]}, dumps=_dumps,
                                 headers=_JSON_HEADERS)

    async def _config(self, request: web.Request) -> web.Response:
        return web.json_response(public_config(self.agent.cfg), dumps=_dumps,
                                 headers=_JSON_HEADERS)

    async def _metrics(self, request: web.Request) -> web.Response:
        body = metrics.exposition(self.registry)
        return web.Response(body=body, headers={
            "Content-Type": "text/plain; version=0.0.4; charset=utf-8",
            "Cache-Control": "no-store"})

    async def _control(self, request: web.Request) -> web.Response:
        """A bench command, as ``cp-agent ctl`` sends it: ``{"cmd": ..., "args": {...}}``."""
        origin = request.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc != request.host:
            return web.json_response({"error": "cross-origin control request refused"},
                                     status=403)
        if request.content_type != "application/json":
            return web.json_response({"error": "send the command as application/json"},
                                     status=415)
        from hal.mock import MockHal

        if not isinstance(self.agent.hal, MockHal):
            return web.json_response({"error": "bench controls drive the mock HAL; this "
                                      "station runs on hardware (use cp-agent ctl)"},
                                     status=403)
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "the body is not JSON"}, status=400)
        if not isinstance(body, dict):
            body = {}
        cmd, args = body.get("cmd"), body.get("args") or {}
        if cmd not in BENCH_COMMANDS or not isinstance(args, dict):
            return web.json_response(
                {"error": f"unknown command {cmd!r}; expected one of "
                          f"{sorted(BENCH_COMMANDS)} with an args mapping"}, status=400)
        try:
            result = await self.agent.handle_control({"cmd": cmd, "args": args})
        except (ValueError, KeyError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        self._poke()
        return web.json_response(result, dumps=_dumps, headers=_JSON_HEADERS)

    async def _events(self, request: web.Request) -> web.StreamResponse:
        """Server-Sent Events: ``view`` (the whole document, with samples at first),
        ``frames`` (``reset`` at first) and ``sample`` (one chart point)."""
        response = web.StreamResponse(headers={
            "Content-Type": "text/event-stream", "Cache-Control": "no-store",
            "X-Accel-Buffering": "no"})
        await response.prepare(request)
        client = _Client()
        self._clients.add(client)
        try:
            client.resync = True
            while not self._closing:
                if client.resync:
                    client.resync = False
                    client.queue.clear()
                    await response.write(self._snapshot())
                    continue
                if not client.queue:
                    client.wake.clear()
                    try:
                        await asyncio.wait_for(client.wake.wait(), KEEPALIVE_S)
                    except TimeoutError:
                        await response.write(b": keep-alive\n\n")
                    continue
                chunk = "".join(f"event: {event}\ndata: {data}\n\n"
                                for event, data in client.queue)
                client.queue.clear()
                await response.write(chunk.encode("utf-8"))
        except ConnectionError:
            pass  # the page went away
        finally:
            self._clients.discard(client)
        return response

    def _snapshot(self) -> bytes:
        """Everything a page needs to draw itself from nothing."""
        view = _dumps(build_view(self.agent, self.tracker, samples=True))
        frames = _dumps({"reset": True, "frames": [
            f.as_dict() for f in self.agent.frames.recent(FRAMES_SHOWN)]})
        return f"event: view\ndata: {view}\n\nevent: frames\ndata: {frames}\n\n".encode()


async def start_web(agent: Agent) -> WebServer | None:
    """Start the operator's view; a port already taken is logged, not fatal (charging matters
    more than the page), and ``agent.web_url`` stays None."""
    server = WebServer(agent)
    try:
        url = await server.start()
    except OSError as exc:
        log.error("status page not started: cannot listen on %s: %s", agent.cfg.web.listen,
                  exc.strerror or exc)
        await server.stop()
        return None
    log.info("status page on %s", url)
    return server
