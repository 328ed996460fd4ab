"""Post-incident export: an incident's record as JSON, CSV or one self-contained HTML page.

The record (``IncidentRecord``, filled by ``TimelineStore.incident``) holds the incident's
lines, its prefix's traffic by class from a few minutes before it to its end, the thresholds
in force, the top talkers. Formats (docs/incidents.md):

* ``json``: the whole record, with the thresholds, the rules that fired and the allowlisted
  share worked out;
* ``csv``: one table, one header; ``record`` = ``bin`` rows first (time, prefix, class, bps,
  pps, fps: every class with traffic, every bin), then ``event`` rows (the timeline: time,
  type, incident, state change, reason, the whole line as JSON);
* ``html``: one page, no external resource: SVG charts, timeline, talkers (report_html.py).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from thresholds.model import CLASSES, METRICS

if TYPE_CHECKING:
    from divertor.store import TimelineStore

FORMATS: tuple[str, ...] = ("json", "csv", "html")
#: thresholds: class -> metric -> value
Limits = dict[str, dict[str, float]]
_RULE = re.compile(r"^(prefix|host|carpet)\s+([a-z_]+)\.(bps|pps|fps)\b")


@dataclass(frozen=True, slots=True)
class Incident:
    """One incident as the store knows it (``id`` is the store's)."""

    id: int
    engine_id: int
    prefix: str
    vector: str | None
    first_time: float
    last_time: float
    window_start: float  # its traffic is kept from here (pre_incident before first_time)
    end_time: float | None  # None: open
    end_reason: str | None  # "closed", "superseded ...", or the reason of mark_interrupted
    state: str  # the last state reached
    states: tuple[str, ...]  # the states reached, in order
    announced: tuple[str, ...]  # the prefixes announced for it

    @property
    def end(self) -> float:
        """Its end, or its last line while open."""
        return self.last_time if self.end_time is None else self.end_time

    @property
    def duration(self) -> float:
        return self.end - self.first_time

    def as_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out.update(states=list(self.states), announced=list(self.announced))
        return {**out, "duration": self.duration, "open": self.end_time is None}


@dataclass(frozen=True, slots=True)
class Traffic:
    """Bins of one prefix: values[bin, class, metric] per second (CLASSES x METRICS), bin i
    starting at ``start + i * seconds``; a bin without a row is zeros (no traffic counted)."""

    start: float
    seconds: float
    values: npt.NDArray[np.float64]

    @property
    def times(self) -> npt.NDArray[np.float64]:
        return self.start + np.arange(self.values.shape[0], dtype=np.float64) * self.seconds

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[Any]], start: float) -> Traffic:
        """From rows (t, seconds, classes JSON, metrics JSON, float64 blob), by time; a
        blob is read by its layout's names, so bins of another version's classes fit."""
        if not rows:
            return cls(start, 1.0, np.zeros((0, len(CLASSES), len(METRICS))))
        start, seconds = float(rows[0][0]), float(rows[0][1]) or 1.0
        out = np.zeros((round((rows[-1][0] - start) / seconds) + 1, len(CLASSES), len(METRICS)))
        maps: dict[tuple[str, str], tuple[Any, Any, int, int]] = {}
        for t, _, classes, metrics, blob in rows:
            if (classes, metrics) not in maps:
                cs, ms = json.loads(classes), json.loads(metrics)
                ci = [i for i, c in enumerate(cs) if c in CLASSES]
                mi = [j for j, m in enumerate(ms) if m in METRICS]
                co, mo = [CLASSES.index(cs[i]) for i in ci], [METRICS.index(ms[j]) for j in mi]
                maps[classes, metrics] = (np.ix_(co, mo), np.ix_(ci, mi), len(cs), len(ms))
            dst, src, nc, nm = maps[classes, metrics]
            out[round((t - start) / seconds)][dst] = np.frombuffer(blob, "<f8").reshape(nc, nm)[src]
        return cls(start, seconds, out)

    def active(self) -> list[str]:
        """The classes with any traffic, in CLASSES order."""
        if not len(self.values):
            return []
        return [c for i, c in enumerate(CLASSES) if self.values[:, i, :].any()]


