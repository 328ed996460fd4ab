"""The HTML incident report: one self-contained page (inline CSS and SVG, no script, no
external resource) for the NOC engineer and for whoever reads the incident afterwards.

Charts are SVG drawn here, scaled with numpy: the prefix's packets/s and bits/s by class, the
thresholds as dashed lines, the diversion shaded, announce/withdraw and state changes marked.
More bins than pixels are reduced to each pixel's maximum (a peak is never averaged away).
Every string from the record goes through ``html.escape``.
"""

from __future__ import annotations

import html
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from divertor.report import IncidentRecord, Limits, describe, dur, si, utc
from thresholds.model import CLASSES, METRICS

COLORS = {
    "total": "#333333", "tcp": "#1f77b4", "tcp_syn": "#17becf", "udp": "#d62728",
    "icmp": "#9467bd", "fragments": "#8c564b", "amplification": "#ff7f0e", "sip": "#2ca02c",
    "rtp": "#b8b000", "unlisted_udp": "#e377c2", "unlisted_sip": "#7fbf7f",
    "unlisted_rtp": "#6b6ecf",
}  # fmt: skip
MAX_SERIES = 7
W, H = 1300, 330
L, R, T, B = 78, 24, 50, 34  # margins: y labels, right, mark labels, x labels
STYLE = """
body{font:14px/1.45 "DejaVu Sans",system-ui,-apple-system,"Segoe UI",sans-serif;color:#1d2330;
 margin:0;background:#f3f5f8}
main{max-width:1340px;margin:0 auto;padding:20px 24px 40px}
h1{font-size:24px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 10px}
.sub{color:#4b5568;font-size:15px}.pill{display:inline-block;padding:2px 10px;border-radius:12px;
 font-size:13px;font-weight:600;vertical-align:3px;margin-left:8px;background:#e4e8ef}
.pill.diverted,.pill.suspected{background:#fde2e1;color:#a4161a}.pill.closed{background:#dff3e4;
 color:#1b6e32}.pill.cooling_down{background:#fff1cc;color:#7a5a00}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(165px,1fr));gap:10px;
 margin-top:16px}.card{background:#fff;border:1px solid #dde2ea;border-radius:8px;
 padding:10px 14px}.card b{display:block;font-size:12px;color:#5b6577;font-weight:600;
 text-transform:uppercase;letter-spacing:.04em}.card span{font-size:17px;font-weight:600}
.card small{display:block;color:#5b6577}
.panel{background:#fff;border:1px solid #dde2ea;border-radius:8px;padding:12px 14px;
 overflow-x:auto}svg{display:block;max-width:100%;height:auto}
svg text{font-family:"DejaVu Sans",sans-serif;font-size:12px;fill:#333}
table{border-collapse:collapse;width:100%;background:#fff}th,td{text-align:left;
 padding:5px 8px;border-bottom:1px solid #e6e9ef;vertical-align:top}
th{font-size:12px;color:#5b6577;text-transform:uppercase;letter-spacing:.03em;
 background:#f8f9fb}td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.t{white-space:nowrap;font-variant-numeric:tabular-nums}
tr.announce td:first-child{border-left:4px solid #c92a2a}
tr.withdraw td:first-child{border-left:4px solid #2b8a3e}
tr.incident td:first-child{border-left:4px solid #4c6ef5}
tr.verdict{color:#4b5568}.grid3{display:grid;grid-template-columns:repeat(3,1fr);gap:12px}
.bar{display:inline-block;height:9px;background:#4c6ef5;border-radius:2px;margin-right:6px}
.na{color:#7b8494;font-style:italic}.legend span{margin-right:16px;white-space:nowrap}
.legend i{display:inline-block;width:18px;height:3px;vertical-align:4px;margin-right:5px}
table.compact{width:auto;min-width:420px}table.compact td,table.compact th{padding-right:28px}
h3{font-size:15px;margin:8px 0}footer{margin-top:30px;color:#6b7385;font-size:12px}
@media print{body{background:#fff}.panel,.card{border-color:#bbb}}
"""


def e(v: object) -> str:
    return html.escape(str(v), quote=True)


def nice_max(v: float) -> tuple[float, float]:
    """A round top of the axis at or above v, and its tick step."""
    if v <= 0:
        return 1.0, 0.2
    mag = 10 ** math.floor(math.log10(v))
    for k, step in ((1, 0.2), (2, 0.5), (2.5, 0.5), (5, 1), (10, 2)):
        if v <= k * mag * 1.0001:
            return k * mag, step * mag
    return 10 * mag, 2 * mag


