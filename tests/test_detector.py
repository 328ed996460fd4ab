"""Rates and verdicts on synthetic FlowBatches, stepping event time second by second.

Every expected value is computed here from the records we build (packets x sampling rate,
bytes x 8 x sampling rate, spread over the bins a record covers), never read back from the
code under test.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import numpy.typing as npt
import pytest

import thresholds
from collector.flowbatch import FlowBatch, addr_to_pair
from detector.classify import CLASS_INDEX, Classifier
from detector.contracts import RateFrame, Status, Verdict
from detector.prefixes import PrefixIndex
from detector.rates import BPS, FPS, PPS, RateConfig, RateKeeper
from detector.verdicts import EvalConfig, Evaluator, host_channels
from thresholds.model import CLASSES, ThresholdSet

T0 = 1_700_000_000.0  # a whole second: bin k of the tests starts at T0 + k
UDP, TCP, ICMP, ICMP6 = 17, 6, 1, 58


# --------------------------------------------------------------------------- builders
def flows(
    dst: str | Sequence[str],
    n: int = 1,
    *,
    src: str = "203.0.113.9",
    proto: int = UDP,
    sport: int = 40000,
    dport: int = 80,
    packets: int = 1,
    nbytes: int = 100,
    rate: int = 1,
    first: float | None = None,
    last: float | None = None,
    arrival: float = T0,
    flags: int = 0,
    fragment: int = 0,
    exporter: str = "192.0.2.1",
    input_if: int = 1,
) -> FlowBatch:
    """``n`` identical records to ``dst`` (or one record to each address of a list)."""
    dsts = [dst] * n if isinstance(dst, str) else list(dst)
    b = FlowBatch.empty(len(dsts))
    pairs = np.array([addr_to_pair(d) for d in dsts], dtype=np.uint64).reshape(-1, 2)
    b.dst_hi[:], b.dst_lo[:] = pairs[:, 0], pairs[:, 1]
    b.src_hi[:], b.src_lo[:] = addr_to_pair(src)
    b.exporter_hi[:], b.exporter_lo[:] = addr_to_pair(exporter)
    b.input_if[:] = input_if
    b.protocol[:] = proto
    b.src_port[:] = sport
    b.dst_port[:] = dport
    b.packets[:] = packets
    b.bytes[:] = nbytes
    b.sampling_rate[:] = rate
    b.arrival[:] = arrival
    if first is not None:
        b.first[:] = first
    if last is not None:
        b.last[:] = last
    b.tcp_flags[:] = flags
    b.fragment[:] = fragment
    b.ip_version[:] = 6 if ":" in dsts[0] else 4
    b.validate()
    return b


def in_bin(dst: str | Sequence[str], second: float, n: int = 1, **kw: object) -> FlowBatch:
    """Records describing bin ``second`` only, arriving in the middle of it."""
    return flows(dst, n, first=second + 0.1, last=second + 0.4, arrival=second + 0.5, **kw)  # type: ignore[arg-type]


def load(text: str) -> ThresholdSet:
    return thresholds.loads(text)


def keeper_for(
    ts: ThresholdSet,
    *,
    window: int = 96,
    future: int = 4,
    bin_seconds: float = 1.0,
    clean_return: frozenset[tuple[int, int, int]] = frozenset(),
) -> RateKeeper:
    index = PrefixIndex([p.prefix for p in ts.policies])
    cfg = RateConfig(
        bin_seconds=bin_seconds,
        window_bins=window,
        future_bins=future,
        host_channels=host_channels(ts),
        clean_return=clean_return,
    )
    return RateKeeper(index, Classifier(ts.ports), cfg)


def settle(k: RateKeeper, frames: list[RateFrame] | None = None) -> dict[float, RateFrame]:
    """Push every bin out of the window; the RateFrames by bin start."""
    out = list(frames or [])
    out += k.advance(k.newest * k.config.bin_seconds + 10 * k.config.window_bins)
    by_start: dict[float, RateFrame] = {}
    for f in out:
        assert f.start not in by_start, f"bin {f.start} emitted twice"
        by_start[f.start] = f
    return by_start


def rate(frame: RateFrame, prefix: str, cls: str = "total", metric: int = PPS) -> float:
    return float(frame.values[frame.prefixes.index(prefix), CLASSES.index(cls), metric])


SIMPLE = """
version: 1
prefixes:
  198.18.10.0/24:
    thresholds: {udp: {pps: 1k}}
  198.18.64.0/22:
    thresholds: {udp: {pps: 1k}}
  198.18.66.0/24:
    thresholds: {udp: {pps: 1k}}
  2001:db8:a00::/48:
    thresholds: {udp: {pps: 1k}}
