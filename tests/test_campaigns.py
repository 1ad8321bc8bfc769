"""The reliability campaigns (tests/soak/, issue 18) still run: each in quick mode, as a user
would run it, so that none can rot.

A campaign exits non-zero when a promise broke (a session lost or doubled, a crash, a CALL not
answered per spec, the contactor closing without authorization, the journal not pruned, a task
or descriptor leak); here each must exit 0 and print its figures with the machine.  Nothing
looks at a time or a size: the figures are for docs/durability.md, not for assertions.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# campaign -> figures it must print (prefixes of the figure names)
EXPECTED = {
    "power_cuts": ["SIGKILLs", "sessions lost", "sessions duplicated",
                   "worst meterStop lag behind the last reading seen",
                   "state files passing PRAGMA integrity_check"],
    "hostile_frames": ["frames sent", "answers: CALLRESULT", "crashes",
                       "CALLs not answered per spec", "contactor closes",
                       "objects freed only by the cycle collector",
                       "peak RSS (whole campaign process)"],
    "long_outage": ["1.6: transaction messages queued", "1.6: lost",
                    "2.0.1: delivered after reconnection",
                    "1.6 disk full: items queued once SQLite said full",
                    "2.0.1 disk full: Faulted statuses at the CSMS"],
    "soak": ["1.6: RSS after warm-up -> end", "2.0.1: journal / outbox / dropped rows",
             "1.6: asyncio tasks after warm-up -> end",
             "2.0.1: open file descriptors after warm-up -> end"],
    "hardware_faults": ["fault scenarios played", "scenarios with a problem",
                        "contactor closes while faulted",
                        "recovered (same session or a new one charges)"],
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_campaign_runs_in_quick_mode_keeps_its_promises_and_prints_its_figures(name):
    proc = subprocess.run([sys.executable, "-m", f"tests.soak.{name}", "--quick"], cwd=REPO,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "machine: " in proc.stdout
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    doc = json.loads(line[len("RESULT "):])
    assert doc["bench"] == name and doc["quick"] is True
    names = [f["name"] for f in doc["figures"]]
    for prefix in EXPECTED[name]:
        matching = [f for f in doc["figures"] if f["name"].startswith(prefix)]
        assert matching, f"{name} did not print {prefix!r}; it printed {names}"
        for f in matching:
            assert isinstance(f["value"], int | float), f
            assert f["name"] in proc.stdout


def test_power_cut_checker_catches_a_lost_and_a_doubled_session(tmp_path):
    """The campaign's verdict is not vacuous: a session journalled but never at the CSMS is
    lost, the same session as two transactions is doubled."""
    from agent.testing.csms import TestCsms
    from tests.soak.power_cuts import Campaign, Session

    c = Campaign("1.6", tmp_path, 0, 1)
    c.csms = TestCsms(versions=("1.6",))
    c.model.sessions["S1"] = Session("S1", 1, seen=True)
    c.model.sessions["S2"] = Session("S2", 2, seen=True)
    start = {"connectorId": 2, "idTag": "S2", "meterStart": 0,
             "timestamp": "2030-01-01T00:00:00Z"}
    stop = {"transactionId": 1, "meterStop": 5, "timestamp": "2030-01-01T00:01:00Z",
            "reason": "EVDisconnected"}
    c.csms.transactions = {1: {"start": start, "stop": stop, "meter_values": []},
                           2: {"start": {**start, "timestamp": "2030-01-01T00:00:01Z"},
                               "stop": {**stop, "transactionId": 2}, "meter_values": []}}
    out = c.check()
    assert out.lost == 1 and out.duplicated == 1, out.problems
