"""The allowlist in detection: unlisted classes, the allowlisted share, scenario replays.

A synthetic SIP flood goes through the whole pipeline (NetFlow v5 datagrams, decoder,
rates, verdicts, incidents, planner) with an allowlist; then the labelled scenarios are
replayed with their feeds (`divertor replay --allowlist-feed`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import thresholds
from allowlist import addr
from allowlist.index import MembershipIndex
from detector.classify import Membership
from detector.rates import PPS
from divertor.config import Config
from divertor.pipeline import Pipeline, Timeline
from divertor.replay_cmd import replay
from tests.builders import batch, v5, v5_record
from thresholds.model import CLASSES

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = ROOT.parent / "shared" / "testdata" / "scenarios"
T0 = 1_700_000_000
SBC = "198.18.10.0/24"

THRESHOLDS = """
version: 1
defaults:
  average: 5s
  announce: {next_hop: 192.0.2.254}
prefixes:
  198.18.10.0/24:
    thresholds:
      sip: {pps: 80k}
      udp: {pps: 80k}
      unlisted_sip: {pps: 6k}
      unlisted_udp: {pps: 20k}
"""
REGISTERED = [f"198.51.100.{i}" for i in range(1, 31)]
UNREGISTERED = [f"203.0.113.{i}" for i in range(1, 31)]


def sip_records(sources: list[str], packets: int, second: int) -> list[bytes]:
    """One v5 record per source to the SBC's SIP port, describing ``second``; the header
    (uptime 100 s at T0 + second + 1) puts first/last at +0.1 s and +0.4 s of it."""
    return [
        v5_record(
            src,
            "198.18.10.5",
            proto=17,
            sport=5060,
            dport=5060,
            packets=packets,
            octets=packets * 600,
            first=99_100,
            last=99_400,
            tcp_flags=0,
        )
        for src in sources
    ]


def run(
    membership: Membership | None, flood_from: list[str], seconds: int = 150
) -> tuple[Pipeline, list[dict[str, Any]]]:
    """2k pps of SIP from registered endpoints all along; from second 60 to 120, a flood of
    15k pps (30 sources x 500) from ``flood_from``."""
    p = Pipeline(Config(thresholds="x"), thresholds.loads(THRESHOLDS), membership)
    out = Timeline()
    for s in range(seconds):
        recs = sip_records(REGISTERED[:10], 200, s)
        if 60 <= s < 120:
            recs += sip_records(flood_from, 500, s)
        grams = [v5(*recs[i : i + 30], secs=T0 + s + 1) for i in range(0, len(recs), 30)]
        p.feed(batch(*grams, arrival=T0 + s + 1.0), out)
    p.tick(T0 + seconds + 1.0, out)
    return p, out.lines


def allowlist(ips: list[str]) -> MembershipIndex:
    index = MembershipIndex()
    for ip in ips:
        index.add(addr.parse(ip))
    return index


def kinds(lines: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [x for x in lines if x["type"] == kind]


def test_sip_flood_from_unregistered_sources_trips_unlisted_sip() -> None:
    p, lines = run(allowlist(REGISTERED), UNREGISTERED)
    (announce,) = kinds(lines, "announce")
    assert announce["prefix"] == SBC and announce["vector"] == "sip_flood"
    assert "prefix unlisted_sip.pps > 6k" in announce["reason"]
    assert T0 + 60 + 10 <= announce["time"] <= T0 + 60 + 16  # trigger 10 s (+ the average)
    incidents = kinds(lines, "incident")
    assert [e["to"] for e in incidents][:2] == ["suspected", "diverted"]
    share = incidents[1]["allowlisted_share"]
    # before: only registered SIP; during: 2k registered of 17k pps
    assert share["before"]["sip"] == 1.0 and share["before"]["udp"] == 1.0
    assert share["during"]["sip"] == pytest.approx(2 / 17, abs=0.05)
    assert share["since"] <= T0 + 60
    assert p.records > 0


def test_the_same_flood_from_allowlisted_sources_does_not() -> None:
    _, lines = run(allowlist(REGISTERED + UNREGISTERED), UNREGISTERED)
    assert kinds(lines, "announce") == [] and kinds(lines, "incident") == []


def test_prefixes_on_the_allowlist_count_too() -> None:
    _, lines = run(allowlist([*REGISTERED[:10], "203.0.113.0/27"]), UNREGISTERED)
    assert kinds(lines, "incident") == []  # 203.0.113.1-30 are inside the /27


def test_without_an_allowlist_the_unlisted_classes_stay_zero() -> None:
    frames: list[np.ndarray] = []
    p = Pipeline(Config(thresholds="x"), thresholds.loads(THRESHOLDS))
    orig: Callable[..., Any] = p.keeper.advance

    def spy(now: float) -> Any:
        out = orig(now)
        frames.extend(f.values for f in out)
        return out

    p.keeper.advance = spy  # type: ignore[method-assign]
    out = Timeline()
    for s in range(130):
        recs = sip_records(UNREGISTERED, 500, s)
        p.feed(batch(v5(*recs, secs=T0 + s + 1), arrival=T0 + s + 1.0), out)
    p.tick(T0 + 131.0, out)
    values = np.stack(frames)
    sip = values[:, 0, CLASSES.index("sip"), PPS]
    assert sip.max() == pytest.approx(15000)  # the flood is counted as SIP ...
    for cls in ("unlisted_udp", "unlisted_sip", "unlisted_rtp"):
        assert not values[:, :, CLASSES.index(cls)].any()  # ... but never as unlisted
    assert kinds(out.lines, "incident") == []
    assert p.shares is None


# --------------------------------------------------------------------------- scenarios
needs_scenarios = pytest.mark.skipif(
    not SCENARIOS.is_dir(), reason="shared/testdata not beside the repo"
)


def _replay(name: str, feed: Path | None) -> list[dict[str, Any]]:
    lines, _ = replay(
        str(SCENARIOS / name / "flows.pcap"),
        str(ROOT / "examples" / "scenarios" / name / "divertor.yaml"),
        drain=120.0,
        allowlist_feed=str(feed) if feed else None,
    )
    return lines


@needs_scenarios
def test_registration_storm_of_allowlisted_clients_is_not_diverted(tmp_path: Path) -> None:
    ts = thresholds.load(str(ROOT / "examples" / "scenarios" / "voip-site.thresholds.yaml"))
    policy = ts.policy(SBC)
    assert policy is not None and policy.thresholds["unlisted_sip"].pps == 6000
    lines = _replay("flash-crowd", SCENARIOS / "flash-crowd" / "allowlist.jsonl")
    assert kinds(lines, "announce") == [] and kinds(lines, "incident") == []
    assert not any("unlisted" in (v["rule"] or "") for v in kinds(lines, "verdict"))
    # the same storm with nobody registered: it is all unlisted SIP, and is diverted
    empty = tmp_path / "nobody.jsonl"
    empty.write_text("")
    lines = _replay("flash-crowd", empty)
    (announce,) = kinds(lines, "announce")
    labels = json.loads((SCENARIOS / "flash-crowd" / "labels.json").read_text())
    (storm,) = labels["events"]
    assert "unlisted_sip" in announce["reason"] and announce["vector"] == "sip_flood"
    assert storm["start"] <= announce["time"] <= storm["end"]


@needs_scenarios
def test_udp_flood_incident_shows_the_allowlisted_share() -> None:
    lines = _replay("udp-flood", SCENARIOS / "udp-flood" / "allowlist.jsonl")
    labels = json.loads((SCENARIOS / "udp-flood" / "labels.json").read_text())
    (attack,) = labels["events"]
    (announce,) = kinds(lines, "announce")
    assert announce["prefix"] == SBC and attack["start"] <= announce["time"] <= attack["end"]
    events = kinds(lines, "incident")
    assert events and all("allowlisted_share" in e for e in events)
    for e in events:
        share = e["allowlisted_share"]
        assert share["before"]["udp"] > 0.7  # SIP and RTP of registered endpoints
        assert share["during"]["udp"] < 0.3  # a spoofed flood: not registered
        if e["to"] != "suspected":  # the attack's first seconds are behind
            assert share["during"]["udp"] < 0.1
        assert share["before"]["sip"] > 0.8 and share["during"]["sip"] > 0.8
        assert attack["start"] - 10 <= share["since"] <= attack["start"] + 10
