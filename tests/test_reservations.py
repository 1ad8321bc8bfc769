"""Reservations (1.6 Reservation profile, 2.0.1 H01-H04): one core, both versions.

The rules live in :mod:`agent.core.reservations`; the core tests at the top check the rule
for reservations of no particular EVSE (1.6 connector 0, 2.0.1 without evseId) on the mock HAL
directly. The protocol tests run the real agent against the strict test CSMS, parametrized
over 1.6 and 2.0.1 wherever the behaviour is shared (the ``kit`` says how each version words
it), plus the version-specific cases, named after the 2.0.1 conformance tests (TC_H_xx_CS).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from agent.app import Agent
from agent.clock import FakeClock, iso
from agent.core.model import AuthResult, ConnectorStatus, Token
from agent.core.reservations import Reservation
from agent.core.station import Station
from agent.storage import Storage
from agent.testing.csms import TestCsms
from hal.mock import MockHal
from tests.conftest import agent_config, eventually, strict_csms

SID = "CP1"

# ====================================================================== the core's rules


class _Observer:
    def __init__(self) -> None:
        self.statuses: dict[int, list[str]] = {}

    def status_changed(self, snap, fault) -> None:  # noqa: ANN001
        self.statuses.setdefault(snap.evse_id, []).append(snap.status.value)

    def transaction_started(self, tx, snap, trigger) -> None:  # noqa: ANN001
        pass

    def transaction_ended(self, tx, reason, snap) -> None:  # noqa: ANN001
        pass

    def session_event(self, evse_id, event, detail) -> None:  # noqa: ANN001
        pass

    def fault_changed(self, evse_id, kind, active, detail) -> None:  # noqa: ANN001
        pass

    async def authorize(self, token: Token, evse_id) -> AuthResult:  # noqa: ANN001
        return AuthResult("Accepted", parent={"MEMBER": "FLEET"}.get(token.id))


@pytest.fixture
async def core() -> AsyncIterator[tuple[Station, MockHal, FakeClock, list]]:
    clock = FakeClock()
    storage = Storage(":memory:")
    hal = MockHal(2, monotonic=clock.monotonic, ev_max_current_a=16)
    station = Station(hal, storage, clock, meter_poll_s=1.0)
    station.observer = station.authorizer = _Observer()  # type: ignore[assignment]
    ended: list[tuple[int, str]] = []
    station.reservations.listeners.append(lambda r, why: ended.append((r.id, why)))
    await station.start()
    await station.quiet()
    yield station, hal, clock, ended
    await station.stop()
    storage.close()


def res(rid: int, token: str, clock: FakeClock, evse: int | None = None, *,
        group: str | None = None, kind: str | None = None, after: float = 600) -> Reservation:
    return Reservation(rid, evse, clock.wall() + after, token, group=group, connector_type=kind)


def statuses(station: Station) -> dict[int, ConnectorStatus]:
    return {i: e.status for i, e in station.evses.items()}


async def settled(station: Station) -> None:
    await station.quiet()
    await asyncio.sleep(0)  # the status refresh a reservation change schedules
    await station.quiet()


async def test_unspecified_reservation_keeps_one_evse_free_for_its_token(core):
    """1.6 5.13: with connectorId 0, "one connector remains available for the reserved idTag";
    other tokens take EVSEs as long as one stays free (2.0.1 H01.FR.20: the last one shows
    Reserved)."""
    station, hal, clock, ended = core
    assert station.reservations.reserve(res(1, "RES", clock)) == "Accepted"
    await settled(station)
    assert statuses(station) == {1: ConnectorStatus.AVAILABLE, 2: ConnectorStatus.AVAILABLE}
    hal.plug(1)
    await station.quiet()
    assert await station.present_token(Token("OTHER"), 1) == "authorized"
    await settled(station)
    assert station.evses[2].status == ConnectorStatus.RESERVED, "the last free EVSE is held"
    assert await station.present_token(Token("OTHER2"), 2) == "rejected"
    hal.plug(2)  # an EV plugged in without the token does not take it (G03.FR.09)
    await settled(station)
    assert station.evses[2].status == ConnectorStatus.RESERVED
    assert await station.present_token(Token("RES"), 2) == "authorized"
    await settled(station)
    assert station.reservations.all() == [] and ended == [(1, "Used")]
    tx = station.evses[2].tx
    assert tx is not None and tx.reservation_id == 1
    assert station.storage.tx_get(tx.local_id).reservation_id == 1


async def test_as_many_unspecified_reservations_as_free_evses_hold_them_all(core):
    station, hal, clock, _ = core
    assert station.reservations.reserve(res(1, "A", clock)) == "Accepted"
    assert station.reservations.reserve(res(2, "B", clock)) == "Accepted"
    assert station.reservations.reserve(res(3, "C", clock)) == "Occupied"
    assert station.reservations.reserve(res(4, "D", clock, evse=1)) == "Occupied"
    await settled(station)
    assert statuses(station) == {1: ConnectorStatus.RESERVED, 2: ConnectorStatus.RESERVED}
    assert await station.present_token(Token("STRANGER"), 1) == "rejected"
    assert await station.present_token(Token("B")) == "authorized"  # shared reader
    await settled(station)
    assert [r.id for r in station.reservations.all()] == [1]
    assert list(statuses(station).values()).count(ConnectorStatus.RESERVED) == 1


async def test_a_specific_reservation_counts_against_the_unspecified_ones(core):
    station, _, clock, _ = core
    assert station.reservations.reserve(res(1, "A", clock, evse=1)) == "Accepted"
    assert station.reservations.reserve(res(2, "B", clock)) == "Accepted"
    assert station.reservations.reserve(res(3, "C", clock)) == "Occupied"
    await settled(station)
    assert statuses(station) == {1: ConnectorStatus.RESERVED, 2: ConnectorStatus.RESERVED}
    assert await station.present_token(Token("B"), 1) == "rejected", "EVSE 1 is A's"
    assert await station.present_token(Token("A"), 2) == "rejected", "EVSE 2 is kept for B"


async def test_unspecified_reservation_of_a_connector_type(core):
    """2.0.1 H01.FR.06 / H01.FR.24: only the EVSEs of that connector type are held."""
    station, _, clock, _ = core
    station.reservations.connector_types.update({1: "cType2", 2: "cCCS2"})
    assert station.reservations.reserve(res(1, "A", clock, kind="sType3")) == "Rejected"
    assert station.reservations.reserve(res(1, "A", clock, kind="cCCS2")) == "Accepted"
    assert station.reservations.reserve(res(2, "B", clock, kind="cCCS2")) == "Occupied"
    await settled(station)
    assert statuses(station) == {1: ConnectorStatus.AVAILABLE, 2: ConnectorStatus.RESERVED}
    assert await station.present_token(Token("OTHER"), 2) == "rejected"
    assert await station.present_token(Token("A"), 1) == "authorized", "not A's type: no use"
    assert [r.id for r in station.reservations.all()] == [1]


async def test_unspecified_answers_faulted_and_unavailable(core):
    station, hal, clock, _ = core
    for evse in (1, 2):
        hal.inject_fault(evse, "over_current")
    await station.quiet()
    assert station.reservations.reserve(res(1, "A", clock)) == "Faulted"
    await station.evses[1].clear_fault(next(iter(station.evses[1].faults)))
    await station.set_operative(1, False)
    assert station.reservations.reserve(res(1, "A", clock)) == "Unavailable"
    await station.set_operative(1, True)
    assert station.reservations.reserve(res(1, "A", clock)) == "Accepted"
    await station.set_operative(1, False)  # no EVSE left it could use: removed
    await settled(station)
    assert station.reservations.all() == []


async def test_expiry_timer_wakes_at_the_soonest_expiry(core):
    station, _, clock, ended = core
    assert station.reservations.reserve(res(1, "A", clock, evse=1, after=100)) == "Accepted"
    assert station.reservations.reserve(res(2, "B", clock, evse=2, after=40)) == "Accepted"
    await eventually(lambda: any(abs(d - 40) < 0.01 for d in clock.pending()),
                     "the timer sleeps until the soonest expiry")
    await clock.advance(39.9)
    assert ended == []
    await clock.advance(0.1)
    await eventually(lambda: ended == [(2, "Expired")], "reservation 2 expired")
    await eventually(lambda: any(abs(d - 60) < 0.01 for d in clock.pending()),
                     "the timer sleeps until the next expiry")
    await clock.advance(60)
    await eventually(lambda: ended == [(2, "Expired"), (1, "Expired")], "both expired")


# ====================================================================== per-version kit


class Kit:
    version: str
    start_action: str
    after_authorization: str  # the status of an idle EVSE once its token was presented

    def __repr__(self) -> str:
        return f"Kit({self.version})"

    def reserve(self, rid: int, evse: int | None, token: str, expires: str,
                group: str | None = None) -> tuple[str, dict]:
        raise NotImplementedError

    def status_of(self, p: dict, evse: int) -> str | None:
        raise NotImplementedError

    def is_start(self, p: dict) -> bool:
        raise NotImplementedError

    def inoperative(self, evse: int) -> tuple[str, dict]:
        raise NotImplementedError

    def remote_start(self, token: str, evse: int) -> tuple[str, dict]:
        raise NotImplementedError

    async def online(self, agent: Agent, csms: TestCsms) -> Any:
        await asyncio.wait_for(agent.adapter.accepted.wait(), 5)
        link = await csms.wait_station(SID, 5)
        await asyncio.wait_for(agent.adapter.outbox.idle.wait(), 5)
        await agent.station.quiet()
        return link


class Kit16(Kit):
    version = "1.6"
    start_action = "StartTransaction"
    after_authorization = "Preparing"

    def reserve(self, rid, evse, token, expires, group=None):  # noqa: ANN001, ANN201
        p = {"connectorId": evse or 0, "expiryDate": expires, "idTag": token,
             "reservationId": rid}
        if group:
            p["parentIdTag"] = group
        return "ReserveNow", p

    def status_of(self, p: dict, evse: int) -> str | None:
        return p["status"] if p.get("connectorId") == evse else None

    def is_start(self, p: dict) -> bool:
        return "meterStart" in p

    def inoperative(self, evse: int) -> tuple[str, dict]:
        return "ChangeAvailability", {"connectorId": evse, "type": "Inoperative"}

    def remote_start(self, token: str, evse: int) -> tuple[str, dict]:
        return "RemoteStartTransaction", {"idTag": token, "connectorId": evse}


class Kit201(Kit):
    version = "2.0.1"
    start_action = "TransactionEvent"
    after_authorization = "Available"  # H03.FR.10: used, no cable yet

    def reserve(self, rid, evse, token, expires, group=None):  # noqa: ANN001, ANN201
        p: dict[str, Any] = {"id": rid, "expiryDateTime": expires,
                             "idToken": {"idToken": token, "type": "ISO14443"}}
        if evse:
            p["evseId"] = evse
        if group:
            p["groupIdToken"] = {"idToken": group, "type": "Central"}
        return "ReserveNow", p

    def status_of(self, p: dict, evse: int) -> str | None:
        return p["connectorStatus"] if p.get("evseId") == evse else None

    def is_start(self, p: dict) -> bool:
        return p["eventType"] == "Started"

    def inoperative(self, evse: int) -> tuple[str, dict]:
        return "ChangeAvailability", {"operationalStatus": "Inoperative", "evse": {"id": evse}}

    def remote_start(self, token: str, evse: int) -> tuple[str, dict]:
        return "RequestStartTransaction", {
            "idToken": {"idToken": token, "type": "ISO14443"}, "remoteStartId": 5,
            "evseId": evse}


class Kit21(Kit201):
    version = "2.1"


KITS = {"1.6": Kit16(), "2.0.1": Kit201()}
# 2.1 carries the 2.0.1 block over: only the tests of what its schemas changed run on it.
LATER_KITS = {"2.1": Kit21()}


@pytest.fixture(params=list(KITS))
def kit(request: pytest.FixtureRequest) -> Kit:
    return {**KITS, **LATER_KITS}[request.param]


class Rig:
    """A strict CSMS of the kit's version and agents on one state file."""

    def __init__(self, kit: Kit, csms: TestCsms, state: Path) -> None:
        self.kit, self.csms, self.state = kit, csms, state
        self.agents: list[Agent] = []
        self.link: Any = None

    async def start(self, *, clock: Any = None, **kw: Any) -> Agent:
        kw.setdefault("evses", 1)
        agent = Agent(agent_config(self.csms.url, self.state, versions=(self.kit.version,),
                                   **kw), clock=clock)
        self.agents.append(agent)
        await agent.start()
        self.link = await self.kit.online(agent, self.csms)
        return agent

    def expiry(self, agent: Agent, seconds: float = 600) -> str:
        return iso(datetime.fromtimestamp(math.ceil(agent.clock.wall()) + seconds, UTC))

    async def reserve(self, agent: Agent, rid: int, evse: int | None, token: str, *,
                      group: str | None = None, seconds: float = 600) -> str:
        action, payload = self.kit.reserve(rid, evse, token, self.expiry(agent, seconds),
                                           group)
        return (await self.link.call(action, payload))["status"]

    async def cancel(self, rid: int) -> str:
        return (await self.link.call("CancelReservation", {"reservationId": rid}))["status"]

    def statuses(self, evse: int = 1) -> list[str]:
        return [s for p in self.csms.messages(SID, "StatusNotification")
                if (s := self.kit.status_of(p, evse)) is not None]

    async def shows(self, status: str, evse: int = 1) -> None:
        await eventually(lambda: self.statuses(evse)[-1:] == [status],
                         f"EVSE {evse} reported {status} (reported: {self.statuses(evse)})")

    async def tap(self, agent: Agent, token: str, evse: int | None = 1) -> str:
        before = agent.station.taps.get(token)
        agent.hal.tap(token, evse)
        await eventually(lambda: agent.station.taps.get(token) not in (None, before),
                         f"{token} tapped")
        return await asyncio.wait_for(agent.station.taps[token], 5)

    def starts(self) -> list[dict]:
        return [p for p in self.csms.messages(SID, self.kit.start_action)
                if self.kit.is_start(p)]

    async def started(self, count: int = 1) -> dict:
        await eventually(lambda: len(self.starts()) >= count, "the transaction started")
        return self.starts()[count - 1]


