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
from detector.talkers import TopTalkers
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


class _Window:
    """A ring of W bins (plus a sink row) holding a difference array along the bins.

    Logical row j is bin ``base + j``; logical row W is a sink that takes the end marks of
    records running past the window. Dropping the oldest bin carries its running count into
    the next one, so a shift costs one row, not the whole window.
    """

    def __init__(self, shape: tuple[int, ...], bins: int) -> None:
        self.size = bins + 1
        self.bins = bins
        self.delta = np.zeros((self.size, *shape))
        self.head = 0
        self.base = 0

    def rows(self, start: int, stop: int) -> npt.NDArray[np.int64]:
        """Physical rows of logical rows [start, stop)."""
        return (self.head + np.arange(start, stop)) % self.size

    def add(
        self,
        logical: npt.NDArray[np.int64],
        flat_rest: npt.NDArray[np.int64],
        values: npt.NDArray[np.float64],
    ) -> None:
        """delta[logical row, flat index within the row] += values (repeats accumulate)."""
        per_row = int(np.prod(self.delta.shape[1:]))
        phys = (self.head + logical) % self.size
        np.add.at(self.delta.reshape(-1), phys * per_row + flat_rest, values)

    def shift(self, k: int, keep: bool = True) -> npt.NDArray[np.float64]:
        """Drop k bins from the front; returns the counts of the dropped bins (at most W)
        when ``keep``."""
        if k <= 0:
            return self.delta[:0]
        n = min(k, self.bins) if keep else 0
        dropped = np.cumsum(self.delta[self.rows(0, n)], axis=0)
        if k >= self.bins:
            self.delta[:] = 0
            self.head = 0
        else:
            carry = self.delta[self.rows(0, k + 1)].sum(axis=0)
            self.delta[self.rows(0, k)] = 0
            self.head = (self.head + k) % self.size
            self.delta[self.head] = carry
        self.base += k
        return dropped

    def counts(
        self, start: int, stop: int, index: npt.NDArray[np.int64] | None = None
    ) -> npt.NDArray[np.float64]:
        """Counts of logical bins [start, stop), optionally of some columns (axis 1) only."""
        d = self.delta if index is None else self.delta[:, index]
        before = d[self.rows(0, start)].sum(axis=0)
        out = np.cumsum(d[self.rows(start, stop)], axis=0)
        out += before
        return out


@dataclass
class RateKeeper:
    index: PrefixIndex
    classifier: Classifier
    config: RateConfig = field(default_factory=RateConfig)
    stats: RateStats = field(default_factory=RateStats)

    def __post_init__(self) -> None:
        w = self.config.window_bins
        e, c, m = len(self.index.networks), len(CLASSES), len(METRICS)
        self.prefix = _Window((e, c, m), w)
        self.hosts = _Window((self.index.rows, len(self.config.host_channels)), w)
        self.started = False
        self.newest = 0  # newest bin with data time (by arrival)
        self.talkers = TopTalkers(e)
        self.hot: set[int] = set()  # entries over a threshold: their top talkers are kept

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
        if len(sel) < len(b):
            b = _columns(b, sel)
        entry, row = look.entry[sel], look.row[sel]
        rate = b.sampling_rate.astype(np.float64)
        values = np.stack(
            [b.bytes * 8.0 * rate, b.packets * rate, np.ones(len(b))], axis=1
        )  # (n, metrics)
        b0, b1, keep = self._bins(b)
        packets = values[:, PPS].copy()
        values *= keep[:, None]
        classes = self.classifier.classes(b)
        rec, cls = np.nonzero(classes)
        self._add_prefix(b0[rec], b1[rec], entry[rec], cls, values[rec])
        self._add_hosts(b0, b1, row, classes, values)
        if self.hot:
            h = np.isin(entry, list(self.hot))
            if h.any():
                self.talkers.add(
                    entry[h],
                    b.src_hi[h],
                    b.src_lo[h],
                    b.src_port[h],
                    b.dst_port[h],
                    packets[h],
                )
        return frames

    def top_amplification_port(self, entry: int) -> int | None:
        ports = self.talkers.counts[entry]["src_port"]
        for port, _ in ports.most_common(3):
            if self.classifier.amplification[int(port)]:  # type: ignore[call-overload]
                return int(port)  # type: ignore[call-overload]
        return None

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
        """delta[b0, entry, class] += v and delta[b1 + 1, ...] -= v, with one bincount per
        metric over the whole (small) prefix array: far cheaper than ufunc.at."""
        win = self.prefix
        e, c, m = win.delta.shape[1:]
        cell = entry * c + cls
        per_row = e * c
        start = ((win.head + b0) % win.size) * per_row + cell
        stop = ((win.head + b1 + 1) % win.size) * per_row + cell
        size = win.size * per_row
        flat = win.delta.reshape(size, m)
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
        channels = self.hosts.delta.shape[2]
        for ch, (c, metric) in enumerate(self.config.host_channels):
            sel = np.nonzero(classes[:, c])[0]
            if not len(sel):
                continue
            v = values[sel, metric]
            cell = row[sel] * channels + ch
            self.hosts.add(
                np.concatenate([b0[sel], b1[sel] + 1]),
                np.concatenate([cell, cell]),
                np.concatenate([v, -v]),
            )

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
        self.hosts.shift(k, keep=False)
        # the window keeps a record on its most specific entry only; a covering entry's
        # counters include the entries inside it (as the evaluator sums them)
        dropped = np.stack([dropped[:, m].sum(axis=1) for m in self.index.members], axis=1)
        frames = [
            RateFrame(
                start=(first_bin + i) * cfg.bin_seconds,
                seconds=cfg.bin_seconds,
                prefixes=tuple(str(n) for n in self.index.networks),
                values=dropped[i] / cfg.bin_seconds,
            )
            for i in range(dropped.shape[0])
            # float leftovers of the difference array (1e-9 of a packet) are not traffic
            if (np.abs(dropped[i]) > 1e-6).any()
        ]
        self.stats.frames += len(frames)
        return frames

    def window_packets(self, members: list[int], t0: float, t1: float) -> npt.NDArray[np.float64]:
        """Packets per class of the entries ``members`` in the open bins starting in [t0, t1)."""
        bs = self.config.bin_seconds
        a = max(0, int(np.ceil(t0 / bs)) - self.prefix.base)
        b = min(self.config.window_bins, int(np.ceil(t1 / bs)) - self.prefix.base)
        if b <= a:
            return np.zeros(len(CLASSES))
        counts = self.prefix.counts(a, b, np.asarray(members, dtype=np.int64))
        return np.asarray(counts[..., PPS].sum(axis=(0, 1)), dtype=np.float64)

    def row_of_time(self, t: float) -> int:
        """Window row of the bin that starts at or before ``t``."""
        return int(np.floor(t / self.config.bin_seconds)) - self.prefix.base


#: the columns the rates read (a batch is narrowed to its records inside the prefixes)
_USED = (
    "arrival",
    "first",
    "last",
    "bytes",
    "packets",
    "sampling_rate",
    "protocol",
    "tcp_flags",
    "fragment",
    "src_port",
    "dst_port",
    "src_hi",
    "src_lo",
    "exporter_hi",
    "exporter_lo",
    "input_if",
)


def _columns(b: FlowBatch, sel: npt.NDArray[np.intp]) -> FlowBatch:
    """The records ``sel`` of a batch, with only the columns the rates read filled."""
    out = FlowBatch.empty(0)
    for name in _USED:
        setattr(out, name, getattr(b, name)[sel])
    return out
