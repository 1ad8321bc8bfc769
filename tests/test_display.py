"""What the driver sees: the display through a session on both versions, 2.0.1 display
messages (O01-O06) and tariff and cost (I01-I06), on the mock HAL's 20x4 display.

The 2.0.1 part 6 test cases of blocks I and O are "intentionally blank, added in a later
version", so the 2.0.1 tests are named after the use cases and requirements they exercise.
Every test runs the whole agent against the strict test CSMS; what is asserted is the mock
display's glass (``agent.hal.display.lines``), the frames on the wire and the status document.
"""

from __future__ import annotations

import re
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from agent.app import Agent
from agent.clock import FakeClock, iso
from agent.control import render_status
from agent.core.cost import CostError, format_amount, to_decimal
from agent.ocpp.v201 import display as display_block
from agent.testing.csms import TestCsms
from agent.web.view import SessionTracker, build_view
from tests.conftest import VERSIONS_201_PLUS, eventually, online, online201, version_rig

VERSIONS = ("1.6", "2.0.1", "2.1")
ENERGY = re.compile(r"^\d+\.\d\d kWh  \d+\.\d kW$")


def screen(agent: Agent) -> list[str]:
    return list(agent.hal.display.lines)  # type: ignore[union-attr]


async def shows(agent: Agent, *lines: str, timeout: float = 5.0) -> None:
    """Until the first rows of the glass are ``lines``."""
    await eventually(lambda: screen(agent)[:len(lines)] == list(lines),
                     f"the display shows {list(lines)} (it shows {screen(agent)})",
                     timeout=timeout)


async def up(agent: Agent, csms: TestCsms) -> Any:
    if agent.adapter.version == "1.6":
        return await online(agent, csms)
    return await online201(agent, csms)


async def tx_id(csms: TestCsms) -> str:
    """The transactionId of the last Started event, once the CSMS has it (the screen shows
    Charging before the outbox has delivered the event)."""
    await csms.wait_for("TransactionEvent", station_id="CP1",
                        predicate=lambda p: p["eventType"] == "Started")
    started = [p for p in csms.messages("CP1", "TransactionEvent") if p["eventType"] == "Started"]
    return started[-1]["transactionInfo"]["transactionId"]


def personal(csms: TestCsms, text: str, **info: Any) -> None:
    """The CSMS answers Authorize with a tariff text (idTokenInfo.personalMessage)."""
    def answer(link: Any, payload: dict) -> dict:
        return {"idTokenInfo": {"status": "Accepted", **info,
                                "personalMessage": {"format": "UTF8", "content": text}}}
    csms.overrides["Authorize"] = answer


def total_on_end(csms: TestCsms, total: float | None, **extra: Any) -> None:
    """The CSMS answers TransactionEvent as usual, the Ended one with ``totalCost``."""
    def answer(link: Any, payload: dict) -> dict:
        out = csms._transaction_event(link, payload)
        if payload["eventType"] == "Ended" and total is not None:
            out["totalCost"] = total
        elif payload["eventType"] != "Ended":
            out.update(extra)
        return out
    csms.overrides["TransactionEvent"] = answer


@pytest.fixture(params=VERSIONS)
def version(request: pytest.FixtureRequest) -> str:
    return request.param


# ====================================================================== a whole session


