"""`cp-agent csms`: the strict test CSMS as a command, for a bench rig with nothing else.

It is :class:`TestCsms` as the integration tests use it (schema-checked frames, spec answers,
registration rules), listening until Ctrl-C and printing every frame it sees on one line:

    12:00:01.204 CP1 -> CALL StartTransaction {"connectorId":1,"idTag":"04A2B3C4",...}
    12:00:01.209 CP1 <- CALLRESULT StartTransaction {"idTagInfo":{"status":"Accepted"},...}

``->`` is the station talking to the CSMS, ``<-`` the CSMS answering or asking.  Connections,
refused handshakes and protocol violations get a line of their own.  ``--accept`` names the
cards the CSMS accepts (any other is Invalid); without it, every card is accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TextIO

from agent.testing.csms.messages import CS_TO_CSMS
from agent.testing.csms.protocol import SUBPROTOCOLS
from agent.testing.csms.server import TestCsms


def _now() -> str:
    return datetime.now().strftime("%H:%M:%S.%f")[:-3]


def frame_line(station_id: str, direction: str, kind: str, action: str, payload: Any) -> str:
    """One frame as the command prints it (``->``: from the station)."""
    arrow = "->" if direction == CS_TO_CSMS else "<-"
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, default=str)
    return f"{_now()} {station_id} {arrow} {kind} {action} {body}".rstrip()


class BenchCsms(TestCsms):
    """The test CSMS printing what it sees to ``out``."""

    __test__ = False

    def __init__(self, *, out: TextIO = sys.stdout, **kw: Any) -> None:
        super().__init__(on_message=self._print_frame, **kw)
        self.out = out
        self._events_printed = 0
        self._violations_printed = 0
        self.frames = 0

    def _say(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def _print_frame(self, station_id: str, direction: str, kind: str, action: str,
                     payload: dict) -> None:
        self.frames += 1
        self._say(frame_line(station_id, direction, kind, action, payload))

    def _notify(self) -> None:
        # Every change of the CSMS's state passes here: connections and violations too.
        super()._notify()
        for _, station_id, event in self.connection_log[self._events_printed:]:
            self._say(f"{_now()} {station_id or '?'} {event}")
        self._events_printed = len(self.connection_log)
        for violation in self.violations[self._violations_printed:]:
            self._say(f"{_now()} VIOLATION {violation}")
        self._violations_printed = len(self.violations)


def parse_versions(text: str) -> tuple[str, ...]:
    versions = tuple(v.strip() for v in text.split(",") if v.strip())
    unknown = [v for v in versions if v not in SUBPROTOCOLS]
    if not versions or unknown:
        raise ValueError(f"--versions: {', '.join(unknown) or 'none given'}; choose from "
                         f"{', '.join(SUBPROTOCOLS)}")
    return versions


async def serve(*, host: str, port: int, versions: Sequence[str],
                accept: Sequence[str] | None, out: TextIO = sys.stdout,
                install_signals: bool = True, stop: asyncio.Event | None = None) -> int:
    """Run until SIGINT / SIGTERM (or ``stop``); 0 on a clean stop, 1 if it cannot listen."""
    authorize = {token: "Accepted" for token in accept} if accept else None
    csms = BenchCsms(out=out, versions=tuple(versions), host=host, port=port,
                     authorize=authorize)
    try:
        url = await csms.start()
    except OSError as exc:
        print(f"cp-agent csms: cannot listen on {host}:{port}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    stop = stop or asyncio.Event()
    if install_signals:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
    cards = ", ".join(accept) if accept else "every card"
    csms._say(f"test CSMS listening on {url} (OCPP {', '.join(versions)}; accepts {cards})")
    csms._say(f"a station connects to {url}<station id>; Ctrl-C stops")
    try:
        await stop.wait()
    finally:
        await csms.stop()
    csms._say(f"stopped: {len({m.station_id for m in csms.log})} station(s), {csms.frames} "
              f"frame(s), {len(csms.violations)} violation(s)")
    return 0


def main(host: str, port: int, versions: str, accept: Sequence[str] | None) -> int:
    try:
        parsed = parse_versions(versions)
    except ValueError as exc:
        print(f"cp-agent csms: {exc}", file=sys.stderr)
        return 2
    # Violations are also logged (agent.testing.csms); the frames go to stdout.
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("websockets").setLevel(logging.CRITICAL)
    try:
        return asyncio.run(serve(host=host, port=port, versions=parsed, accept=accept))
    except KeyboardInterrupt:  # a Ctrl-C before the handlers were in place
        return 0
