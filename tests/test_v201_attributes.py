"""2.0.1 device model: the attributes of a variable (Actual, Target, MinSet, MaxSet).

A variable answers only for the attributes it has (NotSupportedAttributeType for the others,
TC_B_07/08_CS style), every attribute has its own mutability and stored value, reports list
them all, and MinSet <= Target <= MaxSet holds.  EVSE.Power MaxSet is writable: it caps the
EVSE (a limit source), persisted across restarts.
"""

from __future__ import annotations

import pytest

from agent.core.settings import Settings
from agent.ocpp.v201.device_model import Attr, DeviceModel, VarDef
from agent.storage import Storage
from tests.conftest import charging201, eventually, on_versions_201_plus, online201

# Every test here runs on 2.0.1 and 2.1 (2.1 carries these blocks over).
v2 = on_versions_201_plus()

EVSE1 = {"name": "EVSE", "evse": {"id": 1}}
POWER = {"name": "Power"}
MAX_W = 32 * 230 * 3  # the configured maximum (32 A, 3 phases)


def item(kind: str | None, value: str | None = None, component: dict = EVSE1,
         variable: dict = POWER) -> dict:
    out: dict = {"component": component, "variable": variable}
    if kind is not None:
        out["attributeType"] = kind
    if value is not None:
        out["attributeValue"] = value
    return out


async def get(link, *items: dict) -> list[dict]:
    return (await link.call("GetVariables", {"getVariableData": list(items)}))[
        "getVariableResult"]


async def put(link, *items: dict) -> list[dict]:
    return (await link.call("SetVariables", {"setVariableData": list(items)}))[
        "setVariableResult"]


async def test_attributes_a_variable_lacks_are_not_supported(csms201, make_agent201):
    agent = await make_agent201()
    link = await online201(agent, csms201)
    results = await get(link, item("Target"), item("MinSet"), item("MaxSet"), item(None))
    assert [(r["attributeStatus"], r.get("attributeType")) for r in results] == [
        ("NotSupportedAttributeType", "Target"), ("NotSupportedAttributeType", "MinSet"),
        ("Accepted", "MaxSet"), ("Accepted", "Actual")]
    assert float(results[2]["attributeValue"]) == MAX_W
    results = await put(link, item("MinSet", "100"), item("Target", "100"),
                        item("Actual", "100"))
    assert [r["attributeStatus"] for r in results] == [
        "NotSupportedAttributeType", "NotSupportedAttributeType", "Rejected"]
    assert results[2]["attributeStatusInfo"]["reasonCode"] == "ReadOnly", "measured"
    assert agent.station.evses[1].limit_a == 32


async def test_evse_power_max_set_caps_the_evse_and_persists(csms201, make_agent201):
    agent = await make_agent201()
    link = await online201(agent, csms201)
    too_much = (await put(link, item("MaxSet", str(MAX_W + 1))))[0]
    assert too_much["attributeStatus"] == "Rejected"
    assert too_much["attributeStatusInfo"]["reasonCode"] == "InvalidValue"
    assert (await put(link, item("MaxSet", "4140")))[0]["attributeStatus"] == "Accepted"
    assert (await get(link, item("MaxSet")))[0]["attributeValue"] == "4140"
    await eventually(lambda: agent.station.evses[1].limit_a == pytest.approx(6.0),
                     "4140 W on three phases: 6 A")
    assert agent.station.evses[1].limit_source == "maxset"
    await charging201(agent, csms201)
    assert agent.station.evses[1].offered_a == pytest.approx(6.0)
    # The report shows both attributes, each with its own mutability.
    res = await link.call("GetReport", {"requestId": 7, "componentVariable": [
        {"component": EVSE1, "variable": POWER}]})
    assert res["status"] == "Accepted"
    report = await csms201.wait_for("NotifyReport", station_id="CP1",
                                    predicate=lambda p: p["requestId"] == 7)
    attributes = {a["type"]: a for a in report["reportData"][0]["variableAttribute"]}
    assert attributes["MaxSet"]["mutability"] == "ReadWrite"
    assert attributes["MaxSet"]["value"] == "4140" and attributes["MaxSet"]["persistent"]
    assert attributes["Actual"]["mutability"] == "ReadOnly"
    assert report["reportData"][0]["variableCharacteristics"]["maxLimit"] == MAX_W
    await agent.stop()
    again = await make_agent201()
    await eventually(lambda: again.station.evses[1].limit_a == pytest.approx(6.0),
                     "the cap applies after the restart, before any CSMS")
    link = await online201(again, csms201)
    assert (await put(link, item("MaxSet", str(MAX_W))))[0]["attributeStatus"] == "Accepted"
    await eventually(lambda: again.station.evses[1].limit_source == "evse",
                     "MaxSet back at the maximum lifts the cap")


def _model(*defs: VarDef) -> DeviceModel:
    storage = Storage(":memory:")
    return DeviceModel(Settings(storage), storage, defs)


def test_min_set_target_max_set_stay_in_order_and_are_reported():
    d = VarDef("Heater", "Temperature", "decimal",
               (Attr("Actual", "ReadOnly", getter=lambda: "12.5"),
                Attr("MinSet", "ReadWrite", default="5"), Attr("Target", "ReadWrite"),
                Attr("MaxSet", "ReadWrite", default="30")), unit="Celsius", max_limit=60)
    dm = _model(d)
    seen: list[tuple[str, str]] = []
    dm.attribute_listeners.append(lambda var, kind, text: seen.append((kind, text)))
    actual_changes: list[str] = []
    dm.listeners.append(lambda var, text: actual_changes.append(text))

    def put(kind: str, value: str) -> dict:
        return dm.set_variable({"component": {"name": "Heater"},
                                "variable": {"name": "Temperature"},
                                "attributeType": kind, "attributeValue": value})[0]

    assert put("Target", "20")["attributeStatus"] == "Accepted"
    low = put("Target", "4")
    assert low["attributeStatus"] == "Rejected" and "below MinSet 5" in \
        low["attributeStatusInfo"]["additionalInfo"]
    assert put("MaxSet", "19")["attributeStatus"] == "Rejected", "below the Target"
    assert put("MinSet", "21")["attributeStatus"] == "Rejected", "above the Target"
    assert put("MaxSet", "61")["attributeStatus"] == "Rejected", "above maxLimit"
    assert put("MaxSet", "25")["attributeStatus"] == "Accepted"
    assert seen == [("Target", "20"), ("MaxSet", "25")] and actual_changes == []
    entry = dm.report_entry(d)
    assert [(a["type"], a.get("value"), a["mutability"]) for a in entry["variableAttribute"]] \
        == [("Actual", "12.5", "ReadOnly"), ("MinSet", "5", "ReadWrite"),
            ("Target", "20", "ReadWrite"), ("MaxSet", "25", "ReadWrite")]
    assert dm.value("Heater", "Temperature", attribute="Target") == "20"


def test_an_attribute_declared_twice_is_a_declaration_error():
    d = VarDef("EVSE", "Power", "decimal",
               (Attr("Actual", "ReadOnly", getter=lambda: "0"), Attr("MaxSet"),
                Attr("MaxSet")), evse=1)
    with pytest.raises(ValueError, match="each of Actual, Target, MinSet, MaxSet at most once"):
        _model(d)
