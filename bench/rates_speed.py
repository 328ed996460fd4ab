#!/usr/bin/env python3
"""Offline speed of the detector's ingest: decode, rates, and the whole feed, per CPU-second.

Builds the pipeline as ``divertor collect --config bench/divertor-bench.yaml`` does
(``divertor.config.load``, ``thresholds.load``, ``divertor.pipeline.Pipeline``: the load
generator's prefixes, thresholds it never reaches, so every record takes the full path) and
feeds it the ingest benchmark's stream (``gen_packets.py`` of the shared harness, default
4000-packet cycle: v9 27 rec/datagram, IPFIX 23 IPv4 / 17 IPv6, templates every 200 data
packets) in DatagramBatches of ``--batch-size`` datagrams, as the UDP listener cuts them.

Arrival times are simulated: datagrams arrive at ``--rate`` records/s of event time, so
bins, evaluations (once per second of event time) and window shifts happen as often per
record as they would live at that rate; each round continues where the previous one ended.
No socket, no receive thread: what is measured is the decoding thread's work.

Three measures per format, each on its own fresh pipeline, records per CPU-second
(``time.process_time``), median over rounds:

* ``decode``: ``Decoder.decode`` alone (DatagramBatch -> FlowBatch);
* ``rates``: ``RateKeeper.ingest`` alone on FlowBatches decoded beforehand (prefix lookup,
  classes, per-bin counters of prefixes and hosts, window shifts);
* ``feed``: ``Pipeline.feed`` (decode + rates + verdicts every second of event time).

Usage::

    taskset -c 1 .venv/bin/python bench/rates_speed.py
    taskset -c 1 .venv/bin/python bench/rates_speed.py --formats v9 --min-time 2 --profile rates
"""

from __future__ import annotations

import argparse
import cProfile
import functools
import gc
import importlib.metadata
import os
import platform
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT))
sys.path.insert(0, str(PROJECT_ROOT / "bench"))

from decode_speed import DEFAULT_HARNESS, EXPORTER, read_stream  # noqa: E402

import thresholds  # noqa: E402
from collector.datagram import DatagramBatch  # noqa: E402
from collector.flowbatch import FlowBatch  # noqa: E402
from divertor import config as config_mod  # noqa: E402
from divertor.pipeline import Pipeline, Timeline  # noqa: E402

BENCH_CONFIG = PROJECT_ROOT / "bench" / "divertor-bench.yaml"
MEASURES = ("decode", "rates", "feed")


@dataclass
class Result:
    fmt: str
    measure: str
    records_per_round: int
    rounds: int
    records_per_cpu_s: float
    records_per_cpu_s_min: float
    records_per_cpu_s_max: float
    us_per_record: float


def new_pipeline() -> Pipeline:
    cfg = config_mod.load(str(BENCH_CONFIG))
    return Pipeline(cfg, thresholds.load(cfg.thresholds))


def stream(harness: Path, version: str, packets: int) -> list[bytes]:
    gen = harness / "gen_packets.py"
    if not gen.is_file():
        sys.exit(f"{gen} not found (set --harness or DIVERTOR_BENCH_HARNESS)")
    with tempfile.TemporaryDirectory(prefix="rates-speed-") as tmp:
        out = Path(tmp) / f"{version}.bin"
        subprocess.run(
            [sys.executable, str(gen), version, "-o", str(out), "-n", str(packets)],
            check=True,
            capture_output=True,
        )
        return read_stream(out)


