"""OCPP 2.1 E17 with a real process: SIGKILL mid-session, restart, the transaction goes on.

``cp-agent run`` on 2.1 (TxCtrlr.ResumptionTimeout 300) with the mock HAL's world file, so the
EV stays plugged and the meter keeps its register across the kill, as real ones do when the
controller dies. The agent charges, is SIGKILLed, starts again on the same state file: the
CSMS must see the same transaction continue (TxResumed), energy flow again, and one Ended when
the EV leaves; seqNo gap-free from 0, and an energy total between what was seen and what full
power over the session's duration could give. The rig is tests/soak/power_cuts.py's.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

from tests.conftest import strict_csms
from tests.soak.power_cuts import FULL_POWER_W, JITTER_S, PERSIST_S, STATION, Daemon

TAG = "RESUME01"


def _config(directory: Path, url: str) -> Path:
    cfg = directory / "config.yaml"
    cfg.write_text(json.dumps({
        "station": {"id": STATION},
        "ocpp": {"url": url, "versions": ["2.1"], "call_timeout_s": 3,
                 "reconnect": {"min_backoff_s": 0.05, "max_backoff_s": 0.3},
                 "defaults": {"TxCtrlr.ResumptionTimeout": 300,
                              "TransactionMessageRetryInterval": 1}},
        "storage": {"path": str(directory / "state.sqlite3"), "meter_persist_s": PERSIST_S},
        "control": {"socket": str(directory / "ctl.sock")},
        "evses": [{"id": 1}],
        "hal": {"driver": "mock", "ev_max_current_a": 16,
                "world_file": str(directory / "world.json")},
        "log": {"level": "info"},
    }))
    return cfg


async def _energy_at_least(d: Daemon, wh: float, timeout: float = 30.0) -> dict:
    """Poll the control socket until the session's energy reaches ``wh``; the EVSE's status."""
    async with asyncio.timeout(timeout):
        while True:
            evse = (await d.ctl("status"))["evses"][0]
            if evse["energy_wh"] is not None and evse["energy_wh"] >= wh:
                return evse
            await asyncio.sleep(0.05)


def _register(event: dict, context: str) -> float:
    return next(float(sv["value"]) for mv in event["meterValue"] for sv in mv["sampledValue"]
                if sv.get("context") == context
                and sv.get("measurand") == "Energy.Active.Import.Register")


async def test_sigkill_mid_session_on_21_the_transaction_resumes_once_and_ends_once(short_dir):
    async with strict_csms(("2.1",)) as csms:
        d = Daemon(short_dir, _config(short_dir, csms.url))
        try:
            await d.start(timeout=30)
            # Tap once the station is accepted: a card presented before the boot answer is
            # judged offline (Unknown), as on a real station.
            await csms.wait_for("StatusNotification", station_id=STATION, timeout=15)
            await d.ctl("plug", evse=1)
            await d.ctl("tap", token=TAG, evse=1)
            started = await csms.wait_for(
                "TransactionEvent", station_id=STATION, timeout=15,
                predicate=lambda p: p["eventType"] == "Started")
            t_start = time.monotonic()
            tx_id = started["transactionInfo"]["transactionId"]
            before = await _energy_at_least(d, 3.0)  # ~1 s at 11 kW: the journal has it too
            d.kill()
            assert await d.wait_exit() == -signal.SIGKILL
            await d.start(timeout=30)
            resumed = await csms.wait_for(
                "TransactionEvent", station_id=STATION, timeout=30,
                predicate=lambda p: p["triggerReason"] == "TxResumed")
            after = await _energy_at_least(d, before["energy_wh"] + 3.0)  # energy flows again
            assert after["local_transaction_id"] == tx_id
            await d.ctl("unplug", evse=1)
            ended = await csms.wait_for(
                "TransactionEvent", station_id=STATION, timeout=15,
                predicate=lambda p: p["eventType"] == "Ended")
            t_end = time.monotonic()
            assert d.proc is not None
            d.proc.send_signal(signal.SIGTERM)
            assert await d.wait_exit() == 0
        except BaseException:
            print(d.logs())
            raise
        finally:
            await d.close()
    events = [p for p in csms.messages(STATION, "TransactionEvent")
              if p["transactionInfo"]["transactionId"] == tx_id]
    assert {p["transactionInfo"]["transactionId"] for p in
            csms.messages(STATION, "TransactionEvent")} == {tx_id}, "one transaction"
    # A message the CSMS processed just before the kill may come again, identical.
    by_seq: dict[int, Any] = {}
    for p in events:
        assert by_seq.setdefault(p["seqNo"], p) == p, f"seqNo {p['seqNo']} reused"
    assert sorted(by_seq) == list(range(len(by_seq))), "seqNo gap-free from 0"
    kinds = [p["eventType"] for p in by_seq.values()]
    assert kinds.count("Started") == 1 and kinds.count("Ended") == 1
    assert [p["triggerReason"] for p in by_seq.values()].count("TxResumed") == 1
    assert resumed["transactionInfo"]["chargingState"] in ("Charging", "SuspendedEV")
    assert ended["transactionInfo"]["stoppedReason"] == "EVDisconnected"
    # Energy: the meter's register before and after the cut, and a plausible total.
    assert _register(resumed, "Interruption.End") >= _register(resumed, "Interruption.Begin")
    rounding = 0.051  # the control socket rounds to 0.1 Wh
    assert _register(resumed, "Interruption.End") >= before["meter_wh"] - rounding
    total = _register(ended, "Transaction.End") - _register(started, "Transaction.Begin")
    assert total >= after["energy_wh"] - rounding, "at least what was seen delivered"
    assert total <= FULL_POWER_W * (t_end - t_start + JITTER_S) / 3600.0, "at most full power"
