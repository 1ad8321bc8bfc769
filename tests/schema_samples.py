"""Smallest schema-valid payloads, built from the OCPP JSON schemas the `ocpp` package ships.

Used to send every CSMS-initiated action of a version to the agent: only the required fields,
each with the first enum value, the shortest allowed string, the lowest allowed number.  Tests
override the few fields whose first value would have a side effect they do not want.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import ocpp

SCHEMAS = Path(ocpp.__file__).resolve().parent


def schema_dir(version: str) -> Path:
    return SCHEMAS / ("v" + version.replace(".", "")) / "schemas"


@functools.cache
def _schema(version: str, name: str) -> dict:
    return json.loads((schema_dir(version) / f"{name}.json").read_text(encoding="utf-8-sig"))


def actions(version: str) -> list[str]:
    """Every action with a Request schema (2.x naming)."""
    return sorted(p.name[: -len("Request.json")] for p in schema_dir(version).glob("*Request.json"))


def sample(version: str, action: str) -> dict:
    """The smallest valid request payload of ``action``."""
    root = _schema(version, action + "Request")
    return _value(root, root.get("definitions", {}))


def _value(node: dict, defs: dict) -> Any:
    if "$ref" in node:
        return _value(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
    if "enum" in node:
        return node["enum"][0]
    kind = node.get("type")
    if kind == "object":
        props = node.get("properties", {})
        return {name: _value(props[name], defs) for name in node.get("required", [])}
    if kind == "array":
        return [_value(node["items"], defs) for _ in range(max(1, node.get("minItems", 1)))]
    if kind == "string":
        if node.get("format") == "date-time":
            return "2030-01-01T00:00:00Z"
        return "x" * max(1, int(node.get("minLength", 1)))
    if kind == "integer":
        return int(node.get("minimum", 0))
    if kind == "number":
        return float(node.get("minimum", 0))
    if kind == "boolean":
        return False
    raise ValueError(f"no sample for schema node {node}")
