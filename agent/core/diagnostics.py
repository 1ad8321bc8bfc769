"""Diagnostics and logs for the CSMS, version-neutral: collect one archive, upload it, retry.

1.6 GetDiagnostics, the 1.6 security extension's GetLog and 2.0.1 GetLog (N01) all ask the
same thing: put what the station knows about itself in one file and upload it to a URL, with
retries, telling the CSMS how it went.  The blocks translate the request and the states
(:class:`JobState`) into their version's messages; everything else is here once.

The archive (``<station>-<kind>-<UTC time>.tar.gz``, one top directory of the same name):

- ``manifest.json``: station, kind, the time window asked for, what each file holds;
- ``agent.log``: the agent's own log (``<state dir>/logs/agent.log`` and its rotated copies,
  oldest first) cut to the window by each line's timestamp (a line without one, such as a
  traceback, goes with the line before it);
- ``security.log``: the security log, cut the same way; a SecurityLog request gets only this;
- ``config.json`` (the configuration, secrets removed), ``settings.json`` (the OCPP settings as
  they are now, secret ones removed), ``status.json`` (what ``cp-agent ctl status`` shows),
  ``frames.log`` (the last OCPP frames, already redacted, cut to the window).

Secrets: every text member passes a last scrub that masks each secret the station knows (the
OCPP password, the CSMS-set BasicAuthPassword / AuthorizationKey, web and MQTT credentials,
the upload URL's own password) and the user info of any URL, whatever wrote the line.

One job at a time: a new request cancels the running one (2.0.1 / 1.6 GetLog answer
``AcceptedCanceled``); the old job's owner reports its end once the new request's answer is
out, before the new job's first status.  Each job reports each state once (Uploading, then
the outcome after the last attempt: the 2.0.1 errata's recommendation for N01.FR.10), never a
status per retry.

A job survives a restart: it is persisted (``diagnostics.job`` in the state file: requestId,
kind, location, window, retries, the archive's name, the attempts made, whether Uploading was
reported) when accepted, and each status is queued in the same commit as the job's new state.
The next start resumes it (:meth:`Diagnostics.resume`): the archive is collected again under
the name the CSMS was given, and uploaded with the attempts that are left (an attempt a
restart cut counts as made), without a second Uploading; when none is left the job ends at
once with its failure status.  So an upload is never left "Uploading" for the CSMS, and a
station that dies in every attempt still ends it.  A job whose owner (its version's block) is
not there after the restart is dropped with an error in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import io
import json
import logging
import re
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.clock import Clock, iso, parse_iso
from agent.logfiles import AGENT_LOG, SECURITY_LOG, log_dir, rotated_files

if TYPE_CHECKING:
    from agent.storage import Storage

log = logging.getLogger("cp_agent.diagnostics")

JOB_SETTING = "diagnostics.job"

# Without retries / retryInterval in the request the station decides (1.6 6.25, 2.0.1 N01).
DEFAULT_RETRIES = 2
DEFAULT_RETRY_INTERVAL_S = 60.0
MAX_RETRIES = 10  # a CSMS asking for a thousand retries gets ten
MASK = "***"
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]*@")
# A line's own time: ISO 8601 at its start ("T" or " ", optional fraction and zone).
_LINE_TIME = re.compile(
    r"^(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})(?:[.,](\d{1,9}))?(Z|[+-]\d{2}:?\d{2})?")


class LogKind(enum.Enum):
    DIAGNOSTICS = "diagnostics"  # 1.6 GetDiagnostics, GetLog DiagnosticsLog
    SECURITY = "securitylog"  # GetLog SecurityLog


class JobState(enum.Enum):
    UPLOADING = "Uploading"
    UPLOADED = "Uploaded"
    FAILED = "UploadFailure"
    PERMISSION_DENIED = "PermissionDenied"
    NOT_SUPPORTED = "NotSupportedOperation"
    BAD_MESSAGE = "BadMessage"
    CANCELLED = "AcceptedCanceled"  # replaced by a newer request


# agent.transfer.upload's Outcome by name: that module (and ftplib) is
# imported by the first upload, not at start-up.
_FROM_OUTCOME = {
    "UPLOADED": JobState.UPLOADED, "FAILED": JobState.FAILED,
    "PERMISSION_DENIED": JobState.PERMISSION_DENIED,
    "NOT_SUPPORTED": JobState.NOT_SUPPORTED, "BAD_MESSAGE": JobState.BAD_MESSAGE,
}


async def _upload(location: str, name: str, data: bytes) -> str:
    """The default uploader, agent.transfer.upload's, imported by the first upload."""
    from agent.transfer.upload import upload

    return await upload(location, name, data)


