"""Conformance of sessions and transaction messages, on every version they apply to.

- Groups (1.6 3.10 parentIdTag, 2.0.1 C09 groupIdToken, TC_C_39_CS): any card of the group
  that started a session stops it, also while the EV is plugged in and the card is presented
  at that EVSE's reader; the group named in the transaction answer counts.
- An online Authorize answer is what its status says: an expiry date of now or just past only
  bounds the cache entry (1.6 3.5, 2.0.1 C01).
- No remote start (or 1.6 remote stop) while the boot is Pending (1.6 4.2, TC_B_02_CS).
- A 1.6 StartTransaction refused TransactionMessageAttempts times (3.7.1) is queued once more
  at the back of the queue, with the rest of its transaction behind it, so the session still
  reaches the CSMS; refused for good twice, it is recorded as undeliverable. 2.0.1 drops the
  Started for good (TC_E_50_CS) and its later events still go.

The agent runs for real against the strict test CSMS over websockets on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agent.app import Agent
from agent.clock import FakeClock
from agent.core.model import Token
from agent.testing.csms import CsmsCallError, TestCsms
from tests.conftest import eventually, version_rig

VERSIONS = ("1.6", "2.0.1")
SID = "CP1"


@pytest.fixture(params=VERSIONS)
def version(request: pytest.FixtureRequest) -> str:
    return request.param


rig = version_rig


async def online(agent: Agent) -> None:
    await asyncio.wait_for(agent.adapter.accepted.wait(), 5)
    await asyncio.wait_for(agent.adapter.outbox.idle.wait(), 5)
    await agent.station.quiet()


def starts(csms: TestCsms, version: str) -> list[dict]:
    if version == "1.6":
        return csms.messages(SID, "StartTransaction")
    return [p for p in csms.messages(SID, "TransactionEvent") if p["eventType"] == "Started"]


def ends(csms: TestCsms, version: str) -> list[dict]:
    if version == "1.6":
        return csms.messages(SID, "StopTransaction")
    return [p for p in csms.messages(SID, "TransactionEvent") if p["eventType"] == "Ended"]


def stopper(version: str, end: dict) -> str | None:
    """The card an end message names as the one that stopped the session."""
    if version == "1.6":
        return end.get("idTag")
    return end.get("idToken", {}).get("idToken")


def closed(agent: Agent, evse: int = 1) -> bool:
    return agent.hal.evses[evse].contactor.commanded_closed


async def charge(agent: Agent, csms: TestCsms, version: str, tag: str, evse: int = 1) -> None:
    """Plug in, present ``tag`` at the EVSE's own reader, wait until it charges and every
    message so far was answered."""
    agent.hal.plug(evse)
    await agent.station.quiet()
    assert await agent.station.present_token(Token(tag), evse) == "authorized"
    await eventually(lambda: closed(agent, evse), f"EVSE {evse} charging")
    await eventually(lambda: agent.station.evses[evse].tx is not None, "a transaction")
    await eventually(lambda: len(starts(csms, version)) >= 1, "the start reached the CSMS")
    await asyncio.wait_for(agent.adapter.outbox.idle.wait(), 5)
    await agent.station.quiet()


# ====================================================================== 1. groups


async def test_card_of_the_group_stops_the_session_at_the_evse_reader_while_the_ev_is_plugged(
        version, short_dir):
    """TC_C_39_CS / 1.6 3.10: EV plugged in, session of MUM (group FAMILY) charging; DAD of
    the same group presented at that EVSE's reader stops it and is named in the end."""
    async with rig(version, short_dir) as (csms, make):
        csms.parent_id_tags = {"MUM": "FAMILY", "DAD": "FAMILY", "NEIGHBOUR": "OTHER"}
        agent = await make()
        await online(agent)
        await charge(agent, csms, version, "MUM")
        assert await agent.station.present_token(Token("NEIGHBOUR"), 1) == "rejected"
        assert closed(agent), "a card of another group does not stop it"
        assert await agent.station.present_token(Token("DAD"), 1) == "stopped"
        assert not closed(agent)
        await eventually(lambda: len(ends(csms, version)) == 1, "the end reached the CSMS")
        end = ends(csms, version)[0]
        assert stopper(version, end) == "DAD"
        if version == "1.6":
            assert end["reason"] == "Local"
        else:
            assert end["triggerReason"] == "StopAuthorized"
            assert end["transactionInfo"]["stoppedReason"] == "Local"


