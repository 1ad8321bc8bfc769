"""RDM6300-style 125 kHz (EM4100) readers on a serial line, 9600 8N1.

Each read is a 14-byte frame: STX (02), ten ASCII hex digits (version byte + 32-bit tag),
two ASCII hex digits of checksum (XOR of the five data bytes), ETX (03).  The line is noisy
when the reader powers up or the antenna is near a motor, so the parser resynchronises on
STX and drops any frame whose checksum fails instead of reporting a wrong card.
"""

from __future__ import annotations

import time

from hal.drivers.base import EventSink, Monotonic
from hal.drivers.serial_port import SerialPort
from hal.drivers.tokens import ReaderDriver

STX = 0x02
ETX = 0x03
FRAME_LEN = 14
_HEX = frozenset(b"0123456789ABCDEFabcdef")


def parse_frames(buffer: bytearray) -> list[str]:
    """Consume complete frames from ``buffer``; return the tag ids (10 hex digits) whose
    checksum is right.  An incomplete frame is left in the buffer for the next read."""
    ids: list[str] = []
    while True:
        start = buffer.find(STX)
        if start < 0:
            buffer.clear()
            return ids
        del buffer[:start]
        if len(buffer) < FRAME_LEN:
            return ids
        frame = bytes(buffer[:FRAME_LEN])
        body = frame[1:13]
        if frame[13] != ETX or not set(body) <= _HEX:
            del buffer[:1]  # not a frame start after all: look for the next STX
            continue
        del buffer[:FRAME_LEN]
        data = bytes.fromhex(body[:10].decode())
        checksum = int(body[10:12], 16)
        x = 0
        for b in data:
            x ^= b
        if x == checksum:
            ids.append(body[:10].decode().upper())


class Rdm6300Reader(ReaderDriver):
    kind_name = "rdm6300"

    def __init__(self, name: str, port: SerialPort, *, sink: EventSink,
                 evse_id: int | None = None, token_type: str = "ISO14443",
                 hold_off_s: float = 2.0, read_timeout_s: float = 0.5,
                 monotonic: Monotonic = time.monotonic, required: bool = True) -> None:
        super().__init__(name, sink=sink, evse_id=evse_id, token_type=token_type,
                         hold_off_s=hold_off_s, poll_interval_s=0.0, monotonic=monotonic,
                         required=required, where=port.describe())
        self.port = port
        self.read_timeout_s = read_timeout_s
        self._buffer = bytearray()

    async def _open_device(self) -> None:
        self._buffer.clear()
        await self.port.open()

    async def _close_device(self) -> None:
        await self.port.close()

    async def _poll_once(self) -> None:
        data = await self.port.read(64, self.read_timeout_s)
        if not data:
            return
        self._buffer += data
        if len(self._buffer) > 4 * FRAME_LEN:  # garbage without STX must not pile up
            del self._buffer[:-FRAME_LEN]
        for uid in parse_frames(self._buffer):
            self._present(uid)

    async def _identify(self) -> str:
        return f"{self.port.describe()} open (the reader only speaks when a card is presented)"
