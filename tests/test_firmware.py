"""Remote firmware updates on 1.6 (SignedUpdateFirmware, UpdateFirmware) and 2.0.1 (L01/L02):
download, resume, retries, signature and certificate checks, waiting for transactions,
installing, the reboot, confirmation and rollback, and the platform installers.

The flows run end to end: the real agent against the strict test CSMS, a local aiohttp file
server (and a pyftpdlib FTP server) on 127.0.0.1, the mock installer, and "reboots" that are a
new Agent on the same state file.  2.0.1 tests are named after the conformance test cases
(TC_L_xx_CS); the 1.6 whitepaper's L01 is the same use case, so most run on both versions.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import threading
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from agent.app import Agent
from agent.clock import FakeClock, iso
from agent.config import ConfigError
from agent.core.firmware import JOB_SETTING
from agent.platform.installer import InstallerState
from agent.platform.python_package import PythonPackageInstaller
from agent.security import signing
from agent.testing.csms import CsmsCallError, TestCsms
from agent.transfer import download as dl
from tests.conftest import agent_config, eventually, version_rig

SID = "CP1"
VERSIONS = ("1.6", "2.0.1")
IMAGE = "cp-agent-1.2.3.bin"
NEW_VERSION = "cp-agent-1.2.3"
ROOT_USE = "ManufacturerRootCertificate"


@pytest.fixture(params=VERSIONS)
def version(request: pytest.FixtureRequest) -> str:
    return request.param


# ====================================================================== PKI


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cp-agent tests")])


def _cert(subject: str, key: Any, issuer: str, issuer_key: Any, *, ca: bool) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - dt.timedelta(days=1))
               .not_valid_after(now + dt.timedelta(days=365))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(digital_signature=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          key_cert_sign=True, crl_sign=True, encipher_only=False,
                          decipher_only=False), critical=True)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _key_pem(key: Any) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class Pki:
    """A manufacturer root with its firmware signing certificate, and a stranger's pair."""

    def __init__(self) -> None:
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = _cert("Manufacturer Root", self.root_key, "Manufacturer Root",
                          self.root_key, ca=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = _cert("Firmware Signing", self.key, "Manufacturer Root", self.root_key,
                          ca=False)
        other_root_key = ec.generate_private_key(ec.SECP256R1())
        self.other_key = ec.generate_private_key(ec.SECP256R1())
        # Same subject names as the real pair: only the signature tells them apart.
        self.other_cert = _cert("Firmware Signing", self.other_key, "Manufacturer Root",
                                other_root_key, ca=False)

    def sign(self, data: bytes, key: Any = None) -> str:
        key = key or self.key
        return base64.b64encode(key.sign(data, ec.ECDSA(hashes.SHA256()))).decode()


@pytest.fixture(scope="module")
def pki() -> Pki:
    return Pki()


def install_root(agent: Agent, pki: Pki) -> None:
    assert agent.station.certificates.install_root(ROOT_USE, _pem(pki.root)) == "Accepted"


# ====================================================================== file server


class FileServer:
    """Serves files (Range included, aiohttp's FileResponse), records each request's Range
    header; ``cut`` names files whose next response stops half-way; ``hold`` files whose
    response sends half and then waits until released."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[tuple[str, str | None]] = []
        self.cut: set[str] = set()
        self.hold: set[str] = set()
        self.release = asyncio.Event()
        self.holding = asyncio.Event()
        self.url = ""
        self._runner: web.AppRunner | None = None

    def put(self, name: str, data: bytes) -> str:
        (self.root / name).write_bytes(data)
        return f"{self.url}/{name}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.requests.append((name, request.headers.get("Range")))
        path = self.root / name
        if not path.is_file():
            raise web.HTTPNotFound()
        if name in self.cut or name in self.hold:
            data = path.read_bytes()
            resp = web.StreamResponse(headers={"Content-Length": str(len(data))})
            await resp.prepare(request)
            await resp.write(data[: len(data) // 2])
            if name in self.cut:
                self.cut.discard(name)
                assert request.transport is not None
                request.transport.close()  # the connection drops mid-file
                return resp
            self.holding.set()
            await self.release.wait()
            raise ConnectionResetError("held download released")
        return web.FileResponse(path)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/{name}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def files(tmp_path: Path) -> AsyncIterator[FileServer]:
    root = tmp_path / "www"
    root.mkdir()
    server = FileServer(root)
    await server.start()
    yield server
    await server.stop()


def image_bytes(size: int = 200_000) -> bytes:
    return hashlib.sha256(b"seed").digest() * (size // 32)


# ====================================================================== per-version messages


def status_action(version: str, signed: bool = True) -> str:
    return "SignedFirmwareStatusNotification" if version == "1.6" and signed \
        else "FirmwareStatusNotification"


def update_call(version: str, location: str, *, request_id: int = 7, cert: str | None = None,
                signature: str | None = None, retries: int | None = None,
                retry_interval: int | None = None, install_at: dt.datetime | None = None,
                retrieve_at: dt.datetime | None = None) -> tuple[str, dict]:
    now = dt.datetime.now(dt.UTC)
    firmware: dict[str, Any] = {"location": location,
                                "retrieveDateTime": iso(retrieve_at or now - dt.timedelta(hours=2))}
    if install_at is not None:
        firmware["installDateTime"] = iso(install_at)
    if cert is not None:
        firmware["signingCertificate"] = cert
    if signature is not None:
        firmware["signature"] = signature
    payload: dict[str, Any] = {"requestId": request_id, "firmware": firmware}
    if retries is not None:
        payload["retries"] = retries
    if retry_interval is not None:
        payload["retryInterval"] = retry_interval
    if version == "1.6":
        if cert is None and signature is None:  # a 1.6 signed request must carry both
            raise ValueError("use UpdateFirmware for an unsigned 1.6 update")
        return "SignedUpdateFirmware", payload
    return "UpdateFirmware", payload


def statuses(csms: TestCsms, version: str, request_id: int | None = None,
             signed: bool = True) -> list[str]:
    return [p["status"] for p in csms.messages(SID, status_action(version, signed))
            if request_id is None or p.get("requestId") == request_id]


async def wait_status(csms: TestCsms, version: str, status: str, request_id: int | None = 7,
                      signed: bool = True, timeout: float = 10.0) -> dict:
    return await csms.wait_for(
        status_action(version, signed), station_id=SID, timeout=timeout,
        predicate=lambda p: p["status"] == status and (request_id is None
                                                       or p.get("requestId") == request_id))


def security_events(csms: TestCsms) -> list[str]:
    return [p["type"] for p in csms.messages(SID, "SecurityEventNotification")]


async def online(agent: Agent, timeout: float = 10.0) -> None:
    await asyncio.wait_for(agent.adapter.accepted.wait(), timeout)
    await asyncio.wait_for(agent.adapter.outbox.idle.wait(), timeout)
    await agent.station.quiet()


async def rebooted(agent: Agent, timeout: float = 10.0) -> None:
    """The update asked for its reboot (a Reset of the agent); then the agent stops."""
    await eventually(lambda: agent.reset_kind is not None, "the update rebooted the agent",
                     timeout)
    await agent.stop()


async def send(csms: TestCsms, action: str, payload: dict) -> dict:
    link = await csms.wait_station(SID)
    return await link.call(action, payload)


def boot_versions(csms: TestCsms, version: str) -> list[str]:
    if version == "1.6":
        return [p["firmwareVersion"] for p in csms.messages(SID, "BootNotification")]
    return [p["chargingStation"]["firmwareVersion"]
            for p in csms.messages(SID, "BootNotification")]


# ====================================================================== the happy flow


@pytest.mark.parametrize("version", [*VERSIONS, "2.1"])
async def test_signed_update_is_installed_and_reported_after_the_reboot_TC_L_01_CS(
        version, short_dir, files, pki):
    """L01 / TC_L_01_CS: every status in order with the requestId; after the reboot the
    BootNotification carries the new version (2.0.1, 2.1: reason FirmwareUpdate), then the
    security event FirmwareUpdated and Installed for the same requestId."""
    data = image_bytes()
    location = files.put(IMAGE, data)
    async with version_rig(version, short_dir) as (csms, make):
        agent = await make()
        install_root(agent, pki)
        await online(agent)
        old = boot_versions(csms, version)[0]
        assert old != NEW_VERSION
        action, payload = update_call(version, location, cert=_pem(pki.cert),
                                      signature=pki.sign(data))
        assert (await send(csms, action, payload))["status"] == "Accepted"
        await rebooted(agent)
        assert statuses(csms, version, 7) == [
            "Downloading", "Downloaded", "SignatureVerified", "Installing", "InstallRebooting"]
        assert not list((agent.state_dir / "firmware").rglob("*.bin")), "image left behind"

        agent2 = await make()
        await wait_status(csms, version, "Installed")
        assert boot_versions(csms, version) == [old, NEW_VERSION]
        if version != "1.6":
            assert csms.messages(SID, "BootNotification")[-1]["reason"] == "FirmwareUpdate"
        assert "FirmwareUpdated" in security_events(csms)
        assert statuses(csms, version, 7)[-1] == "Installed"
        assert agent2.status()["firmware"]["status"] == "Installed"
        assert agent2.status()["firmware"]["version"] == NEW_VERSION

        # Triggered afterwards: Idle, no requestId (whitepaper L01.FR.28; 2.0.1 schema note).
        if version == "1.6":
            trigger = ("ExtendedTriggerMessage",
                       {"requestedMessage": "FirmwareStatusNotification"})
        else:
            trigger = ("TriggerMessage", {"requestedMessage": "FirmwareStatusNotification"})
        assert (await send(csms, *trigger))["status"] == "Accepted"
        last = await csms.wait_for(status_action(version), station_id=SID,
                                   predicate=lambda p: p["status"] == "Idle")
        assert "requestId" not in last


# ====================================================================== refusals and failures


async def test_bad_signature_is_never_installed_TC_L_06_CS(version, short_dir, files, pki):
    """Downloading, Downloaded, InvalidSignature and the security event
    InvalidFirmwareSignature; the image is deleted, nothing installed, no reboot."""
    data = image_bytes()
    location = files.put(IMAGE, data)
    async with version_rig(version, short_dir) as (csms, make):
        agent = await make()
        install_root(agent, pki)
        await online(agent)
        tampered = pki.sign(data + b"x")
        action, payload = update_call(version, location, cert=_pem(pki.cert),
                                      signature=tampered)
        assert (await send(csms, action, payload))["status"] == "Accepted"
        await wait_status(csms, version, "InvalidSignature")
        await csms.wait_for("SecurityEventNotification", station_id=SID,
                            predicate=lambda p: p["type"] == "InvalidFirmwareSignature")
        assert statuses(csms, version, 7) == ["Downloading", "Downloaded", "InvalidSignature"]
        assert agent.reset_kind is None
        assert agent.firmware.current_version() is None, "installed all the same"
        # The status is committed first (durable), then the rejected image is deleted.
        await eventually(lambda: not list((agent.state_dir / "firmware").rglob("*.bin")),
                         "the rejected image deleted")
        assert all(e.operative for e in agent.station.evses.values())


async def test_signing_certificate_of_another_root_is_refused_TC_L_05_CS(
        version, short_dir, files, pki):
    """L01.FR.23/24: the certificate is checked before accepting: InvalidCertificate, the
    security event InvalidFirmwareSigningCertificate, and not a byte is downloaded."""
    data = image_bytes()
    location = files.put(IMAGE, data)
    async with version_rig(version, short_dir) as (csms, make):
        agent = await make()
        install_root(agent, pki)
        await online(agent)
        action, payload = update_call(version, location, cert=_pem(pki.other_cert),
                                      signature=pki.sign(data, pki.other_key))
        assert (await send(csms, action, payload))["status"] == "InvalidCertificate"
        await csms.wait_for("SecurityEventNotification", station_id=SID,
                            predicate=lambda p: p["type"] == "InvalidFirmwareSigningCertificate")
        await agent.station.quiet()
        assert files.requests == []
        assert statuses(csms, version) == []


async def test_no_manufacturer_root_means_no_signed_update(version, short_dir, files, pki):
    """Whitepaper: with every ManufacturerRootCertificate deleted no signed firmware can be
    installed."""
    location = files.put(IMAGE, image_bytes())
    async with version_rig(version, short_dir) as (csms, make):
        await make()
        action, payload = update_call(version, location, cert=_pem(pki.cert),
                                      signature=pki.sign(b""))
        assert (await send(csms, action, payload))["status"] == "InvalidCertificate"


async def test_missing_file_ends_in_download_failed_TC_L_07_CS(version, short_dir, files, pki):
    async with version_rig(version, short_dir) as (csms, make):
        agent = await make()
        install_root(agent, pki)
        await online(agent)
        action, payload = update_call(version, f"{files.url}/{IMAGE}_does_not_exist",
                                      cert=_pem(pki.cert), signature=pki.sign(b""), retries=0)
        assert (await send(csms, action, payload))["status"] == "Accepted"
        await wait_status(csms, version, "DownloadFailed")
        assert statuses(csms, version, 7) == ["Downloading", "DownloadFailed"]
        assert "404" in agent.status()["firmware"]["detail"]


async def test_retries_are_spaced_by_the_retry_interval_then_exhausted(
        version, short_dir, files, pki):
    """retries=2, retryInterval=30 on the fake clock: three attempts 30 s apart, then
    DownloadFailed, and nothing before the interval elapsed."""
    async with version_rig(version, short_dir, fake_clock=True) as (csms, make):
        agent = await make()
        clock: FakeClock = agent.clock  # type: ignore[assignment]
        install_root(agent, pki)
        await online(agent)
        action, payload = update_call(version, f"{files.url}/missing.bin", cert=_pem(pki.cert),
                                      signature=pki.sign(b""), retries=2, retry_interval=30)
        assert (await send(csms, action, payload))["status"] == "Accepted"
        for attempt in (1, 2):
            await eventually(lambda a=attempt: len(files.requests) == a, f"attempt {attempt}")
            await eventually(lambda: any(abs(d - 30) < 0.01 for d in clock.pending()),
                             "the retry wait began")
            await clock.advance(29)
            await agent.station.quiet()
            assert len(files.requests) == attempt, "retried before the interval"
            assert "DownloadFailed" not in statuses(csms, version)
            await clock.advance(1)
        await wait_status(csms, version, "DownloadFailed")
        assert len(files.requests) == 3
        assert statuses(csms, version, 7) == ["Downloading", "DownloadFailed"]


async def test_connection_cut_mid_download_is_resumed_with_range(version, short_dir, files, pki):
    data = image_bytes(300_000)
    location = files.put(IMAGE, data)
    files.cut.add(IMAGE)
    async with version_rig(version, short_dir) as (csms, make):
        agent = await make()
        install_root(agent, pki)
        await online(agent)
        action, payload = update_call(version, location, cert=_pem(pki.cert),
                                      signature=pki.sign(data), retries=1, retry_interval=0)
        assert (await send(csms, action, payload))["status"] == "Accepted"
        await wait_status(csms, version, "SignatureVerified")
        assert len(files.requests) == 2
        assert files.requests[0] == (IMAGE, None)
        assert files.requests[1][1] is not None and files.requests[1][1].startswith("bytes=")
        offset = int(files.requests[1][1].removeprefix("bytes=").rstrip("-"))
        assert 0 < offset < len(data)
        await rebooted(agent)


async def test_unsigned_request_is_refused_when_signatures_are_required_TC_L_18_CS(
        version, short_dir, files):
    """firmware.allow_unsigned false: 2.0.1 Rejected (TC_L_18_CS), 1.6 UpdateFirmware is a
    CALLERROR NotSupported (whitepaper L01.FR.20)."""
    location = files.put(IMAGE, image_bytes())
    async with version_rig(version, short_dir,
                           extra="firmware: {allow_unsigned: false}") as (csms, make):
        agent = await make()
        await online(agent)
        if version == "2.0.1":
            _, payload = update_call(version, location)
            assert (await send(csms, "UpdateFirmware", payload))["status"] == "Rejected"
        else:
            with pytest.raises(CsmsCallError) as err:
                await send(csms, "UpdateFirmware", {"location": location,
                                                    "retrieveDate": iso(agent.clock.now())})
            assert err.value.code == "NotSupported"
        assert files.requests == []


async def test_unsigned_update_on_the_bench(version, short_dir, files):
    """The mock installer accepts unsigned updates (any CSMS can exercise one): 1.6
    UpdateFirmware with the plain statuses, 2.0.1 L02 without SignatureVerified."""
    location = files.put(IMAGE, image_bytes())
    async with version_rig(version, short_dir) as (csms, make):
        agent = await make()
        await online(agent)
        if version == "1.6":
            assert await send(csms, "UpdateFirmware", {
                "location": location, "retrieveDate": iso(agent.clock.now())}) == {}
        else:
            _, payload = update_call(version, location)
            assert (await send(csms, "UpdateFirmware", payload))["status"] == "Accepted"
        await rebooted(agent)
        await make()
        await wait_status(csms, version, "Installed", request_id=None, signed=False)
        expected = (["Downloading", "Downloaded", "Installing", "Installed"] if version == "1.6"
                    else ["Downloading", "Downloaded", "Installing", "InstallRebooting",
                          "Installed"])
        assert statuses(csms, version, signed=False) == expected
        assert boot_versions(csms, version)[-1] == NEW_VERSION


# ====================================================================== transactions


def connector_status(version: str, payload: dict, evse: int) -> str | None:
    if version == "1.6":
        return payload["status"] if payload.get("connectorId") == evse else None
    return payload["connectorStatus"] if payload.get("evseId") == evse else None


def last_status(csms: TestCsms, version: str, evse: int) -> str | None:
    found = [s for p in csms.messages(SID, "StatusNotification")
             if (s := connector_status(version, p, evse)) is not None]
    return found[-1] if found else None


async def start_charging(version: str, agent: Agent, csms: TestCsms) -> None:
    from tests.conftest import charging, charging201

    await (charging(agent, csms) if version == "1.6" else charging201(agent, csms))


async def test_installation_waits_for_the_transaction_and_free_evses_go_unavailable_TC_L_15_CS(
        version, short_dir, files, pki):
    """L01.FR.06/07 (TC_L_15_CS): with a transaction on EVSE 1 the image is downloaded and
    verified, then InstallScheduled; the free EVSE 2 is Unavailable and takes no session; only
    when the transaction ended (EVSE 1 Unavailable too) is it installed; after the update both
    are Available again."""
    data = image_bytes()
    location = files.put(IMAGE, data)
    async with version_rig(version, short_dir, evses=2) as (csms, make):
        agent = await make()
        install_root(agent, pki)
        await online(agent)
        await start_charging(version, agent, csms)
        action, payload = update_call(version, location, cert=_pem(pki.cert),
                                      signature=pki.sign(data))
        assert (await send(csms, action, payload))["status"] == "Accepted"
        await wait_status(csms, version, "InstallScheduled")
        await eventually(lambda: last_status(csms, version, 2) == "Unavailable",
                         "the free EVSE 2 became Unavailable")
        agent.hal.plug(2)
        agent.hal.tap("TAG2", 2)
        await agent.station.quiet()
        assert agent.station.evses[2].tx is None, "a session began while an update waited"
        assert agent.station.evses[1].tx is not None
        assert "Installing" not in statuses(csms, version)
        assert agent.reset_kind is None

        agent.hal.unplug(1)  # the transaction ends; now the update installs
        await rebooted(agent)
        assert statuses(csms, version, 7) == [
            "Downloading", "Downloaded", "SignatureVerified", "InstallScheduled", "Installing",
            "InstallRebooting"]
        end = "StopTransaction" if version == "1.6" else "TransactionEvent"
        ends = [m for m in csms.log if m.action == end and m.direction == "cs->csms"
                and m.kind == "CALL"
                and (version == "1.6" or m.payload["eventType"] == "Ended")]
        installing = next(m for m in csms.log if m.direction == "cs->csms"
                          and m.action == status_action(version)
                          and m.payload["status"] == "Installing")
        assert ends and ends[0].t <= installing.t, "installed before the transaction ended"

        agent2 = await make()
        await wait_status(csms, version, "Installed")
        await agent2.station.quiet()
        assert all(e.operative for e in agent2.station.evses.values())
        await eventually(lambda: last_status(csms, version, 1) in ("Available", "Preparing")
                         and last_status(csms, version, 2) in ("Available", "Preparing",
                                                               "Occupied"),
                         "the EVSEs are available again after the update")


async def test_new_sessions_allowed_while_waiting_when_configured_TC_L_12_CS(
        short_dir, files, pki):
    """2.0.1 AllowNewSessionsPendingFirmwareUpdate true: the free EVSE stays Available."""
    data = image_bytes()
    location = files.put(IMAGE, data)
    async with version_rig("2.0.1", short_dir, evses=2) as (csms, make):
        agent = await make()
        install_root(agent, pki)
        await online(agent)
        result = await send(csms, "SetVariables", {"setVariableData": [{
            "component": {"name": "ChargingStation"},
            "variable": {"name": "AllowNewSessionsPendingFirmwareUpdate"},
            "attributeValue": "true"}]})
        assert result["setVariableResult"][0]["attributeStatus"] == "Accepted"
        got = await send(csms, "GetVariables", {"getVariableData": [{
            "component": {"name": "OCPPCommCtrlr"},
            "variable": {"name": "FileTransferProtocols"}}]})
        assert got["getVariableResult"][0]["attributeValue"] == "FTP,FTPS,HTTP,HTTPS"
        await start_charging("2.0.1", agent, csms)
        _, payload = update_call("2.0.1", location, cert=_pem(pki.cert),
                                 signature=pki.sign(data))
        assert (await send(csms, "UpdateFirmware", payload))["status"] == "Accepted"
        await wait_status(csms, "2.0.1", "InstallScheduled")
        await agent.station.quiet()
        assert agent.station.evses[2].operative
        agent.hal.unplug(1)
        await rebooted(agent)
        await make()
        await wait_status(csms, "2.0.1", "Installed")


# ====================================================================== superseding


async def test_new_request_cancels_a_download_in_progress_TC_L_10_CS(
        version, short_dir, files, pki):
    """L01.FR.26: a new request while downloading is AcceptedCanceled; the old one reports
    nothing more, the new one runs to the end."""
    slow = image_bytes()
    files.put("slow-0.9.bin", slow)
    files.hold.add("slow-0.9.bin")
    data = image_bytes(100_000)
    location = files.put(IMAGE, data)
    async with version_rig(version, short_dir) as (csms, make):
        agent = await make()
        install_root(agent, pki)
        await online(agent)
        action, first = update_call(version, f"{files.url}/slow-0.9.bin", request_id=1,
                                    cert=_pem(pki.cert), signature=pki.sign(slow))
        assert (await send(csms, action, first))["status"] == "Accepted"
        await asyncio.wait_for(files.holding.wait(), 5)
        await wait_status(csms, version, "Downloading", request_id=1)
        _, second = update_call(version, location, request_id=2, cert=_pem(pki.cert),
                                signature=pki.sign(data))
        assert (await send(csms, action, second))["status"] == "AcceptedCanceled"
        await rebooted(agent)
        assert statuses(csms, version, 1) == ["Downloading"]
        assert statuses(csms, version, 2) == [
            "Downloading", "Downloaded", "SignatureVerified", "Installing", "InstallRebooting"]
        assert not (agent.state_dir / "firmware" / "1").exists(), "the old partial file stays"
        await make()
        await wait_status(csms, version, "Installed", request_id=2)


async def test_a_request_during_installation_is_rejected_TC_L_11_CS(
        version, short_dir, files, pki, tmp_path):
    """L01.FR.27: once installing, the update cannot be cancelled: Rejected."""
    script = tmp_path / "install.sh"
    gate = tmp_path / "gate"
    script.write_text(f"#!/bin/sh\ntouch {tmp_path}/started\n"
                      f"for i in $(seq 100); do [ -e {gate} ] && exit 0; sleep 0.05; done\n"
                      "exit 1\n")
    script.chmod(0o755)
    data = image_bytes()
    location = files.put(IMAGE, data)
    extra = f"firmware: {{installer: command, command: {{install: [{script}]}}}}"
    async with version_rig(version, short_dir, extra=extra) as (csms, make):
        agent = await make()
        install_root(agent, pki)
        await online(agent)
        action, payload = update_call(version, location, cert=_pem(pki.cert),
                                      signature=pki.sign(data))
        assert (await send(csms, action, payload))["status"] == "Accepted"
        await eventually(lambda: (tmp_path / "started").exists(), "the installer runs")
        _, again = update_call(version, location, request_id=8, cert=_pem(pki.cert),
                               signature=pki.sign(data))
        assert (await send(csms, action, again))["status"] == "Rejected"
        gate.touch()
        await rebooted(agent)
        assert statuses(csms, version, 8) == []


# ====================================================================== confirmation, rollback


@pytest.mark.parametrize("how", ["confirm timeout", "restart before acceptance"])
async def test_new_firmware_without_an_accepted_boot_is_rolled_back(
        version, how, short_dir, files, pki):
    """Confirm only after an accepted BootNotification: without one within
    firmware.confirm_timeout_s the update is rolled back and the agent restarts; a restart
    before one (a crash, a power cut) rolls back at the next start.  The old version boots
    again and InstallationFailed reaches the CSMS for the same requestId."""
    data = image_bytes()
    location = files.put(IMAGE, data)
    async with version_rig(version, short_dir, fake_clock=True,
                           extra="firmware: {confirm_timeout_s: 120}") as (csms, make):
        agent = await make()
        install_root(agent, pki)
        await online(agent)
        old = boot_versions(csms, version)[0]
        action, payload = update_call(version, location, cert=_pem(pki.cert),
                                      signature=pki.sign(data))
        assert (await send(csms, action, payload))["status"] == "Accepted"
        await rebooted(agent)

        csms.boot_status, csms.boot_interval = "Rejected", 60
        agent2 = await make()
        await csms.wait_for("BootNotification", station_id=SID, count=2)
        assert boot_versions(csms, version)[-1] == NEW_VERSION
        if how == "confirm timeout":
            clock: FakeClock = agent2.clock  # type: ignore[assignment]
            await eventually(lambda: any(abs(d - 120) < 0.01 for d in clock.pending()),
                             "the confirmation wait began")
            await clock.advance(119)
            await agent2.station.quiet()
            assert agent2.reset_kind is None, "rolled back before the confirm timeout"
            await clock.advance(1)
            await rebooted(agent2)
        else:
            await agent2.stop()

        csms.boot_status = "Accepted"
        agent3 = await make()
        await wait_status(csms, version, "InstallationFailed")
        assert boot_versions(csms, version)[-1] == old
        assert agent3.firmware.current_version() is None
        assert statuses(csms, version, 7)[-1] == "InstallationFailed"
        assert "Installed" not in statuses(csms, version, 7)
        assert json.loads(agent3.storage.get_setting(JOB_SETTING))["phase"] == "done"


# ====================================================================== power cuts


async def test_restart_while_downloading_continues_the_file(version, short_dir, files, pki):
    """A restart (power cut) in the Downloading phase: the next start continues the partial
    file with a Range request, without a second Downloading, and the update completes."""
    data = image_bytes(400_000)
    location = files.put(IMAGE, data)
    files.hold.add(IMAGE)
    async with version_rig(version, short_dir) as (csms, make):
        agent = await make()
        install_root(agent, pki)
        await online(agent)
        action, payload = update_call(version, location, cert=_pem(pki.cert),
                                      signature=pki.sign(data))
        assert (await send(csms, action, payload))["status"] == "Accepted"
        part = agent.state_dir / "firmware" / "1" / (IMAGE + ".part")
        await eventually(lambda: part.exists() and part.stat().st_size == len(data) // 2,
                         "half the image on disk")
        assert agent.status()["firmware"]["bytes"] == len(data) // 2
        await agent.stop()  # the power goes
        files.hold.discard(IMAGE)

        agent2 = await make()
        await rebooted(agent2)
        assert files.requests[-1] == (IMAGE, f"bytes={len(data) // 2}-")
        await make()
        await wait_status(csms, version, "Installed")
        assert statuses(csms, version, 7) == [
            "Downloading", "Downloaded", "SignatureVerified", "Installing", "InstallRebooting",
            "Installed"]


def install_script(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "install.sh"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    return script


async def test_restart_while_installing_installs_again(version, short_dir, files, pki,
                                                       tmp_path):
    """A restart in the Installing phase (the installer was running): the next start runs
    the installer again on the verified image, then reboots into it as usual; the CSMS hears
    Installing once."""
    runs = tmp_path / "runs"
    script = install_script(tmp_path, f'echo "$1" >> {runs}\n'
                            f'[ "$(wc -l < {runs})" -gt 1 ] && exit 0\nsleep 30\n')
    data = image_bytes()
    location = files.put(IMAGE, data)
    extra = f"firmware: {{installer: command, command: {{install: [{script}]}}}}"
    async with version_rig(version, short_dir, extra=extra) as (csms, make):
        agent = await make()
        install_root(agent, pki)
        await online(agent)
        action, payload = update_call(version, location, cert=_pem(pki.cert),
                                      signature=pki.sign(data))
        assert (await send(csms, action, payload))["status"] == "Accepted"
        await eventually(lambda: runs.exists(), "the installer runs")
        await agent.stop()  # the power goes while installing

        agent2 = await make()
        await rebooted(agent2)
        lines = runs.read_text().split()
        assert len(lines) == 2 and lines[0] == lines[1] and lines[0].endswith(IMAGE)
        await make()
        await wait_status(csms, version, "Installed")
        assert statuses(csms, version, 7) == [
            "Downloading", "Downloaded", "SignatureVerified", "Installing",
            "InstallRebooting", "Installed"]
        assert boot_versions(csms, version)[-1] == NEW_VERSION


# ====================================================================== installers


async def test_command_installer_failure_is_installation_failed_TC_L_08_CS(
        version, short_dir, files, pki, tmp_path):
    script = install_script(tmp_path, 'echo "image rejected: wrong hardware"; exit 3\n')
    data = image_bytes()
    location = files.put(IMAGE, data)
    extra = f"firmware: {{installer: command, command: {{install: [{script}]}}}}"
    async with version_rig(version, short_dir, extra=extra) as (csms, make):
        agent = await make()
        install_root(agent, pki)
        await online(agent)
        action, payload = update_call(version, location, cert=_pem(pki.cert),
                                      signature=pki.sign(data))
        assert (await send(csms, action, payload))["status"] == "Accepted"
        await wait_status(csms, version, "InstallationFailed")
        assert statuses(csms, version, 7)[-2:] == ["Installing", "InstallationFailed"]
        detail = agent.status()["firmware"]["detail"]
        assert "status 3" in detail and "wrong hardware" in detail
        assert agent.reset_kind is None
        await agent.station.quiet()
        assert all(e.operative for e in agent.station.evses.values())


async def test_command_installer_runs_confirm_and_reports_its_version(short_dir, files, pki,
                                                                      tmp_path):
    log_file = tmp_path / "calls"
    script = install_script(tmp_path, f'echo "install $1" >> {log_file}\n')
    confirm = tmp_path / "confirm.sh"
    confirm.write_text(f"#!/bin/sh\necho confirm >> {log_file}\n")
    confirm.chmod(0o755)
    version_cmd = tmp_path / "version.sh"
    version_cmd.write_text(f"#!/bin/sh\n[ -e {log_file} ] && echo fw-2.0 || echo fw-1.0\n")
    version_cmd.chmod(0o755)
    data = image_bytes()
    location = files.put(IMAGE, data)
    extra = (f"firmware: {{installer: command, command: {{install: [{script}], "
             f"confirm: [{confirm}], version: [{version_cmd}]}}}}")
    async with version_rig("2.0.1", short_dir, extra=extra) as (csms, make):
        agent = await make()
        install_root(agent, pki)
        await online(agent)
        assert boot_versions(csms, "2.0.1") == ["fw-1.0"]
        _, payload = update_call("2.0.1", location, cert=_pem(pki.cert),
                                 signature=pki.sign(data))
        assert (await send(csms, "UpdateFirmware", payload))["status"] == "Accepted"
        await rebooted(agent)
        await make()
        await wait_status(csms, "2.0.1", "Installed")
        assert boot_versions(csms, "2.0.1")[-1] == "fw-2.0"
        calls = log_file.read_text().splitlines()
        assert calls[0].startswith("install /") and calls[0].endswith(IMAGE)
        assert calls[1:] == ["confirm"]


class DictStore:
    def __init__(self) -> None:
        self.values: dict[str, str] = {}

    def get_setting(self, key: str) -> str | None:
        return self.values.get(key)

    def set_setting(self, key: str, value: str) -> None:
        self.values[key] = value

    def delete_setting(self, key: str) -> None:
        self.values.pop(key, None)


def make_wheel(where: Path, name: str = "cp_fw_probe", version: str = "1.2.3") -> Path:
    """A minimal pure-Python wheel, zipped by hand (PEP 427): a package and its dist-info."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\n"
                         "Tag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = "\n".join(record) + "\n"
    wheel = where / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return wheel


def resolved(path: Path) -> Path:
    return Path(os.path.realpath(path))


def exists(path: Path) -> bool:
    return path.exists()


def probe(link: Path) -> list[str]:
    """The new environment's python imports the wheel's package and, through the .pth, a
    dependency of the running environment (yaml)."""
    out = subprocess.run(
        [str(link / "bin" / "python"), "-c",
         "import cp_fw_probe, yaml, sys; print(cp_fw_probe.VERSION, sys.prefix)"],
        capture_output=True, text=True, check=True)
    return out.stdout.split()


def python_package_options(link: Path, **kw: Any) -> Any:
    from agent.config import PythonPackageConfig

    return PythonPackageConfig(link=str(link), pip_args=["--no-index"], **kw)


async def test_python_package_installer_builds_a_venv_switches_and_rolls_back(tmp_path):
    """A wheel goes into a fresh venv next to the running one, which sees the running one's
    packages (.pth); the link is switched by one rename, the old target kept; roll_back
    switches it back; confirm removes what is older than the previous one."""
    root = tmp_path / "opt"
    base = root / "venvs" / "base"
    base.mkdir(parents=True)
    link = root / "venv"
    link.symlink_to(base)
    restarts: list[str] = []

    async def restart() -> None:
        restarts.append("restart")

    store = DictStore()
    installer = PythonPackageInstaller(InstallerState(store, "platform.python_package"),
                                       restart, python_package_options(link))
    assert installer.current_version() is None
    wheel = make_wheel(tmp_path)
    await installer.stage(wheel)
    assert await installer.install(wheel) == "1.2.3"
    target = resolved(link)
    assert target.parent == resolved(root / "venvs") and target != resolved(base)
    assert installer.current_version() == "1.2.3"
    assert installer.restart_python == str(link / "bin" / "python")
    version, prefix = await asyncio.to_thread(probe, link)
    assert version == "1.2.3" and resolved(Path(prefix)) == target

    await installer.reboot()
    assert restarts == ["restart"]
    assert await installer.roll_back() is True
    assert resolved(link) == resolved(base)
    assert exists(target), "the environment rolled back from is kept"

    second = make_wheel(tmp_path, version="1.2.4")
    assert await installer.install(second) == "1.2.4"
    await installer.confirm()
    third = make_wheel(tmp_path, version="1.2.5")
    assert await installer.install(third) == "1.2.5"
    await installer.confirm()
    kept = sorted(p.name for p in (root / "venvs").iterdir())
    assert kept == ["base", "cp_fw_probe-1.2.4-py3-none-any", "cp_fw_probe-1.2.5-py3-none-any"]


async def test_python_package_installer_needs_a_symlink_and_a_package(tmp_path):
    from agent.platform.installer import InstallError

    link = tmp_path / "venv"
    link.mkdir()

    async def restart() -> None:
        pass

    installer = PythonPackageInstaller(InstallerState(DictStore(), "p"), restart,
                                       python_package_options(link))
    with pytest.raises(InstallError, match="not a symlink"):
        await installer.stage(make_wheel(tmp_path))
    odd = tmp_path / "firmware.bin"
    odd.write_bytes(b"x")
    with pytest.raises(InstallError, match="not a wheel"):
        await installer.stage(odd)


# ====================================================================== signing


def _openssl(*args: str, data_in: bytes | None = None) -> bytes:
    return subprocess.run(["openssl", *args], input=data_in, capture_output=True,
                          check=True).stdout


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl command")
@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_cp_agent_firmware_sign_matches_the_openssl_line(kind, tmp_path, capsys):
    """The README's OpenSSL lines and `cp-agent firmware sign` make signatures the agent
    accepts, for an RSA key (RSA-PSS) and an EC key (ECDSA); a changed byte is refused."""
    from agent.cli import main

    key: Any = (rsa.generate_private_key(public_exponent=65537, key_size=2048) if kind == "rsa"
                else ec.generate_private_key(ec.SECP256R1()))
    root_key = ec.generate_private_key(ec.SECP256R1())
    cert = _cert("Firmware Signing", key, "Root", root_key, ca=False)
    key_file, cert_file, image = tmp_path / "key.pem", tmp_path / "cert.pem", tmp_path / IMAGE
    key_file.write_bytes(_key_pem(key))
    cert_file.write_text(_pem(cert))
    image.write_bytes(image_bytes(50_000))
    pss = ["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:32"]
    raw = _openssl("dgst", "-sha256", *(pss if kind == "rsa" else []), "-sign", str(key_file),
                   str(image))
    by_openssl = base64.b64encode(raw).decode()
    assert signing.verify_file(image, by_openssl, cert) == ("RSA-PSS" if kind == "rsa"
                                                             else "ECDSA")
    assert main(["firmware", "sign", "--key", str(key_file), "--cert", str(cert_file),
                 str(image)]) == 0
    ours = capsys.readouterr().out.strip()
    assert signing.verify_file(image, ours, cert) in ("RSA-PSS", "ECDSA")
    # ... and OpenSSL verifies ours.
    pub = tmp_path / "pub.pem"
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))
    sig = tmp_path / "sig"
    sig.write_bytes(base64.b64decode(ours))
    _openssl("dgst", "-sha256", *(pss if kind == "rsa" else []), "-verify", str(pub),
             "-signature", str(sig), str(image))
    image.write_bytes(image.read_bytes()[:-1] + b"\x00")
    with pytest.raises(signing.SignatureProblem):
        signing.verify_file(image, ours, cert)


