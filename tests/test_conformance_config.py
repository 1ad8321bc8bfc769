"""Conformance of configuration, metering capabilities, local list version and GetReport.

Each test is a regression test for a deviation from the spec texts in /work/shared/spec:

1. 1.6 configuration keys are CiString (1.6 chapter 2, "CiString: Case Insensitive String"):
   a key sent in any case finds the key, the answer spells it the station's way, an unknown key
   comes back as sent.
2. A measurand list accepts what the hardware can give, and then gives it; what the hardware can
   never give is refused (1.6 3.16.4: "If the comma separated list contains one or more
   measurands that are not supported by this Charge Point, the Charge Point SHALL respond with:
   ChangeConfiguration.conf with: status = Rejected. No changes SHALL be made"; 2.0.1
   TC_B_53_CS: the measurand lists have "valuesList=subset(<supported measurands>)").
3. "A version number of 0 (zero) SHALL be used to indicate that the local authorization list is
   empty" (1.6 5.10; the same rule in 2.0.1 D01).
4. 2.0.1 GetReport: a componentVariable without variable.instance reports every instance of
   the variable, one without component.instance / evse every instance / EVSE of the component
   (errata 2023-12 B08.FR.22-25, which replace B08.FR.19).

Tests that apply to both versions run on each through the ``version`` fixture.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import pytest

from agent.app import Agent
from agent.clock import FakeClock
from agent.core.metering import supported_measurands
from agent.testing.csms import TestCsms
from hal.drivers.meters import BUILTIN_MAPS
from hal.drivers.registers import MeterMap, RegisterSpec
from hal.interfaces import (
    BASIC_METER_MEASURES,
    EvConnection,
    MeterReading,
    PilotState,
    PowerMeter,
)
from hal.mock import MockHal, MockMeter
from tests.conftest import eventually, version_rig

SID = "CP1"
VERSIONS = ("1.6", "2.0.1")
ENERGY = "Energy.Active.Import.Register"

# The four measurand lists, by their 1.6 key (the neutral name) and their 2.0.1 variable.
LISTS_201 = {
    "MeterValuesSampledData": ("SampledDataCtrlr", "TxUpdatedMeasurands"),
    "StopTxnSampledData": ("SampledDataCtrlr", "TxEndedMeasurands"),
    "MeterValuesAlignedData": ("AlignedDataCtrlr", "Measurands"),
    "StopTxnAlignedData": ("AlignedDataCtrlr", "TxEndedMeasurands"),
}


@pytest.fixture(params=VERSIONS)
def version(request: pytest.FixtureRequest) -> str:
    return request.param


only_16 = pytest.mark.parametrize("version", ["1.6"])
only_201 = pytest.mark.parametrize("version", ["2.0.1"])


rig = version_rig


async def online(agent: Agent, csms: TestCsms) -> Any:
    await asyncio.wait_for(agent.adapter.accepted.wait(), 5)
    link = await csms.wait_station(SID, 5)
    await asyncio.wait_for(agent.adapter.outbox.idle.wait(), 5)
    await agent.station.quiet()
    return link


async def configure(version: str, link: Any, name: str, value: str) -> tuple[str, str | None]:
    """Set a neutral setting through the version's own message: (status, 2.0.1 reasonCode)."""
    if version == "1.6":
        res = await link.call("ChangeConfiguration", {"key": name, "value": value})
        return res["status"], None
    component, variable = LISTS_201.get(name) or {
        "MeterValueSampleInterval": ("SampledDataCtrlr", "TxUpdatedInterval"),
        "TxStartedMeasurands": ("SampledDataCtrlr", "TxStartedMeasurands"),
    }[name]
    res = await link.call("SetVariables", {"setVariableData": [{
        "component": {"name": component}, "variable": {"name": variable},
        "attributeValue": value}]})
    result = res["setVariableResult"][0]
    return result["attributeStatus"], result.get("attributeStatusInfo", {}).get("reasonCode")


