"""Bad input from the CSMS: random, truncated, oversized and schema-violating frames.

Property tests (hypothesis) feed frames straight into the agent's RPC session with the real 1.6
adapter, core and mock HAL behind it (no network, so hundreds of examples run in seconds), and
check after every frame:

* nothing escapes: the session and the adapter keep running;
* every CALL with a usable message id gets exactly one answer, CALLRESULT or CALLERROR, and a
  CALL that matches its schema and has a handler gets a CALLRESULT (a handler bug would
  surface as InternalError);
* the contactor never closes without a valid authorization: only for a token that a
  RemoteStartTransaction made legitimate under the configuration of that moment (remote
  starts trusted, or the local list / AllowOfflineTxForUnknownId allowing it offline).

An end-to-end test then throws a seeded stream of broken frames at the agent over a real
websocket, including one larger than the agent accepts.
"""

from __future__ import annotations

import asyncio
import json
import random
import string
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.clock import FakeClock
from agent.core.model import Token
from agent.core.settings import CORE_SETTINGS, Settings
from agent.core.station import Station
from agent.link.rpc import RpcSession, _violation
from agent.ocpp import registry
from agent.ocpp.adapter import Adapter, StationContext
from agent.storage import Storage
from hal.mock import MockHal
from tests.conftest import charging, online

TAGS = ("A", "B", "C", "LONG" * 6)
STATUSES = ("Accepted", "Blocked", "Expired", "Invalid", "ConcurrentTx")
CSMS_ACTIONS = ("CancelReservation", "ChangeAvailability", "ChangeConfiguration", "ClearCache",
                "ClearChargingProfile", "DataTransfer", "GetCompositeSchedule",
                "GetConfiguration", "GetDiagnostics", "GetLocalListVersion",
                "RemoteStartTransaction", "RemoteStopTransaction", "ReserveNow", "Reset",
                "SendLocalList", "SetChargingProfile", "TriggerMessage", "UnlockConnector",
                "UpdateFirmware", "StartTransaction", "Heartbeat")
KEYS = tuple(d.name for d in CORE_SETTINGS if d.v16) + (
    "NumberOfConnectors", "SupportedFeatureProfiles", "connectiontimeout", "Bogus", "")
AUTH_KEYS = ("AuthorizeRemoteTxRequests", "AllowOfflineTxForUnknownId", "LocalAuthorizeOffline",
             "LocalPreAuthorize", "LocalAuthListEnabled", "AuthorizationCacheEnabled")

# ---------------------------------------------------------------- strategies

json_scalars = (st.none() | st.booleans() | st.integers(-2**40, 2**40)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=30))
json_values = st.recursive(json_scalars, lambda children: st.lists(children, max_size=4)
                           | st.dictionaries(st.text(max_size=12), children, max_size=4),
                           max_leaves=12)
small_ints = st.integers(-2, 4)
dates = st.sampled_from([
    (datetime.now(UTC) + timedelta(days=d)).strftime("%Y-%m-%dT%H:%M:%SZ")
    for d in (-30, -1, 1, 30)] + ["1970-01-01T00:00:00Z", "garbage"])


def _id_tag_info() -> st.SearchStrategy[dict]:
    return st.fixed_dictionaries({"status": st.sampled_from(STATUSES)},
                                 optional={"expiryDate": dates,
                                           "parentIdTag": st.sampled_from(("G1", "G2"))})


