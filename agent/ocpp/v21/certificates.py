"""2.1 blocks A and M, certificates: the 2.0.1 block with 2.1's message changes.

What 2.1 changed in the messages of the station's own certificates and roots (schemas
compared with 2.0.1's):

- SignCertificateRequest has a ``requestId`` "to match this message with the
  CertificateSignedRequest", which carries it back: the station numbers its CSRs (persisted,
  so a CertificateSigned after a restart still matches) and logs a CertificateSigned whose
  requestId is none it sent.  The certificate is still judged by its key, the one check that
  cannot be forged, so a missing or unknown requestId does not refuse it.
- ``hashRootCertificate`` (SignCertificateRequest) is left out: this station asks for no
  particular root.
- OEMRootCertificate (ISO 15118-20) joins the root types of InstallCertificate and
  GetInstalledCertificateIds: stored and listed like the V2G and MO roots, used by nothing.
- V2G20Certificate (CertificateSigned, SignCertificate) is ISO 15118-20: Rejected like
  V2GCertificate, since no such CSR is ever sent.

GetCertificateChainStatus and GetCertificateStatus are station -> CSMS requests about EV and
V2G certificate chains (ISO 15118), which this station does not have, so it never sends them.
"""

from __future__ import annotations

import logging
from typing import ClassVar

from agent.ocpp.blocks import handles
from agent.ocpp.v201.certificates import STATION_CERT, Certificates
from agent.security.names import USES

log = logging.getLogger("cp_agent.v21")

REQUEST_ID_KEY = "v21.csr_request_id"  # the latest SignCertificate requestId sent
SENT_KEPT = 16  # requestIds of CSRs answered by a CertificateSigned that still match


class Certificates21(Certificates):
    ROOT_TYPES: ClassVar[tuple[str, ...]] = USES

    def _sign_payload(self, csr: str) -> dict:
        try:
            number = int(self.storage.get_setting(REQUEST_ID_KEY) or 0) + 1
        except ValueError:
            number = 1
        self.storage.set_setting(REQUEST_ID_KEY, str(number))
        return {"csr": csr, "certificateType": STATION_CERT, "requestId": number}

    @handles("CertificateSigned")
    async def certificate_signed(self, p: dict) -> dict:
        request_id = p.get("requestId")
        if request_id is not None and p.get("certificateType", STATION_CERT) == STATION_CERT:
            try:
                latest = int(self.storage.get_setting(REQUEST_ID_KEY) or 0)
            except ValueError:
                latest = 0
            if not latest - SENT_KEPT < request_id <= latest:
                log.info("CertificateSigned requestId %s matches no recent CSR of this "
                         "station; the certificate is judged by its key", request_id)
        return await super().certificate_signed(p)


__all__ = ["Certificates21"]
