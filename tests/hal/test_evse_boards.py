"""EVSE controller boards over Modbus: EVSE-WB on RTU (pty), Phoenix EV-ETH on TCP."""

from __future__ import annotations

import asyncio

import pytest
from halsim import ModbusSim, evse_wb_unit, phoenix_unit, put

from hal.drivers.evse_boards import EvseWbBoard, PhoenixEvEth
from hal.drivers.modbus_bus import ModbusBus, RtuLink, TcpLink
from hal.interfaces import FaultCleared, FaultKind, FaultRaised, HalError, PilotChanged, PilotState

FAST = dict(timeout_s=0.15, retries=1)


@pytest.fixture
async def wb(sink):
    unit = evse_wb_unit(2, vehicle_state=1, default_amps=16)
    sim = ModbusSim(unit)
    path = await sim.start_rtu(9600)
    bus = ModbusBus("rs485", RtuLink(path, baudrate=9600), **FAST)
    board = EvseWbBoard(1, bus, 2, sink=sink, poll_interval_s=0.02)
    yield unit, board
    await board.close()
    await bus.close()
    await sim.stop()


async def test_evse_wb_pilot_states_and_limit(wb, events):
    unit, board = wb
    await board.open()
    assert board.pilot_state() == PilotState.A
    assert not events.events  # A at start is not a change
    for value, state in ((2, PilotState.B), (3, PilotState.C), (4, PilotState.D),
                         (5, PilotState.F), (1, PilotState.A)):
        unit.holding[1002] = value
        await board.poll_once()
        assert board.pilot_state() == state
        assert events.events[-1] == PilotChanged(1, state)
    await board.set_current_limit(16.9)  # whole amps, rounded down
    assert unit.holding[1000] == 16 and board.current_limit == 16.0
    await board.set_current_limit(5.0)  # below the IEC minimum: no offer
    assert unit.holding[1000] == 0 and board.current_limit == 0.0
    await board.set_current_limit(100)
    assert unit.holding[1000] == 80
    probe = await board.probe()
    assert probe.ok and "firmware 18" in probe.detail


async def test_evse_wb_board_reset_restores_our_limit(wb):
    unit, board = wb
    await board.open()
    await board.set_current_limit(10)
    unit.holding[1000] = unit.holding[2000]  # the board rebooted into its EEPROM default
    await board.poll_once()
    assert unit.holding[1000] == 10


async def test_evse_wb_background_poll_and_silence(wb, events):
    unit, board = wb
    await board.open()
    task = asyncio.create_task(board.background()())
    try:
        unit.holding[1002] = 2
        await events.wait_for(lambda e: e == PilotChanged(1, PilotState.B))
        unit.silent = True  # the board stops answering mid-session
        fault = await events.wait_for(lambda e: isinstance(e, FaultRaised))
        assert fault.kind == FaultKind.EV_BOARD and "device id 2" in fault.detail
        # we no longer know what the EV does: report an error state, never a stale C
        await events.wait_for(lambda e: e == PilotChanged(1, PilotState.F))
        assert board.pilot_state() == PilotState.F
        with pytest.raises(HalError) as exc:
            await board.set_current_limit(16)
        assert exc.value.kind == FaultKind.EV_BOARD
        assert len(events.of(FaultRaised)) == 1  # one fault, however many failed polls
        unit.silent = False
        await events.wait_for(lambda e: e == FaultCleared(1, FaultKind.EV_BOARD))
        await events.wait_for(lambda e: e == PilotChanged(1, PilotState.B))
    finally:
        await board.close()
        await asyncio.wait_for(task, 2)


@pytest.fixture
async def phoenix(sink):
    unit = phoenix_unit(180, status="A")
    sim = ModbusSim(unit)
    port = await sim.start_tcp()
    bus = ModbusBus("wallbox", TcpLink("127.0.0.1", port), **FAST)
    board = PhoenixEvEth(1, bus, 180, sink=sink, poll_interval_s=0.02)
    yield unit, board, sim
    await board.close()
    await bus.close()
    await sim.stop()


async def test_phoenix_status_letters_and_enable(phoenix, events):
    unit, board, _ = phoenix
    await board.open()
    assert board.pilot_state() == PilotState.A
    for letter in "BCDEF":
        put(unit.input, 100, ord(letter))
        await board.poll_once()
        assert board.pilot_state() == PilotState(letter)
    put(unit.input, 100, 0x3F)  # garbage: treated as an error state
    await board.poll_once()
    assert board.pilot_state() == PilotState.F
    await board.set_current_limit(16)
    assert unit.holding[528] == 16 and unit.coils[400] is True
    assert board.current_limit == 16.0
    await board.set_current_limit(0)
    assert unit.coils[400] is False and board.current_limit == 0.0
    assert unit.holding[528] == 16  # only the enable coil changed


async def test_phoenix_silent_then_back(phoenix, events):
    unit, board, sim = phoenix
    await board.open()
    sim.silent = True
    await board.poll_once()
    assert board.pilot_state() == PilotState.F
    assert events.of(FaultRaised)[0].kind == FaultKind.EV_BOARD
    sim.silent = False
    put(unit.input, 100, ord("B"))
    await board.poll_once()
    assert board.pilot_state() == PilotState.B
    assert FaultCleared(1, FaultKind.EV_BOARD) in events.events
