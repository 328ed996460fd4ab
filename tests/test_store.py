"""The timeline store (divertor/store.py): lines of every type, incidents, the traffic kept
around them, retention, schema, and durability through SIGKILL of a writer.

The scenario tests record a real replay: `divertor.replay_cmd.replay` with a Pipeline that
hands over its settled RateFrames and snapshots the top talkers at incident transitions (what
the engine will do), then `record_replay`.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import thresholds as thresholds_mod
from detector.contracts import RateFrame
from divertor import config as config_mod
from divertor import replay_cmd
from divertor.incidents_cmd import record_replay, thresholds_lines
from divertor.pipeline import Pipeline, Timeline
from divertor.store import MIN_RATE, SCHEMA_VERSION, StoreError, TimelineStore
from tests import shared
from thresholds.model import CLASSES, METRICS, ThresholdSet

ROOT = Path(__file__).resolve().parents[1]
needs_scenarios = pytest.mark.skipif(
    not shared.SCENARIOS.is_dir(), reason="shared/testdata not beside the repo"
)
UDP, PPS, BPS = CLASSES.index("udp"), METRICS.index("pps"), METRICS.index("bps")


# ---------------------------------------------------------------------- the harness
class RecordingPipeline(Pipeline):
    """The real Pipeline, plus: every settled RateFrame (frames leave the keeper only
    through ``advance``, which ``ingest`` calls too) and a snapshot of the top talkers of a
    prefix at each of its incident transitions."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.frames: list[RateFrame] = []
        self.talker_snapshots: dict[tuple[int, str], dict[str, list[Any]]] = {}
        advance = self.keeper.advance

        def recording_advance(now: float) -> list[RateFrame]:
            frames = advance(now)
            self.frames.extend(frames)
            return frames

        self.keeper.advance = recording_advance  # type: ignore[method-assign]

    def _evaluate(self, t: float, out: Timeline) -> None:
        n = len(out.lines)
        super()._evaluate(t, out)
        entries = {str(net): i for i, net in enumerate(self.index.networks)}
        for line in out.lines[n:]:
            if line["type"] == "incident" and line["prefix"] in entries:
                entry = entries[line["prefix"]]
                if line["from"] in ("normal", "closed"):  # a new incident: its own talkers
                    self.keeper.talkers.reset(entry)
                top = self.keeper.talkers.top(entry, 10)
                if any(top.values()):
                    self.talker_snapshots[line["incident"], line["prefix"]] = top


def flush(pipe: RecordingPipeline) -> None:
    """Settle the bins still open at the end of the replay."""
    bin_s = pipe.ts.bin_seconds
    pipe.keeper.advance((pipe.keeper.newest + pipe.keeper.config.window_bins + 1) * bin_s)


@functools.cache
def replay_scenario(
    name: str, drain: float = 700.0, allowlist: bool = True
) -> tuple[list[dict[str, Any]], list[RateFrame], list[tuple[int, str, dict[str, Any]]]]:
    capture = str(shared.SCENARIOS / name / "flows.pcap")
    config = str(ROOT / "examples" / "scenarios" / name / "divertor.yaml")
    feed = str(shared.SCENARIOS / name / "allowlist.jsonl") if allowlist else None
    original = replay_cmd.Pipeline
    replay_cmd.Pipeline = RecordingPipeline  # type: ignore[misc]
    try:
        lines, pipe = replay_cmd.replay(capture, config, drain=drain, allowlist_feed=feed)
    finally:
        replay_cmd.Pipeline = original  # type: ignore[misc]
    assert isinstance(pipe, RecordingPipeline)
    flush(pipe)
    talkers = [(i, p, top) for (i, p), top in pipe.talker_snapshots.items()]
    return lines, pipe.frames, talkers


def scenario_thresholds(name: str) -> ThresholdSet:
    cfg = config_mod.load(str(ROOT / "examples" / "scenarios" / name / "divertor.yaml"))
    return thresholds_mod.load(cfg.thresholds)


