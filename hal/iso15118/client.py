"""The agent's end of ISO 15118: :class:`HighLevelCommunication`, the HAL component for HLC.

One SECC sidecar per EVSE (hal/iso15118/sidecar.py, in its own venv), each on the network
interface of that EVSE's PLC modem. This component starts them (unless systemd does:
``start_sidecar: false``), connects to their sockets and reconnects when one restarts,
restarts one that died, logs what they print, and turns their messages into calls on a
:class:`HlcHandler` (the core's ISO 15118 service, agent/core/iso15118.py): events for what
the EV said, awaited requests for what only the station decides. It knows nothing of OCPP,
as the rest of ``hal/`` does not.

On the mock HAL the EVs speak ISO 15118 too: :meth:`HighLevelCommunication.start_ev` starts
the package's EV simulator (hal/iso15118/evcc_sim.py) against the EVSE's SECC over the
loopback interface (``cp-agent ctl plug 1 --iso15118``).

Safety does not pass through here: the pilot and the core's contactor rules stay the safety
path. A sidecar that is gone, slow or wrong costs the EV its HLC session (it falls back to the
pilot, or waits), never a contactor closed against the core's rules.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import tempfile
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from hal.iso15118 import protocol
from hal.iso15118.hlc_config import LOOPBACK, Iso15118Config

log = logging.getLogger("cp_agent.hal.iso15118")

HERE = Path(__file__).resolve().parent
SIDECAR = HERE / "sidecar.py"
EVCC_SIM = HERE / "evcc_sim.py"
REQUEST_TIMEOUT_S = 1.8  # the sidecar waits 2 s; answer inside that
CERTIFICATE_TIMEOUT_S = 9.0  # a certificate goes to the CSMS and back (the sidecar waits 10)
RECONNECT_S = (0.1, 2.0)  # first and longest wait between connection attempts
RESTART_S = (1.0, 30.0)  # first and longest wait before restarting a sidecar that died
STOP_GRACE_S = 5.0
LOG_TAIL = 40  # the sidecar's last lines, shown when it dies


class HlcHandler(Protocol):
    """What the sidecars' messages become: implemented by agent/core/iso15118.py."""

    def hlc_event(self, evse_id: int, name: str, params: dict[str, Any]) -> None:
        """The sidecar reported something (protocol.SIDECAR_EVENTS); never blocks."""

    async def hlc_request(self, evse_id: int, name: str,
                          params: dict[str, Any]) -> dict[str, Any]:
        """The SECC asks (protocol.AGENT_METHODS); raise ValueError to refuse."""


def free_udp_port() -> int:
    """A UDP port on ::1 nobody holds now (the mock HAL's SDP port, one per EVSE)."""
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.bind(("::1", 0))
        return s.getsockname()[1]


