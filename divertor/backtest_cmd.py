"""`divertor thresholds backtest FILE --history DIR` and `thresholds diff A B --history DIR`.

Prints what a thresholds file would have done over the stored 1 s history: diversions with
their times, vectors and durations, and the near misses; a progress bar on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator
from typing import Any

import thresholds
from history import backtest as bt
from history.store import HistoryStore, SecondsChunk

CHUNK = 2 * 3600.0  # data seconds read and evaluated at a time


def _chunks(store: HistoryStore, t0: float, t1: float, progress: bool) -> Any:
    def chunks(prefixes: list[str], channels: list[str]) -> Iterator[SecondsChunk]:
        it = _prefetch(store.iter_seconds(t0, t1, prefixes, channels, CHUNK))
        if not progress:
            yield from it
            return
        from tqdm import tqdm

        with tqdm(total=round(t1 - t0), unit="s", unit_scale=True, file=sys.stderr,
                  desc="backtest", leave=False) as bar:  # fmt: skip
            for chunk in it:
                yield chunk
                bar.update(chunk.values.shape[0] * chunk.bin_seconds)

    return chunks


def _prefetch(it: Iterable[SecondsChunk]) -> Iterator[SecondsChunk]:
    """Read the next chunk (DuckDB, numpy: both release the GIL) while this one is
    evaluated: on two cores the backtest costs about max(read, evaluate), not their sum."""
    import queue
    import threading

    q: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def reader() -> None:
        try:
            for chunk in it:
                while not stop.is_set():
                    try:
                        q.put(("chunk", chunk), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put(("end", None))
        except BaseException as e:  # handed to the consumer, raised there
            q.put(("error", e))

    thread = threading.Thread(target=reader, name="backtest-read", daemon=True)
    thread.start()
    try:
        while True:
            kind, item = q.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()


def backtest(
    path: str, store: HistoryStore, t0: float | None, t1: float | None, progress: bool = False
) -> bt.Result:
    ts = thresholds.load(path)
    if ts.bin_seconds != store.bin_seconds:
        raise ValueError(f"{path}: bin {ts.bin_seconds:g}s, history {store.bin_seconds:g}s")
    span = store.span("s1")
    if span is None:
        raise ValueError(f"{store.directory}: no 1 s history")
    lo = span[0] if t0 is None else max(t0, span[0])
    hi = span[1] if t1 is None else min(t1, span[1])
    timing = bt.Timing(average=max(1, round(ts.average_seconds / ts.bin_seconds)))
    return bt.run(ts, _chunks(store, lo, hi, progress), store.prefixes(), timing)


def as_lines(res: bt.Result) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for d in res.diversions:
        out.append({"type": "would_divert" if d.monitor else "diversion", "prefix": d.prefix,
                    "start": d.start, "end": d.end, "duration": d.duration,
                    "vector": d.vector, "reason": d.reason})  # fmt: skip
    for m in res.near_misses:
        out.append({"type": "near_miss", "prefix": m.prefix, "start": m.start, "end": m.end,
                    "ratio": round(m.ratio, 3), "channel": m.channel, "value": m.value,
                    "threshold": m.threshold})  # fmt: skip
    return out


def format_result(path: str, res: bt.Result) -> str:
    from divertor.history_cmd import _iso

    lines = [
        f"{path}: backtest {_iso(res.start)} .. {_iso(res.end)} UTC, "
        f"{len(res.prefixes)} prefixes, {len(res.diversions)} diversions, "
        f"{len(res.near_misses)} near misses"
    ]
    lines += [f"  no history: {p} (not backtested)" for p in res.missing]
    for d in res.diversions:
        dur = "still diverted at the end" if d.end is None else f"{d.duration:,.0f}s"
        kind = "would divert (monitor)" if d.monitor else "divert"
        lines.append(f"  {kind} {d.prefix} at {_iso(d.start)} for {dur}: {d.vector}: {d.reason}")
    for m in res.near_misses:
        lines.append(
            f"  near miss {m.prefix} {_iso(m.start)} .. {_iso(m.end)}: {m.channel} "
            f"{m.value:,.0f} = {m.ratio:.0%} of {m.threshold:,.0f}"
        )
    return "\n".join(lines)


def diff(a: bt.Result, b: bt.Result, name_a: str, name_b: str) -> str:
    """Diversions of A and B matched by prefix and overlapping time."""

    def overlaps(x: bt.Diversion, y: bt.Diversion) -> bool:
        xe = x.end if x.end is not None else a.end
        ye = y.end if y.end is not None else b.end
        return x.prefix == y.prefix and x.start <= ye and y.start <= xe

    from divertor.history_cmd import _iso

    lines = [f"diff over {_iso(a.start)} .. {_iso(a.end)} UTC: A = {name_a}, B = {name_b}"]
    lines.append(
        f"  diversions: A {len(a.diversions)}, B {len(b.diversions)}; "
        f"near misses: A {len(a.near_misses)}, B {len(b.near_misses)}"
    )
    for x in a.diversions:
        match = [y for y in b.diversions if overlaps(x, y)]
        if not match:
            lines.append(f"  only A: {x.prefix} at {_iso(x.start)}: {x.vector}: {x.reason}")
        else:
            y = match[0]
            delta = y.start - x.start
            dx = x.duration if x.duration is not None else float("nan")
            dy = y.duration if y.duration is not None else float("nan")
            lines.append(
                f"  both: {x.prefix} at {_iso(x.start)}: B {delta:+,.0f}s, "
                f"duration A {dx:,.0f}s B {dy:,.0f}s"
            )
    for y in b.diversions:
        if not any(overlaps(x, y) for x in a.diversions):
            lines.append(f"  only B: {y.prefix} at {_iso(y.start)}: {y.vector}: {y.reason}")
    return "\n".join(lines)


def _history_of(args: argparse.Namespace) -> str:
    """--history DIR, or a history built from --capture PCAP... replayed with --config."""
    if bool(args.history) == bool(args.capture):
        raise ValueError("give --history DIR or --capture PCAP (with --config), not both")
    if args.history:
        return str(args.history)
    if not args.config:
        raise ValueError("--capture needs --config (the divertor.yaml to replay it with)")
    import tempfile

    from divertor.replay_cmd import replay

    directory = tempfile.mkdtemp(prefix="divertor-backtest-")
    for capture in args.capture:
        replay(capture, args.config, progress=sys.stderr, history=directory)
    return directory


def run(args: argparse.Namespace) -> int:
    from divertor.history_cmd import open_store

    directory = _history_of(args)
    try:
        return _run(args, open_store(directory))
    finally:
        if args.capture:  # the history built for this run only
            import shutil

            shutil.rmtree(directory, ignore_errors=True)


def _run(args: argparse.Namespace, store: HistoryStore) -> int:
    from divertor.history_cmd import _time

    t0 = _time(args.t_from) if args.t_from else None
    t1 = _time(args.t_to) if args.t_to else None
    progress = not args.no_progress
    res = backtest(args.file, store, t0, t1, progress)
    if args.action == "diff":
        other = backtest(args.other, store, t0, t1, progress)
        if args.json:
            for tag, r in (("A", res), ("B", other)):
                for line in as_lines(r):
                    print(json.dumps({"file": tag, **line}))
        else:
            print(diff(res, other, args.file, args.other))
        return 0
    if args.json:
        for line in as_lines(res):
            print(json.dumps(line))
    else:
        print(format_result(args.file, res))
    return 0
