"""A permissive, fast CSMS for the benchmarks: it answers every station CALL at once.

The strict test CSMS (agent.testing.csms) checks every frame against the JSON schemas, which is
what the tests need and what makes it the bottleneck when 2,000 stations or a 10,000-message
outbox replay talk to it.  Benchmarks measure the agent, so they talk to this one instead:
no validation, canned valid answers, counters.  The agent still validates everything it sends
and receives, so its side of the work is the real one.

Used in-process (``LightCsms``) or as a separate process (``python -m bench.lightcsms``) so that
its CPU is not charged to the agent being measured.  The process prints ``{"url": ...}`` on its
first stdout line and then takes one JSON command per stdin line, answering with one JSON line:

    {"cmd": "stats"}                                 -> {"stats": {...}}
    {"cmd": "stats", "ids": true}                    -> the same, plus "station_ids" and
                                                        "booted_ids" (lists)
    {"cmd": "holds", "id": 1, "station": "CP1"}      -> {"id": 1, "holds": true,
                                                        "since": ...}  (or "holds": false)
    {"cmd": "call", "id": 1, "station": "CP1", "action": "RemoteStartTransaction",
     "payload": {...}}                               -> {"id": 1, "sent_at": ..., "result": {...}}
    {"cmd": "quit"}  (or end of input)               -> {"stats": {...}} and exit 0

``sent_at`` is ``time.perf_counter()`` just before the CALL frame was written; on Linux that is
CLOCK_MONOTONIC, shared by every process, so a benchmark can compare it with its own clock.

With ``--lean`` (``LightCsms(lean=True)``) the connections are served by a protocol object on
websockets' Sans-I/O layer (``websockets.server.ServerProtocol``) instead of its asyncio
server: a CALL is answered inside the ``data_received`` callback that delivered it, with no
task per connection, no send lock and no receive queue.  Same answers, same counters,
permessage-deflate offered as before; what it saves is the CSMS's own per-frame overhead, so
that a one-CALL-at-a-time replay measures the station and not the bench
(bench/outbox_replay.py ``--csms lean``).  The swarm benches keep the default.

One process holds at most as many connections as its descriptor limit allows.  With
``--reuse-port`` several processes listen on one port (SO_REUSEPORT; the kernel spreads the
incoming connections over them): the first binds ``--port 0`` and reports the port it got, the
others bind that one.  ``bench._common.CsmsShards`` drives such a group as one CSMS.  When
accept() fails for want of descriptors (EMFILE), asyncio pauses accepting for a second and
retries; the process counts those failures (``accept_failed`` in the stats) instead of logging
a traceback each time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import json
import re
import resource
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol
from websockets.utils import apply_mask

SUBPROTOCOLS = {"ocpp1.6": "1.6", "ocpp2.0.1": "2.0.1", "ocpp2.1": "2.1"}

CallObserver = Callable[[str, str, dict, float], None]


def _now_iso() -> str:
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


class _Conn:
    __slots__ = ("ws", "station_id", "version", "pending", "since")

    def __init__(self, ws: ServerConnection, station_id: str, version: str) -> None:
        self.ws = ws
        self.station_id = station_id
        self.version = version
        self.pending: dict[str, asyncio.Future] = {}
        self.since = time.perf_counter()


class LightCsms:
    """Accepts every station, boot and token; counts what it sees."""

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0,
                 heartbeat_interval: int = 300, on_call: CallObserver | None = None,
                 reuse_port: bool = False, lean: bool = False) -> None:
        self.lean = lean
        self.host = host
        self.port = port
        self.reuse_port = reuse_port
        self.heartbeat_interval = heartbeat_interval
        self.on_call = on_call
        self.url = ""
        self.stations: dict[str, _Conn] = {}
        self.calls: Counter[str] = Counter()  # station CALLs by action
        self.booted: set[str] = set()
        self.connections_total = 0
        self.peak_connections = 0
        self.tx_started = 0
        self.tx_stopped = 0
        self.malformed = 0
        self.call_errors_received = 0
        self.accept_failed = 0  # accept() calls that failed for want of descriptors
        self._next_tx = 1
        self._server: Server | asyncio.AbstractServer | None = None

    async def start(self) -> str:
        if self.lean:
            loop = asyncio.get_running_loop()
            self._server = await loop.create_server(
                lambda: _LeanConnection(self), self.host, self.port, backlog=4096,
                reuse_port=self.reuse_port or None)
            self.port = self._server.sockets[0].getsockname()[1]
            self.url = f"ws://{self.host}:{self.port}/"
            return self.url
        self._server = await serve(
            self._serve, self.host, self.port, subprotocols=list(SUBPROTOCOLS),  # type: ignore[arg-type]
            ping_interval=None, max_size=1 << 20, backlog=4096, reuse_port=self.reuse_port)
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"ws://{self.host}:{self.port}/"
        return self.url

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    def stats(self, ids: bool = False) -> dict[str, Any]:
        """Counters; with ``ids`` also which stations are connected and booted, so that the
        stats of several processes sharing a port can be merged without counting a station
        that reconnected to another process twice."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        doc: dict[str, Any] = {
            "connections": len(self.stations), "peak_connections": self.peak_connections,
            "connections_total": self.connections_total, "booted": len(self.booted),
            "calls": dict(self.calls), "calls_total": sum(self.calls.values()),
            "tx_started": self.tx_started, "tx_stopped": self.tx_stopped,
            "malformed": self.malformed, "call_errors_received": self.call_errors_received,
            "accept_failed": self.accept_failed,
            "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_kb": usage.ru_maxrss,
        }
        if ids:
            doc["station_ids"] = sorted(self.stations)
            doc["booted_ids"] = sorted(self.booted)
        return doc

    def holds(self, station_id: str) -> dict[str, Any]:
        """Whether this process has ``station_id`` connected, and since when (perf_counter):
        of several processes, the one with the newest connection is the one to call."""
        conn = self.stations.get(station_id)
        return {"holds": False} if conn is None else {"holds": True, "since": conn.since}

    def guard_accept(self, loop: asyncio.AbstractEventLoop) -> None:
        """Count accept() failures for want of descriptors instead of logging each one.

        asyncio (3.11) reports such a failure to the loop's exception handler, a traceback in
        the log, and schedules a retry a second later; but it goes on calling accept() up to
        the backlog (4,096) times in the same turn, each failure reported and each scheduling
        a retry: thousands of tracebacks a second for as long as the descriptors are short,
        and as many more when the retries fire on the closed socket after ``stop()``.  Those
        two are counted or dropped here; everything else goes to the handler there was."""
        previous = loop.get_exception_handler()
        short = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)

        def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            exc = context.get("exception")
            if (isinstance(exc, OSError) and exc.errno in short
                    and str(context.get("message", "")).startswith("socket.accept()")):
                if not self.accept_failed:
                    print(f"bench CSMS on port {self.port}: accept() failed ({exc.strerror}) "
                          f"with {len(self.stations)} connections; further failures are "
                          "counted in the stats (accept_failed)", file=sys.stderr, flush=True)
                self.accept_failed += 1
                return
            callback = getattr(context.get("handle"), "_callback", None)
            if (self.accept_failed and self._server is None and isinstance(exc, ValueError)
                    and getattr(callback, "__name__", "") == "_start_serving"):
                return  # one of those retries, on the socket stop() closed
            if previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)

        loop.set_exception_handler(handler)

    async def call(self, station_id: str, action: str, payload: dict,
                   timeout: float = 10.0) -> tuple[float, dict]:
        """Send a CALL to a station; returns (perf_counter when sent, its answer)."""
        conn = self.stations[station_id]
        unique_id = str(uuid.uuid4())
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        conn.pending[unique_id] = future
        frame = json.dumps([2, unique_id, action, payload], separators=(",", ":"))
        try:
            sent_at = time.perf_counter()
            await conn.ws.send(frame)
            async with asyncio.timeout(timeout):
                return sent_at, await future
        finally:
            conn.pending.pop(unique_id, None)

    # ------------------------------------------------------------------ serving

    async def _serve(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        station_id = unquote(urlsplit(ws.request.path).path.rstrip("/").rsplit("/", 1)[-1])
        version = SUBPROTOCOLS.get(ws.subprotocol or "")
        if version is None or not station_id:
            await ws.close(1002, "no common OCPP subprotocol")
            return
        conn = _Conn(ws, station_id, version)
        self.stations[station_id] = conn
        self.connections_total += 1
        self.peak_connections = max(self.peak_connections, len(self.stations))
        try:
            async for raw in ws:
                await self._frame(conn, raw)
        except ConnectionClosed:
            pass
        finally:
            if self.stations.get(station_id) is conn:
                del self.stations[station_id]
            for future in conn.pending.values():
                if not future.done():
                    future.set_exception(ConnectionError(f"{station_id} disconnected"))

    async def _frame(self, conn: _Conn, raw: str | bytes) -> None:
        reply = self._reply(conn, raw)
        if reply is not None:
            with contextlib.suppress(ConnectionClosed):
                await conn.ws.send(reply)

    def _reply(self, conn: _Conn, raw: str | bytes) -> str | None:
        """Count one frame from a station; the answer frame to send back, if any."""
        try:
            msg = json.loads(raw)
            kind, unique_id = msg[0], msg[1]
        except (ValueError, TypeError, IndexError, KeyError):
            self.malformed += 1
            return None
        if kind == 2 and len(msg) == 4:
            action, payload = msg[2], msg[3]
            self.calls[action] += 1
            if self.on_call is not None:
                self.on_call(conn.station_id, action, payload, time.perf_counter())
            answer = self._answer(conn, action, payload)
            return json.dumps([3, unique_id, answer], separators=(",", ":"))
        if kind in (3, 4):
            if kind == 4:
                self.call_errors_received += 1
            future = conn.pending.get(unique_id)
            if future is not None and not future.done():
                future.set_result(msg[2] if kind == 3 else {"errorCode": msg[2]})
        else:
            self.malformed += 1
        return None

    def _answer(self, conn: _Conn, action: str, p: dict) -> dict:
        """Minimal schema-valid answers (1.6 and 2.x share most shapes)."""
        v16 = conn.version == "1.6"
        if action == "BootNotification":
            self.booted.add(conn.station_id)
            return {"status": "Accepted", "currentTime": _now_iso(),
                    "interval": self.heartbeat_interval}
        if action == "Heartbeat":
            return {"currentTime": _now_iso()}
        if action == "Authorize":
            return {"idTagInfo": {"status": "Accepted"}} if v16 else {
                "idTokenInfo": {"status": "Accepted"}}
        if action == "StartTransaction":
            self.tx_started += 1
            tx, self._next_tx = self._next_tx, self._next_tx + 1
            return {"transactionId": tx, "idTagInfo": {"status": "Accepted"}}
        if action == "StopTransaction":
            self.tx_stopped += 1
            return {"idTagInfo": {"status": "Accepted"}} if "idTag" in p else {}
        if action == "TransactionEvent":
            event = p.get("eventType")
            if event == "Started":
                self.tx_started += 1
            elif event == "Ended":
                self.tx_stopped += 1
            return {"idTokenInfo": {"status": "Accepted"}} if "idToken" in p else {}
        if action in ("DataTransfer", "SignCertificate"):
            return {"status": "Accepted"}
        return {}


# A CALL's header, as stations write it: [2,"<id>","<Action>",  (no blanks)
_CALL_HEAD = re.compile(rb'\[2,"([^"\\]{1,64})","([A-Za-z0-9]{1,64})",')
# Actions whose canned answer depends on the payload (see LightCsms._answer).
_READS_PAYLOAD = frozenset({"StopTransaction", "TransactionEvent"})


class _LeanConnection(asyncio.Protocol):
    """One station on websockets' Sans-I/O protocol: every frame is handled in the callback
    that received it (see the module docstring).  Also the ``ws`` of its ``_Conn``, so that
    ``LightCsms.call`` works the same on both servers.

    Without permessage-deflate (the station did not offer it), the frames after the handshake
    are read and written here rather than by the protocol object: a station's frame is a
    masked header and payload (RFC 6455 5.2), an answer an unmasked one, and websockets'
    generator-based parser was most of this CSMS's work per message.  A CALL's payload is
    decoded only when its answer depends on it (``_READS_PAYLOAD``); other CALLs are counted
    from their header, so this server does not notice a malformed payload there.
    """

    def __init__(self, csms: LightCsms) -> None:
        self.csms = csms
        self.protocol = ServerProtocol(
            subprotocols=[Subprotocol(sp) for sp in SUBPROTOCOLS],
            extensions=[ServerPerMessageDeflateFactory()], max_size=1 << 20)
        self.transport: asyncio.Transport | None = None
        self.conn: _Conn | None = None
        self.request: Request | None = None
        self._parts: list[bytes] = []  # a fragmented message so far
        self._raw = False  # after an uncompressed handshake: frames parsed here (see above)
        self._buffer = b""

    @property
    def subprotocol(self) -> str | None:
        return self.protocol.subprotocol

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self._raw:
            self._raw_received(data)
            return
        opened = self.conn is None
        self.protocol.receive_data(data)
        self._handle()
        if (opened and self.conn is not None and not self.protocol.extensions
                and self.protocol.state is State.OPEN and not self.protocol.reader.buffer):
            # Just after the handshake (a client sends no frame before the 101 answer): the
            # frames are ours from here on.
            self._raw = True

    def eof_received(self) -> bool | None:
        self.protocol.receive_eof()
        self._handle()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        conn, self.conn = self.conn, None
        if conn is None:
            return
        if self.csms.stations.get(conn.station_id) is conn:
            del self.csms.stations[conn.station_id]
        for future in conn.pending.values():
            if not future.done():
                future.set_exception(ConnectionError(f"{conn.station_id} disconnected"))

    # the ws of a _Conn

    async def send(self, text: str) -> None:
        if self.transport is None or self.transport.is_closing():
            raise ConnectionClosed(None, None)
        if self._raw:
            self._raw_send(0x1, text.encode())
            return
        self.protocol.send_text(text.encode())
        self._flush()

    # frames read and written here (no extension negotiated)

    def _raw_send(self, opcode: int, data: bytes) -> None:
        assert self.transport is not None
        n = len(data)
        if n < 126:
            head = bytes((0x80 | opcode, n))
        elif n < 1 << 16:
            head = bytes((0x80 | opcode, 126)) + n.to_bytes(2, "big")
        else:
            head = bytes((0x80 | opcode, 127)) + n.to_bytes(8, "big")
        self.transport.write(head + data)

    def _raw_received(self, data: bytes) -> None:
        buf = self._buffer + data if self._buffer else data
        pos = 0
        while True:
            if len(buf) - pos < 2:
                break
            b0, b1 = buf[pos], buf[pos + 1]
            n, at = b1 & 0x7F, pos + 2
            if n == 126:
                if len(buf) - at < 2:
                    break
                n, at = int.from_bytes(buf[at:at + 2], "big"), at + 2
            elif n == 127:
                if len(buf) - at < 8:
                    break
                n, at = int.from_bytes(buf[at:at + 8], "big"), at + 8
            if not b1 & 0x80 or b0 & 0x70 or n > 1 << 20:
                # RFC 6455 5.1 / 5.2: a client frame is masked, no extension, bounded.
                self._raw_close(1002 if n <= 1 << 20 else 1009)
                return
            if len(buf) - at < 4 + n:
                break
            payload = apply_mask(buf[at + 4:at + 4 + n], buf[at:at + 4])
            pos = at + 4 + n
            if not self._raw_frame(b0 & 0x80, b0 & 0x0F, payload):
                return
        self._buffer = buf[pos:]

    def _raw_frame(self, fin: int, opcode: int, payload: bytes) -> bool:
        """One frame; False once the connection is closing."""
        if opcode == 0x8:  # close: echo the code, then the server closes TCP (RFC 6455 7.1.1)
            self._raw_send(0x8, payload[:2])
            assert self.transport is not None
            self.transport.close()
            return False
        if opcode == 0x9:
            self._raw_send(0xA, payload)
            return True
        if opcode == 0xA:
            return True
        if opcode not in (0x0, 0x1, 0x2):
            self._raw_close(1002)
            return False
        if not fin:
            self._parts.append(payload)
            return True
        if self._parts:
            self._parts.append(payload)
            payload, self._parts = b"".join(self._parts), []
        assert self.conn is not None
        reply = self._lean_reply(self.conn, payload)
        if reply is not None:
            self._raw_send(0x1, reply.encode())
        return True

    def _raw_close(self, code: int) -> None:
        self._raw_send(0x8, code.to_bytes(2, "big"))
        assert self.transport is not None
        self.transport.close()

    def _lean_reply(self, conn: _Conn, data: bytes) -> str | None:
        """``LightCsms._reply``, reading only the header of a CALL whose answer does not
        depend on its payload."""
        csms = self.csms
        head = _CALL_HEAD.match(data)
        if head is None or csms.on_call is not None:
            return csms._reply(conn, data)
        action = head.group(2).decode()
        if action in _READS_PAYLOAD:
            return csms._reply(conn, data)
        csms.calls[action] += 1
        answer = csms._answer(conn, action, {})
        return f'[3,"{head.group(1).decode()}",{json.dumps(answer, separators=(",", ":"))}]'

    # websockets events

    def _handle(self) -> None:
        for event in self.protocol.events_received():
            if isinstance(event, Request):
                self._open(event)
            elif isinstance(event, Frame):
                self._frame(event)
        self._flush()

    def _open(self, request: Request) -> None:
        response = self.protocol.accept(request)
        self.protocol.send_response(response)
        if response.status_code != 101:
            return
        self.request = request
        station_id = unquote(urlsplit(request.path).path.rstrip("/").rsplit("/", 1)[-1])
        version = SUBPROTOCOLS.get(self.protocol.subprotocol or "")
        if version is None or not station_id:
            self.protocol.send_close(1002, "no common OCPP subprotocol")
            return
        csms = self.csms
        self.conn = _Conn(self, station_id, version)  # type: ignore[arg-type]
        csms.stations[station_id] = self.conn
        csms.connections_total += 1
        csms.peak_connections = max(csms.peak_connections, len(csms.stations))

    def _frame(self, frame: Frame) -> None:
        if frame.opcode not in (Opcode.TEXT, Opcode.BINARY, Opcode.CONT) or self.conn is None:
            return  # ping, pong and close are answered by the protocol itself
        if not frame.fin:
            self._parts.append(frame.data)
            return
        data = frame.data
        if self._parts:
            self._parts.append(data)
            data, self._parts = b"".join(self._parts), []
        reply = self.csms._reply(self.conn, data)
        if reply is not None and self.protocol.state is State.OPEN:
            self.protocol.send_text(reply.encode())

    def _flush(self) -> None:
        transport = self.transport
        if transport is None:
            return
        for data in self.protocol.data_to_send():
            if data:
                transport.write(data)
            elif transport.can_write_eof():
                transport.write_eof()
        if self.protocol.close_expected() or self.protocol.state is State.CLOSED:
            transport.close()


# ---------------------------------------------------------------------- process mode


async def _serve_commands(csms: LightCsms) -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    tasks: set[asyncio.Task] = set()

    def emit(doc: dict) -> None:
        sys.stdout.write(json.dumps(doc) + "\n")
        sys.stdout.flush()

    async def do_call(cmd: dict) -> None:
        try:
            sent_at, result = await csms.call(cmd["station"], cmd["action"], cmd["payload"],
                                              cmd.get("timeout", 10.0))
            emit({"id": cmd.get("id"), "sent_at": sent_at, "result": result})
        except Exception as exc:  # noqa: BLE001 - reported to the bench, which decides
            emit({"id": cmd.get("id"), "error": f"{type(exc).__name__}: {exc}"})

    while True:
        line = await reader.readline()
        if not line:
            break
        try:
            cmd = json.loads(line)
        except ValueError:
            emit({"error": f"not JSON: {line[:80]!r}"})
            continue
        what = cmd.get("cmd")
        if what == "stats":
            emit({"id": cmd.get("id"), "stats": csms.stats(bool(cmd.get("ids")))})
        elif what == "holds":
            emit({"id": cmd.get("id"), **csms.holds(str(cmd.get("station")))})
        elif what == "call":
            task = asyncio.create_task(do_call(cmd))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        elif what == "quit":
            break
        else:
            emit({"id": cmd.get("id"), "error": f"unknown command {what!r}"})
    for task in tasks:
        task.cancel()


def _lift_nofile(want: int = 1 << 20) -> None:
    """One socket per station: lift the soft limit to the hard one, and the hard one too where
    we may (root: up to fs.nr_open). A 20,000-station run needs more than the 20,000 a
    machine's hard limit may be, since the CSMS has descriptors of its own besides."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(OSError):
        want = min(want, int(Path("/proc/sys/fs/nr_open").read_text()))
    for limit in (max(hard, want), hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
            return
        except (ValueError, OSError):
            continue


async def _main(port: int, heartbeat: int, reuse_port: bool = False,
                nofile: int | None = None, lean: bool = False) -> None:
    if nofile is None:
        _lift_nofile()
    else:  # what a machine with fewer descriptors does (tests the accept() guard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    csms = LightCsms(port=port, heartbeat_interval=heartbeat, reuse_port=reuse_port,
                     lean=lean)
    csms.guard_accept(asyncio.get_running_loop())
    url = await csms.start()
    print(json.dumps({"url": url}), flush=True)
    try:
        await _serve_commands(csms)
    finally:
        await csms.stop()
        print(json.dumps({"stats": csms.stats(ids=reuse_port)}), flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--heartbeat", type=int, default=300, help="interval in the boot answer")
    p.add_argument("--reuse-port", action="store_true",
                   help="bind with SO_REUSEPORT, so that other processes can share the port")
    p.add_argument("--nofile", type=int, default=None, metavar="N",
                   help="set the descriptor limit to N instead of lifting it")
    p.add_argument("--lean", action="store_true",
                   help="serve on websockets' Sans-I/O layer, answering in the receive "
                        "callback (less of the CSMS's own work per frame)")
    ns = p.parse_args(argv)
    if ns.nofile is not None and ns.nofile < 16:
        p.error(f"--nofile {ns.nofile}: the process needs at least 16 descriptors of its own")
    asyncio.run(_main(ns.port, ns.heartbeat, ns.reuse_port, ns.nofile, ns.lean))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
