"""OCPP 2.1 changes to the blocks carried over from 2.0.1 (provisioning, authorization, local
list, availability, metering, transactions, remote control, data transfer).

Every test runs against the strict test CSMS speaking 2.1 (each frame of the agent validated
against the 2.1 schemas); the last one checks that every CS->CSMS message the agent names in
its 2.x code is produced and validated on 2.1 at least once.
"""

from __future__ import annotations

import ast
import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.core.model import Token
from agent.ocpp.v21 import SPEC
from agent.ocpp.v21.transaction_limits import STORE_KEY, TransactionLimits21, applicable
from agent.ocpp.v201.device_model import MEASURANDS_201
from agent.testing.csms import TestCsms
from tests.conftest import charging201, online201, tx_events, version_rig
from tests.test_v21 import _station_initiated

ROOT = Path(__file__).resolve().parent.parent
SID = "CP1"


def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z")


async def _report(csms: TestCsms, link: Any, base: str = "FullInventory",
                  request_id: int = 9) -> dict[tuple[str, str], dict]:
    res = await link.call("GetBaseReport", {"requestId": request_id, "reportBase": base})
    assert res["status"] == "Accepted"
    await csms.wait_for("NotifyReport", predicate=lambda p: p["requestId"] == request_id
                        and not p.get("tbc"))
    return {(d["component"]["name"], d["variable"]["name"]): d
            for part in csms.messages(SID, "NotifyReport") if part["requestId"] == request_id
            for d in part["reportData"]}


# ---------------------------------------------------------------------- device model


@pytest.mark.parametrize("version", ["2.0.1", "2.1"])
async def test_list_limits_are_max_elements_on_2_1_and_the_2_1_variables(short_dir, version):
    """2.1 NotifyReport has variableCharacteristics.maxElements for the number of list items
    (maxLimit stays a string length); 2.0.1 has no such field. The variables 2.1's appendix
    added for these blocks are reported on 2.1 only."""
    async with version_rig(version, short_dir) as (csms, make):
        agent = await make()
        link = await online201(agent, csms)
        report = await _report(csms, link)
    chars = report[("SampledDataCtrlr", "TxUpdatedMeasurands")]["variableCharacteristics"]
    added = {("AuthCtrlr", "SupportedIdTokenTypes"), ("SampledDataCtrlr", "SignStartedReadings"),
             ("SampledDataCtrlr", "SignUpdatedReadings"), ("TxCtrlr", "SupportedLimits")}
    if version == "2.1":
        assert chars["maxElements"] == len(MEASURANDS_201) and "maxLimit" not in chars
        assert added <= set(report)
        limits = report[("TxCtrlr", "SupportedLimits")]["variableAttribute"][0]
        assert limits["value"] == "maxEnergy,maxTime,maxCost,maxSoC"
        assert limits["mutability"] == "ReadOnly"
        types = report[("AuthCtrlr", "SupportedIdTokenTypes")]
        assert "VIN" in types["variableCharacteristics"]["valuesList"].split(",")
    else:
        assert chars["maxLimit"] == len(MEASURANDS_201) and "maxElements" not in chars
        assert not added & set(report)


# ---------------------------------------------------------------------- local list, tokens


async def test_send_local_list_takes_2_1_tokens_of_any_type_and_255_long(short_dir):
    """2.1 idTokens are 255 long, their type a string (appendix 7.1 adds VIN, EVCCID,
    DirectPayment), with additionalInfo: such an entry is stored and used as any other."""
    long_token = "V" * 255
    entry = {"idToken": {"idToken": long_token, "type": "VIN",
                         "additionalInfo": [{"additionalIdToken": "A" * 200,
                                             "type": "ISO14443SubType"}]},
             "idTokenInfo": {"status": "Accepted",
                             "groupIdToken": {"idToken": "G" * 255, "type": "Central"}}}
    async with version_rig("2.1", short_dir, defaults={"LocalAuthListEnabled": True}) as (
            csms, make):
        agent = await make()
        link = await online201(agent, csms)
        res = await link.call("SendLocalList", {"versionNumber": 3, "updateType": "Full",
                                                "localAuthorizationList": [entry]})
        assert res == {"status": "Accepted"}
        assert await link.call("GetLocalListVersion", {}) == {"versionNumber": 3}
        found = agent.station.authorization.lookup(Token(long_token, "VIN"))
        assert found is not None and found.status == "Accepted"
        assert found.source == "local_list" and found.parent == "G" * 255


# ---------------------------------------------------------------------- remote start


