"""Backtest: what a thresholds file would have done over the stored 1 s history.

The rules and timing of the live detector (detector/verdicts.py) on settled history:
trailing averages of ``average`` bins, a prefix is over while some bin of the ``horizon`` is
over a threshold, the over run is measured in data time (less the A - 1 bins a trailing
average lingers), "under" is every bin of the under window below the clear level. A
vectorised pass over each chunk of history (all prefixes at once) finds the bins near or
over a threshold; only there, second by second, are Verdicts built and fed to the real
IncidentManager (detector/incidents.py), which decides diversions, hold-down, minimum
hold, dampening and monitor mode exactly as the engine does.

The history holds prefix totals per class, not hosts: host thresholds and carpet bombing
(which need per-host counters) are not backtested, and amplification is not named by port.
Settled history has no export delay: the backtest diverts as soon as the data allows, the
live engine (and a replay) up to the flow export delay later.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from detector.contracts import IncidentEvent, State, Status, Verdict
from detector.incidents import IncidentManager
from history.rollup import channel_index, trailing
from history.store import SecondsChunk
from thresholds.model import CLASSES, METRICS, VECTOR_OF_CLASS, ThresholdSet
from thresholds.units import format_rate

NEAR = 0.8  # a near miss: the max of value / threshold reached this without a diversion


@dataclass(frozen=True, slots=True)
class Timing:
    """The detector's windows, in bins (divertor.yaml ``detector``: 5 s, 64 s, 45 s)."""

    average: int = 5
    horizon: int = 64
    under: int = 45


@dataclass(slots=True)
class Diversion:
    prefix: str
    incident: int
    start: float
    end: float | None  # None: still diverted at the end of the history
    vector: str | None
    reason: str
    monitor: bool = False  # monitor mode: would have diverted

    @property
    def duration(self) -> float | None:
        return None if self.end is None else self.end - self.start


@dataclass(frozen=True, slots=True)
class NearMiss:
    prefix: str
    start: float
    end: float
    ratio: float  # peak of value / threshold
    channel: str
    value: float
    threshold: float


@dataclass(slots=True)
class Result:
    start: float
    end: float
    prefixes: tuple[str, ...]
    missing: tuple[str, ...]  # prefixes of the file without history
    diversions: list[Diversion] = field(default_factory=list)
    near_misses: list[NearMiss] = field(default_factory=list)
    events: list[IncidentEvent] = field(default_factory=list)
    steps: int = 0  # verdicts built (seconds evaluated one by one)


def channels_of(ts: ThresholdSet) -> tuple[list[str], npt.NDArray[np.float64]]:
    """Channels with a prefix threshold somewhere, and limits (policies, channels), NaN=none."""
    chans: list[str] = []
    for p in ts.policies:
        for cls, limit in p.thresholds.items():
            for m, v in zip(METRICS, limit.as_tuple(), strict=True):
                if v is not None and f"{cls}.{m}" not in chans:
                    chans.append(f"{cls}.{m}")
    chans.sort(key=channel_index)
    limits = np.full((len(ts.policies), len(chans)), np.nan)
    for i, p in enumerate(ts.policies):
        for cls, limit in p.thresholds.items():
            for m, v in zip(METRICS, limit.as_tuple(), strict=True):
                if v is not None:
                    limits[i, chans.index(f"{cls}.{m}")] = v
    return chans, limits


