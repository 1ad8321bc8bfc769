"""Control socket: the server's defences and ``cp-agent ctl`` end to end over a real socket."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import stat
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.control import (
    EXIT_AGENT_ERROR,
    EXIT_COMMS,
    EXIT_NOT_RUNNING,
    EXIT_OK,
    EXIT_USAGE,
    ControlServer,
    ControlSocketInUse,
    Stream,
    ctl_main,
    describe_tap,
    render_status,
    render_watch,
)
from agent.testing.csms import TestCsms
from hal.interfaces import FaultKind, PilotState
from tests.conftest import AgentFactory, online

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def sock_dir() -> Iterator[str]:
    # pytest's tmp_path can exceed the 107-byte AF_UNIX path limit.
    d = tempfile.mkdtemp(prefix="ctl-", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def sock_path(sock_dir: str) -> str:
    return os.path.join(sock_dir, "control.sock")


STATUS: dict[str, Any] = {
    "station": "CP1", "link": "connected", "ocpp_version": "2.0.1",
    "registration": "Accepted", "last_error": None, "outbox": 2, "station_faults": [],
    "connected": True,
    "evses": [{
        "evse": 1, "connector": 1, "pilot": "C", "contactor": "closed",
        "status": "Charging", "connector_status": "Occupied",
        "transaction_id": "tx-1", "local_transaction_id": "tx-1", "token": "04A2B3C4",
        "energy_wh": 1234.56, "meter_wh": 5234.5, "power_w": 11040.0,
        "current_limit_a": 16.0, "max_current_a": 16.0, "limit_source": "smart_charging",
        "operative": True, "faults": [],
    }],
}


class Recorder:
    """A fake agent: records requests, answers per ``cmd`` or with a canned status."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.raise_: BaseException | None = None
        self.result: Any = None

    async def __call__(self, request: dict[str, Any]) -> Any:
        self.requests.append(request)
        if self.raise_ is not None:
            raise self.raise_
        if request["cmd"] == "status":
            return STATUS
        return self.result


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def server(sock_path: str, recorder: Recorder) -> AsyncIterator[ControlServer]:
    srv = ControlServer(sock_path, recorder)
    await srv.start()
    yield srv
    await srv.stop()


def write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def exists(path: str) -> bool:
    return os.path.exists(path)


async def ctl(argv: list[str], default_socket: str | None = None) -> int:
    # ctl_main blocks on its socket; the server needs this loop free to answer.
    return await asyncio.to_thread(ctl_main, argv, default_socket)


async def raw_exchange(path: str, data: bytes) -> list[dict[str, Any]]:
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(data)
    await writer.drain()
    writer.write_eof()
    lines = []
    async with asyncio.timeout(5):
        while line := await reader.readline():
            lines.append(json.loads(line))
    writer.close()
    return lines


# ---------------------------------------------------------------- ctl commands


@pytest.mark.parametrize(
    ("argv", "request_"),
    [
        (["status"], {"cmd": "status", "args": {}}),
        (["plug", "1"], {"cmd": "plug", "args": {"evse": 1}}),
        (["plug", "1", "--connector", "2"], {"cmd": "plug", "args": {"evse": 1, "connector": 2}}),
        (["unplug", "2"], {"cmd": "unplug", "args": {"evse": 2}}),
        (["ev", "1", "C"], {"cmd": "ev", "args": {"evse": 1, "state": "C"}}),
        (["ev", "3", "f"], {"cmd": "ev", "args": {"evse": 3, "state": "F"}}),
        (["tap", "04A2B3C4"], {"cmd": "tap", "args": {"token": "04A2B3C4"}}),
        (
            ["tap", "04A2B3C4", "--evse", "2"],
            {"cmd": "tap", "args": {"token": "04A2B3C4", "evse": 2}},
        ),
        (["fault", "1", "welded"], {"cmd": "fault", "args": {"evse": 1, "kind": "welded"}}),
        (
            ["clear-fault", "2", "over_current"],
            {"cmd": "clear-fault", "args": {"evse": 2, "kind": "over_current"}},
        ),
    ],
)
async def test_each_command_sends_its_request(
    server: ControlServer,
    recorder: Recorder,
    sock_path: str,
    argv: list[str],
    request_: dict[str, Any],
) -> None:
    assert await ctl(["--socket", sock_path, *argv]) == EXIT_OK
    assert recorder.requests == [request_]


