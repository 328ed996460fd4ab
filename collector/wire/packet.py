"""Vectorised parsing of sampled packet headers (sFlow raw packet header records).

All headers of a batch sit in one zero-padded ``(n, width)`` uint8 array with their captured
lengths beside it; every field is read for all rows at once by fancy indexing at per-row
offsets. Reads are clipped to the array and every field is guarded by the captured length,
so no header, however short or hostile, can raise or read another row's bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

#: what a header starts with (sFlow header_protocol 1 -> ETHERNET, 11 -> IPV4, 12 -> IPV6)
LINK_NONE = 0
LINK_ETHERNET = 1
LINK_IPV4 = 4
LINK_IPV6 = 6

ETH_VLAN_TAGS = (0x8100, 0x88A8, 0x9100)  # 802.1Q, 802.1ad (QinQ), legacy QinQ
ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
MAX_VLAN_TAGS = 3
#: IPv6 extension headers walked to the upper layer: hop-by-hop, routing, fragment, AH,
#: destination options, mobility
IPV6_EXT = (0, 43, 44, 51, 60, 135)
MAX_IPV6_EXT = 6
#: protocols whose first four bytes are source and destination port (TCP, UDP, DCCP, SCTP,
#: UDP-Lite)
PORT_PROTOCOLS = (6, 17, 33, 132, 136)
V4_MAPPED = np.uint64(0x0000FFFF00000000)

I64 = npt.NDArray[np.int64]
Bool = npt.NDArray[np.bool_]


@dataclass(slots=True)
class HeaderFields:
    """Fields of n sampled headers; zero where a header does not carry the field."""

    ip_version: npt.NDArray[np.uint8]  # 4, 6, or 0 (no IP header found)
    src_hi: npt.NDArray[np.uint64]
    src_lo: npt.NDArray[np.uint64]
    dst_hi: npt.NDArray[np.uint64]
    dst_lo: npt.NDArray[np.uint64]
    protocol: npt.NDArray[np.uint8]
    src_port: npt.NDArray[np.uint16]
    dst_port: npt.NDArray[np.uint16]
    tcp_flags: npt.NDArray[np.uint16]
    tos: npt.NDArray[np.uint8]
    icmp_type_code: npt.NDArray[np.uint16]
    vlan: npt.NDArray[np.uint16]  # outermost 802.1Q / 802.1ad tag
    fragment: npt.NDArray[np.uint8]


class _Reader:
    """Big-endian reads at one offset per row, clipped to the array, as int64."""

    def __init__(self, buf: npt.NDArray[np.uint8], length: I64) -> None:
        self.buf = buf
        self.length = length
        self.rows = np.arange(buf.shape[0])
        self.last = buf.shape[1] - 1

    def u8(self, off: I64) -> I64:
        return self.buf[self.rows, np.clip(off, 0, self.last)].astype(np.int64)

    def u16(self, off: I64) -> I64:
        return (self.u8(off) << 8) | self.u8(off + 1)

    def u32(self, off: I64) -> I64:
        return (self.u16(off) << 16) | self.u16(off + 2)

    def u64(self, off: I64) -> npt.NDArray[np.uint64]:
        cols = np.clip(off[:, None] + np.arange(8), 0, self.last)
        raw = np.ascontiguousarray(self.buf[self.rows[:, None], cols])
        return raw.view(">u8")[:, 0].astype(np.uint64)

    def has(self, off: I64, size: int) -> Bool:
        """Rows whose captured header holds ``size`` bytes at ``off``."""
        return (off >= 0) & (off + size <= self.length)


def parse_headers(
    buf: npt.NDArray[np.uint8], length: npt.NDArray[np.integer], link: npt.NDArray[np.integer]
) -> HeaderFields:
    """Parse Ethernet (802.1Q/QinQ) / IPv4 / IPv6 / TCP / UDP / ICMP headers of all rows.

    ``buf`` is ``(n, width)`` uint8 (zero padded), ``length`` the captured bytes of each row
    (at most ``width``), ``link`` one of the ``LINK_*`` values per row.
    """
    n = buf.shape[0]
    if n == 0 or buf.shape[1] == 0:
        buf = np.zeros((n, 1), dtype=np.uint8)
        length = np.zeros(n, dtype=np.int64)
    r = _Reader(buf, np.minimum(length.astype(np.int64), buf.shape[1]))
    link = link.astype(np.int64)
    zero = np.zeros(n, dtype=np.int64)

    # Ethernet and VLAN tags
    eth = (link == LINK_ETHERNET) & r.has(zero, 14)
    off = np.where(eth, 14, 0)
    etype = np.where(eth, r.u16(zero + 12), 0)
    vlan = zero.copy()
    tagged = np.zeros(n, dtype=np.bool_)
    for _ in range(MAX_VLAN_TAGS):
        tag = eth & np.isin(etype, ETH_VLAN_TAGS) & r.has(off, 4)
        vlan = np.where(tag & ~tagged, r.u16(off) & 0x0FFF, vlan)
        tagged |= tag
        etype = np.where(tag, r.u16(off + 2), etype)
        off = off + 4 * tag

    iplink = (link == LINK_IPV4) | (link == LINK_IPV6)
    nibble = r.u8(off) >> 4
    is4 = (iplink | (eth & (etype == ETH_IPV4))) & (nibble == 4) & r.has(off, 20)
    is6 = (iplink | (eth & (etype == ETH_IPV6))) & (nibble == 6) & r.has(off, 40)

    # IPv4
    ihl = (r.u8(off) & 0x0F) * 4
    is4 &= ihl >= 20
    flags_frag = r.u16(off + 6)
    frag_offset4 = flags_frag & 0x1FFF
    fragment4 = ((flags_frag & 0x2000) != 0) | (frag_offset4 != 0)

    # IPv6 and its extension headers
    next_header = r.u8(off + 6)
    l4_6 = off + 40
    fragment6 = np.zeros(n, dtype=np.bool_)
    later6 = np.zeros(n, dtype=np.bool_)
    for _ in range(MAX_IPV6_EXT):
        ext = is6 & np.isin(next_header, IPV6_EXT) & r.has(l4_6, 8)
        if not ext.any():
            break
        is_frag = ext & (next_header == 44)
        fragment6 |= is_frag
        later6 |= is_frag & ((r.u16(l4_6 + 2) & 0xFFF8) != 0)
        ext_len = np.where(
            next_header == 44,
            8,
            np.where(next_header == 51, (r.u8(l4_6 + 1) + 2) * 4, (r.u8(l4_6 + 1) + 1) * 8),
        )
        next_header = np.where(ext, r.u8(l4_6), next_header)
        l4_6 = np.where(ext, l4_6 + ext_len, l4_6)

    ip = is4 | is6
    protocol = np.where(is4, r.u8(off + 9), np.where(is6, next_header, 0))
    tos = np.where(is4, r.u8(off + 1), np.where(is6, (r.u16(off) >> 4) & 0xFF, 0))
    fragment = np.where(is4, fragment4, is6 & fragment6)
    later_fragment = np.where(is4, frag_offset4 != 0, later6)

    src_hi = np.where(is6, r.u64(off + 8), np.uint64(0))
    src_lo = np.where(
        is6, r.u64(off + 16), np.where(is4, r.u32(off + 12).astype(np.uint64) | V4_MAPPED, 0)
    ).astype(np.uint64)
    dst_hi = np.where(is6, r.u64(off + 24), np.uint64(0))
    dst_lo = np.where(
        is6, r.u64(off + 32), np.where(is4, r.u32(off + 16).astype(np.uint64) | V4_MAPPED, 0)
    ).astype(np.uint64)

    # transport: only in the first fragment
    l4 = np.where(is4, off + ihl, l4_6)
    first = ip & ~later_fragment
    ports = first & np.isin(protocol, PORT_PROTOCOLS) & r.has(l4, 4)
    tcp = first & (protocol == 6) & r.has(l4, 14)
    icmp = first & ((is4 & (protocol == 1)) | (is6 & (protocol == 58))) & r.has(l4, 2)

    return HeaderFields(
        ip_version=np.where(is4, 4, np.where(is6, 6, 0)).astype(np.uint8),
        src_hi=src_hi.astype(np.uint64),
        src_lo=src_lo,
        dst_hi=dst_hi.astype(np.uint64),
        dst_lo=dst_lo,
        protocol=protocol.astype(np.uint8),
        src_port=np.where(ports, r.u16(l4), 0).astype(np.uint16),
        dst_port=np.where(ports, r.u16(l4 + 2), 0).astype(np.uint16),
        tcp_flags=np.where(tcp, r.u16(l4 + 12) & 0x0FFF, 0).astype(np.uint16),
        tos=tos.astype(np.uint8),
        icmp_type_code=np.where(icmp, r.u16(l4), 0).astype(np.uint16),
        vlan=vlan.astype(np.uint16),
        fragment=fragment.astype(np.uint8),
    )