SHAPED: dict[str, st.SearchStrategy[dict]] = {
    "RemoteStartTransaction": st.fixed_dictionaries(
        {"idTag": st.sampled_from(TAGS) | st.text(max_size=25)},
        optional={"connectorId": small_ints}),
    "RemoteStopTransaction": st.fixed_dictionaries({"transactionId": small_ints}),
    "SendLocalList": st.fixed_dictionaries({
        "listVersion": st.integers(-1, 6),
        "updateType": st.sampled_from(("Full", "Differential")),
    }, optional={"localAuthorizationList": st.lists(st.fixed_dictionaries(
        {"idTag": st.sampled_from(TAGS)}, optional={"idTagInfo": _id_tag_info()}),
        max_size=5)}),
    "ChangeConfiguration": st.fixed_dictionaries({
        "key": st.sampled_from(KEYS),
        "value": st.sampled_from(("true", "false", "0", "1", "60", "-5", "x" * 501, "",
                                  "Energy.Active.Import.Register,Voltage"))
        | st.text(max_size=20)}),
    "GetConfiguration": st.fixed_dictionaries({}, optional={
        "key": st.lists(st.sampled_from(KEYS) | st.text(max_size=60), max_size=4)}),
    "ChangeAvailability": st.fixed_dictionaries({
        "connectorId": small_ints, "type": st.sampled_from(("Operative", "Inoperative"))}),
    "UnlockConnector": st.fixed_dictionaries({"connectorId": small_ints}),
    "TriggerMessage": st.fixed_dictionaries({
        "requestedMessage": st.sampled_from(("BootNotification", "Heartbeat", "MeterValues",
                                             "StatusNotification",
                                             "DiagnosticsStatusNotification",
                                             "FirmwareStatusNotification"))},
        optional={"connectorId": small_ints}),
    "Reset": st.fixed_dictionaries({"type": st.sampled_from(("Hard", "Soft", "Sideways"))}),
    "DataTransfer": st.fixed_dictionaries({"vendorId": st.text(max_size=10)},
                                          optional={"messageId": st.text(max_size=10),
                                                    "data": st.text(max_size=10)}),
    "ClearCache": st.just({}),
    "GetLocalListVersion": st.just({}),
}


@st.composite
def frames(draw: st.DrawFn, n: int) -> str:
    """One frame from the CSMS, well formed or not; CALLs get the message id ``m<n>``."""
    kind = draw(st.sampled_from(("shaped", "shaped", "shaped", "random_call", "garbage",
                                 "truncated", "json", "answer", "oversized", "bad_type")))
    uid = f"m{n}"
    if kind == "shaped":
        action = draw(st.sampled_from(sorted(SHAPED)))
        return json.dumps([2, uid, action, draw(SHAPED[action])])
    if kind == "random_call":
        action = draw(st.sampled_from(CSMS_ACTIONS) | st.text(max_size=20))
        payload = draw(json_values | st.dictionaries(st.text(max_size=12), json_values))
        return json.dumps([2, uid, action, payload])
    if kind == "garbage":
        return draw(st.text(max_size=80))
    if kind == "truncated":
        action = draw(st.sampled_from(sorted(SHAPED)))
        text = json.dumps([2, uid, action, draw(SHAPED[action])])
        return text[:draw(st.integers(0, max(0, len(text) - 1)))]
    if kind == "json":
        return json.dumps(draw(json_values))
    if kind == "answer":  # a result or error for a CALL we never made
        return json.dumps(draw(st.sampled_from((
            [3, uid, {"transactionId": 1}], [4, uid, "GenericError", "", {}],
            [3, uid], [4, uid, 7])) ))
    if kind == "oversized":
        return json.dumps([2, uid, "DataTransfer",
                           {"vendorId": "x", "data": "y" * draw(st.integers(10_000, 200_000))}])
    return json.dumps([draw(st.integers(-3, 9)), uid, "Reset", {"type": "Soft"}])


# ---------------------------------------------------------------- harness


