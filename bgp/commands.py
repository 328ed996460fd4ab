"""Validated rendering of ExaBGP API commands (the text API of ExaBGP 4.2 and 5.0).

Every value spliced into a command is checked here, whatever checked it before: a prefix
is a network without host bits, a next hop is an address of the prefix's family (or
``self`` for IPv4), a community is ``0-65535:0-65535`` or a well-known name, a large
community is three numbers 0-4294967295. ExaBGP itself takes ``community [65000:99999]``
and sends something else, and an IPv4 next hop on an IPv6 route is acked ``done`` and then
dropped by the peer: both are refused here. The rendered line is checked once more: one
line of printable ASCII, nothing else.

Grammar (ExaBGP ``qa/encoding`` and ``application/healthcheck.py``)::

    announce route 203.0.113.0/24 next-hop 192.0.2.1 community [65000:666] large-community [1:2:3]
    withdraw route 203.0.113.0/24
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from detector.contracts import Route

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: well-known communities (RFC 1997, RFC 3765, RFC 7999) by the names ExaBGP knows
WELL_KNOWN: dict[str, str] = {
    "no-export": "65535:65281",
    "no-advertise": "65535:65282",
    "no-export-subconfed": "65535:65283",
    "nopeer": "65535:65284",
    "blackhole": "65535:666",
}
_COMMUNITY = re.compile(r"\A([0-9]{1,5}):([0-9]{1,5})\Z")
_LARGE = re.compile(r"\A([0-9]{1,10}):([0-9]{1,10}):([0-9]{1,10})\Z")
#: what a rendered command may contain: printable ASCII, single spaces
_LINE = re.compile(r"\A[\x21-\x7e]+( [\x21-\x7e]+)*\Z")
U16, U32 = 0xFFFF, 0xFFFFFFFF


class CommandError(ValueError):
    """A value that must not be spliced into an ExaBGP command."""


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise CommandError(f"{what}: expected a string, got {type(value).__name__}")
    for ch in value:
        if not ch.isascii() or not ch.isprintable() or ch.isspace():
            raise CommandError(f"{what} {value!r}: character {ch!r} is not allowed")
    if not value:
        raise CommandError(f"{what}: empty")
    return value


def prefix(value: object) -> Network:
    """A network without host bits, written the canonical way."""
    text = _text(value, "prefix")
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        raise CommandError(f"prefix {text!r}: {e}") from None
    if "/" not in text:
        raise CommandError(f"prefix {text!r}: no prefix length")
    return net


def next_hop(value: object, net: Network) -> str:
    """An address of the prefix's family; ``self`` is allowed for IPv4 only (ExaBGP
    answers ``error`` to ``next-hop self`` on an IPv6 route over an IPv4 session)."""
    text = _text(value, "next-hop")
    if text == "self":
        if net.version != 4:
            raise CommandError(f"next-hop self for the IPv6 prefix {net}")
        return text
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise CommandError(f"next-hop {text!r}: not an IP address") from None
    if addr.version != net.version:
        raise CommandError(
            f"next-hop {addr} is IPv{addr.version} for the IPv{net.version} prefix {net}: "
            "the peer would drop the route (give an IPv6 next hop, bgp.next_hop_v6)"
        )
    if addr.is_unspecified or addr.is_multicast:
        raise CommandError(f"next-hop {addr}: not a unicast address")
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        raise CommandError(f"next-hop {addr}: an IPv4-mapped address, dropped by the peer")
    return str(addr)


def check_syntax(route: Route) -> None:
    """What can be checked without knowing the peer: the next hop (if any) is an address
    or ``self``, communities and large communities are in range, no control character."""
    if route.next_hop is not None:
        hop = _text(route.next_hop, "next-hop")
        if hop != "self":
            try:
                ipaddress.ip_address(hop)
            except ValueError:
                raise CommandError(f"next-hop {hop!r}: not an IP address") from None
    if isinstance(route.communities, str) or isinstance(route.large_communities, str):
        raise CommandError("communities: expected a list, got a string")
    for c in route.communities:
        community(c)
    for c in route.large_communities:
        large_community(c)


def community(value: object) -> str:
    """``ASN:VALUE`` with both 0-65535, or a well-known name; returned as ``A:B``."""
    text = _text(value, "community")
    if text.lower() in WELL_KNOWN:
        return WELL_KNOWN[text.lower()]
    m = _COMMUNITY.match(text)
    if not m or int(m.group(1)) > U16 or int(m.group(2)) > U16:
        raise CommandError(f"community {text!r}: expected two numbers 0-65535, like 65000:666")
    return f"{int(m.group(1))}:{int(m.group(2))}"


def large_community(value: object) -> str:
    text = _text(value, "large-community")
    m = _LARGE.match(text)
    if not m or any(int(g) > U32 for g in m.groups()):
        raise CommandError(
            f"large-community {text!r}: expected three numbers 0-4294967295, like 65000:1:2"
        )
    return ":".join(str(int(g)) for g in m.groups())


def _dedup(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


@dataclass(frozen=True, slots=True)
class Announce:
    """A route whose every attribute was validated: render() cannot fail."""

    prefix: str
    next_hop: str
    communities: tuple[str, ...] = ()
    large_communities: tuple[str, ...] = ()

    def render(self) -> str:
        parts = ["announce route", self.prefix, "next-hop", self.next_hop]
        if self.communities:
            parts.append("community [" + " ".join(self.communities) + "]")
        if self.large_communities:
            parts.append("large-community [" + " ".join(self.large_communities) + "]")
        return checked(" ".join(parts))


def validate(
    route: Route, next_hop_v4: str | None = None, next_hop_v6: str | None = None
) -> Announce:
    """Check every attribute of ``route``; a missing next hop (or one of the other family)
    is replaced by the default of the prefix's family if one is configured."""
    net = prefix(route.prefix)
    default = next_hop_v4 if net.version == 4 else next_hop_v6
    hop = route.next_hop
    if hop is None:
        if default is None:
            raise CommandError(f"no next-hop for {net} (and no bgp.next_hop_v{net.version})")
        hop = default
    try:
        nh = next_hop(hop, net)
    except CommandError:
        if default is None or not _is_other_family(hop, net):
            raise
        nh = next_hop(default, net)
    if isinstance(route.communities, str) or isinstance(route.large_communities, str):
        raise CommandError("communities: expected a list, got a string")
    return Announce(
        str(net),
        nh,
        tuple(_dedup(community(c) for c in route.communities)),
        tuple(_dedup(large_community(c) for c in route.large_communities)),
    )


def _is_other_family(hop: str, net: Network) -> bool:
    try:
        return ipaddress.ip_address(hop).version != net.version
    except ValueError:
        return hop == "self" and net.version == 6


def announce(route: Route, next_hop_v4: str | None = None, next_hop_v6: str | None = None) -> str:
    return validate(route, next_hop_v4, next_hop_v6).render()


def withdraw(value: object) -> str:
    return checked(f"withdraw route {prefix(value)}")


def checked(line: str) -> str:
    """The last gate before stdout: one line of printable ASCII."""
    if not _LINE.match(line) or len(line) > 4000:
        raise CommandError(f"refusing to send {line!r}")
    return line


#: fixed commands of the bridge
SHOW_ADJ_RIB_OUT = "show adj-rib out json"
SHOW_NEIGHBORS = "show neighbor json"
ENABLE_ACK = "enable-ack"
