"""The durable allowlist: an append-only change log with versions, plus checkpoints (SQLite).

``changes`` holds every change of an entry with the set's version after it (SQLite WAL:
readers such as `divertor allowlist export` never block the writer). A checkpoint is the
full set of entries at one version; the log before ``checkpoint version - keep_versions``
is pruned, and ``floor`` says from which version on the log is complete: a delta since a
version older than that cannot be given (the caller sends a full export instead).
Restoring = the checkpoint, then the log after it, replayed with its versions.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Iterable

from allowlist import addr
from allowlist.state import INF, AllowlistState, Change

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS changes (
    version INTEGER PRIMARY KEY,
    time REAL NOT NULL,
    op TEXT NOT NULL CHECK (op IN ('add', 'refresh', 'remove', 'expire')),
    key TEXT NOT NULL,
    source TEXT NOT NULL,
    expires REAL            -- NULL: never
);
CREATE TABLE IF NOT EXISTS checkpoint (
    key TEXT NOT NULL,
    source TEXT NOT NULL,
    expires REAL,
    PRIMARY KEY (key, source)
) WITHOUT ROWID;
"""
FORMAT = "1"


class DeltaUnavailable(LookupError):
    """The log no longer reaches back to the version asked for."""


def _exp(expires: float) -> float | None:
    return None if expires == INF else expires


def _inf(value: float | None) -> float:
    return INF if value is None else float(value)


class Store:
    def __init__(self, path: str) -> None:
        self.path = path
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        fmt = self._meta("format")
        if fmt is None:
            self._set_meta({"format": FORMAT, "floor": "0", "checkpoint": "0"})
        elif fmt != FORMAT:
            raise ValueError(f"{path}: allowlist store format {fmt}, expected {FORMAT}")

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------ meta
    def _meta(self, name: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def _set_meta(self, values: dict[str, str]) -> None:
        self.db.executemany(
            "INSERT INTO meta (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            list(values.items()),
        )

    @property
    def floor(self) -> int:
        """Deltas can be given since any version >= floor."""
        return int(self._meta("floor") or 0)

    @property
    def checkpoint_version(self) -> int:
        return int(self._meta("checkpoint") or 0)

    @property
    def version(self) -> int:
        row = self.db.execute("SELECT max(version) FROM changes").fetchone()
        return max(int(row[0] or 0), self.checkpoint_version)

    # ------------------------------------------------------------------ writing
    def append(self, changes: Iterable[Change]) -> int:
        """Append changes to the log, in one transaction."""
        rows = [
            (c.version, c.time, c.op, addr.text(c.key), c.source, _exp(c.expires)) for c in changes
        ]
        if rows:
            with self.db:
                self.db.execute("BEGIN")
                self.db.executemany(
                    "INSERT INTO changes (version, time, op, key, source, expires) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    rows,
                )
        return len(rows)

    def flush(self, state: AllowlistState) -> int:
        return self.append(state.take_changes())

    def checkpoint(self, state: AllowlistState, keep_versions: int = 1_000_000) -> None:
        """Write the whole set at its version; prune the log older than keep_versions
        before it. Flushes the state's pending changes first."""
        self.flush(state)
        version = state.version
        rows = ((addr.text(k), s, _exp(e)) for k, s, e in state.entries())
        floor = max(self.floor, version - keep_versions)
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("DELETE FROM checkpoint")
            self.db.executemany(
                "INSERT INTO checkpoint (key, source, expires) VALUES (?, ?, ?)", rows
            )
            self.db.execute("DELETE FROM changes WHERE version <= ?", (floor,))
            now = state.now if math.isfinite(state.now) else 0.0
            self._set_meta({"checkpoint": str(version), "floor": str(floor), "time": repr(now)})

    # ------------------------------------------------------------------ reading
    def load(self, state: AllowlistState) -> int:
        """Restore the state: the checkpoint, then the log after it. Returns the version."""
        version = self.checkpoint_version
        rows = self.db.execute("SELECT key, source, expires FROM checkpoint")
        entries = ((addr.parse(k, _NO_LIMITS), s, _inf(e)) for k, s, e in rows)
        state.restore(entries, version, float(self._meta("time") or 0.0))
        for change in self.changes_since(version):
            state.replay(change)
        return state.version

    def changes_since(self, version: int, until: int | None = None) -> list[Change]:
        """Logged changes with version > ``version`` (and <= ``until``), in order."""
        if version < self.floor:
            raise DeltaUnavailable(
                f"the log starts after version {self.floor}; asked since {version}"
            )
        top = until if until is not None else 2**62
        rows = self.db.execute(
            "SELECT version, time, op, key, source, expires FROM changes "
            "WHERE version > ? AND version <= ? ORDER BY version",
            (version, top),
        )
        return [
            Change(v, t, op, addr.parse(k, _NO_LIMITS), s, _inf(e)) for v, t, op, k, s, e in rows
        ]

    def stats(self) -> dict[str, int]:
        (n,) = self.db.execute("SELECT count(*) FROM changes").fetchone()
        (c,) = self.db.execute("SELECT count(*) FROM checkpoint").fetchone()
        return {
            "version": self.version,
            "floor": self.floor,
            "checkpoint_version": self.checkpoint_version,
            "checkpoint_entries": int(c),
            "log_changes": int(n),
        }


#: what was stored was validated when it came in; reading it back applies no policy
_NO_LIMITS = addr.Limits(min_prefix_v4=0, min_prefix_v6=0)