async def read(version: str, link: Any, name: str) -> str:
    if version == "1.6":
        res = await link.call("GetConfiguration", {"key": [name]})
        return res["configurationKey"][0]["value"]
    component, variable = LISTS_201.get(name) or ("SampledDataCtrlr", name)
    res = await link.call("GetVariables", {"getVariableData": [{
        "component": {"name": component}, "variable": {"name": variable}}]})
    return res["getVariableResult"][0]["attributeValue"]


async def advance(clock: FakeClock, seconds: float, step: float = 0.05) -> None:
    """Move the fake clock in small steps, letting the loop run the woken tasks each time."""
    for _ in range(round(seconds / step)):
        await clock.advance(step)
        for _ in range(20):
            await asyncio.sleep(0)


async def charging(version: str, agent: Agent, csms: TestCsms) -> None:
    agent.hal.plug(1)
    agent.hal.tap("TAG1")
    if version == "1.6":
        await csms.wait_for("StartTransaction", station_id=SID)
    else:
        await csms.wait_for("TransactionEvent", station_id=SID,
                            predicate=lambda p: p["transactionInfo"].get("chargingState")
                            == "Charging")
    await asyncio.wait_for(agent.adapter.outbox.idle.wait(), 5)


def periodic_samples(version: str, csms: TestCsms) -> list[list[dict]]:
    """The sampledValue lists of every periodic sample of a transaction, in order."""
    if version == "1.6":
        return [mv["sampledValue"] for p in csms.messages(SID, "MeterValues")
                if "transactionId" in p for mv in p["meterValue"]
                if mv["sampledValue"][0].get("context") == "Sample.Periodic"]
    return [mv["sampledValue"] for p in csms.messages(SID, "TransactionEvent")
            if p["triggerReason"] == "MeterValuePeriodic" for mv in p.get("meterValue", [])]


class NoFrequencyMeter(MockMeter):
    """A meter whose register map has no frequency (as a meter map without frequency_hz)."""

    @property
    def measures(self) -> frozenset[str]:
        return super().measures - {"frequency"}

    async def read(self) -> MeterReading:
        return replace(await super().read(), frequency_hz=None)


# ====================================================================== 1. CiString keys


@only_16
async def test_configuration_keys_match_without_regard_to_case(version, short_dir):
    async with rig(version, short_dir) as (csms, make):
        agent = await make()
        link = await online(agent, csms)
        res = await link.call("GetConfiguration", {"key": ["connectiontimeout", "NoSuchKey",
                                                           "HEARTBEATINTERVAL"]})
        assert [k["key"] for k in res["configurationKey"]] == ["ConnectionTimeOut",
                                                                "HeartbeatInterval"]
        assert res["unknownKey"] == ["NoSuchKey"]  # as sent
        status = await link.call("ChangeConfiguration", {"key": "ConnectionTimeout",
                                                         "value": "45"})
        assert status == {"status": "Accepted"}
        res = await link.call("GetConfiguration", {"key": ["ConnectionTimeOut"]})
        assert res["configurationKey"] == [{"key": "ConnectionTimeOut", "readonly": False,
                                            "value": "45"}]
        assert agent.settings["ConnectionTimeOut"] == 45
        unknown = await link.call("ChangeConfiguration", {"key": "noSuchKey", "value": "1"})
        assert unknown == {"status": "NotSupported"}
        readonly = await link.call("ChangeConfiguration", {"key": "numberofconnectors",
                                                           "value": "3"})
        assert readonly == {"status": "Rejected"}


# ====================================================================== 2. measurands


def test_hal_says_what_its_meters_and_evs_measure():
    hal = MockHal(1)
    meter, ev = hal.evses[1].meter, hal.evses[1].ev
    assert meter.measures == {"energy_import", "energy_export", "power", "current", "voltage",
                              "frequency"}  # the mock meter has no temperature sensor
    assert ev.measures == {"soc"}
    assert MockHal(1, ev_soc_percent=None).evses[1].ev.measures == frozenset()

    class Minimal(PowerMeter):
        async def read(self) -> MeterReading:
            return MeterReading(energy_import_wh=0.0)

    class PilotOnly(EvConnection):
        def pilot_state(self) -> PilotState:
            return PilotState.A

        async def set_current_limit(self, amps: float) -> None:
            pass

        @property
        def current_limit(self) -> float:
            return 0.0

    # What every MeterReading carries is the default; an EV known only by its pilot has no SoC.
    assert Minimal().measures == BASIC_METER_MEASURES
    assert PilotOnly().measures == frozenset() and PilotOnly().soc_percent is None