async def test_every_fault_kind_is_accepted(
    server: ControlServer, recorder: Recorder, sock_path: str
) -> None:
    for kind in FaultKind:
        assert await ctl(["--socket", sock_path, "fault", "1", kind.value]) == EXIT_OK
    assert [r["args"]["kind"] for r in recorder.requests] == [k.value for k in FaultKind]


async def test_status_prints_pretty_json(
    server: ControlServer, sock_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await ctl(["--socket", sock_path, "status", "--json"]) == EXIT_OK
    out = capsys.readouterr().out
    assert json.loads(out) == STATUS
    assert out.count("\n") > 3  # indented, one key per line


async def test_plain_commands_are_quiet_unless_the_agent_returns_something(
    server: ControlServer, recorder: Recorder, sock_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await ctl(["--socket", sock_path, "plug", "1"]) == EXIT_OK
    assert capsys.readouterr().out == ""
    recorder.result = {"transaction": "t-1"}
    assert await ctl(["--socket", sock_path, "tap", "AB"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out) == {"transaction": "t-1"}


async def test_default_socket_is_used_without_flags(
    server: ControlServer, recorder: Recorder, sock_path: str
) -> None:
    assert await ctl(["plug", "1"], default_socket=sock_path) == EXIT_OK
    assert recorder.requests[0]["cmd"] == "plug"


async def test_without_any_default_the_agents_default_path_is_used(
    server: ControlServer, recorder: Recorder, sock_path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("agent.control.DEFAULT_SOCKET", sock_path)
    assert await ctl(["status"], default_socket=None) == EXIT_OK
    assert recorder.requests == [{"cmd": "status", "args": {}}]


# ---------------------------------------------------------------- --config


async def test_config_file_names_the_socket(
    server: ControlServer, recorder: Recorder, sock_dir: str, sock_path: str
) -> None:
    cfg = os.path.join(sock_dir, "config.yaml")
    write(cfg, f"station: {{id: CP1}}\ncontrol:\n  socket: {sock_path}\n")
    assert await ctl(["--config", cfg, "unplug", "1"], default_socket="/nonexistent") == EXIT_OK
    assert recorder.requests == [{"cmd": "unplug", "args": {"evse": 1}}]


async def test_relative_socket_in_config_is_relative_to_the_file(
    server: ControlServer, recorder: Recorder, sock_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = os.path.join(sock_dir, "config.yaml")
    write(cfg, "control:\n  socket: control.sock\n")
    monkeypatch.chdir("/")
    assert await ctl(["--config", cfg, "status"]) == EXIT_OK
    assert len(recorder.requests) == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "not found"),
        ("station: {id: CP1}\n", "control.socket"),
        ("control: {}\n", "control.socket"),
        ("control: [1, 2]\n", "control.socket"),
        ("control: {socket: [\n", "not valid YAML"),
    ],
)
async def test_config_problems_are_clear_usage_errors(
    sock_dir: str, capsys: pytest.CaptureFixture[str], content: str | None, message: str
) -> None:
    cfg = os.path.join(sock_dir, "config.yaml")
    if content is not None:
        write(cfg, content)
    assert await ctl(["--config", cfg, "status"]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert message in err
    assert cfg in err


# ---------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["plug", "0"], "EVSE must be a positive integer"),
        (["plug", "1", "--connector", "0"], "connector must be a positive integer"),
        (["plug", "-1"], "EVSE must be a positive integer"),
        (["plug", "one"], "EVSE must be a positive integer"),
        (["plug", "1.5"], "EVSE must be a positive integer"),
        (["ev", "1", "G"], "STATE must be one of A, B, C, D, E, F"),
        (["ev", "1", "AB"], "STATE must be one of"),
        (["fault", "1", "gremlins"], "KIND must be one of meter, welded"),
        (["clear-fault", "1", ""], "KIND must be one of"),
        (["tap", "  "], "TOKEN must not be empty"),
        (["tap", "AB", "--evse", "0"], "EVSE must be a positive integer"),
        (["plug"], "required"),
        (["ev", "1"], "required"),
        (["launch-missiles"], "invalid choice"),
        ([], "required"),
    ],
)
async def test_bad_arguments_never_reach_the_agent(
    server: ControlServer,
    recorder: Recorder,
    sock_path: str,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    assert await ctl(["--socket", sock_path, *argv]) == EXIT_USAGE
    assert message in capsys.readouterr().err
    assert recorder.requests == []


async def test_config_and_socket_are_exclusive(
    sock_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await ctl(["--socket", sock_path, "--config", "/x.yaml", "status"]) == EXIT_USAGE
    assert "not allowed with" in capsys.readouterr().err


async def test_help_exits_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert await ctl(["--help"]) == EXIT_OK
    assert "clear-fault" in capsys.readouterr().out


# ---------------------------------------------------------------- agent answers / absent


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (ValueError("EVSE 7 does not exist"), "EVSE 7 does not exist"),
        (KeyError("no such evse: 7"), "no such evse: 7"),
        (RuntimeError("boom"), "internal error: RuntimeError: boom"),
    ],
)
async def test_handler_errors_become_exit_1(
    server: ControlServer,
    recorder: Recorder,
    sock_path: str,
    capsys: pytest.CaptureFixture[str],
    exc: BaseException,
    message: str,
) -> None:
    recorder.raise_ = exc
    assert await ctl(["--socket", sock_path, "plug", "7"]) == EXIT_AGENT_ERROR
    captured = capsys.readouterr()
    assert captured.err.strip() == f"cp-agent ctl: {message}"
    assert captured.out == ""


async def test_server_survives_a_handler_error(
    server: ControlServer, recorder: Recorder, sock_path: str
) -> None:
    recorder.raise_ = ZeroDivisionError("x")
    assert await ctl(["--socket", sock_path, "status"]) == EXIT_AGENT_ERROR
    recorder.raise_ = None
    assert await ctl(["--socket", sock_path, "status"]) == EXIT_OK


async def test_agent_not_running_no_socket(
    sock_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await ctl(["--socket", sock_path, "status"]) == EXIT_NOT_RUNNING
    err = capsys.readouterr().err
    assert "cp-agent is not running" in err
    assert sock_path in err


async def test_agent_not_running_stale_socket(
    sock_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(sock_path)
    dead.close()  # the file stays, nobody listens: connection refused
    assert await ctl(["--socket", sock_path, "status"]) == EXIT_NOT_RUNNING
    assert "cp-agent is not running" in capsys.readouterr().err


async def test_agent_that_never_answers_is_a_comms_error(
    sock_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    release = asyncio.Event()

    async def stuck(_: dict[str, Any]) -> Any:
        await release.wait()

    srv = ControlServer(sock_path, stuck)
    await srv.start()
    try:
        assert await ctl(["--socket", sock_path, "--timeout", "0.2", "status"]) == EXIT_COMMS
        assert "did not answer" in capsys.readouterr().err
    finally:
        release.set()
        await srv.stop()


# ---------------------------------------------------------------- server defences


async def test_socket_mode_is_0660(server: ControlServer, sock_path: str) -> None:
    st = os.stat(sock_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660


async def test_oversized_request_is_rejected(
    server: ControlServer, recorder: Recorder, sock_path: str
) -> None:
    huge = json.dumps({"cmd": "tap", "args": {"token": "X" * 70_000}}).encode() + b"\n"
    reader, writer = await asyncio.open_unix_connection(sock_path)
    writer.write(huge)
    async with asyncio.timeout(5):
        line = await reader.readline()
        assert await reader.read() == b""  # and the server hung up
    writer.close()
    answer = json.loads(line)
    assert answer["ok"] is False
    assert "too large" in answer["error"]
    assert recorder.requests == []
    # A request just under the limit still goes through, and the server is still up.
    fits = json.dumps({"cmd": "tap", "args": {"token": "X" * 60_000}}).encode() + b"\n"
    [answer] = await raw_exchange(sock_path, fits)
    assert answer["ok"] is True
    assert recorder.requests[0]["args"]["token"] == "X" * 60_000


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not json\n", "not JSON"),
        (b"\xff\xfe\n", "not JSON"),
        (b"[1, 2]\n", "expected a JSON object"),
        (b'{"args": {}}\n', "'cmd' must be a non-empty string"),
        (b'{"cmd": 5}\n', "'cmd' must be a non-empty string"),
        (b'{"cmd": "plug", "args": [1]}\n', "'args' must be an object"),
    ],
)
async def test_malformed_requests_get_an_error_answer(
    server: ControlServer, recorder: Recorder, sock_path: str, data: bytes, message: str
) -> None:
    [answer] = await raw_exchange(sock_path, data)
    assert answer["ok"] is False
    assert answer["error"].startswith("bad request: ")
    assert message in answer["error"]
    assert recorder.requests == []


async def test_several_requests_on_one_connection(
    server: ControlServer, recorder: Recorder, sock_path: str
) -> None:
    data = b'{"cmd": "plug", "args": {"evse": 1}}\n\n{"cmd": "status"}\n{"cmd": "unplug"}'
    answers = await raw_exchange(sock_path, data)
    assert [a["ok"] for a in answers] == [True, True, True]
    assert answers[1]["result"]["connected"] is True
    assert [r["cmd"] for r in recorder.requests] == ["plug", "status", "unplug"]
    assert recorder.requests[1]["args"] == {}  # args may be omitted


async def test_unserialisable_result_is_an_internal_error(
    server: ControlServer, recorder: Recorder, sock_path: str
) -> None:
    recorder.result = {"when": object()}
    [answer] = await raw_exchange(sock_path, b'{"cmd": "plug"}\n')
    assert answer["ok"] is False
    assert answer["error"].startswith("internal error:")


async def test_idle_client_is_dropped_and_does_not_block_others(
    sock_path: str, recorder: Recorder
) -> None:
    srv = ControlServer(sock_path, recorder, read_timeout=0.3)
    await srv.start()
    try:
        idle_reader, idle_writer = await asyncio.open_unix_connection(sock_path)
        idle_writer.write(b'{"cmd": "plug"')  # half a request, then silence
        await idle_writer.drain()
        # While the idle client hangs around, another one is served.
        [answer] = await raw_exchange(sock_path, b'{"cmd": "status"}\n')
        assert answer["ok"] is True
        async with asyncio.timeout(5):
            assert await idle_reader.read() == b""  # server closed it
        idle_writer.close()
        assert [r["cmd"] for r in recorder.requests] == ["status"]
    finally:
        await srv.stop()


async def test_slow_handler_times_out(sock_path: str) -> None:
    never = asyncio.Event()

    async def slow(_: dict[str, Any]) -> Any:
        await never.wait()

    srv = ControlServer(sock_path, slow, handler_timeout=0.2)
    await srv.start()
    try:
        [answer] = await raw_exchange(sock_path, b'{"cmd": "status"}\n')
    finally:
        await srv.stop()
    assert answer["ok"] is False
    assert "did not finish" in answer["error"]


async def test_handler_own_timeout_error_is_not_reported_as_ours(sock_path: str) -> None:
    async def hal_timeout(_: dict[str, Any]) -> Any:
        raise TimeoutError("meter did not answer")

    srv = ControlServer(sock_path, hal_timeout, handler_timeout=30)
    await srv.start()
    try:
        [answer] = await raw_exchange(sock_path, b'{"cmd": "status"}\n')
    finally:
        await srv.stop()
    assert answer == {"ok": False, "error": "internal error: TimeoutError: meter did not answer"}


# ---------------------------------------------------------------- socket file life cycle


async def test_stale_socket_file_is_replaced(sock_path: str, recorder: Recorder) -> None:
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(sock_path)
    dead.close()
    srv = ControlServer(sock_path, recorder)
    await srv.start()
    try:
        assert await ctl(["--socket", sock_path, "plug", "1"]) == EXIT_OK
    finally:
        await srv.stop()


async def test_refuses_to_take_over_a_live_agent(
    server: ControlServer, recorder: Recorder, sock_path: str
) -> None:
    second = ControlServer(sock_path, recorder)
    with pytest.raises(ControlSocketInUse, match="already listening"):
        await second.start()
    await second.stop()  # harmless, and must not remove the first agent's socket
    assert await ctl(["--socket", sock_path, "plug", "1"]) == EXIT_OK


async def test_refuses_to_delete_a_regular_file(sock_path: str, recorder: Recorder) -> None:
    write(sock_path, "precious")
    with pytest.raises(ControlSocketInUse, match="not a socket"):
        await ControlServer(sock_path, recorder).start()
    assert read(sock_path) == "precious"


async def test_missing_directory_error_names_the_path(sock_dir: str, recorder: Recorder) -> None:
    path = os.path.join(sock_dir, "no-such-dir", "control.sock")
    with pytest.raises(OSError, match="cannot create control socket .*no-such-dir"):
        await ControlServer(path, recorder).start()


async def test_stop_unlinks_the_socket(sock_path: str, recorder: Recorder) -> None:
    srv = ControlServer(sock_path, recorder)
    await srv.start()
    assert exists(sock_path)
    await srv.stop()
    assert not exists(sock_path)
    await srv.stop()  # idempotent


async def test_stop_leaves_a_successors_socket_alone(sock_path: str, recorder: Recorder) -> None:
    first = ControlServer(sock_path, recorder)
    await first.start()
    os.unlink(sock_path)  # e.g. an operator cleaned up, and a new agent took the path
    second = ControlServer(sock_path, recorder)
    await second.start()
    try:
        await first.stop()
        assert exists(sock_path)
        assert await ctl(["--socket", sock_path, "status"]) == EXIT_OK
    finally:
        await second.stop()
    assert not exists(sock_path)


async def test_stop_with_a_client_connected_finishes(sock_path: str, recorder: Recorder) -> None:
    srv = ControlServer(sock_path, recorder, read_timeout=3600)
    await srv.start()
    reader, writer = await asyncio.open_unix_connection(sock_path)
    writer.write(b'{"cmd": "status"}\n')
    await reader.readline()  # connected and served; now idle in the server's read
    async with asyncio.timeout(5):
        await srv.stop()
        assert await reader.read() == b""
    writer.close()
    assert not exists(sock_path)


# ---------------------------------------------------------------- streaming answers


async def _stream_lines(path: str, request: bytes, count: int) -> tuple[
        list[dict[str, Any]], asyncio.StreamReader, asyncio.StreamWriter]:
    """Send ``request`` without closing our side and read ``count`` answer lines."""
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(request)
    await writer.drain()
    async with asyncio.timeout(5):
        lines = [json.loads(await reader.readline()) for _ in range(count)]
    return lines, reader, writer


class Follower:
    """A handler whose ``frames`` stream yields what the test puts, until closed."""

    def __init__(self, frames: list[dict[str, Any]] | None = None, *, follow: bool = True):
        self.frames = list(frames or [])
        self.follow = follow
        self.more: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.closed = asyncio.Event()
        self.requests: list[dict[str, Any]] = []

    async def __call__(self, request: dict[str, Any]) -> Any:
        self.requests.append(request)
        if request["cmd"] != "frames":
            return STATUS

        async def items() -> AsyncIterator[dict[str, Any]]:
            try:
                for frame in self.frames:
                    yield frame
                while self.follow:
                    yield await self.more.get()
            finally:
                self.closed.set()

        return Stream(items(), head={"frames": len(self.frames)})


def frame(n: int, direction: str = "cs->csms", kind: str = "CALL") -> dict[str, Any]:
    return {"at": f"2025-01-01T12:00:0{n}.000Z", "direction": direction, "kind": kind,
            "unique_id": f"id{n}", "action": "Heartbeat", "payload": {"n": n}}


async def test_a_stream_is_a_head_then_one_line_per_item_then_an_end(sock_path: str) -> None:
    handler = Follower([frame(1), frame(2)], follow=False)
    async with ControlServer(sock_path, handler):
        lines, reader, writer = await _stream_lines(sock_path, b'{"cmd": "frames"}\n', 4)
        async with asyncio.timeout(5):
            assert await reader.read() == b""  # and the connection closes
        writer.close()
    assert lines == [{"ok": True, "result": {"frames": 2}, "stream": True},
                     {"item": frame(1)}, {"item": frame(2)}, {"end": "end of stream"}]
    assert handler.closed.is_set()


async def test_a_stream_ends_when_the_client_leaves(sock_path: str) -> None:
    handler = Follower([frame(1)])
    async with ControlServer(sock_path, handler):
        lines, _, writer = await _stream_lines(sock_path, b'{"cmd": "frames"}\n', 2)
        assert lines[1] == {"item": frame(1)}
        writer.close()  # Ctrl-C on the client
        await asyncio.wait_for(handler.closed.wait(), 5)  # the follower is released
        [answer] = await raw_exchange(sock_path, b'{"cmd": "status"}\n')  # still serving
        assert answer["ok"] is True


async def test_a_stream_ends_with_an_end_line_when_the_agent_stops(sock_path: str) -> None:
    handler = Follower()
    srv = ControlServer(sock_path, handler)
    await srv.start()
    try:
        lines, reader, writer = await _stream_lines(sock_path, b'{"cmd": "frames"}\n', 1)
        assert lines[0]["stream"] is True
        stopping = asyncio.create_task(srv.stop())
        async with asyncio.timeout(5):
            assert json.loads(await reader.readline()) == {"end": "the agent is stopping"}
            assert await reader.read() == b""
            await stopping
        writer.close()
        assert handler.closed.is_set()
    finally:
        await srv.stop()


async def test_ctl_frames_prints_one_line_per_frame(
    sock_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    handler = Follower([frame(1), frame(2, "csms->cs", "CALLRESULT")], follow=False)
    async with ControlServer(sock_path, handler):
        assert await ctl(["--socket", sock_path, "frames", "--limit", "2"]) == EXIT_OK
        out = capsys.readouterr().out.splitlines()
        assert await ctl(["--socket", sock_path, "frames", "--json"]) == EXIT_OK
        as_json = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert out == ['2025-01-01T12:00:01.000Z -> CALL Heartbeat id1 {"n":1}',
                   '2025-01-01T12:00:02.000Z <- CALLRESULT Heartbeat id2 {"n":2}']
    assert as_json == [frame(1), frame(2, "csms->cs", "CALLRESULT")]
    assert handler.requests[0] == {"cmd": "frames", "args": {"limit": 2, "follow": False}}
    assert handler.requests[1]["args"] == {"limit": 50, "follow": False}


async def _ctl_process(sock_path: str, *args: str) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "ctl", "--socket", sock_path, *args, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def _line(proc: asyncio.subprocess.Process) -> str:
    assert proc.stdout is not None
    return (await asyncio.wait_for(proc.stdout.readline(), 20)).decode().rstrip("\n")


async def _interrupt(proc: asyncio.subprocess.Process) -> tuple[int, str]:
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def test_ctl_frames_follow_streams_until_ctrl_c(sock_path: str) -> None:
    handler = Follower([frame(1)])
    async with ControlServer(sock_path, handler):
        proc = await _ctl_process(sock_path, "frames", "--follow")
        try:
            assert "CALL Heartbeat id1" in await _line(proc)
            await handler.more.put(frame(2))  # a frame exchanged while following
            assert "CALL Heartbeat id2" in await _line(proc)
            code, err = await _interrupt(proc)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert code == EXIT_OK, err
        assert "Traceback" not in err
        await asyncio.wait_for(handler.closed.wait(), 5)  # the agent let go of the follower
    assert handler.requests[0]["args"] == {"limit": 50, "follow": True}


# ---------------------------------------------------------------- the human status, watch


def test_status_reads_like_a_station() -> None:
    text = render_status(STATUS)
    assert text.splitlines() == [
        "station CP1: link connected, OCPP 2.0.1, registration Accepted, outbox 2",
        "EVSE 1: Occupied (Charging)",
        "  pilot C, contactor closed",
        "  offered 16 A, limit 16 A (smart_charging)",
        "  power 11040 W, energy 1234.6 Wh, meter 5234.5 Wh",
        "  token 04A2B3C4, transaction tx-1",
        "  faults: none",
    ]
    idle = {"station": "CP2", "link": "disconnected", "ocpp_version": None,
            "registration": None, "last_error": "connection refused", "outbox": 0,
            "station_faults": ["reader"], "settled": False,
            "evses": [{"evse": 2, "pilot": "A", "contactor": "open", "status": "Faulted",
                       "connector_status": "Faulted", "transaction_id": 7,
                       "local_transaction_id": "ab12", "token": None, "energy_wh": None,
                       "meter_wh": None, "power_w": None, "current_limit_a": 0.0,
                       "max_current_a": 32.0, "limit_source": "evse", "operative": False,
                       "faults": ["welded", "meter"]}]}
    text = render_status(idle)
    assert "station CP2: link disconnected, registration -, outbox 0" in text
    assert "  last error: connection refused" in text
    assert "  station faults: reader" in text
    assert "EVSE 2: Faulted, inoperative" in text
    assert "  offered 0 A, limit 32 A (evse)" in text
    assert "  power -, energy -, meter -" in text
    assert "  token -, transaction 7 (local ab12)" in text
    assert "  faults: welded, meter" in text
    assert text.endswith("(the agent was still reacting when it answered)")


async def test_ctl_status_is_for_people_unless_json_is_asked(
    server: ControlServer, sock_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await ctl(["--socket", sock_path, "status"]) == EXIT_OK
    assert capsys.readouterr().out == render_status(STATUS) + "\n"


def test_watch_screen() -> None:
    screen = render_watch(STATUS, None, "12:00:00")
    assert screen.startswith(render_status(STATUS))
    assert screen.endswith("12:00:00  (Ctrl-C to quit)")
    gone = render_watch(None, "cp-agent is not running (no control socket at /x)", "12:00:02")
    assert gone.startswith("cp-agent ctl: cp-agent is not running")


async def test_watch_redraws_until_ctrl_c(server: ControlServer, recorder: Recorder,
                                          sock_path: str) -> None:
    proc = await _ctl_process(sock_path, "watch", "--interval", "0.05")
    try:
        screens = 0
        while screens < 2:  # redrawn, not printed once
            if (await _line(proc)).startswith("EVSE 1: Occupied (Charging)"):
                screens += 1
        code, err = await _interrupt(proc)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert code == EXIT_OK, err
    assert "Traceback" not in err
    assert {r["cmd"] for r in recorder.requests} == {"status"}


# ---------------------------------------------------------------- outcomes against an agent


def test_tap_outcomes_in_words() -> None:
    assert describe_tap({"token": "A", "result": "authorized", "evse": 1}) == (
        "A: authorized on EVSE 1", True)
    assert describe_tap({"token": "A", "result": "stopped", "evse": 2}) == (
        "A: stopped the session on EVSE 2", True)
    assert describe_tap({"token": "B", "result": "rejected", "reason": "Blocked (cache)"}) == (
        "B: rejected: Blocked (cache)", False)
    assert describe_tap({"token": "C", "result": "ignored", "reason": "no EVSE can take it"}) \
        == ("C: ignored: no EVSE can take it", False)
    assert describe_tap({"token": "D", "result": "pending"})[1] is False


async def _agent(make_agent: AgentFactory, csms: TestCsms) -> str:
    agent = await make_agent()
    await online(agent, csms)
    return agent.cfg.control.socket


async def test_tap_says_what_became_of_the_card(
    csms: TestCsms, make_agent: AgentFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    csms.authorize = {"GOOD": "Accepted"}  # any other card is Invalid
    sock = await _agent(make_agent, csms)
    assert await ctl(["--socket", sock, "plug", "1"]) == EXIT_OK
    assert "EVSE 1: Preparing" in capsys.readouterr().out

    assert await ctl(["--socket", sock, "tap", "BAD"]) == EXIT_AGENT_ERROR
    assert capsys.readouterr().out.splitlines()[0] == "BAD: rejected: Invalid (online)"
    assert await ctl(["--socket", sock, "tap", "BAD", "--json"]) == EXIT_AGENT_ERROR
    answer = json.loads(capsys.readouterr().out)
    assert answer["tap"] == {"token": "BAD", "result": "rejected", "reason": "Invalid (online)",
                             "evse": None}

    assert await ctl(["--socket", sock, "tap", "GOOD"]) == EXIT_OK
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "GOOD: authorized on EVSE 1"
    assert "  token GOOD, transaction" in "\n".join(out)
    await csms.wait_for("StartTransaction", station_id="CP1")

    assert await ctl(["--socket", sock, "tap", "GOOD"]) == EXIT_OK
    assert capsys.readouterr().out.startswith("GOOD: stopped the session")
    # The EV is still plugged into the finished session: no EVSE can take a card now.
    assert await ctl(["--socket", sock, "tap", "OTHER"]) == EXIT_AGENT_ERROR
    assert capsys.readouterr().out.startswith("OTHER: ignored: no EVSE can take it")


async def test_clearing_a_fault_that_is_not_raised_is_refused(
    csms: TestCsms, make_agent: AgentFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    sock = await _agent(make_agent, csms)
    assert await ctl(["--socket", sock, "clear-fault", "1", "welded"]) == EXIT_AGENT_ERROR
    assert capsys.readouterr().err.strip() == (
        "cp-agent ctl: no welded fault is raised on EVSE 1: nothing to clear")
    assert await ctl(["--socket", sock, "fault", "1", "over_current"]) == EXIT_OK
    assert "  faults: over_current" in capsys.readouterr().out
    assert await ctl(["--socket", sock, "clear-fault", "1", "over_current"]) == EXIT_OK
    assert "  faults: none" in capsys.readouterr().out
    # The shared reader is the station's (EVSE 0).
    assert await ctl(["--socket", sock, "fault", "0", "reader"]) == EXIT_OK
    assert "  station faults: reader" in capsys.readouterr().out
    assert await ctl(["--socket", sock, "clear-fault", "0", "reader"]) == EXIT_OK
    assert "station faults" not in capsys.readouterr().out
    assert await ctl(["--socket", sock, "clear-fault", "0", "reader"]) == EXIT_AGENT_ERROR
    assert "no reader fault is raised on the station" in capsys.readouterr().err


async def test_ev_asking_for_energy_that_is_not_offered_gets_a_warning(
    csms: TestCsms, make_agent: AgentFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    sock = await _agent(make_agent, csms)
    assert await ctl(["--socket", sock, "ev", "1", "C"]) == EXIT_OK  # a valid bench step
    captured = capsys.readouterr()
    assert "  pilot B, contactor open" in captured.out  # the EV waits for an offer
    assert "warning: EVSE 1 offers no current (no session authorized)" in captured.err
    assert await ctl(["--socket", sock, "ev", "1", "B"]) == EXIT_OK
    assert "warning" not in capsys.readouterr().err


async def test_frames_of_a_running_agent(
    csms: TestCsms, make_agent: AgentFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    sock = await _agent(make_agent, csms)
    assert await ctl(["--socket", sock, "frames"]) == EXIT_OK
    out = capsys.readouterr().out
    assert " -> CALL BootNotification " in out
    assert " <- CALLRESULT BootNotification " in out
    assert await ctl(["--socket", sock, "frames", "--limit", "1"]) == EXIT_OK
    assert len(capsys.readouterr().out.splitlines()) == 1


async def test_fault_and_ev_help_list_their_choices(capsys: pytest.CaptureFixture[str]) -> None:
    assert await ctl(["fault", "-h"]) == EXIT_OK
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps the help
    assert all(kind.value in out for kind in FaultKind), out
    assert await ctl(["ev", "-h"]) == EXIT_OK
    out = " ".join(capsys.readouterr().out.split())
    assert ", ".join(s.value for s in PilotState) in out
