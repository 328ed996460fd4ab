"""Every capture of shared/testdata/flows decoded and compared with tshark's truth.

At least 99 % of the truth's flow records must match on every field the truth has. Where
we differ on purpose, or where the truth is tshark's reading and not what the exporter
meant, the difference is named below (DEVIATIONS) with its cause, and the expected value
is derived from the truth's own raw fields; nothing else may differ.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from divertor.decode_cmd import decode_file
from tests.truth import CAPTURES, FLOW_KINDS, load_truth, match

pytestmark = pytest.mark.skipif(not CAPTURES.is_dir(), reason="shared/testdata not beside the repo")

INDEX = CAPTURES.parent / "index.json"
MS_WRAP = 4294967.296  # 2**32 ms in seconds


def _zero_uptime_as_1970(t: dict[str, Any], want: dict[str, Any]) -> str | None:
    """tshark shows a flowStartSysUpTime (or v9 FIRST_SWITCHED) of 0 as the absolute time
    1970-01-01, so the truth's first_epoch is 0.0; we read it as sysuptime 0."""
    hit = None
    for key, field in (("first_epoch", "cflow.abstimestart"), ("last_epoch", "cflow.abstimeend")):
        if want.get(key) == 0.0 and str(t["fields"].get(field, "")).startswith("Jan  1, 1970"):
            del want[key]
            hit = "tshark reads a zero sysuptime as epoch 0"
    return hit


def _unsigned_uptime(t: dict[str, Any], want: dict[str, Any]) -> str | None:
    """The exporter stamps records after its header's sysuptime (pmacct 1.7.7 v5, the
    softflowd v5 datagrams of logstash): the truth subtracts unsigned and lands 49.7 days
    in the future; we take the 32-bit difference as signed (a few ms early)."""
    hit = None
    for key in ("first_epoch", "last_epoch"):
        v = want.get(key)
        if v is not None and v - t["export_time"] > MS_WRAP / 2:
            want[key] = v - MS_WRAP
            hit = "record stamped after its header's sysuptime (exporter clock)"
    return hit


def _v4_zero_v6_flow(t: dict[str, Any], want: dict[str, Any]) -> str | None:
    """Templates with both IPv4 and IPv6 address elements (Cisco 313, Procera): the truth
    takes the IPv4 element even when it is 0.0.0.0; we take the IPv6 element that holds
    the flow's address."""
    hit = None
    for key, field in (("src_addr", "cflow.srcaddrv6"), ("dst_addr", "cflow.dstaddrv6")):
        v6 = t["fields"].get(field)
        if want.get(key) == "0.0.0.0" and v6:
            want[key] = v6[0] if isinstance(v6, list) else v6
            if want[key] != "::":
                hit = "IPv4 element 0.0.0.0 beside the IPv6 flow address"
            else:
                want[key] = "0.0.0.0"
    return hit


def _pmacct_usec(t: dict[str, Any], want: dict[str, Any]) -> str | None:
    """pmacct 1.7.7 writes flowStart/EndMicroseconds as a 16-byte struct timeval; tshark
    reads them as NTP (1970). The raw record holds seconds and microseconds."""
    if t["capture"] != "gen__pmacctd_nfprobe_ipfix_usec.pcap" or "first_epoch" not in want:
        return None
    raw = bytes.fromhex(t["raw"])
    # every template of that capture starts flowEndMicroseconds(16), flowStartMicroseconds(16)
    end, start = raw[:16], raw[16:32]
    want["first_epoch"] = int.from_bytes(start[:8], "big") + int.from_bytes(start[8:], "big") / 1e6
    want["last_epoch"] = int.from_bytes(end[:8], "big") + int.from_bytes(end[8:], "big") / 1e6
    return "pmacct struct timeval in 16-byte microsecond elements"


DEVIATIONS = (_zero_uptime_as_1970, _unsigned_uptime, _v4_zero_v6_flow, _pmacct_usec)

#: captures where we decode fewer records than tshark, on purpose
STRICT_DROPS = {
    # the v5 header count (55582) disagrees with the datagram length: the header cannot be
    # trusted, the datagram is dropped whole and counted as bad_count
    "logstash__netflow5_test_invalid01.wrapped.pcap": 30,
}


def _corrected(truth: list[dict[str, Any]], causes: Counter[str]) -> list[dict[str, Any]]:
    from tests import truth as tmod

    out = []
    for t in truth:
        if t["kind"] in FLOW_KINDS:
            want = tmod.expected(t)
            for fix in DEVIATIONS:
                cause = fix(t, want)
                if cause:
                    causes[cause] += 1
            t = dict(t, _want=want)
        out.append(t)
    return out


def _captures() -> list[Path]:
    return sorted(CAPTURES.glob("*.pcap")) if CAPTURES.is_dir() else []


@pytest.fixture(scope="module")
def results() -> dict[str, dict[str, Any]]:
    out = {}
    causes: Counter[str] = Counter()
    for cap in _captures():
        ours, decoder = decode_file(str(cap))
        truth = _corrected(load_truth(cap), causes)
        res = match(ours, truth)
        res["decoder"] = decoder
        out[cap.name] = res
    out["_causes"] = {"causes": causes}
    return out


def test_every_capture_decodes(results: dict[str, dict[str, Any]]) -> None:
    assert len(results) - 1 >= 100


def test_records_match_truth(results: dict[str, dict[str, Any]]) -> None:
    total = good = 0
    unexplained = []
    for name, res in results.items():
        if name.startswith("_"):
            continue
        total += res["truth_records"]
        good += res["truth_records"] - res["bad_records"]
        if res["mismatches"]:
            unexplained.append((name, res["mismatches"][:3]))
        if res["missing"] and len(res["missing"]) != STRICT_DROPS.get(name):
            unexplained.append((name, f"missing {len(res['missing'])} records"))
    assert good / total >= 0.99, (good, total)
    assert not unexplained, unexplained
    # every named deviation was actually seen (a stale name would hide a change)
    causes = results["_causes"]["causes"]
    assert len(causes) == len(DEVIATIONS), causes


def test_no_capture_produces_errors_it_should_not(results: dict[str, dict[str, Any]]) -> None:
    index = json.loads(INDEX.read_text())
    for name, res in results.items():
        if name.startswith("_"):
            continue
        errors = res["decoder"].stats.totals().errors
        features = set(index[name]["features"])
        allowed = (
            {"unknown_template", "pending_expired"}
            if "data-without-template" in features
            else set()
        )
        if "malformed" in features or "v5-count-mismatch" in features:
            allowed |= {"truncated", "bad_length", "bad_count", "bad_sample", "bad_version"}
        if name == "ndpi__netflowv9.pcap":
            allowed |= {"unknown_template"}
        assert set(errors) <= allowed, (name, dict(errors))
