"""Local load management with a real grid meter driver: an SDM630 of the whole connection,
simulated by a pymodbus server on 127.0.0.1 (Modbus TCP), declared as ``site.grid_meter``
the way config.example.yaml shows, read by the real driver through the agent's config path.

Two EVSEs (an SDM630 and an EVSE-WB board each, on a simulated RS-485 line) charge against
the strict test CSMS. The site is a small physical model: each EV draws what its board
offers, the EVSE meters show it, and the grid meter shows the house load plus both EVs, so
the shares can only follow the house load if the agent really reads the grid meter. Then
the grid meter stops answering and the site falls back to ``fallback_current_a``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from gpiozero.pins.mock import MockFactory, MockPWMPin
from halsim import ModbusSim, SimUnit, evse_wb_unit, f32, put, sdm630_unit, wire

from agent.app import Agent
from agent.config import load_config_text
from hal.drivers.hardware import HardwareHal
from hal.factory import build_hal, parse_hal_config
from tests.conftest import eventually, strict_csms

FAST_BUS = {"timeout_s": 0.1, "retries": 1}
SITE_A = 40.0  # the connection's limit per phase
FALLBACK_A = 16.0
EVSES = {1: {"meter": 1, "board": 2, "coil": 17, "feedback": 27},
         2: {"meter": 3, "board": 4, "coil": 16, "feedback": 20}}
STATE_B, STATE_C = 2, 3  # EVSE-WB vehicle state register (1002): connected, charging


class Site:
    """The connection: the house load and two EVs, as the meters see them."""

    def __init__(self, pins: MockFactory) -> None:
        self.pins = pins
        self.house_a = 0.0
        self.grid = sdm630_unit(5, amps=(0.0, 0.0, 0.0), power=0.0, kwh=5000.0)
        self.meters = {i: sdm630_unit(e["meter"], amps=(0.0, 0.0, 0.0), power=0.0, kwh=10.0)
                       for i, e in EVSES.items()}
        self.boards = {i: evse_wb_unit(e["board"], vehicle_state=1, default_amps=0)
                       for i, e in EVSES.items()}
        self.plugged: set[int] = set()
        for i, board in self.boards.items():
            board.on_write = lambda fc, address, values, i=i: self._written(i, fc, address)

    def offered(self, evse: int) -> int:
        return self.boards[evse].holding[1000]

    def closed(self, evse: int) -> bool:
        return bool(self.pins.pin(EVSES[evse]["coil"]).state)

    def drawn(self, evse: int) -> float:
        """Current flows when the EV charges (C) and the contactor is closed."""
        charging = self.boards[evse].holding[1002] == STATE_C and self.closed(evse)
        return float(self.offered(evse)) if charging else 0.0

    def _written(self, evse: int, fc: int, address: int) -> None:
        if fc == 6 and address == 1000 and evse in self.plugged:  # the EV takes the offer
            self.boards[evse].holding[1002] = STATE_C if self.offered(evse) >= 6 else STATE_B
        self.update()

    def plug(self, evse: int) -> None:
        self.plugged.add(evse)
        self.boards[evse].holding[1002] = STATE_B
        self.update()

    def unplug(self, evse: int) -> None:
        self.plugged.discard(evse)
        self.boards[evse].holding[1002] = 1
        self.update()

    def set_house(self, amps: float) -> None:
        self.house_a = amps
        self.update()

    def update(self) -> None:
        """Every meter's registers from the state now (the same on all three phases)."""
        total = self.house_a
        for evse, meter in self.meters.items():
            amps = self.drawn(evse)
            total += amps
            _currents(meter, amps)
        _currents(self.grid, total)


def _currents(unit: SimUnit, amps: float) -> None:
    for phase in range(3):
        put(unit.input, 0x06 + 2 * phase, f32(amps))
    put(unit.input, 0x34, f32(amps * 230.0 * 3))


def _config(url: str, state: Path, lan_port: int, grid_port: int) -> Any:
    hal = {
        "driver": "hardware",
        "modbus": {"lan": {"type": "tcp", "host": "127.0.0.1", "port": lan_port, **FAST_BUS},
                   "grid": {"type": "tcp", "host": "127.0.0.1", "port": grid_port,
                            **FAST_BUS}},
        "evses": [{
            "id": i,
            "contactor": {"coil": e["coil"], "feedback": {"pin": e["feedback"], "pull": "down"},
                          "settle_s": 0.1},
            "meter": {"type": "sdm630", "bus": "lan", "unit_id": e["meter"]},
            "ev": {"type": "evse_wb", "bus": "lan", "unit_id": e["board"],
                   "poll_interval_s": 0.05},
        } for i, e in EVSES.items()],
    }
    doc = {
        "station": {"id": "SITE1"},
        "ocpp": {"url": url, "versions": ["1.6"], "call_timeout_s": 5,
                 "reconnect": {"min_backoff_s": 0.05, "max_backoff_s": 0.2}},
        "storage": {"path": str(state / "site.sqlite3")},
        "control": {"socket": str(state / "site.sock")},
        "evses": [{"id": i, "max_current_a": 32} for i in EVSES],
        "hal": hal,
        # As config.example.yaml declares it: a meter like any other, on a hal.modbus bus.
        "site": {"max_current_a": SITE_A, "fallback_current_a": FALLBACK_A,
                 "grid_meter": {"type": "sdm630", "bus": "grid", "unit_id": 5}},
    }
    return load_config_text(json.dumps(doc), "grid-meter-test")


