"""Memory under hostile frames (issue 18, the hostile-frames campaign's RSS finding).

A CSMS may send frames of almost 1 MiB (the link's limit). The frame log keeps the last 500
frames for ctl and the status page; kept whole, 500 such frames pin 500 MB. It keeps a large
frame shrunk instead, secrets still removed. A stopped agent must not stay referenced (the
campaign restarts agents in one process; a holder would leak one agent per Reset).
"""

from __future__ import annotations

import gc
import json
import weakref
from pathlib import Path

import pytest

from agent.app import Agent
from agent.clock import FakeClock
from agent.frames import KEEP_BYTES, REDACTED, FrameLog
from agent.testing.csms import TestCsms
from tests.conftest import agent_config, online

BIG = 600_000  # characters: a DataTransfer under the 1 MiB frame limit
BOUND = KEEP_BYTES + 1024  # a shrunk frame's JSON: the budget, one clipped string, the notes


def _size(payload: dict) -> int:
    """Characters of the payload as the frame log writes it (compact JSON)."""
    return len(json.dumps(payload, separators=(",", ":")))


@pytest.mark.parametrize("watched", [False, True], ids=["kept", "followed-and-logged"])
def test_frame_log_keeps_large_frames_shrunk(watched: bool) -> None:
    """Both ways a frame is kept (the lazy copy, and the redacted frame a follower or the
    frame logger gets) are bounded; before, 10 frames here kept 6 MB."""
    frames = FrameLog(FakeClock(), keep=10, log_frames=watched)
    queue = frames.follow() if watched else None
    for i in range(25):
        frames.record("in", "CALL", f"id{i}", "DataTransfer",
                      {"vendorId": "acme", "messageId": "m", "data": "y" * BIG})
    kept = frames.recent()
    assert [f.unique_id for f in kept] == [f"id{i}" for i in range(15, 25)]
    for frame in kept:
        assert _size(frame.payload) <= BOUND, _size(frame.payload)
        assert frame.payload["vendorId"] == "acme" and frame.payload["messageId"] == "m"
        assert frame.payload["data"].startswith("yyyy")
        assert frame.payload["data"].endswith(f"...({BIG} characters)")
    if queue is not None:
        assert _size(queue.get_nowait().payload) <= BOUND


def test_small_frames_are_kept_exactly() -> None:
    frames = FrameLog(FakeClock(), keep=5)
    payload = {"vendorId": "acme", "data": "z" * (KEEP_BYTES // 2),
               "list": [{"n": i} for i in range(200)]}
    frames.record("in", "CALL", "1", "DataTransfer", payload)
    assert frames.recent()[0].payload == payload


def test_large_frame_cut_after_redaction() -> None:
    """A large SetVariables: cut after the budget, its password still replaced, never clipped
    out of reach of the rule that names it."""
    secret = "hunter2-" * 8
    entries = [{"attributeValue": secret, "component": {"name": "SecurityCtrlr"},
                "variable": {"name": "BasicAuthPassword"}}]
    entries += [{"attributeValue": "v" * 40, "component": {"name": f"C{i}"},
                 "variable": {"name": "X"}} for i in range(3000)]
    entries.append({"attributeValue": secret, "component": {"name": "SecurityCtrlr"},
                    "variable": {"name": "BasicAuthPassword"}})
    frames = FrameLog(FakeClock(), keep=5)
    frames.record("in", "CALL", "1", "SetVariables", {"setVariableData": entries})
    [frame] = frames.recent()
    kept = frame.payload["setVariableData"]
    assert kept[0]["attributeValue"] == REDACTED
    assert kept[-1].endswith("more items)") and len(kept) < 300
    assert secret not in frame.line()
    assert _size(frame.payload) <= BOUND


def test_deeply_nested_frame_is_shrunk_without_recursing_to_the_bottom() -> None:
    deep: dict = {"leaf": "x" * 100_000}
    for _ in range(300):
        deep = {"d": deep}
    frames = FrameLog(FakeClock(), keep=2)
    frames.record("in", "CALL", "1", "DataTransfer", {"vendorId": "v", "data": deep})
    [frame] = frames.recent()
    assert _size(frame.payload) <= BOUND
    assert "nested deeper than" in frame.line()


async def test_stopped_agent_is_freed_and_kept_large_frames_bounded(
        csms: TestCsms, short_dir: Path) -> None:
    """Over the real link: large DataTransfers leave the frame log bounded, and the stopped
    agent is garbage (what the campaign's in-process Resets rely on) with nothing holding
    it."""
    agent = Agent(agent_config(csms.url, short_dir))
    await agent.start()
    link = await online(agent, csms)
    for _ in range(3):
        answer = await link.call("DataTransfer", {"vendorId": "acme", "data": "y" * BIG})
        assert answer["status"] == "UnknownVendorId"
    kept = [f for f in agent.frames.recent() if f.action == "DataTransfer"]
    assert len(kept) == 6  # each CALL and its answer
    assert all(_size(f.payload) <= BOUND for f in kept)
    await agent.stop()
    stopped = weakref.ref(agent)
    del agent, kept
    gc.collect()
    assert stopped() is None, [type(r).__name__ for r in gc.get_referrers(stopped())]

