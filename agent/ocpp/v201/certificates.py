"""2.0.1 blocks A and M, certificates: A02 / A03 (the station certificate signed by the CSMS's
CA, on request and before it expires), M03 GetInstalledCertificateIds, M04 DeleteCertificate,
M05 InstallCertificate, and the SecurityCtrlr variables of the certificate store.

A thin mapping onto :class:`agent.security.store.CertificateStore` (``station.certificates``)
and the version-neutral signing flow (:mod:`agent.ocpp.certificate_signing`).  The ISO 15118
V2G (SECC) certificate is the Plug & Charge block's (:mod:`agent.ocpp.v201.iso15118`): a
CertificateSigned of a V2GCertificate goes to it, GetInstalledCertificateIds lists its chain as
V2GCertificateChain; without that block (or a store) it is Rejected as before.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, ClassVar

from agent.ocpp.blocks import handles
from agent.ocpp.lazy_signing import LazySigning
from agent.ocpp.v201.device_model import VarDef, VariableBlock, ro, rw
from agent.security.names import STORE_SETTINGS, USES

if TYPE_CHECKING:  # both built on first use (a station at profile 0/1 may never need them)
    from agent.ocpp.certificate_signing import CertificateSigning
    from agent.security.store import CertificateStore, Verdict

log = logging.getLogger("cp_agent.v201")

STATION_CERT = "ChargingStationCertificate"


def _answer(verdict: Verdict) -> dict[str, Any]:
    out: dict[str, Any] = {"status": verdict.status}
    info = verdict.status_info()
    if info is not None and verdict.status != "Accepted":
        out["statusInfo"] = info
    return out


class Certificates(VariableBlock):
    # The root types of this version's messages (2.1 adds OEMRootCertificate).
    ROOT_TYPES: ClassVar[tuple[str, ...]] = tuple(u for u in USES if u != "OEMRootCertificate")
    TRIGGERS: ClassVar[dict[str, str]] = {
        "SignChargingStationCertificate": "send_sign_certificate"}
    SETTINGS = STORE_SETTINGS
    VARIABLES: ClassVar[tuple[VarDef, ...]] = (
        rw("SecurityCtrlr", "OrganizationName", "string", max_limit=50, setting="CpoName"),
        rw("SecurityCtrlr", "CertSigningWaitMinimum", "integer", "300", unit="s",
           min_limit=0, max_limit=86400),
        rw("SecurityCtrlr", "CertSigningRepeatTimes", "integer", "1", min_limit=0,
           max_limit=10),
        ro("SecurityCtrlr", "AdditionalRootCertificateCheck", "boolean",
           setting="AdditionalRootCertificateCheck"),
        ro("SecurityCtrlr", "MaxCertificateChainSize", "integer", max_limit=10000,
           setting="CertificateSignedMaxChainSize"),
    )

    def __init__(self, adapter: Any) -> None:
        super().__init__(adapter)
        self._signing = LazySigning(self, self._make_signing,
                                    f"{adapter.version.replace('.', '')}-cert-renewal")

    def _make_signing(self) -> CertificateSigning:
        from agent.ocpp.certificate_signing import CertificateSigning

        return CertificateSigning(self.adapter, payload=self._sign_payload,
                                  resend_waits=self._resend_waits)

    @property
    def signing(self) -> CertificateSigning:
        return self._signing.flow

    def live_variables(self) -> list[VarDef]:
        return [ro("SecurityCtrlr", "CertificateEntries", "integer",
                   lambda: str(self.store.entries() if self.store is not None else 0),
                   max_limit=self.settings["CertificateStoreMaxLength"])]

    @property
    def store(self) -> CertificateStore | None:
        return getattr(self.station, "certificates", None)

    # ------------------------------------------------------------------ A02 / A03

    def _sign_payload(self, csr: str) -> dict:
        return {"csr": csr, "certificateType": STATION_CERT}

    def _resend_waits(self) -> list[float]:
        """A02.FR.17/18: CertSigningWaitMinimum, doubled after each wait, for
        CertSigningRepeatTimes doublings (TC_A_23_CS: 1 -> resends after W and 2W)."""
        first = self.dm.integer("SecurityCtrlr", "CertSigningWaitMinimum")
        if first <= 0:
            return []
        times = self.dm.integer("SecurityCtrlr", "CertSigningRepeatTimes")
        return [float(first * 2 ** k) for k in range(max(0, times) + 1)]

    async def send_sign_certificate(self, evse_id: int | None) -> None:
        """TriggerMessage(SignChargingStationCertificate) was answered Accepted (A02)."""
        self.signing.start("TriggerMessage")

    def session_started(self) -> None:
        self._signing.session_started()  # A03 renewal, while a certificate store exists

    def session_ended(self) -> None:
        self._signing.session_ended()

    @handles("CertificateSigned")
    async def certificate_signed(self, p: dict) -> dict:
        kind = p.get("certificateType", STATION_CERT)
        store = self.store
        pnc = self._pnc()
        if kind == "V2GCertificate" and store is not None and pnc is not None:
            return await pnc.v2g_certificate_signed(p["certificateChain"])
        if kind != STATION_CERT or store is None:
            log.warning("CertificateSigned of %s refused: %s", kind,
                        "no certificate store" if store is None else "ISO 15118 not supported")
            return {"status": "Rejected", "statusInfo": {"reasonCode": "NotSupported"}}
        return _answer(self.signing.certificate_signed(p["certificateChain"]))

    # ------------------------------------------------------------------ M03 / M04 / M05

    @handles("GetInstalledCertificateIds")
    async def get_installed_certificate_ids(self, p: dict) -> dict:
        store = self.store
        wanted = p.get("certificateType") or [*self.ROOT_TYPES, "V2GCertificateChain"]
        chain = []
        if store is not None:
            for item in store.installed([u for u in wanted if u in self.ROOT_TYPES]):
                chain.append({"certificateType": item.use,
                              "certificateHashData": item.hash_data()})
            v2g = store.v2g_hash_data() if "V2GCertificateChain" in wanted else None
            if v2g is not None:  # the SECC certificate (ISO 15118), with its sub-CAs
                leaf, children = v2g
                entry = {"certificateType": "V2GCertificateChain", "certificateHashData": leaf}
                if children:
                    entry["childCertificateHashData"] = children
                chain.append(entry)
        if not chain:
            return {"status": "NotFound"}
        return {"status": "Accepted", "certificateHashDataChain": chain}

    @handles("DeleteCertificate")
    async def delete_certificate(self, p: dict) -> dict:
        store = self.store
        if store is None:
            return {"status": "NotFound"}
        data = {k: v for k, v in p["certificateHashData"].items() if k != "customData"}
        verdict = store.delete(data, keep_last_csms_root=self._tls())
        if verdict.status == "NotFound" and store.delete_v2g(data):
            self._pki_changed()
            return {"status": "Accepted"}
        if verdict.status == "Accepted":
            self._pki_changed()
        return _answer(verdict)

    @handles("InstallCertificate")
    async def install_certificate(self, p: dict) -> dict:
        store = self.store
        if store is None:
            return {"status": "Failed", "statusInfo": {"reasonCode": "NoStore"}}
        verdict = store.add_root(p["certificateType"], p["certificate"])
        if verdict.status == "Accepted":
            self._pki_changed()
        return _answer(verdict)

    def _pnc(self) -> Any:
        """The Plug & Charge block of this version (agent/ocpp/v201/iso15118.py), if any and
        if the station speaks ISO 15118 at all."""
        if getattr(self.station, "iso15118", None) is None:
            return None
        return next((b for b in self.adapter.blocks if hasattr(b, "v2g_certificate_signed")),
                    None)

    def _pki_changed(self) -> None:
        """A V2G / MO root came or went: the SECC's copy of them is written anew."""
        pnc = self._pnc()
        if pnc is not None:
            pnc.pki_changed()

    def _tls(self) -> bool:
        """M04.FR.06: the CSMS root is in use when the connection is TLS (profile 2 or 3)."""
        return self.adapter.ctx.security_profile >= 2


__all__ = ["Certificates"]
