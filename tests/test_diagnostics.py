"""Diagnostics and logs: 1.6 GetDiagnostics, GetLog on 1.6 (security extension) and 2.0.1 (N01).

Real uploads to a local aiohttp HTTP server and a pyftpdlib FTP server on 127.0.0.1; the
archive is unpacked and read back.  Retries run on the FakeClock.  GetLog is shared by both
versions, so its tests are parametrized over 1.6 and 2.0.1 (2.0.1 names: TC_N_*_CS).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import socket
import tarfile
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from agent.clock import FakeClock, iso
from agent.core.diagnostics import Window, cut, line_time
from agent.logfiles import AGENT_LOG, SECURITY_LOG, install_agent_log, log_dir, rotated_files
from agent.transfer.upload import Outcome, UploadError, upload
from tests.conftest import eventually, version_rig

SID = "CP1"
VERSIONS = ["1.6", "2.0.1"]
FTP_USER = "diag"
FTP_PASSWORD = "ftp-Secret-4711"
OCPP_PASSWORD = "ocpp-Secret-0815-abcdef"


# ====================================================================== servers


@dataclass
class Received:
    method: str
    path: str
    filename: str | None
    data: bytes
    authorization: str | None


@dataclass
class HttpSink:
    """Upload endpoints: POST multipart (/upload), PUT only (/dav/...), refusals, a stall."""

    url: str = ""
    received: list[Received] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    stalled: asyncio.Event = field(default_factory=asyncio.Event)

    async def post_upload(self, request: web.Request) -> web.Response:
        reader = await request.multipart()
        part = await reader.next()
        assert part is not None and part.name == "file"
        data = await part.read()  # type: ignore[union-attr]
        self.received.append(Received("POST", request.path, part.filename, bytes(data),
                                      request.headers.get("Authorization")))
        return web.Response(status=201)

    async def dav_put(self, request: web.Request) -> web.Response:
        self.received.append(Received("PUT", request.path, None, await request.read(),
                                      request.headers.get("Authorization")))
        return web.Response(status=201)

    async def not_allowed(self, request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=405)

    async def denied(self, request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=401)

    async def stall(self, request: web.Request) -> web.Response:
        await request.read()
        self.stalled.set()
        await self.release.wait()
        return web.Response(status=201)


@contextlib.asynccontextmanager
async def http_sink() -> AsyncIterator[HttpSink]:
    sink = HttpSink()
    app = web.Application()
    app.router.add_post("/upload", sink.post_upload)
    app.router.add_post("/dav/", sink.not_allowed)
    app.router.add_put("/dav/{name}", sink.dav_put)
    app.router.add_route("*", "/nothing/{tail:.*}", sink.not_allowed)
    app.router.add_post("/denied", sink.denied)
    app.router.add_post("/stall", sink.stall)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    sink.url = f"http://127.0.0.1:{port}"
    try:
        yield sink
    finally:
        sink.release.set()
        await runner.cleanup()


@contextlib.contextmanager
def ftp_sink(root: Path) -> Iterator[str]:
    """An FTP server (pyftpdlib) on 127.0.0.1 with one user who may write ``root``;
    yields ``ftp://127.0.0.1:<port>``."""
    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import FTPHandler
    from pyftpdlib.servers import FTPServer

    root.mkdir(parents=True, exist_ok=True)
    (root / "incoming").mkdir(exist_ok=True)
    authorizer = DummyAuthorizer()
    authorizer.add_user(FTP_USER, FTP_PASSWORD, str(root), perm="elradfmw")

    class Handler(FTPHandler):
        pass

    Handler.authorizer = authorizer
    Handler.auth_failed_timeout = 0.01  # pyftpdlib waits 3 s after a refused login
    logging.getLogger("pyftpdlib").setLevel(logging.WARNING)
    server = FTPServer(("127.0.0.1", 0), Handler)
    port = server.socket.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            server.serve_forever(timeout=0.05, blocking=False, handle_exit=False)
        server.close_all()

    thread = threading.Thread(target=serve, name="ftp-sink", daemon=True)
    thread.start()
    try:
        yield f"ftp://127.0.0.1:{port}"
    finally:
        stop.set()
        thread.join(5)


