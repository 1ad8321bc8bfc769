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

import asyncio
import base64
import ssl
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from ssl import SSLContext
from typing import Protocol

from agent.config import OcppConfig

# How the link words a CSMS's refusal of the basic-auth credentials (HTTP 401/403), so that a
# provider trying a new password can tell that refusal from an unreachable CSMS.
CREDENTIALS_REFUSED = "refused the credentials"
# How it words a TLS handshake a CSMS broke off while security profile 3 offered the station
# certificate, so that a provider trying a renewed certificate can go back to the previous one.
STATION_CERTIFICATE_REFUSED = "most likely refused the station certificate"


@dataclass(frozen=True)
class ConnectionProfile:
    """Everything one connection attempt needs; built afresh for every attempt."""

    name: str  # for messages: "config", later e.g. "slot 1"
    url: str  # the full URL, station id included
    versions: tuple[str, ...]  # OCPP versions offered, in order of preference
    security_profile: int = 0
    headers: dict[str, str] = field(default_factory=dict)  # e.g. Authorization
    ssl: SSLContext | None = None  # None: no TLS (ws://)
    # Why this profile cannot be used as it stands (security profile 3 without a station
    # certificate, ...): the link refuses the attempt with this text instead of connecting
    # with less security than the profile asks for.
    problem: str | None = None
    # M05 fallback root (AdditionalRootCertificateCheck): ``ssl`` trusts the new CSMS root
    # only; when the CSMS certificate does not verify with it, the same attempt is made again
    # with this context, which also trusts the replaced root.
    ssl_fallback: SSLContext | None = None
    # Told, once the session runs, whether the CSMS certificate verified with ``ssl`` (False)
    # or only with ``ssl_fallback`` (True).
    tls_verified: Callable[[bool], None] | None = None


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


# TLS 1.2 cipher suites (OpenSSL names): the ones the 1.6 security whitepaper and 2.0.1 A00.FR.318
# name (TLS_ECDHE_ECDSA_WITH_AES_128/256_GCM_SHA256/384, TLS_RSA_WITH_AES_128/256_GCM_SHA256/384)
# plus their ECDHE_RSA forms, which give forward secrecy with the RSA certificates most CSMSs
# have. Nothing else: no CBC, no SHA-1, no export or anonymous suites (A00.FR.319).
CIPHERS_TLS12 = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
    "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384",
    "AES128-GCM-SHA256", "AES256-GCM-SHA384",
))
# TLS 1.3 suites cannot be chosen through Python's ssl module (no SSL_CTX_set_ciphersuites);
# OpenSSL's defaults are these three AEAD suites, all acceptable (checked by the tests).
CIPHERS_TLS13 = ("TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256",
                 "TLS_AES_128_GCM_SHA256")


def _no_password() -> bytes:
    raise ValueError("the private key is encrypted; the agent needs an unencrypted PEM key "
                     "(protect the file with its permissions)")


def client_tls_context(ca_files: str | Sequence[str] | None,
                       identity: tuple[str, str] | None = None) -> SSLContext:
    """TLS for the link (security profiles 2 and 3): TLS 1.2 at least, the suites above, the
    CSMS certificate checked against ``ca_files`` (PEM bundles: the installed CSMS root
    certificates and/or ``ocpp.ca_file``; none: the system CAs), host name included; no
    compression, no renegotiation.  ``identity`` (certificate chain, key: PEM files) is the
    station certificate of security profile 3.

    Raises ``ssl.SSLError`` / ``OSError`` / ``ValueError`` for unusable files.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(CIPHERS_TLS12)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    # An installed CSMS root is a trust anchor even when it is not self-signed: the new root
    # of AdditionalRootCertificateCheck is issued by the old one (M05.FR.09), which goes
    # once the new one connected (M05.FR.12/13).
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    files = [ca_files] if isinstance(ca_files, str) else list(ca_files or ())
    if files:
        for path in files:
            context.load_verify_locations(cafile=path)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if identity is not None:
        context.load_cert_chain(identity[0], identity[1], password=_no_password)
    return context


def check_key_pair(cert_file: str, key_file: str) -> str | None:
    """Why ``cert_file`` / ``key_file`` are not a usable station identity, or None."""
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(cert_file, key_file,
                                                                 password=_no_password)
    except ValueError as exc:
        return str(exc)
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            return "the private key does not belong to the certificate"
        return f"not a PEM certificate and private key ({exc.reason or exc})"
    except OSError as exc:
        return f"cannot read it ({exc.strerror or exc})"
    return None


async def legacy_tls_version(host: str, port: int, timeout: float = 5.0) -> str | None:
    """The TLS version a server agrees when offered only TLS 1.0/1.1, or None.

    Diagnosis only, after a TLS 1.2+ handshake failed without a reason (an old server just
    drops the connection): the probe sends nothing but a ClientHello and closes right after
    the handshake; no credentials, no certificate, no OCPP.  A result means the CSMS only
    speaks a TLS version below 1.2 (InvalidTLSVersion, A00.FR.315).
    """
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    probe.check_hostname = False
    probe.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            probe.set_ciphers("DEFAULT:@SECLEVEL=0")
            probe.minimum_version = ssl.TLSVersion.TLSv1
            probe.maximum_version = ssl.TLSVersion.TLSv1_1
        except (ssl.SSLError, ValueError):
            return None
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=probe), timeout)
    except (OSError, TimeoutError):
        return None
    try:
        obj = writer.get_extra_info("ssl_object")
        return obj.version() if obj is not None else None
    finally:
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), timeout)
        except (OSError, TimeoutError, ssl.SSLError):
            pass


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


__all__ = ["CIPHERS_TLS12", "CIPHERS_TLS13", "CREDENTIALS_REFUSED",
           "STATION_CERTIFICATE_REFUSED", "ConfigProfile",
           "ConnectionProfile", "ProfileProvider", "basic_auth_header", "check_key_pair",
           "client_tls_context", "legacy_tls_version"]
