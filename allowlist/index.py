"""Membership of a whole column of addresses in the allowlist, in one vectorised step.

Host entries live in sorted numpy arrays: IPv4 as uint32, IPv6 as (hi, lo) uint64 pairs in
lexicographic order. A table of offsets by the top bits of the key (about one bucket per
key) narrows each query to a bucket of a few keys, and a vectorised binary search inside the
buckets finishes the job: no Python per address, and random queries stay in the cache far
better than a plain ``searchsorted`` over the whole array. Prefix entries become disjoint
sorted ranges (``searchsorted`` on their starts).

Updates are collected in Python sets and merged into the arrays lazily, at the next lookup
(``np.insert`` / ``np.delete`` on sorted arrays: a memory copy, about 1 ms per 10^6 keys).
The caller tells the index of membership *transitions* only (a key enters or leaves); the
allowlist state knows which.
"""

from __future__ import annotations

import threading

import numpy as np
import numpy.typing as npt

from allowlist import addr

U64 = npt.NDArray[np.uint64]
Keys = npt.NDArray[np.unsignedinteger]
_MASK32 = np.uint64(0xFFFFFFFF)
_MAPPED_HI_LO = np.uint64(0x0000FFFF00000000)
MAX_BITS = 20


class _Sorted:
    """Sorted keys of one family (IPv4: uint32 ``lo``; IPv6: uint64 ``hi``, ``lo`` in
    lexicographic order) with the offsets of their buckets by top bits."""

    def __init__(self, v6: bool, hi: U64 | None = None, lo: Keys | None = None) -> None:
        self.v6 = v6
        self.lo: Keys = np.zeros(0, np.uint64 if v6 else np.uint32) if lo is None else lo
        self.hi: U64 = np.zeros(0, np.uint64) if hi is None else hi
        self._offsets()

    @property
    def nbytes(self) -> int:
        return int(self.lo.nbytes + (self.hi.nbytes if self.v6 else 0) + self.off.nbytes)

    def _top(self, hi: U64, lo: Keys) -> npt.NDArray[np.intp]:
        if self.v6:
            return (hi >> np.uint64(64 - self.bits)).astype(np.intp)
        return (lo >> np.uint32(32 - self.bits)).astype(np.intp)

    def _offsets(self) -> None:
        self.bits = min(MAX_BITS, max(1, int(self.lo.shape[0]).bit_length()))
        counts = np.bincount(self._top(self.hi, self.lo), minlength=1 << self.bits)
        self.off = np.zeros((1 << self.bits) + 1, dtype=np.intp)
        np.cumsum(counts, out=self.off[1:])

    def search(self, hi: U64, lo: Keys, right: bool = False) -> npt.NDArray[np.intp]:
        """Index of the first key >= each query (> with ``right``), like searchsorted."""
        t = self._top(hi, lo)
        start, stop = self.off[t], self.off[t + 1]
        return _bisect(self.hi if self.v6 else None, self.lo, hi, lo, start, stop, right)


class _Hosts(_Sorted):
    """A sorted set of host keys of one family, with its pending updates."""

    def __init__(self, v6: bool) -> None:
        super().__init__(v6)
        self.adds: set[int] = set()
        self.removes: set[int] = set()

    def __len__(self) -> int:
        return int(self.lo.shape[0]) + len(self.adds) - len(self.removes)

    def _split(self, values: set[int]) -> tuple[U64, Keys]:
        """Sorted (hi, lo) arrays of 128-bit values (lo only, uint32, for IPv4)."""
        if not self.v6:
            lo = np.fromiter((v & 0xFFFFFFFF for v in values), np.uint32, len(values))
            lo.sort()
            return np.zeros(0, np.uint64), lo
        hi = np.fromiter((v >> 64 for v in values), np.uint64, len(values))
        lo64 = np.fromiter((v & 0xFFFFFFFFFFFFFFFF for v in values), np.uint64, len(values))
        order = np.lexsort((lo64, hi))
        return hi[order], lo64[order]

    def contains(self, hi: U64, lo: Keys) -> npt.NDArray[np.bool_]:
        n = int(self.lo.shape[0])
        if n == 0:
            return np.zeros(lo.shape[0], dtype=bool)
        pos = np.minimum(self.search(hi, lo), n - 1)
        found = self.lo[pos] == lo
        if self.v6:
            found &= self.hi[pos] == hi
        return found

    def merge(self) -> None:
        if self.removes:
            hi, lo = self._split(self.removes)
            if len(self.lo):
                pos = self.search(hi, lo)
                ok = self.contains(hi, lo)
                self.lo = np.delete(self.lo, pos[ok])
                if self.v6:
                    self.hi = np.delete(self.hi, pos[ok])
                self._offsets()
            self.removes.clear()
        if self.adds:
            hi, lo = self._split(self.adds)
            pos = self.search(hi, lo)
            new = ~self.contains(hi, lo)
            self.lo = np.insert(self.lo, pos[new], lo[new])
            if self.v6:
                self.hi = np.insert(self.hi, pos[new], hi[new])
            self.adds.clear()
            self._offsets()


