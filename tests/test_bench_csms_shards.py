"""The bench CSMS as several processes on one port: stats, calls and the accept() guard.

A 20,000-station swarm needs more descriptors than one process may have here, so the bench
CSMS runs as K processes sharing a port with SO_REUSEPORT (``bench._common.CsmsShards``).
What has to hold: the group counts what the stations sent exactly once, a CALL reaches a
station whichever process the kernel gave it to, and a process out of descriptors counts its
failed accept() calls instead of logging a traceback every second.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import sys

import pytest
from websockets.asyncio.client import ClientConnection, connect

from bench._common import REPO, CsmsShards, csms_shards_for, merge_stats

BOOT = {"chargePointVendor": "cp-agent", "chargePointModel": "bench"}


class Station:
    """A bare OCPP 1.6 client: boots, heartbeats, and answers every CALL naming itself."""

    def __init__(self, station_id: str) -> None:
        self.id = station_id
        self.sent: dict[str, int] = {}
        self.ws: ClientConnection | None = None
        self._answerer: asyncio.Task | None = None
        self._n = 0

    async def open(self, url: str) -> None:
        self.ws = await connect(url + self.id, subprotocols=["ocpp1.6"], open_timeout=10)  # type: ignore[list-item]

    async def send(self, action: str, payload: dict) -> list:
        """One CALL and its answer (nothing else is in flight before ``answer_calls``)."""
        assert self.ws is not None
        self._n += 1
        unique_id = f"{self.id}-{self._n}"
        await self.ws.send(json.dumps([2, unique_id, action, payload]))
        answer = json.loads(await asyncio.wait_for(self.ws.recv(), 10))
        assert answer[:2] == [3, unique_id], answer
        self.sent[action] = self.sent.get(action, 0) + 1
        return answer

    def answer_calls(self) -> None:
        async def loop() -> None:
            assert self.ws is not None
            async for raw in self.ws:
                kind, unique_id, action, _ = json.loads(raw)
                assert kind == 2
                await self.ws.send(json.dumps([3, unique_id, {"station": self.id,
                                                              "action": action}]))

        self._answerer = asyncio.create_task(loop())

    async def close(self) -> None:
        if self._answerer is not None:
            self._answerer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._answerer
        if self.ws is not None:
            await self.ws.close()


def test_one_csms_process_per_15000_stations():
    assert [csms_shards_for(n) for n in (0, 1, 2000, 15_000, 15_001, 20_000, 45_001)] == [
        1, 1, 1, 1, 2, 2, 4]


def test_merged_stats_count_a_station_seen_by_two_processes_once():
    a = {"connections": 1, "booted": 2, "calls": {"BootNotification": 2}, "tx_started": 1,
         "cpu_s": 0.5, "station_ids": ["CP1"], "booted_ids": ["CP1", "CP2"]}
    b = {"connections": 1, "booted": 1, "calls": {"BootNotification": 1, "Heartbeat": 4},
         "tx_started": 2, "cpu_s": 0.25, "station_ids": ["CP2"], "booted_ids": ["CP2"]}
    merged = merge_stats([a, b])
    assert merged["calls"] == {"BootNotification": 3, "Heartbeat": 4}
    assert (merged["tx_started"], merged["cpu_s"], merged["processes"]) == (3, 0.75, 2)
    assert (merged["connections"], merged["booted"]) == (2, 2)  # CP2 rebooted elsewhere


async def test_two_processes_on_one_port_count_and_call_like_one():
    csms = CsmsShards(shards=2)
    url = await csms.start()
    stations: list[Station] = []
    where: dict[str, int] = {}
    try:
        assert len(set(csms.pids)) == 2
        # The kernel spreads connections by a hash: connect until both processes hold some
        # (64 stations all on one side would be a 2**-63 fluke, or no spreading at all).
        while len(stations) < 64 and not (len(stations) >= 6 and len(set(where.values())) == 2):
            st = Station(f"CP{len(stations) + 1}")
            stations.append(st)
            await st.open(url)
            answer = await st.send("BootNotification", BOOT)
            assert answer[2]["status"] == "Accepted"
            for _ in range(len(stations) % 3):
                await st.send("Heartbeat", {})
            held = [await shard.holds(st.id) for shard in csms.shards]
            assert sum(t is not None for t in held) == 1, held
            where[st.id] = next(i for i, t in enumerate(held) if t is not None)
        assert set(where.values()) == {0, 1}, "the kernel gave every station to one process"
        await st.send("StartTransaction", {"connectorId": 1, "idTag": "T1", "meterStart": 0,
                                           "timestamp": "2025-01-01T00:00:00Z"})

        stats = await csms.stats()
        sent: dict[str, int] = {}
        for st in stations:
            for action, n in st.sent.items():
                sent[action] = sent.get(action, 0) + n
        assert stats["calls"] == sent
        assert stats["calls_total"] == sum(sent.values())
        assert stats["booted"] == stats["connections"] == len(stations)
        assert stats["connections_total"] == len(stations)
        assert (stats["tx_started"], stats["processes"]) == (1, 2)
        per_shard = [await shard.stats() for shard in csms.shards]
        assert [s["connections"] for s in per_shard] == [
            list(where.values()).count(i) for i in (0, 1)]

        for st in stations:
            st.answer_calls()
        for shard in (0, 1):
            station = next(s for s, i in where.items() if i == shard)
            sent_at, result = await csms.call(station, "TriggerMessage",
                                              {"requestedMessage": "Heartbeat"})
            assert result == {"station": station, "action": "TriggerMessage"}
            assert sent_at > 0
        with pytest.raises(RuntimeError, match="not connected to any of the 2"):
            await csms.call("NOPE", "TriggerMessage", {"requestedMessage": "Heartbeat"})
        assert (await csms.stats())["calls"] == sent  # the CSMS's CALLs are not counted
        assert csms.cpu_s() > 0
    finally:
        for st in stations:
            await st.close()
        final = await csms.stop()
    assert final is not None and final["calls"] == sent and final["processes"] == 2


async def test_accept_out_of_descriptors_is_counted_not_logged():
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.lightcsms", "--nofile", "40", cwd=REPO,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    raw: list[socket.socket] = []
    # Read all along: a process spewing tracebacks would otherwise block on a full pipe.
    stderr = asyncio.create_task(proc.stderr.read())

    async def stats() -> dict:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(b'{"cmd": "stats"}\n')
        await proc.stdin.drain()
        return json.loads(await asyncio.wait_for(proc.stdout.readline(), 10))["stats"]

    try:
        url = json.loads(await asyncio.wait_for(proc.stdout.readline(), 30))["url"]
        port = int(url.rstrip("/").rsplit(":", 1)[1])
        # TCP connections the kernel completes in the backlog; the process accepts them
        # until its 40 descriptors are gone (none says a word of websocket).
        for _ in range(60):
            raw.append(socket.create_connection(("127.0.0.1", port), timeout=10))
        for _ in range(200):  # polled for up to 20 s: asyncio retries once a second
            now = await stats()
            if now["accept_failed"] >= 2:
                break
            await asyncio.sleep(0.1)
        else:
            pytest.fail(f"accept() never failed for want of descriptors: {now}")
        for s in raw:
            s.close()
        raw.clear()
        # It accepts again once descriptors are free: a real station gets in and boots.
        st = Station("CP1")
        await st.open(url)
        assert (await st.send("BootNotification", BOOT))[2]["status"] == "Accepted"
        await st.close()
        proc.stdin.write(b'{"cmd": "quit"}\n')
        await proc.stdin.drain()
        proc.stdin.close()
        rc = await asyncio.wait_for(proc.wait(), 30)
        err = (await asyncio.wait_for(stderr, 10)).decode()
    finally:
        for s in raw:
            s.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert rc == 0
    assert "Traceback" not in err and "out of system resource" not in err, err
    assert err.count("accept() failed") == 1, err