async def test_a_session_on_the_display(version, short_dir):
    """Idle, authorized, charging with energy and power (and on 2.x the tariff and the
    running cost), finished with the total; the same screens on every version, 1.6 without
    cost. The content is in ``ctl status``, Agent.status() and the status page's JSON."""
    async with version_rig(version, short_dir) as (csms, make):
        if version != "1.6":
            personal(csms, "0.39 EUR/kWh")
            total_on_end(csms, 3.31)
        agent = await make()
        link = await up(agent, csms)
        await shows(agent, "Available", "Present your card")
        agent.hal.tap("TAG1")
        tariff = ["0.39 EUR/kWh"] if version != "1.6" else []
        await shows(agent, "Authorized", "Plug in the cable", *tariff)
        agent.hal.plug(1)
        await shows(agent, "Charging")
        await eventually(lambda: ENERGY.match(screen(agent)[1]) is not None, "energy, power")
        assert screen(agent)[2:] == ([*tariff, ""] if version != "1.6" else ["", ""])
        if version != "1.6":
            await link.call("CostUpdated", {"totalCost": 1.1, "transactionId": await tx_id(csms)})
            await eventually(lambda: screen(agent)[2:] == ["Cost 1.10 EUR", *tariff],
                             f"the running cost (screen {screen(agent)})")
        status = agent.status()["display"]
        assert status["lines"] == screen(agent) and (status["columns"], status["rows"]) == (20, 4)
        assert "|Charging            |" in render_status(agent.status())
        assert build_view(agent, SessionTracker(agent))["display"]["lines"] == screen(agent)
        agent.hal.tap("TAG1")  # the same card ends it; the EV is still plugged in
        total = ["Total 3.31 EUR"] if version != "1.6" else []
        await eventually(lambda: screen(agent)[0] == "Finished" and screen(agent)[2:] ==
                         [*total, "Please unplug", *([""] if version == "1.6" else [])],
                         f"the finished page (screen {screen(agent)})")
        assert re.match(r"^\d+\.\d\d kWh$", screen(agent)[1])
        agent.hal.unplug(1)
        await eventually(lambda: screen(agent)[2:] == ([*total, ""] if total else ["", ""])
                         and screen(agent)[0] == "Finished", "the total stays after the unplug")


async def test_faults_and_unavailable_show_the_reason(version, short_dir):
    async with version_rig(version, short_dir) as (csms, make):
        agent = await make()
        await up(agent, csms)
        agent.hal.inject_fault(1, "ground_failure")
        await shows(agent, "Out of order", "Earth fault")
        agent.hal.clear_fault(1, "ground_failure")
        await shows(agent, "Available", "Present your card")
        agent.hal.inject_fault(0, "reader")
        await shows(agent, "Available", "Card reader faulty")
        agent.hal.clear_fault(0, "reader")
        await agent.station.set_operative(1, False)
        await shows(agent, "Unavailable")


async def test_redrawn_on_change_only(short_dir):
    """Meter polls and ticks do not rewrite an unchanged screen; a change is drawn at once."""
    async with version_rig("2.0.1", short_dir, fake_clock=True) as (csms, make):
        agent = await make()
        await online201(agent, csms)
        clock: FakeClock = agent.clock  # type: ignore[assignment]
        await clock.advance(2)
        await shows(agent, "Available")
        writes = agent.hal.display.writes  # type: ignore[union-attr]
        for _ in range(30):
            await clock.advance(1)
        assert agent.hal.display.writes == writes  # type: ignore[union-attr]
        agent.hal.tap("TAG1")
        await agent.station.quiet()
        await clock.advance(0.5)
        await shows(agent, "Authorized")
        assert agent.hal.display.writes == writes + 1  # type: ignore[union-attr]


async def test_a_broken_display_never_stops_charging(short_dir):
    async with version_rig("2.0.1", short_dir) as (csms, make):
        agent = await make()
        await online201(agent, csms)
        agent.hal.display.broken = True  # type: ignore[union-attr]
        agent.hal.tap("TAG1")
        agent.hal.plug(1)
        await eventually(lambda: agent.hal.evses[1].contactor.commanded_closed, "charging")
        await eventually(lambda: agent.status()["display"]["ok"] is False, "failure reported")
        agent.hal.display.broken = False  # type: ignore[union-attr]
        await shows(agent, "Charging")
        assert agent.status()["display"]["ok"] is True


# ====================================================================== O display messages


def message(mid: int, text: str, priority: str = "InFront", **more: Any) -> dict:
    fmt = more.pop("format", "UTF8")
    return {"message": {"id": mid, "priority": priority,
                        "message": {"format": fmt, "content": text}, **more}}


@pytest.fixture(params=VERSIONS_201_PLUS)
async def rig201(request: pytest.FixtureRequest, short_dir: Path) -> Any:
    """A 2.0.1 rig, and a 2.1 one (whose display block is DisplayMessages21)."""
    async with version_rig(request.param, short_dir) as (csms, make):
        yield csms, make


