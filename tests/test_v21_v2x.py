"""OCPP 2.1 V2X (block Q): operation modes applied to the mock HAL's bidirectional EV and power
stage, NotifyAllowedEnergyTransfer, AuthorizeResponse.allowedEnergyTransfer, AFRRSignal and
the V2XChargingCtrlr variables; the real agent against the strict 2.1 test CSMS, on the fake
clock where time matters.
"""

from __future__ import annotations

from typing import Any

import pytest

from agent.clock import FakeClock
from tests.conftest import charging201, eventually, online201
from tests.test_timing import rig

pytestmark = pytest.mark.asyncio
SID = "CP1"
V2X_HAL = "hal: {driver: mock, ev_max_current_a: 16, v2x: true}"
ALLOW = ["AC_BPT", "AC_three_phase"]


def period(start: int = 0, **fields: Any) -> dict:
    return {"startPeriod": start, **fields}


def profile(pid: int, periods: list[dict], *, unit: str = "W", level: int = 0,
            purpose: str = "TxDefaultProfile") -> dict:
    return {"id": pid, "stackLevel": level, "chargingProfilePurpose": purpose,
            "chargingProfileKind": "Relative",
            "chargingSchedule": [{"id": pid, "chargingRateUnit": unit,
                                  "chargingSchedulePeriod": periods}]}


async def install(link: Any, evse: int, cp: dict, status: str = "Accepted") -> dict:
    res = await link.call("SetChargingProfile", {"evseId": evse, "chargingProfile": cp})
    assert res["status"] == status, res
    return res


def stage(agent: Any, evse: int = 1) -> float | None:
    """What the power stage follows now (W, signed; None: no setpoint)."""
    return agent.hal.evses[evse].ev.power_setpoint


async def sample(agent: Any, seconds: float = 1.0) -> None:
    """Let the meters be read (and the V2X grid watcher look) on the fake clock."""
    clock: FakeClock = agent.clock
    await clock.advance(seconds)
    await agent.station.quiet()


async def v2x_session(csms: Any, make: Any, *, allow: list[str] | None = ALLOW,
                      **kw: Any) -> tuple[Any, Any, str]:
    agent = await make(extra=V2X_HAL, **kw)
    link = await online201(agent, csms)
    started = await charging201(agent, csms)
    tx_id = started["transactionInfo"]["transactionId"]
    if allow is not None:
        res = await link.call("NotifyAllowedEnergyTransfer",
                              {"transactionId": tx_id, "allowedEnergyTransfer": allow})
        assert res == {"status": "Accepted"}
    return agent, link, tx_id


async def test_v2x_variables_say_what_the_hardware_can(short_dir):
    async with rig("2.1", short_dir) as (csms, make):
        agent = await make(extra="hal: {driver: mock, ev_max_current_a: 16, v2x: {evses: [1]}}",
                           evses=2)
        link = await online201(agent, csms)
        res = await link.call("GetVariables", {"getVariableData": [
            {"component": {"name": "V2XChargingCtrlr", "evse": {"id": e}},
             "variable": {"name": name}}
            for e in (1, 2) for name in ("SupportedOperationModes", "Enabled")]})
        values = {(r["component"]["evse"]["id"], r["variable"]["name"]): r["attributeValue"]
                  for r in res["getVariableResult"]}
        assert values[(1, "Enabled")] == "true" and values[(2, "Enabled")] == "false"
        modes = values[(1, "SupportedOperationModes")].split(",")
        assert {"CentralSetpoint", "LocalFrequency", "CentralFrequency", "Idle"} <= set(modes)
        # No external energy manager configured: the external modes are not offered.
        assert "ExternalSetpoint" not in modes and "ExternalLimits" not in modes
        assert values[(2, "SupportedOperationModes")] == "Idle,ChargingOnly"


