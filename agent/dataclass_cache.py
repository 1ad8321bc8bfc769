"""Compiled dataclass methods kept beside the bytecode, so that a start is not a compile.

CPython 3.11 writes every generated dataclass method (``__init__``, ``__repr__``,
``__eq__``, a frozen class's ``__setattr__`` / ``__delattr__``, ...) as source text and
compiles it, one at a time, each time the class is defined, i.e. at every start of the
process: the ~400 methods of a 1.6 station's dataclasses cost ~200 M instructions (45-90 ms
of CPU on the 2-vCPU benchmark machine, several times that on a Raspberry Pi's cores), about a
sixth of its whole start-up (docs/performance.md). Bytecode caching (``.pyc``) does not cover
them because they are compiled from strings at run time.

This module keeps their code objects as the bytecode is kept: one small file per module of
the agent (``agent.*``, ``hal.*``), beside that module's ``.pyc`` (``__pycache__``, or under
``sys.pycache_prefix``), read when that module defines its first dataclass, so a start reads
the methods of the modules it imports and nothing else. An entry is keyed by the exact source
text the dataclasses module produced, so a cached entry is the very code that text compiles
to: the class's methods behave identically whether they came from the cache or not. The
interpreter's own rules apply: each file carries the interpreter's magic number (another
Python ignores it), nothing is written when ``sys.dont_write_bytecode`` is set or the
directory is read-only (a hardened installation: then every start compiles, as without this
module, unless the installer warmed the cache: :func:`warm`), and an unreadable or foreign
file is ignored and replaced.

What a module's file held is let go as soon as that module's import is over (checked at the
next compile of any module, and by :func:`save` / :func:`release`): a class's methods hold
their own (inner) code, and the rest of an entry, the text it is keyed by and the code that
builds the method, is garbage once the class exists.  Before, every module's entries lived
until the save after start-up, all at once at the top of the start-up heap, and those of a
module imported after that save (a service built on first use) until the process exited.
Only a module that compiled something its file did not hold keeps what it used, until the
save writes its file.

It patches one private function of the standard library, ``dataclasses._create_fn``, and only
where it is the function it knows (CPython 3.11's; 3.12 names its locals differently and 3.13
batches the methods of a class into one compile of its own). This is the one module that
touches it.
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

_SUFFIX = ".dataclasses"  # beside the module's .pyc: config.cpython-311.pyc.dataclasses
_PACKAGES = ("agent.", "hal.")  # our own code only: never written into another library's tree

# The signature and locals of CPython 3.11's dataclasses._create_fn, whose text _create_fn
# below rebuilds: a different function (a patched or newer interpreter) is left alone.
_KNOWN_VARNAMES = ("name", "args", "body", "globals", "locals", "return_type",
                   "return_annotation", "txt", "local_vars", "ns")

_loaded: dict[str, dict[str, CodeType]] = {}  # module -> what its file held (popped as used)
_used: dict[str, dict[str, CodeType]] = {}  # module -> every entry it used in this process
_dirty: set[str] = set()  # modules that compiled something their file did not hold
_reread: set[str] = set()  # modules whose entries were let go once and read again later
_installed = False
_original: Any = None  # dataclasses' own _create_fn, once replaced
stats = {"hits": 0, "compiled": 0}  # since install(): what the cache saved, what it did not


def cache_file(module: str) -> Path | None:
    """The cache file of ``module`` (None: not ours, not from a source file, no cache tag)."""
    if not module.startswith(_PACKAGES) or sys.implementation.cache_tag is None:
        return None
    source = getattr(sys.modules.get(module), "__file__", None)
    if not source or not source.endswith(".py"):
        return None
    return Path(importlib.util.cache_from_source(source) + _SUFFIX)


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


def _write(path: Path, codes: dict[str, CodeType]) -> bool:
    from agent.atomic_file import replace_file

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Readable by all, as the bytecode beside it: written by root at install time, read
        # by the service's own user.
        replace_file(path, importlib.util.MAGIC_NUMBER + marshal.dumps(codes), mode=0o644,
                     prefix=".dc-")
    except (OSError, ValueError):
        return False
    return True


def save() -> int:
    """Write the file of every module that compiled methods its file did not hold (with the
    entries that module used: stale ones drop out), then let go of all entries. Returns how
    many files were written; a file that cannot be written (not allowed, read-only, full) is
    never an error: the next start compiles that module's methods again."""
    written = 0
    if not sys.dont_write_bytecode:
        for module in sorted(_dirty):
            path = cache_file(module)
            if path is None:
                continue
            codes = _used.get(module, {})
            if module in _reread:  # what it used before its entries were let go is kept too
                codes = {**_loaded.get(module, {}), **codes}
            if _write(path, codes):
                written += 1
    release()
    return written