@pytest.mark.parametrize("request_, expected", [
    (message(1, "Welcome"), "Accepted"),
    (message(1, "Welcome", format="ASCII"), "Accepted"),
    (message(1, "<b>Welcome</b>", format="HTML"), "NotSupportedMessageFormat"),
    (message(1, "https://example.com/qr", format="URI"), "NotSupportedMessageFormat"),
    (message(1, "Your session", transactionId="no-such-tx"), "UnknownTransaction"),
    (message(1, "x" * 512, "NormalCycle"), "Accepted"),  # longer than the glass: pages
])
async def test_O01_set_display_message_answers(rig201, request_, expected):
    csms, make = rig201
    agent = await make()
    link = await online201(agent, csms)
    answer = await link.call("SetDisplayMessage", request_)
    assert answer["status"] == expected
    assert (len(agent.display.board) == 1) == (expected == "Accepted")


async def test_O01_unsupported_priority_state_disabled_and_full(short_dir):
    defaults = {"DisplayMessageCtrlr.SupportedPriorities": "InFront,NormalCycle",
                "DisplayMessageCtrlr.SupportedStates": "Idle"}
    async with version_rig("2.0.1", short_dir, defaults=defaults) as (csms, make):
        agent = await make()
        link = await online201(agent, csms)
        assert (await link.call("SetDisplayMessage", message(1, "x", "AlwaysFront"))
                )["status"] == "NotSupportedPriority"
        assert (await link.call("SetDisplayMessage", message(1, "x", state="Charging"))
                )["status"] == "NotSupportedState"
        agent.display.board.capacity = 2
        for mid in (1, 2):
            assert (await link.call("SetDisplayMessage", message(mid, "x")))["status"] == \
                "Accepted"
        full = await link.call("SetDisplayMessage", message(3, "x"))
        assert full["status"] == "Rejected"
        assert full["statusInfo"]["reasonCode"] == "OutOfStorage"
        replace = await link.call("SetDisplayMessage", message(2, "y"))  # O06: not a new one
        assert replace["status"] == "Accepted"
        await link.call("SetVariables", {"setVariableData": [{
            "component": {"name": "DisplayMessageCtrlr"}, "variable": {"name": "Enabled"},
            "attributeValue": "false"}]})
        off = await link.call("SetDisplayMessage", message(1, "x"))
        assert off["status"] == "Rejected" and off["statusInfo"]["reasonCode"] == "NotEnabled"
        got = await link.call("GetVariables", {"getVariableData": [
            {"component": {"name": "DisplayMessageCtrlr"}, "variable": {"name": name}}
            for name in ("DisplayMessages", "SupportedFormats", "Available")]})
        values = [r["attributeValue"] for r in got["getVariableResult"]]
        assert values == ["2", "ASCII,UTF8", "true"]


async def test_O01_a_station_without_a_display_rejects_messages(short_dir):
    extra = "hal: {driver: mock, ev_max_current_a: 16, display: {type: none}}"
    async with version_rig("2.0.1", short_dir, extra=extra) as (csms, make):
        agent = await make()
        link = await online201(agent, csms)
        answer = await link.call("SetDisplayMessage", message(1, "Welcome"))
        assert answer["status"] == "Rejected"
        assert agent.status()["display"] is None
        got = await link.call("GetVariables", {"getVariableData": [
            {"component": {"name": "DisplayMessageCtrlr"}, "variable": {"name": "Available"}}]})
        assert got["getVariableResult"][0]["attributeValue"] == "false"


async def test_O01_priorities_decide_what_is_in_front(short_dir):
    """NormalCycle takes turns with the station's page, InFront comes before the cycle and
    InFront messages take turns, an AlwaysFront is shown alone (the newest one)."""
    async with version_rig("2.0.1", short_dir, fake_clock=True) as (csms, make):
        agent = await make()
        link = await online201(agent, csms)
        clock: FakeClock = agent.clock  # type: ignore[assignment]

        async def seen(seconds: float = 30.0) -> set[str]:
            out = set()
            for _ in range(int(seconds)):
                await clock.advance(1)
                out.add(screen(agent)[0])
            return out

        await link.call("SetDisplayMessage", message(1, "Free on Sundays", "NormalCycle"))
        assert await seen() == {"Available", "Free on Sundays"}
        await link.call("SetDisplayMessage", message(2, "Closing at 22:00", "InFront"))
        await link.call("SetDisplayMessage", message(3, "Pay by app", "InFront"))
        assert await seen() == {"Closing at 22:00", "Pay by app"}
        await link.call("SetDisplayMessage", message(4, "Storm warning", "AlwaysFront"))
        await link.call("SetDisplayMessage", message(5, "Flood warning", "AlwaysFront"))
        assert await seen() == {"Flood warning"}
        await link.call("ClearDisplayMessage", {"id": 5})
        assert await seen() == {"Storm warning"}


