"""Capture files as a datagram source: UDP datagrams out of pcap / pcapng, and a pcap writer.

Reads classic pcap (either byte order, microsecond or nanosecond magic) and pcapng (sections of
either byte order, interfaces with ``if_tsresol`` / ``if_tsoffset``, enhanced, simple and
obsolete packet blocks). Link types: Ethernet (802.1Q / QinQ tags, MPLS), Linux cooked SLL and
SLL2, raw IP, BSD loopback / null. IPv4 (options, fragments reassembled) and IPv6 (extension
headers skipped, fragments reassembled) carrying UDP.

Frame numbers count every packet of the file (1-based, as tshark numbers them), whether or not
it carries UDP. A reassembled datagram carries the frame number and time of the fragment that
completed it. Nothing is read until the iterator is advanced.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from collector.datagram import DatagramBatch

#: (arrival unix seconds, 1-based frame number, source address text, UDP payload)
Datagram = tuple[float, int, str, bytes]

_CLASSIC_MAGIC = {
    b"\xd4\xc3\xb2\xa1": ("<", 1_000_000),
    b"\xa1\xb2\xc3\xd4": (">", 1_000_000),
    b"\x4d\x3c\xb2\xa1": ("<", 1_000_000_000),
    b"\xa1\xb2\x3c\x4d": (">", 1_000_000_000),
}
_SHB = b"\x0a\x0d\x0d\x0a"
_BOM = {b"\x4d\x3c\x2b\x1a": "<", b"\x1a\x2b\x3c\x4d": ">"}
_MAX_BLOCK = 1 << 26
_U16 = struct.Struct("!H")

LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_LOOP = 0, 1, 108
LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2 = 113, 276
_RAW_LINKTYPES = frozenset((101, 12, 14, 228, 229))
_SUPPORTED_LINKTYPES = _RAW_LINKTYPES | {0, 1, 108, 113, 276}
_VLAN_TYPES = frozenset((0x8100, 0x88A8, 0x9100, 0x9200))
_MPLS_TYPES = frozenset((0x8847, 0x8848))
# IPv6 extension headers of the form (next header, length in 8-octet units not counting the first)
_V6_EXT = frozenset((0, 43, 60, 135, 139, 140))
_UDP = 17


class PcapError(ValueError):
    """The file is not a capture this reader understands, or is corrupt at ``offset``."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(f"{message} (at byte offset {offset})")
        self.offset = offset


@dataclass(slots=True)
class _Partial:
    first_ts: float
    proto: int | None = None
    total: int | None = None
    received: int = 0
    pieces: list[tuple[int, bytes]] = field(default_factory=list)


class _Reassembler:
    """Bounded IP fragment reassembly, keyed by (src, dst, id[, proto]); time is capture time."""

    MAX_SIZE = 65535

    def __init__(self, max_pending: int, timeout: float) -> None:
        self.max_pending = max_pending
        self.timeout = timeout
        self.pending: dict[tuple[bytes, bytes, int, int], _Partial] = {}
        self.reassembled = 0
        self.dropped = 0  # partial datagrams given up (timeout, eviction, bad, end of file)

    def add(
        self,
        key: tuple[bytes, bytes, int, int],
        ts: float,
        offset: int,
        more: bool,
        data: bytes,
        proto: int | None,
    ) -> tuple[int, bytes] | None:
        part = self.pending.get(key)
        if part is None:
            self._expire(ts)
            part = self.pending[key] = _Partial(ts)
        end = offset + len(data)
        if end > self.MAX_SIZE or part.received > 2 * self.MAX_SIZE:
            del self.pending[key]
            self.dropped += 1
            return None
        if proto is not None:
            part.proto = proto
        if not more:
            part.total = end
        part.pieces.append((offset, data))
        part.received += len(data)
        if part.total is None or part.received < part.total or part.proto is None:
            return None
        buf = bytearray(part.total)
        covered = 0
        for off, piece in sorted(part.pieces, key=lambda p: p[0]):
            if off > covered:
                return None  # a hole: wait for more
            buf[off : off + len(piece)] = piece
            covered = max(covered, off + len(piece))
        if covered < part.total:
            return None
        del self.pending[key]
        self.reassembled += 1
        return part.proto, bytes(buf[: part.total])

    def _expire(self, ts: float) -> None:
        pending = self.pending
        while pending:
            key, oldest = next(iter(pending.items()))
            if len(pending) < self.max_pending and ts - oldest.first_ts <= self.timeout:
                break
            del pending[key]
            self.dropped += 1