"""


# =========================================================================== rates
def test_sampling_correction_packets_bytes_flows() -> None:
    k = keeper_for(load(SIMPLE))
    frames = k.ingest(in_bin("198.18.10.7", T0, packets=10, nbytes=15_000, rate=100))
    got = settle(k, frames)
    assert list(got) == [T0]
    f = got[T0]
    assert f.seconds == 1.0
    assert rate(f, "198.18.10.0/24", "total", PPS) == pytest.approx(10 * 100)
    assert rate(f, "198.18.10.0/24", "total", BPS) == pytest.approx(15_000 * 8 * 100)
    assert rate(f, "198.18.10.0/24", "total", FPS) == pytest.approx(1)
    assert rate(f, "198.18.10.0/24", "udp", PPS) == pytest.approx(1000)
    assert rate(f, "198.18.10.0/24", "tcp", PPS) == 0
    assert rate(f, "198.18.64.0/22", "total", PPS) == 0


def test_rates_are_per_second_with_longer_bins() -> None:
    ts = load(SIMPLE.replace("version: 1", "version: 1\ndefaults: {bin: 2s, average: 2s}"))
    k = keeper_for(ts, bin_seconds=2.0)
    frames = k.ingest(flows("198.18.10.7", packets=300, first=T0 + 0.2, last=T0 + 1.8))
    got = settle(k, frames)
    assert list(got) == [T0]  # one 2-second bin starting at T0
    assert got[T0].seconds == 2.0
    assert rate(got[T0], "198.18.10.0/24") == pytest.approx(150)


def test_long_record_spread_evenly_over_its_bins() -> None:
    k = keeper_for(load(SIMPLE))
    # a 30-second flow, exported at the end of its active timeout
    frames = k.ingest(
        flows(
            "198.18.10.7", packets=3000, nbytes=3_000_000, first=T0, last=T0 + 29.9, arrival=T0 + 30
        )
    )
    got = settle(k, frames)
    assert sorted(got) == [T0 + i for i in range(30)]
    for f in got.values():
        assert rate(f, "198.18.10.0/24") == pytest.approx(100)
        assert rate(f, "198.18.10.0/24", metric=BPS) == pytest.approx(800_000)
    assert sum(rate(f, "198.18.10.0/24") for f in got.values()) == pytest.approx(3000)
    assert k.stats.late == k.stats.partly_late == 0


def test_uneven_record_sum_is_preserved() -> None:
    k = keeper_for(load(SIMPLE))
    # 7 packets over bins T0+3 .. T0+33 (31 bins)
    frames = k.ingest(
        flows("198.18.10.7", packets=7, rate=1000, first=T0 + 3.5, last=T0 + 33.2, arrival=T0 + 40)
    )
    got = settle(k, frames)
    assert sorted(got) == [T0 + 3 + i for i in range(31)]
    assert sum(rate(f, "198.18.10.0/24") for f in got.values()) == pytest.approx(7000)
    values = {round(rate(f, "198.18.10.0/24"), 6) for f in got.values()}
    assert values == {round(7000 / 31, 6)}


def test_record_older_than_the_window_is_late_and_not_added() -> None:
    k = keeper_for(load(SIMPLE), window=20, future=4)
    frames = k.advance(T0 + 200)  # the window now holds bins T0+185 .. T0+204
    frames += k.ingest(flows("198.18.10.7", packets=50, first=T0, last=T0 + 10, arrival=T0 + 200))
    assert k.stats.late == 1
    assert k.stats.partly_late == 0
    assert k.stats.inside == 1
    assert settle(k, frames) == {}


def test_partly_late_record_keeps_only_its_bins_in_the_window() -> None:
    k = keeper_for(load(SIMPLE), window=20, future=4)
    # the first arrival at T0+100 opens the window on bins T0+85 .. T0+104
    rec = flows("198.18.10.7", packets=1000, first=T0 + 80, last=T0 + 89.5, arrival=T0 + 100)
    got = settle(k, k.ingest(rec))
    assert k.stats.late == 0
    assert k.stats.partly_late == 1
    # 10 bins of 100 packets; the 5 before T0+85 are gone, the others keep their share
    assert sorted(got) == [T0 + 85 + i for i in range(5)]
    for f in got.values():
        assert rate(f, "198.18.10.0/24") == pytest.approx(100)


def test_ipv6_prefix_counts_its_own_addresses_only() -> None:
    k = keeper_for(load(SIMPLE))
    b = FlowBatch.concat(
        [
            in_bin("2001:db8:a00::1", T0, packets=10),
            in_bin("2001:db8:a00:ffff:1:2:3:4", T0, packets=20),
            in_bin("2001:db8:a01::1", T0, packets=40),  # next /48: outside
            in_bin("::ffff:198.18.10.7", T0, packets=80),  # the IPv4 host, mapped
        ]
    )
    got = settle(k, k.ingest(b))
    assert rate(got[T0], "2001:db8:a00::/48") == pytest.approx(30)
    assert rate(got[T0], "198.18.10.0/24") == pytest.approx(80)
    assert k.stats.inside == 3


def test_nested_prefixes_count_for_both_entries() -> None:
    ts = load(SIMPLE)
    k = keeper_for(ts)
    b = FlowBatch.concat(
        [
            in_bin("198.18.66.5", T0, packets=100),  # in the /24, inside the /22
            in_bin("198.18.64.5", T0, packets=7),  # in the /22 only
        ]
    )
    got = settle(k, k.ingest(b))
    assert rate(got[T0], "198.18.66.0/24") == pytest.approx(100)
    assert rate(got[T0], "198.18.64.0/22") == pytest.approx(107)
    assert rate(got[T0], "198.18.10.0/24") == 0


def test_traffic_outside_every_prefix_is_ignored() -> None:
    k = keeper_for(load(SIMPLE))
    b = FlowBatch.concat(
        [
            in_bin("198.18.11.1", T0, packets=10),
            in_bin("198.18.68.1", T0, packets=10),  # just past the /22
            in_bin("10.0.0.1", T0, packets=10),
            in_bin("2001:db8:b00::1", T0, packets=10),
        ]
    )
    got = settle(k, k.ingest(b))
    assert k.stats.records == 4
    assert k.stats.inside == 0
    assert got == {}


def test_clean_return_records_are_excluded_and_counted() -> None:
    clean = frozenset({(*addr_to_pair("192.0.2.1"), 7)})
    k = keeper_for(load(SIMPLE), clean_return=clean)
    b = FlowBatch.concat(
        [
            in_bin("198.18.10.7", T0, packets=1000, exporter="192.0.2.1", input_if=7),  # tunnel
            in_bin("198.18.10.7", T0, packets=10, exporter="192.0.2.1", input_if=8),
            in_bin("198.18.10.7", T0, packets=20, exporter="192.0.2.2", input_if=7),
            in_bin("198.18.11.7", T0, packets=40, exporter="192.0.2.1", input_if=7),  # outside
        ]
    )
    got = settle(k, k.ingest(b))
    assert k.stats.clean_return == 1
    assert k.stats.inside == 2
    assert rate(got[T0], "198.18.10.0/24") == pytest.approx(30)


CLASS_CASES = [
    # (protocol, tcp flags, source port, destination port, fragment) -> classes
    ((TCP, 0x02, 40000, 443, 0), {"total", "tcp", "tcp_syn"}),
    ((TCP, 0x12, 40000, 443, 0), {"total", "tcp"}),  # SYN+ACK
    ((TCP, 0x10, 40000, 443, 0), {"total", "tcp"}),
    ((TCP, 0x1B, 40000, 443, 0), {"total", "tcp"}),  # SYN, ACK, FIN, PSH aggregated
    ((UDP, 0, 53, 40000, 0), {"total", "udp", "amplification"}),
    ((UDP, 0, 123, 40000, 0), {"total", "udp", "amplification"}),
    ((UDP, 0, 11211, 40000, 0), {"total", "udp", "amplification"}),
    ((UDP, 0, 40000, 53, 0), {"total", "udp"}),  # a query to port 53 is not a reflection
    ((TCP, 0x10, 53, 40000, 0), {"total", "tcp"}),  # amplification is UDP only
    ((UDP, 0, 0, 0, 1), {"total", "udp", "fragments"}),
    ((ICMP, 0, 0, 0, 1), {"total", "icmp", "fragments"}),
    ((UDP, 0, 40000, 5060, 0), {"total", "udp", "sip"}),
    ((UDP, 0, 5060, 40000, 0), {"total", "udp", "sip"}),
    ((TCP, 0x10, 40000, 5061, 0), {"total", "tcp", "sip"}),
    ((UDP, 0, 40000, 16384, 0), {"total", "udp", "rtp"}),
    ((UDP, 0, 40000, 32767, 0), {"total", "udp", "rtp"}),
    ((UDP, 0, 40000, 16383, 0), {"total", "udp"}),
    ((UDP, 0, 40000, 32768, 0), {"total", "udp"}),
    ((TCP, 0x10, 40000, 20000, 0), {"total", "tcp"}),  # RTP is UDP
    ((ICMP, 0, 0, 0, 0), {"total", "icmp"}),
    ((ICMP6, 0, 0, 0, 0), {"total", "icmp"}),
    ((47, 0, 0, 0, 0), {"total"}),  # GRE
]


@pytest.mark.parametrize(("record", "expected"), CLASS_CASES)
def test_class_assignment(record: tuple[int, int, int, int, int], expected: set[str]) -> None:
    proto, flags, sport, dport, frag = record
    k = keeper_for(load(SIMPLE))
    b = in_bin(
        "198.18.10.7",
        T0,
        packets=5,
        proto=proto,
        flags=flags,
        sport=sport,
        dport=dport,
        fragment=frag,
    )
    f = settle(k, k.ingest(b))[T0]
    counted = {c for c in CLASSES if rate(f, "198.18.10.0/24", c) > 0}
    assert counted == expected
    for c in expected:
        assert rate(f, "198.18.10.0/24", c) == pytest.approx(5)


def test_unlisted_classes_follow_the_allowlist() -> None:
    ts = load(SIMPLE)
    listed = addr_to_pair("203.0.113.1")

    def member(hi: npt.NDArray[np.uint64], lo: npt.NDArray[np.uint64]) -> npt.NDArray[np.bool_]:
        return (hi == listed[0]) & (lo == listed[1])

    k = RateKeeper(
        PrefixIndex([p.prefix for p in ts.policies]),
        Classifier(ts.ports, member),
        RateConfig(host_channels=host_channels(ts)),
    )
    b = FlowBatch.concat(
        [
            in_bin("198.18.10.7", T0, packets=1, src="203.0.113.1", dport=5060),  # listed SIP
            in_bin("198.18.10.7", T0, packets=10, src="203.0.113.2", dport=5060),  # unlisted SIP
            in_bin("198.18.10.7", T0, packets=100, src="203.0.113.3", dport=20000),  # unlisted RTP
            in_bin("198.18.10.7", T0, packets=1000, src="203.0.113.4", proto=TCP, dport=5060),
        ]
    )
    f = settle(k, k.ingest(b))[T0]
    p = "198.18.10.0/24"
    assert rate(f, p, "udp") == pytest.approx(111)
    assert rate(f, p, "unlisted_udp") == pytest.approx(110)
    assert rate(f, p, "unlisted_sip") == pytest.approx(1010)  # SIP over TCP is SIP too
    assert rate(f, p, "unlisted_rtp") == pytest.approx(100)
    assert CLASS_INDEX["unlisted_udp"] == CLASSES.index("unlisted_udp")


def test_rateframes_leave_the_window_in_order_with_their_values() -> None:
    window, future = 10, 4  # a bin is settled (W - future) = 6 s after it starts
    k = keeper_for(load(SIMPLE), window=window, future=future)
    emitted: dict[float, float] = {}  # bin start -> time it came out
    values: dict[float, float] = {}
    for s in range(20):
        now = T0 + s
        frames = k.advance(now + 0.5)
        if s < 8:  # bin T0+s gets (s + 1) x 10 packets
            frames += k.ingest(in_bin("198.18.10.7", now, packets=(s + 1) * 10))
        for f in frames:
            assert f.start not in emitted
            emitted[f.start] = now
            values[f.start] = rate(f, "198.18.10.0/24")
            assert f.prefixes == (
                "198.18.10.0/24",
                "198.18.64.0/22",
                "198.18.66.0/24",
                "2001:db8:a00::/48",
            )
            assert f.values.shape == (4, len(CLASSES), 3)
    assert sorted(emitted) == [T0 + s for s in range(8)]
    for s in range(8):
        assert emitted[T0 + s] == T0 + s + (window - future)
        assert values[T0 + s] == pytest.approx((s + 1) * 10)
    assert k.stats.frames == 8


# --------------------------------------------------------------------------- reference
# The counters are filled with a few vectorised passes (bincounts per class set, one add.at
# over every host channel); these tests hold them against a plain per-record loop.
REFERENCE = """
version: 1
defaults:
  thresholds:
    total: {pps: 1M, bps: 1G}
    udp: {pps: 1M}
    tcp_syn: {pps: 1M}
    amplification: {pps: 1M}
    icmp: {pps: 1M}
    fragments: {pps: 1M}
    sip: {pps: 1M}
    rtp: {pps: 1M}
  host_thresholds:
    udp: {pps: 1M, bps: 1G}
    tcp_syn: {pps: 1M}