def test_register_maps_measure_what_they_map():
    assert BUILTIN_MAPS["sdm630"].measures == {"energy_import", "energy_export", "power",
                                               "current", "voltage", "frequency",
                                               "power_reactive", "power_factor"}
    spec = (RegisterSpec(0),)
    bare = MeterMap("bare", {"energy_import_wh": spec, "voltage_v": spec * 3})
    assert bare.measures == {"energy_import", "voltage"}  # no frequency, no power
    hot = MeterMap("hot", {"energy_import_wh": spec, "temperature_c": (RegisterSpec(2),)})
    assert "temperature" in hot.measures


def test_station_supports_what_every_evse_gives_plus_the_offered_current():
    hal = MockHal(2)
    hal.evses[2].meter = NoFrequencyMeter(hal.sims[2])
    both = supported_measurands(hal.evses.values())
    assert "Frequency" not in both and "Temperature" not in both
    assert {ENERGY, "Voltage", "Current.Import", "Power.Active.Import", "SoC",
            "Current.Offered"} <= set(both)
    assert "Frequency" in supported_measurands([hal.evses[1]])


def test_mock_ev_reports_soc_while_plugged_rising_with_the_energy():
    now = [0.0]
    hal = MockHal(1, monotonic=lambda: now[0], ev_soc_percent=20.0)
    ev = hal.evses[1].ev
    assert ev.soc_percent is None  # no EV, no state of charge
    hal.plug(1)
    assert ev.soc_percent == pytest.approx(20.0)
    sim = hal.sims[1]
    sim.offered, sim.coil_closed = 16.0, True
    now[0] = 3600.0  # an hour at 16 A on three phases: 11 kWh
    assert ev.soc_percent == pytest.approx(20.0 + 11_040 / 40_000 * 100, rel=1e-3)
    hal.unplug(1)
    assert ev.soc_percent is None


async def test_soc_accepted_is_sent_in_every_periodic_sample(version, short_dir):
    clock = FakeClock()
    async with rig(version, short_dir) as (csms, make):
        agent = await make(clock=clock, defaults={"MeterValueSampleInterval": 1})
        link = await online(agent, csms)
        status, _ = await configure(version, link, "MeterValuesSampledData",
                                    f"{ENERGY},SoC,Frequency")
        assert status == "Accepted"
        assert await read(version, link, "MeterValuesSampledData") == f"{ENERGY},SoC,Frequency"
        await charging(version, agent, csms)
        await advance(clock, 3.5)
        await eventually(lambda: len(periodic_samples(version, csms)) >= 3,
                         "three periodic samples")
        for sampled in periodic_samples(version, csms):
            by_measurand = {sv.get("measurand", ENERGY): sv for sv in sampled}
            assert set(by_measurand) == {ENERGY, "SoC", "Frequency"}, sampled
            soc = by_measurand["SoC"]
            assert soc["location"] == "EV"
            unit = soc["unit"] if version == "1.6" else soc["unitOfMeasure"]["unit"]
            assert unit == "Percent"
            assert 0 <= float(soc["value"]) <= 100


