"""The firmware statuses that need a situation to happen (DownloadPaused,
InstallVerificationFailed), Reset during an update (FwUpdateInProgress), the file transfer
protocol keys, and a log upload cut by a restart.

In-process agents against the strict test CSMS and the local file server of test_firmware.py;
retry waits on the FakeClock.  A "restart" is the agent stopped and a new one started on the
same state file (the SIGKILL variants of the firmware phases are test_firmware_power_cut.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from aiohttp import web

from agent.clock import FakeClock, iso
from agent.core.diagnostics import JOB_SETTING
from tests.conftest import eventually, version_rig
from tests.test_firmware import (
    IMAGE,
    FileServer,
    Pki,
    _pem,
    image_bytes,
    install_root,
    online,
    rebooted,
    send,
    statuses,
    update_call,
    wait_status,
)

SID = "CP1"


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


@pytest.fixture
async def files(tmp_path) -> AsyncIterator[FileServer]:
    root = tmp_path / "www"
    root.mkdir()
    server = FileServer(root)
    await server.start()
    yield server
    await server.stop()


def install_script(tmp_path, body: str):
    script = tmp_path / "install.sh"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return script


# ====================================================================== InstallVerificationFailed


@pytest.mark.parametrize("flow", ["1.6", "2.0.1", "2.1", "1.6 plain"])
async def test_installer_verification_failure_is_install_verification_failed_TC_L_08_CS(
        flow, short_dir, files, pki, tmp_path):
    """The command installer's exit status 65 (EX_DATAERR: its own check of the image, a
    bundle signature, failed): InstallVerificationFailed, not installed, no reboot, the EVSEs
    back.  Plain 1.6 FirmwareStatusNotification has no such status: InstallationFailed."""
    version = flow.split()[0]
    signed = flow != "1.6 plain"
    script = install_script(tmp_path, 'echo "bundle signature invalid"; exit 65\n')
    data = image_bytes()
    location = files.put(IMAGE, data)
    extra = (f"firmware: {{installer: command, allow_unsigned: true, "
             f"command: {{install: [{script}]}}}}")
    async with version_rig(version, short_dir, extra=extra) as (csms, make):
        agent = await make()
        install_root(agent, pki)
        await online(agent)
        if signed:
            action, payload = update_call(version, location, cert=_pem(pki.cert),
                                          signature=pki.sign(data))
            assert (await send(csms, action, payload))["status"] == "Accepted"
            await wait_status(csms, version, "InstallVerificationFailed")
            assert statuses(csms, version, 7) == [
                "Downloading", "Downloaded", "SignatureVerified", "Installing",
                "InstallVerificationFailed"]
        else:
            assert await send(csms, "UpdateFirmware", {
                "location": location, "retrieveDate": iso(agent.clock.now())}) == {}
            await wait_status(csms, version, "InstallationFailed", request_id=None,
                              signed=False)
            assert statuses(csms, version, signed=False) == [
                "Downloading", "Downloaded", "Installing", "InstallationFailed"]
        detail = agent.status()["firmware"]["detail"]
        assert "status 65" in detail and "bundle signature invalid" in detail
        assert agent.reset_kind is None
        await agent.station.quiet()
        assert all(e.operative for e in agent.station.evses.values())


# ====================================================================== DownloadPaused


@pytest.mark.parametrize("flow", ["2.0.1", "2.1", "1.6 plain"])
async def test_download_cut_part_way_is_paused_until_its_retry(flow, short_dir, files):
    """The connection drops after half the image: DownloadPaused while the retry waits its
    retryInterval (the half is kept), Downloading when it continues with a Range request.
    Plain 1.6 has no DownloadPaused: it hears Downloading once."""
    version = flow.split()[0]
    data = image_bytes(300_000)
    location = files.put(IMAGE, data)
    files.cut.add(IMAGE)
    async with version_rig(version, short_dir, fake_clock=True) as (csms, make):
        agent = await make()
        clock: FakeClock = agent.clock  # type: ignore[assignment]
        await online(agent)
        if version != "1.6":
            _, payload = update_call(version, location, retries=2, retry_interval=10)
            assert (await send(csms, "UpdateFirmware", payload))["status"] == "Accepted"
        else:
            assert await send(csms, "UpdateFirmware", {
                "location": location, "retrieveDate": iso(agent.clock.now()), "retries": 2,
                "retryInterval": 10}) == {}
        await eventually(lambda: any(abs(d - 10) < 0.01 for d in clock.pending()),
                         "the retry waits its interval")
        if version != "1.6":
            await wait_status(csms, version, "DownloadPaused")
            assert statuses(csms, version, 7) == ["Downloading", "DownloadPaused"]
        await clock.advance(10)
        await rebooted(agent)
        ranges = [r for n, r in files.requests if n == IMAGE]
        assert ranges[0] is None and ranges[1] == f"bytes={len(data) // 2}-"
        if version != "1.6":
            assert statuses(csms, version, 7) == [
                "Downloading", "DownloadPaused", "Downloading", "Downloaded", "Installing",
                "InstallRebooting"]
        else:
            assert statuses(csms, version, signed=False) == [
                "Downloading", "Downloaded", "Installing"]


# ====================================================================== Reset


@pytest.mark.parametrize("version", ["2.0.1", "2.1"])
async def test_reset_during_a_firmware_update_is_rejected_FwUpdateInProgress(
        version, short_dir, files):
    """B11 / B12 with the appendix's reason code: a Reset while the update downloads is
    Rejected with FwUpdateInProgress and nothing restarts; one while the update only waits
    for its retrieveDateTime (DownloadScheduled) goes ahead, the update survives it."""
    location = files.put(IMAGE, image_bytes())
    files.hold.add(IMAGE)
    async with version_rig(version, short_dir) as (csms, make):
        agent = await make()
        await online(agent)
        _, payload = update_call("2.0.1", location)
        assert (await send(csms, "UpdateFirmware", payload))["status"] == "Accepted"
        await asyncio.wait_for(files.holding.wait(), 5)
        for kind in ("Immediate", "OnIdle"):
            answer = await send(csms, "Reset", {"type": kind})
            assert answer["status"] == "Rejected"
            assert answer["statusInfo"]["reasonCode"] == "FwUpdateInProgress"
        assert agent.reset_kind is None

        later = agent.clock.now() + timedelta(days=365)
        _, payload = update_call("2.0.1", location, request_id=8, retrieve_at=later)
        assert (await send(csms, "UpdateFirmware", payload))["status"] == "AcceptedCanceled"
        await wait_status(csms, "2.0.1", "DownloadScheduled", request_id=8)
        assert (await send(csms, "Reset", {"type": "Immediate"}))["status"] == "Accepted"
        await eventually(lambda: agent.reset_kind is not None, "the reset happens")
        await agent.stop()
        agent2 = await make()
        await online(agent2)
        assert agent2.firmware.job.status == "DownloadScheduled"


# ====================================================================== protocols


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_supported_file_transfer_protocols_are_what_transfer_speaks(version, short_dir):
    """1.6 security whitepaper SupportedFileTransferProtocols and 2.0.1
    OCPPCommCtrlr.FileTransferProtocols: read-only, the protocols of agent/transfer."""
    from agent.transfer.protocols import PROTOCOLS

    assert PROTOCOLS == ("FTP", "FTPS", "HTTP", "HTTPS")
    async with version_rig(version, short_dir) as (csms, make):
        agent = await make()
        await online(agent)
        if version == "1.6":
            got = await send(csms, "GetConfiguration", {"key": ["SupportedFileTransferProtocols"]})
            [key] = got["configurationKey"]
            assert (key["value"], key["readonly"]) == ("FTP,FTPS,HTTP,HTTPS", True)
            changed = await send(csms, "ChangeConfiguration", {
                "key": "SupportedFileTransferProtocols", "value": "SFTP"})
            assert changed["status"] == "Rejected"
        else:
            variable = {"component": {"name": "OCPPCommCtrlr"},
                        "variable": {"name": "FileTransferProtocols"}}
            got = await send(csms, "GetVariables", {"getVariableData": [variable]})
            assert got["getVariableResult"][0]["attributeValue"] == "FTP,FTPS,HTTP,HTTPS"
            res = await send(csms, "SetVariables", {"setVariableData": [
                {**variable, "attributeValue": "SFTP"}]})
            assert res["setVariableResult"][0]["attributeStatus"] == "Rejected"


# ====================================================================== log upload + restart


@dataclass
class Sink:
    """An upload endpoint whose first request hangs (the restart cuts it), later ones land."""

    url: str = ""
    names: list[str] = field(default_factory=list)
    hung: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    requests: int = 0

    async def post(self, request: web.Request) -> web.Response:
        self.requests += 1
        reader = await request.multipart()
        part = await reader.next()
        assert part is not None
        await part.read()  # type: ignore[union-attr]
        if self.requests == 1:
            self.hung.set()
            await self.release.wait()
            return web.Response(status=500)
        self.names.append(part.filename or "")
        return web.Response(status=201)


@contextlib.asynccontextmanager
async def sink_server() -> AsyncIterator[Sink]:
    sink = Sink()
    app = web.Application()
    app.router.add_post("/upload", sink.post)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    sink.url = f"http://127.0.0.1:{runner.addresses[0][1]}/upload"
    try:
        yield sink
    finally:
        sink.release.set()
        await runner.cleanup()


@pytest.mark.parametrize(("version", "request_type", "retries", "final"), [
    ("2.0.1", "GetLog", 1, "Uploaded"),  # an attempt is left: resumed
    ("2.0.1", "GetLog", 0, "UploadFailure"),  # none left: the final failure, at once
    ("1.6", "GetDiagnostics", 0, "UploadFailed"),
])
async def test_an_upload_cut_by_a_restart_is_resumed_or_ended(version, request_type, retries,
                                                              final, short_dir):
    """The job (requestId, kind, location, window, attempts) is persisted: after a restart
    the station uploads again under the name it answered, with the attempts left (the cut
    one counts), without a second Uploading; with none left it reports the final failure
    for the same request.  Never left Uploading."""
    action = "LogStatusNotification" if request_type == "GetLog" else \
        "DiagnosticsStatusNotification"
    async with sink_server() as sink, version_rig(version, short_dir) as (csms, make):
        agent = await make()
        await online(agent)
        if request_type == "GetLog":
            answer = await send(csms, "GetLog", {
                "logType": "DiagnosticsLog", "requestId": 21, "retries": retries,
                "retryInterval": 1, "log": {"remoteLocation": sink.url}})
            name = answer["filename"]
        else:
            answer = await send(csms, "GetDiagnostics", {"location": sink.url,
                                                         "retries": retries})
            name = answer["fileName"]
        await asyncio.wait_for(sink.hung.wait(), 5)
        await csms.wait_for(action, station_id=SID, predicate=lambda p: p["status"] ==
                            "Uploading")
        record = json.loads(agent.storage.get_setting(JOB_SETTING))
        assert (record["name"], record["attempts"], record["uploading"]) == (name, 1, True)
        await agent.stop()  # the restart cuts the upload

        agent2 = await make()
        done = await csms.wait_for(action, station_id=SID,
                                   predicate=lambda p: p["status"] == final)
        assert done.get("requestId") == (21 if request_type == "GetLog" else None)
        assert [p["status"] for p in csms.messages(SID, action)] == ["Uploading", final]
        assert sink.names == ([name] if final == "Uploaded" else [])
        await eventually(lambda: agent2.storage.get_setting(JOB_SETTING) is None,
                         "the finished job is forgotten")
