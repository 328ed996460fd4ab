"""Incidents: a state machine per protected prefix, and the DesiredSet it produces.

normal -> suspected (over, for less than the trigger time) -> diverted -> cooling down
(withdrawn, watching) -> closed. The blind spot (DESIGN.md): once diverted, local flows show
only the clean traffic that comes back, so a diversion is held for a minimum time, then
withdrawn once the prefix looks quiet; an attack that is back while cooling down is
diverted again at once and held longer each time (min_divert x backoff^n, exponential
dampening), n going back to 0 after ``dampening_reset`` of quiet. Sans-I/O: time is the
verdicts' event time.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field, fields
from typing import Any

from detector.contracts import (
    DesiredRoute,
    DesiredSet,
    IncidentEvent,
    Route,
    State,
    Status,
    Verdict,
)
from thresholds.model import PrefixPolicy, ThresholdSet


@dataclass(slots=True)
class Track:
    """The incident state of one prefix."""

    state: State = State.NORMAL
    incident: int = 0
    since: float = 0.0  # time the current state was entered
    diverted_at: float = 0.0
    hold: float = 0.0  # minimum hold of the current diversion (dampened)
    under_since: float | None = None
    level: int = 0  # dampening level: re-diversions in the current period
    last_withdraw: float | None = None
    vector: str | None = None
    reason: str = ""
    subnets: set[str] = field(default_factory=set)
    would_divert: bool = False  # monitor mode: reported once per incident


class IncidentManager:
    def __init__(self, ts: ThresholdSet) -> None:
        self.ts = ts
        self.tracks: dict[str, Track] = {str(p.prefix): Track() for p in ts.policies}
        self.policies: dict[str, PrefixPolicy] = {str(p.prefix): p for p in ts.policies}
        self.next_incident = 1

    def retarget(self, ts: ThresholdSet) -> list[str]:
        """Take a reloaded thresholds file: prefixes still there keep their state (a
        diverted prefix stays diverted), new ones start normal. Returns the prefixes
        dropped, with the state they were in."""
        old = self.tracks
        self.ts = ts
        self.policies = {str(p.prefix): p for p in ts.policies}
        self.tracks = {prefix: old.get(prefix, Track()) for prefix in self.policies}
        return [f"{p} ({t.state.value})" for p, t in old.items() if p not in self.tracks]

    def snapshot(self) -> dict[str, Any]:
        """The state of every prefix not at rest, as JSON-able data (``restore`` reads it)."""
        tracks = {}
        for prefix, t in self.tracks.items():
            if t.state in (State.NORMAL, State.CLOSED):
                continue
            d = {f.name: getattr(t, f.name) for f in fields(Track)}
            d["state"], d["subnets"] = t.state.value, sorted(t.subnets)
            tracks[prefix] = d
        return {"next_incident": self.next_incident, "tracks": tracks}

    def restore(self, snap: dict[str, Any]) -> list[str]:
        """Take back a ``snapshot`` (after a restart): the prefixes it knows that are still
        protected resume where they were; returns them."""
        self.next_incident = max(self.next_incident, int(snap.get("next_incident", 1)))
        restored = []
        for prefix, d in snap.get("tracks", {}).items():
            if prefix not in self.tracks:
                continue
            t = Track(**{**d, "state": State(d["state"]), "subnets": set(d["subnets"])})
            self.tracks[prefix] = t
            restored.append(prefix)
        return restored

    def update(self, verdicts: list[Verdict], now: float) -> list[IncidentEvent]:
        events: list[IncidentEvent] = []
        for v in verdicts:
            track = self.tracks.get(v.prefix)
            policy = self.policies.get(v.prefix)
            if track is not None and policy is not None:
                self._step(track, policy, v, now, events)
        return events

    # ------------------------------------------------------------------ transitions
    def _move(
        self, t: Track, prefix: str, new: State, now: float, reason: str, ev: list[IncidentEvent]
    ) -> None:
        ev.append(IncidentEvent(now, t.incident, prefix, t.state, new, reason, t.vector))
        t.state, t.since = new, now

    def _step(
        self, t: Track, p: PrefixPolicy, v: Verdict, now: float, ev: list[IncidentEvent]
    ) -> None:
        timing = p.timing
        prefix = str(p.prefix)
        over = v.status is Status.OVER
        if t.state in (State.NORMAL, State.CLOSED):
            if not over:
                return
            t.incident, self.next_incident = self.next_incident, self.next_incident + 1
            t.vector, t.subnets, t.would_divert = v.vector, set(), False
            self._move(t, prefix, State.SUSPECTED, now, f"{v.rule}: {_fmt(v)}", ev)
        if t.state is State.SUSPECTED:
            if not over:
                why = (
                    "cleared (monitor mode: not diverted)"
                    if t.would_divert
                    else "cleared before the trigger time"
                )
                self._move(t, prefix, State.CLOSED, now, why, ev)
                return
            t.vector = v.vector
            if v.over_seconds < timing.trigger:
                return
            if v.monitor:
                if not t.would_divert:
                    t.would_divert = True
                    ev.append(
                        IncidentEvent(
                            now,
                            t.incident,
                            prefix,
                            t.state,
                            t.state,
                            f"monitor mode, would divert: {v.rule}",
                            t.vector,
                        )
                    )
                return
            quiet = t.last_withdraw is None or now - t.last_withdraw >= timing.dampening_reset
            t.level = 0 if quiet else t.level + 1
            self._divert(
                t,
                p,
                v,
                now,
                f"over for {v.over_seconds:g}s >= trigger {timing.trigger:g}s: {v.rule}: {_fmt(v)}",
                ev,
            )
            return
        if t.state is State.DIVERTED:
            if v.recent:
                t.subnets.update(v.subnets)
            if not v.under:
                t.under_since = None
            elif t.under_since is None:  # not `or`: event time 0.0 is a time
                t.under_since = now
            held = now - t.diverted_at
            if (
                held >= t.hold
                and t.under_since is not None
                and now - t.under_since >= timing.hold_down
            ):
                t.last_withdraw = now
                self._move(
                    t,
                    prefix,
                    State.COOLING_DOWN,
                    now,
                    f"held {held:g}s (minimum {t.hold:g}s), under the clear level for "
                    f"{now - t.under_since:g}s (hold-down {timing.hold_down:g}s)",
                    ev,
                )
            return
        if t.state is State.COOLING_DOWN:
            if over and v.recent and not v.monitor:
                t.level += 1
                self._divert(
                    t,
                    p,
                    v,
                    now,
                    f"attack back {now - t.since:g}s after the withdraw: {v.rule}: {_fmt(v)}",
                    ev,
                )
            elif now - t.since >= timing.watch:
                self._move(
                    t,
                    prefix,
                    State.CLOSED,
                    now,
                    f"quiet for {timing.watch:g}s after the withdraw",
                    ev,
                )

    def _divert(
        self,
        t: Track,
        p: PrefixPolicy,
        v: Verdict,
        now: float,
        reason: str,
        ev: list[IncidentEvent],
    ) -> None:
        timing = p.timing
        t.hold = min(
            timing.min_divert * timing.backoff**t.level,
            max(timing.max_divert_hold, timing.min_divert),
        )
        t.diverted_at, t.under_since, t.vector = now, None, v.vector
        t.subnets.update(v.subnets)
        damp = f" (dampening level {t.level}, hold {t.hold:g}s)" if t.level else ""
        t.reason = reason + damp
        self._move(t, str(p.prefix), State.DIVERTED, now, t.reason, ev)

    # ------------------------------------------------------------------ output
    def desired(self, now: float) -> DesiredSet:
        routes: list[DesiredRoute] = []
        for prefix, t in self.tracks.items():
            if t.state is not State.DIVERTED:
                continue
            p = self.policies[prefix]
            ann = p.announce
            if ann.mode == "list":
                targets = list(ann.prefixes)
            elif ann.mode == "subnets" and t.subnets:
                targets = sorted(t.subnets, key=lambda s: ipaddress.ip_network(s))
            else:
                targets = [prefix]
            for target in targets:
                route = Route(target, ann.next_hop, ann.communities, ann.large_communities)
                routes.append(DesiredRoute(route, t.incident, t.vector, t.reason))
        return DesiredSet(now, tuple(routes))


def _fmt(v: Verdict) -> str:
    where = f" on {v.host}" if v.host else ""
    return f"{v.value:,.0f} against {v.threshold:,.0f}{where}"
