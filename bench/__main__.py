"""Run the benchmarks one after another: ``python -m bench [--quick] [NAME ...]``.

Each runs in a process of its own (a swarm's 2,000 agents must not weigh on the start-up or
latency figures that follow).  Output is passed through; ``--results FILE`` also collects the
``RESULT`` lines into one JSON document, the source of the tables in docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

BENCHES = ("startup", "footprint", "floor", "latency", "outbox_replay", "swarm",
           "composite")
REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("names", nargs="*", metavar="NAME",
                   help=f"benchmarks to run (default all: {', '.join(BENCHES)})")
    p.add_argument("--quick", action="store_true",
                   help="small counts and short windows: checks the scripts, not the agent")
    p.add_argument("--results", metavar="FILE", help="write every RESULT as one JSON list")
    ns = p.parse_args(argv)
    unknown = [n for n in ns.names if n not in BENCHES]
    if unknown:
        p.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHES)}")
    results = []
    failed = []
    for name in ns.names or BENCHES:
        cmd = [sys.executable, "-m", f"bench.{name}"] + (["--quick"] if ns.quick else [])
        print(f"$ {' '.join(cmd[1:])}", flush=True)
        proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
        sys.stdout.write(proc.stdout)
        sys.stdout.flush()
        if proc.returncode != 0:
            failed.append(name)
        results += [json.loads(line[len("RESULT "):]) for line in proc.stdout.splitlines()
                    if line.startswith("RESULT ")]
    if ns.results:
        Path(ns.results).write_text(json.dumps(results, indent=1) + "\n")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
