"""Token readers: PN532 on a fake I2C bus speaking its frame protocol, RDM6300 on a pty,
keyboard wedge on a fake evdev device; debouncing; readers that disappear."""

from __future__ import annotations

import asyncio
import os

import pytest
from halsim import FakeInputDevice, FakePn532, FakeSMBus, Pty, pn532_frame, wait_until

from hal.drivers.base import DeviceRejected
from hal.drivers.i2c import I2cBus
from hal.drivers.keyboard_wedge import KeyboardWedgeReader
from hal.drivers.pn532 import (
    CMD_IN_LIST_PASSIVE_TARGET,
    CMD_RF_CONFIGURATION,
    CMD_SAM_CONFIGURATION,
    FrameError,
    Pn532Reader,
    build_frame,
    parse_frame,
    parse_target_uid,
)
from hal.drivers.rdm6300 import Rdm6300Reader, parse_frames
from hal.drivers.serial_port import SerialPort
from hal.drivers.tokens import Debouncer
from hal.interfaces import FaultCleared, FaultKind, FaultRaised, TokenPresented


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


# ------------------------------------------------------------------ debouncing


def test_debouncer():
    clock = Clock()
    d = Debouncer(2.0, clock)
    assert d.accept("AA")
    clock.t += 0.25
    assert not d.accept("AA")  # still lying on the antenna
    clock.t += 10
    assert d.accept("AA")  # tapped again much later
    assert d.accept("BB")  # another card at once
    assert d.accept("AA")
    for _ in range(20):  # a card left on the reader, polled 4x a second: reported once
        clock.t += 0.25
        assert not d.accept("AA")


# ------------------------------------------------------------------ PN532 frames


def test_pn532_frame_round_trip():
    frame = build_frame(bytes([0xD4, 0x4A, 0x01, 0x00]))
    assert frame == bytes([0x00, 0x00, 0xFF, 0x04, 0xFC, 0xD4, 0x4A, 0x01, 0x00, 0xE1, 0x00])
    assert parse_frame(frame) == bytes([0xD4, 0x4A, 0x01, 0x00])
    assert frame == pn532_frame(bytes([0xD4, 0x4A, 0x01, 0x00]))  # agrees with the fake


@pytest.mark.parametrize("bad", [
    bytes([0x00, 0x00, 0xFF, 0x04, 0xFB, 0xD5, 0x4B, 0x00, 0x00, 0xE0, 0x00]),  # LCS
    bytes([0x00, 0x00, 0xFF, 0x03, 0xFD, 0xD5, 0x4B, 0x00, 0x00, 0x00]),  # DCS
    bytes([0x00, 0x00, 0xFF, 0x00, 0xFF, 0x00]),  # an ACK where an answer belongs
    bytes([0x00, 0x00, 0xFF, 0x01, 0xFF, 0x7F, 0x81, 0x00]),  # error frame
    bytes([0x00, 0x00, 0xFF, 0x09, 0xF7, 0xD5]),  # truncated
    bytes(10),
])
def test_pn532_bad_frames(bad):
    with pytest.raises(FrameError):
        parse_frame(bad)


def test_target_uid():
    assert parse_target_uid(bytes([0])) is None
    data = bytes([1, 1, 0x00, 0x44, 0x00, 7, 0x04, 0xA1, 0xB2, 0xC3, 0xD4, 0xE5, 0xF6])
    assert parse_target_uid(data) == "04A1B2C3D4E5F6"
    with pytest.raises(FrameError):
        parse_target_uid(bytes([1, 1, 0, 0x44, 0, 7, 0x04]))


# ------------------------------------------------------------------ PN532 reader


class Pn532Rig:
    def __init__(self, sink, clock=None):
        self.chip = FakePn532()
        self.smbus = FakeSMBus({0x24: self.chip})
        self.bus = I2cBus("i2c-1", 1, opener=self.smbus.opener, timeout_s=1.0)
        self.reader = Pn532Reader("front", self.bus, sink=sink, poll_interval_s=0.01,
                                  command_timeout_s=0.3, hold_off_s=2.0,
                                  monotonic=clock or Clock())

    async def close(self):
        await self.reader.close()
        await self.bus.close()


