"""The operator's view (agent/web): configuration, the JSON API, metrics, protection, live push.

Every agent here is the real one on the mock HAL against the strict test CSMS; the page's
server is reached over real HTTP on 127.0.0.1 with aiohttp's client.  Waits are on what the
server sends, each with a time-out.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.app import Agent
from agent.clock import iso
from agent.config import ConfigError, WebConfig, load_config_text
from agent.core.model import ConnectorStatus, EvseSnapshot
from agent.testing.csms import TestCsms
from agent.web.view import SessionTracker, public_config
from hal.interfaces import MeterReading, PilotState
from tests.conftest import agent_config, eventually, online, online201, strict_csms

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "web-token-0123456789abcdef"
WEB_USER, WEB_PASSWORD = "operator", "web-password-42"
OCPP_PASSWORD = "ocpp-secret-password-77"
BASE = {"station": {"id": "CP1"}, "ocpp": {"url": "ws://127.0.0.1:9000/ocpp"}}


def config_text(**sections: Any) -> str:
    """A minimal valid configuration with ``sections`` merged into it, as YAML (JSON)."""
    doc = json.loads(json.dumps(BASE))
    for name, value in sections.items():
        doc[name] = {**doc.get(name, {}), **value}
    return json.dumps(doc)


@contextlib.asynccontextmanager
async def web_agent(csms: TestCsms, state: Path, *, web: dict[str, Any] | None = None,
                    **kw: Any) -> AsyncIterator[Agent]:
    cfg = agent_config(csms.url, state, **kw)
    cfg.web = WebConfig(**{"listen": "127.0.0.1:0", **(web or {})})
    cfg.validate()
    agent = Agent(cfg)
    await agent.start()
    try:
        yield agent
    finally:
        await agent.stop()


class EventStream:
    """The page's event stream read as the browser reads it (text/event-stream)."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.buffer = ""
        self.events: list[tuple[str, Any]] = []

    async def next(self) -> tuple[str, Any]:
        while "\n\n" not in self.buffer:
            chunk = await self.response.content.readany()
            if not chunk:
                raise EOFError("the event stream ended")
            self.buffer += chunk.decode("utf-8")
        block, self.buffer = self.buffer.split("\n\n", 1)
        event, data = "message", []
        for line in block.split("\n"):
            if line.startswith(":"):
                continue
            key, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if key == "event":
                event = value
            elif key == "data":
                data.append(value)
        if not data:
            return await self.next()  # a keep-alive comment
        item = (event, json.loads("\n".join(data)))
        self.events.append(item)
        return item

    async def until(self, what: str, predicate: Callable[[str, Any], bool],
                    timeout: float = 5.0) -> Any:
        try:
            async with asyncio.timeout(timeout):
                while True:
                    event, data = await self.next()
                    if predicate(event, data):
                        return data
        except TimeoutError:
            raise AssertionError(f"no {what} on the event stream within {timeout}s") from None


def basic(user: str, password: str) -> dict[str, str]:
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def evse1(view: dict) -> dict:
    return view["evses"][0]


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize("web, needle", [
    ({"listen": "8080"}, "web.listen: '8080' is not allowed; expected host:port"),
    ({"listen": "127.0.0.1:http"}, "web.listen"),
    ({"listen": "127.0.0.1:70000"}, "web.listen"),
    ({"listen": "::1:8080"}, "web.listen"),
    ({"listen": "0.0.0.0:8080"}, "web.listen: '0.0.0.0:8080' is not allowed; expected 127.0.0.1"),
    ({"listen": "192.168.1.20:8080", "user": "op"}, "web.password"),
    ({"listen": "127.0.0.1:8080", "password": "long-enough-pw"}, "web.user"),
    ({"listen": "127.0.0.1:8080", "token": "short"}, "web.token: '***'"),
    ({"listen": "127.0.0.1:8080", "user": "a:b", "password": "long-enough-pw"}, "web.user"),
    ({"listen": "0.0.0.0:8080", "user": "op", "password": OCPP_PASSWORD},
     "web.password: '***' is not allowed; expected a password other than ocpp.password"),
    ({"listen": "0.0.0.0:8080", "token": OCPP_PASSWORD}, "web.token: '***'"),
    ({"listen": "127.0.0.1:8080", "colour": "red"}, "web.colour: unknown key"),
])
def test_web_configuration_errors_name_the_key(web, needle):
    with pytest.raises(ConfigError) as exc:
        load_config_text(config_text(ocpp={"password": OCPP_PASSWORD}, web=web))
    assert needle in str(exc.value)
    assert OCPP_PASSWORD not in str(exc.value)  # a secret is never echoed


