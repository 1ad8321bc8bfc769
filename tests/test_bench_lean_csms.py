"""The bench CSMS's lean server (``LightCsms(lean=True)``, ``bench.lightcsms --lean``).

bench/outbox_replay.py ``--csms lean`` measures the agent against it, so it must answer what
the websockets server answers, count the same, speak the websocket protocol correctly with
and without permessage-deflate (it parses uncompressed frames itself: fragments, large
frames, pings, the closing handshake) and still send CALLs to a station.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from bench.lightcsms import LightCsms

BOOT = {"chargePointVendor": "cp-agent", "chargePointModel": "bench"}


@pytest.fixture
async def csms() -> LightCsms:
    server = LightCsms(lean=True)
    await server.start()
    yield server
    await server.stop()


async def _call(ws, unique_id: str, action: str, payload: dict) -> list:
    await ws.send(json.dumps([2, unique_id, action, payload]).replace(", ", ","))
    async with asyncio.timeout(5):
        return json.loads(await ws.recv())


@pytest.mark.parametrize("compression", ["deflate", None])
async def test_answers_and_counts_like_the_websockets_server(csms: LightCsms,
                                                             compression: str | None) -> None:
    async with connect(csms.url + "LEAN1", subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                       compression=compression) as ws:
        assert ws.subprotocol == "ocpp1.6"
        boot = await _call(ws, "b1", "BootNotification", BOOT)
        # frames parsed by the server itself exactly when no extension was agreed
        assert csms.stations["LEAN1"].ws._raw is (compression is None)  # type: ignore[attr-defined]
        assert boot[:2] == [3, "b1"] and boot[2]["status"] == "Accepted"
        start = await _call(ws, "s1", "StartTransaction", {"connectorId": 1, "idTag": "T",
                                                           "meterStart": 0, "timestamp": "x"})
        assert start[2] == {"transactionId": 1, "idTagInfo": {"status": "Accepted"}}
        mv = await _call(ws, "m1", "MeterValues", {"connectorId": 1, "meterValue": []})
        assert mv == [3, "m1", {}]
        # the answer of a Stop depends on its payload: with an idTag, an idTagInfo
        stop = await _call(ws, "t1", "StopTransaction", {"idTag": "T", "meterStop": 1,
                                                          "timestamp": "x", "transactionId": 1})
        assert stop[2] == {"idTagInfo": {"status": "Accepted"}}
        stop = await _call(ws, "t2", "StopTransaction", {"meterStop": 1, "timestamp": "x",
                                                          "transactionId": 1})
        assert stop[2] == {}
        # a large frame (16-bit and 64-bit length forms) and a fragmented one
        big = await _call(ws, "m2", "MeterValues", {"connectorId": 1, "pad": "x" * 70_000})
        assert big == [3, "m2", {}]
        await ws.send(iter(['[2,"m3","MeterVal', 'ues",{"connectorId":1}]']))
        async with asyncio.timeout(5):
            assert json.loads(await ws.recv()) == [3, "m3", {}]
        async with asyncio.timeout(5):
            await (await ws.ping(b"hi"))
        # a frame that is no OCPP message is counted, not answered
        await ws.send("not json")
        stats = csms.stats()
        assert stats["calls"] == {"BootNotification": 1, "StartTransaction": 1,
                                  "MeterValues": 3, "StopTransaction": 2}
        assert stats["tx_started"] == 1 and stats["tx_stopped"] == 2
        assert stats["booted"] == 1 and stats["connections"] == 1
    # the closing handshake completed (leaving the block raised nothing) and the station left
    for _ in range(100):
        if not csms.stations:
            break
        await asyncio.sleep(0.01)
    assert csms.stations == {}
    assert csms.malformed == 1


@pytest.mark.parametrize("compression", ["deflate", None])
async def test_a_call_to_the_station_gets_its_answer(csms: LightCsms,
                                                     compression: str | None) -> None:
    async with connect(csms.url + "LEAN2", subprotocols=["ocpp1.6"],  # type: ignore[list-item]
                       compression=compression) as ws:
        await _call(ws, "b1", "BootNotification", BOOT)
        call = asyncio.ensure_future(csms.call("LEAN2", "Reset", {"type": "Soft"}, timeout=5))
        async with asyncio.timeout(5):
            frame = json.loads(await ws.recv())
        assert frame[0] == 2 and frame[2:] == ["Reset", {"type": "Soft"}]
        await ws.send(json.dumps([3, frame[1], {"status": "Accepted"}]))
        _, answer = await asyncio.wait_for(call, 5)
        assert answer == {"status": "Accepted"}


async def test_a_station_without_a_common_subprotocol_is_refused(csms: LightCsms) -> None:
    """As by the websockets server: the handshake is answered 400, nothing is registered."""
    with pytest.raises(InvalidStatus) as refused:
        await connect(csms.url + "LEAN3", subprotocols=["ocpp9"])  # type: ignore[list-item]
    assert refused.value.response.status_code == 400
    assert csms.stations == {} and csms.connections_total == 0
