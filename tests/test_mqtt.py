"""The MQTT bridge against a real Mosquitto broker: state out, limits in, outages, last will.

Each test starts its own broker on a free port of 127.0.0.1 (no persistence, so a restarted
broker knows nothing and whatever it holds afterwards was republished by the bridge) and runs
the agent on the mock HAL against the strict test CSMS.  Every wait is on a message or a
condition, with a time-out; none is a sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from agent.app import Agent
from agent.config import (
    ConfigError,
    MqttConfig,
    ReconnectConfig,
    load_config,
    load_config_text,
)
from agent.integrations.mqtt import LimitError, parse_limit
from tests.conftest import agent_config, charging, eventually, online

ROOT = Path(__file__).resolve().parent.parent
MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if os.access("/usr/sbin/mosquitto", os.X_OK) else None)
needs_broker = pytest.mark.skipif(
    MOSQUITTO is None, reason="mosquitto is not installed (scripts/system_deps.sh installs it; "
                              "Debian: apt-get install mosquitto)")
PREFIX = "cp-agent/CP1"
BASE = "station: {id: CP1}\nocpp: {url: 'ws://127.0.0.1:9000/ocpp'}\n"
WAIT_S = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """A Mosquitto process of the test's own, on a fixed port so that it can be restarted."""

    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.conf = directory / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                             "persistence false\nlog_dest stderr\nlog_type error\n")
        self.log = directory / "mosquitto.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        assert MOSQUITTO is not None
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                MOSQUITTO, "-c", str(self.conf), stdout=subprocess.DEVNULL, stderr=log)
        try:
            async with asyncio.timeout(WAIT_S):
                while True:
                    if self.proc.returncode is not None:
                        raise AssertionError(f"mosquitto exited: {self.log.read_text()}")
                    try:
                        _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    except OSError:
                        await asyncio.sleep(0.02)  # polling the port, not synchronising
                        continue
                    writer.close()
                    return
        except TimeoutError:
            raise AssertionError(f"mosquitto did not listen on {self.port}") from None

    async def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            async with asyncio.timeout(5):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()


@pytest.fixture
async def broker(short_dir: Path) -> AsyncIterator[Broker]:
    """A broker that is started by the test itself (see ``test_broker_down_at_start_up``)."""
    b = Broker(short_dir)
    yield b
    await b.stop()


@pytest.fixture
async def running_broker(broker: Broker) -> Broker:
    await broker.start()
    return broker


class Subscriber:
    """A test client that follows ``<prefix>/#``; ``latest`` holds what each topic says now."""

    def __init__(self, port: int, prefix: str = PREFIX) -> None:
        import aiomqtt

        self.client = aiomqtt.Client("127.0.0.1", port, identifier=f"test-{uuid.uuid4().hex}")
        self.prefix = prefix
        self.latest: dict[str, str] = {}
        self.seen: list[tuple[str, str, bool]] = []  # (topic, payload, retained)
        self._changed = asyncio.Event()
        self._task: asyncio.Task | None = None

    async def __aenter__(self) -> Subscriber:
        await self.client.__aenter__()
        await self.client.subscribe(f"{self.prefix}/#", qos=1)
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.client.__aexit__(None, None, None)

    async def _read(self) -> None:
        async for msg in self.client.messages:
            payload = bytes(msg.payload).decode()
            self.latest[msg.topic.value] = payload
            self.seen.append((msg.topic.value, payload, msg.retain))
            self._changed.set()

    async def publish(self, topic: str, payload: str, retain: bool = False) -> None:
        await self.client.publish(f"{self.prefix}/{topic}", payload, qos=1, retain=retain)

    async def wait(self, topic: str, predicate: Callable[[str], bool] | str,
                   timeout: float = WAIT_S) -> str:
        """Until ``<prefix>/<topic>`` says what ``predicate`` wants (or equals it)."""
        check = predicate if callable(predicate) else (lambda p: p == predicate)
        full = f"{self.prefix}/{topic}"
        try:
            async with asyncio.timeout(timeout):
                while True:
                    value = self.latest.get(full)
                    if value is not None and check(value):
                        return value
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(f"{full} did not get there within {timeout}s; it says "
                                 f"{self.latest.get(full)!r}") from None

    async def state(self, evse: int, predicate: Callable[[dict], bool],
                    timeout: float = WAIT_S) -> dict:
        """Until the JSON state of ``evse`` satisfies ``predicate``; returns it."""
        text = await self.wait(f"evse/{evse}/state", lambda p: bool(p) and predicate(
            json.loads(p)), timeout)
        return json.loads(text)


