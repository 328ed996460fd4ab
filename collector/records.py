"""Bulk decoding of data records: many data sets of one template -> FlowBatch columns.

All data sets of one template in a batch of datagrams are joined and read with a single
``numpy.frombuffer`` over the template's structured dtype. Templates with variable-length
fields take a slower path that walks each record once to find its field offsets, then
gathers every field with one fancy-indexing operation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from collector import elements as ie
from collector.flowbatch import COLUMNS, FlowBatch, addr_to_pair, v4_to_pair, v6_bytes_to_pair
from collector.sampling import SamplingState
from collector.templates import Template, TemplateKey

NTP_EPOCH_OFFSET = 2208988800.0
U32 = 1 << 32

Raw = npt.NDArray[np.generic]
UInt = npt.NDArray[np.uint64]


@dataclass(slots=True)
class SetGroup:
    """Data sets of one template collected over a batch of datagrams."""

    key: TemplateKey
    template: Template
    bodies: list[bytes] = field(default_factory=list)
    arrival: list[float] = field(default_factory=list)
    frame: list[int] = field(default_factory=list)
    export_time: list[float] = field(default_factory=list)
    sysuptime_ms: list[int] = field(default_factory=list)  # -1 when the header has none
    order: list[int] = field(default_factory=list)  # sort key: frame and set position
    late: list[bool] = field(default_factory=list)  # held until its template came

    def add(
        self,
        body: bytes,
        arrival: float,
        frame: int,
        export_time: float,
        up: int,
        order: int,
        late: bool = False,
    ) -> None:
        self.bodies.append(body)
        self.arrival.append(arrival)
        self.frame.append(frame)
        self.export_time.append(export_time)
        self.sysuptime_ms.append(up)
        self.order.append(order)
        self.late.append(late)


class Fields:
    """Access to the fields of n records, whatever the decoding path."""

    def __init__(self, template: Template, n: int) -> None:
        self.template = template
        self.n = n
        self._cols: dict[int, Raw] = {}

    def raw(self, element: int) -> Raw | None:
        return self._cols.get(element)

    def uint(self, element: int) -> UInt | None:
        a = self._cols.get(element)
        return None if a is None else as_uint(a)

    def first_uint(self, elements: tuple[int, ...]) -> UInt | None:
        for e in elements:
            if e in self._cols:
                return as_uint(self._cols[e])
        return None

    def has(self, element: int) -> bool:
        return element in self._cols


def as_uint(a: Raw) -> UInt:
    """Big-endian integer field (numeric view or (n, L) bytes) -> uint64."""
    if a.ndim == 1:
        return a.astype(np.uint64)
    n, width = a.shape
    if width == 0:
        return np.zeros(n, dtype=np.uint64)
    if width > 8:
        a = a[:, width - 8 :]
        width = 8
    padded = np.zeros((n, 8), dtype=np.uint8)
    padded[:, 8 - width :] = a
    return padded.view(">u8").ravel().astype(np.uint64)


def decode_fields(group: SetGroup) -> tuple[Fields, npt.NDArray[np.int64]]:
    """Decode all records of a group; returns the fields and records per data set."""
    tpl = group.template
    if tpl.fixed:
        return _decode_fixed(group)
    return _decode_variable(group)


def _decode_fixed(group: SetGroup) -> tuple[Fields, npt.NDArray[np.int64]]:
    tpl = group.template
    rl = tpl.record_length
    assert tpl.dtype is not None
    counts = np.fromiter((len(b) // rl for b in group.bodies), dtype=np.int64)
    parts = [
        b if len(b) == c * rl else b[: c * rl] for b, c in zip(group.bodies, counts, strict=True)
    ]
    recs = np.frombuffer(b"".join(parts), dtype=tpl.dtype)
    out = Fields(tpl, len(recs))
    for e, i in tpl.index.items():
        name = f"f{i}"
        if name in tpl.dtype.names:  # type: ignore[operator]
            out._cols[e] = recs[name]
    return out, counts


def _decode_variable(group: SetGroup) -> tuple[Fields, npt.NDArray[np.int64]]:
    """Walk each record once (variable-length fields: RFC 7011 section 7)."""
    tpl = group.template
    wanted = [(e, i) for e, i in tpl.index.items() if e in ie.USED_ELEMENTS]
    wanted = [(e, i) for e, i in wanted if tpl.fields[i].length != ie.VARIABLE_LENGTH]
    buf = b"".join(group.bodies)
    starts: list[list[int]] = [[] for _ in wanted]
    counts = np.zeros(len(group.bodies), dtype=np.int64)
    lengths = [f.length for f in tpl.fields]
    pos = 0
    for s, body in enumerate(group.bodies):
        end = pos + len(body)
        while end - pos >= tpl.record_length:
            offsets, rec_end = _record_offsets(buf, pos, end, lengths)
            if rec_end < 0:
                break
            for j, (_, i) in enumerate(wanted):
                starts[j].append(offsets[i])
            counts[s] += 1
            pos = rec_end
        pos = end
    n = int(counts.sum())
    out = Fields(tpl, n)
    data = np.frombuffer(buf, dtype=np.uint8)
    for j, (e, i) in enumerate(wanted):
        width = tpl.fields[i].length
        idx = np.asarray(starts[j], dtype=np.int64)[:, None] + np.arange(width)
        out._cols[e] = data[idx] if n else np.zeros((0, width), dtype=np.uint8)
    return out, counts


def _record_offsets(buf: bytes, pos: int, end: int, lengths: list[int]) -> tuple[list[int], int]:
    offsets = []
    for length in lengths:
        offsets.append(pos)
        if length == ie.VARIABLE_LENGTH:
            if pos >= end:
                return offsets, -1
            size = buf[pos]
            pos += 1
            if size == 255:
                if pos + 2 > end:
                    return offsets, -1
                size = int.from_bytes(buf[pos : pos + 2], "big")
                pos += 2
            offsets[-1] = pos
            pos += size
        else:
            pos += length
        if pos > end:
            return offsets, -1
    return offsets, pos


def options_values(fields: Fields) -> list[dict[int, int]]:
    """Options records as dicts of the option elements we read (there are few of them)."""
    cols = {e: fields.uint(e) for e in ie.OPTION_ELEMENTS if fields.has(e)}
    if not cols:
        return [{} for _ in range(fields.n)]
    lists = {e: c.tolist() for e, c in cols.items() if c is not None}
    return [{e: int(v[r]) for e, v in lists.items()} for r in range(fields.n)]


def flow_batch(
    group: SetGroup,
    fields: Fields,
    counts: npt.NDArray[np.int64],
    sampling: SamplingState,
    sys_init_ms: float | None,
) -> FlowBatch:
    """Columns of the flow records of one group."""
    n = fields.n
    key = group.key
    cols: dict[str, np.ndarray] = {}
    cols["arrival"] = np.repeat(np.asarray(group.arrival, dtype=np.float64), counts)
    cols["frame"] = np.repeat(np.asarray(group.frame, dtype=np.int64), counts)
    ehi, elo = addr_to_pair(key.exporter)
    cols["exporter_hi"] = np.full(n, ehi, dtype=np.uint64)
    cols["exporter_lo"] = np.full(n, elo, dtype=np.uint64)
    cols["version"] = np.full(n, key.version, dtype=np.uint16)
    cols["domain_id"] = np.full(n, key.domain_id, dtype=np.uint32)
    cols["template_id"] = np.full(n, key.template_id, dtype=np.uint16)
    for name, elems in ie.COLUMN_ELEMENTS.items():
        v = fields.first_uint(elems)
        if v is not None:
            cols[name] = v.astype(COLUMNS[name])
    if "icmp_type_code" not in cols and fields.has(ie.ICMP_TYPE_V4):
        t, c = fields.uint(ie.ICMP_TYPE_V4), fields.uint(ie.ICMP_CODE_V4)
        assert t is not None
        cols["icmp_type_code"] = ((t << 8) | (c if c is not None else 0)).astype(np.uint16)
    _addresses(fields, cols)
    _fragments(fields, cols)
    export = np.repeat(np.asarray(group.export_time, dtype=np.float64), counts)
    uptime = np.repeat(np.asarray(group.sysuptime_ms, dtype=np.int64), counts)
    cols["first"], cols["last"] = _times(fields, export, uptime, sys_init_ms)
    cols["sampling_rate"] = _sampling(fields, key, sampling)
    batch = FlowBatch.empty(n)
    for name, arr in cols.items():
        setattr(batch, name, arr)
    return batch


def _addresses(fields: Fields, cols: dict[str, np.ndarray]) -> None:
    version = fields.uint(ie.IP_VERSION)
    for side, e4, e6 in (("src", ie.SRC_V4, ie.SRC_V6), ("dst", ie.DST_V4, ie.DST_V6)):
        v4 = fields.uint(e4)
        raw6 = fields.raw(e6)
        pair4 = v4_to_pair(v4) if v4 is not None else None
        pair6 = None
        if raw6 is not None and raw6.ndim == 2 and raw6.shape[1] == 16:
            pair6 = v6_bytes_to_pair(raw6)
        if pair4 is not None and pair6 is not None:
            assert v4 is not None
            use6 = (v4 == 0) & ((pair6[0] | pair6[1]) != 0)
            hi = np.where(use6, pair6[0], pair4[0])
            lo = np.where(use6, pair6[1], pair4[1])
            ipv = np.where(use6, 6, 4).astype(np.uint8)
        elif pair4 is not None:
            hi, lo = pair4
            ipv = np.full(fields.n, 4, dtype=np.uint8)
        elif pair6 is not None:
            hi, lo = pair6
            ipv = np.full(fields.n, 6, dtype=np.uint8)
        else:
            continue
        cols[f"{side}_hi"], cols[f"{side}_lo"] = hi, lo
        if side == "dst" or "ip_version" not in cols:
            cols["ip_version"] = ipv
    if version is not None:
        cols["ip_version"] = np.where((version == 4) | (version == 6), version, 0).astype(np.uint8)


def _fragments(fields: Fields, cols: dict[str, np.ndarray]) -> None:
    frag = np.zeros(fields.n, dtype=bool)
    flags = fields.uint(ie.FRAGMENT_FLAGS)
    if flags is not None:
        frag |= (flags & 0x20) != 0  # bit 2 (from the MSB): more fragments
    offset = fields.uint(ie.FRAGMENT_OFFSET)
    if offset is not None:
        frag |= offset != 0
    cols["fragment"] = frag.astype(np.uint8)


def uptime_ago(uptime: npt.NDArray[np.integer], value: UInt) -> npt.NDArray[np.float64]:
    """Milliseconds from a sysuptime ``value`` to the header's ``uptime``, as a signed
    32-bit difference: right across the 49.7-day wrap, and a record stamped slightly after
    its header (some exporters do) stays slightly in the future instead of 49 days back."""
    diff = (uptime.astype(np.int64) - value.astype(np.int64) + (1 << 31)) % U32 - (1 << 31)
    return diff.astype(np.float64)


def _ntp(raw: Raw) -> npt.NDArray[np.float64]:
    """64-bit NTP timestamps (or pmacct's 16-byte struct timeval) -> unix seconds."""
    if raw.ndim == 2 and raw.shape[1] == 16:  # pmacct 1.7: 8-byte seconds, 8-byte usec
        sec = as_uint(raw[:, :8]).astype(np.float64)
        usec = as_uint(raw[:, 8:]).astype(np.float64)
        return sec + usec / 1e6
    v = as_uint(raw)
    sec = (v >> np.uint64(32)).astype(np.float64)
    frac = (v & np.uint64(0xFFFFFFFF)).astype(np.float64) / U32
    return sec - NTP_EPOCH_OFFSET + frac


def _one_end(
    fields: Fields,
    export: npt.NDArray[np.float64],
    uptime: npt.NDArray[np.int64],
    sys_init_ms: float | None,
    start: bool,
) -> npt.NDArray[np.float64] | None:
    s = 0 if start else 1
    absolute = (
        (ie.FLOW_START_SECONDS, ie.FLOW_END_SECONDS)[s],
        (ie.FLOW_START_MILLISECONDS, ie.FLOW_END_MILLISECONDS)[s],
        (ie.FLOW_START_MICROSECONDS, ie.FLOW_END_MICROSECONDS)[s],
        (ie.FLOW_START_NANOSECONDS, ie.FLOW_END_NANOSECONDS)[s],
    )
    for k, e in enumerate(absolute):
        raw = fields.raw(e)
        if raw is None:
            continue
        if k == 0:
            return as_uint(raw).astype(np.float64)
        if k == 1:
            return as_uint(raw).astype(np.float64) / 1000.0
        return _ntp(raw)
    delta = fields.uint((ie.FLOW_START_DELTA_US, ie.FLOW_END_DELTA_US)[s])
    if delta is not None:
        return export - delta.astype(np.float64) / 1e6
    rel = fields.uint((ie.FLOW_START_SYSUPTIME, ie.FLOW_END_SYSUPTIME)[s])
    if rel is None:
        return None
    if (uptime >= 0).all() and len(uptime):  # NetFlow v9: relative to the header
        return export - uptime_ago(uptime, rel) / 1000.0
    if sys_init_ms is not None:  # IPFIX: relative to systemInitTimeMilliseconds
        return (sys_init_ms + rel.astype(np.float64)) / 1000.0
    return np.full(fields.n, np.nan)


def _times(
    fields: Fields,
    export: npt.NDArray[np.float64],
    uptime: npt.NDArray[np.int64],
    sys_init_ms: float | None,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    first = _one_end(fields, export, uptime, sys_init_ms, True)
    last = _one_end(fields, export, uptime, sys_init_ms, False)
    dur_ms = fields.uint(ie.FLOW_DURATION_MS)
    dur = dur_ms.astype(np.float64) / 1e3 if dur_ms is not None else None
    if dur is None and (d_us := fields.uint(ie.FLOW_DURATION_US)) is not None:
        dur = d_us.astype(np.float64) / 1e6
    if dur is not None:
        if first is None and last is not None:
            first = last - dur
        elif last is None and first is not None:
            last = first + dur
    nan = np.full(fields.n, np.nan)
    return (first if first is not None else nan), (last if last is not None else nan)


def _sampling(fields: Fields, key: TemplateKey, sampling: SamplingState) -> npt.NDArray[np.uint32]:
    sampler = fields.uint(ie.SAMPLER_ID)
    if sampler is None:
        sampler = fields.uint(ie.SELECTOR_ID)
    rates = sampling.rates_for(key.exporter, key.domain_id, sampler, fields.n)
    own = fields.first_uint((ie.SAMPLING_INTERVAL, ie.SAMPLER_RANDOM_INTERVAL))
    if own is not None:
        rates = np.where(own > 0, np.minimum(own, 0xFFFFFFFF), rates).astype(np.uint32)
    return rates
