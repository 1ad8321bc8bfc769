"""Plug & Charge end to end through the real ISO 15118 stack (issue 19).

The `iso15118` package's EVCC (hal/iso15118/evcc_sim.py) with the EV's certificates of the
test PKI (tests/pki15118.py, in the package's file layout) talks TLS to our SECC sidecar
(``hal.iso15118: {pnc: true, enforce_tls: true}``) over loopback; the SECC's own certificate
chain and the V2G / MO roots are what the station's certificate store exported to
``pki_dir`` after the test CSMS installed the roots (InstallCertificate) and signed the
station's V2G CSR (TriggerMessage SignV2GCertificate -> SignCertificate ->
CertificateSigned). The SECC reads those files at each SDP request (its TLS context) and at
each PaymentDetails (the MO root), so certificates written after its start count.

Each session costs JVM start-ups (the sidecar's, the EV's, on 2.0.1 the test CPS's): the
module holds few sessions, and they skip without ``.venv-iso15118`` or ``java`` like the EIM
session of tests/hal/test_iso15118.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.core.iso15118 import LIMIT_SOURCE
from hal.iso15118.client import EvSimulator, _sidecar_env
from hal.iso15118.hlc_config import default_python
from tests.conftest import eventually, online, online201, tx_events, version_rig
from tests.pki15118 import EMAID, pki
from tests.test_plug_and_charge import answer_pnc, csms_pnc, sent

SIDECAR_PYTHON = default_python()
JAVA = any(os.access(os.path.join(d, "java"), os.X_OK)
           for d in os.environ.get("PATH", "").split(os.pathsep))
needs_sidecar = pytest.mark.skipif(
    not ((Path(SIDECAR_PYTHON).parents[1] / ".cp-agent-installed").exists() and JAVA),
    reason=f"the ISO 15118 sidecar venv ({SIDECAR_PYTHON}) or java is missing: "
           "bash scripts/iso15118_venv.sh, apt install default-jre-headless")

CPS = Path(__file__).resolve().parents[1] / "iso15118_cps.py"
NS_2 = "urn:iso:15118:2:2013:MsgDef"
SESSION_S = 150  # one EV session, both JVMs on a loaded 2-core machine


def pnc_hal(state: Path, **more: Any) -> str:
    return yaml.safe_dump({"hal": {"driver": "mock", "ev_max_current_a": 16, "iso15118": {
        "enabled": True, "pnc": True, "enforce_tls": True, "pki_dir": str(state / "secc"),
        **more}}})


async def provision_secc(link: Any, csms: Any, version: str, state: Path) -> None:
    """What a CPO's CSMS does before Plug & Charge: the V2G and MO roots installed, the
    station's V2G CSR signed by the CPO sub-CA; the store exports them to the SECC."""
    if version == "1.6":
        answer_pnc(csms, version, "SignCertificate", lambda p: {"status": "Accepted"})
    for kind, item in (("V2GRootCertificate", pki().v2g_root), ("MORootCertificate",
                                                                pki().mo_root)):
        res = await csms_pnc(link, version, "InstallCertificate",
                             {"certificateType": kind, "certificate": item.pem})
        assert res["status"] == "Accepted", (kind, res)
    res = await csms_pnc(link, version, "TriggerMessage",
                         {"requestedMessage": "SignV2GCertificate"})
    assert res["status"] == "Accepted"
    await eventually(lambda: sent(csms, version, "SignCertificate"), "the V2G CSR", 10)
    (req,) = sent(csms, version, "SignCertificate")
    assert req["certificateType"] == "V2GCertificate"
    res = await csms_pnc(link, version, "CertificateSigned", {
        "certificateChain": pki().sign_v2g_csr(req["csr"]), "certificateType": "V2GCertificate"})
    assert res["status"] == "Accepted", res
    certs = state / "secc" / "iso15118_2" / "certs"
    for name in ("cpoCertChain.pem", "v2gRootCACert.der", "moRootCACert.der"):
        assert (certs / name).is_file(), f"{name} not exported to the SECC"
    assert (state / "secc" / "iso15118_2" / "private_keys" / "seccLeaf.key").is_file()


