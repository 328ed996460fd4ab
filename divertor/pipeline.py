"""The stages wired on event time: decode -> rates -> verdicts -> incidents -> BGP planner.

One code path for live operation and replay: ``feed`` takes a DatagramBatch whose datagrams
all arrived within one bin (the sources cut batches so), first evaluates every bin boundary
passed before the batch's first arrival, then counts the batch. Nothing reads the clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from bgp.planner import Planner, SafetyConfig
from collector.datagram import DatagramBatch
from collector.decoder import Decoder
from collector.flowbatch import addr_to_pair
from detector.classify import Classifier, Membership
from detector.contracts import IncidentEvent, Status, Verdict
from detector.incidents import IncidentManager
from detector.prefixes import PrefixIndex
from detector.rates import RateConfig, RateKeeper
from detector.verdicts import EvalConfig, Evaluator, host_channels
from divertor.config import Config
from thresholds.model import ThresholdSet


@dataclass
class Timeline:
    """Lines of the timeline (JSON-able dicts), in event-time order."""

    lines: list[dict[str, Any]] = field(default_factory=list)

    def add(self, line: dict[str, Any]) -> None:
        self.lines.append(line)


class Pipeline:
    def __init__(
        self, config: Config, ts: ThresholdSet, allowlisted: Membership | None = None
    ) -> None:
        self.config, self.ts = config, ts
        self.decoder = Decoder(config.collector.decoder())
        bin_s = ts.bin_seconds
        self.index = PrefixIndex([p.prefix for p in ts.policies])
        clean = frozenset((*addr_to_pair(c.exporter), c.interface) for c in config.clean_return)
        self.keeper = RateKeeper(
            self.index,
            Classifier(ts.ports, allowlisted),
            RateConfig(
                bin_seconds=bin_s,
                window_bins=math.ceil(config.detector.window / bin_s),
                host_channels=host_channels(ts),
                clean_return=clean,
            ),
        )
        self.evaluator = Evaluator(
            ts,
            self.index,
            self.keeper,
            EvalConfig(
                average_bins=max(1, round(ts.average_seconds / bin_s)),
                horizon_bins=math.ceil(config.detector.horizon / bin_s),
                under_bins=math.ceil(config.detector.under_window / bin_s),
            ),
        )
        self.incidents = IncidentManager(ts)
        b = config.bgp
        self.planner = Planner(
            SafetyConfig(
                protected=tuple(p.prefix for p in ts.policies),
                max_length_v4=b.max_prefix_length_v4,
                max_length_v6=b.max_prefix_length_v6,
                max_diversions=b.max_diversions,
                max_changes_per_hour=b.max_changes_per_hour,
            )
        )
        self.next_eval: float | None = None
        self.first_arrival = 0.0
        self.last_verdicts: dict[str, Verdict] = {}
        self.records = 0

    def feed(self, batch: DatagramBatch, out: Timeline) -> None:
        if not len(batch):
            return
        self.tick(min(batch.arrival), out)
        flows = self.decoder.decode(batch)
        self.records += len(flows)
        self.keeper.ingest(flows)

    def tick(self, now: float, out: Timeline) -> None:
        """Evaluate every bin boundary up to ``now`` (event time)."""
        bin_s = self.ts.bin_seconds
        if self.next_eval is None:
            self.first_arrival = now
            self.next_eval = (math.floor(now / bin_s) + 1) * bin_s
            return
        while self.next_eval <= now:
            self._evaluate(self.next_eval, out)
            self.next_eval += bin_s

    def _evaluate(self, t: float, out: Timeline) -> None:
        self.keeper.advance(t - self.ts.bin_seconds / 2)
        verdicts = self.evaluator.evaluate(t)
        for v in verdicts:
            old = self.last_verdicts.get(v.prefix)
            if _changed(old, v):
                out.add(v.as_dict())
            self.last_verdicts[v.prefix] = v
        events: list[IncidentEvent] = self.incidents.update(verdicts, t)
        for e in events:
            out.add(e.as_dict())
        for change in self.planner.plan(self.incidents.desired(t)):
            out.add(change.as_dict())

    def stats(self) -> dict[str, Any]:
        s = self.keeper.stats
        return {
            "records": self.records,
            "inside": s.inside,
            "late": s.late,
            "partly_late": s.partly_late,
            "clean_return": s.clean_return,
            "exporters": self.decoder.stats.as_dict(),
        }


def _changed(old: Verdict | None, new: Verdict) -> bool:
    if old is None:
        return new.status is Status.OVER
    return (old.status, old.vector, old.rule, old.host) != (
        new.status,
        new.vector,
        new.rule,
        new.host,
    )
