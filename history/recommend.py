"""Recommend a thresholds file from the history, for review by the NOC.

Per prefix and class (packets/s of every class, bits/s of ``total``): the ``percentile`` of
the per-minute peaks of the 1 s rates over the window, outside diverted incidents, times a
``margin``, never below a static floor, rounded up to two significant digits. Each value is
commented with where it came from and how many minutes of the history were above it. A class
with too little history keeps the base file's threshold ("not enough history"), one without
any traffic in the history likewise. Everything else (timing, announce, host thresholds,
which the per-prefix history cannot learn) is copied from the base file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import yaml

from history.baselines import samples
from history.config import DAY, BaselineConfig
from history.store import HistoryStore
from thresholds.model import CLASSES
from thresholds.units import format_rate

#: floors: a proposal is never below these (a quiet class must not alarm on noise)
FLOORS = {"pps": 1000.0, "bps": 10e6}
PER_PREFIX_KEYS = ("name", "mode", "timing", "announce", "host_thresholds", "carpet_min_hosts")


@dataclass(frozen=True, slots=True)
class Proposal:
    prefix: str
    channel: str  # class.metric
    value: float | None  # None: nothing proposed (kept from the base, or left out)
    note: str


def nice_up(v: float) -> float:
    """Round up to two significant digits: 67,965 -> 68,000."""
    if v <= 0:
        return 0.0
    scale = 10 ** (math.floor(math.log10(v)) - 1)
    return math.ceil(v / scale - 1e-9) * scale


def wanted_channels() -> list[str]:
    return ["total.bps", *(f"{c}.pps" for c in CLASSES)]


def propose(
    df: pd.DataFrame,
    prefixes: Sequence[str],
    cfg: BaselineConfig,
    percentile: float,
    margin: float,
    floors: dict[str, float] | None = None,
) -> list[Proposal]:
    """Proposals from per-minute samples (t, prefix, one column per channel)."""
    floors = floors or FLOORS
    out: list[Proposal] = []
    for prefix in prefixes:
        rows = df[df["prefix"] == prefix]
        days = rows["t"].floordiv(DAY).nunique() if len(rows) else 0
        for ch in wanted_channels():
            x = rows[ch].dropna().to_numpy(dtype=np.float64) if ch in rows else np.zeros(0)
            metric = ch.split(".")[1]
            if len(x) < cfg.min_samples or days < cfg.min_days:
                why = (
                    f"{len(x)} minutes over {days} days, need {cfg.min_samples} and {cfg.min_days}"
                )
                out.append(Proposal(prefix, ch, None, f"not enough history ({why})"))
                continue
            if not (x > 0).any():
                out.append(Proposal(prefix, ch, None, "no traffic of this class in the history"))
                continue
            level = float(np.percentile(x, percentile))
            value = nice_up(max(level * margin, floors[metric]))
            crossed = int((x > value).sum())
            floor = " (the floor)" if level * margin < floors[metric] else ""
            p99 = float(np.percentile(x, 99))
            note = (
                f"p{percentile:g} {level:,.0f} x {margin:g}{floor} -> {format_rate(value)}; "
                f"p99 {p99:,.0f}; crossed by {crossed} of {len(x)} minutes "
                f"({crossed / len(x):.2%})"
            )
            out.append(Proposal(prefix, ch, value, note))
    return out


def _dump(data: dict[str, Any], indent: int) -> list[str]:
    """Block mapping at the top, flow style for the leaves (as the NOC writes them)."""
    out: list[str] = []
    for k, v in data.items():
        if isinstance(v, dict | list):
            text = yaml.safe_dump({k: v}, sort_keys=False, default_flow_style=None, width=88)
        else:
            text = f"{k}: {json.dumps(v)}"
        out += [" " * indent + line for line in text.rstrip("\n").splitlines()]
    return out


def render(
    proposals: list[Proposal],
    base: dict[str, Any] | None,
    header: list[str],
    prefixes: Sequence[str],
) -> str:
    """The thresholds YAML: the base's defaults and per-prefix settings, thresholds from
    the proposals (the base's where nothing is proposed), a comment on every class."""
    base = base or {}
    base_prefixes: dict[str, Any] = dict(base.get("prefixes") or {})
    lines = [f"# {h}" for h in header]
    lines.append("version: 1")
    if base.get("defaults"):
        lines.append("defaults:")
        lines += _dump(base["defaults"], 2)
    lines.append("prefixes:")
    by_prefix: dict[str, list[Proposal]] = {}
    for p in proposals:
        by_prefix.setdefault(p.prefix, []).append(p)
    for prefix in [*prefixes, *(p for p in base_prefixes if p not in prefixes)]:
        entry = dict(base_prefixes.get(prefix) or {})
        lines.append(f"  {_key(prefix)}:")
        kept = {k: entry[k] for k in PER_PREFIX_KEYS if k in entry}
        if kept:
            lines += _dump(kept, 4)
        old: dict[str, Any] = dict(entry.get("thresholds") or {})
        props = by_prefix.get(prefix, [])
        if not props:
            lines.append("    # no history of this prefix: thresholds as in the base file")
            if old:
                lines += _dump({"thresholds": old}, 4)
            continue
        classes: dict[str, dict[str, Any]] = {}
        notes: list[str] = []
        for p in props:
            cls, metric = p.channel.split(".")
            if p.value is not None:
                classes.setdefault(cls, {})[metric] = format_rate(p.value)
                notes.append(f"{p.channel}: {p.note}")
            elif metric in (old.get(cls) or {}):
                classes.setdefault(cls, {})[metric] = (old.get(cls) or {})[metric]
                notes.append(f"{p.channel}: {p.note}: kept from the base file")
            else:
                notes.append(f"{p.channel}: {p.note}: none")
        for cls, limit in old.items():  # metrics of the base that are not learned (fps, ...)
            for metric, v in (limit or {}).items():
                classes.setdefault(cls, {}).setdefault(metric, v)
        lines.append("    thresholds:")
        lines += [f"      # {n}" for n in notes]
        for cls, limit in classes.items():
            body = ", ".join(f"{m}: {v}" for m, v in limit.items())
            lines.append(f"      {cls}: {{{body}}}")
    return "\n".join(lines) + "\n"


def _key(prefix: str) -> str:
    return f'"{prefix}"' if ":" in prefix else prefix


def recommend(
    store: HistoryStore,
    prefixes: Sequence[str] | None,
    base_text: str | None,
    percentile: float = 100.0,
    margin: float = 1.5,
    t0: float | None = None,
    t1: float | None = None,
) -> str:
    """The recommended thresholds file (text) for ``prefixes`` (None: all of the history)."""
    if not 0 < percentile <= 100 or margin <= 0:
        raise ValueError("need 0 < percentile <= 100 and margin > 0")
    span = store.span("m1")
    if span is None:
        raise ValueError(f"{store.directory}: empty history")
    names = list(prefixes) if prefixes is not None else store.prefixes()
    unknown = [p for p in names if p not in store.prefixes()]
    if unknown:
        raise ValueError(f"no history of {', '.join(unknown)}")
    cfg = store.config.baseline
    hi = span[1] if t1 is None else t1
    lo = span[0] if t0 is None else t0
    from dataclasses import replace

    minutes = replace(cfg, source="minutes", days=max((hi - lo) / DAY, 1 / 1440))
    df = samples(store, minutes, hi, names, wanted_channels(), lo)
    props = propose(df, names, cfg, percentile, margin)
    base = yaml.safe_load(base_text) if base_text else None
    from time import gmtime, strftime

    def iso(t: float) -> str:
        return strftime("%Y-%m-%d %H:%M", gmtime(t))

    header = [
        f"Recommended by `divertor thresholds recommend` from {store.directory},",
        f"history {iso(lo)} .. {iso(hi)} UTC (data time): per-minute peaks of the 1 s rates,",
        "outside diverted incidents. Value = percentile x margin, at least the floor",
        f"({format_rate(FLOORS['pps'])} pps, {format_rate(FLOORS['bps'])} bps), rounded up; "
        '"crossed" = minutes above it.',
        "Review before use: host thresholds, timing and announce come from the base file.",
    ]
    return render(props, base, header, names)
