"""Live datagram source: UDP sockets drained into DatagramBatches.

The listener only moves datagrams from the kernel into batches; decoding happens in whatever
``on_batch`` hands them to. Typical use::

    listener = UdpListener(UdpListenerConfig(listen=["0.0.0.0:2055", "[::]:2055"]), queue.put)
    listener.start()                    # binds; raises OSError if it cannot
    stop = threading.Event()
    t = threading.Thread(target=listener.run, args=(stop,))
    t.start()
    ...
    stop.set(); t.join(); listener.stop()
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from collector.datagram import DatagramBatch

log = logging.getLogger(__name__)

_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux value; absent from `socket`
_POLL = 0.1  # longest wait in select(), so that a stop request is seen soon
_MAX_DATAGRAM = 65535


def parse_listen(address: str) -> tuple[str, int]:
    """``host:port`` / ``[v6]:port`` / ``:port`` to (host, port); an empty host is 0.0.0.0."""
    host, sep, port_text = address.rpartition(":")
    if not sep:
        raise ValueError(f"listen address {address!r} has no port (host:port or [v6]:port)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"IPv6 listen address {address!r} must be bracketed: [addr]:port")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"listen address {address!r}: bad port {port_text!r}") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"listen address {address!r}: port out of range")
    return host or "0.0.0.0", port


def parse_proc_net_udp(text: str, inodes: Iterable[int]) -> dict[int, int]:
    """Drops per socket inode, from the text of ``/proc/net/udp`` or ``/proc/net/udp6``.

    Only the inodes asked for are returned (those found).
    """
    wanted = set(inodes)
    drops: dict[int, int] = {}
    lines = text.splitlines()
    if not lines:
        return drops
    header = lines[0].split()
    # the header names "tx_queue rx_queue" and "tm->when" where the rows have one column each
    try:
        inode_col = header.index("inode") - 2
        drops_col = header.index("drops") - 2
    except ValueError:
        inode_col, drops_col = 9, 12
    for line in lines[1:]:
        cols = line.split()
        if len(cols) <= max(inode_col, drops_col):
            continue
        try:
            inode = int(cols[inode_col])
            if inode in wanted:
                drops[inode] = int(cols[drops_col])
        except ValueError:
            continue
    return drops


def _fresh() -> tuple[DatagramBatch, list[float], list[int], list[str], list[bytes]]:
    b = DatagramBatch()
    return b, b.arrival, b.frame, b.exporter, b.payload


@dataclass
class UdpListenerConfig:
    """Where to listen and how to batch. ``listen``: ``host:port``, IPv6 as ``[::1]:2055``."""

    listen: list[str] = field(default_factory=list)
    rcvbuf: int = 32 * 1024 * 1024
    batch_size: int = 1024
    batch_timeout: float = 0.05
    reuseport: bool = False


class UdpListener:
    """UDP sockets to DatagramBatches; ``on_batch`` owns each batch it is given.

    A batch is handed over when it holds ``batch_size`` datagrams or when ``batch_timeout``
    seconds have passed since its first datagram. ``frame`` is a running datagram counter
    (from 1); ``arrival`` is ``clock()`` read once per socket wake-up.
    """

    def __init__(
        self,
        config: UdpListenerConfig,
        on_batch: Callable[[DatagramBatch], None],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if config.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if config.batch_timeout < 0:
            raise ValueError("batch_timeout must not be negative")
        if not config.listen:
            raise ValueError("no listen address")
        self.config = config
        self.on_batch = on_batch
        self.clock = clock
        self.endpoints = [parse_listen(a) for a in config.listen]
        self.sockets: list[socket.socket] = []
        self.rcvbuf_effective = 0  # smallest receive buffer read back (Linux shows twice the set)
        self.datagrams = 0
        self.bytes = 0
        self.batches = 0
        self.callback_errors = 0
        self.recv_errors = 0
        self._inodes: list[tuple[int, int]] = []  # (family, inode) of each socket
        self._lock = threading.Lock()

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """(host, port) each socket is bound to (useful with port 0)."""
        return [s.getsockname()[:2] for s in self.sockets]

    def start(self) -> None:
        """Creates and binds the sockets. Raises OSError (nothing left open) if one fails."""
        if self.sockets:
            raise RuntimeError("listener already started")
        try:
            for host, port in self.endpoints:
                self.sockets.append(self._bind(host, port))
        except BaseException:
            self.stop()
            raise
        self.rcvbuf_effective = min(
            s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) for s in self.sockets
        )
        self._inodes = [(s.family, os.fstat(s.fileno()).st_ino) for s in self.sockets]
        # Linux reports twice the size asked for (bookkeeping overhead)
        granted = self.rcvbuf_effective // 2 if sys.platform == "linux" else self.rcvbuf_effective
        if granted < self.config.rcvbuf:
            log.warning(
                "UDP receive buffer is %d bytes, %d asked for: raise net.core.rmem_max",
                granted,
                self.config.rcvbuf,
            )
        log.info("listening on %s (rcvbuf %d)", self.addresses, self.rcvbuf_effective)

    def _bind(self, host: str, port: int) -> socket.socket:
        infos = socket.getaddrinfo(
            host, port, socket.AF_UNSPEC, socket.SOCK_DGRAM, 0, socket.AI_PASSIVE
        )
        family, kind, proto, _name, sockaddr = infos[0]
        sock = socket.socket(family, kind, proto)
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if self.config.reuseport:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.config.rcvbuf)
            if hasattr(os, "geteuid") and os.geteuid() == 0:
                with contextlib.suppress(OSError):  # lifts the net.core.rmem_max cap
                    sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, self.config.rcvbuf)
            sock.bind(sockaddr)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    def run(self, stop: threading.Event) -> None:
        """Receives until ``stop`` is set; hands over what is left in the batch, then returns."""
        if not self.sockets:
            raise RuntimeError("start() the listener before run()")
        cfg = self.config
        size, timeout, clock = cfg.batch_size, cfg.batch_timeout, self.clock
        monotonic = time.monotonic
        buf = bytearray(_MAX_DATAGRAM)
        view = memoryview(buf)
        frame = self.datagrams
        deadline = 0.0
        batch, arrival, frames, exporter, payload = _fresh()
        with selectors.DefaultSelector() as sel:
            for s in self.sockets:
                sel.register(s, selectors.EVENT_READ)
            while not stop.is_set() and self.sockets:
                wait = min(_POLL, max(0.0, deadline - monotonic())) if payload else _POLL
                try:
                    ready = sel.select(wait)
                except (OSError, ValueError):  # sockets closed under us
                    break
                for key, _events in ready:
                    sock: socket.socket = key.fileobj  # type: ignore[assignment]
                    recv = sock.recvfrom_into
                    now = clock()
                    for _ in range(size):
                        try:
                            n, addr = recv(buf)
                        except BlockingIOError:
                            break
                        except OSError as exc:
                            self.recv_errors += 1
                            log.debug("recvfrom on %s: %s", sock, exc)
                            break
                        frame += 1
                        if not payload:
                            deadline = monotonic() + timeout
                        arrival.append(now)
                        frames.append(frame)
                        exporter.append(addr[0])
                        payload.append(view[:n].tobytes())
                        if len(payload) >= size:
                            self._hand_over(batch, frame)
                            batch, arrival, frames, exporter, payload = _fresh()
                if payload and monotonic() >= deadline:
                    self._hand_over(batch, frame)
                    batch, arrival, frames, exporter, payload = _fresh()
        if payload:
            self._hand_over(batch, frame)

    def _hand_over(self, batch: DatagramBatch, frame: int) -> None:
        self.datagrams = frame
        self.bytes += sum(map(len, batch.payload))
        self.batches += 1
        try:
            self.on_batch(batch)
        except Exception:
            self.callback_errors += 1
            n = self.callback_errors
            if n <= 10 or n % 1000 == 0:
                log.exception("on_batch failed (%d failures so far)", n)

    def kernel_drops(self) -> int:
        """Datagrams the kernel dropped on these sockets (full buffer), from /proc/net/udp*."""
        total = 0
        for family, name in ((socket.AF_INET, "udp"), (socket.AF_INET6, "udp6")):
            inodes = [ino for fam, ino in self._inodes if fam == family]
            if not inodes:
                continue
            try:
                with open(f"/proc/net/{name}", encoding="ascii") as f:
                    text = f.read()
            except OSError:
                continue
            total += sum(parse_proc_net_udp(text, inodes).values())
        return total

    def stop(self) -> None:
        """Closes the sockets (after ``run`` has returned, or to make it return)."""
        with self._lock:
            sockets, self.sockets = self.sockets, []
        for s in sockets:
            s.close()
