"""The allowlist set: keys, vectorised membership, sources, expiry, and the scenarios' feeds.

Expectations are computed here with plain Python (ipaddress, dicts of expiry times), never
read back from the code under test.
"""

from __future__ import annotations

import ipaddress
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from allowlist import addr
from allowlist.api import ApiHandler
from allowlist.feed import FeedCursor, apply, parse_line, parse_lines, parse_snapshot
from allowlist.index import MembershipIndex
from allowlist.state import AllowlistState
from collector.flowbatch import addr_to_pair

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ROOT.parent / "shared" / "testdata" / "scenarios"
NAMES = ["udp-flood", "dns-amplification", "flash-crowd", "carpet-bombing"]


def columns(ips: list[str]) -> tuple[np.ndarray, np.ndarray]:
    pairs = np.array([addr_to_pair(i) for i in ips], dtype=np.uint64).reshape(-1, 2)
    return pairs[:, 0].copy(), pairs[:, 1].copy()


# --------------------------------------------------------------------------- keys
def test_keys_round_trip_and_refuse_with_reasons() -> None:
    for text in ["1.2.3.4", "2001:db8::1", "10.0.0.0/8", "2001:db8::/32", "0.0.0.0"]:
        assert addr.text(addr.parse(text)) == text
    assert addr.parse("::ffff:1.2.3.4") == addr.parse("1.2.3.4")
    assert addr.parse("::ffff:10.0.0.0/104") == addr.parse("10.0.0.0/8")
    assert addr.text(addr.parse(" 2001:DB8:0::1 ")) == "2001:db8::1"
    assert addr.parse("1.2.3.4/32") == addr.parse("1.2.3.4")
    bad = {
        "1.2.3": "not an IPv4 or IPv6 address",
        "1.2.3.4/33": "not a prefix",
        "10.0.0.1/8": "has host bits set",
        "0.0.0.0/0": "shorter than /8",
        "2000::/3": "shorter than /32",
        "": "empty",
        "1.2.3.4%eth0": "not an IPv4",
    }
    for text, reason in bad.items():
        with pytest.raises(ValueError, match=reason):
            addr.parse(text)
    with pytest.raises(ValueError, match="string"):
        addr.parse(12345)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- index
def _random_v6(rng: random.Random) -> str:
    if rng.random() < 0.3:  # several endpoints in one /64
        return str(ipaddress.IPv6Address((0x2001_0DB8_0000_0001 << 64) | rng.getrandbits(8)))
    return str(ipaddress.IPv6Address((0x2 << 124) | rng.getrandbits(124)))


def test_index_matches_a_python_set_through_many_updates() -> None:
    rng = random.Random(7)
    index = MembershipIndex()
    members: set[str] = set()
    nets: set[str] = set()
    pool = [str(ipaddress.IPv4Address(rng.getrandbits(32))) for _ in range(3000)]
    pool += [_random_v6(rng) for _ in range(1500)]
    pool += ["0.0.0.0", "255.255.255.255", "::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"]
    net_pool = ["10.0.0.0/8", "10.1.0.0/16", "192.0.2.0/24", "203.0.113.128/25"]
    net_pool += ["2001:db8::/32", "2001:db8:1::/48", "fd00::/32", "ffff:ffff::/32"]
    queries = [*pool, "10.200.3.4", "192.0.2.77", "203.0.113.127", "203.0.113.128"]
    queries += ["2001:db8:ffff::1", "fd00:0:1::9", "11.0.0.0", "9.255.255.255", "::ffff:a00:1"]
    qhi, qlo = columns(queries)
    for step in range(40):
        for _ in range(rng.randrange(1, 200)):
            ip = rng.choice(pool)
            if ip in members:
                members.discard(ip)
                index.remove(addr.parse(ip))
            else:
                members.add(ip)
                index.add(addr.parse(ip))
        if step % 5 == 0:
            net = rng.choice(net_pool)
            if net in nets:
                nets.discard(net)
                index.remove(addr.parse(net))
            else:
                nets.add(net)
                index.add(addr.parse(net))
        networks = [ipaddress.ip_network(n) for n in nets]

        def expected(q: str, networks: list = networks) -> bool:  # type: ignore[type-arg]
            a = ipaddress.ip_address(q)
            if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
                a = a.ipv4_mapped
            return str(a) in members or any(a.version == n.version and a in n for n in networks)

        want = np.array([expected(q) for q in queries])
        got = index(qhi, qlo)
        assert (got == want).all(), [
            q for q, g, w in zip(queries, got, want, strict=True) if g != w
        ][:5]
    assert len(index) == len(members) + len(nets)


def test_ipv6_prefixes_never_cover_ipv4() -> None:
    index = MembershipIndex()
    index.add(addr.parse("::/0", addr.Limits(0, 0)))
    hi, lo = columns(["1.2.3.4", "2001:db8::1", "::1"])
    assert index(hi, lo).tolist() == [False, True, True]


