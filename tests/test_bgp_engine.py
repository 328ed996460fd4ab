"""The engine on the persisted store: modes, approvals, manual actions, persistence."""

from __future__ import annotations

import ipaddress
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bgp.engine import Engine
from bgp.planner import SafetyConfig
from bgp.policy import Policy
from bgp.store import Store
from detector.contracts import DesiredRoute, DesiredSet, Route

net = ipaddress.ip_network
PROTECTED = (net("198.18.0.0/16"), net("203.0.113.0/24"), net("2001:db8:a00::/40"))
DEFAULTS = (
    (net("2001:db8:a00::/40"), "2001:db8:ffff::254", ("65000:666",), ()),
    (net("198.18.0.0/16"), "192.0.2.254", ("65000:666",), ("65000:1:2",)),
)


def make_policy(mode: str = "automatic", **safety: float) -> Policy:
    return Policy(
        SafetyConfig(PROTECTED, **safety),  # type: ignore[arg-type]
        mode=mode,
        next_hop_v6="2001:db8:ffff::1",
        defaults=DEFAULTS,
    )


def engine(tmp_path: Path, mode: str = "automatic", **safety: float) -> Engine:
    return Engine(
        Store(str(tmp_path / "bgp.sqlite")),
        make_policy(mode, **safety),
        str(tmp_path / "bridge.sock"),
    )


def dr(
    prefix: str,
    incident: int = 1,
    hop: str | None = "192.0.2.254",
    comms: tuple[str, ...] = ("65000:666",),
) -> DesiredRoute:
    return DesiredRoute(Route(prefix, hop, comms), incident, "udp_flood", f"incident {incident}")


def ds(t: float, *routes: DesiredRoute) -> DesiredSet:
    return DesiredSet(t, routes)


def kinds(events: list[dict[str, object]]) -> list[tuple[object, object]]:
    return [(e["type"], e["prefix"]) for e in events]


def test_automatic_writes_the_target_and_pokes_the_bridge(tmp_path: Path) -> None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "bridge.sock"))
    sock.settimeout(5)
    e = engine(tmp_path)
    events = e.set_desired(ds(10, dr("198.18.10.0/24"), dr("2001:db8:a00::/48", 2, None)))
    assert kinds(events) == [("announce", "198.18.10.0/24"), ("announce", "2001:db8:a00::/48")]
    assert sock.recv(64) == b"reconcile"
    assert e.store.target() == {
        "198.18.10.0/24": "announce route 198.18.10.0/24 next-hop 192.0.2.254"
        " community [65000:666]",
        "2001:db8:a00::/48": "announce route 2001:db8:a00::/48 next-hop 2001:db8:ffff::1"
        " community [65000:666]",
    }
    assert e.store.target_version() == 1
    assert e.set_desired(ds(11, dr("198.18.10.0/24"), dr("2001:db8:a00::/48", 2, None))) == []
    assert e.store.target_version() == 1
    assert kinds(e.set_desired(ds(12))) == [
        ("withdraw", "198.18.10.0/24"),
        ("withdraw", "2001:db8:a00::/48"),
    ]
    assert e.store.target() == {}
    recorded = [ev for _, ev in e.store.events()]
    assert [x["type"] for x in recorded] == ["announce"] * 2 + ["withdraw"] * 2


def test_unsafe_routes_are_refused_and_never_reach_the_target(tmp_path: Path) -> None:
    e = engine(tmp_path)
    events = e.set_desired(
        ds(
            0,
            dr("198.19.0.0/24"),  # outside
            dr("198.18.10.0/25"),  # too long
            dr("198.18.11.0/24", comms=("65000:99999",)),  # community out of range
            dr("198.18.12.0/24", hop="192.0.2.1\nannounce route 0.0.0.0/0"),
            dr("2001:db8:a00::/49"),
            dr("198.18.13.0/24"),  # fine
        )
    )
    refused = {ev["prefix"]: ev["reason"] for ev in events if ev["type"] == "refuse"}
    assert set(refused) == {
        "198.19.0.0/24",
        "198.18.10.0/25",
        "198.18.11.0/24",
        "198.18.12.0/24",
        "2001:db8:a00::/49",
    }
    assert "0-65535" in str(refused["198.18.11.0/24"])
    assert set(e.store.target()) == {"198.18.13.0/24"}


