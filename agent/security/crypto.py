"""The one wrapper of the ``cryptography`` package's X.509, key and CSR API.

Everything the certificate store does with keys and certificates goes through these few
functions, so a change of library (or of its API, which moves between major versions) touches
one module.  What the OCPP specs fix is decided here:

* keys: ECDSA P-256 (default) or RSA of at least 2048 bits (1.6 security whitepaper /
  2.0.1 A00.FR.501-503: at least 112 bits of symmetric strength);
* the CSR subject: CN = the station identity, O = CpoName / OrganizationName (A02.FR.13,
  A00.FR.509, A00.FR.511), signed with SHA-256, PEM encoded (RFC 2986);
* ``certificateHashData``: issuerNameHash over the DER of the issuer's name, issuerKeyHash over
  the issuer's public key bits, serialNumber as hexadecimal without "0x" and leading zeroes
  (2.0.1 errata 2023-12, CertificateHashDataType).  These are exactly the fields of an OCSP
  CertID (RFC 6960 4.1.1), so the library's OCSP request builder computes them rather than
  hand-written ASN.1;
* chain validation: path building from the leaf to an installed root at a given time, by the
  library's verifier (signatures, names, validity, CA flags, algorithm and key-size rules).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.x509 import ocsp
from cryptography.x509 import verification as verify
from cryptography.x509.oid import NameOID

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
Certificate = x509.Certificate

# hashAlgorithm names of CertificateHashDataType -> the library's hash classes.
HASH_ALGORITHMS: dict[str, type[hashes.HashAlgorithm]] = {
    "SHA256": hashes.SHA256, "SHA384": hashes.SHA384, "SHA512": hashes.SHA512}
KEY_TYPES = ("ec", "rsa")
MIN_RSA_BITS = 2048
MIN_EC_BITS = 224


class CertificateFormatError(ValueError):
    """Text that is not the PEM certificate(s) it should be."""


class ChainError(ValueError):
    """A certificate chain that does not lead to an installed root at the time asked."""


# ---------------------------------------------------------------------- keys and CSRs


def generate_key(kind: str = "ec", rsa_bits: int = 2048) -> PrivateKey:
    """A fresh key pair generated on the board (the private half never leaves it)."""
    if kind == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if kind == "rsa":
        if rsa_bits < MIN_RSA_BITS:
            raise ValueError(f"RSA keys must have at least {MIN_RSA_BITS} bits, not {rsa_bits}")
        return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    raise ValueError(f"unknown key type {kind!r}; choose from {', '.join(KEY_TYPES)}")


def key_to_pem(key: PrivateKey) -> bytes:
    """PKCS#8 PEM for the key file (mode 0600 in a 0700 directory; never sent anywhere)."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def load_key(pem: bytes) -> PrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise ValueError(f"unsupported private key type {type(key).__name__}")
    return key


def make_csr(key: PrivateKey, common_name: str, organization: str = "", *,
             country: str = "", domain_component: str = "") -> str:
    """A PEM certificate signing request: CN = station identity, O = CpoName when set;
    the V2G (SECC) CSR also has C = ISO15118Ctrlr.CountryName and DC = "CPO"."""
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    if country:
        attrs.append(x509.NameAttribute(NameOID.COUNTRY_NAME, country))
    if domain_component:
        attrs.append(x509.NameAttribute(NameOID.DOMAIN_COMPONENT, domain_component))
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name(attrs))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode("ascii")


def load_csr(pem: str | bytes) -> x509.CertificateSigningRequest:
    data = pem.encode() if isinstance(pem, str) else pem
    return x509.load_pem_x509_csr(data)


def public_key_der(obj: PrivateKey | Certificate | x509.CertificateSigningRequest) -> bytes:
    """The SubjectPublicKeyInfo DER of a key, certificate or CSR (to compare key pairs)."""
    public = obj.public_key()
    return public.public_bytes(serialization.Encoding.DER,
                               serialization.PublicFormat.SubjectPublicKeyInfo)


def key_strength_problem(cert: Certificate) -> str | None:
    """Why the certificate's key is weaker than A00.FR.502/503 allow, or None."""
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey | dsa.DSAPublicKey):
        if key.key_size < MIN_RSA_BITS:
            return f"{key.key_size}-bit RSA/DSA key (at least {MIN_RSA_BITS} required)"
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.key_size < MIN_EC_BITS:
            return f"{key.curve.key_size}-bit EC key (at least {MIN_EC_BITS} required)"
    elif not isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return f"unsupported key type {type(key).__name__}"
    return None


