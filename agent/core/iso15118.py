"""ISO 15118 in the core: what the EV said over high-level communication, and who decides.

``station.iso15118`` is an :class:`Iso15118Service` when ``hal.iso15118`` is configured (else
None). The HAL's :class:`hal.iso15118.client.HighLevelCommunication` feeds it (one SECC sidecar
per EVSE); it knows no OCPP version. What it does:

(a) keeps per EVSE the EV's session (:class:`EvSession`): EVCCID, protocol, the requested
    energy transfer mode and the charging needs (:class:`ChargingNeeds`: departure time,
    energy amount, the EV's limits, the -20 bidirectional parameters);
(b) asks a pluggable *contract authorizer* whether a Plug & Charge contract may charge
    (:class:`ContractAuthorizer`; the default, :class:`PolicyContractAuthorizer`, checks the
    contract certificate's validity and then asks the station's authorization policy with
    the EMAID as an idToken of type eMAID: local list, cache, the version's Authorize);
(c) asks a pluggable *certificate provider* for an EV certificate installation or update
    (:class:`CertificateProvider`; the default answers "not available");
(d) gives the EV its schedule, the EVSE's composite schedule from the smart charging engine
    (``station.charging_profiles.composite``, in W), and pushes the EVSE's state (authorized,
    contactor, offer, meter, the V2X setpoint) to the SECC;
(e) tells the core when the EV starts or stops the energy transfer: limit source
    ``iso15118`` (0 A from the session's start until the EV's PowerDelivery Start, and again
    after its Stop), so the contactor closes and opens by the core's normal path;
(f) has the EV renegotiate (OCPP K17) when the schedule it was given no longer holds: a
    TxProfile installed or removed, an external limit moved, so that the composite differs
    materially (:data:`MATERIAL_W`, :data:`MATERIAL_SHARE`) from what was offered; the SECC
    signals it in its next charge-loop answer, the EV's new ChargeParameterDiscovery /
    ScheduleExchange gets the new composite, and its PowerDelivery Start is told to the
    listeners again (``charge_progress``: 2.x NotifyEVChargingSchedule);
(g) offers 5 % duty cycle on a board that can (``EvConnection.set_digital_communication``)
    and steps back to nominal duty for basic charging when HLC fails: no session within
    :data:`HLC_WAIT_S` of the plug-in, or a session that broke; the hold of 0 A comes first
    (the contactor opens by the core's path), then the pilot's F step, then the hold goes;
    the next plug-in gets 5 % again;
(h) drives an ISO 15118-20 EV's power (V2X): every -20 ACChargeLoopRes tells the EV the
    target of :meth:`Iso15118Service.target_power` (the signed setpoint the power stage
    follows, from agent/core/v2x_modes.py's plan, else what the offer allows), pushed in
    ``evse_status`` whenever the EVSE reconciles; the limits and energy service the -20 EV
    states in its ChargeParameterDiscovery bound that setpoint in the core
    (``EvseController.set_ev_reported``: the stricter of the EV's word and the driver's EV
    side; an EV that chose plain AC is never discharged), until its session ends; a
    scheduled BPT EV's ScheduleExchange gets a discharging schedule (``discharge``, W
    negative) of what it may give; the EV's reported present power is
    ``EvSession.present_power_w``.

The pilot stays the safety path: every contactor rule of DESIGN.md holds as before; HLC only
adds information and one more limit source.

The seam for the OCPP side (2.0.1 / 2.1 C07, M01/M02, M06, K15-K17; 1.6 DataTransfer PnC):

- ``service.authorizer = X`` with ``async X.authorize_contract(ContractRequest) ->
  ContractVerdict`` (the request carries the EMAID, the PEM chain and the OCPP-shaped
  iso15118CertificateHashData list; return ``ContractVerdict.accepted(auth_result)`` /
  ``ContractVerdict.rejected("CertificateRevoked")`` ...). An accepted verdict's AuthResult
  authorizes the EVSE's session (Token(EMAID, "eMAID")) through ``Station.authorize_at``.
- ``service.certificates = Y`` with ``async Y.ev_certificate(CertificateRequest) ->
  CertificateResponse`` (the EV's EXI request in base64, its schema namespace, install or
  update: what Get15118EVCertificate carries; answer the CSMS's exiResponse).
- ``service.listeners.append(fn)``: ``fn(evse_id, what, session)`` with ``what`` one of
  ``session_started``, ``charging_needs`` (NotifyEVChargingNeeds), ``charge_progress``,
  ``session_ended``; called on the event loop, must not block.
- ``service.schedule_source = fn``: ``fn(evse_id, window_s) -> [(start_s, watts), ...]``,
  the schedule offered to the EV (default: the composite; K15/K16 may put the CSMS's answer
  to NotifyEVChargingNeeds here).
- ``service.session(evse_id)``: the EV's :class:`EvSession` (None: no HLC session).
- ``service.renegotiate(evse_id, reason)``: have the EV renegotiate now (whether the SECC
  was asked: only during the charge loop of an ISO 15118-2 / -20 session); the service does
  it itself when the composite changes materially, see (f).
- ``service.target_power(evse_id) -> TargetPower(watts, min_w, max_w)``: what a -20 EV is
  told to take now (signed W) and the bounds of the moment, see (h).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from agent.core.model import AuthResult, Token

if TYPE_CHECKING:
    from agent.core.evse import EvseController
    from agent.core.station import Station
    from hal.iso15118.client import HighLevelCommunication

log = logging.getLogger("cp_agent.core.iso15118")

LIMIT_SOURCE = "iso15118"
CONTRACT_WAIT_S = 1.5  # inside the SECC's 2 s: then Ongoing, the EV asks again
SCHEDULE_WINDOW_S = 86_400
MAX_SCHEDULE_ENTRIES = 24
# A composite differs "materially" from what the EV was offered (K17: renegotiate) when a
# period's power differs by more than the larger of these.
MATERIAL_W = 100.0
MATERIAL_SHARE = 0.05
HLC_WAIT_S = 30.0  # plug-in to SessionSetup at 5 % (ISO 15118-3 TT_EVSE_SLAC_init: 20-50 s)
NO_RENEGOTIATION = ("DIN_SPEC_70121",)
ISO_NAMESPACES = {"urn:iso:15118:2:2013:MsgDef": "15118-2",
                  "urn:iso:std:iso:15118:-20:CommonMessages": "15118-20"}


# ---------------------------------------------------------------------------- data


@dataclass(frozen=True)
class ChargingNeeds:
    """What the EV asked for (ISO 15118-2 ChargeParameterDiscovery, -20 ScheduleExchange);
    what it did not say is None. Departure is absolute (the EV says seconds from now)."""

    energy_mode: str | None = None  # e.g. AC_three_phase_core, DC_extended
    departure: datetime | None = None
    energy_amount_wh: float | None = None
    max_current_a: float | None = None
    min_current_a: float | None = None
    max_voltage_v: float | None = None
    max_power_w: float | None = None
    min_power_w: float | None = None
    soc_percent: float | None = None
    target_soc_percent: float | None = None
    min_soc_percent: float | None = None
    max_soc_percent: float | None = None
    battery_capacity_wh: float | None = None
    max_discharge_power_w: float | None = None
    min_discharge_power_w: float | None = None
    max_discharge_current_a: float | None = None
    min_energy_wh: float | None = None
    max_energy_wh: float | None = None
    max_v2x_energy_wh: float | None = None
    min_v2x_energy_wh: float | None = None
    bidirectional: bool = False
    control_mode: str | None = None  # ISO 15118-20: "scheduled" | "dynamic"

    @property
    def ac(self) -> bool:
        return bool(self.energy_mode) and str(self.energy_mode).startswith("AC")


@dataclass
class EvSession:
    """One EV's HLC session on one EVSE."""

    evse_id: int
    evcc_id: str | None = None
    protocol: str | None = None
    needs: ChargingNeeds | None = None
    charging: bool = False  # between the EV's PowerDelivery Start and Stop
    emaid: str | None = None  # Plug & Charge contract
    contract: ContractVerdict | None = None
    offered: list[tuple[int, float]] = field(default_factory=list)  # the last schedule given
    offered_at: datetime | None = None  # when (its periods count from then)
    renegotiating: str | None = None  # a renegotiation asked of the SECC, not yet served
    renegotiated: bool = False  # a schedule given in the charge loop: tell its start again
    ended: str | None = None  # why the session ended (None: running)
    state: str | None = None  # the SECC's state machine
    # ISO 15118-20 charge loop: what the EV says it takes now (W, signed: negative is a
    # discharge) and the target it was last given.
    present_power_w: float | None = None
    target_w: float | None = None