async def test_a_measurand_the_hardware_can_never_give_is_refused(version, short_dir):
    """EVSE 2's meter has no frequency and the EVs report no SoC: both are refused in every
    list (1.6 3.16.4 Rejected, no change; 2.0.1 Rejected InvalidValue), what the hardware
    gives is still accepted."""
    async with rig(version, short_dir) as (csms, make):
        hal = MockHal(2, ev_soc_percent=None)
        hal.evses[2].meter = NoFrequencyMeter(hal.sims[2])
        agent = await make(hal=hal, evses=2)
        link = await online(agent, csms)
        for name in LISTS_201:
            before = await read(version, link, name)
            for impossible in ("Frequency", "SoC"):
                status, reason = await configure(version, link, name, f"{ENERGY},{impossible}")
                assert status == "Rejected", (name, impossible)
                if version == "2.0.1":
                    assert reason == "InvalidValue"
                assert await read(version, link, name) == before, "no change"
            good = f"{ENERGY},Voltage,Current.Offered"
            assert await configure(version, link, name, good) == (
                "Accepted", None)
            assert await read(version, link, name) == good
        if version == "2.0.1":
            status, reason = await configure(version, link, "TxStartedMeasurands",
                                             f"{ENERGY},Frequency")
            assert (status, reason) == ("Rejected", "InvalidValue")
            await link.call("GetReport", {"requestId": 1, "componentVariable": [
                {"component": {"name": "SampledDataCtrlr"}}]})
            report = await csms.wait_for("NotifyReport", station_id=SID,
                                         predicate=lambda p: p["requestId"] == 1)
            lists = {e["variable"]["name"]: e["variableCharacteristics"].get("valuesList")
                     for e in report["reportData"]}
            for variable in ("TxStartedMeasurands", "TxUpdatedMeasurands", "TxEndedMeasurands"):
                offered = lists[variable].split(",")
                assert "Frequency" not in offered and "SoC" not in offered
                assert {ENERGY, "Voltage", "Current.Offered"} <= set(offered)


@only_16
async def test_temperature_is_refused_on_a_station_without_a_sensor(version, short_dir):
    async with rig(version, short_dir) as (csms, make):
        agent = await make()
        link = await online(agent, csms)
        defaults = {"MeterValuesSampledData": ENERGY, "MeterValuesAlignedData": ENERGY,
                    "StopTxnSampledData": "", "StopTxnAlignedData": ""}
        for name, default in defaults.items():
            assert await read(version, link, name) == default  # the defaults are valid
            status, _ = await configure(version, link, name, f"{ENERGY},Temperature")
            assert status == "Rejected"
            assert await read(version, link, name) == default


async def test_a_stored_list_is_cut_to_what_the_hardware_gives(version, short_dir):
    """A list set while another meter was fitted keeps only what this one can give."""
    async with rig(version, short_dir) as (csms, make):
        agent = await make()
        link = await online(agent, csms)
        assert (await configure(version, link, "MeterValuesSampledData",
                                f"{ENERGY},Frequency,Voltage"))[0] == "Accepted"
        await agent.stop()
        hal = MockHal(1)
        hal.evses[1].meter = NoFrequencyMeter(hal.sims[1])
        again = await make(hal=hal)
        link = await online(again, csms)
        assert await read(version, link, "MeterValuesSampledData") == f"{ENERGY},Voltage"


# ====================================================================== 3. local list version


async def send_list(version: str, link: Any, number: int, tokens: list[str], kind: str,
                    remove: tuple[str, ...] = ()) -> str:
    if version == "1.6":
        items: list[dict] = [{"idTag": t, "idTagInfo": {"status": "Accepted"}} for t in tokens]
        items += [{"idTag": t} for t in remove]
        payload: dict = {"listVersion": number, "updateType": kind}
        if items:
            payload["localAuthorizationList"] = items
    else:
        items = [{"idToken": {"idToken": t, "type": "ISO14443"},
                  "idTokenInfo": {"status": "Accepted"}} for t in tokens]
        items += [{"idToken": {"idToken": t, "type": "ISO14443"}} for t in remove]
        payload = {"versionNumber": number, "updateType": kind}
        if items:
            payload["localAuthorizationList"] = items
    return (await link.call("SendLocalList", payload))["status"]


async def list_version(version: str, link: Any) -> int:
    res = await link.call("GetLocalListVersion", {})
    return res["listVersion" if version == "1.6" else "versionNumber"]