async def test_group_card_at_a_shared_reader_stops_its_group_before_serving_a_waiting_ev(
        version, short_dir):
    """Two EVSEs, one shared reader: a card of the group of the session on EVSE 1 stops it,
    even though an EV waits for authorization on EVSE 2 (the same card would stop it too)."""
    async with rig(version, short_dir, evses=2) as (csms, make):
        csms.parent_id_tags = {"MUM": "FAMILY", "DAD": "FAMILY"}
        agent = await make()
        await online(agent)
        await charge(agent, csms, version, "MUM", evse=1)
        agent.hal.plug(2)
        await agent.station.quiet()
        assert await agent.station.present_token(Token("DAD")) == "stopped"
        assert not closed(agent, 1)
        assert not agent.station.evses[2].snapshot().authorized, "DAD did not start on EVSE 2"
        await eventually(lambda: len(ends(csms, version)) == 1, "the end reached the CSMS")
        assert stopper(version, ends(csms, version)[0]) == "DAD"


async def test_group_card_at_the_reader_of_an_evse_with_a_waiting_ev_starts_a_session_there(
        version, short_dir):
    """Two EVSEs with a reader each: a card of the group presented at EVSE 2, where an EV
    waits for authorization, starts that EV (two cars of one family); EVSE 1 charges on."""
    async with rig(version, short_dir, evses=2) as (csms, make):
        csms.parent_id_tags = {"MUM": "FAMILY", "DAD": "FAMILY"}
        agent = await make()
        await online(agent)
        await charge(agent, csms, version, "MUM", evse=1)
        agent.hal.plug(2)
        await agent.station.quiet()
        assert await agent.station.present_token(Token("DAD"), 2) == "authorized"
        await eventually(lambda: closed(agent, 2), "EVSE 2 charging")
        assert closed(agent, 1), "the session of MUM goes on"
        await agent.station.quiet()
        assert ends(csms, version) == []


async def test_group_named_in_the_transaction_answer_lets_a_card_of_the_group_stop_it(
        version, short_dir):
    """The Authorize answer names no group, the StartTransaction.conf / TransactionEvent
    answer does (C09: idTokenInfo.groupIdToken): the transaction takes it as its group. The
    cache is off, so the answer is the only place the group comes from."""
    async with rig(version, short_dir,
                   defaults={"AuthorizationCacheEnabled": False}) as (csms, make):
        csms.parent_id_tags = {"MUM": "FAMILY", "DAD": "FAMILY"}

        def no_group_for_mum(link: Any, p: dict) -> dict | None:
            if version == "1.6":
                return {"idTagInfo": {"status": "Accepted"}} if p["idTag"] == "MUM" else None
            if p["idToken"]["idToken"] == "MUM":
                return {"idTokenInfo": {"status": "Accepted"}}
            return None

        csms.overrides["Authorize"] = no_group_for_mum
        agent = await make()
        await online(agent)
        await charge(agent, csms, version, "MUM")
        tx = agent.station.evses[1].tx
        assert tx is not None and tx.parent == "FAMILY"
        assert agent.storage.tx_get(tx.local_id).parent == "FAMILY"
        assert await agent.station.present_token(Token("DAD"), 1) == "stopped"
        await eventually(lambda: len(ends(csms, version)) == 1, "the end reached the CSMS")
        assert stopper(version, ends(csms, version)[0]) == "DAD"


async def test_201_group_stop_before_the_stop_point_names_the_card_in_the_updated(short_dir):
    """TC_C_39_CS step 8 with TxStopPoint EVConnected: the card of the group ends the
    authorization, not yet the transaction; the Updated (StopAuthorized) names that card."""
    async with rig("2.0.1", short_dir,
                   defaults={"TxCtrlr.TxStopPoint": "EVConnected"}) as (csms, make):
        csms.parent_id_tags = {"MUM": "FAMILY", "DAD": "FAMILY"}
        agent = await make()
        await online(agent)
        await charge(agent, csms, "2.0.1", "MUM")
        assert await agent.station.present_token(Token("DAD"), 1) == "stopped"
        assert not closed(agent)
        stop = await csms.wait_for("TransactionEvent", station_id=SID, predicate=lambda p:
                                   p["triggerReason"] == "StopAuthorized")
        assert stop["eventType"] == "Updated"
        assert stop["idToken"]["idToken"] == "DAD"
        agent.hal.unplug(1)
        await eventually(lambda: len(ends(csms, "2.0.1")) == 1, "the end reached the CSMS")
        assert ends(csms, "2.0.1")[0]["transactionInfo"]["stoppedReason"] == "Local"


# ====================================================================== 2. expiry


