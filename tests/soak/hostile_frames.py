"""Hostile frames: N frames from a CSMS at a running agent, on every OCPP version.

    python -m tests.soak.hostile_frames [--frames 100000] [--versions 1.6,2.0.1,2.1]
                                        [--pool 8] [--seed N] [--quick]
                                        [--trace-every 1000] [--snapshots A,B]

The agent is the real one (``Agent`` as `cp-agent run` builds it, mock HAL, an EV plugged on
each of its two EVSEs) connected over a real websocket on 127.0.0.1 to a CSMS that answers the
station's own CALLs (``bench.lightcsms``, cards refused except ``OK1``) and, one frame at a
time, sends it: random bytes and text, binary frames, truncated and oversized JSON (over the
1 MiB the agent accepts, which must cost a reconnect and nothing else), JSON that is no
OCPP-J message, every message type id, unknown actions, CALLs with wrong types, and
schema-valid but adversarial payloads for every CALL a CSMS can send in that version.  Those
are generated from the OCPP JSON schemas by hypothesis-jsonschema (a pool of ``--pool``
payloads per action; a frame is a pool payload recombined with another of the same action and
steered towards the station's own cards and connectors, kept only if it still validates), and
their URLs point at 127.0.0.1 so that nothing leaves the machine.

Checked all along:

* zero crashes: no exception reaches the event loop, no agent task dies, no CALL is answered
  InternalError (a handler that raised), no error is logged with a traceback;
* every CALL with a usable message id gets exactly one answer: a CALLRESULT valid against the
  action's response schema, or a CALLERROR with an error code of that version; a schema-valid
  CALL of a known action gets a CALLRESULT (NotSupported / NotImplemented only where the agent
  does not implement the action);
* the contactor never closes (checked at every close) without a valid authorization: a card
  the CSMS accepted, a remote start under the configuration of that moment, or an entry the
  CSMS put in the local list / cache; on an operative, unfaulted EVSE whose EV asks;
* memory stays bounded: RSS after warm-up against RSS at the end, and the peak; every
  ``--trace-every`` frames a line ``MEM`` on stderr (RSS, C malloc in use / held free, Python
  blocks, full collections so far and the objects the cycle collector freed since the last
  line: garbage in reference cycles, which waits for a collection); at the end of a version
  the RSS that ``malloc_trim(0)`` gives back (free heap glibc kept); a stopped agent must be
  freed by a full collection (else it leaks); ``--snapshots A,B`` adds a tracemalloc diff of
  the sites that grew between frames A and B (``GROWTH``).

A Reset restarts the agent on the same state file (as `cp-agent run` execs itself).  The
script prints frames, answers by kind, crashes and peak RSS, and exits 1 when a promise broke.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import ctypes
import ctypes.util
import functools
import gc
import json
import logging
import os
import random
import shutil
import string
import sys
import tempfile
import time
import tracemalloc
import weakref
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.app import Agent
from agent.config import load_config_text
from agent.core.model import Token
from agent.testing.csms.link import _LINK_CLASSES
from agent.testing.csms.protocol import _ERROR_CODES
from agent.testing.csms.schemas import _schema_problem
from bench._common import Report, free_port, peak_rss_kb, rss_kb
from bench.lightcsms import LightCsms, _Conn
from tests.schema_samples import _value, schema_dir

VERSIONS = ("1.6", "2.0.1", "2.1")
TAGS = ("OK1", "A", "B", "GROUPED")  # OK1 is the one card the CSMS accepts
ACCEPTED = {"OK1"}
SESSION_ACTIONS = ("RemoteStartTransaction", "RequestStartTransaction", "SendLocalList",
                   "RemoteStopTransaction", "RequestStopTransaction", "ChangeConfiguration",
                   "SetVariables", "ClearCache", "ChangeAvailability", "CancelReservation")
MAX_FRAME = 1 << 20  # what the agent's link accepts
ANSWER_TIMEOUT_S = 10.0
URL_FIELDS = {"location", "remoteLocation", "ocppCsmsUrl", "url", "responderURL",
              "vpnServer", "apn"}
log = logging.getLogger("hostile")


# ---------------------------------------------------------------------- what a CSMS can send


def csms_actions(version: str) -> list[str]:
    """Every CALL a CSMS can send in ``version``: the actions with a request schema that the
    test CSMS does not answer itself (DataTransfer goes both ways)."""
    cls = _LINK_CLASSES[version]
    station = {getattr(getattr(cls, n), "_on_action", None) for n in dir(cls)} - {None}
    station.discard("DataTransfer")
    folder = schema_dir(version)
    if version == "1.6":
        names = {p.stem for p in folder.glob("*.json") if not p.stem.endswith("Response")}
    else:
        names = {p.name[:-len("Request.json")] for p in folder.glob("*Request.json")}
    return sorted(names - station)


def _load_schema(version: str, action: str) -> dict:
    name = action if version == "1.6" else action + "Request"
    schema = json.loads((schema_dir(version) / f"{name}.json").read_text(encoding="utf-8-sig"))
    for key in ("$schema", "$id", "id"):
        schema.pop(key, None)
    return schema


def payload_pool(version: str, actions: list[str], k: int, seed: int) -> dict[str, list[dict]]:
    """``k`` schema-valid payloads per action from hypothesis-jsonschema (plus the smallest
    valid one), valid against the same validator the test CSMS uses."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed
    from hypothesis_jsonschema import from_schema

    pool: dict[str, list[dict]] = {}
    for i, action in enumerate(actions):
        schema = _load_schema(version, action)
        found: list[dict] = [_value(schema, schema.get("definitions", {}))]
        if k > 0:
            strategy = from_schema(schema)

            collect = given(strategy)(_collector(found))
            collect = settings(max_examples=k, database=None, phases=[Phase.generate],
                               deadline=None, suppress_health_check=list(HealthCheck))(collect)
            hseed(seed + i)(collect)()
        pool[action] = [p for p in found if _schema_problem(version, action, False, p) is None]
    return pool