@pytest.fixture
async def site_rig(short_dir):  # noqa: ANN201 - (agent, site, grid sim)
    pins = MockFactory(pin_class=MockPWMPin)
    for e in EVSES.values():
        wire(pins, e["coil"], e["feedback"])
    site = Site(pins)
    lan = ModbusSim(site.meters[1], site.boards[1], site.meters[2], site.boards[2])
    grid = ModbusSim(site.grid)
    lan_port = await lan.start_tcp()
    grid_port = await grid.start_tcp()
    agent = None
    try:
        async with strict_csms(("1.6",)) as csms:
            cfg = _config(csms.url, short_dir, lan_port, grid_port)
            hal = build_hal(parse_hal_config(cfg.hal, cfg.evse_ids), pin_factory=pins)
            assert isinstance(hal, HardwareHal)
            agent = Agent(cfg, hal=hal, control=False)
            await agent.start()
            await eventually(lambda: agent.adapter.registration == "Accepted", "the boot")
            yield agent, site, csms
    finally:
        if agent is not None:
            await agent.stop()
        await lan.stop()
        await grid.stop()
        pins.reset()


async def _sample(agent: Agent) -> dict:
    """One load-management sample now (the task takes one every second as well)."""
    await agent.load.step()
    return agent.load.status()


async def test_shares_follow_the_modbus_grid_meter_and_fall_back_when_it_is_silent(site_rig):
    agent, site, csms = site_rig
    assert agent.load.grid_meter is not None and "site grid meter (sdm630, id 5 on grid)" in [
        getattr(d, "label", "") for d in agent.hal.devices]
    for evse in (1, 2):
        site.plug(evse)
        await eventually(lambda evse=evse: agent.station.evses[evse].ev_connected,
                         f"EV {evse} plugged")
        result = await agent.handle_control({"cmd": "tap",
                                             "args": {"token": f"CARD{evse}", "evse": evse}})
        assert result["tap"]["result"] == "authorized", result
        await csms.wait_for("StartTransaction", station_id="SITE1",
                            predicate=lambda p, evse=evse: p["connectorId"] == evse)

    def offers_are(expected: dict[int, int]) -> bool:
        """The boards offer ``expected`` and the contactors follow (those below 6 A open)."""
        site.update()  # the EVs draw through the contactors as they are now
        return all(site.offered(i) == a and site.closed(i) == (a >= 6)
                   for i, a in expected.items())

    async def shares_become(house: float, expected: dict[int, int]) -> dict:
        site.set_house(house)
        status = await _sample(agent)
        await eventually(lambda: offers_are(expected),
                         f"offers {expected} with the house at {house} A")
        # The EVs took the new offers: the next samples see the same headroom.
        status = await _sample(agent)
        assert status["mode"] == "grid_meter"
        assert status["grid_current_a"] == pytest.approx([house + sum(expected.values())] * 3)
        assert status["headroom_a"] == pytest.approx(SITE_A - house)
        assert {i: site.drawn(i) for i in EVSES} == {i: float(a) if a >= 6 else 0.0
                                                      for i, a in expected.items()}
        return status

    await shares_become(10.0, {1: 15, 2: 15})     # 30 A left: 15 A each
    await shares_become(22.0, {1: 9, 2: 9})       # 18 A left: 9 A each
    status = await shares_become(30.0, {1: 10, 2: 0})  # 10 A: the newest session pauses
    assert agent.station.evses[2].limit_source == "site"
    assert agent.station.evses[2].status.value == "SuspendedEVSE"
    await shares_become(4.0, {1: 18, 2: 18})      # room again: both charge
    assert status["fallback"] is False

    # The grid meter stops answering: one or two lost reads keep the shares, then fallback.
    site.grid.silent = True
    status = await _sample(agent)
    assert status["mode"] == "grid_meter" and {i: site.offered(i) for i in EVSES} == \
        {1: 18, 2: 18}
    for _ in range(2):
        status = await _sample(agent)
    assert status["mode"] == "fallback" and status["fallback"] is True
    await eventually(lambda: offers_are({1: 8, 2: 8}), "the fallback's 16 A shared")
    assert sum(site.drawn(i) for i in EVSES) <= FALLBACK_A

    # It answers again: the measured headroom counts once more.
    site.grid.silent = False
    site.set_house(20.0)
    status = await _sample(agent)
    assert status["mode"] == "grid_meter"
    await eventually(lambda: offers_are({1: 10, 2: 10}), "20 A left shared again")
