"""Network profiles: which CSMS, security profile and credentials each connection attempt uses.

:class:`NetworkPlan` is the :class:`~agent.link.profiles.ProfileProvider` of the running agent.
It keeps, version-neutrally and persisted in the state file:

- the **slots** (2.0.1 SetNetworkProfile configuration slots 1-5): the ``ocpp:`` section of
  the YAML file is slot 1 until a CSMS stores another profile there;
- the **priority** (2.0.1 OCPPCommCtrlr.NetworkConfigurationPriority, read at start-up: a
  change answers RebootRequired) and the attempts per profile
  (NetworkProfileConnectionAttempts, read at every failure) before the next one is tried;
- the **last profile that connected**, tried after every profile of the priority list failed
  (B10.FR.07: a new profile that does not work falls back to the one that did);
- the station's **security profile**: the highest one that ever connected (at least the
  YAML's).  Profiles below it are never used (no downgrade, A05 / B09.FR.04);
- a **pending upgrade** (1.6 ChangeConfiguration SecurityProfile): tried first; kept once it
  connects, dropped after its attempts failed (whitepaper A05.FR.08: back to the previous
  security profile);
- the **basic-auth password** (1.6 AuthorizationKey, 2.0.1 BasicAuthPassword): a new one is
  tried at the next connection; refused by the CSMS (HTTP 401/403, which the link reports as
  a FailedToAuthenticateAtCsms security event) it is dropped for the previous one.

The TLS material (CSMS root certificates, the station certificate of security profile 3) is
asked for at every attempt from a :class:`TlsMaterial`, so a certificate installed by the CSMS
applies from the next connection.  Two certificate changes are on trial until a connection
proves them:

- a new CSMS root that replaced the old one under AdditionalRootCertificateCheck: each
  attempt verifies the CSMS with the new root alone first and, only if that fails, with the
  old (fallback) one too; the first connection the new root verified drops the fallback
  (2.0.1 M05.FR.13/14, TC_M_30/31_CS; the 1.6 whitepaper's M05.FR.12/13);
- a renewed station certificate (security profile 3): when the CSMS refuses it
  NetworkProfileConnectionAttempts times, the previous certificate is used again
  (DiscardedRenewedClientCertificate).  The link layer knows no OCPP version and no core module:
the composition root hands in the storage, the priority / attempts getters and the security
event callback.
"""

from __future__ import annotations

import json
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from agent.config import OcppConfig
from agent.link.profiles import (
    CREDENTIALS_REFUSED,
    STATION_CERTIFICATE_REFUSED,
    ConfigProfile,
    ConnectionProfile,
    basic_auth_header,
    client_tls_context,
)

log = logging.getLogger("cp_agent.link")

CONFIG_SLOT = "1"  # the slot the YAML ``ocpp:`` section fills until a CSMS sets it
SLOT_KEY = "link.slot."  # + slot: a profile a CSMS stored (JSON)
LAST_GOOD_KEY = "link.last_good"  # the profile of the latest successful connection
FLOOR_KEY = "link.security_profile"  # the highest security profile that connected
PENDING_KEY = "link.pending_upgrade"  # a 1.6 SecurityProfile upgrade not yet connected
PASSWORD_KEY = "link.password"  # the basic-auth password a CSMS set (secret)
NEW_PASSWORD_KEY = "link.password.new"  # one not yet accepted by the CSMS (secret)


class KeyValue(Protocol):
    """The part of :class:`agent.storage.Storage` the plan persists with."""

    def get_setting(self, key: str) -> str | None: ...
    def set_setting(self, key: str, value: str) -> None: ...
    def delete_setting(self, key: str) -> None: ...


class TlsMaterial(Protocol):
    """Where the certificates come from (the certificate store, the YAML files)."""

    def ca_files(self) -> list[str]:
        """PEM files of the CSMS root certificates to trust; empty: none installed."""
        ...

    def identity(self) -> tuple[str, str] | None:
        """The station certificate (chain PEM, key PEM) for security profile 3, or None."""
        ...

    def new_root_ca_files(self) -> list[str] | None:
        """While a replaced CSMS root is kept as a fallback (M05.FR.11): the PEM files of the
        new root(s) alone, tried first; None when there is no fallback."""
        ...

    def new_root_verified(self) -> None:
        """A connection verified the CSMS with the new root alone: drop the fallback."""
        ...

    def identity_on_trial(self) -> bool:
        """Whether the station certificate is a renewed one not yet proven by a connection."""
        ...

    def identity_worked(self) -> None:
        """A security profile 3 connection with the station certificate succeeded."""
        ...

    def discard_identity(self, why: str) -> bool:
        """The CSMS refused the renewed station certificate: back to the previous one (True)."""
        ...


