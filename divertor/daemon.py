"""`divertor run`: the whole engine live, wired from one configuration file.

Threads: the receive thread takes datagrams off the sockets into batches and puts them on
a bounded queue (a full queue drops whole batches, counted: overload never blocks the
receive loop); the main thread decodes, counts rates, evaluates every bin boundary on the
arrival time of the datagrams (or the clock when none arrive), moves incidents and hands
their DesiredSet to the BGP worker and every timeline line, RateFrame and talker list to
the timeline writer (divertor/workers.py); the allowlist service and the HTTP API have
threads of their own. The incident states are saved beside the timeline store at every
change, so a restart (even after kill -9) resumes a diversion where it was instead of
withdrawing it. See docs/how-it-works.md and docs/runbook.md.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

import thresholds
from allowlist.service import AllowlistService
from bgp.engine import Engine
from collector.datagram import DatagramBatch
from collector.sources.udp import UdpListener, UdpListenerConfig
from detector.contracts import DesiredSet, RateFrame, State
from divertor import config as config_mod
from divertor.bgp_cmd import Setup, make_policy
from divertor.incidents_cmd import thresholds_lines
from divertor.pipeline import Pipeline, Timeline
from divertor.store import TimelineStore
from divertor.watch import ExporterWatch
from divertor.workers import BgpWorker, TimelineWriter
from thresholds.model import ThresholdSet

log = logging.getLogger(__name__)


@dataclass
class RunOptions:
    config: str
    manage_exabgp: bool = True  # start/adopt ExaBGP when peers are configured
    withdraw_on_stop: bool = False
    stop_exabgp: bool = False


class _Live(Timeline):
    """The pipeline's timeline, handed to the writer as it comes (the order is kept: an
    incident's line is queued before the DesiredSet that announces it)."""

    def __init__(self, daemon: Daemon) -> None:
        super().__init__()
        self.daemon = daemon

    def add(self, line: dict[str, Any]) -> None:
        self.daemon.record([line])


def allowlist_configured(cfg: config_mod.Config) -> bool:
    a = cfg.allowlist
    return bool(a.store or a.feed or a.snapshot_dir or a.static or a.api_listen)


