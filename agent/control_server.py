"""The control socket's listener: what the agent opens at start-up (``cp-agent ctl`` must reach
it at any time), and no more.

The wire protocol is described in :mod:`agent.control`.  Serving a connection (reading request
lines, dispatching them to the handler, streaming) is :mod:`agent.control_session`, imported by
the first connection, and the client and ``ctl``'s command line stay in :mod:`agent.control`:
an agent nobody connects to never loads either (docs/performance.md, issue 18).

The server is exposed to every member of the socket's group, so it defends itself: a request
is bounded in size, a client that stops talking is dropped after a timeout, and no exception
escapes a connection into the agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

log = logging.getLogger("agent.control")

DEFAULT_SOCKET = "/run/cp-agent/control.sock"
MAX_REQUEST_BYTES = 64 * 1024
# Answers such as a large status can exceed a request; the client still wants a bound.
MAX_RESPONSE_BYTES = 1024 * 1024
SOCKET_MODE = 0o660  # the agent's user and group; bench operators join the group

Handler = Callable[[dict[str, Any]], Awaitable[Any]]


class ControlSocketInUse(RuntimeError):
    """Another live process answers on the control socket path."""


class ControlSocketError(OSError):
    """The control socket cannot be created (its directory is missing or not writable)."""


class Stream:
    """A streaming answer: a handler returns one instead of a result (``ctl frames``).

    ``head`` goes out as the answer's result, then every item ``items`` yields on a line of
    its own, until the iterator is exhausted, the client hangs up or the server stops; the
    iterator is closed (``aclose``) in every case, so it can release what it holds.
    """

    def __init__(self, items: AsyncIterator[Any], head: Any = None) -> None:
        self.items = items
        self.head = head

    async def aclose(self) -> None:
        close = getattr(self.items, "aclose", None)
        if close is not None:
            await close()


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
        self.handler = handler
        self.max_request = max_request
        self.read_timeout = read_timeout
        self.handler_timeout = handler_timeout
        self._server: asyncio.Server | None = None
        self._inode: tuple[int, int] | None = None
        self._clients: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self.streams: set[asyncio.Task[Any]] = set()  # clients being streamed to
        self.stopping = asyncio.Event()

    async def start(self) -> None:
        """Listen on ``path``, replacing a stale socket left by a crashed agent.

        Raises ``ControlSocketInUse`` if a live agent already answers there: silently taking
        its path would leave that agent running but unreachable.
        """
        if self._server is not None:
            return
        self.stopping.clear()
        await self._clear_stale_socket()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            try:
                sock.bind(self.path)
            except OSError as exc:
                # A bare "No such file or directory" would not say which file.
                raise ControlSocketError(
                    exc.errno, f"cannot create control socket {self.path}: {exc.strerror or exc}"
                ) from exc
            # chmod before listen(): no client can connect while the umask-derived mode holds.
            os.chmod(self.path, SOCKET_MODE)
            st = os.stat(self.path)
            self._inode = (st.st_dev, st.st_ino)
            sock.listen(16)
            sock.setblocking(False)
            self._server = await asyncio.start_unix_server(
                self._on_client, sock=sock, limit=self.max_request
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
        # Streams end on their own with an end line; the other clients are idle or in a
        # handler. Closing the transports ends each client's pending read with EOF, so its
        # task finishes on its own; cancelling it instead trips a spurious error log in 3.11.
        self.stopping.set()
        for task, writer in self._clients.items():
            if task not in self.streams:
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
            # The protocol is loaded by the first connection, not at start-up.
            from agent.control_session import serve

            await serve(self, reader, writer)
        except (ConnectionError, TimeoutError):
            pass
        except Exception:
            log.exception("control connection failed")
        finally:
            self._clients.pop(task, None)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), timeout=1)


def encode(obj: Any) -> bytes:
    """One line of the wire format (both ends)."""
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


__all__ = ["DEFAULT_SOCKET", "MAX_REQUEST_BYTES", "MAX_RESPONSE_BYTES", "SOCKET_MODE",
           "ControlServer", "ControlSocketError", "ControlSocketInUse", "Handler", "Stream",
           "encode"]
