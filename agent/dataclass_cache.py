"""Compiled dataclass methods kept beside the bytecode, so that a start is not a compile.

CPython 3.11 writes every generated dataclass method (``__init__``, ``__repr__``,
``__eq__``, a frozen class's ``__setattr__`` / ``__delattr__``, ...) as source text and
compile it, one at a time, each time the class is defined, i.e. at every start of the
process: the ~400 methods of the agent's dataclasses cost 45-90 ms of CPU per start on the
2-vCPU benchmark machine, about a seventh of a 1.6 station's whole start-up and several times
that on a Raspberry Pi's cores (docs/performance.md). Bytecode caching (``.pyc``) does not
cover them because they are compiled from strings at run time.

This module keeps their code objects in one ``marshal`` file in the ``agent`` package's
bytecode cache directory (``__pycache__``, or under ``sys.pycache_prefix``), keyed by the
exact source text the dataclasses module produced, so a cached entry is the very code that
text compiles to: the class's methods behave identically whether they came from the cache
or not. It follows the interpreter's own bytecode rules: the file carries the interpreter's
magic number (another Python ignores it), nothing is written when ``sys.dont_write_bytecode``
is set or the directory is read-only (a hardened installation: then every start compiles,
as without this module), and an unreadable or foreign file is ignored and replaced.

It patches one private function of the standard library, ``dataclasses._create_fn``, and only
where it is the function it knows (CPython 3.11's; 3.12 names its locals differently and 3.13
batches the methods of a class into one compile of its own). This is the one module that touches it.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import importlib.util
import marshal
import os
import sys
from pathlib import Path
from types import CodeType
from typing import Any

_FILE = "dataclass-methods.{tag}.bin"
_MAX_ENTRIES = 5000  # across the agent's processes (run, ctl, tests); the oldest go first

# The signature and locals of CPython 3.11's dataclasses._create_fn, whose text _create_fn
# below rebuilds: a different function (a patched or newer interpreter) is left alone.
_KNOWN_VARNAMES = ("name", "args", "body", "globals", "locals", "return_type",
                   "return_annotation", "txt", "local_vars", "ns")

_codes: dict[str, CodeType] = {}
_dirty = False
_path: Path | None = None
_installed = False
_original: Any = None  # dataclasses' own _create_fn, once replaced
stats = {"hits": 0, "compiled": 0}  # since install(): what the cache saved, what it did not


def cache_path() -> Path | None:
    """Where the cache lives: beside the ``agent`` package's own bytecode."""
    tag = sys.implementation.cache_tag
    if tag is None:
        return None
    pyc = importlib.util.cache_from_source(str(Path(__file__).with_name("__init__.py")))
    return Path(pyc).parent / _FILE.format(tag=tag)


def _load(path: Path) -> dict[str, CodeType]:
    try:
        blob = path.read_bytes()
    except OSError:
        return {}
    magic = importlib.util.MAGIC_NUMBER
    if not blob.startswith(magic):
        return {}
    try:
        codes = marshal.loads(blob[len(magic):])
    except (EOFError, ValueError, TypeError):
        return {}
    if not isinstance(codes, dict):
        return {}
    return {k: v for k, v in codes.items() if isinstance(k, str) and isinstance(v, CodeType)}


def save() -> bool:
    """Write the cache if methods were compiled that it did not hold. Atomic (a reader sees
    the old file or the new one); False when not written (nothing new, not allowed, read-only
    or full disk: never an error, the next start compiles again)."""
    global _dirty
    if not _dirty or _path is None or sys.dont_write_bytecode:
        return False
    codes = _codes
    if len(codes) > _MAX_ENTRIES:  # dicts keep insertion order: drop the oldest
        codes = dict(list(codes.items())[-_MAX_ENTRIES:])
    import tempfile  # here: it pulls in random and shutil, which a start does not need

    try:
        _path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".dc-", dir=_path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(importlib.util.MAGIC_NUMBER + marshal.dumps(codes))
            # Readable by all, as the bytecode beside it: written by root at install time,
            # read by the service's own user (mkstemp creates it 0600).
            os.chmod(tmp, 0o644)
            os.replace(tmp, _path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    except (OSError, ValueError):
        return False
    _dirty = False
    return True


def _compile(txt: str) -> CodeType:
    global _dirty
    code = _codes.get(txt)
    if code is not None:
        stats["hits"] += 1
    else:
        stats["compiled"] += 1
        # dont_inherit: this module's ``from __future__ import annotations`` must not leak
        # into the generated methods (exec of the text in dataclasses.py inherits nothing).
        code = compile(txt, "<string>", "exec", dont_inherit=True)
        _codes[txt] = code
        _dirty = True
    return code


def _create_fn(name: str, args: list[str], body: list[str], *, globals: Any = None,
               locals: dict[str, Any] | None = None,
               return_type: Any = dataclasses.MISSING) -> Any:
    # The text below is exactly what CPython 3.11's dataclasses._create_fn builds;
    # only the compile step is looked up first.
    if locals is None:
        locals = {}
    return_annotation = ""
    if return_type is not dataclasses.MISSING:
        locals["_return_type"] = return_type
        return_annotation = "->_return_type"
    arg_text = ",".join(args)
    body_text = "\n".join(f"  {b}" for b in body)
    txt = f" def {name}({arg_text}){return_annotation}:\n{body_text}"
    local_vars = ", ".join(locals.keys())
    txt = f"def __create_fn__({local_vars}):\n{txt}\n return {name}"
    ns: dict[str, Any] = {}
    exec(_compile(txt), globals, ns)  # noqa: S102 - the dataclasses module's own text
    return ns["__create_fn__"](**locals)


def install() -> bool:
    """Route the dataclasses module's compiles through the cache (once per process). False
    where this interpreter's dataclasses is not the one this module knows."""
    global _installed, _path, _codes, _original
    if _installed:
        return True
    if sys.implementation.name != "cpython" or sys.version_info[:2] != (3, 11):
        return False
    fn = getattr(dataclasses, "_create_fn", None)
    if getattr(getattr(fn, "__code__", None), "co_varnames", None) != _KNOWN_VARNAMES:
        return False
    if os.environ.get("CP_AGENT_NO_DATACLASS_CACHE"):
        return False
    _path = cache_path()
    if _path is not None:
        _codes = _load(_path)
    _original = fn
    dataclasses._create_fn = _create_fn  # type: ignore[attr-defined]
    atexit.register(save)
    _installed = True
    return True


def warm(packages: tuple[str, ...] = ("agent", "hal")) -> int:
    """Import every module of ``packages`` and write the cache: what the installer runs once
    (systemd/install.sh), since the hardened service cannot write beside its code. Returns
    how many methods the cache holds. A module that cannot be imported here (a driver whose
    library is missing) is skipped: its classes are compiled at run time, as before."""
    import importlib
    import pkgutil

    for name in packages:
        with contextlib.suppress(Exception):
            pkg = importlib.import_module(name)
            for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{name}."):
                if info.name.endswith("__main__"):
                    continue
                with contextlib.suppress(Exception):
                    importlib.import_module(info.name)
    save()
    return len(_codes)


__all__ = ["cache_path", "install", "save", "warm"]