def record_scenario(tmp: Path, name: str = "udp-flood") -> tuple[str, list[int]]:
    lines, frames, talkers = replay_scenario(name)
    path = str(tmp / f"{name}.db")
    ids = record_replay(lines, frames, talkers, path, scenario_thresholds(name))
    return path, ids


def frame(t: float, prefixes: tuple[str, ...], udp_pps: list[float]) -> RateFrame:
    values = np.zeros((len(prefixes), len(CLASSES), len(METRICS)))
    values[:, UDP, PPS] = udp_pps
    values[:, UDP, BPS] = np.asarray(udp_pps) * 8000
    return RateFrame(start=t, seconds=1.0, prefixes=prefixes, values=values)


def incident_line(t: float, n: int, prefix: str, old: str, new: str) -> dict[str, Any]:
    return {
        "time": t,
        "type": "incident",
        "incident": n,
        "prefix": prefix,
        "from": old,
        "to": new,
        "vector": "udp_flood",
        "reason": f"{old} to {new}",
    }


A, B = "198.18.10.0/24", "198.18.64.0/22"


# ---------------------------------------------------------------------- real replays
@needs_scenarios
def test_udp_flood_incident_record(tmp_path: Path) -> None:
    path, ids = record_scenario(tmp_path)
    lines, frames, _ = replay_scenario("udp-flood")
    with TimelineStore(path, readonly=True) as store:
        (inc,) = store.incidents()
        assert ids == [inc.id]
        assert inc.prefix == A and inc.vector == "udp_flood"
        assert inc.states == ("suspected", "diverted", "cooling_down", "closed")
        assert inc.announced == (A,) and inc.end_reason == "closed"
        first = min(x["time"] for x in lines if x["type"] == "incident")
        closed = max(x["time"] for x in lines if x["type"] == "incident")
        assert (inc.first_time, inc.end_time) == (first, closed)
        assert inc.duration == closed - first
        rec = store.incident(inc.id)
        # every line of the incident, and the prefix's verdicts, in time order
        mine = [x for x in lines if x.get("incident") == 1]
        assert [x for x in rec.lines if x["type"] != "verdict"] == mine
        assert [x["time"] for x in rec.lines] == sorted(x["time"] for x in rec.lines)
        assert any(x["type"] == "verdict" and x["status"] == "over" for x in rec.lines)
        # traffic from pre_incident (300 s) before the start to the end, bin by bin
        tr = rec.traffic
        labels = json.loads((shared.SCENARIOS / "udp-flood" / "labels.json").read_text())
        assert tr.start <= first - 290 and tr.times[-1] <= closed
        assert tr.times[-1] >= labels["end"] - 10  # to the end of the capture's data
        assert tr.values.shape[1:] == (len(CLASSES), len(METRICS))
        # the stored bins are the pipeline's frames, to the bit
        by_time = {f.start: f.values[f.prefixes.index(A)] for f in frames}
        for k in range(len(tr.times)):
            expected = by_time.get(float(tr.times[k]), np.zeros((len(CLASSES), len(METRICS))))
            if expected.max() >= MIN_RATE:
                np.testing.assert_array_equal(tr.values[k], expected)
            else:  # no traffic: float residue of the keeper's counters is not stored
                assert not tr.values[k].any() and expected.max() < 1e-5
        # the flood: ~290 kpps of UDP for about two minutes, a few kpps before
        udp = tr.values[:, UDP, PPS]
        assert udp.max() > 250_000
        assert (udp > 100_000).sum() >= 100
        assert udp[: int(first - 60 - tr.start)].max() < 30_000
        assert rec.limits is not None and rec.limits["thresholds"]["udp"] == {"pps": 80000.0}
        assert rec.talkers[A]["dst_port"] and rec.talkers[A]["src_addr"]
        share = rec.allowlisted_share()
        assert share is not None and share["before"]["udp"] > 0.5 > share["during"]["udp"]


