"""Scalar values of the threshold file that are not numbers with units (prefixes, BGP
communities, ports), and helpers to talk about YAML nodes in messages."""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Callable
from typing import Any

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from thresholds import units
from thresholds.model import ANOMALY_STATS, CLASSES, AnomalyRule, Network
from thresholds.spec import ANNOUNCE_MODES, ANOMALY_METRICS, ANOMALY_MODES, MAX_ANNOUNCE, MODES
from thresholds.units import UnitError, parse_int

_PORT_RANGE_RE = re.compile(r"^\s*([0-9]+)\s*-\s*([0-9]+)\s*$")
_STAT = "(" + "|".join(ANOMALY_STATS) + ")"
_NUMBER = r"([0-9]+(?:\.[0-9]+)?)"
_FACTOR_RE = re.compile(rf"^{_NUMBER}\s*[x*]\s*{_STAT}$")
_MADS_RE = re.compile(rf"^{_STAT}\s*\+\s*{_NUMBER}\s*mads?$")


def join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def describe(node: Node) -> str:
    if isinstance(node, MappingNode):
        return "a mapping"
    if isinstance(node, SequenceNode):
        return "a list"
    if is_empty(node):
        return "nothing"
    text = str(node.value)
    return f"'{text[:60]}...'" if len(text) > 60 else f"'{text}'"


def is_empty(node: Node) -> bool:
    # plain style is None in PyYAML's parser and "" in libyaml's
    return isinstance(node, ScalarNode) and not node.style and node.value in ("", "~", "null")


