"""What the outbox replay was made cheaper with still behaves as before (docs/performance.md).

- The 1.6 transactionId of a queued message is read from the journal once per transaction
  (not per message) and every message still carries its own transaction's id; an answer to
  the transaction's StartTransaction forgets the kept id, so one read inside a rolled-back
  ack cannot outlive it.
- CALL message ids are random version-4 UUIDs in their usual text form; a CALL not answered
  in time still fails with CallTimeout and its late answer is dropped.
- A payload the encoder cannot write (a circular structure) is refused before sending.
- ``ocpp.compression`` switches permessage-deflate off; it is on by default.
- ``cp-agent run`` freezes the start-up objects only once the agent is ready.
"""

from __future__ import annotations

import asyncio
import gc
import uuid
from pathlib import Path
from typing import Any

import pytest

from agent.app import Agent
from agent.cli import freeze_after_start
from agent.link.rpc import CallTimeout, RpcSession, _message_id
from agent.ocpp.v16.transactions import Transactions
from agent.storage import OutboxItem
from tests.conftest import agent_config, eventually, online, strict_csms, version_rig


def _item(action: str, tx_ref: str | None, item_id: int = 1) -> OutboxItem:
    return OutboxItem(id=item_id, action=action, payload={}, tx_ref=tx_ref, attempts=0,
                      next_attempt=0.0, created="")


async def test_offline_sessions_replay_in_order_each_with_its_own_id_read_once(
        short_dir: Path) -> None:
    defaults = {"MeterValueSampleInterval": 1, "AllowOfflineTxForUnknownId": True,
                "HeartbeatInterval": 3600}
    async with version_rig("1.6", short_dir, fake_clock=True, defaults=defaults) as (csms, make):
        await csms.pause()  # the CSMS is down from the start: everything is queued
        agent = await make()
        clock = agent.clock
        sessions, samples = 3, 4
        for n in range(sessions):
            agent.hal.plug(1)
            agent.hal.tap(f"OFFLINE-{n}")
            await eventually(lambda: agent.station.evses[1].tx is not None, "a session started")
            for _ in range(samples):
                await clock.advance(1.0)
            agent.hal.unplug(1)
            await eventually(lambda: agent.station.evses[1].tx is None, "the session ended")
        queued = agent.storage.outbox_count()
        assert queued >= sessions * (2 + samples)
        reads: list[str] = []
        tx_get = agent.storage.tx_get

        def counting(local_id: str) -> Any:
            reads.append(local_id)
            return tx_get(local_id)

        agent.storage.tx_get = counting  # type: ignore[method-assign]
        await csms.resume()
        await clock.advance(3.0)  # past the reconnect backoff
        await online(agent, csms, timeout=10)
        await eventually(lambda: agent.storage.outbox_count() == 0, "the replay ended", 20)
        records = [r for r in csms.transactions.values() if r["station_id"] == "CP1"]
        assert len(records) == sessions
        starts = csms.messages("CP1", "StartTransaction")
        assert [p["idTag"] for p in starts] == [f"OFFLINE-{n}" for n in range(sessions)]
        for record in records:  # the CSMS files each message under the id it carries
            assert record["start"] is not None and record["stop"] is not None
            assert len(record["meter_values"]) >= samples
        # Delivery order: all of a session before the next one's Start.
        order = [(m.action, m.payload.get("transactionId")) for m in
                 csms._calls("CP1", None, "cs->csms")
                 if m.action in ("StartTransaction", "MeterValues", "StopTransaction")]
        assert order[0][0] == "StartTransaction" and order[-1][0] == "StopTransaction"
        assert sum(1 for action, _ in order if action == "StartTransaction") == sessions
        # One journal read per transaction for its many messages, not one per message.
        assert len(reads) <= sessions, reads