@functools.cache
def _formatless_validator(version: str, action: str) -> Any:
    from jsonschema.validators import validator_for

    schema = _load_schema(version, action)
    return validator_for(schema)(schema)  # no format checker, as the ocpp package builds it


def _valid_without_formats(version: str, action: str, payload: Any) -> bool:
    try:
        return bool(_formatless_validator(version, action).is_valid(payload or {}))
    except (OSError, ValueError):
        return False


@functools.cache
def _answer_has_status(version: str, action: str) -> bool:
    """Whether the action's response can refuse (has a ``status``)."""
    path = schema_dir(version) / f"{action}Response.json"
    try:
        schema = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError):
        return True
    return "status" in schema.get("properties", {})


def _collector(found: list[dict]) -> Any:
    def collect(payload: dict) -> None:
        found.append(payload)

    return collect


# ---------------------------------------------------------------------- frames


@dataclass
class Frame:
    kind: str
    data: str | bytes
    uid: str | None = None  # a CALL the spec requires an answer to, with this id
    action: str | None = None
    valid: bool = False  # schema-valid CALL of an action the CSMS may send
    known: bool = False  # the action exists in this version
    payload: Any = None


class FrameMaker:
    """Seeded frames of every hostile kind for one version."""

    WEIGHTS = (("valid", 45), ("wrong_type", 10), ("garbage_text", 6), ("binary", 2),
               ("truncated", 8), ("json_not_ocpp", 5), ("message_type", 8),
               ("unknown_action", 5), ("bad_id", 4), ("large_invalid", 2), ("oversized", 0.2),
               ("empty_payload", 5))

    def __init__(self, version: str, pool: dict[str, list[dict]], rng: random.Random,
                 url: str) -> None:
        self.version = version
        self.pool = pool
        self.rng = rng
        self.url = url
        self.actions = sorted(pool)
        self.n = 0
        kinds, weights = zip(*self.WEIGHTS, strict=True)
        self._kinds, self._weights = list(kinds), list(weights)

    def _uid(self) -> str:
        self.n += 1
        return f"h{self.n}"

    def next(self) -> Frame:
        kind = self.rng.choices(self._kinds, self._weights)[0]
        return getattr(self, f"_{kind}")()

    # -- payload shaping

    def _steer(self, value: Any, key: str | None = None) -> Any:
        """Towards the station's cards, connectors and loopback URLs (keeps the structure)."""
        rng = self.rng
        if isinstance(value, dict):
            return {k: self._steer(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [self._steer(v, key) for v in value]
        if key in ("idTag", "idToken", "parentIdTag") and isinstance(value, str) \
                and rng.random() < 0.8:
            return rng.choice(TAGS)
        if key in ("connectorId", "evseId", "id") and isinstance(value, int) \
                and not isinstance(value, bool) and rng.random() < 0.7:
            return rng.choice((0, 1, 1, 2, 2, 3))
        if key == "reservationId" and isinstance(value, int) and rng.random() < 0.8:
            return rng.randrange(4)  # so that CancelReservation does cancel now and then
        if key in URL_FIELDS and isinstance(value, str):
            return self.url if key == "ocppCsmsUrl" else "http://127.0.0.1:9/hostile"
        if key == "type" and value == "Inoperative" and rng.random() < 0.7:
            return "Operative"  # else one ChangeAvailability ends every session for good
        if key == "key" and self.version == "1.6" and rng.random() < 0.5:
            return rng.choice(("AuthorizeRemoteTxRequests", "AllowOfflineTxForUnknownId",
                               "LocalAuthorizeOffline", "LocalPreAuthorize",
                               "LocalAuthListEnabled", "AuthorizationCacheEnabled",
                               "MeterValueSampleInterval", "HeartbeatInterval"))
        if key == "value" and self.version == "1.6" and rng.random() < 0.5:
            return rng.choice(("true", "false", "0", "1", "60", "-1", ""))
        return value

    def _valid_payload(self, action: str) -> dict:
        rng = self.rng
        choices = self.pool[action]
        payload = copy.deepcopy(rng.choice(choices))
        if len(choices) > 1 and rng.random() < 0.5:  # recombine with another of the action
            other = rng.choice(choices)
            for key in other:
                if rng.random() < 0.5:
                    payload[key] = copy.deepcopy(other[key])
        steered = self._steer(payload)
        if _schema_problem(self.version, action, False, steered) is None:
            return steered
        return payload

    # -- the kinds

    def _valid(self) -> Frame:
        action = self.rng.choice(self.actions)
        if action == "Reset" and self.rng.random() < 0.8:  # a restart per frame is slow
            action = self.rng.choice(self.actions)
        if self.rng.random() < 0.15:  # sessions: what the contactor oracle is about
            starts = [a for a in self.actions if a in SESSION_ACTIONS]
            action = self.rng.choice(starts) if starts else action
        payload = self._valid_payload(action)
        uid = self._uid()
        valid = _schema_problem(self.version, action, False, payload) is None
        return Frame("schema-valid CALL", json.dumps([2, uid, action, payload]), uid, action,
                     valid=valid, known=True, payload=payload)

    def _wrong_type(self) -> Frame:
        rng = self.rng
        action = rng.choice(self.actions)
        payload = copy.deepcopy(rng.choice(self.pool[action]))
        bad = rng.choice([None, -1, 1.5, True, "x" * rng.choice((0, 1, 600)), [], {}, [1, "a"],
                          2**63, -2**63])
        if payload and rng.random() < 0.8:
            payload[rng.choice(sorted(payload))] = bad
        else:
            payload[rng.choice(("bogus", "idTag", "evseId", ""))] = bad
        uid = self._uid()
        valid = _schema_problem(self.version, action, False, payload) is None
        return Frame("wrong types", json.dumps([2, uid, action, payload]), uid, action,
                     valid=valid, known=True, payload=payload)

    def _empty_payload(self) -> Frame:
        action = self.rng.choice(self.actions)
        payload: Any = self.rng.choice(({}, None, [], "", 0))
        uid = self._uid()
        if not isinstance(payload, dict) and payload is not None:
            return Frame("payload not an object", json.dumps([2, uid, action, payload]), uid,
                         action, known=True, payload=payload)
        # OCPP-J (1.6 4.2.1, 2.x 4.1.5): null is an allowed notation for "no payload".
        valid = _schema_problem(self.version, action, False, payload or {}) is None
        return Frame("empty payload", json.dumps([2, uid, action, payload]), uid, action,
                     valid=valid, known=True, payload=payload)

    def _garbage_text(self) -> Frame:
        rng = self.rng
        alphabet = rng.choice((string.printable, "[]{}\",:0123456789 ", "\x00\x7f\u2603\ud7ff"))
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 200)))
        return Frame("random text", text)

    def _binary(self) -> Frame:
        data = bytes(self.rng.randrange(256) for _ in range(self.rng.randrange(1, 120)))
        return Frame("random bytes (binary frame)", data)

    def _truncated(self) -> Frame:
        action = self.rng.choice(self.actions)
        text = json.dumps([2, self._uid(), action, self.rng.choice(self.pool[action])])
        return Frame("truncated JSON", text[:self.rng.randrange(0, max(1, len(text) - 1))])

    def _json_not_ocpp(self) -> Frame:
        rng = self.rng
        doc = rng.choice(({}, [], [2], [2, "x"], 42, "text", None, True, {"a": [1, 2]},
                          [[2, "a", "Reset", {}]], [2, "a", "Reset", {}, "extra"]))
        return Frame("JSON, not an OCPP-J message", json.dumps(doc))

    def _message_type(self) -> Frame:
        rng = self.rng
        mtype = rng.choice((-1, 0, 1, 3, 4, 5, 6, 7, 8, 99, 2.0, "2", True))
        uid = self._uid()
        body = rng.choice(([uid, {"status": "Accepted"}], [uid, "GenericError", "", {}],
                           [uid, "Heartbeat", {}], [uid]))
        return Frame(f"message type {mtype!r}", json.dumps([mtype, *body]))

    def _unknown_action(self) -> Frame:
        rng = self.rng
        action = rng.choice(("Bogus", "reset", "RESET", "", "x" * 100, "Heartbeat2",
                             "StartTransaction" if self.version != "1.6" else "RequestStart",
                             "".join(rng.choice(string.ascii_letters) for _ in range(12))))
        uid = self._uid()
        return Frame("unknown action", json.dumps([2, uid, action, {}]), uid, action)

    def _bad_id(self) -> Frame:
        rng = self.rng
        uid: Any = rng.choice((1, None, "", "i" * 37, "i" * 200, ["a"], {"a": 1}, 2.5))
        action = rng.choice(self.actions)
        frame = Frame("bad message id", json.dumps([2, uid, action, self.pool[action][0]]))
        if uid == "":  # a string is a usable id, even an empty one
            frame.uid, frame.action, frame.known, frame.valid = "", action, True, True
        return frame

    def _large_invalid(self) -> Frame:
        uid = self._uid()
        action = "DataTransfer"
        payload = {"vendorId": "x", "data": "y" * self.rng.randrange(10_000, 400_000)}
        valid = _schema_problem(self.version, action, False, payload) is None
        return Frame("large CALL under the size limit", json.dumps([2, uid, action, payload]),
                     uid, action, valid=valid, known=True, payload=payload)

    def _oversized(self) -> Frame:
        payload = {"vendorId": "x", "data": "z" * (MAX_FRAME + self.rng.randrange(1, 4096))}
        return Frame("oversized JSON (over 1 MiB)", json.dumps([2, self._uid(), "DataTransfer",
                                                                payload]))


