"""2.0.1 block L, firmware management: L01 secure firmware update and L02 (unsigned)
UpdateFirmware, FirmwareStatusNotification; PublishFirmware / UnpublishFirmware (L03/L04, local
controllers) stay unsupported.

The update itself is the core's (:mod:`agent.core.firmware`); this block maps the request in
and the job's statuses out, through the durable outbox, each with the request's requestId
(L01.FR.10), surviving the reboot the update causes.  The flows of the conformance cases:

- TC_L_01_CS: Downloading, Downloaded, SignatureVerified, Installing, InstallRebooting, then
  after the reboot BootNotification with reason FirmwareUpdate and the new firmwareVersion,
  the security event FirmwareUpdated, the connector statuses, Installed;
- TC_L_02_CS / TC_L_03_CS: InstallScheduled / DownloadScheduled for a future
  installDateTime / retrieveDateTime;
- TC_L_05_CS: a signing certificate that is not issued by an installed
  ManufacturerRootCertificate is answered InvalidCertificate (security event
  InvalidFirmwareSigningCertificate); TC_L_06_CS: a signature that does not match is
  InvalidSignature after Downloaded (security event InvalidFirmwareSignature);
- TC_L_07_CS: a location that cannot be fetched ends with DownloadFailed after the retries;
- TC_L_10_CS / TC_L_11_CS: a new request cancels one that has not begun installing
  (AcceptedCanceled), and is Rejected once installation began;
- TC_L_12_CS..TC_L_15_CS: installation waits for the transactions to end; meanwhile free
  EVSEs are Unavailable unless ChargingStation.AllowNewSessionsPendingFirmwareUpdate is true;
- TC_L_18_CS: a request without signature and certificate is Rejected, unless
  ``firmware.allow_unsigned`` (the mock installer's default) accepts it as L02 does;
- TC_L_08_CS: an image that changed on disk after SignatureVerified, or that the installer's
  own check refuses, is InstallVerificationFailed; a download that stopped part-way and waits
  for its next attempt is DownloadPaused (then Downloading again);
- a Reset while the update downloads or installs is Rejected, reasonCode FwUpdateInProgress
  (provisioning).

TriggerMessage(FirmwareStatusNotification): the last status sent with its requestId, Idle
without one after Installed or when there was no update.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, ClassVar

from agent.ocpp.blocks import handles
from agent.ocpp.firmware_json import built_service, signed_request, triggered_status
from agent.ocpp.v201.device_model import VarDef, VariableBlock, rw
from agent.ocpp.v201.provisioning import BOOT_REASON

if TYPE_CHECKING:  # built on the first request (Station.provide): not loaded at start-up
    from agent.core.firmware import FirmwareJob, FirmwareService

log = logging.getLogger("cp_agent.v201")

STATUS = "FirmwareStatusNotification"
ALLOW_NEW_SESSIONS = ("ChargingStation", "AllowNewSessionsPendingFirmwareUpdate")


class Firmware(VariableBlock):
    OUTBOX_ACTIONS: ClassVar[frozenset[str]] = frozenset({STATUS})
    TRIGGERS: ClassVar[dict[str, str]] = {STATUS: "send_firmware_status"}
    VARIABLES: ClassVar[tuple[VarDef, ...]] = (
        rw(*ALLOW_NEW_SESSIONS, "boolean", "false"),
    )

    def __init__(self, adapter: Any) -> None:
        super().__init__(adapter)
        self._accepted = False  # a BootNotification was accepted (the firmware confirmed)
        self.when_service("firmware", self._attach)

    def _attach(self, service: FirmwareService) -> None:
        """The service exists (now or at start-up): its statuses are ours to report, and
        what an accepted boot told it before it existed still holds."""
        service.listeners.append(self._on_status)
        if self.adapter.active:
            self.activate()
        if self._accepted:
            service.boot_accepted()

    @property
    def service(self) -> FirmwareService | None:
        return getattr(self.station, "firmware", None)

    def start(self) -> None:
        """Agent start-up: a job that asked for its reboot runs the new firmware now, whose
        BootNotification says FirmwareUpdate (also when the reason set with InstallRebooting
        went with an earlier boot, or the reboot was a power cut)."""
        service = built_service(self.station)  # built at start-up if a job is stored
        job = service.job if service is not None else None
        if job is not None and job.active and job.phase == "rebooting":
            self.storage.set_setting(BOOT_REASON, "FirmwareUpdate")

    def activate(self) -> None:
        """The 2.0.1 adapter is in charge: its variable decides about new sessions."""
        service = built_service(self.station)
        if service is not None:
            service.allow_new_sessions = lambda: self.dm.flag(*ALLOW_NEW_SESSIONS)


    # ------------------------------------------------------------------ L01 / L02

    @handles("UpdateFirmware")
    async def update_firmware(self, p: dict) -> dict:
        service = self.service
        if service is None:
            return {"status": "Rejected", "statusInfo": {"reasonCode": "UnsupportedRequest"}}
        self.activate()
        request = signed_request(p, self.clock)
        answer = service.request(request, after_answer=self.adapter.after_answer)
        return {"status": answer.value}

    # ------------------------------------------------------------------ statuses

    def _on_status(self, job: FirmwareJob, status: str) -> None:
        """Runs inside the commit of the job's new state: queued with it, or not at all."""
        if not self.adapter.active:
            return
        if status == "InstallRebooting":
            # The BootNotification after the reboot says why (TC_L_01_CS step 13).
            self.storage.set_setting(BOOT_REASON, "FirmwareUpdate")
        self.adapter.enqueue(STATUS, self._status_payload(job, status))

    def _status_payload(self, job: FirmwareJob, status: str) -> dict:
        payload: dict = {"status": status}
        if job.request_id is not None:
            payload["requestId"] = job.request_id
        return payload

    async def send_firmware_status(self, evse_id: int | None) -> None:
        await self.adapter.send_quiet(STATUS, triggered_status(built_service(self.station)))

    # ------------------------------------------------------------------ core events

    def session_started(self) -> None:
        self._accepted = True
        service = built_service(self.station)
        if service is not None:
            self.activate()
            service.boot_accepted()

    def transaction_ended(self, *args: Any) -> None:
        service = built_service(self.station)  # no service: no job waits for it
        if service is not None:
            service.kick()


__all__ = ["Firmware"]
