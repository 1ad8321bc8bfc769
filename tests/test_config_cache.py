"""The parsed configuration kept for the next start (agent/config_cache.py).

What must hold: a start on a kept document gets exactly the configuration a parse of the file
gives; any other bytes, another PyYAML or another loader is a miss; only plain documents of a
valid configuration are kept, 0600, only in the service's state directory; a cache file that
is not the service's own or is torn is ignored and replaced; a start on a hit loads no YAML.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent import config_cache
from agent.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]

CONFIG = """\
# a station's file, comments and all
station: {id: CP-CACHE, vendor: cp-agent, model: bench}
ocpp:
  url: ws://127.0.0.1:9/ocpp
  versions: [1.6, "2.0.1"]
  call_timeout_s: 10.5
storage: {path: state.sqlite3}   # relative: to the file
evses: [{id: 1}, {id: 2}]
hal: {driver: mock, ev_max_current_a: 16}
log: {level: warning, file: false}
"""


@pytest.fixture()
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    monkeypatch.setenv("STATE_DIRECTORY", str(state))
    monkeypatch.delenv("CP_AGENT_NO_CONFIG_CACHE", raising=False)
    return state


def _write(tmp_path: Path, text: str = CONFIG) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_kept_document_gives_the_configuration_a_parse_gives(tmp_path: Path,
                                                               state_dir: Path) -> None:
    path = _write(tmp_path)
    parsed = load_config(path)  # a miss: parsed, and kept
    kept = state_dir / config_cache.FILE_NAME
    assert kept.is_file() and kept.stat().st_mode & 0o777 == 0o600
    data = path.read_bytes()
    doc = config_cache.lookup(data)
    assert doc is not config_cache.MISS
    assert json.dumps(doc) == json.dumps(__import__("yaml").safe_load(CONFIG))
    assert type(doc["ocpp"]["versions"][0]) is float  # 1.6 unquoted, as YAML reads it
    again = load_config(path)  # a hit
    assert dataclasses.asdict(again) == dataclasses.asdict(parsed)
    assert again.storage.path == str(tmp_path / "state.sqlite3")


def test_other_bytes_or_another_parser_are_a_miss(tmp_path: Path, state_dir: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    path = _write(tmp_path)
    load_config(path)
    changed = CONFIG.replace("CP-CACHE", "CP-CACHF")
    assert config_cache.lookup(changed.encode()) is config_cache.MISS
    assert load_config(_write(tmp_path, changed)).station.id == "CP-CACHF"  # parsed
    assert load_config(_write(tmp_path)).station.id == "CP-CACHE"  # parsed again
    # An upgraded PyYAML (or interpreter, or loader) has another identity: a miss.
    monkeypatch.setattr(config_cache, "_parser_identity", lambda: b"PyYAML 99")
    assert config_cache.lookup(path.read_bytes()) is config_cache.MISS


def test_only_plain_documents_of_valid_configurations_are_kept(tmp_path: Path,
                                                               state_dir: Path) -> None:
    kept = state_dir / config_cache.FILE_NAME
    with pytest.raises(ConfigError):
        load_config(_write(tmp_path, CONFIG.replace("level: warning", "level: loud")))
    assert not kept.exists()
    # A timestamp (a datetime.date) is not given back exactly by marshal: never kept.
    dated = CONFIG.replace("model: bench", "model: bench, firmware_version: 2026-12-01")
    with pytest.raises(ConfigError):  # and not a valid value here either
        load_config(_write(tmp_path, dated))
    assert config_cache.store(b"x", {"when": __import__("datetime").date(2026, 12, 1)}) is False
    assert config_cache.store(b"x", {"blob": b"\x00"}) is False
    assert not kept.exists()


def test_a_cache_that_is_not_the_services_own_or_torn_is_ignored_and_replaced(
        tmp_path: Path, state_dir: Path) -> None:
    path = _write(tmp_path)
    load_config(path)
    kept = state_dir / config_cache.FILE_NAME
    good = kept.read_bytes()
    data = path.read_bytes()
    kept.chmod(0o666)  # anyone could have written it
    assert config_cache.lookup(data) is config_cache.MISS
    kept.chmod(0o600)
    for junk in (good[:-7], b"not a cache", good[:40] + b"\xff" * 32 + good[72:]):
        kept.write_bytes(junk)
        assert config_cache.lookup(data) is config_cache.MISS
        assert load_config(path).station.id == "CP-CACHE"
        assert config_cache.lookup(data) is not config_cache.MISS  # replaced


def test_nothing_is_kept_without_a_state_directory_or_when_switched_off(
        tmp_path: Path, state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CP_AGENT_NO_CONFIG_CACHE", "1")
    load_config(_write(tmp_path))
    assert not any(state_dir.iterdir())
    monkeypatch.delenv("CP_AGENT_NO_CONFIG_CACHE")
    monkeypatch.delenv("STATE_DIRECTORY")
    assert config_cache.directory() is None
    load_config(_write(tmp_path))
    assert not any(state_dir.iterdir())


_PROBE = """
import json, sys
from agent.config import load_config
cfg = load_config(sys.argv[1])
print(json.dumps({"yaml": "yaml" in sys.modules, "id": cfg.station.id}))
"""


def test_a_start_on_a_kept_document_loads_no_yaml(tmp_path: Path, state_dir: Path) -> None:
    path = _write(tmp_path)
    env = dict(os.environ, STATE_DIRECTORY=str(state_dir))

    def start() -> dict:
        out = subprocess.run([sys.executable, "-c", _PROBE, str(path)], cwd=ROOT, env=env,
                             check=True, capture_output=True, text=True, timeout=60).stdout
        return json.loads(out.strip().splitlines()[-1])

    assert start() == {"yaml": True, "id": "CP-CACHE"}  # parsed, and kept
    assert start() == {"yaml": False, "id": "CP-CACHE"}