@dataclass(frozen=True)
class TargetPower:
    """The power an ISO 15118-20 EV is told to take now: ``watts`` signed (positive charges
    the EV, negative discharges it), within ``min_w`` (minus the most it may give) and
    ``max_w`` (the most it may take)."""

    watts: float
    min_w: float
    max_w: float


@dataclass(frozen=True)
class ContractRequest:
    """A Plug & Charge authorization: what OCPP 2.0.1 C07's Authorize carries."""

    evse_id: int
    emaid: str
    certificate_chain_pem: str | None  # contract leaf first, then the MO sub-CAs
    hash_data: tuple[dict[str, str], ...] = ()  # iso15118CertificateHashData (OCSP)
    protocol: str | None = None


@dataclass(frozen=True)
class ContractVerdict:
    """``status`` Accepted / Rejected; ``certificate_status`` what is wrong with the
    certificate (CertificateExpired, CertificateRevoked, NoCertificateAvailable, Failed)."""

    status: str
    certificate_status: str | None = None
    auth: AuthResult | None = None
    reason: str = ""

    @property
    def accepted(self) -> bool:
        return self.status == "Accepted"

    @classmethod
    def accepted_with(cls, auth: AuthResult) -> ContractVerdict:
        return cls("Accepted", auth=auth)

    @classmethod
    def rejected(cls, certificate_status: str | None = None, reason: str = "",
                 auth: AuthResult | None = None) -> ContractVerdict:
        return cls("Rejected", certificate_status, auth, reason)


class ContractAuthorizer(Protocol):
    async def authorize_contract(self, request: ContractRequest) -> ContractVerdict: ...


