"""`divertor history ...` and `divertor thresholds recommend|backtest|diff` (docs/history.md).

The argparse and dispatch of the history commands, and the glue that the replay uses to
fill a history directory (``--history DIR``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import TYPE_CHECKING, Any

from divertor import typedyaml

if TYPE_CHECKING:  # pandas, DuckDB and the history modules load only when a command runs
    import pandas as pd

    from history.config import HistoryConfig
    from history.recorder import HistoryRecorder
    from history.store import HistoryStore

#: `divertor thresholds ACTION` handled here
THRESHOLD_ACTIONS = ("recommend", "backtest", "diff")


def load_config(directory: str) -> HistoryConfig:
    """``DIR/history.yaml`` if present, else the defaults; ConfigError with file:line."""
    from history.config import CONFIG_FILE, HistoryConfig

    path = os.path.join(directory, CONFIG_FILE)
    if not os.path.exists(path):
        return HistoryConfig()
    with open(path, encoding="utf-8") as fh:
        return typedyaml.load(HistoryConfig, fh.read(), path)


def open_store(directory: str, read_only: bool = True, bin_seconds: float = 1.0) -> HistoryStore:
    from history.store import HistoryStore

    return HistoryStore(directory, load_config(directory), read_only, bin_seconds)


def recorder(directory: str, pipe: Any, bin_seconds: float) -> HistoryRecorder:
    """A recorder into ``directory``, chained after the pipeline's frame sink."""
    from history.recorder import HistoryRecorder

    rec = HistoryRecorder(open_store(directory, read_only=False, bin_seconds=bin_seconds))
    before = pipe.frame_sink

    def sink(frames: list[Any]) -> None:
        if before is not None:
            before(frames)
        rec(frames)

    pipe.frame_sink = sink
    return rec


def _time(text: str) -> float:
    """Unix seconds, or an ISO 8601 date/time (UTC unless it says otherwise)."""
    try:
        return float(text)
    except ValueError:
        import pandas as pd

        ts = pd.Timestamp(text)
        ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts
        return float(ts.timestamp())


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))


def add_parser(sub: Any) -> None:
    """`divertor history baseline|info`."""
    h = sub.add_parser("history", help="the rate history: baselines, what it holds")
    hsub = h.add_subparsers(dest="action", required=True)
    b = hsub.add_parser("baseline", help="refresh the baselines and print them")
    b.add_argument("--history", required=True, metavar="DIR")
    b.add_argument("--now", help="data time to learn up to (default: the newest data)")
    b.add_argument("--prefix", help="print this prefix only")
    b.add_argument("--force", action="store_true", help="recompute even if fresh")
    i = hsub.add_parser("info", help="what the history holds")
    i.add_argument("--history", required=True, metavar="DIR")


def add_threshold_actions(tsub: Any) -> None:
    """`divertor thresholds recommend|backtest|diff`."""
    r = tsub.add_parser("recommend", help="propose thresholds from the history (YAML)")
    r.add_argument("prefix", nargs="?", help="one protected prefix (else --all)")
    r.add_argument("--all", action="store_true", help="every prefix of the history")
    r.add_argument("--history", required=True, metavar="DIR")
    r.add_argument("--base", metavar="FILE", help="thresholds file to start from")
    r.add_argument("--percentile", type=float, default=100.0)
    r.add_argument("--margin", type=float, default=1.5)
    r.add_argument("--from", dest="t_from", metavar="TIME")
    r.add_argument("--to", dest="t_to", metavar="TIME")
    r.add_argument("-o", "--output", metavar="FILE", help="write here (default: stdout)")
    for name, helptext in (
        ("backtest", "what a thresholds file would have done over the history"),
        ("diff", "compare two thresholds files by their effect over the history"),
    ):
        p = tsub.add_parser(name, help=helptext)
        p.add_argument("file")
        if name == "diff":
            p.add_argument("other")
        p.add_argument("--history", metavar="DIR", help="the stored history to run over")
        p.add_argument(
            "--capture",
            action="append",
            metavar="PCAP",
            help="or: run over these captures (repeatable), replayed first with --config",
        )
        p.add_argument("--config", metavar="FILE", help="divertor.yaml for --capture")
        p.add_argument("--from", dest="t_from", metavar="TIME")
        p.add_argument("--to", dest="t_to", metavar="TIME")
        p.add_argument("--json", action="store_true", help="JSON Lines instead of text")
        p.add_argument("--no-progress", action="store_true")


def dispatch(args: argparse.Namespace) -> int:
    try:
        if args.command == "history":
            return _history(args)
        if args.action == "recommend":
            from history import recommend

            if not args.all and not args.prefix:
                raise ValueError("give a PREFIX or --all")
            store = open_store(args.history)
            base = None
            if args.base:
                with open(args.base, encoding="utf-8") as fh:
                    base = fh.read()
            text = recommend.recommend(
                store,
                None if args.all else [args.prefix],
                base,
                args.percentile,
                args.margin,
                _time(args.t_from) if args.t_from else None,
                _time(args.t_to) if args.t_to else None,
            )
            if args.output:
                with open(args.output, "w", encoding="utf-8") as fh:
                    fh.write(text)
            else:
                sys.stdout.write(text)
            return 0
        from divertor import backtest_cmd

        return backtest_cmd.run(args)
    except (OSError, ValueError) as e:
        print(f"divertor {args.command} {args.action}: {e}", file=sys.stderr)
        return 2


def _history(args: argparse.Namespace) -> int:
    if args.action == "info":
        store = open_store(args.history)
        for table in ("s1", "m1"):
            span = store.span(table)
            what = f"{_iso(span[0])} .. {_iso(span[1])}" if span else "empty"
            print(f"{table}: {what}")
        print(f"prefixes: {', '.join(store.prefixes())}")
        for p, a, b, why in store.excluded():
            print(f"excluded: {p} {_iso(a)} .. {_iso(b)} ({why})")
        return 0
    store = open_store(args.history, read_only=False)
    span = store.span("m1")
    if span is None:
        print(f"{args.history}: empty history", file=sys.stderr)
        return 1
    now = _time(args.now) if args.now else span[1]
    from history import baselines as bl

    cfg = store.config.baseline
    table = bl.refresh(store, cfg, now, force=args.force)
    if args.prefix:
        table = table[table["prefix"] == args.prefix]
    print(format_baselines(table))
    return 0


def format_baselines(table: pd.DataFrame) -> str:
    from history import baselines as bl

    if table.empty:
        return "no baselines (empty history)"
    at = float(table["computed_at"].max())
    lines = [f"baselines computed at {_iso(at)} (data time), {len(table)} rows"]
    lines.append(
        f"{'prefix':<20} {'channel':<18} {'slot':>4} {'n':>7} {'days':>4} "
        f"{'median':>10} {'mad':>10} {'p95':>10} {'p99':>10}"
    )
    for r in table.itertuples(index=False):
        if r.status != bl.OK:
            lines.append(
                f"{r.prefix:<20} {r.channel:<18} {r.slot:>4} not enough history: {r.reason}"
            )
            continue
        lines.append(
            f"{r.prefix:<20} {r.channel:<18} {r.slot:>4} {r.n:>7} {r.days:>4} "
            f"{r.median:>10.4g} {r.mad:>10.4g} {r.p95:>10.4g} {r.p99:>10.4g}"
        )
    return "\n".join(lines)
