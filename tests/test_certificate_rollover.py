"""Certificates changing under a live TLS connection: a new CSMS root with the old one as a
fallback (M05, AdditionalRootCertificateCheck), and a renewed station certificate on security
profile 3 (A02.FR.08: used at once, which means a reconnect; 2.1: discarded when the CSMS
refuses it).

Real TLS on 127.0.0.1 with the throw-away PKI of tests/tls_certs.py; the CSMS's certificate is
swapped on its live server context, and the station is kicked to make it reconnect.
"""

from __future__ import annotations

from typing import Any

import pytest

from agent.security import crypto
from agent.security.store import CSMS_ROOT, CertificateStore
from tests.conftest import eventually
from tests.csr_ca import Signer, TestCa, cross_sign
from tests.test_security_profiles import (
    PASSWORD,
    VERSIONS,
    config,
    csms_at,
    kinds,
    online,
    pki,  # noqa: F401 - the fixture
    running,
)

ORG = "Test CPO"
ROOT_TYPE = {"1.6": "CentralSystemRootCertificate"}
TRIGGER = {"1.6": ("ExtendedTriggerMessage", "SignChargePointCertificate")}


def serial(peer: dict) -> int:
    return int(peer["serialNumber"], 16)


async def reconnected(agent: Any, csms: Any, count: int) -> Any:
    await csms.kick("CP1")
    await eventually(lambda: agent.link.connects == count, f"connection #{count}", 10)
    return await csms.wait_station("CP1")


@pytest.mark.parametrize("version", VERSIONS)
async def test_TC_M_30_31_CS_the_new_csms_root_first_then_the_fallback(pki, version):  # noqa: F811
    """M05.FR.11-14 (1.6: 11-13): after InstallCertificate of a new CSMS root signed by the old
    one, a CSMS certificate of the old root still connects (the fallback), one of the new
    root connects with the new root alone and the old root goes; after that a certificate of
    the old root is refused."""
    old, server = pki["ca"], pki["server"]
    new = TestCa.create(pki["dir"] / "new", "new-root")
    CertificateStore(pki["dir"] / "certs", _Now()).install_root(CSMS_ROOT, old.pem)
    server_ctx = server.server_context()
    async with csms_at(version, server_ctx, passwords={"CP1": PASSWORD}) as csms:
        cfg = config(csms.url, pki["dir"], version, profile=2, password=PASSWORD,
                     defaults={"AdditionalRootCertificateCheck": True})
        async with running(cfg) as (agent, events):
            link = await online(agent, csms)
            store = agent.certificates
            res = await link.call("InstallCertificate", {
                "certificateType": ROOT_TYPE.get(version, CSMS_ROOT),
                "certificate": cross_sign(new, old)})
            assert res["status"] == "Accepted" and store.has_fallback_root()
            # TC_M_31_CS: the CSMS still shows a certificate of the old root.
            await reconnected(agent, csms, 2)
            assert store.has_fallback_root(), "connected through the fallback: it stays"
            # TC_M_30_CS: now one of the new root: verified with the new root alone.
            renewed = new.issue_server("csms-new")
            server_ctx.load_cert_chain(renewed.cert_path, renewed.key_path)
            link = await reconnected(agent, csms, 3)
            await eventually(lambda: not store.has_fallback_root(), "the fallback dropped")
            got = await link.call("GetInstalledCertificateIds", {
                "certificateType": ROOT_TYPE.get(version, CSMS_ROOT)} if version == "1.6"
                else {"certificateType": [CSMS_ROOT]})
            hashes = got.get("certificateHashData") or [
                e["certificateHashData"] for e in got["certificateHashDataChain"]]
            assert len(hashes) == 1 and crypto.hash_data(old.cert, old.cert) not in hashes
            assert "InvalidCsmsCertificate" not in kinds(events)
            # The old root is gone for good.
            server_ctx.load_cert_chain(server.cert_path, server.key_path)
            agent.link.failed.clear()
            await csms.kick("CP1")
            await eventually(lambda: agent.link.failed.is_set(), "a refused attempt", 10)
            assert "InvalidCsmsCertificate" in kinds(events)


