"""What start-up does not pay for (docs/performance.md, "Start-up and idle RSS against the floor").

Each of these was measured to cost start-up time or resident memory on every station; the tests
make sure the saving stays and that nothing behaves differently because of it.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agent.config import ConfigError, _safe_load, load_config_text
from agent.link import rpc

ROOT = Path(__file__).resolve().parent.parent
ENUMS = {"1.6": "ocpp.v16.enums", "2.0.1": "ocpp.v201.enums", "2.1": "ocpp.v21.enums"}


@pytest.mark.parametrize("version", list(ENUMS))
def test_actions_read_from_the_schemas_are_the_librarys_action_enum(version):
    """The RPC layer reads a version's actions from its schema files instead of importing
    ``ocpp.vXX.enums`` (whose package loads every message dataclass); the set must be the
    one the enum gives, or a known action would be answered NotImplemented."""
    enum = importlib.import_module(ENUMS[version]).Action
    assert rpc._call_actions(version) == {a.value for a in enum}
    assert not rpc._call_actions(version) & rpc._send_actions(version)


_PROBE = """
import asyncio, json, sys, tempfile
from agent.app import Agent
from agent.config import load_config_text
from agent.link import rpc

async def main(version):
    tmp = tempfile.mkdtemp(prefix="cpa-", dir="/tmp")
    cfg = load_config_text(json.dumps({
        "station": {"id": "CP1"},
        "ocpp": {"url": "ws://127.0.0.1:9/ocpp", "versions": [version],
                 "reconnect": {"min_backoff_s": 5}},
        "storage": {"path": tmp + "/s.db"}, "control": {"socket": tmp + "/c.sock"}}))
    agent = Agent(cfg)
    await agent.start()
    await agent.stop()
    rpc._call_actions(version)  # what the first CALL asks

for version in ("1.6", "2.0.1", "2.1"):
    asyncio.run(main(version))
print(json.dumps(sorted(m for m in ("ocpp.v16", "ocpp.v201", "ocpp.v21", "ocpp.charge_point",
                                    "tarfile") if m in sys.modules)))
"""


def test_an_agent_of_any_version_never_loads_the_librarys_message_classes():
    """ocpp.v16 / v201 / v21 (ChargePoint and a dataclass per message: 1.1 MB and 36 ms for
    1.6, 3.7 MB and 250 ms for 2.1) and tarfile (diagnostics archives only) stay unloaded."""
    res = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1]) == []


def test_the_fast_yaml_loader_reads_the_example_configuration_as_safe_load_does():
    text = (ROOT / "config.example.yaml").read_text()
    assert _safe_load(text) == yaml.safe_load(text)


@pytest.mark.parametrize("text, expected", [
    ("station:\n\tid: CP1\n", "found character '\\t' that cannot start any token"),
    ("station: *nope\n", "found undefined alias 'nope'"),
])
def test_a_yaml_error_reads_as_the_pure_python_parser_words_it(text, expected):
    """libyaml's messages omit the offending character or alias: a document it refuses is
    parsed again by the pure-Python parser, whose message is the one shown."""
    with pytest.raises(ConfigError) as err:
        load_config_text(text, "agent.yaml")
    assert expected in str(err.value)
    assert str(err.value).startswith("agent.yaml: line ")


_IDLE_16 = """
import asyncio, json, sys, tempfile
from agent.app import Agent
from agent.config import load_config_text

async def main():
    tmp = tempfile.mkdtemp(prefix="cpa-", dir="/tmp")
    cfg = load_config_text(json.dumps({
        "station": {"id": "CP1"},
        "ocpp": {"url": "ws://127.0.0.1:9/ocpp", "versions": ["1.6"],
                 "reconnect": {"min_backoff_s": 5}},
        "storage": {"path": tmp + "/s.db"}, "control": {"socket": tmp + "/c.sock"}}))
    agent = Agent(cfg)
    await agent.start()
    await asyncio.sleep(0)  # the tasks the start spawned take their first step
    status = agent.status()["firmware"]  # what ctl status / the status page read
    await agent.stop()
    return status