async def test_O01_state_and_time_window(short_dir):
    async with version_rig("2.0.1", short_dir, fake_clock=True) as (csms, make):
        agent = await make()
        link = await online201(agent, csms)
        clock: FakeClock = agent.clock  # type: ignore[assignment]
        now = clock.now()
        await link.call("SetDisplayMessage", message(
            1, "Later", "AlwaysFront", startDateTime=iso(now + timedelta(seconds=60)),
            endDateTime=iso(now + timedelta(seconds=120))))
        await link.call("SetDisplayMessage", message(2, "While charging", "InFront",
                                                     state="Charging"))
        await clock.advance(30)
        await shows(agent, "Available")
        await clock.advance(40)
        await shows(agent, "Later")
        await clock.advance(60)  # past its end: gone from the glass and from the station
        await shows(agent, "Available")
        assert 1 not in agent.display.board
        agent.hal.tap("TAG1")
        agent.hal.plug(1)
        await agent.station.quiet()
        await clock.advance(3)
        await shows(agent, "While charging")


async def test_O02_transaction_message_goes_with_its_transaction(rig201):
    csms, make = rig201
    agent = await make()
    link = await online201(agent, csms)
    agent.hal.tap("TAG1")
    agent.hal.plug(1)
    await csms.wait_for("TransactionEvent", station_id="CP1",
                        predicate=lambda p: p["eventType"] == "Started")
    tx = await tx_id(csms)
    answer = await link.call("SetDisplayMessage",
                             message(7, "Hello Ada", "InFront", transactionId=tx))
    assert answer["status"] == "Accepted"
    await shows(agent, "Hello Ada")
    agent.hal.tap("TAG1")
    await csms.wait_for("TransactionEvent", station_id="CP1",
                        predicate=lambda p: p["eventType"] == "Ended")
    await eventually(lambda: 7 not in agent.display.board, "the message was removed")
    await shows(agent, "Finished")
    assert (await link.call("GetDisplayMessages", {"requestId": 1, "id": [7]}))["status"] \
        == "Unknown"


async def test_O03_O04_get_display_messages_by_filter_in_parts(rig201, monkeypatch):
    monkeypatch.setattr(display_block, "NOTIFY_ITEMS", 2)
    csms, make = rig201
    agent = await make()
    link = await online201(agent, csms)
    for mid, priority, state in [(1, "NormalCycle", None), (2, "InFront", "Idle"),
                                 (3, "NormalCycle", "Charging"), (4, "NormalCycle", None),
                                 (5, "InFront", None)]:
        extra = {"state": state} if state else {}
        assert (await link.call("SetDisplayMessage", message(mid, f"m{mid}", priority,
                                                             **extra)))["status"] == "Accepted"

    async def report(request: dict) -> list[dict]:
        answer = await link.call("GetDisplayMessages", request)
        assert answer["status"] == "Accepted"
        parts = await csms.wait_for("NotifyDisplayMessages", station_id="CP1",
                                    predicate=lambda p: p["requestId"] == request["requestId"]
                                    and not p.get("tbc", False))
        return [p for p in csms.messages("CP1", "NotifyDisplayMessages")
                if p["requestId"] == request["requestId"]] if parts else []

    every = await report({"requestId": 10})
    assert [p.get("tbc", False) for p in every] == [True, True, False]
    assert [m["id"] for p in every for m in p["messageInfo"]] == [1, 2, 3, 4, 5]
    by_id = await report({"requestId": 11, "id": [4, 2, 99]})
    assert sorted(m["id"] for p in by_id for m in p["messageInfo"]) == [2, 4]
    in_front = await report({"requestId": 12, "priority": "InFront"})
    assert [m["id"] for p in in_front for m in p["messageInfo"]] == [2, 5]
    charging = await report({"requestId": 13, "state": "Charging", "priority": "NormalCycle"})
    assert [m["id"] for p in charging for m in p["messageInfo"]] == [3]
    assert every[0]["messageInfo"][0]["message"] == {"format": "UTF8", "content": "m1"}
    none = await link.call("GetDisplayMessages", {"requestId": 14, "priority": "AlwaysFront"})
    assert none["status"] == "Unknown"
    assert [p for p in csms.messages("CP1", "NotifyDisplayMessages")
            if p["requestId"] == 14] == []


