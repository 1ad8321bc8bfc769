"""The operator's view: what a technician reads in the daemon's log at INFO, on both versions.

One session, told by the log: the connection, the boot, the plug, the card (accepted, then a
refused one), the EV asking for energy, the contactor, the transaction with the id the CSMS
knows, the stop with the card, the unplug, a fault and its clearing, a lost connection. Each
appears once, in order, in one line.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from agent.app import Agent
from agent.control import render_status
from agent.testing.csms import TestCsms
from tests.conftest import agent_config, strict_csms, tx_events

SID = "CP1"


@pytest.fixture(params=["1.6", "2.0.1"])
def version(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def csms(version: str) -> AsyncIterator[TestCsms]:
    async with strict_csms((version,)) as server:
        server.authorize = {"TAG1": "Accepted"}  # any other card is Invalid
        yield server


@pytest.fixture
async def agent(csms: TestCsms, version: str, short_dir: Path) -> AsyncIterator[Agent]:
    a = Agent(agent_config(csms.url, short_dir, versions=(version,)))
    yield a
    await a.stop()


def _story(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name.startswith("cp_agent") and r.levelno >= logging.INFO]


async def _delivered(agent: Agent) -> None:
    await asyncio.wait_for(agent.adapter.outbox.idle.wait(), 5)


async def test_the_log_tells_the_session(agent: Agent, csms: TestCsms, version: str,
                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    await agent.start()
    await asyncio.wait_for(agent.adapter.accepted.wait(), 5)
    link = await csms.wait_station(SID)
    hal = agent.hal

    hal.plug(1)
    hal.tap("TAG1")
    if version == "1.6":
        start = await csms.wait_for("StartTransaction", station_id=SID)
        assert start["idTag"] == "TAG1"
        await _delivered(agent)
        await csms.wait_for("StatusNotification", station_id=SID,
                            predicate=lambda p: p["status"] == "Charging")
        csms_id = str(next(iter(csms.transactions)))
    else:
        started = await csms.wait_for("TransactionEvent", station_id=SID,
                                      predicate=lambda p: p["eventType"] == "Started")
        await csms.wait_for("TransactionEvent", station_id=SID,
                            predicate=lambda p: p["transactionInfo"].get("chargingState")
                            == "Charging")
        csms_id = started["transactionInfo"]["transactionId"]
    await agent.station.quiet()
    local = agent.station.evses[1].tx.local_id

    # The status speaks the words of the version the CSMS hears (2.0.1: Occupied).
    evse = agent.status()["evses"][0]
    assert evse["status"] == "Charging"
    assert evse["connector_status"] == ("Charging" if version == "1.6" else "Occupied")
    assert str(evse["transaction_id"]) == csms_id
    shown = render_status(agent.status())
    assert ("EVSE 1: Charging" if version == "1.6" else "EVSE 1: Occupied (Charging)") in shown

    hal.tap("BAD")  # refused by the CSMS while TAG1 charges
    await agent.station.quiet()
    hal.tap("TAG1")  # the same card stops its session
    if version == "1.6":
        await csms.wait_for("StopTransaction", station_id=SID)
    else:
        await csms.wait_for("TransactionEvent", station_id=SID,
                            predicate=lambda p: p["eventType"] == "Ended")
        assert len(tx_events(csms, SID, eventType="Ended")) == 1
    await agent.station.quiet()
    hal.unplug(1)
    await agent.station.quiet()
    hal.inject_fault(1, "over_current")
    await agent.station.quiet()
    hal.clear_fault(1, "over_current")
    await agent.station.quiet()
    await _delivered(agent)
    assert link is not None
    await csms.kick(SID)
    await asyncio.wait_for(agent.link.connected.wait(), 5)  # back again

    story = _story(caplog)
    told = "\n".join(story)
    url = re.escape(f"{csms.url}{SID}")
    chapters = [
        rf"connected to {url} with OCPP {re.escape(version)}$",
        r"BootNotification accepted",
        r"evse 1: pilot A -> B: EV plugged in$",
        r"evse 1: token TAG1 authorized \(Accepted, online\)$",
        rf"evse 1: transaction {local} started \(PowerPathClosed, token TAG1",
        r"evse 1: pilot B -> C: EV asks for energy$",
        r"evse 1: contactor closed \([0-9.]+ A offered\)$",
        r"token BAD: Invalid \(online\)$",
        r"evse 1: authorization ended \(Local, by token TAG1\)$",
        r"evse 1: contactor opened$",
        rf"evse 1: transaction {local}.* ended \(Local, [0-9.]+ Wh\)$",
        r"evse 1: pilot C -> B: EV does not ask for energy$",
        r"evse 1: pilot B -> A: EV unplugged$",
        r"evse 1: fault over_current: injected$",
        r"evse 1: fault over_current cleared$",
        rf"connection to {url} closed \(closed by test CSMS\)$",
    ]
    at = -1
    for chapter in chapters:
        lines = [i for i, line in enumerate(story) if re.search(chapter, line)]
        expected = 2 if chapter.startswith("connected to") else 1  # once more after the kick
        assert len(lines) == expected, f"{chapter!r} told {len(lines)} times:\n{told}"
        assert lines[0] > at, f"{chapter!r} out of order:\n{told}"
        at = lines[0]
    # The transaction id the CSMS knows is in the log, once the CSMS knows it.
    if version == "1.6":
        mapping = [i for i, line in enumerate(story)
                   if line == f"transaction {local} is CSMS transaction {csms_id}"]
        assert len(mapping) == 1, told
        ended = next(i for i, line in enumerate(story) if f"transaction {local}" in line
                     and "ended" in line)
        assert mapping[0] < ended, told
        assert f"transaction {local} (CSMS transaction {csms_id}) ended" in told
    else:
        assert local == csms_id  # 2.0.1: the station's own id is the transactionId
