"""Power cuts and broken state files, with the agent as a real process.

``cp-agent run`` runs as a subprocess (mock HAL inside it, driven through its control socket)
against the in-process strict test CSMS.  The power-cut test SIGKILLs it at many points (in
the middle of charging, while the CSMS is processing a transaction message whose answer the
agent will never read, right after a plug/tap/unplug, during an outage), restarts it on the
same state file each time, and at the end checks the CSMS's record: every session accounted
for exactly once, each with a plausible meterStop, and the state file passes SQLite's
integrity check.

The rig (``Daemon``, ``Campaign``) is tests/soak/power_cuts.py, which runs the same campaign at
scale on every version (``python -m tests.soak.power_cuts --cuts 1000``); here it runs 20 kills
on 1.6.  The kill points are drawn from a seeded RNG (``CP_POWER_CUT_SEED`` overrides the seed)
so a failure can be replayed.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess

import pytest

from tests.soak.power_cuts import CP_AGENT, ROOT, STATION, Campaign, Daemon
from tests.soak.power_cuts import config as _config

KILLS = 20


async def test_sigkill_at_random_points_every_session_accounted_once(short_dir):
    seed = int(os.environ.get("CP_POWER_CUT_SEED", "16061606"))
    campaign = Campaign("1.6", short_dir, KILLS, seed)
    out = await campaign.run(cli_check=True)
    print(f"\npower-cut test: seed {seed}, {out.cuts} kills {dict(out.kinds)}, "
          f"{out.sessions_tapped} sessions tapped ({out.sessions_journalled} seen journalled), "
          f"{out.transactions} transactions at the CSMS ({out.power_losses} PowerLoss), "
          f"{out.resends} identical resends after a kill, meterStop lag behind the last "
          f"reading seen before a kill: max {out.worst_lag_wh:.1f} Wh")
    assert out.problems == []
    assert out.lost == 0 and out.duplicated == 0
    assert out.integrity == "ok"
    assert out.transactions >= KILLS // 2, "the scenario must really exercise sessions"
    assert out.power_losses >= KILLS // 4


# ====================================================================== damaged / locked state


async def test_damaged_database_runs_degraded_reports_it_and_recovers_once_repaired(
        csms, short_dir):
    state = short_dir / "state.sqlite3"
    state.write_bytes(b"this is not an SQLite database " * 200)
    d = Daemon(short_dir, _config(short_dir, csms.url), env={"CP_AGENT_STORAGE_RETRY_S": "0.3"})
    try:
        await d.start()
        degraded = await d.wait_notify("DEGRADED")
        assert "damaged" in degraded and str(state) in degraded
        faulted = await csms.wait_for("StatusNotification", station_id=STATION, timeout=10,
                                      predicate=lambda p: p["connectorId"] == 1
                                      and p["status"] == "Faulted")
        assert faulted["errorCode"] == "InternalError"
        assert faulted["info"] == "state database unusable (damaged)"
        await csms.wait_for("StatusNotification", station_id=STATION, timeout=10,
                            predicate=lambda p: p["connectorId"] == 0
                            and p["errorCode"] == "InternalError")
        await d.ctl("plug", evse=1)
        await d.ctl("tap", token="NOPE", evse=1)
        link = csms.stations[STATION]
        res = await link.call("RemoteStartTransaction", {"idTag": "NOPE", "connectorId": 1})
        assert res["status"] == "Rejected"
        status = await d.ctl("status")
        assert status["evses"][0]["contactor"] == "open"
        assert status["evses"][0]["status"] == "Faulted"
        assert csms.messages(STATION, "StartTransaction") == []
        assert "CRITICAL" in (short_dir / "run1.log").read_text()
        # The operator moves the damaged file aside: the agent restarts itself, healthy.
        shutil.move(state, short_dir / "state.sqlite3.damaged")
        await d.wait_notify("READY=1")
        await csms.wait_for("BootNotification", station_id=STATION, count=2, timeout=15)
        await csms.wait_for("StatusNotification", station_id=STATION, timeout=10,
                            predicate=lambda p: p["connectorId"] == 1
                            and p["status"] in ("Available", "Preparing"))
        await d.ctl("unplug", evse=1)
        await d.ctl("plug", evse=1)
        await d.ctl("tap", token="AFTER", evse=1)
        await csms.wait_for("StartTransaction", station_id=STATION, timeout=10)
        assert d.proc is not None
        d.proc.send_signal(signal.SIGTERM)
        assert await d.wait_exit() == 0
    except BaseException:
        print(d.logs())
        raise
    finally:
        await d.close()


async def test_state_file_locked_by_another_agent_exits_3_naming_the_holder(csms, short_dir):
    config = _config(short_dir, csms.url)
    d = Daemon(short_dir, config)
    try:
        await d.start()
        res = await asyncio.to_thread(
            subprocess.run, [*CP_AGENT, "run", "--config", str(config)], capture_output=True,
            text=True, timeout=30, cwd=ROOT)
        assert res.returncode == 3
        assert "locked by another process" in res.stderr
        assert f"pid {d.proc.pid}" in res.stderr  # type: ignore[union-attr]
        assert (await d.ctl("status"))["link"] in ("connected", "connecting", "disconnected")
    finally:
        await d.close()


pytestmark = pytest.mark.asyncio
