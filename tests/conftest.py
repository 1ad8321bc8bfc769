"""Shared fixtures: a strict test CSMS on 127.0.0.1 and agents built as `cp-agent run` does."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.app import Agent
from agent.clock import FakeClock
from agent.config import load_config_text
from agent.testing.csms import TestCsms

# Every test fails if a log record carried a secret or a private key (tests/secret_guard.py).
pytest_plugins = ("tests.secret_guard",)


@pytest.fixture
def short_dir() -> Any:
    """Unix socket paths are limited to 107 bytes; pytest's tmp_path can be longer."""
    d = tempfile.mkdtemp(prefix="cpa-", dir="/tmp")
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


@contextlib.asynccontextmanager
async def strict_csms(versions: tuple[str, ...]) -> AsyncIterator[TestCsms]:
    """A test CSMS that fails the test on any schema or protocol violation of the agent."""
    server = TestCsms(versions=versions)
    await server.start()
    yield server
    await server.stop()
    assert server.violations == [], f"schema violations: {server.violations}"
    assert server.internal_errors == [], f"test CSMS bugs: {server.internal_errors}"


@contextlib.asynccontextmanager
async def agent_factory(csms: TestCsms, state: Path,
                        versions: tuple[str, ...]) -> AsyncIterator[AgentFactory]:
    """Build agents as `cp-agent run` does, pointed at ``csms``; all stopped at the end."""
    agents: list[Agent] = []

    async def make(start: bool = True, **kw: Any) -> Agent:
        url = kw.pop("url", csms.url)
        kw.setdefault("versions", versions)
        agent = Agent(agent_config(url, state, **kw))
        agents.append(agent)
        if start:
            await agent.start()
        return agent

    yield make
    for agent in agents:
        await agent.stop()


@pytest.fixture
async def csms() -> AsyncIterator[TestCsms]:
    async with strict_csms(("1.6",)) as server:
        yield server


def agent_config(url: str, state: Path, *, station_id: str = "CP1", versions=("1.6",),
                 defaults: dict | None = None, password: str | None = None,
                 profile: int = 0, evses: int = 1, extra: str = "") -> Any:
    ocpp: dict[str, Any] = {"url": url, "versions": list(versions),
                            "defaults": defaults or {}, "security_profile": profile,
                            "call_timeout_s": 5,
                            "reconnect": {"min_backoff_s": 0.05, "max_backoff_s": 0.2}}
    if password is not None:
        ocpp["password"] = password
        from tests.secret_guard import register  # the plugin below, loaded by then

        register(password)
    doc = {
        "station": {"id": station_id},
        "ocpp": ocpp,
        "storage": {"path": str(state / f"{station_id}.sqlite3"), "meter_persist_s": 1},
        "control": {"socket": str(state / f"{station_id}.sock")},
        "evses": [{"id": i} for i in range(1, evses + 1)],
        "hal": {"driver": "mock", "ev_max_current_a": 16},
    }
    if extra:  # more YAML, merged over the document (top-level sections)
        doc.update(yaml.safe_load(extra) or {})
    return load_config_text(json.dumps(doc), "test")


AgentFactory = Callable[..., Awaitable[Agent]]


@pytest.fixture
async def make_agent(csms: TestCsms, short_dir: Path) -> AsyncIterator[AgentFactory]:
    async with agent_factory(csms, short_dir, ("1.6",)) as make:
        yield make


async def online(agent: Agent, csms: TestCsms, timeout: float = 5.0) -> Any:
    """Wait until the agent's boot was accepted; return its CSMS-side link."""
    await asyncio.wait_for(agent.adapters["1.6"].accepted.wait(), timeout)
    link = await csms.wait_station(agent.cfg.station.id, timeout)
    # The statuses sent right after boot end with connector 0: the station is settled.
    await csms.wait_for("StatusNotification", station_id=agent.cfg.station.id,
                        predicate=lambda p: p["connectorId"] == 0, timeout=timeout)
    return link


async def charging(agent: Agent, csms: TestCsms, tag: str = "TAG1", evse: int = 1) -> dict:
    """Plug, tap, and wait for the StartTransaction to be confirmed; returns its payload."""
    hal = agent.hal
    hal.plug(evse)
    hal.tap(tag)
    start = await csms.wait_for("StartTransaction", station_id=agent.cfg.station.id,
                                predicate=lambda p: p["idTag"] == tag and p["connectorId"] == evse)
    await asyncio.wait_for(agent.adapters["1.6"].outbox.idle.wait(), 5)
    return start


# ---------------------------------------------------------------- OCPP 2.0.1 and 2.1