def suggest(name: str, choices: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    return "expected one of: " + ", ".join(choices)


def parse_prefix(text: str) -> Network:
    """A network as written by a person; raises ``UnitError`` saying what is wrong."""
    text = text.strip()
    if "/" not in text:
        try:
            addr = ipaddress.ip_address(text)
        except ValueError:
            pass
        else:
            return_len = 32 if addr.version == 4 else 128
            raise UnitError(f"'{text}' has no length; write {text}/{return_len} for one address")
    else:
        try:
            return ipaddress.ip_network(text, strict=True)
        except ValueError:
            try:
                net = ipaddress.ip_network(text, strict=False)
            except ValueError:
                address, _, length = text.partition("/")
                _prefix_hint(address, length, text)
            else:
                raise UnitError(f"'{text}' has host bits set; the network is {net}") from None
    raise UnitError(f"expected a prefix like 198.18.10.0/24 or 2001:db8::/48, got '{text}'")


def _prefix_hint(address: str, length: str, text: str) -> None:
    """Raise a precise message for a prefix whose address or length alone is wrong."""
    try:
        addr = ipaddress.ip_address(address)
    except ValueError:
        if re.fullmatch(r"[0-9.]+", address) and re.search(r"(^|\.)0[0-9]", address):
            raise UnitError(f"'{text}': write the address without leading zeros") from None
        return
    top = 32 if addr.version == 4 else 128
    raise UnitError(f"'{text}': the length must be 0-{top} for an IPv{addr.version} prefix")


def parse_community(text: str, parts: int) -> str:
    bits = 16 if parts == 2 else 32
    pieces = text.strip().split(":")
    top = (1 << bits) - 1
    if len(pieces) != parts or not all(p.isdigit() and int(p) <= top for p in pieces):
        if parts == 2:
            raise UnitError(
                f"expected a community like 65000:666 (two numbers 0-{top}), got '{text}'"
            )
        raise UnitError(
            f"expected a large community like 65000:1:2 (three numbers 0-{top}), got '{text}'"
        )
    return ":".join(str(int(p)) for p in pieces)


def parse_port(text: str) -> int:
    port = parse_int(text, "a port 1-65535")
    if not 1 <= port <= 65535:
        raise UnitError(f"expected a port 1-65535, got '{text.strip()}'")
    return port


def parse_port_range(text: str, what: str) -> tuple[int, int]:
    m = _PORT_RANGE_RE.match(text)
    if m is None:
        raise UnitError(f"expected a port range like 16384-32767, got '{text}'")
    low, high = parse_port(m[1]), parse_port(m[2])
    if low > high:
        raise UnitError(f"{what} range {low}-{high} is reversed; write {high}-{low}")
    return low, high


def parse_anomaly_rule(text: str) -> AnomalyRule | str:
    """``5x p99`` or ``p99 + 6 mad`` (``median``, ``p95``, ``p99``); ``off`` stays the text."""
    t = " ".join(text.strip().lower().split())
    if t == units.OFF:
        return units.OFF
    m = _FACTOR_RE.match(t)
    if m is not None:
        factor = float(m[1])
        if factor < 1:
            raise UnitError(
                f"the factor must be at least 1 (below the baseline is normal traffic), "
                f"got '{text}'"
            )
        return AnomalyRule(f"{factor:g}x {m[2]}", m[2], factor=factor)
    m = _MADS_RE.match(t)
    if m is not None:
        mads = float(m[2])
        return AnomalyRule(f"{m[1]} + {mads:g} mad", m[1], mads=mads)
    stats = ", ".join(ANOMALY_STATS)
    raise UnitError(
        f"expected a rule like '5x p99' or 'p99 + 6 mad' (statistics: {stats}), got '{text}'"
    )


def parse_class(text: str) -> str:
    name = text.strip()
    if name not in CLASSES:
        raise UnitError(f"unknown class '{name}'; {suggest(name, CLASSES)}")
    return name


# -- converters of the leaf kinds of thresholds.spec: (text, key name) -> value ---------------


def _duration(text: str, name: str) -> float:
    value = units.parse_duration(text)
    if value <= 0 and name in ("bin", "average"):
        raise UnitError(f"{name} must be above 0, got '{text}'")
    return value


def _clear(text: str, name: str) -> float:
    value = units.parse_ratio(text)
    if not 0 < value < 1:
        raise UnitError(
            f"{name} must be above 0% and below 100% (under = below {name} x threshold), "
            f"got '{text}'"
        )
    return value


def _share(text: str, name: str) -> float:
    value = units.parse_ratio(text)
    if not 0 < value <= 1:
        raise UnitError(f"{name} must be above 0%, got '{text}'")
    return value


def _backoff(text: str, name: str) -> float:
    value = units.parse_number(text)
    if value < 1:
        raise UnitError(f"{name} must be at least 1 (1 = no dampening), got '{text}'")
    return value


def _count(text: str, name: str) -> int:
    value = parse_int(text)
    if value < 1:
        raise UnitError(f"{name} must be at least 1, got '{text}'")
    return value


def _subnet_length(text: str, name: str) -> int:
    top = MAX_ANNOUNCE[4 if name.endswith("v4") else 6]
    value = parse_int(text, "a prefix length")
    if not 1 <= value <= top:
        raise UnitError(f"{name} must be 1-{top} (longest announceable: /{top}), got '{text}'")
    return value


def _choice(choices: tuple[str, ...]) -> Callable[[str, str], str]:
    def convert(text: str, name: str) -> str:
        if text not in choices:
            raise UnitError(f"expected {', '.join(choices[:-1])} or {choices[-1]}, got '{text}'")
        return text

    return convert


def _port_range(text: str, name: str) -> tuple[int, int]:
    return parse_port_range(text, name)


def _mix(text: str, name: str) -> float | str:
    if text.strip().lower() == units.OFF:
        return units.OFF
    value = units.parse_ratio(text)
    if not 0 < value < 1:
        raise UnitError(f"{name} must be above 0% and below 100% (like 99.9%), got '{text}'")
    return round(value, 9)


#: kind -> (what a value looks like, converter)
SCALAR_KINDS: dict[str, tuple[str, Callable[[str, str], Any]]] = {
    "duration": ("a duration like 10s, 5m or 1h", _duration),
    "clear": ("a share like 80%", _clear),
    "share": ("a share like 20%", _share),
    "backoff": ("a factor like 2", _backoff),
    "count": ("a number of hosts", _count),
    "subnet_length_v4": ("a prefix length", _subnet_length),
    "subnet_length_v6": ("a prefix length", _subnet_length),
    "text": ("text", lambda text, name: text),
    "mode": ("enforce or monitor", _choice(MODES)),
    "announce_mode": ("prefix, subnets or list", _choice(ANNOUNCE_MODES)),
    "port_range": ("a port range like 16384-32767", _port_range),
    "anomaly_rule": ("a rule like 5x p99", lambda text, name: parse_anomaly_rule(text)),
    "anomaly_metric": ("pps or bps", _choice(ANOMALY_METRICS)),
    "anomaly_mode": ("monitor or divert", _choice(ANOMALY_MODES)),
    "mix": ("a level like 99.9% or off", _mix),
}