def test_dry_run_records_and_sends_nothing(tmp_path: Path) -> None:
    e = engine(tmp_path, mode="dry-run")
    events = e.set_desired(ds(0, dr("198.18.10.0/24")))
    assert kinds(events) == [("announce", "198.18.10.0/24")] and events[0]["dry_run"] is True
    assert e.store.target() == {} and e.store.target_version() == 0
    assert e.status()["dry_run_announced"] == ["198.18.10.0/24"]
    # the same database, now automatic: the dry-run plan did not count
    auto = Engine(e.store, make_policy("automatic"))
    assert kinds(auto.set_desired(ds(1, dr("198.18.10.0/24")))) == [("announce", "198.18.10.0/24")]


def test_manual_approval(tmp_path: Path) -> None:
    e = engine(tmp_path, mode="manual-approval")
    events = e.set_desired(ds(0, dr("198.18.10.0/24", 1), dr("198.18.11.0/24", 2)))
    assert [x["type"] for x in events] == ["approval", "approval"]
    ids = {x["prefix"]: x["id"] for x in events}
    assert "divertor divert approve" in str(events[0]["reason"])
    assert e.store.target() == {}
    assert e.set_desired(ds(1, dr("198.18.10.0/24", 1), dr("198.18.11.0/24", 2))) == []
    events = e.decide(int(ids["198.18.10.0/24"]), approve=True, who="alice", reason="ok", now=2)
    assert kinds(events) == [("approved", "198.18.10.0/24"), ("announce", "198.18.10.0/24")]
    assert events[0]["who"] == "alice"
    assert set(e.store.target()) == {"198.18.10.0/24"}
    events = e.decide(int(ids["198.18.11.0/24"]), approve=False, who="bob", reason="no", now=3)
    assert kinds(events) == [("rejected", "198.18.11.0/24")]
    with pytest.raises(LookupError):
        e.decide(int(ids["198.18.11.0/24"]), approve=True, who="bob", reason="", now=3)
    # withdraws need no approval; a pending request that leaves the desired set expires
    events = e.set_desired(ds(4, dr("198.18.12.0/24", 3)))
    assert kinds(events) == [("approval", "198.18.12.0/24"), ("withdraw", "198.18.10.0/24")]
    assert kinds(e.set_desired(ds(5))) == [("expired", "198.18.12.0/24")]
    assert e.status()["pending"] == []


def test_manual_diversions_are_never_withdrawn_automatically(tmp_path: Path) -> None:
    e = engine(tmp_path)
    events = e.divert("198.18.20.0/24", reason="customer call", who="alice", now=0)
    assert kinds(events) == [("operator", "198.18.20.0/24"), ("announce", "198.18.20.0/24")]
    assert events[0]["who"] == "alice" and events[0]["reason"] == "customer call"
    assert events[1]["manual"] is True and events[1]["who"] == "alice"
    # attributes from the covering protected prefix
    assert e.store.target()["198.18.20.0/24"] == (
        "announce route 198.18.20.0/24 next-hop 192.0.2.254 community [65000:666]"
        " large-community [65000:1:2]"
    )
    assert e.set_desired(ds(1)) == []  # an empty desired set does not touch it
    assert e.set_desired(ds(2, dr("198.18.20.0/24"))) == []  # manual wins; no duplicate
    events = e.withdraw("198.18.20.0/24", reason="over", who="bob", now=3)
    # the detector still wants it: it comes back as the automatic diversion, after the
    # operator's withdraw? No: the operator's withdraw suppresses it while it is desired
    assert kinds(events) == [("operator", "198.18.20.0/24"), ("withdraw", "198.18.20.0/24")]
    assert events[1]["who"] == "bob"
    assert e.store.target() == {}
    assert e.set_desired(ds(4, dr("198.18.20.0/24"))) == []  # still suppressed
    assert e.set_desired(ds(5)) == []  # the incident ends: the suppression too
    assert kinds(e.set_desired(ds(6, dr("198.18.20.0/24", 7)))) == [("announce", "198.18.20.0/24")]


