"""ISO 15118-20 bidirectional power driven by the agent (issues 17 and 19).

The V2X setpoint the core gives the power stage (agent/core/v2x_modes.py: a CentralSetpoint
period, held to the EV's, the stage's and the discharge limits) is what the SECC tells a -20
EV in every ACChargeLoopRes (EVSETargetActivePower, negative: discharge); the EV's own
limits from its ChargeParameterDiscovery bound that setpoint in the core; a scheduled BPT EV
gets a DischargingSchedule (negative) beside its charging schedule.

- The core's side over the real channel to a fake SECC (no JVM, on 2.1 with the mock's
  bidirectional stage): the EV's -20 discharge limit wins over the mock's, the target is
  pushed to the SECC, an EV that chose plain AC is never discharged.
- The sidecar's controller with the package's classes in the sidecar venv (no JVM): the
  charge-loop answers of each control mode, the discharging schedule, the EV's power sent up.
- One whole session end to end (the package's -20 EVCC in Dynamic control, both JVMs): the
  CSMS allows AC_BPT and sets a CentralSetpoint of -4000 W; the EV is told -4000 W, reports
  -4000 W, the meter's export register grows and TransactionEvents carry
  Power.Active.Export.

On the mock HAL the meter follows the setpoint the core gives the mock's bidirectional stage
(hal/mock_v2x.py), which is also what the -20 EV is told: the EV's reported power is checked
against it, it does not drive the simulated meter.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from hal.iso15118.hlc_config import default_python
from tests.conftest import eventually, online201, version_rig
from tests.hal.test_iso15118_pnc import SESSION_S, needs_sidecar
from tests.test_iso15118_k17 import FakeSecc

SIDECAR_PYTHON = default_python()
HERE = Path(__file__).resolve().parents[2] / "hal" / "iso15118"
needs_venv = pytest.mark.skipif(
    not (Path(SIDECAR_PYTHON).parents[1] / ".cp-agent-installed").exists(),
    reason=f"the ISO 15118 sidecar venv ({SIDECAR_PYTHON}) is missing: "
           "bash scripts/iso15118_venv.sh")
ALLOW = ["AC_BPT", "AC_three_phase"]


def setpoint_profile(tx_id: str, watts: float, pid: int = 5) -> dict:
    return {"id": pid, "stackLevel": 1, "chargingProfilePurpose": "TxProfile",
            "chargingProfileKind": "Relative", "transactionId": tx_id,
            "chargingSchedule": [{"id": pid, "chargingRateUnit": "W",
                                  "chargingSchedulePeriod": [{
                                      "startPeriod": 0, "operationMode": "CentralSetpoint",
                                      "setpoint": watts}]}]}


def stage(agent: Any) -> float | None:
    return agent.hal.evses[1].ev.power_setpoint


def pushed(secc: FakeSecc, key: str) -> Any:
    """The last value of ``key`` the agent pushed in evse_status."""
    values = [p["status"][key] for n, p in secc.received
              if n == "evse_status" and key in p["status"]]
    return values[-1] if values else None


# ---------------------------------------------------------------- the core (no JVM)


async def test_the_ev_s_20_limits_bound_the_setpoint_and_the_target_reaches_the_secc(
        short_dir: Path) -> None:
    """A -20 AC_BPT EV stating 3000 W of discharge: a CentralSetpoint of -4000 W makes the
    stage discharge 3000 W (the EV's limit over the mock battery's 11040 W), the SECC is
    pushed target -3000 W, the EV's power it reports is the session's, the needs go to the
    CSMS as DynamicControl, a scheduled EV's schedule carries the discharge; the session's
    end forgets the EV's limits; a -20 EV that chose plain AC is never discharged."""
    secc = FakeSecc(str(short_dir / "iso15118-1.sock"))
    await secc.start()
    hal = yaml.safe_dump({"hal": {"driver": "mock", "ev_max_current_a": 16, "v2x": True,
                                  "iso15118": {"enabled": True, "start_sidecar": False,
                                               "socket_dir": str(short_dir)}}})
    try:
        async with version_rig("2.1", short_dir, extra=hal) as (csms, make):
            agent = await make()
            link = await online201(agent, csms)
            await asyncio.wait_for(secc.connected.wait(), 10)
            evse = agent.station.evses[1]
            agent.hal.plug(1)
            agent.hal.tap("TAG1")
            started = await csms.wait_for("TransactionEvent",
                                          predicate=lambda p: p["eventType"] == "Started")
            tx_id = started["transactionInfo"]["transactionId"]
            res = await link.call("NotifyAllowedEnergyTransfer",
                                  {"transactionId": tx_id, "allowedEnergyTransfer": ALLOW})
            assert res == {"status": "Accepted"}
            secc.tell("session_started", evcc_id="WMIV1234567890ABCDEX",
                      protocol="ISO_15118_20_AC")
            secc.tell("ev_parameters", params={
                "energy_mode": "AC_BPT", "max_power_w": 11000.0, "min_power_w": 100.0,
                "max_discharge_power_w": 3000.0, "min_discharge_power_w": 100.0,
                "bidirectional": True, "control_mode": "dynamic"})
            needs = await csms.wait_for("NotifyEVChargingNeeds")
            assert needs["chargingNeeds"]["controlMode"] == "DynamicControl", needs
            await eventually(lambda: evse.ev_reported[0] is not None, "the EV's limits taken")
            secc.tell("charge_progress", started=True)  # PowerDelivery Start: the hold goes
            res = await link.call("SetChargingProfile", {
                "evseId": 1, "chargingProfile": setpoint_profile(tx_id, -4000)})
            assert res["status"] == "Accepted", res
            await eventually(lambda: stage(agent) == -3000, "held to the EV's -20 limit")
            await eventually(lambda: pushed(secc, "target_w") == -3000, "the target pushed")
            assert pushed(secc, "target_min_w") == -3000
            snap = evse.power_stage_snapshot()
            assert snap.ev_limits.max_discharge_w == 3000 and "AC_BPT" in snap.modes
            # A scheduled EV asking now would get the discharge it may give, negative.
            reply = await secc.ask("schedule", departure_time_s=None)
            assert reply["discharge"] == [{"start_s": 0, "limit_w": -3000.0}], reply
            secc.tell("ev_power", present_w=-3000.0, target_w=-3000.0, control_mode="dynamic")
            s = agent.station.iso15118.session(1)
            await eventually(lambda: s.present_power_w == -3000.0, "the EV's power")
            reading = await agent.hal.evses[1].meter.read()
            assert reading.power_w == -3000

            secc.tell("session_ended", state="SessionStop", reason="done")
            await eventually(lambda: evse.ev_reported == (None, None), "the EV's limits go")
            # The same EV back with plain AC over -20: no discharge, whatever the stage can.
            secc.tell("session_started", evcc_id="WMIV1234567890ABCDEX",
                      protocol="ISO_15118_20_AC")
            secc.tell("ev_parameters", params={"energy_mode": "AC", "max_power_w": 11000.0,
                                               "control_mode": "scheduled"})
            secc.tell("charge_progress", started=True)
            await eventually(lambda: evse.ev_reported[1] is not None, "the EV's service taken")
            await eventually(lambda: stage(agent) == 0, "no discharge for an AC-only EV")
            assert evse.power_stage_snapshot().bidirectional is False
            await eventually(lambda: pushed(secc, "target_min_w") == 0, "no discharge target")
            reply = await secc.ask("schedule", departure_time_s=None)
            assert "discharge" not in reply
    finally:
        await secc.stop()


