"""sFlow v5 decoder: datagrams -> FlowBatch, one row per flow sample.

Wire format: sFlow version 5 (sflow.org/sflow_version_5.txt), XDR encoded (big-endian
32-bit words, opaque data padded to 4 bytes). The layouts are declared below with construct
(the documented declaration, and the datagram header is parsed with it); the per-sample walk
uses precompiled ``struct.Struct`` objects of the same layouts, and the sampled packet headers
of all samples are parsed at once with numpy (``collector.wire.packet``).

Decoded: flow samples (format 1) and expanded flow samples (format 3); their raw packet header
(1), sampled IPv4 (3), sampled IPv6 (4) and extended switch (1001) records. Counter samples
(formats 2 and 4) are only counted; other formats are skipped by their length.

Nothing from the network raises: a malformed datagram is counted in the stats under an error
reason, the samples decoded before the fault are kept, and decoding goes on with the next
datagram.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import construct as cs
import numpy as np
import numpy.typing as npt

from collector.flowbatch import VERSION_SFLOW5, FlowBatch, addr_to_pair
from collector.stats import (
    BAD_COUNT,
    BAD_LENGTH,
    BAD_SAMPLE,
    BAD_VERSION,
    TRUNCATED,
    UNSUPPORTED,
    StatsRegistry,
)
from collector.wire.packet import LINK_ETHERNET, LINK_IPV4, LINK_IPV6, LINK_NONE, parse_headers

SFLOW_VERSION = 5
MAX_SAMPLES = 1024  # samples decoded per datagram (more is counted as bad_count)
MAX_RECORDS = 64  # flow records walked per sample
MAX_HEADER = 256  # sampled header bytes kept per sample

# ---------------------------------------------------------------------------------------
# Wire layouts (construct declarations)
# ---------------------------------------------------------------------------------------
U32 = cs.Int32ub

#: sample_datagram_v5 up to the sample count; the agent address is an XDR union on its type
DATAGRAM_HEADER = cs.Struct(
    "version" / U32,
    "agent_address_type" / U32,  # 1 = IPv4, 2 = IPv6
    "agent_address" / cs.IfThenElse(cs.this.agent_address_type == 2, cs.Bytes(16), cs.Bytes(4)),
    "sub_agent_id" / U32,
    "sequence" / U32,
    "uptime_ms" / U32,
    "num_samples" / U32,
).compile()
AGENT_IPV4 = 1
AGENT_IPV6 = 2

#: sample_record and flow_record: data_format = enterprise << 12 | format, then opaque data
SAMPLE_HEADER = cs.Struct("data_format" / U32, "length" / U32).compile()
FLOW_RECORD_HEADER = SAMPLE_HEADER

FLOW_SAMPLE = cs.Struct(  # enterprise 0, format 1
    "sequence" / U32,
    "source_id" / U32,  # type << 24 | index
    "sampling_rate" / U32,
    "sample_pool" / U32,
    "drops" / U32,
    "input" / U32,  # 2-bit format << 30 | 30-bit value
    "output" / U32,
    "num_records" / U32,
).compile()

EXPANDED_FLOW_SAMPLE = cs.Struct(  # enterprise 0, format 3
    "sequence" / U32,
    "source_id_type" / U32,
    "source_id_index" / U32,
    "sampling_rate" / U32,
    "sample_pool" / U32,
    "drops" / U32,
    "input_format" / U32,
    "input_value" / U32,
    "output_format" / U32,
    "output_value" / U32,
    "num_records" / U32,
).compile()

RAW_PACKET_HEADER = cs.Struct(  # flow record format 1, then header_length bytes (padded)
    "header_protocol" / U32,  # 1 = Ethernet, 11 = IPv4, 12 = IPv6, ...
    "frame_length" / U32,
    "stripped" / U32,
    "header_length" / U32,
).compile()

SAMPLED_IPV4 = cs.Struct(  # flow record format 3
    "length" / U32,
    "protocol" / U32,
    "src_ip" / cs.Bytes(4),
    "dst_ip" / cs.Bytes(4),
    "src_port" / U32,
    "dst_port" / U32,
    "tcp_flags" / U32,
    "tos" / U32,
).compile()

SAMPLED_IPV6 = cs.Struct(  # flow record format 4
    "length" / U32,
    "protocol" / U32,
    "src_ip" / cs.Bytes(16),
    "dst_ip" / cs.Bytes(16),
    "src_port" / U32,
    "dst_port" / U32,
    "tcp_flags" / U32,
    "priority" / U32,
).compile()

EXTENDED_SWITCH = cs.Struct(  # flow record format 1001
    "src_vlan" / U32,
    "src_priority" / U32,
    "dst_vlan" / U32,
    "dst_priority" / U32,
).compile()

# The same layouts as struct.Struct for the per-sample loop (tests check the sizes agree).
_U32 = struct.Struct(">I")
_SAMPLE_HEADER = struct.Struct(">II")
_FLOW_SAMPLE = struct.Struct(">8I")
_EXPANDED_FLOW_SAMPLE = struct.Struct(">11I")
_RAW_PACKET_HEADER = struct.Struct(">4I")
_SAMPLED_IPV4 = struct.Struct(">8I")  # addresses read as host-order integers
_SAMPLED_IPV6 = struct.Struct(">IIQQQQIIII")  # addresses read as (hi, lo) halves
_EXTENDED_SWITCH = struct.Struct(">4I")

FMT_FLOW_SAMPLE = 1
FMT_COUNTER_SAMPLE = 2
FMT_EXPANDED_FLOW_SAMPLE = 3
FMT_EXPANDED_COUNTER_SAMPLE = 4
REC_RAW_HEADER = 1
REC_SAMPLED_IPV4 = 3
REC_SAMPLED_IPV6 = 4
REC_EXTENDED_SWITCH = 1001

#: raw packet header protocol -> what the header starts with
_LINKS = {1: LINK_ETHERNET, 11: LINK_IPV4, 12: LINK_IPV6}
_V4_MAPPED = 0x0000FFFF00000000
_IF_VALUE = 0x3FFFFFFF

#: per-sample row columns, in tuple order (the walk appends one tuple per flow sample)
_ROW = (
    ("arrival", np.float64),
    ("frame", np.int64),
    ("exporter_hi", np.uint64),
    ("exporter_lo", np.uint64),
    ("domain_id", np.uint32),
    ("sampling_rate", np.uint32),
    ("input_if", np.uint32),
    ("output_if", np.uint32),
    ("link", np.uint8),
    ("has_raw", np.bool_),
    ("frame_length", np.uint64),
    ("rec_ip_version", np.uint8),
    ("rec_src_hi", np.uint64),
    ("rec_src_lo", np.uint64),
    ("rec_dst_hi", np.uint64),
    ("rec_dst_lo", np.uint64),
    ("rec_protocol", np.uint8),
    ("rec_src_port", np.uint16),
    ("rec_dst_port", np.uint16),
    ("rec_tcp_flags", np.uint16),
    ("rec_tos", np.uint8),
    ("rec_length", np.uint64),
    ("switch_vlan", np.uint16),
)
_Row = tuple[float | int, ...]
_HEADER_ERRORS = (cs.ConstructError, struct.error, ValueError, IndexError)
#: caught around each datagram as a last resort (tests empty it to see decoder bugs)
_SAFETY_NET: tuple[type[Exception], ...] = (Exception,)


class _Malformed(Exception):
    """A fault that ends the current datagram (or sample), with its stats reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _flow_sample(
    data: bytes, pos: int, end: int, expanded: bool, head: _Row
) -> tuple[_Row, bytes, str | None]:
    """Walk one (expanded) flow sample in ``data[pos:end]``.

    Returns the row, the sampled header bytes and an error reason when the records were
    cut short (the sample is still kept); raises _Malformed if the sample header is short.
    """
    if expanded:
        if pos + 44 > end:
            raise _Malformed(BAD_SAMPLE)
        (_, _, _, rate, _, _, _, in_if, _, out_if, nrec) = _EXPANDED_FLOW_SAMPLE.unpack_from(
            data, pos
        )
        pos += 44
    else:
        if pos + 32 > end:
            raise _Malformed(BAD_SAMPLE)
        (_, _, rate, _, _, in_if, out_if, nrec) = _FLOW_SAMPLE.unpack_from(data, pos)
        in_if &= _IF_VALUE
        out_if &= _IF_VALUE
        pos += 32
    error = None
    if nrec > MAX_RECORDS:
        error, nrec = BAD_COUNT, MAX_RECORDS
    link = LINK_NONE
    has_raw = False
    frame_length = 0
    header = b""
    rec: tuple[int, ...] = (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    switch_vlan = 0
    for _ in range(nrec):
        if pos + 8 > end:
            error = BAD_SAMPLE
            break
        fmt, rlen = _SAMPLE_HEADER.unpack_from(data, pos)
        body = pos + 8
        pos = body + rlen
        if pos > end or rlen & 3:
            error = BAD_LENGTH
            break
        if fmt == REC_RAW_HEADER and not has_raw:
            if rlen < 16:
                error = BAD_SAMPLE
                continue
            proto, frame_length, _, hlen = _RAW_PACKET_HEADER.unpack_from(data, body)
            has_raw = True
            link = _LINKS.get(proto, LINK_NONE)
            if hlen > rlen - 16:
                error, hlen = BAD_SAMPLE, rlen - 16
            header = data[body + 16 : body + 16 + min(hlen, MAX_HEADER)]
        elif fmt == REC_SAMPLED_IPV4 and rlen >= 32:
            length, proto, src, dst, sport, dport, flags, tos = _SAMPLED_IPV4.unpack_from(
                data, body
            )
            rec = (4, 0, src | _V4_MAPPED, 0, dst | _V4_MAPPED, proto & 0xFF)
            rec += (sport & 0xFFFF, dport & 0xFFFF, flags & 0xFFFF, tos & 0xFF, length)
        elif fmt == REC_SAMPLED_IPV6 and rlen >= 56:
            length, proto, shi, slo, dhi, dlo, sport, dport, flags, prio = (
                _SAMPLED_IPV6.unpack_from(data, body)
            )
            rec = (6, shi, slo, dhi, dlo, proto & 0xFF)
            rec += (sport & 0xFFFF, dport & 0xFFFF, flags & 0xFFFF, prio & 0xFF, length)
        elif fmt == REC_EXTENDED_SWITCH and rlen >= 16:
            src_vlan = _EXTENDED_SWITCH.unpack_from(data, body)[0]
            switch_vlan = src_vlan if src_vlan <= 0x0FFF else 0  # 0xFFFFFFFF: unknown
    row = (*head, rate or 1, in_if, out_if, link, has_raw, frame_length, *rec, switch_vlan)
    return row, header, error


def _datagram(
    payload: bytes,
    head: tuple[float, int, int, int],
    exporter: str,
    stats: StatsRegistry,
    rows: list[_Row],
    headers: list[bytes],
) -> None:
    """Append the flow samples of one datagram; raise _Malformed on a fault that ends it."""
    if len(payload) < 4:
        raise _Malformed(TRUNCATED)
    if _U32.unpack_from(payload, 0)[0] != SFLOW_VERSION:
        raise _Malformed(BAD_VERSION)
    try:
        dg = DATAGRAM_HEADER.parse(payload)
    except _HEADER_ERRORS as exc:
        raise _Malformed(TRUNCATED) from exc
    if dg.agent_address_type not in (AGENT_IPV4, AGENT_IPV6):
        raise _Malformed(UNSUPPORTED)
    pos = 28 if dg.agent_address_type == AGENT_IPV4 else 40
    count = dg.num_samples
    if count > MAX_SAMPLES:
        stats.error(exporter, BAD_COUNT)
        count = MAX_SAMPLES
    sample_head = (*head, dg.sub_agent_id)
    st = stats.get(exporter)
    size = len(payload)
    for _ in range(count):
        if pos + 8 > size:
            raise _Malformed(TRUNCATED)
        fmt, slen = _SAMPLE_HEADER.unpack_from(payload, pos)
        body = pos + 8
        pos = body + slen
        if pos > size:
            raise _Malformed(TRUNCATED)
        if slen & 3:
            raise _Malformed(BAD_LENGTH)
        if fmt in (FMT_FLOW_SAMPLE, FMT_EXPANDED_FLOW_SAMPLE):
            try:
                row, header, error = _flow_sample(
                    payload, body, pos, fmt == FMT_EXPANDED_FLOW_SAMPLE, sample_head
                )
            except _Malformed as exc:
                stats.error(exporter, exc.reason)
                continue
            rows.append(row)
            headers.append(header)
            if error is not None:
                stats.error(exporter, error)
        elif fmt in (FMT_COUNTER_SAMPLE, FMT_EXPANDED_COUNTER_SAMPLE):
            st.counter_samples += 1


def decode(datagrams: Sequence[tuple[float, int, str, bytes]], stats: StatsRegistry) -> FlowBatch:
    """Decode sFlow v5 datagrams ``(arrival, frame, exporter, payload)`` into one FlowBatch.

    One row per flow sample, in input order. The exporter is the datagram's UDP source (not
    the sFlow agent address). Faults are counted in ``stats``; nothing raises.
    """
    rows: list[_Row] = []
    headers: list[bytes] = []
    pairs: dict[str, tuple[int, int]] = {}
    for arrival, frame, exporter, payload in datagrams:
        st = stats.get(exporter)
        st.datagrams += 1
        st.bytes += len(payload)
        pair = pairs.get(exporter)
        if pair is None:
            try:
                pair = addr_to_pair(exporter)
            except ValueError:
                pair = (0, 0)
            pairs[exporter] = pair
        before = len(rows)
        try:
            _datagram(payload, (arrival, frame, *pair), exporter, stats, rows, headers)
        except _Malformed as exc:
            stats.error(exporter, exc.reason)
        except _SAFETY_NET:  # a decoder bug must not stop the collector
            stats.error(exporter, BAD_SAMPLE)
        st.records += len(rows) - before
    return _build(rows, headers)


def _header_matrix(
    headers: list[bytes],
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]:
    """Sampled headers -> zero-padded (n, width) uint8 array and their lengths."""
    lengths = np.fromiter((len(h) for h in headers), dtype=np.int64, count=len(headers))
    width = max(int(lengths.max(initial=0)), 1)
    matrix = np.zeros((len(headers), width), dtype=np.uint8)
    # row-major order of the mask is the order of the joined headers: one scatter fills all
    matrix[np.arange(width) < lengths[:, None]] = np.frombuffer(b"".join(headers), np.uint8)
    return matrix, lengths


def _build(rows: list[_Row], headers: list[bytes]) -> FlowBatch:
    n = len(rows)
    batch = FlowBatch.empty(n)
    if n == 0:
        return batch
    c: dict[str, npt.NDArray[Any]] = {
        name: np.array(col, dtype=dtype)
        for (name, dtype), col in zip(_ROW, zip(*rows, strict=True), strict=True)
    }
    matrix, lengths = _header_matrix(headers)
    hf = parse_headers(matrix, lengths, c["link"])
    use_hdr = hf.ip_version > 0
    use_rec = ~use_hdr & (c["rec_ip_version"] > 0)

    def pick(
        from_header: npt.NDArray[np.generic], from_record: npt.NDArray[np.generic]
    ) -> npt.NDArray[np.generic]:
        return np.where(use_hdr, from_header, np.where(use_rec, from_record, 0))

    for name in ("arrival", "frame", "exporter_hi", "exporter_lo", "domain_id"):
        getattr(batch, name)[:] = c[name]
    for name in ("sampling_rate", "input_if", "output_if"):
        getattr(batch, name)[:] = c[name]
    batch.version[:] = VERSION_SFLOW5
    batch.packets[:] = 1
    batch.bytes[:] = np.where(c["has_raw"], c["frame_length"], c["rec_length"])
    batch.first[:] = batch.arrival
    batch.last[:] = batch.arrival
    batch.ip_version[:] = pick(hf.ip_version, c["rec_ip_version"])
    batch.src_hi[:] = pick(hf.src_hi, c["rec_src_hi"])
    batch.src_lo[:] = pick(hf.src_lo, c["rec_src_lo"])
    batch.dst_hi[:] = pick(hf.dst_hi, c["rec_dst_hi"])
    batch.dst_lo[:] = pick(hf.dst_lo, c["rec_dst_lo"])
    batch.protocol[:] = pick(hf.protocol, c["rec_protocol"])
    batch.src_port[:] = pick(hf.src_port, c["rec_src_port"])
    batch.dst_port[:] = pick(hf.dst_port, c["rec_dst_port"])
    batch.tcp_flags[:] = pick(hf.tcp_flags, c["rec_tcp_flags"])
    batch.tos[:] = pick(hf.tos, c["rec_tos"])
    batch.icmp_type_code[:] = np.where(use_hdr, hf.icmp_type_code, 0)
    batch.fragment[:] = np.where(use_hdr, hf.fragment, 0)
    batch.vlan[:] = np.where(hf.vlan != 0, hf.vlan, c["switch_vlan"])
    return batch
