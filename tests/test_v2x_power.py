"""The bidirectional EV and power stage of the mock HAL, and the core's setpoint seam.

Issue 17 (HAL part): energy conservation (state of charge and the import / export registers
agree with the integrated signed power on the injected clock), never beyond the EV's or the
power stage's limits (hypothesis over random setpoint sequences), no discharge without a
bidirectional energy transfer mode, the contactor rules unchanged, the V2X measurands in a
2.1 TransactionEvent, and what ``ctl`` shows.
"""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.clock import FakeClock
from agent.control import _build_parser, _request_args, render_status
from agent.core.metering import build_samples, supported_measurands
from agent.core.model import Token
from agent.core.station import Station
from agent.core.v2x import SetpointBounds, bounds
from agent.storage import Storage
from hal.factory import HalConfigError, build_hal, parse_hal_config
from hal.interfaces import EnergyTransferMode, MeterReading, PowerLimits
from hal.mock import MockHal
from hal.mock_v2x import BidiSim, V2xParams
from tests.conftest import online201, version_rig
from tests.test_core import Recorder

V = 230.0


class Clock:
    """The injected monotonic clock of a bare mock HAL."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


async def bare(params: V2xParams, *, offered: float = 32.0, phases: int = 3,
               max_current_a: float = 32.0) -> tuple[MockHal, Clock]:
    """A bidirectional EVSE driven by hand (no core): plugged, offered, contactor closed."""
    clock = Clock()
    hal = MockHal(1, monotonic=clock, phases=phases, max_current_a=max_current_a,
                  ev_max_current_a=32.0, v2x={1: params}, display=None)
    await hal.start(lambda event: None)
    hal.plug(1)
    hw = hal.evses[1]
    await hw.ev.set_current_limit(offered)
    await hw.contactor.set(True)
    return hal, clock


def sim(hal: MockHal) -> BidiSim:
    s = hal.sims[1]
    assert isinstance(s, BidiSim)
    return s


# ====================================================================== the mock's physics


async def test_energy_is_conserved_between_battery_registers_and_integrated_power():
    """Lossless: what the integrated signed power says moved is what both registers and the
    battery moved, to the float, over a sequence of charges, discharges and idles."""
    hal, clock = await bare(V2xParams(battery_wh=500_000, soc_percent=50))
    hw = hal.evses[1]
    start = await hw.meter.read()
    stored0 = sim(hal).stored_wh
    integrated = 0.0
    for watts, dt in [(-7000, 600), (11_000, 900), (None, 300), (0, 120), (-3500.5, 77),
                      (-22_080, 60), (5000, 1)]:
        await hw.ev.set_power_setpoint(watts)
        p = (await hw.meter.read()).power_w
        clock.t += dt
        integrated += p * dt / 3600.0
    end = await hw.meter.read()
    moved = (end.energy_import_wh - start.energy_import_wh) - \
        (end.energy_export_wh - start.energy_export_wh)
    assert moved == pytest.approx(integrated, abs=1e-3)
    assert end.energy_export_wh > 0 and end.energy_import_wh > 0  # both ways happened
    assert sim(hal).stored_wh - stored0 == pytest.approx(moved, abs=1e-6)
    soc = hw.ev.energy_state.soc_percent
    assert soc == pytest.approx(50 + moved / 500_000 * 100, abs=1e-3)


async def test_state_of_charge_bounds_stop_the_flow_at_the_instant_they_are_reached():
    hal, clock = await bare(V2xParams(battery_wh=10_000, soc_percent=30, min_soc_percent=20,
                                      max_soc_percent=90, ev_max_discharge_w=6000))
    hw = hal.evses[1]
    await hw.ev.set_power_setpoint(-6000)
    clock.t += 3600  # 6 kWh asked, 1 kWh available above the floor
    r = await hw.meter.read()
    assert r.energy_export_wh == pytest.approx(1000, abs=1e-6) and r.power_w == 0
    assert hw.ev.energy_state.soc_percent == pytest.approx(20)
    await hw.ev.set_power_setpoint(30_000)  # capped by the stage (22 kW) and the EV (32 A)
    assert (await hw.meter.read()).power_w == pytest.approx(32 * V * 3)
    clock.t += 3600
    r = await hw.meter.read()
    assert r.energy_import_wh == pytest.approx(7000, abs=1e-6) and r.power_w == 0
    assert hw.ev.energy_state.soc_percent == pytest.approx(90)
    assert hw.ev.energy_state.max_energy_wh == pytest.approx(0)
    assert hw.ev.energy_state.min_energy_wh == pytest.approx(-7000)


@pytest.mark.parametrize("how", ["ev charge-only", "no contactor", "pilot B", "no offer"])
async def test_mock_moves_no_energy_out_unless_everything_a_discharge_needs_holds(how):
    params = V2xParams(battery_wh=50_000, ev_bidirectional=how != "ev charge-only")
    hal, clock = await bare(params)
    hw = hal.evses[1]
    if how == "no contactor":
        await hw.contactor.set(False)
    elif how == "pilot B":
        hal.set_ev_state(1, "B")
    elif how == "no offer":
        await hw.ev.set_current_limit(0)
    await hw.ev.set_power_setpoint(-5000)
    clock.t += 600
    r = await hw.meter.read()
    assert r.power_w <= 0.0 and r.energy_export_wh == 0.0
    if how == "ev charge-only":
        assert hw.ev.energy_transfer_modes == {EnergyTransferMode.AC_THREE_PHASE}
        assert hw.ev.ev_limits.max_discharge_w == 0


SETPOINTS = st.lists(st.tuples(st.one_of(st.none(), st.floats(-40_000, 40_000)),
                               st.floats(0.0, 7200.0)), min_size=1, max_size=12)


@settings(max_examples=60, deadline=None)
@given(steps=SETPOINTS, ev_charge=st.floats(1000, 30_000), ev_dis=st.floats(0, 30_000),
       stage_charge=st.floats(1000, 30_000), stage_dis=st.floats(0, 30_000),
       offered=st.sampled_from([0.0, 6.0, 10.0, 32.0]), soc=st.floats(0, 100),
       battery=st.floats(1000, 100_000))
def test_mock_never_exceeds_the_ev_or_stage_limits(steps, ev_charge, ev_dis, stage_charge,
                                                   stage_dis, offered, soc, battery):
    """Whatever it is asked, the stage stays within the EV's, the stage's and the pilot's
    limits and the battery within its bounds, and the battery balance holds."""
    lo, hi = sorted((min(soc, 95.0), 20.0))
    params = V2xParams(battery_wh=battery, soc_percent=soc, min_soc_percent=lo,
                       max_soc_percent=max(hi, lo), ev_max_charge_w=ev_charge,
                       ev_max_discharge_w=ev_dis, stage_max_charge_w=stage_charge,
                       stage_max_discharge_w=stage_dis)

    async def scenario() -> None:
        hal, clock = await bare(params, offered=offered)
        hw = hal.evses[1]
        s = sim(hal)
        imp0, exp0, stored0 = s.energy_wh, s.export_wh, s.stored_wh
        charge_cap = min(ev_charge, stage_charge, offered * V * 3, 32 * V * 3)
        if offered < 6:
            charge_cap = 0.0
        dis_cap = min(ev_dis, stage_dis, 32 * V * 3) if offered >= 6 else 0.0
        for watts, dt in steps:
            await hw.ev.set_power_setpoint(watts)
            r = await hw.meter.read()
            assert -dis_cap - 1e-3 <= r.power_w <= charge_cap + 1e-3  # the meter's 3 decimals
            clock.t += dt
            r = await hw.meter.read()
            level = s.stored_wh / battery * 100  # unrounded (the EV reports 4 decimals)
            assert min(soc, lo) - 1e-9 <= level <= max(soc, params.max_soc_percent) + 1e-9
            assert s.energy_wh >= imp0 and s.export_wh >= exp0
            assert s.stored_wh - stored0 == pytest.approx(
                (s.energy_wh - imp0) - (s.export_wh - exp0), abs=1e-6)

    asyncio.run(scenario())


# ====================================================================== configuration


def test_mock_config_makes_chosen_evses_bidirectional_and_names_bad_keys():
    cfg = parse_hal_config({"driver": "mock", "v2x": {"evses": [2], "battery_wh": 75_000,
                                                      "mode": "DC_BPT"}}, [1, 2])
    hal = build_hal(cfg)
    assert not hal.evses[1].ev.supports_setpoint  # the plain, charge-only mock EV
    assert hal.evses[2].ev.supports_setpoint and hal.sims[2].params.battery_wh == 75_000
    hal.plug(2)
    assert hal.evses[2].ev.energy_transfer_modes == {EnergyTransferMode.DC,
                                                     EnergyTransferMode.DC_BPT}
    assert all(build_hal(parse_hal_config({"driver": "mock", "v2x": True}, [1, 2]))
               .evses[i].ev.supports_setpoint for i in (1, 2))
    for v2x, where, words in [
        ({"evses": [3]}, "hal.v2x.evses[0]", "not an EVSE"),
        ({"min_soc_percent": 90, "max_soc_percent": 80}, "hal.v2x", "above"),
        ({"mode": "AC"}, "hal.v2x.mode", "AC_BPT"),
        ({"batery_wh": 1}, "hal.v2x.batery_wh", "unknown key"),
        ({"soc_percent": 120}, "hal.v2x.soc_percent", "not allowed"),
        ("yes", "hal.v2x", "true, false or a mapping"),
    ]:
        with pytest.raises(HalConfigError) as err:
            parse_hal_config({"driver": "mock", "v2x": v2x}, [1, 2])
        assert err.value.args[0].startswith(where) and words in str(err.value), err.value


def test_bench_control_of_the_ev_validates_and_moves_the_battery():
    hal = MockHal(2, v2x={1: V2xParams(battery_wh=40_000)}, display=None)
    hal.plug(1)
    view = hal.set_ev(1, soc=75, max_discharge_w=3000)
    assert view["soc_percent"] == 75 and view["max_discharge_w"] == 3000
    assert hal.evses[1].ev.energy_state.stored_wh == 30_000
    with pytest.raises(ValueError, match="no bidirectional EV"):
        hal.set_ev(2, soc=50)
    with pytest.raises(ValueError, match="above max_soc_percent"):
        hal.set_ev(1, min_soc=90, max_soc=80)
    with pytest.raises(ValueError, match="unknown EV setting"):
        hal.set_ev(1, colour="red")
    assert hal.evses[1].ev.energy_state.soc_percent == 75  # a refused change changed nothing


# ====================================================================== the core's seam


@pytest.fixture
async def v2x_rig():
    clock = FakeClock()
    storage = Storage(":memory:")
    hal = MockHal(1, monotonic=clock.monotonic, ev_max_current_a=16, display=None,
                  v2x={1: V2xParams(battery_wh=60_000, soc_percent=50,
                                    ev_max_discharge_w=7000)})
    station = Station(hal, storage, clock, meter_poll_s=1.0)
    rec = Recorder(storage)
    station.observer = rec
    station.authorizer = rec
    await station.start()
    await station.quiet()
    yield station, hal, clock
    await station.stop()
    storage.close()


async def charging(station: Station, hal: MockHal) -> None:
    """Plug and authorize; one tick on, so that the station's V2X scheduler has given the
    new session its plan (ChargingOnly: no setpoint) before a test gives its own."""
    hal.plug(1)
    await station.present_token(Token("GOOD"))
    await station.quiet(5)
    await station.clock.advance(1)
    await station.quiet(5)
    assert hal.evses[1].contactor.commanded_closed


async def test_setpoint_belongs_to_a_session_and_is_held_to_every_bound(v2x_rig):
    station, hal, clock = v2x_rig
    evse, ev = station.evses[1], hal.evses[1].ev
    assert await evse.set_power_setpoint(-3000) is None  # no session: dropped
    assert evse.setpoint_request is None and ev.power_setpoint is None
    await charging(station, hal)
    assert await evse.set_power_setpoint(-3000) == -3000
    assert await evse.set_power_setpoint(-20_000) == -7000  # the EV gives 7 kW at most
    assert await evse.set_power_setpoint(50_000) == 16 * V * 3  # the EV takes 16 A
    await evse.set_limit("csms", 10)  # the pilot's offer bounds what goes in
    assert ev.power_setpoint == 10 * V * 3
    await evse.set_discharge_limit("der", 2500)
    assert await evse.set_power_setpoint(-5000) == -2500
    await evse.set_discharge_limit("der", None)
    assert ev.power_setpoint == -5000  # the request stays, the bounds moved
    assert await evse.set_power_setpoint(8, unit="A") == 8 * V * 3
    assert await evse.set_allowed_transfer(["AC_three_phase"])  # the CSMS: charging only
    assert await evse.set_power_setpoint(-5000) == 0.0
    snap = evse.snapshot().power_stage
    assert not snap.bidirectional and "CSMS allows no bidirectional" in snap.no_discharge
    assert await evse.set_allowed_transfer(None)
    assert ev.power_setpoint == -5000
    hal.unplug(1)  # the session ends: the setpoint and the allowed modes go with it
    await station.quiet(5)
    assert ev.power_setpoint is None and evse.snapshot().power_stage.setpoint_requested_w is None
    await charging(station, hal)
    assert ev.power_setpoint is None  # the next EV charges plainly: nothing inherited
    with pytest.raises(ValueError, match="unit"):
        await evse.set_power_setpoint(1, unit="kW")
    with pytest.raises(ValueError, match="energy transfer mode"):
        await evse.set_allowed_transfer(["V2G"])


async def test_discharge_is_refused_without_a_bidirectional_transfer_mode(v2x_rig):
    station, hal, clock = v2x_rig
    evse = station.evses[1]
    hal.set_ev(1, bidirectional=False)  # a charge-only EV on the bidirectional stage
    await charging(station, hal)
    assert await evse.set_power_setpoint(-4000) == 0.0  # idle, not discharging
    await clock.advance(120)
    await station.quiet(5)
    snap = evse.snapshot()
    assert snap.reading.energy_export_wh == 0.0
    assert snap.power_stage.no_discharge.startswith("no bidirectional energy transfer mode")
    assert snap.power_stage.modes == ("AC_three_phase",)


async def test_discharge_needs_the_contactor_closed_by_the_charging_rules(v2x_rig):
    station, hal, clock = v2x_rig
    evse = station.evses[1]
    await charging(station, hal)
    await evse.set_power_setpoint(-6000)
    meter = hal.evses[1].meter
    await clock.advance(60)
    await station.quiet(5)
    assert (await meter.read()).energy_export_wh == pytest.approx(100)  # 6 kW for a minute
    hal.set_ev_state(1, "B")  # the EV stops asking: the contactor opens, nothing flows
    await station.quiet(5)
    assert not hal.evses[1].contactor.commanded_closed
    await clock.advance(60)
    await station.quiet(5)
    assert (await meter.read()).energy_export_wh == pytest.approx(100)
    assert hal.evses[1].ev.power_setpoint == -6000  # kept for when the EV asks again
    await station.present_token(Token("GOOD"))  # stopped: the offer and the setpoint go
    await station.quiet(5)
    assert hal.evses[1].ev.power_setpoint is None


OPS = st.lists(st.one_of(
    st.tuples(st.just("setpoint"), st.floats(-30_000, 30_000)),
    st.tuples(st.just("limit"), st.sampled_from([None, 0.0, 6.0, 10.0, 32.0])),
    st.tuples(st.just("discharge_limit"), st.sampled_from([None, 0.0, 1500.0, 9000.0])),
    st.tuples(st.just("ev_max_discharge"), st.sampled_from([0.0, 2000.0, 11_000.0])),
    st.tuples(st.just("ev_bidirectional"), st.booleans()),
    st.tuples(st.just("pilot"), st.sampled_from(["B", "C"])),
    st.tuples(st.just("advance"), st.floats(0.5, 30.0)),
), min_size=1, max_size=14)


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=OPS)
def test_core_never_asks_the_stage_beyond_a_bound(ops):
    """After any input the stage's setpoint lies within the bounds computed here on their
    own terms (pilot offer, EV, stage, discharge sources, modes), and the meter too."""

    async def scenario() -> None:
        clock = FakeClock()
        storage = Storage(":memory:")
        hal = MockHal(1, monotonic=clock.monotonic, ev_max_current_a=16, display=None,
                      v2x={1: V2xParams(battery_wh=30_000, soc_percent=50,
                                        stage_max_discharge_w=10_000)})
        station = Station(hal, storage, clock, meter_poll_s=1.0)
        rec = Recorder(storage)
        station.observer, station.authorizer = rec, rec
        await station.start()
        evse, ev = station.evses[1], hal.evses[1].ev
        discharge: dict[str, float] = {}
        try:
            await charging(station, hal)
            for op, value in ops:
                if op == "setpoint":
                    await evse.set_power_setpoint(value)
                elif op == "limit":
                    await evse.set_limit("csms", value)
                elif op == "discharge_limit":
                    await evse.set_discharge_limit("der", value)
                    discharge.pop("der", None) if value is None else discharge.update(
                        der=value)
                elif op == "ev_max_discharge":
                    hal.set_ev(1, max_discharge_w=value)
                elif op == "ev_bidirectional":
                    hal.set_ev(1, bidirectional=value)
                elif op == "pilot":
                    hal.set_ev_state(1, value)
                else:
                    await clock.advance(value)
                # Every HAL event handled (not quiet(): a status report may wait for the EV's
                # answer on the fake clock, which only the ops move).
                await station.settled()
                offer = evse.offered_a
                p = hal.sims[1].params
                charge_cap = min(offer * V * 3, 16 * V * 3)
                dis_cap = 0.0
                if p.ev_bidirectional and offer >= 6:
                    ev_dis = p.ev_max_discharge_w if p.ev_max_discharge_w is not None \
                        else 16 * V * 3  # the EV gives as much as it takes by default
                    dis_cap = min(ev_dis, 10_000, 32 * V * 3,
                                  *discharge.values())
                sp = ev.power_setpoint
                if offer < 6:
                    assert sp is None
                elif sp is not None:
                    assert -dis_cap - 1e-6 <= sp <= charge_cap + 1e-6
                power = (await hal.evses[1].meter.read()).power_w
                assert -dis_cap - 1e-6 <= power <= charge_cap + 1e-6
                if power != 0:
                    assert hal.evses[1].contactor.commanded_closed
        finally:
            await station.stop()
            storage.close()

    asyncio.run(scenario())


def test_bounds_of_a_charge_only_ev_connection_allow_no_discharge():
    """The interface's defaults (every existing driver): no modes, no limits, no discharge."""
    hal = MockHal(1, display=None)
    b = bounds(hal.evses[1].ev, offer_a=16, phases=3, max_current_a=32)
    assert b == SetpointBounds(16 * V * 3, 0.0, no_discharge=b.no_discharge)
    assert "no bidirectional" in b.no_discharge and b.clamp(-5000) == 0.0
    assert SetpointBounds(1000, 500, min_discharge_w=100).clamp(-50) == 0.0
    assert SetpointBounds(1000, 500).clamp(float("nan")) == 0.0
    with pytest.raises(ValueError, match="max_charge_w"):
        PowerLimits(max_charge_w=-1)


