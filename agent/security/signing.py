"""Firmware code signing: the signature over an image and the certificate that vouches for it.

What the specs ask (1.6 security whitepaper L01.FR.04 / L01.FR.12, 2.0.1 L01.FR.04): the
signature is computed "over the entire firmware file using the RSA-PSS or ECSchnorr algorithm
for signing, and the SHA256 algorithm for calculating hash values", it travels base64-encoded in
``signature``, and the signing certificate (PEM, ``signingCertificate``) must be checked
"using the rules for X.509 certificates" against the ManufacturerRootCertificates, with no
intermediate certificate (whitepaper L01 remark: the manufacturer "SHALL NOT use intermediate
certificates for the firmware signing certificate").

What is accepted here, by the key type of the signing certificate:

- RSA: RSA-PSS with SHA-256 and MGF1-SHA-256 (any salt length; the spec's scheme), and
  PKCS#1 v1.5 with SHA-256 (what ``openssl dgst -sha256 -sign`` produces by default, which
  manufacturers' build pipelines commonly use).
- EC: ECDSA with SHA-256. ECSchnorr has no standard encoding and no implementation in
  ``cryptography`` or OpenSSL's command line; ECDSA is what every CSMS and station
  implementation we compared uses in its place.

:func:`sign_image` (``cp-agent firmware sign``) signs RSA-PSS (salt length 32, the digest
size) or ECDSA, the same as these OpenSSL command lines::

    openssl dgst -sha256 -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:32 \
        -sign key.pem IMAGE | base64 -w0              # RSA key
    openssl dgst -sha256 -sign key.pem IMAGE | base64 -w0   # EC key

This is the one module that uses ``cryptography``'s signature API; nothing here raises on bad
input, every problem is a :class:`SigningError` whose text names it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

CHUNK = 1 << 20
PSS_SALT_LENGTH = 32  # what sign_image uses: the SHA-256 digest size


class SigningError(Exception):
    """A signature or certificate problem; the text says which, for the log and techInfo."""


class CertificateProblem(SigningError):
    """The signing certificate is unreadable, not from a trusted root, or out of date."""


class SignatureProblem(SigningError):
    """The signature does not match the file (or is missing or not base64)."""


def _digest(path: Path) -> bytes:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.digest()


def load_certificate(pem: str | bytes) -> x509.Certificate:
    """The first certificate of a PEM text; CertificateProblem if there is none."""
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise CertificateProblem(f"signing certificate is not a PEM X.509 certificate: "
                                 f"{exc}") from None


def check_signing_certificate(cert: x509.Certificate, roots: Iterable[x509.Certificate],
                              now: datetime) -> None:
    """The certificate must be issued directly by one of ``roots`` and valid at ``now``."""
    if now < cert.not_valid_before_utc:
        raise CertificateProblem(f"signing certificate {cert.subject.rfc4514_string()} is "
                                 f"not valid before {cert.not_valid_before_utc.isoformat()}")
    if now > cert.not_valid_after_utc:
        raise CertificateProblem(f"signing certificate {cert.subject.rfc4514_string()} "
                                 f"expired {cert.not_valid_after_utc.isoformat()}")
    roots = list(roots)
    if not roots:
        raise CertificateProblem("no ManufacturerRootCertificate is installed: no signed "
                                 "firmware can be verified")
    for root in roots:
        if root.subject != cert.issuer:
            continue
        try:
            cert.verify_directly_issued_by(root)
        except (ValueError, TypeError, InvalidSignature):
            continue
        if not root.not_valid_before_utc <= now <= root.not_valid_after_utc:
            raise CertificateProblem(f"manufacturer root {root.subject.rfc4514_string()} is "
                                     "not valid now")
        return
    raise CertificateProblem(f"signing certificate {cert.subject.rfc4514_string()} (issuer "
                             f"{cert.issuer.rfc4514_string()}) is not issued by an installed "
                             "ManufacturerRootCertificate")


def _signature_bytes(signature: str | None) -> bytes:
    if not signature:
        raise SignatureProblem("no signature given")
    try:
        return base64.b64decode("".join(signature.split()), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureProblem("signature is not base64") from None


def verify_file(path: Path, signature: str | None, cert: x509.Certificate) -> str:
    """Check ``signature`` (base64) over the file with the certificate's key; the scheme that
    matched ("RSA-PSS", "RSA-PKCS1v15", "ECDSA"), else SignatureProblem."""
    sig = _signature_bytes(signature)
    digest = _digest(path)
    prehashed = _prehashed()
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        schemes = (("RSA-PSS", padding.PSS(mgf=padding.MGF1(hashes.SHA256()),
                                           salt_length=padding.PSS.AUTO)),
                   ("RSA-PKCS1v15", padding.PKCS1v15()))
        for name, pad in schemes:
            try:
                key.verify(sig, digest, pad, prehashed)
                return name
            except InvalidSignature:
                continue
        raise SignatureProblem(f"signature does not match {path.name} (RSA-PSS / PKCS#1 v1.5, "
                               "SHA-256)")
    if isinstance(key, ec.EllipticCurvePublicKey):
        try:
            key.verify(sig, digest, ec.ECDSA(prehashed))
            return "ECDSA"
        except InvalidSignature:
            raise SignatureProblem(f"signature does not match {path.name} (ECDSA, SHA-256)"
                                   ) from None
    raise SignatureProblem(f"signing certificate has a {type(key).__name__} key; RSA or EC "
                           "keys are supported")


def _prehashed() -> Prehashed:
    return Prehashed(hashes.SHA256())


def sign_image(image: Path, key_pem: bytes, cert_pem: bytes | None = None,
               password: bytes | None = None) -> str:
    """The base64 signature of ``image`` (RSA-PSS salt 32 or ECDSA, SHA-256); with a
    certificate, the key must be the certificate's (else SigningError)."""
    try:
        key = serialization.load_pem_private_key(key_pem, password=password)
    except (ValueError, TypeError) as exc:
        raise SigningError(f"private key unreadable: {exc}") from None
    if cert_pem is not None:
        cert = load_certificate(cert_pem)
        mine = key.public_key().public_bytes(serialization.Encoding.DER,
                                             serialization.PublicFormat.SubjectPublicKeyInfo)
        theirs = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if mine != theirs:
            raise SigningError("the private key does not belong to the certificate")
    digest = _digest(image)
    if isinstance(key, rsa.RSAPrivateKey):
        sig = key.sign(digest, padding.PSS(mgf=padding.MGF1(hashes.SHA256()),
                                           salt_length=PSS_SALT_LENGTH), _prehashed())
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        sig = key.sign(digest, ec.ECDSA(_prehashed()))
    else:
        raise SigningError(f"a {type(key).__name__} cannot sign firmware; use an RSA or EC key")
    return base64.b64encode(sig).decode("ascii")


__all__ = ["CertificateProblem", "SignatureProblem", "SigningError", "check_signing_certificate",
           "load_certificate", "sign_image", "verify_file"]
