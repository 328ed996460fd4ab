"""collector.sources.udp: the UDP listener on loopback, and its pure helpers."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from collector.datagram import DatagramBatch
from collector.sources.udp import (
    UdpListener,
    UdpListenerConfig,
    parse_listen,
    parse_proc_net_udp,
)


def _has_ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


HAS_V6 = _has_ipv6_loopback()


class Collect:
    """on_batch that keeps the batches (thread-safe enough: list.append)."""

    def __init__(self, fail_first: int = 0) -> None:
        self.batches: list[DatagramBatch] = []
        self.calls = 0
        self.fail_first = fail_first

    def __call__(self, batch: DatagramBatch) -> None:
        self.calls += 1
        if self.calls <= self.fail_first:
            raise RuntimeError("decoder blew up")
        self.batches.append(batch)

    def count(self) -> int:
        return sum(len(b) for b in self.batches)

    def wait_for(self, n: int, timeout: float = 5.0) -> None:
        end = time.monotonic() + timeout
        while self.count() < n and time.monotonic() < end:
            time.sleep(0.005)


@contextmanager
def running(listener: UdpListener) -> Iterator[threading.Event]:
    listener.start()
    stop = threading.Event()
    thread = threading.Thread(target=listener.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(5)
        listener.stop()
        assert not thread.is_alive()


def send(family: socket.AddressFamily, addr: tuple[str, int], payloads: list[bytes]) -> None:
    host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        for p in payloads:
            s.sendto(p, addr)


# ---------------------------------------------------------------- pure helpers


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:2055") == ("127.0.0.1", 2055)
    assert parse_listen("[::1]:2055") == ("::1", 2055)
    assert parse_listen("[::]:0") == ("::", 0)
    assert parse_listen(":4739") == ("0.0.0.0", 4739)
    assert parse_listen("localhost:6343") == ("localhost", 6343)
    for bad in ("2055", "::1:2055", "1.2.3.4:x", "1.2.3.4:70000", "[::1]"):
        with pytest.raises(ValueError):
            parse_listen(bad)


PROC_NET_UDP = "\n".join(
    " ".join(line.split())
    for line in (
        "sl local_address rem_address st tx_queue rx_queue tr tm->when retrnsmt uid timeout"
        " inode ref pointer drops",
        "251: 0100007F:0807 00000000:0000 07 00000000:00000000 00:00000000 00000000 0 0"
        " 51234 2 0000000000000000 17",
        "300: 00000000:0044 00000000:0000 07 00000000:00000000 00:00000000 00000000 0 0"
        " 999 2 0000000000000000 0",
        "301: garbage line",
    )
)


def test_parse_proc_net_udp() -> None:
    assert parse_proc_net_udp(PROC_NET_UDP, [51234]) == {51234: 17}
    assert parse_proc_net_udp(PROC_NET_UDP, [51234, 999, 5]) == {51234: 17, 999: 0}
    assert parse_proc_net_udp("", [1]) == {}


def test_constructor_is_inert_and_validates() -> None:
    listener = UdpListener(UdpListenerConfig(listen=["127.0.0.1:0"]), lambda b: None)
    assert listener.sockets == [] and listener.rcvbuf_effective == 0
    assert listener.kernel_drops() == 0
    with pytest.raises(RuntimeError):
        listener.run(threading.Event())
    for cfg in (
        UdpListenerConfig(listen=[]),
        UdpListenerConfig(listen=["127.0.0.1:0"], batch_size=0),
        UdpListenerConfig(listen=["nope"]),
    ):
        with pytest.raises(ValueError):
            UdpListener(cfg, lambda b: None)


# ---------------------------------------------------------------- loopback


def test_loopback_ipv4_and_ipv6() -> None:
    listen = ["127.0.0.1:0"] + (["[::1]:0"] if HAS_V6 else [])
    got = Collect()
    cfg = UdpListenerConfig(listen=listen, batch_size=16, batch_timeout=0.02)
    listener = UdpListener(cfg, got)
    with running(listener):
        addrs = listener.addresses
        assert all(port > 0 for _h, port in addrs)
        assert listener.rcvbuf_effective > 0
        v4 = [b"v4-%d" % i for i in range(200)]
        send(socket.AF_INET, addrs[0], v4)
        v6 = [b"v6-%d" % i for i in range(100)] if HAS_V6 else []
        if HAS_V6:
            send(socket.AF_INET6, addrs[1], v6)
        got.wait_for(len(v4) + len(v6))
        drops = listener.kernel_drops()
        assert isinstance(drops, int) and drops >= 0
    assert got.count() == len(v4) + len(v6)
    assert all(0 < len(b) <= 16 for b in got.batches)
    exporters = {p: e for b in got.batches for p, e in zip(b.payload, b.exporter, strict=True)}
    assert all(exporters[p] == "127.0.0.1" for p in v4)
    assert all(exporters[p] == "::1" for p in v6)
    frames = [f for b in got.batches for f in b.frame]
    assert frames == list(range(1, len(v4) + len(v6) + 1))
    arrivals = [a for b in got.batches for a in b.arrival]
    assert all(abs(a - time.time()) < 60 for a in arrivals)
    assert listener.datagrams == len(v4) + len(v6) and listener.bytes == sum(map(len, v4 + v6))
    assert listener.sockets == []


def test_batch_timeout_hands_over_a_partial_batch() -> None:
    got = Collect()
    cfg = UdpListenerConfig(listen=["127.0.0.1:0"], batch_size=1000, batch_timeout=0.05)
    listener = UdpListener(cfg, got)
    with running(listener):
        t0 = time.monotonic()
        send(socket.AF_INET, listener.addresses[0], [b"a", b"b", b"c"])
        got.wait_for(3)
        assert time.monotonic() - t0 < 2.0
        assert [b.payload for b in got.batches] == [[b"a", b"b", b"c"]]


def test_stop_hands_over_what_is_left() -> None:
    got = Collect()
    cfg = UdpListenerConfig(listen=["127.0.0.1:0"], batch_size=1000, batch_timeout=3600)
    listener = UdpListener(cfg, got)
    with running(listener):
        send(socket.AF_INET, listener.addresses[0], [b"x", b"y"])
        time.sleep(0.3)
        assert got.batches == []
    assert [b.payload for b in got.batches] == [[b"x", b"y"]]


def test_on_batch_exception_does_not_kill_the_loop(caplog: pytest.LogCaptureFixture) -> None:
    got = Collect(fail_first=1)
    cfg = UdpListenerConfig(listen=["127.0.0.1:0"], batch_size=1, batch_timeout=0.01)
    listener = UdpListener(cfg, got)
    with running(listener):
        send(socket.AF_INET, listener.addresses[0], [b"1", b"2", b"3"])
        got.wait_for(2)
    assert listener.callback_errors == 1
    assert [b.payload for b in got.batches] == [[b"2"], [b"3"]]
    assert "on_batch failed" in caplog.text


def test_reuseport_lets_two_listeners_share_a_port() -> None:
    if not hasattr(socket, "SO_REUSEPORT"):
        pytest.skip("no SO_REUSEPORT")
    a = UdpListener(UdpListenerConfig(listen=["127.0.0.1:0"], reuseport=True), lambda b: None)
    a.start()
    try:
        port = a.addresses[0][1]
        b = UdpListener(
            UdpListenerConfig(listen=[f"127.0.0.1:{port}"], reuseport=True), lambda b: None
        )
        b.start()
        b.stop()
        c = UdpListener(UdpListenerConfig(listen=[f"127.0.0.1:{port}"]), lambda b: None)
        with pytest.raises(OSError):
            c.start()
        assert c.sockets == []
    finally:
        a.stop()


def test_start_failure_closes_what_was_opened() -> None:
    holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.bind(("127.0.0.1", 0))
    try:
        port = holder.getsockname()[1]
        cfg = UdpListenerConfig(listen=["127.0.0.1:0", f"127.0.0.1:{port}"])
        listener = UdpListener(cfg, lambda b: None)
        with pytest.raises(OSError):
            listener.start()
        assert listener.sockets == []
    finally:
        holder.close()


def test_injected_clock() -> None:
    got = Collect()
    clock: Callable[[], float] = lambda: 1234.5  # noqa: E731
    cfg = UdpListenerConfig(listen=["127.0.0.1:0"], batch_size=2, batch_timeout=0.01)
    listener = UdpListener(cfg, got, clock=clock)
    with running(listener):
        send(socket.AF_INET, listener.addresses[0], [b"p", b"q"])
        got.wait_for(2)
    assert [a for b in got.batches for a in b.arrival] == [1234.5, 1234.5]


@pytest.mark.skipif(not os.path.exists("/proc/net/udp"), reason="needs Linux /proc/net/udp")
def test_kernel_drops_counts_real_drops() -> None:
    cfg = UdpListenerConfig(listen=["127.0.0.1:0"], rcvbuf=4096)
    listener = UdpListener(cfg, lambda b: None)
    listener.start()  # not run: nothing drains the socket
    try:
        assert listener.kernel_drops() == 0
        send(socket.AF_INET, listener.addresses[0], [b"d" * 1000] * 500)
        time.sleep(0.05)
        assert listener.kernel_drops() > 0
    finally:
        listener.stop()
