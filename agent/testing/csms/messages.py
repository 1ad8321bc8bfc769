"""The records a test sees of the test CSMS's traffic, and the exceptions and sentinels it uses.

``Message`` is one frame on the CSMS's timeline; ``CS_TO_CSMS`` / ``CSMS_TO_CS`` are its
directions. ``NO_REPLY`` and ``CsmsCallError`` are what overrides return or raise to shape the
CSMS's answers; ``SchemaError`` is raised when a test's own CALL does not match the schema.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

CS_TO_CSMS = "cs->csms"
CSMS_TO_CS = "csms->cs"


class _NoReply:
    """Type of the NO_REPLY sentinel."""

    def __repr__(self) -> str:
        return "NO_REPLY"


#: Return this from an override to leave a CALL unanswered (timeout tests).
NO_REPLY: Any = _NoReply()


class CsmsCallError(Exception):
    """The station answered a CALL with CALLERROR.

    Overrides may also raise it to make the CSMS answer a station's CALL with that CALLERROR.
    """

    def __init__(
        self, code: str, description: str = "", details: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(f"{code}: {description}" if description else code)
        self.code = code
        self.description = description
        self.details = dict(details or {})


class SchemaError(ValueError):
    """A CALL the test wanted to send does not match the schema (use send_raw for fuzzing)."""


@dataclass(frozen=True)
class Message:
    """One frame on the wire, as the timeline and the assertions see it.

    ``kind`` is CALL, CALLRESULT, CALLERROR, SEND, CALLRESULTERROR (2.1) or RAW (a frame the test
    sent verbatim). ``action`` of a CALLRESULT/CALLERROR is the action of the CALL it answers
    ("" when unknown). A CALLERROR's payload is ``{"errorCode", "errorDescription",
    "errorDetails"}``.
    """

    t: float
    station_id: str
    direction: str
    kind: str
    action: str
    payload: dict
    unique_id: str


def _short(payload: object, limit: int = 160) -> str:
    text = json.dumps(payload, separators=(",", ":"), default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."