prefixes:
  198.18.10.0/24: {}
  198.18.64.0/22: {}
  198.18.66.0/24: {}
  2001:db8:a00::/48: {}
"""
REF_HOSTS = (
    [f"198.18.10.{i}" for i in (1, 2, 3, 200)]
    + [f"198.18.{a}.{i}" for a in (64, 65, 66, 67) for i in (1, 9)]
    + ["2001:db8:a00::1", "2001:db8:a00:5::7", "192.0.2.1", "2001:db8:b00::1"]  # 2 outside
)
REF_PORTS = (53, 123, 11211, 5060, 5061, 16384, 20000, 32767, 80, 443, 40000)


def _reference_classes(proto: int, flags: int, sport: int, dport: int, frag: int) -> set[str]:
    amplification = thresholds.model.PortSets().amplification
    tcp, udp = proto == TCP, proto == UDP
    out = {"total"}
    out |= {"tcp"} if tcp else set()
    out |= {"tcp_syn"} if tcp and flags & 0x02 and not flags & 0x10 else set()
    out |= {"udp"} if udp else set()
    out |= {"icmp"} if proto in (ICMP, ICMP6) else set()
    out |= {"fragments"} if frag else set()
    out |= {"amplification"} if udp and sport in amplification else set()
    out |= {"sip"} if (tcp or udp) and {sport, dport} & {5060, 5061} else set()
    out |= {"rtp"} if udp and 16384 <= dport <= 32767 else set()
    return out


def _random_batch(rng: np.random.Generator, t: float, n: int) -> FlowBatch:
    """Records to a few hosts (repeated cells), of every class, many of them covering many
    bins, some partly or wholly before the window, some stamped in the future, some without
    times."""
    dst = [REF_HOSTS[i] for i in rng.integers(0, len(REF_HOSTS), n)]
    b = flows(dst)
    b.protocol[:] = rng.choice([TCP, UDP, ICMP, ICMP6, 47], n)
    b.tcp_flags[:] = rng.choice([0x02, 0x12, 0x10, 0x1B, 0x18], n)
    b.src_port[:] = rng.choice(REF_PORTS, n)
    b.dst_port[:] = rng.choice(REF_PORTS, n)
    b.fragment[:] = rng.random(n) < 0.1
    b.packets[:] = rng.integers(1, 1000, n)
    b.bytes[:] = b.packets * rng.integers(40, 1500, n)
    b.sampling_rate[:] = rng.choice([1, 10, 1000], n)
    b.arrival[:] = t + rng.random(n)
    b.last[:] = b.arrival - rng.exponential(3.0, n) + 3.0  # a few after the arrival
    b.first[:] = b.last - rng.exponential(6.0, n)
    b.first[rng.random(n) < 0.05] = t - 40.0  # partly before the window
    old = rng.random(n) < 0.05
    b.first[old], b.last[old] = t - 60.0, t - 50.0  # wholly before it: late
    b.first[rng.random(n) < 0.03] = np.nan
    b.last[rng.random(n) < 0.03] = np.nan
    return b


def _close(got: npt.NDArray[np.float64], want: npt.NDArray[np.float64]) -> None:
    """Equal but for float rounding: relative, and absolute against the largest value of
    the same metric (a difference array leaves ~1e-16 of its sums behind)."""
    scale = np.abs(want).reshape(-1, want.shape[-1]).max(axis=0)
    for m in range(want.shape[-1]):
        np.testing.assert_allclose(got[..., m], want[..., m], rtol=1e-9, atol=1e-12 * scale[m])


def test_counters_equal_a_per_record_reference() -> None:
    window, future = 16, 2
    ts = load(REFERENCE)
    k = keeper_for(ts, window=window, future=future)
    chans = k.config.host_channels
    assert len(chans) > 3 and any(m != PPS for _, m in chans)  # bps and pps host channels
    e = len(k.index.networks)
    rng = np.random.default_rng(7)
    prefix: dict[tuple[int, int], npt.NDArray[np.float64]] = {}  # (bin, entry) -> (C, M)
    hosts: dict[tuple[int, int], npt.NDArray[np.float64]] = {}  # (bin, row) -> (K,)
    late = 0
    for step in range(12):  # time moves by 5 bins a batch: the ring wraps around 3 times
        b = _random_batch(rng, T0 + 5 * step, 300)
        k.ingest(b)
        base = k.prefix.base  # the window is bins [base, base + W) for this batch
        look = k.index.lookup(b.dst_hi, b.dst_lo)
        for i in range(len(b)):
            if look.entry[i] < 0:
                continue
            arrival = b.arrival[i]
            first = arrival if np.isnan(b.first[i]) else b.first[i]
            last = arrival if np.isnan(b.last[i]) else b.last[i]
            last = min(last, arrival + future)
            first = min(first, last)
            f, lst = int(np.floor(first)), int(np.floor(last))
            late += lst < base
            rate_ = float(b.sampling_rate[i])
            v = np.array([b.bytes[i] * 8.0 * rate_, b.packets[i] * rate_, 1.0]) / (lst - f + 1)
            cls = _reference_classes(
                int(b.protocol[i]),
                int(b.tcp_flags[i]),
                int(b.src_port[i]),
                int(b.dst_port[i]),
                int(b.fragment[i]),
            )
            mask = np.array([c in cls for c in CLASSES], dtype=float)
            hv = np.array([v[m] if CLASSES[c] in cls else 0.0 for c, m in chans])
            for s in range(max(f, base), min(lst, base + window - 1) + 1):
                key = (s, int(look.entry[i]))
                prefix[key] = prefix.get(key, np.zeros((len(CLASSES), 3))) + mask[:, None] * v
                key = (s, int(look.row[i]))
                hosts[key] = hosts.get(key, np.zeros(len(chans))) + hv
        # every open bin, prefixes and hosts, against the reference
        want_p = np.zeros((window, e, len(CLASSES), 3))
        want_h = np.zeros((window, k.index.rows, len(chans)))
        for (s, i), val in prefix.items():
            if base <= s < base + window:
                want_p[s - base, i] = val
        for (s, r), val in hosts.items():
            if base <= s < base + window:
                want_h[s - base, r] = val
        _close(k.prefix.counts(0, window), want_p)
        _close(k.hosts.counts(0, window), want_h)
        assert want_h.sum() > 0 and (want_p[..., PPS] > 0).sum() > 20
    assert k.stats.late == late > 0
    assert k.prefix.base > window * 3  # wrapped around


def test_ipv4_and_ipv6_lookup_equal_a_per_address_search() -> None:
    nets = [
        "10.0.0.0/8",  # hashed host rows (more than 65536 addresses)
        "10.1.0.0/16",
        "10.1.2.0/24",
        "192.0.2.0/24",
        "2001:db8::/32",
        "2001:db8:1::/48",
    ]
    many = nets + [f"172.16.{4 * i}.0/22" for i in range(12)]  # more ranges than a scan takes
    rng = np.random.default_rng(3)
    for networks in (nets, many):
        index = PrefixIndex([ipaddress.ip_network(n) for n in networks])
        addrs = [
            str(ipaddress.ip_network(networks[j]).network_address + int(rng.integers(0, 300)))
            for j in rng.integers(0, len(networks), 400)
        ]
        addrs += [str(ipaddress.IPv4Address(int(x))) for x in rng.integers(0, 2**32, 100)]
        addrs += ["::1", "::", "2001:db9::1", "0.0.0.0", "255.255.255.255", "10.255.255.255"]
        rng.shuffle(addrs)
        for batch in (addrs, [a for a in addrs if ":" not in a]):  # mixed, IPv4 only
            pairs = np.array([addr_to_pair(a) for a in batch], dtype=np.uint64)
            got = index.lookup(pairs[:, 0].copy(), pairs[:, 1].copy())
            for a, entry, row in zip(batch, got.entry, got.row, strict=True):
                ip = ipaddress.ip_address(a)
                owners = [
                    (net.prefixlen, i)
                    for i, net in enumerate(index.networks)
                    if net.version == ip.version and ip in net
                ]
                want = max(owners)[1] if owners else -1
                assert entry == want, a
                if want >= 0 and index.dense[want]:
                    offset = int(ip) - int(index.networks[want].network_address)
                    assert row == index.row_base[want] + offset, a
                elif want >= 0:
                    assert (
                        index.row_base[want] <= row < index.row_base[want] + index.row_count[want]
                    )
                    assert index.host_address(int(row)) == a or ip.version == 6


# =========================================================================== verdicts
class Detector:
    """RateKeeper + Evaluator, evaluated at every second boundary (as the pipeline does)."""

    def __init__(
        self, ts: ThresholdSet, *, window: int = 96, horizon: int = 64, under: int = 45
    ) -> None:
        self.keeper = keeper_for(ts, window=window)
        self.ev = Evaluator(
            ts,
            self.keeper.index,
            self.keeper,
            EvalConfig(
                average_bins=max(1, round(ts.average_seconds / ts.bin_seconds)),
                horizon_bins=horizon,
                under_bins=under,
            ),
        )
        self.verdicts: dict[float, dict[str, Verdict]] = {}

    def evaluate(self, t: float) -> dict[str, Verdict]:
        self.keeper.advance(t - 0.5)
        v = {x.prefix: x for x in self.ev.evaluate(t)}
        self.verdicts[t] = v
        return v

    def run(
        self, start: float, stop: float, traffic: Callable[[float], Iterable[FlowBatch]]
    ) -> dict[str, Verdict]:
        """Seconds start .. stop-1: evaluate the boundary, then feed the second's records."""
        last: dict[str, Verdict] = {}
        for s in np.arange(start, stop):
            last = self.evaluate(float(s))
            for b in traffic(float(s)):
                self.keeper.ingest(b)
        return last


