"""The certificate store, certificate signing, 1.6 Plug & Charge and the control socket's
command code on first use (docs/performance.md, issue 18).

An idle station at security profile 0/1 without ISO 15118 must not import or build them; each
still works when first used, and what a previous run left (a root installed, a CSR the CSMS
has not answered yet, a station certificate to renew) is carried on across restarts.  A
station at security profile 2 needs the store from its first connection and builds it at
start-up.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from agent.clock import Clock
from agent.ocpp.v16.pnc import PlugAndCharge16
from agent.security import names
from agent.security.store import CSMS_ROOT, STORE_SETTINGS, USES, CertificateStore
from tests.conftest import eventually, version_rig
from tests.csr_ca import TestCa, sub_ca
from tests.test_security_profiles import (
    PASSWORD,
    config,
    csms_at,
    online,
    pki,  # noqa: F401 - the fixture
    running,
)
from tests.test_startup_imports import _idle_station

VERSIONS = ("1.6", "2.0.1", "2.1")
SID = "CP1"
# How each version says "trigger a CSR" and names the CSMS root.
TRIGGER = {"1.6": ("ExtendedTriggerMessage", "SignChargePointCertificate")}
TRIGGER_2X = ("TriggerMessage", "SignChargingStationCertificate")
ROOT_NAME = {"1.6": "CentralSystemRootCertificate"}

# Loaded only by the feature that needs them: an idle station must not pay for them.
DEFERRED = ("agent.security.store", "agent.security.crypto", "agent.ocpp.certificate_signing",
            "agent.ocpp.v16.iso15118_pnc", "agent.core.plug_and_charge",
            # the ctl client and command line, the connection protocol, the commands
            "agent.control", "agent.control_session", "agent.control_commands")

_IDLE = """
import asyncio, json, sys, tempfile
from agent.app import Agent
from agent.config import load_config_text

def loaded():
    return sorted(m for m in sys.modules if m in DEFERRED)

async def ctl_status(path):
    # A bare client on the socket (agent.control is the ctl client: not imported here).
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(b'{"cmd": "status"}\\n')
    await writer.drain()
    answer = json.loads(await asyncio.wait_for(reader.readline(), 30))
    writer.close()
    return answer

async def main():
    tmp = tempfile.mkdtemp(prefix="cpa-", dir="/tmp")
    cfg = load_config_text(json.dumps({
        "station": {"id": "CP1"},
        "ocpp": {"url": "ws://127.0.0.1:9/ocpp", "versions": [VERSION],
                 "reconnect": {"min_backoff_s": 5}},
        "storage": {"path": tmp + "/s.db"}, "control": {"socket": tmp + "/c.sock"}}))
    agent = Agent(cfg)
    await agent.start()
    await asyncio.sleep(0)  # the tasks the start spawned take their first step
    idle = loaded()
    built = agent.station.built("certificates") is not None
    answer = await ctl_status(cfg.control.socket)
    after = loaded()
    await agent.stop()
    return {"built": built, "ok": answer.get("ok"),
            "station": (answer.get("result") or {}).get("station"), "after_ctl": after}, idle

