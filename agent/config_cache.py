"""The parsed configuration document kept for the next start, so that a start needs no YAML.

Importing PyYAML costs ~90 M instructions and ~0.8 MB at every start (docs/performance.md),
most of it compiling the regular expressions of its pure-Python reader and resolver at
import time, a tenth of a 1.6 station's whole start-up; the libyaml parse of the file itself
is ~2 M.  A station starts on the same file almost every time, so the document YAML made of it
is kept here and used again when the file's bytes are exactly those it was parsed from.

What makes it safe to use instead of parsing:

* The key is a SHA-256 over the file's exact bytes *and* everything else the parse depends
  on: the interpreter's version, every file of the installed ``yaml`` package (name, size,
  modification time: an upgrade rewrites them) and the agent's own loader
  (``agent/config.py``, which chooses libyaml or the pure-Python parser).  Any difference is a
  miss, and a miss parses the file as before.
* Only a successful parse is kept, and only a document made of what YAML's core schema gives
  a configuration (mappings, sequences, strings, integers, floats, booleans, null).  Anything
  else (a timestamp, ``!!binary``, ``!!set``) is never kept, so every start with such a file
  parses it.  ``marshal`` gives those types back exactly (floats bit for bit, ``True`` not
  ``1``, the order of a mapping's keys).
* Everything after the parse (validation, defaults, relative paths) runs on the kept document
  as on a parsed one: only the YAML step is skipped.

Where: the configuration says where the state directory is, so the cache cannot be found
through it before the file is parsed.  It lives in the directory the service manager gives
the service for its state, ``$STATE_DIRECTORY`` (systemd's ``StateDirectory=cp-agent``: 0700,
owned by the service's user, the only place the hardened unit may write), as
``config.parsed``, written 0600 (the document holds the configuration's secrets, as the
state file holds the CSMS's).  Without ``$STATE_DIRECTORY`` nothing is kept and every start
parses.  A cache file that is not the service's own (another owner, writable by others), or
torn, or of another format, is ignored and replaced.  ``CP_AGENT_NO_CONFIG_CACHE=1`` turns it
off.
"""

from __future__ import annotations

import hashlib
import importlib.util
import marshal
import os
import sys
from pathlib import Path
from typing import Any

FILE_NAME = "config.parsed"
_MAGIC = b"cp-agent parsed configuration 1\n"
_KEY_LEN = 32  # sha256
_PLAIN = (str, int, float, bool, type(None))  # bool is an int; listed for the reader


def directory() -> Path | None:
    """Where the cache is kept, or None (no state directory from the service manager, or the
    cache is switched off)."""
    if os.environ.get("CP_AGENT_NO_CONFIG_CACHE"):
        return None
    state = os.environ.get("STATE_DIRECTORY", "")
    first = state.split(":", 1)[0]  # systemd lists one path per StateDirectory= entry
    return Path(first) if first and os.path.isabs(first) else None


def _parser_identity() -> bytes:
    """What a parse depends on besides the file: the interpreter, PyYAML's files, our loader."""
    parts = [sys.version, sys.implementation.cache_tag or ""]
    spec = importlib.util.find_spec("yaml")  # finds the package without importing it
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        with os.scandir(location) as entries:
            for entry in sorted(entries, key=lambda e: e.name):
                if entry.is_file():
                    st = entry.stat()
                    parts.append(f"{entry.path}:{st.st_size}:{st.st_mtime_ns}")
    loader = Path(__file__).with_name("config.py")
    st = loader.stat()
    parts.append(f"{loader}:{st.st_size}:{st.st_mtime_ns}")
    return "\n".join(parts).encode()


def key(data: bytes) -> bytes:
    """The cache key of a configuration file's bytes (with the parser's identity)."""
    h = hashlib.sha256(_parser_identity())
    h.update(b"\0")
    h.update(data)
    return h.digest()


def _plain(value: Any) -> bool:
    """True when ``value`` holds nothing but what marshal gives back exactly and YAML's core
    schema makes: dict, list, str, int, float, bool, None."""
    stack = [value]
    while stack:
        v = stack.pop()
        if type(v) is dict:
            for k, item in v.items():
                if type(k) not in _PLAIN:
                    return False
                stack.append(item)
        elif type(v) is list:
            stack.extend(v)
        elif type(v) not in _PLAIN:
            return False
    return True


_MISS = object()


def lookup(data: bytes, where: Path | None = None) -> Any:
    """The document kept for exactly these bytes, or :data:`MISS`."""
    where = directory() if where is None else where
    if where is None:
        return _MISS
    path = where / FILE_NAME
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            if st.st_uid != os.getuid() or st.st_mode & 0o022:
                return _MISS  # not the service's own: someone else could have written it
            blob = f.read()
    except OSError:
        return _MISS
    head = len(_MAGIC)
    if not blob.startswith(_MAGIC) or blob[head:head + _KEY_LEN] != key(data):
        return _MISS
    try:
        doc = marshal.loads(blob[head + _KEY_LEN:])
    except (EOFError, ValueError, TypeError):
        return _MISS
    return doc if _plain(doc) else _MISS


MISS = _MISS


def store(data: bytes, doc: Any, where: Path | None = None) -> bool:
    """Keep ``doc`` (the parse of ``data``) for the next start; False when it is not kept
    (no place, a document with other types, a write that failed: never an error)."""
    where = directory() if where is None else where
    if where is None or not _plain(doc):
        return False
    from agent.atomic_file import replace_file  # here: a start that hits the cache never writes

    try:
        # 0600: the document holds the configuration's secrets.
        replace_file(where / FILE_NAME, _MAGIC + key(data) + marshal.dumps(doc),
                     prefix=".config-")
    except (OSError, ValueError):
        return False
    return True


__all__ = ["FILE_NAME", "MISS", "directory", "key", "lookup", "store"]
