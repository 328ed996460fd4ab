"""`divertor run` without the BGP lab: the HTTP API (sans-I/O handler and over HTTP), the
metrics, SIGHUP reloads (a bad thresholds file is refused with file:line, the last good stays
in force), incident resume across a restart, and the status command."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bgp.engine import Engine
from detector.contracts import State
from divertor import bgp_cmd
from divertor.api import ApiHandler, read_token
from divertor.daemon import Daemon, RunOptions
from divertor.metrics import render_metrics
from divertor.run_cmd import as_text
from divertor.store import StoreError, TimelineStore
from tests import shared
from tests.test_bgp_lab import until
from tests.test_run_lab import short_timing

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "examples" / "scenarios" / "voip-site.thresholds.yaml"
TOKEN = "s3cret-token-0123456789"


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(d: Path, api_port: int = 0, token: bool = True) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "thresholds.yaml").write_text(short_timing(SITE.read_text()))
    (d / "token").write_text(TOKEN + "\n")
    (d / "divertor.yaml").write_text(
        f"""thresholds: thresholds.yaml
collector:
  listen: ["127.0.0.1:{free_port(socket.SOCK_DGRAM)}"]
bgp:
  mode: automatic
  state_dir: bgp
  max_changes_per_hour: 1000
api:
  listen: "127.0.0.1:{api_port}"
{"  token_file: token" if token else ""}
timeline:
  path: timeline.sqlite
