"""The local control socket: lets a bench operator poke a running agent (``cp-agent ctl``).

On a bench rig there is no car and no card reader at hand, so the mock HAL is driven from the
outside: "plug an EV into EVSE 1", "tap card ABC123", "raise a meter fault".  The same socket
answers ``status`` on real hardware.

Wire format: one JSON object per line in each direction.  Request
``{"cmd": "plug", "args": {"evse": 1}}``, answer ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": "message"}``.  Line-delimited JSON keeps the client trivially
scriptable (``socat - UNIX-CONNECT:/run/cp-agent/control.sock`` works by hand).

A streaming command (``frames``) answers ``{"ok": true, "result": ..., "stream": true}``, then
one line ``{"item": ...}`` per item (newline-delimited JSON, as long as it lasts), then
``{"end": "reason"}`` when the stream is over or the agent stops; the connection closes after
it.  The client ends a stream early by closing the connection (or its sending side).

This module is the client side and ``cp-agent ctl``'s command line.  The agent's side is
split by when it is needed: :mod:`agent.control_server` listens from start-up,
:mod:`agent.control_session` serves a connection (imported by the first one) and
:mod:`agent.control_commands` answers the commands; the server's names are re-exported here.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from agent.control_server import (  # noqa: F401 - re-exported: the names ctl users import
    DEFAULT_SOCKET,
    MAX_REQUEST_BYTES,
    MAX_RESPONSE_BYTES,
    SOCKET_MODE,
    ControlServer,
    ControlSocketError,
    ControlSocketInUse,
    Handler,
    Stream,
)
from agent.control_server import encode as _encode
from agent.frames import Frame
from hal.interfaces import FaultKind, PilotState

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_AGENT_ERROR = 1  # the agent answered ok:false
EXIT_USAGE = 2  # bad command line (argparse's own convention)
EXIT_NOT_RUNNING = 3  # no socket, or nobody listening on it
EXIT_COMMS = 4  # the agent is there but the exchange failed (permission, timeout, garbage)


# ======================================================================= client


class ControlError(Exception):
    """The exchange with the agent failed; ``exit_code`` says how ``ctl`` should exit."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def send_request(
    path: str, cmd: str, args: dict[str, Any] | None = None, *, timeout: float = 10.0
) -> dict[str, Any]:
    """Send one request and return the agent's response object (ok or not).

    Blocking on purpose: the caller is a short-lived CLI process with nothing else to do.
    Raises ``ControlError`` when there is no agent or no sensible answer.
    """
    with _connect(path, timeout) as sock:
        return _exchange(sock, _LineReader(sock), cmd, args, timeout)


class StreamReply:
    """A streaming answer on the client side: ``head`` is the first answer (ok or not);
    iterating yields the items until the agent ends the stream (``end`` says why)."""

    def __init__(self, sock: socket.socket, lines: _LineReader, head: dict[str, Any]) -> None:
        self._sock = sock
        self._lines = lines
        self.head = head
        self.end: str | None = None

    def __iter__(self) -> Iterator[Any]:
        if not self.head["ok"] or not self.head.get("stream"):
            return
        self._sock.settimeout(None)  # a follower waits as long as the agent is quiet
        while True:
            try:
                data = self._lines.line()
            except OSError as exc:
                raise ControlError(f"connection to cp-agent failed: {exc}", EXIT_COMMS) from None
            if data is None:
                raise ControlError("cp-agent closed the stream without ending it", EXIT_COMMS)
            message = _decode(data)
            if "end" in message:
                self.end = str(message["end"])
                return
            if "item" not in message:
                raise ControlError("cp-agent sent a malformed stream line", EXIT_COMMS)
            yield message["item"]

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> StreamReply:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_stream(
    path: str, cmd: str, args: dict[str, Any] | None = None, *, timeout: float = 10.0
) -> StreamReply:
    """Send a streaming request (``frames``); the first answer must come within ``timeout``,
    the items then as they come."""
    sock = _connect(path, timeout)
    try:
        lines = _LineReader(sock)
        head = _exchange(sock, lines, cmd, args, timeout)
    except BaseException:
        sock.close()
        raise
    return StreamReply(sock, lines, head)