def one_second_average(text: str) -> ThresholdSet:
    return load(text.replace("version: 1", "version: 1\ndefaults: {average: 1s}", 1))


def during(
    a: float, b: float, make: Callable[[float], FlowBatch]
) -> Callable[[float], list[FlowBatch]]:
    return lambda s: [make(s)] if a <= s < b else []


PREFIX_RULES = [
    # thresholds of 198.18.10.0/24, traffic per second,
    # expected (class, metric, rule, vector, value)
    (
        "{udp: {pps: 1k}}",
        {"packets": 1500},
        ("udp", "pps", "prefix udp.pps > 1k", "udp_flood", 1500.0),
    ),
    (
        "{total: {bps: 10M}}",
        {"proto": TCP, "flags": 0x10, "packets": 10, "nbytes": 15_000, "rate": 100},
        ("total", "bps", "prefix total.bps > 10M", "volumetric", 12e6),
    ),
    (
        "{tcp_syn: {pps: 500}, tcp: {pps: 1M}}",
        {"proto": TCP, "flags": 0x02, "packets": 6, "rate": 100},
        ("tcp_syn", "pps", "prefix tcp_syn.pps > 500", "syn_flood", 600.0),
    ),
    (
        "{icmp: {fps: 50}}",
        {"proto": ICMP, "n": 80},
        ("icmp", "fps", "prefix icmp.fps > 50", "icmp_flood", 80.0),
    ),
    (
        "{fragments: {pps: 2k}, udp: {pps: 1M}}",
        {"fragment": 1, "sport": 0, "dport": 0, "packets": 2500},
        ("fragments", "pps", "prefix fragments.pps > 2k", "fragment_flood", 2500.0),
    ),
    (
        "{sip: {pps: 300}}",
        {"dport": 5060, "packets": 400},
        ("sip", "pps", "prefix sip.pps > 300", "sip_flood", 400.0),
    ),
    (
        "{udp: {bps: 1G}, amplification: {bps: 100M}}",
        {"sport": 123, "packets": 100, "nbytes": 46_800, "rate": 512},
        (
            "amplification",
            "bps",
            "prefix amplification.bps > 100M",
            "amplification_ntp",
            46_800 * 8 * 512.0,
        ),
    ),
]


