"""The daemon's slow stages, each in a thread of its own behind a queue: the BGP engine
(ExaBGP kept running, DesiredSets applied, time rules) and the timeline store writer. The
decode loop only hands work over; it never waits for SQLite, ExaBGP or an fsync.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bgp.engine import Engine
from bgp.supervisor import Supervisor
from detector.contracts import DesiredSet, RateFrame
from divertor.bgp_cmd import Setup
from divertor.store import TimelineStore

log = logging.getLogger(__name__)

Sink = Callable[[list[dict[str, Any]]], None]


class BgpWorker:
    """Applies the detector's DesiredSets and the time rules to the BGP store, and keeps
    ExaBGP running (``manage``: when peers are configured). Latest DesiredSet wins: a
    set superseded before it was applied is never applied (it is not a change of mind
    the router needs to see).

    Everything the BGP side records (the engine's plans, refusals and operator actions,
    from this daemon, the API or the CLI; the bridge's acks and session changes; the
    supervisor's) is in the BGP store's event log: the worker forwards it, in order, to
    ``sink`` (the timeline) after each step, so nothing is missed or copied twice."""

    def __init__(self, setup: Setup, sink: Sink, manage: bool) -> None:
        self.setup, self.sink, self.manage = setup, sink, manage
        self.engine: Engine | None = None
        self.sup: Supervisor | None = None
        self._cond = threading.Condition()
        self._desired: DesiredSet | None = None
        self._routes: tuple[Any, ...] | None = None
        self._stop = False
        self._setup: Setup | None = None  # a reloaded configuration, taken at the next step
        self._thread: threading.Thread | None = None
        self.cursor = 0  # last event of the BGP store forwarded to the sink
        self.errors = 0
        self.applied = 0

    def start(self, now: float) -> None:
        """Open the store, adopt or start ExaBGP, record the configuration's refusals."""
        engine = self.setup.engine()  # this thread's; the worker opens its own
        with engine.store.read() as tx:
            self.cursor = tx.last_event_id()  # earlier runs' events are in the timeline
        self.sup = self.setup.supervisor() if self.manage else None
        engine.load(self.setup.candidates(), now)
        if self.sup is not None:
            changed = self.sup.write_config(self.setup.exabgp_config(), self.setup.bridge_script())
            started = self.sup.ensure(now)
            if changed and any(e["event"] == "adopted" for e in started):
                started += self.sup.reload(now)
            _add_events(engine, started)
        self._forward(engine)
        self._thread = threading.Thread(target=self._run, name="bgp", daemon=True)
        self._thread.start()

    def offer(self, desired: DesiredSet) -> None:
        """The detector's DesiredSet of this bin (only a change of routes wakes the worker)."""
        routes = desired.routes
        if routes == self._routes:
            return
        with self._cond:
            self._routes = routes
            self._desired = desired
            self._cond.notify()

    def reconfigure(self, setup: Setup) -> None:
        """A reloaded configuration: the policy (mode, limits, RPKI) of the next step."""
        with self._cond:
            self._setup = setup
            self._cond.notify()

    def _run(self) -> None:
        self.engine = self.setup.engine()  # SQLite connections stay in their thread
        while True:
            with self._cond:
                if self._desired is None and self._setup is None and not self._stop:
                    self._cond.wait(self.setup.config.bgp.poll_interval)
                desired, self._desired = self._desired, None
                setup, self._setup = self._setup, None
                if self._stop:
                    return
            try:
                if setup is not None:
                    self.setup, self.engine = setup, setup.engine()
                    self.engine.load(setup.candidates(), time.time())
                self.step(desired, time.time())
                self._forward(self.engine)
            except Exception:
                self.errors += 1
                log.exception("BGP engine step failed (retried at the next one)")
                if desired is not None:
                    with self._cond:  # keep it: the next step applies it
                        self._desired = self._desired or desired
                time.sleep(self.setup.config.bgp.poll_interval)

    def step(self, desired: DesiredSet | None, now: float) -> None:
        assert self.engine is not None
        if self.sup is not None:
            _add_events(self.engine, self.sup.ensure(now))
        if desired is not None:
            self.engine.set_desired(desired)
            self.applied += 1
        else:
            self.engine.tick(now)

    def _forward(self, engine: Engine) -> None:
        while True:
            with engine.store.read() as tx:
                rows = tx.events(self.cursor)
            if not rows:
                return
            self.cursor = rows[-1][0]
            self.sink([e for _, e in rows])

    def stop(self, *, withdraw: bool = False, stop_exabgp: bool = False) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)
        engine = self.setup.engine()  # this thread's
        if withdraw:
            engine.set_desired(DesiredSet(time.time(), ()))
            for prefix in list(engine.status()["manual"]):
                engine.withdraw(
                    prefix,
                    reason="divertor run stopped with --withdraw-on-stop",
                    who="divertor",
                    now=time.time(),
                )
        if self.sup is not None and stop_exabgp:
            _add_events(engine, self.sup.stop(time.time()))
        self._forward(engine)


def _add_events(engine: Engine, events: list[dict[str, Any]]) -> None:
    """The supervisor's events into the BGP store's timeline (the engine records its own)."""
    if events:
        with engine.store.write() as tx:
            tx.add_events(events)


class TimelineWriter:
    """Writes timeline lines, RateFrames and talkers to the store, in the order they were
    handed over, from a thread of its own. The queue is unbounded: a line is never dropped
    (a stalled disk shows as ``backlog`` in /status and /metrics)."""

    def __init__(self, store: TimelineStore) -> None:
        self.store = store
        self.queue: queue.SimpleQueue[tuple[str, Any] | None] = queue.SimpleQueue()
        self.written = {"lines": 0, "frames": 0, "talkers": 0}
        self.errors = 0
        self._thread = threading.Thread(target=self._run, name="timeline", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def lines(self, lines: Sequence[Mapping[str, Any]]) -> None:
        if lines:
            self.queue.put(("lines", list(lines)))

    def frames(self, frames: list[RateFrame]) -> None:
        if frames:
            self.queue.put(("frames", frames))

    def talkers(self, items: list[tuple[int, str, dict[str, Any]]]) -> None:
        if items:
            self.queue.put(("talkers", items))

    def call(self, fn: Callable[[TimelineStore], object]) -> None:
        """Run ``fn(store)`` in the writer's order (retention, marks)."""
        self.queue.put(("call", fn))

    @property
    def backlog(self) -> int:
        return self.queue.qsize()

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            kind, body = item
            wall = time.time()
            for attempt in range(3):
                try:
                    self._write(kind, body, wall)
                    break
                except Exception:
                    self.errors += 1
                    log.exception("timeline store write failed (attempt %d)", attempt + 1)
                    time.sleep(0.5)

    def _write(self, kind: str, body: Any, wall: float) -> None:
        if kind == "lines":
            self.store.add_many(body, wall)
            self.written["lines"] += len(body)
        elif kind == "frames":
            self.store.add_rateframes(body, wall)
            self.written["frames"] += len(body)
        elif kind == "talkers":
            for engine, prefix, top in body:
                self.store.add_talkers(engine, prefix, top, wall_time=wall)
            self.written["talkers"] += len(body)
        else:
            body(self.store)

    def stop(self) -> None:
        """Write what is queued, then stop."""
        self.queue.put(None)
        self._thread.join(timeout=60)
