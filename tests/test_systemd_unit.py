"""The systemd unit, sysusers file and installer keep their safety properties."""

from __future__ import annotations

import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agent.control import DEFAULT_SOCKET

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "cp-agent.service"
SYSUSERS = ROOT / "systemd" / "cp-agent.sysusers.conf"
INSTALL = ROOT / "systemd" / "install.sh"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A unit-file reader: configparser cannot keep repeated keys such as DeviceAllow=.

    An empty assignment resets the list, as systemd does for list-valued settings.
    """
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"assignment outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not an assignment: {line!r}"
        values = current.setdefault(key.strip(), [])
        if value.strip():
            values.append(value.strip())
        else:
            values.clear()
            values.append("")
    return sections


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT.read_text())


@pytest.fixture(scope="module")
def service(unit: dict[str, dict[str, list[str]]]) -> dict[str, list[str]]:
    return unit["Service"]


def one(section: dict[str, list[str]], key: str) -> str:
    values = section.get(key)
    assert values, f"{key}= is not set"
    assert len(values) == 1, f"{key}= is set more than once: {values}"
    return values[0]


def seconds(value: str) -> float:
    """systemd time spans as used here: '30', '30s', '5min', '1min 30s'."""
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "ms": 0.001}
    total = 0.0
    for number, unit_ in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit_]
    return total


def test_parser_handles_repeats_and_resets() -> None:
    u = parse_unit("[S]\nA=1\nA=2\nB=x\nB=\nC=a \\\n b\n")
    assert u["S"] == {"A": ["1", "2"], "B": [""], "C": ["a  b"]}


def test_type_notify_with_watchdog(service: dict[str, list[str]]) -> None:
    assert one(service, "Type") == "notify"
    assert one(service, "NotifyAccess") == "main"
    assert 5 <= seconds(one(service, "WatchdogSec")) <= 120


def test_restarts_on_failure_without_hammering(
    unit: dict[str, dict[str, list[str]]], service: dict[str, list[str]]
) -> None:
    assert one(service, "Restart") == "on-failure"
    assert seconds(one(service, "RestartSec")) >= 1
    # StartLimit* belong in [Unit]; in [Service] systemd ignores them with a warning.
    assert "StartLimitIntervalSec" not in service
    assert seconds(one(unit["Unit"], "StartLimitIntervalSec")) > 0
    assert int(one(unit["Unit"], "StartLimitBurst")) >= 3


def test_clean_stop_has_time(service: dict[str, list[str]]) -> None:
    assert one(service, "KillSignal") == "SIGTERM"
    assert seconds(one(service, "TimeoutStopSec")) >= 30


def test_exec_start_runs_the_daemon_with_the_config(service: dict[str, list[str]]) -> None:
    argv = shlex.split(one(service, "ExecStart"))
    assert argv == [
        "/opt/cp-agent/venv/bin/cp-agent",
        "run",
        "--config",
        "/etc/cp-agent/config.yaml",
    ]


def test_runs_as_dedicated_user_with_device_groups(service: dict[str, list[str]]) -> None:
    assert one(service, "User") == "cp-agent"
    groups = " ".join(service["SupplementaryGroups"]).split()
    assert {"gpio", "dialout", "i2c"} <= set(groups)
    assert "root" not in groups


def test_directories_match_the_agent_defaults(service: dict[str, list[str]]) -> None:
    assert one(service, "StateDirectory") == "cp-agent"
    assert one(service, "RuntimeDirectory") == "cp-agent"
    assert one(service, "ConfigurationDirectory") == "cp-agent"
    # The control socket the ctl tool looks for by default lives in the runtime directory.
    assert os.path.dirname(DEFAULT_SOCKET) == "/run/cp-agent"
    # Group members must be able to reach the socket, outsiders not.
    assert one(service, "RuntimeDirectoryMode") == "0750"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictNamespaces", "yes"),
        ("LockPersonality", "yes"),
        ("SystemCallArchitectures", "native"),
        ("CapabilityBoundingSet", ""),
        ("DevicePolicy", "closed"),
    ],
)
def test_hardening(service: dict[str, list[str]], key: str, value: str) -> None:
    assert one(service, key) == value


def test_address_families(service: dict[str, list[str]]) -> None:
    families = one(service, "RestrictAddressFamilies").split()
    assert sorted(families) == sorted(["AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"])


def test_devices_are_allow_listed_not_hidden(service: dict[str, list[str]]) -> None:
    # PrivateDevices=yes would hide /dev/gpiochip*, the serial ports and /dev/i2c-*.
    assert service.get("PrivateDevices", ["no"])[-1] in ("no", "false", "0", "off")
    allowed = {}
    for entry in service["DeviceAllow"]:
        spec, _, access = entry.partition(" ")
        # Syntax: a /dev path, or char-/block- plus a /proc/devices name; access from rwm.
        assert re.fullmatch(r"(/dev/\S+|(char|block)-\S+)", spec), entry
        assert access and set(access) <= set("rwm"), entry
        assert "m" not in access, f"{entry}: the agent never creates device nodes"
        allowed[spec] = access
    for group in ("char-gpiochip", "char-ttyUSB", "char-ttyAMA", "char-ttyS", "char-i2c"):
        assert allowed.get(group) == "rw", group
    assert "r" in allowed.get("char-input", "")


def test_memory_deny_write_execute_is_on(service: dict[str, list[str]]) -> None:
    # test_dependencies_work_under_memory_deny_write_execute shows the setting is safe.
    assert one(service, "MemoryDenyWriteExecute") == "yes"


def test_install_section(unit: dict[str, dict[str, list[str]]]) -> None:
    assert one(unit["Install"], "WantedBy") == "multi-user.target"


# ---------------------------------------------------------------- systemd's own checks


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    # verify insists that ExecStart's binary exists; the venv does not on a dev machine.
    text = UNIT.read_text().replace(
        "ExecStart=/opt/cp-agent/venv/bin/cp-agent ", "ExecStart=/bin/true "
    )
    copy = tmp_path / "cp-agent.service"
    copy.write_text(text)
    proc = subprocess.run(
        ["systemd-analyze", "verify", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # verify exits 0 even for unknown keys and unparsable values; it only prints them.
    complaints = [
        line for line in (proc.stdout + proc.stderr).splitlines() if copy.name in line
    ]
    assert proc.returncode == 0, proc.stderr
    assert complaints == []


@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="no systemd-sysusers")
def test_sysusers_creates_user_and_every_supplementary_group(
    tmp_path: Path, service: dict[str, list[str]]
) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (etc / "group").write_text("root:x:0:\n")
    proc = subprocess.run(
        ["systemd-sysusers", f"--root={tmp_path}", str(SYSUSERS)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    passwd = [line.split(":") for line in (etc / "passwd").read_text().splitlines()]
    users = {fields[0]: fields for fields in passwd}
    groups = {line.split(":")[0] for line in (etc / "group").read_text().splitlines()}
    assert "cp-agent" in users
    assert users["cp-agent"][5] == "/var/lib/cp-agent"
    assert users["cp-agent"][6].endswith("nologin")
    assert int(users["cp-agent"][2]) < 1000  # a system account
    needed = set(" ".join(service["SupplementaryGroups"]).split()) | {"cp-agent"}
    assert needed <= groups


def test_install_script_parses() -> None:
    proc = subprocess.run(
        ["bash", "-n", str(INSTALL)], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(shutil.which("shellcheck") is None, reason="no shellcheck")
def test_install_script_is_shellcheck_clean() -> None:
    proc = subprocess.run(
        ["shellcheck", str(INSTALL)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout


def test_install_script_refuses_to_run_unprivileged() -> None:
    if os.geteuid() == 0:
        pytest.skip("running as root: the script would really install")
    proc = subprocess.run(["bash", str(INSTALL)], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert "run as root" in proc.stderr


def test_install_script_rejects_unknown_options() -> None:
    # Option parsing happens before the root check, so this is safe to run as root too.
    proc = subprocess.run(
        ["bash", str(INSTALL), "--bogus"], capture_output=True, text=True, timeout=30
    )
    assert proc.returncode == 2
    assert "usage:" in proc.stderr


# ---------------------------------------------------------------- MemoryDenyWriteExecute

# systemd implements MemoryDenyWriteExecute=yes as a seccomp filter: mmap with PROT_WRITE
# and PROT_EXEC together, mprotect/pkey_mprotect adding PROT_EXEC, and shmat with SHM_EXEC
# fail with EPERM. The child below installs the same filter on itself, checks that it
# bites, then exercises the dependencies that ship native code.
_SYSCALLS = {
    # machine: (AUDIT_ARCH_*, mmap, mprotect, pkey_mprotect, shmat)
    "x86_64": (0xC000003E, 9, 10, 329, 30),
    "aarch64": (0xC00000B7, 222, 226, 288, 196),
    "armv7l": (0x40000028, 192, 125, 394, 305),  # mmap2 on 32-bit ARM
}

_CHILD = textwrap.dedent(
    """
    import ctypes, errno, mmap, sys
    arch, nr_mmap, nr_mprotect, nr_pkey_mprotect, nr_shmat = map(int, sys.argv[1:6])

    class Insn(ctypes.Structure):
        _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8),
                    ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]

    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Insn))]

    LD, JEQ, AND, RET = 0x20, 0x15, 0x54, 0x06
    ALLOW, DENY, KILL = 0x7FFF0000, 0x00050000 | errno.EPERM, 0x80000000
    NR, ARCH, ARG2 = 0, 4, 16 + 2 * 8  # offsets in struct seccomp_data

    def deny_if(nr, mask, want):
        return [(JEQ, 0, 5, nr), (LD, 0, 0, ARG2), (AND, 0, 0, mask),
                (JEQ, 0, 1, want), (RET, 0, 0, DENY), (RET, 0, 0, ALLOW)]

    prog = [(LD, 0, 0, ARCH), (JEQ, 1, 0, arch), (RET, 0, 0, KILL), (LD, 0, 0, NR)]
    prog += deny_if(nr_mmap, 0x6, 0x6)           # PROT_WRITE | PROT_EXEC
    prog += deny_if(nr_mprotect, 0x4, 0x4)       # PROT_EXEC
    prog += deny_if(nr_pkey_mprotect, 0x4, 0x4)
    prog += deny_if(nr_shmat, 0o100000, 0o100000)  # SHM_EXEC
    prog += [(RET, 0, 0, ALLOW)]
    insns = (Insn * len(prog))(*[Insn(*i) for i in prog])

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p,
                           ctypes.c_ulong, ctypes.c_ulong]
    if libc.prctl(38, 1, None, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        sys.exit(77)
    fprog = Prog(len(prog), insns)
    if libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:  # PR_SET_SECCOMP, FILTER
        sys.exit(77)

    try:  # the filter must bite, or this test proves nothing
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        print("W+X mapping was allowed: filter not active")
        sys.exit(3)
    except OSError as exc:
        assert exc.errno == errno.EPERM, exc

    import asyncio, json, sqlite3, ssl
    import yaml, websockets, jsonschema, ocpp.v16, ocpp.v201, pymodbus.client, serial
    import smbus2, gpiozero
    from gpiozero.pins.mock import MockFactory
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    import agent.control, agent.sdnotify, hal.mock

    key = ec.generate_private_key(ec.SECP256R1())
    sig = key.sign(b"meter value", ec.ECDSA(hashes.SHA256()))
    key.public_key().verify(sig, b"meter value", ec.ECDSA(hashes.SHA256()))
    AESGCM(AESGCM.generate_key(128)).encrypt(b"0" * 12, b"x", None)
    ssl.create_default_context()
    db = sqlite3.connect(":memory:")
    db.execute("pragma journal_mode=wal")
    yaml.load("a: 1", Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    jsonschema.validate({"a": 1}, {"type": "object"})
    cb = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(lambda x: x + 1)
    assert cb(41) == 42  # libffi closure: static trampolines, no W+X page
    asyncio.run(asyncio.sleep(0))
    print("ALL OK")
    """
)


def test_dependencies_work_under_memory_deny_write_execute() -> None:
    numbers = _SYSCALLS.get(platform.machine())
    if numbers is None:
        pytest.skip(f"no syscall table for {platform.machine()}")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, *map(str, numbers)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )
    if proc.returncode == 77:
        pytest.skip("cannot install a seccomp filter here")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ALL OK" in proc.stdout