# ====================================================================== metering, ctl


def test_signed_power_splits_into_import_and_export_measurands():
    reading = MeterReading(energy_import_wh=10.0, energy_export_wh=4.0, power_w=-6900.0,
                           current_a=(10.0, 10.0, 10.0))
    ms = ["Energy.Active.Export.Register", "Power.Active.Import", "Power.Active.Export",
          "Current.Import", "Current.Export"]
    got = {(s.measurand, s.phase): s.value for s in build_samples(reading, ms, "Sample.Periodic")}
    assert got[("Energy.Active.Export.Register", None)] == 4.0
    assert got[("Power.Active.Import", None)] == 0.0
    assert got[("Power.Active.Export", None)] == 6900.0
    assert got[("Current.Import", "L1")] == 0.0 and got[("Current.Export", "L3")] == 10.0
    assert {"Power.Active.Export", "Current.Export", "Energy.Active.Export.Register"} <= set(
        supported_measurands(MockHal(1, display=None).evses.values()))


def test_ctl_ev_and_setpoint_commands_and_the_status_block():
    parser = _build_parser()
    ns = parser.parse_args(["ev", "1", "--soc", "80", "--max-discharge-w", "5000",
                            "--bidirectional", "off"])
    assert _request_args(ns) == {"evse": 1, "soc": 80.0, "max_discharge_w": 5000.0,
                                 "bidirectional": False}
    assert _request_args(parser.parse_args(["ev", "1", "C"])) == {"evse": 1, "state": "C"}
    assert _request_args(parser.parse_args(["setpoint", "1", "-7000"]))["watts"] == -7000
    assert _request_args(parser.parse_args(["setpoint", "1", "off"]))["watts"] is None
    text = render_status({"station": "CP1", "evses": [{
        "evse": 1, "status": "Charging", "export_wh": 1234.5,
        "v2x": {"bidirectional": True, "modes": ["AC_BPT", "AC_three_phase"],
                "setpoint_requested_w": -9000, "setpoint_w": -7000, "max_charge_w": 11040,
                "max_discharge_w": 7000, "no_discharge": None,
                "ev": {"soc_percent": 61.25, "capacity_wh": 60000, "min_soc_percent": 20,
                       "target_soc_percent": 80, "max_soc_percent": 100}}}]})
    assert "EV battery: SoC 61.2 % (min 20 %, target 80 %, max 100 %) of 60000 Wh" in text
    assert "setpoint -7000 W (asked -9000 W), bounds +11040 W / -7000 W" in text
    assert "discharge: possible, export register 1234.5 Wh" in text


