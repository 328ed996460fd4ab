"""The incident state machine on synthetic traffic, through the whole pipeline.

A small "world" steps event time second by second: at second s the pipeline evaluates the
boundary s (seeing bins up to s-1), then the records of bin s arrive. While a prefix is
announced (diverted), the attack no longer reaches the local routers: its records are not
fed (the blind spot of DESIGN.md). With ``average: 1s``, an attack on bins a .. b-1 is over
for exactly b - a seconds, so every expected time below is computed by hand:

* over for ``trigger`` (10 s) on bins 10..19 -> diverted at the evaluation of 20;
* "under" needs ``under_window`` quiet bins: last over bin L -> under from L + 1 + under;
* withdraw at max(diverted + hold, under_since + hold_down);
* NORMAL (and "cleared") once no over bin is left in the horizon: L + 1 + horizon.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import pytest

import thresholds
from collector.flowbatch import FlowBatch, pair_to_str
from detector.contracts import (
    DesiredSet,
    Route,
    State,
    Status,
    Verdict,
)
from detector.incidents import IncidentManager
from divertor.config import CleanReturn, Config, DetectorConfig
from divertor.pipeline import Pipeline, Timeline
from tests.test_detector import T0, in_bin

DIVERT, COOL, SUSP, CLOSED = "diverted", "cooling_down", "suspected", "closed"

DEFAULT_TIMING = """
version: 1
defaults:
  average: 1s
  announce: {next_hop: 192.0.2.254, communities: ["65000:666"]}
prefixes:
  198.18.10.0/24:
    thresholds: {udp: {pps: 1k}}
"""

# short timings (and detector windows) for the long sequences
SHORT = """
version: 1
defaults:
  average: 1s
  timing:
    {trigger: 10s, hold_down: 10s, min_divert: 30s, backoff: 2, watch: 60s, dampening_reset: 300s}
  announce: {next_hop: 192.0.2.254, communities: ["65000:666"]}
prefixes:
  198.18.10.0/24:
    thresholds: {udp: {pps: 1k}}
