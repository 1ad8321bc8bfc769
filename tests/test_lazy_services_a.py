"""Reservations, the display's message board and the costs are built on first use (issue 18).

An idle station (nothing reserved, no display message, no cost stored) neither imports nor
builds them; the first request that needs one builds it and answers as before; what they keep
in the state file brings them back at the next start-up (one row query each), with their
timers and what the screen shows; and the questions whose answer is "nothing" (is this EVSE
reserved, the status) are answered without building them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from agent.clock import FakeClock, iso
from agent.testing.csms import TestCsms
from tests.conftest import eventually, online, online201, version_rig
from tests.test_display import screen, shows, total_on_end, tx_id
from tests.test_startup_imports import _IDLE_16, _idle_station

VERSIONS = ("1.6", "2.0.1", "2.1")
LAZY = ("agent.core.reservations", "agent.core.display_messages", "agent.core.cost")
# The 2.1 local cost block imports the tariff engine (and with it agent.core.cost) where a
# tariff is used (tests/test_lazy_services_d.py): on every version none of them is loaded.
LAZY_ON = {"1.6": LAZY, "2.0.1": LAZY, "2.1": LAZY}
NO_SCREEN = '"hal": {"driver": "mock", "display": {"type": "none"}}, "storage":'


async def up(agent: Any, csms: TestCsms) -> Any:
    return await (online if agent.adapter.version == "1.6" else online201)(agent, csms)


# ====================================================================== the idle station


@pytest.mark.parametrize("version", VERSIONS)
def test_an_idle_station_does_not_load_reservations_messages_or_costs(version):
    """The mock HAL's screen shows the station's own pages; the rest stays unloaded."""
    script = _IDLE_16.replace('["1.6"]', f'["{version}"]')
    status, loaded = _idle_station(script, LAZY_ON[version])
    assert status == "Idle"
    assert loaded == []


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
def test_a_station_without_a_screen_does_not_load_the_display_either(version):
    script = _IDLE_16.replace('["1.6"]', f'["{version}"]').replace('"storage":', NO_SCREEN)
    assert NO_SCREEN in script
    status, loaded = _idle_station(script, (*LAZY, "agent.core.display"))
    assert (status, loaded) == ("Idle", [])


@pytest.mark.parametrize("version", VERSIONS)
async def test_plug_tap_and_remote_start_build_no_reservation_service(short_dir, version):
    """The authorization path asks "is this EVSE reserved" on every card: without a
    reservation service the answer is no, and nothing is built to give it."""
    async with version_rig(version, short_dir) as (csms, make):
        agent = await make()
        await up(agent, csms)
        agent.hal.plug(1)
        agent.hal.tap("TAG1")
        await eventually(lambda: agent.station.evses[1].tx is not None, "a transaction runs")
        assert agent.station.remote_start_target(None) is None  # the only EVSE is in use
        assert agent.status()["evses"][0]["token"] == "TAG1"
        assert agent.station.built("reservations") is None
        assert agent.station.built("cost") is None
        if version == "1.6":  # a 1.6 transaction never gets a cost: no row is written
            assert not agent.storage.tx_costs_any()


# ====================================================================== reservations


def _reserve(version: str, rid: int, expiry: str) -> tuple[str, dict]:
    if version == "1.6":
        return "ReserveNow", {"connectorId": 1, "expiryDate": expiry, "idTag": "TAG1",
                              "reservationId": rid}
    return "ReserveNow", {"id": rid, "expiryDateTime": expiry, "evseId": 1,
                          "idToken": {"idToken": "TAG1", "type": "ISO14443"}}


def _statuses(csms: TestCsms, version: str) -> list[str]:
    key, evse = ("connectorId", "status") if version == "1.6" else ("evseId", "connectorStatus")
    return [p[evse] for p in csms.messages("CP1", "StatusNotification") if p.get(key) == 1]


@pytest.mark.parametrize("version", VERSIONS)
async def test_TC_H_07_CS_a_reservation_kept_across_a_restart_expires_on_time(short_dir,
                                                                             version):
    """The first ReserveNow builds the service; the restart on the same state file builds it
    at start-up (Reserved is reported before anyone asks), and its expiry timer, armed
    from the stored expiry, frees the EVSE on the fake clock (2.x: ReservationStatusUpdate
    Expired)."""
    async with version_rig(version, short_dir, fake_clock=True) as (csms, make):
        clock = FakeClock(start_wall=datetime.now(UTC).timestamp())
        csms.now = lambda: datetime.fromtimestamp(clock.wall(), UTC)
        agent = await make(clock=clock)
        link = await up(agent, csms)
        assert agent.station.built("reservations") is None
        assert (await link.call("CancelReservation", {"reservationId": 3}))["status"] \
            == "Rejected", "nothing to cancel, nothing built"
        assert agent.station.built("reservations") is None
        expiry = datetime.fromtimestamp(int(clock.wall()) + 600, UTC)
        action, payload = _reserve(version, 3, iso(expiry))
        assert (await link.call(action, payload))["status"] == "Accepted"
        assert agent.station.built("reservations") is not None
        await agent.stop()

        again = await make(clock=clock)  # the same state file, the same (fake) time
        assert again.station.built("reservations") is not None, "built by the start-up"
        await up(again, csms)
        await eventually(lambda: _statuses(csms, version)[-1:] == ["Reserved"],
                         f"Reserved after the restart ({_statuses(csms, version)})")
        await eventually(lambda: any(590 < d <= 601 for d in clock.pending()),
                         "the expiry timer sleeps until the stored expiry")
        delay = next(d for d in clock.pending() if 590 < d <= 601)
        await clock.advance(delay - 1)
        await again.station.quiet()
        assert [r.id for r in again.station.reservations.all()] == [3], "not yet"
        await clock.advance(1)
        await eventually(lambda: _statuses(csms, version)[-1:] == ["Available"],
                         "Available at the expiry")
        assert again.station.reservations.all() == []
        if version != "1.6":
            update = await csms.wait_for("ReservationStatusUpdate", station_id="CP1")
            assert update == {"reservationId": 3, "reservationUpdateStatus": "Expired"}
        await again.stop()

        third = await make(clock=clock)  # nothing stored any more: nothing built
        assert third.station.built("reservations") is None


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_the_first_reserve_now_keeps_the_evse_for_its_token(short_dir, version):
    """Built by the request, the service answers and rules as an eager one did."""
    async with version_rig(version, short_dir) as (csms, make):
        agent = await make()
        link = await up(agent, csms)
        expiry = iso(datetime.fromtimestamp(int(agent.clock.wall()) + 600, UTC))
        action, payload = _reserve(version, 4, expiry)
        assert (await link.call(action, payload))["status"] == "Accepted"
        await eventually(lambda: _statuses(csms, version)[-1:] == ["Reserved"], "Reserved")
        agent.hal.tap("OTHER", 1)
        await agent.station.quiet()
        assert agent.station.evses[1].session is None or \
            not agent.station.evses[1].session.authorized, "another card is refused"
        assert (await link.call("CancelReservation", {"reservationId": 4}))["status"] \
            == "Accepted"
        await eventually(lambda: _statuses(csms, version)[-1:] == ["Available"], "Available")


# ====================================================================== display messages


def _message(mid: int, text: str) -> dict:
    return {"message": {"id": mid, "priority": "AlwaysFront",
                        "message": {"format": "UTF8", "content": text}}}


@pytest.mark.parametrize("version", ["2.0.1", "2.1"])
async def test_a_display_message_builds_the_board_and_is_shown_after_a_restart(short_dir,
                                                                               version):
    async with version_rig(version, short_dir) as (csms, make):
        agent = await make()
        link = await online201(agent, csms)
        assert agent.display is not None and agent.display.message_count() == 0
        got = await link.call("GetDisplayMessages", {"requestId": 1})
        assert got["status"] == "Unknown", "none kept, none built to find out"
        assert (await link.call("ClearDisplayMessage", {"id": 1}))["status"] == "Unknown"
        assert agent.display._board is None
        assert (await link.call("SetDisplayMessage", _message(1, "Closed at 22:00")))[
            "status"] == "Accepted"
        await shows(agent, "Closed at 22:00")
        await agent.stop()

        again = await make()
        assert again.display is not None
        assert again.display.message_count() == 1, "the board was built by the start-up"
        await shows(again, "Closed at 22:00")
        assert (await (await online201(again, csms)).call(
            "GetDisplayMessages", {"requestId": 2}))["status"] == "Accepted"
        await csms.wait_for("NotifyDisplayMessages", station_id="CP1",
                            predicate=lambda p: p["requestId"] == 2)


# ====================================================================== tariff and cost


@pytest.mark.parametrize("version", ["2.0.1", "2.1"])
async def test_the_final_cost_builds_the_costs_and_a_restart_brings_them_back(short_dir,
                                                                              version):
    """2.0.1 I03 / 2.1 I03: answers without a cost build nothing; the Ended answer's
    totalCost does; the next start-up finds it stored and builds the costs at once."""
    async with version_rig(version, short_dir) as (csms, make):
        total_on_end(csms, 12.5)
        agent = await make()
        await online201(agent, csms)
        agent.hal.tap("TAG1")
        agent.hal.plug(1)
        await shows(agent, "Charging")
        tx = await tx_id(csms)
        assert agent.station.built("cost") is None, "no answer spoke of a cost yet"
        agent.hal.tap("TAG1")
        await eventually(lambda: "Total 12.50 EUR" in screen(agent), "the final total")
        assert agent.station.built("cost") is not None
        await agent.stop()

        again = await make()
        assert again.station.built("cost") is not None, "built by the start-up"
        cost = again.costs.of(tx)
        assert cost is not None and cost.final and cost.total == Decimal("12.5")


async def test_costs_built_mid_transaction_adopt_it(short_dir):
    """A CostUpdated is the first word of a cost: the costs built by it know the running
    transaction as if they had seen it start (its driver, so a tariff text follows)."""
    async with version_rig("2.0.1", short_dir) as (csms, make):
        agent = await make()
        link = await online201(agent, csms)
        agent.hal.tap("TAG1")
        agent.hal.plug(1)
        await shows(agent, "Charging")
        tx = await tx_id(csms)
        assert agent.station.built("cost") is None
        assert await link.call("CostUpdated", {"totalCost": 1.25, "transactionId": tx}) == {}
        await eventually(lambda: "Cost 1.25 EUR" in screen(agent), "the running cost")
        cost = agent.costs.of(tx)
        assert cost is not None and cost.token == "TAG1" and cost.total == Decimal("1.25")


# ====================================================================== the names


def test_the_names_the_blocks_read_without_the_services_are_the_services_own():
    from agent.core import cost, display, reservations, service_settings
    from agent.ocpp.v201 import reservation as v201_reservation

    assert set(service_settings.DISPLAY_LANGUAGES) == set(display.TEXTS)
    assert v201_reservation._REPORTED_ENDS == {reservations.EXPIRED, reservations.REMOVED}
    assert reservations.RESERVATION_SETTINGS is service_settings.RESERVATION_SETTINGS
    assert cost.CURRENCY == service_settings.CURRENCY


def test_unreadable_tables_count_as_stored(tmp_path: Path):
    """A start-up check that cannot read its table builds the service, which says why."""
    from agent.core.station import Station
    from agent.storage import Storage, StorageError
    from hal.mock import MockHal

    storage = Storage(str(tmp_path / "s.db"))
    try:
        station = Station(MockHal(1), storage, FakeClock())

        def broken() -> bool:
            raise StorageError("disk I/O error")

        storage.reservations_any = broken  # type: ignore[method-assign]
        assert station._reservations_stored()
    finally:
        storage.close()