@needs_scenarios
def test_rolling_retention_keeps_only_recent_bins_of_quiet_prefixes(tmp_path: Path) -> None:
    lines, frames, talkers = replay_scenario("udp-flood")
    live = [f for f in frames if f.start <= 1739870520]  # up to the capture's end
    path = str(tmp_path / "t.db")
    record_replay(lines, live, talkers, path)
    newest = max(f.start for f in live)
    b = live[0].prefixes.index(B)
    quiet = {f.start for f in live if f.values[b].max() >= MIN_RATE}
    db = sqlite3.connect(path)
    kept = {t for (t,) in db.execute("SELECT t FROM bins WHERE prefix = ?", (B,))}
    assert {t for t in quiet if t >= newest - 600} <= kept  # the last 600 s ...
    assert kept <= {t for t in quiet if t >= newest - 660}  # ... (+ one roll step), no more
    assert len(kept) > 500
    (pinned,) = db.execute("SELECT min(t) FROM bins WHERE prefix = ? AND pinned = 1", (A,))
    assert pinned[0] < newest - 600  # the incident's bins outlive the rolling window


# ---------------------------------------------------------------------- synthetic
def test_lines_of_every_type_and_queries(tmp_path: Path) -> None:
    store = TimelineStore(str(tmp_path / "t.db"))
    store.add_many(
        [
            {"time": 10.0, "type": "config", "event": "reload", "file": "divertor.yaml"},
            {"time": 11.0, "type": "allowlist", "version": 42, "entries": 31000},
            incident_line(12.0, 1, A, "normal", "suspected"),
            {
                "time": 13.0,
                "type": "operator",
                "action": "divert",
                "prefix": A,
                "who": "alice",
                "reason": "customer call",
            },
            {"time": 14.0, "type": "exporter", "exporter": "192.0.2.1", "event": "silent"},
            {"time": 15.0, "type": "announce", "prefix": A, "incident": 1, "reason": "r"},
        ],
        wall_time=1000.0,
    )
    assert [x["type"] for x in store.lines(types=["operator", "exporter"])] == [
        "operator",
        "exporter",
    ]
    assert [x["time"] for x in store.lines(since=11.0, until=13.0)] == [11.0, 12.0, 13.0]
    assert store.lines(prefix=A)[1]["who"] == "alice"
    rec = store.incident(1)
    kinds = [x["type"] for x in rec.lines]
    assert kinds == ["incident", "operator", "exporter", "announce"]  # + global meanwhile
    with pytest.raises(ValueError, match="time"):
        store.add({"type": "x"})
    with pytest.raises(ValueError, match="type"):
        store.add_many([{"time": 20.0, "type": "ok"}, {"time": 21.0}])
    assert store.lines(since=20.0) == []  # all or nothing
    with pytest.raises(KeyError):
        store.incident(99)


def test_incident_ids_are_the_stores_across_engine_restarts(tmp_path: Path) -> None:
    path = str(tmp_path / "t.db")
    for run in range(2):  # two replays (or engine starts): the engine numbers from 1 again
        with TimelineStore(path) as store:
            assert store.next_incident_id() == run + 1
            store.add_many(
                [
                    incident_line(100.0 * run, 1, A, "normal", "suspected"),
                    incident_line(100.0 * run + 10, 1, A, "suspected", "diverted"),
                    {
                        "time": 100.0 * run + 10,
                        "type": "announce",
                        "prefix": "198.18.10.0/25",
                        "incident": 1,
                        "reason": "x",
                    },
                ]
            )
    with TimelineStore(path, readonly=True) as store:
        first, second = store.incidents()
        assert (first.id, second.id) == (1, 2) and first.engine_id == second.engine_id == 1
        assert first.end_reason == "superseded by a new incident of the prefix"
        assert second.end_time is None and second.state == "diverted"
        assert second.announced == ("198.18.10.0/25",)
        lines = store.incident(2).lines
        assert [x["incident"] for x in lines] == [2, 2, 2]
        assert {x["engine_incident"] for x in lines} == {1}


