"""`divertor allowlist load|export|show|stats|serve`: the durable allowlist from the shell.

Every command works on the store (``--store FILE`` or ``allowlist.store`` of ``--config``).
``load`` applies a feed (JSON Lines of registrations, on their own times) or a full snapshot
(one address or prefix per line) and prints refused lines as ``file:line: reason`` on stderr;
``export`` writes the set in full or as the delta since a version, to a file (atomically),
stdout or a URL; ``show`` tells whether an address is on the list and why; ``stats`` counts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

FORMATS = ("plain", "cidr", "ipset", "nft", "json")


def add_parser(sub: Any) -> None:
    """Register `allowlist` and its actions on the CLI's subparsers."""
    a = sub.add_parser("allowlist", help="the dynamic allowlist: load, export, show, stats")
    asub = a.add_subparsers(dest="action", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--store", help="SQLite store of the allowlist")
        p.add_argument("--config", help="divertor.yaml (its allowlist.store, names, limits)")

    lo = asub.add_parser("load", help="apply a feed (JSON Lines) or a snapshot to the store")
    common(lo)
    lo.add_argument("file")
    lo.add_argument("--format", choices=("auto", "feed", "snapshot"), default="auto")
    lo.add_argument("--source", help="source name (default: feed, or snapshot)")
    lo.add_argument("--now", help="then move event time to this Unix time, or 'now'")
    ex = asub.add_parser("export", help="the set in full, or the delta since a version")
    common(ex)
    ex.add_argument("--format", choices=FORMATS, default="plain")
    ex.add_argument("--since", type=int, help="delta since this version")
    ex.add_argument("--output", "-o", help="write here atomically (default: stdout)")
    ex.add_argument("--push", metavar="URL", help="POST it to this URL (with retries)")
    ex.add_argument("--token", help="bearer token for --push")
    sh = asub.add_parser("show", help="is this address on the allowlist, and why")
    common(sh)
    sh.add_argument("ip")
    st = asub.add_parser("stats", help="entries, sources, versions, memory")
    common(st)
    sv = asub.add_parser("serve", help="serve the HTTP API (batch POST) on the store")
    common(sv)
    sv.add_argument("--listen", default="127.0.0.1:8081")
    sv.add_argument("--token", required=True)


def run(args: argparse.Namespace) -> int:
    try:
        return _ACTIONS[args.action](args)
    except (OSError, ValueError, LookupError) as e:
        print(f"divertor allowlist {args.action}: {e}", file=sys.stderr)
        return 2


def _open(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """(config section, store, state) with the state loaded from the store."""
    from allowlist.config import AllowlistConfig
    from allowlist.state import AllowlistState
    from allowlist.store import Store
    from divertor import config as config_mod

    cfg = config_mod.load(args.config).allowlist if args.config else AllowlistConfig()
    path = args.store or cfg.store
    if not path:
        raise ValueError("no store: give --store FILE or --config with allowlist.store")
    store = Store(path)
    state = AllowlistState(record=True)
    store.load(state)
    return cfg, store, state


def _load(args: argparse.Namespace) -> int:
    from allowlist.feed import FeedCursor, parse_lines, parse_snapshot

    cfg, store, state = _open(args)
    with open(args.file, "rb") as fh:
        data = fh.read()
    kind = args.format
    if kind == "auto":
        first = next((ln for ln in data.splitlines() if ln.strip()), b"")
        kind = "feed" if first.lstrip().startswith(b"{") else "snapshot"
    before = state.version
    if kind == "feed":
        regs, bad = parse_lines(data.splitlines(), None, cfg.limits())
        cursor = FeedCursor(regs, args.source or "feed")
        if regs:
            cursor.apply_until(state, max(r.time for r in regs))
        summary: dict[str, Any] = {"applied": len(regs), "results": cursor.results}
    else:
        keys, bad = parse_snapshot(data.decode("utf-8", "replace"), cfg.limits())
        if not keys:
            raise ValueError(f"{args.file}: no valid entry in the snapshot; nothing changed")
        now = state.now if state.now > 0 else time.time()
        added, removed = state.replace_source(args.source or "snapshot", keys, now)
        summary = {"entries": len(keys), "added_or_refreshed": added, "removed": removed}
    for r in bad:
        print(f"{args.file}:{r.line}: refused: {r.reason}", file=sys.stderr)
    if args.now:
        state.advance(time.time() if args.now == "now" else float(args.now))
    store.flush(state)
    if state.version - store.checkpoint_version > 100_000:
        store.checkpoint(state, cfg.keep_versions)
    summary.update(refused=len(bad), version=state.version, changes=state.version - before)
    summary["entries_now"] = len(state)
    print(json.dumps(summary))
    store.close()
    return 1 if bad and kind == "feed" and not summary["applied"] else 0


def _export(args: argparse.Namespace) -> int:
    from allowlist import export
    from allowlist.push import Payload, Pusher
    from allowlist.service import delta_since

    cfg, store, state = _open(args)
    keys = state.keys()
    if args.since is not None:
        d = delta_since(state, store, args.since)
        text = export.delta(keys, d, args.format, cfg.names())
    else:
        text = export.full(keys, args.format, state.version, cfg.names())
    store.close()
    if args.output:
        export.write_atomic(args.output, text)
    elif not args.push:
        sys.stdout.write(text)
    if args.push:
        pusher = Pusher(args.push, args.token, backoff=0.5, max_attempts=5).start()
        pusher.offer(Payload(text.encode(), state.version, args.since is None))
        pusher.wait_idle(120)
        pusher.close()
        ok = pusher.stats.sent == 1
        print(
            f"push {args.push}: {'ok' if ok else 'failed'} "
            f"(HTTP {pusher.stats.last_status}, {pusher.stats.attempts} attempts)",
            file=sys.stderr,
        )
        return 0 if ok else 1
    return 0


def _show(args: argparse.Namespace) -> int:
    import numpy as np

    from allowlist import addr

    _cfg, store, state = _open(args)
    key = addr.parse(args.ip, addr.Limits(0, 0))
    first, last = addr.span(key)
    covering = [
        k for k in state.index.prefix_keys() if addr.span(k)[0] <= first and last <= addr.span(k)[1]
    ]
    held = [key] if key in state else []
    entries = [
        {"entry": addr.text(k), "source": s, "expires": None if e == float("inf") else e}
        for k in held + sorted(covering)
        for s, e in sorted(state.holders(k).items())
    ]
    member = bool(entries)
    if addr.is_host(key):
        v = key >> 8
        hi, lo = np.array([v >> 64], np.uint64), np.array([v & (2**64 - 1)], np.uint64)
        member = bool(state.index(hi, lo)[0])
    out = {"ip": addr.text(key), "allowlisted": member, "entries": entries}
    out.update(version=state.version, now=state.now)
    print(json.dumps(out))
    store.close()
    return 0 if member else 1


def _stats(args: argparse.Namespace) -> int:
    from allowlist import addr

    started = time.monotonic()
    _cfg, store, state = _open(args)
    loaded = time.monotonic() - started
    by_source = {name: len(s.expires) for name, s in state.sources.items()}
    keys = state.keys()
    v4 = sum(1 for k in keys if addr.is_v4(k))
    prefixes = len(state.index.prefixes)
    out: dict[str, Any] = {
        "entries": len(keys),
        "ipv4": v4,
        "ipv6": len(keys) - v4,
        "prefixes": prefixes,
        "by_source": by_source,
        "version": state.version,
        "now": state.now,
        "index_bytes": state.index.nbytes,
        "load_seconds": round(loaded, 3),
        "store": store.stats(),
    }
    print(json.dumps(out))
    store.close()
    return 0


def _serve(args: argparse.Namespace) -> int:
    from allowlist.api import ApiHandler
    from allowlist.http import start_api_server

    cfg, store, state = _open(args)
    host, _, port = args.listen.rpartition(":")
    server = start_api_server(ApiHandler(state, args.token, limits=cfg.limits()), host, int(port))
    print(f"allowlist API on http://{args.listen}/allowlist", file=sys.stderr)
    try:
        while True:
            time.sleep(1.0)
            with server.lock:
                state.advance(time.time())
                store.flush(state)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        store.flush(state)
        store.close()
    return 0


_ACTIONS = {"load": _load, "export": _export, "show": _show, "stats": _stats, "serve": _serve}