def time_step(span: float) -> float:
    for s in (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 14400, 21600):
        if span / s <= 12:
            return s
    return 43200.0


def reduce_max(y: npt.NDArray[np.float64], width: int) -> tuple[npt.NDArray[np.float64], int]:
    """y in at most ``width`` points, each the max of its bins; and the bins per point."""
    k = max(1, math.ceil(len(y) / width))
    pad = (-len(y)) % k
    return np.pad(y, (0, pad)).reshape(-1, k).max(axis=1), k


def _label_rows(xs: Sequence[float], widths: Sequence[float]) -> list[int]:
    """Rows for labels at xs (ascending) so that labels in one row do not overlap."""
    ends: list[float] = []
    rows = []
    for x, w in zip(xs, widths, strict=True):
        row = next((k for k, end in enumerate(ends) if end < x), len(ends))
        if row == len(ends):
            ends.append(0.0)
        ends[row] = x + w
        rows.append(row)
    return rows


def chart(rec: IncidentRecord, metric: str, limits: Limits, host: Limits) -> str:
    """An SVG chart of the prefix's traffic by class in ``metric``, with its thresholds."""
    tr, m = rec.traffic, METRICS.index(metric)
    unit = {"pps": "pps", "bps": "bit/s", "fps": "flows/s"}[metric]
    if not len(tr.values):
        return '<p class="na">No traffic recorded for this incident (pruned, or not stored).</p>'
    fired = [(s, c) for s, c, mm, _ in rec.rule_limits() if mm == metric and c in CLASSES]
    peaks = tr.values[:, :, m].max(axis=0)
    must = ["total", *dict.fromkeys(c for _, c in fired)]
    rest = [CLASSES[i] for i in np.argsort(-peaks).tolist() if peaks[i] >= 0.02 * peaks.max()]
    keep = list(dict.fromkeys([c for c in must if peaks[CLASSES.index(c)] > 0] + rest))
    keep = sorted(keep[: max(MAX_SERIES, len(must))], key=CLASSES.index)
    data_max = float(max(peaks[CLASSES.index(c)] for c in keep)) if keep else 0.0
    cands = _limit_lines(fired, keep, metric, limits, host)
    shown = [(n, v) for n, v in dict.fromkeys(cands) if v <= 2.0 * max(data_max, 1.0)]
    top, step = nice_max(max([data_max, *(v for _, v in shown)]) * 1.04)
    i = rec.incident
    t0 = min(float(tr.start), i.first_time)
    end = float(tr.times[-1] + tr.seconds)
    t1 = max(end, i.end)
    pw, ph = W - L - R, H - T - B

    def x(t: Any) -> Any:
        return L + (np.asarray(t) - t0) / max(t1 - t0, 1e-9) * pw

    def y(v: Any) -> Any:
        return T + ph - np.asarray(v) / top * ph

    out = [
        f'<svg viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" '
        f'aria-label="{e(unit)} by class" data-metric="{e(metric)}">'
    ]
    for a, b in rec.diverted():
        out.append(
            f'<rect class="diverted" x="{x(a):.1f}" y="{T}" width="{x(b) - x(a):.1f}" '
            f'height="{ph}" fill="#c92a2a" fill-opacity="0.07"/>'
        )
    if t1 - end > 2 * tr.seconds:
        out.append(
            f'<rect class="nodata" x="{x(end):.1f}" y="{T}" width="{x(t1) - x(end):.1f}" '
            f'height="{ph}" fill="#8891a0" fill-opacity="0.10"/><text x="'
            f'{(x(end) + x(t1)) / 2:.1f}" y="{T + 18}" text-anchor="middle" fill="#5b6577">'
            "no traffic recorded</text>"
        )
    for v in np.arange(0, top + step / 2, step):
        out.append(
            f'<line x1="{L}" x2="{L + pw}" y1="{y(v):.1f}" y2="{y(v):.1f}" '
            f'stroke="#e3e6ec"/><text x="{L - 8}" y="{y(v) + 4:.1f}" '
            f'text-anchor="end">{e(si(float(v)))}</text>'
        )
    ts = time_step(t1 - t0)
    for t in np.arange(math.ceil(t0 / ts) * ts, t1 + 1e-9, ts):
        fmt = "%H:%M:%S" if ts < 60 else "%H:%M"
        out.append(
            f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{T}" y2="{T + ph}" '
            f'stroke="#eef0f4"/><text x="{x(t):.1f}" y="{H - B + 18}" '
            f'text-anchor="middle">{time.strftime(fmt, time.gmtime(t))}</text>'
        )
    out.append(
        f'<text x="{L + pw}" y="{H - 2}" text-anchor="end" fill="#666">UTC</text>'
        f'<text x="{L - 8}" y="{T - 30}" text-anchor="end" fill="#666">{e(unit)}</text>'
    )
    for c in sorted(keep, key=lambda c: (c in must, c != "total")):  # the fired ones on top
        ys, k = reduce_max(tr.values[:, CLASSES.index(c), m], pw)
        xs = x(tr.start + np.arange(len(ys)) * k * tr.seconds)
        pts = " ".join(f"{a:.1f},{b:.1f}" for a, b in zip(xs.tolist(), y(ys).tolist(), strict=True))
        width = 2.4 if c in must else 1.4
        out.append(
            f'<polyline class="series" data-class="{e(c)}" fill="none" '
            f'stroke="{COLORS.get(c, "#000")}" stroke-width="{width}" '
            f'stroke-linejoin="round" points="{pts}"/>'
        )
    out += _threshold_lines(shown, y, pw, unit)
    out += _marks(rec, x, ph)
    out.append(f'<rect x="{L}" y="{T}" width="{pw}" height="{ph}" fill="none" stroke="#aab"/>')
    out.append("</svg>")
    legend = "".join(
        f'<span><i style="background:{COLORS.get(c, "#000")}"></i>{e(c)} '
        f"(peak {e(si(float(peaks[CLASSES.index(c)]), unit))})</span>"
        for c in keep
    )
    off = [f"{n} {si(v, unit)}" for n, v in cands if (n, v) not in shown]
    note = f'<span class="na">off scale: {e(", ".join(off))}</span>' if off else ""
    return "\n".join(out) + f'<div class="legend">{legend}{note}</div>'


