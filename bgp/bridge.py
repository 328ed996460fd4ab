"""ExaBGP's API process: reconciles ExaBGP to the target set in the BGP store.

    python -m bgp.bridge --state-dir /var/lib/divertor/bgp
    python -m bgp.bridge --config /etc/divertor/divertor.yaml

ExaBGP starts it (``process`` in its configuration) and respawns it if it dies. It reads
ExaBGP's acks, replies and JSON events on stdin and writes one command at a time on
stdout (``bgp.reconciler`` decides what). It learns that the target changed from a
datagram on ``STATE_DIR/bridge.sock`` (sent by the engine after each commit) and, should
a datagram be lost, by checking the store's target version every ``--poll`` seconds. It
records what ExaBGP acknowledged and its timeline events in the store, in batches, off
the path of the next command.

It must not crash in a loop (six deaths in a minute make ExaBGP shut down, and every
route goes): errors are logged on stderr and retried; a store that cannot be read means
that nothing is sent, not that everything is withdrawn. It exits when stdin closes.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from bgp import reconciler as rc
from bgp.store import Store

STORE_NAME = "bgp.sqlite"
SOCKET_NAME = "bridge.sock"
FLUSH_EVERY = 0.2  # seconds between writes of acks and events to the store
MAX_BUFFERED = 10000  # events kept while the store cannot be written


def log(message: str) -> None:
    sys.stderr.write(f"divertor-bridge[{os.getpid()}]: {message}\n")
    sys.stderr.flush()


class Bridge:
    def __init__(self, state_dir: str, poll: float = 1.0, ack_timeout: float = 10.0) -> None:
        self.state_dir = state_dir
        self.store_path = os.path.join(state_dir, STORE_NAME)
        self.socket_path = os.path.join(state_dir, SOCKET_NAME)
        self.poll = poll
        self.rec = rc.Reconciler(ack_timeout=ack_timeout)
        self.store: Store | None = None
        self.waiting = False  # store not usable (reported once)
        self.version = -1
        self.events: list[dict[str, Any]] = []
        self.acked: dict[str, tuple[str | None, float]] = {}
        self.listed: dict[str, str] | None = None
        self.last_flush = 0.0
        self.last_poll = 0.0
        self.started = time.time()
        self.out = sys.stdout

    # ------------------------------------------------------------------ store
    def open_store(self) -> bool:
        if self.store is not None:
            return True
        try:
            # a short lock wait: the next command must never wait long for the store
            self.store = Store(self.store_path, create=False, durable=False, timeout=0.5)
        except Exception as e:  # sqlite3.Error, OSError, a newer schema
            if not self.waiting:
                log(f"store {self.store_path} not usable yet ({e}); sending nothing")
            self.waiting = True
            return False
        if self.waiting:
            log(f"store {self.store_path} opened")
        self.waiting = False
        return True

    def check_target(self, now: float) -> list[rc.Action]:
        if not self.open_store() or self.store is None:
            return []
        try:
            with self.store.read() as tx:
                version = tx.target_version()
                if version == self.version:
                    return []
                target = tx.target()
        except Exception as e:
            log(f"reading the target failed: {e}")
            return []
        self.version = version
        return self.rec.desired(target, now)

    def safely(self, what: str, step: Callable[[float], list[rc.Action]], now: float) -> None:
        """Run one step; an unexpected error is logged, never fatal (see the docstring)."""
        try:
            self.act(step(now), now)
        except Exception as e:  # pragma: no cover - a bug; staying up matters more
            log(f"{what}: {type(e).__name__}: {e}")

    def flush(self, now: float, force: bool = False) -> None:
        if not (self.events or self.acked or self.listed is not None or force):
            return
        if not force and now - self.last_flush < FLUSH_EVERY and not self.rec.idle:
            return
        if not self.open_store() or self.store is None:
            return
        try:
            with self.store.write() as tx:
                if self.listed is not None:
                    tx.replace_announced(self.listed, now)
                tx.set_announced(self.acked)
                tx.add_events(self.events)
                tx.set_json_meta(
                    "bridge",
                    {
                        "pid": os.getpid(),
                        "started": self.started,
                        "heartbeat": now,
                        "sessions": self.rec.sessions,
                        "target_version": self.version,
                        "announced": len(self.rec.rib),
                    },
                )
        except Exception as e:
            log(f"recording in the store failed (kept for later): {e}")
            return
        self.events, self.acked, self.listed = [], {}, None
        self.last_flush = now

    # ------------------------------------------------------------------ actions
    def act(self, actions: list[rc.Action], now: float) -> None:
        for a in actions:
            if isinstance(a, rc.Write):
                self.out.write(a.line + "\n")
                self.out.flush()
            elif isinstance(a, rc.Event):
                if len(self.events) >= MAX_BUFFERED:  # the store unwritable for long
                    del self.events[: MAX_BUFFERED // 10]
                self.events.append(a.data)
                if a.data["event"] in ("error", "ack-overdue", "resync", "session", "shutdown"):
                    log(" ".join(f"{k}={v}" for k, v in a.data.items() if k != "type"))
            elif isinstance(a, rc.Acked):
                self.acked[a.prefix] = (a.command, now)
            elif isinstance(a, rc.Listed):
                self.listed, self.acked = dict(a.rib), {}

    def run(self, stdin_fd: int = 0) -> int:
        sel = selectors.DefaultSelector()
        os.set_blocking(stdin_fd, False)
        sel.register(stdin_fd, selectors.EVENT_READ, "stdin")
        sock = self._bind()
        if sock is not None:
            sel.register(sock, selectors.EVENT_READ, "poke")
        buf = b""
        now = time.time()
        self.act(self.rec.started(now), now)
        self.act(self.check_target(now), now)
        self.last_poll = now
        try:
            while True:
                timeout = max(0.0, min(self.poll - (time.time() - self.last_poll), FLUSH_EVERY))
                for key, _ in sel.select(timeout):
                    now = time.time()
                    if key.data == "poke":
                        with contextlib.suppress(OSError):
                            while sock is not None and sock.recv(64):
                                pass
                        self.safely("target", self.check_target, now)
                        continue
                    try:
                        chunk = os.read(stdin_fd, 65536)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        self.act([rc.Event({"time": now, "type": "exabgp", "event": "eof"})], now)
                        return 0
                    buf += chunk
                    *lines, buf = buf.split(b"\n")
                    for raw in lines:
                        text = raw.decode("utf-8", "replace")
                        self.safely("line", functools.partial(self.rec.line, text), now)
                now = time.time()
                if now - self.last_poll >= self.poll:
                    self.last_poll = now
                    self.safely("target", self.check_target, now)
                    self.safely("tick", self.rec.tick, now)
                    self.flush(now, force=True)
                self.flush(now)
        finally:
            self.flush(time.time(), force=True)
            if sock is not None:
                sock.close()

    def _bind(self) -> socket.socket | None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket_path)
            sock.bind(self.socket_path)
            sock.setblocking(False)
        except OSError as e:
            log(f"no wake-up socket at {self.socket_path} ({e}); polling every {self.poll}s")
            sock.close()
            return None
        return sock


def state_dir_of(config: str) -> tuple[str, float, float]:
    """state_dir, poll_interval and ack_timeout of a divertor.yaml."""
    from divertor import config as dconfig

    cfg = dconfig.load(config)
    base = os.path.dirname(os.path.abspath(config))
    return os.path.join(base, cfg.bgp.state_dir), cfg.bgp.poll_interval, cfg.bgp.ack_timeout


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bgp.bridge", description=__doc__.split("\n")[0])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--state-dir", help="directory of bgp.sqlite and bridge.sock")
    where.add_argument("--config", help="divertor.yaml (its bgp.state_dir)")
    p.add_argument("--poll", type=float, help="seconds between checks of the store (1)")
    p.add_argument("--ack-timeout", type=float, help="report an ack later than this (10 s)")
    args = p.parse_args(argv)
    poll, ack_timeout = 1.0, 10.0
    state_dir = args.state_dir
    if args.config:
        while True:  # never exit in a loop: ExaBGP would give up and withdraw everything
            try:
                state_dir, poll, ack_timeout = state_dir_of(args.config)
                break
            except Exception as e:
                log(f"{args.config}: {e}; retrying in 5 s")
                if _wait_stdin(5.0):
                    return 0
    bridge = Bridge(
        os.path.abspath(state_dir),
        poll=args.poll or poll,
        ack_timeout=args.ack_timeout or ack_timeout,
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    log(f"started, store {bridge.store_path}")
    return bridge.run()


def _wait_stdin(seconds: float) -> bool:
    """Wait, draining stdin; True if it closed (ExaBGP went away)."""
    sel = selectors.DefaultSelector()
    sel.register(0, selectors.EVENT_READ)
    end = time.time() + seconds
    while time.time() < end:
        if sel.select(end - time.time()) and not os.read(0, 65536):
            return True
    return False


if __name__ == "__main__":
    sys.exit(main())