"""
SHORT_DETECTOR = {"window": 40.0, "horizon": 20.0, "under_window": 10.0}

Attack = Callable[[int], list[FlowBatch]]


class World:
    def __init__(
        self,
        text: str,
        *,
        hide: bool = True,
        detector: dict[str, float] | None = None,
        clean_return: list[CleanReturn] | None = None,
    ) -> None:
        self.ts = thresholds.loads(text)
        cfg = Config(
            thresholds="x",
            detector=DetectorConfig(**(detector or {})),
            clean_return=clean_return or [],
        )
        self.p = Pipeline(cfg, self.ts)
        self.out = Timeline()
        self.hide = hide
        self.r = 0  # the next second to run, relative to T0
        self.desired: dict[int, DesiredSet] = {}

    def announced(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        return [ipaddress.ip_network(p) for p in self.p.planner.announced]

    def visible(self, b: FlowBatch) -> bool:
        if not self.hide:
            return True
        dst = ipaddress.ip_address(pair_to_str(b.dst_hi[0], b.dst_lo[0]))
        return not any(dst in net for net in self.announced())

    def run(self, until: int, attack: Attack | None = None, always: Attack | None = None) -> None:
        """Run seconds self.r .. until-1; ``attack`` is hidden while diverted, ``always`` is
        not (clean return, legitimate traffic)."""
        while self.r < until:
            r = self.r
            self.p.tick(T0 + r + 0.5, self.out)
            self.desired[r] = self.p.incidents.desired(T0 + r)
            for b in attack(r) if attack else []:
                if self.visible(b):
                    self.p.keeper.ingest(b)
            for b in always(r) if always else []:
                self.p.keeper.ingest(b)
            self.r += 1

    def lines(self, kind: str) -> list[dict[str, Any]]:
        return [x for x in self.out.lines if x["type"] == kind]

    def events(self) -> list[tuple[int, str, str]]:
        """(relative time, from, to) of every incident transition; each has a reason."""
        out = []
        for e in self.lines("incident"):
            assert e["reason"], e
            out.append((round(e["time"] - T0), e["from"], e["to"]))
        return out

    def changes(self) -> list[tuple[int, str, str]]:
        return [
            (round(c["time"] - T0), c["type"], c["prefix"])
            for c in self.out.lines
            if c["type"] in ("announce", "withdraw", "refuse")
        ]

    def reasons(self, to: str) -> list[str]:
        return [e["reason"] for e in self.lines("incident") if e["to"] == to]


def between(a: int, b: int, pps: int = 2000, dst: str = "198.18.10.7") -> Attack:
    return lambda r: [in_bin(dst, T0 + r, packets=pps)] if a <= r < b else []


P = "198.18.10.0/24"


# --------------------------------------------------------------------------- trigger
def test_over_for_trigger_minus_one_is_suspected_then_closed() -> None:
    w = World(DEFAULT_TIMING)
    w.run(120, between(10, 19))  # bins 10..18: 9 seconds over
    assert w.events() == [(11, "normal", SUSP), (19 + 64, SUSP, CLOSED)]
    assert w.reasons(CLOSED) == ["cleared before the trigger time"]
    assert w.changes() == []
    assert all(not d.routes for d in w.desired.values())


def test_over_for_exactly_trigger_diverts() -> None:
    w = World(DEFAULT_TIMING)
    w.run(21, between(10, 20))  # bins 10..19: 10 seconds over
    assert w.events() == [(11, "normal", SUSP), (20, SUSP, DIVERT)]
    assert w.changes() == [(20, "announce", P)]
    reason = w.reasons(DIVERT)[0]
    assert "over for 10s >= trigger 10s" in reason
    assert "prefix udp.pps > 1k" in reason
    assert "2,000 against 1,000" in reason


def test_min_divert_is_held_even_if_the_attack_stops_at_once() -> None:
    w = World(DEFAULT_TIMING)
    w.run(1000, between(10, 20))  # stops the very second it is diverted
    # under from 20 + 45 = 65; held 300 s -> withdraw at 320 (not at 65 + 60 = 125)
    assert w.events() == [
        (11, "normal", SUSP),
        (20, SUSP, DIVERT),
        (320, DIVERT, COOL),
        (320 + 600, COOL, CLOSED),
    ]
    assert w.changes() == [(20, "announce", P), (320, "withdraw", P)]
    assert "held 300s (minimum 300s)" in w.reasons(COOL)[0]
    assert "quiet for 600s" in w.reasons(CLOSED)[0]
    # desired from the evaluation of 20 up to (not including) the withdraw at 320
    assert [r for r, d in w.desired.items() if d.prefixes() == {P}] == list(range(20, 320))


def test_hold_down_is_respected() -> None:
    w = World(
        SHORT.replace("hold_down: 10s", "hold_down: 25s"), hide=False, detector=SHORT_DETECTOR
    )
    # the attack stays visible (no scrubbing effect): over 10..49, then 850 pps (above the
    # 80% clear level, below the threshold) to 79; min_divert (30 s) is long past
    w.run(
        150,
        lambda r: (
            [in_bin("198.18.10.7", T0 + r, packets=2000 if r < 50 else 850)] if 10 <= r < 80 else []
        ),
    )
    # last bin above the clear level 79 -> under from 90 -> withdraw at 90 + 25 = 115
    assert w.events()[:3] == [(11, "normal", SUSP), (20, SUSP, DIVERT), (115, DIVERT, COOL)]
    assert "hold-down 25s" in w.reasons(COOL)[0]
    assert "under the clear level for 25s" in w.reasons(COOL)[0]
    assert "held 95s (minimum 30s)" in w.reasons(COOL)[0]


def test_clean_return_does_not_keep_the_diversion_nor_start_one() -> None:
    tunnel = CleanReturn(exporter="192.0.2.9", interface=77)

    def returned(r: int) -> list[FlowBatch]:  # clean traffic back over the tunnel, from 20
        if r < 20:
            return []
        return [in_bin("198.18.10.7", T0 + r, packets=5000, exporter="192.0.2.9", input_if=77)]

    w = World(SHORT, clean_return=[tunnel], detector=SHORT_DETECTOR)
    w.run(150, between(10, 20), returned)  # attack 10..19, then hidden
    # quiet as if nothing came back: under from 30, withdraw at max(20 + 30, 30 + 10) = 50;
    # 5000 pps of returned traffic after the withdraw is no new attack either
    assert w.events() == [
        (11, "normal", SUSP),
        (20, SUSP, DIVERT),
        (50, DIVERT, COOL),
        (110, COOL, CLOSED),
    ]
    assert w.p.keeper.stats.clean_return == 130
    # the same returned traffic on an interface not declared would look like the attack
    w2 = World(SHORT, detector=SHORT_DETECTOR)
    w2.run(150, between(10, 20), returned)
    assert w2.events() == [(11, "normal", SUSP), (20, SUSP, DIVERT)]


# --------------------------------------------------------------------------- blind spot
def test_attack_back_within_watch_rediverts_at_once_with_dampening() -> None:
    w = World(DEFAULT_TIMING)
    w.run(1000, between(10, 10_000))  # the attacker never stops
    # divert 20 (hold 300) -> withdraw 320; bin 320 is seen -> re-divert 321 (hold 600);
    # last seen bin 320 -> under from 366 -> withdraw at 321 + 600 = 921 -> re-divert 922
    assert w.events() == [
        (11, "normal", SUSP),
        (20, SUSP, DIVERT),
        (320, DIVERT, COOL),
        (321, COOL, DIVERT),
        (921, DIVERT, COOL),
        (922, COOL, DIVERT),
    ]
    first, second, third = w.reasons(DIVERT)
    assert "dampening" not in first
    assert "attack back 1s after the withdraw" in second
    assert "(dampening level 1, hold 600s)" in second
    assert "(dampening level 2, hold 1200s)" in third
    assert w.p.incidents.tracks[P].hold == 1200
    assert len({e["incident"] for e in w.lines("incident")}) == 1
    assert w.changes() == [
        (20, "announce", P),
        (320, "withdraw", P),
        (321, "announce", P),
        (921, "withdraw", P),
        (922, "announce", P),
    ]


def test_dampening_levels_cap_and_reset() -> None:
    w = World(
        SHORT.replace("dampening_reset: 300s", "dampening_reset: 300s, max_divert_hold: 100s"),
        detector=SHORT_DETECTOR,
    )
    # attack A from 10 until 60 (hidden while diverted)
    w.run(200, between(10, 60))
    # divert 20 (hold 30) -> under from 20 + 10 = 30 -> withdraw max(50, 40) = 50;
    # bin 50 seen -> re-divert 51 (hold 60) -> under from 61 -> withdraw max(111, 71) = 111;
    # nothing comes back: closed at 111 + 60 = 171
    assert w.events() == [
        (11, "normal", SUSP),
        (20, SUSP, DIVERT),
        (50, DIVERT, COOL),
        (51, COOL, DIVERT),
        (111, DIVERT, COOL),
        (171, COOL, CLOSED),
    ]
    # attack B at 200, 89 s after the last withdraw (< dampening_reset): a new incident,
    # diverted after the trigger at level 2, hold min(30 x 4, 100) = 100
    w.run(400, between(200, 215))
    assert w.events()[6:] == [
        (201, CLOSED, SUSP),
        (210, SUSP, DIVERT),
        (310, DIVERT, COOL),  # under from 220, held 100 s
        (370, COOL, CLOSED),
    ]
    assert "(dampening level 2, hold 100s)" in w.reasons(DIVERT)[2]
    # attack C at 700: quiet for 390 s >= dampening_reset -> level 0, hold 30 again
    w.run(800, between(700, 715))
    assert w.events()[10:] == [
        (701, CLOSED, SUSP),
        (710, SUSP, DIVERT),
        (740, DIVERT, COOL),  # under from 720, held 30 s
    ]
    assert "dampening" not in w.reasons(DIVERT)[3]
    assert w.p.incidents.tracks[P].hold == 30
    assert len({e["incident"] for e in w.lines("incident")}) == 3


def test_attack_back_after_watch_waits_for_the_trigger_again() -> None:
    w = World(SHORT, detector=SHORT_DETECTOR)
    w.run(200, lambda r: between(10, 20)(r) + between(150, 170)(r))
    # first: divert 20, withdraw 50, closed 110; second attack at 150: suspected at 151,
    # diverted only after 10 s of it (160), dampening level 1 (100 s < reset)
    assert w.events() == [
        (11, "normal", SUSP),
        (20, SUSP, DIVERT),
        (50, DIVERT, COOL),
        (110, COOL, CLOSED),
        (151, CLOSED, SUSP),
        (160, SUSP, DIVERT),
    ]
    assert "(dampening level 1, hold 60s)" in w.reasons(DIVERT)[1]


@pytest.mark.parametrize("hide", [True, False])
def test_pulse_attack_gives_one_diversion(hide: bool) -> None:
    # 20 s on, 20 s off, for 5 minutes (bins 10 .. 309)
    def pulse(r: int) -> list[FlowBatch]:
        on = 10 <= r < 310 and (r - 10) % 40 < 20
        return [in_bin("198.18.10.7", T0 + r, packets=3000)] if on else []

    w = World(
        DEFAULT_TIMING.replace("average: 1s", "average: 1s\n  timing: {watch: 2m}"), hide=hide
    )
    w.run(560, pulse)
    # hidden: withdraw when held 300 s (320); visible: last pulse bin 309 -> under from
    # 355 -> withdraw at 415
    end = 320 if hide else 415
    assert w.events() == [
        (11, "normal", SUSP),
        (20, SUSP, DIVERT),
        (end, DIVERT, COOL),
        (end + 120, COOL, CLOSED),
    ]
    assert w.changes() == [(20, "announce", P), (end, "withdraw", P)]


# --------------------------------------------------------------------------- monitor
def test_monitor_mode_never_diverts_and_says_would_divert_once() -> None:
    text = DEFAULT_TIMING.replace("    thresholds:", "    mode: monitor\n    thresholds:")
    w = World(text)
    w.run(200, between(10, 60))
    # suspected at 11, "would divert" once at 20, cleared 64 s after the last over bin (59)
    assert w.events() == [
        (11, "normal", SUSP),
        (20, SUSP, SUSP),
        (124, SUSP, CLOSED),
    ]
    assert w.reasons(SUSP)[1] == "monitor mode, would divert: prefix udp.pps > 1k"
    assert "before the trigger time" not in w.reasons(CLOSED)[0]
    assert w.changes() == []
    assert all(not d.routes for d in w.desired.values())
    assert all(v["monitor"] for v in w.lines("verdict"))


# --------------------------------------------------------------------------- desired set
def test_desired_set_prefix_mode_with_attributes() -> None:
    text = """