async def test_remote_start_echoes_the_id_token_with_its_additional_info(short_dir):
    """An ad hoc payment reference (2.1 appendix 6.2) given with the idToken of a remote
    start is part of the idToken the transaction's events name."""
    token = {"idToken": "PSP-4711", "type": "DirectPayment",
             "additionalInfo": [{"additionalIdToken": "S" * 100, "type": "SessionRef"}]}
    async with version_rig("2.1", short_dir) as (csms, make):
        agent = await make()
        link = await online201(agent, csms)
        agent.hal.plug(1)
        res = await link.call("RequestStartTransaction",
                              {"remoteStartId": 11, "evseId": 1, "idToken": token})
        assert res["status"] == "Accepted"
        await csms.wait_for("TransactionEvent",
                            predicate=lambda p: p["transactionInfo"].get("chargingState")
                            == "Charging")
        named = [e["idToken"] for e in tx_events(csms) if "idToken" in e]
        assert named and all(t == token for t in named)


async def test_remote_start_with_a_2_1_only_profile_is_refused_and_starts_nothing(short_dir):
    """RequestStartTransaction's chargingProfile has 2.1's additions (here dynamic updates):
    Rejected with the field named, no session begun, no profile installed."""
    profile = {"id": 31, "stackLevel": 0, "chargingProfilePurpose": "TxProfile",
               "chargingProfileKind": "Relative", "maxOfflineDuration": 600,
               "chargingSchedule": [{"id": 1, "chargingRateUnit": "A",
                                     "chargingSchedulePeriod": [
                                         {"startPeriod": 0, "limit": 10.0}]}]}
    async with version_rig("2.1", short_dir) as (csms, make):
        agent = await make()
        link = await online201(agent, csms)
        res = await link.call("RequestStartTransaction", {
            "remoteStartId": 12, "evseId": 1, "chargingProfile": profile,
            "idToken": {"idToken": "R1", "type": "Central"}})
        assert res["status"] == "Rejected"
        assert res["statusInfo"]["reasonCode"] == "UnsupportedParam"
        assert "maxOfflineDuration" in res["statusInfo"]["additionalInfo"]
        assert agent.station.evses[1].snapshot().tx is None
        assert all(p.id != 31 for p in agent.station.charging_profiles.profiles)
        assert tx_events(csms) == []


# ---------------------------------------------------------------------- E16 limits


def test_limits_are_applied_where_they_can_be_measured():
    every = {"maxEnergy": 5000, "maxTime": 60, "maxCost": 3.5, "maxSoC": 80}
    assert applicable(every) == (every, [])
    measurable = {"maxEnergy", "maxTime"}  # a transaction the CSMS prices, an EV without SoC
    assert applicable(every, lambda kind: kind in measurable) == (
        {"maxEnergy": 5000, "maxTime": 60}, ["maxCost", "maxSoC"])
    assert applicable({"maxEnergy": True, "maxTime": float("nan")}) == ({}, ["maxEnergy",
                                                                             "maxTime"])
    assert TransactionLimits21 in SPEC.blocks


TARIFF_25 = {"tariffId": "E25", "currency": "EUR", "energy": {"prices": [{"priceKwh": 0.25}]}}
SOC_HAL = "hal: {driver: mock, ev_max_current_a: 16, v2x: {battery_wh: 2000, soc_percent: 50}}"


