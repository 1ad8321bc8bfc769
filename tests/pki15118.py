"""A test PKI for ISO 15118 Plug & Charge, made with ``cryptography`` (no files of anyone's).

The hierarchies of ISO 15118-2 (ECDSA P-256, SHA-256; sub-CA 1 with pathLen 1, sub-CA 2 with
pathLen 0, as the ``iso15118`` package's chain check wants them):

- V2G root -> CPO sub-CA 1 -> CPO sub-CA 2 -> SECC leaf (the station's V2G certificate);
- MO root -> MO sub-CA 1 -> MO sub-CA 2 -> contract leaf, CN = the EMAID (``EMAID``), with an
  OCSP responder URL in its Authority Information Access; an expired contract of the same MO;
  a contract of a root nobody installed (``rogue``);
- OEM root -> OEM sub-CA 1 -> OEM sub-CA 2 -> OEM provisioning leaf (the EV's);
- the certificate provisioning service's leaf (``cps``, signing CertificateInstallationRes)
  under CPO sub-CA 2 of the V2G root (a test shortcut for the CPS sub-CAs).

Use::

    from tests.pki15118 import pki
    p = pki()                       # built once per process (a few ms of EC keys)
    p.contract_chain_pem()          # contract leaf, MO sub-CA 2, MO sub-CA 1 (PEM)
    p.pem(p.mo_root)                # to install as MORootCertificate
    p.ocsp_response(p.contract, p.mo_sub2, revoked=False)   # DER, for GetCertificateStatus
    p.sign_v2g_csr(csr_pem)         # a CertificateSigned chain for a V2G CSR
    p.write_iso15118_tree(path)     # the iso15118 package's PKI_PATH layout (EVCC / SECC)
    p.write_iso15118_tree(path, contract=None)   # an EV without a contract (to install one)

Everything is valid from an hour ago for a year (the expired contract: ended yesterday), on
the real clock: a FakeClock started at ``time.time()`` sees them as valid too.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, NameOID

EMAID = "DE8ACC12345678"
EXPIRED_EMAID = "DE8ACC00000001"
ROGUE_EMAID = "DE8ROG99999999"
OCSP_URL = "http://ocsp.mo.test/ocsp"
SECC_ID = "CP1SECC"

Key = ec.EllipticCurvePrivateKey


@dataclass
class Issued:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: Key

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _name(cn: str, org: str = "cp-agent tests", dc: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn),
             x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
             x509.NameAttribute(NameOID.COUNTRY_NAME, "DE")]
    if dc:
        attrs.append(x509.NameAttribute(NameOID.DOMAIN_COMPONENT, dc))
    return x509.Name(attrs)


def _make(subject: x509.Name, issuer: Issued | None, *, ca: bool, path_len: int | None = None,
          key: Key | None = None, not_before: dt.datetime | None = None,
          not_after: dt.datetime | None = None, ocsp_url: str | None = None) -> Issued:
    now = dt.datetime.now(dt.UTC)
    key = key or ec.generate_private_key(ec.SECP256R1())
    builder = (x509.CertificateBuilder()
               .subject_name(subject)
               .issuer_name(issuer.cert.subject if issuer else subject)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(not_before or now - dt.timedelta(hours=1))
               .not_valid_after(not_after or now + dt.timedelta(days=365))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=path_len if ca else None),
                              critical=True)
               .add_extension(x509.KeyUsage(
                   digital_signature=not ca, content_commitment=False,
                   key_encipherment=False, data_encipherment=False, key_agreement=not ca,
                   key_cert_sign=ca, crl_sign=ca, encipher_only=False, decipher_only=False),
                   critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                              critical=False))
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False)
    if ocsp_url:
        builder = builder.add_extension(x509.AuthorityInformationAccess([
            x509.AccessDescription(AuthorityInformationAccessOID.OCSP,
                                   x509.UniformResourceIdentifier(ocsp_url))]),
            critical=False)
    signer = issuer.key if issuer else key
    return Issued(builder.sign(signer, hashes.SHA256()), key)


@dataclass
class Pki:
    v2g_root: Issued
    cpo_sub1: Issued
    cpo_sub2: Issued
    secc: Issued
    mo_root: Issued
    mo_sub1: Issued
    mo_sub2: Issued
    contract: Issued
    expired_contract: Issued
    rogue_root: Issued
    rogue_sub1: Issued
    rogue_sub2: Issued
    rogue_contract: Issued
    oem_root: Issued
    oem_sub1: Issued
    oem_sub2: Issued
    oem_leaf: Issued
    extra: dict[str, Issued] = field(default_factory=dict)
    cps: Issued | None = None

    @staticmethod
    def pem(item: Issued) -> str:
        return item.pem

    def contract_chain_pem(self, which: str = "valid") -> str:
        """The EV's contract chain, leaf first (``valid``, ``expired`` or ``rogue``)."""
        if which == "rogue":
            return "".join(i.pem for i in (self.rogue_contract, self.rogue_sub2,
                                           self.rogue_sub1))
        leaf = self.contract if which == "valid" else self.expired_contract
        return "".join(i.pem for i in (leaf, self.mo_sub2, self.mo_sub1))

    def secc_chain_pem(self) -> str:
        return "".join(i.pem for i in (self.secc, self.cpo_sub2, self.cpo_sub1))

    def sign_v2g_csr(self, csr_pem: str, *, days: int = 365) -> str:
        """What a CSMS's CPO CA returns for the station's V2G CSR: SECC leaf, CPO sub-CA 2,
        CPO sub-CA 1 (PEM)."""
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        now = dt.datetime.now(dt.UTC)
        cert = (x509.CertificateBuilder()
                .subject_name(csr.subject).issuer_name(self.cpo_sub2.cert.subject)
                .public_key(csr.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=1))
                .not_valid_after(now + dt.timedelta(days=days))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .sign(self.cpo_sub2.key, hashes.SHA256()))
        leaf = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
        return leaf + self.cpo_sub2.pem + self.cpo_sub1.pem

    def ocsp_response(self, cert: Issued, issuer: Issued, *, revoked: bool = False,
                      valid_for: dt.timedelta = dt.timedelta(hours=6)) -> bytes:
        """A signed OCSP response (DER) about ``cert``, by its issuer, good until
        ``valid_for`` from now (nextUpdate)."""
        now = dt.datetime.now(dt.UTC)
        status = ocsp.OCSPCertStatus.REVOKED if revoked else ocsp.OCSPCertStatus.GOOD
        builder = ocsp.OCSPResponseBuilder().add_response(
            cert=cert.cert, issuer=issuer.cert, algorithm=hashes.SHA256(), cert_status=status,
            this_update=now - dt.timedelta(minutes=1), next_update=now + valid_for,
            revocation_time=now - dt.timedelta(days=1) if revoked else None,
            revocation_reason=x509.ReasonFlags.key_compromise if revoked else None,
        ).responder_id(ocsp.OCSPResponderEncoding.HASH, issuer.cert)
        resp = builder.sign(issuer.key, hashes.SHA256())
        return resp.public_bytes(serialization.Encoding.DER)

    def ocsp_response_b64(self, cert: Issued, issuer: Issued, **kw: object) -> str:
        return base64.b64encode(self.ocsp_response(cert, issuer, **kw)).decode("ascii")

    def write_iso15118_tree(self, root: Path, contract: str | None = "valid") -> Path:
        """The ``iso15118`` package's PKI_PATH layout (``iso15118_2/certs`` DER/PEM files and
        ``iso15118_2/private_keys`` unencrypted keys with empty password files), for its EVCC
        and SECC; returns ``root``. ``contract``: the EV's contract leaf (``valid``,
        ``expired``), or None for an EV that has none yet (it asks CertificateInstallation)."""
        cps = self.cps or self.cpo_sub2
        leaf = {"valid": self.contract, "expired": self.expired_contract}.get(contract or "")
        certs = root / "iso15118_2" / "certs"
        keys = root / "iso15118_2" / "private_keys"
        certs.mkdir(parents=True, exist_ok=True)
        keys.mkdir(parents=True, exist_ok=True)
        der = serialization.Encoding.DER
        files = {"v2gRootCACert": self.v2g_root, "cpoSubCA1Cert": self.cpo_sub1,
                 "cpoSubCA2Cert": self.cpo_sub2, "seccLeafCert": self.secc,
                 "moRootCACert": self.mo_root, "moSubCA1Cert": self.mo_sub1,
                 "moSubCA2Cert": self.mo_sub2,
                 "oemRootCACert": self.oem_root, "oemSubCA1Cert": self.oem_sub1,
                 "oemSubCA2Cert": self.oem_sub2, "oemLeafCert": self.oem_leaf,
                 "cpsLeafCert": cps, "cpsSubCA1Cert": self.cpo_sub1,
                 "cpsSubCA2Cert": self.cpo_sub2}
        if leaf is not None:
            files["contractLeafCert"] = leaf
        for name, item in files.items():
            (certs / f"{name}.der").write_bytes(item.cert.public_bytes(der))
            (certs / f"{name}.pem").write_text(item.pem)
        (certs / "cpoCertChain.pem").write_text(self.secc_chain_pem())
        (certs / "oemCertChain.pem").write_text(
            "".join(i.pem for i in (self.oem_leaf, self.oem_sub2, self.oem_sub1)))
        pkcs8 = serialization.PrivateFormat.PKCS8
        keys_of = {"seccLeaf": self.secc, "oemLeaf": self.oem_leaf, "moSubCA2": self.mo_sub2,
                   "cpsLeaf": cps, "cpoSubCA2": self.cpo_sub2, "v2gRootCA": self.v2g_root,
                   "moRootCA": self.mo_root}
        if leaf is not None:
            keys_of["contractLeaf"] = leaf
        for name, item in keys_of.items():
            path = keys / f"{name}.key"
            path.write_bytes(item.key.private_bytes(serialization.Encoding.PEM, pkcs8,
                                                    serialization.NoEncryption()))
            path.chmod(0o600)
        for name in ("seccLeafPassword", "contractLeafPassword", "oemLeafPassword",
                     "cpsLeafPassword", "moSubCA2LeafPassword"):
            (keys / f"{name}.txt").write_text("")
        return root