def _limit_lines(
    fired: list[tuple[str, str]], keep: list[str], metric: str, limits: Limits, host: Limits
) -> list[tuple[str, float]]:
    """The thresholds to draw: those of the rules that fired, else those of the series."""
    if not fired:
        return [(f"{c} limit", limits[c][metric]) for c in keep if metric in limits.get(c, {})]
    out = []
    for scope, c in dict.fromkeys(fired):
        src, name = (host, f"{c} per-host limit") if scope == "host" else (limits, f"{c} limit")
        if metric in src.get(c, {}):
            out.append((name, src[c][metric]))
    return list(dict.fromkeys(out))


def _threshold_lines(shown: list[tuple[str, float]], y: Any, pw: int, unit: str) -> list[str]:
    out, last = [], -1e9
    for name, v in sorted(shown, key=lambda nv: -nv[1]):
        ly = max(float(y(v)) - 5, last + 14)
        last = ly
        color = COLORS.get(name.split()[0], "#000")
        dash = "2 4" if "per-host" in name else "8 5"
        out.append(
            f'<line class="threshold" x1="{L}" x2="{L + pw}" y1="{y(v):.1f}" '
            f'y2="{y(v):.1f}" stroke="{color}" stroke-width="1.6" '
            f'stroke-dasharray="{dash}"/><text x="{L + pw - 6}" y="{ly:.1f}" '
            f'text-anchor="end" fill="{color}" stroke="#fff" stroke-width="4" '
            f'paint-order="stroke" font-weight="600">{e(name)} {e(si(v, unit))}</text>'
        )
    return out


def _marks(rec: IncidentRecord, x: Any, ph: int) -> list[str]:
    marks = rec.marks()
    xs = [float(x(t)) for t, _, _ in marks]
    rows = _label_rows(xs, [7.2 * len(label) + 10 for _, _, label in marks])
    out = []
    color = {"announce": "#c92a2a", "withdraw": "#2b8a3e", "state": "#7b8494"}
    for (_, kind, label), px, row in zip(marks, xs, rows, strict=True):
        dash = "" if kind != "state" else ' stroke-dasharray="3 3"'
        ly = T - 6 - 13 * min(row, 2)
        right = px + 7.2 * len(label) > W - 4
        tx, anchor = (px - 3, "end") if right else (px + 3, "start")
        out.append(
            f'<line class="mark {e(kind)}" x1="{px:.1f}" x2="{px:.1f}" y1="{ly + 3:.1f}" '
            f'y2="{T + ph}" stroke="{color[kind]}" stroke-width="1.5"{dash}/>'
            f'<text x="{tx:.1f}" y="{ly:.1f}" text-anchor="{anchor}" '
            f'fill="{color[kind]}" font-weight="600">{e(label)}</text>'
        )
    return out


