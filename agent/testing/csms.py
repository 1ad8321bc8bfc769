"""A small, strict CSMS for the demo and for the integration tests.

It sits on the server side of the ``ocpp`` package: each connection is an ``ocpp.v16`` /
``ocpp.v201`` / ``ocpp.v21`` ``ChargePoint`` subclass whose ``@on`` handlers answer the station.
The library's own message loop is replaced, because a test peer has to be stricter than the
library is:

* every frame the station sends is checked against the official JSON schemas shipped with the
  ``ocpp`` package (synchronously, with ``date-time`` formats checked too), and against the
  OCPP-J framing rules (message ids, one CALL in flight, CALLERROR codes);
* anything wrong is answered the way the spec says (``NotImplemented`` for an unknown action,
  ``NotSupported`` for a known one the CSMS does not take, ``RpcFrameworkError`` with id "-1"
  for unreadable frames, ...) and recorded in ``TestCsms.violations``, which tests assert empty;
* handlers receive and return the wire (camelCase) payloads, because the log and the
  transaction records must show exactly what was on the wire and the library's snake_case
  round trip is lossy for several 2.x field names.

Registration is enforced too: a station that sends anything but BootNotification before it was
accepted commits a violation, unless the CSMS asked for that message (TriggerMessage, GetLog,
GetBaseReport, ...). While Pending or Rejected such a message is answered with SecurityError.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import hmac
import inspect
import json
import logging
import re
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from http import HTTPStatus
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

import ocpp
import ocpp.charge_point
import ocpp.v16
import ocpp.v16.enums
import ocpp.v21
import ocpp.v21.enums
import ocpp.v201
import ocpp.v201.enums
from jsonschema import Draft4Validator, FormatChecker
from jsonschema.exceptions import best_match
from jsonschema.validators import validator_for
from ocpp.routing import on
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

__all__ = [
    "CS_TO_CSMS",
    "CSMS_TO_CS",
    "NO_REPLY",
    "SUBPROTOCOLS",
    "CsmsCallError",
    "Message",
    "SchemaError",
    "StationLink",
    "TestCsms",
]

logger = logging.getLogger(__name__)

SUBPROTOCOLS: dict[str, str] = {"1.6": "ocpp1.6", "2.0.1": "ocpp2.0.1", "2.1": "ocpp2.1"}
_VERSION_OF = {sub: version for version, sub in SUBPROTOCOLS.items()}

CS_TO_CSMS = "cs->csms"
CSMS_TO_CS = "csms->cs"

_V2_ERROR_CODES = frozenset(
    {
        "FormatViolation",
        "GenericError",
        "InternalError",
        "MessageTypeNotSupported",
        "NotImplemented",
        "NotSupported",
        "OccurrenceConstraintViolation",
        "PropertyConstraintViolation",
        "ProtocolError",
        "RpcFrameworkError",
        "SecurityError",
        "TypeConstraintViolation",
    }
)
_ERROR_CODES: dict[str, frozenset[str]] = {
    # 1.6 spells "OccurenceConstraintViolation" with one 'r' and has FormationViolation.
    "1.6": frozenset(
        {
            "NotImplemented",
            "NotSupported",
            "InternalError",
            "ProtocolError",
            "SecurityError",
            "FormationViolation",
            "PropertyConstraintViolation",
            "OccurenceConstraintViolation",
            "TypeConstraintViolation",
            "GenericError",
        }
    ),
    "2.0.1": _V2_ERROR_CODES,
    "2.1": _V2_ERROR_CODES,
}

# Which error code a failed JSON-schema keyword maps to. Anything unlisted is a format error.
_KEYWORD_KIND = {
    "type": "type",
    "required": "occurrence",
    "minItems": "occurrence",
    "maxItems": "occurrence",
    "minProperties": "occurrence",
    "maxProperties": "occurrence",
    "enum": "property",
    "const": "property",
    "maxLength": "property",
    "minLength": "property",
    "minimum": "property",
    "maximum": "property",
    "exclusiveMinimum": "property",
    "exclusiveMaximum": "property",
    "multipleOf": "property",
    "pattern": "property",
    "format": "property",
}
_KIND_CODE = {
    "1.6": {
        "type": "TypeConstraintViolation",
        "occurrence": "OccurenceConstraintViolation",
        "property": "PropertyConstraintViolation",
        "format": "FormationViolation",
        "frame": "FormationViolation",
    },
    "2": {
        "type": "TypeConstraintViolation",
        "occurrence": "OccurrenceConstraintViolation",
        "property": "PropertyConstraintViolation",
        "format": "FormatViolation",
        "frame": "RpcFrameworkError",
    },
}


def _error_code(version: str, kind: str) -> str:
    return _KIND_CODE["1.6" if version == "1.6" else "2"][kind]


_KNOWN_ACTIONS: dict[str, frozenset[str]] = {
    "1.6": frozenset(a.value for a in ocpp.v16.enums.Action),
    "2.0.1": frozenset(a.value for a in ocpp.v201.enums.Action),
    "2.1": frozenset(a.value for a in ocpp.v21.enums.Action) | {"NotifyPeriodicEventStream"},
}

# 2.1 messages that only travel as SEND (message type 6).
_SEND_ACTIONS = frozenset({"NotifyPeriodicEventStream"})

# Messages a station may send before it is accepted because the CSMS asked for them.
_CONSEQUENCES: dict[str, frozenset[str]] = {
    "GetDiagnostics": frozenset({"DiagnosticsStatusNotification"}),
    "UpdateFirmware": frozenset({"FirmwareStatusNotification", "SecurityEventNotification"}),
    "SignedUpdateFirmware": frozenset(
        {"SignedFirmwareStatusNotification", "SecurityEventNotification"}
    ),
    "GetLog": frozenset({"LogStatusNotification"}),
    "GetBaseReport": frozenset({"NotifyReport"}),
    "GetReport": frozenset({"NotifyReport"}),
    "GetMonitoringReport": frozenset({"NotifyMonitoringReport"}),
    "CustomerInformation": frozenset({"NotifyCustomerInformation"}),
    "GetDisplayMessages": frozenset({"NotifyDisplayMessages"}),
    "GetChargingProfiles": frozenset({"ReportChargingProfiles"}),
    "PublishFirmware": frozenset({"PublishFirmwareStatusNotification"}),
    "GetDERControl": frozenset({"ReportDERControl"}),
}
# TriggerMessage.requestedMessage values that do not name the resulting action.
_TRIGGERED_ACTION = {
    "SignChargePointCertificate": "SignCertificate",
    "SignChargingStationCertificate": "SignCertificate",
    "SignV2GCertificate": "SignCertificate",
    "SignV2G20Certificate": "SignCertificate",
    "SignCombinedCertificate": "SignCertificate",
}


class _NoReply:
    """Type of the NO_REPLY sentinel."""

    def __repr__(self) -> str:
        return "NO_REPLY"


#: Return this from an override to leave a CALL unanswered (timeout tests).
NO_REPLY: Any = _NoReply()


class CsmsCallError(Exception):
    """The station answered a CALL with CALLERROR.

    Overrides may also raise it to make the CSMS answer a station's CALL with that CALLERROR.
    """

    def __init__(
        self, code: str, description: str = "", details: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(f"{code}: {description}" if description else code)
        self.code = code
        self.description = description
        self.details = dict(details or {})


class SchemaError(ValueError):
    """A CALL the test wanted to send does not match the schema (use send_raw for fuzzing)."""


@dataclass(frozen=True)
class Message:
    """One frame on the wire, as the timeline and the assertions see it.

    ``kind`` is CALL, CALLRESULT, CALLERROR, SEND, CALLRESULTERROR (2.1) or RAW (a frame the test
    sent verbatim). ``action`` of a CALLRESULT/CALLERROR is the action of the CALL it answers
    ("" when unknown). A CALLERROR's payload is ``{"errorCode", "errorDescription",
    "errorDetails"}``.
    """

    t: float
    station_id: str
    direction: str
    kind: str
    action: str
    payload: dict
    unique_id: str


# --------------------------------------------------------------------------------------------
# Schema checking

_SCHEMA_ROOT = Path(ocpp.__file__).resolve().parent
_ACTION_NAME = re.compile(r"^[A-Za-z0-9]{1,64}$")
_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-](\d{2}):(\d{2}))$"
)
_FORMATS = FormatChecker(formats=())


@_FORMATS.checks("date-time", raises=ValueError)
def _is_date_time(value: object) -> bool:
    # The library validates without a format checker, so a station can send naive local
    # timestamps and never notice; the spec wants RFC 3339 with an offset.
    if not isinstance(value, str):
        return True
    m = _RFC3339.match(value)
    if m is None:
        raise ValueError(f"{value!r} is not an RFC 3339 date-time")
    second = min(int(m[6]), 59)  # leap second
    datetime(int(m[1]), int(m[2]), int(m[3]), int(m[4]), int(m[5]), second)
    if m[9] is not None and (int(m[9]) > 23 or int(m[10]) > 59):
        raise ValueError(f"{value!r} has an invalid UTC offset")
    return True


@functools.cache
def _validator(version: str, action: str, response: bool) -> Any:
    """The schema validator of one message, or None when the package ships no schema."""
    if not _ACTION_NAME.match(action):
        return None
    folder = _SCHEMA_ROOT / ("v" + version.replace(".", "")) / "schemas"
    if version == "1.6":
        names = [action + "Response"] if response else [action]
    else:
        # 2.1 SEND messages have a schema without the Request suffix.
        names = [action + "Response"] if response else [action + "Request", action]
    for name in names:
        path = folder / f"{name}.json"
        if path.is_file():
            # Decimal floats so that 1.6's multipleOf 0.1 is checked exactly.
            schema = json.loads(path.read_text(encoding="utf-8-sig"), parse_float=Decimal)
            cls = validator_for(schema, default=Draft4Validator)
            return cls(schema, format_checker=_FORMATS)
    return None


def _schema_problem(
    version: str, action: str, response: bool, payload: object
) -> tuple[str, str] | None:
    """(kind, description) of the first schema error of a payload, or None if it is valid."""
    validator = _validator(version, action, response)
    if validator is None:
        return "format", f"no OCPP {version} schema for {action}{'Response' if response else ''}"
    try:
        doc = json.loads(json.dumps(payload, default=_json_default), parse_float=Decimal)
    except (TypeError, ValueError) as exc:
        return "format", f"payload is not JSON-serialisable: {exc}"
    error = best_match(validator.iter_errors(doc))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "<payload>"
    return _KEYWORD_KIND.get(str(error.validator), "format"), f"{where}: {error.message}"[:240]


def _json_default(value: object) -> object:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _dumps(frame: list) -> str:
    return json.dumps(frame, separators=(",", ":"), default=_json_default)


def _short(payload: object, limit: int = 160) -> str:
    text = json.dumps(payload, separators=(",", ":"), default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------
# Connections


class StationLink(ocpp.charge_point.ChargePoint):
    """The CSMS end of one station's websocket connection.

    Version-specific subclasses add the ``@on`` handlers. Frames are read by one loop and the
    station's CALLs answered one after another by a worker task, so that a CALLRESULT for a
    CSMS-initiated CALL is never stuck behind a deliberately delayed answer, and so that a
    station sending a second CALL before the first was answered can be caught.
    """

    _ocpp_version: ClassVar[str]

    def __init__(
        self, csms: TestCsms, connection: ServerConnection, station_id: str, subprotocol: str
    ) -> None:
        super().__init__(station_id, connection)
        self.csms = csms
        self.station_id = station_id
        self.version: str = self._ocpp_version
        self.subprotocol = subprotocol
        self.request_headers: Headers = (
            connection.request.headers if connection.request else Headers()
        )
        self.raw_in: list[str] = []
        self._pending: dict[str, asyncio.Future[dict]] = {}
        self._sent: dict[str, str] = {}  # message id -> action of CALLs the CSMS sent
        self._seen: dict[str, int] = {}  # message id -> content hash of CALLs received
        self._calls: asyncio.Queue[tuple[float, str, str, dict]] = asyncio.Queue()
        self._open_calls: deque[str] = deque()  # actions of received, unanswered CALLs
        self._settled = True
        self._raw_sent = 0
        self._invalid_results: set[str] = set()
        self._closed = asyncio.Event()

    @property
    def connection(self) -> ServerConnection:
        return self._connection

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    # -- CSMS-initiated traffic --------------------------------------------------------------

    async def call(  # type: ignore[override]
        self, action: str, payload: dict, timeout: float = 10.0
    ) -> dict:
        """Send a CALL and return the station's CALLRESULT payload.

        The request is checked against the schema first (raising SchemaError), so that a test
        cannot blame the station for the test's own typo; fuzz tests use ``send_raw``. One CALL
        is in flight at a time, as OCPP-J requires of the CSMS too.
        """
        problem = _schema_problem(self.version, action, False, payload)
        if problem is not None:
            raise SchemaError(
                f"{action} request does not match the OCPP {self.version} schema: {problem[1]}"
            )
        unique_id = str(uuid.uuid4())
        frame = _dumps([2, unique_id, action, payload])
        try:
            async with asyncio.timeout(timeout), self._call_lock:
                if self.closed:
                    raise ConnectionError(f"{self.station_id} is not connected")
                future: asyncio.Future[dict] = asyncio.get_running_loop().create_future()
                self._pending[unique_id] = future
                self._sent[unique_id] = action
                self.csms._note_csms_call(self.station_id, action, payload)
                self._record(CSMS_TO_CS, "CALL", action, payload, unique_id)
                try:
                    await self._connection.send(frame)
                    return await future
                finally:
                    self._pending.pop(unique_id, None)
        except TimeoutError:
            raise TimeoutError(
                f"{self.station_id} did not answer {action} within {timeout}s"
            ) from None
        except ConnectionClosed as exc:
            raise ConnectionError(f"{self.station_id} disconnected during {action}") from exc

    async def send_raw(self, text: str) -> None:
        """Send any text frame verbatim (malformed-frame and fuzz tests)."""
        self._raw_sent += 1
        unique_id = ""
        with contextlib.suppress(ValueError):
            frame = json.loads(text)
            if isinstance(frame, list) and len(frame) >= 2 and isinstance(frame[1], str):
                unique_id = frame[1]
                if frame[0] == 2:
                    action = frame[2] if len(frame) > 2 and isinstance(frame[2], str) else ""
                    self._sent[unique_id] = action
        self._record(CSMS_TO_CS, "RAW", "", {"text": text}, unique_id)
        await self._connection.send(text)

    async def recv_raw_reply(self, unique_id: str, timeout: float = 5.0) -> list:
        """Wait for the station's [3|4, unique_id, ...] frame and return it parsed."""

        scanned = 0

        def find() -> tuple[list] | None:
            nonlocal scanned
            while scanned < len(self.raw_in):
                text = self.raw_in[scanned]
                scanned += 1
                try:
                    frame = json.loads(text)
                except ValueError:
                    continue
                if (
                    isinstance(frame, list)
                    and len(frame) >= 2
                    and frame[0] in (3, 4)
                    and frame[1] == unique_id
                ):
                    return (frame,)
            return None

        def describe() -> str:
            tail = "\n".join(f"  {t[:200]}" for t in self.raw_in[-20:]) or "  (none)"
            return (
                f"{self.station_id} sent no reply to message id {unique_id!r} within {timeout}s;"
                f" last raw frames received:\n{tail}"
            )

        return (await self.csms._wait_until(find, timeout, describe))[0]

    # -- reading ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Read frames until the connection closes."""
        worker = asyncio.create_task(self._serve_calls(), name=f"csms-calls-{self.station_id}")
        try:
            async for frame in self._connection:
                await self.route_message(frame)
        except ConnectionClosed:
            pass
        finally:
            worker.cancel()
            await asyncio.gather(worker, return_exceptions=True)
            self._closed.set()
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(ConnectionError(f"{self.station_id} disconnected"))

    async def route_message(self, raw_msg: str | bytes) -> None:
        """Check the framing of one frame, then queue a CALL or settle a pending CALL."""
        t = time.monotonic()
        if isinstance(raw_msg, bytes):
            self.raw_in.append(raw_msg.decode("utf-8", "replace"))
            self._violation("sent a binary websocket frame; OCPP-J uses text frames only")
            return
        self.raw_in.append(raw_msg)
        self.csms._notify()
        try:
            frame = json.loads(raw_msg)
        except ValueError:
            self._violation(f"sent a frame that is not JSON: {raw_msg[:80]!r}")
            await self._reply_error("-1", "", _error_code(self.version, "frame"), "not JSON")
            return
        if (
            not isinstance(frame, list)
            or not frame
            or not isinstance(frame[0], int)
            or isinstance(frame[0], bool)
        ):
            self._violation(f"sent a frame that is not an OCPP-J array: {raw_msg[:80]!r}")
            await self._reply_error(
                "-1", "", _error_code(self.version, "frame"), "not an OCPP-J message array"
            )
            return
        message_type = frame[0]
        unique_id = frame[1] if len(frame) > 1 else None
        if not isinstance(unique_id, str):
            self._violation(f"sent a frame without a string message id: {raw_msg[:80]!r}")
            await self._reply_error(
                "-1", "", _error_code(self.version, "frame"), "message id missing or not a string"
            )
            return
        if len(unique_id) > 36:
            self._violation(f"used a message id longer than 36 characters: {unique_id!r}")
        if message_type == 2:
            await self._on_call_frame(frame, t)
        elif message_type == 3:
            await self._on_result_frame(frame, t)
        elif message_type == 4:
            self._on_error_frame(frame, t)
        elif message_type == 6 and self.version == "2.1":
            self._on_send_frame(frame, t)
        elif message_type == 5 and self.version == "2.1":
            self._on_result_error_frame(frame, t)
        else:
            self._violation(f"sent message type {message_type}, unknown in OCPP {self.version}")
            if self.version == "2.0.1":
                await self._reply_error(
                    unique_id, "", "MessageTypeNotSupported", f"message type {message_type}"
                )
            # 1.6 has no error code for this and 2.1 says to ignore the message.

    async def _on_call_frame(self, frame: list, t: float) -> None:
        unique_id = frame[1]
        if len(frame) != 4 or not isinstance(frame[2], str):
            self._violation(f"sent a malformed CALL: {_short(frame)}")
            await self._reply_error(
                unique_id, "", _error_code(self.version, "frame"), "CALL must have 4 elements"
            )
            return
        action, payload = frame[2], frame[3]
        if not isinstance(payload, dict):
            self._violation(f"sent {action} with a payload that is not a JSON object")
            await self._reply_error(
                unique_id, action, _error_code(self.version, "format"), "payload must be an object"
            )
            return
        content = hash(_dumps([action, payload]))
        previous = self._seen.get(unique_id)
        if previous is not None and previous != content:
            self._violation(f"reused message id {unique_id!r} for a different CALL ({action})")
        self._seen[unique_id] = content
        if self._open_calls and not self._answers_late_on_purpose():
            previous = self._open_calls[-1]
            self._violation(f"sent CALL {action} while its CALL {previous} was still unanswered")
        self._open_calls.append(action)
        self._calls.put_nowait((t, unique_id, action, payload))

    async def _on_result_frame(self, frame: list, t: float) -> None:
        unique_id = frame[1]
        if len(frame) != 3 or not isinstance(frame[2], dict):
            self._violation(f"sent a malformed CALLRESULT: {_short(frame)}")
            return
        payload = frame[2]
        action = self._sent.pop(unique_id, None)
        self._record(CS_TO_CSMS, "CALLRESULT", action or "", payload, unique_id, t)
        if action is None:
            self._violation(f"sent a CALLRESULT for message id {unique_id!r}, not an open CALL")
            return
        if action:
            problem = _schema_problem(self.version, action, True, payload)
            if problem is not None:
                self._violation(f"{action} response violates the schema: {problem[1]}")
                if self.version == "2.1":
                    await self._send_frame(
                        [5, unique_id, _error_code(self.version, problem[0]), problem[1], {}]
                    )
        future = self._pending.get(unique_id)
        if future is not None and not future.done():
            future.set_result(payload)

    def _on_error_frame(self, frame: list, t: float) -> None:
        unique_id = frame[1]
        if len(frame) != 5:
            self._violation(f"sent a malformed CALLERROR: {_short(frame)}")
        code = frame[2] if len(frame) > 2 else None
        description = frame[3] if len(frame) > 3 else None
        details = frame[4] if len(frame) > 4 else None
        if code not in _ERROR_CODES[self.version]:
            self._violation(f"sent CALLERROR code {code!r}, not an OCPP {self.version} code")
        if not isinstance(description, str) or not isinstance(details, dict):
            self._violation("sent a CALLERROR whose description/details are not string/object")
        action = self._sent.pop(unique_id, None)
        payload = {"errorCode": code, "errorDescription": description, "errorDetails": details}
        self._record(CS_TO_CSMS, "CALLERROR", action or "", payload, unique_id, t)
        if action is None and not (unique_id == "-1" and self._raw_sent):
            self._violation(f"sent a CALLERROR for message id {unique_id!r}, not an open CALL")
        future = self._pending.get(unique_id)
        if future is not None and not future.done():
            error = CsmsCallError(
                str(code),
                description if isinstance(description, str) else "",
                details if isinstance(details, dict) else None,
            )
            future.set_exception(error)

    def _on_send_frame(self, frame: list, t: float) -> None:
        if len(frame) != 4 or not isinstance(frame[2], str) or not isinstance(frame[3], dict):
            self._violation(f"sent a malformed SEND: {_short(frame)}")
            return
        _, unique_id, action, payload = frame
        self._record(CS_TO_CSMS, "SEND", action, payload, unique_id, t)
        if action not in _SEND_ACTIONS:
            self._violation(f"sent {action} as SEND; only {sorted(_SEND_ACTIONS)} may be SENDs")
            return
        problem = _schema_problem(self.version, action, False, payload)
        if problem is not None:
            self._violation(f"{action} SEND violates the schema: {problem[1]}")

    def _on_result_error_frame(self, frame: list, t: float) -> None:
        unique_id = frame[1]
        payload = {
            "errorCode": frame[2] if len(frame) > 2 else None,
            "errorDescription": frame[3] if len(frame) > 3 else None,
            "errorDetails": frame[4] if len(frame) > 4 else None,
        }
        self._record(CS_TO_CSMS, "CALLRESULTERROR", "", payload, unique_id, t)
        if unique_id not in self._invalid_results:
            self._violation(
                f"answered a schema-valid CALLRESULT ({unique_id!r}) with CALLRESULTERROR "
                f"{payload['errorCode']}"
            )

    # -- answering the station's CALLs ---------------------------------------------------------

    async def _serve_calls(self) -> None:
        while True:
            t, unique_id, action, payload = await self._calls.get()
            self._settled = False
            try:
                await self._answer(t, unique_id, action, payload)
            except ConnectionClosed:
                return
            except Exception as exc:  # a bug in the test CSMS must not kill the connection
                logger.exception("test CSMS failed answering %s", action)
                self.csms.internal_errors.append(f"{self.station_id}: {action}: {exc!r}")
            finally:
                self._settle()

    def _settle(self) -> None:
        """Mark the CALL being handled as answered (or deliberately left unanswered).

        Called before the answer leaves, so that the station's next CALL, which it may only
        send after reading this answer, never finds the previous one still open.
        """
        if not self._settled:
            self._settled = True
            self._open_calls.popleft()

    def _answers_late_on_purpose(self) -> bool:
        # A station may legitimately give up waiting and move on when the test made the CSMS
        # slow or silent; the station's timeout is unknown here, so such CALLs are not judged.
        overrides = self.csms.overrides
        return self.csms.response_delay > 0 or any(a in overrides for a in self._open_calls)

    async def _answer(self, t: float, unique_id: str, action: str, payload: dict) -> None:
        csms = self.csms

        async def fail(code: str, text: str, details: Mapping[str, Any] | None = None) -> None:
            self._settle()
            await self._reply_error(unique_id, action, code, text, details)

        self._record(CS_TO_CSMS, "CALL", action, payload, unique_id, t)
        handler = self.route_map.get(action, {}).get("_on_action")
        if handler is None:
            if action in _KNOWN_ACTIONS[self.version]:
                self._violation(f"sent {action}, which is not a station-to-CSMS message")
                await fail("NotSupported", f"{action} is not accepted by a CSMS")
            else:
                self._violation(f"sent unknown action {action!r}")
                await fail("NotImplemented", f"unknown action {action}")
            return
        problem = _schema_problem(self.version, action, False, payload)
        if problem is not None:
            self._violation(f"{action} request violates the schema: {problem[1]}")
            await fail(_error_code(self.version, problem[0]), problem[1])
            return
        refusal = csms._registration_check(self, action)
        if refusal is not None:
            await fail("SecurityError", refusal)
            return

        override = csms.overrides.get(action)
        from_default = False
        try:
            result: Any = None
            if override is not None:
                result = override(self, payload)
                if inspect.isawaitable(result):
                    result = await result
            if result is None:
                from_default = True
                result = handler(payload)
                if inspect.isawaitable(result):
                    result = await result
        except CsmsCallError as exc:
            await fail(exc.code, exc.description, exc.details)
            return
        except Exception as exc:
            logger.exception("test CSMS handler for %s failed", action)
            csms.internal_errors.append(f"{self.station_id}: {action} handler: {exc!r}")
            await fail("InternalError", "test CSMS handler failed")
            return
        if result is NO_REPLY:
            return
        if csms.response_delay > 0:
            await asyncio.sleep(csms.response_delay)
        problem = _schema_problem(self.version, action, True, result)
        if problem is not None:
            if from_default:
                csms.internal_errors.append(
                    f"{self.station_id}: {action} response violates the schema: {problem[1]}"
                )
                await fail("InternalError", "test CSMS built an invalid response")
                return
            # An override answering garbage on purpose (tests of the station's robustness).
            self._invalid_results.add(unique_id)
        self._settle()
        self._record(CSMS_TO_CS, "CALLRESULT", action, result, unique_id)
        await self._send_frame([3, unique_id, result])

    async def _reply_error(
        self,
        unique_id: str,
        action: str,
        code: str,
        description: str,
        details: Mapping[str, Any] | None = None,
    ) -> None:
        description = description[:255]
        payload = {
            "errorCode": code,
            "errorDescription": description,
            "errorDetails": dict(details or {}),
        }
        self._record(CSMS_TO_CS, "CALLERROR", action, payload, unique_id)
        await self._send_frame([4, unique_id, code, description, payload["errorDetails"]])

    async def _send_frame(self, frame: list) -> None:
        with contextlib.suppress(ConnectionClosed):
            await self._connection.send(_dumps(frame))

    # -- bookkeeping ---------------------------------------------------------------------------

    def _record(
        self,
        direction: str,
        kind: str,
        action: str,
        payload: dict,
        unique_id: str,
        t: float | None = None,
    ) -> None:
        self.csms._record(
            Message(
                time.monotonic() if t is None else t,
                self.station_id,
                direction,
                kind,
                action,
                payload,
                unique_id,
            )
        )

    def _violation(self, text: str) -> None:
        self.csms._violation(self.station_id, text)


