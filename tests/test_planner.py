"""The dry-run planner: reconcile to the DesiredSet, and the safety rules (DESIGN.md)."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from bgp.planner import Change, Network, Planner, SafetyConfig
from detector.contracts import DesiredRoute, DesiredSet, Route

PROTECTED: tuple[Network, ...] = (
    ipaddress.IPv4Network("198.18.0.0/16"),
    ipaddress.IPv4Network("203.0.113.0/24"),
    ipaddress.IPv6Network("2001:db8:a00::/40"),
)


def route(
    prefix: str, incident: int = 1, communities: Sequence[str] = ("65000:666",)
) -> DesiredRoute:
    return DesiredRoute(
        Route(prefix, "192.0.2.254", tuple(communities), ("65000:1:2",)),
        incident,
        "udp_flood",
        f"incident {incident}",
    )


def desired(t: float, *prefixes: str) -> DesiredSet:
    return DesiredSet(t, tuple(route(p, i + 1) for i, p in enumerate(prefixes)))


def summary(changes: list[Change]) -> list[tuple[str, str]]:
    return [(c.type, c.prefix) for c in changes]


def planner(**kw: int) -> Planner:
    return Planner(SafetyConfig(protected=PROTECTED, **kw))


# --------------------------------------------------------------------------- reconcile
def test_announces_and_withdraws_to_match_the_desired_set() -> None:
    p = planner()
    out = p.plan(desired(0, "198.18.10.0/24", "2001:db8:a00::/48"))
    assert summary(out) == [("announce", "198.18.10.0/24"), ("announce", "2001:db8:a00::/48")]
    a = out[0]
    assert (a.time, a.incident, a.vector, a.reason) == (0, 1, "udp_flood", "incident 1")
    assert a.route == {
        "next_hop": "192.0.2.254",
        "communities": ["65000:666"],
        "large_communities": ["65000:1:2"],
    }
    assert p.plan(desired(1, "198.18.10.0/24", "2001:db8:a00::/48")) == []
    out = p.plan(desired(2, "2001:db8:a00::/48", "198.18.64.0/22"))
    assert summary(out) == [("withdraw", "198.18.10.0/24"), ("announce", "198.18.64.0/22")]
    assert out[0].incident == 1 and out[0].time == 2
    assert summary(p.plan(desired(3))) == [
        ("withdraw", "198.18.64.0/22"),
        ("withdraw", "2001:db8:a00::/48"),
    ]
    assert p.announced == {}


def test_changed_attributes_are_announced_again() -> None:
    p = planner()
    p.plan(DesiredSet(0, (route("198.18.10.0/24"),)))
    out = p.plan(DesiredSet(1, (route("198.18.10.0/24", communities=("65000:777",)),)))
    assert summary(out) == [("announce", "198.18.10.0/24")]
    assert out[0].route["communities"] == ["65000:777"]


# --------------------------------------------------------------------------- safety
def refusals(out: list[Change]) -> dict[str, str]:
    return {c.prefix: c.reason for c in out if c.type == "refuse"}


def test_refuses_prefixes_outside_the_protected_networks() -> None:
    p = planner()
    out = p.plan(
        desired(
            0,
            "198.19.0.0/24",  # next to 198.18.0.0/16
            "198.0.0.0/8",  # covers a protected network: shorter than it
            "198.18.0.0/15",
            "2001:db8:b00::/48",
            "203.0.113.0/24",  # exactly a protected network: fine
        )
    )
    assert summary([c for c in out if c.type == "announce"]) == [("announce", "203.0.113.0/24")]
    refused = refusals(out)
    assert set(refused) == {"198.19.0.0/24", "198.0.0.0/8", "198.18.0.0/15", "2001:db8:b00::/48"}
    assert all(r == "outside every protected network" for r in refused.values())
    assert set(p.announced) == {"203.0.113.0/24"}


def test_refuses_prefixes_longer_than_the_maximum() -> None:
    p = planner()
    out = p.plan(
        desired(0, "198.18.10.0/24", "198.18.10.0/25", "2001:db8:a00::/48", "2001:db8:a00::/49")
    )
    assert set(p.announced) == {"198.18.10.0/24", "2001:db8:a00::/48"}
    refused = refusals(out)
    assert set(refused) == {"198.18.10.0/25", "2001:db8:a00::/49"}
    assert "longer than /24" in refused["198.18.10.0/25"]
    assert "longer than /48" in refused["2001:db8:a00::/49"]
    q = planner(max_length_v4=22, max_length_v6=44)
    out = q.plan(
        desired(0, "198.18.8.0/22", "198.18.10.0/23", "2001:db8:a00::/44", "2001:db8:a00::/45")
    )
    assert set(q.announced) == {"198.18.8.0/22", "2001:db8:a00::/44"}
    assert set(refusals(out)) == {"198.18.10.0/23", "2001:db8:a00::/45"}


def test_refuses_what_is_not_a_prefix() -> None:
    p = planner()
    out = p.plan(desired(0, "198.18.10.1/24", "198.18.10.0/24\nannounce route 0.0.0.0/0"))
    assert p.announced == {}
    assert [c.type for c in out] == ["refuse", "refuse"]
    assert all(r.startswith("not a prefix") for r in refusals(out).values())


def test_max_diversions() -> None:
    p = planner(max_diversions=2)
    out = p.plan(desired(0, "198.18.1.0/24", "198.18.2.0/24", "198.18.3.0/24"))
    assert summary(out) == [
        ("announce", "198.18.1.0/24"),
        ("announce", "198.18.2.0/24"),
        ("refuse", "198.18.3.0/24"),
    ]
    assert out[2].reason == "2 diversions already (max_diversions)"
    # still refused, not reported again
    assert p.plan(desired(1, "198.18.1.0/24", "198.18.2.0/24", "198.18.3.0/24")) == []
    # a slot frees up: the waiting prefix is announced
    out = p.plan(desired(2, "198.18.2.0/24", "198.18.3.0/24"))
    assert summary(out) == [("withdraw", "198.18.1.0/24"), ("announce", "198.18.3.0/24")]
    assert len(p.announced) == 2


def test_max_changes_per_hour() -> None:
    p = planner(max_changes_per_hour=3)
    assert summary(p.plan(desired(0, "198.18.1.0/24"))) == [("announce", "198.18.1.0/24")]
    assert summary(p.plan(desired(10, "198.18.2.0/24"))) == [
        ("withdraw", "198.18.1.0/24"),
        ("announce", "198.18.2.0/24"),
    ]
    # 3 changes in the last hour: no more announces; a withdraw is always allowed
    out = p.plan(desired(20, "198.18.3.0/24"))
    assert summary(out) == [("withdraw", "198.18.2.0/24"), ("refuse", "198.18.3.0/24")]
    assert out[1].reason == "3 changes in the last hour"
    assert p.plan(desired(3599, "198.18.3.0/24")) == []
    # the first change (t=0) leaves the hour at t=3600; the others at 3610 and 3620
    assert summary(p.plan(desired(3600, "198.18.3.0/24"))) == []
    assert summary(p.plan(desired(3620, "198.18.3.0/24"))) == [("announce", "198.18.3.0/24")]


def test_refusal_is_reported_once_per_reason_and_per_request() -> None:
    p = planner(max_diversions=1, max_changes_per_hour=2)
    p.plan(desired(0, "198.18.1.0/24"))
    outs = [p.plan(desired(t, "198.18.1.0/24", "198.18.9.0/25")) for t in range(1, 11)]
    assert [summary(o) for o in outs] == [[("refuse", "198.18.9.0/25")]] + [[]] * 9
    out = p.plan(desired(11, "198.18.1.0/24", "198.18.9.0/25", "198.18.2.0/24"))
    assert summary(out) == [("refuse", "198.18.2.0/24")]
    assert out[0].reason == "1 diversions already (max_diversions)"
    # another reason for the same prefix is reported: the slot is free, the budget is not
    out = p.plan(desired(12, "198.18.2.0/24"))
    assert summary(out) == [("withdraw", "198.18.1.0/24"), ("refuse", "198.18.2.0/24")]
    assert out[1].reason == "2 changes in the last hour"
    # the /25 left the desired set; wanted again (a new incident), it is reported again
    out = p.plan(desired(13, "198.18.2.0/24", "198.18.9.0/25"))
    assert summary(out) == [("refuse", "198.18.9.0/25")]
    assert "longer than /24" in out[0].reason


# --------------------------------------------------------------------------- property
def _net(version: int, value: int, length: int) -> Network:
    bits = 32 if version == 4 else 128
    value &= (1 << bits) - 1
    value = value >> (bits - length) << (bits - length) if length else 0
    if version == 4:
        return ipaddress.IPv4Network((value, length))
    return ipaddress.IPv6Network((value, length))


@st.composite
def networks(draw: st.DrawFn) -> Network:
    version = draw(st.sampled_from([4, 6]))
    bits = 32 if version == 4 else 128
    return _net(version, draw(st.integers(0, (1 << bits) - 1)), draw(st.integers(0, bits)))


@st.composite
def prefix_near(draw: st.DrawFn, protected: Sequence[Network]) -> str:
    """A prefix inside, around or outside one of the protected networks, of any length."""
    how = draw(st.sampled_from(["inside", "supernet", "anywhere"]))
    if how == "anywhere" or not protected:
        return str(draw(networks()))
    base = draw(st.sampled_from(list(protected)))
    bits = base.max_prefixlen
    if how == "supernet":
        return str(base.supernet(new_prefix=draw(st.integers(0, base.prefixlen))))
    length = draw(st.integers(base.prefixlen, bits))
    host = draw(st.integers(0, base.num_addresses - 1))
    return str(_net(base.version, int(base.network_address) + host, length))


@st.composite
def scenario(draw: st.DrawFn) -> tuple[SafetyConfig, list[DesiredSet]]:
    protected = tuple(draw(st.lists(networks(), min_size=0, max_size=3)))
    safety = SafetyConfig(
        protected=protected,
        max_length_v4=draw(st.integers(8, 32)),
        max_length_v6=draw(st.integers(16, 128)),
        max_diversions=draw(st.integers(0, 6)),
        max_changes_per_hour=draw(st.integers(0, 12)),
    )
    pool = draw(st.lists(prefix_near(protected), min_size=1, max_size=12, unique=True))
    sets, t = [], 0.0
    for _ in range(draw(st.integers(1, 6))):
        t += draw(st.sampled_from([0.0, 1.0, 60.0, 1800.0, 3599.0, 3600.0, 7200.0]))
        chosen = draw(st.lists(st.sampled_from(pool), max_size=len(pool), unique=True))
        sets.append(DesiredSet(t, tuple(route(p) for p in chosen)))
    return safety, sets


def allowed(prefix: str, safety: SafetyConfig) -> bool:
    """Independent statement of the rule: inside a protected network of its family, not
    shorter than that network, not longer than the maximum."""
    net = ipaddress.ip_network(prefix)
    top = safety.max_length_v4 if net.version == 4 else safety.max_length_v6
    for p in safety.protected:
        if p.version != net.version:
            continue
        inside = int(net.network_address) >> (p.max_prefixlen - p.prefixlen) == int(
            p.network_address
        ) >> (p.max_prefixlen - p.prefixlen)
        if inside and p.prefixlen <= net.prefixlen <= top:
            return True
    return False


@settings(max_examples=300, deadline=None)
@given(scenario())
def test_property_announces_stay_within_the_safety_bounds(
    case: tuple[SafetyConfig, list[DesiredSet]],
) -> None:
    safety, sets = case
    p = Planner(safety)
    live: set[str] = set()
    announce_times: list[float] = []
    for d in sets:
        out = p.plan(d)
        for c in out:
            assert c.type in ("announce", "withdraw", "refuse")
            if c.type == "announce":
                assert allowed(c.prefix, safety), (c.prefix, safety)
                assert c.prefix not in live
                live.add(c.prefix)
                announce_times.append(c.time)
            elif c.type == "withdraw":
                live.remove(c.prefix)
            else:
                assert c.reason
        assert len(live) <= safety.max_diversions
        assert live == set(p.announced)
        assert live <= d.prefixes()  # whatever is no longer desired is withdrawn
        # nothing announced may be refused, and no prefix is refused twice in one plan
        refused = [c.prefix for c in out if c.type == "refuse"]
        assert len(refused) == len(set(refused))
        assert not set(refused) & live
        # the same request again changes nothing and reports nothing again
        assert p.plan(d) == []
    for t in announce_times:
        in_hour = sum(1 for u in announce_times if t - 3600 < u <= t)
        assert in_hour <= safety.max_changes_per_hour