@pytest.fixture
async def rig(kit: Kit, short_dir: Path) -> AsyncIterator[Rig]:
    async with strict_csms((kit.version,)) as csms:
        r = Rig(kit, csms, short_dir)
        try:
            yield r
        finally:
            for agent in r.agents:
                await agent.stop()


# ====================================================================== shared behaviour


async def test_reserved_evse_is_taken_by_its_token_and_the_transaction_ends_it(rig):
    """1.6 5.13 / 2.0.1 TC_H_01_CS, TC_H_02_CS: Reserved is reported, another token is
    refused, the reserving token starts, and the transaction carries the reservationId."""
    agent = await rig.start()
    assert await rig.reserve(agent, 7, 1, "TAG1") == "Accepted"
    await rig.shows("Reserved")
    assert await rig.tap(agent, "TAG2") == "rejected"
    agent.hal.plug(1)  # a plug-in with the reservation pending: still Reserved
    await agent.station.quiet()
    assert agent.station.evses[1].status == ConnectorStatus.RESERVED
    assert await rig.tap(agent, "TAG1") == "authorized"
    start = await rig.started()
    assert start["reservationId"] == 7
    assert agent.station.reservations.all() == []
    assert await rig.cancel(7) == "Rejected", "the transaction ended the reservation"


async def test_a_token_of_the_reservation_group_may_use_it(rig):
    """1.6 5.13 parentIdTag / 2.0.1 TC_H_19_CS groupIdToken: the group is what the CSMS's
    authorization says of the incoming token."""
    rig.csms.parent_id_tags = {"MEMBER": "FLEET", "OUTSIDER": "OTHERS"}
    agent = await rig.start()
    assert await rig.reserve(agent, 3, 1, "LEADER", group="FLEET") == "Accepted"
    await rig.shows("Reserved")
    assert await rig.tap(agent, "OUTSIDER") == "rejected"
    agent.hal.plug(1)
    assert await rig.tap(agent, "MEMBER") == "authorized"
    assert (await rig.started())["reservationId"] == 3


