"""Downloading a file the CSMS names (firmware images) over HTTP(S) or FTP(S), resumably.

The bytes go to ``<dest>.part`` and the file gets its final name only once complete (renamed
after an fsync), so a power cut never leaves a truncated image under the final name, and the
next attempt (a retry, or the next start after a power cut) continues where the last one
stopped: HTTP with ``Range: bytes=N-`` (a server that answers 206 appends, one that answers 200
sends the whole file again), FTP with ``REST N``.  Before the first byte the free space of the
target file system is compared with what the server announces (Content-Length, FTP SIZE).

This is the one module that uses aiohttp's client (imported at the first HTTP download, so an
agent that never downloads never loads it) and ftplib; ftplib is blocking and runs in a worker
thread.  Every failure leaves as :class:`DownloadError`, whose text names the URL's
host and what went wrong (never its credentials), whose ``permanent`` says whether a retry
could help, and whose ``reason`` is a reasonCode of the 2.1 appendix for the CSMS (InvalidURL,
OutOfStorage, InvalidCertificate for a server certificate that does not verify, else empty).

HTTPS and FTPS servers are verified with ``ssl_context`` (:func:`agent.transfer.tls.context`:
the system CAs plus the station's CSMS roots), their host name checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import ftplib
import logging
import os
import re
import shutil
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from urllib.parse import unquote, urlsplit

from agent.cycles import drop_tracebacks
from agent.transfer.protocols import DOWNLOAD_SCHEMES

log = logging.getLogger("cp_agent.transfer")

CHUNK = 64 * 1024
# Left free beyond the file itself: the state database must still be writable afterwards.
RESERVE_BYTES = 4 * 1024 * 1024
SCHEMES = DOWNLOAD_SCHEMES

Progress = Callable[[int, int | None], None]  # (bytes on disk, total size or None)


class DownloadError(Exception):
    """A download failed; ``permanent``: retrying the same request cannot help."""

    def __init__(self, text: str, *, permanent: bool = False, reason: str = "") -> None:
        super().__init__(text)
        self.permanent = permanent
        self.reason = reason


def part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def safe_name(url: str, default: str = "firmware.bin") -> str:
    """The file name a URL's path ends in, reduced to characters safe on any file system."""
    try:
        path = urlsplit(url).path
    except ValueError:
        path = ""
    name = unquote(path.rsplit("/", 1)[-1])
    name = re.sub(r"[^A-Za-z0-9._+-]", "_", name).lstrip(".")
    return name[:120] or default


def describe(url: str) -> str:
    """The URL without credentials, for logs and messages."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparsable URL>"
    return f"{parts.scheme}://{host}{port}{parts.path}"


def check_space(directory: Path, needed: int | None) -> None:
    if needed is None:
        return
    free = shutil.disk_usage(directory).free
    if needed + RESERVE_BYTES > free:
        raise DownloadError(f"not enough space in {directory}: {needed} bytes to download, "
                            f"{free} free (keeping {RESERVE_BYTES} in reserve)", permanent=True,
                            reason="OutOfStorage")


async def download(url: str, dest: Path, *, progress: Progress | None = None,
                   timeout_s: float = 60.0, ssl_context: ssl.SSLContext | None = None) -> int:
    """Fetch ``url`` into ``dest`` (resuming ``dest.part``); the file's size in bytes."""
    try:
        scheme = urlsplit(url).scheme.lower()
    except ValueError:
        raise DownloadError("location is not a URL", permanent=True,
                            reason="InvalidURL") from None
    if scheme not in SCHEMES:
        raise DownloadError(f"location scheme {scheme!r} is not supported; use one of "
                            f"{', '.join(SCHEMES)}", permanent=True, reason="InvalidURL")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if scheme in ("http", "https"):
        size = await _http(url, dest, progress, timeout_s, ssl_context)
    else:
        size = await _ftp(url, dest, progress, timeout_s, ssl_context)
    part = part_path(dest)
    with part.open("rb+") as f:
        os.fsync(f.fileno())
    os.replace(part, dest)
    return size


# ---------------------------------------------------------------------- HTTP(S)

_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED = re.compile(r"bytes\s+\*/(\d+)")


async def _http(url: str, dest: Path, progress: Progress | None, timeout_s: float,
                ssl_context: ssl.SSLContext | None) -> int:
    import aiohttp  # only when a download happens: an agent without one never loads it

    part = part_path(dest)
    offset = part.stat().st_size if part.exists() else 0
    timeout = aiohttp.ClientTimeout(total=None, connect=timeout_s, sock_read=timeout_s)
    where = describe(url)
    try:
        async with aiohttp.ClientSession(timeout=timeout) as session:
            headers = {"Range": f"bytes={offset}-"} if offset else {}
            async with session.get(url, headers=headers,
                                   ssl=ssl_context if ssl_context is not None else True) as resp:
                total: int | None
                if resp.status == 416 and offset:
                    m = _UNSATISFIED.match(resp.headers.get("Content-Range", ""))
                    if m and int(m.group(1)) == offset:
                        return offset  # the part file is already complete
                    part.unlink(missing_ok=True)
                    raise DownloadError(f"{where}: the server refused to resume (416); "
                                        "starting over on the next attempt")
                if resp.status >= 400:
                    raise DownloadError(f"{where}: HTTP {resp.status} {resp.reason or ''}"
                                        .rstrip())
                if resp.status == 206:
                    m = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
                    if not m or int(m.group(1)) != offset:
                        part.unlink(missing_ok=True)
                        raise DownloadError(f"{where}: the server resumed at the wrong place "
                                            f"({resp.headers.get('Content-Range')!r})")
                    total = int(m.group(3)) if m.group(3) != "*" else None
                    mode = "ab"
                    log.info("resuming %s at byte %d", where, offset)
                else:
                    if offset:
                        log.info("%s: the server does not resume (HTTP %d): from the start",
                                 where, resp.status)
                    offset = 0
                    total = resp.content_length
                    mode = "wb"
                check_space(dest.parent, total - offset if total is not None else None)
                done = offset
                with part.open(mode) as f:
                    async for chunk in resp.content.iter_chunked(CHUNK):
                        f.write(chunk)
                        done += len(chunk)
                        if progress is not None:
                            progress(done, total)
                if total is not None and done != total:
                    raise DownloadError(f"{where}: connection ended at byte {done} of {total}")
                return done
    except DownloadError:
        raise
    except aiohttp.ClientSSLError as exc:
        drop_tracebacks(exc)  # the attempt (session, SSL context) freed now, not by the gc
        raise DownloadError(f"{where}: TLS: {_tls_text(exc)}",
                            reason=_tls_reason(exc)) from None
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        drop_tracebacks(exc)
        text = str(exc) or type(exc).__name__
        raise DownloadError(f"{where}: {text}") from None


