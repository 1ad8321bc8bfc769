"""The outbox's delivery under cuts: each ack on disk before the next message goes out.

The sender commits the ack of message N, what its answer changed and the hand-over of message
N+1 in one fsynced commit, then sends N+1 (agent/link/outbox.py).  These tests hold it to the
promise of docs/durability.md at unit level, on a real state file:

- when a CALL goes out, every earlier answered message is gone from the file in a commit made
  with ``synchronous=FULL`` (so a power cut cannot bring it back), and the one going out is
  still there and counted as sent;
- a cut (the process dying: nothing uncommitted survives) at any point of the replay loses
  nothing, keeps the order, and repeats only the message that was in flight at the cut.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.clock import FakeClock
from agent.link.outbox import Hold, OutboxSender, stored_json
from agent.link.rpc import encode
from agent.storage import OutboxItem, Storage


class Cut(BaseException):
    """The process dies here: nothing in flight is committed, no handler runs."""


class Csms:
    """Stands in for RpcSession.call: processes each message (records it), then answers."""

    def __init__(self, check: Any = None, cut_at: int | None = None) -> None:
        self.seen: list[int] = []
        self.check = check
        self.cut_at = cut_at  # cut after processing this many messages, before the answer
        self.closed = False

    async def call(self, action: str, payload: dict) -> dict:
        if self.check is not None:
            self.check(payload["n"])
        self.seen.append(payload["n"])
        if self.cut_at is not None and len(self.seen) == self.cut_at:
            raise Cut()
        return {}


def _sender(storage: Storage, *, prepare: Any = None, on_result: Any = None) -> OutboxSender:
    return OutboxSender(storage, FakeClock(), prepare=prepare or (lambda item: item.payload),
                        on_result=on_result or (lambda item, result: None),
                        attempts=lambda: 3, retry_interval=lambda: 60)


def _fill(path: Path, count: int) -> None:
    storage = Storage(path)
    for n in range(1, count + 1):
        storage.outbox_put("MeterValues", {"n": n}, tx_ref="t")
    storage.close()


async def _until_idle(sender: OutboxSender, csms: Csms) -> None:
    """Deliver until the queue is empty (then stop the sender) or the process is cut."""
    task = asyncio.ensure_future(sender.run(csms))  # type: ignore[arg-type]
    idle = asyncio.ensure_future(sender.idle.wait())
    try:
        await asyncio.wait({task, idle}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
        assert task.done() or idle.done(), "the sender neither finished nor went idle"
    finally:
        idle.cancel()
        task.cancel()
        [outcome] = await asyncio.gather(task, return_exceptions=True)
    if isinstance(outcome, BaseException) and not isinstance(outcome, asyncio.CancelledError):
        raise outcome


async def _deliver(path: Path, csms: Csms, **kwargs: Any) -> None:
    """One process: open the file, deliver until the queue is empty or the process is cut."""
    storage = Storage(path)
    try:
        await _until_idle(_sender(storage, **kwargs), csms)
    finally:
        storage.close()  # a cut: what was not committed is rolled back, as after a kill


async def test_each_ack_is_fsynced_before_the_next_message_goes_out(tmp_path: Path) -> None:
    path = tmp_path / "state.sqlite3"
    _fill(path, 6)
    storage = Storage(path)
    conn = storage._require()
    modes = {"0": "OFF", "1": "NORMAL", "2": "FULL", "3": "EXTRA"}
    start_mode = modes[str(conn.execute("PRAGMA synchronous").fetchone()[0])]
    trace: list[str] = []
    conn.set_trace_callback(trace.append)
    reader = sqlite3.connect(path)  # another connection sees only what was committed
    answered: list[int] = []

    def check(n: int) -> None:
        rows = dict(reader.execute("SELECT json_extract(payload, '$.n'), sends FROM outbox"))
        assert not set(answered) & set(rows), f"#{n} went out before an earlier ack committed"
        assert rows.get(n, 0) >= 1, f"#{n} went out without its hand-over committed"
        # Every ack so far ran while the connection was in synchronous=FULL (the default):
        # an ack committed with NORMAL could come back after a power cut.
        sync = start_mode
        for statement in trace:
            if statement.upper().startswith("PRAGMA SYNCHRONOUS"):
                value = statement.split("=")[-1].strip().upper()
                sync = modes.get(value, value)
            elif statement.startswith("DELETE FROM outbox"):
                assert sync in ("FULL", "EXTRA"), f"an ack before #{n} was not fsynced"

    class Recording(Csms):
        async def call(self, action: str, payload: dict) -> dict:
            result = await super().call(action, payload)
            answered.append(payload["n"])
            return result

    csms = Recording(check=check)
    sender = _sender(storage)
    await _until_idle(sender, csms)
    assert csms.seen == [1, 2, 3, 4, 5, 6]
    assert storage.outbox_count() == 0 and sender.sent == 6 and sender.resent == 0
    assert any(s.startswith("DELETE FROM outbox") for s in trace)
    reader.close()
    storage.close()


@pytest.mark.parametrize("where", ["in flight", "answer handled", "next prepared"])
@pytest.mark.parametrize("at", [1, 2, 4])
async def test_a_cut_anywhere_loses_nothing_keeps_order_and_repeats_only_the_one_in_flight(
        tmp_path: Path, where: str, at: int) -> None:
    """``in flight``: the CSMS processed message ``at`` and the process died before the
    answer arrived; ``answer handled``: the answer arrived and the process died while
    handling it, before the ack's commit; ``next prepared``: it died in the ack's commit,
    while the next message was being prepared."""
    path = tmp_path / "state.sqlite3"
    _fill(path, 5)
    csms = Csms(cut_at=at if where == "in flight" else None)
    calls = {"result": 0, "prepare": 0}

    def on_result(item: OutboxItem, result: dict) -> None:
        calls["result"] += 1
        if where == "answer handled" and calls["result"] == at:
            raise Cut()

    def prepare(item: OutboxItem) -> dict:
        calls["prepare"] += 1
        if where == "next prepared" and item.payload["n"] == at + 1:
            raise Cut()
        return item.payload

    with pytest.raises(Cut):
        await _deliver(path, csms, on_result=on_result, prepare=prepare)
    before = list(csms.seen)
    assert before[-1] == at

    again = Csms()
    await _deliver(path, again)
    seen = before + again.seen
    assert sorted(set(seen)) == [1, 2, 3, 4, 5], "nothing lost"
    # Only the one in flight at the cut (processed, its ack not committed) may arrive twice,
    # right after itself; nothing else does, and the order holds.
    once = [1, 2, 3, 4, 5]
    assert seen in (once, once[:at] + [at] + once[at:])
    if where != "next prepared":
        assert seen.count(at) == 2, "its ack never committed: it must go again"
    storage = Storage(path)
    assert storage.outbox_count() == 0
    storage.close()


async def test_a_failing_look_ahead_keeps_the_ack_and_the_next_step_meets_the_failure(
        tmp_path: Path) -> None:
    """The look-ahead runs in a savepoint of the ack's commit: a bug in ``prepare`` for the
    next message undoes nothing of the ack, and the ordinary step then reports it as it
    always did (the exception leaves ``run``)."""
    path = tmp_path / "state.sqlite3"
    _fill(path, 2)

    def prepare(item: OutboxItem) -> dict:
        if item.payload["n"] == 2:
            raise RuntimeError("bug in prepare")
        return item.payload

    csms = Csms()
    with pytest.raises(RuntimeError, match="bug in prepare"):
        await _deliver(path, csms, prepare=prepare)
    assert csms.seen == [1]
    storage = Storage(path)
    [left] = storage.outbox_peek(5)
    assert left.payload == {"n": 2} and left.sends == 0, "acked #1 only, #2 never handed over"
    storage.close()


async def test_a_failing_send_count_in_the_look_ahead_keeps_the_ack(tmp_path: Path,
                                                                    monkeypatch: Any) -> None:
    """The look-ahead has no savepoint of its own: its one write (the send count of the next
    message) is its last statement, and when that fails the ack of the message before it is
    still committed, with fsync; the next message is handed over by the ordinary step."""
    path = tmp_path / "state.sqlite3"
    _fill(path, 3)
    storage = Storage(path)
    reader = sqlite3.connect(path)
    real = storage.outbox_mark_sent
    failed: list[int] = []

    def mark_sent(item_id: int) -> None:
        if storage._depth and not failed:  # the first look-ahead, inside the ack's commit
            failed.append(item_id)
            storage._require().execute("INSERT INTO outbox (id, action, payload, created) "
                                       "VALUES (?, 'X', '{}', '')", (item_id,))  # fails
        real(item_id)

    monkeypatch.setattr(storage, "outbox_mark_sent", mark_sent)
    seen_committed: list[list[int]] = []

    class Watching(Csms):
        async def call(self, action: str, payload: dict) -> dict:
            seen_committed.append([n for (n,) in reader.execute(
                "SELECT json_extract(payload, '$.n') FROM outbox ORDER BY id")])
            return await super().call(action, payload)

    csms = Watching()
    try:
        await _until_idle(_sender(storage), csms)
    finally:
        storage.close()
        reader.close()
    assert failed, "the look-ahead's send count was made to fail"
    assert csms.seen == [1, 2, 3]
    assert seen_committed[1] == [2, 3], "the ack of #1 was committed before #2 went out"
    storage = Storage(path)
    assert storage.outbox_count() == 0
    storage.close()


async def test_look_ahead_drops_holds_and_waits_like_the_ordinary_step(tmp_path: Path) -> None:
    """What the ack's commit finds at the head is judged once: an item that cannot be
    completed is dropped (prepare not asked twice), a held one waits, the rest go in order."""
    path = tmp_path / "state.sqlite3"
    _fill(path, 4)
    asked: list[int] = []
    held = {3: 1}  # #3 is held once, then can go

    def prepare(item: OutboxItem) -> dict | None:
        n = item.payload["n"]
        asked.append(n)
        if n == 2:
            return None
        if held.get(n):
            held[n] -= 1
            raise Hold()
        return item.payload

    storage = Storage(path)
    sender = _sender(storage, prepare=prepare)
    csms = Csms()
    clock: FakeClock = sender._clock  # type: ignore[assignment]
    task = asyncio.ensure_future(_until_idle(sender, csms))
    for _ in range(200):
        if any(not f.done() for _, _, f in clock._sleepers):
            break
        await asyncio.sleep(0)
    assert csms.seen == [1] and sender.dropped == 1, "#2 dropped, #3 held"
    await clock.advance(1.0)  # HOLD_POLL_S
    await asyncio.wait_for(task, 10)
    assert csms.seen == [1, 3, 4]
    assert asked.count(2) == 1, "a message that cannot be completed is judged once"
    assert storage.outbox_count() == 0
    storage.close()


def test_foreign_messages_are_selected_by_action_oldest_first() -> None:
    """What the agent drops at a connection of another OCPP version (Agent
    ._drop_foreign_messages) is asked of SQLite, not found by loading the whole backlog."""
    storage = Storage(":memory:")
    a = storage.outbox_put("StopTransaction", {"n": 1}, tx_ref="t")
    storage.outbox_put("TransactionEvent", {"n": 2}, tx_ref="u")
    c = storage.outbox_put("MeterValues", {"n": 3}, tx_ref="t")
    foreign = storage.outbox_foreign(frozenset({"TransactionEvent"}))
    assert [(i.id, i.action, i.payload) for i in foreign] == [
        (a, "StopTransaction", {"n": 1}), (c, "MeterValues", {"n": 3})]
    assert len(storage.outbox_foreign(frozenset())) == 3
    assert storage.outbox_foreign(frozenset({"StopTransaction", "MeterValues",
                                             "TransactionEvent"})) == []


def test_a_stored_message_without_a_deferred_time_is_known_to_need_no_walk() -> None:
    """The adapter skips Clock.resolve_payload for a message whose stored text holds no
    marker; one that holds one must still be walked (and is, see test_durability)."""
    from agent.clock import may_hold_deferred

    clock = FakeClock(start_wall=0.0)  # no trustworthy time: stamps are markers
    storage = Storage(":memory:")
    storage.outbox_put("MeterValues", {"meterValue": [{"timestamp": clock.stamp()}]})
    storage.outbox_put("MeterValues", {"meterValue": [{"timestamp": "2026-01-01T00:00:00Z"}],
                                       "note": "a ~tilde inside"})
    marked, plain = storage.outbox_peek(2)
    assert may_hold_deferred(marked.text) and not may_hold_deferred(plain.text)
    assert may_hold_deferred(""), "an item not read from the table is walked"


# ------------------------------------------------------------------------ stored_json

_scalars = (st.none() | st.booleans() | st.integers(-2**63, 2**63)
            | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8))
_json = st.recursive(_scalars, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(payload=st.dictionaries(st.text(max_size=6), _json, min_size=1, max_size=6),
       pick=st.integers(0, 10), value=_json)
def test_the_stored_json_with_a_value_spliced_in_is_what_the_encoder_writes(
        payload: dict, pick: int, value: Any) -> None:
    """The outbox sends a replayed payload cut from its stored text (one top-level value
    replaced, the 1.6 transactionId) instead of encoding it anew: whenever it does, the text
    is exactly the link's encoding of the payload, and it falls back (None) otherwise."""
    storage = Storage(":memory:")
    storage.outbox_put("MeterValues", payload)
    [item] = storage.outbox_peek(1)
    prepared = dict(item.payload)
    key = list(prepared)[pick % len(prepared)]
    prepared[key] = value
    body = stored_json(item, prepared)
    if body is not None:
        assert body == encode(prepared)
        assert json.loads(body) == json.loads(encode(prepared))
    if item.text.isascii() and "\x7f" not in item.text:
        assert body is not None, "an ASCII payload with one value replaced is spliced"
    assert stored_json(item, dict(item.payload)) in (None, encode(item.payload))
    storage.close()


def test_stored_json_falls_back_when_more_than_one_value_or_a_key_changed() -> None:
    storage = Storage(":memory:")
    storage.outbox_put("MeterValues", {"connectorId": 1, "transactionId": 0,
                                       "meterValue": [{"timestamp": "t", "sampledValue": []}]})
    [item] = storage.outbox_peek(1)
    one = {**item.payload, "transactionId": 42}
    assert stored_json(item, one) == encode(one)
    assert stored_json(item, {**item.payload, "transactionId": 1, "connectorId": 2}) is None
    assert stored_json(item, {**item.payload, "extra": 1}) is None
    renamed = dict(item.payload)
    del renamed["connectorId"]
    renamed["connector"] = 1
    assert stored_json(item, renamed) is None
    # a nested value rebuilt (as Clock.resolve_payload does) is a second change, not the same
    rebuilt = {**item.payload, "transactionId": 3,
               "meterValue": [{"timestamp": "2026-01-01T00:00:00Z", "sampledValue": []}]}
    assert stored_json(item, rebuilt) is None
    storage.close()
