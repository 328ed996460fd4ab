"""Contracts of the detector: RateFrame, Verdict, IncidentEvent, Route and DesiredSet.

Small typed objects (DESIGN.md): what the rates stage hands to verdicts, verdicts to
incidents, and incidents to the BGP side. Nothing here knows of BGP or sockets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, slots=True)
class RateFrame:
    """Rates of one settled bin: per protected prefix, class and metric (bps, pps, fps)."""

    start: float  # bin start, unix seconds (event time)
    seconds: float  # bin length
    prefixes: tuple[str, ...]
    values: npt.NDArray[np.float64]  # shape (prefixes, classes, metrics), per second
    #: top hosts of each prefix in this bin: prefix -> [(address, pps, bps)]
    hosts: dict[str, list[tuple[str, float, float]]] = field(default_factory=dict)


class Status(StrEnum):
    NORMAL = "normal"
    OVER = "over"


@dataclass(frozen=True, slots=True)
class Verdict:
    """The judgement of one protected prefix at one evaluation (event) time."""

    time: float
    prefix: str
    status: Status
    over_seconds: float = 0.0  # longest run of over bins in the horizon (data seconds)
    under: bool = True  # every bin of the under window below the clear level
    recent: bool = False  # some bin of the under window over a threshold
    vector: str | None = None  # udp_flood, amplification, carpet_bombing, ...
    rule: str | None = None  # e.g. "prefix udp.pps > 40k"
    scope: str | None = None  # "prefix", "host" or "carpet"
    klass: str | None = None
    metric: str | None = None
    value: float = 0.0  # measured (the peak of the run)
    threshold: float = 0.0
    host: str | None = None  # the host, for host rules
    subnets: tuple[str, ...] = ()  # attacked subnets (announce mode "subnets")
    monitor: bool = False  # monitor mode: recorded, never diverted
    since: float | None = None  # data time of the first bin of the over run
    #: more about the verdict, merged into its timeline line (e.g. "anomaly": {...})
    data: dict[str, Any] = field(default_factory=dict, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "type": "verdict",
            "prefix": self.prefix,
            "status": self.status.value,
            "over_seconds": self.over_seconds,
            "under": self.under,
            "vector": self.vector,
            "rule": self.rule,
            "scope": self.scope,
            "value": round(self.value, 1),
            "threshold": self.threshold,
            "host": self.host,
            "subnets": list(self.subnets),
            "monitor": self.monitor,
            **self.data,
        }


class State(StrEnum):
    NORMAL = "normal"
    SUSPECTED = "suspected"
    DIVERTED = "diverted"
    COOLING_DOWN = "cooling_down"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class IncidentEvent:
    """One transition of an incident's state machine, with its reason."""

    time: float
    incident: int
    prefix: str
    old: State
    new: State
    reason: str
    vector: str | None = None
    #: more about the incident, merged into the timeline line (e.g. "allowlisted_share")
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "type": "incident",
            "incident": self.incident,
            "prefix": self.prefix,
            "from": self.old.value,
            "to": self.new.value,
            "vector": self.vector,
            "reason": self.reason,
            **self.data,
        }


@dataclass(frozen=True, slots=True, order=True)
class Route:
    """A route that should be announced, with its attributes."""

    prefix: str
    next_hop: str | None = None
    communities: tuple[str, ...] = ()
    large_communities: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DesiredRoute:
    route: Route
    incident: int
    vector: str | None
    reason: str
    manual: bool = False


@dataclass(frozen=True, slots=True)
class DesiredSet:
    """Every route that should be announced right now (the BGP side reconciles to it)."""

    time: float
    routes: tuple[DesiredRoute, ...] = ()

    def prefixes(self) -> set[str]:
        return {r.route.prefix for r in self.routes}
