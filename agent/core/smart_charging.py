"""Charging profiles, version-neutral: what the adapters map their JSON to and back.

The smart-charging engine itself (validation, the composite schedule, the limit at an instant,
the next change: :mod:`agent.core.smart_charging_engine`) is a module of its own, imported the
first time a profile is stored, installed or asked about (issue 18: ~0.4 MB of an idle
station that has none).  Its public names are still read from here: ``from
agent.core.smart_charging import composite`` imports the engine (``__getattr__`` below).
:class:`agent.core.charging_profiles.ChargingProfiles` imports it as soon as it holds a
profile, so the limit path never waits on an import.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import NamedTuple

__all__ = [
    "BASE_KINDS", "BASE_PURPOSES", "ChargingProfile", "ChargingSchedule",
    "ChargingSchedulePeriod", "CompositePeriod", "Kind", "LIMIT_OPTIONAL", "OperationMode",
    "Purpose", "RateUnit", "Recurrency", "V2xPeriod",
]  # and, through __getattr__, the engine's (agent/core/smart_charging_engine.py)


class Purpose(StrEnum):
    """What a profile limits.  1.6 ChargePointMaxProfile and 2.0.1 ChargingStationMaxProfile
    are one value: both cap the whole station, on EVSE 0."""

    STATION_MAX = "StationMax"
    TX_DEFAULT = "TxDefault"
    TX = "Tx"
    EXTERNAL = "ExternalConstraints"
    # 2.1 (the values are 2.1's names, so that the 2.x adapters pass them through):
    PRIORITY = "PriorityCharging"  # replaces Tx / TxDefault while the transaction asks (K21)
    LOCAL_GENERATION = "LocalGeneration"  # local capacity added on top of the composite (K27)


# What 1.6 and 2.0.1 know; 2.1 adds PRIORITY and LOCAL_GENERATION (validate's allowed_purposes).
BASE_PURPOSES = frozenset({Purpose.STATION_MAX, Purpose.TX_DEFAULT, Purpose.TX, Purpose.EXTERNAL})


class Kind(StrEnum):
    """Where a schedule's periods count from."""

    ABSOLUTE = "Absolute"
    RECURRING = "Recurring"
    RELATIVE = "Relative"
    # 2.1 K28: one period whose limit the CSMS replaces as it goes; it counts from its last
    # update (dyn_update_time), and ``duration`` is how long an update stays good.
    DYNAMIC = "Dynamic"


BASE_KINDS = frozenset({Kind.ABSOLUTE, Kind.RECURRING, Kind.RELATIVE})  # 2.1 adds DYNAMIC


class Recurrency(StrEnum):
    DAILY = "Daily"
    WEEKLY = "Weekly"


class RateUnit(StrEnum):
    A = "A"  # amperes per phase
    W = "W"  # total watts


class OperationMode(StrEnum):
    """2.1 OperationModeEnumType: what a period asks of a bidirectional power stage (V2X,
    block Q).  ChargingOnly is every 1.6 / 2.0.1 period; the others are applied by the
    scheduler through :mod:`agent.core.v2x_modes`."""

    IDLE = "Idle"  # no energy either way: the composite shows 0
    CHARGING_ONLY = "ChargingOnly"
    CENTRAL_SETPOINT = "CentralSetpoint"  # the period's setpoint, within its limits
    EXTERNAL_SETPOINT = "ExternalSetpoint"  # a local energy manager's setpoint, within them
    EXTERNAL_LIMITS = "ExternalLimits"  # a local energy manager's limits, within them
    CENTRAL_FREQUENCY = "CentralFrequency"  # aFRR: AFRRSignal through v2xSignalWattCurve
    LOCAL_FREQUENCY = "LocalFrequency"  # FCR: the measured frequency through v2xFreqWattCurve
    LOCAL_LOAD_BALANCING = "LocalLoadBalancing"  # the site's load manager, within them


