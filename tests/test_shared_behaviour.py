"""Behaviour both OCPP versions share, tested once per version against the strict test CSMS.

Each test is a regression test for a bug seen in one version or both; most run for 1.6 and
2.0.1 through the ``kit`` fixture, whose :class:`Kit` knows how each version says "a
transaction started / ended" and "the status of connector 1" on the wire.  Only stable
surfaces of the agent are used: ``agent.adapter`` (``accepted``, ``outbox.idle``,
``registration``), ``agent.station.evses`` / ``settled()``, ``agent.storage``, ``agent.hal``,
``agent.status()`` / ``handle_control()``, ``start()`` / ``stop()``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from agent.app import Agent
from agent.clock import FakeClock, parse_iso
from agent.storage import StorageError
from agent.testing.csms import CS_TO_CSMS, NO_REPLY, CsmsCallError, TestCsms
from hal.mock import MockHal
from tests.conftest import agent_config, eventually, strict_csms

SID = "CP1"

# ====================================================================== per-version kit


class Kit:
    """What differs between the versions as far as these tests are concerned."""

    version: str
    start_action: str  # the action that carries a transaction start
    end_action: str  # and its end

    @property
    def versions(self) -> tuple[str, ...]:
        return (self.version,)

    def __repr__(self) -> str:
        return f"Kit({self.version})"

    # -- reading frames
    def is_start(self, p: dict) -> bool:
        raise NotImplementedError

    def is_end(self, p: dict) -> bool:
        raise NotImplementedError

    def is_periodic(self, action: str, p: dict) -> bool:
        """A periodic meter sample of a running transaction."""
        raise NotImplementedError

    def status_of(self, p: dict, connector: int = 1) -> str | None:
        """The status a StatusNotification gives ``connector``; None if about another one."""
        raise NotImplementedError

    def start_time(self, p: dict) -> datetime:
        return parse_iso(p["timestamp"])

    def sample_time(self, p: dict) -> datetime:
        return parse_iso(p["meterValue"][0]["timestamp"])

    def end_register(self, p: dict) -> float:
        """The meter register a transaction end reports as its final reading (Wh)."""
        raise NotImplementedError

    def sample_action(self) -> str:
        raise NotImplementedError

    def starts(self, csms: TestCsms) -> list[dict]:
        return [p for p in csms.messages(SID, self.start_action) if self.is_start(p)]

    def ends(self, csms: TestCsms) -> list[dict]:
        return [p for p in csms.messages(SID, self.end_action) if self.is_end(p)]

    # -- driving
    async def online(self, agent: Agent, csms: TestCsms, timeout: float = 5.0) -> Any:
        raise NotImplementedError

    async def charging(self, agent: Agent, csms: TestCsms, tag: str = "TAG1",
                       evse: int = 1) -> dict:
        raise NotImplementedError

    async def set_sample_interval(self, link: Any, seconds: int) -> None:
        raise NotImplementedError


class Kit16(Kit):
    version = "1.6"
    start_action = "StartTransaction"
    end_action = "StopTransaction"

    def is_start(self, p: dict) -> bool:
        return "idTag" in p and "meterStart" in p

    def is_end(self, p: dict) -> bool:
        return "meterStop" in p

    def is_periodic(self, action: str, p: dict) -> bool:
        return (action == "MeterValues" and "transactionId" in p
                and p["meterValue"][0]["sampledValue"][0].get("context") == "Sample.Periodic")

    def sample_action(self) -> str:
        return "MeterValues"

    def status_of(self, p: dict, connector: int = 1) -> str | None:
        return p["status"] if p.get("connectorId") == connector else None

    def end_register(self, p: dict) -> float:
        return float(p["meterStop"])

    async def online(self, agent: Agent, csms: TestCsms, timeout: float = 5.0) -> Any:
        await asyncio.wait_for(agent.adapter.accepted.wait(), timeout)
        link = await csms.wait_station(SID, timeout)
        await csms.wait_for("StatusNotification", station_id=SID, timeout=timeout,
                            predicate=lambda p: p["connectorId"] == 0)
        return link

    async def charging(self, agent: Agent, csms: TestCsms, tag: str = "TAG1",
                       evse: int = 1) -> dict:
        agent.hal.plug(evse)
        agent.hal.tap(tag)
        start = await csms.wait_for(
            "StartTransaction", station_id=SID,
            predicate=lambda p: p["idTag"] == tag and p["connectorId"] == evse)
        await asyncio.wait_for(agent.adapter.outbox.idle.wait(), 5)
        return start

    async def set_sample_interval(self, link: Any, seconds: int) -> None:
        res = await link.call("ChangeConfiguration", {"key": "MeterValueSampleInterval",
                                                      "value": str(seconds)})
        assert res["status"] == "Accepted", res


class Kit201(Kit):
    version = "2.0.1"
    start_action = "TransactionEvent"
    end_action = "TransactionEvent"

    def is_start(self, p: dict) -> bool:
        return p["eventType"] == "Started"

    def is_end(self, p: dict) -> bool:
        return p["eventType"] == "Ended"

    def is_periodic(self, action: str, p: dict) -> bool:
        return action == "TransactionEvent" and p["triggerReason"] == "MeterValuePeriodic"

    def sample_action(self) -> str:
        return "TransactionEvent"

    def status_of(self, p: dict, connector: int = 1) -> str | None:
        return p["connectorStatus"] if p.get("evseId") == connector else None

    def end_register(self, p: dict) -> float:
        for mv in p.get("meterValue", []):
            for sv in mv["sampledValue"]:
                if sv.get("context") == "Transaction.End" and sv.get(
                        "measurand", "Energy.Active.Import.Register") \
                        == "Energy.Active.Import.Register":
                    return float(sv["value"])
        raise AssertionError(f"no Transaction.End energy register in {p}")

    async def online(self, agent: Agent, csms: TestCsms, timeout: float = 5.0) -> Any:
        await asyncio.wait_for(agent.adapter.accepted.wait(), timeout)
        link = await csms.wait_station(SID, timeout)
        for evse_id in agent.station.evses:
            await csms.wait_for("StatusNotification", station_id=SID, timeout=timeout,
                                predicate=lambda p, e=evse_id: p["evseId"] == e)
        await asyncio.wait_for(agent.adapter.outbox.idle.wait(), timeout)
        return link

    async def charging(self, agent: Agent, csms: TestCsms, tag: str = "TAG1",
                       evse: int = 1) -> dict:
        agent.hal.plug(evse)
        agent.hal.tap(tag)
        started = await csms.wait_for(
            "TransactionEvent", station_id=SID,
            predicate=lambda p: p["eventType"] == "Started" and p["evse"]["id"] == evse
            and p.get("idToken", {}).get("idToken") == tag)
        tx_id = started["transactionInfo"]["transactionId"]
        await csms.wait_for(
            "TransactionEvent", station_id=SID,
            predicate=lambda p: p["transactionInfo"]["transactionId"] == tx_id
            and p["transactionInfo"].get("chargingState") == "Charging")
        await asyncio.wait_for(agent.adapter.outbox.idle.wait(), 5)
        return started

    async def set_sample_interval(self, link: Any, seconds: int) -> None:
        res = await link.call("SetVariables", {"setVariableData": [{
            "component": {"name": "SampledDataCtrlr"},
            "variable": {"name": "TxUpdatedInterval"}, "attributeValue": str(seconds)}]})
        assert res["setVariableResult"][0]["attributeStatus"] == "Accepted", res


class Kit21(Kit201):
    """2.1 says all of this as 2.0.1 does (the same blocks, carried over)."""

    version = "2.1"


KITS: dict[str, Kit] = {"1.6": Kit16(), "2.0.1": Kit201(), "2.1": Kit21()}


@pytest.fixture(params=list(KITS))
def kit(request: pytest.FixtureRequest) -> Kit:
    return KITS[request.param]


@pytest.fixture
async def server(kit: Kit) -> AsyncIterator[TestCsms]:
    """A strict test CSMS speaking only the kit's version."""
    async with strict_csms(kit.versions) as csms:
        yield csms


