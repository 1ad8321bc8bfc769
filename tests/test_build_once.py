"""What an agent works out once per process instead of once per station (issue 18: a swarm
builds thousands of agents from the same few shapes), and that doing so changes nothing a
station does: the same handlers, triggers and outbox owners, the same foreign-message drop."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.app import Agent
from agent.ocpp import registry
from agent.ocpp.adapter import Adapter
from agent.ocpp.blocks import Block, route_names
from agent.ocpp.registry import versions
from tests.conftest import agent_config

NOWHERE = "ws://127.0.0.1:9/ocpp"  # nothing listens: the station stays offline
IN_MEMORY = "storage: {path: ':memory:'}"


def _routed(adapter: Adapter) -> set[str]:
    """Every action the blocks route, asked of each block as a fresh adapter would."""
    out: set[str] = set()
    for block in adapter.blocks:
        if type(block).routes is Block.routes:
            out |= {action for action, _ in route_names(type(block))}
        else:
            out |= set(block.routes())
    return out


@pytest.mark.parametrize("version", versions())
def test_handlers_triggers_and_owners_are_the_blocks(version: str, tmp_path: Path) -> None:
    agent = Agent(agent_config(NOWHERE, tmp_path, versions=(version,)), control=False)
    try:
        adapter = agent.adapter
        other = Adapter(registry.spec(version), adapter.ctx)
        assert set(adapter.handlers) == _routed(adapter) == set(other.handlers)
        assert len(adapter.handlers) == len(_routed(adapter))
        for action in adapter.handlers:
            assert action in adapter.handlers
            handler = adapter.handlers[action]
            assert handler is adapter.handlers.get(action)  # wrapped once, then kept
            assert handler is not other.handlers[action]  # each adapter its own
        assert adapter.handlers.get("NoSuchAction") is None
        assert "NoSuchAction" not in adapter.handlers
        owners = {a for b in adapter.blocks for a in b.OUTBOX_ACTIONS}
        assert adapter.outbox_actions == frozenset(owners)
        for block in adapter.blocks:
            for message, method in block.TRIGGERS.items():
                target = adapter.trigger_target(message)
                assert target is not None and target.__self__ is block
                assert target.__func__ is getattr(type(block), method)
    finally:
        agent.storage.close()


def test_a_block_dropping_its_trigger_is_heard(tmp_path: Path) -> None:
    """A block instance may set TRIGGERS of its own (2.0.1 ISO 15118 without the SECCs has
    none): the shared layout of its class must not hand the trigger out anyway."""

    class Offers(Block):
        TRIGGERS = {"X": "send_x"}

        def __init__(self, adapter: Adapter) -> None:
            super().__init__(adapter)
            if adapter.version == "1.6":
                self.TRIGGERS = {}

        async def send_x(self, evse_id: int | None) -> None:
            pass

    import dataclasses

    agent = Agent(agent_config(NOWHERE, tmp_path), control=False)
    try:
        spec = dataclasses.replace(registry.spec("1.6"),
                                   blocks=(*registry.spec("1.6").blocks, Offers))
        assert Adapter(spec, agent.adapter.ctx).trigger_target("X") is None
        spec201 = dataclasses.replace(spec, version="2.0.1")
        assert Adapter(spec201, agent.adapter.ctx).trigger_target("X") is not None
    finally:
        agent.storage.close()


def _count_scans(agent: Agent, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    scans: list[int] = []
    real = agent.storage.outbox_foreign

    def counting(allowed):  # noqa: ANN001, ANN202 - the repository's own signature
        scans.append(1)
        return real(allowed)

    monkeypatch.setattr(agent.storage, "outbox_foreign", counting)
    return scans


def test_in_memory_station_skips_the_foreign_message_scan(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    agent = Agent(agent_config(NOWHERE, tmp_path, extra=IN_MEMORY), control=False)
    try:
        scans = _count_scans(agent, monkeypatch)
        assert "SecurityEventNotification" in agent.adapter.outbox_actions
        agent.adapter.enqueue("SecurityEventNotification", {"type": "X", "timestamp": "T"})
        agent._on_version(agent.adapter)
        assert scans == []  # only this version's messages can be queued: no query
        assert agent.storage.outbox_count() == 1
        # Something no block of this version sends was queued after all: scanned, dropped.
        agent.adapter.enqueue("TransactionEvent", {"eventType": "Started"})
        agent._on_version(agent.adapter)
        assert scans == [1]
        assert agent.storage.outbox_count() == 1
    finally:
        agent.storage.close()


def test_a_state_file_is_always_scanned(tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A state file may hold what another version queued before a restart."""
    agent = Agent(agent_config(NOWHERE, tmp_path), control=False)
    try:
        scans = _count_scans(agent, monkeypatch)
        agent._on_version(agent.adapter)
        assert scans == [1]
    finally:
        agent.storage.close()
