"""The stages wired on event time: decode -> rates -> verdicts -> incidents -> BGP planner.

One code path for live operation and replay: ``feed`` takes a DatagramBatch whose datagrams
all arrived within one bin (the sources cut batches so), first evaluates every bin boundary
passed before the batch's first arrival, then counts the batch. Nothing reads the clock.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from collector.datagram import DatagramBatch
from collector.decoder import Decoder
from collector.flowbatch import addr_to_pair
from detector.anomaly import AnomalyEvaluator
from detector.classify import Classifier, Membership
from detector.contracts import DesiredSet, IncidentEvent, RateFrame, State, Status, Verdict
from detector.incidents import IncidentManager
from detector.prefixes import PrefixIndex
from detector.rates import PPS, RateConfig, RateKeeper
from detector.verdicts import EvalConfig, Evaluator, host_channels
from divertor.bgp_cmd import make_policy
from divertor.config import Config
from thresholds.model import CLASSES, ThresholdSet

#: classes whose allowlisted share an incident reports: (class, its unlisted part)
SHARE_CLASSES = (("udp", "unlisted_udp"), ("sip", "unlisted_sip"), ("rtp", "unlisted_rtp"))
SHARE_BEFORE = 60.0  # seconds of data before an incident's over run that are "before"


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
        self.allowlisted = allowlisted
        self.decoder = Decoder(config.collector.decoder())
        self._build_rates(config, ts)
        self._build_evaluator(config, ts)
        self.incidents = IncidentManager(ts)
        # the same safety policy as the daemon: bounds, limits, dampening, next hops, RPKI
        self.planner = make_policy(config, ts).planner()
        self.allowlist: Any = None  # the allowlist state behind ``allowlisted``, if kept here
        self.next_eval: float | None = None
        self.first_arrival = 0.0
        self.last_verdicts: dict[str, Verdict] = {}
        self.records = 0
        #: where settled RateFrames go (the timeline store); None: nowhere
        self.frame_sink: Callable[[list[RateFrame]], None] | None = None
        #: top talkers at each incident transition: (incident, prefix, top)
        self.talkers: list[tuple[int, str, dict[str, Any]]] = []
        #: where DesiredSets go instead of the dry-run planner (the daemon's BGP engine)
        self.desired_sink: Callable[[DesiredSet], None] | None = None

    def _rate_config(self, config: Config, ts: ThresholdSet) -> tuple[Any, ...]:
        """What the rate counters depend on: equal before and after a reload = keep them."""
        clean = frozenset((*addr_to_pair(c.exporter), c.interface) for c in config.clean_return)
        return (
            tuple(p.prefix for p in ts.policies),
            ts.ports,
            ts.bin_seconds,
            math.ceil(config.detector.window / ts.bin_seconds),
            host_channels(ts),
            clean,
        )

    def _build_rates(self, config: Config, ts: ThresholdSet) -> None:
        prefixes, ports, bin_s, window_bins, channels, clean = self._rate_config(config, ts)
        self.index = PrefixIndex(list(prefixes))
        self.keeper = RateKeeper(
            self.index,
            Classifier(ports, self.allowlisted),
            RateConfig(
                bin_seconds=bin_s,
                window_bins=window_bins,
                host_channels=channels,
                clean_return=clean,
            ),
        )
        self.shares = _Shares(self.keeper, self.index) if self.allowlisted is not None else None
        self._entry = {str(net): i for i, net in enumerate(self.index.networks)}

    def _build_evaluator(self, config: Config, ts: ThresholdSet) -> None:
        bin_s = ts.bin_seconds
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
        # anomaly rules (docs/thresholds.md): baselines are handed in (history.live), kept
        # across reloads
        old: AnomalyEvaluator | None = getattr(self, "anomaly", None)
        self.anomaly: AnomalyEvaluator | None = None
        if any(p.anomaly.rule or p.anomaly.mix for p in ts.policies):
            self.anomaly = AnomalyEvaluator(ts, self.index, self.keeper, self.evaluator.config)
            if old is not None:
                self.anomaly.take_baselines(old)

    def reload(self, config: Config, ts: ThresholdSet) -> dict[str, Any]:
        """Take a new configuration and thresholds file without losing what is known:
        the decoder's templates stay, incidents of prefixes still protected keep their
        state, and the rate counters stay unless the prefixes, ports, bin, window or host
        channels changed (then they start again, empty). Returns what happened."""
        kept = self._rate_config(config, ts) == self._rate_config(self.config, self.ts)
        if not kept:
            self._build_rates(config, ts)
            self.next_eval = None
        self._build_evaluator(config, ts)
        dropped = self.incidents.retarget(ts)
        self.planner = make_policy(config, ts).planner()
        self.config, self.ts = config, ts
        self.last_verdicts = {p: v for p, v in self.last_verdicts.items() if p in self._entry}
        return {"rates_kept": kept, "prefixes": len(ts.policies), "dropped": dropped}

    def feed(self, batch: DatagramBatch, out: Timeline) -> None:
        if not len(batch):
            return
        self.tick(min(batch.arrival), out)
        flows = self.decoder.decode(batch)
        self.records += len(flows)
        self._settled(self.keeper.ingest(flows))

    def _settled(self, frames: list[RateFrame]) -> None:
        if self.shares is not None:
            self.shares.settled(frames)
        if self.frame_sink is not None and frames:
            self.frame_sink(frames)

    def flush(self) -> None:
        """Settle every open bin (end of a replay): their RateFrames go to the sink."""
        k = self.keeper
        self._settled(k.advance((k.newest + k.config.window_bins + 1) * self.ts.bin_seconds))

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
        self._settled(self.keeper.advance(t - self.ts.bin_seconds / 2))
        verdicts = self.evaluator.evaluate(t)
        if self.anomaly is not None:
            verdicts = self.anomaly.combine(t, verdicts)
            for line in self.anomaly.take_lines():
                out.add(line)
        for v in verdicts:
            old = self.last_verdicts.get(v.prefix)
            if _changed(old, v):
                out.add(v.as_dict())
            self.last_verdicts[v.prefix] = v
        events: list[IncidentEvent] = self.incidents.update(verdicts, t)
        if self.shares is not None:
            events = [self.shares.annotate(e, self.last_verdicts.get(e.prefix), t) for e in events]
        for e in events:
            out.add(e.as_dict())
            entry = self._entry[e.prefix]
            if e.old in (State.NORMAL, State.CLOSED):
                self.keeper.talkers.reset(entry)  # talkers of this incident only
            self.talkers.append((e.incident, e.prefix, self.keeper.talkers.top(entry, 10)))
        desired = self.incidents.desired(t)
        if self.desired_sink is not None:
            self.desired_sink(desired)
            return
        for change in self.planner.plan(desired):
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
            **(
                {"allowlist": {"entries": len(self.allowlist), "version": self.allowlist.version}}
                if self.allowlist is not None
                else {}
            ),
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


class _Shares:
    """The allowlisted share of a prefix's UDP, SIP and RTP packets before its incident and
    during it (1 - unlisted/all), for the incident's events. "Before" is the minute of data
    before the over run began (from the open bins); "during" adds the bins that settled
    since the run began to the bins still open, so it covers incidents longer than the
    window."""

    def __init__(self, keeper: RateKeeper, index: PrefixIndex) -> None:
        self.keeper, self.index = keeper, index
        self.cols = [(CLASSES.index(a), CLASSES.index(b)) for a, b in SHARE_CLASSES]
        self.entry = {str(n): i for i, n in enumerate(index.networks)}
        # open incidents by entry: (since, "before" shares, packets per class settled since)
        self.open: dict[int, tuple[float, dict[str, float | None], npt.NDArray[np.float64]]] = {}

    def settled(self, frames: list[RateFrame]) -> None:
        for f in frames:
            for entry, (since, _, acc) in self.open.items():
                if f.start >= since:
                    acc += f.values[entry, :, PPS] * f.seconds

    def _shares(self, packets: npt.NDArray[np.float64]) -> dict[str, float | None]:
        out: dict[str, float | None] = {}
        for (name, _), (c, u) in zip(SHARE_CLASSES, self.cols, strict=True):
            total = float(packets[c])
            out[name] = round(1.0 - float(packets[u]) / total, 4) if total > 0 else None
        return out

    def annotate(self, e: IncidentEvent, v: Verdict | None, now: float) -> IncidentEvent:
        entry = self.entry.get(e.prefix)
        if entry is None:
            return e
        members = self.index.members[entry]
        if entry not in self.open or e.old in (State.NORMAL, State.CLOSED):
            since = v.since if v is not None and v.since is not None else now
            before = self.keeper.window_packets(members, since - SHARE_BEFORE, since)
            self.open[entry] = (since, self._shares(before), np.zeros(len(CLASSES)))
        since, before_share, acc = self.open[entry]
        during = acc + self.keeper.window_packets(members, since, now + 1e9)
        if e.new is State.CLOSED:
            del self.open[entry]
        share = {"since": since, "before": before_share, "during": self._shares(during)}
        return dataclasses.replace(e, data={**e.data, "allowlisted_share": share})
