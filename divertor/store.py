"""The timeline store: every timeline line, and the traffic around incidents, in SQLite.

WAL mode, so readers (`divertor incidents`) never block the engine that writes, and
``synchronous=FULL``, so a committed line survives kill -9 and a power loss of the appliance;
retention of the bins and lines, incident ids and the schema: docs/incidents.md.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import time as _time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import fields
from typing import Any
from urllib.parse import quote

import numpy as np

from detector.contracts import RateFrame
from divertor.report import Incident, IncidentRecord, Traffic
from thresholds.model import CLASSES, METRICS

TRANSIENT_TYPES = ("verdict", "exporter", "supervisor", "exabgp", "note")
NEW_FROM = ("normal", "closed")  # an incident line from these states opens an incident
#: a prefix's row of a bin is stored if some rate reaches this: any real record adds far
#: more (40 bytes over an hour: 0.09 bit/s), float residue of the counters far less (1e-6)
MIN_RATE = 1e-3
SCHEMA_VERSION = 1
#: MIGRATIONS[n] brings a store from version n - 1 to n (statements separated by ";")
MIGRATIONS: dict[int, str] = {
    1: """
CREATE TABLE lines (id INTEGER PRIMARY KEY, time REAL NOT NULL, wall REAL NOT NULL,
  type TEXT NOT NULL, prefix TEXT, incident INTEGER, engine_incident INTEGER, reason TEXT,
  body TEXT NOT NULL);
CREATE INDEX lines_time ON lines (time);
CREATE INDEX lines_incident ON lines (incident, time);
CREATE INDEX lines_prefix ON lines (prefix, time);
CREATE INDEX lines_type_wall ON lines (type, wall);
CREATE TABLE incidents (id INTEGER PRIMARY KEY, engine_id INTEGER NOT NULL,
  prefix TEXT NOT NULL, vector TEXT, first_time REAL NOT NULL, last_time REAL NOT NULL,
  window_start REAL NOT NULL, end_time REAL, end_reason TEXT, state TEXT NOT NULL,
  states TEXT NOT NULL, announced TEXT NOT NULL, first_wall REAL NOT NULL);
CREATE INDEX incidents_engine ON incidents (engine_id, id);
CREATE INDEX incidents_end ON incidents (end_time);
CREATE TABLE layouts (id INTEGER PRIMARY KEY, classes TEXT NOT NULL, metrics TEXT NOT NULL,
  UNIQUE (classes, metrics));
CREATE TABLE bins (prefix TEXT NOT NULL, t REAL NOT NULL, seconds REAL NOT NULL,
  layout INTEGER NOT NULL, pinned INTEGER NOT NULL, wall REAL NOT NULL, v BLOB NOT NULL,
  PRIMARY KEY (prefix, t)) WITHOUT ROWID;
CREATE INDEX bins_rolling ON bins (t) WHERE pinned = 0;
CREATE INDEX bins_wall ON bins (wall);
CREATE TABLE talkers (incident INTEGER NOT NULL, prefix TEXT NOT NULL, time REAL,
  wall REAL NOT NULL, body TEXT NOT NULL, PRIMARY KEY (incident, prefix))
