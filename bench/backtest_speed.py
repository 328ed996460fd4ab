"""Backtest speed: 7 days of 1 s history for 1,000 prefixes (target: at most 60 s).

Usage: .venv/bin/python bench/backtest_speed.py [--prefixes 1000] [--hours 168] [--dir D]

Builds (once; kept in --dir and reused when its parameters match) a synthetic history:
per prefix (10.a.b.0/24) total.bps, total.pps and udp.pps every second, a daily curve times
noise, with 5-minute floods on 2 % of the prefixes per day, the other 33 channels empty;
and a thresholds file with total pps/bps and udp pps per prefix. Then times
`divertor thresholds backtest` (history read from DuckDB, vectorised pass, the real
IncidentManager where something happens) and, separately, a baseline refresh over the 1 min
roll-up (the cost of refreshing baselines for those prefixes).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from divertor import backtest_cmd, history_cmd  # noqa: E402
from history import baselines  # noqa: E402
from history.rollup import CHANNELS  # noqa: E402

START = 1_739_923_200  # 2025-02-19 00:00 UTC
DAY = 86400


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def build(d: Path, prefixes: int, hours: int) -> tuple[float, int]:
    """Write the synthetic history; returns (seconds taken, floods)."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "history.yaml").write_text(
        f"retention: {{seconds: {hours * 3600 + DAY}, minutes: {hours * 3600 + 30 * DAY}}}\n"
    )
    store = history_cmd.open_store(str(d), read_only=False)
    names = [f"10.{i // 256}.{i % 256}.0/24" for i in range(prefixes)]
    ids = store.prefix_ids(names)
    rng = np.random.default_rng(7)
    scale = rng.uniform(2e3, 4e4, size=prefixes).astype(np.float32)  # pps at the daily peak
    k = [CHANNELS.index(c) for c in ("total.bps", "total.pps", "udp.pps")]
    floods = 0
    t0 = time.perf_counter()
    for h in range(hours):
        base = START + h * 3600
        tod = (np.arange(3600) + base) % DAY / DAY
        curve = (0.55 - 0.45 * np.cos(2 * np.pi * tod)).astype(np.float32)  # (3600,)
        pps = (
            scale[:, None]
            * curve[None, :]
            * rng.normal(1.0, 0.06, (prefixes, 3600)).astype(np.float32)
        )
        udp = pps * np.float32(0.6)
        if h % 24 == 0:  # a day's floods: 2 % of the prefixes, 5 minutes each
            hit = rng.choice(prefixes, size=max(1, prefixes // 50), replace=False)
            udp[hit, 600:900] += 300_000
            pps[hit, 600:900] += 300_000
            floods += len(hit)
        values = np.full((prefixes * 60, len(CHANNELS), 60), np.nan, dtype=np.float32)
        for c, arr in zip(k, (pps * 8 * 400, pps, udp), strict=True):
            values[:, c, :] = arr.reshape(prefixes, 60, 60).reshape(prefixes * 60, 60)
        t = (base + 60 * np.tile(np.arange(60), prefixes)).astype(np.int64)
        store.db.execute("BEGIN")
        store.insert(t, np.repeat(ids, 60), values)
        store.db.execute("COMMIT")
        print(f"\rbuild: hour {h + 1}/{hours}", end="", file=sys.stderr)
    print(file=sys.stderr)
    store.close()
    lines = ["version: 1", "defaults: {bin: 1s, average: 5s}", "prefixes:"]
    for n in names:
        lines.append(
            f"  {n}: {{thresholds: {{total: {{pps: 200k, bps: 800M}}, udp: {{pps: 150k}}}}}}"
        )
    (d / "bench-thresholds.yaml").write_text("\n".join(lines) + "\n")
    return time.perf_counter() - t0, floods


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prefixes", type=int, default=1000)
    ap.add_argument("--hours", type=int, default=7 * 24)
    ap.add_argument("--dir", default="/tmp/divertor-backtest-bench")
    args = ap.parse_args()
    d = Path(args.dir)
    params = {"prefixes": args.prefixes, "hours": args.hours, "v": 1}
    marker = d / "params.json"
    built = ""
    old = json.loads(marker.read_text()) if marker.exists() else {}
    if {k: old.get(k) for k in params} != params:
        import shutil

        shutil.rmtree(d, ignore_errors=True)
        took, floods = build(d, args.prefixes, args.hours)
        marker.write_text(json.dumps({**params, "floods": floods}))
        built = f"; history built in {took:.0f} s"
    floods = json.loads(marker.read_text())["floods"]
    size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) / 1e9
    store = history_cmd.open_store(str(d))
    t0 = time.perf_counter()
    res = backtest_cmd.backtest(str(d / "bench-thresholds.yaml"), store, None, None, progress=True)
    took = time.perf_counter() - t0
    cfg = store.config.baseline
    span = store.span("m1")
    assert span is not None
    t1 = time.perf_counter()
    table = baselines.compute(store, cfg, span[1])
    refresh = time.perf_counter() - t1
    bins = (res.end - res.start) / store.bin_seconds
    print(f"# backtest speed, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(
        f"# cpu {cpu_model()} x {os.cpu_count()}, python {platform.python_version()}, "
        f"numpy {np.__version__}, load {os.getloadavg()[0]:.2f}; history {size:.1f} GB "
        f"DuckDB on {d}{built}"
    )
    print("| what | figure |")
    print("| --- | ---: |")
    print(f"| history | {args.hours} h x {args.prefixes} prefixes x 1 s, 3 channels |")
    print(f"| prefix-seconds | {bins * len(res.prefixes):,.0f} |")
    print(f"| backtest wall time | {took:.1f} s |")
    full = 7 * 86400 * 1000 / (bins * len(res.prefixes) / took)
    print(f"| extrapolated to 7 days x 1,000 prefixes (linear) | {full:.0f} s |")
    print(f"| prefix-seconds/s | {bins * len(res.prefixes) / took:,.0f} |")
    print(f"| synthetic floods / diversions found | {floods} / {len(res.diversions)} |")
    print(f"| near misses | {len(res.near_misses)} |")
    print(f"| seconds evaluated one by one (real IncidentManager) | {res.steps:,} |")
    print(
        f"| baseline refresh, 1 min roll-up, {cfg.days:g} days look-back, "
        f"{len(baselines.channels_of(cfg))} channels | {refresh:.1f} s ({len(table):,} rows) |"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