@pytest.mark.parametrize(("limit", "advance", "reason", "stopped", "setup"), [
    # no tariff: the CSMS prices the session, so its maxCost is not the station's to apply
    ({"maxEnergy": 60, "maxCost": 2.5}, 40.0, "EnergyLimitReached", "EnergyLimitReached", ""),
    ({"maxTime": 30}, 31.0, "TimeLimitReached", "TimeLimitReached", ""),
    # 0.25 EUR/kWh: 0.02 EUR is 80 Wh (the mock EV takes 11 kW: about 26 s)
    ({"maxCost": 0.02, "maxSoC": 99}, 60.0, "CostLimitReached", "LocalOutOfCredit", "tariff"),
    # a 2 kWh battery at 50 %: 51 % is 20 Wh further
    ({"maxSoC": 51}, 30.0, "SoCLimitReached", "SOCLimitReached", "soc"),
])
async def test_E16_transaction_limit_is_confirmed_then_ends_the_transaction(
        short_dir, limit, advance, reason, stopped, setup):
    """A transactionLimit in a TransactionEventResponse: confirmed once with LimitSet (only
    the limits the station applies; repeated in every answer it changes nothing), persisted,
    and the transaction ends when it is reached (trigger and stoppedReason say which): energy
    and time always, the cost when the station prices the session (a default tariff), the
    state of charge when the EV reports one."""
    async with version_rig("2.1", short_dir, fake_clock=True) as (csms, make):
        csms.overrides["TransactionEvent"] = lambda lnk, p: {
            **csms._transaction_event(lnk, p), "transactionLimit": limit}
        agent = await make(extra=SOC_HAL) if setup == "soc" else await make()
        csms.now = agent.clock.now  # the CSMS's answers keep the fake clock's time
        link = await online201(agent, csms)
        if setup == "tariff":
            res = await link.call("SetDefaultTariff", {"evseId": 0, "tariff": TARIFF_25})
            assert res["status"] == "Accepted"
        started = await charging201(agent, csms)
        tx_id = started["transactionInfo"]["transactionId"]
        await csms.wait_for("TransactionEvent",
                            predicate=lambda p: p["triggerReason"] == "LimitSet")
        assert agent.storage.get_setting(STORE_KEY) is not None
        clock = agent.clock
        for _ in range(int(advance)):
            await clock.advance(1.0)
        ended = await csms.wait_for("TransactionEvent",
                                    predicate=lambda p: p["eventType"] == "Ended")
        await asyncio.wait_for(agent.adapters["2.1"].outbox.idle.wait(), 5)
        assert agent.storage.get_setting(STORE_KEY) is None, "forgotten with its transaction"
    set_events = tx_events(csms, triggerReason="LimitSet")
    # the mock EV reports its state of charge; the cost is the station's with a tariff only
    measurable = {"maxEnergy", "maxTime", "maxSoC"} | ({"maxCost"} if setup == "tariff"
                                                       else set())
    applied = {k: v for k, v in limit.items() if k in measurable}
    assert [e["transactionInfo"]["transactionLimit"] for e in set_events] == [applied]
    assert set_events[0]["transactionInfo"]["transactionId"] == tx_id
    assert ended["triggerReason"] == reason
    assert ended["transactionInfo"]["stoppedReason"] == stopped
    if setup == "tariff":
        cost = ended["costDetails"]["totalCost"]
        assert cost["total"]["inclTax"] >= limit["maxCost"] > 0, cost
    if "maxEnergy" in limit:
        energy = [s["value"] for mv in ended["meterValue"] for s in mv["sampledValue"]
                  if s.get("measurand") == "Energy.Active.Import.Register"
                  and s["context"] == "Transaction.End"]
        begin = [s["value"] for mv in started["meterValue"] for s in mv["sampledValue"]]
        assert energy and energy[-1] - begin[0] >= limit["maxEnergy"]


# ---------------------------------------------------------------------- every message


def _named_in_agent(actions: set[str]) -> set[str]:
    """The CS->CSMS actions named (as string literals) in the agent's shared and 2.x code."""
    found: set[str] = set()
    for folder in ("agent/ocpp", "agent/ocpp/v201", "agent/ocpp/v21"):
        for path in (ROOT / folder).glob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and node.value in actions:
                    found.add(node.value)
    return found


def _send_actions_21() -> set[str]:
    from agent.link.rpc import _send_actions

    return set(_send_actions("2.1"))


# Named in the code but never sent by the station: DataTransfer is only answered.
NEVER_SENT = {"DataTransfer": "the station only answers DataTransfer (no vendor extensions)"}
# Produced and validated on 2.1 by the tests of their own feature (a module running on 2.1
# that names the action), not by the scenario below: monitoring, periodic event streams,
# dynamic profiles and priority charging.
ELSEWHERE = frozenset({"NotifyEvent", "OpenPeriodicEventStream", "ClosePeriodicEventStream",
                       "NotifyPeriodicEventStream", "PullDynamicScheduleUpdate",
                       "NotifyPriorityCharging", "NotifyDERStartStop", "NotifyDERAlarm",
                       "ReportDERControl", "NotifyMonitoringReport",
                       # ISO 15118 (tests/test_plug_and_charge.py, on 2.1 too)
                       "Get15118EVCertificate", "GetCertificateStatus", "NotifyEVChargingNeeds",
                       "NotifyEVChargingSchedule", "GetCertificateChainStatus"})


def _tested_on_21_elsewhere(action: str) -> list[str]:
    """Test modules (other than this one) that run on 2.1 and name ``action``."""
    out = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        if path.name == Path(__file__).name:
            continue
        text = path.read_text()
        if f'"{action}"' in text and ('"2.1"' in text or "on_versions_201_plus" in text):
            out.append(path.name)
    return out