version: 1
defaults:
  average: 1s
  announce:
    next_hop: {ipv4: 192.0.2.254, ipv6: "2001:db8::254"}
    communities: ["65000:666", "65000:667"]
    large_communities: ["65000:1:2"]
prefixes:
  198.18.10.0/24:
    thresholds: {udp: {pps: 1k}}
  2001:db8:a00::/48:
    thresholds: {udp: {pps: 1k}}
"""
    w = World(text)
    w.run(
        30,
        lambda r: between(10, 30)(r) + between(12, 30, dst="2001:db8:a00::99")(r),
    )
    assert w.events() == [
        (11, "normal", SUSP),
        (13, "normal", SUSP),
        (20, SUSP, DIVERT),
        (22, SUSP, DIVERT),
    ]
    d = w.p.incidents.desired(T0 + 29)
    routes = sorted(r.route for r in d.routes)
    comms = ("65000:666", "65000:667")
    assert routes == [
        Route("198.18.10.0/24", "192.0.2.254", comms, ("65000:1:2",)),
        Route("2001:db8:a00::/48", "2001:db8::254", comms, ("65000:1:2",)),
    ]
    by_prefix = {r.route.prefix: r for r in d.routes}
    assert by_prefix["198.18.10.0/24"].vector == "udp_flood"
    assert by_prefix["198.18.10.0/24"].incident != by_prefix["2001:db8:a00::/48"].incident
    assert all(r.reason and not r.manual for r in d.routes)
    announces = {a["prefix"]: a["route"] for a in w.lines("announce")}
    assert announces["2001:db8:a00::/48"] == {
        "next_hop": "2001:db8::254",
        "communities": list(comms),
        "large_communities": ["65000:1:2"],
    }


SUBNETS = """
version: 1
defaults:
  average: 1s
  announce: {next_hop: 192.0.2.254, communities: ["65000:666"]}