def _facts(rec: IncidentRecord) -> str:
    i, f = rec.incident, rec.summary()
    ann, wd = f["announced_at"], f["withdrawn_at"]
    cards = [
        ("First seen", utc(i.first_time)[11:19], utc(i.first_time)[:10] + " UTC"),
        ("Diverted", utc(ann)[11:19] or "not diverted",
         f"{dur(f['to_divert'])} after the first verdict" if ann else ""),
        ("Withdrawn", utc(wd)[11:19] or "—",
         f"diverted {dur(f['diverted_seconds'])}" if ann else ""),
        ("Ended", utc(i.end_time)[11:19] or "still open", i.end_reason or ""),
        ("Duration", dur(i.duration), " → ".join(s.replace("_", " ") for s in i.states)),
        ("Announced", ", ".join(i.announced) or "nothing", ""),
        ("Peak", si(f["peak_total_pps"], "pps"), si(f["peak_total_bps"], "bit/s") + " (total)"),
    ]  # fmt: skip
    return '<section class="cards">' + "".join(
        f"<div class=card><b>{e(a)}</b><span>{e(b)}</span><small>{e(c)}</small></div>"
        for a, b, c in cards
    ) + "</section>"  # fmt: skip


def _table(
    head: Sequence[str], rows: Sequence[Sequence[str]], cls: Sequence[str] = (), kind: str = ""
) -> str:
    th = "".join(f"<th>{e(h)}</th>" for h in head)
    body = "".join(
        f'<tr class="{e(cls[k]) if k < len(cls) else ""}">{"".join(r)}</tr>'
        for k, r in enumerate(rows)
    )
    return f'<table class="{kind}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _td(v: object, cls: str = "") -> str:
    return f'<td class="{cls}">{e(v)}</td>' if cls else f"<td>{e(v)}</td>"


def _share(rec: IncidentRecord) -> str:
    share = rec.allowlisted_share()
    if not share:
        return (
            '<p class="na">Allowlisted share: not available (no allowlist was '
            "configured or replayed for this incident).</p>"
        )
    before, during = share.get("before") or {}, share.get("during") or {}

    def cell(v: Any) -> str:
        if not isinstance(v, int | float):
            return '<td class="n na">n/a</td>'
        return (
            f'<td class="n"><span class="bar" style="width:{round(80 * v)}px"></span>'
            f"{100 * v:.1f} %</td>"
        )

    rows = [[_td(c), cell(before.get(c)), cell(during.get(c))] for c in sorted({*before, *during})]
    since = (
        f" The attack's traffic began at {utc(share['since'])} UTC." if share.get("since") else ""
    )
    return (
        _table(("class", "allowlisted before", "allowlisted during"), rows, kind="compact")
        + f'<p class="sub">Share of the class\'s packets that came from sources on the '
        f"allowlist (registered endpoints, static trunks): in the minute before the attack "
        f"and since it began.{e(since)}</p>"
    )


def _talkers(rec: IncidentRecord) -> str:
    if not rec.talkers:
        return '<p class="na">No top talkers were recorded for this incident.</p>'
    out = []
    names = {"src_addr": "source address", "src_port": "source port", "dst_port": "dest. port"}
    for prefix, top in rec.talkers.items():
        cols = []
        for kind, items in top.items():
            most = max([float(v) for _, v in items] or [1.0]) or 1.0
            rows = [
                [
                    _td(k),
                    f'<td class="n"><span class="bar" style="width:'
                    f'{round(60 * float(v) / most)}px"></span>{e(si(float(v)))}</td>',
                ]
                for k, v in items[:10]
            ]
            cols.append(f"<div>{_table((names.get(kind, kind), 'packets'), rows)}</div>")
        out.append(f"<h3>{e(prefix)}</h3><div class=grid3>{''.join(cols)}</div>")
    note = (
        '<p class="sub">Packets (sampling applied) counted while the prefix was over a '
        "threshold, up to the last state change recorded.</p>"
    )
    return "".join(out) + note


