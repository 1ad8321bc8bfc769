"""The websocket link to the CSMS: connect, negotiate the version, keep alive, reconnect.

This is the one module that uses `websockets`.  Each connection offers the configured OCPP
subprotocols in order of preference; the one the CSMS agrees picks the protocol adapter.  A
CSMS that agrees none is told so and the failure is reported in plain words (a silent fallback
would hide a misconfigured backend).  Reconnects back off exponentially with full jitter so that
a fleet coming back after a backend outage does not stampede it.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import random
import ssl
from collections.abc import Callable
from typing import Any, Protocol

import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.typing import Subprotocol

from agent.clock import Clock
from agent.config import OcppConfig
from agent.link.rpc import RpcSession

log = logging.getLogger("cp_agent.link")

SUBPROTOCOLS = {"1.6": "ocpp1.6", "2.0.1": "ocpp2.0.1", "2.1": "ocpp2.1"}


class Adapter(Protocol):
    version: str
    handlers: dict

    async def run_session(self, rpc: RpcSession) -> None: ...


class LinkError(Exception):
    """A connection attempt failed for a reason worth telling the operator as such."""


class Link:
    """Keeps one connection to the CSMS alive and runs the negotiated adapter on it."""

    def __init__(self, cfg: OcppConfig, station_id: str, adapters: dict[str, Adapter], *,
                 clock: Clock, ping_interval: Callable[[], float] = lambda: 60.0,
                 on_version: Callable[[Adapter], None] | None = None,
                 on_frame: Callable[[str, str, str, str, dict], None] | None = None,
                 rng: random.Random | None = None) -> None:
        self.cfg = cfg
        self.station_id = station_id
        self.adapters = adapters
        self.clock = clock
        self.ping_interval = ping_interval
        self.on_version = on_version
        self.on_frame = on_frame
        self.rng = rng or random.Random()
        self.state = "disconnected"
        self.version: str | None = None
        self.last_error: str | None = None
        self.connected = asyncio.Event()
        self.failed = asyncio.Event()  # set at every failed attempt; observers clear it
        self.connects = 0
        self._ws: ClientConnection | None = None
        self._attempt = 0

    @property
    def url(self) -> str:
        return self.cfg.url.rstrip("/") + "/" + self.station_id

    def backoff(self, attempt: int) -> float:
        """Full-jitter exponential backoff: uniform in [min, min * 2^attempt], capped."""
        lo, hi = self.cfg.reconnect.min_backoff_s, self.cfg.reconnect.max_backoff_s
        ceiling = min(hi, lo * (2 ** min(attempt, 30)))
        return lo + self.rng.random() * max(0.0, ceiling - lo)

    def _headers(self) -> dict[str, str]:
        headers: dict[str, str] = {}
        if self.cfg.security_profile in (1, 2) and self.cfg.password:
            raw = f"{self.station_id}:{self.cfg.password}".encode()
            headers["Authorization"] = "Basic " + base64.b64encode(raw).decode("ascii")
        return headers

    async def run(self) -> None:
        """Connect forever (until cancelled)."""
        while True:
            try:
                await self.connect_once()
                self._attempt = 0 if self.connects else self._attempt
            except asyncio.CancelledError:
                raise
            except LinkError as exc:
                self.last_error = str(exc)
                self.failed.set()
                log.error("%s", exc)
            except (OSError, InvalidHandshake, ConnectionClosed, TimeoutError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                self.failed.set()
                log.warning("connection to %s failed: %s", self.url, self.last_error)
            self.state = "disconnected"
            self.connected.clear()
            delay = self.backoff(self._attempt)
            self._attempt += 1
            log.info("reconnecting in %.1f s", delay)
            await self.clock.sleep(delay)

    async def connect_once(self) -> None:
        """One connection: handshake, run the adapter until the link drops."""
        offered = [Subprotocol(SUBPROTOCOLS[v]) for v in self.cfg.versions]
        ping = self.ping_interval()
        kwargs: dict[str, Any] = {
            "subprotocols": offered,
            "additional_headers": self._headers(),
            "open_timeout": 15,
            "ping_interval": ping if ping > 0 else None,
            "ping_timeout": max(5.0, min(ping, 30.0)) if ping > 0 else None,
            "max_size": 1 << 20,
            "close_timeout": 5,
        }
        if self.url.startswith("wss://"):
            # Security profile 2: TLS with the server certificate checked against the system
            # CAs or the operator's own (ocpp.ca_file), hostname included; TLS 1.2 at least.
            context = ssl.create_default_context(cafile=self.cfg.ca_file)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            kwargs["ssl"] = context
        self.state = "connecting"
        try:
            ws = await connect(self.url, **kwargs)
        except InvalidStatus as exc:
            code = exc.response.status_code
            if code in (401, 403):
                raise LinkError(f"CSMS at {self.url} refused the credentials (HTTP {code}): "
                                f"check ocpp.password and ocpp.security_profile") from None
            if code == 404:
                raise LinkError(f"CSMS at {self.url} does not know this station "
                                f"(HTTP 404): check station.id and ocpp.url") from None
            raise LinkError(f"CSMS at {self.url} refused the websocket (HTTP {code})") from None
        except InvalidHandshake as exc:
            raise LinkError(f"websocket handshake with {self.url} failed: {exc}") from None
        agreed = ws.subprotocol
        version = next((v for v, sp in SUBPROTOCOLS.items() if sp == agreed), None)
        if version is None or version not in self.cfg.versions:
            await ws.close(code=1002, reason="no agreed OCPP subprotocol")
            raise LinkError(
                f"CSMS at {self.url} agreed none of the offered OCPP versions "
                f"({', '.join(offered)}); it answered {agreed!r}. Check ocpp.versions.")
        adapter = self.adapters.get(version)
        if adapter is None:
            await ws.close(code=1002, reason=f"OCPP {version} is not implemented")
            raise LinkError(f"CSMS at {self.url} agreed OCPP {version}, which this agent "
                            f"offers but does not implement yet. Remove it from "
                            f"ocpp.versions.")
        self._ws = ws
        self.version = version
        self.state = "connected"
        self.connects += 1
        self._attempt = 0
        self.connected.set()
        self.last_error = None
        log.info("connected to %s with OCPP %s", self.url, version)
        if self.on_version is not None:
            self.on_version(adapter)
        rpc = RpcSession(version, ws.send, adapter.handlers,
                         default_timeout=self.cfg.call_timeout_s, on_frame=self.on_frame)
        session = asyncio.ensure_future(adapter.run_session(rpc))
        try:
            async for message in ws:
                if isinstance(message, bytes):
                    try:
                        message = message.decode("utf-8")
                    except UnicodeDecodeError:
                        log.warning("binary frame that is not UTF-8 text: ignored")
                        continue
                await rpc.feed(message)
                if session.done():
                    break
        except ConnectionClosed:
            pass
        finally:
            rpc.close()
            session.cancel()
            await asyncio.gather(session, return_exceptions=True)
            if session.done() and not session.cancelled() and session.exception():
                log.error("protocol session failed", exc_info=session.exception())
            self._ws = None
            self.connected.clear()
            await ws.close()
        log.warning("connection to %s closed (%s)", self.url,
                    ws.close_reason or ws.close_code or "no reason")

    async def close(self) -> None:
        ws = self._ws
        if ws is not None:
            await ws.close(code=1001, reason="station shutting down")


__all__ = ["Link", "LinkError", "SUBPROTOCOLS", "websockets"]
