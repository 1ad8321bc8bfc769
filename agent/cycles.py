"""Letting go of a failed attempt's library objects at once, not at the next full collection.

Used by the file transfers (agent/transfer/), and by the OCPP link (agent/link/connection.py)
for the exception websockets keeps on a dead connection's protocol.

A failed connection leaves aiohttp's ``ClientConnectorError`` and the ``OSError`` under it
(raised in asyncio's ``sock_connect`` and collected by aiohappyeyeballs) each in a reference
cycle through its own traceback: a frame the traceback holds keeps the exception in a local,
or keeps a future that does.  Those frames hold the whole attempt: the client session, its
connector and request, and the ``ssl.SSLContext`` built for the transfer, about 0.8 MB of C
memory (the system CA store) that Python's object counts do not see.  Reference counting
cannot free a cycle; the collector can, but an attempt lives through its retries long enough
for the objects to reach the oldest generation, which is collected rarely.  Under the
hostile-frames campaign on 2.1 (GetLog / UpdateFirmware to unreachable URLs, few Resets)
malloc in use climbed by tens of MB between two full collections (docs/durability.md).

The transfer modules turn every library error into their own error carrying only its text,
so nothing needs those tracebacks: :func:`drop_tracebacks` cuts them, and the attempt is
freed by reference counting when the error is handled.
"""

from __future__ import annotations


def drop_tracebacks(exc: BaseException) -> None:
    """Remove the traceback of ``exc`` and of every exception it chains to (``__cause__``,
    ``__context__``, the members of an exception group), which breaks the cycles that run
    through those tracebacks.  Frames are left untouched: one of them may still be running
    (or be a suspended coroutine, which clearing would close)."""
    stack: list[BaseException | None] = [exc]
    seen: set[int] = set()
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        e.__traceback__ = None
        stack.append(e.__cause__)
        stack.append(e.__context__)
        if isinstance(e, BaseExceptionGroup):
            stack.extend(e.exceptions)


__all__ = ["drop_tracebacks"]
