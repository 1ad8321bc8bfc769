"""Checks of the paths a configuration names, before anything uses them.

`cp-agent run` refuses to start, with one line naming the directory and the fix, when it
could not create its control socket (:func:`run_blockers`); `cp-agent check-config` reports
every path problem it can see (:func:`check_paths`).

The systemd unit creates two directories itself, ``/var/lib/cp-agent`` (StateDirectory=)
and ``/run/cp-agent`` (RuntimeDirectory=, which exists only while the service runs), owned
by the service user. Outside the service they are usually missing or not writable, which
says nothing about the service, so for those two :func:`check_paths` marks the problem as
``managed``: check-config shows it as a note, not an error.

The state directory is never created here: a missing one may be an unmounted data
partition, and creating it would put the journal on the wrong filesystem. The agent runs
degraded (not charging) until the database opens, see agent/degraded.py.
"""

from __future__ import annotations

import os
import pwd
import stat
from dataclasses import dataclass

from agent.config import AgentConfig

# The directories cp-agent.service creates (tests/test_setup_traps.py checks the unit).
SERVICE_STATE_DIR = "/var/lib/cp-agent"  # StateDirectory=cp-agent
SERVICE_RUNTIME_DIR = "/run/cp-agent"  # RuntimeDirectory=cp-agent
MEMORY = ":memory:"


@dataclass(frozen=True)
class PathProblem:
    key: str  # the configuration key naming the path, e.g. control.socket
    detail: str
    managed: bool = False  # in a directory the systemd unit creates and owns

    def __str__(self) -> str:
        return f"{self.key}: {self.detail}"


def _user() -> str:
    uid = os.geteuid()
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _owner(st: os.stat_result) -> str:
    try:
        return pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        return f"uid {st.st_uid}"


def _stat(path: str) -> tuple[os.stat_result | None, str | None]:
    """(stat, None), (None, "missing") or (None, why it cannot be looked at)."""
    try:
        return os.stat(path), None
    except FileNotFoundError:
        return None, "missing"
    except OSError as exc:
        return None, exc.strerror or str(exc)


def _writable_dir(path: str) -> bool:
    return os.access(path, os.W_OK | os.X_OK, effective_ids=True)


def _nearest_existing(path: str) -> str:
    while True:
        parent = os.path.dirname(path)
        if os.path.exists(path) or parent == path:
            return path
        path = parent


def control_socket_problem(path: str) -> PathProblem | None:
    """Why the control socket cannot be created at ``path``, or None."""
    key = "control.socket"
    directory = os.path.dirname(os.path.abspath(path))
    managed = directory == SERVICE_RUNTIME_DIR
    st, err = _stat(directory)
    if err == "missing":
        if managed:
            fix = ("systemd creates it via RuntimeDirectory=; outside systemd set "
                   "control.socket to a writable path or create it")
        else:
            fix = "create it, or set control.socket to a path in a writable directory"
        return PathProblem(key, f"directory {directory} does not exist ({fix})", managed)
    if st is None:
        return PathProblem(key, f"directory {directory} cannot be reached by user {_user()} "
                                f"({err})", managed)
    if not stat.S_ISDIR(st.st_mode):
        return PathProblem(key, f"{directory} is not a directory")
    if not _writable_dir(directory):
        return PathProblem(key, f"directory {directory} is not writable by user {_user()} "
                                f"(it belongs to {_owner(st)}; run as that user or set "
                                "control.socket to a path in a writable directory)", managed)
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return None
    if not stat.S_ISSOCK(mode):
        return PathProblem(key, f"{path} exists and is not a socket (cp-agent never replaces "
                                "a file it did not make)")
    return None


def storage_problem(path: str) -> PathProblem | None:
    """Why the state database cannot be opened at ``path``, or None."""
    key = "storage.path"
    if path == MEMORY:
        return None
    path = os.path.abspath(path)
    directory = os.path.dirname(path)
    managed = directory == SERVICE_STATE_DIR
    st, err = _stat(directory)
    if err == "missing":
        if managed:
            return PathProblem(key, f"directory {directory} does not exist (systemd creates it "
                                    "via StateDirectory=; outside systemd create it: mkdir -p "
                                    f"{directory}, or set storage.path to a writable place)",
                               managed)
        ancestor = _nearest_existing(directory)
        if _writable_dir(ancestor):
            how = f"create it: mkdir -p {directory}"
        else:
            how = f"user {_user()} cannot create it, {ancestor} is not writable"
        return PathProblem(key, f"directory {directory} does not exist ({how}; the agent does "
                                "not create it, and runs without charging until the database "
                                "opens)")
    if st is None:
        return PathProblem(key, f"directory {directory} cannot be reached by user {_user()} "
                                f"({err})", managed)
    if not stat.S_ISDIR(st.st_mode):
        return PathProblem(key, f"{directory} is not a directory")
    if not _writable_dir(directory):
        return PathProblem(key, f"directory {directory} is not writable by user {_user()} (it "
                                f"belongs to {_owner(st)}; SQLite writes its journal files "
                                "next to the database)", managed)
    fst, ferr = _stat(path)
    if fst is None:
        return None if ferr == "missing" else PathProblem(key, f"{path}: {ferr}", managed)
    if not stat.S_ISREG(fst.st_mode):
        return PathProblem(key, f"{path} is not a regular file")
    if not os.access(path, os.R_OK | os.W_OK, effective_ids=True):
        return PathProblem(key, f"{path} is not readable and writable by user {_user()} (it "
                                f"belongs to {_owner(fst)})", managed)
    return None


def check_paths(cfg: AgentConfig) -> list[PathProblem]:
    """Every path problem check-config can see (files the validation already read, such as
    ``ocpp.ca_file``, are checked there)."""
    found = [storage_problem(cfg.storage.path), control_socket_problem(cfg.control.socket)]
    return [p for p in found if p is not None]


def run_blockers(cfg: AgentConfig) -> list[PathProblem]:
    """What keeps `cp-agent run` from starting at all: the control socket's directory.

    A state database that cannot be opened is not among them: the agent then runs degraded
    and retries, see agent/degraded.py.
    """
    found = control_socket_problem(cfg.control.socket)
    return [found] if found is not None else []