async def test_every_message_the_agent_sends_on_2_1_is_schema_valid(short_dir):
    """One scenario on 2.1 that makes the station send every CS->CSMS message its code
    names, each validated by the strict CSMS; those of ELSEWHERE are produced on 2.1 by the
    tests of their feature."""
    actions = _station_initiated("2.1") | {"DataTransfer"} | _send_actions_21()
    named = _named_in_agent(actions)
    uncovered = [a for a in sorted(named & ELSEWHERE) if not _tested_on_21_elsewhere(a)]
    assert not uncovered, f"no test running on 2.1 produces {uncovered}"
    wanted = named - set(NEVER_SENT) - ELSEWHERE

    async with version_rig("2.1", short_dir, fake_clock=True) as (csms, make):
        agent = await make()
        link = await online201(agent, csms)  # BootNotification, StatusNotification
        clock = agent.clock
        now = clock.now()
        agent.station.security_events.record("SettingSystemTime", "test")
        for requested in ("Heartbeat", "MeterValues", "FirmwareStatusNotification",
                          "LogStatusNotification", "SignChargingStationCertificate"):
            res = await link.call("TriggerMessage", {"requestedMessage": requested,
                                                     "evse": {"id": 1}}
                                  if requested == "MeterValues"
                                  else {"requestedMessage": requested})
            assert res["status"] == "Accepted", requested
        await _report(csms, link, "SummaryInventory", request_id=1)  # NotifyReport
        res = await link.call("SetDisplayMessage", {"message": {
            "id": 1, "priority": "NormalCycle",
            "message": {"format": "UTF8", "content": "hello 2.1"}}})
        assert res["status"] == "Accepted"
        res = await link.call("GetDisplayMessages", {"requestId": 2})
        assert res["status"] == "Accepted"
        res = await link.call("SetChargingProfile", {"evseId": 0, "chargingProfile": {
            "id": 41, "stackLevel": 0, "chargingProfilePurpose": "TxDefaultProfile",
            "chargingProfileKind": "Absolute",
            "chargingSchedule": [{"id": 1, "chargingRateUnit": "A",
                                  "startSchedule": _iso(now - timedelta(hours=1)),
                                  "chargingSchedulePeriod": [{"startPeriod": 0,
                                                              "limit": 20.0}]}]}})
        assert res["status"] == "Accepted"
        res = await link.call("GetChargingProfiles", {
            "requestId": 3, "chargingProfile": {"chargingProfilePurpose": "TxDefaultProfile"}})
        assert res["status"] == "Accepted"
        res = await link.call("ReserveNow", {
            "id": 5, "expiryDateTime": _iso(now + timedelta(seconds=30)), "evseId": 1,
            "idToken": {"idToken": "RES", "type": "ISO14443"}})
        assert res["status"] == "Accepted"
        for _ in range(32):  # the reservation expires: ReservationStatusUpdate
            await clock.advance(1.0)
        await csms.wait_for("ReservationStatusUpdate")
        csms.authorize = {"TAG21": "Accepted"}
        await charging201(agent, csms, "TAG21")  # Authorize, TransactionEvent
        evse = agent.station.evses[1]
        await evse.set_limit("mqtt", 10)  # an energy manager limits EVSE 1
        agent.station.charging_profiles.set_external("mqtt", 1, 10)
        await csms.wait_for("NotifyChargingLimit")
        for _ in range(3):
            await clock.advance(10.0)
        await evse.set_limit("mqtt", None)
        agent.station.charging_profiles.set_external("mqtt", 1, None)
        await csms.wait_for("ClearedChargingLimit")
        agent.hal.unplug(1)
        await csms.wait_for("TransactionEvent", predicate=lambda p: p["eventType"] == "Ended")
        await asyncio.wait_for(agent.adapters["2.1"].outbox.idle.wait(), 5)
        for action in ("SecurityEventNotification", "SignCertificate", "NotifyDisplayMessages",
                       "ReportChargingProfiles", "Heartbeat", "MeterValues",
                       "FirmwareStatusNotification", "LogStatusNotification"):
            if action in wanted:
                await csms.wait_for(action)
        seen = {m.action for m in csms.log if m.direction == "cs->csms"
                and m.kind in ("CALL", "SEND")}
    missing = wanted - seen
    assert not missing, (f"the station names {sorted(missing)} but this scenario never made "
                         f"it send them on 2.1: add a step (or an ELSEWHERE entry)")


def test_scan_finds_what_the_station_sends():
    """The literal scan behind the generic test sees the basic messages (it is not empty)."""
    named = _named_in_agent(_station_initiated("2.1"))
    assert {"BootNotification", "TransactionEvent", "MeterValues", "NotifyReport",
            "StatusNotification", "Authorize"} <= named