class Backtest:
    """Feed chunks of history in time order; ``finish`` returns the Result."""

    def __init__(self, ts: ThresholdSet, prefixes: Iterable[str], timing: Timing) -> None:
        stored = set(prefixes)
        self.ts, self.timing = ts, timing
        self.names = tuple(str(p.prefix) for p in ts.policies)
        self.keep = [i for i, n in enumerate(self.names) if n in stored]
        self.channels, limits = channels_of(ts)
        self.limits = limits[self.keep]
        self.inv = np.nan_to_num(1.0 / self.limits, nan=0.0).astype(np.float32)
        self.clear = np.array([ts.policies[i].timing.clear_ratio for i in self.keep])
        self.incidents = IncidentManager(ts)
        self.carry: npt.NDArray[np.float32] | None = None  # last bins of the previous chunk
        self.carry_start = 0.0
        self.result = Result(
            0.0,
            0.0,
            tuple(self.names[i] for i in self.keep),
            tuple(n for n in self.names if n not in stored),
        )
        self._open: dict[str, Diversion] = {}
        self.bin = 1.0

    def prefixes(self) -> list[str]:
        return [self.names[i] for i in self.keep]

    def feed(self, chunk: SecondsChunk) -> None:
        t = self.timing
        self.bin = chunk.bin_seconds
        vals = chunk.values  # the chunk is ours: NaN (no data) -> 0 in place, no copy
        np.copyto(vals, 0.0, where=np.isnan(vals))
        if self.result.start == 0.0:
            self.result.start = chunk.start
        back = t.average - 1 + max(t.horizon, t.under)
        if self.carry is None:  # no data before the history: zeros
            self.carry = np.zeros((back, *vals.shape[1:]), dtype=np.float32)
            self.carry_start = chunk.start - back * chunk.bin_seconds
        ext, ext_start = np.concatenate([self.carry, vals]), self.carry_start
        first = round((chunk.start - ext_start) / chunk.bin_seconds)  # first row of the chunk
        # max over channels of average / threshold, one contiguous (T, P) plane at a time
        ratio = np.zeros(ext.shape[:2], dtype=np.float32)
        for k in range(ext.shape[2]):
            r = trailing(np.ascontiguousarray(ext[:, :, k]), t.average)
            r *= self.inv[:, k]
            np.maximum(ratio, r, out=ratio)
        self._near_misses(ratio, ext, first, ext_start)
        hot = np.asarray((ratio[first - t.horizon :] > 1.0).any(axis=0))
        for p in range(len(self.keep)):
            track = self.incidents.tracks[self.names[self.keep[p]]]
            if hot[p] or track.state not in (State.NORMAL, State.CLOSED):
                avg = trailing(np.ascontiguousarray(ext[:, p, :]), t.average)  # (T, K)
                self._step(p, ratio[:, p], avg, first, ext_start)
        self.carry = ext[-back:]
        self.carry_start = ext_start + (len(ext) - len(self.carry)) * chunk.bin_seconds
        self.result.end = chunk.start + len(vals) * chunk.bin_seconds

    def _step(
        self,
        p: int,
        ratio: npt.NDArray[np.float32],
        avg: npt.NDArray[np.float32],
        first: int,
        ext_start: float,
    ) -> None:
        """Evaluate prefix p at every bin end of the chunk where something can happen."""
        tm = self.timing
        i = self.keep[p]
        name = self.names[i]
        over = ratio > 1.0
        clear = ratio > self.clear[p]
        run_end = _run_lengths(over)
        cs_over = np.concatenate([[0], np.cumsum(over)])
        cs_clear = np.concatenate([[0], np.cumsum(clear)])
        track = self.incidents.tracks[name]
        n = len(ratio)
        steps = np.arange(1, tm.horizon + 1)
        hot = np.flatnonzero(cs_over[tm.horizon :] - cs_over[: -tm.horizon] > 0) + tm.horizon - 1
        j = first
        while j < n:
            if track.state in (State.NORMAL, State.CLOSED):
                k = int(np.searchsorted(hot, j))
                if k >= len(hot):
                    return
                j = max(j, int(hot[k]))
            now = ext_start + (j + 1) * self.bin  # evaluation time: the end of bin j
            lo = j - tm.horizon + 1
            win = np.minimum(run_end[lo : j + 1], steps)
            run = int(win.max())
            u0 = max(0, j - tm.under + 1)
            under = cs_clear[j + 1] - cs_clear[u0] == 0
            recent = cs_over[j + 1] - cs_over[u0] > 0
            v = self._verdict(i, p, now, run, lo + int(np.argmax(win)), avg, under, recent)
            self.result.steps += 1
            self._record(self.incidents.update([v], now))
            j += 1

    def _verdict(
        self,
        i: int,
        p: int,
        now: float,
        run: int,
        peak_row: int,
        avg: npt.NDArray[np.float32],
        under: bool,
        recent: bool,
    ) -> Verdict:
        pol = self.ts.policies[i]
        base = {"time": now, "prefix": self.names[i], "under": under, "recent": recent}
        monitor = pol.mode == "monitor"
        if run == 0:
            return Verdict(status=Status.NORMAL, monitor=monitor, **base)  # type: ignore[arg-type]
        rows = slice(peak_row - run + 1, peak_row + 1)
        r = avg[rows] * self.inv[p][None]
        k = int(np.argmax(r.max(axis=0)))
        cls, metric = self.channels[k].split(".")
        limit = float(self.limits[p, k])
        a = self.timing.average
        rule = f"prefix {cls}.{metric} > {format_rate(limit)}"
        return Verdict(
            status=Status.OVER,
            over_seconds=max(run - (a - 1), 1) * self.bin,
            vector=VECTOR_OF_CLASS[cls],
            rule=rule,
            scope="prefix",
            klass=cls,
            metric=metric,
            value=float(avg[rows, k].max()),
            threshold=limit,
            monitor=monitor,
            since=now - (run + a - 1) * self.bin,
            **base,  # type: ignore[arg-type]
        )

    def _record(self, events: list[IncidentEvent]) -> None:
        for e in events:
            self.result.events.append(e)
            if e.new is State.DIVERTED:
                d = Diversion(e.prefix, e.incident, e.time, None, e.vector, e.reason)
                self.result.diversions.append(d)
                self._open[e.prefix] = d
            elif e.old is State.DIVERTED and e.prefix in self._open:
                self._open.pop(e.prefix).end = e.time
            elif e.old is e.new and e.reason.startswith("monitor mode"):
                d = Diversion(e.prefix, e.incident, e.time, e.time, e.vector, e.reason, True)
                self.result.diversions.append(d)

    def _near_misses(
        self,
        ratio: npt.NDArray[np.float32],
        ext: npt.NDArray[np.float32],
        first: int,
        ext_start: float,
    ) -> None:
        near = ratio[first:] >= NEAR
        if not near.any():
            return
        pad = np.zeros((1, near.shape[1]), dtype=bool)
        edges: npt.NDArray[np.int8] = np.diff(
            np.concatenate([pad, near, pad]).astype(np.int8), axis=0
        ).astype(np.int8)
        for p, j0, j1 in _runs_from_edges(edges):
            jm = first + j0 + int(np.argmax(ratio[first + j0 : first + j1, p]))
            a = self.timing.average
            avg = ext[jm - a + 1 : jm + 1, p].sum(axis=0) / a  # (K,) at the peak
            k = int(np.argmax(avg * self.inv[p]))
            self.result.near_misses.append(
                NearMiss(
                    self.names[self.keep[p]],
                    ext_start + (first + j0) * self.bin,
                    ext_start + (first + j1) * self.bin,
                    float(ratio[jm, p]),
                    self.channels[k],
                    float(avg[k]),
                    float(self.limits[p, k]),
                )
            )

    def finish(self) -> Result:
        """The result; near misses are the runs at or above NEAR x a threshold (merged
        across chunks) that no diversion (or monitor-mode "would divert") follows."""
        res = self.result
        merged: list[NearMiss] = []
        for m in sorted(res.near_misses, key=lambda m: (m.prefix, m.start)):
            last = merged[-1] if merged else None
            if last is not None and last.prefix == m.prefix and last.end >= m.start:
                peak = m if m.ratio > last.ratio else last
                merged[-1] = NearMiss(
                    m.prefix, last.start, max(last.end, m.end), peak.ratio,
                    peak.channel, peak.value, peak.threshold,
                )  # fmt: skip
            else:
                merged.append(m)
        spans: dict[str, list[tuple[float, float]]] = {}
        for d in res.diversions:
            end = d.end if d.end is not None else res.end
            spans.setdefault(d.prefix, []).append((d.start, end))
        res.near_misses = [
            m
            for m in merged
            if not any(m.start <= b and a <= m.end + 60.0 for a, b in spans.get(m.prefix, []))
        ]
        res.near_misses.sort(key=lambda m: m.start)
        return res