@pytest.mark.parametrize(("limits", "traffic", "expected"), PREFIX_RULES)
def test_prefix_threshold_per_class_and_metric(
    limits: str, traffic: dict[str, int], expected: tuple[str, str, str, str, float]
) -> None:
    ts = one_second_average(f"version: 1\nprefixes:\n  198.18.10.0/24:\n    thresholds: {limits}\n")
    d = Detector(ts)
    kw = dict(traffic)
    n = kw.pop("n", 1)
    v = d.run(T0, T0 + 20, during(T0, T0 + 15, lambda s: in_bin("198.18.10.7", s, n, **kw)))
    got = v["198.18.10.0/24"]
    cls, metric, rule, vector, value = expected
    assert got.status is Status.OVER
    assert (got.klass, got.metric, got.rule, got.vector, got.scope) == (
        cls,
        metric,
        rule,
        vector,
        "prefix",
    )
    assert got.value == pytest.approx(value)
    assert got.over_seconds == 15
    assert got.host is None


def test_traffic_under_the_threshold_is_normal() -> None:
    ts = one_second_average(
        "version: 1\nprefixes:\n  198.18.10.0/24:\n    thresholds: {udp: {pps: 1k, bps: 10M}}\n"
    )
    d = Detector(ts)
    v = d.run(
        T0,
        T0 + 20,
        during(T0, T0 + 20, lambda s: in_bin("198.18.10.7", s, packets=999, nbytes=1_000_000)),
    )  # 999 pps, 8 Mbit/s
    assert all(x["198.18.10.0/24"].status is Status.NORMAL for x in d.verdicts.values())
    assert v["198.18.10.0/24"].over_seconds == 0