async def test_an_answer_to_the_start_forgets_the_kept_transaction_id(short_dir: Path) -> None:
    async with version_rig("1.6", short_dir) as (csms, make):
        agent = await make()
        await online(agent, csms)
        agent.hal.plug(1)
        agent.hal.tap("TAG1")
        await csms.wait_for("StartTransaction", station_id="CP1")
        await asyncio.wait_for(agent.adapters["1.6"].outbox.idle.wait(), 5)
        tx = agent.station.evses[1].tx
        assert tx is not None and tx.remote_id is not None
        block = agent.adapters["1.6"].block(Transactions)
        meter = _item("MeterValues", tx.local_id)
        assert block.prepare_outbox(meter, {})["transactionId"] == int(tx.remote_id)
        # A read inside an ack's commit that is then rolled back (the id never reached the
        # file) is kept ...
        with pytest.raises(RuntimeError), agent.storage.atomic():
            agent.storage.tx_set_remote_id(tx.local_id, "990")
            block._remote_ids.clear()
            assert block.prepare_outbox(meter, {})["transactionId"] == 990
            raise RuntimeError("the commit failed")
        # ... only until the Start is answered (again): then the journal is read afresh.
        with agent.storage.atomic():
            block.outbox_result(_item("StartTransaction", tx.local_id),
                                {"transactionId": 991, "idTagInfo": {"status": "Accepted"}})
        assert block.prepare_outbox(meter, {})["transactionId"] == 991
        # A drop of the Start forgets it too.
        block._remote_ids[tx.local_id] = 5
        with agent.storage.atomic():
            block.outbox_dropped(_item("StartTransaction", tx.local_id))
        assert block.prepare_outbox(meter, {})["transactionId"] == 991


def test_message_ids_are_version_4_uuids_in_their_usual_form() -> None:
    ids = [_message_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        assert str(parsed) == text and len(text) == 36


async def test_an_unanswered_call_times_out_and_its_late_answer_is_dropped() -> None:
    sent: list[str] = []

    async def send(frame: str) -> None:
        sent.append(frame)

    rpc = RpcSession("1.6", send, {})
    with pytest.raises(CallTimeout) as info:
        await rpc.call("Heartbeat", {}, timeout=0.05)
    assert info.value.action == "Heartbeat" and info.value.timeout == 0.05
    late_id = sent[0].split('"')[1]
    await rpc.feed(f'[3,"{late_id}",{{"currentTime":"2026-01-01T00:00:00Z"}}]')
    task = asyncio.ensure_future(rpc.call("Heartbeat", {}, timeout=5))
    await eventually(lambda: len(sent) == 2, "the second CALL went out")
    second_id = sent[1].split('"')[1]
    assert second_id != late_id
    await rpc.feed(f'[3,"{second_id}",{{"currentTime":"2026-01-02T00:00:00Z"}}]')
    assert (await task)["currentTime"] == "2026-01-02T00:00:00Z"


async def test_a_payload_that_cannot_be_encoded_is_refused_before_sending() -> None:
    sent: list[str] = []

    async def send(frame: str) -> None:
        sent.append(frame)

    rpc = RpcSession("1.6", send, {}, validate=False)
    circular: dict = {}
    circular["self"] = circular
    with pytest.raises(ValueError, match="JSON"):
        await rpc.call("DataTransfer", {"vendorId": "x", "data": circular})
    assert sent == []


@pytest.mark.parametrize("compression", [None, True, False])
async def test_permessage_deflate_is_on_by_default_and_can_be_switched_off(
        short_dir: Path, compression: bool | None) -> None:
    cfg = agent_config("ws://127.0.0.1:1/", short_dir)
    assert cfg.ocpp.compression is True
    async with strict_csms(("1.6",)) as csms:
        cfg = agent_config(csms.url, short_dir)
        if compression is not None:
            cfg.ocpp.compression = compression
        agent = Agent(cfg)
        await agent.start()
        try:
            link = await online(agent, csms)
            names = [e.name for e in link.connection.protocol.extensions]
        finally:
            await agent.stop()
    assert names == ([] if compression is False else ["permessage-deflate"])


async def test_start_up_objects_are_frozen_only_once_the_agent_is_ready() -> None:
    ready = asyncio.Event()
    task = asyncio.ensure_future(freeze_after_start(ready))
    try:
        await asyncio.sleep(0)
        assert not task.done() and gc.get_freeze_count() == 0
        ready.set()
        await asyncio.wait_for(task, 5)
        assert gc.get_freeze_count() > 0
        # What the freeze hid from the collector right after start-up is not garbage.
        gc.unfreeze()
        assert gc.collect() == 0
    finally:
        gc.unfreeze()
