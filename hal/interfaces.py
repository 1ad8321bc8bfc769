"""Hardware abstraction layer: the contracts every driver (real or mock) fulfils.

The HAL speaks volts, amps, watt-hours, pilot states, token UIDs and faults, never OCPP.
Everything above it (the version-neutral core) is written against these interfaces only,
so a bench rig, a controller board and the mock HAL are interchangeable.

Events flow *up* through one listener callback that the HAL calls on the event-loop thread
(drivers whose libraries call back on other threads hand events over with
``loop.call_soon_threadsafe``).  Commands flow *down* as awaitable methods, each of which
must return (or raise :class:`HalError`) within a bounded time.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


class PilotState(enum.StrEnum):
    """IEC 61851-1 control pilot states as the EVSE sees them."""

    A = "A"  # no EV connected (+12 V)
    B = "B"  # EV connected, not asking for energy (+9 V)
    C = "C"  # EV connected, asking for energy (+6 V)
    D = "D"  # asking for energy, ventilation required (+3 V)
    E = "E"  # short / no power (0 V): error
    F = "F"  # EVSE not available / pilot fault (-12 V): error

    @property
    def connected(self) -> bool:
        return self in (PilotState.B, PilotState.C, PilotState.D)

    @property
    def wants_energy(self) -> bool:
        return self in (PilotState.C, PilotState.D)

    @property
    def is_error(self) -> bool:
        return self in (PilotState.E, PilotState.F)


class FaultKind(enum.StrEnum):
    """Faults a HAL can report; the core maps them to protocol error codes."""

    METER = "meter"  # meter does not answer / answers garbage
    WELDED = "welded"  # contactor feedback says closed while commanded open
    CONTACTOR_FAILED = "contactor_failed"  # feedback says open while commanded closed
    PILOT = "pilot"  # pilot in state E or F, or diode check failed
    READER = "reader"  # token reader gone
    LOCK = "lock"  # connector lock failed
    EV_BOARD = "ev_board"  # EVSE controller board does not answer
    OVER_CURRENT = "over_current"  # EV draws more than offered
    OVER_VOLTAGE = "over_voltage"
    UNDER_VOLTAGE = "under_voltage"
    OVER_TEMPERATURE = "over_temperature"
    GROUND_FAILURE = "ground_failure"  # RCD tripped
    INTERNAL = "internal"


class IndicatorState(enum.StrEnum):
    OFF = "off"
    AVAILABLE = "available"
    OCCUPIED = "occupied"  # EV connected or session being prepared
    CHARGING = "charging"
    FAULT = "fault"
    UNAVAILABLE = "unavailable"


class HalError(Exception):
    """A device did not do what it was asked; ``kind`` says which fault to report."""

    def __init__(self, kind: FaultKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class MeterReading:
    """One snapshot of the energy meter. Per-phase tuples hold L1, L2, L3 (as present)."""

    energy_import_wh: float
    energy_export_wh: float = 0.0
    power_w: float = 0.0  # active power, positive = import (to the EV)
    voltage_v: tuple[float, ...] = ()
    current_a: tuple[float, ...] = ()
    frequency_hz: float | None = None
    # Reactive power as meters count it: positive = import (the EVSE draws vars, inductive;
    # a DER *absorbing*), negative = export (a DER *injecting*). The power factor is the
    # displacement cos phi, 0..1 (None where nothing flows or the meter does not say).
    power_reactive_var: float | None = None
    power_factor: float | None = None
    soc_percent: float | None = None
    temperature_c: float | None = None


# ---------------------------------------------------------------- bidirectional power


class EnergyTransferMode(enum.StrEnum):
    """How energy can move between the EVSE and the EV: the energy transfer services of
    ISO 15118-20 (-2 for the plain AC and DC ones), spelled as OCPP 2.1 spells them. BPT is
    bidirectional power transfer; DER and ACDP variants are bidirectional too where BPT is in
    the name."""

    AC_SINGLE_PHASE = "AC_single_phase"
    AC_TWO_PHASE = "AC_two_phase"
    AC_THREE_PHASE = "AC_three_phase"
    DC = "DC"
    AC_BPT = "AC_BPT"
    AC_BPT_DER = "AC_BPT_DER"
    AC_DER = "AC_DER"
    DC_BPT = "DC_BPT"
    DC_ACDP = "DC_ACDP"
    DC_ACDP_BPT = "DC_ACDP_BPT"
    WPT = "WPT"

    @property
    def bidirectional(self) -> bool:
        return "BPT" in self.value

    @property
    def dc(self) -> bool:
        return self.value.startswith("DC")


@dataclass(frozen=True, slots=True)
class PowerLimits:
    """What may flow, as magnitudes (>= 0) in W and A: the EV's or the power stage's.

    Charge is into the EV, discharge out of it. A ``max_*_a`` of None means the power alone
    bounds it; a ``min_*_w`` is the least the side can follow (below it: nothing flows).
    """

    max_charge_w: float
    max_discharge_w: float = 0.0
    max_charge_a: float | None = None
    max_discharge_a: float | None = None
    min_charge_w: float = 0.0
    min_discharge_w: float = 0.0

    def __post_init__(self) -> None:
        for name in ("max_charge_w", "max_discharge_w", "max_charge_a", "max_discharge_a",
                     "min_charge_w", "min_discharge_w"):
            value = getattr(self, name)
            if value is not None and not (value >= 0 and value < float("inf")):
                raise ValueError(f"power limit {name} = {value!r}: expected a finite "
                                 "magnitude >= 0")
        if self.min_charge_w > self.max_charge_w or self.min_discharge_w > self.max_discharge_w:
            raise ValueError("power limits: a minimum above its maximum")

    @property
    def can_discharge(self) -> bool:
        return self.max_discharge_w > 0 and (self.max_discharge_a is None
                                             or self.max_discharge_a > 0)


@dataclass(frozen=True, slots=True)
class ReactiveLimits:
    """What a power stage with reactive power control can do besides active power: its
    apparent-power rating (VA: sqrt(P^2 + Q^2) never above it) and the reactive power it
    can inject (over-excited) and absorb (under-excited), as magnitudes in var."""

    max_va: float
    max_inject_var: float
    max_absorb_var: float

    def __post_init__(self) -> None:
        for name in ("max_va", "max_inject_var", "max_absorb_var"):
            value = getattr(self, name)
            if not (value >= 0 and value < float("inf")):
                raise ValueError(f"reactive limit {name} = {value!r}: expected a finite "
                                 "magnitude >= 0")


@dataclass(frozen=True, slots=True)
class EvEnergyState:
    """The EV's battery as ISO 15118-20 (or a DC stage) reports it: where it is and the
    levels it wants. Percentages of ``capacity_wh``; a level the EV does not tell is None.

    ``min_soc_percent`` is the floor below which the EV does not let itself be discharged
    (its V2X minimum), ``max_soc_percent`` the ceiling it charges to at most, and the target
    what it wants at departure. The ``*_energy_wh`` properties are the energy requests of
    OCPP 2.1 (V2XChargingParameters): energy to reach that level from now, negative when the
    battery is already above it.
    """

    soc_percent: float
    capacity_wh: float | None = None
    min_soc_percent: float | None = None
    target_soc_percent: float | None = None
    max_soc_percent: float | None = None

    def _to(self, level: float | None) -> float | None:
        if level is None or self.capacity_wh is None:
            return None
        return round((level - self.soc_percent) / 100.0 * self.capacity_wh, 3)

    @property
    def stored_wh(self) -> float | None:
        if self.capacity_wh is None:
            return None
        return round(self.soc_percent / 100.0 * self.capacity_wh, 3)

    @property
    def target_energy_wh(self) -> float | None:
        return self._to(self.target_soc_percent)

    @property
    def min_energy_wh(self) -> float | None:
        return self._to(self.min_soc_percent)

    @property
    def max_energy_wh(self) -> float | None:
        return self._to(self.max_soc_percent)


# ---------------------------------------------------------------- events (up)


@dataclass(frozen=True, slots=True)
class PilotChanged:
    evse_id: int
    state: PilotState


@dataclass(frozen=True, slots=True)
class TokenPresented:
    """A card or token was read. ``evse_id`` is None for a reader shared by all EVSEs."""

    uid: str
    evse_id: int | None = None
    reader: str = "rfid"
    token_type: str = "ISO14443"


@dataclass(frozen=True, slots=True)
class FaultRaised:
    evse_id: int  # 0 = station-wide (e.g. a shared reader)
    kind: FaultKind
    detail: str = ""


@dataclass(frozen=True, slots=True)
class FaultCleared:
    evse_id: int
    kind: FaultKind


@dataclass(frozen=True, slots=True)
class EvChanged:
    """What the EV side tells beyond the pilot changed: the EV's limits, its energy transfer
    modes or its battery levels (an ISO 15118-20 renegotiation, a DC stage's new rating).
    The core holds a setpoint to the new limits at once rather than at the next sample."""

    evse_id: int


HalEvent = PilotChanged | TokenPresented | FaultRaised | FaultCleared | EvChanged
Listener = Callable[[HalEvent], None]


# ---------------------------------------------------------------- devices (down)


class Contactor(abc.ABC):
    """The main contactor of one EVSE, with optional auxiliary feedback contact.

    ``set`` returns once the coil is driven *and* the feedback (if any) has settled into
    agreement; a disagreement raises ``HalError(WELDED | CONTACTOR_FAILED)``.
    """

    @abc.abstractmethod
    async def set(self, closed: bool) -> None: ...

    @property
    @abc.abstractmethod
    def commanded_closed(self) -> bool: ...

    @abc.abstractmethod
    def feedback_closed(self) -> bool | None:
        """Auxiliary contact state, or None when the hardware has no feedback."""


# What a device can measure, in the HAL's own terms; each names the MeterReading field(s)
# it fills: energy_import (energy_import_wh), energy_export, power (power_w), current and
# voltage (the per-phase tuples), frequency, power_reactive, power_factor, temperature, soc.
MEASURES = frozenset({"energy_import", "energy_export", "power", "current", "voltage",
                      "frequency", "power_reactive", "power_factor", "temperature", "soc"})
# What every MeterReading carries (energy, export and power always have a number, the
# per-phase tuples one per phase): a meter that declares nothing is taken to give these.
BASIC_METER_MEASURES = frozenset({"energy_import", "energy_export", "power", "current",
                                  "voltage"})


class PowerMeter(abc.ABC):
    @abc.abstractmethod
    async def read(self) -> MeterReading:
        """Raise ``HalError(METER)`` when the meter does not answer in time."""

    @property
    def phases(self) -> int:
        return 3

    @property
    def measures(self) -> frozenset[str]:
        """What this meter's readings can hold (names from :data:`MEASURES`).

        A quantity listed here may still be missing from one reading (a register that
        answered NaN); one not listed is never there, so the station refuses to be asked for
        it.  Drivers declare what their register map maps.
        """
        return BASIC_METER_MEASURES


class EvConnection(abc.ABC):
    """The EV side: pilot state in, current limit (PWM duty) out."""

    @abc.abstractmethod
    def pilot_state(self) -> PilotState: ...

    @abc.abstractmethod
    async def set_current_limit(self, amps: float) -> None:
        """Offer ``amps`` to the EV; 0 stops the PWM (the EV must not draw)."""

    @property
    @abc.abstractmethod
    def current_limit(self) -> float: ...

    # A bidirectional power stage (DC, or an AC EV with ISO 15118-20) follows a signed power
    # setpoint as well: positive charges the EV, negative discharges it into the grid. The
    # pilot's current limit stays the safety bound for what may flow into the EV.
    @property
    def supports_setpoint(self) -> bool:
        return False

    async def set_power_setpoint(self, watts: float | None) -> None:
        """Follow ``watts`` (signed; None: no setpoint, plain current-limited charging).

        The core never asks beyond :attr:`ev_limits` / :attr:`stage_limits`, nor for a
        negative value unless a bidirectional mode is in :attr:`energy_transfer_modes`; a
        driver still clamps to what its hardware can do (a setpoint is a wish, not a bypass).
        """
        raise NotImplementedError("this EV connection has no power setpoint (not bidirectional)")

    @property
    def power_setpoint(self) -> float | None:
        return None

    # A stage with an inverter of its own (DC, or an AC EV's under ISO 15118-20 DER) may also
    # follow a reactive power setpoint and limit how fast its active power changes (the DER
    # controls of OCPP 2.1). Both are optional: a stage without them keeps the defaults, and
    # the core then neither asks for vars nor counts on a ramp.
    @property
    def supports_reactive(self) -> bool:
        return False

    @property
    def reactive_limits(self) -> ReactiveLimits | None:
        """The stage's apparent-power rating and reactive range (None: no reactive power)."""
        return None

    async def set_reactive_setpoint(self, var: float | None) -> None:
        """Follow ``var`` of reactive power, in the DER sign convention: positive *injects*
        (over-excited, capacitive), negative *absorbs* (under-excited, inductive); None: unity
        power factor. Only while the power path is up; the driver holds it within
        :attr:`reactive_limits` and what the active power leaves of the VA rating (the core
        leaves room itself, so that is a last resort)."""
        raise NotImplementedError("this power stage has no reactive power control")

    @property
    def reactive_setpoint(self) -> float | None:
        return None

    @property
    def supports_ramp_rate(self) -> bool:
        return False

    async def set_ramp_rates(self, normal_w_per_s: float | None,
                             soft_start_w_per_s: float | None = None) -> None:
        """Limit how fast the active power follows a new setpoint (W/s, None: as fast as it
        can): ``soft_start`` when it starts from standstill (the power path just came up, or
        it stood at 0 W), ``normal`` otherwise. Limits that fall (the pilot's offer, the EV's
        limits, the state of charge, the contactor) still apply at once: a ramp never holds
        power above a bound."""
        raise NotImplementedError("this power stage has no ramp-rate control")

    @property
    def ramp_rates(self) -> tuple[float | None, float | None]:
        """(normal, soft-start) W/s in force; (None, None): no ramp limit."""
        return (None, None)

    # What bidirectional charging needs to know of the EV and of the power stage (ISO 15118-20
    # tells the EV's part, the stage's driver its own rating). Every default is the answer of
    # a pilot-only, charge-only EVSE: nothing known, no discharge.
    @property
    def energy_transfer_modes(self) -> frozenset[EnergyTransferMode]:
        """The modes the EV and the power stage can both do now (empty: unknown, which the
        core takes as charging only). A discharge needs a bidirectional one in here."""
        return frozenset()

    @property
    def ev_limits(self) -> PowerLimits | None:
        """The connected EV's own limits (None: no EV, or it does not say)."""
        return None

    @property
    def stage_limits(self) -> PowerLimits | None:
        """The power stage's rating (None: the EVSE's current rating on its phases, no
        discharge)."""
        return None

    @property
    def energy_state(self) -> EvEnergyState | None:
        """The connected EV's battery as it reports it (None: no EV, or it does not say)."""
        return None

    # What the EV side reports besides the pilot (names from MEASURES): "soc" where the EV
    # tells its state of charge (ISO 15118, a DC stage). A pilot-only AC board knows nothing.
    @property
    def measures(self) -> frozenset[str]:
        return frozenset()

    @property
    def soc_percent(self) -> float | None:
        """The EV's state of charge now, or None (no EV, or it does not say)."""
        return None

    # 3-to-1 phase switching: a board with a phase-selection relay can feed the EV on one
    # phase (a low limit on one phase wastes less than on three) or all three. The core
    # switches only with the contactor open; a driver without the relay keeps the default.
    @property
    def supports_phase_switch(self) -> bool:
        return False

    async def set_phases(self, n: int) -> None:
        """Feed the EV on ``n`` phases (1 or 3) from now on; called with the contactor open."""
        raise NotImplementedError("this EV connection cannot switch phases")

    @property
    def phases_in_use(self) -> int | None:
        """The phases the EV is fed on now; None: all of the EVSE's (no switching)."""
        return None

    # ISO 15118 high-level communication (hal/iso15118/): the pilot offers 5 % duty cycle
    # ("digital communication required", IEC 61851-1 / ISO 15118-3), the EV learns its limit
    # from the HLC messages. A board that can offer it says so; the default offers nominal
    # duty only (the EV may then charge by the pilot alone, or use HLC as well).
    @property
    def supports_digital_communication(self) -> bool:
        return False

    async def set_digital_communication(self, on: bool) -> None:
        """Offer 5 % duty cycle while an EV is connected (``on``), or nominal duty again."""
        raise NotImplementedError("this EV connection cannot offer 5 % duty cycle")

    # An EVSE with several connectors (a socket and a tethered cable) feeds one EV at a time
    # through one of them, on one pilot: which one the EV is plugged into, where the board
    # can tell (a proximity contact per connector). None: the first (or the only) one.
    @property
    def plugged_connector(self) -> int | None:
        return None


class ConnectorLock(abc.ABC):
    @abc.abstractmethod
    async def set_locked(self, locked: bool) -> bool:
        """Return True when the lock reached the wanted position."""

    @property
    @abc.abstractmethod
    def locked(self) -> bool: ...


class Indicator(abc.ABC):
    @abc.abstractmethod
    def show(self, state: IndicatorState) -> None: ...


class Display(abc.ABC):
    """A character display the driver reads: ``rows`` lines of ``columns`` characters.

    The core decides what is shown (agent/core/display.py) and hands over whole screens of
    text; the driver maps the characters to what its glyphs can show (an HD44780 has ASCII and
    a few extras) and writes only what changed. A display is for people, never for safety:
    ``show`` raises ``HalError`` when the device does not take the text, and the core logs it
    and charges on.
    """

    @property
    @abc.abstractmethod
    def columns(self) -> int: ...

    @property
    @abc.abstractmethod
    def rows(self) -> int: ...

    @abc.abstractmethod
    async def show(self, lines: Sequence[str]) -> None:
        """Replace the screen: at most ``rows`` lines of at most ``columns`` characters each
        (shorter lines are padded, missing rows blank)."""


class TokenReader(abc.ABC):
    """Readers push TokenPresented events through the HAL listener; this is their health."""

    name: str = "rfid"

    @abc.abstractmethod
    def healthy(self) -> bool: ...


@dataclass
class EvseHardware:
    """The devices of one EVSE. Lock and indicator are optional (tethered cable, no LEDs)."""

    evse_id: int
    contactor: Contactor
    meter: PowerMeter
    ev: EvConnection
    lock: ConnectorLock | None = None
    indicator: Indicator | None = None
    max_current_a: float = 32.0
    phases: int = 3


@dataclass
class SelfCheckResult:
    device: str
    ok: bool
    detail: str = ""


@dataclass
class Hal(abc.ABC):
    """A complete station's hardware. Drivers build one of these from the configuration."""

    evses: dict[int, EvseHardware] = field(default_factory=dict)
    readers: list[TokenReader] = field(default_factory=list)
    display: Display | None = None  # the driver's screen, if the station has one

    @abc.abstractmethod
    async def start(self, listener: Listener) -> None:
        """Begin delivering events; the contactors must be open when this returns."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Open every contactor and release the devices."""

    async def reset_evse(self, evse_id: int) -> None:
        """Restart the hardware of one EVSE (its controller board) while the others go on;
        called with its contactor open. Hardware without a board of its own has nothing
        to restart: the core's reset (session ended, outputs off, pilot adopted again) is
        the whole of it."""
        return None

    async def self_check(self) -> list[SelfCheckResult]:
        """Probe every device; the daemon reports READY only when all are ok."""
        results: list[SelfCheckResult] = []
        for evse in self.evses.values():
            try:
                await evse.meter.read()
                results.append(SelfCheckResult(f"evse {evse.evse_id} meter", True))
            except HalError as exc:
                results.append(SelfCheckResult(f"evse {evse.evse_id} meter", False, str(exc)))
            fb = evse.contactor.feedback_closed()
            ok = fb is None or fb == evse.contactor.commanded_closed
            results.append(
                SelfCheckResult(
                    f"evse {evse.evse_id} contactor",
                    ok,
                    "" if ok else "feedback disagrees with coil (welded?)",
                )
            )
            st = evse.ev.pilot_state()
            results.append(
                SelfCheckResult(
                    f"evse {evse.evse_id} pilot", not st.is_error, f"state {st.value}"
                )
            )
        for reader in self.readers:
            results.append(SelfCheckResult(f"reader {reader.name}", reader.healthy()))
        return results
