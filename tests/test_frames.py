"""The OCPP message log: bounded, followed live, and never showing a password."""

from __future__ import annotations

import asyncio
import logging
from decimal import Decimal

from agent.clock import FakeClock
from agent.frames import REDACTED, FrameLog, redact


def test_passwords_are_redacted_in_every_version_shape():
    change = {"key": "AuthorizationKey", "value": "s3cret-s3cret-16"}
    assert redact(change) == {"key": "AuthorizationKey", "value": REDACTED}
    conf = {"configurationKey": [{"key": "authorizationkey", "readonly": False, "value": "x"},
                                 {"key": "HeartbeatInterval", "readonly": False,
                                  "value": "300"}]}
    out = redact(conf)["configurationKey"]
    assert out[0]["value"] == REDACTED and out[1]["value"] == "300"
    setvar = {"setVariableData": [{"component": {"name": "SecurityCtrlr"},
                                   "variable": {"name": "BasicAuthPassword"},
                                   "attributeValue": "0123456789abcdefXYZ"}]}
    assert redact(setvar)["setVariableData"][0]["attributeValue"] == REDACTED
    assert redact({"password": "p"}) == {"password": REDACTED}
    assert setvar["setVariableData"][0]["attributeValue"] == "0123456789abcdefXYZ", "copy"


async def test_log_is_bounded_followed_and_written_when_asked(caplog):
    frames = FrameLog(FakeClock(), keep=3, log_frames=True)
    queue = frames.follow()
    with caplog.at_level(logging.INFO, logger="cp_agent.frames"):
        for i in range(5):
            frames.record("cs->csms", "CALL", f"id{i}", "ChangeConfiguration",
                          {"key": "AuthorizationKey", "value": f"secret{i}"})
    assert [f.unique_id for f in frames.recent()] == ["id2", "id3", "id4"]
    got = [await asyncio.wait_for(queue.get(), 1) for _ in range(5)]
    assert [f.unique_id for f in got] == [f"id{i}" for i in range(5)]
    assert "secret" not in caplog.text and "ChangeConfiguration" in caplog.text
    frames.leave(queue)


def test_nothing_kept_when_nobody_looks():
    frames = FrameLog(FakeClock(), keep=0)
    frames.record("cs->csms", "CALL", "1", "Heartbeat", {})
    assert frames.recent() == []


async def test_an_unread_frame_keeps_its_payload_and_time_as_recorded_and_is_redacted_on_read():
    """Without a follower the log keeps a copy and formats it when read (an outbox replay
    records two frames per message): what it shows is still the frame as it was, secrets
    removed, stamped when it passed."""
    clock = FakeClock()
    frames = FrameLog(clock, keep=5)
    payload = {"key": "AuthorizationKey", "value": "s3cret", "list": [{"password": "p"}]}
    stamped = clock.now_iso()
    frames.record("out", "CALL", "1", "ChangeConfiguration", payload)
    payload["list"].append({"later": True})  # changed after it was sent: not what was sent
    payload["value"] = "other"
    await clock.advance(7)
    [frame] = frames.recent()
    assert frame.at == stamped and frame.direction == "cs->csms"
    assert frame.payload == {"key": "AuthorizationKey", "value": REDACTED,
                             "list": [{"password": REDACTED}]}
    assert frames.recent() == [frame] and list(frames) == [frame], "formatted once"
    frames.record("in", "CALLRESULT", "2", "X", {"n": Decimal("1.5")})  # marshal cannot copy
    assert frames.recent()[-1].payload == {"n": Decimal("1.5")}
