"""The compiled dataclass methods kept beside the bytecode (agent/dataclass_cache.py).

What must hold: a method from the cache is the very code the dataclasses module compiles
(same bytecode, same annotations, same behaviour); a second start compiles none of the
agent's methods; the cache follows the interpreter's bytecode rules (nothing written with
PYTHONDONTWRITEBYTECODE, a corrupt or foreign file ignored and replaced, a failed write never
an error).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import ClassVar

import pytest

from agent import dataclass_cache

pytestmark = pytest.mark.skipif(not dataclass_cache._installed,
                                reason="this interpreter's dataclasses is not the one cached")

ROOT = Path(__file__).resolve().parents[1]

_PROBE = """
import json, sys
import agent.config, hal.interfaces  # the agent's dataclasses
from agent import dataclass_cache as d
print(json.dumps({"stats": d.stats, "path": str(d.cache_file("agent.config"))}))
"""


def _run(pycache: Path, **env: str) -> dict:
    e = {k: v for k, v in os.environ.items()
         if k not in ("PYTHONDONTWRITEBYTECODE", "CP_AGENT_NO_DATACLASS_CACHE")}
    e.update(PYTHONPYCACHEPREFIX=str(pycache), **env)
    out = subprocess.run([sys.executable, "-c", _PROBE], cwd=ROOT, env=e, check=True,
                         capture_output=True, text=True, timeout=120).stdout
    return json.loads(out.strip().splitlines()[-1])


def _define(create_fn: object) -> type:
    """The same class definition, its methods made by ``create_fn``."""
    saved = dataclasses._create_fn
    dataclasses._create_fn = create_fn
    try:
        @dataclasses.dataclass(frozen=True, order=True)
        class Probe:
            KIND: ClassVar[str] = "probe"
            name: str
            amps: float = 6.0
            phases: tuple[int, ...] = dataclasses.field(default_factory=lambda: (1, 2, 3))
            note: str | None = dataclasses.field(default=None, compare=False)
    finally:
        dataclasses._create_fn = saved
    return Probe


def test_a_cached_method_is_the_code_the_dataclasses_module_compiles(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # This test module's classes go through the cache as the agent's do (not saved).
    monkeypatch.setattr(dataclass_cache, "_PACKAGES", ("agent.", "hal.", __name__))
    try:
        ours = _define(dataclass_cache._create_fn)
        before = dict(dataclass_cache.stats)
        ours_again = _define(dataclass_cache._create_fn)  # from the cache this time
        assert dataclass_cache.stats["compiled"] == before["compiled"]
        assert dataclass_cache.stats["hits"] > before["hits"]
    finally:
        dataclass_cache._used.pop(__name__, None)
        dataclass_cache._loaded.pop(__name__, None)
        dataclass_cache._dirty.discard(__name__)
    stock = _define(dataclass_cache._original)
    for name in ("__init__", "__repr__", "__eq__", "__lt__", "__hash__", "__setattr__",
                 "__delattr__"):
        for cls in (ours, ours_again):
            got, want = getattr(cls, name).__code__, getattr(stock, name).__code__
            assert got.co_code == want.co_code, name
            assert got.co_consts == want.co_consts, name
            assert got.co_names == want.co_names, name
            assert got.co_varnames == want.co_varnames, name
    # The cached module's own `from __future__ import annotations` did not leak in: the
    # annotations are the objects, as the stock compile makes them, not strings.
    assert ours.__init__.__annotations__ == stock.__init__.__annotations__
    assert ours.__init__.__annotations__["return"] is None
    a, b = ours("x", 16.0), ours("x", 16.0, note="other")
    assert a == b and hash(a) == hash(b) and a < ours("y")
    assert repr(a).endswith("Probe(name='x', amps=16.0, phases=(1, 2, 3), note=None)")
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.amps = 32.0  # type: ignore[misc]


def test_a_second_start_compiles_none_of_the_agents_methods(tmp_path: Path) -> None:
    first = _run(tmp_path)
    assert first["stats"]["compiled"] > 100  # agent.config and hal.interfaces alone
    path = Path(first["path"])
    assert path.is_file() and str(path).startswith(str(tmp_path))
    assert path.stat().st_mode & 0o777 == 0o644  # the service's user reads root's cache
    second = _run(tmp_path)
    assert second["stats"]["compiled"] == 0
    assert second["stats"]["hits"] == first["stats"]["compiled"] + first["stats"]["hits"]
    # One file per module, beside its bytecode, holding that module's methods only.
    assert path.name == "config.cpython-311.pyc.dataclasses"
    assert (path.parent.parent.parent / "hal" / "__pycache__").exists() or any(
        p.name.startswith("interfaces.") for p in tmp_path.rglob("*.dataclasses"))


def test_nothing_is_written_when_bytecode_writing_is_off(tmp_path: Path) -> None:
    first = _run(tmp_path, PYTHONDONTWRITEBYTECODE="1")
    assert first["stats"]["compiled"] > 100
    assert not Path(first["path"]).exists()


def test_a_corrupt_or_foreign_cache_is_ignored_and_replaced(tmp_path: Path) -> None:
    path = Path(_run(tmp_path)["path"])
    held = len(dataclass_cache._load(path))  # agent.config's methods
    assert held > 20
    for junk in (b"not a cache at all", b"\x00\x00\r\n" + b"\xff" * 64,
                 path.read_bytes()[:-100]):  # another interpreter's magic; a torn file
        path.write_bytes(junk)
        again = _run(tmp_path)
        assert again["stats"]["compiled"] == held  # agent.config's again, the others cached
        assert path.read_bytes().startswith(importlib.util.MAGIC_NUMBER)
        assert _run(tmp_path)["stats"]["compiled"] == 0  # and it was replaced


def test_a_failed_write_is_not_an_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache directory would be")
    assert dataclass_cache._write(blocker / "sub" / "x.dataclasses", {}) is False
    assert blocker.read_text().startswith("a file")


def test_other_code_is_compiled_as_the_dataclasses_module_does() -> None:
    """A class outside the agent's packages (a library's, a test's) is never cached: nothing
    is written into another project's tree."""
    before = dict(dataclass_cache.stats)
    _define(dataclass_cache._create_fn)
    assert dataclass_cache.stats == before
    assert dataclass_cache.cache_file(__name__) is None
    assert dataclass_cache.cache_file("dataclasses") is None