async def test_remote_start_on_a_reserved_evse_only_for_its_token(rig):
    """1.6 5.13 / 2.0.1 TC_H_02_CS: RemoteStart(Request) for another token is Rejected."""
    agent = await rig.start()
    assert await rig.reserve(agent, 4, 1, "TAG1") == "Accepted"
    action, payload = rig.kit.remote_start("TAG2", 1)
    assert (await rig.link.call(action, payload))["status"] == "Rejected"
    action, payload = rig.kit.remote_start("TAG1", 1)
    assert (await rig.link.call(action, payload))["status"] == "Accepted"
    agent.hal.plug(1)
    assert (await rig.started())["reservationId"] == 4


async def test_expiry_on_the_clock_releases_the_evse_and_reports_it(rig):
    """1.6 5.13 ("SHALL send a status notification ... now available") / 2.0.1 TC_H_07_CS
    (StatusNotification Available and ReservationStatusUpdate Expired), on the fake clock."""
    clock = FakeClock(start_wall=datetime.now(UTC).timestamp())
    rig.csms.now = lambda: datetime.fromtimestamp(clock.wall(), UTC)  # the CSMS's time moves too
    agent = await rig.start(clock=clock)
    assert await rig.reserve(agent, 9, 1, "TAG1", seconds=600) == "Accepted"
    await rig.shows("Reserved")
    await eventually(lambda: any(599 < d <= 601 for d in clock.pending()),
                     "the expiry timer sleeps until the expiry")
    delay = next(d for d in clock.pending() if 599 < d <= 601)
    await clock.advance(delay - 1)
    await agent.station.quiet()
    assert rig.statuses()[-1] == "Reserved" and len(agent.station.reservations.all()) == 1
    await clock.advance(1)
    await rig.shows("Available")
    assert agent.station.reservations.all() == []
    if rig.kit.version == "2.0.1":
        await rig.csms.wait_for("ReservationStatusUpdate", station_id=SID)
        assert rig.csms.messages(SID, "ReservationStatusUpdate") == [
            {"reservationId": 9, "reservationUpdateStatus": "Expired"}]
    else:
        assert rig.csms.messages(SID, "ReservationStatusUpdate") == []
    assert await rig.tap(agent, "TAG2") == "authorized", "free for anyone again"