MakeAgent = Callable[..., Any]


@pytest.fixture
async def make(kit: Kit, server: TestCsms, short_dir: Path) -> AsyncIterator[MakeAgent]:
    """Agents of the kit's version on one state file; all stopped at the end.

    ``call_timeout_s`` shortens how long the agent waits for an answer; ``clock`` and ``hal``
    are passed to :class:`Agent`.
    """
    agents: list[Agent] = []

    async def make_(start: bool = True, *, clock: Any = None, hal: Any = None,
                    call_timeout_s: float | None = None, **kw: Any) -> Agent:
        kw.setdefault("versions", kit.versions)
        cfg = agent_config(server.url, short_dir, **kw)
        if call_timeout_s is not None:
            cfg.ocpp.call_timeout_s = call_timeout_s
        agent = Agent(cfg, clock=clock, hal=hal)
        agents.append(agent)
        if start:
            await agent.start()
        return agent

    yield make_
    for agent in agents:
        await agent.stop()


only_16 = pytest.mark.parametrize("kit", ["1.6"], indirect=True)

# ====================================================================== helpers


def calls_since(csms: TestCsms, mark: int) -> list[Any]:
    """The station's CALLs logged from index ``mark`` on, as Message records."""
    return [m for m in csms.log[mark:] if m.direction == CS_TO_CSMS and m.kind == "CALL"
            and m.station_id == SID]


