"""collector.sources.pcap: reading UDP datagrams out of pcap / pcapng, and PcapWriter."""

from __future__ import annotations

import json
import socket
import struct
from collections import Counter
from pathlib import Path

import pytest

from collector.sources.pcap import PcapError, PcapReader, read_pcap, read_pcap_batches
from collector.sources.pcapwriter import PcapWriter, _checksum
from tests import shared

FLOWS = shared.CAPTURES
SCENARIOS = shared.SCENARIOS
CAPTURES = sorted(FLOWS.glob("*.pcap")) if FLOWS.is_dir() else []
SCENARIO_PCAPS = sorted(SCENARIOS.glob("*/flows.pcap")) if SCENARIOS.is_dir() else []

# ---------------------------------------------------------------- frame builders (by hand)


def udp(sport: int, dport: int, payload: bytes, length: int | None = None) -> bytes:
    ulen = 8 + len(payload) if length is None else length
    return struct.pack("!HHHH", sport, dport, ulen, 0) + payload


def ipv4(
    src: str,
    dst: str,
    data: bytes,
    *,
    proto: int = 17,
    ident: int = 1,
    frag: int = 0,
    options: bytes = b"",
    total: int | None = None,
) -> bytes:
    ihl = 5 + len(options) // 4
    tot = ihl * 4 + len(data) if total is None else total
    hdr = struct.pack("!BBHHHBBH", 0x40 | ihl, 0, tot, ident, frag, 64, proto, 0)
    return hdr + socket.inet_aton(src) + socket.inet_aton(dst) + options + data


def ipv6(src: str, dst: str, nh: int, data: bytes) -> bytes:
    return (
        struct.pack("!IHBB", 0x60000000, len(data), nh, 64)
        + socket.inet_pton(socket.AF_INET6, src)
        + socket.inet_pton(socket.AF_INET6, dst)
        + data
    )


def eth(etype: int, data: bytes, tags: tuple[tuple[int, int], ...] = ()) -> bytes:
    head = b"\x02" * 6 + b"\x04" * 6
    for tpid, vid in tags:
        head += struct.pack("!HH", tpid, vid)
    return head + struct.pack("!H", etype) + data


def v4_frame(src: str, payload: bytes, **kw: int) -> bytes:
    return eth(0x0800, ipv4(src, "192.0.2.254", udp(40000, 2055, payload), **kw))  # type: ignore[arg-type]


def classic(
    records: list[tuple[float, bytes]] | list[tuple[float, bytes, int]],
    *,
    linktype: int = 1,
    endian: str = "<",
    nano: bool = False,
) -> bytes:
    units = 10**9 if nano else 10**6
    out = struct.pack(
        endian + "IHHiIII", 0xA1B23C4D if nano else 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype
    )
    for rec in records:
        ts, data = rec[0], rec[1]
        orig = rec[2] if len(rec) > 2 else len(data)
        sec = int(ts)
        frac = round((ts - sec) * units)
        out += struct.pack(endian + "IIII", sec, frac, len(data), orig) + data
    return out


def _pad(b: bytes) -> bytes:
    return b + b"\0" * (-len(b) % 4)


def block(e: str, btype: int, body: bytes) -> bytes:
    body = _pad(body)
    blen = 12 + len(body)
    return struct.pack(e + "II", btype, blen) + body + struct.pack(e + "I", blen)


def shb(e: str) -> bytes:
    return block(e, 0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1))


def opt(e: str, code: int, value: bytes) -> bytes:
    return struct.pack(e + "HH", code, len(value)) + _pad(value)


def idb(e: str, linktype: int, snaplen: int = 0, options: bytes = b"") -> bytes:
    if options:
        options += opt(e, 0, b"")
    return block(e, 1, struct.pack(e + "HHI", linktype, 0, snaplen) + options)


def epb(e: str, iface: int, units: int, data: bytes, orig: int | None = None) -> bytes:
    orig = len(data) if orig is None else orig
    head = struct.pack(e + "IIIII", iface, units >> 32, units & 0xFFFFFFFF, len(data), orig)
    return block(e, 6, head + _pad(data))


