"""The rate history (history/): store, roll-ups, retention, baselines, thin history, and the
backtest's agreement with the state machine (synthetic data; no shared assets)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from detector.contracts import RateFrame
from divertor import history_cmd
from divertor.typedyaml import ConfigError
from history import backtest as bt
from history import baselines as bl
from history import recommend
from history.config import BaselineConfig, HistoryConfig, Retention
from history.recorder import diverted_periods
from history.rollup import CHANNELS, MinuteAccumulator, channel_index
from history.store import HistoryStore
from thresholds import loads

T0 = 1_739_923_200  # 2025-02-19 00:00 UTC
P = ("10.0.0.0/24", "10.0.1.0/24")
UDP = channel_index("udp.pps")


def _frames(start: float, n: int, value: float = 1.0, skip: int = 0) -> list[RateFrame]:
    return [
        RateFrame(start=start + i, seconds=1.0, prefixes=P, values=np.full((2, 12, 3), value + i))
        for i in range(n)
        if not skip or i % skip
    ]


def _bulk(store: HistoryStore, names: list[str], pps: np.ndarray, start: int) -> None:
    """(prefixes, seconds) udp/total pps, whole minutes, as the history holds them."""
    ids = store.prefix_ids(names)
    p, s = pps.shape
    minutes = s // 60
    values = np.full((p * minutes, len(CHANNELS), 60), np.nan, dtype=np.float32)
    for ch in ("udp.pps", "total.pps", "total.bps"):
        scale = 8000.0 if ch == "total.bps" else 1.0
        values[:, channel_index(ch), :] = (pps * scale).reshape(p * minutes, 60)
    t = (start + 60 * np.tile(np.arange(minutes), p)).astype(np.int64)
    store.insert(t, np.repeat(ids, minutes), values)


def test_minutes_hold_the_frames_and_gaps_are_nan(tmp_path: Path) -> None:
    store = HistoryStore(str(tmp_path))
    acc = MinuteAccumulator()
    # first frame at :31; every 7th bin has no frame (no traffic: zero, not a gap)
    blocks = acc.add(_frames(T0 + 30, 200, skip=7)) + acc.flush()
    assert [(b.t, b.covered) for b in blocks] == [
        (T0, 29),
        (T0 + 60, 60),
        (T0 + 120, 60),
        (T0 + 180, 50),
    ]
    store.append(blocks)
    chunk = store.seconds(T0, T0 + 240, list(P), ["udp.pps"])
    v = chunk.values[:, 0, 0]
    assert np.isnan(v[:31]).all()  # before the first frame: no data
    assert v[31] == 2.0 and v[37] == 0.0  # i=0 and 7 skipped: zero traffic inside the session
    assert np.isnan(v[230:]).all()  # after the last frame: no data
    df = store.minutes(channels=["udp.pps"])
    assert list(df["n"]) == [29, 29, 60, 60, 60, 60, 50, 50]
    row = df[(df["t"] == T0 + 60) & (df["prefix"] == P[0])].iloc[0]
    assert row["udp.pps:max"] == 90.0


def test_a_later_replay_fills_a_partial_minute(tmp_path: Path) -> None:
    store = HistoryStore(str(tmp_path))
    acc = MinuteAccumulator()
    store.append(acc.add(_frames(T0, 20)) + acc.flush())
    acc = MinuteAccumulator()
    store.append(acc.add(_frames(T0 + 40, 10, value=1000.0)) + acc.flush())
    v = store.seconds(T0, T0 + 60, list(P), ["udp.pps"]).values[:, 1, 0]
    assert v[0] == 1.0 and np.isnan(v[25]) and v[45] == 1005.0
    assert int(store.minutes()["n"].iloc[0]) == 30


def test_retention_is_bounded_per_resolution(tmp_path: Path) -> None:
    cfg = HistoryConfig(retention=Retention(seconds=3600.0, minutes=7200.0))
    store = HistoryStore(str(tmp_path), cfg)
    acc = MinuteAccumulator()
    for h in range(4):  # a minute of frames every hour
        store.append(acc.add(_frames(T0 + 3600 * h, 60)) + acc.flush())
    s1, m1 = store.span("s1"), store.span("m1")
    assert s1 is not None and m1 is not None
    assert s1[0] >= T0 + 3 * 3600 - 3600 and m1[0] >= T0 + 3 * 3600 - 7200
    assert m1[0] < s1[0]


def test_history_yaml_is_validated_with_its_line(tmp_path: Path) -> None:
    (tmp_path / "history.yaml").write_text("retention:\n  seconds: 10\nbaseline:\n  sauce: x\n")
    with pytest.raises(ConfigError, match=r"history.yaml:4:3: baseline.sauce: unknown key"):
        history_cmd.load_config(str(tmp_path))
    (tmp_path / "history.yaml").write_text("baseline: {source: hours}\n")
    with pytest.raises(ConfigError, match="expected minutes or seconds"):
        history_cmd.load_config(str(tmp_path))


def _diurnal(days: int, prefixes: int = 1) -> np.ndarray:
    s = np.arange(days * 86400)
    curve = 1000.0 + 9000.0 * (s % 86400 >= 12 * 3600)  # 1k pps at night, 10k by day
    rng = np.random.default_rng(3)
    return curve[None, :] * rng.uniform(0.9, 1.1, size=(prefixes, len(s)))


def test_baseline_knows_the_time_of_day(tmp_path: Path) -> None:
    store = HistoryStore(str(tmp_path))
    _bulk(store, ["10.0.0.0/24"], _diurnal(4), T0)
    cfg = BaselineConfig(days=14, metrics=("pps",))
    now = T0 + 4 * 86400.0
    table = bl.refresh(store, cfg, now)
    night = bl.lookup(table, "10.0.0.0/24", "udp.pps", T0 + 3 * 3600)
    day = bl.lookup(table, "10.0.0.0/24", "udp.pps", T0 + 15 * 3600)
    assert isinstance(night, bl.Baseline) and isinstance(day, bl.Baseline)
    assert night.kind == "hour" and night.days == 4 and night.n == 4 * 60
    assert 1050 <= night.p99 <= 1100 and 10500 <= day.p99 <= 11000  # per-minute peaks
    assert night.computed_at == now and day.mad > 0
    # stored with the time it was computed; not recomputed while fresh
    assert bl.refresh(store, cfg, now + 60)["computed_at"].max() == now


def test_thin_history_is_not_enough_history_never_zeros(tmp_path: Path) -> None:
    store = HistoryStore(str(tmp_path))
    _bulk(store, ["10.0.0.0/24"], _diurnal(1)[:, : 20 * 60], T0)  # 20 minutes
    table = bl.compute(store, BaselineConfig(), T0 + 1200.0)
    got = bl.lookup(table, "10.0.0.0/24", "udp.pps", T0 + 60)
    assert isinstance(got, bl.NotEnoughHistory)
    assert "20 samples, need 30" in got.reason and "1 days, need 3" in got.reason
    assert "not enough history" in str(got)
    assert isinstance(bl.lookup(table, "10.9.9.0/24", "udp.pps", T0), bl.NotEnoughHistory)
    # a gap: 3 days, but only 15 minutes of each hour
    store2 = HistoryStore(str(tmp_path / "gap"))
    pps = _diurnal(3)
    pps[:, (np.arange(pps.shape[1]) % 3600) >= 900] = np.nan
    _bulk(store2, ["10.0.0.0/24"], pps, T0)
    t2 = bl.compute(store2, BaselineConfig(), T0 + 3 * 86400.0)
    gap = bl.lookup(t2, "10.0.0.0/24", "udp.pps", T0 + 3600)
    assert isinstance(gap, bl.NotEnoughHistory) and "gap: 25% of the slot covered" in gap.reason


def test_recommend_falls_back_on_thin_history_and_loads(tmp_path: Path) -> None:
    store = HistoryStore(str(tmp_path))
    day = _diurnal(1, 2)[:, 12 * 3600 : 13 * 3600]
    _bulk(store, ["10.0.0.0/24", "10.0.1.0/24"], day, T0 + 12 * 3600)
    base = (
        "version: 1\ndefaults: {timing: {trigger: 10s}}\nprefixes:\n"
        "  10.0.0.0/24:\n    name: a\n    thresholds: {udp: {pps: 99k}}\n"
        "  10.0.1.0/24: {}\n"
    )
    cfg = HistoryConfig(baseline=BaselineConfig(min_samples=30, min_days=1))
    text = recommend.recommend(HistoryStore(str(tmp_path), cfg), None, base)
    ts = loads(text, source="<rec>")
    pol = ts.policy("10.0.0.0/24")
    assert pol is not None and pol.name == "a"
    # 60 minutes of ~10k udp pps, max ~11k x 1.5 -> 17k
    assert pol.thresholds["udp"].pps == 17000
    assert "udp.pps: p100 " in text and "crossed by 0 of 60 minutes" in text
    # thin: 20 minutes -> the base's threshold, said so
    thin = recommend.recommend(store, ["10.0.0.0/24"], base, t1=T0 + 12 * 3600 + 1200)
    assert "not enough history (20 minutes over 1 days" in thin
    tpol = loads(thin, source="<thin>").policy("10.0.0.0/24")
    assert tpol is not None and tpol.thresholds["udp"].pps == 99000


def test_backtest_runs_the_incident_state_machine(tmp_path: Path) -> None:
    store = HistoryStore(str(tmp_path))
    pps = np.full((1, 3600), 5000.0)
    pps[0, 600:900] = 200_000.0  # 5 minutes of flood
    pps[0, 2000:2006] = 200_000.0  # 6 s: over, but shorter than the trigger
    pps[0, 2500:2560] = 42_000.0  # 84 % of the threshold: a near miss
    _bulk(store, ["10.0.0.0/24"], pps, T0)
    ts = loads(
        "version: 1\nprefixes:\n  10.0.0.0/24: {thresholds: {udp: {pps: 50k}}}\n"
        "  10.0.1.0/24: {mode: monitor, thresholds: {udp: {pps: 1k}}}\n",
        source="<t>",
    )
    res = bt.run(ts, lambda p, c: store.iter_seconds(T0, T0 + 3600, p, c, 900), store.prefixes())
    assert res.missing == ("10.0.1.0/24",)
    assert len(res.diversions) == 1
    d = res.diversions[0]
    # over from bin 600: 10 s of data over (plus the averaging lag) -> divert at 611 or so
    assert T0 + 610 <= d.start <= T0 + 616, d.start - T0
    assert d.vector == "udp_flood" and "udp.pps > 50k" in d.reason
    # the flood ends at 900, its 5-s averages at 904: under for the 45-s window at 949,
    # then the 60-s hold-down: withdrawn at 1009 (the 300-s minimum is over by then)
    assert d.end == T0 + 1009 and d.duration == 1009 - (d.start - T0)
    misses = [(m.start - T0, round(m.ratio, 2)) for m in res.near_misses]
    assert [m[0] for m in misses] == [2000.0, 2504.0], misses  # 5-s averages
    assert res.near_misses[1].channel == "udp.pps" and 0.8 <= res.near_misses[1].ratio < 0.9


def test_monitor_mode_in_backtest_records_and_never_diverts(tmp_path: Path) -> None:
    store = HistoryStore(str(tmp_path))
    pps = np.full((1, 1800), 5000.0)
    pps[0, 600:900] = 200_000.0
    _bulk(store, ["10.0.0.0/24"], pps, T0)
    ts = loads(
        "version: 1\nprefixes:\n  10.0.0.0/24: {mode: monitor, thresholds: {udp: {pps: 50k}}}\n",
        source="<t>",
    )
    res = bt.run(ts, lambda p, c: store.iter_seconds(T0, T0 + 1800, p, c), store.prefixes())
    assert [d.monitor for d in res.diversions] == [True]
    assert not any(e.new.value == "diverted" for e in res.events)
    assert "monitor mode, would divert" in res.diversions[0].reason


def test_diverted_incidents_are_left_out_of_baselines() -> None:
    lines = [
        {"type": "incident", "incident": 1, "prefix": "a", "time": 100.0, "to": "suspected"},
        {"type": "incident", "incident": 1, "prefix": "a", "time": 110.0, "to": "diverted"},
        {"type": "incident", "incident": 1, "prefix": "a", "time": 900.0, "to": "closed"},
        {"type": "incident", "incident": 2, "prefix": "b", "time": 100.0, "to": "suspected"},
        {"type": "incident", "incident": 2, "prefix": "b", "time": 105.0, "to": "closed"},
    ]
    assert diverted_periods(lines) == [("a", 40.0, 900.0, "incident 1 diverted")]


def test_cli_backtest_diff_recommend_and_baseline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from divertor import cli

    d = tmp_path / "h"
    store = HistoryStore(str(d))
    pps = np.full((1, 1800), 5000.0)
    pps[0, 600:900] = 200_000.0
    _bulk(store, ["10.0.0.0/24"], pps, T0)
    store.close()
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("version: 1\nprefixes:\n  10.0.0.0/24: {thresholds: {udp: {pps: 50k}}}\n")
    b.write_text("version: 1\nprefixes:\n  10.0.0.0/24: {thresholds: {udp: {pps: 500k}}}\n")
    h = ["--history", str(d)]
    assert cli.main(["thresholds", "backtest", str(a), *h, "--json", "--no-progress"]) == 0
    lines = [__import__("json").loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["type"] for x in lines] == ["diversion"] and lines[0]["vector"] == "udp_flood"
    assert cli.main(["thresholds", "diff", str(a), str(b), *h, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "diversions: A 1, B 0" in out and "only A: 10.0.0.0/24" in out
    rec = tmp_path / "rec.yaml"
    assert cli.main(["thresholds", "recommend", "--all", *h, "-o", str(rec)]) == 0
    assert "not enough history" in rec.read_text()
    loads(rec.read_text(), source=str(rec))
    assert cli.main(["history", "baseline", *h]) == 0
    assert "not enough history: 1 days, need 3" in capsys.readouterr().out
    assert cli.main(["thresholds", "recommend", *h]) == 2  # neither PREFIX nor --all


def test_baselines_in_prefix_chunks_equal_all_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refresh reads CHUNK_PREFIXES prefixes at a time (bounded memory): same table."""
    store = HistoryStore(str(tmp_path))
    names = [f"10.0.{i}.0/24" for i in range(7)]
    _bulk(store, names, _diurnal(3, len(names)), T0)
    cfg = BaselineConfig(days=14, metrics=("pps",))
    now = T0 + 3 * 86400.0
    whole = bl.compute(store, cfg, now)
    monkeypatch.setattr(bl, "CHUNK_PREFIXES", 3)
    parts = bl.compute(store, cfg, now)
    key = ["prefix", "channel", "slot"]
    a = whole.sort_values(key).reset_index(drop=True)
    b = parts.sort_values(key).reset_index(drop=True)
    assert len(a) == len(b) > 0 and set(a["prefix"]) == set(names)
    pd.testing.assert_frame_equal(a, b)


def test_prefetch_keeps_order_and_raises_the_readers_error() -> None:
    from divertor.backtest_cmd import _prefetch

    assert list(_prefetch(iter(range(50)))) == list(range(50))  # type: ignore[arg-type]

    def broken() -> Any:
        yield 1
        raise OSError("disk gone")

    got = []
    with pytest.raises(OSError, match="disk gone"):
        for x in _prefetch(broken()):
            got.append(x)
    assert got == [1]