print(json.dumps(asyncio.run(main())["status"]))
print(json.dumps(sorted(m for m in sys.modules if m in DEFERRED)))
"""
# Loaded only by the feature that needs them (docs/performance.md, issue 18): an idle 1.6
# station on security profile 0 without ISO 15118 must not pay for them.
DEFERRED = ("agent.core.iso15118", "hal.iso15118", "agent.transfer.upload",
            "agent.transfer.download", "ftplib",
            # The firmware and diagnostics services, built on first use (Station.provide).
            "agent.core.firmware", "agent.core.diagnostics")


def test_an_idle_16_station_without_the_features_does_not_load_their_modules():
    """ISO 15118 (the core service and its dataclasses) and the file transfer clients of
    firmware updates and diagnostics uploads (with ftplib) are imported on first use."""
    status, loaded = _idle_station(_IDLE_16, DEFERRED)
    assert status == "Idle"
    assert loaded == []


_IDLE_201 = _IDLE_16.replace('["1.6"]', '["2.0.1"]')


def _idle_station(script: str, deferred: tuple[str, ...]) -> tuple[str, list[str]]:
    """Run an idle station's probe in a fresh interpreter: (its firmware status, the
    ``deferred`` modules it loaded anyway)."""
    code = f"DEFERRED = {deferred!r}\n" + script
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    status, loaded = res.stdout.strip().splitlines()[-2:]
    return json.loads(status), json.loads(loaded)


def test_an_idle_201_station_does_not_build_firmware_or_diagnostics():
    """2.0.1 (whose ISO 15118 block loads agent.core.iso15118 itself): the firmware and
    diagnostics services and their modules stay unbuilt, the status still says Idle."""
    deferred = ("agent.core.firmware", "agent.core.diagnostics", "agent.transfer.upload",
                "agent.transfer.download", "ftplib")
    status, loaded = _idle_station(_IDLE_201, deferred)
    assert status == "Idle"
    assert loaded == []


def test_the_names_the_lazy_paths_repeat_are_the_services_own():
    """What start-up reads without importing the services must stay what they write."""
    from agent import app
    from agent.core import diagnostics, firmware
    from agent.ocpp.v16 import firmware as v16_firmware

    assert app.DIAGNOSTICS_JOB == diagnostics.JOB_SETTING
    assert app.FIRMWARE_JOB == firmware.JOB_SETTING
    assert v16_firmware._PLAIN_STATUSES == {s.value for s in firmware.PLAIN_STATUSES}


async def test_the_idle_firmware_status_is_the_services_answer_without_a_job(tmp_path):
    """ctl status before anything built the firmware service reads as the service would."""
    from agent.app import Agent

    cfg = load_config_text(json.dumps({
        "station": {"id": "CP1"}, "ocpp": {"url": "ws://127.0.0.1:9/ocpp", "versions": ["1.6"]},
        "storage": {"path": str(tmp_path / "s.db")}}))
    agent = Agent(cfg, control=False)
    try:
        before = agent._firmware_status()
        assert agent.station.built("firmware") is None
        assert before == agent.firmware.status()  # reading the property builds it
        assert agent.station.built("firmware") is agent.firmware
    finally:
        agent.storage.close()


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_a_stored_job_builds_its_service_at_start_up(tmp_path, version):
    """An upload or an update a restart cut is carried on although nothing asked for the
    service in this run: the one-query start-up check builds it, and its owner (the block of
    the version in charge) is registered before it resumes."""
    from agent.app import Agent
    from agent.core.diagnostics import JOB_SETTING as DIAG_JOB
    from agent.core.firmware import JOB_SETTING as FW_JOB

    cfg = load_config_text(json.dumps({
        "station": {"id": "CP1"},
        "ocpp": {"url": "ws://127.0.0.1:9/ocpp", "versions": [version],
                 "reconnect": {"min_backoff_s": 5}},
        "storage": {"path": str(tmp_path / "s.db")}}))
    agent = Agent(cfg, control=False)
    agent.storage.close()
    # Nothing stored: neither service is built by a start.
    agent = Agent(cfg, control=False)
    await agent.start()
    await agent.stop()
    assert agent.station.built("firmware") is None
    assert agent.station.built("diagnostics") is None
    # A finished update and an unreadable upload record, as a previous run left them.
    agent = Agent(cfg, control=False)
    agent.storage.set_setting(FW_JOB, json.dumps({"seq": 1, "location": "http://x/fw.bin",
                                                  "retrieve_at": "2026-01-01T00:00:00Z",
                                                  "status": "Installed", "phase": "done"}))
    agent.storage.set_setting(DIAG_JOB, "{not json")
    agent.storage.close()
    agent = Agent(cfg, control=False)
    await agent.start()
    try:
        assert agent.station.built("firmware") is not None
        assert agent.station.built("diagnostics") is not None
        assert agent.storage.get_setting(DIAG_JOB) is None  # handled: forgotten, logged
        owners = agent.station.built("diagnostics").owners
        assert any(o.startswith(version) for o in owners), owners
    finally:
        await agent.stop()
