"""The link (auth, negotiation, reconnect, outage) and the daemon as a real process."""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import websockets
from websockets.asyncio.server import serve

from agent.config import ReconnectConfig
from agent.link.connection import Link
from agent.testing.csms import TestCsms
from tests.conftest import agent_config, charging, online

ROOT = Path(__file__).resolve().parent.parent
CP_AGENT = [sys.executable, "-m", "agent"]


# ---------------------------------------------------------------- link


def test_backoff_is_jittered_exponential_and_capped():
    cfg = agent_config("ws://127.0.0.1:1/", Path("/tmp")).ocpp
    cfg.reconnect = ReconnectConfig(min_backoff_s=1, max_backoff_s=60)
    link = Link(cfg, "CP1", {}, clock=None, rng=random.Random(7))  # type: ignore[arg-type]
    for attempt in range(12):
        ceiling = min(60, 1 * 2 ** attempt)
        samples = [link.backoff(attempt) for _ in range(200)]
        assert all(1 <= s <= ceiling for s in samples)
        if ceiling > 2:
            assert max(samples) - min(samples) > (ceiling - 1) * 0.5, "jittered"
    assert max(link.backoff(30) for _ in range(100)) <= 60


async def test_basic_auth_profile_1(short_dir):
    server = TestCsms(passwords={"CP1": "correct horse battery", "CP2": "the real one"})
    url = await server.start()
    from agent.app import Agent

    good = Agent(agent_config(url, short_dir, password="correct horse battery", profile=1))
    bad = Agent(agent_config(url, short_dir, station_id="CP2", password="wrong", profile=1))
    try:
        await good.start()
        await asyncio.wait_for(good.adapters["1.6"].accepted.wait(), 5)
        await bad.start()
        await server.wait_for("BootNotification", station_id="CP1")
        await asyncio.wait_for(bad.link.failed.wait(), 5)
        assert "refused the credentials (HTTP 401)" in (bad.link.last_error or "")
        assert "CP2" not in server.stations
    finally:
        await good.stop()
        await bad.stop()
        await server.stop()


async def test_csms_agreeing_no_version_is_a_clear_error(short_dir):
    server = TestCsms(versions=("2.0.1",))
    url = await server.start()
    cfg = agent_config(url, short_dir)
    link = Link(cfg.ocpp, "CP1", {}, clock=None)  # type: ignore[arg-type]
    try:
        with pytest.raises(Exception) as exc:
            await link.connect_once()
        assert "1.6" in str(exc.value) or "ocpp1.6" in str(exc.value)
    finally:
        await server.stop()


async def test_server_that_picks_no_subprotocol_is_refused(short_dir):
    async def handler(ws):
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0) as srv:  # agrees no subprotocol at all
        port = srv.sockets[0].getsockname()[1]
        cfg = agent_config(f"ws://127.0.0.1:{port}/", short_dir)
        stub = type("Stub", (), {"version": "1.6", "subprotocol": "ocpp1.6", "handlers": {}})
        link = Link(cfg.ocpp, "CP1", {"1.6": stub()}, clock=None)  # type: ignore[arg-type]
        with pytest.raises(Exception, match="agreed none of the offered OCPP versions"):
            await link.connect_once()


async def test_reconnects_after_drop_without_a_new_boot(csms, make_agent):
    """OCPP-J 1.6 5.4: an accepted station resumes after a mere reconnect; it boots again only
    after a restart (tests/test_shared_behaviour.py covers both versions)."""
    agent = await make_agent()
    await online(agent, csms)
    await csms.kick("CP1")
    await csms.wait_for("StatusNotification", station_id="CP1", timeout=10,
                        predicate=lambda p: p["connectorId"] == 0, count=2)
    await asyncio.wait_for(agent.adapters["1.6"].accepted.wait(), 5)
    assert agent.link.connects == 2
    assert len(csms.messages("CP1", "BootNotification")) == 1


