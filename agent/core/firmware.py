"""Firmware updates, version-neutral: one job at a time, a persisted state machine.

Both versions' blocks (1.6 UpdateFirmware / SignedUpdateFirmware, 2.0.1 UpdateFirmware) turn
the CSMS's request into a :class:`FirmwareRequest` and call :meth:`FirmwareService.request`;
every status the job enters is handed to the service's listeners (the blocks), which map it to
their FirmwareStatusNotification / SignedFirmwareStatusNotification and queue it in the durable
outbox *in the same commit* as the job's new state, so a power cut loses neither.

The job's phases, persisted as JSON in the state file (``firmware.job``)::

    scheduled -> downloading -> downloaded -> verified -> installing -> rebooting
              -> confirming -> done

- ``scheduled``: waits for retrieveDateTime (DownloadScheduled when that is in the future).
- ``downloading``: the download (:mod:`agent.transfer.download`) with ``retries`` more attempts
  ``retryInterval`` apart on the injectable clock; a restart continues the partial file.  An
  attempt that stopped part-way (the connection dropped after some bytes) is DownloadPaused
  while it waits for the next attempt, which continues the partial file (Downloading again).
- ``downloaded``: the signature over the file is checked (:mod:`agent.security.signing`);
  InvalidSignature (and the security event InvalidFirmwareSignature) ends the job, the file
  is deleted, nothing is installed.  The signing certificate was checked against the
  ManufacturerRootCertificates before the request was accepted (InvalidCertificate answer and
  the security event InvalidFirmwareSigningCertificate).  The SHA-256 of the verified file is
  kept in the job: right before the installer gets the file it is hashed again, and a file
  that changed since (a damaged disk, a tampered file, a cut during the wait) is
  InstallVerificationFailed, never installed.  An installer can report the same for its own
  check of the image (the command installer's exit status 65).
- ``verified``: waits for installDateTime (InstallScheduled), then until no transaction runs
  (InstallScheduled; EVSEs not in use are made Unavailable through the core's availability
  command, and each that becomes free follows, L01.FR.06/07, unless 2.0.1
  AllowNewSessionsPendingFirmwareUpdate is true), then the platform installer installs it.
- ``rebooting``: InstallRebooting was reported, the installer reboots.  The next start finds
  this phase: the new firmware runs and reports itself in BootNotification (2.0.1 reason
  FirmwareUpdate).
- ``confirming``: once a BootNotification is accepted the installer confirms the update
  (Installed, security event FirmwareUpdated); without one within ``confirm_timeout_s``, or if
  the process starts again still in this phase, the installer rolls back (InstallationFailed).

A new request supersedes a job that has not begun installing (2.0.1 / whitepaper L01.FR.26:
AcceptedCanceled); one that has is not interrupted (Rejected, L01.FR.27).

Each status is reported once per job (a restart that resumes a download or an installation
does not repeat Downloading / Installing).  After each persisted phase the installer's
:meth:`~agent.platform.installer.Installer.checkpoint` runs (the mock installer can hold the
update there, for power-cut tests and demonstrations).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import shutil
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.clock import Clock, iso, parse_iso, sleep_or
from agent.platform.installer import Installer, InstallError

if TYPE_CHECKING:
    from cryptography.x509 import Certificate

    from agent.core.station import Station
    from agent.storage import Storage

log = logging.getLogger("cp_agent.firmware")

JOB_SETTING = "firmware.job"
# A power cut during installation is retried once; a second one fails the update (a firmware
# whose installation takes the station down must not loop forever).
MAX_INSTALL_ATTEMPTS = 2
TX_RECHECK_S = 30.0  # while waiting for transactions to end (also woken by their end)


class FwStatus(StrEnum):
    """Every status of 2.0.1 FirmwareStatusEnumType (= 1.6 security extension's); plain 1.6
    FirmwareStatusNotification knows the first seven."""

    IDLE = "Idle"
    DOWNLOADING = "Downloading"
    DOWNLOADED = "Downloaded"
    DOWNLOAD_FAILED = "DownloadFailed"
    INSTALLING = "Installing"
    INSTALLED = "Installed"
    INSTALLATION_FAILED = "InstallationFailed"
    DOWNLOAD_SCHEDULED = "DownloadScheduled"
    DOWNLOAD_PAUSED = "DownloadPaused"
    INSTALL_REBOOTING = "InstallRebooting"
    INSTALL_SCHEDULED = "InstallScheduled"
    INSTALL_VERIFICATION_FAILED = "InstallVerificationFailed"
    INVALID_SIGNATURE = "InvalidSignature"
    SIGNATURE_VERIFIED = "SignatureVerified"


PLAIN_STATUSES = frozenset(list(FwStatus)[:7])


class Answer(StrEnum):
    """UpdateFirmware(Response) statuses: 2.0.1 UpdateFirmwareStatusEnumType, 1.6 security
    extension's UpdateFirmwareStatusEnumType."""

    ACCEPTED = "Accepted"
    REJECTED = "Rejected"
    ACCEPTED_CANCELED = "AcceptedCanceled"
    INVALID_CERTIFICATE = "InvalidCertificate"
    REVOKED_CERTIFICATE = "RevokedCertificate"


@dataclass
class FirmwareRequest:
    """What the CSMS asked, in neutral terms."""

    location: str
    retrieve_at: datetime
    install_at: datetime | None = None
    retries: int | None = None
    retry_interval_s: float | None = None
    request_id: int | None = None
    signing_certificate: str | None = None
    signature: str | None = None
    # The signed flow (1.6 SignedUpdateFirmware, 2.0.1): its statuses and the requestId.
    signed: bool = True


@dataclass
class FirmwareJob:
    """One update, as persisted; ``status`` is the last one reported."""

    seq: int
    location: str
    retrieve_at: str
    install_at: str | None
    retries: int
    retry_interval_s: float
    request_id: int | None
    signing_certificate: str | None
    signature: str | None
    signed: bool
    phase: str = "scheduled"
    status: str | None = None
    file: str = "firmware.bin"
    attempts: int = 0
    install_attempts: int = 0
    held: list[int] = field(default_factory=list)
    version: str | None = None
    confirm_by: float | None = None
    detail: str = ""
    bytes: int = 0
    total: int | None = None
    # SHA-256 (hex) of the image as verified; checked again right before installing.
    digest: str | None = None
    # Why the job failed, as a reasonCode (2.1 statusInfo): InvalidURL, OutOfStorage, ...
    reason: str = ""

    @property
    def active(self) -> bool:
        return self.phase != "done"

    @property
    def past_point_of_no_return(self) -> bool:
        return self.phase in ("installing", "rebooting", "confirming")

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> FirmwareJob | None:
        try:
            data = json.loads(text)
            names = {f.name for f in dataclasses.fields(cls)}
            return cls(**{k: v for k, v in data.items() if k in names})
        except (ValueError, TypeError):
            log.error("firmware job in the state file is unreadable; forgetting it")
            return None


Listener = Callable[[FirmwareJob, str], None]


class FirmwareService:
    """The station's firmware update job; the composition root builds it, blocks use it."""

    def __init__(self, station: Station, storage: Storage, clock: Clock,
                 installer: Installer | None, state_dir: Path, *, allow_unsigned: bool = False,
                 confirm_timeout_s: float = 600.0, default_retries: int = 3,
                 default_retry_interval_s: float = 60.0, download_timeout_s: float = 60.0,
                 roots: Callable[[], list[Certificate]] | None = None,
                 ssl_context: Callable[[], ssl.SSLContext | None] | None = None) -> None:
        self.station = station
        self.storage = storage
        self.clock = clock
        self.installer = installer
        self.dir = state_dir / "firmware"
        self.allow_unsigned = allow_unsigned
        self.confirm_timeout_s = confirm_timeout_s
        self.default_retries = default_retries
        self.default_retry_interval_s = default_retry_interval_s
        self.download_timeout_s = download_timeout_s
        self._roots = roots
        # How https / ftps servers are verified (agent/transfer/tls.py; None: system CAs).
        self._ssl_context = ssl_context or (lambda: None)
        self.listeners: list[Listener] = []
        # 2.0.1 ChargingStation.AllowNewSessionsPendingFirmwareUpdate (the 2.0.1 block sets it).
        self.allow_new_sessions: Callable[[], bool] = lambda: False
        stored = storage.get_setting(JOB_SETTING)
        self.job: FirmwareJob | None = FirmwareJob.from_json(stored) if stored else None
        self._task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._wake = asyncio.Event()
        self._booted = asyncio.Event()
        self._logged_step = -1

    # ------------------------------------------------------------------ reading

    def roots(self) -> list[Certificate]:
        """The installed ManufacturerRootCertificates (the certificate store's, when there)."""
        if self._roots is not None:
            return self._roots()
        store = getattr(self.station, "certificates", None)
        if store is None:
            return []
        return list(store.roots("ManufacturerRootCertificate"))

    def current_version(self) -> str | None:
        return self.installer.current_version() if self.installer is not None else None

    def reported_status(self) -> tuple[str, int | None]:
        """What a triggered status notification says (whitepaper L01.FR.28/29): the last status
        sent, except Idle after Installed or when there was none."""
        job = self.job
        if job is None or job.status is None or job.status == FwStatus.INSTALLED:
            return FwStatus.IDLE.value, None
        return job.status, job.request_id

    def busy(self) -> bool:
        """An update is at work (downloading, verifying, installing, rebooting): a 2.0.1
        Reset is then Rejected with FwUpdateInProgress.  One that only waits (DownloadScheduled,
        InstallScheduled) is not busy: it carries on after the restart."""
        job = self.job
        if job is None or not job.active:
            return False
        return job.status not in (FwStatus.DOWNLOAD_SCHEDULED, FwStatus.INSTALL_SCHEDULED)

    def status(self) -> dict[str, Any] | None:
        """For ``ctl status`` and the status page."""
        job = self.job
        out: dict[str, Any] = {
            "installer": self.installer.name if self.installer is not None else None,
            "version": self.current_version()}
        if job is None:
            return {**out, "status": FwStatus.IDLE.value}
        # agent.transfer.download (and ftplib) is imported where a job needs it,
        # never at start-up: most starts have no update to carry on.
        from agent.transfer import download as dl

        return {**out, "request_id": job.request_id, "status": job.status or "Accepted",
                "phase": job.phase, "location": dl.describe(job.location),
                "bytes": job.bytes, "total": job.total, "attempts": job.attempts,
                "detail": job.detail or None, "new_version": job.version}

    # ------------------------------------------------------------------ persistence

    def _save(self, job: FirmwareJob) -> None:
        self.storage.set_setting(JOB_SETTING, job.to_json())

    def _report(self, job: FirmwareJob, status: FwStatus, **changes: Any) -> None:
        """Enter ``status``: persisted and handed to the listeners in one commit."""
        for name, value in changes.items():
            setattr(job, name, value)
        job.status = status.value
        with self.storage.atomic():
            self._save(job)
            for listener in list(self.listeners):
                try:
                    listener(job, status.value)
                except Exception:  # one version's mapping must not stop the job
                    log.exception("firmware status listener failed for %s", status)
        log.info("firmware update %s: %s%s", job.request_id if job.request_id is not None
                 else f"#{job.seq}", status.value, f" ({job.detail})" if job.detail else "")

    def _update(self, job: FirmwareJob, **changes: Any) -> None:
        for name, value in changes.items():
            setattr(job, name, value)
        self._save(job)

    def _path(self, job: FirmwareJob) -> Path:
        return self.dir / str(job.seq) / job.file

    def _discard_files(self, job: FirmwareJob) -> None:
        shutil.rmtree(self.dir / str(job.seq), ignore_errors=True)

    # ------------------------------------------------------------------ requests

    def request(self, req: FirmwareRequest,
                after_answer: Callable[[], Awaitable[None]] | None = None) -> Answer:
        """Answer a CSMS request and, unless refused, start the job (superseding another);
        its first status waits for ``after_answer`` (the answer goes out first)."""
        from agent.transfer import download as dl

        if self.installer is None:
            log.warning("UpdateFirmware refused: no firmware installer is configured "
                        "(firmware.installer)")
            return Answer.REJECTED
        unsigned = not req.signature and not req.signing_certificate
        if unsigned and not self.allow_unsigned:
            log.warning("UpdateFirmware refused: no signature, and firmware.allow_unsigned is "
                        "false")
            return Answer.REJECTED
        if not unsigned:
            problem = self._certificate_problem(req.signing_certificate)
            if problem is not None:
                self.station.security_events.record("InvalidFirmwareSigningCertificate",
                                                    problem)
                log.warning("UpdateFirmware refused: %s", problem)
                return Answer.INVALID_CERTIFICATE
        current = self.job
        answer = Answer.ACCEPTED
        held: list[int] = []
        if current is not None and current.active:
            if current.past_point_of_no_return:
                log.warning("UpdateFirmware refused: update %s is installing and cannot be "
                            "cancelled", current.request_id)
                return Answer.REJECTED
            answer = Answer.ACCEPTED_CANCELED
            held = list(current.held)
            log.info("firmware update %s superseded by %s", current.request_id, req.request_id)
        previous, self._task = self._task, None
        if previous is not None:
            previous.cancel()  # now, not after the answer: it must not begin installing
        retries = req.retries if req.retries is not None and req.retries >= 0 \
            else self.default_retries
        interval = req.retry_interval_s if req.retry_interval_s is not None \
            and req.retry_interval_s >= 0 else self.default_retry_interval_s
        job = FirmwareJob(
            seq=(current.seq + 1) if current is not None else 1, location=req.location,
            retrieve_at=iso(req.retrieve_at), install_at=iso(req.install_at)
            if req.install_at is not None else None, retries=retries,
            retry_interval_s=float(interval), request_id=req.request_id,
            signing_certificate=req.signing_certificate, signature=req.signature,
            signed=req.signed, file=dl.safe_name(req.location), held=held)
        self.job = job
        self._save(job)
        self._start_task(self._run(job, previous, current, after_answer))
        return answer

    def _certificate_problem(self, pem: str | None) -> str | None:
        if not pem:
            return "no signing certificate given"
        from agent.security import signing  # cryptography: loaded only when an update comes

        try:
            cert = signing.load_certificate(pem)
            signing.check_signing_certificate(cert, self.roots(), self.clock.now())
        except signing.CertificateProblem as exc:
            return str(exc)
        return None

    # ------------------------------------------------------------------ life cycle

    def _start_task(self, coro: Any) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro, name="firmware")
        self._task = task
        self._tasks.add(task)
        task.add_done_callback(self._reap)
        return task

    def _reap(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("firmware task failed", exc_info=task.exception())

    async def start(self) -> bool:
        """Agent start-up: carry on with the job a restart interrupted.  True if this start
        must reboot at once (a rollback that takes effect at the next start)."""
        job = self.job
        if job is None or not job.active:
            return False
        if job.phase == "rebooting":
            self._update(job, phase="confirming",
                         confirm_by=self.clock.wall() + self.confirm_timeout_s)
            log.info("firmware update %s: started the new firmware (%s); confirming after an "
                     "accepted BootNotification", job.request_id, self.current_version())
            self._start_task(self._confirm_watch(job))
            return False
        if job.phase == "confirming":
            return await self._roll_back(
                job, "the new firmware restarted before reaching an accepted BootNotification")
        if job.phase == "installing":
            if job.install_attempts >= MAX_INSTALL_ATTEMPTS:
                await self._fail(job, FwStatus.INSTALLATION_FAILED,
                                 "installation interrupted by a restart, twice")
                return False
            log.warning("firmware update %s: installation was interrupted by a restart; "
                        "installing again", job.request_id)
            job.phase = "verified"
        self._start_task(self._run(job))
        return False

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def kick(self) -> None:
        """Something the job may wait for happened (a transaction ended)."""
        self._wake.set()

    def boot_accepted(self) -> None:
        """A BootNotification was accepted: the firmware running now is confirmed."""
        self._booted.set()

    # ------------------------------------------------------------------ the job

    async def _run(self, job: FirmwareJob, previous: asyncio.Task | None = None,
                   superseded: FirmwareJob | None = None,
                   after_answer: Callable[[], Awaitable[None]] | None = None) -> None:
        if after_answer is not None:
            with contextlib.suppress(Exception):
                await after_answer()
        if previous is not None and not previous.done():
            previous.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await previous
        if superseded is not None:
            await asyncio.to_thread(self._discard_files, superseded)
        try:
            if job.phase in ("scheduled", "downloading"):
                await self._download(job)
            if job.phase == "downloaded":
                await self._checkpoint("downloaded")
                await self._verify(job)
            if job.phase == "verified":
                await self._checkpoint("verified")
                await self._install(job)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug must end the job visibly, not leave it hanging
            log.exception("firmware update %s failed", job.request_id)
            failed = (FwStatus.DOWNLOAD_FAILED if job.phase in ("scheduled", "downloading")
                      else FwStatus.INSTALLATION_FAILED)
            await self._fail(job, failed, f"internal error: {exc}")

    async def _checkpoint(self, phase: str) -> None:
        if self.installer is not None:
            await self.installer.checkpoint(phase)

    async def _sleep_until(self, when: datetime) -> None:
        delay = (when - self.clock.now()).total_seconds()
        if delay > 0:
            await self.clock.sleep(delay)

    def _progress(self, job: FirmwareJob, done: int, total: int | None) -> None:
        from agent.transfer import download as dl

        job.bytes, job.total = done, total
        step = int(done * 10 / total) if total else done >> 23  # 10 % steps, or every 8 MiB
        if step != self._logged_step:
            self._logged_step = step
            log.info("firmware download %s: %d of %s bytes", dl.describe(job.location), done,
                     total if total is not None else "?")

    async def _download(self, job: FirmwareJob) -> None:
        from agent.transfer import download as dl

        retrieve_at = parse_iso(job.retrieve_at)
        if retrieve_at > self.clock.now() and job.phase == "scheduled":
            if job.status != FwStatus.DOWNLOAD_SCHEDULED:
                self._report(job, FwStatus.DOWNLOAD_SCHEDULED)
            await self._sleep_until(retrieve_at)
        if job.status != FwStatus.DOWNLOADING:
            self._report(job, FwStatus.DOWNLOADING, phase="downloading")
        dest = self._path(job)
        while True:
            if job.status != FwStatus.DOWNLOADING:  # continuing after DownloadPaused
                self._report(job, FwStatus.DOWNLOADING)
            self._update(job, attempts=job.attempts + 1)
            self._logged_step = -1
            part = dl.part_path(dest)
            before = part.stat().st_size if part.exists() else 0
            try:
                size = await dl.download(job.location, dest, timeout_s=self.download_timeout_s,
                                         progress=lambda d, t: self._progress(job, d, t),
                                         ssl_context=self._ssl_context())
            except dl.DownloadError as exc:
                left = job.retries + 1 - job.attempts
                if exc.permanent or left <= 0:
                    await self._fail(job, FwStatus.DOWNLOAD_FAILED,
                                     f"{exc} (attempt {job.attempts})", reason=exc.reason)
                    return
                log.warning("firmware download attempt %d failed: %s; %d more in %g s",
                            job.attempts, exc, left, job.retry_interval_s)
                kept = part.stat().st_size if part.exists() else 0
                if kept > before and job.retry_interval_s > 0:
                    # Stopped part-way: the bytes are kept and the next attempt continues.
                    self._report(job, FwStatus.DOWNLOAD_PAUSED, detail=str(exc))
                else:
                    self._update(job, detail=str(exc))
                await self.clock.sleep(job.retry_interval_s)
                continue
            break
        self._report(job, FwStatus.DOWNLOADED, phase="downloaded", bytes=size, total=size,
                     detail="")

    async def _verify(self, job: FirmwareJob) -> None:
        path = self._path(job)
        try:
            digest = await asyncio.to_thread(_file_digest, path)
        except OSError as exc:  # gone or unreadable since Downloaded: it cannot be verified
            await self._fail(job, FwStatus.INSTALL_VERIFICATION_FAILED,
                             f"the downloaded image cannot be read: {exc.strerror or exc}")
            return
        if not job.signature and not job.signing_certificate:
            # Accepted unsigned (firmware.allow_unsigned): only the digest guards the file.
            self._update(job, phase="verified", digest=digest)
            return
        from agent.security import signing

        try:
            cert = signing.load_certificate(job.signing_certificate or "")
            scheme = await asyncio.to_thread(signing.verify_file, path, job.signature, cert)
        except signing.SigningError as exc:
            self.station.security_events.record("InvalidFirmwareSignature", str(exc))
            await self._fail(job, FwStatus.INVALID_SIGNATURE, str(exc))
            return
        log.info("firmware %s: %s signature verified", path.name, scheme)
        self._report(job, FwStatus.SIGNATURE_VERIFIED, phase="verified", digest=digest)

    async def _install(self, job: FirmwareJob) -> None:
        assert self.installer is not None
        if job.install_at is not None:
            install_at = parse_iso(job.install_at)
            if install_at > self.clock.now():
                if job.status != FwStatus.INSTALL_SCHEDULED:
                    self._report(job, FwStatus.INSTALL_SCHEDULED)
                await self._sleep_until(install_at)
        # L01.FR.06/07: wait for the transactions to end; meanwhile no new ones begin on EVSEs
        # that are free (unless 2.0.1 AllowNewSessionsPendingFirmwareUpdate says they may).
        while True:
            if self.station.any_transaction:
                if not self.allow_new_sessions():
                    await self._hold(job)
                if job.status != FwStatus.INSTALL_SCHEDULED:
                    self._report(job, FwStatus.INSTALL_SCHEDULED)
                log.info("firmware update %s: waiting for the transactions to end",
                         job.request_id)
                while self.station.any_transaction:
                    self._wake.clear()
                    await self._wait_wake(TX_RECHECK_S)
                continue
            await self._hold(job)  # nothing may start while installing
            if not self.station.any_transaction:
                break
        if job.status == FwStatus.INSTALLING:  # a restart cut the installation: once more
            self._update(job, phase="installing", install_attempts=job.install_attempts + 1)
        else:
            self._report(job, FwStatus.INSTALLING, phase="installing",
                         install_attempts=job.install_attempts + 1)
        await self._checkpoint("installing")
        path = self._path(job)
        problem = await asyncio.to_thread(_changed_since_verified, path, job.digest)
        if problem is not None:
            log.error("firmware update %s: %s; not installed", job.request_id, problem)
            await self._fail(job, FwStatus.INSTALL_VERIFICATION_FAILED, problem)
            return
        try:
            await self.installer.stage(path)
            version = await self.installer.install(path)
        except InstallError as exc:
            failed = (FwStatus.INSTALL_VERIFICATION_FAILED if exc.verification
                      else FwStatus.INSTALLATION_FAILED)
            await self._fail(job, failed, str(exc))
            return
        self._report(job, FwStatus.INSTALL_REBOOTING, phase="rebooting", version=version)
        await asyncio.to_thread(self._discard_files, job)
        await self._checkpoint("rebooting")
        log.warning("firmware update %s installed (%s); rebooting", job.request_id,
                    version or "version unknown")
        await self.installer.reboot()

    async def _wait_wake(self, timeout: float) -> None:
        await sleep_or(self.clock, timeout, self._wake)

    async def _hold(self, job: FirmwareJob) -> None:
        """Make every operative EVSE Unavailable (at once if free, else when its transaction
        ends), remembering which, so exactly those come back afterwards."""
        for evse_id, evse in self.station.evses.items():
            if evse_id in job.held or not evse.operative or evse.pending_operative is False:
                continue
            self._update(job, held=[*job.held, evse_id])  # before: a power cut must not lose it
            await self.station.set_operative(evse_id, False)

    async def _release(self, job: FirmwareJob) -> None:
        for evse_id in list(job.held):
            if evse_id in self.station.evses:
                await self.station.set_operative(evse_id, True)
        self._update(job, held=[])

    async def _fail(self, job: FirmwareJob, status: FwStatus, why: str,
                    reason: str = "") -> None:
        await self._release(job)
        self._report(job, status, phase="done", detail=why, reason=reason)
        await asyncio.to_thread(self._discard_files, job)

    # ------------------------------------------------------------------ after the reboot

    async def _confirm_watch(self, job: FirmwareJob) -> None:
        assert job.confirm_by is not None
        remaining = min(max(job.confirm_by - self.clock.wall(), 0.0), self.confirm_timeout_s)
        await sleep_or(self.clock, remaining, self._booted)
        if self._booted.is_set():
            await self._confirm(job)
            return
        await self._roll_back(job, f"no accepted BootNotification within "
                                   f"{self.confirm_timeout_s:g} s of starting the new firmware")
        assert self.installer is not None
        await self.installer.reboot()  # the previous firmware runs from the next start

    async def _confirm(self, job: FirmwareJob) -> None:
        assert self.installer is not None
        try:
            await self.installer.confirm()
        except InstallError as exc:  # installed and running all the same
            log.error("firmware update %s: confirming failed: %s", job.request_id, exc)
        await self._release(job)
        self.station.security_events.record(
            "FirmwareUpdated", f"firmware {self.current_version() or job.version or '?'}")
        self._report(job, FwStatus.INSTALLED, phase="done", detail="")

    async def _roll_back(self, job: FirmwareJob, why: str) -> bool:
        """InstallationFailed and the previous firmware back; True if that needs a reboot."""
        assert self.installer is not None
        log.error("firmware update %s failed: %s; rolling back", job.request_id, why)
        try:
            reboot = await self.installer.roll_back()
        except InstallError as exc:
            why = f"{why}; rollback failed: {exc}"
            reboot = False
        await self._fail(job, FwStatus.INSTALLATION_FAILED, why)
        return reboot


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 16):
            h.update(chunk)
    return h.hexdigest()


def _changed_since_verified(path: Path, digest: str | None) -> str | None:
    """Why ``path`` is no longer the image that was verified, or None if it still is."""
    if digest is None:  # a job persisted before digests were kept: verified, not hashed
        return None
    try:
        now = _file_digest(path)
    except OSError as exc:
        return f"the verified image cannot be read any more: {exc.strerror or exc}"
    if now != digest:
        return "the image changed on disk after its verification (SHA-256 differs)"
    return None


__all__ = ["PLAIN_STATUSES", "Answer", "FirmwareJob", "FirmwareRequest", "FirmwareService",
           "FwStatus"]
