"""Security profiles on the wire: TLS rules, profile 3, upgrades, network profiles, passwords.

Real TLS on 127.0.0.1 with a throw-away PKI (tests/tls_certs.py) and the strict test CSMS
serving wss://; every test that exists on both versions runs on 1.6 and 2.0.1.  Names follow
the 2.0.1 conformance cases (TC_A_*, TC_B_*) and the 1.6 whitepaper's use cases (A00, A01, A05).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent.app import Agent
from agent.config import ConfigError, load_config_text
from agent.link.network import NEW_PASSWORD_KEY
from agent.link.profiles import CIPHERS_TLS12, CIPHERS_TLS13, client_tls_context
from agent.testing.csms import TestCsms
from tests.conftest import agent_config, eventually
from tests.tls_certs import DAY, Issued, TestCa

VERSIONS = ("1.6", "2.0.1", "2.1")  # 2.1 has its own network and security blocks
PASSWORD = "first-password-0001"
NEW_PASSWORD = "0123456789abcdefXYZ"


# ---------------------------------------------------------------- rig


@pytest.fixture
def pki(short_dir: Path) -> dict[str, Any]:
    ca = TestCa.create(short_dir / "pki", "csms-root")
    return {"ca": ca, "server": ca.issue_server("csms"),
            "station": ca.issue_client("CP1", organization="Test CPO"), "dir": short_dir}


@contextlib.asynccontextmanager
async def csms_at(version: str, ctx: ssl.SSLContext | None = None,
                  **kw: Any) -> AsyncIterator[TestCsms]:
    """A strict test CSMS of ``version``, over TLS when ``ctx`` is given."""
    server = TestCsms(versions=(version,), ssl=ctx, **kw)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
    assert server.violations == [], f"schema violations: {server.violations}"
    assert server.internal_errors == [], f"test CSMS bugs: {server.internal_errors}"


def config(url: str, state: Path, version: str, *, profile: int = 0,
           password: str | None = None, ca: TestCa | None = None,
           identity: Issued | None = None, defaults: dict | None = None) -> Any:
    cfg = agent_config(url, state, versions=(version,), defaults=defaults)
    o = cfg.ocpp
    o.security_profile, o.password = profile, password
    o.ca_file = str(ca.cert_path) if ca is not None else None
    if identity is not None:
        o.client_cert_file, o.client_key_file = str(identity.cert_path), str(identity.key_path)
    cfg.validate()
    return cfg


@contextlib.asynccontextmanager
async def running(cfg: Any) -> AsyncIterator[tuple[Agent, list]]:
    """An agent and the security events it records from its first moment."""
    agent = Agent(cfg)
    events: list = []
    agent.station.security_events.listeners.append(events.append)
    await agent.start()
    try:
        yield agent, events
    finally:
        await agent.stop()


async def online(agent: Agent, csms: TestCsms, timeout: float = 10.0) -> Any:
    await asyncio.wait_for(agent.adapter.accepted.wait(), timeout)
    await eventually(lambda: agent.link.connected.is_set(), "connected", timeout)
    return await csms.wait_station("CP1", timeout)


def kinds(events: list) -> list[str]:
    return [e.kind for e in events]


async def refused(agent: Agent, csms: TestCsms, attempts: int = 3) -> None:
    """Several attempts failed and none reached the CSMS's websocket."""
    for _ in range(attempts):
        agent.link.failed.clear()
        await asyncio.wait_for(agent.link.failed.wait(), 10)
    assert "CP1" not in csms.stations
    assert not [e for e in csms.connection_log if e[2].startswith("connected")]


# ---------------------------------------------------------------- the TLS context itself