def closed_port() -> int:
    """A port on 127.0.0.1 nobody listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ====================================================================== helpers


def unpack(data: bytes) -> dict[str, str]:
    """The archive's members by name below its top directory, as text."""
    out: dict[str, str] = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            f = tar.extractfile(member)
            assert f is not None
            top, _, name = member.name.partition("/")
            out[name] = f.read().decode()
            out["<top>"] = top
    return out


def get_log(location: str, *, log_type: str = "DiagnosticsLog", request_id: int = 7,
            retries: int = 0, interval: int = 1, oldest: datetime | None = None,
            latest: datetime | None = None) -> dict[str, Any]:
    """A GetLog request: the same fields on 1.6 (security extension) and 2.0.1."""
    params: dict[str, Any] = {"remoteLocation": location}
    if oldest is not None:
        params["oldestTimestamp"] = iso(oldest)
    if latest is not None:
        params["latestTimestamp"] = iso(latest)
    return {"logType": log_type, "requestId": request_id, "log": params, "retries": retries,
            "retryInterval": interval}


def statuses(csms: Any, action: str = "LogStatusNotification") -> list[tuple[str, Any]]:
    return [(p["status"], p.get("requestId")) for p in csms.messages(SID, action)]


async def wait_status(csms: Any, status: str, action: str = "LogStatusNotification",
                      count: int = 1) -> dict:
    return await csms.wait_for(action, station_id=SID, count=count,
                               predicate=lambda p: p["status"] == status)


