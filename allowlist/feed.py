"""Parsing the inputs of the allowlist: registration lines and full snapshots. Sans-I/O.

A registration line is one JSON object: ``{"time", "op": "add"|"remove", "ip", "ttl"}``
(the registrar's feed, the HTTP API). A snapshot is text with one address or prefix per
line (``#`` starts a comment). A bad line is refused with its line number and reason; the
good ones are kept.
"""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from allowlist import addr
from allowlist.state import REMOVE, AllowlistState

MAX_TTL = 7 * 86400.0
MAX_LINE = 4096
OPS = ("add", "remove")


@dataclass(frozen=True, slots=True)
class Registration:
    time: float
    op: str  # add | remove
    key: int
    ttl: float
    line: int = 0


@dataclass(frozen=True, slots=True)
class Refusal:
    line: int
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return {"line": self.line, "reason": self.reason}


def _number(obj: dict[str, Any], name: str) -> float:
    v = obj[name]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError(f"{name}: expected a number, got {v!r}")
    return float(v)


def parse_object(
    obj: Any,
    line: int = 0,
    now: float | None = None,
    limits: addr.Limits = addr.DEFAULT_LIMITS,
) -> Registration:
    """A decoded JSON value -> Registration; ValueError with the reason. Without ``now``
    the time is required; with it, a missing time means now."""
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object")
    op = obj.get("op")
    if op not in OPS:
        raise ValueError(f"op: expected 'add' or 'remove', got {op!r}")
    if "ip" not in obj:
        raise ValueError("ip: missing")
    key = addr.parse(obj["ip"], limits)
    if "time" in obj:
        time = _number(obj, "time")
        if time <= 0:
            raise ValueError(f"time: not a Unix time: {time!r}")
    elif now is not None:
        time = now
    else:
        raise ValueError("time: missing")
    ttl = 0.0
    if op == "add":
        if "ttl" not in obj:
            raise ValueError("ttl: missing")
        ttl = _number(obj, "ttl")
        if not 0 < ttl <= MAX_TTL:
            raise ValueError(f"ttl: {ttl:g} s out of range (0, {MAX_TTL:g}]")
    elif "ttl" in obj:
        _number(obj, "ttl")
    return Registration(time, op, key, ttl, line)


def parse_line(
    text: str | bytes,
    line: int = 0,
    now: float | None = None,
    limits: addr.Limits = addr.DEFAULT_LIMITS,
) -> Registration:
    if len(text) > MAX_LINE:
        raise ValueError(f"line longer than {MAX_LINE} bytes")
    try:
        obj = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"not JSON: {e}") from None
    return parse_object(obj, line, now, limits)


def parse_lines(
    lines: Iterable[str | bytes],
    now: float | None = None,
    limits: addr.Limits = addr.DEFAULT_LIMITS,
    first_line: int = 1,
) -> tuple[list[Registration], list[Refusal]]:
    """JSON Lines -> registrations and refusals (blank lines are skipped)."""
    good: list[Registration] = []
    bad: list[Refusal] = []
    for n, text in enumerate(lines, first_line):
        if not text.strip():
            continue
        try:
            good.append(parse_line(text, n, now, limits))
        except ValueError as e:
            bad.append(Refusal(n, str(e)))
    return good, bad


def apply(state: AllowlistState, reg: Registration, source: str = "feed") -> str:
    """Apply one registration at its own time; returns what it did to the set."""
    if reg.op == REMOVE:
        return state.remove(reg.key, source, reg.time)
    return state.add(reg.key, source, reg.time + reg.ttl, reg.time)


def parse_snapshot(
    text: str, limits: addr.Limits = addr.DEFAULT_LIMITS
) -> tuple[list[int], list[Refusal]]:
    """A full snapshot: one address or prefix per line; ``#`` comments, blank lines."""
    keys: list[int] = []
    bad: list[Refusal] = []
    for n, raw in enumerate(text.splitlines(), 1):
        item = raw.split("#", 1)[0].strip()
        if not item:
            continue
        try:
            keys.append(addr.parse(item, limits))
        except ValueError as e:
            bad.append(Refusal(n, str(e)))
    return keys, bad


class FeedCursor:
    """Registrations in time order, applied as event time passes (replay, backtest)."""

    def __init__(self, registrations: Iterable[Registration], source: str = "feed") -> None:
        self.items = sorted(registrations, key=lambda r: r.time)  # stable: file order kept
        self.times = [r.time for r in self.items]
        self.pos = 0
        self.source = source
        self.results: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.items)

    def apply_until(self, state: AllowlistState, now: float, inclusive: bool = True) -> int:
        """Apply every registration with time <= now (< now if not inclusive), then move
        the state's clock to now. Returns how many were applied."""
        side = bisect.bisect_right if inclusive else bisect.bisect_left
        stop = side(self.times, now, lo=self.pos)
        for reg in self.items[self.pos : stop]:
            what = apply(state, reg, self.source)
            self.results[what] = self.results.get(what, 0) + 1
        n, self.pos = stop - self.pos, stop
        state.advance(now)
        return n