def _timeline(rec: IncidentRecord) -> str:
    rows, kinds = [], []
    for x in rec.lines:
        change, what = describe(x)
        rel = x["time"] - rec.incident.first_time
        since = f"{'+' if rel >= 0 else '−'}{dur(abs(rel))}"
        cells = [(utc(x["time"])[11:], "t"), (since, "t"), (x.get("type"), ""), (change, ""),
                 (x.get("prefix", ""), ""), (what, "")]  # fmt: skip
        rows.append([_td(v, c) for v, c in cells])
        kinds.append(str(x.get("type")))
    head = ("time (UTC)", "since start", "event", "state", "prefix", "what and why")
    return _table(head, rows, kinds)


def _rules(rec: IncidentRecord) -> str:
    rows = []
    for r in rec.rules():
        span = f"{utc(r['first'])[11:19]} – {utc(r['until'])[11:19]}"
        peak_bin = "" if r["peak_bin"] is None else si(r["peak_bin"])
        limit, hosts = si(r["threshold"] or 0), ", ".join(r["hosts"])
        cells = [(r["rule"], ""), (r["scope"], ""), (limit, "n"), (si(r["peak"]), "n"),
                 (peak_bin, "n"), (hosts, ""), (span, "t")]  # fmt: skip
        rows.append([_td(v, c) for v, c in cells])
    if not rows:
        return '<p class="na">No verdict over a threshold was recorded.</p>'
    head = ("rule", "scope", "threshold", "peak (verdicts)", "peak (1-s bins)", "hosts",
            "over from – until (UTC)")  # fmt: skip
    note = (
        '<p class="sub">Verdicts judge trailing averages (a few seconds) and are recorded '
        "when they change; the 1-s bins are the prefix's traffic of the rule's class. "
        "Until: the prefix back under its clear level.</p>"
    )
    return _table(head, rows) + note


def _limits_table(limits: Mapping[str, Mapping[str, float]], host: Mapping[str, Any]) -> str:
    rows = [
        [_td(f"{scope} {c}")] + [_td(si(per[m]) if m in per else "", "n") for m in METRICS]
        for scope, d in (("prefix", limits), ("per host", host))
        for c, per in d.items()
    ]
    if not rows:
        return '<p class="na">No thresholds were recorded for this prefix.</p>'
    return _table(("class", "bit/s", "packets/s", "flows/s"), rows, kind="compact")


def render(rec: IncidentRecord, given: Mapping[str, Mapping[str, float]] | None = None) -> str:
    i = rec.incident
    limits, host = rec.thresholds(given), rec.host_thresholds()
    name = (rec.limits or {}).get("name") or ""
    title = f"Incident {i.id} · {i.prefix}" + (f" ({name})" if name else "")
    vector = (i.vector or "no vector").replace("_", " ")
    parts = [
        f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{e(title)}</title>"
        f'<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<style>{STYLE}</style></head><body><main>",
        f'<h1>{e(title)}<span class="pill {e(i.state)}">{e(i.state.replace("_", " "))}</span>'
        f'</h1><div class="sub">{e(vector)} · {e(utc(i.first_time)[:19])} UTC · '
        f"engine incident {i.engine_id}</div>",
        _facts(rec),
        f"<h2>Packets per second to {e(i.prefix)}, by class</h2>",
        f'<div class="panel">{chart(rec, "pps", limits, host)}</div>',
        f"<h2>Bits per second to {e(i.prefix)}, by class</h2>",
        f'<div class="panel">{chart(rec, "bps", limits, host)}</div>',
        "<h2>Why: the rules that fired</h2>",
        _rules(rec),
        "<h2>Thresholds in force</h2>",
        _limits_table(limits, host),
        "<h2>Allowlisted share of the traffic</h2>",
        _share(rec),
        "<h2>Top talkers</h2>",
        _talkers(rec),
        "<h2>Timeline</h2>",
        _timeline(rec),
        f"<footer>Divertor incident report · generated {e(utc(time.time())[:19])} UTC · "
        f"traffic in {e(rec.traffic.seconds)} s bins from {e(utc(rec.traffic.start)[:19])} UTC "
        f"(from {dur(i.first_time - i.window_start)} before the incident) · all times UTC"
        "</footer></main></body></html>",
    ]
    return "\n".join(parts) + "\n"
