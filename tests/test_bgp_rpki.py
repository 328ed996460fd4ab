"""RPKI pre-flight: VRP files of rpki-client and Routinator, RFC 6811 validity, coverage."""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgp import rpki
from bgp.planner import SafetyConfig
from bgp.policy import Candidate, Policy
from detector.contracts import DesiredRoute, Route

net = ipaddress.ip_network

ROUTINATOR = {
    "metadata": {"generated": 1700000000},
    "roas": [
        {"asn": "AS65001", "prefix": "198.18.0.0/16", "maxLength": 24, "ta": "ripe"},
        {"asn": "AS65001", "prefix": "203.0.113.0/24", "maxLength": 24, "ta": "ripe"},
        {"asn": "AS65099", "prefix": "198.51.100.0/24", "maxLength": 24, "ta": "ripe"},
        {"asn": "AS65001", "prefix": "2001:db8:a00::/40", "maxLength": 44, "ta": "ripe"},
    ],
}
RPKI_CLIENT = {
    "metadata": {"buildtime": "2024-01-01T00:00:00Z"},
    "roas": [
        {"asn": 65001, "prefix": "198.18.0.0/16", "maxLength": 24, "ta": "ripe", "expires": 1},
        {"asn": 65001, "prefix": "2001:db8:a00::/40", "maxLength": 48, "ta": "ripe"},
    ],
}


def test_parse_both_exports(tmp_path: Path) -> None:
    for doc in (ROUTINATOR, RPKI_CLIENT):
        f = tmp_path / "vrps.json"
        f.write_text(json.dumps(doc))
        v = rpki.load(str(f))
        assert v.roas[0] == rpki.Roa(65001, net("198.18.0.0/16"), 24)


@pytest.mark.parametrize(
    ("doc", "why"),
    [
        ({"roas": [{"asn": "AS65001", "prefix": "198.18.0.1/16", "maxLength": 24}]}, "roas[0]"),
        ({"roas": [{"asn": "ASx", "prefix": "198.18.0.0/16", "maxLength": 24}]}, "asn"),
        ({"roas": [{"asn": 1, "prefix": "198.18.0.0/16", "maxLength": 8}]}, "maxLength 8"),
        ({"roas": [{"asn": 1, "prefix": "198.18.0.0/16", "maxLength": 33}]}, "maxLength 33"),
        ({"roas": [{"prefix": "198.18.0.0/16"}]}, "roas[0]: missing 'asn'"),
        ({"vrps": []}, '"roas" list'),
        ([], '"roas" list'),
    ],
)
def test_bad_vrp_files_are_refused_with_where(doc: object, why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)):
        rpki.parse(doc, "vrps.json")


def test_bad_json_is_refused_with_line(tmp_path: Path) -> None:
    f = tmp_path / "vrps.json"
    f.write_text('{"roas": [\n  {"asn": 1,,}]}')
    with pytest.raises(ValueError, match=r"vrps.json:2:"):
        rpki.load(str(f))


@pytest.mark.parametrize(
    ("prefix", "state", "why"),
    [
        ("198.18.10.0/24", "valid", ""),
        ("198.18.0.0/16", "valid", ""),
        ("198.18.10.0/25", "invalid", "maxLength 24 is shorter than /25"),
        ("198.51.100.0/24", "invalid", "no ROA for AS65001 covers 198.51.100.0/24"),
        ("192.0.2.0/24", "not-found", "no ROA covers"),
        ("2001:db8:a00::/44", "valid", ""),
        ("2001:db8:a00::/48", "invalid", "maxLength 44 is shorter than /48"),
        ("2001:db8:b00::/48", "not-found", ""),
    ],
)
def test_validity(prefix: str, state: str, why: str) -> None:
    v = rpki.Vrps(rpki.parse(ROUTINATOR)).validity(net(prefix), 65001)
    assert v.state == state and why in v.reason


def policy(doc: dict[str, object] = ROUTINATOR, not_found: str = "allow") -> Policy:
    protected = (net("198.18.0.0/15"), net("203.0.113.0/24"), net("2001:db8:a00::/40"))
    return Policy(
        SafetyConfig(protected, max_length_v6=48),
        mode="automatic",
        vrps=rpki.Vrps(rpki.parse(doc)),
        origin_as=65001,
        rpki_not_found=not_found,
    )