def test_tls_context_allows_tls_1_2_up_with_the_whitepaper_suites_only():
    ctx = client_tls_context(None)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.options & ssl.OP_NO_COMPRESSION and ctx.options & ssl.OP_NO_RENEGOTIATION
    names = {c["name"] for c in ctx.get_ciphers()}
    allowed = set(CIPHERS_TLS12.split(":")) | set(CIPHERS_TLS13)
    assert names <= allowed, names - allowed
    # A00.FR.318: both suites of the ECDSA pair (the certificates here are ECDSA) and the
    # RSA pair are offered.
    assert {"ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
            "AES128-GCM-SHA256", "AES256-GCM-SHA384"} <= names
    assert not [n for n in names if "CBC" in n or n.endswith("-SHA") or "RC4" in n]


# ---------------------------------------------------------------- profile 3 (A00, TC_A_07_CS)


@pytest.mark.parametrize("version", VERSIONS)
async def test_TC_A_07_CS_profile_3_connects_with_the_station_certificate(pki, version):
    ca, server, station = pki["ca"], pki["server"], pki["station"]
    async with csms_at(version, server.server_context(client_ca=ca)) as csms:
        cfg = config(csms.url, pki["dir"], version, profile=3, ca=ca, identity=station)
        async with running(cfg) as (agent, events):
            await online(agent, csms)
            subject = dict(x[0] for x in csms.peer_certs["CP1"]["subject"])
            assert subject == {"commonName": "CP1", "organizationName": "Test CPO"}
            assert agent.link.profile.security_profile == 3
            assert "Authorization" not in agent.link.profile.headers, "no basic auth (A00)"
            # Factory provisioning: the YAML pair went into the certificate store.
            assert agent.station.certificates.client_identity() is not None
            assert not [k for k in kinds(events) if k.startswith("Invalid")]


def test_profile_3_without_a_station_certificate_is_a_configuration_error(pki):
    base = "ocpp: {url: 'wss://csms.example/ocpp', security_profile: 3"
    with pytest.raises(ConfigError, match=r"ocpp\.client_cert_file: null is not allowed"):
        load_config_text(base + "}")
    station, other = pki["station"], pki["ca"].issue_client("CP2")
    with pytest.raises(ConfigError, match="does not belong to the certificate"):
        load_config_text(base + f", client_cert_file: '{station.cert_path}', "
                                f"client_key_file: '{other.key_path}'}}")
    with pytest.raises(ConfigError, match="ocpp.password"):
        load_config_text(base + f", password: secret-secret-1234, client_cert_file: "
                                f"'{station.cert_path}', client_key_file: '{station.key_path}'}}")
    with pytest.raises(ConfigError, match="ocpp.security_profile: 0 is not allowed"):
        load_config_text("ocpp: {password: secret-secret-1234}")


@pytest.mark.parametrize("version", VERSIONS)
async def test_a_csms_asking_for_a_client_certificate_refuses_profile_2(pki, version):
    ca, server = pki["ca"], pki["server"]
    async with csms_at(version, server.server_context(client_ca=ca)) as csms:
        cfg = config(csms.url, pki["dir"], version, profile=2, password=PASSWORD, ca=ca)
        async with running(cfg) as (agent, _):
            await refused(agent, csms)
            assert agent.link.profile.security_profile == 2 and agent.link.url.startswith("wss")


# ---------------------------------------------------------------- TC_A_05 / TC_A_06: refused


def _bad_server(pki: dict, kind: str) -> tuple[Issued, str]:
    ca: TestCa = pki["ca"]
    now = datetime.datetime.now(datetime.UTC)
    if kind == "unknown CA":
        return (TestCa.create(pki["dir"] / "rogue", "rogue").issue_server("rogue"),
                "CERTIFICATE_VERIFY_FAILED")
    if kind == "expired":
        return ca.issue_server("old", not_before=now - 9 * DAY,
                               not_after=now - DAY), "has expired"
    if kind == "not yet valid":
        return ca.issue_server("early", not_before=now + DAY,
                               not_after=now + 9 * DAY), "not yet valid"
    return ca.issue_server("elsewhere", hosts=("csms.example.com",)), "mismatch"


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("kind", ["unknown CA", "expired", "not yet valid", "wrong host"])
async def test_TC_A_05_CS_invalid_csms_certificate_is_refused_with_an_event(pki, version,
                                                                            kind):
    server, why = _bad_server(pki, kind)
    async with csms_at(version, server.server_context()) as csms:
        cfg = config(csms.url, pki["dir"], version, profile=2, password=PASSWORD,
                     ca=pki["ca"])
        async with running(cfg) as (agent, events):
            await refused(agent, csms)
            assert why in agent.link.last_error and "not connected" in agent.link.last_error
            assert "InvalidCsmsCertificate" in kinds(events)
            # Never a weaker profile: every attempt was wss:// with the configured profile.
            assert agent.link.profile.url.startswith("wss://")
            assert agent.network.security_profile == 2


