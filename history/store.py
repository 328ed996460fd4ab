"""The rate history on disk: one DuckDB file, ``DIR/history.duckdb`` (docs/history.md says
why DuckDB, with the measurements of bench/history_store.py).

Tables:

* ``s1``: one row per (prefix, minute): for each channel (class.metric) the minute's 1 s
  rates as one ``FLOAT[60]`` array (NaN = no data). Kept ``retention.seconds``.
* ``m1``: one row per (prefix, minute): ``<channel>:mean`` and ``<channel>:max`` of the
  minute, and ``n`` (bins with data). Kept ``retention.minutes``.
* ``prefixes`` (id, prefix), ``meta`` (key, value), ``baselines`` (history/baselines.py).

Retention is applied on data time: rows older than the newest minute written minus the
retention go at every append. One writer at a time (DuckDB's rule for a file).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import duckdb
import numpy as np
import numpy.typing as npt
import pandas as pd
import pyarrow as pa

from history.config import HistoryConfig
from history.rollup import CHANNELS, F32, MINUTE, MinuteBlock, bins_per_minute

DB_FILE = "history.duckdb"
STATS = ("mean", "max")


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True, slots=True)
class SecondsChunk:
    """Dense 1 s history: values[bin, prefix, channel] from ``start``; NaN = no data."""

    start: float
    bin_seconds: float
    prefixes: tuple[str, ...]
    channels: tuple[str, ...]
    values: F32

    @property
    def times(self) -> npt.NDArray[np.float64]:
        return self.start + self.bin_seconds * np.arange(self.values.shape[0], dtype=np.float64)


class HistoryStore:
    def __init__(
        self,
        directory: str,
        config: HistoryConfig | None = None,
        read_only: bool = False,
        bin_seconds: float = 1.0,
    ) -> None:
        self.directory = directory
        self.config = config if config is not None else HistoryConfig()
        path = os.path.join(directory, DB_FILE)
        if read_only and not os.path.exists(path):
            raise OSError(f"{directory}: no history here ({DB_FILE} missing)")
        os.makedirs(directory, exist_ok=True)
        self.db = duckdb.connect(path, read_only=read_only)
        if not read_only:
            self._schema(bin_seconds)
        row = self._run("SELECT value FROM meta WHERE key = 'bin_seconds'")
        self.bin_seconds = float(str(row[0][0])) if row else bin_seconds
        self.bins = bins_per_minute(self.bin_seconds)
        self._ids: dict[str, int] = {
            str(p): int(str(i)) for p, i in self._run("SELECT prefix, id FROM prefixes")
        }

    def _run(self, sql: str, params: list[object] | None = None) -> list[tuple[object, ...]]:
        """Execute and fetch every row (DuckDB wants a result consumed before the next)."""
        return self.db.execute(sql, params).fetchall()

    def close(self) -> None:
        self.db.close()

    def _schema(self, bin_seconds: float) -> None:
        bins = bins_per_minute(bin_seconds)
        arrays = ", ".join(f"{_q(c)} FLOAT[{bins}]" for c in CHANNELS)
        stats = ", ".join(f"{_q(f'{c}:{s}')} FLOAT" for c in CHANNELS for s in STATS)
        self._run("CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
        self._run("CREATE TABLE IF NOT EXISTS prefixes (id INTEGER PRIMARY KEY, prefix VARCHAR)")
        self._run(f"CREATE TABLE IF NOT EXISTS s1 (t BIGINT, prefix INTEGER, {arrays})")
        self._run(f"CREATE TABLE IF NOT EXISTS m1 (t BIGINT, prefix INTEGER, n SMALLINT, {stats})")
        self._run(
            "CREATE TABLE IF NOT EXISTS baselines (computed_at DOUBLE, prefix VARCHAR, "
            "kind VARCHAR, slot INTEGER, channel VARCHAR, status VARCHAR, reason VARCHAR, "
            "n INTEGER, days INTEGER, median DOUBLE, mad DOUBLE, p95 DOUBLE, p99 DOUBLE, "
            "from_t DOUBLE, to_t DOUBLE)"
        )
        self._run(
            "CREATE TABLE IF NOT EXISTS excluded "
            "(prefix VARCHAR, t0 DOUBLE, t1 DOUBLE, why VARCHAR)"
        )
        rows = self._run("SELECT value FROM meta WHERE key = 'bin_seconds'")
        have = float(str(rows[0][0])) if rows else None
        if have is None:
            self._run("INSERT INTO meta VALUES ('bin_seconds', ?)", [repr(bin_seconds)])
            self._run("INSERT INTO meta VALUES ('channels', ?)", [",".join(CHANNELS)])
        elif have != bin_seconds:
            raise ValueError(
                f"{self.directory}: history of {have:g}s bins, thresholds use {bin_seconds:g}s"
            )

    # ------------------------------------------------------------------ write
    def _id(self, prefix: str) -> int:
        if prefix not in self._ids:
            new = max(self._ids.values(), default=-1) + 1
            self._run("INSERT INTO prefixes VALUES (?, ?)", [new, prefix])
            self._ids[prefix] = new
        return self._ids[prefix]

    def append(self, blocks: Sequence[MinuteBlock]) -> None:
        """Write minute blocks (both tables), merging with rows already there for the same
        (prefix, minute) (a replay that covers part of a stored minute), then prune."""
        if not blocks:
            return
        self._run("BEGIN")
        try:
            for b in blocks:
                self._append_one(b)
            self.prune(max(b.t for b in blocks))
            self._run("COMMIT")
        except BaseException:
            self._run("ROLLBACK")
            raise

    def _append_one(self, b: MinuteBlock) -> None:
        if b.values.shape[2] != self.bins:
            raise ValueError(f"minute block of {b.values.shape[2]} bins, history has {self.bins}")
        ids = np.array([self._id(p) for p in b.prefixes], dtype=np.int32)
        values = b.values
        where = f"t = {int(b.t)} AND prefix IN ({','.join(map(str, ids))})"
        old = self._read_s1(b.t, b.t + MINUTE, ids.tolist(), list(CHANNELS))
        if old is not None:  # merge: the new block's data wins where it has some
            _, p_old, v_old = old
            pos = {int(p): i for i, p in enumerate(ids)}
            values = values.copy()
            for j, p in enumerate(p_old.tolist()):
                i = pos[p]
                values[i] = np.where(np.isnan(values[i]), v_old[j], values[i])
            self._run(f"DELETE FROM s1 WHERE {where}")
        self._run(f"DELETE FROM m1 WHERE {where}")
        self.insert(np.full(len(ids), b.t, dtype=np.int64), ids, values)

    def insert(self, t: npt.NDArray[np.int64], ids: npt.NDArray[np.int32], values: F32) -> None:
        """Insert rows as they are (no merge): minute starts, prefix ids (``prefix_ids``),
        values (rows, channels, bins). The bulk path of ``append`` and of the benchmarks."""
        cols: dict[str, pa.Array] = {"t": pa.array(t), "prefix": pa.array(ids)}
        empty: npt.NDArray[np.bool_] = np.asarray(np.isnan(values).all(axis=2))  # NULL
        for k, c in enumerate(CHANNELS):
            flat = pa.array(np.ascontiguousarray(values[:, k, :]).reshape(-1))
            mask = pa.array(empty[:, k]) if empty[:, k].any() else None
            cols[c] = pa.FixedSizeListArray.from_arrays(flat, self.bins, mask=mask)
        self.db.register("_s1_new", pa.table(cols))
        self._run("INSERT INTO s1 SELECT * FROM _s1_new")
        self.db.unregister("_s1_new")
        covered = (~np.isnan(values[:, 0, :])).sum(axis=1).astype(np.int16)
        with np.errstate(all="ignore"):
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: NaN stats
                mean = np.nanmean(values, axis=2).astype(np.float32)
                peak = np.nanmax(values, axis=2).astype(np.float32)
        stat_cols: dict[str, pa.Array] = {"t": cols["t"], "prefix": cols["prefix"],
                                          "n": pa.array(covered)}  # fmt: skip
        for k, c in enumerate(CHANNELS):
            stat_cols[f"{c}:mean"] = pa.array(mean[:, k])
            stat_cols[f"{c}:max"] = pa.array(peak[:, k])
        self.db.register("_m1_new", pa.table(stat_cols))
        self._run("INSERT INTO m1 SELECT * FROM _m1_new")
        self.db.unregister("_m1_new")

    def prefix_ids(self, prefixes: Sequence[str]) -> npt.NDArray[np.int32]:
        """Ids of prefixes (new ones are added)."""
        return np.array([self._id(p) for p in prefixes], dtype=np.int32)

    def prune(self, now: float) -> None:
        """Drop rows past the retention of their table (``now``: data time)."""
        r = self.config.retention
        self._run("DELETE FROM s1 WHERE t < ?", [int(now - r.seconds)])
        self._run("DELETE FROM m1 WHERE t < ?", [int(now - r.minutes)])

    # ------------------------------------------------------------------ read
    def prefixes(self) -> list[str]:
        return [p for p, _ in sorted(self._ids.items(), key=lambda kv: kv[1])]

    def span(self, table: str = "m1") -> tuple[float, float] | None:
        """Data time of the first bin and the end of the last minute stored in a table."""
        if table not in ("s1", "m1"):
            raise ValueError(table)
        lo, hi = self._run(f"SELECT min(t), max(t) FROM {table}")[0]
        return None if lo is None else (float(str(lo)), float(str(hi)) + MINUTE)

    def _ids_of(self, prefixes: Sequence[str] | None) -> list[int]:
        if prefixes is None:
            return sorted(self._ids.values())
        return [self._ids[p] for p in prefixes if p in self._ids]

    def minutes(
        self,
        t0: float | None = None,
        t1: float | None = None,
        prefixes: Sequence[str] | None = None,
        channels: Sequence[str] | None = None,
        stats: Sequence[str] = STATS,
    ) -> pd.DataFrame:
        """The 1 min roll-up as a DataFrame: t (minute start), prefix, n, ``<ch>:<stat>``."""
        chans = CHANNELS if channels is None else tuple(channels)
        cols = ", ".join(_q(f"{c}:{s}") for c in chans for s in stats)
        ids = self._ids_of(prefixes)
        if not ids:
            return pd.DataFrame(columns=["t", "prefix", "n"])
        lo = -(2**62) if t0 is None else int(t0 // MINUTE * MINUTE)
        hi = 2**62 if t1 is None else int(t1)
        df = self.db.sql(
            f"SELECT m.t, p.prefix, m.n, {cols} FROM m1 m JOIN prefixes p ON p.id = m.prefix "
            f"WHERE m.t >= $lo AND m.t < $hi AND m.prefix IN ({','.join(map(str, ids))}) "
            "ORDER BY m.t, m.prefix",
            params={"lo": lo, "hi": hi},
        ).df()
        return df

    def _read_s1(
        self, t0: int, t1: int, ids: list[int], channels: list[str]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32], F32] | None:
        """Rows of s1 in [t0, t1): minute starts, prefix ids, values (rows, C, bins)."""
        if not ids:
            return None
        cols = ", ".join(_q(c) for c in channels)
        tab = self.db.sql(
            f"SELECT t, prefix, {cols} FROM s1 WHERE t >= $lo AND t < $hi "
            f"AND prefix IN ({','.join(map(str, ids))})",
            params={"lo": t0, "hi": t1},
        ).to_arrow_table()
        if tab.num_rows == 0:
            return None
        t = tab.column("t").to_numpy().astype(np.int64)
        p = tab.column("prefix").to_numpy().astype(np.int32)
        v = np.full((tab.num_rows, len(channels), self.bins), np.nan, dtype=np.float32)
        for k, c in enumerate(channels):
            col = tab.column(c).combine_chunks()
            flat = col.flatten().to_numpy(zero_copy_only=False).reshape(-1, self.bins)
            if col.null_count:  # a NULL array: the channel had no data in that minute
                v[~col.is_null().to_numpy(zero_copy_only=False), k] = flat
            else:
                v[:, k] = flat
        return t, p, v

    def seconds(
        self, t0: float, t1: float, prefixes: Sequence[str], channels: Sequence[str]
    ) -> SecondsChunk:
        """Dense 1 s history of [t0, t1) (whole minutes), NaN where nothing is stored."""
        m0, m1 = int(t0 // MINUTE * MINUTE), int(-(-t1 // MINUTE) * MINUTE)
        minutes = (m1 - m0) // MINUTE
        out = np.full((minutes, self.bins, len(prefixes), len(channels)), np.nan, np.float32)
        pos = {self._ids[p]: i for i, p in enumerate(prefixes) if p in self._ids}
        rows = self._read_s1(m0, m1, list(pos), list(channels))
        if rows is not None:
            t, p, v = rows
            col = np.array([pos[int(x)] for x in p], dtype=np.int64)
            out[(t - m0) // MINUTE, :, col, :] = v.transpose(0, 2, 1)
        return SecondsChunk(
            float(m0),
            self.bin_seconds,
            tuple(prefixes),
            tuple(channels),
            out.reshape(minutes * self.bins, len(prefixes), len(channels)),
        )

    def iter_seconds(
        self,
        t0: float,
        t1: float,
        prefixes: Sequence[str],
        channels: Sequence[str],
        chunk: float = 6 * 3600.0,
    ) -> Iterator[SecondsChunk]:
        """``seconds`` in chunks of ``chunk`` data seconds (bounded memory)."""
        t = t0 // MINUTE * MINUTE
        while t < t1:
            end = min(t1, t + max(MINUTE, chunk // MINUTE * MINUTE))
            yield self.seconds(t, end, prefixes, channels)
            t = end

    def exclude(self, periods: Sequence[tuple[str, float, float, str]]) -> None:
        """Mark (prefix, t0, t1, why) periods as not normal traffic (diverted attacks):
        baselines and recommendations leave them out."""
        for p in periods:
            self._run("INSERT INTO excluded VALUES (?, ?, ?, ?)", list(p))

    def excluded(self) -> list[tuple[str, float, float, str]]:
        rows = self._run("SELECT prefix, t0, t1, why FROM excluded ORDER BY t0")
        return [(str(p), float(str(a)), float(str(b)), str(w)) for p, a, b, w in rows]

    # ------------------------------------------------------------------ baselines
    def save_baselines(self, df: pd.DataFrame) -> None:
        """Replace the stored baselines by ``df`` (columns of the baselines table)."""
        self._run("BEGIN")
        self._run("DELETE FROM baselines")
        if len(df):
            self.db.register("_b_new", df)
            self._run("INSERT INTO baselines BY NAME SELECT * FROM _b_new")
            self.db.unregister("_b_new")
        self._run("COMMIT")

    def baselines(self) -> pd.DataFrame:
        return self.db.sql("SELECT * FROM baselines ORDER BY prefix, channel, kind, slot").df()
