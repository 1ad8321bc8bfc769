"""OCPP 2.1 periodic event streams (N11-N15) against the strict 2.1 test CSMS.

The CSMS validates every frame against the 2.1 schemas and keeps its own account of the
streams (open from an accepted OpenPeriodicEventStream to the ClosePeriodicEventStream, params
from the open and each accepted AdjustPeriodicEventStream): stream data for a stream it does
not know, or more elements at once than the stream's ``values``, fails the test.  Time is a
FakeClock: the values are checked at the instants the monitor and the stream say.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from agent.app import Agent
from agent.clock import FakeClock, parse_iso
from agent.ocpp.v21.event_streams import EventStreams
from agent.testing.csms import TestCsms
from tests.conftest import eventually, version_rig

POWER = {"component": {"name": "EVSE", "evse": {"id": 1}}, "variable": {"name": "Power"}}
NOTIFY = "NotifyPeriodicEventStream"


def rig(state: Any) -> Any:
    return version_rig("2.1", state, fake_clock=True)


async def online(agent: Agent, csms: TestCsms) -> Any:
    adapter = agent.adapters["2.1"]
    await asyncio.wait_for(adapter.accepted.wait(), 5)
    await asyncio.wait_for(adapter.outbox.idle.wait(), 5)
    await agent.station.quiet()
    return await csms.wait_station("CP1")


def monitor(value: float = 1, *, interval: int | None = None, values: int | None = None,
            **more: Any) -> dict:
    stream: dict[str, int] = {}
    if interval is not None:
        stream["interval"] = interval
    if values is not None:
        stream["values"] = values
    return {"value": value, "type": "Periodic", "severity": 5, **POWER,
            "periodicEventStream": stream, **more}


async def set_monitors(link: Any, *data: dict) -> list[dict]:
    res = await link.call("SetVariableMonitoring", {"setMonitoringData": list(data)})
    return res["setMonitoringResult"]


async def opened(csms: TestCsms, monitor_id: int, count: int = 1) -> dict:
    """The constantStreamData of the ``count``-th OpenPeriodicEventStream for the monitor."""
    got = await csms.wait_for(
        "OpenPeriodicEventStream", count=count,
        predicate=lambda p: p["constantStreamData"]["variableMonitoringId"] == monitor_id)
    stream = got["constantStreamData"]
    await eventually(lambda: stream["id"] in csms.streams.get("CP1", {}),
                     "the CSMS accepted the stream")
    return stream


def sent(csms: TestCsms) -> list[dict]:
    return csms.messages("CP1", NOTIFY)


async def tick(agent: Agent, seconds: int = 1) -> None:
    """Let ``seconds`` pass one at a time, each once the stream has dealt with the present
    instant (its next wake-up lies ahead), so that no sample instant is stepped over."""
    clock: FakeClock = agent.clock  # type: ignore[assignment]
    streams = agent.adapters["2.1"].block(EventStreams)
    for _ in range(seconds):
        await eventually(
            lambda: any(due > clock.monotonic() + 1e-9 for due in streams.next_wake.values()),
            "the stream waits for its next sample")
        await clock.advance(1)
        await agent.station.quiet()


async def test_a_stream_monitor_opens_a_stream_and_sends_at_its_interval(short_dir):
    """N11: every monitor value (1 s) a sample; every stream interval (5 s) one SEND."""
    async with rig(short_dir) as (csms, make):
        agent = await make()
        link = await online(agent, csms)
        [result] = await set_monitors(link, monitor(1, interval=5))
        assert result["status"] == "Accepted" and result["id"] >= 1
        stream = await opened(csms, result["id"])
        assert stream["params"] == {"interval": 5}
        await tick(agent)
        first = agent.clock.wall()
        await tick(agent, 3)
        assert sent(csms) == [], "stream data before the interval"
        await tick(agent)
        got = await csms.wait_for(NOTIFY)
        assert got["id"] == stream["id"] and got["pending"] == 0
        assert abs(parse_iso(got["basetime"]).timestamp() - first) < 0.001
        assert [d["t"] for d in got["data"]] == [0.0, 1.0, 2.0, 3.0, 4.0]
        assert {d["v"] for d in got["data"]} == {"0"}  # EVSE.Power with no EV: 0 W
        assert [m.kind for m in csms.log if m.action == NOTIFY] == ["SEND"]
        await tick(agent, 5)
        second = await csms.wait_for(NOTIFY, count=2)
        assert len(second["data"]) == 5
        assert parse_iso(second["basetime"]).timestamp() - first == 5.0


async def test_get_reports_the_open_stream_and_adjust_changes_its_batches(short_dir):
    """N12, N14: GetPeriodicEventStream lists the open stream with its params; after an
    AdjustPeriodicEventStream the batches follow the new values."""
    async with rig(short_dir) as (csms, make):
        agent = await make()
        link = await online(agent, csms)
        assert await link.call("GetPeriodicEventStream", {}) == {}
        [result] = await set_monitors(link, monitor(1, values=2))
        stream = await opened(csms, result["id"])
        got = await link.call("GetPeriodicEventStream", {})
        assert got == {"constantStreamData": [
            {"id": stream["id"], "variableMonitoringId": result["id"], "params": {"values": 2}}]}
        await tick(agent, 2)
        assert len((await csms.wait_for(NOTIFY))["data"]) == 2
        res = await link.call("AdjustPeriodicEventStream",
                              {"id": stream["id"], "params": {"values": 3}})
        assert res == {"status": "Accepted"}
        got = await link.call("GetPeriodicEventStream", {})
        assert got["constantStreamData"][0]["params"] == {"values": 3}
        await tick(agent, 2)
        assert len(sent(csms)) == 1, "sent after 2 samples though values is now 3"
        await tick(agent)
        assert len((await csms.wait_for(NOTIFY, count=2))["data"]) == 3
        res = await link.call("AdjustPeriodicEventStream",
                              {"id": stream["id"] + 100, "params": {"values": 1}})
        assert res["status"] == "Rejected"
        assert res["statusInfo"]["reasonCode"] == "UnknownStream"


async def test_clearing_the_monitor_closes_its_stream(short_dir):
    """N06 / N13: ClearVariableMonitoring of a stream's monitor makes the station close the
    stream; no data follows."""
    async with rig(short_dir) as (csms, make):
        agent = await make()
        link = await online(agent, csms)
        [result] = await set_monitors(link, monitor(1))
        stream = await opened(csms, result["id"])
        await tick(agent)
        await csms.wait_for(NOTIFY)  # neither interval nor values: each sample at once
        res = await link.call("ClearVariableMonitoring", {"id": [result["id"], 999]})
        assert res["clearMonitoringResult"] == [
            {"status": "Accepted", "id": result["id"]}, {"status": "NotFound", "id": 999}]
        closed = await csms.wait_for("ClosePeriodicEventStream")
        assert closed == {"id": stream["id"]}
        assert csms.streams["CP1"] == {}
        clock: FakeClock = agent.clock  # type: ignore[assignment]
        await clock.advance(5)
        await agent.station.quiet()
        assert len(sent(csms)) == 1
        assert await link.call("GetPeriodicEventStream", {}) == {}


async def test_replacing_the_monitor_closes_the_old_stream_and_opens_a_new_one(short_dir):
    async with rig(short_dir) as (csms, make):
        agent = await make()
        link = await online(agent, csms)
        [result] = await set_monitors(link, monitor(1))
        old = await opened(csms, result["id"])
        [again] = await set_monitors(link, monitor(2, interval=10, id=result["id"]))
        assert again["status"] == "Accepted" and again["id"] == result["id"]
        new = await opened(csms, result["id"], count=2)
        assert new["id"] != old["id"] and new["params"] == {"interval": 10}
        assert await csms.wait_for("ClosePeriodicEventStream") == {"id": old["id"]}
        actions = [m.action for m in csms.log if m.action in (
            "ClosePeriodicEventStream", "OpenPeriodicEventStream") and m.kind == "CALL"]
        assert actions == ["OpenPeriodicEventStream", "ClosePeriodicEventStream",
                           "OpenPeriodicEventStream"]
        assert set(csms.streams["CP1"]) == {new["id"]}


async def test_offline_samples_are_dropped_and_the_stream_carries_on_after_a_reconnect(
        short_dir):
    """SEND is never queued (2.1 part 4, 4.2.4); a mere reconnect keeps the stream open."""
    async with rig(short_dir) as (csms, make):
        agent = await make()
        link = await online(agent, csms)
        [result] = await set_monitors(link, monitor(1))
        stream = await opened(csms, result["id"])
        await tick(agent)
        await csms.wait_for(NOTIFY)
        adapter = agent.adapters["2.1"]
        await csms.pause()
        await eventually(lambda: adapter.rpc is None, "the agent notices the outage")
        clock: FakeClock = agent.clock  # type: ignore[assignment]
        await clock.advance(30)  # thirty samples' worth of time offline
        assert NOTIFY not in {i.action for i in agent.storage.outbox_peek(100)}
        await csms.resume()
        await eventually(lambda: any(0 < d <= 0.2 for d in clock.pending()),
                         "the agent waits to reconnect")
        await clock.advance(0.2)
        await online(agent, csms)
        await tick(agent)
        after = await csms.wait_for(NOTIFY, count=2)
        assert after["id"] == stream["id"] and len(after["data"]) == 1
        # Nothing from the outage, and no second open on a mere reconnect (no new boot).
        assert len(sent(csms)) == 2
        assert len(csms.messages("CP1", "OpenPeriodicEventStream")) == 1
        assert len(csms.messages("CP1", "BootNotification")) == 1


async def test_a_restart_offers_the_kept_stream_again(short_dir):
    async with rig(short_dir) as (csms, make):
        agent = await make()
        link = await online(agent, csms)
        [result] = await set_monitors(link, monitor(1, values=4))
        stream = await opened(csms, result["id"])
        await agent.stop()
        agent = await make()
        await online(agent, csms)
        again = await opened(csms, result["id"], count=2)
        assert again == stream  # same stream id, monitor id and params
        await tick(agent, 4)
        assert (await csms.wait_for(NOTIFY))["id"] == stream["id"]


async def test_a_rejected_stream_reports_with_notify_event(short_dir):
    """A monitor whose stream the CSMS rejected reports the ordinary way."""
    async with rig(short_dir) as (csms, make):
        csms.overrides["OpenPeriodicEventStream"] = lambda link, p: {"status": "Rejected"}
        agent = await make()
        link = await online(agent, csms)
        [result] = await set_monitors(link, monitor(1, interval=5))
        await csms.wait_for("OpenPeriodicEventStream")
        await tick(agent)
        event = (await csms.wait_for(
            "NotifyEvent", predicate=lambda p: p["eventData"][0]["trigger"] == "Periodic"))
        data = event["eventData"][0]
        assert data["variableMonitoringId"] == result["id"]
        assert data["eventNotificationType"] == "CustomMonitor"
        assert (data["component"], data["variable"], data["severity"]) == (
            POWER["component"], POWER["variable"], 5)
        assert data["actualValue"] == "0"
        assert sent(csms) == []
        assert await link.call("GetPeriodicEventStream", {}) == {}


async def test_stream_monitors_that_cannot_be_kept_are_refused(short_dir):
    async with rig(short_dir) as (csms, make):
        agent = await make(defaults={"MonitoringCtrlr.MaxPeriodicEventStreams": 1})
        link = await online(agent, csms)
        results = await set_monitors(
            link,
            monitor(1),
            monitor(1),  # the same again
            {**monitor(1), "component": {"name": "NoSuchThing"}},
            {**monitor(1), "variable": {"name": "NoSuchVariable"}},
            {**monitor(1), "type": "UpperThreshold"},
            monitor(0.01),  # faster than the station samples
            monitor(1, severity=2),  # a second stream: more than MaxPeriodicEventStreams
            {k: v for k, v in monitor(1).items() if k != "periodicEventStream"},
            monitor(1, id=4242),
        )
        assert [r["status"] for r in results] == [
            "Accepted", "Duplicate", "UnknownComponent", "UnknownVariable",
            "UnsupportedMonitorType", "Rejected", "Rejected",
            "Duplicate",  # an ordinary Periodic monitor, the same as the stream monitor
            "Rejected"]
        assert results[6]["statusInfo"]["reasonCode"] == "MaxStreams"
        assert results[8]["statusInfo"]["reasonCode"] == "UnknownMonitorId"
        assert [r.get("id") for r in results].count(None) == 8
        got = await link.call("GetVariables", {"getVariableData": [{
            "component": {"name": "MonitoringCtrlr"},
            "variable": {"name": "MaxPeriodicEventStreams"}}]})
        assert got["getVariableResult"][0]["attributeValue"] == "1"


async def test_malformed_sends_from_the_csms_are_ignored(short_dir):
    """2.1 part 4, 4.2.4: a SEND gets no answer, not even a CALLERROR, however broken."""
    async with rig(short_dir) as (csms, make):
        agent = await make()
        link = await online(agent, csms)
        stream = {"id": 1, "pending": 0, "basetime": "2030-01-01T00:00:00Z",
                  "data": [{"t": 0, "v": "1"}]}
        frames = [
            [6, "x1", NOTIFY, {"id": "one"}],  # violates the schema
            [6, "x2", "Heartbeat", {}],  # a CALL action as SEND
            [6, "x3", NOTIFY],  # an element short
            [6, "x4", NOTIFY, []],  # payload not an object
            [6, "x5", NOTIFY, stream],  # valid, but a station takes no stream data
        ]
        for frame in frames:
            await link.send_raw(json.dumps(frame))
        # The station carries on: a CALL after them is answered on the same connection.
        assert await link.call("GetPeriodicEventStream", {}) == {}
        assert csms.stations["CP1"] is link
        answered = {frame[1] for frame in map(json.loads, link.raw_in) if frame[0] in (3, 4)}
        assert not answered & {f[1] for f in frames}


async def test_a_clock_aligned_monitor_samples_on_the_wall_clock(short_dir):
    async with rig(short_dir) as (csms, make):
        agent = await make()
        link = await online(agent, csms)
        aligned = {**monitor(10, values=1), "type": "PeriodicClockAligned"}
        [result] = await set_monitors(link, aligned)
        await opened(csms, result["id"])
        await tick(agent, 10)
        got = await csms.wait_for(NOTIFY)
        rest = parse_iso(got["basetime"]).timestamp() % 10
        assert min(rest, 10 - rest) < 0.002, got["basetime"]


async def test_a_transaction_monitor_samples_only_during_a_transaction(short_dir):
    async with rig(short_dir) as (csms, make):
        agent = await make()
        link = await online(agent, csms)
        [result] = await set_monitors(link, monitor(1, transaction=True))
        await opened(csms, result["id"])
        await tick(agent, 3)
        assert sent(csms) == [], "sampled with no transaction"
        agent.hal.plug(1)
        agent.hal.tap("TAG1")
        started = await csms.wait_for("TransactionEvent",
                                      predicate=lambda p: p["eventType"] == "Started")
        assert started["evse"]["id"] == 1
        await tick(agent)
        assert len((await csms.wait_for(NOTIFY))["data"]) == 1