@dataclass(frozen=True)
class CertificateRequest:
    """An EV's certificate installation or update: what Get15118EVCertificate carries."""

    evse_id: int
    action: str  # install | update
    exi_b64: str
    namespace: str  # the EXI schema, e.g. urn:iso:15118:2:2013:MsgDef

    @property
    def schema_version(self) -> str:
        return ISO_NAMESPACES.get(self.namespace, self.namespace)


@dataclass(frozen=True)
class CertificateResponse:
    status: str  # Accepted | Failed
    exi_b64: str | None = None


class CertificateProvider(Protocol):
    async def ev_certificate(self, request: CertificateRequest) -> CertificateResponse: ...


class NoCertificates:
    """The default without OCPP wiring: no certificate service for EVs."""

    async def ev_certificate(self, request: CertificateRequest) -> CertificateResponse:
        log.info("EVSE %s: the EV asks for a contract certificate %s; no certificate service "
                 "is connected", request.evse_id, request.action)
        return CertificateResponse("Failed")


class PolicyContractAuthorizer:
    """The default: the contract certificate must be valid now, then the EMAID is an
    idToken of type eMAID for the station's authorization policy (local list, cache, the
    active version's Authorize, the offline rules)."""

    def __init__(self, station: Station) -> None:
        self.station = station

    async def authorize_contract(self, request: ContractRequest) -> ContractVerdict:
        problem = contract_problem(request.certificate_chain_pem, self.station.clock.now())
        if problem is not None:
            status, why = problem
            log.info("EVSE %s: contract %s refused: %s", request.evse_id, request.emaid, why)
            return ContractVerdict.rejected(status, why)
        policy = self.station.authorizer or self.station.authorization
        result = await policy.authorize(Token(request.emaid, "eMAID"), request.evse_id)
        if result.accepted:
            return ContractVerdict.accepted_with(result)
        return ContractVerdict.rejected(None, f"{result.status} ({result.source})", result)


def contract_problem(chain_pem: str | None, now: datetime) -> tuple[str, str] | None:
    """(certificate status, why) when the contract leaf cannot be used now; None when it
    can (or when there is no chain to judge: an EMAID alone is the policy's to judge)."""
    if not chain_pem:
        return None
    from agent.security import crypto

    try:
        certs = crypto.load_certificates(chain_pem)
    except crypto.CertificateFormatError as exc:
        return "Failed", f"contract certificate chain unreadable: {exc}"
    problem = crypto.validity_problem(certs[0], now)
    if problem is not None:
        return "CertificateExpired", f"contract certificate {problem}"
    return None


# ---------------------------------------------------------------------------- the service


def _needs(params: dict[str, Any], now: datetime) -> ChargingNeeds:
    def num(key: str) -> float | None:
        value = params.get(key)
        return float(value) if isinstance(value, int | float) and not isinstance(
            value, bool) else None

    departure_s = params.get("departure_time_s")
    departure = (now + timedelta(seconds=departure_s)
                 if isinstance(departure_s, int) and departure_s > 0 else None)
    mode = params.get("energy_mode")
    return ChargingNeeds(
        energy_mode=mode if isinstance(mode, str) else None, departure=departure,
        energy_amount_wh=num("energy_amount_wh"), max_current_a=num("max_current_a"),
        min_current_a=num("min_current_a"), max_voltage_v=num("max_voltage_v"),
        max_power_w=num("max_power_w"), min_power_w=num("min_power_w"),
        soc_percent=num("soc_percent"), target_soc_percent=num("target_soc_percent"),
        min_soc_percent=num("min_soc_percent"), max_soc_percent=num("max_soc_percent"),
        battery_capacity_wh=num("battery_capacity_wh"),
        max_discharge_power_w=num("max_discharge_power_w"),
        min_discharge_power_w=num("min_discharge_power_w"),
        max_discharge_current_a=num("max_discharge_current_a"),
        min_energy_wh=num("min_energy_wh"), max_energy_wh=num("max_energy_wh"),
        max_v2x_energy_wh=num("max_v2x_energy_wh"), min_v2x_energy_wh=num("min_v2x_energy_wh"),
        bidirectional=bool(params.get("bidirectional")),
        control_mode=params.get("control_mode") if params.get("control_mode") in (
            "scheduled", "dynamic") else None)


# An ISO 15118-20 energy service and the HAL's energy transfer modes it makes possible.
_SERVICE_MODES = {
    "AC": ("AC_single_phase", "AC_two_phase", "AC_three_phase"),
    "AC_BPT": ("AC_single_phase", "AC_two_phase", "AC_three_phase", "AC_BPT"),
    "DC": ("DC",), "DC_BPT": ("DC", "DC_BPT"),
}


