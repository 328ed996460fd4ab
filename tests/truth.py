"""Compare `divertor decode` records with the corpus's tshark truth (shared/testdata/flows)."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from tests import shared

CAPTURES = shared.CAPTURES
FLOW_KINDS = ("flow", "sflow_flow")
EXACT = (
    "exporter",
    "src_addr",
    "dst_addr",
    "src_port",
    "dst_port",
    "protocol",
    "tcp_flags",
    "input_if",
    "output_if",
    "packets",
    "bytes",
)
TIME_TOLERANCE = 1.01  # v9 export time has 1 s resolution


def load_truth(capture: Path) -> list[dict[str, Any]]:
    path = capture.with_name(capture.name[: -len(".pcap")] + ".truth.jsonl")
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _domain(truth: dict[str, Any]) -> int | None:
    d = truth.get("domain_id")
    if isinstance(d, dict):
        return (int(d["engine_type"]) << 8) | int(d["engine_id"])
    return d if isinstance(d, int) else None


def expected(truth: dict[str, Any]) -> dict[str, Any]:
    """The values of a truth line that our record must carry (nulls left out)."""
    want = {k: truth.get(k) for k in EXACT}
    if truth["kind"] == "sflow_flow":
        want["packets"] = 1
        want["bytes"] = truth.get("frame_length")
        want["sampling_rate"] = truth.get("sampling_rate") or 1
        want["domain_id"] = truth.get("sub_agent_id")
    else:
        want["domain_id"] = _domain(truth)
        want["template_id"] = truth.get("template_id")
        if truth.get("sampling_interval"):
            want["sampling_rate"] = truth["sampling_interval"]
        for k in ("first_epoch", "last_epoch"):
            want[k] = truth.get(k)
    want["version"] = truth["version"]
    return {k: v for k, v in want.items() if v is not None}


def match(ours: list[dict[str, Any]], truth: list[dict[str, Any]]) -> dict[str, Any]:
    """Align records by (frame, template, rank) and compare every field the truth has.

    Returns counts and the list of mismatches (frame, field, ours, truth).
    """
    by_key: dict[tuple[int, Any], list[dict[str, Any]]] = defaultdict(list)
    for r in ours:
        by_key[(r["frame"], r.get("template_id") if r["version"] != "sflow5" else 0)].append(r)
    truth_by_key: dict[tuple[int, Any], list[dict[str, Any]]] = defaultdict(list)
    for t in truth:
        if t["kind"] in FLOW_KINDS:
            key = (t["frame"], (t.get("template_id") or 0) if t["kind"] == "flow" else 0)
            truth_by_key[key].append(t)
    fields = matched = bad_records = 0
    missing: list[int] = []
    mismatches: list[tuple[int, str, Any, Any]] = []
    for key, tlist in truth_by_key.items():
        candidates = by_key.get(key, [])
        wants = [t.get("_want") or expected(t) for t in tlist]
        # where we decode more records than tshark in a set (data before its template in
        # the same datagram, records after tshark gave up) pick the best alignment
        shifts = range(max(0, len(candidates) - len(tlist)) + 1)
        best = max(
            shifts,
            key=lambda s: sum(
                _same(candidates[i + s], w) for i, w in enumerate(wants) if i + s < len(candidates)
            ),
        )
        for i, want in enumerate(wants):
            fields += len(want)
            if i + best >= len(candidates):
                missing.append(key[0])
                continue
            r = candidates[i + best]
            before = len(mismatches)
            for k, v in want.items():
                if _field_ok(r.get(k), v, k):
                    matched += 1
                else:
                    mismatches.append((key[0], k, r.get(k), v))
            bad_records += len(mismatches) > before
    return {
        "fields": fields,
        "matched": matched,
        "missing": missing,
        "mismatches": mismatches,
        "bad_records": bad_records + len(missing),
        "truth_records": sum(len(v) for v in truth_by_key.values()),
        "our_records": len(ours),
    }


def _field_ok(got: Any, want: Any, key: str) -> bool:
    if key.endswith("_epoch"):
        return got is not None and math.isclose(got, want, abs_tol=TIME_TOLERANCE)
    return bool(got == want)


def _same(r: dict[str, Any], want: dict[str, Any]) -> int:
    return sum(_field_ok(r.get(k), v, k) for k, v in want.items())