async def test_O05_O06_clear_and_replace(rig201):
    csms, make = rig201
    agent = await make()
    link = await online201(agent, csms)
    await link.call("SetDisplayMessage", message(1, "Old text"))
    await shows(agent, "Old text")
    assert (await link.call("SetDisplayMessage", message(1, "New text")))["status"] == \
        "Accepted"
    await shows(agent, "New text")
    assert len(agent.display.board) == 1
    assert (await link.call("ClearDisplayMessage", {"id": 1}))["status"] == "Accepted"
    await shows(agent, "Available")
    assert (await link.call("ClearDisplayMessage", {"id": 1}))["status"] == "Unknown"


async def test_display_messages_survive_a_restart(short_dir):
    async with version_rig("2.0.1", short_dir) as (csms, make):
        agent = await make()
        link = await online201(agent, csms)
        await link.call("SetDisplayMessage", message(3, "Maintenance Monday", "InFront"))
        await link.call("SetDisplayMessage", message(4, "Free parking", "NormalCycle"))
        await agent.stop()
        assert screen(agent)[0] == "Out of service"
        again = await make()
        link = await online201(again, csms)
        await shows(again, "Maintenance Monday")
        assert (await link.call("GetDisplayMessages", {"requestId": 5}))["status"] == \
            "Accepted"
        part = await csms.wait_for("NotifyDisplayMessages", station_id="CP1",
                                   predicate=lambda p: p["requestId"] == 5)
        assert [m["id"] for m in part["messageInfo"]] == [3, 4]


# ====================================================================== I tariff and cost


async def test_I01_tariff_in_the_drivers_language(rig201):
    csms, make = rig201
    personal(csms, "0,39 EUR/kWh", language1="de")
    agent = await make()
    await online201(agent, csms)
    agent.hal.tap("TAG1")
    await shows(agent, "Freigegeben", "Kabel einstecken", "0,39 EUR/kWh")
    agent.hal.plug(1)
    await shows(agent, "Lädt")
    assert screen(agent)[2] == "0,39 EUR/kWh"


async def test_I02_running_cost_from_cost_updated_and_transaction_answers(rig201):
    csms, make = rig201
    total_on_end(csms, None, totalCost=0.5)  # the answers during the transaction carry one
    agent = await make()
    link = await online201(agent, csms)
    agent.hal.tap("TAG1")
    agent.hal.plug(1)
    await eventually(lambda: "Cost 0.50 EUR" in screen(agent), "the answer's running cost")
    tx = await tx_id(csms)
    csms.overrides.pop("TransactionEvent")
    assert await link.call("CostUpdated", {"totalCost": 2.675, "transactionId": tx}) == {}
    await eventually(lambda: "Cost 2.68 EUR" in screen(agent), "CostUpdated's total")
    assert agent.costs.of(tx).total == Decimal("2.675")
    # A cost for a transaction the station does not know is answered and dropped.
    assert await link.call("CostUpdated", {"totalCost": 9, "transactionId": "nope"}) == {}
    assert agent.costs.of("nope") is None


async def test_I03_final_cost_is_kept_across_a_restart(short_dir):
    async with version_rig("2.0.1", short_dir) as (csms, make):
        total_on_end(csms, 12.5)
        agent = await make()
        await online201(agent, csms)
        agent.hal.tap("TAG1")
        agent.hal.plug(1)
        await shows(agent, "Charging")
        tx = await tx_id(csms)
        agent.hal.tap("TAG1")
        await eventually(lambda: "Total 12.50 EUR" in screen(agent), "the final total")
        await agent.stop()
        again = await make()
        cost = again.costs.of(tx)
        assert cost is not None and cost.final and cost.total == Decimal("12.5")