async def test_cancel_reservation(rig):
    """1.6 5.1 / 2.0.1 TC_H_17_CS, TC_H_18_CS: Accepted for a reservation there, else
    Rejected; the EVSE is Available again."""
    agent = await rig.start()
    assert await rig.cancel(5) == "Rejected"
    assert await rig.reserve(agent, 5, 1, "TAG1") == "Accepted"
    await rig.shows("Reserved")
    assert await rig.cancel(5) == "Accepted"
    await rig.shows("Available")
    assert await rig.cancel(5) == "Rejected"
    assert rig.csms.messages(SID, "ReservationStatusUpdate") == [], "the CSMS knows already"


async def test_a_reservation_survives_a_restart(rig):
    agent = await rig.start()
    assert await rig.reserve(agent, 6, 1, "TAG1") == "Accepted"
    await agent.stop()
    agent = await rig.start()
    await rig.shows("Reserved")
    assert [r.id for r in agent.station.reservations.all()] == [6]
    assert await rig.tap(agent, "TAG2") == "rejected"
    agent.hal.plug(1)
    assert await rig.tap(agent, "TAG1") == "authorized"
    assert (await rig.started())["reservationId"] == 6


async def test_a_reservation_that_expired_while_off_ends_at_start_up(rig, kit):
    agent = await rig.start()
    assert await rig.reserve(agent, 8, 1, "TAG1", seconds=600) == "Accepted"
    await agent.stop()
    later = datetime.now(UTC) + timedelta(hours=1)  # the station was off for an hour
    rig.csms.now = lambda: later
    agent = await rig.start(clock=FakeClock(start_wall=later.timestamp()))
    await eventually(lambda: agent.station.reservations.all() == [], "expired at start-up")
    await rig.shows("Available")
    if kit.version == "2.0.1":
        update = await rig.csms.wait_for("ReservationStatusUpdate", station_id=SID)
        assert update == {"reservationId": 8, "reservationUpdateStatus": "Expired"}