def test_rsa_pkcs1v15_signatures_are_accepted_too(tmp_path):
    """What `openssl dgst -sha256 -sign` makes with an RSA key by default."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cert = _cert("Firmware Signing", key, "Root", ec.generate_private_key(ec.SECP256R1()),
                 ca=False)
    image = tmp_path / IMAGE
    image.write_bytes(b"firmware")
    sig = base64.b64encode(key.sign(b"firmware", padding.PKCS1v15(), hashes.SHA256())).decode()
    assert signing.verify_file(image, sig, cert) == "RSA-PKCS1v15"
    with pytest.raises(signing.SignatureProblem, match="base64"):
        signing.verify_file(image, "not base64!", cert)
    with pytest.raises(signing.SignatureProblem, match="no signature"):
        signing.verify_file(image, None, cert)


def test_signing_certificate_checks(pki):
    now = dt.datetime.now(dt.UTC)
    signing.check_signing_certificate(pki.cert, [pki.root], now)
    with pytest.raises(signing.CertificateProblem, match="not issued"):
        signing.check_signing_certificate(pki.other_cert, [pki.root], now)
    with pytest.raises(signing.CertificateProblem, match="expired"):
        signing.check_signing_certificate(pki.cert, [pki.root], now + dt.timedelta(days=400))
    with pytest.raises(signing.CertificateProblem, match="no ManufacturerRootCertificate"):
        signing.check_signing_certificate(pki.cert, [], now)
    with pytest.raises(signing.CertificateProblem, match="PEM"):
        signing.load_certificate("-----BEGIN CERTIFICATE-----\nnope\n")


def test_cp_agent_firmware_sign_names_a_wrong_key(tmp_path, capsys, pki):
    from agent.cli import main

    (tmp_path / "key.pem").write_bytes(_key_pem(pki.other_key))
    (tmp_path / "cert.pem").write_text(_pem(pki.cert))
    (tmp_path / IMAGE).write_bytes(b"x")
    assert main(["firmware", "sign", "--key", str(tmp_path / "key.pem"), "--cert",
                 str(tmp_path / "cert.pem"), str(tmp_path / IMAGE)]) == 1
    assert "does not belong to the certificate" in capsys.readouterr().err


# ====================================================================== FTP


@contextlib.contextmanager
def ftp_server(root: Path) -> Any:
    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import FTPHandler
    from pyftpdlib.servers import ThreadedFTPServer

    authorizer = DummyAuthorizer()
    authorizer.add_user("fw", "secret", str(root), perm="elr")
    handler = type("Handler", (FTPHandler,), {"authorizer": authorizer,
                                              "auth_failed_timeout": 0})
    server = ThreadedFTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"timeout": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield server.socket.getsockname()[1]
    finally:
        server.close_all()
        thread.join(5)


async def test_ftp_download_resumes_with_rest(tmp_path):
    data = image_bytes(150_000)
    root = tmp_path / "ftp"
    root.mkdir()
    (root / IMAGE).write_bytes(data)
    dest = tmp_path / "out" / IMAGE
    dest.parent.mkdir()
    dl.part_path(dest).write_bytes(data[:50_000])  # what an earlier attempt left
    seen: list[int] = []
    with ftp_server(root) as port:
        url = f"ftp://fw:secret@127.0.0.1:{port}/{IMAGE}"
        size = await dl.download(url, dest, progress=lambda d, t: seen.append(d))
        assert size == len(data) and dest.read_bytes() == data
        assert seen[0] > 50_000 and seen[-1] == len(data)  # continued, not restarted
        assert not dl.part_path(dest).exists()
        with pytest.raises(dl.DownloadError, match="550"):
            await dl.download(f"ftp://fw:secret@127.0.0.1:{port}/missing.bin",
                              tmp_path / "out" / "missing.bin")
        with pytest.raises(dl.DownloadError) as err:
            await dl.download(f"ftp://fw:wrong@127.0.0.1:{port}/{IMAGE}", tmp_path / "x.bin")
        assert "wrong" not in str(err.value)


async def test_update_over_ftp(short_dir, tmp_path):
    """The whole unsigned bench flow with an ftp:// location (2.0.1 L02)."""
    root = tmp_path / "ftp"
    root.mkdir()
    (root / IMAGE).write_bytes(image_bytes())
    with ftp_server(root) as port:
        async with version_rig("2.0.1", short_dir) as (csms, make):
            agent = await make()
            await online(agent)
            _, payload = update_call("2.0.1", f"ftp://fw:secret@127.0.0.1:{port}/{IMAGE}")
            assert (await send(csms, "UpdateFirmware", payload))["status"] == "Accepted"
            await rebooted(agent)
            await make()
            await wait_status(csms, "2.0.1", "Installed")