def line_time(line: str) -> datetime | None:
    """The timestamp a log line starts with (naive times are UTC), or None."""
    m = _LINE_TIME.match(line)
    if m is None:
        return None
    date, clock, frac, zone = m.groups()
    text = f"{date}T{clock}"
    if frac:
        text += "." + (frac + "000000")[:6]
    if zone and zone != "Z":
        text += zone if ":" in zone else f"{zone[:3]}:{zone[3:]}"
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt


@dataclass(frozen=True)
class Window:
    """The time window a request asks for; either end may be open."""

    oldest: datetime | None = None
    latest: datetime | None = None

    @property
    def valid(self) -> bool:
        return self.oldest is None or self.latest is None or self.oldest <= self.latest

    def contains(self, when: datetime) -> bool:
        if self.oldest is not None and when < self.oldest:
            return False
        return self.latest is None or when <= self.latest

    def as_dict(self) -> dict[str, str | None]:
        return {"oldest": iso(self.oldest) if self.oldest else None,
                "latest": iso(self.latest) if self.latest else None}


def cut(lines: Iterable[str], window: Window) -> Iterator[str]:
    """The lines inside ``window``; a line without a time follows the last line with one
    (lines before the first dated one cannot be placed and are kept)."""
    keep = True
    for line in lines:
        when = line_time(line)
        if when is not None:
            keep = window.contains(when)
        if keep:
            yield line


@dataclass
class Sources:
    """What the composition root lends the collector; each is read on the event loop."""

    config: Callable[[], dict[str, Any]]  # the configuration, secrets removed
    status: Callable[[], dict[str, Any]]
    frames: Callable[[], list[str]]  # recent OCPP frames as lines, already redacted
    settings: Callable[[], dict[str, Any]] = dict  # OCPP settings, secret ones removed
    secrets: Callable[[], Iterable[str]] = tuple  # every secret value the station knows


@dataclass(frozen=True)
class Archive:
    name: str
    data: bytes
    members: tuple[str, ...]


@dataclass
class UploadRequest:
    kind: LogKind
    location: str
    window: Window = field(default_factory=Window)
    retries: int | None = None
    retry_interval_s: float | None = None
    request_id: int | None = None  # GetLog's requestId (None: 1.6 GetDiagnostics)
    tag: str = ""  # which request type asked (the owning block tells its jobs apart)
    owner: str = ""  # who reports its states after a restart (see Diagnostics.register)

    @property
    def attempts(self) -> int:
        retries = DEFAULT_RETRIES if self.retries is None else self.retries
        return 1 + min(max(0, retries), MAX_RETRIES)

    @property
    def interval_s(self) -> float:
        interval = (DEFAULT_RETRY_INTERVAL_S if self.retry_interval_s is None
                    else self.retry_interval_s)
        return max(0.0, float(interval))


Report = Callable[["UploadJob", JobState], None]
Spawn = Callable[[Coroutine[Any, Any, Any], str], asyncio.Task]
FINAL_STATES = frozenset({JobState.UPLOADED, JobState.FAILED, JobState.PERMISSION_DENIED,
                          JobState.NOT_SUPPORTED, JobState.BAD_MESSAGE})


