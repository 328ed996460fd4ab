"""Anomaly verdicts: per-class rates against the baselines of the rate history.

At each evaluation the trailing averages of the scored classes (the rates the static
verdicts see, from the same RateKeeper counts) are compared with the level of the prefix's
anomaly rule (``5x p99``, ``p99 + 6 mad``) in the baseline of the hour slot of the event
time, never below the rule's floor. A class over it for the trigger time makes an anomaly
verdict. A slot without enough history has no level: the prefix keeps its static verdict
only, and says so (``data["anomaly"]``). The optional class-mix rule scores the log class
rates with a robust covariance fitted on the history (``MixModel``, fitted by
``history.mix``): a robust (Mahalanobis) distance over the chi-square level is anomalous.

``combine`` merges these with the static verdicts: a prefix whose static verdict is over
keeps it; otherwise an anomaly over replaces it (``monitor=True`` in monitor mode: recorded
as "would divert", never announced). Baselines are handed in as the rows of the history's
baselines table (``set_baselines``); detector/ does not read the history itself.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

import numpy as np
import numpy.typing as npt

from detector.contracts import Status, Verdict
from detector.prefixes import PrefixIndex
from detector.rates import RateKeeper
from detector.verdicts import EvalConfig, _runs, trailing_averages
from thresholds.model import CLASSES, METRICS, ThresholdSet

if TYPE_CHECKING:  # pandas and scipy load with the first baselines, not with the detector
    import pandas as pd

THIN = "not enough history"
MOVED_TOP = 3  # classes named in "moved"
UP = 3.0  # the mix rule needs a class this many conditional deviations above the others
F64 = npt.NDArray[np.float64]
_STATS = ("median", "mad", "p95", "p99")
_Slots = tuple[bool, dict[int, dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class MixModel:
    """Robust location and precision of the log class rates ``log1p(rate)`` of a prefix."""

    classes: tuple[str, ...]
    metric: str
    location: F64  # (k,)
    precision: F64  # (k, k): inverse of the robust covariance

    def distance2(self, rates: F64) -> F64:
        """Squared robust distance of each row of ``rates`` (n, k)."""
        d = np.log1p(np.maximum(rates, 0.0)) - self.location
        return np.asarray(np.einsum("nk,kj,nj->n", d, self.precision, d))

    def residuals(self, rates: F64) -> F64:
        """Standardised conditional residuals (n, k): how far each class is above (+) or
        below what the other classes predict for it, in its conditional deviations."""
        d = np.log1p(np.maximum(rates, 0.0)) - self.location
        return np.asarray((d @ self.precision) / np.sqrt(np.diag(self.precision)))

    def score(self, rates: F64) -> tuple[F64, npt.NDArray[np.bool_]]:
        """Squared robust distances of the rows of ``rates`` (n, k), and whether some class
        is ``UP`` conditional deviations above what the others predict (a mix change that
        matters is a class up; every class down together, as right after a start, is not)."""
        return self.distance2(rates), self.residuals(rates).max(axis=1) > UP


def slots_of(t: float, tz: str) -> tuple[int, int]:
    """(hour of day, weekday x 24 + hour) of event time ``t`` in zone ``tz``."""
    local = dt.datetime.fromtimestamp(t, ZoneInfo(tz))
    return local.hour, local.weekday() * 24 + local.hour


def _fmt(v: float) -> str:
    return f"{v:,.0f}"


class AnomalyEvaluator:
    """Anomaly verdicts of the prefixes of ``ts`` that have an anomaly rule or mix rule."""

    def __init__(
        self,
        ts: ThresholdSet,
        index: PrefixIndex,
        keeper: RateKeeper,
        config: EvalConfig,
        timezone: str = "UTC",
    ) -> None:
        self.ts, self.index, self.keeper, self.config = ts, index, keeper, config
        self.timezone = timezone
        self.entries = [
            i
            for i, p in enumerate(ts.policies)
            if p.anomaly.rule is not None or p.anomaly.mix is not None
        ]
        self.metric = {i: METRICS.index(ts.policies[i].anomaly.metric) for i in self.entries}
        self.scored = {
            i: ts.policies[i].anomaly.scored(ts.policies[i].thresholds) for i in self.entries
        }
        self.floor = {
            i: getattr(ts.policies[i].anomaly.floor, ts.policies[i].anomaly.metric) or 0.0
            for i in self.entries
        }
        members = [list(index.members[i]) for i in self.entries]
        self._met = np.asarray([self.metric[i] for i in self.entries], dtype=np.int64)
        rows = sorted({r for m in members for r in m})
        self._rows = np.asarray(rows, dtype=np.int64)
        where = {r: k for k, r in enumerate(rows)}
        self._pos = np.asarray([where[r] for m in members for r in m], dtype=np.int64)
        self._starts = np.cumsum([0] + [len(m) for m in members[:-1]]).astype(np.int64)
        self._identity = bool(
            len(self._pos) == len(self.entries)
            and (self._pos == np.arange(len(self._pos))).all()
            and (self._rows == np.asarray(self.entries)).all()
        )
        #: baselines by source (None: the default history): {(prefix, channel): (weekly,
        #: {slot: row})}, a row being {status, reason, median, mad, p95, p99}
        self._tables: dict[str | None, dict[tuple[str, str], _Slots]] = {}
        self.mix: dict[str, MixModel] = {}
        self._key: tuple[Any, ...] | None = None
        self.levels = np.full((len(ts.policies), len(CLASSES)), np.nan)
        self.stats = np.full_like(self.levels, np.nan)  # the rule's statistic (p99, ...)
        self.medians = np.full_like(self.levels, np.nan)
        self.status: dict[int, str] = {}  # "ok" or "not enough history (...)" per entry
        self.reported: dict[int, str] = {}
        #: timeline lines of status changes since the last ``take_lines``
        self.lines: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ baselines
    def set_baselines(
        self,
        table: pd.DataFrame,
        source: str | None = None,
        mix: dict[str, MixModel] | None = None,
        timezone: str | None = None,
    ) -> None:
        """Take the baselines table of a history (its rows: prefix, channel, kind, slot,
        status, reason, median, mad, p95, p99) and, for the default history, the mix models
        and the time zone of its slots."""
        if timezone is not None:
            self.timezone = timezone
        prefixes = {str(self.ts.policies[i].prefix) for i in self.entries}
        rows = table[table["prefix"].isin(prefixes)] if len(table) else table
        out: dict[tuple[str, str], _Slots] = {}
        cols = ["prefix", "channel", "kind", "slot", "status", "reason", *_STATS]
        for r in rows[cols].itertuples(index=False, name=None) if len(rows) else ():
            _, slots = out.setdefault((str(r[0]), str(r[1])), (r[2] == "dow_hour", {}))
            slots[int(r[3])] = dict(zip(cols[4:], r[4:], strict=True))
        self._tables[source] = out
        if mix is not None and source is None:
            self.mix = dict(mix)
        self._key = None

    def take_baselines(self, other: AnomalyEvaluator) -> None:
        """Keep the baselines, mix models and time zone of the evaluator this one replaces
        (a reload of the thresholds file)."""
        self.timezone, self.mix = other.timezone, dict(other.mix)
        self._tables = dict(other._tables)
        self._key = None

    def _refresh_levels(self, t: float) -> None:
        hour, dow = slots_of(t, self.timezone)
        key = (hour, dow)
        if key == self._key:
            return
        self._key = key
        self.levels[:], self.stats[:], self.medians[:] = np.nan, np.nan, np.nan
        for i in self.entries:
            p = self.ts.policies[i]
            table = self._tables.get(p.anomaly.baselines, {})
            reasons = []
            for cls in self.scored[i]:
                channel = f"{cls}.{p.anomaly.metric}"
                rows = table.get((str(p.prefix), channel))
                why = self._one(i, cls, rows, hour, dow)
                if why:
                    reasons.append(f"{channel}: {why}")
            ok = bool(np.isfinite(self.medians[i]).any())
            self.status[i] = "ok" if ok else f"{THIN} ({'; '.join(reasons) or 'no class scored'})"
            if ok and reasons:
                self.status[i] = "ok; " + f"{THIN}: " + "; ".join(reasons)

    def _one(self, i: int, cls: str, rows: _Slots | None, hour: int, dow: int) -> str:
        """Fill the level of (entry, class) for the slot; the reason if it has none."""
        if rows is None:
            return "no history"
        r = rows[1].get(dow if rows[0] else hour)
        if r is None:
            return "no samples at this time of day"
        if r["status"] != "ok":
            return str(r["reason"])
        rule = self.ts.policies[i].anomaly.rule
        c = CLASSES.index(cls)
        self.medians[i, c] = float(r["median"])
        if rule is not None:
            self.stats[i, c] = float(r[rule.stat])
            level = rule.level(float(r[rule.stat]), float(r["mad"]))
            self.levels[i, c] = max(level, self.floor[i], 1e-9)  # never a level of zero
        return ""

    # ------------------------------------------------------------------ evaluation
    def _averages(self, t: float) -> F64:
        """Trailing averages of the horizon as the static verdicts, of the entries with
        rules in their own metric: (h, E', C), E' in the order of ``entries``."""
        cfg = self.config
        end = self.keeper.row_of_time(t)
        start = max(0, end - cfg.horizon_bins - cfg.average_bins + 1)
        ent = np.asarray(self.entries)
        every = len(self._rows) == len(self.ts.policies)
        counts = self.keeper.prefix.counts(start, end, None if every else self._rows)
        one = len(set(self._met.tolist())) == 1
        if one:  # the usual case: one metric for all, picked before summing
            counts = counts[..., int(self._met[0])]
        if not self._identity:
            # each entry's members summed (covering entries include the entries inside)
            counts = np.add.reduceat(counts[:, self._pos], self._starts, axis=1)
        agg = counts if one else np.moveaxis(counts[:, np.arange(len(ent)), :, self._met], 0, 1)
        rates = trailing_averages(agg, cfg.average_bins, self.keeper.config.bin_seconds)
        return rates[-cfg.horizon_bins :]

    def combine(self, t: float, verdicts: list[Verdict]) -> list[Verdict]:
        """The static verdicts (in the order of ``ts.policies``) with the anomaly rules."""
        if not self.entries or not self.keeper.started:
            return verdicts
        self._refresh_levels(t)
        rates = self._averages(t)
        if rates.shape[0] == 0:
            return verdicts
        out = list(verdicts)
        hot = set()
        quiet = self._quiet(rates)
        for k, i in enumerate(self.entries):
            static = verdicts[i]
            if k in quiet:  # no class over its level, no mix rule: the static verdict
                under, recent, moved = quiet[k]
                a = self.ts.policies[i].anomaly
                data: dict[str, Any] = {"status": self.status[i], "mode": a.mode}
                if moved:
                    data["moved"] = moved
                extra: dict[str, Any] = {}
                if a.mode == "divert":
                    extra = {"under": static.under and under, "recent": static.recent or recent}
                v = dataclasses.replace(static, data={**static.data, "anomaly": data}, **extra)
            else:
                v = self._entry(t, i, rates[:, k], static)
            out[i] = v
            if v.status is Status.OVER and v.vector == "anomaly" and not v.monitor:
                hot.add(i)
            if self.status[i] != self.reported.get(i):
                self.reported[i] = self.status[i]
                self.lines.append(
                    {"time": t, "type": "anomaly", "prefix": v.prefix, "status": self.status[i]}
                )
        self.keeper.hot |= hot
        return out

    def _quiet(self, rate: F64) -> dict[int, tuple[bool, bool, list[list[Any]]]]:
        """All entries at once: those (by position in ``entries``) with no class over its
        level in the horizon and no mix rule, with their under and recent flags and the
        classes that moved most (the rest go through ``_entry``)."""
        ent = np.asarray(self.entries)
        level = self.levels[ent]
        over = rate > level
        u = self.config.under_bins
        clear = np.array([self.ts.policies[i].timing.clear_ratio for i in self.entries])
        under = ~(rate[-u:] > level * clear[:, None]).any(axis=(0, 2))
        recent = over[-u:].any(axis=(0, 2))
        calm = ~over.any(axis=(0, 2))
        moved = rate[-1] / np.maximum(self.medians[ent], 1.0)  # NaN: no baseline
        order = np.argsort(-np.nan_to_num(moved, nan=-1.0), axis=1)[:, :MOVED_TOP]
        out: dict[int, tuple[bool, bool, list[list[Any]]]] = {}
        for k in np.flatnonzero(calm).tolist():
            i = self.entries[k]
            if (
                self.ts.policies[i].anomaly.mix is not None
                and str(self.ts.policies[i].prefix) in self.mix
            ):
                continue
            row = moved[k]
            top = [[CLASSES[c], round(float(row[c]), 1)] for c in order[k] if np.isfinite(row[c])]
            out[k] = (bool(under[k]), bool(recent[k]), top)
        return out

    def take_lines(self) -> list[dict[str, Any]]:
        lines, self.lines = self.lines, []
        return lines

    def _entry(self, t: float, i: int, rate: F64, static: Verdict) -> Verdict:
        """The verdict of entry i from its rates (h, C)."""
        p = self.ts.policies[i]
        a = p.anomaly
        level = self.levels[i]
        over = rate > level  # NaN: False
        rule_text = a.rule.text if a.rule is not None else ""
        mix = self._mix(i, rate) if a.mix is not None else None
        if mix is not None:
            over = np.concatenate([over, mix[0][:, None]], axis=1)
        u = self.config.under_bins
        run, end = _runs(np.asarray(over.any(axis=1))[:, None])
        run_n, end_row = int(run[0]), int(end[0])
        clear = p.timing.clear_ratio
        a_under = not (rate[-u:] > level * clear).any()
        a_recent = bool(over[-u:].any())
        peak = max(0, end_row) if run_n else rate.shape[0] - 1
        median = self.medians[i]
        moved_all = rate[peak] / np.maximum(median, 1.0)  # NaN: no baseline
        moved = [
            [CLASSES[c], round(float(moved_all[c]), 1)]
            for c in np.argsort(-np.nan_to_num(moved_all, nan=-1.0))[:MOVED_TOP]
            if np.isfinite(moved_all[c])
        ]
        data: dict[str, Any] = {"status": self.status[i], "mode": a.mode}
        if moved:
            data["moved"] = moved
        if mix is not None:
            data["score"] = round(float(np.sqrt(mix[1][peak])), 2)
            data["score_level"] = round(float(np.sqrt(mix[2])), 2)
        divert = a.mode == "divert"
        monitor = p.mode == "monitor" or not divert
        if static.status is Status.OVER or run_n == 0:
            extra: dict[str, Any] = {}
            if divert:  # an anomaly above its clear level holds a diversion too
                extra = {"under": static.under and a_under, "recent": static.recent or a_recent}
            return dataclasses.replace(static, data={**static.data, "anomaly": data}, **extra)
        window = slice(max(0, end_row - run_n + 1), end_row + 1)
        ratio = np.where(over[window, : len(CLASSES)], rate[window] / level, 0.0)
        ratio = np.nan_to_num(ratio, nan=0.0)
        metric = a.metric
        if ratio.max() > 0:
            c = int(np.unravel_index(int(np.argmax(ratio)), ratio.shape)[1])
            cls = CLASSES[c]
            value = float(rate[window, c].max())
            threshold = float(level[c])
            base = f"{a.rule.stat if a.rule else 'p99'} {_fmt(float(self.stats[i, c]))}"
            rule = f"anomaly {cls}.{metric} > {rule_text} ({base})"
        else:  # the class mix alone
            cls = "total"
            value = float(np.sqrt(mix[1][window].max())) if mix is not None else 0.0
            threshold = float(np.sqrt(mix[2])) if mix is not None else 0.0
            top = [CLASSES.index(x) for x in self._mix_top(i, rate[peak])]
            rule = f"anomaly class mix > {a.mix:.1%} ({', '.join(CLASSES[x] for x in top)})"
        bins = max(run_n - (self.config.average_bins - 1), 1)
        first = self.keeper.row_of_time(t) - rate.shape[0] + window.start
        since = (self.keeper.prefix.base + first - (self.config.average_bins - 1)) * (
            self.keeper.config.bin_seconds
        )
        return Verdict(
            time=t,
            prefix=str(p.prefix),
            status=Status.OVER,
            over_seconds=bins * self.keeper.config.bin_seconds,
            under=(static.under and a_under) if divert else static.under,
            recent=static.recent or a_recent,
            vector="anomaly",
            rule=rule,
            scope="prefix",
            klass=cls,
            metric=metric,
            value=value,
            threshold=threshold,
            monitor=monitor,
            since=since,
            data={**static.data, "anomaly": data},
        )

    def _mix(self, i: int, rate: F64) -> tuple[npt.NDArray[np.bool_], F64, float] | None:
        """Over mask, squared distances (h,) and the squared level of the mix rule."""
        p = self.ts.policies[i]
        model = self.mix.get(str(p.prefix))
        if model is None or model.metric != p.anomaly.metric or p.anomaly.mix is None:
            return None
        cols = [CLASSES.index(c) for c in model.classes]
        d2, up = model.score(rate[:, cols])
        from scipy.stats import chi2

        level = float(chi2.ppf(p.anomaly.mix, df=len(cols)))
        total = rate[:, CLASSES.index("total")]
        return (d2 > level) & up & (total > self.floor[i]), d2, level

    def _mix_top(self, i: int, rate: F64) -> list[str]:
        """The classes most above what the other classes predict, largest first."""
        model = self.mix[str(self.ts.policies[i].prefix)]
        cols = [CLASSES.index(c) for c in model.classes]
        z = model.residuals(rate[None, cols])[0]
        return [model.classes[k] for k in np.argsort(-z)[:MOVED_TOP] if z[k] > UP]