async def test_v2x_profiles_refused_with_the_reason(short_dir):
    async with rig("2.1", short_dir) as (csms, make):
        agent = await make(extra="hal: {driver: mock, ev_max_current_a: 16, v2x: {evses: [1]}}",
                           evses=2)
        link = await online201(agent, csms)
        setpoint = [period(operationMode="CentralSetpoint", setpoint=-3000)]
        cases = [
            (2, profile(1, setpoint), "UnsupportedParam"),  # a charge-only stage
            (1, profile(2, [period(operationMode="LocalFrequency")]), "NoFreqWattCurve"),
            (1, profile(3, [period(operationMode="CentralSetpoint", setpoint=-9000,
                                   dischargeLimit=-4000)]), "InvalidSchedule"),
            (1, profile(4, [period(operationMode="CentralSetpoint")]), "InvalidSchedule"),
            (1, profile(5, [period(operationMode="ExternalSetpoint")]), "UnsupportedParam"),
            (1, profile(6, [period(limit=11000, setpoint_L2=100)]), "UnsupportedParam"),
            (1, profile(7, [period(operationMode="CentralSetpoint", setpoint=1000)],
                        purpose="ChargingStationMaxProfile"), "InvalidValue"),
        ]
        for evse, cp, code in cases:
            if cp["chargingProfilePurpose"] == "ChargingStationMaxProfile":
                evse = 0
            res = await install(link, evse, cp, "Rejected")
            assert res["statusInfo"]["reasonCode"] in (code, "InvalidProfile", "InvalidSchedule"), \
                (cp, res)
            if code != "InvalidValue":
                assert res["statusInfo"]["reasonCode"] == code, (cp, res)
        assert agent.station.charging_profiles.profiles == []


async def test_notify_allowed_energy_transfer_every_status(short_dir):
    async with rig("2.1", short_dir) as (csms, make):
        agent = await make(extra="hal: {driver: mock, ev_max_current_a: 16, v2x: {evses: [1]}}",
                           evses=2)
        link = await online201(agent, csms)
        res = await link.call("NotifyAllowedEnergyTransfer",
                              {"transactionId": "nope", "allowedEnergyTransfer": ALLOW})
        assert res["status"] == "Rejected" and res["statusInfo"]["reasonCode"] == "TxNotFound"
        tx1 = (await charging201(agent, csms, evse=1))["transactionInfo"]["transactionId"]
        tx2 = (await charging201(agent, csms, tag="TAG2", evse=2))[
            "transactionInfo"]["transactionId"]
        res = await link.call("NotifyAllowedEnergyTransfer",
                              {"transactionId": tx2, "allowedEnergyTransfer": ALLOW})
        assert res["status"] == "Rejected"
        assert res["statusInfo"]["reasonCode"] == "UnsupportedRequest"
        res = await link.call("NotifyAllowedEnergyTransfer",
                              {"transactionId": tx1, "allowedEnergyTransfer": ALLOW})
        assert res == {"status": "Accepted"}
        snap = agent.station.evses[1].power_stage_snapshot()
        assert snap.allowed_modes == tuple(sorted(ALLOW))


async def test_central_setpoint_moves_the_setpoint_and_waits_for_the_allowed_modes(short_dir):
    """The Authorize answer had no allowedEnergyTransfer: charging only, so the discharging
    setpoint is held to 0 until NotifyAllowedEnergyTransfer allows a BPT mode; then the EV
    discharges at the setpoint, and the next period's setpoint charges it at its instant."""
    async with rig("2.1", short_dir) as (csms, make):
        agent, link, tx_id = await v2x_session(csms, make, allow=None)
        clock: FakeClock = agent.clock
        await install(link, 1, profile(1, [
            period(0, operationMode="CentralSetpoint", setpoint=-3000, dischargeLimit=-5000),
            period(60, operationMode="CentralSetpoint", setpoint=2000, limit=11000)]))
        await eventually(lambda: stage(agent) == 0, "a discharge held to 0 (charging only)")
        res = await link.call("NotifyAllowedEnergyTransfer",
                              {"transactionId": tx_id, "allowedEnergyTransfer": ALLOW})
        assert res == {"status": "Accepted"}
        await eventually(lambda: stage(agent) == -3000, "the EV discharges at the setpoint")
        snap = agent.station.evses[1].power_stage_snapshot()
        assert dict(snap.discharge_limits)["csms"] == 5000  # the period's dischargeLimit
        await sample(agent)
        reading = await agent.hal.evses[1].meter.read()
        assert reading.power_w == -3000 and reading.energy_export_wh > 0
        await clock.advance(58)
        await agent.station.quiet()
        assert stage(agent) == -3000  # not before the period's start
        await clock.advance(1)
        await eventually(lambda: stage(agent) == 2000, "the next period's setpoint")
        # Reported back as installed (the V2X fields round-trip).
        res = await link.call("GetChargingProfiles", {"requestId": 3, "chargingProfile": {
            "chargingProfileId": [1]}})
        assert res["status"] == "Accepted"
        report = await csms.wait_for("ReportChargingProfiles", station_id=SID)
        periods = report["chargingProfile"][0]["chargingSchedule"][0]["chargingSchedulePeriod"]
        assert periods[0] == {"startPeriod": 0, "operationMode": "CentralSetpoint",
                              "setpoint": -3000, "dischargeLimit": -5000}