# Modes whose periods may leave out ``limit`` (2.1 ChargingSchedulePeriodType.limit: "optional
# only when not required by the operationMode"): the stage is then bound by its own rating.
LIMIT_OPTIONAL = frozenset({OperationMode.CENTRAL_SETPOINT, OperationMode.EXTERNAL_SETPOINT,
                            OperationMode.EXTERNAL_LIMITS, OperationMode.LOCAL_FREQUENCY,
                            OperationMode.LOCAL_LOAD_BALANCING})
_SETPOINT_MODES = frozenset({OperationMode.CENTRAL_SETPOINT, OperationMode.EXTERNAL_SETPOINT})


@dataclass(frozen=True, slots=True)
class ChargingSchedulePeriod:
    """From ``start_s`` seconds after the schedule's start until the next period's start."""

    start_s: int
    limit: Decimal | float | int | None  # None only in the LIMIT_OPTIONAL modes (2.1)
    number_phases: int | None = None
    phase_to_use: int | None = None
    # 2.1 V2X (the adapters of 1.6 and 2.0.1 leave them None).  Values in the schedule's
    # rate unit with 2.1's signs: setpoint negative to discharge, discharge_limit <= 0; the
    # curves' power is in W, positive charging; None mode is ChargingOnly.
    operation_mode: str | None = None
    setpoint: Decimal | float | int | None = None
    discharge_limit: Decimal | float | int | None = None
    v2x_baseline: Decimal | float | int | None = None  # W, added to a curve's power
    freq_watt: tuple[tuple[Decimal, Decimal], ...] | None = None  # (Hz, W) points
    signal_watt: tuple[tuple[int, Decimal], ...] | None = None  # (aFRR signal, W) points


@dataclass(frozen=True, slots=True)
class ChargingSchedule:
    rate_unit: RateUnit | str
    periods: Sequence[ChargingSchedulePeriod]
    duration_s: int | None = None
    start: datetime | None = None  # startSchedule
    min_rate: Decimal | float | None = None
    id: int | None = None  # 2.0.1 ChargingScheduleType.id (1.6 schedules have none)

    def __post_init__(self) -> None:
        object.__setattr__(self, "periods", tuple(self.periods))


@dataclass(frozen=True, slots=True)
class ChargingProfile:
    """A version-neutral charging profile.

    ``evse_id`` 0 is the station (1.6 connector 0).  ``schedules`` holds one schedule in 1.6
    and up to three in 2.0.1 (alternatives offered to an ISO 15118 EV); the composite uses the
    first, the one a station without ISO 15118 executes.
    """

    id: int
    stack_level: int
    purpose: Purpose | str
    kind: Kind | str
    schedules: Sequence[ChargingSchedule]
    recurrency: Recurrency | str | None = None
    valid_from: datetime | None = None
    valid_to: datetime | None = None
    transaction_id: str | int | None = None
    evse_id: int = 0
    # Who set it (2.0.1 ChargingLimitSourceEnumType): "CSO" for what the CSMS installs;
    # an ExternalConstraints profile names the external system ("EMS", "SO", "Other").
    charging_limit_source: str = "CSO"
    # 2.1 K28, Dynamic profiles only: pull an update this many seconds after the last one
    # (None / 0: the CSMS pushes), and when the limit was last set (the schedule's start).
    dyn_update_interval: int | None = None
    dyn_update_time: datetime | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "schedules", tuple(self.schedules))


class CompositePeriod(NamedTuple):
    """One period of a composite: from ``start_s`` (seconds after the window's start) until
    the next period's start, or the window's end."""

    start_s: int
    limit: Decimal
    number_phases: int


# ---------------------------------------------------------------------- validation


class V2xPeriod(NamedTuple):
    """The period that sets an EVSE's V2X behaviour at an instant (2.1), of the
    transaction-level profile in force then."""

    profile: ChargingProfile
    period: ChargingSchedulePeriod
    rate_unit: str  # "A" or "W": the unit of the period's limit, setpoint, dischargeLimit
    mode: OperationMode



def __getattr__(name: str) -> object:
    """The engine's names (public and private, as tests read them), from the engine module:
    imported by the first reader, not by whoever needs only the dataclasses."""
    if name.startswith("__"):
        raise AttributeError(name)
    from agent.core import smart_charging_engine

    try:
        return getattr(smart_charging_engine, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
