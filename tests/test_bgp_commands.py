"""Validated rendering of ExaBGP commands: golden lines, refusals, and property tests."""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bgp import commands
from bgp.commands import CommandError
from detector.contracts import Route

# --------------------------------------------------------------------------- golden
GOLDEN = [
    (
        Route("203.0.113.0/24", "192.0.2.1", ("65000:666",)),
        "announce route 203.0.113.0/24 next-hop 192.0.2.1 community [65000:666]",
    ),
    (
        Route("198.18.10.0/24", "192.0.2.254", ("65000:666", "65000:1"), ("65000:1:2",)),
        "announce route 198.18.10.0/24 next-hop 192.0.2.254 community [65000:666 65000:1]"
        " large-community [65000:1:2]",
    ),
    (
        Route("198.18.64.0/22", "192.0.2.254"),
        "announce route 198.18.64.0/22 next-hop 192.0.2.254",
    ),
    (
        Route("2001:db8:a00::/48", "2001:db8:ffff::254", ("65000:666",), ("4200000000:7:0",)),
        "announce route 2001:db8:a00::/48 next-hop 2001:db8:ffff::254 community [65000:666]"
        " large-community [4200000000:7:0]",
    ),
    (
        Route("2001:db8:a00::/48", "2001:DB8:0:0:0:0:0:1"),  # canonical next hop
        "announce route 2001:db8:a00::/48 next-hop 2001:db8::1",
    ),
    (
        Route("203.0.113.0/24", "self", ("no-export", "BLACKHOLE", "65535:666")),
        "announce route 203.0.113.0/24 next-hop self community [65535:65281 65535:666]",
    ),
    (
        Route("203.0.113.0/24", "192.0.2.1", ("0:0", "65535:65535"), ("0:0:0",)),
        "announce route 203.0.113.0/24 next-hop 192.0.2.1 community [0:0 65535:65535]"
        " large-community [0:0:0]",
    ),
    (
        Route("203.0.113.0/24", "192.0.2.1", ("0065:0666",)),  # leading zeros normalised
        "announce route 203.0.113.0/24 next-hop 192.0.2.1 community [65:666]",
    ),
]


@pytest.mark.parametrize(("route", "line"), GOLDEN)
def test_announce_golden(route: Route, line: str) -> None:
    assert commands.announce(route) == line


@pytest.mark.parametrize(
    ("prefix", "line"),
    [
        ("203.0.113.0/24", "withdraw route 203.0.113.0/24"),
        ("2001:db8:a00::/48", "withdraw route 2001:db8:a00::/48"),
        ("2001:DB8:A00::/48", "withdraw route 2001:db8:a00::/48"),
    ],
)
def test_withdraw_golden(prefix: str, line: str) -> None:
    assert commands.withdraw(prefix) == line


def test_default_next_hops_per_family() -> None:
    v4, v6 = "192.0.2.9", "2001:db8::9"
    assert commands.announce(Route("203.0.113.0/24"), v4, v6).endswith("next-hop 192.0.2.9")
    assert commands.announce(Route("2001:db8::/48"), v4, v6).endswith("next-hop 2001:db8::9")
    # an IPv4 next hop on an IPv6 route (a single thresholds next_hop): the v6 default
    line = commands.announce(Route("2001:db8::/48", "192.0.2.254"), v4, v6)
    assert line == "announce route 2001:db8::/48 next-hop 2001:db8::9"


REFUSED = [
    (Route("203.0.113.5/24", "192.0.2.1"), "host bits set"),
    (Route("203.0.113.0", "192.0.2.1"), "no prefix length"),
    (Route("203.0.113.0/33", "192.0.2.1"), "does not appear to be"),
    (Route("203.0.113.0/24"), "no next-hop"),
    (Route("203.0.113.0/24", "192.0.2.300"), "not an IP address"),
    (Route("203.0.113.0/24", "2001:db8::1"), "is IPv6 for the IPv4 prefix"),
    (Route("2001:db8::/48", "192.0.2.254"), "would drop the route"),
    (Route("2001:db8::/48", "::ffff:192.0.2.254"), "IPv4-mapped"),
    (Route("2001:db8::/48", "self"), "next-hop self for the IPv6"),
    (Route("203.0.113.0/24", "0.0.0.0"), "not a unicast"),
    (Route("203.0.113.0/24", "192.0.2.1", ("65000:99999",)), "two numbers 0-65535"),
    (Route("203.0.113.0/24", "192.0.2.1", ("65536:1",)), "two numbers 0-65535"),
    (Route("203.0.113.0/24", "192.0.2.1", ("65000",)), "two numbers 0-65535"),
    (Route("203.0.113.0/24", "192.0.2.1", ("-1:5",)), "two numbers 0-65535"),
    (Route("203.0.113.0/24", "192.0.2.1", (), ("1:2",)), "three numbers"),
    (Route("203.0.113.0/24", "192.0.2.1", (), ("4294967296:1:1",)), "three numbers"),
    (Route("203.0.113.0/24", "192.0.2.1", ("65000:666]",)), "two numbers"),
    (Route("203.0.113.0/24\nannounce route 0.0.0.0/0", "192.0.2.1"), "not allowed"),
    (Route("203.0.113.0/24", "192.0.2.1\n"), "not allowed"),
    (Route("203.0.113.0/24", "192.0.2.1 med 5"), "not allowed"),
    (Route("203.0.113.0/24", "192.0.2.1", ("65000:666 65000:1",)), "not allowed"),
    (Route("203.0.113.0/24", "192.0.2.1", ("6500０:1",)), "not allowed"),  # fullwidth digit
    (Route("203.0.113.0/24", "192.0.2.1", "65000:666"), "a list"),  # type: ignore[arg-type]
]


