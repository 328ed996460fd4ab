"""The allowlist wired from its configuration: inputs, store, exports, push, API.

The live engine hands ``membership`` (the index: thread-safe, never waits for the slow
work) to the detector and runs ``start()``: a thread that calls ``poll(time.time())``
every second (event time = wall clock there). ``poll`` and the HTTP API thread share
``lock``; the SQLite writes, checkpoints, exports and pushes happen in ``poll``, never in
the detection loop.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np
import numpy.typing as npt

from allowlist import export, versions
from allowlist.api import ApiHandler
from allowlist.config import AllowlistConfig
from allowlist.feed import apply, parse_lines, parse_snapshot
from allowlist.http import ApiServer, start_api_server
from allowlist.push import Payload, Pusher
from allowlist.sources import FeedTail, SnapshotDir
from allowlist.state import AllowlistState
from allowlist.store import DeltaUnavailable, Store

log = logging.getLogger(__name__)


def delta_since(state: AllowlistState, store: Store, since: int) -> versions.Delta:
    """Membership delta from ``since`` to the state's version (flushes pending changes)."""
    store.flush(state)
    changes = store.changes_since(since)
    return versions.delta(changes, since, state.version, lambda k: state.holders(k).keys())


class AllowlistService:
    def __init__(self, cfg: AllowlistConfig, now: float) -> None:
        self.cfg = cfg
        self.lock = threading.RLock()
        self.store = Store(cfg.store) if cfg.store else None
        self.state = AllowlistState(record=self.store is not None)
        if self.store is not None:
            self.store.load(self.state)
        self.state.replace_source("static", cfg.static_keys(), now)
        self.feed = FeedTail(cfg.feed) if cfg.feed else None
        self.snapshots = SnapshotDir(cfg.snapshot_dir) if cfg.snapshot_dir else None
        self.names = cfg.names()
        self.refused = 0
        self.exported_version = -1
        self.last_export = self.last_checkpoint = now
        self.pusher = Pusher(cfg.push_url, cfg.push_token).start() if cfg.push_url else None
        self.pushed_version = -1
        self.api = ApiHandler(self.state, cfg.api_token, limits=cfg.limits())
        self.server: ApiServer | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start_api(self) -> ApiServer | None:
        """Serve the HTTP API if configured (``api_listen``)."""
        if self.cfg.api_listen:
            host, _, port = self.cfg.api_listen.rpartition(":")
            self.server = start_api_server(self.api, host.strip("[]"), int(port), self.lock)
        return self.server

    def membership(
        self, hi: npt.NDArray[np.uint64], lo: npt.NDArray[np.uint64]
    ) -> npt.NDArray[np.bool_]:
        return self.state.index(hi, lo)  # no state lock: the index has its own, short one

    def start(self, interval: float = 1.0) -> threading.Thread:
        """Poll on wall-clock time in a background thread until ``close``."""

        def loop() -> None:
            while not self._stop.wait(interval):
                try:
                    self.poll(time.time())
                except Exception:  # keep the last good set; say why
                    log.exception("allowlist poll failed")

        self._thread = threading.Thread(target=loop, name="allowlist", daemon=True)
        self._thread.start()
        return self._thread

    def poll(self, now: float) -> dict[str, Any]:
        """Read the inputs, expire, persist, export and push; returns what happened."""
        with self.lock:
            done: dict[str, Any] = {"applied": 0, "refused": 0}
            if self.feed is not None:
                first, lines = self.feed.read()
                regs, bad = parse_lines(lines, None, self.cfg.limits(), first)
                for r in bad:
                    log.warning("allowlist feed %s:%d refused: %s", self.cfg.feed, r.line, r.reason)
                for reg in regs:
                    apply(self.state, reg, "feed")
                done["applied"] += len(regs)
                done["refused"] += len(bad)
            if self.snapshots is not None:
                snap = self.snapshots.poll()
                if snap is not None:
                    done["snapshot"] = self._snapshot(*snap, now)
            done["expired"] = self.state.advance(now)
            if self.store is not None:
                self.store.flush(self.state)
                if now - self.last_checkpoint >= self.cfg.checkpoint_every:
                    self.store.checkpoint(self.state, self.cfg.keep_versions)
                    self.last_checkpoint = now
            self.refused += done["refused"]
            if now - self.last_export >= self.cfg.export_every:
                self._export(now)
            done["version"] = self.state.version
            return done

    def _snapshot(self, path: str, text: str, now: float) -> dict[str, Any]:
        keys, bad = parse_snapshot(text, self.cfg.limits())
        for r in bad[:20]:
            log.warning("allowlist snapshot %s:%d refused: %s", path, r.line, r.reason)
        if not keys:  # a truncated or garbled file must not empty the set
            log.error("allowlist snapshot %s has no valid entry: ignored", path)
            return {"path": path, "ignored": True, "refused": len(bad)}
        added, removed = self.state.replace_source("snapshot", keys, now)
        return {"path": path, "added": added, "removed": removed, "refused": len(bad)}

    def _export(self, now: float) -> None:
        self.last_export = now
        version = self.state.version
        if version != self.exported_version and self.cfg.exports:
            keys = self.state.keys()
            for target in self.cfg.exports:
                text = export.full(keys, target.format, version, self.names)
                export.write_atomic(target.path, text)
            self.exported_version = version
        if self.pusher is not None and version != self.pushed_version:
            self.pusher.offer(self._payload(version))
            self.pushed_version = version

    def _payload(self, version: int) -> Payload:
        fmt, keys = self.cfg.push_format, self.state.keys()
        assert self.pusher is not None
        if self.store is not None and not self.pusher.wants_full() and self.pushed_version >= 0:
            try:
                d = delta_since(self.state, self.store, self.pushed_version)
                return Payload(export.delta(keys, d, fmt, self.names).encode(), version, False)
            except DeltaUnavailable:
                pass
        return Payload(export.full(keys, fmt, version, self.names).encode(), version, True)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self.server is not None:
            self.server.stop()
        if self.pusher is not None:
            self.pusher.close()
        if self.store is not None:
            with self.lock:
                self.store.flush(self.state)
                self.store.close()
