"""Replay speed: `divertor replay` on the scenario captures, records/s (one core).

Usage: taskset -c 1 .venv/bin/python bench/replay_speed.py [--repeat N]
Prints one line per scenario and the conditions. Decode, rates, verdicts (every 1 s of event
time), incidents and the dry-run planner all run; the figure is records / wall seconds.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from divertor.replay_cmd import replay  # noqa: E402

SCENARIOS = ROOT.parent / "shared" / "testdata" / "scenarios"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    print(f"# replay speed, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(
        f"# cpu {cpu_model()}, affinity {sorted(os.sched_getaffinity(0))}, "
        f"python {platform.python_version()}, numpy {np.__version__}, "
        f"load {os.getloadavg()[0]:.2f}"
    )
    print(
        "| scenario | records | datagrams | best wall s | records/s | event time s | x real time |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in sorted(p.name for p in SCENARIOS.iterdir() if p.is_dir()):
        cfg = ROOT / "examples" / "scenarios" / name / "divertor.yaml"
        best = float("inf")
        records = datagrams = 0
        span = 0.0
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            _, pipe = replay(str(SCENARIOS / name / "flows.pcap"), str(cfg))
            best = min(best, time.perf_counter() - t0)
            records = pipe.records
            st = pipe.decoder.stats.totals()
            datagrams = st.datagrams
            span = (pipe.next_eval or 0.0) - pipe.first_arrival
        print(
            f"| {name} | {records} | {datagrams} | {best:.2f} | {records / best:,.0f} | "
            f"{span:.0f} | {span / best:,.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
