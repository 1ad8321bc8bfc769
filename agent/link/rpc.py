"""OCPP-J RPC framing for one websocket connection (1.6, 2.0.1 and 2.1).

This is the only module that touches the `ocpp` package's framing, schemas and error
classes. The library's own `ChargePoint` routing is not used because it answers
NotImplemented/NotSupported the wrong way round, drops malformed frames silently, does not
know the 2.1 message types and runs handlers inline in the receive loop, so a handler that
awaits a CALL of its own deadlocks until timeout. Here every incoming CALL gets its own task
and a spec-correct answer, and our own CALLs never see an answer that belongs to another.

Spec references used below (OCPP-J texts in shared/spec):
  1.6   = ocpp-j-1.6-specification.txt, section 4
  2.0.1 = OCPP-2.0.1_part4_ocpp-j-specification.txt, chapter 4
  2.1   = OCPP-2.1_edition1_part4_ocpp-j-specification.txt, chapter 4
"""

from __future__ import annotations

import asyncio
import decimal
import functools
import json
import logging
import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import ocpp
from ocpp.exceptions import OCPPError

from agent.link.fastschema import compile_schema

if TYPE_CHECKING:
    from jsonschema import Draft4Validator
    from jsonschema.exceptions import ValidationError as SchemaError

log = logging.getLogger(__name__)

Handler = Callable[[dict], Awaitable[dict]]
FrameObserver = Callable[[str, str, str, str, dict], None]

CALL = 2
CALLRESULT = 3
CALLERROR = 4
CALLRESULTERROR = 5  # 2.1 only
SEND = 6  # 2.1 only

KIND = {
    CALL: "CALL",
    CALLRESULT: "CALLRESULT",
    CALLERROR: "CALLERROR",
    CALLRESULTERROR: "CALLRESULTERROR",
    SEND: "SEND",
}

VERSIONS = ("1.6", "2.0.1", "2.1")
MAX_MESSAGE_ID = 36  # all three specs: messageId string[36]
MAX_DESCRIPTION = 255  # 2.0.1/2.1 Table 7: errorDescription string[255]
UNREADABLE_ID = "-1"  # 2.0.1/2.1 4.2.3: id to use when the MessageId cannot be read

# Error codes are written with their 2.x names inside this module and translated on the way
# out, because 1.6 spells two of them differently (1.6 Table 7; the 1.6 errata keep the typos)
# and has no RpcFrameworkError / MessageTypeNotSupported.
_CODES_2X = frozenset({
    "FormatViolation", "GenericError", "InternalError", "MessageTypeNotSupported",
    "NotImplemented", "NotSupported", "OccurrenceConstraintViolation",
    "PropertyConstraintViolation", "ProtocolError", "RpcFrameworkError", "SecurityError",
    "TypeConstraintViolation",
})
_CODES_16 = frozenset({
    "NotImplemented", "NotSupported", "InternalError", "ProtocolError", "SecurityError",
    "FormationViolation", "PropertyConstraintViolation", "OccurenceConstraintViolation",
    "TypeConstraintViolation", "GenericError",
})
_TO_16 = {
    "FormatViolation": "FormationViolation",
    "OccurrenceConstraintViolation": "OccurenceConstraintViolation",
    # 1.6 has no code for a broken RPC wrapper; its nearest is "not conform the PDU structure".
    "RpcFrameworkError": "FormationViolation",
}
_TO_2X = {"FormationViolation": "FormatViolation",
          "OccurenceConstraintViolation": "OccurrenceConstraintViolation"}

# Which spec error a JSON-schema keyword violation is reported as. Lengths count as data type
# because the specs write them into the type (string[20]); cardinality is "occurrence".
_KEYWORD_CODES = {
    "required": "ProtocolError",
    "type": "TypeConstraintViolation",
    "maxLength": "TypeConstraintViolation",
    "minLength": "TypeConstraintViolation",
    "enum": "PropertyConstraintViolation",
    "minimum": "PropertyConstraintViolation",
    "maximum": "PropertyConstraintViolation",
    "exclusiveMinimum": "PropertyConstraintViolation",
    "exclusiveMaximum": "PropertyConstraintViolation",
    "multipleOf": "PropertyConstraintViolation",
    "pattern": "PropertyConstraintViolation",
    "format": "PropertyConstraintViolation",
    "uniqueItems": "PropertyConstraintViolation",
    "minItems": "OccurrenceConstraintViolation",
    "maxItems": "OccurrenceConstraintViolation",
    "minProperties": "OccurrenceConstraintViolation",
    "maxProperties": "OccurrenceConstraintViolation",
}