async def test_authorize_answer_allows_discharge(short_dir):
    async with rig("2.1", short_dir) as (csms, make):
        csms.overrides["Authorize"] = lambda link, p: {
            "idTokenInfo": {"status": "Accepted"}, "allowedEnergyTransfer": ["AC_BPT"]}
        agent, link, _ = await v2x_session(csms, make, allow=None)
        await install(link, 1, profile(1, [
            period(0, operationMode="CentralSetpoint", setpoint=-4000)]))
        await eventually(lambda: stage(agent) == -4000, "discharging as the answer allows")
        assert agent.station.evses[1].power_stage_snapshot().allowed_modes == ("AC_BPT",)


async def test_local_frequency_drop_discharges_along_the_curve(short_dir):
    """FCR: a frequency drop makes the EV discharge along the v2xFreqWattCurve (linear between
    its points), capped by the period's dischargeLimit; a move below the threshold is not
    followed; back at 50 Hz the baseline again."""
    curve = [{"frequency": 49.8, "power": -10000}, {"frequency": 49.9, "power": 0},
             {"frequency": 50.1, "power": 0}, {"frequency": 50.2, "power": 10000}]
    async with rig("2.1", short_dir) as (csms, make):
        agent, link, _ = await v2x_session(csms, make)
        await install(link, 1, profile(1, [period(0, operationMode="LocalFrequency",
                                                  v2xFreqWattCurve=curve, v2xBaseline=500,
                                                  dischargeLimit=-8000)]))
        await eventually(lambda: stage(agent) == 500, "the baseline at 50 Hz")
        await agent.handle_control({"cmd": "grid-frequency", "args": {"hz": 49.85}})
        await sample(agent)
        await sample(agent)
        await eventually(lambda: stage(agent) == -4500, "half way down the curve + baseline")
        agent.hal.set_grid(frequency_hz=49.86)  # 10 mHz: below the 20 mHz threshold
        await sample(agent)
        await sample(agent)
        assert stage(agent) == -4500
        agent.hal.set_grid(frequency_hz=49.7)  # beyond the curve: -10 kW, capped at -8 kW
        await sample(agent)
        await eventually(lambda: stage(agent) == -8000, "capped by the dischargeLimit")
        agent.hal.set_grid(frequency_hz=50.0)
        await sample(agent)
        await eventually(lambda: stage(agent) == 500, "back to the baseline")


async def test_central_frequency_follows_afrr_signals(short_dir):
    async with rig("2.1", short_dir) as (csms, make):
        agent, link, _ = await v2x_session(csms, make)
        now = agent.clock.now()
        res = await link.call("AFRRSignal", {"timestamp": now.isoformat(), "signal": 1})
        assert res["status"] == "Rejected"
        assert res["statusInfo"]["reasonCode"] == "NoSignalWattCurve"
        signal_curve = [{"signal": -100, "power": -6000}, {"signal": 100, "power": 6000}]
        await install(link, 1, profile(1, [period(0, operationMode="CentralFrequency",
                                                  limit=11000,
                                                  v2xSignalWattCurve=signal_curve)]))
        await eventually(lambda: stage(agent) == 0, "the baseline before any signal")
        res = await link.call("AFRRSignal", {"timestamp": now.isoformat(), "signal": -50})
        assert res == {"status": "Accepted"}
        await eventually(lambda: stage(agent) == -3000, "the signal-watt curve")


async def test_idle_period_stops_energy_either_way(short_dir):
    async with rig("2.1", short_dir) as (csms, make):
        agent, link, _ = await v2x_session(csms, make)
        await install(link, 1, profile(1, [period(0, operationMode="Idle", limit=11000)]))
        await eventually(lambda: agent.hal.evses[1].ev.current_limit == 0, "no offer")
        res = await link.call("GetCompositeSchedule", {"evseId": 1, "duration": 60,
                                                       "chargingRateUnit": "W"})
        assert res["schedule"]["chargingSchedulePeriod"][0]["limit"] == 0


