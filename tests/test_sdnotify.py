"""sd_notify client against real AF_UNIX datagram sockets standing in for systemd."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import uuid
from collections.abc import Iterator

import pytest

from agent.sdnotify import Notifier


@pytest.fixture
def short_dir() -> Iterator[str]:
    # pytest's tmp_path can exceed the 107-byte AF_UNIX path limit.
    d = tempfile.mkdtemp(prefix="sdn-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def path_socket(short_dir: str) -> Iterator[tuple[str, socket.socket]]:
    path = os.path.join(short_dir, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield path, sock
    sock.close()


@pytest.fixture
def abstract_socket() -> Iterator[tuple[str, socket.socket]]:
    name = f"cp-agent-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\0" + name.encode())
    sock.settimeout(5)
    yield "@" + name, sock
    sock.close()


def recv(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_messages_arrive_on_a_filesystem_socket(path_socket: tuple[str, socket.socket]) -> None:
    path, sock = path_socket
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready("connected to csms")
    assert recv(sock) == "READY=1\nSTATUS=connected to csms"
    assert n.watchdog()
    assert recv(sock) == "WATCHDOG=1"
    assert n.status("2 EVSEs, 1 charging")
    assert recv(sock) == "STATUS=2 EVSEs, 1 charging"
    assert n.stopping()
    assert recv(sock) == "STOPPING=1"
    n.close()


def test_ready_without_status_sends_only_ready(path_socket: tuple[str, socket.socket]) -> None:
    path, sock = path_socket
    n = Notifier({"NOTIFY_SOCKET": path})
    n.ready()
    assert recv(sock) == "READY=1"
    n.close()


def test_messages_arrive_on_an_abstract_socket(
    abstract_socket: tuple[str, socket.socket],
) -> None:
    name, sock = abstract_socket
    n = Notifier({"NOTIFY_SOCKET": name})
    assert n.ready()
    assert recv(sock) == "READY=1"
    assert n.watchdog()
    assert recv(sock) == "WATCHDOG=1"
    n.close()


def test_newlines_in_status_cannot_inject_assignments(
    path_socket: tuple[str, socket.socket],
) -> None:
    path, sock = path_socket
    n = Notifier({"NOTIFY_SOCKET": path})
    n.status("bad\nSTOPPING=1")
    assert recv(sock) == "STATUS=bad STOPPING=1"
    n.close()


def test_reads_the_real_environment(
    monkeypatch: pytest.MonkeyPatch, path_socket: tuple[str, socket.socket]
) -> None:
    path, sock = path_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    n = Notifier()
    assert n.watchdog_interval() == 30.0
    n.watchdog()
    assert recv(sock) == "WATCHDOG=1"
    n.close()


@pytest.mark.parametrize("env", [{}, {"NOTIFY_SOCKET": ""}, {"NOTIFY_SOCKET": "vsock:2:1234"}])
def test_outside_systemd_everything_is_a_noop(env: dict[str, str]) -> None:
    n = Notifier({**env, "WATCHDOG_USEC": "30000000"})
    assert not n.enabled
    assert n.ready("x") is False
    assert n.watchdog() is False
    assert n.stopping() is False
    assert n.status("x") is False
    assert n.watchdog_interval() is None
    assert n.ping_interval() is None


@pytest.mark.parametrize(
    ("usec", "wpid", "expected"),
    [
        ("30000000", None, 30.0),
        ("30000000", "1234", 30.0),  # our (injected) pid
        ("500000", "1234", 0.5),
        ("30000000", "999", None),  # watchdog meant for another process (our parent, say)
        ("0", None, None),
        ("-5", None, None),
        ("abc", None, None),
        ("", None, None),
        (None, None, None),
        ("30000000", "abc", None),
        ("30000000", "0", None),
    ],
)
def test_watchdog_interval_follows_sd_watchdog_enabled(
    usec: str | None, wpid: str | None, expected: float | None
) -> None:
    env = {"NOTIFY_SOCKET": "/run/systemd/notify"}
    if usec is not None:
        env["WATCHDOG_USEC"] = usec
    if wpid is not None:
        env["WATCHDOG_PID"] = wpid
    n = Notifier(env, pid=1234)
    assert n.watchdog_interval() == expected
    assert n.ping_interval() == (None if expected is None else expected / 2)


def test_send_errors_never_raise_and_warn_once(
    short_dir: str, caplog: pytest.LogCaptureFixture
) -> None:
    missing = os.path.join(short_dir, "gone")
    n = Notifier({"NOTIFY_SOCKET": missing})
    with caplog.at_level(logging.DEBUG, logger="agent.sdnotify"):
        assert n.ready() is False
        assert n.watchdog() is False
        assert n.watchdog() is False
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "sd_notify" in warnings[0].getMessage()


def test_recovers_when_the_socket_appears_later(short_dir: str) -> None:
    path = os.path.join(short_dir, "late")
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.watchdog() is False
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    try:
        assert n.watchdog() is True
        assert recv(sock) == "WATCHDOG=1"
    finally:
        sock.close()
        n.close()
