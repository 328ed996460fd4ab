"""sFlow v5 decoder: conformance with the capture corpus (tshark truth), synthetic edge
cases, and robustness against malformed input."""

from __future__ import annotations

import ipaddress
import json
import struct
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector.flowbatch import VERSION_SFLOW5, FlowBatch, addr_to_pair, pair_to_str
from collector.sources.pcap import read_pcap
from collector.stats import BAD_COUNT, BAD_SAMPLE, BAD_VERSION, TRUNCATED, StatsRegistry
from collector.wire import sflow
from collector.wire.sflow import decode
from tests import shared

CORPUS = shared.FLOWS
CAPTURES = CORPUS / "captures"
SFLOW5 = b"\x00\x00\x00\x05"


# ---------------------------------------------------------------------------------------
# corpus
# ---------------------------------------------------------------------------------------
def _sflow_captures() -> list[str]:
    index = json.loads((CORPUS / "index.json").read_text())
    return sorted(name for name, e in index.items() if "sflow5" in e.get("versions", []))


SFLOW_CAPTURES = _sflow_captures() if CAPTURES.is_dir() else []
pytestmark = pytest.mark.skipif(not SFLOW_CAPTURES, reason="flow capture corpus not present")


def _sflow_datagrams(name: str) -> list[tuple[float, int, str, bytes]]:
    return [d for d in read_pcap(CAPTURES / name) if d[3][:4] == SFLOW5]