async def test_ctl_plug_iso15118_flags_reach_the_ev_simulator(short_dir: Path) -> None:
    """``ctl plug 1 --iso15118 --bidirectional --control-mode dynamic --cert-install --tls``:
    the flags become the request's args and the simulated EV's options (a -20 AC EV for
    --bidirectional); without them a -2 EV as before."""
    from agent.control import _build_parser, _request_args

    ns = _build_parser().parse_args(["plug", "1", "--iso15118", "--bidirectional",
                                     "--control-mode", "dynamic", "--cert-install", "--tls"])
    args = _request_args(ns)
    assert args == {"evse": 1, "iso15118": True, "tls": True, "cert_install": True,
                    "bidirectional": True, "control_mode": "dynamic"}, args
    hal = yaml.safe_dump({"hal": {"driver": "mock", "iso15118": {
        "enabled": True, "start_sidecar": False, "socket_dir": str(short_dir)}}})
    async with version_rig("2.1", short_dir, extra=hal) as (csms, make):
        agent = await make()
        await online201(agent, csms)
        started: list[dict] = []

        async def start_ev(evse: int, **kw: Any) -> None:
            started.append({"evse": evse, **kw})

        agent.station.iso15118.hlc.start_ev = start_ev
        await agent.handle_control({"cmd": "plug", "args": args})
        await agent.handle_control({"cmd": "unplug", "args": {"evse": 1}})
        await agent.handle_control({"cmd": "plug", "args": {"evse": 1, "iso15118": True}})
    assert started == [
        {"evse": 1, "evcc_id": "", "tls": True, "cert_install": True, "bidirectional": True,
         "protocol_name": "ISO_15118_20_AC", "control_mode": "dynamic"},
        {"evse": 1, "evcc_id": "", "tls": False, "cert_install": False, "bidirectional": False,
         "protocol_name": "ISO_15118_2", "control_mode": "scheduled"}]


# ---------------------------------------------------------------- the sidecar (no JVM)