_RELEASE_PROBE = """
import json, sys
from agent import dataclass_cache as d
out = {}
def held():
    return sum(map(len, d._used.values())) + sum(map(len, d._loaded.values()))
import agent.config  # its classes are all made: the file's entries are not needed any more
out["config_held_after_its_import"] = "agent.config" in d._used
import hal.interfaces  # the next module's first class lets go of agent.config's entries
out["config_held_after_next_import"] = "agent.config" in d._used or "agent.config" in d._loaded
out["held_before_save"] = held()
d.save()  # what `cp-agent run` does once booted
out["held_after_save"] = held()
import agent.core.firmware, agent.core.diagnostics  # services built on first use, later
out["firmware_held_later"] = "agent.core.firmware" in d._used or "agent.core.firmware" in d._loaded
out["stats"] = d.stats
print(json.dumps(out))
"""


def test_a_modules_entries_are_let_go_once_its_import_is_over(tmp_path: Path) -> None:
    """The code that builds a method and the text it is keyed by are garbage once the class
    exists: held until the save after start-up they were at the top of the start-up heap, and
    a module imported after that save (a service built on first use) kept them for the
    process's life."""
    e = {k: v for k, v in os.environ.items()
         if k not in ("PYTHONDONTWRITEBYTECODE", "CP_AGENT_NO_DATACLASS_CACHE")}
    e.update(PYTHONPYCACHEPREFIX=str(tmp_path))

    def run() -> dict:
        out = subprocess.run([sys.executable, "-c", _RELEASE_PROBE], cwd=ROOT, env=e,
                             check=True, capture_output=True, text=True, timeout=120).stdout
        return json.loads(out.strip().splitlines()[-1])

    first = run()  # fills the cache (compiles, so agent.config keeps what it used)
    assert first["stats"]["compiled"] > 100
    second = run()  # every method from the cache, as on a station
    assert second["stats"]["compiled"] == 0
    assert second["config_held_after_its_import"] is True  # until another module compiles
    assert second["config_held_after_next_import"] is False
    assert second["held_before_save"] > 0  # hal.interfaces' own, the module last imported
    assert second["held_after_save"] == 0
    assert second["firmware_held_later"] is False


def test_entries_let_go_and_read_again_are_all_written(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A module whose entries were let go, read again later and then compiling something new
    writes what its file held as well as the new entry: nothing it had drops out."""
    monkeypatch.setattr(dataclass_cache, "_PACKAGES", ("agent.", "hal.", __name__))
    path = tmp_path / "probe.dataclasses"
    monkeypatch.setattr(dataclass_cache, "cache_file", lambda module: path)
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    for name in ("_loaded", "_used"):  # this process's own entries are left alone
        monkeypatch.setattr(dataclass_cache, name, {})
    for name in ("_dirty", "_reread"):
        monkeypatch.setattr(dataclass_cache, name, set())
    dataclass_cache._write(path, {"old text": compile("x = 1", "<string>", "exec")})
    dataclass_cache._compile(__name__, "old text")  # read from the file, a hit
    dataclass_cache._let_go_of_imported("other")  # this module is not being imported
    assert dataclass_cache.held() == 0
    dataclass_cache._compile(__name__, "y = 2")  # read again, and a new entry compiled
    assert dataclass_cache.save() == 1
    assert set(dataclass_cache._load(path)) == {"old text", "y = 2"}
    assert dataclass_cache.held() == 0