def write_log(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


@contextlib.asynccontextmanager
async def station(version: str, state: Path, *, fake_clock: bool = False,
                  **kw: Any) -> AsyncIterator[tuple[Any, Any, Any]]:
    """A started agent of ``version`` online at a strict CSMS: (csms, agent, its link)."""
    async with version_rig(version, state, fake_clock=fake_clock, **kw) as (csms, make):
        agent = await make()
        await asyncio.wait_for(agent.adapter.accepted.wait(), 5)
        link = await csms.wait_station(SID)
        await asyncio.wait_for(agent.adapter.outbox.idle.wait(), 5)
        yield csms, agent, link


# ====================================================================== unit: lines, windows


def test_line_times_are_read_in_the_formats_the_logs_use():
    assert line_time("2030-01-02T03:04:05.678Z INFO x: y") == datetime(
        2030, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    assert line_time("2030-01-02 03:04:05,678 WARNING x") == datetime(
        2030, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)  # Python's asctime, taken as UTC
    assert line_time("2030-01-02T05:04:05+02:00 x") == datetime(2030, 1, 2, 3, 4, 5,
                                                                 tzinfo=UTC)
    assert line_time("Traceback (most recent call last):") is None
    assert line_time("2030-13-45T99:99:99Z broken") is None


def test_a_window_keeps_its_lines_and_their_continuations_only():
    lines = ["orphan before any time",
             "2030-01-01T10:00:00.000Z INFO early",
             "  early traceback",
             "2030-01-01T11:00:00.000Z INFO inside",
             "  inside traceback",
             "2030-01-01T12:00:00.000Z INFO late"]
    window = Window(datetime(2030, 1, 1, 10, 30, tzinfo=UTC),
                    datetime(2030, 1, 1, 11, 30, tzinfo=UTC))
    assert list(cut(lines, window)) == ["orphan before any time",
                                        "2030-01-01T11:00:00.000Z INFO inside",
                                        "  inside traceback"]
    assert list(cut(lines, Window())) == lines
    assert list(cut(lines, Window(latest=datetime(2030, 1, 1, 10, 0, tzinfo=UTC)))) == \
        lines[:3]
    assert not Window(datetime(2030, 1, 2, tzinfo=UTC), datetime(2030, 1, 1, tzinfo=UTC)).valid


# ====================================================================== unit: the agent's log


def test_agent_log_has_parseable_times_from_the_agent_clock_and_stays_bounded(tmp_path):
    clock = FakeClock(start_wall=datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC).timestamp() - 1000)
    handler = install_agent_log(tmp_path, max_kb=16, count=3, wall=clock.wall,
                                level=logging.INFO)
    assert handler is not None
    logger = logging.getLogger("cp_agent.test_diagnostics")
    logger.setLevel(logging.INFO)
    try:
        logger.info("hello %s", "file")
        handler.flush()
        path = log_dir(tmp_path) / AGENT_LOG
        first = path.read_text().splitlines()[0]
        assert first.endswith("INFO cp_agent.test_diagnostics: hello file")
        assert line_time(first) == datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
        for i in range(2000):  # ~200 kB through a 3 x 16 kB log
            logger.info("line %05d %s", i, "x" * 80)
        handler.flush()
        files = rotated_files(path)
        assert [p.name for p in files] == ["agent.log.2", "agent.log.1", "agent.log"]
        assert all(p.stat().st_size <= 16 * 1024 for p in files)
        assert "line 01999" in path.read_text()  # the newest is kept, the oldest gone
        assert "hello file" not in "".join(p.read_text() for p in files)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def test_no_log_file_is_installed_by_an_agent_alone():
    """Agents in tests and swarms share the process: only `cp-agent run` adds agent.log."""
    import logging.handlers

    assert not any(isinstance(h, logging.handlers.RotatingFileHandler)
                   for h in logging.getLogger().handlers)


# ====================================================================== unit: upload outcomes


async def test_upload_outcomes_name_the_failure(tmp_path):
    async with http_sink() as sink:
        with ftp_sink(tmp_path / "ftp") as ftp:
            host = ftp.removeprefix("ftp://")
            where = await upload(f"ftp://{FTP_USER}:{FTP_PASSWORD}@{host}/incoming/",
                                 "a.tar.gz", b"abc")
            assert (tmp_path / "ftp" / "incoming" / "a.tar.gz").read_bytes() == b"abc"
            assert FTP_PASSWORD not in where
            cases = {
                f"ftp://{FTP_USER}:wrong@{host}/": Outcome.PERMISSION_DENIED,
                f"ftp://{FTP_USER}:{FTP_PASSWORD}@{host}/no/such/dir/": Outcome.PERMISSION_DENIED,
                f"ftp://127.0.0.1:{closed_port()}/": Outcome.FAILED,
                f"http://127.0.0.1:{closed_port()}/upload": Outcome.FAILED,
                f"{sink.url}/denied": Outcome.PERMISSION_DENIED,
                f"{sink.url}/nothing/x": Outcome.NOT_SUPPORTED,  # POST and PUT refused
                "sftp://host/x": Outcome.BAD_MESSAGE,
                "no url at all": Outcome.BAD_MESSAGE,
            }
            for location, outcome in cases.items():
                with pytest.raises(UploadError) as info:
                    await upload(location, "a.tar.gz", b"abc")
                assert info.value.outcome is outcome, (location, info.value)
                assert FTP_PASSWORD not in str(info.value)
            await upload(f"{sink.url}/dav/", "b.tar.gz", b"put me")  # POST 405 -> PUT
            assert [(r.method, r.path, r.data) for r in sink.received] == [
                ("PUT", "/dav/b.tar.gz", b"put me")]


# ====================================================================== GetLog, both versions


@pytest.mark.parametrize("version", [*VERSIONS, "2.1"])
async def test_get_log_diagnostics_over_http_TC_N_25_CS(version, short_dir):
    async with http_sink() as sink, station(version, short_dir) as (csms, agent, link):
        logging.getLogger("cp_agent.test").warning("a line for the archive")
        res = await link.call("GetLog", get_log(f"{sink.url}/upload", request_id=41))
        assert res["status"] == "Accepted"
        name = res["filename"]
        assert name.startswith(f"{SID}-diagnostics-") and name.endswith(".tar.gz")
        await wait_status(csms, "Uploaded")
        assert statuses(csms) == [("Uploading", 41), ("Uploaded", 41)]
        [got] = sink.received
        assert (got.method, got.filename) == ("POST", name)
        files = unpack(got.data)
        assert files["<top>"] == name.removesuffix(".tar.gz")
        for member in ("manifest.json", "agent.log", "security.log", "config.json",
                       "settings.json", "status.json", "frames.log"):
            assert member in files
        assert f'"station": "{SID}"' in files["status.json"]
        assert "GetLog" in files["frames.log"]  # the request that asked for it, redacted


@pytest.mark.parametrize("version", VERSIONS)
async def test_get_log_security_log_over_ftp_TC_N_35_CS(version, short_dir):
    with ftp_sink(short_dir / "ftp") as ftp:
        async with station(version, short_dir) as (csms, agent, link):
            write_log(log_dir(agent.state_dir) / SECURITY_LOG,
                      [f"{agent.clock.now_iso()} WARNING security: SettingSystemTime test"])
            host = ftp.removeprefix("ftp://")
            location = f"ftp://{FTP_USER}:{FTP_PASSWORD}@{host}/incoming"
            res = await link.call("GetLog", get_log(location, log_type="SecurityLog",
                                                    request_id=3))
            assert res["status"] == "Accepted"
            assert "-securitylog-" in res["filename"]
            await wait_status(csms, "Uploaded")
            assert statuses(csms) == [("Uploading", 3), ("Uploaded", 3)]
            files = unpack((short_dir / "ftp" / "incoming" / res["filename"]).read_bytes())
            assert set(files) == {"<top>", "manifest.json", SECURITY_LOG}
            assert "SettingSystemTime test" in files[SECURITY_LOG]


@pytest.mark.parametrize("version", VERSIONS)
async def test_get_log_cuts_the_logs_to_the_time_window(version, short_dir):
    async with http_sink() as sink, station(version, short_dir) as (csms, agent, link):
        now = agent.clock.now()
        t = [now - timedelta(hours=h) for h in (3, 2, 1)]
        logs = log_dir(agent.state_dir)
        write_log(logs / (AGENT_LOG + ".1"), [f"{iso(t[0])} INFO old line",
                                              f"{iso(t[1])} INFO middle line one"])
        write_log(logs / AGENT_LOG, [f"{iso(t[1])} ERROR middle line two",
                                     "Traceback (continuation of middle two)",
                                     f"{iso(t[2])} INFO recent line"])
        window = get_log(f"{sink.url}/upload", oldest=t[1] - timedelta(minutes=5),
                         latest=t[1] + timedelta(minutes=5))
        res = await link.call("GetLog", window)
        assert res["status"] == "Accepted"
        await wait_status(csms, "Uploaded")
        text = unpack(sink.received[0].data)[AGENT_LOG]
        assert text.splitlines() == [f"{iso(t[1])} INFO middle line one",
                                     f"{iso(t[1])} ERROR middle line two",
                                     "Traceback (continuation of middle two)"]
        # A window that ends before it begins is refused, not uploaded empty.
        bad = get_log(f"{sink.url}/upload", oldest=t[2], latest=t[0])
        assert (await link.call("GetLog", bad))["status"] == "Rejected"


@pytest.mark.parametrize("version", VERSIONS)
async def test_secrets_are_not_in_the_archive(version, short_dir):
    web_token = "web-Token-0123456789-secret"
    extra = f"web: {{token: {web_token}}}\n"
    with ftp_sink(short_dir / "ftp") as ftp:
        async with station(version, short_dir, password=OCPP_PASSWORD, profile=1,
                           extra=extra) as (csms, agent, link):
            # Whatever wrote them: a line quoting the secrets in the agent's own log.
            write_log(log_dir(agent.state_dir) / AGENT_LOG, [
                f"{agent.clock.now_iso()} ERROR x: login {OCPP_PASSWORD} / {web_token} / "
                f"ftp://{FTP_USER}:{FTP_PASSWORD}@example.org/"])
            host = ftp.removeprefix("ftp://")
            location = f"ftp://{FTP_USER}:{FTP_PASSWORD}@{host}/incoming/"
            res = await link.call("GetLog", get_log(location, request_id=9))
            await wait_status(csms, "Uploaded")
            files = unpack((short_dir / "ftp" / "incoming" / res["filename"]).read_bytes())
            everything = "\n".join(files.values())
            for secret in (OCPP_PASSWORD, web_token, FTP_PASSWORD):
                assert secret not in everything
            assert "login *** / *** / ftp://***@example.org/" in files[AGENT_LOG]
            assert "ftp://***@127.0.0.1" in files["frames.log"]  # the GetLog frame itself
            assert '"password": "***"' in files["config.json"]


@pytest.mark.parametrize("version", VERSIONS)
async def test_refused_credentials_are_permission_denied(version, short_dir):
    with ftp_sink(short_dir / "ftp") as ftp:
        async with station(version, short_dir) as (csms, agent, link):
            host = ftp.removeprefix("ftp://")
            res = await link.call("GetLog", get_log(f"ftp://{FTP_USER}:wrong@{host}/",
                                                    request_id=5))
            assert res["status"] == "Accepted"
            await wait_status(csms, "PermissionDenied")
            assert statuses(csms) == [("Uploading", 5), ("PermissionDenied", 5)]


@pytest.mark.parametrize("version", VERSIONS)
async def test_unsupported_scheme_is_bad_message_at_once(version, short_dir):
    async with station(version, short_dir) as (csms, agent, link):
        res = await link.call("GetLog", get_log("sftp://127.0.0.1/logs/", retries=3,
                                                interval=3600, request_id=6))
        assert res["status"] == "Accepted"
        await wait_status(csms, "BadMessage")  # no retries: the URL cannot get better
        assert statuses(csms) == [("Uploading", 6), ("BadMessage", 6)]


@pytest.mark.parametrize("version", VERSIONS)
async def test_unreachable_fails_after_the_retries_on_the_clock_TC_N_26_CS(version, short_dir):
    async with station(version, short_dir, fake_clock=True) as (csms, agent, link):
        clock = agent.clock
        location = f"http://127.0.0.1:{closed_port()}/upload"
        res = await link.call("GetLog", get_log(location, retries=3, interval=30,
                                                request_id=8))
        assert res["status"] == "Accepted"
        await wait_status(csms, "Uploading")
        job = agent.diagnostics.current
        assert job is not None
        for attempt in (1, 2, 3):
            await eventually(lambda a=attempt: job.attempts_made == a
                             and any(abs(p - 30) < 1e-6 for p in clock.pending()),
                             f"attempt {attempt} failed and waits 30 s")
            assert statuses(csms) == [("Uploading", 8)]  # no status per retry
            await clock.advance(30)
        await wait_status(csms, "UploadFailure")
        assert job.attempts_made == 4  # the first try and three retries
        assert statuses(csms) == [("Uploading", 8), ("UploadFailure", 8)]


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_second_get_log_cancels_the_first_TC_N_36_CS(version, short_dir):
    async with http_sink() as sink, station(version, short_dir) as (csms, agent, link):
        first = await link.call("GetLog", get_log(f"{sink.url}/stall", request_id=1))
        assert first["status"] == "Accepted"
        await asyncio.wait_for(sink.stalled.wait(), 5)
        second = await link.call("GetLog", get_log(f"{sink.url}/upload", request_id=2))
        assert second["status"] == "AcceptedCanceled"
        await wait_status(csms, "Uploaded")
        sink.release.set()
        expected = [("Uploading", 1), ("Uploading", 2), ("Uploaded", 2)]
        if version == "2.0.1":  # the old upload ends with AcceptedCanceled, before the new one
            expected.insert(1, ("AcceptedCanceled", 1))
        assert statuses(csms) == expected
        assert [r.path for r in sink.received] == ["/upload"]


@pytest.mark.parametrize("version", VERSIONS)
async def test_triggered_log_status_is_idle_or_the_upload_in_progress(version, short_dir):
    async with http_sink() as sink, station(version, short_dir) as (csms, agent, link):
        if version == "1.6":
            if "ExtendedTriggerMessage" not in agent.adapter.handlers:
                pytest.skip("1.6 ExtendedTriggerMessage not built yet")
            action, trigger = "ExtendedTriggerMessage", {"requestedMessage":
                                                         "LogStatusNotification"}
        else:
            action, trigger = "TriggerMessage", {"requestedMessage": "LogStatusNotification"}
        assert (await link.call(action, trigger))["status"] == "Accepted"
        idle = await wait_status(csms, "Idle")
        assert "requestId" not in idle
        await link.call("GetLog", get_log(f"{sink.url}/stall", request_id=12))
        await asyncio.wait_for(sink.stalled.wait(), 5)
        assert (await link.call(action, trigger))["status"] == "Accepted"
        await wait_status(csms, "Uploading", count=2)
        assert statuses(csms) == [("Idle", None), ("Uploading", 12), ("Uploading", 12)]
        sink.release.set()
        await wait_status(csms, "Uploaded")


# ====================================================================== 1.6 GetDiagnostics


async def test_v16_get_diagnostics_puts_where_post_is_refused(short_dir):
    async with http_sink() as sink, station("1.6", short_dir) as (csms, agent, link):
        now = agent.clock.now()
        write_log(log_dir(agent.state_dir) / AGENT_LOG, [
            f"{iso(now - timedelta(days=2))} INFO too old",
            f"{iso(now - timedelta(minutes=1))} INFO wanted"])
        res = await link.call("GetDiagnostics", {
            "location": f"{sink.url}/dav/", "startTime": iso(now - timedelta(hours=1))})
        name = res["fileName"]
        await wait_status(csms, "Uploaded", "DiagnosticsStatusNotification")
        assert statuses(csms, "DiagnosticsStatusNotification") == [
            ("Uploading", None), ("Uploaded", None)]
        [got] = sink.received
        assert (got.method, got.path) == ("PUT", f"/dav/{name}")
        text = unpack(got.data)[AGENT_LOG]
        assert "wanted" in text and "too old" not in text


async def test_v16_get_diagnostics_unreachable_is_upload_failed_after_retries(short_dir):
    async with station("1.6", short_dir, fake_clock=True) as (csms, agent, link):
        location = f"ftp://127.0.0.1:{closed_port()}/"
        await link.call("GetDiagnostics", {"location": location, "retries": 1,
                                           "retryInterval": 20})
        await wait_status(csms, "Uploading", "DiagnosticsStatusNotification")
        job = agent.diagnostics.current
        await eventually(lambda: job.attempts_made == 1
                         and any(abs(p - 20) < 1e-6 for p in agent.clock.pending()),
                         "the first attempt failed and the retry waits 20 s")
        await agent.clock.advance(20)
        await wait_status(csms, "UploadFailed", "DiagnosticsStatusNotification")
        assert job.attempts_made == 2
        assert statuses(csms, "DiagnosticsStatusNotification") == [
            ("Uploading", None), ("UploadFailed", None)]


async def test_v16_triggered_diagnostics_status(short_dir):
    async with http_sink() as sink, station("1.6", short_dir) as (csms, agent, link):
        trigger = {"requestedMessage": "DiagnosticsStatusNotification"}
        assert (await link.call("TriggerMessage", trigger))["status"] == "Accepted"
        await wait_status(csms, "Idle", "DiagnosticsStatusNotification")
        await link.call("GetDiagnostics", {"location": f"{sink.url}/stall"})
        await asyncio.wait_for(sink.stalled.wait(), 5)
        assert (await link.call("TriggerMessage", trigger))["status"] == "Accepted"
        await wait_status(csms, "Uploading", "DiagnosticsStatusNotification", count=2)
        assert statuses(csms, "DiagnosticsStatusNotification") == [
            ("Idle", None), ("Uploading", None), ("Uploading", None)]
        sink.release.set()
        await wait_status(csms, "Uploaded", "DiagnosticsStatusNotification")


async def test_v16_lists_firmware_management_once(short_dir):
    async with station("1.6", short_dir) as (csms, agent, link):
        res = await link.call("GetConfiguration", {"key": ["SupportedFeatureProfiles"]})
        profiles = res["configurationKey"][0]["value"].split(",")
        assert profiles.count("FirmwareManagement") == 1
