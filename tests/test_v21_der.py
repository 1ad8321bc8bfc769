"""OCPP 2.1 DER control (block R): SetDERControl / GetDERControl -> ReportDERControl /
ClearDERControl with every answer status, NotifyDERStartStop at the instants a scheduled
control starts and ends (also across a restart), NotifyDERAlarm from the meters' voltage, and
the controls applied to the mock HAL's bidirectional stage; the real agent against the strict
2.1 test CSMS on the fake clock.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from agent.clock import FakeClock, iso
from tests.conftest import eventually, online201
from tests.test_timing import rig
from tests.test_v21_v2x import V2X_HAL, install, period, profile, sample, stage, v2x_session

pytestmark = pytest.mark.asyncio
SID = "CP1"


def lmd(cid: str, pct: float, *, default: bool = False, priority: int = 1,
        start: Any = None, duration: float | None = None) -> dict:
    setting: dict[str, Any] = {"priority": priority, "pctMaxDischargePower": pct}
    if start is not None:
        setting["startTime"] = iso(start)
    if duration is not None:
        setting["duration"] = duration
    return {"controlId": cid, "controlType": "LimitMaxDischarge", "isDefault": default,
            "limitMaxDischarge": setting}


def stage_cap(agent: Any, evse: int = 1) -> float | None:
    snap = agent.station.evses[evse].power_stage_snapshot()
    return dict(snap.discharge_limits).get("der")


async def test_der_control_messages_every_status(short_dir):
    async with rig("2.1", short_dir) as (csms, make):
        plain = await make(station_id="CP2")  # charge-only stage: nothing to follow
        link2 = await online201(plain, csms)
        res = await link2.call("SetDERControl", lmd("a", 50, default=True))
        assert res["status"] == "NotSupported"

        agent = await make(extra=V2X_HAL)
        link = await online201(agent, csms)
        now = agent.clock.now()
        bad = [
            ({"controlId": "x", "controlType": "FreqWatt", "isDefault": True,
              "limitMaxDischarge": {"priority": 1}}, "InvalidValue"),  # another type's field
            (lmd("x", 50, start=now), "MissingParam"),  # scheduled without a duration
            (lmd("x", 150, default=True), "InvalidValue"),
            ({"controlId": "x", "controlType": "FreqWatt", "isDefault": True,
              "curve": {"priority": 1, "yUnit": "PctMaxW",
                        "curveData": [{"x": 50.1, "y": 0}, {"x": 50.0, "y": 10}]}},
             "InvalidValue"),  # x not increasing
        ]
        for payload, code in bad:
            res = await link.call("SetDERControl", payload)
            assert res["status"] == "Rejected", (payload, res)
            assert res["statusInfo"]["reasonCode"] == code, (payload, res)
        assert await link.call("SetDERControl", lmd("d1", 80, default=True, priority=2)) \
            == {"status": "Accepted"}
        res = await link.call("SetDERControl", lmd("d2", 60, default=True, priority=1))
        assert res == {"status": "Accepted", "supersededIds": ["d1"]}
        fpf = {"controlId": "pf", "controlType": "FixedPFAbsorb", "isDefault": True,
               "fixedPFAbsorb": {"priority": 0, "displacement": 0.95, "excitation": True}}
        assert (await link.call("SetDERControl", fpf))["status"] == "Accepted"  # kept only

        assert (await link.call("GetDERControl", {"requestId": 1, "controlId": "zz"})) \
            == {"status": "NotFound", "statusInfo": {"reasonCode": "NotFound",
                                                     "additionalInfo": "no DER control matches"}}
        res = await link.call("GetDERControl", {"requestId": 2,
                                                "controlType": "LimitMaxDischarge"})
        assert res == {"status": "Accepted"}
        report = await csms.wait_for("ReportDERControl", station_id=SID)
        assert report["requestId"] == 2 and "tbc" not in report
        flags = {e["id"]: e["isSuperseded"] for e in report["limitMaxDischarge"]}
        assert flags == {"d1": True, "d2": False}
        await link.call("GetDERControl", {"requestId": 3, "isDefault": True})
        report = await csms.wait_for("ReportDERControl", station_id=SID,
                                     predicate=lambda p: p["requestId"] == 3)
        assert report["fixedPFAbsorb"][0]["fixedPF"]["displacement"] == 0.95

        res = await link.call("ClearDERControl", {"isDefault": False})
        assert res["status"] == "NotFound"
        res = await link.call("ClearDERControl", {"isDefault": True, "controlId": "d1"})
        assert res == {"status": "Accepted"}
        res = await link.call("ClearDERControl", {"isDefault": True,
                                                  "controlType": "LimitMaxDischarge"})
        assert res == {"status": "Accepted"}
        assert set(agent.station.der.controls) == {"pf"}


async def test_scheduled_control_starts_and_stops_at_its_instants_and_survives_a_restart(
        short_dir):
    """A scheduled LimitMaxDischarge starts at its startTime (superseding the default of its
    type) and caps the discharge; the station restarts inside its window: the control is
    still there and its end is announced once, at its instant."""
    async with rig("2.1", short_dir) as (csms, make):
        agent, link, _ = await v2x_session(csms, make)
        clock: FakeClock = agent.clock
        await install(link, 1, profile(1, [period(0, operationMode="CentralSetpoint",
                                                  setpoint=-9000)]))
        await eventually(lambda: stage(agent) == -9000, "discharging at 9 kW")
        start = clock.now().replace(microsecond=0) + timedelta(seconds=60)
        assert (await link.call("SetDERControl", lmd("def", 80, default=True, priority=5)))[
            "status"] == "Accepted"
        res = await link.call("SetDERControl", lmd("sch", 25, start=start, duration=120))
        assert res == {"status": "Accepted"}
        max_discharge = agent.station.evses[1].power_stage_snapshot().stage_limits.max_discharge_w
        await eventually(lambda: stage_cap(agent) == pytest.approx(0.8 * max_discharge),
                         "the default control caps discharge")
        await clock.advance(59)
        await agent.station.quiet()
        assert csms.messages(SID, "NotifyDERStartStop") == []
        await clock.advance(1)
        note = await csms.wait_for("NotifyDERStartStop", station_id=SID)
        assert note == {"controlId": "sch", "started": True, "timestamp": iso(start),
                        "supersededIds": ["def"]}
        await eventually(lambda: stage_cap(agent) == pytest.approx(0.25 * max_discharge),
                         "the scheduled control caps discharge")
        await eventually(lambda: stage(agent) == pytest.approx(-0.25 * max_discharge),
                         "the setpoint held to the cap")
        await clock.advance(30)
        await agent.station.quiet()
        await agent.stop()

        again = await make(extra=V2X_HAL)
        assert set(again.station.der.controls) == {"def", "sch"}
        await online201(again, csms)
        await again.station.quiet()
        assert len(csms.messages(SID, "NotifyDERStartStop")) == 1  # no second start
        clock2: FakeClock = again.clock  # set by the boot answer: where the window now is
        end = start + timedelta(seconds=120)
        left = (end - clock2.now()).total_seconds()
        assert left > 2
        await clock2.advance(left - 1)
        await again.station.quiet()
        assert len(csms.messages(SID, "NotifyDERStartStop")) == 1
        await clock2.advance(1)
        stop = await csms.wait_for("NotifyDERStartStop", station_id=SID, count=2)
        assert stop == {"controlId": "sch", "started": False,
                        "timestamp": iso(start + timedelta(seconds=120))}
        await eventually(lambda: set(again.station.der.controls) == {"def"},
                         "the ended control is gone once announced")


async def test_voltage_out_of_range_raises_an_alarm_and_stops_discharge(short_dir):
    trip = {"controlId": "hv", "controlType": "HVMustTrip", "isDefault": True,
            "curve": {"priority": 0, "yUnit": "PctEffectiveV",
                      "curveData": [{"x": 0.2, "y": 120}, {"x": 10, "y": 110}]}}
    async with rig("2.1", short_dir) as (csms, make):
        agent, link, _ = await v2x_session(csms, make)
        await install(link, 1, profile(1, [period(0, operationMode="CentralSetpoint",
                                                  setpoint=-4000)]))
        assert (await link.call("SetDERControl", trip))["status"] == "Accepted"
        await eventually(lambda: stage(agent) == -4000, "discharging")
        agent.hal.set_grid(voltage_v=256)  # above 110 % of 230 V
        await sample(agent)
        await sample(agent)
        alarm = await csms.wait_for("NotifyDERAlarm", station_id=SID)
        assert alarm["controlType"] == "HVMustTrip" and alarm["gridEventFault"] == "OverVoltage"
        assert "alarmEnded" not in alarm
        await eventually(lambda: stage(agent) == 0, "no discharge while it trips")
        agent.hal.set_grid(voltage_v=230)
        await sample(agent)
        await sample(agent)
        ended = await csms.wait_for("NotifyDERAlarm", station_id=SID, count=2)
        assert ended["alarmEnded"] is True and ended["gridEventFault"] == "OverVoltage"
        await eventually(lambda: stage(agent) == -4000, "discharging again")


async def test_freq_watt_control_discharges_on_a_frequency_drop(short_dir):
    fw = {"controlId": "fw", "controlType": "FreqWatt", "isDefault": True,
          "curve": {"priority": 0, "yUnit": "PctMaxW",
                    "curveData": [{"x": 49.5, "y": 50}, {"x": 49.9, "y": 0},
                                  {"x": 50.1, "y": 0}, {"x": 50.5, "y": -50}]}}
    async with rig("2.1", short_dir) as (csms, make):
        agent, link, _ = await v2x_session(csms, make)
        assert (await link.call("SetDERControl", fw))["status"] == "Accepted"
        await eventually(lambda: stage(agent) == 0, "0 W inside the dead band")
        agent.hal.set_grid(frequency_hz=49.7)
        await sample(agent)
        await sample(agent)
        limits = agent.station.evses[1].power_stage_snapshot().stage_limits
        # 25 % of the stage's maximum, fed into the grid (DER sign: positive = injection).
        await eventually(lambda: stage(agent) == pytest.approx(-0.25 * limits.max_discharge_w),
                         "discharging along the DER curve")