def _stamp(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


@pytest.mark.parametrize("offset_s", [0, -5], ids=["now", "just_past"])
async def test_accepted_authorize_answer_with_an_expiry_now_or_just_past_starts_the_session(
        version, offset_s, short_dir):
    """The expiry of an online verdict says when the cache entry lapses; the status of the
    answer is what it says (1.6 idTagInfo.expiryDate, 2.0.1 cacheExpiryDateTime)."""
    async with rig(version, short_dir) as (csms, make):
        expiry = _stamp(datetime.now(UTC) + timedelta(seconds=offset_s))

        def accepted_expiring(link: Any, p: dict) -> dict:
            if version == "1.6":
                return {"idTagInfo": {"status": "Accepted", "expiryDate": expiry}}
            return {"idTokenInfo": {"status": "Accepted", "cacheExpiryDateTime": expiry}}

        csms.overrides["Authorize"] = accepted_expiring
        agent = await make()
        await online(agent)
        agent.hal.plug(1)
        await agent.station.quiet()
        assert await agent.station.present_token(Token("TAG1"), 1) == "authorized"
        await eventually(lambda: closed(agent), "charging")
        await eventually(lambda: len(starts(csms, version)) == 1, "the start reached the CSMS")
        await asyncio.wait_for(agent.adapter.outbox.idle.wait(), 5)
        await agent.station.quiet()
        assert closed(agent) and ends(csms, version) == []


# ====================================================================== 3. boot Pending


async def test_remote_start_while_the_boot_is_pending_is_rejected(version, short_dir):
    """1.6 4.2: no RemoteStartTransaction / RemoteStopTransaction while Pending; 2.0.1
    TC_B_02_CS step 12: RequestStartTransaction while Pending is answered Rejected. Nothing
    is authorized or started (the strict CSMS would flag any message sent for it)."""
    async with rig(version, short_dir) as (csms, make):
        csms.boot_status = "Pending"
        agent = await make()
        await asyncio.wait_for(agent.adapter.registration_seen.wait(), 5)
        assert agent.adapter.registration == "Pending"
        link = await csms.wait_station(SID)
        agent.hal.plug(1)
        await agent.station.settled()
        if version == "1.6":
            res = await link.call("RemoteStartTransaction", {"idTag": "TAG1", "connectorId": 1})
            assert res == {"status": "Rejected"}
            res = await link.call("RemoteStopTransaction", {"transactionId": 1})
            assert res == {"status": "Rejected"}
        else:
            res = await link.call("RequestStartTransaction", {
                "idToken": {"idToken": "TAG1", "type": "Central"}, "remoteStartId": 7,
                "evseId": 1})
            assert res["status"] == "Rejected"
        await agent.station.settled()
        assert not agent.station.evses[1].snapshot().authorized
        assert not closed(agent)
        assert csms.messages(SID, "Authorize") == [] and starts(csms, version) == []


# ====================================================================== 4. Start refused for good


def _refuse_starts(csms: TestCsms, times: int) -> list[dict]:
    """Answer the first ``times`` StartTransactions with a CALLERROR; returns what came."""
    seen: list[dict] = []

    def refuse(link: Any, payload: dict) -> None:
        seen.append(payload)
        if len(seen) <= times:
            raise CsmsCallError("InternalError", "cannot store it")
        # None: the CSMS's own answer

    csms.overrides["StartTransaction"] = refuse
    return seen


async def _sleeping(clock: FakeClock, seconds: float) -> None:
    """Until something sleeps ``seconds`` on the fake clock (time only moves once it does)."""
    await eventually(lambda: any(abs(d - seconds) < 0.01 for d in clock.pending()),
                     f"a {seconds} s wait began")


DROP = {"TransactionMessageAttempts": 2, "TransactionMessageRetryInterval": 30,
        "MeterValueSampleInterval": 0}


async def test_16_start_refused_for_good_is_queued_once_more_and_its_stop_follows(short_dir):
    """3.7.1: after TransactionMessageAttempts CALLERRORs the Start is discarded and the
    queue moves on; a fresh Start for the session goes once more at the back of the queue,
    the Stop queued meanwhile goes behind it, and the CSMS can account the session."""
    async with rig("1.6", short_dir, fake_clock=True, defaults=DROP) as (csms, make):
        seen = _refuse_starts(csms, 2)
        agent = await make()
        await online(agent)
        clock: FakeClock = agent.clock  # type: ignore[assignment]
        agent.hal.plug(1)
        await agent.station.quiet()
        assert await agent.station.present_token(Token("TAG1"), 1) == "authorized"
        await eventually(lambda: len(seen) == 1, "the first StartTransaction")
        await eventually(lambda: closed(agent), "charging (the CSMS answer is not awaited)")
        agent.hal.unplug(1)  # the session ends while its Start waits for the retry
        await eventually(lambda: agent.station.evses[1].tx is None, "the session ended")
        await _sleeping(clock, 30)
        await clock.advance(30)
        await eventually(lambda: len(seen) == 3, "the Start queued once more went")
        await asyncio.wait_for(agent.adapter.outbox.idle.wait(), 5)
        assert seen[2] == seen[0], "the same StartTransaction, sent afresh"
        stops = csms.messages(SID, "StopTransaction")
        assert len(stops) == 1, "the Stop followed the Start instead of being dropped"
        record = csms.transactions[stops[0]["transactionId"]]
        assert record["start"] == seen[0] and record["stop"] == stops[0]
        dropped = agent.storage.outbox_dropped()
        assert [d["action"] for d in dropped] == ["StartTransaction"]
        assert agent.storage.outbox_count() == 0
        assert agent.storage.tx_open() == []


async def test_16_start_refused_for_good_twice_is_recorded_as_undeliverable(short_dir, caplog):
    """Queued once more and refused for good again: no third round; an error names the
    transaction, its Stop is dropped with a clear line, the dropped table keeps both Starts and
    the Stop, and the journal lets the session go."""
    async with rig("1.6", short_dir, fake_clock=True, defaults=DROP) as (csms, make):
        seen = _refuse_starts(csms, 4)
        agent = await make()
        await online(agent)
        clock: FakeClock = agent.clock  # type: ignore[assignment]
        agent.hal.plug(1)
        await agent.station.quiet()
        assert await agent.station.present_token(Token("TAG1"), 1) == "authorized"
        await eventually(lambda: closed(agent), "charging")
        local_id = agent.station.evses[1].tx.local_id
        caplog.set_level(logging.INFO, logger="cp_agent")
        await eventually(lambda: len(seen) == 1, "the first StartTransaction")
        await _sleeping(clock, 30)
        await clock.advance(30)
        await eventually(lambda: len(seen) == 3, "the Start queued once more went")
        await _sleeping(clock, 30)
        await clock.advance(30)
        await eventually(lambda: len(seen) == 4, "its retry went")
        await asyncio.wait_for(agent.adapter.outbox.idle.wait(), 5)
        assert any(r.levelno == logging.ERROR and local_id in r.getMessage()
                   and "undeliverable" in r.getMessage() for r in caplog.records)
        agent.hal.unplug(1)
        await eventually(lambda: agent.station.evses[1].tx is None, "the session ended")
        await asyncio.wait_for(agent.adapter.outbox.idle.wait(), 5)
        assert csms.messages(SID, "StopTransaction") == []
        assert any(local_id in r.getMessage() and "StopTransaction" in r.getMessage()
                   for r in caplog.records if r.levelno == logging.ERROR)
        dropped = agent.storage.outbox_dropped()
        assert sorted(d["action"] for d in dropped if d["tx_ref"] == local_id) == [
            "StartTransaction", "StartTransaction", "StopTransaction"]
        await clock.advance(600)
        await agent.station.quiet()
        assert len(seen) == 4, "no third round"
        assert agent.storage.tx_get(local_id) is None


async def test_201_dropped_started_is_not_sent_again_and_the_later_events_still_go(short_dir):
    """2.0.1 ids are the station's own: after MessageAttempts CALLERRORs the Started is given
    up for good (TC_E_50_CS checks nothing is resent) and the Ended, with the same
    transactionId, still reaches the CSMS."""
    async with rig("2.0.1", short_dir, fake_clock=True, defaults=DROP) as (csms, make):
        seen: list[dict] = []

        def refuse_started(link: Any, payload: dict) -> None:
            if payload["eventType"] == "Started":
                seen.append(payload)
                raise CsmsCallError("InternalError", "cannot store it")

        csms.overrides["TransactionEvent"] = refuse_started
        agent = await make()
        await online(agent)
        clock: FakeClock = agent.clock  # type: ignore[assignment]
        agent.hal.plug(1)
        await agent.station.quiet()
        assert await agent.station.present_token(Token("TAG1"), 1) == "authorized"
        await eventually(lambda: len(seen) == 1, "the first Started")
        await _sleeping(clock, 30)
        await clock.advance(30)
        await eventually(lambda: len(seen) == 2, "its retry")
        await asyncio.wait_for(agent.adapter.outbox.idle.wait(), 5)
        agent.hal.unplug(1)
        await eventually(lambda: len(ends(csms, "2.0.1")) == 1, "the Ended reached the CSMS")
        await asyncio.wait_for(agent.adapter.outbox.idle.wait(), 5)
        tx_id = seen[0]["transactionInfo"]["transactionId"]
        assert ends(csms, "2.0.1")[0]["transactionInfo"]["transactionId"] == tx_id
        await clock.advance(600)
        await agent.station.quiet()
        assert len(seen) == 2, "the Started is not sent again"
