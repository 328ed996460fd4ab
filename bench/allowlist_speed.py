"""Allowlist speed at 10^6 entries: updates/s, lookups/s, sustained churn, memory, store.

Usage: taskset -c 1 .venv/bin/python bench/allowlist_speed.py [--entries N] [--write]

* build: 10^6 entries (90 % IPv4 hosts, 10 % IPv6 hosts, 1,000 IPv4/IPv6 prefixes) added
  to the sans-I/O state, then merged into the lookup arrays;
* updates: feed lines (JSON text) parsed and applied: new adds, refreshes, removes; with
  and without the durable store (SQLite WAL change log);
* lookups: whole FlowBatch source columns (100k and 1M records; 50 % members; 90 % IPv4)
  in one call; repeated, best of N;
* sustained: 60 s of event time at 100k updates/min (1,667/s), one 100k-record batch
  looked up per second (each lookup merges the pending updates): CPU time per minute;
* memory: RSS growth of the process for the state (Python dicts and buckets) and the bytes
  of the lookup arrays; checkpoint and restore of the store; full exports.

With ``--write`` the figures are appended to bench/RESULTS.md under "Allowlist".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from allowlist import addr, export  # noqa: E402
from allowlist.feed import apply, parse_lines  # noqa: E402
from allowlist.state import AllowlistState  # noqa: E402
from allowlist.store import Store  # noqa: E402


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def population(n: int, rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """Keys of n distinct hosts (90 % IPv4) and 1,000 prefixes."""
    n4 = n * 9 // 10
    v4 = np.unique(rng.integers(1 << 24, 0xE0000000, int(n4 * 1.05), dtype=np.uint64))[:n4]
    rng.shuffle(v4)
    hosts = [((addr.MAPPED | int(v)) << 8) | 128 for v in v4.tolist()]
    hi = rng.integers(0x2000 << 48, 0x3FFF << 48, n - n4, dtype=np.uint64)
    lo = rng.integers(0, 1 << 63, n - n4, dtype=np.uint64)
    hosts += [(((h << 64) | x) << 8) | 128 for h, x in zip(hi.tolist(), lo.tolist(), strict=True)]
    prefixes = [((addr.MAPPED | (int(v) & ~0xFF)) << 8) | 120 for v in v4[:800].tolist()]
    prefixes += [((h & ~0xFFFF) << 72) | 48 for h in hi[:200].tolist()]
    return hosts, prefixes


def columns(keys: list[int], rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """A FlowBatch-like source column of n records: half members, 90 % IPv4."""
    pick = rng.choice(len(keys), n // 2)
    vals = [keys[i] >> 8 for i in pick.tolist()]
    rand4 = rng.integers(0, 1 << 32, n - n // 2 - n // 20, dtype=np.uint64)
    vals += [addr.MAPPED | int(v) for v in rand4.tolist()]
    vals += [(0x2A00 << 112) | int(v) for v in rng.integers(0, 1 << 62, n // 20).tolist()]
    order = rng.permutation(len(vals))
    hi = np.array([vals[i] >> 64 for i in order.tolist()], dtype=np.uint64)
    lo = np.array([vals[i] & (2**64 - 1) for i in order.tolist()], dtype=np.uint64)
    return hi, lo


def feed_lines(keys: list[int], rng: random.Random, n: int, t: float) -> list[str]:
    """n feed lines: 70 % refreshes of members, 20 % new addresses, 10 % removes."""
    out = []
    for i in range(n):
        r = rng.random()
        ts = t + i * 1e-4
        if r < 0.7:
            ip = addr.text(rng.choice(keys))
            out.append(json.dumps({"time": ts, "op": "add", "ip": ip, "ttl": 3600}))
        elif r < 0.9:
            ip = f"{rng.randrange(224)}.{rng.randrange(256)}.{rng.randrange(256)}.{i % 256}"
            out.append(json.dumps({"time": ts, "op": "add", "ip": ip, "ttl": 1800}))
        else:
            ip = addr.text(rng.choice(keys))
            out.append(json.dumps({"time": ts, "op": "remove", "ip": ip, "ttl": 0}))
    return out


def timed(fn: object, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--entries", type=int, default=1_000_000)
    ap.add_argument("--write", action="store_true", help="append to bench/RESULTS.md")
    args = ap.parse_args()
    rng = np.random.default_rng(1)
    prng = random.Random(1)
    res: dict[str, float] = {}
    rss0 = rss_mb()
    hosts, prefixes = population(args.entries, rng)
    rss_keys = rss_mb()
    st = AllowlistState()
    t_start = 1_740_000_000.0
    t0 = time.perf_counter()
    for k in hosts:
        st.add(k, "feed", t_start + 600 + prng.random() * 3000, t_start)
    for k in prefixes:
        st.add(k, "static", float("inf"), t_start)
    res["build_adds_per_s"] = (len(hosts) + len(prefixes)) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    st.index.sync()
    res["build_merge_s"] = time.perf_counter() - t0
    res["rss_state_mb"] = rss_mb() - rss_keys
    res["rss_keys_mb"] = rss_keys - rss0
    res["index_mb"] = st.index.nbytes / 2**20
    res["entries"] = len(st)

    for n in (100_000, 1_000_000):
        hi, lo = columns(hosts, rng, n)
        got = st.index(hi, lo)
        assert 0.45 < got.mean() < 0.6, got.mean()
        res[f"lookup_{n}_per_s"] = n / timed(lambda hi=hi, lo=lo: st.index(hi, lo))
    hi, lo = columns(hosts, rng, 100_000)

    # updates: parse + apply (sans-I/O), then with the durable store
    lines = feed_lines(hosts, prng, 100_000, t_start + 1)
    t0 = time.perf_counter()
    regs, _ = parse_lines(lines)
    res["parse_per_s"] = len(lines) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for reg in regs:
        apply(st, reg)
    res["apply_per_s"] = len(regs) / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    st.index.sync()
    res["merge_100k_updates_s"] = time.perf_counter() - t0

    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "a.sqlite")
        store = Store(db)
        st.record = True
        lines = feed_lines(hosts, prng, 100_000, t_start + 20)
        t0 = time.perf_counter()
        regs, _ = parse_lines(lines)
        for reg in regs:
            apply(st, reg)
        store.flush(st)
        res["durable_updates_per_s"] = len(lines) / (time.perf_counter() - t0)
        # sustained: 100k updates a minute with one 100k-record lookup per second
        per_s = 100_000 // 60
        minute = [feed_lines(hosts, prng, per_s, t_start + 40 + s) for s in range(60)]
        c0 = time.process_time()
        w0 = time.perf_counter()
        for s in range(60):
            regs, _ = parse_lines(minute[s])
            for reg in regs:
                apply(st, reg)
            st.advance(t_start + 41 + s)
            store.flush(st)
            st.index(hi, lo)
        res["sustained_cpu_s_per_min"] = time.process_time() - c0
        res["sustained_wall_s_per_min"] = time.perf_counter() - w0
        t0 = time.perf_counter()
        store.checkpoint(st)
        res["checkpoint_s"] = time.perf_counter() - t0
        res["db_mb"] = sum(os.path.getsize(os.path.join(tmp, f)) for f in os.listdir(tmp)) / 2**20
        store.close()
        again = AllowlistState()
        t0 = time.perf_counter()
        Store(db).load(again)
        res["restore_s"] = time.perf_counter() - t0
        assert again.keys() == st.keys()
        del again
    keys = st.keys()
    for fmt in ("plain", "cidr", "ipset", "json"):
        res[f"export_{fmt}_s"] = timed(lambda fmt=fmt: export.full(keys, fmt, st.version), 1)
    res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report(res, args.write)
    return 0


def report(r: dict[str, float], write: bool) -> None:
    git = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "allowlist"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    git += " + uncommitted allowlist/" if dirty else ""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    cond = (
        f"{cpu_model()} ({os.cpu_count()} vCPU), affinity {sorted(os.sched_getaffinity(0))}, "
        f"Linux {platform.release()}, CPython {platform.python_version()}, "
        f"numpy {np.__version__}, git {git}, load {os.getloadavg()[0]:.2f}"
    )
    rows = [
        ("entries (hosts + prefixes)", f"{r['entries']:,.0f}"),
        ("build: adds/s into the state (keys given)", f"{r['build_adds_per_s']:,.0f}"),
        ("build: first merge into the lookup arrays", f"{r['build_merge_s'] * 1e3:.0f} ms"),
        ("lookups/s, 100k-record FlowBatch column", f"{r['lookup_100000_per_s'] / 1e6:.1f} M"),
        ("lookups/s, 1M-record FlowBatch column", f"{r['lookup_1000000_per_s'] / 1e6:.1f} M"),
        ("feed lines parsed/s (JSON, address)", f"{r['parse_per_s']:,.0f}"),
        ("updates applied/s (sans-I/O state)", f"{r['apply_per_s']:,.0f}"),
        ("merge of 100k pending updates", f"{r['merge_100k_updates_s'] * 1e3:.0f} ms"),
        ("durable updates/s (parse + apply + SQLite log)", f"{r['durable_updates_per_s']:,.0f}"),
        (
            "sustained 100k updates/min + 1 lookup of 100k/s: CPU per minute",
            f"{r['sustained_cpu_s_per_min']:.2f} s ({r['sustained_cpu_s_per_min'] / 60:.1%})",
        ),
        ("checkpoint of the whole set (SQLite)", f"{r['checkpoint_s']:.1f} s"),
        ("restore from the store (checkpoint + log)", f"{r['restore_s']:.1f} s"),
        ("store size on disk (WAL included)", f"{r['db_mb']:.0f} MB"),
        ("lookup arrays (index bytes)", f"{r['index_mb']:.1f} MB"),
        ("RSS growth for the state (dicts, buckets, index)", f"{r['rss_state_mb']:.0f} MB"),
        ("peak RSS of the bench process", f"{r['peak_rss_mb']:.0f} MB"),
        *[
            (f"full export, {f}", f"{r[f'export_{f}_s']:.1f} s")
            for f in ("plain", "cidr", "ipset", "json")
        ],
    ]
    text = [
        f"### {when} — allowlist_speed.py",
        "",
        f"Conditions: {cond}. One process, one core (`taskset -c 1`); 90 % IPv4 / 10 % IPv6",
        "hosts, 800 IPv4 /24 and 200 IPv6 /48 prefixes; lookup columns 50 % members, 5 % IPv6;",
        "feed mix 70 % refresh, 20 % new, 10 % remove.",
        "",
        "| measure | value |",
        "| --- | ---: |",
        *[f"| {a} | {b} |" for a, b in rows],
        "",
    ]
    print("\n".join(text))
    if write:
        path = ROOT / "bench" / "RESULTS.md"
        current = path.read_text()  # re-read right before appending (others append too)
        head = "" if "\n## Allowlist\n" in current else "\n## Allowlist\n\n"
        with path.open("a") as fh:
            fh.write(("" if current.endswith("\n") else "\n") + head + "\n".join(text) + "\n")


if __name__ == "__main__":
    sys.exit(main())
