"""The benchmark scripts still run: each in quick mode, through the runner, as a user would.

Nothing here looks at a time or a size: a figure only has to be there, be a number and come
with the machine it was measured on.  What a quick run can check for sure is the bookkeeping
the scripts do themselves (every queued message delivered, every station booted), which they
turn into a non-zero exit when it fails.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# bench -> figures it must print (prefixes of the figure names)
EXPECTED = {
    "startup": ["start -> BootNotification accepted, median", "SIGTERM -> exit, median"],
    "footprint": ["peak RSS (VmHWM), idle connected agent", "CPU over",
                  "import profile: bare interpreter"],
    "latency": ["tap -> contactor closed, local-list hit p99",
                "tap -> contactor closed, online Authorize p99",
                "RemoteStart -> contactor closed p99", "unplug -> contactor open p99"],
    "outbox_replay": ["CSMS back -> 80 transaction messages acknowledged",
                      "transaction messages the CSMS received"],
    "swarm": ["20 stations connected and booted", "steady-state CPU of the swarm process",
              "resident memory per station"],
    "composite": ["composite 24 h, 100 profiles (station mix), median"],
    "floor": [f"OCPP {v} {what}" for v in ("1.6", "2.0.1", "2.1") for what in (
        "start-up ratio agent / floor", "CPU to boot ratio agent / floor",
        "idle VmHWM ratio agent / floor")],
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_benchmark_runs_in_quick_mode_and_prints_its_figures(name, tmp_path):
    results = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--results", str(results), name],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "machine: " in proc.stdout
    (doc,) = json.loads(results.read_text())
    assert doc["bench"] == name and doc["quick"] is True
    assert doc["machine"]["cores"] >= 1 and doc["machine"]["python"]
    figures = {f["name"]: f for f in doc["figures"]}
    for prefix in EXPECTED[name]:
        matching = [f for n, f in figures.items() if n.startswith(prefix)]
        assert matching, f"{name} did not print {prefix!r}; it printed {sorted(figures)}"
        for f in matching:
            assert isinstance(f["value"], int | float), f
            assert f["name"] in proc.stdout  # the human-readable table has it too
    # A target the issue sets is compared, whatever the outcome on this machine.
    assert all(f["reached"] in (True, False) for f in doc["figures"] if f["target"])


def test_runner_refuses_an_unknown_benchmark():
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "nope"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "unknown benchmark(s) nope" in proc.stderr