def test_lookup_of_an_empty_and_of_an_empty_batch() -> None:
    index = MembershipIndex()
    hi, lo = columns(["1.2.3.4", "2001:db8::1"])
    assert index(hi, lo).tolist() == [False, False]
    empty = np.zeros(0, dtype=np.uint64)
    index.add(addr.parse("1.2.3.4"))
    assert index(empty, empty).shape == (0,)


# --------------------------------------------------------------------------- state
def test_sources_refresh_expiry_and_versions() -> None:
    st = AllowlistState(record=True)
    k = addr.parse("198.51.100.7")
    hi, lo = columns(["198.51.100.7"])
    assert st.add(k, "feed", 100.0 + 600, 100.0) == "add"
    assert st.version == 1 and st.index(hi, lo)[0]
    assert st.add(k, "feed", 200.0 + 60, 200.0) == "unchanged"  # never shortened (shared NAT)
    assert st.version == 1
    assert st.add(k, "feed", 300.0 + 900, 300.0) == "refresh"
    assert st.holders(k) == {"feed": 1200.0}
    assert st.add(k, "static", math.inf, 310.0) == "add"
    assert st.remove(k, "feed", 320.0) == "remove"
    assert st.index(hi, lo)[0], "still held by the static source"
    assert st.remove(k, "static", 330.0) == "remove"
    assert not st.index(hi, lo)[0]
    assert st.remove(k, "static", 340.0) == "absent"
    assert [c.op for c in st.take_changes()] == ["add", "refresh", "add", "remove", "remove"]
    assert st.version == 5
    # expiry on event time: a member while now < expires
    assert st.add(k, "feed", 1000.0, 400.0) == "add"
    st.advance(999.999)
    assert st.index(hi, lo)[0]
    st.advance(1000.0)
    assert not st.index(hi, lo)[0]
    (c,) = st.take_changes()[-1:]
    assert (c.op, c.time, c.version) == ("expire", 1000.0, 7)
    assert st.add(k, "feed", 900.0, 800.0) == "stale"  # expired before now


def test_snapshot_replaces_its_source_only() -> None:
    st = AllowlistState()
    keys, bad = parse_snapshot(
        "# trunks\n192.0.2.1\n192.0.2.0/28  # gw\nnot-an-ip\n\n2001:db8::5\n"
    )
    assert [r.line for r in bad] == [4] and "not an IPv4" in bad[0].reason
    assert st.replace_source("snapshot", keys, 10.0) == (3, 0)
    st.add(addr.parse("192.0.2.1"), "feed", 1e9, 11.0)
    assert st.replace_source("snapshot", [addr.parse("2001:db8::5")], 20.0) == (0, 2)
    assert {addr.text(k) for k in st.keys()} == {"192.0.2.1", "2001:db8::5"}  # noqa: SIM118


def test_feed_lines_refused_with_reasons_good_ones_kept() -> None:
    lines = [
        '{"time": 10, "op": "add", "ip": "192.0.2.1", "ttl": 600}',
        "{not json",
        '{"time": 11, "op": "flush", "ip": "192.0.2.1", "ttl": 600}',
        '{"time": 12, "op": "add", "ip": "192.0.2.300", "ttl": 600}',
        '{"time": 13, "op": "add", "ip": "192.0.2.2", "ttl": 0}',
        '{"time": 14, "op": "add", "ip": "192.0.2.2"}',
        '{"time": "x", "op": "add", "ip": "192.0.2.2", "ttl": 60}',
        "",
        '{"time": 15, "op": "remove", "ip": "2001:db8::1", "ttl": 0}',
        "[1, 2]",
        '{"time": 16, "op": "add", "ip": "192.0.2.3", "ttl": true}',
    ]
    regs, bad = parse_lines(lines)
    assert [r.line for r in regs] == [1, 9]
    reasons = {r.line: r.reason for r in bad}
    assert set(reasons) == {2, 3, 4, 5, 6, 7, 10, 11}
    assert "not JSON" in reasons[2] and "op" in reasons[3] and "not an IPv4" in reasons[4]
    assert "ttl" in reasons[5] and "ttl: missing" in reasons[6] and "time" in reasons[7]
    assert "object" in reasons[10] and "ttl" in reasons[11]


