"""The engine's side of the BGP store: DesiredSets, operator actions, approvals.

Every action is one write transaction on the store: read the desired set, the manual
diversions, the approvals and the planner's saved state, plan (``bgp.planner`` with the
``Policy`` screen), save the planner's state, the new target and the timeline events,
commit, then poke the bridge (a datagram on its UNIX socket) so that it reconciles at
once. The daemon, the CLI and a test can all hold an Engine on the same database: SQLite
serialises the transactions. Every action returns its events (dicts), already recorded.

Modes: ``dry-run`` plans and records on a planner state of its own and never touches the
target (what the bridge announces); ``manual-approval`` holds each automatic diversion
until ``approve`` (withdraws need no approval); ``automatic``. Manual diversions are never
withdrawn automatically; an operator's withdraw of an automatic diversion suppresses it
until the prefix leaves the desired set.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Collection, Iterable
from typing import Any

from bgp.planner import Change
from bgp.policy import Candidate, Policy
from bgp.store import Manual, Store
from detector.contracts import DesiredRoute, DesiredSet


def poke(path: str | None) -> None:
    """Wake the bridge (best effort: it also checks the store every poll_interval)."""
    if not path:
        return
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        s.setblocking(False)
        s.sendto(b"reconcile", path)
    except OSError:
        pass
    finally:
        s.close()


class Engine:
    def __init__(self, store: Store, policy: Policy, socket_path: str | None = None) -> None:
        self.store = store
        self.policy = policy
        self.socket_path = socket_path

    # ------------------------------------------------------------------ actions
    def load(self, candidates: Iterable[Candidate], now: float) -> list[dict[str, Any]]:
        """The configuration was (re)loaded: record its RPKI/bounds refusals."""
        events = self.policy.preflight(candidates, now)
        with self.store.write() as tx:
            tx.set_meta("mode", self.policy.mode)
            tx.add_events(events)
        return events

    def set_desired(self, desired: DesiredSet) -> list[dict[str, Any]]:
        """The detector's DesiredSet (replaces the previous one)."""
        with self.store.write() as tx:
            tx.set_desired(list(desired.routes), desired.time)
            events = self._replan(desired.time)
        self._poke(events)
        return events

    def tick(self, now: float) -> list[dict[str, Any]]:
        """Time passed: dampening holds may end, a change budget may free up."""
        with self.store.write():
            events = self._replan(now)
        self._poke(events)
        return events

    def divert(
        self,
        prefix: str,
        *,
        reason: str,
        who: str,
        now: float,
        next_hop: str | None = None,
        communities: Iterable[str] | None = None,
        large_communities: Iterable[str] | None = None,
    ) -> list[dict[str, Any]]:
        """An operator's diversion: kept until ``withdraw``, never withdrawn by itself."""
        prefix = _canonical(prefix)
        route = self.policy.manual_route(prefix, next_hop, communities, large_communities)
        r = DesiredRoute(route, 0, "manual", f"manual: {reason} ({who})", manual=True)
        request = _request(now, "divert", prefix, who, reason)
        with self.store.write() as tx:
            why = self.policy.check(prefix) if _is_prefix(prefix) else "not a prefix"
            if why is not None:
                events = [request, _refuse(now, prefix, why, who)]
                tx.add_events(events)
                return events
            tx.set_manual(Manual(r, who, reason, now))
            tx.unsuppress(prefix)
            tx.add_events([request])
            events = [request, *self._replan(now)]
            if any(e["type"] == "refuse" and e["prefix"] == prefix for e in events):
                tx.remove_manual(prefix)  # a refused request is not kept waiting
                self._replan(now)
        self._poke(events)
        return events

    def withdraw(self, prefix: str, *, reason: str, who: str, now: float) -> list[dict[str, Any]]:
        """An operator's withdraw: a manual diversion ends; an automatic one is suppressed
        while its prefix stays desired. Dampening does not hold it."""
        prefix = _canonical(prefix)
        request = _request(now, "withdraw", prefix, who, reason)
        with self.store.write() as tx:
            manual = tx.remove_manual(prefix)
            auto = prefix in {r.route.prefix for r in tx.desired()}
            if auto:
                tx.suppress(prefix, who, reason, now)
            tx.add_events([request])
            events = [request, *self._replan(now, force={prefix}, who=(prefix, who, reason))]
            if not manual and not auto and not any(e["type"] == "withdraw" for e in events):
                note = {**request, "type": "note", "reason": "nothing announced for it"}
                tx.add_events([note])
                events.append(note)
        self._poke(events)
        return events

    def decide(
        self, ident: int, *, approve: bool, who: str, reason: str, now: float
    ) -> list[dict[str, Any]]:
        """Approve (or reject) a pending automatic diversion."""
        with self.store.write() as tx:
            a = tx.approval(ident)
            if a is None or a.state != "pending":
                state = "unknown" if a is None else a.state
                raise LookupError(f"approval {ident}: {state}, not pending")
            tx.decide(ident, "approved" if approve else "rejected", now, who, reason)
            event = {
                "time": now,
                "type": "approved" if approve else "rejected",
                "prefix": a.prefix,
                "incident": a.incident,
                "id": ident,
                "who": who,
                "reason": reason,
            }
            tx.add_events([event])
            events = [event, *self._replan(now)]
        self._poke(events)
        return events

    # ------------------------------------------------------------------ planning
    def _replan(
        self, now: float, force: Collection[str] = (), who: tuple[str, str, str] | None = None
    ) -> list[dict[str, Any]]:
        tx, policy = self.store, self.policy
        auto = tx.desired()
        manual = tx.manual()
        events: list[dict[str, Any]] = []
        wanted = {r.route.prefix for r in auto}
        suppressed = tx.suppressed()
        for prefix in set(suppressed) - wanted:
            tx.unsuppress(prefix)  # the incident is over: the suppression ends with it
        planner = policy.planner()
        planner.restore(tx.planner_state(policy.dry))
        if policy.mode == "manual-approval":
            auto, events = self._approvals(auto, planner.announced, now)
        routes: dict[str, DesiredRoute] = {}
        for r in auto:
            if r.route.prefix not in suppressed:
                routes.setdefault(r.route.prefix, r)
        for prefix, m in manual.items():
            routes[prefix] = m.route
        changes = planner.plan(DesiredSet(now, tuple(routes.values())), force)
        tx.set_planner_state(policy.dry, planner.state())
        events += [self._event(c, manual) for c in changes]
        for e in events:
            if who is not None and e["prefix"] == who[0] and e["type"] == "withdraw":
                e["who"], e["reason"] = who[1], f"operator: {who[2]}"  # an operator's withdraw
        if not policy.dry:
            target = {p: (policy.render(r), r) for p, r in planner.announced.items()}
            tx.set_target(target, now)
        tx.add_events(events)
        return events

    def _approvals(
        self, auto: list[DesiredRoute], announced: dict[str, DesiredRoute], now: float
    ) -> tuple[list[DesiredRoute], list[dict[str, Any]]]:
        tx = self.store
        rows = {(a.prefix, a.incident): a for a in tx.approvals()}
        keys = {(r.route.prefix, r.incident) for r in auto}
        events: list[dict[str, Any]] = []
        allowed: list[DesiredRoute] = []
        for r in auto:
            key = (r.route.prefix, r.incident)
            a = rows.get(key)
            old = announced.get(r.route.prefix)
            if old is not None and not old.manual and old.incident == r.incident:
                allowed.append(r)  # announced before (approved, or before the mode)
            elif a is None:
                ident = tx.add_approval(r, now)
                events.append(
                    {
                        "time": now,
                        "type": "approval",
                        "prefix": r.route.prefix,
                        "incident": r.incident,
                        "vector": r.vector,
                        "id": ident,
                        "reason": f"waiting for `divertor divert approve {ident}`: {r.reason}",
                    }
                )
            elif a.state == "approved":
                allowed.append(r)
        for key, a in rows.items():
            if a.state == "pending" and key not in keys:
                tx.decide(a.id, "expired", now, None, "no longer in the desired set")
                events.append(
                    {
                        "time": now,
                        "type": "expired",
                        "prefix": a.prefix,
                        "incident": a.incident,
                        "id": a.id,
                        "reason": "no longer in the desired set before approval",
                    }
                )
        return allowed, events

    def _event(self, c: Change, manual: dict[str, Manual]) -> dict[str, Any]:
        e = c.as_dict()
        if self.policy.dry:
            e["dry_run"] = True
        m = manual.get(c.prefix)
        if m is not None and c.incident == 0:
            e["manual"] = True
            e["who"] = m.who
        return e

    def _poke(self, events: list[dict[str, Any]]) -> None:
        if not self.policy.dry and any(e["type"] in ("announce", "withdraw") for e in events):
            poke(self.socket_path)

    # ------------------------------------------------------------------ reading
    def status(self) -> dict[str, Any]:
        with self.store.read() as tx:
            return {
                "mode": self.policy.mode,
                "target": {
                    p: {"command": c, "since": s, "incident": r.incident, "manual": r.manual}
                    for p, (c, r, s) in sorted(tx.target_routes().items())
                },
                "announced": {p: c for p, (c, _) in sorted(tx.announced().items())},
                "manual": {
                    p: {"who": m.who, "reason": m.reason, "time": m.time}
                    for p, m in sorted(tx.manual().items())
                },
                "suppressed": {
                    p: {"who": w, "reason": r, "time": t}
                    for p, (w, r, t) in sorted(tx.suppressed().items())
                },
                "pending": [
                    {
                        "id": a.id,
                        "prefix": a.prefix,
                        "incident": a.incident,
                        "reason": a.route.reason,
                    }
                    for a in tx.approvals(("pending",))
                ],
                "bridge": tx.json_meta("bridge") or {},
                "dry_run_announced": sorted(
                    d["prefix"] for d in tx.planner_state(True).get("announced", [])
                ),
            }


def _canonical(prefix: str) -> str:
    try:
        return str(ipaddress.ip_network(prefix.strip(), strict=True))
    except ValueError:
        return prefix


def _is_prefix(prefix: str) -> bool:
    try:
        ipaddress.ip_network(prefix, strict=True)
    except ValueError:
        return False
    return "/" in prefix


def _request(now: float, action: str, prefix: str, who: str, reason: str) -> dict[str, Any]:
    return {
        "time": now,
        "type": "operator",
        "action": action,
        "prefix": prefix,
        "who": who,
        "reason": reason,
    }


def _refuse(now: float, prefix: str, why: str, who: str) -> dict[str, Any]:
    return {
        "time": now,
        "type": "refuse",
        "prefix": prefix,
        "incident": 0,
        "vector": "manual",
        "reason": why,
        "manual": True,
        "who": who,
    }