async def test_outage_messages_wait_in_outbox_and_arrive_in_order(csms, make_agent):
    agent = await make_agent(defaults={"MeterValueSampleInterval": 1})
    await online(agent, csms)
    start = await charging(agent, csms)
    await csms.pause()
    # Charge on offline: a meter value queues, then the session ends while still offline.
    agent.adapters["1.6"].outbox.queued.clear()
    await asyncio.wait_for(agent.adapters["1.6"].outbox.queued.wait(), 5)
    agent.hal.unplug(1)
    await asyncio.wait_for(agent.station.settled(), 5)
    queued = agent.storage.outbox_count()
    assert queued >= 2, "meter values and the stop are queued"
    await csms.resume()
    stop = await csms.wait_for("StopTransaction", station_id="CP1", timeout=15)
    await asyncio.wait_for(agent.adapters["1.6"].outbox.idle.wait(), 10)
    tx_id = next(iter(csms.transactions))
    assert stop["transactionId"] == tx_id and stop["reason"] == "EVDisconnected"
    assert stop["meterStop"] > start["meterStart"]
    order = [m.action for m in csms.log if m.direction == "cs->csms" and m.kind == "CALL"
             and m.action in ("StartTransaction", "MeterValues", "StopTransaction")]
    assert order[0] == "StartTransaction" and order[-1] == "StopTransaction"
    assert order.count("StartTransaction") == 1 and order.count("StopTransaction") == 1
    assert agent.storage.outbox_count() == 0


# ---------------------------------------------------------------- the daemon as a process


def _write_config(path: Path, url: str, state: Path) -> Path:
    cfg = path / "config.yaml"
    cfg.write_text(f"""
station: {{id: PROC1}}
ocpp: {{url: "{url}", versions: ["1.6"], reconnect: {{min_backoff_s: 0.1, max_backoff_s: 0.5}}}}
storage: {{path: "{state / 'state.sqlite3'}"}}
control: {{socket: "{state / 'ctl.sock'}"}}
hal: {{driver: mock, ev_max_current_a: 16}}
""")
    return cfg


def _ctl(sock: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CP_AGENT, "ctl", "--socket", str(sock), *args],
                          capture_output=True, text=True, timeout=30, cwd=ROOT)


