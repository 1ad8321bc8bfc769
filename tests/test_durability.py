"""Durability: clocks without RTC, the outbox's delivery rules, offline operation, recovery.

Unit tests drive the clock and the outbox sender with a fake clock (retry intervals of minutes
take microseconds); integration tests run the real agent against the strict test CSMS over
websockets on 127.0.0.1 and take the CSMS down and up again.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agent.app import Agent
from agent.clock import Clock, FakeClock, is_deferred, parse_iso
from agent.link.outbox import Hold, OutboxSender
from agent.link.rpc import CallErrorReceived, CallTimeout, ConnectionLost
from agent.storage import Storage, StorageError, TxRecord
from agent.testing.csms import NO_REPLY, CsmsCallError, TestCsms
from hal.mock import MockHal
from tests.conftest import agent_config, charging, online

PLAUSIBLE = datetime(2024, 1, 1, tzinfo=UTC).timestamp()


# ====================================================================== clock


def test_wall_clock_is_anchored_to_monotonic_after_sync_so_a_system_step_changes_nothing():
    clock = FakeClock(start_wall=0.0)  # an RTC-less board: the system believes it is 1970
    assert not clock.trustworthy
    csms_now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    clock.sync(csms_now)
    assert clock.trustworthy
    clock.jump(1_700_000_000)  # NTP steps the system clock afterwards: must not add up
    assert abs(clock.wall() - csms_now.timestamp()) < 1e-6
    clock._mono += 60
    assert abs(clock.wall() - csms_now.timestamp() - 60) < 1e-6


def test_implausible_csms_time_is_ignored():
    clock = FakeClock()  # 2027, plausible
    before = clock.wall()
    assert clock.sync("1970-01-01T00:00:10Z") == 0.0
    assert clock.wall() == before and not clock.synced


def test_deferred_stamp_resolves_to_the_time_of_the_event_once_synced():
    clock = FakeClock(start_wall=0.0)
    stamp = clock.stamp()
    assert is_deferred(stamp)
    assert clock.resolve(stamp) is None, "unknown until the CSMS tells us the time"
    payload, held = clock.resolve_payload({"meterValue": [{"timestamp": stamp}]})
    assert held and payload["meterValue"][0]["timestamp"] == stamp
    clock._mono += 30  # 30 s later the CSMS answers the boot
    csms_now = datetime(2026, 3, 1, 12, 0, 30, tzinfo=UTC)
    clock.sync(csms_now)
    resolved = clock.resolve(stamp)
    assert parse_iso(resolved) == csms_now - timedelta(seconds=30)
    payload, held = clock.resolve_payload({"meterValue": [{"timestamp": stamp}], "n": 1})
    assert not held and payload == {"meterValue": [{"timestamp": resolved}], "n": 1}


def test_marker_of_a_crashed_process_resolves_in_the_next_one_same_kernel_boot():
    first = FakeClock(start_wall=0.0, boot_id="boot-A")
    first._mono = 5000.0
    stamp = first.stamp()
    second = FakeClock(start_wall=0.0, boot_id="boot-A")  # kill -9, restart: same boot
    second._mono = 5100.0
    second.sync(datetime(2026, 3, 1, 12, 0, tzinfo=UTC))
    assert parse_iso(second.resolve(stamp)) == datetime(2026, 3, 1, 11, 58, 20, tzinfo=UTC)


def test_marker_of_an_earlier_boot_resolves_through_the_persisted_anchor():
    storage = Storage(":memory:")
    early = FakeClock(start_wall=0.0, boot_id="boot-1")
    early.attach_store(storage)
    early._mono = 2000.0
    before_sync = early.stamp()
    early._mono = 2010.0
    early.sync(datetime(2026, 1, 1, 0, 0, 10, tzinfo=UTC))  # persisted as an anchor
    # Power cut before the marker was sent; the next boot has a fresh monotonic clock.
    later = FakeClock(start_wall=0.0, boot_id="boot-2")
    later.attach_store(storage)
    assert parse_iso(later.resolve(before_sync)) == datetime(2026, 1, 1, tzinfo=UTC)
    # A boot that never learnt the time: the marker gets the time power came back.
    lost = FakeClock(start_wall=0.0, boot_id="boot-0")
    lost._mono = 10.0
    orphan = lost.stamp()
    later.sync(datetime(2026, 1, 2, tzinfo=UTC))
    payload, held = later.resolve_payload({"timestamp": orphan})
    assert not held
    assert parse_iso(payload["timestamp"]).timestamp() == pytest.approx(later.boot_started())
    assert parse_iso(payload["timestamp"]).timestamp() >= PLAUSIBLE


# ====================================================================== outbox sender


class ScriptedRpc:
    """Stands in for RpcSession.call: answers from a script, records what was sent."""

    def __init__(self, script: list[Any]) -> None:
        self.script = script
        self.calls: list[tuple[str, dict]] = []
        self.called = asyncio.Event()
        self.closed = False  # RpcSession.closed: the link is still up

    async def call(self, action: str, payload: dict) -> dict:
        self.calls.append((action, payload))
        self.called.set()
        answer = self.script.pop(0) if self.script else {}
        if isinstance(answer, BaseException):
            raise answer
        return answer


def _sender(storage: Storage, clock: FakeClock, *, attempts: int = 3, interval: float = 60,
            prepare=None) -> tuple[OutboxSender, list]:
    results: list = []
    sender = OutboxSender(storage, clock, prepare=prepare or (lambda item: item.payload),
                          on_result=lambda item, res: results.append((item.action, res)),
                          attempts=lambda: attempts, retry_interval=lambda: interval)
    return sender, results


async def _until(predicate, clock: FakeClock | None = None, step: float = 0.0,
                 limit: int = 200) -> None:
    for _ in range(limit):
        if predicate():
            return
        if clock is not None and step:
            await clock.advance(step)
        else:
            await asyncio.sleep(0)
    raise AssertionError("condition not reached")


async def test_callerror_is_retried_at_interval_times_attempt_then_dropped_and_queue_moves_on():
    storage = Storage(":memory:")
    clock = FakeClock()
    refuse = CallErrorReceived("InternalError", "nope", action="StopTransaction")
    rpc = ScriptedRpc([refuse, refuse, refuse, {}])
    sender, results = _sender(storage, clock, attempts=3, interval=60)
    storage.outbox_put("StopTransaction", {"n": 1}, tx_ref="a")
    storage.outbox_put("MeterValues", {"n": 2}, tx_ref="b")
    task = asyncio.create_task(sender.run(rpc))  # type: ignore[arg-type]
    await _until(lambda: len(rpc.calls) == 1)
    await _until(lambda: bool(clock._sleepers))  # the sender is waiting for its retry
    await clock.advance(59)
    assert len(rpc.calls) == 1, "first retry waits TransactionMessageRetryInterval x 1"
    await clock.advance(1)
    await _until(lambda: len(rpc.calls) == 2)
    await _until(lambda: any(not f.done() for _, _, f in clock._sleepers))
    await clock.advance(119)
    assert len(rpc.calls) == 2, "second retry waits the interval x 2"
    await clock.advance(1)
    await _until(lambda: len(rpc.calls) == 4)  # third refusal drops it; the next one goes
    assert [c[1]["n"] for c in rpc.calls] == [1, 1, 1, 2]
    assert sender.dropped == 1 and results == [("MeterValues", {})]
    assert storage.outbox_dropped()[0]["reason"].startswith("InternalError")
    await _until(lambda: sender.idle.is_set())
    task.cancel()


async def test_timeout_counts_as_an_attempt_with_the_back_off_then_drops():
    """E13 (TC_E_41_CS) and 1.6 4.7: no answer within the message timeout on a live link is a
    failed attempt; the next waits the interval times the attempts so far; the last drops."""
    storage = Storage(":memory:")
    clock = FakeClock()
    rpc = ScriptedRpc([CallTimeout("StartTransaction", 5)] * 3)
    sender, results = _sender(storage, clock, attempts=3, interval=60)
    storage.outbox_put("StartTransaction", {"n": 1}, tx_ref="a")
    storage.outbox_put("StopTransaction", {"n": 2}, tx_ref="a")
    task = asyncio.create_task(sender.run(rpc))  # type: ignore[arg-type]
    await _until(lambda: len(rpc.calls) == 1)
    await _until(lambda: bool(clock._sleepers))
    assert storage.outbox_peek()[0].attempts == 1, "counted, durably"
    await clock.advance(59)
    assert len(rpc.calls) == 1, "the first resend waits the interval x 1"
    await clock.advance(1)
    await _until(lambda: len(rpc.calls) == 2)
    await _until(lambda: any(not f.done() for _, _, f in clock._sleepers))
    await clock.advance(119)
    assert len(rpc.calls) == 2, "the second waits the interval x 2"
    await clock.advance(1)
    await _until(lambda: len(rpc.calls) == 4)  # third time-out drops it; the next one goes
    assert [c[1]["n"] for c in rpc.calls] == [1, 1, 1, 2]
    assert sender.dropped == 1 and results == [("StopTransaction", {})]
    assert "no answer" in storage.outbox_dropped()[0]["reason"]
    task.cancel()


async def test_timeout_then_answer_delivers_and_a_lost_link_is_never_an_attempt():
    """TC_E_42_CS: an answer to a resend ends the retries. A time-out because the link died
    under the call, and a lost connection, leave the item uncounted for the next one."""
    storage = Storage(":memory:")
    clock = FakeClock()
    rpc = ScriptedRpc([CallTimeout("StartTransaction", 5), {"ok": 1}])
    sender, results = _sender(storage, clock, attempts=2, interval=3)
    storage.outbox_put("StartTransaction", {"n": 1}, tx_ref="a")
    task = asyncio.create_task(sender.run(rpc))  # type: ignore[arg-type]
    await _until(lambda: len(results) == 1, clock, step=1)
    assert len(rpc.calls) == 2 and sender.dropped == 0 and storage.outbox_count() == 0
    task.cancel()

    rpc = ScriptedRpc([ConnectionLost("gone")])
    storage.outbox_put("StartTransaction", {"n": 2}, tx_ref="b")
    sender, _ = _sender(storage, clock, attempts=1, interval=3)
    assert await sender.run(rpc) is None  # type: ignore[arg-type]
    dead = ScriptedRpc([CallTimeout("StartTransaction", 5)])
    dead.closed = True  # the call timed out because the connection went away meanwhile
    assert await sender.run(dead) is None  # type: ignore[arg-type]
    item = storage.outbox_peek()[0]
    assert item.attempts == 0 and item.sends == 2 and sender.dropped == 0, \
        "with MessageAttempts 1 a counted failure would have dropped it"


async def test_invalid_own_message_is_dropped_instead_of_blocking_the_queue():
    storage = Storage(":memory:")
    clock = FakeClock()
    rpc = ScriptedRpc([ValueError("invalid outgoing MeterValues"), {}])
    sender, results = _sender(storage, clock)
    storage.outbox_put("MeterValues", {"bad": True}, tx_ref="a")
    storage.outbox_put("StopTransaction", {"n": 2}, tx_ref="a")
    task = asyncio.create_task(sender.run(rpc))  # type: ignore[arg-type]
    await _until(lambda: sender.idle.is_set() and len(rpc.calls) == 2)
    assert results == [("StopTransaction", {})] and sender.dropped == 1
    task.cancel()


async def test_hold_keeps_fifo_until_woken():
    storage = Storage(":memory:")
    clock = FakeClock()
    ready = False

    def prepare(item):
        if not ready:
            raise Hold()
        return item.payload

    rpc = ScriptedRpc([])
    sender, _ = _sender(storage, clock, prepare=prepare)
    storage.outbox_put("StartTransaction", {"n": 1}, tx_ref="a")
    storage.outbox_put("StopTransaction", {"n": 2}, tx_ref="a")
    task = asyncio.create_task(sender.run(rpc))  # type: ignore[arg-type]
    await clock.advance(30)
    assert rpc.calls == []
    ready = True
    sender.wake()
    await _until(lambda: len(rpc.calls) == 2)
    assert [c[0] for c in rpc.calls] == ["StartTransaction", "StopTransaction"]
    task.cancel()


async def test_retry_time_from_before_a_restart_cannot_stall_the_queue():
    """next_attempt is wall time; an RTC-less restart (or a clock step) must not wait years."""
    storage = Storage(":memory:")
    clock = FakeClock(start_wall=0.0)
    storage.outbox_put("StopTransaction", {"n": 1}, tx_ref="a")
    item = storage.outbox_peek()[0]
    storage.outbox_retry(item.id, 1_900_000_000.0)  # written while the clock said 2030
    rpc = ScriptedRpc([{}])
    sender, results = _sender(storage, clock, interval=60)
    task = asyncio.create_task(sender.run(rpc))  # type: ignore[arg-type]
    await _until(lambda: bool(results), clock, step=10)
    assert clock.monotonic() - 1000 <= 70
    task.cancel()


async def test_a_message_sent_before_a_crash_is_counted_as_a_possible_repeat():
    storage = Storage(":memory:")
    clock = FakeClock()
    storage.outbox_put("StartTransaction", {"n": 1}, tx_ref="a")
    storage.outbox_mark_sent(storage.outbox_peek()[0].id)  # the previous process sent it
    rpc = ScriptedRpc([{}])
    sender, _ = _sender(storage, clock)
    task = asyncio.create_task(sender.run(rpc))  # type: ignore[arg-type]
    await _until(lambda: sender.idle.is_set() and rpc.calls)
    assert sender.resent == 1
    task.cancel()


# ====================================================================== helpers (integration)

TX_ACTIONS = ("StartTransaction", "MeterValues", "StopTransaction")


def tx_calls(csms: TestCsms, station: str = "CP1") -> list:
    """The transaction-related CALLs the CSMS received, in arrival order."""
    return [m for m in csms.log if m.direction == "cs->csms" and m.kind == "CALL"
            and m.station_id == station and m.action in TX_ACTIONS
            and (m.action != "MeterValues" or "transactionId" in m.payload)]


async def crash(agent: Agent) -> None:
    """What kill -9 leaves behind, in-process: nothing ended, nothing flushed, file closed."""
    agent._stopped = True  # the fixture's stop() must not end the transactions either
    for task in agent._tasks:
        task.cancel()
    await asyncio.gather(*agent._tasks, return_exceptions=True)
    await agent.adapters["1.6"].stop()
    for task in list(agent.station._tasks):
        task.cancel()
    await asyncio.gather(*agent.station._tasks, return_exceptions=True)
    if agent.control is not None:
        await agent.control.stop()
    agent.storage.close()


def queued(agent: Agent, action: str) -> int:
    return sum(1 for item in agent.storage.outbox_peek(10_000) if item.action == action)


def count_puts(agent: Agent) -> dict[str, int]:
    """Count what the agent queues, per action, to check completeness at the CSMS."""
    counts: dict[str, int] = {}
    original = agent.storage.outbox_put

    def put(action: str, payload: dict, tx_ref: str | None = None) -> int:
        item = original(action, payload, tx_ref=tx_ref)
        counts[action] = counts.get(action, 0) + 1
        return item

    agent.storage.outbox_put = put  # type: ignore[method-assign]
    return counts


class Changes:
    """Wakes a waiter whenever the agent does something observable: a HAL event, an EVSE
    output or status change, a message queued.  The CSMS side has its own wait_for."""

    def __init__(self, agent: Agent) -> None:
        self.event = asyncio.Event()
        agent.station.traces.append(lambda *_: self.event.set())
        agent.station.hal_events.append(lambda _: self.event.set())
        wake = agent.adapters["1.6"].outbox.wake

        def woken() -> None:
            wake()
            self.event.set()

        agent.adapters["1.6"].outbox.wake = woken  # type: ignore[method-assign]

    async def until(self, predicate, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self.event.clear()
                await self.event.wait()


async def go_offline(agent: Agent, csms: TestCsms) -> None:
    agent.link.failed.clear()
    await csms.pause(abrupt=True)
    await asyncio.wait_for(agent.link.failed.wait(), 10)


# ====================================================================== outage


async def test_outage_sessions_start_charge_stop_offline_then_arrive_complete_and_in_order(
        csms, make_agent):
    agent = await make_agent(evses=2, defaults={"MeterValueSampleInterval": 1})
    link = await online(agent, csms)
    await link.call("SendLocalList", {"listVersion": 1, "updateType": "Full",
                                      "localAuthorizationList": [
                                          {"idTag": t, "idTagInfo": {"status": "Accepted"}}
                                          for t in ("TAG-B", "TAG-C")]})
    puts = count_puts(agent)
    changes = Changes(agent)
    await charging(agent, csms, "TAG-A", evse=1)
    await go_offline(agent, csms)
    # Offline: B starts on EVSE 2 (local list), A stops, C starts and stops on EVSE 1.
    agent.hal.plug(2)
    agent.hal.tap("TAG-B", 2)
    await changes.until(lambda: agent.station.evses[2].tx is not None)
    await changes.until(lambda: puts.get("MeterValues", 0) >= 2)
    agent.hal.unplug(1)
    await changes.until(lambda: agent.station.evses[1].tx is None)
    agent.hal.plug(1)
    agent.hal.tap("TAG-C", 1)
    await changes.until(lambda: agent.station.evses[1].tx is not None)
    c_local = agent.station.evses[1].tx.local_id
    await changes.until(lambda: agent.storage.tx_outbox_pending(c_local) >= 2)  # + a sample
    agent.hal.unplug(1)
    await changes.until(lambda: agent.station.evses[1].tx is None)
    assert sum(queued(agent, a) for a in TX_ACTIONS) >= 5
    before = len(csms.log)
    await csms.resume()
    await asyncio.wait_for(agent.adapters["1.6"].accepted.wait(), 10)
    await asyncio.wait_for(agent.adapters["1.6"].outbox.idle.wait(), 15)
    agent.hal.unplug(2)
    await csms.wait_for("StopTransaction", station_id="CP1", count=3, timeout=10)
    await asyncio.wait_for(agent.adapters["1.6"].outbox.idle.wait(), 10)

    # After reconnection every connector's status is reported afresh.
    for cid in (0, 1, 2):
        assert any(m.action == "StatusNotification" and m.kind == "CALL"
                   and m.payload["connectorId"] == cid for m in csms.log[before:]), cid
    calls = tx_calls(csms)
    # Completeness: everything queued arrived, nothing twice.
    for action in TX_ACTIONS:
        assert sum(1 for m in calls if m.action == action) == puts[action], action
    # Chronological delivery (1.6 3.7): event times never go backwards along the wire.
    stamps = [parse_iso(m.payload["timestamp"] if m.action != "MeterValues"
                        else m.payload["meterValue"][0]["timestamp"]) for m in calls]
    assert stamps == sorted(stamps)
    # Each transaction: one Start, then its MeterValues and one Stop, all with its real id.
    assert len(csms.transactions) == 3
    by_tag = {rec["start"]["idTag"]: (tx_id, rec) for tx_id, rec in csms.transactions.items()}
    assert set(by_tag) == {"TAG-A", "TAG-B", "TAG-C"}
    for _tag, (tx_id, rec) in by_tag.items():
        assert rec["stop"] is not None and "stop_repeats" not in rec
        assert "start_repeats" not in rec
        mine = [m for m in calls if m.payload.get("transactionId") == tx_id
                or (m.action == "StartTransaction" and m.payload == rec["start"])]
        assert mine[0].action == "StartTransaction" and mine[-1].action == "StopTransaction"
        assert rec["stop"]["meterStop"] >= rec["start"]["meterStart"]
    assert by_tag["TAG-A"][1]["stop"]["reason"] == "EVDisconnected"
    assert by_tag["TAG-C"][1]["meter_values"], "C charged offline and its samples arrived"
    assert agent.storage.outbox_count() == 0 and agent.storage.tx_open() == []


class RtcLessClock(Clock):
    """A controller board without RTC: the system clock starts at the epoch."""

    def _system(self) -> float:
        return time.time() - 1_700_000_000


async def test_no_rtc_offline_session_gets_real_timestamps_once_the_csms_tells_the_time(
        csms, short_dir):
    await csms.pause()
    cfg = agent_config(csms.url, short_dir, defaults={"MeterValueSampleInterval": 1,
                                                      "AllowOfflineTxForUnknownId": True})
    agent = Agent(cfg, clock=RtcLessClock())
    changes = Changes(agent)
    await agent.start()
    try:
        assert not agent.clock.trustworthy
        plugged_at = time.time()
        agent.hal.plug(1)
        agent.hal.tap("NORTC")
        await changes.until(lambda: agent.station.evses[1].tx is not None)
        tx = agent.station.evses[1].tx
        assert is_deferred(tx.started_at), "no 1970 time written anywhere"
        await changes.until(lambda: agent.storage.outbox_count() >= 3)
        agent.hal.unplug(1)
        await changes.until(lambda: agent.station.evses[1].tx is None)
        await csms.resume()
        stop = await csms.wait_for("StopTransaction", station_id="CP1", timeout=15)
    finally:
        await agent.stop()
    calls = tx_calls(csms)
    stamps = [parse_iso(m.payload["timestamp"] if m.action != "MeterValues"
                        else m.payload["meterValue"][0]["timestamp"]).timestamp()
              for m in calls]
    assert all(s >= PLAUSIBLE for s in stamps)
    assert stamps == sorted(stamps)
    assert abs(stamps[0] - plugged_at) < 2, "the Start carries the real time of the start"
    assert parse_iso(stop["timestamp"]).timestamp() <= time.time()
    for m in csms.log:  # nothing dated 1970 on the wire, statuses included
        if m.direction == "cs->csms" and "timestamp" in m.payload:
            assert parse_iso(m.payload["timestamp"]).timestamp() >= PLAUSIBLE


# ====================================================================== power-loss recovery


@pytest.mark.parametrize("register, expected", [
    ("journal+2", "register"),   # meter kept its register and stopped with the power: exact
    ("zero", "journal"),         # meter replaced or reset: never bill a negative session
    ("journal+5000", "journal"),  # energy no journal accounts for: not billed blindly
])
async def test_open_transaction_is_closed_once_with_power_loss_after_a_crash(
        csms, make_agent, short_dir, register, expected):
    first = await make_agent()
    await online(first, csms)
    start = await charging(first, csms, "TAG1")
    local_id = first.station.evses[1].tx.local_id
    await crash(first)
    with Storage(first.cfg.storage.path) as storage:
        journal = storage.tx_get(local_id)
    assert journal is not None and not journal.closed
    hal = MockHal(1, ev_max_current_a=16)
    hal.sims[1].energy_wh = {"journal+2": journal.last_meter_wh + 2, "zero": 0.0,
                             "journal+5000": journal.last_meter_wh + 5000}[register]
    second = Agent(agent_config(csms.url, short_dir), hal=hal)
    await second.start()
    try:
        stop = await csms.wait_for("StopTransaction", station_id="CP1", timeout=10)
        await asyncio.wait_for(second.adapters["1.6"].outbox.idle.wait(), 5)
    finally:
        await second.stop()
    tx_id = next(iter(csms.transactions))
    assert stop["transactionId"] == tx_id and stop["reason"] == "PowerLoss"
    want = journal.last_meter_wh + 2 if expected == "register" else journal.last_meter_wh
    assert stop["meterStop"] == round(want)
    assert stop["meterStop"] >= start["meterStart"]
    assert stop["timestamp"] == journal.last_meter_at, "stamped when power was last seen"
    assert len(csms.messages("CP1", "StopTransaction")) == 1
    with Storage(first.cfg.storage.path) as storage:
        assert storage.tx_get(local_id) is None, "journal entry forgotten once acknowledged"


async def test_a_crash_during_recovery_neither_loses_nor_doubles_the_stop(csms, make_agent):
    first = await make_agent()
    await online(first, csms)
    await charging(first, csms, "TAG1")
    await crash(first)
    await csms.pause()
    second = await make_agent()  # recovers offline: the Stop waits in the outbox
    assert queued(second, "StopTransaction") == 1 and second.storage.tx_open() == []
    await crash(second)
    third = await make_agent()
    assert queued(third, "StopTransaction") == 1, "closed once: the restart adds nothing"
    await csms.resume()
    await csms.wait_for("StopTransaction", station_id="CP1", timeout=10)
    await asyncio.wait_for(third.adapters["1.6"].outbox.idle.wait(), 10)
    assert len(csms.messages("CP1", "StopTransaction")) == 1
    assert csms.messages("CP1", "StopTransaction")[0]["reason"] == "PowerLoss"


# ====================================================================== late CSMS verdicts


@pytest.mark.parametrize("stop_on_invalid", [True, False])
async def test_start_confirmed_late_as_invalid(csms, make_agent, stop_on_invalid):
    csms.authorize = {"LATE": "Invalid"}
    await csms.pause()
    agent = await make_agent(defaults={"AllowOfflineTxForUnknownId": True,
                                       "StopTransactionOnInvalidId": stop_on_invalid})
    changes = Changes(agent)
    agent.hal.plug(1)
    agent.hal.tap("LATE")
    await changes.until(lambda: agent.hal.evses[1].contactor.commanded_closed)
    await csms.resume()
    await csms.wait_for("StartTransaction", station_id="CP1", timeout=10)
    if stop_on_invalid:
        stop = await csms.wait_for("StopTransaction", station_id="CP1", timeout=10)
        assert stop["reason"] == "DeAuthorized"
    else:
        await csms.wait_for("StatusNotification", station_id="CP1", timeout=10,
                            predicate=lambda p: p["status"] == "SuspendedEVSE")
        assert csms.messages("CP1", "StopTransaction") == []
        assert agent.station.evses[1].tx is not None, "the transaction goes on, energy off"
    assert not agent.hal.evses[1].contactor.commanded_closed
    assert agent.storage.auth_cache_get("LATE")["status"] == "Invalid"


async def test_max_energy_on_invalid_id_is_delivered_before_stopping(csms, make_agent):
    csms.authorize = {"LATE": "Invalid"}
    agent = await make_agent(defaults={"MaxEnergyOnInvalidId": 4})
    await online(agent, csms)
    csms.overrides["Authorize"] = lambda link, p: {"idTagInfo": {"status": "Accepted"}}
    start = await charging(agent, csms, "LATE")
    stop = await csms.wait_for("StopTransaction", station_id="CP1", timeout=10)
    assert stop["reason"] == "DeAuthorized"
    assert stop["meterStop"] - start["meterStart"] >= 4


# ====================================================================== a CSMS that misbehaves


def _last_call_id(csms: TestCsms, action: str) -> str:
    return [m for m in csms.log if m.kind == "CALL" and m.action == action
            and m.direction == "cs->csms"][-1].unique_id


async def test_start_answer_lost_late_doubled_or_misaddressed(csms, make_agent):
    """The CSMS processes the Start but its answer is lost; it later answers the stale id,
    answers the resend twice and sends a CALLRESULT for an id nobody asked: one transaction,
    one id, used by every later message."""
    agent = await make_agent(start=False, defaults={"TransactionMessageRetryInterval": 1})
    agent.cfg.ocpp.call_timeout_s = 1
    await agent.start()
    link = await online(agent, csms)
    first = True

    def swallow(lnk, payload):
        nonlocal first
        if not first:
            return None
        first = False
        csms._start_transaction(lnk, payload)  # processed, answer lost
        return NO_REPLY

    csms.overrides["StartTransaction"] = swallow
    agent.hal.plug(1)
    agent.hal.tap("TAG1")
    await csms.wait_for("StartTransaction", station_id="CP1")
    lost_id = _last_call_id(csms, "StartTransaction")
    await link.send_raw(f'[3,"{lost_id}x",{{"transactionId":555,'
                        f'"idTagInfo":{{"status":"Accepted"}}}}]')  # nobody asked for this
    await csms.wait_for("StartTransaction", station_id="CP1", count=2, timeout=10)
    await asyncio.wait_for(agent.adapters["1.6"].outbox.idle.wait(), 5)
    tx_id = next(iter(csms.transactions))
    retry_id = _last_call_id(csms, "StartTransaction")
    for stale in (lost_id, retry_id):  # late answer to the first, double answer to the second
        await link.send_raw(f'[3,"{stale}",{{"transactionId":999,'
                            f'"idTagInfo":{{"status":"Accepted"}}}}]')
    assert agent.station.evses[1].tx.remote_id == str(tx_id)
    starts = csms.messages("CP1", "StartTransaction")
    assert len(starts) == 2 and starts[0] == starts[1], "an identical resend, detectable"
    assert csms.transactions[tx_id]["start_repeats"] == 1 and len(csms.transactions) == 1
    res = await link.call("RemoteStopTransaction", {"transactionId": tx_id})
    assert res["status"] == "Accepted", "the agent is alive and knows the one id"
    stop = await csms.wait_for("StopTransaction", station_id="CP1")
    assert stop["transactionId"] == tx_id
    assert agent.link.connects == 1


async def test_an_unanswered_status_does_not_silence_the_later_ones(csms, make_agent):
    agent = await make_agent(start=False)
    agent.cfg.ocpp.call_timeout_s = 0.5
    await agent.start()
    await online(agent, csms)
    csms.overrides["StatusNotification"] = lambda link, payload: NO_REPLY
    agent.hal.plug(1)
    await csms.wait_for("StatusNotification", station_id="CP1",
                        predicate=lambda p: p["status"] == "Preparing")
    del csms.overrides["StatusNotification"]
    agent.hal.tap("TAG1")
    await csms.wait_for("StatusNotification", station_id="CP1", timeout=10,
                        predicate=lambda p: p["status"] == "Charging")


async def test_refused_stop_is_retried_then_dropped_and_later_messages_flow(csms, make_agent):
    agent = await make_agent(defaults={"TransactionMessageRetryInterval": 1,
                                       "TransactionMessageAttempts": 2})
    await online(agent, csms)
    await charging(agent, csms, "TAG1")

    def refuse(link, payload):
        raise CsmsCallError("InternalError", "cannot store it")

    csms.overrides["StopTransaction"] = refuse
    agent.hal.unplug(1)
    await csms.wait_for("StopTransaction", station_id="CP1", count=2, timeout=10)
    await asyncio.wait_for(agent.adapters["1.6"].outbox.idle.wait(), 5)
    assert agent.adapters["1.6"].outbox.dropped == 1
    assert agent.storage.outbox_dropped()[0]["action"] == "StopTransaction"
    del csms.overrides["StopTransaction"]
    await charging(agent, csms, "TAG2")
    assert len(csms.transactions) == 2


# ====================================================================== storage failing at runtime


async def test_disk_failure_at_start_of_transaction_faults_the_evse_and_keeps_it_dark(
        csms, make_agent):
    agent = await make_agent()
    await online(agent, csms)
    closed: list[bool] = []
    contactor = agent.hal.evses[1].contactor
    original_set = contactor.set

    async def watched(value: bool) -> None:
        closed.append(value)
        await original_set(value)

    contactor.set = watched  # type: ignore[method-assign]

    def full(rec: TxRecord) -> None:
        raise StorageError("state database x: the disk is full", "full")

    agent.storage.tx_begin = full  # type: ignore[method-assign]
    agent.hal.plug(1)
    agent.hal.tap("TAG1")
    status = await csms.wait_for("StatusNotification", station_id="CP1", timeout=5,
                                 predicate=lambda p: p["connectorId"] == 1
                                 and p["status"] == "Faulted")
    assert status["errorCode"] == "InternalError" and "storage" in status["info"]
    await asyncio.wait_for(agent.station.settled(), 5)
    assert True not in closed, "the contactor never closed without a journalled transaction"
    assert agent.station.evses[1].tx is None and csms.messages("CP1", "StartTransaction") == []


async def test_disk_failure_at_the_end_keeps_the_transaction_open_for_recovery(
        csms, make_agent):
    agent = await make_agent()
    await online(agent, csms)
    await charging(agent, csms, "TAG1")
    local_id = agent.station.evses[1].tx.local_id

    def full(*args, **kwargs) -> None:
        raise StorageError("state database x: the disk is full", "full")

    agent.storage.tx_close = full  # type: ignore[method-assign]
    agent.hal.unplug(1)
    await csms.wait_for("StatusNotification", station_id="CP1", timeout=5,
                        predicate=lambda p: p["connectorId"] == 1 and p["status"] == "Faulted")
    assert not agent.hal.evses[1].contactor.commanded_closed
    tx = agent.station.evses[1].tx
    assert tx is not None and not tx.closed, "memory follows the journal, which is unchanged"
    assert csms.messages("CP1", "StopTransaction") == []
    await crash(agent)
    again = await make_agent()  # disk freed, agent restarted: recovery closes it once
    stop = await csms.wait_for("StopTransaction", station_id="CP1", timeout=10)
    assert stop["reason"] == "PowerLoss"
    await asyncio.wait_for(again.adapters["1.6"].outbox.idle.wait(), 5)
    assert again.storage.tx_get(local_id) is None


# ====================================================================== storage details


def test_schema_2_adds_send_counts_to_a_version_1_outbox(tmp_path):
    import sqlite3

    from agent.storage import MIGRATIONS

    path = tmp_path / "v1.sqlite3"
    conn = sqlite3.connect(path, isolation_level=None)
    conn.executescript(f"BEGIN;\n{MIGRATIONS[0]};\nPRAGMA user_version = 1;\nCOMMIT;")
    conn.execute("INSERT INTO outbox (action, payload, tx_ref, created) VALUES "
                 "('StopTransaction', '{\"meterStop\":5}', 'a', '2025-01-01T00:00:00Z')")
    conn.close()
    with Storage(path) as storage:
        item = storage.outbox_peek()[0]
        assert (item.action, item.payload, item.sends) == ("StopTransaction",
                                                           {"meterStop": 5}, 0)
        storage.outbox_mark_sent(item.id)
        assert storage.outbox_peek()[0].sends == 1


def test_storage_errors_say_what_kind_of_trouble(tmp_path):
    bad = tmp_path / "bad.sqlite3"
    bad.write_bytes(b"garbage" * 1000)
    with pytest.raises(StorageError) as damaged:
        Storage(bad)
    assert damaged.value.kind == "damaged"
    good = tmp_path / "good.sqlite3"
    with Storage(good), pytest.raises(StorageError) as locked:
        Storage(good)
    assert locked.value.kind == "locked"


def test_expired_cache_entries_are_visible_on_request():
    storage = Storage(":memory:", clock=lambda: 1_800_000_000.0)
    storage.auth_cache_put("OLD", {"status": "Accepted", "expiryDate": "2025-01-01T00:00:00Z"},
                           "2025-01-01T00:00:00Z")
    assert storage.auth_cache_get("OLD") is None
    assert storage.auth_cache_get("OLD", include_expired=True)["status"] == "Accepted"
