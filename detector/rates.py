"""FlowBatch -> per-bin counters per protected prefix, class and host, on event time.

Routers export a flow after its active timeout, so a record describes the past and may
cover many bins. Each record is spread evenly over the bins it covers with a difference
array (+w at its first bin, -w after its last), so a 60-second record costs two additions
whatever its length; the counts are the cumulative sum along the bins. The window keeps
``window_bins`` bins open; a record older than the window is counted as late, never
silently dropped; bins leaving the window are emitted as settled RateFrames.

Counting is vectorised per batch: records are summed per set of classes (few distinct sets)
with one bincount per metric into the prefix counters, and every (record, host channel)
mark goes into the host counters with a single ``np.add.at``.
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

    def offsets(self) -> npt.NDArray[np.int64]:
        """Flat offset of each logical row 0..W (W: the sink) in ``delta.reshape(-1)``."""
        return self.rows(0, self.size) * (self.delta.size // self.size)

    def add(self, flat: npt.NDArray[np.int64], values: npt.NDArray[np.float64]) -> None:
        """delta.flat[flat] += values (repeats accumulate).

        ``np.add.at`` (numpy >= 2 has a fast path for it: ~2 ns a value, whatever the array
        size) rather than ``np.bincount``: a bincount needs a zeroed output as long as the
        rows it touches (a host window row is hosts x channels wide), which costs more than
        the values to add."""
        np.add.at(self.delta.reshape(-1), flat, values)

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
        self.combos = _Combos(self.config.host_channels)
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
        entry, row = look.entry, look.row
        inside = entry >= 0
        if cfg.clean_return:
            clean = self._clean_return(b)
            self.stats.clean_return += int((clean & inside).sum())
            inside &= ~clean
        sel = np.flatnonzero(inside)
        self.stats.inside += len(sel)
        if not len(sel):
            return frames
        talkers = bool(self.hot)
        if len(sel) < len(b):
            sources = talkers or self.classifier.allowlisted is not None
            b = _columns(b, sel, sources)
            entry, row = entry.take(sel), row.take(sel)
        rate = b.sampling_rate.astype(np.float64)
        packets = b.packets * rate
        b0, b1, keep = self._bins(b)
        # per metric, the value per bin: bps, pps, fps
        values = (b.bytes * 8.0 * rate * keep, packets * keep, keep)
        ids, present = self.combos.ids(self.classifier.codes(b))
        self._add_prefix(b0, b1, entry, ids, present, values)
        self._add_hosts(b0, b1, row, ids, present, values)
        if talkers:
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
        arrival = b.arrival
        first = np.where(np.isnan(b.first), arrival, b.first)
        last = np.where(np.isnan(b.last), arrival, b.last)
        np.minimum(last, arrival + cfg.future_bins * cfg.bin_seconds, out=last)
        np.minimum(first, last, out=first)
        if cfg.bin_seconds != 1.0:  # x / 1.0 == x: skip the divisions of 1-second bins
            first /= cfg.bin_seconds
            last /= cfg.bin_seconds
        b0 = np.floor(first).astype(np.int64)
        b0 -= self.prefix.base
        b1 = np.floor(last).astype(np.int64)
        b1 -= self.prefix.base
        nbins = (b1 - b0 + 1).astype(np.float64)
        late = b1 < 0
        partly = (b0 < 0) & ~late
        self.stats.late += int(np.count_nonzero(late))
        self.stats.partly_late += int(np.count_nonzero(partly))
        keep = np.divide(1.0, nbins)  # value per bin
        keep[late] = 0.0
        for col in (b0, b1):  # clip to the window (np.clip has a Python-level overhead)
            np.maximum(col, 0, out=col)
            np.minimum(col, w - 1, out=col)
        return b0, b1, keep

    def _add_prefix(
        self,
        b0: npt.NDArray[np.int64],
        b1: npt.NDArray[np.int64],
        entry: npt.NDArray[np.int64],
        ids: npt.NDArray[np.int64],
        present: npt.NDArray[np.int64],
        values: tuple[npt.NDArray[np.float64], ...],
    ) -> None:
        """delta[b0, entry, class] += v and delta[b1 + 1, ...] -= v for every class of each
        record.

        Records are summed per class set (combination of classes, a handful in practice)
        with one bincount per metric over the rows the batch touches, then the sums of the
        class sets are spread to their classes with one small matrix product."""
        win = self.prefix
        e = win.delta.shape[1]
        k = len(present)
        lo, hi = int(b0.min()), int(b1.max()) + 1  # logical rows touched (hi <= W: sink)
        per_row = e * k
        cell = entry * k
        cell += ids
        cell -= lo * per_row
        start = b0 * per_row
        start += cell
        stop = b1 * per_row
        stop += cell + per_row
        size = (hi - lo + 1) * per_row
        sums = np.empty((len(values), size))
        for j, v in enumerate(values):
            sums[j] = np.bincount(start, v, minlength=size)
            sums[j] -= np.bincount(stop, v, minlength=size)
        # (metrics, rows x entries, sets) @ (sets, classes) -> (rows, entries, classes, metrics)
        spread = np.matmul(sums.reshape(len(values), -1, k), self.combos.member[present])
        win.delta[win.rows(lo, hi + 1)] += spread.reshape(
            len(values), hi - lo + 1, e, -1
        ).transpose(1, 2, 3, 0)

    def _add_hosts(
        self,
        b0: npt.NDArray[np.int64],
        b1: npt.NDArray[np.int64],
        row: npt.NDArray[np.int64],
        ids: npt.NDArray[np.int64],
        present: npt.NDArray[np.int64],
        values: tuple[npt.NDArray[np.float64], ...],
    ) -> None:
        """hosts[b0, row, channel] += v and hosts[b1 + 1, row, channel] -= v for the channels
        of each record's classes, with one ``add.at`` over all channels."""
        win = self.hosts
        channels = win.delta.shape[2]
        offset = win.offsets()
        cell = row * channels
        start = offset.take(b0)
        start += cell
        stop = offset.take(b1 + 1)
        stop += cell
        flat: list[npt.NDArray[np.int64]] = []
        add: list[npt.NDArray[np.float64]] = []
        for ch, (_, metric) in enumerate(self.config.host_channels):
            counted = self.combos.channel[present, ch]
            if not counted.any():
                continue
            v = values[metric]
            if counted.all():  # every record of the batch (the total, say)
                s, t = start, stop
            else:
                sel = np.flatnonzero(counted.take(ids))
                s, t, v = start.take(sel), stop.take(sel), v.take(sel)
            flat += [s + ch, t + ch] if ch else [s, t]
            add += [v, -v]
        win.add(np.concatenate(flat), np.concatenate(add))

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
)
#: read too by the allowlist classes and the top talkers
_SOURCES = ("src_hi", "src_lo")