class Daemon:
    """Inert until ``start``; ``run`` decodes until ``stop_event``; ``stop`` cleans up."""

    def __init__(self, options: RunOptions) -> None:
        self.options = options
        self.stop_event = threading.Event()
        self.reload_requested = threading.Event()
        self.lock = threading.Lock()  # guards the status snapshot
        self.queue: queue.Queue[DatagramBatch] = queue.Queue()
        self.counters = {
            "overload_batches": 0,
            "overload_datagrams": 0,
            "flow_records": 0,
            "reloads_ok": 0,
            "reloads_refused": 0,
        }
        self.lag = 0.0
        self.rates: dict[str, npt.NDArray[np.float64]] = {}
        self.started = 0.0
        self.last_reload: dict[str, Any] = {}
        self._snapshot_text = ""
        self._templates = 0  # template records seen at the last save of the decoder state

    # ------------------------------------------------------------------ start
    def start(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        self.started = now
        self.cfg = cfg = config_mod.load(self.options.config)
        self.ts = ts = thresholds.load(cfg.thresholds)
        self.queue = queue.Queue(cfg.daemon.queue_batches)
        self.watch = ExporterWatch(cfg.daemon.exporter_silent_after)
        self.listener = UdpListener(  # bound first: a port in use fails before anything runs
            UdpListenerConfig(listen=cfg.collector.listen, rcvbuf=cfg.collector.rcvbuf),
            self._enqueue,
        )
        self.listener.start()
        os.makedirs(os.path.dirname(cfg.timeline.path) or ".", exist_ok=True)
        self.store = TimelineStore(
            cfg.timeline.path,
            keep_recent=cfg.timeline.keep_recent,
            pre_incident=cfg.timeline.pre_incident,
            max_age_days=cfg.timeline.retention_days,
        )
        self.writer = TimelineWriter(self.store)
        self.allowlist: AllowlistService | None = None
        if allowlist_configured(cfg):
            self.allowlist = AllowlistService(cfg.allowlist, now)
        self.pipe = Pipeline(
            cfg, ts, self.allowlist.membership if self.allowlist is not None else None
        )
        if self.allowlist is not None:
            self.pipe.allowlist = self.allowlist.state
        if cfg.collector.state_file and self.pipe.decoder.load(cfg.collector.state_file):
            log.info("restored decoder state from %s", cfg.collector.state_file)
        restored = self._restore(now)
        self.pipe.frame_sink = self.writer.frames
        self.history: Any = None
        if cfg.history.path:
            self._start_history(cfg, ts)
        self.pipe.desired_sink = self._desired
        self.timeline = _Live(self)
        base = os.path.dirname(os.path.abspath(self.options.config))
        setup = Setup(cfg, ts, make_policy(cfg, ts), os.path.join(base, cfg.bgp.state_dir))
        manage = self.options.manage_exabgp and bool(cfg.bgp.peers)
        self.bgp = BgpWorker(setup, self.record, manage)
        self.record(
            [
                {
                    "time": now,
                    "type": "daemon",
                    "event": "started",
                    "pid": os.getpid(),
                    "config": cfg.source,
                    "thresholds": ts.source,
                    "mode": cfg.bgp.mode,
                    "restored": restored,
                    "reason": f"divertor run started ({len(restored)} incident(s) resumed)",
                },
                *thresholds_lines(ts, now),
            ]
        )
        self.writer.start()
        self.bgp.start(now)
        self._thread = threading.Thread(
            target=self.listener.run, args=(self.stop_event,), name="udp-receive", daemon=True
        )
        self._thread.start()
        if self.allowlist is not None:
            self.allowlist.start_api()
            self.allowlist.start()
        self.api: Any = None
        if cfg.api.listen:
            from divertor.api import start_api

            self.api = start_api(self, cfg.api)
        log.info("listening for flows on %s", self.listener.addresses)

    def _start_history(self, cfg: config_mod.Config, ts: ThresholdSet) -> None:
        """The rate history and the anomaly rules' baselines (docs/history.md). Its DuckDB
        work (recording, refreshes of seconds) runs on the timeline writer's thread."""
        from divertor import history_cmd
        from history.live import HistoryService

        assert cfg.history.path is not None
        os.makedirs(cfg.history.path, exist_ok=True)
        self.history = history = HistoryService(
            cfg.history,
            history_cmd.load_config(cfg.history.path),
            ts.bin_seconds,
            anomaly=lambda: self.pipe.anomaly,
            base_dir=os.path.dirname(cfg.thresholds),
        )
        to_store = self.writer.frames

        def sink(frames: list[RateFrame]) -> None:
            to_store(frames)
            self.writer.call(lambda _s: history.frames(frames))

        self.pipe.frame_sink = sink

    def _history_call(self, fn: Callable[[Any], object]) -> None:
        if self.history is not None:
            history = self.history
            self.writer.call(lambda _s: fn(history))

    @property
    def snapshot_path(self) -> str:
        return self.cfg.timeline.path + ".incidents.json"

    def _restore(self, now: float) -> list[str]:
        """Resume the incidents saved by the last run; end the others it left open."""
        snap: dict[str, Any] = {}
        try:
            with open(self.snapshot_path) as fh:
                snap = json.load(fh)
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as e:
            log.error("incident state %s unreadable, not resumed: %s", self.snapshot_path, e)
        inc = self.pipe.incidents
        restored = inc.restore(snap) if snap else []
        for prefix in restored:  # the blind spot again: the rates start empty after a
            t = inc.tracks[prefix]  # restart, so a diversion is not judged on them until
            if t.state is State.DIVERTED:  # a horizon of fresh data has come in
                t.hold = max(t.hold, now - t.diverted_at + self.cfg.detector.horizon)
                t.under_since = None
        inc.next_incident = max(inc.next_incident, self.store.next_incident_id())
        keep = {inc.tracks[p].incident for p in restored}
        stale = [i.id for i in self.store.open_incidents() if i.engine_id not in keep]
        if stale:
            self.store.mark_interrupted("engine restarted", ids=stale)
        self._snapshot_text = json.dumps(inc.snapshot(), sort_keys=True)
        return restored

    # ------------------------------------------------------------------ hand-overs
    def _enqueue(self, batch: DatagramBatch) -> None:
        try:
            self.queue.put_nowait(batch)
        except queue.Full:
            self.counters["overload_batches"] += 1
            self.counters["overload_datagrams"] += len(batch)

    def record(self, lines: list[dict[str, Any]]) -> None:
        """Timeline lines from any thread: to the store (in order) and to the log."""
        for line in lines:
            if line.get("type") not in ("verdict", "thresholds"):
                log.info("timeline %s", json.dumps(line, default=str))
        self.writer.lines(lines)
        if lines:  # the history leaves diverted incidents out of its baselines
            batch = list(lines)
            self._history_call(lambda h: h.lines(batch))

    def _desired(self, desired: DesiredSet) -> None:
        self._save_incidents()  # before the routes change: a restart resumes from here
        self.bgp.offer(desired)

    def _save_incidents(self) -> None:
        text = json.dumps(self.pipe.incidents.snapshot(), sort_keys=True)
        if text == self._snapshot_text:
            return
        tmp = self.snapshot_path + ".tmp"
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.snapshot_path)
        self._snapshot_text = text

    # ------------------------------------------------------------------ the loop
    def run(self) -> None:
        cfg = self.cfg.daemon
        next_stats = next_state = next_exporters = time.monotonic()
        next_prune = time.monotonic() + 3600.0
        next_history = time.monotonic() + 5.0
        while not self.stop_event.is_set():
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self.reload(time.time())
            try:
                batch: DatagramBatch | None = self.queue.get(timeout=0.1)
            except queue.Empty:
                batch = None
            self.step(batch, time.time())
            mono = time.monotonic()
            if mono >= next_exporters:
                next_exporters = mono + 5.0
                self._check_exporters(time.time())
            if mono >= next_stats:
                next_stats = mono + cfg.stats_interval
                log.info("stats %s", json.dumps(self.counters))
            if self.cfg.collector.state_file and (
                mono >= next_state
                or (mono >= next_state - cfg.state_every + 5.0 and self._new_templates())
            ):  # periodically, and within 5 s of a new template: a restart decodes at once
                next_state = mono + cfg.state_every
                self.pipe.decoder.save(self.cfg.collector.state_file)
            if mono >= next_history:
                next_history = mono + 60.0
                self._history_call(lambda h: self.record(h.poll(time.time())))
            if mono >= next_prune:
                next_prune = mono + 3600.0
                self.writer.call(lambda s: s.prune())

    def _new_templates(self) -> bool:
        n = sum(st.templates for st in list(self.pipe.decoder.stats.by_exporter.values()))
        new, self._templates = n != self._templates, n
        return new

    def step(self, batch: DatagramBatch | None, now: float) -> None:
        """One batch (or, when none came, the clock): decode, count, evaluate, hand over."""
        before = self.pipe.next_eval
        if batch is not None and len(batch):
            records = self.pipe.records
            self.pipe.feed(batch, self.timeline)
            self.counters["flow_records"] += self.pipe.records - records
            self.lag = max(0.0, now - float(batch.arrival[-1]))
        else:
            self.pipe.tick(now, self.timeline)
            self.lag = 0.0
        if self.pipe.talkers:
            self.writer.talkers(self.pipe.talkers)
            self.pipe.talkers = []
        if self.pipe.next_eval != before and self.pipe.next_eval is not None:
            self._rates()

    def _rates(self) -> None:
        """Each prefix's rates for /status and /metrics: the peak, over the detector's
        horizon, of the rolling average the verdicts use (kept by the evaluator). Records
        arrive up to an active timeout after their packets, so the newest bins are always
        short; the peak over the horizon is what the verdicts compare with the thresholds."""
        peak = self.pipe.evaluator.peak
        rates = {str(n): peak[i] for i, n in enumerate(self.pipe.index.networks)}
        with self.lock:
            self.rates = rates

    def _check_exporters(self, now: float) -> None:
        stats = self.pipe.decoder.stats.by_exporter
        lines = self.watch.check({k: v.datagrams for k, v in list(stats.items())}, now)
        if self.allowlist is not None:
            state = self.allowlist.state
            lines += self.watch.allowlist(state.version, len(state), now)
        self.record(lines)

    # ------------------------------------------------------------------ reload
    def reload(self, now: float) -> bool:
        """Re-read the configuration and thresholds; keep the last good on any error."""
        try:
            cfg = config_mod.load(self.options.config)
            ts = thresholds.load(cfg.thresholds)
            base = os.path.dirname(os.path.abspath(self.options.config))
            setup = Setup(cfg, ts, make_policy(cfg, ts), os.path.join(base, cfg.bgp.state_dir))
        except (OSError, ValueError) as e:
            self.counters["reloads_refused"] += 1
            reason = f"reload refused, the last good configuration stays in force: {e}"
            log.error("%s", reason)
            self.last_reload = {"time": now, "result": "refused", "reason": str(e)}
            self.record([{"time": now, "type": "config", "result": "refused", "reason": reason}])
            return False
        restart = _needs_restart(self.cfg, cfg)
        what = self.pipe.reload(cfg, ts)
        self.bgp.reconfigure(setup)
        self._history_call(lambda h: h.install())  # the new evaluator gets the baselines
        self.cfg, self.ts = cfg, ts
        self.counters["reloads_ok"] += 1
        reason = (
            f"reloaded {cfg.source} and {ts.source}: {what['prefixes']} prefixes, "
            f"rates {'kept' if what['rates_kept'] else 'restarted'}"
            + (f", no longer protected: {', '.join(what['dropped'])}" if what["dropped"] else "")
            + (f"; needs a restart to apply: {', '.join(restart)}" if restart else "")
        )
        log.info("%s", reason)
        self.last_reload = {"time": now, "result": "ok", "reason": reason}
        self.record(
            [
                {"time": now, "type": "config", "result": "ok", "reason": reason, **what},
                *thresholds_lines(ts, now),
            ]
        )
        return True

    # ------------------------------------------------------------------ stop
    def stop(self) -> None:
        self.stop_event.set()
        if getattr(self, "_thread", None) is not None:
            self._thread.join(timeout=5)
        self.kernel_drops = self.listener.kernel_drops()
        self.listener.stop()
        if self.api is not None:
            self.api.stop()
        if self.allowlist is not None:
            self.allowlist.close()
        self._save_incidents()
        if self.cfg.collector.state_file:
            self.pipe.decoder.save(self.cfg.collector.state_file)
        self.bgp.stop(withdraw=self.options.withdraw_on_stop, stop_exabgp=self.options.stop_exabgp)
        now = time.time()
        self.record(
            [
                {
                    "time": now,
                    "type": "daemon",
                    "event": "stopped",
                    "reason": "SIGTERM: stopped"
                    + (
                        ", diversions withdrawn"
                        if self.options.withdraw_on_stop
                        else ", diversions left as they are"
                    ),
                },
            ]
        )
        self._history_call(lambda h: h.close())
        self.writer.stop()
        self.store.close()

    # ------------------------------------------------------------------ status
    def engine(self) -> Engine:
        """A BGP engine on the store, for the calling thread (the API's)."""
        return self.bgp.setup.engine()

    def timeline_path(self) -> str:
        return self.cfg.timeline.path

    def status(self) -> dict[str, Any]:
        """What /status, /metrics and `divertor status` show (any thread)."""
        inc = self.pipe.incidents
        tracks = {
            p: {
                "state": t.state.value,
                "incident": t.incident,
                "since": t.since,
                "vector": t.vector,
            }
            for p, t in inc.tracks.items()
        }
        with self.lock:
            rates = {p: r.tolist() for p, r in self.rates.items()}
        return {
            "started": self.started,
            "uptime": time.time() - self.started,
            "config": self.cfg.source,
            "thresholds": self.ts.source,
            "mode": self.cfg.bgp.mode,
            "listen": [str(a) for a in self.listener.addresses],
            "datagrams": self.listener.datagrams,
            "socket_drops": self.listener.kernel_drops(),
            "decode_lag": self.lag,
            "queue": self.queue.qsize(),
            **self.counters,
            "timeline_backlog": self.writer.backlog,
            "timeline_errors": self.writer.errors,
            "bgp_errors": self.bgp.errors,
            "last_reload": self.last_reload,
            "prefixes": tracks,
            "rates": rates,
            "exporters": self.pipe.decoder.stats.as_dict(),
            "allowlist": (
                {"version": self.allowlist.state.version, "entries": len(self.allowlist.state)}
                if self.allowlist is not None
                else None
            ),
        }


def _needs_restart(old: config_mod.Config, new: config_mod.Config) -> list[str]:
    """Keys a reload does not apply (sockets, stores, ExaBGP's sessions)."""
    out = []
    for name in ("collector", "allowlist", "api", "timeline", "daemon"):
        if getattr(old, name) != getattr(new, name):
            out.append(name)
    if (old.bgp.peers, old.bgp.local_as, old.bgp.router_id, old.bgp.state_dir) != (
        new.bgp.peers,
        new.bgp.local_as,
        new.bgp.router_id,
        new.bgp.state_dir,
    ):
        out.append("bgp sessions")
    return out