@pytest.mark.parametrize(("route", "why"), REFUSED)
def test_refused(route: Route, why: str) -> None:
    with pytest.raises(CommandError, match=re.escape(why)):
        commands.announce(route)


def test_checked_is_the_last_gate() -> None:
    assert commands.checked("withdraw route 203.0.113.0/24") == "withdraw route 203.0.113.0/24"
    for bad in ("a\nb", "a\rb", "a\x00b", "a  b", " a", "a ", "", "é", "a\tb"):
        with pytest.raises(CommandError):
            commands.checked(bad)


# --------------------------------------------------------------------------- property
_LINE = re.compile(r"\A[\x21-\x7e]+( [\x21-\x7e]+)*\Z")
_COMM = re.compile(r"community \[([^\]]*)\]")
_LARGE = re.compile(r"large-community \[([^\]]*)\]")
_NH = re.compile(r" next-hop (\S+)")


def _attribute_text() -> st.SearchStrategy[str]:
    """Strings near the grammar: numbers, colons, separators and hostile characters."""
    pieces = st.one_of(
        st.integers(-5, 2**33).map(str),
        st.sampled_from(
            [
                ":",
                "::",
                "/",
                " ",
                "]",
                "[",
                "\n",
                "\r",
                "\x00",
                "\x7f",
                "\u2028",
                "no-export",
                "blackhole",
                "0x10",
                ".",
                "ffff",
                "self",
                "０",
            ]
        ),
        st.text(max_size=4),
    )
    return st.lists(pieces, max_size=6).map("".join)


def _route() -> st.SearchStrategy[Route]:
    prefix = st.one_of(
        _attribute_text(),
        st.sampled_from(["203.0.113.0/24", "2001:db8::/48", "198.18.10.0/24", "10.0.0.0/8"]),
    )
    hop = st.one_of(
        st.none(),
        _attribute_text(),
        st.sampled_from(["192.0.2.1", "2001:db8::1", "self", "::ffff:1.2.3.4"]),
    )
    comm = st.one_of(
        _attribute_text(),
        st.builds(lambda a, b: f"{a}:{b}", st.integers(0, 70000), st.integers(0, 70000)),
    )
    large = st.one_of(
        _attribute_text(),
        st.builds(
            lambda a, b, c: f"{a}:{b}:{c}",
            st.integers(0, 2**32 + 5),
            st.integers(0, 2**32 + 5),
            st.integers(0, 2**32 + 5),
        ),
    )
    return st.builds(
        Route,
        prefix,
        hop,
        st.lists(comm, max_size=4).map(tuple),
        st.lists(large, max_size=3).map(tuple),
    )


@settings(max_examples=1000, deadline=None)
@given(_route())
def test_property_no_command_carries_a_control_char_or_an_out_of_range_value(r: Route) -> None:
    try:
        line = commands.announce(r, "192.0.2.7", "2001:db8::7")
    except CommandError:
        return
    assert _LINE.match(line), line
    assert line.startswith("announce route ")
    net = ipaddress.ip_network(line.split()[2], strict=True)
    hop = _NH.search(line)
    assert hop is not None
    if hop.group(1) != "self":
        assert ipaddress.ip_address(hop.group(1)).version == net.version
    else:
        assert net.version == 4
    m = _COMM.search(line.replace("large-community", "L"))
    for c in m.group(1).split() if m else []:
        a, b = c.split(":")
        assert 0 <= int(a) <= 65535 and 0 <= int(b) <= 65535
    m = _LARGE.search(line)
    for c in m.group(1).split() if m else []:
        assert all(0 <= int(x) <= 2**32 - 1 for x in c.split(":")) and c.count(":") == 2
    assert line.count("[") == line.count("]") <= 2


@settings(max_examples=500, deadline=None)
@given(_attribute_text())
def test_property_withdraw(text: str) -> None:
    try:
        line = commands.withdraw(text)
    except CommandError:
        return
    assert _LINE.match(line) and len(line.split()) == 3
    ipaddress.ip_network(line.split()[2], strict=True)