class UploadJob:
    """One request from its answer to its last status; run as a task by the owning block."""

    def __init__(self, service: Diagnostics, request: UploadRequest, name: str,
                 report: Report, replaced: UploadJob | None) -> None:
        self.service = service
        self.request = request
        self.name = name
        self._report = report
        self.replaced = replaced  # the job this one cancelled: its end is reported first
        self.state: JobState | None = None  # the last state reported
        self.task: asyncio.Task | None = None
        self.cancelled = False
        self.attempts_made = 0
        self.last_error = ""
        self.last_reason = ""  # a 2.1 reasonCode for the failure (InvalidURL, ...), or empty

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done() and not self.cancelled

    def report(self, state: JobState) -> None:
        """Queue the status for ``state`` and persist the job's new state in one commit."""
        if state is self.state:
            return  # one status per state change
        self.state = state
        try:
            with self.service.atomic():
                self._report(self, state)
                if state is JobState.UPLOADING:
                    self.service.persist(self)
                elif state in FINAL_STATES:
                    self.service.forget(self)
        except Exception:  # a reporting bug must not leave the job half-done silently
            log.exception("reporting %s of %s failed", state.value, self.name)

    def cancel(self) -> None:
        self.cancelled = True
        if self.task is not None and not self.task.done():
            self.task.cancel()

    async def run(self, before: Callable[[], Awaitable[None]] | None = None) -> JobState:
        """Collect, upload with retries, report; ``before`` lets the request's answer go out
        before the first status."""
        try:
            if before is not None:
                await before()
            if self.replaced is not None:
                self.replaced.report(JobState.CANCELLED)
            return await self._run()
        except asyncio.CancelledError:
            self.cancelled = True
            log.info("%s: cancelled (%s)", self.name, "replaced by a newer request")
            raise
        finally:
            self.service._finished(self)

    async def _run(self) -> JobState:
        from agent.transfer.upload import UploadError, parse_location, safe_url

        req = self.request
        self.report(JobState.UPLOADING)
        try:
            parse_location(req.location)
        except UploadError as exc:
            self.last_reason = exc.reason
            return self._end(JobState.BAD_MESSAGE, str(exc))
        first = self.attempts_made + 1  # after a restart: the attempts that are left
        if first > req.attempts:
            self.last_reason = self.last_reason or "Unspecified"
            return self._end(JobState.FAILED, f"the upload was cut by a restart in each of its "
                                              f"{req.attempts} attempt(s)")
        try:
            archive = await self.service.collect(req.kind, req.window, self.name,
                                                 extra_secrets=_url_secrets(req.location))
        except Exception as exc:  # noqa: BLE001 - an unreadable file must still be reported
            log.exception("%s: collecting failed", self.name)
            return self._end(JobState.FAILED, f"collecting: {exc}")
        state = JobState.FAILED
        for attempt in range(first, req.attempts + 1):
            self.attempts_made = attempt
            self.service.persist(self)  # a restart during this attempt: it counts as made
            try:
                where = await self.service.uploader(req.location, archive.name, archive.data)
            except UploadError as exc:
                state = _FROM_OUTCOME[exc.outcome.name]
                self.last_error = str(exc)
                self.last_reason = exc.reason
                log.warning("%s: upload attempt %d of %d to %s failed (%s): %s", self.name,
                            attempt, req.attempts, safe_url(req.location), state.value, exc)
                if exc.final:
                    break
                if attempt < req.attempts:
                    await self.service.clock.sleep(req.interval_s)
                continue
            log.info("%s: uploaded to %s (%d bytes)", self.name, safe_url(where),
                     len(archive.data))
            return self._end(JobState.UPLOADED, "")
        return self._end(state, self.last_error)

    def _end(self, state: JobState, detail: str) -> JobState:
        if detail and state is not JobState.UPLOADED:
            self.last_error = detail
            log.warning("%s: %s: %s", self.name, state.value, detail)
        self.report(state)
        return state


def _url_secrets(location: str) -> list[str]:
    from agent.transfer.upload import UploadError, parse_location

    try:
        target = parse_location(location)
    except UploadError:
        return []
    return [target.password] if target.password else []


Uploader = Callable[[str, str, bytes], Awaitable[str]]


