"""What may be announced: the safety bounds, the attribute checks and RPKI, in one place.

``Policy`` is built once from the configuration (``divertor.bgp_cmd.build``). Its
``screen`` is the planner's last check of each route (attributes validated and completed
with the default next hops, RPKI validity); ``preflight`` is the configuration-time RPKI
check of every prefix the thresholds could ask to divert.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from bgp import commands
from bgp.planner import Planner, SafetyConfig, check_prefix
from bgp.rpki import Vrps
from detector.contracts import DesiredRoute, Route
from thresholds.model import ThresholdSet

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
MODES = ("dry-run", "manual-approval", "automatic")


@dataclass(frozen=True, slots=True)
class Candidate:
    """Prefixes the thresholds may ask to divert: /``length`` subnets of ``block``."""

    block: Network
    length: int
    policy: str  # the protected prefix (threshold entry) they come from
    how: str  # announce mode: prefix | subnets | list


@dataclass(frozen=True)
class Policy:
    safety: SafetyConfig
    mode: str = "dry-run"
    next_hop_v4: str | None = None
    next_hop_v6: str | None = None
    vrps: Vrps | None = None
    origin_as: int | None = None
    rpki_not_found: str = "allow"  # allow | refuse
    #: announce attributes of the protected prefixes (for manual diversions), most
    #: specific first: (prefix, next_hop, communities, large_communities)
    defaults: tuple[tuple[Network, str | None, tuple[str, ...], tuple[str, ...]], ...] = ()

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r}: expected one of {', '.join(MODES)}")
        if self.vrps is not None and self.origin_as is None:
            raise ValueError("an RPKI VRP file needs the origin AS (bgp.origin_as or local_as)")

    @property
    def dry(self) -> bool:
        return self.mode == "dry-run"

    def planner(self) -> Planner:
        return Planner(self.safety, self.screen)

    # ------------------------------------------------------------------ per route
    def screen(self, r: DesiredRoute) -> DesiredRoute | str:
        """The route with validated, canonical attributes, or why it is refused."""
        try:
            a = commands.validate(r.route, self.next_hop_v4, self.next_hop_v6)
        except commands.CommandError as e:
            return str(e)
        if a.prefix != r.route.prefix:
            return f"not written canonically (use {a.prefix})"
        why = self.rpki(ipaddress.ip_network(a.prefix))
        if why is not None:
            return why
        return replace(r, route=Route(a.prefix, a.next_hop, a.communities, a.large_communities))

    def rpki(self, net: Network) -> str | None:
        if self.vrps is None or self.origin_as is None:
            return None
        v = self.vrps.validity(net, self.origin_as)
        if v.state == "invalid":
            return v.reason
        if v.state == "not-found" and self.rpki_not_found == "refuse":
            return f"RPKI not found: {v.reason} (bgp.rpki_not_found: refuse)"
        return None

    def render(self, r: DesiredRoute) -> str:
        return commands.announce(r.route, self.next_hop_v4, self.next_hop_v6)

    def check(self, prefix: str) -> str | None:
        """Why a prefix can never be announced (bounds, RPKI), or None."""
        why = check_prefix(prefix, self.safety)
        if why is None:
            why = self.rpki(ipaddress.ip_network(prefix))
        return why

    def manual_route(
        self,
        prefix: str,
        next_hop: str | None = None,
        communities: Iterable[str] | None = None,
        large_communities: Iterable[str] | None = None,
    ) -> Route:
        """A route for an operator's diversion: the attributes given, else those of the
        most specific protected prefix that covers it."""
        hop: str | None = None
        comms: tuple[str, ...] = ()
        large: tuple[str, ...] = ()
        try:
            net = ipaddress.ip_network(prefix, strict=False)
        except ValueError:
            net = None
        for cover, h, c, lc in self.defaults:
            if net is not None and cover.version == net.version and net.subnet_of(cover):  # type: ignore[arg-type]
                hop, comms, large = h, c, lc
                break
        return Route(
            prefix,
            next_hop if next_hop is not None else hop,
            tuple(communities) if communities is not None else comms,
            tuple(large_communities) if large_communities is not None else large,
        )

    # ------------------------------------------------------------------ configuration
    def preflight(self, candidates: Iterable[Candidate], now: float) -> list[dict[str, Any]]:
        """Refusals (timeline events) of what the thresholds may ask to divert but the
        bounds or RPKI forbid: reported when the configuration loads."""
        out: list[dict[str, Any]] = []
        for c in candidates:
            sample = (
                c.block
                if c.block.prefixlen >= c.length
                else next(iter(c.block.subnets(new_prefix=c.length)))
            )
            why = check_prefix(str(sample), self.safety)
            if why is not None:
                out.append(_refusal(now, c, str(c.block), why))
                continue
            if self.vrps is None or self.origin_as is None:
                continue
            for part, v in self.vrps.uncovered(
                c.block, max(c.length, c.block.prefixlen), self.origin_as
            ):
                if v.state == "invalid" or self.rpki_not_found == "refuse":
                    out.append(_refusal(now, c, str(part), v.reason))
                else:
                    out.append({**_refusal(now, c, str(part), v.reason), "type": "warning"})
        return out


def _refusal(now: float, c: Candidate, prefix: str, why: str) -> dict[str, Any]:
    return {
        "time": now,
        "type": "refuse",
        "prefix": prefix,
        "incident": None,
        "vector": None,
        "reason": why,
        "scope": "configuration",
        "policy": c.policy,
        "announce": c.how if c.how == "prefix" else f"{c.how} /{c.length}",
    }


def candidates(ts: ThresholdSet) -> list[Candidate]:
    """Every prefix shape the thresholds may put in a DesiredSet."""
    out: list[Candidate] = []
    for p in ts.policies:
        a = p.announce
        if a.mode == "prefix":
            out.append(Candidate(p.prefix, p.prefix.prefixlen, str(p.prefix), "prefix"))
        elif a.mode == "subnets":
            length = a.subnet_length_v4 if p.prefix.version == 4 else a.subnet_length_v6
            out.append(
                Candidate(p.prefix, max(length, p.prefix.prefixlen), str(p.prefix), "subnets")
            )
        else:
            for text in a.prefixes:
                net = ipaddress.ip_network(text, strict=False)
                out.append(Candidate(net, net.prefixlen, str(p.prefix), "list"))
    return out


def defaults(
    ts: ThresholdSet,
) -> tuple[tuple[Network, str | None, tuple[str, ...], tuple[str, ...]], ...]:
    rows = [
        (p.prefix, p.announce.next_hop, p.announce.communities, p.announce.large_communities)
        for p in ts.policies
    ]
    return tuple(sorted(rows, key=lambda r: -r[0].prefixlen))
