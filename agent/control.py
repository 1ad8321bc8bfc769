"""The local control socket: lets a bench operator poke a running agent (``cp-agent ctl``).

On a bench rig there is no car and no card reader at hand, so the mock HAL is driven from the
outside: "plug an EV into EVSE 1", "tap card ABC123", "raise a meter fault".  The same socket
answers ``status`` on real hardware.

Wire format: one JSON object per line in each direction.  Request
``{"cmd": "plug", "args": {"evse": 1}}``, answer ``{"ok": true, "result": ...}`` or
``{"ok": false, "error": "message"}``.  Line-delimited JSON keeps the client trivially
scriptable (``socat - UNIX-CONNECT:/run/cp-agent/control.sock`` works by hand).

The server is exposed to every member of the socket's group, so it defends itself: a request
is bounded in size, a client that stops talking is dropped after a timeout, and no exception
escapes a connection into the agent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import yaml

from hal.interfaces import FaultKind

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/run/cp-agent/control.sock"
MAX_REQUEST_BYTES = 64 * 1024
# Answers such as a large status can exceed a request; the client still wants a bound.
MAX_RESPONSE_BYTES = 1024 * 1024
SOCKET_MODE = 0o660  # the agent's user and group; bench operators join the group

EXIT_OK = 0
EXIT_AGENT_ERROR = 1  # the agent answered ok:false
EXIT_USAGE = 2  # bad command line (argparse's own convention)
EXIT_NOT_RUNNING = 3  # no socket, or nobody listening on it
EXIT_COMMS = 4  # the agent is there but the exchange failed (permission, timeout, garbage)

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class ControlSocketInUse(RuntimeError):
    """Another live process answers on the control socket path."""


# ======================================================================= server


class ControlServer:
    """Serves control requests on a Unix stream socket, one handler call per request line.

    ``handler`` receives the validated request (``{"cmd": str, "args": dict}``) and returns a
    JSON-serialisable result.  It may raise ``ValueError`` or ``KeyError`` to reject a request
    with a message meant for the operator; any other exception is reported as an internal
    error (and logged with its traceback) without harming the server.
    """

    def __init__(
        self,
        path: str,
        handler: Handler,
        *,
        max_request: int = MAX_REQUEST_BYTES,
        read_timeout: float = 10.0,
        handler_timeout: float = 30.0,
    ) -> None:
        self.path = path
        self._handler = handler
        self._max_request = max_request
        self._read_timeout = read_timeout
        self._handler_timeout = handler_timeout
        self._server: asyncio.Server | None = None
        self._inode: tuple[int, int] | None = None
        self._clients: dict[asyncio.Task[None], asyncio.StreamWriter] = {}

    async def start(self) -> None:
        """Listen on ``path``, replacing a stale socket left by a crashed agent.

        Raises ``ControlSocketInUse`` if a live agent already answers there: silently taking
        its path would leave that agent running but unreachable.
        """
        if self._server is not None:
            return
        await self._clear_stale_socket()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            try:
                sock.bind(self.path)
            except OSError as exc:
                # A bare "No such file or directory" would not say which file.
                raise OSError(
                    exc.errno, f"cannot create control socket {self.path}: {exc.strerror or exc}"
                ) from exc
            # chmod before listen(): no client can connect while the umask-derived mode holds.
            os.chmod(self.path, SOCKET_MODE)
            st = os.stat(self.path)
            self._inode = (st.st_dev, st.st_ino)
            sock.listen(16)
            sock.setblocking(False)
            self._server = await asyncio.start_unix_server(
                self._on_client, sock=sock, limit=self._max_request
            )
        except BaseException:
            sock.close()
            self._unlink_own_socket()
            raise
        log.info("control socket listening on %s", self.path)

    async def stop(self) -> None:
        """Stop listening, drop connected clients and remove the socket file."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        # Closing the transports ends each client's pending read with EOF, so its task
        # finishes on its own; cancelling it instead trips a spurious error log in 3.11.
        for writer in self._clients.values():
            writer.close()
        if self._clients:
            _, pending = await asyncio.wait(list(self._clients), timeout=5)
            for task in pending:  # stuck in the handler: give up on it
                task.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), timeout=5)
        self._unlink_own_socket()

    async def __aenter__(self) -> ControlServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ------------------------------------------------------------------ internals

    async def _clear_stale_socket(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            # Never delete a file we did not make; the configuration is probably wrong.
            raise ControlSocketInUse(
                f"{self.path} exists and is not a socket; refusing to replace it"
            )
        try:
            _, writer = await asyncio.wait_for(
                asyncio.open_unix_connection(self.path), timeout=2
            )
        except (ConnectionRefusedError, FileNotFoundError):
            log.info("removing stale control socket %s", self.path)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            return
        except (TimeoutError, OSError) as exc:
            # A full backlog or a permission problem: someone is there, or we cannot tell.
            raise ControlSocketInUse(
                f"cannot tell whether another cp-agent uses {self.path}: {exc}"
            ) from exc
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        raise ControlSocketInUse(f"another cp-agent is already listening on {self.path}")

    def _unlink_own_socket(self) -> None:
        """Remove the socket only if it is still ours; a successor may have replaced it."""
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        if self._inode is not None and (st.st_dev, st.st_ino) != self._inode:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self._inode = None

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients[task] = writer
        try:
            await self._serve(reader, writer)
        except (ConnectionError, TimeoutError):
            pass
        except Exception:
            log.exception("control connection failed")
        finally:
            self._clients.pop(task, None)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), timeout=1)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                line = await asyncio.wait_for(reader.readuntil(b"\n"), self._read_timeout)
            except asyncio.IncompleteReadError as exc:
                if not exc.partial.strip():
                    return  # clean EOF between requests
                line = exc.partial  # last request without a newline: still answer it
            except asyncio.LimitOverrunError:
                # The rest of the stream cannot be re-synchronised: answer and hang up.
                await self._reply(
                    writer,
                    _error(f"request too large (limit {self._max_request} bytes)"),
                )
                return
            except TimeoutError:
                log.debug("control client idle for %.0f s, dropping it", self._read_timeout)
                return
            if len(line) > self._max_request:
                await self._reply(
                    writer, _error(f"request too large (limit {self._max_request} bytes)")
                )
                return
            if not line.strip():
                continue
            await self._reply(writer, await self._dispatch(line))
            if reader.at_eof():
                return

    async def _reply(self, writer: asyncio.StreamWriter, response: dict[str, Any]) -> None:
        writer.write(_encode(response))
        await asyncio.wait_for(writer.drain(), self._read_timeout)

    async def _dispatch(self, line: bytes) -> dict[str, Any]:
        try:
            request = json.loads(line)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return _error(f"bad request: not JSON ({exc})")
        if not isinstance(request, dict):
            return _error("bad request: expected a JSON object")
        cmd = request.get("cmd")
        args = request.get("args", {})
        if not isinstance(cmd, str) or not cmd:
            return _error("bad request: 'cmd' must be a non-empty string")
        if not isinstance(args, dict):
            return _error("bad request: 'args' must be an object")
        deadline = asyncio.timeout(self._handler_timeout)
        try:
            async with deadline:
                result = await self._handler({"cmd": cmd, "args": args})
        except (ValueError, KeyError) as exc:
            return _error(_message(exc))
        except TimeoutError as exc:
            if not deadline.expired():
                # The handler's own timeout (a HAL call, say), not ours.
                log.exception("control command %r failed", cmd)
                return _error(f"internal error: {type(exc).__name__}: {exc}")
            log.error("control command %r did not finish in %.0f s", cmd, self._handler_timeout)
            return _error(f"internal error: {cmd} did not finish in {self._handler_timeout:g} s")
        except Exception as exc:
            log.exception("control command %r failed", cmd)
            return _error(f"internal error: {type(exc).__name__}: {exc}")
        response = {"ok": True, "result": result}
        try:
            _encode(response)
        except (TypeError, ValueError) as exc:
            log.error("control command %r returned an unserialisable result: %s", cmd, exc)
            return _error(f"internal error: result of {cmd} is not JSON-serialisable")
        return response