def _connect(path: str, timeout: float) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        sock.close()
        raise ControlError(
            f"cp-agent is not running (no control socket at {path})", EXIT_NOT_RUNNING
        ) from None
    except PermissionError:
        sock.close()
        raise ControlError(
            f"permission denied on {path} (is your user in the cp-agent group?)", EXIT_COMMS
        ) from None
    except OSError as exc:
        sock.close()
        raise ControlError(f"cannot connect to {path}: {exc}", EXIT_COMMS) from None
    return sock


def _exchange(
    sock: socket.socket, lines: _LineReader, cmd: str, args: dict[str, Any] | None,
    timeout: float,
) -> dict[str, Any]:
    try:
        sock.sendall(_encode({"cmd": cmd, "args": args or {}}))
        data = lines.line()
    except TimeoutError:
        raise ControlError(f"cp-agent did not answer within {timeout:g} s", EXIT_COMMS) from None
    except OSError as exc:
        raise ControlError(f"connection to cp-agent failed: {exc}", EXIT_COMMS) from None
    if not data:
        raise ControlError("cp-agent closed the connection without an answer", EXIT_COMMS)
    response = _decode(data)
    if not isinstance(response.get("ok"), bool):
        raise ControlError("cp-agent sent a malformed answer", EXIT_COMMS)
    return response


def _decode(data: bytes) -> dict[str, Any]:
    try:
        message = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ControlError("cp-agent sent a malformed answer", EXIT_COMMS) from None
    if not isinstance(message, dict):
        raise ControlError("cp-agent sent a malformed answer", EXIT_COMMS)
    return message