def ev_pki(state: Path, name: str, contract: str | None) -> str:
    """The EV's certificates: the V2G root it checks the SECC by, the OEM provisioning
    certificate, and its contract (``valid``, ``expired``; None: it has none yet)."""
    return str(pki().write_iso15118_tree(state / name, contract=contract))


async def run_ev(agent: Any, pki_dir: str, **kw: Any) -> EvSimulator:
    """Plug the EV in, run its whole ISO 15118 session, return what it reported."""
    service = agent.station.iso15118
    await service.hlc.wait_connected(1, timeout=90)
    agent.hal.plug(1)
    sim = await service.hlc.start_ev(1, tls=True, pki_dir=pki_dir, **kw)
    await asyncio.wait_for(sim.ended.wait(), SESSION_S)
    connected = sim.report("connected")
    assert connected == {"kind": "connected", "tls": True}, list(sim.tail)[-15:]
    return sim


async def unplugged(agent: Any) -> None:
    agent.hal.unplug(1)
    await eventually(lambda: LIMIT_SOURCE not in agent.station.evses[1].limits,
                     "the hold ends with the unplug", 10)


@contextlib.asynccontextmanager
async def cps_service(state: Path) -> AsyncIterator[Any]:
    """The test CPS (tests/iso15118_cps.py in the sidecar venv), warm before the EV asks:
    ``await ask(exi_request_b64)`` is its answer (a dict)."""
    tree = pki().write_iso15118_tree(state / "cps", contract="valid")
    proc = await asyncio.create_subprocess_exec(
        SIDECAR_PYTHON, str(CPS), "--pki", str(tree), stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_sidecar_env(),
        start_new_session=True)
    lock = asyncio.Lock()
    assert proc.stdout is not None and proc.stdin is not None

    async def answer() -> str:
        while True:  # the package logs on stdout too
            line = (await proc.stdout.readline()).decode()
            if not line:
                raise AssertionError("the test CPS ended")
            if line.startswith("CPS "):
                return line[4:]

    ready = asyncio.ensure_future(answer())

    async def ask(exi_b64: str) -> dict:
        async with lock:
            assert (await asyncio.wait_for(ready, 60)).strip() == "READY"
            proc.stdin.write((json.dumps({"exi_b64": exi_b64}) + "\n").encode())
            await proc.stdin.drain()
            return json.loads(await asyncio.wait_for(answer(), 4))

    try:
        yield ask
    finally:
        ready.cancel()
        with contextlib.suppress(BaseException):
            await ready
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


# ---------------------------------------------------------------- the SECC's files (no JVM)


async def test_secc_files_follow_the_store(short_dir: Path) -> None:
    """What the store exports is what the SECC uses at its next session: a root the CSMS
    deletes (DeleteCertificate) leaves the SECC's folder too; a file put there by hand stays."""
    from agent.security import crypto

    hal = pnc_hal(short_dir, python="/nonexistent/python")  # no sidecar: the files only
    async with version_rig("2.0.1", short_dir, extra=hal) as (csms, make):
        agent = await make()
        link = await online201(agent, csms)
        certs = short_dir / "secc" / "iso15118_2" / "certs"
        certs.mkdir(parents=True)
        (certs / "oemRootCACert.der").write_bytes(b"by hand")
        res = await link.call("InstallCertificate", {"certificateType": "MORootCertificate",
                                                     "certificate": pki().mo_root.pem})
        assert res["status"] == "Accepted"
        assert (certs / "moRootCACert.der").read_bytes() == crypto.der(pki().mo_root.cert)
        res = await link.call("DeleteCertificate", {"certificateHashData": crypto.hash_data(
            pki().mo_root.cert, pki().mo_root.cert)})
        assert res["status"] == "Accepted"
        assert not (certs / "moRootCACert.der").exists()
        assert not (certs / "moRootCACert.pem").exists()
        assert (certs / "oemRootCACert.der").read_bytes() == b"by hand"


# ---------------------------------------------------------------- 2.0.1