def test_traffic_window_and_rolling_retention(tmp_path: Path) -> None:
    store = TimelineStore(str(tmp_path / "t.db"), keep_recent=600, synchronous="NORMAL")
    prefixes = (A, B)
    # incident on A from 1000 to 1200 (its close line comes before its bins settle)
    for t in range(0, 2400):
        if t == 1100:  # lines run ahead of settled frames
            store.add(incident_line(1000.0, 7, A, "normal", "suspected"))
        if t == 1150:
            store.add(incident_line(1200.0, 7, A, "suspected", "closed"))
        store.add_rateframe(frame(float(t), prefixes, [1.0 + t, 2.0]))
    rec = store.incident(1)
    assert rec.traffic.start == 700.0 and rec.traffic.times[-1] == 1200.0
    np.testing.assert_array_equal(rec.traffic.values[:, UDP, PPS], np.arange(701.0, 1202.0))
    db = store.db
    (lo_b,) = db.execute("SELECT min(t) FROM bins WHERE prefix = ?", (B,)).fetchone()
    assert 2399 - 600 - 60 <= lo_b <= 2399 - 600
    kept_a = {r[0] for r in db.execute("SELECT t FROM bins WHERE prefix = ?", (A,))}
    assert set(range(700, 1201)) <= kept_a and 699.0 not in kept_a and 1300.0 not in kept_a


def test_zero_bins_read_as_zeros_and_layout_is_checked(tmp_path: Path) -> None:
    store = TimelineStore(str(tmp_path / "t.db"))
    store.add(incident_line(5.0, 1, A, "normal", "suspected"))
    store.add_rateframes([frame(t, (A,), [0.0 if t == 7 else 5.0]) for t in (6.0, 7.0, 8.0)])
    tr = store.incident(1).traffic
    assert tr.times.tolist() == [6.0, 7.0, 8.0]
    assert tr.values[:, UDP, PPS].tolist() == [5.0, 0.0, 5.0]
    bad = RateFrame(1.0, 1.0, (A,), np.zeros((1, 3, 3)))
    with pytest.raises(ValueError, match="classes"):
        store.add_rateframe(bad)


def test_talkers_and_thresholds_lines(tmp_path: Path) -> None:
    store = TimelineStore(str(tmp_path / "t.db"))
    ts = scenario_thresholds("udp-flood") if shared.SCENARIOS.is_dir() else None
    if ts is not None:
        store.add_many(thresholds_lines(ts, 1.0))
    store.add(incident_line(5.0, 3, A, "normal", "suspected"))
    store.add_talkers(3, A, {"src_addr": [("203.0.113.9", 900)], "dst_port": [(5060, 10)]})
    store.add_talkers(3, A, {"src_addr": [("203.0.113.7", 1900)], "dst_port": [(5060, 20)]})
    with pytest.raises(KeyError):
        store.add_talkers(4, A, {})
    rec = store.incident(1)
    assert rec.talkers == {A: {"src_addr": [["203.0.113.7", 1900]], "dst_port": [[5060, 20]]}}
    if ts is not None:
        assert rec.limits is not None and rec.limits["host_thresholds"]["udp"]["pps"] == 50000
        assert rec.thresholds()["total"] == {"pps": 100000.0, "bps": 800e6}


def test_prune_by_age(tmp_path: Path) -> None:
    day = 86400.0
    store = TimelineStore(str(tmp_path / "t.db"), max_age_days=30, audit_max_age_days=365)
    store.add({"time": 1.0, "type": "verdict", "prefix": A, "status": "over"}, wall_time=0)
    store.add(incident_line(1.0, 1, A, "normal", "suspected"), wall_time=0)
    store.add(incident_line(2.0, 1, A, "suspected", "closed"), wall_time=0)
    store.add_rateframe(frame(1.0, (A,), [3.0]), wall_time=0)
    store.add({"time": 3.0, "type": "verdict", "prefix": A, "status": "normal"}, wall_time=40 * day)
    assert store.prune(now=31 * day) == {"bins": 1, "lines": 1, "incidents": 0}
    assert [x["type"] for x in store.lines()] == ["incident", "incident", "verdict"]
    assert len(store.incidents()) == 1
    out = store.prune(now=400 * day)
    assert out["incidents"] == 1 and out["lines"] == 3 and store.incidents() == []


