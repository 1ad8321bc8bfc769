"""``cp-agent ctl status``: a bidirectional EVSE's reactive power and power factor next to its
V2X lines (issue 17), from the meter's reading as agent.status() hands it over."""

from __future__ import annotations

from pathlib import Path

from agent.control import render_status
from tests.test_timing import rig
from tests.test_v21_v2x import V2X_HAL, sample

V2X_ENTRY = {
    "evse": 1, "pilot": "C", "contactor": "closed", "status": "Charging",
    "connector_status": "Occupied", "transaction_id": "tx-1", "local_transaction_id": "tx-1",
    "token": "TAG1", "energy_wh": 10.0, "meter_wh": 10.0, "power_w": -6000.0,
    "current_limit_a": 16.0, "max_current_a": 16.0, "limit_source": "evse", "operative": True,
    "faults": [], "export_wh": 500.0,
    "v2x": {"bidirectional": True, "modes": ["AC_BPT"], "setpoint_requested_w": -6000,
            "setpoint_w": -6000, "max_charge_w": 11000, "max_discharge_w": 11000},
}


def test_q_and_pf_follow_the_v2x_line() -> None:
    status = {"station": "CP1", "link": "connected", "evses": [
        {**V2X_ENTRY, "reactive_var": -3000.0, "power_factor": 0.8944}]}
    lines = render_status(status).splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("  setpoint -6000 W"))
    assert lines[at + 1] == "  reactive Q -3000 var (+ absorbed, - injected), PF 0.894"
    assert lines[at + 2].startswith("  discharge: possible")
    # A meter without reactive power: no such line; a PF alone is shown with Q unknown.
    assert "reactive Q" not in render_status({"evses": [{**V2X_ENTRY, "reactive_var": None,
                                                        "power_factor": None}]})
    assert "  reactive Q - (+ absorbed, - injected), PF 1.000" in render_status(
        {"evses": [{**V2X_ENTRY, "power_factor": 1.0}]})


async def test_agent_status_carries_the_stage_meters_reactive_power(short_dir: Path) -> None:
    async with rig("2.1", short_dir) as (_, make):
        agent = await make(extra=V2X_HAL)
        await sample(agent)
        entry = agent.status()["evses"][0]
        assert entry["v2x"] is not None
        assert entry["reactive_var"] == 0  # the mock stage's meter: nothing flows, no vars
        assert "  reactive Q +0 var" in render_status(agent.status())
