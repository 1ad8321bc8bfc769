"""Reaction time of the agent: from a driver's action or a CSMS command to the contactor.

    python -m bench.latency [--runs 200] [--quick]

The agent is the real one (``Agent`` as ``cp-agent run`` builds it) on the mock HAL, connected
over a websocket on 127.0.0.1 to the bench CSMS running in another process (so that the
CSMS's work does not land on the agent's event loop).  Times are ``time.perf_counter()``
(CLOCK_MONOTONIC): the start is taken just before the HAL input (tap, unplug) or, for
RemoteStart, by the CSMS process just before it writes the frame; the end is taken in the
core's trace hook right after the HAL confirmed the contactor command.

Scenarios, each with the EV already plugged in and the agent quiet (no message in flight):

* tap, local-list hit: LocalPreAuthorize true, the card in the local list (sent with
  SendLocalList), so no round trip;
* tap, online Authorize: LocalPreAuthorize false, Authorize to the CSMS and back;
* RemoteStartTransaction from the CSMS (AuthorizeRemoteTxRequests false);
* unplug to contactor open, sampled at the end of every session above.
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
from agent.config import load_config_text
from bench._common import CsmsProcess, Report, percentile, station_config

STATION = "LAT1"
LOCAL_TAG = "LOCAL-HIT"
ONLINE_TAG = "ONLINE-TAG"
REMOTE_TAG = "REMOTE-TAG"
TIMEOUT = 10.0


class Probe:
    """Watches one agent: contactor timestamps from the core, CALLs in flight on the link."""

    def __init__(self) -> None:
        self.agent: Agent | None = None
        self.closed_at: float | None = None
        self.opened_at: float | None = None
        self._contactor = asyncio.Event()
        self._frames = asyncio.Event()
        self.outstanding = 0  # our CALLs without an answer yet

    def attach(self, agent: Agent) -> Agent:
        self.agent = agent
        agent.station.traces.append(self._trace)
        return agent

    def _trace(self, evse_id: int, what: str, detail: dict) -> None:
        if what == "contactor":
            now = time.perf_counter()
            if detail["closed"]:
                self.closed_at = now
            else:
                self.opened_at = now
            self._contactor.set()

    def on_frame(self, direction: str, kind: str, unique_id: str, action: str,
                 payload: dict) -> None:
        if direction == "out" and kind == "CALL":
            self.outstanding += 1
        elif direction == "in" and kind in ("CALLRESULT", "CALLERROR"):
            self.outstanding -= 1
        self._frames.set()

    async def contactor(self, closed: bool) -> float:
        """Wait for the contactor to reach ``closed``; return when it did (perf_counter)."""
        async with asyncio.timeout(TIMEOUT):
            while True:
                at = self.closed_at if closed else self.opened_at
                if at is not None:
                    return at
                self._contactor.clear()
                await self._contactor.wait()

    def arm(self) -> None:
        self.closed_at = self.opened_at = None

    async def quiet(self) -> None:
        """Until every HAL event is handled and nothing is queued or in flight."""
        agent = self.agent
        assert agent is not None
        # The status queue holds StatusNotifications not yet handed to the link: it closes the
        # gap between "queued" and "in flight" that the outbox flags do not cover.
        adapter = agent.adapters["1.6"]
        async with asyncio.timeout(TIMEOUT):
            while True:
                await agent.station.quiet(TIMEOUT)
                await adapter.outbox.idle.wait()
                if self.outstanding == 0 and not len(adapter.status):
                    await asyncio.sleep(0)  # let a status queued by the last answer show up
                    if self.outstanding == 0 and not len(adapter.status):
                        return
                self._frames.clear()
                await self._frames.wait()


async def _session(probe: Probe, csms: CsmsProcess, how: str) -> tuple[float, float]:
    """One session: plug, start it ``how``, unplug. Returns (start latency, unplug latency)."""
    assert probe.agent is not None
    hal = probe.agent.hal
    hal.plug(1)
    await probe.quiet()
    probe.arm()
    if how == "remote":
        sent_at, answer = await csms.call(STATION, "RemoteStartTransaction",
                                          {"idTag": REMOTE_TAG, "connectorId": 1})
        if answer.get("status") != "Accepted":
            raise RuntimeError(f"RemoteStartTransaction answered {answer}")
        t0 = sent_at
    else:
        t0 = time.perf_counter()
        hal.tap(LOCAL_TAG if how == "local" else ONLINE_TAG)
    closed = await probe.contactor(True) - t0
    await probe.quiet()
    probe.arm()
    t1 = time.perf_counter()
    hal.unplug(1)
    opened = await probe.contactor(False) - t1
    await probe.quiet()
    return closed, opened


async def run(runs: int, warmup: int, quick: bool) -> Report:
    report = Report("latency", quick)
    csms = CsmsProcess()
    url = await csms.start()
    tmp = tempfile.TemporaryDirectory(prefix="cpa-bench-", dir="/tmp")
    agent: Agent | None = None
    try:
        doc = station_config(url, Path(tmp.name), STATION, defaults={
            "MeterValueSampleInterval": 60, "HeartbeatInterval": 300})
        cfg = load_config_text(json.dumps(doc), "bench")
        probe = Probe()
        agent = probe.attach(Agent(cfg, control=False, on_frame=probe.on_frame))
        await agent.start()
        await asyncio.wait_for(agent.adapters["1.6"].accepted.wait(), TIMEOUT)
        await probe.quiet()
        answer = (await csms.call(STATION, "SendLocalList", {
            "listVersion": 1, "updateType": "Full",
            "localAuthorizationList": [{"idTag": LOCAL_TAG,
                                        "idTagInfo": {"status": "Accepted"}}]}))[1]
        assert answer == {"status": "Accepted"}, answer
        samples: dict[str, list[float]] = {"local": [], "online": [], "remote": []}
        unplug: list[float] = []
        for how, pre_auth in (("local", "true"), ("online", "false"), ("remote", "false")):
            res = (await csms.call(STATION, "ChangeConfiguration",
                                   {"key": "LocalPreAuthorize", "value": pre_auth}))[1]
            assert res == {"status": "Accepted"}, res
            for i in range(warmup + runs):
                closed, opened = await _session(probe, csms, how)
                if i >= warmup:
                    samples[how].append(closed * 1000)
                    unplug.append(opened * 1000)
        stats = await csms.stats()
        expected = 3 * (warmup + runs)
        if stats["tx_stopped"] != expected:
            raise RuntimeError(f"the CSMS saw {stats['tx_stopped']} sessions, not {expected}")
        auth = stats["calls"].get("Authorize", 0)
        if auth != warmup + runs:
            raise RuntimeError(f"{auth} Authorize for {warmup + runs} online taps: the "
                               f"local-list runs did a round trip, or online ones did not")
        names = {"local": ("tap -> contactor closed, local-list hit", 20.0),
                 "online": ("tap -> contactor closed, online Authorize", 30.0),
                 "remote": ("RemoteStart -> contactor closed", 30.0)}
        for how, (label, target) in names.items():
            s = samples[how]
            report.add(f"{label} p50", percentile(s, 50), "ms")
            report.add(f"{label} p99", percentile(s, 99), "ms", target)
            report.details[how] = {"runs": len(s), "max_ms": max(s), "mean_ms": sum(s) / len(s)}
        report.add("unplug -> contactor open p50", percentile(unplug, 50), "ms")
        report.add("unplug -> contactor open p99", percentile(unplug, 99), "ms", 20.0)
        report.details["unplug"] = {"runs": len(unplug), "max_ms": max(unplug)}
        report.details["runs_per_scenario"] = runs
        report.details["csms_calls"] = stats["calls"]
    finally:
        if agent is not None:
            await agent.stop()
        await csms.stop()
        tmp.cleanup()
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="reaction-time benchmark (mock HAL, loopback CSMS)")
    p.add_argument("--runs", type=int, default=None, help="sessions per scenario (default 200)")
    p.add_argument("--quick", action="store_true", help="20 runs: checks the script, not speed")
    ns = p.parse_args(argv)
    runs = ns.runs or (20 if ns.quick else 200)
    logging.basicConfig(level=logging.ERROR)
    report = asyncio.run(run(runs, warmup=2 if ns.quick else 10, quick=ns.quick))
    report.emit()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