class Harness:
    """The 1.6 adapter, core and mock HAL of one station, fed frame by frame, offline."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.storage = Storage(":memory:")
        self.hal = MockHal(2, ev_max_current_a=16, monotonic=self.clock.monotonic)
        self.keys = Settings(self.storage, overrides={"AuthorizeRemoteTxRequests": True,
                                                      "AllowOfflineTxForUnknownId": False})
        self.station = Station(self.hal, self.storage, self.clock, settings=self.keys)
        ctx = StationContext(station=self.station, storage=self.storage, clock=self.clock,
                             settings=self.keys, station_id="FUZZ", vendor="cp-agent",
                             model="fuzz", serial_number=None, firmware_version="0")
        self.adapter = Adapter(registry.spec("1.6"), ctx)
        self.adapter.activate()
        # As if the boot had been accepted and the link then went quiet: CSMS requests are
        # handled, nothing the agent asks gets an answer (the offline rules apply).
        self.adapter.registration = "Accepted"
        self.sent: list[str] = []
        self.rpc = RpcSession("1.6", self._send, self.adapter.handlers, default_timeout=1)
        self.legit: set[str] = set()

    async def _send(self, text: str) -> None:
        self.sent.append(text)

    async def start(self) -> None:
        await self.station.start()
        await self.adapter.start()
        self.hal.plug(1)
        await self.station.settled()

    async def stop(self) -> None:
        self.rpc.close()
        await self.adapter.stop()
        await self.station.stop()
        self.storage.close()

    def _note_remote_start(self, payload: Any) -> None:
        """Who may charge after this RemoteStartTransaction, under today's configuration."""
        if not isinstance(payload, dict) or not isinstance(payload.get("idTag"), str):
            return
        tag = payload["idTag"]
        if not self.keys["AuthorizeRemoteTxRequests"]:
            self.legit.add(tag)
            return
        # Offline (1.6 3.5): known-not-valid never; known-valid with LocalPreAuthorize or
        # LocalAuthorizeOffline; anything else only with AllowOfflineTxForUnknownId.
        known = self.station.authorization.lookup(Token(tag))
        if known is not None and not known.accepted:
            return
        if known is not None and (self.keys["LocalAuthorizeOffline"]
                                  or self.keys["LocalPreAuthorize"]):
            self.legit.add(tag)
        elif self.keys["AllowOfflineTxForUnknownId"]:
            self.legit.add(tag)

    async def feed(self, text: str) -> None:
        try:
            frame = json.loads(text)
        except ValueError:
            frame = None
        if isinstance(frame, list) and len(frame) == 4 and frame[0] == 2 \
                and frame[2] == "RemoteStartTransaction":
            self._note_remote_start(frame[3])
        await self.rpc.feed(text)
        await self.rpc.drain(timeout=5)
        for _ in range(20):  # let tasks spawned by the handler (remote start) run
            await asyncio.sleep(0)
        await self.station.settled()
        self.check_safety()

    def check_safety(self) -> None:
        for evse in self.station.evses.values():
            if not evse.hw.contactor.commanded_closed:
                continue
            s = evse.session
            assert s is not None and s.authorized and s.token is not None
            assert s.token.id in self.legit, f"contactor closed for {s.token.id!r}"
            assert evse.operative and evse.blocking_fault is None and evse.pilot.wants_energy

    def replies(self) -> dict[str, list[list]]:
        out: dict[str, list[list]] = {}
        for text in self.sent:
            frame = json.loads(text)  # everything the agent sends is JSON
            assert isinstance(frame, list) and frame[0] in (2, 3, 4)
            if frame[0] in (3, 4):
                out.setdefault(frame[1], []).append(frame)
        return out


def _expects_answer(text: str) -> tuple[str, str, dict] | None:
    """(id, action, payload) of a frame the spec requires an answer to (with that id)."""
    try:
        frame = json.loads(text)
    except ValueError:
        return None
    if not (isinstance(frame, list) and len(frame) == 4 and frame[0] == 2
            and isinstance(frame[1], str) and len(frame[1]) <= 36
            and isinstance(frame[2], str)):
        return None
    payload = frame[3] if frame[3] is not None else {}
    return frame[1], frame[2], payload


async def _run(stream: list[str]) -> None:
    h = Harness()
    await h.start()
    try:
        for text in stream:
            await h.feed(text)
        replies = h.replies()
        for text in stream:
            expected = _expects_answer(text)
            if expected is None:
                continue
            uid, action, payload = expected
            answers = replies.get(uid, [])
            assert len(answers) == 1, f"{action} {uid}: {len(answers)} answers"
            if action in h.adapter.handlers and isinstance(payload, dict):
                try:
                    valid = _violation("1.6", 2, action, payload) is None
                except LookupError:
                    valid = False
                if valid:
                    assert answers[0][0] == 3, f"{action} {payload} answered {answers[0]}"
    finally:
        await h.stop()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(1, 25).flatmap(lambda k: st.tuples(*[frames(i) for i in range(k)])))
def test_random_frames_are_answered_and_never_close_the_contactor_unauthorized(stream):
    asyncio.run(_run(list(stream)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(sorted(SHAPED)), min_size=1, max_size=15)
       .flatmap(lambda actions: st.tuples(*[
           SHAPED[a].map(lambda p, a=a, i=i: json.dumps([2, f"s{i}", a, p]))
           for i, a in enumerate(actions)])))