def reported_ev(needs: ChargingNeeds, phases: int) -> tuple[Any, Any]:
    """(PowerLimits | None, modes | None): what an ISO 15118-20 EV stated of itself in its
    ChargeParameterDiscovery, as the core's bounds take it (agent/core/v2x.py ``ev_side``).
    Limits the EV left out, or that cannot exist (negative, a minimum above its maximum),
    are not stated: the driver's EV side alone bounds the setpoint then."""
    from hal.interfaces import EnergyTransferMode, PowerLimits

    names = _SERVICE_MODES.get(str(needs.energy_mode or ""))
    modes = frozenset(EnergyTransferMode(n) for n in names) if names else None
    charge = needs.max_power_w
    if charge is None and needs.max_current_a is not None:
        charge = needs.max_current_a * 230.0 * max(1, phases)
    if charge is None:
        return None, modes
    try:
        limits = PowerLimits(
            max_charge_w=float(charge),
            max_discharge_w=float(needs.max_discharge_power_w or 0.0)
            if needs.bidirectional else 0.0,
            max_discharge_a=needs.max_discharge_current_a if not needs.ac else None,
            min_charge_w=min(float(needs.min_power_w or 0.0), float(charge)),
            min_discharge_w=min(float(needs.min_discharge_power_w or 0.0),
                                float(needs.max_discharge_power_w or 0.0))
            if needs.bidirectional else 0.0)
    except ValueError as exc:
        log.error("the EV's ISO 15118-20 limits cannot be used (%s): %s", exc, needs)
        return None, modes
    return limits, modes