# Each version's schema folder in the ocpp package.  The actions a version defines are read
# from its request schemas, not from ``ocpp.vXX.enums.Action``: importing the enums runs the
# version package's ``__init__``, which loads ``ChargePoint`` and the dataclasses of every
# message (which this module never uses), 36 ms / 1.1 MB for 1.6 and 250 ms / 3.7 MB for 2.1
# at every start-up (docs/performance.md).  tests/test_startup_imports.py checks both give
# the same set.
_SCHEMA_DIRS = {"1.6": "v16", "2.0.1": "v201", "2.1": "v21"}


class CallFailed(Exception):
    """Common base of every way our own CALL can fail, so a caller can catch them together."""


class CallErrorReceived(CallFailed):
    """The peer answered our CALL with a CALLERROR (any code, known to the spec or not)."""

    def __init__(self, code: str, description: str = "", details: dict | None = None,
                 *, action: str = "") -> None:
        self.code = code
        self.description = description
        self.details = details if details is not None else {}
        self.action = action
        super().__init__(f"{action or 'CALL'} answered with {code}: {description}")


class CallTimeout(CallFailed):
    """No answer arrived in time; a late answer will be dropped, never handed to the next CALL."""

    def __init__(self, action: str, timeout: float) -> None:
        self.action = action
        self.timeout = timeout
        super().__init__(f"no answer to {action} within {timeout:g} s")


class ConnectionLost(CallFailed):
    """The session was closed (or the send failed) before the answer arrived."""


class ResponseInvalid(CallFailed):
    """The peer answered with a CALLRESULT we cannot use (schema violation or broken frame)."""

    def __init__(self, action: str, code: str, description: str) -> None:
        self.action = action
        self.code = code
        self.description = description
        super().__init__(f"invalid {action} response ({code}): {description}")


class OcppCallError(Exception):
    """Raised by a handler to answer the CALL with this CALLERROR instead of a CALLRESULT.

    Either spelling of the codes that 1.6 spells differently may be used; the session sends
    the one of the connection's version.
    """

    def __init__(self, code: str, description: str = "", details: dict | None = None) -> None:
        self.code = code
        self.description = description
        self.details = details if details is not None else {}
        super().__init__(f"{code}: {description}")


@dataclass(frozen=True)
class _Violation:
    code: str  # 2.x spelling
    description: str


@dataclass
class _Pending:
    unique_id: str
    action: str
    future: asyncio.Future


# --------------------------------------------------------------------------------------------
# Schemas


def _schema_folder(version: str) -> str:
    """Where the ``ocpp`` package keeps the version's JSON schemas."""
    return os.path.join(os.path.dirname(ocpp.__file__), _SCHEMA_DIRS[version], "schemas")


def _schema_stems(version: str) -> list[str]:
    folder = _schema_folder(version)
    return [stem for stem, ext in map(os.path.splitext, os.listdir(folder)) if ext == ".json"]


@functools.cache
def _call_actions(version: str) -> frozenset[str]:
    """Actions of the version's CALLs: 1.6 names its schemas ``X`` / ``XResponse``, 2.x
    ``XRequest`` / ``XResponse`` (2.1's SEND messages have no suffix, see below)."""
    stems = _schema_stems(version)
    if version == "1.6":
        return frozenset(s for s in stems if not s.endswith("Response"))
    return frozenset(s[: -len("Request")] for s in stems if s.endswith("Request"))


@functools.cache
def _send_actions(version: str) -> frozenset[str]:
    """2.1 messages sent with SEND; their schemas carry no Request/Response suffix (2.1 4.1.3)."""
    if version != "2.1":
        return frozenset()
    return frozenset(s for s in _schema_stems(version) if not s.endswith(("Request", "Response")))


def _mentions(node: Any, keyword: str) -> bool:
    if isinstance(node, dict):
        return keyword in node or any(_mentions(v, keyword) for v in node.values())
    if isinstance(node, list):
        return any(_mentions(v, keyword) for v in node)
    return False


