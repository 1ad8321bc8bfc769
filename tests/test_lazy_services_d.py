"""What an idle station no longer loads, fifth pass (docs/performance.md, issue 18): the
stdlib's ``logging.handlers`` (with ``pickle``) for the rotating log files; ``zoneinfo`` (with
``sysconfig``) and the tariff engine for 2.1 tariffs; on 2.0.1 / 2.1 the ISO 15118 service,
the firmware and diagnostics services and the upload client, which the 2.x blocks imported
at their top; and the smart-charging engine (agent/core/smart_charging_engine.py: validation,
composite, limit at an instant) on every version while no charging profile is stored.

Each probe runs a fresh interpreter through the start-up ``cp-agent run`` does (agent.log and
security.log installed in the state directory), then checks what the first use still does.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from agent.logfiles import RotatingFile, rotated_files, rotating_handler
from tests.conftest import eventually, online201, version_rig
from tests.test_smart_charging_versions import Kit, Kit16, Kit21, Kit201, station_max
from tests.test_startup_imports import _IDLE_16, ROOT, _idle_station
from tests.test_timing import online as timing_online
from tests.test_timing import rig

VERSIONS = ("1.6", "2.0.1", "2.1")
EVERY_VERSION = ("logging.handlers", "pickle", "zoneinfo", "sysconfig",
                 "agent.core.smart_charging_engine")
ON_2X = ("agent.core.iso15118", "agent.core.firmware", "agent.core.diagnostics",
         "agent.transfer.upload", "ftplib")
DEFERRED = {"1.6": EVERY_VERSION, "2.0.1": EVERY_VERSION + ON_2X,
            "2.1": EVERY_VERSION + ON_2X + ("agent.core.tariffs", "agent.core.cost")}

# The probe of tests/test_startup_imports.py with what cmd_run adds: the agent's own log file,
# and a security log on disk (SecurityLog.of_agent writes one under the storage directory).
_LOGGED = _IDLE_16.replace(
    "    agent = Agent(cfg)\n",
    "    from agent.logfiles import install_agent_log\n"
    "    install_agent_log(tmp, max_kb=16, count=2)\n"
    "    import logging; logging.getLogger('cp_agent').warning('probe line')\n"
    "    agent = Agent(cfg)\n")


@pytest.mark.parametrize("version", VERSIONS)
def test_an_idle_station_with_its_log_files_does_not_load_these_modules(version):
    script = _LOGGED.replace('["1.6"]', f'["{version}"]')
    assert "install_agent_log" in script and f'["{version}"]' in script
    status, loaded = _idle_station(script, DEFERRED[version])
    assert status == "Idle"
    assert loaded == []


# ====================================================================== the log files


def _record(msg: str) -> logging.LogRecord:
    return logging.LogRecord("cp_agent", logging.WARNING, __file__, 1, msg, None, None)


def test_the_log_rolls_over_before_a_line_would_pass_the_bound(tmp_path: Path):
    path = tmp_path / "logs" / "agent.log"
    handler = rotating_handler(path, max_kb=16, count=3)
    try:
        for n in range(400):
            handler.emit(_record(f"line {n:04d} " + "x" * 100))
    finally:
        handler.close()
    files = rotated_files(path)
    assert [f.name for f in files] == ["agent.log.2", "agent.log.1", "agent.log"]
    assert all(f.stat().st_size < 16 * 1024 for f in files)
    lines = [line for f in files for line in f.read_text().splitlines()]
    # Oldest first across the files, none lost between two of them, the newest last.
    numbers = [int(line.split("line ")[1][:4]) for line in lines]
    assert numbers == list(range(numbers[0], 400))
    assert numbers[0] > 0  # the oldest rolled out: bounded


def test_one_file_only_stays_bounded_too(tmp_path: Path):
    """``file_count: 1`` (no rolled copy): the stdlib's handler appended for ever once the
    bound was reached; the file is emptied and written again instead."""
    path = tmp_path / "agent.log"
    handler = RotatingFile(path, 4096, 0)
    try:
        for n in range(200):
            handler.emit(_record(f"line {n:04d} " + "y" * 60))
    finally:
        handler.close()
    assert rotated_files(path) == [path]
    assert path.stat().st_size < 4096
    assert "line 0199" in path.read_text()


def test_a_log_that_is_not_a_regular_file_is_never_rolled(tmp_path: Path):
    handler = RotatingFile(Path("/dev/null"), 64, 2)
    try:
        for _ in range(10):
            handler.emit(_record("z" * 100))
    finally:
        handler.close()
    assert not Path("/dev/null.1").exists()


# ====================================================================== first use on 2.x


def test_the_values_the_2x_blocks_repeat_are_the_services_own():
    from agent.core import diagnostics, firmware, iso15118
    from agent.ocpp.v21 import diagnostics as v21_diagnostics
    from agent.ocpp.v21 import firmware as v21_firmware
    from agent.ocpp.v201 import iso15118 as v201_iso15118

    fw = firmware.FwStatus
    assert v21_firmware.EXPLAINED == {fw.DOWNLOAD_FAILED, fw.DOWNLOAD_PAUSED,
                                      fw.INSTALLATION_FAILED, fw.INSTALL_VERIFICATION_FAILED,
                                      fw.INVALID_SIGNATURE}
    js = diagnostics.JobState
    assert v21_diagnostics.FAILED == {s.value for s in (
        js.FAILED, js.PERMISSION_DENIED, js.NOT_SUPPORTED, js.BAD_MESSAGE)}
    assert v201_iso15118.MAX_SCHEDULE_ENTRIES == iso15118.MAX_SCHEDULE_ENTRIES


@pytest.mark.parametrize("zone, offset", [("Europe/Paris", None), ("Nowhere/City", 0)])
async def test_a_21_tariff_time_zone_is_read_on_first_use(short_dir, zone, offset):
    """ClockCtrlr.TimeZone names the zone tariffs' times of day are in (zoneinfo, imported by
    the first tariff that asks); an unknown zone falls back to UTC."""
    from agent.ocpp.v21.local_cost import LocalCost21

    async with version_rig("2.1", short_dir) as (csms, make):
        agent = await make()
        link = await online201(agent, csms)
        res = await link.call("SetVariables", {"setVariableData": [{
            "component": {"name": "ClockCtrlr"}, "variable": {"name": "TimeZone"},
            "attributeValue": zone}]})
        assert res["setVariableResult"][0]["attributeStatus"] == "Accepted"
        tz = agent.adapter.block(LocalCost21)._tz()
        if offset is None:
            assert str(tz) == zone
        else:
            assert tz.utcoffset(None).total_seconds() == offset


# ====================================================================== the smart-charging engine

_STORED = """
import asyncio, json, sys, tempfile
from datetime import UTC, datetime
from agent.app import Agent
from agent.config import load_config_text