def test_refused_manual_diversion_is_not_kept(tmp_path: Path) -> None:
    e = engine(tmp_path, max_diversions=1)
    e.divert("198.18.1.0/24", reason="a", who="alice", now=0)
    for _ in range(2):  # refused, and refused again (reported each time)
        events = e.divert("198.18.2.0/24", reason="b", who="alice", now=1)
        assert kinds(events)[-1] == ("refuse", "198.18.2.0/24")
        assert "max_diversions" in str(events[-1]["reason"])
    assert set(e.store.manual()) == {"198.18.1.0/24"}
    assert e.divert("10.0.0.0/8", reason="x", who="eve", now=2)[-1]["reason"] == (
        "outside every protected network"
    )
    assert e.divert("junk", reason="x", who="eve", now=2)[-1]["reason"] == "not a prefix"
    assert e.withdraw("198.18.9.0/24", reason="x", who="eve", now=2)[-1]["type"] == "note"


def test_dampening_holds_a_flapping_prefix(tmp_path: Path) -> None:
    e = engine(tmp_path, flap_hold=60, flap_max_hold=3600, flap_reset=3600)
    e.set_desired(ds(0, dr("198.18.10.0/24")))
    assert kinds(e.set_desired(ds(10))) == [("withdraw", "198.18.10.0/24")]  # no flap yet
    events = e.set_desired(ds(20, dr("198.18.10.0/24")))
    assert "held at least 60s" in str(events[0]["reason"])
    events = e.set_desired(ds(30))
    assert kinds(events) == [("hold", "198.18.10.0/24")]
    assert set(e.store.target()) == {"198.18.10.0/24"}
    assert e.tick(50) == []
    assert kinds(e.tick(80)) == [("withdraw", "198.18.10.0/24")]
    # the second flap: held twice as long
    assert "held at least 120s" in str(e.set_desired(ds(90, dr("198.18.10.0/24")))[0]["reason"])
    # an operator's withdraw is not held
    events = e.withdraw("198.18.10.0/24", reason="enough", who="alice", now=100)
    assert kinds(events)[-1] == ("withdraw", "198.18.10.0/24")


def test_restart_withdraws_nothing(tmp_path: Path) -> None:
    e = engine(tmp_path)
    e.set_desired(ds(0, dr("198.18.10.0/24"), dr("198.18.11.0/24", 2)))
    e.divert("198.18.12.0/24", reason="r", who="alice", now=1)
    e.store.close()
    again = engine(tmp_path)
    assert set(again.store.target()) == {"198.18.10.0/24", "198.18.11.0/24", "198.18.12.0/24"}
    assert again.tick(2) == []
    assert again.set_desired(ds(3, dr("198.18.10.0/24"), dr("198.18.11.0/24", 2))) == []


def test_concurrent_writers_lose_nothing(tmp_path: Path) -> None:
    engine(tmp_path).store.close()
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            e = engine(tmp_path)
            for i in range(10):
                e.divert(f"198.18.{n * 10 + i}.0/24", reason="load", who=f"w{n}", now=float(i))
            e.store.close()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(engine(tmp_path).store.target()) == 30


KILLER = """
import sys, time
from tests.test_bgp_engine import engine, ds, dr
from pathlib import Path
e = engine(Path(sys.argv[1]), max_changes_per_hour=10**6)
print("ready", flush=True)
t = 0.0
while True:
    t += 1
    n = int(t) % 40
    e.set_desired(ds(t, *[dr(f"198.18.{i}.0/24", i + 1) for i in range(n)]))
"""


def test_kill_9_leaves_a_consistent_store(tmp_path: Path) -> None:
    root = str(Path(__file__).resolve().parent.parent)
    p = subprocess.Popen(
        [sys.executable, "-c", KILLER, str(tmp_path)], cwd=root, stdout=subprocess.PIPE, text=True
    )
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    # let it commit some transactions (wait on the database, not on a clock)
    store = Store(str(tmp_path / "bgp.sqlite"))
    while store.target_version() < 15:
        with store.read():
            pass
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    e = engine(tmp_path, max_changes_per_hour=10**6)
    state = e.store.planner_state(False)
    planned = {d["prefix"] for d in state["announced"]}
    assert planned == set(e.store.target())  # target and planner committed together
    assert e.tick(1e6) == []  # and the next start plans from there: nothing to undo


