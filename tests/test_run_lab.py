"""`divertor run` end to end: a scenario sent over UDP, the route at BIRD, kill -9, withdraw.

The udp-flood scenario (../shared/testdata/scenarios) is sent by `divertor send` at its own
pace (retimed to now) from 30 s before the attack to 45 s into it; `divertor run` with the
site's thresholds (timing shortened so the test takes two minutes, not twenty) diverts
198.18.10.0/24 through its own ExaBGP to the lab's BIRD. The daemon is killed with SIGKILL
while the route is up and started again: the route stays (BIRD logs one "added"), the
timeline keeps the incident, and the restarted daemon withdraws the route once the attack
is over (the sender stopped) and the hold-down passed. Then the incident exports as JSON
and HTML. Waits are on conditions, never on a clock.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from divertor.store import StoreError, TimelineStore
from tests import shared
from tests.test_bgp_lab import Lab, _alive, lab_ready, until

__all__ = ["lab_ready"]

ROOT = Path(__file__).resolve().parent.parent
FLOOD = shared.SCENARIOS / "udp-flood" / "flows.pcap"
SITE = ROOT / "examples" / "scenarios" / "voip-site.thresholds.yaml"
PREFIX = "198.18.10.0/24"


def short_timing(text: str) -> str:
    """The site's thresholds with the timing of a test: same levels, shorter holds."""
    out = text.replace(
        "timing: {trigger: 10s, clear: 80%, hold_down: 60s, min_divert: 5m, backoff: 2,",
        "timing: {trigger: 5s, clear: 80%, hold_down: 10s, min_divert: 20s, backoff: 2,",
    ).replace(
        "max_divert_hold: 1h, watch: 10m, dampening_reset: 1h}",
        "max_divert_hold: 1h, watch: 30s, dampening_reset: 1h}",
    )
    assert out.count("min_divert: 20s") == 1 and "watch: 30s" in out, "site file changed"
    return out


def write_run_config(d: Path, udp_port: int, extra_bgp: str = "", mode: str = "automatic") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "thresholds.yaml").write_text(short_timing(SITE.read_text()))
    (d / "divertor.yaml").write_text(
        f"""thresholds: thresholds.yaml
collector:
  listen: ["127.0.0.1:{udp_port}"]
  state_file: decoder-state.json
detector: {{window: 48, horizon: 32, under_window: 10}}
bgp:
  mode: {mode}
  state_dir: bgp
  local_as: 65001
  router_id: 127.0.0.1
  poll_interval: 0.2
{extra_bgp}api:
  listen: "127.0.0.1:0"
timeline:
  path: timeline.sqlite
"""
    )
    return d / "divertor.yaml"


def free_udp_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def daemon(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", "divertor.cli", "run", "--config", str(config)],
            cwd=ROOT,
            stdout=fh,
            stderr=subprocess.STDOUT,
        )


def timeline(config: Path, kind: str | None = None) -> list[dict[str, object]]:
    path = config.parent / "timeline.sqlite"
    try:
        with TimelineStore(str(path), readonly=True) as store:
            return [x for x in store.lines() if kind is None or x["type"] == kind]
    except StoreError:  # not there yet, or being created
        return []


def started(config: Path, n: int) -> bool:
    return len([x for x in timeline(config, "daemon") if x.get("event") == "started"]) >= n


@pytest.fixture
def bird(lab_ready: None, tmp_path: Path) -> Iterator[Lab]:
    """The lab's BIRD alone; ExaBGP is started by `divertor run`."""
    lab = Lab(tmp_path / "lab")
    try:
        lab.cmd("up", str(lab.dir))
        pid = int((lab.dir / "exabgp.pid").read_text())
        os.kill(pid, signal.SIGTERM)  # keep BIRD, drop the lab's own ExaBGP
        lab.wait_session(down=True)
        until(lambda: not _alive(pid), what="the lab's ExaBGP to exit")
        yield lab
    finally:
        lab.cmd("down", str(lab.dir), check=False)


