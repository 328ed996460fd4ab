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

    def lookup(self, hi: npt.NDArray[np.uint64], lo: npt.NDArray[np.uint64]) -> Lookup:
        n = hi.shape[0]
        entry = np.full(n, -1, dtype=np.int64)
        row = np.zeros(n, dtype=np.int64)
        is4 = (hi == 0) & ((lo & ~_V4_MASK) == V4_MAPPED_LO_BASE)
        if self._v4 is not None:
            idx = np.nonzero(is4)[0]
            key = lo[idx] & _V4_MASK
            e = _find(self._v4, key)
            entry[idx] = e
            ok = e >= 0
            idx, key, e = idx[ok], key[ok], e[ok]
            offset = (key - self.net_v4[e]).astype(np.int64)
            if self._all_v4_dense:
                row[idx] = self.row_base[e] + offset
            else:
                dense = self.dense[e]
                hashed = _mix(key) % MAX_DENSE_HOSTS
                row[idx] = self.row_base[e] + np.where(dense, offset, hashed)
        if self._v6 is not None:
            idx = np.nonzero(~is4)[0]
            e = _find(self._v6, hi[idx])
            entry[idx] = e
            ok = e >= 0
            idx, e = idx[ok], e[ok]
            row[idx] = self.row_base[e] + _mix(hi[idx] ^ lo[idx]) % V6_HOST_BUCKETS
        # hashed rows remember the last address seen (dense rows derive theirs)
        remember = (entry >= 0) & ~self.dense[np.maximum(entry, 0)]
        if remember.any():
            self.row_hi[row[remember]] = hi[remember]
            self.row_lo[row[remember]] = lo[remember]
        return Lookup(entry, row)

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


def _find(r: _Ranges, key: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
    pos = np.searchsorted(r.starts, key, side="right") - 1
    ok = pos >= 0
    pos = np.where(ok, pos, 0)
    ok &= key <= r.ends[pos]
    return np.where(ok, r.owner[pos], -1)


def _mix(x: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
    """A cheap 64-bit hash (splitmix64 finaliser) for host buckets."""
    z = x.astype(np.uint64)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(1)).astype(np.int64)