def _bisect(
    khi: U64 | None,
    klo: Keys,
    qhi: U64,
    qlo: Keys,
    start: npt.NDArray[np.intp],
    stop: npt.NDArray[np.intp],
    right: bool = False,
) -> npt.NDArray[np.intp]:
    """Vectorised binary search: first index in [start, stop) whose key is >= the query
    (> with ``right``); ``stop`` if none."""
    lo, hi = start.copy(), stop.copy()
    act = np.nonzero(lo < hi)[0]
    while act.shape[0]:
        a, b = lo[act], hi[act]
        mid = (a + b) >> 1
        less = klo[mid] <= qlo[act] if right else klo[mid] < qlo[act]
        if khi is not None:
            kh, qh = khi[mid], qhi[act]
            less = (kh < qh) | ((kh == qh) & less)
        a = np.where(less, mid + 1, a)
        b = np.where(less, b, mid)
        lo[act], hi[act] = a, b
        act = act[a < b]
    return lo


class _Ranges:
    """Disjoint, sorted, inclusive ranges of the prefix entries of one family."""

    def __init__(self, spans: list[tuple[int, int]], v6: bool) -> None:
        merged: list[list[int]] = []
        for first, last in sorted(spans):
            if merged and first <= merged[-1][1] + 1:
                merged[-1][1] = max(merged[-1][1], last)
            else:
                merged.append([first, last])
        self.count = len(merged)
        if v6:
            shi, slo = _halves([m[0] for m in merged])
            self.end_hi, self.end_lo = _halves([m[1] for m in merged])
            self.starts = _Sorted(True, shi, slo)
        else:
            self.end_hi = np.zeros(0, np.uint64)
            self.end_lo = np.array([m[1] & 0xFFFFFFFF for m in merged], dtype=np.uint32)
            lo = np.array([m[0] & 0xFFFFFFFF for m in merged], dtype=np.uint32)
            self.starts = _Sorted(False, None, lo)

    @property
    def nbytes(self) -> int:
        return int(self.starts.nbytes + self.end_lo.nbytes + self.end_hi.nbytes)

    def contains(self, hi: U64, lo: Keys) -> npt.NDArray[np.bool_]:
        if self.count == 0:
            return np.zeros(lo.shape[0], dtype=bool)
        i = self.starts.search(hi, lo, right=True) - 1  # the last range starting <= query
        j = np.maximum(i, 0)
        if not self.starts.v6:
            return (i >= 0) & (lo <= self.end_lo[j])
        eh, el = self.end_hi[j], self.end_lo[j]
        return (i >= 0) & ((hi < eh) | ((hi == eh) & (lo <= el)))


def _halves(values: list[int]) -> tuple[U64, U64]:
    hi = np.array([v >> 64 for v in values], dtype=np.uint64)
    lo = np.array([v & 0xFFFFFFFFFFFFFFFF for v in values], dtype=np.uint64)
    return hi, lo


