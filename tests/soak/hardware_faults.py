"""Hardware faults: every fault a driver reports, mid-session, on every OCPP version.

    python -m tests.soak.hardware_faults [--faults all] [--versions 1.6,2.0.1,2.1]
                                         [--count 1] [--quick]

For each fault and each version: the real ``Agent`` on the mock HAL and a ``FakeClock``,
against the strict test CSMS of that version (every frame schema-checked). An EV is plugged,
the card accepted online, current flows. Then the fault comes in the way a driver reports it:

- the meter rows run through the **real Modbus meter driver** (``RegisterMapMeter``, SDM630
  map) over Modbus TCP on 127.0.0.1 against a pymodbus server (tests/hal/halsim.py) whose
  register image follows the simulated EV's energy. The meter stops answering, or its energy
  register reads negative, runs backwards or is NaN, so the driver and the core find it as
  on a bench;
- welded and dropped-out contactor, pilot E and F, the EV's diode, the reader, the lock, an
  RCD trip: the mock HAL's devices (hal/mock.py), which raise what the GPIO contactor, the
  direct-pilot driver, the readers and the lock raise. A welded contact and a lock that does
  not move show only when they are told to move, so those sessions are ended with the card;
- the grid meter of load management (``site.grid_meter: {type: mock}``) goes silent.

Observed and checked: the contactor and the offer to the EV (open and 0 A while a blocking
fault lasts, never closed again until it clears; the site's fallback for the grid meter),
the session (kept, or ended and why), what the CSMS received (1.6 StatusNotification status
/ errorCode / info; 2.0.1 and 2.1 NotifyEvent component / variable, StatusNotification,
TransactionEvent trigger / chargingState / stoppedReason), and, once the fault is cleared,
the recovery: the cleared report, the same session charging again or Available and a new
session charging. Prints the table of fault -> what the EV and the CSMS see (the section of
docs/durability.md), the figures, one ``RESULT {json}`` line, and exits 1 on any problem.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.app import Agent
from agent.clock import FakeClock
from agent.config import load_config_text
from agent.core.model import ConnectorStatus
from agent.testing.csms import TestCsms
from agent.testing.csms.messages import CS_TO_CSMS
from bench._common import Report
from hal.drivers.base import EventSink
from hal.drivers.meters import BUILTIN_MAPS, RegisterMapMeter
from hal.drivers.modbus_bus import ModbusBus, TcpLink
from hal.interfaces import FaultKind, MeterReading, PowerMeter
from hal.mock import NOMINAL_VOLTAGE, MockHal, _Sim
from tests.hal.halsim import ModbusSim, SimUnit, f32, put, sdm630_unit

VERSIONS = ("1.6", "2.0.1", "2.1")
CARD = "HF-CARD"
POLL_S = 1.0  # the station's meter poll and the load manager's sample (fake seconds)
STEP_WAIT_S = 0.03  # real time given to each fake poll (Modbus round trips, the websocket)
SITE_A, HOUSE_A, FALLBACK_A = 32.0, 5.0, 10.0
START_KWH = 1000.0  # the simulated meter's register at the start (so "backwards" is > 0)


# ---------------------------------------------------------------- the meter on Modbus


class ModbusMeterBridge(PowerMeter):
    """The mock EVSE's physics behind a real SDM630 register image: each read first writes
    what the simulated meter measures into the pymodbus server's registers (or the fault's
    value instead), then the real driver reads them over Modbus TCP."""

    def __init__(self, sim: _Sim, unit: SimUnit, driver: RegisterMapMeter) -> None:
        self.sim = sim
        self.unit = unit
        self.driver = driver
        self.energy_kwh: float | None = None  # a fault's register value (None: the truth)

    @property
    def phases(self) -> int:
        return self.driver.phases

    @property
    def measures(self) -> frozenset[str]:
        return self.driver.measures

    async def read(self) -> MeterReading:
        sim = self.sim
        sim.integrate()
        amps = sim.current()
        kwh = sim.energy_wh / 1000.0 if self.energy_kwh is None else self.energy_kwh
        put(self.unit.input, 0x48, f32(kwh))
        put(self.unit.input, 0x34, f32(sim.power()))
        for i in range(3):
            put(self.unit.input, 0x00 + 2 * i, f32(NOMINAL_VOLTAGE))
            put(self.unit.input, 0x06 + 2 * i, f32(amps if i < sim.phases else 0.0))
        return await self.driver.read()


# ---------------------------------------------------------------- the faults


@dataclass(frozen=True)
class Fault:
    name: str
    what: str
    kind: FaultKind
    blocking: bool = True
    meter: bool = False  # EVSE 1's meter is the Modbus driver
    site: bool = False  # load management with the mock grid meter
    moved: bool = False  # shows only when the device moves: the card ends the session
    code16: str = ""  # the 1.6 errorCode expected
    component: str = ""  # the 2.x NotifyEvent component expected


FAULTS: dict[str, Fault] = {f.name: f for f in (
    Fault("meter_silent", "meter stops answering (Modbus)", FaultKind.METER, meter=True,
          code16="PowerMeterFailure", component="FiscalMetering"),
    Fault("meter_negative", "meter energy register negative (Modbus)", FaultKind.METER,
          meter=True, code16="PowerMeterFailure", component="FiscalMetering"),
    Fault("meter_backwards", "meter energy register runs backwards (Modbus)", FaultKind.METER,
          meter=True, code16="PowerMeterFailure", component="FiscalMetering"),
    Fault("meter_nan", "meter energy register NaN (Modbus)", FaultKind.METER, meter=True,
          code16="PowerMeterFailure", component="FiscalMetering"),
    Fault("welded", "contactor welded (found when it opens)", FaultKind.WELDED, moved=True,
          code16="PowerSwitchFailure", component="PowerContactor"),
    Fault("contactor_failed", "contactor drops out while closed", FaultKind.CONTACTOR_FAILED,
          code16="PowerSwitchFailure", component="PowerContactor"),
    Fault("pilot_e", "pilot state E (CP shorted)", FaultKind.PILOT, code16="OtherError",
          component="CPPWMController"),
    Fault("pilot_f", "pilot state F", FaultKind.PILOT, code16="OtherError",
          component="CPPWMController"),
    Fault("diode", "EV diode missing (diode check)", FaultKind.PILOT, code16="OtherError",
          component="CPPWMController"),
    Fault("reader_gone", "RFID reader gone", FaultKind.READER, blocking=False,
          code16="ReaderFailure", component="TokenReader"),
    Fault("lock_failure", "socket lock does not move (found at unlock)", FaultKind.LOCK,
          moved=True, code16="ConnectorLockFailure", component="ConnectorPlugRetentionLock"),
    Fault("ground_failure", "RCD trips", FaultKind.GROUND_FAILURE, code16="GroundFailure",
          component="RCD"),
    Fault("grid_meter_gone", "grid meter of load management silent", FaultKind.METER,
          blocking=False, site=True, code16="PowerMeterFailure", component="ChargingStation"),
)}


# ---------------------------------------------------------------- one run


@dataclass
class Run:
    fault: Fault
    version: str
    ev_during: str = ""
    session: str = ""
    csms_during: list[str] = field(default_factory=list)
    csms_cleared: list[str] = field(default_factory=list)
    recovery: str = ""
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def problem(self, text: str) -> None:
        self.problems.append(f"{self.fault.name} on {self.version}: {text}")


def _config(url: str, state: Path, version: str, station: str, fault: Fault) -> Any:
    doc: dict[str, Any] = {
        "station": {"id": station, "vendor": "cp-agent", "model": "hardware-faults"},
        "ocpp": {"url": url, "versions": [version], "call_timeout_s": 5,
                 "reconnect": {"min_backoff_s": 0.05, "max_backoff_s": 0.5},
                 "defaults": {"HeartbeatInterval": 3600, "MeterValueSampleInterval": 0}},
        "storage": {"path": str(state / "state.sqlite3"), "meter_persist_s": 10},
        "control": {"socket": str(state / "ctl.sock")},
        "evses": [{"id": 1}],
        "hal": {"driver": "mock", "ev_max_current_a": 16},
        "log": {"level": "error"},
    }
    if fault.site:
        doc["site"] = {"max_current_a": SITE_A, "grid_meter": {"type": "mock"},
                       "fallback_current_a": FALLBACK_A, "silent_samples": 3}
    return load_config_text(json.dumps(doc), "hardware-faults")


def _summary(action: str, p: dict) -> str | None:
    """What a CSMS operator reads in one message (None: not about the fault)."""
    if action == "StatusNotification" and "errorCode" in p:
        text = f"Status c{p['connectorId']} {p['status']}/{p['errorCode']}"
        if p.get("info"):
            text += f" ({p['info']})"
        return text
    if action == "StatusNotification":
        return f"Status evse{p['evseId']} {p['connectorStatus']}"
    if action == "StopTransaction":
        return f"StopTransaction {p.get('reason', 'Local')}"
    if action == "StartTransaction":
        return "StartTransaction"
    if action == "TransactionEvent":
        info = p["transactionInfo"]
        text = f"TxEvent {p['eventType']} {p['triggerReason']}"
        if info.get("chargingState"):
            text += f" {info['chargingState']}"
        if info.get("stoppedReason"):
            text += f" stopped={info['stoppedReason']}"
        return text
    if action == "NotifyEvent":
        out = []
        for e in p["eventData"]:
            if e["variable"]["name"] == "AvailabilityState":
                out.append(f"NotifyEvent {e['component']['name']}.AvailabilityState="
                           f"{e['actualValue']}")
            else:
                out.append(f"NotifyEvent {e['component']['name']}.{e['variable']['name']}="
                           f"{e['actualValue']}")
        return "; ".join(out)
    if action in ("NotifyChargingLimit", "ClearedChargingLimit"):
        return action
    return None


class Scenario:
    """One fault on one version: the agent, its hardware, the CSMS and the observations."""

    def __init__(self, fault: Fault, version: str, csms: TestCsms, root: Path, n: int) -> None:
        self.fault = fault
        self.version = version
        self.csms = csms
        self.station_id = f"HF{n:03d}"
        self.state = Path(tempfile.mkdtemp(prefix="cpa-hwf-", dir=root))
        self.run = Run(fault, version)
        self.clock = FakeClock(start_wall=time.time())
        self.hal = MockHal(1, ev_max_current_a=16, monotonic=self.clock.monotonic)
        self.sim = self.hal.sims[1]
        self.sim.energy_wh = START_KWH * 1000
        self.bridge: ModbusMeterBridge | None = None
        self.modbus: ModbusSim | None = None
        self.bus: ModbusBus | None = None
        self.agent: Agent | None = None
        self.closes_while_faulted = 0
        self.offers_while_faulted: list[float] = []

    # ------------------------------------------------------------ set-up

    async def start(self) -> None:
        if self.fault.meter:
            unit = sdm630_unit(1, kwh=START_KWH, power=0.0)
            self.modbus = ModbusSim(unit)
            port = await self.modbus.start_tcp()
            self.bus = ModbusBus("meter", TcpLink("127.0.0.1", port), timeout_s=0.05, retries=0)
            sink = EventSink()
            sink.bind_loop(asyncio.get_running_loop())
            sink.attach(self.hal._emit)  # the driver's FaultCleared goes up like any event
            driver = RegisterMapMeter(1, self.bus, 1, BUILTIN_MAPS["sdm630"], sink=sink)
            self.bridge = ModbusMeterBridge(self.sim, unit, driver)
            self.hal.evses[1].meter = self.bridge
        if self.fault.site:
            self.hal.set_house_load(HOUSE_A)
        cfg = _config(self.csms.url, self.state, self.version, self.station_id, self.fault)
        self.agent = Agent(cfg, clock=self.clock, hal=self.hal, control=False)
        self.csms.now = self.clock.now
        self.agent.station.traces.append(self._trace)
        await self.agent.start()
        await asyncio.wait_for(self.agent.adapters[self.version].accepted.wait(), 10)

    async def stop(self) -> None:
        if self.agent is not None:
            await self.agent.stop()
        if self.bus is not None:
            await self.bus.close()
        if self.modbus is not None:
            await self.modbus.stop()
        shutil.rmtree(self.state, ignore_errors=True)

    def _trace(self, evse_id: int, what: str, detail: dict) -> None:
        """The invariant, checked at every output: no close and no offer while a blocking
        fault is raised on the EVSE."""
        if self.agent is None or self.agent.station.evses[evse_id].blocking_fault is None:
            return
        if what == "contactor" and detail.get("closed"):
            self.closes_while_faulted += 1
        if what == "pwm" and detail.get("amps", 0) > 0:
            self.offers_while_faulted.append(detail["amps"])

    # ------------------------------------------------------------ time and state

    @property
    def evse(self):  # noqa: ANN201 - EvseController
        assert self.agent is not None
        return self.agent.station.evses[1]

    async def until(self, pred: Callable[[], bool], what: str, steps: int = 30) -> bool:
        """Advance the fake clock a poll at a time until ``pred`` holds (real I/O, such as a
        Modbus round trip, gets up to STEP_WAIT_S per step); False (and a problem) if not."""
        loop = asyncio.get_running_loop()
        for _ in range(steps):
            deadline = loop.time() + STEP_WAIT_S
            while loop.time() < deadline:
                if pred():
                    return True
                await asyncio.sleep(0.005)
            await self.clock.advance(POLL_S)
        if pred():
            return True
        self.run.problem(f"not within {steps} polls: {what}")
        return False

    async def drain(self) -> None:
        """Until everything the agent had to say reached the CSMS."""
        assert self.agent is not None
        adapter = self.agent.adapters[self.version]
        await self.agent.station.quiet()
        await self.until(lambda: len(adapter.status) == 0
                         and self.agent.storage.outbox_count() == 0,
                         "the status queue and the outbox drained", steps=10)
        await self.clock.advance(0.01)

    def mark(self) -> int:
        return len(self.csms.log)

    def said(self, since: int) -> list[tuple[str, dict]]:
        return [(m.action, m.payload) for m in self.csms.log[since:]
                if m.station_id == self.station_id and m.direction == CS_TO_CSMS
                and m.kind in ("CALL", "SEND")]

    def charging(self) -> bool:
        e = self.evse
        return (e.hw.contactor.commanded_closed and self.sim.current() > 0
                and e.status == ConnectorStatus.CHARGING)

    def raised(self) -> bool:
        f = self.fault
        if f.site:
            load = self.agent.load if self.agent is not None else None
            return load is not None and load.mode == "fallback" and \
                self.evse.offered_a == FALLBACK_A
        if f.kind == FaultKind.READER:
            return FaultKind.READER in self.agent.station.station_faults
        return f.kind in self.evse.faults

    def cleared(self) -> bool:
        f = self.fault
        if f.site:
            return self.agent.load.mode == "grid_meter"
        if f.kind == FaultKind.READER:
            return FaultKind.READER not in self.agent.station.station_faults
        return f.kind not in self.evse.faults

    def ev_sees(self) -> str:
        e = self.evse
        fb = e.hw.contactor.feedback_closed()
        lock = e.hw.lock.locked if e.hw.lock is not None else None
        return (f"pilot {e.pilot.value}, offer {e.offered_a:g} A, draws {self.sim.current():g} A, "
                f"coil {'closed' if e.hw.contactor.commanded_closed else 'open'}"
                f"{', contacts closed' if fb and not e.hw.contactor.commanded_closed else ''}"
                f"{', plug locked' if lock else ''}")

    # ------------------------------------------------------------ the fault

    def inject(self) -> None:
        name, hal = self.fault.name, self.hal
        bridge = self.bridge
        if name == "meter_silent":
            assert bridge is not None
            bridge.unit.silent = True
        elif name == "meter_negative":
            assert bridge is not None
            bridge.energy_kwh = -5.0
        elif name == "meter_backwards":
            assert bridge is not None
            bridge.energy_kwh = START_KWH - 100.0
        elif name == "meter_nan":
            assert bridge is not None
            bridge.energy_kwh = math.nan
        elif name == "pilot_f":
            hal.set_ev_state(1, "F")
        elif name == "diode":
            hal.fail_diode(1)
        elif name == "reader_gone":
            hal.inject_fault(0, FaultKind.READER)
        elif name == "grid_meter_gone":
            hal.grid_meter_silent = True
        else:
            hal.inject_fault(1, self.fault.kind)

    def clear(self) -> None:
        name, hal = self.fault.name, self.hal
        bridge = self.bridge
        if bridge is not None:
            bridge.unit.silent = False
            bridge.energy_kwh = None
        elif name == "reader_gone":
            hal.clear_fault(0, FaultKind.READER)
        elif name == "grid_meter_gone":
            hal.grid_meter_silent = False
        else:
            hal.clear_fault(1, self.fault.kind)

    # ------------------------------------------------------------ the scenario

    async def play(self) -> Run:
        f, run = self.fault, self.run
        hal = self.hal
        hal.plug(1)
        hal.tap(CARD, 1)
        if not await self.until(self.charging, "charging before the fault"):
            return run
        tx_before = self.evse.tx.local_id if self.evse.tx else None
        await self.drain()
        since = self.mark()
        self.inject()
        if f.moved:
            # A welded contact and a lock that does not move show when they are told to move:
            # the driver ends the session with the card.
            hal.tap(CARD, 1)
        if not await self.until(self.raised, "the fault raised"):
            return run
        await self.drain()
        run.ev_during = self.ev_sees()
        tx = self.evse.session.tx if self.evse.session else None
        if tx is not None and tx.closed:
            run.session = f"ended ({tx.stop_reason})"
        elif self.evse.tx is not None:
            run.session = "kept, " + ("charging" if self.charging() else "no energy")
        else:
            run.session = "ended" if tx_before else "none"
        said = self.said(since)
        run.csms_during = [s for a, p in said if (s := _summary(a, p))]
        self._check_during(said)
        if f.blocking and f.kind != FaultKind.PILOT:
            # Another card while faulted: the contactor must stay open.
            hal.tap("HF-OTHER", 1)
            await self.clock.advance(POLL_S)
            await self.agent.station.quiet()
            if self.evse.hw.contactor.commanded_closed:
                run.problem("a card closed the contactor while faulted")
        if f.kind == FaultKind.READER and hal.tap("HF-LOST", 1):
            run.problem("a tap went through a reader that is gone")
        since = self.mark()
        self.clear()
        await self.until(self.cleared, "the fault cleared")
        await self.recover(tx_before)
        await self.drain()
        said = self.said(since)
        run.csms_cleared = [s for a, p in said if (s := _summary(a, p))]
        self._check_cleared(said)
        if self.closes_while_faulted:
            run.problem(f"the contactor closed {self.closes_while_faulted} time(s) while "
                        "faulted")
        if self.offers_while_faulted:
            run.problem(f"offers while faulted: {self.offers_while_faulted}")
        return run

    async def recover(self, tx_before: str | None) -> None:
        """After the clearing: the same session charges on, or the EV leaves (Available) and
        a new session charges."""
        run, hal = self.run, self.hal
        if self.fault.site:
            ok = await self.until(lambda: self.charging() and self.evse.offered_a == min(
                SITE_A - HOUSE_A, self.evse.max_current_a), "the measured headroom again")
            run.recovery = (f"offer back to {self.evse.offered_a:g} A, same transaction"
                            if ok else "no")
            return
        if self.evse.tx is not None and self.evse.tx.local_id == tx_before:
            if await self.until(self.charging, "charging again in the same transaction",
                                steps=5):
                run.recovery = "same transaction charges again"
                return
            run.problems.pop()  # not a problem by itself: a new session must then work
        hal.unplug(1)
        if not await self.until(lambda: self.evse.status == ConnectorStatus.AVAILABLE
                                and self.evse.session is None, "Available after the unplug"):
            run.recovery = "not Available"
            return
        hal.plug(1)
        hal.tap(CARD, 1)
        ok = await self.until(self.charging, "a new session charges")
        run.recovery = "Available, a new session charges" if ok else "Available, no charging"

    # ------------------------------------------------------------ the CSMS's view

    def _check_during(self, said: list[tuple[str, dict]]) -> None:
        f, run, v = self.fault, self.run, self.version
        e = self.evse
        if f.blocking:
            if e.hw.contactor.commanded_closed or e.offered_a > 0 or self.sim.current() > 0:
                run.problem(f"energy not stopped: {self.ev_sees()}")
            if e.status != ConnectorStatus.FAULTED:
                run.problem(f"status {e.status.value}, expected Faulted")
        elif f.site:
            if e.offered_a != FALLBACK_A:
                run.problem(f"offer {e.offered_a} A, expected the fallback {FALLBACK_A} A")
        elif not self.charging():
            run.problem(f"a non-blocking fault stopped the charging: {self.ev_sees()}")
        if f.kind == FaultKind.WELDED and e.hw.lock is not None and not e.hw.lock.locked:
            run.problem("the plug was unlocked with the contacts welded (live pins)")
        statuses = [p for a, p in said if a == "StatusNotification"]
        if v == "1.6":
            where = 0 if f.kind == FaultKind.READER or f.site else 1
            want = "Faulted" if f.blocking else None
            hits = [p for p in statuses if p["connectorId"] == where
                    and p["errorCode"] == f.code16 and (want is None or p["status"] == want)]
            if not hits:
                run.problem(f"no StatusNotification connector {where} errorCode {f.code16}"
                            f"{' Faulted' if want else ''}")
            for p in statuses:
                if p["errorCode"] == "EVCommunicationError" and p["status"] not in (
                        "Preparing", "SuspendedEV", "SuspendedEVSE", "Finishing"):
                    run.problem(f"EVCommunicationError with status {p['status']} (1.6 4.9: "
                                "only with Preparing, SuspendedEV/EVSE, Finishing)")
        else:
            events = [e for a, p in said if a == "NotifyEvent" for e in p["eventData"]
                      if e["variable"]["name"] != "AvailabilityState"]
            if not any(ev["component"]["name"] == f.component and ev["actualValue"] == "true"
                       for ev in events):
                run.problem(f"no NotifyEvent {f.component} = true")
            if f.blocking and not any(p["connectorStatus"] == "Faulted" for p in statuses):
                run.problem("no StatusNotification Faulted")
            for a, p in said:
                if (a == "TransactionEvent" and p["eventType"] == "Updated" and f.blocking
                        and p["transactionInfo"].get("chargingState") in (
                            "SuspendedEVSE", "EVConnected")
                        and p["triggerReason"] != "AbnormalCondition"):
                    run.problem(f"TransactionEvent for the fault with trigger "
                                f"{p['triggerReason']}, expected AbnormalCondition")

    def _check_cleared(self, said: list[tuple[str, dict]]) -> None:
        f, run, v = self.fault, self.run, self.version
        statuses = [p for a, p in said if a == "StatusNotification"]
        if v == "1.6":
            where = 0 if f.kind == FaultKind.READER or f.site else 1
            last = [p for p in statuses if p["connectorId"] == where]
            if not last or last[-1]["errorCode"] != "NoError":
                run.problem(f"connector {where}'s last status after the clearing is not "
                            f"NoError: {last[-1] if last else 'none sent'}")
        else:
            events = [e for a, p in said if a == "NotifyEvent" for e in p["eventData"]
                      if e["variable"]["name"] != "AvailabilityState"]
            if not any(ev["component"]["name"] == f.component and ev["actualValue"] == "false"
                       and ev.get("cleared") for ev in events):
                run.problem(f"no NotifyEvent {f.component} = false, cleared")
            if f.blocking and statuses and statuses[-1]["connectorStatus"] == "Faulted":
                run.problem("still Faulted at the CSMS after the clearing")
        if self.fault.blocking and not self.run.recovery.endswith("charges") and \
                "charges again" not in self.run.recovery:
            run.problem(f"no recovery: {self.run.recovery}")


# ---------------------------------------------------------------- the campaign


async def play(fault: Fault, version: str, csms: TestCsms, root: Path, n: int) -> Run:
    t0 = time.perf_counter()
    sc = Scenario(fault, version, csms, root, n)
    try:
        await sc.start()
        run = await sc.play()
    except Exception as exc:  # noqa: BLE001 - a crash is a finding, the campaign goes on
        logging.getLogger("hardware_faults").exception("%s on %s", fault.name, version)
        sc.run.problem(f"crashed: {exc!r}")
        run = sc.run
    finally:
        with contextlib.suppress(Exception):
            await sc.stop()
    run.seconds = time.perf_counter() - t0
    return run


def plan(faults: list[str], versions: tuple[str, ...], quick: bool) -> list[tuple[str, str]]:
    """Every fault on every version; quick: each fault once, the versions taking turns."""
    if quick:
        return [(f, versions[i % len(versions)]) for i, f in enumerate(faults)]
    return [(f, v) for f in faults for v in versions]


def table(runs: list[Run]) -> str:
    """Markdown: one row per fault, what the EV sees and what each version's CSMS sees."""
    by: dict[str, dict[str, Run]] = {}
    for r in runs:
        by.setdefault(r.fault.name, {})[r.version] = r
    cols = [v for v in VERSIONS if any(v in d for d in by.values())]
    lines = ["| fault | EV / session | " + " | ".join(f"CSMS {v}" for v in cols)
             + " | recovery |", "| --- | --- | " + " | ".join("---" for _ in cols) + " | --- |"]
    for d in by.values():
        first = next(iter(d.values()))
        cells = []
        for v in cols:
            r = d.get(v)
            cells.append("; ".join(dict.fromkeys(r.csms_during)) if r else "")
        lines.append(f"| {first.fault.what} | {first.ev_during}; session {first.session} | "
                     + " | ".join(cells) + f" | {first.recovery} |")
    return "\n".join(lines)