def _columns(b: FlowBatch, sel: npt.NDArray[np.intp], sources: bool) -> FlowBatch:
    """The records ``sel`` of a batch, with only the columns the rates read filled."""
    out = FlowBatch.empty(0)
    for name in _USED + _SOURCES if sources else _USED:
        setattr(out, name, getattr(b, name).take(sel))
    return out


class _Combos:
    """The class sets (bit codes of ``Classifier.codes``) seen so far, numbered as they come.

    Traffic has few distinct class sets, so counting per set and spreading the sums to the
    classes afterwards is much cheaper than counting every (record, class) pair."""

    def __init__(self, host_channels: tuple[tuple[int, int], ...]) -> None:
        self.number = np.full(1 << len(CLASSES), -1, dtype=np.int64)  # code -> set number
        self.codes: list[int] = []
        self.host_classes = np.array([c for c, _ in host_channels], dtype=np.int64)
        #: (sets, classes) 1.0 where a set has a class; (sets, channels) host channels
        self.member = np.zeros((0, len(CLASSES)))
        self.channel = np.zeros((0, len(host_channels)), dtype=bool)

    def ids(
        self, codes: npt.NDArray[np.uint16]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Per record, a number among the sets present in the batch; and those sets."""
        ids = self.number.take(codes)
        if ids.min() < 0:
            for code in np.unique(codes[ids < 0]).tolist():
                self.number[code] = len(self.codes)
                self.codes.append(code)
            bits = np.array(self.codes)[:, None] >> np.arange(len(CLASSES)) & 1
            self.member = bits.astype(np.float64)
            self.channel = bits[:, self.host_classes].astype(bool)
            ids = self.number.take(codes)
        present = np.flatnonzero(np.bincount(ids, minlength=len(self.codes)))
        if len(present) < len(self.codes):  # renumber among the sets present
            local = np.zeros(len(self.codes), dtype=np.int64)
            local[present] = np.arange(len(present))
            ids = local.take(ids)
        return ids, present