def _install_constant_handlers(cls: type, answers: Mapping[str, dict]) -> None:
    """Add an ``@on`` handler per action that always gives the same (copied) answer."""
    for action, answer in answers.items():

        def handler(self: StationLink, payload: dict, _answer: dict = answer) -> dict:
            return json.loads(json.dumps(_answer))

        # @on registers the function's name for route discovery, so name it first.
        handler.__name__ = handler.__qualname__ = f"_csms_on_{action}"
        setattr(cls, handler.__name__, on(action)(handler))


class _Link16(StationLink, ocpp.v16.ChargePoint):
    """OCPP 1.6J: Core, profiles and the security extension, as seen from the CSMS."""

    @on("BootNotification")
    def _on_boot(self, payload: dict) -> dict:
        return self.csms._boot(self, payload)

    @on("Heartbeat")
    def _on_heartbeat(self, payload: dict) -> dict:
        return {"currentTime": self.csms._now_iso()}

    @on("Authorize")
    def _on_authorize(self, payload: dict) -> dict:
        return {"idTagInfo": self.csms._id_tag_info(payload["idTag"])}

    @on("StartTransaction")
    def _on_start_transaction(self, payload: dict) -> dict:
        return self.csms._start_transaction(self, payload)

    @on("StopTransaction")
    def _on_stop_transaction(self, payload: dict) -> dict:
        return self.csms._stop_transaction(self, payload)

    @on("MeterValues")
    def _on_meter_values(self, payload: dict) -> dict:
        self.csms._meter_values(self, payload)
        return {}

    @on("DataTransfer")
    def _on_data_transfer(self, payload: dict) -> dict:
        return _data_transfer_answer(payload)