@needs_sidecar
async def test_pnc_201_contract_installed_accepted_and_expired_refused(short_dir: Path) -> None:
    """2.0.1 Plug & Charge through the real stack, two EVs on one SECC.

    EV 1 has no contract yet (M01): over TLS (the SECC chain the CSMS signed) it asks
    CertificateInstallation; the agent sends Get15118EVCertificate with the EV's signed EXI
    request, the CSMS's CPS answers with a CertificateInstallationRes for the EV's OEM key,
    which the EV verifies (CPS signature under the V2G root), decrypts and stores; it then
    authorizes with that contract (C07: Authorize with the EMAID as eMAID and the chain's OCSP
    data, Accepted), the CSMS learns its charging needs (K15), it charges on the schedule
    offered, stops, and the transaction (idToken the EMAID) ends at the unplug.
    EV 2's contract expired: the SECC refuses it (FAILED_CertificateExpired to the EV), no
    Authorize, no energy, no transaction (TxStartPoint PowerPathClosed)."""
    async with version_rig("2.0.1", short_dir, extra=pnc_hal(short_dir, cert_install=True)) \
            as (csms, make), cps_service(short_dir) as cps:
        agent = await make()
        link = await online201(agent, csms, timeout=10)
        await provision_secc(link, csms, "2.0.1", short_dir)
        csms.overrides["Authorize"] = lambda link, p: {
            "idTokenInfo": {"status": "Accepted"}, "certificateStatus": "Accepted"}
        exchanged: list[dict] = []

        async def get_15118_ev_certificate(link: Any, p: dict) -> dict:
            answer = await cps(p["exiRequest"])
            exchanged.append(answer)
            if "exi_b64" not in answer:
                return {"status": "Failed", "statusInfo": {"reasonCode": "CPS",
                                                           "additionalInfo": answer["error"]}}
            return {"status": "Accepted", "exiResponse": answer["exi_b64"]}

        csms.overrides["Get15118EVCertificate"] = get_15118_ev_certificate

        sim = await run_ev(agent, ev_pki(short_dir, "ev1", None), cert_install=True,
                           evcc_id="0A1B2C3D4E5F")
        assert sim.report("ended") == {"kind": "ended", "ok": True}, list(sim.tail)[-20:]
        (req,) = csms.messages("CP1", "Get15118EVCertificate")
        assert req["iso15118SchemaVersion"] == NS_2 and req["action"] == "Install"
        assert exchanged[0]["emaid"] == EMAID, exchanged
        assert sim.report("contract_installed") == {
            "kind": "contract_installed", "emaid": EMAID, "key_matches": True, "stored": True}
        (auth,) = csms.messages("CP1", "Authorize")
        assert auth["idToken"] == {"idToken": EMAID, "type": "eMAID"}
        hashes = auth["iso15118CertificateHashData"]
        assert hashes[0]["serialNumber"] == f"{pki().contract.cert.serial_number:x}"
        assert all(h["responderURL"] == "http://ocsp.mo.test/ocsp" for h in hashes)
        needs = csms.messages("CP1", "NotifyEVChargingNeeds")
        assert needs and needs[0]["chargingNeeds"]["acChargingParameters"][
            "energyAmount"] == 20_000
        session = agent.station.iso15118.session(1)
        assert session.emaid == EMAID and session.contract.accepted
        assert sim.report("schedule")["entries"][0]["limit_w"] == session.offered[0][1]
        assert agent.hal.sims[1].energy_wh > 0
        await unplugged(agent)
        ended = await csms.wait_for("TransactionEvent", predicate=lambda p:
                                    p["eventType"] == "Ended", timeout=10)
        started = tx_events(csms, eventType="Started")
        assert len(started) == 1
        assert started[0]["idToken"] == {"idToken": EMAID, "type": "eMAID"}
        assert ended["transactionInfo"]["transactionId"] == \
            started[0]["transactionInfo"]["transactionId"]

        energy = agent.hal.sims[1].energy_wh
        sim = await run_ev(agent, ev_pki(short_dir, "ev2", "expired"))
        assert sim.report("ended")["ok"] is False
        stopped = sim.report("stopped")
        assert stopped is not None and "FAILED_CERTIFICATE_EXPIRED" in stopped["reason"] \
            and "PaymentDetailsRes" in stopped["reason"], stopped
        assert [a["idToken"]["idToken"] for a in csms.messages("CP1", "Authorize")] == [EMAID]
        assert not agent.station.evses[1].snapshot().authorized
        assert agent.hal.sims[1].energy_wh == energy
        assert len(tx_events(csms, eventType="Started")) == 1
        await unplugged(agent)


