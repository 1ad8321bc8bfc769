"""The validation kit for the ``hal:`` section of the YAML configuration.

Both halves of the HAL factory read YAML the same way: :mod:`hal.factory` (the mock HAL and
the ``driver:`` switch) and :mod:`hal.hardware_factory` (the driver declarations). They share
this kit so that every error in the section has one shape, ``<key path>: <what is wrong>``,
and so that the mock half can validate without importing the hardware half (which loads every
driver and its libraries).

A converter (:data:`Conv`) takes the raw YAML value and its key path and returns the checked
value, or raises :class:`HalConfigError` naming the path and the bad value. This module
imports nothing from the rest of ``hal``: it must stay cheap to load for the mock HAL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

__all__ = [
    "REQUIRED",
    "ConfigMap",
    "Conv",
    "HalConfigError",
    "address",
    "address_choice",
    "bad",
    "boolean",
    "choice",
    "integer",
    "nonzero",
    "number",
    "real",
    "show",
    "show_address",
    "text",
    "yaml_repr",
]


class HalConfigError(ValueError):
    """A bad ``hal:`` section; the message starts with the key path of the culprit."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


REQUIRED: Any = object()
"""The default of :meth:`ConfigMap.get` that makes a key mandatory (``None`` is a valid
default, so it cannot be the marker)."""

Conv = Callable[[Any, str], Any]
"""A converter: ``conv(raw_value, key_path)`` returns the checked value or raises
:class:`HalConfigError`."""


