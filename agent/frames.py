"""The OCPP message log: the last frames in both directions, secrets removed.

A technician at a charger needs to see what was said to the CSMS and what it answered. The
link reports every frame here (:meth:`FrameLog.record`); the log keeps the newest ones in
memory (bounded), writes them to the ``cp_agent.frames`` logger when frame logging is on, and
hands them to whoever follows (``cp-agent ctl frames --follow``, the status page). Passwords
never leave: the 1.6 AuthorizationKey, the 2.0.1 BasicAuthPassword and any field named like a
password are replaced before a frame is stored, logged or shown.

Bounded in bytes as well as in frames: a frame whose payload is over ``KEEP_BYTES`` (a CSMS
may send a DataTransfer of almost 1 MiB, 500 of them would pin 500 MB) is kept, logged and
shown shrunk: long strings clipped, long lists and objects cut, each cut saying how much was
left out.
"""

from __future__ import annotations

import asyncio
import json
import logging
import marshal
import re
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

from agent.clock import Clock, iso

log = logging.getLogger("cp_agent.frames")

KEEP = 500  # frames kept for ctl / the status page
KEEP_BYTES = 16 * 1024  # of one frame's payload (about its JSON size); a bigger one is shrunk
_STR_KEEP = 256  # characters kept of each long string of a shrunk frame
_DEPTH_KEEP = 32  # nesting kept of a shrunk frame
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


@dataclass(frozen=True, slots=True)
class _Kept:
    """A frame nobody has looked at yet: its time and an exact copy of its payload (marshal,
    a C-speed deep copy of JSON data), so that redaction and the timestamp's formatting are
    paid once a frame is read, not for every frame of an outbox replay."""

    wall: float
    direction: str
    kind: str
    unique_id: str
    action: str
    payload: bytes

    def frame(self) -> Frame:
        at = iso(datetime.fromtimestamp(self.wall, UTC))
        return Frame(at, self.direction, self.kind, self.unique_id, self.action,
                     redact(marshal.loads(self.payload)))


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


def _oversized(value: Any, limit: int = KEEP_BYTES) -> bool:
    """Whether ``value`` is over about ``limit`` characters of JSON (stops counting there)."""
    size, stack = 0, [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            size += len(v) + 2
        elif isinstance(v, dict):
            size += 2 + 4 * len(v) + sum(len(str(k)) for k in v)
            stack.extend(v.values())
        elif isinstance(v, list):
            size += 2 + len(v)
            stack.extend(v)
        else:
            size += 8
        if size > limit:
            return True
    return False


def shrink(value: Any, budget: int = KEEP_BYTES) -> Any:
    """A copy of a large payload small enough to keep: strings over ``_STR_KEEP`` characters
    clipped, and once about ``budget`` characters are spent the rest of every list / object
    replaced by a note of what was left out.  Redact before: a cut may separate a secret from
    the key that names it."""
    left = budget

    def walk(v: Any, depth: int) -> Any:
        nonlocal left
        if isinstance(v, str):
            if len(v) > _STR_KEEP:
                v = f"{v[:_STR_KEEP]}...({len(v)} characters)"
            left -= len(v) + 2
            return v
        if isinstance(v, dict | list) and depth >= _DEPTH_KEEP:
            return f"...(nested deeper than {_DEPTH_KEEP})"
        if isinstance(v, list):
            items = []
            for i, item in enumerate(v):
                if left <= 0:
                    items.append(f"...({len(v) - i} more items)")
                    break
                left -= 1
                items.append(walk(item, depth + 1))
            return items
        if isinstance(v, dict):
            out: dict[str, Any] = {}
            for i, (k, item) in enumerate(v.items()):
                if left <= 0:
                    out["..."] = f"({len(v) - i} more keys)"
                    break
                left -= len(str(k)) + 4
                out[k] = walk(item, depth + 1)
            return out
        left -= 8
        return v

    return walk(value, 0)


class FrameLog:
    def __init__(self, clock: Clock, *, log_frames: bool = False, keep: int = KEEP) -> None:
        self._clock = clock
        self.log_frames = log_frames
        self._frames: deque[Frame | _Kept] = deque(maxlen=keep)
        self._followers: set[asyncio.Queue[Frame]] = set()

    def record(self, direction: str, kind: str, unique_id: str, action: str,
               payload: dict) -> None:
        """The link's frame observer: called for every frame sent or received."""
        if not (self._frames.maxlen or self.log_frames or self._followers):
            return  # nobody will look (a swarm station): no copy, no cost
        direction = _DIRECTIONS.get(direction, direction)
        if not (self.log_frames or self._followers):
            try:
                kept = marshal.dumps(payload)
            except ValueError:  # not plain JSON data: copied the slow way, below
                pass
            else:
                if len(kept) > KEEP_BYTES:  # rare: redaction paid now, on the whole frame
                    kept = marshal.dumps(shrink(redact(payload)))
                self._frames.append(_Kept(self._clock.wall(), direction, kind, unique_id,
                                          action, kept))
                return
        payload = redact(payload)
        if _oversized(payload):
            payload = shrink(payload)
        frame = Frame(self._clock.now_iso(), direction, kind, unique_id, action, payload)
        self._frames.append(frame)
        if self.log_frames:
            log.info("%s", frame.line())
        for queue in list(self._followers):
            if queue.full():
                queue.get_nowait()  # a slow follower loses the oldest, never blocks the link
            queue.put_nowait(frame)

    def _all(self) -> list[Frame]:
        """Every kept frame, the ones not read before made into frames (once)."""
        frames = [f.frame() if isinstance(f, _Kept) else f for f in self._frames]
        self._frames = deque(frames, maxlen=self._frames.maxlen)
        return frames

    def recent(self, limit: int | None = None) -> list[Frame]:
        frames = self._all()
        if limit is None:
            return frames
        return frames[-limit:] if limit > 0 else []

    def __iter__(self) -> Iterator[Frame]:
        return iter(self._all())

    def follow(self, size: int = 1000) -> asyncio.Queue[Frame]:
        """A queue that receives every frame from now on; give it back with :meth:`leave`."""
        queue: asyncio.Queue[Frame] = asyncio.Queue(maxsize=size)
        self._followers.add(queue)
        return queue

    def leave(self, queue: asyncio.Queue[Frame]) -> None:
        self._followers.discard(queue)