# ---------------------------------------------------------------------- the CSMS


class FuzzCsms(LightCsms):
    """LightCsms that refuses every card but OK1 and hands the station's answers to us."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.replies: dict[str, list[list]] = {}
        self.waiters: dict[str, asyncio.Future] = {}
        self.unmatched: Counter[str] = Counter()
        self.connected = asyncio.Event()
        self.accepted_tokens: set[str] = set()

    async def _serve(self, ws: Any) -> None:
        self.connected.set()
        try:
            await super()._serve(ws)
        finally:
            if not self.stations:
                self.connected.clear()

    async def _frame(self, conn: _Conn, raw: str | bytes) -> None:
        try:
            msg = json.loads(raw)
        except ValueError:
            self.malformed += 1
            return
        if isinstance(msg, list) and len(msg) >= 2 and msg[0] in (3, 4, 5):
            uid = msg[1] if isinstance(msg[1], str) else repr(msg[1])
            waiter = self.waiters.get(uid)
            if waiter is None:  # the "-1" of an unreadable id, or after the judgement
                self.unmatched[f"{msg[0]}"] += 1  # counted, not kept: 1 in 4 frames is one
                return
            self.replies.setdefault(uid, []).append(msg)
            if not waiter.done():
                waiter.set_result(msg)
            return
        await super()._frame(conn, raw)

    def _verdict(self, token: str) -> str:
        if token in ACCEPTED:
            self.accepted_tokens.add(token)
            return "Accepted"
        return "Invalid"

    def _answer(self, conn: _Conn, action: str, p: dict) -> dict:
        answer = super()._answer(conn, action, p)
        if conn.version == "1.6" and "idTagInfo" in answer:
            answer["idTagInfo"] = {"status": self._verdict(p.get("idTag", ""))}
        if "idTokenInfo" in answer:
            token = (p.get("idToken") or {}).get("idToken", "")
            answer["idTokenInfo"] = {"status": self._verdict(token)}
        return answer

    async def send(self, data: str | bytes) -> None:
        conn = next(iter(self.stations.values()), None)  # the connection of now
        if conn is None:
            raise ConnectionError("no station connected")
        await conn.ws.send(data)


# ---------------------------------------------------------------------- the safety oracle


class Oracle:
    """Who may charge, under the configuration of the moment, and a check at every close."""

    def __init__(self, csms: FuzzCsms) -> None:
        self.csms = csms
        self.legit: set[str] = set()
        self.violations: list[str] = []
        self.closes = 0
        self.agent: Agent | None = None

    def attach(self, agent: Agent) -> None:
        self.agent = agent
        agent.station.traces.append(self._trace)

    def note_remote_start(self, version: str, payload: Any) -> None:
        """A remote start the CSMS sent: legitimate for its token where the rules say so."""
        agent = self.agent
        if agent is None or not isinstance(payload, dict):
            return
        if version == "1.6":
            tag, kind = payload.get("idTag"), "ISO14443"
        else:
            token = payload.get("idToken")
            tag = token.get("idToken") if isinstance(token, dict) else None
            kind = token.get("type") if isinstance(token, dict) else None
        if not isinstance(tag, str):
            return
        keys = agent.station.settings
        if not keys["AuthorizeRemoteTxRequests"] or kind == "NoAuthorization":
            self.legit.add(tag)
            return
        known = agent.station.authorization.lookup(Token(tag))
        if known is not None and not known.accepted:
            return
        if known is not None and (keys["LocalAuthorizeOffline"] or keys["LocalPreAuthorize"]):
            self.legit.add(tag)
        elif keys["AllowOfflineTxForUnknownId"]:
            self.legit.add(tag)

    def _trace(self, evse_id: int, what: str, detail: dict) -> None:
        if what == "contactor" and detail.get("closed"):
            self.closes += 1
            self.check(f"contactor closed on EVSE {evse_id}")

    def check(self, when: str) -> None:
        agent = self.agent
        if agent is None:
            return
        for evse in agent.station.evses.values():
            if not evse.hw.contactor.commanded_closed:
                continue
            s = evse.session
            token = s.token.id if s is not None and s.token is not None else None
            ok = (s is not None and s.authorized and token is not None
                  and (token in self.legit or token in self.csms.accepted_tokens
                       or _vouched(agent, token))
                  and evse.operative and evse.blocking_fault is None
                  and evse.pilot.wants_energy)
            if not ok and len(self.violations) < 20:
                self.violations.append(
                    f"{when}: EVSE {evse.id} closed for token {token!r} (authorized "
                    f"{getattr(s, 'authorized', None)}, operative {evse.operative}, fault "
                    f"{evse.blocking_fault}, legit {sorted(self.legit)})")


def _vouched(agent: Agent, token: str) -> bool:
    """The CSMS itself put the card in the local list or the cache as valid."""
    found = agent.station.authorization.lookup(Token(token))
    return found is not None and found.accepted


# ---------------------------------------------------------------------- memory


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


@functools.cache
def _libc() -> Any:
    """glibc, for mallinfo2 / malloc_trim; None elsewhere (musl, macOS): figures left out."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (OSError, AttributeError):
        return None
    return libc


