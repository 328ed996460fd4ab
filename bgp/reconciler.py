"""Sans-I/O reconciliation of ExaBGP's adj-rib-out to the target set.

A state machine fed with what happens (the process started, a line from ExaBGP: an ack,
a reply or a JSON event, the target changed, time passed) and returning what to do
(lines to write to ExaBGP, timeline events, acknowledged routes to record). It never reads
a clock: ``now`` is an argument. The rules (labs/bgp/README.md, measured on ExaBGP 5.0.15):

* one command at a time: the next goes out only once ExaBGP answered ``done``/``error``;
* on every start of the process (first start, respawn after a crash, ExaBGP restart) and on
  every session ``up`` (a *resync*): ``show adj-rib out json``, withdraw whatever it lists
  beyond the target, then announce the whole target again (listing first keeps the routes
  out within the target, so within max_diversions, all along);
* nothing is sent before the target is known: a bridge that cannot read its store yet
  withdraws nothing;
* a command answered ``error`` is not retried until the target changes or the next resync;
* an ack that does not come is reported (once per command) and waited for: ExaBGP answers
  in order, so sending on would misattribute the acks.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from bgp import commands

UNKNOWN = ""  # listed by ExaBGP, attributes unknown: re-announced if it is in the target
WITHDRAW = "withdraw"
_LISTED = re.compile(r"\b(?:ipv4|ipv6) unicast ([0-9a-fA-F.:]+/[0-9]{1,3})\b")
_TEXT_STATE = re.compile(r"^neighbor (\S+) (connected|up|down)\b")


@dataclass(frozen=True, slots=True)
class Write:
    line: str


@dataclass(frozen=True, slots=True)
class Event:
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Acked:
    """ExaBGP acknowledged: ``command`` is in its adj-rib-out (None: withdrawn)."""

    prefix: str
    command: str | None


@dataclass(frozen=True, slots=True)
class Listed:
    """ExaBGP's whole adj-rib-out after a resync (prefix -> command, "" if unknown)."""

    rib: dict[str, str]


Action = Write | Event | Acked | Listed


@dataclass(slots=True)
class _Inflight:
    kind: str  # enable-ack | announce | withdraw | show | neighbors
    line: str
    sent: float
    prefix: str = ""
    replies: list[str] = field(default_factory=list)
    overdue: bool = False


@dataclass(slots=True)
class _Resync:
    why: str
    started: float


