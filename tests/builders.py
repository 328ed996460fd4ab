"""Hand-built export datagrams for tests: NetFlow v5, NetFlow v9, IPFIX (and a minimal sFlow v5).

Everything is packed with ``struct``, independently of the wire modules under test. A field
spec is ``(element_id, length)`` or ``(element_id, length, enterprise)``; a length of
``VARLEN`` (65535) is an IPFIX variable-length field. ``record(fields, values)`` packs one
data record of such a template: ints big-endian in the field's length, text addresses in
network order, bytes as they are (variable-length values get their 1- or 3-byte prefix).
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable, Sequence

from collector.datagram import DatagramBatch

VARLEN = 65535
T0 = 1_700_000_000.0  # event time used by the tests (arrival of the first datagram)

FieldSpec = tuple[int, ...]  # (id, length) or (id, length, enterprise)
Value = int | str | bytes


# --------------------------------------------------------------------------- records
def varlen(value: bytes) -> bytes:
    """An IPFIX variable-length value: short form (< 255) or 255 + 2-byte long form."""
    if len(value) < 255:
        return bytes([len(value)]) + value
    return b"\xff" + struct.pack(">H", len(value)) + value


def value_bytes(value: Value, length: int) -> bytes:
    if isinstance(value, bytes):
        if length == VARLEN:
            return varlen(value)
        if len(value) != length:
            raise ValueError(f"{len(value)} bytes for a field of {length}")
        return value
    if isinstance(value, str):
        raw = ipaddress.ip_address(value).packed
        return varlen(raw) if length == VARLEN else raw.rjust(length, b"\0")[-length:]
    if length == VARLEN:
        return varlen(value.to_bytes(8, "big"))
    return (value & ((1 << (8 * length)) - 1)).to_bytes(length, "big")


def record(fields: Sequence[FieldSpec], values: Sequence[Value]) -> bytes:
    """One data record of a template with ``fields``."""
    if len(fields) != len(values):
        raise ValueError("one value per field")
    return b"".join(value_bytes(v, f[1]) for f, v in zip(fields, values, strict=True))


def pad4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


# --------------------------------------------------------------------------- sets
def set_(set_id: int, body: bytes, pad: int = 0) -> bytes:
    """A v9 flowset / IPFIX set: header and body, then ``pad`` zero bytes (in its length)."""
    body += b"\0" * pad
    return struct.pack(">HH", set_id, 4 + len(body)) + body


def data_set(set_id: int, *records: bytes, pad: int = 0) -> bytes:
    return set_(set_id, b"".join(records), pad)


def _field_specs(fields: Iterable[FieldSpec], ipfix: bool) -> bytes:
    out = b""
    for f in fields:
        eid, length, *rest = f
        ent = rest[0] if rest else 0
        if ent and ipfix:
            out += struct.pack(">HHI", eid | 0x8000, length, ent)
        else:
            out += struct.pack(">HH", eid, length)
    return out


# --------------------------------------------------------------------------- NetFlow v9
def v9_template_set(*templates: tuple[int, Sequence[FieldSpec]]) -> bytes:
    body = b"".join(
        struct.pack(">HH", tid, len(fields)) + _field_specs(fields, False)
        for tid, fields in templates
    )
    return set_(0, body)


def v9_options_template_set(
    template_id: int, scopes: Sequence[FieldSpec], options: Sequence[FieldSpec]
) -> bytes:
    body = struct.pack(">HHH", template_id, 4 * len(scopes), 4 * len(options))
    body += _field_specs(scopes, False) + _field_specs(options, False)
    return set_(1, pad4(body))


def v9(
    *flowsets: bytes,
    uptime: int = 100_000,
    secs: int = int(T0),
    seq: int = 0,
    source_id: int = 0,
    count: int | None = None,
) -> bytes:
    """A NetFlow v9 message (``count`` defaults to the number of flowsets)."""
    n = len(flowsets) if count is None else count
    return struct.pack(">HHIIII", 9, n, uptime, secs, seq, source_id) + b"".join(flowsets)


# --------------------------------------------------------------------------- IPFIX
def ipfix_template_set(*templates: tuple[int, Sequence[FieldSpec]]) -> bytes:
    body = b"".join(
        struct.pack(">HH", tid, len(fields)) + _field_specs(fields, True)
        for tid, fields in templates
    )
    return set_(2, body)


def ipfix_options_template_set(
    *templates: tuple[int, Sequence[FieldSpec], Sequence[FieldSpec]],
) -> bytes:
    """Options templates ``(template_id, scope_fields, option_fields)``."""
    body = b"".join(
        struct.pack(">HHH", tid, len(scopes) + len(opts), len(scopes))
        + _field_specs(list(scopes) + list(opts), True)
        for tid, scopes, opts in templates
    )
    return set_(3, pad4(body))


def ipfix_withdraw(*template_ids: int, options: bool = False) -> bytes:
    """Template withdrawal records (field count 0); id 2 (3 with options) withdraws all."""
    body = b"".join(struct.pack(">HH", tid, 0) for tid in template_ids)
    return set_(3 if options else 2, body)


def ipfix(*sets: bytes, export_time: int = int(T0), seq: int = 0, domain: int = 0) -> bytes:
    body = b"".join(sets)
    return struct.pack(">HHIII", 10, 16 + len(body), export_time, seq, domain) + body


# --------------------------------------------------------------------------- NetFlow v5
def v5_record(
    src: str = "10.0.0.1",
    dst: str = "10.0.0.2",
    *,
    nexthop: str = "0.0.0.0",
    input_if: int = 1,
    output_if: int = 2,
    packets: int = 10,
    octets: int = 1000,
    first: int = 90_000,
    last: int = 99_000,
    sport: int = 1234,
    dport: int = 80,
    tcp_flags: int = 0x12,
    proto: int = 6,
    tos: int = 0,
) -> bytes:
    return struct.pack(
        ">4s4s4sHHIIIIHHBBBBHHBBH",
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
        ipaddress.IPv4Address(nexthop).packed,
        input_if,
        output_if,
        packets,
        octets,
        first,
        last,
        sport,
        dport,
        0,
        tcp_flags,
        proto,
        tos,
        0,
        0,
        24,
        24,
        0,
    )


def v5(
    *records: bytes,
    uptime: int = 100_000,
    secs: int = int(T0),
    nsecs: int = 0,
    seq: int = 0,
    engine_type: int = 0,
    engine_id: int = 0,
    sampling: int = 0,
    count: int | None = None,
) -> bytes:
    """A NetFlow v5 datagram; ``sampling`` is the raw 16-bit field (2 bits mode, 14 interval)."""
    n = len(records) if count is None else count
    header = struct.pack(
        ">HHIIIIBBH", 5, n, uptime, secs, nsecs, seq, engine_type, engine_id, sampling
    )
    return header + b"".join(records)


# --------------------------------------------------------------------------- sFlow v5
def sflow_ipv4(
    src: str = "10.9.0.1",
    dst: str = "10.9.0.2",
    *,
    rate: int = 512,
    proto: int = 17,
    sport: int = 53,
    dport: int = 5353,
    length: int = 100,
    sub_agent: int = 0,
) -> bytes:
    """An sFlow v5 datagram (IPv4 agent) with one flow sample holding a sampled-IPv4 record."""
    rec = struct.pack(
        ">II4s4sIIII",
        length,
        proto,
        ipaddress.IPv4Address(src).packed,
        ipaddress.IPv4Address(dst).packed,
        sport,
        dport,
        0,
        0,
    )
    records = struct.pack(">II", 3, len(rec)) + rec
    sample = struct.pack(">8I", 1, 0, rate, 1000, 0, 1, 2, 1) + records
    body = struct.pack(">II", 1, len(sample)) + sample
    header = struct.pack(">II4sIIII", 5, 1, bytes([10, 9, 9, 9]), sub_agent, 1, 1000, 1)
    return header + body


# --------------------------------------------------------------------------- batches
def batch(
    *payloads: bytes,
    exporter: str = "192.0.2.10",
    arrival: float = T0,
    frame: int = 1,
) -> DatagramBatch:
    """A DatagramBatch of ``payloads`` from one exporter, same arrival, frames counting up."""
    b = DatagramBatch()
    for i, p in enumerate(payloads):
        b.append(arrival, frame + i, exporter, p)
    return b


def mixed(items: Iterable[tuple[float, int, str, bytes]]) -> DatagramBatch:
    """A DatagramBatch of ``(arrival, frame, exporter, payload)`` tuples."""
    b = DatagramBatch()
    for a, f, e, p in items:
        b.append(a, f, e, p)
    return b
