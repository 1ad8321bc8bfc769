"""The CSMS end of one station's websocket connection, one class per OCPP version.

``StationLink`` reads the station's frames, checks the OCPP-J framing and the schemas, answers
the station's CALLs one at a time and sends the CALLs a test makes. ``_Link16``, ``_Link201`` and
``_Link21`` add the ``@on`` handlers of their version; most answers are delegated to the
``TestCsms`` the link belongs to, which holds the protocol state.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import ocpp.charge_point
import ocpp.v16
import ocpp.v21
import ocpp.v201
from ocpp.routing import on
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed

from agent.testing.csms.messages import (
    CS_TO_CSMS,
    CSMS_TO_CS,
    NO_REPLY,
    CsmsCallError,
    Message,
    SchemaError,
    _short,
)
from agent.testing.csms.protocol import _ERROR_CODES, _KNOWN_ACTIONS, _SEND_ACTIONS
from agent.testing.csms.schemas import _dumps, _error_code, _schema_problem

if TYPE_CHECKING:
    from agent.testing.csms.server import TestCsms

# One logger for the whole test CSMS, named as it was when the CSMS was a single module.
logger = logging.getLogger("agent.testing.csms")


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
                    result = await future
                    self._result_received(action, payload, result)
                    return result
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
            return
        self.csms._registration_check(self, action)
        self._check_stream_data(payload)

    def _check_stream_data(self, payload: dict) -> None:
        """Stream data only for a stream this CSMS accepted and no one closed since, never
        more elements in one message than the stream's ``values``."""
        streams = self.csms.streams.get(self.station_id, {})
        stream = streams.get(payload["id"])
        if stream is None:
            self._violation(
                f"sent NotifyPeriodicEventStream for stream {payload['id']}, which is not open "
                f"(open: {sorted(streams)})"
            )
            return
        most = stream["params"].get("values", 0)
        if most and len(payload["data"]) > most:
            self._violation(
                f"sent {len(payload['data'])} elements of stream {payload['id']} at once; "
                f"its values parameter is {most}"
            )

    def _answered(self, action: str, payload: dict, result: Any) -> None:
        """The CSMS is about to answer the station's CALL ``action`` with ``result``."""

    def _result_received(self, action: str, payload: dict, result: dict) -> None:
        """The station answered the CSMS's CALL ``action`` with ``result``."""

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
        self._answered(action, payload, result)
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

    def _answered(self, action: str, payload: dict, result: Any) -> None:
        # Periodic event streams: open from the station's accepted OpenPeriodicEventStream
        # until its ClosePeriodicEventStream (kept per station across reconnections).
        streams = self.csms.streams.setdefault(self.station_id, {})
        if action == "OpenPeriodicEventStream" and isinstance(result, dict):
            if result.get("status") == "Accepted":
                data = payload["constantStreamData"]
                streams[data["id"]] = json.loads(json.dumps(data))
        elif action == "ClosePeriodicEventStream":
            if streams.pop(payload["id"], None) is None:
                self._violation(
                    f"closed periodic event stream {payload['id']}, which is not open "
                    f"(open: {sorted(streams)})"
                )

    def _result_received(self, action: str, payload: dict, result: dict) -> None:
        if action == "AdjustPeriodicEventStream" and result.get("status") == "Accepted":
            stream = self.csms.streams.get(self.station_id, {}).get(payload["id"])
            if stream is None:
                self._violation(f"accepted adjusting stream {payload['id']}, which is not open")
            else:
                stream["params"] = json.loads(json.dumps(payload["params"]))

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
