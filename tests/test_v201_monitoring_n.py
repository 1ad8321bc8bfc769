"""Block N variable monitoring (N02-N08) on 2.0.1 and 2.1, against the strict test CSMS.

Set / clear / report monitors, the monitoring base and level, and the NotifyEvents monitors
send: thresholds (Alerting, then cleared), deltas (numeric and not), periodic and
clock-aligned ones, offline queuing by severity, and monitors kept across a restart.  Time is
a FakeClock, so "within one meter sample" is one step of the clock; the meter's voltage is
the mock grid's (``hal.set_grid``).  Named after the conformance cases of the 2.0.1 / 2.1
Advanced Device Management test suites (TC_N_xx_CS).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agent.app import Agent
from agent.clock import FakeClock, parse_iso
from agent.ocpp.v201.monitoring import Monitoring
from agent.ocpp.v201.monitors import Monitor, evaluate
from agent.testing.csms import CsmsCallError, TestCsms
from tests.conftest import eventually, on_versions_201_plus, version_rig

pytestmark = pytest.mark.asyncio
v2 = on_versions_201_plus()

EVSE1 = {"name": "EVSE", "evse": {"id": 1}}
VOLTAGE = {"component": EVSE1, "variable": {"name": "ACVoltage"}}
AVAILABILITY = {"component": EVSE1, "variable": {"name": "AvailabilityState"}}


@pytest.fixture
async def rig(v2: str, short_dir: Any) -> Any:
    async with version_rig(v2, short_dir, fake_clock=True) as (csms, make):
        yield csms, make


async def online(agent: Agent, csms: TestCsms) -> Any:
    adapter = next(iter(agent.adapters.values()))
    await asyncio.wait_for(adapter.accepted.wait(), 5)
    await asyncio.wait_for(adapter.outbox.idle.wait(), 5)
    await agent.station.quiet()
    return await csms.wait_station("CP1")


def data(target: dict, type_: str, value: float, severity: int = 5, **more: Any) -> dict:
    return {"value": value, "type": type_, "severity": severity, **target, **more}


async def set_monitors(link: Any, *items: dict) -> list[dict]:
    return (await link.call("SetVariableMonitoring",
                            {"setMonitoringData": list(items)}))["setMonitoringResult"]


def events(csms: TestCsms, monitor_id: int) -> list[dict]:
    return [e for p in csms.messages("CP1", "NotifyEvent") for e in p["eventData"]
            if e.get("variableMonitoringId") == monitor_id]


async def step(agent: Agent, seconds: float = 1.0) -> None:
    """One meter sample's worth of time (meter_poll_s is 1 s), and its consequences."""
    clock: FakeClock = agent.clock  # type: ignore[assignment]
    await clock.advance(seconds)
    await agent.station.quiet()


async def report(link: Any, csms: TestCsms, request_id: int, **query: Any) -> list[dict]:
    """GetMonitoringReport; the monitor entries of every NotifyMonitoringReport part."""
    res = await link.call("GetMonitoringReport", {"requestId": request_id, **query})
    if res["status"] != "Accepted":
        return []
    await csms.wait_for("NotifyMonitoringReport",
                        predicate=lambda p: p["requestId"] == request_id and not p.get("tbc"))
    parts = [p for p in csms.messages("CP1", "NotifyMonitoringReport")
             if p["requestId"] == request_id]
    assert [p["seqNo"] for p in parts] == list(range(len(parts)))
    return [m for p in parts for m in p["monitor"]]


def ids(entries: list[dict]) -> set[int]:
    return {vm["id"] for e in entries for vm in e["variableMonitoring"]}


# ---------------------------------------------------------------- N04 set


