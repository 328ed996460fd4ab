"""`divertor run` (the daemon) and `divertor status` (what it is doing, in a terminal)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import time
import urllib.error
import urllib.request
from typing import Any

log = logging.getLogger(__name__)
DEFAULT_URL = "http://127.0.0.1:9180"


def add_parser(sub: Any) -> None:
    from divertor.bgp_cmd import DEFAULT_CONFIG

    r = sub.add_parser(
        "run",
        help="run the whole engine live: flows -> rates -> incidents -> BGP, timeline, API",
        description="SIGHUP reloads the configuration and thresholds (the last good stays "
        "on error); SIGTERM stops without withdrawing anything.",
    )
    r.add_argument("--config", default=DEFAULT_CONFIG, help="divertor.yaml")
    r.add_argument("--no-exabgp", action="store_true", help="plug-in mode: ExaBGP runs apart")
    r.add_argument(
        "--withdraw-on-stop", action="store_true", help="withdraw every diversion on SIGTERM"
    )
    r.add_argument("--stop-exabgp", action="store_true", help="stop ExaBGP on SIGTERM")
    s = sub.add_parser("status", help="what the running engine is doing (its HTTP API)")
    s.add_argument("--url", default=DEFAULT_URL, help=f"the API (default {DEFAULT_URL})")
    s.add_argument("--json", action="store_true", help="the raw /status document")


def run(args: argparse.Namespace) -> int:
    from divertor.daemon import Daemon, RunOptions

    daemon = Daemon(
        RunOptions(
            config=args.config,
            manage_exabgp=not args.no_exabgp,
            withdraw_on_stop=args.withdraw_on_stop,
            stop_exabgp=args.stop_exabgp,
        )
    )
    try:
        daemon.start()
    except (OSError, ValueError) as e:
        print(f"divertor run: {e}", file=sys.stderr)
        return 2

    def _stop(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping", signum)
        daemon.stop_event.set()

    def _hup(_signum: int, _frame: object) -> None:
        daemon.reload_requested.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGHUP, _hup)
    try:
        daemon.run()
    finally:
        daemon.stop()
    return 0


def status(args: argparse.Namespace) -> int:
    url = args.url.rstrip("/") + "/status"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            doc = json.load(resp)
    except (urllib.error.URLError, OSError, ValueError) as e:
        print(f"divertor status: {url}: {e} (is `divertor run` running?)", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(doc, indent=1, sort_keys=True))
        return 0
    print("\n".join(as_text(doc)))
    return 0


def _si(v: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.1f}{unit}"
    return f"{v:.0f}"


def as_text(doc: dict[str, Any]) -> list[str]:
    """The /status document for a terminal."""
    up = doc.get("uptime", 0.0)
    out = [
        f"divertor run, up {up / 3600:.1f} h, mode {doc.get('mode')}, config {doc.get('config')}",
        f"flows: {doc.get('datagrams', 0):,} datagrams, {doc.get('flow_records', 0):,} records,"
        f" lag {doc.get('decode_lag', 0.0):.2f}s; dropped: {doc.get('socket_drops', 0):,} by "
        f"the kernel, {doc.get('overload_datagrams', 0):,} at the queue",
    ]
    reload = doc.get("last_reload") or {}
    if reload:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(reload["time"]))
        out.append(f"last reload {when} UTC: {reload['result']}: {reload['reason']}")
    out.append("prefixes:")
    rates = doc.get("rates", {})
    for prefix, t in sorted(doc.get("prefixes", {}).items()):
        r = rates.get(prefix)
        total = f"{_si(r[0][1])} pps {_si(r[0][0])}bit/s" if r else "-"
        inc = f" incident {t['incident']} {t.get('vector') or ''}" if t.get("incident") else ""
        out.append(f"  {prefix:<24} {t['state']:<13} {total}{inc}")
    bgp = doc.get("bgp", {})
    sessions = (bgp.get("bridge") or {}).get("sessions") or {}
    out.append(
        "bgp: target "
        + (", ".join(bgp.get("target", {})) or "-")
        + "; announced "
        + (", ".join(bgp.get("announced", {})) or "-")
        + "; sessions "
        + (", ".join(f"{p} {s}" for p, s in sessions.items()) or "-")
    )
    for p in bgp.get("pending", []):
        out.append(f"  pending approval {p['id']}: {p['prefix']} ({p['reason']})")
    exporters = doc.get("exporters", {})
    out.append(f"exporters: {len(exporters)}")
    for name, st in exporters.items():
        errors = sum(st.get("errors", {}).values())
        out.append(
            f"  {name:<24} {st['datagrams']:,} datagrams {st['records']:,} records, "
            f"{errors:,} errors"
        )
    return out
