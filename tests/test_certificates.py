"""The certificate store on its own: keys and CSRs, the station chain and its refusals, roots by
use, deletion by hash data, bundles, file modes, atomic writes, and no private key in a log.

The CA is a throw-away one made here (:mod:`tests.csr_ca`); the clock is a FakeClock at the
real time, so certificates made "now" by the CA are valid on it.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import stat
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from agent.clock import FakeClock
from agent.core.settings import Settings
from agent.security import crypto
from agent.security.store import CSMS_ROOT, CertificateStore, same_hash_data
from tests.csr_ca import (
    DAY,
    Signer,
    TestCa,
    assert_no_private_key,
    cross_sign,
    pem,
    self_signed,
    sub_ca,
)

SID = "CP1"
ORG = "Test CPO"


class Events:
    def __init__(self) -> None:
        self.kinds: list[tuple[str, str]] = []

    def record(self, kind: str, info: str = "") -> None:
        self.kinds.append((kind, info))


class MemoryBackend:
    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    def settings(self, prefix: str = "") -> dict[str, str]:
        return {k: v for k, v in self.data.items() if k.startswith(prefix)}

    def set_setting(self, key: str, value: str) -> None:
        self.data[key] = value

    def delete_setting(self, key: str) -> None:
        self.data.pop(key, None)


def make_store(path: Path, **overrides: object) -> tuple[CertificateStore, Events, Settings]:
    settings = Settings(MemoryBackend(), overrides={"CpoName": ORG, **overrides})
    events = Events()
    store = CertificateStore(path / "certs", FakeClock(start_wall=time.time()), events,
                             settings=settings)
    return store, events, settings


@pytest.fixture
def ca(tmp_path: Path) -> TestCa:
    return TestCa.create(tmp_path / "pki", "cpo")


@pytest.fixture
def rig(tmp_path: Path, ca: TestCa) -> tuple[CertificateStore, Events]:
    store, events, _ = make_store(tmp_path)
    assert store.install_root(CSMS_ROOT, ca.pem) == "Accepted"
    return store, events


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ====================================================================== keys and CSRs


def test_csr_has_the_station_identity_and_the_cpo_and_its_key_stays_private(
        tmp_path: Path) -> None:
    store, _, _ = make_store(tmp_path)
    csr = x509.load_pem_x509_csr(store.new_csr(SID).encode())
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == SID
    assert csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == ORG
    key = csr.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    assert mode(tmp_path / "certs") == 0o700
    keys = list((tmp_path / "certs" / "pending").glob("*.key"))
    assert len(keys) == 1 and mode(keys[0]) == 0o600
    assert mode(keys[0].parent) == 0o700
    # The pending key is the CSR's key.
    private = serialization.load_pem_private_key(keys[0].read_bytes(), None)
    assert crypto.public_key_der(private) == crypto.public_key_der(csr)  # type: ignore[arg-type]


def test_rsa_keys_have_at_least_2048_bits(tmp_path: Path) -> None:
    store = CertificateStore(tmp_path / "c", FakeClock(), None, key_type="rsa")
    key = x509.load_pem_x509_csr(store.new_csr(SID).encode()).public_key()
    assert isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048
    with pytest.raises(ValueError, match="2048"):
        crypto.generate_key("rsa", rsa_bits=1024)
    with pytest.raises(ValueError, match="key type"):
        CertificateStore(tmp_path / "d", FakeClock(), None, key_type="dsa")


def test_a_directory_left_open_is_closed_again(tmp_path: Path) -> None:
    (tmp_path / "certs").mkdir(mode=0o755)
    os.chmod(tmp_path / "certs", 0o755)
    make_store(tmp_path)
    assert mode(tmp_path / "certs") == 0o700


# ====================================================================== station chain


def test_a_good_chain_becomes_the_station_identity(rig, ca: TestCa) -> None:
    store, events = rig
    assert store.client_identity() is None
    chain = Signer.of(ca).sign_csr(store.new_csr(SID))
    verdict = store.install_station_chain(chain, common_name=SID)
    assert verdict.status == "Accepted", verdict
    identity = store.client_identity()
    assert identity is not None
    chain_path, key_path = identity
    assert mode(key_path) == 0o600
    leaf = x509.load_pem_x509_certificates(chain_path.read_bytes())[0]
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    assert crypto.public_key_der(key) == crypto.public_key_der(leaf)  # type: ignore[arg-type]
    assert store.pending_count() == 0
    assert events.kinds == []


def test_a_chain_through_a_sub_ca_is_accepted(rig, ca: TestCa) -> None:
    store, _ = rig
    chain = sub_ca(ca).sign_csr(store.new_csr(SID))
    assert len(x509.load_pem_x509_certificates(chain.encode())) == 2
    assert store.install_station_chain(chain, common_name=SID).status == "Accepted"


def test_a_late_answer_to_an_earlier_csr_of_the_round_is_accepted(rig, ca: TestCa) -> None:
    store, _ = rig
    first = store.new_csr(SID, new_round=True)
    store.new_csr(SID)  # a resend: another key
    assert store.install_station_chain(Signer.of(ca).sign_csr(first),
                                       common_name=SID).status == "Accepted"


BAD_CHAINS = {
    "wrong CA": "InvalidCertificate",
    "wrong organization": "InvalidCertificate",
    "wrong common name": "InvalidCertificate",
    "key mismatch": "KeyMismatch",
    "expired": "Expired",
    "not PEM": "InvalidFormat",
}


@pytest.mark.parametrize("bad", list(BAD_CHAINS))
def test_a_bad_chain_is_rejected_with_a_security_event(rig, ca: TestCa, tmp_path: Path,
                                                       bad: str) -> None:
    store, events = rig
    csr = store.new_csr(SID)
    now = datetime.datetime.now(datetime.UTC)
    signer = Signer.of(ca)
    if bad == "wrong CA":
        chain = Signer.of(TestCa.create(tmp_path / "rogue", "rogue")).sign_csr(csr)
    elif bad == "wrong organization":
        chain = signer.sign_csr(csr, organization="Other CPO")
    elif bad == "wrong common name":
        chain = signer.sign_csr(csr, common_name="CP2")
    elif bad == "key mismatch":
        chain = signer.sign_csr(csr, public_key=ec.generate_private_key(
            ec.SECP256R1()).public_key())
    elif bad == "expired":
        chain = signer.sign_csr(csr, not_before=now - 10 * DAY, not_after=now - DAY)
    else:
        chain = "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"
    verdict = store.install_station_chain(chain, common_name=SID)
    assert verdict.status == "Rejected"
    assert verdict.reason == BAD_CHAINS[bad], verdict
    assert [k for k, _ in events.kinds] == ["InvalidChargingStationCertificate"]
    assert store.client_identity() is None
    assert store.pending_count() == 1  # the right certificate may still come


def test_a_chain_longer_than_the_limit_is_rejected_without_reading_it(tmp_path: Path,
                                                                      ca: TestCa) -> None:
    store, events, _ = make_store(tmp_path, CertificateSignedMaxChainSize=500)
    store.install_root(CSMS_ROOT, ca.pem)
    chain = Signer.of(ca).sign_csr(store.new_csr(SID))
    assert len(chain) > 500
    verdict = store.install_station_chain(chain, common_name=SID)
    assert (verdict.status, verdict.reason) == ("Rejected", "ChainTooLong")
    assert events.kinds == []


def test_without_a_csms_root_no_chain_can_be_trusted(tmp_path: Path, ca: TestCa) -> None:
    store, events, _ = make_store(tmp_path)
    chain = Signer.of(ca).sign_csr(store.new_csr(SID))
    assert store.install_station_chain(chain, common_name=SID).status == "Rejected"
    assert events.kinds[0][0] == "InvalidChargingStationCertificate"


def test_validity_is_judged_on_the_station_clock(rig, ca: TestCa) -> None:
    store, _ = rig
    chain = Signer.of(ca).sign_csr(store.new_csr(SID))
    store.clock.jump(90 * 86400)  # type: ignore[attr-defined]  # the certificate expired
    assert store.install_station_chain(chain, common_name=SID).status == "Rejected"


def test_renewal_is_due_a_month_before_expiry_and_the_old_identity_is_kept(
        rig, ca: TestCa) -> None:
    store, _ = rig
    assert store.renewal_due() is None
    store.install_station_chain(Signer.of(ca).sign_csr(store.new_csr(SID)), common_name=SID)
    first = store.station_certificate()
    assert first is not None
    assert store.renewal_due() == first.not_valid_after_utc - datetime.timedelta(days=30)
    store.install_station_chain(Signer.of(ca).sign_csr(store.new_csr(SID)), common_name=SID)
    second = store.station_certificate()
    assert second is not None and second.serial_number != first.serial_number
    identities = [p for p in (store.directory / "station").iterdir() if p.is_dir()]
    assert len(identities) == 2  # current + previous (A02.FR.10 fallback)


def test_a_chain_valid_later_is_kept_and_switched_to_when_valid_a02_fr_08(
        rig, ca: TestCa) -> None:
    store, events = rig
    store.install_station_chain(Signer.of(ca).sign_csr(store.new_csr(SID)), common_name=SID)
    first = store.station_certificate()
    start = datetime.datetime.now(datetime.UTC) + DAY
    later = Signer.of(ca).sign_csr(store.new_csr(SID), not_before=start)
    verdict = store.install_station_chain(later, common_name=SID)
    assert verdict.status == "Accepted" and events.kinds == []
    assert store.station_certificate() == first, "not used before its 'not valid before'"
    assert store.next_identity_at() == start.replace(microsecond=0)
    assert store.renewal_due() is not None and store.renewal_due() > store.clock.now() + 7 * DAY
    assert store.activate_due() is False
    # The kept one survives a restart, and the switch happens on the station clock.
    again = CertificateStore(store.directory, store.clock, events)
    store.clock.jump(DAY.total_seconds() + 1)  # type: ignore[attr-defined]
    identity = again.client_identity()  # asking for it switches (as after a reboot)
    assert identity is not None
    assert again.station_certificate() != first and again.next_identity_at() is None
    assert again.identity_on_trial()


def test_a_renewed_identity_on_trial_goes_back_to_the_previous_one_when_refused(
        rig, ca: TestCa) -> None:
    store, events = rig
    store.install_station_chain(Signer.of(ca).sign_csr(store.new_csr(SID)), common_name=SID)
    first = store.station_certificate()
    assert not store.identity_on_trial(), "a first certificate has nothing to go back to"
    store.install_station_chain(Signer.of(ca).sign_csr(store.new_csr(SID)), common_name=SID)
    assert store.identity_on_trial()
    assert store.discard_identity("refused by the CSMS") is True
    assert store.station_certificate() == first and not store.identity_on_trial()
    assert [k for k, _ in events.kinds] == ["DiscardedRenewedClientCertificate"]
    assert len([p for p in (store.directory / "station").iterdir() if p.is_dir()]) == 1
    store.install_station_chain(Signer.of(ca).sign_csr(store.new_csr(SID)), common_name=SID)
    store.confirm_identity()  # a connection with it worked: it stays
    assert store.discard_identity("later refusal") is False
    assert store.station_certificate() != first


def test_factory_provisioning_takes_a_matching_pair_only(tmp_path: Path, ca: TestCa) -> None:
    store, _, _ = make_store(tmp_path)
    issued = ca.issue_client(SID, organization=ORG)
    other = ca.issue_client("CP9", organization=ORG)
    with pytest.raises(ValueError, match="does not belong"):
        store.provision_identity(issued.cert_pem.decode(), other.key_pem)
    with pytest.raises(ValueError, match="encrypted"):
        store.provision_identity(issued.cert_pem.decode(), issued.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret")))
    assert store.client_identity() is None
    store.provision_identity(issued.cert_pem.decode() + ca.pem.decode(), issued.key_pem)
    identity = store.client_identity()
    assert identity is not None and mode(identity[1]) == 0o600
    assert store.station_certificate() == issued.cert


# ====================================================================== roots


def test_install_list_and_bundle_roots_by_use(tmp_path: Path, ca: TestCa) -> None:
    store, _, _ = make_store(tmp_path)
    assert store.ca_bundle_path() is None
    mfr = TestCa.create(tmp_path / "mfr", "mfr")
    assert store.install_root(CSMS_ROOT, ca.pem) == "Accepted"
    assert store.install_root(CSMS_ROOT, ca.pem) == "Accepted"  # again: no second copy
    assert store.install_root("ManufacturerRootCertificate", mfr.pem) == "Accepted"
    assert [c.subject for c in store.roots(CSMS_ROOT)] == [ca.cert.subject]
    assert store.entries() == 2
    bundle = store.ca_bundle_path()
    assert bundle is not None
    assert x509.load_pem_x509_certificates(bundle.read_bytes()) == [ca.cert]
    assert [i.use for i in store.installed()] == [CSMS_ROOT, "ManufacturerRootCertificate"]


def test_hash_data_is_what_the_spec_defines(tmp_path: Path, ca: TestCa) -> None:
    store, _, _ = make_store(tmp_path)
    store.install_root(CSMS_ROOT, ca.pem)
    data = store.installed()[0].hash_data()
    point = ca.cert.public_key().public_bytes(serialization.Encoding.X962,
                                              serialization.PublicFormat.UncompressedPoint)
    assert data == {
        "hashAlgorithm": "SHA256",
        # over the DER of the issuer's name / the issuer's public key bits (errata 2023-12)
        "issuerNameHash": hashlib.sha256(ca.cert.issuer.public_bytes()).hexdigest(),
        "issuerKeyHash": hashlib.sha256(point).hexdigest(),
        "serialNumber": format(ca.cert.serial_number, "x"),  # hex, no 0x, no leading zeroes
    }
    other = dict(data, issuerKeyHash=data["issuerKeyHash"].upper(),
                 serialNumber="00" + data["serialNumber"])
    assert same_hash_data(data, other)  # identifierString: case-insensitive
    assert store.installed()[0].hash_data("SHA384")["issuerNameHash"] == hashlib.sha384(
        ca.cert.issuer.public_bytes()).hexdigest()


@pytest.mark.parametrize("what", ["a leaf", "a sub-CA", "not a CA", "expired", "not yet valid",
                                  "two certificates", "garbage", "unknown use"])
def test_only_valid_roots_are_installed(tmp_path: Path, ca: TestCa, what: str) -> None:
    store, _, _ = make_store(tmp_path)
    now = datetime.datetime.now(datetime.UTC)
    use = CSMS_ROOT
    if what == "a leaf":
        text = Signer.of(ca).sign_csr(crypto.make_csr(crypto.generate_key(), "x"))
    elif what == "a sub-CA":
        text = pem(sub_ca(ca).cert)
    elif what == "not a CA":
        text = self_signed(ca=False)
    elif what == "expired":
        text = self_signed(ca=True, not_before=now - 9 * DAY, not_after=now - DAY)
    elif what == "not yet valid":
        text = self_signed(ca=True, not_before=now + DAY)
    elif what == "two certificates":
        text = ca.pem.decode() + self_signed(ca=True)
    elif what == "garbage":
        text = "hello"
    else:
        text, use = ca.pem.decode(), "CentralSystemRootCertificate"  # the block maps 1.6
    assert store.install_root(use, text) == "Rejected"
    assert store.entries() == 0


def test_a_full_store_rejects_another_root(tmp_path: Path) -> None:
    store, _, _ = make_store(tmp_path, CertificateStoreMaxLength=2)
    for n in range(2):
        assert store.install_root("MORootCertificate", self_signed(ca=True)) == "Accepted", n
    verdict = store.add_root(CSMS_ROOT, self_signed(ca=True))
    assert (verdict.status, verdict.reason) == ("Rejected", "StoreFull")


def test_a_root_that_cannot_be_written_fails(tmp_path: Path, ca: TestCa,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    store, _, _ = make_store(tmp_path)

    def broken(*a: object, **kw: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken)
    assert store.install_root(CSMS_ROOT, ca.pem) == "Failed"
    monkeypatch.undo()
    # No temporary file was left behind, nothing half-installed.
    assert list(store.directory.rglob("*.tmp")) == []
    assert store.entries() == 0


def test_additional_root_check_replaces_the_root_only_with_one_it_signed(
        tmp_path: Path, ca: TestCa) -> None:
    store, _, _ = make_store(tmp_path, AdditionalRootCertificateCheck=True)
    assert store.install_root(CSMS_ROOT, ca.pem) == "Accepted"
    stranger = TestCa.create(tmp_path / "stranger", "stranger")
    verdict = store.add_root(CSMS_ROOT, stranger.pem)  # M05.FR.10 / TC_M_09_CS
    assert (verdict.status, verdict.reason) == ("Rejected", "NotSignedByOld")
    new = TestCa.create(tmp_path / "new", "new")
    assert store.install_root(CSMS_ROOT, cross_sign(new, ca)) == "Accepted"  # M05.FR.11
    assert [(i.certificate.subject, i.fallback) for i in store.installed([CSMS_ROOT])] == [
        (new.cert.subject, False), (ca.cert.subject, True)]
    assert store.current_roots() == [store.installed([CSMS_ROOT])[0].certificate]
    assert store.has_fallback_root()
    new_only = store.ca_bundle_path(CSMS_ROOT, fallback=False)
    assert new_only is not None and new_only.read_bytes().count(b"BEGIN CERTIFICATE") == 1
    store.drop_fallback()  # connected with the new root (M05.FR.12)
    assert not store.has_fallback_root()
    assert [i.certificate.subject for i in store.installed()] == [new.cert.subject]


# ====================================================================== delete


def test_delete_by_hash_data(tmp_path: Path, ca: TestCa) -> None:
    store, _, _ = make_store(tmp_path)
    mfr = TestCa.create(tmp_path / "mfr", "mfr")
    store.install_root(CSMS_ROOT, ca.pem)
    store.install_root("ManufacturerRootCertificate", mfr.pem)
    target = next(i for i in store.installed() if i.use == "ManufacturerRootCertificate")
    data = target.hash_data("SHA512")
    assert store.delete(data).status == "Accepted"
    assert store.delete(data).status == "NotFound"
    assert [i.use for i in store.installed()] == [CSMS_ROOT]


def test_the_last_csms_root_in_use_and_the_station_certificate_are_not_deleted(
        rig, ca: TestCa, tmp_path: Path) -> None:
    store, _ = rig
    store.install_station_chain(Signer.of(ca).sign_csr(store.new_csr(SID)), common_name=SID)
    root = store.installed([CSMS_ROOT])[0].hash_data()
    verdict = store.delete(root, keep_last_csms_root=True)  # M04.FR.06
    assert (verdict.status, verdict.reason) == ("Failed", "LastCsmsRoot")
    leaf = store.station_certificate()
    assert leaf is not None
    own = crypto.hash_data(leaf, ca.cert)
    assert store.delete(own).status == "Failed"  # M04.FR.05 / TC_M_23_CS
    assert store.client_identity() is not None
    # With a second CSMS root, or over a connection without TLS, the root may go.
    assert store.install_root(CSMS_ROOT, TestCa.create(tmp_path / "b", "b").pem) == "Accepted"
    assert store.delete(root, keep_last_csms_root=True).status == "Accepted"


# ====================================================================== secrecy


def test_no_private_key_in_any_log_line(tmp_path: Path, ca: TestCa,
                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    store, _, _ = make_store(tmp_path)
    store.install_root(CSMS_ROOT, ca.pem)
    csr = store.new_csr(SID)
    store.install_station_chain(Signer.of(ca).sign_csr(csr, organization="x"),
                                common_name=SID)  # refused: logged
    store.install_station_chain(Signer.of(ca).sign_csr(csr), common_name=SID)
    identity = store.client_identity()
    assert identity is not None
    assert caplog.records  # the store did log
    assert_no_private_key(caplog.text, identity[1])


def test_the_store_names_the_key_types_crypto_has():
    """The store keeps its own copy so that start-up does not import cryptography."""
    from agent.security import crypto, store

    assert store.KEY_TYPES == crypto.KEY_TYPES
