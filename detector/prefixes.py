"""Vectorised lookup of destination addresses in the protected prefixes.

Nested entries are flattened into disjoint ranges, each owned by its most specific entry,
and a whole FlowBatch is looked up with one ``searchsorted`` per address family. Every
entry also gets a block of host rows (one per address for IPv4 prefixes up to 65536
addresses, hashed buckets beyond that and for IPv6) for the per-host counters.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from collector.flowbatch import V4_MAPPED_LO_BASE, pair_to_str
from thresholds.model import Network

MAX_DENSE_HOSTS = 65536
V6_HOST_BUCKETS = 4096
#: up to this many address ranges (per family), a lookup compares a key with each range
#: (branch-free, a few numpy passes per range) instead of a binary search (~5 ns a key)
SCAN_RANGES = 8
_V4_MASK = np.uint64(0xFFFFFFFF)


@dataclass(frozen=True)
class Lookup:
    entry: npt.NDArray[np.int64]  # most specific entry of each record, -1 outside
    row: npt.NDArray[np.int64]  # host row of each record (valid where entry >= 0)


class PrefixIndex:
    def __init__(self, networks: Sequence[Network]) -> None:
        self.networks = list(networks)
        n = len(self.networks)
        self.ancestors: list[list[int]] = [
            [j for j in range(n) if j != i and _covers(self.networks[j], self.networks[i])]
            for i in range(n)
        ]
        # descendants including itself, for aggregating host rows
        self.members: list[list[int]] = [
            [i] + [j for j in range(n) if i in self.ancestors[j]] for i in range(n)
        ]
        self.row_base = np.zeros(n, dtype=np.int64)
        self.row_count = np.zeros(n, dtype=np.int64)
        self.dense = np.zeros(n, dtype=bool)
        base = 0
        for i, net in enumerate(self.networks):
            size = net.num_addresses
            if net.version == 4 and size <= MAX_DENSE_HOSTS:
                count, self.dense[i] = size, True
            else:
                count = MAX_DENSE_HOSTS if net.version == 4 else V6_HOST_BUCKETS
            self.row_base[i], self.row_count[i] = base, count
            base += count
        self.rows = base
        self.row_entry = np.repeat(np.arange(n), self.row_count)
        self.row_hi = np.zeros(base, dtype=np.uint64)  # last address seen in each row
        self.row_lo = np.zeros(base, dtype=np.uint64)
        self._v4 = _ranges([(i, net) for i, net in enumerate(self.networks) if net.version == 4])
        self._v6 = _ranges([(i, net) for i, net in enumerate(self.networks) if net.version == 6])
        self._all_v4_dense = all(
            self.dense[i] for i, net in enumerate(self.networks) if net.version == 4
        )
        self.net_v4 = np.array(
            [int(net.network_address) if net.version == 4 else 0 for net in self.networks],
            dtype=np.uint64,
        )
        self._v4_scan = _scan(self._v4)
        self._v6_scan = _scan(self._v6)

    def lookup(self, hi: npt.NDArray[np.uint64], lo: npt.NDArray[np.uint64]) -> Lookup:
        n = hi.shape[0]
        is4 = (hi == 0) & ((lo & ~_V4_MASK) == V4_MAPPED_LO_BASE)
        all4 = bool(is4.all())
        if self._v4 is not None:
            # every record as IPv4 (no gather, no scatter), IPv6 ones masked out afterwards
            entry, row = self._lookup_v4(lo & _V4_MASK, None if all4 else is4)
        else:
            entry, row = np.full(n, -1, dtype=np.int64), np.zeros(n, dtype=np.int64)
        if self._v6 is not None and not all4:
            idx = np.flatnonzero(~is4)
            hi6 = hi.take(idx)
            e = _find(self._v6, hi6, self._v6_scan)
            entry[idx] = e
            ok = e >= 0
            idx, e = idx[ok], e[ok]
            r = self.row_base.take(e) + _mix(hi6[ok] ^ lo.take(idx)) % V6_HOST_BUCKETS
            row[idx] = r
            # hashed rows remember the last address seen (dense rows derive theirs)
            self.row_hi[r] = hi.take(idx)
            self.row_lo[r] = lo.take(idx)
        return Lookup(entry, row)

    def _lookup_v4(
        self, key: npt.NDArray[np.uint64], valid: npt.NDArray[np.bool_] | None
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """Entry (-1: none) and host row (0 where no entry) of IPv4 addresses (only where
        ``valid``, when given)."""
        assert self._v4 is not None
        if self._v4_scan is not None:
            return self._scan_v4(key, valid, self._v4_scan)
        entry = _find(self._v4, key, None)
        if valid is not None:
            entry[~valid] = -1
        ok = entry >= 0
        e = np.maximum(entry, 0)
        offset = (key - self.net_v4.take(e)).astype(np.int64)  # garbage where not ok
        if self._all_v4_dense:
            row = self.row_base.take(e) + offset
        else:
            hashed = _mix(key) % MAX_DENSE_HOSTS
            row = self.row_base.take(e) + np.where(self.dense.take(e), offset, hashed)
            self._remember_v4(key, row, ok & ~self.dense.take(e))
        return entry, row * ok

    def _scan_v4(
        self,
        key: npt.NDArray[np.uint64],
        valid: npt.NDArray[np.bool_] | None,
        ranges: list[tuple[np.uint64, np.uint64, int]],
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """``_lookup_v4`` for a few ranges: branch-free sums over the (disjoint) ranges."""
        entry = np.zeros(key.shape[0], dtype=np.int64)  # entry + 1
        row = np.zeros(key.shape[0], dtype=np.int64)
        hashed: npt.NDArray[np.int64] | None = None
        remember: npt.NDArray[np.bool_] | None = None
        for start, span, owner in ranges:
            d = key - start  # wraps around below the range
            inside = d <= span
            if valid is not None:
                inside &= valid
            entry += inside * (owner + 1)
            base = int(self.row_base[owner])
            if self.dense[owner]:
                # the offset in the network: d plus where the range starts in it
                first = base + int(start) - int(self.net_v4[owner])
                row += inside * (d.view(np.int64) + first)
            else:
                if hashed is None:
                    hashed = _mix(key) % MAX_DENSE_HOSTS
                row += inside * (hashed + base)
                remember = inside if remember is None else remember | inside
        entry -= 1
        if remember is not None:
            self._remember_v4(key, row, remember)
        return entry, row

    def _remember_v4(
        self, key: npt.NDArray[np.uint64], row: npt.NDArray[np.int64], hashed: npt.NDArray[np.bool_]
    ) -> None:
        """Hashed rows remember the last address seen (dense rows derive theirs)."""
        if hashed.any():
            r = row[hashed]
            self.row_hi[r] = 0
            self.row_lo[r] = key[hashed] | V4_MAPPED_LO_BASE

    def host_address(self, row: int) -> str:
        i = int(self.row_entry[row])
        net = self.networks[i]
        if self.dense[i]:
            return str(net.network_address + int(row - self.row_base[i]))
        hi, lo = int(self.row_hi[row]), int(self.row_lo[row])
        if hi == 0 and lo == 0:
            return f"{net} bucket {row - self.row_base[i]}"
        return pair_to_str(hi, lo)

    def subnet_of_row(self, row: int, length: int) -> str | None:
        """The /length subnet that holds a host row (dense IPv4 rows only)."""
        i = int(self.row_entry[row])
        net = self.networks[i]
        if not self.dense[i] or net.version != 4 or length < net.prefixlen:
            return None
        addr = int(net.network_address) + int(row - self.row_base[i])
        return str(ipaddress.ip_network((addr >> (32 - length) << (32 - length), length)))


def _covers(outer: Network, inner: Network) -> bool:
    return (
        outer.version == inner.version
        and outer.prefixlen < inner.prefixlen
        and inner.subnet_of(outer)  # type: ignore[arg-type]
    )


@dataclass(frozen=True)
class _Ranges:
    starts: npt.NDArray[np.uint64]
    ends: npt.NDArray[np.uint64]  # inclusive
    owner: npt.NDArray[np.int64]


def _bounds(net: Network) -> tuple[int, int]:
    if net.version == 4:
        return int(net.network_address), int(net.broadcast_address)
    # IPv6 is looked up on the upper 64 bits (protected prefixes are /64 or shorter)
    return int(net.network_address) >> 64, int(net.broadcast_address) >> 64


def _ranges(entries: list[tuple[int, Network]]) -> _Ranges | None:
    if not entries:
        return None
    points = sorted({b for _, net in entries for b in (_bounds(net)[0], _bounds(net)[1] + 1)})
    starts, ends, owner = [], [], []
    for a, b in itertools.pairwise(points):
        best, best_len = -1, -1
        for i, net in entries:
            lo, hi = _bounds(net)
            if lo <= a and b - 1 <= hi and net.prefixlen > best_len:
                best, best_len = i, net.prefixlen
        if best >= 0:
            starts.append(a)
            ends.append(b - 1)
            owner.append(best)
    return _Ranges(
        np.array(starts, dtype=np.uint64),
        np.array(ends, dtype=np.uint64),
        np.array(owner, dtype=np.int64),
    )


def _scan(r: _Ranges | None) -> list[tuple[np.uint64, np.uint64, int]] | None:
    """(start, end - start, owner) of each range when there are few enough to compare a
    key with each of them rather than search; else None."""
    if r is None or len(r.starts) > SCAN_RANGES:
        return None
    return [
        (np.uint64(a), np.uint64(b - a), o)
        for a, b, o in zip(r.starts.tolist(), r.ends.tolist(), r.owner.tolist(), strict=True)
    ]


def _find(
    r: _Ranges, key: npt.NDArray[np.uint64], scan: list[tuple[np.uint64, np.uint64, int]] | None
) -> npt.NDArray[np.int64]:
    if scan is not None:
        # a few (disjoint) ranges: (key - start) wraps around below the start, so one unsigned
        # comparison tells inside; branch-free sums beat searchsorted and masked stores here
        out = np.zeros(key.shape[0], dtype=np.int64)  # owner + 1
        for start, span, owner in scan:
            out += ((key - start) <= span) * (owner + 1)
        out -= 1
        return out
    pos = np.searchsorted(r.starts, key, side="right") - 1
    ok = pos >= 0
    pos = np.where(ok, pos, 0)
    ok &= key <= r.ends.take(pos)
    return np.where(ok, r.owner.take(pos), -1)


def _mix(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
    """A cheap 64-bit hash (splitmix64 finaliser) for host buckets."""
    z = x.astype(np.uint64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(1)).astype(np.int64)
