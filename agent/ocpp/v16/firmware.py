"""1.6 firmware updates: UpdateFirmware + FirmwareStatusNotification (FirmwareManagement
profile, 1.6 4.5 / 5.19 / 6.26) and the security extension's SignedUpdateFirmware +
SignedFirmwareStatusNotification (whitepaper L01, 5.13 / 5.19).

The update itself is the core's (:mod:`agent.core.firmware`): download, retries, signature and
certificate checks, waiting for transactions, installing, rebooting, confirming or rolling
back.  This block maps the requests in and the job's statuses out, through the durable outbox
(one message per state, in order, surviving the reboot that the update itself causes):

- UpdateFirmware (unsigned) reports the seven statuses plain FirmwareStatusNotification
  knows (Downloading, Downloaded, DownloadFailed, Installing, Installed, InstallationFailed;
  Idle only when triggered).  The whitepaper says a station that implements signed updates
  answers it with CALLERROR NotSupported (L01.FR.20): so it does here unless
  ``firmware.allow_unsigned`` is true (the default only with the mock installer).
- SignedUpdateFirmware answers Accepted / AcceptedCanceled / Rejected / InvalidCertificate
  and reports every status of the signed set with its requestId (L01.FR.10/21), DownloadPaused
  (L01.FR.14) and InstallVerificationFailed included.  The plain flow has neither: a pause is
  not reported (nor the Downloading that follows it), a failed verification is
  InstallationFailed.

SupportedFileTransferProtocols (the whitepaper's "required configuration key", read-only): what
:mod:`agent.transfer` speaks.

TriggerMessage(FirmwareStatusNotification) answers the job in progress or Idle (1.6 4.5);
ExtendedTriggerMessage(FirmwareStatusNotification) the last signed status sent, Idle after
Installed (L01.FR.28/29).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, ClassVar

from agent.core.settings import SettingDef
from agent.link.rpc import OcppCallError
from agent.ocpp.blocks import Block, handles
from agent.ocpp.firmware_json import built_service, signed_request, triggered_status, when
from agent.storage import OutboxItem
from agent.transfer.protocols import PROTOCOLS

if TYPE_CHECKING:  # built on the first request (Station.provide): not loaded at start-up
    from agent.core.firmware import FirmwareJob, FirmwareService

log = logging.getLogger("cp_agent.v16")

PROFILE = "FirmwareManagement"
PLAIN = "FirmwareStatusNotification"
SIGNED = "SignedFirmwareStatusNotification"


class Firmware(Block):
    PROFILE: ClassVar[str] = PROFILE
    OUTBOX_ACTIONS: ClassVar[frozenset[str]] = frozenset({PLAIN, SIGNED})
    TRIGGERS: ClassVar[dict[str, str]] = {
        PLAIN: "send_firmware_status",  # TriggerMessage
        SIGNED: "send_signed_firmware_status",  # ExtendedTriggerMessage
    }
    SETTINGS = (SettingDef("SupportedFileTransferProtocols", "csl", list(PROTOCOLS),
                           readonly=True, profile=PROFILE),)

    def __init__(self, adapter: Any) -> None:
        super().__init__(adapter)
        self._accepted = False  # a BootNotification was accepted (the firmware confirmed)
        self.when_service("firmware", self._attach)

    @property
    def service(self) -> FirmwareService | None:
        """The firmware service, built if it was not (requests need it)."""
        return getattr(self.station, "firmware", None)

    def _attach(self, service: FirmwareService) -> None:
        """The service exists (now or at start-up): its statuses are ours to report, and
        what an accepted boot told it before it existed still holds."""
        service.listeners.append(self._on_status)
        if self._accepted:
            self._boot_accepted(service)

    def _when(self, text: str | None, field: str) -> Any:
        return when(text, field, self.clock)

    # ------------------------------------------------------------------ requests

    @handles("UpdateFirmware")
    async def update_firmware(self, p: dict) -> dict:
        service = self.service
        if service is None or service.installer is None or not service.allow_unsigned:
            # Whitepaper L01.FR.20: a station doing signed updates refuses the unsigned kind.
            raise OcppCallError("NotSupported", "unsigned firmware updates are not accepted; "
                                "use SignedUpdateFirmware")
        from agent.core.firmware import FirmwareRequest

        request = FirmwareRequest(
            location=p["location"], retrieve_at=self._when(p["retrieveDate"], "retrieveDate"),
            retries=p.get("retries"), retry_interval_s=p.get("retryInterval"), signed=False)
        answer = service.request(request, after_answer=self.adapter.after_answer)
        if answer not in ("Accepted", "AcceptedCanceled"):
            log.warning("UpdateFirmware not started (%s); 1.6 cannot say so in its answer",
                        answer)
        return {}

    @handles("SignedUpdateFirmware")
    async def signed_update_firmware(self, p: dict) -> dict:
        service = self.service
        if service is None:
            return {"status": "Rejected"}
        request = signed_request(p, self.clock)
        answer = service.request(request, after_answer=self.adapter.after_answer)
        return {"status": answer.value}

    # ------------------------------------------------------------------ statuses

    def _on_status(self, job: FirmwareJob, status: str) -> None:
        """Runs inside the commit of the job's new state: queued with it, or not at all."""
        if not self.adapter.active:
            return
        if job.signed:
            payload: dict = {"status": status}
            if job.request_id is not None:
                payload["requestId"] = job.request_id
            self.adapter.enqueue(SIGNED, payload)
        else:
            status = _PLAIN_FOR.get(status, status)
            if status == "Downloading" and job.attempts > 0:
                return  # continuing after a pause the plain flow never reported
            if status in _PLAIN_STATUSES:
                self.adapter.enqueue(PLAIN, {"status": status})

    def prepare_outbox(self, item: OutboxItem, payload: dict) -> dict | None:
        """A status queued by the 2.0.1 adapter before the CSMS agreed 1.6: plain form."""
        if item.action == PLAIN:
            if payload.get("status") not in _PLAIN_STATUSES:
                return None
            return {"status": payload["status"]}
        return payload

    async def send_firmware_status(self, evse_id: int | None) -> None:
        """TriggerMessage: the status of the update in progress, else Idle (1.6 4.5)."""
        service = built_service(self.station)
        job = service.job if service is not None else None
        status = "Idle"
        if job is not None and job.active and job.status in _PLAIN_STATUSES:
            status = job.status
        await self.adapter.send_quiet(PLAIN, {"status": status})

    async def send_signed_firmware_status(self, evse_id: int | None) -> None:
        """ExtendedTriggerMessage: the last status sent, Idle after Installed (L01.FR.28/29)."""
        await self.adapter.send_quiet(SIGNED, triggered_status(built_service(self.station)))

    # ------------------------------------------------------------------ core events

    def session_started(self) -> None:
        self._accepted = True
        service = built_service(self.station)
        if service is not None:
            self._boot_accepted(service)

    @staticmethod
    def _boot_accepted(service: FirmwareService) -> None:
        service.allow_new_sessions = lambda: False  # 1.6: L01.FR.07 always
        service.boot_accepted()

    def transaction_ended(self, *args: Any) -> None:
        service = built_service(self.station)  # no service: no job waits for it
        if service is not None:
            service.kick()


# Signed-flow statuses that the plain FirmwareStatusNotification says otherwise.
_PLAIN_FOR = {"InstallVerificationFailed": "InstallationFailed"}
# The statuses plain FirmwareStatusNotification knows (agent.core.firmware's PLAIN_STATUSES,
# which tests/test_startup_imports.py keeps equal): named here so that the block does not
# import the service's module at start-up.
_PLAIN_STATUSES = frozenset({"Downloaded", "DownloadFailed", "Downloading", "Idle",
                             "InstallationFailed", "Installing", "Installed"})

__all__ = ["PROFILE", "Firmware"]
