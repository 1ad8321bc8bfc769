"""2.0.1 block N, N01 Retrieve Log Information: GetLog and LogStatusNotification.

Collection, upload and retries are the core's (:mod:`agent.core.diagnostics`); this block maps
the request in and the job's states out (TC_N_25_CS, TC_N_26_CS, TC_N_35_CS, TC_N_36_CS):

- GetLog is Accepted with the archive's filename (N01.FR.01); Rejected only when its
  oldestTimestamp is after its latestTimestamp or cannot be read;
- LogStatusNotification Uploading, then after the last attempt Uploaded, or the failure as
  precisely as known: PermissionDenied (credentials refused), NotSupportedOperation (the
  server lacks the method / command), BadMessage (an unusable location, a protocol
  mismatch), else UploadFailure (N01.FR.08-10, the errata's "after all retry attempts");
  every one with the request's requestId (N01.FR.07);
- a GetLog while an upload runs cancels it and is answered AcceptedCanceled; the old upload
  then ends with LogStatusNotification AcceptedCanceled (its requestId), before the new
  one's Uploading (TC_N_36_CS; the whitepaper's N01.FR.11 for 1.6);
- TriggerMessage(LogStatusNotification): Uploading with the requestId while one runs, else
  Idle without a requestId (the schema: requestId is optional only then).

Statuses go through the durable outbox: one per state, in order, delivered after a reconnect.
An upload a restart cut is resumed by the core (same filename and requestId, no second
Uploading) or, with no attempt left, ends with UploadFailure: never left Uploading.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, ClassVar

from agent.ocpp.blocks import Block, handles

if TYPE_CHECKING:  # the service is built on the first request (Station.provide)
    from agent.core.diagnostics import Diagnostics as DiagnosticsService
    from agent.core.diagnostics import JobState, UploadJob

log = logging.getLogger("cp_agent.v201")


class Diagnostics(Block):
    OUTBOX_ACTIONS: ClassVar[frozenset[str]] = frozenset({"LogStatusNotification"})
    TRIGGERS: ClassVar[dict[str, str]] = {"LogStatusNotification": "send_log_status"}

    @property
    def service(self) -> DiagnosticsService | None:
        return getattr(self.station, "diagnostics", None)

    def start(self) -> None:
        """Own this version's GetLog jobs, also across a restart (once the service exists:
        an upload to resume builds it at start-up)."""
        self.when_service("diagnostics", self._own)

    def _own(self, service: DiagnosticsService) -> None:
        service.register(self._owner, self._report, self.adapter.spawn)

    @property
    def _owner(self) -> str:
        return f"{self.adapter.version}/GetLog"

    @handles("GetLog")
    async def get_log(self, p: dict) -> dict:
        from agent.core.diagnostics import LogKind, UploadRequest, Window, parse_time

        service = self.service
        params = p["log"]
        try:
            window = Window(parse_time(params.get("oldestTimestamp")),
                            parse_time(params.get("latestTimestamp")))
        except ValueError:
            return _rejected("InvalidValue", "oldestTimestamp / latestTimestamp unreadable")
        if not window.valid:
            return _rejected("InvalidValue", "oldestTimestamp is after latestTimestamp")
        if service is None:
            return _rejected("UnsupportedRequest", "no log collector on this station")
        kind = {"DiagnosticsLog": LogKind.DIAGNOSTICS, "SecurityLog": LogKind.SECURITY}
        request = UploadRequest(kind[p["logType"]], params["remoteLocation"], window,
                                retries=p.get("retries"),
                                retry_interval_s=p.get("retryInterval"),
                                request_id=p["requestId"], tag="GetLog", owner=self._owner)
        job = service.begin(request, self._report)
        job.task = self.adapter.spawn(job.run(self.adapter.after_answer),
                                      f"v201-GetLog-{job.name}")
        status = "AcceptedCanceled" if job.replaced is not None else "Accepted"
        return {"status": status, "filename": job.name}

    def _report(self, job: UploadJob, state: JobState) -> None:
        payload = {"status": state.value, "requestId": job.request.request_id}
        self.adapter.enqueue("LogStatusNotification", payload)

    async def send_log_status(self, evse_id: int | None) -> None:
        built = getattr(self.station, "built", None)  # nothing runs while nobody used it
        service = built("diagnostics") if built is not None else self.service
        running = service.running() if service is not None else None
        payload: dict[str, Any] = {"status": "Idle"}
        if running is not None and running.request.request_id is not None:
            payload = {"status": "Uploading", "requestId": running.request.request_id}
        await self.adapter.send_quiet("LogStatusNotification", payload)


def _rejected(code: str, info: str) -> dict:
    return {"status": "Rejected", "statusInfo": {"reasonCode": code, "additionalInfo": info}}


__all__ = ["Diagnostics"]
