"""USB "keyboard wedge" RFID readers: they type the card number followed by Enter.

Read through evdev (an optional extra: ``pip install 'cp-agent[evdev]'``) with the device
grabbed, so the digits do not also land on a console login prompt.  Only the key codes are
needed (Linux input-event-codes.h, a stable ABI), so the decoding does not depend on evdev
and runs in tests with a fake device.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import time
from collections.abc import Callable
from typing import Any

from hal.drivers.base import DriverError, EventSink, Monotonic, PortUnavailable
from hal.drivers.tokens import ReaderDriver

EV_KEY = 1
KEY_DOWN = 1
ENTER_CODES = frozenset({28, 96})  # KEY_ENTER, KEY_KPENTER

_ROWS = {2: "1234567890", 16: "QWERTYUIOP", 30: "ASDFGHJKL", 44: "ZXCVBNM"}
KEYMAP: dict[int, str] = {code + i: ch for code, row in _ROWS.items() for i, ch in enumerate(row)}
KEYMAP.update({71: "7", 72: "8", 73: "9", 75: "4", 76: "5", 77: "6", 79: "1", 80: "2", 81: "3",
               82: "0"})  # keypad digits

DeviceOpener = Callable[[str], Any]


def _open_evdev(path: str) -> Any:
    try:
        import evdev  # optional extra
    except ImportError as exc:
        raise PortUnavailable("the 'evdev' package is not installed "
                              "(pip install 'cp-agent[evdev]')") from exc
    try:
        return evdev.InputDevice(path)
    except FileNotFoundError as exc:
        raise PortUnavailable(f"{path} does not exist: reader unplugged or wrong name "
                              "(see ls /dev/input/by-id/)") from exc
    except PermissionError as exc:
        raise PortUnavailable(f"permission denied on {path}: add the service user to "
                              "group 'input'") from exc


class KeyboardWedgeReader(ReaderDriver):
    kind_name = "keyboard"

    def __init__(self, name: str, device_path: str, *, sink: EventSink,
                 evse_id: int | None = None, token_type: str = "ISO14443",
                 hold_off_s: float = 2.0, grab: bool = True, opener: DeviceOpener | None = None,
                 read_timeout_s: float = 1.0, monotonic: Monotonic = time.monotonic,
                 required: bool = True) -> None:
        super().__init__(name, sink=sink, evse_id=evse_id, token_type=token_type,
                         hold_off_s=hold_off_s, poll_interval_s=0.0, monotonic=monotonic,
                         required=required, where=device_path)
        self.device_path = device_path
        self.grab = grab
        self.read_timeout_s = read_timeout_s
        self._opener = opener or _open_evdev
        self._dev: Any = None
        self._typed: list[str] = []

    async def _open_device(self) -> None:
        self._typed.clear()
        try:
            dev = await asyncio.wait_for(asyncio.to_thread(self._opener, self.device_path),
                                         timeout=5.0)
        except TimeoutError as exc:
            raise PortUnavailable(f"{self.device_path}: opening timed out") from exc
        except OSError as exc:
            raise PortUnavailable(f"{self.device_path}: {exc.strerror or exc}") from exc
        if self.grab:
            try:
                dev.grab()
            except OSError as exc:
                with contextlib.suppress(Exception):
                    dev.close()
                raise PortUnavailable(f"{self.device_path}: cannot grab it (another program "
                                      f"holds it: {exc.strerror or exc})") from exc
        self._dev = dev

    async def _close_device(self) -> None:
        dev, self._dev = self._dev, None
        if dev is not None:
            with contextlib.suppress(Exception):
                if self.grab:
                    dev.ungrab()
            with contextlib.suppress(Exception):
                dev.close()

    async def _poll_once(self) -> None:
        if self._dev is None:
            raise DriverError(f"{self.device_path}: not open")
        try:
            events = await asyncio.wait_for(self._dev.async_read(), timeout=self.read_timeout_s)
        except TimeoutError:
            return
        except OSError as exc:
            if exc.errno == errno.ENODEV:
                raise DriverError(f"{self.device_path}: reader unplugged") from exc
            raise DriverError(f"{self.device_path}: {exc.strerror or exc}") from exc
        for ev in events:
            self.feed(ev.type, ev.code, ev.value)

    def feed(self, ev_type: int, code: int, value: int) -> None:
        """Take one input event; a complete line becomes a token."""
        if ev_type != EV_KEY or value != KEY_DOWN:
            return
        if code in ENTER_CODES:
            uid, self._typed = "".join(self._typed), []
            if uid:
                self._present(uid)
            return
        ch = KEYMAP.get(code)
        if ch is not None and len(self._typed) < 64:
            self._typed.append(ch)

    async def _identify(self) -> str:
        name = getattr(self._dev, "name", "") if self._dev is not None else ""
        return f"input device open{': ' + name if name else ''}"