@pytest.mark.parametrize("version", VERSIONS)
async def test_TC_A_06_CS_a_tls_1_1_only_csms_is_refused_with_an_event(pki, version):
    ctx = pki["server"].server_context(max_version=ssl.TLSVersion.TLSv1_1)
    async with csms_at(version, ctx) as csms:
        cfg = config(csms.url, pki["dir"], version, profile=2, password=PASSWORD,
                     ca=pki["ca"])
        async with running(cfg) as (agent, events):
            await refused(agent, csms, attempts=2)
            assert "needs TLS 1.2 or newer" in agent.link.last_error
            assert "InvalidTLSVersion" in kinds(events)


# ---------------------------------------------------------------- upgrades refused (A05)


async def _ask_upgrade(version: str, link: Any, level: int, url: str) -> str:
    """Ask for security profile ``level`` the way ``version`` does; the station's verdict."""
    if version == "1.6":
        res = await link.call("ChangeConfiguration", {"key": "SecurityProfile",
                                                      "value": str(level)})
        return res["status"]
    data = {"ocppVersion": "OCPP20", "ocppTransport": "JSON", "ocppCsmsUrl": url,
            "messageTimeout": 30, "securityProfile": level, "ocppInterface": "Wired0"}
    res = await link.call("SetNetworkProfile", {"configurationSlot": 2,
                                                "connectionData": data})
    if res["status"] != "Accepted":
        return res["status"]
    res = await link.call("SetVariables", {"setVariableData": [{
        "component": {"name": "OCPPCommCtrlr"},
        "variable": {"name": "NetworkConfigurationPriority"}, "attributeValue": "2,1"}]})
    return res["setVariableResult"][0]["attributeStatus"]


@pytest.mark.parametrize("version", VERSIONS)
async def test_TC_A_20_21_22_CS_upgrade_refused_without_what_it_needs(pki, version):
    async with csms_at(version, passwords={"CP1": PASSWORD}) as csms:
        cfg = config(csms.url, pki["dir"], version, profile=1, password=PASSWORD)
        async with running(cfg) as (agent, _):
            link = await online(agent, csms)
            tls_url = "wss://127.0.0.1:1/ocpp"
            # A05.FR.03 / TC_A_20_CS: no CSMS root certificate installed.
            assert await _ask_upgrade(version, link, 2, tls_url) == "Rejected"
            agent.cfg.ocpp.ca_file = str(pki["ca"].cert_path)  # now there is one
            # A05.FR.04 / TC_A_21_CS: profile 3 without a station certificate.
            assert await _ask_upgrade(version, link, 3, tls_url) == "Rejected"
            # A05.FR.01 / TC_A_22_CS: never lower (nor, on 1.6, the same again).
            assert await _ask_upgrade(version, link, 0, csms.url) == "Rejected"
            assert agent.network.security_profile == 1
            assert agent.link.connects == 1, "nothing refused leads to a reconnect"


# ---------------------------------------------------------------- upgrades that work


