"""Memory of the appliance daemon `divertor run` against the number of distinct destination hosts.

.venv/bin/python bench/run_memory.py [--hosts 10000,100000,1000000] [--seconds 90] [--write]

Per collector (divertor, FastNetMon through the shared harness's adapter) and host count N: a
fresh daemon protecting 10.0.0.0/12, 198.51.100.0/22, 2001:db8::/48 (thresholds never reached);
VmRSS/VmHWM (/proc/PID/status) and Pss (smaps_rollup) idle, ``--settle`` s later, after a paced
NetFlow v9 load (``--records`` IPv4 records to N distinct hosts of the /12 + 10 % IPv6 records
to N/10 hosts, now-stamped, the same records count for every N) and ``--settle`` s later.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import platform
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HARNESS = ROOT.parent / "shared" / "bench" / "collectors"
PREFIXES = ("10.0.0.0/12", "198.51.100.0/22", "2001:db8::/48")
THRESHOLDS = """version: 1
defaults:
  thresholds: {total: {pps: 1T, bps: 100T}, udp: {pps: 1T}, tcp_syn: {pps: 1T},
               amplification: {pps: 1T}, fragments: {pps: 1T}}
  host_thresholds: {udp: {pps: 1T}}
prefixes:
  10.0.0.0/12: {name: bench v4 /12}
  198.51.100.0/22: {name: bench v4 /22, announce: {mode: subnets}}
  2001:db8::/48: {name: bench v6 /48}