def mqtt_section(broker: Broker, **kw: Any) -> MqttConfig:
    kw.setdefault("reconnect", ReconnectConfig(min_backoff_s=0.05, max_backoff_s=0.2))
    return MqttConfig(host="127.0.0.1", port=broker.port, **kw)


@contextlib.asynccontextmanager
async def mqtt_agent(csms: Any, state: Path, broker: Broker, *, evses: int = 1,
                     start: bool = True, **mqtt: Any) -> AsyncIterator[Agent]:
    cfg = agent_config(csms.url, state, evses=evses)
    cfg.mqtt = mqtt_section(broker, **mqtt)
    cfg.validate()
    agent = Agent(cfg)
    if start:
        await agent.start()
    try:
        yield agent
    finally:
        await agent.stop()


# ---------------------------------------------------------------- without a broker


def test_without_an_mqtt_section_aiomqtt_is_never_imported(tmp_path):
    code = f"""
import json, sys
from agent.config import load_config_text
from agent.app import Agent
import agent.cli
doc = {{"station": {{"id": "WB1"}}, "ocpp": {{"url": "ws://127.0.0.1:9/ocpp"}},
       "storage": {{"path": {str(tmp_path / 's.db')!r}}},
       "control": {{"socket": {str(tmp_path / 'c.sock')!r}}}}}
agent = Agent(load_config_text(json.dumps(doc)), control=False)
assert agent.mqtt is None
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("aiomqtt", "paho")
                or m.startswith("agent.integrations"))
assert not loaded, loaded
agent.storage.close()
doc["mqtt"] = {{"host": "127.0.0.1"}}
agent = Agent(load_config_text(json.dumps(doc)), control=False)
assert "aiomqtt" in sys.modules and agent.mqtt.prefix == "cp-agent/WB1"
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("text, needle", [
    ("mqtt: {}", "mqtt.host: '' is not allowed; expected the broker's host name"),
    ("mqtt: {hots: broker}", "mqtt.hots: unknown key; allowed keys here: ca_file, host"),
    ("mqtt: {host: b, port: 0}", "mqtt.port: 0 is not allowed; expected a TCP port"),
    ("mqtt: {host: b, port: '1883x'}", "mqtt.port: '1883x' is not allowed; expected an integer"),
    ("mqtt: {host: b, password: s}", "mqtt.username: null is not allowed; expected a user"),
    ("mqtt: {host: b, ca_file: /nope.pem}", "mqtt.tls: false is not allowed; expected true"),
    ("mqtt: {host: b, tls: true, ca_file: /nope.pem}", "mqtt.ca_file: '/nope.pem'"),
    ("mqtt: {host: b, topic_prefix: 'home/#'}", "mqtt.topic_prefix: 'home/#' is not allowed"),
    ("mqtt: {host: b, topic_prefix: '/home'}", "mqtt.topic_prefix: '/home'"),
    ("mqtt: {host: b, publish_interval_s: 0}", "mqtt.publish_interval_s: 0.0 is not allowed"),
    ("mqtt: {host: b, limit_timeout_s: -1}", "mqtt.limit_timeout_s: -1.0 is not allowed"),
    ("mqtt: {host: b, reconnect: {min_backoff_s: 0}}", "mqtt.reconnect.min_backoff_s"),
    ("mqtt: {host: b, tls: yes please}", "mqtt.tls: 'yes please' is not allowed; expected "
                                         "true/false"),
    ("mqtt: [broker]", "mqtt: ['broker'] is not allowed; expected a mapping"),
])
def test_config_errors_name_the_key(text, needle):
    with pytest.raises(ConfigError) as exc:
        load_config_text(BASE + text)
    assert needle in str(exc.value)


def test_config_defaults_and_prefix():
    cfg = load_config_text(BASE.replace("CP1", "WB-7") + "mqtt: {host: broker.local}")
    m = cfg.mqtt
    assert (m.port, m.tls, m.publish_interval_s, m.limit_timeout_s) == (1883, False, 10, 60)
    assert m.prefix(cfg.station.id) == "cp-agent/WB-7"
    assert load_config_text(BASE + "mqtt: {host: b, topic_prefix: home/garage/wallbox}"
                            ).mqtt.prefix("X") == "home/garage/wallbox"
    assert load_config_text(BASE + "mqtt:").mqtt is None  # an empty section: no bridge


def test_config_relative_ca_file_is_relative_to_the_file(tmp_path):
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    p = tmp_path / "c.yaml"
    p.write_text(BASE + "mqtt: {host: b, tls: true, ca_file: ca.pem}\n")
    assert load_config(p).mqtt.ca_file == str(tmp_path / "ca.pem")


@pytest.mark.parametrize("payload, amps", [
    (b"16", 16.0), (b" 10.5\n", 10.5), (b"0", 0.0), (b"", None), (b"none", None),
    (b"None", None), (b"null", None), (b"1e2", 100.0),
])
def test_parse_limit_accepts(payload, amps):
    assert parse_limit(payload) == amps


@pytest.mark.parametrize("payload, needle", [
    (b"abc", "'abc' is not a number"), (b"-3", "'-3' is negative"),
    (b"nan", "not a finite number"), (b"inf", "not a finite number"),
    (b"\xff\xfe", "not UTF-8"), (b"16 A", "'16 A' is not a number"),
    (b"x" * 500, "'" + "x" * 40 + "...' is not a number"),
])
def test_parse_limit_refuses_with_a_reason(payload, needle):
    with pytest.raises(LimitError) as exc:
        parse_limit(payload)
    assert needle in str(exc.value)


# ---------------------------------------------------------------- against Mosquitto


@needs_broker
async def test_retained_state_and_a_charging_session(csms, short_dir, running_broker):
    async with mqtt_agent(csms, short_dir, running_broker) as agent:
        await online(agent, csms)
        await eventually(agent.mqtt.connected.is_set, "the bridge connected")
        # A subscriber that arrives later gets everything from the broker: it is retained.
        async with Subscriber(running_broker.port) as sub:
            await sub.wait("status", "online")
            await sub.wait("link", "connected")
            await sub.wait("link/ocpp_version", "1.6")
            idle = await sub.state(1, lambda s: s["status"] == "Available")
            assert idle["charging"] is False and idle["authorized"] is False
            assert idle["contactor"] == "open" and idle["pilot"] == "A"
            assert idle["limit_a"] == 32 and idle["limit_source"] == "evse"
            assert "token" not in idle
            await sub.wait("evse/1/charging", "false")
            await sub.wait("evse/1/energy_wh", "0")
            await sub.wait("evse/1/offered_a", "0")
            assert [r for t, _, r in sub.seen if t == f"{PREFIX}/status"][0] is True

            await charging(agent, csms, tag="04A2B3C4")
            busy = await sub.state(1, lambda s: s["charging"] and (s["power_w"] or 0) > 0)
            assert busy["status"] == "Charging" and busy["contactor"] == "closed"
            assert busy["pilot"] == "C" and busy["authorized"] and busy["transaction"]
            assert busy["offered_a"] == 32
            await sub.wait("evse/1/charging", "true")
            await sub.wait("evse/1/power_w", lambda p: float(p) > 0)
            await sub.wait("evse/1/offered_a", "32")
            await sub.wait("evse/1/energy_wh", lambda p: float(p) > 0)
            # The card UID is personal data: published nowhere.
            assert not [t for t, p, _ in sub.seen if "04A2B3C4" in p]

            agent.hal.unplug(1)
            await sub.state(1, lambda s: s["status"] == "Available" and not s["transaction"])
            await sub.wait("evse/1/charging", "false")


@needs_broker
async def test_limit_topic_caps_the_offer_and_refuses_bad_values(csms, short_dir,
                                                                  running_broker):
    async with mqtt_agent(csms, short_dir, running_broker, evses=2) as agent, \
            Subscriber(running_broker.port) as sub:
        await online(agent, csms)
        await sub.wait("status", "online")
        await charging(agent, csms)
        ev = agent.hal.evses[1].ev
        await sub.state(1, lambda s: s["charging"])

        await sub.publish("evse/1/set/limit_a", "10")
        s = await sub.state(1, lambda s: s["limit_source"] == "mqtt")
        assert s["offered_a"] == 10 and s["limit_a"] == 10 and s["mqtt_limit_a"] == 10
        assert ev.current_limit == 10
        await sub.wait("evse/1/offered_a", "10")
        assert (await sub.state(2, lambda s: True))["limit_source"] == "evse"  # only EVSE 1

        # Refused values: a retained error naming the problem, the limit in force unchanged.
        await sub.publish("evse/1/set/limit_a", "abc")
        error = await sub.wait("evse/1/set/limit_a/error", lambda p: "not a number" in p)
        assert "'abc'" in error
        await sub.publish("evse/1/set/limit_a", "-3")
        await sub.wait("evse/1/set/limit_a/error", lambda p: "'-3' is negative" in p)
        assert ev.current_limit == 10 and agent.station.evses[1].limits == {"mqtt": 10}
        await sub.publish("evse/7/set/limit_a", "10")
        await sub.wait("evse/7/set/limit_a/error", lambda p: "no EVSE '7'" in p)
        # The error is retained: a subscriber arriving now still sees why.
        async with Subscriber(running_broker.port) as late:
            await late.wait("evse/1/set/limit_a/error", lambda p: "negative" in p)

        # Clearing restores the maximum and the error goes.
        await sub.publish("evse/1/set/limit_a", "")
        s = await sub.state(1, lambda s: s["limit_source"] == "evse" and s["offered_a"] == 32)
        assert s["mqtt_limit_a"] is None and ev.current_limit == 32
        await sub.wait("evse/1/set/limit_a/error", "")
        await sub.publish("evse/1/set/limit_a", "12")
        await sub.state(1, lambda s: s["offered_a"] == 12)
        await sub.publish("evse/1/set/limit_a", "none")
        await sub.state(1, lambda s: s["offered_a"] == 32)

        # The station topic sets the same limit on every EVSE.
        await sub.publish("set/limit_a", "8")
        for n in (1, 2):
            await sub.state(n, lambda s: s["limit_a"] == 8 and s["limit_source"] == "mqtt")
        assert ev.current_limit == 8
        await sub.publish("set/limit_a", "x")
        await sub.wait("set/limit_a/error", lambda p: "'x' is not a number" in p)
        await sub.publish("set/limit_a", "")
        for n in (1, 2):
            await sub.state(n, lambda s: s["limit_source"] == "evse")
        assert ev.current_limit == 32


@needs_broker
async def test_mqtt_never_raises_the_offer_above_the_evse_or_the_csms(csms, short_dir,
                                                                      running_broker):
    """The core offers the lowest of all limit sources: MQTT can only lower the offer."""
    async with mqtt_agent(csms, short_dir, running_broker) as agent, \
            Subscriber(running_broker.port) as sub:
        await online(agent, csms)
        await sub.wait("status", "online")
        await charging(agent, csms)
        ev = agent.hal.evses[1].ev
        evse = agent.station.evses[1]
        await evse.set_limit("csms", 12)  # what a CSMS charging profile allows
        await sub.publish("evse/1/set/limit_a", "20")
        s = await sub.state(1, lambda s: s["mqtt_limit_a"] == 20)
        assert s["offered_a"] == 12 and s["limit_source"] == "csms" and ev.current_limit == 12
        await sub.publish("evse/1/set/limit_a", "9")
        s = await sub.state(1, lambda s: s["mqtt_limit_a"] == 9)
        assert s["offered_a"] == 9 and s["limit_source"] == "mqtt"
        await evse.set_limit("csms", None)
        await sub.publish("evse/1/set/limit_a", "100")  # above the EVSE maximum of 32 A
        s = await sub.state(1, lambda s: s["mqtt_limit_a"] == 100)
        assert s["offered_a"] == 32 and s["limit_source"] == "evse" and ev.current_limit == 32
        # Below the EVSE minimum (6 A) the EV is paused, not offered a current it cannot use.
        await sub.publish("evse/1/set/limit_a", "3")
        s = await sub.state(1, lambda s: s["mqtt_limit_a"] == 3 and not s["charging"])
        assert s["offered_a"] == 0 and s["charging_state"] == "SuspendedEVSE"
        assert s["status"] == "SuspendedEVSE" and s["contactor"] == "open"
        await sub.publish("evse/1/set/limit_a", "6")
        s = await sub.state(1, lambda s: s["charging"])
        assert s["offered_a"] == 6 and ev.current_limit == 6


@needs_broker
async def test_a_stale_limit_is_kept_and_flagged(csms, short_dir, running_broker, caplog):
    """An energy manager that goes silent may be protecting a fuse: its limit stays."""
    caplog.set_level("INFO", logger="cp_agent.mqtt")
    async with Subscriber(running_broker.port) as sub:
        # A limit published retained reaches the agent the moment its bridge subscribes.
        await sub.publish("evse/1/set/limit_a", "10", retain=True)
        async with mqtt_agent(csms, short_dir, running_broker, limit_timeout_s=1) as agent:
            await online(agent, csms)
            s = await sub.state(1, lambda s: s["limit_source"] == "mqtt")
            assert s["limit_a"] == 10 and s["mqtt_limit_stale"] is False
            s = await sub.state(1, lambda s: s["mqtt_limit_stale"])
            assert s["limit_a"] == 10 and agent.station.evses[1].limits == {"mqtt": 10}
            assert "not renewed" in caplog.text and "keeping it" in caplog.text
            await sub.publish("evse/1/set/limit_a", "10")
            await sub.state(1, lambda s: not s["mqtt_limit_stale"])
            await sub.publish("evse/1/set/limit_a", "", retain=True)  # tidy the broker
            await sub.state(1, lambda s: s["limit_source"] == "evse")


@needs_broker
async def test_broker_restart_reconnects_and_republishes(csms, short_dir, running_broker):
    broker = running_broker
    async with mqtt_agent(csms, short_dir, broker) as agent:
        await online(agent, csms)
        async with Subscriber(broker.port) as sub:
            await sub.state(1, lambda s: s["status"] == "Available")
        await broker.stop()
        await eventually(lambda: not agent.mqtt.connected.is_set(), "the bridge noticed")
        await charging(agent, csms)  # the agent goes on without the broker
        await broker.start()  # empty: no persistence
        await eventually(lambda: agent.mqtt.connects == 2, "the bridge reconnected",
                         timeout=WAIT_S)
        async with Subscriber(broker.port) as sub:
            await sub.wait("status", "online")
            await sub.wait("link", "connected")
            await sub.state(1, lambda s: s["charging"])
            # The subscriptions are back too.
            await sub.publish("evse/1/set/limit_a", "11")
            await sub.state(1, lambda s: s["offered_a"] == 11)


@needs_broker
async def test_broker_down_at_start_up_delays_nothing(csms, short_dir, broker):
    async with mqtt_agent(csms, short_dir, broker) as agent:
        await online(agent, csms)  # booted while no broker listens
        await charging(agent, csms)
        assert not agent.mqtt.connected.is_set() and agent.mqtt.last_error
        await broker.start()
        async with Subscriber(broker.port) as sub:
            await sub.wait("status", "online")
            await sub.state(1, lambda s: s["charging"])


@needs_broker
async def test_clean_stop_publishes_the_final_state_and_offline(csms, short_dir,
                                                                 running_broker):
    async with Subscriber(running_broker.port) as sub:
        async with mqtt_agent(csms, short_dir, running_broker) as agent:
            await online(agent, csms)
            await charging(agent, csms)
            await sub.state(1, lambda s: s["charging"])
        await sub.wait("status", "offline")
        s = await sub.state(1, lambda s: True)
        assert s["contactor"] == "open" and not s["charging"]


@needs_broker
async def test_last_will_offline_when_the_agent_dies(csms, short_dir, running_broker):
    doc = {
        "station": {"id": "CP1"},
        "ocpp": {"url": csms.url, "reconnect": {"min_backoff_s": 0.05, "max_backoff_s": 0.2}},
        "storage": {"path": str(short_dir / "cp1.sqlite3")},
        "control": {"socket": str(short_dir / "cp1.sock")},
        "hal": {"driver": "mock"},
        "mqtt": {"host": "127.0.0.1", "port": running_broker.port},
    }
    path = short_dir / "config.yaml"
    path.write_text(json.dumps(doc))
    async with Subscriber(running_broker.port) as sub:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "agent", "run", "--config", str(path), cwd=ROOT,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        try:
            await sub.wait("status", "online", timeout=30)
            await sub.state(1, lambda s: s["status"] == "Available")
        finally:
            proc.kill()  # SIGKILL: no clean disconnect, the broker speaks the will
            await proc.wait()
        await sub.wait("status", "offline", timeout=WAIT_S)