def _truth(name: str) -> list[dict[str, Any]]:
    path = CAPTURES / name.replace(".pcap", ".truth.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _first(value: Any) -> Any:
    return value[0] if isinstance(value, list) else value


def _expected(t: dict[str, Any]) -> dict[str, Any]:
    """Truth values of one sflow_flow line in FlowBatch terms (None = not in the truth)."""
    hdr, fields = t.get("header") or {}, t.get("fields") or {}
    exp = {k: t.get(k) for k in ("src_addr", "dst_addr", "protocol", "src_port", "dst_port")}
    exp |= {k: t.get(k) for k in ("tcp_flags", "input_if", "output_if", "sampling_rate")}
    exp["bytes"] = t.get("frame_length")
    # beyond the normalized keys: fields of the sampled header as tshark shows them
    layers = t.get("header_layers") or []
    exp["ip_version"] = 4 if "ip" in layers else 6 if "ipv6" in layers else None
    exp["tos"] = int(hdr["ip.dsfield"], 16) if "ip.dsfield" in hdr else None
    if "ip.flags.mf" in hdr:
        exp["fragment"] = int(hdr["ip.flags.mf"] == "1" or hdr.get("ip.frag_offset") != "0")
    for p in ("icmp", "icmpv6"):
        if f"{p}.type" in hdr:
            exp["icmp_type_code"] = int(hdr[f"{p}.type"]) * 256 + int(hdr[f"{p}.code"])
    if "vlan.id" in hdr:
        exp["vlan"] = int(hdr["vlan.id"])
    elif "sflow_245.vlan.in" in fields:
        vlan_in = int(_first(fields["sflow_245.vlan.in"]))
        exp["vlan"] = vlan_in if vlan_in < 4096 else 0
    return exp


def _got(batch: FlowBatch, i: int) -> dict[str, Any]:
    got: dict[str, Any] = {"src_addr": pair_to_str(batch.src_hi[i], batch.src_lo[i])}
    got["dst_addr"] = pair_to_str(batch.dst_hi[i], batch.dst_lo[i])
    for k in ("protocol", "src_port", "dst_port", "tcp_flags", "input_if", "output_if"):
        got[k] = int(getattr(batch, k)[i])
    for k in ("sampling_rate", "bytes", "ip_version", "tos", "fragment", "icmp_type_code"):
        got[k] = int(getattr(batch, k)[i])
    got["vlan"] = int(batch.vlan[i])
    return got


#: Mismatches left after comparing with the truth: (capture, row, field) -> cause.
#: Currently none: every compared field of every sFlow capture matches tshark.
KNOWN_MISMATCHES: dict[tuple[str, int, str], str] = {}

FLOW_CAPTURES = [n for n in SFLOW_CAPTURES if any(t["kind"] == "sflow_flow" for t in _truth(n))]


@pytest.mark.parametrize("name", FLOW_CAPTURES)
def test_capture_matches_truth(name: str) -> None:
    datagrams = _sflow_datagrams(name)
    stats = StatsRegistry()
    batch = decode(datagrams, stats)
    batch.validate()
    truth = [t for t in _truth(name) if t["kind"] == "sflow_flow"]
    assert len(batch) == len(truth)
    assert stats.totals().records == len(batch)
    assert stats.totals().datagrams == len(datagrams)
    assert not stats.totals().errors

    compared = matched = 0
    mismatches: dict[tuple[str, int, str], tuple[Any, Any]] = {}
    for i, t in enumerate(truth):
        # structure: the row belongs to the truth line's datagram and exporter
        assert int(batch.frame[i]) == t["frame"]
        assert (int(batch.exporter_hi[i]), int(batch.exporter_lo[i])) == addr_to_pair(t["exporter"])
        assert int(batch.domain_id[i]) == t["sub_agent_id"]
        assert batch.arrival[i] == pytest.approx(t["time"], abs=1e-6)
        got = _got(batch, i)
        for key, want in _expected(t).items():
            if want is None:
                continue
            compared += 1
            if got[key] == want:
                matched += 1
            else:
                mismatches[(name, i, key)] = (want, got[key])
    print(f"{name}: {matched}/{compared} fields match ({len(batch)} samples)")
    assert compared > 0
    assert matched >= 0.99 * compared, mismatches
    assert set(mismatches) <= set(KNOWN_MISMATCHES), mismatches

    assert (batch.version == VERSION_SFLOW5).all()
    assert (batch.packets == 1).all()
    assert (batch.template_id == 0).all()
    assert (batch.first == batch.arrival).all() and (batch.last == batch.arrival).all()


@pytest.mark.parametrize("name", SFLOW_CAPTURES)
def test_counter_samples_counted(name: str) -> None:
    stats = StatsRegistry()
    decode(_sflow_datagrams(name), stats)
    want = sum(t["kind"] == "sflow_counters" for t in _truth(name))
    assert stats.totals().counter_samples == want
    by_exporter: dict[str, int] = {}
    for t in _truth(name):
        if t["kind"] == "sflow_counters":
            by_exporter[t["exporter"]] = by_exporter.get(t["exporter"], 0) + 1
    for exporter, n in by_exporter.items():
        assert stats.get(exporter).counter_samples == n


def test_truncated_capture_counts_errors() -> None:
    name = "tcpdump__sflow_print-segv.pcap"
    datagrams = _sflow_datagrams(name)
    assert datagrams
    stats = StatsRegistry()
    batch = decode(datagrams, stats)
    batch.validate()
    totals = stats.totals()
    assert totals.datagrams == len(datagrams)
    assert totals.bytes == sum(len(d[3]) for d in datagrams)
    assert sum(totals.errors.values()) >= 1
    assert totals.errors[TRUNCATED] >= 1
    assert len(batch) == totals.records


def test_construct_and_struct_layouts_agree() -> None:
    pairs = [
        (sflow.SAMPLE_HEADER, sflow._SAMPLE_HEADER),
        (sflow.FLOW_SAMPLE, sflow._FLOW_SAMPLE),
        (sflow.EXPANDED_FLOW_SAMPLE, sflow._EXPANDED_FLOW_SAMPLE),
        (sflow.RAW_PACKET_HEADER, sflow._RAW_PACKET_HEADER),
        (sflow.SAMPLED_IPV4, sflow._SAMPLED_IPV4),
        (sflow.SAMPLED_IPV6, sflow._SAMPLED_IPV6),
        (sflow.EXTENDED_SWITCH, sflow._EXTENDED_SWITCH),
    ]
    for declared, packed in pairs:
        assert declared.sizeof() == packed.size
        raw = bytes(range(1, packed.size + 1))
        declared_values = [
            int.from_bytes(v, "big") if isinstance(v, bytes) else v
            for k, v in declared.parse(raw).items()
            if not k.startswith("_")
        ]
        packed_values = list(packed.unpack(raw))
        if packed is sflow._SAMPLED_IPV6:  # addresses as (hi, lo) halves
            hs, ls, hd, ld = packed_values[2:6]
            packed_values[2:6] = [hs << 64 | ls, hd << 64 | ld]
        assert declared_values == packed_values
    header = sflow.DATAGRAM_HEADER.parse(_xdr(5, 2) + bytes(16) + _xdr(1, 2, 3, 4))
    assert (header.agent_address_type, header.num_samples) == (2, 4)


# ---------------------------------------------------------------------------------------
# synthetic datagrams
# ---------------------------------------------------------------------------------------
def _xdr(*words: int) -> bytes:
    return struct.pack(f">{len(words)}I", *words)


def _pad(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


def _record(fmt: int, body: bytes) -> bytes:
    return _xdr(fmt, len(body)) + body


def _raw_header(packet: bytes, proto: int = 1, frame_length: int | None = None) -> bytes:
    flen = len(packet) + 4 if frame_length is None else frame_length
    return _record(1, _xdr(proto, flen, 4, len(packet)) + _pad(packet))


def _flow_sample(*records: bytes, rate: int = 100, inp: int = 3, out: int = 7) -> bytes:
    body = _xdr(1, 5, rate, 1000, 0, inp, out, len(records)) + b"".join(records)
    return _record(1, body)


def _expanded_sample(*records: bytes, rate: int = 100, inp: int = 3, out: int = 7) -> bytes:
    body = _xdr(1, 0, 5, rate, 1000, 0, 0, inp, 0, out, len(records)) + b"".join(records)
    return _record(3, body)


def _datagram(*samples: bytes, agent: bytes = bytes([10, 0, 0, 1]), sub: int = 9) -> bytes:
    atype = 1 if len(agent) == 4 else 2
    return _xdr(5, atype) + agent + _xdr(sub, 1, 1000, len(samples)) + b"".join(samples)


def _eth(payload: bytes, etype: int, tags: tuple[tuple[int, int], ...] = ()) -> bytes:
    head = b"\x02\0\0\0\0\x02\x02\0\0\0\0\x01"
    for tpid, vid in tags:
        head += struct.pack(">HH", tpid, vid)
    return head + struct.pack(">H", etype) + payload


def _ipv4(proto: int, l4: bytes, flags_frag: int = 0, tos: int = 0) -> bytes:
    """IPv4 192.0.2.1 -> 198.51.100.2 around ``l4``."""
    head = struct.pack(">BBHHHBBH", 0x45, tos, 20 + len(l4), 1, flags_frag, 64, proto, 0)
    return head + bytes([192, 0, 2, 1, 198, 51, 100, 2]) + l4


def _ipv6(nxt: int, payload: bytes, src: str = "2001:db8::1", dst: str = "2001:db8::2") -> bytes:
    hdr = struct.pack(">IHBB", 0x6 << 28 | 0x2E << 20, len(payload), nxt, 64)
    return hdr + ipaddress.IPv6Address(src).packed + ipaddress.IPv6Address(dst).packed + payload


def _tcp(sport: int, dport: int, flags: int) -> bytes:
    return struct.pack(">HHIIBBHHH", sport, dport, 1, 0, 0x50, flags, 8192, 0, 0)


def _udp(sport: int, dport: int, payload: bytes = b"x" * 8) -> bytes:
    return struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload


def _one(payload: bytes, exporter: str = "192.0.2.200") -> tuple[FlowBatch, StatsRegistry]:
    stats = StatsRegistry()
    batch = decode([(1700000000.5, 4, exporter, payload)], stats)
    batch.validate()
    return batch, stats


def _row(batch: FlowBatch, i: int = 0) -> dict[str, Any]:
    return {k: getattr(batch, k)[i].item() for k in FlowBatch.NAMES}


def test_ethernet_qinq_ipv4_tcp_and_sample_fields() -> None:
    pkt = _eth(_ipv4(6, _tcp(1234, 80, 0x12), tos=0xB8), 0x0800, ((0x88A8, 300), (0x8100, 42)))
    records = (_record(1001, _xdr(7, 0, 8, 0)), _raw_header(pkt, frame_length=1500))
    sample = _flow_sample(*records, rate=0, inp=0x40000000 | 5, out=0x80000000 | 9)
    batch, stats = _one(_datagram(sample, sub=17), exporter="2001:db8::7")
    r = _row(batch)
    assert (r["exporter_hi"], r["exporter_lo"]) == addr_to_pair("2001:db8::7")
    assert pair_to_str(r["src_hi"], r["src_lo"]) == "192.0.2.1"
    assert pair_to_str(r["dst_hi"], r["dst_lo"]) == "198.51.100.2"
    assert (r["protocol"], r["src_port"], r["dst_port"], r["tcp_flags"]) == (6, 1234, 80, 0x12)
    assert (r["tos"], r["vlan"], r["ip_version"], r["fragment"]) == (0xB8, 300, 4, 0)
    assert (r["input_if"], r["output_if"], r["sampling_rate"]) == (5, 9, 1)
    assert (r["bytes"], r["packets"], r["domain_id"], r["frame"]) == (1500, 1, 17, 4)
    assert r["version"] == VERSION_SFLOW5 and r["first"] == r["last"] == 1700000000.5
    st = stats.get("2001:db8::7")
    assert (st.datagrams, st.records, st.counter_samples) == (1, 1, 0)


def test_ipv6_extension_headers_fragments_and_icmp() -> None:
    hop_by_hop = bytes([44, 0]) + b"\0" * 6
    first_frag = bytes([17, 0]) + struct.pack(">HI", 0x0001, 99)  # offset 0, M=1
    later_frag = bytes([17, 0]) + struct.pack(">HI", 0x0100, 99)  # offset 32
    icmp6 = bytes([128, 0, 0, 0]) + b"\0" * 4
    pkts = [
        _eth(_ipv6(0, hop_by_hop + first_frag + _udp(53, 4444)), 0x86DD),
        _eth(_ipv6(44, later_frag + b"\0" * 16), 0x86DD),
        _eth(_ipv6(58, icmp6), 0x86DD, ((0x8100, 5),)),
        _ipv6(6, _tcp(443, 5555, 0x10)),  # header_protocol 12: starts at IPv6
        _ipv4(17, b"\0" * 16, flags_frag=0x0010),  # header_protocol 11, later fragment
        _ipv4(1, bytes([3, 3, 0, 0]) + b"\0" * 4),
    ]
    protos = [1, 1, 1, 12, 11, 11]
    samples = [_flow_sample(_raw_header(p, proto)) for p, proto in zip(pkts, protos, strict=True)]
    batch, _ = _one(_datagram(*samples, agent=ipaddress.IPv6Address("2001:db8::99").packed))
    rows = [_row(batch, i) for i in range(len(batch))]
    assert len(rows) == 6
    assert [r["ip_version"] for r in rows] == [6, 6, 6, 6, 4, 4]
    assert [r["protocol"] for r in rows] == [17, 17, 58, 6, 17, 1]
    assert [r["fragment"] for r in rows] == [1, 1, 0, 0, 1, 0]
    assert [r["src_port"] for r in rows] == [53, 0, 0, 443, 0, 0]
    assert [r["dst_port"] for r in rows] == [4444, 0, 0, 5555, 0, 0]
    assert [r["icmp_type_code"] for r in rows] == [0, 0, 128 * 256, 0, 0, 3 * 256 + 3]
    assert rows[2]["vlan"] == 5 and rows[3]["tcp_flags"] == 0x10
    assert rows[0]["tos"] == 0x2E
    assert pair_to_str(rows[0]["src_hi"], rows[0]["src_lo"]) == "2001:db8::1"
    assert pair_to_str(rows[3]["dst_hi"], rows[3]["dst_lo"]) == "2001:db8::2"


def test_sampled_ip_records_without_header_and_expanded_sample() -> None:
    v4 = _record(3, _xdr(900, 17) + bytes([203, 0, 113, 9, 198, 51, 100, 1]) + _xdr(123, 4, 0, 8))
    src6 = ipaddress.IPv6Address("2001:db8::a").packed
    dst6 = ipaddress.IPv6Address("2001:db8::b").packed
    v6 = _record(4, _xdr(1300, 6) + src6 + dst6 + _xdr(80, 40000, 0x18, 0))
    unknown = _record((9 << 12) | 1, b"\xff" * 12)
    arp = _raw_header(_eth(b"\0" * 28, 0x0806), frame_length=64)
    samples = [
        _flow_sample(unknown, v4),
        _expanded_sample(v6, inp=123456789, out=987654321, rate=512),
        _flow_sample(arp, v4),  # a header without IP: fall back to the IPv4 record
    ]
    batch, _ = _one(_datagram(*samples))
    r0, r1, r2 = (_row(batch, i) for i in range(3))
    assert pair_to_str(r0["src_hi"], r0["src_lo"]) == "203.0.113.9"
    assert (r0["protocol"], r0["src_port"], r0["dst_port"], r0["tos"]) == (17, 123, 4, 8)
    assert (r0["bytes"], r0["ip_version"]) == (900, 4)
    assert pair_to_str(r1["dst_hi"], r1["dst_lo"]) == "2001:db8::b"
    assert (r1["protocol"], r1["tcp_flags"], r1["bytes"], r1["ip_version"]) == (6, 0x18, 1300, 6)
    assert (r1["input_if"], r1["output_if"], r1["sampling_rate"]) == (123456789, 987654321, 512)
    assert (r2["bytes"], r2["protocol"], r2["src_port"]) == (64, 17, 123)


def test_counter_samples_and_unknown_samples() -> None:
    counters = _record(2, _xdr(1, 2, 0))
    expanded_counters = _record(4, _xdr(1, 0, 2, 0))
    other = _record((4413 << 12) | 5, b"\0" * 8)
    batch, stats = _one(_datagram(counters, other, expanded_counters))
    assert len(batch) == 0
    st = stats.get("192.0.2.200")
    assert (st.counter_samples, st.records, st.datagrams) == (2, 0, 1)
    assert not st.errors


def test_errors_are_counted_and_good_samples_kept() -> None:
    raw = _raw_header(_eth(_ipv4(17, _udp(1, 2)), 0x0800))
    good = _flow_sample(raw)
    short_records = _record(1, _xdr(1, 5, 10, 1000, 0, 1, 2, 3) + raw)
    stats = StatsRegistry()
    datagrams = [
        (1.0, 1, "192.0.2.1", b"\0\0\0\x09" + bytes(24)),  # bad version
        (2.0, 2, "192.0.2.1", b"\0\0"),  # shorter than a version word
        (3.0, 3, "192.0.2.1", _datagram(good, good)[:-20]),  # second sample cut
        (4.0, 4, "192.0.2.1", _datagram(short_records)),  # says 3 records, holds 1
        (5.0, 5, "192.0.2.2", _xdr(5, 1) + bytes(4) + _xdr(0, 1, 1, 10**6) + good),
        (6.0, 6, "192.0.2.2", _xdr(5, 3) + bytes(40)),  # unknown agent address type
        (7.0, 7, "bogus", _datagram(good)),
    ]
    batch = decode(datagrams, stats)
    batch.validate()
    a, b = stats.get("192.0.2.1"), stats.get("192.0.2.2")
    assert a.errors[BAD_VERSION] == 1 and a.errors[TRUNCATED] == 2 and a.errors[BAD_SAMPLE] == 1
    assert b.errors[BAD_COUNT] == 1 and b.errors["unsupported"] == 1
    assert a.datagrams == 4 and b.datagrams == 2
    assert list(batch.frame) == [3, 4, 5, 7]
    assert a.records == 2 and b.records == 1 and stats.get("bogus").records == 1
    assert (batch.exporter_hi[-1], batch.exporter_lo[-1]) == (0, 0)


def test_empty_input() -> None:
    batch = decode([], StatsRegistry())
    batch.validate()
    assert len(batch) == 0


# ---------------------------------------------------------------------------------------
# robustness: nothing raises, columns stay aligned
# ---------------------------------------------------------------------------------------
def _corpus_datagrams() -> list[bytes]:
    out: list[bytes] = []
    for name in SFLOW_CAPTURES:
        out.extend(d[3] for d in _sflow_datagrams(name)[:12])
    synthetic = _flow_sample(
        _record(1001, _xdr(1, 0, 2, 0)),
        _raw_header(_eth(_ipv6(0, bytes([44, 0]) + b"\0" * 6 + b"\0" * 8), 0x86DD)),
        _record(3, bytes(32)),
    )
    out.append(_datagram(synthetic, _expanded_sample(_record(4, bytes(56)))))
    return out


SEEDS = _corpus_datagrams() if SFLOW_CAPTURES else [b""]


def _check(payloads: list[bytes]) -> None:
    """Decode with the decoder's last-resort exception handler disabled."""
    stats = StatsRegistry()
    datagrams = [(float(i), i + 1, "192.0.2.9", p) for i, p in enumerate(payloads)]
    saved, sflow._SAFETY_NET = sflow._SAFETY_NET, ()
    try:
        batch = decode(datagrams, stats)
    finally:
        sflow._SAFETY_NET = saved
    batch.validate()
    totals = stats.totals()
    assert totals.datagrams == len(payloads)
    assert totals.records == len(batch)
    assert np.isin(batch.ip_version, (0, 4, 6)).all()
    assert (batch.sampling_rate >= 1).all()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.sampled_from(SEEDS), data=st.data())
def test_truncations_and_byte_flips(seed: bytes, data: st.DataObject) -> None:
    cut = data.draw(st.integers(0, len(seed)))
    flips = data.draw(
        st.lists(st.tuples(st.integers(0, max(len(seed) - 1, 0)), st.integers(1, 255)), max_size=8)
    )
    flipped = bytearray(seed)
    for pos, mask in flips:
        if flipped:
            flipped[pos] ^= mask
    _check([seed[:cut], bytes(flipped), bytes(flipped)[:cut], seed])


@settings(max_examples=300, deadline=None)
@given(
    agent_type=st.sampled_from([1, 2, 3]),
    count=st.integers(0, 2**32 - 1) | st.integers(0, 8),
    tail=st.binary(max_size=600),
)
def test_random_bytes_after_valid_header(agent_type: int, count: int, tail: bytes) -> None:
    agent = bytes(16 if agent_type == 2 else 4)
    _check([_xdr(5, agent_type) + agent + _xdr(1, 2, 3, count) + tail])


@settings(max_examples=200, deadline=None)
@given(
    records=st.lists(
        st.tuples(st.sampled_from([1, 3, 4, 1001, 2, 7]), st.binary(max_size=200)), max_size=5
    ),
    nrec=st.integers(0, 2**32 - 1) | st.integers(0, 6),
    expanded=st.booleans(),
)
def test_random_records_inside_a_valid_sample(
    records: list[tuple[int, bytes]], nrec: int, expanded: bool
) -> None:
    body = b"".join(_record(fmt, _pad(raw)) for fmt, raw in records)
    if expanded:
        sample = _record(3, _xdr(1, 0, 5, 10, 1000, 0, 0, 1, 0, 2, nrec) + body)
    else:
        sample = _record(1, _xdr(1, 5, 10, 1000, 0, 1, 2, nrec) + body)
    _check([_datagram(sample)])
