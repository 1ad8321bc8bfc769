"""What the versions' charging-profile JSON has in common, read and written one way.

1.6 (csChargingProfiles) and 2.0.1 (ChargingProfileType) spell a profile differently, but their
values come in the same forms: ISO timestamps, limits that arrive as floats (the RPC layer
keeps a float's shortest repr, so 7.2 must stay 7.2, not 7.19999...), limits that go out as
JSON numbers.  The per-version mappings (:mod:`agent.ocpp.v16.smart_charging`,
:mod:`agent.ocpp.v201.smart_charging`) use these helpers so that a value read by one version
and reported by the other is the same value.

Reading never raises: what is not of the expected form passes through unchanged, so that the
engine's ``validate`` can name it in its answer instead of the handler failing.
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from agent.clock import iso, parse_iso

__all__ = ["dec", "number", "stamp", "when"]


def when(value: Any) -> Any:
    """An ISO timestamp as a datetime; anything else passes through for validate to name."""
    if isinstance(value, str):
        try:
            return parse_iso(value)
        except ValueError:
            return value
    return value


def dec(value: Any) -> Any:
    """A float as the Decimal of its shortest repr; anything else passes through."""
    return Decimal(repr(value)) if isinstance(value, float) else value


def number(limit: Decimal | float | int) -> float | int:
    """A limit as the JSON number the messages carry: whole values as integers."""
    value = limit if isinstance(limit, Decimal) else Decimal(repr(limit)) \
        if isinstance(limit, float) else Decimal(limit)
    return int(value) if value == value.to_integral_value() else float(value)


def stamp(moment: datetime | None) -> str | None:
    """A datetime as an OCPP timestamp (None stays None)."""
    return iso(moment) if isinstance(moment, datetime) else None
