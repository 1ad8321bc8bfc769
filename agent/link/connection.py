"""The websocket link to the CSMS: connect, negotiate the version, keep alive, reconnect.

This is the one module that uses `websockets`.  Each connection offers the configured OCPP
subprotocols in order of preference; the one the CSMS agrees picks the protocol adapter.  A
CSMS that agrees none is told so and the failure is reported in plain words (a silent fallback
would hide a misconfigured backend).  Reconnects back off exponentially with full jitter so that
a fleet coming back after a backend outage does not stampede it.

Where to connect and how (URL, basic auth header, TLS context, versions to offer) is not read
from the configuration here: every attempt asks a connection-profile provider
(:mod:`agent.link.profiles`) and reports back how the attempt ended, so that a password or
network profile the CSMS sets applies from the next attempt and a provider can fall back.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.proxy import get_proxy
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from agent.clock import Clock
from agent.config import OcppConfig
from agent.cycles import drop_tracebacks
from agent.link.profiles import (
    CREDENTIALS_REFUSED,
    STATION_CERTIFICATE_REFUSED,
    ConfigProfile,
    ConnectionProfile,
    ProfileProvider,
    legacy_tls_version,
)
from agent.link.rpc import RpcSession

log = logging.getLogger("cp_agent.link")

# TLS failures the station reports as security events (1.6 whitepaper / 2.0.1 A00): the kind
# names are 2.0.1's (the 1.6 delivery maps InvalidCsmsCertificate to its own spelling).
_TLS_VERSION_REASONS = frozenset({"UNSUPPORTED_PROTOCOL", "TLSV1_ALERT_PROTOCOL_VERSION",
                                  "NO_PROTOCOLS_AVAILABLE", "WRONG_SSL_VERSION"})
_TLS_CIPHER_REASONS = frozenset({"NO_CIPHERS_AVAILABLE", "NO_SHARED_CIPHER",
                                 "NO_SUITABLE_SIGNATURE_ALGORITHM"})


# The proxy for each CSMS URL (websockets' own lookup: *_proxy / no_proxy environment
# variables), asked once per process: the lookup walks the whole environment twice, and a
# swarm connects thousands of stations to one URL. The environment does not change under a
# running agent.
_PROXIES: dict[tuple[str, int, bool], str | None] = {}


def _proxy(url: str) -> str | None:
    uri = parse_uri(url)
    key = (uri.host, uri.port, uri.secure)
    if key not in _PROXIES:
        _PROXIES[key] = get_proxy(uri)
    return _PROXIES[key]


class Adapter(Protocol):
    version: str
    subprotocol: str
    handlers: dict

    async def run_session(self, rpc: RpcSession) -> None: ...


class LinkError(Exception):
    """A connection attempt failed for a reason worth telling the operator as such."""


def describe(exc: BaseException) -> str:
    """A failed attempt in plain words: a LinkError says it itself, others by their type."""
    if isinstance(exc, LinkError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _hint(profile: ConnectionProfile, what: str) -> str:
    """Where the operator fixes ``what``: the YAML keys, or the profile that came from the CSMS."""
    if profile.name == ConfigProfile.name:
        return {"credentials": "ocpp.password and ocpp.security_profile",
                "url": "station.id and ocpp.url", "versions": "ocpp.versions"}[what]
    if what == "url":
        return f"station.id and the URL of connection profile {profile.name!r}"
    return f"the {what} of connection profile {profile.name!r}"


class Link:
    """Keeps one connection to the CSMS alive and runs the negotiated adapter on it.

    Where to connect and how comes from ``profiles`` (by default the ``ocpp:`` configuration),
    asked afresh at every attempt and told how each attempt ended.
    """

    def __init__(self, cfg: OcppConfig, station_id: str, adapters: dict[str, Adapter], *,
                 clock: Clock, ping_interval: Callable[[], float] = lambda: 60.0,
                 on_version: Callable[[Adapter], None] | None = None,
                 on_frame: Callable[[str, str, str, str, dict], None] | None = None,
                 rng: random.Random | None = None,
                 profiles: ProfileProvider | None = None,
                 on_security_event: Callable[[str, str], None] | None = None) -> None:
        self.cfg = cfg  # backoff and call timeout; the rest comes from the profiles
        self.station_id = station_id
        self.adapters = adapters
        self.clock = clock
        self.ping_interval = ping_interval
        self.on_version = on_version
        self.on_frame = on_frame
        self.rng = rng or random.Random()
        self.profiles: ProfileProvider = (
            profiles if profiles is not None else ConfigProfile(cfg, station_id))
        # (kind, info) of a TLS failure worth a security event (InvalidCsmsCertificate, ...);
        # the composition root hands it to the station's security event bus.
        self.on_security_event = on_security_event
        self.profile: ConnectionProfile | None = None  # of the latest attempt
        self.state = "disconnected"
        self.version: str | None = None
        self.last_error: str | None = None
        self.connected_since: str | None = None  # station time of the current connection
        self.connected = asyncio.Event()
        self.failed = asyncio.Event()  # set at every failed attempt; observers clear it
        self.connects = 0
        self._ws: ClientConnection | None = None
        self._attempt = 0
        self._fallback_used = False  # the latest handshake verified with the fallback root

    @property
    def url(self) -> str:
        """The URL of the latest attempt; before the first, the one the provider offers."""
        profile = self.profile
        return profile.url if profile is not None else self.profiles.current().url

    def backoff(self, attempt: int) -> float:
        """Full-jitter exponential backoff: uniform in [min, min * 2^attempt], capped."""
        lo, hi = self.cfg.reconnect.min_backoff_s, self.cfg.reconnect.max_backoff_s
        ceiling = min(hi, lo * (2 ** min(attempt, 30)))
        return lo + self.rng.random() * max(0.0, ceiling - lo)

    async def run(self) -> None:
        """Connect forever (until cancelled)."""
        while True:
            try:
                await self.connect_once()
                self._attempt = 0 if self.connects else self._attempt
            except asyncio.CancelledError:
                raise
            except LinkError as exc:
                self.last_error = describe(exc)
                self.failed.set()
                log.error("%s", exc)
            except (OSError, InvalidHandshake, ConnectionClosed, TimeoutError) as exc:
                self.last_error = describe(exc)
                self.failed.set()
                log.warning("connection to %s failed: %s", self.url, self.last_error)
            self.state = "disconnected"
            self.connected.clear()
            delay = self.backoff(self._attempt)
            self._attempt += 1
            log.info("reconnecting in %.1f s", delay)
            await self.clock.sleep(delay)

    def _tell(self, callback: Callable[..., None], *args: Any) -> None:
        """Report to the provider; its bookkeeping failing must not stop the reconnects."""
        try:
            callback(*args)
        except Exception:  # noqa: BLE001 - logged with its traceback
            log.exception("connection profile provider failed in %s",
                          getattr(callback, "__name__", callback))

    async def connect_once(self) -> None:
        """One connection: handshake, run the adapter until the link drops."""
        profile = self.profiles.current()
        self.profile = profile
        self.state = "connecting"
        try:
            ws, version, adapter = await self._open(profile)
        except asyncio.CancelledError:
            raise
        except (LinkError, OSError, InvalidHandshake, ConnectionClosed, TimeoutError) as exc:
            self._tell(self.profiles.failed, profile, describe(exc))
            raise
        self._ws = ws
        self.version = version
        self.state = "connected"
        self.connects += 1
        self._attempt = 0
        self.connected_since = self.clock.stamp()  # resolved when shown (no RTC: a marker)
        self.connected.set()
        self.last_error = None
        log.info("connected to %s with OCPP %s", profile.url, version)
        self._tell(self.profiles.connected, profile)
        if profile.tls_verified is not None:
            self._tell(profile.tls_verified, self._fallback_used)
        if self.on_version is not None:
            self.on_version(adapter)
        rpc = RpcSession(version, ws.send, adapter.handlers,
                         default_timeout=self.cfg.call_timeout_s, on_frame=self.on_frame,
                         on_invalid=lambda what: self._security_event("InvalidMessages", what))
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
            self.connected_since = None
            self.connected.clear()
            await ws.close()
            # websockets keeps what ended the connection (the PayloadTooBig of a frame over
            # max_size, the EOFError of a dropped TCP connection) on the protocol and the
            # connection; its traceback runs back to them, and the cycle would hold the dead
            # connection and its receive buffer (up to max_size) until a full collection.
            for exc in (ws.protocol.parser_exc, ws.connection_exc):
                if exc is not None:
                    drop_tracebacks(exc)
        log.warning("connection to %s closed (%s)", profile.url,
                    ws.close_reason or ws.close_code or "no reason")

    async def _open(self, profile: ConnectionProfile) -> tuple[ClientConnection, str, Adapter]:
        """Handshake with ``profile`` and check the agreed version: the attempt proper."""
        url = profile.url
        unknown = [v for v in profile.versions if v not in self.adapters]
        if not profile.versions or unknown:
            raise LinkError(f"connection profile {profile.name!r} offers no OCPP version this "
                            f"agent knows ({', '.join(unknown) or 'none'}); "
                            f"check {_hint(profile, 'versions')}")
        by_subprotocol = {self.adapters[v].subprotocol: v for v in profile.versions}
        offered = [Subprotocol(sp) for sp in by_subprotocol]
        ping = self.ping_interval()
        kwargs: dict[str, Any] = {
            "subprotocols": offered,
            "additional_headers": dict(profile.headers),
            "open_timeout": 15,
            "ping_interval": ping if ping > 0 else None,
            "ping_timeout": max(5.0, min(ping, 30.0)) if ping > 0 else None,
            "max_size": 1 << 20,
            "close_timeout": 5,
            # permessage-deflate (websockets' default, ocpp.compression) or none: see
            # OcppConfig.compression for what each costs and saves.
            "compression": "deflate" if self.cfg.compression else None,
        }
        if profile.problem is not None:
            raise LinkError(f"connection profile {profile.name!r} not used: {profile.problem}")
        if url.startswith("wss://") != (profile.ssl is not None):
            raise LinkError(f"connection profile {profile.name!r}: a wss:// URL needs a TLS "
                            f"context and a ws:// URL must not have one ({url})")
        if profile.ssl is not None:
            kwargs["ssl"] = profile.ssl
        try:
            kwargs["proxy"] = _proxy(url)
            ws = await self._handshake(url, kwargs, profile)
        except ssl.SSLCertVerificationError as exc:
            why = ": ".join(x for x in (exc.reason, exc.verify_message) if x) or str(exc)
            self._security_event("InvalidCsmsCertificate", f"{url}: {why}")
            raise LinkError(f"CSMS at {url} presented a certificate this station does not "
                            f"accept ({why}); not connected. Check the CSMS root certificates "
                            f"(ocpp.ca_file or the installed CSMSRootCertificate) and the "
                            f"host name in the URL") from None
        except ssl.SSLError as exc:
            raise await self._tls_failure(profile, exc) from None
        except (ConnectionResetError, ConnectionAbortedError, EOFError) as exc:
            if profile.ssl is None:
                raise
            raise await self._tls_failure(profile, exc) from None
        except InvalidStatus as exc:
            code = exc.response.status_code
            if code in (401, 403):
                self._security_event("FailedToAuthenticateAtCsms", f"{url}: HTTP {code}")
                raise LinkError(f"CSMS at {url} {CREDENTIALS_REFUSED} (HTTP {code}): "
                                f"check {_hint(profile, 'credentials')}") from None
            if code == 404:
                raise LinkError(f"CSMS at {url} does not know this station "
                                f"(HTTP 404): check {_hint(profile, 'url')}") from None
            raise LinkError(f"CSMS at {url} refused the websocket (HTTP {code})") from None
        except InvalidHandshake as exc:
            cause = exc.__cause__
            if profile.ssl is not None and isinstance(cause, ssl.SSLError):
                raise await self._tls_failure(profile, cause) from None
            if profile.security_profile == 3 and profile.ssl is not None:
                raise LinkError(f"CSMS at {url} closed the connection during the handshake "
                                f"({exc}); with security profile 3 it "
                                f"{STATION_CERTIFICATE_REFUSED}: check that the CSMS trusts "
                                f"its issuer") from None
            raise LinkError(f"websocket handshake with {url} failed: {exc}") from None
        except InvalidURI as exc:
            raise LinkError(f"connection profile {profile.name!r}: {exc}") from None
        agreed = ws.subprotocol
        version = by_subprotocol.get(agreed or "")
        if version is None:
            await ws.close(code=1002, reason="no agreed OCPP subprotocol")
            raise LinkError(
                f"CSMS at {url} agreed none of the offered OCPP versions "
                f"({', '.join(offered)}); it answered {agreed!r}. "
                f"Check {_hint(profile, 'versions')}.")
        return ws, version, self.adapters[version]

    async def _handshake(self, url: str, kwargs: dict[str, Any],
                         profile: ConnectionProfile) -> ClientConnection:
        """The websocket handshake; with a fallback root (M05.FR.13/14 of 2.0.1, 12/13 of the
        1.6 whitepaper) the new CSMS root alone first, then the bundle with the old one."""
        self._fallback_used = False
        try:
            return await connect(url, **kwargs)
        except ssl.SSLCertVerificationError as exc:
            if profile.ssl_fallback is None:
                raise
            log.warning("the CSMS certificate at %s does not verify with the new CSMS root "
                        "(%s); trying the fallback root", url, exc.verify_message or exc)
        ws = await connect(url, **{**kwargs, "ssl": profile.ssl_fallback})
        self._fallback_used = True
        return ws

    def _security_event(self, kind: str, info: str) -> None:
        if self.on_security_event is None:
            return
        try:
            self.on_security_event(kind, info[:255])
        except Exception:  # noqa: BLE001 - the refusal itself must still happen
            log.exception("security event %s could not be recorded", kind)

    async def _tls_failure(self, profile: ConnectionProfile, exc: BaseException) -> LinkError:
        """A TLS handshake that failed: the reason in plain words, a security event where the
        spec names one (InvalidTLSVersion, InvalidTLSCipherSuite).  Never a retry with less
        security: the caller refuses the attempt."""
        url = profile.url
        reason = getattr(exc, "reason", None) or ""
        if reason in _TLS_VERSION_REASONS:
            self._security_event("InvalidTLSVersion", f"{url}: {reason}")
            return LinkError(f"CSMS at {url} offers no TLS version this station accepts (1.2 "
                             f"or newer): {reason}; not connected")
        if reason in _TLS_CIPHER_REASONS:
            self._security_event("InvalidTLSCipherSuite", f"{url}: {reason}")
            return LinkError(f"CSMS at {url} offers none of the allowed TLS cipher suites "
                             f"({reason}); not connected")
        if not reason:
            # An old server drops a TLS 1.2+ ClientHello without an alert: ask it what it
            # speaks (a bare handshake, nothing sent) to tell the operator why.
            parts = urlsplit(url)
            legacy = await legacy_tls_version(parts.hostname or "", parts.port or 443)
            if legacy is not None:
                self._security_event("InvalidTLSVersion", f"{url}: the CSMS only offers "
                                                          f"{legacy}")
                return LinkError(f"CSMS at {url} only speaks {legacy}; this station needs "
                                 f"TLS 1.2 or newer; not connected")
            if profile.security_profile == 3:
                return LinkError(f"TLS handshake with {url} failed: the CSMS closed the "
                                 f"connection ({type(exc).__name__}); with security profile 3 "
                                 f"it {STATION_CERTIFICATE_REFUSED}")
            return LinkError(f"TLS handshake with {url} failed: the CSMS closed the "
                             f"connection ({type(exc).__name__})")
        if profile.security_profile == 3 and ("CERTIFICATE" in reason or "ALERT" in reason):
            return LinkError(f"CSMS at {url} refused the TLS handshake ({reason}); with "
                             f"security profile 3 it {STATION_CERTIFICATE_REFUSED}: check "
                             f"that it trusts the station certificate's issuer")
        return LinkError(f"TLS handshake with {url} failed: {reason}")

    async def reconnect(self, reason: str) -> None:
        """Close the connection so that the next attempt uses what changed (a new password,
        a higher security profile); queued messages stay in the outbox."""
        ws = self._ws
        if ws is not None:
            log.info("reconnecting: %s", reason)
            await ws.close(code=1000, reason=reason[:100])

    async def close(self) -> None:
        ws = self._ws
        if ws is not None:
            await ws.close(code=1001, reason="station shutting down")


__all__ = ["ConfigProfile", "ConnectionProfile", "Link", "LinkError", "ProfileProvider",
           "describe", "websockets"]
