"""The keys of the threshold file: names, kinds, descriptions, and the built-in defaults.

One table for the loader, the JSON Schema and the docs test. The built-in default values are
read from the dataclasses of ``thresholds.model`` (the one place where they live).
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from typing import Any

from thresholds.model import (
    CLASSES,
    METRICS,
    Announce,
    Anomaly,
    PortSets,
    PrefixPolicy,
    ThresholdSet,
    Timing,
)

VERSION = 1
#: longest prefix that may be announced (the longest the Internet accepts)
MAX_ANNOUNCE = {4: 24, 6: 48}
MODES: tuple[str, ...] = ("enforce", "monitor")
ANNOUNCE_MODES: tuple[str, ...] = ("prefix", "subnets", "list")
ANOMALY_MODES: tuple[str, ...] = ("monitor", "divert")
ANOMALY_METRICS: tuple[str, ...] = ("pps", "bps")
METRIC_DOC = {"bps": "bits per second", "pps": "packets per second", "fps": "flows per second"}


@dataclass(frozen=True, slots=True)
class Key:
    name: str
    kind: str  # how the value is read: see loader.Reader.value
    doc: str
    field: str = ""  # the model's field, where it is not the same name


TOP_KEYS: tuple[Key, ...] = (
    Key("version", "version", "format version of the file; must be 1"),
    Key("defaults", "defaults", "settings inherited by every prefix, and the global settings"),
    Key("prefixes", "prefixes", "the protected prefixes, each with its own settings"),
)
GLOBAL_KEYS: tuple[Key, ...] = (
    Key("bin", "duration", "width of a RateFrame time bin", "bin_seconds"),
    Key(
        "average", "duration", "rates are averaged over this window (whole bins)", "average_seconds"
    ),
    Key("ports", "ports", "ports that define the amplification, sip and rtp classes"),
)
ENTRY_KEYS: tuple[Key, ...] = (
    Key("name", "text", "a label for people (not inherited)"),
    Key("mode", "mode", "enforce: divert when over; monitor: verdicts only, never divert"),
    Key("thresholds", "limits", "per class, on the prefix total: bps / pps / fps"),
    Key("host_thresholds", "limits", "per class, for each host inside the prefix"),
    Key(
        "carpet_min_hosts",
        "count",
        "carpet bombing: the prefix over, no host over, and at least this many hosts hit",
    ),
    Key("timing", "timing", "when to divert and when to stop"),
    Key("announce", "announce", "what to announce when the prefix is diverted"),
    Key("anomaly", "anomaly", "rules relative to the baselines of the rate history"),
)
ANOMALY_KEYS: tuple[Key, ...] = (
    Key("rule", "anomaly_rule", "anomalous above FACTOR x STAT ('5x p99') or STAT + K mad; off"),
    Key("classes", "class_list", "classes scored; [] = every class with a static threshold"),
    Key("metric", "anomaly_metric", "the metric compared with the baselines: pps or bps"),
    Key("floor", "floor", "never anomalous below these rates: {pps: 20k, bps: 100M}"),
    Key("mode", "anomaly_mode", "monitor: scored and recorded, never diverts; divert"),
    Key("mix", "mix", "class-mix rule: the robust distance of the class rates, at this level"),
    Key("baselines", "text", "history directory of the baselines (default: divertor.yaml's)"),
)
TIMING_KEYS: tuple[Key, ...] = (
    Key("trigger", "duration", "over a threshold this long before diverting"),
    Key("clear", "clear", "under means below this share of the threshold", "clear_ratio"),
    Key("hold_down", "duration", "under this long before withdrawing"),
    Key("min_divert", "duration", "minimum diversion time (the blind spot after diverting)"),
    Key("backoff", "backoff", "each re-diversion holds min_divert x backoff^n"),
    Key("max_divert_hold", "duration", "cap of the dampened minimum diversion time"),
    Key("watch", "duration", "after a withdraw, an attack back within this re-diverts at once"),
    Key("dampening_reset", "duration", "quiet this long and the backoff starts again from 1"),
)
ANNOUNCE_KEYS: tuple[Key, ...] = (
    Key(
        "mode",
        "announce_mode",
        "prefix: the entry itself; subnets: its attacked /24s or /48s; list: the prefixes given",
    ),
    Key("prefixes", "prefix_list", "mode list: what to announce (per entry, not inherited)"),
    Key("subnet_length_v4", "subnet_length_v4", "mode subnets: length of the IPv4 subnets"),
    Key("subnet_length_v6", "subnet_length_v6", "mode subnets: length of the IPv6 subnets"),
    Key("subnet_share", "share", "mode subnets: a subnet with this share of the vector is hit"),
    Key("next_hop", "next_hop", "BGP next hop: an address, or {ipv4: ..., ipv6: ...}"),
    Key("communities", "communities", "BGP communities, ASN:VALUE (16-bit parts)"),
    Key("large_communities", "large_communities", "BGP large communities, A:B:C (32-bit parts)"),
)
PORT_KEYS: tuple[Key, ...] = (
    Key("amplification", "port_list", "UDP source ports of amplification (reflection)"),
    Key("sip", "port_list", "SIP signalling ports"),
    Key("rtp", "port_range", "RTP media port range, LOW-HIGH", "rtp_low"),
)
DEFAULTS_KEYS: tuple[Key, ...] = GLOBAL_KEYS + tuple(k for k in ENTRY_KEYS if k.name != "name")
#: announce keys allowed under defaults: a list of prefixes belongs to one entry
DEFAULTS_ANNOUNCE_KEYS: tuple[Key, ...] = tuple(k for k in ANNOUNCE_KEYS if k.name != "prefixes")

#: why a key is refused where it was written
MISPLACED = {
    ("entry", "bin"): "bin is global: set it under defaults",
    ("entry", "average"): "average is global: set it under defaults",
    ("entry", "ports"): "ports are global: set them under defaults",
    ("defaults", "name"): "name belongs to a prefix entry, not to defaults",
    ("defaults", "prefixes"): "announce prefixes belong to a prefix entry, not to defaults",
    ("top", "bin"): "bin goes under defaults",
    ("top", "average"): "average goes under defaults",
    ("top", "ports"): "ports go under defaults",
}


def by_name(keys: tuple[Key, ...]) -> dict[str, Key]:
    return {k.name: k for k in keys}


def _field_default(cls: type, name: str) -> Any:
    for f in fields(cls):
        if f.name == name:
            if f.default is not MISSING:
                return f.default
            if f.default_factory is not MISSING:
                return f.default_factory()
    raise KeyError(name)


def builtin_defaults() -> dict[tuple[str, ...], Any]:
    """The value of every settable leaf when nothing sets it, from the model's defaults.

    Leaves are key paths of the file; ``next_hop`` has one leaf per address family
    (``("announce", "next_hop", "ipv4")``). Thresholds have none (no threshold by default).
    """
    out: dict[tuple[str, ...], Any] = {
        ("bin",): _field_default(ThresholdSet, "bin_seconds"),
        ("average",): _field_default(ThresholdSet, "average_seconds"),
        ("mode",): _field_default(PrefixPolicy, "mode"),
        ("carpet_min_hosts",): _field_default(PrefixPolicy, "carpet_min_hosts"),
    }
    ports = PortSets()
    out[("ports", "amplification")] = tuple(sorted(ports.amplification))
    out[("ports", "sip")] = tuple(sorted(ports.sip))
    out[("ports", "rtp")] = (ports.rtp_low, ports.rtp_high)
    anomaly = Anomaly()
    for k in ANOMALY_KEYS:
        if k.name != "floor":  # like thresholds: no floor by default
            value = getattr(anomaly, k.name)
            out[("anomaly", k.name)] = value.text if k.name == "rule" and value else value
    timing = Timing()
    for k in TIMING_KEYS:
        out[("timing", k.name)] = getattr(timing, k.field or k.name)
    announce = Announce()
    for k in ANNOUNCE_KEYS:
        if k.name == "next_hop":
            out[("announce", "next_hop", "ipv4")] = announce.next_hop
            out[("announce", "next_hop", "ipv6")] = announce.next_hop
        else:
            out[("announce", k.name)] = getattr(announce, k.name)
    return out


def leaf_label(leaf: tuple[str, ...]) -> str:
    """The key path a person reads: next_hop leaves fold into "announce.next_hop"."""
    if leaf[:2] == ("announce", "next_hop"):
        return "announce.next_hop"
    return ".".join(leaf)


__all__ = [
    "ANNOUNCE_KEYS",
    "ANNOUNCE_MODES",
    "ANOMALY_KEYS",
    "CLASSES",
    "DEFAULTS_ANNOUNCE_KEYS",
    "DEFAULTS_KEYS",
    "ENTRY_KEYS",
    "GLOBAL_KEYS",
    "MAX_ANNOUNCE",
    "METRICS",
    "MODES",
    "PORT_KEYS",
    "TIMING_KEYS",
    "TOP_KEYS",
    "Key",
    "builtin_defaults",
]