async def wait_since(csms: TestCsms, mark: int, action: str,
                     predicate: Callable[[dict], bool] | None = None,
                     timeout: float = 5.0) -> dict:
    """Wait for a matching CALL logged at index ``mark`` or later."""
    def match(p: dict) -> bool:
        try:
            return predicate is None or bool(predicate(p))
        except (KeyError, IndexError, TypeError):
            return False

    before = sum(1 for m in csms.log[:mark] if m.direction == CS_TO_CSMS and m.kind == "CALL"
                 and m.station_id == SID and m.action == action and match(m.payload))
    return await csms.wait_for(action, station_id=SID, predicate=match, count=before + 1,
                               timeout=timeout)


def connects(csms: TestCsms) -> int:
    return sum(1 for _, sid, event in csms.connection_log
               if sid == SID and event.startswith("connected"))


def boots(csms: TestCsms) -> int:
    return len(csms.messages(SID, "BootNotification"))


async def go_offline(agent: Agent, csms: TestCsms) -> None:
    """A CSMS outage: stop listening, drop the connection, wait until the agent noticed."""
    await csms.pause(abrupt=True)
    await eventually(lambda: agent.status()["link"] != "connected",
                     "the agent noticed the outage")


async def power_cut(agent: Agent) -> None:
    """What kill -9 leaves behind, in-process (as tests/test_durability.py does): nothing
    ended, nothing flushed, the state file closed."""
    agent._stopped = True  # the fixture's stop() must not end the transactions either
    for task in agent._tasks:
        task.cancel()
    await asyncio.gather(*agent._tasks, return_exceptions=True)
    await agent.adapter.stop()
    for task in list(agent.station._tasks):
        task.cancel()
    await asyncio.gather(*agent.station._tasks, return_exceptions=True)
    if agent.control is not None:
        await agent.control.stop()
    agent.storage.close()


async def advance(clock: FakeClock, seconds: float, step: float = 0.05) -> None:
    """Move the fake clock in small steps, letting the loop run the woken tasks each time."""
    for _ in range(round(seconds / step)):
        await clock.advance(step)
        for _ in range(20):
            await asyncio.sleep(0)


def evse1(status: dict) -> dict:
    return next(e for e in status["evses"] if e["evse"] == 1)


# ====================================================================== 1. status time-out


async def test_unanswered_status_notification_does_not_stop_later_statuses(kit, server, make):
    agent = await make(call_timeout_s=0.5)
    link = await kit.online(agent, server)
    connected, booted = connects(server), boots(server)
    swallowed: list[dict] = []

    def swallow_once(_link: Any, payload: dict) -> Any:
        if swallowed:
            return None  # answered normally from now on
        swallowed.append(payload)
        return NO_REPLY

    server.overrides["StatusNotification"] = swallow_once
    agent.hal.plug(1)
    await server.wait_for("StatusNotification", station_id=SID,
                          predicate=lambda p: kit.status_of(p) not in (None, "Available"))
    assert swallowed, "the status after the plug was the one left unanswered"
    # A Heartbeat can only go out once the unanswered CALL timed out (one CALL in flight).
    mark = len(server.log)
    await link.call("TriggerMessage", {"requestedMessage": "Heartbeat"})
    await wait_since(server, mark, "Heartbeat", timeout=5)
    mark = len(server.log)
    agent.hal.unplug(1)
    await wait_since(server, mark, "StatusNotification",
                     lambda p: kit.status_of(p) == "Available", timeout=5)
    assert (connects(server), boots(server)) == (connected, booted), "no reconnect needed"


