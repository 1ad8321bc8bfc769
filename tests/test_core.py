"""The version-neutral core on the mock HAL: session life cycle and the safety invariants."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.clock import FakeClock
from agent.core.evse import EV_ANSWER_GRACE_S, TxRules
from agent.core.model import AuthResult, ConnectorStatus, StopReason, Token, TxPoint
from agent.core.station import Station
from agent.storage import Storage
from hal.interfaces import FaultKind, PilotState
from hal.mock import MockHal


class Recorder:
    """A CoreObserver and Authorizer that writes down what the core tells it."""

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.statuses: list[tuple[int, str, FaultKind | None]] = []
        self.started: list = []
        self.ended: list = []
        self.events: list = []
        self.allowed: set[str] = {"GOOD", "GOOD2"}
        self.parents: dict[str, str] = {"GOOD": "G1", "GOOD2": "G1"}

    def status_changed(self, snap, fault) -> None:
        self.statuses.append((snap.evse_id, snap.status.value, fault))

    def transaction_started(self, tx, snap, trigger) -> None:
        self.started.append(tx)
        self.storage.outbox_put("Start", {"id": tx.local_id}, tx_ref=tx.local_id)

    def transaction_ended(self, tx, reason, snap) -> None:
        self.ended.append((tx, reason))
        self.storage.outbox_put("Stop", {"id": tx.local_id}, tx_ref=tx.local_id)

    def session_event(self, evse_id, event, detail) -> None:
        self.events.append((evse_id, event))

    def fault_changed(self, evse_id, kind, active, detail) -> None:
        self.events.append((evse_id, f"fault:{kind}:{active}"))

    async def authorize(self, token: Token, evse_id) -> AuthResult:
        if token.id in self.allowed:
            return AuthResult("Accepted", parent=self.parents.get(token.id))
        return AuthResult("Invalid")

    @property
    def last_status(self) -> str:
        return self.statuses[-1][1]


@pytest.fixture
async def rig():
    clock = FakeClock()
    storage = Storage(":memory:")
    hal = MockHal(1, monotonic=clock.monotonic, ev_max_current_a=16)
    station = Station(hal, storage, clock, meter_poll_s=1.0)
    rec = Recorder(storage)
    station.observer = rec
    station.authorizer = rec
    await station.start()
    await station.quiet()
    yield station, hal, rec, clock
    await station.stop()
    storage.close()


async def settle(station: Station) -> None:
    """Let the HAL event pump process everything queued and the statuses be reported."""
    await station.quiet(5)


def contactor(hal: MockHal, evse: int = 1) -> bool:
    return hal.evses[evse].contactor.commanded_closed


async def test_contactor_open_at_start_and_status_available(rig):
    station, hal, rec, _ = rig
    assert not contactor(hal)
    assert station.evses[1].status == ConnectorStatus.AVAILABLE
    assert rec.statuses[0][:2] == (1, "Available")


async def test_plug_then_tap_starts_and_charges(rig):
    station, hal, rec, _ = rig
    hal.plug(1)
    await settle(station)
    assert rec.last_status == "Preparing"
    assert not contactor(hal), "no authorization yet"
    assert await station.present_token(Token("GOOD")) == "authorized"
    await settle(station)
    assert hal.evses[1].ev.current_limit == 16.0 or hal.evses[1].ev.current_limit == 32.0
    assert hal.evses[1].ev.pilot_state() == PilotState.C
    assert contactor(hal)
    assert rec.last_status == "Charging"
    assert len(rec.started) == 1 and rec.started[0].id_token == "GOOD"
    assert station.storage.tx_open()[0].local_id == rec.started[0].local_id


async def test_tap_then_plug_starts_on_plug(rig):
    station, hal, rec, _ = rig
    assert await station.present_token(Token("GOOD")) == "authorized"
    await settle(station)
    assert rec.last_status == "Preparing"
    assert rec.started == []
    hal.plug(1)
    await settle(station)
    assert len(rec.started) == 1
    assert contactor(hal)


async def test_unknown_token_never_closes_contactor(rig):
    station, hal, rec, _ = rig
    hal.plug(1)
    await settle(station)
    hal.set_ev_state(1, "C")  # an EV that asks for energy on its own
    await settle(station)
    assert await station.present_token(Token("BAD")) == "rejected"
    await settle(station)
    assert not contactor(hal)
    assert rec.started == []


@pytest.mark.parametrize("how", ["unplug", "pilot_error", "meter", "welded_check", "inop"])
async def test_contactor_opens(rig, how):
    station, hal, rec, clock = rig
    hal.plug(1)
    await station.present_token(Token("GOOD"))
    await settle(station)
    assert contactor(hal)
    if how == "unplug":
        hal.unplug(1)
        await settle(station)
        assert rec.ended[-1][1] == StopReason.EV_DISCONNECTED
        assert rec.last_status == "Available"
    elif how == "pilot_error":
        hal.set_ev_state(1, "E")
        await settle(station)
        assert rec.last_status == "Faulted"
    elif how == "meter":
        hal.inject_fault(1, "meter")
        await clock.advance(2.5)  # two failed polls make a fault
        await settle(station)
        assert FaultKind.METER in station.evses[1].faults
        assert rec.last_status == "Faulted"
    elif how == "welded_check":
        await station.evses[1].raise_fault(FaultKind.OVER_CURRENT, "test")
        await settle(station)
        assert rec.last_status == "Faulted"
    elif how == "inop":
        await station.evses[1].end_transaction(StopReason.OTHER)
    assert not contactor(hal)


async def test_welded_contactor_is_reported_and_never_closes_again(rig):
    station, hal, rec, _ = rig
    hal.plug(1)
    await station.present_token(Token("GOOD"))
    await settle(station)
    hal.inject_fault(1, "welded")
    hal.set_ev_state(1, "B")  # EV pauses: the core opens, the feedback stays closed
    await settle(station)
    evse = station.evses[1]
    assert FaultKind.WELDED in evse.faults
    assert rec.last_status == "Faulted"
    hal.set_ev_state(1, "C")
    await settle(station)
    assert not evse.hw.contactor.commanded_closed
    hal.clear_fault(1, "welded")
    await settle(station)
    assert FaultKind.WELDED not in evse.faults
    assert evse.hw.contactor.commanded_closed, "charging resumes once cleared"


async def test_ev_pause_is_suspended_ev(rig):
    station, hal, rec, _ = rig
    hal.plug(1)
    await station.present_token(Token("GOOD"))
    await settle(station)
    hal.set_ev_state(1, "B")
    await settle(station)
    assert not contactor(hal)
    assert rec.last_status == "SuspendedEV"
    hal.set_ev_state(1, "C")
    await settle(station)
    assert contactor(hal) and rec.last_status == "Charging"


async def test_limit_below_minimum_is_suspended_evse(rig):
    station, hal, rec, _ = rig
    hal.plug(1)
    await station.present_token(Token("GOOD"))
    await settle(station)
    await station.evses[1].set_limit("test", 4.0)
    await settle(station)
    assert not contactor(hal)
    assert hal.evses[1].ev.current_limit == 0.0
    assert rec.last_status == "SuspendedEVSE"


async def test_same_card_stops_and_finishing_until_unplug(rig):
    station, hal, rec, _ = rig
    hal.plug(1)
    await station.present_token(Token("GOOD"))
    await settle(station)
    assert await station.present_token(Token("GOOD")) == "stopped"
    await settle(station)
    assert not contactor(hal)
    assert rec.ended[-1][1] == StopReason.LOCAL
    assert rec.last_status == "Finishing"
    hal.unplug(1)
    await settle(station)
    assert rec.last_status == "Available"
    assert len(rec.ended) == 1, "exactly one end"


async def test_group_card_stops_session(rig):
    station, hal, rec, _ = rig
    hal.plug(1)
    await station.present_token(Token("GOOD"))
    await settle(station)
    assert await station.present_token(Token("GOOD2")) == "stopped"
    assert rec.ended[-1][1] == StopReason.LOCAL


async def test_connection_timeout_drops_authorization(rig):
    station, hal, rec, clock = rig
    station.settings.set_internal("ConnectionTimeOut", 30)
    await station.present_token(Token("GOOD"))
    await settle(station)
    assert rec.last_status == "Preparing"
    await clock.advance(31)
    await settle(station)
    assert rec.last_status == "Available"
    assert station.evses[1].session is None
    hal.plug(1)
    await settle(station)
    assert not contactor(hal) and rec.started == []


async def test_inoperative_scheduled_during_transaction(rig):
    station, hal, rec, _ = rig
    hal.plug(1)
    await station.present_token(Token("GOOD"))
    await settle(station)
    assert await station.set_operative(1, False) == "Scheduled"
    assert contactor(hal), "a scheduled change does not interrupt the session"
    hal.unplug(1)
    await settle(station)
    assert rec.last_status == "Unavailable"
    assert station.storage.get_setting("core.evse.1.operative") == "0"
    assert await station.present_token(Token("GOOD")) == "ignored"


async def test_stop_point_authorized_keeps_tx_across_unplug(rig):
    station, hal, rec, _ = rig
    station.use_rules(TxRules(stop_points=lambda: frozenset({TxPoint.AUTHORIZED})))
    hal.plug(1)
    await station.present_token(Token("GOOD"))
    await settle(station)
    hal.unplug(1)
    await settle(station)
    assert rec.ended == [] and not contactor(hal)
    hal.plug(1)
    await settle(station)
    assert contactor(hal), "same session resumes on re-plug"
    await station.present_token(Token("GOOD"))
    assert rec.ended[-1][1] == StopReason.LOCAL


async def test_energy_is_integrated_and_journalled(rig):
    station, hal, rec, clock = rig
    station.meter_persist_s = 5
    hal.plug(1)
    await station.present_token(Token("GOOD"))
    await settle(station)
    await clock.advance(60)
    await settle(station)
    tx = station.storage.tx_open()[0]
    # 16 A x 230 V x 3 phases for 60 s = 184 Wh
    assert tx.last_meter_wh == pytest.approx(184, abs=10)
    assert station.evses[1].energy_wh() == pytest.approx(184, abs=4)


ACTIONS = st.lists(st.sampled_from([
    "plug", "unplug", "tap_good", "tap_bad", "ev_B", "ev_C", "ev_E", "clear_pilot",
    "fault_meter", "clear_meter", "welded", "clear_welded", "inop", "op", "limit_0",
    "limit_none", "remote_stop",
]), min_size=1, max_size=25)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actions=ACTIONS)
def test_invariant_under_random_sequences(actions):
    """Whatever happens, a closed contactor means every closing condition holds."""

    async def scenario() -> None:
        clock = FakeClock()
        storage = Storage(":memory:")
        hal = MockHal(1, monotonic=clock.monotonic)
        station = Station(hal, storage, clock)
        rec = Recorder(storage)
        station.observer = rec
        station.authorizer = rec
        await station.start()
        evse = station.evses[1]
        try:
            for a in actions:
                if a == "plug":
                    hal.plug(1)
                elif a == "unplug":
                    hal.unplug(1)
                elif a == "tap_good":
                    await station.present_token(Token("GOOD"))
                elif a == "tap_bad":
                    await station.present_token(Token("BAD"))
                elif a.startswith("ev_"):
                    hal.set_ev_state(1, a[-1])
                elif a == "clear_pilot":
                    hal.clear_fault(1, "pilot")
                elif a == "fault_meter":
                    await evse.raise_fault(FaultKind.METER, "x")
                elif a == "clear_meter":
                    await evse.clear_fault(FaultKind.METER)
                elif a == "welded":
                    hal.inject_fault(1, "welded")
                elif a == "clear_welded":
                    hal.clear_fault(1, "welded")
                elif a == "inop":
                    await station.set_operative(1, False)
                elif a == "op":
                    await station.set_operative(1, True)
                elif a == "limit_0":
                    await evse.set_limit("test", 0)
                elif a == "limit_none":
                    await evse.set_limit("test", None)
                elif a == "remote_stop":
                    await evse.deauthorize(StopReason.REMOTE)
                # The invariant needs the HAL events handled, not the statuses reported.
                await asyncio.wait_for(station.settled(), 5)
                if evse.hw.contactor.commanded_closed:
                    s = evse.session
                    assert hal.evses[1].ev.pilot_state().wants_energy
                    assert s is not None and s.authorized and s.energy_allowed
                    assert evse.operative
                    assert evse.blocking_fault is None
                    assert evse.hw.ev.current_limit >= 6
                # Every transaction that ended was recorded as ended exactly once.
                ids = [tx.local_id for tx, _ in rec.ended]
                assert len(ids) == len(set(ids))
        finally:
            await station.stop()
            storage.close()
        assert not hal.evses[1].contactor.commanded_closed, "open after shutdown"

    asyncio.run(scenario())


async def test_plug_locked_before_energy_and_released_after(rig):
    station, hal, rec, _ = rig
    lock = hal.evses[1].lock
    hal.plug(1)
    await settle(station)
    assert not lock.locked, "no session yet: the plug may be pulled"
    await station.present_token(Token("GOOD"))
    await settle(station)
    assert lock.locked and contactor(hal)
    await station.present_token(Token("GOOD"))  # stop
    await settle(station)
    assert not contactor(hal) and not lock.locked


async def test_lock_failure_keeps_the_contactor_open(rig):
    station, hal, rec, _ = rig
    hal.inject_fault(1, "lock")
    hal.plug(1)
    await station.present_token(Token("GOOD"))
    await settle(station)
    assert not contactor(hal)
    assert FaultKind.LOCK in station.evses[1].faults
    assert rec.last_status == "Faulted"


async def test_cable_kept_locked_after_ev_side_unplug_until_same_card(rig):
    station, hal, rec, _ = rig
    station.settings.set_internal("UnlockConnectorOnEVSideDisconnect", False)
    hal.plug(1)
    await station.present_token(Token("GOOD"))
    await settle(station)
    hal.unplug(1)
    await settle(station)
    assert not contactor(hal) and hal.evses[1].lock.locked, "theft protection"
    assert await station.present_token(Token("OTHER")) != "unlocked"
    assert hal.evses[1].lock.locked
    assert await station.present_token(Token("GOOD")) == "unlocked"
    assert not hal.evses[1].lock.locked


async def test_limit_sources_cap_the_offer_and_the_lowest_names_the_source(rig):
    """set_limit is the seam every limit source uses (smart charging, load management, DER):
    the offer is the lowest, in A or converted from W, and the EV resumes when it rises."""
    station, hal, rec, _ = rig
    evse = station.evses[1]
    hal.plug(1)
    await station.present_token(Token("GOOD"))
    await settle(station)
    await evse.set_limit("csms", 20.0)
    await evse.set_limit("site", 3 * 230.0 * 10, unit="W")  # 6.9 kW on 3 phases = 10 A
    await settle(station)
    assert evse.offered_a == 10.0 and evse.snapshot().limit_source == "site"
    await evse.set_limit("site", None)
    await settle(station)
    assert evse.offered_a == 20.0 and evse.snapshot().limit_source == "csms"
    with pytest.raises(ValueError, match="unit"):
        await evse.set_limit("csms", 1.0, unit="kW")


async def test_power_setpoint_is_refused_by_a_charge_only_evse(rig):
    """The plain mock EV is pilot-only: no setpoint, no power stage in the snapshot (the
    bidirectional mock and the setpoint seam: tests/test_v2x_power.py)."""
    station, hal, rec, _ = rig
    evse = station.evses[1]
    hal.plug(1)
    await station.present_token(Token("GOOD"))
    await settle(station)
    with pytest.raises(ValueError, match="no setpoint"):
        await evse.set_power_setpoint(-3000.0)
    assert hal.evses[1].ev.power_setpoint is None and evse.snapshot().power_stage is None


async def test_session_start_reports_the_settled_status_not_the_step_before(rig):
    """The offer makes the EV answer a moment later (B -> C): the core reports Charging,
    never a SuspendedEV that lasted a millisecond (what 1.6 once sent on every start)."""
    station, hal, rec, clock = rig
    hal.plug(1)
    await settle(station)
    await station.present_token(Token("GOOD"))
    await settle(station)
    assert [s for _, s, _ in rec.statuses] == ["Available", "Preparing", "Charging"]


async def test_ev_that_does_not_take_the_offer_is_suspended_ev_after_the_grace(rig):
    station, hal, rec, clock = rig
    hal.set_ev_state(1, "B")  # plugged, but the EV will not ask for energy
    await settle(station)
    await station.present_token(Token("GOOD"))
    with pytest.raises(TimeoutError):  # the report waits for the EV's grace on the clock
        await station.quiet(0.2)
    assert rec.last_status == "Preparing", "reported before the EV had time to answer"
    await clock.advance(EV_ANSWER_GRACE_S)
    await settle(station)
    assert rec.last_status == "SuspendedEV"


@pytest.mark.parametrize("plug_at", [1, 2])
async def test_a_card_tapped_at_a_shared_reader_follows_the_ev(plug_at):
    """One reader, two sockets: the card is tapped first, the driver then plugs in at either
    socket, and the session starts where the EV is (the authorization moves to it)."""
    clock = FakeClock()
    storage = Storage(":memory:")
    hal = MockHal(2, monotonic=clock.monotonic, ev_max_current_a=16)
    station = Station(hal, storage, clock, meter_poll_s=1.0)
    rec = Recorder(storage)
    station.observer = rec
    station.authorizer = rec
    await station.start()
    try:
        await settle(station)
        assert await station.present_token(Token("GOOD")) == "authorized"
        await settle(station)
        hal.plug(plug_at)
        await settle(station)
        other = 3 - plug_at
        assert contactor(hal, plug_at), f"charging at EVSE {plug_at}, where the EV is"
        assert not contactor(hal, other)
        assert [tx.evse_id for tx in rec.started] == [plug_at]
        assert station.evses[other].session is None, "nothing left waiting at the other one"
    finally:
        await station.stop()
        storage.close()
