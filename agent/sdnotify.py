"""A small sd_notify(3) client, so the daemon needs no libsystemd binding on the target.

systemd hands a ``Type=notify`` service the address of a datagram socket in ``$NOTIFY_SOCKET``;
the service writes newline-separated ``KEY=VALUE`` assignments to it (``READY=1``,
``WATCHDOG=1``, ``STOPPING=1``, ``STATUS=...``).  Outside systemd (a developer's shell, a test,
a container) the variable is absent and every method here quietly does nothing, so the caller
never has to ask "am I supervised?".

Sending must never take the agent down: a watchdog ping that fails is not worth a crash, and a
crash would trip the very watchdog we failed to feed.  Send errors are therefore logged once
(at WARNING; repeats at DEBUG so a full socket cannot flood the journal) and reported as
``False``.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

log = logging.getLogger(__name__)

# pid1 reads the notify socket promptly, but a datagram send on a full queue would block; the
# event loop must not stall behind it for longer than this.
_SEND_TIMEOUT_S = 1.0


def _parse_address(value: str | None) -> str | bytes | None:
    """Turn ``$NOTIFY_SOCKET`` into something ``sendto`` accepts, or None if unusable.

    A leading ``@`` names a socket in the abstract namespace (the ``@`` stands for the NUL
    byte that the kernel expects); anything else must be an absolute filesystem path.
    ``vsock:`` addresses (used for VMs) are not supported: a charge point runs on the host.
    """
    if not value:
        return None
    if value.startswith("@"):
        if len(value) < 2:
            return None
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


class Notifier:
    """Reports the daemon's life-cycle to systemd; inert when not started by systemd.

    ``environ`` and ``pid`` exist for tests; production code constructs ``Notifier()``.
    """

    def __init__(self, environ: Mapping[str, str] | None = None, pid: int | None = None) -> None:
        env = os.environ if environ is None else environ
        self._pid = os.getpid() if pid is None else pid
        raw = env.get("NOTIFY_SOCKET")
        self._address = _parse_address(raw)
        if raw and self._address is None:
            log.warning("ignoring unsupported NOTIFY_SOCKET address %r", raw)
        self._watchdog_usec = env.get("WATCHDOG_USEC")
        self._watchdog_pid = env.get("WATCHDOG_PID")
        self._sock: socket.socket | None = None
        self._warned = False

    @property
    def enabled(self) -> bool:
        """True when there is a notify socket to talk to."""
        return self._address is not None

    # ------------------------------------------------------------------ messages

    def ready(self, status: str = "") -> bool:
        """Tell systemd start-up is complete; dependent units start and the watchdog arms."""
        fields = ["READY=1"]
        if status:
            fields.append(f"STATUS={_one_line(status)}")
        return self._send(fields)

    def watchdog(self) -> bool:
        """Feed the watchdog; systemd restarts the service if this stops for WatchdogSec."""
        return self._send(["WATCHDOG=1"])

    def stopping(self) -> bool:
        """Announce a deliberate shutdown, so the stop is not mistaken for a hang."""
        return self._send(["STOPPING=1"])

    def status(self, text: str) -> bool:
        """Set the one-line status that ``systemctl status cp-agent`` shows."""
        return self._send([f"STATUS={_one_line(text)}"])

    # ------------------------------------------------------------------ watchdog

    def watchdog_interval(self) -> float | None:
        """The watchdog timeout in seconds, or None when nobody is watching this process.

        Follows sd_watchdog_enabled(3): ``$WATCHDOG_USEC`` must be a positive integer, and
        when ``$WATCHDOG_PID`` is set it must name this process, because a child that
        inherited the environment must not believe it is the one being watched.  Without a
        notify socket pings cannot be delivered, so the watchdog is reported as off too.
        Callers should ping at half this interval (see :meth:`ping_interval`).
        """
        if not self.enabled or not self._watchdog_usec:
            return None
        try:
            usec = int(self._watchdog_usec)
        except ValueError:
            log.warning("ignoring malformed WATCHDOG_USEC=%r", self._watchdog_usec)
            return None
        if usec <= 0:
            return None
        if self._watchdog_pid:
            try:
                wpid = int(self._watchdog_pid)
            except ValueError:
                log.warning("ignoring malformed WATCHDOG_PID=%r", self._watchdog_pid)
                return None
            if wpid <= 0 or wpid != self._pid:
                return None
        return usec / 1_000_000

    def ping_interval(self) -> float | None:
        """Half the watchdog timeout: one late or lost ping must not cost a restart."""
        interval = self.watchdog_interval()
        return None if interval is None else interval / 2

    # ------------------------------------------------------------------ plumbing

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def _send(self, fields: list[str]) -> bool:
        if self._address is None:
            return False
        data = "\n".join(fields).encode()
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                sock.settimeout(_SEND_TIMEOUT_S)
                self._sock = sock
            self._sock.sendto(data, self._address)
        except OSError as exc:
            # The socket may be in a bad state (e.g. after a timeout): start afresh next time.
            self.close()
            level = logging.DEBUG if self._warned else logging.WARNING
            self._warned = True
            log.log(level, "sd_notify to %s failed: %s", self._address, exc)
            return False
        return True


def _one_line(text: str) -> str:
    """A newline in a value would start a new assignment that systemd then acts on."""
    return " ".join(text.splitlines())
