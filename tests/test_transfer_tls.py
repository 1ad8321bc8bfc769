"""HTTPS and FTPS file transfers: the server's certificate is checked, both ways.

Local servers on 127.0.0.1 with certificates of a throw-away CA (tests/tls_certs.py): aiohttp
with an SSL context for HTTPS, pyftpdlib's TLS_FTPHandler (explicit FTPS, protected data
connections; it needs pyOpenSSL, in the test extra) for FTPS.  The transfer modules trust the
CA they are given (agent/transfer/tls.py); the agent gives them its installed CSMS roots, so
the agent-level test installs the CA as a CSMSRootCertificate, and before that sees the
transfers fail with the spec's statuses (on 2.1 with reasonCode InvalidCertificate).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import tarfile
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web

from agent.transfer import download as dl
from agent.transfer.tls import context
from agent.transfer.upload import Outcome, UploadError, upload
from tests.conftest import VERSIONS_201_PLUS, version_rig
from tests.tls_certs import TestCa

SID = "CP1"
DATA = bytes(range(256)) * 400  # 100 kB
FTP_USER, FTP_PASSWORD = "files", "ftps-Secret-2718"


@dataclass
class Pki:
    ca: TestCa
    stranger: TestCa
    server_cert: Path
    server_key: Path
    wrong_host_cert: Path
    wrong_host_key: Path


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = TestCa.create(tmp_path / "pki", "files")
    stranger = TestCa.create(tmp_path / "pki", "stranger")
    server = ca.issue_server("files")
    other = ca.issue_server("other-host", hosts=("files.example.org",))
    return Pki(ca, stranger, server.cert_path, server.key_path, other.cert_path,
               other.key_path)


@dataclass
class HttpsFiles:
    url: str = ""
    uploads: list[tuple[str, bytes]] = field(default_factory=list)

    async def get(self, request: web.Request) -> web.Response:
        return web.Response(body=DATA)

    async def post(self, request: web.Request) -> web.Response:
        reader = await request.multipart()
        part = await reader.next()
        assert part is not None
        self.uploads.append((part.filename or "", bytes(await part.read())))  # type: ignore
        return web.Response(status=201)


@contextlib.asynccontextmanager
async def https_server(cert: Path, key: Path) -> AsyncIterator[HttpsFiles]:
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    files = HttpsFiles()
    app = web.Application()
    app.router.add_get("/fw/{name}", files.get)
    app.router.add_post("/upload", files.post)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    files.url = f"https://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield files
    finally:
        await runner.cleanup()


@contextlib.contextmanager
def ftps_server(root: Path, cert: Path, key: Path) -> Iterator[str]:
    """Explicit FTPS (AUTH TLS, PROT P required); yields ``ftps://user:password@host:port``."""
    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import TLS_FTPHandler
    from pyftpdlib.servers import ThreadedFTPServer

    authorizer = DummyAuthorizer()
    authorizer.add_user(FTP_USER, FTP_PASSWORD, str(root), perm="elradfmw")
    handler = type("Handler", (TLS_FTPHandler,), {
        "authorizer": authorizer, "certfile": str(cert), "keyfile": str(key),
        "tls_control_required": True, "tls_data_required": True, "auth_failed_timeout": 0})
    logging.getLogger("pyftpdlib").setLevel(logging.WARNING)
    server = ThreadedFTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"timeout": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield f"ftps://{FTP_USER}:{FTP_PASSWORD}@127.0.0.1:{server.socket.getsockname()[1]}"
    finally:
        server.close_all()
        thread.join(5)


# ====================================================================== the transfer modules


async def test_https_download_and_upload_check_the_server_certificate(pki, tmp_path):
    trusted = context([str(pki.ca.cert_path)])
    async with https_server(pki.server_cert, pki.server_key) as server:
        size = await dl.download(f"{server.url}/fw/a.bin", tmp_path / "a.bin",
                                 ssl_context=trusted)
        assert size == len(DATA) and (tmp_path / "a.bin").read_bytes() == DATA
        await upload(f"{server.url}/upload", "log.tar.gz", b"archive", ssl_context=trusted)
        assert server.uploads == [("log.tar.gz", b"archive")]

        for untrusted in (context([str(pki.stranger.cert_path)]), context()):
            with pytest.raises(dl.DownloadError) as down:
                await dl.download(f"{server.url}/fw/b.bin", tmp_path / "b.bin",
                                  ssl_context=untrusted)
            assert down.value.reason == "InvalidCertificate" and not down.value.permanent
            assert "certificate" in str(down.value)
            assert not (tmp_path / "b.bin").exists()
            with pytest.raises(UploadError) as up:
                await upload(f"{server.url}/upload", "log.tar.gz", b"x", ssl_context=untrusted)
            assert (up.value.outcome, up.value.reason) == (Outcome.FAILED, "InvalidCertificate")
        assert len(server.uploads) == 1, "an upload went to an unverified server"

    # The right CA, the wrong name: the host name is checked too.
    async with https_server(pki.wrong_host_cert, pki.wrong_host_key) as server:
        with pytest.raises(dl.DownloadError) as down:
            await dl.download(f"{server.url}/fw/c.bin", tmp_path / "c.bin", ssl_context=trusted)
        assert down.value.reason == "InvalidCertificate"
        assert "127.0.0.1" in str(down.value)  # ... doesn't match / not valid for it


