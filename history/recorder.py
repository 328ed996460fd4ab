"""The frame sink that fills the history during a replay or live run."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from detector.contracts import RateFrame
from history.rollup import MinuteAccumulator
from history.store import HistoryStore

#: data seconds before an incident's first transition that are left out of the baselines too
EXCLUDE_BEFORE = 60.0


class HistoryRecorder:
    """Call it with settled RateFrames; ``close`` writes the open minute and the incidents."""

    def __init__(self, store: HistoryStore) -> None:
        self.store = store
        self.acc = MinuteAccumulator(store.bin_seconds)
        self.minutes = 0

    def __call__(self, frames: list[RateFrame]) -> None:
        blocks = self.acc.add(frames)
        self.minutes += len(blocks)
        self.store.append(blocks)

    def close(self, timeline: Iterable[dict[str, Any]] = ()) -> None:
        blocks = self.acc.flush()
        self.minutes += len(blocks)
        self.store.append(blocks)
        self.store.exclude(diverted_periods(timeline))


def diverted_periods(lines: Iterable[dict[str, Any]]) -> list[tuple[str, float, float, str]]:
    """(prefix, t0, t1, why) of every incident of a timeline that was diverted: from a
    minute before its first transition to its close (or its last line)."""
    spans: dict[int, list[Any]] = {}
    for line in lines:
        if line.get("type") != "incident":
            continue
        s = spans.setdefault(int(line["incident"]), [line["prefix"], line["time"], 0.0, False])
        s[2] = max(s[2], float(line["time"]))
        s[3] = s[3] or line.get("to") == "diverted"
    return [
        (str(p), float(t0) - EXCLUDE_BEFORE, float(t1), f"incident {i} diverted")
        for i, (p, t0, t1, diverted) in spans.items()
        if diverted
    ]