async def test_TC_N_08_to_15_37_38_40_43_CS_set_variable_monitoring_results(rig, v2):
    """One answer per element, in order: Accepted with a new id, UnknownComponent,
    UnknownVariable, UnsupportedMonitorType (a threshold on a list, 2.1 TargetDelta with no
    Target), Rejected (value out of the variable's range, a negative delta, severity out of
    0-9, an unknown or hard-wired id), Duplicate; replacing by id keeps the id."""
    csms, make = rig
    agent = await make()
    link = await online(agent, csms)
    results = await set_monitors(
        link,
        data(AVAILABILITY, "Delta", 1, 8),  # TC_N_08
        data(AVAILABILITY, "Delta", 1, 7),  # TC_N_10: same variable, other severity
        data({**AVAILABILITY, "component": {"name": "EVSE", "evse": {"id": 99}}}, "Delta", 1),
        data({**VOLTAGE, "variable": {"name": "NoSuchVariable"}}, "Delta", 1),  # TC_N_37
        data(AVAILABILITY, "UpperThreshold", 1),  # TC_N_38: a threshold on an OptionList
        data({"component": EVSE1, "variable": {"name": "Power"}}, "UpperThreshold",
             10_000_000),  # TC_N_13: above EVSE.Power's maxLimit
        data(VOLTAGE, "Delta", -1),  # TC_N_12
        data(VOLTAGE, "UpperThreshold", 250, 10),  # severity beyond 9
        data(AVAILABILITY, "Delta", 1, 8),  # TC_N_15: the first one again
        data(VOLTAGE, "LowerThreshold", 200, id=4242),  # no such monitor
        data(VOLTAGE, "UpperThreshold", 250, 4),  # TC_N_43: valid again after the errors
    )
    assert [r["status"] for r in results] == [
        "Accepted", "Accepted", "UnknownComponent", "UnknownVariable",
        "UnsupportedMonitorType", "Rejected", "Rejected", "Rejected", "Duplicate", "Rejected",
        "Accepted"]
    first, second, last = results[0]["id"], results[1]["id"], results[10]["id"]
    assert len({first, second, last}) == 3
    assert [r.get("id") for r in results].count(None) == 8
    assert results[9]["statusInfo"]["reasonCode"] == "UnknownMonitorId"
    # TC_N_40: replace by id (the type and the value change, the id stays).
    [again] = await set_monitors(link, data(VOLTAGE, "LowerThreshold", 200, 4, id=last))
    assert (again["status"], again["id"]) == ("Accepted", last)
    entries = await report(link, csms, 1, componentVariable=[VOLTAGE])
    custom = [vm for e in entries for vm in e["variableMonitoring"] if vm["id"] == last]
    assert [(vm["type"], vm["value"]) for vm in custom] == [("LowerThreshold", 200)]
    # A hard-wired monitor cannot be changed.
    hardwired = min(ids(await report(link, csms, 2, componentVariable=[
        {"component": {"name": "PowerContactor", "evse": {"id": 1}}}])))
    [refused] = await set_monitors(link, data(
        {"component": {"name": "PowerContactor", "evse": {"id": 1}},
         "variable": {"name": "Problem"}}, "Delta", 1, 3, id=hardwired))
    assert refused["status"] == "Rejected"
    if v2 == "2.1":
        [target] = await set_monitors(link, data(VOLTAGE, "TargetDelta", 5))
        assert target["status"] == "UnsupportedMonitorType"
        assert target["statusInfo"]["reasonCode"] == "NoTarget"


async def test_set_and_clear_obey_items_and_bytes_per_message(rig):
    """MonitoringCtrlr.ItemsPerMessage / BytesPerMessage [SetVariableMonitoring,
    ClearVariableMonitoring]: a longer request is refused as a whole."""
    csms, make = rig
    agent = await make(defaults={
        "MonitoringCtrlr.ItemsPerMessage[SetVariableMonitoring]": 2,
        "MonitoringCtrlr.ItemsPerMessage[ClearVariableMonitoring]": 2,
        "MonitoringCtrlr.BytesPerMessage[SetVariableMonitoring]": 200})
    link = await online(agent, csms)
    with pytest.raises(CsmsCallError) as exc:
        await set_monitors(link, *[data(VOLTAGE, "UpperThreshold", 240 + i) for i in range(3)])
    assert exc.value.code == "OccurrenceConstraintViolation"
    with pytest.raises(CsmsCallError) as exc:  # two of about 150 bytes each
        await set_monitors(link, data(VOLTAGE, "UpperThreshold", 250),
                           data(VOLTAGE, "LowerThreshold", 200))
    assert exc.value.code == "FormatViolation"
    with pytest.raises(CsmsCallError) as exc:
        await link.call("ClearVariableMonitoring", {"id": [1, 2, 3]})
    assert exc.value.code == "OccurrenceConstraintViolation"
    assert len(await set_monitors(link, data(VOLTAGE, "UpperThreshold", 240))) == 1


# ---------------------------------------------------------------- N07 / N08 events


