"""2.0.1 blocks A and M, certificates: A02 / A03 (the station certificate signed by the CSMS's
CA, on request and before it expires), M03 GetInstalledCertificateIds, M04 DeleteCertificate,
M05 InstallCertificate, and the SecurityCtrlr variables of the certificate store.

A thin mapping onto :class:`agent.security.store.CertificateStore` (``station.certificates``)
and the version-neutral signing flow (:mod:`agent.ocpp.certificate_signing`).  ISO 15118 is
out of scope: no V2G CSR is ever generated, so a CertificateSigned of a V2GCertificate is
Rejected and the V2G trigger messages are not claimed.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from agent.ocpp.blocks import handles
from agent.ocpp.certificate_signing import CertificateSigning
from agent.ocpp.v201.device_model import VarDef, VariableBlock, ro, rw
from agent.security.store import STORE_SETTINGS, USES, CertificateStore, Verdict

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
        self.signing = CertificateSigning(adapter, payload=self._sign_payload,
                                          resend_waits=self._resend_waits)

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
        self.adapter.spawn(self.signing.renewal(), "v201-cert-renewal", session=True)

    @handles("CertificateSigned")
    async def certificate_signed(self, p: dict) -> dict:
        kind = p.get("certificateType", STATION_CERT)
        store = self.store
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
            # V2GCertificateChain: this station has no V2G certificate (ISO 15118 out of scope).
            for item in store.installed([u for u in wanted if u in self.ROOT_TYPES]):
                chain.append({"certificateType": item.use,
                              "certificateHashData": item.hash_data()})
        if not chain:
            return {"status": "NotFound"}
        return {"status": "Accepted", "certificateHashDataChain": chain}

    @handles("DeleteCertificate")
    async def delete_certificate(self, p: dict) -> dict:
        store = self.store
        if store is None:
            return {"status": "NotFound"}
        data = {k: v for k, v in p["certificateHashData"].items() if k != "customData"}
        return _answer(store.delete(data, keep_last_csms_root=self._tls()))

    @handles("InstallCertificate")
    async def install_certificate(self, p: dict) -> dict:
        store = self.store
        if store is None:
            return {"status": "Failed", "statusInfo": {"reasonCode": "NoStore"}}
        return _answer(store.add_root(p["certificateType"], p["certificate"]))

    def _tls(self) -> bool:
        """M04.FR.06: the CSMS root is in use when the connection is TLS (profile 2 or 3)."""
        return self.adapter.ctx.security_profile >= 2


__all__ = ["Certificates"]
