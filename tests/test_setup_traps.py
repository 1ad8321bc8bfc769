"""Set-up traps: what an installer meets between `git clone` and a charging station.

Each test names the trap and asserts the text the user sees (and the exit status where a
command is involved): GPIO on a Pi 5, the command on PATH and the service user's groups,
`run` outside systemd, relative paths, an empty file, and the messages of a broken one.
"""

from __future__ import annotations

import os
import shlex
import socket
import string
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml
from gpiozero.exc import BadPinFactory

from agent import preflight
from agent.cli import main
from agent.config import STATION_ID_ALLOWED, ConfigError, load_config, load_config_text
from hal.config_kit import show, show_address
from hal.drivers import base as hal_base
from hal.drivers import gpio
from hal.factory import HalConfigError, parse_hal_config

ROOT = Path(__file__).resolve().parent.parent
INSTALL = ROOT / "systemd" / "install.sh"
UNIT = ROOT / "systemd" / "cp-agent.service"
SYSUSERS = ROOT / "systemd" / "cp-agent.sysusers.conf"
CP_AGENT = [sys.executable, "-m", "agent"]
GOOD = "station: {id: CP1}\nocpp: {url: 'ws://csms.example.com:9000/ocpp'}\n"


def cp_agent(*args: str, cwd: Path | str = ROOT) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([*CP_AGENT, *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd, env=env)


def install_fn(script: str, **variables: str) -> subprocess.CompletedProcess[str]:
    """Source install.sh (which then defines its functions and runs nothing), set
    ``variables``, and run ``script``: the installer's logic without root."""
    assign = "".join(f"{k}={shlex.quote(v)}\n" for k, v in variables.items())
    code = f"source {shlex.quote(str(INSTALL))}\n{assign}{script}\n"
    return subprocess.run(["bash", "-c", code], capture_output=True, text=True, timeout=30)


# ================================================================ 1. GPIO on a Pi 5


@pytest.mark.parametrize("model, is_pi", [
    (b"Raspberry Pi 5 Model B Rev 1.0\0", True),
    (b"Raspberry Pi 4 Model B Rev 1.5\0", True),
    (b"Radxa ROCK 5B\0", False),
    (None, False),
])
def test_install_detects_a_raspberry_pi_from_the_device_tree(tmp_path, model, is_pi):
    dt = tmp_path / "model"
    if model is not None:
        dt.write_bytes(model)
    res = install_fn("is_raspberry_pi && echo PI || echo OTHER", DT_MODEL=str(dt))
    assert res.stdout.strip() == ("PI" if is_pi else "OTHER"), res.stderr


def fake_venv(tmp_path: Path, *, lgpio: bool, pip_ok: bool = True) -> Path:
    """A venv whose python logs its arguments; find_spec("lgpio") answers ``lgpio``."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(textwrap.dedent(f"""\
        #!/bin/sh
        echo "python $*" >>{tmp_path / "calls"}
        case "$*" in
            *find_spec*) exit {0 if lgpio else 1} ;;
            *"pip install"*) exit {0 if pip_ok else 1} ;;
        esac
        """))
    python.chmod(0o755)
    return venv


def test_install_puts_lgpio_into_the_venv(tmp_path):
    venv = fake_venv(tmp_path, lgpio=False)
    res = install_fn("install_gpio_library", VENV=str(venv))
    assert res.returncode == 0, res.stderr
    calls = (tmp_path / "calls").read_text().splitlines()
    assert calls[-1] == "python -m pip install --quiet --no-cache-dir lgpio"
    assert "==> installing lgpio into" in res.stdout
    # Checked with find_spec: importing lgpio would leave a FIFO in the current directory.
    assert "import lgpio" not in calls[0] and "find_spec" in calls[0]


def test_install_leaves_an_installed_lgpio_alone(tmp_path):
    venv = fake_venv(tmp_path, lgpio=True)
    res = install_fn("install_gpio_library", VENV=str(venv))
    assert res.returncode == 0 and res.stdout == ""
    assert not any("pip" in c for c in (tmp_path / "calls").read_text().splitlines())


def test_install_says_how_to_build_lgpio_when_pip_cannot(tmp_path):
    venv = fake_venv(tmp_path, lgpio=False, pip_ok=False)
    res = install_fn("install_gpio_library", VENV=str(venv))
    assert res.returncode == 0  # GPIO is not needed by every station: warn, do not abort
    assert "warning: could not install lgpio: GPIO will not work." in res.stderr
    assert f"liblgpio-dev && {venv}/bin/python -m pip install lgpio" in res.stderr


def test_install_runs_the_lgpio_step_on_a_pi_or_when_asked():
    text = INSTALL.read_text()
    assert 'if [ "$with_lgpio" -eq 1 ] || is_raspberry_pi; then\n    install_gpio_library' in text
    res = subprocess.run(["bash", str(INSTALL), "--help"], capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 0 and "--with-lgpio" in res.stdout


@pytest.fixture
def no_lgpio_on_a_pi(monkeypatch):
    monkeypatch.setattr(gpio, "lgpio_installed", lambda: False)
    monkeypatch.setattr(gpio, "is_raspberry_pi", lambda: True)
    monkeypatch.setattr(gpio, "_fallbacks", {})


def test_doctor_advice_for_a_missing_pin_factory_names_the_command(no_lgpio_on_a_pi):
    text = gpio._cause(17, BadPinFactory("Unable to load any default pin factory!"))
    sudo = "" if os.access(sys.prefix, os.W_OK) else "sudo "
    assert text == (
        "GPIO 17: no usable GPIO library (Unable to load any default pin factory!); install "
        f"lgpio into the Python that runs cp-agent: {sudo}{sys.executable} -m pip install lgpio "
        "(systemd/install.sh does this on a Raspberry Pi; the apt package python3-lgpio is "
        "not visible inside a virtualenv)")


def test_naming_the_lgpio_factory_gives_the_same_advice(no_lgpio_on_a_pi, monkeypatch):
    monkeypatch.setattr(gpio, "_import_lgpio", lambda: None)
    with pytest.raises(hal_base.PortUnavailable) as exc:
        gpio.load_pin_factory("lgpio")
    assert str(exc.value).startswith("GPIO pin factory 'lgpio' failed to load: ")
    assert f"{sys.executable} -m pip install lgpio" in str(exc.value)


def test_doctor_line_on_a_pi_without_lgpio(tmp_path, no_lgpio_on_a_pi, monkeypatch, capsys):
    from gpiozero import Device

    monkeypatch.setattr(Device, "pin_factory", None)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(GOOD + yaml.safe_dump({"hal": {
        "driver": "hardware",
        "modbus": {"rs485": {"type": "rtu", "port": str(tmp_path / "ttyUSB0")}},
        "evses": [{"id": 1, "contactor": {"coil": 17},
                   "meter": {"type": "sdm630", "bus": "rs485", "unit_id": 1},
                   "ev": {"type": "evse_wb", "bus": "rs485", "unit_id": 2}}]}}))
    assert main(["doctor", "--config", str(cfg)]) == 1
    lines = capsys.readouterr().out.splitlines()
    contactor = next(line for line in lines if line.startswith("FAIL  evse 1 contactor"))
    assert "no usable GPIO library" in contactor
    assert f"{sys.executable} -m pip install lgpio" in contactor


def test_lgpio_is_imported_from_a_writable_directory(tmp_path, monkeypatch):
    """lgpio makes its FIFO in the current directory at import; "/" is read-only for the
    service and the caller's home is closed to `sudo -u cp-agent`."""
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "lgpio.py").write_text("import os\nIMPORTED_IN = os.getcwd()\n"
                                  "open('.lgd-nfy0', 'w').close()\n")
    closed = tmp_path / "closed"
    closed.mkdir()
    monkeypatch.syspath_prepend(str(lib))
    monkeypatch.delitem(sys.modules, "lgpio", raising=False)
    monkeypatch.chdir(closed)
    monkeypatch.setattr(gpio, "_writable", lambda path: path != str(closed))
    try:
        gpio._import_lgpio()
        lgpio = sys.modules["lgpio"]
        assert lgpio.IMPORTED_IN != str(closed)
        assert Path(lgpio.IMPORTED_IN, ".lgd-nfy0").exists()
        assert os.getcwd() == str(closed)  # the agent's own directory is back
        assert not (closed / ".lgd-nfy0").exists()
    finally:
        sys.modules.pop("lgpio", None)


