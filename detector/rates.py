"""FlowBatch -> per-bin counters per protected prefix, class and host, on event time.

Routers export a flow after its active timeout, so a record describes the past and may
cover many bins. Each record is spread evenly over the bins it covers with a difference
array (+w at its first bin, -w after its last), so a 60-second record costs two additions
whatever its length; the counts are the cumulative sum along the bins. The window keeps
``window_bins`` bins open; a record older than the window is counted as late, never
silently dropped; bins leaving the window are emitted as settled RateFrames.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from collector.flowbatch import FlowBatch
from detector.classify import Classifier
from detector.contracts import RateFrame
from detector.prefixes import PrefixIndex
from thresholds.model import CLASSES, METRICS

BPS, PPS, FPS = 0, 1, 2


@dataclass(slots=True)
class RateConfig:
    bin_seconds: float = 1.0
    window_bins: int = 96
    future_bins: int = 4  # records stamped ahead of their arrival (exporter clocks)
    #: host counters kept per (class index, metric index: 0 bps, 1 pps)
    host_channels: tuple[tuple[int, int], ...] = ((0, PPS),)
    #: (exporter_hi, exporter_lo, input_if) of clean traffic coming back from scrubbing
    clean_return: frozenset[tuple[int, int, int]] = frozenset()


@dataclass(slots=True)
class RateStats:
    records: int = 0
    inside: int = 0  # records to a protected prefix
    late: int = 0  # records whose every bin had already left the window
    partly_late: int = 0  # records with some bins before the window (those parts dropped)
    clean_return: int = 0  # records from the clean-return interfaces, not counted
    frames: int = 0


@dataclass(slots=True)
class _Window:
    delta: npt.NDArray[np.float64]  # (W + 1, ...) difference array, last row a sink
    base: int = 0  # bin number of row 0

    def shift(self, k: int) -> npt.NDArray[np.float64]:
        """Drop k bins from the front; returns the counts of the dropped bins."""
        w = self.delta.shape[0] - 1
        if k <= 0:
            return self.delta[:0]
        dropped = np.cumsum(self.delta[: min(k, w)], axis=0)
        if k >= w:
            self.delta[:] = 0
        else:
            carry = self.delta[: k + 1].sum(axis=0)
            self.delta[: w + 1 - k] = self.delta[k:]
            self.delta[0] = carry
            self.delta[w + 1 - k :] = 0
        self.base += k
        return dropped

    def counts(self) -> npt.NDArray[np.float64]:
        return np.cumsum(self.delta[:-1], axis=0)


@dataclass
class RateKeeper:
    index: PrefixIndex
    classifier: Classifier
    config: RateConfig = field(default_factory=RateConfig)
    stats: RateStats = field(default_factory=RateStats)

    def __post_init__(self) -> None:
        w = self.config.window_bins
        e, c, m = len(self.index.networks), len(CLASSES), len(METRICS)
        self.prefix = _Window(np.zeros((w + 1, e, c, m)))
        self.hosts = _Window(np.zeros((w + 1, self.index.rows, len(self.config.host_channels))))
        self.started = False
        self.newest = 0  # newest bin with data time (by arrival)

    # ------------------------------------------------------------------ ingest
    def ingest(self, b: FlowBatch) -> list[RateFrame]:
        """Count a batch; returns the RateFrames of bins that left the window."""
        cfg = self.config
        self.stats.records += len(b)
        if not len(b):
            return []
        frames = self.advance(float(b.arrival.max()))
        look = self.index.lookup(b.dst_hi, b.dst_lo)
        inside = look.entry >= 0
        if cfg.clean_return:
            clean = self._clean_return(b)
            self.stats.clean_return += int((clean & inside).sum())
            inside &= ~clean
        sel = np.nonzero(inside)[0]
        self.stats.inside += len(sel)
        if not len(sel):
            return frames
        b = b.take(sel)
        entry, row = look.entry[sel], look.row[sel]
        rate = b.sampling_rate.astype(np.float64)
        values = np.stack(
            [b.bytes * 8.0 * rate, b.packets * rate, np.ones(len(b))], axis=1
        )  # (n, metrics)
        b0, b1, keep = self._bins(b)
        values *= keep[:, None]
        classes = self.classifier.classes(b)
        rec, cls = np.nonzero(classes)
        self._add_prefix(b0[rec], b1[rec], entry[rec], cls, values[rec])
        self._add_hosts(b0, b1, row, classes, values)
        return frames

    def _clean_return(self, b: FlowBatch) -> npt.NDArray[np.bool_]:
        out = np.zeros(len(b), dtype=bool)
        for hi, lo, ifindex in self.config.clean_return:
            out |= (b.exporter_hi == hi) & (b.exporter_lo == lo) & (b.input_if == ifindex)
        return out

    def _bins(
        self, b: FlowBatch
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.float64]]:
        """First and last window row of each record, and the share of it kept (per bin)."""
        cfg = self.config
        w = cfg.window_bins
        first = np.where(np.isnan(b.first), b.arrival, b.first)
        last = np.where(np.isnan(b.last), b.arrival, b.last)
        last = np.minimum(last, b.arrival + cfg.future_bins * cfg.bin_seconds)
        first = np.minimum(first, last)
        b0 = np.floor(first / cfg.bin_seconds).astype(np.int64) - self.prefix.base
        b1 = np.floor(last / cfg.bin_seconds).astype(np.int64) - self.prefix.base
        nbins = (b1 - b0 + 1).astype(np.float64)
        late = b1 < 0
        partly = (b0 < 0) & ~late
        self.stats.late += int(late.sum())
        self.stats.partly_late += int(partly.sum())
        keep = np.where(late, 0.0, 1.0 / nbins)  # value per bin
        b0 = np.clip(b0, 0, w - 1)
        b1 = np.clip(b1, 0, w - 1)
        return b0, b1, keep

    def _add_prefix(
        self,
        b0: npt.NDArray[np.int64],
        b1: npt.NDArray[np.int64],
        entry: npt.NDArray[np.int64],
        cls: npt.NDArray[np.int64],
        values: npt.NDArray[np.float64],
    ) -> None:
        d = self.prefix.delta
        _, e, c, m = d.shape
        flat = d.reshape(-1, m)
        cell = entry * c + cls
        start = b0 * (e * c) + cell
        stop = (b1 + 1) * (e * c) + cell
        size = flat.shape[0]
        for k in range(m):
            flat[:, k] += np.bincount(start, values[:, k], minlength=size)
            flat[:, k] -= np.bincount(stop, values[:, k], minlength=size)

    def _add_hosts(
        self,
        b0: npt.NDArray[np.int64],
        b1: npt.NDArray[np.int64],
        row: npt.NDArray[np.int64],
        classes: npt.NDArray[np.bool_],
        values: npt.NDArray[np.float64],
    ) -> None:
        d = self.hosts.delta
        rows, channels = d.shape[1], d.shape[2]
        flat = d.reshape(-1)
        for ch, (c, metric) in enumerate(self.config.host_channels):
            sel = np.nonzero(classes[:, c])[0]
            if not len(sel):
                continue
            v = values[sel, metric]
            cell = row[sel] * channels + ch
            np.add.at(flat, b0[sel] * (rows * channels) + cell, v)
            np.add.at(flat, (b1[sel] + 1) * (rows * channels) + cell, -v)

    # ------------------------------------------------------------------ time
    def advance(self, now: float) -> list[RateFrame]:
        """Move the window so that bin of ``now`` is the newest; emit the bins that left."""
        cfg = self.config
        w = cfg.window_bins
        now_bin = int(np.floor(now / cfg.bin_seconds))
        if not self.started:
            self.started = True
            self.prefix.base = self.hosts.base = now_bin - (w - cfg.future_bins - 1)
        self.newest = max(self.newest, now_bin)
        k = now_bin - (self.prefix.base + w - cfg.future_bins - 1)
        if k <= 0:
            return []
        first_bin = self.prefix.base
        dropped = self.prefix.shift(k)
        self.hosts.shift(k)
        frames = [
            RateFrame(
                start=(first_bin + i) * cfg.bin_seconds,
                seconds=cfg.bin_seconds,
                prefixes=tuple(str(n) for n in self.index.networks),
                values=dropped[i] / cfg.bin_seconds,
            )
            for i in range(dropped.shape[0])
            if dropped[i].any()
        ]
        self.stats.frames += len(frames)
        return frames

    def row_of_time(self, t: float) -> int:
        """Window row of the bin that starts at or before ``t``."""
        return int(np.floor(t / self.config.bin_seconds)) - self.prefix.base