# ====================================================================== 2. power-loss recovery


async def test_power_loss_recovery_ends_with_the_plausible_meter_register(kit, server, make):
    first = await make()
    await kit.online(first, server)
    await kit.charging(first, server, "TAG1")
    tx = first.station.evses[1].tx
    local_id = tx.local_id
    # Charge until the journal holds a reading (meter_persist_s is 1 s in the tests).
    await eventually(lambda: tx.last_meter_wh > 0, "a meter reading was journalled")
    path = first.cfg.storage.path
    storage_cls = type(first.storage)
    await power_cut(first)
    with storage_cls(path) as storage:
        journal = storage.tx_get(local_id)
    assert journal is not None and not journal.closed
    register = journal.last_meter_wh + 2.0  # the meter kept its register: slightly ahead
    hal = MockHal(1, ev_max_current_a=16)
    hal.sims[1].energy_wh = register
    second = await make(hal=hal)
    end = await server.wait_for(kit.end_action, station_id=SID, predicate=kit.is_end,
                                timeout=10)
    await asyncio.wait_for(second.adapter.outbox.idle.wait(), 5)
    if kit.version == "1.6":
        assert end["reason"] == "PowerLoss"
    else:
        assert end["transactionInfo"]["stoppedReason"] == "PowerLoss"
    reported = kit.end_register(end)
    assert reported == pytest.approx(register, abs=0.5 if kit.version == "1.6" else 0.01), (
        f"ended with {reported} Wh; meter register {register:.3f} Wh, "
        f"last journalled {journal.last_meter_wh:.3f} Wh")
    assert len(kit.ends(server)) == 1


# ====================================================================== 3. storage errors


@pytest.mark.parametrize("broken", ["lookup", "cache_write"])
async def test_storage_error_during_authorization_does_not_escape(kit, server, make, broken):
    """The local list / cache fails while a card is authorized: the CSMS still decides, the
    session goes on, and the agent keeps working once the disk is back."""
    agent = await make()
    await kit.online(agent, server)
    methods = {"lookup": ("local_list_get", "auth_cache_get"),
               "cache_write": ("auth_cache_put",)}[broken]
    originals = {name: getattr(agent.storage, name) for name in methods
                 if hasattr(agent.storage, name)}
    assert originals, f"storage has none of {methods}"
    hits: list[str] = []

    def failing(name: str) -> Callable[..., Any]:
        def fail(*args: Any, **kwargs: Any) -> Any:
            hits.append(name)
            raise StorageError("state database x: disk I/O error", "io")
        return fail

    for name in originals:
        setattr(agent.storage, name, failing(name))

    def heal(_link: Any, _payload: dict) -> None:
        for name, fn in originals.items():
            setattr(agent.storage, name, fn)
        return None  # the CSMS's ordinary answer

    # The disk comes back the moment the CSMS has the card (lookup) or the start (cache
    # write): the failure window is exactly the authorization.
    server.overrides["Authorize" if broken == "lookup" else kit.start_action] = heal
    agent.hal.plug(1)
    agent.hal.tap("TAG1")
    await server.wait_for("Authorize", station_id=SID, timeout=5)
    await server.wait_for(kit.start_action, station_id=SID, predicate=kit.is_start, timeout=5)
    assert hits, "the storage error happened during the authorization"
    await eventually(lambda: agent.hal.evses[1].contactor.commanded_closed,
                     "the contactor closed for the accepted card")
    server.overrides.clear()
    agent.hal.unplug(1)
    await server.wait_for(kit.end_action, station_id=SID, predicate=kit.is_end, timeout=5)
    await kit.charging(agent, server, "TAG2")
    assert len(kit.starts(server)) == 2, "the agent keeps working"


# ====================================================================== 4. Authorize CALLERROR


