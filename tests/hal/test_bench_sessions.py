"""The whole agent charges a full OCPP 1.6 session on each driver combination a bench rig
would use: `Agent` as `cp-agent run` builds it, the strict test CSMS over a real websocket,
and underneath the hardware HAL built by hal.factory from YAML, its real drivers talking to
simulated devices (pymodbus servers on a pty / on 127.0.0.1, gpiozero mock pins with the
contactor's feedback wired to its coil, a fake I2C bus with a PN532 and an ADS1115, a pty
serial reader, a fake evdev keyboard)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory, MockPWMPin
from halsim import (
    FakeAds1115,
    FakeInputDevice,
    FakePn532,
    FakeSMBus,
    ModbusSim,
    PilotCircuit,
    Pty,
    evse_wb_unit,
    example_bench_rig,
    phoenix_unit,
    put,
    sdm120_unit,
    sdm630_unit,
    set_sdm_energy,
    set_sunspec_energy,
    sunspec_unit,
    wire,
    wire_lock,
)

from agent.app import Agent
from agent.config import load_config_text
from agent.doctor import doctor
from hal.drivers.hardware import HardwareHal
from hal.factory import build_hal, parse_hal_config

FAST_BUS = {"timeout_s": 0.1, "retries": 1}


def rdm_frame(tag_hex: str) -> bytes:
    x = 0
    for b in bytes.fromhex(tag_hex):
        x ^= b
    return b"\x02" + tag_hex.encode() + f"{x:02X}".encode() + b"\x03"


class Rig:
    """One bench rig: simulated devices, the hal: section that points at them, and the
    hands of the person at the bench (plug, tap, meter advancing)."""

    evse_ids = [1]

    def __init__(self) -> None:
        self.pin_factory = MockFactory(pin_class=MockPWMPin)
        self.smbus = FakeSMBus()
        self.keyboard: FakeInputDevice | None = None
        self.sims: list[ModbusSim] = []
        self.ptys: list[Pty] = []
        self.hal_raw: dict[str, Any] = {}

    async def start(self) -> None:
        raise NotImplementedError

    def build(self) -> HardwareHal:
        cfg = parse_hal_config(self.hal_raw, self.evse_ids)
        hal = build_hal(cfg, pin_factory=self.pin_factory, i2c_opener=self.smbus.opener,
                        evdev_opener=(lambda path: self.keyboard) if self.keyboard else None)
        assert isinstance(hal, HardwareHal)
        return hal

    def coil(self, pin: int) -> bool:
        return bool(self.pin_factory.pin(pin).state)

    async def stop(self) -> None:
        for sim in self.sims:
            await sim.stop()
        for pty in self.ptys:
            pty.close()
        self.pin_factory.reset()


class EvseWbRig(Rig):
    """RS-485 line with an SDM630 (id 1) and an EVSE-WB (id 2); PN532 on I2C."""

    name = "evse_wb+sdm630+pn532"

    async def start(self) -> None:
        self.meter = sdm630_unit(1, kwh=1234.5, power=0.0)
        self.board = evse_wb_unit(2, vehicle_state=1)
        self.board.on_write = self._written
        self.plugged = False
        sim = ModbusSim(self.meter, self.board)
        self.sims.append(sim)
        port = await sim.start_rtu(9600)
        self.pn532 = FakePn532()
        self.smbus.devices[0x24] = self.pn532
        wire(self.pin_factory, 17, 27)
        self.hal_raw = {
            "driver": "hardware",
            "modbus": {"rs485": {"type": "rtu", "port": port, "baudrate": 9600, **FAST_BUS}},
            "evses": [{
                "id": 1,
                "contactor": {"coil": 17, "feedback": {"pin": 27, "pull": "down"},
                              "settle_s": 0.1},
                "meter": {"type": "sdm630", "bus": "rs485", "unit_id": 1},
                "ev": {"type": "evse_wb", "bus": "rs485", "unit_id": 2,
                       "poll_interval_s": 0.05},
                "indicator": {"available": 22, "charging": 23, "fault": 24},
            }],
            "readers": [{"type": "pn532", "name": "front", "i2c_bus": 1,
                         "poll_interval_s": 0.05}],
        }

    def _written(self, fc: int, address: int, values: list) -> None:
        if fc == 6 and address == 1000 and self.plugged:  # the car reacts to the offer
            self.board.holding[1002] = 3 if values[0] >= 6 else 2

    def plug(self, evse: int = 1) -> None:
        self.plugged = True
        self.board.holding[1002] = 3 if self.board.holding[1000] >= 6 else 2

    def unplug(self, evse: int = 1) -> None:
        self.plugged = False
        self.board.holding[1002] = 1

    def tap(self, uid: str) -> None:
        self.pn532.card = bytes.fromhex(uid)

    def meter_to(self, kwh: float, evse: int = 1) -> None:
        set_sdm_energy(self.meter, kwh, 7000.0)

    def offered(self, evse: int = 1) -> float:
        return self.board.holding[1000]

    def coil_pin(self, evse: int = 1) -> int:
        return 17


class DirectPilotRig(Rig):
    """The Pi generates the pilot (GPIO PWM) and reads it through an ADS1115; SDM120 on
    RS-485; an RDM6300 on a serial line."""

    name = "direct_pilot+sdm120+rdm6300"

    async def start(self) -> None:
        self.meter = sdm120_unit(3, kwh=50.0, power=0.0)
        sim = ModbusSim(self.meter)
        self.sims.append(sim)
        port = await sim.start_rtu(9600)
        self.reader_pty = Pty()
        self.ptys.append(self.reader_pty)
        pwm_pin = self.pin_factory.pin(18)
        self.circuit = PilotCircuit(lambda: float(pwm_pin.state))
        self.circuit.state = None  # behave like a car
        self.smbus.devices[0x48] = FakeAds1115(self.circuit.adc_volts)
        wire(self.pin_factory, 16, 20)
        self.hal_raw = {
            "driver": "hardware",
            "modbus": {"rs485": {"type": "rtu", "port": port, "baudrate": 9600, **FAST_BUS}},
            "evses": [{
                "id": 1,
                "contactor": {"coil": 16, "feedback": {"pin": 20, "pull": "down"},
                              "settle_s": 0.1},
                "meter": {"type": "sdm120", "bus": "rs485", "unit_id": 3},
                "ev": {"type": "direct_pilot",
                       "pwm": {"type": "gpio", "pin": 18},
                       "adc": {"i2c_bus": 1, "high": {"channel": 0, "scale": 4.0},
                               "low": {"channel": 1, "scale": -4.0}},
                       "poll_interval_s": 0.02},
            }],
            "readers": [{"type": "rdm6300", "name": "door", "port": self.reader_pty.path}],
        }

    def plug(self, evse: int = 1) -> None:
        self.circuit.plugged = True

    def unplug(self, evse: int = 1) -> None:
        self.circuit.plugged = False

    def tap(self, uid: str) -> None:
        os.write(self.reader_pty.master, rdm_frame(uid))

    def meter_to(self, kwh: float, evse: int = 1) -> None:
        set_sdm_energy(self.meter, kwh, 3600.0, register_power=0x0C)

    def offered(self, evse: int = 1) -> float:
        duty = float(self.pin_factory.pin(18).state)
        return 0.0 if duty >= 1.0 else duty * 100 * 0.6

    def coil_pin(self, evse: int = 1) -> int:
        return 16


class TcpRig(Rig):
    """A Phoenix Contact EV-ETH board and a SunSpec meter, each on its own Modbus TCP
    endpoint; a USB keyboard-wedge reader."""

    name = "phoenix_ev_eth+sunspec+keyboard"

    async def start(self) -> None:
        self.board = phoenix_unit(180, status="A")
        self.board.on_write = self._written
        self.meter = sunspec_unit(1, 203, wh_import=2_000_000, watts=0)
        self.plugged = False
        board_sim, meter_sim = ModbusSim(self.board), ModbusSim(self.meter)
        self.sims += [board_sim, meter_sim]
        board_port = await board_sim.start_tcp()
        meter_port = await meter_sim.start_tcp()
        self.keyboard = FakeInputDevice()
        wire(self.pin_factory, 17, 27)
        self.hal_raw = {
            "driver": "hardware",
            "modbus": {
                "wallbox": {"type": "tcp", "host": "127.0.0.1", "port": board_port, **FAST_BUS},
                "meter": {"type": "tcp", "host": "127.0.0.1", "port": meter_port, **FAST_BUS},
            },
            "evses": [{
                "id": 1,
                "contactor": {"coil": 17, "feedback": {"pin": 27, "pull": "down"},
                              "settle_s": 0.1},
                "meter": {"type": "sunspec", "bus": "meter", "unit_id": 1},
                "ev": {"type": "phoenix_ev_eth", "bus": "wallbox", "poll_interval_s": 0.05},
            }],
            "readers": [{"type": "keyboard", "name": "usb",
                         "device": "/dev/input/by-id/usb-rfid-event-kbd"}],
        }

    def _written(self, fc: int, address: int, values: list) -> None:
        if fc == 5 and address == 400 and self.plugged:
            put(self.board.input, 100, ord("C" if values[0] else "B"))

    def plug(self, evse: int = 1) -> None:
        self.plugged = True
        put(self.board.input, 100, ord("C" if self.board.coils.get(400) else "B"))

    def unplug(self, evse: int = 1) -> None:
        self.plugged = False
        put(self.board.input, 100, ord("A"))

    def tap(self, uid: str) -> None:
        assert self.keyboard is not None
        self.keyboard.type_line(uid)

    def meter_to(self, kwh: float, evse: int = 1) -> None:
        set_sunspec_energy(self.meter, 203, kwh * 1000)

    def offered(self, evse: int = 1) -> float:
        return float(self.board.holding[528]) if self.board.coils.get(400) else 0.0

    def coil_pin(self, evse: int = 1) -> int:
        return 17


class ExampleRig(Rig):
    """The bench-rig block of config.example.yaml as documented, only the RS-485 port pointed at the
    simulated line: two EVSEs (EVSE-WB + SDM630, direct pilot + SDM120) sharing one RS-485
    line, the PN532 and the ADS1115 sharing I2C bus 1."""

    name = "docs example (2 EVSEs, shared RS-485 and I2C)"
    evse_ids = [1, 2]

    async def start(self) -> None:
        raw = example_bench_rig()["hal"]
        self.meters = {1: sdm630_unit(1, kwh=100.0, power=0.0),
                       2: sdm120_unit(3, kwh=200.0, power=0.0)}
        self.board = evse_wb_unit(2, vehicle_state=1)
        self.board.on_write = self._written
        self.plugged = {1: False}
        sim = ModbusSim(self.meters[1], self.board, self.meters[2])
        self.sims.append(sim)
        raw["modbus"]["rs485"].update(port=await sim.start_rtu(9600), **FAST_BUS)
        raw["evses"][0]["ev"]["poll_interval_s"] = 0.05
        raw["evses"][1]["ev"]["poll_interval_s"] = 0.02
        raw["readers"][0]["poll_interval_s"] = 0.05
        raw["gpio"]["pin_factory"] = "default"  # the injected mock factory is used
        pwm_pin = self.pin_factory.pin(18)
        self.circuit = PilotCircuit(lambda: float(pwm_pin.state))
        self.circuit.state = None
        self.pn532 = FakePn532()
        self.smbus.devices.update({0x24: self.pn532,
                                   0x48: FakeAds1115(self.circuit.adc_volts)})
        # as in the example: aux contacts close to GND against the internal pull-up
        wire(self.pin_factory, 17, 27, to_gnd=True)
        wire(self.pin_factory, 16, 20, to_gnd=True)
        wire_lock(self.pin_factory, 5, 6, 13)  # EVSE 1's socket lock and its position switch
        self.hal_raw = raw

    def _written(self, fc: int, address: int, values: list) -> None:
        if fc == 6 and address == 1000 and self.plugged[1]:
            self.board.holding[1002] = 3 if values[0] >= 6 else 2

    def plug(self, evse: int = 1) -> None:
        if evse == 1:
            self.plugged[1] = True
            self.board.holding[1002] = 3 if self.board.holding[1000] >= 6 else 2
        else:
            self.circuit.plugged = True

    def unplug(self, evse: int = 1) -> None:
        if evse == 1:
            self.plugged[1] = False
            self.board.holding[1002] = 1
        else:
            self.circuit.plugged = False

    def tap(self, uid: str) -> None:
        self.pn532.card = bytes.fromhex(uid)

    def meter_to(self, kwh: float, evse: int = 1) -> None:
        if evse == 1:
            set_sdm_energy(self.meters[1], kwh, 7000.0)
        else:
            set_sdm_energy(self.meters[2], kwh, 3600.0, register_power=0x0C)

    def offered(self, evse: int = 1) -> float:
        if evse == 1:
            return self.board.holding[1000]
        duty = float(self.pin_factory.pin(18).state)
        return 0.0 if duty >= 1.0 else duty * 100 * 0.6

    def coil_pin(self, evse: int = 1) -> int:
        return 17 if evse == 1 else 16


def agent_config(url: str, state: Path, hal_raw: dict, evse_ids: list[int]) -> Any:
    doc = {
        "station": {"id": "RIG1"},
        "ocpp": {"url": url, "versions": ["1.6"], "call_timeout_s": 5,
                 "reconnect": {"min_backoff_s": 0.05, "max_backoff_s": 0.2},
                 "defaults": {"MeterValueSampleInterval": 1,
                              "MeterValuesSampledData": "Energy.Active.Import.Register,"
                                                        "Power.Active.Import"}},
        "storage": {"path": str(state / "rig.sqlite3"), "meter_persist_s": 1},
        "control": {"socket": str(state / "rig.sock")},
        "evses": [{"id": i, "max_current_a": 16} for i in evse_ids],
        "hal": hal_raw,
    }
    return load_config_text(json.dumps(doc), "bench-test")


@contextlib.asynccontextmanager
async def running(rig: Rig, csms: Any, state: Path):
    await rig.start()
    hal = rig.build()
    agent = Agent(agent_config(csms.url, state, rig.hal_raw, rig.evse_ids), hal=hal,
                  control=False)
    try:
        await agent.start()
        await asyncio.wait_for(agent.adapters["1.6"].accepted.wait(), 10)
        await csms.wait_for("StatusNotification", station_id="RIG1", timeout=10,
                            predicate=lambda p: p["connectorId"] == 0)
        await asyncio.wait_for(agent.ready.wait(), 10)  # every device passed its self-check
        yield agent, hal
    finally:
        await agent.stop()
        await rig.stop()


async def begin(rig: Rig, csms: Any, *, evse: int, uid: str, kwh_before: float,
                check_connector: bool = True) -> None:
    """Plug in and tap the card: the transaction starts on that EVSE (its meter's reading
    is the start value, which proves the EVSE even where connectorId is not checked)."""
    rig.plug(evse)
    rig.tap(uid)
    start = await csms.wait_for("StartTransaction", station_id="RIG1", timeout=10,
                                predicate=lambda p: p["idTag"] == uid)
    assert start["meterStart"] == int(kwh_before * 1000)
    if check_connector:
        assert start["connectorId"] == evse


async def one_session(rig: Rig, csms: Any, agent: Agent, hal: HardwareHal, *,
                      evse: int, uid: str, kwh_before: float, kwh_after: float,
                      started: bool = False) -> None:
    if not started:
        await begin(rig, csms, evse=evse, uid=uid, kwh_before=kwh_before)
    await csms.wait_for("StatusNotification", station_id="RIG1", timeout=10,
                        predicate=lambda p: p["connectorId"] == evse
                        and p["status"] == "Charging")
    assert rig.coil(rig.coil_pin(evse)), "contactor coil energised"
    assert hal.evses[evse].contactor.feedback_closed() is True
    assert rig.offered(evse) == pytest.approx(16, abs=0.01)
    rig.meter_to(kwh_after, evse)  # energy flows
    start_tx = next(tx_id for tx_id, rec in csms.transactions.items()
                    if rec["start"] is not None and rec["start"]["idTag"] == uid)
    mv = await csms.wait_for(
        "MeterValues", station_id="RIG1", timeout=10,
        predicate=lambda p: p.get("transactionId") == start_tx and any(
            v.get("measurand", "Energy.Active.Import.Register")
            == "Energy.Active.Import.Register" and float(v["value"]) >= kwh_after * 1000
            for v in p["meterValue"][0]["sampledValue"]))
    assert mv["connectorId"] == evse
    rig.unplug(evse)
    stop = await csms.wait_for("StopTransaction", station_id="RIG1", timeout=10,
                               predicate=lambda p: p["transactionId"] == start_tx)
    assert stop["reason"] == "EVDisconnected"
    assert stop["meterStop"] == int(kwh_after * 1000)
    await csms.wait_for("StatusNotification", station_id="RIG1", timeout=10,
                        predicate=lambda p: p["connectorId"] == evse
                        and p["status"] == "Available", count=2)
    assert not rig.coil(rig.coil_pin(evse)), "contactor opened after the session"
    assert rig.offered(evse) == 0


@pytest.mark.parametrize("rig_class", [EvseWbRig, DirectPilotRig, TcpRig],
                         ids=lambda c: c.name)
async def test_full_session(rig_class, csms, short_dir):
    rig = rig_class()
    async with running(rig, csms, short_dir) as (agent, hal):
        uid = "04A1B2C3D4E5F6" if rig_class is not DirectPilotRig else "0400A1B2C3"
        kwh = {EvseWbRig: 1234.5, DirectPilotRig: 50.0, TcpRig: 2000.0}[rig_class]
        await one_session(rig, csms, agent, hal, evse=1, uid=uid, kwh_before=kwh,
                          kwh_after=kwh + 7.5)
        assert all(r.ok for r in await hal.self_check())


async def test_example_rig_two_sessions_at_once(csms, short_dir):
    rig = ExampleRig()
    async with running(rig, csms, short_dir) as (agent, hal):
        # one shared reader: the two cards are tapped one after the other
        await begin(rig, csms, evse=1, uid="04000001", kwh_before=100.0)
        await begin(rig, csms, evse=2, uid="04000002", kwh_before=200.0)
        assert hal.evses[1].lock.locked, "the socket is locked before energy flows"
        await asyncio.gather(
            one_session(rig, csms, agent, hal, evse=1, uid="04000001", kwh_before=100.0,
                        kwh_after=104.0, started=True),
            one_session(rig, csms, agent, hal, evse=2, uid="04000002", kwh_before=200.0,
                        kwh_after=202.5, started=True))
        assert not hal.evses[1].lock.locked, "released once the session is over"


async def test_start_transaction_names_the_second_evse(csms, short_dir):
    rig = ExampleRig()
    async with running(rig, csms, short_dir):
        await begin(rig, csms, evse=2, uid="04000002", kwh_before=200.0)


async def test_meter_silent_mid_session_reaches_the_csms(csms, short_dir):
    rig = EvseWbRig()
    async with running(rig, csms, short_dir) as (agent, hal):
        rig.plug()
        rig.tap("04A1B2C3")
        await csms.wait_for("StatusNotification", station_id="RIG1", timeout=10,
                            predicate=lambda p: p["status"] == "Charging")
        rig.meter.silent = True  # the meter stops answering on the shared line
        fault = await csms.wait_for("StatusNotification", station_id="RIG1", timeout=15,
                                    predicate=lambda p: p["connectorId"] == 1
                                    and p["errorCode"] != "NoError")
        assert fault["status"] == "Faulted"
        assert not rig.coil(17), "no metering, no charging"
        rig.meter.silent = False
        await csms.wait_for("StatusNotification", station_id="RIG1", timeout=15,
                            predicate=lambda p: p["connectorId"] == 1
                            and p["errorCode"] == "NoError" and p["status"] != "Faulted",
                            count=1)


async def test_not_ready_while_a_required_device_fails(csms, short_dir):
    rig = EvseWbRig()
    await rig.start()
    rig.board.silent = True  # the EVSE board is off when the agent starts
    hal = rig.build()
    agent = Agent(agent_config(csms.url, short_dir, rig.hal_raw, [1]), hal=hal, control=False)
    try:
        await agent.start()
        await asyncio.wait_for(agent.adapters["1.6"].accepted.wait(), 10)
        results = await hal.self_check()
        bad = [r for r in results if not r.ok]
        assert [r.device.split(" (")[0] for r in bad] == ["evse 1 EV board"]
        assert "no answer from device id 2" in bad[0].detail
        assert not agent.ready.is_set()
    finally:
        await agent.stop()
        await rig.stop()


async def test_doctor_passes_on_a_working_rig_and_names_the_silent_board():
    rig = EvseWbRig()
    await rig.start()
    try:
        cfg = parse_hal_config(rig.hal_raw, [1])
        out = io.StringIO()
        assert await doctor(cfg, out, hal=rig.build()) == 0
        lines = out.getvalue().splitlines()
        assert all(line.startswith("PASS  ") for line in lines[:-1]), lines
        assert "evse 1 meter (sdm630, id 1" in out.getvalue()
        assert "1234.500 kWh imported" in out.getvalue()
        assert "PN532 firmware 1.6" in out.getvalue()
        assert lines[-1].endswith("every required device answers.")
        rig.board.silent = True
        out = io.StringIO()
        assert await doctor(cfg, out, hal=rig.build()) == 1
        board = [line for line in out.getvalue().splitlines() if "EV board" in line]
        assert board[0].startswith("FAIL  evse 1 EV board (evse_wb, id 2")
        assert "no answer from device id 2" in board[0]
        assert not rig.coil(17), "the doctor never closes a contactor"
    finally:
        await rig.stop()
