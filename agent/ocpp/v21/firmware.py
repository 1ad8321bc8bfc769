"""2.1 firmware update (L01 / L02): the 2.0.1 block; 2.1 adds ``statusInfo`` to
FirmwareStatusNotification, which this station fills for the failure statuses (and
DownloadPaused) with a reasonCode of the 2.1 appendix where one fits (InvalidURL,
OutOfStorage, InvalidCertificate for a file server whose certificate does not verify, else
Unspecified) and the reason in additionalInfo, so a CSMS need not read the station's log.

The other 2.1 changes to these messages need nothing here: a longer ``location`` (2000), and
``retries`` with minimum 0 ("0: no retries"), which is how the 2.0.1 block reads it already.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.ocpp.v201.firmware import Firmware

if TYPE_CHECKING:
    from agent.core.firmware import FirmwareJob

# Statuses that end (or pause) an update for a reason the CSMS should read: agent.core.firmware's
# FwStatus values (a StrEnum, so its members compare equal), spelled out so that an idle station
# does not import the firmware service for this block (issue 18; a test compares the two).
EXPLAINED = frozenset({"DownloadFailed", "DownloadPaused", "InstallationFailed",
                       "InstallVerificationFailed", "InvalidSignature"})
MAX_INFO = 1024  # StatusInfoType.additionalInfo


class Firmware21(Firmware):
    def _status_payload(self, job: FirmwareJob, status: str) -> dict:
        payload = super()._status_payload(job, status)
        if status in EXPLAINED and job.detail:
            payload["statusInfo"] = {"reasonCode": job.reason or "Unspecified",
                                     "additionalInfo": job.detail[:MAX_INFO]}
        return payload


__all__ = ["Firmware21"]
