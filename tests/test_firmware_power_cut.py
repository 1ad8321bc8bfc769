"""Power cuts (SIGKILL) in every phase of a firmware update, with the agent as a real process.

``cp-agent run`` runs as a subprocess (mock HAL, mock installer) against the in-process strict
test CSMS and a local aiohttp file server.  Each case starts a signed update, waits until the
update is at one exact phase, kills the process with SIGKILL there, and starts it again on the
same state file; "every-phase" does so five times in one update (each phase in turn).  The
phases are reached through conditions, never through sleeps:

- ``downloading``: the file server sends half of the image, then stalls until the test lets
  it go (``FileServer.hold``);
- ``downloaded``, ``verified``, ``installing``, ``rebooting``: the mock installer's hold points
  (``CP_AGENT_MOCK_FIRMWARE_HOLD``: the update waits at phase P while ``P.hold`` exists and
  says so with ``P.reached``);
- ``confirming``: the CSMS kills the process while it processes the BootNotification of the
  new firmware (the station never reaches an accepted boot).

Before each kill the statuses reported so far are delivered (the agent's outbox is empty), so
the CSMS's record can be checked exactly: every status once and in order, the final state the
one the update's design promises, never Installed twice, and never an image installed that
did not pass its verification ("-tampered": the image on disk is changed while the station is
off; the next start must refuse it, before or after SignatureVerified).
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import pytest

from agent.platform.mock import HOLD_ENV
from agent.testing.csms import NO_REPLY, TestCsms
from tests.conftest import eventually
from tests.soak.power_cuts import Daemon
from tests.test_firmware import (
    IMAGE,
    NEW_VERSION,
    FileServer,
    Pki,
    _pem,
    image_bytes,
    status_action,
    update_call,
)

STATION = "FWCUT"
OLD_VERSION = "fw-old-1.0"
ROOT_USE = "ManufacturerRootCertificate"
SIGNED_FLOW = ["Downloading", "Downloaded", "SignatureVerified", "Installing",
               "InstallRebooting"]

CHAIN = ("downloading", "downloaded", "verified", "installing", "rebooting")
# scenario -> (the phases it cuts in turn; what the CSMS hears in the end, in order; whether
# the new version runs afterwards)
CASES = {
    # One update cut in each phase in turn (five power cuts), resumed every time.
    "every-phase": (CHAIN, [*SIGNED_FLOW, "Installed"], True),
    # The image changes on disk while the station is off: refused before / after verification.
    "downloaded-tampered": (("downloaded",), ["Downloading", "Downloaded", "InvalidSignature"],
                            False),
    "verified-tampered": (("verified",), ["Downloading", "Downloaded", "SignatureVerified",
                                          "Installing", "InstallVerificationFailed"], False),
    # The new firmware dies before its boot is accepted: rolled back.
    "confirming": (("confirming",), [*SIGNED_FLOW, "InstallationFailed"], False),
}
FINAL = {"Installed", "InstallationFailed", "InstallVerificationFailed", "InvalidSignature",
         "DownloadFailed"}


def _config(directory: Path, url: str, version: str) -> Path:
    cfg = directory / "config.yaml"
    doc = {
        "station": {"id": STATION, "firmware_version": OLD_VERSION},
        "ocpp": {"url": url, "versions": [version], "call_timeout_s": 3,
                 "reconnect": {"min_backoff_s": 0.05, "max_backoff_s": 0.3}},
        "storage": {"path": str(directory / "state.sqlite3")},
        "control": {"socket": str(directory / "ctl.sock")},
        "evses": [{"id": 1}],
        "hal": {"driver": "mock", "ev_max_current_a": 16},
        "log": {"level": "info"},
        "firmware": {"installer": "mock", "allow_unsigned": False},
    }
    cfg.write_text(json.dumps(doc))
    return cfg


def boot_versions(csms: TestCsms, version: str) -> list[str]:
    boots = csms.messages(STATION, "BootNotification")
    if version == "1.6":
        return [p["firmwareVersion"] for p in boots]
    return [p["chargingStation"]["firmwareVersion"] for p in boots]


async def _until_drained(d: Daemon, csms: TestCsms, timeout: float = 30.0) -> None:
    """Until the agent's outbox is empty, re-checked whenever the CSMS hears something."""
    changed = asyncio.Event()
    csms.on_message = lambda *_: changed.set()
    try:
        async with asyncio.timeout(timeout):
            while True:
                changed.clear()
                status = await d.ctl("status")
                if status["outbox"] == 0 and status["link"] == "connected":
                    return
                await changed.wait()
    finally:
        csms.on_message = None