def test_the_service_runs_in_a_writable_directory():
    text = UNIT.read_text()
    assert "\nWorkingDirectory=/run/cp-agent\n" in text
    assert "\nRuntimeDirectory=cp-agent\n" in text


# ================================================================ 2. PATH, groups, doctor


def test_install_links_the_command_onto_path(tmp_path):
    venv, link = tmp_path / "venv", tmp_path / "usr-local-bin" / "cp-agent"
    for _ in range(2):  # idempotent
        res = install_fn("link_command", VENV=str(venv), BIN_LINK=str(link))
        assert res.returncode == 0, res.stderr
        assert f"==> linking {link} -> {venv}/bin/cp-agent" in res.stdout
    assert os.readlink(link) == f"{venv}/bin/cp-agent"


def test_install_leaves_a_cp_agent_that_is_not_its_link_alone(tmp_path):
    link = tmp_path / "cp-agent"
    link.write_text("#!/bin/sh\n")
    res = install_fn("link_command", VENV="/opt/cp-agent/venv", BIN_LINK=str(link))
    assert res.returncode == 0
    assert res.stderr == (f"warning: {link} exists and is not a symlink: left alone (the agent "
                          "is /opt/cp-agent/venv/bin/cp-agent)\n")
    assert link.read_text() == "#!/bin/sh\n"


