"""RPKI pre-flight: would route origin validation (RFC 6811) drop what we announce?

A more-specific that RPKI marks invalid silently fails to pull any traffic: networks that
drop invalids keep sending the attack to the customer. The VRP file is the JSON that
rpki-client (``"asn": 65000``) or Routinator (``"asn": "AS65000"``) export::

    {"roas": [{"asn": "AS65000", "prefix": "198.18.0.0/16", "maxLength": 24, "ta": "..."}]}

RFC 6811: a ROA *covers* a route if its prefix contains the route's; the route is
*valid* if a covering ROA has the origin AS and a maxLength of at least the route's
length, *invalid* if ROAs cover it but none matches, *not found* if none covers it.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Range = tuple[int, int]  # [first, last] address as integers


@dataclass(frozen=True, slots=True)
class Roa:
    asn: int
    prefix: Network
    max_length: int

    def __str__(self) -> str:
        return f"ROA {self.prefix} AS{self.asn} maxLength {self.max_length}"


@dataclass(frozen=True, slots=True)
class Validity:
    state: str  # "valid" | "invalid" | "not-found"
    reason: str


def _asn(value: object) -> int:
    text = str(value).strip()
    if text[:2].upper() == "AS":
        text = text[2:]
    if not text.isdigit() or not 0 <= int(text) <= 0xFFFFFFFF:
        raise ValueError(f"asn {value!r}: expected 65000 or 'AS65000'")
    return int(text)


def parse(data: object, source: str = "VRP file") -> list[Roa]:
    """The ROAs of a VRP JSON document; a bad entry is refused with its index."""
    roas_raw = data.get("roas") if isinstance(data, dict) else None
    if not isinstance(roas_raw, list):
        raise ValueError(f'{source}: expected a JSON object with a "roas" list')
    out: list[Roa] = []
    for i, entry in enumerate(roas_raw):
        try:
            if not isinstance(entry, dict):
                raise ValueError("expected an object")
            net = ipaddress.ip_network(str(entry["prefix"]), strict=True)
            max_length = int(entry.get("maxLength", entry.get("max_length", net.prefixlen)) or 0)
            if not net.prefixlen <= max_length <= net.max_prefixlen:
                raise ValueError(
                    f"maxLength {max_length} outside /{net.prefixlen}-/{net.max_prefixlen}"
                )
            out.append(Roa(_asn(entry["asn"]), net, max_length))
        except KeyError as e:
            raise ValueError(f"{source}: roas[{i}]: missing {e}") from None
        except (ValueError, TypeError) as e:
            raise ValueError(f"{source}: roas[{i}]: {e}") from None
    return out


def load(path: str) -> Vrps:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}:{e.colno}: {e.msg}") from None
    return Vrps(parse(data, path))


class Vrps:
    """ROAs indexed by (version, prefix length, network) for covering look-ups."""

    def __init__(self, roas: Iterable[Roa]) -> None:
        self.roas = list(roas)
        self._index: dict[tuple[int, int], dict[int, list[Roa]]] = {}
        for r in self.roas:
            key = (r.prefix.version, r.prefix.prefixlen)
            self._index.setdefault(key, {}).setdefault(int(r.prefix.network_address), []).append(r)

    def restrict(self, networks: Iterable[Network]) -> Vrps:
        """Only the ROAs that overlap ``networks`` (a full VRP export has ~500k)."""
        spans = [(n.version, *_range(n)) for n in networks]
        keep = [
            r
            for r in self.roas
            if any(
                v == r.prefix.version and lo <= _range(r.prefix)[1] and _range(r.prefix)[0] <= hi
                for v, lo, hi in spans
            )
        ]
        return Vrps(keep)

    def covering(self, net: Network) -> list[Roa]:
        out: list[Roa] = []
        bits, value = net.max_prefixlen, int(net.network_address)
        for length in range(net.prefixlen + 1):
            table = self._index.get((net.version, length))
            if table:
                key = value >> (bits - length) << (bits - length) if length else 0
                out.extend(table.get(key, ()))
        return out

    def validity(self, net: Network, origin: int) -> Validity:
        covering = self.covering(net)
        if not covering:
            return Validity("not-found", f"no ROA covers {net}")
        for r in covering:
            if r.asn == origin and r.asn != 0 and net.prefixlen <= r.max_length:
                return Validity("valid", f"{r}")
        own = [r for r in covering if r.asn == origin]
        if own:
            best = max(own, key=lambda r: r.max_length)
            return Validity(
                "invalid",
                f"RPKI invalid: {best} is shorter than /{net.prefixlen} "
                f"(a ROA with maxLength {net.prefixlen} is needed)",
            )
        others = ", ".join(str(r) for r in covering[:3])
        return Validity("invalid", f"RPKI invalid: no ROA for AS{origin} covers {net} ({others})")

    def uncovered(self, block: Network, length: int, origin: int) -> list[tuple[Network, Validity]]:
        """The parts of ``block`` whose /``length`` subnets RPKI would not mark valid for
        ``origin``, as CIDR blocks with the reason (computed over address ranges, so a
        /29 of IPv6 checked at /48 costs as much as one /24)."""
        lo, hi = _range(block)
        fits = [_range(r.prefix) for r in self._around(block, length) if _ok(r, origin, length)]
        anyroa = [
            _range(r.prefix) for r in self._around(block, length) if r.prefix.prefixlen <= length
        ]
        bad = _minus([(lo, hi)], _union(fits))
        out: list[tuple[Network, Validity]] = []
        for first, last in bad:
            for part in _split(block, (first, last), _union(anyroa)):
                out.append((part, self.validity(_first_subnet(part, length), origin)))
        return out

    def _around(self, block: Network, length: int) -> list[Roa]:
        """ROAs that cover ``block`` or lie inside it (no longer than ``length``)."""
        return [
            r
            for r in self.roas
            if r.prefix.version == block.version
            and r.prefix.prefixlen <= length
            and (block.subnet_of(r.prefix) or r.prefix.subnet_of(block))  # type: ignore[arg-type]
        ]


def _ok(r: Roa, origin: int, length: int) -> bool:
    return r.asn == origin and r.asn != 0 and r.prefix.prefixlen <= length <= r.max_length


def _range(net: Network) -> Range:
    return int(net.network_address), int(net.broadcast_address)


def _union(ranges: Sequence[Range]) -> list[Range]:
    out: list[Range] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _minus(a: list[Range], b: list[Range]) -> list[Range]:
    out: list[Range] = []
    for lo, hi in a:
        cur = lo
        for blo, bhi in b:
            if bhi < cur or blo > hi:
                continue
            if blo > cur:
                out.append((cur, blo - 1))
            cur = max(cur, bhi + 1)
        if cur <= hi:
            out.append((cur, hi))
    return out


def _split(block: Network, part: Range, covered: list[Range]) -> list[Network]:
    """``part`` cut where ROA coverage starts or stops, as CIDR blocks."""
    inside = _minus([part], _minus([part], covered))
    pieces = sorted(inside + _minus([part], covered))
    addr = ipaddress.IPv4Address if block.version == 4 else ipaddress.IPv6Address
    nets: list[Network] = []
    for lo, hi in pieces:
        nets.extend(ipaddress.summarize_address_range(addr(lo), addr(hi)))
    return nets


def _first_subnet(net: Network, length: int) -> Network:
    if net.prefixlen >= length:
        return net
    return ipaddress.ip_network((net.network_address, length))