@dataclass(frozen=True)
class ProfileSpec:
    """One network connection profile: where, how secured, which OCPP versions."""

    slot: str
    url: str  # the CSMS URL without the station id (appended per attempt)
    security_profile: int
    versions: tuple[str, ...]

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "versions": list(self.versions)})

    @classmethod
    def from_json(cls, text: str | None) -> ProfileSpec | None:
        if not text:
            return None
        try:
            raw = json.loads(text)
            return cls(str(raw["slot"]), str(raw["url"]), int(raw["security_profile"]),
                       tuple(str(v) for v in raw["versions"]))
        except (ValueError, KeyError, TypeError):
            log.warning("stored network profile %r unreadable; ignored", text[:80])
            return None


def url_for_level(url: str, level: int) -> str:
    """``url`` with the scheme security profile ``level`` needs (1.6 upgrades keep host, port
    and path: profiles 0-1 speak ws://, 2-3 wss://)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    return ("wss" if level >= 2 else "ws") + "://" + rest


def url_problem(url: str, level: int) -> str | None:
    """Why ``url`` cannot carry security profile ``level``, or None."""
    if level >= 2 and not url.startswith("wss://"):
        return f"security profile {level} needs a wss:// URL (TLS), not {url}"
    if level == 1 and not url.startswith("ws://"):
        return f"security profile 1 is basic auth without TLS: a ws:// URL, not {url}"
    if not url.startswith(("ws://", "wss://")):
        return f"{url} is not a ws:// or wss:// URL"
    return None


class NetworkPlan:
    """The connection profiles of a station, in the order the spec says to try them."""

    def __init__(self, cfg: OcppConfig, station_id: str, store: KeyValue, *,
                 tls: TlsMaterial,
                 priority: Callable[[], list[str]] = lambda: [CONFIG_SLOT],
                 set_priority: Callable[[list[str]], None] = lambda slots: None,
                 attempts: Callable[[], int] = lambda: 3,
                 legacy_password: Callable[[], str | None] = lambda: None,
                 on_security_event: Callable[[str, str], object] | None = None) -> None:
        self.cfg = cfg
        self.station_id = station_id
        self.store = store
        self.tls = tls
        self._set_priority = set_priority
        self._attempts = attempts
        self._legacy_password = legacy_password
        self._event = on_security_event
        # Read once: NetworkConfigurationPriority takes effect after a restart.
        self.priority: list[str] = [s for s in priority() if s]
        self.reconnect_hook: Callable[[str], Awaitable[None]] | None = None
        self.listeners: list[Callable[[], None]] = []  # the security profile changed
        self._index = 0
        self._fails = 0
        self._served: dict[int, ProfileSpec] = {}
        self._skipped: set[ProfileSpec] = set()
        self._certificate_refusals = 0  # of a renewed station certificate on trial
        self.active: ProfileSpec | None = None  # of the connection up now

    # ------------------------------------------------------------------ state

    @property
    def security_profile(self) -> int:
        """The station's security profile: never lower than the YAML's or one that connected."""
        stored = self.store.get_setting(FLOOR_KEY)
        level = int(stored) if stored and stored.isdigit() else 0
        return max(level, self.cfg.security_profile)

    @property
    def active_slot(self) -> str | None:
        """The slot of the connection up now (else of the last one that connected)."""
        spec = self.active or ProfileSpec.from_json(self.store.get_setting(LAST_GOOD_KEY))
        return spec.slot if spec is not None else None

    def config_spec(self) -> ProfileSpec:
        return ProfileSpec(CONFIG_SLOT, self.cfg.url, self.cfg.security_profile,
                           tuple(self.cfg.versions))

    def slot(self, slot: str) -> ProfileSpec | None:
        """The profile in ``slot``: what a CSMS stored there, else (slot 1) the YAML one."""
        stored = ProfileSpec.from_json(self.store.get_setting(SLOT_KEY + slot))
        if stored is not None:
            return stored
        return self.config_spec() if slot == CONFIG_SLOT else None

    def set_slot(self, spec: ProfileSpec) -> None:
        """Store a profile (2.0.1 SetNetworkProfile); used when the priority lists its slot."""
        self.store.set_setting(SLOT_KEY + spec.slot, spec.to_json())

    def pending(self) -> ProfileSpec | None:
        return ProfileSpec.from_json(self.store.get_setting(PENDING_KEY))

    # ------------------------------------------------------------------ checks

    def prerequisites(self, level: int) -> str | None:
        """Why the station cannot use security profile ``level`` now, or None (A05.FR.02-04:
        a password for 1-2, installed CSMS root certificates for 2-3, a station certificate
        for 3)."""
        if level not in (0, 1, 2, 3):
            return f"security profile {level} does not exist (0-3)"
        if level in (1, 2) and not self.password():
            return f"security profile {level} needs a basic-auth password and none is set"
        if level >= 2 and not self.tls.ca_files():
            return (f"security profile {level} needs an installed CSMS root certificate "
                    f"(ocpp.ca_file or InstallCertificate CSMSRootCertificate)")
        if level == 3 and self.tls.identity() is None:
            return "security profile 3 needs a station certificate and none is installed"
        return None

    def check_priority(self, slots: list[str]) -> str | None:
        """Why a NetworkConfigurationPriority of ``slots`` cannot be used, or None: a slot
        below the station's security profile, or one whose higher profile lacks what it
        needs (TC_A_20_CS, TC_A_21_CS).  Empty slots are skipped when connecting."""
        floor = self.security_profile
        for slot in slots:
            spec = self.slot(slot)
            if spec is None:
                continue
            if spec.security_profile < floor:
                return (f"slot {slot} uses security profile {spec.security_profile}, below "
                        f"this station's {floor}")
            if spec.security_profile > floor:
                problem = self.prerequisites(spec.security_profile)
                if problem is not None:
                    return f"slot {slot}: {problem}"
        return None

    # ------------------------------------------------------------------ changes from the CSMS

    def upgrade(self, level: int) -> None:
        """Try security profile ``level`` from the next connection on, falling back to the
        current profile if it does not connect (1.6 ChangeConfiguration SecurityProfile; the
        caller checked :meth:`prerequisites` and that it is an upgrade)."""
        base = self.active or self.slot(CONFIG_SLOT) or self.config_spec()
        spec = ProfileSpec(base.slot, url_for_level(base.url, level), level, base.versions)
        self.store.set_setting(PENDING_KEY, spec.to_json())
        self._index = self._fails = 0
        log.info("security profile %d will be tried at the next connection (%s)", level,
                 spec.url)

    def rotate_password(self, password: str) -> None:
        """A new basic-auth password: used from the next connection, kept once the CSMS
        accepts it, dropped for the previous one if the CSMS refuses it."""
        self.store.set_setting(NEW_PASSWORD_KEY, password)
        log.info("a new basic-auth password will be used from the next connection")

    def password(self) -> str | None:
        """The password of the next attempt: a new one being tried, else the current one."""
        return (self.store.get_setting(NEW_PASSWORD_KEY) or self.store.get_setting(PASSWORD_KEY)
                or self._legacy_password() or self.cfg.password)

    async def reconnect(self, reason: str) -> None:
        """Drop the connection so that the next attempt uses what changed."""
        if self.reconnect_hook is not None:
            await self.reconnect_hook(reason)

    # ------------------------------------------------------------------ the attempts

    def sequence(self) -> list[ProfileSpec]:
        """The profiles in the order they are tried: a pending upgrade, the priority list
        (empty slots and those below the security profile left out), the last that worked."""
        floor = self.security_profile
        out: list[ProfileSpec] = []
        pending = self.pending()
        if pending is not None:
            out.append(pending)
        for slot in self.priority:
            spec = self.slot(slot)
            if spec is None or spec in out:
                continue
            if spec.security_profile < floor:
                if spec not in self._skipped:
                    self._skipped.add(spec)
                    log.warning("network profile in slot %s not used: its security profile %d "
                                "is below this station's %d (no downgrade)", slot,
                                spec.security_profile, floor)
                continue
            out.append(spec)
        last = ProfileSpec.from_json(self.store.get_setting(LAST_GOOD_KEY))
        if last is not None and last not in out and last.security_profile >= floor:
            out.append(last)
        return out

    def current(self) -> ConnectionProfile:
        order = self.sequence()
        if not order:
            spec = self.config_spec()
            profile = self._profile(spec)
            return ConnectionProfile(
                profile.name, profile.url, profile.versions, spec.security_profile,
                problem=f"no network profile at security profile {self.security_profile} "
                        f"or above is configured (the YAML's is {spec.security_profile}; a "
                        f"station never goes back to a lower one)")
        spec = order[self._index % len(order)]
        profile = self._profile(spec)
        self._served = {k: v for k, v in list(self._served.items())[-7:]}
        self._served[id(profile)] = spec
        return profile

    def _name(self, spec: ProfileSpec) -> str:
        if spec == self.pending():
            return f"security profile {spec.security_profile} upgrade"
        if spec == self.config_spec():
            return ConfigProfile.name
        return f"slot {spec.slot}"

    def _profile(self, spec: ProfileSpec) -> ConnectionProfile:
        level = spec.security_profile
        url = spec.url.rstrip("/") + "/" + self.station_id
        name = self._name(spec)
        problem = url_problem(spec.url, level) if level >= 1 else None
        headers: dict[str, str] = {}
        if level in (1, 2):
            password = self.password()
            if password:
                headers["Authorization"] = basic_auth_header(self.station_id, password)
            else:
                problem = problem or (f"security profile {level} needs a basic-auth password: "
                                      f"set ocpp.password")
        context = fallback = None
        if url.startswith("wss://"):
            identity = self.tls.identity() if level == 3 else None
            if level == 3 and identity is None:
                problem = problem or ("security profile 3 needs the station certificate and "
                                      "none is installed: set ocpp.client_cert_file and "
                                      "ocpp.client_key_file, or let the CSMS install one")
            try:
                everything = self.tls.ca_files()
                new_only = self.tls.new_root_ca_files() if everything else None
                context = client_tls_context(new_only or everything, identity)
                if new_only:  # M05: the new CSMS root first, then with the replaced one
                    fallback = client_tls_context(everything, identity)
            except (ssl.SSLError, OSError, ValueError) as exc:
                problem = problem or f"the TLS certificates cannot be used: {exc}"
                context = client_tls_context(None)  # never used: the attempt is refused
                fallback = None
        return ConnectionProfile(name=name, url=url, versions=spec.versions,
                                 security_profile=level, headers=headers, ssl=context,
                                 problem=problem, ssl_fallback=fallback,
                                 tls_verified=self._tls_verified if fallback else None)

    def _tls_verified(self, used_fallback: bool) -> None:
        if used_fallback:
            log.warning("connected with the fallback CSMS root: the CSMS certificate is not "
                        "issued under the new root yet; the fallback stays")
        else:  # M05.FR.12 (1.6) / M05.FR.13 (2.0.1)
            self.tls.new_root_verified()

    def connected(self, profile: ConnectionProfile) -> None:
        spec = self._served.get(id(profile))
        if spec is None:
            return
        self.active = spec
        self._index = self._fails = 0
        self.store.set_setting(LAST_GOOD_KEY, spec.to_json())
        if spec == self.pending():
            self.store.set_setting(SLOT_KEY + spec.slot, spec.to_json())
            self.store.delete_setting(PENDING_KEY)
            log.info("security profile %d connected; kept", spec.security_profile)
        new_password = self.store.get_setting(NEW_PASSWORD_KEY)
        if new_password and profile.headers.get("Authorization") == basic_auth_header(
                self.station_id, new_password):
            self.store.set_setting(PASSWORD_KEY, new_password)
            self.store.delete_setting(NEW_PASSWORD_KEY)
            log.info("the CSMS accepted the new basic-auth password")
        if spec.security_profile > self.security_profile:
            self._raise_floor(spec.security_profile)
        if spec.security_profile == 3:
            self._certificate_refusals = 0
            self.tls.identity_worked()

    def _raise_floor(self, level: int) -> None:
        """Connected at a higher security profile: it becomes the station's, and the slots
        below it leave the priority list (TC_A_19_CS)."""
        self.store.set_setting(FLOOR_KEY, str(level))
        kept = [s for s in self.priority
                if (spec := self.slot(s)) is None or spec.security_profile >= level]
        if kept != self.priority:
            self.priority = kept
            self._set_priority(kept)
        log.warning("security profile is now %d; lower profiles are no longer used", level)
        for listener in list(self.listeners):
            listener()

    def failed(self, profile: ConnectionProfile, error: str) -> None:
        spec = self._served.get(id(profile))
        if self.active is not None and spec == self.active:
            self.active = None
        new_password = self.store.get_setting(NEW_PASSWORD_KEY)
        if (new_password and CREDENTIALS_REFUSED in error
                and profile.headers.get("Authorization")
                == basic_auth_header(self.station_id, new_password)):
            self.store.delete_setting(NEW_PASSWORD_KEY)
            # The link recorded the refusal (FailedToAuthenticateAtCsms) already.
            log.error("the CSMS refused the new basic-auth password; back to the previous one")
            return  # the same profile again, with the previous password
        if spec is None:
            return
        if (spec.security_profile == 3 and STATION_CERTIFICATE_REFUSED in error
                and self.tls.identity_on_trial()):
            # A renewed certificate the CSMS refuses, NetworkProfileConnectionAttempts times:
            # the previous one again (DiscardedRenewedClientCertificate), same profile.
            self._certificate_refusals += 1
            if self._certificate_refusals >= max(1, self._attempts()):
                self._certificate_refusals = 0
                if self.tls.discard_identity(error[:200]):
                    self._fails = 0
                    return
        self._fails += 1
        if self._fails < max(1, self._attempts()):
            return
        self._fails = 0
        if spec == self.pending():
            self.store.delete_setting(PENDING_KEY)
            log.error("could not connect with security profile %d (%s); back to security "
                      "profile %d", spec.security_profile, error, self.security_profile)
            return
        order = self.sequence()
        if len(order) > 1:
            self._index = (self._index + 1) % len(order)
            log.warning("network profile %s failed %d time(s); trying %s next", spec.slot,
                        max(1, self._attempts()), order[self._index].slot)

    def _security_event(self, kind: str, info: str) -> None:
        if self._event is None:
            return
        try:
            self._event(kind, info)
        except Exception:  # noqa: BLE001
            log.exception("security event %s could not be recorded", kind)




class StoreTls:
    """:class:`TlsMaterial` from the certificate store (``store()``: the station's
    ``certificates``, duck-typed so the link imports nothing of it) and the YAML files.

    CSMS roots: the installed CSMSRootCertificate bundle and ``ocpp.ca_file`` (both trusted;
    while a fallback root is kept, the store's new roots alone are tried first, without the
    YAML file); station certificate: the store's (the CSMS may have renewed it), else the
    factory files.
    """

    def __init__(self, cfg: OcppConfig, store: Callable[[], object | None]) -> None:
        self.cfg = cfg
        self._store = store

    def ca_files(self) -> list[str]:
        out: list[str] = []
        store = self._store()
        bundle = getattr(store, "ca_bundle_path", None)
        if bundle is not None:
            path = bundle("CSMSRootCertificate")
            if path is not None:
                out.append(str(path))
        if self.cfg.ca_file:
            out.append(self.cfg.ca_file)
        return out

    def new_root_ca_files(self) -> list[str] | None:
        store = self._store()
        if store is None or not getattr(store, "has_fallback_root", lambda: False)():
            return None
        path = store.ca_bundle_path("CSMSRootCertificate",  # type: ignore[attr-defined]
                                    fallback=False)
        return [str(path)] if path is not None else None

    def new_root_verified(self) -> None:
        drop = getattr(self._store(), "drop_fallback", None)
        if drop is not None:
            drop()

    def identity_on_trial(self) -> bool:
        check = getattr(self._store(), "identity_on_trial", None)
        return bool(check()) if check is not None else False

    def identity_worked(self) -> None:
        confirm = getattr(self._store(), "confirm_identity", None)
        if confirm is not None:
            confirm()

    def discard_identity(self, why: str) -> bool:
        discard = getattr(self._store(), "discard_identity", None)
        return bool(discard(why)) if discard is not None else False

    def identity(self) -> tuple[str, str] | None:
        store = self._store()
        get = getattr(store, "client_identity", None)
        found = get() if get is not None else None
        if found is not None:
            chain, key = (str(p) for p in found)
            if Path(chain).is_file() and Path(key).is_file():
                return chain, key
        if self.cfg.client_cert_file and self.cfg.client_key_file:
            return self.cfg.client_cert_file, self.cfg.client_key_file
        return None

    def import_factory_identity(self) -> str | None:
        """The YAML's station certificate into the store, once (factory provisioning); what
        happened, for the log, or None when there was nothing to do."""
        cert, key = self.cfg.client_cert_file, self.cfg.client_key_file
        if not cert or not key:
            return None
        store = self._store()  # only now: a store built on first use is not built for nothing
        provision = getattr(store, "provision_identity", None)
        if provision is None:
            return "no certificate store: the station certificate files are used directly"
        if store.client_identity() is not None:  # type: ignore[attr-defined]
            return None  # the store has one (perhaps renewed by the CSMS): it wins
        try:
            provision(Path(cert).read_text(), Path(key).read_bytes())
        except (OSError, ValueError) as exc:
            return (f"the factory station certificate could not be imported into the "
                    f"certificate store ({exc}); the files are used directly")
        return "factory station certificate imported into the certificate store"


__all__ = ["CONFIG_SLOT", "NetworkPlan", "ProfileSpec", "StoreTls", "TlsMaterial",
           "url_for_level", "url_problem"]
