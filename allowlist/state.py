"""The allowlist set: entries by source, with expiry, versions and a change log. Sans-I/O.

An entry is a key (address or prefix) held by a source ("feed", "api", "snapshot",
"static", ...) until its expiry (``inf``: until removed). A key is on the allowlist while
any source holds it, so a registrar's remove does not drop a trunk that an operator
allowlisted by configuration. Time is event time passed in: ``advance(now)`` expires the
entries whose expiry is <= now (an entry is a member while ``now < expires``).

Every change of an entry (add, refresh, remove, expire) bumps ``version`` and, when
``record`` is on, is kept as a ``Change`` for the durable store to take. A refresh never
shortens an expiry: one address is often shared by several endpoints (NAT, CGNAT), and the
latest registration with the shorter lifetime does not end the earlier ones.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from allowlist.index import MembershipIndex

INF = math.inf
ADD, REFRESH, REMOVE, EXPIRE = "add", "refresh", "remove", "expire"


@dataclass(frozen=True, slots=True)
class Change:
    """One change of an entry; ``version`` is the set's version after it."""

    version: int
    time: float
    op: str  # add | refresh | remove | expire
    key: int
    source: str
    expires: float  # the entry's expiry after the change (inf: none; for removals, the last)


@dataclass(slots=True)
class _Source:
    expires: dict[int, float] = field(default_factory=dict)
    # expiry buckets: whole second -> keys that may expire in it (stale after a refresh)
    buckets: dict[int, list[int]] = field(default_factory=dict)
    seconds: list[int] = field(default_factory=list)  # heap of the buckets' seconds

    def schedule(self, key: int, expires: float) -> None:
        if expires == INF:
            return
        second = math.floor(expires)
        bucket = self.buckets.get(second)
        if bucket is None:
            self.buckets[second] = [key]
            heapq.heappush(self.seconds, second)
        else:
            bucket.append(key)


class AllowlistState:
    def __init__(self, record: bool = False) -> None:
        self.version = 0
        self.now = -INF
        self.index = MembershipIndex()
        self.record = record
        self.changes: list[Change] = []
        self.sources: dict[str, _Source] = {}
        self.counters = {ADD: 0, REFRESH: 0, REMOVE: 0, EXPIRE: 0, "stale": 0, "unchanged": 0}

    # ------------------------------------------------------------------ queries
    def __contains__(self, key: int) -> bool:
        return any(key in s.expires for s in self.sources.values())

    def __len__(self) -> int:
        return len(self.index)

    def holders(self, key: int) -> dict[str, float]:
        """Sources holding a key, with their expiry."""
        return {name: s.expires[key] for name, s in self.sources.items() if key in s.expires}

    def keys(self) -> set[int]:
        """Every key on the allowlist (the union over the sources)."""
        out: set[int] = set()
        for s in self.sources.values():
            out.update(s.expires)
        return out

    def entries(self) -> Iterator[tuple[int, str, float]]:
        """(key, source, expires) of every entry."""
        for name, s in self.sources.items():
            for key, expires in s.expires.items():
                yield key, name, expires

    def take_changes(self) -> list[Change]:
        out, self.changes = self.changes, []
        return out

    # ------------------------------------------------------------------ changes
    def advance(self, now: float) -> int:
        """Move event time to ``now``; entries whose expiry is <= now leave. Returns how many."""
        if now <= self.now:
            return 0
        self.now = now
        expired = 0
        for name, src in self.sources.items():
            while src.seconds and src.seconds[0] <= now:
                second = heapq.heappop(src.seconds)
                keep: dict[int, None] = {}
                for key in src.buckets.pop(second):
                    expires = src.expires.get(key)
                    if expires is None or math.floor(expires) != second:
                        continue  # refreshed or removed since: stale
                    if expires <= now:
                        self._drop(key, name, src, EXPIRE, expires, expires)
                        expired += 1
                    else:
                        keep[key] = None
                if keep:  # the rest of this second is still to come
                    src.buckets[second] = list(keep)
                    heapq.heappush(src.seconds, second)
                    break
        return expired

    def add(self, key: int, source: str, expires: float, time: float) -> str:
        """Add or refresh an entry. Returns "add", "refresh", "unchanged" or "stale"."""
        self.advance(time)
        if expires <= self.now:
            self.counters["stale"] += 1
            return "stale"
        src = self.sources.get(source)
        if src is None:
            src = self.sources[source] = _Source()
        old = src.expires.get(key)
        if old is not None and expires <= old:
            self.counters["unchanged"] += 1
            return "unchanged"
        member = old is not None or key in self
        src.expires[key] = expires
        src.schedule(key, expires)
        op = ADD if old is None else REFRESH
        self._log(time, op, key, source, expires)
        if not member:
            self.index.add(key)
        return op

    def remove(self, key: int, source: str, time: float) -> str:
        """Remove an entry of a source. Returns "remove" or "absent"."""
        self.advance(time)
        src = self.sources.get(source)
        if src is None or key not in src.expires:
            return "absent"
        self._drop(key, source, src, REMOVE, src.expires[key], max(time, self.now))
        return REMOVE

    def replace_source(
        self, source: str, keys: Iterable[int], time: float, expires: float = INF
    ) -> tuple[int, int]:
        """A full snapshot of a source: its entries become exactly ``keys``.
        Returns (added or refreshed, removed)."""
        self.advance(time)
        want = set(keys)
        src = self.sources.get(source)
        gone = [k for k in src.expires if k not in want] if src is not None else []
        for key in gone:
            self.remove(key, source, time)
        changed = sum(self.add(k, source, expires, time) in (ADD, REFRESH) for k in sorted(want))
        return changed, len(gone)

    def _drop(self, key: int, name: str, src: _Source, op: str, expires: float, t: float) -> None:
        del src.expires[key]
        self._log(t, op, key, name, expires)
        if key not in self:
            self.index.remove(key)

    def _log(self, time: float, op: str, key: int, source: str, expires: float) -> None:
        self.version += 1
        self.counters[op] += 1
        if self.record:
            self.changes.append(Change(self.version, time, op, key, source, expires))

    # ------------------------------------------------------------------ restore
    def restore(self, entries: Iterable[tuple[int, str, float]], version: int, now: float) -> None:
        """Load a checkpoint (no change recorded)."""
        for key, source, expires in entries:
            self._set(key, source, expires)
        self.version, self.now = version, now

    def replay(self, change: Change) -> None:
        """Apply a change read back from the log, with its version (no change recorded)."""
        if change.op in (ADD, REFRESH):
            self._set(change.key, change.source, change.expires)
        else:
            src = self.sources.get(change.source)
            if src is not None and change.key in src.expires:
                del src.expires[change.key]
                if change.key not in self:
                    self.index.remove(change.key)
        self.version = change.version
        self.now = max(self.now, change.time)

    def _set(self, key: int, source: str, expires: float) -> None:
        src = self.sources.get(source)
        if src is None:
            src = self.sources[source] = _Source()
        if key not in self:
            self.index.add(key)
        src.expires[key] = expires
        src.schedule(key, expires)
