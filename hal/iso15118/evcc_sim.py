"""The `iso15118` package's EV simulator (EVCC) against our SECC: the mock HAL's HLC EV.

Runs inside ``.venv-iso15118``, started by the agent for ``cp-agent ctl plug 1 --iso15118``
(hal/iso15118/client.py, ``EvSimulator``) and by the tests, on the loopback interface::

    .venv-iso15118/bin/python hal/iso15118/evcc_sim.py --interface lo --sdp-port 15200 \\
        --protocol ISO_15118_2 --evcc-id 0A1B2C3D4E5F

What the EV received that the agent wants to know (the offered schedule, TLS or not, a
contract certificate installed, why a session stopped, the session's end) is printed on stdout
as one line each, ``CP-AGENT-EV {json}``, which the agent reads.

An ISO 15118-20 EV (``--protocol ISO_15118_20_AC``) selects the ``--control-mode`` it is
told (scheduled or dynamic: the parameter set of that control mode the SECC offers) and
follows the SECC's EVSETargetActivePower: the power it reports in its next ACChargeLoopReq
(EVPresentActivePower) is the target of the last ACChargeLoopRes, held to its own limits
(negative: it discharges, on AC_BPT only); each loop is reported (``charge_loop``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from typing import Any

if __package__:
    from . import loopback, protocol
else:  # run by path inside the sidecar venv
    import loopback  # type: ignore[no-redef]
    import protocol  # type: ignore[no-redef]

REPORT = "CP-AGENT-EV "


def report(kind: str, **data: Any) -> None:
    print(REPORT + json.dumps({"kind": kind, **data}), flush=True)


def _config(args: argparse.Namespace) -> dict[str, Any]:
    services = ["AC_BPT"] if args.bidirectional else ["AC"]
    return {"supportedProtocols": [args.protocol], "supportedEnergyServices": services,
            "energyTransferMode": args.energy_mode, "isCertInstallNeeded": args.cert_install,
            "useTls": args.tls, "enforceTls": args.tls, "chargeLoopCycle": args.loops,
            "sdpRetryCycles": 1}


async def run(args: argparse.Namespace) -> None:
    if args.interface == loopback.LOOPBACK:
        loopback.apply(args.sdp_port)
        loopback.patient_ev(args.patience)
    from iso15118.evcc import EVCCHandler
    from iso15118.evcc.controller.simulator import SimEVController
    from iso15118.evcc.evcc_config import load_from_file
    from iso15118.shared.exificient_exi_codec import ExificientEXICodec
    from iso15118.shared.messages.datatypes import PVEAmount, PVEVMaxCurrent
    from iso15118.shared.messages.enums import ControlMode, ServiceV20, UnitSymbol
    from iso15118.shared.messages.iso15118_20.common_types import RationalNumber
    from iso15118.shared.settings import load_shared_settings

    load_shared_settings(os.devnull)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(_config(args), f)
    try:
        cfg = await load_from_file(f.name)
    finally:
        os.unlink(f.name)

    wanted_mode = ControlMode.DYNAMIC if args.control_mode == "dynamic" \
        else ControlMode.SCHEDULED
    loop = {"target_w": None}  # the last ACChargeLoopRes's EVSETargetActivePower
    _follow_targets(loop)

    class Ev(SimEVController):
        async def select_energy_service_v20(self, services: list) -> Any:
            """The first energy service, with the parameter set of the control mode asked
            for (the package's simulator takes the first set, always Scheduled)."""
            from iso15118.shared.messages.enums import ParameterName

            chosen = await super().select_energy_service_v20(services)
            top = services[0]
            sets = [ps for ps in top.parameter_sets if any(
                p.name == ParameterName.CONTROL_MODE and p.int_value == wanted_mode
                for p in ps.parameters)]
            if sets:
                # [V2G20-2663]: with Dynamic, MobilityNeedsMode 1 (the EV's own needs)
                sets.sort(key=lambda ps: not any(
                    p.name == ParameterName.MOBILITY_NEEDS_MODE and p.int_value == 1
                    for p in ps.parameters))
                chosen.parameter_set = sets[0]
            return chosen

        def present_w(self, bpt: bool) -> float:
            """What the EV takes now: the last target, within its own limits."""
            target = loop["target_w"]
            if target is None:
                return 0.0
            if target < 0:
                return max(target, -float(args.max_discharge_w)) if bpt else 0.0
            return min(target, float(args.max_power_w))

        async def get_ac_charge_loop_params_v20(self, control_mode: Any,
                                                selected_service: Any) -> Any:
            params = await super().get_ac_charge_loop_params_v20(control_mode,
                                                                 selected_service)
            bpt = selected_service == ServiceV20.AC_BPT
            present = self.present_w(bpt)
            params.ev_present_active_power = RationalNumber.get_rational_repr(present)
            if control_mode == ControlMode.DYNAMIC:  # the EV's limits in every loop
                params.ev_max_charge_power = RationalNumber.get_rational_repr(args.max_power_w)
                params.ev_min_charge_power = RationalNumber.get_rational_repr(100)
                if bpt:
                    params.ev_max_discharge_power = RationalNumber.get_rational_repr(
                        args.max_discharge_w)
                    params.ev_min_discharge_power = RationalNumber.get_rational_repr(100)
                params.ev_present_reactive_power = RationalNumber.get_rational_repr(0)
            report("charge_loop", target_w=loop["target_w"], present_w=present,
                   control_mode=args.control_mode)
            return params

        async def get_charge_params_v20(self, selected_service: Any) -> Any:
            params = await super().get_charge_params_v20(selected_service)
            params.ev_max_charge_power = RationalNumber.get_rational_repr(args.max_power_w)
            if hasattr(params, "ev_max_discharge_power"):
                params.ev_max_discharge_power = RationalNumber.get_rational_repr(
                    args.max_discharge_w)
            return params

        async def get_evcc_id(self, protocol: Any, iface: str) -> str:
            if args.evcc_id:
                return args.evcc_id
            return await super().get_evcc_id(protocol, iface)

        async def get_charge_params_v2(self, protocol: Any) -> Any:
            params = await super().get_charge_params_v2(protocol)
            ac = params.ac_parameters
            if ac is not None:
                ac.departure_time = args.departure_s
                ac.e_amount = PVEAmount(multiplier=0, value=args.energy_wh,
                                        unit=UnitSymbol.WATT_HOURS)
                ac.ev_max_current = PVEVMaxCurrent(multiplier=0, value=args.max_current_a,
                                                   unit=UnitSymbol.AMPERE)
            return params

        async def process_sa_schedules_v2(self, sa_schedules: list) -> Any:
            offered = sa_schedules[-1]
            report("schedule", tuple_id=offered.sa_schedule_tuple_id, entries=[
                {"start_s": e.time_interval.start, "duration_s": e.time_interval.duration,
                 "limit_w": float(e.p_max.get_decimal_value())}
                for e in offered.p_max_schedule.schedule_entries])
            return await super().process_sa_schedules_v2(sa_schedules)

        async def process_scheduled_se_params(self, scheduled_params: Any, pause: bool) -> Any:
            offered = scheduled_params.schedule_tuples[0]  # -20 ScheduleExchangeRes
            power = offered.charging_schedule.power_schedule
            discharge = offered.discharging_schedule
            report("schedule", tuple_id=offered.schedule_tuple_id, entries=[
                {"duration_s": e.duration, "limit_w": float(e.power.get_decimal_value())}
                for e in power.schedule_entry_list.entries], discharge=[
                {"duration_s": e.duration, "limit_w": float(e.power.get_decimal_value())}
                for e in discharge.power_schedule.schedule_entry_list.entries]
                if discharge is not None else None)
            return await super().process_scheduled_se_params(scheduled_params, pause)

        async def process_dynamic_se_params(self, dynamic_params: Any, pause: bool) -> Any:
            report("dynamic", departure_s=dynamic_params.departure_time,
                   target_soc=dynamic_params.target_soc)
            return await super().process_dynamic_se_params(dynamic_params, pause)

        async def stop_charging(self) -> None:
            report("stop_charging")
            await super().stop_charging()

        async def store_contract_cert_and_priv_key(self, contract_cert: bytes,
                                                   priv_key: bytes) -> None:
            # The package's simulator keeps nothing; an EV stores what CertificateInstallation
            # brought (the leaf DER, the decrypted 32-byte private scalar) where its next
            # PaymentDetailsReq reads it: the PKI directory's contract files.
            installed = _store_contract(contract_cert, priv_key)
            report("contract_installed", **installed)

    handler = EVCCHandler(evcc_config=cfg, iface=args.interface,
                          exi_codec=ExificientEXICodec(), ev_controller=Ev(cfg))
    # The package's EVCC logs a failed SDP and then waits forever ("not sure what else to
    # do here"): a simulated EV that failed ends, saying why.
    failed: asyncio.Future = asyncio.get_running_loop().create_future()
    restart_sdp = handler.restart_sdp

    async def _restart_sdp(*a: Any, **kw: Any) -> Any:
        try:
            return await restart_sdp(*a, **kw)
        except Exception as exc:
            if not failed.done():
                failed.set_result(str(exc))
            raise

    handler.restart_sdp = _restart_sdp  # type: ignore[method-assign]
    _report_sessions(handler)
    session = asyncio.ensure_future(handler.start())
    orphan = asyncio.ensure_future(protocol.exit_with_parent(
        args.parent_pid, lambda: failed.done() or failed.set_result("the agent is gone")))
    try:
        done, _ = await asyncio.wait({session, failed}, timeout=args.timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        session.cancel()
        orphan.cancel()
    if failed in done or session not in done or session.exception() is not None:
        why = (failed.result() if failed.done() else
               str(session.exception()) if session in done else f"no end in {args.timeout} s")
        report("ended", ok=False, reason=why)
        raise SystemExit(1)
    report("ended", ok=True)


def _follow_targets(loop: dict[str, Any]) -> None:
    """Keep the target of each -20 ACChargeLoopRes where the EV's next request reads it
    (the package's EVCC state hands the response to no controller method)."""
    from iso15118.evcc.states import iso15118_20_states as v20

    process = v20.ACChargeLoop.process_message

    async def _process(self: Any, message: Any, message_exi: bytes | None = None) -> Any:
        for name in ("bpt_dynamic_params", "dynamic_params", "bpt_scheduled_params",
                     "scheduled_params"):
            params = getattr(message, name, None)
            target = getattr(params, "evse_target_active_power", None)
            if target is not None:
                loop["target_w"] = float(target.get_decimal_value())
                break
        return await process(self, message, message_exi)

    v20.ACChargeLoop.process_message = _process  # type: ignore[method-assign]


def _report_sessions(handler: Any) -> None:
    """Report each V2G session's transport (TLS or TCP) and why it stopped (the response
    code the SECC refused with, a timeout): what the EV was told."""
    from iso15118.shared.notifications import StopNotification

    start_comm_session = handler.start_comm_session

    async def _start(host: Any, port: int, is_tls: bool) -> Any:
        report("connected", tls=bool(is_tls))
        return await start_comm_session(host, port, is_tls)

    handler.start_comm_session = _start
    queue = handler._rcv_queue
    put = queue.put_nowait

    def _put(item: Any) -> None:
        if isinstance(item, StopNotification):
            report("stopped", ok=bool(item.successful), reason=str(item.reason)[:400])
        put(item)

    queue.put_nowait = _put


def _store_contract(contract_cert: bytes, priv_key: bytes) -> dict[str, Any]:
    """Write an installed contract certificate and its key into the EV's PKI directory (the
    package's file names); what was stored, and whether the key is the certificate's."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from iso15118.shared.security import CertPath, KeyPasswordPath, KeyPath

    cert = x509.load_der_x509_certificate(contract_cert)
    key = ec.derive_private_key(int.from_bytes(priv_key, "big"), ec.SECP256R1())
    der = serialization.Encoding.DER
    matches = (key.public_key().public_bytes(der, serialization.PublicFormat.SubjectPublicKeyInfo)
               == cert.public_key().public_bytes(
                   der, serialization.PublicFormat.SubjectPublicKeyInfo))
    cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    if matches:
        with open(CertPath.CONTRACT_LEAF_DER, "wb") as f:
            f.write(contract_cert)
        fd = os.open(KeyPath.CONTRACT_LEAF_PEM, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
        with open(KeyPasswordPath.CONTRACT_LEAF_KEY_PASSWORD, "w") as f:
            f.write("")
    return {"emaid": str(cn[0].value) if cn else None, "key_matches": matches,
            "stored": matches}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="ISO 15118 EV simulator (the package's EVCC)")
    p.add_argument("--interface", default="lo")
    p.add_argument("--sdp-port", type=int, default=15118)
    p.add_argument("--protocol", default="ISO_15118_2")
    p.add_argument("--energy-mode", default="AC_three_phase_core")
    p.add_argument("--evcc-id", default="")
    p.add_argument("--departure-s", type=int, default=0)
    p.add_argument("--energy-wh", type=int, default=20_000)
    p.add_argument("--max-current-a", type=int, default=16)
    p.add_argument("--loops", type=int, default=3, help="charge loop cycles before stopping")
    p.add_argument("--tls", action="store_true")
    p.add_argument("--timeout", type=float, default=300.0, help="give up after this long")
    p.add_argument("--patience", type=float, default=5.0,
                   help="on lo: wait this many times the ISO 15118 response timeouts (a busy "
                        "machine runs two JVMs); 1: the standard's timing")
    p.add_argument("--cert-install", action="store_true")
    p.add_argument("--bidirectional", action="store_true")
    p.add_argument("--control-mode", choices=("scheduled", "dynamic"), default="scheduled",
                   help="ISO 15118-20: the control mode the EV selects")
    p.add_argument("--max-power-w", type=int, default=11_000,
                   help="ISO 15118-20: the most the EV takes (W)")
    p.add_argument("--max-discharge-w", type=int, default=11_000,
                   help="ISO 15118-20 BPT: the most the EV gives (W)")
    p.add_argument("--pki", default="")
    p.add_argument("--parent-pid", type=int, default=0,
                   help="end when this process (the agent) is gone")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ["NETWORK_INTERFACE"] = args.interface
    os.environ["MESSAGE_LOG_JSON"] = "false"
    if args.pki:
        os.environ["PKI_PATH"] = args.pki.rstrip("/") + "/"
    try:
        asyncio.run(run(args))
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
