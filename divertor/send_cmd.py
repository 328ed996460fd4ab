"""`divertor send CAPTURE --to HOST:PORT`: replay a capture's flow exports over UDP, at its pace.

Every UDP datagram of a pcap / pcapng capture (see collector/sources/pcap.py) is sent to a
collector (a running `divertor run` or `divertor collect`) at the capture's own inter-arrival
times (divided by ``--speed``), so that a scenario can be watched live: rates, verdicts,
an incident, a route.

Retiming (default): the export header's time moves by one shift, the same for every
datagram, ``now - arrival time of the first datagram sent`` (whole seconds), so the first
datagram carries "now" and each exporter keeps its clock offset: NetFlow v5 / v9
``unix_secs`` (bytes 8..11), IPFIX ``exportTime`` (bytes 4..7). v5 / v9 record times are
sysUpTime-relative and move with the header. IPFIX absolute record times
(flowStartMilliseconds, ...) are *not* rewritten: a warning says so once. sFlow carries no
absolute time and is sent as it is.

Exporters: the collector knows an exporter by its source address (and v9 source id / IPFIX
observation domain, which stay in the payload). Exporter number i (in order of first
appearance in the capture) is sent from its own socket bound to ``--source-base`` + i
(default 127.0.0.1 for an IPv4 loopback target: Linux routes all of 127/8 to lo). For an
IPv6 loopback target all are sent from ::1 (distinct source ports); for any other target
from the wildcard address (distinct source ports) unless ``--source-base`` names addresses
of this host.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import socket
import struct
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from collector.sources.pcap import PcapError, PcapReader
from collector.sources.udp import parse_listen

_U32 = struct.Struct("!I")
#: a slice ends once the capture is this far past its end (tolerates slightly unordered frames)
_SLICE_SLACK = 60.0

EPILOG = """\
Retiming (default on; --no-retime sends the payloads unchanged) shifts the export header's
time by one amount for every datagram (now - arrival of the first datagram sent), so the
exporters keep their clock offsets: NetFlow v5/v9 unix_secs, IPFIX exportTime. v5/v9 record
times are relative to sysUpTime and move with the header. IPFIX absolute record times
(flowStartMilliseconds etc.) are NOT rewritten: records then lie in the past. sFlow has no
absolute time and is sent as is.

--speed F divides the gaps between datagrams, but not the durations inside the records, and
the header times keep the capture's spacing: at a speed other than 1 the rates the collector
computes do not mean what they meant in the capture. --speed 1 is the faithful mode.

Each capture exporter gets its own socket: from --source-base + i (default 127.0.0.1,
127.0.0.2, ... for an IPv4 loopback target), from ::1 with distinct ports for an IPv6 one
(the collector then sees one exporter), from the wildcard address for any other target.
Progress goes to stderr; a one-line JSON summary to stdout. Exit 2: bad arguments or an
unreadable capture.
"""


def add_parser(sub: Any) -> None:
    """Add `send` to the `divertor` command line."""
    p = sub.add_parser(
        "send",
        help="replay a capture's flow exports over UDP at its own pace",
        description="Replay the flow-export datagrams of a capture over UDP at its own pace.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("capture", help="pcap or pcapng capture of flow exports")
    p.add_argument(
        "--to", required=True, metavar="HOST:PORT", help="the collector: host:port or [v6]:port"
    )
    p.add_argument(
        "--speed", type=float, default=1.0, metavar="F", help="divide the gaps by F (default 1)"
    )
    p.add_argument(
        "--from",
        dest="start",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="start this far after the capture's first datagram",
    )
    p.add_argument("--duration", type=float, metavar="SECONDS", help="send only this much")
    p.add_argument(
        "--no-retime",
        dest="retime",
        action="store_false",
        help="send the payloads unchanged (export header times stay in the past)",
    )
    p.add_argument(
        "--source-base",
        metavar="ADDRESS",
        help="exporter i is sent from ADDRESS + i (default 127.0.0.1 for an IPv4 loopback --to)",
    )
    p.add_argument(
        "--progress", type=float, default=5.0, metavar="SECONDS", help="0: no progress lines"
    )


# ---------------------------------------------------------------------- pure parts
def parse_target(text: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` to (IP address text, port); ValueError if bad. The
    split is the collector's (``parse_listen``); a target also needs a host and a port > 0."""
    try:
        host, port = parse_listen(text)
    except ValueError as e:
        raise ValueError(f"--to {text!r}: {e}") from None
    if text.startswith(":") or port == 0:
        raise ValueError(f"--to {text!r}: expected host:port or [v6]:port, port 1-65535")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if text.startswith("["):
            raise ValueError(f"--to {text!r}: {host!r} is not an IPv6 address") from None
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
        except (socket.gaierror, UnicodeError) as e:
            raise ValueError(f"--to {text!r}: cannot resolve {host!r}: {e}") from None
        host = str(infos[0][4][0])
    return host, port


