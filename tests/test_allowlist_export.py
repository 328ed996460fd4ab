"""Export formats: what the scrubbing side loads, and deltas that bring version a to b.

ipset and nftables outputs are loaded by the real tools, inside a throw-away network
namespace (the host's sets and rules are never touched). The expected sets are computed
here with ipaddress.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from allowlist import addr, export
from allowlist.service import delta_since
from allowlist.state import AllowlistState
from allowlist.store import Store
from allowlist.versions import Delta

Net = ipaddress.IPv4Network | ipaddress.IPv6Network


def _versions(tmp_path: Path) -> tuple[set[int], set[int], Delta, int, int]:
    """Two versions of a set (prefixes over hosts, runs that aggregate, IPv6), the delta."""
    st = AllowlistState(record=True)
    store = Store(str(tmp_path / "x.sqlite"))
    t = 1000.0

    def add(text: str, source: str = "feed") -> None:
        st.add(addr.parse(text), source, 1e12, t)

    for i in range(0, 256, 1):
        if i != 77:
            add(f"10.9.8.{i}")  # a /24 but for one address
    for i in range(40):
        add(f"172.16.{i}.{i * 3 % 256}")
        add(f"2001:db8:{i:x}::{i + 1:x}")
    add("192.0.2.0/24", "static")
    add("192.0.2.5")  # inside the static prefix
    add("198.51.100.0/25")
    add("198.51.100.128/25")  # adjacent: one /24 when aggregated
    add("2001:db8:ff00::/40", "static")
    add("255.255.255.255")
    a_keys, a = st.keys(), st.version
    store.flush(st)
    t = 2000.0
    add("10.9.8.77")  # completes the /24
    for i in range(0, 40, 3):
        st.remove(addr.parse(f"172.16.{i}.{i * 3 % 256}"), "feed", t)
        st.remove(addr.parse(f"2001:db8:{i:x}::{i + 1:x}"), "feed", t)
    st.remove(addr.parse("198.51.100.128/25"), "feed", t)
    st.remove(addr.parse("192.0.2.5"), "feed", t)  # still covered by the prefix
    add("2001:db8:ff00::/40")  # held twice now: no change of the set
    add("203.0.113.9")
    add("2001:db8:aaaa::1")
    d = delta_since(st, store, a)
    return a_keys, st.keys(), d, a, st.version


def _networks(keys: set[int]) -> set[Net]:
    return {ipaddress.ip_network(addr.text(k)) for k in keys}


def _collapsed(keys: set[int]) -> set[Net]:
    nets = _networks(keys)
    out: set[Net] = set()
    for version in (4, 6):
        out.update(ipaddress.collapse_addresses(n for n in nets if n.version == version))
    return out


def test_aggregate_is_the_fewest_disjoint_cidrs(tmp_path: Path) -> None:
    a_keys, b_keys, *_ = _versions(tmp_path)
    for keys in (a_keys, b_keys):
        got = {ipaddress.ip_network(addr.text(k)) for k in export.aggregate(keys)}
        assert got == _collapsed(keys)
    assert ipaddress.ip_network("10.9.8.0/24") in _collapsed(b_keys)
    assert export.aggregate([]) == []
    free = addr.Limits(0, 0)
    everything = {addr.parse("0.0.0.0/1", free), addr.parse("128.0.0.0/1", free)}
    assert [addr.text(k) for k in export.aggregate(everything)] == ["0.0.0.0/0"]


@pytest.mark.parametrize("fmt", ["plain", "cidr"])
def test_line_formats_delta_applied_to_full_gives_full(tmp_path: Path, fmt: str) -> None:
    a_keys, b_keys, d, a, b = _versions(tmp_path)
    old = set(export.full(a_keys, fmt, a).split())
    new = export.full(b_keys, fmt, b).split()
    lines = export.delta(b_keys, d, fmt).split()
    assert lines and all(x[0] in "+-" for x in lines)
    applied = (old - {x[1:] for x in lines if x[0] == "-"}) | {x[1:] for x in lines if x[0] == "+"}
    assert applied == set(new)
    want = _networks(b_keys) if fmt == "plain" else _collapsed(b_keys)
    assert {ipaddress.ip_network(x) for x in new} == want
    if fmt == "plain":
        assert "192.0.2.5" in old and "192.0.2.5" not in new and "-192.0.2.5" in lines
        assert "2001:db8:ff00::/40" in new and not any("ff00" in x for x in lines)
    else:
        assert all("/" in x for x in new) and "10.9.8.0/24" in new and "+10.9.8.0/24" in lines


def test_json_full_and_delta(tmp_path: Path) -> None:
    a_keys, b_keys, d, a, b = _versions(tmp_path)
    old = json.loads(export.full(a_keys, "json", a))
    new = json.loads(export.full(b_keys, "json", b))
    dd = json.loads(export.delta(b_keys, d, "json"))
    assert (old["version"], new["version"], dd["since"], dd["version"]) == (a, b, a, b)
    assert new["count"] == len(new["entries"]) == len(b_keys)
    assert (set(old["entries"]) - set(dd["remove"])) | set(dd["add"]) == set(new["entries"])
    assert {ipaddress.ip_network(x) for x in new["entries"]} == _networks(b_keys)


# --------------------------------------------------------------------------- real tools
def _tools_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespace, ipset, nft)"
    for tool in ("ip", "ipset", "nft"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install iproute2 ipset nftables)"
    return None


@pytest.fixture
def netns() -> Iterator[str]:
    reason = _tools_reason()
    if reason:
        pytest.skip(reason)
    name = f"divertor-test-{uuid.uuid4().hex[:8]}"
    made = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if made.returncode:
        pytest.skip(f"cannot create a network namespace here: {made.stderr.strip()}")
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "exec", name, "ipset", "destroy"], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _in(ns: str, *cmd: str, stdin: str = "") -> str:
    r = subprocess.run(
        ["ip", "netns", "exec", ns, *cmd], input=stdin, capture_output=True, text=True
    )
    assert r.returncode == 0, (cmd, r.stderr, stdin[:2000])
    return r.stdout


def _ipset_members(ns: str) -> dict[str, set[Net]]:
    out: dict[str, set[Net]] = {}
    for line in _in(ns, "ipset", "save").splitlines():
        parts = line.split()
        if parts[0] == "create":
            out[parts[1]] = set()
        elif parts[0] == "add":
            out[parts[1]].add(ipaddress.ip_network(parts[2]))
    return out


def test_ipset_restore_full_and_delta(tmp_path: Path, netns: str) -> None:
    a_keys, b_keys, d, a, b = _versions(tmp_path)
    names = export.Names(ipset="dv_allow")
    _in(netns, "ipset", "restore", stdin=export.full(a_keys, "ipset", a, names))
    _in(netns, "ipset", "restore", stdin=export.full(a_keys, "ipset", a, names))  # again: ok
    first = _ipset_members(netns)
    assert set(first) == {"dv_allow-v4", "dv_allow-v6"}  # the -new sets are gone
    assert first["dv_allow-v4"] | first["dv_allow-v6"] == _networks(a_keys)
    _in(netns, "ipset", "restore", stdin=export.delta(b_keys, d, "ipset", names))
    via_delta = _ipset_members(netns)
    _in(netns, "ipset", "restore", stdin=export.full(b_keys, "ipset", b, names))
    via_full = _ipset_members(netns)
    assert via_delta == via_full
    assert via_full["dv_allow-v4"] | via_full["dv_allow-v6"] == _networks(b_keys)


def _nft_elements(ns: str, names: export.Names) -> set[Net]:
    out: set[Net] = set()
    for fam in ("4", "6"):
        doc = json.loads(
            _in(ns, "nft", "-j", "list", "set", "inet", names.nft_table, f"{names.nft_set}_v{fam}")
        )
        for item in doc["nftables"]:
            for e in item.get("set", {}).get("elem", []):
                if isinstance(e, str):
                    out.add(ipaddress.ip_network(e))
                elif "prefix" in e:
                    out.add(ipaddress.ip_network(f"{e['prefix']['addr']}/{e['prefix']['len']}"))
                else:
                    lo, hi = (ipaddress.ip_address(x) for x in e["range"])
                    out.update(ipaddress.summarize_address_range(lo, hi))  # type: ignore[arg-type]
    return out


def test_nft_full_and_delta(tmp_path: Path, netns: str) -> None:
    a_keys, b_keys, d, a, b = _versions(tmp_path)
    names = export.Names(nft_table="dvtest", nft_set="allow")
    full_a = export.full(a_keys, "nft", a, names)
    check = subprocess.run(["nft", "-c", "-f", "-"], input=full_a, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    _in(netns, "nft", "-f", "-", stdin=full_a)
    _in(netns, "nft", "-f", "-", stdin=full_a)  # a full load is repeatable
    assert _nft_elements(netns, names) == _collapsed(a_keys)
    _in(netns, "nft", "-f", "-", stdin=export.delta(b_keys, d, "nft", names))
    via_delta = _nft_elements(netns, names)
    _in(netns, "nft", "-f", "-", stdin=export.full(b_keys, "nft", b, names))
    assert via_delta == _nft_elements(netns, names) == _collapsed(b_keys)


def test_write_atomic_replaces_whole_files(tmp_path: Path) -> None:
    path = tmp_path / "allow.txt"
    export.write_atomic(str(path), "1.2.3.4\n")
    export.write_atomic(str(path), "5.6.7.8\n")
    assert path.read_text() == "5.6.7.8\n"
    assert [p.name for p in tmp_path.iterdir()] == ["allow.txt"]  # no temporary left


def test_bad_format_and_names_are_refused() -> None:
    with pytest.raises(ValueError, match="format 'xml'"):
        export.full(set(), "xml", 1)
    with pytest.raises(ValueError, match="set name"):
        export.Names(ipset="bad name")
