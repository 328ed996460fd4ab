"""Data sets that arrived before their template, held bounded in count and age.

When the template arrives the held sets are handed back and decoded; a record decoded late
keeps the arrival time and frame of the datagram that carried it.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple

from collector.templates import TemplateKey


class PendingSet(NamedTuple):
    key: TemplateKey
    body: bytes
    arrival: float
    frame: int
    export_time: float
    sysuptime_ms: int
    order: int


class PendingSets:
    """FIFO of held data sets with a global cap, a per-exporter cap and a maximum age."""

    def __init__(
        self,
        max_sets: int = 8192,
        max_per_exporter: int = 1024,
        max_bytes: int = 16 << 20,
        max_age: float = 120.0,
    ) -> None:
        self.max_sets = max_sets
        self.max_per_exporter = max_per_exporter
        self.max_bytes = max_bytes
        self.max_age = max_age
        self._items: OrderedDict[int, PendingSet] = OrderedDict()
        self._by_key: dict[TemplateKey, list[int]] = {}
        self._per_exporter: dict[str, int] = {}
        self._bytes = 0
        self._next = 0

    def __len__(self) -> int:
        return len(self._items)

    @property
    def nbytes(self) -> int:
        return self._bytes

    def add(self, item: PendingSet) -> list[PendingSet]:
        """Hold a set; returns the sets dropped to make room (the oldest first)."""
        dropped: list[PendingSet] = []
        exporter = item.key.exporter
        if len(item.body) > self.max_bytes:
            return [item]
        if self._per_exporter.get(exporter, 0) >= self.max_per_exporter:
            oldest = next(i for i, p in self._items.items() if p.key.exporter == exporter)
            dropped.append(self._remove(oldest))
        while self._items and (
            len(self._items) >= self.max_sets or self._bytes + len(item.body) > self.max_bytes
        ):
            dropped.append(self._remove(next(iter(self._items))))
        ident = self._next
        self._next += 1
        self._items[ident] = item
        self._by_key.setdefault(item.key, []).append(ident)
        self._per_exporter[exporter] = self._per_exporter.get(exporter, 0) + 1
        self._bytes += len(item.body)
        return dropped

    def take(self, key: TemplateKey) -> list[PendingSet]:
        """The held sets of a template, in arrival order, removed from the queue."""
        idents = self._by_key.get(key)
        if not idents:
            return []
        return [self._remove(i) for i in list(idents)]

    def expire(self, now: float) -> list[PendingSet]:
        """Remove and return the sets older than ``max_age`` at event time ``now``."""
        out = []
        while self._items:
            ident, item = next(iter(self._items.items()))
            if now - item.arrival <= self.max_age:
                break
            out.append(self._remove(ident))
        return out

    def _remove(self, ident: int) -> PendingSet:
        item = self._items.pop(ident)
        idents = self._by_key[item.key]
        idents.remove(ident)
        if not idents:
            del self._by_key[item.key]
        left = self._per_exporter[item.key.exporter] - 1
        if left:
            self._per_exporter[item.key.exporter] = left
        else:
            del self._per_exporter[item.key.exporter]
        self._bytes -= len(item.body)
        return item
