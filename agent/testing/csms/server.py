"""``TestCsms``: the strict test CSMS's websocket server and the protocol state it keeps.

It listens, authenticates the handshake (HTTP Basic), picks the subprotocol and hands each
connection to a per-version ``StationLink``. It keeps the log, the violations, the registration
state and the transactions the links record, answers the messages whose answer depends on that
state, and offers tests the waiting and querying helpers.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
import ssl as ssl_module
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import unquote, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from agent.testing.csms.link import _LINK_CLASSES, StationLink
from agent.testing.csms.messages import CS_TO_CSMS, Message, _short
from agent.testing.csms.protocol import (
    _CONSEQUENCES,
    _TRIGGERED_ACTION,
    _VERSION_OF,
    SUBPROTOCOLS,
)

# One logger for the whole test CSMS, named as it was when the CSMS was a single module.
logger = logging.getLogger("agent.testing.csms")


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
        ssl: ssl_module.SSLContext | None = None,
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
        #: TLS (wss://): a server context; with ``verify_mode`` CERT_REQUIRED it asks for
        #: client certificates (security profile 3). Tests may swap it between starts.
        self.ssl = ssl
        #: The TLS client certificate (``getpeercert()`` form) of each station's connection.
        self.peer_certs: dict[str, dict] = {}

        self.url = ""
        self.stations: dict[str, StationLink] = {}
        self.log: list[Message] = []
        self.violations: list[str] = []
        #: Bugs of the test CSMS itself (handler exceptions, invalid built-in answers).
        self.internal_errors: list[str] = []
        self.transactions: dict[int | str, dict] = {}
        self.registration: dict[str, str] = {}
        #: 2.1 periodic event streams open per station: stream id -> its constantStreamData,
        #: from the station's accepted OpenPeriodicEventStream until its
        #: ClosePeriodicEventStream (an accepted AdjustPeriodicEventStream updates the params).
        #: Stream data for any other id is a violation.
        self.streams: dict[str, dict[int, dict]] = {}
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
                ssl=self.ssl,
            )
            self.port = self._server.sockets[0].getsockname()[1]
            self.url = f"{'wss' if self.ssl is not None else 'ws'}://{self.host}:{self.port}/"
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
        peer = connection.transport.get_extra_info("peercert")
        if peer:
            self.peer_certs[station_id] = peer
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
