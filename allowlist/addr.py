"""Allowlist keys: addresses and prefixes as one Python int each, in the FlowBatch space.

A key is ``(value << 8) | length`` where ``value`` is the 128-bit address of the
FlowBatch representation (IPv4 as ``::ffff:a.b.c.d``) and ``length`` the prefix length in
that 128-bit space (an IPv4 host is 128, an IPv4 /24 is 120). So ``1.2.3.4`` and
``::ffff:1.2.3.4`` are the same key, and a key is hashable, ordered and cheap.

Prefixes apply to their own family: an IPv6 prefix never covers IPv4 addresses (the
``::ffff:0:0/96`` block is cut out of IPv6 ranges by the index).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

MAPPED = 0xFFFF << 32  # value of ::ffff:0.0.0.0
MAPPED_BLOCK = (MAPPED, MAPPED | 0xFFFFFFFF)  # ::ffff:0:0/96, as an inclusive range
HOST = 128
MAX_TEXT = 64


@dataclass(frozen=True, slots=True)
class Limits:
    """Shortest prefixes accepted: a typo must not allowlist the Internet."""

    min_prefix_v4: int = 8
    min_prefix_v6: int = 32


DEFAULT_LIMITS = Limits()


def parse(text: str, limits: Limits = DEFAULT_LIMITS) -> int:
    """Text address or prefix -> key. ValueError with the reason if it is not one."""
    if not isinstance(text, str):
        raise ValueError(f"expected an address as a string, got {type(text).__name__}")
    text = text.strip()
    if not text or len(text) > MAX_TEXT:
        raise ValueError("empty address" if not text else "address too long")
    if "/" not in text:
        try:
            return ((MAPPED | int.from_bytes(socket.inet_pton(socket.AF_INET, text))) << 8) | HOST
        except OSError:
            pass
        try:
            return (int.from_bytes(socket.inet_pton(socket.AF_INET6, text)) << 8) | HOST
        except OSError:
            raise ValueError(f"not an IPv4 or IPv6 address: {text!r}") from None
    try:
        net = ipaddress.ip_network(text, strict=True)
    except ValueError as e:
        raise ValueError(f"not a prefix: {text!r} ({e})") from None
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96:
        mapped = net.network_address.ipv4_mapped
        if mapped is not None:
            net = ipaddress.IPv4Network((mapped, net.prefixlen - 96))
    if net.version == 4:
        if net.prefixlen < limits.min_prefix_v4:
            raise ValueError(f"prefix shorter than /{limits.min_prefix_v4}: {text}")
        return ((MAPPED | int(net.network_address)) << 8) | (net.prefixlen + 96)
    if net.prefixlen < limits.min_prefix_v6:
        raise ValueError(f"prefix shorter than /{limits.min_prefix_v6}: {text}")
    return (int(net.network_address) << 8) | net.prefixlen


def is_v4(key: int) -> bool:
    return (key >> 40) == 0xFFFF and (key & 0xFF) >= 96


def is_host(key: int) -> bool:
    return (key & 0xFF) == HOST


def span(key: int) -> tuple[int, int]:
    """First and last 128-bit address a key covers."""
    value, length = key >> 8, key & 0xFF
    return value, value | ((1 << (128 - length)) - 1)


def text(key: int) -> str:
    """Key -> canonical text: dotted quad for IPv4, compressed IPv6; hosts without /len."""
    value, length = key >> 8, key & 0xFF
    if is_v4(key):
        addr = socket.inet_ntop(socket.AF_INET, (value & 0xFFFFFFFF).to_bytes(4))
        return addr if length == HOST else f"{addr}/{length - 96}"
    addr = socket.inet_ntop(socket.AF_INET6, value.to_bytes(16))
    return addr if length == HOST else f"{addr}/{length}"


def from_range(first: int, length: int) -> int:
    """Key of the prefix starting at 128-bit ``first`` with 128-bit ``length``."""
    return (first << 8) | length