class MembershipIndex:
    """The allowlist as arrays; calling it is the detector's ``Membership``.

    Thread-safe: one thread may update it (the allowlist's) while another looks up (the
    detector's); an internal lock is held for the set updates and for a lookup with its
    merge (milliseconds), never for the slow work of the allowlist (store, exports).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.v4 = _Hosts(v6=False)
        self.v6 = _Hosts(v6=True)
        self.prefixes: set[int] = set()
        self._r4 = _Ranges([], v6=False)
        self._r6 = _Ranges([], v6=True)
        self._ranges_dirty = False
        self.merges = 0

    # ------------------------------------------------------------------ updates
    def add(self, key: int) -> None:
        """A key enters the set (it was not a member)."""
        with self._lock:
            if not addr.is_host(key):
                self.prefixes.add(key)
                self._ranges_dirty = True
                return
            hosts = self.v4 if addr.is_v4(key) else self.v6
            value = key >> 8
            if value in hosts.removes:
                hosts.removes.discard(value)
            else:
                hosts.adds.add(value)

    def remove(self, key: int) -> None:
        """A key leaves the set (it was a member)."""
        with self._lock:
            if not addr.is_host(key):
                self.prefixes.discard(key)
                self._ranges_dirty = True
                return
            hosts = self.v4 if addr.is_v4(key) else self.v6
            value = key >> 8
            if value in hosts.adds:
                hosts.adds.discard(value)
            else:
                hosts.removes.add(value)

    def sync(self) -> None:
        """Merge the pending updates into the arrays (every lookup does it)."""
        with self._lock:
            self._sync()

    def prefix_keys(self) -> list[int]:
        with self._lock:
            return list(self.prefixes)

    def _sync(self) -> None:
        for hosts in (self.v4, self.v6):
            if hosts.adds or hosts.removes:
                hosts.merge()
                self.merges += 1
        if self._ranges_dirty:
            v4: list[tuple[int, int]] = []
            v6: list[tuple[int, int]] = []
            for key in self.prefixes:
                first, last = addr.span(key)
                if addr.is_v4(key):
                    v4.append((first, last))
                else:
                    v6.extend(_cut_mapped(first, last))
            self._r4, self._r6 = _Ranges(v4, v6=False), _Ranges(v6, v6=True)
            self._ranges_dirty = False

    # ------------------------------------------------------------------ lookups
    def __call__(self, hi: U64, lo: U64) -> npt.NDArray[np.bool_]:
        """Membership of each address (hi, lo) of a FlowBatch column."""
        with self._lock:
            self._sync()
            return self._lookup(hi, lo)

    def _lookup(self, hi: U64, lo: U64) -> npt.NDArray[np.bool_]:
        out = np.zeros(lo.shape[0], dtype=bool)
        is4 = (hi == 0) & ((lo & ~_MASK32) == _MAPPED_HI_LO)
        i4 = np.nonzero(is4)[0]
        if i4.shape[0]:
            q = (lo[i4] & _MASK32).astype(np.uint32)
            none = np.zeros(0, np.uint64)
            out[i4] = self.v4.contains(none, q) | self._r4.contains(none, q)
        if i4.shape[0] < lo.shape[0]:
            i6 = np.nonzero(~is4)[0]
            qh, ql = hi[i6], lo[i6]
            out[i6] = self.v6.contains(qh, ql) | self._r6.contains(qh, ql)
        return out

    def __len__(self) -> int:
        return len(self.v4) + len(self.v6) + len(self.prefixes)

    @property
    def nbytes(self) -> int:
        """Bytes of the lookup arrays (not of the Python state that feeds them)."""
        self.sync()
        with self._lock:
            return self.v4.nbytes + self.v6.nbytes + self._r4.nbytes + self._r6.nbytes

    def ranges(self) -> tuple[int, int]:
        """Number of disjoint IPv4 and IPv6 ranges the prefixes make."""
        self.sync()
        with self._lock:
            return self._r4.count, self._r6.count


def _cut_mapped(first: int, last: int) -> list[tuple[int, int]]:
    """An IPv6 range without the IPv4-mapped block (IPv6 prefixes never cover IPv4)."""
    m0, m1 = addr.MAPPED_BLOCK
    if last < m0 or first > m1:
        return [(first, last)]
    out = []
    if first < m0:
        out.append((first, m0 - 1))
    if last > m1:
        out.append((m1 + 1, last))
    return out
