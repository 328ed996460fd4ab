"""`divertor replay CAPTURE --config FILE`: the whole pipeline on a capture, at full speed.

Writes the timeline as JSON Lines to stdout (a CLI contract): one line per diversion change
(`{"time", "type": "announce"|"withdraw", "prefix", "incident", "vector", "reason"}`),
incident transitions (`"type": "incident"`), verdict changes (`"type": "verdict"`) and
refusals (`"type": "refuse"`). Progress goes to stderr. With `--allowlist-feed FEED` the
allowlist is replayed beside the capture (docs/allowlist.md) and incident lines carry
`"allowlisted_share"`.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO

import thresholds
from allowlist.feed import FeedCursor, Registration, parse_lines
from allowlist.state import AllowlistState
from collector.datagram import DatagramBatch
from collector.sources.pcap import read_pcap
from detector.contracts import RateFrame
from divertor import config as config_mod
from divertor import history_cmd, incidents_cmd
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
    capture: str,
    config_path: str,
    drain: float = 0.0,
    progress: TextIO | None = None,
    allowlist_feed: str | None = None,
    store: str | None = None,
    history: str | None = None,
) -> tuple[list[dict[str, Any]], Pipeline]:
    """Replay a capture; with ``allowlist_feed`` (or a configured ``allowlist.feed`` or
    ``allowlist.static``), the allowlist is replayed beside it on event time: the feed's
    lines before the capture start first, then each line before the first datagram after
    it, so the unlisted classes count against the set as it was at that moment."""
    cfg = config_mod.load(config_path)
    ts = thresholds.load(cfg.thresholds)
    feed = allowlist_feed or cfg.allowlist.feed
    state: AllowlistState | None = None
    cursor: FeedCursor | None = None
    if feed is not None or cfg.allowlist.static:
        state = AllowlistState()
        regs: list[Registration] = []
        if feed is not None:
            with open(feed, "rb") as fh:
                regs, bad = parse_lines(fh, None, cfg.allowlist.limits())
            for r in bad:
                if progress is not None:
                    progress.write(f"replay: {feed}:{r.line}: refused: {r.reason}\n")
        cursor = FeedCursor(regs)
    pipe = Pipeline(cfg, ts, state.index if state is not None else None)
    frames: list[RateFrame] = []
    if store is not None:
        pipe.frame_sink = frames.extend
    recorder = history_cmd.recorder(history, pipe, ts.bin_seconds) if history else None
    out = Timeline()
    started = time.monotonic()
    last = 0.0
    n = 0
    for batch in bin_batches(capture, ts.bin_seconds):
        if state is not None and cursor is not None:
            now = batch.arrival[0]
            if not n:  # the state at the capture start: static entries, the feed before it
                cursor.apply_until(state, now, inclusive=False)
                state.replace_source("static", cfg.allowlist.static_keys(), now)
            cursor.apply_until(state, now)
        pipe.feed(batch, out)
        n += len(batch)
        last = batch.arrival[-1]
        if progress is not None and n % 2000 < len(batch):
            progress.write(f"\rreplay: {n} datagrams, {pipe.records} records, t={last:.0f}")
    if drain > 0:
        if state is not None and cursor is not None:
            cursor.apply_until(state, last + drain)
        pipe.tick(last + drain, out)
    pipe.allowlist = state
    if store is not None or recorder is not None:
        pipe.flush()
    if recorder is not None:
        recorder.close(out.lines)
        if progress is not None:
            progress.write(f"replay: {recorder.minutes} minutes of rates recorded in {history}\n")
    if store is not None:
        ids = incidents_cmd.record_replay(out.lines, frames, pipe.talkers, store, ts)
        if progress is not None:
            progress.write(f"replay: incidents {ids} recorded in {store}\n")
    if progress is not None:
        took = time.monotonic() - started
        progress.write(
            f"\rreplay: {n} datagrams, {pipe.records} records in {took:.1f}s "
            f"({pipe.records / max(took, 1e-9):,.0f} records/s)\n"
        )
    return out.lines, pipe


def run(
    capture: str,
    config_path: str,
    drain: float,
    out: TextIO | None = None,
    allowlist_feed: str | None = None,
    store: str | None = None,
    history: str | None = None,
) -> int:
    out = out if out is not None else sys.stdout  # looked up now, not at import
    lines, pipe = replay(capture, config_path, drain, sys.stderr, allowlist_feed, store, history)
    for line in lines:
        out.write(json.dumps(line) + "\n")
    json.dump({"stats": pipe.stats()}, sys.stderr)
    sys.stderr.write("\n")
    return 0
