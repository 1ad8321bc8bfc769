"""A throw-away certificate authority that signs the station's CSRs, for the certificate tests.

Builds on :class:`tests.tls_certs.TestCa` (a self-signed ECDSA root): it adds what a CPO's CA
does in A02 / A03 (sign a CSR, optionally through a sub-CA, with any validity window or a
changed subject, to make the bad chains the station must refuse) and the cross-signed root of
AdditionalRootCertificateCheck (M05.FR.09).
"""

from __future__ import annotations

import base64
import binascii
import datetime
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.tls_certs import DAY, TestCa

__all__ = ["DAY", "Signer", "TestCa", "assert_no_private_key", "cross_sign", "pem",
           "self_signed", "sub_ca"]


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _ca_extensions(builder: x509.CertificateBuilder) -> x509.CertificateBuilder:
    return (builder
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True))


@dataclass
class Signer:
    """A CA key and certificate, with the chain above it (empty for a root)."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    above: tuple[x509.Certificate, ...] = ()

    @classmethod
    def of(cls, ca: TestCa) -> Signer:
        return cls(ca.cert, ca.key)

    def sign_csr(self, csr_pem: str, *, organization: str | None = None,
                 common_name: str | None = None, public_key: object | None = None,
                 not_before: datetime.datetime | None = None,
                 not_after: datetime.datetime | None = None) -> str:
        """The chain (leaf, then this CA and those above it but the root) for a CSR; the
        keyword arguments make the CA deviate from the CSR (a wrong certificate)."""
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        assert csr.is_signature_valid
        attrs = []
        cn = common_name if common_name is not None else \
            csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, cn))
        orgs = csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        org = organization if organization is not None else (orgs[0].value if orgs else "")
        if org:
            attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
        now = _now()
        cert = (x509.CertificateBuilder().subject_name(x509.Name(attrs))
                .issuer_name(self.cert.subject)
                .public_key(public_key or csr.public_key())  # type: ignore[arg-type]
                .serial_number(x509.random_serial_number())
                .not_valid_before(not_before or now - DAY)
                .not_valid_after(not_after or now + 60 * DAY)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                               critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                               critical=False)
                .sign(self.key, hashes.SHA256()))
        chain = [cert]
        if self.above:  # a sub-CA: send it along (the root is the station's own copy)
            chain.append(self.cert)
            chain.extend(self.above[:-1])
        return "".join(pem(c) for c in chain)


def sub_ca(root: TestCa, name: str = "sub") -> Signer:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cp-agent tests")])
    cert = _ca_extensions(x509.CertificateBuilder().subject_name(subject)
                          .issuer_name(root.cert.subject).public_key(key.public_key())
                          .serial_number(x509.random_serial_number())
                          .not_valid_before(now - DAY).not_valid_after(now + 90 * DAY)
                          ).sign(root.key, hashes.SHA256())
    return Signer(cert, key, (root.cert,))


def cross_sign(new: TestCa, old: TestCa) -> str:
    """``new``'s root certificate re-issued by ``old`` (AdditionalRootCertificateCheck)."""
    now = _now()
    cert = _ca_extensions(x509.CertificateBuilder().subject_name(new.cert.subject)
                          .issuer_name(old.cert.subject).public_key(new.key.public_key())
                          .serial_number(x509.random_serial_number())
                          .not_valid_before(now - DAY).not_valid_after(now + 30 * DAY)
                          ).sign(old.key, hashes.SHA256())
    return pem(cert)


def self_signed(*, ca: bool = False,
                     not_before: datetime.datetime | None = None,
                     not_after: datetime.datetime | None = None) -> str:
    """A self-signed certificate that is no CA (``ca=False``), or a root with any window."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "self-signed")])
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(not_before or now - DAY)
               .not_valid_after(not_after or now + 30 * DAY))
    if ca:
        builder = _ca_extensions(builder)
    return pem(builder.sign(key, hashes.SHA256()))


_PEM = re.compile(r"-----BEGIN ([A-Z ]+)-----(.*?)-----END \1-----", re.S)


def assert_no_private_key(text: str, key_path: Path) -> None:
    """Neither the PEM of the key file nor its secret scalar appears in ``text`` (frames, log
    lines): checked on the decoded DER of every PEM block there, since a private key file
    shares its public half and algorithm header with the CSR and the certificate."""
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    secret = key.private_numbers().private_value.to_bytes(32, "big")
    assert "PRIVATE KEY" not in text
    assert secret.hex() not in text.lower()
    for _, body in _PEM.findall(text.replace("\\n", "\n")):
        try:
            der = base64.b64decode("".join(body.split()))
        except (binascii.Error, ValueError):
            continue
        assert secret not in der