STATE = sys.argv[1]
cfg = load_config_text(json.dumps({
    "station": {"id": "CP1"},
    "ocpp": {"url": "ws://127.0.0.1:9/ocpp", "versions": [sys.argv[2]],
             "reconnect": {"min_backoff_s": 5}},
    "storage": {"path": STATE + "/s.db"}, "control": {"socket": STATE + "/c.sock"}}))

async def main():
    agent = Agent(cfg)
    built = "agent.core.smart_charging_engine" in sys.modules  # construction, before start
    if sys.argv[3] == "install":
        from agent.core.smart_charging import (
            ChargingProfile, ChargingSchedule, ChargingSchedulePeriod)
        agent.station.charging_profiles.install(ChargingProfile(
            id=7, stack_level=0, purpose="StationMax", kind="Absolute", evse_id=0,
            schedules=[ChargingSchedule("A", [ChargingSchedulePeriod(0, 10)],
                                        start=datetime(2020, 1, 1, tzinfo=UTC))]))
    await agent.start()
    agent.station.charging_profiles.wake()
    await agent.station.charging_profiles.evaluated()
    limit = agent.station.evses[1].limits.get("csms")
    await agent.stop()
    print(json.dumps([built, limit]))

asyncio.run(main())
"""


@pytest.mark.parametrize("version", VERSIONS)
def test_a_stored_profile_loads_the_engine_when_the_station_is_built(tmp_path, version):
    """No profile: the engine stays unloaded and the scheduler sets no limit, as before.  A
    profile in the state file: the engine is imported while the station is constructed,
    before anything starts, and the profile's limit is applied."""

    def run(step: str) -> list:
        res = subprocess.run([sys.executable, "-c", _STORED, str(tmp_path), version, step],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0, res.stderr
        return json.loads(res.stdout.strip().splitlines()[-1])

    assert run("nothing") == [False, None]
    assert run("install") == [False, 10.0]  # installing it imported the engine
    assert run("restart") == [True, 10.0]


@pytest.fixture(params=[Kit16(), Kit201(), Kit21()], ids=list(VERSIONS))
def kit(request: pytest.FixtureRequest) -> Kit:
    return request.param


async def test_a_restart_with_a_stored_profile_closes_at_its_limit(kit, short_dir, monkeypatch):
    """The contactor first closes after the restart with the stored profile's limit already
    on the pilot (10 A, not the EV's 16 A), on every version."""
    from hal.mock import MockContactor

    closes: list[float] = []
    original = MockContactor.set

    async def recording(self, closed: bool) -> None:
        if closed:
            closes.append(self._sim.offered)
        await original(self, closed)

    async with rig(kit.version, short_dir) as (csms, make):
        agent = await make()
        csms.now = agent.clock.now
        await timing_online(agent)
        await station_max(kit, csms, agent, [(0, 10)])
        await agent.stop()
        monkeypatch.setattr(MockContactor, "set", recording)
        again = await make()
        csms.now = again.clock.now
        await timing_online(again)
        await kit.charging(again, csms)
        await eventually(lambda: bool(closes), "the contactor closed")
        assert closes[0] == 10
        assert again.hal.evses[1].ev.current_limit == 10


# ====================================================================== jsonschema


# A station connected to the bench CSMS (its own process): boot, status, a triggered
# Heartbeat; then a CALL with a wrong type, which the fast check is not sure of.
_CONNECTED = """
import asyncio, json, sys, tempfile
from pathlib import Path
from agent.app import Agent
from agent.config import load_config_text
from bench._common import CsmsProcess, station_config

async def main(version):
    csms = CsmsProcess()
    url = await csms.start()
    tmp = Path(tempfile.mkdtemp(prefix="cpa-", dir="/tmp"))
    doc = station_config(url, tmp, "CP1")
    doc["ocpp"]["versions"] = [version]
    agent = Agent(load_config_text(json.dumps(doc)), control=False)
    try:
        await agent.start()
        await asyncio.wait_for(agent.adapters[version].accepted.wait(), 30)
        _, trigger = await csms.call("CP1", "TriggerMessage", {"requestedMessage": "Heartbeat"})
        before = "jsonschema" in sys.modules
        reset = {"type": 7}  # a number where the schema wants a string
        _, answer = await csms.call("CP1", "Reset", reset)  # a CALLERROR: {"errorCode": ...}
        return [trigger["status"], before, "jsonschema" in sys.modules, answer.get("errorCode")]
    finally:
        await agent.stop()
        await csms.stop()

print(json.dumps(asyncio.run(main(sys.argv[1]))))
"""


@pytest.mark.parametrize("version", VERSIONS)
def test_a_connected_station_loads_jsonschema_only_for_a_doubtful_payload(version):
    """Frames the fast check is sure of (the boot exchange, a status, a triggered Heartbeat)
    need no jsonschema (agent/link/rpc.py: ~3 MB with referencing, rpds and attrs); a CALL
    with a wrong type loads it and is answered with jsonschema's verdict, as before."""
    res = subprocess.run([sys.executable, "-c", _CONNECTED, version], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    status, before, after, refused = json.loads(res.stdout.strip().splitlines()[-1])
    assert status == "Accepted"
    assert before is False
    assert after is True
    assert refused == "TypeConstraintViolation"  # jsonschema's "type" keyword, as before
