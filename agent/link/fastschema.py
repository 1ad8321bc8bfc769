"""A fast "certainly valid" check for OCPP JSON schemas, in front of jsonschema.

jsonschema walks a schema keyword by keyword, building a new validator object for every
subschema it descends into; a 1.6 MeterValues with a dozen sampled values costs ~0.7 ms on a
2-core x86, and the agent checks every message it sends and receives.  That made schema
validation the largest item in an outbox replay (see docs/performance.md).

The OCPP schemas use a small subset of JSON Schema draft 4 (type, properties, required,
additionalProperties, enum, maxLength, minimum, maximum, items, minItems, maxItems and local
``$ref``), so each schema is compiled here into nested closures.  The compiled check is
*one-sided*: True means the instance is valid under Draft4Validator semantics (no format
checker, as the ``ocpp`` package builds it); False means "not sure", and the caller asks
jsonschema, which produces the error it always did.  A schema using anything outside the
subset compiles to None and always goes to jsonschema.  So the answers of the agent can only
get faster, never different.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

Check = Callable[[Any], bool]

# Keywords that never affect validity with Draft4Validator and no format checker.
_ANNOTATIONS = frozenset({"description", "javaType", "$schema", "$id", "id", "title",
                          "comment", "$comment", "default", "definitions", "format"})
_HANDLED = frozenset({"type", "$ref", "properties", "required", "additionalProperties",
                      "enum", "maxLength", "minLength", "minimum", "maximum", "items",
                      "additionalItems", "minItems", "maxItems"})


_OBJECT_KEYS = frozenset({"properties", "required", "additionalProperties"})
_ARRAY_KEYS = frozenset({"items", "additionalItems", "minItems", "maxItems"})
_STRING_KEYS = frozenset({"maxLength", "minLength"})
_NUMBER_KEYS = frozenset({"minimum", "maximum"})
# Per declared type, the handled keywords that only apply to instances of other types.
_MOOT = {
    "string": _OBJECT_KEYS | _ARRAY_KEYS | _NUMBER_KEYS,
    "object": _ARRAY_KEYS | _STRING_KEYS | _NUMBER_KEYS,
    "array": _OBJECT_KEYS | _STRING_KEYS | _NUMBER_KEYS,
    "integer": _OBJECT_KEYS | _ARRAY_KEYS | _STRING_KEYS,
    "number": _OBJECT_KEYS | _ARRAY_KEYS | _STRING_KEYS,
    "boolean": _OBJECT_KEYS | _ARRAY_KEYS | _STRING_KEYS | _NUMBER_KEYS,
    "null": _OBJECT_KEYS | _ARRAY_KEYS | _STRING_KEYS | _NUMBER_KEYS,
}


class _Unsupported(Exception):
    """The schema uses something this compiler does not reproduce exactly."""


def _is_number(x: Any) -> bool:
    return (type(x) is int or type(x) is float) and x == x  # NaN is never sent


def _type_check(name: str) -> Check:
    # Draft 4 types as jsonschema's draft4 type checker defines them; anything the checks
    # below are unsure of (a Decimal "number", a float "integer") answers False.
    if name == "string":
        return lambda x: isinstance(x, str)
    if name == "object":
        return lambda x: isinstance(x, dict)
    if name == "array":
        return lambda x: isinstance(x, list)
    if name == "integer":
        return lambda x: type(x) is int
    if name == "number":
        return _is_number
    if name == "boolean":
        return lambda x: x is True or x is False
    if name == "null":
        return lambda x: x is None
    raise _Unsupported(f"type {name!r}")


def _ignored_number(x: Any) -> bool:
    """True when jsonschema would skip a numeric keyword for ``x`` (not a number at all)."""
    return isinstance(x, bool) or not isinstance(x, numbers.Number)


class _Compiler:
    def __init__(self, root: dict) -> None:
        self.root = root
        self.refs: dict[str, Check] = {}

    def ref(self, ref: Any) -> Check:
        if not isinstance(ref, str) or not ref.startswith("#/definitions/"):
            raise _Unsupported(f"$ref {ref!r}")
        if ref in self.refs:
            return self.refs[ref]
        name = ref[len("#/definitions/"):]
        target = (self.root.get("definitions") or {}).get(name)
        if not isinstance(target, dict) or "/" in name or "~" in name:
            raise _Unsupported(f"$ref {ref!r}")
        slot: list[Check] = []
        self.refs[ref] = lambda x: slot[0](x)  # recursion-safe: filled in below
        slot.append(self.node(target))
        return self.refs[ref]

    def node(self, s: Any) -> Check:
        if not isinstance(s, dict):
            raise _Unsupported("non-object schema")
        if "$ref" in s:
            # Draft 4: a $ref replaces the whole schema object; siblings are ignored.
            return self.ref(s["$ref"])
        unknown = set(s) - _HANDLED - _ANNOTATIONS
        if unknown:
            raise _Unsupported(", ".join(sorted(unknown)))
        checks: list[Check] = []
        t = s.get("type")
        fused = self._fused(s, t)
        if fused is not None:
            return fused
        if t is not None:
            if isinstance(t, str):
                checks.append(_type_check(t))
            elif isinstance(t, list) and t and all(isinstance(n, str) for n in t):
                alternatives = tuple(_type_check(n) for n in t)
                checks.append(lambda x: any(c(x) for c in alternatives))
            else:
                raise _Unsupported(f"type {t!r}")
        if "enum" in s:
            values = s["enum"]
            if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
                raise _Unsupported("non-string enum")
            allowed = frozenset(values)
            checks.append(lambda x: isinstance(x, str) and x in allowed)
        for key, op in (("maxLength", "max"), ("minLength", "min")):
            if key in s:
                n = s[key]
                if type(n) is not int:
                    raise _Unsupported(key)
                if op == "max":
                    checks.append(lambda x, n=n: not isinstance(x, str) or len(x) <= n)
                else:
                    checks.append(lambda x, n=n: not isinstance(x, str) or len(x) >= n)
        for key in ("minimum", "maximum"):
            if key in s:
                bound = s[key]
                if not _is_number(bound):
                    raise _Unsupported(key)
                if key == "minimum":
                    checks.append(lambda x, b=bound: _ignored_number(x)
                                  or (_is_number(x) and x >= b))
                else:
                    checks.append(lambda x, b=bound: _ignored_number(x)
                                  or (_is_number(x) and x <= b))
        if {"properties", "required", "additionalProperties"} & set(s):
            checks.append(self._object(s))
        if {"items", "minItems", "maxItems", "additionalItems"} & set(s):
            checks.append(self._array(s))
        if not checks:
            return lambda x: True
        if len(checks) == 1:
            return checks[0]
        chain = tuple(checks)

        def all_of(x: Any) -> bool:
            for c in chain:
                if not c(x):
                    return False
            return True

        return all_of

    def _fused(self, s: dict, t: Any) -> Check | None:
        """One closure for the shapes nearly every OCPP field has (a string, a string enum, a
        bounded string, an integer, an object, an array), instead of a chain of one check per
        keyword: the same answers for half the calls per validated message
        (docs/performance.md).  A keyword that cannot apply to an instance of the declared
        type (the schemas give string enums ``additionalProperties: false``) is moot once the
        type check holds, so it is left out."""
        if not isinstance(t, str) or t not in _MOOT:
            return None
        rest = set(s) - _ANNOTATIONS - {"type"} - _MOOT[t]
        if t == "string":
            if not rest:
                return _type_check(t)
            if rest == {"enum"}:
                values = s["enum"]
                if isinstance(values, list) and all(isinstance(v, str) for v in values):
                    allowed = frozenset(values)
                    return lambda x: isinstance(x, str) and x in allowed
            if rest == {"maxLength"} and type(s["maxLength"]) is int:
                n = s["maxLength"]
                return lambda x: isinstance(x, str) and len(x) <= n
            return None
        if t == "object" and rest <= _OBJECT_KEYS:
            return self._object(s, typed=True)
        if t == "array" and rest <= _ARRAY_KEYS:
            return self._array(s, typed=True)
        if not rest and t != "object" and t != "array":
            return _type_check(t)
        return None

    def _object(self, s: dict, typed: bool = False) -> Check:
        props_raw = s.get("properties", {})
        required = s.get("required", [])
        extra = s.get("additionalProperties", True)
        if not isinstance(props_raw, dict) or not isinstance(required, list) or not all(
                isinstance(r, str) for r in required):
            raise _Unsupported("properties/required")
        props = tuple((name, self.node(sub)) for name, sub in props_raw.items())
        names = frozenset(props_raw)
        need = tuple(required)
        if extra is True:
            extra_check: Check | None = None
            closed = False
        elif extra is False:
            extra_check, closed = None, True
        elif isinstance(extra, dict):
            extra_check, closed = self.node(extra), False
        else:
            raise _Unsupported("additionalProperties")

        def check(x: Any) -> bool:
            if not isinstance(x, dict):
                return not typed  # object keywords do not apply; "type" decides
            for name in need:
                if name not in x:
                    return False
            for name, sub in props:
                if name in x and not sub(x[name]):
                    return False
            if closed or extra_check is not None:
                for key in x:
                    if key not in names:
                        if closed or not isinstance(key, str):
                            return False
                        if not extra_check(x[key]):  # type: ignore[misc]
                            return False
            return True

        return check

    def _array(self, s: dict, typed: bool = False) -> Check:
        items = s.get("items")
        if items is None:
            item_check: Check | None = None
        elif isinstance(items, dict):
            item_check = self.node(items)  # additionalItems only matters for tuple "items"
        else:
            raise _Unsupported("tuple items")
        lo = s.get("minItems")
        hi = s.get("maxItems")
        for bound in (lo, hi):
            if bound is not None and type(bound) is not int:
                raise _Unsupported("minItems/maxItems")

        def check(x: Any) -> bool:
            if not isinstance(x, list):
                return not typed  # array keywords do not apply; "type" decides
            if lo is not None and len(x) < lo:
                return False
            if hi is not None and len(x) > hi:
                return False
            if item_check is not None:
                for v in x:
                    if not item_check(v):
                        return False
            return True

        return check


def compile_schema(schema: Any) -> Check | None:
    """A one-sided validity check for ``schema``, or None if it uses unsupported keywords."""
    if not isinstance(schema, dict):
        return None
    try:
        return _Compiler(schema).node(schema)
    except (_Unsupported, RecursionError):
        return None


__all__ = ["compile_schema"]
