"""Plug & Charge on the OCPP side, the same on every version: what C07 / M01 / M02 / M06
decide, with the messages left to the version's block (2.0.1 / 2.1 send them as themselves,
1.6 wraps them in DataTransfer per the OCA application note "Using ISO 15118 Plug & Charge with
OCPP 1.6").

The core's ISO 15118 service (:mod:`agent.core.iso15118`, ``station.iso15118``) asks a
*contract authorizer* and a *certificate provider*; :class:`ContractAuthority` is both, built
by the active version's block with that version's way of asking (:class:`PncWire`).

Contract authorization (C07), in this order:

1. ``ISO15118PnCEnabled`` (2.x ISO15118Ctrlr.PnCEnabled) false: refused.
2. The chain is judged locally against the installed MORootCertificate / V2GRootCertificate
   roots (:func:`agent.security.crypto.contract_problem`): an expired certificate or a chain
   that is provably broken is refused at once; one whose root is not installed can only be
   judged by the CSMS.
3. The EMAID is an idToken of type eMAID for the station's authorization policy: the local
   list / cache rules hold for it as for a card (LocalPreAuthorize: an accepted entry and a
   locally valid chain authorize without a round trip, after the OCSP status of the leaf
   (M06 GetCertificateStatus, cached until its nextUpdate; on 2.1 GetCertificateChainStatus
   for every certificate of the chain in one request) did not say revoked).
4. Online: Authorize with the OCSP data of the chain (iso15118CertificateHashData) when the
   station could verify the chain; with the PEM chain (``certificate``) when it could not and
   ``CentralContractValidationAllowed`` says the CSMS may; refused (NoCertificateAvailable)
   when neither.  Accepted only when idTokenInfo is Accepted and certificateStatus (if given)
   is Accepted; the answer is cached like any Authorize answer.
5. Offline (or the CSMS did not answer): only with ``ContractValidationOffline`` and a chain
   valid against an installed root; then the offline rules of a card (local list / cache with
   LocalAuthorizeOffline, OfflineTxForUnknownId).
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from agent.clock import parse_iso
from agent.core.authorization import AuthInfo
from agent.core.model import AuthResult, Token
from agent.core.pnc_settings import PNC_SETTINGS, pnc_settings  # re-exported

if TYPE_CHECKING:
    from agent.core.iso15118 import (
        CertificateRequest,
        CertificateResponse,
        ContractRequest,
        ContractVerdict,
    )
    from agent.core.station import Station

log = logging.getLogger("cp_agent.pnc")

MAX_CERTIFICATE_PEM = 5500  # AuthorizeRequest.certificate
CONTRACT_ROOTS = ("MORootCertificate", "V2GRootCertificate")
OCSP_CACHE_MAX = 256


class PncWire(Protocol):
    """How the active version sends the Plug & Charge messages (2.0.1 payloads; the
    answer dicts are 2.0.1 response payloads, None when the CSMS could not be reached)."""

    def online(self) -> bool: ...

    async def authorize(self, payload: dict) -> dict | None: ...

    async def get_15118_ev_certificate(self, payload: dict) -> dict | None: ...

    async def get_certificate_status(self, payload: dict) -> dict | None: ...


def _key(data: dict) -> tuple[str, str, str, str]:
    return (data["hashAlgorithm"], data["issuerNameHash"].lower(),
            data["issuerKeyHash"].lower(), data["serialNumber"].lower().lstrip("0"))


class ContractAuthority:
    """C07 / M01 / M02 / M06 for one version (see the module docstring for the rules)."""

    def __init__(self, station: Station, wire: PncWire, *, version: str,
                 on_answer: Callable[[Token, dict], None] | None = None,
                 cert_install_enabled: Callable[[], bool] | None = None) -> None:
        self.station = station
        self.wire = wire
        self.version = version
        self.on_answer = on_answer
        self.cert_install_enabled = cert_install_enabled or (
            lambda: bool(station.settings.get("ContractCertificateInstallationEnabled", True)))
        # M06: OCSP results per certificate (CertificateHashData key) until nextUpdate.
        self.ocsp: dict[tuple[str, str, str, str], tuple[str, str, datetime | None]] = {}

    @property
    def settings(self) -> Any:
        return self.station.settings

    def _roots(self) -> list[Any]:
        store = getattr(self.station, "certificates", None)
        return [c for use in CONTRACT_ROOTS for c in store.roots(use)] if store else []

    # ------------------------------------------------------------------ C07

    async def authorize_contract(self, request: ContractRequest) -> ContractVerdict:
        # Asked only by a running ISO 15118 service: agent.core.iso15118 (33 generated
        # dataclass methods) is not loaded on a station without one.
        from agent.core.iso15118 import ContractVerdict
        from agent.security import crypto

        emaid = request.emaid
        if not self.settings.get("ISO15118PnCEnabled", True):
            return ContractVerdict.rejected(None, "Plug & Charge is disabled (PnCEnabled)")
        chain: list[Any] = []
        if request.certificate_chain_pem:
            try:
                chain = crypto.load_certificates(request.certificate_chain_pem)
            except crypto.CertificateFormatError as exc:
                return ContractVerdict.rejected("CertChainError", f"contract chain: {exc}")
            leaf_emaid = crypto.emaid(chain[0])
            if leaf_emaid.replace("-", "").upper() != emaid.replace("-", "").upper():
                return ContractVerdict.rejected(
                    "CertChainError", f"EMAID {emaid} is not the certificate's {leaf_emaid}")
        now = self.station.clock.now()
        roots = self._roots()
        problem = crypto.contract_problem(chain, roots, now) if chain else (
            "NoCertificateAvailable", "no contract certificate chain")
        if problem is not None and problem[0] in ("CertificateExpired", "CertChainError"):
            return ContractVerdict.rejected(problem[0], problem[1])
        locally_valid = chain and problem is None
        hash_data = [dict(h) for h in request.hash_data] or (
            crypto.ocsp_request_data(chain, roots) if locally_valid else [])
        token = Token(emaid, "eMAID")
        policy = self.station.authorization
        rules = policy.rules
        if rules is not None and rules.not_accepted() and not self.settings.get(
                "TxBeforeAcceptedEnabled", False):
            return ContractVerdict.rejected(None, "the CSMS has not accepted this station yet")
        local = policy.lookup(token)
        if local is not None and local.accepted and self.settings["LocalPreAuthorize"] \
                and locally_valid:
            # 2.1 asks about the whole chain in one GetCertificateChainStatus; 2.0.1 / 1.6
            # about the leaf (GetCertificateStatus takes one certificate).
            revoked = await self._revoked(hash_data if self._chain_capable() else hash_data[:1])
            if revoked is not None:
                return ContractVerdict.rejected("CertificateRevoked", revoked)
            return ContractVerdict.accepted_with(local)
        if self.wire.online() and not self.settings.get("DisableRemoteAuthorization", False):
            payload: dict[str, Any] = {"idToken": {"idToken": emaid, "type": "eMAID"}}
            if hash_data:
                payload["iso15118CertificateHashData"] = hash_data[:crypto.MAX_OCSP_ENTRIES]
            elif chain:
                if not self.settings.get("CentralContractValidationAllowed", True):
                    return ContractVerdict.rejected(
                        "NoCertificateAvailable", f"{problem[1] if problem else ''}; the CSMS "
                        "may not validate contracts (CentralContractValidationAllowed false)")
                if len(request.certificate_chain_pem or "") > MAX_CERTIFICATE_PEM:
                    return ContractVerdict.rejected(
                        "CertChainError", "the contract chain is too long to send")
                payload["certificate"] = request.certificate_chain_pem
            answer = await self.wire.authorize(payload)
            if answer is not None:
                if self.on_answer is not None:
                    self.on_answer(token, answer)
                info = _auth_info(answer.get("idTokenInfo"))
                policy.remember(emaid, info)
                status = answer.get("certificateStatus")
                result = AuthResult(info.status, parent=info.parent, source="online",
                                    expires_at=info.expiry)
                if info.accepted and status in (None, "Accepted"):
                    return ContractVerdict.accepted_with(result)
                return ContractVerdict.rejected(status if status != "Accepted" else None,
                                                f"CSMS: idToken {info.status}, certificate "
                                                f"{status or '-'}", result)
        # Offline: the CSMS cannot be reached (or may not be asked).
        if not self.settings.get("ContractValidationOffline", True):
            return ContractVerdict.rejected(None, "offline, and ContractValidationOffline is "
                                                  "false")
        if not locally_valid:
            return ContractVerdict.rejected(problem[0] if problem else None,
                                            f"offline: {problem[1] if problem else ''}")
        if local is not None:
            if not local.accepted:
                return ContractVerdict.rejected(None, f"offline: {local.status} ({local.source})",
                                                local)
            if self.settings["LocalAuthorizeOffline"]:
                return ContractVerdict.accepted_with(AuthResult(
                    local.status, local.parent, source="offline", expires_at=local.expires_at))
            return ContractVerdict.rejected(None, "offline: LocalAuthorizeOffline is false")
        if self.settings["AllowOfflineTxForUnknownId"]:
            return ContractVerdict.accepted_with(AuthResult("Accepted", source="offline_unknown"))
        return ContractVerdict.rejected(None, "offline: the EMAID is not known locally")

    # ------------------------------------------------------------------ M06

    async def certificate_status(self, data: dict) -> tuple[str, str | None]:
        """GetCertificateStatus for one certificate (OCSPRequestDataType): (status, the base64
        OCSP response); a cached result is used until its nextUpdate."""
        from agent.security import crypto

        key = _key(data)
        now = self.station.clock.now()
        cached = self.ocsp.get(key)
        if cached is not None and (cached[2] is None or now < cached[2]):
            return cached[0], cached[1]
        if not data.get("responderURL"):
            return "Failed", None
        res = await self.wire.get_certificate_status({"ocspRequestData": dict(data)})
        if not res or res.get("status") != "Accepted" or not res.get("ocspResult"):
            return "Failed", None
        try:
            state, next_update = crypto.ocsp_response_info(
                base64.b64decode(res["ocspResult"], validate=True))
        except (ValueError, binascii.Error) as exc:
            log.warning("GetCertificateStatus: unreadable OCSP response: %s", exc)
            return "Failed", None
        if len(self.ocsp) >= OCSP_CACHE_MAX:
            del self.ocsp[next(iter(self.ocsp))]
        self.ocsp[key] = (state, res["ocspResult"], next_update)
        return state, res["ocspResult"]

    def _chain_capable(self) -> bool:
        return callable(getattr(self.wire, "get_certificate_chain_status", None))

    async def chain_status(self, hash_data: list[dict]) -> list[str]:
        """2.1 GetCertificateChainStatus for the certificates of a chain (OCSPRequestData
        entries, leaf first): each one's status ("good", "revoked", "unknown", "failed"),
        from the cache while its nextUpdate has not passed, else asked in one request (OCSP,
        the certificate's responder URL; one without a URL cannot be asked: "failed")."""
        now = self.station.clock.now()
        states: list[str | None] = []
        ask: list[tuple[int, dict]] = []
        for i, data in enumerate(hash_data[:4]):  # the request's maxItems
            cached = self.ocsp.get(_key(data))
            if cached is not None and (cached[2] is None or now < cached[2]):
                states.append(cached[0])
            elif not data.get("responderURL"):
                states.append("failed")
            else:
                states.append(None)
                ask.append((i, data))
        if ask:
            request = [{"certificateHashData": {k: data[k] for k in (
                "hashAlgorithm", "issuerNameHash", "issuerKeyHash", "serialNumber")},
                "source": "OCSP", "urls": [data["responderURL"]]} for _, data in ask]
            res = await self.wire.get_certificate_chain_status(  # type: ignore[attr-defined]
                {"certificateStatusRequests": request})
            answers = {}
            for entry in (res or {}).get("certificateStatus") or []:
                try:
                    key = _key(entry["certificateHashData"])
                    state = str(entry["status"]).lower()
                    next_update = parse_iso(entry["nextUpdate"])
                except (KeyError, TypeError, ValueError, AttributeError):
                    log.warning("GetCertificateChainStatus: unreadable entry %r", entry)
                    continue
                answers[key] = (state, next_update)
            for i, data in ask:
                got = answers.get(_key(data))
                if got is None:
                    states[i] = "failed"
                    continue
                states[i] = got[0]
                if got[0] in ("good", "revoked"):
                    if len(self.ocsp) >= OCSP_CACHE_MAX:
                        del self.ocsp[next(iter(self.ocsp))]
                    self.ocsp[_key(data)] = (got[0], "", got[1])
        return [state or "failed" for state in states]

    async def _revoked(self, hash_data: list[dict]) -> str | None:
        """Why a certificate of the chain is revoked per OCSP (None: good, or nobody could
        say)."""
        if self._chain_capable():
            states = await self.chain_status(hash_data)
            for data, state in zip(hash_data, states, strict=False):
                if state == "revoked":
                    return f"OCSP: certificate {data['serialNumber']} is revoked"
            return None
        for data in hash_data:
            state, _ = await self.certificate_status(data)
            if state == "revoked":
                return f"OCSP: certificate {data['serialNumber']} is revoked"
        return None

    # ------------------------------------------------------------------ M01 / M02

    async def ev_certificate(self, request: CertificateRequest) -> CertificateResponse:
        from agent.core.iso15118 import CertificateResponse

        if not self.cert_install_enabled():
            log.info("EVSE %s: contract certificate %s refused: "
                     "ContractCertificateInstallationEnabled is false", request.evse_id,
                     request.action)
            return CertificateResponse("Failed")
        if not self.wire.online():
            log.info("EVSE %s: contract certificate %s needs the CSMS, which is not connected",
                     request.evse_id, request.action)
            return CertificateResponse("Failed")
        res = await self.wire.get_15118_ev_certificate({
            "iso15118SchemaVersion": request.namespace[:50],
            "action": "Install" if request.action == "install" else "Update",
            "exiRequest": request.exi_b64})
        if not res or res.get("status") != "Accepted" or not res.get("exiResponse"):
            log.info("EVSE %s: Get15118EVCertificate %s: %s", request.evse_id, request.action,
                     (res or {}).get("status", "no answer"))
            return CertificateResponse("Failed")
        return CertificateResponse("Accepted", str(res["exiResponse"]))


def _auth_info(info: Any) -> AuthInfo:
    info = info if isinstance(info, dict) else {}
    group = info.get("groupIdToken")
    parent = group.get("idToken") if isinstance(group, dict) else None
    return AuthInfo(str(info.get("status", "Invalid")), parent, info.get("cacheExpiryDateTime"))


async def v2g_renewal(clock: Any, store: Callable[[], Any], signing: Any,
                      enabled: Callable[[], bool], *, before: timedelta = timedelta(days=30),
                      check_every_s: float = 3600.0, retry_after_s: float = 86400.0) -> None:
    """A03 for the SECC (V2G) certificate, for one connection's lifetime: a signing round
    (``signing``: an :class:`agent.ocpp.certificate_signing.CertificateSigning` making V2G
    CSRs) ``before`` the certificate expires, checked at least every ``check_every_s`` on
    the injectable clock, a round that brought nothing tried again after ``retry_after_s``."""
    last: float | None = None
    while True:
        s = store()
        due = s.v2g_renewal_due(before) if s is not None else None
        now = clock.now()
        if due is not None and now >= due and enabled():
            mono = clock.monotonic()
            if not signing.busy and (last is None or mono - last >= retry_after_s):
                last = mono
                log.info("the V2G certificate expires within %s; renewing", before)
                signing.start("renewal before expiry")
            wait = check_every_s
        else:
            wait = check_every_s if due is None else min(
                check_every_s, max(1.0, (due - now).total_seconds()))
        await clock.sleep(wait)


def attach(station: Station, authority: ContractAuthority,
           schedule_source: Callable[[int, int], list[tuple[int, float]]] | None = None,
           listener: Callable[..., None] | None = None) -> bool:
    """Make ``authority`` the ISO 15118 service's authorizer and certificate provider (the
    active version's); False when the station has no ISO 15118."""
    service = getattr(station, "iso15118", None)
    if service is None:
        return False
    service.authorizer = authority
    service.certificates = authority
    if schedule_source is not None:
        service.schedule_source = schedule_source
    if listener is not None and listener not in service.listeners:
        service.listeners.append(listener)
    return True

__all__ = ["CONTRACT_ROOTS", "PNC_SETTINGS", "ContractAuthority", "PncWire", "attach",
           "pnc_settings", "v2g_renewal"]