@dataclass(frozen=True, slots=True)
class IncidentRecord:
    """Everything about one incident (``TimelineStore.incident``), and what follows from it."""

    incident: Incident
    lines: list[dict[str, Any]]  # its lines, its prefix's verdicts, global lines meanwhile
    traffic: Traffic  # its prefix's bins, from its window_start to its end
    limits: dict[str, Any] | None  # the prefix's "thresholds" line in force, if any
    talkers: dict[str, dict[str, list[list[Any]]]]  # prefix -> kind -> [[key, packets]]

    # ------------------------------------------------------------------ worked out
    def thresholds(self, given: Mapping[str, Mapping[str, float]] | None = None) -> Limits:
        """The prefix's thresholds (class -> metric -> value): those named by the prefix and
        carpet rules of its verdicts, overridden by its ``thresholds`` line, by ``given``."""
        out: Limits = {}
        for scope, c, m, v in self.rule_limits():
            if scope != "host":
                out.setdefault(c, {})[m] = v
        for source in (self.limits and self.limits.get("thresholds"), given):
            for c, per in (source or {}).items():
                out.setdefault(c, {}).update({m: float(v) for m, v in per.items()})
        return out

    def host_thresholds(self) -> Limits:
        out: Limits = {}
        for scope, c, m, v in self.rule_limits():
            if scope == "host":
                out.setdefault(c, {})[m] = v
        for c, per in ((self.limits or {}).get("host_thresholds") or {}).items():
            out.setdefault(c, {}).update({m: float(v) for m, v in per.items()})
        return out

    def rule_limits(self) -> list[tuple[str, str, str, float]]:
        """(scope, class, metric, threshold) of each verdict over a threshold."""
        out = []
        for line in self.lines:
            m = _RULE.match(str(line.get("rule") or "")) if line.get("type") == "verdict" else None
            if m and isinstance(line.get("threshold"), int | float) and line["threshold"] > 0:
                out.append((m[1], m[2], m[3], float(line["threshold"])))
        return out

    def rules(self) -> list[dict[str, Any]]:
        """The rules that fired: ``peak`` (highest verdict value: the detector's trailing
        average), ``peak_bin`` (highest 1-bin rate of the prefix's class, prefix and carpet
        rules), threshold, hosts, ``first`` (first verdict naming it) and ``until`` (the end of
        the prefix's run over thresholds then: its next verdict that is not over)."""
        out: dict[str, dict[str, Any]] = {}
        verdicts = [x for x in self.lines if x.get("type") == "verdict"]
        for k, line in enumerate(verdicts):
            if line.get("status") != "over":
                continue
            after = (x["time"] for x in verdicts[k + 1 :] if x.get("status") != "over")
            until = next(after, self.incident.end)
            m = _RULE.match(str(line.get("rule") or ""))
            r = out.setdefault(str(line.get("rule")), {
                "rule": line.get("rule"), "scope": line.get("scope"), "peak": 0.0,
                "peak_bin": self._peak_bin(m[2], m[3]) if m and m[1] != "host" else None,
                "threshold": line.get("threshold"), "hosts": [], "vectors": [],
                "first": line["time"], "until": until,
            })  # fmt: skip
            r["peak"], r["until"] = max(r["peak"], float(line.get("value") or 0.0)), until
            for key, value in (("hosts", line.get("host")), ("vectors", line.get("vector"))):
                if value and value not in r[key]:
                    r[key].append(value)
        return list(out.values())

    def _peak_bin(self, klass: str, metric: str) -> float | None:
        if klass not in CLASSES or not len(self.traffic.values):
            return None
        return float(self.traffic.values[:, CLASSES.index(klass), METRICS.index(metric)].max())

    def allowlisted_share(self) -> dict[str, Any] | None:
        """The newest ``allowlisted_share`` of the incident's lines, or None."""
        shares = [x["allowlisted_share"] for x in self.lines if x.get("allowlisted_share")]
        return shares[-1] if shares else None

    def marks(self) -> list[tuple[float, str, str]]:
        """(time, kind, label) of the diversion changes and incident transitions."""
        out = []
        for x in self.lines:
            kind = str(x.get("type"))
            if kind in ("announce", "withdraw"):
                out.append((float(x["time"]), kind, f"{kind} {x.get('prefix', '')}"))
            elif kind == "incident" and x.get("from") != x.get("to"):
                out.append((float(x["time"]), "state", str(x.get("to", "")).replace("_", " ")))
        return out

    def diverted(self) -> list[tuple[float, float]]:
        """(announce, withdraw) spans; one still announced runs to the incident's end."""
        spans: list[tuple[float, float]] = []
        since = None
        for t, kind, _ in self.marks():
            if kind == "announce" and since is None:
                since = t
            elif kind == "withdraw" and since is not None:
                spans, since = [*spans, (since, t)], None
        return spans + ([(since, self.incident.end)] if since is not None else [])

    def summary(self) -> dict[str, Any]:
        """Key figures: first seen, first announce, last withdraw, time diverted, peaks."""
        marks, tr, total = self.marks(), self.traffic, CLASSES.index("total")
        announces = [t for t, k, _ in marks if k == "announce"]
        withdraws = [t for t, k, _ in marks if k == "withdraw"]
        peak = tr.values[:, total, :].max(axis=0) if len(tr.values) else np.zeros(len(METRICS))
        return {
            "first_seen": self.incident.first_time,
            "announced_at": announces[0] if announces else None,
            "to_divert": announces[0] - self.incident.first_time if announces else None,
            "withdrawn_at": withdraws[-1] if withdraws else None,
            "diverted_seconds": sum(b - a for a, b in self.diverted()),
            **{f"peak_total_{m}": float(v) for m, v in zip(METRICS, peak.tolist(), strict=True)},
        }

    def as_dict(self, given: Mapping[str, Mapping[str, float]] | None = None) -> dict[str, Any]:
        tr = self.traffic
        series = {
            c: {
                m: np.round(tr.values[:, CLASSES.index(c), j], 1).tolist()
                for j, m in enumerate(METRICS)
            }
            for c in tr.active()
        }
        return {
            "format": "divertor-incident/1",
            "incident": self.incident.as_dict(),
            "summary": self.summary(),
            "thresholds": self.thresholds(given),
            "host_thresholds": self.host_thresholds(),
            "rules": self.rules(),
            "allowlisted_share": self.allowlisted_share(),
            "talkers": self.talkers,
            "traffic": {
                "prefix": self.incident.prefix,
                "start": tr.start,
                "seconds": tr.seconds,
                "bins": int(tr.values.shape[0]),
                "units": {"bps": "bit/s", "pps": "packets/s", "fps": "flows/s"},
                "classes": series,
            },
            "lines": self.lines,
        }


