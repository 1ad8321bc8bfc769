"""OCPP 2.0.1 blocks C (authorization, cache, GroupId, offline rules) and D (local list)."""

from __future__ import annotations

import pytest

from agent.clock import parse_iso
from agent.core.model import Token
from tests.conftest import charging201, on_versions_201_plus, online201, tx_events

pytestmark = pytest.mark.asyncio
# Every test here applies to 2.1 as well (its csms201 / make_agent201 speak each).
v2 = on_versions_201_plus()


def local_entry(token: str, status: str = "Accepted", group: str | None = None) -> dict:
    info: dict = {"status": status}
    if group is not None:
        info["groupIdToken"] = {"idToken": group, "type": "Central"}
    return {"idToken": {"idToken": token, "type": "ISO14443"}, "idTokenInfo": info}


@pytest.mark.parametrize("status", ["Invalid", "Blocked", "Expired", "Unknown"])
async def test_TC_C_02_06_07_56_CS_refused_token_never_starts(csms201, make_agent201, status):
    csms201.authorize = {"BAD": status}
    agent = await make_agent201()
    await online201(agent, csms201)
    agent.hal.plug(1)
    assert await agent.station.present_token(Token("BAD")) == "rejected"
    authorize = csms201.messages("CP1", "Authorize")[-1]
    assert authorize == {"idToken": {"idToken": "BAD", "type": "ISO14443"}}
    assert tx_events(csms201) == []
    assert not agent.hal.evses[1].contactor.commanded_closed


async def test_TC_C_08_32_CS_cache_authorizes_offline_and_survives_a_restart(
        csms201, make_agent201):
    agent = await make_agent201()
    await online201(agent, csms201)
    assert await agent.station.present_token(Token("CACHED")) == "authorized"
    assert agent.storage.auth_cache_get("CACHED")["status"] == "Accepted"
    await agent.stop()
    await csms201.pause()
    again = await make_agent201()
    again.hal.plug(1)
    assert await again.station.present_token(Token("CACHED")) == "authorized"
    assert await again.station.present_token(Token("STRANGER")) == "rejected"  # unknown
    await csms201.resume()
    await csms201.wait_for("TransactionEvent", station_id="CP1",
                           predicate=lambda p: p["eventType"] == "Started" and p["offline"])
    assert len(csms201.messages("CP1", "Authorize")) == 1, "only the first, online"


async def test_TC_C_36_CS_cache_disabled_is_not_used(csms201, make_agent201):
    agent = await make_agent201(defaults={"AuthCacheCtrlr.Enabled": False})
    await online201(agent, csms201)
    assert await agent.station.present_token(Token("T1")) == "authorized"
    assert agent.storage.auth_cache_get("T1") is None


async def test_cache_lifetime_bounds_the_entry(csms201, make_agent201):
    agent = await make_agent201(defaults={"AuthCacheCtrlr.LifeTime": 60})
    await online201(agent, csms201)
    await agent.station.present_token(Token("T1"))
    assert agent.storage.auth_cache_get("T1") is not None
    expires = agent.storage._read(  # noqa: SLF001 - the expiry column itself
        "SELECT expires_at FROM auth_cache WHERE id_token = 'T1'")[0][0]
    assert parse_iso(expires).timestamp() <= agent.clock.wall() + 61


@pytest.mark.parametrize("enabled, status", [(True, "Accepted"), (False, "Rejected")])
async def test_TC_C_37_38_CS_clear_cache(csms201, make_agent201, enabled, status):
    agent = await make_agent201(defaults={"AuthCacheCtrlr.Enabled": enabled})
    link = await online201(agent, csms201)
    agent.storage.auth_cache_put("OLD", {"status": "Accepted"}, None)
    assert (await link.call("ClearCache", {}))["status"] == status
    assert (agent.storage.auth_cache_get("OLD") is None) is enabled


async def test_TC_C_39_CS_another_card_of_the_group_stops_the_transaction(csms201,
                                                                         make_agent201):
    csms201.parent_id_tags = {"CARD1": "FLEET", "CARD2": "FLEET"}
    agent = await make_agent201()
    await online201(agent, csms201)
    await charging201(agent, csms201, tag="CARD1")
    assert await agent.station.present_token(Token("CARD2")) == "stopped"
    end = await csms201.wait_for("TransactionEvent", station_id="CP1",
                                 predicate=lambda p: p["eventType"] == "Ended")
    assert end["triggerReason"] == "StopAuthorized"
    assert end["transactionInfo"]["stoppedReason"] == "Local"
    assert end["idToken"]["idToken"] == "CARD2", "the card that stopped it"


