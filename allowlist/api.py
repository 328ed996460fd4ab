"""The allowlist's HTTP API as a sans-I/O handler: a batch of registrations per POST.

Body: JSON Lines of registrations (``{"op": "add"|"remove", "ip", "ttl", "time"?}``, time
defaults to now), or one JSON array of such objects. Answers:

* 401 ``{"error"}``: missing or wrong token (compared in constant time);
* 400 ``{"error", "refused": [{"line", "reason"}]}``: nothing usable (empty, not UTF-8, too
  large, or every line bad);
* 200 ``{"version", "accepted", "results": {what: count}, "refused": [...]}``: the good lines
  applied, the bad ones refused with their line and reason.

The caller serialises access to the state (allowlist/http.py holds a lock).
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass, field
from typing import Any

from allowlist import addr
from allowlist.feed import Refusal, Registration, apply, parse_lines, parse_object
from allowlist.state import AllowlistState

MAX_BODY = 8 << 20
MAX_SKEW = 300.0  # a registration's own time may be at most this far ahead of now

Response = tuple[int, dict[str, Any]]


@dataclass
class ApiHandler:
    state: AllowlistState
    token: str | None  # None: no token required (only for tests and loopback)
    source: str = "api"
    limits: addr.Limits = field(default_factory=addr.Limits)
    max_body: int = MAX_BODY

    def authorised(self, token: str | None) -> bool:
        if self.token is None:
            return True
        if token is None:
            return False
        return hmac.compare_digest(token.encode(), self.token.encode())

    def handle_post(self, body: bytes, token: str | None, now: float) -> Response:
        if not self.authorised(token):
            return 401, {"error": "missing or wrong token"}
        if len(body) > self.max_body:
            return 400, {"error": f"body larger than {self.max_body} bytes"}
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as e:
            return 400, {"error": f"body is not UTF-8: {e}"}
        regs, bad = self._parse(text, now)
        if not regs:
            return 400, {
                "error": "no valid registration" if bad else "empty body",
                "refused": [r.as_dict() for r in bad],
            }
        results: dict[str, int] = {}
        for reg in regs:
            what = apply(self.state, reg, self.source)
            results[what] = results.get(what, 0) + 1
        self.state.advance(now)
        return 200, {
            "version": self.state.version,
            "accepted": len(regs),
            "results": results,
            "refused": [r.as_dict() for r in bad],
        }

    def _parse(self, text: str, now: float) -> tuple[list[Registration], list[Refusal]]:
        if text.lstrip().startswith("["):
            try:
                items = json.loads(text)
            except ValueError as e:
                return [], [Refusal(1, f"not JSON: {e}")]
            regs: list[Registration] = []
            bad: list[Refusal] = []
            for n, obj in enumerate(items, 1):
                try:
                    regs.append(parse_object(obj, n, now, self.limits))
                except ValueError as e:
                    bad.append(Refusal(n, str(e)))
        else:
            regs, bad = parse_lines(text.splitlines(), now, self.limits)
        ok = []
        for r in regs:
            if r.time > now + MAX_SKEW:
                bad.append(Refusal(r.line, f"time {r.time:.3f} is {r.time - now:.0f} s ahead"))
            else:
                ok.append(r)
        bad.sort(key=lambda r: r.line)
        return ok, bad