# --------------------------------------------------------------------------- property
_LINE = re.compile(r"\A[\x21-\x7e]+( [\x21-\x7e]+)*\Z")


@st.composite
def scenario(draw: st.DrawFn) -> tuple[Policy, list[DesiredSet]]:
    max4 = draw(st.integers(16, 32))
    max6 = draw(st.integers(32, 64))
    policy = Policy(
        SafetyConfig(
            PROTECTED,
            max_length_v4=max4,
            max_length_v6=max6,
            max_diversions=draw(st.integers(0, 8)),
            max_changes_per_hour=draw(st.integers(0, 20)),
            flap_hold=draw(st.sampled_from([0.0, 60.0])),
        ),
        mode="automatic",
        next_hop_v4=draw(st.sampled_from([None, "self", "192.0.2.9"])),
        next_hop_v6=draw(st.sampled_from([None, "2001:db8::9"])),
    )
    hosts = st.integers(0, 2**32 - 1)
    prefix = st.one_of(
        st.builds(
            lambda v, n: str(ipaddress.IPv4Network((v >> (32 - n) << (32 - n), n))),
            hosts,
            st.integers(8, 32),
        ),
        st.builds(
            lambda v, n: str(
                ipaddress.IPv4Network(
                    (0xC6120000 | v % 65536 >> (32 - n) << (32 - n), n), strict=False
                )
            ),
            hosts,
            st.integers(16, 32),
        ),
        st.builds(
            lambda v, n: str(
                ipaddress.IPv6Network(((0x20010DB80A << 88 | v) >> (128 - n) << (128 - n), n))
            ),
            hosts,
            st.integers(32, 64),
        ),
        st.text(max_size=12),
    )
    attr = st.one_of(st.text(max_size=8), st.sampled_from(["65000:666", "65535:0", "1:2:3"]))
    route = st.builds(
        DesiredRoute,
        st.builds(
            Route,
            prefix,
            st.one_of(
                st.none(),
                st.sampled_from(["192.0.2.1", "2001:db8::1", "self"]),
                st.text(max_size=6),
            ),
            st.lists(attr, max_size=3).map(tuple),
            st.lists(attr, max_size=2).map(tuple),
        ),
        st.integers(1, 5),
        st.just("udp_flood"),
        st.text(max_size=10),
    )
    sets, t = [], 0.0
    for _ in range(draw(st.integers(1, 5))):
        t += draw(st.sampled_from([1.0, 100.0, 3600.0]))
        sets.append(DesiredSet(t, tuple(draw(st.lists(route, max_size=6)))))
    return policy, sets


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(scenario())
def test_property_nothing_outside_the_bounds_reaches_the_target(
    tmp_path: Path, case: tuple[Policy, list[DesiredSet]]
) -> None:
    policy, sets = case
    path = tmp_path / f"p{abs(hash(repr(case))) % 10**9}.sqlite"
    e = Engine(Store(str(path)), policy)
    s = policy.safety
    for d in sets:
        e.set_desired(d)
        target = e.store.target()
        assert len(target) <= s.max_diversions
        for prefix, line in target.items():
            assert _LINE.match(line) and line.startswith(f"announce route {prefix} next-hop ")
            n = ipaddress.ip_network(prefix)
            assert any(n.version == p.version and n.subnet_of(p) for p in PROTECTED)  # type: ignore[arg-type]
            assert n.prefixlen <= (s.max_length_v4 if n.version == 4 else s.max_length_v6)
            hop = line.split()[4]
            assert (hop == "self" and n.version == 4) or ipaddress.ip_address(
                hop
            ).version == n.version
            for group in re.findall(r"(?<!large-)community \[([^\]]*)\]", line):
                for c in group.split():
                    assert c.count(":") == 1
                    assert all(0 <= int(x) <= 65535 for x in c.split(":"))
            for group in re.findall(r"large-community \[([^\]]*)\]", line):
                for c in group.split():
                    assert c.count(":") == 2
                    assert all(0 <= int(x) <= 2**32 - 1 for x in c.split(":"))
    e.store.close()
    path.unlink()