def _udp(d: bytes, start: int, end: int) -> bytes | None:
    """UDP payload of the datagram at ``d[start:end]``; its length clipped to what is there."""
    if end - start < 8:
        return None
    ulen = _U16.unpack_from(d, start + 4)[0]
    stop = start + ulen if ulen >= 8 else end
    return d[start + 8 : min(stop, end)]


def _network(linktype: int, d: bytes) -> tuple[int, int]:
    """(IP version 4 / 6, or 0 for anything else; offset of the IP header) of a frame."""
    if linktype == LINKTYPE_ETHERNET:
        etype, off = (_U16.unpack_from(d, 12)[0], 14) if len(d) >= 14 else (0, 0)
    elif linktype in _RAW_LINKTYPES:
        off, etype = 0, -1
    elif linktype == LINKTYPE_LINUX_SLL:
        etype, off = (_U16.unpack_from(d, 14)[0], 16) if len(d) >= 16 else (0, 0)
    elif linktype == LINKTYPE_LINUX_SLL2:
        etype, off = (_U16.unpack_from(d, 0)[0], 20) if len(d) >= 20 else (0, 0)
    elif linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
        off, etype = 4, -1  # the family word's byte order varies: trust the version nibble
    else:
        return 0, 0
    while etype in _VLAN_TYPES and len(d) >= off + 4:
        etype = _U16.unpack_from(d, off + 2)[0]
        off += 4
    if etype in _MPLS_TYPES:
        while len(d) >= off + 4:
            bottom = d[off + 2] & 1
            off += 4
            if bottom:
                break
        etype = -1
    if etype == 0x0800:
        return 4, off
    if etype == 0x86DD:
        return 6, off
    if etype == -1 and len(d) > off:
        version = d[off] >> 4
        if version in (4, 6):
            return version, off
    return 0, 0


