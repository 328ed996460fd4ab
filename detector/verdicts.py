"""Verdicts: static thresholds per class on prefix totals and per host, and carpet bombing.

At each evaluation time the rates are the trailing ``average`` of the bins; a prefix is
over while some bin of the horizon is over a threshold. Because records arrive late
(active timeouts), the newest bins are still filling: counts only grow as records arrive,
so "over" is safe to call early, and the run of over bins is measured in data time, not
in evaluation time. "Under" needs every bin of the under window below the clear level.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from detector.contracts import Status, Verdict
from detector.prefixes import PrefixIndex
from detector.rates import PPS, RateKeeper
from thresholds.model import CLASSES, METRICS, VECTOR_OF_CLASS, ThresholdSet

AMPLIFICATION_NAMES = {
    53: "dns",
    123: "ntp",
    389: "cldap",
    11211: "memcached",
    1900: "ssdp",
    19: "chargen",
    161: "snmp",
    111: "portmap",
    137: "netbios",
    3702: "wsd",
    5353: "mdns",
    520: "rip",
}


@dataclass(slots=True)
class EvalConfig:
    average_bins: int = 5
    horizon_bins: int = 64  # over runs are looked for this far back (covers export delay)
    under_bins: int = 45  # "under" = no bin above the clear level this far back


def host_channels(ts: ThresholdSet) -> tuple[tuple[int, int], ...]:
    """Host counters the threshold set needs: pps of total and of every class with a
    threshold (to tell one host from a carpet and to find the attacked subnets), then every
    (class, metric) that has a host threshold somewhere (bps and pps only)."""
    chans = [(0, PPS)]
    for p in ts.policies:
        for cls in p.thresholds:
            if (CLASSES.index(cls), PPS) not in chans:
                chans.append((CLASSES.index(cls), PPS))
    for p in ts.policies:
        for cls, limit in p.host_thresholds.items():
            for m, v in enumerate(limit.as_tuple()[:2]):
                ch = (CLASSES.index(cls), m)
                if v is not None and ch not in chans:
                    chans.append(ch)
    return tuple(chans)


class Evaluator:
    def __init__(
        self, ts: ThresholdSet, index: PrefixIndex, keeper: RateKeeper, config: EvalConfig
    ) -> None:
        self.ts, self.index, self.keeper, self.config = ts, index, keeper, config
        e = len(ts.policies)
        self.limits = np.full((e, len(CLASSES), len(METRICS)), np.nan)
        for i, p in enumerate(ts.policies):
            for cls, limit in p.thresholds.items():
                for m, v in enumerate(limit.as_tuple()):
                    if v is not None:
                        self.limits[i, CLASSES.index(cls), m] = v
        self.clear = np.array([p.timing.clear_ratio for p in ts.policies])
        chans = keeper.config.host_channels
        self.host_limits = np.full((index.rows, len(chans)), np.nan)
        for i, p in enumerate(ts.policies):
            rows = slice(index.row_base[i], index.row_base[i] + index.row_count[i])
            for k, (c, m) in enumerate(chans):
                host_limit = p.host_thresholds.get(CLASSES[c])
                v = host_limit.as_tuple()[m] if host_limit is not None else None
                if v is not None:
                    self.host_limits[rows, k] = v
        self.member_rows: list[npt.NDArray[np.int64]] = [
            np.concatenate(
                [
                    np.arange(index.row_base[j], index.row_base[j] + index.row_count[j])
                    for j in index.members[i]
                ]
            )
            for i in range(e)
        ]
        # smallest host threshold of each entry's hosts, per host channel (inf: none)
        self.host_min = np.array(
            [
                np.nan_to_num(np.nanmin(self.host_limits[r], axis=0, initial=np.inf), nan=np.inf)
                if len(r)
                else np.full(len(chans), np.inf)
                for r in self.member_rows
            ]
        )
        self._span = (0, 0)
        self._host_bins = np.zeros((0, 0, len(chans)))
        #: each entry's peak over the horizon of its averaged rates, (E, C, M), of the last
        #: evaluation (what /status and /metrics show)
        self.peak = np.zeros((e, len(CLASSES), len(METRICS)))

    def _averages(self, counts: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        cfg = self.config
        out = trailing_averages(counts, cfg.average_bins, self.keeper.config.bin_seconds)
        return out[-cfg.horizon_bins :]

    def evaluate(self, t: float) -> list[Verdict]:
        cfg = self.config
        end = self.keeper.row_of_time(t)
        start = max(0, end - cfg.horizon_bins - cfg.average_bins + 1)
        self._span = (start, end)
        counts = self.keeper.prefix.counts(start, end)
        agg = np.stack([counts[:, m].sum(axis=1) for m in self.index.members], axis=1)
        avg = self._averages(agg)  # (h, E, C, M)
        if avg.shape[0]:
            self.peak = np.maximum(avg.max(axis=0), 0.0)
        over = avg > self.limits  # NaN limits compare False
        ratio = np.where(over, avg / self.limits, 0.0)
        above_clear = avg > self.limits * self.clear[:, None, None]
        run_p, peak_p = _runs(np.asarray(over.any(axis=(2, 3))))
        u = cfg.under_bins
        chans = self.keeper.config.host_channels
        peak_rate = np.stack([avg[:, :, c, m].max(axis=0) for c, m in chans], axis=1)  # (E, K)
        verdicts = []
        for i in range(len(self.ts.policies)):
            host = None
            # a host can only be over (or above its clear level) if its prefix's rate of the
            # class is: otherwise the host counters are not even looked at
            reach = peak_rate[i] >= self.host_min[i] * self.clear[i]
            if run_p[i] or reach.any():
                host = self._hosts(i)
            under = not above_clear[-u:, i].any()
            recent = bool(over[-u:, i].any())
            run_h = host_end = np.zeros(0, dtype=np.int64)
            if host is not None:
                _, hover, hclear = host
                under = under and not hclear[-u:].any()
                recent = recent or bool(hover[-u:].any())
                run_h, host_end = _runs(np.asarray(hover.any(axis=2)))
            verdicts.append(
                self._verdict(
                    t, i, run_p[i], peak_p[i], ratio, avg, host, run_h, host_end, under, recent
                )
            )
        self.keeper.hot = {i for i, v in enumerate(verdicts) if v.status is Status.OVER}
        return verdicts

    def _hosts(
        self, i: int
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
        """Averages, over and above-clear masks of the hosts of entry i: (h, rows, K)."""
        rows = self.member_rows[i]
        counts = self.keeper.hosts.counts(*self._span, rows)
        self._host_bins = counts[-self.config.horizon_bins :]  # (h, rows, K) per-bin counts
        havg = self._averages(counts)
        limits = self.host_limits[rows]
        return havg, havg > limits, havg > limits * self.clear[i]

    def _verdict(
        self,
        t: float,
        i: int,
        run_p: int,
        peak_row: int,
        ratio: npt.NDArray[np.float64],
        avg: npt.NDArray[np.float64],
        host: tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_], npt.NDArray[np.bool_]] | None,
        run_h: npt.NDArray[np.int64],
        host_end: npt.NDArray[np.int64],
        under: bool,
        recent: bool,
    ) -> Verdict:
        p = self.ts.policies[i]
        base = {
            "time": t,
            "prefix": str(p.prefix),
            "under": under,
            "recent": recent,
            "monitor": p.mode == "monitor",
        }
        host_run = int(run_h.max()) if len(run_h) else 0
        if run_p == 0 and host_run == 0:
            return Verdict(status=Status.NORMAL, **base)  # type: ignore[arg-type]
        rows = self.member_rows[i]
        if host is not None and host_run >= run_p:
            havg = host[0]
            j = int(np.argmax(run_h))
            end_row = int(host_end[j])
            hrun = slice(max(0, end_row - host_run + 1), end_row + 1)
            r = int(rows[j])
            hratio = np.nan_to_num(havg[:, j] / self.host_limits[r], nan=0.0)
            k = int(np.argmax(hratio)) % havg.shape[2]
            c, m = self.keeper.config.host_channels[k]
            limit = float(self.host_limits[r, k])
            cls = CLASSES[c]
            return Verdict(
                status=Status.OVER,
                over_seconds=self._duration(host_run),
                vector=self._vector(cls, i),
                rule=f"host {cls}.{METRICS[m]} > {_fmt(limit)}",
                scope="host",
                klass=cls,
                metric=METRICS[m],
                value=float(havg[:, j, k].max()),
                threshold=limit,
                host=self.index.host_address(r),
                subnets=self._subnets(i, c, hrun),
                since=self._run_start(hrun, havg.shape[0]),
                **base,  # type: ignore[arg-type]
            )
        run = slice(max(0, peak_row - run_p + 1), peak_row + 1)
        window = ratio[run, i]
        flat = int(np.argmax(window.max(axis=0)))
        c, m = (int(x) for x in np.unravel_index(flat, window.shape[1:]))
        cls = CLASSES[c]
        limit = float(self.limits[i, c, m])
        scope, vector = "prefix", self._vector(cls, i)
        if self._spread(c, run, p.carpet_min_hosts):
            scope, vector = "carpet", "carpet_bombing"
        return Verdict(
            status=Status.OVER,
            over_seconds=self._duration(run_p),
            vector=vector,
            rule=f"{scope} {cls}.{METRICS[m]} > {_fmt(limit)}",
            scope=scope,
            klass=cls,
            metric=METRICS[m],
            value=float(avg[run, i, c, m].max()),
            threshold=limit,
            subnets=self._subnets(i, c, run),
            since=self._run_start(run, avg.shape[0]),
            **base,  # type: ignore[arg-type]
        )

    def _run_start(self, run: slice, rows: int) -> float:
        """Data time of the first bin feeding a run of trailing averages (row r of the
        ``rows`` averages is logical window row end - rows + r)."""
        first = self._span[1] - rows + int(run.start or 0) - (self.config.average_bins - 1)
        return (self.keeper.prefix.base + first) * self.keeper.config.bin_seconds

    def _duration(self, run: int) -> float:
        """Data seconds over a threshold from a run of over averages: a trailing average of
        A bins stays over A - 1 bins after a burst, so those bins are not counted (a 6-s
        burst is over for 6 s, not 10)."""
        if run <= 0:
            return 0.0
        return max(run - (self.config.average_bins - 1), 1) * self.keeper.config.bin_seconds

    def _host_pps(self, c: int, run: slice) -> npt.NDArray[np.float64]:
        """Packets per host in class c (its channel, else total) over the bins of a run.
        Valid after ``_hosts(i)`` ran in this evaluation."""
        chans = self.keeper.config.host_channels
        k = chans.index((c, PPS)) if (c, PPS) in chans else 0
        return self._host_bins[run, :, k].sum(axis=0)

    def _spread(self, c: int, run: slice, min_hosts: int) -> bool:
        """Carpet bombing: the class's traffic is spread over many hosts, none dominant."""
        per_host = self._host_pps(c, run)
        total = per_host.sum()
        if total <= 0:
            return False
        hit = int((per_host > 0).sum())
        return hit >= min_hosts and per_host.max() / total < 0.25

    def _subnets(self, i: int, c: int, run: slice) -> tuple[str, ...]:
        ann = self.ts.policies[i].announce
        if ann.mode != "subnets":
            return ()
        per_host = self._host_pps(c, run)
        total = per_host.sum()
        if total <= 0:
            return ()
        rows = self.member_rows[i]
        length = ann.subnet_length_v4
        shares: dict[str, float] = {}
        for r, v in zip(rows[per_host > 0].tolist(), per_host[per_host > 0].tolist(), strict=True):
            net = self.index.subnet_of_row(r, length)
            if net is not None:
                shares[net] = shares.get(net, 0.0) + v / total
        hit = sorted(n for n, s in shares.items() if s >= ann.subnet_share)
        if not hit and shares:
            hit = [max(shares, key=lambda n: shares[n])]
        return tuple(hit)

    def _vector(self, cls: str, i: int) -> str:
        vector = VECTOR_OF_CLASS[cls]
        if cls == "amplification":
            port = self.keeper.top_amplification_port(i)
            if port in AMPLIFICATION_NAMES:
                return f"amplification_{AMPLIFICATION_NAMES[port]}"
        return vector


def trailing_averages(
    counts: npt.NDArray[np.float64], average_bins: int, bin_seconds: float
) -> npt.NDArray[np.float64]:
    """Trailing averages (per second) over ``average_bins`` bins along axis 0 of ``counts``,
    for every bin from the ``average_bins``-th on (all of them if there are fewer)."""
    a = average_bins
    cum = np.concatenate([np.zeros((1, *counts.shape[1:])), np.cumsum(counts, axis=0)])
    idx = np.arange(min(a, cum.shape[0] - 1), cum.shape[0])
    return np.asarray((cum[idx] - cum[np.maximum(idx - a, 0)]) / (a * bin_seconds))


def _runs(mask: npt.NDArray[np.bool_]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Longest run of True along axis 0 per column, and the row where it ends."""
    run = np.zeros(mask.shape[1:], dtype=np.int64)
    best = np.zeros_like(run)
    best_end = np.zeros_like(run)
    for r in range(mask.shape[0]):
        run = np.where(mask[r], run + 1, 0)
        longer = run > best
        best = np.where(longer, run, best)
        best_end = np.where(longer, r, best_end)
    return best, best_end


def _fmt(v: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= scale:
            return f"{v / scale:g}{unit}"
    return f"{v:g}"
