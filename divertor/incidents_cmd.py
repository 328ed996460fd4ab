"""`divertor incidents list|show|export`: the timeline store's incidents from the shell.

``--store PATH`` (default: $DIVERTOR_STORE, else the ``timeline.path`` of ``--config`` or of
$DIVERTOR_CONFIG / /etc/divertor/divertor.yaml when it exists, else ``divertor.db``) is opened
read-only: a running engine keeps writing. Exit 2, with the reason on stderr, for a missing
store or an unknown incident. ``record_replay`` puts a replay's lines, RateFrames and talkers
in a store (`divertor replay --store PATH`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from detector.contracts import RateFrame
from divertor.report import FORMATS, IncidentRecord, Limits, describe, dur, export, utc
from divertor.store import StoreError, TimelineStore
from thresholds.model import METRICS, Limit, ThresholdSet

DEFAULT_STORE = "divertor.db"


def default_store(config: str | None = None) -> str:
    """The store `divertor run` writes (its configuration's ``timeline.path``), or the
    replay default."""
    if os.environ.get("DIVERTOR_STORE"):
        return os.environ["DIVERTOR_STORE"]
    config = config or os.environ.get("DIVERTOR_CONFIG", "/etc/divertor/divertor.yaml")
    if os.path.exists(config):
        from divertor import config as config_mod

        try:
            return config_mod.load(config).timeline.path
        except (OSError, ValueError):
            pass
    return DEFAULT_STORE


def add_parser(sub: Any) -> None:
    """Register `incidents` and its actions on the CLI's subparsers."""
    p = sub.add_parser("incidents", help="incidents of the timeline store: list, show, export")
    isub = p.add_subparsers(dest="incidents_action", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument(
            "--store",
            help="timeline store (default: $DIVERTOR_STORE, else the config's timeline.path, "
            f"else {DEFAULT_STORE})",
        )
        q.add_argument("--config", help="divertor.yaml whose timeline.path to read")

    ls = isub.add_parser("list", help="every incident: id, prefix, vector, times, states")
    common(ls)
    ls.add_argument("--json", action="store_true", help="JSON instead of a table")
    sh = isub.add_parser("show", help="one incident: summary, timeline, talkers")
    common(sh)
    sh.add_argument("id", type=int)
    sh.add_argument("--json", action="store_true", help="the whole record as JSON")
    ex = isub.add_parser("export", help="one incident's record as JSON, CSV or an HTML page")
    common(ex)
    ex.add_argument("id", type=int)
    ex.add_argument("--format", choices=FORMATS, default="html")
    ex.add_argument("-o", "--output", help="write here (default: stdout)")
    ex.add_argument(
        "--thresholds", metavar="FILE", help="draw this threshold file's limits of the prefix"
    )
    p.set_defaults(incidents_handler=dispatch)


def dispatch(args: argparse.Namespace) -> int:
    action = args.incidents_action
    path = args.store or default_store(args.config)
    if not os.path.exists(path):
        print(
            f"divertor incidents {action}: no timeline store at {path} "
            "(give --store PATH or set DIVERTOR_STORE)",
            file=sys.stderr,
        )
        return 2
    try:
        with TimelineStore(path, readonly=True) as store:
            if action == "list":
                return _list(store, args.json)
            if action == "show":
                return _show(store, args.id, args.json)
            text = export(store, args.id, args.format, _given(args.thresholds, store, args.id))
    except (StoreError, OSError, ValueError) as e:
        print(f"divertor incidents {action}: {e}", file=sys.stderr)
        return 2
    except KeyError as e:
        print(f"divertor incidents {action}: {e.args[0]}", file=sys.stderr)
        return 2
    if args.output:
        _write_atomically(args.output, text)
    else:
        sys.stdout.write(text)
    return 0


def _given(path: str | None, store: TimelineStore, ident: int) -> Limits | None:
    """The prefix's limits in the threshold file ``path``, if given."""
    inc = store.get_incident(ident)
    if path is None or inc is None:
        return None
    import thresholds

    policy = thresholds.load(path).policy(inc.prefix)
    if policy is None:
        raise ValueError(f"{path}: no entry for {inc.prefix}")
    return limits_of(policy.thresholds)


def _write_atomically(path: str, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(path)), suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _list(store: TimelineStore, as_json: bool) -> int:
    incidents = store.incidents()
    if as_json:
        print(json.dumps([i.as_dict() for i in incidents], indent=1))
        return 0
    rows = [("ID", "PREFIX", "VECTOR", "FIRST SEEN (UTC)", "DURATION", "STATE", "ANNOUNCED")]
    for i in incidents:
        state = i.state if i.end_time is None else i.end_reason or i.state
        rows.append(
            (
                str(i.id),
                i.prefix,
                i.vector or "-",
                utc(i.first_time)[:19],
                dur(i.duration) + ("" if i.end_time is not None else " (open)"),
                state,
                ", ".join(i.announced) or "-",
            )
        )
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
    if not incidents:
        print(f"(no incident in {store.path})")
    return 0


def _show(store: TimelineStore, ident: int, as_json: bool) -> int:
    rec = store.incident(ident)
    if as_json:
        print(json.dumps(rec.as_dict(), indent=1, default=str))
        return 0
    print("\n".join(as_text(rec)))
    return 0


def as_text(rec: IncidentRecord) -> list[str]:
    """An incident in plain text, for a terminal."""
    i = rec.incident
    end = "still open" if i.end_time is None else f"{utc(i.end_time)} UTC ({i.end_reason})"
    out = [
        f"Incident {i.id}: {i.prefix}, {i.vector or 'no vector'} (engine incident {i.engine_id})",
        f"  first seen  {utc(i.first_time)} UTC",
        f"  ended       {end}",
        f"  duration    {dur(i.duration)}",
        f"  states      {' -> '.join(i.states)}",
        f"  announced   {', '.join(i.announced) or 'nothing'}",
    ]
    share = rec.allowlisted_share()
    if share:
        parts = [
            f"{c} {_pct(share.get('before', {}).get(c))} before, "
            f"{_pct(share.get('during', {}).get(c))} during"
            for c in sorted(set(share.get("before", {})) | set(share.get("during", {})))
        ]
        out.append(f"  allowlisted {'; '.join(parts)}")
    else:
        out.append("  allowlisted not available")
    for r in rec.rules():
        on = f" on {', '.join(r['hosts'])}" if r["hosts"] else ""
        peak = max(r["peak"], r["peak_bin"] or 0.0)
        over = f"over {utc(r['first'])[11:19]} - {utc(r['until'])[11:19]}"
        out.append(f"  rule        {r['rule']}: peak {peak:,.0f} against "
                   f"{r['threshold'] or 0:,.0f}{on}, {over}")  # fmt: skip
    out.append("Timeline (UTC):")
    for x in rec.lines:
        change, what = describe(x)
        out.append(f"  {utc(x['time'])[11:19]}  {x['type']:<9} {change:<26} {what}".rstrip())
    for prefix, top in rec.talkers.items():
        out.append(f"Top talkers of {prefix} (packets):")
        for kind, items in top.items():
            out.append(f"  {kind:<9} " + ", ".join(f"{k} ({v:,.0f})" for k, v in items[:8]))
    return out


def _pct(v: Any) -> str:
    return "n/a" if not isinstance(v, int | float) else f"{100 * v:.0f}%"


def limits_of(limits: Mapping[str, Limit]) -> Limits:
    """class -> Limit as class -> metric -> value (the metrics that have one)."""
    return {
        c: {m: float(v) for m, v in zip(METRICS, lim.as_tuple(), strict=True) if v is not None}
        for c, lim in limits.items()
    }


def thresholds_lines(ts: ThresholdSet, at: float) -> list[dict[str, Any]]:
    """Lines of type ``thresholds``: each prefix's effective limits at event time ``at``,
    for the store (the report's dashed lines). Write them at start and at each reload."""

    return [
        {
            "time": at,
            "type": "thresholds",
            "prefix": str(p.prefix),
            "name": p.name,
            "mode": p.mode,
            "source": ts.source,
            "thresholds": limits_of(p.thresholds),
            "host_thresholds": limits_of(p.host_thresholds),
        }
        for p in ts.policies
    ]


def record_replay(
    lines: Iterable[Mapping[str, Any]],
    frames: Iterable[RateFrame],
    talkers: Iterable[tuple[int, str, Mapping[str, Sequence[Sequence[Any]]]]],
    store_path: str,
    thresholds: ThresholdSet | None = None,
) -> list[int]:
    """Put a replay in a timeline store: its ``thresholds`` (as lines at its start), its
    lines, its settled RateFrames and its talkers ((engine incident, prefix, top)).
    Incidents the replay left open end at its last data ("replay ended"). Returns the
    store ids of the incidents it recorded."""
    lines, frames = list(lines), sorted(frames, key=lambda f: f.start)
    start = min([x["time"] for x in lines] + [f.start for f in frames[:1]] or [0.0])
    wall = time.time()
    with TimelineStore(store_path) as store:
        if thresholds is not None:
            store.add_many(thresholds_lines(thresholds, start - 1.0), wall)
        store.add_many(lines, wall)
        for k in range(0, len(frames), 500):
            store.add_rateframes(frames[k : k + 500], wall)
        for engine, prefix, top in talkers:
            store.add_talkers(engine, prefix, top, wall_time=wall)
        last = max([x["time"] for x in lines] + [f.start + f.seconds for f in frames[-1:]] or [0])
        store.mark_interrupted("replay ended", at=last, ids=store.created)
        return list(store.created)
