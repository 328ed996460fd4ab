"""History built from the shared scenario captures (`replay --history`): baselines learned
from a quiet period against labels.json, recommended thresholds that do not divert the
registration storm, and a backtest that diverts the UDP flood when the replay does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import thresholds
from divertor import backtest_cmd, history_cmd
from divertor.replay_cmd import replay
from history import baselines as bl
from history import recommend
from history.config import BaselineConfig
from tests import shared

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = shared.SCENARIOS
BASE = ROOT / "examples" / "scenarios" / "voip-site.thresholds.yaml"

pytestmark = pytest.mark.skipif(
    not SCENARIOS.is_dir(), reason="shared/testdata not beside the repo"
)


def _replay(name: str, history: Path, drain: float = 0.0) -> tuple[dict[str, Any], list[Any]]:
    labels = json.loads((SCENARIOS / name / "labels.json").read_text())
    lines, _ = replay(
        str(SCENARIOS / name / "flows.pcap"),
        str(ROOT / "examples" / "scenarios" / name / "divertor.yaml"),
        drain=drain,
        history=str(history),
    )
    return labels, lines


@pytest.fixture(scope="module")
def flash(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    d = tmp_path_factory.mktemp("hist-flash")
    # a quarter of an hour of history: accept it for the recommendation (docs/history.md)
    (d / "history.yaml").write_text("baseline:\n  min_samples: 10\n  min_days: 1\n")
    labels, _ = _replay("flash-crowd", d)
    return d, labels


@pytest.fixture(scope="module")
def flood(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], list[Any]]:
    d = tmp_path_factory.mktemp("hist-flood")
    labels, lines = _replay("udp-flood", d, drain=900.0)
    return d, labels, lines


def test_baseline_from_the_quiet_period_matches_the_labels(
    flash: tuple[Path, dict[str, Any]],
) -> None:
    d, labels = flash
    store = history_cmd.open_store(str(d))
    quiet_end = labels["events"][0]["outage"][0]  # before the outage and the storm
    # the first ~60 s of a capture miss records whose template had not come yet
    cfg = BaselineConfig(source="seconds", min_samples=60, min_days=1)
    table = bl.compute(store, cfg, quiet_end, start=labels["start"] + 90)
    for p in labels["protected_prefixes"]:
        bg = p["background"]
        want = [("total.pps", bg["pps"]), ("total.bps", bg["bps"])]
        if "sip" in bg["classes"]:
            want.append(("sip.pps", bg["classes"]["sip"]["pps"]))
        for channel, truth in want:
            got = bl.lookup(table, p["prefix"], channel, quiet_end - 60)
            assert isinstance(got, bl.Baseline), got
            assert got.n >= 150 and got.median > 0
            # sampled flows (1:N) are noisier than the unsampled truth: the median agrees,
            # the tail is wider
            assert got.median == pytest.approx(truth["p50"], rel=0.12), (p["prefix"], channel)
            assert truth["p50"] < got.p95 < 1.6 * truth["p95"], (p["prefix"], channel, got)


def test_thin_scenario_history_is_not_enough_by_default(
    flash: tuple[Path, dict[str, Any]],
) -> None:
    d, labels = flash
    store = history_cmd.open_store(str(d))
    table = bl.compute(store, BaselineConfig(), labels["end"])
    assert (table["status"] == bl.THIN).all()
    got = bl.lookup(table, "198.18.10.0/24", "sip.pps", labels["start"] + 300)
    assert isinstance(got, bl.NotEnoughHistory) and "need 30" in got.reason


def test_recommended_file_loads_and_does_not_divert_the_registration_storm(
    flash: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    d, _labels = flash
    store = history_cmd.open_store(str(d))
    text = recommend.recommend(store, None, BASE.read_text())
    rec = tmp_path / "recommended.yaml"
    rec.write_text(text)
    ts = thresholds.load(str(rec))  # valid for the loader
    sbc = ts.policy("198.18.10.0/24")
    assert sbc is not None and sbc.thresholds["sip"].pps is not None
    assert "sip.pps: p100 " in text and "crossed by 0 of" in text
    # over the same history: the storm is not diverted
    res = backtest_cmd.backtest(str(rec), store, None, None)
    assert res.diversions == []
    # nor by the engine replaying the capture with it
    cfg = tmp_path / "divertor.yaml"
    src = (ROOT / "examples" / "scenarios" / "flash-crowd" / "divertor.yaml").read_text()
    cfg.write_text(src.replace("thresholds: ../voip-site.thresholds.yaml", f"thresholds: {rec}"))
    lines, _ = replay(str(SCENARIOS / "flash-crowd" / "flows.pcap"), str(cfg), drain=300.0)
    assert not [x for x in lines if x["type"] == "announce"]


def test_backtest_diverts_the_udp_flood_when_the_replay_does(
    flood: tuple[Path, dict[str, Any], list[Any]],
) -> None:
    d, labels, lines = flood
    store = history_cmd.open_store(str(d))
    res = backtest_cmd.backtest(str(BASE), store, None, None)
    announces = [x for x in lines if x["type"] == "announce"]
    assert [a["prefix"] for a in announces] == ["198.18.10.0/24"]
    assert [x.prefix for x in res.diversions] == ["198.18.10.0/24"]
    got, replayed = res.diversions[0], announces[0]["time"]
    # settled history has no export delay: the backtest is as early as the data allows,
    # the replay waits for the records (up to max_export_delay_s)
    assert replayed - labels["max_export_delay_s"] - 2 <= got.start <= replayed
    assert got.vector == "udp_flood"
    withdraw = next(x for x in lines if x["type"] == "withdraw")["time"]
    assert got.end is not None and abs((got.end - got.start) - (withdraw - replayed)) <= 20
    # the flood is excluded from the baselines' samples
    assert [p for p, *_ in store.excluded()] == ["198.18.10.0/24"]


@pytest.mark.skipif(not (SCENARIOS / "udp-flood" / "flows.pcap").exists(), reason="no scenarios")
def test_backtest_over_captures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`thresholds backtest FILE --capture PCAP --config divertor.yaml`: the history is built
    from the capture first (and removed after); the flood is found."""
    from divertor import cli

    cfg = ROOT / "examples" / "scenarios" / "udp-flood" / "divertor.yaml"
    site = ROOT / "examples" / "scenarios" / "voip-site.thresholds.yaml"
    pcap = SCENARIOS / "udp-flood" / "flows.pcap"
    args = ["thresholds", "backtest", str(site), "--capture", str(pcap), "--config", str(cfg)]
    assert cli.main([*args, "--json", "--no-progress"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines() if x.startswith("{")]
    diversions = [x for x in lines if x["type"] == "diversion"]
    assert [d["prefix"] for d in diversions] == ["198.18.10.0/24"], lines
    assert cli.main([*args[:3], "--capture", str(pcap)]) == 2  # --capture needs --config
    assert "needs --config" in capsys.readouterr().err