async def test_local_list_version_is_0_while_the_list_is_empty(version, short_dir):
    async with rig(version, short_dir) as (csms, make):
        agent = await make()
        link = await online(agent, csms)
        assert await list_version(version, link) == 0
        assert await send_list(version, link, 3, ["A", "B"], "Full") == "Accepted"
        assert await list_version(version, link) == 3
        assert await send_list(version, link, 5, [], "Full") == "Accepted"
        assert agent.storage.local_list_count() == 0
        assert await list_version(version, link) == 0, "an emptied list is version 0"
        # What the CSMS was told is what counts: a differential update newer than 0 applies.
        assert await send_list(version, link, 1, ["C"], "Differential") == "Accepted"
        assert await list_version(version, link) == 1
        # A differential update that removes the last entry empties the list too.
        assert await send_list(version, link, 2, [], "Differential", remove=("C",)) == \
            "Accepted"
        assert await list_version(version, link) == 0
        await agent.stop()
        again = await make()
        link = await online(again, csms)
        assert await list_version(version, link) == 0


# ====================================================================== 4. GetReport


async def custom_report(csms: TestCsms, link: Any, request_id: int,
                        component_variables: list[dict]) -> list[tuple]:
    """GetReport's entries as (component, evse, connector, variable, instance) keys."""
    before = len(csms.messages(SID, "NotifyReport"))
    res = await link.call("GetReport", {"requestId": request_id,
                                        "componentVariable": component_variables})
    assert res["status"] == "Accepted", res
    await csms.wait_for("NotifyReport", station_id=SID,
                        predicate=lambda p: p["requestId"] == request_id
                        and not p.get("tbc", False))
    keys = []
    for p in csms.messages(SID, "NotifyReport")[before:]:
        if p["requestId"] != request_id:
            continue
        for e in p["reportData"]:
            comp, var = e["component"], e["variable"]
            keys.append((comp["name"], comp.get("evse", {}).get("id"),
                         comp.get("evse", {}).get("connectorId"), var["name"],
                         var.get("instance")))
    return keys


@only_201
async def test_get_report_without_variable_instance_reports_every_instance(version, short_dir):
    async with rig(version, short_dir) as (csms, make):
        agent = await make(evses=2)
        link = await online(agent, csms)
        found = await custom_report(csms, link, 1, [
            {"component": {"name": "DeviceDataCtrlr"}, "variable": {"name": "ItemsPerMessage"}}])
        assert sorted(k[4] for k in found) == ["GetReport", "GetVariables",
                                               "ReportChargingProfiles", "SetVariables"]
        assert {k[3] for k in found} == {"ItemsPerMessage"}
        # Naming the instance narrows it to that one.
        found = await custom_report(csms, link, 2, [
            {"component": {"name": "DeviceDataCtrlr"},
             "variable": {"name": "BytesPerMessage", "instance": "GetVariables"}}])
        assert found == [("DeviceDataCtrlr", None, None, "BytesPerMessage", "GetVariables")]
        # No evse: every EVSE's (B08.FR.23); an evse without connector: every connector's.
        found = await custom_report(csms, link, 3, [
            {"component": {"name": "EVSE"}, "variable": {"name": "Power"}},
            {"component": {"name": "Connector", "evse": {"id": 2}},
             "variable": {"name": "ConnectorType"}}])
        assert sorted(found) == [("Connector", 2, 1, "ConnectorType", None),
                                 ("EVSE", 1, None, "Power", None),
                                 ("EVSE", 2, None, "Power", None)]
        # An instance nothing has is still an empty result.
        res = await link.call("GetReport", {"requestId": 4, "componentVariable": [
            {"component": {"name": "DeviceDataCtrlr"},
             "variable": {"name": "ItemsPerMessage", "instance": "Nope"}}]})
        assert res["status"] == "EmptyResultSet"
        res = await link.call("GetReport", {"requestId": 5, "componentVariable": [
            {"component": {"name": "DeviceDataCtrlr", "instance": "Nope"}}]})
        assert res["status"] == "EmptyResultSet"
