"""Integration tests against the BGP lab: BIRD 2 is the router, ExaBGP 5.0.15 the speaker.

Plug-in mode: the lab runs ExaBGP with ``python -m bgp.bridge`` as its process.
Supervised mode: the lab's BIRD alone, ExaBGP started by ``divertor bgp run``.
Waits are on conditions (``bgp-lab wait-route``, the store), never on a clock. Skipped,
with the reason, only if the lab cannot be installed (bird2); ``DIVERTOR_REQUIRE_LAB=1``
(set by .ci/run) turns that into a failure.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from detector.contracts import DesiredRoute, DesiredSet, Route
from divertor import bgp_cmd

ROOT = Path(__file__).resolve().parent.parent
LAB = os.environ.get("BGP_LAB", str(ROOT.parent / "shared" / "labs" / "bgp" / "bgp-lab"))
ENV = {**os.environ, "BGP_LAB_PYTHON": sys.executable, "BGP_LAB_HOLD_TIME": "30"}
THRESHOLDS = """\
version: 1
defaults:
  announce: {mode: prefix, next_hop: {ipv4: 192.0.2.254, ipv6: "2001:db8:ffff::254"},
             communities: ["65000:666"], large_communities: ["65000:1:2"]}
prefixes:
  198.18.0.0/16: {thresholds: {total: {pps: 100k}}}
  203.0.113.0/24: {thresholds: {total: {pps: 100k}}}
  2001:db8:a00::/40: {thresholds: {total: {pps: 100k}}}
"""


def _install() -> str | None:
    """None if the lab works here, else why not."""
    if not os.path.exists(LAB):
        return f"no BGP lab at {LAB} (set BGP_LAB)"
    p = subprocess.run([LAB, "install"], env=ENV, capture_output=True, text=True, timeout=900)
    if p.returncode != 0:
        return f"bird2/ExaBGP cannot be installed: {(p.stderr or p.stdout).strip()[-300:]}"
    return None


@pytest.fixture(scope="session")
def lab_ready() -> None:
    why = _install()
    if why is not None:
        if os.environ.get("DIVERTOR_REQUIRE_LAB"):
            pytest.fail(why)
        pytest.skip(why)


class Lab:
    def __init__(self, d: Path) -> None:
        self.dir = d

    def cmd(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        p = subprocess.run(
            [LAB, *args], env=ENV, cwd=ROOT, capture_output=True, text=True, timeout=timeout
        )
        if check and p.returncode != 0:
            raise AssertionError(f"bgp-lab {' '.join(args)}: {p.stderr}{p.stdout}")
        return p.stdout

    def up(self, *process: str) -> None:
        self.cmd("up", str(self.dir), "--", *process)

    def routes(self) -> dict[str, dict[str, object]]:
        out = self.cmd("routes", str(self.dir))
        rows = [json.loads(line) for line in out.splitlines() if line.strip()]
        assert len(rows) == len({r["prefix"] for r in rows}), f"duplicate routes: {rows}"
        return {str(r["prefix"]): r for r in rows}

    def wait_route(self, prefix: str, gone: bool = False, timeout: float = 15) -> float:
        args = ["wait-route", str(self.dir), prefix, "--timeout", str(timeout)]
        return float(self.cmd(*args, *(["--gone"] if gone else [])).strip())

    def wait_session(self, down: bool = False) -> None:
        self.cmd("wait-session", str(self.dir), *(["--down"] if down else []))

    def birdc(self, *args: str) -> str:
        return self.cmd("birdc", str(self.dir), *args)

    def bird_log(self, prefix: str) -> list[str]:
        """'added'/'removed' lines of BIRD's log for exactly ``prefix``."""
        pat = re.compile(
            r"lab\.ipv[46] > (added|removed)\S* (?:\[\w+\] )?" + re.escape(prefix) + " "
        )
        text = (self.dir / "bird.log").read_text()
        return [m.group(1) for line in text.splitlines() if (m := pat.search(line))]

    def env(self) -> dict[str, str]:
        text = (self.dir / "lab.env").read_text()
        return dict(re.findall(r"^(\w+)=(\S*)$", text, re.M))


def write_config(d: Path, mode: str = "automatic", extra: str = "") -> str:
    d.mkdir(parents=True, exist_ok=True)
    (d / "thresholds.yaml").write_text(THRESHOLDS)
    (d / "divertor.yaml").write_text(
        f"""thresholds: thresholds.yaml
bgp:
  mode: {mode}
  state_dir: state
  local_as: 65001
  router_id: 127.0.0.1
  max_changes_per_hour: 100000
  dampening_hold: 0
  poll_interval: 0.2
{extra}"""
    )
    return str(d / "divertor.yaml")


def route(prefix: str, hop: str, incident: int = 1) -> DesiredRoute:
    r = Route(prefix, hop, ("65000:666", "65000:1"), ("65000:1:2",))
    return DesiredRoute(r, incident, "udp_flood", f"incident {incident}")