class _LineReader:
    """Lines from a blocking socket, each bounded by ``MAX_RESPONSE_BYTES``."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buf = bytearray()

    def line(self) -> bytes | None:
        """The next line without its newline; the rest at EOF; None at EOF with nothing."""
        while True:
            end = self._buf.find(b"\n")
            if end >= 0:
                out = bytes(self._buf[:end])
                del self._buf[: end + 1]
                return out
            if len(self._buf) > MAX_RESPONSE_BYTES:
                raise ControlError("cp-agent's answer is too large", EXIT_COMMS)
            chunk = self._sock.recv(65536)
            if not chunk:
                out, self._buf = bytes(self._buf), bytearray()
                return out or None
            self._buf += chunk


# ======================================================================= rendering


def _num(value: Any, unit: str, fmt: str = "g") -> str:
    if not isinstance(value, int | float) or isinstance(value, bool):
        return "-"
    return f"{value:{fmt}} {unit}"


def render_status(status: dict[str, Any]) -> str:
    """``ctl status`` for a person: the station and its link, then one block per EVSE.

    The connector status is in the words of the OCPP version in use (2.0.1: Available,
    Occupied, ...), the core's detailed one in brackets when it says more.
    """
    link = status.get("link") or "?"
    parts = [f"link {link}"]
    if status.get("ocpp_version"):
        parts.append(f"OCPP {status['ocpp_version']}")
    parts.append(f"registration {status.get('registration') or '-'}")
    parts.append(f"outbox {status.get('outbox', 0)}")
    lines = [f"station {status.get('station', '?')}: " + ", ".join(parts)]
    if status.get("last_error") and link != "connected":
        lines.append(f"  last error: {status['last_error']}")
    if status.get("station_faults"):
        lines.append("  station faults: " + ", ".join(map(str, status["station_faults"])))
    site = status.get("site")
    if isinstance(site, dict):
        grid = site.get("grid_current_a")
        grid_text = ("/".join(f"{a:g}" for a in grid) + " A") if isinstance(grid, list) \
            else "-"
        lines.append(f"  site: {site.get('mode', '?')}, limit "
                     f"{_num(site.get('max_current_a'), 'A')}, grid {grid_text}, headroom "
                     f"{_num(site.get('headroom_a'), 'A', '.1f')}")
    display = status.get("display")
    if isinstance(display, dict) and isinstance(display.get("lines"), list):
        size = f"{display.get('columns', '?')}x{display.get('rows', '?')}"
        state = "" if display.get("ok", True) else f" (failing: {display.get('error')})"
        lines.append(f"  display {size}{state}:")
        width = display.get("columns") if isinstance(display.get("columns"), int) else 20
        lines += [f"    |{str(text).ljust(width)}|" for text in display["lines"]]
    evses = status.get("evses") or []
    if isinstance(evses, dict):
        evses = list(evses.values())
    for e in evses:
        if not isinstance(e, dict):
            continue
        words = e.get("connector_status") or e.get("status") or "?"
        detail = e.get("status")
        head = f"EVSE {e.get('evse', '?')}: {words}"
        if detail and detail != words:
            head += f" ({detail})"
        if e.get("operative") is False:
            head += ", inoperative"
        lines.append(head)
        lines.append(f"  pilot {e.get('pilot', '?')}, contactor {e.get('contactor', '?')}")
        lines.append(f"  offered {_num(e.get('current_limit_a'), 'A')}, limit "
                     f"{_num(e.get('max_current_a'), 'A')} ({e.get('limit_source') or '-'})")
        lines.append(f"  power {_num(e.get('power_w'), 'W', '.0f')}, energy "
                     f"{_num(e.get('energy_wh'), 'Wh', '.1f')}, meter "
                     f"{_num(e.get('meter_wh'), 'Wh', '.1f')}")
        if isinstance(e.get("v2x"), dict):
            lines += render_v2x(e["v2x"], e.get("export_wh"), e.get("reactive_var"),
                                e.get("power_factor"))
        tx = e.get("transaction_id")
        local = e.get("local_transaction_id")
        if tx is None and local is None:
            tx_text = "no transaction"
        elif tx is None:
            tx_text = f"transaction {local} (not yet confirmed by the CSMS)"
        elif local is not None and str(local) != str(tx):
            tx_text = f"transaction {tx} (local {local})"
        else:
            tx_text = f"transaction {tx}"
        lines.append(f"  token {e.get('token') or '-'}, {tx_text}")
        faults = e.get("faults") or []
        lines.append("  faults: " + (", ".join(map(str, faults)) if faults else "none"))
    if status.get("settled") is False:
        lines.append("(the agent was still reacting when it answered)")
    return "\n".join(lines)


def render_v2x(v: dict[str, Any], export_wh: Any = None, reactive_var: Any = None,
               power_factor: Any = None) -> list[str]:
    """The power stage of a bidirectional EVSE: the EV's battery, the setpoint, the bounds,
    and the reactive power and power factor its meter measures (the DER functions' effect;
    load sign as the meter counts it: positive absorbed, so a stage injecting vars shows a
    negative Q)."""
    out = []
    ev = v.get("ev")
    if isinstance(ev, dict):
        levels = ", ".join(f"{word} {ev[key]:g} %" for word, key in (
            ("min", "min_soc_percent"), ("target", "target_soc_percent"),
            ("max", "max_soc_percent")) if isinstance(ev.get(key), int | float))
        out.append(f"  EV battery: SoC {_num(ev.get('soc_percent'), '%', '.1f')}"
                   + (f" ({levels})" if levels else "")
                   + (f" of {_num(ev.get('capacity_wh'), 'Wh', '.0f')}"
                      if ev.get("capacity_wh") else ""))
    asked, now = v.get("setpoint_requested_w"), v.get("setpoint_w")
    setpoint = "none" if now is None else _num(now, "W", "+.0f")
    if asked is not None and asked != now:
        setpoint += f" (asked {_num(asked, 'W', '+.0f')})"
    modes = ",".join(v.get("modes") or []) or "-"
    out.append(f"  setpoint {setpoint}, bounds +{_num(v.get('max_charge_w'), 'W', '.0f')} / "
               f"-{_num(v.get('max_discharge_w'), 'W', '.0f')}, modes {modes}")
    if isinstance(reactive_var, int | float) or isinstance(power_factor, int | float):
        pf = _num(power_factor, "", ".3f").strip()
        out.append(f"  reactive Q {_num(reactive_var, 'var', '+.0f')} (+ absorbed, - injected)"
                   f", PF {pf}")
    if v.get("bidirectional"):
        text = "  discharge: possible"
    else:
        text = f"  discharge: no ({v.get('no_discharge') or '-'})"
    if isinstance(export_wh, int | float):
        text += f", export register {export_wh:.1f} Wh"
    out.append(text)
    return out


def render_frame(frame: dict[str, Any]) -> str:
    """One message-log frame on one line: time, arrow (-> to the CSMS), kind, action, id,
    payload."""
    return Frame(str(frame.get("at", "")), str(frame.get("direction", "")),
                 str(frame.get("kind", "")), str(frame.get("unique_id", "")),
                 str(frame.get("action", "")), frame.get("payload") or {}).line()


_TAP_DONE = {"authorized": "authorized", "stopped": "stopped the session",
             "unlocked": "unlocked the cable"}


def describe_tap(tap: dict[str, Any]) -> tuple[str, bool]:
    """What became of a tap, in words, and whether the card did what a card is for."""
    token = tap.get("token", "?")
    result = str(tap.get("result", "?"))
    evse = tap.get("evse")
    where = f" on EVSE {evse}" if evse is not None else ""
    if result in _TAP_DONE:
        return f"{token}: {_TAP_DONE[result]}{where}", True
    if result == "pending":
        return f"{token}: no outcome yet (authorization still under way)", False
    reason = tap.get("reason")
    return f"{token}: {result}" + (f": {reason}" if reason else ""), False


# ======================================================================= CLI


def _evse(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"EVSE must be a positive integer, got {text!r}")
    return value


def _connector(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"connector must be a positive integer, got {text!r}")
    return value


def _fault_place(text: str) -> int:
    """An EVSE, or 0 for the station itself (the shared RFID reader)."""
    if text.strip() == "0":
        return 0
    try:
        return _evse(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"EVSE must be a positive integer (0: the station, for the reader), got {text!r}"
        ) from None


_PILOT_STATES = [s.value for s in PilotState]
_PILOT_MEANINGS = ("A no EV (unplugs), B EV connected, not asking (pauses), C EV asks for "
                   "energy (resumes), D C with ventilation, E / F pilot errors")
_FAULT_KINDS = [k.value for k in FaultKind]


def _pilot_state(text: str) -> str:
    state = text.strip().upper()
    if state not in _PILOT_STATES:
        raise argparse.ArgumentTypeError(
            f"STATE must be one of {', '.join(_PILOT_STATES)} (IEC 61851 pilot state), got {text!r}"
        )
    return state


def _fault_kind(text: str) -> str:
    try:
        return FaultKind(text.strip().lower()).value
    except ValueError:
        kinds = ", ".join(_FAULT_KINDS)
        raise argparse.ArgumentTypeError(f"KIND must be one of {kinds}; got {text!r}") from None


def _token(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("TOKEN must not be empty")
    return text.strip()


def _interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"S must be a positive number of seconds, got {text!r}")
    return value


def _limit(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"N must be a non-negative integer, got {text!r}")
    return value


def _amps(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 10_000:
        raise argparse.ArgumentTypeError(f"AMPS must be a number of amps >= 0, got {text!r}")
    return value


def _grid(low: float, high: float, what: str):  # noqa: ANN202 - an argparse type
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = -1.0
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what} must be a number in [{low:g}, {high:g}], "
                                             f"got {text!r}")
        return value
    return parse


def _percent(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 100:
        raise argparse.ArgumentTypeError(f"expected a percentage in [0, 100], got {text!r}")
    return value


def _positive_w(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1_000_000:
        raise argparse.ArgumentTypeError(f"expected watts (watt-hours) >= 0, got {text!r}")
    return value


def _on_off(text: str) -> bool:
    if text.strip().lower() not in ("on", "off"):
        raise argparse.ArgumentTypeError(f"expected on or off, got {text!r}")
    return text.strip().lower() == "on"


def _watts(text: str) -> float | None:
    if text.strip().lower() == "off":
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not -1_000_000 <= value <= 1_000_000:
        raise argparse.ArgumentTypeError(f"WATTS must be a signed number of watts or off, "
                                         f"got {text!r}")
    return value


def _power_limit(text: str) -> float | None:
    if text.strip().lower() == "off":
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value <= 1_000_000:
        raise argparse.ArgumentTypeError(f"W must be watts >= 0 or off, got {text!r}")
    return value


def _validity(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError(f"S must be seconds in (0, 86400], got {text!r}")
    return value


# ``ctl external`` options: flag -> (request key, parser, help); absent: left as it is.
EXTERNAL_OPTIONS: dict[str, tuple[str, Callable[[str], Any], str]] = {
    "setpoint": ("setpoint_w", _watts, "the setpoint, signed W (negative: discharge), or off"),
    "max-charge-w": ("max_charge_w", _power_limit, "the charge limit, W, or off"),
    "max-discharge-w": ("max_discharge_w", _power_limit, "the discharge limit, W, or off"),
    "valid-s": ("valid_s", _validity, "the setpoint goes stale after S seconds (default: "
                                      "valid until changed)"),
}


# ``ctl ev`` options for a bidirectional mock EV: flag -> (request key, parser, help).
EV_OPTIONS: dict[str, tuple[str, Callable[[str], Any], str]] = {
    "soc": ("soc", _percent, "its state of charge now, %%"),
    "min-soc": ("min_soc", _percent, "the least state of charge it lets be discharged to, %%"),
    "max-soc": ("max_soc", _percent, "the most it charges to, %%"),
    "target-soc": ("target_soc", _percent, "what it wants at departure, %%"),
    "battery-wh": ("battery_wh", _positive_w, "its battery capacity, Wh"),
    "max-charge-w": ("max_charge_w", _positive_w, "the most it takes, W"),
    "max-discharge-w": ("max_discharge_w", _positive_w, "the most it gives, W"),
    "bidirectional": ("bidirectional", _on_off, "whether it offers a bidirectional mode"),
}


class _Parser(argparse.ArgumentParser):
    """argparse exits the process on errors; ctl_main must return its code instead."""

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        if message:
            self._print_message(message, sys.stderr)
        raise _ParserExit(status)


class _ParserExit(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _json_flag(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--json", action="store_true", help="print the answer as JSON")


def _build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="cp-agent ctl",
        description="Talk to a running cp-agent through its control socket.",
        epilog=(
            f"exit status: {EXIT_OK} ok, {EXIT_AGENT_ERROR} the agent refused the command "
            f"(or the card was refused / ignored), {EXIT_USAGE} usage error, "
            f"{EXIT_NOT_RUNNING} agent not running, {EXIT_COMMS} no valid answer"
        ),
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--config", metavar="PATH", help="take control.socket from this config file")
    where.add_argument("--socket", metavar="PATH", help="control socket path")
    p.add_argument(
        "--timeout", type=float, default=10.0, metavar="S", help="answer timeout (default 10)"
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)

    sp = sub.add_parser("status", help="print the agent's status (one block per EVSE)")
    _json_flag(sp)
    sp = sub.add_parser("watch", help="redraw the status every few seconds until Ctrl-C")
    sp.add_argument("--interval", type=_interval, default=2.0, metavar="S",
                    help="seconds between refreshes (default 2)")
    sp = sub.add_parser("frames", help="print the OCPP frames the agent exchanged lately")
    sp.add_argument("--follow", "-f", action="store_true",
                    help="then print new frames as they come, until Ctrl-C")
    sp.add_argument("--limit", "-n", type=_limit, default=50, metavar="N",
                    help="how many recent frames (default 50; 0 with --follow: new ones only)")
    sp.add_argument("--json", action="store_true", help="one JSON object per frame")
    for name, text in (("plug", "connect a (simulated) EV"), ("unplug", "disconnect the EV")):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("evse", type=_evse, metavar="EVSE")
        if name == "plug":
            sp.add_argument("--connector", type=_connector, metavar="N",
                            help="into this connector of an EVSE with several (default 1)")
            sp.add_argument("--iso15118", action="store_true",
                            help="an EV that speaks ISO 15118: the iso15118 package's EV "
                                 "simulator against the EVSE's SECC (needs hal.iso15118)")
            sp.add_argument("--evcc-id", metavar="ID", help="with --iso15118: the EV's EVCCID "
                                                            "(default: the interface's MAC)")
            sp.add_argument("--tls", action="store_true",
                            help="with --iso15118: TLS to the SECC (Plug & Charge)")
            sp.add_argument("--cert-install", action="store_true",
                            help="with --iso15118: the EV asks for its contract certificate "
                                 "(CertificateInstallation)")
            # dest apart from ``ctl ev --bidirectional`` (EV_OPTIONS reads that one)
            sp.add_argument("--bidirectional", action="store_true", dest="hlc_bidirectional",
                            help="with --iso15118: an ISO 15118-20 AC_BPT EV (it discharges "
                                 "at a negative V2X setpoint)")
            sp.add_argument("--control-mode", choices=("scheduled", "dynamic"),
                            help="with --bidirectional: the -20 control mode the EV selects")
        _json_flag(sp)
    sp = sub.add_parser("ev", help="set the EV's pilot state (A-F) and, on a bidirectional "
                                   "mock EVSE (hal.v2x), its battery and limits")
    sp.add_argument("evse", type=_evse, metavar="EVSE")
    sp.add_argument("state", type=_pilot_state, choices=_PILOT_STATES, metavar="STATE",
                    nargs="?", help=f"one of {', '.join(_PILOT_STATES)}: {_PILOT_MEANINGS}")
    for flag, (_, kind, text) in EV_OPTIONS.items():
        sp.add_argument(f"--{flag}", type=kind, metavar="X" if kind is not _on_off else "on|off",
                        help=text)
    _json_flag(sp)
    sp = sub.add_parser("setpoint", help="ask the EVSE's power stage for a signed power "
                                         "(W; negative discharges the EV), or 'off'")
    sp.add_argument("evse", type=_evse, metavar="EVSE")
    sp.add_argument("watts", type=_watts, metavar="WATTS|off")
    _json_flag(sp)
    sp = sub.add_parser("external", help="what a local energy manager sends for the OCPP 2.1 "
                                         "ExternalSetpoint / ExternalLimits periods")
    sp.add_argument("evse", type=_evse, metavar="EVSE")
    for flag, (key, kind, text) in EXTERNAL_OPTIONS.items():
        sp.add_argument(f"--{flag}", type=kind, dest=f"external_{key}", metavar="S"
                        if flag == "valid-s" else "W|off", default=argparse.SUPPRESS,
                        help=text)
    _json_flag(sp)
    sp = sub.add_parser("tap", help="present an RFID token and say what became of it")
    sp.add_argument("token", type=_token, metavar="TOKEN")
    sp.add_argument("--evse", type=_evse, metavar="N", help="reader of this EVSE (default: shared)")
    _json_flag(sp)
    sp = sub.add_parser("house-load", help="set the other loads on the site's connection "
                                           "(mock HAL's grid meter), amps per phase")
    sp.add_argument("amps", type=_amps, metavar="AMPS")
    _json_flag(sp)
    sp = sub.add_parser("grid-frequency", help="set the grid frequency the mock HAL's meters "
                                               "measure (V2X frequency modes, DER controls)")
    sp.add_argument("hz", type=_grid(40, 70, "HZ"), metavar="HZ")
    _json_flag(sp)
    sp = sub.add_parser("grid-voltage", help="set the grid voltage the mock HAL's meters "
                                             "measure, per phase (DER alarms)")
    sp.add_argument("volts", type=_grid(50, 500, "VOLTS"), metavar="VOLTS")
    _json_flag(sp)
    sp = sub.add_parser("priority", help="the EV driver asks for priority charging on an "
                                         "EVSE, or ends it (OCPP 2.1)")
    sp.add_argument("evse", type=_evse, metavar="EVSE")
    sp.add_argument("switch", choices=("on", "off"), metavar="on|off")
    _json_flag(sp)
    for name, text in (("fault", "raise a hardware fault"), ("clear-fault", "clear a fault")):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("evse", type=_fault_place, metavar="EVSE",
                        help="the EVSE (0: the station, for the shared reader)")
        sp.add_argument("kind", type=_fault_kind, choices=_FAULT_KINDS, metavar="KIND",
                        help=f"one of {', '.join(_FAULT_KINDS)}")
        _json_flag(sp)
    return p


def _request_args(ns: argparse.Namespace) -> dict[str, Any]:
    args: dict[str, Any] = {}
    for flag, (key, _, _) in EV_OPTIONS.items():  # ctl ev EVSE --soc 80 ...
        value = getattr(ns, flag.replace("-", "_"), None)
        if value is not None:
            args[key] = value
    if getattr(ns, "command", None) == "setpoint":
        args["watts"] = ns.watts  # None: off
    if getattr(ns, "command", None) == "external":  # only what was given; None: off
        for key, _, _ in EXTERNAL_OPTIONS.values():
            if hasattr(ns, f"external_{key}"):
                args[key] = getattr(ns, f"external_{key}")
    for key in ("evse", "connector", "state", "token", "kind", "amps", "hz", "volts"):
        value = getattr(ns, key, None)
        if value is not None:
            args[key] = value
    if getattr(ns, "iso15118", False):  # ctl plug EVSE --iso15118 [--evcc-id ID] [--tls]
        args["iso15118"] = True
        if getattr(ns, "evcc_id", None):
            args["evcc_id"] = ns.evcc_id
        for flag, key in (("tls", "tls"), ("cert_install", "cert_install"),
                          ("hlc_bidirectional", "bidirectional")):
            if getattr(ns, flag, False):
                args[key] = True
        if getattr(ns, "control_mode", None):
            args["control_mode"] = ns.control_mode
    if getattr(ns, "switch", None) is not None:  # ctl priority EVSE on|off
        args["on"] = ns.switch == "on"
    return args


class _ConfigProblem(Exception):
    pass


def socket_from_config(path: str) -> str:
    """``control.socket`` from a config file, resolved like the agent resolves it.

    Deliberately not the full config loader: ``ctl`` must work against a config that the
    running agent accepted even if this checkout's validation has moved on.
    """
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _ConfigProblem(f"{path}: configuration file not found") from None
    except OSError as exc:
        raise _ConfigProblem(f"{path}: cannot read configuration: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise _ConfigProblem(f"{path}: not valid YAML: {exc}") from None
    control = raw.get("control") if isinstance(raw, dict) else None
    sock = control.get("socket") if isinstance(control, dict) else None
    if not isinstance(sock, str) or not sock:
        raise _ConfigProblem(f"{path}: no control.socket setting; give --socket PATH instead")
    if not os.path.isabs(sock):
        sock = str(p.resolve().parent / sock)  # relative to the file, as the agent does
    return sock


def ctl_main(argv: list[str], default_socket: str | None) -> int:
    """``cp-agent ctl``: validate before connecting, send the request, map the outcome to
    an exit status a shell script can branch on."""
    parser = _build_parser()
    try:
        ns = parser.parse_args(argv)
        if ns.command == "ev" and ns.state is None and not any(
                getattr(ns, flag.replace("-", "_")) is not None for flag in EV_OPTIONS):
            parser.error("ev: a pilot STATE or an EV setting (--soc, --max-soc, ...) is "
                         "required")
        if ns.command == "external" and not any(
                hasattr(ns, f"external_{key}") for key, _, _ in
                list(EXTERNAL_OPTIONS.values())[:3]):
            parser.error("external: --setpoint, --max-charge-w or --max-discharge-w is "
                         "required")
    except _ParserExit as exc:
        return exc.status

    if ns.socket:
        path = ns.socket
    elif ns.config:
        try:
            path = socket_from_config(ns.config)
        except _ConfigProblem as exc:
            print(f"cp-agent ctl: {exc}", file=sys.stderr)
            return EXIT_USAGE
    else:
        # None means "the caller knows no better": use the path the agent listens on by default.
        path = default_socket or DEFAULT_SOCKET

    try:
        if ns.command == "watch":
            return _watch(path, ns.interval, ns.timeout)
        if ns.command == "frames":
            return _frames(path, ns)
        response = send_request(path, ns.command, _request_args(ns), timeout=ns.timeout)
    except ControlError as exc:
        print(f"cp-agent ctl: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:  # the way to end watch and frames --follow
        return EXIT_OK

    if not response["ok"]:
        print(f"cp-agent ctl: {response.get('error') or 'the agent refused'}", file=sys.stderr)
        return EXIT_AGENT_ERROR
    return _print_result(ns, response.get("result"))


def describe_external(ext: dict[str, Any]) -> str:
    """One line for ``ctl external``: what the energy manager's values are now."""
    def w(value: Any) -> str:
        return "none" if value is None else f"{value:+.0f} W"

    sp = "stale" if ext.get("stale") else w(ext.get("setpoint_w"))
    return (f"EVSE {ext.get('evse')} external: setpoint {sp}, max charge "
            f"{w(ext.get('max_charge_w'))}, max discharge {w(ext.get('max_discharge_w'))} "
            f"(mode {ext.get('operation_mode') or 'none'})")