def _decimalize(node: Any) -> Any:
    """Turn floats into Decimals via their shortest repr.

    A binary float like 21.4 is not an exact multiple of 0.1, so "multipleOf: 0.1" (1.6
    SetChargingProfile, RemoteStartTransaction, GetCompositeSchedule.conf) would reject valid
    values. Both the schema and the instance must be Decimal for the check to be exact.
    """
    if isinstance(node, dict):
        return {k: _decimalize(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_decimalize(v) for v in node]
    if isinstance(node, float):
        return Decimal(repr(node))
    return node


def _schema_name(version: str, message_type: int, action: str) -> str:
    """The file the ``ocpp`` package keeps a message's schema in (what its ``get_validator``
    reads): 1.6 ``X`` / ``XResponse``, 2.x ``XRequest`` / ``XResponse``, 2.1 SEND ``X``."""
    if message_type == CALLRESULT:
        return action + "Response"
    if message_type == CALL and version != "1.6":
        return action + "Request"
    return action


@functools.cache
def _schema(version: str, message_type: int, action: str) -> tuple[dict, bool] | None:
    """One message's schema, read from the ``ocpp`` package's files, and whether it needs
    Decimal instances (then its floats are Decimals too).

    The file is read here rather than through ``ocpp.messages.get_validator``: that module
    imports jsonschema (with referencing, rpds and attrs, ~3 MB of an idle agent, issue 18),
    which only a payload the fast check is not sure of needs (:func:`_validator`).  The
    Decimal flavour is ours as well: the library caches validators by name only, so whichever
    flavour was asked for first (possibly by other code in this process) would be returned
    for both.
    """
    if version not in _SCHEMA_DIRS:
        return None
    path = os.path.join(_schema_folder(version),
                        _schema_name(version, message_type, action) + ".json")
    try:
        # utf-8-sig: some of the library's schema files start with a byte order mark.
        with open(path, encoding="utf-8-sig") as f:
            schema = json.load(f)
    except (OSError, ValueError):
        return None
    if not _mentions(schema, "multipleOf"):
        return schema, False
    return _decimalize(schema), True


# multipleOf on Decimals is ``instance % step``, which the default context (28 digits) cannot
# do for a large instance (1e30 % 0.1 raises DivisionImpossible, and the CALL went unanswered:
# the hostile-frames campaign found it). Every float has at most ~330 significant places
# above 0.1 steps, and the JSON decoder refuses integers of more than 4,300 digits.
_EXACT = decimal.Context(prec=4400)


@functools.cache
def _validator(version: str, message_type: int, action: str) -> Draft4Validator:
    """jsonschema's validator for a schema :func:`_schema` found, made (and jsonschema
    imported) the first time a payload needs it: a doubtful one, or one whose schema has
    ``multipleOf``."""
    from jsonschema import Draft4Validator

    entry = _schema(version, message_type, action)
    if entry is None:  # callers ask only after _schema found one
        raise LookupError(f"no {KIND.get(message_type, '')} schema for {action} in {version}")
    return Draft4Validator(entry[0])


@functools.cache
def _fast_check(version: str, message_type: int, action: str) -> Callable[[Any], bool] | None:
    """A compiled one-sided check (see agent.link.fastschema); None if the schema needs Decimal."""
    entry = _schema(version, message_type, action)
    if entry is None or entry[1]:
        return None
    return compile_schema(entry[0])


def _violation(version: str, message_type: int, action: str, payload: dict) -> _Violation | None:
    """Check a payload against its schema; LookupError when there is no schema for it."""
    entry = _schema(version, message_type, action)
    if entry is None:
        raise LookupError(f"no {KIND.get(message_type, '')} schema for {action} in {version}")
    needs_decimal = entry[1]
    if not needs_decimal:
        fast = _fast_check(version, message_type, action)
        if fast is not None and fast(payload):
            return None  # certainly valid; only a doubtful payload pays for jsonschema
    from jsonschema.exceptions import best_match

    validator = _validator(version, message_type, action)
    if needs_decimal:
        try:
            with decimal.localcontext(_EXACT):
                error: SchemaError | None = best_match(
                    validator.iter_errors(_decimalize(payload)))
        except decimal.InvalidOperation:  # beyond even _EXACT: cannot be shown a multiple
            return _Violation("PropertyConstraintViolation",
                              f"{action}: a number too large to check against its schema")
    else:
        error = best_match(validator.iter_errors(payload))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path)
    text = f"{action}: {error.message}" + (f" (at /{where})" if where else "")
    return _Violation(_KEYWORD_CODES.get(str(error.validator), "FormatViolation"), text)


# --------------------------------------------------------------------------------------------
# Helpers


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _reject_constant(name: str) -> Any:
    # json.loads accepts NaN/Infinity, which are not JSON (both specs: "MUST be valid JSON").
    raise ValueError(f"{name} is not valid JSON")


# ``json.loads(raw, parse_constant=...)`` builds a new decoder (and its scanner) for every
# frame; one for the process does the same work.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


# One encoder for the process: ``json.dumps`` with options builds a new one per call, and
# the check for circular structures (a dict of the ids being walked) is left to the
# interpreter's recursion limit, turned into the ValueError every caller handles.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False, check_circular=False)


def _dumps(value: Any) -> str:
    # ASCII escapes keep lone surrogates echoed from a peer's frame from breaking the send.
    try:
        return _ENCODER.encode(value)
    except RecursionError:
        raise ValueError("circular or too deeply nested structure") from None


def encode(value: Any) -> str:
    """JSON as the frames carry it (compact, ASCII escapes, no NaN); ValueError/TypeError if
    it cannot be."""
    return _dumps(value)


