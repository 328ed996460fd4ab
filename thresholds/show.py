"""`divertor thresholds show` and `check`: the effective settings of a prefix, with where
each value came from, and a summary of a whole file."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

from thresholds.loader import load
from thresholds.model import CLASSES, METRICS, PortSets, PrefixPolicy, ThresholdSet
from thresholds.spec import ANNOUNCE_KEYS, TIMING_KEYS, VERSION
from thresholds.units import format_duration, format_rate, format_ratio

_COMMENT_COLUMN_MAX = 44


class NotProtected(LookupError, ValueError):
    """An address or prefix outside every entry of a threshold file."""


def effective(ts: ThresholdSet, prefix: str) -> PrefixPolicy:
    """The policy that applies to ``prefix`` (a configured prefix, a prefix inside one, or an
    address): the longest configured entry that covers it. Raises ``ValueError`` if
    ``prefix`` is not a prefix or address, ``NotProtected`` (a ``LookupError`` and a
    ``ValueError``) if no entry covers it."""
    try:
        net = ipaddress.ip_network(prefix.strip(), strict=False)
    except ValueError:
        raise ValueError(f"expected a prefix or an address, got '{prefix}'") from None
    best: PrefixPolicy | None = None
    for p in ts.policies:
        if (
            p.prefix.version == net.version
            and net.subnet_of(p.prefix)  # type: ignore[arg-type]
            and (best is None or p.prefix.prefixlen > best.prefix.prefixlen)
        ):
            best = p
    if best is None:
        raise NotProtected(f"{net} is not inside any protected prefix of {ts.source}")
    return best


def _ports(ports: frozenset[int]) -> str:
    items: list[str] = []
    run: list[int] = []
    for port in [*sorted(ports), -1]:
        if run and port == run[-1] + 1:
            run.append(port)
            continue
        if len(run) >= 3:
            items.append(f"{run[0]}-{run[-1]}")
        else:
            items.extend(str(r) for r in run)
        run = [port]
    return "[" + ", ".join(items) + "]"


def _strings(values: tuple[str, ...]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def _align(lines: list[tuple[str, str]]) -> str:
    width = min(max((len(t) for t, c in lines if c), default=0) + 2, _COMMENT_COLUMN_MAX)
    out = []
    for text, comment in lines:
        if comment:
            out.append(f"{text.ljust(width - 1)} # {comment}".rstrip())
        else:
            out.append(text)
    return "\n".join(out)


def show(ts: ThresholdSet, prefix: str) -> str:
    """A threshold file (valid YAML; no final newline, for print) holding the global settings
    and the effective settings of the entry that covers ``prefix``, each value annotated with
    where it came from."""
    p = effective(ts, prefix)
    o = p.origins
    lines: list[tuple[str, str]] = []

    def add(indent: int, text: str, key: str | None = None) -> None:
        lines.append(("  " * indent + text, o.get(key, "") if key else ""))

    where = f"{ts.source}, line {p.source_line}" if p.source_line else ts.source
    head = f"# effective settings of {p.prefix}"
    if str(p.prefix) != prefix.strip():
        head = f"# {prefix.strip()} is covered by {p.prefix}: its effective settings"
    lines.append((f"{head} ({where})", ""))
    chain = [*_ancestors(ts, p), "defaults"]
    lines.append(("# inherits from " + ", then ".join(chain), ""))
    lines.append((f"version: {VERSION}", ""))
    lines.append(("defaults:  # global: bin, average and ports are the same for every prefix", ""))
    go = ts.origins
    lines.append((f"  bin: {format_duration(ts.bin_seconds)}", go.get("bin", "")))
    lines.append((f"  average: {format_duration(ts.average_seconds)}", go.get("average", "")))
    lines.append(("  ports:", ""))
    ports: PortSets = ts.ports
    lines.append(
        (f"    amplification: {_ports(ports.amplification)}", go.get("ports.amplification", ""))
    )
    lines.append((f"    sip: {_ports(ports.sip)}", go.get("ports.sip", "")))
    lines.append((f"    rtp: {ports.rtp_low}-{ports.rtp_high}", go.get("ports.rtp", "")))
    lines.append(("prefixes:", ""))
    add(1, f"{p.prefix}:")
    if p.name:
        add(2, f"name: {json.dumps(p.name)}", "name")
    add(2, f"mode: {p.mode}", "mode")
    for base, table in (("thresholds", p.thresholds), ("host_thresholds", p.host_thresholds)):
        rows = [(c, m) for c in CLASSES for m in METRICS if f"{base}.{c}.{m}" in o]
        if not rows:
            add(2, f"{base}: {{}}")
            continue
        add(2, f"{base}:")
        for cls in CLASSES:
            metrics = [m for c, m in rows if c == cls]
            if not metrics:
                continue
            add(3, f"{cls}:")
            limit = table.get(cls)
            for m in metrics:
                value = getattr(limit, m) if limit is not None else None
                add(4, f"{m}: {format_rate(value)}", f"{base}.{cls}.{m}")
    add(2, f"carpet_min_hosts: {p.carpet_min_hosts}", "carpet_min_hosts")
    add(2, "timing:")
    for k in TIMING_KEYS:
        value = getattr(p.timing, k.field or k.name)
        if k.kind == "clear":
            text = format_ratio(value)
        elif k.kind == "backoff":
            text = format_rate(value)
        else:
            text = format_duration(value)
        add(3, f"{k.name}: {text}", f"timing.{k.name}")
    add(2, "announce:")
    a = p.announce
    family = f"subnet_length_v{p.prefix.version}"
    for k in ANNOUNCE_KEYS:
        key = f"announce.{k.name}"
        if k.name == "mode":
            add(3, f"mode: {a.mode}", key)
        elif k.name == "prefixes":
            if a.mode == "list":
                add(3, f"prefixes: {_strings(a.prefixes)}", key)
        elif k.name == family:
            add(3, f"{k.name}: {getattr(a, k.name)}", key)
        elif k.name == "subnet_share":
            add(3, f"subnet_share: {format_ratio(a.subnet_share)}", key)
        elif k.name == "next_hop":
            if a.next_hop is None:
                lines.append(("      # next_hop: not set", o.get(key, "")))
            else:
                add(3, f"next_hop: {a.next_hop}", key)
        elif k.name in ("communities", "large_communities"):
            add(3, f"{k.name}: {_strings(getattr(a, k.name))}", key)
    an = p.anomaly
    if an.rule is not None or an.mix is not None:
        add(2, "anomaly:")
        add(3, f"rule: {json.dumps(an.rule.text if an.rule else 'off')}", "anomaly.rule")
        add(3, f"classes: {_strings(an.classes)}", "anomaly.classes")
        add(3, f"metric: {an.metric}", "anomaly.metric")
        floors = [m for m in ("bps", "pps") if f"anomaly.floor.{m}" in o]
        add(3, "floor:" if floors else "floor: {}")
        for m in floors:
            add(4, f"{m}: {format_rate(getattr(an.floor, m))}", f"anomaly.floor.{m}")
        add(3, f"mode: {an.mode}", "anomaly.mode")
        add(3, f"mix: {'off' if an.mix is None else format_ratio(an.mix)}", "anomaly.mix")
        if an.baselines is not None:
            add(3, f"baselines: {json.dumps(an.baselines)}", "anomaly.baselines")
    return _align(lines)


def _ancestors(ts: ThresholdSet, p: PrefixPolicy) -> list[str]:
    out: list[str] = []
    parent = p.parent
    while parent is not None:
        out.append(parent)
        up = ts.policy(parent)
        parent = up.parent if up is not None else None
    return out


def warnings(ts: ThresholdSet) -> list[str]:
    """Things that load but are probably not what was meant."""
    out: list[str] = []
    for p in ts.policies:
        if p.mode == "enforce" and not p.thresholds and not p.host_thresholds:
            out.append(f"{p.prefix}: no thresholds at all, it never diverts")
        hop = p.announce.next_hop
        if hop is not None and ipaddress.ip_address(hop).version != p.prefix.version:
            whence = p.origins.get("announce.next_hop", "")
            out.append(
                f"{p.prefix}: next_hop {hop} is IPv{4 if p.prefix.version == 6 else 6} for an "
                f"IPv{p.prefix.version} prefix ({whence}); give next_hop: {{ipv{p.prefix.version}:"
                " ...} if the BGP session does not carry it"
            )
    return out


def _summary_row(p: PrefixPolicy) -> list[str]:
    a = p.announce
    if a.mode == "subnets":
        announce = f"subnets /{a.subnet_length_v4 if p.prefix.version == 4 else a.subnet_length_v6}"
    elif a.mode == "list":
        announce = "list " + " ".join(a.prefixes)
    else:
        announce = "prefix"
    name = p.name or (f"(in {p.parent})" if p.parent else "")
    limits = ", ".join(p.thresholds) or "none"
    host = ", ".join(p.host_thresholds) or "none"
    an = p.anomaly
    anomaly = ""
    if an.rule is not None or an.mix is not None:
        parts = (an.rule.text if an.rule else "", "mix" if an.mix else "")
        what = " + ".join(x for x in parts if x)
        anomaly = f"; anomaly: {what} ({an.mode})"
    return [
        str(p.prefix),
        name,
        p.mode,
        f"announce {announce}",
        f"thresholds: {limits}; per host: {host}{anomaly}",
    ]


def summary(ts: ThresholdSet) -> str:
    pol = ts.policies
    v4 = sum(1 for p in pol if p.prefix.version == 4)
    nested = sum(1 for p in pol if p.parent is not None)
    monitor = sum(1 for p in pol if p.mode == "monitor")
    out = [
        f"ok: {ts.source}: {len(pol)} prefixes ({v4} IPv4, {len(pol) - v4} IPv6), "
        f"{nested} inside another, {monitor} monitor only; bin {format_duration(ts.bin_seconds)}"
        f", average {format_duration(ts.average_seconds)}"
    ]
    rows = [_summary_row(p) for p in pol]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)] if rows else []
    for r in rows:
        out.append(
            "  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1]
        )
    out.extend(f"warning: {w}" for w in warnings(ts))
    return "\n".join(out)


def check(path: str | Path) -> str:
    """Validate a threshold file; the summary for `divertor thresholds check FILE` (no final
    newline). Raises
    ``ThresholdError`` (every problem, FILE:LINE:COL: KEY.PATH: message) if it is invalid."""
    return summary(load(path))