def make_batches(payloads: list[bytes], batch_size: int) -> list[DatagramBatch]:
    """Full batches covering the cycle at least once (arrival times set per round)."""
    n = -(-len(payloads) // batch_size) * batch_size
    out = []
    for start in range(0, n, batch_size):
        b = DatagramBatch()
        for i in range(start, start + batch_size):
            b.append(0.0, i + 1, EXPORTER, payloads[i % len(payloads)])
        out.append(b)
    return out


class Clock:
    """Simulated arrival times: ``rate`` records/s of event time, batch after batch."""

    def __init__(self, start: float, rate: float) -> None:
        self.now, self.rate = start, rate

    def stamp(self, batches: list[DatagramBatch], records: list[int]) -> None:
        for b, n in zip(batches, records, strict=True):
            step = n / self.rate / len(b)
            b.arrival = [self.now + i * step for i in range(len(b))]
            self.now += n / self.rate

    def stamp_flows(self, flows: list[FlowBatch]) -> None:
        for f in flows:
            span = len(f) / self.rate
            f.arrival = self.now + np.linspace(0.0, span, len(f), endpoint=False)
            self.now += span


def timed(
    run_round: Callable[[], int],
    prepare: Callable[[], None],
    min_time: float,
    min_rounds: int,
    profile: cProfile.Profile | None,
) -> tuple[int, list[float]]:
    rates: list[float] = []
    records = 0
    spent = 0.0
    cpu = time.process_time
    while len(rates) < min_rounds or spent < min_time:
        prepare()
        if profile is not None:
            profile.enable()
        c0 = cpu()
        records = run_round()
        c1 = cpu()
        if profile is not None:
            profile.disable()
        rates.append(records / (c1 - c0))
        spent += c1 - c0
    return records, rates


def decode_round(pipe: Pipeline, batches: list[DatagramBatch]) -> int:
    return sum(len(pipe.decoder.decode(b)) for b in batches)


def rates_round(pipe: Pipeline, flows: list[FlowBatch]) -> int:
    for f in flows:
        pipe.keeper.ingest(f)
    return sum(len(f) for f in flows)


def feed_round(pipe: Pipeline, batches: list[DatagramBatch], out: Timeline) -> int:
    before = pipe.records
    for b in batches:
        pipe.feed(b, out)
    out.lines.clear()
    return pipe.records - before


def run_format(
    fmt: str,
    payloads: list[bytes],
    batch_size: int,
    rate: float,
    min_time: float,
    min_rounds: int,
    profile_measure: str | None,
) -> list[Result]:
    batches = make_batches(payloads, batch_size)
    # records per batch, in the steady state (templates known)
    probe = new_pipeline().decoder
    for b in batches:
        probe.decode(b)
    per_batch = [len(probe.decode(b)) for b in batches]
    t0 = time.time()
    results = []
    for measure in MEASURES:
        pipe = new_pipeline()
        clock = Clock(t0, rate)
        for b in batches:  # warm-up: templates and sampling options (untimed)
            pipe.decoder.decode(b)
        run: Callable[[], int]
        prepare: Callable[[], None]
        if measure == "rates":
            decoder = new_pipeline().decoder  # FlowBatches decoded beforehand, untimed
            for b in batches:
                decoder.decode(b)
            flows = [decoder.decode(b) for b in batches]
            run = functools.partial(rates_round, pipe, flows)
            prepare = functools.partial(clock.stamp_flows, flows)
        else:
            if measure == "decode":
                run = functools.partial(decode_round, pipe, batches)
            else:
                run = functools.partial(feed_round, pipe, batches, Timeline())
            prepare = functools.partial(clock.stamp, batches, per_batch)
        prepare()
        run()  # one untimed round: numpy caches, window started
        profile = cProfile.Profile() if measure == profile_measure else None
        records, rates = timed(run, prepare, min_time, min_rounds, profile)
        med = statistics.median(rates)
        results.append(
            Result(fmt, measure, records, len(rates), med, min(rates), max(rates), 1e6 / med)
        )
        if profile is not None:
            print(f"\n## profile: {fmt} {measure}")
            pstats.Stats(profile).sort_stats("tottime").print_stats(25)
    return results


def conditions(batch_size: int, rate: float, packets: int) -> str:
    cpu = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    git = subprocess.run(
        ["git", "-C", str(PROJECT_ROOT), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return (
        f"date_utc {time.strftime('%Y-%m-%d %H:%M', time.gmtime())}; cpu {cpu} × "
        f"{os.cpu_count()} vCPU; affinity {sorted(os.sched_getaffinity(0))}; "
        f"python {platform.python_implementation()} {platform.python_version()}; "
        f"numpy {np.__version__}; divertor {importlib.metadata.version('divertor')} "
        f"(git {git or '?'}); batch_size {batch_size} datagrams; stream cycle {packets} "
        f"packets; simulated rate {rate:,.0f} rec/s; gc {'on' if gc.isenabled() else 'off'}; "
        f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )


def table(results: Sequence[Result]) -> list[str]:
    lines = [
        "| format | measure | records/round | rounds | rec/CPU-s (median) "
        "| rec/CPU-s min–max | µs/record |",
        "| --- | --- | ---: | ---: | ---: | --- | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r.fmt} | {r.measure} | {r.records_per_round:,} | {r.rounds} "
            f"| {r.records_per_cpu_s:,.0f} "
            f"| {r.records_per_cpu_s_min:,.0f}–{r.records_per_cpu_s_max:,.0f} "
            f"| {r.us_per_record:.3f} |"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--formats", default="v9,ipfix", help="default %(default)s")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--rate", type=float, default=1.5e6, help="simulated records/s")
    ap.add_argument("--min-time", type=float, default=3.0, help="timed CPU seconds per case")
    ap.add_argument("--min-rounds", type=int, default=5)
    ap.add_argument("--packets", type=int, default=4000, help="stream cycle length")
    ap.add_argument("--harness", default=str(DEFAULT_HARNESS))
    ap.add_argument("--profile", choices=MEASURES, help="cProfile this measure (slower)")
    a = ap.parse_args(argv)
    print(conditions(a.batch_size, a.rate, a.packets))
    results: list[Result] = []
    for fmt in (f for f in a.formats.split(",") if f):
        payloads = stream(Path(a.harness), fmt, a.packets)
        results += run_format(
            fmt, payloads, a.batch_size, a.rate, a.min_time, a.min_rounds, a.profile
        )
    print()
    print("\n".join(table(results)))
    print(f"\nload at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
