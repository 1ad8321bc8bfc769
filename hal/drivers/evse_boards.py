"""EVSE controller boards that own the control pilot and talk Modbus: we read the pilot
state, they generate the PWM for the current limit we write.

- EVSE-WB / EVSE-DIN (Modbus RTU, registers 1000-1007): 1000 = current limit in A
  (volatile: a board reset restores its EEPROM default from register 2000), 1002 = vehicle
  state (1 A, 2 B, 3 C, 4 D, 5 failure), 1005 = firmware revision.
- Phoenix Contact EV charge controllers with Ethernet (EV-ETH, Modbus TCP, unit 180 by
  default): input register 100 = IEC 61851 status as an ASCII letter, holding register
  528 = charging current in A, coil 400 = charging enabled.

A board that stops answering is the one failure where we no longer know what the EV is
doing, so the pilot is reported as F (error) until it answers again: the core then opens
the contactor instead of trusting a stale "C".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from hal.drivers.base import (
    DeviceDriver,
    DriverError,
    EventSink,
    Health,
    ProbeResult,
    sleep_or_stop,
)
from hal.drivers.modbus_bus import ModbusBus
from hal.interfaces import EvConnection, FaultKind, HalError, PilotChanged, PilotState

log = logging.getLogger(__name__)

MIN_CURRENT_A = 6.0
MAX_CURRENT_A = 80.0


class _ModbusBoard(EvConnection, DeviceDriver):
    model_name = "board"

    def __init__(self, evse_id: int, bus: ModbusBus, unit_id: int, *, sink: EventSink,
                 poll_interval_s: float = 0.5, required: bool = True) -> None:
        self.evse_id = evse_id
        self.bus = bus
        self.unit_id = unit_id
        self.sink = sink
        self.poll_interval_s = poll_interval_s
        self.required = required
        self.label = (f"evse {evse_id} EV board ({self.model_name}, id {unit_id} "
                      f"on {bus.name} {bus.link.describe()})")
        self._health = Health(sink, evse_id, FaultKind.EV_BOARD, self.label)
        self._state = PilotState.A
        self._limit = 0.0
        self._stop = asyncio.Event()
        self.detail = ""

    # ------------------------------------------------------------------ EvConnection

    def pilot_state(self) -> PilotState:
        return self._state

    @property
    def current_limit(self) -> float:
        return self._limit

    # ISO 15118's 5 % duty cycle: these boards generate the PWM themselves from the amps we
    # write, and none of the published register maps has a setting for it (EVSE-WB / EVSE-DIN:
    # 1000-1007 and the 2000-2017 configuration, whose bits are buttons, RCD and boot
    # behaviour; Phoenix EV-ETH: the current register, the enable coil and the status / error
    # registers). Writing the amps that would give 5 % is impossible too (below 6 A the board
    # stops the PWM). So the EV on such a board may use HLC at nominal duty (ISO 15118-3
    # allows it) and charges by the pilot otherwise: supports_digital_communication stays
    # False, and the core logs that the EVSE offers nominal duty.
    @property
    def supports_digital_communication(self) -> bool:
        return False

    async def set_current_limit(self, amps: float) -> None:
        amps = _whole_amps(amps)
        try:
            await self._write_limit(amps)
        except DriverError as exc:
            self._health.failed(str(exc), announce=False)
            raise HalError(FaultKind.EV_BOARD, f"evse {self.evse_id} EV board: {exc}") from exc
        self._limit = float(amps)

    # ------------------------------------------------------------------ polling

    async def _read_state(self) -> PilotState:
        raise NotImplementedError

    async def _write_limit(self, amps: int) -> None:
        raise NotImplementedError

    def _set_state(self, state: PilotState) -> None:
        if state != self._state:
            self._state = state
            self.sink.emit(PilotChanged(self.evse_id, state))

    async def poll_once(self) -> None:
        try:
            state = await self._read_state()
        except DriverError as exc:
            self._health.failed(str(exc))
            self._set_state(PilotState.F)
            return
        self._health.recovered()
        self._set_state(state)

    async def open(self) -> None:
        self._stop.clear()
        await self.poll_once()  # start() returns with a known pilot state

    async def close(self) -> None:
        self._stop.set()

    def background(self) -> Callable[[], Awaitable[None]]:
        return self._run

    async def _run(self) -> None:
        self._stop.clear()
        while not await sleep_or_stop(self._stop, self.poll_interval_s):
            await self.poll_once()

    async def probe(self) -> ProbeResult:
        try:
            state = await self._read_state()
        except DriverError as exc:
            return ProbeResult(self.label, False, str(exc), self.required)
        ok = not state.is_error
        detail = f"pilot state {state.value}{self.detail}"
        if not ok:
            detail += " (the board reports a pilot error: check the CP wiring and the EV side)"
        return ProbeResult(self.label, ok, detail, self.required)


def _whole_amps(amps: float) -> int:
    """Boards take whole amps; round down so we never offer more than allowed, and treat
    anything below the IEC 61851 minimum as "no offer"."""
    if amps < MIN_CURRENT_A:
        return 0
    return int(min(amps, MAX_CURRENT_A))


class EvseWbBoard(_ModbusBoard):
    """EVSE-WB and EVSE-DIN (same register set)."""

    model_name = "evse_wb"
    REG_BASE = 1000
    REG_CONFIGURED_AMPS = 1000
    REG_VEHICLE_STATE = 1002
    REG_FIRMWARE = 1005
    VEHICLE_STATES = {1: PilotState.A, 2: PilotState.B, 3: PilotState.C, 4: PilotState.D,
                      5: PilotState.F}

    def __init__(self, evse_id: int, bus: ModbusBus, unit_id: int = 1, *, sink: EventSink,
                 poll_interval_s: float = 0.5, required: bool = True,
                 model_name: str = "evse_wb") -> None:
        self.model_name = model_name
        super().__init__(evse_id, bus, unit_id, sink=sink, poll_interval_s=poll_interval_s,
                         required=required)
        self._written: int | None = None
        self.firmware: int | None = None

    async def _read_state(self) -> PilotState:
        regs = await self.bus.read_registers(self.unit_id, self.REG_BASE, 8, function=3)
        self.firmware = regs[self.REG_FIRMWARE - self.REG_BASE]
        self.detail = f", firmware {self.firmware}"
        configured = regs[self.REG_CONFIGURED_AMPS - self.REG_BASE]
        if self._written is not None and configured != self._written:
            # the board restarted and fell back to its EEPROM default: say it again
            log.warning("%s: limit register reads %d A, expected %d A: rewriting",
                        self.label, configured, self._written)
            await self._write_limit(self._written)
        return self.VEHICLE_STATES.get(regs[self.REG_VEHICLE_STATE - self.REG_BASE], PilotState.F)

    async def _write_limit(self, amps: int) -> None:
        await self.bus.write_register(self.unit_id, self.REG_CONFIGURED_AMPS, amps)
        self._written = amps


class PhoenixEvEth(_ModbusBoard):
    """Phoenix Contact EV charge controllers with Modbus TCP (EV-CC-...-ETH, EM-CP-PP-ETH)."""

    model_name = "phoenix_ev_eth"
    IR_STATUS = 100
    HR_CURRENT = 528
    COIL_ENABLE = 400

    async def _read_state(self) -> PilotState:
        (raw,) = await self.bus.read_registers(self.unit_id, self.IR_STATUS, 1, function=4)
        letter = chr(raw & 0xFF) if 0x41 <= (raw & 0xFF) <= 0x46 else "?"
        self.detail = f" (status register {raw:#06x})" if letter == "?" else ""
        try:
            return PilotState(letter)
        except ValueError:
            return PilotState.F

    async def _write_limit(self, amps: int) -> None:
        if amps:
            await self.bus.write_register(self.unit_id, self.HR_CURRENT, amps)
            await self.bus.write_coil(self.unit_id, self.COIL_ENABLE, True)
        else:
            await self.bus.write_coil(self.unit_id, self.COIL_ENABLE, False)