async def test_authorize_answered_with_callerror_is_a_refusal_not_offline(kit, server, make):
    agent = await make(defaults={"AllowOfflineTxForUnknownId": True})
    await kit.online(agent, server)

    def refuse(_link: Any, _payload: dict) -> None:
        raise CsmsCallError("InternalError", "cannot look it up")

    server.overrides["Authorize"] = refuse
    agent.hal.plug(1)
    agent.hal.tap("STRANGER")
    await server.wait_for("Authorize", station_id=SID, timeout=5)
    await asyncio.wait_for(agent.station.settled(), 5)
    # Nothing to wait for when the agent does nothing: give a wrong start a bounded chance.
    with contextlib.suppress(TimeoutError):
        start = await server.wait_for(kit.start_action, station_id=SID,
                                      predicate=kit.is_start, timeout=1.0)
        raise AssertionError(f"a CALLERROR to Authorize was taken for 'offline': {start}")
    assert not agent.hal.evses[1].contactor.commanded_closed
    assert agent.station.evses[1].tx is None
    assert evse1(agent.status())["contactor"] == "open"


async def test_unreachable_csms_lets_the_offline_rule_start_an_unknown_id(kit, server, make):
    agent = await make(defaults={"AllowOfflineTxForUnknownId": True})
    await kit.online(agent, server)
    await go_offline(agent, server)
    agent.hal.plug(1)
    agent.hal.tap("STRANGER")
    await eventually(lambda: agent.station.evses[1].tx is not None
                     and agent.hal.evses[1].contactor.commanded_closed,
                     "a transaction started offline for the unknown id")


# ====================================================================== 5. reconnect vs boot


async def test_reconnect_of_an_accepted_station_sends_no_boot(kit, server, make):
    agent = await make()
    await kit.online(agent, server)
    assert boots(server) == 1
    before = connects(server)
    await server.drop_connection(SID)
    await eventually(lambda: connects(server) == before + 1, "the agent reconnected")
    await asyncio.wait_for(agent.adapter.accepted.wait(), 5)
    mark = len(server.log)
    agent.hal.plug(1)
    await wait_since(server, mark, "StatusNotification",
                     lambda p: kit.status_of(p) not in (None, "Available"), timeout=5)
    assert boots(server) == 1, "a mere reconnect is no reboot: no BootNotification"


async def test_reconnect_after_outage_reports_statuses_and_queued_messages_without_boot(
        kit, server, make):
    agent = await make()
    await kit.online(agent, server)
    await kit.charging(agent, server, "TAG1")
    await go_offline(agent, server)
    agent.hal.unplug(1)  # the transaction ends offline: its end waits in the outbox
    await eventually(lambda: agent.station.evses[1].tx is None, "the transaction ended")
    assert kit.ends(server) == []
    mark = len(server.log)
    await server.resume()
    end = await wait_since(server, mark, kit.end_action, kit.is_end, timeout=10)
    await wait_since(server, mark, "StatusNotification",
                     lambda p: kit.status_of(p) == "Available", timeout=5)
    await asyncio.wait_for(agent.adapter.outbox.idle.wait(), 5)
    assert len(kit.ends(server)) == 1 and end in kit.ends(server)
    assert boots(server) == 1, "a mere reconnect is no reboot: no BootNotification"


async def test_restart_of_the_agent_sends_a_boot(kit, server, make):
    first = await make()
    await kit.online(first, server)
    await first.stop()
    second = await make()
    await server.wait_for("BootNotification", station_id=SID, count=2, timeout=5)
    await kit.online(second, server)
    assert second.adapter.registration == "Accepted"


async def test_reconnect_while_pending_boots_again(kit, server, make):
    server.boot_status = "Pending"
    server.boot_interval = 300  # the agent would wait 5 min on this connection
    server.strict_timing = False  # a boot on a new connection is not an early retry
    agent = await make()
    await server.wait_for("BootNotification", station_id=SID, timeout=5)
    await eventually(lambda: agent.adapter.registration == "Pending", "the Pending answer")
    server.boot_status = "Accepted"
    await server.drop_connection(SID)
    await server.wait_for("BootNotification", station_id=SID, count=2, timeout=5)
    await kit.online(agent, server)
    assert agent.adapter.registration == "Accepted"


# ====================================================================== 6. sampling phase


