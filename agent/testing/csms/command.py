"""`cp-agent csms`: the strict test CSMS as a command, for a bench rig with nothing else.

It is :class:`TestCsms` as the integration tests use it (schema-checked frames, spec answers,
registration rules), listening until Ctrl-C and printing every frame it sees on one line:

    12:00:01.204 CP1 -> CALL StartTransaction {"connectorId":1,"idTag":"04A2B3C4",...}
    12:00:01.209 CP1 <- CALLRESULT StartTransaction {"idTagInfo":{"status":"Accepted"},...}

``->`` is the station talking to the CSMS, ``<-`` the CSMS answering or asking.  Connections,
refused handshakes and protocol violations get a line of their own.  ``--accept`` names the
cards the CSMS accepts (any other is Invalid); without it, every card is accepted.

``--on-boot FILE`` makes the CSMS ask something of every station once its BootNotification
is accepted: the CALLs listed in FILE (YAML or JSON), one after the other, each awaiting the
station's answer (printed like every frame).  FILE is a mapping from OCPP version to a list
of calls, or one list for every version offered; a call is ``{action: ..., payload: {...}}``
with an optional ``delay_s`` (seconds to wait before sending it).  Every payload is checked
against its version's schema at start-up, so a typo is an error naming the entry, not a
surprise at the bench.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import yaml

from agent.testing.csms.messages import CS_TO_CSMS, CSMS_TO_CS, CsmsCallError, Message
from agent.testing.csms.protocol import SUBPROTOCOLS
from agent.testing.csms.schemas import _schema_problem
from agent.testing.csms.server import TestCsms

CALL_TIMEOUT_S = 30.0  # how long an --on-boot CALL waits for the station's answer


def _now() -> str:
    return datetime.now().strftime("%H:%M:%S.%f")[:-3]


def frame_line(station_id: str, direction: str, kind: str, action: str, payload: Any) -> str:
    """One frame as the command prints it (``->``: from the station)."""
    arrow = "->" if direction == CS_TO_CSMS else "<-"
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False, default=str)
    return f"{_now()} {station_id} {arrow} {kind} {action} {body}".rstrip()


@dataclass(frozen=True)
class ScriptedCall:
    """One CALL of an ``--on-boot`` file."""

    action: str
    payload: dict[str, Any]
    delay_s: float = 0.0


def load_calls(path: str | Path, versions: Sequence[str]) -> dict[str, list[ScriptedCall]]:
    """The ``--on-boot`` file as calls per OCPP version; ValueError names the bad entry."""
    try:
        doc = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ValueError(f"--on-boot {path}: {exc.strerror or exc}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ValueError(f"--on-boot {path}: not YAML or JSON: {exc}") from None
    if isinstance(doc, list):
        per_version: Mapping[Any, Any] = {v: doc for v in versions}
    elif isinstance(doc, dict):
        unknown = [str(k) for k in doc if str(k) not in SUBPROTOCOLS]
        if unknown:
            raise ValueError(f"--on-boot {path}: version {unknown[0]!r} is unknown; expected "
                             f"{', '.join(SUBPROTOCOLS)} (quote them in YAML: \"1.6\")")
        per_version = {str(k): v for k, v in doc.items()}
    else:
        raise ValueError(f"--on-boot {path}: expected a list of calls, or a mapping from OCPP "
                         f"version to such a list")
    out: dict[str, list[ScriptedCall]] = {}
    for version, calls in per_version.items():
        if not isinstance(calls, list):
            raise ValueError(f"--on-boot {path}: {version}: expected a list of calls")
        out[version] = [_scripted(path, version, i, c) for i, c in enumerate(calls)]
    return out


def _scripted(path: str | Path, version: str, index: int, raw: Any) -> ScriptedCall:
    where = f"--on-boot {path}: {version}[{index}]"
    if not isinstance(raw, dict) or not isinstance(raw.get("action"), str):
        raise ValueError(f"{where}: expected {{action: NAME, payload: {{...}}}}")
    unknown = sorted(set(raw) - {"action", "payload", "delay_s"})
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}; expected action, payload, "
                         f"delay_s")
    action, payload, delay = raw["action"], raw.get("payload", {}), raw.get("delay_s", 0)
    if not isinstance(payload, dict):
        raise ValueError(f"{where} {action}: payload must be a mapping")
    if isinstance(delay, bool) or not isinstance(delay, (int, float)) or delay < 0:
        raise ValueError(f"{where} {action}: delay_s {delay!r} is not a number of seconds >= 0")
    problem = _schema_problem(version, action, False, payload)
    if problem is not None:
        raise ValueError(f"{where} {action}: not a valid OCPP {version} request: {problem[1]}")
    return ScriptedCall(action, payload, float(delay))


class BenchCsms(TestCsms):
    """The test CSMS printing what it sees to ``out``; with ``on_boot``, asking every station
    those CALLs (per OCPP version) once its boot is accepted."""

    __test__ = False

    def __init__(self, *, out: TextIO = sys.stdout,
                 on_boot: Mapping[str, Sequence[ScriptedCall]] | None = None,
                 **kw: Any) -> None:
        super().__init__(on_message=self._print_frame, **kw)
        self.out = out
        self.on_boot = dict(on_boot or {})
        self._events_printed = 0
        self._violations_printed = 0
        self.frames = 0
        self._plays: set[asyncio.Task[None]] = set()

    async def stop(self) -> None:
        for task in list(self._plays):
            task.cancel()
        await asyncio.gather(*self._plays, return_exceptions=True)
        await super().stop()

    def _record(self, message: Message) -> None:
        super()._record(message)
        # The boot's Accepted answer is written to the socket before the next loop turn, so a
        # CALL sent from a task started now reaches the station after it (never before).
        if (message.direction == CSMS_TO_CS and message.kind == "CALLRESULT"
                and message.action == "BootNotification"
                and message.payload.get("status") == "Accepted"):
            link = self.stations.get(message.station_id)
            calls = self.on_boot.get(link.version, ()) if link is not None else ()
            if calls:
                task = asyncio.get_running_loop().create_task(
                    self._play(message.station_id, list(calls)),
                    name=f"on-boot-{message.station_id}")
                self._plays.add(task)
                task.add_done_callback(self._plays.discard)

    async def _play(self, station_id: str, calls: list[ScriptedCall]) -> None:
        sent = 0
        for call in calls:
            if call.delay_s:
                await asyncio.sleep(call.delay_s)
            link = self.stations.get(station_id)
            if link is None or link.closed:
                self._say(f"{_now()} {station_id} on-boot: disconnected, {len(calls) - sent} "
                          f"call(s) not sent")
                return
            sent += 1
            try:
                await link.call(call.action, call.payload, timeout=CALL_TIMEOUT_S)
            except CsmsCallError as exc:
                self._say(f"{_now()} {station_id} on-boot: {call.action} refused: {exc.code} "
                          f"{exc.description}".rstrip())
            except (TimeoutError, ConnectionError) as exc:
                self._say(f"{_now()} {station_id} on-boot: {call.action}: {exc}")
        self._say(f"{_now()} {station_id} on-boot: {sent} call(s) done")

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
                install_signals: bool = True, stop: asyncio.Event | None = None,
                on_boot: Mapping[str, Sequence[ScriptedCall]] | None = None) -> int:
    """Run until SIGINT / SIGTERM (or ``stop``); 0 on a clean stop, 1 if it cannot listen."""
    authorize = {token: "Accepted" for token in accept} if accept else None
    csms = BenchCsms(out=out, versions=tuple(versions), host=host, port=port,
                     authorize=authorize, on_boot=on_boot)
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
    for version, calls in (on_boot or {}).items():
        if calls and version in versions:
            csms._say(f"after an accepted boot (OCPP {version}) it sends: "
                      f"{', '.join(c.action for c in calls)}")
    try:
        await stop.wait()
    finally:
        await csms.stop()
    csms._say(f"stopped: {len({m.station_id for m in csms.log})} station(s), {csms.frames} "
              f"frame(s), {len(csms.violations)} violation(s)")
    return 0


def main(host: str, port: int, versions: str, accept: Sequence[str] | None,
         on_boot: str | None = None) -> int:
    try:
        parsed = parse_versions(versions)
        calls = load_calls(on_boot, parsed) if on_boot is not None else None
    except ValueError as exc:
        print(f"cp-agent csms: {exc}", file=sys.stderr)
        return 2
    # Violations are also logged (agent.testing.csms); the frames go to stdout.
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    logging.getLogger("websockets").setLevel(logging.CRITICAL)
    try:
        return asyncio.run(serve(host=host, port=port, versions=parsed, accept=accept,
                                 on_boot=calls))
    except KeyboardInterrupt:  # a Ctrl-C before the handlers were in place
        return 0
