"""Throw-away PKI for tests: a CA, CSMS server certificates and station client certificates.

Built with `cryptography` in a temporary directory, so TLS tests need no files in the tree and
no network. Reusable by every test that needs TLS (security profiles, certificate store):

    ca = TestCa.create(tmp, "csms-root")
    server = ca.issue_server("csms")  # for 127.0.0.1 (SAN IP) and localhost
    station = ca.issue_client("CP1", organization="Test CPO")
    ctx = server.server_context(client_ca=ca)  # ssl.SSLContext asking for client certificates

Every certificate is ECDSA P-256 (the TLS_ECDHE_ECDSA suites of the 1.6 whitepaper / 2.0.1
A00.FR.318); validity windows can be moved to make expired or not-yet-valid ones.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import warnings
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DAY = datetime.timedelta(days=1)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@dataclass
class Issued:
    """A certificate and its key, as objects and as PEM files."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_path: Path  # the certificate followed by the issuing CA (a chain file)
    key_path: Path

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return _key_pem(self.key)

    def server_context(self, *, client_ca: TestCa | None = None,
                       max_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
        """A TLS server context with this certificate; ``client_ca``: require client
        certificates issued by it (security profile 3); ``max_version``: an old server."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        with warnings.catch_warnings():  # TLS 1.0/1.1 are deprecated: that is the point here
            warnings.simplefilter("ignore", DeprecationWarning)
            if max_version is not None and max_version < ssl.TLSVersion.TLSv1_2:
                ctx.set_ciphers("DEFAULT:@SECLEVEL=0")  # OpenSSL 3 refuses TLS < 1.2 otherwise
                ctx.minimum_version = ssl.TLSVersion.TLSv1
            if max_version is not None:
                ctx.maximum_version = max_version
        ctx.load_cert_chain(self.cert_path, self.key_path)
        if client_ca is not None:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cafile=str(client_ca.cert_path))
        return ctx


@dataclass
class TestCa:
    """A self-signed root CA that issues server and client certificates."""

    __test__ = False  # not a pytest test class

    name: str
    directory: Path
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    cert_path: Path

    @classmethod
    def create(cls, directory: Path, name: str = "test-root") -> TestCa:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA"),
                             x509.NameAttribute(NameOID.ORGANIZATION_NAME, "cp-agent tests")])
        now = _now()
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - DAY).not_valid_after(now + 30 * DAY)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                               critical=False)
                .sign(key, hashes.SHA256()))
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{name}-ca.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(name, directory, cert, key, path)

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def _issue(self, file_name: str, subject: x509.Name, usage: x509.ObjectIdentifier,
               san: list[x509.GeneralName] | None, not_before: datetime.datetime | None,
               not_after: datetime.datetime | None) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        builder = (x509.CertificateBuilder().subject_name(subject)
                   .issuer_name(self.cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(not_before or now - DAY)
                   .not_valid_after(not_after or now + 7 * DAY)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None),
                                  critical=True)
                   .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                       self.key.public_key()), critical=False))
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path = self.directory / f"{file_name}.pem"
        key_path = self.directory / f"{file_name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + self.pem)
        key_path.write_bytes(_key_pem(key))
        return Issued(cert, key, cert_path, key_path)

    def issue_server(self, file_name: str = "csms", *, hosts: tuple[str, ...] = ("127.0.0.1",
                                                                                  "localhost"),
                     not_before: datetime.datetime | None = None,
                     not_after: datetime.datetime | None = None) -> Issued:
        """A CSMS certificate for ``hosts`` (IP addresses become IP SANs)."""
        san: list[x509.GeneralName] = []
        for host in hosts:
            try:
                san.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                san.append(x509.DNSName(host))
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0] if hosts
                                                else "csms")])
        return self._issue(file_name, subject, ExtendedKeyUsageOID.SERVER_AUTH, san,
                           not_before, not_after)

    def issue_client(self, common_name: str = "CP1", *, organization: str = "Test CPO",
                     file_name: str | None = None,
                     not_before: datetime.datetime | None = None,
                     not_after: datetime.datetime | None = None) -> Issued:
        """A charging-station certificate: CN the station's serial / id, O the CPO (A00.FR.404)."""
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                             x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization)])
        return self._issue(file_name or f"station-{common_name}", subject,
                           ExtendedKeyUsageOID.CLIENT_AUTH, None, not_before, not_after)


__all__ = ["DAY", "Issued", "TestCa"]
