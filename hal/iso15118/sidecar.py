"""The ISO 15118 SECC sidecar: the `iso15118` package's SECC, asking the agent for every decision.

Runs inside ``.venv-iso15118`` (scripts/iso15118_venv.sh), started by the agent
(hal/iso15118/client.py) or by systemd, one process per EVSE (one PLC modem, one network
interface each)::

    .venv-iso15118/bin/python hal/iso15118/sidecar.py --socket /run/cp-agent/hlc-1.sock \\
        --interface eth1 --protocols ISO_15118_2,DIN_SPEC_70121 --auth EIM,PNC --pki DIR

It listens on ``--socket`` for the agent (hal/iso15118/protocol.py) and starts the package's
SECC (SDP on UDP, the V2G session over TCP or TLS, EXI through the package's Java codec) on
``--interface``. :class:`AgentController`, the package's EVSEControllerInterface, forwards what
the SECC asks to the agent and answers from its replies; the EV's parameters go up as events.
The agent's last ``evse_status`` answers the questions of the moment (contactor, CP state,
stop), so no charge-loop message waits on a round trip. Without an agent (not connected, or
no answer in time) nothing is authorized and no schedule is offered: the SECC answers
Ongoing, and the EV waits or gives up, never charges on a guess.

ISO 15118-20 AC: every ACChargeLoopRes (Scheduled and Dynamic, AC and AC_BPT) carries the
agent's pushed target (``target_w``: its V2X setpoint, negative to discharge) as
EVSETargetActivePower, held to the station's bounds and the EV's own limits; the EV's
EVPresentActivePower goes up as ``ev_power``; a scheduled BPT EV gets the agent's discharge
limit as a DischargingSchedule (negative), Dynamic control gets no schedule (the EV's own
mobility needs echoed).

The package's own simulator controller fills in what the agent has no say in (DC cable check,
price tables of -20 schedules, the defaults of the DC values, the -20 DC charge loop): this
sidecar is an AC station's SECC first; DC stations get the package's DC behaviour with the
agent's limits.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import contextlib
import logging
import os
import signal
import sys
import time
from typing import Any

if __package__:
    from . import loopback, protocol
else:  # run by path inside the sidecar venv: sys.path[0] is this directory
    import loopback  # type: ignore[no-redef]
    import protocol  # type: ignore[no-redef]

log = logging.getLogger("cp_agent.iso15118.sidecar")

ASK_TIMEOUT_S = 2.0  # an AuthorizationReq has 2 s: Ongoing rather than a late answer
CONTACTOR_WAIT_S = 3.0  # [V2G2-860]: closed within 3 s of C/D
SCHEDULE_WINDOW_S = 86_400  # [V2G2-304]: without a departure time, at least 24 h


class AgentLink:
    """The sidecar's end of the channel: a Unix socket server, one agent at a time."""

    def __init__(self, path: str, hello: dict[str, Any]) -> None:
        self.path = path
        self.hello = hello
        self.writer: asyncio.StreamWriter | None = None
        self.pending: dict[int, asyncio.Future] = {}
        self.next_id = 0
        self.status: dict[str, Any] = {}  # the agent's last evse_status
        self.changed = asyncio.Condition()
        self.server: asyncio.base_events.Server | None = None
        self.on_renegotiate: Any = None  # the controller's request_renegotiation

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self.server = await asyncio.start_unix_server(self._serve, self.path,
                                                      limit=protocol.MAX_LINE)
        os.chmod(self.path, 0o600)

    @property
    def connected(self) -> bool:
        return self.writer is not None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        previous, self.writer = self.writer, writer
        if previous is not None:  # the agent reconnected: its old connection is dead
            previous.close()
        log.info("agent connected")
        self._send(protocol.event("hello", **self.hello))
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError as exc:  # longer than MAX_LINE: dropped, the channel goes on
                    log.error("agent sent a line too long, dropped: %s", exc)
                    continue
                if not line:
                    break
                await self._receive(line)
        except ConnectionError as exc:
            log.warning("agent connection lost: %s", exc)
        finally:
            if self.writer is writer:
                self.writer = None
                for fut in self.pending.values():
                    if not fut.done():
                        fut.set_result(None)
                self.pending.clear()
            writer.close()
            log.info("agent disconnected")

    async def _receive(self, line: bytes) -> None:
        try:
            msg = protocol.decode_from_agent(line)
        except protocol.ProtocolError as exc:
            log.error("agent sent a bad line (%s): %r", exc, line[:200])
            if exc.request_id is not None:
                self._send(protocol.response(exc.request_id, error=str(exc)))
            return
        if msg.kind == protocol.RESPONSE:
            fut = self.pending.pop(msg.id, None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
        elif msg.kind == protocol.EVENT and msg.name == "renegotiate":
            if self.on_renegotiate is not None:
                self.on_renegotiate(msg.params.get("reason"))
        elif msg.kind == protocol.EVENT:  # evse_status
            async with self.changed:
                self.status.update(msg.params["status"])
                self.changed.notify_all()
        elif msg.kind == protocol.REQUEST:  # ping
            self._send(protocol.response(msg.id, {}))

    def _send(self, msg: protocol.Message) -> bool:
        writer = self.writer
        if writer is None:
            return False
        try:
            writer.write(protocol.encode(msg))
        except (ConnectionError, protocol.ProtocolError) as exc:
            log.error("not sent to the agent (%s): %s", msg.name or msg.kind, exc)
            return False
        return True

    def tell(self, name: str, **params: Any) -> None:
        self._send(protocol.event(name, **params))

    async def ask(self, name: str, timeout: float = ASK_TIMEOUT_S,
                  **params: Any) -> dict[str, Any] | None:
        """The agent's answer, or None (not connected, no answer in time, an error)."""
        self.next_id += 1
        request_id = self.next_id
        fut = asyncio.get_running_loop().create_future()
        self.pending[request_id] = fut
        if not self._send(protocol.request(request_id, name, **params)):
            self.pending.pop(request_id, None)
            return None
        try:
            msg = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            log.warning("the agent did not answer %s within %.1f s", name, timeout)
            return None
        finally:
            self.pending.pop(request_id, None)
        if msg is None:
            return None
        if msg.error is not None:
            log.error("the agent refused %s: %s", name, msg.error)
            return None
        return msg.result

    async def wait_for(self, key: str, value: Any, timeout: float) -> bool:
        """Wait until the pushed status has ``key == value``; whether it came to that."""
        try:
            async with asyncio.timeout(timeout):
                async with self.changed:
                    await self.changed.wait_for(lambda: self.status.get(key) == value)
            return True
        except TimeoutError:
            return False


def _number(value: Any) -> float | None:
    """A PhysicalValue / RationalNumber of the package as a float (None stays None)."""
    if value is None:
        return None
    getter = getattr(value, "get_decimal_value", None)
    try:
        return float(getter()) if getter is not None else float(value)
    except (TypeError, ValueError):
        return None


def build_controller(link: AgentLink) -> Any:
    """The package's EVSEControllerInterface, speaking for the agent (built after the import
    of ``iso15118``, which needs the environment set first)."""
    from iso15118.secc.controller.interface import AuthorizationResponse, ServiceStatus
    from iso15118.secc.controller.simulator import SimEVSEController
    from iso15118.shared.messages.datatypes import EVSENotification as EVSENotificationV2
    from iso15118.shared.messages.datatypes import (
        PhysicalValue,
        PVEVSEMaxCurrent,
        PVEVSENominalVoltage,
        PVPMax,
    )
    from iso15118.shared.messages.enums import (
        AuthorizationStatus,
        AuthorizationTokenType,
        ControlMode,
        CpState,
        EnergyTransferModeEnum,
        Protocol,
        ServiceV20,
        UnitSymbol,
    )
    from iso15118.shared.messages.iso15118_2.datatypes import (
        ACEVSEChargeParameter,
        ACEVSEStatus,
        PMaxSchedule,
        PMaxScheduleEntry,
        RelativeTimeInterval,
        SAScheduleTuple,
    )
    from iso15118.shared.messages.iso15118_2.datatypes import MeterInfo as MeterInfoV2
    from iso15118.shared.messages.iso15118_2.datatypes import ResponseCode as ResponseCodeV2
    from iso15118.shared.messages.iso15118_20.ac import (
        BPTDynamicACChargeLoopResParams,
        BPTScheduledACChargeLoopResParams,
        DynamicACChargeLoopResParams,
        ScheduledACChargeLoopResParams,
    )
    from iso15118.shared.messages.iso15118_20.common_messages import (
        DischargingSchedule,
        DynamicScheduleExchangeResParams,
        PowerSchedule,
        PowerScheduleEntry,
        PowerScheduleEntryList,
    )
    from iso15118.shared.messages.iso15118_20.common_types import (
        EVSENotification as EVSENotificationV20,
    )
    from iso15118.shared.messages.iso15118_20.common_types import EVSEStatus, RationalNumber
    from iso15118.shared.messages.iso15118_20.common_types import MeterInfo as MeterInfoV20
    from iso15118.shared.messages.iso15118_20.common_types import (
        ResponseCode as ResponseCodeV20,
    )

    cert_codes_v2 = {"CertificateExpired": ResponseCodeV2.FAILED_CERTIFICATE_EXPIRED,
                     "CertificateRevoked": ResponseCodeV2.FAILED_CERTIFICATE_REVOKED,
                     "NoCertificateAvailable": ResponseCodeV2.FAILED_NO_CERTIFICATE_AVAILABLE,
                     "Failed": ResponseCodeV2.FAILED}

    def physical(cls: type, value: float, unit: Any) -> Any:
        exponent, number = PhysicalValue.get_exponent_value_repr(value)
        return cls(multiplier=exponent, value=number, unit=unit)

    class AgentController(SimEVSEController):
        """Every decision to the agent; the present from its last ``evse_status``."""

        def __init__(self) -> None:
            super().__init__()
            self.info: dict[str, Any] | None = None
            self.reported_evcc_id: str | None = None
            self.comm_session: Any = None  # the package's session of the present EV
            self.charging = False  # between the EV's PowerDelivery Start and Stop
            self.renegotiation: str | None = None  # the agent's pending request (its reason)
            self.power_told: tuple[Any, ...] | None = None  # the last ev_power sent

        # ---------------------------------------------------------------- renegotiation (K17)
        def request_renegotiation(self, reason: str | None) -> None:
            """The agent's schedule changed: tell the EV at its next charge-loop message
            (-2: EVSENotification ReNegotiation; -20: ServiceRenegotiation, the one the
            package's state machines carry through: the EV stops, ends with SessionStop
            ServiceRenegotiation and comes back through ScheduleExchange; DIN SPEC 70121 has
            none). Until the EV asks for its new schedule the request stands."""
            protocol_ = self._protocol() or ""
            if not self.charging:
                why = "the EV is not in the charge loop"
            elif protocol_ == Protocol.DIN_SPEC_70121.name:
                why = "DIN SPEC 70121 has no renegotiation"
            else:
                self.renegotiation = reason or "the schedule changed"
                log.info("renegotiation requested (%s): the EV is told at its next "
                         "charge-loop message", self.renegotiation)
                link.tell("renegotiation", status="requested", reason=self.renegotiation)
                return
            log.info("renegotiation not requested: %s", why)
            link.tell("renegotiation", status="refused", reason=why)

        def _renegotiation_started(self) -> None:
            """The EV asks for its schedule again: the request is served."""
            if self.renegotiation is not None:
                link.tell("renegotiation", status="started", reason=self.renegotiation)
                self.renegotiation = None

        def _renegotiate_now(self) -> bool:
            return self.renegotiation is not None and self.charging

        async def service_renegotiation_supported(self) -> bool:
            return True  # [V2G20-1477]: the EV may come back through ServiceDiscovery

        # ---------------------------------------------------------------- helpers
        @property
        def st(self) -> dict[str, Any]:
            return link.status

        def _protocol(self) -> str | None:
            selected = self.get_selected_protocol()
            return selected.name if selected is not None else None

        async def _info(self) -> dict[str, Any]:
            if self.info is None:
                self.info = await link.ask("evse_info", protocol=self._protocol())
            return self.info or {}

        def _report_ev(self) -> None:
            ev = self.ev_data_context
            rated = ev.rated_limits
            ac, dc = rated.ac_limits, rated.dc_limits
            mode = ev.selected_energy_mode
            if mode is None:  # -20: the energy service (AC, AC_BPT, DC, DC_BPT)
                service = getattr(self.comm_session, "selected_energy_service", None)
                mode = getattr(getattr(service, "service", None), "name", None)
            evcc_id = ev.evcc_id or getattr(self.comm_session, "evcc_id", None)
            params = {
                "evcc_id": str(evcc_id) if evcc_id is not None else None,
                "protocol": self._protocol(),
                "energy_mode": getattr(mode, "value", mode),
                "departure_time_s": ev.departure_time,
                "energy_amount_wh": ev.target_energy_request,
                "max_current_a": ac.max_charge_current or dc.max_charge_current,
                "min_current_a": ac.min_charge_current or dc.min_charge_current,
                "max_voltage_v": ac.max_voltage or dc.max_voltage,
                "min_voltage_v": dc.min_voltage,
                "max_power_w": ac.max_charge_power or dc.max_charge_power or None,
                "min_power_w": ac.min_charge_power or dc.min_charge_power or None,
                "max_discharge_power_w": ac.max_discharge_power or dc.max_discharge_power,
                "min_discharge_power_w": ac.min_discharge_power or dc.min_discharge_power,
                "max_discharge_current_a": dc.max_discharge_current,
                "soc_percent": ev.present_soc,
                "target_soc_percent": ev.target_soc,
                "min_soc_percent": ev.min_soc,
                "max_soc_percent": ev.max_soc,
                "battery_capacity_wh": ev.total_battery_capacity,
                "target_energy_wh": ev.target_energy_request,
                "min_energy_wh": ev.min_energy_request,
                "max_energy_wh": ev.max_energy_request,
                "max_v2x_energy_wh": ev.max_v2x_energy_request,
                "min_v2x_energy_wh": ev.min_v2x_energy_request,
                "control_mode": self._control_mode(),
            }
            params = {k: (float(v) if isinstance(v, int | float) and not isinstance(v, bool)
                          and k != "departure_time_s" else v)
                      for k, v in params.items() if v is not None}
            if "departure_time_s" in params:
                params["departure_time_s"] = int(params["departure_time_s"])
            params["bidirectional"] = bool(params.get("max_discharge_power_w"))
            link.tell("ev_parameters", params=params)

        def _control_mode(self) -> str | None:
            """-20: the control mode of the parameter set the EV selected."""
            mode = getattr(self.comm_session, "control_mode", None)
            return {ControlMode.SCHEDULED: "scheduled", ControlMode.DYNAMIC: "dynamic"}.get(
                mode) if self._protocol() and self._protocol().startswith(
                    "ISO_15118_20") else None

        def _bpt(self) -> bool:
            service = getattr(self.comm_session, "selected_energy_service", None)
            return getattr(service, "service", None) in (ServiceV20.AC_BPT, ServiceV20.DC_BPT)

        # ---------------------------------------------------------------- -20 charge loop
        def _ev_limit(self, name: str) -> float | None:
            """The EV's AC limit ``name`` (W): its charge-loop value, else its
            ChargeParameterDiscovery one; None when it stated none."""
            ev = self.ev_data_context
            for limits in (ev.session_limits.ac_limits, ev.rated_limits.ac_limits):
                value = _number(getattr(limits, name, None))
                if value:
                    return abs(value)
            return None

        def target_w(self, bpt: bool) -> float:
            """EVSETargetActivePower (W, signed): the agent's target (its V2X setpoint, else
            what the offer allows) within the station's bounds of the moment and the EV's
            own limits; a discharge only on a BPT service; 0 without an agent's word or
            when the station stops."""
            st = self.st
            target = _number(st.get("target_w"))
            if target is None or st.get("stop"):
                return 0.0
            lo = _number(st.get("target_min_w"))
            hi = _number(st.get("target_max_w"))
            target = max(lo if lo is not None else 0.0, min(hi if hi is not None else 0.0,
                                                            target))
            if target > 0:
                cap = self._ev_limit("max_charge_power")
                target = min(target, cap) if cap is not None else target
            elif target < 0:
                cap = self._ev_limit("max_discharge_power") if bpt else None
                target = max(target, -cap) if cap is not None else 0.0
            return round(target, 1) + 0.0

        async def get_ac_charge_loop_params_v20(self, control_mode: Any,
                                                selected_service: Any) -> Any:
            """The -20 AC charge loop's answer: the agent's target, the meter's power; the
            EV's present power goes up to the agent (``ev_power``) when it moved."""
            bpt = selected_service == ServiceV20.AC_BPT
            dynamic = control_mode == ControlMode.DYNAMIC
            target = self.target_w(bpt)
            present = _number(self.ev_data_context.present_active_power)
            told = (present, target, self._control_mode())
            if told != self.power_told:
                self.power_told = told
                link.tell("ev_power", present_w=present, target_w=target,
                          control_mode=told[2])
            cls = {(True, True): BPTDynamicACChargeLoopResParams,
                   (True, False): BPTScheduledACChargeLoopResParams,
                   (False, True): DynamicACChargeLoopResParams,
                   (False, False): ScheduledACChargeLoopResParams}[(bpt, dynamic)]
            return cls(evse_target_active_power=RationalNumber.get_rational_repr(target),
                       evse_present_active_power=RationalNumber.get_rational_repr(
                           round(_number(self.st.get("power_w")) or 0.0)))

        async def get_dynamic_se_params(self, selected_energy_service: Any,
                                        schedule_exchange_req: Any) -> Any:
            """-20 Dynamic control: no schedule (the charge loop's target is the control);
            the EV's own mobility needs are taken as they are (its departure time and SoC
            levels echoed, no price schedule)."""
            self._renegotiation_started()
            self._report_ev()
            ev = self.ev_data_context
            target = ev.target_soc if isinstance(ev.target_soc, int) else None
            low = ev.min_soc if isinstance(ev.min_soc, int) else None
            if low is not None and target is not None and low > target:
                low = None
            departure = ev.departure_time if isinstance(ev.departure_time, int) else None
            return DynamicScheduleExchangeResParams(departure_time=departure, min_soc=low,
                                                    target_soc=target)

        # ---------------------------------------------------------------- common
        async def set_status(self, status: ServiceStatus) -> None:
            link.tell("status", status=getattr(status, "value", str(status)))

        async def set_present_protocol_state(self, state: Any) -> None:
            name = type(state).__name__ if not isinstance(state, str) else state
            # -20's SessionSetup keeps the EVCCID (and its selected energy service) in the
            # communication session only, not in the EV data context the -2 states fill.
            self.comm_session = getattr(state, "comm_session", None) or self.comm_session
            evcc_id = self.ev_data_context.evcc_id or getattr(self.comm_session, "evcc_id",
                                                              None)
            if evcc_id is not None and str(evcc_id) != self.reported_evcc_id:
                self.reported_evcc_id = str(evcc_id)
                link.tell("session_started", evcc_id=str(evcc_id), protocol=self._protocol())
            link.tell("state", state=str(name))

        async def get_evse_id(self, protocol_: Protocol) -> str:
            evse_id = str((await self._info()).get("evse_id") or "ZZ00000")
            if protocol_ == Protocol.DIN_SPEC_70121:  # DIN SPEC 91286 as hexBinary digits
                digits = "".join("A" if c == "*" else c for c in evse_id if c.isdigit()
                                 or c == "*")
                return digits if digits and len(digits) % 2 == 0 else (digits + "B")[:32]
            return evse_id

        async def get_supported_energy_transfer_modes(self, protocol_: Protocol) -> list:
            if protocol_ == Protocol.DIN_SPEC_70121:
                return [EnergyTransferModeEnum.DC_EXTENDED]
            modes = []
            for name in (await self._info()).get("energy_modes") or ["AC_three_phase_core"]:
                try:
                    modes.append(EnergyTransferModeEnum(name))
                except ValueError:
                    log.error("the agent named an unknown energy transfer mode %r", name)
            return modes or [EnergyTransferModeEnum.AC_THREE_PHASE_CORE]

        def is_eim_authorized(self) -> bool:
            return bool(self.st.get("authorized"))

        def ready_to_charge(self) -> bool:
            return bool(self.st.get("ready", True))

        async def is_authorized(self, id_token: str | None = None,
                                id_token_type: Any = None,
                                certificate_chain: bytes | None = None,
                                hash_data: list | None = None) -> AuthorizationResponse:
            pnc = id_token_type == AuthorizationTokenType.EMAID
            chain = certificate_chain.decode("ascii", "replace") if certificate_chain else None
            reply = await link.ask(
                "authorize", token_type="pnc" if pnc else "eim",
                id_token=str(id_token) if id_token is not None else None,
                certificate_chain_pem=chain,
                hash_data=_ocpp_hash_data(hash_data),
                protocol=self._protocol())
            status = (reply or {}).get("status", "Ongoing")
            verdict = {"Accepted": AuthorizationStatus.ACCEPTED,
                       "Rejected": AuthorizationStatus.REJECTED}.get(
                status, AuthorizationStatus.ONGOING)
            code: Any = None
            cert = (reply or {}).get("certificate_status")
            if self.get_selected_protocol() == Protocol.ISO_15118_2:
                code = cert_codes_v2.get(cert, ResponseCodeV2.OK) if cert else ResponseCodeV2.OK
                if verdict == AuthorizationStatus.REJECTED and code == ResponseCodeV2.OK:
                    code = ResponseCodeV2.FAILED
            elif self._protocol() and self._protocol().startswith("ISO_15118_20"):
                code = (ResponseCodeV20.FAILED if verdict == AuthorizationStatus.REJECTED
                        else ResponseCodeV20.OK)
            return AuthorizationResponse(authorization_status=verdict,
                                         certificate_response_status=code)

        async def send_rated_limits(self) -> None:
            self._report_ev()

        async def get_sa_schedule_list(self, ev_data_context: Any,
                                       is_free_charging_service: bool,
                                       max_schedule_entries: int | None,
                                       departure_time: int = 0) -> list | None:
            self._renegotiation_started()
            self._report_ev()
            window = int(departure_time) if departure_time else SCHEDULE_WINDOW_S
            reply = await link.ask("schedule", departure_time_s=int(departure_time) or None,
                                   max_entries=max_schedule_entries,
                                   protocol=self._protocol())
            periods = _periods(reply, window, max_schedule_entries)
            if periods is None:
                return None  # EVSEProcessing Ongoing: the EV asks again
            entries = []
            for i, (start, watts) in enumerate(periods):
                end = periods[i + 1][0] if i + 1 < len(periods) else window
                interval = (RelativeTimeInterval(start=start, duration=min(86_400, end - start))
                            if i + 1 == len(periods) else RelativeTimeInterval(start=start))
                entries.append(PMaxScheduleEntry(
                    p_max=physical(PVPMax, watts, UnitSymbol.WATT), time_interval=interval))
            return [SAScheduleTuple(sa_schedule_tuple_id=1,
                                    p_max_schedule=PMaxSchedule(schedule_entries=entries),
                                    sales_tariff=None)]

        async def get_scheduled_se_params(self, selected_energy_service: Any,
                                          schedule_exchange_req: Any) -> Any:
            self._renegotiation_started()
            params = await super().get_scheduled_se_params(selected_energy_service,
                                                           schedule_exchange_req)
            self._report_ev()
            req = getattr(schedule_exchange_req, "scheduled_params", None)
            departure = getattr(req, "departure_time", None) or 0
            window = int(departure) if departure else SCHEDULE_WINDOW_S
            reply = await link.ask("schedule", departure_time_s=int(departure) or None,
                                   max_entries=getattr(schedule_exchange_req,
                                                       "max_supporting_points", None),
                                   protocol=self._protocol())
            periods = _periods(reply, window, None)
            if periods is None:
                return None
            def power_schedule(rows: list[tuple[int, float]]) -> Any:
                return PowerSchedule(time_anchor=int(time.time()),
                                     schedule_entry_list=PowerScheduleEntryList(entries=[
                                         PowerScheduleEntry(
                                             duration=(rows[i + 1][0] if i + 1 < len(rows)
                                                       else window) - start,
                                             power=RationalNumber.get_rational_repr(watts))
                                         for i, (start, watts) in enumerate(rows)]))

            discharge = _discharge_periods(reply, window) if self._bpt() else None
            for schedule in params.schedule_tuples:
                schedule.charging_schedule.power_schedule = power_schedule(periods)
                # -20 BPT: what the EV may give, negative; none: no discharge offered
                # (never the package's simulated discharging schedule).
                schedule.discharging_schedule = None if not discharge else DischargingSchedule(
                    power_schedule=power_schedule(discharge),
                    absolute_price_schedule=schedule.charging_schedule.absolute_price_schedule,
                    price_level_schedule=schedule.charging_schedule.price_level_schedule)
            return params

        def _notification_v2(self) -> Any:
            if self.st.get("stop"):
                return EVSENotificationV2.STOP_CHARGING
            if self._renegotiate_now():
                return EVSENotificationV2.RE_NEGOTIATION
            return EVSENotificationV2.NONE

        async def get_ac_evse_status(self) -> ACEVSEStatus:
            return ACEVSEStatus(notification_max_delay=0,
                                evse_notification=self._notification_v2(), rcd=False)

        async def get_dc_evse_status(self) -> Any:
            status = await super().get_dc_evse_status()
            return status.copy(update={"evse_notification": self._notification_v2()})

        async def get_evse_status(self) -> EVSEStatus | None:
            # No status at all unless there is news: the package's EVCC ends its charge loop
            # on any EVSEStatus in ACChargeLoopRes.
            if self.st.get("stop"):
                return EVSEStatus(notification_max_delay=0,
                                  evse_notification=EVSENotificationV20.TERMINATE)
            if self._renegotiate_now():
                return EVSEStatus(notification_max_delay=0,
                                  evse_notification=EVSENotificationV20.SERVICE_RENEGOTIATION)
            return None

        async def get_ac_charge_params_v2(self) -> ACEVSEChargeParameter:
            self._renegotiation_started()  # the renegotiation's ChargeParameterDiscovery
            info = await self._info()
            return ACEVSEChargeParameter(
                ac_evse_status=await self.get_ac_evse_status(),
                evse_nominal_voltage=physical(PVEVSENominalVoltage,
                                              float(info.get("nominal_voltage_v", 230.0)),
                                              UnitSymbol.VOLTAGE),
                evse_max_current=physical(PVEVSEMaxCurrent, self._max_current(info),
                                          UnitSymbol.AMPERE))

        def _max_current(self, info: dict[str, Any]) -> float:
            limit = self.st.get("limit_a")
            if limit is None:
                limit = info.get("max_current_a", 0.0)
            return max(0.0, float(limit))

        async def get_evse_max_current_limit(self) -> Any:
            if self.evse_data_context.current_type is not None and str(
                    getattr(self.evse_data_context.current_type, "value", "")) == "DC":
                return await super().get_evse_max_current_limit()
            return physical(PVEVSEMaxCurrent, self._max_current(await self._info()),
                            UnitSymbol.AMPERE)

        async def get_meter_info_v2(self) -> MeterInfoV2:
            info = await self._info()
            return MeterInfoV2(meter_id=str(info.get("meter_id") or "cp-agent")[:32],
                               meter_reading=int(self.st.get("energy_wh") or 0),
                               t_meter=int(time.time()))

        async def get_meter_info_v20(self) -> MeterInfoV20:
            info = await self._info()
            return MeterInfoV20(meter_id=str(info.get("meter_id") or "cp-agent")[:32],
                                charged_energy_reading_wh=int(self.st.get("energy_wh") or 0),
                                meter_timestamp=int(time.time()))

        async def get_cp_state(self) -> CpState:
            pilot = str(self.st.get("pilot") or "UNKNOWN")
            if pilot in ("E", "F"):
                return CpState(pilot)
            if pilot in ("A", "B", "C", "D"):
                return CpState(pilot + "2")  # the PWM is on for an HLC session (5 %)
            return CpState.UNKNOWN

        async def set_hlc_charging(self, is_ongoing: bool) -> None:
            self.charging = bool(is_ongoing)
            link.tell("charge_progress", started=bool(is_ongoing))

        async def stop_charger(self) -> None:
            self.charging = False
            link.tell("charge_progress", started=False)

        async def is_contactor_closed(self) -> bool | None:
            return await link.wait_for("contactor_closed", True, CONTACTOR_WAIT_S)

        async def is_contactor_opened(self) -> bool:
            return await link.wait_for("contactor_closed", False, CONTACTOR_WAIT_S)

        async def get_15118_ev_certificate(self, base64_encoded_cert_installation_req: str,
                                           namespace: str) -> str:
            action = "install"
            reply = await link.ask("certificate", timeout=10.0, action=action,
                                   exi_b64=base64_encoded_cert_installation_req,
                                   namespace=str(getattr(namespace, "value", namespace)))
            if not reply or reply.get("status") != "Accepted" or not reply.get("exi_b64"):
                raise RuntimeError("no certificate for the EV: "
                                   f"{(reply or {}).get('status', 'the agent did not answer')}")
            return str(reply["exi_b64"])

        async def session_ended(self, current_state: str, reason: str) -> None:
            link.tell("session_ended", state=str(current_state), reason=str(reason))
            self.charging, self.renegotiation = False, None
            self.power_told = None
            self.info = None
            self.reported_evcc_id = None
            self.comm_session = None

    controller = AgentController()
    link.on_renegotiate = controller.request_renegotiation
    return controller


def _ocpp_hash_data(items: list | None) -> list[dict[str, str]] | None:
    """The package's certificate hash data (snake_case, base64url hashes, a decimal serial)
    as OCPP's OCSPRequestDataType (camelCase, hex), what the agent sends in Authorize; None
    when there is none or it is unreadable (the agent then derives it from the chain)."""
    if not items:
        return None
    out = []
    for h in items:
        try:
            out.append({"hashAlgorithm": str(h["hash_algorithm"]),
                        "issuerNameHash": base64.urlsafe_b64decode(h["issuer_name_hash"]).hex(),
                        "issuerKeyHash": base64.urlsafe_b64decode(h["issuer_key_hash"]).hex(),
                        "serialNumber": f"{int(h['serial_number']):x}",
                        "responderURL": str(h["responder_url"])})
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            log.error("the SECC's certificate hash data is unreadable (%s): %r", exc, h)
            return None
    return out


def _periods(reply: dict[str, Any] | None, window: int,
             max_entries: int | None) -> list[tuple[int, float]] | None:
    """The agent's schedule as (start s, W) pairs within ``window``; None when it gave none
    usable (the SECC then answers Ongoing)."""
    if not reply or not isinstance(reply.get("periods"), list) or not reply["periods"]:
        return None
    out: list[tuple[int, float]] = []
    for p in reply["periods"]:
        try:
            start, watts = int(p["start_s"]), float(p["limit_w"])
        except (KeyError, TypeError, ValueError):
            log.error("the agent sent a schedule period that is not {start_s, limit_w}: %r", p)
            return None
        if start < 0 or watts < 0 or (out and start <= out[-1][0]) or start >= window:
            if start >= window:
                break
            log.error("the agent sent a schedule period out of order or negative: %r", p)
            return None
        out.append((start, watts))
    if not out or out[0][0] != 0:
        log.error("the agent's schedule does not start now: %r", reply["periods"][:3])
        return None
    return out[:max_entries] if max_entries else out


def _discharge_periods(reply: dict[str, Any] | None,
                       window: int) -> list[tuple[int, float]] | None:
    """The agent's discharge limits (``discharge``: start s, W <= 0) within ``window``; None
    when it gave none or none usable (no discharge is offered then)."""
    rows = (reply or {}).get("discharge")
    if not isinstance(rows, list) or not rows:
        return None
    out: list[tuple[int, float]] = []
    for p in rows:
        try:
            start, watts = int(p["start_s"]), float(p["limit_w"])
        except (KeyError, TypeError, ValueError):
            log.error("the agent sent a discharge period that is not {start_s, limit_w}: %r", p)
            return None
        if start >= window:
            break
        if start < 0 or watts > 0 or (out and start <= out[-1][0]):
            log.error("the agent sent a discharge period out of order or positive: %r", p)
            return None
        out.append((start, watts))
    return out if out and out[0][0] == 0 else None


def _environment(args: argparse.Namespace) -> None:
    """What the package reads from the environment (it has no other way in)."""
    os.environ.update({
        "NETWORK_INTERFACE": args.interface,
        "PROTOCOLS": args.protocols,
        "AUTH_MODES": args.auth,
        "FREE_CHARGING_SERVICE": "true" if args.free_service else "false",
        "ALLOW_CERT_INSTALL_SERVICE": "true" if args.cert_install else "false",
        "FREE_CERT_INSTALL_SERVICE": "true",
        "USE_CPO_BACKEND": "true",  # certificate installation goes to the agent
        "SECC_ENFORCE_TLS": "true" if args.enforce_tls else "false",
        "MESSAGE_LOG_JSON": "true" if args.log_messages else "false",
        "MESSAGE_LOG_EXI": "false",
        "LOG_LEVEL": args.log_level,
    })
    if args.pki:
        os.environ["PKI_PATH"] = args.pki.rstrip("/") + "/"


async def run(args: argparse.Namespace) -> None:
    if args.interface == loopback.LOOPBACK:
        loopback.apply(args.sdp_port)
    elif args.sdp_port != 15118:
        raise SystemExit("--sdp-port is for the loopback interface only (ISO 15118-2 fixes "
                         "15118 on a PLC link)")
    from iso15118 import __version__ as iso_version
    from iso15118.secc import SECCHandler
    from iso15118.secc.secc_settings import Config
    from iso15118.shared.exificient_exi_codec import ExificientEXICodec

    config = Config()
    config.load_envs(env_path=os.devnull)  # the environment only, never a stray .env
    # The codec starts its JVM (seconds, blocking): before the socket opens, so that a
    # connected agent means a sidecar ready for an EV.
    codec = ExificientEXICodec()
    link = AgentLink(args.socket, {"protocol_version": protocol.PROTOCOL_VERSION,
                                   "iso15118_version": iso_version,
                                   "interface": args.interface, "evse": args.evse})
    controller = build_controller(link)
    handler = SECCHandler(exi_codec=codec, evse_controller=controller, config=config)
    await link.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    orphan = asyncio.create_task(protocol.exit_with_parent(args.parent_pid, stop.set))
    secc = asyncio.create_task(handler.start(args.interface), name="secc")
    stopper = asyncio.create_task(stop.wait(), name="stop")
    done, _ = await asyncio.wait({secc, stopper}, return_when=asyncio.FIRST_COMPLETED)
    secc.cancel()
    stopper.cancel()
    orphan.cancel()
    if link.server is not None:
        link.server.close()
    with contextlib.suppress(OSError):
        os.unlink(args.socket)
    if secc in done and not secc.cancelled() and secc.exception() is not None:
        raise SystemExit(f"SECC ended: {secc.exception()}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="ISO 15118 SECC sidecar of cp-agent")
    p.add_argument("--socket", required=True, help="Unix socket the agent connects to")
    p.add_argument("--interface", required=True, help="the PLC modem's interface (lo: mock)")
    p.add_argument("--evse", type=int, default=1)
    p.add_argument("--protocols", default="ISO_15118_2,DIN_SPEC_70121")
    p.add_argument("--auth", default="EIM")
    p.add_argument("--pki", default="")
    p.add_argument("--free-service", action="store_true")
    p.add_argument("--cert-install", action="store_true")
    p.add_argument("--enforce-tls", action="store_true")
    p.add_argument("--sdp-port", type=int, default=15118)
    p.add_argument("--log-messages", action="store_true")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--parent-pid", type=int, default=0,
                   help="exit when this process (the agent) is gone")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    _environment(args)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
