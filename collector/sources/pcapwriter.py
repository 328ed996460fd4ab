"""Classic pcap writer (Ethernet / IPv4-or-IPv6 / UDP), for tests and `divertor send`."""

from __future__ import annotations

import os
import socket
import struct
import sys
from typing import BinaryIO

from collector.sources.pcap import _U16, _UDP, LINKTYPE_ETHERNET


def _checksum(data: bytes) -> int:
    """Internet checksum (RFC 1071); summed in native order, which gives the swapped result."""
    if len(data) % 2:
        data += b"\0"
    s = sum(memoryview(data).cast("H"))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    if sys.byteorder == "little":
        s = ((s & 0xFF) << 8) | (s >> 8)
    return ~s & 0xFFFF


class PcapWriter:
    """Writes classic pcap (Ethernet) with one Ethernet / IPv4-or-IPv6 / UDP frame per datagram.

    ``fragment_size`` (a multiple of 8) splits datagrams whose IP payload is larger into IP
    fragments, one frame each. ``nanosecond`` writes the nanosecond-resolution magic.
    """

    SRC_MAC = b"\x02\x00\x00\x00\x00\x01"
    DST_MAC = b"\x02\x00\x00\x00\x00\x02"

    def __init__(
        self,
        file: str | os.PathLike[str] | BinaryIO,
        *,
        nanosecond: bool = False,
        snaplen: int = 262144,
        fragment_size: int | None = None,
    ) -> None:
        if fragment_size is not None and (fragment_size < 8 or fragment_size % 8):
            raise ValueError("fragment_size must be a positive multiple of 8")
        if isinstance(file, (str, os.PathLike)):
            self._f: BinaryIO = open(file, "wb")  # noqa: SIM115 - closed by close()
            self._owned = True
        else:
            self._f, self._owned = file, False
        self._units = 1_000_000_000 if nanosecond else 1_000_000
        self._fragment_size = fragment_size
        self._ident = 0
        magic = 0xA1B23C4D if nanosecond else 0xA1B2C3D4
        self._f.write(struct.pack("<IHHiIII", magic, 2, 4, 0, 0, snaplen, LINKTYPE_ETHERNET))
        self.frames = 0

    def write(self, ts: float, src: str, dst: str, sport: int, dport: int, payload: bytes) -> None:
        """One UDP datagram from ``src:sport`` to ``dst:dport`` (IPv4 or IPv6 text) at ``ts``."""
        v6 = ":" in src
        if v6 != (":" in dst):
            raise ValueError(f"address families differ: {src} -> {dst}")
        fam = socket.AF_INET6 if v6 else socket.AF_INET
        s, t = socket.inet_pton(fam, src), socket.inet_pton(fam, dst)
        ulen = 8 + len(payload)
        if ulen > 65535 - (0 if v6 else 20):
            raise ValueError(f"UDP payload of {len(payload)} bytes is too long")
        if v6:
            pseudo = s + t + struct.pack("!IxxxB", ulen, _UDP)
        else:
            pseudo = s + t + struct.pack("!xBH", _UDP, ulen)
        csum = _checksum(pseudo + struct.pack("!HHHH", sport, dport, ulen, 0) + payload) or 0xFFFF
        udp = struct.pack("!HHHH", sport, dport, ulen, csum) + payload
        self._ident = (self._ident + 1) & 0xFFFFFFFF
        size = self._fragment_size
        if size is None or len(udp) <= size:
            self._ip(ts, v6, s, t, udp, None, False)
            return
        for pos in range(0, len(udp), size):
            self._ip(ts, v6, s, t, udp[pos : pos + size], pos, pos + size < len(udp))

    def _ip(
        self, ts: float, v6: bool, s: bytes, t: bytes, data: bytes, frag: int | None, more: bool
    ) -> None:
        if v6:
            nh = _UDP
            if frag is not None:
                data = struct.pack("!BxHI", _UDP, frag | more, self._ident) + data
                nh = 44
            ip = struct.pack("!IHBB", 0x60000000, len(data), nh, 64) + s + t
            etype = 0x86DD
        else:
            flags = 0 if frag is None else (frag // 8) | (0x2000 if more else 0)
            hdr = struct.pack(
                "!BBHHHBBH", 0x45, 0, 20 + len(data), self._ident & 0xFFFF, flags, 64, _UDP, 0
            )
            hdr += s + t
            ip = hdr[:10] + struct.pack("!H", _checksum(hdr)) + hdr[12:]
            etype = 0x0800
        self.write_frame(ts, self.DST_MAC + self.SRC_MAC + _U16.pack(etype) + ip + data)

    def write_frame(self, ts: float, frame: bytes) -> None:
        """One raw Ethernet frame at ``ts``."""
        sec = int(ts // 1)
        frac = round((ts - sec) * self._units)
        if frac >= self._units:
            sec, frac = sec + 1, frac - self._units
        self._f.write(struct.pack("<IIII", sec, frac, len(frame), len(frame)) + frame)
        self.frames += 1

    def close(self) -> None:
        if self._owned:
            self._f.close()
        else:
            self._f.flush()

    def __enter__(self) -> PcapWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