SCRIPT = r"""
import asyncio, json, sys, types
sys.path.insert(0, sys.argv[1])
import sidecar
from iso15118.shared.messages.enums import ControlMode, Protocol, ServiceV20

class Link(sidecar.AgentLink):
    def __init__(self):
        super().__init__("unused", {})
        self.told = []
        self.status = {"target_w": -4000.0, "target_min_w": -11040.0,
                       "target_max_w": 11040.0, "power_w": -3990.0}
    def tell(self, name, **params):
        self.told.append([name, params])
    async def ask(self, name, timeout=2.0, **params):
        return {"periods": [{"start_s": 0, "limit_w": 11040.0}],
                "discharge": [{"start_s": 0, "limit_w": -6000.0}]}

def number(x):
    return None if x is None else float(x.get_decimal_value())

async def main():
    link = Link()
    c = sidecar.build_controller(link)
    c.set_selected_protocol(Protocol.ISO_15118_20_AC)
    service = types.SimpleNamespace(service=ServiceV20.AC_BPT)
    c.comm_session = types.SimpleNamespace(control_mode=ControlMode.DYNAMIC,
                                           selected_energy_service=service, evcc_id="X")
    ev = c.ev_data_context
    ev.rated_limits.ac_limits.max_charge_power = 11000.0
    ev.rated_limits.ac_limits.max_discharge_power = 11000.0
    ev.present_active_power = -4000.0
    out = {}
    p = await c.get_ac_charge_loop_params_v20(ControlMode.DYNAMIC, ServiceV20.AC_BPT)
    out["dynamic"] = [type(p).__name__, number(p.evse_target_active_power),
                      number(p.evse_present_active_power)]
    p = await c.get_ac_charge_loop_params_v20(ControlMode.SCHEDULED, ServiceV20.AC_BPT)
    out["scheduled"] = [type(p).__name__, number(p.evse_target_active_power)]
    p = await c.get_ac_charge_loop_params_v20(ControlMode.DYNAMIC, ServiceV20.AC)
    out["ac_only"] = [type(p).__name__, number(p.evse_target_active_power)]
    ev.session_limits.ac_limits.max_discharge_power = 2500.0  # the EV lowers it in the loop
    out["ev_limit"] = c.target_w(True)
    link.status["target_w"] = 20000.0  # beyond the station's bound
    out["station_bound"] = c.target_w(True)
    link.status["stop"] = True
    out["stop"] = c.target_w(True)
    link.status.update(stop=False, target_w=-4000.0)
    del link.status["target_min_w"]  # no word of the agent on discharge: none
    out["no_bound"] = c.target_w(True)
    c.comm_session.control_mode = ControlMode.SCHEDULED
    params = await c.get_scheduled_se_params(service, types.SimpleNamespace(
        scheduled_params=None, max_supporting_points=None))
    t = params.schedule_tuples[0]
    out["charging"] = [number(e.power) for e in
                       t.charging_schedule.power_schedule.schedule_entry_list.entries]
    out["discharging"] = [number(e.power) for e in
                          t.discharging_schedule.power_schedule.schedule_entry_list.entries]
    c.comm_session.selected_energy_service = types.SimpleNamespace(service=ServiceV20.AC)
    params = await c.get_scheduled_se_params(service, types.SimpleNamespace(
        scheduled_params=None, max_supporting_points=None))
    out["ac_discharging"] = params.schedule_tuples[0].discharging_schedule
    ev.departure_time, ev.min_soc, ev.target_soc = 7200, 30, 80
    c.comm_session.control_mode = ControlMode.DYNAMIC
    d = await c.get_dynamic_se_params(service, None)
    out["dynamic_se"] = [d.departure_time, d.min_soc, d.target_soc, d.price_level_schedule]
    out["told"] = [t for t in link.told if t[0] in ("ev_power", "ev_parameters")]
    print(json.dumps(out))

asyncio.run(main())
"""