@functools.lru_cache(maxsize=1)
def pki() -> Pki:
    """The test PKI (one per process)."""
    now = dt.datetime.now(dt.UTC)
    v2g_root = _make(_name("V2G Root CA", "V2G test", dc="V2G"), None, ca=True, path_len=2)
    cpo_sub1 = _make(_name("CPO Sub-CA 1", "CPO test", dc="V2G"), v2g_root, ca=True,
                     path_len=1)
    cpo_sub2 = _make(_name("CPO Sub-CA 2", "CPO test", dc="V2G"), cpo_sub1, ca=True,
                     path_len=0)
    secc = _make(_name(SECC_ID, "CPO test", dc="CPO"), cpo_sub2, ca=False)
    mo_root = _make(_name("MO Root CA", "MO test", dc="MO"), None, ca=True, path_len=2)
    mo_sub1 = _make(_name("MO Sub-CA 1", "MO test", dc="MO"), mo_root, ca=True, path_len=1,
                    ocsp_url=OCSP_URL)
    mo_sub2 = _make(_name("MO Sub-CA 2", "MO test", dc="MO"), mo_sub1, ca=True, path_len=0,
                    ocsp_url=OCSP_URL)
    contract = _make(_name(EMAID, "MO test"), mo_sub2, ca=False, ocsp_url=OCSP_URL)
    expired = _make(_name(EXPIRED_EMAID, "MO test"), mo_sub2, ca=False, ocsp_url=OCSP_URL,
                    not_before=now - dt.timedelta(days=400),
                    not_after=now - dt.timedelta(days=1))
    rogue_root = _make(_name("Rogue Root CA", "Nobody"), None, ca=True, path_len=2)
    rogue_sub1 = _make(_name("Rogue Sub-CA 1", "Nobody"), rogue_root, ca=True, path_len=1)
    rogue_sub2 = _make(_name("Rogue Sub-CA 2", "Nobody"), rogue_sub1, ca=True, path_len=0)
    rogue = _make(_name(ROGUE_EMAID, "Nobody"), rogue_sub2, ca=False, ocsp_url=OCSP_URL)
    oem_root = _make(_name("OEM Root CA", "OEM test", dc="OEM"), None, ca=True, path_len=2)
    oem_sub1 = _make(_name("OEM Sub-CA 1", "OEM test"), oem_root, ca=True, path_len=1)
    oem_sub2 = _make(_name("OEM Sub-CA 2", "OEM test"), oem_sub1, ca=True, path_len=0)
    oem_leaf = _make(_name("WMIV1234567890ABCDEX", "OEM test"), oem_sub2, ca=False)
    cps = _make(_name("CPS Leaf", "CPS test", dc="CPS"), cpo_sub2, ca=False)
    return Pki(v2g_root, cpo_sub1, cpo_sub2, secc, mo_root, mo_sub1, mo_sub2, contract,
               expired, rogue_root, rogue_sub1, rogue_sub2, rogue, oem_root, oem_sub1,
               oem_sub2, oem_leaf, cps=cps)


__all__ = ["EMAID", "EXPIRED_EMAID", "OCSP_URL", "ROGUE_EMAID", "SECC_ID", "Issued", "Pki",
           "pki"]