""",
}


class StoreError(Exception):
    """The store cannot be used: missing, not a timeline store, schema of another version."""


def _dumps(o: object) -> str:
    def default(x: object) -> object:
        if isinstance(x, np.generic | np.ndarray):
            return x.tolist()
        return list(x) if isinstance(x, set | frozenset) else str(x)

    return json.dumps(o, default=default, separators=(",", ":"))


def check_line(line: object) -> None:
    """A timeline line is a mapping with a finite number ``time`` and a string ``type``."""
    if not isinstance(line, Mapping):
        raise ValueError(f"a timeline line is a mapping, not {type(line).__name__}")
    t, kind = line.get("time"), line.get("type")
    if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t):
        raise ValueError(f"timeline line without a finite 'time': {line!r:.200}")
    if not isinstance(kind, str) or not kind:
        raise ValueError(f"timeline line without a 'type': {line!r:.200}")


def _engine_id(line: Mapping[str, Any]) -> int | None:
    v = line.get("incident")
    ok = isinstance(v, int) and not isinstance(v, bool) and v > 0
    return int(v) if ok else None  # type: ignore[arg-type]


class TimelineStore:
    """A connection to a timeline store, safe to share between threads (one lock)."""

    def __init__(
        self,
        path: str,
        *,
        keep_recent: float = 600.0,
        pre_incident: float = 300.0,
        max_age_days: float = 30.0,
        audit_max_age_days: float | None = None,
        readonly: bool = False,
        synchronous: str = "FULL",
    ) -> None:
        if not 0 <= pre_incident <= keep_recent:
            raise ValueError(
                "need 0 <= pre_incident <= keep_recent: the bins before an "
                "incident are there only if the rolling retention kept them"
            )
        if synchronous.upper() not in ("NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous={synchronous}: NORMAL, FULL or EXTRA")
        self.path, self.readonly = path, readonly
        self.keep_recent, self.pre_incident = keep_recent, pre_incident
        self.max_age_days, self.audit_max_age_days = max_age_days, audit_max_age_days
        self.created: list[int] = []  # incidents opened through this connection
        self._lock = threading.RLock()
        self._newest = -math.inf  # newest bin written through this connection (event time)
        self._rolled = -math.inf
        self._pruned = -math.inf  # the first write prunes by age
        self._layout: int | None = None
        try:
            if readonly:
                uri = f"file:{quote(os.path.abspath(path))}?mode=ro"
                self.db = sqlite3.connect(uri, uri=True, check_same_thread=False)
            else:
                self.db = sqlite3.connect(path, check_same_thread=False)
            self.db.isolation_level = None  # transactions are explicit
            self.db.execute("PRAGMA busy_timeout = 10000")
            if not readonly:
                self.db.execute("PRAGMA journal_mode = WAL")
                self.db.execute(f"PRAGMA synchronous = {synchronous.upper()}")
                with self._tx():
                    self._migrate()
            elif self.schema_version != SCHEMA_VERSION:
                raise StoreError(
                    f"{path}: timeline store schema {self.schema_version}, "
                    f"this divertor reads {SCHEMA_VERSION}"
                )
        except sqlite3.Error as e:
            raise StoreError(f"{path}: not a usable timeline store: {e}") from e

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> TimelineStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            self.db.execute("COMMIT")

    def _migrate(self) -> None:
        self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
        version = self.schema_version
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path}: timeline store schema {version} is newer than "
                f"this divertor's ({SCHEMA_VERSION})"
            )
        for n in range(version + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[n].split(";"):
                self.db.execute(statement)
        self.db.execute("INSERT OR REPLACE INTO meta VALUES ('schema', ?)", (SCHEMA_VERSION,))

    @property
    def schema_version(self) -> int:
        row = self._one("SELECT value FROM meta WHERE key = 'schema'")
        return 0 if row is None else int(row[0])

    def _one(self, sql: str, args: Sequence[Any] = ()) -> Any:
        with self._lock:
            return self.db.execute(sql, args).fetchone()

    def _all(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return self.db.execute(sql, args).fetchall()

    def next_incident_id(self) -> int:
        return int(self._one("SELECT max(id) FROM incidents")[0] or 0) + 1

    # ------------------------------------------------------------------ writing
    def add(self, line: Mapping[str, Any], wall_time: float | None = None) -> None:
        """Record one line of any type; committed when this returns."""
        self.add_many([line], wall_time)

    def add_many(self, lines: Iterable[Mapping[str, Any]], wall_time: float | None = None) -> None:
        """Record lines in one transaction: all or none (a bad line raises ValueError first)."""
        batch = list(lines)
        for line in batch:
            check_line(line)
        wall = _time.time() if wall_time is None else wall_time
        if batch:
            with self._tx():
                for line in batch:
                    self._insert(line, wall)

    def _insert(self, line: Mapping[str, Any], wall: float) -> None:
        t, kind, engine = float(line["time"]), str(line["type"]), _engine_id(line)
        prefix = line.get("prefix") if isinstance(line.get("prefix"), str) else None
        ident = None if engine is None or kind == "incident" else self._resolve(engine)
        if engine is not None and kind == "incident":
            if line.get("from") not in NEW_FROM:
                ident = self._resolve(engine)
            if ident is None:
                ident = self._open(engine, prefix or "?", line.get("vector"), t, wall)
        if ident is not None:
            self._touch(ident, t, line, kind)
        why = line.get("reason", line.get("why"))
        why = None if why is None else str(why)
        self.db.execute(
            "INSERT INTO lines (time, wall, type, prefix, incident, engine_incident, reason, "
            "body) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (t, wall, kind, prefix, ident, engine, why, _dumps(line)),
        )

    def _resolve(self, engine: int) -> int | None:
        row = self._one("SELECT max(id) FROM incidents WHERE engine_id = ?", (engine,))
        return None if row[0] is None else int(row[0])

    def _open(self, engine: int, prefix: str, vector: Any, t: float, wall: float) -> int:
        self.db.execute(  # one incident per prefix at a time: a new one ends the old one
            "UPDATE incidents SET end_time = last_time, end_reason = ? "
            "WHERE prefix = ? AND end_time IS NULL",
            ("superseded by a new incident of the prefix", prefix),
        )
        start = t - self.pre_incident
        cur = self.db.execute(
            "INSERT INTO incidents (engine_id, prefix, vector, first_time, last_time, "
            "window_start, state, states, announced, first_wall) "
            "VALUES (?, ?, ?, ?, ?, ?, 'normal', '[]', '[]', ?)",
            (engine, prefix, vector, t, t, start, wall),
        )
        self.db.execute("UPDATE bins SET pinned = 1 WHERE prefix = ? AND t >= ?", (prefix, start))
        self.created.append(int(cur.lastrowid or 0))
        return self.created[-1]

    def _touch(self, ident: int, t: float, line: Mapping[str, Any], kind: str) -> None:
        sql = "SELECT last_time, states, announced FROM incidents WHERE id = ?"
        last, states_json, announced_json = self._one(sql, (ident,))
        states, announced = json.loads(states_json), json.loads(announced_json)
        sets: dict[str, Any] = {"last_time": max(t, last)}
        if isinstance(line.get("vector"), str) and kind in ("incident", "announce"):
            sets["vector"] = line["vector"]
        to = line.get("to")
        if kind == "incident" and isinstance(to, str):
            sets.update(state=to, states=_dumps([*states, *([to] if to not in states else [])]))
            if to == "closed":
                sets.update(end_time=t, end_reason="closed")
        if kind == "announce" and line.get("prefix") not in (*announced, None):
            sets["announced"] = _dumps([*announced, str(line["prefix"])])
        assigns = ", ".join(f"{k} = ?" for k in sets)
        self.db.execute(f"UPDATE incidents SET {assigns} WHERE id = ?", (*sets.values(), ident))

    def mark_interrupted(
        self, reason: str, at: float | None = None, ids: Iterable[int] | None = None
    ) -> int:
        """End open incidents (``ids``, default all) that their engine will not close (it
        restarted, the replay ended): at ``at`` (event time) or at their last line."""
        wanted = None if ids is None else set(ids)
        with self._tx() as db:
            rows = db.execute("SELECT id FROM incidents WHERE end_time IS NULL").fetchall()
            todo = [(at, reason, r[0]) for r in rows if wanted is None or r[0] in wanted]
            db.executemany(
                "UPDATE incidents SET end_time = max(last_time, coalesce(?, last_time)), "
                "end_reason = ? WHERE id = ?",
                todo,
            )
        return len(todo)

    def add_rateframe(self, frame: RateFrame, wall_time: float | None = None) -> None:
        self.add_rateframes([frame], wall_time)

    def add_rateframes(self, frames: Iterable[RateFrame], wall_time: float | None = None) -> None:
        """Record settled RateFrames in one transaction (a prefix without traffic in a bin,
        no rate >= MIN_RATE, gets no row); bins in an incident's window are pinned, the
        others roll off."""
        frames = list(frames)
        if not frames:
            return
        wall = _time.time() if wall_time is None else wall_time
        with self._tx() as db:
            layout = self._layout_id(frames[0])
            windows = db.execute(
                "SELECT prefix, window_start, end_time FROM incidents "
                "WHERE end_time IS NULL OR end_time >= ?",
                (min(f.start for f in frames),),
            ).fetchall()
            rows = []
            for f in frames:
                for prefix, v in zip(f.prefixes, f.values, strict=True):
                    if v.max() >= MIN_RATE:
                        pin = any(
                            p == prefix and s <= f.start <= (math.inf if e is None else e)
                            for p, s, e in windows
                        )
                        blob = np.ascontiguousarray(v, dtype="<f8").tobytes()
                        rows.append((prefix, f.start, f.seconds, layout, int(pin), wall, blob))
            db.executemany(
                "INSERT INTO bins VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (prefix, t) DO UPDATE "
                "SET seconds = excluded.seconds, layout = excluded.layout, wall = excluded.wall,"
                " v = excluded.v, pinned = max(pinned, excluded.pinned)",
                rows,
            )
            self._newest = max(self._newest, *(f.start for f in frames))
            if self._newest - self._rolled >= min(60.0, self.keep_recent / 4):
                self._rolled = self._newest
                cut = self._newest - self.keep_recent
                db.execute("DELETE FROM bins WHERE pinned = 0 AND t < ?", (cut,))
        if wall - self._pruned >= 3600.0:
            self.prune(wall)

    def _layout_id(self, frame: RateFrame) -> int:
        if frame.values.shape[1:] != (len(CLASSES), len(METRICS)):
            raise ValueError(
                f"RateFrame values of shape {frame.values.shape}, expected "
                f"(prefixes, {len(CLASSES)} classes, {len(METRICS)} metrics)"
            )
        if self._layout is None:
            names = (_dumps(CLASSES), _dumps(METRICS))
            self.db.execute("INSERT OR IGNORE INTO layouts (classes, metrics) VALUES (?, ?)", names)
            sql = "SELECT id FROM layouts WHERE classes = ? AND metrics = ?"
            self._layout = int(self.db.execute(sql, names).fetchone()[0])
        return self._layout

    def add_talkers(
        self,
        incident: int,
        prefix: str,
        top: Mapping[str, Sequence[Sequence[Any]]],
        time: float | None = None,
        wall_time: float | None = None,
    ) -> None:
        """Top talkers of an incident (the engine's number, as in the lines): ``src_addr``,
        ``src_port``, ``dst_port`` -> [(key, packets)], most first; the newest call wins."""
        body = _dumps({str(k): [list(kv) for kv in v] for k, v in top.items()})
        with self._tx() as db:
            ident = self._resolve(int(incident))
            if ident is None:
                raise KeyError(f"no incident {incident} in the store")
            db.execute(
                "INSERT OR REPLACE INTO talkers VALUES (?, ?, ?, ?, ?)",
                (ident, prefix, time, _time.time() if wall_time is None else wall_time, body),
            )

    def prune(self, now: float | None = None) -> dict[str, int]:
        """Delete by age of wall time: bins and transient lines older than ``max_age_days``;
        with ``audit_max_age_days``, every line and closed incident older than that too."""
        now = _time.time() if now is None else now
        self._pruned = now
        cut = now - self.max_age_days * 86400.0
        kinds = ",".join("?" * len(TRANSIENT_TYPES))
        with self._tx() as db:
            out = {"bins": db.execute("DELETE FROM bins WHERE wall < ?", (cut,)).rowcount}
            out["lines"] = db.execute(
                f"DELETE FROM lines WHERE wall < ? AND type IN ({kinds})", (cut, *TRANSIENT_TYPES)
            ).rowcount
            if self.audit_max_age_days is not None:
                cut = now - self.audit_max_age_days * 86400.0
                out["lines"] += db.execute("DELETE FROM lines WHERE wall < ?", (cut,)).rowcount
                old = "SELECT id FROM incidents WHERE end_time IS NOT NULL AND first_wall < ?"
                db.execute(f"DELETE FROM talkers WHERE incident IN ({old})", (cut,))
                out["incidents"] = db.execute(
                    f"DELETE FROM incidents WHERE id IN ({old})", (cut,)
                ).rowcount
        return out

    # ------------------------------------------------------------------ reading
    def incidents(self, prefix: str | None = None) -> list[Incident]:
        """Every incident (of ``prefix``), oldest first."""
        where = "WHERE prefix = ?" if prefix else ""
        return [
            self._incident(r)
            for r in self._all(f"{_INC} {where} ORDER BY id", (prefix,) if prefix else ())
        ]

    def open_incidents(self) -> list[Incident]:
        """Incidents not ended yet, oldest first."""
        return [self._incident(r) for r in self._all(f"{_INC} WHERE end_time IS NULL ORDER BY id")]

    def get_incident(self, ident: int) -> Incident | None:
        row = self._one(f"{_INC} WHERE id = ?", (ident,))
        return None if row is None else self._incident(row)

    @staticmethod
    def _incident(row: Sequence[Any]) -> Incident:
        d = dict(zip(_FIELDS, row, strict=True))
        d.update(states=tuple(json.loads(d["states"])), announced=tuple(json.loads(d["announced"])))
        return Incident(**d)

    def lines(
        self,
        since: float | None = None,
        until: float | None = None,
        types: Iterable[str] | None = None,
        prefix: str | None = None,
    ) -> list[dict[str, Any]]:
        """Lines by event time (bounds inclusive), in time order."""
        kinds = None if types is None else list(types)
        where = "time BETWEEN ? AND ?"
        args: list[Any] = [
            -math.inf if since is None else since,
            math.inf if until is None else until,
        ]
        if kinds is not None:
            where += f" AND type IN ({','.join('?' * len(kinds))})"
            args += kinds
        if prefix is not None:
            where += " AND prefix = ?"
            args.append(prefix)
        return self._lines(where, args)

    def _lines(self, where: str, args: Sequence[Any]) -> list[dict[str, Any]]:
        out = []
        sql = f"SELECT incident, engine_incident, body FROM lines WHERE {where} ORDER BY time, id"
        for ident, engine, body in self._all(sql, args):
            line = json.loads(body)
            if ident is not None and ident != engine:
                line["incident"], line["engine_incident"] = ident, engine
            out.append(line)
        return out

    def incident(self, ident: int) -> IncidentRecord:
        """An incident's whole record; KeyError if the store has no incident ``ident``."""
        inc = self.get_incident(ident)
        if inc is None:
            raise KeyError(f"no incident {ident} in {self.path}")
        end = math.inf if inc.end_time is None else inc.end_time
        lines = self._lines(
            "incident = ? OR (incident IS NULL AND type != 'thresholds' AND ("
            "(prefix = ? AND time BETWEEN ? AND ?) OR (prefix IS NULL AND time BETWEEN ? AND ?)))",
            (ident, inc.prefix, inc.window_start, end, inc.first_time, end),
        )
        limits = self._lines("prefix = ? AND type = 'thresholds'", (inc.prefix,))
        before = [x for x in limits if x["time"] <= inc.first_time]
        talkers = self._all("SELECT prefix, body FROM talkers WHERE incident = ?", (ident,))
        return IncidentRecord(
            incident=inc,
            lines=lines,
            traffic=self._traffic(inc.prefix, inc.window_start, end),
            limits=before[-1] if before else (limits[0] if limits else None),
            talkers={p: json.loads(b) for p, b in sorted(talkers)},
        )

    def _traffic(self, prefix: str, lo: float, hi: float) -> Traffic:
        sql = (
            "SELECT b.t, b.seconds, l.classes, l.metrics, b.v FROM bins b JOIN layouts l "
            "ON l.id = b.layout WHERE b.prefix = ? AND b.t BETWEEN ? AND ? ORDER BY b.t"
        )
        return Traffic.from_rows(self._all(sql, (prefix, lo, hi)), lo)


_FIELDS = [f.name for f in fields(Incident)]
_INC = f"SELECT {', '.join(_FIELDS)} FROM incidents"
