"""Starts ExaBGP from the generated configuration and keeps it running.

ExaBGP runs in a session of its own, so that it outlives the engine: an engine that
stops or is killed (kill -9 included) withdraws nothing; started again, it finds ExaBGP
by its PID file (and its command line) and adopts it. If ExaBGP dies (or gives up after
its process died too often), it is started again, with a growing delay (1 s to 30 s); its
new bridge process re-announces the whole target set.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from typing import Any


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return [a.decode("utf-8", "replace") for a in fh.read().split(b"\0") if a]
    except OSError:
        return []


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


class Supervisor:
    def __init__(
        self,
        state_dir: str,
        command: Sequence[str],
        env: dict[str, str],
        *,
        min_delay: float = 1.0,
        max_delay: float = 30.0,
    ) -> None:
        self.state_dir = state_dir
        self.conf = os.path.join(state_dir, "exabgp.conf")
        self.pidfile = os.path.join(state_dir, "exabgp.pid")
        self.logfile = os.path.join(state_dir, "exabgp.log")
        self.command = list(command)
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None
        self.started = 0.0
        self.min_delay, self.max_delay = min_delay, max_delay
        self.delay = min_delay
        self.next_start = 0.0

    def write_config(self, text: str, script: str) -> bool:
        """Write exabgp.conf and the bridge wrapper; True if the configuration changed."""
        os.makedirs(self.state_dir, exist_ok=True)
        _atomic(os.path.join(self.state_dir, "bridge.sh"), script, 0o755)
        try:
            with open(self.conf) as fh:
                if fh.read() == text:
                    return False
        except OSError:
            pass
        _atomic(self.conf, text, 0o644)
        return True

    def running(self) -> int | None:
        """The PID of our ExaBGP (from the PID file, checked against its command line)."""
        if self.proc is not None and self.proc.poll() is None:
            return self.proc.pid
        try:
            with open(self.pidfile) as fh:
                pid = int(fh.read().strip() or 0)
        except (OSError, ValueError):
            return None
        if pid > 0 and _alive(pid) and self.conf in _cmdline(pid):
            return pid
        return None

    def ensure(self, now: float) -> list[dict[str, Any]]:
        """Adopt a running ExaBGP or start one (unless waiting after a crash)."""
        pid = self.running()
        if pid is not None:
            if self.pid != pid:
                self.pid = pid
                return [_event(now, "adopted", pid=pid)]
            if now - self.started > 60:
                self.delay = self.min_delay
            return []
        out: list[dict[str, Any]] = []
        if self.pid is not None:
            code = self.proc.poll() if self.proc is not None else None
            out.append(_event(now, "exited", pid=self.pid, code=code, restart_in=self.delay))
            self.pid, self.proc = None, None
            self.next_start = now + self.delay
            self.delay = min(self.delay * 2, self.max_delay)
        if now < self.next_start:
            return out
        self.proc = self._spawn()
        self.pid, self.started = self.proc.pid, now
        with open(self.pidfile + ".tmp", "w") as fh:
            fh.write(f"{self.proc.pid}\n")
        os.replace(self.pidfile + ".tmp", self.pidfile)
        return [*out, _event(now, "started", pid=self.proc.pid, command=self.command)]

    def reload(self, now: float) -> list[dict[str, Any]]:
        """The configuration changed: ExaBGP reloads it on SIGUSR1 (sessions of unchanged
        neighbors stay up)."""
        pid = self.running()
        if pid is None:
            return []
        os.kill(pid, signal.SIGUSR1)
        return [_event(now, "reload", pid=pid)]

    def stop(self, now: float, grace: float = 10.0) -> list[dict[str, Any]]:
        """Stop ExaBGP (its peers drop every route): only on an operator's request."""
        pid = self.running()
        if pid is None:
            return []
        os.kill(pid, signal.SIGTERM)
        end = time.monotonic() + grace
        while _alive(pid) and time.monotonic() < end:
            if self.proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(0.05)
            else:
                time.sleep(0.05)
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()
        self.pid, self.proc = None, None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.pidfile)
        return [_event(now, "stopped", pid=pid)]

    def _spawn(self) -> subprocess.Popen[bytes]:
        log = open(self.logfile, "ab")  # noqa: SIM115 - handed to the child
        try:
            return subprocess.Popen(
                [*self.command, self.conf],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
                cwd=self.state_dir,
                start_new_session=True,  # outlives the engine, deaf to its signals
            )
        finally:
            log.close()


def _atomic(path: str, text: str, mode: int) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _event(now: float, what: str, **fields: Any) -> dict[str, Any]:
    return {"time": now, "type": "supervisor", "event": what, **fields}