_install_constant_handlers(
    _Link16,
    {
        "StatusNotification": {},
        "DiagnosticsStatusNotification": {},
        "FirmwareStatusNotification": {},
        "SecurityEventNotification": {},
        "LogStatusNotification": {},
        "SignedFirmwareStatusNotification": {},
        "SignCertificate": {"status": "Accepted"},
    },
)


def _data_transfer_answer(payload: dict) -> dict:
    answer: dict[str, Any] = {"status": "Accepted"}
    if "data" in payload:
        answer["data"] = payload["data"]
    return answer


class _V2Handlers:
    """Handlers shared by 2.0.1 and 2.1, whose payloads for these messages agree."""

    csms: TestCsms

    @on("BootNotification")
    def _on_boot(self, payload: dict) -> dict:
        return self.csms._boot(self, payload)  # type: ignore[arg-type]

    @on("Heartbeat")
    def _on_heartbeat(self, payload: dict) -> dict:
        return {"currentTime": self.csms._now_iso()}

    @on("Authorize")
    def _on_authorize(self, payload: dict) -> dict:
        return {"idTokenInfo": self.csms._id_token_info(payload["idToken"])}

    @on("TransactionEvent")
    def _on_transaction_event(self, payload: dict) -> dict:
        return self.csms._transaction_event(self, payload)  # type: ignore[arg-type]

    @on("DataTransfer")
    def _on_data_transfer(self, payload: dict) -> dict:
        return _data_transfer_answer(payload)