async def test_TC_N_20_CS_threshold_alert_within_one_sample_and_cleared(rig, v2):
    csms, make = rig
    agent = await make()
    link = await online(agent, csms)
    [upper] = await set_monitors(link, data(VOLTAGE, "UpperThreshold", 240, 3))
    await step(agent)
    assert events(csms, upper["id"]) == [], "230 V is not above 240 V"
    agent.hal.set_grid(voltage_v=250)
    await step(agent)
    raised = (await csms.wait_for("NotifyEvent", predicate=lambda p: p["eventData"][0].get(
        "variableMonitoringId") == upper["id"]))["eventData"][0]
    assert (raised["trigger"], raised["actualValue"]) == ("Alerting", "250")
    assert raised["eventNotificationType"] == "CustomMonitor" and "cleared" not in raised
    assert (raised["component"], raised["variable"]) == (VOLTAGE["component"],
                                                         VOLTAGE["variable"])
    assert raised.get("severity") == (3 if v2 == "2.1" else None)
    await step(agent, 3)
    assert len(events(csms, upper["id"])) == 1, "still above: no second alert"
    agent.hal.set_grid(voltage_v=230)
    await step(agent)
    await eventually(lambda: len(events(csms, upper["id"])) == 2, "the all-clear")
    cleared = events(csms, upper["id"])[1]
    assert cleared["cleared"] is True and cleared["actualValue"] == "230"
    assert cleared["eventId"] > raised["eventId"]
    # MonitoringCtrlr.Enabled false: the monitor stays silent.
    res = await link.call("SetVariables", {"setVariableData": [{
        "component": {"name": "MonitoringCtrlr"}, "variable": {"name": "Enabled"},
        "attributeValue": "false"}]})
    assert res["setVariableResult"][0]["attributeStatus"] == "Accepted"
    agent.hal.set_grid(voltage_v=250)
    await step(agent, 2)
    assert len(events(csms, upper["id"])) == 2


async def test_an_unchanged_meter_sample_does_not_wake_the_monitors(rig, monkeypatch):
    """The runner looks when a figure moved, not at every sample of an idle meter (one task
    step per station and second in a swarm), and a change is still seen within one sample."""
    csms, make = rig
    agent = await make()
    link = await online(agent, csms)
    [upper] = await set_monitors(link, data(VOLTAGE, "UpperThreshold", 240, 3))
    block = next(iter(agent.adapters.values())).block(Monitoring)
    looks: list[float] = []
    evaluate_ = block._evaluate
    monkeypatch.setattr(block, "_evaluate", lambda now: (looks.append(now), evaluate_(now))[1])
    await step(agent)
    looks.clear()
    for _ in range(10):
        await step(agent)  # the same 230 V, the same 0 W: ten samples
    assert len(looks) <= 3, f"ten unchanged samples woke the monitors {len(looks)} times"
    agent.hal.set_grid(voltage_v=250)
    await step(agent)
    await csms.wait_for("NotifyEvent", predicate=lambda p: p["eventData"][0].get(
        "variableMonitoringId") == upper["id"])
    assert looks, "a changed sample is looked at"


async def test_TC_N_45_56_CS_delta_numeric_and_not(rig):
    """A numeric delta reports a move of more than its value from the last reported value;
    a delta on an OptionList reports every change (the appendix's AvailabilityState)."""
    csms, make = rig
    agent = await make()
    link = await online(agent, csms)
    [volts, state] = await set_monitors(link, data(VOLTAGE, "Delta", 5),
                                        data(AVAILABILITY, "Delta", 1, 8))
    for volt in (233, 236, 232, 226):  # 236 and 226 move 6 and 10 V from 230 and 236
        agent.hal.set_grid(voltage_v=volt)
        await step(agent)
    await eventually(lambda: len(events(csms, volts["id"])) == 2, "two deltas")
    assert [e["actualValue"] for e in events(csms, volts["id"])] == ["236", "226"]
    assert {e["trigger"] for e in events(csms, volts["id"])} == {"Delta"}
    res = await link.call("ChangeAvailability", {"operationalStatus": "Inoperative",
                                                 "evse": {"id": 1}})
    assert res["status"] == "Accepted"
    await eventually(lambda: events(csms, state["id"]), "the state's delta")
    assert events(csms, state["id"])[0]["actualValue"] == "Unavailable"


