"""`divertor divert`, `divertor withdraw` and `divertor bgp ...`: the BGP side's commands.

They all work on the persisted BGP store (``bgp.state_dir``/bgp.sqlite), which the engine
(``divertor bgp run``, later ``divertor run``) and ExaBGP's bridge process share: an
operator's action is one transaction, recorded in the timeline with who and why, and the
bridge is woken at once. See docs/bgp.md.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import bgp
import thresholds
from bgp import exabgp_conf, rpki
from bgp.bridge import SOCKET_NAME, STORE_NAME
from bgp.engine import Engine
from bgp.planner import SafetyConfig
from bgp.policy import Candidate, Policy, candidates, defaults
from bgp.store import Store
from bgp.supervisor import Supervisor
from divertor import config as dconfig
from thresholds.model import ThresholdSet

DEFAULT_CONFIG = os.environ.get("DIVERTOR_CONFIG", "/etc/divertor/divertor.yaml")


@dataclass
class Setup:
    """The BGP side as configured: policy, paths, and how ExaBGP is run."""

    config: dconfig.Config
    thresholds: ThresholdSet
    policy: Policy
    state_dir: str

    @property
    def store_path(self) -> str:
        return os.path.join(self.state_dir, STORE_NAME)

    @property
    def socket_path(self) -> str:
        return os.path.join(self.state_dir, SOCKET_NAME)

    def candidates(self) -> list[Candidate]:
        return candidates(self.thresholds)

    def engine(self) -> Engine:
        return Engine(Store(self.store_path), self.policy, self.socket_path)

    def exabgp_config(self) -> str:
        b = self.config.bgp
        if b.local_as is None or b.router_id is None:
            raise ValueError("bgp.local_as and bgp.router_id are needed to run ExaBGP")
        return exabgp_conf.generate(
            local_as=b.local_as,
            router_id=b.router_id,
            peers=b.peers,
            process_run=os.path.join(self.state_dir, "bridge.sh"),
        )

    def bridge_script(self) -> str:
        root = os.path.dirname(os.path.dirname(os.path.abspath(bgp.__file__)))
        return exabgp_conf.bridge_script(sys.executable, self.state_dir, pythonpath=root)

    def supervisor(self) -> Supervisor:
        b = self.config.bgp
        command = b.exabgp_command or [sys.executable, "-m", "exabgp"]
        user = b.exabgp_user or getpass.getuser()
        return Supervisor(self.state_dir, command, exabgp_conf.environment(user))


def make_policy(cfg: dconfig.Config, ts: ThresholdSet) -> Policy:
    """The BGP safety policy of a configuration (the daemon, the CLI and replay share it)."""
    base = os.path.dirname(os.path.abspath(cfg.source)) if cfg.source else os.getcwd()
    b = cfg.bgp
    protected = tuple(p.prefix for p in ts.policies)
    vrps = None
    if b.rpki_vrp_file:
        vrps = rpki.load(os.path.join(base, b.rpki_vrp_file)).restrict(protected)
    return Policy(
        SafetyConfig(
            protected=protected,
            max_length_v4=b.max_prefix_length_v4,
            max_length_v6=b.max_prefix_length_v6,
            max_diversions=b.max_diversions,
            max_changes_per_hour=b.max_changes_per_hour,
            flap_hold=b.dampening_hold,
            flap_max_hold=b.dampening_max_hold,
            flap_reset=b.dampening_reset,
        ),
        mode=b.mode,
        next_hop_v4=b.next_hop_v4,
        next_hop_v6=b.next_hop_v6,
        vrps=vrps,
        origin_as=b.origin_as or b.local_as,
        rpki_not_found=b.rpki_not_found,
        defaults=defaults(ts),
    )


def build(path: str) -> Setup:
    """Load divertor.yaml, its thresholds and VRP file; ValueError/OSError if invalid."""
    cfg = dconfig.load(path)
    ts = thresholds.load(cfg.thresholds)
    base = os.path.dirname(os.path.abspath(path))
    return Setup(cfg, ts, make_policy(cfg, ts), os.path.join(base, cfg.bgp.state_dir))


def who(args: argparse.Namespace) -> str:
    if getattr(args, "who", None):
        return str(args.who)
    return os.environ.get("SUDO_USER") or getpass.getuser()


# ---------------------------------------------------------------------- argparse
def register(sub: Any) -> None:
    """Add `divert`, `withdraw` and `bgp` to the `divertor` command line."""
    d = sub.add_parser(
        "divert",
        help="divert a prefix by hand, or approve/reject a pending diversion",
        description="divertor divert PREFIX --reason WHY | divertor divert approve|reject ID",
    )
    d.add_argument("target", help="PREFIX, or 'approve' / 'reject'")
    d.add_argument("id", nargs="?", type=int, help="approval ID (with approve/reject)")
    d.add_argument("--next-hop", help="default: the covering prefix's announce.next_hop")
    d.add_argument("--community", action="append", help="repeatable (default: the prefix's)")
    d.add_argument("--large-community", action="append", help="repeatable")
    _common(d, reason_required=False)
    d.set_defaults(bgp_handler=_divert)

    w = sub.add_parser("withdraw", help="withdraw a diversion by hand")
    w.add_argument("prefix")
    _common(w, reason_required=True)
    w.set_defaults(bgp_handler=_withdraw)

    b = sub.add_parser("bgp", help="the BGP side: run ExaBGP, status, checks")
    bsub = b.add_subparsers(dest="bgp_action", required=True)
    for name, helptext in (
        ("run", "start (or adopt) ExaBGP and keep it running; apply the time rules"),
        ("status", "target, announced routes, pending approvals, sessions, recent events"),
        ("check", "configuration-time checks (bounds, RPKI) of what may be diverted"),
        ("config", "print the generated exabgp.conf"),
        ("bridge", "run as ExaBGP's API process (same as python -m bgp.bridge)"),
        ("stop", "stop the ExaBGP that `divertor bgp run` started (its peers drop the routes)"),
    ):
        p = bsub.add_parser(name, help=helptext)
        p.add_argument("--config", default=DEFAULT_CONFIG, help="divertor.yaml")
        if name == "status":
            p.add_argument("--events", type=int, default=20, help="last N timeline events")
        if name == "run":
            p.add_argument("--stop-exabgp", action="store_true", help="stop ExaBGP on exit")
            p.add_argument("--no-exabgp", action="store_true", help="plug-in mode: no ExaBGP")
    b.set_defaults(bgp_handler=_bgp)


def _common(p: argparse.ArgumentParser, reason_required: bool) -> None:
    p.add_argument("--reason", required=reason_required, help="why (recorded)")
    p.add_argument("--who", help="who (default: the Unix user, or $SUDO_USER)")
    p.add_argument("--config", default=DEFAULT_CONFIG, help="divertor.yaml")


def dispatch(args: argparse.Namespace) -> int:
    try:
        handler = args.bgp_handler
        return int(handler(args))
    except (OSError, ValueError, LookupError) as e:
        print(f"divertor {args.command}: {e}", file=sys.stderr)
        return 2


def _print(events: list[dict[str, Any]]) -> None:
    for e in events:
        print(json.dumps(e, sort_keys=True), flush=True)


def _divert(args: argparse.Namespace) -> int:
    setup = build(args.config)
    engine = setup.engine()
    now = time.time()
    if args.target in ("approve", "reject"):
        if args.id is None:
            raise ValueError(f"divert {args.target}: which ID?")
        events = engine.decide(
            args.id,
            approve=args.target == "approve",
            who=who(args),
            reason=args.reason or args.target + "d",
            now=now,
        )
        _print(events)
        return 0
    if not args.reason:
        raise ValueError("divert PREFIX needs --reason")
    events = engine.divert(
        args.target,
        reason=args.reason,
        who=who(args),
        now=now,
        next_hop=args.next_hop,
        communities=args.community,
        large_communities=args.large_community,
    )
    _print(events)
    return 1 if any(e["type"] == "refuse" for e in events) else 0


def _withdraw(args: argparse.Namespace) -> int:
    setup = build(args.config)
    events = setup.engine().withdraw(
        args.prefix, reason=args.reason, who=who(args), now=time.time()
    )
    _print(events)
    return 0 if any(e["type"] == "withdraw" for e in events) else 1


def _bgp(args: argparse.Namespace) -> int:
    action = args.bgp_action
    if action == "bridge":
        from bgp import bridge

        return bridge.main(["--config", args.config])
    setup = build(args.config)
    if action == "config":
        print(setup.exabgp_config(), end="")
        return 0
    if action == "check":
        events = setup.policy.preflight(setup.candidates(), time.time())
        _print(events)
        return 1 if any(e["type"] == "refuse" for e in events) else 0
    if action == "status":
        engine = setup.engine()
        status = engine.status()
        with engine.store.read() as tx:
            after = max(0, tx.last_event_id() - args.events)
            status["events"] = [e for _, e in tx.events(after)]
        print(json.dumps(status, indent=1, sort_keys=True))
        return 0
    if action == "stop":
        _print(setup.supervisor().stop(time.time()))
        return 0
    return run(setup, stop_exabgp=args.stop_exabgp, manage=not args.no_exabgp)


def run(setup: Setup, *, stop_exabgp: bool = False, manage: bool = True) -> int:
    """The engine's BGP loop: ExaBGP kept running, time rules applied every poll."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    engine = setup.engine()
    sup = setup.supervisor() if manage else None
    now = time.time()
    events = engine.load(setup.candidates(), now)
    if sup is not None:
        changed = sup.write_config(setup.exabgp_config(), setup.bridge_script())
        started = sup.ensure(now)
        if changed and any(e["event"] == "adopted" for e in started):
            started += sup.reload(now)
        events += started
    events += engine.tick(now)
    _record(engine, events)
    while not stop.wait(setup.config.bgp.poll_interval):
        now = time.time()
        events = sup.ensure(now) if sup is not None else []
        events += engine.tick(now)
        _record(engine, events)
    if sup is not None and stop_exabgp:
        _record(engine, sup.stop(time.time()))
    return 0


def _record(engine: Engine, events: list[dict[str, Any]]) -> None:
    """Print the events; those not recorded by the engine (supervisor) go to the store."""
    extra = [e for e in events if e.get("type") == "supervisor"]
    if extra:
        with engine.store.write() as tx:
            tx.add_events(extra)
    _print(events)


def main(argv: list[str] | None = None) -> int:
    """``python -m divertor.bgp_cmd ...``: the same commands without the rest of the CLI."""
    parser = argparse.ArgumentParser(prog="divertor")
    register(parser.add_subparsers(dest="command", required=True))
    return dispatch(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
