"""Version-neutral vocabulary shared by the core and the protocol adapters."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Protocol

from hal.interfaces import FaultKind, MeterReading, PilotState

if TYPE_CHECKING:
    from agent.core.v2x import PowerStageSnapshot


class ConnectorStatus(enum.StrEnum):
    """The detailed status (1.6 ChargePointStatus); 2.0.1 adapters fold it to fewer values."""

    AVAILABLE = "Available"
    PREPARING = "Preparing"
    CHARGING = "Charging"
    SUSPENDED_EV = "SuspendedEV"
    SUSPENDED_EVSE = "SuspendedEVSE"
    FINISHING = "Finishing"
    RESERVED = "Reserved"
    UNAVAILABLE = "Unavailable"
    FAULTED = "Faulted"


class StopReason(enum.StrEnum):
    """Why a transaction ended; names follow 1.6 Reason, 2.0.1 adapters map them."""

    LOCAL = "Local"
    REMOTE = "Remote"
    EV_DISCONNECTED = "EVDisconnected"
    DEAUTHORIZED = "DeAuthorized"
    HARD_RESET = "HardReset"
    SOFT_RESET = "SoftReset"
    REBOOT = "Reboot"
    POWER_LOSS = "PowerLoss"
    EMERGENCY_STOP = "EmergencyStop"
    UNLOCK_COMMAND = "UnlockCommand"
    TIMEOUT = "Timeout"
    STOPPED_BY_EV = "StoppedByEV"
    OTHER = "Other"
    # A limit the CSMS set for the transaction was reached (2.1 E16; 1.6 reports Other).
    ENERGY_LIMIT = "EnergyLimitReached"
    TIME_LIMIT = "TimeLimitReached"
    COST_LIMIT = "CostLimitReached"  # the station's own running cost (2.1 local cost)
    SOC_LIMIT = "SOCLimitReached"  # the EV's state of charge, where the EV reports it


class TxPoint(enum.StrEnum):
    """Session milestones that can start or stop a transaction (2.0.1 TxStartPoint names)."""

    EV_CONNECTED = "EVConnected"
    AUTHORIZED = "Authorized"
    POWER_PATH_CLOSED = "PowerPathClosed"  # EV connected and authorized: energy may flow
    ENERGY_TRANSFER = "EnergyTransfer"


# Faults that make an EVSE unusable (Faulted); the others are reported but charging goes on.
BLOCKING_FAULTS = frozenset(FaultKind) - {FaultKind.READER}


@dataclass(frozen=True, slots=True)
class Token:
    id: str
    type: str = "ISO14443"  # 2.0.1 IdTokenEnumType; 1.6 only uses the id


@dataclass(frozen=True, slots=True)
class AuthResult:
    status: str  # Accepted, Blocked, Expired, Invalid, ConcurrentTx, Unknown, ...
    parent: str | None = None
    source: str = "online"  # online, cache, local_list, offline, remote
    expires_at: str | None = None

    @property
    def accepted(self) -> bool:
        return self.status == "Accepted"


@dataclass
class TxRecord:
    """A transaction as the journal keeps it (one row per transaction, see agent/storage)."""

    local_id: str
    evse_id: int
    connector_id: int
    id_token: str
    token_type: str | None
    started_at: str
    meter_start_wh: float
    remote_id: str | None  # CSMS transaction id as a string (1.6 int as str, 2.0.1 uuid)
    last_meter_wh: float
    last_meter_at: str | None
    stopped_at: str | None
    stop_reason: str | None
    meter_stop_wh: float | None
    seq_no: int  # next 2.0.1 TransactionEvent seqNo
    closed: bool  # Stop message queued (session finished on our side)
    # Extras, persisted together in the journal's ``data`` column (see :data:`TX_EXTRAS`).
    remote_start_id: int | None = None  # the CSMS's remote start that began it
    parent: str | None = None  # group of the starting token (1.6 parentIdTag, groupIdToken)
    auth_source: str | None = None  # where its authorization came from (online, cache, ...)
    offline: bool = False
    stopped_by: str | None = None  # the token that asked for the stop, if one did
    reservation_id: int | None = None
    reported_as: str | None = None  # OCPP version whose adapter reported its start
    start_requeued: bool = False  # its start message, refused for good once, went again
    # What a resumption after a restart needs of the session (agent/core/resumption.py):
    auth_token: str | None = None  # the token authorized after the start (id_token empty)
    auth_token_type: str | None = None
    auth_expires_at: str | None = None  # the authorization's own expiry (CSMS / list / cache)
    deauth_reason: str | None = None  # authorization withdrawn, transaction still open
    energy_suspended: bool = False  # energy stopped without ending it (late invalid id)


_CORE_FIELDS = 15  # the journal's own columns; the fields after them are the extras
TX_EXTRAS: tuple[str, ...] = tuple(f.name for f in fields(TxRecord)[_CORE_FIELDS:])


def tx_extras(tx: TxRecord) -> dict[str, Any]:
    """The extras of ``tx`` as stored (only the ones set, so old rows stay small)."""
    out: dict[str, Any] = {}
    for name in TX_EXTRAS:
        value = getattr(tx, name)
        if value is not None and value is not False:
            out[name] = value
    return out


def tx_extras_from(data: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments for :class:`TxRecord` from a stored ``data`` column.

    Rows written by older versions carry ``{"v201": true}`` for a start reported over 2.0.1;
    unknown keys are ignored, so a downgrade's extras do not break reading.
    """
    out = {k: v for k, v in data.items() if k in TX_EXTRAS}
    if data.get("v201") and "reported_as" not in out:
        out["reported_as"] = "2.0.1"
    return out


