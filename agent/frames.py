"""The OCPP message log: the last frames in both directions, secrets removed.

A technician at a charger needs to see what was said to the CSMS and what it answered. The
link reports every frame here (:meth:`FrameLog.record`); the log keeps the newest ones in
memory (bounded), writes them to the ``cp_agent.frames`` logger when frame logging is on, and
hands them to whoever follows (``cp-agent ctl frames --follow``, the status page). Passwords
never leave: the 1.6 AuthorizationKey, the 2.0.1 BasicAuthPassword and any field named like a
password are replaced before a frame is stored, logged or shown.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

from agent.clock import Clock

log = logging.getLogger("cp_agent.frames")

KEEP = 500  # frames kept for ctl / the status page
REDACTED = "***"
_SECRET_FIELDS = frozenset({"password", "basicauthpassword", "authorizationkey"})
_SECRET_KEYS = frozenset({"authorizationkey"})  # 1.6 ChangeConfiguration / GetConfiguration
_SECRET_VARIABLES = frozenset({"basicauthpassword"})  # 2.0.1 Get/SetVariables
_URL_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]*@")  # scheme://user:pw@
# The link reports "out" / "in"; the log speaks of who talks to whom.
_DIRECTIONS = {"out": "cs->csms", "in": "csms->cs"}


@dataclass(frozen=True, slots=True)
class Frame:
    at: str  # ISO 8601, the station's clock
    direction: str  # "cs->csms" or "csms->cs"
    kind: str  # CALL, CALLRESULT, CALLERROR, ...
    unique_id: str
    action: str
    payload: dict

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def line(self) -> str:
        arrow = "->" if self.direction == "cs->csms" else "<-"
        body = json.dumps(self.payload, separators=(",", ":"), ensure_ascii=False)
        return f"{self.at} {arrow} {self.kind} {self.action} {self.unique_id} {body}"


def redact(value: Any) -> Any:
    """``value`` with every secret replaced (the original is left untouched)."""
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str):
        # GetDiagnostics / GetLog / UpdateFirmware locations carry FTP credentials in the URL.
        return _URL_USERINFO.sub(rf"\1{REDACTED}@", value) if "@" in value else value
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    secret_item = (str(value.get("key", "")).lower() in _SECRET_KEYS
                   or str((value.get("variable") or {}).get("name", "")).lower()
                   in _SECRET_VARIABLES)
    for k, v in value.items():
        if k.lower() in _SECRET_FIELDS or (secret_item and k in ("value", "attributeValue")):
            out[k] = REDACTED
        else:
            out[k] = redact(v)
    return out


class FrameLog:
    def __init__(self, clock: Clock, *, log_frames: bool = False, keep: int = KEEP) -> None:
        self._clock = clock
        self.log_frames = log_frames
        self._frames: deque[Frame] = deque(maxlen=keep)
        self._followers: set[asyncio.Queue[Frame]] = set()

    def record(self, direction: str, kind: str, unique_id: str, action: str,
               payload: dict) -> None:
        """The link's frame observer: called for every frame sent or received."""
        if not (self._frames.maxlen or self.log_frames or self._followers):
            return  # nobody will look (a swarm station): no copy, no cost
        direction = _DIRECTIONS.get(direction, direction)
        frame = Frame(self._clock.now_iso(), direction, kind, unique_id, action,
                      redact(payload))
        self._frames.append(frame)
        if self.log_frames:
            log.info("%s", frame.line())
        for queue in list(self._followers):
            if queue.full():
                queue.get_nowait()  # a slow follower loses the oldest, never blocks the link
            queue.put_nowait(frame)

    def recent(self, limit: int | None = None) -> list[Frame]:
        frames = list(self._frames)
        if limit is None:
            return frames
        return frames[-limit:] if limit > 0 else []

    def __iter__(self) -> Iterator[Frame]:
        return iter(list(self._frames))

    def follow(self, size: int = 1000) -> asyncio.Queue[Frame]:
        """A queue that receives every frame from now on; give it back with :meth:`leave`."""
        queue: asyncio.Queue[Frame] = asyncio.Queue(maxsize=size)
        self._followers.add(queue)
        return queue

    def leave(self, queue: asyncio.Queue[Frame]) -> None:
        self._followers.discard(queue)