class Diagnostics:
    """The station's log collector and its one upload slot (shared by the versions)."""

    def __init__(self, station_id: str, clock: Clock, state_dir: Path, sources: Sources, *,
                 uploader: Uploader | None = None, storage: Storage | None = None,
                 security_log: Callable[[], Iterable[str]] | None = None) -> None:
        self.station_id = station_id
        self.clock = clock
        self.logs = log_dir(state_dir)
        # The station's own security log, oldest line first (SecurityLog.lines: stations
        # sharing a state directory each have one of their own); read in the packing thread.
        # Without it, ``logs/security.log`` and its rotated copies.
        self.security_log = security_log
        self.sources = sources
        self.uploader: Uploader = uploader or _upload
        self.storage = storage
        self.current: UploadJob | None = None
        # owner -> how its jobs report and run (the blocks register at their start).
        self.owners: dict[str, tuple[Report, Spawn]] = {}

    # ------------------------------------------------------------------ persistence

    def register(self, owner: str, report: Report, spawn: Spawn) -> None:
        """A block that starts jobs: a job it started before a restart is resumed through
        ``report`` and ``spawn`` (its adapter's)."""
        self.owners[owner] = (report, spawn)

    def atomic(self) -> contextlib.AbstractContextManager[Any]:
        return self.storage.atomic() if self.storage is not None else contextlib.nullcontext()

    def persist(self, job: UploadJob) -> None:
        if self.storage is None or not job.request.owner:
            return
        req = job.request
        record = {"name": job.name, "owner": req.owner, "tag": req.tag, "kind": req.kind.value,
                  "location": req.location, "window": req.window.as_dict(),
                  "retries": req.retries, "retry_interval_s": req.retry_interval_s,
                  "request_id": req.request_id, "attempts": job.attempts_made,
                  "uploading": job.state is JobState.UPLOADING}
        self.storage.set_setting(JOB_SETTING, json.dumps(record, separators=(",", ":")))

    def forget(self, job: UploadJob) -> None:
        """The job ended: its record goes (unless a newer job's record replaced it)."""
        if self.storage is None:
            return
        stored = self._stored()
        if stored is not None and stored.get("name") == job.name:
            self.storage.delete_setting(JOB_SETTING)

    def _stored(self) -> dict[str, Any] | None:
        text = self.storage.get_setting(JOB_SETTING) if self.storage is not None else None
        if not text:
            return None
        try:
            record = json.loads(text)
            return record if isinstance(record, dict) else None
        except ValueError:
            return None

    def resume(self) -> UploadJob | None:
        """Agent start-up: carry on with the upload a restart cut (see the module's text)."""
        record = self._stored()
        if record is None:
            if self.storage is not None and self.storage.get_setting(JOB_SETTING):
                log.error("the upload job in the state file is unreadable; forgetting it")
                self.storage.delete_setting(JOB_SETTING)
            return None
        try:
            window = record.get("window") or {}
            request = UploadRequest(
                LogKind(record["kind"]), str(record["location"]),
                Window(parse_time(window.get("oldest")), parse_time(window.get("latest"))),
                retries=record.get("retries"), retry_interval_s=record.get("retry_interval_s"),
                request_id=record.get("request_id"), tag=str(record.get("tag", "")),
                owner=str(record["owner"]))
            name, attempts = str(record["name"]), int(record.get("attempts", 0))
        except (KeyError, ValueError, TypeError) as exc:
            log.error("the upload job in the state file is unusable (%s); forgetting it", exc)
            self.storage.delete_setting(JOB_SETTING)  # type: ignore[union-attr]
            return None
        owner = self.owners.get(request.owner)
        if owner is None:
            log.error("%s: cut by a restart, and %s is not offered any more: its status "
                      "cannot be reported; dropped", name, request.owner)
            self.storage.delete_setting(JOB_SETTING)  # type: ignore[union-attr]
            return None
        report, spawn = owner
        job = UploadJob(self, request, name, report, None)
        job.attempts_made = attempts
        if record.get("uploading"):
            job.state = JobState.UPLOADING  # the CSMS has it: not again
        log.warning("%s: cut by a restart after %d of %d attempt(s); resuming", name, attempts,
                    request.attempts)
        self.current = job
        job.task = spawn(job.run(), f"resumed-{name}")
        return job

    def archive_name(self, kind: LogKind) -> str:
        stamp = self.clock.now().strftime("%Y%m%dT%H%M%SZ")
        return f"{self.station_id}-{kind.value}-{stamp}.tar.gz"

    # ------------------------------------------------------------------ jobs

    def begin(self, request: UploadRequest, report: Report) -> UploadJob:
        """A new job (run it with :meth:`UploadJob.run` in a task and give it the task); the
        running one, if any, is cancelled now and named in ``job.replaced``."""
        previous = self.current if self.current is not None and self.current.running else None
        if previous is not None:
            log.info("%s replaces %s, which is cancelled", request.kind.value, previous.name)
            previous.cancel()
        job = UploadJob(self, request, self.archive_name(request.kind), report, previous)
        self.current = job
        self.persist(job)  # before the answer: a restart right after it still finds the job
        return job

    def _finished(self, job: UploadJob) -> None:
        if self.current is job:
            self.current = None

    def running(self, tag: str | None = None) -> UploadJob | None:
        """The job in progress (of requests tagged ``tag``), for a triggered status."""
        job = self.current
        if job is None or not job.running:
            return None
        return job if tag is None or job.request.tag == tag else None

    # ------------------------------------------------------------------ collection

    async def collect(self, kind: LogKind, window: Window, name: str | None = None, *,
                      extra_secrets: Iterable[str] = ()) -> Archive:
        """The archive for ``kind`` within ``window``: what lives on the loop is read here,
        files are read and packed in a thread (a few MB of gzip would stall the loop)."""
        name = name or self.archive_name(kind)
        secrets = sorted({s for s in [*self.sources.secrets(), *extra_secrets]
                          if s and len(s) >= 4}, key=len, reverse=True)
        docs: dict[str, str] = {}
        if kind is LogKind.DIAGNOSTICS:
            docs["config.json"] = _json(self.sources.config())
            docs["settings.json"] = _json(self.sources.settings())
            docs["status.json"] = _json(self.sources.status())
            docs["frames.log"] = "".join(line.rstrip("\n") + "\n"
                                         for line in cut(self.sources.frames(), window))
        manifest = {"station": self.station_id, "kind": kind.value, "created": iso(
            self.clock.now()), "window": window.as_dict()}
        return await asyncio.to_thread(self._pack, kind, window, name, docs, manifest,
                                       secrets)

    def _read_log(self, file_name: str, window: Window) -> str:
        out: list[str] = []
        for path in rotated_files(self.logs / file_name):
            try:
                with path.open(encoding="utf-8", errors="replace") as f:
                    out.extend(cut(f, window))
            except OSError as exc:  # rotated away while we read: what was read counts
                log.warning("reading %s: %s", path, exc)
        return "".join(out)

    def _pack(self, kind: LogKind, window: Window, name: str, docs: dict[str, str],
              manifest: dict[str, Any], secrets: list[str]) -> Archive:
        members: dict[str, str] = {}
        if kind is LogKind.DIAGNOSTICS:
            members[AGENT_LOG] = self._read_log(AGENT_LOG, window)
        members[SECURITY_LOG] = (self._read_log(SECURITY_LOG, window)
                                 if self.security_log is None
                                 else "".join(cut(self.security_log(), window)))
        members.update(docs)
        manifest["files"] = {
            AGENT_LOG: "the agent's log, lines within the window",
            SECURITY_LOG: "the security log, lines within the window",
            "config.json": "the configuration, secrets removed",
            "settings.json": "the OCPP settings as they are now, secrets removed",
            "status.json": "the station's status when collected",
            "frames.log": "the last OCPP frames (redacted), within the window",
        }
        manifest["files"] = {k: v for k, v in manifest["files"].items() if k in members}
        members = {"manifest.json": _json(manifest), **members}
        base = name.removesuffix(".tar.gz")
        buf = io.BytesIO()
        import tarfile  # only when an archive is made: 0.4 MB an idle station never needs

        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for member, text in members.items():
                data = _scrub(text, secrets).encode("utf-8")
                info = tarfile.TarInfo(f"{base}/{member}")
                info.size = len(data)
                info.mtime = int(self.clock.wall())
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))
        return Archive(name, buf.getvalue(), tuple(members))


def _json(value: Any) -> str:
    return json.dumps(value, indent=2, sort_keys=True, default=str, ensure_ascii=False) + "\n"


def _scrub(text: str, secrets: list[str]) -> str:
    """Last line of defence: URL user info and every known secret masked, whoever wrote it."""
    if "@" in text:
        text = _URL_USERINFO.sub(rf"\1{MASK}@", text)
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def parse_time(value: str | None) -> datetime | None:
    """A request's time bound (None when absent); ValueError when unreadable."""
    if not value:
        return None
    return parse_iso(value)


__all__ = ["JOB_SETTING", "Archive", "Diagnostics", "JobState", "LogKind", "Sources", "UploadJob",
           "UploadRequest", "Window", "cut", "line_time", "parse_time"]