async def test_the_same_reservation_id_replaces_the_reservation(rig):
    """1.6 5.13 / 2.0.1 TC_H_23_CS: not Occupied, the new one counts."""
    agent = await rig.start()
    assert await rig.reserve(agent, 1, 1, "TAG1") == "Accepted"
    assert await rig.reserve(agent, 2, 1, "TAG2") == "Occupied"
    assert await rig.reserve(agent, 1, 1, "TAG2") == "Accepted"
    assert await rig.tap(agent, "TAG1") == "rejected"
    assert await rig.tap(agent, "TAG2") == "authorized"
    assert agent.station.reservations.all() == []


@pytest.mark.parametrize("situation, expected", [
    ("idle", "Accepted"),
    ("reserved", "Occupied"),  # TC_H_03_CS
    ("plugged", "Occupied"),  # TC_H_04_CS
    ("charging", "Occupied"),
    ("faulted", "Faulted"),  # TC_H_05_CS
    ("inoperative", "Unavailable"),  # TC_H_06_CS
    ("unknown_evse", "Rejected"),
    ("disabled", "Rejected"),  # TC_H_22_CS
    ("expired", "Rejected"),
])
async def test_every_answer_status(rig, situation, expected):
    defaults = {"ReservationEnabled": False} if situation == "disabled" else {}
    agent = await rig.start(defaults=defaults)
    evse = 1
    if situation == "reserved":
        assert await rig.reserve(agent, 1, 1, "OTHER") == "Accepted"
    elif situation == "plugged":
        agent.hal.plug(1)
    elif situation == "charging":
        agent.hal.plug(1)
        assert await rig.tap(agent, "OTHER") == "authorized"
        await rig.started()
    elif situation == "faulted":
        agent.hal.inject_fault(1, "over_current")
    elif situation == "inoperative":
        action, payload = rig.kit.inoperative(1)
        assert (await rig.link.call(action, payload))["status"] == "Accepted"
    elif situation == "unknown_evse":
        evse = 5
    await agent.station.quiet()
    seconds = -60 if situation == "expired" else 600
    assert await rig.reserve(agent, 2, evse, "TAG1", seconds=seconds) == expected
    assert len(agent.station.reservations.all()) == (1 if situation == "reserved" else 0) + (
        expected == "Accepted")


