"""A certificate provisioning service (CPS) for the tests: the CSMS's side of M01.

Runs inside the ISO 15118 sidecar venv (``.venv-iso15118``: the `iso15118` package and its
Java EXI codec, which the agent's venv cannot import), started by
tests/hal/test_iso15118_pnc.py before the EV plugs in, so that its JVM is warm when the
Get15118EVCertificate arrives (the SECC gives the whole round trip 10 s)::

    .venv-iso15118/bin/python tests/iso15118_cps.py --pki DIR

``DIR`` is a PKI tree in the package's layout (tests/pki15118.py ``write_iso15118_tree``):
the contract certificate to hand out with its key and MO sub-CAs, the CPS leaf and sub-CAs
that sign the answer. It prints ``CPS READY`` once the codec runs, then reads one JSON object
per line on stdin, ``{"exi_b64": <the EV's CertificateInstallationReq, the exiRequest>}``, and
answers one line each on stdout, ``CPS {"exi_b64": <the V2G_Message with the
CertificateInstallationRes, the exiResponse>, "emaid": ..., "session_id": ...}`` or
``CPS {"error": why}`` (the package logs on stdout too: its lines have no ``CPS`` prefix).

What a CPS does, built from the package's own pieces (the same steps as its SECC's
``generate_certificate_installation_res``): decode the request, check its signature with the
OEM provisioning certificate it carries, encrypt the contract key for that certificate (ECDH
+ AES-128-CBC, ISO 15118-2 [V2G2-818]), sign the four elements with the CPS key, and encode a
V2G_Message whose header carries the EV's session id (which the EV checks).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from typing import Any

PREFIX = "CPS "


# OEM provisioning certificate (DER) -> the signed CertificateInstallationRes for it.
_PREPARED: dict[bytes, tuple[Any, Any, str]] = {}


def build_response(exi_request: bytes) -> dict[str, Any]:
    from iso15118.shared.exi_codec import EXI
    from iso15118.shared.messages.enums import Namespace
    from iso15118.shared.messages.iso15118_2.body import Body
    from iso15118.shared.messages.iso15118_2.header import MessageHeader
    from iso15118.shared.messages.iso15118_2.msgdef import V2GMessage
    from iso15118.shared.security import verify_signature

    ns = Namespace.ISO_V2_MSG_DEF
    exi = EXI()
    request = exi.from_exi(exi_request, ns)
    req = getattr(getattr(request, "body", None), "certificate_installation_req", None)
    if req is None:
        return {"error": f"not a CertificateInstallationReq: {type(request).__name__}"}
    if not verify_signature(signature=request.header.signature,
                            elements_to_sign=[(req.id, exi.to_exi(req, ns))],
                            leaf_cert=req.oem_provisioning_cert):
        return {"error": "the request's signature is not the OEM provisioning certificate's"}
    if req.oem_provisioning_cert not in _PREPARED:
        _PREPARED[req.oem_provisioning_cert] = prepare(req.oem_provisioning_cert)
    res, signature, emaid = _PREPARED[req.oem_provisioning_cert]
    message = V2GMessage(
        header=MessageHeader(session_id=request.header.session_id, signature=signature),
        body=Body.parse_obj({"CertificateInstallationRes": res.dict()}))
    return {"exi_b64": base64.b64encode(exi.to_exi(message, ns)).decode("ascii"),
            "emaid": emaid, "session_id": request.header.session_id}


def prepare(oem_provisioning_cert: bytes) -> tuple[Any, Any, str]:
    """The CertificateInstallationRes for one EV's OEM provisioning certificate and its
    signature: the contract key encrypted for that certificate's key, the four elements
    signed by the CPS. Made once per certificate (each EXI call of the codec takes a few
    hundred ms on a loaded machine, and the EV waits 5 s for the whole round trip)."""
    from iso15118.shared.exi_codec import EXI
    from iso15118.shared.messages.enums import Namespace
    from iso15118.shared.messages.iso15118_2.body import (
        EMAID,
        CertificateInstallationRes,
        ResponseCode,
    )
    from iso15118.shared.messages.iso15118_2.datatypes import (
        CertificateChain,
        DHPublicKey,
        EncryptedPrivateKey,
        SubCertificates,
    )
    from iso15118.shared.security import (
        CertPath,
        KeyEncoding,
        KeyPasswordPath,
        KeyPath,
        create_signature,
        encrypt_priv_key,
        get_cert_cn,
        load_cert,
        load_priv_key,
    )

    ns = Namespace.ISO_V2_MSG_DEF
    exi = EXI()
    dh_public, encrypted_key = encrypt_priv_key(
        oem_prov_cert=oem_provisioning_cert,
        priv_key_to_encrypt=load_priv_key(KeyPath.CONTRACT_LEAF_PEM, KeyEncoding.PEM,
                                          KeyPasswordPath.CONTRACT_LEAF_KEY_PASSWORD))
    emaid = get_cert_cn(load_cert(CertPath.CONTRACT_LEAF_DER))
    res = CertificateInstallationRes(
        response_code=ResponseCode.OK,
        cps_cert_chain=CertificateChain(
            certificate=load_cert(CertPath.CPS_LEAF_DER),
            sub_certificates=SubCertificates(certificates=[
                load_cert(CertPath.CPS_SUB_CA2_DER), load_cert(CertPath.CPS_SUB_CA1_DER)])),
        contract_cert_chain=CertificateChain(
            id="id1", certificate=load_cert(CertPath.CONTRACT_LEAF_DER),
            sub_certificates=SubCertificates(certificates=[
                load_cert(CertPath.MO_SUB_CA2_DER), load_cert(CertPath.MO_SUB_CA1_DER)])),
        encrypted_private_key=EncryptedPrivateKey(id="id2", value=encrypted_key),
        dh_public_key=DHPublicKey(id="id3", value=dh_public),
        emaid=EMAID(id="id4", value=emaid))
    signature = create_signature(
        [(res.contract_cert_chain.id, exi.to_exi(res.contract_cert_chain, ns)),
         (res.encrypted_private_key.id, exi.to_exi(res.encrypted_private_key, ns)),
         (res.dh_public_key.id, exi.to_exi(res.dh_public_key, ns)),
         (res.emaid.id, exi.to_exi(res.emaid, ns))],
        load_priv_key(KeyPath.CPS_LEAF_PEM, KeyEncoding.PEM,
                      KeyPasswordPath.CPS_LEAF_KEY_PASSWORD))
    return res, signature, emaid


def _warm_up() -> None:
    """Answer a request of our own once (the EV's steps with the tree's OEM certificate):
    the codec's first messages take seconds of JIT warm-up, the SECC waits 10 s in all."""
    from iso15118.shared.exi_codec import EXI
    from iso15118.shared.messages.enums import Namespace
    from iso15118.shared.messages.iso15118_2.body import Body, CertificateInstallationReq
    from iso15118.shared.messages.iso15118_2.datatypes import RootCertificateIDList
    from iso15118.shared.messages.iso15118_2.header import MessageHeader
    from iso15118.shared.messages.iso15118_2.msgdef import V2GMessage
    from iso15118.shared.messages.xmldsig import X509IssuerSerial
    from iso15118.shared.security import (
        CertPath,
        KeyEncoding,
        KeyPasswordPath,
        KeyPath,
        create_signature,
        get_cert_issuer_serial,
        load_cert,
        load_priv_key,
    )

    ns = Namespace.ISO_V2_MSG_DEF
    issuer, serial = get_cert_issuer_serial(CertPath.V2G_ROOT_DER)
    req = CertificateInstallationReq(
        id="id1", oem_provisioning_cert=load_cert(CertPath.OEM_LEAF_DER),
        list_of_root_cert_ids=RootCertificateIDList(x509_issuer_serials=[
            X509IssuerSerial(x509_issuer_name=issuer, x509_serial_number=serial)]))
    signature = create_signature([(req.id, EXI().to_exi(req, ns))], load_priv_key(
        KeyPath.OEM_LEAF_PEM, KeyEncoding.PEM, KeyPasswordPath.OEM_LEAF_KEY_PASSWORD))
    message = V2GMessage(header=MessageHeader(session_id="00", signature=signature),
                         body=Body.parse_obj({"CertificateInstallationReq": req.dict()}))
    answer = build_response(EXI().to_exi(message, ns))
    if "error" in answer:
        raise SystemExit(f"the test CPS cannot answer its own request: {answer['error']}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="a test CPS answering CertificateInstallationReq")
    p.add_argument("--pki", required=True, help="the CPS / MO side's PKI tree")
    args = p.parse_args(argv)
    os.environ.update({"PKI_PATH": args.pki.rstrip("/") + "/", "MESSAGE_LOG_JSON": "false",
                       "MESSAGE_LOG_EXI": "false"})
    from iso15118.shared.exi_codec import EXI
    from iso15118.shared.exificient_exi_codec import ExificientEXICodec
    from iso15118.shared.settings import load_shared_settings

    load_shared_settings(os.devnull)
    EXI().set_exi_codec(ExificientEXICodec())
    _warm_up()
    print(PREFIX + "READY", flush=True)
    for line in sys.stdin:
        try:
            exi_request = base64.b64decode(json.loads(line)["exi_b64"], validate=True)
            answer = build_response(exi_request)
        except Exception as exc:  # noqa: BLE001 - every failure is an answer the test shows
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        print(PREFIX + json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
