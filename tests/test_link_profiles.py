"""Connection profiles: the link asks a provider where and how to connect at every attempt.

Real websockets on 127.0.0.1; reconnect backoff runs on a fake clock that the tests advance,
so nothing here sleeps for real.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request

from agent.clock import FakeClock
from agent.config import OcppConfig, ReconnectConfig
from agent.link.connection import Link, LinkError
from agent.link.profiles import ConfigProfile, ConnectionProfile, client_tls_context
from agent.testing.csms import TestCsms


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


class SteppedClock(FakeClock):
    """A fake clock that says when the link starts a backoff sleep."""

    def __init__(self) -> None:
        super().__init__()
        self.sleeps: list[float] = []
        self.asleep = asyncio.Event()

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.asleep.set()
        await super().sleep(seconds)

    async def next_backoff(self, cfg: OcppConfig) -> None:
        """Wait until the link sleeps before a reconnect, then let that sleep end."""
        await asyncio.wait_for(self.asleep.wait(), 5)
        self.asleep.clear()
        await self.advance(cfg.reconnect.max_backoff_s)


class StubAdapter:
    """Agrees to run on any connection and does nothing until the link drops."""

    version = "1.6"
    subprotocol = "ocpp1.6"

    def __init__(self) -> None:
        self.handlers: dict = {}
        self.sessions = 0
        self.started = asyncio.Event()

    async def run_session(self, rpc: Any) -> None:
        self.sessions += 1
        self.started.set()
        await asyncio.Event().wait()


@dataclass
class Recorder:
    """A provider wrapper (or a provider of fixed profiles) that records every call."""

    profiles: list[ConnectionProfile] = field(default_factory=list)
    inner: Any = None
    served: list[ConnectionProfile] = field(default_factory=list)
    failures: list[tuple[ConnectionProfile, str]] = field(default_factory=list)
    successes: list[ConnectionProfile] = field(default_factory=list)
    reported: asyncio.Event = field(default_factory=asyncio.Event)
    index: int = 0

    def current(self) -> ConnectionProfile:
        profile = self.inner.current() if self.inner is not None else self.profiles[self.index]
        self.served.append(profile)
        return profile

    def connected(self, profile: ConnectionProfile) -> None:
        self.successes.append(profile)
        self.reported.set()

    def failed(self, profile: ConnectionProfile, error: str) -> None:
        self.failures.append((profile, error))
        self.index = min(self.index + 1, max(0, len(self.profiles) - 1))  # next one, if any
        self.reported.set()


@dataclass
class Csms:
    """A plain websocket server on 127.0.0.1 that records each handshake."""

    port: int = 0
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    connections: list[ServerConnection] = field(default_factory=list)
    opened: asyncio.Event = field(default_factory=asyncio.Event)

    def base(self, path: str = "/") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"


@contextlib.asynccontextmanager
async def csms(check: Callable[[str, str | None], HTTPStatus | None] = lambda p, a: None,
               subprotocols: tuple[str, ...] = ("ocpp1.6",)) -> AsyncIterator[Csms]:
    state = Csms()

    def process_request(connection: ServerConnection, request: Request) -> Any:
        auth = request.headers.get("Authorization")
        state.requests.append((request.path, auth))
        refusal = check(request.path, auth)
        return None if refusal is None else connection.respond(refusal, f"{refusal.phrase}\n")

    async def handler(ws: ServerConnection) -> None:
        state.connections.append(ws)
        state.opened.set()
        await ws.wait_closed()

    offered: Any = list(subprotocols) or None  # None: the server agrees no subprotocol
    async with serve(handler, "127.0.0.1", 0, subprotocols=offered,
                     process_request=process_request) as server:
        state.port = server.sockets[0].getsockname()[1]
        yield state


def _cfg(url: str, **kw: Any) -> OcppConfig:
    return OcppConfig(url=url, reconnect=ReconnectConfig(min_backoff_s=0.05, max_backoff_s=0.2),
                      call_timeout_s=5, **kw)


@contextlib.asynccontextmanager
async def running(link: Link) -> AsyncIterator[asyncio.Task]:
    task = asyncio.create_task(link.run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


# ---------------------------------------------------------------- the provider is asked each time


async def test_a_changed_profile_is_used_at_the_next_attempt():
    def check(path: str, auth: str | None) -> HTTPStatus | None:
        ok = path == "/new/CP1" and auth == _basic("CP1", "new secret")
        return None if ok else HTTPStatus.UNAUTHORIZED

    async with csms(check) as server:
        old = ConnectionProfile("slot 1", server.base("/old/CP1"), ("1.6",), 1,
                                {"Authorization": _basic("CP1", "old secret")})
        new = ConnectionProfile("slot 2", server.base("/new/CP1"), ("1.6",), 1,
                                {"Authorization": _basic("CP1", "new secret")})
        provider = Recorder(profiles=[old, new])
        cfg, clock, adapter = _cfg(server.base()), SteppedClock(), StubAdapter()
        link = Link(cfg, "CP1", {"1.6": adapter}, clock=clock, profiles=provider)
        async with running(link):
            await clock.next_backoff(cfg)  # the first attempt was refused
            await asyncio.wait_for(adapter.started.wait(), 5)
            assert server.requests == [("/old/CP1", _basic("CP1", "old secret")),
                                       ("/new/CP1", _basic("CP1", "new secret"))]
            assert provider.served == [old, new]
            assert link.url == new.url and link.profile is new
            assert link.state == "connected" and link.version == "1.6" and link.connects == 1
            assert link.last_error is None


# ---------------------------------------------------------------- how each attempt ended


async def test_failed_names_the_cause_and_connected_follows_success(short_dir):
    server = TestCsms(passwords={"CP1": "the right one"})
    url = await server.start()
    cfg = _cfg(url, security_profile=1, password="a wrong one")
    provider = Recorder(inner=ConfigProfile(cfg, "CP1"))
    adapter = StubAdapter()
    link = Link(cfg, "CP1", {"1.6": adapter}, clock=SteppedClock(), profiles=provider)
    try:
        with pytest.raises(LinkError, match="HTTP 401"):
            await link.connect_once()
        [(profile, error)] = provider.failures
        assert profile is provider.served[0] and profile.name == "config"
        assert "refused the credentials (HTTP 401)" in error and "ocpp.password" in error
        assert provider.successes == []

        cfg.password = "the right one"  # the default getter reads the config at each attempt
        provider.reported.clear()
        session = asyncio.create_task(link.connect_once())
        await asyncio.wait_for(provider.reported.wait(), 5)
        await asyncio.wait_for(adapter.started.wait(), 5)
        assert provider.successes == [provider.served[1]] and len(provider.failures) == 1
        assert link.connected.is_set() and link.profile is provider.served[1]
        await link.close()
        await asyncio.wait_for(session, 5)
        assert len(provider.failures) == 1, "a connection that ends is not a failed attempt"
    finally:
        await server.stop()


async def test_failed_is_told_of_refused_tcp_and_of_no_agreed_version():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = _cfg(f"ws://127.0.0.1:{port}/ocpp")
    provider = Recorder(inner=ConfigProfile(cfg, "CP1"))
    link = Link(cfg, "CP1", {"1.6": StubAdapter()}, clock=SteppedClock(), profiles=provider)
    with pytest.raises(OSError):
        await link.connect_once()
    assert provider.failures[-1][0].url == f"ws://127.0.0.1:{port}/ocpp/CP1"
    assert "ConnectionRefusedError" in provider.failures[-1][1]

    async with csms(subprotocols=()) as server:  # agrees no version at all
        cfg.url = server.base("/ocpp")
        with pytest.raises(LinkError):
            await link.connect_once()
        assert "agreed none of the offered OCPP versions" in provider.failures[-1][1]
    assert provider.successes == [] and len(provider.failures) == 2


async def test_failed_attempts_in_the_run_loop_reach_the_provider_and_last_error():
    async with csms(lambda path, auth: HTTPStatus.NOT_FOUND) as server:
        cfg, clock = _cfg(server.base("/ocpp")), SteppedClock()
        provider = Recorder(inner=ConfigProfile(cfg, "CP9"))
        link = Link(cfg, "CP9", {"1.6": StubAdapter()}, clock=clock, profiles=provider)
        async with running(link):
            await asyncio.wait_for(link.failed.wait(), 5)
            await clock.next_backoff(cfg)
            await clock.next_backoff(cfg)
            assert [p for p, _ in server.requests] == ["/ocpp/CP9"] * 3
            assert len(provider.failures) >= 2
            assert all("HTTP 404" in error for _, error in provider.failures)
            assert link.last_error == provider.failures[0][1]
            assert provider.successes == [] and link.state != "connected"


# ---------------------------------------------------------------- the password getter


async def test_password_getter_changes_the_header_at_the_next_connection():
    async with csms() as server:
        cfg = _cfg(server.base("/ocpp/"), security_profile=1, password="from the yaml")
        secret = {"value": "first"}
        provider = ConfigProfile(cfg, "CP1", password=lambda: secret["value"])
        clock, adapter = SteppedClock(), StubAdapter()
        link = Link(cfg, "CP1", {"1.6": adapter}, clock=clock, profiles=provider)
        async with running(link):
            await asyncio.wait_for(server.opened.wait(), 5)
            await asyncio.wait_for(adapter.started.wait(), 5)
            secret["value"] = "second"  # e.g. the CSMS set BasicAuthPassword
            server.opened.clear()
            await server.connections[0].close()  # the link drops and reconnects
            await clock.next_backoff(cfg)
            await asyncio.wait_for(server.opened.wait(), 5)
        assert server.requests == [("/ocpp/CP1", _basic("CP1", "first")),
                                   ("/ocpp/CP1", _basic("CP1", "second"))]
        assert cfg.password == "from the yaml"


# ---------------------------------------------------------------- ConfigProfile itself


def test_config_profile_is_todays_behaviour():
    cfg = OcppConfig(url="ws://csms.example/ocpp/", versions=["2.0.1", "1.6"],
                     password="pw", security_profile=1)
    provider = ConfigProfile(cfg, "CP1")
    profile = provider.current()
    assert profile.name == "config" and profile.url == "ws://csms.example/ocpp/CP1"
    assert profile.versions == ("2.0.1", "1.6") and profile.security_profile == 1
    assert profile.headers == {"Authorization": _basic("CP1", "pw")} and profile.ssl is None

    cfg.password = "set later"  # app.py does this when the CSMS changes the password
    assert provider.current().headers == {"Authorization": _basic("CP1", "set later")}

    cfg.security_profile = 0  # no basic auth, even with a password
    assert provider.current().headers == {}
    cfg.security_profile, cfg.password = 1, None
    assert provider.current().headers == {}

    cfg.url, cfg.security_profile, cfg.password = "wss://csms.example/ocpp", 2, "pw"
    tls = provider.current()
    assert tls.headers == {"Authorization": _basic("CP1", "pw")}
    assert isinstance(tls.ssl, ssl.SSLContext)
    assert tls.ssl.minimum_version == ssl.TLSVersion.TLSv1_2
    assert tls.ssl.check_hostname and tls.ssl.verify_mode == ssl.CERT_REQUIRED
    assert provider.current().ssl is not tls.ssl, "a fresh context per attempt"

    cfg.security_profile = 3  # client certificates: no basic auth
    assert provider.current().headers == {}


def test_client_tls_context_checks_the_server():
    context = client_tls_context(None)
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED


def test_link_defaults_to_the_config_profile():
    cfg = OcppConfig(url="ws://127.0.0.1:1/ocpp")
    link = Link(cfg, "CP1", {}, clock=None)  # type: ignore[arg-type]
    assert isinstance(link.profiles, ConfigProfile)
    assert link.url == "ws://127.0.0.1:1/ocpp/CP1"