@pytest.mark.parametrize("end", ["faulted", "inoperative"])
async def test_a_faulted_or_unavailable_evse_ends_its_reservation(rig, end):
    """1.6 5.13 (3) / 2.0.1 TC_H_20_CS, TC_H_21_CS (ReservationStatusUpdate Removed)."""
    agent = await rig.start()
    assert await rig.reserve(agent, 11, 1, "TAG1") == "Accepted"
    await rig.shows("Reserved")
    if end == "faulted":
        agent.hal.inject_fault(1, "over_current")
        await rig.shows("Faulted")
    else:
        action, payload = rig.kit.inoperative(1)
        assert (await rig.link.call(action, payload))["status"] == "Accepted"
        await rig.shows("Unavailable")
    await eventually(lambda: agent.station.reservations.all() == [], "the reservation ended")
    if rig.kit.version == "2.0.1":
        update = await rig.csms.wait_for("ReservationStatusUpdate", station_id=SID)
        assert update == {"reservationId": 11, "reservationUpdateStatus": "Removed"}


async def test_unspecified_evse_reservation(rig):
    """1.6 connector 0 / 2.0.1 TC_H_08_CS, TC_H_14_CS: Accepted; other tokens take EVSEs
    while one stays free, that one shows Reserved, and the reserving token uses it."""
    agent = await rig.start(evses=2)
    assert await rig.reserve(agent, 12, None, "TAG1") == "Accepted"
    await agent.station.quiet()
    assert rig.statuses(1)[-1] == rig.statuses(2)[-1] == "Available"
    agent.hal.plug(1)
    assert await rig.tap(agent, "TAG2", 1) == "authorized"
    await rig.shows("Reserved", evse=2)
    assert await rig.tap(agent, "TAG3", 2) == "rejected"
    assert await rig.reserve(agent, 13, None, "TAG4") == "Occupied"  # TC_H_09_CS
    agent.hal.plug(2)
    assert await rig.tap(agent, "TAG1", 2) == "authorized"
    start = await rig.started(2)
    assert start["reservationId"] == 12 and rig.kit.is_start(start)
    assert agent.station.reservations.all() == []


async def test_a_token_of_the_group_uses_a_reservation_of_no_evse(rig):
    """1.6 connector 0 with parentIdTag / 2.0.1 TC_H_24_CS (groupIdToken, no evseId)."""
    rig.csms.parent_id_tags = {"MEMBER": "FLEET"}
    agent = await rig.start()
    assert await rig.reserve(agent, 14, None, "LEADER", group="FLEET") == "Accepted"
    await rig.shows("Reserved")  # one EVSE, one reservation: it is held
    assert await rig.tap(agent, "OUTSIDER") == "rejected"
    agent.hal.plug(1)
    assert await rig.tap(agent, "MEMBER") == "authorized"
    assert (await rig.started())["reservationId"] == 14


async def test_unspecified_reservation_refused_when_not_supported(rig):
    """1.6 ReserveConnectorZeroSupported false / 2.0.1 TC_H_13_CS (NonEvseSpecific false)."""
    agent = await rig.start(defaults={"ReserveConnectorZeroSupported": False})
    assert await rig.reserve(agent, 1, None, "TAG1") == "Rejected"
    assert await rig.reserve(agent, 1, 1, "TAG1") == "Accepted"


# ====================================================================== 1.6


@pytest.mark.parametrize("kit", ["1.6"], indirect=True)
async def test_v16_reservation_profile_and_key(rig):
    await rig.start()
    res = await rig.link.call("GetConfiguration", {"key": [
        "ReserveConnectorZeroSupported", "SupportedFeatureProfiles"]})
    keys = {k["key"]: k for k in res["configurationKey"]}
    assert keys["ReserveConnectorZeroSupported"] == {
        "key": "ReserveConnectorZeroSupported", "readonly": True, "value": "true"}
    assert "Reservation" in keys["SupportedFeatureProfiles"]["value"].split(",")
    change = await rig.link.call("ChangeConfiguration", {
        "key": "ReserveConnectorZeroSupported", "value": "false"})
    assert change["status"] == "Rejected"


# ====================================================================== 2.0.1


def _get(name: str) -> dict:
    return {"component": {"name": "ReservationCtrlr"}, "variable": {"name": name}}


@pytest.mark.parametrize("kit", ["2.0.1"], indirect=True)
async def test_TC_H_22_CS_reservation_ctrlr_disabled_rejects(rig):
    agent = await rig.start()
    got = await rig.link.call("GetVariables", {"getVariableData": [
        _get("Enabled"), _get("Available"), _get("NonEvseSpecific")]})
    assert [r["attributeValue"] for r in got["getVariableResult"]] == ["true"] * 3
    put = await rig.link.call("SetVariables", {"setVariableData": [
        {**_get("Enabled"), "attributeValue": "false"}]})
    assert put["setVariableResult"][0]["attributeStatus"] == "Accepted"
    assert await rig.reserve(agent, 1, 1, "TAG1") == "Rejected"
    put = await rig.link.call("SetVariables", {"setVariableData": [
        {**_get("NonEvseSpecific"), "attributeValue": "false"}]})
    assert put["setVariableResult"][0]["attributeStatus"] == "Rejected"  # read-only