async def test_TC_N_24_CS_periodic_and_clock_aligned_monitors(rig):
    csms, make = rig
    agent = await make()
    csms.now = agent.clock.now
    link = await online(agent, csms)
    power = {"component": EVSE1, "variable": {"name": "Power"}}
    [periodic, aligned] = await set_monitors(link, data(power, "Periodic", 10, 8),
                                             data(power, "PeriodicClockAligned", 60, 8))
    await step(agent, 9)
    assert events(csms, periodic["id"]) == []
    await step(agent, 1)
    await eventually(lambda: len(events(csms, periodic["id"])) == 1, "after 10 s")
    first = events(csms, periodic["id"])[0]
    assert (first["trigger"], first["actualValue"]) == ("Periodic", "0")
    await step(agent, 10)
    await eventually(lambda: len(events(csms, periodic["id"])) == 2, "after 20 s")
    await step(agent, 60)
    await eventually(lambda: events(csms, aligned["id"]), "on the minute")
    stamp = parse_iso(events(csms, aligned["id"])[0]["timestamp"]).timestamp()
    assert min(stamp % 60, 60 - stamp % 60) < 0.01


async def test_TC_N_21_CS_a_fault_is_reported_by_its_listed_hardwired_monitor(rig):
    csms, make = rig
    agent = await make()
    link = await online(agent, csms)
    agent.hal.inject_fault(1, "ground_failure")
    event = (await csms.wait_for("NotifyEvent", predicate=lambda p: p["eventData"][0][
        "eventNotificationType"] == "HardWiredMonitor"))["eventData"][0]
    assert event["component"] == {"name": "RCD", "evse": {"id": 1}}
    entries = await report(link, csms, 7, componentVariable=[{"component": {"name": "RCD"}}])
    [listed] = [vm for e in entries for vm in e["variableMonitoring"]]
    assert listed["id"] == event["variableMonitoringId"] and listed["severity"] == 0


# ---------------------------------------------------------------- N05 level, offline


async def test_TC_N_16_17_22_23_CS_level_and_offline_queuing_by_severity(rig):
    csms, make = rig
    agent = await make()
    link = await online(agent, csms)
    assert (await link.call("SetMonitoringLevel", {"severity": 10}))["status"] == "Rejected"
    assert (await link.call("SetMonitoringLevel", {"severity": 4}))["status"] == "Accepted"
    got = await link.call("GetVariables", {"getVariableData": [{
        "component": {"name": "MonitoringCtrlr"}, "variable": {"name": "ActiveMonitoringLevel"}}]})
    assert got["getVariableResult"][0]["attributeValue"] == "4"
    res = await link.call("SetVariables", {"setVariableData": [{
        "component": {"name": "MonitoringCtrlr"},
        "variable": {"name": "OfflineQueuingSeverity"}, "attributeValue": "2"}]})
    assert res["setVariableResult"][0]["attributeStatus"] == "Accepted"
    [quiet, urgent, kept, dropped] = await set_monitors(
        link, data(VOLTAGE, "UpperThreshold", 240, 5),  # above the level: never reported
        data(VOLTAGE, "UpperThreshold", 241, 4),  # within the level: reported online
        data(VOLTAGE, "UpperThreshold", 242, 2),  # and this one queued while offline
        data(VOLTAGE, "UpperThreshold", 243, 3))  # but this one dropped while offline
    agent.hal.set_grid(voltage_v=245)
    await step(agent)
    await eventually(lambda: events(csms, urgent["id"]) and events(csms, kept["id"])
                     and events(csms, dropped["id"]), "the online alerts")
    assert events(csms, quiet["id"]) == []
    agent.hal.set_grid(voltage_v=230)
    await step(agent)
    await eventually(lambda: all(len(events(csms, m["id"])) == 2
                                 for m in (urgent, kept, dropped)), "cleared online")
    adapter = next(iter(agent.adapters.values()))
    await asyncio.wait_for(adapter.outbox.idle.wait(), 5)
    await csms.pause()
    await eventually(lambda: adapter.rpc is None, "the agent notices the outage")
    agent.hal.set_grid(voltage_v=245)
    await step(agent)
    queued = [i.payload["eventData"][0].get("variableMonitoringId")
              for i in agent.storage.outbox_peek(100) if i.action == "NotifyEvent"]
    assert queued == [kept["id"]]
    await csms.resume()
    clock: FakeClock = agent.clock  # type: ignore[assignment]
    await eventually(lambda: any(0 < d <= 0.2 for d in clock.pending()),
                     "the agent waits to reconnect")
    await clock.advance(0.2)
    await online(agent, csms)
    await eventually(lambda: len(events(csms, kept["id"])) == 3, "the queued alert")
    assert len(events(csms, dropped["id"])) == 2 and events(csms, quiet["id"]) == []