def yaml_repr(value: Any) -> str:
    """``value`` spelt as in the YAML file: ``null``, ``true``/``false`` (not Python's
    ``None``/``True``), strings quoted, lists and mappings in flow style."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(yaml_repr(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{yaml_repr(k)}: {yaml_repr(v)}" for k, v in value.items()) + "}"
    return repr(value)


def show(value: Any) -> str:
    """The bad value as quoted in an error: its YAML spelling (:func:`yaml_repr`), cut to 60
    characters so a pasted blob does not bury the key path."""
    text = yaml_repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def show_address(value: Any) -> str:
    """An address as quoted in an error: YAML reads the ``0x48`` the operator wrote as 72, so
    an integer is shown both ways, ``72 (0x48)``; anything else as :func:`show` does."""
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value} ({_hex(value)})"
    return show(value)


def _hex(value: int) -> str:
    return f"-0x{-value:02X}" if value < 0 else f"0x{value:02X}"


def bad(path: str, value: Any, expected: str) -> HalConfigError:
    """The standard error for a value of the wrong type or range: the key path, the value
    and what was expected, so the operator can fix the line without reading the docs."""
    return HalConfigError(path, f"{show(value)} is not allowed; expected {expected}")


class ConfigMap:
    """A YAML mapping being read: typed lookups with key paths, unknown keys rejected.

    Unknown keys are errors, not warnings: a misspelt ``feedbak:`` would otherwise silently
    leave a contactor without its feedback check. The error lists the keys allowed there.
    """

    def __init__(self, raw: Any, path: str, allowed: Iterable[str]) -> None:
        if raw is None:
            raise HalConfigError(path, "missing; expected a mapping")
        if not isinstance(raw, dict):
            raise HalConfigError(path, f"{show(raw)} is not allowed; expected a mapping")
        self.raw = raw
        self.path = path
        self.allowed = tuple(allowed)
        for key in raw:
            if key not in self.allowed:
                raise HalConfigError(f"{path}.{key}", "unknown key; allowed here: "
                                                      + ", ".join(self.allowed))

    def at(self, key: str) -> str:
        """The key path of ``key`` in this mapping, for error messages."""
        return f"{self.path}.{key}"

    def has(self, key: str) -> bool:
        """Whether ``key`` is given (an explicit ``null`` counts as not given)."""
        return self.raw.get(key) is not None

    def get(self, key: str, conv: Conv, default: Any = REQUIRED, what: str = "") -> Any:
        """``key`` checked by ``conv``; ``default`` when absent, or an error naming the key
        (and ``what`` it should be) when there is no default."""
        value = self.raw.get(key)
        if value is None:
            if default is REQUIRED:
                hint = f"; expected {what}" if what else ""
                raise HalConfigError(self.at(key), f"missing{hint}")
            return default
        return conv(value, self.at(key))


def integer(lo: int, hi: int) -> Conv:
    """An integer in ``lo..hi``. Strings are parsed with base prefixes (``"0x48"``) because
    device addresses and register numbers are usually written in hex; booleans are refused
    (YAML ``yes`` is not 1)."""
    def conv(v: Any, path: str) -> int:
        if isinstance(v, str):
            try:
                v2 = int(v, 0)
            except ValueError:
                raise bad(path, v, f"an integer {lo}..{hi}") from None
        elif isinstance(v, int) and not isinstance(v, bool):
            v2 = v
        else:
            raise bad(path, v, f"an integer {lo}..{hi}")
        if not lo <= v2 <= hi:
            raise bad(path, v, f"an integer {lo}..{hi}")
        return v2
    return conv


def address(lo: int, hi: int) -> Conv:
    """An address (I2C device, Modbus unit or register) in ``lo..hi``, read like
    :func:`integer`; errors show the value and the range in decimal and hex, so that the
    ``0x48`` in the file can be found in the message even though YAML made it 72."""
    expected = f"an address {lo}..{hi} ({_hex(lo)}..{_hex(hi)})"

    def conv(v: Any, path: str) -> int:
        try:
            return integer(lo, hi)(v, path)
        except HalConfigError:
            raise HalConfigError(path, f"{show_address(v)} is not allowed; "
                                       f"expected {expected}") from None
    return conv


def address_choice(*options: int) -> Conv:
    """One of the addresses ``options`` (e.g. the four an ADS1115 can be strapped to); the
    error shows the value and every option in decimal and hex."""
    expected = "one of " + ", ".join(show_address(o) for o in options)

    def conv(v: Any, path: str) -> int:
        v2 = v
        if isinstance(v, str):
            try:
                v2 = int(v, 0)
            except ValueError:
                v2 = None
        if isinstance(v2, bool) or not isinstance(v2, int) or v2 not in options:
            raise HalConfigError(path, f"{show_address(v)} is not allowed; expected {expected}")
        return v2
    return conv


def number(lo: float, hi: float, *, lo_open: bool = False) -> Conv:
    """A number in ``lo..hi`` as a float (``lo_open`` excludes ``lo`` itself, for values
    such as a current that must be positive); booleans are refused."""
    expected = f"a number {'>' if lo_open else '>='} {lo:g} and <= {hi:g}"

    def conv(v: Any, path: str) -> float:
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise bad(path, v, expected)
        if v > hi or v < lo or (lo_open and v == lo):
            raise bad(path, v, expected)
        return float(v)
    return conv


def nonzero(v: Any, path: str) -> float:
    """Any number but zero, as a float: a scale factor of 0 would turn every reading into 0."""
    if isinstance(v, bool) or not isinstance(v, int | float) or v == 0:
        raise bad(path, v, "a non-zero number")
    return float(v)


def real(v: Any, path: str) -> float:
    """Any number, as a float (an offset may be negative or zero); booleans are refused."""
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise bad(path, v, "a number")
    return float(v)


def boolean(v: Any, path: str) -> bool:
    """A YAML ``true`` or ``false``; anything else (``1``, ``"false"``) is refused, so a
    quoted ``"false"`` is never read as true."""
    if not isinstance(v, bool):
        raise bad(path, v, "true or false")
    return v


def choice(*options: Any) -> Conv:
    """One of ``options`` (``3`` and ``"3"`` differ); the error lists them all, so the
    operator sees the alternatives without opening docs/hardware.md."""
    def conv(v: Any, path: str) -> Any:
        if v not in options:
            raise bad(path, v, "one of " + ", ".join(str(o) for o in options))
        return v
    return conv


def text(v: Any, path: str) -> str:
    """A non-empty string (a device path, a host name, a reader name); blanks are refused."""
    if not isinstance(v, str) or not v.strip():
        raise bad(path, v, "a non-empty string")
    return v
