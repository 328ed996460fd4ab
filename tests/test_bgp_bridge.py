"""The bridge process against a fake ExaBGP on its stdin/stdout (no lab needed)."""

from __future__ import annotations

import json
import selectors
import subprocess
import sys
import time
from pathlib import Path

from bgp.engine import Engine
from bgp.planner import SafetyConfig
from bgp.policy import Policy
from bgp.store import Store
from detector.contracts import DesiredRoute, DesiredSet, Route

ROOT = Path(__file__).resolve().parent.parent
PROTECTED = tuple(
    __import__("ipaddress").ip_network(p) for p in ("198.18.0.0/16", "2001:db8:a00::/40")
)


class FakeExaBGP:
    def __init__(self, state_dir: Path) -> None:
        self.p = subprocess.Popen(
            [sys.executable, "-m", "bgp.bridge", "--state-dir", str(state_dir), "--poll", "0.05"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self.p.stdout is not None and self.p.stdin is not None
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.p.stdout, selectors.EVENT_READ)

    def read(self, timeout: float = 10) -> str:
        assert self.p.stdout is not None
        if not self.sel.select(timeout):
            raise AssertionError("the bridge wrote nothing")
        return self.p.stdout.readline().decode().rstrip("\n")

    def send(self, *lines: str) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write("".join(f"{line}\n" for line in lines).encode())
        self.p.stdin.flush()

    def expect(self, line: str, *replies: str, ack: str = "done") -> None:
        assert self.read() == line
        self.send(*replies, ack)

    def close(self) -> int:
        assert self.p.stdin is not None
        self.p.stdin.close()
        return self.p.wait(10)


def engine(d: Path) -> Engine:
    policy = Policy(SafetyConfig(PROTECTED), mode="automatic")
    return Engine(Store(str(d / "bgp.sqlite")), policy, str(d / "bridge.sock"))


def dr(prefix: str, hop: str) -> DesiredRoute:
    return DesiredRoute(Route(prefix, hop, ("65000:666",)), 1, "udp_flood", "test")


A = "announce route 198.18.10.0/24 next-hop 192.0.2.254 community [65000:666]"
UP = json.dumps(
    {
        "exabgp": "5.0.0",
        "type": "state",
        "neighbor": {"address": {"peer": "127.0.0.2"}, "state": "up"},
    }
)


def test_bridge_sends_nothing_until_the_store_exists_then_reconciles(tmp_path: Path) -> None:
    exa = FakeExaBGP(tmp_path)
    try:
        exa.send(UP)  # a session up while the bridge knows nothing: nothing is withdrawn
        e = engine(tmp_path)
        e.set_desired(DesiredSet(time.time(), (dr("198.18.10.0/24", "192.0.2.254"),)))
        exa.expect("enable-ack")  # the very first line, once the store is readable
        listing = {
            "127.0.0.2": {
                "routes": [
                    {"prefix": "198.18.99.0/24", "family": "ipv4 unicast"},
                    {"prefix": "198.18.10.0/24", "family": "ipv4 unicast"},
                ]
            }
        }
        exa.expect("show adj-rib out json", json.dumps(listing))
        exa.expect("withdraw route 198.18.99.0/24")  # beyond the target
        exa.expect(A)  # the target, re-asserted
        exa.expect("show neighbor json", "[]")
        # an operator's diversion: the poke wakes the bridge
        t0 = time.monotonic()
        e.divert(
            "2001:db8:a00::/48", reason="t", who="alice", now=time.time(), next_hop="2001:db8::1"
        )
        exa.expect("announce route 2001:db8:a00::/48 next-hop 2001:db8::1")
        assert time.monotonic() - t0 < 5
        # a command ExaBGP refuses is reported, not retried
        e.divert("198.18.11.0/24", reason="t", who="alice", now=time.time(), next_hop="192.0.2.1")
        exa.expect("announce route 198.18.11.0/24 next-hop 192.0.2.1", ack="error")
        e.withdraw("2001:db8:a00::/48", reason="t", who="alice", now=time.time())
        exa.expect("withdraw route 2001:db8:a00::/48")
    finally:
        assert exa.close() == 0  # stdin closed: the bridge exits
    status = engine(tmp_path).status()
    assert status["announced"] == {"198.18.10.0/24": A}
    kinds = [x["event"] for _, x in engine(tmp_path).store.events() if x["type"] == "exabgp"]
    assert "error" in kinds and "resync" in kinds and kinds[-1] == "eof"


def test_bridge_without_a_store_stays_up_and_quiet(tmp_path: Path) -> None:
    exa = FakeExaBGP(tmp_path / "missing")
    try:
        exa.send(UP, "done", "error")
        assert exa.p.poll() is None
    finally:
        assert exa.close() == 0
    assert not (tmp_path / "missing" / "bgp.sqlite").exists()


def test_bridge_needs_a_state_dir() -> None:
    p = subprocess.run([sys.executable, "-m", "bgp.bridge"], cwd=ROOT, capture_output=True)
    assert p.returncode == 2 and b"--state-dir" in p.stderr
