"""The floor: the smallest charge point built from the agent's own libraries.

    python -m bench.bare_client --url ws://127.0.0.1:PORT/ --id CP1 [--ocpp 1.6|2.0.1|2.1]

``ocpp``'s ``ChargePoint`` of one version over ``websockets.asyncio.client.connect``: it sends
BootNotification, then a Heartbeat at the interval the CSMS answered, and nothing else, until
SIGTERM or SIGINT.  No HAL, no storage, no configuration file, no settings, no outbox.  It is
what bench/floor.py compares the agent with: the time and memory any client of these libraries
pays on this machine, so that the agent's figures can be read as a ratio that holds anywhere.

The ``ocpp`` package validates each payload it sends and receives with jsonschema, as the agent
does, so the floor pays for validation too.  It imports only the negotiated version's modules,
which is what the agent is measured against.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import signal
import sys

from ocpp.charge_point import ChargePoint
from websockets.asyncio.client import connect

SUBPROTOCOL = {"1.6": "ocpp1.6", "2.0.1": "ocpp2.0.1", "2.1": "ocpp2.1"}
PACKAGE = {"1.6": "ocpp.v16", "2.0.1": "ocpp.v201", "2.1": "ocpp.v21"}


def _boot(call: object, version: str) -> object:
    if version == "1.6":
        return call.BootNotification(  # type: ignore[attr-defined]
            charge_point_vendor="cp-agent", charge_point_model="bare")
    return call.BootNotification(  # type: ignore[attr-defined]
        charging_station={"vendor_name": "cp-agent", "model": "bare"}, reason="PowerUp")


async def run(url: str, station_id: str, version: str) -> int:
    """Boot, then heartbeat until a signal; 0 on a clean stop, 1 if the boot was refused."""
    package = importlib.import_module(PACKAGE[version])
    call = importlib.import_module(PACKAGE[version] + ".call")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with connect(url.rstrip("/") + "/" + station_id,
                       subprotocols=[SUBPROTOCOL[version]]) as ws:  # type: ignore[list-item]
        if ws.subprotocol != SUBPROTOCOL[version]:
            print(f"bare_client: the CSMS agreed {ws.subprotocol!r}", file=sys.stderr)
            return 1
        cp: ChargePoint = package.ChargePoint(station_id, ws)
        reader = asyncio.create_task(cp.start())
        try:
            answer = await cp.call(_boot(call, version))
            if answer.status != "Accepted":
                print(f"bare_client: boot {answer.status}", file=sys.stderr)
                return 1
            interval = max(1, int(answer.interval))
            while not stop.is_set():
                try:
                    await asyncio.wait_for(stop.wait(), interval)
                except TimeoutError:
                    await cp.call(call.Heartbeat())
        finally:
            reader.cancel()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True, help="the CSMS's websocket URL; the id is appended")
    p.add_argument("--id", default="BARE1", help="the station identity")
    p.add_argument("--ocpp", choices=list(SUBPROTOCOL), default="1.6")
    ns = p.parse_args(argv)
    return asyncio.run(run(ns.url, ns.id, ns.ocpp))


if __name__ == "__main__":
    raise SystemExit(main())
