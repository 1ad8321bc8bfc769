"""Configuration: the example loads, and each kind of mistake is named precisely."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli import main
from agent.config import ConfigError, load_config, load_config_text

ROOT = Path(__file__).resolve().parent.parent


def test_example_config_loads_with_documented_defaults():
    cfg = load_config(ROOT / "config.example.yaml")
    assert cfg.station.id == "CP001"
    assert cfg.ocpp.versions == ["1.6"]
    assert cfg.hal["driver"] == "mock"
    assert [e.id for e in cfg.evses] == [1]
    assert cfg.storage.path.endswith("state.sqlite3")


def test_every_dataclass_key_is_documented_in_the_example():
    """config.example.yaml documents every key: a new key without docs fails here."""
    import dataclasses

    from agent.config import AgentConfig

    text = (ROOT / "config.example.yaml").read_text()

    def walk(cls):
        for f in dataclasses.fields(cls):
            if f.name == "source":
                continue
            yield f.name
            tp = cls.__annotations__.get(f.name)
            # "MqttConfig | None": an optional section is documented like any other.
            sub = getattr(__import__("agent.config", fromlist=["x"]), str(tp).split("[")[-1]
                          .strip("]'\" ").split(" | ")[0], None)
            if sub is not None and dataclasses.is_dataclass(sub):
                yield from walk(sub)

    missing = [k for k in walk(AgentConfig) if f"{k}:" not in text]
    assert missing == []


@pytest.mark.parametrize("text, needle", [
    ("station: {id: CP1, vendr: x}", "station.vendr: unknown key"),
    ("ocpp: {versions: ['1.5']}", "ocpp.versions[0]: '1.5' is not allowed"),
    ("ocpp: {versions: []}", "ocpp.versions"),
    ("ocpp: {url: 'http://x'}", "ocpp.url: 'http://x' is not allowed"),
    ("ocpp: {security_profile: 1}", "ocpp.password"),
    ("ocpp: {security_profile: 2, password: secret}", "wss://"),
    ("ocpp: {security_profile: 3}", "a wss:// URL (security profile 3 requires TLS)"),
    ("ocpp: {url: 'wss://c/o', security_profile: 3}", "ocpp.client_cert_file: null"),
    ("ocpp: {password: secret}", "ocpp.security_profile: 0 is not allowed; expected 1"),
    ("evses: [{id: 1, max_current_a: 100}]", "evses[0].max_current_a: 100"),
    ("evses: [{id: 1}, {id: 3}]", "without gaps"),
    ("evses: [{id: 1, phases: two}]", "evses[0].phases: 'two' is not allowed; expected an integer"),
    ("station: {id: 'a b'}", "station.id"),
    ("storage: [1]", "storage: [1] is not allowed; expected a mapping"),
    ("log: {level: loud}", "log.level: 'loud'"),
    ("hal: {}", "hal:"),
    ("station: {id: CP1\n", "not valid YAML"),
    ("evses: [{id: 1, connectors: [{id: 1}, {id: 2}]}]", "while ocpp.versions offers 1.6"),
    ("ocpp: {versions: ['2.0.1']}\nevses: [{id: 1, connectors: [{id: 1}, {id: 3}]}]",
     "evses[0].connectors: [1, 3] is not allowed; expected connector ids numbered"),
])
def test_errors_name_key_value_and_allowed(text, needle):
    with pytest.raises(ConfigError) as exc:
        load_config_text(text)
    assert needle in str(exc.value)


def test_unquoted_version_numbers_are_read_as_text():
    cfg = load_config_text("station: {id: CP1}\nocpp: {url: 'ws://x/ocpp', versions: [1.6]}")
    assert cfg.ocpp.versions == ["1.6"]


def test_relative_paths_are_relative_to_the_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("station: {id: CP1}\nocpp: {url: 'ws://x/ocpp'}\n"
                 "storage: {path: state.db}\ncontrol: {socket: ctl.sock}\n")
    cfg = load_config(p)
    assert cfg.storage.path == str(tmp_path / "state.db")
    assert cfg.control.socket == str(tmp_path / "ctl.sock")


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="configuration file not found"):
        load_config(tmp_path / "nope.yaml")


def test_cli_reports_config_errors_and_exits_2(tmp_path, capsys):
    p = tmp_path / "c.yaml"
    p.write_text("ocpp: {url: 'ftp://x'}\n")
    with pytest.raises(SystemExit) as exc:
        main(["check-config", "--config", str(p)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "ocpp.url" in err and "ftp://x" in err
    assert main(["check-config", "--config", str(ROOT / "config.example.yaml")]) == 0


def test_ocpp_2_1_is_a_version_and_unquoted_versions_are_read_as_written():
    cfg = load_config_text("station: {id: CP1}\nocpp: {url: 'ws://x/ocpp', "
                           "versions: [2.1, 2.0.1, 1.6]}")
    assert cfg.ocpp.versions == ["2.1", "2.0.1", "1.6"]
    with pytest.raises(ConfigError, match=r"ocpp.versions\[1\]: '2.2' is not allowed"):
        load_config_text("ocpp: {versions: ['2.1', '2.2']}")