async def test_pn532_startup_sequence(sink):
    rig = Pn532Rig(sink)
    try:
        await rig.reader.open()
        assert rig.reader.healthy()
        cmds = [c for c, _ in rig.chip.commands]
        assert cmds == [0x02, CMD_SAM_CONFIGURATION, CMD_RF_CONFIGURATION]
        assert rig.chip.commands[1][1] == bytes([0x01, 0x14, 0x01])  # normal mode, no SAM
        assert rig.chip.commands[2][1][0] == 0x05  # MaxRetries item
        assert rig.chip.bad_frames == 0
        probe = await rig.reader.probe()
        assert probe.ok and probe.detail == "PN532 firmware 1.6"
    finally:
        await rig.close()


async def test_pn532_reads_and_debounces_a_card(sink, events):
    clock = Clock()
    rig = Pn532Rig(sink, clock)
    await rig.reader.open()
    task = asyncio.create_task(rig.reader.background()())
    try:
        rig.chip.card = bytes.fromhex("04A1B2C3D4E5F6")
        tok = await events.wait_for(lambda e: isinstance(e, TokenPresented))
        assert tok == TokenPresented("04A1B2C3D4E5F6", None, "front", "ISO14443")
        polls = rig.chip.polls()
        # the card stays on the reader: more polls, no second token
        await wait_until(lambda: rig.chip.polls() >= polls + 5)
        assert len(events.of(TokenPresented)) == 1
        rig.chip.card = None
        clock.t += 5  # taken away, tapped again later
        rig.chip.card = bytes.fromhex("04A1B2C3D4E5F6")
        await events.wait_for(lambda e: isinstance(e, TokenPresented) and e is not tok)
        assert len(events.of(TokenPresented)) == 2
        rig.chip.card = bytes.fromhex("DEADBEEF")  # a 4-byte UID card
        await events.wait_for(lambda e: isinstance(e, TokenPresented) and e.uid == "DEADBEEF")
        cmd = [p for c, p in rig.chip.commands if c == CMD_IN_LIST_PASSIVE_TARGET][0]
        assert cmd == bytes([0x01, 0x00])  # one target, 106 kbps type A
    finally:
        await rig.reader.close()
        await asyncio.wait_for(task, 2)
        await rig.bus.close()


async def test_pn532_unplugged_and_back(sink, events):
    rig = Pn532Rig(sink)
    await rig.reader.open()
    rig.reader.poll_interval_s = 0.01
    task = asyncio.create_task(rig.reader.background()())
    try:
        rig.chip.gone = True
        fault = await events.wait_for(lambda e: isinstance(e, FaultRaised))
        assert fault == FaultRaised(0, FaultKind.READER, fault.detail)
        assert "0x24" in fault.detail
        assert not rig.reader.healthy()
        rig.chip.gone = False
        await events.wait_for(lambda e: e == FaultCleared(0, FaultKind.READER))
        assert rig.reader.healthy()
        rig.chip.card = bytes.fromhex("01020304")
        await events.wait_for(lambda e: isinstance(e, TokenPresented))
        assert len(events.of(FaultRaised)) == 1
    finally:
        await rig.reader.close()
        await asyncio.wait_for(task, 5)
        await rig.bus.close()


async def test_pn532_wrong_device_at_address(sink):
    class NotAPn532:
        def write(self, data):
            pass

        def read(self, n):
            return b"\x01" + bytes(n - 1)  # "ready", but never a valid ACK

    smbus = FakeSMBus({0x24: NotAPn532()})
    bus = I2cBus("i2c-1", 1, opener=smbus.opener)
    reader = Pn532Reader("x", bus, sink=sink, command_timeout_s=0.2)
    probe = await reader.probe()
    assert not probe.ok and "acknowledge" in probe.detail
    with pytest.raises(DeviceRejected):
        await reader.command(0x02)
    await bus.close()


async def test_pn532_no_device_at_all(sink, events):
    smbus = FakeSMBus({})
    bus = I2cBus("i2c-1", 1, opener=smbus.opener)
    reader = Pn532Reader("x", bus, sink=sink)
    await reader.open()  # never raises: reported and retried
    fault = events.of(FaultRaised)[0]
    assert fault.kind == FaultKind.READER and "i2cdetect -y 1" in fault.detail
    await bus.close()


# ------------------------------------------------------------------ RDM6300


def rdm_frame(tag_hex: str) -> bytes:
    data = bytes.fromhex(tag_hex)
    x = 0
    for b in data:
        x ^= b
    return b"\x02" + tag_hex.upper().encode() + f"{x:02X}".encode() + b"\x03"


