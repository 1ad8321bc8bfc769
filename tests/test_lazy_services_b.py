"""DER controls, V2X operation modes and load management built on first use (issue 18).

An idle station (any version, the mock HAL without V2X, nothing kept) neither imports
agent.core.der / v2x_modes / v2x / load_management nor hal.mock_v2x; questions whose answer
is "none" are answered without building them; a station whose stage takes setpoints, or
whose state file keeps a DER control, builds them at start-up, so a kept control or
operation mode is in force after a restart, and ends on time.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from agent.clock import FakeClock
from tests.conftest import charging201, eventually, online201, version_rig
from tests.test_startup_imports import _IDLE_16, _idle_station
from tests.test_timing import online, rig
from tests.test_v21_der import lmd, stage_cap
from tests.test_v21_v2x import ALLOW, V2X_HAL, install, period, profile, stage

SID = "CP1"
DEFERRED = ("agent.core.der", "agent.core.v2x_modes", "agent.core.v2x",
            "agent.core.load_management", "hal.mock_v2x")


@pytest.mark.parametrize("version", ["1.6", "2.0.1", "2.1"])
def test_an_idle_station_does_not_load_der_v2x_or_load_management(version):
    """A fresh interpreter runs an idle station of ``version`` (mock HAL without V2X, no
    site limit, an empty state file) through start and stop: none of the modules is loaded,
    so none of their services was built."""
    script = _IDLE_16.replace('["1.6"]', f'["{version}"]')
    assert script != _IDLE_16 or version == "1.6"
    status, loaded = _idle_station(script, DEFERRED)
    assert status == "Idle"
    assert loaded == []


async def test_questions_answered_none_do_not_build_the_services(short_dir):
    """A charge-only 2.1 station asked what DER controls and operation modes it has answers
    as before (NotFound, Idle / ChargingOnly, an Idle period accepted) without building
    either service; a SetDERControl is NotSupported there."""
    async with rig("2.1", short_dir) as (csms, make):
        agent = await make()
        link = await online201(agent, csms)
        assert (await link.call("GetDERControl", {"requestId": 1}))["status"] == "NotFound"
        assert (await link.call("ClearDERControl", {"isDefault": True}))["status"] \
            == "NotFound"
        res = await link.call("GetVariables", {"getVariableData": [
            {"component": {"name": "V2XChargingCtrlr", "evse": {"id": 1}},
             "variable": {"name": "SupportedOperationModes"}}]})
        assert res["getVariableResult"][0]["attributeValue"] == "Idle,ChargingOnly"
        await install(link, 1, profile(1, [period(0, operationMode="Idle", limit=0)]))
        res = await link.call("SetChargingProfile", {"evseId": 1, "chargingProfile": profile(
            2, [period(0, operationMode="CentralSetpoint", setpoint=1000)], level=1)})
        assert res["status"] == "Rejected"  # no stage here takes setpoints
        assert (await link.call("SetDERControl", lmd("a", 50, default=True)))["status"] \
            == "NotSupported"
        await agent.station.quiet()
        assert agent.station.built("der") is None
        assert agent.station.built("v2x_modes") is None
        assert agent.station.charging_profiles.v2x is None  # the scheduler plans no V2X


async def test_a_kept_der_control_is_in_force_after_a_restart_and_ends_on_time(short_dir):
    """Safety: a DER limit kept in the state file caps the stage's discharge from the start
    of the next run, although nothing asked for the DER service in that run, and its end
    lifts the cap at its instant (FakeClock); once no control is kept, a start builds none."""
    async with rig("2.1", short_dir) as (csms, make):
        agent = await make(extra=V2X_HAL)
        link = await online201(agent, csms)
        assert agent.station.built("v2x_modes") is not None  # its stage takes setpoints
        assert agent.station.built("der") is None  # nothing kept, nothing asked
        max_w = agent.station.evses[1].power_stage_snapshot().stage_limits.max_discharge_w
        assert max_w > 0
        start = agent.clock.now().replace(microsecond=0)
        res = await link.call("SetDERControl", lmd("cap", 40, start=start, duration=120))
        assert res == {"status": "Accepted"}
        assert agent.station.built("der") is not None  # built by the request
        await eventually(lambda: stage_cap(agent) == pytest.approx(0.4 * max_w),
                         "the control caps discharge")
        await csms.wait_for("NotifyDERStartStop", station_id=SID)
        der = agent.station.built("der")
        await eventually(lambda: der.controls["cap"].started, "the start recorded as told")
        await agent.stop()

        again = await make(extra=V2X_HAL)
        kept = again.station.built("der")  # the start-up check found it: built
        assert kept is not None and set(kept.controls) == {"cap"}
        # (The rig's fake clock starts ahead of the CSMS's and is set by the boot answer:
        # only from then on is the control's window where the first run put it.)
        await online201(again, csms)
        await eventually(lambda: stage_cap(again) == pytest.approx(0.4 * max_w),
                         "the kept control caps discharge after the restart")
        clock: FakeClock = again.clock  # type: ignore[assignment]
        left = (start + timedelta(seconds=120) - clock.now()).total_seconds()
        assert left > 2
        await clock.advance(left - 1)
        await again.station.quiet()
        assert stage_cap(again) == pytest.approx(0.4 * max_w), "ended before its time"
        await clock.advance(1)
        ended = await csms.wait_for("NotifyDERStartStop", station_id=SID,
                                    predicate=lambda p: not p["started"])
        assert ended["controlId"] == "cap"
        assert [p["started"] for p in csms.messages(SID, "NotifyDERStartStop")] \
            == [True, False]  # the start told once, across the restart
        await eventually(lambda: stage_cap(again) is None, "the end lifts the cap")
        await eventually(lambda: not again.station.built("der").controls,
                         "the ended control is forgotten once announced")
        await again.stop()

        third = await make(extra=V2X_HAL)
        assert third.station.built("der") is None  # "[]" kept: nothing to restore


async def test_a_kept_operation_mode_drives_the_stage_after_a_restart(short_dir):
    """A CentralSetpoint TxDefaultProfile set in one run discharges the next run's session
    at its setpoint: the operation modes are built at start-up for the V2X stage."""
    async with rig("2.1", short_dir) as (csms, make):
        agent = await make(extra=V2X_HAL)
        link = await online201(agent, csms)
        await install(link, 1, profile(1, [period(0, operationMode="CentralSetpoint",
                                                  setpoint=-4000)]))
        await agent.stop()

        again = await make(extra=V2X_HAL)
        assert again.station.built("v2x_modes") is not None
        link = await online201(again, csms)
        started = await charging201(again, csms)
        res = await link.call("NotifyAllowedEnergyTransfer", {
            "transactionId": started["transactionInfo"]["transactionId"],
            "allowedEnergyTransfer": ALLOW})
        assert res == {"status": "Accepted"}
        await eventually(lambda: stage(again) == -4000, "the kept mode's setpoint")
        assert again.station.v2x_modes.plans[1].mode.value == "CentralSetpoint"


@pytest.mark.parametrize("version", ["1.6", "2.1"])
async def test_a_site_limit_still_limits(version, short_dir):
    """With a ``site:`` section the load manager is built (its module loaded then) and
    shares the connection: the EV is offered the site's 10 A, not its own 16 A."""
    async with version_rig(version, short_dir, extra="site: {max_current_a: 10}") \
            as (csms, make):
        agent = await make()
        await online(agent)
        assert agent.load is not None
        agent.hal.plug(1)
        agent.hal.tap("TAG1")
        evse = agent.station.evses[1]
        await eventually(lambda: evse.offered_a == 10.0 and evse.limits.get("site") == 10.0,
                         "the site's limit offered")
        assert agent.status()["site"]["shares"] == {1: 10.0}


