"""OCPP 2.1 ExternalSetpoint / ExternalLimits fed by a local energy manager: the MQTT topics
``set/setpoint_w``, ``set/max_charge_w``, ``set/max_discharge_w`` (against a real Mosquitto,
as tests/test_mqtt.py runs it) and ``cp-agent ctl external`` (the same inputs without a
broker), applied by the core within every bound, on the fake clock so that "not renewed in
time" is an advance of the clock, not a wait.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.clock import FakeClock
from agent.config import ConfigError, load_config_text
from agent.control import _build_parser, _request_args
from agent.integrations.mqtt import LimitError, parse_watts
from tests.conftest import charging201, eventually, online201
from tests.test_mqtt import BASE, Broker, Subscriber, needs_broker
from tests.test_timing import rig
from tests.test_v21_v2x import ALLOW, install, period, profile, sample, stage

V2X_HAL = "hal: {driver: mock, ev_max_current_a: 16, v2x: true}"


async def v2x_session(csms: Any, make: Any, extra: str = "") -> tuple[Any, Any]:
    """A 2.1 session on a bidirectional mock EVSE whose CSMS allows discharging."""
    agent = await make(extra=V2X_HAL + "\n" + extra)
    link = await online201(agent, csms)
    started = await charging201(agent, csms)
    res = await link.call("NotifyAllowedEnergyTransfer", {
        "transactionId": started["transactionInfo"]["transactionId"],
        "allowedEnergyTransfer": ALLOW})
    assert res == {"status": "Accepted"}
    return agent, link


async def supported_modes(link: Any) -> list[str]:
    res = await link.call("GetVariables", {"getVariableData": [{
        "component": {"name": "V2XChargingCtrlr", "evse": {"id": 1}},
        "variable": {"name": "SupportedOperationModes"}}]})
    return res["getVariableResult"][0]["attributeValue"].split(",")


# ---------------------------------------------------------------- parsing, config, ctl


@pytest.mark.parametrize("payload, signed, watts", [
    (b"-3000", True, -3000.0), (b" 7400\n", True, 7400.0), (b"0", False, 0.0),
    (b"", True, None), (b"none", False, None), (b"NULL", True, None), (b"1e3", False, 1000.0),
])
def test_parse_watts_accepts(payload, signed, watts):
    assert parse_watts(payload, signed=signed) == watts


@pytest.mark.parametrize("payload, signed, needle", [
    (b"abc", True, "'abc' is not a number; expected signed watts"),
    (b"-1", False, "'-1' is negative; expected watts >= 0"),
    (b"nan", True, "not a finite number"), (b"-inf", True, "not a finite number"),
    (b"2e6", True, "beyond 1000000 W"), (b"\xff", False, "not UTF-8"),
    (b"5 kW", True, "'5 kW' is not a number"),
])
def test_parse_watts_refuses_with_a_reason(payload, signed, needle):
    with pytest.raises(LimitError) as exc:
        parse_watts(payload, signed=signed)
    assert needle in str(exc.value)


def test_setpoint_timeout_config():
    assert load_config_text(BASE + "mqtt: {host: b}").mqtt.setpoint_timeout_s == 30
    with pytest.raises(ConfigError, match=r"mqtt\.setpoint_timeout_s: 0\.0 is not allowed"):
        load_config_text(BASE + "mqtt: {host: b, setpoint_timeout_s: 0}")


def test_ctl_external_sends_only_what_was_given():
    parser = _build_parser()
    ns = parser.parse_args(["external", "1", "--setpoint", "-3000", "--max-charge-w", "off",
                            "--valid-s", "20"])
    assert _request_args(ns) == {"evse": 1, "setpoint_w": -3000.0, "max_charge_w": None,
                                 "valid_s": 20.0}
    ns = parser.parse_args(["external", "2", "--max-discharge-w", "4000"])
    assert _request_args(ns) == {"evse": 2, "max_discharge_w": 4000.0}


# ---------------------------------------------------------------- the core, through ctl


async def test_ctl_external_setpoint_goes_stale_and_falls_back(short_dir):
    """Without a broker: the control socket is the source. The setpoint is followed within
    the period's dischargeLimit and the EV's limits, and once its validity has passed the
    EVSE falls back to the period's setpoint (here none: 0 W, nothing flows)."""
    async with rig("2.1", short_dir) as (csms, make):
        agent, link = await v2x_session(csms, make)
        clock: FakeClock = agent.clock
        assert "ExternalSetpoint" not in await supported_modes(link)  # no source yet
        ctl = agent.handle_control
        out = await ctl({"cmd": "external", "args": {"evse": 1, "setpoint_w": -3000}})
        assert "no ExternalSetpoint / ExternalLimits period" in out["warning"]
        assert stage(agent) is None  # a ChargingOnly session: the value waits
        assert "ExternalSetpoint" in await supported_modes(link)  # ctl registered itself
        await install(link, 1, profile(1, [period(0, operationMode="ExternalSetpoint",
                                                  dischargeLimit=-5000, limit=11000)]))
        await eventually(lambda: stage(agent) == -3000, "discharging at the external setpoint")

        # Beyond the period's dischargeLimit and the EV's limit: held to the limit.
        out = await ctl({"cmd": "external", "args": {"evse": 1, "setpoint_w": -9000,
                                                     "valid_s": 30}})
        assert stage(agent) == -5000 and "warning" not in out
        assert out["external"] == {"evse": 1, "setpoint_w": -9000, "stale": False,
                                   "max_charge_w": None, "max_discharge_w": None,
                                   "operation_mode": "ExternalSetpoint"}
        await sample(agent)
        reading = await agent.hal.evses[1].meter.read()
        assert reading.power_w == -5000 and reading.energy_export_wh > 0

        # An external discharge limit bounds it too (and caps the EVSE's discharge).
        await ctl({"cmd": "external", "args": {"evse": 1, "max_discharge_w": 2500}})
        assert stage(agent) == -2500
        snap = agent.station.evses[1].power_stage_snapshot()
        assert dict(snap.discharge_limits)["external"] == 2500

        await clock.advance(28)  # 29 s after the setpoint (sample() took one)
        await agent.station.quiet()
        assert stage(agent) == -2500  # still valid
        await clock.advance(1.5)
        await eventually(lambda: stage(agent) == 0, "stale: 0 W (the period has no setpoint)")
        assert agent.station.v2x_modes.external_setpoint(1) == (None, True)
        status = await ctl({"cmd": "status"})
        assert status["evses"][0]["v2x"]["setpoint_w"] == 0
        # Renewed: followed again.
        await ctl({"cmd": "external", "args": {"evse": 1, "setpoint_w": -1000,
                                               "valid_s": 30}})
        assert stage(agent) == -1000
        with pytest.raises(ValueError, match="max_charge_w -5: expected watts >= 0"):
            await ctl({"cmd": "external", "args": {"evse": 1, "max_charge_w": -5}})
        with pytest.raises(ValueError, match="external needs a setpoint_w"):
            await ctl({"cmd": "external", "args": {"evse": 1}})


