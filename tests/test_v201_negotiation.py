"""Version negotiation: one installation speaks 1.6 or 2.0.1, whichever the CSMS agrees.

The subprotocols are offered in the order of ``ocpp.versions``; the agreed one picks the
adapter, and that adapter stays in charge while offline, so an outage is reported in the terms
of the CSMS that will read it.  Messages queued for one version never reach the other.
"""

from __future__ import annotations

import asyncio

import pytest

from agent.app import Agent
from agent.testing.csms import TestCsms
from tests.conftest import VERSIONS_201_PLUS, agent_config, online, online201, tx_events

pytestmark = pytest.mark.asyncio


async def _with_agent(server: TestCsms, short_dir, versions, **kw) -> Agent:
    agent = Agent(agent_config(server.url, short_dir, versions=versions, **kw))
    await agent.start()
    return agent


async def test_csms_agreeing_2_0_1_gets_the_2_0_1_adapter(short_dir):
    server = TestCsms(versions=("2.0.1", "1.6"))
    await server.start()
    agent = await _with_agent(server, short_dir, ["2.0.1", "1.6"])
    try:
        await online201(agent, server)
        boot = server.messages("CP1", "BootNotification")[0]
        assert boot["chargingStation"]["vendorName"] == "cp-agent"
        assert agent.link.version == "2.0.1" and agent.adapter is agent.adapters["2.0.1"]
        assert agent.station.observer is agent.adapters["2.0.1"]
        assert agent.storage.get_setting("link.version") == "2.0.1"
        assert agent.status()["ocpp_version"] == "2.0.1"
        assert agent.status()["registration"] == "Accepted"
    finally:
        await agent.stop()
        await server.stop()
    assert server.violations == []


async def test_csms_speaking_only_1_6_gets_1_6_although_2_0_1_is_preferred(short_dir):
    server = TestCsms(versions=("1.6",))
    await server.start()
    agent = await _with_agent(server, short_dir, ["2.0.1", "1.6"])
    try:
        await online(agent, server)
        boot = server.messages("CP1", "BootNotification")[0]
        assert boot["chargePointVendor"] == "cp-agent"
        assert agent.link.version == "1.6" and agent.station.observer is agent.adapters["1.6"]
        assert server.messages("CP1", "TransactionEvent") == []
    finally:
        await agent.stop()
        await server.stop()
    assert server.violations == []


async def test_csms_agreeing_none_of_the_offered_versions_is_a_clear_error(short_dir):
    server = TestCsms(versions=("2.1",))
    await server.start()
    agent = await _with_agent(server, short_dir, ["2.0.1", "1.6"])
    try:
        await asyncio.wait_for(agent.link.failed.wait(), 5)
        error = agent.link.last_error or ""
        assert "agreed none of the offered OCPP versions" in error
        assert "ocpp2.0.1" in error and "ocpp1.6" in error
        assert server.messages("CP1") == [], "no silent fallback: nothing was sent"
    finally:
        await agent.stop()
        await server.stop()


async def test_offline_the_last_negotiated_version_is_in_charge(short_dir):
    """A 1.6-first installation that last spoke 2.0.1 queues 2.0.1 events during an outage."""
    server = TestCsms(versions=("2.0.1",))
    await server.start()
    agent = await _with_agent(server, short_dir, ["1.6", "2.0.1"])
    await online201(agent, server)
    await agent.stop()
    await server.pause()
    # The 2.0.1 name of a setting 1.6 also has works in ocpp.defaults too.
    again = await _with_agent(server, short_dir, ["1.6", "2.0.1"],
                              defaults={"AuthCtrlr.OfflineTxForUnknownIdEnabled": True})
    try:
        v201 = again.adapters["2.0.1"]
        assert again.adapter is v201 and again.station.observer is v201
        assert again.settings["AllowOfflineTxForUnknownId"] is True
        closed = asyncio.Event()
        again.station.traces.append(
            lambda evse, what, d: closed.set() if what == "contactor" and d["closed"] else None)
        again.hal.plug(1)
        again.hal.tap("OFF1")
        await asyncio.wait_for(closed.wait(), 5)
        again.hal.unplug(1)
        await asyncio.wait_for(again.station.settled(), 5)
        actions = {i.action for i in again.storage.outbox_peek(100)}
        # (with StartupOfTheDevice, queued in 2.0.1 terms at start-up)
        assert actions == {"TransactionEvent", "SecurityEventNotification"}
        await server.resume()
        ended = await server.wait_for("TransactionEvent", station_id="CP1", timeout=10,
                                      predicate=lambda p: p["eventType"] == "Ended")
        events = tx_events(server)
        assert [e["eventType"] for e in events][0] == "Started"
        assert all(e.get("offline") is True for e in events), "happened while offline"
        assert [e["seqNo"] for e in events] == list(range(len(events)))
        assert ended["transactionInfo"]["stoppedReason"] == "EVDisconnected"
    finally:
        await again.stop()
        await server.stop()
    assert server.violations == []


async def test_version_change_reports_running_transaction_and_drops_foreign_messages(
        short_dir):
    """A transaction begun under 1.6 ends under 2.0.1: Started (offline) then Ended."""
    server16 = TestCsms(versions=("1.6",))
    await server16.start()
    port = server16.port
    agent = await _with_agent(server16, short_dir, ["1.6", "2.0.1"],
                              defaults={"MeterValueSampleInterval": 1})
    server201 = TestCsms(versions=("2.0.1",), port=port)
    try:
        await online(agent, server16)
        agent.hal.plug(1)
        agent.hal.tap("TAG16")
        await server16.wait_for("StartTransaction", station_id="CP1")
        await asyncio.wait_for(agent.adapters["1.6"].outbox.idle.wait(), 5)
        await server16.stop()
        agent.adapters["1.6"].outbox.queued.clear()
        await asyncio.wait_for(agent.adapters["1.6"].outbox.queued.wait(), 5)  # a 1.6 MeterValues
        assert "MeterValues" in {i.action for i in agent.storage.outbox_peek(100)}
        await server201.start()
        await online201(agent, server201, timeout=10)
        assert agent.adapter is agent.adapters["2.0.1"]
        dropped = agent.storage.outbox_dropped()
        assert dropped and all(d["action"] == "MeterValues" for d in dropped)
        assert "another OCPP version" in dropped[0]["reason"]
        agent.hal.unplug(1)
        await server201.wait_for("TransactionEvent", station_id="CP1",
                                 predicate=lambda p: p["eventType"] == "Ended")
        events = tx_events(server201)
        assert [e["eventType"] for e in events] == ["Started", "Ended"]
        assert events[0]["offline"] is True and events[0]["idToken"]["idToken"] == "TAG16"
        assert [e["seqNo"] for e in events] == [0, 1]
        assert server201.messages("CP1", "StopTransaction") == []
    finally:
        await agent.stop()
        await server201.stop()
        await server16.stop()
    assert server16.violations == [] and server201.violations == []


@pytest.mark.parametrize("version", VERSIONS_201_PLUS)
async def test_demo_speaks_2_0_1(version):
    """`cp-agent demo --ocpp 2.0.1` (and 2.1): a whole session, energy delivered, no schema
    error."""
    import io

    from agent.demo import run_demo

    out = io.StringIO()
    assert await run_demo(version=version, out=out) == 0, out.getvalue()
    text = out.getvalue()
    assert f"over OCPP {version}" in text and "schema errors    0" in text
    assert "TransactionEvent  Started" in text and "TransactionEvent  Ended" in text
    assert "contactor CLOSED" in text