class CollectorTally:
    """What Python's cycle collector did while installed: the full (generation 2)
    collections and the objects it freed, objects in reference cycles that reference counting
    could not free.  Memory that climbs between full collections and drops at one is such
    garbage; the 2.1 growth of the 20,000-frame run was failed transfers' cycles, each holding
    an SSL context in C memory that no Python object count shows (agent/cycles.py)."""

    def __init__(self) -> None:
        self.full = 0
        self.freed = 0  # since the last take()
        self.freed_total = 0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase != "stop":
            return
        if info["generation"] == 2:
            self.full += 1
        self.freed += info["collected"]

    def install(self) -> CollectorTally:
        gc.callbacks.append(self)
        return self

    def remove(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)

    def take(self) -> dict[str, int]:
        """Full collections so far, objects freed by the collector since the last take."""
        freed, self.freed = self.freed, 0
        self.freed_total += freed
        return {"gc_full": self.full, "gc_freed": freed}


def memory_sample(frame: int, collector: CollectorTally | None = None) -> dict[str, Any]:
    """Where the process's memory is, cheaply enough to take every thousand frames: RSS, what
    C malloc has handed out (Python objects over 512 bytes, every large str / bytes buffer)
    and what it holds free without giving it back, Python's allocated blocks (objects; a leak
    of Python objects makes it climb), under tracemalloc the traced Python memory, and with a
    ``collector`` what the cycle collector found since the previous sample."""
    sample: dict[str, Any] = {"frame": frame, "rss_mb": round(rss_kb() / 1024, 1),
                              "py_blocks": sys.getallocatedblocks()}
    if collector is not None:
        sample.update(collector.take())
    libc = _libc()
    if libc is not None:
        info = libc.mallinfo2()
        mib = 1 << 20
        sample["malloc_used_mb"] = round((info.uordblks + info.hblkhd) / mib, 1)
        sample["malloc_free_mb"] = round(info.fordblks / mib, 1)
    if tracemalloc.is_tracing():
        sample["traced_mb"] = round(tracemalloc.get_traced_memory()[0] / (1 << 20), 1)
    return sample