_V2_CONSTANT_ANSWERS: dict[str, dict] = {
    "StatusNotification": {},
    "MeterValues": {},
    "NotifyReport": {},
    "NotifyEvent": {},
    "SecurityEventNotification": {},
    "FirmwareStatusNotification": {},
    "PublishFirmwareStatusNotification": {},
    "LogStatusNotification": {},
    "SignCertificate": {"status": "Accepted"},
    "NotifyChargingLimit": {},
    "ReportChargingProfiles": {},
    "ClearedChargingLimit": {},
    "NotifyEVChargingNeeds": {"status": "Accepted"},
    "NotifyEVChargingSchedule": {"status": "Accepted"},
    "ReservationStatusUpdate": {},
    "NotifyCustomerInformation": {},
    "NotifyDisplayMessages": {},
    "NotifyMonitoringReport": {},
    # No PKI behind this CSMS: certificate services answer Failed unless a test overrides them.
    "Get15118EVCertificate": {"status": "Failed", "exiResponse": ""},
    "GetCertificateStatus": {"status": "Failed"},
}


class _Link201(_V2Handlers, StationLink, ocpp.v201.ChargePoint):
    """OCPP 2.0.1."""


_install_constant_handlers(_Link201, _V2_CONSTANT_ANSWERS)


class _Link21(_V2Handlers, StationLink, ocpp.v21.ChargePoint):
    """OCPP 2.1: the 2.0.1 set plus the station-initiated messages 2.1 added."""

    @on("VatNumberValidation")
    def _on_vat_number_validation(self, payload: dict) -> dict:
        return {"vatNumber": payload["vatNumber"], "status": "Accepted"}

    @on("GetCertificateChainStatus")
    def _on_get_certificate_chain_status(self, payload: dict) -> dict:
        now = self.csms._now_iso()
        return {
            "certificateStatus": [
                {
                    "source": item["source"],
                    "status": "Unknown",
                    "nextUpdate": now,
                    "certificateHashData": item["certificateHashData"],
                }
                for item in payload["certificateStatusRequests"]
            ]
        }


