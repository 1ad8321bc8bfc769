"""NXP PN532 NFC reader on I2C (address 0x24), polled for ISO 14443-A cards.

Frames (PN532 user manual, 6.2): ``00 00 FF LEN LCS TFI PD0..PDn DCS 00`` with
LEN + LCS = 0 and TFI + sum(PD) + DCS = 0 (mod 256); TFI is D4 host->PN532 and D5 back,
and the answer's command code is the request's + 1.  The PN532 first answers every command
with an ACK frame ``00 00 FF 00 FF 00``.  On I2C every read starts with a status byte whose
bit 0 says "a frame is ready", so the host polls that byte before reading a frame.

Start-up: GetFirmwareVersion (02, proves it is a PN532), SAMConfiguration (14: normal mode,
no SAM), RFConfiguration item 5 (32 05: few passive-activation retries, so that
InListPassiveTarget returns "no card" promptly instead of waiting for one).  Polling:
InListPassiveTarget (4A 01 00: one target, 106 kbps type A), whose answer carries the UID.
"""

from __future__ import annotations

import asyncio
import time

from hal.drivers.base import DeviceRejected, EventSink, Monotonic, NoAnswer
from hal.drivers.i2c import I2cBus
from hal.drivers.tokens import ReaderDriver

PN532_I2C_ADDRESS = 0x24
TFI_HOST = 0xD4
TFI_PN532 = 0xD5
ACK_FRAME = bytes([0x00, 0x00, 0xFF, 0x00, 0xFF, 0x00])

CMD_GET_FIRMWARE_VERSION = 0x02
CMD_SAM_CONFIGURATION = 0x14
CMD_RF_CONFIGURATION = 0x32
CMD_IN_LIST_PASSIVE_TARGET = 0x4A

RESPONSE_READ_LEN = 64  # status byte + the longest frame we expect (UID + ATS)


class FrameError(DeviceRejected):
    """A frame with a bad start code, length or checksum."""


def build_frame(payload: bytes) -> bytes:
    """Wrap ``payload`` (TFI + command + parameters) in a normal information frame."""
    if not 1 <= len(payload) <= 254:
        raise ValueError("payload must be 1..254 bytes")
    length = len(payload)
    return (bytes([0x00, 0x00, 0xFF, length, (-length) & 0xFF]) + payload
            + bytes([(-sum(payload)) & 0xFF, 0x00]))


def parse_frame(data: bytes) -> bytes:
    """Return the payload (TFI onwards) of the first frame in ``data``."""
    start = data.find(b"\x00\xff")
    if start < 0 or len(data) < start + 4:
        raise FrameError(f"no PN532 frame in {data[:16].hex(' ')}")
    length, lcs = data[start + 2], data[start + 3]
    if (length + lcs) & 0xFF:
        raise FrameError(f"PN532 frame length checksum wrong ({length:#04x}/{lcs:#04x})")
    if length == 0:
        raise FrameError("PN532 sent an ACK where a response was expected")
    if length == 0xFF:
        raise FrameError("PN532 extended frames are not supported")
    body = data[start + 4:start + 4 + length]
    if len(body) != length or len(data) < start + 5 + length:
        raise FrameError("PN532 frame truncated")
    dcs = data[start + 4 + length]
    if (sum(body) + dcs) & 0xFF:
        raise FrameError("PN532 frame data checksum wrong")
    if body == b"\x7f":
        raise FrameError("PN532 reported a syntax error in our command")
    return body


def parse_target_uid(data: bytes) -> str | None:
    """UID from InListPassiveTarget's answer data (after D5 4B), or None when no card."""
    if not data or data[0] == 0:
        return None
    # NbTg, Tg, SENS_RES(2), SEL_RES(1), NFCIDLength, NFCID1...
    if len(data) < 6:
        raise FrameError("InListPassiveTarget answer too short")
    uid_len = data[5]
    uid = data[6:6 + uid_len]
    if len(uid) != uid_len or uid_len == 0:
        raise FrameError("InListPassiveTarget answer truncated UID")
    return uid.hex().upper()


class Pn532Reader(ReaderDriver):
    kind_name = "pn532"

    def __init__(self, name: str, bus: I2cBus, *, sink: EventSink,
                 address: int = PN532_I2C_ADDRESS, evse_id: int | None = None,
                 token_type: str = "ISO14443", hold_off_s: float = 2.0,
                 poll_interval_s: float = 0.25, command_timeout_s: float = 1.0,
                 monotonic: Monotonic = time.monotonic, required: bool = True) -> None:
        super().__init__(name, sink=sink, evse_id=evse_id, token_type=token_type,
                         hold_off_s=hold_off_s, poll_interval_s=poll_interval_s,
                         monotonic=monotonic, required=required,
                         where=f"{address:#04x} on {bus.describe()}")
        self.bus = bus
        self.address = address
        self.command_timeout_s = command_timeout_s
        self.firmware: tuple[int, int] | None = None
        self._cmd_lock = asyncio.Lock()

    async def _wait_ready(self, what: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.command_timeout_s
        while True:
            status = await self.bus.read(self.address, 1)
            if status and status[0] & 0x01:
                return
            if loop.time() >= deadline:
                raise NoAnswer(f"PN532 at {self.address:#04x}: no {what} within "
                               f"{self.command_timeout_s:g} s")
            await asyncio.sleep(0.005)  # the PN532's own processing time

    async def command(self, cmd: int, params: bytes = b"") -> bytes:
        """Send one command and return the answer's data (after D5, cmd+1)."""
        async with self._cmd_lock:
            await self.bus.write(self.address, build_frame(bytes([TFI_HOST, cmd]) + params))
            await self._wait_ready("ACK")
            ack = await self.bus.read(self.address, 1 + len(ACK_FRAME))
            if ack[1:] != ACK_FRAME:
                raise DeviceRejected(f"PN532 did not acknowledge command {cmd:#04x} "
                                     f"(got {ack[1:].hex(' ')})")
            await self._wait_ready("answer")
            raw = await self.bus.read(self.address, RESPONSE_READ_LEN)
            body = parse_frame(raw[1:])
            if len(body) < 2 or body[0] != TFI_PN532 or body[1] != cmd + 1:
                raise DeviceRejected(f"PN532 answered {body[:2].hex(' ')} to command {cmd:#04x}")
            return body[2:]

    async def _open_device(self) -> None:
        await self.bus.open()
        fw = await self.command(CMD_GET_FIRMWARE_VERSION)
        if len(fw) < 4 or fw[0] != 0x32:
            raise DeviceRejected(f"device at {self.address:#04x} is not a PN532 "
                                 f"(firmware answer {fw.hex(' ')})")
        self.firmware = (fw[1], fw[2])
        await self.command(CMD_SAM_CONFIGURATION, bytes([0x01, 0x14, 0x01]))
        # MaxRetries: ATR_REQ 0xFF, PSL_REQ 1, passive activation 2
        await self.command(CMD_RF_CONFIGURATION, bytes([0x05, 0xFF, 0x01, 0x02]))

    async def _close_device(self) -> None:
        """The bus is shared with other devices; nothing of ours to release."""

    async def _poll_once(self) -> None:
        data = await self.command(CMD_IN_LIST_PASSIVE_TARGET, bytes([0x01, 0x00]))
        uid = parse_target_uid(data)
        if uid is not None:
            self._present(uid)

    async def _identify(self) -> str:
        if self.firmware is None:
            return "PN532 answers"
        return f"PN532 firmware {self.firmware[0]}.{self.firmware[1]}"
