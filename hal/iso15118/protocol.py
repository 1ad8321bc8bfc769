"""The channel between the agent and its ISO 15118 SECC sidecar: JSON lines over a Unix socket.

Pure standard library on purpose: both ends import this one module, the agent from its own
virtual environment and the sidecar (hal/iso15118/sidecar.py) from ``.venv-iso15118``, so the
two cannot disagree on a message's shape.

The sidecar listens (``--socket PATH``), the agent connects, reconnecting when the sidecar
restarts: a board runs the sidecar on the PLC modem's network interface, the agent speaks to it
through the socket whether it started the process or systemd did.

Every line is one JSON object, UTF-8, at most :data:`MAX_LINE` bytes with its newline::

    {"kind": "event",    "name": "session_started", "params": {...}}
    {"kind": "request",  "id": 7, "name": "authorize", "params": {...}}
    {"kind": "response", "id": 7, "result": {...}}
    {"kind": "response", "id": 7, "error": "why"}

Who says what:

- The sidecar *asks* (requests to the agent, :data:`AGENT_METHODS`) what only the station can
  decide: the EVSE's identity and ratings (``evse_info``), whether the EV may charge
  (``authorize``: EIM, or a contract certificate chain with its EMAID for Plug & Charge), the
  schedule to offer (``schedule``), a certificate installation or update for the EV
  (``certificate``).
- The sidecar *reports* (events, :data:`SIDECAR_EVENTS`) what the EV said and where the
  session is: ``session_started`` (EVCCID, protocol), ``ev_parameters`` (requested energy
  transfer mode, departure time, energy amount, the EV's limits, the -20 bidirectional
  parameters), ``charge_progress`` (PowerDelivery start / stop), ``ev_power`` (the -20
  charge loop: the EV's present power and the target it was given), ``state``,
  ``session_ended``.
- The agent *pushes* its EVSE's state (event ``evse_status``, :data:`AGENT_EVENTS`) whenever it
  changes: authorized, contactor, pilot, offer, meter, setpoint, stop. The SECC's questions
  about the present (contactor closed? CP state? present current? stop charging?) are
  answered from the latest push, so no charge-loop message waits on a round trip; so is the
  -20 charge loop's target power (``target_w``: the V2X setpoint, negative to discharge).
- The agent asks for a renegotiation (event ``renegotiate``) when the EV's schedule changed
  (a new TxProfile, OCPP K17); the sidecar answers with ``renegotiation`` events (requested,
  started when the EV asks for its new schedule, or refused).

A line that does not parse, or names an unknown kind or method, is a :class:`ProtocolError`
with a message that says what is wrong; the receiving end logs it (and answers a request it
could identify with an ``error`` response) and goes on: one bad line never ends the channel.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

PROTOCOL_VERSION = 1
MAX_LINE = 1 << 20  # a certificate installation's EXI stream in base64 stays far below

EVENT, REQUEST, RESPONSE = "event", "request", "response"
KINDS = (EVENT, REQUEST, RESPONSE)

# Field checks: name -> (accepted Python types, required). ``float`` accepts ints too.
_STR, _INT, _NUM, _BOOL = (str,), (int,), (int, float), (bool,)
_LIST, _DICT = (list,), (dict,)


def _opt(types: tuple) -> tuple:
    return (*types, type(None))


# Requests the sidecar sends the agent, with their parameters.
AGENT_METHODS: dict[str, dict[str, tuple[tuple, bool]]] = {
    "evse_info": {"protocol": (_opt(_STR), False)},
    "authorize": {
        "token_type": (_STR, True),  # "eim" | "pnc"
        "id_token": (_opt(_STR), False),  # the EMAID for pnc
        "certificate_chain_pem": (_opt(_STR), False),  # contract leaf first, then sub-CAs
        "hash_data": (_opt(_LIST), False),  # OCPP iso15118CertificateHashData of the chain
        "protocol": (_opt(_STR), False),
    },
    "schedule": {
        "departure_time_s": (_opt(_INT), False),  # from now; None: charge at once
        "max_entries": (_opt(_INT), False),
        "protocol": (_opt(_STR), False),
    },
    "certificate": {
        "action": (_STR, True),  # "install" | "update"
        "exi_b64": (_STR, True),  # the EV's CertificateInstallationReq / UpdateReq, EXI base64
        "namespace": (_STR, True),
    },
}

# Events the sidecar sends.
SIDECAR_EVENTS: dict[str, dict[str, tuple[tuple, bool]]] = {
    "hello": {"protocol_version": (_INT, True), "iso15118_version": (_opt(_STR), False),
              "interface": (_opt(_STR), False), "evse": (_opt(_INT), False)},
    "status": {"status": (_STR, True)},  # the SECC's service status (ready, error, ...)
    "session_started": {"evcc_id": (_opt(_STR), False), "protocol": (_opt(_STR), False)},
    "ev_parameters": {"params": (_DICT, True)},  # see EV_PARAMETERS
    "charge_progress": {"started": (_BOOL, True)},
    "state": {"state": (_STR, True)},
    "session_ended": {"state": (_opt(_STR), False), "reason": (_opt(_STR), False)},
    # The agent's renegotiate: "requested" (the EV is being told), "started" (it asks for
    # the new schedule), "refused" (no charge loop, or a protocol without renegotiation).
    "renegotiation": {"status": (_STR, True), "reason": (_opt(_STR), False)},
    # ISO 15118-20 charge loop: the power the EV says it takes now (signed W, negative:
    # discharge) and the target it was given; sent when either moved.
    "ev_power": {"present_w": (_opt(_NUM), False), "target_w": (_opt(_NUM), False),
                 "control_mode": (_opt(_STR), False)},
}

# Events the agent sends.
AGENT_EVENTS: dict[str, dict[str, tuple[tuple, bool]]] = {
    "evse_status": {"status": (_DICT, True)},  # see EVSE_STATUS
    # The schedule changed (K17): the SECC tells the EV to renegotiate (-2 EVSENotification
    # ReNegotiation, -20 ServiceRenegotiation) at its next charge-loop message.
    "renegotiate": {"reason": (_opt(_STR), False)},
}

# Requests the agent may send the sidecar (answered with an empty result).
SIDECAR_METHODS: dict[str, dict[str, tuple[tuple, bool]]] = {
    "ping": {},
}

# The keys of ``ev_parameters.params`` (all optional; what the EV did not say is absent).
EV_PARAMETERS = (
    "evcc_id", "protocol", "energy_mode", "departure_time_s", "energy_amount_wh",
    "max_current_a", "min_current_a", "max_voltage_v", "min_voltage_v", "max_power_w",
    "min_power_w", "soc_percent", "target_soc_percent", "min_soc_percent", "max_soc_percent",
    "battery_capacity_wh", "max_discharge_power_w", "min_discharge_power_w",
    "max_discharge_current_a", "target_energy_wh", "min_energy_wh", "max_energy_wh",
    "max_v2x_energy_wh", "min_v2x_energy_wh", "control_mode", "bidirectional",
)

# The keys of ``evse_status.status``. ``target_w`` is the signed power the EV is to take now
# (ISO 15118-20 EVSETargetActivePower: the V2X setpoint the power stage follows, else what
# the offer allows), within ``target_min_w`` (-discharge) and ``target_max_w`` (charge).
EVSE_STATUS = (
    "authorized", "contactor_closed", "pilot", "offered_a", "limit_a", "stop", "energy_wh",
    "power_w", "voltage_v", "current_a", "setpoint_w", "ready", "target_w", "target_min_w",
    "target_max_w",
)


class ProtocolError(ValueError):
    """A line that is not a valid message; the text says what is wrong with it."""

    def __init__(self, message: str, request_id: int | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id  # a request that could be identified gets an error answer


@dataclass(frozen=True)
class Message:
    kind: str
    name: str = ""  # events and requests
    id: int | None = None  # requests and responses
    params: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    error: str | None = None


def event(name: str, **params: Any) -> Message:
    return Message(EVENT, name=name, params=params)


def request(request_id: int, name: str, **params: Any) -> Message:
    return Message(REQUEST, name=name, id=request_id, params=params)


def response(request_id: int, result: dict[str, Any] | None = None,
             error: str | None = None) -> Message:
    return Message(RESPONSE, id=request_id, result=result if error is None else None,
                   error=error)


def encode(msg: Message) -> bytes:
    """One line (with its newline) for ``msg``."""
    body: dict[str, Any] = {"kind": msg.kind}
    if msg.kind in (EVENT, REQUEST):
        body["name"] = msg.name
        body["params"] = msg.params
    if msg.kind in (REQUEST, RESPONSE):
        body["id"] = msg.id
    if msg.kind == RESPONSE:
        if msg.error is not None:
            body["error"] = msg.error
        else:
            body["result"] = msg.result or {}
    line = json.dumps(body, separators=(",", ":"), allow_nan=False).encode() + b"\n"
    if len(line) > MAX_LINE:
        raise ProtocolError(f"message {msg.name or msg.kind} is {len(line)} bytes; at most "
                            f"{MAX_LINE} fit on the channel")
    return line


def _check_fields(where: str, params: dict[str, Any],
                  spec: dict[str, tuple[tuple, bool]], request_id: int | None) -> None:
    for key, value in params.items():
        if key not in spec:
            raise ProtocolError(f"{where}: unknown parameter {key!r} (expected "
                                f"{', '.join(sorted(spec)) or 'none'})", request_id)
        types, _ = spec[key]
        if isinstance(value, bool) and bool not in types:
            raise ProtocolError(f"{where}: {key} = {value!r} is not a "
                                f"{_type_names(types)}", request_id)
        if not isinstance(value, types):
            raise ProtocolError(f"{where}: {key} = {value!r} is not a "
                                f"{_type_names(types)}", request_id)
    for key, (_, required) in spec.items():
        if required and key not in params:
            raise ProtocolError(f"{where}: missing parameter {key!r}", request_id)


def _type_names(types: tuple) -> str:
    names = {str: "string", int: "integer", float: "number", bool: "boolean", list: "list",
             dict: "object", type(None): "null"}
    return " or ".join(dict.fromkeys(names[t] for t in types))


def decode(line: bytes | str, *, events: dict[str, dict] | None = None,
           methods: dict[str, dict] | None = None) -> Message:
    """Parse one line; ``events`` / ``methods`` are what this end accepts from the other
    (the agent: :data:`SIDECAR_EVENTS` and :data:`AGENT_METHODS`; the sidecar: the others).
    Raises :class:`ProtocolError` naming what is wrong."""
    if isinstance(line, bytes):
        if len(line) > MAX_LINE:
            raise ProtocolError(f"line of {len(line)} bytes; at most {MAX_LINE} accepted")
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ProtocolError(f"line is not UTF-8 ({exc.reason} at byte {exc.start})") \
                from None
    text = line.strip()
    if not text:
        raise ProtocolError("empty line")
    try:
        body = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"line is not JSON ({exc})"[:300]) from None
    if not isinstance(body, dict):
        raise ProtocolError(f"a message is a JSON object, not {type(body).__name__}")
    kind = body.get("kind")
    if kind not in KINDS:
        raise ProtocolError(f"kind {kind!r}: expected one of {', '.join(KINDS)}")
    request_id = body.get("id")
    if kind in (REQUEST, RESPONSE):
        if not isinstance(request_id, int) or isinstance(request_id, bool) or request_id < 0:
            raise ProtocolError(f"{kind} id {request_id!r}: expected an integer >= 0")
    else:
        request_id = None
    if kind == RESPONSE:
        result, error = body.get("result"), body.get("error")
        if error is not None:
            if not isinstance(error, str):
                raise ProtocolError(f"response {request_id}: error {error!r} is not a string")
            return Message(RESPONSE, id=request_id, error=error)
        if not isinstance(result, dict):
            raise ProtocolError(f"response {request_id}: result {result!r} is not an object")
        return Message(RESPONSE, id=request_id, result=result)
    name, params = body.get("name"), body.get("params", {})
    table = (events if kind == EVENT else methods) or {}
    if not isinstance(name, str) or name not in table:
        raise ProtocolError(f"{kind} {name!r}: expected one of "
                            f"{', '.join(sorted(table)) or 'none'}", request_id)
    if not isinstance(params, dict):
        raise ProtocolError(f"{kind} {name}: params {params!r} is not an object", request_id)
    _check_fields(f"{kind} {name}", params, table[name], request_id)
    return Message(kind, name=name, id=request_id, params=params)


def decode_from_sidecar(line: bytes | str) -> Message:
    """What the agent reads."""
    return decode(line, events=SIDECAR_EVENTS, methods=AGENT_METHODS)


def decode_from_agent(line: bytes | str) -> Message:
    """What the sidecar reads."""
    return decode(line, events=AGENT_EVENTS, methods=SIDECAR_METHODS)


async def exit_with_parent(parent_pid: int, stop: Any, interval_s: float = 1.0) -> None:
    """Call ``stop()`` once ``parent_pid`` (the agent that started us) is gone: a sidecar or
    EV simulator outliving a killed agent would hold the SDP port and the modem's interface
    against the agent's next start. Runs in the sidecar venv (``asyncio`` only)."""
    import asyncio
    import os

    if parent_pid <= 0:
        return
    while True:
        await asyncio.sleep(interval_s)
        if os.getppid() != parent_pid:
            stop()
            return

