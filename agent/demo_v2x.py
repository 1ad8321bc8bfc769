"""`cp-agent demo --ocpp 2.1 --v2x`: a discharge session with a DER control, agent and CSMS
side by side on 127.0.0.1 (the mock HAL's bidirectional EV; every line a real event or frame).

The story: the EV is plugged and the card tapped; the CSMS's Authorize answer allows charging
only, so the station charges; the CSMS then allows bidirectional transfer for the
transaction (NotifyAllowedEnergyTransfer) and sets a TxProfile in CentralSetpoint mode that
discharges at 7 kW; a scheduled DER control (LimitMaxDischarge, 20 % of the stage's 22 kW)
starts two seconds later for two seconds and caps the discharge at 4.4 kW, and
NotifyDERStartStop reports its start and its end; the driver unplugs.  The summary gives the
energy charged and fed back.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from agent.app import Agent
from agent.clock import iso
from agent.config import load_config_text
from agent.demo import STATION_ID, TAG, Timeline, _until
from agent.testing.csms import TestCsms

DISCHARGE_W = 7000
DER_PERCENT = 20


def _register(event: dict, measurand: str) -> float | None:
    for mv in event.get("meterValue", []):
        for v in mv["sampledValue"]:
            if v.get("measurand", "Energy.Active.Import.Register") == measurand \
                    and v.get("context") == "Transaction.End":
                return float(v["value"])
    return None


async def run_v2x_demo(out: Any = sys.stdout) -> int:
    tl = Timeline(out)
    csms = TestCsms(versions=("2.1",), heartbeat_interval=30, boot_interval=10,
                    on_message=tl.frame)
    url = await csms.start()
    tl.line("demo", f"test CSMS listening on {url} (OCPP 2.1, V2X and DER)")
    measurands = ("Energy.Active.Import.Register,Energy.Active.Export.Register,"
                  "Power.Active.Import,Power.Active.Export,SoC")
    with tempfile.TemporaryDirectory(prefix="cp-agent-demo-", dir="/tmp") as tmp:
        cfg = load_config_text(f"""
station: {{id: {STATION_ID}, vendor: cp-agent, model: demo}}
ocpp:
  url: "{url}"
  versions: ["2.1"]
  defaults:
    MeterValueSampleInterval: 2
    HeartbeatInterval: 30
    SampledDataCtrlr.TxUpdatedMeasurands: "{measurands}"
    SampledDataCtrlr.TxEndedMeasurands: "{measurands}"
storage: {{path: "{Path(tmp) / 'state.sqlite3'}"}}
control: {{socket: "{Path(tmp) / 'ctl.sock'}"}}
hal: {{driver: mock, ev_max_current_a: 16, v2x: {{soc_percent: 70}}}}
""", "demo")
        agent = Agent(cfg, on_frame=None)
        closed = asyncio.Event()

        def on_trace(evse_id: int, what: str, detail: dict) -> None:
            if what == "contactor":
                if detail["closed"]:
                    closed.set()
                tl.line("hardware", f"EVSE {evse_id} contactor "
                                    f"{'CLOSED' if detail['closed'] else 'open'}")
            elif what == "setpoint":
                watts = detail.get("watts")
                tl.line("hardware", f"EVSE {evse_id} power stage setpoint "
                                    + ("none" if watts is None else f"{watts:+.0f} W"))

        agent.station.traces.append(on_trace)
        await agent.start()
        started = time.monotonic()
        try:
            link = await csms.wait_station(STATION_ID, timeout=10)
            await _until(agent.adapter.accepted, 10, "boot accepted")
            tl.line("demo", "EV driver plugs in a bidirectional EV (60 kWh, 70 %) and taps "
                            f"card {TAG}")
            agent.hal.plug(1)
            agent.hal.tap(TAG)
            await _until(closed, 10, "the contactor to close")
            begun = await csms.wait_for("TransactionEvent", station_id=STATION_ID,
                                        predicate=lambda p: p["eventType"] == "Started",
                                        timeout=10)
            tx_id = begun["transactionInfo"]["transactionId"]
            tl.line("demo", "charging (the Authorize answer allowed charging only)")
            await asyncio.sleep(1.0)
            tl.line("demo", "the CSMS allows bidirectional transfer and asks for 7 kW back")
            await link.call("NotifyAllowedEnergyTransfer", {
                "transactionId": tx_id, "allowedEnergyTransfer": ["AC_BPT", "AC_three_phase"]})
            await link.call("SetChargingProfile", {"evseId": 1, "chargingProfile": {
                "id": 21, "stackLevel": 0, "chargingProfilePurpose": "TxProfile",
                "chargingProfileKind": "Relative", "transactionId": tx_id,
                "chargingSchedule": [{"id": 1, "chargingRateUnit": "W",
                                      "chargingSchedulePeriod": [{
                                          "startPeriod": 0, "operationMode": "CentralSetpoint",
                                          "setpoint": -DISCHARGE_W, "dischargeLimit": -9000}]}]}})
            start = agent.clock.now().replace(microsecond=0) + timedelta(seconds=3)
            tl.line("demo", f"the grid operator caps discharge at {DER_PERCENT} % for 2 s "
                            f"from {iso(start)}")
            await link.call("SetDERControl", {
                "controlId": "demo-lmd", "controlType": "LimitMaxDischarge", "isDefault": False,
                "limitMaxDischarge": {"priority": 0, "pctMaxDischargePower": DER_PERCENT,
                                      "startTime": iso(start), "duration": 2}})
            await csms.wait_for("NotifyDERStartStop", station_id=STATION_ID, timeout=10)
            await csms.wait_for("NotifyDERStartStop", station_id=STATION_ID, count=2,
                                timeout=10)
            await asyncio.sleep(1.0)
            tl.line("demo", "driver unplugs the cable")
            agent.hal.unplug(1)
            stop = await csms.wait_for("TransactionEvent", station_id=STATION_ID,
                                       predicate=lambda p: p["eventType"] == "Ended",
                                       timeout=10)
            await _until(agent.adapter.outbox.idle, 10, "the outbox to drain")
        finally:
            await agent.stop()
            await csms.stop()
        imported = _register(stop, "Energy.Active.Import.Register")
        exported = _register(stop, "Energy.Active.Export.Register")
        der = csms.messages(STATION_ID, "NotifyDERStartStop")
        print("", file=out)
        print("Summary", file=out)
        print(f"  station          {STATION_ID} over OCPP 2.1 (V2X, DER)", file=out)
        print(f"  transaction      {tx_id} "
              f"(stop reason {stop['transactionInfo'].get('stoppedReason')})", file=out)
        print(f"  energy           {imported} Wh charged, {exported} Wh fed back "
              f"(meter registers at the end)", file=out)
        print(f"  DER control      {len(der)} NotifyDERStartStop "
              f"({', '.join('start' if n['started'] else 'end' for n in der)})", file=out)
        print(f"  session duration {time.monotonic() - started:.1f} s", file=out)
        violations = getattr(csms, "violations", [])
        print(f"  schema errors    {len(violations)}", file=out)
        return 0 if not violations and exported and len(der) == 2 else 1


__all__ = ["run_v2x_demo"]
