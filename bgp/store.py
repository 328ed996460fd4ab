"""The BGP side's persistent state: one SQLite database in WAL mode.

Why SQLite and not JSON + fsync + rename: three kinds of processes share this state (the
engine that feeds DesiredSets, the ``divertor divert/withdraw`` CLI, and ExaBGP's bridge
process). Each change is a read-modify-write of several things at once (desired set,
planner state with its change budget and dampening, target, timeline events); a JSON file
replaced by rename is atomic but gives no lock, so two writers lose each other's update.
SQLite gives transactions (``BEGIN IMMEDIATE`` serialises writers, a reader sees one
consistent snapshot), WAL lets the bridge read while the engine writes, and with
``synchronous=FULL`` a committed transaction survives kill -9 and power loss. It is in the
standard library.

Tables: ``desired`` (the detector's DesiredSet), ``manual`` (operator diversions),
``approvals``, ``suppressed`` (automatic diversions an operator withdrew), ``target`` (what
the planner decided is announced: the bridge reconciles ExaBGP to it), ``announced`` (what
ExaBGP acknowledged, written by the bridge), ``events`` (the timeline), ``meta``.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from bgp.planner import desired_from_json, desired_to_json
from detector.contracts import DesiredRoute

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS desired (
  prefix TEXT PRIMARY KEY, route TEXT NOT NULL, time REAL NOT NULL);
CREATE TABLE IF NOT EXISTS manual (
  prefix TEXT PRIMARY KEY, route TEXT NOT NULL, who TEXT NOT NULL, reason TEXT NOT NULL,
  time REAL NOT NULL);
CREATE TABLE IF NOT EXISTS suppressed (
  prefix TEXT PRIMARY KEY, who TEXT NOT NULL, reason TEXT NOT NULL, time REAL NOT NULL);
CREATE TABLE IF NOT EXISTS approvals (
  id INTEGER PRIMARY KEY AUTOINCREMENT, prefix TEXT NOT NULL, incident INTEGER NOT NULL,
  route TEXT NOT NULL, state TEXT NOT NULL, created REAL NOT NULL, decided REAL,
  who TEXT, why TEXT);
CREATE INDEX IF NOT EXISTS approvals_key ON approvals (prefix, incident);
CREATE TABLE IF NOT EXISTS target (
  prefix TEXT PRIMARY KEY, command TEXT NOT NULL, route TEXT NOT NULL, since REAL NOT NULL);
CREATE TABLE IF NOT EXISTS announced (
  prefix TEXT PRIMARY KEY, command TEXT NOT NULL, time REAL NOT NULL);
CREATE TABLE IF NOT EXISTS events (
  id INTEGER PRIMARY KEY AUTOINCREMENT, time REAL NOT NULL, type TEXT NOT NULL,
  prefix TEXT, body TEXT NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class Approval:
    id: int
    prefix: str
    incident: int
    route: DesiredRoute
    state: str  # pending | approved | rejected | expired
    created: float
    decided: float | None = None
    who: str | None = None
    why: str | None = None


@dataclass(frozen=True, slots=True)
class Manual:
    route: DesiredRoute
    who: str
    reason: str
    time: float


class Store:
    """One connection to the state database. Not shared between threads."""

    def __init__(
        self, path: str, *, create: bool = True, durable: bool = True, timeout: float = 15.0
    ) -> None:
        if not create and not os.path.exists(path):
            raise FileNotFoundError(f"no BGP state database at {path}")
        if create:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, timeout=timeout, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
        self.db.execute("PRAGMA foreign_keys=ON")
        with self.write():
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    self.db.execute(stmt)
            version = self.meta("schema_version")
            if version is None:
                self.set_meta("schema_version", str(SCHEMA_VERSION))
            elif int(version) > SCHEMA_VERSION:
                raise RuntimeError(f"{path}: schema {version} is newer than this Divertor")

    def close(self) -> None:
        self.db.close()

    # ------------------------------------------------------------------ transactions
    @contextmanager
    def write(self) -> Iterator[Store]:
        """A write transaction: writers wait for each other (BEGIN IMMEDIATE)."""
        if self.db.in_transaction:
            yield self
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    @contextmanager
    def read(self) -> Iterator[Store]:
        """One consistent snapshot for several reads."""
        if self.db.in_transaction:
            yield self
            return
        self.db.execute("BEGIN")
        try:
            yield self
        finally:
            self.db.execute("COMMIT")

    # ------------------------------------------------------------------ meta
    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def json_meta(self, key: str) -> Any:
        raw = self.meta(key)
        return None if raw is None else json.loads(raw)

    def set_json_meta(self, key: str, value: Any) -> None:
        self.set_meta(key, json.dumps(value, sort_keys=True))

    # ------------------------------------------------------------------ desired
    def desired(self) -> list[DesiredRoute]:
        rows = self.db.execute("SELECT route FROM desired ORDER BY prefix").fetchall()
        return [desired_from_json(json.loads(r[0])) for r in rows]

    def set_desired(self, routes: list[DesiredRoute], time: float) -> None:
        self.db.execute("DELETE FROM desired")
        self.db.executemany(
            "INSERT OR REPLACE INTO desired (prefix, route, time) VALUES (?, ?, ?)",
            [(r.route.prefix, _dumps(desired_to_json(r)), time) for r in routes],
        )
        self.set_meta("desired_time", repr(time))

    # ------------------------------------------------------------------ manual
    def manual(self) -> dict[str, Manual]:
        rows = self.db.execute("SELECT route, who, reason, time FROM manual").fetchall()
        out = {}
        for route, who, reason, time in rows:
            r = desired_from_json(json.loads(route))
            out[r.route.prefix] = Manual(r, who, reason, time)
        return out

    def set_manual(self, m: Manual) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO manual (prefix, route, who, reason, time) VALUES (?,?,?,?,?)",
            (m.route.route.prefix, _dumps(desired_to_json(m.route)), m.who, m.reason, m.time),
        )

    def remove_manual(self, prefix: str) -> bool:
        return self.db.execute("DELETE FROM manual WHERE prefix = ?", (prefix,)).rowcount > 0

    # ------------------------------------------------------------------ suppressed
    def suppressed(self) -> dict[str, tuple[str, str, float]]:
        rows = self.db.execute("SELECT prefix, who, reason, time FROM suppressed").fetchall()
        return {p: (w, r, t) for p, w, r, t in rows}

    def suppress(self, prefix: str, who: str, reason: str, time: float) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO suppressed (prefix, who, reason, time) VALUES (?,?,?,?)",
            (prefix, who, reason, time),
        )

    def unsuppress(self, prefix: str) -> None:
        self.db.execute("DELETE FROM suppressed WHERE prefix = ?", (prefix,))

    # ------------------------------------------------------------------ approvals
    def approvals(self, states: tuple[str, ...] = ()) -> list[Approval]:
        sql = "SELECT id, prefix, incident, route, state, created, decided, who, why FROM approvals"
        args: tuple[str, ...] = ()
        if states:
            sql += f" WHERE state IN ({','.join('?' * len(states))})"
            args = states
        rows = self.db.execute(sql + " ORDER BY id", args).fetchall()
        return [
            Approval(i, p, inc, desired_from_json(json.loads(r)), s, c, d, w, y)
            for i, p, inc, r, s, c, d, w, y in rows
        ]

    def approval(self, ident: int) -> Approval | None:
        return next((a for a in self.approvals() if a.id == ident), None)

    def add_approval(self, route: DesiredRoute, time: float) -> int:
        cur = self.db.execute(
            "INSERT INTO approvals (prefix, incident, route, state, created) "
            "VALUES (?, ?, ?, 'pending', ?)",
            (route.route.prefix, route.incident, _dumps(desired_to_json(route)), time),
        )
        return int(cur.lastrowid or 0)

    def decide(self, ident: int, state: str, time: float, who: str | None, why: str) -> None:
        self.db.execute(
            "UPDATE approvals SET state = ?, decided = ?, who = ?, why = ? WHERE id = ?",
            (state, time, who, why, ident),
        )

    # ------------------------------------------------------------------ planner, target
    def planner_state(self, dry: bool) -> dict[str, Any]:
        value = self.json_meta("planner_dry" if dry else "planner")
        return value if isinstance(value, dict) else {}

    def set_planner_state(self, dry: bool, state: dict[str, Any]) -> None:
        self.set_json_meta("planner_dry" if dry else "planner", state)

    def target(self) -> dict[str, str]:
        """prefix -> the announce command the bridge must see acked by ExaBGP."""
        return dict(self.db.execute("SELECT prefix, command FROM target").fetchall())

    def target_routes(self) -> dict[str, tuple[str, DesiredRoute, float]]:
        rows = self.db.execute("SELECT prefix, command, route, since FROM target").fetchall()
        return {p: (c, desired_from_json(json.loads(r)), s) for p, c, r, s in rows}

    def set_target(self, target: dict[str, tuple[str, DesiredRoute]], time: float) -> bool:
        """Replace the target; True (and a new version) if it changed."""
        old = self.target()
        new = {p: c for p, (c, _) in target.items()}
        if old == new:
            return False
        for prefix in set(old) - set(new):
            self.db.execute("DELETE FROM target WHERE prefix = ?", (prefix,))
        for prefix, (command, route) in target.items():
            if old.get(prefix) != command:
                self.db.execute(
                    "INSERT OR REPLACE INTO target (prefix, command, route, since) "
                    "VALUES (?, ?, ?, ?)",
                    (prefix, command, _dumps(desired_to_json(route)), time),
                )
        self.set_meta("target_version", str(self.target_version() + 1))
        return True

    def target_version(self) -> int:
        return int(self.meta("target_version") or 0)

    # ------------------------------------------------------------------ announced (bridge)
    def announced(self) -> dict[str, tuple[str, float]]:
        rows = self.db.execute("SELECT prefix, command, time FROM announced").fetchall()
        return {p: (c, t) for p, c, t in rows}

    def set_announced(self, changes: dict[str, tuple[str | None, float]]) -> None:
        for prefix, (command, time) in changes.items():
            if command is None:
                self.db.execute("DELETE FROM announced WHERE prefix = ?", (prefix,))
            else:
                self.db.execute(
                    "INSERT OR REPLACE INTO announced (prefix, command, time) VALUES (?, ?, ?)",
                    (prefix, command, time),
                )

    def replace_announced(self, rib: dict[str, str], time: float) -> None:
        self.db.execute("DELETE FROM announced")
        self.set_announced({p: (c, time) for p, c in rib.items()})

    # ------------------------------------------------------------------ events
    def add_events(self, events: list[dict[str, Any]]) -> None:
        self.db.executemany(
            "INSERT INTO events (time, type, prefix, body) VALUES (?, ?, ?, ?)",
            [
                (float(e.get("time") or 0.0), str(e.get("type")), e.get("prefix"), _dumps(e))
                for e in events
            ],
        )

    def events(self, after: int = 0, limit: int = 1000) -> list[tuple[int, dict[str, Any]]]:
        rows = self.db.execute(
            "SELECT id, body FROM events WHERE id > ? ORDER BY id LIMIT ?", (after, limit)
        ).fetchall()
        return [(int(i), json.loads(b)) for i, b in rows]

    def last_event_id(self) -> int:
        row = self.db.execute("SELECT MAX(id) FROM events").fetchone()
        return int(row[0] or 0)


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