async def campaign(faults: list[str], versions: tuple[str, ...], count: int,
                   quick: bool) -> tuple[list[Run], float]:
    root = Path(tempfile.mkdtemp(prefix="cpa-hwf-", dir="/tmp"))
    servers = {v: TestCsms(versions=(v,), strict_timing=False) for v in versions}
    runs: list[Run] = []
    t0 = time.perf_counter()
    try:
        for s in servers.values():
            await s.start()
        n = 0
        for _ in range(count):
            for fault, version in plan(faults, versions, quick):
                n += 1
                runs.append(await play(FAULTS[fault], version, servers[version], root, n))
        for v, s in servers.items():
            for text in s.violations:
                runs.append(Run(FAULTS[faults[0]], v, problems=[f"{v}: CSMS: {text}"]))
            for text in s.internal_errors:
                runs.append(Run(FAULTS[faults[0]], v, problems=[f"{v}: test CSMS: {text}"]))
    finally:
        for s in servers.values():
            await s.stop()
        shutil.rmtree(root, ignore_errors=True)
    return runs, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.soak.hardware_faults",
                                description=__doc__.splitlines()[0])
    p.add_argument("--faults", default="all", help=f"comma-separated of {', '.join(FAULTS)}")
    p.add_argument("--versions", default=",".join(VERSIONS))
    p.add_argument("--count", type=int, default=1, help="rounds of every fault x version")
    p.add_argument("--quick", action="store_true",
                   help="each fault once, on the versions in turn (what the suite runs)")
    ns = p.parse_args(argv)
    faults = list(FAULTS) if ns.faults == "all" else [x.strip() for x in ns.faults.split(",")]
    unknown = [x for x in faults if x not in FAULTS]
    if unknown:
        p.error(f"unknown faults {unknown}; choose from {', '.join(FAULTS)}")
    versions = tuple(v.strip() for v in ns.versions.split(",") if v.strip())
    logging.getLogger().setLevel(logging.CRITICAL)
    runs, elapsed = asyncio.run(campaign(faults, versions, max(1, ns.count), ns.quick))
    problems = [p for r in runs for p in r.problems]
    played = [r for r in runs if r.seconds]
    report = Report("hardware_faults", ns.quick)
    report.add("fault scenarios played", len(played), "",
               note=f"{len({r.fault.name for r in played})} faults x "
                    f"{len({r.version for r in played})} versions, {elapsed:.1f} s")
    report.add("scenarios with a problem", len({(r.fault.name, r.version) for r in runs
                                                if r.problems}), "")
    report.add("contactor closes while faulted", sum(
        p.count("contactor closed") for p in problems), "")
    report.add("recovered (same session or a new one charges)", sum(
        1 for r in played if "charges" in r.recovery or "back to" in r.recovery), "",
        note=f"of {len(played)}")
    report.add("slowest scenario", max((r.seconds for r in played), default=0.0), "s")
    report.details.update(
        runs=[{"fault": r.fault.name, "version": r.version, "ev": r.ev_during,
               "session": r.session, "csms_during": r.csms_during,
               "csms_cleared": r.csms_cleared, "recovery": r.recovery,
               "problems": r.problems, "seconds": round(r.seconds, 2)} for r in runs],
        problems=problems)
    print(table(played))
    report.emit()
    for text in problems:
        print("PROBLEM " + text, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