def release() -> None:
    """Let go of every entry held, written or not (a module that compiled something is
    compiled again at the next start)."""
    _dirty.clear()
    _used.clear()
    _loaded.clear()
    _reread.clear()


def held() -> int:
    """How many entries are held now (loaded from files or used): what :func:`release` and
    the end of each module's import let go."""
    return sum(map(len, _loaded.values())) + sum(map(len, _used.values()))


def _importing(module: str) -> bool:
    spec = getattr(sys.modules.get(module), "__spec__", None)
    return bool(getattr(spec, "_initializing", False))


def _let_go_of_imported(current: str) -> None:
    """Drop the entries of every module other than ``current`` whose import is over and that
    compiled nothing new (those keep theirs for :func:`save`)."""
    for module in [m for m in _used if m != current and m not in _dirty]:
        if not _importing(module):
            del _used[module]
            if _loaded.pop(module, None) is not None:
                _reread.add(module)


def _compile(module: str, txt: str) -> CodeType:
    used = _used.get(module)
    if used is None:
        _let_go_of_imported(module)
        path = cache_file(module)
        _loaded[module] = _load(path) if path is not None else {}
        used = _used[module] = {}
    code = used.get(txt)  # the same text twice in one module (same fields, same method)
    if code is None:
        code = _loaded[module].pop(txt, None)
    if code is not None:
        stats["hits"] += 1
    else:
        stats["compiled"] += 1
        # dont_inherit: this module's ``from __future__ import annotations`` must not leak
        # into the generated methods (exec of the text in dataclasses.py inherits nothing).
        code = compile(txt, "<string>", "exec", dont_inherit=True)
        _dirty.add(module)
    used[txt] = code
    return code


def _create_fn(name: str, args: list[str], body: list[str], *, globals: Any = None,
               locals: dict[str, Any] | None = None,
               return_type: Any = dataclasses.MISSING) -> Any:
    # The text below is exactly what CPython 3.11's dataclasses._create_fn builds; only the
    # compile step is looked up first.
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
    module = globals.get("__name__", "") if isinstance(globals, dict) else ""
    ns: dict[str, Any] = {}
    if module.startswith(_PACKAGES):
        exec(_compile(module, txt), globals, ns)  # noqa: S102 - the dataclasses module's text
    else:
        exec(txt, globals, ns)  # noqa: S102 - as dataclasses does for everyone else's classes
    return ns["__create_fn__"](**locals)


def install() -> bool:
    """Route the dataclasses module's compiles through the cache (once per process). False
    where this interpreter's dataclasses is not the one this module knows."""
    global _installed, _original
    if _installed:
        return True
    if sys.implementation.name != "cpython" or sys.version_info[:2] != (3, 11):
        return False
    fn = getattr(dataclasses, "_create_fn", None)
    if getattr(getattr(fn, "__code__", None), "co_varnames", None) != _KNOWN_VARNAMES:
        return False
    if os.environ.get("CP_AGENT_NO_DATACLASS_CACHE"):
        return False
    _original = fn
    dataclasses._create_fn = _create_fn  # type: ignore[attr-defined]
    atexit.register(save)
    _installed = True
    return True


def warm(packages: tuple[str, ...] = ("agent", "hal")) -> int:
    """Import every module of ``packages`` and write their caches: what the installer runs
    once (systemd/install.sh), since the hardened service cannot write beside its code.
    Returns how many files were written. A module that cannot be imported here (a driver
    whose library is missing) is skipped: its classes are compiled at run time, as before."""
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
    return save()


__all__ = ["cache_file", "held", "install", "release", "save", "stats", "warm"]