async def test_external_setpoint_follows_the_local_energy_manager(short_dir):
    async with rig("2.1", short_dir) as (csms, make):
        agent, link, _ = await v2x_session(csms, make)
        modes = agent.station.v2x_modes
        modes.external_setpoint_source = True  # what an external energy manager registers
        await install(link, 1, profile(1, [period(0, operationMode="ExternalSetpoint",
                                                  setpoint=1000)]))
        await eventually(lambda: stage(agent) == 1000, "the period's setpoint at first")
        modes.set_external_setpoint(1, -2500)
        await eventually(lambda: stage(agent) == -2500, "the external setpoint")
        modes.set_external_setpoint(1, None)
        await eventually(lambda: stage(agent) == 1000, "back to the period's")


async def test_v2x_profile_survives_a_restart(short_dir):
    async with rig("2.1", short_dir) as (csms, make):
        agent, link, _ = await v2x_session(csms, make)
        await install(link, 1, profile(1, [period(0, operationMode="CentralSetpoint",
                                                  setpoint=-2000)]))
        await eventually(lambda: stage(agent) == -2000, "discharging")
        await agent.stop()
        again = await make(extra=V2X_HAL)
        stored = again.station.charging_profiles.get(1)
        q = stored.schedules[0].periods[0]
        assert (q.operation_mode, q.setpoint, q.limit) == ("CentralSetpoint", -2000, None)


async def test_demo_v2x_plays_a_discharge_session_with_a_der_control():
    """`cp-agent demo --ocpp 2.1 --v2x` (real time, about 7 s): energy fed back, the DER
    control's start and end reported, the stage capped while it lasts, no schema error."""
    import io

    from agent.demo_v2x import run_v2x_demo

    out = io.StringIO()
    assert await run_v2x_demo(out=out) == 0, out.getvalue()
    text = out.getvalue()
    assert "power stage setpoint -7000 W" in text
    assert "power stage setpoint -4416 W" in text  # 20 % of the 22 kW stage
    assert "2 NotifyDERStartStop (start, end)" in text
    assert "schema errors    0" in text


async def test_engine_curve_and_the_v2x_period_in_force():
    """The pure parts: curve interpolation (flat beyond the ends) and the period in force is
    the one of the transaction-level profile the composite uses (TxProfile over TxDefault);
    Idle paints 0, a period without a limit is bounded by the rating only."""
    from datetime import UTC, datetime, timedelta
    from decimal import Decimal

    from agent.core.smart_charging import (
        ChargingProfile,
        ChargingSchedule,
        ChargingSchedulePeriod,
        OperationMode,
        composite,
        curve_power,
        v2x_at,
        validate,
    )

    pts = [(Decimal("49.8"), Decimal(-10000)), (Decimal("50.2"), Decimal(10000))]
    assert curve_power(pts, Decimal("50.0")) == 0
    assert curve_power(pts, Decimal("49.9")) == -5000
    assert curve_power(pts, Decimal("45")) == -10000 and curve_power(pts, 55.0) == 10000
    t0 = datetime(2026, 1, 1, tzinfo=UTC)

    def prof(pid: int, purpose: str, periods: list, tx: Any = None) -> ChargingProfile:
        return ChargingProfile(pid, 0, purpose, "Relative", [ChargingSchedule("W", periods)],
                               evse_id=1, transaction_id=tx)

    default = prof(1, "TxDefault", [ChargingSchedulePeriod(0, 11000)])
    tx = prof(2, "Tx", [ChargingSchedulePeriod(0, None, operation_mode="CentralSetpoint",
                                               setpoint=-3000),
                        ChargingSchedulePeriod(60, 5000, operation_mode="Idle")], tx="T1")
    at = t0 + timedelta(seconds=10)
    found = v2x_at([default, tx], at, evse_id=1, tx_start=t0, transaction_id="T1")
    assert found.profile is tx and found.mode is OperationMode.CENTRAL_SETPOINT
    assert found.period.setpoint == -3000 and found.rate_unit == "W"
    assert v2x_at([default, tx], at, evse_id=1).profile is default  # no transaction
    periods = composite([default, tx], evse_id=1, window_start=t0, window_s=120, tx_start=t0,
                        evse_max_a=32, phases=3, unit="A", transaction_id="T1")
    assert [(p.start_s, p.limit) for p in periods] == [(0, 32), (60, 0)]
    problems = validate(tx, evse_ids=[1], transactions={1: "T1"},
                        operation_modes=("ChargingOnly",))
    assert any("operationMode CentralSetpoint is not supported" in p for p in problems)
    assert validate(tx, evse_ids=[1], transactions={1: "T1"},
                    operation_modes=[m.value for m in OperationMode]) == []