class PcapReader:
    """Iterates the UDP datagrams of a capture file as :data:`Datagram` tuples, in file order.

    Counters (``frames``, ``datagrams``, and those of fragment reassembly) are updated as the
    iteration goes. Fragments of datagrams that never complete are dropped, not yielded.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_fragments: int = 1024,
        fragment_timeout: float = 30.0,
    ) -> None:
        self.path = path
        self.max_fragments = max_fragments
        self.fragment_timeout = fragment_timeout
        self.frames = 0
        self.datagrams = 0
        self._frags = _Reassembler(max_fragments, fragment_timeout)
        self._names: dict[bytes, str] = {}

    @property
    def reassembled(self) -> int:
        return self._frags.reassembled

    @property
    def fragments_dropped(self) -> int:
        return self._frags.dropped

    def __iter__(self) -> Iterator[Datagram]:
        self.frames = self.datagrams = 0
        self._frags = _Reassembler(self.max_fragments, self.fragment_timeout)
        with open(self.path, "rb", buffering=1 << 20) as f:
            head = f.read(4)
            if head == _SHB:
                yield from self._pcapng(f)
            elif head in _CLASSIC_MAGIC:
                yield from self._classic(f, head)
            else:
                raise PcapError(f"not a pcap or pcapng file (magic {head.hex() or 'none'})", 0)
        self._frags.dropped += len(self._frags.pending)
        self._frags.pending.clear()

    def _classic(self, f: BinaryIO, magic: bytes) -> Iterator[Datagram]:
        endian, units = _CLASSIC_MAGIC[magic]
        rest = f.read(20)
        if len(rest) < 20:
            raise PcapError("file header truncated", 0)
        snaplen, network = struct.unpack_from(endian + "II", rest, 12)
        linktype = network & 0xFFFF
        if linktype not in _SUPPORTED_LINKTYPES:
            raise PcapError(f"unsupported link type {linktype}", 20)
        limit = max(262144, min(snaplen, _MAX_BLOCK))
        record = struct.Struct(endian + "IIII")
        offset = 24
        while True:
            h = f.read(16)
            if len(h) < 16:
                return
            sec, frac, incl, _orig = record.unpack(h)
            if incl > limit:
                raise PcapError(f"record length {incl} exceeds {limit}", offset)
            d = f.read(incl)
            if len(d) < incl:
                return
            offset += 16 + incl
            self.frames += 1
            ts = sec + frac / units
            got = self._decode(linktype, d, ts)
            if got is not None:
                self.datagrams += 1
                yield ts, self.frames, got[0], got[1]

    def _pcapng(self, f: BinaryIO) -> Iterator[Datagram]:
        endian = "<"
        ifaces: list[tuple[int, int, int, float]] = []  # linktype, snaplen, divisor, offset
        offset = 0
        pending = _SHB
        last_ts = 0.0
        while True:
            h = pending + f.read(8 - len(pending))
            pending = b""
            if len(h) < 8:
                return
            if h[:4] == _SHB:
                bom = f.read(4)
                if len(bom) < 4:
                    return
                if bom not in _BOM:
                    raise PcapError(f"bad section byte-order magic {bom.hex()}", offset + 8)
                endian = _BOM[bom]
                blen = struct.unpack_from(endian + "I", h, 4)[0]
                if blen < 28 or blen % 4 or blen > _MAX_BLOCK:
                    raise PcapError(f"bad section header block length {blen}", offset)
                body = bom + f.read(blen - 12)
                btype = 0x0A0D0D0A
            else:
                btype, blen = struct.unpack(endian + "II", h)
                if blen < 12 or blen % 4 or blen > _MAX_BLOCK:
                    raise PcapError(f"bad block length {blen} (block type {btype:#x})", offset)
                body = f.read(blen - 8)
            if len(body) < blen - 8:
                return
            if struct.unpack_from(endian + "I", body, blen - 12)[0] != blen:
                raise PcapError("block trailing length differs from its leading length", offset)
            at, offset = offset, offset + blen
            if btype == 0x0A0D0D0A:
                ifaces = []
                continue
            if btype == 1:
                ifaces.append(self._idb(endian, body, at))
                continue
            if btype == 6 or btype == 2:  # enhanced / obsolete packet block
                if len(body) < 24:
                    raise PcapError("packet block too short", at)
                if btype == 6:
                    idx, hi, lo, cap = struct.unpack_from(endian + "IIII", body, 0)
                else:
                    idx, _drops, hi, lo, cap = struct.unpack_from(endian + "HHIII", body, 0)
                if idx >= len(ifaces):
                    raise PcapError(f"packet of undeclared interface {idx}", at)
                if 20 + cap > len(body) - 4:
                    raise PcapError(f"captured length {cap} exceeds its block", at)
                linktype, _snap, divisor, tsoff = ifaces[idx]
                d = body[20 : 20 + cap]
                last_ts = ts = ((hi << 32) | lo) / divisor + tsoff
            elif btype == 3:  # simple packet block: interface 0, no timestamp
                if not ifaces:
                    raise PcapError("simple packet block before any interface", at)
                linktype, snap, _div, _off = ifaces[0]
                cap = min(struct.unpack_from(endian + "I", body, 0)[0], len(body) - 8)
                if snap:
                    cap = min(cap, snap)
                d = body[4 : 4 + cap]
                ts = last_ts
            else:
                continue
            self.frames += 1
            got = self._decode(linktype, d, ts)
            if got is not None:
                self.datagrams += 1
                yield ts, self.frames, got[0], got[1]

    @staticmethod
    def _idb(endian: str, body: bytes, at: int) -> tuple[int, int, int, float]:
        if len(body) < 12:
            raise PcapError("interface description block too short", at)
        linktype, _reserved, snaplen = struct.unpack_from(endian + "HHI", body, 0)
        divisor, tsoff = 1_000_000, 0.0
        pos, end = 8, len(body) - 4
        while pos + 4 <= end:
            code, olen = struct.unpack_from(endian + "HH", body, pos)
            if code == 0:
                break
            value = body[pos + 4 : pos + 4 + olen]
            if code == 9 and olen >= 1:  # if_tsresol
                v = value[0]
                divisor = 2 ** (v & 0x7F) if v & 0x80 else 10 ** (v & 0x7F)
            elif code == 14 and olen >= 8:  # if_tsoffset
                tsoff = float(struct.unpack_from(endian + "q", value)[0])
            pos += 4 + (olen + 3) // 4 * 4
        return linktype, snaplen, divisor, tsoff

    def _decode(self, linktype: int, d: bytes, ts: float) -> tuple[str, bytes] | None:
        version, off = _network(linktype, d)
        if version == 4:
            got = self._ipv4(d, off, ts)
        elif version == 6:
            got = self._ipv6(d, off, ts)
        else:
            return None
        if got is None:
            return None
        src, payload = got
        name = self._names.get(src)
        if name is None:
            if len(self._names) >= 65536:
                self._names.clear()
            fam = socket.AF_INET if len(src) == 4 else socket.AF_INET6
            name = self._names[src] = socket.inet_ntop(fam, src)
        return name, payload

    def _ipv4(self, d: bytes, off: int, ts: float) -> tuple[bytes, bytes] | None:
        if len(d) < off + 20 or d[off + 9] != _UDP:
            return None
        ihl = (d[off] & 0x0F) * 4
        total, ident, frag = struct.unpack_from("!HHH", d, off + 2)
        end = min(off + total, len(d)) if total >= ihl else len(d)
        start = off + ihl
        if ihl < 20 or start > end:
            return None
        src = d[off + 12 : off + 16]
        if frag & 0x3FFF:  # MF set or an offset: a fragment
            key = (src, d[off + 16 : off + 20], ident, _UDP)
            more = bool(frag & 0x2000)
            done = self._frags.add(key, ts, (frag & 0x1FFF) * 8, more, d[start:end], _UDP)
            if done is None:
                return None
            d, start, end = done[1], 0, len(done[1])
        payload = _udp(d, start, end)
        return None if payload is None else (src, payload)

    def _ipv6(self, d: bytes, off: int, ts: float) -> tuple[bytes, bytes] | None:
        if len(d) < off + 40:
            return None
        plen = _U16.unpack_from(d, off + 4)[0]
        end = min(off + 40 + plen, len(d)) if plen else len(d)
        nh, src, p = d[off + 6], d[off + 8 : off + 24], off + 40
        for _ in range(16):
            if nh == _UDP:
                payload = _udp(d, p, end)
                return None if payload is None else (src, payload)
            if p + 8 > end:
                return None
            if nh in _V6_EXT:
                nh, p = d[p], p + (d[p + 1] + 1) * 8
            elif nh == 51:  # authentication header
                nh, p = d[p], p + (d[p + 1] + 2) * 4
            elif nh == 44:  # fragment header
                fo, ident = struct.unpack_from("!HI", d, p + 2)
                key = (src, d[off + 24 : off + 40], ident, 0)
                first_nh = d[p] if fo & 0xFFF8 == 0 else None
                done = self._frags.add(key, ts, fo & 0xFFF8, bool(fo & 1), d[p + 8 : end], first_nh)
                if done is None:
                    return None
                nh, d = done
                p, end = 0, len(d)
            else:
                return None
        return None


def read_pcap(path: str | os.PathLike[str]) -> Iterator[Datagram]:
    """(arrival, frame, exporter, payload) of every UDP datagram of a pcap / pcapng file.

    Raises :class:`PcapError` on a file that is not a capture or is corrupt; a truncated last
    record just ends the iteration.
    """
    yield from PcapReader(path)


def read_pcap_batches(
    path: str | os.PathLike[str], batch_size: int = 1024
) -> Iterator[DatagramBatch]:
    """The datagrams of :func:`read_pcap` in new batches of up to ``batch_size``."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    batch = DatagramBatch()
    for ts, frame, src, payload in PcapReader(path):
        batch.append(ts, frame, src, payload)
        if len(batch) >= batch_size:
            yield batch
            batch = DatagramBatch()
    if len(batch):
        yield batch
