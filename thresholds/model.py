"""The threshold file's meaning, after parsing, validation and inheritance.

`thresholds.load` turns the NOC's YAML into a ``ThresholdSet``; the detector reads only
these objects (never the YAML). Every value here is already effective: inherited from the
covering entries and the defaults, units resolved (bits/s, packets/s, flows/s, seconds).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Literal

#: traffic classes, in the order of the detector's arrays
CLASSES: tuple[str, ...] = (
    "total",
    "tcp",
    "tcp_syn",
    "udp",
    "icmp",
    "fragments",
    "amplification",  # UDP from amplification source ports
    "sip",  # SIP signalling (UDP/TCP to or from the SIP ports)
    "rtp",  # UDP between RTP media ports
    "unlisted_udp",  # UDP from sources not on the allowlist
    "unlisted_sip",
    "unlisted_rtp",
)
#: metrics per class, in the order of the detector's arrays
METRICS: tuple[str, ...] = ("bps", "pps", "fps")

#: attack vector named for a class that fires
VECTOR_OF_CLASS: dict[str, str] = {
    "total": "volumetric",
    "tcp": "tcp_flood",
    "tcp_syn": "syn_flood",
    "udp": "udp_flood",
    "icmp": "icmp_flood",
    "fragments": "fragment_flood",
    "amplification": "amplification",
    "sip": "sip_flood",
    "rtp": "rtp_flood",
    "unlisted_udp": "udp_flood",
    "unlisted_sip": "sip_flood",
    "unlisted_rtp": "rtp_flood",
}

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Limit:
    """Thresholds of one class; None = no threshold on that metric."""

    bps: float | None = None
    pps: float | None = None
    fps: float | None = None

    def as_tuple(self) -> tuple[float | None, float | None, float | None]:
        return (self.bps, self.pps, self.fps)


@dataclass(frozen=True, slots=True)
class Timing:
    """When to divert and when to stop (seconds of event time unless noted)."""

    trigger: float = 10.0  # over a threshold this long (data time) before diverting
    clear_ratio: float = 0.8  # "under" means below clear_ratio x threshold
    hold_down: float = 60.0  # under this long before withdrawing
    min_divert: float = 300.0  # minimum diversion time (the blind spot after diverting)
    backoff: float = 2.0  # each re-diversion holds min_divert x backoff^n
    max_divert_hold: float = 3600.0  # cap of the dampened minimum
    watch: float = 600.0  # after a withdraw, an attack back within this re-diverts at once
    dampening_reset: float = 3600.0  # quiet this long and the backoff starts again from 1


@dataclass(frozen=True, slots=True)
class Announce:
    """What to announce for a diverted prefix, with its BGP attributes."""

    mode: Literal["prefix", "subnets", "list"] = "prefix"
    prefixes: tuple[str, ...] = ()  # mode "list"
    subnet_length_v4: int = 24  # mode "subnets": the attacked /24s (IPv4) ...
    subnet_length_v6: int = 48  # ... or /48s (IPv6) of the covering prefix
    subnet_share: float = 0.2  # a subnet is "attacked" if it has this share of the vector
    next_hop: str | None = None
    communities: tuple[str, ...] = ()  # "65000:666"
    large_communities: tuple[str, ...] = ()  # "65000:1:2"


#: statistics of a baseline that an anomaly rule can be relative to
ANOMALY_STATS: tuple[str, ...] = ("median", "p95", "p99")


@dataclass(frozen=True, slots=True)
class AnomalyRule:
    """``FACTOR x STAT`` ("5x p99") or ``STAT + K mad`` ("p99 + 6 mad"): the level above
    which a class is anomalous, relative to its baseline of the hour slot."""

    text: str  # as normalised: "5x p99", "p99 + 6 mad"
    stat: str  # median, p95 or p99
    factor: float = 1.0
    mads: float = 0.0  # robust deviations (1.4826 x MAD) added

    def level(self, stat: float, mad: float) -> float:
        return self.factor * stat + self.mads * mad


@dataclass(frozen=True, slots=True)
class Anomaly:
    """Anomaly rules of a prefix: rates against the baselines of the rate history."""

    rule: AnomalyRule | None = None  # None: no anomaly rule
    classes: tuple[str, ...] = ()  # classes scored; empty: those with a static threshold
    metric: Literal["bps", "pps"] = "pps"
    floor: Limit = field(default_factory=Limit)  # never anomalous below these rates
    mode: Literal["monitor", "divert"] = "monitor"  # monitor: scored, never diverts
    mix: float | None = None  # class-mix rule: chi-square level of the robust distance
    baselines: str | None = None  # history directory of the baselines (else divertor.yaml's)

    def scored(self, thresholds: dict[str, Limit]) -> tuple[str, ...]:
        """The classes scored, in CLASSES order."""
        chosen = set(self.classes) if self.classes else set(thresholds)
        return tuple(c for c in CLASSES if c in chosen)


@dataclass(frozen=True, slots=True)
class PrefixPolicy:
    """Effective settings of one protected prefix (a configured entry)."""

    prefix: Network
    name: str = ""
    mode: Literal["enforce", "monitor"] = "enforce"  # monitor: verdicts, never diverts
    thresholds: dict[str, Limit] = field(default_factory=dict)  # class -> limits (prefix total)
    host_thresholds: dict[str, Limit] = field(default_factory=dict)  # per host inside it
    carpet_min_hosts: int = 16  # carpet bombing: the prefix over, no host over, >= N hosts hit
    timing: Timing = field(default_factory=Timing)
    announce: Announce = field(default_factory=Announce)
    anomaly: Anomaly = field(default_factory=Anomaly)
    parent: str | None = None  # the covering entry it inherits from, if any
    source_line: int = 0  # line of the entry in its file
    #: where each effective value came from, by key path of the file ("timing.trigger",
    #: "thresholds.udp.pps"): "set here", "default", "built-in default", "from <prefix>".
    #: For `divertor thresholds show`; not part of equality.
    origins: dict[str, str] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class PortSets:
    """Ports that define the classes (global: classification happens once per record)."""

    amplification: frozenset[int] = frozenset(
        {19, 53, 111, 123, 137, 161, 389, 520, 1900, 3283, 3702, 5353, 11211, 27960}
    )
    sip: frozenset[int] = frozenset({5060, 5061})
    rtp_low: int = 16384
    rtp_high: int = 32767


@dataclass(frozen=True, slots=True)
class ThresholdSet:
    """A whole, valid threshold file."""

    policies: tuple[PrefixPolicy, ...]
    ports: PortSets = field(default_factory=PortSets)
    bin_seconds: float = 1.0
    average_seconds: float = 5.0  # rates are averaged over this many seconds of bins
    source: str = ""
    #: where bin, average and ports came from ("default" or "built-in default"), by key
    origins: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def policy(self, prefix: str) -> PrefixPolicy | None:
        net = ipaddress.ip_network(prefix, strict=False)
        for p in self.policies:
            if p.prefix == net:
                return p
        return None
