"""Certificate management over the wire, on 1.6 (security extension) and 2.0.1 (A02, A03,
M03-M05), against the strict test CSMS with a throw-away CA made here.

Each test runs on both versions through :class:`Kit`, which knows how each says "trigger a
CSR", "the CSMS root type", "list the installed certificates" and "set the organization".
2.0.1-only behaviour (the CertSigningWaitMinimum resend schedule, SecurityCtrlr variables) is
named after its conformance test case.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.app import Agent
from agent.clock import FakeClock
from agent.ocpp.certificate_signing import CHECK_EVERY_S
from agent.security import crypto
from agent.security.store import CSMS_ROOT, CertificateStore
from agent.testing.csms import TestCsms
from tests.conftest import eventually, version_rig
from tests.csr_ca import (
    DAY,
    Signer,
    TestCa,
    assert_no_private_key,
    pem,
    self_signed,
    sub_ca,
)

SID = "CP1"
ORG = "Test CPO"


@dataclass(frozen=True)
class Kit:
    version: str
    trigger_action: str
    trigger_name: str
    csms_root: str
    event: str
    event_sent: bool  # whether the event is critical, i.e. sent to the CSMS

    def __repr__(self) -> str:
        return self.version

    def list_request(self, use: str | None) -> dict:
        if self.version == "1.6":
            return {"certificateType": use}
        return {"certificateType": [use]} if use else {}

    def hashes(self, res: dict) -> list[dict]:
        if self.version == "1.6":
            return res.get("certificateHashData", [])
        return [e["certificateHashData"] for e in res.get("certificateHashDataChain", [])]

    def use(self, store_use: str) -> str:
        return self.csms_root if store_use == CSMS_ROOT else store_use

    async def set_organization(self, link: Any, org: str) -> None:
        if self.version == "1.6":
            res = await link.call("ChangeConfiguration", {"key": "CpoName", "value": org})
            assert res["status"] == "Accepted"
        else:
            res = await link.call("SetVariables", {"setVariableData": [{
                "component": {"name": "SecurityCtrlr"},
                "variable": {"name": "OrganizationName"}, "attributeValue": org}]})
            assert res["setVariableResult"][0]["attributeStatus"] == "Accepted"


KITS = {
    "1.6": Kit("1.6", "ExtendedTriggerMessage", "SignChargePointCertificate",
               "CentralSystemRootCertificate", "InvalidChargePointCertificate", False),
    "2.0.1": Kit("2.0.1", "TriggerMessage", "SignChargingStationCertificate",
                 CSMS_ROOT, "InvalidChargingStationCertificate", True),
    # 2.1's own certificates block (GetCertificateChainStatus, the A-block changes).
    "2.1": Kit("2.1", "TriggerMessage", "SignChargingStationCertificate",
               CSMS_ROOT, "InvalidChargingStationCertificate", True),
}


@pytest.fixture(params=list(KITS))
def kit(request: pytest.FixtureRequest) -> Kit:
    return KITS[request.param]


@pytest.fixture
def ca(tmp_path: Path) -> TestCa:
    return TestCa.create(tmp_path / "pki", "cpo")


@dataclass
class Rig:
    kit: Kit
    csms: TestCsms
    agent: Agent
    link: Any
    csrs: list[str]

    @property
    def store(self) -> CertificateStore:
        return self.agent.certificates


async def connected(csms: TestCsms, agent: Agent) -> Any:
    await asyncio.wait_for(agent.adapter.accepted.wait(), 5)
    await asyncio.wait_for(agent.adapter.outbox.idle.wait(), 5)
    return await csms.wait_station(SID)


@pytest.fixture
async def rig(kit: Kit, short_dir: Path) -> AsyncIterator[Rig]:
    async with version_rig(kit.version, short_dir) as (csms, make):
        csrs: list[str] = []

        def sign_certificate(link: Any, payload: dict) -> dict:
            csrs.append(payload["csr"])
            return {"status": "Accepted"}

        csms.overrides["SignCertificate"] = sign_certificate
        agent = await make()
        yield Rig(kit, csms, agent, await connected(csms, agent), csrs)


async def install(r: Rig, use: str, text: bytes | str) -> str:
    body = text.decode() if isinstance(text, bytes) else text
    res = await r.link.call("InstallCertificate", {"certificateType": r.kit.use(use),
                                                   "certificate": body})
    return res["status"]


async def listed(r: Rig, use: str | None) -> tuple[str, list[dict]]:
    res = await r.link.call("GetInstalledCertificateIds",
                            r.kit.list_request(r.kit.use(use) if use else None))
    return res["status"], r.kit.hashes(res)


async def new_csr(r: Rig, count: int = 1) -> str:
    res = await r.link.call(r.kit.trigger_action, {"requestedMessage": r.kit.trigger_name})
    assert res["status"] == "Accepted"
    await eventually(lambda: len(r.csrs) >= count, "a SignCertificate with a CSR")
    return r.csrs[-1]


async def signed(r: Rig, chain: str) -> str:
    res = await r.link.call("CertificateSigned", {"certificateChain": chain})
    return res["status"]


# ====================================================================== A02


async def test_a02_csr_signed_and_installed_tc_a_11_cs(rig: Rig, ca: TestCa,
                                                       caplog: pytest.LogCaptureFixture
                                                       ) -> None:
    caplog.set_level(logging.DEBUG)
    r = rig
    await r.kit.set_organization(r.link, ORG)
    assert await install(r, CSMS_ROOT, ca.pem) == "Accepted"
    csr_pem = await new_csr(r)
    csr = x509.load_pem_x509_csr(csr_pem.encode())
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == SID
    assert csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == ORG
    key = csr.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.key_size >= 224
    assert await signed(r, sub_ca(ca).sign_csr(csr_pem)) == "Accepted"
    identity = r.store.client_identity()
    assert identity is not None
    leaf = x509.load_pem_x509_certificates(identity[0].read_bytes())[0]
    assert crypto.public_key_der(leaf) == crypto.public_key_der(csr)
    # The private key is in no frame and no log line (A02.FR.05).
    wire = json.dumps([m.payload for m in r.csms.log])
    assert "BEGIN CERTIFICATE REQUEST" in wire  # the check below does read the frames
    assert_no_private_key(wire, identity[1])
    assert_no_private_key(caplog.text, identity[1])


BAD = ["wrong CA", "wrong organization", "key mismatch", "expired"]


@pytest.mark.parametrize("bad", BAD)
async def test_a02_invalid_certificate_rejected_with_event_tc_a_14_cs(
        rig: Rig, ca: TestCa, tmp_path: Path, bad: str) -> None:
    r = rig
    await r.kit.set_organization(r.link, ORG)
    await install(r, CSMS_ROOT, ca.pem)
    csr = await new_csr(r)
    now = datetime.datetime.now(datetime.UTC)
    signer = Signer.of(ca)
    chain = {
        "wrong CA": lambda: Signer.of(TestCa.create(tmp_path / "x", "rogue")).sign_csr(csr),
        "wrong organization": lambda: signer.sign_csr(csr, organization="Someone Else"),
        "key mismatch": lambda: signer.sign_csr(
            csr, public_key=ec.generate_private_key(ec.SECP256R1()).public_key()),
        "expired": lambda: signer.sign_csr(csr, not_before=now - 9 * DAY, not_after=now - DAY),
    }[bad]()
    seen: list[str] = []
    r.agent.station.security_events.listeners.append(lambda e: seen.append(e.kind))
    assert await signed(r, chain) == "Rejected"
    assert seen == ["InvalidChargingStationCertificate"]  # the bus speaks 2.0.1 names
    if r.kit.event_sent:  # critical on 2.0.1; 1.6 lists it as not critical: security log only
        await r.csms.wait_for("SecurityEventNotification", station_id=SID,
                              predicate=lambda p: p["type"] == r.kit.event)
    assert r.store.client_identity() is None


async def test_a02_certificate_valid_later_is_used_from_then_a02_fr_08(kit: Kit,
                                                                     short_dir: Path,
                                                                     ca: TestCa) -> None:
    """A chain whose validity starts in ten minutes (beyond the 5-minute clock-skew allowance)
    is Accepted without an event, kept, and switched to when the station clock gets there."""
    quiet = f"storage: {{path: {short_dir / 'CP1.sqlite3'}, meter_persist_s: 300}}"
    async with version_rig(kit.version, short_dir, fake_clock=True, extra=quiet,
                           defaults={"CpoName": ORG}) as (csms, make):
        clock = FakeClock(start_wall=time.time())
        csms.now = clock.now
        agent = await make(clock=clock)
        link = await connected(csms, agent)
        store = agent.certificates
        store.install_root(CSMS_ROOT, ca.pem)
        start = clock.now() + datetime.timedelta(minutes=10)
        chain = Signer.of(ca).sign_csr(store.new_csr(SID), not_before=start)
        seen: list[str] = []
        agent.station.security_events.listeners.append(lambda e: seen.append(e.kind))
        res = await link.call("CertificateSigned", {"certificateChain": chain})
        assert res["status"] == "Accepted" and seen == []
        assert store.station_certificate() is None and store.next_identity_at() is not None
        await eventually(lambda: any(t.get_name().endswith("-cert-renewal")
                                     for t in asyncio.all_tasks()), "the renewal check")
        await clock.advance(600 - 60)
        assert store.station_certificate() is None, "not before its 'not valid before'"
        await clock.advance(120)
        await eventually(lambda: store.station_certificate() is not None, "switched")
        assert store.next_identity_at() is None


async def test_a02_chain_longer_than_the_limit_is_rejected(kit: Kit, short_dir: Path,
                                                           ca: TestCa) -> None:
    async with version_rig(kit.version, short_dir,
                           defaults={"CertificateSignedMaxChainSize": 800}) as (csms, make):
        agent = await make()
        link = await connected(csms, agent)
        store = agent.certificates
        store.install_root(CSMS_ROOT, ca.pem)
        chain = sub_ca(ca).sign_csr(store.new_csr(SID))
        assert len(chain) > 800
        res = await link.call("CertificateSigned", {"certificateChain": chain})
        assert res["status"] == "Rejected"
        assert store.client_identity() is None


async def test_a02_csr_refused_by_the_csms_is_not_resent_tc_a_15_cs(kit: Kit,
                                                                    short_dir: Path) -> None:
    async with version_rig(kit.version, short_dir, fake_clock=True,
                           defaults={"SecurityCtrlr.CertSigningWaitMinimum": 60}) as (csms,
                                                                                     make):
        csms.overrides["SignCertificate"] = lambda link, p: {"status": "Rejected"}
        clock = FakeClock(start_wall=time.time())
        csms.now = clock.now
        agent = await make(clock=clock)
        link = await connected(csms, agent)
        res = await link.call(kit.trigger_action, {"requestedMessage": kit.trigger_name})
        assert res["status"] == "Accepted"
        await csms.wait_for("SignCertificate", station_id=SID)
        await agent.clock.advance(3600)  # type: ignore[attr-defined]
        assert len(csms.messages(SID, "SignCertificate")) == 1


async def test_a02_resend_doubles_the_wait_tc_a_23_cs(short_dir: Path, ca: TestCa) -> None:
    """2.0.1 only: CertSigningWaitMinimum 60 s, CertSigningRepeatTimes 1 -> new CSRs after
    60 s and 120 s more, then no more; the certificate for the first CSR is still taken."""
    defaults = {"SecurityCtrlr.CertSigningWaitMinimum": 60,
                "SecurityCtrlr.CertSigningRepeatTimes": 1, "CpoName": ORG}
    async with version_rig("2.0.1", short_dir, fake_clock=True,
                           defaults=defaults) as (csms, make):
        clock = FakeClock(start_wall=time.time())
        csms.now = clock.now
        agent = await make(clock=clock)
        link = await connected(csms, agent)
        agent.certificates.install_root(CSMS_ROOT, ca.pem)

        def sent() -> int:
            return len(csms.messages(SID, "SignCertificate"))

        await link.call("TriggerMessage", {"requestedMessage": "SignChargingStationCertificate"})
        await eventually(lambda: sent() == 1, "the first CSR")
        first = csms.messages(SID, "SignCertificate")[0]
        assert first["certificateType"] == "ChargingStationCertificate"
        for wait, total in ((60, 2), (120, 3)):
            await eventually(lambda w=wait: any(abs(d - w) < 0.01 for d in clock.pending()),
                             f"the {wait} s wait")
            await clock.advance(wait - 1)
            assert sent() == total - 1
            await clock.advance(1)
            await eventually(lambda t=total: sent() == t, f"CSR #{total}")
        await clock.advance(3600)
        assert sent() == 3
        csrs = [p["csr"] for p in csms.messages(SID, "SignCertificate")]
        assert len(set(csrs)) == 3  # a new key each time
        res = await link.call("CertificateSigned", {
            "certificateChain": Signer.of(ca).sign_csr(csrs[0]),
            "certificateType": "ChargingStationCertificate"})
        assert res["status"] == "Accepted"


async def test_v2g_certificate_is_rejected_2_0_1(short_dir: Path, ca: TestCa) -> None:
    """ISO 15118 is out of scope: no V2G CSR was ever sent, so no V2G certificate is taken."""
    async with version_rig("2.0.1", short_dir) as (csms, make):
        agent = await make()
        link = await connected(csms, agent)
        chain = Signer.of(ca).sign_csr(agent.certificates.new_csr(SID))
        res = await link.call("CertificateSigned", {"certificateChain": chain,
                                                    "certificateType": "V2GCertificate"})
        assert res["status"] == "Rejected"
        trig = await link.call("TriggerMessage", {"requestedMessage": "SignV2GCertificate"})
        assert trig["status"] == "NotImplemented"


async def test_2_1_csr_request_ids_v2g20_and_the_oem_root(short_dir: Path, ca: TestCa,
                                                          tmp_path: Path) -> None:
    """2.1's changes to A02 and M03/M05: SignCertificate numbers its CSRs (requestId, echoed
    in CertificateSigned), a V2G20Certificate is refused (ISO 15118-20), OEMRootCertificate
    is installed and listed; SecurityCtrlr.AllowSecurityProfileDowngrade reads false."""
    async with version_rig("2.1", short_dir, defaults={"CpoName": ORG}) as (csms, make):
        sent: list[dict] = []
        csms.overrides["SignCertificate"] = lambda link, p: (sent.append(p),
                                                             {"status": "Accepted"})[1]
        agent = await make()
        link = await connected(csms, agent)
        root = {"certificateType": CSMS_ROOT, "certificate": ca.pem.decode()}
        assert (await link.call("InstallCertificate", root))["status"] == "Accepted"
        for count in (1, 2):
            await link.call("TriggerMessage",
                            {"requestedMessage": "SignChargingStationCertificate"})
            await eventually(lambda c=count: len(sent) == c, f"CSR #{count}")
        assert sent[1]["requestId"] == sent[0]["requestId"] + 1
        chain = Signer.of(ca).sign_csr(sent[1]["csr"])
        res = await link.call("CertificateSigned", {
            "certificateChain": chain, "certificateType": "V2G20Certificate",
            "requestId": sent[1]["requestId"]})
        assert res["status"] == "Rejected"
        res = await link.call("CertificateSigned", {
            "certificateChain": chain, "certificateType": "ChargingStationCertificate",
            "requestId": sent[1]["requestId"]})
        assert res["status"] == "Accepted"
        oem = TestCa.create(tmp_path / "oem", "oem")
        res = await link.call("InstallCertificate", {"certificateType": "OEMRootCertificate",
                                                     "certificate": oem.pem.decode()})
        assert res["status"] == "Accepted"
        res = await link.call("GetInstalledCertificateIds",
                              {"certificateType": ["OEMRootCertificate"]})
        assert [e["certificateHashData"] for e in res["certificateHashDataChain"]] == [
            crypto.hash_data(oem.cert, oem.cert)]
        var = {"component": {"name": "SecurityCtrlr"},
               "variable": {"name": "AllowSecurityProfileDowngrade"}}
        got = await link.call("GetVariables", {"getVariableData": [var]})
        assert got["getVariableResult"][0]["attributeValue"] == "false"
        put = await link.call("SetVariables", {"setVariableData": [
            {**var, "attributeValue": "true"}]})
        assert put["setVariableResult"][0]["attributeStatus"] == "Rejected"


# ====================================================================== A03


async def test_a03_renewal_a_month_before_expiry(kit: Kit, short_dir: Path, ca: TestCa) -> None:
    """A station certificate expiring in 30 days and 2 hours: no CSR until 30 days are left,
    then one; the renewed certificate is not renewed again."""
    now = datetime.datetime.now(datetime.UTC)
    issued = ca.issue_client(SID, organization=ORG,
                             not_after=now + 30 * DAY + datetime.timedelta(hours=2))
    store = CertificateStore(short_dir / "certs", FakeClock(start_wall=time.time()), None)
    assert store.install_root(CSMS_ROOT, ca.pem) == "Accepted"
    store.provision_identity(issued.cert_pem.decode() + ca.pem.decode(), issued.key_pem)
    # Days of fake time: nothing that wakes every second (meter persistence) or few minutes.
    quiet = f"storage: {{path: {short_dir / 'CP1.sqlite3'}, meter_persist_s: 300}}"
    async with version_rig(kit.version, short_dir, fake_clock=True, extra=quiet,
                           defaults={"CpoName": ORG}) as (csms, make):
        clock = FakeClock(start_wall=time.time())
        csms.now = clock.now  # the CSMS's time moves with the station's fake time
        csms.heartbeat_interval = 86400
        agent = await make(clock=clock)
        await connected(csms, agent)
        until_due = (issued.cert.not_valid_after_utc - datetime.timedelta(days=30)
                     - clock.now()).total_seconds()
        assert 3600 < until_due < 3 * 3600
        await eventually(lambda: any(t.get_name().endswith("-cert-renewal")
                                     for t in asyncio.all_tasks()), "the renewal check")
        await clock.advance(until_due - 60)
        assert csms.messages(SID, "SignCertificate") == []
        await clock.advance(120)
        csr = (await csms.wait_for("SignCertificate", station_id=SID))["csr"]
        link = await csms.wait_station(SID)
        res = await link.call("CertificateSigned",
                              {"certificateChain": Signer.of(ca).sign_csr(csr)})
        assert res["status"] == "Accepted"
        renewed = agent.certificates.station_certificate()
        assert renewed is not None and renewed.serial_number != issued.cert.serial_number
        await clock.advance(CHECK_EVERY_S + 60)  # checked again: not due, no new CSR
        assert len(csms.messages(SID, "SignCertificate")) == 1


# ====================================================================== M03 / M04 / M05


async def test_m05_m03_m04_install_list_delete(rig: Rig, ca: TestCa, tmp_path: Path) -> None:
    """TC_M_01/02_CS install, TC_M_12/13/17/18_CS list, TC_M_19_CS none of a type,
    TC_M_20_CS delete, TC_M_22_CS delete what is not there."""
    r = rig
    mfr = TestCa.create(tmp_path / "mfr", "mfr")
    assert await listed(r, CSMS_ROOT) == ("NotFound", [])
    assert await install(r, CSMS_ROOT, ca.pem) == "Accepted"
    assert await install(r, "ManufacturerRootCertificate", mfr.pem) == "Accepted"
    status, hashes = await listed(r, CSMS_ROOT)
    assert status == "Accepted"
    assert hashes == [crypto.hash_data(ca.cert, ca.cert)]
    status, hashes = await listed(r, "ManufacturerRootCertificate")
    assert hashes == [crypto.hash_data(mfr.cert, mfr.cert)]
    if r.kit.version != "1.6":
        res = await r.link.call("GetInstalledCertificateIds", {})  # TC_M_18_CS: every type
        assert sorted(e["certificateType"] for e in res["certificateHashDataChain"]) == [
            CSMS_ROOT, "ManufacturerRootCertificate"]
        assert (await r.link.call("GetInstalledCertificateIds", {
            "certificateType": ["MORootCertificate"]})) == {"status": "NotFound"}
        entries = await r.link.call("GetVariables", {"getVariableData": [{
            "component": {"name": "SecurityCtrlr"},
            "variable": {"name": "CertificateEntries"}}]})
        assert entries["getVariableResult"][0]["attributeValue"] == "2"
        # A 2.1 root type is listed to a 2.1 CSMS only (the 2.0.1 schema has no such type).
        oem = TestCa.create(tmp_path / "oem", "oem")
        assert r.store.install_root("OEMRootCertificate", oem.pem) == "Accepted"
        res = await r.link.call("GetInstalledCertificateIds", {})
        listed_types = {e["certificateType"] for e in res["certificateHashDataChain"]}
        assert ("OEMRootCertificate" in listed_types) == (r.kit.version == "2.1")
    target = crypto.hash_data(mfr.cert, mfr.cert)
    res = await r.link.call("DeleteCertificate", {"certificateHashData": target})
    assert res["status"] == "Accepted"
    assert await listed(r, "ManufacturerRootCertificate") == ("NotFound", [])
    res = await r.link.call("DeleteCertificate", {"certificateHashData": target})
    assert res["status"] == "NotFound"


@pytest.mark.parametrize("what", ["expired", "sub-CA", "garbage"])
async def test_m05_invalid_certificate_rejected_tc_m_07_cs(rig: Rig, ca: TestCa,
                                                            what: str) -> None:
    r = rig
    now = datetime.datetime.now(datetime.UTC)
    text = {"expired": lambda: self_signed(ca=True, not_before=now - 9 * DAY,
                                           not_after=now - DAY),
            "sub-CA": lambda: pem(sub_ca(ca).cert),
            "garbage": lambda: "not a certificate"}[what]()
    assert await install(r, CSMS_ROOT, text) == "Rejected"
    assert await listed(r, CSMS_ROOT) == ("NotFound", [])


async def test_m05_store_full_is_rejected(kit: Kit, short_dir: Path, tmp_path: Path) -> None:
    async with version_rig(kit.version, short_dir,
                           defaults={"CertificateStoreMaxLength": 1}) as (csms, make):
        agent = await make()
        r = Rig(kit, csms, agent, await connected(csms, agent), [])
        one, two = (TestCa.create(tmp_path / n, n) for n in ("one", "two"))
        assert await install(r, CSMS_ROOT, one.pem) == "Accepted"
        assert await install(r, "ManufacturerRootCertificate", two.pem) == "Rejected"


async def test_m05_additional_root_check_tc_m_09_cs(kit: Kit, short_dir: Path, ca: TestCa,
                                                    tmp_path: Path) -> None:
    async with version_rig(kit.version, short_dir,
                           defaults={"AdditionalRootCertificateCheck": True}) as (csms, make):
        agent = await make()
        r = Rig(kit, csms, agent, await connected(csms, agent), [])
        assert await install(r, CSMS_ROOT, ca.pem) == "Accepted"
        stranger = TestCa.create(tmp_path / "s", "stranger")
        assert await install(r, CSMS_ROOT, stranger.pem) == "Rejected"
        assert await listed(r, CSMS_ROOT) == ("Accepted", [crypto.hash_data(ca.cert, ca.cert)])


async def test_m04_station_certificate_cannot_be_deleted_tc_m_23_cs(rig: Rig,
                                                                    ca: TestCa) -> None:
    r = rig
    await r.kit.set_organization(r.link, ORG)
    await install(r, CSMS_ROOT, ca.pem)
    csr = await new_csr(r)
    assert await signed(r, Signer.of(ca).sign_csr(csr)) == "Accepted"
    leaf = r.store.station_certificate()
    assert leaf is not None
    res = await r.link.call("DeleteCertificate",
                            {"certificateHashData": crypto.hash_data(leaf, ca.cert)})
    assert res["status"] in ("Failed", "NotFound")
    assert r.store.client_identity() is not None


async def test_certificate_keys_and_variables(rig: Rig) -> None:
    r = rig
    if r.kit.version == "1.6":
        res = await r.link.call("GetConfiguration", {"key": [
            "CpoName", "CertificateSignedMaxChainSize", "CertificateStoreMaxLength",
            "AdditionalRootCertificateCheck"]})
        keys = {k["key"]: (k["readonly"], k["value"]) for k in res["configurationKey"]}
        assert keys == {"CpoName": (False, ""), "CertificateSignedMaxChainSize": (True, "10000"),
                        "CertificateStoreMaxLength": (True, "20"),
                        "AdditionalRootCertificateCheck": (True, "false")}
        refused = await r.link.call("ChangeConfiguration", {
            "key": "CertificateStoreMaxLength", "value": "99"})
        assert refused["status"] == "Rejected"
    else:
        names = ["OrganizationName", "CertificateEntries", "CertSigningWaitMinimum",
                 "CertSigningRepeatTimes", "AdditionalRootCertificateCheck"]
        res = await r.link.call("GetVariables", {"getVariableData": [
            {"component": {"name": "SecurityCtrlr"}, "variable": {"name": n}} for n in names]})
        got = {x["variable"]["name"]: x.get("attributeValue")
               for x in res["getVariableResult"]}
        assert got == {"OrganizationName": "", "CertificateEntries": "0",
                       "CertSigningWaitMinimum": "300", "CertSigningRepeatTimes": "1",
                       "AdditionalRootCertificateCheck": "false"}
    # The organization is one setting on both versions.
    await r.kit.set_organization(r.link, ORG)
    assert r.agent.settings["CpoName"] == ORG


def test_state_dir_layout(short_dir: Path) -> None:
    """The agent keeps its certificates in <state_dir>/certs, private to the agent."""
    from tests.conftest import agent_config

    agent = Agent(agent_config("ws://127.0.0.1:9/", short_dir), control=False)
    assert agent.certificates.directory == agent.state_dir / "certs"
    assert agent.station.certificates is agent.certificates  # type: ignore[attr-defined]
    assert (agent.state_dir / "certs").stat().st_mode & 0o777 == 0o700
