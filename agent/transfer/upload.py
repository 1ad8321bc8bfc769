"""Uploads to the place a CSMS names (GetDiagnostics ``location``, GetLog ``remoteLocation``).

One attempt, one outcome; retries and status messages are the caller's
(:mod:`agent.core.diagnostics`).  Every failure is an :class:`UploadError` carrying the
:class:`Outcome` the specs can report, so no library exception reaches a block.

How a file goes where (the specs only say "the URL also contains the protocol"):

- ``http://`` / ``https://``: a POST of ``multipart/form-data`` (one part ``file`` with the
  file name), the form an upload endpoint of a CSMS takes, to the URL as given.  A server that
  refuses POST (405 / 501) gets a PUT of the raw file instead, to the location with the file
  name appended when the location ends in ``/`` (a WebDAV folder), else to the URL as given
  (a pre-signed object URL).  Credentials in the URL become a basic-auth header; redirects are
  not followed (a POST turned into a GET would look like success).
- ``ftp://`` / ``ftps://`` (explicit TLS): the path is a directory (``ftp://user:pw@host:port
  /path``, the 1.6 security whitepaper's form; every segment a CWD), the file is stored there
  under its own name (STOR), passive mode.  ftplib blocks, so it runs in a thread; a cancelled
  upload closes its connection.  No resume: an archive is small and goes whole.

Outcome mapping (the spec's wording: BadMessage "a badly formatted packet or other protocol
incompatibility", NotSupportedOperation "the server does not support the operation",
PermissionDenied "insufficient permissions"): an unknown scheme, an unparsable URL, HTTP 400
and FTP syntax errors are BAD_MESSAGE; HTTP 401 / 403, FTP 530 / 550 / 553 PERMISSION_DENIED;
a method or command the server lacks NOT_SUPPORTED; anything else (unreachable, timeouts,
5xx, full disk, a server certificate that does not verify) FAILED.  ``reason`` adds a reasonCode
of the 2.1 appendix where one fits (InvalidURL, RedirectNotAllowed, InvalidCertificate).
HTTPS and FTPS servers are verified with ``ssl_context`` (:func:`agent.transfer.tls.context`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ftplib
import io
import logging
import re
import ssl
from dataclasses import dataclass
from urllib.parse import quote, unquote, urlsplit

from agent.cycles import drop_tracebacks
from agent.transfer.protocols import UPLOAD_SCHEMES

log = logging.getLogger("cp_agent.upload")

SCHEMES = UPLOAD_SCHEMES
CONNECT_TIMEOUT_S = 30.0
TRANSFER_TIMEOUT_S = 300.0
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]*@")


class Outcome(enum.Enum):
    UPLOADED = "uploaded"
    FAILED = "failed"
    PERMISSION_DENIED = "permission denied"
    NOT_SUPPORTED = "operation not supported"
    BAD_MESSAGE = "bad message"


class UploadError(Exception):
    """An attempt failed; ``outcome`` says how, the message is for the log (no password)."""

    def __init__(self, outcome: Outcome, detail: str, *, final: bool = False,
                 reason: str = "") -> None:
        super().__init__(detail)
        self.outcome = outcome
        self.final = final  # another attempt cannot help (the URL itself is unusable)
        self.reason = reason  # a 2.1 reasonCode, or empty


def safe_url(url: str) -> str:
    """``url`` fit for a log line: its user info replaced."""
    return _USERINFO.sub(r"\1***@", url)


@dataclass(frozen=True)
class Target:
    scheme: str
    host: str
    port: int | None
    user: str | None
    password: str | None
    path: str
    url: str  # without user info

    @property
    def is_folder(self) -> bool:
        return self.path in ("", "/") or self.path.endswith("/")


def parse_location(url: str) -> Target:
    """The parts of an upload location; UploadError(BAD_MESSAGE, final) for what no attempt
    could use (the CSMS is told at once, with no retries)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise UploadError(Outcome.BAD_MESSAGE, f"unreadable location: {exc}", final=True,
                          reason="InvalidURL") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise UploadError(Outcome.BAD_MESSAGE,
                          f"location scheme {scheme or '(none)'!r} not supported "
                          f"(supported: {', '.join(SCHEMES)})", final=True, reason="InvalidURL")
    if not parts.hostname:
        raise UploadError(Outcome.BAD_MESSAGE, "location names no host", final=True,
                          reason="InvalidURL")
    netloc = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    if port is not None:
        netloc += f":{port}"
    plain = parts._replace(netloc=netloc).geturl()
    user = unquote(parts.username) if parts.username is not None else None
    password = unquote(parts.password) if parts.password is not None else None
    return Target(scheme, parts.hostname, port, user, password, parts.path, plain)


