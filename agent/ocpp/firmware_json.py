"""The signed firmware request as both versions spell it: the 1.6 security extension's
SignedUpdateFirmware and 2.0.1 / 2.1 UpdateFirmware carry the same ``firmware`` object, so the
mapping to the core's :class:`FirmwareRequest` is written once here."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import TYPE_CHECKING, Any

from agent.clock import Clock, parse_iso

if TYPE_CHECKING:  # built on the first request (Station.provide): not loaded at start-up
    from agent.core.firmware import FirmwareRequest, FirmwareService

log = logging.getLogger("cp_agent.firmware")


def when(text: str | None, field: str, clock: Clock) -> datetime | None:
    """A request's date-time; one the CSMS garbled is taken as now (logged), not refused:
    the schema already checked it is a string, and an update should not fail on it."""
    if text is None:
        return None
    try:
        return parse_iso(text)
    except ValueError:
        log.warning("%s %r is not a date-time; taken as now", field, text)
        return clock.now()


def signed_request(p: dict, clock: Clock) -> FirmwareRequest:
    """SignedUpdateFirmware (1.6) / UpdateFirmware (2.x) -> the core's request."""
    from agent.core.firmware import FirmwareRequest

    fw = p["firmware"]
    return FirmwareRequest(
        location=fw["location"],
        retrieve_at=when(fw["retrieveDateTime"], "retrieveDateTime", clock),
        install_at=when(fw.get("installDateTime"), "installDateTime", clock),
        retries=p.get("retries"), retry_interval_s=p.get("retryInterval"),
        request_id=p["requestId"], signing_certificate=fw.get("signingCertificate"),
        signature=fw.get("signature"), signed=True)


def built_service(station: Any) -> FirmwareService | None:
    """The station's firmware service if something built it (a request, or a job the state
    file holds, at start-up), without building it: while it is not, there is no job, and
    every question about one has the no-job answer."""
    built = getattr(station, "built", None)
    return built("firmware") if built is not None else getattr(station, "firmware", None)


def triggered_status(service: FirmwareService | None) -> dict:
    """A triggered (Signed)FirmwareStatusNotification: the last status sent, with its
    requestId, or Idle after the update ended (1.6 security extension and 2.x alike)."""
    status, request_id = service.reported_status() if service is not None else ("Idle", None)
    payload: dict = {"status": status}
    if request_id is not None and status != "Idle":
        payload["requestId"] = request_id
    return payload