_install_constant_handlers(
    _Link21,
    {
        **_V2_CONSTANT_ANSWERS,
        "BatterySwap": {},
        "ClosePeriodicEventStream": {},
        "OpenPeriodicEventStream": {"status": "Accepted"},
        "NotifyDERAlarm": {},
        "NotifyDERStartStop": {},
        "NotifyPriorityCharging": {},
        "NotifySettlement": {},
        "PullDynamicScheduleUpdate": {"status": "Rejected"},
        "ReportDERControl": {},
    },
)

_LINK_CLASSES: dict[str, type[StationLink]] = {"1.6": _Link16, "2.0.1": _Link201, "2.1": _Link21}


# --------------------------------------------------------------------------------------------
# The server


class TestCsms:
    """A strict CSMS on 127.0.0.1 for the demo and the integration tests.

    Tests change the public attributes (``boot_status``, ``authorize``, ``overrides``, ...)
    between steps; the next answer uses the new value. ``overrides[action]`` is called as
    ``fn(link, payload)`` (sync or async) before the built-in handler: a dict is the answer,
    None falls through to the built-in handler, ``NO_REPLY`` leaves the CALL unanswered and
    raising ``CsmsCallError`` answers CALLERROR.

    The BootNotification ``interval`` is ``heartbeat_interval`` when accepting and
    ``boot_interval`` (the retry wait) otherwise. ``registration`` holds the last answered
    boot status per station; preset it for a station that booted against another CSMS.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(
        self,
        *,
        versions: Sequence[str] = ("1.6",),
        host: str = "127.0.0.1",
        port: int = 0,
        passwords: Mapping[str, str] | None = None,
        boot_status: str = "Accepted",
        boot_interval: int = 300,
        heartbeat_interval: int = 300,
        authorize: Callable[[str], str] | Mapping[str, str] | None = None,
        parent_id_tags: Mapping[str, str] | None = None,
        on_message: Callable[[str, str, str, str, dict], None] | None = None,
        response_delay: float = 0.0,
        now: Callable[[], datetime] | None = None,
        strict_timing: bool = True,
    ) -> None:
        unknown = [v for v in versions if v not in SUBPROTOCOLS]
        if unknown or not versions:
            raise ValueError(
                f"unsupported OCPP versions {unknown}; choose from {list(SUBPROTOCOLS)}"
            )
        self.versions = tuple(versions)
        self.host = host
        self.port = port
        self.passwords = dict(passwords) if passwords is not None else None
        self.boot_status = boot_status
        self.boot_interval = boot_interval
        self.heartbeat_interval = heartbeat_interval
        self.authorize = authorize
        self.parent_id_tags = dict(parent_id_tags or {})
        self.on_message = on_message
        self.response_delay = response_delay
        self.now = now
        #: Check that a station not accepted waits the boot interval before booting again.
        self.strict_timing = strict_timing
        self.overrides: dict[str, Callable[[StationLink, dict], Any]] = {}

        self.url = ""
        self.stations: dict[str, StationLink] = {}
        self.log: list[Message] = []
        self.violations: list[str] = []
        #: Bugs of the test CSMS itself (handler exceptions, invalid built-in answers).
        self.internal_errors: list[str] = []
        self.transactions: dict[int | str, dict] = {}
        self.registration: dict[str, str] = {}
        #: (monotonic time, station id, event) for connects, disconnects and refused handshakes.
        self.connection_log: list[tuple[float, str, str]] = []

        self._server: Server | None = None
        self._changed = asyncio.Event()
        self._next_transaction_id = 1
        self._start_keys: dict[tuple, int] = {}
        self._allowed: dict[str, set[str]] = {}
        self._boot_answers: dict[str, tuple[float, str, int]] = {}

    # -- lifecycle -----------------------------------------------------------------------------

    async def start(self) -> str:
        """Listen (again, on the same port after the first start) and return the base URL."""
        if self._server is None:
            self._server = await serve(
                self._serve_connection,
                self.host,
                self.port,
                subprotocols=[SUBPROTOCOLS[v] for v in self.versions],  # type: ignore[misc]
                select_subprotocol=self._select_subprotocol,
                process_request=self._process_request,
            )
            self.port = self._server.sockets[0].getsockname()[1]
            self.url = f"ws://{self.host}:{self.port}/"
        return self.url

    async def stop(self) -> None:
        """Close every connection and stop listening."""
        await self.pause()

    async def pause(self, *, abrupt: bool = False) -> None:
        """Simulate a CSMS outage: stop listening and close every connection.

        ``abrupt`` drops the TCP connections without a closing handshake, as a crashed server
        or a broken network would.
        """
        server, self._server = self._server, None
        if server is None:
            return
        if abrupt:
            for link in list(self.stations.values()):
                link.connection.transport.abort()
        server.close()
        await server.wait_closed()

    async def resume(self) -> str:
        """End an outage: listen again on the same port."""
        return await self.start()

    async def __aenter__(self) -> TestCsms:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def kick(self, station_id: str, *, abrupt: bool = False, timeout: float = 5.0) -> None:
        """Close one station's connection from the server side and wait until it is gone."""
        link = self.stations.get(station_id)
        if link is None:
            return
        if abrupt:
            link.connection.transport.abort()
        else:
            await link.connection.close(1001, "closed by test CSMS")
        await self._wait_until(
            lambda: (True,) if link.closed and self.stations.get(station_id) is not link else None,
            timeout,
            lambda: f"connection of {station_id} did not close within {timeout}s",
        )

    async def drop_connection(self, station_id: str, timeout: float = 5.0) -> None:
        """Drop one station's TCP connection without a closing handshake."""
        await self.kick(station_id, abrupt=True, timeout=timeout)

    # -- waiting and querying --------------------------------------------------------------------

    async def wait_station(self, station_id: str, timeout: float = 5.0) -> StationLink:
        """Wait until the station is connected and return its current link."""

        def connected() -> tuple[StationLink] | None:
            link = self.stations.get(station_id)
            return (link,) if link is not None and not link.closed else None

        def describe() -> str:
            events = [e for e in self.connection_log if e[1] == station_id]
            return (
                f"{station_id} did not connect within {timeout}s; connected: "
                f"{sorted(self.stations)}; its connection events: {events[-10:]}"
            )

        return (await self._wait_until(connected, timeout, describe))[0]

    async def wait_disconnect(self, station_id: str, timeout: float = 5.0) -> None:
        """Wait until the station has no open connection."""
        await self._wait_until(
            lambda: (True,) if station_id not in self.stations else None,
            timeout,
            lambda: f"{station_id} was still connected after {timeout}s",
        )

    def messages(
        self,
        station_id: str | None = None,
        action: str | None = None,
        direction: str = CS_TO_CSMS,
    ) -> list[dict]:
        """Payloads of the CALLs (and 2.1 SENDs) sent in one direction, oldest first."""
        return [m.payload for m in self._calls(station_id, action, direction)]

    async def wait_for(
        self,
        action: str,
        *,
        station_id: str | None = None,
        predicate: Callable[[dict], bool] | None = None,
        count: int = 1,
        timeout: float = 5.0,
    ) -> dict:
        """Wait until the station(s) have sent ``count`` matching CALLs; return the last one.

        Messages already in the log count, so a test never misses one that arrived before it
        started waiting. A predicate that raises KeyError/IndexError/TypeError on a payload
        simply does not match it.
        """

        # Scanned incrementally: with thousands of stations the log gets long.
        scanned = 0
        found: list[dict] = []

        def reached() -> tuple[dict] | None:
            nonlocal scanned
            log = self.log
            if scanned > len(log):  # a test cleared the log while this wait was running
                scanned = 0
                found.clear()
            while scanned < len(log) and len(found) < count:
                m = log[scanned]
                scanned += 1
                if _is_call(m, station_id, action, CS_TO_CSMS) and (
                    predicate is None or _safe_predicate(predicate, m.payload)
                ):
                    found.append(m.payload)
            return (found[-1],) if len(found) >= count else None

        def describe() -> str:
            who = f" from {station_id}" if station_id else ""
            cond = " matching the predicate" if predicate else ""
            return (
                f"waited {timeout}s for {count} x {action}{who}{cond}, got {len(found)}.\n"
                + self.dump(station_id)
            )

        return (await self._wait_until(reached, timeout, describe))[0]

    def dump(self, station_id: str | None = None, last: int = 60) -> str:
        """A readable tail of the log (and the violations) for failure messages."""
        origin = self.log[0].t if self.log else 0.0
        rows = [m for m in self.log if station_id is None or m.station_id == station_id]
        lines = [
            f"  +{m.t - origin:8.3f}s {m.station_id} {m.direction} {m.kind} {m.action} "
            f"{_short(m.payload)}"
            for m in rows[-last:]
        ]
        text = "Messages:\n" + ("\n".join(lines) if lines else "  (none)")
        if self.violations:
            text += "\nViolations:\n" + "\n".join(f"  {v}" for v in self.violations)
        return text

    def _calls(self, station_id: str | None, action: str | None, direction: str) -> list[Message]:
        return [m for m in self.log if _is_call(m, station_id, action, direction)]

    async def _wait_until(
        self,
        condition: Callable[[], tuple | None],
        timeout: float,
        describe: Callable[[], str],
    ) -> tuple:
        """Re-check ``condition`` on every change until it yields a tuple, or time out."""
        try:
            async with asyncio.timeout(timeout):
                while True:
                    changed = self._changed
                    result = condition()
                    if result is not None:
                        return result
                    await changed.wait()
        except TimeoutError:
            raise TimeoutError(describe()) from None

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    def _record(self, message: Message) -> None:
        self.log.append(message)
        if self.on_message is not None:
            try:
                self.on_message(
                    message.station_id,
                    message.direction,
                    message.kind,
                    message.action,
                    message.payload,
                )
            except Exception:
                logger.exception("on_message callback failed")
        self._notify()

    def _violation(self, station_id: str, text: str) -> None:
        logger.warning("OCPP violation by %s: %s", station_id, text)
        self.violations.append(f"{station_id}: {text}")
        self._notify()

    # -- handshake -----------------------------------------------------------------------------

    def _select_subprotocol(self, connection: ServerConnection, offered: Sequence[str]) -> Any:
        # The spec wants the handshake completed without a subprotocol and the connection then
        # closed when nothing is in common (see _serve_connection), not an HTTP error.
        for version in self.versions:
            if SUBPROTOCOLS[version] in offered:
                return SUBPROTOCOLS[version]
        return None

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        station_id = _station_id(request.path)
        if not station_id:
            return self._refuse(connection, station_id, HTTPStatus.NOT_FOUND, "no station id")
        if self.passwords is None:
            return None
        if station_id not in self.passwords:
            return self._refuse(connection, station_id, HTTPStatus.NOT_FOUND, "unknown station")
        credentials = _basic_credentials(request.headers.get("Authorization"))
        expected = self.passwords[station_id]
        if (
            credentials is None
            or credentials[0] != station_id
            or not hmac.compare_digest(credentials[1].encode(), expected.encode())
        ):
            response = self._refuse(
                connection, station_id, HTTPStatus.UNAUTHORIZED, "bad or missing credentials"
            )
            response.headers["WWW-Authenticate"] = 'Basic realm="cp-agent test CSMS"'
            return response
        return None

    def _refuse(
        self, connection: ServerConnection, station_id: str, status: HTTPStatus, why: str
    ) -> Response:
        self.connection_log.append((time.monotonic(), station_id, f"refused {status.value}: {why}"))
        self._notify()
        return connection.respond(status, f"{why}\n")

    async def _serve_connection(self, connection: ServerConnection) -> None:
        assert connection.request is not None
        station_id = _station_id(connection.request.path)
        subprotocol = connection.subprotocol
        if subprotocol is None:
            self.connection_log.append(
                (time.monotonic(), station_id, "refused: no common subprotocol")
            )
            self._notify()
            await connection.close(1002, "no common OCPP subprotocol")
            return
        link = _LINK_CLASSES[_VERSION_OF[subprotocol]](self, connection, station_id, subprotocol)
        self.stations[station_id] = link
        self.connection_log.append((time.monotonic(), station_id, f"connected {subprotocol}"))
        self._notify()
        try:
            await link.start()
        finally:
            if self.stations.get(station_id) is link:
                del self.stations[station_id]
            self.connection_log.append((time.monotonic(), station_id, "disconnected"))
            self._notify()

    # -- protocol state ------------------------------------------------------------------------

    def _note_csms_call(self, station_id: str, action: str, payload: dict) -> None:
        """Remember which station messages a CSMS request licenses before acceptance."""
        allowed = set(_CONSEQUENCES.get(action, ()))
        if action in ("TriggerMessage", "ExtendedTriggerMessage"):
            requested = str(payload.get("requestedMessage", ""))
            allowed.add(_TRIGGERED_ACTION.get(requested, requested))
        if allowed:
            self._allowed.setdefault(station_id, set()).update(allowed)

    def _registration_check(self, link: StationLink, action: str) -> str | None:
        """Record a violation of the boot rules; return a refusal text to answer SecurityError."""
        station_id = link.station_id
        allowed = self._allowed.get(station_id, set())
        if action == "BootNotification":
            previous = self._boot_answers.get(station_id)
            if (
                self.strict_timing
                and previous is not None
                and previous[1] != "Accepted"
                and previous[2] > 0
                and "BootNotification" not in allowed
            ):
                waited = time.monotonic() - previous[0]
                if waited + 0.05 < previous[2]:
                    link._violation(
                        f"sent BootNotification {waited:.2f}s after a {previous[1]} answer "
                        f"with interval {previous[2]}s"
                    )
            return None
        state = self.registration.get(station_id)
        if state == "Accepted" or action in allowed:
            return None
        if state is None:
            link._violation(f"sent {action} before any BootNotification was answered")
            return None
        link._violation(f"sent {action} while its registration status is {state}")
        return f"registration status is {state}"

    def _boot(self, link: StationLink, payload: dict) -> dict:
        status = self.boot_status
        interval = self.heartbeat_interval if status == "Accepted" else self.boot_interval
        self.registration[link.station_id] = status
        self._allowed.pop(link.station_id, None)
        self._boot_answers[link.station_id] = (time.monotonic(), status, interval)
        return {"status": status, "currentTime": self._now_iso(), "interval": interval}

    def _now_iso(self) -> str:
        now = self.now() if self.now is not None else datetime.now(UTC)
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        now = now.astimezone(UTC)
        return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"

    def _auth_status(self, token: str) -> str:
        policy = self.authorize
        if policy is None:
            return "Accepted"
        if isinstance(policy, Mapping):
            return policy.get(token, "Invalid")
        return policy(token)

    def _id_tag_info(self, id_tag: str) -> dict:
        info = {"status": self._auth_status(id_tag)}
        if id_tag in self.parent_id_tags:
            info["parentIdTag"] = self.parent_id_tags[id_tag]
        return info

    def _id_token_info(self, id_token: dict) -> dict:
        token = id_token["idToken"]
        info: dict[str, Any] = {"status": self._auth_status(token)}
        if token in self.parent_id_tags:
            info["groupIdToken"] = {"idToken": self.parent_id_tags[token], "type": "Central"}
        return info

    def _start_transaction(self, link: StationLink, payload: dict) -> dict:
        # A station that lost our answer (crash, outage) resends the same start; a real CSMS
        # must hand back the same id, or the station ends up with two transactions.
        key = (
            link.station_id,
            payload["connectorId"],
            payload["idTag"],
            payload["timestamp"],
            payload["meterStart"],
        )
        transaction_id = self._start_keys.get(key)
        if transaction_id is None:
            transaction_id = self._next_transaction_id
            self._next_transaction_id += 1
            self._start_keys[key] = transaction_id
            self.transactions[transaction_id] = {
                "station_id": link.station_id,
                "start": payload,
                "stop": None,
                "meter_values": [],
            }
        else:
            self.transactions[transaction_id]["start_repeats"] = (
                self.transactions[transaction_id].get("start_repeats", 0) + 1
            )
        return {"transactionId": transaction_id, "idTagInfo": self._id_tag_info(payload["idTag"])}

    def _transaction_16(self, link: StationLink, transaction_id: int) -> dict:
        return self.transactions.setdefault(
            transaction_id,
            {"station_id": link.station_id, "start": None, "stop": None, "meter_values": []},
        )

    def _stop_transaction(self, link: StationLink, payload: dict) -> dict:
        record = self._transaction_16(link, payload["transactionId"])
        if record["stop"] is None:
            record["stop"] = payload
        else:
            record["stop_repeats"] = record.get("stop_repeats", 0) + 1
        answer: dict[str, Any] = {}
        if "idTag" in payload:
            answer["idTagInfo"] = self._id_tag_info(payload["idTag"])
        return answer

    def _meter_values(self, link: StationLink, payload: dict) -> None:
        if "transactionId" in payload:
            self._transaction_16(link, payload["transactionId"])["meter_values"].append(payload)

    def _transaction_event(self, link: StationLink, payload: dict) -> dict:
        transaction_id = payload["transactionInfo"]["transactionId"]
        record = self.transactions.setdefault(
            transaction_id, {"station_id": link.station_id, "events": []}
        )
        record["events"].append(payload)
        answer: dict[str, Any] = {}
        if "idToken" in payload:
            answer["idTokenInfo"] = self._id_token_info(payload["idToken"])
        return answer


def _is_call(m: Message, station_id: str | None, action: str | None, direction: str) -> bool:
    return (
        m.kind in ("CALL", "SEND")
        and m.direction == direction
        and (station_id is None or m.station_id == station_id)
        and (action is None or m.action == action)
    )


def _safe_predicate(predicate: Callable[[dict], bool], payload: dict) -> bool:
    try:
        return bool(predicate(payload))
    except (KeyError, IndexError, TypeError):
        return False


def _station_id(path: str) -> str:
    """The last path segment of the handshake URL, percent-decoded."""
    return unquote(urlsplit(path).path.rstrip("/").rsplit("/", 1)[-1])


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None