class Iso15118Service:
    """The core's side of the SECCs (see the module docstring for the seam)."""

    def __init__(self, station: Station, hlc: HighLevelCommunication, *,
                 evse_names: dict[int, str] | None = None, station_id: str = "") -> None:
        self.station = station
        self.hlc = hlc
        self.authorizer: ContractAuthorizer = PolicyContractAuthorizer(station)
        self.certificates: CertificateProvider = NoCertificates()
        self.schedule_source: Callable[[int, int], list[tuple[int, float]]] = self.composite
        self.listeners: list[Callable[[int, str, EvSession], None]] = []
        self.sessions: dict[int, EvSession] = {}
        self.evse_names = dict(evse_names or {})
        self.station_id = station_id
        self._contracts: dict[int, tuple[str, asyncio.Task[ContractVerdict]]] = {}
        self._tasks: set[asyncio.Task] = set()
        self._digital: set[int] = set()  # EVSEs offering 5 % duty cycle
        self._digital_off: set[int] = set()  # ... not for the EV plugged in now (fallback)
        self._plugs: dict[int, int] = {}  # EVSE -> plug-ins counted (the HLC wait's key)
        self._hlc_seen: dict[int, int] = {}  # EVSE -> the plug-in a session started in
        self._recheck: asyncio.Handle | None = None

    # ---------------------------------------------------------------- life cycle
    async def start(self) -> None:
        await self.hlc.start(self)
        # Only where a SECC runs (its venv may be missing): 5 % without one strands the EV.
        await self.attach([i for i in self.hlc.evse_ids if i in self.hlc.sidecars])

    async def attach(self, evse_ids: list[int]) -> None:
        """Follow these EVSEs (their SECCs run), offer 5 % where the board can, and watch
        the charging profiles for schedules that no longer hold (K17)."""
        for evse_id in evse_ids:
            evse = self.station.evses.get(evse_id)
            if evse is None:
                continue
            evse.state_listeners.append(self._evse_changed)
            self.hlc.push(evse_id, self._status(evse))
            if evse.hw.ev.supports_digital_communication:  # 5 %: the EV must use HLC
                self._digital.add(evse_id)
                await self._set_digital(evse, True)
            else:
                log.info("EVSE %s: ISO 15118 with nominal duty cycle (the board offers no 5 %%)",
                         evse_id)
            self._evse_changed(evse)  # an EV plugged in at start counts as a plug-in
        profiles = self.station.charging_profiles
        # Called after every install, update and removal (not only the dynamic ones').
        profiles.dynamic_listeners.append(self.schedule_may_have_changed)
        profiles.external_listeners.append(lambda _evse: self.schedule_may_have_changed())

    async def _set_digital(self, evse: EvseController, on: bool) -> None:
        try:
            await evse.hw.ev.set_digital_communication(on)
            log.info("EVSE %s: %s", evse.id, "5 % duty cycle offered (ISO 15118)" if on
                     else "nominal duty cycle (basic charging)")
        except Exception as exc:  # noqa: BLE001 - HLC is optional, the pilot is not
            log.error("EVSE %s: %s duty cycle not offered: %s", evse.id,
                      "5 %" if on else "nominal", exc)

    async def stop(self) -> None:
        for _, task in self._contracts.values():
            task.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, *(t for _, t in self._contracts.values()),
                             return_exceptions=True)
        await self.hlc.stop()

    def session(self, evse_id: int) -> EvSession | None:
        return self.sessions.get(evse_id)

    # ---------------------------------------------------------------- state to the SECC
    def _status(self, evse: EvseController) -> dict[str, Any]:
        snap = evse.snapshot()
        reading = snap.reading
        # The station ends the energy transfer (a stop, inoperative, faulted): the SECC says
        # StopCharging / Terminate to the EV at its next charge-loop message.
        stop = bool(snap.deauth_reason is not None or not snap.operative
                    or snap.blocking_fault is not None)
        return {"authorized": bool(snap.authorized), "contactor_closed": snap.contactor_closed,
                "pilot": snap.pilot.value, "offered_a": round(snap.offered_a, 2),
                "limit_a": round(self._limit_without_us(evse), 2), "stop": stop,
                "energy_wh": round(snap.energy_wh or 0.0, 1),
                "power_w": round(snap.power_w or 0.0, 1),
                "voltage_v": reading.voltage_v[0] if reading and reading.voltage_v else 230.0,
                "current_a": reading.current_a[0] if reading and reading.current_a else 0.0,
                "setpoint_w": getattr(evse.hw.ev, "power_setpoint", None),
                "ready": bool(snap.operative and snap.blocking_fault is None),
                **self._target_status(evse)}

    def target_power(self, evse_id: int) -> TargetPower | None:
        """What the EV on ``evse_id`` is to do now (ISO 15118-20 EVSETargetActivePower,
        signed W): the V2X setpoint the power stage follows (agent/core/v2x_modes.py plan,
        held to the EV's, the stage's and the discharge limits), else the charge the offer
        allows; within the charge and discharge bounds of the moment. None: no EVSE."""
        evse = self.station.evses.get(evse_id)
        if evse is None:
            return None
        offer = evse.snapshot().offered_a
        ev = evse.hw.ev
        if not ev.supports_setpoint:  # a charge-only stage: the offer is the target
            watts = max(0.0, offer) * 230.0 * evse.phases_in_use
            return TargetPower(round(watts, 1), 0.0, round(watts, 1))
        b = evse.setpoint_bounds(offer)
        follows = ev.power_setpoint
        watts = b.max_charge_w if follows is None else b.clamp(float(follows))
        return TargetPower(round(watts, 1), round(-b.max_discharge_w, 1),
                           round(b.max_charge_w, 1))

    def _target_status(self, evse: EvseController) -> dict[str, float]:
        try:
            t = self.target_power(evse.id)
        except Exception:  # noqa: BLE001 - a driver's bug: the SECC says 0, never a guess
            log.exception("EVSE %s: the EV's target power could not be made", evse.id)
            t = TargetPower(0.0, 0.0, 0.0)
        if t is None:
            return {}
        return {"target_w": t.watts, "target_min_w": t.min_w, "target_max_w": t.max_w}

    @staticmethod
    def _limit_without_us(evse: EvseController) -> float:
        """What the EVSE may offer, leaving out our own hold (the EV's maximum current)."""
        limits = [v for k, v in evse.limits.items() if k != LIMIT_SOURCE]
        return min([evse.max_current_a, *limits])

    def _evse_changed(self, evse: EvseController) -> None:
        self.hlc.push(evse.id, self._status(evse))
        plugged = evse.id in self._plugs and self._plugs[evse.id] > 0
        if evse.ev_connected and not plugged:
            seq = self._plugs[evse.id] = abs(self._plugs.get(evse.id, 0)) + 1
            if evse.id in self._digital and evse.id not in self._digital_off:
                # At 5 % energy flows by HLC only (IEC 61851-1 Table A.8): held at 0 A
                # until the EV's PowerDelivery Start, or the fallback to basic charging.
                self._hold(evse.id, True)
                self._spawn(self._wait_for_hlc(evse.id, seq), f"hlc-wait-{evse.id}")
        elif not evse.ev_connected and plugged:
            self._plugs[evse.id] = -self._plugs[evse.id]  # remembered, negative: unplugged
        if not evse.ev_connected:
            self._end(evse.id, "EV unplugged")
            self._hold(evse.id, False)
            if evse.id in self._digital_off:  # the next EV gets 5 % again
                self._digital_off.discard(evse.id)
                self._spawn(self._set_digital(evse, True), f"hlc-5-{evse.id}")

    async def _wait_for_hlc(self, evse_id: int, seq: int) -> None:
        """An EV that starts no session at 5 % does not speak ISO 15118: basic charging."""
        await self.station.clock.sleep(HLC_WAIT_S)
        if self._plugs.get(evse_id) == seq and self._hlc_seen.get(evse_id) != seq:
            await self._fallback(evse_id, f"no ISO 15118 session within {HLC_WAIT_S:g} s of "
                                          "the plug-in")

    def _falls_back(self, evse_id: int) -> bool:
        evse = self.station.evses.get(evse_id)
        return (evse is not None and evse.ev_connected and evse_id in self._digital
                and evse_id not in self._digital_off)

    async def _fallback(self, evse_id: int, why: str) -> None:
        """5 % -> basic charging for the EV plugged in: 0 A first (the contactor opens by
        the core's path), then the pilot's F step to nominal duty, then the hold goes."""
        evse = self.station.evses.get(evse_id)
        if evse is None or not self._falls_back(evse_id):
            return
        self._digital_off.add(evse_id)
        log.warning("EVSE %s: %s: the EV charges by the pilot alone (nominal duty cycle)",
                    evse_id, why)
        await evse.set_limit(LIMIT_SOURCE, 0.0)
        await self._set_digital(evse, False)
        s = self.sessions.get(evse_id)
        if s is None or s.ended is not None or s.charging:
            await evse.set_limit(LIMIT_SOURCE, None)

    # ---------------------------------------------------------------- events from the SECC
    def hlc_event(self, evse_id: int, name: str, params: dict[str, Any]) -> None:
        if name == "session_started":
            s = self.sessions[evse_id] = EvSession(evse_id, evcc_id=params.get("evcc_id"),
                                                   protocol=params.get("protocol"))
            log.info("EVSE %s: ISO 15118 session with EV %s (%s)", evse_id, s.evcc_id,
                     s.protocol)
            plug = self._plugs.get(evse_id, 0)  # before the pilot's B reached us: the next
            self._hlc_seen[evse_id] = plug if plug > 0 else 1 - plug
            self._hold(evse_id, True)  # no energy before the EV's PowerDelivery Start
            self._tell(evse_id, "session_started", s)
        elif name == "ev_parameters":
            s = self._current(evse_id)
            needs = _needs(params.get("params") or {}, self.station.clock.now())
            if s.needs != needs:
                s.needs = needs
                if s.evcc_id is None:
                    s.evcc_id = (params.get("params") or {}).get("evcc_id")
                log.info("EVSE %s: the EV asks for %s", evse_id, needs)
                self._report_ev(evse_id, s)
                self._tell(evse_id, "charging_needs", s)
        elif name == "ev_power":
            s = self._current(evse_id)
            present, target = params.get("present_w"), params.get("target_w")
            s.present_power_w = float(present) if present is not None else None
            s.target_w = float(target) if target is not None else None
            log.info("EVSE %s: the EV takes %s W (target %s W)", evse_id,
                     "?" if present is None else f"{present:g}",
                     "?" if target is None else f"{target:g}")
            self._tell(evse_id, "ev_power", s)
        elif name == "charge_progress":
            s = self._current(evse_id)
            started = bool(params.get("started"))
            if started != s.charging or (started and s.renegotiated):
                s.charging, s.renegotiated = started, False
                log.info("EVSE %s: the EV %s the energy transfer", evse_id,
                         "starts" if started else "stops")
                self._hold(evse_id, not started)
                self._tell(evse_id, "charge_progress", s)
        elif name == "state":
            s = self.sessions.get(evse_id)
            if s is not None:
                s.state = params.get("state")
        elif name == "session_ended":
            # The EV ended it (SessionStop): no energy until it unplugs or starts anew. The
            # session broke (timeout, connection lost): the EVSE falls back to the pilot alone.
            self._end(evse_id, str(params.get("reason") or "ended"),
                      hold=params.get("state") == "SessionStop")
        elif name == "renegotiation":
            s = self.sessions.get(evse_id)
            log.info("EVSE %s: renegotiation %s (%s)", evse_id, params.get("status"),
                     params.get("reason") or "-")
            if s is not None and params.get("status") == "refused":
                s.renegotiating = None
        elif name == "status" and params.get("status") == "error":
            log.error("EVSE %s: the ISO 15118 SECC reports an error", evse_id)

    def _current(self, evse_id: int) -> EvSession:
        s = self.sessions.get(evse_id)
        if s is None or s.ended is not None:
            s = self.sessions[evse_id] = EvSession(evse_id)
        return s

    def _end(self, evse_id: int, reason: str, *, hold: bool = False) -> None:
        s = self.sessions.get(evse_id)
        if s is None or s.ended is not None:
            return
        s.ended, s.charging = reason, False
        log.info("EVSE %s: ISO 15118 session ended: %s", evse_id, reason)
        evse = self.station.evses.get(evse_id)
        if evse is not None and evse.ev_reported != (None, None):  # the next EV says its own
            self._spawn(evse.set_ev_reported(None, None), f"hlc-ev-{evse_id}")
        pending = self._contracts.pop(evse_id, None)
        if pending is not None:
            pending[1].cancel()
        if not hold and self._falls_back(evse_id):  # a broken session: basic charging
            self._spawn(self._fallback(evse_id, f"the ISO 15118 session broke ({reason})"),
                        f"hlc-fallback-{evse_id}")
        else:
            self._hold(evse_id, hold)
        self._tell(evse_id, "session_ended", s)

    def _report_ev(self, evse_id: int, s: EvSession) -> None:
        """An ISO 15118-20 EV states its own limits and energy service: from now on they
        bound the V2X setpoint (with the driver's EV side: the stricter wins). -2 / DIN
        sessions carry no discharge and leave the driver's EV side alone."""
        evse = self.station.evses.get(evse_id)
        if evse is None or s.needs is None or not (s.protocol or "").startswith("ISO_15118_20"):
            return
        reported = reported_ev(s.needs, evse.phases_in_use)
        if reported != evse.ev_reported:
            self._spawn(evse.set_ev_reported(*reported), f"hlc-ev-{evse_id}")

    def _hold(self, evse_id: int, on: bool) -> None:
        evse = self.station.evses.get(evse_id)
        if evse is None:
            return
        if (LIMIT_SOURCE in evse.limits) == on:
            return
        self._spawn(evse.set_limit(LIMIT_SOURCE, 0.0 if on else None), f"hlc-hold-{evse_id}")

    def _spawn(self, coro: Any, name: str) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("ISO 15118 task %s failed", task.get_name(), exc_info=task.exception())

    def _tell(self, evse_id: int, what: str, s: EvSession) -> None:
        for listener in list(self.listeners):
            try:
                listener(evse_id, what, s)
            except Exception:  # noqa: BLE001 - a listener never breaks the session
                log.exception("ISO 15118 listener failed on %s", what)

    # ---------------------------------------------------------------- questions of the SECC
    async def hlc_request(self, evse_id: int, name: str,
                          params: dict[str, Any]) -> dict[str, Any]:
        evse = self.station.evses.get(evse_id)
        if evse is None:
            raise ValueError(f"no EVSE {evse_id}")
        if name == "evse_info":
            return self._info(evse)
        if name == "authorize":
            return await self._authorize(evse, params)
        if name == "schedule":
            return self._schedule(evse, params)
        if name == "certificate":
            return await self._certificate(evse_id, params)
        raise ValueError(f"unknown request {name!r}")

    def _info(self, evse: EvseController) -> dict[str, Any]:
        modes = ["AC_three_phase_core"] if evse.phases >= 3 else ["AC_single_phase_core"]
        # The configured EVSEID (DIN SPEC 91286, e.g. DE*ABC*E1), else one made of the
        # station's id; ISO 15118-2 wants 7-37 characters, "ZZ00000" meaning "none".
        name = self.evse_names.get(evse.id) or f"{self.station_id}*E{evse.id}"
        if not 7 <= len(name) <= 37:
            name = "ZZ00000"
        return {"evse_id": name, "energy_modes": modes, "nominal_voltage_v": 230.0,
                "max_current_a": evse.max_current_a, "phases": evse.phases,
                "meter_id": f"evse-{evse.id}"}

    async def _authorize(self, evse: EvseController, params: dict[str, Any]) -> dict[str, Any]:
        if params.get("token_type") != "pnc":  # EIM: a card, a remote start, free charging
            return {"status": "Accepted" if evse.snapshot().authorized else "Ongoing"}
        emaid = params.get("id_token")
        if not emaid:
            raise ValueError("a Plug & Charge authorization without an EMAID")
        s = self._current(evse.id)
        s.emaid = emaid
        pending = self._contracts.get(evse.id)
        if pending is None or pending[0] != emaid:
            if pending is not None:
                pending[1].cancel()
            request = ContractRequest(evse.id, emaid, params.get("certificate_chain_pem"),
                                      tuple(params.get("hash_data") or ()),
                                      params.get("protocol"))
            task = asyncio.get_running_loop().create_task(
                self._contract(evse, request), name=f"contract-{evse.id}")
            self._contracts[evse.id] = pending = (emaid, task)
        task = pending[1]
        try:
            verdict = await asyncio.wait_for(asyncio.shield(task), CONTRACT_WAIT_S)
        except TimeoutError:
            return {"status": "Ongoing"}
        s.contract = verdict
        return {"status": verdict.status, "certificate_status": verdict.certificate_status}

    async def _contract(self, evse: EvseController, request: ContractRequest) -> ContractVerdict:
        try:
            verdict = await self.authorizer.authorize_contract(request)
        except Exception as exc:  # noqa: BLE001 - a broken authorizer refuses, never crashes
            log.exception("EVSE %s: contract authorizer failed", evse.id)
            return ContractVerdict.rejected("Failed", f"authorizer failed: {exc}")
        if not verdict.accepted:
            log.info("EVSE %s: contract %s refused (%s%s)", evse.id, request.emaid,
                     verdict.certificate_status or verdict.status,
                     f": {verdict.reason}" if verdict.reason else "")
            return verdict
        auth = verdict.auth or AuthResult("Accepted", source="contract")
        if evse.snapshot().authorized:  # already authorized (a card before the contract)
            return verdict
        ok = await self.station.authorize_at(evse.id, Token(request.emaid, "eMAID"), auth)
        if not ok:
            return replace(verdict, status="Rejected", reason="the EVSE cannot take it now")
        log.info("EVSE %s: contract %s accepted (%s)", evse.id, request.emaid, auth.source)
        return verdict

    # ---------------------------------------------------------------- renegotiation (K17)
    def renegotiate(self, evse_id: int, reason: str = "the schedule changed") -> bool:
        """Have the EV on ``evse_id`` renegotiate its schedule; whether the SECC was asked
        (only in the charge loop of a protocol that can: not DIN SPEC 70121). Asked once
        until served: the EV's ChargeParameterDiscovery gets the composite of that moment."""
        s = self.sessions.get(evse_id)
        if s is None or s.ended is not None or not s.charging \
                or (s.protocol or "") in NO_RENEGOTIATION:
            return False
        if s.renegotiating is not None:
            return True
        if not self.hlc.renegotiate(evse_id, reason):
            return False
        s.renegotiating = reason
        log.info("EVSE %s: the EV is asked to renegotiate its schedule (%s)", evse_id, reason)
        return True

    def schedule_may_have_changed(self) -> None:
        """A profile or an external limit changed: look once the loop is free (one look for
        a burst of changes, e.g. a SetChargingProfile replacing several)."""
        if self._recheck is None:
            self._recheck = asyncio.get_running_loop().call_soon(self._check_schedules)

    def _check_schedules(self) -> None:
        self._recheck = None
        now = self.station.clock.now()
        for evse_id, s in list(self.sessions.items()):
            evse = self.station.evses.get(evse_id)
            if (evse is None or s.ended is not None or not s.charging or not s.offered
                    or s.offered_at is None or s.renegotiating is not None):
                continue
            elapsed = max(0.0, (now - s.offered_at).total_seconds())
            try:
                fresh = self._periods(evse, SCHEDULE_WINDOW_S, MAX_SCHEDULE_ENTRIES)
            except Exception:  # noqa: BLE001 - a broken schedule source never stops charging
                log.exception("EVSE %s: the schedule for the EV could not be made", evse_id)
                continue
            if material_change(shift(s.offered, elapsed), fresh, SCHEDULE_WINDOW_S):
                self.renegotiate(evse_id, "the composite schedule changed")

    def composite(self, evse_id: int, window_s: int) -> list[tuple[int, float]]:
        """The EVSE's composite schedule in W (0 = now): what the smart charging engine lets
        it take, the default schedule for the EV."""
        periods = self.station.charging_profiles.composite(evse_id, window_s, unit="W")
        return [(int(p.start_s), float(p.limit)) for p in periods]

    def _schedule(self, evse: EvseController, params: dict[str, Any]) -> dict[str, Any]:
        departure = params.get("departure_time_s")
        window = departure if isinstance(departure, int) and departure > 0 \
            else SCHEDULE_WINDOW_S
        max_entries = params.get("max_entries") or MAX_SCHEDULE_ENTRIES
        periods = self._periods(evse, window, max_entries)
        s = self._current(evse.id)
        s.offered, s.offered_at = list(periods), self.station.clock.now()
        if s.charging:  # asked in the charge loop: a renegotiation (ours or the EV's)
            s.renegotiated = True
        s.renegotiating = None
        out: dict[str, Any] = {"periods": [{"start_s": start, "limit_w": round(w, 1)}
                                           for start, w in periods]}
        discharge = self._discharge_w(evse, s)
        if discharge > 0:  # -20 BPT: the DischargingSchedule, negative as -20 counts it
            out["discharge"] = [{"start_s": 0, "limit_w": -round(discharge, 1)}]
        return out

    def _discharge_w(self, evse: EvseController, s: EvSession) -> float:
        """The most a bidirectional -20 EV may give now (W >= 0), at the offer the EVSE
        makes once the EV starts: the V2X bounds (the CSMS's allowed modes, the EV's and
        the stage's limits, the dischargeLimit / DER / external caps); 0 for the others."""
        if s.needs is None or not s.needs.bidirectional or not evse.hw.ev.supports_setpoint:
            return 0.0
        try:
            b = evse.setpoint_bounds(self._limit_without_us(evse))
        except Exception:  # noqa: BLE001 - a driver's bug: no discharge offered
            log.exception("EVSE %s: the discharge bounds could not be made", evse.id)
            return 0.0
        return b.max_discharge_w

    def _periods(self, evse: EvseController, window: int,
                 max_entries: int) -> list[tuple[int, float]]:
        periods = self.schedule_source(evse.id, window)[:max(1, min(max_entries, 1024))]
        if not periods or periods[0][0] != 0:
            cap = self._limit_without_us(evse) * 230.0 * evse.phases
            periods = [(0, cap), *[p for p in periods if p[0] > 0]]
        return periods

    async def _certificate(self, evse_id: int, params: dict[str, Any]) -> dict[str, Any]:
        action = params.get("action")
        if action not in ("install", "update"):
            raise ValueError(f"certificate action {action!r}: expected install or update")
        response = await self.certificates.ev_certificate(CertificateRequest(
            evse_id, action, str(params.get("exi_b64")), str(params.get("namespace"))))
        return {"status": response.status, "exi_b64": response.exi_b64}