@dataclass
class Session:
    """Everything from the first of (plug-in, authorization) until the EVSE is free again."""

    token: Token | None = None
    auth: AuthResult | None = None
    authorized_at: float | None = None  # monotonic
    remote_start_id: int | None = None
    reservation_id: int | None = None  # the reservation its authorization used
    energy_allowed: bool = True  # False: authorized but suspended (e.g. invalid id on start)
    tx: TxRecord | None = None
    ended_reason: StopReason | None = None  # set once the transaction of this session ended
    deauth_reason: StopReason | None = None  # why the authorization was withdrawn, if it was
    tx_points_seen: set[TxPoint] = field(default_factory=set)  # milestones since tx start

    @property
    def authorized(self) -> bool:
        return self.token is not None and self.auth is not None and self.auth.accepted


@dataclass(frozen=True, slots=True)
class EvseSnapshot:
    """What the control socket and adapters may read of an EVSE at one instant."""

    evse_id: int
    connector_id: int
    status: ConnectorStatus
    pilot: PilotState
    contactor_closed: bool
    offered_a: float  # on the pilot now
    limit_a: float  # what the EVSE may offer (its maximum capped by the limit sources)
    operative: bool
    faults: tuple[FaultKind, ...]
    token: str | None
    tx_local_id: str | None
    tx_remote_id: str | None
    energy_wh: float | None  # of the running transaction
    power_w: float | None
    reading: MeterReading | None
    limit_source: str = "evse"  # which source sets limit_a
    min_current_a: float = 6.0
    phases: int = 3
    has_lock: bool = False
    authorized: bool = False  # the session has an accepted token
    charging_state: str = "Idle"  # Idle, EVConnected, Charging, SuspendedEV, SuspendedEVSE
    blocking_fault: FaultKind | None = None
    fault: FaultKind | None = None  # the fault to report: the blocking one, else the first
    fault_detail: str = ""
    tx: TxRecord | None = None
    remote_start_id: int | None = None  # of the session (set before its transaction starts)
    deauth_reason: StopReason | None = None
    max_current_a: float | None = None  # the EVSE's own maximum (limit source "evse")
    limits: tuple[tuple[str, float], ...] = ()  # every other limit source now: (name, amps)
    # Every connector of the EVSE with whether it may be used (station, EVSE and connector
    # Operative); connector_id is the one in use. Empty: one connector, ``operative``.
    connectors: tuple[tuple[int, bool], ...] = ()
    resetting: bool = False  # the EVSE is being reset on its own (Unavailable meanwhile)
    # A power stage that takes setpoints (bidirectional / V2X, agent/core/v2x.py); None: none.
    power_stage: PowerStageSnapshot | None = None

    @property
    def ev_connected(self) -> bool:
        return self.pilot.connected


class Authorizer(Protocol):
    async def authorize(self, token: Token, evse_id: int | None) -> AuthResult: ...


class CoreObserver(Protocol):
    """Implemented by the active protocol adapter. Calls are synchronous: enqueue, never wait.

    ``transaction_started`` / ``transaction_ended`` run inside the storage transaction that
    records the change, so the protocol message they enqueue commits together with it.
    """

    def status_changed(self, snap: EvseSnapshot, fault: FaultKind | None) -> None: ...
    def transaction_started(self, tx: TxRecord, snap: EvseSnapshot,
                            trigger: TxPoint) -> None: ...
    def transaction_ended(self, tx: TxRecord, reason: StopReason,
                          snap: EvseSnapshot) -> None: ...
    def session_event(self, evse_id: int, event: str, detail: dict) -> None: ...
    def fault_changed(self, evse_id: int, kind: FaultKind, active: bool, detail: str) -> None: ...
    def transaction_recovered(self, tx: TxRecord) -> None:
        """A transaction left open by a power cut was closed at start-up (reason PowerLoss);
        runs inside the storage transaction that closed it."""
    def transaction_resumed(self, tx: TxRecord, snap: EvseSnapshot) -> None:
        """A transaction left open by a power cut or restart goes on (the active version's
        :class:`ResumptionRules` allowed it): same record, its EVSE's session restored. Called
        at start-up before the EVSE adopts its pilot state; the EVSE reports its settled
        status afterwards as usual."""


@dataclass(frozen=True, slots=True)
class ResumptionRules:
    """Whether transactions survive a restart: the active version's say (2.1 E17:
    TxCtrlr.ResumptionTimeout, AllowEnergyTransferResumption). 1.6 and 2.0.1 have none: every
    open transaction ends with PowerLoss."""

    timeout_s: float  # the longest interruption after which a transaction resumes (0: never)
    allow_energy: bool = True  # energy may flow again (else it resumes suspended)
