"""Plans announce/withdraw changes that bring the announced set to the DesiredSet.

Safety first (DESIGN.md, never negotiable): only prefixes inside the protected networks,
never shorter than the covering protected prefix nor longer than the maximum (/24, /48),
at most ``max_diversions`` at once and ``max_changes_per_hour`` changes. Sans-I/O: the
caller sends the changes (or, in dry-run, only records them).
"""

from __future__ import annotations

import ipaddress
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from detector.contracts import DesiredRoute, DesiredSet

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class SafetyConfig:
    protected: tuple[Network, ...]
    max_length_v4: int = 24
    max_length_v6: int = 48
    max_diversions: int = 32
    max_changes_per_hour: int = 120


@dataclass(frozen=True, slots=True)
class Change:
    time: float
    type: str  # "announce" | "withdraw" | "refuse"
    prefix: str
    incident: int | None
    vector: str | None
    reason: str
    route: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        out = {
            "time": self.time,
            "type": self.type,
            "prefix": self.prefix,
            "incident": self.incident,
            "vector": self.vector,
            "reason": self.reason,
        }
        if self.route:
            out["route"] = self.route
        return out


def check_prefix(prefix: str, safety: SafetyConfig) -> str | None:
    """Why a prefix may not be announced, or None if it may."""
    try:
        net = ipaddress.ip_network(prefix, strict=True)
    except ValueError as e:
        return f"not a prefix: {e}"
    covering = [p for p in safety.protected if p.version == net.version and net.subnet_of(p)]  # type: ignore[arg-type]
    if not covering:
        return "outside every protected network"
    limit = safety.max_length_v4 if net.version == 4 else safety.max_length_v6
    if net.prefixlen > limit:
        return f"longer than /{limit}, the longest prefix the Internet accepts"
    return None


class Planner:
    def __init__(self, safety: SafetyConfig) -> None:
        self.safety = safety
        self.announced: dict[str, DesiredRoute] = {}
        self._changes: deque[float] = deque()
        self._refused: dict[str, str] = {}

    def plan(self, desired: DesiredSet) -> list[Change]:
        now = desired.time
        while self._changes and now - self._changes[0] >= 3600:
            self._changes.popleft()
        want = {r.route.prefix: r for r in desired.routes}
        # a refusal is reported once while the prefix stays wanted; wanted again later
        # (a new incident), it is reported again
        for prefix in set(self._refused) - set(want):
            del self._refused[prefix]
        out: list[Change] = []
        for prefix in sorted(set(self.announced) - set(want)):
            old = self.announced.pop(prefix)
            self._changes.append(now)
            out.append(
                Change(
                    now,
                    "withdraw",
                    prefix,
                    old.incident,
                    old.vector,
                    "no longer in the desired set",
                )
            )
        for prefix, r in sorted(want.items()):
            if prefix in self.announced and self.announced[prefix].route == r.route:
                continue
            why = check_prefix(prefix, self.safety)
            if why is None and prefix not in self.announced:
                if len(self.announced) >= self.safety.max_diversions:
                    why = f"{self.safety.max_diversions} diversions already (max_diversions)"
                elif len(self._changes) >= self.safety.max_changes_per_hour:
                    why = f"{self.safety.max_changes_per_hour} changes in the last hour"
            if why is not None:
                if self._refused.get(prefix) != why:
                    self._refused[prefix] = why
                    out.append(Change(now, "refuse", prefix, r.incident, r.vector, why))
                continue
            self._refused.pop(prefix, None)
            self.announced[prefix] = r
            self._changes.append(now)
            route = {
                "next_hop": r.route.next_hop,
                "communities": list(r.route.communities),
                "large_communities": list(r.route.large_communities),
            }
            out.append(Change(now, "announce", prefix, r.incident, r.vector, r.reason, route))
        return out
