"""Plans announce/withdraw changes that bring the announced set to the DesiredSet.

Safety first (DESIGN.md, never negotiable): only prefixes inside the protected networks,
never shorter than the covering protected prefix nor longer than the maximum (/24, /48),
at most ``max_diversions`` at once and ``max_changes_per_hour`` changes, attributes that
can be spliced into an ExaBGP command, and dampening: a prefix announced again within
``flap_reset`` of its withdraw is held ``flap_hold`` x 2^(n-1) (capped) before the next
withdraw. Sans-I/O: the caller sends the changes (or, in dry-run, only records them); the
whole state can be saved (``state``) and restored (``restore``) between runs.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from bgp import commands
from detector.contracts import DesiredRoute, DesiredSet, Route

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
#: the caller's extra check of a route: the route to announce (e.g. with its next hop
#: resolved) or the reason to refuse it
Screen = Callable[[DesiredRoute], "DesiredRoute | str"]


@dataclass(frozen=True, slots=True)
class SafetyConfig:
    protected: tuple[Network, ...]
    max_length_v4: int = 24
    max_length_v6: int = 48
    max_diversions: int = 32
    max_changes_per_hour: int = 120
    flap_hold: float = 0.0  # 0: no dampening
    flap_max_hold: float = 3600.0
    flap_reset: float = 3600.0


@dataclass(frozen=True, slots=True)
class Change:
    time: float
    type: str  # "announce" | "withdraw" | "refuse" | "hold"
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
    except (ValueError, TypeError) as e:
        return f"not a prefix: {e}"
    covering = [p for p in safety.protected if p.version == net.version and net.subnet_of(p)]  # type: ignore[arg-type]
    if not covering:
        return "outside every protected network"
    limit = safety.max_length_v4 if net.version == 4 else safety.max_length_v6
    if net.prefixlen > limit:
        return f"longer than /{limit}, the longest prefix the Internet accepts"
    return None


def route_dict(r: Route) -> dict[str, Any]:
    return {
        "next_hop": r.next_hop,
        "communities": list(r.communities),
        "large_communities": list(r.large_communities),
    }


def desired_to_json(r: DesiredRoute) -> dict[str, Any]:
    return {
        "prefix": r.route.prefix,
        **route_dict(r.route),
        "incident": r.incident,
        "vector": r.vector,
        "reason": r.reason,
        "manual": r.manual,
    }


def desired_from_json(d: dict[str, Any]) -> DesiredRoute:
    route = Route(
        str(d["prefix"]),
        d.get("next_hop"),
        tuple(d.get("communities") or ()),
        tuple(d.get("large_communities") or ()),
    )
    return DesiredRoute(
        route,
        int(d.get("incident") or 0),
        d.get("vector"),
        str(d.get("reason") or ""),
        bool(d.get("manual")),
    )


class Planner:
    def __init__(self, safety: SafetyConfig, screen: Screen | None = None) -> None:
        self.safety = safety
        self.screen = screen
        self.announced: dict[str, DesiredRoute] = {}
        self._changes: deque[float] = deque()
        self._refused: dict[str, str] = {}
        self._flaps: dict[str, tuple[int, float | None]] = {}  # level, last withdraw
        self._hold_until: dict[str, float] = {}
        self._held: dict[str, float] = {}  # hold reported (until) while not desired

    # ------------------------------------------------------------------ persistence
    def state(self) -> dict[str, Any]:
        return {
            "announced": [desired_to_json(r) for _, r in sorted(self.announced.items())],
            "changes": list(self._changes),
            "refused": dict(self._refused),
            "flaps": {p: [lv, w] for p, (lv, w) in self._flaps.items()},
            "hold_until": dict(self._hold_until),
            "held": dict(self._held),
        }

    def restore(self, state: dict[str, Any]) -> None:
        self.announced = {}
        for d in state.get("announced", []):
            r = desired_from_json(d)
            self.announced[r.route.prefix] = r
        self._changes = deque(float(t) for t in state.get("changes", []))
        self._refused = {str(k): str(v) for k, v in state.get("refused", {}).items()}
        self._flaps = {str(k): (int(v[0]), v[1]) for k, v in state.get("flaps", {}).items()}
        self._hold_until = {str(k): float(v) for k, v in state.get("hold_until", {}).items()}
        self._held = {str(k): float(v) for k, v in state.get("held", {}).items()}

    # ------------------------------------------------------------------ planning
    def plan(self, desired: DesiredSet, force: Collection[str] = ()) -> list[Change]:
        """Changes from the announced set to ``desired``; prefixes in ``force`` are
        withdrawn at once even if dampening holds them (an operator's withdraw)."""
        now = desired.time
        while self._changes and now - self._changes[0] >= 3600:
            self._changes.popleft()
        want: dict[str, DesiredRoute] = {}
        for r in desired.routes:
            want.setdefault(r.route.prefix, r)
        # a refusal is reported once while the prefix stays wanted; wanted again later
        # (a new incident), it is reported again
        for prefix in set(self._refused) - set(want):
            del self._refused[prefix]
        out: list[Change] = []
        for prefix in sorted(set(self.announced) - set(want)):
            old = self.announced[prefix]
            until = self._hold_until.get(prefix, 0.0)
            if now < until and not old.manual and prefix not in force:
                if self._held.get(prefix) != until:
                    self._held[prefix] = until
                    level = self._flaps.get(prefix, (0, None))[0]
                    note = (
                        f"flapping (dampening level {level}): withdraw held {until - now:g}s more"
                    )
                    out.append(Change(now, "hold", prefix, old.incident, old.vector, note))
                continue
            del self.announced[prefix]
            self._held.pop(prefix, None)
            self._hold_until.pop(prefix, None)
            self._flaps[prefix] = (self._flaps.get(prefix, (0, None))[0], now)
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
            r, why = self._check(prefix, r)
            if why is None and prefix in self.announced and self.announced[prefix].route == r.route:
                continue
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
            self._held.pop(prefix, None)
            reason = r.reason
            if prefix not in self.announced:
                reason += self._dampen(prefix, now)
            self.announced[prefix] = r
            self._changes.append(now)
            out.append(
                Change(now, "announce", prefix, r.incident, r.vector, reason, route_dict(r.route))
            )
        self._forget(now)
        return out

    def _check(self, prefix: str, r: DesiredRoute) -> tuple[DesiredRoute, str | None]:
        why = check_prefix(prefix, self.safety)
        if why is not None:
            return r, why
        try:
            commands.check_syntax(r.route)
        except commands.CommandError as e:
            return r, str(e)
        if self.screen is not None:
            screened = self.screen(r)
            if isinstance(screened, str):
                return r, screened
            r = screened
        return r, None

    def _dampen(self, prefix: str, now: float) -> str:
        """A new announce: its dampening level and how long its withdraw will be held."""
        s = self.safety
        level, last = self._flaps.get(prefix, (0, None))
        level = level + 1 if last is not None and now - last < s.flap_reset else 0
        self._flaps[prefix] = (level, last)
        hold = min(s.flap_hold * 2 ** (level - 1), s.flap_max_hold) if level and s.flap_hold else 0
        if hold <= 0:
            self._hold_until.pop(prefix, None)
            return ""
        self._hold_until[prefix] = now + hold
        return f" (flapping: announced again {level}x, held at least {hold:g}s)"

    def _forget(self, now: float) -> None:
        """Dampening history of prefixes quiet for flap_reset is dropped (bounded)."""
        for prefix, (_, last) in list(self._flaps.items()):
            if prefix not in self.announced and (
                last is None or now - last >= self.safety.flap_reset
            ):
                del self._flaps[prefix]
