"""A small stdlib HTTP server around the sans-I/O ApiHandler (the appliance mounts it).

``POST /allowlist`` with ``Authorization: Bearer TOKEN`` (or ``X-Auth-Token``) and a body of
registrations; ``GET /allowlist`` gives the version and the number of entries. The state is
touched under ``lock``, shared with whoever else drives it (the detection loop).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from allowlist.api import ApiHandler

PATH = "/allowlist"


class _Server6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class ServerThread:
    """A threading HTTP server (IPv4 or IPv6 by the host) served from a thread of its own;
    ``port`` is the bound port, ``stop()`` ends it. The appliance's API uses it too."""

    def __init__(
        self, handler: type[BaseHTTPRequestHandler], host: str, port: int, name: str
    ) -> None:
        cls = _Server6 if ":" in host else ThreadingHTTPServer
        self.httpd = cls((host, port), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name=name, daemon=True)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


class ApiServer(ServerThread):
    def __init__(
        self,
        api: ApiHandler,
        host: str = "127.0.0.1",
        port: int = 0,
        lock: threading.RLock | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.api, self.lock, self.clock = api, lock or threading.RLock(), clock
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, doc: dict[str, Any]) -> None:
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _token(self) -> str | None:
                auth = self.headers.get("Authorization", "")
                if auth.lower().startswith("bearer "):
                    return auth[7:].strip()
                return self.headers.get("X-Auth-Token")

            def do_POST(self) -> None:
                if self.path.rstrip("/") != PATH:
                    self._send(404, {"error": f"no such path; POST {PATH}"})
                    return
                length = self.headers.get("Content-Length")
                if length is None or not length.isdigit():
                    self._send(411, {"error": "Content-Length required"})
                    return
                if int(length) > server.api.max_body:
                    self._send(413, {"error": f"body larger than {server.api.max_body} bytes"})
                    self.close_connection = True
                    return
                body = self.rfile.read(int(length))
                with server.lock:
                    status, doc = server.api.handle_post(body, self._token(), server.clock())
                self._send(status, doc)

            def do_GET(self) -> None:
                if self.path.rstrip("/") != PATH:
                    self._send(404, {"error": "no such path"})
                    return
                if not server.api.authorised(self._token()):
                    self._send(401, {"error": "missing or wrong token"})
                    return
                with server.lock:
                    state = server.api.state
                    doc = {"version": state.version, "entries": len(state)}
                self._send(200, doc)

        super().__init__(Handler, host, port, "allowlist-api")


def start_api_server(
    api: ApiHandler,
    host: str = "127.0.0.1",
    port: int = 0,
    lock: threading.RLock | None = None,
    clock: Callable[[], float] = time.time,
) -> ApiServer:
    """Serve the API in a background thread; ``.port`` is the bound port, ``.stop()`` ends it."""
    server = ApiServer(api, host, port, lock, clock)
    server.thread.start()
    return server