HOSTS = """
version: 1
defaults: {average: 1s}
prefixes:
  198.18.10.0/24:
    thresholds: {udp: {pps: 10k}}
    host_thresholds: {udp: {pps: 1k}}
    carpet_min_hosts: 16
"""


def test_host_threshold_names_the_host_and_the_rule() -> None:
    d = Detector(load(HOSTS))
    v = d.run(
        T0,
        T0 + 15,
        lambda s: [
            in_bin("198.18.10.77", s, packets=2000),  # the victim
            in_bin("198.18.10.5", s, packets=300),  # normal traffic to another host
        ],
    )["198.18.10.0/24"]
    assert v.status is Status.OVER
    assert v.scope == "host"
    assert v.host == "198.18.10.77"
    assert v.rule == "host udp.pps > 1k"
    assert v.value == pytest.approx(2000)
    assert v.threshold == 1000
    assert v.vector == "udp_flood"
    assert v.over_seconds == 14  # bins T0 .. T0+13 seen at T0+14


def test_carpet_bombing_spread_over_many_hosts() -> None:
    d = Detector(load(HOSTS))
    victims = [f"198.18.10.{i}" for i in range(1, 21)]  # 20 hosts x 600 pps = 12k pps
    v = d.run(T0, T0 + 15, lambda s: [in_bin(victims, s, packets=600)])["198.18.10.0/24"]
    assert v.status is Status.OVER
    assert v.vector == "carpet_bombing"
    assert v.scope == "carpet"
    assert v.rule == "carpet udp.pps > 10k"
    assert v.value == pytest.approx(12_000)
    assert v.host is None


