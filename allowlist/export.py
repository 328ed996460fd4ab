"""The allowlist as the scrubbing side takes it, in full or as a delta. Sans-I/O (text out).

Formats:

* ``plain``: one entry per line (addresses bare, prefixes with /len); delta lines ``+x``/``-x``;
* ``cidr``: the set aggregated into the fewest disjoint CIDRs (always with /len); delta as plain;
* ``ipset``: ``ipset restore`` input, one hash:net set per family (``NAME-v4``, ``NAME-v6``),
  entries as they are (hash:net takes overlapping prefixes); a full load fills ``NAME-vX-new``
  and swaps it in (atomic for the packet path); a delta is ``add``/``del`` with ``-exist``;
* ``nft``: an ``nft -f`` script for an ``inet`` table with one interval set per family holding
  the aggregated CIDRs (interval sets refuse overlaps); a full load flushes and refills the sets
  in one nft transaction; a delta deletes and adds aggregated CIDRs;
* ``json``: ``{"format", "version", "count", "entries"}`` or
  ``{"format", "since", "version", "add", "remove"}``.

Applying a delta since version N to the full export of version N gives the full export of
the delta's version (tests/test_allowlist_export.py checks it with the real tools).
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from collections.abc import Collection, Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from allowlist import addr
from allowlist.versions import Delta

FORMATS = ("plain", "cidr", "ipset", "nft", "json")
NFT_CHUNK = 1000
JSON_FORMAT = "divertor-allowlist/1"


@dataclass(frozen=True, slots=True)
class Names:
    ipset: str = "divertor_allow"  # sets NAME-v4 / NAME-v6 (ipset names: <= 31 characters)
    ipset_maxelem: int = 1 << 22  # fixed: `create -exist` refuses other parameters
    ipset_hashsize: int = 1 << 16
    nft_family: str = "inet"
    nft_table: str = "divertor"
    nft_set: str = "allow"  # sets allow_v4 / allow_v6

    def __post_init__(self) -> None:
        for name in (self.ipset, self.nft_table, self.nft_set):
            if not name or len(name) > 24 or not all(c.isalnum() or c in "_-" for c in name):
                raise ValueError(f"set name {name!r}: 1-24 characters of [A-Za-z0-9_-]")
        if self.nft_family not in ("inet", "ip", "ip6", "bridge", "netdev"):
            raise ValueError(f"nft family {self.nft_family!r}")


def ordered(keys: Iterable[int]) -> list[int]:
    """IPv4 first, then IPv6, each by address then prefix length."""
    v4: list[int] = []
    v6: list[int] = []
    for k in keys:
        (v4 if addr.is_v4(k) else v6).append(k)
    v4.sort()
    v6.sort()
    return v4 + v6


def texts(keys: list[int]) -> list[str]:
    """Text of many keys (IPv4 hosts by a fast path)."""
    ntoa, host = socket.inet_ntoa, addr.HOST
    return [
        ntoa(((k >> 8) & 0xFFFFFFFF).to_bytes(4))
        if (k & 0xFF) == host and (k >> 40) == 0xFFFF
        else addr.text(k)
        for k in keys
    ]


# --------------------------------------------------------------------------- aggregation
def aggregate(keys: Iterable[int]) -> list[int]:
    """The fewest disjoint CIDR keys covering exactly the union of the keys."""
    v4: list[int] = []
    v6: list[int] = []
    for k in keys:
        (v4 if addr.is_v4(k) else v6).append(k)
    out = _aggregate_v4(v4)
    spans = sorted(addr.span(k) for k in v6)
    merged: list[list[int]] = []
    for first, last in spans:
        if merged and first <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], last)
        else:
            merged.append([first, last])
    for first, last in merged:
        while first <= last:
            size = min(first & -first or 1 << 128, 1 << ((last - first + 1).bit_length() - 1))
            out.append(addr.from_range(first, 129 - size.bit_length()))
            first += size
    return out


def _aggregate_v4(keys: list[int]) -> list[int]:
    if not keys:
        return []
    n = len(keys)
    value = np.fromiter(((k >> 8) & 0xFFFFFFFF for k in keys), np.uint64, n)
    length = np.fromiter((k & 0xFF for k in keys), np.uint64, n) - np.uint64(96)
    start = value
    end = value | ((np.uint64(1) << (np.uint64(32) - length)) - np.uint64(1))
    order = np.argsort(start, kind="stable")
    start, end = start[order], end[order]
    reach = np.maximum.accumulate(end)
    new = np.ones(n, dtype=bool)
    new[1:] = start[1:] > reach[:-1] + np.uint64(1)
    first = np.nonzero(new)[0]
    s = start[first]
    e = np.maximum.reduceat(end, first)
    starts: list[npt.NDArray[np.uint64]] = []
    lengths: list[npt.NDArray[np.int64]] = []
    while s.shape[0]:
        low = s & (~s + np.uint64(1))
        low[s == 0] = np.uint64(1 << 32)
        fit = np.uint64(1) << (np.frexp((e - s + np.uint64(1)).astype(np.float64))[1] - 1).astype(
            np.uint64
        )
        size = np.minimum(low, fit)
        starts.append(s)
        lengths.append(33 - np.frexp(size.astype(np.float64))[1].astype(np.int64))
        s = s + size
        keep = s <= e
        s, e = s[keep], e[keep]
    all_s = np.concatenate(starts)
    all_l = np.concatenate(lengths)
    o = np.argsort(all_s, kind="stable")
    return [
        ((addr.MAPPED | v) << 8) | (ln + 96)
        for v, ln in zip(all_s[o].tolist(), all_l[o].tolist(), strict=True)
    ]


# --------------------------------------------------------------------------- rendering
def _cidr_text(key: int) -> str:
    t = addr.text(key)
    if "/" in t:
        return t
    return f"{t}/32" if addr.is_v4(key) else f"{t}/128"


def _ipset_lines(keys: list[int], names: Names, suffix: str, op: str, tail: str) -> list[str]:
    v4 = f"{op} {names.ipset}-v4{suffix} "
    v6 = f"{op} {names.ipset}-v6{suffix} "
    return [
        f"{v4 if addr.is_v4(k) else v6}{t}{tail}" for k, t in zip(keys, texts(keys), strict=True)
    ]


def _ipset_create(names: Names, suffix: str = "") -> list[str]:
    p = f"hashsize {names.ipset_hashsize} maxelem {names.ipset_maxelem}"
    return [
        f"create {names.ipset}-v4{suffix} hash:net family inet {p} -exist",
        f"create {names.ipset}-v6{suffix} hash:net family inet6 {p} -exist",
    ]


def _nft_head(names: Names) -> list[str]:
    t, s = names.nft_table, names.nft_set
    return [
        f"table {names.nft_family} {t} {{",
        f"    set {s}_v4 {{ type ipv4_addr; flags interval; }}",
        f"    set {s}_v6 {{ type ipv6_addr; flags interval; }}",
        "}",
    ]


def _nft_elements(verb: str, keys: list[int], names: Names) -> list[str]:
    out = []
    for fam in ("4", "6"):
        items = texts([k for k in keys if addr.is_v4(k) == (fam == "4")])
        for i in range(0, len(items), NFT_CHUNK):
            chunk = ", ".join(items[i : i + NFT_CHUNK])
            out.append(
                f"{verb} element {names.nft_family} {names.nft_table} "
                f"{names.nft_set}_v{fam} {{ {chunk} }}"
            )
    return out


def _check(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")


def full(keys: Collection[int], fmt: str, version: int, names: Names = Names()) -> str:
    """The whole set at ``version``."""
    _check(fmt)
    if fmt == "plain":
        lines = texts(ordered(keys))
    elif fmt == "cidr":
        lines = [_cidr_text(k) for k in aggregate(keys)]
    elif fmt == "ipset":
        keys_o = ordered(keys)
        lines = [f"# divertor allowlist version {version}, {len(keys_o)} entries"]
        lines += _ipset_create(names) + _ipset_create(names, "-new")
        lines += [f"flush {names.ipset}-v4-new", f"flush {names.ipset}-v6-new"]
        lines += _ipset_lines(keys_o, names, "-new", "add", "")
        for fam in ("4", "6"):
            lines += [
                f"swap {names.ipset}-v{fam}-new {names.ipset}-v{fam}",
                f"destroy {names.ipset}-v{fam}-new",
            ]
    elif fmt == "nft":
        lines = [f"# divertor allowlist version {version}", *_nft_head(names)]
        lines += [
            f"flush set {names.nft_family} {names.nft_table} {names.nft_set}_v4",
            f"flush set {names.nft_family} {names.nft_table} {names.nft_set}_v6",
        ]
        lines += _nft_elements("add", aggregate(keys), names)
    else:
        entries = texts(ordered(keys))
        doc = {"format": JSON_FORMAT, "version": version, "count": len(entries)}
        return json.dumps({**doc, "entries": entries}) + "\n"
    return "\n".join(lines) + "\n" if lines else ""


def delta(keys_now: Collection[int], d: Delta, fmt: str, names: Names = Names()) -> str:
    """The changes from version ``d.since`` to ``d.version``; ``keys_now`` is the set at
    ``d.version`` (the aggregated formats need it to aggregate both sides)."""
    _check(fmt)
    add, rem = ordered(d.added), ordered(d.removed)
    if fmt in ("cidr", "nft"):
        now = set(keys_now)
        new = set(aggregate(now))
        old = set(aggregate((now - d.added) | d.removed))
        add, rem = ordered(new - old), ordered(old - new)
    if fmt == "plain":
        lines = [f"-{addr.text(k)}" for k in rem] + [f"+{addr.text(k)}" for k in add]
    elif fmt == "cidr":
        lines = [f"-{_cidr_text(k)}" for k in rem] + [f"+{_cidr_text(k)}" for k in add]
    elif fmt == "ipset":
        lines = [f"# divertor allowlist delta {d.since} -> {d.version}"]
        lines += _ipset_create(names)
        lines += _ipset_lines(rem, names, "", "del", " -exist")
        lines += _ipset_lines(add, names, "", "add", " -exist")
    elif fmt == "nft":
        lines = [f"# divertor allowlist delta {d.since} -> {d.version}", *_nft_head(names)]
        lines += _nft_elements("delete", rem, names) + _nft_elements("add", add, names)
    else:
        doc = {"format": JSON_FORMAT, "since": d.since, "version": d.version}
        body = {"add": [addr.text(k) for k in add], "remove": [addr.text(k) for k in rem]}
        return json.dumps({**doc, **body}) + "\n"
    return "\n".join(lines) + "\n" if lines else ""


def write_atomic(path: str, text: str) -> None:
    """Write a file so that a reader sees the old or the new content, never a part."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".allowlist-", dir=directory)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
