"""Which embedded store for the rate history: DuckDB, Parquet (pyarrow) or SQLite.

Usage: .venv/bin/python bench/history_store.py [--prefixes 1000] [--days 7] [--dir /tmp/hs]

The same layout in the three (docs/history.md): a 1 s table with one row per (prefix, minute)
holding, per class and metric, the minute's 60 one-second rates as one float32 array, and a
1 min table with one row per (prefix, minute) holding the mean and the max of each class and
metric (72 float32 columns). Measured:

1. append: settled 1 s RateFrames (``prefixes`` x 12 classes x 3 metrics, float64) buffered
   for a minute, then written as the minute's 1 s rows and 1 min rows (what the history
   writer does): frames per second, for 30 minutes of frames;
2. read 1 min: ``days`` x ``prefixes`` of the 1 min table (all 72 columns) into a pandas
   DataFrame (what baselines and recommendations read);
3. read 1 s: 6 hours x ``prefixes`` of 3 channels of the 1 s table into a dense numpy array
   (time, prefix, channel) (what a backtest reads, chunk by chunk).

SQLite's 1 min read is measured on one day and scaled to ``days`` when ``--sqlite-days`` is
less than ``days`` (the line says so).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sqlite3
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from thresholds.model import CLASSES, METRICS  # noqa: E402

CH = [f"{c}.{m}" for c in CLASSES for m in METRICS]  # 36 channels
STAT_COLS = [f"{c}_{s}" for c in CH for s in ("mean", "max")]
F32 = npt.NDArray[np.float32]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def minute_block(frames: npt.NDArray[np.float64]) -> tuple[F32, F32]:
    """(60, P, 36) rates of one minute -> 1 s rows (P, 36, 60) and 1 min stats (P, 72)."""
    block = np.ascontiguousarray(frames.astype(np.float32).transpose(1, 2, 0))
    stats = np.stack([block.mean(axis=2), block.max(axis=2)], axis=2).reshape(len(block), -1)
    return block, stats


def ones_table(t: int, block: F32) -> pa.Table:
    p = block.shape[0]
    cols: dict[str, pa.Array] = {
        "t": pa.array(np.full(p, t, dtype=np.int64)),
        "prefix": pa.array(np.arange(p, dtype=np.int32)),
    }
    for k, name in enumerate(CH):
        flat = pa.array(np.ascontiguousarray(block[:, k, :]).reshape(-1))
        cols[name] = pa.FixedSizeListArray.from_arrays(flat, 60)
    return pa.table(cols)


def stats_table(t: npt.NDArray[np.int64], prefix: npt.NDArray[np.int32], stats: F32) -> pa.Table:
    cols: dict[str, pa.Array] = {"t": pa.array(t), "prefix": pa.array(prefix)}
    for k, name in enumerate(STAT_COLS):
        cols[name] = pa.array(np.ascontiguousarray(stats[:, k]))
    return pa.table(cols)


class Duck:
    name = "DuckDB " + duckdb.__version__

    def __init__(self, d: Path) -> None:
        self.db = duckdb.connect(str(d / "h.duckdb"))
        arrays = ", ".join(f'"{c}" FLOAT[60]' for c in CH)
        scal = ", ".join(f'"{c}" FLOAT' for c in STAT_COLS)
        self.db.execute(f"CREATE TABLE s1 (t BIGINT, prefix INTEGER, {arrays})")
        self.db.execute(f"CREATE TABLE m1 (t BIGINT, prefix INTEGER, {scal})")

    def write(self, ones: pa.Table | None, stats: pa.Table) -> None:
        self.db.execute("BEGIN")
        if ones is not None:
            self.db.register("o", ones)
            self.db.execute("INSERT INTO s1 SELECT * FROM o")
            self.db.unregister("o")
        self.db.register("m", stats)
        self.db.execute("INSERT INTO m1 SELECT * FROM m")
        self.db.unregister("m")
        self.db.execute("COMMIT")

    def read_minutes(self, t0: int, t1: int) -> pd.DataFrame:
        return self.db.execute("SELECT * FROM m1 WHERE t >= ? AND t < ?", [t0, t1]).df()

    def read_ones(self, t0: int, t1: int, chans: list[str]) -> pa.Table:
        cols = ", ".join(f'"{c}"' for c in chans)
        q = f"SELECT t, prefix, {cols} FROM s1 WHERE t >= $a AND t < $b"
        return self.db.sql(q, params={"a": t0, "b": t1}).to_arrow_table()


class Parquet:
    name = "Parquet (pyarrow " + pa.__version__ + ")"

    def __init__(self, d: Path) -> None:
        self.d = d
        (d / "s1").mkdir()
        (d / "m1").mkdir()
        self.n = 0

    def write(self, ones: pa.Table | None, stats: pa.Table) -> None:
        self.n += 1
        if ones is not None:
            pq.write_table(ones, self.d / "s1" / f"{self.n:08d}.parquet")
        pq.write_table(stats, self.d / "m1" / f"{self.n:08d}.parquet")

    def read_minutes(self, t0: int, t1: int) -> pd.DataFrame:
        return pd.read_parquet(self.d / "m1", filters=[("t", ">=", t0), ("t", "<", t1)])

    def read_ones(self, t0: int, t1: int, chans: list[str]) -> pa.Table:
        return pq.read_table(
            self.d / "s1",
            columns=["t", "prefix", *chans],
            filters=[("t", ">=", t0), ("t", "<", t1)],
        )


class Lite:
    name = "SQLite " + sqlite3.sqlite_version

    def __init__(self, d: Path) -> None:
        self.db = sqlite3.connect(str(d / "h.sqlite"))
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        scal = ", ".join(f'"{c}" REAL' for c in STAT_COLS)
        self.db.execute(
            "CREATE TABLE s1 (t INTEGER, prefix INTEGER, v BLOB, PRIMARY KEY (t, prefix))"
        )
        self.db.execute(
            f"CREATE TABLE m1 (t INTEGER, prefix INTEGER, {scal}, PRIMARY KEY (t, prefix))"
        )

    def write(self, ones: pa.Table | None, stats: pa.Table) -> None:
        with self.db:
            if ones is not None:
                t = ones.column("t").to_numpy()
                p = ones.column("prefix").to_numpy()
                block = np.stack(
                    [
                        ones.column(c).combine_chunks().flatten().to_numpy().reshape(-1, 60)
                        for c in CH
                    ],
                    axis=1,
                )
                self.db.executemany(
                    "INSERT INTO s1 VALUES (?, ?, ?)",
                    zip(t.tolist(), p.tolist(), [b.tobytes() for b in block], strict=True),
                )
            cols = [stats.column(i).to_numpy() for i in range(stats.num_columns)]
            marks = ", ".join("?" * len(cols))
            self.db.executemany(
                f"INSERT INTO m1 VALUES ({marks})", zip(*(c.tolist() for c in cols), strict=True)
            )

    def read_minutes(self, t0: int, t1: int) -> pd.DataFrame:
        return pd.read_sql("SELECT * FROM m1 WHERE t >= ? AND t < ?", self.db, params=(t0, t1))

    def read_ones(self, t0: int, t1: int, chans: list[str]) -> pa.Table:
        rows = self.db.execute(
            "SELECT t, prefix, v FROM s1 WHERE t >= ? AND t < ?", (t0, t1)
        ).fetchall()
        idx = [CH.index(c) for c in chans]
        t = np.array([r[0] for r in rows], dtype=np.int64)
        p = np.array([r[1] for r in rows], dtype=np.int32)
        v = np.frombuffer(b"".join(r[2] for r in rows), dtype=np.float32).reshape(len(rows), 36, 60)
        cols: dict[str, pa.Array] = {"t": pa.array(t), "prefix": pa.array(p)}
        for k, c in zip(idx, chans, strict=True):
            cols[c] = pa.FixedSizeListArray.from_arrays(pa.array(v[:, k].reshape(-1)), 60)
        return pa.table(cols)


def dense(tab: pa.Table, chans: list[str], t0: int, minutes: int, prefixes: int) -> F32:
    """Rows of the 1 s table -> (seconds, prefixes, channels), NaN where no row."""
    out = np.full((minutes, 60, prefixes, len(chans)), np.nan, dtype=np.float32)
    m = (tab.column("t").to_numpy() - t0) // 60
    p = tab.column("prefix").to_numpy()
    for k, c in enumerate(chans):
        v = tab.column(c).combine_chunks().flatten().to_numpy().reshape(-1, 60)
        out[m, :, p, k] = v
    return out.reshape(minutes * 60, prefixes, len(chans))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prefixes", type=int, default=1000)
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--sqlite-days", type=int, default=1)
    ap.add_argument("--dir", default="/tmp/divertor-history-bench")
    ap.add_argument("--only", help="comma list of duckdb,parquet,sqlite")
    args = ap.parse_args()
    rng = np.random.default_rng(1)
    p = args.prefixes
    base = 1_740_000_000 // 86400 * 86400
    print(f"# history store, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(
        f"# cpu {cpu_model()} x {os.cpu_count()}, python {platform.python_version()}, "
        f"numpy {np.__version__}, pandas {pd.__version__}, load {os.getloadavg()[0]:.2f}; "
        f"{p} prefixes x 36 channels; store on {args.dir}"
    )
    print(
        "| store | append 1 s frames/s | read 1 min, days x prefixes -> pandas | rows | "
        "read 1 s, 6 h x 3 channels -> numpy | on disk MB |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    kinds: list[type[Duck] | type[Parquet] | type[Lite]] = [Duck, Parquet, Lite]
    if args.only:
        want = set(args.only.split(","))
        kinds = [k for k in kinds if k.__name__.lower()[:4] in {w[:4] for w in want}]
    for kind in kinds:
        d = Path(args.dir) / kind.__name__
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        store = kind(d)
        # 1. append 30 minutes of 1 s frames, a minute at a time (plus the roll-up)
        minutes = 30
        frames = rng.gamma(4.0, 250.0, size=(60, p, 12, 3))
        t_app = 0.0
        for m in range(minutes):
            t0 = time.perf_counter()
            block, stats = minute_block(frames.reshape(60, p, 36))
            tm = np.full(p, base + 60 * m, dtype=np.int64)
            store.write(
                ones_table(base + 60 * m, block),
                stats_table(tm, np.arange(p, dtype=np.int32), stats),
            )
            t_app += time.perf_counter() - t0
        fps = minutes * 60 / t_app
        # 1 s rows for 6 hours (3 channels filled: the rest as written above is random too)
        for m in range(minutes, 360):
            block, stats = minute_block(frames.reshape(60, p, 36))
            tm = np.full(p, base + 60 * m, dtype=np.int64)
            store.write(
                ones_table(base + 60 * m, block),
                stats_table(tm, np.arange(p, dtype=np.int32), stats),
            )
        # 2. 1 min rows for `days` (a day at a time); SQLite only for sqlite_days
        days = args.sqlite_days if kind is Lite else args.days
        for day in range(days):
            n = 1440 * p
            t = (base + 86400 * day + 60 * (np.arange(n) // p)).astype(np.int64)
            stats = rng.gamma(4.0, 250.0, size=(n, 72)).astype(np.float32)
            t += 86400 * 30  # apart from the 30 min of the append test
            store.write(None, stats_table(t, np.tile(np.arange(p, dtype=np.int32), 1440), stats))
        t_read = time.perf_counter()
        df = store.read_minutes(base + 86400 * 30, base + 86400 * (30 + days))
        t1m = time.perf_counter() - t_read
        rows = len(df)
        del df
        scale = ""
        if days < args.days:
            t1m *= args.days / days
            scale = f" (measured on {days} d, x{args.days / days:g})"
        chans = ["total.pps", "total.bps", "udp.pps"]
        t_read = time.perf_counter()
        dense(store.read_ones(base, base + 6 * 3600, chans), chans, base, 360, p)
        t1s = time.perf_counter() - t_read
        size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file()) / 1e6
        print(
            f"| {kind.name} | {fps:,.0f} | {t1m:.1f} s{scale} | {rows:,} | {t1s:.2f} s "
            f"| {size:,.0f} |"
        )
        sys.stdout.flush()
        del store
        shutil.rmtree(d, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
