"""Post-incident export (divertor/report.py, report_html.py) and `divertor incidents`
(divertor/incidents_cmd.py), on the udp-flood scenario recorded in a store."""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from divertor import incidents_cmd
from divertor.report import export
from divertor.store import TimelineStore
from tests.test_store import A, frame, incident_line, needs_scenarios, record_scenario
from thresholds.model import CLASSES, METRICS


@pytest.fixture(scope="module")
def flood(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, int]:
    path, ids = record_scenario(tmp_path_factory.mktemp("flood"))
    return path, ids[0]


class Tags(HTMLParser):
    """Every start tag with its attributes, and the text, of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def find(self, tag: str, cls: str | None = None) -> list[dict[str, str | None]]:
        """Tags ``tag`` (with the class ``cls`` among their classes)."""
        return [
            a
            for t, a in self.tags
            if t == tag and (cls is None or cls in (a.get("class") or "").split())
        ]


def parse(page: str) -> Tags:
    p = Tags()
    p.feed(page)
    p.close()
    return p


# ---------------------------------------------------------------------- JSON
@needs_scenarios
def test_json_is_the_whole_record(flood: tuple[str, int]) -> None:
    path, ident = flood
    with TimelineStore(path, readonly=True) as store:
        doc = json.loads(export(store, ident, "json"))
        rec = store.incident(ident)
    assert doc["format"] == "divertor-incident/1"
    inc = doc["incident"]
    assert (inc["id"], inc["prefix"], inc["vector"], inc["open"]) == (ident, A, "udp_flood", False)
    assert inc["states"] == ["suspected", "diverted", "cooling_down", "closed"]
    assert doc["lines"] == rec.lines
    s = doc["summary"]
    announce = next(x for x in rec.lines if x["type"] == "announce")
    withdraw = next(x for x in rec.lines if x["type"] == "withdraw")
    assert s["announced_at"] == announce["time"] and s["withdrawn_at"] == withdraw["time"]
    assert s["diverted_seconds"] == withdraw["time"] - announce["time"] == 300.0
    assert s["to_divert"] == announce["time"] - inc["first_time"] <= 15
    assert 300_000 < s["peak_total_pps"] < 400_000 and 2e9 < s["peak_total_bps"] < 4e9
    traffic = doc["traffic"]
    assert traffic["bins"] == len(rec.traffic.times) and traffic["start"] == rec.traffic.start
    udp = np.asarray(traffic["classes"]["udp"]["pps"])
    np.testing.assert_allclose(udp, rec.traffic.values[:, CLASSES.index("udp"), 1], atol=0.05)
    assert "icmp" in traffic["classes"] and set(traffic["classes"]["udp"]) == set(METRICS)
    assert doc["thresholds"]["udp"] == {"pps": 80000.0}
    assert doc["thresholds"]["unlisted_udp"] == {"pps": 20000.0}
    assert doc["host_thresholds"]["udp"] == {"pps": 50000.0}
    rules = {r["rule"]: r for r in doc["rules"]}
    assert rules["host udp.pps > 50k"]["hosts"] == ["198.18.10.21"]
    fired = rules["prefix unlisted_udp.pps > 20k"]
    assert fired["peak"] > 300_000 and fired["peak_bin"] > fired["peak"]  # 1-s vs 5-s average
    assert rules["host udp.pps > 50k"]["peak_bin"] is None  # no per-host bins
    back = next(x["time"] for x in rec.lines if x.get("status") == "normal")
    assert fired["first"] == inc["first_time"] and fired["until"] == back
    assert rules["host udp.pps > 50k"]["until"] == back
    share = doc["allowlisted_share"]
    assert share["before"]["udp"] > 0.8 and share["during"]["udp"] < 0.2
    assert doc["talkers"][A]["src_addr"]


def test_json_overrides_and_formats(tmp_path: Path) -> None:
    store = TimelineStore(str(tmp_path / "t.db"))
    store.add(incident_line(5.0, 1, A, "normal", "suspected"))
    doc = json.loads(export(store, 1, "json", thresholds={"udp": {"pps": 1234.0}}))
    assert doc["thresholds"] == {"udp": {"pps": 1234.0}}
    assert doc["allowlisted_share"] is None and doc["traffic"]["bins"] == 0
    with pytest.raises(ValueError, match="format"):
        export(store, 1, "pdf")
    with pytest.raises(KeyError):
        export(store, 2, "json")


# ---------------------------------------------------------------------- CSV
@needs_scenarios
def test_csv_bins_then_timeline(flood: tuple[str, int]) -> None:
    path, ident = flood
    with TimelineStore(path, readonly=True) as store:
        text = export(store, ident, "csv")
        rec = store.incident(ident)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert text.splitlines()[0] == (
        "record,time,time_utc,prefix,class,bps,pps,fps,type,incident,state,reason,line"
    )
    kinds = [r["record"] for r in rows]
    n_bins = kinds.count("bin")
    assert kinds == ["bin"] * n_bins + ["event"] * len(rec.lines)  # bins first, then events
    active = rec.traffic.active()
    assert n_bins == len(rec.traffic.times) * len(active)
    t = rec.traffic.times
    k = int(np.argmax(rec.traffic.values[:, CLASSES.index("udp"), 1]))
    peak = next(r for r in rows if r["class"] == "udp" and float(r["time"]) == t[k])
    v = rec.traffic.values[k, CLASSES.index("udp")]
    assert [float(peak[m]) for m in METRICS] == pytest.approx(v.tolist(), rel=1e-6)
    assert peak["prefix"] == A and peak["time_utc"].startswith("2025-02-18 09:1")
    events = rows[n_bins:]
    assert [json.loads(r["line"]) for r in events] == rec.lines
    ann = next(r for r in events if r["type"] == "announce")
    assert ann["incident"] == str(ident) and ann["reason"].startswith("over for 10s")
    moves = [r["state"] for r in events if r["type"] == "incident"]
    assert moves[0] == "normal → suspected" and moves[-1] == "cooling_down → closed"
    verdict = next(r for r in events if r["type"] == "verdict")
    assert re.match(r"prefix unlisted_udp\.pps > 20k: [\d,]+ against 20,000", verdict["reason"])


# ---------------------------------------------------------------------- HTML
@needs_scenarios
def test_html_is_one_self_contained_page(flood: tuple[str, int]) -> None:
    path, ident = flood
    with TimelineStore(path, readonly=True) as store:
        page = export(store, ident, "html")
        rec = store.incident(ident)
    doc = parse(page)
    tags = {t for t, _ in doc.tags}
    assert not tags & {"script", "link", "img", "iframe", "object", "embed"}
    assert not re.search(r"https?://|@import|url\(|src=", page)
    svgs = doc.find("svg")
    assert [a["data-metric"] for a in svgs] == ["pps", "bps"]
    series = [a["data-class"] for a in doc.find("polyline", "series")]
    assert series.count("total") == 2 and "udp" in series and "unlisted_udp" in series
    # the thresholds that fired: the prefix's unlisted_udp limit and the per-host udp limit
    text = " ".join(doc.text)
    assert "unlisted_udp limit 20 kpps" in text and "udp per-host limit 50 kpps" in text
    assert "total limit 800 Mbit/s" in text
    assert len(doc.find("line", "threshold")) == 3
    marks = [a["class"] for a in doc.find("line", "mark")]
    assert marks.count("mark announce") == 2 and marks.count("mark withdraw") == 2
    assert f"announce {A}" in text and f"withdraw {A}" in text and "cooling down" in text
    assert len(doc.find("rect", "diverted")) == 2
    # points inside the plot; the flood's peak near the top of the pps chart
    pts = doc.find("polyline", "series")[0]["points"] or ""
    xy = np.array([p.split(",") for p in pts.split()], dtype=float)
    assert (xy[:, 0] >= 78).all() and (xy[:, 0] <= 1300 - 24).all() and len(xy) <= 1300
    # tables: every timeline line, the allowlisted share, the talkers
    assert len(doc.find("tr", "verdict")) == sum(x["type"] == "verdict" for x in rec.lines)
    assert len(doc.find("tr", "incident")) == 4 and "84.2 %" in text
    assert "198.18.10.21" in text and "not available" not in text
    assert "SBCs / SIP edge" in text and page.count("<table") >= 5


def test_html_escapes_every_string_and_says_what_is_missing(tmp_path: Path) -> None:
    store = TimelineStore(str(tmp_path / "t.db"))
    evil = '<script>alert("x")</script>&"'
    line = incident_line(5.0, 1, A, "normal", "suspected")
    store.add({**line, "reason": evil, "vector": "<b>v</b>"})
    store.add({"time": 6.0, "type": "operator", "prefix": A, "who": "<i>mallory</i>",
               "reason": evil, "action": "divert"})  # fmt: skip
    store.add_rateframes([frame(t, (A,), [10.0]) for t in (1.0, 2.0, 3.0)])
    store.add_talkers(1, A, {"src_addr": [("<svg onload=x>", 5)]})
    page = export(store, 1, "html")
    assert "<script" not in page and "<i>" not in page and "<svg onload" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;&quot;" in page
    assert "&lt;svg onload=x&gt;" in page and "&lt;b&gt;v&lt;/b&gt;" not in page.split("<h1")[0]
    text = " ".join(parse(page).text)
    assert "not available" in text  # no allowlisted_share on these lines
    assert "No verdict over a threshold was recorded" in text
    empty = TimelineStore(str(tmp_path / "e.db"))
    empty.add(incident_line(5.0, 1, A, "normal", "suspected"))
    assert "No traffic recorded" in export(empty, 1, "html")


# ---------------------------------------------------------------------- CLI
def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="divertor")
    incidents_cmd.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    handler: Any = args.incidents_handler
    return int(handler(args))


@needs_scenarios
def test_cli_list_show_export(
    flood: tuple[str, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, ident = flood
    assert run_cli(["incidents", "list", "--store", path]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["ID", "PREFIX", "VECTOR", "FIRST", "SEEN", "(UTC)", "DURATION",
                              "STATE", "ANNOUNCED"]  # fmt: skip
    assert out[1].split()[:4] == [str(ident), A, "udp_flood", "2025-02-18"]
    assert "15 min 09 s" in out[1] and out[1].split()[-2:] == ["closed", A]
    assert run_cli(["incidents", "list", "--store", path, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["id"] == ident
    assert run_cli(["incidents", "show", str(ident), "--store", path]) == 0
    shown = capsys.readouterr().out
    assert f"Incident {ident}: {A}, udp_flood" in shown
    assert "suspected -> diverted -> cooling_down -> closed" in shown
    assert "udp 84% before, 9% during" in shown and "withdraw" in shown
    for fmt in ("json", "csv", "html"):
        out_file = tmp_path / f"r.{fmt}"
        argv = ["incidents", "export", str(ident), "--format", fmt, "-o", str(out_file)]
        assert run_cli([*argv, "--store", path]) == 0
        with TimelineStore(path, readonly=True) as store:
            expected = export(store, ident, fmt)
        body = out_file.read_text()
        assert body.split("generated")[0] == expected.split("generated")[0]
    assert run_cli(["incidents", "export", str(ident), "--store", path, "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["incident"]["id"] == ident
    limits = tmp_path / "t.yaml"
    limits.write_text(f"version: 1\nprefixes:\n  {A}:\n    thresholds:\n      udp: {{pps: 150k}}\n")
    argv = ["incidents", "export", str(ident), "--store", path, "--format", "json"]
    assert run_cli([*argv, "--thresholds", str(limits)]) == 0
    assert json.loads(capsys.readouterr().out)["thresholds"]["udp"] == {"pps": 150000.0}
    assert run_cli([*argv, "--thresholds", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml" in capsys.readouterr().err


def test_cli_errors_exit_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = str(tmp_path / "nope.db")
    assert run_cli(["incidents", "list", "--store", missing]) == 2
    assert "no timeline store at" in capsys.readouterr().err
    path = str(tmp_path / "t.db")
    with TimelineStore(path) as store:
        store.add(incident_line(5.0, 1, A, "normal", "suspected"))
    monkeypatch.setenv("DIVERTOR_STORE", path)  # the default store
    assert run_cli(["incidents", "show", "7"]) == 2
    assert "no incident 7" in capsys.readouterr().err
    assert run_cli(["incidents", "export", "7", "--format", "csv"]) == 2
    assert run_cli(["incidents", "show", "1"]) == 0
    assert "allowlisted not available" in capsys.readouterr().out
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"\0not sqlite" * 200)
    assert run_cli(["incidents", "list", "--store", str(junk)]) == 2
    assert "not a usable timeline store" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_cli(["incidents", "export", "1", "--format", "pdf"])
