"""Authorization: every source (local list, cache, CSMS, offline rules) and what it allows.

1.6 sections 3.5 (local authorization and offline behaviour), 3.10 (parent idTag), 4.1, 5.10 and
5.15 (local list management).  The real agent runs against the strict test CSMS; offline cases
take the CSMS down first.  Authorization is exercised through ``Station.present_token``, the
path a card reader takes, so the answer ("authorized", "rejected", "stopped") is deterministic.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from agent.core.model import Token
from agent.storage import Storage
from agent.testing.csms import NO_REPLY
from tests.conftest import agent_factory, charging, online, strict_csms

PAST = (datetime.now(UTC) - timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
FUTURE = (datetime.now(UTC) + timedelta(days=30)).strftime("%Y-%m-%dT%H:%M:%SZ")


def entry(tag: str, status: str = "Accepted", **info: str) -> dict:
    return {"idTag": tag, "idTagInfo": {"status": status, **info}}


async def send_list(link, version: int, items: list[dict], kind: str = "Full") -> str:
    res = await link.call("SendLocalList", {"listVersion": version, "updateType": kind,
                                            "localAuthorizationList": items})
    return res["status"]


async def go_offline(agent, csms) -> None:
    """Take the CSMS down and wait until the agent has failed to reach it once."""
    agent.link.failed.clear()
    await csms.pause(abrupt=True)
    await asyncio.wait_for(agent.link.failed.wait(), 10)
    assert not agent.adapter.online


def authorize_calls(csms) -> list[dict]:
    return csms.messages("CP1", "Authorize")


# ====================================================================== no round trip


async def test_local_list_hit_with_pre_authorize_starts_without_a_round_trip(csms, make_agent):
    agent = await make_agent(defaults={"LocalPreAuthorize": True})
    link = await online(agent, csms)
    assert await send_list(link, 3, [entry("LISTED")]) == "Accepted"
    agent.hal.plug(1)
    assert await agent.station.present_token(Token("LISTED"), 1) == "authorized"
    await csms.wait_for("StartTransaction", station_id="CP1")
    assert authorize_calls(csms) == []
    assert agent.hal.evses[1].contactor.commanded_closed


async def test_cache_hit_with_pre_authorize_starts_without_a_round_trip(csms, make_agent):
    agent = await make_agent(defaults={"LocalPreAuthorize": True})
    await online(agent, csms)
    await charging(agent, csms, "CACHED")
    assert len(authorize_calls(csms)) == 1
    agent.hal.unplug(1)
    await csms.wait_for("StopTransaction", station_id="CP1")
    agent.hal.plug(1)
    assert await agent.station.present_token(Token("CACHED"), 1) == "authorized"
    await csms.wait_for("StartTransaction", station_id="CP1", count=2)
    assert len(authorize_calls(csms)) == 1, "the second start came from the cache"


async def test_without_pre_authorize_the_csms_decides_while_online(csms, make_agent):
    agent = await make_agent(defaults={"LocalPreAuthorize": False})
    link = await online(agent, csms)
    await send_list(link, 1, [entry("LISTED")])
    csms.authorize = {"LISTED": "Blocked"}
    agent.hal.plug(1)
    assert await agent.station.present_token(Token("LISTED"), 1) == "rejected"
    assert len(authorize_calls(csms)) == 1
    # The verdict contradicts the list: 1.6 3.5.2 wants that reported on connector 0.
    conflict = await csms.wait_for("StatusNotification", station_id="CP1",
                                   predicate=lambda p: p["errorCode"] == "LocalListConflict")
    assert conflict["connectorId"] == 0
    assert agent.storage.auth_cache_get("LISTED") is None, "listed ids are never cached"


async def test_cached_not_valid_identifier_is_checked_online_again(csms, make_agent):
    agent = await make_agent(defaults={"LocalPreAuthorize": True})
    await online(agent, csms)
    agent.storage.auth_cache_put("LAPSED", {"status": "Invalid"}, None)
    agent.hal.plug(1)
    assert await agent.station.present_token(Token("LAPSED"), 1) == "authorized"
    assert len(authorize_calls(csms)) == 1
    assert agent.storage.auth_cache_get("LAPSED")["status"] == "Accepted"


async def test_expired_listed_identifier_is_not_pre_authorized(csms, make_agent):
    agent = await make_agent(defaults={"LocalPreAuthorize": True})
    link = await online(agent, csms)
    await send_list(link, 1, [entry("OLD", expiryDate=PAST)])
    agent.hal.plug(1)
    assert await agent.station.present_token(Token("OLD"), 1) == "authorized"
    assert len(authorize_calls(csms)) == 1, "an expired entry needs the CSMS"


# ====================================================================== offline rules


@pytest.mark.parametrize("source, info, offline_ok, unknown_ok, expected", [
    ("list", {"status": "Accepted"}, True, False, "authorized"),
    ("list", {"status": "Accepted"}, False, False, "rejected"),
    ("list", {"status": "Accepted"}, False, True, "authorized"),
    ("list", {"status": "Blocked"}, True, True, "rejected"),
    ("list", {"status": "Accepted", "expiryDate": PAST}, True, True, "rejected"),
    ("list", {"status": "Accepted", "expiryDate": FUTURE}, True, False, "authorized"),
    ("cache", {"status": "Accepted"}, True, False, "authorized"),
    ("cache", {"status": "Accepted", "expiryDate": PAST}, True, True, "rejected"),
    ("cache", {"status": "Invalid"}, True, True, "rejected"),
    ("none", None, True, True, "authorized"),
    ("none", None, True, False, "rejected"),
], ids=["list-ok", "list-offline-off", "list-offline-off-unknown-on", "list-blocked",
        "list-expired", "list-not-yet-expired", "cache-ok", "cache-expired", "cache-invalid",
        "unknown-allowed", "unknown-refused"])
@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_offline_authorization_rules(short_dir, version, source, info, offline_ok,
                                           unknown_ok, expected):
    """One policy for both versions (agent/core/authorization.py): the same matrix on each."""
    async with strict_csms((version,)) as csms, \
            agent_factory(csms, short_dir, (version,)) as make_agent:
        agent = await make_agent(defaults={"LocalAuthorizeOffline": offline_ok,
                                           "AllowOfflineTxForUnknownId": unknown_ok})
        await _offline_rule_case(agent, csms, source, info, expected)


async def _offline_rule_case(agent, csms, source, info, expected) -> None:
    await asyncio.wait_for(agent.adapter.accepted.wait(), 5)
    await asyncio.wait_for(agent.adapter.outbox.idle.wait(), 5)
    if source == "list":
        agent.storage.local_list_replace(1, {"CARD": info})
    elif source == "cache":
        agent.storage.auth_cache_put("CARD", info, info.get("expiryDate"))
    await go_offline(agent, csms)
    agent.hal.plug(1)
    assert await agent.station.present_token(Token("CARD"), 1) == expected
    await asyncio.wait_for(agent.station.settled(), 5)
    assert agent.hal.evses[1].contactor.commanded_closed == (expected == "authorized")
    if expected == "authorized":
        assert agent.station.evses[1].tx is not None, "the transaction is journalled offline"


async def test_csms_that_does_not_answer_authorize_falls_back_to_offline_rules(csms,
                                                                               make_agent):
    agent = await make_agent(start=False, defaults={"LocalAuthorizeOffline": True})
    agent.cfg.ocpp.call_timeout_s = 0.5
    await agent.start()
    await online(agent, csms)
    agent.storage.local_list_replace(1, {"LISTED": {"status": "Accepted"}})
    csms.overrides["Authorize"] = lambda link, payload: NO_REPLY
    agent.hal.plug(1)
    assert await agent.station.present_token(Token("LISTED"), 1) == "authorized"
    assert await agent.station.present_token(Token("STRANGER"), None) == "rejected"


async def test_cache_disabled_is_neither_filled_nor_used(csms, make_agent):
    agent = await make_agent(defaults={"AuthorizationCacheEnabled": False,
                                       "AllowOfflineTxForUnknownId": False})
    await online(agent, csms)
    agent.hal.plug(1)
    assert await agent.station.present_token(Token("SEEN"), 1) == "authorized"
    assert agent.storage.auth_cache_get("SEEN") is None
    agent.storage.auth_cache_put("OLDCACHE", {"status": "Accepted"}, None)
    agent.hal.unplug(1)
    await csms.wait_for("StopTransaction", station_id="CP1")
    await go_offline(agent, csms)
    agent.hal.plug(1)
    assert await agent.station.present_token(Token("OLDCACHE"), 1) == "rejected"


async def test_clear_cache_forgets_offline_knowledge(csms, make_agent):
    agent = await make_agent(defaults={"AllowOfflineTxForUnknownId": False})
    link = await online(agent, csms)
    agent.hal.plug(1)
    assert await agent.station.present_token(Token("KNOWN"), 1) == "authorized"
    agent.hal.unplug(1)
    await csms.wait_for("StopTransaction", station_id="CP1")
    assert (await link.call("ClearCache", {}))["status"] == "Accepted"
    await go_offline(agent, csms)
    agent.hal.plug(1)
    assert await agent.station.present_token(Token("KNOWN"), 1) == "rejected"


# ====================================================================== the cache's contents


async def test_cache_follows_start_and_stop_confirmations_with_their_expiry(csms, make_agent):
    agent = await make_agent()
    await online(agent, csms)

    def start_with_expiry(link, payload):
        answer = link.csms._start_transaction(link, payload)
        answer["idTagInfo"]["expiryDate"] = FUTURE
        return answer

    csms.overrides["StartTransaction"] = start_with_expiry
    await charging(agent, csms, "TAG1")
    assert agent.storage.auth_cache_get("TAG1")["expiry"] == FUTURE
    csms.authorize = {"TAG1": "Blocked"}  # blocked meanwhile; the Stop's answer says so
    agent.hal.tap("TAG1")
    stop = await csms.wait_for("StopTransaction", station_id="CP1")
    assert stop["idTag"] == "TAG1"
    await asyncio.wait_for(agent.adapters["1.6"].outbox.idle.wait(), 5)
    assert agent.storage.auth_cache_get("TAG1")["status"] == "Blocked"


def test_full_cache_evicts_not_valid_entries_first_then_the_oldest():
    storage = Storage(":memory:")
    ticks = iter(range(1_800_000_000, 1_800_001_000))
    storage._clock = lambda: float(next(ticks))  # one second apart, in insertion order
    storage.auth_cache_put("old-valid", {"status": "Accepted"}, None, limit=3)
    storage.auth_cache_put("blocked", {"status": "Blocked"}, None, limit=3)
    storage.auth_cache_put("newer-valid", {"status": "Accepted"}, None, limit=3)
    storage.auth_cache_put("newest", {"status": "Accepted"}, None, limit=3)
    assert storage.auth_cache_get("blocked") is None
    assert storage.auth_cache_get("old-valid") is not None
    storage.auth_cache_put("fifth", {"status": "Accepted"}, None, limit=3)
    assert storage.auth_cache_get("old-valid") is None
    assert storage.auth_cache_count() == 3


# ====================================================================== local list management


async def test_local_list_full_and_differential_updates_with_versions(csms, make_agent):
    agent = await make_agent()
    link = await online(agent, csms)
    assert (await link.call("GetLocalListVersion", {}))["listVersion"] == 0
    assert await send_list(link, 5, [entry("A"), entry("B", "Blocked")]) == "Accepted"
    assert (await link.call("GetLocalListVersion", {}))["listVersion"] == 5
    assert await send_list(link, 5, [entry("C")], "Differential") == "VersionMismatch"
    assert await send_list(link, 6, [entry("C"), {"idTag": "A"}, entry("B")],
                           "Differential") == "Accepted"
    assert agent.storage.local_list_get("A") is None
    assert agent.storage.local_list_get("B")["status"] == "Accepted"
    assert agent.storage.local_list_get("C") is not None
    assert (await link.call("GetLocalListVersion", {}))["listVersion"] == 6
    # A full update may go back to any version and replaces everything.
    assert await send_list(link, 2, [entry("Z")]) == "Accepted"
    assert agent.storage.local_list_count() == 1
    assert (await link.call("GetLocalListVersion", {}))["listVersion"] == 2
    assert await send_list(link, 3, [], "Full") == "Accepted"
    assert agent.storage.local_list_count() == 0
    # The list survives a restart.
    await send_list(link, 4, [entry("KEEP")])
    await agent.stop()
    again = await make_agent()
    link = await online(again, csms)
    assert (await link.call("GetLocalListVersion", {}))["listVersion"] == 4
    assert again.storage.local_list_get("KEEP") is not None


async def test_local_list_refuses_what_it_cannot_hold_all_or_nothing(csms, make_agent):
    agent = await make_agent(defaults={"LocalAuthListMaxLength": 3,
                                       "SendLocalListMaxLength": 2})
    link = await online(agent, csms)
    assert await send_list(link, 1, [entry("A"), entry("B")]) == "Accepted"
    assert await send_list(link, 2, [entry("C"), entry("D"), entry("E")]) == "Failed"
    assert await send_list(link, 2, [entry("C"), entry("D")], "Differential") == "Failed"
    assert await send_list(link, 2, [entry("C")], "Differential") == "Accepted"
    assert await send_list(link, 3, [entry("X"), entry("X")]) == "Failed", "duplicates"
    assert await send_list(link, 3, [entry("X"), {"idTag": "Y"}]) == "Failed", \
        "a full update needs idTagInfo for every entry"
    assert agent.storage.local_list_version() == 2
    assert sorted(t for t in "ABCXY" if agent.storage.local_list_get(t)) == ["A", "B", "C"]


async def test_local_list_disabled_is_neither_updated_nor_used(csms, make_agent):
    agent = await make_agent(defaults={"LocalAuthListEnabled": False,
                                       "LocalPreAuthorize": True,
                                       "AllowOfflineTxForUnknownId": False})
    link = await online(agent, csms)
    assert await send_list(link, 1, [entry("A")]) == "NotSupported"
    agent.storage.local_list_replace(1, {"A": {"status": "Accepted"}})
    await go_offline(agent, csms)
    agent.hal.plug(1)
    assert await agent.station.present_token(Token("A"), 1) == "rejected"


# ====================================================================== parent idTag (groups)


async def test_card_of_the_same_group_stops_the_session_and_is_named_in_the_stop(csms,
                                                                                 make_agent):
    csms.parent_id_tags = {"MUM": "FAMILY", "DAD": "FAMILY", "NEIGHBOUR": "OTHER"}
    agent = await make_agent()
    await online(agent, csms)
    await charging(agent, csms, "MUM")
    assert await agent.station.present_token(Token("NEIGHBOUR")) == "rejected"
    assert agent.hal.evses[1].contactor.commanded_closed, "another group cannot stop it"
    assert await agent.station.present_token(Token("DAD")) == "stopped"
    stop = await csms.wait_for("StopTransaction", station_id="CP1")
    assert stop["reason"] == "Local" and stop["idTag"] == "DAD"


async def test_group_stop_works_offline_from_the_local_list(csms, make_agent):
    agent = await make_agent(defaults={"AllowOfflineTxForUnknownId": False})
    link = await online(agent, csms)
    await send_list(link, 1, [entry("MUM", parentIdTag="FAMILY"),
                              entry("DAD", parentIdTag="FAMILY"),
                              entry("NEIGHBOUR", parentIdTag="OTHER")])
    await go_offline(agent, csms)
    agent.hal.plug(1)
    assert await agent.station.present_token(Token("MUM"), 1) == "authorized"
    assert await agent.station.present_token(Token("NEIGHBOUR")) == "rejected"
    assert await agent.station.present_token(Token("DAD")) == "stopped"
    assert not agent.hal.evses[1].contactor.commanded_closed
    await csms.resume()
    stop = await csms.wait_for("StopTransaction", station_id="CP1", timeout=10)
    assert stop["idTag"] == "DAD"


async def test_group_learnt_from_the_late_start_confirmation(csms, make_agent):
    """Started offline as unknown: the StartTransaction.conf names the group later."""
    csms.parent_id_tags = {"MUM": "FAMILY", "DAD": "FAMILY"}
    agent = await make_agent(defaults={"AllowOfflineTxForUnknownId": True})
    await online(agent, csms)
    await go_offline(agent, csms)
    agent.hal.plug(1)
    assert await agent.station.present_token(Token("MUM"), 1) == "authorized"
    await csms.resume()
    await csms.wait_for("StartTransaction", station_id="CP1", timeout=10)
    await asyncio.wait_for(agent.adapters["1.6"].outbox.idle.wait(), 5)
    await asyncio.wait_for(agent.adapters["1.6"].accepted.wait(), 5)
    assert agent.station.evses[1].tx.parent == "FAMILY"
    assert await agent.station.present_token(Token("DAD")) == "stopped"