async def upload(location: str, name: str, data: bytes, *,
                 ssl_context: ssl.SSLContext | None = None,
                 timeout_s: float = TRANSFER_TIMEOUT_S) -> str:
    """Upload ``data`` as ``name`` to ``location``; returns where it went (no user info).

    Raises UploadError.  ``ssl_context``: how https / ftps servers are verified (default: the
    system's CAs).
    """
    target = parse_location(location)
    if target.scheme in ("http", "https"):
        return await _http(target, name, data, ssl_context, timeout_s)
    return await _ftp(target, name, data, ssl_context, timeout_s)


# ------------------------------------------------------------------ HTTP(S)


def _join(url: str, name: str) -> str:
    """``name`` inside the folder ``url`` names (its query string kept)."""
    parts = urlsplit(url)
    return parts._replace(path=parts.path.rstrip("/") + "/" + quote(name)).geturl()


def _http_error(status: int, method: str, where: str) -> UploadError:
    if status in (401, 403, 407):
        outcome = Outcome.PERMISSION_DENIED
    elif status in (405, 501):
        outcome = Outcome.NOT_SUPPORTED
    elif status == 400:
        outcome = Outcome.BAD_MESSAGE
    else:
        outcome = Outcome.FAILED
    return UploadError(outcome, f"{method} {where}: HTTP {status}")


async def _http(target: Target, name: str, data: bytes, ssl_context: ssl.SSLContext | None,
                timeout_s: float) -> str:
    import aiohttp  # the one module that uploads with it

    auth = None
    if target.user is not None:
        auth = aiohttp.BasicAuth(target.user, target.password or "")
    timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=CONNECT_TIMEOUT_S)
    ssl_arg: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
    put_url = _join(target.url, name) if target.is_folder else target.url
    try:
        async with aiohttp.ClientSession(timeout=timeout, auth=auth) as session:
            form = aiohttp.FormData()
            form.add_field("file", data, filename=name, content_type="application/gzip")
            async with session.post(target.url, data=form, ssl=ssl_arg,
                                    allow_redirects=False) as res:
                status = res.status
            if 200 <= status < 300:
                return target.url
            if status not in (405, 501):
                raise _redirect_or(status, "POST", target.url)
            log.info("POST %s: HTTP %s; trying PUT %s", target.url, status, put_url)
            async with session.put(put_url, data=data, ssl=ssl_arg, allow_redirects=False,
                                   headers={"Content-Type": "application/gzip"}) as res:
                status = res.status
            if 200 <= status < 300:
                return put_url
            raise _redirect_or(status, "PUT", put_url)
    except UploadError:
        raise
    except aiohttp.ClientConnectorCertificateError as exc:
        drop_tracebacks(exc)  # the attempt (session, SSL context) freed now, not by the gc
        cert_error = exc.certificate_error
        text = getattr(cert_error, "verify_message", "") or str(cert_error)
        raise UploadError(Outcome.FAILED, f"{target.url}: TLS: {text}",
                          reason="InvalidCertificate") from None
    except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
        drop_tracebacks(exc)
        raise UploadError(Outcome.FAILED,
                          f"{target.url}: {type(exc).__name__}: {exc}".rstrip(": ")) from None


