"""`divertor replay CAPTURE --config FILE`: the whole pipeline on a capture, at full speed.

Writes the timeline as JSON Lines to stdout (a CLI contract): one line per diversion change
(`{"time", "type": "announce"|"withdraw", "prefix", "incident", "vector", "reason"}`),
incident transitions (`"type": "incident"`), verdict changes (`"type": "verdict"`) and
refusals (`"type": "refuse"`). Progress goes to stderr.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

import thresholds
from collector.datagram import DatagramBatch
from collector.sources.pcap import read_pcap
from divertor import config as config_mod
from divertor.pipeline import Pipeline, Timeline

MAX_BATCH = 1024


def bin_batches(path: str, bin_seconds: float) -> Iterator[DatagramBatch]:
    """Datagrams of a capture in batches that never straddle a bin boundary."""
    batch = DatagramBatch()
    current = None
    for arrival, frame, exporter, payload in read_pcap(path):
        b = math.floor(arrival / bin_seconds)
        if batch.payload and (b != current or len(batch) >= MAX_BATCH):
            yield batch
            batch = DatagramBatch()
        current = b
        batch.append(arrival, frame, exporter, payload)
    if batch.payload:
        yield batch


def replay(
    capture: str, config_path: str, drain: float = 0.0, progress: TextIO | None = None
) -> tuple[list[dict[str, Any]], Pipeline]:
    cfg = config_mod.load(config_path)
    ts = thresholds.load(cfg.thresholds)
    pipe = Pipeline(cfg, ts)
    out = Timeline()
    started = time.monotonic()
    last = 0.0
    n = 0
    for batch in bin_batches(capture, ts.bin_seconds):
        pipe.feed(batch, out)
        n += len(batch)
        last = batch.arrival[-1]
        if progress is not None and n % 2000 < len(batch):
            progress.write(f"\rreplay: {n} datagrams, {pipe.records} records, t={last:.0f}")
    if drain > 0:
        pipe.tick(last + drain, out)
    if progress is not None:
        took = time.monotonic() - started
        progress.write(
            f"\rreplay: {n} datagrams, {pipe.records} records in {took:.1f}s "
            f"({pipe.records / max(took, 1e-9):,.0f} records/s)\n"
        )
    return out.lines, pipe


def run(capture: str, config_path: str, drain: float, out: TextIO = sys.stdout) -> int:
    lines, pipe = replay(capture, config_path, drain, progress=sys.stderr)
    for line in lines:
        out.write(json.dumps(line) + "\n")
    json.dump({"stats": pipe.stats()}, sys.stderr)
    sys.stderr.write("\n")
    return 0