V4 = route("198.18.10.0/24", "192.0.2.254")
V6 = route("2001:db8:a00::/48", "2001:db8:ffff::254", 2)


def until(cond: Callable[[], object], timeout: float = 15, what: str = "") -> None:
    """Wait for a condition (polled), not for a time."""
    end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what or cond}")
        time.sleep(0.01)


def store_events(setup: bgp_cmd.Setup, kind: str, event: str) -> list[dict[str, object]]:
    e = setup.engine()
    try:
        return [
            x for _, x in e.store.events(0, 100000) if x["type"] == kind and x.get("event") == event
        ]
    finally:
        e.store.close()


@pytest.fixture
def plugin(lab_ready: None, tmp_path: Path) -> Iterator[tuple[bgp_cmd.Setup, Lab]]:
    """ExaBGP (the lab's) runs our bridge as its process."""
    setup = bgp_cmd.build(write_config(tmp_path / "conf"))
    setup.engine().store.close()  # the store exists before the bridge starts
    lab = Lab(tmp_path / "lab")
    try:
        lab.up(sys.executable, "-m", "bgp.bridge", "--state-dir", setup.state_dir, "--poll", "0.2")
        yield setup, lab
    finally:
        lab.cmd("down", str(lab.dir), check=False)


# --------------------------------------------------------------------------- plug-in mode
def test_announce_and_withdraw_reach_bird_v4_and_v6(plugin: tuple[bgp_cmd.Setup, Lab]) -> None:
    setup, lab = plugin
    e = setup.engine()
    e.set_desired(DesiredSet(time.time(), (V4, V6)))
    lab.wait_route("198.18.10.0/24")
    lab.wait_route("2001:db8:a00::/48")
    got = lab.routes()
    assert got["198.18.10.0/24"]["next_hop"] == "192.0.2.254"
    assert got["198.18.10.0/24"]["communities"] == ["65000:1", "65000:666"]
    assert got["198.18.10.0/24"]["large_communities"] == ["65000:1:2"]
    assert got["198.18.10.0/24"]["as_path"] == [65001]
    assert got["2001:db8:a00::/48"]["next_hop"] == "2001:db8:ffff::254"
    assert got["2001:db8:a00::/48"]["communities"] == ["65000:1", "65000:666"]
    e.set_desired(DesiredSet(time.time(), (V6,)))
    lab.wait_route("198.18.10.0/24", gone=True)
    assert set(lab.routes()) == {"2001:db8:a00::/48"}
    # what ExaBGP acknowledged is recorded by the bridge
    until(lambda: set(setup.engine().status()["announced"]) == {"2001:db8:a00::/48"})


def test_unsafe_prefixes_are_refused_and_never_reach_bird(
    plugin: tuple[bgp_cmd.Setup, Lab],
) -> None:
    setup, lab = plugin
    unsafe = [
        route("198.19.10.0/24", "192.0.2.254"),  # outside the protected networks
        route("198.18.10.128/25", "192.0.2.254"),  # longer than /24
        route("2001:db8:a00::/56", "2001:db8:ffff::254"),  # longer than /48
        route("198.18.11.0/24", "192.0.2.254\nannounce route 0.0.0.0/0 next-hop 192.0.2.1"),
        route("2001:db8:a01::/48", "192.0.2.254"),  # an IPv4 next hop on an IPv6 route
        DesiredRoute(Route("198.18.12.0/24", "192.0.2.254", ("65000:99999",)), 9, None, "x"),
    ]
    events = setup.engine().set_desired(DesiredSet(time.time(), (*unsafe, V4)))
    refused = {str(ev["prefix"]) for ev in events if ev["type"] == "refuse"}
    assert refused == {r.route.prefix for r in unsafe}
    lab.wait_route("198.18.10.0/24")  # the safe one, sent in the same reconciliation
    assert set(lab.routes()) == {"198.18.10.0/24"}
    for r in unsafe:
        assert lab.bird_log(r.route.prefix) == []
    assert lab.bird_log("0.0.0.0/0") == []


def test_exabgp_restart_gets_the_desired_set_back(plugin: tuple[bgp_cmd.Setup, Lab]) -> None:
    setup, lab = plugin
    setup.engine().set_desired(DesiredSet(time.time(), (V4, V6)))
    lab.wait_route("198.18.10.0/24")
    lab.wait_route("2001:db8:a00::/48")
    lab.cmd("restart-exabgp", str(lab.dir))
    lab.wait_route("198.18.10.0/24")
    lab.wait_route("2001:db8:a00::/48")
    assert lab.bird_log("198.18.10.0/24") == ["added", "removed", "added"]


