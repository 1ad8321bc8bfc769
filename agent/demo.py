"""`cp-agent demo`: one real charging session, agent and CSMS side by side, on 127.0.0.1.

Nothing here is simulated beyond the mock HAL: the agent is the same object `cp-agent run`
builds, the CSMS is the strict test CSMS built on the `ocpp` package's server side, and every
line of the timeline is a real event or a real frame on a real websocket.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agent.app import Agent
from agent.config import load_config_text
from agent.testing.csms import TestCsms
from hal.interfaces import PilotChanged, TokenPresented
from hal.mock import MockHal

STATION_ID = "DEMO-CP1"
TAG = "04A2B3C4D5E680"  # a 7-byte ISO 14443 UID (4 or 7 bytes are valid)


class Timeline:
    def __init__(self, out: Any = sys.stdout) -> None:
        self.t0 = time.monotonic()
        self.out = out
        self.counts: dict[str, int] = {}

    def line(self, who: str, text: str) -> None:
        t = time.monotonic() - self.t0
        print(f"{t:7.2f}s  {who:<9} {text}", file=self.out, flush=True)

    def frame(self, station_id: str, direction: str, kind: str, action: str,
              payload: dict) -> None:
        arrow = "CP -> CSMS" if direction == "cs->csms" else "CSMS -> CP"
        if kind == "CALL":
            self.counts[action] = self.counts.get(action, 0) + 1
            self.line(arrow, f"{action}  {_summary(action, payload)}")
        elif kind == "CALLRESULT":
            self.line(arrow, f"  {action}.conf  {_summary(action + '.conf', payload)}")
        else:
            self.line(arrow, f"  {action} {kind} {payload}")


def _summary(action: str, p: dict) -> str:
    """The fields worth a glance, for both 1.6 and 2.0.1 payloads (absent ones are skipped)."""
    if action == "TransactionEvent":
        info = p.get("transactionInfo", {})
        text = (f"{p.get('eventType')} seqNo={p.get('seqNo')} "
                f"triggerReason={p.get('triggerReason')}")
        for key in ("chargingState", "stoppedReason"):
            if key in info:
                text += f" {key}={info[key]}"
        return text + _values(p, "unitOfMeasure")
    if action == "MeterValues":
        return f"tx {p.get('transactionId', '-')}:" + _values(p, "unit")
    keys = {
        "BootNotification": ("chargePointVendor", "chargePointModel", "reason"),
        "BootNotification.conf": ("status", "interval"),
        "StatusNotification": ("connectorId", "status", "errorCode", "evseId",
                               "connectorStatus"),
        "Authorize": ("idTag",),
        "Authorize.conf": ("idTagInfo", "idTokenInfo"),
        "StartTransaction": ("connectorId", "idTag", "meterStart"),
        "StartTransaction.conf": ("transactionId", "idTagInfo"),
        "StopTransaction": ("transactionId", "meterStop", "reason"),
        "TransactionEvent.conf": ("idTokenInfo",),
        "SecurityEventNotification": ("type",),
        "Heartbeat.conf": ("currentTime",),
    }.get(action, ())
    parts = [f"{k}={p[k]}" for k in keys if k in p]
    if isinstance(p.get("idToken"), dict):
        parts.append(f"idToken={p['idToken'].get('idToken')}")
    return " ".join(parts)


def _values(p: dict, unit_key: str) -> str:
    values = []
    for mv in p.get("meterValue", []):
        for v in mv.get("sampledValue", []):
            unit = v.get(unit_key, "")
            unit = unit.get("unit", "Wh") if isinstance(unit, dict) else unit
            values.append(f"{v.get('measurand', 'Energy.Active.Import.Register')}="
                          f"{v['value']}{unit}")
    return f" ({', '.join(values[:4])})" if values else ""


async def _until(event: asyncio.Event, timeout: float, what: str) -> None:
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        raise RuntimeError(f"demo: timed out waiting for {what}") from None


def _register(event: dict, context: str) -> float | None:
    for mv in event.get("meterValue", []):
        for v in mv["sampledValue"]:
            if v.get("context") == context and v.get(
                    "measurand", "Energy.Active.Import.Register") == \
                    "Energy.Active.Import.Register":
                return float(v["value"])
    return None


def _outcome(version: str, csms: TestCsms, stop: dict) -> tuple[Any, Any, float]:
    """(transaction id, stop reason, energy in Wh) as the CSMS saw them."""
    if version == "1.6":
        tx = next(iter(csms.transactions.values()))
        return (stop["transactionId"], stop.get("reason"),
                stop["meterStop"] - tx["start"]["meterStart"])
    tx_id = stop["transactionInfo"]["transactionId"]
    events = csms.transactions[tx_id]["events"]
    begin = next((w for e in events if (w := _register(e, "Transaction.Begin")) is not None),
                 0.0)
    end = _register(stop, "Transaction.End") or 0.0
    return tx_id, stop["transactionInfo"].get("stoppedReason"), round(end - begin, 3)


async def run_demo(version: str = "1.6", verbose: bool = False, out: Any = sys.stdout) -> int:
    logging.basicConfig(level=logging.INFO if verbose else logging.ERROR,
                        format="           agent     %(name)s: %(message)s", stream=out)
    tl = Timeline(out)
    csms = TestCsms(versions=(version,), heartbeat_interval=10, boot_interval=10,
                    on_message=tl.frame)
    url = await csms.start()
    tl.line("demo", f"test CSMS listening on {url} (OCPP {version})")
    with tempfile.TemporaryDirectory(prefix="cp-agent-demo-", dir="/tmp") as tmp:
        cfg = load_config_text(f"""