async def test_ftps_download_and_upload_check_the_server_certificate(pki, tmp_path):
    root = tmp_path / "ftps"
    (root / "incoming").mkdir(parents=True)
    (root / "fw.bin").write_bytes(DATA)
    trusted = context([str(pki.ca.cert_path)])
    with ftps_server(root, pki.server_cert, pki.server_key) as base:
        size = await dl.download(f"{base}/fw.bin", tmp_path / "fw.bin", ssl_context=trusted)
        assert size == len(DATA) and (tmp_path / "fw.bin").read_bytes() == DATA
        where = await upload(f"{base}/incoming/", "log.tar.gz", b"archive",
                             ssl_context=trusted)
        assert (root / "incoming" / "log.tar.gz").read_bytes() == b"archive"
        assert FTP_PASSWORD not in where

        untrusted = context([str(pki.stranger.cert_path)])
        with pytest.raises(dl.DownloadError) as down:
            await dl.download(f"{base}/fw.bin", tmp_path / "again.bin", ssl_context=untrusted)
        assert down.value.reason == "InvalidCertificate"
        assert FTP_PASSWORD not in str(down.value)
        with pytest.raises(UploadError) as up:
            await upload(f"{base}/incoming/", "other.tar.gz", b"x", ssl_context=untrusted)
        assert (up.value.outcome, up.value.reason) == (Outcome.FAILED, "InvalidCertificate")
        assert not (root / "incoming" / "other.tar.gz").exists()


# ====================================================================== the agent


def _statuses(csms, action: str) -> list[dict]:
    return csms.messages(SID, action)


@pytest.mark.parametrize("version", VERSIONS_201_PLUS)
async def test_agent_transfers_trust_the_installed_csms_roots(version, pki, short_dir):
    """A file server whose CA the station does not trust: GetLog ends UploadFailure, an
    update DownloadFailed (2.1: statusInfo InvalidCertificate); once the CA is installed as a
    CSMSRootCertificate the same transfers work (the context is built per transfer)."""
    async with https_server(pki.server_cert, pki.server_key) as server, \
            version_rig(version, short_dir) as (csms, make):
        agent = await make()
        await asyncio.wait_for(agent.adapter.accepted.wait(), 5)
        link = await csms.wait_station(SID)
        get_log = {"logType": "DiagnosticsLog", "requestId": 1, "retries": 0,
                   "log": {"remoteLocation": f"{server.url}/upload"}}
        update = {"requestId": 2, "retries": 0, "firmware": {
            "location": f"{server.url}/fw/cp-agent-2.0.0.bin",
            "retrieveDateTime": agent.clock.now_iso()}}

        assert (await link.call("GetLog", get_log))["status"] == "Accepted"
        failed = await csms.wait_for("LogStatusNotification", station_id=SID,
                                     predicate=lambda p: p["status"] == "UploadFailure")
        assert (await link.call("UpdateFirmware", update))["status"] == "Accepted"
        down = await csms.wait_for("FirmwareStatusNotification", station_id=SID,
                                   predicate=lambda p: p["status"] == "DownloadFailed")
        if version == "2.1":
            for status in (failed, down):
                assert status["statusInfo"]["reasonCode"] == "InvalidCertificate"
                assert "certificate" in status["statusInfo"]["additionalInfo"]
        else:
            assert "statusInfo" not in failed and "statusInfo" not in down
        assert server.uploads == []

        assert agent.certificates.install_root("CSMSRootCertificate", pki.ca.pem) == \
            "Accepted"
        assert (await link.call("GetLog", {**get_log, "requestId": 3}))["status"] == \
            "Accepted"
        await csms.wait_for("LogStatusNotification", station_id=SID,
                            predicate=lambda p: p["status"] == "Uploaded")
        [(name, archive)] = server.uploads
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            assert any(m.name.endswith("manifest.json") for m in tar.getmembers())
        assert (await link.call("UpdateFirmware", {**update, "requestId": 4}))["status"] == \
            "Accepted"
        await csms.wait_for("FirmwareStatusNotification", station_id=SID,
                            predicate=lambda p: p["status"] == "InstallRebooting")
        assert [(p["status"], p["requestId"]) for p in
                _statuses(csms, "FirmwareStatusNotification")] == [
            ("Downloading", 2), ("DownloadFailed", 2), ("Downloading", 4), ("Downloaded", 4),
            ("Installing", 4), ("InstallRebooting", 4)]
