"""Pushing exports to the scrubbing side over HTTP, without ever blocking detection.

``offer`` puts a payload on a bounded queue and returns at once; a background thread POSTs
it, retrying server errors and network failures with exponential backoff (``backoff`` x 2^n,
capped at ``max_backoff``, ``max_attempts`` in all). When a payload is lost (queue overflow,
attempts exhausted, or a 4xx answer such as 409 "not my version"), the deltas after it are
useless to the receiver: the pusher skips queued deltas until a full export comes, and
``wants_full()`` tells the producer to send one.
"""

from __future__ import annotations

import logging
import queue
import threading
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Payload:
    body: bytes
    version: int
    full: bool
    content_type: str = "application/json"


@dataclass
class PushStats:
    sent: int = 0
    attempts: int = 0
    retries: int = 0
    dropped: int = 0  # lost to overflow or exhausted attempts
    skipped: int = 0  # deltas skipped while waiting for a full export
    last_status: int | None = None
    last_error: str = ""
    pushed_version: int | None = None
    statuses: deque[int] = field(default_factory=lambda: deque(maxlen=64))  # latest answers


class Pusher:
    def __init__(
        self,
        url: str,
        token: str | None = None,
        queue_size: int = 16,
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        max_attempts: int = 8,
        timeout: float = 5.0,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"push URL {url!r}: expected http:// or https://")
        self.url, self.token, self.timeout = url, token, timeout
        self.backoff, self.max_backoff, self.max_attempts = backoff, max_backoff, max_attempts
        self.queue: queue.Queue[Payload] = queue.Queue(maxsize=queue_size)
        self.stats = PushStats()
        self._gap = True  # nothing pushed yet: the receiver needs a full export first
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self.thread = threading.Thread(target=self._run, name="allowlist-push", daemon=True)

    def start(self) -> Pusher:
        self.thread.start()
        return self

    def wants_full(self) -> bool:
        """True until a full export has been pushed after a loss (or at the start)."""
        return self._gap

    def offer(self, payload: Payload) -> bool:
        """Queue a payload; never blocks. Returns False if an older one had to be dropped."""
        with self._lock:
            self._idle.clear()
            try:
                self.queue.put_nowait(payload)
                return True
            except queue.Full:
                try:
                    self.queue.get_nowait()
                    self.queue.task_done()
                except queue.Empty:
                    pass
                self.stats.dropped += 1
                self._gap = True
                self.queue.put_nowait(payload)
                return False

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout)

    def wait_idle(self, timeout: float) -> bool:
        """Wait until the queue is empty and nothing is in flight (tests, shutdown)."""
        return self._idle.wait(timeout)

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                item = self.queue.get(timeout=0.1)
            except queue.Empty:
                with self._lock:
                    if self.queue.empty():
                        self._idle.set()
                continue
            try:
                if self._gap and not item.full:
                    self.stats.skipped += 1
                    continue
                if self._deliver(item):
                    self._gap = False
                    self.stats.sent += 1
                    self.stats.pushed_version = item.version
                else:
                    self.stats.dropped += 1
                    self._gap = True
            finally:
                self.queue.task_done()

    def _deliver(self, item: Payload) -> bool:
        delay = self.backoff
        for attempt in range(self.max_attempts):
            if self._stop.is_set():
                return False
            if attempt:
                self.stats.retries += 1
                if self._stop.wait(delay):
                    return False
                delay = min(delay * 2, self.max_backoff)
            self.stats.attempts += 1
            status = self._post(item)
            self.stats.last_status = status
            self.stats.statuses.append(status)
            if 200 <= status < 300:
                return True
            if 400 <= status < 500 and status not in (408, 429):
                log.warning("allowlist push to %s refused: HTTP %d", self.url, status)
                return False
        log.warning("allowlist push to %s failed %d times", self.url, self.max_attempts)
        return False

    def _post(self, item: Payload) -> int:
        headers = {
            "Content-Type": item.content_type,
            "X-Allowlist-Version": str(item.version),
            "X-Allowlist-Kind": "full" if item.full else "delta",
        }
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.url, data=item.body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return int(resp.status)
        except urllib.error.HTTPError as e:
            self.stats.last_error = f"HTTP {e.code}"
            return int(e.code)
        except (OSError, ValueError) as e:  # URLError, timeouts, refused connections
            self.stats.last_error = str(e)
            return 0