def test_install_puts_the_service_user_in_the_device_groups_that_exist():
    stubs = textwrap.dedent("""\
        getent() { [ "$1" = group ] && case "$2" in gpio|dialout|input) return 0;; esac; return 2; }
        usermod() { echo "usermod $*"; }
        join_device_groups
        """)
    res = install_fn(stubs)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["==> adding cp-agent to groups gpio dialout input",
                                       "usermod -a -G gpio,dialout,input cp-agent"]
    none = install_fn("getent() { return 2; }\nusermod() { echo called; }\njoin_device_groups")
    assert none.returncode == 0 and none.stdout == ""  # and no group is created


def test_install_joins_the_groups_after_creating_the_user():
    text = INSTALL.read_text()
    assert text.index("\njoin_device_groups\n") > text.index("useradd --system")
    assert text.index("\nlink_command\n") > text.index('-m pip install --quiet --no-cache-dir')


@pytest.mark.skipif(not Path("/usr/bin/systemd-sysusers").exists(), reason="no sysusers")
def test_sysusers_makes_the_user_a_member_of_every_device_group(tmp_path):
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (etc / "group").write_text("root:x:0:\ngpio:x:997:pi\n")  # Raspberry Pi OS has gpio
    res = subprocess.run(["systemd-sysusers", f"--root={tmp_path}", str(SYSUSERS)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    members = {f[0]: f[3].split(",") for f in
               (line.split(":") for line in (etc / "group").read_text().splitlines())}
    for group in ("gpio", "dialout", "i2c", "input"):
        assert "cp-agent" in members[group], group
    assert "pi" in members["gpio"]


def test_doctor_reads_nothing_the_service_user_cannot(tmp_path, capsys):
    """`sudo -u cp-agent cp-agent doctor`: no state directory, no control socket needed."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(GOOD + "storage: {path: /nonexistent/state.sqlite3}\n"
                          "control: {socket: /nonexistent/ctl.sock}\n")
    assert main(["doctor", "--config", str(cfg)]) == 0
    assert capsys.readouterr().out.startswith("PASS  mock HAL")


# ================================================================ 3. run outside systemd


def test_run_with_the_example_config_outside_systemd_says_one_line_and_exits_4():
    if os.path.isdir("/run/cp-agent"):
        pytest.skip("/run/cp-agent exists here")
    res = cp_agent("run", "--config", str(ROOT / "config.example.yaml"))
    assert res.returncode == 4
    assert res.stderr == (
        "cp-agent: control.socket: directory /run/cp-agent does not exist (systemd creates it "
        "via RuntimeDirectory=; outside systemd set control.socket to a writable path or "
        "create it)\n")


def test_run_with_a_missing_socket_directory_exits_4(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(GOOD + f"storage: {{path: {tmp_path / 'state.db'}}}\n"
                          f"control: {{socket: {tmp_path / 'gone' / 'ctl.sock'}}}\n")
    res = cp_agent("run", "--config", str(cfg))
    assert res.returncode == 4
    assert res.stderr == (f"cp-agent: control.socket: directory {tmp_path / 'gone'} does not "
                          "exist (create it, or set control.socket to a path in a writable "
                          "directory)\n")
    assert not (tmp_path / "state.db").exists()  # refused before anything was opened


def test_run_next_to_another_listener_exits_4_without_a_traceback(tmp_path):
    sock_path = tmp_path / "ctl.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock_path))
    listener.listen(1)
    try:
        cfg = tmp_path / "c.yaml"
        cfg.write_text(GOOD + f"storage: {{path: {tmp_path / 'state.db'}}}\n"
                              f"control: {{socket: {sock_path}}}\n")
        res = cp_agent("run", "--config", str(cfg))
    finally:
        listener.close()
    assert res.returncode == 4
    assert "Traceback" not in res.stderr
    assert res.stderr.splitlines()[-1] == (
        f"cp-agent: control.socket: another cp-agent is already listening on {sock_path}")


def test_check_config_reports_each_path_problem_and_exits_4(tmp_path):
    (tmp_path / "afile").write_text("")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(GOOD + "storage: {path: afile/state.db}\n"
                          "control: {socket: run/ctl.sock}\n")
    res = cp_agent("check-config", "--config", str(cfg))
    assert res.returncode == 4
    assert res.stdout == ""
    assert res.stderr.splitlines() == [
        f"cp-agent: path error: storage.path: {tmp_path / 'afile'} is not a directory",
        f"cp-agent: path error: control.socket: directory {tmp_path / 'run'} does not exist "
        "(create it, or set control.socket to a path in a writable directory)",
    ]


def test_check_config_says_what_a_missing_state_directory_means(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(GOOD + "storage: {path: data/cp/state.db}\ncontrol: {socket: ctl.sock}\n")
    res = cp_agent("check-config", "--config", str(cfg))
    assert res.returncode == 4
    d = tmp_path / "data" / "cp"
    assert res.stderr == (f"cp-agent: path error: storage.path: directory {d} does not exist "
                          f"(create it: mkdir -p {d}; the agent does not create it, and runs "
                          "without charging until the database opens)\n")


def test_check_config_only_notes_the_directories_systemd_creates():
    res = cp_agent("check-config", "--config", str(ROOT / "config.example.yaml"))
    assert res.returncode == 0
    assert res.stdout.endswith(": ok (station CP001, 1 EVSE(s), OCPP 1.6, hal mock)\n")
    for line in res.stderr.splitlines():
        assert line.startswith("cp-agent: note: "), line
    if not os.path.isdir("/run/cp-agent"):
        assert ("cp-agent: note: control.socket: directory /run/cp-agent does not exist "
                "(systemd creates it via RuntimeDirectory=") in res.stderr


def test_the_directories_preflight_treats_as_systemds_are_the_units():
    text = UNIT.read_text()
    assert "\nStateDirectory=cp-agent\n" in text and "\nRuntimeDirectory=cp-agent\n" in text
    assert preflight.SERVICE_STATE_DIR == "/var/lib/cp-agent"
    assert preflight.SERVICE_RUNTIME_DIR == "/run/cp-agent"


def test_readme_documents_runs_exit_codes():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("Exit codes of `cp-agent run`", 1)[1][:1500]
    for code in ("0", "1", "2", "3", "4"):
        assert f"| {code} |" in section, code


# ================================================================ 4. relative paths


def test_relative_paths_are_relative_to_the_config_file_not_the_cwd(tmp_path, monkeypatch):
    conf = tmp_path / "etc"
    conf.mkdir()
    (conf / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    (conf / "config.yaml").write_text(textwrap.dedent("""\
        station: {id: CP1}
        ocpp: {url: 'wss://csms.example.com/ocpp', ca_file: ca.pem}
        storage: {path: state.sqlite3}
        control: {socket: ctl.sock}
        mqtt: {host: broker, tls: true, ca_file: ca.pem}
        hal: {driver: mock}
        """))
    monkeypatch.chdir("/")  # as under systemd
    cfg = load_config(conf / "config.yaml")
    assert cfg.ocpp.ca_file == str(conf / "ca.pem")
    assert cfg.storage.path == str(conf / "state.sqlite3")
    assert cfg.control.socket == str(conf / "ctl.sock")
    assert cfg.mqtt is not None and cfg.mqtt.ca_file == str(conf / "ca.pem")
    res = cp_agent("check-config", "--config", str(conf / "config.yaml"), cwd="/")
    assert res.returncode == 0, res.stderr


def test_a_missing_relative_ca_file_is_named_as_resolved(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("station: {id: CP1}\nocpp: {url: 'wss://h/ocpp', ca_file: ca.pem}\n")
    with pytest.raises(ConfigError) as exc:
        load_config(p)
    assert str(exc.value) == (
        f"ocpp.ca_file: '{tmp_path / 'ca.pem'}' is not allowed; expected the path of a readable "
        "PEM file of CA certificates (a relative path is relative to the configuration file)")


def test_device_paths_in_hal_are_left_as_written(tmp_path):
    p = tmp_path / "c.yaml"
    hal = {"driver": "mock", "note": "serial0"}
    p.write_text(GOOD + yaml.safe_dump({"hal": hal}))
    assert load_config(p).hal == hal


# ================================================================ 5. required keys


def test_an_empty_file_is_refused_naming_both_required_keys(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("")
    res = cp_agent("check-config", "--config", str(p))
    assert res.returncode == 2
    assert res.stderr == (
        f"cp-agent: configuration error: {p} is empty; station.id, ocpp.url: missing; every "
        "configuration must give station.id (the charge point identity, e.g. CP001) and "
        "ocpp.url (the CSMS websocket URL, e.g. ws://csms.example.com:9000/ocpp)\n")


@pytest.mark.parametrize("text, missing", [
    ("ocpp: {url: 'ws://h/ocpp'}", "station.id (the charge point identity, e.g. CP001)"),
    ("station: {id: CP1, vendor: acme}", "ocpp.url (the CSMS websocket URL, e.g. "
                                          "ws://csms.example.com:9000/ocpp)"),
])
def test_each_required_key_is_named(text, missing):
    with pytest.raises(ConfigError) as exc:
        load_config_text(text)
    key = missing.split(" ", 1)[0]
    assert str(exc.value) == f"{key}: missing; every configuration must give {missing}"


# ================================================================ 6. messages of a broken file


def test_a_file_that_is_not_utf8_names_the_file_and_the_byte(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_bytes(b"station: {id: CP1}\nocpp: {url: 'ws://h/ocpp'}  # Caf\xe9\n")
    res = cp_agent("run", "--config", str(p))
    assert res.returncode == 2
    assert res.stderr == (f"cp-agent: configuration error: {p}: not UTF-8 text: byte 0xe9 at "
                          "offset 52 (line 2, column 34) is not valid UTF-8; save the file as "
                          "UTF-8\n")


def test_utf16_is_recognised(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_bytes(GOOD.encode("utf-16"))
    with pytest.raises(ConfigError, match=r"at offset 0 \(line 1, column 1\) is not valid "
                                          r"UTF-8 \(it looks like UTF-16\)"):
        load_config(p)


def test_yaml_syntax_errors_name_file_line_and_column(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("station: {id: CP1\n")
    res = cp_agent("check-config", "--config", str(p))
    assert res.returncode == 2
    assert res.stderr == (f"cp-agent: configuration error: {p}: line 2, column 1: not valid "
                          "YAML: expected ',' or '}', but got '<stream end>' (while parsing a "
                          "flow mapping at line 1, column 10)\n")
    assert "<unicode string>" not in res.stderr


def test_control_characters_name_line_and_column():
    with pytest.raises(ConfigError) as exc:
        load_config_text('station: {id: "CP\x07"}', "c.yaml")
    assert str(exc.value) == ("c.yaml: line 1, column 18: not valid YAML: character '\\x07' "
                              "(U+0007) is not allowed in YAML (special characters are not "
                              "allowed)")


@pytest.mark.parametrize("url", ["ws://host:notaport/ocpp", "ws://host:70000/ocpp",
                                 "wss://host:0/ocpp"])
def test_a_bad_port_is_refused(url):
    with pytest.raises(ConfigError) as exc:
        load_config_text(f"station: {{id: CP1}}\nocpp: {{url: '{url}'}}")
    assert str(exc.value) == (
        f"ocpp.url: '{url}' is not allowed; expected a port number 1-65535 after the host, "
        "e.g. ws://csms.example.com:9000/ocpp (or no port: 80 for ws://, 443 for wss://)")


def test_station_id_check_and_message_agree():
    assert STATION_ID_ALLOWED == "1-48 characters: letters A-Z a-z, digits 0-9, '-', '_', '.'"
    allowed = set(string.ascii_letters + string.digits + "-_.")
    for c in (chr(i) for i in range(32, 127)):
        text = f"station: {{id: 'CP{c}1'}}\nocpp: {{url: 'ws://h/ocpp'}}"
        if c == "'":
            continue
        if c in allowed:
            assert load_config_text(text).station.id == f"CP{c}1"
        else:
            with pytest.raises(ConfigError) as exc:
                load_config_text(text)
            assert str(exc.value) == (f"station.id: {f'CP{c}1'!r} is not allowed; expected "
                                      f"{STATION_ID_ALLOWED}"), c
    for bad in ("Café", "CP²", "x" * 49, "CP*1", "CP:1"):
        with pytest.raises(ConfigError, match="station.id"):
            load_config_text(f"station: {{id: '{bad}'}}\nocpp: {{url: 'ws://h/ocpp'}}")
    assert load_config_text(f"station: {{id: {'x' * 48}}}\nocpp: {{url: 'ws://h/ocpp'}}")


@pytest.mark.parametrize("text, message", [
    ("ocpp: {security_profile: 1, password: null}",
     "ocpp.password: null is not allowed; expected a password (security profile 1 uses HTTP "
     "basic auth)"),
    ("station: {id: true}", "station.id: true is not allowed; expected a string"),
    ("evses: [{id: 1, phases: null}]",
     "evses[0].phases: null is not allowed; expected an integer"),
    ("storage: [null, false]", "storage: [null, false] is not allowed; expected a mapping"),
])
def test_messages_spell_values_as_yaml_does(text, message):
    with pytest.raises(ConfigError) as exc:
        load_config_text(text)
    assert str(exc.value) == message


def test_hal_messages_spell_values_as_yaml_does():
    assert show(None) == "null" and show(True) == "true" and show([False, "x"]) == "[false, 'x']"
    raw = {"driver": "hardware", "modbus": {"rs485": {"type": "rtu", "port": "/dev/ttyUSB0",
                                                      "parity": True}}}
    with pytest.raises(HalConfigError) as exc:
        parse_hal_config(raw, [1])
    assert str(exc.value) == ("hal.modbus.rs485.parity: true is not allowed; expected one of "
                              "N, E, O")


def rig_error(yaml_text: str) -> str:
    """The error for the bench rig of config.example.yaml with one YAML line replaced."""
    from tests.hal.halsim import example_bench_rig

    rig = example_bench_rig()
    patch = yaml.safe_load(yaml_text)
    path, value = next(iter(patch.items()))
    node = rig["hal"]
    parts = [int(p) if p.isdigit() else p for p in path.split(".")]
    for p in parts[:-1]:
        node = node[p]
    node[parts[-1]] = value
    with pytest.raises(HalConfigError) as exc:
        parse_hal_config(rig["hal"], [e["id"] for e in rig["evses"]])
    return str(exc.value)


@pytest.mark.parametrize("line, message", [
    ("evses.1.ev.adc.address: 0x4C",
     "hal.evses[1].ev.adc.address: 76 (0x4C) is not allowed; expected one of 72 (0x48), "
     "73 (0x49), 74 (0x4A), 75 (0x4B)"),
    ("readers.0.address: 0x80",
     "hal.readers[0].address: 128 (0x80) is not allowed; expected an address 8..119 "
     "(0x08..0x77)"),
    ("evses.0.meter.unit_id: 0xF8",
     "hal.evses[0].meter.unit_id: 248 (0xF8) is not allowed; expected an address 1..247 "
     "(0x01..0xF7)"),
])
def test_addresses_are_shown_in_hex_too(line, message):
    assert rig_error(line) == message


def test_register_addresses_are_shown_in_hex_too():
    raw = {"driver": "hardware", "modbus": {"rs485": {"type": "rtu", "port": "/dev/ttyUSB0"}},
           "evses": [{"id": 1, "contactor": {"coil": 17},
                      "meter": {"type": "generic", "bus": "rs485", "unit_id": 1,
                                "registers": {"energy_import_wh": {"address": 0x10000}}},
                      "ev": {"type": "evse_wb", "bus": "rs485", "unit_id": 2}}]}
    with pytest.raises(HalConfigError) as exc:
        parse_hal_config(raw, [1])
    assert str(exc.value) == ("hal.evses[0].meter.registers.energy_import_wh.address: 65536 "
                              "(0x10000) is not allowed; expected an address 0..65535 "
                              "(0x00..0xFFFF)")
    assert show_address("0x48") == "'0x48'"  # a quoted address stays as written


def test_check_config_of_the_example_passes(capsys):
    assert main(["check-config", "--config", str(ROOT / "config.example.yaml")]) == 0
    assert "ok (station CP001" in capsys.readouterr().out