def _sidecar_env() -> dict[str, str]:
    """The sidecar's environment: ours without PYTHONPATH / VIRTUAL_ENV (its venv is its own;
    the agent's packages, cryptography 50 among them, must not leak into it)."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


async def _pipe_to_log(stream: asyncio.StreamReader | None, name: str, tail: deque[str],
                       on_line: Any = None) -> None:
    if stream is None:
        return
    while True:
        try:
            raw = await stream.readline()
        except ValueError:  # an endless line: skip it
            continue
        if not raw:
            return
        line = raw.decode("utf-8", "replace").rstrip()
        tail.append(line)
        if on_line is not None and on_line(line):
            continue
        level = logging.WARNING if line.startswith(("ERROR", "CRITICAL", "Traceback")) \
            else logging.DEBUG
        log.log(level, "%s: %s", name, line)


@dataclass
class Sidecar:
    """One EVSE's SECC: its process (when we run it) and our connection to its socket."""

    evse_id: int
    interface: str
    socket_path: str
    command: list[str] | None  # None: someone else runs it (systemd)
    handler: HlcHandler
    sdp_port: int = 15118
    process: asyncio.subprocess.Process | None = None
    writer: asyncio.StreamWriter | None = None
    hello: dict[str, Any] | None = None
    status: dict[str, Any] = field(default_factory=dict)  # the last pushed evse_status
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_TAIL))
    bad_lines: int = 0  # lines that did not parse (tests, the status page)
    restarts: int = 0
    _tasks: set[asyncio.Task] = field(default_factory=set)

    @property
    def name(self) -> str:
        return f"secc-{self.evse_id}"

    # ---------------------------------------------------------------- process
    async def _spawn(self) -> None:
        assert self.command is not None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        self.process = await asyncio.create_subprocess_exec(
            *self.command, stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=_sidecar_env(), cwd=os.path.dirname(self.socket_path),
            start_new_session=True)
        log.info("EVSE %s: ISO 15118 SECC started on %s (pid %s)", self.evse_id,
                 self.interface, self.process.pid)
        for stream in (self.process.stdout, self.process.stderr):
            self._spawn_task(_pipe_to_log(stream, self.name, self.tail))

    def _spawn_task(self, coro: Any) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def run(self) -> None:
        """Keep the sidecar running and connected, for as long as the agent runs."""
        restart_wait = RESTART_S[0]
        while True:
            if self.command is not None and (self.process is None
                                             or self.process.returncode is not None):
                await self._spawn()
            await self._connect_and_serve()
            proc = self.process
            if proc is not None and self.command is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 1.0)
                if proc.returncode is not None:
                    self.restarts += 1
                    log.error("EVSE %s: ISO 15118 SECC ended (exit %s), restarting in %.0f s; "
                              "its last lines:\n%s", self.evse_id, proc.returncode,
                              restart_wait, "\n".join(list(self.tail)[-10:]))
                    await asyncio.sleep(restart_wait)
                    restart_wait = min(RESTART_S[1], restart_wait * 2)
                    continue
            restart_wait = RESTART_S[0]

    async def _connect_and_serve(self) -> None:
        wait = RECONNECT_S[0]
        while True:
            if self.process is not None and self.process.returncode is not None:
                return
            try:
                reader, writer = await asyncio.open_unix_connection(
                    self.socket_path, limit=protocol.MAX_LINE)
                break
            except (FileNotFoundError, ConnectionRefusedError, OSError):
                await asyncio.sleep(wait)
                wait = min(RECONNECT_S[1], wait * 2)
        self.writer = writer
        log.info("EVSE %s: connected to the ISO 15118 SECC", self.evse_id)
        if self.status:  # what the sidecar must know before the EV asks
            self._send(protocol.event("evse_status", status=dict(self.status)))
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:
                    self._bad("a line longer than the channel's limit")
                    continue
                if not line:
                    break
                self._receive(line)
        except ConnectionError as exc:
            log.warning("EVSE %s: ISO 15118 SECC connection lost: %s", self.evse_id, exc)
        finally:
            self.writer = None
            self.connected.clear()
            self.hello = None
            writer.close()
            try:  # a session the SECC cannot carry on is over (the limit hold goes with it)
                self.handler.hlc_event(self.evse_id, "session_ended",
                                       {"reason": "connection to the SECC lost"})
            except Exception:  # noqa: BLE001
                log.exception("EVSE %s: ISO 15118 session end not handled", self.evse_id)
            log.info("EVSE %s: disconnected from the ISO 15118 SECC", self.evse_id)

    def _bad(self, why: str) -> None:
        self.bad_lines += 1
        log.error("EVSE %s: the ISO 15118 SECC sent a bad line: %s", self.evse_id, why)

    def _receive(self, line: bytes) -> None:
        try:
            msg = protocol.decode_from_sidecar(line)
        except protocol.ProtocolError as exc:
            self._bad(str(exc))
            if exc.request_id is not None:
                self._send(protocol.response(exc.request_id, error=str(exc)))
            return
        if msg.kind == protocol.EVENT:
            if msg.name == "hello":
                if msg.params.get("protocol_version") != protocol.PROTOCOL_VERSION:
                    log.error("EVSE %s: the SECC speaks protocol %s, we speak %s",
                              self.evse_id, msg.params.get("protocol_version"),
                              protocol.PROTOCOL_VERSION)
                self.hello = dict(msg.params)
                self.connected.set()
            try:
                self.handler.hlc_event(self.evse_id, msg.name, dict(msg.params))
            except Exception:  # noqa: BLE001 - one handler error never ends the channel
                log.exception("EVSE %s: ISO 15118 event %s not handled", self.evse_id,
                              msg.name)
        elif msg.kind == protocol.REQUEST:
            self._spawn_task(self._answer(msg))
        # responses: the agent sends only pings, nobody waits for them

    async def _answer(self, msg: protocol.Message) -> None:
        assert msg.id is not None
        try:
            limit = CERTIFICATE_TIMEOUT_S if msg.name == "certificate" else REQUEST_TIMEOUT_S
            async with asyncio.timeout(limit):
                result = await self.handler.hlc_request(self.evse_id, msg.name,
                                                        dict(msg.params))
            reply = protocol.response(msg.id, result)
        except TimeoutError:
            reply = protocol.response(msg.id, error=f"{msg.name}: no decision within "
                                                    f"{limit} s")
        except ValueError as exc:
            reply = protocol.response(msg.id, error=f"{msg.name}: {exc}")
        except Exception as exc:  # noqa: BLE001
            log.exception("EVSE %s: ISO 15118 request %s failed", self.evse_id, msg.name)
            reply = protocol.response(msg.id, error=f"{msg.name}: internal error ({exc})")
        self._send(reply)

    def _send(self, msg: protocol.Message) -> None:
        writer = self.writer
        if writer is None:
            return
        try:
            writer.write(protocol.encode(msg))
        except (ConnectionError, protocol.ProtocolError) as exc:
            log.error("EVSE %s: not sent to the SECC: %s", self.evse_id, exc)

    def tell(self, name: str, **params: Any) -> bool:
        """Send an event (protocol.AGENT_EVENTS); whether there was a connection for it."""
        if self.writer is None:
            return False
        self._send(protocol.event(name, **params))
        return True

    def push(self, status: Mapping[str, Any]) -> None:
        """The EVSE's state changed: tell the sidecar (again after a reconnect)."""
        changed = {k: v for k, v in status.items() if self.status.get(k, object()) != v}
        if not changed:
            return
        self.status.update(changed)
        self._send(protocol.event("evse_status", status=changed))

    async def stop(self) -> None:
        if self.writer is not None:
            self.writer.close()
        proc = self.process
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), STOP_GRACE_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@dataclass
class EvSimulator:
    """The package's EVCC for one EVSE (mock HAL): its process and what it reported."""

    evse_id: int
    process: asyncio.subprocess.Process
    reports: list[dict[str, Any]] = field(default_factory=list)
    tail: deque[str] = field(default_factory=lambda: deque(maxlen=LOG_TAIL))
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: set[asyncio.Task] = field(default_factory=set)

    def _line(self, line: str) -> bool:
        from hal.iso15118.evcc_sim import REPORT

        if not line.startswith(REPORT):
            return False
        try:
            data = json.loads(line[len(REPORT):])
        except ValueError:
            return False
        self.reports.append(data)
        log.info("EVSE %s: the simulated EV reports %s", self.evse_id, data)
        if data.get("kind") == "ended":
            self.ended.set()
        return True

    def watch(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks.add(loop.create_task(_pipe_to_log(self.process.stdout,
                                                      f"evcc-{self.evse_id}", self.tail,
                                                      self._line)))
        self._tasks.add(loop.create_task(_pipe_to_log(self.process.stderr,
                                                      f"evcc-{self.evse_id}", self.tail)))
        self._tasks.add(loop.create_task(self._exit()))

    async def _exit(self) -> None:
        await self.process.wait()
        self.ended.set()

    def report(self, kind: str) -> dict[str, Any] | None:
        return next((r for r in reversed(self.reports) if r.get("kind") == kind), None)

    @property
    def running(self) -> bool:
        return self.process.returncode is None

    async def stop(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), STOP_GRACE_S)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                await self.process.wait()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class HighLevelCommunication:
    """The station's SECCs, one per EVSE with a PLC modem (or every EVSE on the mock HAL)."""

    def __init__(self, cfg: Iso15118Config, runtime_dir: str | os.PathLike[str]) -> None:
        self.cfg = cfg
        self.runtime_dir = Path(cfg.socket_dir or runtime_dir)
        self.sidecars: dict[int, Sidecar] = {}
        self.simulators: dict[int, EvSimulator] = {}
        self._tasks: list[asyncio.Task] = []
        self._own_dir: str | None = None

    @property
    def evse_ids(self) -> list[int]:
        return sorted(self.cfg.interfaces)

    def _socket_path(self, evse_id: int) -> str:
        path = self.runtime_dir / f"iso15118-{evse_id}.sock"
        if len(str(path)) > 100:  # AF_UNIX paths hold 107 bytes: a short private one
            self._own_dir = self._own_dir or tempfile.mkdtemp(prefix="cp-hlc-")
            path = Path(self._own_dir) / f"{evse_id}.sock"
        return str(path)

    def _command(self, evse_id: int, sock: str, sdp_port: int) -> list[str]:
        cfg = self.cfg
        cmd = [cfg.python, str(SIDECAR), "--socket", sock, "--interface",
               cfg.interfaces[evse_id], "--evse", str(evse_id), "--protocols",
               ",".join(cfg.protocols), "--auth", ",".join(cfg.auth_modes),
               "--sdp-port", str(sdp_port), "--parent-pid", str(os.getpid())]
        if cfg.pki_dir:
            cmd += ["--pki", cfg.pki_dir]
        for flag, on in (("--free-service", cfg.free_service),
                         ("--cert-install", cfg.cert_install),
                         ("--enforce-tls", cfg.enforce_tls),
                         ("--log-messages", cfg.log_messages)):
            if on:
                cmd.append(flag)
        return cmd

    async def start(self, handler: HlcHandler) -> None:
        """Start (or find) every EVSE's sidecar; returns at once, connections follow."""
        if self.cfg.start_sidecar and not Path(self.cfg.python).exists():  # noqa: ASYNC240
            log.error("ISO 15118: the sidecar's Python %s is missing (bash "
                      "scripts/iso15118_venv.sh makes it); high-level communication is off, "
                      "the EVs charge by the pilot alone", self.cfg.python)
            return
        self.runtime_dir.mkdir(parents=True, exist_ok=True)
        for evse_id in self.evse_ids:
            iface = self.cfg.interfaces[evse_id]
            port = (self.cfg.sdp_port or free_udp_port()) if iface == LOOPBACK else 15118
            sock = self._socket_path(evse_id)
            car = Sidecar(evse_id, iface, sock,
                          self._command(evse_id, sock, port) if self.cfg.start_sidecar
                          else None, handler, sdp_port=port)
            self.sidecars[evse_id] = car
            self._tasks.append(asyncio.get_running_loop().create_task(
                car.run(), name=f"iso15118-{evse_id}"))

    async def wait_connected(self, evse_id: int, timeout: float = 30.0) -> None:
        await asyncio.wait_for(self.sidecars[evse_id].connected.wait(), timeout)

    def push(self, evse_id: int, status: Mapping[str, Any]) -> None:
        car = self.sidecars.get(evse_id)
        if car is not None:
            car.push(status)

    def renegotiate(self, evse_id: int, reason: str = "") -> bool:
        """Ask EVSE ``evse_id``'s SECC to have the EV renegotiate its schedule (K17); whether
        the request went out (False: no SECC connected). The sidecar reports what became of
        it (``renegotiation`` events)."""
        car = self.sidecars.get(evse_id)
        return car is not None and car.tell("renegotiate", reason=reason or None)

    async def start_ev(self, evse_id: int, *, protocol_name: str = "ISO_15118_2",
                       evcc_id: str = "", tls: bool = False, loops: int = 3,
                       departure_s: int = 0, energy_wh: int = 20_000,
                       max_current_a: int = 16, pki_dir: str | None = None,
                       cert_install: bool = False,
                       bidirectional: bool = False,
                       control_mode: str = "scheduled") -> EvSimulator:
        """The package's EV simulator against EVSE ``evse_id``'s SECC (loopback only).
        ``pki_dir``: the EV's certificates (its contract, the V2G root it trusts), in the
        package's layout; ``cert_install``: the EV asks CertificateInstallation for its
        contract; ``bidirectional``: an ISO 15118-20 EV asking AC_BPT; ``control_mode``:
        the -20 control mode it selects (``scheduled`` or ``dynamic``)."""
        if control_mode not in ("scheduled", "dynamic"):
            raise ValueError(f"control mode {control_mode!r}: expected scheduled or dynamic")
        car = self.sidecars.get(evse_id)
        if car is None or car.interface != LOOPBACK:
            raise ValueError(f"EVSE {evse_id} has no SECC on the loopback interface: the "
                             "simulated ISO 15118 EV needs the mock HAL with hal.iso15118")
        old = self.simulators.pop(evse_id, None)
        if old is not None:
            await old.stop()
        cmd = [self.cfg.python, str(EVCC_SIM), "--interface", LOOPBACK, "--sdp-port",
               str(car.sdp_port), "--protocol", protocol_name, "--loops", str(loops),
               "--departure-s", str(departure_s), "--energy-wh", str(energy_wh),
               "--max-current-a", str(max_current_a), "--parent-pid", str(os.getpid()),
               "--control-mode", control_mode]
        if evcc_id:
            cmd += ["--evcc-id", evcc_id]
        for flag, on in (("--tls", tls), ("--cert-install", cert_install),
                         ("--bidirectional", bidirectional)):
            if on:
                cmd.append(flag)
        pki = pki_dir or self.cfg.pki_dir
        if pki:
            cmd += ["--pki", pki]
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=_sidecar_env(), cwd=str(self.runtime_dir),
            start_new_session=True)
        sim = EvSimulator(evse_id, proc)
        sim.watch()
        self.simulators[evse_id] = sim
        log.info("EVSE %s: simulated ISO 15118 EV started (%s, pid %s)", evse_id,
                 protocol_name, proc.pid)
        return sim

    async def stop(self) -> None:
        for sim in list(self.simulators.values()):
            await sim.stop()
        self.simulators.clear()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for car in self.sidecars.values():
            await car.stop()
        if self._own_dir is not None:
            import shutil

            shutil.rmtree(self._own_dir, ignore_errors=True)
