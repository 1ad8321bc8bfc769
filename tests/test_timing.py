"""Intervals on the injectable clock, on every version: heartbeat, boot retry, connection
time-out, transaction message retry.

The agent runs for real against the strict test CSMS over websockets on 127.0.0.1, but its
clock is a :class:`FakeClock`: the tests move time by minutes in milliseconds and check that
nothing happens a second early and that it happens on time.  The CSMS's own real-time check of
boot retries is off (``strict_timing``): here the fake clock is the time that counts.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from agent.app import Agent
from agent.clock import FakeClock
from agent.testing.csms import CsmsCallError, TestCsms
from tests.conftest import VERSIONS_201_PLUS, eventually, version_rig

VERSIONS = ("1.6", *VERSIONS_201_PLUS)


@pytest.fixture(params=VERSIONS)
def version(request: pytest.FixtureRequest) -> str:
    return request.param


def rig(version: str, state: Path, **kw: Any) -> Any:
    """A CSMS and a factory of agents on a fake clock (see conftest.version_rig)."""
    return version_rig(version, state, fake_clock=True, **kw)


async def sleeping(clock: FakeClock, seconds: float) -> None:
    """Until something sleeps ``seconds`` on the fake clock (time only moves once it does)."""
    await eventually(lambda: any(abs(d - seconds) < 0.01 for d in clock.pending()),
                     f"a {seconds} s wait began")


def count(csms: TestCsms, action: str) -> int:
    return len(csms.messages("CP1", action))


async def online(agent: Agent) -> None:
    await asyncio.wait_for(agent.adapter.accepted.wait(), 5)
    await asyncio.wait_for(agent.adapter.outbox.idle.wait(), 5)
    await agent.station.quiet()


async def test_heartbeat_goes_at_the_interval_the_boot_answer_gave(version, short_dir):
    async with rig(version, short_dir) as (csms, make):
        csms.heartbeat_interval = 300
        agent = await make()
        await online(agent)
        clock: FakeClock = agent.clock  # type: ignore[assignment]
        await sleeping(clock, 300)
        await clock.advance(299)
        await agent.station.quiet()
        assert count(csms, "Heartbeat") == 0, "a heartbeat before the interval"
        await clock.advance(1)
        await csms.wait_for("Heartbeat", station_id="CP1")
        await sleeping(clock, 300)
        await clock.advance(299)
        await agent.station.quiet()
        assert count(csms, "Heartbeat") == 1
        await clock.advance(1)
        await csms.wait_for("Heartbeat", station_id="CP1", count=2)


@pytest.mark.parametrize("first", ["Pending", "Rejected"])
async def test_boot_not_accepted_is_retried_at_the_interval_it_gave(version, first, short_dir):
    """1.6 4.2 / 2.0.1 B02, B03 (TC_B_02_CS, TC_B_03_CS): the next BootNotification after the
    interval the answer gave, and nothing else sent meanwhile, whatever happens locally."""
    async with rig(version, short_dir) as (csms, make):
        csms.boot_status, csms.boot_interval = first, 120
        agent = await make()
        await csms.wait_for("BootNotification", station_id="CP1")
        clock: FakeClock = agent.clock  # type: ignore[assignment]
        await sleeping(clock, 120)
        agent.hal.plug(1)
        agent.hal.tap("TAG1")
        await clock.advance(119)
        await agent.station.quiet()
        assert count(csms, "BootNotification") == 1, "retried before the interval"
        csms.boot_status = "Accepted"
        await clock.advance(1)
        await csms.wait_for("BootNotification", station_id="CP1", count=2)
        await online(agent)
        calls = [m.action for m in csms.log if m.direction == "cs->csms" and m.kind == "CALL"]
        assert calls[:2] == ["BootNotification", "BootNotification"], calls
        assert agent.adapter.registration == "Accepted"


async def test_authorization_without_a_plug_lapses_after_the_connection_timeout(
        version, short_dir):
    async with rig(version, short_dir, defaults={"ConnectionTimeOut": 90}) as (csms, make):
        agent = await make()
        await online(agent)
        clock: FakeClock = agent.clock  # type: ignore[assignment]
        agent.hal.tap("TAG1")
        await agent.station.quiet()
        assert agent.station.evses[1].snapshot().authorized
        await sleeping(clock, 90)
        await clock.advance(89)
        await agent.station.quiet()
        assert agent.station.evses[1].snapshot().authorized, "dropped before the time-out"
        await clock.advance(1)
        await eventually(lambda: not agent.station.evses[1].snapshot().authorized,
                         "the authorization lapsed")
        agent.hal.plug(1)
        await agent.station.quiet()
        assert not agent.hal.evses[1].contactor.commanded_closed
        assert csms.messages("CP1", "StartTransaction") == []
        assert [p for p in csms.messages("CP1", "TransactionEvent")
                if p["eventType"] == "Started"] == []


def _is_end(version: str, payload: dict) -> bool:
    return version == "1.6" or payload.get("eventType") == "Ended"


async def test_refused_transaction_message_is_retried_at_the_retry_interval(version, short_dir):
    defaults = {"TransactionMessageRetryInterval": 30, "TransactionMessageAttempts": 3}
    async with rig(version, short_dir, defaults=defaults) as (csms, make):
        agent = await make()
        await online(agent)
        clock: FakeClock = agent.clock  # type: ignore[assignment]
        agent.hal.plug(1)
        agent.hal.tap("TAG1")
        await eventually(lambda: agent.hal.evses[1].contactor.commanded_closed, "charging")
        await asyncio.wait_for(agent.adapter.outbox.idle.wait(), 5)
        action = "StopTransaction" if version == "1.6" else "TransactionEvent"

        def ends(payload: dict) -> bool:
            return _is_end(version, payload)

        def refuse(link: Any, payload: dict) -> None:
            if ends(payload):
                raise CsmsCallError("InternalError", "cannot store it")
            # None: the CSMS's own answer for every other message

        csms.overrides[action] = refuse
        agent.hal.unplug(1)
        await csms.wait_for(action, station_id="CP1", predicate=ends)
        # The n-th retry waits n retry intervals (2.0.1 E13: MessageAttemptInterval * n).
        for attempt, wait in ((2, 30), (3, 60)):
            await sleeping(clock, wait)
            await clock.advance(wait - 1)
            await agent.station.quiet()
            sent = [p for p in csms.messages("CP1", action) if ends(p)]
            assert len(sent) == attempt - 1, f"attempt {attempt} came early"
            await clock.advance(1)
            await csms.wait_for(action, station_id="CP1", predicate=ends, count=attempt)
        await asyncio.wait_for(agent.adapter.outbox.idle.wait(), 5)
        assert agent.adapter.outbox.dropped == 1, "dropped after TransactionMessageAttempts"