def test_the_names_the_lazy_paths_read_are_the_services_own():
    """Start-up, the blocks and the control socket read these without importing the
    services: they must stay what the services use."""
    from agent.clock import FakeClock as Clock
    from agent.core import der, load_management, sharing, v2x_modes, v2x_names
    from agent.ocpp.v21 import v2x as block
    from hal import mock, mock_v2x

    assert der.STORE_KEY == v2x_names.DER_STORE_KEY
    assert v2x_modes.FREQUENCY_THRESHOLD_SETTING == block.FREQUENCY_THRESHOLD_SETTING
    assert load_management.SOURCE == sharing.SITE_SOURCE
    assert mock_v2x.EV_SETTINGS is mock.EV_SETTINGS
    assert set(mock.EV_SETTINGS.values()) <= set(mock_v2x.V2xParams.__dataclass_fields__)

    class ChargeOnly:  # an EVSE whose stage takes no setpoints
        id = 1
        hw: Any = type("Hw", (), {"ev": type("Ev", (), {"supports_setpoint": False})()})()

    modes = v2x_modes.OperationModes({1: ChargeOnly()}, {}, Clock())  # type: ignore[dict-item]
    assert tuple(modes.supported(1)) == v2x_names.CHARGE_ONLY_MODES


@pytest.mark.parametrize("raw, stored", [(None, False), ("[]", False), (" [] ", False),
                                         ("", False), ('[{"id": "a"}]', True),
                                         ("{not json", True)])
def test_the_start_up_check_counts_anything_but_nothing_as_a_kept_control(raw, stored):
    """An unreadable entry builds the service too: it logs what it cannot read, start-up
    never guesses that a control is absent."""
    from agent.core.v2x_names import der_stored

    assert der_stored(raw) is stored