async def test_daemon_ctl_sigterm_and_sd_notify(csms, short_dir):
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_path = short_dir / "notify"
    notify.bind(str(notify_path))
    notify.setblocking(False)
    cfg = _write_config(short_dir, csms.url, short_dir)
    env = dict(os.environ, NOTIFY_SOCKET=str(notify_path), PYTHONPATH=str(ROOT))
    proc = await asyncio.create_subprocess_exec(
        *CP_AGENT, "run", "--config", str(cfg), "--log-level", "warning", "--log-frames",
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    loop = asyncio.get_running_loop()
    try:
        ready = await asyncio.wait_for(loop.sock_recv(notify, 4096), 20)
        assert b"READY=1" in ready
        await csms.wait_for("BootNotification", station_id="PROC1", timeout=20)
        sock = short_dir / "ctl.sock"
        for args in (["plug", "1"], ["tap", "CARD42"]):
            res = await asyncio.to_thread(_ctl, sock, *args)
            assert res.returncode == 0, res.stderr
        await csms.wait_for("StartTransaction", station_id="PROC1", timeout=10)
        res = await asyncio.to_thread(_ctl, sock, "status", "--json")
        status = json.loads(res.stdout)
        assert status["link"] == "connected" and status["ocpp_version"] == "1.6"
        evse = status["evses"][0]
        assert evse["contactor"] == "closed" and evse["pilot"] == "C"
        assert evse["status"] == "Charging" and evse["current_limit_a"] >= 6
        bad = await asyncio.to_thread(_ctl, sock, "plug", "7")
        assert bad.returncode == 1 and "no EVSE 7" in bad.stderr
        frames = await asyncio.to_thread(_ctl, sock, "frames")
        assert frames.returncode == 0 and " -> CALL StartTransaction " in frames.stdout
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(proc.wait(), 20)
        assert rc == 0
        assert proc.stdout is not None
        logged = (await proc.stdout.read()).decode()
        # --log-frames: the message log goes to the log, whatever the level of the rest.
        assert "cp_agent.frames: " in logged and " -> CALL BootNotification " in logged
        assert "evse 1: contactor closed" not in logged  # INFO lines stay out at warning
        stop = await csms.wait_for("StopTransaction", station_id="PROC1", timeout=5)
        assert stop["reason"] == "Reboot"
        msgs = []
        while True:
            try:
                msgs.append(notify.recv(4096))
            except BlockingIOError:
                break
        assert any(b"STOPPING=1" in m for m in msgs)
        gone = await asyncio.to_thread(_ctl, sock, "status")
        assert gone.returncode == 3 and "not running" in gone.stderr
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        notify.close()


async def _read_until(proc: asyncio.subprocess.Process, needle: str, seen: list[str]) -> str:
    """Lines of ``proc``'s stdout, kept in ``seen``, up to the first containing ``needle``."""
    assert proc.stdout is not None
    while True:
        raw = await asyncio.wait_for(proc.stdout.readline(), 20)
        if not raw:
            raise AssertionError(f"{needle!r} never printed:\n" + "".join(seen))
        line = raw.decode()
        seen.append(line)
        if needle in line:
            return line


async def test_csms_command_serves_a_bench_session_and_stops_on_ctrl_c(short_dir):
    """`cp-agent csms`: a station runs a session against it with no other software."""
    from agent.app import Agent

    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = await asyncio.create_subprocess_exec(
        *CP_AGENT, "csms", "--port", "0", "--versions", "1.6", "--accept", "CARD1",
        cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    seen: list[str] = []
    agent = None
    try:
        banner = await _read_until(proc, "listening on", seen)
        url = re.search(r"listening on (ws://127\.0\.0\.1:\d+/)", banner).group(1)
        assert "accepts CARD1" in banner
        agent = Agent(agent_config(url, short_dir, station_id="BENCH1"))
        await agent.start()
        await asyncio.wait_for(agent.adapters["1.6"].accepted.wait(), 10)
        assert "BENCH1 connected ocpp1.6" in await _read_until(proc, "BENCH1 connected", seen)
        agent.hal.plug(1)
        agent.hal.tap("CARD1")
        line = await _read_until(proc, "-> CALL StartTransaction", seen)
        assert '"idTag":"CARD1"' in line
        agent.hal.tap("NOPE")  # not on the --accept list
        line = await _read_until(proc, "<- CALLRESULT Authorize", seen)
        assert '"status":"Invalid"' in line
        await agent.stop()  # the session ends: the CSMS hears the stop
        await _read_until(proc, "-> CALL StopTransaction", seen)
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        if agent is not None:
            await agent.stop()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    assert "stopped: 1 station(s)" in out.decode() and "0 violation(s)" in out.decode()
    assert "VIOLATION" not in "".join(seen) + out.decode()


def test_demo_runs_as_a_subprocess_and_exits_0():
    res = subprocess.run([*CP_AGENT, "demo"], capture_output=True, text=True, timeout=60,
                         cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "StartTransaction" in res.stdout and "StopTransaction" in res.stdout
    assert "contactor CLOSED" in res.stdout
    assert "energy delivered" in res.stdout
    assert "schema errors    0" in res.stdout
    # The status page is on for the demo, and its URL is among the first lines.
    assert re.search(r"status page on http://127\.0\.0\.1:\d+/",
                     "\n".join(res.stdout.splitlines()[:3])), res.stdout[:400]
    # The card is a real ISO 14443 UID (4 or 7 bytes; a strict CSMS refuses a 5-byte one).
    uid = re.search(r"RFID card (\S+) presented", res.stdout).group(1)
    assert re.fullmatch(r"[0-9A-F]{8}|[0-9A-F]{14}", uid), uid


def test_run_with_bad_config_exits_2_naming_the_key(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("ocpp: {versions: ['1.5']}\n")
    res = subprocess.run([*CP_AGENT, "run", "--config", str(cfg)], capture_output=True,
                         text=True, timeout=30, cwd=ROOT)
    assert res.returncode == 2
    assert "ocpp.versions[0]" in res.stderr


__all__ = ["websockets"]