async def test_disk_space_is_checked_before_downloading(tmp_path, monkeypatch, files):
    location = files.put(IMAGE, image_bytes(100_000))
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(dl.shutil, "disk_usage",
                        lambda p: usage._replace(free=1000))
    with pytest.raises(dl.DownloadError, match="not enough space") as err:
        await dl.download(location, tmp_path / IMAGE)
    assert err.value.permanent
    assert not dl.part_path(tmp_path / IMAGE).exists() or \
        dl.part_path(tmp_path / IMAGE).stat().st_size == 0


# ====================================================================== configuration


@pytest.mark.parametrize(("extra", "message"), [
    ("firmware: {installer: flash}", "firmware.installer: 'flash' is not allowed"),
    ("firmware: {installer: command}", "firmware.command"),
    ("firmware: {installer: command, command: {install: [/no/such/rauc]}}",
     "firmware.command.install"),
    ("firmware: {command: {install: [sh]}}", "unless installer is command"),
    ("firmware: {installer: python_package, python_package: {link: venv}}",
     "firmware.python_package.link: 'venv' is not allowed; expected an absolute path"),
    ("firmware: {confirm_timeout_s: 0}", "firmware.confirm_timeout_s"),
])
def test_firmware_configuration_errors_name_the_key(extra, message, tmp_path):
    with pytest.raises(ConfigError) as err:
        agent_config("ws://127.0.0.1:9/", tmp_path, extra=extra)
    assert message in str(err.value)


def test_firmware_defaults_follow_the_hal(tmp_path):
    cfg = agent_config("ws://127.0.0.1:9/", tmp_path)
    assert cfg.firmware.kind("mock") == "mock" and cfg.firmware.unsigned_ok("mock")
    assert cfg.firmware.kind("hardware") == "none"
    assert not cfg.firmware.unsigned_ok("hardware")
