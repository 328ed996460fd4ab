"""The daemon's HTTP API (localhost by default): status, metrics, incidents, operator actions.

``ApiHandler.handle(method, path, token, body)`` is sans-I/O (the tests call it directly);
``start_api`` mounts it on a stdlib threading HTTP server. Reads need no token (the API
listens on localhost; put it behind a proxy to expose it). Writes (``POST /divert``,
``/withdraw``, ``/approve``, ``/reject``) need ``Authorization: Bearer TOKEN`` with the token
of ``api.token_file``: 401 without it or with a wrong one, 403 when none is configured, 400
with the reason for a bad body. Every write goes through the BGP engine (the same safety
rules as the CLI); its events reach the timeline from the BGP store's log.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import re
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler
from typing import Any, Protocol

from allowlist.http import ServerThread
from bgp.engine import Engine
from collector.sources.udp import parse_listen
from divertor.config import ApiConfig
from divertor.metrics import render_metrics
from divertor.report import export
from divertor.store import StoreError, TimelineStore

log = logging.getLogger(__name__)

MAX_BODY = 64 << 10
Reply = tuple[int, str, bytes]
JSON = "application/json"
_WHO = re.compile(r"^[\w.@+ -]{1,64}$")


class DaemonView(Protocol):
    """What the API needs from the daemon."""

    def status(self) -> dict[str, Any]: ...

    def engine(self) -> Engine: ...

    def timeline_path(self) -> str: ...

    def record(self, lines: list[dict[str, Any]]) -> None: ...


def read_token(path: str | None) -> str | None:
    """The write token from ``api.token_file`` (first line, stripped); None if not set."""
    if path is None:
        return None
    with open(path) as fh:
        token = fh.readline().strip()
    if len(token) < 16:
        raise ValueError(f"{path}: the API token must be at least 16 characters")
    return token


def _json(status: int, doc: Any) -> Reply:
    return status, JSON, (json.dumps(doc, indent=1, default=str) + "\n").encode()


class ApiHandler:
    def __init__(
        self, daemon: DaemonView, token: str | None, clock: Callable[[], float] = time.time
    ) -> None:
        self.daemon, self.token, self.clock = daemon, token, clock

    def handle(self, method: str, path: str, token: str | None, body: bytes) -> Reply:
        path = path.split("?", 1)[0].rstrip("/") or "/"
        try:
            if method == "GET":
                return self._get(path)
            if method == "POST":
                return self._post(path, token, body)
            return _json(405, {"error": f"method {method} not allowed"})
        except Exception as e:  # a bug must not take the daemon down: say so, log it
            log.exception("API %s %s failed", method, path)
            return _json(500, {"error": f"internal error: {e}"})

    # ------------------------------------------------------------------ reads
    def _get(self, path: str) -> Reply:
        if path == "/metrics":
            body, ctype = render_metrics(self.daemon.status(), self._bgp_status())
            return 200, ctype, body
        if path == "/status":
            return _json(200, {**self.daemon.status(), "bgp": self._bgp_status()})
        if path == "/incidents":
            with self._store() as store:
                return _json(200, [i.as_dict() for i in store.incidents()])
        m = re.fullmatch(r"/incidents/(\d+)(?:\.(json|csv|html))?", path)
        if m:
            fmt = m.group(2) or "json"
            ctype = {"json": JSON, "csv": "text/csv", "html": "text/html"}[fmt]
            with self._store() as store:
                try:
                    text = export(store, int(m.group(1)), fmt)
                except KeyError:
                    return _json(404, {"error": f"no incident {m.group(1)}"})
            return 200, ctype + "; charset=utf-8", text.encode()
        return _json(404, {"error": f"no such path {path}", "paths": _PATHS})

    def _store(self) -> TimelineStore:
        try:
            return TimelineStore(self.daemon.timeline_path(), readonly=True)
        except StoreError as e:
            raise RuntimeError(str(e)) from e

    def _bgp_status(self) -> dict[str, Any]:
        try:
            return self.daemon.engine().status()
        except Exception as e:  # the store busy or broken: the rest of the status still shows
            return {"error": str(e)}

    # ------------------------------------------------------------------ writes
    def _post(self, path: str, token: str | None, body: bytes) -> Reply:
        if path not in ("/divert", "/withdraw", "/approve", "/reject"):
            return _json(404, {"error": f"no such path {path}", "paths": _PATHS})
        if self.token is None:
            return _json(403, {"error": "write endpoints are off: no api.token_file configured"})
        if token is None or not hmac.compare_digest(token.encode(), self.token.encode()):
            return _json(401, {"error": "missing or wrong token (Authorization: Bearer ...)"})
        try:
            doc = json.loads(body or b"{}")
        except ValueError as e:
            return _json(400, {"error": f"body is not JSON: {e}"})
        if not isinstance(doc, dict):
            return _json(400, {"error": "body must be a JSON object"})
        try:
            events = self._act(path, doc)
        except ValueError as e:
            return _json(400, {"error": str(e)})
        except LookupError as e:
            return _json(404, {"error": str(e).strip("'\"")})
        refused = [e for e in events if e.get("type") == "refuse"]
        return _json(409 if refused else 200, {"events": events})

    def _act(self, path: str, doc: dict[str, Any]) -> list[dict[str, Any]]:
        unknown = set(doc) - {"prefix", "reason", "who", "id"}
        if unknown:
            raise ValueError(f"unknown field(s): {', '.join(sorted(unknown))}")
        who = _text(doc, "who", "api", _WHO)
        reason = _text(doc, "reason", "", None)
        now = self.clock()
        engine = self.daemon.engine()
        if path in ("/approve", "/reject"):
            ident = doc.get("id")
            if isinstance(ident, bool) or not isinstance(ident, int) or ident < 1:
                raise ValueError("'id': the approval's number (a positive integer)")
            approve = path == "/approve"
            return engine.decide(
                ident, approve=approve, who=who, reason=reason or path[1:] + "d", now=now
            )
        prefix = doc.get("prefix")
        if not isinstance(prefix, str):
            raise ValueError("'prefix': expected a prefix such as 198.18.10.0/24")
        try:
            ipaddress.ip_network(prefix, strict=True)
        except ValueError as e:
            raise ValueError(f"'prefix' {prefix!r}: {e}") from None
        if not reason:
            raise ValueError("'reason' is required: it goes into the timeline")
        if path == "/divert":
            return engine.divert(prefix, reason=reason, who=who, now=now)
        return engine.withdraw(prefix, reason=reason, who=who, now=now)


_PATHS = [
    "GET /metrics",
    "GET /status",
    "GET /incidents",
    "GET /incidents/ID[.json|.csv|.html]",
    "POST /divert",
    "POST /withdraw",
    "POST /approve",
    "POST /reject",
]


def _text(doc: dict[str, Any], key: str, default: str, pattern: re.Pattern[str] | None) -> str:
    value = doc.get(key, default)
    if not isinstance(value, str):
        raise ValueError(f"'{key}': expected a string")
    if len(value) > 500 or any(not c.isprintable() for c in value):
        raise ValueError(f"'{key}': at most 500 printable characters")
    if pattern is not None and value and not pattern.match(value):
        raise ValueError(f"'{key}' {value!r}: letters, digits, '.@+ -' only")
    return value


class ApiServer(ServerThread):
    """The handler on a threading HTTP server; ``port`` is the bound port."""

    def __init__(self, handler: ApiHandler, host: str, port: int) -> None:
        api = handler

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _token(self) -> str | None:
                auth = self.headers.get("Authorization", "")
                return auth[7:].strip() if auth.lower().startswith("bearer ") else None

            def _reply(self, reply: Reply) -> None:
                status, ctype, body = reply
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                self._reply(api.handle("GET", self.path, self._token(), b""))

            def do_POST(self) -> None:
                length = self.headers.get("Content-Length", "0")
                if not length.isdigit() or int(length) > MAX_BODY:
                    self.close_connection = True
                    self._reply(_json(413, {"error": f"body: at most {MAX_BODY} bytes"}))
                    return
                body = self.rfile.read(int(length))
                self._reply(api.handle("POST", self.path, self._token(), body))

        super().__init__(Handler, host, port, "api")


def start_api(daemon: DaemonView, cfg: ApiConfig) -> ApiServer:
    host, port = parse_listen(cfg.listen)
    server = ApiServer(ApiHandler(daemon, read_token(cfg.token_file)), host, port)
    server.thread.start()
    where = f"[{host}]" if ":" in host else host
    log.info(
        "API on http://%s:%d/ (writes %s)", where, server.port, "on" if cfg.token_file else "off"
    )
    return server