def header_time(payload: bytes) -> tuple[int, str] | None:
    """(offset of the export header's unix seconds, format), or None if it has none."""
    if len(payload) < 8:
        return None
    version = (payload[0] << 8) | payload[1]
    if version in (5, 9) and len(payload) >= 12:
        return 8, f"netflow{version}"
    if version == 10:
        return 4, "ipfix"
    return None  # sFlow (a 32-bit version: its first two bytes are 0) or unknown


def retime(payload: bytes, shift: int) -> tuple[bytes, str | None]:
    """The payload with its header time moved by ``shift`` seconds (modulo 2^32), its format."""
    where = header_time(payload)
    if where is None:
        return payload, None
    offset, kind = where
    old = _U32.unpack_from(payload, offset)[0]
    new = _U32.pack((old + shift) & 0xFFFFFFFF)
    return payload[:offset] + new + payload[offset + 4 :], kind


def source_addresses(
    count: int, target: str, source_base: str | None
) -> tuple[list[tuple[str, int]], str | None]:
    """The (address, port) each exporter binds to (port 0: any), and a note for the operator."""
    dest = ipaddress.ip_address(target)
    if source_base is not None:
        base = ipaddress.ip_address(source_base)
        if base.version != dest.version:
            raise ValueError(f"--source-base {source_base} is not of the family of --to")
        return [(str(base + i), 0) for i in range(count)], None
    if dest.version == 4 and dest.is_loopback:
        base4 = ipaddress.IPv4Address("127.0.0.1")
        if count > (1 << 24) - 2:
            raise ValueError("too many exporters for 127/8")
        return [(str(base4 + i), 0) for i in range(count)], None
    if dest.is_loopback:
        note = (
            "all exporters are sent from ::1 (distinct source ports); the collector keys "
            "exporters by source address, so they share one identity there; send to an "
            "IPv4 loopback address (127.0.0.1:PORT) to keep them apart"
        )
        return [("::1", 0)] * count, note if count > 1 else None
    wildcard = "::" if dest.version == 6 else "0.0.0.0"
    note = (
        f"{target} is not a loopback address: sending from the wildcard address, one socket "
        "per exporter with distinct source ports; the collector sees this host as one "
        "exporter (use --source-base with addresses of this host to keep them apart)"
    )
    return [(wildcard, 0)] * count, note


# ---------------------------------------------------------------------- the capture
@dataclass
class Plan:
    """What a pre-pass over the capture found: the slice to send and its exporters."""

    exporters: list[str] = field(default_factory=list)  # numbered in order of first appearance
    sending: dict[str, int] = field(default_factory=dict)  # exporter -> datagrams in the slice
    datagrams: int = 0
    first: float | None = None  # arrival of the first datagram of the slice
    last: float | None = None


def datagrams(
    path: str, start: float, duration: float | None
) -> Iterator[tuple[bool, float, str, bytes]]:
    """(in the slice, arrival, exporter, payload) of every datagram up to the slice's end."""
    origin: float | None = None
    for ts, _frame, src, payload in PcapReader(path):
        if origin is None:
            origin = ts
        offset = ts - origin
        inside = offset >= start and (duration is None or offset < start + duration)
        if not inside and duration is not None and offset >= start + duration + _SLICE_SLACK:
            return
        yield inside, ts, src, payload


def scan(path: str, start: float, duration: float | None) -> Plan:
    """The pre-pass: exporters, count and span of the slice (PcapError/OSError if unreadable)."""
    plan = Plan()
    known: set[str] = set()
    for inside, ts, src, _payload in datagrams(path, start, duration):
        if src not in known:
            known.add(src)
            plan.exporters.append(src)
        if inside:
            plan.sending[src] = plan.sending.get(src, 0) + 1
            plan.datagrams += 1
            plan.first = ts if plan.first is None else min(plan.first, ts)
            plan.last = ts if plan.last is None else max(plan.last, ts)
    return plan