# ---------------------------------------------------------------- N02 report, N03 base, N06


async def test_TC_N_01_02_03_04_47_CS_monitoring_report(rig, v2):
    """Criteria and componentVariable filters, EmptyResultSet for an unknown component, the
    report of everything split by DeviceDataCtrlr.ItemsPerMessage[GetReport]."""
    csms, make = rig
    agent = await make(defaults={"DeviceDataCtrlr.ItemsPerMessage[GetReport]": 3})
    link = await online(agent, csms)
    [delta, upper, periodic] = await set_monitors(
        link, data(AVAILABILITY, "Delta", 1, 8), data(VOLTAGE, "UpperThreshold", 250),
        data(VOLTAGE, "Periodic", 30, 9))
    everything = await report(link, csms, 1)  # TC_N_47
    assert len(csms.messages("CP1", "NotifyMonitoringReport")) > 1, "split by 3 per message"
    kinds = {vm.get("eventNotificationType") for e in everything
             for vm in e["variableMonitoring"]}
    assert kinds == ({"HardWiredMonitor", "PreconfiguredMonitor", "CustomMonitor"}
                     if v2 == "2.1" else {None})
    assert {delta["id"], upper["id"], periodic["id"]} <= ids(everything)
    thresholds = await report(link, csms, 2, monitoringCriteria=["ThresholdMonitoring"],
                              componentVariable=[VOLTAGE])  # TC_N_03
    assert ids(thresholds) == {upper["id"]}
    by_variable = await report(link, csms, 3, componentVariable=[VOLTAGE])  # TC_N_02
    assert ids(by_variable) == {upper["id"], periodic["id"]}
    assert [(e["component"], e["variable"]) for e in by_variable] == [
        (VOLTAGE["component"], VOLTAGE["variable"])]
    periodic_only = await report(link, csms, 4, monitoringCriteria=["PeriodicMonitoring"])
    assert ids(periodic_only) == {periodic["id"]}  # TC_N_01
    res = await link.call("GetMonitoringReport", {"requestId": 5, "componentVariable": [
        {"component": {"name": "NoSuchComponent"}}]})  # TC_N_04
    assert res["status"] == "EmptyResultSet"


async def test_TC_N_05_06_41_CS_monitoring_base(rig):
    """All: every preconfigured monitor, custom ones kept; FactoryDefault: the factory set,
    custom ones gone, a changed preconfigured monitor restored; HardWiredOnly: hard-wired
    only."""
    csms, make = rig
    agent = await make()
    link = await online(agent, csms)
    power = {"component": EVSE1, "variable": {"name": "Power"}}
    factory = await report(link, csms, 1, componentVariable=[power, VOLTAGE])
    [preconfigured] = [vm for e in factory for vm in e["variableMonitoring"]]
    assert preconfigured["type"] == "UpperThreshold"  # the rating; voltage only with All
    [custom] = await set_monitors(link, data(AVAILABILITY, "Delta", 1, 8))
    [changed] = await set_monitors(link, data(power, "UpperThreshold", 5000, 4,
                                              id=preconfigured["id"]))
    assert changed["status"] == "Accepted"
    assert (await link.call("SetMonitoringBase", {"monitoringBase": "All"}))["status"] == \
        "Accepted"
    everything = await report(link, csms, 2, componentVariable=[power, VOLTAGE, AVAILABILITY])
    assert len(ids(everything)) == 4  # power, two voltage bounds, the custom delta
    assert {vm["value"] for e in everything for vm in e["variableMonitoring"]
            if vm["id"] == preconfigured["id"]} == {5000}
    assert (await link.call("SetMonitoringBase",
                            {"monitoringBase": "FactoryDefault"}))["status"] == "Accepted"
    restored = await report(link, csms, 3, componentVariable=[power, VOLTAGE, AVAILABILITY])
    assert [vm for e in restored for vm in e["variableMonitoring"]] == [preconfigured]
    assert custom["id"] not in ids(restored)
    assert (await link.call("SetMonitoringBase",
                            {"monitoringBase": "HardWiredOnly"}))["status"] == "Accepted"
    res = await link.call("GetMonitoringReport", {"requestId": 4, "componentVariable": [
        power, VOLTAGE, AVAILABILITY]})
    assert res["status"] == "EmptyResultSet"
    got = await link.call("GetVariables", {"getVariableData": [{
        "component": {"name": "MonitoringCtrlr"}, "variable": {"name": "ActiveMonitoringBase"}}]})
    assert got["getVariableResult"][0]["attributeValue"] == "HardWiredOnly"


