"""NetFlow v5 (Cisco's fixed format: a 24-byte header and up to 30 records of 48 bytes).

Records of every datagram in a batch are joined and read with one ``numpy.frombuffer``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from construct import Int8ub, Int16ub, Int32ub, Struct

from collector.flowbatch import FlowBatch, addr_to_pair, v4_to_pair
from collector.records import uptime_ago
from collector.stats import BAD_COUNT, TRUNCATED, StatsRegistry
from collector.wire.layout import fast_struct, numpy_dtype

HEADER = Struct(
    "version" / Int16ub,
    "count" / Int16ub,
    "sys_uptime" / Int32ub,
    "unix_secs" / Int32ub,
    "unix_nsecs" / Int32ub,
    "flow_sequence" / Int32ub,
    "engine_type" / Int8ub,
    "engine_id" / Int8ub,
    "sampling_interval" / Int16ub,  # 2 bits mode, 14 bits interval
)
RECORD = Struct(
    "srcaddr" / Int32ub,
    "dstaddr" / Int32ub,
    "nexthop" / Int32ub,
    "input" / Int16ub,
    "output" / Int16ub,
    "dPkts" / Int32ub,
    "dOctets" / Int32ub,
    "first" / Int32ub,
    "last" / Int32ub,
    "srcport" / Int16ub,
    "dstport" / Int16ub,
    "pad1" / Int8ub,
    "tcp_flags" / Int8ub,
    "prot" / Int8ub,
    "tos" / Int8ub,
    "src_as" / Int16ub,
    "dst_as" / Int16ub,
    "src_mask" / Int8ub,
    "dst_mask" / Int8ub,
    "pad2" / Int16ub,
)
HEADER_FAST = fast_struct(HEADER)
HEADER_LEN = HEADER_FAST.size  # 24
RECORD_DTYPE = numpy_dtype(RECORD)
RECORD_LEN = RECORD_DTYPE.itemsize  # 48
MAX_COUNT = 30

Datagram = tuple[float, int, str, bytes]  # arrival, frame, exporter, payload


def decode(
    datagrams: Sequence[Datagram],
    stats: StatsRegistry,
    configured_rate: Callable[[str], int] | None = None,
) -> FlowBatch:
    """Decode v5 datagrams into one batch, records in datagram order.

    A header without a sampling interval takes ``configured_rate(exporter)`` (the
    configured override or default), 1 without it.

    A datagram may hold several v5 messages back to back (the header count says where one
    ends). A message whose count does not fit the datagram, or exceeds 30, is dropped whole
    and counted: its header is not to be trusted.
    """
    bodies: list[bytes] = []
    meta: list[tuple[float, int, str, int, int, float, int, int]] = []
    for arrival, frame, exporter, payload in datagrams:
        st = stats.get(exporter)
        off = 0
        size = len(payload)
        while size - off >= 4 and payload[off : off + 2] == b"\x00\x05":
            if size - off < HEADER_LEN:
                stats.error(exporter, TRUNCATED)
                break
            (_, count, uptime, secs, nsecs, _, etype, eid, samp) = HEADER_FAST.unpack_from(
                payload, off
            )
            end = off + HEADER_LEN + count * RECORD_LEN
            if count > MAX_COUNT or end > size:
                stats.error(exporter, BAD_COUNT)
                break
            bodies.append(payload[off + HEADER_LEN : end])
            rate = samp & 0x3FFF
            meta.append(
                (
                    arrival,
                    frame,
                    exporter,
                    count,
                    uptime,
                    secs + nsecs / 1e9,
                    (etype << 8) | eid,
                    rate if rate > 0 else configured_rate(exporter) if configured_rate else 1,
                )
            )
            st.records += count
            off = end
            if off < size and payload[off : off + 2] != b"\x00\x05":
                stats.error(exporter, TRUNCATED)  # trailing bytes that are not a message
    if not bodies:
        return FlowBatch.empty()
    return _columns(bodies, meta)


def _columns(bodies: list[bytes], meta: list[tuple]) -> FlowBatch:
    recs = np.frombuffer(b"".join(bodies), dtype=RECORD_DTYPE)
    n = len(recs)
    counts = np.fromiter((m[3] for m in meta), dtype=np.int64, count=len(meta))

    def rep(i: int, dtype: str) -> np.ndarray:
        return np.repeat(np.fromiter((m[i] for m in meta), dtype=dtype, count=len(meta)), counts)

    b = FlowBatch.empty(n)
    b.arrival = rep(0, "f8")
    b.frame = rep(1, "i8")
    pairs = [addr_to_pair(m[2]) for m in meta]
    b.exporter_hi = np.repeat(np.fromiter((p[0] for p in pairs), "u8", len(meta)), counts)
    b.exporter_lo = np.repeat(np.fromiter((p[1] for p in pairs), "u8", len(meta)), counts)
    b.version[:] = 5
    b.domain_id = rep(6, "u4")
    b.src_hi, b.src_lo = v4_to_pair(recs["srcaddr"])
    b.dst_hi, b.dst_lo = v4_to_pair(recs["dstaddr"])
    b.src_port = recs["srcport"].astype(np.uint16)
    b.dst_port = recs["dstport"].astype(np.uint16)
    b.protocol = recs["prot"].astype(np.uint8)
    b.tcp_flags = recs["tcp_flags"].astype(np.uint16)
    b.tos = recs["tos"].astype(np.uint8)
    b.input_if = recs["input"].astype(np.uint32)
    b.output_if = recs["output"].astype(np.uint32)
    b.packets = recs["dPkts"].astype(np.uint64)
    b.bytes = recs["dOctets"].astype(np.uint64)
    b.sampling_rate = rep(7, "u4")
    b.ip_version[:] = 4
    uptime = rep(4, "i8")
    export = rep(5, "f8")
    b.first = export - uptime_ago(uptime, recs["first"].astype(np.uint64)) / 1000.0
    b.last = export - uptime_ago(uptime, recs["last"].astype(np.uint64)) / 1000.0
    return b