# ---------------------------------------------------------------------- the command
def _err(message: str) -> None:
    print(f"divertor send: {message}", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    try:
        host, port = parse_target(args.to)
        if not args.speed > 0:
            raise ValueError(f"--speed must be > 0, not {args.speed}")
        if args.start < 0:
            raise ValueError("--from must be >= 0")
        if args.duration is not None and not args.duration > 0:
            raise ValueError("--duration must be > 0")
        if args.source_base is not None:
            ipaddress.ip_address(args.source_base)
    except ValueError as e:
        _err(str(e))
        return 2
    try:
        plan = scan(args.capture, args.start, args.duration)
    except (OSError, PcapError) as e:
        _err(f"{args.capture}: {e}")
        return 2
    if plan.first is None or plan.last is None:
        _err(f"{args.capture}: no UDP datagram in the slice to send")
        return 2
    try:
        sockets = _open(plan, host, args.source_base)
    except (OSError, ValueError) as e:
        _err(str(e))
        return 2
    try:
        return _send(args, plan, sockets, (host, port))
    finally:
        for sock in sockets.values():
            sock.close()


def _open(plan: Plan, host: str, source_base: str | None) -> dict[str, socket.socket]:
    binds, note = source_addresses(len(plan.exporters), host, source_base)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sockets: dict[str, socket.socket] = {}
    try:
        for exporter, addr in zip(plan.exporters, binds, strict=True):
            if exporter not in plan.sending:
                continue
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sockets[exporter] = sock
            try:
                sock.bind(addr)
            except OSError as e:
                raise OSError(f"cannot bind {addr[0]} for exporter {exporter}: {e}") from None
    except BaseException:
        for sock in sockets.values():
            sock.close()
        raise
    if note:
        _err("note: " + note)
    for exporter, sock in sockets.items():
        src = _name(sock.getsockname())
        _err(f"exporter {exporter} -> {src} ({plan.sending[exporter]:,} datagrams)")
    return sockets


def _name(sockname: Any) -> str:
    addr, port = sockname[0], sockname[1]
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def _send(
    args: argparse.Namespace,
    plan: Plan,
    sockets: dict[str, socket.socket],
    dest: tuple[str, int],
) -> int:
    assert plan.first is not None and plan.last is not None
    speed: float = args.speed
    span = plan.last - plan.first
    shift = round(time.time() - plan.first) if args.retime else 0
    _err(
        f"sending {plan.datagrams:,} datagrams over {span:.1f} s of capture "
        f"(x{speed:g}: {span / speed:.1f} s) to {_name(dest)}"
        + (f"; header times +{shift} s" if args.retime else "; payloads unchanged")
    )
    sent = nbytes = errors = 0
    per: dict[str, list[int]] = {e: [0, 0] for e in sockets}
    max_lag = 0.0
    warned = False
    t0 = time.monotonic()
    last_progress = t0
    code = 0
    try:
        for inside, ts, src, payload in datagrams(args.capture, args.start, args.duration):
            if not inside:
                continue
            due = t0 + (ts - plan.first) / speed
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
                now = time.monotonic()
            max_lag = max(max_lag, now - due)
            data = payload
            if args.retime:
                data, kind = retime(payload, shift)
                if kind == "ipfix" and not warned:
                    warned = True
                    _err(
                        "warning: IPFIX: only the export time is retimed; absolute record "
                        "times (flowStartMilliseconds etc.) keep the capture's time"
                    )
            try:
                sockets[src].sendto(data, dest)
            except OSError as e:
                errors += 1
                if errors == 1:
                    _err(f"send error (counted, going on): {e}")
                continue
            sent += 1
            nbytes += len(data)
            per[src][0] += 1
            per[src][1] += len(data)
            if args.progress > 0 and now - last_progress >= args.progress:
                last_progress = now
                _err(
                    f"{sent:,} datagrams, {now - t0:.1f} s elapsed, capture "
                    f"+{ts - plan.first:.1f} s, lag {now - due:.3f} s"
                )
    except KeyboardInterrupt:
        _err("interrupted")
        code = 130
    except (OSError, PcapError) as e:  # the file changed since the pre-pass
        _err(f"{args.capture}: {e}")
        code = 2
    elapsed = time.monotonic() - t0
    summary = {
        "datagrams": sent,
        "bytes": nbytes,
        "seconds": round(elapsed, 3),
        "exporters": {
            e: {"source": _name(sockets[e].getsockname()), "datagrams": n, "bytes": b}
            for e, (n, b) in per.items()
        },
        "send_errors": errors,
        "capture_seconds": round(span, 3),
        "speed": speed,
        "header_shift_seconds": shift,
        "max_lag_seconds": round(max_lag, 3),
    }
    print(json.dumps(summary), flush=True)
    return code
