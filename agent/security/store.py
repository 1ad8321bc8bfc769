"""The certificate store: the station's key pair and certificate chain, and the installed roots.

Version-neutral: the 1.6 security extension and 2.0.1 blocks A and M are thin mappings onto
it (a station may move from 1.6 to 2.0.1 and keep its identity and roots).  Everything lives
in files under ``<state_dir>/certs/`` (mode 0700), so the directory is what a factory
provisions and a backup protects:

``station/<fingerprint>/key.pem`` (0600) and ``chain.pem``
    the station's private key and its certificate chain (leaf first, then sub-CAs); the
    pointer file ``station/current.json`` names the one in use, the previous one (kept as a
    fallback, A02.FR.10: a renewed certificate is "on trial" until a connection with it
    worked, and discarded if the CSMS refuses it) and one whose validity starts later
    (switched to then, A02.FR.08); it is replaced atomically, so key and chain change
    together.
``pending/<n>.key`` (0600)
    the keys of CSRs sent in the current signing round, until a CertificateSigned matches one
    (a late answer to an earlier CSR of the round is still accepted).
``roots/<use>/<fingerprint>.pem``
    installed roots by use (CSMSRootCertificate, ManufacturerRootCertificate,
    V2GRootCertificate, MORootCertificate; 1.6's CentralSystemRootCertificate is the CSMS
    one).  Any ``*.pem`` placed there by a factory is read too.  ``roots/CSMSRootCertificate
    .fallback/`` holds the root replaced under AdditionalRootCertificateCheck (M05.FR.11).
``bundles/<use>.pem``
    generated PEM bundles for ``ssl`` (:meth:`ca_bundle_path`).

A private key is generated on the board, written once with mode 0600 and never read back
except to hand its path to TLS; no method returns its bytes, and no log line mentions more
than a fingerprint.  Every write is a temporary file, fsync and rename.  Validity is judged
on the station clock (``clock.now()``, the CSMS-synchronised time).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from agent.atomic_file import replace_file
from agent.core.settings import Settings
from agent.security.names import CSMS_ROOT, IDENTITY_POINTER, STORE_SETTINGS, USES

if TYPE_CHECKING:
    from agent.security.crypto import Certificate


class _LazyCrypto:
    """``agent.security.crypto``, imported on first use: the ``cryptography`` package costs
    about 7 MB of RSS, which a station without certificates (profiles 0 and 1, no
    certificate messages) never needs to pay."""

    def __getattr__(self, name: str) -> Any:
        from agent.security import crypto as module

        return getattr(module, name)


crypto: Any = _LazyCrypto()
KEY_TYPES = ("ec", "rsa")  # as crypto.KEY_TYPES, without importing it at start-up

log = logging.getLogger("cp_agent.certificates")

FALLBACK_DIR = CSMS_ROOT + ".fallback"
# A02.FR.08 switches to a new certificate once it is valid: a chain whose validity starts
# later is kept and switched to then, one that starts within this allowance (clock skew
# between the CA and the station) is used at once.
NOT_BEFORE_SKEW = timedelta(minutes=5)
INVALID_STATION_CERTIFICATE = "InvalidChargingStationCertificate"
PENDING_MAX = 8  # CSR keys kept per signing round (a round re-sends a few times at most)

_DEFAULTS = {d.name: d.default for d in STORE_SETTINGS}


class EventSink(Protocol):
    def record(self, kind: str, info: str = "") -> Any: ...


class ClockLike(Protocol):
    def now(self) -> datetime: ...


@dataclass(frozen=True)
class Verdict:
    """A store decision: the OCPP status, a short reason code (statusInfo, <= 20 chars) and a
    sentence for the log / techInfo (never a secret)."""

    status: str
    reason: str = ""
    detail: str = ""

    def status_info(self) -> dict[str, str] | None:
        if not self.reason:
            return None
        info = {"reasonCode": self.reason[:20]}
        if self.detail:
            info["additionalInfo"] = self.detail[:512]
        return info


@dataclass(frozen=True)
class Installed:
    """An installed root (``use``), with the certificate that issued it (itself, or the old
    root that cross-signed it under AdditionalRootCertificateCheck)."""

    use: str
    certificate: Certificate
    issuer: Certificate
    path: Path
    fallback: bool = False

    def hash_data(self, algorithm: str = "SHA256") -> dict:
        return crypto.hash_data(self.certificate, self.issuer, algorithm)


def _hex(text: str) -> str:
    return text.strip().lower()


def _serial(text: str) -> str:
    value = text.strip().lower()
    value = value[2:] if value.startswith("0x") else value
    return value.lstrip("0") or "0"


def same_hash_data(a: dict, b: dict) -> bool:
    """CertificateHashData equality: identifierStrings are case-insensitive (errata 2023-12),
    serial numbers compared without leading zeroes."""
    return (a["hashAlgorithm"] == b["hashAlgorithm"]
            and _hex(a["issuerNameHash"]) == _hex(b["issuerNameHash"])
            and _hex(a["issuerKeyHash"]) == _hex(b["issuerKeyHash"])
            and _serial(a["serialNumber"]) == _serial(b["serialNumber"]))


class CertificateStore:
    """Keys, CSRs, the station chain and the roots by use, in ``directory``."""

    def __init__(self, directory: Path, clock: ClockLike, events: EventSink | None = None, *,
                 settings: Settings | None = None, key_type: str = "ec",
                 trusted_files: Iterable[str | Path] = (), lazy: bool = False) -> None:
        """``lazy``: ``directory`` is made (private) by the first write, not now, and only
        swept if it exists: for the thousands of simulated stations of a swarm, most of
        which never hold a certificate."""
        self.directory = Path(directory)
        # CSMS roots from outside the store (``ocpp.ca_file``): trusted for the station chain
        # too, else a station provisioned with a CA file could never take a new certificate.
        self.trusted_files = [Path(f) for f in trusted_files]
        self.clock = clock
        self.events = events
        self.settings = settings
        self.key_type = key_type
        if key_type not in KEY_TYPES:
            raise ValueError(f"certificate key type {key_type!r}: choose from "
                             f"{', '.join(KEY_TYPES)}")
        if settings is not None:
            settings.register(STORE_SETTINGS)
        self._made = False
        if not lazy or self.directory.is_dir():
            self._private_dir(self.directory)
            self._made = True
            self._sweep_temporaries()

    # ------------------------------------------------------------------ files

    @staticmethod
    def _private_dir(path: Path) -> Path:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(path, 0o700)
        return path

    def _sub(self, *parts: str) -> Path:
        if not self._made:  # a lazy store's first write
            self._private_dir(self.directory)
            self._made = True
        path = self.directory.joinpath(*parts)
        cur = self.directory
        for part in parts:
            cur = cur / part
            if not cur.is_dir():
                self._private_dir(cur)
        return path

    def _sweep_temporaries(self) -> None:
        """A temporary file left by a power cut mid-write is garbage, never a half key."""
        for tmp in self.directory.rglob(".*.tmp"):
            with contextlib.suppress(OSError):
                tmp.unlink()

    @staticmethod
    def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
        """Temporary file in the same directory, fsync, rename: a reader sees old or new."""
        replace_file(path, data, mode=mode, durable=True)

    def _setting(self, name: str) -> Any:
        if self.settings is not None and name in self.settings:
            return self.settings[name]
        return _DEFAULTS[name]

    def _event(self, kind: str, info: str) -> None:
        log.warning("certificate refused: %s", info)
        if self.events is not None:
            self.events.record(kind, info)

    # ------------------------------------------------------------------ roots

    @classmethod
    def _read_certs(cls, folder: Path) -> list[tuple[Path, Certificate]]:
        if not folder.is_dir():
            return []
        return [item for path in sorted(folder.glob("*.pem")) for item in cls._read_file(path)]

    @staticmethod
    def _read_file(path: Path) -> list[tuple[Path, Certificate]]:
        try:
            return [(path, c) for c in crypto.load_certificates(path.read_bytes())]
        except (OSError, crypto.CertificateFormatError) as exc:
            log.warning("ignoring unreadable certificate file %s: %s", path, exc)
            return []

    def installed(self, uses: Iterable[str] | None = None) -> list[Installed]:
        """The installed roots of ``uses`` (all when None), the CSMS fallback included."""
        wanted = list(USES if uses is None else uses)
        out: list[Installed] = []
        for use in wanted:
            if use not in USES:
                continue
            current = self._read_certs(self.directory / "roots" / use)
            fallback = (self._read_certs(self.directory / "roots" / FALLBACK_DIR)
                        if use == CSMS_ROOT else [])
            pool = [c for _, c in current + fallback]
            for entries, is_fallback in ((current, False), (fallback, True)):
                for path, cert in entries:
                    issuer = next((c for c in pool if c is not cert
                                   and crypto.directly_issued_by(cert, c)), cert)
                    out.append(Installed(use, cert, issuer, path, is_fallback))
        return out

    def roots(self, use: str) -> list[Certificate]:
        """Trust anchors of ``use``: the installed ones, the CSMS fallback included."""
        return [i.certificate for i in self.installed([use])]

    def entries(self) -> int:
        """How many CA certificates are installed (2.0.1 SecurityCtrlr.CertificateEntries)."""
        return len(self.installed())

    def ca_bundle_path(self, use: str = CSMS_ROOT, *, fallback: bool = True) -> Path | None:
        """A PEM bundle of the roots of ``use`` for ``ssl`` (None when there is none);
        ``fallback=False`` leaves the replaced CSMS root out (the new root alone, tried
        first: M05.FR.13/14 of 2.0.1, 12/13 of the 1.6 whitepaper)."""
        certs = self.roots(use) if fallback else self.current_roots(use)
        if not certs:
            return None
        text = "".join(crypto.to_pem(c) for c in certs).encode("ascii")
        path = self._sub("bundles") / (f"{use}.pem" if fallback else f"{use}.new.pem")
        try:
            if not path.is_file() or path.read_bytes() != text:
                self._write(path, text)
        except OSError as exc:
            log.error("cannot write the %s bundle %s: %s", use, path, exc)
            return None
        return path

    def install_root(self, use: str, pem: bytes | str) -> str:
        """Install a root of ``use``: "Accepted", "Rejected" (invalid, not a root, store full)
        or "Failed" (could not be written)."""
        return self.add_root(use, pem).status

    def add_root(self, use: str, pem: bytes | str) -> Verdict:
        """:meth:`install_root` with the reason (M05)."""
        if use not in USES:
            return Verdict("Rejected", "UnknownType", f"no certificate use {use!r}")
        try:
            certs = crypto.load_certificates(pem)
        except crypto.CertificateFormatError as exc:
            return self._refuse_root(use, "InvalidFormat", str(exc))
        if len(certs) != 1:
            return self._refuse_root(use, "InvalidCertificate",
                                     f"one certificate expected, got {len(certs)}")
        cert = certs[0]
        what = crypto.describe(cert)
        problem = crypto.key_strength_problem(cert)
        if problem is None and not crypto.is_ca(cert):
            problem = "not a CA certificate (basicConstraints cA is not asserted)"
        if problem is None:
            problem = crypto.validity_problem(cert, self.clock.now())
        if problem is not None:
            return self._refuse_root(use, "InvalidCertificate", f"{what}: {problem}")
        fp = crypto.fingerprint(cert)
        if any(crypto.fingerprint(i.certificate) == fp for i in self.installed([use])):
            log.info("%s %s is installed already", use, what)
            return Verdict("Accepted")
        replaces: list[Installed] = []
        current = [i for i in self.installed([use]) if not i.fallback]
        if use == CSMS_ROOT and self._setting("AdditionalRootCertificateCheck") and current:
            # M05.FR.09/10: the new CSMS root replaces the old one and must be signed by it.
            if not any(crypto.directly_issued_by(cert, i.certificate) for i in current):
                return self._refuse_root(use, "NotSignedByOld",
                                         f"{what} is not signed by the installed CSMS root")
            replaces = current
        elif not crypto.is_self_signed(cert):
            return self._refuse_root(use, "NotARoot", f"{what} is not a self-signed root")
        if not replaces and len(self.installed()) >= self._setting("CertificateStoreMaxLength"):
            return self._refuse_root(use, "StoreFull",
                                     f"{self._setting('CertificateStoreMaxLength')} "
                                     "certificates installed (CertificateStoreMaxLength)")
        try:
            self._write(self._sub("roots", use) / f"{fp}.pem", crypto.to_pem(cert).encode())
            if replaces:
                self._keep_as_fallback(replaces)
        except OSError as exc:
            log.error("cannot install %s %s: %s", use, what, exc)
            return Verdict("Failed", "WriteFailed", str(exc))
        log.info("installed %s %s (sha256 %s)", use, what, fp[:16])
        return Verdict("Accepted")

    def _refuse_root(self, use: str, reason: str, detail: str) -> Verdict:
        log.warning("%s refused: %s", use, detail)
        return Verdict("Rejected", reason, detail)

    def _keep_as_fallback(self, old: list[Installed]) -> None:
        """M05.FR.11: the replaced CSMS root stays as the only fallback until the new one
        proved itself (:meth:`drop_fallback`)."""
        folder = self._sub("roots", FALLBACK_DIR)
        for path, _ in self._read_certs(folder):
            path.unlink(missing_ok=True)
        for item in old:
            os.replace(item.path, folder / item.path.name)

    def drop_fallback(self) -> None:
        """The station connected using the new CSMS root (M05.FR.12): forget the old one.
        Called by the link after a TLS connection verified with the current roots only."""
        for path, cert in self._read_certs(self.directory / "roots" / FALLBACK_DIR):
            path.unlink(missing_ok=True)
            log.info("removed the fallback CSMS root %s", crypto.describe(cert))

    def has_fallback_root(self) -> bool:
        """Whether a replaced CSMS root waits for the new one to prove itself (M05.FR.11)."""
        return bool(self._read_certs(self.directory / "roots" / FALLBACK_DIR))

    def current_roots(self, use: str = CSMS_ROOT) -> list[Certificate]:
        """The roots of ``use`` without the fallback (to verify with the new root first)."""
        return [i.certificate for i in self.installed([use]) if not i.fallback]

    # ------------------------------------------------------------------ delete / list

    def delete(self, hash_data: dict, *, keep_last_csms_root: bool = True) -> Verdict:
        """M04: "Accepted", "NotFound", or "Failed" for the station's own certificate
        (M04.FR.05) and for the last CSMS root while the connection relies on it (M04.FR.06)."""
        algorithm = hash_data.get("hashAlgorithm", "SHA256")
        if algorithm not in crypto.HASH_ALGORITHMS:
            return Verdict("NotFound", "UnknownAlgorithm", algorithm)
        chain = self._station_chain()
        if chain:
            issuer = chain[1] if len(chain) > 1 else next(
                (r for r in self.roots(CSMS_ROOT) if crypto.directly_issued_by(chain[0], r)),
                chain[0])
            if same_hash_data(crypto.hash_data(chain[0], issuer, algorithm), hash_data):
                log.warning("refused to delete the station's own certificate")
                return Verdict("Failed", "StationCertificate",
                               "the charging station certificate cannot be deleted")
        everything = self.installed()
        for item in everything:
            if not same_hash_data(item.hash_data(algorithm), hash_data):
                continue
            if item.use == CSMS_ROOT and not item.fallback and keep_last_csms_root:
                others = [i for i in everything
                          if i.use == CSMS_ROOT and not i.fallback and i is not item]
                if not others:
                    log.warning("refused to delete the last CSMS root (the connection "
                                "relies on it)")
                    return Verdict("Failed", "LastCsmsRoot",
                                   "the last CSMS root certificate is in use")
            try:
                item.path.unlink()
            except OSError as exc:
                log.error("cannot delete %s: %s", item.path, exc)
                return Verdict("Failed", "DeleteFailed", str(exc))
            log.info("deleted %s %s", item.use, crypto.describe(item.certificate))
            return Verdict("Accepted")
        return Verdict("NotFound")

    # ------------------------------------------------------------------ station identity

    def _pointer(self) -> dict:
        path = self.directory.joinpath(*IDENTITY_POINTER)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _identity_dir(self, name: str | None) -> Path | None:
        if not name or not re.fullmatch(r"[0-9a-f]{64}", name):
            return None
        folder = self.directory / "station" / name
        return folder if (folder / "key.pem").is_file() and (folder / "chain.pem").is_file() \
            else None

    def _chain_of(self, name: str | None) -> list[Certificate]:
        folder = self._identity_dir(name)
        if folder is None:
            return []
        try:
            return crypto.load_certificates((folder / "chain.pem").read_bytes())
        except (OSError, crypto.CertificateFormatError) as exc:
            log.error("the station certificate chain is unreadable: %s", exc)
            return []

    def _station_chain(self) -> list[Certificate]:
        return self._chain_of(self._pointer().get("current"))

    def identity_fingerprint(self) -> str | None:
        """The SHA-256 fingerprint naming the station identity in use (None: no certificate),
        so a caller can tell whether a CertificateSigned changed it."""
        return self._pointer().get("current") or None

    def station_certificate(self) -> Certificate | None:
        chain = self._station_chain()
        return chain[0] if chain else None

    def client_identity(self) -> tuple[Path, Path] | None:
        """(chain PEM, private key PEM) for TLS client authentication (security profile 3),
        or None when the station has no certificate yet.  A certificate kept for later whose
        time has come is switched to first (A02.FR.08, also right after a restart)."""
        try:
            self.activate_due()
        except OSError as exc:
            log.error("cannot switch to the new station certificate: %s", exc)
        folder = self._identity_dir(self._pointer().get("current"))
        if folder is None:
            return None
        return folder / "chain.pem", folder / "key.pem"

    def renewal_due(self, before: timedelta = timedelta(days=30)) -> datetime | None:
        """When A03 should renew the station certificate (``before`` its expiry), or None.
        A certificate kept for later counts: it is the renewal already."""
        chain = self._chain_of(self._pointer().get("next")) or self._station_chain()
        return None if not chain else chain[0].not_valid_after_utc - before

    # ------------------------------------------------------------------ later / trial

    def next_identity_at(self) -> datetime | None:
        """When the station certificate kept for later becomes valid, or None (A02.FR.08)."""
        chain = self._chain_of(self._pointer().get("next"))
        return max(c.not_valid_before_utc for c in chain) if chain else None

    def activate_due(self) -> bool:
        """Switch to the certificate kept for later once the station clock is past its 'not
        valid before' (A02.FR.08: as soon as it is valid); True when it switched now.
        The switch is on trial like any renewal (:meth:`discard_identity`)."""
        pointer = self._pointer()
        name = pointer.get("next")
        if not name:
            return False
        chain = self._chain_of(name)
        now = self.clock.now()
        if not chain or now > chain[0].not_valid_after_utc:
            log.warning("the station certificate kept for later is unreadable or expired; "
                        "dropped")
            self._set_pointer(next=None)
            return False
        if now < max(c.not_valid_before_utc for c in chain):
            return False
        current = pointer.get("current")
        self._set_pointer(current=name, previous=current, next=None, trial=bool(current))
        log.info("station certificate %s is valid now; switched to it (A02.FR.08)",
                 crypto.describe(chain[0]))
        return True

    def identity_on_trial(self) -> bool:
        """Whether the station certificate in use is a renewed one that has not yet got the
        station connected (the previous one is kept to go back to, A02.FR.10)."""
        return bool(self._pointer().get("trial"))

    def confirm_identity(self) -> None:
        """A connection with the renewed station certificate worked: it stays."""
        if self.identity_on_trial():
            self._set_pointer(trial=False)
            log.info("the renewed station certificate works; the previous one stays as a "
                     "fallback only")

    def discard_identity(self, why: str) -> bool:
        """The renewed station certificate does not get the station connected: go back to
        the previous one, if it is still valid, and raise the security event
        DiscardedRenewedClientCertificate (2.1 appendix 1).  True when it went back."""
        pointer = self._pointer()
        if not pointer.get("trial"):
            return False
        previous = self._chain_of(pointer.get("previous"))
        if not previous or crypto.validity_problem(previous[0], self.clock.now()) is not None:
            log.warning("the renewed station certificate was refused (%s) and the previous "
                        "one cannot be used any more; the renewed one stays", why)
            self._set_pointer(trial=False)
            return False
        discarded = self._station_chain()
        what = crypto.describe(discarded[0]) if discarded else "the renewed certificate"
        self._set_pointer(current=pointer["previous"], previous=None, trial=False)
        log.warning("discarded the renewed station certificate %s (%s); back to %s", what,
                    why, crypto.describe(previous[0]))
        if self.events is not None:
            self.events.record("DiscardedRenewedClientCertificate", f"{what}: {why}"[:255])
        return True

    def _current_key(self) -> crypto.PrivateKey | None:
        folder = self._identity_dir(self._pointer().get("current"))
        if folder is None:
            return None
        try:
            return crypto.load_key((folder / "key.pem").read_bytes())
        except (OSError, ValueError) as exc:
            log.error("the station key is unreadable: %s", type(exc).__name__)
            return None

    # ------------------------------------------------------------------ CSRs

    def new_csr(self, common_name: str, *, new_round: bool = False) -> str:
        """A fresh key pair (A02.FR.02) and its CSR (PEM) with CN = ``common_name`` and
        O = CpoName (A02.FR.13); the key waits in ``pending/`` for CertificateSigned.
        ``new_round`` forgets the keys of an earlier signing round."""
        folder = self._sub("pending")
        keys = sorted(folder.glob("*.key"), key=lambda p: int(p.stem) if p.stem.isdigit()
                      else -1)
        if new_round:
            for path in keys:
                path.unlink(missing_ok=True)
            keys = []
        for path in keys[:max(0, len(keys) - PENDING_MAX + 1)]:
            path.unlink(missing_ok=True)
        number = max((int(p.stem) for p in keys if p.stem.isdigit()), default=0) + 1
        organization = str(self._setting("CpoName"))
        if not organization:
            log.warning("CpoName / OrganizationName is not set: the CSR has no organization")
        key = crypto.generate_key(self.key_type)
        self._write(folder / f"{number}.key", crypto.key_to_pem(key), mode=0o600)
        csr = crypto.make_csr(key, common_name, organization)
        log.info("new CSR for CN=%s O=%s (pending key #%d)", common_name, organization or "-",
                 number)
        return csr

    def pending_count(self) -> int:
        return len(list((self.directory / "pending").glob("*.key")))

    def _pending_keys(self) -> list[tuple[Path, crypto.PrivateKey]]:
        out = []
        for path in sorted((self.directory / "pending").glob("*.key")):
            try:
                out.append((path, crypto.load_key(path.read_bytes())))
            except (OSError, ValueError):
                log.warning("ignoring unreadable pending key %s", path.name)
        return out

    def install_station_chain(self, pem: str, *, common_name: str) -> Verdict:
        """CertificateSigned (A02/A03): check the chain and make it the station's identity.

        Refused ("Rejected"): a chain longer than CertificateSignedMaxChainSize, unreadable
        PEM, a leaf whose key is none of the pending CSRs' (nor the current key), a weak key,
        a CA leaf, a certificate expired on the station clock, a subject
        whose O is not CpoName or whose CN is not the station identity, a chain that does not
        lead to an installed CSMS root.  Each but the length is an invalid certificate and
        raises the security event InvalidChargingStationCertificate (A02.FR.07; the bus
        speaks 2.0.1 names, 1.6 delivers it as InvalidChargePointCertificate).  A chain
        whose validity starts later is Accepted and kept until then (A02.FR.08,
        :meth:`activate_due`); one valid now replaces the current identity at once.
        """
        limit = int(self._setting("CertificateSignedMaxChainSize"))
        if len(pem) > limit:
            log.warning("certificate chain of %d characters refused (limit %d)", len(pem),
                        limit)
            return Verdict("Rejected", "ChainTooLong",
                           f"{len(pem)} characters, CertificateSignedMaxChainSize {limit}")
        try:
            chain = crypto.load_certificates(pem)
        except crypto.CertificateFormatError as exc:
            return self._invalid("InvalidFormat", str(exc))
        leaf, intermediates = chain[0], chain[1:]
        what = crypto.describe(leaf)
        leaf_key = crypto.public_key_der(leaf)
        pending = self._pending_keys()
        match = next(((p, k) for p, k in pending if crypto.public_key_der(k) == leaf_key), None)
        key: crypto.PrivateKey | None = match[1] if match else None
        if key is None:
            current = self._current_key()
            if current is not None and crypto.public_key_der(current) == leaf_key:
                key = current  # the CA re-issued a certificate for the key in use
        if key is None:
            return self._invalid("KeyMismatch",
                                 f"{what}: its key is not the key of a CSR this station sent")
        reason = "InvalidCertificate"
        problem = crypto.key_strength_problem(leaf)
        if problem is None and crypto.is_ca(leaf):
            problem = "the leaf is a CA certificate"
        now = self.clock.now()
        latest_start = now
        for cert in chain:
            if problem is not None:
                break
            if now > cert.not_valid_after_utc:
                reason = "Expired"
                problem = f"{crypto.describe(cert)} is {crypto.validity_problem(cert, now)}"
            latest_start = max(latest_start, cert.not_valid_before_utc)
        # A02.FR.08: a chain whose validity starts later is kept and switched to then.
        later = latest_start > now + NOT_BEFORE_SKEW
        if problem is None:
            organization = str(self._setting("CpoName"))
            if crypto.organization(leaf) != organization:
                problem = (f"subject O={crypto.organization(leaf)!r} is not CpoName / "
                           f"OrganizationName {organization!r}")
            elif crypto.common_name(leaf) != common_name:
                problem = (f"subject CN={crypto.common_name(leaf)!r} is not the station "
                           f"identity {common_name!r}")
        if problem is None:
            anchors = self.roots(CSMS_ROOT) + [c for f in self.trusted_files
                                               for _, c in self._read_file(f)]
            try:
                crypto.verify_chain(leaf, intermediates, anchors, latest_start,
                                    max_depth=max(2, len(chain) + 1))
            except crypto.ChainError as exc:
                problem = f"not issued under an installed CSMS root: {exc}"
        if problem is not None:
            return self._invalid(reason, f"{what}: {problem}")
        try:
            if later:
                self._make_next(chain, key)
            else:
                self._make_current(chain, key, trial=True)
        except OSError as exc:
            log.error("cannot store the station certificate: %s", exc)
            return Verdict("Rejected", "WriteFailed", str(exc))
        for path, _ in pending:
            path.unlink(missing_ok=True)
        if later:
            detail = f"valid from {latest_start.isoformat()}"
            log.info("station certificate %s kept: %s, the station switches to it then "
                     "(A02.FR.08)", what, detail)
            return Verdict("Accepted", detail=detail)
        log.info("station certificate installed: %s, valid until %s", what,
                 leaf.not_valid_after_utc.isoformat())
        return Verdict("Accepted")

    def _invalid(self, reason: str, detail: str) -> Verdict:
        self._event(INVALID_STATION_CERTIFICATE, detail)
        return Verdict("Rejected", reason, detail)

    def _store_identity(self, chain: list[Certificate], key: crypto.PrivateKey) -> str:
        name = crypto.fingerprint(chain[0])
        folder = self._sub("station", name)
        self._write(folder / "key.pem", crypto.key_to_pem(key), mode=0o600)
        self._write(folder / "chain.pem", "".join(crypto.to_pem(c) for c in chain).encode())
        return name

    def _set_pointer(self, **changes: Any) -> None:
        """Change ``station/current.json`` (current, previous, next, trial) in one atomic
        write; identities it no longer names are removed.  Kept: the current one, the
        previous one (A02.FR.10 fallback) and one waiting for its validity (A02.FR.08)."""
        pointer = {k: v for k, v in {**self._pointer(), **changes}.items() if v}
        self._write(self.directory.joinpath(*IDENTITY_POINTER),
                    json.dumps(pointer).encode(), mode=0o600)
        keep = {pointer.get(k) for k in ("current", "previous", "next")}
        for entry in (self.directory / "station").iterdir():
            if entry.is_dir() and entry.name not in keep:
                for f in entry.iterdir():
                    f.unlink(missing_ok=True)
                entry.rmdir()

    def _make_current(self, chain: list[Certificate], key: crypto.PrivateKey, *,
                      trial: bool = False) -> None:
        """``trial``: a renewal, to go back from if it does not connect (discard_identity)."""
        name = self._store_identity(chain, key)
        old = self._pointer()
        previous = old.get("current") if old.get("current") != name else old.get("previous")
        self._set_pointer(current=name, previous=previous, trial=bool(trial and previous),
                          next=None if old.get("next") == name else old.get("next"))

    def _make_next(self, chain: list[Certificate], key: crypto.PrivateKey) -> None:
        """A chain valid later: kept beside the current one until then (a newer one sent
        before that replaces it, A02.FR.09)."""
        self._set_pointer(next=self._store_identity(chain, key))

    def provision_identity(self, chain_pem: str, key_pem: bytes) -> None:
        """Factory provisioning of a key pair made elsewhere (a default key, A02.FR.01:
        replace it with an on-board key by A02 once installed).  Raises ValueError."""
        chain = crypto.load_certificates(chain_pem)
        try:
            key = crypto.load_key(key_pem)
        except TypeError:
            raise ValueError("the private key is encrypted; provision it unencrypted (the "
                             "directory and the file are private to the agent)") from None
        if crypto.public_key_der(key) != crypto.public_key_der(chain[0]):
            raise ValueError("the private key does not belong to the first certificate")
        self._make_current(chain, key)

    # ------------------------------------------------------------------ ISO 15118 (V2G)
    #
    # The SECC's certificate (2.0.1 SignCertificate / CertificateSigned with certificateType
    # V2GCertificate; 1.6 through the PnC DataTransfer): its own key pair and chain beside the
    # station identity, ``v2g/<fingerprint>/key.pem`` (0600) + ``chain.pem`` named by
    # ``v2g/current.json``, its CSR keys in ``pending-v2g/``.  The SECC sidecar reads it in the
    # ``iso15118`` package's layout, written by :meth:`export_iso15118`.

    def new_v2g_csr(self, common_name: str, organization: str, country: str = "", *,
                    new_round: bool = False) -> str:
        """A fresh key pair and the SECC CSR: CN = the SECC id, O = ISO15118Ctrlr
        OrganizationName, C = CountryName, DC = CPO (ISO 15118-2's SECC certificate)."""
        folder = self._sub("pending-v2g")
        keys = sorted(folder.glob("*.key"), key=lambda p: int(p.stem) if p.stem.isdigit()
                      else -1)
        if new_round:
            for path in keys:
                path.unlink(missing_ok=True)
            keys = []
        for path in keys[:max(0, len(keys) - PENDING_MAX + 1)]:
            path.unlink(missing_ok=True)
        number = max((int(p.stem) for p in keys if p.stem.isdigit()), default=0) + 1
        key = crypto.generate_key("ec")  # ISO 15118-2: secp256r1
        self._write(folder / f"{number}.key", crypto.key_to_pem(key), mode=0o600)
        log.info("new V2G CSR for CN=%s O=%s (pending key #%d)", common_name,
                 organization or "-", number)
        return crypto.make_csr(key, common_name, organization, country=country,
                               domain_component="CPO")

    def _v2g_pointer(self) -> str | None:
        try:
            data = json.loads((self.directory / "v2g" / "current.json").read_text())
        except (OSError, ValueError):
            return None
        name = data.get("current") if isinstance(data, dict) else None
        return name if isinstance(name, str) and re.fullmatch(r"[0-9a-f]{64}", name) else None

    def v2g_identity(self) -> tuple[Path, Path] | None:
        """(chain PEM, key PEM) of the SECC certificate, or None when there is none."""
        name = self._v2g_pointer()
        if name is None:
            return None
        folder = self.directory / "v2g" / name
        if not (folder / "key.pem").is_file() or not (folder / "chain.pem").is_file():
            return None
        return folder / "chain.pem", folder / "key.pem"

    def v2g_chain(self) -> list[Certificate]:
        """The SECC certificate chain (leaf, CPO sub-CAs), empty when there is none."""
        ident = self.v2g_identity()
        if ident is None:
            return []
        try:
            return crypto.load_certificates(ident[0].read_bytes())
        except (OSError, crypto.CertificateFormatError) as exc:
            log.error("the V2G certificate chain is unreadable: %s", exc)
            return []

    def v2g_renewal_due(self, before: timedelta = timedelta(days=30)) -> datetime | None:
        chain = self.v2g_chain()
        return None if not chain else chain[0].not_valid_after_utc - before

    def install_v2g_chain(self, pem: str) -> Verdict:
        """CertificateSigned of the V2GCertificate: the leaf's key must be one of the pending
        V2G CSRs' (or the key in use), no CA, valid now, and the chain must lead to an
        installed V2GRootCertificate; then it is the SECC's certificate at once."""
        limit = int(self._setting("CertificateSignedMaxChainSize"))
        if len(pem) > limit:
            return Verdict("Rejected", "ChainTooLong",
                           f"{len(pem)} characters, CertificateSignedMaxChainSize {limit}")
        try:
            chain = crypto.load_certificates(pem)
        except crypto.CertificateFormatError as exc:
            return self._invalid("InvalidFormat", str(exc))
        leaf = chain[0]
        what = crypto.describe(leaf)
        leaf_key = crypto.public_key_der(leaf)
        pending = []
        for path in sorted((self.directory / "pending-v2g").glob("*.key")):
            try:
                pending.append((path, crypto.load_key(path.read_bytes())))
            except (OSError, ValueError):
                log.warning("ignoring unreadable pending V2G key %s", path.name)
        key = next((k for _, k in pending if crypto.public_key_der(k) == leaf_key), None)
        ident = self.v2g_identity()
        if key is None and ident is not None:
            try:
                current = crypto.load_key(ident[1].read_bytes())
            except (OSError, ValueError):
                current = None
            if current is not None and crypto.public_key_der(current) == leaf_key:
                key = current
        if key is None:
            return self._invalid("KeyMismatch",
                                 f"{what}: its key is not the key of a V2G CSR this station "
                                 "sent")
        now = self.clock.now()
        problem = crypto.key_strength_problem(leaf) or (
            "the leaf is a CA certificate" if crypto.is_ca(leaf) else None)
        reason = "InvalidCertificate"
        for cert in chain:
            if problem is None and (bad := crypto.validity_problem(cert, now)) is not None:
                reason, problem = "Expired", f"{crypto.describe(cert)} is {bad}"
        if problem is None:
            try:
                crypto.verify_chain(leaf, chain[1:], self.roots("V2GRootCertificate"), now,
                                    max_depth=max(2, len(chain) + 1))
            except crypto.ChainError as exc:
                problem = f"not issued under an installed V2G root: {exc}"
        if problem is not None:
            return self._invalid(reason, f"{what}: {problem}")
        name = crypto.fingerprint(leaf)
        try:
            folder = self._sub("v2g", name)
            self._write(folder / "key.pem", crypto.key_to_pem(key), mode=0o600)
            self._write(folder / "chain.pem", "".join(crypto.to_pem(c) for c in chain).encode())
            old = self._v2g_pointer()
            self._write(self.directory / "v2g" / "current.json",
                        json.dumps({"current": name}).encode(), mode=0o600)
        except OSError as exc:
            log.error("cannot store the V2G certificate: %s", exc)
            return Verdict("Rejected", "WriteFailed", str(exc))
        if old and old != name:
            for f in (self.directory / "v2g" / old).glob("*"):
                f.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                (self.directory / "v2g" / old).rmdir()
        for path, _ in pending:
            path.unlink(missing_ok=True)
        log.info("V2G (SECC) certificate installed: %s, valid until %s", what,
                 leaf.not_valid_after_utc.isoformat())
        return Verdict("Accepted")

    def v2g_hash_data(self, algorithm: str = "SHA256") -> tuple[dict, list[dict]] | None:
        """GetInstalledCertificateIds V2GCertificateChain: the SECC leaf's hash data and its
        sub-CAs' (childCertificateHashData, at most 4), or None without a V2G certificate."""
        chain = self.v2g_chain()
        if not chain:
            return None
        pool = [*chain, *self.roots("V2GRootCertificate")]
        datas = []
        for cert in chain:
            issuer = crypto.issuer_of(cert, [c for c in pool if c is not cert]) or cert
            datas.append(crypto.hash_data(cert, issuer, algorithm))
        return datas[0], datas[1:5]

    def delete_v2g(self, hash_data: dict) -> bool:
        """M04 of the V2G certificate (its leaf's hash data): True when it was deleted."""
        chain = self.v2g_chain()
        ident = self.v2g_identity()
        if not chain or ident is None:
            return False
        pool = [*chain, *self.roots("V2GRootCertificate")]
        issuer = crypto.issuer_of(chain[0], [c for c in pool if c is not chain[0]]) or chain[0]
        algorithm = hash_data.get("hashAlgorithm", "SHA256")
        if algorithm not in crypto.HASH_ALGORITHMS or not same_hash_data(
                crypto.hash_data(chain[0], issuer, algorithm), hash_data):
            return False
        (self.directory / "v2g" / "current.json").unlink(missing_ok=True)
        for f in ident[0].parent.glob("*"):
            f.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            ident[0].parent.rmdir()
        log.info("deleted the V2G certificate %s", crypto.describe(chain[0]))
        return True

    def export_iso15118(self, pki_dir: Path) -> list[str]:
        """Write what the SECC reads into ``pki_dir`` in the ``iso15118`` package's layout
        (``iso15118_2/certs``: cpoCertChain.pem, seccLeafCert, cpoSubCA1/2Cert,
        v2gRootCACert, moRootCACert; ``iso15118_2/private_keys``: seccLeaf.key, 0600, with
        an empty password file); only what the store has: a file an earlier export wrote of
        what the store no longer has (a deleted V2G certificate or root) is removed, so the
        SECC stops using it at its next session (files put there by hand are left alone).
        Returns the files written.  The SECC key is copied there (the sidecar's directory,
        private to the agent's user)."""
        certs = Path(pki_dir) / "iso15118_2" / "certs"
        keys = Path(pki_dir) / "iso15118_2" / "private_keys"
        written: list[str] = []

        def put(path: Path, data: bytes, mode: int = 0o644) -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._write(path, data, mode)
            written.append(str(path.relative_to(pki_dir)))

        der = crypto.der
        ident = self.v2g_identity()
        chain = self.v2g_chain()
        if ident is not None and chain:
            put(certs / "cpoCertChain.pem", "".join(crypto.to_pem(c) for c in chain).encode())
            put(certs / "seccLeafCert.pem", crypto.to_pem(chain[0]).encode())
            put(certs / "seccLeafCert.der", der(chain[0]))
            subs = chain[1:]
            # leaf -> sub-CA 2 -> sub-CA 1: with one sub-CA it is the sub-CA 2
            for name, cert in zip(("cpoSubCA2Cert.der", "cpoSubCA1Cert.der"), subs,
                                  strict=False):
                put(certs / name, der(cert))
            put(keys / "seccLeaf.key", ident[1].read_bytes(), 0o600)
            put(keys / "seccLeafPassword.txt", b"", 0o600)
        for use, base in (("V2GRootCertificate", "v2gRootCACert"),
                          ("MORootCertificate", "moRootCACert")):
            roots = self.roots(use)
            if roots:
                put(certs / f"{base}.der", der(roots[0]))
                put(certs / f"{base}.pem", crypto.to_pem(roots[0]).encode())
        record = Path(pki_dir) / ".cp-agent-export.json"
        try:
            before = json.loads(record.read_text())
        except (OSError, ValueError):
            before = []
        for name in before if isinstance(before, list) else []:
            if name in written or not isinstance(name, str) or ".." in name:
                continue
            with contextlib.suppress(OSError):
                (Path(pki_dir) / name).unlink()
                log.info("removed %s from the SECC's certificates (no longer in the store)",
                         name)
        if written or before:
            self._write(record, json.dumps(written).encode(), 0o600)
        return written


__all__ = ["CSMS_ROOT", "STORE_SETTINGS", "USES", "CertificateStore", "Installed", "Verdict",
           "same_hash_data"]