"""
CONFIG = """thresholds: thresholds.yaml
collector: {{listen: ["127.0.0.1:{port}"]}}
bgp: {{mode: dry-run, state_dir: bgp}}
api: {{listen: "127.0.0.1:{api}"}}
timeline: {{path: timeline.sqlite}}
"""
_T = [("sport", ">u2"), ("dport", ">u2"), ("proto", "u1")]
_T += [(n, ">u4") for n in ("pkts", "bytes", "first", "last")]
V4 = np.dtype([("src", ">u4"), ("dst", ">u4"), *_T])
V6 = np.dtype([*[(n, ">u8") for n in ("src_hi", "src_lo", "dst_hi", "dst_lo")], *_T])
TAIL = ((7, 2), (11, 2), (4, 1), (2, 4), (1, 4), (22, 4), (21, 4))  # ports .. first/last
TEMPLATES = {256: ((8, 4), (12, 4), *TAIL), 257: ((27, 16), (28, 16), *TAIL)}
PER_DGRAM = {256: (1400 - 24) // V4.itemsize, 257: (1400 - 24) // V6.itemsize}
TEMPLATE_EVERY = 256  # datagrams
_TS = [
    struct.pack(">HH", t, len(f)) + struct.pack(f">{2 * len(f)}H", *sum(f, ()))
    for t, f in TEMPLATES.items()
]
TEMPLATE_SET = struct.pack(">HH", 0, 4 + sum(map(len, _TS))) + b"".join(_TS)
MEM_COLUMNS = (("idle", ("rss", "pss")), ("idle_w", ("rss", "pss")))
MEM_COLUMNS += (("loaded", ("rss", "hwm", "pss")), ("settled", ("rss", "hwm", "pss")))


class Load:
    """The records of one pass; ``datagram(i, now)`` builds datagram i stamped with ``now``."""

    def __init__(self, hosts: int, records: int, seed: int = 1) -> None:
        rng = np.random.default_rng(seed)
        reps = max(1, records // hosts)
        v4 = (0x0A000000 + rng.choice(1 << 20, hosts, replace=False)).astype(np.uint32)
        self.dst4 = rng.permutation(np.tile(v4, reps))
        self.hosts6 = max(1, hosts // 10)
        v6 = rng.integers(0, 1 << 63, self.hosts6, dtype=np.uint64) | np.uint64(1)
        self.dst6 = rng.permutation(np.tile(v6, reps))  # 2001:db8:0:0::/64 + 64 random bits
        self.pool = {256: np.zeros(4096, V4), 257: np.zeros(4096, V6)}
        for tid, pool in self.pool.items():
            src = rng.integers(0x0B000000, 0xDF000000, 4096, dtype=np.uint32)
            pool["src" if tid == 256 else "src_lo"] = src
            if tid == 257:
                pool["src_hi"] = 0x2A00000000000000
            pool["sport"] = rng.integers(1024, 65535, 4096)
            pool["dport"] = rng.choice([53, 80, 443, 123, 5060, 8080], 4096)
            pool["proto"] = rng.choice([6, 17], 4096)
            pool["pkts"] = rng.integers(1, 20, 4096)
            pool["bytes"] = pool["pkts"] * rng.integers(60, 1400, 4096)
        # IPv6 datagrams spread evenly among the IPv4 ones: (template id, first record) each
        n = {k: math.ceil(len(d) / PER_DGRAM[k]) for k, d in ((256, self.dst4), (257, self.dst6))}
        pos = np.concatenate([np.arange(n[256]) / n[256], (np.arange(n[257]) + 0.5) / n[257]])
        first = np.concatenate([np.arange(n[k]) * PER_DGRAM[k] for k in (256, 257)])
        kind = np.repeat([256, 257], [n[256], n[257]])
        o = np.argsort(pos, kind="stable")
        self.plan = list(zip(kind[o].tolist(), first[o].tolist(), strict=True))
        self.records = len(self.dst4) + len(self.dst6)
        self.boot = time.time() - 3 * 86400.0

    def datagram(self, i: int, now: float) -> bytes:
        tid, a = self.plan[i]
        dst = self.dst4 if tid == 256 else self.dst6
        k = min(PER_DGRAM[tid], len(dst) - a)
        rec = self.pool[tid][a % 3000 : a % 3000 + k].copy()
        if tid == 256:
            rec["dst"] = dst[a : a + k]
        else:
            rec["dst_hi"], rec["dst_lo"] = 0x20010DB800000000, dst[a : a + k]
        uptime = int((now - self.boot) * 1000) & 0xFFFFFFFF
        rec["last"], rec["first"] = uptime - 1000, uptime - 3000
        body = rec.tobytes() + b"\0" * (-rec.nbytes % 4)
        sets = struct.pack(">HH", tid, 4 + len(body)) + body
        if i % TEMPLATE_EVERY == 0:
            sets, k = TEMPLATE_SET + sets, k + 2
        return struct.pack(">HHIIII", 9, k, uptime, int(now), i, 0) + sets


def mem(pid: int) -> dict[str, float]:
    """VmRSS, VmHWM and Pss of a process, MiB."""
    text = Path(f"/proc/{pid}/status").read_text() + Path(f"/proc/{pid}/smaps_rollup").read_text()
    keys = {"VmRSS:": "rss", "VmHWM:": "hwm", "Pss:": "pss"}
    lines = [f for f in map(str.split, text.splitlines()) if f and f[0] in keys]
    return {keys[f[0]]: int(f[1]) / 1024 for f in lines}


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def send(load: Load, port: int, seconds: float) -> float:
    """All datagrams evenly over ``seconds``; returns the wall time taken."""
    n = len(load.plan)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    t0 = time.monotonic()
    for i in range(n):
        ahead = t0 + i * seconds / n - time.monotonic()
        if ahead > 0.002:
            time.sleep(ahead)
        sock.sendto(load.datagram(i, time.time()), ("127.0.0.1", port))
    sock.close()
    return time.monotonic() - t0


def fixed_host_bytes() -> tuple[int, int, int]:
    """(host rows, host channels, bytes of the host window) the daemon allocates (lazily)."""
    sys.path.insert(0, str(ROOT))
    import thresholds
    from detector.prefixes import PrefixIndex
    from detector.verdicts import host_channels

    ts = thresholds.loads(THRESHOLDS, source="<run_memory>")
    rows, chans = PrefixIndex([p.prefix for p in ts.policies]).rows, len(host_channels(ts))
    return rows, chans, (math.ceil(96.0 / ts.bin_seconds) + 1) * rows * chans * 8


class Divertor:
    def __init__(self, wd: str) -> None:
        self.port, self.api = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)
        Path(wd, "thresholds.yaml").write_text(THRESHOLDS)
        Path(wd, "divertor.yaml").write_text(CONFIG.format(port=self.port, api=self.api))
        cmd = [sys.executable, "-m", "divertor.cli", "run", "--config", "divertor.yaml"]
        self.log = open(Path(wd, "daemon.log"), "w")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, cwd=wd, stdout=self.log, stderr=subprocess.STDOUT)
        self.pid, deadline = self.proc.pid, time.monotonic() + 30
        while self.proc.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                self.status()
                return
            time.sleep(0.1)
        raise RuntimeError(f"divertor run did not start; see {wd}/daemon.log")

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.api}/status", timeout=5) as r:
            return dict(json.load(r))

    def counts(self) -> dict[str, int]:
        st = self.status()
        keys = ("flow_records", "datagrams", "socket_drops", "overload_datagrams")
        return {k: int(st[k]) for k in (*keys, "timeline_backlog")}

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


class FastNetMon:
    def __init__(self, wd: str) -> None:
        sys.path.insert(0, str(HARNESS))
        import bench  # the shared harness (untyped)

        self.bench: Any = bench
        bench.COLLECTOR_CPU = "0,1"  # unpinned, as the divertor daemon
        self.port = free_port(socket.SOCK_DGRAM)
        self.fnm: Any = bench.FastNetMon(self.port, wd)
        self.fnm.prom_port = free_port(socket.SOCK_STREAM)  # not the harness's fixed 29209
        prepare = self.fnm.prepare

        def ours() -> None:  # the adapter's config, our networks
            prepare()
            Path(wd, "networks_list").write_text("\n".join(PREFIXES) + "\n")

        self.fnm.prepare = ours
        self.fnm.start()
        self.pid = self.fnm.proc.pid

    def counts(self) -> dict[str, int]:
        q = self.bench.udp_socket_stats(self.port) or (0, 0)
        return {"flow_records": self.fnm.processed(), "socket_drops": q[1]}

    def stop(self) -> None:
        self.fnm.stop()


def one_pass(kind: str, hosts: int, args: argparse.Namespace) -> dict[str, Any]:
    load = Load(hosts, args.records)
    with tempfile.TemporaryDirectory(prefix=f"runmem-{kind}-") as wd:
        d: Any = Divertor(wd) if kind == "divertor" else FastNetMon(wd)
        try:
            time.sleep(args.idle)
            row: dict[str, Any] = {"collector": kind, "hosts": hosts, "hosts6": load.hosts6}
            row |= {"records": load.records, "datagrams": len(load.plan), "idle": mem(d.pid)}
            time.sleep(args.settle)  # the window passes, no traffic yet
            row["idle_w"] = mem(d.pid)
            print(f"{kind} {hosts:,}: idle {row['idle']} {row['idle_w']}; sending", flush=True)
            row["send_s"] = send(load, d.port, args.seconds)
            for _ in range(60):  # until everything sent is counted (or 60 s)
                time.sleep(1.0)
                if d.counts()["flow_records"] >= load.records:
                    break
            row["loaded"], row["counts"] = mem(d.pid), d.counts()
            print(f"  after load {row['loaded']} {row['counts']}", flush=True)
            time.sleep(args.settle)
            row["settled"], row["counts_settled"] = mem(d.pid), d.counts()
            print(f"  after {args.settle:.0f} s {row['settled']}", flush=True)
            if kind == "divertor":
                files = Path(wd).glob("timeline.sqlite*")
                row["store_mb"] = sum(f.stat().st_size for f in files) / 2**20
        finally:
            d.stop()
    return row


def git_rev() -> str:
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True)
    return git.stdout.decode().strip()


def conditions(
    args: argparse.Namespace, t0: float, load0: tuple[float, ...], rev: str
) -> dict[str, str]:
    cpu = Path("/proc/cpuinfo").read_text().split("model name")[1].split("\n")[0].strip(" :\t")
    fnm = subprocess.run(["dpkg-query", "-Wf", "${Version}", "fastnetmon"], capture_output=True)
    rows, chans, nbytes = fixed_host_bytes()
    now = git_rev()
    t = [dt.datetime.fromtimestamp(x, dt.UTC).strftime("%Y-%m-%d %H:%M") for x in (t0, time.time())]
    la = [" / ".join(f"{x:.2f}" for x in avg) for avg in (load0, os.getloadavg())]
    v4, v6, rate = args.records, args.records // 10, args.records * 1.1 / args.seconds
    return {
        "date (UTC)": f"{t[0]} – {t[1]}",
        "machine": f"{cpu} × {os.cpu_count()} vCPU, kernel {platform.release()}",
        "software": f"CPython {platform.python_version()}, numpy {np.__version__}, divertor git "
        f"{rev} (working tree{', HEAD ' + now + ' at the end' if now != rev else ''}), "
        f"FastNetMon {fnm.stdout.decode()}",
        "load avg 1/5/15 start → end": f"{la[0]} → {la[1]}",
        "pinning": "none (daemon, FastNetMon, sender = this script)",
        "config": "divertor.yaml: collector.listen 127.0.0.1:PORT, bgp dry-run, api on, timeline"
        " SQLite, detector window 96 s; thresholds total/udp/tcp_syn/amplification/fragments pps"
        f" 1T, host udp pps 1T on {', '.join(PREFIXES)}; FastNetMon: bench.py adapter config",
        "host window": f"{rows:,} host rows (65,536 hashed + 1,024 dense + 4,096 hashed) × "
        f"{chans} channels × 97 bins × 8 B = {nbytes / 2**20:.0f} MiB, np.zeros (lazily paged)",
        "load": f"NetFlow v9, {v4:,} IPv4 records to N hosts of 10.0.0.0/12 + {v6:,} IPv6 to "
        f"N/10 of 2001:db8::/48 ({PER_DGRAM[256]} / {PER_DGRAM[257]} per datagram, templates "
        f"every {TEMPLATE_EVERY}), over {args.seconds:.0f} s ≈ {rate:,.0f} rec/s, now-stamped",
        "measured": f"MiB of the daemon process: idle {args.idle:.0f} s after start, then "
        f"+{args.settle:.0f} s (settle), load, when all is counted, +{args.settle:.0f} s",
    }


def table(rows: list[dict[str, Any]]) -> list[str]:
    out = [
        "| collector | distinct v4 / v6 hosts | records / datagrams | counted | socket drops"
        " / overload | idle RSS / PSS | idle +settle RSS / PSS | after load RSS / HWM / PSS |"
        " load +settle RSS / HWM / PSS |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        c = r["counts_settled"]
        m = [" / ".join(f"{r[k][x]:.0f}" for x in xs) for k, xs in MEM_COLUMNS]
        out.append(
            f"| {r['collector']} | {r['hosts']:,} / {r['hosts6']:,} | {r['records']:,} / "
            f"{r['datagrams']:,} | {c['flow_records']:,} | {c['socket_drops']} / "
            f"{c.get('overload_datagrams', '–')} | {' | '.join(m)} |"
        )
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hosts", default="10000,100000,1000000")
    ap.add_argument("--collectors", default="divertor,fastnetmon")
    ap.add_argument("--records", type=int, default=3_000_000, help="IPv4 records per pass")
    ap.add_argument("--seconds", type=float, default=90.0)
    ap.add_argument("--settle", type=float, default=100.0)
    ap.add_argument("--idle", type=float, default=5.0)
    ap.add_argument("--write", action="store_true", help="append a section to bench/RESULTS.md")
    args = ap.parse_args()
    os.chdir(ROOT)
    t0, load0, rev = time.time(), os.getloadavg(), git_rev()
    rows = []
    for kind in args.collectors.split(","):
        for hosts in [int(h) for h in args.hosts.split(",")]:
            try:
                rows.append(one_pass(kind, hosts, args))
            except (OSError, RuntimeError) as e:
                print(f"{kind} {hosts}: skipped: {e}", flush=True)
    cond = conditions(args, t0, load0, rev)
    text = ["| item | value |", "| --- | --- |", *[f"| {k} | {v} |" for k, v in cond.items()]]
    text += ["", *table(rows)]
    store = [f"{r['hosts']:,}: {r['store_mb']:.1f} MiB" for r in rows if "store_mb" in r]
    text += ["", f"Timeline store after the pass (SQLite file): {'; '.join(store)}."]
    print("\n".join(text))
    if args.write:
        title = f"## {cond['date (UTC)'][:16]} UTC — `divertor run` memory vs distinct hosts"
        with open(ROOT / "bench" / "RESULTS.md", "a") as fh:
            fh.write(f"\n{title}\n\n`bench/run_memory.py --write`\n\n" + "\n".join(text) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
