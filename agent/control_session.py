"""Serving one control connection: request lines in, answers (or a stream) out.

Imported by the first connection to the control socket (:mod:`agent.control_server` listens
from start-up); the handler the server was given answers each request.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import TYPE_CHECKING, Any

from agent.control_server import Stream
from agent.control_server import encode as _encode

if TYPE_CHECKING:
    from agent.control_server import ControlServer

log = logging.getLogger("agent.control")


async def serve(server: ControlServer, reader: asyncio.StreamReader,
                writer: asyncio.StreamWriter) -> None:
    """Answer the requests of one connection until it ends (EOF, idle, too large, a stream)."""
    while True:
        try:
            line = await asyncio.wait_for(reader.readuntil(b"\n"), server.read_timeout)
        except asyncio.IncompleteReadError as exc:
            if not exc.partial.strip():
                return  # clean EOF between requests
            line = exc.partial  # last request without a newline: still answer it
        except asyncio.LimitOverrunError:
            # The rest of the stream cannot be re-synchronised: answer and hang up.
            await _reply(server, writer,
                         _error(f"request too large (limit {server.max_request} bytes)"))
            return
        except TimeoutError:
            log.debug("control client idle for %.0f s, dropping it", server.read_timeout)
            return
        if len(line) > server.max_request:
            await _reply(server, writer,
                         _error(f"request too large (limit {server.max_request} bytes)"))
            return
        if not line.strip():
            continue
        response = await _dispatch(server, line)
        if isinstance(response, Stream):
            await _stream(server, reader, writer, response)
            return  # a stream is the last answer on its connection
        await _reply(server, writer, response)
        if reader.at_eof():
            return


async def _reply(server: ControlServer, writer: asyncio.StreamWriter,
                 response: dict[str, Any]) -> None:
    writer.write(_encode(response))
    await asyncio.wait_for(writer.drain(), server.read_timeout)


async def _stream(server: ControlServer, reader: asyncio.StreamReader,
                  writer: asyncio.StreamWriter, stream: Stream) -> None:
    """Send a streaming answer until it ends, the client leaves or the server stops."""
    task = asyncio.current_task()
    assert task is not None
    server.streams.add(task)
    gone = asyncio.ensure_future(_client_gone(reader))
    stopping = asyncio.ensure_future(server.stopping.wait())
    items = stream.items.__aiter__()

    async def next_item() -> Any:
        return await items.__anext__()

    reason = "end of stream"
    try:
        await _reply(server, writer, {"ok": True, "result": stream.head, "stream": True})
        while True:
            upcoming = asyncio.ensure_future(next_item())
            await asyncio.wait({upcoming, gone, stopping},
                               return_when=asyncio.FIRST_COMPLETED)
            if not upcoming.done():
                upcoming.cancel()
                await asyncio.gather(upcoming, return_exceptions=True)
                if gone.done():
                    return  # nobody left to tell
                reason = "the agent is stopping"
                break
            try:
                item = upcoming.result()
            except StopAsyncIteration:
                break
            writer.write(_encode({"item": item}))
            await asyncio.wait_for(writer.drain(), server.read_timeout)
        await _reply(server, writer, {"end": reason})
    finally:
        server.streams.discard(task)
        gone.cancel()
        stopping.cancel()
        await stream.aclose()


async def _dispatch(server: ControlServer, line: bytes) -> dict[str, Any] | Stream:
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
    deadline = asyncio.timeout(server.handler_timeout)
    try:
        async with deadline:
            result = await server.handler({"cmd": cmd, "args": args})
    except (ValueError, KeyError) as exc:
        return _error(_message(exc))
    except TimeoutError as exc:
        if not deadline.expired():
            # The handler's own timeout (a HAL call, say), not ours.
            log.exception("control command %r failed", cmd)
            return _error(f"internal error: {type(exc).__name__}: {exc}")
        log.error("control command %r did not finish in %.0f s", cmd, server.handler_timeout)
        return _error(f"internal error: {cmd} did not finish in {server.handler_timeout:g} s")
    except Exception as exc:
        log.exception("control command %r failed", cmd)
        return _error(f"internal error: {type(exc).__name__}: {exc}")
    if isinstance(result, Stream):
        return result
    response = {"ok": True, "result": result}
    try:
        _encode(response)
    except (TypeError, ValueError) as exc:
        log.error("control command %r returned an unserialisable result: %s", cmd, exc)
        return _error(f"internal error: result of {cmd} is not JSON-serialisable")
    return response


async def _client_gone(reader: asyncio.StreamReader) -> None:
    """Returns when a streaming client closes its end (what it sends meanwhile is ignored)."""
    with contextlib.suppress(ConnectionError, OSError):
        while await reader.read(4096):
            pass


def _error(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message}


def _message(exc: BaseException) -> str:
    # str(KeyError("x")) is "'x'": the quotes are repr noise, not part of the message.
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        return str(exc.args[0])
    return str(exc) or type(exc).__name__


__all__ = ["serve"]
