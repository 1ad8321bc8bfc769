"""OCPP 2.1 E17: a transaction a restart interrupted resumes, or ends with PowerLoss.

In-process agents on a FakeClock: the first one charges and "crashes" (nothing ended, the
state file closed as kill -9 leaves it); the second one starts on the same state file with a
fresh mock HAL (the EV plugged or not, the meter's register where it was) and a clock set the
chosen number of seconds after the first one's last journalled sign of life, as after a power
cut (another kernel boot). The SIGKILL test of a real `cp-agent run` is
tests/test_resumption_kill.py.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.app import Agent
from agent.clock import FakeClock, iso, parse_iso
from agent.core.model import ResumptionRules
from agent.core.resumption import last_alive
from agent.storage import Storage
from hal.mock import MockHal
from tests.conftest import adapter2x, eventually, online201, tx_events, version_rig

TIMEOUT_S = 60


def _defaults(timeout: int = TIMEOUT_S, allow_energy: bool = True) -> dict[str, Any]:
    return {"TxCtrlr.ResumptionTimeout": timeout,
            "TxCtrlr.AllowEnergyTransferResumption": allow_energy}


async def crash(agent: Agent) -> None:
    """What kill -9 leaves behind, in-process: nothing ended, nothing flushed, file closed."""
    agent._stopped = True  # the rig's stop() must not end the transactions either
    for task in agent._tasks:
        task.cancel()
    await asyncio.gather(*agent._tasks, return_exceptions=True)
    for adapter in agent.adapters.values():
        await adapter.stop()
    for evse in agent.station.evses.values():
        evse.close()
    for task in list(agent.station._tasks):
        task.cancel()
    await asyncio.gather(*agent.station._tasks, return_exceptions=True)
    if agent.control is not None:
        await agent.control.stop()
    agent.storage.close()


async def charging21(agent: Agent, csms: Any, tag: str = "TAG1") -> str:
    """Plug, tap, wait for Charging; the transactionId."""
    await online201(agent, csms)
    agent.hal.plug(1)
    agent.hal.tap(tag)
    ev = await csms.wait_for("TransactionEvent", station_id="CP1", predicate=lambda p: p[
        "transactionInfo"].get("chargingState") == "Charging")
    await asyncio.wait_for(adapter2x(agent, csms).outbox.idle.wait(), 5)
    return ev["transactionInfo"]["transactionId"]


def journal(state: Path, tx_id: str) -> Any:
    with Storage(str(state / "CP1.sqlite3")) as storage:
        return storage.tx_get(tx_id)


def restart_clock(state: Path, tx_id: str, gap_s: float) -> FakeClock:
    """A clock of another boot (a power cut) reading ``gap_s`` after the last sign of life."""
    then = parse_iso(last_alive(journal(state, tx_id))).timestamp()
    clock = FakeClock(start_wall=0.0, boot_id="boot-after-the-cut")
    clock._wall0 = then + gap_s - clock.monotonic()
    return clock


def hal_after(state: Path, tx_id: str, *, plugged: bool, extra_wh: float = 2.0) -> MockHal:
    hal = MockHal(1, ev_max_current_a=16)
    hal.sims[1].energy_wh = journal(state, tx_id).last_meter_wh + extra_wh
    if plugged:
        hal.plug(1)
    return hal


def seq_nos(csms: Any, tx_id: str) -> list[int]:
    return [p["seqNo"] for p in tx_events(csms) if p["transactionInfo"]["transactionId"] == tx_id]


@pytest.mark.parametrize("allow_energy, state", [(True, "Charging"), (False, "SuspendedEVSE")])
async def test_TC_E_113_CS_and_TC_E_112_CS_resumed_within_the_timeout(short_dir, allow_energy,
                                                                        state):
    """Same transactionId, seqNo going on, TxResumed with the charging state the restart led
    to and the register before and after; energy flows again only if allowed; one Ended."""
    async with version_rig("2.1", short_dir, fake_clock=True,
                           defaults=_defaults(allow_energy=allow_energy)) as (csms, make):
        first = await make()
        tx_id = await charging21(first, csms)
        await crash(first)
        before = journal(short_dir, tx_id)
        second = await make(clock=restart_clock(short_dir, tx_id, 20),
                            hal=hal_after(short_dir, tx_id, plugged=True))
        resumed = await csms.wait_for("TransactionEvent", station_id="CP1", timeout=10,
                                      predicate=lambda p: p["triggerReason"] == "TxResumed")
        evse = second.station.evses[1]
        assert resumed["eventType"] == "Updated"
        assert resumed["transactionInfo"]["transactionId"] == tx_id
        assert resumed["transactionInfo"]["chargingState"] == state
        contexts = {v["sampledValue"][0]["context"]: v for v in resumed["meterValue"]}
        assert contexts["Interruption.Begin"]["sampledValue"][0]["value"] == pytest.approx(
            before.last_meter_wh)
        assert contexts["Interruption.End"]["sampledValue"][0]["value"] == pytest.approx(
            before.last_meter_wh + 2)
        assert evse.tx is not None and evse.tx.local_id == tx_id
        assert evse.hw.contactor.commanded_closed is allow_energy
        second.hal.unplug(1)
        await csms.wait_for("TransactionEvent", station_id="CP1",
                            predicate=lambda p: p["eventType"] == "Ended")
        await asyncio.wait_for(adapter2x(second, csms).outbox.idle.wait(), 5)
    ended = tx_events(csms, eventType="Ended")
    assert len(ended) == 1 and ended[0]["transactionInfo"]["stoppedReason"] == "EVDisconnected"
    assert len(tx_events(csms, eventType="Started")) == 1
    assert seq_nos(csms, tx_id) == list(range(len(seq_nos(csms, tx_id)))), "gap-free, in order"


@pytest.mark.parametrize("case", ["after the timeout", "timeout 0", "EV unplugged",
                                  "authorization expired", "card blocked meanwhile"])
async def test_TC_E_115_CS_and_TC_E_116_CS_not_resumed_ends_with_power_loss(short_dir, case):
    timeout = 0 if case == "timeout 0" else TIMEOUT_S
    async with version_rig("2.1", short_dir, fake_clock=True,
                           defaults=_defaults(timeout)) as (csms, make):
        first = await make()
        if case == "authorization expired":
            soon = iso(datetime.now(UTC) + timedelta(seconds=10))
            csms.overrides["Authorize"] = lambda link, p: {
                "idTokenInfo": {"status": "Accepted", "cacheExpiryDateTime": soon}}
        tx_id = await charging21(first, csms)
        if case == "card blocked meanwhile":  # the cache learnt it before the cut
            from agent.core.authorization import AuthInfo

            first.station.authorization.remember("TAG1", AuthInfo("Blocked"))
        await crash(first)
        gap = TIMEOUT_S + 30 if case == "after the timeout" else 30
        second = await make(clock=restart_clock(short_dir, tx_id, gap),
                            hal=hal_after(short_dir, tx_id, plugged=case != "EV unplugged"))
        ended = await csms.wait_for("TransactionEvent", station_id="CP1", timeout=10,
                                    predicate=lambda p: p["eventType"] == "Ended")
        assert second.station.resumed == []
        why = {"after the timeout": "interrupted for 90 s, longer than the resumption "
                                    "timeout 60 s",
               "timeout 0": "resumption is off", "EV unplugged": "the EV is no longer connected",
               "authorization expired": "its authorization expired",
               "card blocked meanwhile": "the cache now says Blocked"}[case]
        assert why in second.station.not_resumed.get(tx_id, "(resumed)")
        assert second.station.evses[1].tx is None
        assert not second.station.evses[1].hw.contactor.commanded_closed
    assert ended["transactionInfo"]["transactionId"] == tx_id
    assert ended["triggerReason"] == "AbnormalCondition"
    assert ended["transactionInfo"]["stoppedReason"] == "PowerLoss"
    assert tx_events(csms, triggerReason="TxResumed") == []


async def test_a_stopped_session_waiting_for_the_unplug_resumes_without_energy(short_dir):
    """TxStopPoint EVConnected: a remote stop ends the energy, the transaction waits for the
    unplug. A restart must not hand the energy back: the withdrawal is in the journal."""
    defaults = {**_defaults(), "TxCtrlr.TxStopPoint": "EVConnected"}
    async with version_rig("2.1", short_dir, fake_clock=True, defaults=defaults) as (csms,
                                                                                      make):
        first = await make()
        tx_id = await charging21(first, csms)
        link = await csms.wait_station("CP1")
        answer = await link.call("RequestStopTransaction", {"transactionId": tx_id})
        assert answer["status"] == "Accepted"
        evse = first.station.evses[1]
        await eventually(lambda: not evse.hw.contactor.commanded_closed, "energy stopped")
        assert evse.tx is not None, "open until the unplug"
        await crash(first)
        second = await make(clock=restart_clock(short_dir, tx_id, 10),
                            hal=hal_after(short_dir, tx_id, plugged=True))
        resumed = await csms.wait_for("TransactionEvent", station_id="CP1", timeout=10,
                                      predicate=lambda p: p["triggerReason"] == "TxResumed")
        assert resumed["transactionInfo"]["chargingState"] == "EVConnected"
        evse = second.station.evses[1]
        assert evse.tx is not None and not evse.snapshot().authorized
        assert not evse.hw.contactor.commanded_closed and evse.offered_a == 0
        second.hal.unplug(1)
        ended = await csms.wait_for("TransactionEvent", station_id="CP1",
                                    predicate=lambda p: p["eventType"] == "Ended")
        assert ended["transactionInfo"]["stoppedReason"] == "Remote"


async def test_TC_B_103_CS_reset_immediate_and_resume_keeps_the_transaction(short_dir):
    async with version_rig("2.1", short_dir, fake_clock=True,
                           defaults=_defaults()) as (csms, make):
        first = await make()
        tx_id = await charging21(first, csms)
        link = await csms.wait_station("CP1")
        answer = await link.call("Reset", {"type": "ImmediateAndResume"})
        assert answer["status"] == "Accepted"
        await eventually(lambda: first.reset_kind is not None, "the agent restarts")
        evse = first.station.evses[1]
        await eventually(lambda: not evse.hw.contactor.commanded_closed, "contactor open")
        await first.stop()
        assert journal(short_dir, tx_id).closed is False, "not ended by the reset"
        clock = FakeClock(start_wall=0.0, boot_id=first.clock.boot_id)  # same kernel boot
        then = parse_iso(last_alive(journal(short_dir, tx_id))).timestamp()
        clock._wall0 = then + 3 - clock.monotonic()
        second = await make(clock=clock, hal=hal_after(short_dir, tx_id, plugged=True))
        resumed = await csms.wait_for("TransactionEvent", station_id="CP1", timeout=10,
                                      predicate=lambda p: p["triggerReason"] == "TxResumed")
        assert resumed["transactionInfo"] == {"transactionId": tx_id,
                                              "chargingState": "Charging"}
        assert second.station.evses[1].tx.local_id == tx_id
        assert tx_events(csms, eventType="Ended") == []


async def test_TC_B_101_CS_reset_immediate_and_resume_rejected_with_timeout_0(short_dir):
    async with version_rig("2.1", short_dir, fake_clock=True,
                           defaults=_defaults(0)) as (csms, make):
        first = await make()
        await charging21(first, csms)
        link = await csms.wait_station("CP1")
        answer = await link.call("Reset", {"type": "ImmediateAndResume"})
        assert answer["status"] == "Rejected"
        assert first.reset_kind is None and first.station.evses[1].tx is not None


async def test_resumption_variables_are_read_write_and_persisted(short_dir):
    async with version_rig("2.1", short_dir, fake_clock=True) as (csms, make):
        first = await make()
        await online201(first, csms)
        link = await csms.wait_station("CP1")
        answer = await link.call("SetVariables", {"setVariableData": [
            {"component": {"name": "TxCtrlr"}, "variable": {"name": "ResumptionTimeout"},
             "attributeValue": "120"},
            {"component": {"name": "TxCtrlr"},
             "variable": {"name": "AllowEnergyTransferResumption"},
             "attributeValue": "false"}]})
        assert [r["attributeStatus"] for r in answer["setVariableResult"]] == ["Accepted"] * 2
        await first.stop()
        second = await make()
        assert second.station.resumption is not None
        assert second.station.resumption() == ResumptionRules(120.0, allow_energy=False)


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_earlier_versions_have_no_resumption(short_dir, version):
    async with version_rig(version, short_dir, fake_clock=True) as (_csms, make):
        agent = await make()
        assert agent.station.resumption is None


# ---------------------------------------------------------------- the clock that survives

def test_elapsed_since_a_marker_of_the_same_boot_is_monotonic_even_without_a_clock():
    first = FakeClock(start_wall=0.0, boot_id="boot-A")  # no RTC: 1970, never synced
    marker = first.stamp()
    second = FakeClock(start_wall=0.0, boot_id="boot-A")  # kill -9, restart: same boot
    second._mono = first.monotonic() + 42
    assert second.elapsed_since(marker) == pytest.approx(42)
    other_boot = FakeClock(start_wall=0.0, boot_id="boot-B")
    assert other_boot.elapsed_since(marker) is None, "a power cut without RTC: unknown"


def test_elapsed_since_uses_the_anchor_of_an_earlier_process_of_this_boot(tmp_path):
    with Storage(str(tmp_path / "s.sqlite3")) as storage:
        first = FakeClock(start_wall=0.0, boot_id="boot-A")
        first.attach_store(storage)
        first.sync("2030-01-01T00:00:00Z")  # persisted anchor of boot-A
        stamp = first.stamp()
        assert not stamp.startswith("~")
        second = FakeClock(start_wall=0.0, boot_id="boot-A")
        second._mono = first.monotonic() + 10
        assert not second.trustworthy
        assert second.elapsed_since(stamp) is None
        second.attach_store(storage)  # the anchor tells the time in this boot again
        assert second.elapsed_since(stamp) == pytest.approx(10)
        third = FakeClock(start_wall=0.0, boot_id="boot-B")  # another boot, no RTC
        third.attach_store(storage)
        assert third.elapsed_since(stamp) is None
        later = FakeClock(start_wall=parse_iso(stamp).timestamp() - 1000 + 5,
                          boot_id="boot-C")  # an RTC: 5 s after
        assert later.elapsed_since(stamp) == pytest.approx(5)
        stale = FakeClock(start_wall=parse_iso(stamp).timestamp() - 1000 - 3600,
                          boot_id="boot-D")  # a clock an hour behind the stamp
        assert stale.elapsed_since(stamp) is None