def test_spread_over_too_few_hosts_is_not_carpet() -> None:
    d = Detector(load(HOSTS))
    victims = [f"198.18.10.{i}" for i in range(1, 13)]  # 12 hosts x 900 pps, none over 1k
    v = d.run(T0, T0 + 15, lambda s: [in_bin(victims, s, packets=900)])["198.18.10.0/24"]
    assert v.status is Status.OVER
    assert v.vector == "udp_flood"
    assert v.scope == "prefix"


def test_single_host_flood_is_not_carpet() -> None:
    ts = one_second_average(
        "version: 1\nprefixes:\n  198.18.10.0/24:\n    thresholds: {udp: {pps: 10k}}\n"
        "    carpet_min_hosts: 1\n"
    )
    d = Detector(ts)
    v = d.run(T0, T0 + 15, lambda s: [in_bin("198.18.10.9", s, packets=12_000)])
    got = v["198.18.10.0/24"]
    assert got.status is Status.OVER
    assert got.vector == "udp_flood"
    assert got.scope == "prefix"


def test_over_seconds_is_data_time_even_when_records_arrive_late() -> None:
    ts = one_second_average(SIMPLE)
    d = Detector(ts)
    late = FlowBatch.concat(
        [
            flows(
                "198.18.10.7",
                packets=1500,
                first=T0 + i + 0.1,
                last=T0 + i + 0.9,
                arrival=T0 + 15.5,
            )
            for i in range(10)
        ]
    )
    d.run(T0, T0 + 16, lambda s: [late] if s == T0 + 15 else [])
    assert all(v["198.18.10.0/24"].status is Status.NORMAL for v in d.verdicts.values())
    for t in (T0 + 16, T0 + 20, T0 + 40):
        v = d.evaluate(t)["198.18.10.0/24"]
        assert v.status is Status.OVER
        assert v.over_seconds == 10
    assert d.keeper.stats.late == 0


def test_over_seconds_counts_bins_not_evaluations() -> None:
    # 10 seconds of attack fed in real time: the run grows one bin per second, to 10
    ts = one_second_average(SIMPLE)
    d = Detector(ts)
    d.run(T0, T0 + 30, during(T0, T0 + 10, lambda s: in_bin("198.18.10.7", s, packets=1500)))
    runs = [d.verdicts[T0 + s]["198.18.10.0/24"].over_seconds for s in range(30)]
    assert runs == [0] + list(range(1, 11)) + [10] * 19