def _tls_text(exc: BaseException) -> str:
    inner = getattr(exc, "certificate_error", None) or getattr(exc, "os_error", None) or exc
    return str(getattr(inner, "verify_message", "") or inner) or type(exc).__name__


def _tls_reason(exc: BaseException) -> str:
    inner = getattr(exc, "certificate_error", None) or exc
    return "InvalidCertificate" if isinstance(inner, ssl.SSLCertVerificationError) else ""


# ---------------------------------------------------------------------- FTP(S)


class _Cancelled(Exception):
    pass


async def _ftp(url: str, dest: Path, progress: Progress | None, timeout_s: float,
               ssl_context: ssl.SSLContext | None) -> int:
    loop = asyncio.get_running_loop()
    cancel = threading.Event()

    def report(done: int, total: int | None) -> None:
        if progress is not None:
            loop.call_soon_threadsafe(progress, done, total)

    try:
        return await asyncio.to_thread(_ftp_fetch, url, dest, report, cancel, timeout_s,
                                       ssl_context)
    except asyncio.CancelledError:
        cancel.set()  # the worker stops at its next block
        raise


def _ftp_fetch(url: str, dest: Path, report: Progress, cancel: threading.Event,
               timeout_s: float, ssl_context: ssl.SSLContext | None) -> int:
    parts = urlsplit(url)
    where = describe(url)
    # RFC 1738: the path is relative to the login directory ("/%2F..." for an absolute one).
    remote = unquote(parts.path[1:] if parts.path.startswith("/") else parts.path)
    if not remote:
        raise DownloadError(f"{where}: no file name in the location", permanent=True,
                            reason="InvalidURL")
    part = part_path(dest)
    offset = part.stat().st_size if part.exists() else 0
    ftp: ftplib.FTP
    if parts.scheme == "ftps":
        ftp = ftplib.FTP_TLS(context=ssl_context or ssl.create_default_context(),
                             timeout=timeout_s)
    else:
        ftp = ftplib.FTP(timeout=timeout_s)
    try:
        ftp.connect(parts.hostname or "", parts.port or 21)
        ftp.login(unquote(parts.username or "anonymous"),
                  unquote(parts.password or "anonymous@"))
        if isinstance(ftp, ftplib.FTP_TLS):
            ftp.prot_p()
        ftp.voidcmd("TYPE I")
        total: int | None
        try:
            total = ftp.size(remote)
        except ftplib.error_perm as exc:
            if str(exc).startswith("550"):
                raise DownloadError(f"{where}: {exc}") from None
            total = None
        if total is not None and offset > total:
            offset = 0
        if total is not None and offset == total:
            return offset
        check_space(dest.parent, total - offset if total is not None else None)
        done = offset

        def write(block: bytes, f: object) -> None:
            nonlocal done
            if cancel.is_set():
                raise _Cancelled()
            f.write(block)  # type: ignore[attr-defined]
            done += len(block)
            report(done, total)

        try:
            with part.open("ab" if offset else "wb") as f:
                ftp.retrbinary(f"RETR {remote}", lambda b: write(b, f), blocksize=CHUNK,
                               rest=offset or None)
        except ftplib.error_reply:
            if not offset:
                raise
            # The server does not know REST: start over.
            log.info("%s: the server does not resume (REST): from the start", where)
            done = 0
            with part.open("wb") as f:
                ftp.retrbinary(f"RETR {remote}", lambda b: write(b, f), blocksize=CHUNK)
        if offset:
            log.info("resumed %s at byte %d", where, offset)
        if total is not None and done != total:
            raise DownloadError(f"{where}: transfer ended at byte {done} of {total}")
        return done
    except _Cancelled:
        raise DownloadError(f"{where}: cancelled") from None
    except DownloadError:
        raise
    except ssl.SSLCertVerificationError as exc:
        drop_tracebacks(exc)
        raise DownloadError(f"{where}: TLS: {exc.verify_message or exc}",
                            reason="InvalidCertificate") from None
    except (TimeoutError, ftplib.Error, OSError, EOFError) as exc:
        drop_tracebacks(exc)
        raise DownloadError(f"{where}: {str(exc) or type(exc).__name__}") from None
    finally:
        with contextlib.suppress(Exception):
            ftp.close()


__all__ = ["SCHEMES", "DownloadError", "check_space", "describe",
           "download", "part_path", "safe_name"]