def _error(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message}


def _encode(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def _message(exc: BaseException) -> str:
    # str(KeyError("x")) is "'x'": the quotes are repr noise, not part of the message.
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        return str(exc.args[0])
    return str(exc) or type(exc).__name__


# ======================================================================= client


class ControlError(Exception):
    """The exchange with the agent failed; ``exit_code`` says how ``ctl`` should exit."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def send_request(
    path: str, cmd: str, args: dict[str, Any] | None = None, *, timeout: float = 10.0
) -> dict[str, Any]:
    """Send one request and return the agent's response object (ok or not).

    Blocking on purpose: the caller is a short-lived CLI process with nothing else to do.
    Raises ``ControlError`` when there is no agent or no sensible answer.
    """
    payload = _encode({"cmd": cmd, "args": args or {}})
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise ControlError(
                f"cp-agent is not running (no control socket at {path})", EXIT_NOT_RUNNING
            ) from None
        except PermissionError:
            raise ControlError(
                f"permission denied on {path} (is your user in the cp-agent group?)", EXIT_COMMS
            ) from None
        except OSError as exc:
            raise ControlError(f"cannot connect to {path}: {exc}", EXIT_COMMS) from None
        try:
            sock.sendall(payload)
            data = _read_line(sock)
        except TimeoutError:
            raise ControlError(
                f"cp-agent did not answer within {timeout:g} s", EXIT_COMMS
            ) from None
        except OSError as exc:
            raise ControlError(f"connection to cp-agent failed: {exc}", EXIT_COMMS) from None
    if not data:
        raise ControlError("cp-agent closed the connection without an answer", EXIT_COMMS)
    try:
        response = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ControlError("cp-agent sent a malformed answer", EXIT_COMMS) from None
    if not isinstance(response, dict) or not isinstance(response.get("ok"), bool):
        raise ControlError("cp-agent sent a malformed answer", EXIT_COMMS)
    return response


def _read_line(sock: socket.socket) -> bytes:
    buf = bytearray()
    while b"\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buf += chunk
        if len(buf) > MAX_RESPONSE_BYTES:
            raise ControlError("cp-agent's answer is too large", EXIT_COMMS)
    return bytes(buf).split(b"\n", 1)[0]


# ======================================================================= CLI


def _evse(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"EVSE must be a positive integer, got {text!r}")
    return value


_PILOT_STATES = "ABCDEF"


def _pilot_state(text: str) -> str:
    state = text.strip().upper()
    if len(state) != 1 or state not in _PILOT_STATES:
        raise argparse.ArgumentTypeError(
            f"STATE must be one of {', '.join(_PILOT_STATES)} (IEC 61851 pilot state), got {text!r}"
        )
    return state


def _fault_kind(text: str) -> str:
    try:
        return FaultKind(text.strip().lower()).value
    except ValueError:
        kinds = ", ".join(k.value for k in FaultKind)
        raise argparse.ArgumentTypeError(f"KIND must be one of {kinds}; got {text!r}") from None


def _token(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("TOKEN must not be empty")
    return text.strip()


class _Parser(argparse.ArgumentParser):
    """argparse exits the process on errors; ctl_main must return its code instead."""

    def exit(self, status: int = 0, message: str | None = None) -> None:  # type: ignore[override]
        if message:
            self._print_message(message, sys.stderr)
        raise _ParserExit(status)


class _ParserExit(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="cp-agent ctl",
        description="Talk to a running cp-agent through its control socket.",
        epilog=(
            f"exit status: {EXIT_OK} ok, {EXIT_AGENT_ERROR} the agent refused the command, "
            f"{EXIT_USAGE} usage error, {EXIT_NOT_RUNNING} agent not running, "
            f"{EXIT_COMMS} no valid answer"
        ),
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--config", metavar="PATH", help="take control.socket from this config file")
    where.add_argument("--socket", metavar="PATH", help="control socket path")
    p.add_argument(
        "--timeout", type=float, default=10.0, metavar="S", help="answer timeout (default 10)"
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)

    sub.add_parser("status", help="print the agent's status as JSON")
    for name, text in (("plug", "connect a (simulated) EV"), ("unplug", "disconnect the EV")):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("evse", type=_evse, metavar="EVSE")
    sp = sub.add_parser("ev", help="set the EV's pilot state (A-F)")
    sp.add_argument("evse", type=_evse, metavar="EVSE")
    sp.add_argument("state", type=_pilot_state, metavar="STATE")
    sp = sub.add_parser("tap", help="present an RFID token")
    sp.add_argument("token", type=_token, metavar="TOKEN")
    sp.add_argument("--evse", type=_evse, metavar="N", help="reader of this EVSE (default: shared)")
    for name, text in (("fault", "raise a hardware fault"), ("clear-fault", "clear a fault")):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("evse", type=_evse, metavar="EVSE")
        sp.add_argument("kind", type=_fault_kind, metavar="KIND")
    return p


def _request_args(ns: argparse.Namespace) -> dict[str, Any]:
    args: dict[str, Any] = {}
    for key in ("evse", "state", "token", "kind"):
        value = getattr(ns, key, None)
        if value is not None:
            args[key] = value
    return args


class _ConfigProblem(Exception):
    pass


def socket_from_config(path: str) -> str:
    """``control.socket`` from a config file, resolved like the agent resolves it.

    Deliberately not the full config loader: ``ctl`` must work against a config that the
    running agent accepted even if this checkout's validation has moved on.
    """
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _ConfigProblem(f"{path}: configuration file not found") from None
    except OSError as exc:
        raise _ConfigProblem(f"{path}: cannot read configuration: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise _ConfigProblem(f"{path}: not valid YAML: {exc}") from None
    control = raw.get("control") if isinstance(raw, dict) else None
    sock = control.get("socket") if isinstance(control, dict) else None
    if not isinstance(sock, str) or not sock:
        raise _ConfigProblem(f"{path}: no control.socket setting; give --socket PATH instead")
    if not os.path.isabs(sock):
        sock = str(p.resolve().parent / sock)  # relative to the file, as the agent does
    return sock


def ctl_main(argv: list[str], default_socket: str | None) -> int:
    """``cp-agent ctl``: validate before connecting, send one request, map the outcome to
    an exit status a shell script can branch on."""
    parser = _build_parser()
    try:
        ns = parser.parse_args(argv)
    except _ParserExit as exc:
        return exc.status

    if ns.socket:
        path = ns.socket
    elif ns.config:
        try:
            path = socket_from_config(ns.config)
        except _ConfigProblem as exc:
            print(f"cp-agent ctl: {exc}", file=sys.stderr)
            return EXIT_USAGE
    else:
        # None means "the caller knows no better": use the path the agent listens on by default.
        path = default_socket or DEFAULT_SOCKET

    try:
        response = send_request(path, ns.command, _request_args(ns), timeout=ns.timeout)
    except ControlError as exc:
        print(f"cp-agent ctl: {exc}", file=sys.stderr)
        return exc.exit_code

    if not response["ok"]:
        print(f"cp-agent ctl: {response.get('error') or 'the agent refused'}", file=sys.stderr)
        return EXIT_AGENT_ERROR
    result = response.get("result")
    if ns.command == "status" or result not in (None, {}, [], ""):
        print(json.dumps(result, indent=2, sort_keys=True))
    return EXIT_OK