async def test_I04_tariff_fallback_without_a_drivers_tariff(rig201):
    csms, make = rig201
    agent = await make()
    link = await online201(agent, csms)
    result = await link.call("SetVariables", {"setVariableData": [{
        "component": {"name": "TariffCostCtrlr"}, "variable": {"name": "TariffFallbackMessage"},
        "attributeValue": "0.45/kWh"}]})
    assert result["setVariableResult"][0]["attributeStatus"] == "Accepted"
    await shows(agent, "Available", "Present your card", "0.45/kWh")
    agent.hal.tap("TAG1")  # the CSMS's answer has no personalMessage
    await shows(agent, "Authorized", "Plug in the cable", "0.45/kWh")


async def test_I05_total_cost_fallback_when_no_final_cost_comes(short_dir):
    defaults = {"TariffCostCtrlr.TotalCostFallbackMessage": "See your app"}
    async with version_rig("2.0.1", short_dir, fake_clock=True,
                           defaults=defaults) as (csms, make):
        agent = await make()
        await online201(agent, csms)
        clock: FakeClock = agent.clock  # type: ignore[assignment]
        agent.hal.tap("TAG1")
        agent.hal.plug(1)
        await agent.station.quiet()
        await clock.advance(3)
        await shows(agent, "Charging")
        await csms.pause()  # offline at the end: the Ended event waits in the outbox
        agent.hal.tap("TAG1")
        await agent.station.quiet()
        await clock.advance(1)
        await eventually(lambda: "Total follows" in screen(agent), "waiting for the total")
        await clock.advance(20)
        await eventually(lambda: "See your app" in screen(agent), "the fallback text")
        await csms.resume()


async def test_I06_tariff_updated_during_the_transaction(rig201):
    csms, make = rig201
    personal(csms, "Day rate 0.39")
    agent = await make()
    await online201(agent, csms)
    agent.hal.tap("TAG1")
    await shows(agent, "Authorized", "Plug in the cable", "Day rate 0.39")
    total_on_end(csms, None, updatedPersonalMessage={"format": "ASCII",
                                                     "content": "Night rate 0.29"})
    agent.hal.plug(1)
    await eventually(lambda: screen(agent)[0] == "Charging"
                     and "Night rate 0.29" in screen(agent), "the updated tariff")


async def test_tariff_cost_variables(rig201):
    csms, make = rig201
    agent = await make()
    link = await online201(agent, csms)

    def setting(name: str, value: str, instance: str | None = None) -> dict:
        variable = {"name": name, **({"instance": instance} if instance else {})}
        return {"component": {"name": "TariffCostCtrlr"}, "variable": variable,
                "attributeValue": value}

    result = await link.call("SetVariables", {"setVariableData": [
        setting("Currency", "euro"), setting("Currency", "CHF"),
        setting("Enabled", "false", "Cost")]})
    assert [r["attributeStatus"] for r in result["setVariableResult"]] == \
        ["Rejected", "Accepted", "Accepted"]
    assert agent.costs.currency == "CHF" and not agent.costs.cost_enabled
    got = await link.call("GetVariables", {"getVariableData": [
        {"component": {"name": "TariffCostCtrlr"}, "variable": v} for v in
        ({"name": "Available", "instance": "Tariff"}, {"name": "Enabled"},
         {"name": "Currency"})]})
    assert [r["attributeValue"] for r in got["getVariableResult"]] == ["true", "true", "CHF"]


# ====================================================================== amounts


@pytest.mark.parametrize("value, currency, text", [
    (3.31, "EUR", "3.31 EUR"), (0.1 + 0.2, "EUR", "0.30 EUR"), (2.675, "EUR", "2.68 EUR"),
    (1234, "JPY", "1234 JPY"), (1.2345, "KWD", "1.235 KWD"), (1e-9, "EUR", "0.00 EUR"),
    ("12.5", "USD", "12.50 USD"), (-0.001, "EUR", "0.00 EUR"),
])
def test_amounts_are_decimals_without_float_noise(value, currency, text):
    assert format_amount(to_decimal(value), currency) == text