def _run_lengths(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.int64]:
    """Length of the run of True ending at each position (0 where False)."""
    idx = np.arange(1, len(mask) + 1)
    last_false = np.maximum.accumulate(np.where(mask, 0, idx))
    return np.where(mask, idx - last_false, 0)


def _runs_from_edges(edges: npt.NDArray[np.int8]) -> list[tuple[int, int, int]]:
    """(column, start, end) of the True runs from a diff of a 0-padded mask."""
    starts = np.argwhere(edges == 1)
    ends = np.argwhere(edges == -1)
    order_s = np.lexsort((starts[:, 0], starts[:, 1]))
    order_e = np.lexsort((ends[:, 0], ends[:, 1]))
    s, e = starts[order_s], ends[order_e]
    return list(zip(s[:, 1].tolist(), s[:, 0].tolist(), e[:, 0].tolist(), strict=True))


def run(
    ts: ThresholdSet,
    chunks: Callable[[list[str], list[str]], Iterable[SecondsChunk]],
    stored: Iterable[str],
    timing: Timing | None = None,
) -> Result:
    """Backtest ``ts``: ``chunks(prefixes, channels)`` yields the history in time order."""
    bt = Backtest(ts, stored, timing or Timing())
    if bt.keep and bt.channels:
        for chunk in chunks(bt.prefixes(), bt.channels):
            bt.feed(chunk)
    return bt.finish()


__all__ = ["CLASSES", "Backtest", "Diversion", "NearMiss", "Result", "Timing", "run"]
