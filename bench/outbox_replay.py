"""Outbox replay: sessions recorded while the CSMS was down, delivered after it comes back.

    python -m bench.outbox_replay [--sessions 100] [--messages 100] [--quick]

The agent is the real one on the mock HAL, with a fake clock so that a day of offline charging
takes seconds: EVs plug in, cards are accepted offline (AllowOfflineTxForUnknownId), the core
starts transactions, the 1.6 adapter samples MeterValues every (fake) second and the EVs
unplug.  Every StartTransaction, MeterValues and StopTransaction goes through the adapter into
the SQLite outbox exactly as it does in the field (100 sessions x 100 messages = 10,000).

Then the bench CSMS (another process, so its work is not the agent's) starts listening on the
URL the agent has been failing to reach, the agent reconnects, boots and replays the outbox:
one CALL in flight at a time, each item deleted only when its CALLRESULT arrived.  Measured:
from the websocket connection being open to the last item acknowledged, and the CSMS's count
of what it received.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import tempfile
import time
from pathlib import Path

from agent.app import Agent
from agent.clock import FakeClock
from agent.config import load_config_text
from bench._common import CsmsProcess, Profile, Report, free_port, station_config

STATION = "REPLAY1"
TIMEOUT = 120.0


async def _record_offline(agent: Agent, clock: FakeClock, sessions: int, messages: int,
                          evses: int) -> int:
    """Run ``sessions`` sessions of ``messages`` outbox items each, ``evses`` at a time."""
    hal = agent.hal
    storage = agent.storage
    meter_values = messages - 2  # plus StartTransaction and StopTransaction
    done = 0
    while done < sessions:
        batch = min(evses, sessions - done)
        base = storage.outbox_count()
        for evse in range(1, batch + 1):
            hal.plug(evse)
            hal.tap(f"OFFLINE-{done + evse}", evse)
        await agent.station.settled()
        # The taps authorize in tasks of their own; each start queues one message.
        queued = agent.adapters["1.6"].outbox.queued
        async with asyncio.timeout(TIMEOUT):
            while storage.outbox_count() < base + batch:
                queued.clear()
                if storage.outbox_count() < base + batch:
                    await queued.wait()
        # Every tick of the fake clock makes each running session sample once.
        target = base + batch * (1 + meter_values)
        while storage.outbox_count() < target:
            await clock.advance(1.0)
        if storage.outbox_count() != target:
            raise RuntimeError(f"outbox holds {storage.outbox_count()}, expected {target}: "
                               f"the samplers did not tick together")
        for evse in range(1, batch + 1):
            hal.unplug(evse)
        await agent.station.settled()
        if storage.outbox_count() != base + batch * messages:
            raise RuntimeError("unplugging did not queue one StopTransaction per session")
        done += batch
    return storage.outbox_count()


def _state_kb(state_dir: Path) -> float:
    return sum(p.stat().st_size for p in state_dir.glob(f"{STATION}.sqlite3*")) / 1024


async def run(sessions: int, messages: int, evses: int, quick: bool,
              profile: Profile | None = None) -> Report:
    report = Report("outbox_replay", quick)
    port = free_port()
    url = f"ws://127.0.0.1:{port}/"
    clock = FakeClock(start_wall=time.time())
    tmp = tempfile.TemporaryDirectory(prefix="cpa-bench-", dir="/tmp")
    doc = station_config(url, Path(tmp.name), STATION, evses=evses, min_backoff_s=1,
                         max_backoff_s=2, defaults={
                             "MeterValueSampleInterval": 1, "HeartbeatInterval": 3600,
                             "AllowOfflineTxForUnknownId": True,
                             "MeterValuesSampledData": "Energy.Active.Import.Register,"
                                                       "Power.Active.Import,Current.Import"})
    cfg = load_config_text(json.dumps(doc), "bench")
    first_frame: list[float] = []  # when the BootNotification went out: the link was open

    def on_frame(direction: str, kind: str, unique_id: str, action: str, payload: dict) -> None:
        if not first_frame:
            first_frame.append(time.perf_counter())

    agent = Agent(cfg, clock=clock, control=False, on_frame=on_frame)
    csms = CsmsProcess(port=port)
    try:
        await agent.start()
        t_rec = time.perf_counter()
        queued = await _record_offline(agent, clock, sessions, messages, evses)
        recording_s = time.perf_counter() - t_rec
        tx_queued = sessions * messages
        other = queued - tx_queued  # e.g. a SecurityEventNotification of the start-up
        db_kb = _state_kb(Path(tmp.name))

        await csms.start()
        profile = profile or Profile(None)
        profile.start()
        t_up = time.perf_counter()
        await clock.advance(3.0)  # past the reconnect backoff the link is sleeping through
        async with asyncio.timeout(TIMEOUT):
            await agent.adapters["1.6"].accepted.wait()
            t_booted = time.perf_counter()
            t_connected = first_frame[0] if first_frame else t_booted
            while agent.storage.outbox_count():
                agent.adapters["1.6"].outbox.idle.clear()
                if agent.storage.outbox_count():
                    await agent.adapters["1.6"].outbox.idle.wait()
        t_done = time.perf_counter()
        profile.stop()
        stats = await csms.stats()
        calls = stats["calls"]
        delivered = sum(calls.get(a, 0) for a in
                        ("StartTransaction", "MeterValues", "StopTransaction"))
        replay_s = t_done - t_up
        report.add(f"CSMS back -> {tx_queued} transaction messages acknowledged",
                   replay_s, "s", 10.0 if tx_queued >= 10_000 else None,
                   note=f"+{other} other queued message(s)" if other else "")
        report.add("  of which: CSMS back -> connection open", t_connected - t_up, "s",
                   note="the reconnect backoff is skipped with the fake clock")
        report.add("  of which: connection open -> BootNotification accepted",
                   t_booted - t_connected, "s")
        report.add("replay throughput after the boot", queued / (t_done - t_booted), "msg/s")
        report.add("transaction messages the CSMS received", delivered, "")
        report.add("sessions the CSMS saw started / stopped",
                   stats["tx_started"], "", note=f"{stats['tx_stopped']} stopped")
        report.add("recording the sessions offline (not part of the replay)", recording_s, "s")
        report.add("state file size with the full outbox", db_kb / 1024, "MB")
        report.details.update(sessions=sessions, messages_per_session=messages, evses=evses,
                              other_queued=other, csms_calls=calls,
                              outbox_sent=agent.adapters["1.6"].outbox.sent,
                              outbox_dropped=agent.adapters["1.6"].outbox.dropped)
        if delivered != tx_queued or stats["tx_stopped"] != sessions:
            raise RuntimeError(f"the CSMS got {delivered} of {tx_queued} messages and "
                               f"{stats['tx_stopped']} of {sessions} stops")
    finally:
        await agent.stop()
        await csms.stop()
        tmp.cleanup()
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="outbox replay benchmark")
    p.add_argument("--sessions", type=int, default=None, help="offline sessions (default 100)")
    p.add_argument("--messages", type=int, default=None,
                   help="outbox messages per session, Start and Stop included (default 100)")
    p.add_argument("--evses", type=int, default=10, help="sessions running at once")
    p.add_argument("--quick", action="store_true", help="4 x 20 messages: checks the script")
    p.add_argument("--profile", metavar="FILE", help="pyinstrument profile of the replay")
    ns = p.parse_args(argv)
    sessions = ns.sessions or (4 if ns.quick else 100)
    messages = ns.messages or (20 if ns.quick else 100)
    if messages < 2:
        p.error("--messages must be at least 2 (Start and Stop)")
    logging.basicConfig(level=logging.CRITICAL)
    report = asyncio.run(run(sessions, messages, min(ns.evses, sessions), ns.quick,
                             Profile(ns.profile)))
    report.emit()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