@pytest.mark.parametrize("value", [float("nan"), float("inf"), True, "ten", None, [1]])
def test_what_is_no_amount_is_refused(value):
    with pytest.raises(CostError):
        to_decimal(value)


async def test_no_cost_lines_on_16(short_dir):
    """1.6 has no cost messages: the finished page never waits for a total."""
    async with version_rig("1.6", short_dir) as (csms, make):
        agent = await make()
        await online(agent, csms)
        agent.hal.tap("TAG1")
        agent.hal.plug(1)
        await shows(agent, "Charging")
        agent.hal.tap("TAG1")
        await shows(agent, "Finished")
        assert not any("Total" in line for line in screen(agent))
        assert not agent.costs.cost_enabled


# ====================================================================== 2.1


async def test_21_message_extra_format_state_and_clear(short_dir, monkeypatch):
    """2.1 MessageInfo: messageExtra (the station's language is shown and the extras are
    reported back), QRCODE and the new states refused as the display cannot do them, and
    ClearDisplayMessage Rejected for a message that could not be removed."""
    from agent.storage import StorageError

    async with version_rig("2.1", short_dir,
                           defaults={"DisplayMessageCtrlr.Language": "de"}) as (csms, make):
        agent = await make()
        link = await online201(agent, csms)
        request = message(7, "Welcome", "AlwaysFront")
        request["message"]["message"]["language"] = "en"
        request["message"]["messageExtra"] = [
            {"format": "UTF8", "language": "de", "content": "Willkommen"},
            {"format": "UTF8", "language": "fr", "content": "Bienvenue"}]
        assert (await link.call("SetDisplayMessage", request))["status"] == "Accepted"
        await shows(agent, "Willkommen")
        assert (await link.call("GetDisplayMessages", {"requestId": 3}))["status"] == \
            "Accepted"
        told = await csms.wait_for("NotifyDisplayMessages", station_id="CP1")
        assert [x["content"] for x in told["messageInfo"][0]["messageExtra"]] == [
            "Willkommen", "Bienvenue"]
        qr = message(8, "https://pay.example/qr", format="QRCODE")
        assert (await link.call("SetDisplayMessage", qr))["status"] == \
            "NotSupportedMessageFormat"
        suspended = message(9, "Paused", state="Suspended")
        assert (await link.call("SetDisplayMessage", suspended))["status"] == \
            "NotSupportedState"

        def broken(ids: Any) -> None:
            raise StorageError("disk full")

        monkeypatch.setattr(agent.storage, "display_message_delete", broken)
        cleared = await link.call("ClearDisplayMessage", {"id": 7})
        assert cleared["status"] == "Rejected"
        assert cleared["statusInfo"]["reasonCode"] == "InternalError"


def test_a_message_set_over_21_is_reported_the_201_way():
    info = {"id": 1, "priority": "InFront",
            "message": {"format": "UTF8", "content": "x" * 1024},
            "messageExtra": [{"format": "UTF8", "content": "y"}]}
    out = display_block.DisplayMessages.reported(None, info)  # type: ignore[arg-type]
    assert "messageExtra" not in out and len(out["message"]["content"]) == 512
    assert len(info["message"]["content"]) == 1024, "the stored message is left as it was"


async def test_21_updated_personal_message_in_the_drivers_language(short_dir):
    async with version_rig("2.1", short_dir) as (csms, make):
        personal(csms, "Day rate 0.39", language1="de")
        agent = await make()
        await online201(agent, csms)
        agent.hal.tap("TAG1")
        await shows(agent, "Freigegeben", "Kabel einstecken", "Day rate 0.39")
        total_on_end(csms, None, updatedPersonalMessage={
            "format": "UTF8", "language": "en", "content": "Night rate 0.29"},
            updatedPersonalMessageExtra=[
                {"format": "UTF8", "language": "de", "content": "Nachttarif 0,29"}])
        agent.hal.plug(1)
        await eventually(lambda: screen(agent)[0] == "Lädt"
                         and "Nachttarif 0,29" in screen(agent), "the German tariff text")