async def test_TC_C_26_CS_offline_unknown_id_refused_by_default(csms201, make_agent201):
    agent = await make_agent201()
    await online201(agent, csms201)
    await csms201.pause()
    await csms201.wait_disconnect("CP1")
    agent.hal.plug(1)
    assert await agent.station.present_token(Token("NEWCARD")) == "rejected"
    assert agent.storage.outbox_count() == 0


async def test_TC_E_52_CS_disable_remote_authorization_uses_local_sources_only(
        csms201, make_agent201):
    agent = await make_agent201(defaults={"AuthCtrlr.DisableRemoteAuthorization": True})
    link = await online201(agent, csms201)
    agent.hal.plug(1)
    assert await agent.station.present_token(Token("UNKNOWN")) == "rejected"
    await link.call("SendLocalList", {"versionNumber": 1, "updateType": "Full",
                                      "localAuthorizationList": [local_entry("LISTED")]})
    assert await agent.station.present_token(Token("LISTED")) == "authorized"
    assert csms201.messages("CP1", "Authorize") == []


async def test_local_pre_authorize_starts_without_a_round_trip(csms201, make_agent201):
    agent = await make_agent201(defaults={"AuthCtrlr.LocalPreAuthorize": True})
    link = await online201(agent, csms201)
    await link.call("SendLocalList", {"versionNumber": 1, "updateType": "Full",
                                      "localAuthorizationList": [local_entry("FAST")]})
    agent.hal.plug(1)
    assert await agent.station.present_token(Token("FAST")) == "authorized"
    await csms201.wait_for("TransactionEvent", station_id="CP1")
    assert csms201.messages("CP1", "Authorize") == []


async def test_local_list_blocked_token_refused_offline(csms201, make_agent201):
    agent = await make_agent201()
    link = await online201(agent, csms201)
    await link.call("SendLocalList", {"versionNumber": 1, "updateType": "Full",
                                      "localAuthorizationList": [
                                          local_entry("GOOD"), local_entry("BAD", "Blocked")]})
    await csms201.pause()
    await csms201.wait_disconnect("CP1")
    agent.hal.plug(1)
    assert await agent.station.present_token(Token("BAD")) == "rejected"
    assert await agent.station.present_token(Token("GOOD")) == "authorized"


# ---------------------------------------------------------------- D local list


async def test_D01_D02_send_local_list_full_differential_and_version(csms201, make_agent201):
    agent = await make_agent201()
    link = await online201(agent, csms201)
    assert await link.call("GetLocalListVersion", {}) == {"versionNumber": 0}
    full = await link.call("SendLocalList", {
        "versionNumber": 3, "updateType": "Full",
        "localAuthorizationList": [local_entry("A"), local_entry("B", group="G")]})
    assert full["status"] == "Accepted"
    assert await link.call("GetLocalListVersion", {}) == {"versionNumber": 3}
    stale = await link.call("SendLocalList", {"versionNumber": 3, "updateType": "Differential",
                                              "localAuthorizationList": [local_entry("C")]})
    assert stale["status"] == "VersionMismatch"
    diff = await link.call("SendLocalList", {
        "versionNumber": 4, "updateType": "Differential",
        "localAuthorizationList": [local_entry("C"),
                                   {"idToken": {"idToken": "A", "type": "ISO14443"}}]})
    assert diff["status"] == "Accepted"
    assert agent.storage.local_list_get("A") is None
    assert agent.storage.local_list_get("C")["status"] == "Accepted"
    assert agent.storage.local_list_get("B")["parent"] == "G"  # stored in the neutral form
    entries = await link.call("GetVariables", {"getVariableData": [{
        "component": {"name": "LocalAuthListCtrlr"}, "variable": {"name": "Entries"}}]})
    assert entries["getVariableResult"][0]["attributeValue"] == "2"
    cleared = await link.call("SendLocalList", {"versionNumber": 5, "updateType": "Full"})
    assert cleared["status"] == "Accepted" and agent.storage.local_list_count() == 0


async def test_local_list_disabled_refuses_updates(csms201, make_agent201):
    agent = await make_agent201(defaults={"LocalAuthListCtrlr.Enabled": False})
    link = await online201(agent, csms201)
    res = await link.call("SendLocalList", {"versionNumber": 1, "updateType": "Full",
                                            "localAuthorizationList": [local_entry("A")]})
    assert res["status"] == "Failed"
    assert agent.storage.local_list_count() == 0
