"""2.1 GetLog (N01): the 2.0.1 block; 2.1's new logType DataCollectorLog is refused, and the
new ``statusInfo`` of LogStatusNotification explains a failure: a reasonCode of the 2.1
appendix where one fits (RedirectNotAllowed for a server that redirects the upload, InvalidURL
for an unusable location, InvalidCertificate for a server certificate that does not verify,
else Unspecified) and the reason in additionalInfo (no credentials).

The other 2.1 changes need nothing here: ``remoteLocation`` up to 2000 characters, ``retries``
with minimum 0 ("0: no retries", as the 2.0.1 block reads it), a longer ``filename``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agent.ocpp.blocks import handles
from agent.ocpp.v201.diagnostics import Diagnostics

if TYPE_CHECKING:
    from agent.core.diagnostics import JobState, UploadJob

# LogEnumType values whose logs this station collects (the 2.0.1 block's).
COLLECTED = frozenset({"DiagnosticsLog", "SecurityLog"})
# The values of agent.core.diagnostics' failed JobStates: an idle station loads neither that
# module nor the upload client (with ftplib) for this block (issue 18; a test compares them).
FAILED = frozenset({"UploadFailure", "PermissionDenied", "NotSupportedOperation",
                    "BadMessage"})
MAX_INFO = 1024  # StatusInfoType.additionalInfo


class Diagnostics21(Diagnostics):
    @handles("GetLog")
    async def get_log(self, p: dict) -> dict:
        if p["logType"] not in COLLECTED:
            return {"status": "Rejected",
                    "statusInfo": {"reasonCode": "UnsupportedParam",
                                   "additionalInfo": f"logType {p['logType']} is not collected "
                                                     "by this station (no DataCollector)"}}
        return await super().get_log(p)

    def _report(self, job: UploadJob, state: JobState) -> None:
        payload: dict = {"status": state.value, "requestId": job.request.request_id}
        if state.value in FAILED and job.last_error:
            # Loaded by the upload that failed already; never on an idle station's path.
            from agent.transfer.upload import safe_url

            payload["statusInfo"] = {"reasonCode": job.last_reason or "Unspecified",
                                     "additionalInfo": safe_url(job.last_error)[:MAX_INFO]}
        self.adapter.enqueue("LogStatusNotification", payload)