async def test_stale_external_setpoint_falls_back_to_the_periods(short_dir):
    async with rig("2.1", short_dir) as (csms, make):
        agent, link = await v2x_session(csms, make)
        clock: FakeClock = agent.clock
        await agent.handle_control({"cmd": "external", "args": {
            "evse": 1, "setpoint_w": -4000, "valid_s": 10}})
        await install(link, 1, profile(1, [period(0, operationMode="ExternalSetpoint",
                                                  setpoint=1500)]))
        await eventually(lambda: stage(agent) == -4000, "the external setpoint")
        await clock.advance(10)
        await eventually(lambda: stage(agent) == 1500, "the period's setpoint once stale")


async def test_external_limits_cap_charging_within_the_period(short_dir):
    """ExternalLimits: the external charge limit (W) is what the stage charges at most,
    never above the period's limit; without one, plain charging under the period."""
    async with rig("2.1", short_dir) as (csms, make):
        agent, link = await v2x_session(csms, make)
        ctl = agent.handle_control
        # ExternalLimits is offered once an external source is there (here: ctl).
        await install(link, 1, profile(1, [period(0, operationMode="ExternalLimits")]),
                      "Rejected")
        await ctl({"cmd": "external", "args": {"evse": 1, "max_charge_w": None}})
        await install(link, 1, profile(1, [period(0, operationMode="ExternalLimits",
                                                  limit=6000)]))
        await eventually(lambda: agent.station.v2x_modes.plans.get(1) is not None
                         and agent.station.v2x_modes.plans[1].mode.value == "ExternalLimits",
                         "the ExternalLimits period planned")
        assert stage(agent) is None  # no external limit: the pilot's offer governs
        await ctl({"cmd": "external", "args": {"evse": 1, "max_charge_w": 2000}})
        assert stage(agent) == 2000
        await ctl({"cmd": "external", "args": {"evse": 1, "max_charge_w": 9000}})
        # The period's limit holds (as the composite has it: 8.6 A on 3 phases).
        assert stage(agent) == pytest.approx(8.6 * 230 * 3)
        await ctl({"cmd": "external", "args": {"evse": 1, "max_charge_w": None}})
        await eventually(lambda: stage(agent) is None, "the limit lifted")


