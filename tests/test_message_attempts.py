"""A transaction message the CSMS does not answer is a failed attempt (2.0.1 E13, 1.6 4.7).

TC_E_41_CS: with no reply the station sends the message MessageAttempts times, waiting the
interval times the preceding transmissions (plus the message timeout) between them, then stops
resending; TC_E_42_CS: an answer to a resend ends the retries.  1.6 (TransactionMessageAttempts
/ TransactionMessageRetryInterval) behaves the same way: one test, both versions.
"""

from __future__ import annotations

import asyncio
from typing import Any

from agent.testing.csms import NO_REPLY
from tests.conftest import eventually
from tests.test_shared_behaviour import SID, kit, make, server  # noqa: F401 - fixtures

ATTEMPTS = {"TransactionMessageAttempts": 2, "TransactionMessageRetryInterval": 1}


async def test_TC_E_41_CS_unanswered_end_is_sent_message_attempts_times_then_dropped(
        kit, server, make):  # noqa: F811
    agent = await make(call_timeout_s=0.5, defaults=ATTEMPTS)
    await kit.online(agent, server)
    await kit.charging(agent, server, "TAG1")
    unanswered: list[dict] = []

    def no_reply(_link: Any, payload: dict) -> Any:
        if kit.is_end(payload):
            unanswered.append(payload)
            return NO_REPLY
        return None

    server.overrides[kit.end_action] = no_reply
    agent.hal.unplug(1)
    await eventually(lambda: len(unanswered) == 2, "the end sent twice", timeout=10)
    await asyncio.wait_for(agent.adapter.outbox.idle.wait(), 5)
    assert unanswered[0] == unanswered[1], "the identical message again"
    assert agent.adapter.outbox.dropped == 1
    dropped = agent.storage.outbox_dropped()
    assert [d["action"] for d in dropped] == [kit.end_action]
    assert "no answer" in dropped[0]["reason"]
    # The next session's messages flow; the dropped end is not sent a third time.
    del server.overrides[kit.end_action]
    await kit.charging(agent, server, "TAG2")
    agent.hal.unplug(1)
    await eventually(lambda: len(kit.ends(server)) == 3, "the second session's end")
    assert kit.ends(server)[-1] != unanswered[0]
    assert agent.link.connects == 1, "a time-out is not a reconnect"


async def test_TC_E_42_CS_answer_to_the_resend_ends_the_retries(kit, server, make):  # noqa: F811
    agent = await make(call_timeout_s=0.5, defaults={**ATTEMPTS,
                                                     "TransactionMessageAttempts": 3})
    await kit.online(agent, server)
    await kit.charging(agent, server, "TAG1")
    seen: list[dict] = []

    def first_unanswered(_link: Any, payload: dict) -> Any:
        if kit.is_end(payload):
            seen.append(payload)
            if len(seen) == 1:
                return NO_REPLY
        return None

    server.overrides[kit.end_action] = first_unanswered
    agent.hal.unplug(1)
    await eventually(lambda: len(seen) == 2, "resent after the time-out", timeout=10)
    await asyncio.wait_for(agent.adapter.outbox.idle.wait(), 5)
    assert agent.adapter.outbox.dropped == 0 and agent.storage.outbox_dropped() == []
    assert agent.storage.outbox_count() == 0, "acknowledged by the answer to the resend"
    assert agent.station.evses[1].tx is None
