"""The test CSMS, driven by a hand-written station (raw websocket frames).

The agent is not involved: these tests pin down what the integration suite relies on, namely
that the CSMS answers like a CSMS, records what it saw and catches a station breaking the rules.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
from datetime import datetime

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus

from agent.testing import NO_REPLY, CsmsCallError, SchemaError, TestCsms

NOW = "2024-05-01T12:00:00Z"
BOOT_16 = {"chargePointVendor": "Acme", "chargePointModel": "Bench"}
BOOT_201 = {"reason": "PowerUp", "chargingStation": {"model": "Bench", "vendorName": "Acme"}}
SUB = {"1.6": "ocpp1.6", "2.0.1": "ocpp2.0.1", "2.1": "ocpp2.1"}


class RawStation:
    """A station whose every frame the test writes by hand.

    A reader task sorts incoming frames: answers to our CALLs settle futures, the CSMS's CALLs
    and any other frame (e.g. a CALLERROR with id "-1") go to queues.
    """

    _ids = itertools.count(1)

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.csms_calls: asyncio.Queue[list] = asyncio.Queue()
        self.other: asyncio.Queue[list] = asyncio.Queue()
        self._answers: dict[str, asyncio.Future[list]] = {}
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(
        cls,
        url: str,
        station_id: str = "CP1",
        version: str = "1.6",
        **kwargs: object,
    ) -> RawStation:
        ws = await connect(url + station_id, subprotocols=[SUB[version]], **kwargs)
        assert ws.subprotocol == SUB[version]
        return cls(ws)

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for text in self.ws:
                try:
                    frame = json.loads(text)
                except ValueError:
                    self.other.put_nowait([text])
                    continue
                future = self._answers.pop(frame[1], None) if frame[0] in (3, 4) else None
                if future is not None:
                    future.set_result(frame)
                elif frame[0] == 2:
                    self.csms_calls.put_nowait(frame)
                else:
                    self.other.put_nowait(frame)

    def expect_answer(self, unique_id: str) -> asyncio.Future[list]:
        future: asyncio.Future[list] = asyncio.get_running_loop().create_future()
        self._answers[unique_id] = future
        return future

    async def send_call(self, action: str, payload: dict, unique_id: str | None = None) -> str:
        unique_id = unique_id or f"m{next(self._ids)}"
        self.expect_answer(unique_id)
        await self.ws.send(json.dumps([2, unique_id, action, payload]))
        return unique_id

    async def answer_of(self, unique_id: str) -> list:
        return await asyncio.wait_for(self._answers[unique_id], 5)

    async def call(self, action: str, payload: dict, unique_id: str | None = None) -> list:
        """Send a CALL and return the whole answer frame ([3, id, payload] or [4, ...])."""
        return await self.answer_of(await self.send_call(action, payload, unique_id))

    async def next_csms_call(self) -> list:
        return await asyncio.wait_for(self.csms_calls.get(), 5)

    async def next_other(self) -> list:
        return await asyncio.wait_for(self.other.get(), 5)

    async def close(self) -> None:
        await self.ws.close()
        await self._reader


@pytest.fixture
async def csms():
    server = TestCsms(versions=("1.6", "2.0.1", "2.1"), heartbeat_interval=60, boot_interval=0)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def station(csms: TestCsms):
    client = await RawStation.connect(csms.url)
    yield client
    await client.close()


async def boot(client: RawStation, version: str = "1.6") -> dict:
    frame = await client.call("BootNotification", BOOT_16 if version == "1.6" else BOOT_201)
    assert frame[0] == 3, frame
    return frame[2]


# -- boot and registration -------------------------------------------------------------------


async def test_boot_accepted_gives_heartbeat_interval_and_utc_time(csms, station):
    answer = await boot(station)
    assert answer["status"] == "Accepted"
    assert answer["interval"] == 60
    assert answer["currentTime"].endswith("Z")
    datetime.fromisoformat(answer["currentTime"])
    heartbeat = await station.call("Heartbeat", {})
    assert heartbeat[2]["currentTime"].endswith("Z")
    assert csms.registration["CP1"] == "Accepted"
    assert csms.messages("CP1", "BootNotification") == [BOOT_16]
    assert csms.violations == []


async def test_pending_refuses_untriggered_requests_but_allows_triggered_ones(csms, station):
    csms.boot_status = "Pending"
    csms.boot_interval = 0
    answer = await boot(station)
    assert (answer["status"], answer["interval"]) == ("Pending", 0)

    status = {"connectorId": 0, "errorCode": "NoError", "status": "Available"}
    refused = await station.call("StatusNotification", status)
    assert refused[:3] == [4, refused[1], "SecurityError"]
    assert csms.violations == [
        "CP1: sent StatusNotification while its registration status is Pending"
    ]

    link = await csms.wait_station("CP1")
    trigger = asyncio.create_task(
        link.call("TriggerMessage", {"requestedMessage": "StatusNotification"})
    )
    request = await station.next_csms_call()
    assert request[2:] == ["TriggerMessage", {"requestedMessage": "StatusNotification"}]
    await station.ws.send(json.dumps([3, request[1], {"status": "Accepted"}]))
    assert await trigger == {"status": "Accepted"}
    allowed = await station.call("StatusNotification", status)
    assert allowed[0] == 3
    assert len(csms.violations) == 1

    csms.boot_status = "Accepted"
    assert (await boot(station))["status"] == "Accepted"
    assert (await station.call("StatusNotification", status))[0] == 3
    assert len(csms.violations) == 1


async def test_rejected_station_must_stay_silent_and_wait_the_interval(csms, station):
    csms.boot_status = "Rejected"
    csms.boot_interval = 30
    answer = await boot(station)
    assert (answer["status"], answer["interval"]) == ("Rejected", 30)
    assert (await station.call("Heartbeat", {}))[2] == "SecurityError"
    await boot(station)  # far too early
    assert csms.violations[0] == "CP1: sent Heartbeat while its registration status is Rejected"
    assert csms.violations[1].startswith("CP1: sent BootNotification 0.")
    assert "after a Rejected answer with interval 30s" in csms.violations[1]


async def test_request_before_any_boot_is_answered_but_recorded(csms, station):
    answer = await station.call("Heartbeat", {})
    assert answer[0] == 3
    assert csms.violations == ["CP1: sent Heartbeat before any BootNotification was answered"]


# -- authorization and transactions ------------------------------------------------------------


async def test_authorize_policies_and_parent_tags_1_6(csms, station):
    await boot(station)
    csms.authorize = {"GOOD": "Accepted", "BAD": "Blocked"}
    csms.parent_id_tags = {"GOOD": "FLEET"}
    good = await station.call("Authorize", {"idTag": "GOOD"})
    bad = await station.call("Authorize", {"idTag": "BAD"})
    unknown = await station.call("Authorize", {"idTag": "WHO"})
    assert good[2] == {"idTagInfo": {"status": "Accepted", "parentIdTag": "FLEET"}}
    assert bad[2] == {"idTagInfo": {"status": "Blocked"}}
    assert unknown[2] == {"idTagInfo": {"status": "Invalid"}}

    csms.authorize = lambda tag: "Expired" if tag.startswith("OLD") else "Accepted"
    assert (await station.call("Authorize", {"idTag": "OLD1"}))[2]["idTagInfo"]["status"] == (
        "Expired"
    )
    assert csms.violations == []


async def test_authorize_and_transaction_event_2_0_1(csms):
    client = await RawStation.connect(csms.url, "EVSE-7", "2.0.1")
    try:
        await boot(client, "2.0.1")
        csms.authorize = {"AA11": "Accepted"}
        csms.parent_id_tags = {"AA11": "GROUP"}
        token = {"idToken": "AA11", "type": "ISO14443"}
        answer = await client.call("Authorize", {"idToken": token})
        assert answer[2] == {
            "idTokenInfo": {
                "status": "Accepted",
                "groupIdToken": {"idToken": "GROUP", "type": "Central"},
            }
        }
        started = {
            "eventType": "Started",
            "timestamp": NOW,
            "triggerReason": "Authorized",
            "seqNo": 0,
            "transactionInfo": {"transactionId": "tx-1"},
            "idToken": token,
        }
        updated = {
            "eventType": "Updated",
            "timestamp": NOW,
            "triggerReason": "MeterValuePeriodic",
            "seqNo": 1,
            "transactionInfo": {"transactionId": "tx-1", "chargingState": "Charging"},
        }
        assert (await client.call("TransactionEvent", started))[2]["idTokenInfo"]["status"] == (
            "Accepted"
        )
        assert (await client.call("TransactionEvent", updated))[2] == {}
        assert csms.transactions["tx-1"]["events"] == [started, updated]
        assert csms.transactions["tx-1"]["station_id"] == "EVSE-7"
        assert csms.violations == []
    finally:
        await client.close()


async def test_start_stop_meter_values_recorded_1_6(csms, station):
    await boot(station)
    start = {"connectorId": 1, "idTag": "TAG1", "meterStart": 100, "timestamp": NOW}
    first = await station.call("StartTransaction", start)
    assert first[2] == {"transactionId": 1, "idTagInfo": {"status": "Accepted"}}
    other = dict(start, connectorId=2)
    assert (await station.call("StartTransaction", other))[2]["transactionId"] == 2
    # A resent start (answer lost) gets the same id back.
    assert (await station.call("StartTransaction", start))[2]["transactionId"] == 1

    sample = {"timestamp": NOW, "sampledValue": [{"value": "150"}]}
    meter = {"connectorId": 1, "transactionId": 1, "meterValue": [sample]}
    assert (await station.call("MeterValues", meter))[2] == {}
    stop = {"transactionId": 1, "meterStop": 250, "timestamp": NOW, "idTag": "TAG1"}
    assert (await station.call("StopTransaction", stop))[2] == {"idTagInfo": {"status": "Accepted"}}
    stop_no_tag = {
        "transactionId": 2,
        "meterStop": 120,
        "timestamp": NOW,
        "reason": "EVDisconnected",
    }
    assert (await station.call("StopTransaction", stop_no_tag))[2] == {}

    assert csms.transactions[1] == {
        "station_id": "CP1",
        "start": start,
        "stop": stop,
        "meter_values": [meter],
        "start_repeats": 1,
    }
    assert csms.transactions[2]["stop"] == stop_no_tag
    assert csms.violations == []


async def test_ocpp_2_1_station_is_served(csms):
    client = await RawStation.connect(csms.url, "CP21", "2.1")
    try:
        await boot(client, "2.1")
        link = await csms.wait_station("CP21")
        assert (link.version, link.subprotocol) == ("2.1", "ocpp2.1")
        assert (await client.call("Heartbeat", {}))[0] == 3
        status = {"timestamp": NOW, "connectorStatus": "Available", "evseId": 1, "connectorId": 1}
        assert (await client.call("StatusNotification", status))[0] == 3
        token = {"idToken": "X", "type": "ISO14443"}
        assert (await client.call("Authorize", {"idToken": token}))[2]["idTokenInfo"] == {
            "status": "Accepted"
        }
        event = {
            "eventType": "Started",
            "timestamp": NOW,
            "triggerReason": "CablePluggedIn",
            "seqNo": 0,
            "transactionInfo": {"transactionId": "t21"},
        }
        assert (await client.call("TransactionEvent", event))[2] == {}
        opened = {"constantStreamData": {"id": 1, "variableMonitoringId": 7, "params": {}}}
        assert (await client.call("OpenPeriodicEventStream", opened))[2] == {"status": "Accepted"}
        stream = {"id": 1, "pending": 0, "basetime": NOW, "data": [{"t": 0, "v": "1.5"}]}
        await client.ws.send(json.dumps([6, "s1", "NotifyPeriodicEventStream", stream]))
        assert await csms.wait_for("NotifyPeriodicEventStream") == stream
        assert csms.log[-1].kind == "SEND"
        assert csms.violations == []
    finally:
        await client.close()


async def test_ocpp_2_1_stream_data_needs_an_open_stream_within_its_values(csms):
    client = await RawStation.connect(csms.url, "CP21", "2.1")
    try:
        await boot(client, "2.1")
        link = await csms.wait_station("CP21")

        sent = itertools.count()

        def data(stream_id: int, n: int) -> dict:
            tag = str(next(sent))  # each payload differs, so each wait finds its own
            return {"id": stream_id, "pending": 0, "basetime": NOW,
                    "data": [{"t": i, "v": tag} for i in range(n)]}

        async def send(payload: dict) -> None:
            await client.ws.send(json.dumps([6, "s", "NotifyPeriodicEventStream", payload]))
            await csms.wait_for("NotifyPeriodicEventStream", predicate=lambda p: p == payload)

        await send(data(5, 1))  # never opened
        opened = {"id": 5, "variableMonitoringId": 1, "params": {"values": 2}}
        await client.call("OpenPeriodicEventStream", {"constantStreamData": opened})
        assert csms.streams["CP21"] == {5: opened}
        await send(data(5, 2))
        await send(data(5, 3))  # more than values
        # The CSMS adjusts the stream; the station answers Accepted.
        adjusting = asyncio.create_task(
            link.call("AdjustPeriodicEventStream", {"id": 5, "params": {"values": 3}}))
        frame = await client.next_csms_call()
        await client.ws.send(json.dumps([3, frame[1], {"status": "Accepted"}]))
        await adjusting
        assert csms.streams["CP21"][5]["params"] == {"values": 3}
        await send(data(5, 3))
        await client.call("ClosePeriodicEventStream", {"id": 5})
        await client.call("ClosePeriodicEventStream", {"id": 5})  # not open any more
        await send(data(5, 1))  # closed
    finally:
        await client.close()
    assert csms.violations == [
        "CP21: sent NotifyPeriodicEventStream for stream 5, which is not open (open: [])",
        "CP21: sent 3 elements of stream 5 at once; its values parameter is 2",
        "CP21: closed periodic event stream 5, which is not open (open: [])",
        "CP21: sent NotifyPeriodicEventStream for stream 5, which is not open (open: [])",
    ]
    csms.violations.clear()


# -- handshake -----------------------------------------------------------------------------


def _basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def test_basic_auth():
    async with TestCsms(passwords={"CP1": "s3cret"}) as server:
        good = await RawStation.connect(server.url, additional_headers=_basic("CP1", "s3cret"))
        assert (await server.wait_station("CP1")).station_id == "CP1"
        await good.close()

        for headers in ({}, _basic("CP1", "wrong"), _basic("CP2", "s3cret")):
            with pytest.raises(InvalidStatus) as refused:
                await connect(
                    server.url + "CP1", subprotocols=["ocpp1.6"], additional_headers=headers
                )
            assert refused.value.response.status_code == 401
            assert "Basic" in refused.value.response.headers["WWW-Authenticate"]
        with pytest.raises(InvalidStatus) as unknown:
            await connect(
                server.url + "CP9", subprotocols=["ocpp1.6"], additional_headers=_basic("CP9", "x")
            )
        assert unknown.value.response.status_code == 404
        assert [e[2] for e in server.connection_log].count(
            "refused 401: bad or missing credentials"
        ) == 3


async def test_subprotocol_chosen_by_server_preference():
    async with TestCsms(versions=("2.0.1", "1.6")) as server:
        ws = await connect(server.url + "CP1", subprotocols=["ocpp1.6", "ocpp2.0.1"])
        assert ws.subprotocol == "ocpp2.0.1"
        assert (await server.wait_station("CP1")).version == "2.0.1"
        await ws.close()


async def test_no_common_subprotocol_is_closed_without_agreement():
    async with TestCsms(versions=("1.6",)) as server:
        ws = await connect(server.url + "CP1", subprotocols=["ocpp2.0.1"])
        assert ws.subprotocol is None
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
        assert closed.value.rcvd.code == 1002
        assert server.stations == {}
        assert server.connection_log[-1][1:] == ("CP1", "refused: no common subprotocol")


# -- strictness ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "action", "payload", "code"),
    [
        ("1.6", "BootNotification", {"chargePointVendor": "Acme"}, "OccurenceConstraintViolation"),
        ("1.6", "BootNotification", dict(BOOT_16, chargePointModel=7), "TypeConstraintViolation"),
        ("1.6", "BootNotification", dict(BOOT_16, colour="red"), "FormationViolation"),
        (
            "1.6",
            "StartTransaction",
            {"connectorId": 1, "idTag": "T", "meterStart": 0, "timestamp": "2024-05-01T12:00:00"},
            "PropertyConstraintViolation",
        ),
        ("2.0.1", "BootNotification", {"reason": "PowerUp"}, "OccurrenceConstraintViolation"),
        (
            "2.0.1",
            "BootNotification",
            dict(BOOT_201, reason="Bored"),
            "PropertyConstraintViolation",
        ),
        ("2.0.1", "Heartbeat", {"extra": 1}, "FormatViolation"),
    ],
)
async def test_schema_violation_is_recorded_and_answered(csms, version, action, payload, code):
    client = await RawStation.connect(csms.url, "CPX", version)
    try:
        csms.registration["CPX"] = "Accepted"
        answer = await client.call(action, payload)
        assert answer[0] == 4 and answer[2] == code, answer
        assert len(csms.violations) == 1
        assert f"CPX: {action} request violates the schema" in csms.violations[0]
        assert csms.log[-1].kind == "CALLERROR"
    finally:
        await client.close()


async def test_unknown_and_wrong_direction_actions(csms, station):
    await boot(station)
    assert (await station.call("Reset", {"type": "Hard"}))[2] == "NotSupported"
    assert (await station.call("MakeCoffee", {}))[2] == "NotImplemented"
    assert csms.violations == [
        "CP1: sent Reset, which is not a station-to-CSMS message",
        "CP1: sent unknown action 'MakeCoffee'",
    ]


@pytest.mark.parametrize(
    ("version", "frame", "expected"),
    [
        ("1.6", "this is not json", [4, "-1", "FormationViolation"]),
        ("2.0.1", "this is not json", [4, "-1", "RpcFrameworkError"]),
        ("2.0.1", '{"a": 1}', [4, "-1", "RpcFrameworkError"]),
        ("2.0.1", '[2, "m-x", "Heartbeat"]', [4, "m-x", "RpcFrameworkError"]),
        ("2.0.1", '[9, "m-y", {}]', [4, "m-y", "MessageTypeNotSupported"]),
    ],
)
async def test_malformed_frames_get_spec_errors(csms, version, frame, expected):
    client = await RawStation.connect(csms.url, "CPM", version)
    try:
        await client.ws.send(frame)
        answer = await client.next_other()
        assert answer[:3] == expected
        assert isinstance(answer[3], str) and answer[4] == {}
        assert len(csms.violations) == 1
    finally:
        await client.close()


async def test_second_call_before_answer_is_a_violation(csms, station):
    await boot(station)
    link = await csms.wait_station("CP1")
    first, second = station.expect_answer("p1"), station.expect_answer("p2")
    # Fed back to back, as if both frames arrived in one TCP segment.
    await link.route_message(json.dumps([2, "p1", "Heartbeat", {}]))
    await link.route_message(json.dumps([2, "p2", "Heartbeat", {}]))
    assert (await asyncio.wait_for(first, 5))[0] == 3
    assert (await asyncio.wait_for(second, 5))[0] == 3
    assert csms.violations == [
        "CP1: sent CALL Heartbeat while its CALL Heartbeat was still unanswered"
    ]


async def test_delayed_answers_excuse_a_station_that_moves_on(csms, station):
    await boot(station)
    csms.response_delay = 0.05
    first = await station.send_call("Heartbeat", {})
    second = await station.send_call("Heartbeat", {})
    assert (await station.answer_of(first))[0] == 3
    assert (await station.answer_of(second))[0] == 3
    assert csms.violations == []


async def test_message_id_rules(csms, station):
    await boot(station)
    await station.call("Heartbeat", {}, unique_id="same")
    await station.call("Heartbeat", {}, unique_id="same")  # a retry: allowed
    status = {"connectorId": 1, "errorCode": "NoError", "status": "Available"}
    await station.call("StatusNotification", status, unique_id="same")
    await station.ws.send(json.dumps([3, "never-sent", {}]))
    await station.call("Heartbeat", {}, unique_id="x" * 37)
    assert csms.violations == [
        "CP1: reused message id 'same' for a different CALL (StatusNotification)",
        "CP1: sent a CALLRESULT for message id 'never-sent', not an open CALL",
        f"CP1: used a message id longer than 36 characters: '{'x' * 37}'",
    ]


# -- CSMS-initiated calls ----------------------------------------------------------------------


async def test_station_link_call_round_trip(csms, station):
    await boot(station)
    link = await csms.wait_station("CP1")
    pending = asyncio.create_task(link.call("GetConfiguration", {"key": ["HeartbeatInterval"]}))
    request = await station.next_csms_call()
    assert request[2:] == ["GetConfiguration", {"key": ["HeartbeatInterval"]}]
    answer = {"configurationKey": [{"key": "HeartbeatInterval", "readonly": False, "value": "60"}]}
    await station.ws.send(json.dumps([3, request[1], answer]))
    assert await pending == answer

    pending = asyncio.create_task(link.call("Reset", {"type": "Soft"}))
    request = await station.next_csms_call()
    await station.ws.send(json.dumps([4, request[1], "InternalError", "busy", {}]))
    with pytest.raises(CsmsCallError) as error:
        await pending
    assert (error.value.code, error.value.description) == ("InternalError", "busy")

    pending = asyncio.create_task(link.call("ClearCache", {}))
    request = await station.next_csms_call()
    await station.ws.send(json.dumps([3, request[1], {"status": "Maybe"}]))
    assert await pending == {"status": "Maybe"}
    assert len(csms.violations) == 1
    assert csms.violations[0].startswith("CP1: ClearCache response violates the schema: status:")
    assert [(m.direction, m.kind, m.action) for m in csms.log[-4:]] == [
        ("csms->cs", "CALL", "Reset"),
        ("cs->csms", "CALLERROR", "Reset"),
        ("csms->cs", "CALL", "ClearCache"),
        ("cs->csms", "CALLRESULT", "ClearCache"),
    ]


async def test_station_link_call_checks_request_and_times_out(csms, station):
    await boot(station)
    link = await csms.wait_station("CP1")
    with pytest.raises(SchemaError):
        await link.call("Reset", {"type": "Gentle"})
    with pytest.raises(TimeoutError, match="did not answer ClearCache"):
        await link.call("ClearCache", {}, timeout=0.1)
    assert (await station.next_csms_call())[2] == "ClearCache"


async def test_send_raw_and_recv_raw_reply(csms, station):
    await boot(station)
    link = await csms.wait_station("CP1")
    await link.send_raw('[2,"raw-1","Reset",{"type":"Hard"}]')
    request = await station.next_csms_call()
    await station.ws.send(json.dumps([3, request[1], {"status": "Accepted"}]))
    assert await link.recv_raw_reply("raw-1") == [3, "raw-1", {"status": "Accepted"}]

    await link.send_raw("{{{ garbage")
    assert await station.next_other() == ["{{{ garbage"]
    await station.ws.send(json.dumps([4, "-1", "FormationViolation", "not JSON", {}]))
    assert (await link.recv_raw_reply("-1"))[2] == "FormationViolation"
    assert json.loads(link.raw_in[-1])[:2] == [4, "-1"]
    assert csms.violations == []

    with pytest.raises(TimeoutError, match="no reply to message id 'nothing'"):
        await link.recv_raw_reply("nothing", timeout=0.05)


# -- test support ------------------------------------------------------------------------------


async def test_wait_for_counts_logged_messages_and_explains_timeouts(csms, station):
    await boot(station)
    for status in ("Available", "Preparing", "Charging"):
        payload = {"connectorId": 1, "errorCode": "NoError", "status": status}
        await station.call("StatusNotification", payload)
    second = await csms.wait_for("StatusNotification", station_id="CP1", count=2)
    assert second["status"] == "Preparing"
    charging = await csms.wait_for(
        "StatusNotification", predicate=lambda p: p["status"] == "Charging"
    )
    assert charging["connectorId"] == 1

    with pytest.raises(TimeoutError) as timeout:
        await csms.wait_for("StartTransaction", station_id="CP1", timeout=0.05)
    text = str(timeout.value)
    assert "1 x StartTransaction from CP1" in text and "got 0" in text
    assert "BootNotification" in text and "Charging" in text


async def test_wait_for_sees_a_message_arriving_later(csms, station):
    await boot(station)
    waiter = asyncio.create_task(csms.wait_for("Heartbeat"))
    await station.call("Heartbeat", {})
    assert await waiter == {}


async def test_on_message_gets_the_timeline():
    seen = []
    async with TestCsms(on_message=lambda *args: seen.append(args[:4])) as server:
        client = await RawStation.connect(server.url)
        await boot(client)
        await client.close()
    assert seen == [
        ("CP1", "cs->csms", "CALL", "BootNotification"),
        ("CP1", "csms->cs", "CALLRESULT", "BootNotification"),
    ]


async def test_overrides_answer_error_or_nothing(csms, station):
    await boot(station)

    def refuse(link, payload):
        raise CsmsCallError("GenericError", "not today")

    csms.overrides["DataTransfer"] = refuse
    answer = await station.call("DataTransfer", {"vendorId": "acme", "data": "x"})
    assert answer[2:4] == ["GenericError", "not today"]

    csms.overrides["DataTransfer"] = lambda link, payload: NO_REPLY
    silent = await station.send_call("DataTransfer", {"vendorId": "acme"})
    await csms.wait_for("DataTransfer", count=2)
    assert (await station.call("Heartbeat", {}))[0] == 3
    assert not station._answers[silent].done()

    del csms.overrides["DataTransfer"]
    echoed = await station.call("DataTransfer", {"vendorId": "acme", "data": "ping"})
    assert echoed[2] == {"status": "Accepted", "data": "ping"}
    assert csms.violations == [] and csms.internal_errors == []


async def test_kick_and_drop_connection(csms, station):
    await boot(station)
    await csms.kick("CP1")
    assert "CP1" not in csms.stations
    with pytest.raises(ConnectionClosed) as closed:
        await station.ws.recv()
    assert closed.value.rcvd.code == 1001

    again = await RawStation.connect(csms.url)
    await csms.wait_station("CP1")
    await csms.drop_connection("CP1")
    with pytest.raises(ConnectionClosedError):
        await asyncio.wait_for(again.ws.recv(), 5)
    await csms.wait_disconnect("CP1")


async def test_pause_and_resume_on_the_same_port(csms, station):
    await boot(station)
    url = csms.url
    await csms.pause()
    await asyncio.wait_for(station._reader, 5)  # the server closed the connection
    assert csms.stations == {}
    with pytest.raises(OSError):
        await connect(url + "CP1", subprotocols=["ocpp1.6"], open_timeout=2)

    assert await csms.resume() == url
    back = await RawStation.connect(url)
    assert (await csms.wait_station("CP1")).station_id == "CP1"
    assert (await back.call("Heartbeat", {}))[0] == 3
    await back.close()
    assert csms.violations == []


async def test_unknown_versions_are_refused_at_construction():
    with pytest.raises(ValueError, match="unsupported OCPP versions"):
        TestCsms(versions=("1.5",))