# ---------------------------------------------------------------- end to end over MQTT


@needs_broker
async def test_external_setpoint_session_over_mqtt(short_dir):
    """A 2.1 session against the strict CSMS with the energy manager on MQTT: the EV
    discharges at the published setpoint, a bad payload is refused on the error topic
    without changing anything, and a setpoint not renewed within setpoint_timeout_s is no
    longer followed (stale, 0 W) until the next one."""
    broker = Broker(short_dir)
    await broker.start()
    try:
        async with rig("2.1", short_dir) as (csms, make), \
                Subscriber(broker.port) as sub:
            mqtt = (f"mqtt: {{host: 127.0.0.1, port: {broker.port}, setpoint_timeout_s: 20, "
                    "reconnect: {min_backoff_s: 0.05, max_backoff_s: 0.2}}")
            agent, link = await v2x_session(csms, make, mqtt)
            clock: FakeClock = agent.clock
            await sub.wait("status", "online")
            assert {"ExternalSetpoint", "ExternalLimits"} <= set(await supported_modes(link))
            await install(link, 1, profile(1, [period(0, operationMode="ExternalSetpoint",
                                                      dischargeLimit=-8000)]))
            await eventually(lambda: stage(agent) == 0, "idle until the energy manager speaks")

            await sub.publish("evse/1/set/setpoint_w", "-6000")
            await eventually(lambda: stage(agent) == -6000, "discharging at the setpoint")
            s = await sub.state(1, lambda s: s.get("setpoint_w") == -6000)
            assert s["external_setpoint_w"] == -6000 and not s["external_setpoint_stale"]
            assert s["operation_mode"] == "ExternalSetpoint"
            await sample(agent, 10)
            reading = await agent.hal.evses[1].meter.read()
            assert reading.power_w == -6000
            assert reading.energy_export_wh == pytest.approx(6000 * 10 / 3600, rel=0.01)

            # Refused: an error naming the problem, the setpoint in force unchanged.
            await sub.publish("evse/1/set/setpoint_w", "lots")
            err = await sub.wait("evse/1/set/setpoint_w/error", lambda p: "not a number" in p)
            assert "'lots'" in err
            await sub.publish("evse/1/set/max_discharge_w", "-5")
            await sub.wait("evse/1/set/max_discharge_w/error", lambda p: "negative" in p)
            await sub.publish("evse/1/set/power", "5")
            await sub.wait("evse/1/set/power/error", lambda p: "unknown command topic" in p)
            assert stage(agent) == -6000

            # An external discharge limit on the station topic bounds it.
            await sub.publish("set/max_discharge_w", "4000")
            await eventually(lambda: stage(agent) == -4000, "held to the external limit")
            await sub.state(1, lambda s: s["external_max_discharge_w"] == 4000)

            # Not renewed within 20 s (fake clock): no longer followed.
            await clock.advance(9)  # 19 s after the setpoint (the sample took 10)
            await agent.station.quiet()
            assert stage(agent) == -4000
            await clock.advance(1.5)
            await eventually(lambda: stage(agent) == 0, "stale: back to 0 W")
            s = await sub.state(1, lambda s: s["external_setpoint_stale"])
            assert s["external_setpoint_w"] is None and s["setpoint_w"] == 0

            await sub.publish("evse/1/set/setpoint_w", "-2000")  # the energy manager is back
            await eventually(lambda: stage(agent) == -2000, "followed again")
            await sub.wait("evse/1/set/setpoint_w/error", "")  # a good value clears the error
            await sub.publish("evse/1/set/setpoint_w", "")  # withdrawn: the period's (0)
            await eventually(lambda: stage(agent) == 0, "withdrawn")
            assert json.loads(sub.latest["cp-agent/CP1/evse/1/state"])["transaction"]
    finally:
        await broker.stop()


@needs_broker
async def test_setpoint_topic_on_a_charge_only_evse_is_refused(short_dir):
    broker = Broker(short_dir)
    await broker.start()
    try:
        async with rig("2.1", short_dir) as (csms, make), \
                Subscriber(broker.port) as sub:
            agent = await make(extra=f"mqtt: {{host: 127.0.0.1, port: {broker.port}}}")
            await online201(agent, csms)
            await sub.wait("status", "online")
            await sub.publish("evse/1/set/setpoint_w", "-1000")
            await sub.wait("evse/1/set/setpoint_w/error",
                           lambda p: "no power stage that takes setpoints" in p)
            state = await sub.state(1, lambda s: True)
            assert "external_setpoint_w" not in state  # no V2X part on a charge-only EVSE
    finally:
        await broker.stop()