def _print_result(ns: argparse.Namespace, result: Any) -> int:
    """The answer for a person (or as JSON with ``--json``); the exit status it means."""
    code = EXIT_OK
    lines: list[str] = []
    if isinstance(result, dict) and isinstance(result.get("tap"), dict):
        text, done = describe_tap(result["tap"])
        lines.append(text)
        code = EXIT_OK if done else EXIT_AGENT_ERROR
    if isinstance(result, dict) and isinstance(result.get("priority"), str):
        lines.append(f"priority charging: {result['priority']}")
        if result["priority"] != "Accepted":
            code = EXIT_AGENT_ERROR
    if isinstance(result, dict) and isinstance(result.get("external"), dict):
        lines.append(describe_external(result["external"]))
    if ns.json:
        if ns.command == "status" or result not in (None, {}, [], ""):
            print(json.dumps(result, indent=2, sort_keys=True))
    else:
        if isinstance(result, dict) and "evses" in result:
            lines.append(render_status(result))
        elif result not in (None, {}, [], ""):
            lines.append(json.dumps(result, indent=2, sort_keys=True))
        if lines:
            print("\n".join(lines))
    if isinstance(result, dict) and result.get("warning"):
        print(f"cp-agent ctl: warning: {result['warning']}", file=sys.stderr)
    return code


