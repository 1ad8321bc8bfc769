"""`cp-agent csms --on-boot FILE` and the README's worked example of smart charging on the bench.

The example file is the one the README tells a bench user to replay
(docs/examples/smart-charging.yaml): the command sends its CALLs after the boot (tested as a
subprocess against a real agent), and what ``cp-agent ctl status`` shows at each of its
periods is checked on the fake clock, so the README cannot drift from what the agent does.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from agent.app import Agent
from agent.clock import FakeClock
from agent.control import render_status
from agent.testing.csms.command import load_calls
from tests.conftest import agent_config, eventually
from tests.test_timing import online, rig

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "docs" / "examples" / "smart-charging.yaml"
CP_AGENT = [sys.executable, "-m", "agent"]
VERSIONS = ["1.6", "2.0.1"]


async def _line(proc: asyncio.subprocess.Process, needle: str, seen: list[str]) -> str:
    assert proc.stdout is not None
    while True:
        raw = await asyncio.wait_for(proc.stdout.readline(), 20)
        if not raw:
            raise AssertionError(f"{needle!r} never printed:\n" + "".join(seen))
        seen.append(raw.decode())
        if needle in seen[-1]:
            return seen[-1]


@pytest.mark.parametrize("version", VERSIONS)
async def test_on_boot_sends_the_example_once_the_boot_is_accepted(version, short_dir):
    proc = await asyncio.create_subprocess_exec(
        *CP_AGENT, "csms", "--port", "0", "--versions", version, "--on-boot", str(EXAMPLE),
        cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    seen: list[str] = []
    agent = None
    try:
        banner = await _line(proc, "listening on", seen)
        url = re.search(r"listening on (ws://127\.0\.0\.1:\d+/)", banner).group(1)
        assert "sends: SetChargingProfile, GetCompositeSchedule" in await _line(
            proc, "after an accepted boot", seen)
        agent = Agent(agent_config(url, short_dir, station_id="BENCH1", versions=(version,)))
        await agent.start()
        boot = await _line(proc, "<- CALLRESULT BootNotification", seen)
        assert '"status":"Accepted"' in boot
        await _line(proc, "BENCH1 on-boot: 2 call(s) done", seen)
        frames = "".join(seen)
        order = [m.group(1) for m in re.finditer(r"BENCH1 (?:->|<-) \w+ (\w+)", frames)]
        assert order.index("BootNotification") < order.index("SetChargingProfile")
        assert re.search(r'-> CALLRESULT SetChargingProfile \{"status":"Accepted"', frames)
        assert re.search(r'-> CALLRESULT GetCompositeSchedule \{"status":"Accepted"', frames)
        assert agent.station.charging_profiles.get(1) is not None
        await eventually(lambda: agent.station.evses[1].limit_source == "csms",
                         "the profile's 16 A to bind")
        assert agent.station.evses[1].limit_a == 16
        await agent.stop()
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        if agent is not None:
            await agent.stop()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    assert "0 violation(s)" in out.decode() and "VIOLATION" not in "".join(seen)


@pytest.mark.parametrize("content, needle", [
    ("[{action: SetChargingProfile, payload: {connectorId: 1}}]",
     "[0] SetChargingProfile: not a valid OCPP 1.6 request"),
    ('{"1.5": []}', "version '1.5' is unknown"),
    ("[{action: GetCompositeSchedule, payload: {connectorId: 1, duration: 60}, "
     "delay_s: -1}]", "delay_s -1"),
    ("[{action: Reset, payload: {type: Hard}, when: later}]", "unknown key 'when'"),
    ("just text", "expected a list of calls"),
])
def test_on_boot_file_errors_name_the_entry(tmp_path, content, needle):
    path = tmp_path / "calls.yaml"
    path.write_text(content)
    with pytest.raises(ValueError, match=re.escape(needle)):
        load_calls(path, ["1.6"])


def _evse1(agent: Agent) -> str:
    """`ctl status`'s lines of EVSE 1 (what the README shows)."""
    text = render_status(agent.status())
    return text[text.index("EVSE 1:"):]


@pytest.mark.parametrize("version", VERSIONS)
async def test_the_worked_example_period_by_period(version, short_dir):
    """The README's walk through the example: the limit and the offer at every period."""
    async with rig(version, short_dir) as (csms, make):
        agent = await make()
        # The CSMS's time moves with the station's fake time: a Heartbeat answered in real
        # time would otherwise set the station clock back in the middle of the schedule.
        csms.now = agent.clock.now
        await online(agent)
        clock: FakeClock = agent.clock  # type: ignore[assignment]
        link = await csms.wait_station("CP1")
        set_profile, get_composite = load_calls(EXAMPLE, [version])[version]
        assert (await link.call(set_profile.action, set_profile.payload))["status"] == \
            "Accepted"
        answer = await link.call(get_composite.action, get_composite.payload)
        schedule = answer["chargingSchedule"] if version == "1.6" else answer["schedule"]
        periods = [(p["startPeriod"], p["limit"]) for p in schedule["chargingSchedulePeriod"]]
        # No transaction yet: a Relative profile counts from now.
        assert periods == [(0, 16), (120, 10), (240, 4), (360, 32)]

        agent.hal.plug(1)
        agent.hal.tap("04A2B3C4")
        await eventually(lambda: agent.station.evses[1].tx is not None, "the transaction")
        await agent.station.quiet()
        def head(detail: str) -> str:  # 1.6 says the detail, 2.0.1 Occupied (detail)
            return detail if version == "1.6" else f"Occupied ({detail})"

        assert _evse1(agent).startswith(f"EVSE 1: {head('Charging')}\n"
                                        "  pilot C, contactor closed\n"
                                        "  offered 16 A, limit 16 A (csms)\n")
        steps = [(120, "Charging", "pilot C, contactor closed", "offered 10 A, limit 10 A (csms)"),
                 (240, "SuspendedEVSE", "pilot B, contactor open",
                  "offered 0 A, limit 4 A (csms)"),
                 (360, "Charging", "pilot C, contactor closed",
                  "offered 32 A, limit 32 A (evse)")]
        start = agent.station.charging_profiles.tx_start(agent.station.evses[1])
        for at, detail, pilot_line, offer_line in steps:
            await clock.advance((start - clock.now()).total_seconds() + at + 0.01)
            await eventually(lambda line=offer_line: line in _evse1(agent), offer_line)
            await agent.station.quiet()
            assert _evse1(agent).startswith(
                f"EVSE 1: {head(detail)}\n  {pilot_line}\n  {offer_line}\n"), _evse1(agent)
