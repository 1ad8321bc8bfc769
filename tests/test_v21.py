"""OCPP 2.1 as the third version: negotiation, the answer to every CSMS request, the 2.1
changes of the carried-over blocks, the 2.1 framing (CALLRESULTERROR, SEND) through the agent.

Every test runs against the strict test CSMS speaking 2.1, which validates each frame of the
agent against the 2.1 JSON schemas (the `ocpp` package's, which are authoritative) and fails
the test on any violation.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from agent.app import Agent
from agent.ocpp import registry
from agent.ocpp.v21 import SPEC
from agent.ocpp.v21.unsupported import UNSUPPORTED_ANSWERS_21
from agent.ocpp.v201 import SPEC as SPEC_201
from agent.testing.csms import CSMS_TO_CS, CsmsCallError, TestCsms
from agent.testing.csms.link import _LINK_CLASSES
from tests.conftest import (
    agent_config,
    eventually,
    online,
    online201,
    strict_csms,
    tx_events,
    version_rig,
)
from tests.schema_samples import actions, sample


def _station_initiated(version: str) -> set[str]:
    """What the test CSMS answers: the station-to-CSMS actions (DataTransfer goes both ways)."""
    cls = _LINK_CLASSES[version]
    found = {getattr(getattr(cls, name), "_on_action", None) for name in dir(cls)}
    return {a for a in found if a} - {"DataTransfer"}


CSMS_INITIATED_21 = sorted(set(actions("2.1")) - _station_initiated("2.1"))


async def _agent(server: TestCsms, state, versions, **kw) -> Agent:
    agent = Agent(agent_config(server.url, state, versions=versions, **kw))
    await agent.start()
    return agent


async def online21(agent: Agent, csms: TestCsms, timeout: float = 5.0):
    await asyncio.wait_for(agent.adapters["2.1"].accepted.wait(), timeout)
    link = await csms.wait_station(agent.cfg.station.id, timeout)
    for evse_id in agent.station.evses:
        await csms.wait_for("StatusNotification", station_id=agent.cfg.station.id,
                            predicate=lambda p, e=evse_id: p["evseId"] == e, timeout=timeout)
    await asyncio.wait_for(agent.adapters["2.1"].outbox.idle.wait(), timeout)
    return link


# ---------------------------------------------------------------------- the version


def test_2_1_is_registered_and_carries_the_2_0_1_blocks_over():
    assert "2.1" in registry.versions() and registry.spec("2.1") is SPEC
    assert SPEC.subprotocol == "ocpp2.1"
    # Not a copy: every 2.0.1 block is in 2.1, as itself or as a 2.1 subclass, in order.
    carried = SPEC.blocks[:len(SPEC_201.blocks)]
    assert all(issubclass(new, old) for new, old in zip(carried, SPEC_201.blocks, strict=True))


# ---------------------------------------------------------------------- negotiation


async def test_csms_offering_only_2_1_gets_the_2_1_adapter(short_dir):
    async with strict_csms(("2.1",)) as server:
        agent = await _agent(server, short_dir, ["1.6", "2.0.1", "2.1"])
        try:
            await online21(agent, server)
            assert agent.link.version == "2.1" and agent.adapter is agent.adapters["2.1"]
            assert agent.station.observer is agent.adapters["2.1"]
            assert server.stations["CP1"].subprotocol == "ocpp2.1"
            assert agent.status()["ocpp_version"] == "2.1"
            assert agent.storage.get_setting("link.version") == "2.1"
        finally:
            await agent.stop()


async def test_csms_preferring_2_0_1_gets_2_0_1_although_2_1_is_offered_first(short_dir):
    async with strict_csms(("2.0.1", "2.1")) as server:
        agent = await _agent(server, short_dir, ["2.1", "2.0.1"])
        try:
            await online201(agent, server)
            assert agent.link.version == "2.0.1"
            assert server.stations["CP1"].subprotocol == "ocpp2.0.1"
        finally:
            await agent.stop()


async def test_offered_in_the_configured_order(short_dir):
    seen: list[list[str]] = []
    server = TestCsms(versions=("1.6",))
    original = server._select_subprotocol

    def spy(connection, offered):
        seen.append(list(offered))
        return original(connection, offered)

    server._select_subprotocol = spy  # type: ignore[method-assign]
    await server.start()
    agent = await _agent(server, short_dir, ["2.1", "1.6", "2.0.1"])
    try:
        await online(agent, server)
        assert seen[0] == ["ocpp2.1", "ocpp1.6", "ocpp2.0.1"]
    finally:
        await agent.stop()
        await server.stop()
    assert server.violations == []


async def test_csms_agreeing_none_names_what_was_offered_and_answered(short_dir):
    server = TestCsms(versions=("1.6",))
    await server.start()
    agent = await _agent(server, short_dir, ["2.1", "2.0.1"])
    try:
        await asyncio.wait_for(agent.link.failed.wait(), 5)
        error = agent.link.last_error or ""
        assert "agreed none of the offered OCPP versions (ocpp2.1, ocpp2.0.1)" in error
        assert "it answered None" in error and "ocpp.versions" in error
        assert server.messages("CP1") == [], "no silent fallback: nothing was sent"
    finally:
        await agent.stop()
        await server.stop()


async def test_one_install_serves_2_1_then_2_0_1_then_1_6_with_one_state_file(short_dir):
    """Settings carry over as the views say: the 2.0.1 and 2.1 device models are one store
    (a 2.x-only variable too), and a mapped variable is the 1.6 key."""
    versions = ["2.1", "2.0.1", "1.6"]
    port = 0
    async with strict_csms(("2.1",)) as server:
        port = server.port
        agent = await _agent(server, short_dir, versions)
        try:
            link = await online21(agent, server)
            res = await link.call("SetVariables", {"setVariableData": [
                {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"},
                 "attributeValue": "123"},
                {"component": {"name": "TxCtrlr"}, "variable": {"name": "TxStopPoint"},
                 "attributeValue": "EVConnected"}]})
            assert [r["attributeStatus"] for r in res["setVariableResult"]] == ["Accepted"] * 2
        finally:
            await agent.stop()
    server201 = TestCsms(versions=("2.0.1",), port=port, heartbeat_interval=0)
    await server201.start()
    agent = await _agent(server201, short_dir, versions)
    try:
        link = await online201(agent, server201)
        res = await link.call("GetVariables", {"getVariableData": [
            {"component": {"name": "OCPPCommCtrlr"}, "variable": {"name": "HeartbeatInterval"}},
            {"component": {"name": "TxCtrlr"}, "variable": {"name": "TxStopPoint"}}]})
        assert [r.get("attributeValue") for r in res["getVariableResult"]] == \
            ["123", "EVConnected"]
    finally:
        await agent.stop()
        await server201.stop()
    assert server201.violations == []
    server16 = TestCsms(versions=("1.6",), port=port, heartbeat_interval=0)
    await server16.start()
    agent = await _agent(server16, short_dir, versions)
    try:
        link = await online(agent, server16)
        res = await link.call("GetConfiguration", {"key": ["HeartbeatInterval"]})
        assert res["configurationKey"][0]["value"] == "123"
        assert agent.link.version == "1.6"
    finally:
        await agent.stop()
        await server16.stop()
    assert server16.violations == []


# ---------------------------------------------------------------------- every CSMS request

# Samples whose smallest form would have an effect the test does not want.
_SAMPLE_OVERRIDES = {
    # With a transaction running, 2.1's new reset type is refused (no resumption yet).
    "Reset": {"type": "ImmediateAndResume"},
}


async def test_every_2_1_csms_request_gets_a_schema_valid_answer(short_dir):
    """All 2.1 CSMS-initiated actions (from the schemas), in their smallest valid form, each
    answered with a CALLRESULT the CSMS validates against the 2.1 schema, or with CALLERROR
    NotSupported exactly where unsupported.py says so; never silence, never InternalError."""
    assert "SetDERControl" in CSMS_INITIATED_21 and "BootNotification" not in CSMS_INITIATED_21
    assert set(UNSUPPORTED_ANSWERS_21) <= set(CSMS_INITIATED_21)
    async with version_rig("2.1", short_dir) as (csms, make):
        agent = await make()
        link = await online21(agent, csms)
        agent.hal.plug(1)
        agent.hal.tap("TAG21")
        await csms.wait_for("TransactionEvent",
                            predicate=lambda p: p["transactionInfo"].get("chargingState")
                            == "Charging")
        answers: dict[str, object] = {}
        for action in CSMS_INITIATED_21:
            payload = _SAMPLE_OVERRIDES.get(action) or sample("2.1", action)
            try:
                answers[action] = await link.call(action, payload, timeout=5)
            except CsmsCallError as exc:
                answers[action] = exc.code
        await asyncio.wait_for(agent.adapters["2.1"].outbox.idle.wait(), 5)
    errors = {a: code for a, code in answers.items() if isinstance(code, str)}
    expected = {a: "NotSupported" for a, v in UNSUPPORTED_ANSWERS_21.items()
                if not isinstance(v, dict)}
    assert errors == expected
    for action, answer in UNSUPPORTED_ANSWERS_21.items():
        if isinstance(answer, dict):
            assert answers[action] == answer
    assert answers["Reset"]["status"] == "Rejected"
    assert answers["Reset"]["statusInfo"]["reasonCode"] == "UnsupportedParam"
    # A period without a limit (2.1 made it optional) is not half applied.
    assert answers["SetChargingProfile"]["status"] == "Rejected"


async def test_unknown_action_is_not_implemented_on_2_1(short_dir):
    async with version_rig("2.1", short_dir) as (csms, make):
        agent = await make()
        link = await online21(agent, csms)
        await link.send_raw(json.dumps([2, "u1", "NoSuchAction", {}]))
        reply = await link.recv_raw_reply("u1")
        assert reply[:3] == [4, "u1", "NotImplemented"]


# ---------------------------------------------------------------------- 2.1 changes


async def test_2_1_id_token_types_and_long_tokens_are_echoed_in_transaction_events(short_dir):
    """2.1 made idToken.type a string (DirectPayment, VIN, ...) and idToken 255 long."""
    token = "P" * 100
    async with version_rig("2.1", short_dir) as (csms, make):
        agent = await make()
        link = await online21(agent, csms)
        agent.hal.plug(1)
        res = await link.call("RequestStartTransaction", {
            "remoteStartId": 7, "evseId": 1,
            "idToken": {"idToken": token, "type": "DirectPayment"}})
        assert res["status"] == "Accepted"
        await csms.wait_for("TransactionEvent",
                            predicate=lambda p: p["transactionInfo"].get("chargingState")
                            == "Charging")
        with_token = [e for e in tx_events(csms) if "idToken" in e]
        assert with_token and all(e["idToken"] == {"idToken": token, "type": "DirectPayment"}
                                  for e in with_token)


@pytest.mark.parametrize("requested", ["CustomTrigger", "SignV2G20Certificate"])
async def test_2_1_triggers_this_station_does_not_send_are_not_implemented(short_dir,
                                                                          requested):
    async with version_rig("2.1", short_dir) as (csms, make):
        agent = await make()
        link = await online21(agent, csms)
        payload = {"requestedMessage": requested}
        if requested == "CustomTrigger":
            payload["customTrigger"] = "Vendor.Thing"
        assert await link.call("TriggerMessage", payload) == {"status": "NotImplemented"}


async def test_reset_immediate_and_resume_without_transactions_is_an_immediate_reset(
        short_dir):
    async with version_rig("2.1", short_dir) as (csms, make):
        agent = await make()
        link = await online21(agent, csms)
        res = await link.call("Reset", {"type": "ImmediateAndResume"})
        assert res == {"status": "Accepted"}
        await eventually(lambda: agent.reset_kind == "Immediate", "the agent resets")


async def test_2_1_charging_profile_features_are_refused_by_name(short_dir):
    profile = {"id": 5, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
               "chargingProfileKind": "Dynamic", "dynUpdateInterval": 60,
               "chargingSchedule": [{"id": 1, "chargingRateUnit": "A",
                                     "chargingSchedulePeriod": [
                                         {"startPeriod": 0, "limit": 16.0,
                                          "operationMode": "CentralSetpoint"}]}]}
    plain = {**profile, "chargingProfileKind": "Absolute", "id": 6,
             "chargingSchedule": [{"id": 2, "chargingRateUnit": "A",
                                   "startSchedule": "2024-01-01T00:00:00Z",
                                   "chargingSchedulePeriod": [
                                       {"startPeriod": 0, "limit": 16.0}]}]}
    del plain["dynUpdateInterval"]
    async with version_rig("2.1", short_dir) as (csms, make):
        agent = await make()
        link = await online21(agent, csms)
        res = await link.call("SetChargingProfile", {"evseId": 0, "chargingProfile": profile})
        assert res["status"] == "Rejected"
        info = res["statusInfo"]
        assert info["reasonCode"] == "UnsupportedParam"
        # Dynamic profiles are built (tests/test_v21_smart_charging.py); V2X is not yet.
        assert "CentralSetpoint" in info["additionalInfo"]
        assert "Dynamic" not in info["additionalInfo"]
        res = await link.call("SetChargingProfile", {"evseId": 0, "chargingProfile": plain})
        assert res["status"] == "Accepted", res


async def test_get_log_data_collector_log_is_refused(short_dir):
    async with version_rig("2.1", short_dir) as (csms, make):
        agent = await make()
        link = await online21(agent, csms)
        res = await link.call("GetLog", {"logType": "DataCollectorLog", "requestId": 3,
                                         "log": {"remoteLocation": "http://127.0.0.1:9/x"}})
        assert res["status"] == "Rejected"
        assert res["statusInfo"]["reasonCode"] == "UnsupportedParam"


@pytest.mark.parametrize("connection, status", [
    ({}, "Accepted"),  # ocppVersion left out: 2.1 made it optional
    ({"ocppVersion": "OCPP21"}, "Accepted"),
    ({"ocppVersion": "OCPP16"}, "Accepted"),  # ignored: the handshake decides
    ({"basicAuthPassword": "0123456789abcdefXYZ"}, "Rejected"),  # one password per station
])
async def test_set_network_profile_in_2_1_terms(short_dir, connection, status):
    async with version_rig("2.1", short_dir) as (csms, make):
        agent = await make()
        link = await online21(agent, csms)
        data = {"ocppCsmsUrl": csms.url, "messageTimeout": 30, "ocppInterface": "Any",
                "ocppTransport": "JSON", "securityProfile": 0, **connection}
        res = await link.call("SetNetworkProfile", {"configurationSlot": 2,
                                                    "connectionData": data})
        assert res["status"] == status, res
        if status == "Accepted":
            spec = agent.network.slot("2")
            assert spec is not None and spec.versions == ("2.1",)  # what the station offers


async def test_full_inventory_reports_the_2_1_variables(short_dir):
    async with version_rig("2.1", short_dir) as (csms, make):
        agent = await make()
        link = await online21(agent, csms)
        res = await link.call("GetBaseReport", {"requestId": 9, "reportBase": "FullInventory"})
        assert res["status"] == "Accepted"
        await csms.wait_for("NotifyReport", predicate=lambda p: not p.get("tbc"))
        reported = {(d["component"]["name"], d["variable"]["name"])
                    for part in csms.messages("CP1", "NotifyReport") for d in part["reportData"]}
        assert {("SmartChargingCtrlr", "SupportsDynamicProfiles"),
                ("LocalAuthListCtrlr", "SupportsExpiryDateTime"),
                ("CustomizationCtrlr", "CustomTriggers"),
                ("TxCtrlr", "TxStartPoint"), ("SecurityCtrlr", "Identity")} <= reported


# ---------------------------------------------------------------------- framing via the agent


async def test_an_invalid_callresult_is_answered_with_callresulterror(short_dir):
    async with version_rig("2.1", short_dir) as (csms, make):
        agent = await make()
        link = await online21(agent, csms)
        csms.overrides["Heartbeat"] = lambda link, p: {"currentTime": 12}
        res = await link.call("TriggerMessage", {"requestedMessage": "Heartbeat"})
        assert res["status"] == "Accepted"
        heartbeat = await csms.wait_for("Heartbeat")
        assert heartbeat == {}
        await eventually(lambda: bool([m for m in csms.log if m.kind == "CALLRESULTERROR"]),
                         "the agent answers CALLRESULTERROR")
        back = [m for m in csms.log if m.kind == "CALLRESULTERROR"]
        assert back[0].payload["errorCode"] == "TypeConstraintViolation"
        sent = [m for m in csms.log if m.direction == CSMS_TO_CS and m.action == "Heartbeat"
                and m.kind == "CALLRESULT"]
        assert back[0].unique_id == sent[-1].unique_id


STREAM = {"id": 1, "pending": 0, "basetime": "2024-05-01T12:00:00Z",
          "data": [{"t": 0.0, "v": "230.1"}]}


async def test_a_block_sends_unconfirmed_online_and_drops_it_offline(short_dir):
    async with version_rig("2.1", short_dir) as (csms, make):
        agent = await make()
        await online21(agent, csms)
        adapter = agent.adapters["2.1"]
        # The strict CSMS takes stream data only for a stream it accepted.
        opened = {"id": 1, "variableMonitoringId": 1, "params": {}}
        res = await adapter.call("OpenPeriodicEventStream", {"constantStreamData": opened})
        assert res["status"] == "Accepted"
        assert await adapter.send_unconfirmed("NotifyPeriodicEventStream", STREAM) is True
        got = await csms.wait_for("NotifyPeriodicEventStream")
        assert got == STREAM
        assert [m.kind for m in csms.log if m.action == "NotifyPeriodicEventStream"] == ["SEND"]
        await csms.pause()
        await eventually(lambda: adapter.rpc is None, "the agent notices the outage")
        assert await adapter.send_unconfirmed("NotifyPeriodicEventStream", STREAM) is False
        assert "NotifyPeriodicEventStream" not in {i.action for i in
                                                   agent.storage.outbox_peek(100)}
        await csms.resume()


async def test_a_transaction_reported_on_2_0_1_ends_on_2_1_without_a_second_start(short_dir):
    """2.1 continues 2.0.1's TransactionEvents: same transactionId, seqNo carrying on."""
    server201 = TestCsms(versions=("2.0.1",))
    await server201.start()
    server21 = TestCsms(versions=("2.1",), port=server201.port)
    agent = await _agent(server201, short_dir, ["2.1", "2.0.1"])
    try:
        await online201(agent, server201)
        agent.hal.plug(1)
        agent.hal.tap("TAG201")
        started = await server201.wait_for("TransactionEvent",
                                           predicate=lambda p: p["eventType"] == "Started")
        await asyncio.wait_for(agent.adapters["2.0.1"].outbox.idle.wait(), 5)
        await server201.stop()
        await server21.start()
        await online21(agent, server21, timeout=10)
        agent.hal.unplug(1)
        ended = await server21.wait_for("TransactionEvent",
                                        predicate=lambda p: p["eventType"] == "Ended")
        tx_id = started["transactionInfo"]["transactionId"]
        assert ended["transactionInfo"]["transactionId"] == tx_id
        assert [e["eventType"] for e in tx_events(server21)].count("Started") == 0
        seq = [e["seqNo"] for e in tx_events(server201) + tx_events(server21)]
        assert seq == list(range(len(seq)))
    finally:
        await agent.stop()
        await server21.stop()
        await server201.stop()
    assert server201.violations == [] and server21.violations == []
