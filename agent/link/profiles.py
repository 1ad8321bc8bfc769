"""Connection profiles: where the link connects, with which credentials, TLS and versions.

The link does not read the configuration itself.  At every connection attempt it asks a
:class:`ProfileProvider` for the :class:`ConnectionProfile` to use (URL, HTTP headers such as
basic auth, TLS context, OCPP versions to offer) and tells the provider how that attempt ended.
That is the seam for what changes connection settings at run time: a password the CSMS sets
(1.6 AuthorizationKey, 2.0.1 BasicAuthPassword), network profiles in priority order with a
fallback to the previous one (2.0.1 SetNetworkProfile), security profile upgrades, client
certificates from the certificate store (security profile 3).

:class:`ConfigProfile` is the provider of today's behaviour: one profile built from
``ocpp:`` in the YAML configuration.
"""

from __future__ import annotations

import base64
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from ssl import SSLContext
from typing import Protocol

from agent.config import OcppConfig


@dataclass(frozen=True)
class ConnectionProfile:
    """Everything one connection attempt needs; built afresh for every attempt."""

    name: str  # for messages: "config", later e.g. "slot 1"
    url: str  # the full URL, station id included
    versions: tuple[str, ...]  # OCPP versions offered, in order of preference
    security_profile: int = 0
    headers: dict[str, str] = field(default_factory=dict)  # e.g. Authorization
    ssl: SSLContext | None = None  # None: no TLS (ws://)


class ProfileProvider(Protocol):
    """Chooses the profile of each connection attempt and learns how each attempt ended."""

    def current(self) -> ConnectionProfile:
        """The profile for the attempt starting now.

        The link calls it once per attempt (``Link.url`` also calls it before the first
        attempt), so switch to another profile in :meth:`failed`, not here.
        """
        ...

    def connected(self, profile: ConnectionProfile) -> None:
        """An attempt with ``profile`` succeeded: a version was agreed, the session runs."""
        ...

    def failed(self, profile: ConnectionProfile, error: str) -> None:
        """An attempt with ``profile`` failed; ``error`` says why, in plain words."""
        ...


def client_tls_context(ca_file: str | None) -> SSLContext:
    """TLS for the link: the CSMS certificate checked, hostname included; TLS 1.2 at least.

    The server certificate is checked against the operator's CAs (``ca_file``, PEM) or, without
    one, the system CAs (security profile 2; profile 3 adds a client certificate to this).
    """
    context = ssl.create_default_context(cafile=ca_file)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def basic_auth_header(station_id: str, password: str) -> str:
    """The value of the Authorization header of security profiles 1 and 2."""
    raw = f"{station_id}:{password}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


class ConfigProfile:
    """One profile from the ``ocpp:`` configuration, re-read at every attempt.

    ``password`` is a getter so that a password the CSMS sets later is used from the next
    attempt without mutating the configuration; by default it reads ``cfg.password``.
    """

    name = "config"

    def __init__(self, cfg: OcppConfig, station_id: str, *,
                 password: Callable[[], str | None] | None = None) -> None:
        self.cfg = cfg
        self.station_id = station_id
        self.password: Callable[[], str | None] = (
            password if password is not None else lambda: cfg.password)

    @property
    def url(self) -> str:
        return self.cfg.url.rstrip("/") + "/" + self.station_id

    def current(self) -> ConnectionProfile:
        cfg = self.cfg
        headers: dict[str, str] = {}
        password = self.password()
        if cfg.security_profile in (1, 2) and password:
            headers["Authorization"] = basic_auth_header(self.station_id, password)
        url = self.url
        context = client_tls_context(cfg.ca_file) if url.startswith("wss://") else None
        return ConnectionProfile(name=self.name, url=url, versions=tuple(cfg.versions),
                                 security_profile=cfg.security_profile, headers=headers,
                                 ssl=context)

    def connected(self, profile: ConnectionProfile) -> None:
        """Nothing to remember: there is only the one profile."""

    def failed(self, profile: ConnectionProfile, error: str) -> None:
        """Nothing to fall back to: the link retries the same profile after its backoff."""


__all__ = ["ConfigProfile", "ConnectionProfile", "ProfileProvider", "basic_auth_header",
           "client_tls_context"]