def spb(e: str, data: bytes) -> bytes:
    return block(e, 3, struct.pack(e + "I", len(data)) + data)


def pb(e: str, iface: int, units: int, data: bytes) -> bytes:
    head = struct.pack(
        e + "HHIIII", iface, 0, units >> 32, units & 0xFFFFFFFF, len(data), len(data)
    )
    return block(e, 2, head + data)


def write(tmp_path: Path, data: bytes, name: str = "t.pcap") -> Path:
    p = tmp_path / name
    p.write_bytes(data)
    return p


# ---------------------------------------------------------------- real captures


@pytest.mark.skipif(not CAPTURES, reason="conformance corpus not present")
@pytest.mark.parametrize("capture", CAPTURES, ids=lambda p: p.name)
def test_conformance_capture_frames(capture: Path) -> None:
    truth: dict[int, str] = {}
    with open(capture.with_name(capture.name[: -len(".pcap")] + ".truth.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            truth[rec["frame"]] = rec["exporter"]
    got = {frame: src for _ts, frame, src, _payload in read_pcap(capture)}
    missing = sorted(set(truth) - set(got))
    assert not missing, f"truth frames not read: {missing[:10]}"
    wrong = {f: (got[f], truth[f]) for f in truth if got[f] != truth[f]}
    assert not wrong


@pytest.mark.skipif(not CAPTURES, reason="conformance corpus not present")
def test_conformance_frames_are_in_order_and_times_match() -> None:
    for capture in CAPTURES[:20]:
        times = {}
        with open(capture.with_name(capture.name[: -len(".pcap")] + ".truth.jsonl")) as f:
            for line in f:
                rec = json.loads(line)
                times[rec["frame"]] = float(rec["time"])
        frames = []
        for ts, frame, _src, _payload in read_pcap(capture):
            frames.append(frame)
            if frame in times:
                assert ts == pytest.approx(times[frame], abs=1e-6)
        assert frames == sorted(frames) and len(set(frames)) == len(frames)


@pytest.mark.skipif(not SCENARIO_PCAPS, reason="scenarios not present")
@pytest.mark.parametrize("pcap", SCENARIO_PCAPS, ids=lambda p: p.parent.name)
def test_scenario_pcaps(pcap: Path) -> None:
    labels = json.loads((pcap.parent / "labels.json").read_text())
    reader = PcapReader(pcap)
    by_exporter: Counter[str] = Counter()
    last = 0
    for ts, frame, src, payload in reader:
        assert frame == last + 1  # every frame is a UDP datagram here
        last = frame
        assert labels["start"] - 1 <= ts <= labels["end"] + 120
        assert payload[:2] in (b"\x00\x09", b"\x00\x0a")
        by_exporter[src] += 1
    assert reader.frames == reader.datagrams == labels["counts"]["datagrams"]
    assert by_exporter == {e["ip"]: e["datagrams"] for e in labels["exporters"]}


# ---------------------------------------------------------------- classic pcap


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("nano", [False, True])
def test_classic_byte_orders_and_resolutions(tmp_path: Path, endian: str, nano: bool) -> None:
    ts = 1739869800.123456 if not nano else 1739869800.123456789
    recs = [(ts, v4_frame("10.0.0.1", b"one")), (ts + 1, v4_frame("10.0.0.2", b"two"))]
    p = write(tmp_path, classic(recs, endian=endian, nano=nano))
    got = list(read_pcap(p))
    assert [(f, s, pl) for _t, f, s, pl in got] == [
        (1, "10.0.0.1", b"one"),
        (2, "10.0.0.2", b"two"),
    ]
    assert got[0][0] == pytest.approx(ts, abs=1e-6)
    assert got[1][0] == pytest.approx(ts + 1, abs=1e-6)


def test_nanosecond_resolution_kept(tmp_path: Path) -> None:
    data = classic([(0.0, v4_frame("10.0.0.1", b"x"))], nano=True)
    data = data[:24] + struct.pack("<II", 100, 999_999_999) + data[32:]
    ((ts, *_),) = read_pcap(write(tmp_path, data))
    assert ts == pytest.approx(100.999999999, abs=1e-9)


def test_non_udp_frames_are_counted_but_skipped(tmp_path: Path) -> None:
    tcp = eth(0x0800, ipv4("10.0.0.9", "10.0.0.1", b"\0" * 20, proto=6))
    arp = eth(0x0806, b"\0" * 28)
    recs = [(1.0, tcp), (2.0, arp), (3.0, v4_frame("10.0.0.3", b"p")), (4.0, b"\x01\x02")]
    reader = PcapReader(write(tmp_path, classic(recs)))
    assert [(f, s) for _t, f, s, _p in reader] == [(3, "10.0.0.3")]
    assert reader.frames == 4 and reader.datagrams == 1


def test_ipv4_options_and_vlan_tags(tmp_path: Path) -> None:
    inner = ipv4("10.1.1.1", "10.1.1.2", udp(1, 2, b"opt"), options=b"\x01\x01\x01\x00")
    qinq = eth(0x0800, inner, tags=((0x88A8, 100), (0x8100, 42)))
    dot1q = eth(0x0800, ipv4("10.1.1.3", "10.1.1.2", udp(1, 2, b"vlan")), tags=((0x8100, 7),))
    got = list(read_pcap(write(tmp_path, classic([(1.0, qinq), (2.0, dot1q)]))))
    assert [(s, p) for _t, _f, s, p in got] == [("10.1.1.1", b"opt"), ("10.1.1.3", b"vlan")]


def test_udp_length_and_padding(tmp_path: Path) -> None:
    # Ethernet padding after a short datagram is not payload
    padded = v4_frame("10.0.0.1", b"ab") + b"\0" * 20
    # UDP length shorter than the IP payload: the UDP length wins
    short = eth(0x0800, ipv4("10.0.0.2", "10.0.0.9", udp(1, 2, b"abcdef", length=10)))
    # truncated capture (snaplen): the payload is what was captured
    full = v4_frame("10.0.0.3", b"0123456789")
    recs = [(1.0, padded), (2.0, short), (3.0, full[:-4], len(full))]
    got = [p for *_x, p in read_pcap(write(tmp_path, classic(recs)))]  # type: ignore[arg-type]
    assert got == [b"ab", b"ab", b"012345"]


def test_truncated_file_ends_cleanly(tmp_path: Path) -> None:
    data = classic([(1.0, v4_frame("10.0.0.1", b"a" * 50)), (2.0, v4_frame("10.0.0.2", b"b" * 50))])
    for cut in (len(data) - 10, len(data) - 100, len(data) - (16 + 92) + 5):
        got = list(read_pcap(write(tmp_path, data[:cut])))
        assert [f for _t, f, _s, _p in got] == [1]
    assert list(read_pcap(write(tmp_path, data[:24]))) == []


def test_malformed_files_raise_with_offset(tmp_path: Path) -> None:
    with pytest.raises(PcapError, match="offset 0"):
        list(read_pcap(write(tmp_path, b"GIF89a not a capture")))
    with pytest.raises(PcapError):
        list(read_pcap(write(tmp_path, b"")))
    good = classic([(1.0, v4_frame("10.0.0.1", b"a"))])
    bad = good + struct.pack("<IIII", 2, 0, 0x7FFFFFFF, 10) + b"\0" * 10
    with pytest.raises(PcapError) as info:
        list(read_pcap(write(tmp_path, bad)))
    assert info.value.offset == len(good)
    assert isinstance(info.value, ValueError)
    with pytest.raises(PcapError, match="link type"):
        list(read_pcap(write(tmp_path, classic([], linktype=147))))


def test_batches(tmp_path: Path) -> None:
    recs = [(float(i), v4_frame(f"10.0.0.{i % 3}", bytes([i]))) for i in range(10)]
    batches = list(read_pcap_batches(write(tmp_path, classic(recs)), batch_size=4))
    assert [len(b) for b in batches] == [4, 4, 2]
    assert batches[0] is not batches[1]
    assert [f for b in batches for f in b.frame] == list(range(1, 11))
    assert batches[2].exporter == ["10.0.0.2", "10.0.0.0"]
    assert batches[2].payload == [b"\x08", b"\x09"]
    assert batches[1].arrival == [4.0, 5.0, 6.0, 7.0]
    with pytest.raises(ValueError):
        next(read_pcap_batches(write(tmp_path, classic(recs)), batch_size=0))


# ---------------------------------------------------------------- link types


def test_linux_cooked_sll_and_sll2(tmp_path: Path) -> None:
    ip = ipv4("10.2.0.1", "10.2.0.2", udp(1, 2, b"sll"))
    sll = struct.pack("!HHH8sH", 0, 1, 6, b"\x02" * 6, 0x0800) + ip
    p = write(tmp_path, classic([(1.0, sll)], linktype=113))
    assert [(s, pl) for _t, _f, s, pl in read_pcap(p)] == [("10.2.0.1", b"sll")]
    ip6 = ipv6("2001:db8::1", "2001:db8::2", 17, udp(1, 2, b"sll2"))
    sll2 = struct.pack("!HHIHBB8s", 0x86DD, 0, 3, 1, 0, 6, b"\x02" * 6) + ip6
    p = write(tmp_path, classic([(1.0, sll2)], linktype=276))
    assert [(s, pl) for _t, _f, s, pl in read_pcap(p)] == [("2001:db8::1", b"sll2")]


@pytest.mark.parametrize("linktype", [101, 12, 14, 228, 229])
def test_raw_ip(tmp_path: Path, linktype: int) -> None:
    v4 = ipv4("10.3.0.1", "10.3.0.2", udp(1, 2, b"raw4"))
    v6 = ipv6("2001:db8::3", "2001:db8::4", 17, udp(1, 2, b"raw6"))
    p = write(tmp_path, classic([(1.0, v4), (2.0, v6)], linktype=linktype))
    assert [(s, pl) for _t, _f, s, pl in read_pcap(p)] == [
        ("10.3.0.1", b"raw4"),
        ("2001:db8::3", b"raw6"),
    ]


def test_bsd_null_and_loop(tmp_path: Path) -> None:
    v4 = struct.pack("<I", 2) + ipv4("10.4.0.1", "10.4.0.2", udp(1, 2, b"null"))
    v6 = struct.pack("<I", 30) + ipv6("::1", "::1", 17, udp(1, 2, b"null6"))
    p = write(tmp_path, classic([(1.0, v4), (2.0, v6)], linktype=0))
    assert [(s, pl) for _t, _f, s, pl in read_pcap(p)] == [("10.4.0.1", b"null"), ("::1", b"null6")]
    loop = struct.pack("!I", 2) + ipv4("10.4.0.3", "10.4.0.2", udp(1, 2, b"loop"))
    p = write(tmp_path, classic([(1.0, loop)], linktype=108))
    assert [(s, pl) for _t, _f, s, pl in read_pcap(p)] == [("10.4.0.3", b"loop")]


# ---------------------------------------------------------------- IPv6, fragments


def test_ipv6_transport_with_extension_headers(tmp_path: Path) -> None:
    payload = udp(1, 2, b"v6 ext")
    dstopts = bytes([17, 0]) + b"\x01\x04\0\0\0\0"  # next UDP, 8 bytes, PadN
    hopbyhop = bytes([60, 0]) + b"\x01\x04\0\0\0\0"  # next dest opts
    routing = bytes([0, 0, 0, 0]) + b"\0" * 4  # next hop-by-hop (odd, but walkable)
    ip6 = ipv6("2001:db8:90::1", "2001:db8::ff", 43, routing + hopbyhop + dstopts + payload)
    plain = ipv6("2001:db8:91::1", "2001:db8::ff", 17, udp(1, 2, b"plain"))
    p = write(tmp_path, classic([(1.0, eth(0x86DD, ip6)), (2.0, eth(0x86DD, plain))]))
    got = [(f, s, pl) for _t, f, s, pl in read_pcap(p)]
    assert got == [(1, "2001:db8:90::1", b"v6 ext"), (2, "2001:db8:91::1", b"plain")]


def test_ipv4_fragments_reassembled_out_of_order(tmp_path: Path) -> None:
    body = bytes(range(256)) * 10
    dgram = udp(40000, 2055, body)
    pieces = [dgram[i : i + 800] for i in range(0, len(dgram), 800)]
    frames = []
    for i, piece in enumerate(pieces):
        more = 0x2000 if i < len(pieces) - 1 else 0
        frames.append(
            eth(0x0800, ipv4("10.5.0.1", "10.5.0.2", piece, ident=77, frag=more | i * 100))
        )
    order = [2, 0, 3, 1]  # last fragment second, completion on the fourth frame
    other = v4_frame("10.5.0.9", b"between")
    recs = [(1.0 + i, frames[j]) for i, j in enumerate(order)]
    recs.insert(1, (1.5, other))
    reader = PcapReader(write(tmp_path, classic(recs)))
    got = [(f, s, pl) for _t, f, s, pl in reader]
    assert got == [(2, "10.5.0.9", b"between"), (5, "10.5.0.1", body)]
    assert reader.reassembled == 1 and reader.fragments_dropped == 0


def test_incomplete_fragments_dropped(tmp_path: Path) -> None:
    dgram = udp(40000, 2055, b"z" * 2000)
    first = eth(0x0800, ipv4("10.6.0.1", "10.6.0.2", dgram[:1000], ident=5, frag=0x2000))
    # a non-first fragment alone, a fragment of another protocol
    lone = eth(0x0800, ipv4("10.6.0.1", "10.6.0.2", b"q" * 64, ident=6, frag=125))
    tcp = eth(0x0800, ipv4("10.6.0.1", "10.6.0.2", b"q" * 64, ident=7, frag=0x2000, proto=6))
    reader = PcapReader(write(tmp_path, classic([(1.0, first), (2.0, lone), (3.0, tcp)])))
    assert list(reader) == []
    assert reader.frames == 3 and reader.fragments_dropped == 2


def test_fragment_buffer_is_bounded(tmp_path: Path) -> None:
    recs = [
        (float(i), eth(0x0800, ipv4("10.7.0.1", "10.7.0.2", b"f" * 16, ident=i, frag=0x2000)))
        for i in range(50)
    ]
    reader = PcapReader(write(tmp_path, classic(recs)), max_fragments=8, fragment_timeout=1e9)
    assert list(reader) == []
    assert reader.fragments_dropped == 50


def test_fragment_timeout(tmp_path: Path) -> None:
    dgram = udp(1, 2, b"y" * 100)
    a = eth(0x0800, ipv4("10.8.0.1", "10.8.0.2", dgram[:56], ident=9, frag=0x2000))
    b = eth(0x0800, ipv4("10.8.0.1", "10.8.0.2", dgram[56:], ident=9, frag=7))
    unrelated = eth(0x0800, ipv4("10.8.0.3", "10.8.0.2", dgram[:56], ident=1, frag=0x2000))
    # the unrelated fragment, 100 s later, expires the first; the second then never completes
    reader = PcapReader(write(tmp_path, classic([(0.0, a), (100.0, unrelated), (101.0, b)])))
    assert list(reader) == []
    recs = [(0.0, a), (1.0, unrelated), (2.0, b)]
    got = [(f, pl) for _t, f, _s, pl in read_pcap(write(tmp_path, classic(recs)))]
    assert got == [(3, b"y" * 100)]


# ---------------------------------------------------------------- pcapng


@pytest.mark.parametrize("e", ["<", ">"])
def test_pcapng_blocks(tmp_path: Path, e: str) -> None:
    f1 = v4_frame("10.9.0.1", b"epb-us")
    f2 = eth(0x86DD, ipv6("2001:db8::9", "2001:db8::1", 17, udp(1, 2, b"epb-ns")))
    f3 = v4_frame("10.9.0.3", b"spb")
    f4 = ipv4("10.9.0.4", "10.9.0.2", udp(1, 2, b"pb-raw"))
    arp = eth(0x0806, b"\0" * 28)
    data = (
        shb(e)
        + idb(e, 1, 0)  # 0: Ethernet, microseconds (default)
        + idb(e, 101, 0, opt(e, 9, b"\x09") + opt(e, 2, b"eth1"))  # 1: raw IP, nanoseconds
        + idb(e, 1, 0, opt(e, 9, b"\x84") + opt(e, 14, struct.pack(e + "q", 1000)))  # 2: 1/16 s
        + epb(e, 0, 1_700_000_000_250_000, f1)
        + block(e, 4, b"\0" * 8)  # name resolution block: skipped
        + epb(e, 0, 1_700_000_001_000_000, arp)
        + block(e, 0x0BAD, b"custom")
        + epb(e, 2, 16 * 5 + 8, eth(0x86DD, f2[14:]))
        + spb(e, f3)
        + pb(e, 1, 1_700_000_002_123_456_789, f4)
    )
    got = list(read_pcap(write(tmp_path, data, "t.pcapng")))
    assert [(f, s, pl) for _t, f, s, pl in got] == [
        (1, "10.9.0.1", b"epb-us"),
        (3, "2001:db8::9", b"epb-ns"),
        (4, "10.9.0.3", b"spb"),
        (5, "10.9.0.4", b"pb-raw"),
    ]
    times = [t for t, *_ in got]
    assert times[0] == pytest.approx(1_700_000_000.25)
    assert times[1] == pytest.approx(1000 + 5.5)  # if_tsoffset + 88/16
    assert times[2] == times[1]  # a simple packet block has no time: the last one is kept
    assert times[3] == pytest.approx(1_700_000_002.123456789)


def test_pcapng_sections_of_both_byte_orders(tmp_path: Path) -> None:
    a = shb("<") + idb("<", 1) + epb("<", 0, 1_000_000, v4_frame("10.10.0.1", b"le"))
    b = (
        shb(">")
        + idb(">", 228)
        + epb(">", 0, 2_000_000, ipv4("10.10.0.2", "10.10.0.9", udp(1, 2, b"be")))
    )
    got = list(read_pcap(write(tmp_path, a + b, "t.pcapng")))
    assert [(t, f, s, pl) for t, f, s, pl in got] == [
        (1.0, 1, "10.10.0.1", b"le"),
        (2.0, 2, "10.10.0.2", b"be"),
    ]


def test_pcapng_truncated_and_malformed(tmp_path: Path) -> None:
    e = "<"
    head = shb(e) + idb(e, 1)
    data = (
        head + epb(e, 0, 1, v4_frame("10.11.0.1", b"a")) + epb(e, 0, 2, v4_frame("10.11.0.2", b"b"))
    )
    for cut in (len(data) - 4, len(data) - 30, len(data) - 1):
        got = list(read_pcap(write(tmp_path, data[:cut], "t.pcapng")))
        assert [s for _t, _f, s, _p in got] == ["10.11.0.1"]
    bad_len = head + struct.pack(e + "II", 6, 13) + b"\0" * 16
    with pytest.raises(PcapError) as info:
        list(read_pcap(write(tmp_path, bad_len, "t.pcapng")))
    assert info.value.offset == len(head)
    mismatch = bytearray(head + epb(e, 0, 1, v4_frame("10.11.0.1", b"a")))
    mismatch[-4:] = struct.pack(e + "I", 8)
    with pytest.raises(PcapError, match="trailing"):
        list(read_pcap(write(tmp_path, bytes(mismatch), "t.pcapng")))
    no_iface = shb(e) + epb(e, 0, 1, v4_frame("10.11.0.1", b"a"))
    with pytest.raises(PcapError, match="interface"):
        list(read_pcap(write(tmp_path, no_iface, "t.pcapng")))
    bad_bom = bytearray(shb(e))
    bad_bom[8:12] = b"\0\0\0\0"
    with pytest.raises(PcapError, match="byte-order"):
        list(read_pcap(write(tmp_path, bytes(bad_bom), "t.pcapng")))


# ---------------------------------------------------------------- writer


def test_writer_round_trip(tmp_path: Path) -> None:
    p = tmp_path / "w.pcap"
    with PcapWriter(p) as w:
        w.write(1739869800.5, "192.0.2.1", "192.0.2.254", 40000, 2055, b"\x00\x09hello")
        w.write(1739869801.25, "2001:db8::1", "2001:db8::fe", 40001, 4739, b"\x00\x0aipfix")
        w.write(1739869802.0, "192.0.2.2", "192.0.2.254", 40000, 2055, b"")
    got = list(read_pcap(p))
    assert got == [
        (1739869800.5, 1, "192.0.2.1", b"\x00\x09hello"),
        (1739869801.25, 2, "2001:db8::1", b"\x00\x0aipfix"),
        (1739869802.0, 3, "192.0.2.2", b""),
    ]
    with pytest.raises(ValueError):
        PcapWriter(tmp_path / "x.pcap").write(0.0, "10.0.0.1", "::1", 1, 2, b"")


def test_writer_checksums(tmp_path: Path) -> None:
    p = tmp_path / "w.pcap"
    with PcapWriter(p) as w:
        w.write(1.0, "10.0.0.1", "10.0.0.2", 1234, 2055, b"odd length")
        w.write(2.0, "2001:db8::1", "2001:db8::2", 1234, 2055, b"even!!")
    data = p.read_bytes()
    f1 = data[40 : 40 + struct.unpack_from("<I", data, 32)[0]]
    ip = f1[14:]
    assert _checksum(ip[:20]) == 0
    seg = ip[20:]
    pseudo = ip[12:20] + struct.pack("!xBH", 17, len(seg))
    assert _checksum(pseudo + seg) == 0
    off = 40 + len(f1) + 16
    f2 = data[off:]
    ip6 = f2[14:]
    seg6 = ip6[40:]
    pseudo6 = ip6[8:40] + struct.pack("!IxxxB", len(seg6), 17)
    assert _checksum(pseudo6 + seg6) == 0


@pytest.mark.parametrize("v6", [False, True])
def test_writer_fragments_reassemble(tmp_path: Path, v6: bool) -> None:
    p = tmp_path / "f.pcap"
    src, dst = ("2001:db8::1", "2001:db8::2") if v6 else ("10.0.0.1", "10.0.0.2")
    body = bytes(range(256)) * 16
    with PcapWriter(p, fragment_size=1480, nanosecond=True) as w:
        w.write(5.000000001, src, dst, 1, 2055, body)
        w.write(6.0, src, dst, 1, 2055, b"small")
    reader = PcapReader(p)
    got = list(reader)
    assert reader.frames == 4  # 4104 bytes of UDP in 3 fragments, then one whole datagram
    assert got == [(pytest.approx(5.000000001, abs=1e-9), 3, src, body), (6.0, 4, src, b"small")]
    assert reader.reassembled == 1


def test_writer_to_open_file_and_bad_args(tmp_path: Path) -> None:
    p = tmp_path / "o.pcap"
    with open(p, "wb") as f:
        w = PcapWriter(f)
        w.write(1.0, "10.0.0.1", "10.0.0.2", 1, 2, b"x")
        w.close()
        assert not f.closed
    assert [pl for *_x, pl in read_pcap(p)] == [b"x"]
    with pytest.raises(ValueError):
        PcapWriter(tmp_path / "b.pcap", fragment_size=100)
    with PcapWriter(tmp_path / "c.pcap") as w, pytest.raises(ValueError):
        w.write(1.0, "10.0.0.1", "10.0.0.2", 1, 2, b"x" * 65508)