@needs_venv
def test_the_secc_gives_the_20_ev_the_agent_s_target() -> None:
    proc = subprocess.run([SIDECAR_PYTHON, "-c", SCRIPT, str(HERE)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["dynamic"] == ["BPTDynamicACChargeLoopResParams", -4000.0, -3990.0]
    assert out["scheduled"] == ["BPTScheduledACChargeLoopResParams", -4000.0]
    assert out["ac_only"] == ["DynamicACChargeLoopResParams", 0.0]  # no discharge on AC
    assert out["ev_limit"] == -2500.0  # the EV's charge-loop limit
    assert out["station_bound"] == 11000.0  # the station's 11040 W, then the EV's 11 kW
    assert out["stop"] == 0.0
    assert out["no_bound"] == 0.0
    assert out["charging"] == [11040.0]
    assert out["discharging"] == [-6000.0]  # -20 counts discharge negative
    assert out["ac_discharging"] is None  # plain AC: no discharging schedule at all
    assert out["dynamic_se"] == [7200, 30, 80, None]
    power = [p for name, p in out["told"] if name == "ev_power"]
    assert power[0] == {"present_w": -4000.0, "target_w": -4000.0, "control_mode": "dynamic"}
    assert len(power) == 2, power  # told again only when it moved (the AC-only answer)
    params = [p["params"] for name, p in out["told"] if name == "ev_parameters"]
    assert params and params[-1]["control_mode"] == "dynamic", params


# ---------------------------------------------------------------- end to end (both JVMs)


def _measured(p: dict) -> dict[str, float]:
    return {v["measurand"]: v["value"] for mv in p.get("meterValue", [])
            for v in mv["sampledValue"]}


@needs_sidecar
async def test_iso15118_20_ev_discharges_at_the_csms_setpoint_on_21(short_dir: Path) -> None:
    """The package's -20 EVCC (AC_BPT, Dynamic control, EIM) on 2.1: the CSMS allows AC_BPT
    and sets a CentralSetpoint of -4000 W; every ACChargeLoopRes tells the EV -4000 W, the EV
    reports EVPresentActivePower -4000 W (the agent's session has it), the meter's export
    register grows during the charge loop and TransactionEvents show Power.Active.Export."""
    hal = yaml.safe_dump({"hal": {"driver": "mock", "ev_max_current_a": 16, "v2x": True,
                                  "iso15118": {"enabled": True,
                                               "protocols": ["ISO_15118_20_AC"]}}})
    measurands = ("Energy.Active.Import.Register,Energy.Active.Export.Register,"
                  "Power.Active.Import,Power.Active.Export")
    async with version_rig("2.1", short_dir, extra=hal, defaults={
            "SampledDataCtrlr.TxUpdatedInterval": 1,
            "SampledDataCtrlr.TxUpdatedMeasurands": measurands}) as (csms, make):
        agent = await make()
        link = await online201(agent, csms, timeout=10)
        service = agent.station.iso15118
        await service.hlc.wait_connected(1, timeout=90)
        agent.hal.plug(1)
        agent.hal.tap("TAG1")
        started = await csms.wait_for("TransactionEvent", timeout=10,
                                      predicate=lambda p: p["eventType"] == "Started")
        tx_id = started["transactionInfo"]["transactionId"]
        res = await link.call("NotifyAllowedEnergyTransfer",
                              {"transactionId": tx_id, "allowedEnergyTransfer": ALLOW})
        assert res == {"status": "Accepted"}
        res = await link.call("SetChargingProfile", {
            "evseId": 1, "chargingProfile": setpoint_profile(tx_id, -4000)})
        assert res["status"] == "Accepted", res
        sim = await service.hlc.start_ev(1, protocol_name="ISO_15118_20_AC",
                                         bidirectional=True, control_mode="dynamic",
                                         loops=6)
        s_seen: dict[str, Any] = {}

        def discharging_loop() -> bool:
            s = service.session(1)
            if s is not None and s.present_power_w == -4000.0 and "export" not in s_seen:
                agent.hal.sims[1].integrate()
                s_seen["export"] = agent.hal.sims[1].export_wh
                s_seen["events"] = len(csms.messages("CP1", "TransactionEvent"))
            return "export" in s_seen

        await eventually(lambda: discharging_loop() or sim.ended.is_set(),
                         "the EV reports -4000 W", SESSION_S)
        await asyncio.wait_for(sim.ended.wait(), SESSION_S)
        assert sim.report("ended") == {"kind": "ended", "ok": True}, list(sim.tail)[-20:]
        assert "export" in s_seen, [r for r in sim.reports if r["kind"] == "charge_loop"]
        s = service.session(1)
        assert s.protocol == "ISO_15118_20_AC" and s.needs.control_mode == "dynamic", s
        loops = [r for r in sim.reports if r["kind"] == "charge_loop"]
        assert [r["control_mode"] for r in loops] == ["dynamic"] * len(loops)
        told = [r for r in loops if r["target_w"] == -4000.0]
        assert len(told) >= 2 and all(r["present_w"] == -4000.0 for r in told), loops
        assert sim.report("dynamic") is not None  # the -20 Dynamic ScheduleExchange
        needs = (await csms.wait_for("NotifyEVChargingNeeds"))["chargingNeeds"]
        assert needs["requestedEnergyTransfer"] == "AC_BPT"
        assert needs["controlMode"] == "DynamicControl", needs
        reading = await agent.hal.evses[1].meter.read()
        assert reading.energy_export_wh > s_seen["export"], (reading, s_seen)
        await eventually(lambda: any(
            _measured(p).get("Power.Active.Export") == 4000
            for p in csms.messages("CP1", "TransactionEvent")[s_seen["events"]:]),
            "a TransactionEvent with Power.Active.Export 4000 W after the EV's loop", 10)