@pytest.mark.parametrize("kit", ["2.0.1"], indirect=True)
async def test_TC_H_15_16_CS_reserve_a_connector_type(rig):
    """H01.FR.06 / H01.FR.24: a reservation of a connector type (no evseId) holds the last
    EVSE of that type, shown Reserved; the other type stays Available."""
    agent = await rig.start(evses=2, extra="""
evses:
  - {id: 1, connectors: [{type: cType2}]}
  - {id: 2, connectors: [{type: cCCS2}]}
""")
    payload = {"id": 21, "expiryDateTime": rig.expiry(agent), "connectorType": "cCCS2",
               "idToken": {"idToken": "TAG1", "type": "ISO14443"}}
    assert (await rig.link.call("ReserveNow", payload))["status"] == "Accepted"
    await rig.shows("Reserved", evse=2)
    assert rig.statuses(1)[-1] == "Available"
    payload = {**payload, "id": 22, "connectorType": "sType3"}
    assert (await rig.link.call("ReserveNow", payload))["status"] == "Rejected"
    assert await rig.tap(agent, "TAG2", 2) == "rejected"
    assert await rig.tap(agent, "TAG2", 1) == "authorized"


@pytest.mark.parametrize("kit", ["2.0.1"], indirect=True)
async def test_TC_H_01_CS_reservation_used_before_the_cable_reads_available(rig):
    """H03.FR.09 / H03.FR.10: the idToken presented uses the reservation; with no cable the
    connector is Available again (not Reserved)."""
    agent = await rig.start()
    assert await rig.reserve(agent, 1, 1, "TAG1") == "Accepted"
    await rig.shows("Reserved")
    assert await rig.tap(agent, "TAG1") == "authorized"
    await rig.shows("Available")
    assert agent.station.reservations.all() == []
    agent.hal.plug(1)
    assert (await rig.started())["reservationId"] == 1


@pytest.mark.parametrize("kit", ["2.0.1"], indirect=True)
async def test_reservation_id_on_the_authorization_of_a_transaction_started_at_the_plug(rig):
    """TxStartPoint EVConnected: the transaction begins at the plug-in on the reserved EVSE
    (errata 2.8.4), the connector stays Reserved, and the TransactionEvent of the reserving
    idToken's authorization carries the reservationId."""
    agent = await rig.start()
    put = await rig.link.call("SetVariables", {"setVariableData": [{
        "component": {"name": "TxCtrlr"}, "variable": {"name": "TxStartPoint"},
        "attributeValue": "EVConnected"}]})
    assert put["setVariableResult"][0]["attributeStatus"] == "Accepted"
    assert await rig.reserve(agent, 2, 1, "TAG1") == "Accepted"
    agent.hal.plug(1)
    started = await rig.started()
    assert "reservationId" not in started
    await agent.station.quiet()
    assert rig.statuses()[-1] == "Reserved"
    assert await rig.tap(agent, "TAG2") == "rejected"
    assert await rig.tap(agent, "TAG1") == "authorized"
    event = await rig.csms.wait_for(
        "TransactionEvent", station_id=SID,
        predicate=lambda p: p["triggerReason"] == "Authorized")
    assert event["reservationId"] == 2


# ====================================================================== clock corrections


async def test_expiry_timer_follows_a_clock_correction_by_a_heartbeat(rig):
    """The expiry is a wall-clock time: when a Heartbeat answer moves the clock 500 s on, a
    reservation due in 540 s expires 40 s later, not 540 s later."""
    clock = FakeClock(start_wall=datetime.now(UTC).timestamp())
    base_wall, base_mono, skew = clock.wall(), clock.monotonic(), [0.0]
    rig.csms.now = lambda: datetime.fromtimestamp(
        base_wall + clock.monotonic() - base_mono + skew[0], UTC)
    rig.csms.heartbeat_interval = 60
    agent = await rig.start(clock=clock)
    assert await rig.reserve(agent, 31, 1, "TAG1", seconds=600) == "Accepted"
    await rig.shows("Reserved")
    await eventually(lambda: any(599 < d <= 601 for d in clock.pending()),
                     "the expiry timer sleeps until the expiry")
    skew[0] = 500.0  # the CSMS's clock is 500 s ahead of the station's
    beats = len(rig.csms.messages(SID, "Heartbeat"))
    await clock.advance(60)
    await rig.csms.wait_for("Heartbeat", station_id=SID, count=beats + 1)
    await eventually(lambda: any(39 < d <= 41 for d in clock.pending()),
                     f"the timer re-armed to the corrected time (pending: {clock.pending()})")
    assert len(agent.station.reservations.all()) == 1
    await clock.advance(41)
    await rig.shows("Available")
    assert agent.station.reservations.all() == []