async def test_periodic_samples_are_timed_from_the_transaction_start(kit, server, make):
    clock = FakeClock()
    agent = await make(clock=clock, defaults={"MeterValueSampleInterval": 2})
    await kit.online(agent, server)
    await advance(clock, 0.7)  # a free-running 2 s timer is now out of phase with the start
    start = await kit.charging(agent, server, "TAG1")
    await advance(clock, 3.0)
    first = await server.wait_for(kit.sample_action(), station_id=SID, timeout=5,
                                  predicate=lambda p: kit.is_periodic(kit.sample_action(), p))
    delta = (kit.sample_time(first) - kit.start_time(start)).total_seconds()
    assert 1.8 <= delta <= 2.3, f"first periodic sample {delta:.2f} s after the start"


async def test_sample_interval_changed_during_a_transaction_applies_at_once(kit, server, make):
    clock = FakeClock()
    agent = await make(clock=clock, defaults={"MeterValueSampleInterval": 60})
    link = await kit.online(agent, server)
    await kit.charging(agent, server, "TAG1")
    await advance(clock, 5.0)
    await kit.set_sample_interval(link, 1)
    changed = agent.clock.wall()
    await advance(clock, 1.5)
    first = await server.wait_for(kit.sample_action(), station_id=SID, timeout=3,
                                  predicate=lambda p: kit.is_periodic(kit.sample_action(), p))
    delta = kit.sample_time(first).timestamp() - changed
    assert -0.1 <= delta <= 1.5, f"first sample {delta:.2f} s after the change"


# ====================================================================== 7. 1.6 status order


@only_16
async def test_plain_session_start_reports_preparing_then_charging(kit, server, make):
    agent = await make()
    await kit.online(agent, server)
    mark = len(server.log)
    await kit.charging(agent, server, "TAG1")
    await wait_since(server, mark, "StatusNotification",
                     lambda p: kit.status_of(p) == "Charging", timeout=5)
    statuses = [kit.status_of(m.payload) for m in calls_since(server, mark)
                if m.action == "StatusNotification" and kit.status_of(m.payload)]
    assert statuses[:statuses.index("Charging") + 1] == ["Preparing", "Charging"], statuses


@only_16
async def test_start_queued_offline_precedes_the_charging_status_after_reconnect(
        kit, server, make):
    agent = await make(defaults={"AllowOfflineTxForUnknownId": True})
    await kit.online(agent, server)
    await go_offline(agent, server)
    agent.hal.plug(1)
    agent.hal.tap("OFFLINE1")
    await eventually(lambda: agent.station.evses[1].tx is not None
                     and agent.hal.evses[1].contactor.commanded_closed,
                     "the transaction started offline")
    mark = len(server.log)
    await server.resume()
    await wait_since(server, mark, "StartTransaction", timeout=10)
    await wait_since(server, mark, "StatusNotification",
                     lambda p: kit.status_of(p) == "Charging", timeout=5)
    order = [(m.action, kit.status_of(m.payload) if m.action == "StatusNotification" else None)
             for m in calls_since(server, mark)]
    start_at = order.index(("StartTransaction", None))
    charging_at = order.index(("StatusNotification", "Charging"))
    assert start_at < charging_at, order


# ====================================================================== 8. control socket


async def test_control_commands_return_the_state_after_the_agent_reacted(kit, server, make):
    agent = await make()
    await kit.online(agent, server)
    await kit.charging(agent, server, "TAG1")
    assert evse1(agent.status())["contactor"] == "closed"

    paused = await agent.handle_control({"cmd": "ev", "args": {"evse": 1, "state": "B"}})
    assert evse1(paused)["contactor"] == "open", evse1(paused)

    gone = await agent.handle_control({"cmd": "unplug", "args": {"evse": 1}})
    assert evse1(gone)["transaction_id"] is None, evse1(gone)
    assert evse1(gone)["local_transaction_id"] is None, evse1(gone)

    await agent.handle_control({"cmd": "plug", "args": {"evse": 1}})
    await agent.handle_control({"cmd": "tap", "args": {"token": "TAG2", "evse": 1}})
    last: dict = {}

    async def charging() -> bool:
        nonlocal last
        last = evse1(await agent.handle_control({"cmd": "status"}))
        return last["status"] == "Charging" and last["contactor"] == "closed"

    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(5):
            while True:
                if await charging():
                    break
                await asyncio.sleep(0.01)
    assert last["status"] == "Charging" and last["contactor"] == "closed", last
    assert last["local_transaction_id"] is not None