"""
    )
    return d / "divertor.yaml"


class FakeDaemon:
    """The DaemonView of the API, around a real BGP engine and timeline store."""

    def __init__(self, config: Path) -> None:
        self.setup = bgp_cmd.build(str(config))
        self.path = str(config.parent / "timeline.sqlite")
        TimelineStore(self.path).close()
        self.recorded: list[dict[str, Any]] = []

    def status(self) -> dict[str, Any]:
        rates = [[0.0, 0.0, 0.0] for _ in range(20)]
        rates[0] = [8e6, 1000.0, 10.0]
        return {
            "uptime": 5.0,
            "datagrams": 3,
            "exporters": {"192.0.2.1": {"datagrams": 3, "records": 81, "templates": 2,
                                        "errors": {"bad_length": 1}}},
            "prefixes": {"198.18.10.0/24": {"state": "diverted", "incident": 1}},
            "rates": {"198.18.10.0/24": rates},
        }  # fmt: skip

    def engine(self) -> Engine:
        return self.setup.engine()

    def timeline_path(self) -> str:
        return self.path

    def record(self, lines: list[dict[str, Any]]) -> None:
        self.recorded += lines


@pytest.fixture
def api(tmp_path: Path) -> tuple[ApiHandler, FakeDaemon]:
    fake = FakeDaemon(write_config(tmp_path))
    return ApiHandler(fake, read_token(str(tmp_path / "token")), clock=lambda: 1000.0), fake


def body(reply: tuple[int, str, bytes]) -> Any:
    return json.loads(reply[2])


def test_writes_need_the_token(api: tuple[ApiHandler, FakeDaemon]) -> None:
    h, fake = api
    req = json.dumps({"prefix": "198.18.10.0/24", "reason": "test"}).encode()
    for token in (None, "wrong", TOKEN[:-1]):
        status, _, doc = h.handle("POST", "/divert", token, req)
        assert status == 401 and b"token" in doc
    assert not fake.engine().status()["target"]
    reply = h.handle("POST", "/divert", TOKEN, req)
    assert reply[0] == 200
    assert list(fake.engine().status()["target"]) == ["198.18.10.0/24"]
    events = body(reply)["events"]
    assert [e["type"] for e in events] == ["operator", "announce"] and events[0]["who"] == "api"
    with fake.engine().store.read() as tx:  # in the BGP store's log, which the daemon forwards
        assert [e["type"] for _, e in tx.events()] == ["operator", "announce"]
    status, _, _ = h.handle("POST", "/withdraw", TOKEN, req)
    assert status == 200 and not fake.engine().status()["target"]


def test_no_token_configured_means_writes_off(tmp_path: Path) -> None:
    fake = FakeDaemon(write_config(tmp_path, token=False))
    h = ApiHandler(fake, None)
    req = b'{"prefix": "198.18.10.0/24", "reason": "x"}'
    assert h.handle("POST", "/divert", TOKEN, req)[0] == 403


@pytest.mark.parametrize(
    ("path", "req", "status", "why"),
    [
        ("/divert", b"{not json", 400, "not JSON"),
        ("/divert", b"[1]", 400, "JSON object"),
        ("/divert", b'{"prefix": "198.18.10.0/24"}', 400, "'reason' is required"),
        ("/divert", b'{"prefix": "198.18.10.1/24", "reason": "x"}', 400, "host bits"),
        ("/divert", b'{"prefix": 5, "reason": "x"}', 400, "'prefix'"),
        ("/divert", b'{"prefix": "198.18.10.0/24", "reason": "x", "x": 1}', 400, "unknown"),
        ("/divert", b'{"prefix": "198.18.10.0/24", "reason": "x", "who": "a;b"}', 400, "who"),
        ("/divert", b'{"prefix": "10.0.0.0/8", "reason": "x"}', 409, "refuse"),
        ("/approve", b'{"id": "one"}', 400, "'id'"),
        ("/approve", b'{"id": 99}', 404, "99"),
        ("/nowhere", b"{}", 404, "no such path"),
    ],
)
def test_bad_calls_get_a_4xx_with_the_reason(
    api: tuple[ApiHandler, FakeDaemon], path: str, req: bytes, status: int, why: str
) -> None:
    h, fake = api
    got, _, doc = h.handle("POST", path, TOKEN, req)
    assert got == status and why in doc.decode(), doc
    assert not fake.engine().status()["target"]


def test_reads_status_metrics_incidents(api: tuple[ApiHandler, FakeDaemon]) -> None:
    h, _ = api
    status, ctype, text = h.handle("GET", "/metrics", None, b"")
    assert status == 200 and ctype.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(text.decode())}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    assert samples[("divertor_datagrams_total", (("exporter", "192.0.2.1"),))] == 3
    key = ("divertor_decode_errors_total", (("exporter", "192.0.2.1"), ("reason", "bad_length")))
    assert samples[key] == 1
    rate = ("divertor_prefix_rate", (("class", "total"), ("metric", "pps"),
                                     ("prefix", "198.18.10.0/24")))  # fmt: skip
    assert samples[rate] == 1000.0
    assert samples[("divertor_incidents", (("state", "diverted"),))] == 1
    assert samples[("divertor_diversions", ())] == 0
    doc = body(h.handle("GET", "/status", None, b""))
    assert doc["bgp"]["mode"] == "automatic" and doc["datagrams"] == 3
    assert body(h.handle("GET", "/incidents", None, b"")) == []
    assert h.handle("GET", "/incidents/7", None, b"")[0] == 404
    assert h.handle("DELETE", "/status", None, b"")[0] == 405


def test_metrics_render_on_an_empty_status() -> None:
    text, _ = render_metrics({}, {})
    names = {f.name for f in text_string_to_metric_families(text.decode())}
    assert {"divertor_socket_drops", "divertor_overload_dropped_datagrams"} <= names


def test_status_text() -> None:
    doc = {
        "uptime": 7200.0, "mode": "automatic", "config": "/etc/divertor/divertor.yaml",
        "datagrams": 10, "flow_records": 270, "decode_lag": 0.01, "socket_drops": 0,
        "overload_datagrams": 0,
        "prefixes": {"198.18.10.0/24": {"state": "diverted", "incident": 3,
                                        "vector": "udp_flood"}},
        "rates": {"198.18.10.0/24": [[2.4e9, 290000.0, 10.0]]},
        "bgp": {"target": {"198.18.10.0/24": {}}, "announced": {"198.18.10.0/24": "x"},
                "bridge": {"sessions": {"127.0.0.2": "up"}}, "pending": []},
        "exporters": {"192.0.2.1": {"datagrams": 10, "records": 270, "errors": {}}},
    }  # fmt: skip
    text = "\n".join(as_text(doc))
    assert "up 2.0 h" in text and "diverted" in text and "290.0k pps" in text
    assert "127.0.0.2 up" in text and "incident 3 udp_flood" in text


def test_reload_keeps_last_good_and_incidents_resume_after_restart(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    d = Daemon(RunOptions(str(config)))
    d.start()
    try:
        # an incident in progress: the state machine says diverted
        track = d.pipe.incidents.tracks["198.18.10.0/24"]
        track.state, track.incident, track.diverted_at, track.hold = State.DIVERTED, 4, 1.0, 20.0
        d.pipe.incidents.next_incident = 5
        d._desired(d.pipe.incidents.desired(2.0))
        until(lambda: "198.18.10.0/24" in d.engine().status()["target"], what="the target")
        # an operator's action from the CLI (another process, the same BGP store)
        cli = bgp_cmd.build(str(config)).engine()
        cli.divert("198.18.64.0/24", reason="customer call", who="noc-alice", now=2.5)
        # a bad thresholds file: refused, with file:line, and the old one stays
        good = (tmp_path / "thresholds.yaml").read_text()
        (tmp_path / "thresholds.yaml").write_text(good.replace("udp: {pps: 50k}", "udp: {pps: -1}"))
        assert not d.reload(3.0)
        assert d.ts.policies[0].host_thresholds["udp"].pps == 50_000
        assert "thresholds.yaml:" in d.last_reload["reason"]
        # a good one: taken, the incident keeps its state, the rates are kept
        (tmp_path / "thresholds.yaml").write_text(
            good.replace("udp: {pps: 50k}", "udp: {pps: 40k}")
        )
        assert d.reload(4.0)
        assert d.ts.policies[0].host_thresholds["udp"].pps == 40_000
        assert d.pipe.incidents.tracks["198.18.10.0/24"].state is State.DIVERTED
    finally:
        d.stop()
    with TimelineStore(str(tmp_path / "timeline.sqlite"), readonly=True) as store:
        lines = [x for x in store.lines() if x["type"] in ("config", "announce", "operator")]
        configs = [x for x in lines if x["type"] == "config"]
    assert [c["result"] for c in configs] == ["refused", "ok"]
    # what the BGP side recorded reached the timeline, once each, in order
    bgp_lines = [(x["type"], x.get("prefix")) for x in lines if x["type"] != "config"]
    assert bgp_lines == [
        ("announce", "198.18.10.0/24"),
        ("operator", "198.18.64.0/24"),
        ("announce", "198.18.64.0/24"),
    ], bgp_lines
    assert "thresholds.yaml:" in str(configs[0]["reason"])
    # SIGTERM-like stop withdrew nothing; a new start resumes the diversion
    assert "198.18.10.0/24" in bgp_cmd.build(str(config)).engine().status()["target"]
    d2 = Daemon(RunOptions(str(config)))
    d2.start()
    try:
        t = d2.pipe.incidents.tracks["198.18.10.0/24"]
        assert (t.state, t.incident) == (State.DIVERTED, 4)
        # not judged on the empty rates of the restart: held a horizon beyond now
        assert t.hold >= d2.started - t.diverted_at + d2.cfg.detector.horizon
        assert d2.pipe.incidents.next_incident >= 5
    finally:
        d2.stop()


def _get(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return dict(json.load(resp))


def test_sighup_with_a_bad_thresholds_file(tmp_path: Path) -> None:
    """The real process: SIGHUP with a broken file is refused with file:line in the log and
    the timeline; the old thresholds stay in force; the HTTP API says so; 401 over HTTP."""
    config = write_config(tmp_path, api_port=0)  # the bound port is in the log
    log = tmp_path / "run.log"
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "divertor.cli", "run", "--config", str(config)],
            cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        until(lambda: "API on http://" in log.read_text(), timeout=30, what="the API")
        port = re.search(r"API on http://127\.0\.0\.1:(\d+)/", log.read_text())
        assert port is not None
        url = f"http://127.0.0.1:{port.group(1)}"

        def up() -> bool:
            try:
                return bool(_get(url + "/status"))
            except (urllib.error.URLError, OSError):
                return False

        until(up, timeout=30, what="the API")
        good = (tmp_path / "thresholds.yaml").read_text()
        lines = good.splitlines()
        bad_line = next(i for i, x in enumerate(lines) if "udp: {pps: 50k}" in x) + 1
        (tmp_path / "thresholds.yaml").write_text(good.replace("udp: {pps: 50k}", "udp: {ppz: 1}"))
        proc.send_signal(signal.SIGHUP)
        until(lambda: _get(url + "/status")["reloads_refused"] == 1, what="the refusal")
        status = _get(url + "/status")
        assert f"thresholds.yaml:{bad_line}" in status["last_reload"]["reason"]
        assert status["reloads_ok"] == 0
        req = urllib.request.Request(
            url + "/divert", data=b'{"prefix": "198.18.10.0/24", "reason": "x"}', method="POST"
        )
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=10)
        assert e.value.code == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert proc.returncode == 0
    text = log.read_text()
    assert f"thresholds.yaml:{bad_line}" in text and "last good configuration stays" in text

    def refused() -> list[dict[str, Any]]:
        try:
            with TimelineStore(str(tmp_path / "timeline.sqlite"), readonly=True) as store:
                return [x for x in store.lines() if x["type"] == "config"]
        except StoreError:
            return []

    (line,) = refused()
    assert line["result"] == "refused" and f"thresholds.yaml:{bad_line}" in str(line["reason"])


def test_incidents_read_the_store_of_the_configuration(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from divertor import incidents_cmd

    config = write_config(tmp_path)
    monkeypatch.delenv("DIVERTOR_STORE", raising=False)
    monkeypatch.setenv("DIVERTOR_CONFIG", str(config))
    assert incidents_cmd.default_store() == str(tmp_path / "timeline.sqlite")
    monkeypatch.setenv("DIVERTOR_STORE", "/x/y.db")
    assert incidents_cmd.default_store(str(config)) == "/x/y.db"
    monkeypatch.delenv("DIVERTOR_STORE")
    monkeypatch.setenv("DIVERTOR_CONFIG", str(tmp_path / "missing.yaml"))
    assert incidents_cmd.default_store() == incidents_cmd.DEFAULT_STORE


def test_exporters_appear_go_silent_and_come_back() -> None:
    from divertor.watch import ExporterWatch

    w = ExporterWatch(silent_after=120.0)
    events = lambda lines: [(x["exporter"], x["event"]) for x in lines]  # noqa: E731
    assert events(w.check({"192.0.2.1": 5}, 1000.0)) == [("192.0.2.1", "appeared")]
    assert w.check({"192.0.2.1": 9}, 1010.0) == []
    assert w.check({"192.0.2.1": 9}, 1129.0) == []  # 119 s quiet
    silent = w.check({"192.0.2.1": 9, "192.0.2.2": 1}, 1130.0)
    assert events(silent) == [("192.0.2.1", "silent"), ("192.0.2.2", "appeared")]
    assert silent[0]["reason"] == "no datagram for 120s"
    assert w.check({"192.0.2.1": 9, "192.0.2.2": 1}, 1200.0) == []  # said once
    back = w.check({"192.0.2.1": 10, "192.0.2.2": 1}, 1300.0)
    assert events(back) == [("192.0.2.1", "back"), ("192.0.2.2", "silent")]
    assert w.allowlist(7, 100, 1.0)[0]["version"] == 7 and w.allowlist(7, 100, 2.0) == []


FLOOD = shared.SCENARIOS / "udp-flood" / "flows.pcap"


@pytest.mark.skipif(not FLOOD.exists(), reason="no shared scenarios")
def test_daemon_records_the_rate_history(tmp_path: Path) -> None:
    """history.path set: the settled rates of the live pipeline reach the history store
    (on the writer's thread), and a baseline refresh line reaches the timeline."""
    from divertor import history_cmd
    from divertor.replay_cmd import bin_batches

    config = write_config(tmp_path)
    with open(config, "a") as fh:
        fh.write("history:\n  path: history\n  refresh_every: 60\n")
    d = Daemon(RunOptions(str(config)))
    d.start()
    try:
        first = None
        for batch in bin_batches(str(FLOOD), 1.0):
            first = first or float(batch.arrival[0])
            d.step(batch, float(batch.arrival[-1]))
            if batch.arrival[-1] - first > 240:
                break
        d.pipe.flush()
        d._history_call(lambda h: d.record(h.poll(first + 240)))
    finally:
        d.stop()
    store = history_cmd.open_store(str(tmp_path / "history"))
    span = store.span("s1")
    assert span is not None and span[1] - span[0] >= 120, span
    assert "198.18.10.0/24" in store.prefixes()
    with TimelineStore(str(tmp_path / "timeline.sqlite"), readonly=True) as ts:
        assert any(x["type"] == "baselines" for x in ts.lines())


def test_no_body_gets_a_5xx(api: tuple[ApiHandler, FakeDaemon]) -> None:
    """Hypothesis: whatever the body and path, the API answers 2xx/4xx, never 5xx, and an
    answer other than 200 changed nothing."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    h, fake = api
    scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=40))
    values = st.recursive(scalars, lambda c: st.lists(c, max_size=3), max_leaves=5)
    docs = st.dictionaries(
        st.sampled_from(["prefix", "reason", "who", "id", "x"]), values, max_size=4
    ).map(lambda d: json.dumps(d).encode())
    bodies = st.one_of(docs, st.binary(max_size=60))
    paths = st.sampled_from(["/divert", "/withdraw", "/approve", "/reject", "/x"])

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(path=paths, body=bodies)
    def check(path: str, body: bytes) -> None:
        status, _, doc = h.handle("POST", path, TOKEN, body)
        assert 200 <= status < 500, (status, doc)
        if status != 200:
            assert not fake.engine().status()["target"]

    check()
