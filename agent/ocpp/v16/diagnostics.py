"""1.6 diagnostics: GetDiagnostics + DiagnosticsStatusNotification (FirmwareManagement
profile, 1.6 4.4 / 5.8 / 6.25) and the security extension's GetLog + LogStatusNotification
(whitepaper N01).

Collection, upload and retries are the core's (:mod:`agent.core.diagnostics`); this block maps
the request in and the job's states out.  GetDiagnostics answers the archive's fileName, then
reports Uploading and, after the last attempt, Uploaded or UploadFailed (1.6 has no finer
failure).  GetLog answers Accepted with the filename (AcceptedCanceled when it cancels an
upload in progress), then LogStatusNotification Uploading / Uploaded / UploadFailure /
PermissionDenied / NotSupportedOperation / BadMessage with its requestId (N01.FR.07-10).

One upload at a time, whichever request started it: a new one cancels it.  A cancelled
GetDiagnostics ends with UploadFailed (its CSMS waits for a final status and 1.6 has no
"cancelled"); a cancelled GetLog ends with the AcceptedCanceled answer to the new request (the
whitepaper's UploadLogStatusEnumType has no such status to send).  Status messages go through
the durable outbox: one per state, in order, delivered after a reconnect.  Idle is only ever
sent when triggered (1.6 7.24, whitepaper N01.FR.12).  A job a restart cut is resumed by the
core under the same fileName and requestId, or ends with its failure status.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, ClassVar

from agent.ocpp.blocks import Block, handles

if TYPE_CHECKING:  # the service is built on the first request (Station.provide)
    from agent.core.diagnostics import Diagnostics as DiagnosticsService
    from agent.core.diagnostics import JobState, UploadJob, UploadRequest

log = logging.getLogger("cp_agent.v16")

PROFILE = "FirmwareManagement"
DIAGNOSTICS = "GetDiagnostics"
GET_LOG = "GetLog"


class Diagnostics(Block):
    PROFILE: ClassVar[str] = PROFILE
    OUTBOX_ACTIONS: ClassVar[frozenset[str]] = frozenset(
        {"DiagnosticsStatusNotification", "LogStatusNotification"})
    TRIGGERS: ClassVar[dict[str, str]] = {
        "DiagnosticsStatusNotification": "send_diagnostics_status",
        "LogStatusNotification": "send_log_status",
    }

    @property
    def service(self) -> DiagnosticsService | None:
        return getattr(self.station, "diagnostics", None)

    def start(self) -> None:
        """Own the jobs this version's requests started, also across a restart (once the
        service exists: an upload to resume builds it at start-up)."""
        self.when_service("diagnostics", self._own)

    def _own(self, service: DiagnosticsService) -> None:
        for tag in (DIAGNOSTICS, GET_LOG):
            service.register(self._owner(tag), self._report, self.adapter.spawn)

    def _running(self, tag: str) -> UploadJob | None:
        """The upload of ``tag`` in progress; none while nobody used the service."""
        built = getattr(self.station, "built", None)
        service = built("diagnostics") if built is not None else self.service
        return service.running(tag) if service is not None else None

    def _owner(self, tag: str) -> str:
        return f"{self.adapter.version}/{tag}"

    # ------------------------------------------------------------------ GetDiagnostics

    @handles("GetDiagnostics")
    async def get_diagnostics(self, p: dict) -> dict:
        service = self.service
        if service is None:
            return {}  # no fileName: "no diagnostics information available" (6.26)
        from agent.core.diagnostics import LogKind, UploadRequest, Window, parse_time

        try:
            window = Window(parse_time(p.get("startTime")), parse_time(p.get("stopTime")))
        except ValueError:
            log.warning("GetDiagnostics: unreadable startTime / stopTime; no time window")
            window = Window()
        request = UploadRequest(LogKind.DIAGNOSTICS, p["location"], window,
                                retries=p.get("retries"),
                                retry_interval_s=p.get("retryInterval"), tag=DIAGNOSTICS)
        job = self._start(service, request)
        return {"fileName": job.name}

    # ------------------------------------------------------------------ GetLog (security)

    @handles("GetLog")
    async def get_log(self, p: dict) -> dict:
        from agent.core.diagnostics import LogKind, UploadRequest, Window, parse_time

        service = self.service
        params = p["log"]
        try:
            window = Window(parse_time(params.get("oldestTimestamp")),
                            parse_time(params.get("latestTimestamp")))
        except ValueError:
            return {"status": "Rejected"}
        if service is None or not window.valid:
            return {"status": "Rejected"}
        kind = {"DiagnosticsLog": LogKind.DIAGNOSTICS, "SecurityLog": LogKind.SECURITY}
        request = UploadRequest(kind[p["logType"]], params["remoteLocation"], window,
                                retries=p.get("retries"),
                                retry_interval_s=p.get("retryInterval"),
                                request_id=p["requestId"], tag=GET_LOG)
        job = self._start(service, request)
        status = "AcceptedCanceled" if job.replaced is not None else "Accepted"
        return {"status": status, "filename": job.name}

    def _start(self, service: DiagnosticsService, request: UploadRequest) -> UploadJob:
        request.owner = self._owner(request.tag)
        job = service.begin(request, self._report)
        job.task = self.adapter.spawn(job.run(self.adapter.after_answer),
                                      f"v16-{request.tag}-{job.name}")
        return job

    # ------------------------------------------------------------------ statuses

    def _report(self, job: UploadJob, state: JobState) -> None:
        from agent.core.diagnostics import JobState  # loaded: the job reporting is its own

        if job.request.tag == DIAGNOSTICS:
            status = {JobState.UPLOADING: "Uploading", JobState.UPLOADED: "Uploaded"}.get(
                state, "UploadFailed")
            self.adapter.enqueue("DiagnosticsStatusNotification", {"status": status})
            return
        if state is JobState.CANCELLED:
            return  # the new request's AcceptedCanceled said it; 1.6 has no such status
        payload = {"status": state.value, "requestId": job.request.request_id}
        self.adapter.enqueue("LogStatusNotification", payload)

    async def send_diagnostics_status(self, evse_id: int | None) -> None:
        """TriggerMessage(DiagnosticsStatusNotification): Uploading while one runs, else Idle."""
        running = self._running(DIAGNOSTICS)
        status = "Uploading" if running is not None else "Idle"
        await self.adapter.send_quiet("DiagnosticsStatusNotification", {"status": status})

    async def send_log_status(self, evse_id: int | None) -> None:
        """ExtendedTriggerMessage(LogStatusNotification): the upload in progress with its
        requestId, else Idle without one (N01.FR.12)."""
        running = self._running(GET_LOG)
        payload: dict = {"status": "Idle"}
        if running is not None:
            payload = {"status": "Uploading", "requestId": running.request.request_id}
        await self.adapter.send_quiet("LogStatusNotification", payload)


__all__ = ["PROFILE", "Diagnostics"]