def _frames(path: str, ns: argparse.Namespace) -> int:
    args = {"limit": ns.limit, "follow": ns.follow}
    with open_stream(path, "frames", args, timeout=ns.timeout) as stream:
        if not stream.head["ok"]:
            print(f"cp-agent ctl: {stream.head.get('error') or 'the agent refused'}",
                  file=sys.stderr)
            return EXIT_AGENT_ERROR
        for frame in stream:
            if not isinstance(frame, dict):
                continue
            print(json.dumps(frame, sort_keys=True) if ns.json else render_frame(frame),
                  flush=True)
        if ns.follow:  # the agent ended a follow: it is stopping
            print(f"cp-agent ctl: {stream.end or 'stream ended'}", file=sys.stderr)
    return EXIT_OK


CLEAR_SCREEN = "\x1b[H\x1b[2J"


def render_watch(status: dict[str, Any] | None, error: str | None, when: str) -> str:
    """One screen of ``ctl watch``: the status (or why there is none), and when."""
    body = render_status(status) if status is not None else f"cp-agent ctl: {error}"
    return f"{body}\n\n{when}  (Ctrl-C to quit)"


def _watch(path: str, interval: float, timeout: float) -> int:
    """Redraw the status every ``interval`` s until Ctrl-C; an agent that goes away (a
    restart) is shown as such and picked up again when it is back."""
    tty = sys.stdout.isatty()
    while True:
        status: dict[str, Any] | None = None
        error: str | None = None
        try:
            response = send_request(path, "status", timeout=timeout)
        except ControlError as exc:
            error = str(exc)
        else:
            if response["ok"] and isinstance(response.get("result"), dict):
                status = response["result"]
            else:
                error = str(response.get("error") or "the agent refused")
        screen = render_watch(status, error, time.strftime("%H:%M:%S"))
        # On a terminal the screen is redrawn in place; into a pipe, screens follow each other.
        print((CLEAR_SCREEN if tty else "") + screen + ("" if tty else "\n"), flush=True)
        time.sleep(interval)