def shift(periods: list[tuple[int, float]], elapsed_s: float) -> list[tuple[int, float]]:
    """A schedule offered ``elapsed_s`` ago, counted from now (the period in force first)."""
    out: list[tuple[int, float]] = []
    for start, watts in periods:
        at = start - elapsed_s
        if at <= 0:
            out = [(0, watts)]
        else:
            out.append((int(at), watts))
    return out


def material_change(old: list[tuple[int, float]], new: list[tuple[int, float]],
                    window_s: int) -> bool:
    """Whether two schedules (start s, W; both from now) differ by more than
    :data:`MATERIAL_W` or :data:`MATERIAL_SHARE` anywhere within ``window_s``: what makes the
    EV renegotiate. Small wobbles (a rounding, a 50 W move) do not."""
    def at(periods: list[tuple[int, float]], t: int) -> float | None:
        value = None
        for start, watts in periods:
            if start > t:
                break
            value = watts
        return value

    for t in sorted({0, *(p[0] for p in old), *(p[0] for p in new)}):
        if t >= window_s:
            break
        a, b = at(old, t), at(new, t)
        if a is None or b is None:
            if a != b:
                return True
            continue
        if abs(a - b) > max(MATERIAL_W, MATERIAL_SHARE * max(abs(a), abs(b))):
            return True
    return False