# ====================================================================== one EVSE, no EVSE named


@pytest.mark.parametrize("kit", ["1.6"], indirect=True)
async def test_v16_connector_0_on_a_station_with_one_connector(rig):
    """1.6 5.13 connectorId 0 with a single connector: that connector is the one kept for
    the idTag, so it shows Reserved at once; another idTag is refused by card and by
    RemoteStart, a second reservation of connector 0 or of connector 1 is Occupied, and the
    reserving idTag starts with the reservationId."""
    agent = await rig.start()
    assert await rig.reserve(agent, 41, None, "TAG1") == "Accepted"
    await rig.shows("Reserved")
    assert await rig.reserve(agent, 42, None, "TAG2") == "Occupied"
    assert await rig.reserve(agent, 43, 1, "TAG2") == "Occupied"
    action, payload = rig.kit.remote_start("TAG2", 1)
    assert (await rig.link.call(action, payload))["status"] == "Rejected"
    assert await rig.tap(agent, "TAG2") == "rejected"
    agent.hal.plug(1)
    await agent.station.quiet()
    assert rig.statuses()[-1] == "Reserved"
    assert await rig.tap(agent, "TAG1") == "authorized"
    start = await rig.started()
    assert start["reservationId"] == 41 and start["connectorId"] == 1
    assert agent.station.reservations.all() == []


@pytest.mark.parametrize("kit", ["2.0.1"], indirect=True)
@pytest.mark.parametrize("evse", [1, None], ids=["evse", "no-evse"])
async def test_reserved_evse_reported_by_notify_event_too(rig, evse):
    """Errata 2.8.1 (H01.FR.20 / H01.FR.23): the connectors of the reserved EVSE, and the
    EVSE, report AvailabilityState Reserved by NotifyEvent too; with one EVSE a reservation
    of no EVSE holds it. Its end reports Available."""
    await rig.start()

    def reserved_events() -> list[tuple[str, str]]:
        return [(e["component"]["name"], e["actualValue"])
                for p in rig.csms.messages(SID, "NotifyEvent") for e in p["eventData"]
                if e["variable"]["name"] == "AvailabilityState"
                and e["component"].get("evse", {}).get("id") == 1]

    assert await rig.reserve(rig.agents[-1], 51, evse, "TAG1") == "Accepted"
    await rig.shows("Reserved")
    await eventually(lambda: reserved_events()[-2:] == [
        ("Connector", "Reserved"), ("EVSE", "Reserved")], "Reserved by NotifyEvent")
    assert await rig.cancel(51) == "Accepted"
    await eventually(lambda: reserved_events()[-2:] == [
        ("Connector", "Available"), ("EVSE", "Available")], "Available again")


# ====================================================================== 2.1


@pytest.mark.parametrize("kit", ["2.1"], indirect=True)
async def test_21_reservation_with_the_wider_idtoken_and_connector_type(rig):
    """2.1 ReserveNow: idToken up to 255 characters of any type, connectorType a free
    string (one this station has not is Rejected); the expiry reported with the 2.1
    ReservationStatusUpdate."""
    clock = FakeClock(start_wall=datetime.now(UTC).timestamp())
    rig.csms.now = lambda: datetime.fromtimestamp(clock.wall(), UTC)
    agent = await rig.start(clock=clock)
    token = "E" * 200
    payload = {"id": 61, "expiryDateTime": rig.expiry(agent, 600),
               "idToken": {"idToken": token, "type": "EVCCID"}, "evseId": 1}
    assert (await rig.link.call("ReserveNow", payload))["status"] == "Accepted"
    await rig.shows("Reserved")
    other = {"id": 62, "expiryDateTime": rig.expiry(agent, 600), "connectorType": "cChaoJi",
             "idToken": {"idToken": "TAG2", "type": "ISO14443"}}
    assert (await rig.link.call("ReserveNow", other))["status"] == "Rejected"
    assert agent.station.reservations.get(61).token == token
    await eventually(lambda: any(599 < d <= 601 for d in clock.pending()),
                     "the expiry timer sleeps until the expiry")
    await clock.advance(601)
    update = await rig.csms.wait_for("ReservationStatusUpdate", station_id=SID)
    assert update == {"reservationId": 61, "reservationUpdateStatus": "Expired"}
    await rig.shows("Available")