class Reconciler:
    def __init__(self, ack_timeout: float = 10.0, enable_ack: bool = True) -> None:
        self.ack_timeout = ack_timeout
        self.target: dict[str, str] | None = None
        self.rib: dict[str, str] = {}
        self.failed: dict[str, str] = {}
        self.sessions: dict[str, str] = {}
        self.inflight: _Inflight | None = None
        self._resync: _Resync | None = None
        self._resync_wanted: str | None = None
        self._ask_neighbors = False
        self._enable_ack = enable_ack
        self._withdraws: dict[str, None] = {}  # ordered sets of the pending changes
        self._announces: dict[str, None] = {}

    # ------------------------------------------------------------------ inputs
    def started(self, now: float) -> list[Action]:
        """The process (re)started: ExaBGP's state is unknown."""
        self._resync_wanted = "process start"
        self._ask_neighbors = True
        return [self._event(now, "process-start"), *self._pump(now)]

    def desired(self, target: dict[str, str], now: float) -> list[Action]:
        """The target set: prefix -> its validated announce command. An entry that is not
        one (a damaged store) is left out and reported, never sent."""
        out: list[Action] = []
        target = dict(target)
        for prefix, line in list(target.items()):
            try:
                commands.checked(line)
                if not line.startswith(f"announce route {prefix} "):
                    raise commands.CommandError(f"{line!r} announces something else")
            except commands.CommandError as e:
                del target[prefix]
                out.append(self._event(now, "bad-target", prefix=prefix, reason=str(e)))
        old = self.target or {}
        changed = sorted(p for p in set(old) | set(target) if old.get(p) != target.get(p))
        self.target = target
        for prefix in changed:
            self.failed.pop(prefix, None)
            self._classify(prefix)
        return out + self._pump(now)

    def line(self, text: str, now: float) -> list[Action]:
        """One line ExaBGP wrote to the process."""
        text = text.strip()
        if not text:
            return []
        if text in ("done", "error"):
            return self._ack(text, now)
        message: Any = None
        if text.startswith(("{", "[")):
            try:
                message = json.loads(text)
            except ValueError:
                message = None
        if isinstance(message, dict) and "exabgp" in message and "type" in message:
            return self._message(message, now)
        m = _TEXT_STATE.match(text)
        if m and message is None:
            return self._session(m.group(1), m.group(2), now)
        if text.startswith("shutdown") and message is None:
            return [self._event(now, "shutdown")]
        if self.inflight is not None and self.inflight.kind in ("show", "neighbors"):
            self.inflight.replies.append(text)
        return []

    def tick(self, now: float) -> list[Action]:
        f = self.inflight
        if f is not None and not f.overdue and now - f.sent > self.ack_timeout:
            f.overdue = True
            return [self._event(now, "ack-overdue", command=f.line, waited=round(now - f.sent, 3))]
        return self._pump(now)

    @property
    def idle(self) -> bool:
        return self.inflight is None and self._resync is None and not self._work()

    # ------------------------------------------------------------------ ExaBGP's answers
    def _ack(self, word: str, now: float) -> list[Action]:
        f, self.inflight = self.inflight, None
        if f is None:
            return [self._event(now, "unexpected-ack", ack=word)]
        out: list[Action] = []
        ms = round((now - f.sent) * 1000, 3)
        if word == "error" and f.kind in ("announce", "withdraw", "show"):
            out.append(self._event(now, "error", prefix=f.prefix or None, command=f.line))
        if f.kind == "announce":
            if word == "done":
                self.rib[f.prefix] = f.line
                self._classify(f.prefix)
                out += [
                    Acked(f.prefix, f.line),
                    self._event(now, "done", prefix=f.prefix, command=f.line, ms=ms),
                ]
            else:
                self.failed[f.prefix] = f.line
                self._classify(f.prefix)
        elif f.kind == "withdraw":
            if word == "done":
                self.rib.pop(f.prefix, None)
                self._classify(f.prefix)
                out += [
                    Acked(f.prefix, None),
                    self._event(now, "done", prefix=f.prefix, command=f.line, ms=ms),
                ]
            else:
                self.failed[f.prefix] = WITHDRAW
                self._classify(f.prefix)
        elif f.kind == "show":
            out += self._listed(f.replies if word == "done" else None, now)
        elif f.kind == "neighbors" and word == "done":
            out += self._neighbors(f.replies, now)
        return out + self._pump(now)

    def _listed(self, replies: list[str] | None, now: float) -> list[Action]:
        r, self._resync = self._resync, None
        if r is None:
            return []
        target = self.target or {}
        if replies is None:  # no listing: withdraw only what we know is out there
            listed = set(self.rib)
        else:
            listed = set()
            for raw in replies:
                listed |= _prefixes(raw)
        # attributes unknown: every wanted route is announced again (re-asserted)
        self.rib = dict.fromkeys(listed, UNKNOWN)
        for prefix in sorted(set(self.rib) | set(target)):
            self._classify(prefix)
        return [
            Listed(dict(self.rib)),
            self._event(
                now,
                "resync",
                why=r.why,
                listed=len(listed),
                extra=sorted(listed - set(target)),
                announce=len(target),
                ms=round((now - r.started) * 1000, 3),
            ),
        ]

    def _neighbors(self, replies: list[str], now: float) -> list[Action]:
        for raw in replies:
            try:
                data = json.loads(raw)
            except ValueError:
                continue
            for n in data if isinstance(data, list) else []:
                peer = str((n.get("peer") or {}).get("address"))
                self.sessions[peer] = "up" if n.get("fsm") == "ESTABLISHED" else "down"
        return [self._event(now, "sessions", sessions=dict(self.sessions))]

    def _message(self, msg: dict[str, Any], now: float) -> list[Action]:
        if msg.get("type") == "state":
            n = msg.get("neighbor") or {}
            peer = str((n.get("address") or {}).get("peer"))
            return self._session(peer, str(n.get("state")), now)
        if msg.get("type") == "notification" and msg.get("notification") == "shutdown":
            return [self._event(now, "shutdown")]
        return []

    def _session(self, peer: str, state: str, now: float) -> list[Action]:
        if state not in ("up", "down"):
            return []  # "connected" comes and goes while the peer refuses the session
        old = self.sessions.get(peer)
        self.sessions[peer] = state
        out: list[Action] = []
        if state != old:
            out.append(self._event(now, "session", peer=peer, state=state))
        if state == "up":
            self._resync_wanted = f"session up {peer}"
        return out + self._pump(now)

    # ------------------------------------------------------------------ sending
    def _pump(self, now: float) -> list[Action]:
        if self.inflight is not None or self.target is None:
            return []
        if self._enable_ack:
            self._enable_ack = False
            return [self._send(now, "enable-ack", commands.ENABLE_ACK)]
        if self._resync_wanted is not None:
            # list first, so that extras go before the target is re-asserted: never more
            # routes out than the target (max_diversions) while the resync runs
            self._resync = _Resync(self._resync_wanted, now)
            self._resync_wanted = None
            self.failed.clear()
            return [self._send(now, "show", commands.SHOW_ADJ_RIB_OUT)]
        work = self._work()
        if not work:
            if self._ask_neighbors:  # at start, once the routes are out
                self._ask_neighbors = False
                return [self._send(now, "neighbors", commands.SHOW_NEIGHBORS)]
            return []
        kind, prefix = work
        if kind == "withdraw":
            return [self._send(now, "withdraw", commands.withdraw(prefix), prefix)]
        return [self._send(now, "announce", self.target[prefix], prefix)]

    def _work(self) -> tuple[str, str] | None:
        """The next change: withdraws first (never more routes out than the target)."""
        if self._withdraws:
            return ("withdraw", next(iter(self._withdraws)))
        if self._announces:
            return ("announce", next(iter(self._announces)))
        return None

    def _classify(self, prefix: str) -> None:
        """Is ``prefix`` to be withdrawn, announced, or fine as it is?"""
        self._withdraws.pop(prefix, None)
        self._announces.pop(prefix, None)
        target = self.target or {}
        want = target.get(prefix)
        if want is None:
            if prefix in self.rib and self.failed.get(prefix) != WITHDRAW:
                self._withdraws[prefix] = None
        elif self.rib.get(prefix) != want and self.failed.get(prefix) != want:
            self._announces[prefix] = None

    def _send(self, now: float, kind: str, line: str, prefix: str = "") -> Write:
        self.inflight = _Inflight(kind, commands.checked(line), now, prefix)
        return Write(line)

    def _event(self, now: float, what: str, **fields: Any) -> Event:
        return Event({"time": now, "type": "exabgp", "event": what, **fields})


def _prefixes(raw: str) -> set[str]:
    """Prefixes in one line of ``show adj-rib out`` (json, extensive or plain)."""
    out: set[str] = set()
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if isinstance(data, dict):
        for per_peer in data.values():
            routes = per_peer.get("routes", []) if isinstance(per_peer, dict) else []
            for r in routes if isinstance(routes, list) else []:
                if isinstance(r, dict) and str(r.get("family", "")).endswith("unicast"):
                    out.add(str(r.get("prefix")))
        return out
    return set(_LISTED.findall(raw))
