"""The HTTP API (sans-I/O handler and its server) and the pusher, on 127.0.0.1 only."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from allowlist import addr
from allowlist.api import ApiHandler
from allowlist.config import AllowlistConfig, ExportTarget
from allowlist.http import start_api_server
from allowlist.push import Payload, Pusher
from allowlist.service import AllowlistService
from allowlist.state import AllowlistState
from collector.flowbatch import addr_to_pair

NOW = 1_740_000_000.0


def member(st: AllowlistState, ip: str) -> bool:
    hi, lo = addr_to_pair(ip)
    return bool(st.index(np.array([hi], np.uint64), np.array([lo], np.uint64))[0])


def test_handle_post_token_bad_lines_and_results() -> None:
    st = AllowlistState()
    api = ApiHandler(st, token="s3cret")
    body = b"\n".join(
        [
            b'{"op": "add", "ip": "192.0.2.10", "ttl": 600}',
            b'{"op": "add", "ip": "2001:db8::10", "ttl": 600, "time": 1739999990}',
            b'{"op": "add", "ip": "192.0.2.300", "ttl": 600}',
            b'{"op": "add", "ip": "192.0.2.11", "ttl": 600, "time": 1740009999}',
            b'{"op": "remove", "ip": "192.0.2.99"}',
        ]
    )
    assert api.handle_post(body, None, NOW)[0] == 401
    assert api.handle_post(body, "wrong", NOW)[0] == 401
    assert st.version == 0  # nothing applied without the token
    status, doc = api.handle_post(body, "s3cret", NOW)
    assert status == 200
    assert doc["accepted"] == 3 and doc["results"] == {"add": 2, "absent": 1}
    assert [r["line"] for r in doc["refused"]] == [3, 4]
    assert "not an IPv4" in doc["refused"][0]["reason"] and "ahead" in doc["refused"][1]["reason"]
    assert doc["version"] == st.version == 2
    assert member(st, "192.0.2.10") and member(st, "2001:db8::10")
    assert st.holders(addr.parse("192.0.2.10")) == {"api": NOW + 600}
    assert st.holders(addr.parse("2001:db8::10")) == {"api": 1739999990.0 + 600}


def test_handle_post_400s() -> None:
    api = ApiHandler(AllowlistState(), token=None)
    status, doc = api.handle_post(b"", None, NOW)
    assert status == 400 and doc["error"] == "empty body"
    status, doc = api.handle_post(b"\xff\xfe", None, NOW)
    assert status == 400 and "UTF-8" in doc["error"]
    status, doc = api.handle_post(b'{"op": "add", "ip": "x"}\n[', None, NOW)
    assert status == 400 and [r["line"] for r in doc["refused"]] == [1, 2]
    status, doc = api.handle_post(b"x" * (api.max_body + 1), None, NOW)
    assert status == 400 and "larger" in doc["error"]
    # a JSON array works as well
    arr = json.dumps([{"op": "add", "ip": "198.51.100.1", "ttl": 60}, {"op": "nope"}]).encode()
    status, doc = api.handle_post(arr, None, NOW)
    assert status == 200 and doc["accepted"] == 1 and doc["refused"][0]["line"] == 2


def _post(url: str, body: bytes, token: str | None) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_http_server_wraps_the_handler() -> None:
    st = AllowlistState()
    server = start_api_server(ApiHandler(st, "tok"), "127.0.0.1", 0, clock=lambda: NOW)
    try:
        url = f"http://127.0.0.1:{server.port}/allowlist"
        assert _post(url, b'{"op":"add","ip":"203.0.113.5","ttl":60}', None)[0] == 401
        status, doc = _post(url, b'{"op":"add","ip":"203.0.113.5","ttl":60}\nbad', "tok")
        assert status == 200 and doc["accepted"] == 1 and doc["refused"][0]["line"] == 2
        assert member(st, "203.0.113.5")
        assert _post(url.replace("allowlist", "other"), b"{}", "tok")[0] == 404
        req = urllib.request.Request(url, headers={"X-Auth-Token": "tok"})
        with urllib.request.urlopen(req, timeout=5) as r:
            assert json.loads(r.read()) == {"version": 1, "entries": 1}
    finally:
        server.stop()


# --------------------------------------------------------------------------- the pusher
class Receiver:
    """A local scrubbing-side endpoint: answers from a script of statuses, then 200."""

    def __init__(self, script: list[int], delay: float = 0.0) -> None:
        self.script, self.delay = list(script), delay
        self.got: list[tuple[float, str, bytes]] = []
        receiver = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(receiver.delay)
                status = receiver.script.pop(0) if receiver.script else 200
                receiver.got.append((time.monotonic(), self.headers["X-Allowlist-Kind"], body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), H)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/push"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver(request: pytest.FixtureRequest) -> Iterator[Receiver]:
    r = Receiver(*getattr(request, "param", ([],)))
    yield r
    r.close()


@pytest.mark.parametrize("receiver", [([503, 500, 502],)], indirect=True)
def test_push_retries_with_exponential_backoff(receiver: Receiver) -> None:
    p = Pusher(receiver.url, "tok", backoff=0.05, max_backoff=1.0, max_attempts=5).start()
    p.offer(Payload(b'{"x": 1}', 7, True))
    assert p.wait_idle(10)
    p.close()
    assert p.stats.statuses == type(p.stats.statuses)([503, 500, 502, 200])
    assert p.stats.sent == 1 and p.stats.retries == 3 and p.stats.pushed_version == 7
    gaps = np.diff([t for t, _, _ in receiver.got])
    assert gaps[0] >= 0.05 and gaps[1] >= 0.1 and gaps[2] >= 0.2  # doubling waits
    assert not p.wants_full()


@pytest.mark.parametrize("receiver", [([409],)], indirect=True)
def test_a_refused_delta_makes_the_next_push_full(receiver: Receiver) -> None:
    p = Pusher(receiver.url, backoff=0.01, max_attempts=3).start()
    p.offer(Payload(b"full", 1, True))
    assert p.wait_idle(10)
    assert p.stats.statuses[-1] == 409 and p.wants_full()  # a 4xx is not retried
    p.offer(Payload(b"delta", 2, False))  # skipped: the receiver needs a full one
    p.offer(Payload(b"full2", 3, True))
    assert p.wait_idle(10)
    p.close()
    assert [b for _, _, b in receiver.got] == [b"full", b"full2"] and p.stats.skipped == 1
    assert not p.wants_full()


@pytest.mark.parametrize("receiver", [([], 0.5)], indirect=True)
def test_offer_never_blocks_and_the_queue_is_bounded(receiver: Receiver) -> None:
    p = Pusher(receiver.url, queue_size=2, backoff=0.01).start()
    started = time.monotonic()
    results = [p.offer(Payload(b"p%d" % i, i, True)) for i in range(20)]
    assert time.monotonic() - started < 0.2  # the receiver takes 0.5 s per request
    assert not all(results) and p.stats.dropped >= 17
    assert p.queue.qsize() <= 2
    assert p.wait_idle(10)
    p.close()
    assert receiver.got[-1][2] == b"p19"  # the newest one always gets through


def test_push_to_a_dead_endpoint_gives_up_without_blocking() -> None:
    p = Pusher("http://127.0.0.1:9/x", backoff=0.01, max_attempts=3, timeout=0.5).start()
    p.offer(Payload(b"x", 1, True))
    assert p.wait_idle(10)
    p.close()
    assert p.stats.attempts == 3 and p.stats.sent == 0 and p.stats.dropped == 1


# --------------------------------------------------------------------------- the service
def test_service_feed_snapshot_store_export_and_push(tmp_path: Path, receiver: Receiver) -> None:
    feed, snaps = tmp_path / "feed.jsonl", tmp_path / "snap"
    snaps.mkdir()
    cfg = AllowlistConfig(
        store=str(tmp_path / "a.sqlite"),
        feed=str(feed),
        snapshot_dir=str(snaps),
        static=["192.0.2.0/28"],
        exports=[ExportTarget(str(tmp_path / "allow.txt"), "plain")],
        export_every=0.0,
        push_url=receiver.url,
    )
    svc = AllowlistService(cfg, NOW)
    assert svc.pusher is not None
    svc.pusher.backoff = 0.01
    feed.write_text(
        json.dumps({"time": NOW + 1, "op": "add", "ip": "198.51.100.1", "ttl": 60}) + "\n"
        '{"time": 1, "op": "add"}\n{"time": '  # a bad line, then a partial one
    )
    (snaps / "s1.txt").write_text("203.0.113.0/30\nbogus\n")
    done = svc.poll(NOW + 2)
    assert done["applied"] == 1 and done["refused"] == 1 and done["snapshot"]["refused"] == 1
    assert (tmp_path / "allow.txt").read_text().split() == [
        "192.0.2.0/28",
        "198.51.100.1",
        "203.0.113.0/30",
    ]
    with feed.open("a") as fh:  # the partial line completes
        fh.write(f'{NOW + 3}, "op": "add", "ip": "2001:db8::1", "ttl": 300}}\n')
    svc.poll(NOW + 4)
    assert "2001:db8::1" in (tmp_path / "allow.txt").read_text()
    svc.poll(NOW + 62)  # 198.51.100.1 expired
    assert "198.51.100.1" not in (tmp_path / "allow.txt").read_text()
    assert svc.pusher.wait_idle(10)
    kinds = [k for _, k, _ in receiver.got]
    assert kinds[0] == "full" and "delta" in kinds
    last = json.loads(receiver.got[-1][2])
    assert last["remove"] == ["198.51.100.1"] and last["version"] == svc.state.version
    svc.close()
    again = AllowlistService(cfg, NOW + 63)  # restored from the store
    assert again.state.keys() == svc.state.keys() and again.state.version >= svc.state.version
    again.close()


def test_feed_tail_follows_appends_and_rotation(tmp_path: Path) -> None:
    from allowlist.sources import FeedTail, SnapshotDir

    path = tmp_path / "feed.jsonl"
    tail = FeedTail(str(path))
    assert tail.read() == (1, [])  # not there yet
    path.write_bytes(b"a\nb\nc")
    assert tail.read() == (1, [b"a", b"b"])
    with path.open("ab") as fh:
        fh.write(b"c-end\nd\n")
    assert tail.read() == (3, [b"cc-end", b"d"])
    path.rename(tmp_path / "feed.1")  # rotated: a new file, read from its start
    path.write_bytes(b"new\n")
    assert tail.read() == (1, [b"new"])
    snaps = SnapshotDir(str(tmp_path / "snaps"))
    assert snaps.poll() is None
    (tmp_path / "snaps").mkdir()
    (tmp_path / "snaps" / ".part").write_text("1.2.3.4\n")
    (tmp_path / "snaps" / "x.tmp").write_text("1.2.3.4\n")
    assert snaps.poll() is None  # files still being written are not snapshots
    (tmp_path / "snaps" / "s1").write_text("5.6.7.8\n")
    polled = snaps.poll()
    assert polled is not None and polled[1] == "5.6.7.8\n"
    assert snaps.poll() is None  # handed out once
