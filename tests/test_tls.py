"""Security profile 2: basic auth over TLS, the CSMS certificate checked against ocpp.ca_file."""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import json
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from websockets.asyncio.server import serve

from agent.app import Agent
from agent.config import ConfigError, load_config_text
from tests.conftest import agent_config


def _ca_and_server_cert(tmp: Path, name: str) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1 signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(days=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "csms")]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    ca_pem, cert_pem, key_pem = tmp / f"{name}-ca.pem", tmp / f"{name}.pem", tmp / f"{name}.key"
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return ca_pem, cert_pem, key_pem


async def test_security_profile_2_connects_over_tls_with_basic_auth(short_dir):
    ca, cert, key = _ca_and_server_cert(short_dir, "good")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    seen: dict[str, str] = {}

    async def csms(ws):
        seen["auth"] = ws.request.headers.get("Authorization", "")
        async for raw in ws:
            msg = json.loads(raw)
            if msg[0] == 2:
                answer = ({"status": "Accepted", "currentTime": "2030-01-01T00:00:00Z",
                           "interval": 300} if msg[2] == "BootNotification" else {})
                await ws.send(json.dumps([3, msg[1], answer]))

    async with serve(csms, "127.0.0.1", 0, ssl=server_ctx,
                     subprotocols=["ocpp1.6"]) as srv:
        port = srv.sockets[0].getsockname()[1]
        cfg = agent_config(f"wss://127.0.0.1:{port}/", short_dir, password="tls-secret",
                           profile=2)
        cfg.ocpp.ca_file = str(ca)
        agent = Agent(cfg)
        try:
            await agent.start()
            await asyncio.wait_for(agent.adapters["1.6"].accepted.wait(), 10)
        finally:
            await agent.stop()
    assert seen["auth"] == "Basic " + base64.b64encode(b"CP1:tls-secret").decode()


async def test_untrusted_csms_certificate_is_refused(short_dir):
    _, cert, key = _ca_and_server_cert(short_dir, "rogue")
    other_ca, _, _ = _ca_and_server_cert(short_dir, "trusted")
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    connected = asyncio.Event()

    async def csms(ws):
        connected.set()

    async with serve(csms, "127.0.0.1", 0, ssl=server_ctx, subprotocols=["ocpp1.6"]) as srv:
        port = srv.sockets[0].getsockname()[1]
        cfg = agent_config(f"wss://127.0.0.1:{port}/", short_dir, password="tls-secret",
                           profile=2)
        cfg.ocpp.ca_file = str(other_ca)
        agent = Agent(cfg)
        try:
            await agent.start()
            await asyncio.wait_for(agent.link.failed.wait(), 10)
        finally:
            await agent.stop()
    assert "CERTIFICATE_VERIFY_FAILED" in (agent.link.last_error or "")
    assert not connected.is_set()


def test_ca_file_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="ocpp.ca_file"):
        load_config_text(f"ocpp: {{ca_file: {tmp_path / 'nope.pem'}}}")