def utc(t: float | None) -> str:
    """'2025-02-18 09:15:13' (UTC; milliseconds if any)."""
    if t is None or not math.isfinite(t):
        return ""
    ms = f".{round((t % 1) * 1000):03d}" if round((t % 1) * 1000) % 1000 else ""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) + ms


def si(v: float, unit: str = "") -> str:
    """290000 -> '290k', 2.7e9 -> '2.7G'; with a unit: '2.7 Gbit/s'."""
    for f, p in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, "")):
        if abs(v) >= f or f == 1.0:
            x = v / f
            num = f"{x:.0f}" if abs(x) >= 100 or x == round(x) else f"{x:.3g}"
            return f"{num} {p}{unit}" if unit else f"{num}{p}"
    return str(v)


def dur(seconds: float) -> str:
    """'9 s', '5 min 09 s', '1 h 02 min'."""
    s = round(seconds)
    h, m = s // 3600, s % 3600 // 60
    return f"{h} h {m:02d} min" if h else f"{m} min {s % 60:02d} s" if m else f"{s} s"


_QUIET = {"time", "type", "prefix", "incident", "from", "to", "reason", "vector", "status"}


def describe(x: Mapping[str, Any]) -> tuple[str, str]:
    """(state change, what happened and why) of a timeline line, in words."""
    kind = x.get("type")
    change = f"{x['from']} → {x['to']}" if "from" in x and "to" in x else str(x.get("status", ""))
    if kind == "verdict":
        host = f" on {x['host']}" if x.get("host") else ""
        what = (
            f"{x['rule']}: {x.get('value', 0):,.0f} against {x.get('threshold', 0):,.0f}{host}"
            if x.get("rule")
            else "back under the clear level"
        )
    else:
        what = str(x.get("reason") or "")
        extra = {k: v for k, v in x.items() if k not in _QUIET and k != "allowlisted_share"}
        if kind not in ("incident", "announce", "withdraw") and extra:
            what += (" " if what else "") + ", ".join(f"{k}={v}" for k, v in extra.items())
    return change, what + (f" (by {x['who']})" if x.get("who") else "")


CSV_FIELDS = (
    "record",
    "time",
    "time_utc",
    "prefix",
    "class",
    "bps",
    "pps",
    "fps",
    "type",
    "incident",
    "state",
    "reason",
    "line",
)


def to_csv(rec: IncidentRecord) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    tr, prefix = rec.traffic, rec.incident.prefix
    active = [(c, CLASSES.index(c)) for c in rec.traffic.active()]
    for t, row in zip(tr.times.tolist(), tr.values, strict=True):
        for c, i in active:
            bpf = [f"{x:.3f}".rstrip("0").rstrip(".") for x in row[i].tolist()]
            w.writerow(["bin", f"{t:.3f}", utc(t), prefix, c, *bpf, *[""] * 5])
    for x in rec.lines:
        change, what = describe(x)
        line = json.dumps(x, separators=(",", ":"), default=str)
        t, kind, ident = f"{x['time']:.3f}", x.get("type", ""), x.get("incident", "")
        prefix = x.get("prefix", "")
        w.writerow(["event", t, utc(x["time"]), prefix, *[""] * 4, kind, ident, change, what, line])
    return buf.getvalue()


def export(
    store: TimelineStore,
    incident_id: int,
    fmt: str,
    thresholds: Mapping[str, Mapping[str, float]] | None = None,
) -> str:
    """The record of incident ``incident_id`` (the store's id) in ``fmt``: json, csv or
    html. ``thresholds`` (class -> metric -> value) override those recorded. KeyError if
    there is no such incident, ValueError for another format."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: one of {', '.join(FORMATS)}")
    rec = store.incident(incident_id)
    if fmt == "json":
        return json.dumps(rec.as_dict(thresholds), indent=1, default=str) + "\n"
    if fmt == "csv":
        return to_csv(rec)
    from divertor.report_html import render

    return render(rec, thresholds)
