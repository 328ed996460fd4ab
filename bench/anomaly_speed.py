"""Anomaly evaluation speed: the cost per evaluation of the anomaly rules, beside the static
verdicts, for N prefixes with a rule (detector/anomaly.py).

Usage: .venv/bin/python bench/anomaly_speed.py [--prefixes 1000] [--repeat 20]

N /24s, each with static thresholds and ``anomaly: {rule: 5x p99, floor: {pps: 1k}}``, a
baselines table for every hour (total, udp, sip), one flow per prefix and second for 100 s
of event time; then times ``Evaluator.evaluate`` and ``AnomalyEvaluator.combine`` at the same
event time, and a whole ``Pipeline.tick`` + ingest second.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import thresholds  # noqa: E402
from divertor.config import Config  # noqa: E402
from divertor.pipeline import Pipeline, Timeline  # noqa: E402
from tests.test_detector import T0, in_bin  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prefixes", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    n = args.prefixes
    pfx = [f"10.{i // 256}.{i % 256}.0/24" for i in range(n)]
    text = "\n".join(
        [
            "version: 1",
            "defaults:",
            "  thresholds: {total: {pps: 100k}, udp: {pps: 50k}, sip: {pps: 20k}}",
            "  anomaly: {rule: 5x p99, floor: {pps: 1k}}",
            "prefixes:",
            *(f"  {p}: {{}}" for p in pfx),
        ]
    )
    pipe = Pipeline(Config(thresholds="x"), thresholds.loads(text + "\n"))
    assert pipe.anomaly is not None
    rows = [
        {"prefix": p, "channel": ch, "kind": "hour", "slot": slot, "status": "ok",
         "reason": "", "median": 100.0, "mad": 10.0, "p95": 150.0, "p99": 200.0}
        for p in pfx for ch in ("total.pps", "udp.pps", "sip.pps") for slot in range(24)
    ]  # fmt: skip
    table = pd.DataFrame(rows)
    t = time.perf_counter()
    pipe.anomaly.set_baselines(table)
    install = time.perf_counter() - t
    hosts = [p.replace(".0/24", ".7") for p in pfx]
    out = Timeline()

    def second(r: int) -> None:
        pipe.tick(T0 + r + 0.5, out)
        pipe.keeper.ingest(in_bin(hosts, T0 + r, packets=500))

    for r in range(100):
        second(r)
    t = time.perf_counter()
    for r in range(100, 100 + args.repeat):
        second(r)
    tick = (time.perf_counter() - t) / args.repeat
    now = T0 + 100 + args.repeat
    verdicts = pipe.evaluator.evaluate(now)
    t = time.perf_counter()
    for _ in range(args.repeat):
        pipe.evaluator.evaluate(now)
    static = (time.perf_counter() - t) / args.repeat
    t = time.perf_counter()
    for _ in range(args.repeat):
        pipe.anomaly.combine(now, verdicts)
    anomaly = (time.perf_counter() - t) / args.repeat
    t = time.perf_counter()
    pipe.anomaly._key = None
    pipe.anomaly._refresh_levels(now)  # at each new hour slot
    slot = time.perf_counter() - t
    print(
        json.dumps(
            {
                "prefixes": n,
                "static_verdicts_ms": round(static * 1000, 1),
                "anomaly_ms": round(anomaly * 1000, 1),
                "tick_and_ingest_ms": round(tick * 1000, 1),
                "set_baselines_ms": round(install * 1000, 1),
                "new_hour_slot_ms": round(slot * 1000, 1),
                "python": platform.python_version(),
                "cpu": platform.processor() or platform.machine(),
            }
        )
    )


if __name__ == "__main__":
    main()