def test_process_killed_respawned_and_reconciled(plugin: tuple[bgp_cmd.Setup, Lab]) -> None:
    setup, lab = plugin
    e = setup.engine()
    e.set_desired(DesiredSet(time.time(), (V4, V6)))
    lab.wait_route("198.18.10.0/24")
    lab.wait_route("2001:db8:a00::/48")
    old = int((lab.dir / "process.pid").read_text())
    lab.cmd("kill-process", str(lab.dir))
    # while no bridge runs, the desired set changes (nobody hears the poke)
    other = route("203.0.113.0/24", "192.0.2.254", 3)
    e.set_desired(DesiredSet(time.time(), (V6, other)))
    lab.wait_route("203.0.113.0/24")
    lab.wait_route("198.18.10.0/24", gone=True)  # listed by ExaBGP, not desired: withdrawn
    assert int((lab.dir / "process.pid").read_text()) != old
    # the route kept across the respawn was never withdrawn nor re-added at BIRD
    assert lab.bird_log("2001:db8:a00::/48") == ["added"]
    resync = store_events(setup, "exabgp", "resync")
    assert any(r["why"] == "process start" and r["extra"] == ["198.18.10.0/24"] for r in resync)


def test_session_flap_gets_the_routes_back(plugin: tuple[bgp_cmd.Setup, Lab]) -> None:
    setup, lab = plugin
    setup.engine().set_desired(DesiredSet(time.time(), (V4, V6)))
    lab.wait_route("198.18.10.0/24")
    lab.birdc("disable", "lab")
    lab.wait_session(down=True)
    lab.wait_route("198.18.10.0/24", gone=True)
    lab.birdc("enable", "lab")
    lab.wait_session()
    lab.wait_route("198.18.10.0/24")
    lab.wait_route("2001:db8:a00::/48")
    until(lambda: len(store_events(setup, "exabgp", "resync")) >= 2, what="resync on session up")
    states = [x["state"] for x in store_events(setup, "exabgp", "session")]
    assert states[-2:] == ["down", "up"]


# --------------------------------------------------------------------------- supervised
@pytest.fixture
def supervised(lab_ready: None, tmp_path: Path) -> Iterator[tuple[str, bgp_cmd.Setup, Lab]]:
    """The lab's BIRD; ExaBGP started and kept by `divertor bgp run`."""
    lab = Lab(tmp_path / "lab")
    setup: bgp_cmd.Setup | None = None
    try:
        lab.cmd("up", str(lab.dir))  # with the lab's own FIFO bridge as the process
        pid = int((lab.dir / "exabgp.pid").read_text())
        os.kill(pid, signal.SIGTERM)  # keep BIRD, drop the lab's own ExaBGP
        lab.wait_session(down=True)
        until(lambda: not _alive(pid), what="the lab's ExaBGP to exit")
        port = lab.env()["LAB_PORT"]
        peers = f"  peers:\n    - {{address: 127.0.0.2, peer_as: 65000, port: {port}}}\n"
        config = write_config(tmp_path / "conf", extra=peers)
        setup = bgp_cmd.build(config)
        yield config, setup, lab
    finally:
        if setup is not None:
            setup.supervisor().stop(time.time())
        lab.cmd("down", str(lab.dir), check=False)


def _alive(pid: int) -> bool:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _engine_process(config: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "divertor.bgp_cmd", "bgp", "run", "--config", config],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def test_engine_kill_9_and_start_again_withdraws_nothing(
    supervised: tuple[str, bgp_cmd.Setup, Lab],
) -> None:
    config, setup, lab = supervised
    setup.engine().set_desired(DesiredSet(time.time(), (V4, V6)))
    engine = _engine_process(config)
    try:
        lab.wait_session()
        lab.wait_route("198.18.10.0/24")
        lab.wait_route("2001:db8:a00::/48")
        exabgp = int((Path(setup.state_dir) / "exabgp.pid").read_text())
        engine.send_signal(signal.SIGKILL)
        engine.wait()
        assert _alive(exabgp)  # ExaBGP outlives the engine
        engine = _engine_process(config)
        until(lambda: store_events(setup, "supervisor", "adopted"), what="ExaBGP adopted")
        # a change after the restart still goes out ...
        setup.engine().divert("203.0.113.0/24", reason="test", who="tester", now=time.time())
        lab.wait_route("203.0.113.0/24")
        # ... and nothing was withdrawn, duplicated or re-announced
        assert lab.bird_log("198.18.10.0/24") == ["added"]
        assert lab.bird_log("2001:db8:a00::/48") == ["added"]
        assert set(lab.routes()) == {"198.18.10.0/24", "2001:db8:a00::/48", "203.0.113.0/24"}
        assert [x["pid"] for x in store_events(setup, "supervisor", "started")] == [exabgp]
        # ExaBGP itself dies: the engine starts it again, the routes come back
        os.kill(exabgp, signal.SIGKILL)
        lab.wait_route("198.18.10.0/24", gone=True)
        lab.wait_route("198.18.10.0/24", timeout=20)
        lab.wait_route("2001:db8:a00::/48")
        lab.wait_route("203.0.113.0/24")
        assert len(store_events(setup, "supervisor", "started")) == 2
    finally:
        engine.send_signal(signal.SIGTERM)
        engine.wait(timeout=10)
