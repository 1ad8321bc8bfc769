"""A dropped connection is freed at once, not at the next full collection (issue 18, the rest
of the 2.1 memory growth of the hostile-frames campaign).

Two cycles held every dead connection until the collector's oldest generation was collected:
websockets keeps the exception that ended a connection (the ``PayloadTooBig`` of a frame over
the link's 1 MiB, the ``EOFError`` of a dropped TCP connection) as ``protocol.parser_exc``,
whose traceback runs through the parser's frame back to the protocol and its receive buffer;
and a CALL pending as the link drops fails with the future's own ``ConnectionLost``, whose
traceback held ``RpcSession.call``'s frame and so the future holding it, the session and its
``ws.send``.  Here the collector is off while a connection dies and the agent reconnects, and
what one collection then finds is the cyclic garbage left: none of the link's objects.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import pytest

from agent.link.rpc import CallErrorReceived, CallTimeout, ConnectionLost, RpcSession
from agent.testing.csms import NO_REPLY
from tests.conftest import version_rig
from tests.test_rpc import Wire
from tests.test_transfer_memory import cyclic_garbage

SID = "CP1"
# What one connection of the agent is made of; any of them in the cyclic garbage is the leak.
LINK_TYPES = ("ClientConnection", "ClientProtocol", "RpcSession")
OVERSIZED = '"' + "x" * ((1 << 20) + 16) + '"'  # one frame over the link's max_size


def link_garbage(found: Counter[str]) -> dict[str, int]:
    return {name: found[name] for name in LINK_TYPES if found[name]}


@pytest.mark.parametrize("how", ["oversized frame", "CALL pending, TCP dropped"])
@pytest.mark.parametrize("version", ["1.6", "2.0.1", "2.1"])
async def test_a_dropped_connection_leaves_no_cycle(version: str, how: str,
                                                    short_dir: Path) -> None:
    """Two connections die, each its way; the agent reconnects after each.  Before the fix
    each dead one left its ClientConnection, ClientProtocol and RpcSession here."""
    async with version_rig(version, short_dir) as (csms, make):
        agent = await make()
        await asyncio.wait_for(agent.adapter.accepted.wait(), 5)
        link = await csms.wait_station(SID)
        await _settled(agent)
        with cyclic_garbage() as found:
            for _ in range(2):
                connects = agent.link.connects
                if how == "oversized frame":
                    await link.send_raw(OVERSIZED)  # the agent closes with 1009
                else:
                    await _heartbeat_unanswered(csms, link)
                    await csms.drop_connection(SID)
                await csms.wait_disconnect(SID)
                link = await csms.wait_station(SID)
                await asyncio.wait_for(agent.adapter.accepted.wait(), 5)
                assert agent.link.connects == connects + 1
                await _settled(agent)
        assert link_garbage(found) == {}, found.most_common(15)


async def _heartbeat_unanswered(csms, link) -> None:  # noqa: ANN001 - test CSMS objects
    """The agent's Heartbeat (asked for with TriggerMessage) is pending: the CSMS holds it."""
    asked = asyncio.Event()

    def hold(_link: object, _payload: dict) -> object:
        asked.set()
        return NO_REPLY

    csms.overrides["Heartbeat"] = hold
    try:
        res = await link.call("TriggerMessage", {"requestedMessage": "Heartbeat"})
        assert res["status"] == "Accepted"
        await asyncio.wait_for(asked.wait(), 5)
    finally:
        del csms.overrides["Heartbeat"]


async def _settled(agent) -> None:  # noqa: ANN001 - the Agent
    await asyncio.wait_for(agent.adapter.outbox.idle.wait(), 5)
    await agent.station.quiet()


@pytest.mark.parametrize("ending", ["closed", "timeout", "CALLERROR"])
async def test_a_failed_call_raises_as_before_and_leaves_no_cycle(ending: str) -> None:
    """Each way a pending CALL fails raises the future's exception, type and text unchanged;
    its traceback no longer leads back to the future, so the session is freed with it."""
    expected = {
        "closed": (ConnectionLost, "ocpp1.6: connection closed while waiting for Heartbeat"),
        "timeout": (CallTimeout, "no answer to Heartbeat within 0.05 s"),
        "CALLERROR": (CallErrorReceived, "Heartbeat answered with GenericError: busy"),
    }[ending]
    with cyclic_garbage() as found:
        wire = Wire()
        session = RpcSession("1.6", wire.send, {}, default_timeout=0.05)
        call = asyncio.create_task(session.call("Heartbeat", {}))
        _, unique_id, _, _ = await wire.next()
        if ending == "closed":
            session.close()
        elif ending == "CALLERROR":
            await session.feed(f'[4,"{unique_id}","GenericError","busy",{{}}]')
        # Waited for with asyncio.wait, not wait_for: wait_for's own frame would hold the
        # task, and so its exception, in a cycle of the test's making.
        done, _ = await asyncio.wait({call}, timeout=5)
        assert done == {call}
        exc = call.exception()
        assert (type(exc), str(exc)) == expected
        assert exc.__traceback__ is not None  # the caller still sees where it was raised
        del call, done, exc, session
    assert {n: found[n] for n in ("RpcSession", "Future", "_Pending") if found[n]} == {}, \
        found.most_common(15)