@pytest.mark.skipif(not FLOOD.exists(), reason=f"no scenario at {FLOOD}")
def test_scenario_over_udp_route_at_bird_kill_9_withdraw_export(bird: Lab, tmp_path: Path) -> None:
    port = free_udp_port()
    peers = (
        f"  peers:\n    - {{address: 127.0.0.2, peer_as: 65000, port: {bird.env()['LAB_PORT']}}}\n"
    )
    config = write_run_config(tmp_path / "conf", port, peers)
    log = tmp_path / "divertor.log"
    run = daemon(config, log)
    sender: subprocess.Popen[bytes] | None = None
    try:
        until(lambda: started(config, 1), timeout=30, what="divertor run to start")
        bird.wait_session()
        sender = subprocess.Popen(
            [sys.executable, "-m", "divertor.cli", "send", str(FLOOD), "--to",
             f"127.0.0.1:{port}", "--from", "270", "--duration", "75"],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        bird.wait_route(PREFIX, timeout=120)
        route = bird.routes()[PREFIX]
        assert route["next_hop"] == "192.0.2.254" and "65000:666" in route["communities"]
        announced = timeline(config, "announce")
        assert [x["prefix"] for x in announced] == [PREFIX]
        assert announced[0]["vector"] == "udp_flood"
        until(lambda: (config.parent / "timeline.sqlite.incidents.json").exists(), timeout=10)

        # kill -9 while diverted, and start again
        run.send_signal(signal.SIGKILL)
        run.wait()
        assert PREFIX in bird.routes()  # ExaBGP outlives the engine
        run = daemon(config, log)
        until(lambda: started(config, 2), timeout=30, what="divertor run to start again")
        again = [x for x in timeline(config, "daemon") if x.get("event") == "started"][-1]
        assert again["restored"] == [PREFIX], again
        # the incident resumed: still one, still open, not marked interrupted
        with TimelineStore(str(config.parent / "timeline.sqlite"), readonly=True) as store:
            (incident,) = store.incidents()
            assert incident.end_time is None and incident.prefix == PREFIX

        out, _ = sender.communicate(timeout=120)  # the attack stops: no more flows
        assert json.loads(out.splitlines()[-1])["datagrams"] > 500
        bird.wait_route(PREFIX, gone=True, timeout=120)
        assert bird.bird_log(PREFIX) == ["added", "removed"]  # no flap across the restart
        until(
            lambda: any(x.get("to") == "cooling_down" for x in timeline(config, "incident")),
            timeout=30,
        )
        withdraws = timeline(config, "withdraw")
        assert [x["prefix"] for x in withdraws] == [PREFIX]
    finally:
        if sender is not None and sender.poll() is None:
            sender.kill()
        run.send_signal(signal.SIGTERM)
        try:
            run.wait(timeout=30)
        except subprocess.TimeoutExpired:
            run.kill()
        subprocess.run(
            [sys.executable, "-m", "divertor.cli", "bgp", "stop", "--config", str(config)],
            cwd=ROOT, capture_output=True, timeout=60,
        )  # fmt: skip
    stopped = [x for x in timeline(config, "daemon") if x.get("event") == "stopped"]
    assert stopped and "left as they are" in str(stopped[-1]["reason"])

    # the incident exports as JSON and HTML, with the announce and the withdraw
    store = str(config.parent / "timeline.sqlite")
    for fmt in ("json", "html"):
        dest = tmp_path / f"incident.{fmt}"
        p = subprocess.run(
            [sys.executable, "-m", "divertor.cli", "incidents", "export", "1", "--format", fmt,
             "-o", str(dest), "--store", store],
            cwd=ROOT, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert p.returncode == 0, p.stderr
    doc = json.loads((tmp_path / "incident.json").read_text())
    kinds = [x["type"] for x in doc["lines"]]
    assert "announce" in kinds and "withdraw" in kinds, kinds
    assert doc["incident"]["prefix"] == PREFIX
    html = (tmp_path / "incident.html").read_text()
    assert "<svg" in html and PREFIX in html
