"""2.1 local cost calculation (block I, I07-I12) against the strict 2.1 test CSMS: every
tariff message with each answer status, a session priced by the station (driver tariff,
running cost, the Ended event's costDetails, the display), and tariffs kept across a
restart. The pricing arithmetic itself is tests/test_tariffs.py."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

from agent.clock import FakeClock
from agent.core.tariffs import round_amount
from tests.conftest import online201, tx_events, version_rig

ENERGY = {"tariffId": "E25", "currency": "EUR", "energy": {"prices": [{"priceKwh": 0.25}]}}


def tariff(tariff_id: str, **more: Any) -> dict:
    return {"tariffId": tariff_id, "currency": "EUR",
            "energy": {"prices": [{"priceKwh": 0.25}]}, **more}


async def test_I07_set_default_tariff_answers(short_dir):
    async with version_rig("2.1", short_dir, evses=2) as (csms, make):
        agent = await make()
        link = await online201(agent, csms)

        async def status(evse: int, body: dict) -> tuple[str, str | None]:
            res = await link.call("SetDefaultTariff", {"evseId": evse, "tariff": body})
            return res["status"], res.get("statusInfo", {}).get("reasonCode")

        assert await status(0, ENERGY) == ("Accepted", None)
        assert await status(1, ENERGY) == ("Accepted", None), "the same tariff again"
        assert await status(2, {**ENERGY, "energy": {"prices": [{"priceKwh": 0.3}]}}) == (
            "DuplicateTariffId", "DuplicateTariffId")
        many = {"prices": [{"priceMinute": 0.01}] * 17}
        assert await status(1, tariff("MANY", chargingTime=many)) == (
            "TooManyElements", "InvalidTariff")
        assert await status(3, tariff("T3")) == ("Rejected", "UnknownEvse")
        bad = tariff("BAD", energy={"prices": [{"priceKwh": 0.3, "conditions": {
            "startTimeOfDay": "25:00"}}]})
        res = await link.call("SetDefaultTariff", {"evseId": 1, "tariff": bad})
        assert res["status"] == "Rejected"
        assert "startTimeOfDay '25:00'" in res["statusInfo"]["additionalInfo"]
        assert await status(1, tariff("EUR2", currency="eur")) == ("Rejected", "InvalidTariff")
        res = await link.call("SetVariables", {"setVariableData": [{
            "component": {"name": "TariffCostCtrlr"},
            "variable": {"name": "Enabled", "instance": "Tariff"}, "attributeValue": "false"}]})
        assert res["setVariableResult"][0]["attributeStatus"] == "Accepted"
        assert await status(1, tariff("OFF")) == ("Rejected", "Disabled")
        assert (await link.call("GetTariffs", {"evseId": 0}))["status"] == "Rejected"


async def test_I09_I10_get_and_clear_tariffs(short_dir):
    async with version_rig("2.1", short_dir, evses=2) as (csms, make):
        agent = await make()
        link = await online201(agent, csms)
        assert await link.call("GetTariffs", {"evseId": 0}) == {"status": "NoTariff"}
        assert (await link.call("ClearTariffs", {})) == {
            "clearTariffsResult": [{"status": "NoTariff"}]}
        await link.call("SetDefaultTariff", {"evseId": 0, "tariff": tariff("ALL")})
        later = "2099-01-01T00:00:00Z"
        await link.call("SetDefaultTariff", {"evseId": 2, "tariff": tariff("NEXT",
                                                                           validFrom=later)})
        got = await link.call("GetTariffs", {"evseId": 0})
        assert got["status"] == "Accepted"
        assert sorted(got["tariffAssignments"], key=lambda a: a["tariffId"]) == [
            {"tariffId": "ALL", "tariffKind": "DefaultTariff", "evseIds": [1, 2]},
            {"tariffId": "NEXT", "tariffKind": "DefaultTariff", "evseIds": [2],
             "validFrom": "2099-01-01T00:00:00.000Z"}]
        got = await link.call("GetTariffs", {"evseId": 1})
        assert got["tariffAssignments"] == [
            {"tariffId": "ALL", "tariffKind": "DefaultTariff", "evseIds": [1]}]
        assert (await link.call("GetTariffs", {"evseId": 7}))["status"] == "Rejected"
        # by id at one EVSE, an id not installed there, then everything left
        res = await link.call("ClearTariffs", {"tariffIds": ["ALL", "NEXT"], "evseId": 1})
        assert res["clearTariffsResult"] == [{"tariffId": "ALL", "status": "Accepted"},
                                             {"tariffId": "NEXT", "status": "NoTariff"}]
        got = await link.call("GetTariffs", {"evseId": 1})
        assert got == {"status": "NoTariff"}
        res = await link.call("ClearTariffs", {})
        assert sorted(r["tariffId"] for r in res["clearTariffsResult"]) == ["ALL", "NEXT"]
        assert await link.call("GetTariffs", {"evseId": 0}) == {"status": "NoTariff"}


def _driver_tariff() -> dict:
    # 0.30/kWh, idle fee 0.10/min after 2 minutes of idle time, start fee 1.00, VAT 20 %
    vat = [{"type": "VAT", "tax": 20}]
    return {"tariffId": "DRIVER-1", "currency": "EUR",
            "description": [{"format": "UTF8", "content": "0.30/kWh + idle fee"}],
            "energy": {"prices": [{"priceKwh": 0.30}], "taxRates": vat},
            "idleTime": {"prices": [{"priceMinute": 0.10, "conditions": {"minIdleTime": 120}}],
                         "taxRates": vat},
            "fixedFee": {"prices": [{"priceFixed": 1.0}], "taxRates": vat}}


async def _fake_agent(csms: Any, make: Any) -> Any:
    """An agent on the fake clock whose CSMS tells the same time (a Heartbeat answer would
    otherwise set the station's clock back to the real time in the middle of a session)."""
    agent = await make()
    csms.now = agent.clock.now
    return agent


async def _advance(clock: Any, seconds: int, step: float = 5.0) -> None:
    for _ in range(int(seconds / step)):
        await clock.advance(step)


async def test_I08_I12_a_session_priced_by_the_station(short_dir):
    """The driver's tariff from the AuthorizeResponse prices the session: every event names
    it, RunningCost events carry the cost so far (never less than before), the Ended event the
    final costDetails (a period for charging, one when the idle fee starts), the display the
    total; GetTariffs lists it as the driver's while it runs; ChangeTransactionTariff in
    another currency is NoCurrencyChange, for an unknown transaction TxNotFound."""
    async with version_rig("2.1", short_dir, fake_clock=True) as (csms, make):
        csms.overrides["Authorize"] = lambda lnk, p: {
            "idTokenInfo": {"status": "Accepted"}, "tariff": _driver_tariff()}
        agent = await _fake_agent(csms, make)
        link = await online201(agent, csms)
        clock = agent.clock
        await link.call("SetDefaultTariff", {"evseId": 0, "tariff": ENERGY})
        agent.hal.tap("TAG1")
        agent.hal.plug(1)
        started = await csms.wait_for("TransactionEvent",
                                      predicate=lambda p: p["eventType"] == "Started")
        tx = started["transactionInfo"]["transactionId"]
        assert started["transactionInfo"]["tariffId"] == "DRIVER-1"
        got = await link.call("GetTariffs", {"evseId": 1})
        assert {"tariffId": "DRIVER-1", "tariffKind": "DriverTariff", "evseIds": [1],
                "idTokens": ["TAG1"]} in got["tariffAssignments"]
        await _advance(clock, 600)  # 10 minutes charging
        agent.hal.set_ev_state(1, "B")  # the EV is full: idle
        await agent.station.quiet()
        await _advance(clock, 300)  # 5 minutes idle: the fee runs for the last 3
        res = await link.call("ChangeTransactionTariff", {
            "transactionId": tx, "tariff": {**ENERGY, "tariffId": "CHF", "currency": "CHF"}})
        assert res["status"] == "NoCurrencyChange"
        res = await link.call("ChangeTransactionTariff", {"transactionId": "nope",
                                                          "tariff": ENERGY})
        assert res["status"] == "TxNotFound"
        agent.hal.unplug(1)
        ended = await csms.wait_for("TransactionEvent",
                                    predicate=lambda p: p["eventType"] == "Ended")
        await asyncio.wait_for(agent.adapters["2.1"].outbox.idle.wait(), 5)
        events = tx_events(csms)
        assert all(e["transactionInfo"].get("tariffId") == "DRIVER-1" for e in events)
        running = [e["costDetails"]["totalCost"]["total"]["inclTax"]
                   for e in events if e["triggerReason"] == "RunningCost"]
        assert len(running) >= 10 and running == sorted(running), running
        details = ended["costDetails"]
        usage, total = details["totalUsage"], details["totalCost"]
        energy = Decimal(str(usage["energy"]))
        assert energy > 1000 and usage["idleTime"] >= 300
        expected_energy = round_amount(energy * Decimal("0.30") / 1000, "EUR")
        idle_fee = round_amount((Decimal(usage["idleTime"]) - 120) / 60 * Decimal("0.10"),
                                "EUR")
        assert Decimal(str(total["energy"]["exclTax"])) == expected_energy
        assert Decimal(str(total["idleTime"]["exclTax"])) == idle_fee
        assert total["fixed"] == {"exclTax": 1, "inclTax": 1.2,
                                  "taxRates": [{"type": "VAT", "tax": 20}]}
        excl = Decimal(1) + expected_energy + idle_fee
        assert Decimal(str(total["total"]["exclTax"])) == excl
        assert total["typeOfCost"] == "NormalCost" and total["currency"] == "EUR"
        periods = details["chargingPeriods"]
        assert [p["tariffId"] for p in periods] == ["DRIVER-1", "DRIVER-1"]
        idle_dims = {d["type"]: d["volume"] for d in periods[1]["dimensions"]}
        assert idle_dims["IdleTIme"] == usage["idleTime"] - 120
        shown = agent.costs.of(tx)
        assert shown is not None and shown.final
        assert shown.tariff is not None and shown.tariff.text == "0.30/kWh + idle fee"
        assert shown.total == Decimal(str(total["total"]["inclTax"]))
        assert agent.storage.tx_tariffs_all() == [], "forgotten with its last event"


async def test_I08_a_drivers_tariff_the_station_cannot_use(short_dir):
    """HandleFailedTariff[Tariff]: UseDefaultTariff prices the session with the default,
    CentralCost leaves its cost to the CSMS (no tariffId, no costDetails)."""
    async with version_rig("2.1", short_dir) as (csms, make):
        csms.overrides["Authorize"] = lambda lnk, p: {
            "idTokenInfo": {"status": "Accepted"},
            "tariff": {**ENERGY, "tariffId": "BROKEN", "currency": "eu"}}
        agent = await make()
        link = await online201(agent, csms)
        await link.call("SetDefaultTariff", {"evseId": 1, "tariff": ENERGY})
        for how, expected in (("UseDefaultTariff", "E25"), ("CentralCost", None)):
            res = await link.call("SetVariables", {"setVariableData": [{
                "component": {"name": "TariffCostCtrlr"},
                "variable": {"name": "HandleFailedTariff", "instance": "Tariff"},
                "attributeValue": how}]})
            assert res["setVariableResult"][0]["attributeStatus"] == "Accepted"
            csms.log.clear()
            agent.hal.tap("TAG1")
            agent.hal.plug(1)
            await csms.wait_for("TransactionEvent",
                                predicate=lambda p: p["eventType"] == "Started")
            agent.hal.unplug(1)
            ended = await csms.wait_for("TransactionEvent",
                                        predicate=lambda p: p["eventType"] == "Ended")
            assert ended["transactionInfo"].get("tariffId") == expected, how
            assert ("costDetails" in ended) is (expected is not None), how
            await asyncio.wait_for(agent.adapters["2.1"].outbox.idle.wait(), 5)
        res = await link.call("SetVariables", {"setVariableData": [{
            "component": {"name": "TariffCostCtrlr"},
            "variable": {"name": "HandleFailedTariff", "instance": "Tariff"},
            "attributeValue": "Deauthorize"}]})
        assert res["setVariableResult"][0]["attributeStatus"] == "Rejected"


async def test_I11_change_transaction_tariff_starts_a_period(short_dir):
    async with version_rig("2.1", short_dir, fake_clock=True) as (csms, make):
        agent = await _fake_agent(csms, make)
        link = await online201(agent, csms)
        clock = agent.clock
        agent.hal.tap("TAG1")
        agent.hal.plug(1)
        started = await csms.wait_for("TransactionEvent",
                                      predicate=lambda p: p["eventType"] == "Started")
        tx = started["transactionInfo"]["transactionId"]
        assert "tariffId" not in started["transactionInfo"], "no tariff: central cost"
        res = await link.call("ChangeTransactionTariff", {"transactionId": tx,
                                                          "tariff": ENERGY})
        assert res["status"] == "Rejected" and res["statusInfo"]["reasonCode"] == "CentralCost"
        agent.hal.unplug(1)
        await csms.wait_for("TransactionEvent", predicate=lambda p: p["eventType"] == "Ended")
        assert "costDetails" not in tx_events(csms, eventType="Ended")[0]

        await link.call("SetDefaultTariff", {"evseId": 1, "tariff": ENERGY})
        agent.hal.tap("TAG1")
        agent.hal.plug(1)
        second = await csms.wait_for("TransactionEvent", predicate=lambda p: p[
            "eventType"] == "Started" and p["transactionInfo"]["transactionId"] != tx)
        tx2 = second["transactionInfo"]["transactionId"]
        assert second["transactionInfo"]["tariffId"] == "E25"
        await _advance(clock, 120)
        night = tariff("NIGHT", energy={"prices": [{"priceKwh": 0.10}]})
        res = await link.call("ChangeTransactionTariff", {"transactionId": tx2,
                                                          "tariff": night})
        assert res == {"status": "Accepted"}
        changed = await csms.wait_for("TransactionEvent",
                                      predicate=lambda p: p["triggerReason"] == "TariffChanged")
        assert changed["transactionInfo"]["tariffId"] == "NIGHT"
        assert [p["tariffId"] for p in changed["costDetails"]["chargingPeriods"]] == ["E25",
                                                                                     "NIGHT"]
        bad = tariff("BAD2", chargingTime={"prices": [{"priceMinute": 0.1}] * 20})
        res = await link.call("ChangeTransactionTariff", {"transactionId": tx2, "tariff": bad})
        assert res["status"] == "TooManyElements"
        await _advance(clock, 60)
        agent.hal.unplug(1)
        ended = await csms.wait_for("TransactionEvent", predicate=lambda p: p[
            "eventType"] == "Ended" and p["transactionInfo"]["transactionId"] == tx2)
        periods = ended["costDetails"]["chargingPeriods"]
        assert [p["tariffId"] for p in periods] == ["E25", "NIGHT"]
        energy = [Decimal(str(next(d["volume"] for d in p["dimensions"]
                                   if d["type"] == "Energy"))) for p in periods]
        expected = round_amount(energy[0] * Decimal("0.25") / 1000, "EUR") + \
            round_amount(energy[1] * Decimal("0.10") / 1000, "EUR")
        got = Decimal(str(ended["costDetails"]["totalCost"]["energy"]["exclTax"]))
        assert abs(got - expected) <= Decimal("0.01")  # one rounding for the dimension


async def _crash(agent: Any) -> None:
    """What kill -9 leaves behind, in-process: nothing ended, nothing flushed, file closed."""
    agent._stopped = True  # the rig's stop() must not end the transactions either
    for task in agent._tasks:
        task.cancel()
    await asyncio.gather(*agent._tasks, return_exceptions=True)
    for adapter in agent.adapters.values():
        await adapter.stop()
    for evse in agent.station.evses.values():
        evse.close()
    for task in list(agent.station._tasks):
        task.cancel()
    await asyncio.gather(*agent.station._tasks, return_exceptions=True)
    if agent.control is not None:
        await agent.control.stop()
    agent.storage.close()


async def test_tariffs_and_a_priced_transaction_survive_a_restart(short_dir):
    """A power cut in a priced session: after the restart the default tariff is still
    installed, and the transaction (ended as PowerLoss) is priced from the kept samples: its
    cost is at least what was reported before the cut, its period starts at its start."""
    async with version_rig("2.1", short_dir, fake_clock=True) as (csms, make):
        agent = await _fake_agent(csms, make)
        link = await online201(agent, csms)
        await link.call("SetDefaultTariff", {"evseId": 1, "tariff": tariff(
            "E25T", chargingTime={"prices": [{"priceMinute": 0.05}]})})
        agent.hal.tap("TAG1")
        agent.hal.plug(1)
        started = await csms.wait_for("TransactionEvent",
                                      predicate=lambda p: p["eventType"] == "Started")
        tx = started["transactionInfo"]["transactionId"]
        await _advance(agent.clock, 130)
        await asyncio.wait_for(agent.adapters["2.1"].outbox.idle.wait(), 5)
        running = tx_events(csms, triggerReason="RunningCost")
        assert len(running) == 2
        before = running[-1]["costDetails"]["totalCost"]["total"]["exclTax"]
        wall = agent.clock.wall()
        await _crash(agent)
        again = await make(clock=FakeClock(start_wall=wall + 5))
        csms.now = again.clock.now
        link = await online201(again, csms)
        ended = await csms.wait_for("TransactionEvent", predicate=lambda p: p[
            "eventType"] == "Ended" and p["transactionInfo"]["transactionId"] == tx)
        assert ended["transactionInfo"]["stoppedReason"] == "PowerLoss"
        assert ended["transactionInfo"]["tariffId"] == "E25T"
        details = ended["costDetails"]
        assert details["totalCost"]["total"]["exclTax"] >= before > 0
        assert details["chargingPeriods"][0]["startPeriod"] == started["timestamp"]
        got = await link.call("GetTariffs", {"evseId": 1})
        assert got["tariffAssignments"] == [
            {"tariffId": "E25T", "tariffKind": "DefaultTariff", "evseIds": [1]}]
        await asyncio.wait_for(again.adapters["2.1"].outbox.idle.wait(), 5)
        assert again.storage.tx_tariffs_all() == []