@pytest.mark.parametrize("version", VERSIONS)
async def test_profile_3_reconnects_with_the_renewed_certificate_a02_fr_08(pki,  # noqa: F811
                                                                           version):
    ca, server, station = pki["ca"], pki["server"], pki["station"]
    async with csms_at(version, server.server_context(client_ca=ca)) as csms:
        csrs: list[str] = []
        csms.overrides["SignCertificate"] = lambda link, p: (csrs.append(p["csr"]),
                                                             {"status": "Accepted"})[1]
        cfg = config(csms.url, pki["dir"], version, profile=3, ca=ca, identity=station,
                     defaults={"CpoName": ORG})
        async with running(cfg) as (agent, events):
            link = await online(agent, csms)
            assert serial(csms.peer_certs["CP1"]) == station.cert.serial_number
            action, name = TRIGGER.get(version, ("TriggerMessage",
                                                 "SignChargingStationCertificate"))
            assert (await link.call(action, {"requestedMessage": name}))["status"] == "Accepted"
            await eventually(lambda: csrs, "a CSR")
            # The chain leads to ocpp.ca_file's root: that file is trusted for it too.
            res = await link.call("CertificateSigned",
                                  {"certificateChain": Signer.of(ca).sign_csr(csrs[-1])})
            assert res["status"] == "Accepted"
            leaf = agent.certificates.station_certificate()
            assert leaf is not None and leaf.serial_number != station.cert.serial_number
            await eventually(lambda: agent.link.connects == 2, "reconnected", 10)
            await csms.wait_station("CP1")
            assert serial(csms.peer_certs["CP1"]) == leaf.serial_number
            await eventually(lambda: not agent.certificates.identity_on_trial(), "confirmed")
            assert "DiscardedRenewedClientCertificate" not in kinds(events)


async def test_a_renewed_certificate_the_csms_refuses_is_discarded_2_1(pki):  # noqa: F811
    """2.1 appendix 1 DiscardedRenewedClientCertificate (critical): the renewed certificate
    is valid for the station but its CA is not one the CSMS takes client certificates from;
    after NetworkProfileConnectionAttempts refusals the station goes back to the previous
    certificate and tells the CSMS."""
    ca, server, station = pki["ca"], pki["server"], pki["station"]
    other = TestCa.create(pki["dir"] / "other", "other-cpo")
    async with csms_at("2.1", server.server_context(client_ca=ca)) as csms:
        cfg = config(csms.url, pki["dir"], "2.1", profile=3, ca=ca, identity=station,
                     defaults={"CpoName": ORG,
                               "OCPPCommCtrlr.NetworkProfileConnectionAttempts": 2})
        async with running(cfg) as (agent, events):
            link = await online(agent, csms)
            store = agent.certificates
            assert store.install_root(CSMS_ROOT, other.pem) == "Accepted"
            chain = Signer.of(other).sign_csr(store.new_csr("CP1"))
            res = await link.call("CertificateSigned", {
                "certificateChain": chain, "certificateType": "ChargingStationCertificate"})
            assert res["status"] == "Accepted"
            await eventually(lambda: "DiscardedRenewedClientCertificate" in kinds(events),
                             "the renewed certificate discarded", 15)
            await eventually(lambda: agent.link.connects == 2, "back with the old one", 10)
            await csms.wait_station("CP1")
            assert serial(csms.peer_certs["CP1"]) == station.cert.serial_number
            assert store.station_certificate().serial_number == station.cert.serial_number
            sent = await csms.wait_for("SecurityEventNotification", station_id="CP1",
                                       predicate=lambda p: p["type"]
                                       == "DiscardedRenewedClientCertificate")
            assert "CERTIFICATE" not in sent.get("techInfo", "")  # a sentence, no PEM


class _Now:
    """The real time, for a store prepared before the agent starts."""

    @staticmethod
    def now() -> Any:
        import datetime

        return datetime.datetime.now(datetime.UTC)