async def test_TC_A_19_CS_upgrade_to_profile_3_through_a_network_profile(pki):
    ca, station = pki["ca"], pki["station"]
    async with csms_at("2.0.1", passwords={"CP1": PASSWORD}) as old, \
            csms_at("2.0.1", pki["server"].server_context(client_ca=ca)) as new:
        # The station certificate comes from the store (as after A02), not from the YAML.
        cfg = config(old.url, pki["dir"], "2.0.1", profile=1, password=PASSWORD, ca=ca)
        async with running(cfg) as (agent, _):
            link = await online(agent, old)
            agent.station.certificates.provision_identity(station.cert_path.read_text(),
                                                          station.key_path.read_bytes())
            assert await _ask_upgrade("2.0.1", link, 3, new.url + "ocpp") == "RebootRequired"
            assert (await link.call("Reset", {"type": "OnIdle"}))["status"] == "Accepted"
            await asyncio.wait_for(agent._stop.wait(), 5)
        async with running(cfg) as (agent, _):  # the reboot
            link = await online(agent, new)
            assert new.peer_certs["CP1"]["subject"][0][0][1] == "CP1"
            got = await link.call("GetVariables", {"getVariableData": [
                {"component": {"name": "SecurityCtrlr"}, "variable": {"name": "SecurityProfile"}},
                {"component": {"name": "OCPPCommCtrlr"},
                 "variable": {"name": "NetworkConfigurationPriority"}},
                {"component": {"name": "OCPPCommCtrlr"},
                 "variable": {"name": "ActiveNetworkProfile"}}]})
            values = [r["attributeValue"] for r in got["getVariableResult"]]
            assert values == ["3", "2", "2"], "slot 1 (profile 1) left the priority list"
        async with running(cfg) as (agent, _):  # and never back to profile 1
            await online(agent, new)
            assert not [e for e in old.connection_log if e[2].startswith("connected")][1:]


async def test_TC_B_46_49_CS_a_new_profile_that_fails_falls_back_to_the_working_one(pki):
    async with csms_at("2.0.1", passwords={"CP1": PASSWORD}) as csms:
        defaults = {"OCPPCommCtrlr.NetworkProfileConnectionAttempts": 2}
        cfg = config(csms.url, pki["dir"], "2.0.1", profile=1, password=PASSWORD,
                     defaults=defaults)
        async with running(cfg) as (agent, _):
            link = await online(agent, csms)
            dead = "ws://127.0.0.1:9/ocpp"  # nobody listens there
            assert await _ask_upgrade("2.0.1", link, 1, dead) == "RebootRequired"
            await link.call("Reset", {"type": "OnIdle"})
            await asyncio.wait_for(agent._stop.wait(), 5)
        async with running(cfg) as (agent, _):
            await online(agent, csms)
            assert agent.network.active_slot == "1"
            tried = [p for p in agent.network.sequence()]
            assert [s.slot for s in tried] == ["2", "1"], "slot 2 stays first in the list"


@pytest.mark.parametrize("tls_works", [True, False])
async def test_16_A05_security_profile_upgrade_and_its_fallback(pki, tls_works):
    """ChangeConfiguration SecurityProfile 2: the station reconnects over wss:// on the same
    host and port; if that fails (A05.FR.08) it goes back to profile 1."""
    ca = pki["ca"]
    async with csms_at("1.6", passwords={"CP1": PASSWORD}) as csms:
        cfg = config(csms.url, pki["dir"], "1.6", profile=1, password=PASSWORD, ca=ca)
        # Three attempts take longer than the CSMS's switch to TLS below.
        cfg.ocpp.reconnect.min_backoff_s, cfg.ocpp.reconnect.max_backoff_s = 0.3, 0.5
        async with running(cfg) as (agent, events):
            link = await online(agent, csms)
            assert await _ask_upgrade("1.6", link, 2, "") == "Accepted"
            if tls_works:  # the CSMS speaks TLS on its port from now on
                await csms.pause()
                csms.ssl = pki["server"].server_context()
                await csms.resume()
            if tls_works:
                await eventually(lambda: agent.link.connects == 2, "reconnected over TLS", 10)
                assert agent.link.profile.url.startswith("wss://127.0.0.1:")
                assert agent.network.security_profile == 2
            else:  # still plain ws: three TLS attempts fail, then profile 1 again
                await eventually(lambda: agent.link.connects == 2, "back on profile 1", 15)
                assert agent.link.profile.url.startswith("ws://")
                assert agent.network.security_profile == 1 and agent.network.pending() is None
            link = await csms.wait_station("CP1")
            got = await link.call("GetConfiguration", {"key": ["SecurityProfile"]})
            expected = "2" if tls_works else "1"
            assert got["configurationKey"][0]["value"] == expected


