"""A failed transfer is freed at once, not at the next full collection (issue 18, the 2.1 memory
growth of the hostile-frames campaign).

Every GetLog / GetDiagnostics / UpdateFirmware to a place that cannot be reached left its
attempt in reference cycles through the tracebacks of aiohttp's and asyncio's connection
errors, the attempt's ``ssl.SSLContext`` (about 0.8 MB of C memory each: the system CA store)
included.  Between two full collections malloc in use climbed by tens of MB.  Here the
collector is off while the failures happen, and what it then finds is the cyclic garbage they
left: none of the attempt's objects may be in it, however many attempts there were.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.cycles import drop_tracebacks
from agent.transfer.download import DownloadError, download
from agent.transfer.tls import context
from agent.transfer.upload import UploadError, upload
from tests.test_diagnostics import closed_port, get_log, station, wait_status

# What a failed attempt is made of; any of them in the cyclic garbage is the leak back.
ATTEMPT_TYPES = ("SSLContext", "ClientSession", "TCPConnector", "ClientRequest",
                 "ConnectionKey", "ClientConnectorError", "ConnectionRefusedError")


@contextlib.contextmanager
def cyclic_garbage() -> Iterator[Counter[str]]:
    """Count by type what only the cycle collector could free of what the block allocated:
    the collector is off inside, then one collection keeps all it found (DEBUG_SAVEALL)."""
    found: Counter[str] = Counter()
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield found
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        found.update(type(o).__name__ for o in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if was_enabled:
            gc.enable()


def attempt_garbage(found: Counter[str]) -> dict[str, int]:
    return {name: found[name] for name in ATTEMPT_TYPES if found[name]}


async def _failed_upload(port: int) -> None:
    with pytest.raises(UploadError, match="ClientConnectorError"):
        await upload(f"http://127.0.0.1:{port}/upload", "diag.tar.gz", b"x" * 1000,
                     ssl_context=context())


async def _failed_download(port: int, dest: Path) -> None:
    with pytest.raises(DownloadError, match="Cannot connect"):
        await download(f"http://127.0.0.1:{port}/fw.bin", dest, ssl_context=context(),
                       timeout_s=5)


@pytest.mark.parametrize("kind", ["upload", "download"])
@pytest.mark.parametrize("attempts", [1, 6])
async def test_a_failed_http_transfer_leaves_no_cycle(kind: str, attempts: int,
                                                      tmp_path: Path) -> None:
    """Before the fix each attempt left one SSLContext, one ClientSession, ... here."""
    port = closed_port()
    with cyclic_garbage() as found:
        for i in range(attempts):
            if kind == "upload":
                await _failed_upload(port)
            else:
                await _failed_download(port, tmp_path / f"fw{i}.bin")
    assert attempt_garbage(found) == {}, found.most_common(15)


def test_drop_tracebacks_follows_the_whole_chain() -> None:
    """Cause, context and group members lose their tracebacks; a cyclic chain ends."""

    def raising(exc: BaseException) -> BaseException:
        try:
            raise exc
        except BaseException as caught:  # noqa: BLE001 - the test's own exceptions
            return caught

    inner = raising(OSError("refused"))
    member = raising(ValueError("member"))
    group = raising(ExceptionGroup("group", [member]))
    outer = raising(RuntimeError("outer"))
    outer.__cause__, outer.__context__ = inner, group
    inner.__context__ = outer  # a cycle in the chain itself must not loop for ever
    assert all(e.__traceback__ is not None for e in (inner, member, group, outer))
    drop_tracebacks(outer)
    assert [e.__traceback__ for e in (inner, member, group, outer)] == [None] * 4
    assert str(outer.__cause__) == "refused"  # the chain and the texts stay


@pytest.mark.parametrize("version", ["1.6", "2.0.1", "2.1"])
async def test_failed_get_log_uploads_leave_no_cycle(version: str, short_dir: Path) -> None:
    """The campaign's path over the real link: GetLog after GetLog to a closed port, each
    ending UploadFailure; the collector finds none of the attempts (the campaign's 2.1 run
    sent one such CALL every ~60 frames)."""
    async with station(version, short_dir) as (csms, _agent, link):
        location = f"http://127.0.0.1:{closed_port()}/upload"
        await _agent_settled(_agent)
        with cyclic_garbage() as found:
            for n in range(1, 5):
                res = await link.call("GetLog", get_log(location, request_id=n, retries=0))
                assert res["status"] == "Accepted"
                await wait_status(csms, "UploadFailure", count=n)
                await _agent_settled(_agent)
        assert attempt_garbage(found) == {}, found.most_common(15)


async def _agent_settled(agent: Any) -> None:
    """The upload job's task has finished and its status is delivered."""
    await asyncio.wait_for(agent.adapter.outbox.idle.wait(), 5)
    job = agent.diagnostics.current
    if job is not None and job.task is not None:
        await asyncio.wait({job.task}, timeout=5)
    await agent.station.quiet()