prefixes:
  198.18.64.0/22:
    thresholds: {udp: {pps: 1k}}
    announce: {mode: subnets}
"""


def test_desired_set_subnets_mode_grows_with_the_attack() -> None:
    w = World(SUBNETS)
    # the attack hits 198.18.65.0/24, then (from 30) also 198.18.67.0/24, which is not
    # diverted and so still seen
    w.run(
        80,
        lambda r: between(10, 400, dst="198.18.65.3")(r) + between(30, 400, dst="198.18.67.3")(r),
    )
    assert w.desired[25].prefixes() == {"198.18.65.0/24"}
    assert w.desired[79].prefixes() == {"198.18.65.0/24", "198.18.67.0/24"}
    routes = {r.route for r in w.desired[79].routes}
    assert routes == {
        Route("198.18.65.0/24", "192.0.2.254", ("65000:666",)),
        Route("198.18.67.0/24", "192.0.2.254", ("65000:666",)),
    }
    announced = [c for c in w.changes() if c[1] == "announce"]
    assert announced[0] == (20, "announce", "198.18.65.0/24")
    assert [c[2] for c in announced] == ["198.18.65.0/24", "198.18.67.0/24"]
    # the /22 itself is never announced
    assert "198.18.64.0/22" not in {c[2] for c in w.changes()}


def test_desired_set_list_mode() -> None:
    text = SUBNETS.replace(
        "announce: {mode: subnets}",
        "announce: {mode: list, prefixes: [198.18.64.0/24, 198.18.66.0/23], "
        'communities: ["65000:999"]}',
    )
    w = World(text)
    w.run(30, between(10, 400, dst="198.18.65.3"))
    assert sorted(r.route for r in w.desired[29].routes) == [
        Route("198.18.64.0/24", "192.0.2.254", ("65000:999",)),
        Route("198.18.66.0/23", "192.0.2.254", ("65000:999",)),
    ]
    assert sorted(c for c in w.changes()) == [
        (20, "announce", "198.18.64.0/24"),
        (20, "announce", "198.18.66.0/23"),
    ]


# --------------------------------------------------------------------------- state machine alone
def verdict(t: float, over: bool, *, run: float = 0.0, under: bool = False) -> Verdict:
    return Verdict(
        time=t,
        prefix=P,
        status=Status.OVER if over else Status.NORMAL,
        over_seconds=run,
        under=under,
        recent=over,
        vector="udp_flood" if over else None,
        rule="prefix udp.pps > 1k" if over else None,
        value=2000.0,
        threshold=1000.0,
    )


def test_state_machine_at_event_time_zero() -> None:
    # Sans-I/O: event time is whatever the data says, 0 included (a synthetic replay)
    m = IncidentManager(thresholds.loads(SHORT))
    events = m.update([verdict(-30, True, run=10)], -30)
    assert [(e.old, e.new) for e in events] == [
        (State.NORMAL, State.SUSPECTED),
        (State.SUSPECTED, State.DIVERTED),
    ]
    withdrawn = None
    for t in range(-29, 60):
        # quiet (under) from event time 0 on: withdraw at max(-30 + 30, 0 + 10) = 10
        for e in m.update([verdict(t, False, under=t >= 0)], t):
            if e.new is State.COOLING_DOWN:
                withdrawn = t
    assert withdrawn == 10
