"""The durable allowlist: versions, the change log, checkpoints, restore, deltas."""

from __future__ import annotations

import math
import random
import sqlite3
from pathlib import Path

import pytest

from allowlist import addr
from allowlist.service import delta_since
from allowlist.state import AllowlistState
from allowlist.store import DeltaUnavailable, Store
from allowlist.versions import delta


def _churn(st: AllowlistState, rng: random.Random, t0: float, steps: int) -> float:
    """Random adds, refreshes, removes and expiries from several sources."""
    pool = [addr.parse(f"10.{rng.randrange(4)}.{rng.randrange(8)}.{i}") for i in range(60)]
    pool += [addr.parse(f"2001:db8::{i:x}") for i in range(30)] + [addr.parse("192.0.2.0/24")]
    t = t0
    for _ in range(steps):
        t += rng.random() * 5
        key = rng.choice(pool)
        src = rng.choice(["feed", "feed", "api", "static"])
        if rng.random() < 0.7:
            st.add(key, src, math.inf if src == "static" else t + rng.choice([20, 60, 300]), t)
        else:
            st.remove(key, src, t)
    st.advance(t)
    return t


def _state_of(st: AllowlistState) -> set[tuple[int, str, float]]:
    return set(st.entries())


def test_restore_gives_the_same_set_and_version(tmp_path: Path) -> None:
    db = str(tmp_path / "allow.sqlite")
    st = AllowlistState(record=True)
    store = Store(db)
    rng = random.Random(3)
    t = _churn(st, rng, 1000.0, 400)
    store.flush(st)
    store.checkpoint(st, keep_versions=50)
    t = _churn(st, rng, t, 300)  # more changes after the checkpoint: replayed from the log
    store.flush(st)
    store.close()
    again = AllowlistState(record=True)
    assert Store(db).load(again) == st.version > 700
    assert _state_of(again) == _state_of(st)
    assert again.keys() == st.keys()
    # the restored state keeps expiring on event time like the original
    st.advance(t + 400)
    again.advance(t + 400)
    assert _state_of(again) == _state_of(st)


def test_every_change_has_its_version_in_the_log(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "a.sqlite"))
    st = AllowlistState(record=True)
    k = addr.parse("198.51.100.1")
    st.add(k, "feed", 160.0, 100.0)
    st.add(k, "feed", 200.0, 110.0)
    st.advance(300.0)
    st.add(k, "api", 500.0, 310.0)
    st.remove(k, "api", 320.0)
    store.flush(st)
    rows = sqlite3.connect(store.path).execute(
        "SELECT version, op, key, source, expires FROM changes ORDER BY version"
    )
    assert rows.fetchall() == [
        (1, "add", "198.51.100.1", "feed", 160.0),
        (2, "refresh", "198.51.100.1", "feed", 200.0),
        (3, "expire", "198.51.100.1", "feed", 200.0),
        (4, "add", "198.51.100.1", "api", 500.0),
        (5, "remove", "198.51.100.1", "api", 500.0),
    ]
    assert store.version == 5


def test_delta_between_any_two_versions_is_the_set_difference(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "d.sqlite"))
    st = AllowlistState(record=True)
    rng = random.Random(11)
    sets: dict[int, set[int]] = {0: set()}
    t = 0.0
    for _ in range(30):
        t = _churn(st, rng, t, 25)
        sets[st.version] = st.keys()  # the set as it was at that version
    store.flush(st)
    versions = sorted(sets)
    for _ in range(60):
        a, b = sorted(rng.sample(versions, 2))
        d = delta(store.changes_since(a), a, b, lambda k: st.holders(k).keys())
        assert set(d.added) == sets[b] - sets[a], (a, b)
        assert set(d.removed) == sets[a] - sets[b], (a, b)
    d = delta_since(st, store, versions[3])
    assert set(d.added) == st.keys() - sets[versions[3]] and d.version == st.version
    assert len(d) > 0


def test_checkpoint_prunes_the_log_and_old_deltas_are_refused(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "p.sqlite"))
    st = AllowlistState(record=True)
    t = _churn(st, random.Random(5), 0.0, 300)
    store.checkpoint(st, keep_versions=100)
    assert store.floor == st.version - 100
    assert store.stats()["log_changes"] == 100
    with pytest.raises(DeltaUnavailable, match="log starts after"):
        store.changes_since(store.floor - 1)
    assert len(store.changes_since(store.floor)) == 100
    _churn(st, random.Random(6), t, 10)
    store.flush(st)
    assert store.version == st.version


def test_a_store_of_another_format_is_refused(tmp_path: Path) -> None:
    db = str(tmp_path / "f.sqlite")
    Store(db).close()
    conn = sqlite3.connect(db)
    conn.execute("UPDATE meta SET value = '99' WHERE name = 'format'")
    conn.commit()
    with pytest.raises(ValueError, match="format 99"):
        Store(db)