def test_under_only_after_the_under_window_is_quiet() -> None:
    ts = one_second_average(SIMPLE)  # clear 80% of 1k pps = 800 pps
    d = Detector(ts, horizon=30, under=10)
    d.run(
        T0,
        T0 + 60,
        lambda s: [
            in_bin("198.18.10.7", s, packets=2000 if s < T0 + 10 else 850 if s < T0 + 20 else 100)
        ],
    )
    p = "198.18.10.0/24"
    # last bin above the clear level (850 > 800): T0+19; under needs 10 quiet bins after it
    under = {s: d.verdicts[T0 + s][p].under for s in range(1, 60)}
    assert [s for s, u in under.items() if u] == list(range(30, 60))
    # over bins T0 .. T0+9: "recent" while one is in the under window
    recent = {s: d.verdicts[T0 + s][p].recent for s in range(1, 60)}
    assert [s for s, r in recent.items() if r] == list(range(1, 20))
    # and OVER while one is in the horizon (30 bins)
    over = {s: d.verdicts[T0 + s][p].status is Status.OVER for s in range(1, 60)}
    assert [s for s, o in over.items() if o] == list(range(1, 40))


def test_monitor_mode_is_flagged() -> None:
    ts = one_second_average(
        "version: 1\nprefixes:\n  198.18.10.0/24:\n    mode: monitor\n"
        "    thresholds: {udp: {pps: 1k}}\n"
        "  198.18.11.0/24:\n    thresholds: {udp: {pps: 1k}}\n"
    )
    d = Detector(ts)
    v = d.run(
        T0,
        T0 + 15,
        lambda s: [in_bin("198.18.10.7", s, packets=1500), in_bin("198.18.11.7", s, packets=1500)],
    )
    assert v["198.18.10.0/24"].status is Status.OVER
    assert v["198.18.10.0/24"].monitor is True
    assert v["198.18.11.0/24"].status is Status.OVER
    assert v["198.18.11.0/24"].monitor is False


def test_nested_prefix_traffic_makes_the_covering_prefix_over() -> None:
    ts = one_second_average(SIMPLE)
    d = Detector(ts)
    # 600 pps to each of two /24s of the /22: only the /22 (1200 pps) is over
    v = d.run(
        T0,
        T0 + 15,
        lambda s: [in_bin("198.18.66.7", s, packets=600), in_bin("198.18.65.7", s, packets=600)],
    )
    assert v["198.18.64.0/22"].status is Status.OVER
    assert v["198.18.64.0/22"].value == pytest.approx(1200)
    assert v["198.18.66.0/24"].status is Status.NORMAL


SUBNETS = """
version: 1
defaults: {average: 1s}
prefixes:
  198.18.64.0/22:
    thresholds: {udp: {pps: 1k}}
    announce: {mode: subnets}
"""


def test_subnets_mode_picks_the_attacked_24() -> None:
    d = Detector(load(SUBNETS))
    hosts = [f"198.18.65.{i}" for i in (1, 2, 3, 200)]
    v = d.run(
        T0,
        T0 + 15,
        lambda s: [
            in_bin(hosts, s, packets=1000),  # the attack: 4000 pps into 198.18.65.0/24
            in_bin("198.18.67.9", s, packets=50),  # a little traffic to another /24
        ],
    )["198.18.64.0/22"]
    assert v.status is Status.OVER
    assert v.subnets == ("198.18.65.0/24",)


def test_subnets_mode_picks_every_24_with_its_share() -> None:
    d = Detector(load(SUBNETS))
    v = d.run(
        T0,
        T0 + 15,
        lambda s: [
            in_bin("198.18.64.10", s, packets=1000),  # 1000 / 2300 = 43%
            in_bin("198.18.66.10", s, packets=1000),  # 43%
            in_bin("198.18.67.10", s, packets=300),  # 13%: under the 20% share
        ],
    )["198.18.64.0/22"]
    assert v.subnets == ("198.18.64.0/24", "198.18.66.0/24")


def test_prefix_mode_has_no_subnets() -> None:
    d = Detector(one_second_average(SIMPLE))
    v = d.run(T0, T0 + 15, lambda s: [in_bin("198.18.65.1", s, packets=2000)])["198.18.64.0/22"]
    assert v.status is Status.OVER
    assert v.subnets == ()


def test_short_strong_burst_is_not_stretched_by_the_average() -> None:
    # 5-s average: a 6-s burst at 10x the threshold keeps the average over for 6 + 4 bins;
    # the measured duration is the burst's 6 s, so a 10-s trigger is not reached
    d = Detector(load(SIMPLE))
    d.run(T0, T0 + 40, during(T0, T0 + 6, lambda s: in_bin("198.18.10.7", s, packets=10_000)))
    runs = [d.verdicts[T0 + s]["198.18.10.0/24"].over_seconds for s in range(40)]
    assert max(runs) == 6
    # a steady attack still reaches the trigger: 20 s over gives 20 s
    d = Detector(load(SIMPLE))
    d.run(T0, T0 + 40, during(T0, T0 + 20, lambda s: in_bin("198.18.10.7", s, packets=10_000)))
    runs = [d.verdicts[T0 + s]["198.18.10.0/24"].over_seconds for s in range(40)]
    assert max(runs) == 20
