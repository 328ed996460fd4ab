"""The rate history of the running engine: recording settled frames, refreshing baselines
on schedule and handing them to the anomaly evaluator (detector.anomaly).

Sans-I/O in time (``now`` is passed in) and inert until used: the constructor opens
nothing. ``frames`` records settled RateFrames (the pipeline's frame sink); ``poll(now)``
refreshes the baselines (and class-mix models) every ``refresh_every`` seconds, installs
them into the evaluator and returns timeline lines; ``close`` writes the open minute.
A refresh reads the 1 min roll-up of ``baseline.days`` (seconds for 1,000 prefixes: call
``poll`` from a thread that may wait, docs/history.md).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import pandas as pd

from detector.anomaly import AnomalyEvaluator, MixModel
from detector.contracts import RateFrame
from history import baselines as bl
from history import mix as mixfit
from history.config import HistoryConfig
from history.recorder import HistoryRecorder, diverted_periods
from history.store import HistoryStore


class ServiceConfig(Protocol):
    """What the service reads of divertor.yaml's ``history`` section."""

    path: str | None
    refresh_every: float
    record: bool


class HistoryService:
    def __init__(
        self,
        cfg: ServiceConfig,
        history: HistoryConfig | None = None,
        bin_seconds: float = 1.0,
        anomaly: Callable[[], AnomalyEvaluator | None] = lambda: None,
        base_dir: str = ".",
    ) -> None:
        """``history``: the directory's history.yaml (divertor.history_cmd.load_config);
        ``anomaly``: where baselines go (``lambda: pipe.anomaly``: it changes on reload);
        ``base_dir``: relative ``anomaly.baselines`` directories are resolved from it (the
        thresholds file's directory)."""
        self.cfg = cfg
        self.history = history if history is not None else HistoryConfig()
        self.bin_seconds = bin_seconds
        self.anomaly = anomaly
        self.base_dir = base_dir
        self.store: HistoryStore | None = None
        self.recorder: HistoryRecorder | None = None
        self.next_refresh: float | None = None
        self.table: pd.DataFrame | None = None
        self.mix: dict[str, MixModel] = {}
        self.others: dict[str, pd.DataFrame] = {}  # anomaly.baselines directories
        self.open: dict[int, list[dict[str, Any]]] = {}  # incident lines until it closes

    def _open(self) -> HistoryStore | None:
        if self.store is None and self.cfg.path is not None:
            self.store = HistoryStore(self.cfg.path, self.history, False, self.bin_seconds)
        return self.store

    def frames(self, frames: list[RateFrame]) -> None:
        """Record settled frames (a frame sink)."""
        if not frames or not self.cfg.record:
            return
        store = self._open()
        if store is None:
            return
        if self.recorder is None:
            self.recorder = HistoryRecorder(store)
        self.recorder(frames)

    def lines(self, lines: Iterable[dict[str, Any]]) -> int:
        """Timeline lines: an incident that was diverted is left out of the baselines once
        it closes (from a minute before it began). Returns the periods excluded."""
        done: list[tuple[str, float, float, str]] = []
        for line in lines:
            if line.get("type") != "incident":
                continue
            mine = self.open.setdefault(int(line["incident"]), [])
            mine.append(line)
            if line.get("to") == "closed":
                done += diverted_periods(self.open.pop(int(line["incident"])))
        store = self._open() if done else None
        if store is not None:
            store.exclude(done)
        return len(done) if store is not None else 0

    def poll(self, now: float) -> list[dict[str, Any]]:
        """Refresh the baselines when due (at the first call: when the stored ones are
        older than ``refresh_every``); returns the timeline lines of what was done."""
        if self.next_refresh is not None and now < self.next_refresh:
            return []
        self.next_refresh = now + self.cfg.refresh_every
        lines: list[dict[str, Any]] = []
        store = self._open()
        if store is not None:
            try:
                lines.append(self._refresh(store, now))
            except (OSError, ValueError, RuntimeError) as e:  # duckdb errors are RuntimeErrors
                lines.append({"time": now, "type": "baselines", "error": str(e)})
        lines += self._others(now)
        self.install()
        return lines

    def _refresh(self, store: HistoryStore, now: float) -> dict[str, Any]:
        cfg = self.history.baseline
        stored = store.baselines()
        fresh = len(stored) and now - float(stored["computed_at"].max()) < self.cfg.refresh_every
        table = stored if fresh else bl.compute(store, cfg, now)
        if not fresh:
            store.save_baselines(table)
        self.table = table
        wanted = self._mix_wanted()
        if wanted and (not fresh or not self.mix):
            self.mix = mixfit.fit(store, cfg, now, wanted)
        thin = table[table["status"] != bl.OK] if len(table) else table
        return {
            "time": now,
            "type": "baselines",
            "computed": int((table["status"] == bl.OK).sum()) if len(table) else 0,
            "not_enough_history": len(thin),
            "prefixes": int(table["prefix"].nunique()) if len(table) else 0,
            "mix_models": len(self.mix),
            "reused": bool(fresh),
        }

    def _mix_wanted(self) -> dict[str, tuple[tuple[str, ...], str]]:
        ev = self.anomaly()
        if ev is None:
            return {}
        out: dict[str, tuple[tuple[str, ...], str]] = {}
        for i in ev.entries:
            p = ev.ts.policies[i]
            if p.anomaly.mix is not None and p.anomaly.baselines is None:
                out[str(p.prefix)] = (ev.scored[i], p.anomaly.metric)
        return out

    def _others(self, now: float) -> list[dict[str, Any]]:
        """Baselines of the other directories named by ``anomaly.baselines`` (read only:
        their writer keeps them fresh)."""
        ev = self.anomaly()
        dirs = {ev.ts.policies[i].anomaly.baselines for i in ev.entries} if ev else set()
        lines = []
        for d in sorted(x for x in dirs if x is not None):
            path = d if os.path.isabs(d) else os.path.join(self.base_dir, d)
            if self.cfg.path is not None and os.path.abspath(path) == os.path.abspath(
                self.cfg.path
            ):
                if self.table is not None:
                    self.others[d] = self.table  # our own history: already open
                continue
            try:
                other = HistoryStore(path, read_only=True)
                try:
                    self.others[d] = other.baselines()
                finally:
                    other.close()
            except (OSError, ValueError, RuntimeError) as e:
                lines.append({"time": now, "type": "baselines", "path": path, "error": str(e)})
        return lines

    def install(self) -> None:
        """Hand the baselines to the current evaluator (again after a reload)."""
        ev = self.anomaly()
        if ev is None:
            return
        if self.table is not None:
            ev.set_baselines(self.table, None, self.mix, self.history.baseline.timezone)
        for d, table in self.others.items():
            ev.set_baselines(table, d)

    def close(self, timeline: Iterable[dict[str, Any]] = ()) -> None:
        """Write the open minute and the diverted incidents of ``timeline`` (left out of
        the baselines), then close the store."""
        if self.recorder is not None:
            # incidents still open: diverted ones are left out up to now
            self.recorder.close([*(x for v in self.open.values() for x in v), *timeline])
        if self.store is not None:
            self.store.close()
            self.store = self.recorder = None