@pytest.mark.parametrize("web", [
    {"listen": "127.0.0.1:8080"}, {"listen": "localhost:0"}, {"listen": "[::1]:8080"},
    {"listen": "0.0.0.0:8080", "token": TOKEN},
    {"listen": "[::]:8080", "user": WEB_USER, "password": WEB_PASSWORD},
])
def test_web_configurations_that_are_allowed(web):
    cfg = load_config_text(config_text(web=web))
    assert cfg.web.listen == web["listen"]


def test_the_page_is_off_by_default_and_in_the_example():
    assert load_config_text(config_text()).web.listen is None
    text = (ROOT / "config.example.yaml").read_text()
    assert "\nweb:" in text and "  listen: null" in text
    from agent.config import load_config

    assert load_config(ROOT / "config.example.yaml").web.listen is None


_IMPORTS = """
import asyncio, json, sys, tempfile
from agent.app import Agent
from agent.config import load_config_text

async def main():
    tmp = tempfile.mkdtemp(prefix="cpa-", dir="/tmp")
    cfg = load_config_text(json.dumps({
        "station": {"id": "CP1"},
        "ocpp": {"url": "ws://127.0.0.1:9/ocpp", "reconnect": {"min_backoff_s": 5}},
        "storage": {"path": tmp + "/s.db"}, "control": {"socket": tmp + "/c.sock"},
        "web": json.loads(sys.argv[1])}))
    agent = Agent(cfg)
    await agent.start()
    await agent.stop()
    print(json.dumps({m: m in sys.modules for m in ("aiohttp", "prometheus_client",
                                                    "agent.web", "cryptography")}))

asyncio.run(main())
"""