result, idle = asyncio.run(main())
print(json.dumps(result))
print(json.dumps(idle))
"""


@pytest.mark.parametrize("version", VERSIONS)
def test_an_idle_station_loads_no_certificate_pnc_or_ctl_command_code(version: str) -> None:
    """Security profile 0, no ISO 15118, nobody on the control socket: none of the deferred
    modules is imported and no certificate store is built; the first ``ctl status`` is
    answered and only then brings in the socket's protocol and commands (not the ctl
    client)."""
    script = _IDLE.replace("[VERSION]", json.dumps([version]))
    result, idle = _idle_station(script, DEFERRED)
    assert idle == []
    assert result["built"] is False
    assert result["ok"] is True and result["station"] == SID
    assert result["after_ctl"] == ["agent.control_commands", "agent.control_session"]


def test_the_names_the_blocks_read_without_the_store_are_the_stores() -> None:
    assert (CSMS_ROOT, USES, STORE_SETTINGS) == (names.CSMS_ROOT, names.USES,
                                                names.STORE_SETTINGS)
    assert STORE_SETTINGS is names.STORE_SETTINGS  # one registration, not two definitions


def test_holds_identity_is_what_the_store_writes(tmp_path: Path) -> None:
    """The start-up check reads the pointer file the store writes with its first station
    certificate."""
    ca = TestCa.create(tmp_path / "pki", "root")
    store = CertificateStore(tmp_path / "certs", Clock())
    store.install_root(CSMS_ROOT, ca.pem)
    assert not names.holds_identity(store.directory)
    chain = sub_ca(ca).sign_csr(store.new_csr(SID))
    assert store.install_station_chain(chain, common_name=SID).status == "Accepted"
    assert names.holds_identity(store.directory)


# ====================================================================== security profile 2


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_profile_2_station_builds_the_store_at_start_up(pki, version):  # noqa: F811
    """TLS needs the CSMS root from the first attempt: the store is built by start(), and
    the connection is verified with the root it holds (no ocpp.ca_file)."""
    CertificateStore(pki["dir"] / "certs", Clock()).install_root(CSMS_ROOT, pki["ca"].pem)
    async with csms_at(version, pki["server"].server_context(),
                       passwords={SID: PASSWORD}) as csms:
        cfg = config(csms.url, pki["dir"], version, profile=2, password=PASSWORD)
        async with running(cfg) as (agent, _events):
            assert agent.station.built("certificates") is not None
            await online(agent, csms)


# ====================================================================== first use, restarts


def _trigger(version: str) -> tuple[str, str]:
    return TRIGGER.get(version, TRIGGER_2X)


def _list_request(version: str) -> dict:
    return ({"certificateType": "ManufacturerRootCertificate"} if version == "1.6"
            else {"certificateType": ["ManufacturerRootCertificate"]})


def _hashes(version: str, res: dict) -> list[dict]:
    if version == "1.6":
        return res.get("certificateHashData", [])
    return [e["certificateHashData"] for e in res.get("certificateHashDataChain", [])]


async def _connected(csms: Any, agent: Any) -> Any:
    await asyncio.wait_for(agent.adapter.accepted.wait(), 10)
    return await csms.wait_station(SID)


@pytest.mark.parametrize("version", VERSIONS)
async def test_TC_M_01_CS_install_certificate_on_an_idle_profile_1_station(
        version: str, short_dir: Path) -> None:
    """InstallCertificate is the store's first use: it is built then, the root is kept, and
    after a restart (which builds no store: nothing needs it at start-up) it is listed."""
    ca = TestCa.create(short_dir / "pki", "maker")
    async with version_rig(version, short_dir, profile=1, password=PASSWORD) as (csms, make):
        agent = await make()
        link = await _connected(csms, agent)
        assert agent.station.built("certificates") is None
        res = await link.call("InstallCertificate", {
            "certificateType": "ManufacturerRootCertificate", "certificate": ca.pem.decode()})
        assert res["status"] == "Accepted"
        assert agent.station.built("certificates") is not None
        await agent.stop()

        agent = await make()
        assert agent.station.built("certificates") is None  # a root alone: no start-up duty
        link = await _connected(csms, agent)
        res = await link.call("GetInstalledCertificateIds", _list_request(version))
        assert res["status"] == "Accepted" and len(_hashes(version, res)) == 1


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_csr_pending_across_restarts_is_signed_and_then_renewed(
        version: str, short_dir: Path) -> None:
    """A02 across restarts on a profile-1 station: the CSR the CSMS accepted before a restart
    is matched by the CertificateSigned that comes after it (its key waits in the store's
    directory, read when the store is built by that message); from the next start on the
    station certificate makes the store a start-up duty and its A03 renewal check runs on
    every connection."""
    ca = TestCa.create(short_dir / "pki", "cpo")
    csrs: list[str] = []

    def sign_certificate(link: Any, payload: dict) -> dict:
        csrs.append(payload["csr"])
        return {"status": "Accepted"}

    async with version_rig(version, short_dir, profile=1, password=PASSWORD,
                           defaults={"CpoName": "Test CPO"}) as (csms, make):
        csms.overrides["SignCertificate"] = sign_certificate
        agent = await make()
        link = await _connected(csms, agent)
        res = await link.call("InstallCertificate", {
            "certificateType": ROOT_NAME.get(version, CSMS_ROOT),
            "certificate": ca.pem.decode()})
        assert res["status"] == "Accepted"
        action, name = _trigger(version)
        assert (await link.call(action, {"requestedMessage": name}))["status"] == "Accepted"
        await eventually(lambda: len(csrs) == 1, "a SignCertificate with a CSR")
        await agent.stop()

        agent = await make()
        assert agent.station.built("certificates") is None  # a pending CSR: no start-up duty
        link = await _connected(csms, agent)
        res = await link.call("CertificateSigned",
                              {"certificateChain": sub_ca(ca).sign_csr(csrs[0])})
        assert res["status"] == "Accepted"
        assert agent.certificates.client_identity() is not None
        await agent.stop()

        agent = await make()
        assert agent.station.built("certificates") is not None  # built by start()
        await _connected(csms, agent)
        await eventually(lambda: any(t.get_name().endswith("-cert-renewal")
                                     for t in asyncio.all_tasks()), "the renewal check")


# ====================================================================== 1.6 Plug & Charge


async def test_16_plug_and_charge_without_iso15118_is_the_seam_only(short_dir: Path) -> None:
    """Without ISO 15118 the 1.6 block is the light seam (iso15118_pnc not made), the note's
    vendorId stays unknown and its keys are no 1.6 configuration keys."""
    async with version_rig("1.6", short_dir) as (csms, make):
        agent = await make()
        assert type(agent.adapter.block(PlugAndCharge16)) is PlugAndCharge16
        link = await _connected(csms, agent)
        res = await link.call("DataTransfer", {"vendorId": "org.openchargealliance.iso15118pnc",
                                               "messageId": "TriggerMessage",
                                               "data": '{"requestedMessage": '
                                                       '"SignV2GCertificate"}'})
        assert res["status"] == "UnknownVendorId"
        res = await link.call("GetConfiguration", {"key": ["ISO15118PnCEnabled"]})
        assert res.get("unknownKey") == ["ISO15118PnCEnabled"]
        assert agent.station.built("certificates") is None