def test_rdm6300_parser_resyncs_and_checks():
    good = rdm_frame("1A0012B3C4")
    bad = bytearray(rdm_frame("1A0012B3C5"))
    bad[11:13] = b"00"  # wrong checksum
    buf = bytearray(b"\xff\x02\x00junk" + bytes(bad) + good + good[:5])
    assert parse_frames(buf) == ["1A0012B3C4"]
    assert bytes(buf) == good[:5]  # the partial frame waits for more bytes
    buf += good[5:]
    assert parse_frames(buf) == ["1A0012B3C4"]
    assert buf == bytearray()


async def test_rdm6300_over_pty(sink, events):
    pty = Pty()
    reader = Rdm6300Reader("door", SerialPort(pty.path), sink=sink, evse_id=1,
                           read_timeout_s=0.05, hold_off_s=2.0, monotonic=Clock())
    await reader.open()
    task = asyncio.create_task(reader.background()())
    try:
        frame = rdm_frame("0400A1B2C3")
        os.write(pty.master, frame[:6])  # a frame split over two reads
        os.write(pty.master, frame[6:] + frame)  # and repeated while the card is held
        tok = await events.wait_for(lambda e: isinstance(e, TokenPresented))
        assert tok == TokenPresented("0400A1B2C3", 1, "door", "ISO14443")
        os.write(pty.master, rdm_frame("0400A1B2C4"))
        await events.wait_for(lambda e: isinstance(e, TokenPresented) and e.uid == "0400A1B2C4")
        assert [e.uid for e in events.of(TokenPresented)] == ["0400A1B2C3", "0400A1B2C4"]
        assert (await reader.probe()).ok
    finally:
        await reader.close()
        await asyncio.wait_for(task, 3)
        pty.close()


async def test_rdm6300_missing_port_is_reported(sink, events, tmp_path):
    reader = Rdm6300Reader("door", SerialPort(str(tmp_path / "ttyUSB7")), sink=sink)
    await reader.open()
    fault = events.of(FaultRaised)[0]
    assert fault.kind == FaultKind.READER and "does not exist" in fault.detail
    assert not reader.healthy()
    assert not (await reader.probe()).ok


async def test_rdm6300_unplugged_mid_session(sink, events):
    pty = Pty()
    reader = Rdm6300Reader("door", SerialPort(pty.path), sink=sink, read_timeout_s=0.05)
    await reader.open()
    task = asyncio.create_task(reader.background()())
    try:
        os.close(pty.master)  # the USB adapter goes away: reads fail with EIO
        fault = await events.wait_for(lambda e: isinstance(e, FaultRaised))
        assert fault.kind == FaultKind.READER
    finally:
        await reader.close()
        await asyncio.wait_for(task, 3)
        pty.close()


# ------------------------------------------------------------------ keyboard wedge


async def test_keyboard_wedge(sink, events):
    dev = FakeInputDevice()
    reader = KeyboardWedgeReader("usb", "/dev/input/by-id/usb-rfid-event-kbd", sink=sink,
                                 opener=lambda path: dev, read_timeout_s=0.05,
                                 monotonic=Clock())
    await reader.open()
    assert dev.grabbed
    task = asyncio.create_task(reader.background()())
    try:
        dev.type_line("0012345678")
        tok = await events.wait_for(lambda e: isinstance(e, TokenPresented))
        assert tok.uid == "0012345678" and tok.reader == "usb"
        dev.type_line("0012345678")  # the same card again at once: debounced
        dev.type_line("04ab99")
        await events.wait_for(lambda e: isinstance(e, TokenPresented) and e.uid == "04AB99")
        assert len(events.of(TokenPresented)) == 2
        dev.unplug()
        fault = await events.wait_for(lambda e: isinstance(e, FaultRaised))
        assert fault.kind == FaultKind.READER and "unplugged" in fault.detail
    finally:
        await reader.close()
        await asyncio.wait_for(task, 3)
    assert dev.closed and not dev.grabbed


async def test_keyboard_wedge_without_evdev_installed(sink, events):
    reader = KeyboardWedgeReader("usb", "/dev/input/event9", sink=sink)
    probe = await reader.probe()
    assert not probe.ok
    assert "evdev" in probe.detail or "does not exist" in probe.detail