def malloc_trim() -> bool:
    """glibc's malloc_trim(0): give the free heap memory back to the system (False: no glibc)."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


# Allocation sites that are the campaign's own (generator, oracle, test CSMS) or the
# measurement's, told apart from the agent's in a tracemalloc diff.
_HARNESS_FILES = ("/tests/", "/bench/", "/hypothesis", "tracemalloc.py")


def snapshot_diff(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot,
                  top: int = 15) -> list[str]:
    """The allocation sites (by traceback) that grew most between two snapshots, each marked
    whether its traceback passes through the harness or is the agent's (and its libraries')."""
    keep = [tracemalloc.Filter(False, tracemalloc.__file__),
            tracemalloc.Filter(False, "<frozen importlib._bootstrap*>")]
    stats = after.filter_traces(keep).compare_to(before.filter_traces(keep), "traceback")
    lines = []
    for stat in stats[:top]:
        frames = [f"{Path(f.filename).name}:{f.lineno}" for f in stat.traceback]
        who = ("harness" if any(h in f.filename for f in stat.traceback for h in _HARNESS_FILES)
               else "agent")
        lines.append(f"{stat.size_diff / 1024:+9.0f} KiB {stat.count_diff:+7d} blocks "
                     f"[{who}] {' < '.join(reversed(frames))}")
    return lines


# ---------------------------------------------------------------------- one version's run


@dataclass
class Tally:
    version: str
    frames: int = 0
    by_kind: Counter = field(default_factory=Counter)
    answers: Counter = field(default_factory=Counter)
    crashes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    resets: int = 0
    reconnects: int = 0
    rss_warm_kb: int = 0
    rss_half_kb: int = 0
    rss_end_kb: int = 0
    contactor_closes: int = 0
    unsafe: list[str] = field(default_factory=list)
    memory: list[dict] = field(default_factory=list)  # memory_sample() every --trace-every
    agents_alive: int = 0  # stopped agents still referenced after a full collection
    rss_trimmed_kb: int = 0  # RSS at the end after malloc_trim(0): what the allocator held
    growth_sites: list[str] = field(default_factory=list)  # tracemalloc diff, --snapshots
    gc_freed: int = 0  # objects only the cycle collector freed (cycles), the whole run
    gc_full: int = 0  # full collections, the campaign's own after each Reset included
    recent: list[str] = field(default_factory=list)  # the last frames, for a diagnosis

    def problem(self, text: str) -> None:
        if len(self.problems) < 200:
            self.problems.append(f"{self.version}: {text}")


class _ErrorLog(logging.Handler):
    """Errors logged with a traceback anywhere in the agent: a handler that blew up."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and len(self.records) < 50:
            self.records.append(f"{record.name}: {record.getMessage()[:200]}")


def _config(url: str, state: Path, version: str) -> Any:
    doc = {
        "station": {"id": "HOSTILE", "vendor": "cp-agent", "model": "hostile"},
        "ocpp": {"url": url, "versions": [version], "call_timeout_s": 2,
                 "reconnect": {"min_backoff_s": 0.05, "max_backoff_s": 0.3},
                 "defaults": {"AuthorizeRemoteTxRequests": True,
                              "AllowOfflineTxForUnknownId": False,
                              "MeterValueSampleInterval": 0}},
        "storage": {"path": str(state / "state.sqlite3"), "meter_persist_s": 5},
        "control": {"socket": str(state / "ctl.sock")},
        "evses": [{"id": 1}, {"id": 2}],
        "hal": {"driver": "mock", "ev_max_current_a": 16},
        "log": {"level": "error"},
    }
    return load_config_text(json.dumps(doc), "hostile")