def tamper(image: Path) -> None:
    data = bytearray(image.read_bytes())
    data[len(data) // 3] ^= 0xFF
    image.write_bytes(bytes(data))


@pytest.mark.parametrize(("scenario", "version"), [
    # The core is version-neutral: its phases are cut on 2.0.1; 1.6 shows that its signed
    # statuses (SignedFirmwareStatusNotification) survive a cut the same way.
    ("every-phase", "2.0.1"), ("downloaded-tampered", "1.6"), ("verified-tampered", "2.0.1"),
    ("confirming", "2.0.1"),
])
async def test_sigkill_in_every_firmware_phase(scenario, version, short_dir):
    points, expected, installed = CASES[scenario]
    pki = Pki()
    data = image_bytes(300_000)
    www = short_dir / "www"
    www.mkdir()
    files = FileServer(www)
    await files.start()
    location = files.put(IMAGE, data)
    csms = TestCsms(versions=(version,))
    url = await csms.start()
    holds = short_dir / "holds"
    holds.mkdir()
    for point in points:
        if point == "downloading":
            files.hold.add(IMAGE)
        elif point != "confirming":
            (holds / f"{point}.hold").touch()
    d = Daemon(short_dir, _config(short_dir, url, version), env={HOLD_ENV: str(holds)})
    action = status_action(version)

    def seen() -> list[str]:
        return [p["status"] for p in csms.messages(STATION, action)
                if p.get("requestId") == 7]

    try:
        await d.start()
        await csms.wait_for("BootNotification", station_id=STATION, timeout=20)
        link = await csms.wait_station(STATION, 20)
        installed_root = await link.call("InstallCertificate", {
            "certificateType": ROOT_USE, "certificate": _pem(pki.root)})
        assert installed_root["status"] == "Accepted"
        name, payload = update_call(version, location, cert=_pem(pki.cert),
                                    signature=pki.sign(data), retries=1, retry_interval=0)
        assert (await link.call(name, payload))["status"] == "Accepted"

        for point in points:
            # --------------------------------------------------- reach the phase, cut
            if point == "downloading":
                await asyncio.wait_for(files.holding.wait(), 20)
            elif point == "confirming":
                killed = asyncio.Event()

                def die_in_boot(station_link, boot, killed=killed):
                    csms.overrides.pop("BootNotification", None)
                    d.kill()  # the new firmware dies before its boot is accepted
                    killed.set()
                    return NO_REPLY

                await csms.wait_for(action, station_id=STATION, timeout=20,
                                    predicate=lambda p: p["status"] == "InstallRebooting")
                csms.overrides["BootNotification"] = die_in_boot
                await asyncio.wait_for(killed.wait(), 20)
            else:
                await eventually(lambda p=point: (holds / f"{p}.reached").exists(),
                                 f"the update held at {point}", 20)
            if point != "confirming":
                await _until_drained(d, csms)  # what was reported so far is at the CSMS
                d.kill()
            assert await d.wait_exit() == -signal.SIGKILL
            assert "Installed" not in seen()

            # --------------------------------------------------- the station is off
            images = list((short_dir / "firmware").rglob(IMAGE))
            if scenario.endswith("-tampered"):
                assert len(images) == 1, "the verified image is on disk while the power is off"
                tamper(images[0])
            (holds / f"{point}.hold").unlink(missing_ok=True)
            files.hold.discard(IMAGE)

            # --------------------------------------------------- power back
            await d.start()

        final = await csms.wait_for(action, station_id=STATION, timeout=30,
                                    predicate=lambda p: p["status"] in FINAL)
        assert final["requestId"] == 7
        if scenario == "downloaded-tampered":
            await csms.wait_for("SecurityEventNotification", station_id=STATION, timeout=10,
                                predicate=lambda p: p["type"] == "InvalidFirmwareSignature")
        await _until_drained(d, csms)
        assert seen() == expected, (scenario, seen())
        versions = boot_versions(csms, version)
        if installed:
            assert versions[-1] == NEW_VERSION
            if version != "1.6":
                assert csms.messages(STATION, "BootNotification")[-1]["reason"] == \
                    "FirmwareUpdate"
        elif scenario == "confirming":  # it ran once, unaccepted, and was rolled back
            assert versions == [OLD_VERSION, NEW_VERSION, OLD_VERSION], versions
        else:
            assert set(versions) == {OLD_VERSION}, versions
        if "downloading" in points:  # continued where the cut left it
            ranges = [r for n, r in files.requests if n == IMAGE]
            assert ranges == [None, f"bytes={len(data) // 2}-"], ranges
        status = await d.ctl("status")
        assert status["firmware"]["status"] == expected[-1]
        assert status["firmware"]["version"] == (NEW_VERSION if installed else None)
        assert not list((short_dir / "firmware").rglob(IMAGE)), "an image left behind"
    except BaseException:
        print(d.logs())
        raise
    finally:
        await d.close()
        await csms.stop()
        await files.stop()
    assert csms.violations == [] and csms.internal_errors == []


pytestmark = pytest.mark.asyncio
