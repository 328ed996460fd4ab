"""The `divertor` command line."""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
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
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "decode":
        from divertor import decode_cmd

        try:
            return decode_cmd.run(args.file)
        except (OSError, ValueError) as e:
            print(f"divertor decode: {args.file}: {e}", file=sys.stderr)
            return 2
        except BrokenPipeError:
            return 0
    if args.command == "collect":
        from collector.decoder import DecoderConfig
        from divertor import collect_cmd

        opts = collect_cmd.CollectOptions(
            listen=args.listen or collect_cmd.DEFAULT_LISTEN,
            rcvbuf=args.rcvbuf,
            stats_file=args.stats_file,
            state_file=args.state_file,
            decoder=DecoderConfig(default_sampling_rate=args.default_sampling_rate),
        )
        return collect_cmd.run(opts)
    return 1


if __name__ == "__main__":
    sys.exit(main())