def _imports(web: dict) -> dict[str, bool]:
    res = subprocess.run([sys.executable, "-c", _IMPORTS, json.dumps(web)], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_an_agent_without_web_never_imports_aiohttp():
    """Nor cryptography on profile 0 without certificates: each costs megabytes of RSS."""
    assert _imports({}) == {"aiohttp": False, "prometheus_client": False, "agent.web": False,
                            "cryptography": False}
    assert _imports({"listen": "127.0.0.1:0"}) == {
        "aiohttp": True, "prometheus_client": True, "agent.web": True, "cryptography": False}


# ---------------------------------------------------------------- the API


async def test_api_status_is_agent_status_and_config_is_scrubbed(csms, short_dir):
    async with web_agent(csms, short_dir) as agent, aiohttp.ClientSession() as http:
        await online(agent, csms)
        assert agent.web_url is not None and agent.web_url.startswith("http://127.0.0.1:")
        async with http.get(agent.web_url + "api/status") as r:
            assert r.status == 200
            assert r.headers["Cache-Control"] == "no-store"
            body = await r.json()
        assert body == json.loads(json.dumps(await agent.handle_control({"cmd": "status"})))
        assert evse1(body)["connector_status"] == "Available"
        async with http.get(agent.web_url + "api/view") as r:
            view = await r.json()
        assert view["bench"] is True
        assert view["link"]["state"] == "connected" and view["link"]["version"] == "1.6"
        assert view["link"]["connected_since"] and view["link"]["outbox"] == 0
        assert view["link"]["url"].endswith("/CP1")
        async with http.get(agent.web_url + "api/frames?limit=5") as r:
            frames = (await r.json())["frames"]
        assert 0 < len(frames) <= 5 and {"at", "direction", "kind", "action"} <= set(frames[0])
        async with http.get(agent.web_url + "config") as r:
            config = await r.json()
        assert config["station"]["id"] == "CP1" and config["web"]["listen"] == "127.0.0.1:0"
        async with http.get(agent.web_url) as r:
            page = await r.text()
            csp = r.headers["Content-Security-Policy"]
        # Self-contained: no external script, style, font or image, and the policy says so.
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//|url\(|@import""", page)
        assert "<script src" not in page and "<link rel=\"stylesheet" not in page
        assert "default-src 'none'" in csp and "connect-src 'self'" in csp


def test_public_config_removes_every_secret():
    cfg = load_config_text(config_text(
        ocpp={"url": "ws://cp:pw-in-url@csms.example/ocpp", "password": OCPP_PASSWORD,
              "security_profile": 1,
              "defaults": {"AuthorizationKey": "00112233445566778899", "HeartbeatInterval": 60}},
        web={"listen": "0.0.0.0:8080", "token": TOKEN, "user": WEB_USER,
             "password": WEB_PASSWORD}))
    text = json.dumps(public_config(cfg))
    for secret in (OCPP_PASSWORD, TOKEN, WEB_USER, WEB_PASSWORD, "pw-in-url",
                   "00112233445566778899"):
        assert secret not in text
    public = public_config(cfg)
    assert public["ocpp"]["password"] == public["web"]["token"] == "***"
    assert public["ocpp"]["defaults"]["HeartbeatInterval"] == 60
    assert public["ocpp"]["url"] == "ws://***@csms.example/ocpp"


async def test_connector_status_in_201_words(short_dir):
    async with strict_csms(("2.0.1",)) as csms, \
            web_agent(csms, short_dir, versions=("2.0.1",)) as agent, \
            aiohttp.ClientSession() as http:
        await online201(agent, csms)
        agent.hal.plug(1)
        await agent.station.quiet()
        async with http.get(agent.web_url + "api/status") as r:
            entry = evse1(await r.json())
        assert (entry["status"], entry["connector_status"]) == ("Preparing", "Occupied")
        agent.hal.unplug(1)
        await agent.station.quiet()


# ---------------------------------------------------------------- metrics


def _samples(text: str) -> dict[str, list]:
    out: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


def _value(samples: dict, name: str, **labels: str) -> float:
    for got, value in samples[name]:
        if all(got.get(k) == v for k, v in labels.items()):
            return value
    raise AssertionError(f"no {name} with {labels}: {samples.get(name)}")


async def test_metrics_in_prometheus_format(csms, short_dir):
    async with web_agent(csms, short_dir) as agent, aiohttp.ClientSession() as http:
        await online(agent, csms)
        agent.hal.plug(1)
        agent.hal.tap("TAG1")
        await csms.wait_for("StartTransaction", station_id="CP1")
        await eventually(lambda: (agent.status()["evses"][0]["power_w"] or 0) > 0,
                         "the meter to see power")
        async with http.get(agent.web_url + "metrics") as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            m = _samples(await r.text())
        assert _value(m, "cp_agent_link_up") == 1
        assert _value(m, "cp_agent_link_state", cp_agent_link_state="connected") == 1
        assert _value(m, "cp_agent_link_info", ocpp_version="1.6", security_profile="0") == 1
        assert _value(m, "cp_agent_outbox_messages") >= 0
        assert _value(m, "cp_agent_ocpp_messages_total", direction="cs->csms", kind="CALL",
                      action="StartTransaction") == 1
        assert _value(m, "cp_agent_ocpp_messages_total", direction="csms->cs",
                      kind="CALLRESULT", action="BootNotification") == 1
        assert _value(m, "cp_agent_evse_power_w", evse="1") > 1000
        assert _value(m, "cp_agent_evse_energy_import_wh_total", evse="1") > 0
        assert _value(m, "cp_agent_evse_session_energy_wh", evse="1") >= 0
        assert _value(m, "cp_agent_evse_current_a", evse="1", phase="L1") == pytest.approx(16)
        assert _value(m, "cp_agent_evse_offered_current_a", evse="1") > 0
        assert _value(m, "cp_agent_evse_current_limit_a", evse="1", source="evse") == 32
        assert _value(m, "cp_agent_evse_sessions_total", evse="1") == 1
        assert _value(m, "cp_agent_evse_contactor_closed", evse="1") in (0, 1)
        assert _value(m, "cp_agent_evse_pilot", evse="1", cp_agent_evse_pilot="C") in (0, 1)
        status = agent.status()["evses"][0]["status"]
        assert _value(m, "cp_agent_evse_status", evse="1", cp_agent_evse_status=status) == 1
        assert sum(v for _, v in m["cp_agent_evse_status"]) == 1
        assert _value(m, "cp_agent_evse_fault", evse="1", kind="over_temperature") == 0
        assert _value(m, "cp_agent_info", station="CP1") == 1
        agent.hal.inject_fault(1, "over_temperature")
        await agent.station.quiet()
        async with http.get(agent.web_url + "metrics") as r:
            m = _samples(await r.text())
        assert _value(m, "cp_agent_evse_fault", evse="1", kind="over_temperature") == 1
        assert _value(m, "cp_agent_evse_fault", evse="1", kind="meter") == 0
        assert _value(m, "cp_agent_evse_status", evse="1", cp_agent_evse_status="Faulted") == 1
        agent.hal.clear_fault(1, "over_temperature")
        agent.hal.unplug(1)
        await csms.wait_for("StopTransaction", station_id="CP1")


async def test_two_agents_in_one_process_have_their_own_metrics(csms, short_dir):
    async with web_agent(csms, short_dir, station_id="CPA") as a, \
            web_agent(csms, short_dir, station_id="CPB") as b, aiohttp.ClientSession() as http:
        texts = []
        for agent in (a, b):
            async with http.get(agent.web_url + "metrics") as r:
                texts.append(await r.text())
        assert 'station="CPA"' in texts[0] and 'station="CPB"' not in texts[0]
        assert 'station="CPB"' in texts[1] and 'station="CPA"' not in texts[1]


# ---------------------------------------------------------------- protection


async def test_a_token_is_needed_for_every_request(csms, short_dir):
    async with web_agent(csms, short_dir, web={"token": TOKEN}) as agent, \
            aiohttp.ClientSession() as http:
        url = agent.web_url
        for path in ("", "events", "api/status", "api/view", "config", "metrics"):
            async with http.get(url + path) as r:
                assert r.status == 401, path
                assert r.headers["WWW-Authenticate"].startswith("Bearer")
            async with http.get(url + path, headers={"Authorization": "Bearer wrong"}) as r:
                assert r.status == 401, path
            async with http.get(url + path, params={"token": TOKEN[:-1] + "X"}) as r:
                assert r.status == 401, path
        for path in ("", "api/status", "config", "metrics"):
            async with http.get(url + path, headers={"Authorization": f"Bearer {TOKEN}"}) as r:
                assert r.status == 200, path
        for path in ("", "events"):  # what a browser opens: the token in the query
            async with http.get(url + path, params={"token": TOKEN}) as r:
                assert r.status == 200, path


async def test_basic_auth(csms, short_dir):
    web = {"user": WEB_USER, "password": WEB_PASSWORD}
    async with web_agent(csms, short_dir, web=web) as agent, aiohttp.ClientSession() as http:
        url = agent.web_url + "api/status"
        async with http.get(url) as r:
            assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Basic")
        for user, password in ((WEB_USER, "wrong-password"), ("other", WEB_PASSWORD)):
            async with http.get(url, headers=basic(user, password)) as r:
                assert r.status == 401
        async with http.get(url, headers={"Authorization": "Basic %%%"}) as r:
            assert r.status == 401
        async with http.get(url, headers=basic(WEB_USER, WEB_PASSWORD)) as r:
            assert r.status == 200


async def test_controls_need_the_credential_even_on_loopback(csms, short_dir):
    async with web_agent(csms, short_dir, web={"token": TOKEN}) as agent, \
            aiohttp.ClientSession() as http:
        await online(agent, csms)
        plug = {"cmd": "plug", "args": {"evse": 1}}
        async with http.post(agent.web_url + "api/control", json=plug) as r:
            assert r.status == 401
        async with http.post(agent.web_url + "api/control", json=plug,
                             headers={"Authorization": "Bearer not-the-token"}) as r:
            assert r.status == 401
        await agent.station.quiet()
        assert evse1(agent.status())["pilot"] == "A"  # nothing happened
        async with http.post(agent.web_url + "api/control", json=plug,
                             headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            assert r.status == 200
            assert evse1(await r.json())["pilot"] == "B"


async def test_controls_refuse_other_sites_and_other_commands(csms, short_dir):
    async with web_agent(csms, short_dir) as agent, aiohttp.ClientSession() as http:
        await online(agent, csms)
        url = agent.web_url + "api/control"
        plug = {"cmd": "plug", "args": {"evse": 1}}
        # A form posted by another web site, or a script there: refused.
        async with http.post(url, data="cmd=plug") as r:
            assert r.status == 415
        async with http.post(url, json=plug, headers={"Origin": "http://evil.example"}) as r:
            assert r.status == 403
        # DNS rebinding: a foreign host name pointing at 127.0.0.1.
        async with http.get(agent.web_url + "api/status",
                            headers={"Host": "evil.example:8080"}) as r:
            assert r.status == 421
        async with http.post(url, json={"cmd": "status"}) as r:
            assert r.status == 400
        async with http.post(url, json={"cmd": "plug", "args": {"evse": 7}}) as r:
            assert r.status == 400 and "no EVSE 7" in (await r.json())["error"]
        await agent.station.quiet()
        assert evse1(agent.status())["pilot"] == "A"
        origin = agent.web_url.rstrip("/")
        async with http.post(url, json=plug, headers={"Origin": origin}) as r:
            assert r.status == 200


async def test_no_secret_in_any_response(short_dir):
    server = TestCsms(versions=("1.6",), passwords={"CP1": OCPP_PASSWORD})
    await server.start()
    secrets = (OCPP_PASSWORD, TOKEN, WEB_PASSWORD)
    try:
        web = {"token": TOKEN, "user": WEB_USER, "password": WEB_PASSWORD}
        async with web_agent(server, short_dir, web=web, password=OCPP_PASSWORD,
                             profile=1) as agent, \
                aiohttp.ClientSession(headers=basic(WEB_USER, WEB_PASSWORD)) as http:
            await online(agent, server)
            bodies = []
            for path in ("", "api/status", "api/view", "api/frames", "config", "metrics"):
                async with http.get(agent.web_url + path) as r:
                    assert r.status == 200, path
                    bodies.append(await r.text())
            async with http.get(agent.web_url + "events") as r:
                stream = EventStream(r)
                await stream.until("the first view", lambda e, d: e == "view")
                agent.hal.plug(1)
                agent.hal.tap("TAG1")
                await stream.until("StartTransaction", lambda e, d: e == "frames" and any(
                    f["action"] == "StartTransaction" for f in d["frames"]))
            bodies.append(json.dumps(stream.events))
            for body in bodies:
                for secret in secrets:
                    assert secret not in body
            agent.hal.unplug(1)
            await server.wait_for("StopTransaction", station_id="CP1")
    finally:
        await server.stop()
    assert server.violations == []


async def test_it_listens_on_127_0_0_1_only(csms, short_dir):
    async with web_agent(csms, short_dir) as agent:
        port = int(agent.web_url.rsplit(":", 1)[1].strip("/"))
        assert agent.web.host == "127.0.0.1"
        # Another loopback address of this machine is not served.
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.2", port), timeout=2).close()
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


async def test_a_taken_port_leaves_the_agent_running_without_the_page(csms, short_dir, caplog):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with web_agent(csms, short_dir, web={"listen": f"127.0.0.1:{port}"}) as agent:
            await online(agent, csms)
            assert agent.web is None and agent.web_url is None
    assert "status page not started" in caplog.text


async def test_an_agent_without_web_has_no_page(make_agent):
    agent = await make_agent()
    assert agent.web is None and agent.web_url is None


# ---------------------------------------------------------------- live push


async def test_updates_are_pushed_while_a_session_runs(csms, short_dir):
    async with web_agent(csms, short_dir, defaults={"MeterValueSampleInterval": 2}) as agent, \
            aiohttp.ClientSession() as http:
        await online(agent, csms)
        async with http.get(agent.web_url + "events") as r:
            assert r.headers["Content-Type"] == "text/event-stream"
            stream = EventStream(r)
            first = await stream.until("the first view", lambda e, d: e == "view")
            assert evse1(first)["status"] == "Available" and evse1(first)["session"] is None
            await stream.until("the recent frames", lambda e, d: e == "frames" and d["reset"])

            agent.hal.plug(1)
            await stream.until("Preparing", lambda e, d: e == "view"
                               and evse1(d)["status"] == "Preparing")
            async with http.post(agent.web_url + "api/control",
                                 json={"cmd": "tap", "args": {"token": "TAG1"}}) as c:
                assert c.status == 200
            view = await stream.until("Charging", lambda e, d: e == "view"
                                      and evse1(d)["status"] == "Charging")
            session = evse1(view)["session"]
            assert session["active"] and session["token"] == "TAG1"
            samples = [await stream.until(f"chart point {i}", lambda e, d: e == "sample")
                       for i in range(3)]
            assert [s["session"] for s in samples] == [session["id"]] * 3
            times = [s["point"][0] for s in samples]
            assert times == sorted(times) and samples[-1]["point"][1] > 0  # W
            # The frames came as they passed (1.6: Charging waits for the Start's answer).
            assert any(f["action"] == "StartTransaction" and f["kind"] == "CALL"
                       for e, d in stream.events if e == "frames" and not d.get("reset")
                       for f in d["frames"])
            agent.hal.unplug(1)
            ended = await stream.until("the session's end", lambda e, d: e == "view"
                                       and evse1(d)["session"] is not None
                                       and not evse1(d)["session"]["active"])
            assert evse1(ended)["session"]["points"] >= 3
            await csms.wait_for("StopTransaction", station_id="CP1")
            # Stopping the agent ends the stream instead of hanging on it.
            await asyncio.wait_for(agent.stop(), 10)
            with pytest.raises(EOFError):
                async with asyncio.timeout(5):
                    while True:
                        await stream.next()


async def test_a_reconnecting_page_gets_the_whole_chart(csms, short_dir):
    async with web_agent(csms, short_dir) as agent, aiohttp.ClientSession() as http:
        await online(agent, csms)
        agent.hal.plug(1)
        agent.hal.tap("TAG1")
        await csms.wait_for("StartTransaction", station_id="CP1")
        await eventually(lambda: len(agent.web.tracker.series[1].points) >= 2, "two points")
        async with http.get(agent.web_url + "events") as r:
            view = await EventStream(r).until("the first view", lambda e, d: e == "view")
        samples = evse1(view)["session"]["samples"]
        assert len(samples) >= 2 and all(len(p) == 4 for p in samples)
        agent.hal.unplug(1)
        await csms.wait_for("StopTransaction", station_id="CP1")


# ---------------------------------------------------------------- the chart's samples


def _snap(tx: str | None, power: float) -> EvseSnapshot:
    return EvseSnapshot(
        evse_id=1, connector_id=1, status=ConnectorStatus.CHARGING, pilot=PilotState.C,
        contactor_closed=True, offered_a=16.0, limit_a=32.0, operative=True, faults=(),
        token="TAG1", tx_local_id=tx, tx_remote_id=None, energy_wh=1.0, power_w=power,
        reading=MeterReading(energy_import_wh=1.0, power_w=power, current_a=(16.0, 15.0)))


def test_session_samples_stay_bounded_over_a_long_session():
    now = [100.0]
    snaps = [_snap("tx-1", 11000.0)]
    agent = SimpleNamespace(clock=SimpleNamespace(monotonic=lambda: now[0]),
                            station=SimpleNamespace(evses={1: None}, snapshots=lambda: snaps))
    tracker = SessionTracker(agent, interval=1.0, max_points=50)  # type: ignore[arg-type]
    for _ in range(1000):  # 1000 s of charging
        tracker.poll()
        now[0] += 1.0
    series = tracker.series[1]
    assert 25 <= len(series.points) <= 50 and series.interval > 1.0
    assert series.points[0][0] == 0 and series.points[-1][0] > 900  # the whole session
    assert series.points[-1][1:] == [11000.0, 16.0, 16.0]
    assert tracker.sessions[1] == 1
    snaps[0] = _snap(None, 0.0)
    tracker.poll()
    assert not series.active and len(tracker.series[1].points) == len(series.points)
    snaps[0] = _snap("tx-2", 7000.0)
    tracker.poll()
    assert tracker.sessions[1] == 2 and len(tracker.series[1].points) == 1



# ---------------------------------------------------------------- smart charging and the site


def _three_periods(start: datetime) -> dict:
    """A TxDefaultProfile of three hour-long periods from ``start`` (1.6 shapes)."""
    return {"chargingProfileId": 7, "stackLevel": 1,
            "chargingProfilePurpose": "TxDefaultProfile", "chargingProfileKind": "Absolute",
            "chargingSchedule": {
                "startSchedule": iso(start), "duration": 3 * 3600, "chargingRateUnit": "A",
                "chargingSchedulePeriod": [{"startPeriod": 0, "limit": 16},
                                           {"startPeriod": 3600, "limit": 10},
                                           {"startPeriod": 7200, "limit": 20}]}}


async def test_view_shows_limit_sources_schedule_and_profiles(csms, short_dir):
    """/api/view: which limit source binds, the composite the pilot follows (the same call as
    the scheduler's), the installed profile; pushed when the profile goes."""
    async with web_agent(csms, short_dir) as agent, aiohttp.ClientSession() as http:
        link = await online(agent, csms)
        async with http.get(agent.web_url + "api/view") as r:
            before = evse1(await r.json())
        assert before["profiles"] == []
        assert [p["limit_a"] for p in before["schedule"]["periods"]] == [32.0]  # the rating
        assert before["limits"] == [{"source": "evse", "limit_a": 32.0, "binding": True}]

        start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
        res = await link.call("SetChargingProfile", {"connectorId": 1,
                                                     "csChargingProfiles": _three_periods(start)})
        assert res["status"] == "Accepted"
        await eventually(lambda: agent.station.evses[1].limit_source == "csms", "csms binds")
        async with http.get(agent.web_url + "api/view") as r:
            view = await r.json()
        assert view["site"] is None
        evse = evse1(view)
        sources = {row["source"]: (row["limit_a"], row["binding"]) for row in evse["limits"]}
        assert sources == {"evse": (32.0, False), "csms": (16.0, True)}

        schedule = evse["schedule"]
        doc_start = datetime.fromisoformat(schedule["start"].replace("Z", "+00:00"))
        assert schedule["unit"] == "A" and schedule["duration_s"] >= 3 * 3600
        offset = int((doc_start - start).total_seconds())  # the profile began before the view
        assert schedule["periods"] == [
            {"start_s": 0, "limit_a": 16.0, "number_phases": 3},
            {"start_s": 3600 - offset, "limit_a": 10.0, "number_phases": 3},
            {"start_s": 7200 - offset, "limit_a": 20.0, "number_phases": 3},
            {"start_s": 10800 - offset, "limit_a": 32.0, "number_phases": 3}]
        # ... which is GetCompositeSchedule's answer over the same window.
        composite = await link.call("GetCompositeSchedule", {
            "connectorId": 1, "duration": schedule["duration_s"], "chargingRateUnit": "A"})
        answered = composite["chargingSchedule"]["chargingSchedulePeriod"]
        assert [p["limit"] for p in answered] == [p["limit_a"] for p in schedule["periods"]]

        [installed] = evse["profiles"]
        assert installed["id"] == 7 and installed["purpose"] == "TxDefaultProfile"
        assert installed["stack_level"] == 1 and installed["kind"] == "Absolute"
        assert installed["evse_id"] == 1 and installed["valid_now"] is True
        [sch] = installed["schedules"]
        assert sch["rate_unit"] == "A" and sch["duration_s"] == 3 * 3600
        assert [(q["start_s"], q["limit"]) for q in sch["periods"]] == \
            [(0, 16.0), (3600, 10.0), (7200, 20.0)]

        async with http.get(agent.web_url + "metrics") as r:
            m = _samples(await r.text())
        assert _value(m, "cp_agent_evse_composite_limit_a", evse="1") == 16
        assert "cp_agent_site_headroom_a" not in m  # no site: section

        async with http.get(agent.web_url + "events") as r:
            stream = EventStream(r)
            await stream.until("the first view", lambda e, d: e == "view")
            assert (await link.call("ClearChargingProfile", {"id": 7}))["status"] == "Accepted"
            cleared = await stream.until("the profile gone", lambda e, d: e == "view"
                                         and not evse1(d)["profiles"])
        assert [p["limit_a"] for p in evse1(cleared)["schedule"]["periods"]] == [32.0]


async def test_view_shows_the_site_and_its_fallback(csms, short_dir):
    site = "site: {max_current_a: 12, grid_meter: {type: mock}, fallback_current_a: 8}"
    async with web_agent(csms, short_dir, extra=site) as agent, \
            aiohttp.ClientSession() as http:
        await online(agent, csms)
        agent.hal.plug(1)
        agent.hal.tap("TAG1")
        await csms.wait_for("StartTransaction", station_id="CP1")
        await agent.load.step()
        async with http.get(agent.web_url + "api/view") as r:
            view = await r.json()
        # 12 A of the connection (no house load) for the one session: the site binds.
        assert {r["source"]: (r["limit_a"], r["binding"]) for r in evse1(view)["limits"]} \
            == {"evse": (32.0, False), "site": (12.0, True)}
        site_doc = view["site"]
        assert site_doc["mode"] == "grid_meter" and site_doc["fallback"] is False
        assert site_doc["max_current_a"] == 12 and site_doc["headroom_a"] == pytest.approx(12)
        assert site_doc["shares"] == {"1": 12.0} and site_doc["fallback_current_a"] == 8
        async with http.get(agent.web_url + "metrics") as r:
            m = _samples(await r.text())
        assert _value(m, "cp_agent_site_headroom_a") == pytest.approx(12.0)
        assert _value(m, "cp_agent_site_limit_a") == 12
        assert _value(m, "cp_agent_site_fallback") == 0
        assert {labels["phase"] for labels, _ in m["cp_agent_site_grid_current_a"]} == \
            {"L1", "L2", "L3"}

        async with http.get(agent.web_url + "events") as r:
            stream = EventStream(r)
            await stream.until("the first view", lambda e, d: e == "view")
            # The grid meter goes silent: after silent_samples reads the site falls back.
            agent.hal.grid_meter_silent = True
            for _ in range(3):
                await agent.load.step()
            fallback = await stream.until("the fallback", lambda e, d: e == "view"
                                          and d["site"]["fallback"])
        assert fallback["site"]["mode"] == "fallback" and fallback["site"]["failed_reads"] >= 3
        assert {r["source"]: r["limit_a"] for r in evse1(fallback)["limits"]}["site"] == 8.0
        async with http.get(agent.web_url + "metrics") as r:
            assert _value(_samples(await r.text()), "cp_agent_site_fallback") == 1
        agent.hal.unplug(1)
        await csms.wait_for("StopTransaction", station_id="CP1")
