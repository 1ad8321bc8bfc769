"""1.6 security extension (whitepaper edition 2), certificates: A02 / A03 (SignCertificate
after ExtendedTriggerMessage SignChargePointCertificate, and before the certificate expires;
CertificateSigned), M03 GetInstalledCertificateIds, M04 DeleteCertificate, M05
InstallCertificate, and the keys CpoName, CertificateSignedMaxChainSize,
CertificateStoreMaxLength, AdditionalRootCertificateCheck.

A thin mapping onto :class:`agent.security.store.CertificateStore` (``station.certificates``,
shared with 2.0.1: 1.6's CentralSystemRootCertificate is the store's CSMSRootCertificate) and
the version-neutral signing flow.  The whitepaper recommends not to resend a CSR the CSMS
accepted but never answered, so 1.6 does not (2.0.1 has CertSigningWaitMinimum for that).
The extension is no feature profile: this block adds nothing to SupportedFeatureProfiles.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, ClassVar

from agent.ocpp.blocks import Block, handles
from agent.ocpp.lazy_signing import LazySigning
from agent.security.names import CSMS_ROOT, STORE_SETTINGS

if TYPE_CHECKING:  # both built on first use (a station at profile 0/1 may never need them)
    from agent.ocpp.certificate_signing import CertificateSigning
    from agent.security.store import CertificateStore

log = logging.getLogger("cp_agent.v16")

# 1.6 CertificateUseEnumType -> the store's (2.0.1) use names, and back.
USE_16 = {"CentralSystemRootCertificate": CSMS_ROOT,
          "ManufacturerRootCertificate": "ManufacturerRootCertificate"}


class Certificates(Block):
    TRIGGERS: ClassVar[dict[str, str]] = {"SignChargePointCertificate": "send_sign_certificate"}
    SETTINGS = STORE_SETTINGS

    def __init__(self, adapter: Any) -> None:
        super().__init__(adapter)
        self._signing = LazySigning(self, self._make_signing, "v16-cert-renewal")

    def _make_signing(self) -> CertificateSigning:
        from agent.ocpp.certificate_signing import CertificateSigning

        return CertificateSigning(self.adapter, payload=lambda csr: {"csr": csr},
                                  resend_waits=lambda: [])

    @property
    def signing(self) -> CertificateSigning:
        return self._signing.flow

    @property
    def store(self) -> CertificateStore | None:
        return getattr(self.station, "certificates", None)

    # ------------------------------------------------------------------ A02 / A03

    async def send_sign_certificate(self, evse_id: int | None) -> None:
        """ExtendedTriggerMessage(SignChargePointCertificate) was answered Accepted (A02)."""
        self.signing.start("ExtendedTriggerMessage")

    def session_started(self) -> None:
        self._signing.session_started()  # A03 renewal, while a certificate store exists

    def session_ended(self) -> None:
        self._signing.session_ended()

    @handles("CertificateSigned")
    async def certificate_signed(self, p: dict) -> dict:
        store = self.store
        if store is None:
            return {"status": "Rejected"}
        return {"status": self.signing.certificate_signed(p["certificateChain"]).status}

    # ------------------------------------------------------------------ M03 / M04 / M05

    @handles("GetInstalledCertificateIds")
    async def get_installed_certificate_ids(self, p: dict) -> dict:
        store = self.store
        use = USE_16[p["certificateType"]]
        hashes = [i.hash_data() for i in store.installed([use])] if store is not None else []
        if not hashes:
            return {"status": "NotFound"}
        return {"status": "Accepted", "certificateHashData": hashes}

    @handles("DeleteCertificate")
    async def delete_certificate(self, p: dict) -> dict:
        store = self.store
        if store is None:
            return {"status": "NotFound"}
        tls = self.adapter.ctx.security_profile >= 2  # M04.FR.06: the root is in use
        return {"status": store.delete(p["certificateHashData"],
                                       keep_last_csms_root=tls).status}

    @handles("InstallCertificate")
    async def install_certificate(self, p: dict) -> dict:
        store = self.store
        if store is None:
            return {"status": "Failed"}
        return {"status": store.add_root(USE_16[p["certificateType"]],
                                         p["certificate"]).status}


__all__ = ["Certificates", "USE_16"]