def _message_id() -> str:
    """A random (version 4) UUID in its usual text form, as ``str(uuid.uuid4())`` gives it,
    at a quarter of the cost: it is made for every CALL the station sends."""
    h = os.urandom(16).hex()
    return (f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[int(h[16], 16) & 3]}{h[17:20]}-"
            f"{h[20:]}")


_VARIANT = "89ab"  # RFC 4122 variant bits 10xx in the first hex digit of the fourth group


def _expire(future: asyncio.Future, action: str, timeout: float) -> None:
    """The call timer: fail a CALL still waiting for its answer (a plain timer handle, not
    ``asyncio.timeout``, whose context manager costs several times more per CALL)."""
    if not future.done():
        future.set_exception(CallTimeout(action, timeout))


def _clip(text: str, limit: int = MAX_DESCRIPTION) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------------------------
# Session


class RpcSession:
    """Request/response bookkeeping for one OCPP-J websocket connection.

    The receive loop hands every text frame to `feed()`; `call()` sends our CALLs one at a
    time (1.6 4.1.1, 2.x 4.1.1) and waits for the matching answer. Incoming CALLs are looked
    up in `handlers` when they arrive, so adapters may register handlers after construction.
    """

    def __init__(
        self,
        version: str,
        send: Callable[[str], Awaitable[None]],
        handlers: Mapping[str, Handler],
        *,
        default_timeout: float = 30.0,
        on_frame: FrameObserver | None = None,
        validate: bool = True,
        name: str = "",
        on_invalid: Callable[[str], None] | None = None,
    ) -> None:
        if version not in VERSIONS:
            raise ValueError(f"unsupported OCPP version {version!r}, expected one of {VERSIONS}")
        self.version = version
        self.name = name or f"ocpp{version}"
        self._send = send
        self._handlers = handlers
        self._default_timeout = default_timeout
        self._on_frame = on_frame
        self._validate = validate
        # Told (in words) of every received frame that is no valid OCPP message: the station's
        # InvalidMessages security event (throttled by the receiver, not here).
        self._on_invalid = on_invalid
        self._lock = asyncio.Lock()
        self._pending: _Pending | None = None
        self._incoming: dict[str, asyncio.Task] = {}  # CALLs being handled, by message id
        self._tasks: set[asyncio.Task] = set()  # every handler task, CALL and SEND
        # Ids of CALLRESULTs we sent recently, so a 2.1 CALLRESULTERROR can name its action.
        self._answered: OrderedDict[str, str] = OrderedDict()
        self._closed = False
        # 1.6 4.2.1: "While Rejected, the Charge Point SHALL NOT respond to any Central System
        # initiated message." The adapter sets this while its registration is Rejected.
        self.ignore_calls = False

    # ---------------------------------------------------------------- public

    @property
    def pending_handlers(self) -> int:
        """Incoming CALLs and SENDs whose handler has not finished yet."""
        return len(self._tasks)

    @property
    def closed(self) -> bool:
        return self._closed

    async def feed(self, raw: str) -> None:
        """Process one received text frame. Never raises and never waits for a handler."""
        if self._closed:
            log.debug("%s: frame after close ignored", self.name)
            return
        try:
            await self._dispatch(raw)
        except Exception:
            log.exception("%s: unexpected failure processing a frame", self.name)

    async def call(self, action: str, payload: dict, *, timeout: float | None = None,
                   encoded: str | None = None) -> dict:
        """Send a CALL and return the CALLRESULT payload.

        Raises ValueError (our payload is invalid, nothing is sent), CallErrorReceived,
        ResponseInvalid, CallTimeout or ConnectionLost. The timeout runs from the moment the
        frame is sent, not while waiting for an earlier CALL to finish.  ``encoded``, when the
        caller has it, is ``payload`` as this module encodes it (:func:`encode`), sent as it is;
        ``payload`` is still what is validated and reported.
        """
        body = self._encode_outgoing(CALL, action, payload, encoded)
        wait = self._default_timeout if timeout is None else timeout
        async with self._lock:
            if self._closed:
                raise ConnectionLost(f"{self.name}: session closed, {action} not sent")
            unique_id = _message_id()
            loop = asyncio.get_running_loop()
            pending = _Pending(unique_id, action, loop.create_future())
            self._pending = pending
            timer: asyncio.TimerHandle | None = None
            try:
                frame = f'[{CALL},"{unique_id}",{_dumps(action)},{body}]'
                self._report("out", "CALL", unique_id, action, payload)
                try:
                    await self._send(frame)
                except Exception as exc:
                    raise ConnectionLost(f"{self.name}: sending {action} failed: {exc}") from exc
                if not pending.future.done():
                    timer = loop.call_later(wait, _expire, pending.future, action, wait)
                answer = await pending.future
            except BaseException:
                self._settle(pending, timer)
                # What is raised here is often the future's own exception (ConnectionLost
                # from close(), CallTimeout, CallErrorReceived), and its traceback holds this
                # frame: the frame's reference to the future would close a cycle holding the
                # session and, through its send, the whole dead connection until a full
                # collection.  The cancelled timer has let go of the future already.
                del pending
                raise
            self._settle(pending, timer)
        return await self._conclude(pending, answer)

    def _settle(self, pending: _Pending, timer: asyncio.TimerHandle | None) -> None:
        """A CALL's bookkeeping once it ended, answered or not."""
        if timer is not None:
            timer.cancel()
        if self._pending is pending:
            self._pending = None
        # close() may have failed the future while the send itself failed; mark the
        # exception retrieved so asyncio does not log it as lost.
        if not pending.future.done():
            pending.future.cancel()
        elif not pending.future.cancelled():
            pending.future.exception()

    async def send_unconfirmed(self, action: str, payload: dict) -> None:
        """Send a 2.1 SEND message; it needs no answer and may overtake a pending CALL."""
        if self.version != "2.1":
            raise ValueError(f"SEND messages do not exist in OCPP {self.version}")
        body = self._encode_outgoing(SEND, action, payload)
        if self._closed:
            raise ConnectionLost(f"{self.name}: session closed, {action} not sent")
        unique_id = _message_id()
        self._report("out", "SEND", unique_id, action, payload)
        try:
            await self._send(f'[{SEND},"{unique_id}",{_dumps(action)},{body}]')
        except Exception as exc:
            raise ConnectionLost(f"{self.name}: sending {action} failed: {exc}") from exc

    async def drain(self, timeout: float | None = None) -> None:
        """Wait until the handlers running now have finished (e.g. before a graceful close)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)

    def close(self) -> None:
        """Fail the pending CALL with ConnectionLost and cancel the running handlers."""
        if self._closed:
            return
        self._closed = True
        pending = self._pending
        if pending is not None and not pending.future.done():
            pending.future.set_exception(
                ConnectionLost(f"{self.name}: connection closed while waiting for {pending.action}")
            )
        for task in list(self._tasks):
            task.cancel()

    # ---------------------------------------------------------------- outgoing helpers

    def _encode_outgoing(self, message_type: int, action: str, payload: dict,
                         encoded: str | None = None) -> str:
        if not isinstance(payload, dict):
            raise ValueError(f"{action}: payload must be a dict, got {type(payload).__name__}")
        if self._validate:
            known = _call_actions(self.version) if message_type == CALL else _send_actions(
                self.version)
            if action not in known:
                raise ValueError(f"{action!r} is not an OCPP {self.version} "
                                 f"{KIND[message_type]} action")
            try:
                problem = _violation(self.version, message_type, action, payload)
            except LookupError as exc:
                raise ValueError(str(exc)) from None
            if problem is not None:
                raise ValueError(f"invalid outgoing {problem.description}")
        if encoded is not None:
            return encoded
        try:
            return _dumps(payload)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{action}: payload cannot be sent as JSON: {exc}") from None

    def _code(self, code: str) -> str:
        """The spelling of `code` for this version; GenericError if the version lacks it."""
        if self.version == "1.6":
            code = _TO_16.get(code, code)
            return code if code in _CODES_16 else "GenericError"
        code = _TO_2X.get(code, code)
        return code if code in _CODES_2X else "GenericError"

    async def _answer_error(self, message_type: int, unique_id: str | None, code: str,
                            description: str, details: dict | None = None,
                            action: str = "") -> None:
        uid = unique_id if unique_id is not None else UNREADABLE_ID
        code = self._code(code)
        description = _clip(description)
        details = details if isinstance(details, dict) else {}
        try:
            frame = _dumps([message_type, uid, code, description, details])
        except (TypeError, ValueError):
            details = {}
            frame = _dumps([message_type, uid, code, description, details])
        payload = {"errorCode": code, "errorDescription": description, "errorDetails": details}
        await self._transmit(frame, KIND[message_type], uid, action, payload)

    async def _transmit(self, frame: str, kind: str, unique_id: str, action: str,
                        payload: dict) -> None:
        """Send an answer; a failure here is the connection's problem, not the caller's."""
        if self._closed:
            log.debug("%s: %s %s not sent, session closed", self.name, kind, unique_id)
            return
        self._report("out", kind, unique_id, action, payload)
        try:
            await self._send(frame)
        except Exception as exc:
            log.warning("%s: could not send %s for %s: %s", self.name, kind, unique_id, exc)

    def _report(self, direction: str, kind: str, unique_id: str, action: str,
                payload: dict) -> None:
        if self._on_frame is None:
            return
        try:
            self._on_frame(direction, kind, unique_id, action, payload)
        except Exception:
            log.exception("%s: on_frame observer failed", self.name)

    # ---------------------------------------------------------------- incoming

    async def _dispatch(self, raw: str | bytes) -> None:
        if isinstance(raw, bytes | bytearray):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError:
                await self._malformed(raw, None, "RpcFrameworkError", "Message is not UTF-8")
                return
        try:
            message = _DECODER.decode(raw)
        except (ValueError, RecursionError):
            await self._malformed(raw, None, "RpcFrameworkError", "Message is not valid JSON")
            return
        if not isinstance(message, list) or not message:
            await self._malformed(raw, None, "RpcFrameworkError",
                                  "Message is not a non-empty JSON array")
            return
        type_id = message[0]
        unique_id = message[1] if len(message) > 1 and isinstance(message[1], str) else None
        if not _is_int(type_id):
            await self._malformed(raw, unique_id, "RpcFrameworkError",
                                  "MessageTypeId is not an integer")
        elif type_id == CALL:
            await self._on_call(raw, message, unique_id)
        elif type_id == CALLRESULT:
            self._on_result(raw, message, unique_id)
        elif type_id == CALLERROR:
            self._on_error(raw, message, unique_id)
        elif type_id == CALLRESULTERROR and self.version == "2.1":
            self._on_result_error(raw, message, unique_id)
        elif type_id == SEND and self.version == "2.1":
            self._on_send(raw, message, unique_id)
        elif self.version == "2.0.1":
            # 2.0.1 4.4: an unknown message type SHALL be answered MessageTypeNotSupported.
            self._report("in", "INVALID", unique_id or "", "", {"raw": _clip(raw, 512)})
            self._invalid(f"message type {type_id} is not supported")
            await self._answer_error(CALLERROR, unique_id, "MessageTypeNotSupported",
                                     f"Message type {type_id} is not supported")
        else:
            # 1.6 4.1.3 and 2.1 4.1.3/4.4: a system SHALL ignore a message with an unknown
            # type (2.1 dropped 2.0.1's duty to answer; 1.6 has no error code for it).
            self._report("in", "INVALID", unique_id or "", "", {"raw": _clip(raw, 512)})
            log.warning("%s: ignoring message of unknown type %s", self.name, type_id)
            self._invalid(f"message type {type_id} is not supported")

    def _invalid(self, what: str) -> None:
        if self._on_invalid is None:
            return
        try:
            self._on_invalid(what)
        except Exception:  # noqa: BLE001 - reporting must never break the answer
            log.exception("%s: reporting an invalid message failed", self.name)

    async def _malformed(self, raw: str | bytes, unique_id: str | None, code: str,
                         description: str) -> None:
        """Answer a frame that is not a valid RPC message (2.x 4.2.3: id "-1" if unreadable)."""
        text = raw if isinstance(raw, str) else repr(raw)
        log.warning("%s: malformed frame (%s): %.200s", self.name, description, text)
        self._report("in", "INVALID", unique_id or "", "", {"raw": _clip(text, 512)})
        self._invalid(f"malformed frame: {description}")
        await self._answer_error(CALLERROR, unique_id, code, description)

    async def _on_call(self, raw: str, message: list, unique_id: str | None) -> None:
        if unique_id is None:
            await self._malformed(raw, None, "RpcFrameworkError", "MessageId is not a string")
            return
        if len(unique_id) > MAX_MESSAGE_ID:
            await self._malformed(raw, unique_id, "RpcFrameworkError",
                                  f"MessageId is longer than {MAX_MESSAGE_ID} characters")
            return
        if len(message) != 4:
            await self._malformed(raw, unique_id, "RpcFrameworkError",
                                  f"CALL has {len(message)} elements instead of 4")
            return
        action, payload = message[2], message[3]
        if not isinstance(action, str):
            await self._malformed(raw, unique_id, "RpcFrameworkError", "Action is not a string")
            return
        if payload is None:
            payload = {}  # 1.6 4.2.1 / 2.x 4.1.5: null is an allowed notation for "no payload"
        if not isinstance(payload, dict):
            await self._malformed(raw, unique_id, "FormatViolation",
                                  "Payload is not a JSON object")
            return
        self._report("in", "CALL", unique_id, action, payload)
        if self.ignore_calls:
            log.info("%s: %s ignored while the registration is Rejected", self.name, action)
            return

        if unique_id in self._incoming:
            if self.version == "2.1":
                # 2.1 4.1.4 lets a retry reuse the id; the answer still being produced for the
                # first copy answers both, so a CALLERROR here would only mislead the peer.
                log.info("%s: retry of %s %s while still handling it", self.name, action,
                         unique_id)
                return
            # 1.6/2.0.1 4.2.3 list "a call with the same unique identifier is being handled
            # already" among the CALLERROR cases.
            await self._answer_error(
                CALLERROR, unique_id, "GenericError" if self.version == "1.6"
                else "RpcFrameworkError",
                "A CALL with this MessageId is already being handled", action=action)
            return
        if action not in _call_actions(self.version):
            # 1.6 Table 7, 2.x Table 8/9: NotImplemented = "Requested Action is not known".
            await self._answer_error(
                CALLERROR, unique_id, "NotImplemented",
                f"Requested Action {action} is not known by receiver", action=action)
            return
        handler = self._handlers.get(action)
        if handler is None:
            # ... and NotSupported = "recognized but not supported by the receiver".
            await self._answer_error(
                CALLERROR, unique_id, "NotSupported",
                f"Requested Action {action} is recognized but not supported by the receiver",
                action=action)
            return
        if self._validate:
            try:
                problem = _violation(self.version, CALL, action, payload)
            except LookupError as exc:
                log.error("%s: %s, accepting it unchecked", self.name, exc)
                problem = None
            if problem is not None:
                log.info("%s: rejecting %s %s: %s", self.name, action, unique_id,
                         problem.description)
                self._invalid(f"{action} violates its schema ({problem.code})")
                await self._answer_error(CALLERROR, unique_id, problem.code,
                                         problem.description, action=action)
                return
        task = asyncio.create_task(self._run_call(unique_id, action, payload, handler),
                                   name=f"{self.name} {action} {unique_id}")
        self._incoming[unique_id] = task
        self._track(task, unique_id)

    def _track(self, task: asyncio.Task, unique_id: str | None) -> None:
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._task_done, unique_id))

    def _task_done(self, unique_id: str | None, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if unique_id is not None and self._incoming.get(unique_id) is task:
            del self._incoming[unique_id]
        if not task.cancelled() and task.exception() is not None:
            log.error("%s: handler task %s failed", self.name, task.get_name(),
                      exc_info=task.exception())

    async def _run_call(self, unique_id: str, action: str, payload: dict,
                        handler: Handler) -> None:
        try:
            result = await handler(payload)
        except OcppCallError as exc:
            await self._answer_error(CALLERROR, unique_id, exc.code, exc.description,
                                     exc.details, action=action)
            return
        except OCPPError as exc:  # the library's error classes carry a code as well
            await self._answer_error(CALLERROR, unique_id, exc.code, exc.description or "",
                                     exc.details, action=action)
            return
        except Exception:
            log.exception("%s: handler for %s %s failed", self.name, action, unique_id)
            await self._answer_error(CALLERROR, unique_id, "InternalError",
                                     f"Internal error while handling {action}", action=action)
            return

        problem = None
        if not isinstance(result, dict):
            problem = f"handler returned {type(result).__name__}, not a dict"
        elif self._validate:
            try:
                violation = _violation(self.version, CALLRESULT, action, result)
            except LookupError as exc:
                log.error("%s: %s, sending it unchecked", self.name, exc)
                violation = None
            if violation is not None:
                problem = violation.description
        if problem is None:
            try:
                frame = f"[{CALLRESULT},{_dumps(unique_id)},{_dumps(result)}]"
            except (TypeError, ValueError) as exc:
                problem = f"response is not JSON: {exc}"
        if problem is not None:
            # Our bug, not the peer's: say so rather than send a response it must reject.
            log.error("%s: invalid response to %s %s: %s", self.name, action, unique_id, problem)
            await self._answer_error(CALLERROR, unique_id, "InternalError",
                                     f"Internal error while handling {action}", action=action)
            return
        self._answered[unique_id] = action
        while len(self._answered) > 32:
            self._answered.popitem(last=False)
        await self._transmit(frame, "CALLRESULT", unique_id, action, result)

    def _claim_pending(self, kind: str, unique_id: str | None) -> _Pending | None:
        """The pending CALL this answer belongs to, or None (then it is dropped, never sent on)."""
        pending = self._pending
        if unique_id is None:
            log.warning("%s: %s without a readable MessageId dropped", self.name, kind)
        elif pending is None or pending.unique_id != unique_id:
            log.warning("%s: %s for unknown or expired MessageId %s dropped", self.name, kind,
                        unique_id)
        elif pending.future.done():
            log.warning("%s: duplicate %s for %s ignored", self.name, kind, unique_id)
        else:
            return pending
        return None

    def _on_result(self, raw: str, message: list, unique_id: str | None) -> None:
        pending = self._claim_pending("CALLRESULT", unique_id)
        payload = message[2] if len(message) > 2 else None
        if payload is None and len(message) == 3:
            payload = {}
        action = pending.action if pending else ""
        self._report("in", "CALLRESULT", unique_id or "", action,
                     payload if isinstance(payload, dict) else {"raw": _clip(raw, 512)})
        if pending is None:
            return
        if len(message) != 3:
            problem = _Violation("RpcFrameworkError",
                                 f"CALLRESULT has {len(message)} elements instead of 3")
        elif not isinstance(payload, dict):
            problem = _Violation("FormatViolation", "CALLRESULT payload is not a JSON object")
        else:
            pending.future.set_result(payload)
            return
        pending.future.set_result(problem)

    def _on_error(self, raw: str, message: list, unique_id: str | None) -> None:
        pending = self._claim_pending("CALLERROR", unique_id)
        # Read what is there even from a sloppy CALLERROR: the peer did reject our CALL.
        code = message[2] if len(message) > 2 and isinstance(message[2], str) else "GenericError"
        description = message[3] if len(message) > 3 and isinstance(message[3], str) else ""
        details = message[4] if len(message) > 4 and isinstance(message[4], dict) else {}
        if len(message) != 5:
            log.warning("%s: CALLERROR with %d elements: %.200s", self.name, len(message), raw)
        action = pending.action if pending else ""
        self._report("in", "CALLERROR", unique_id or "", action,
                     {"errorCode": code, "errorDescription": description, "errorDetails": details})
        if pending is not None:
            pending.future.set_exception(
                CallErrorReceived(code, description, details, action=pending.action))

    def _on_result_error(self, raw: str, message: list, unique_id: str | None) -> None:
        # 2.1 4.2.3: the peer could not process a CALLRESULT we sent. Nothing to answer; the
        # operator needs to see it because it means one of our responses is wrong.
        action = self._answered.get(unique_id, "") if unique_id else ""
        code = message[2] if len(message) > 2 else ""
        description = message[3] if len(message) > 3 else ""
        details = message[4] if len(message) > 4 and isinstance(message[4], dict) else {}
        self._report("in", "CALLRESULTERROR", unique_id or "", action,
                     {"errorCode": code, "errorDescription": description, "errorDetails": details})
        log.warning("%s: peer rejected our %s response %s: %s %s", self.name, action or "?",
                    unique_id, code, description)

    def _on_send(self, raw: str, message: list, unique_id: str | None) -> None:
        # 2.1 4.2.4: the receiver SHALL NOT respond to a SEND, not even with a CALLERROR, so
        # every problem here ends in a log line.
        if unique_id is None or len(message) != 4 or not isinstance(message[2], str):
            self._report("in", "INVALID", unique_id or "", "", {"raw": _clip(raw, 512)})
            log.warning("%s: malformed SEND dropped: %.200s", self.name, raw)
            return
        action, payload = message[2], message[3]
        if payload is None:
            payload = {}
        if not isinstance(payload, dict):
            log.warning("%s: SEND %s with a non-object payload dropped", self.name, action)
            return
        self._report("in", "SEND", unique_id, action, payload)
        if action not in _send_actions(self.version):
            log.warning("%s: SEND of unknown or non-SEND action %s dropped", self.name, action)
            return
        handler = self._handlers.get(action)
        if handler is None:
            log.info("%s: SEND %s not handled, dropped", self.name, action)
            return
        if self._validate:
            try:
                problem = _violation(self.version, SEND, action, payload)
            except LookupError:
                problem = None
            if problem is not None:
                log.warning("%s: invalid SEND dropped: %s", self.name, problem.description)
                return
        task = asyncio.create_task(self._run_send(action, unique_id, payload, handler),
                                   name=f"{self.name} {action} {unique_id}")
        self._track(task, None)

    async def _run_send(self, action: str, unique_id: str, payload: dict,
                        handler: Handler) -> None:
        try:
            await handler(payload)
        except Exception:
            log.exception("%s: handler for SEND %s %s failed", self.name, action, unique_id)

    # ---------------------------------------------------------------- our CALL's outcome

    async def _conclude(self, pending: _Pending, answer: dict | _Violation) -> dict:
        problem = answer if isinstance(answer, _Violation) else None
        if problem is None and self._validate:
            try:
                problem = _violation(self.version, CALLRESULT, pending.action, answer)
            except LookupError as exc:
                log.error("%s: %s, accepting it unchecked", self.name, exc)
        if problem is None:
            return answer
        log.warning("%s: invalid response to %s %s: %s", self.name, pending.action,
                    pending.unique_id, problem.description)
        self._invalid(f"invalid response to {pending.action} ({problem.code})")
        if self.version == "2.1":
            # 2.1 4.2.3: tell the peer its CALLRESULT could not be processed.
            await self._answer_error(CALLRESULTERROR, pending.unique_id, problem.code,
                                     problem.description, action=pending.action)
        raise ResponseInvalid(pending.action, self._code(problem.code), problem.description)