# 2.1 builds on 2.0.1: a 2.0.1 test that applies to 2.1 runs on both.  The csms201 /
# make_agent201 fixtures speak the version of the ``v2`` fixture: 2.0.1, unless a test says
# ``@pytest.mark.parametrize("v2", VERSIONS_201_PLUS)`` or a module sets
# ``v2 = on_versions_201_plus()`` (then every test of it using those fixtures runs on both).
VERSIONS_201_PLUS = ("2.0.1", "2.1")


@pytest.fixture
def v2() -> str:
    """The 2.x version csms201 / make_agent201 speak (see VERSIONS_201_PLUS)."""
    return "2.0.1"


def on_versions_201_plus(versions: tuple[str, ...] = VERSIONS_201_PLUS) -> Any:
    """A module-level ``v2`` fixture running the module's 2.x tests on each of ``versions``:
    ``v2 = on_versions_201_plus()``."""

    @pytest.fixture(params=versions, name="v2")
    def _v2(request: pytest.FixtureRequest) -> str:
        return request.param

    return _v2


@pytest.fixture
async def csms201(v2: str) -> AsyncIterator[TestCsms]:
    """A strict test CSMS speaking 2.0.1 only (or ``v2``'s version)."""
    async with strict_csms((v2,)) as server:
        yield server


@pytest.fixture
async def make_agent201(csms201: TestCsms, short_dir: Path,
                        v2: str) -> AsyncIterator[AgentFactory]:
    """Agents offering only 2.0.1 / ``v2`` (unless ``versions`` says otherwise) to ``csms201``."""
    async with agent_factory(csms201, short_dir, (v2,)) as make:
        yield make


def adapter2x(agent: Agent, csms: TestCsms) -> Any:
    """The agent's adapter of the 2.x version the CSMS speaks (its first one the agent has)."""
    return next(agent.adapters[v] for v in csms.versions if v in agent.adapters and v != "1.6")


async def online201(agent: Agent, csms: TestCsms, timeout: float = 5.0) -> Any:
    """Wait until a 2.0.1 (2.1) boot was accepted and settled; return the CSMS-side link."""
    await asyncio.wait_for(adapter2x(agent, csms).accepted.wait(), timeout)
    link = await csms.wait_station(agent.cfg.station.id, timeout)
    for evse_id in agent.station.evses:
        await csms.wait_for("StatusNotification", station_id=agent.cfg.station.id,
                            predicate=lambda p, e=evse_id: p["evseId"] == e, timeout=timeout)
    await asyncio.wait_for(adapter2x(agent, csms).outbox.idle.wait(), timeout)
    return link


def tx_events(csms: TestCsms, station_id: str = "CP1", **match: Any) -> list[dict]:
    """The TransactionEvents a station sent, filtered by top-level fields (eventType=...)."""
    return [p for p in csms.messages(station_id, "TransactionEvent")
            if all(p.get(k) == v for k, v in match.items())]


async def charging201(agent: Agent, csms: TestCsms, tag: str = "TAG1", evse: int = 1) -> dict:
    """Plug, tap, wait until the EV charges and every event was delivered; return Started."""
    agent.hal.plug(evse)
    agent.hal.tap(tag)
    started = await csms.wait_for(
        "TransactionEvent", station_id=agent.cfg.station.id,
        predicate=lambda p: p["eventType"] == "Started" and p["evse"]["id"] == evse)
    await csms.wait_for(
        "TransactionEvent", station_id=agent.cfg.station.id,
        predicate=lambda p: p["transactionInfo"]["transactionId"]
        == started["transactionInfo"]["transactionId"]
        and p["transactionInfo"].get("chargingState") == "Charging")
    await asyncio.wait_for(adapter2x(agent, csms).outbox.idle.wait(), 5)
    return started


async def eventually(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Wait until ``predicate()`` holds (re-checked every few ms), or fail saying ``what``."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                if predicate():
                    return
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not within {timeout}s: {what}") from None


@contextlib.asynccontextmanager
async def version_rig(version: str, state: Path, *, fake_clock: bool = False,
                      **kw: Any) -> AsyncIterator[tuple[TestCsms, Callable[..., Awaitable[Agent]]]]:
    """A strict CSMS of ``version`` and a factory of agents offering it, all stopped at the
    end. ``fake_clock``: each agent runs on a FakeClock started at the real time, and the
    CSMS's real-time check of boot retries is off (the fake clock is the time that counts)."""
    async with strict_csms((version,)) as csms:
        csms.strict_timing = not fake_clock
        agents: list[Agent] = []

        async def make(*, clock: Any = None, hal: Any = None, **more: Any) -> Agent:
            if clock is None and fake_clock:
                clock = FakeClock(start_wall=time.time())
            agent = Agent(agent_config(csms.url, state, versions=(version,), **kw, **more),
                          clock=clock, hal=hal)
            agents.append(agent)
            await agent.start()
            return agent

        try:
            yield csms, make
        finally:
            for agent in agents:
                await agent.stop()