def test_schema_shaped_sequences_keep_every_promise(stream):
    """Denser in valid CALLs: list updates, key changes and remote starts interleave."""
    asyncio.run(_run(list(stream)))


def test_the_oracle_is_not_vacuous():
    """The safety check must be able to fail: a remote start under trusted remote starts
    charges, and the same start with the token unknown offline does not."""

    async def scenario() -> None:
        h = Harness()
        await h.start()
        try:
            await h.feed(json.dumps([2, "1", "ChangeConfiguration",
                                     {"key": "AuthorizeRemoteTxRequests", "value": "false"}]))
            await h.feed(json.dumps([2, "2", "RemoteStartTransaction",
                                     {"idTag": "A", "connectorId": 1}]))
            assert h.hal.evses[1].contactor.commanded_closed and h.legit == {"A"}
            h.legit.clear()
            try:
                h.check_safety()
            except AssertionError:
                pass
            else:
                raise AssertionError("the safety check accepted an unlisted token")
        finally:
            await h.stop()

    asyncio.run(scenario())


# ---------------------------------------------------------------- over a real websocket


async def test_seeded_garbage_over_the_websocket_leaves_a_working_station(csms, make_agent):
    agent = await make_agent()
    link = await online(agent, csms)
    rng = random.Random(1606)
    sent_calls: list[str] = []
    for i in range(150):
        choice = rng.randrange(6)
        if choice == 0:
            text = "".join(rng.choice(string.printable) for _ in range(rng.randrange(60)))
        elif choice == 1:  # a valid frame cut short
            text = json.dumps([2, f"g{i}", "ChangeAvailability",
                               {"connectorId": 1, "type": "Operative"}])
            text = text[:rng.randrange(len(text))]
        elif choice == 2:  # schema-violating payloads of real actions
            action = rng.choice(["Reset", "RemoteStartTransaction", "SendLocalList",
                                 "ChangeConfiguration", "TriggerMessage", "UnlockConnector"])
            payload = {rng.choice(["type", "idTag", "key", "connectorId", "x"]):
                       rng.choice([None, -1, "y" * 600, [], {}, 1.5, True])}
            text = json.dumps([2, f"g{i}", action, payload])
            sent_calls.append(f"g{i}")
        elif choice == 3:  # answers to calls never made, wrong ids
            text = json.dumps([rng.choice([3, 4]), f"nobody-{i}", {"status": "Accepted"}])
        elif choice == 4:
            text = json.dumps([rng.choice([0, 1, 5, 6, 99, -2]), f"g{i}", "Reset", {}])
        else:
            text = json.dumps([2, f"g{i}", "GetConfiguration", {"key": ["HeartbeatInterval"]}])
            sent_calls.append(f"g{i}")
        await link.send_raw(text)
    for uid in sent_calls:  # every well-formed CALL was answered, in spite of the noise
        await link.recv_raw_reply(uid)
    assert agent.link.connects == 1 and agent.link.state == "connected"
    # Larger than the agent accepts (1 MiB): the link drops it and reconnects cleanly.
    await link.send_raw(json.dumps([2, "big", "DataTransfer",
                                    {"vendorId": "x", "data": "z" * (2 << 20)}]))
    # A mere reconnect: statuses go afresh, no new BootNotification (OCPP-J 1.6 5.4).
    await csms.wait_for("StatusNotification", station_id="CP1", count=2, timeout=10,
                        predicate=lambda p: p["connectorId"] == 0)
    assert agent.link.connects == 2
    await online(agent, csms)
    await charging(agent, csms, "AFTER")
    assert agent.hal.evses[1].contactor.commanded_closed
    # Nothing the station sent broke the rules (the fixture also asserts this at the end).
    assert csms.violations == []


def test_token_routing_never_authorizes_a_rejected_card():
    """Core-level guard used by the fuzz oracle: a rejected AuthResult never closes."""

    async def scenario() -> None:
        h = Harness()
        await h.start()
        try:
            result = await h.station.present_token(Token("NOBODY"), 1)
            assert result == "rejected"
            assert not h.hal.evses[1].contactor.commanded_closed
        finally:
            await h.stop()

    asyncio.run(scenario())
