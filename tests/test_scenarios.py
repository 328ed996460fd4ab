"""Replays of the labelled scenarios (shared/testdata/scenarios) with the shipped configs.

labels.json says what a competent engine does: every attack with expect_divert is diverted
to its expected more-specifics while it lasts and withdrawn after it ends; no look-alike is
diverted. The configs in examples/scenarios were written from the prefixes' normal levels.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from divertor.replay_cmd import replay
from tests import shared

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = shared.SCENARIOS
NAMES = ["udp-flood", "dns-amplification", "flash-crowd", "carpet-bombing"]
#: detection may wait for the flow cache to export (labels: max_export_delay_s) and for the
#: trigger time (10 s) and the averaging window (5 s)
DETECTION_SLACK = 15.0
#: a withdraw comes after the minimum diversion (5 min) and the hold-down; after a short
#: attack it is min_divert after the announce
WITHDRAW_WITHIN = 600.0
DRAIN = 900.0  # keep the clock running after the capture so that every diversion ends

pytestmark = pytest.mark.skipif(
    not SCENARIOS.is_dir(), reason="shared/testdata not beside the repo"
)


@pytest.fixture(scope="module", params=NAMES)
def run(request: pytest.FixtureRequest) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    name = request.param
    labels = json.loads((SCENARIOS / name / "labels.json").read_text())
    lines, _ = replay(
        str(SCENARIOS / name / "flows.pcap"),
        str(ROOT / "examples" / "scenarios" / name / "divertor.yaml"),
        drain=DRAIN,
    )
    return labels, lines


def _changes(lines: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [line for line in lines if line["type"] == kind]


def test_attacks_are_diverted_while_they_last(
    run: tuple[dict[str, Any], list[dict[str, Any]]],
) -> None:
    labels, lines = run
    announces, withdraws = _changes(lines, "announce"), _changes(lines, "withdraw")
    for event in labels["events"]:
        if not event["expect_divert"]:
            continue
        delay = labels["max_export_delay_s"] + DETECTION_SLACK
        for prefix in event["expected_announce"]:
            a = [x for x in announces if x["prefix"] == prefix]
            assert len(a) == 1, (prefix, a)  # one diversion, not many
            assert event["start"] <= a[0]["time"] <= event["start"] + delay, (a[0], event)
            assert a[0]["vector"], a[0]
            w = [x for x in withdraws if x["prefix"] == prefix]
            assert len(w) == 1, (prefix, w)
            # withdrawn after the attack ended, not while it lasted, and not forgotten
            assert event["end"] < w[0]["time"] <= event["end"] + WITHDRAW_WITHIN, (w[0], event)
        # nothing else announced for the attack (the right more-specific only)
        assert {x["prefix"] for x in announces} == set(event["expected_announce"])


def test_look_alikes_are_not_diverted(run: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    labels, lines = run
    expected = {p for e in labels["events"] for p in e["expected_announce"]}
    announced = {x["prefix"] for x in _changes(lines, "announce")}
    assert announced <= expected, announced - expected
    if not any(e["expect_divert"] for e in labels["events"]):
        assert all(x["to"] != "diverted" for x in _changes(lines, "incident"))


def test_vector_is_named(run: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    labels, lines = run
    for event in labels["events"]:
        if event["expect_divert"]:
            vectors = {x["vector"] for x in _changes(lines, "announce")}
            want = event["vector"]
            assert any(v == want or v.startswith(want) for v in vectors), (want, vectors)


def test_every_transition_has_a_reason(run: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    _, lines = run
    for line in lines:
        if line["type"] in ("incident", "announce", "withdraw"):
            assert line["reason"], line
            assert isinstance(line["time"], float)
