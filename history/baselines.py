"""Baselines: what is normal for a prefix, class and metric at this hour (and weekday).

Learned from the history over the last ``days`` before ``now`` (data time): per prefix,
channel (class.metric) and slot (hour of day, or day of week x hour once the history spans
``weekly_after_days``), the median, the robust deviation (1.4826 x MAD), p95 and p99 of the
samples, their number and the number of distinct days they come from. Samples are the
per-minute peaks of the 1 min roll-up (``source: minutes``) or the trailing ``average``-bin
means of the 1 s rates (``seconds``: what the detector compares with its thresholds).
Diverted incidents (the ``excluded`` periods) are left out. A slot with too few samples, too
few days or a gap is ``not_enough_history`` with its reason: never a baseline of zeros.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from history.config import DAY, BaselineConfig
from history.rollup import CHANNELS, trailing
from history.store import HistoryStore

MAD_SCALE = 1.4826  # MAD x this estimates the standard deviation of normal data
OK = "ok"
THIN = "not_enough_history"


@dataclass(frozen=True, slots=True)
class Baseline:
    prefix: str
    channel: str
    kind: str  # "hour" (slot = hour of day) or "dow_hour" (slot = weekday x 24 + hour)
    slot: int
    n: int
    days: int
    median: float
    mad: float  # robust deviation: 1.4826 x median absolute deviation
    p95: float
    p99: float
    computed_at: float


@dataclass(frozen=True, slots=True)
class NotEnoughHistory:
    prefix: str
    channel: str
    slot: int
    reason: str

    def __str__(self) -> str:
        return f"{self.prefix} {self.channel} slot {self.slot}: not enough history ({self.reason})"


CHUNK_PREFIXES = 25  # prefixes whose samples are in memory at once during a refresh


def channels_of(cfg: BaselineConfig) -> list[str]:
    return [c for c in CHANNELS if c.split(".")[1] in cfg.metrics]


def samples(
    store: HistoryStore,
    cfg: BaselineConfig,
    now: float,
    prefixes: Sequence[str] | None = None,
    channels: Sequence[str] | None = None,
    start: float | None = None,
) -> pd.DataFrame:
    """Long-form samples of the window [max(start, now - days), now): t, prefix and one
    column per channel (NaN = none), without the excluded (diverted) periods."""
    chans = list(channels) if channels is not None else channels_of(cfg)
    t0 = max(now - cfg.days * DAY, -np.inf if start is None else start)
    if cfg.source == "minutes":
        df = store.minutes(t0, now, prefixes, chans, stats=("max",))
        df = df.rename(columns={f"{c}:max": c for c in chans}).drop(columns=["n"])
    else:
        names = list(prefixes) if prefixes is not None else store.prefixes()
        parts = []
        for chunk in store.iter_seconds(t0, now, names, chans):
            t = np.repeat(chunk.times, len(names))
            flat = trailing(chunk.values, cfg.average).reshape(-1, len(chans))
            keep = ~np.isnan(flat).all(axis=1)
            part = pd.DataFrame(flat[keep], columns=chans)
            part.insert(
                0, "prefix", np.tile(np.asarray(names, dtype=object), len(chunk.times))[keep]
            )
            part.insert(0, "t", t[keep])
            parts.append(part)
        df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["t", "prefix"])
    df = df[(df["t"] >= t0) & (df["t"] < now)]
    for prefix, a, b, _ in store.excluded():
        df = df[~((df["prefix"] == prefix) & (df["t"] >= a) & (df["t"] <= b))]
    return df.reset_index(drop=True)


def _slots(t: pd.Series, tz: str, weekly: bool) -> tuple[np.ndarray, np.ndarray]:
    """Slot and local calendar day of each sample time."""
    local = pd.to_datetime(t.to_numpy(dtype=np.float64), unit="s", utc=True).tz_convert(tz)
    hour = np.asarray(local.hour, dtype=np.int64)
    slot = np.asarray(local.dayofweek, dtype=np.int64) * 24 + hour if weekly else hour
    day = np.asarray(local.normalize().asi8 // 10**9, dtype=np.int64)
    return slot, day


def compute(
    store: HistoryStore,
    cfg: BaselineConfig,
    now: float,
    prefixes: Sequence[str] | None = None,
    start: float | None = None,
) -> pd.DataFrame:
    """Baselines of every prefix x channel x slot, as rows of the store's baselines table,
    learned from [max(start, now - days), now). Computed ``CHUNK_PREFIXES`` prefixes at a
    time, so memory stays bounded whatever the number of prefixes (a week of 1,000 prefixes
    read at once needs more than 24 GB in pandas)."""
    names = list(prefixes) if prefixes is not None else store.prefixes()
    if len(names) > CHUNK_PREFIXES:
        parts = [
            compute(store, cfg, now, names[i : i + CHUNK_PREFIXES], start)
            for i in range(0, len(names), CHUNK_PREFIXES)
        ]
        return pd.concat([p for p in parts if not p.empty] or parts[:1], ignore_index=True)
    prefixes = names
    chans = channels_of(cfg)
    df = samples(store, cfg, now, prefixes, chans, start)
    cols = [
        "computed_at", "prefix", "kind", "slot", "channel", "status", "reason",
        "n", "days", "median", "mad", "p95", "p99", "from_t", "to_t",
    ]  # fmt: skip
    if df.empty:
        return pd.DataFrame(columns=cols)
    first = float(df["t"].min())
    weekly = now - first >= cfg.weekly_after_days * DAY
    kind = "dow_hour" if weekly else "hour"
    slot, day = _slots(df["t"], cfg.timezone, weekly)
    df = df.assign(slot=slot, day=day)
    # how many samples each slot could have had since the history began
    step = 60.0 if cfg.source == "minutes" else store.bin_seconds
    grid = pd.Series(np.arange(np.floor(first / step) * step, now, step))
    gslot, _ = _slots(grid, cfg.timezone, weekly)
    expected = np.bincount(gslot, minlength=168 if weekly else 24)
    keys = ["prefix", "slot"]
    g = df.groupby(keys)
    q = g[chans].quantile([0.5, 0.95, 0.99])  # index (prefix, slot, q)
    n = g[chans].count()
    days = df.melt(id_vars=[*keys, "day"], value_vars=chans, var_name="channel").dropna()
    ndays = days.groupby([*keys, "channel"])["day"].nunique()
    med = q.xs(0.5, level=2)
    dev = (df.set_index(keys)[chans] - med.reindex(df.set_index(keys).index)).abs()
    mad = dev.groupby(level=[0, 1]).median() * MAD_SCALE
    long = pd.DataFrame(
        {
            "n": n.stack(),
            "median": med.stack(),
            "mad": mad.stack(),
            "p95": q.xs(0.95, level=2).stack(),
            "p99": q.xs(0.99, level=2).stack(),
        }
    )
    long.index = long.index.set_names([*keys, "channel"])
    long = long.join(ndays.rename("days")).reset_index()
    long["days"] = long["days"].fillna(0).astype(np.int64)
    long["n"] = long["n"].astype(np.int64)
    cover = long["n"] / np.maximum(expected[long["slot"].to_numpy()], 1)
    reasons = np.full(len(long), "", dtype=object)
    thin_n = long["n"] < cfg.min_samples
    thin_d = long["days"] < cfg.min_days
    gap = cover < cfg.min_coverage
    for mask, text in (
        (thin_n, long["n"].astype(str) + f" samples, need {cfg.min_samples}"),
        (thin_d, long["days"].astype(str) + f" days, need {cfg.min_days}"),
        (gap, "gap: " + (cover * 100).round(0).astype(int).astype(str) + "% of the slot covered"),
    ):
        m = mask.to_numpy()
        reasons[m] = np.where(reasons[m] == "", "", reasons[m] + "; ") + text[m].to_numpy()
    bad = (thin_n | thin_d | gap).to_numpy()
    long["status"] = np.where(bad, THIN, OK)
    long["reason"] = reasons
    long["kind"] = kind
    long["computed_at"] = now
    long["from_t"] = max(first, now - cfg.days * DAY)
    long["to_t"] = now
    return long[cols]


def refresh(
    store: HistoryStore,
    cfg: BaselineConfig,
    now: float,
    force: bool = False,
) -> pd.DataFrame:
    """Recompute and store the baselines if they are older than ``cfg.refresh`` (data
    time) or ``force``; returns the baselines in force."""
    current = store.baselines()
    if not force and len(current) and now - float(current["computed_at"].max()) < cfg.refresh:
        return current
    fresh = compute(store, cfg, now)
    store.save_baselines(fresh)
    return fresh


def lookup(
    table: pd.DataFrame, prefix: str, channel: str, t: float, tz: str = "UTC"
) -> Baseline | NotEnoughHistory:
    """The baseline of a prefix and channel for the slot of time ``t``."""
    rows = table[(table["prefix"] == prefix) & (table["channel"] == channel)]
    if rows.empty:
        return NotEnoughHistory(prefix, channel, -1, "no history of this prefix and channel")
    weekly = bool((rows["kind"] == "dow_hour").any())
    slot = int(_slots(pd.Series([t]), tz, weekly)[0][0])
    row = rows[rows["slot"] == slot]
    if row.empty:
        return NotEnoughHistory(prefix, channel, slot, "no samples at this time of day")
    r = row.iloc[0]
    if r["status"] != OK:
        return NotEnoughHistory(prefix, channel, slot, str(r["reason"]))
    return Baseline(
        prefix,
        channel,
        str(r["kind"]),
        slot,
        int(r["n"]),
        int(r["days"]),
        float(r["median"]),
        float(r["mad"]),
        float(r["p95"]),
        float(r["p99"]),
        float(r["computed_at"]),
    )