async def run_version(version: str, frames: int, pool_k: int, seed: int, quick: bool,
                      trace_every: int = 1000,
                      snapshots: tuple[int, int] | None = None) -> Tally:
    tally = Tally(version)
    rng = random.Random(f"{seed}-{version}")
    actions = csms_actions(version)
    t0 = time.perf_counter()
    if quick:  # the generator on a few actions; the smallest valid payload for the rest
        chosen = set(rng.sample(actions, 3))
        pool = payload_pool(version, sorted(chosen), 1, seed)
        pool.update(payload_pool(version, sorted(set(actions) - chosen), 0, seed))
    else:
        pool = payload_pool(version, actions, pool_k, seed)
    tally.by_kind["(pool generation s)"] = round(time.perf_counter() - t0, 1)
    port = free_port()
    csms = FuzzCsms(port=port)
    url = await csms.start()
    maker = FrameMaker(version, pool, rng, url)
    oracle = Oracle(csms)
    state = Path(tempfile.mkdtemp(prefix="cpa-hostile-", dir="/tmp"))
    loop = asyncio.get_running_loop()
    loop_errors: list[str] = []
    loop.set_exception_handler(lambda _loop, ctx: loop_errors.append(
        f"{ctx.get('message')}: {ctx.get('exception')!r}"[:300]))
    errors = _ErrorLog()
    logging.getLogger().addHandler(errors)  # the only handler: nothing printed, all counted
    logging.getLogger().setLevel(logging.ERROR)
    agent: Agent | None = None
    if snapshots is not None and not tracemalloc.is_tracing():
        tracemalloc.start(12)  # after the pool: hypothesis's generation is not traced
    warm_at = max(1, frames // 10)
    snapshot_before: tracemalloc.Snapshot | None = None
    collector = CollectorTally().install()  # after the pool: hypothesis's cycles not counted
    try:
        agent = await _start_agent(version, url, state, csms, oracle)
        for i in range(frames):
            if agent._stop.is_set():  # a Reset: the agent restarts itself, same state file
                tally.resets += 1
                await agent.stop()
                stopped = weakref.ref(agent)
                agent = await _start_agent(version, url, state, csms, oracle)
                # `cp-agent run` execs itself: the stopped agent's memory leaves with its
                # process.  Here it is cyclic garbage that only a full collection frees, and
                # a dozen of them (their frame logs, caches) made the RSS figure (the 1.6
                # growth of the 15,000-frame run).  Anything still holding it is a leak.
                gc.collect()
                if stopped() is not None:
                    tally.agents_alive += 1
            frame = maker.next()
            tally.frames += 1
            tally.recent.append(f"{frame.kind} {str(frame.data)[:80]!r}")
            del tally.recent[:-6]
            tally.by_kind[frame.kind] += 1
            await _one_frame(version, agent, csms, oracle, frame, tally)
            dead = [t for t in agent._tasks if t.done() and not t.cancelled()
                    and t.exception() is not None]
            if dead:
                tally.crashes.append(f"agent task {dead[0].get_name()} died: "
                                     f"{dead[0].exception()!r}")
                break
            if i + 1 == warm_at:
                tally.rss_warm_kb = rss_kb()
            if i + 1 == frames // 2:
                tally.rss_half_kb = rss_kb()
            if trace_every and (i + 1) % trace_every == 0:
                _trace(tally, memory_sample(i + 1, collector))
            if snapshots is not None and i + 1 in snapshots:
                snap = tracemalloc.take_snapshot()
                if snapshot_before is None:
                    snapshot_before = snap
                else:
                    tally.growth_sites = snapshot_diff(snapshot_before, snap)
                    for line in tally.growth_sites:
                        print(f"GROWTH {version} {snapshots[0]}->{snapshots[1]} {line}",
                              file=sys.stderr, flush=True)
                    snapshot_before = None
        tally.rss_end_kb = rss_kb()
        if malloc_trim():  # the agent still running: what of the RSS is free heap kept
            tally.rss_trimmed_kb = rss_kb()
            _trace(tally, {**memory_sample(tally.frames, collector), "after": "malloc_trim(0)"})
    finally:
        if agent is not None:
            await agent.stop()
        await csms.stop()
        logging.getLogger().removeHandler(errors)
        loop.set_exception_handler(None)
        shutil.rmtree(state, ignore_errors=True)
        if snapshots is not None:
            tracemalloc.stop()
        collector.take()
        collector.remove()
        tally.gc_freed, tally.gc_full = collector.freed_total, collector.full
    tally.crashes += [f"event loop: {e}" for e in loop_errors]
    tally.crashes += [f"logged traceback: {e}" for e in errors.records]
    tally.unsafe = oracle.violations
    tally.contactor_closes = oracle.closes
    tally.answers.update({f"unmatched reply type {k}": v for k, v in csms.unmatched.items()})
    return tally


def _trace(tally: Tally, sample: dict[str, Any]) -> None:
    tally.memory.append(sample)
    print(f"MEM {tally.version} " + " ".join(f"{k}={v}" for k, v in sample.items()),
          file=sys.stderr, flush=True)


async def _start_agent(version: str, url: str, state: Path, csms: FuzzCsms,
                       oracle: Oracle) -> Agent:
    agent = Agent(_config(url, state, version), control=False)
    oracle.attach(agent)
    await agent.start()
    await asyncio.wait_for(agent.adapters[version].accepted.wait(), 30)
    await asyncio.wait_for(csms.connected.wait(), 30)
    for evse in agent.station.evses:
        agent.hal.plug(evse)
    await agent.station.settled()
    return agent


async def _one_frame(version: str, agent: Agent, csms: FuzzCsms, oracle: Oracle,
                     frame: Frame, tally: Tally) -> None:
    if frame.valid and frame.action in ("RemoteStartTransaction", "RequestStartTransaction"):
        oracle.note_remote_start(version, frame.payload)
    waiter = None
    if frame.uid is not None:
        waiter = loop_future()
        csms.waiters[frame.uid] = waiter
    connects = csms.connections_total
    try:
        await csms.send(frame.data)
    except Exception as exc:  # noqa: BLE001 - judged: only a reset may have closed the link
        if not agent._stop.is_set():
            tally.problem(f"could not send {frame.kind}: {exc!r}")
        csms.waiters.pop(frame.uid or "", None)
        return
    if frame.kind.startswith("oversized"):
        tally.reconnects += await _await_reconnect(agent, csms, connects)
        tally.answers["(connection dropped, as it must)"] += 1
        return
    if waiter is not None:
        assert frame.uid is not None
        try:
            reply = await asyncio.wait_for(waiter, ANSWER_TIMEOUT_S)
        except TimeoutError:
            if agent._stop.is_set():
                tally.answers["(none: the agent was resetting)"] += 1
            else:
                tally.answers["UNANSWERED"] += 1
                adapter = agent.adapters[version]
                tally.problem(f"{frame.kind} {frame.action} {frame.uid} not answered in "
                              f"{ANSWER_TIMEOUT_S:.0f} s: {str(frame.data)[:200]} (link "
                              f"{agent.link.state}, registration {adapter.registration}, "
                              f"after {' | '.join(tally.recent)})")
            reply = None
        finally:
            csms.waiters.pop(frame.uid, None)
        if reply is not None:
            _judge(version, frame, reply, csms, tally)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(agent.station.settled(), 5)
    for _ in range(5):  # tasks a handler spawned (a remote start's authorization)
        await asyncio.sleep(0)
    oracle.check(f"after {frame.kind} {frame.action or ''}")
    if not csms.stations and not agent._stop.is_set():
        tally.reconnects += await _await_reconnect(agent, csms, connects)


def loop_future() -> asyncio.Future:
    return asyncio.get_running_loop().create_future()


async def _await_reconnect(agent: Agent, csms: FuzzCsms, connects: int) -> int:
    try:
        async with asyncio.timeout(30):
            while csms.connections_total == connects or not csms.stations:
                if agent._stop.is_set():
                    return 0
                await asyncio.sleep(0.01)  # polling the CSMS's counter, not a time guess
    except TimeoutError:
        raise RuntimeError("the agent did not reconnect within 30 s") from None
    await asyncio.wait_for(agent.station.settled(), 10)
    return 1


def _judge(version: str, frame: Frame, reply: list, csms: FuzzCsms, tally: Tally) -> None:
    uid = frame.uid
    assert uid is not None
    extra = len(csms.replies.get(uid, [])) - 1
    if extra > 0:
        tally.problem(f"{frame.action} {uid}: {extra + 1} answers")
    csms.replies.pop(uid, None)
    kind = reply[0]
    if kind == 3:
        tally.answers["CALLRESULT"] += 1
        if len(reply) != 3 or not isinstance(reply[2], dict):
            tally.problem(f"{frame.action} {uid}: malformed CALLRESULT {reply}")
        elif frame.known and frame.action:
            problem = _schema_problem(version, frame.action, True, reply[2])
            if problem is not None:
                tally.problem(f"{frame.action} answer breaks its schema: {problem[1]} "
                              f"(request {str(frame.data)[:200]})")
        if frame.action in SESSION_ACTIONS and isinstance(reply[2], dict):
            tally.by_kind[f"{frame.action} -> {reply[2].get('status')}"] += 1
        if frame.known and not frame.valid and frame.action \
                and _valid_without_formats(version, frame.action, frame.payload):
            # Only a date-time is malformed: the agent validates as the ocpp package does,
            # without a format checker, and its handler refuses the value (status Rejected,
            # 2.x with a reason code). A refusal, not a crash; noted, not failed.
            status = reply[2].get("status") if isinstance(reply[2], dict) else None
            if not _answer_has_status(version, frame.action):
                # 1.6 UpdateFirmware.conf is empty, GetDiagnostics.conf has only a fileName:
                # no way to refuse but a CALLERROR, which the date-time does not earn (the
                # handler uses no date / no time window instead).
                status = "(no status in its schema)"
            tally.answers[f"CALLRESULT {status} to a CALL with a malformed date-time"] += 1
            if status not in ("Rejected", "Invalid", "Failed", "NotSupported",
                              "(no status in its schema)"):
                tally.problem(f"{frame.action} with a malformed date-time answered {status}: "
                              f"{str(frame.data)[:300]}")
        elif frame.known and not frame.valid:
            tally.answers["CALLRESULT to a schema-invalid CALL"] += 1
            tally.problem(f"{frame.action}: schema-invalid CALL answered CALLRESULT: "
                          f"{str(frame.data)[:300]}")
        if not frame.known:
            tally.problem(f"unknown action {frame.action!r} answered CALLRESULT")
        return
    if kind == 4 and len(reply) == 5:
        code = reply[2]
        tally.answers[f"CALLERROR {code}"] += 1
        if code not in _ERROR_CODES[version]:
            tally.problem(f"{frame.action}: CALLERROR with {code!r}, no {version} error code")
        if code == "InternalError":
            tally.crashes.append(f"{frame.action} answered InternalError {reply[3]!r}: "
                                 f"{str(frame.data)[:300]}")
        elif frame.valid and code not in ("NotSupported", "NotImplemented"):
            tally.problem(f"schema-valid {frame.action} answered {code} {reply[3]!r}: "
                          f"{str(frame.data)[:300]}")
        return
    tally.answers[f"message type {kind}"] += 1
    tally.problem(f"{frame.action} {uid}: answered with {reply}")


# ---------------------------------------------------------------------- the script


async def run(frames: int, versions: tuple[str, ...], pool_k: int, seed: int,
              quick: bool, trace_every: int = 1000,
              snapshots: tuple[int, int] | None = None) -> int:
    report = Report("hostile_frames", quick)
    per = {v: frames // len(versions) + (1 if i < frames % len(versions) else 0)
           for i, v in enumerate(versions)}
    tallies = []
    t0 = time.perf_counter()
    for v in versions:
        tallies.append(await run_version(v, per[v], pool_k, seed, quick, trace_every,
                                         snapshots))
    elapsed = time.perf_counter() - t0
    answers: Counter = Counter()
    for t in tallies:
        answers.update(t.answers)
    crashes = [f"{t.version}: {c}" for t in tallies for c in t.crashes]
    unsafe = [f"{t.version}: {u}" for t in tallies for u in t.unsafe]
    problems = [p for t in tallies for p in t.problems]
    report.add("frames sent", sum(t.frames for t in tallies), "",
               note=", ".join(f"{t.version}: {t.frames}" for t in tallies))
    for name, count in sorted(answers.items()):
        report.add(f"answers: {name}", count, "")
    report.add("crashes", len(crashes), "",
               note="loop exceptions, dead tasks, InternalError, logged tracebacks")
    report.add("CALLs not answered per spec", len(problems), "")
    report.add("contactor closes", sum(t.contactor_closes for t in tallies), "",
               note=f"{len(unsafe)} without a valid authorization")
    report.add("Resets (agent restarted on its state file)", sum(t.resets for t in tallies), "")
    report.add("stopped agents not freed", sum(t.agents_alive for t in tallies), "",
               note="after a Reset and a full collection: a leak if not 0")
    report.add("reconnects (oversized frames)", sum(t.reconnects for t in tallies), "")
    report.add("RSS after the first 10 % of frames", max(t.rss_warm_kb for t in tallies) / 1024,
               "MB")
    report.add("RSS at the end", max(t.rss_end_kb for t in tallies) / 1024, "MB")
    report.add("RSS growth over the second half of the frames", max(
        (t.rss_end_kb - t.rss_half_kb) for t in tallies) / 1024, "MB",
        note="validators and caches warm up in the first half; a leak keeps growing; "
        + ", ".join(f"{t.version} {(t.rss_end_kb - t.rss_half_kb) / 1024:.1f}"
                    for t in tallies))
    if all(t.rss_trimmed_kb for t in tallies):
        report.add("RSS given back by malloc_trim(0) at the end", max(
            (t.rss_end_kb - t.rss_trimmed_kb) for t in tallies) / 1024, "MB",
            note="free heap glibc kept: " + ", ".join(
                f"{t.version} {(t.rss_end_kb - t.rss_trimmed_kb) / 1024:.1f}"
                for t in tallies))
    report.add("objects freed only by the cycle collector, per 1,000 frames", max(
        1000 * t.gc_freed / max(1, t.frames) for t in tallies), "",
        note="reference cycles; " + ", ".join(
            f"{t.version} {1000 * t.gc_freed / max(1, t.frames):.0f} ({t.gc_full} full "
            "collections)" for t in tallies))
    report.add("peak RSS (whole campaign process)", peak_rss_kb() / 1024, "MB")
    report.add("campaign wall time", elapsed, "s")
    report.details.update(seed=seed, pool=pool_k, versions=list(versions),
                          crashes=crashes[:30], unsafe=unsafe[:20], problems=problems[:60],
                          per_version={t.version: {"frames": t.frames,
                                                   "kinds": dict(t.by_kind),
                                                   "answers": dict(t.answers),
                                                   "resets": t.resets,
                                                   "rss_warm_kb": t.rss_warm_kb,
                                                   "rss_half_kb": t.rss_half_kb,
                                                   "rss_end_kb": t.rss_end_kb,
                                                   "rss_trimmed_kb": t.rss_trimmed_kb,
                                                   "agents_alive": t.agents_alive,
                                                   "memory": t.memory,
                                                   "growth_sites": t.growth_sites,
                                                   "gc_freed": t.gc_freed,
                                                   "gc_full": t.gc_full}
                                       for t in tallies})
    report.emit()
    for line in crashes[:30] + unsafe[:20] + problems[:60]:
        print("PROBLEM " + line, file=sys.stderr)
    return 1 if crashes or unsafe or problems else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.soak.hostile_frames",
                                description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=100_000, help="in all, split per version")
    p.add_argument("--versions", default=",".join(VERSIONS))
    p.add_argument("--pool", type=int, default=8,
                   help="hypothesis-jsonschema payloads per action (slow: ~0.3 s each)")
    p.add_argument("--seed", type=int, default=int(os.environ.get("CP_HOSTILE_SEED", "18")))
    p.add_argument("--quick", action="store_true", help="100 frames per version, tiny pool")
    p.add_argument("--trace-every", type=int, default=1000, metavar="N",
                   help="print a memory sample (RSS, malloc, Python blocks) every N frames "
                        "of a version (0: none)")
    p.add_argument("--snapshots", metavar="A,B",
                   help="tracemalloc snapshots at frames A and B of each version; prints the "
                        "allocation sites that grew most in between (slows the run ~2x)")
    ns = p.parse_args(argv)
    versions = tuple(v.strip() for v in ns.versions.split(",") if v.strip())
    unknown = [v for v in versions if v not in VERSIONS]
    if unknown:
        p.error(f"unknown version(s) {unknown}; choose from {', '.join(VERSIONS)}")
    frames = 100 * len(versions) if ns.quick else ns.frames
    snapshots = None
    if ns.snapshots:
        try:
            a, b = (int(x) for x in ns.snapshots.split(","))
        except ValueError:
            p.error(f"--snapshots wants two frame counts A,B, not {ns.snapshots!r}")
        if not 0 < a < b:
            p.error(f"--snapshots: want 0 < A < B, got {a},{b}")
        snapshots = (a, b)
    return asyncio.run(run(frames, versions, ns.pool, ns.seed, ns.quick, ns.trace_every,
                           snapshots))


if __name__ == "__main__":
    raise SystemExit(main())