# ---------------------------------------------------------------- passwords (A01)


async def _set_password(version: str, link: Any, password: str) -> str:
    if version == "1.6":
        res = await link.call("ChangeConfiguration", {"key": "AuthorizationKey",
                                                      "value": password})
        return res["status"]
    res = await link.call("SetVariables", {"setVariableData": [{
        "component": {"name": "SecurityCtrlr"}, "variable": {"name": "BasicAuthPassword"},
        "attributeValue": password}]})
    return res["setVariableResult"][0]["attributeStatus"]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("csms_takes_it", [True, False])
async def test_TC_A_09_CS_password_rotation_and_fallback(pki, version, csms_takes_it):
    async with csms_at(version, passwords={"CP1": PASSWORD}) as csms:
        cfg = config(csms.url, pki["dir"], version, profile=1, password=PASSWORD)
        async with running(cfg) as (agent, events):
            link = await online(agent, csms)
            if csms_takes_it:  # A01.FR.03: from now on only the new one
                csms.passwords = {"CP1": NEW_PASSWORD}
            assert await _set_password(version, link, NEW_PASSWORD) == "Accepted"
            await eventually(lambda: agent.link.connects == 2, "reconnected", 10)
            assert agent.network.password() == (NEW_PASSWORD if csms_takes_it else PASSWORD)
            assert agent.storage.get_setting(NEW_PASSWORD_KEY) is None
            if not csms_takes_it:  # refused (HTTP 401): the previous one, and an event
                assert "FailedToAuthenticateAtCsms" in kinds(events)
        async with running(cfg) as (agent, _):  # persisted across a restart
            await online(agent, csms)
            assert agent.network.password() == (NEW_PASSWORD if csms_takes_it else PASSWORD)


@pytest.mark.parametrize("version", VERSIONS)
async def test_TC_A_10_CS_a_short_password_is_rejected_and_nothing_changes(pki, version):
    async with csms_at(version, passwords={"CP1": PASSWORD}) as csms:
        cfg = config(csms.url, pki["dir"], version, profile=1, password=PASSWORD)
        async with running(cfg) as (agent, _):
            link = await online(agent, csms)
            assert await _set_password(version, link, "short") == "Rejected"
            assert agent.network.password() == PASSWORD and agent.link.connects == 1


@pytest.mark.parametrize("version", VERSIONS)
async def test_the_password_is_never_read_back(pki, version):
    async with csms_at(version, passwords={"CP1": PASSWORD}) as csms:
        cfg = config(csms.url, pki["dir"], version, profile=1, password=PASSWORD)
        async with running(cfg) as (agent, _):
            link = await online(agent, csms)
            csms.passwords = {"CP1": NEW_PASSWORD}
            assert await _set_password(version, link, NEW_PASSWORD) == "Accepted"
            await eventually(lambda: agent.link.connects == 2, "reconnected", 10)
            link = await csms.wait_station("CP1")
            if version == "1.6":
                for ask in ({}, {"key": ["AuthorizationKey"]}):
                    got = await link.call("GetConfiguration", ask)
                    [entry] = [k for k in got["configurationKey"]
                               if k["key"] == "AuthorizationKey"]
                    assert "value" not in entry and entry["readonly"] is False
            else:
                got = await link.call("GetVariables", {"getVariableData": [{
                    "component": {"name": "SecurityCtrlr"},
                    "variable": {"name": "BasicAuthPassword"}}]})
                result = got["getVariableResult"][0]
                assert result["attributeStatus"] == "Rejected"
                assert "attributeValue" not in result
            sent = [m for m in csms.log if m.direction != "csms->cs"]
            assert sent and not [m for m in sent if NEW_PASSWORD in str(m.payload)]
            assert NEW_PASSWORD not in str(agent.frames.recent())