async def test_v2x_mock_agent_reports_export_in_2_1_and_ctl_status_shows_it(short_dir):
    """The whole agent on 2.1 with ``hal.v2x``: ctl setpoint discharges the EV, the 2.1
    TransactionEvents carry the export register and Power.Active.Export (validated by the
    strict CSMS), and ctl status / the page's document show the power stage."""
    extra = "hal: {driver: mock, ev_max_current_a: 16, v2x: {battery_wh: 50000}}"
    measurands = ("Energy.Active.Import.Register,Energy.Active.Export.Register,"
                  "Power.Active.Import,Power.Active.Export,SoC")
    async with version_rig("2.1", short_dir, fake_clock=True, extra=extra, defaults={
            "SampledDataCtrlr.TxUpdatedInterval": 10,
            "SampledDataCtrlr.TxUpdatedMeasurands": measurands}) as (csms, make):
        agent = await make()
        link = await online201(agent, csms)
        agent.hal.plug(1)
        agent.hal.tap("TAG1")
        started = await csms.wait_for("TransactionEvent", station_id="CP1",
                                      predicate=lambda p: p["eventType"] == "Started")
        # The Authorize answer allowed charging only (2.1's default): the CSMS allows BPT.
        res = await link.call("NotifyAllowedEnergyTransfer", {
            "transactionId": started["transactionInfo"]["transactionId"],
            "allowedEnergyTransfer": ["AC_BPT", "AC_three_phase"]})
        assert res == {"status": "Accepted"}
        await agent.clock.advance(1)  # the V2X scheduler plans the session (ChargingOnly)
        await agent.station.quiet(5)
        status = await agent.handle_control({"cmd": "setpoint",
                                             "args": {"evse": 1, "watts": -5000}})
        assert status["evses"][0]["v2x"]["setpoint_w"] == -5000
        status = await agent.handle_control({"cmd": "ev", "args": {"evse": 1, "soc": 70}})
        assert status["evses"][0]["v2x"]["ev"]["soc_percent"] == 70

        def exporting(p: dict) -> bool:
            values = {v["measurand"]: v["value"] for mv in p.get("meterValue", [])
                      for v in mv["sampledValue"]}
            return values.get("Power.Active.Export", 0) == 5000 and values.get(
                "Energy.Active.Export.Register", 0) > 0

        for _ in range(40):  # the fake clock: one second at a time until a sample went out
            if any(exporting(p) for p in csms.messages("CP1", "TransactionEvent")):
                break
            await agent.clock.advance(1)
            await asyncio.sleep(0)
        event = next(p for p in csms.messages("CP1", "TransactionEvent") if exporting(p))
        values = {v["measurand"]: v for mv in event["meterValue"] for v in mv["sampledValue"]}
        assert values["Power.Active.Import"]["value"] == 0
        assert values["Energy.Active.Export.Register"]["unitOfMeasure"] == {"unit": "Wh"}
        status = agent.status()["evses"][0]
        assert status["power_w"] == -5000 and status["export_wh"] > 0
        assert "discharge: possible" in render_status(agent.status())