station: {{id: {STATION_ID}, vendor: cp-agent, model: demo}}
ocpp:
  url: "{url}"
  versions: ["{version}"]
  defaults: {{MeterValueSampleInterval: 2, HeartbeatInterval: 10}}
storage: {{path: "{Path(tmp) / 'state.sqlite3'}"}}
control: {{socket: "{Path(tmp) / 'ctl.sock'}"}}
hal: {{driver: mock}}
web: {{listen: "127.0.0.1:0"}}
""", "demo")
        agent = Agent(cfg, on_frame=None)
        hal = agent.hal
        assert isinstance(hal, MockHal)
        hal.sims[1].ev_max_current = 16.0

        def on_hal(event: Any) -> None:
            if isinstance(event, PilotChanged):
                meaning = {"A": "no EV", "B": "EV connected", "C": "EV charging",
                           "D": "EV charging (ventilation)"}.get(event.state.value, "error")
                tl.line("hardware", f"EVSE {event.evse_id} pilot -> {event.state.value} "
                                    f"({meaning})")
            elif isinstance(event, TokenPresented):
                tl.line("hardware", f"RFID card {event.uid} presented")

        closed = asyncio.Event()

        def on_trace(evse_id: int, what: str, detail: dict) -> None:
            if what == "contactor":
                if detail["closed"]:
                    closed.set()
                tl.line("hardware", f"EVSE {evse_id} contactor "
                                    f"{'CLOSED' if detail['closed'] else 'open'}")
            elif what == "pwm":
                tl.line("hardware", f"EVSE {evse_id} pilot PWM offers {detail['amps']:.0f} A")

        agent.station.hal_events.append(on_hal)
        agent.station.traces.append(on_trace)
        await agent.start()
        if agent.web_url:
            tl.line("demo", f"status page on {agent.web_url} (open it while the session runs)")
        started = time.monotonic()
        try:
            link = await csms.wait_station(STATION_ID, timeout=10)
            await csms.wait_for("BootNotification", station_id=STATION_ID, timeout=10)
            adapter = agent.adapter  # the one the negotiated version picked
            await _until(adapter.accepted, 10, "boot accepted")
            tl.line("demo", "EV driver plugs in the cable")
            hal.plug(1)
            await csms.wait_for("StatusNotification", station_id=STATION_ID,
                                predicate=lambda p: p.get("status") == "Preparing"
                                or p.get("connectorStatus") == "Occupied", timeout=5)
            tl.line("demo", f"driver taps card {TAG}")
            hal.tap(TAG)
            await _until(closed, 10, "the contactor to close")
            tl.line("demo", "charging for 6 s (meter values every 2 s)")
            await asyncio.sleep(6.0)
            tl.line("demo", "driver unplugs the cable")
            hal.unplug(1)
            if version == "1.6":
                stop = await csms.wait_for("StopTransaction", station_id=STATION_ID,
                                           timeout=10)
            else:
                stop = await csms.wait_for("TransactionEvent", station_id=STATION_ID,
                                           predicate=lambda p: p["eventType"] == "Ended",
                                           timeout=10)
            await _until(adapter.outbox.idle, 10, "the outbox to drain")
            await csms.wait_for("StatusNotification", station_id=STATION_ID,
                                predicate=lambda p: "Available" in (
                                    p.get("status"), p.get("connectorStatus")),
                                count=2, timeout=5)
            del link
        finally:
            await agent.stop()
            await csms.stop()
        tx_id, reason, energy = _outcome(version, csms, stop)
        duration = time.monotonic() - started
        print("", file=out)
        print("Summary", file=out)
        print(f"  station          {STATION_ID} over OCPP {version}", file=out)
        print(f"  transaction      {tx_id} (stop reason {reason})", file=out)
        print(f"  energy delivered {energy} Wh", file=out)
        print(f"  session duration {duration:.1f} s", file=out)
        msgs = ", ".join(f"{k} {v}" for k, v in sorted(tl.counts.items()))
        print(f"  messages         {sum(tl.counts.values())} CALLs: {msgs}", file=out)
        violations = getattr(csms, "violations", [])
        print(f"  schema errors    {len(violations)}", file=out)
        return 0 if not violations and energy > 0 else 1