async def test_TC_N_18_19_44_CS_clear_monitoring(rig):
    csms, make = rig
    agent = await make()
    link = await online(agent, csms)
    [custom] = await set_monitors(link, data(VOLTAGE, "UpperThreshold", 250))
    builtin = sorted(ids(await report(link, csms, 1)) - {custom["id"]})
    res = await link.call("ClearVariableMonitoring",
                          {"id": [custom["id"], builtin[0], builtin[-1], 777]})
    assert [r["status"] for r in res["clearMonitoringResult"]] == [
        "Accepted", "Rejected", "Rejected", "NotFound"]
    assert custom["id"] not in ids(await report(link, csms, 2))


async def test_TC_N_53_CS_monitors_base_and_level_survive_a_restart(rig):
    csms, make = rig
    agent = await make()
    link = await online(agent, csms)
    [upper] = await set_monitors(link, data(VOLTAGE, "UpperThreshold", 240, 3))
    await link.call("SetMonitoringLevel", {"severity": 6})
    await link.call("SetMonitoringBase", {"monitoringBase": "All"})
    await agent.stop()
    agent = await make()
    link = await online(agent, csms)
    assert upper["id"] in ids(await report(link, csms, 1, componentVariable=[VOLTAGE]))
    got = await link.call("GetVariables", {"getVariableData": [
        {"component": {"name": "MonitoringCtrlr"}, "variable": {"name": name}}
        for name in ("ActiveMonitoringLevel", "ActiveMonitoringBase")]})
    assert [r["attributeValue"] for r in got["getVariableResult"]] == ["6", "All"]
    agent.hal.set_grid(voltage_v=250)
    await step(agent)
    await eventually(lambda: events(csms, upper["id"]), "the kept monitor fires")
    [again] = await set_monitors(link, data(VOLTAGE, "LowerThreshold", 200, 3))
    assert again["id"] != upper["id"], "ids are not reused after a restart"


# ---------------------------------------------------------------- 2.1


@pytest.mark.parametrize("v2", ["2.1"])
async def test_21_stream_monitors_share_the_ids_the_report_and_the_base(rig):
    """A periodic event stream's monitor is one of the custom monitors: its own id, listed
    in GetMonitoringReport, and gone (its stream closed) with HardWiredOnly."""
    csms, make = rig
    agent = await make()
    link = await online(agent, csms)
    [plain] = await set_monitors(link, data(VOLTAGE, "UpperThreshold", 250))
    [stream] = await set_monitors(link, data(VOLTAGE, "Periodic", 1, periodicEventStream={}))
    assert stream["status"] == "Accepted" and stream["id"] != plain["id"]
    await eventually(lambda: csms.streams.get("CP1"), "the CSMS accepted the stream")
    listed = await report(link, csms, 1, componentVariable=[VOLTAGE])
    assert {plain["id"], stream["id"]} <= ids(listed)
    await link.call("SetMonitoringBase", {"monitoringBase": "HardWiredOnly"})
    await csms.wait_for("ClosePeriodicEventStream")
    res = await link.call("GetMonitoringReport",
                          {"requestId": 2, "componentVariable": [VOLTAGE]})
    assert res["status"] == "EmptyResultSet"


# ---------------------------------------------------------------- pure: 2.1 TargetDelta


async def test_target_delta_reports_leaving_and_returning_to_the_target_band() -> None:
    m = Monitor(1, EVSE1, {"name": "Power"}, "TargetDeltaRelative", 10, 5)
    assert evaluate(m, "1050", numeric=True, target="1000") is None  # 5 % off
    assert evaluate(m, "1200", numeric=True, target="1000").trigger == "Alerting"
    assert evaluate(m, "1190", numeric=True, target="1000") is None  # still out
    assert evaluate(m, "990", numeric=True, target="1000").cleared is True
    absolute = Monitor(2, EVSE1, {"name": "Power"}, "TargetDelta", 50, 5)
    assert evaluate(absolute, "940", numeric=True, target="1000").cleared is False