def test_preflight_refuses_invalid_more_specifics_with_the_reason() -> None:
    p = policy()
    events = p.preflight(
        [
            Candidate(net("198.18.0.0/15"), 24, "198.18.0.0/15", "subnets"),
            Candidate(net("203.0.113.0/24"), 24, "203.0.113.0/24", "prefix"),
            Candidate(net("2001:db8:a00::/40"), 48, "2001:db8:a00::/40", "subnets"),
        ],
        now=5.0,
    )
    got = {(e["type"], e["prefix"]): e["reason"] for e in events}
    # 198.18/16 has its ROA (maxLength 24); 198.19/16 has none: not found, a warning
    assert got[("warning", "198.19.0.0/16")] == "no ROA covers 198.19.0.0/24"
    # the /48s of the IPv6 /40 would be invalid: its ROA stops at /44
    assert "maxLength 44 is shorter than /48" in got[("refuse", "2001:db8:a00::/40")]
    assert len(events) == 2
    assert all(e["scope"] == "configuration" and e["time"] == 5.0 for e in events)
    refusal = next(e for e in events if e["type"] == "refuse")
    assert refusal["policy"] == "2001:db8:a00::/40" and refusal["announce"] == "subnets /48"
    # with rpki_not_found: refuse, the uncovered /16 is refused too
    events = policy(not_found="refuse").preflight(
        [Candidate(net("198.18.0.0/15"), 24, "198.18.0.0/15", "subnets")], now=0
    )
    assert [(e["type"], e["prefix"]) for e in events] == [("refuse", "198.19.0.0/16")]


def test_preflight_also_checks_the_bounds() -> None:
    events = policy().preflight(
        [Candidate(net("198.18.0.0/16"), 25, "198.18.0.0/16", "subnets")], 0
    )
    assert events[0]["type"] == "refuse" and "longer than /24" in events[0]["reason"]


def test_screen_refuses_an_rpki_invalid_route() -> None:
    p = policy()
    r = DesiredRoute(Route("2001:db8:a00::/48", "2001:db8::1"), 1, "udp_flood", "x")
    assert "RPKI invalid" in str(p.screen(r))
    ok = DesiredRoute(Route("2001:db8:a00::/44", "2001:db8::1"), 1, "udp_flood", "x")
    assert p.screen(ok) == ok
    assert "longer than /24" in str(p.check("198.18.10.0/25"))  # bounds first
    assert "RPKI invalid" in str(p.check("2001:db8:a00::/48"))
    assert p.check("198.18.10.0/24") is None


def test_restrict_keeps_only_overlapping_roas() -> None:
    v = rpki.Vrps(rpki.parse(ROUTINATOR)).restrict([net("198.18.10.0/24")])
    assert [str(r.prefix) for r in v.roas] == ["198.18.0.0/16"]


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 255), st.integers(14, 24), st.integers(0, 8), st.booleans()),
        max_size=6,
    ),
    st.integers(0, 3),
    st.integers(16, 24),
)
def test_property_coverage_agrees_with_validity(
    roas: list[tuple[int, int, int, bool]], block_third: int, length: int
) -> None:
    """``uncovered`` (range arithmetic) against ``validity`` of every subnet."""
    items = []
    for third, plen, extra, own in roas:
        p = ipaddress.ip_network(
            (int(ipaddress.ip_address(f"198.18.{third}.0")) >> (32 - plen) << (32 - plen), plen)
        )
        items.append(rpki.Roa(65001 if own else 65099, p, min(32, plen + extra)))
    v = rpki.Vrps(items)
    block = net(f"198.18.{block_third * 64}.0/18")
    length = max(length, 18)
    bad: set[ipaddress.IPv4Network] = set()
    for part, _ in v.uncovered(block, length, 65001):
        bad |= set(part.subnets(new_prefix=length)) if part.prefixlen <= length else {part}
    for sub in block.subnets(new_prefix=length):
        valid = v.validity(sub, 65001).state == "valid"
        assert valid == (sub not in bad), (sub, v.validity(sub, 65001))