# ---------------------------------------------------------------- 1.6


@needs_sidecar
async def test_pnc_16_through_data_transfer(short_dir: Path) -> None:
    """1.6 Plug & Charge through the OCA application note's DataTransfer
    (org.openchargealliance.iso15118pnc), the real stack: the roots installed and the V2G
    certificate signed through DataTransfer, the EV's contract (TLS, PaymentDetails)
    authorized by the wrapped Authorize (EMAID as eMAID), the transaction's idTag is the
    EMAID, energy flows, the session ends and the transaction stops at the unplug."""
    async with version_rig("1.6", short_dir, extra=pnc_hal(short_dir)) as (csms, make):
        agent = await make()
        link = await online(agent, csms, timeout=10)
        await provision_secc(link, csms, "1.6", short_dir)
        answer_pnc(csms, "1.6", "Authorize", lambda p: {
            "idTokenInfo": {"status": "Accepted"}, "certificateStatus": "Accepted"})
        sim = await run_ev(agent, ev_pki(short_dir, "ev", "valid"))
        assert sim.report("ended") == {"kind": "ended", "ok": True}, list(sim.tail)[-20:]
        (auth,) = sent(csms, "1.6", "Authorize")
        assert auth["idToken"] == {"idToken": EMAID, "type": "eMAID"}
        assert auth["iso15118CertificateHashData"][0]["serialNumber"] == \
            f"{pki().contract.cert.serial_number:x}"
        assert csms.messages("CP1", "Authorize") == []  # never a plain 1.6 Authorize
        start = await csms.wait_for("StartTransaction", station_id="CP1", timeout=10)
        assert start["idTag"] == EMAID
        assert agent.hal.sims[1].energy_wh > 0
        await unplugged(agent)
        stop = await csms.wait_for("StopTransaction", station_id="CP1", timeout=10)
        assert stop["meterStop"] > start["meterStart"]


# ---------------------------------------------------------------- 2.1, ISO 15118-20


@needs_sidecar
async def test_iso15118_20_ac_bpt_session_on_21(short_dir: Path) -> None:
    """An ISO 15118-20 AC_BPT EV (the package's -20 EVCC, EIM) on 2.1: its -20 charging needs
    with the bidirectional parameters reach NotifyEVChargingNeeds (AC_BPT, v2xChargingParameters),
    the EV gets the composite schedule in ScheduleExchange and charges."""
    hal = yaml.safe_dump({"hal": {"driver": "mock", "ev_max_current_a": 16, "iso15118": {
        "enabled": True, "protocols": ["ISO_15118_20_AC", "ISO_15118_2"]}}})
    async with version_rig("2.1", short_dir, extra=hal) as (csms, make):
        agent = await make()
        await online201(agent, csms, timeout=10)
        service = agent.station.iso15118
        await service.hlc.wait_connected(1, timeout=90)
        agent.hal.plug(1)
        sim = await service.hlc.start_ev(1, protocol_name="ISO_15118_20_AC",
                                         bidirectional=True)
        agent.hal.tap("TAG1")
        await asyncio.wait_for(sim.ended.wait(), SESSION_S)
        assert sim.report("ended") == {"kind": "ended", "ok": True}, list(sim.tail)[-20:]
        s = service.session(1)
        assert s is not None and s.protocol == "ISO_15118_20_AC", s
        needs = await csms.wait_for("NotifyEVChargingNeeds", timeout=10)
        cn = needs["chargingNeeds"]
        assert cn["requestedEnergyTransfer"] == "AC_BPT", cn
        assert cn["v2xChargingParameters"]["maxDischargePower"] > 0, cn
        assert s.needs is not None and s.needs.bidirectional and s.evcc_id
        offered = sim.report("schedule")  # the -20 ScheduleExchangeRes
        assert offered is not None and s.offered
        assert offered["entries"][0]["limit_w"] == pytest.approx(s.offered[0][1], rel=1e-3)
        assert agent.hal.sims[1].energy_wh > 0