def test_schema_version_and_bad_files(tmp_path: Path) -> None:
    path = tmp_path / "t.db"
    TimelineStore(str(path)).close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone() == (
        str(SCHEMA_VERSION),
    )
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (SCHEMA_VERSION + 1,))
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer"):
        TimelineStore(str(path))
    with pytest.raises(StoreError):
        TimelineStore(str(path), readonly=True)
    (tmp_path / "junk.db").write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError):
        TimelineStore(str(tmp_path / "junk.db"), readonly=True)
    with pytest.raises(StoreError):
        TimelineStore(str(tmp_path / "missing.db"), readonly=True)


WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from detector.contracts import RateFrame
    from divertor.store import TimelineStore
    from thresholds.model import CLASSES, METRICS

    store = TimelineStore(sys.argv[1])
    store.add({"time": 0.0, "type": "incident", "incident": 1, "prefix": "198.18.10.0/24",
               "from": "normal", "to": "suspected", "reason": "r"})
    i = 0
    while True:
        i += 1
        store.add({"time": float(i), "type": "verdict", "prefix": "198.18.10.0/24",
                   "seq": i, "pad": "x" * 500})
        v = np.full((1, len(CLASSES), len(METRICS)), float(i))
        store.add_rateframe(RateFrame(float(i), 1.0, ("198.18.10.0/24",), v))
        print(i, flush=True)
    """
)


def test_committed_lines_survive_sigkill_of_the_writer(tmp_path: Path) -> None:
    path = str(tmp_path / "t.db")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, path], stdout=subprocess.PIPE, env=env, text=True
    )
    assert proc.stdout is not None
    acked = 0
    try:
        for line in proc.stdout:
            acked = int(line)
            if acked >= 300:
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL and acked >= 300
    assert os.path.exists(path + "-wal")  # killed mid-stream: nothing checkpointed it away
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    seqs = [
        json.loads(b)["seq"] for (b,) in db.execute("SELECT body FROM lines WHERE type = 'verdict'")
    ]
    assert seqs[:acked] == list(range(1, acked + 1))  # every acknowledged one (and maybe +1)
    assert len(seqs) in (acked, acked + 1)
    (n,) = db.execute("SELECT count(*) FROM bins").fetchone()
    assert n >= acked
    db.close()
    with TimelineStore(path) as store:  # a writer opens it again and goes on
        rec = store.incident(1)
        assert rec.traffic.values[:acked, 0, 0].tolist() == [float(i) for i in range(1, acked + 1)]
        store.add({"time": 1e6, "type": "note", "reason": "after the crash"})
        assert store.lines(since=1e6)[0]["reason"] == "after the crash"


def test_interrupted_incidents_end_and_stop_pinning(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="pre_incident"):
        TimelineStore(str(tmp_path / "x.db"), keep_recent=100, pre_incident=300)
    store = TimelineStore(str(tmp_path / "t.db"), synchronous="NORMAL")
    store.add_many([incident_line(10.0, 1, A, "normal", "suspected"),
                    incident_line(10.0, 2, B, "normal", "suspected")])  # fmt: skip
    assert store.mark_interrupted("replay ended", at=50.0, ids=[1]) == 1
    a, b = store.incidents()
    assert (a.end_time, a.end_reason, b.end_time) == (50.0, "replay ended", None)
    store.add_rateframes([frame(t, (A, B), [1.0, 1.0]) for t in (40.0, 60.0)])
    pinned = dict(store.db.execute("SELECT prefix || t, pinned FROM bins").fetchall())
    assert pinned == {f"{A}40.0": 1, f"{A}60.0": 0, f"{B}40.0": 1, f"{B}60.0": 1}
    assert store.incident(1).traffic.times.tolist() == [40.0]
    assert store.mark_interrupted("engine restarted") == 1  # every one still open