# --------------------------------------------------------------------------- the feeds
@pytest.mark.skipif(not SCENARIOS.is_dir(), reason="shared/testdata not beside the repo")
@pytest.mark.parametrize("name", NAMES)
def test_the_set_over_time_matches_the_feed(name: str) -> None:
    folder = SCENARIOS / name
    labels = json.loads((folder / "labels.json").read_text())
    raw = (folder / "allowlist.jsonl").read_text().splitlines()
    objs = [json.loads(line) for line in raw]
    regs, bad = parse_lines(raw)
    assert not bad and len(regs) == labels["allowlist"]["lines"]
    ips = sorted({o["ip"] for o in objs})
    hi, lo = columns(ips)
    st = AllowlistState()
    cursor = FeedCursor(regs)
    start, end = labels["start"], labels["end"]
    cursor.apply_until(st, start, inclusive=False)
    st.advance(start)
    # the independent expectation: address -> latest expiry, walked once in time order
    expiry: dict[str, float] = {}
    i = 0
    samples = [start, *np.arange(start + 0.5, end + 3700.0, 9.7).tolist()]
    refreshed = expired = 0
    for t in samples:
        while i < len(objs) and objs[i]["time"] <= t:
            o = objs[i]
            if o["op"] == "add":
                old = expiry.get(o["ip"])
                if old is not None and old > o["time"] and o["time"] + o["ttl"] > old:
                    refreshed += 1
                expiry[o["ip"]] = max(old or 0.0, o["time"] + o["ttl"])
            else:
                expiry.pop(o["ip"], None)
            i += 1
        cursor.apply_until(st, t)
        want = {ip for ip, e in expiry.items() if e > t}
        got = st.index(hi, lo)
        assert {ips[j] for j in np.nonzero(got)[0]} == want, t
        assert len(st) == len(want)
        expired = sum(1 for e in expiry.values() if e <= t)
    assert refreshed > 1000 and expired > 1000  # the walk saw refreshes and expiries
    assert st.counters["refresh"] == refreshed
    # at the start: the snapshot lines, as far as they had not expired
    assert labels["allowlist"]["snapshot_lines_before_start"] > 0


def test_apply_uses_the_line_time_for_expiry() -> None:
    st = AllowlistState()
    (reg,), _ = parse_lines(['{"time": 100.5, "op": "add", "ip": "2001:db8::9", "ttl": 900}'])
    assert apply(st, reg) == "add"
    assert st.holders(addr.parse("2001:db8::9")) == {"feed": 1000.5}


def test_updates_from_one_thread_lookups_from_another() -> None:
    import threading

    st = AllowlistState()
    ips = [f"10.{i // 256 % 256}.{i % 256}.1" for i in range(20000)]
    keys = [addr.parse(ip) for ip in ips]
    hi, lo = columns(ips)
    errors: list[BaseException] = []
    done = threading.Event()

    def writer() -> None:
        try:
            for rnd in range(3):
                for i, k in enumerate(keys):
                    if rnd < 2 or i % 2:
                        st.add(k, "feed", 1e12, 1.0 + rnd)
                    else:
                        st.remove(k, "feed", 1.0 + rnd)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)
        finally:
            done.set()

    t = threading.Thread(target=writer)
    t.start()
    lookups = 0
    while not done.is_set():
        assert st.index(hi, lo).shape == (len(ips),)
        lookups += 1
        # one lookup per batch, as the detection loop does: a reader spinning on the index
        # lock can starve the writer (Python locks are not fair) and the test never ends
        time.sleep(0.0005)
    t.join()
    assert not errors and lookups > 0
    got = st.index(hi, lo)
    assert got.sum() == 10000 and got[1::2].all() and not got[0::2].any()


# --------------------------------------------------------------------------- bad input
_json_values = hs.recursive(
    hs.none() | hs.booleans() | hs.integers() | hs.floats() | hs.text(max_size=50),
    lambda inner: hs.lists(inner, max_size=4) | hs.dictionaries(hs.text(max_size=8), inner),
    max_leaves=10,
)
_lines = hs.fixed_dictionaries(
    {},
    optional={
        "time": _json_values | hs.floats(1e9, 2e9),
        "op": hs.sampled_from(["add", "remove", "x"]) | _json_values,
        "ip": hs.sampled_from(["1.2.3.4", "2001:db8::1", "10.0.0.0/8", "::/0"]) | _json_values,
        "ttl": hs.floats(-10, 1e6) | _json_values,
    },
).map(json.dumps)


@settings(max_examples=300, deadline=None)
@given(hs.one_of(_lines, hs.binary(max_size=200), hs.text(max_size=200)))
def test_a_feed_line_is_a_registration_or_a_reason(line: str | bytes) -> None:
    try:
        reg = parse_line(line)
    except ValueError as e:
        assert str(e)
    else:
        assert reg.op in ("add", "remove") and reg.time > 0
        assert reg.op == "remove" or 0 < reg.ttl <= 7 * 86400


@settings(max_examples=200, deadline=None)
@given(hs.lists(hs.one_of(_lines, hs.text(max_size=40)), max_size=8))
def test_the_api_answers_every_body(lines: list[str]) -> None:
    st = AllowlistState()
    status, doc = ApiHandler(st, None).handle_post("\n".join(lines).encode(), None, 1.7e9)
    assert status in (200, 400)
    if status == 200:
        assert doc["accepted"] >= 1 and doc["version"] == st.version
    assert all(r["reason"] for r in doc.get("refused", []))
