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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "decode":
        from divertor import decode_cmd

        try:
            return decode_cmd.run(args.file)
        except (OSError, ValueError) as e:
            print(f"divertor decode: {args.file}: {e}", file=sys.stderr)
            return 2
        except BrokenPipeError:
            return 0
    return 1


if __name__ == "__main__":
    sys.exit(main())