# ---------------------------------------------------------------------- certificates


def load_certificates(pem: str | bytes) -> list[Certificate]:
    """Every certificate of a PEM text, in order; CertificateFormatError names the problem."""
    data = pem.encode("ascii", "replace") if isinstance(pem, str) else pem
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise CertificateFormatError("no PEM certificate in the text")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise CertificateFormatError(f"unreadable PEM certificate: {exc}") from None


def to_pem(cert: Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def der(cert: Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def fingerprint(cert: Certificate) -> str:
    """SHA-256 over the DER: the certificate's file name and identity in logs."""
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _attr(name: x509.Name, oid: x509.ObjectIdentifier) -> str:
    values = name.get_attributes_for_oid(oid)
    value = values[0].value if values else ""
    return value.decode() if isinstance(value, bytes) else str(value)


def organization(obj: Certificate | x509.CertificateSigningRequest) -> str:
    return _attr(obj.subject, NameOID.ORGANIZATION_NAME)


def common_name(obj: Certificate | x509.CertificateSigningRequest) -> str:
    return _attr(obj.subject, NameOID.COMMON_NAME)


def describe(cert: Certificate) -> str:
    """Subject and serial for log lines and techInfo (public data only)."""
    return f"{cert.subject.rfc4514_string()} serial {cert.serial_number:x}"


def is_ca(cert: Certificate) -> bool:
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return False
    return bool(bc.ca)


def directly_issued_by(cert: Certificate, issuer: Certificate) -> bool:
    """True when ``issuer``'s name is ``cert``'s issuer and its key made the signature."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def is_self_signed(cert: Certificate) -> bool:
    return directly_issued_by(cert, cert)


def validity_problem(cert: Certificate, at: datetime) -> str | None:
    """"expired" / "not yet valid" (with the dates) at ``at``, or None."""
    if at < cert.not_valid_before_utc:
        return f"not yet valid (from {cert.not_valid_before_utc.isoformat()})"
    if at > cert.not_valid_after_utc:
        return f"expired (on {cert.not_valid_after_utc.isoformat()})"
    return None


def hash_data(cert: Certificate, issuer: Certificate, algorithm: str = "SHA256") -> dict:
    """CertificateHashDataType of ``cert`` as issued by ``issuer`` (itself for a root)."""
    algo = HASH_ALGORITHMS[algorithm]()
    req = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, algo).build()
    return {"hashAlgorithm": algorithm,
            "issuerNameHash": req.issuer_name_hash.hex(),
            "issuerKeyHash": req.issuer_key_hash.hex(),
            "serialNumber": f"{cert.serial_number:x}"}


def verify_chain(leaf: Certificate, intermediates: Sequence[Certificate],
                 roots: Sequence[Certificate], at: datetime, max_depth: int = 8) -> None:
    """Raise ChainError unless ``leaf`` chains to one of ``roots`` at time ``at``.

    The CA certificates must assert basicConstraints cA; the leaf's extensions are not judged
    by web-PKI rules (a charging station certificate has a serial number as CN, no DNS name).
    """
    if not roots:
        raise ChainError("no root certificate installed to verify it against")
    ca_policy = verify.ExtensionPolicy.permit_all().require_present(
        x509.BasicConstraints, verify.Criticality.AGNOSTIC, None)
    builder = (verify.PolicyBuilder().store(verify.Store(list(roots))).time(at)
               .max_chain_depth(max_depth)
               .extension_policies(ca_policy=ca_policy,
                                   ee_policy=verify.ExtensionPolicy.permit_all()))
    try:
        builder.build_client_verifier().verify(leaf, list(intermediates))
    except verify.VerificationError as exc:
        raise ChainError(str(exc)) from None


# ---------------------------------------------------------------------- ISO 15118 (PnC)
#
# A contract certificate chain (the EV's: contract leaf, MO sub-CA 2, MO sub-CA 1) is judged
# against the installed MORootCertificate / V2GRootCertificate roots; its EMAID is the leaf's
# subject CN (ISO 15118-2's contract certificate profile); the OCSP data of
# each certificate (OCSPRequestDataType) is its CertificateHashData plus the responder URL of
# its Authority Information Access extension.

MAX_OCSP_ENTRIES = 4  # AuthorizeRequest.iso15118CertificateHashData: at most 4 entries


def emaid(cert: Certificate) -> str:
    """The EMAID of a contract certificate: its subject CN (dashes kept as the MO wrote it)."""
    return common_name(cert)


def responder_url(cert: Certificate) -> str:
    """The OCSP responder URL of ``cert``'s Authority Information Access, or ""."""
    try:
        aia = cert.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    except x509.ExtensionNotFound:
        return ""
    for desc in aia:
        if desc.access_method == x509.oid.AuthorityInformationAccessOID.OCSP and isinstance(
                desc.access_location, x509.UniformResourceIdentifier):
            return str(desc.access_location.value)
    return ""


def issuer_of(cert: Certificate, pool: Sequence[Certificate]) -> Certificate | None:
    """The certificate of ``pool`` that issued ``cert`` (name and signature), or None."""
    return next((c for c in pool if directly_issued_by(cert, c)), None)


def ocsp_request_data(chain: Sequence[Certificate], roots: Sequence[Certificate] = (),
                      algorithm: str = "SHA256") -> list[dict]:
    """OCSPRequestDataType of each certificate of ``chain`` (leaf first) whose issuer is
    known (the next certificate of the chain, or one of ``roots``), at most
    :data:`MAX_OCSP_ENTRIES`; a root itself is never asked about."""
    out: list[dict] = []
    pool = [*chain, *roots]
    for cert in chain:
        if is_self_signed(cert):
            continue
        issuer = issuer_of(cert, [c for c in pool if c is not cert])
        if issuer is None:
            continue
        out.append({**hash_data(cert, issuer, algorithm), "responderURL": responder_url(cert)})
        if len(out) == MAX_OCSP_ENTRIES:
            break
    return out


def contract_problem(chain: Sequence[Certificate], roots: Sequence[Certificate],
                     at: datetime) -> tuple[str, str] | None:
    """(AuthorizeCertificateStatusEnumType, why) when a contract chain cannot be trusted at
    ``at`` against ``roots``; None when it chains to one of them.  "NoCertificateAvailable"
    when no root is installed to judge it by (the CSMS may still validate it centrally)."""
    if not chain:
        return "NoCertificateAvailable", "no contract certificate"
    for cert in chain:
        problem = validity_problem(cert, at)
        if problem is not None:
            return "CertificateExpired", f"{describe(cert)} is {problem}"
    if not roots:
        return "NoCertificateAvailable", "no MO / V2G root certificate installed"
    if issuer_of(chain[-1], roots) is None and not any(
            fingerprint(chain[-1]) == fingerprint(r) for r in roots):
        return "NoCertificateAvailable", (f"{describe(chain[-1])} is not issued by an "
                                          "installed MO / V2G root")
    try:
        verify_chain(chain[0], chain[1:], roots, at, max_depth=max(2, len(chain) + 1))
    except ChainError as exc:
        return "CertChainError", str(exc)
    return None


def ocsp_response_info(der: bytes) -> tuple[str, datetime | None]:
    """The certificate status ("good", "revoked", "unknown") and nextUpdate of an OCSP
    response (RFC 6960, DER); ValueError when it is no successful response."""
    resp = ocsp.load_der_ocsp_response(der)
    if resp.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise ValueError(f"OCSP response status {resp.response_status.name}")
    status = resp.certificate_status
    name = {ocsp.OCSPCertStatus.GOOD: "good", ocsp.OCSPCertStatus.REVOKED: "revoked"}.get(
        status, "unknown")
    return name, resp.next_update_utc


__all__ = [
    "HASH_ALGORITHMS", "KEY_TYPES", "MAX_OCSP_ENTRIES", "Certificate",
    "CertificateFormatError", "ChainError", "PrivateKey", "common_name", "contract_problem",
    "der", "describe", "directly_issued_by", "emaid", "fingerprint", "generate_key", "hash_data",
    "is_ca", "is_self_signed", "issuer_of", "key_strength_problem", "key_to_pem",
    "load_certificates", "load_csr", "load_key", "make_csr", "ocsp_request_data",
    "ocsp_response_info", "organization", "public_key_der", "responder_url", "to_pem",
    "validity_problem", "verify_chain",
]