def _redirect_or(status: int, method: str, where: str) -> UploadError:
    if 300 <= status < 400:
        return UploadError(Outcome.FAILED, f"{method} {where}: HTTP {status} (redirects are "
                                           "not followed for uploads)",
                           reason="RedirectNotAllowed")
    return _http_error(status, method, where)


# ------------------------------------------------------------------ FTP(S)


def _ftp_error(exc: BaseException, step: str) -> UploadError:
    text = str(exc).strip()
    code = text[:3]
    if isinstance(exc, ftplib.error_perm):
        if code in ("530", "532", "550", "553"):
            outcome = Outcome.PERMISSION_DENIED
        elif code in ("500", "502", "504"):
            outcome = Outcome.NOT_SUPPORTED
        elif code == "501":
            outcome = Outcome.BAD_MESSAGE
        else:
            outcome = Outcome.FAILED
    elif isinstance(exc, (ftplib.error_reply, ftplib.error_proto)):
        outcome = Outcome.BAD_MESSAGE
    else:  # error_temp (4xx), OSError, EOFError, timeouts
        outcome = Outcome.FAILED
    return UploadError(outcome, f"{step}: {text or type(exc).__name__}")


class _FtpSession:
    """One blocking FTP upload, run in a thread; :meth:`abort` may be called from the loop."""

    def __init__(self, target: Target, ssl_context: ssl.SSLContext | None,
                 timeout_s: float) -> None:
        self.target = target
        self.timeout_s = timeout_s
        if target.scheme == "ftps":
            self.ftp: ftplib.FTP = ftplib.FTP_TLS(
                context=ssl_context or ssl.create_default_context(), timeout=timeout_s)
        else:
            self.ftp = ftplib.FTP(timeout=timeout_s)
        self.aborted = False

    def run(self, name: str, data: bytes) -> str:
        t = self.target
        ftp = self.ftp
        step = f"connect {t.host}:{t.port or 21}"
        try:
            ftp.connect(t.host, t.port or 21, timeout=CONNECT_TIMEOUT_S)
            step = "login"
            ftp.login(t.user or "anonymous", t.password or "anonymous@")
            if isinstance(ftp, ftplib.FTP_TLS):
                ftp.prot_p()  # the data connection encrypted too
            ftp.set_pasv(True)
            for segment in t.path.split("/"):
                if segment:
                    step = f"CWD {unquote(segment)}"
                    ftp.cwd(unquote(segment))
            step = f"STOR {name}"
            ftp.storbinary(f"STOR {name}", io.BytesIO(data))
            with contextlib.suppress(ftplib.all_errors):
                ftp.quit()
        except ssl.SSLCertVerificationError as exc:
            drop_tracebacks(exc)
            raise UploadError(Outcome.FAILED, f"{step}: TLS: {exc.verify_message or exc}",
                              reason="InvalidCertificate") from None
        except ftplib.all_errors as exc:
            drop_tracebacks(exc)
            if self.aborted:
                raise UploadError(Outcome.FAILED, "cancelled") from None
            raise _ftp_error(exc, step) from None
        finally:
            ftp.close()
        return _join(t.url, name)

    def abort(self) -> None:
        self.aborted = True
        with contextlib.suppress(OSError):
            sock = self.ftp.sock
            if sock is not None:
                sock.close()


async def _ftp(target: Target, name: str, data: bytes, ssl_context: ssl.SSLContext | None,
               timeout_s: float) -> str:
    session = _FtpSession(target, ssl_context, timeout_s)
    job = asyncio.ensure_future(asyncio.to_thread(session.run, name, data))
    try:
        return await asyncio.shield(job)
    except asyncio.CancelledError:
        session.abort()  # the thread ends with its connection; nobody waits for it
        job.add_done_callback(lambda f: f.cancelled() or f.exception())
        raise


__all__ = ["SCHEMES", "Outcome", "Target", "UploadError", "parse_location", "safe_url",
           "upload"]
