"""ISO 15118 in the core, without the JVM: K17 renegotiation (a TxProfile during an HLC
session makes the SECC tell the EV to renegotiate, the EV's new ChargeParameterDiscovery gets
the new composite, NotifyEVChargingSchedule follows) over the real JSON-lines channel to a
fake SECC; and the 5 % duty cycle's fallback to basic charging (no session at 5 %, a session
that broke) on a board that offers it.

The fake SECC is this test: it listens where ``start_sidecar: false`` makes the agent
connect, says what the package's SECC would say, and records what the agent sends."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest

from agent.core.iso15118 import HLC_WAIT_S, LIMIT_SOURCE, material_change, shift
from hal.iso15118 import protocol
from hal.mock import MockEv, MockHal
from tests.conftest import eventually, online201, version_rig

v2 = pytest.mark.parametrize("version", ["2.0.1", "2.1"])


def hal_yaml(socket_dir: Path) -> str:
    return ("hal:\n  driver: mock\n  ev_max_current_a: 16\n  iso15118: {enabled: true, "
            f"start_sidecar: false, socket_dir: {socket_dir}}}\n")


class FakeSecc:
    """The sidecar's end of the channel, played by the test."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.received: list[tuple[str, dict]] = []
        self.connected = asyncio.Event()
        self.writer: asyncio.StreamWriter | None = None
        self.waiting: dict[int, asyncio.Future] = {}
        self.next_id = 0
        self.server: Any = None

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self._serve, self.path)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.tell("hello", protocol_version=protocol.PROTOCOL_VERSION)
        self.connected.set()
        while line := await reader.readline():
            msg = protocol.decode_from_agent(line)  # what the agent sends is valid
            if msg.kind == protocol.EVENT:
                self.received.append((msg.name, msg.params))
            elif msg.kind == protocol.RESPONSE:
                self.waiting.pop(msg.id).set_result(msg)

    def tell(self, name: str, **params: Any) -> None:
        assert self.writer is not None
        self.writer.write(protocol.encode(protocol.event(name, **params)))

    async def ask(self, name: str, **params: Any) -> dict:
        assert self.writer is not None
        self.next_id += 1
        fut = asyncio.get_running_loop().create_future()
        self.waiting[self.next_id] = fut
        self.writer.write(protocol.encode(protocol.request(self.next_id, name, **params)))
        msg = await asyncio.wait_for(fut, 5)
        assert msg.error is None, msg.error
        return msg.result

    def asked_to_renegotiate(self) -> list[dict]:
        return [p for n, p in self.received if n == "renegotiate"]

    async def stop(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.server.close()


def tx_profile(tx_id: str, amps: float, pid: int = 7) -> dict:
    return {"id": pid, "stackLevel": 1, "chargingProfilePurpose": "TxProfile",
            "chargingProfileKind": "Relative", "transactionId": tx_id,
            "chargingSchedule": [{"id": pid, "chargingRateUnit": "A",
                                  "chargingSchedulePeriod": [{"startPeriod": 0,
                                                              "limit": amps}]}]}


@v2
async def test_k17_a_tx_profile_makes_the_ev_renegotiate(version: str, short_dir: Path) -> None:
    """K15-K17 (the RenegotiateChargingLimits state of the 2.0.1 test cases): the EV starts
    on the composite (the EVSE's 32 A: 22080 W); a TxProfile of 10 A makes the SECC ask the EV to
    renegotiate; its new ChargeParameterDiscovery gets 6900 W and its PowerDelivery Start a
    second NotifyEVChargingSchedule; the same profile again changes nothing material."""
    secc = FakeSecc(str(short_dir / "iso15118-1.sock"))
    await secc.start()
    try:
        async with version_rig(version, short_dir, extra=hal_yaml(short_dir)) as (csms, make):
            agent = await make()
            link = await online201(agent, csms)
            await asyncio.wait_for(secc.connected.wait(), 10)
            agent.hal.plug(1)
            secc.tell("session_started", evcc_id="0A1B2C3D4E5F", protocol="ISO_15118_2")
            secc.tell("ev_parameters", params={"energy_mode": "AC_three_phase_core",
                                               "energy_amount_wh": 20000.0,
                                               "max_current_a": 16.0})
            await csms.wait_for("NotifyEVChargingNeeds")
            agent.hal.tap("TAG1")
            started = await csms.wait_for("TransactionEvent",
                                          predicate=lambda p: p["eventType"] == "Started")
            tx_id = started["transactionInfo"]["transactionId"]
            first = await secc.ask("schedule", departure_time_s=None)
            assert first["periods"][0] == {"start_s": 0, "limit_w": 22080.0}
            secc.tell("charge_progress", started=True)  # PowerDelivery Start
            await csms.wait_for("NotifyEVChargingSchedule")
            await eventually(lambda: agent.hal.evses[1].contactor.commanded_closed,
                             "the contactor closes once the EV starts")
            assert secc.asked_to_renegotiate() == []

            answer = await link.call("SetChargingProfile", {
                "evseId": 1, "chargingProfile": tx_profile(tx_id, 10)})
            assert answer["status"] == "Accepted"
            await eventually(lambda: secc.asked_to_renegotiate(), "the SECC is asked")
            assert secc.asked_to_renegotiate() == [{"reason": "the composite schedule changed"}]
            secc.tell("renegotiation", status="requested", reason="the composite schedule "
                                                                  "changed")
            again = await secc.ask("schedule", departure_time_s=None)  # the EV's new CPD
            assert again["periods"][0] == {"start_s": 0, "limit_w": 6900.0}
            secc.tell("charge_progress", started=True)  # PowerDelivery Start again
            notified = await csms.wait_for(
                "NotifyEVChargingSchedule",
                predicate=lambda p: p["chargingSchedule"]["chargingSchedulePeriod"][0][
                    "limit"] == 6900)
            assert notified["evseId"] == 1
            assert len(csms.messages("CP1", "NotifyEVChargingSchedule")) == 2

            # The same limit again (a new profile id): nothing material, no renegotiation.
            service = agent.station.iso15118
            await link.call("SetChargingProfile", {
                "evseId": 1, "chargingProfile": tx_profile(tx_id, 10, pid=8)})
            await eventually(lambda: service._recheck is None, "the schedules were looked at")
            assert len(secc.asked_to_renegotiate()) == 1
            assert agent.hal.evses[1].contactor.commanded_closed  # -2: no pause for it
    finally:
        await secc.stop()


async def test_renegotiation_only_in_the_charge_loop_of_a_protocol_with_it(
        short_dir: Path) -> None:
    secc = FakeSecc(str(short_dir / "iso15118-1.sock"))
    await secc.start()
    try:
        async with version_rig("2.0.1", short_dir, extra=hal_yaml(short_dir)) as (csms, make):
            agent = await make()
            await online201(agent, csms)
            await asyncio.wait_for(secc.connected.wait(), 10)
            service = agent.station.iso15118
            agent.hal.plug(1)
            secc.tell("session_started", evcc_id="0A1B2C3D4E5F", protocol="DIN_SPEC_70121")
            await eventually(lambda: service.session(1) is not None, "the session is known")
            assert not service.renegotiate(1)  # not charging yet
            secc.tell("charge_progress", started=True)
            await eventually(lambda: service.session(1).charging, "charging")
            assert not service.renegotiate(1)  # DIN SPEC 70121 has no renegotiation
            service.session(1).protocol = "ISO_15118_20_AC"
            assert service.renegotiate(1, "test")
            assert service.renegotiate(1, "again")  # asked once until served
            await eventually(lambda: secc.asked_to_renegotiate(), "the SECC is asked")
            secc.tell("renegotiation", status="refused", reason="the EV is not in the loop")
            await eventually(lambda: service.session(1).renegotiating is None,
                             "a refusal ends the request")
            assert secc.asked_to_renegotiate() == [{"reason": "test"}]
    finally:
        await secc.stop()


@pytest.mark.parametrize(("old", "new", "material"), [
    ([(0, 11040.0)], [(0, 11000.0)], False),  # within 100 W
    ([(0, 11040.0)], [(0, 10400.0)], True),  # more than 5 % (and 100 W)
    ([(0, 11040.0)], [(0, 10500.0)], False),  # 4.9 %: within 5 %
    ([(0, 2000.0)], [(0, 1910.0)], False),  # 90 W: within 100 W, although 4.5 %
    ([(0, 6900.0)], [(0, 6900.0), (3600, 4000.0)], True),  # a later period differs
    ([(0, 6900.0), (3600, 4000.0)], [(0, 6900.0), (3600, 4000.0)], False),
    ([(0, 6900.0)], [(0, 6900.0), (90_000, 0.0)], False),  # beyond the window
])
def test_what_makes_a_schedule_change_material(old, new, material) -> None:
    assert material_change(old, new, 86_400) is material


def test_an_offered_schedule_counts_from_when_it_was_offered() -> None:
    offered = [(0, 6900.0), (600, 4000.0), (1800, 11040.0)]
    assert shift(offered, 0) == offered
    assert shift(offered, 700) == [(0, 4000.0), (1100, 11040.0)]
    assert shift(offered, 5000) == [(0, 11040.0)]


# ---------------------------------------------------------------- 5 %: back to basic charging


class DigitalMockEv(MockEv):
    """The mock's EV side on a board that offers 5 % (as the direct pilot does)."""

    digital = False
    calls: list[tuple[bool, Any]]
    snoop: Any = None

    @property
    def supports_digital_communication(self) -> bool:
        return True

    async def set_digital_communication(self, on: bool) -> None:
        self.calls.append((on, self.snoop() if self.snoop else None))
        self.digital = on


async def test_five_percent_falls_back_to_basic_charging(short_dir: Path) -> None:
    """At start the EVSE offers 5 %; an EV that starts no session within HLC_WAIT_S gets
    nominal duty (the hold of 0 A first, the contactor open, then lifted) and charges by
    the pilot; the next plug-in gets 5 % again; a session that breaks falls back too."""
    hal = MockHal(1, ev_max_current_a=16)
    ev = hal.evses[1].ev
    ev.__class__ = DigitalMockEv
    ev.calls = []
    async with version_rig("2.0.1", short_dir, fake_clock=True,
                           extra=hal_yaml(short_dir)) as (csms, make):
        agent = await make(hal=hal)
        csms.now = agent.clock.now
        await online201(agent, csms)
        evse = agent.station.evses[1]
        assert ev.calls == [(True, None)]  # 5 % from the start
        ev.snoop = lambda: (evse.limits.get(LIMIT_SOURCE),
                            hal.evses[1].contactor.commanded_closed)

        agent.hal.plug(1)
        agent.hal.tap("TAG1")
        await agent.station.quiet()
        assert not hal.evses[1].contactor.commanded_closed  # at 5 % nothing without HLC...
        await agent.clock.advance(HLC_WAIT_S + 1)
        await eventually(lambda: len(ev.calls) == 2, "the fallback to nominal duty")
        assert ev.calls[1] == (False, (0.0, False))  # held at 0 A, the contactor open
        await eventually(lambda: hal.evses[1].contactor.commanded_closed,
                         "...then the EV charges by the pilot alone")
        assert LIMIT_SOURCE not in evse.limits

        agent.hal.unplug(1)
        await eventually(lambda: ev.calls[-1][0] is True, "5 % for the next EV")
        await csms.wait_for("TransactionEvent", predicate=lambda p: p["eventType"] == "Ended")

        agent.hal.plug(1)  # an HLC EV whose session breaks in the middle
        service = agent.station.iso15118
        service.hlc_event(1, "session_started", {"evcc_id": "0A1B2C3D4E5F",
                                                 "protocol": "ISO_15118_2"})
        await agent.clock.advance(HLC_WAIT_S + 1)  # a session came: no fallback for it
        await agent.station.quiet()
        assert len(ev.calls) == 3 and ev.digital
        service.hlc_event(1, "session_ended", {"reason": "connection to the SECC lost"})
        await eventually(lambda: len(ev.calls) == 4, "the broken session's fallback")
        assert ev.calls[3] == (False, (0.0, False))
        await eventually(lambda: LIMIT_SOURCE not in evse.limits, "the hold goes after it")
        with contextlib.suppress(Exception):
            agent.hal.unplug(1)
        await agent.station.quiet()

