"""The `divertor` command line."""

from __future__ import annotations

import argparse
import logging
import sys


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="divertor", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("decode", help="decode a capture's flow exports as JSON Lines")
    p.add_argument("file", help="pcap or pcapng capture")

    c = sub.add_parser("collect", help="run the UDP flow collector alone")
    c.add_argument(
        "--listen",
        action="append",
        help="host:port or [v6]:port, repeatable (default: 2055, 4739, 6343 on IPv4 and IPv6)",
    )
    c.add_argument("--rcvbuf", type=int, default=32 << 20, help="socket receive buffer, bytes")
    c.add_argument("--stats-file", help="write counters here (JSON) on exit")
    c.add_argument("--state-file", help="template and sampling state, restored and saved")
    c.add_argument("--default-sampling-rate", type=int, default=1)
    c.add_argument(
        "--config",
        help="divertor.yaml: also run rates, verdicts, incidents and the dry-run planner",
    )

    r = sub.add_parser("replay", help="run the whole pipeline on a capture, in dry-run")
    r.add_argument("capture", help="pcap or pcapng capture of flow exports")
    r.add_argument("--config", required=True, help="divertor.yaml")
    r.add_argument(
        "--drain",
        type=float,
        default=0.0,
        help="keep the clock running this many seconds after the capture ends",
    )
    r.add_argument(
        "--store",
        metavar="PATH",
        help="also record the timeline, traffic and talkers in this timeline store",
    )
    r.add_argument("--history", metavar="DIR", help="also record the rates in this history")
    r.add_argument(
        "--allowlist-feed",
        metavar="FILE",
        help="replay this allowlist feed (JSON Lines) beside the capture, on event time",
    )

    t = sub.add_parser("thresholds", help="check or explain a thresholds file")
    tsub = t.add_subparsers(dest="action", required=True)
    tc = tsub.add_parser("check", help="validate a thresholds file")
    tc.add_argument("file")
    tshow = tsub.add_parser("show", help="effective, inherited settings of one prefix")
    tshow.add_argument("file")
    tshow.add_argument("prefix")
    tsub.add_parser("schema", help="print the JSON schema of the thresholds file")
    from divertor import history_cmd

    history_cmd.add_threshold_actions(tsub)  # thresholds recommend|backtest|diff
    history_cmd.add_parser(sub)  # history baseline|info
    from divertor import allowlist_cmd

    allowlist_cmd.add_parser(sub)  # allowlist load|export|show|stats|serve
    from divertor import bgp_cmd

    bgp_cmd.register(sub)  # divert, withdraw, bgp
    from divertor import incidents_cmd

    incidents_cmd.add_parser(sub)  # incidents list|show|export
    from divertor import run_cmd

    run_cmd.add_parser(sub)  # run, status
    from divertor import send_cmd

    send_cmd.add_parser(sub)  # send CAPTURE --to HOST:PORT
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        return _dispatch(args)
    except BrokenPipeError:
        return 0


def _dispatch(args: argparse.Namespace) -> int:
    if hasattr(args, "bgp_handler"):
        from divertor import bgp_cmd

        return bgp_cmd.dispatch(args)
    if args.command == "decode":
        from divertor import decode_cmd

        try:
            return decode_cmd.run(args.file)
        except (OSError, ValueError) as e:
            print(f"divertor decode: {args.file}: {e}", file=sys.stderr)
            return 2
    if args.command == "collect":
        from collector.decoder import DecoderConfig
        from divertor import collect_cmd

        opts = collect_cmd.CollectOptions(
            listen=args.listen or collect_cmd.DEFAULT_LISTEN,
            rcvbuf=args.rcvbuf,
            stats_file=args.stats_file,
            state_file=args.state_file,
            decoder=DecoderConfig(default_sampling_rate=args.default_sampling_rate),
            pipeline_config=args.config,
        )
        return collect_cmd.run(opts)
    if args.command == "send":
        from divertor import send_cmd

        return send_cmd.run(args)
    if args.command in ("run", "status"):
        from divertor import run_cmd

        return run_cmd.run(args) if args.command == "run" else run_cmd.status(args)
    if args.command == "incidents":
        from divertor import incidents_cmd

        return incidents_cmd.dispatch(args)
    if args.command == "allowlist":
        from divertor import allowlist_cmd

        return allowlist_cmd.run(args)
    if args.command == "replay":
        from divertor import replay_cmd

        try:
            return replay_cmd.run(
                args.capture,
                args.config,
                args.drain,
                allowlist_feed=args.allowlist_feed,
                store=args.store,
                history=args.history,
            )
        except (OSError, ValueError) as e:
            print(f"divertor replay: {e}", file=sys.stderr)
            return 2
    if args.command == "history" or getattr(args, "action", None) in history_actions():
        from divertor import history_cmd

        return history_cmd.dispatch(args)
    if args.command == "thresholds":
        import json

        import thresholds

        try:
            if args.action == "check":
                print(thresholds.check(args.file))
            elif args.action == "show":
                print(thresholds.show(thresholds.load(args.file), args.prefix))
            else:
                print(json.dumps(thresholds.json_schema(), indent=2))
        except (OSError, ValueError) as e:
            print(str(e), file=sys.stderr)
            return 1
        return 0
    return 1


def history_actions() -> tuple[str, ...]:
    from divertor import history_cmd

    return history_cmd.THRESHOLD_ACTIONS


if __name__ == "__main__":
    sys.exit(main())
