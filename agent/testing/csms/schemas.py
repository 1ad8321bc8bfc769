"""Checking payloads against the official OCPP JSON schemas shipped with the ``ocpp`` package.

Validators are loaded once per (version, action, direction), with Decimal floats and a strict
RFC 3339 ``date-time`` format check; a failed schema keyword is mapped to the CALLERROR code the
version's spec prescribes. Also the JSON encoding the wire frames and the validation share.
"""

from __future__ import annotations

import decimal
import functools
import json
import re
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import ocpp
from jsonschema import Draft4Validator, FormatChecker
from jsonschema.exceptions import best_match
from jsonschema.validators import validator_for

# Which error code a failed JSON-schema keyword maps to. Anything unlisted is a format error.
_KEYWORD_KIND = {
    "type": "type",
    "required": "occurrence",
    "minItems": "occurrence",
    "maxItems": "occurrence",
    "minProperties": "occurrence",
    "maxProperties": "occurrence",
    "enum": "property",
    "const": "property",
    "maxLength": "property",
    "minLength": "property",
    "minimum": "property",
    "maximum": "property",
    "exclusiveMinimum": "property",
    "exclusiveMaximum": "property",
    "multipleOf": "property",
    "pattern": "property",
    "format": "property",
}
_KIND_CODE = {
    "1.6": {
        "type": "TypeConstraintViolation",
        "occurrence": "OccurenceConstraintViolation",
        "property": "PropertyConstraintViolation",
        "format": "FormationViolation",
        "frame": "FormationViolation",
    },
    "2": {
        "type": "TypeConstraintViolation",
        "occurrence": "OccurrenceConstraintViolation",
        "property": "PropertyConstraintViolation",
        "format": "FormatViolation",
        "frame": "RpcFrameworkError",
    },
}


def _error_code(version: str, kind: str) -> str:
    return _KIND_CODE["1.6" if version == "1.6" else "2"][kind]


_SCHEMA_ROOT = Path(ocpp.__file__).resolve().parent
_ACTION_NAME = re.compile(r"^[A-Za-z0-9]{1,64}$")
_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|[+-](\d{2}):(\d{2}))$"
)
_FORMATS = FormatChecker(formats=())


@_FORMATS.checks("date-time", raises=ValueError)
def _is_date_time(value: object) -> bool:
    # The library validates without a format checker, so a station can send naive local
    # timestamps and never notice; the spec wants RFC 3339 with an offset.
    if not isinstance(value, str):
        return True
    m = _RFC3339.match(value)
    if m is None:
        raise ValueError(f"{value!r} is not an RFC 3339 date-time")
    second = min(int(m[6]), 59)  # leap second
    datetime(int(m[1]), int(m[2]), int(m[3]), int(m[4]), int(m[5]), second)
    if m[9] is not None and (int(m[9]) > 23 or int(m[10]) > 59):
        raise ValueError(f"{value!r} has an invalid UTC offset")
    return True


@functools.cache
def _validator(version: str, action: str, response: bool) -> Any:
    """The schema validator of one message, or None when the package ships no schema."""
    if not _ACTION_NAME.match(action):
        return None
    folder = _SCHEMA_ROOT / ("v" + version.replace(".", "")) / "schemas"
    if version == "1.6":
        names = [action + "Response"] if response else [action]
    else:
        # 2.1 SEND messages have a schema without the Request suffix.
        names = [action + "Response"] if response else [action + "Request", action]
    for name in names:
        path = folder / f"{name}.json"
        if path.is_file():
            # Decimal floats so that 1.6's multipleOf 0.1 is checked exactly.
            schema = json.loads(path.read_text(encoding="utf-8-sig"), parse_float=Decimal)
            cls = validator_for(schema, default=Draft4Validator)
            return cls(schema, format_checker=_FORMATS)
    return None


def _schema_problem(
    version: str, action: str, response: bool, payload: object
) -> tuple[str, str] | None:
    """(kind, description) of the first schema error of a payload, or None if it is valid."""
    validator = _validator(version, action, response)
    if validator is None:
        return "format", f"no OCPP {version} schema for {action}{'Response' if response else ''}"
    try:
        doc = json.loads(json.dumps(payload, default=_json_default), parse_float=Decimal)
    except (TypeError, ValueError) as exc:
        return "format", f"payload is not JSON-serialisable: {exc}"
    try:
        # multipleOf is ``instance % step``: the default 28 digits cannot do it for 1e30.
        with decimal.localcontext(decimal.Context(prec=4400)):
            error = best_match(validator.iter_errors(doc))
    except decimal.InvalidOperation:
        return "property", "a number too large to check against its schema"
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "<payload>"
    return _KEYWORD_KIND.get(str(error.validator), "format"), f"{where}: {error.message}"[:240]


def _json_default(value: object) -> object:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable")


def _dumps(frame: list) -> str:
    return json.dumps(frame, separators=(",", ":"), default=_json_default)
