#!/usr/bin/env python3
"""Ingest benchmark: Divertor's collector against nfacctd and FastNetMon, in one run.

Uses the shared loopback harness (``shared/bench/collectors/bench.py``) from where it is,
without modifying it:

* ``bench.py`` is imported by path (module name ``nfbench_harness``); the Divertor adapters are
  registered into its ``ADAPTERS`` dict, then its ``trial()`` / ``search()`` are called.
* The harness writes next to itself (it compiles ``blaster``/``rawrecv`` into its own directory
  and appends to ``results/``).  We point its ``HERE`` at ``bench/out/harness/`` (symlinks to
  the shared sources), so binaries and ``trials.jsonl`` / ``summary.jsonl`` land in
  ``bench/out/`` (git-ignored), and its ``VENV_PY`` at the project's venv (only used to run
  ``gen_packets.py``, which needs the standard library only).

Commands::

    ingest.py compare [--collectors divertor,nfacctd,fastnetmon-bigbuf] [--versions v5,v9,ipfix]
                      [--quick] [--write]
    ingest.py trial   -c nfacctd -v v9 -r 100000 -d 3      one fixed-rate run (smoke test)
    ingest.py report  bench/out/results/ingest-<ts>.json [--write]   re-render a saved run
    ingest.py list

Run as root (``net.core.rmem_max`` / ``rmem_default``), on a machine with >= 2 CPUs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import hashlib
import importlib.util
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, TextIO

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = BENCH_DIR.parent
DEFAULT_HARNESS = Path(
    os.environ.get(
        "DIVERTOR_BENCH_HARNESS", str(PROJECT_ROOT.parent / "shared" / "bench" / "collectors")
    )
)
DEFAULT_OUT = BENCH_DIR / "out"  # git-ignored (/bench/out/ in the project's .gitignore)
PROJECT_PY = PROJECT_ROOT / ".venv" / "bin" / "python"
DEFAULT_DIVERTOR_BIN = PROJECT_ROOT / ".venv" / "bin" / "divertor"
RESULTS_MD = BENCH_DIR / "RESULTS.md"

HARNESS_MODULE = "nfbench_harness"
# Files bench.py expects next to itself (HERE); symlinked into our shadow directory.
HARNESS_SOURCES = ("blaster.c", "rawrecv.c", "gen_packets.py", "pynetflow_collector.py")
RCVBUF = 33554432  # 32 MiB, what the harness gives the other peers

DEFAULT_COLLECTORS = ("divertor", "nfacctd", "fastnetmon-bigbuf")
DEFAULT_VERSIONS = ("v5", "v9", "ipfix")
REFERENCE_PEERS = ("nfacctd", "fastnetmon-bigbuf")
PEER_PACKAGES = ("pmacct", "nfdump", "fastnetmon", "gcc")
FASTNETMON_PROM_PORT = 29209  # fixed in bench.py's FastNetMon adapter

# Which executables each harness adapter needs (divertor* is checked separately).
REQUIRED_TOOLS: dict[str, tuple[str, ...]] = {
    "nfacctd": ("nfacctd", "pmacct"),
    "nfcapd": ("nfcapd", "nfdump"),
    "fastnetmon": ("fastnetmon",),
    "fastnetmon-bigbuf": ("fastnetmon",),
}


def log(*parts: object) -> None:
    print(time.strftime("%H:%M:%S"), *parts, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ harness loading
def load_harness(harness_dir: Path, out_dir: Path, port: int | None = None) -> ModuleType:
    """Import bench.py by path and redirect everything it writes into ``out_dir``."""
    bench_py = harness_dir / "bench.py"
    if not bench_py.is_file():
        sys.exit(f"harness not found: {bench_py} (set --harness or DIVERTOR_BENCH_HARNESS)")
    spec = importlib.util.spec_from_file_location(HARNESS_MODULE, bench_py)
    if spec is None or spec.loader is None:
        sys.exit(f"cannot import {bench_py}")
    h = importlib.util.module_from_spec(spec)
    sys.modules[HARNESS_MODULE] = h
    saved, sys.dont_write_bytecode = sys.dont_write_bytecode, True  # no __pycache__ in shared/
    try:
        spec.loader.exec_module(h)
    finally:
        sys.dont_write_bytecode = saved

    shadow = out_dir / "harness"
    results = out_dir / "results"
    shadow.mkdir(parents=True, exist_ok=True)
    results.mkdir(parents=True, exist_ok=True)
    for name in HARNESS_SOURCES:
        _symlink(shadow / name, harness_dir / name)
    _symlink(shadow / "results", results)  # search() writes HERE/results/summary.jsonl

    # Module globals read at call time (ModuleType has no typed setters, hence __dict__):
    # HERE: build_tools(), make_stream(), trial()'s blaster path, search()'s summary.jsonl;
    # VENV_PY: gen_packets.py (stdlib only; the py-netflow peer is not used).
    h.__dict__.update(
        HERE=str(shadow), RESULTS=str(results / "trials.jsonl"), VENV_PY=str(PROJECT_PY)
    )
    if port is not None:
        h.__dict__["PORT"] = port
    return h


def _symlink(link: Path, target: Path) -> None:
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(target)


# ------------------------------------------------------------------ Divertor adapter
class DivertorAdapterMixin:
    """Divertor collector (`divertor collect`); flow_records from --stats-file after SIGTERM.

    Combined with the harness's ``Adapter`` at registration time (``register_divertor``);
    ``port``/``wd`` are set by ``Adapter.__init__``.
    """

    name = "divertor"
    versions: tuple[str, ...] = DEFAULT_VERSIONS
    stop_signal = signal.SIGTERM
    startup_timeout = 30.0  # interpreter + numpy import before the socket is bound
    extra_args: tuple[str, ...] = ()  # per-variant flags (divertor-rates: --rates)
    divertor_bin: str = str(DEFAULT_DIVERTOR_BIN)
    common_args: tuple[str, ...] = ()  # from --divertor-arg, for every variant

    port: int
    wd: str
    stats: dict[str, Any] | None = None

    @property
    def stats_file(self) -> Path:
        return Path(self.wd) / "stats.json"

    def command(self) -> list[str]:
        return [
            self.divertor_bin, "collect",
            "--listen", f"127.0.0.1:{self.port}",
            "--rcvbuf", str(RCVBUF),
            "--stats-file", str(self.stats_file),
            *self.common_args, *self.extra_args,
        ]  # fmt: skip

    def processed(self) -> int | None:
        return None  # counted after stop

    def processed_after_stop(self) -> int:
        if not self.stats_file.exists():
            logtail = _tail(Path(self.wd) / "collector.log")
            raise RuntimeError(f"{self.name}: no {self.stats_file} after SIGTERM; log:\n{logtail}")
        with self.stats_file.open() as f:
            self.stats = json.load(f)
        return int(self.stats["flow_records"])

    def info(self) -> dict[str, Any]:
        return {"divertor_stats": self.stats, "divertor_cmd": self.command()}


class DivertorRatesMixin(DivertorAdapterMixin):
    """Divertor collector running the whole pipeline: decode, prefix lookup, classes, rates
    per prefix and host, verdicts every second, incidents, dry-run planner
    (bench/divertor-bench.yaml: the generator's prefixes, thresholds it never reaches)."""

    name = "divertor-rates"
    extra_args = ("--config", str(PROJECT_ROOT / "bench" / "divertor-bench.yaml"))


class DivertorRunMixin(DivertorAdapterMixin):
    """The appliance, `divertor run`: receive thread, decode, rates, verdicts, incidents,
    BGP worker (dry-run), timeline store writer (SQLite, every settled bin), HTTP API.
    flow_records is read from its /status after the grace, as FastNetMon's from Prometheus."""

    name = "divertor-run"

    @property
    def api_port(self) -> int:
        return 20000 + self.port % 10000

    def command(self) -> list[str]:
        conf = Path(self.wd) / "divertor.yaml"
        conf.write_text(
            f"""thresholds: {PROJECT_ROOT / "bench" / "bench-thresholds.yaml"}
collector:
  listen: ["127.0.0.1:{self.port}"]
  rcvbuf: {RCVBUF}
bgp: {{mode: dry-run, state_dir: bgp}}
api: {{listen: "127.0.0.1:{self.api_port}"}}
timeline: {{path: timeline.sqlite}}
"""
        )
        return [self.divertor_bin, "run", "--config", str(conf), *self.common_args]

    def processed(self) -> int | None:
        import urllib.request

        url = f"http://127.0.0.1:{self.api_port}/status"
        with urllib.request.urlopen(url, timeout=30) as resp:
            self.stats = json.load(resp)
        return int(self.stats["flow_records"])

    def processed_after_stop(self) -> int:
        assert self.stats is not None
        return int(self.stats["flow_records"])


DIVERTOR_VARIANTS: tuple[type[DivertorAdapterMixin], ...] = (
    DivertorAdapterMixin,
    DivertorRatesMixin,
    DivertorRunMixin,
)


def register_divertor(
    h: ModuleType, divertor_bin: str, common_args: Sequence[str] = ()
) -> list[str]:
    """Create harness adapter classes for every Divertor variant and add them to h.ADAPTERS."""
    names = []
    for mixin in DIVERTOR_VARIANTS:
        cls = type(
            mixin.__name__.replace("Mixin", ""),
            (mixin, h.Adapter),
            {
                "__doc__": mixin.__doc__,
                "divertor_bin": divertor_bin,
                "common_args": tuple(common_args),
            },
        )
        h.ADAPTERS[mixin.name] = cls
        names.append(mixin.name)
    return names


def is_divertor(collector: str) -> bool:
    return collector.startswith("divertor")


# ------------------------------------------------------------------ checks
def preflight(h: ModuleType, collectors: Sequence[str], divertor_bin: str) -> list[str]:
    """Problems that would make a run fail or measure nonsense (empty list = fine)."""
    problems = []
    for c in collectors:
        if c not in h.ADAPTERS:
            problems.append(f"unknown collector {c!r}; known: {', '.join(h.ADAPTERS)}")
    if os.geteuid() != 0:
        problems.append(
            "not root: net.core.rmem_max cannot be raised (and fastnetmon-bigbuf "
            "needs to write net.core.rmem_default)"
        )
    ncpu = os.cpu_count() or 1
    pinned = [h.COLLECTOR_CPU, h.BLASTER_CPU]
    if any(int(c) >= ncpu for c in pinned if c.isdigit()):
        problems.append(f"pinning to CPUs {pinned} but only {ncpu} CPU(s)")
    for tool in ("gcc", "taskset"):
        if shutil.which(tool) is None:
            problems.append(f"{tool} not found")
    for c in collectors:
        for tool in REQUIRED_TOOLS.get(c, ()):
            if shutil.which(tool) is None:
                problems.append(f"{c}: {tool} not found (apt-get install pmacct nfdump fastnetmon)")
    if any(is_divertor(c) for c in collectors):
        if not os.access(divertor_bin, os.X_OK):
            problems.append(f"divertor: {divertor_bin} not executable")
        else:
            r = subprocess.run(
                [divertor_bin, "collect", "--help"], capture_output=True, text=True, timeout=120
            )
            if r.returncode != 0:
                problems.append(
                    f"divertor: `{divertor_bin} collect --help` failed "
                    f"(rc={r.returncode}): {(r.stderr or r.stdout).strip()[-300:]}"
                )
    # The harness's default readiness check is "something is bound to the UDP port": a stale
    # collector still holding it would make every trial start at once and count nothing.
    if h.udp_socket_stats(h.PORT) is not None:
        problems.append(f"UDP port {h.PORT} already in use (set NFBENCH_PORT or --port)")
    if any(c.startswith("fastnetmon") for c in collectors) and not _tcp_port_free(
        FASTNETMON_PROM_PORT
    ):
        problems.append(f"TCP 127.0.0.1:{FASTNETMON_PROM_PORT} (FastNetMon Prometheus) in use")
    return problems


def _tcp_port_free(port: int) -> bool:
    """No listener on 127.0.0.1:port.  SO_REUSEADDR, as a server sets it: connections of the
    previous trial in TIME_WAIT (60 s after FastNetMon stops) do not count as "in use"."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def run_lock(h: ModuleType) -> Iterator[None]:
    """Serialise our own runs (same port, same work dirs).  bench.py itself does not lock."""
    Path(h.WORK).mkdir(parents=True, exist_ok=True)
    with open(Path(h.WORK) / "ingest.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            sys.exit(f"another ingest run holds {h.WORK}/ingest.lock")
        yield


# ------------------------------------------------------------------ conditions
def _run(cmd: Sequence[str], timeout: float = 30) -> str:
    try:
        r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.SubprocessError) as e:
        return f"({e})"
    return r.stdout.strip() if r.returncode == 0 else f"(rc={r.returncode}) {r.stderr.strip()}"


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return "?"


def _tail(path: Path, n: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return f"({path} unreadable)"


def cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "?"


def mem_total_gib() -> str:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return f"{int(line.split()[1]) / 2**20:.1f} GiB"
    return "?"


def os_name() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.split("=", 1)[1].strip('"')
    return "?"


def divertor_env() -> dict[str, str]:
    """Python / numpy / divertor versions in the project's venv (what the collector runs)."""
    code = (
        "import json, sys, importlib.metadata as m\n"
        "d = {'python': sys.version.split()[0]}\n"
        "for p in ('numpy', 'divertor'):\n"
        "    try: d[p] = m.version(p)\n"
        "    except Exception as e: d[p] = '(not installed)'\n"
        "print(json.dumps(d))\n"
    )
    out = _run([str(PROJECT_PY), "-c", code])
    try:
        d: dict[str, str] = json.loads(out)
        return d
    except ValueError:
        return {"python": out, "numpy": "?", "divertor": "?"}


def conditions(h: ModuleType, harness_dir: Path, params: SearchParams | None) -> dict[str, Any]:
    env = divertor_env()
    git = _run(["git", "-C", str(PROJECT_ROOT), "describe", "--always", "--dirty"])
    if git.startswith("("):
        git = "no commit yet"
    bench_py = harness_dir / "bench.py"
    peers = _run(["dpkg-query", "-W", "-f", "${Package} ${Version}\\n", *PEER_PACKAGES])
    return {
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        "cpu": f"{cpu_model()} × {os.cpu_count()} vCPU, {mem_total_gib()}",
        "kernel": f"{platform.release()} ({os_name()})",
        "pinning": (
            f"collector (whole process tree) `taskset -c {h.COLLECTOR_CPU}`; "
            f"blaster `taskset -c {h.BLASTER_CPU}`"
        ),
        "socket": (
            f"rmem_max {_read('/proc/sys/net/core/rmem_max')}, rmem_default "
            f"{_read('/proc/sys/net/core/rmem_default')}, SO_RCVBUF requested {RCVBUF}"
        ),
        "peers": ", ".join(peers.splitlines()),
        "divertor": (
            f"{env.get('divertor')} (git {git}), CPython {env.get('python')}, "
            f"numpy {env.get('numpy')}"
        ),
        "harness": f"{bench_py} sha256 {hashlib.sha256(bench_py.read_bytes()).hexdigest()[:12]}",
        "params": asdict(params) if params else None,
        "load_start": [round(x, 2) for x in os.getloadavg()],
    }


# ------------------------------------------------------------------ search runs
@dataclass(frozen=True)
class SearchParams:
    mode: str
    duration: float  # confirm runs (s)
    search_duration: float  # bisection runs (s)
    repeats: int  # confirm runs per rate
    max_steps: int  # bisection runs
    sat_duration: float  # flat-out probe (s)
    start: float | None = None  # first rate (default: 0.95 x flat-out throughput)


FULL = SearchParams("full", 20.0, 6.0, 3, 5, 5.0)  # = bench.py search defaults
QUICK = SearchParams("quick", 3.0, 2.0, 1, 2, 2.0)  # smoke test only, not a measurement


def run_searches(
    h: ModuleType,
    collectors: Sequence[str],
    versions: Sequence[str],
    p: SearchParams,
    on_result: Callable[[list[dict[str, Any]]], None] = lambda _: None,
) -> list[dict[str, Any]]:
    """Version-major order, so all collectors of one version run close together in time.
    ``on_result`` gets the list so far after every search (to save partial runs)."""
    out: list[dict[str, Any]] = []
    try:
        for v in versions:
            for c in collectors:
                if v not in h.ADAPTERS[c].versions:
                    continue
                log(f"=== search {c} {v} ({p.mode})")
                try:
                    res = h.search(
                        c,
                        v,
                        duration=p.duration,
                        search_duration=p.search_duration,
                        repeats=p.repeats,
                        max_steps=p.max_steps,
                        sat_duration=p.sat_duration,
                        start=p.start,
                    )
                except Exception as e:  # keep going: one broken peer must not lose the run
                    log(f"!!! {c} {v} failed: {e!r}")
                    res = {"collector": c, "version": v, "error": repr(e)[:300]}
                out.append(res)
                on_result(out)
    except KeyboardInterrupt:
        log("interrupted: reporting what finished")
        out.append({"interrupted": True})
    return out


# ------------------------------------------------------------------ markdown
def qualifier(r: dict[str, Any]) -> str:
    """'' exact, '≥' lower bound (sender-bound / never failed), '<' no rate passed."""
    if not r.get("passed", False):
        return "<"
    if r.get("bounded_by_sender") or not upper_bound_known(r):
        return "≥"
    return ""


def upper_bound_known(r: dict[str, Any]) -> bool:
    """A failing rate was seen: in the bisection, or in confirm runs at a higher rate.

    bench.py's ``upper_bound_found`` only looks at the bisection; when every bisection step
    passed but the confirm runs at the best of them failed and stepped down 10 %, the failed
    confirm rate is an upper bound too, so the result is not a mere lower bound.
    """
    if r.get("upper_bound_found", True):
        return True
    passing = [step[0] for step in r.get("search_steps", []) if step[2]]
    return bool(passing) and r.get("max_lossless_rps", 0) < max(passing)


def _fmt(x: Any, spec: str = ",.0f") -> str:
    return "–" if x is None else format(x, spec)


def _note(r: dict[str, Any]) -> str:
    notes = []
    if not r.get("passed", False):
        notes.append("no rate passed (loss at lowest tried)")
    if r.get("bounded_by_sender"):
        notes.append("sender-bound")
    elif not upper_bound_known(r):
        notes.append("never failed in the search (lower bound)")
    return "; ".join(notes)


def results_table(results: Sequence[dict[str, Any]]) -> list[str]:
    lines = [
        "| collector | version | max lossless rec/s | loss (median) | CPU % | peak RSS / PSS MB "
        "| kernel drops (pkts) | flat-out: rec/s, loss, CPU % | load 1-min (confirm runs) | note |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- | --- |",
    ]
    for r in results:
        if "collector" not in r:
            continue
        if "error" in r:
            lines.append(
                f"| {r['collector']} | {r['version']} | error | | | | | | | "
                f"{r['error'].replace('|', '/')} |"
            )
            continue
        sat = (
            f"{_fmt(r.get('saturation_processed_rps_median'))}, "
            f"{_fmt(_pct(r.get('sat_loss_median')), '.1f')} %, "
            f"{_fmt(r.get('sat_cpu_median'), '.1f')}"
        )
        lines.append(
            f"| {r['collector']} | {r['version']} "
            f"| {qualifier(r)}{_fmt(r['max_lossless_rps'])} "
            f"| {_fmt(_pct(r.get('loss_median')), '.3f')} % "
            f"| {_fmt(r.get('cpu_median'), '.1f')} "
            f"| {_fmt(r.get('rss_median'), '.1f')} / {_fmt(r.get('pss_median'), '.1f')} "
            f"| {_fmt(r.get('kdrops_median'))} | {sat} "
            f"| {', '.join(str(x) for x in r.get('load', []))} | {_note(r)} |"
        )
    return lines


def _pct(x: float | None) -> float | None:
    return None if x is None else 100 * x


def ratio(num: dict[str, Any], den: dict[str, Any]) -> str:
    if "error" in num or "error" in den or not den.get("max_lossless_rps"):
        return "–"
    nq, dq = qualifier(num), qualifier(den)
    lower = nq == "≥" or dq == "<"  # ratio is at least this
    upper = nq == "<" or dq == "≥"  # ratio is at most this
    value = num["max_lossless_rps"] / den["max_lossless_rps"]
    if lower and upper:
        return f"? ({value:.2f}×, both bounds)"
    return f"{'≥' if lower else '≤' if upper else ''}{value:.2f}×"


def ratio_table(results: Sequence[dict[str, Any]]) -> list[str]:
    by = {(r["collector"], r["version"]): r for r in results if "collector" in r}
    collectors = list(dict.fromkeys(c for c, _ in by))
    nums = [c for c in collectors if is_divertor(c)]
    dens = [c for c in collectors if not is_divertor(c)]
    order = {c: i for i, c in enumerate(REFERENCE_PEERS)}
    dens.sort(key=lambda c: (order.get(c, len(order)), c))
    if not nums or not dens:
        return ["(no ratio: needs a divertor row and a peer row of the same version)"]
    versions = list(dict.fromkeys(v for _, v in by))
    pairs = [(n, d) for n in nums for d in dens]
    lines = [
        "| version | " + " | ".join(f"{n} / {d}" for n, d in pairs) + " |",
        "| --- |" + " ---: |" * len(pairs),
    ]
    for v in versions:
        cells = [
            ratio(by[(n, v)], by[(d, v)]) if (n, v) in by and (d, v) in by else "–"
            for n, d in pairs
        ]
        lines.append(f"| {v} | " + " | ".join(cells) + " |")
    return lines


def render(run: dict[str, Any]) -> str:
    cond = run["conditions"]
    p = cond.get("params") or {}
    results = run["results"]
    mode = p.get("mode", "?")
    crit = (
        f"max lossless = highest offered rate whose median loss over {p.get('repeats')} × "
        f"{p.get('duration')} s runs (+1 s grace) is < 0.5 %; bisection runs "
        f"{p.get('search_duration')} s, ≤ {p.get('max_steps')} steps, ≈ 10 % resolution; "
        f"flat-out probe {p.get('sat_duration')} s"
    )
    out = [f"### Ingest comparison, {cond['date_utc']} UTC ({mode})", ""]
    if mode != "full":
        out += ["**Quick mode: smoke test with short runs, not a measurement.**", ""]
    if any(r.get("interrupted") for r in results):
        out += ["**Interrupted: incomplete.**", ""]
    out += ["Conditions:", "", "| item | value |", "| --- | --- |"]
    rows = [
        ("date (UTC)", f"{cond['date_utc']} – {run.get('finished_utc', '?')}"),
        ("machine", cond["cpu"]),
        ("kernel", cond["kernel"]),
        ("pinning", cond["pinning"]),
        ("socket buffers", cond["socket"]),
        ("peers (dpkg)", cond["peers"]),
        ("divertor", cond["divertor"]),
        ("harness", cond["harness"]),
        ("criterion", crit),
        ("load avg (1/5/15) start → end", f"{cond['load_start']} → {run.get('load_end', '?')}"),
    ]
    out += [f"| {k} | {v} |" for k, v in rows]
    out += [
        "",
        "Max lossless rate (medians of the confirm runs at that rate; CPU 100 % = one "
        "core, collector's whole process tree):",
        "",
    ]
    out += results_table(results)
    out += ["", "Ratios of max lossless rates (same run; ≥/≤ when a side is only a bound):", ""]
    out += ratio_table(results)
    return "\n".join(out) + "\n"


def append_results_md(text: str, path: Path, mode: str, date_utc: str) -> None:
    stamp = date_utc[:16] + " UTC"  # when the run started, not when it is written
    with path.open("a") as f:
        f.write(f"\n## {stamp} — ingest comparison ({mode})\n\n")
        f.write(text.split("\n", 2)[2] if text.startswith("### ") else text)  # drop ### title


# ------------------------------------------------------------------ commands
def _split(s: str) -> list[str]:
    return [x for x in (p.strip() for p in s.split(",")) if x]


def cmd_compare(h: ModuleType, a: argparse.Namespace, harness_dir: Path, out_dir: Path) -> None:
    collectors, versions = _split(a.collectors), _split(a.versions)
    bad = [v for v in versions if v not in DEFAULT_VERSIONS]
    if bad:
        sys.exit(f"unknown version(s) {bad}")
    base = QUICK if a.quick else FULL
    params = SearchParams(
        base.mode,
        a.duration if a.duration is not None else base.duration,
        a.search_duration if a.search_duration is not None else base.search_duration,
        a.repeats if a.repeats is not None else base.repeats,
        a.max_steps if a.max_steps is not None else base.max_steps,
        a.sat_duration if a.sat_duration is not None else base.sat_duration,
        a.start,
    )
    _check(h, collectors, a)
    saved = out_dir / "results" / f"ingest-{time.strftime('%Y%m%dT%H%M%S')}-{params.mode}.json"
    run: dict[str, Any] = {"collectors": collectors, "versions": versions, "results": []}

    def save(results: list[dict[str, Any]]) -> None:
        run.update(
            results=results,
            load_end=[round(x, 2) for x in os.getloadavg()],
            finished_utc=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S"),
        )
        saved.write_text(json.dumps(run, indent=1) + "\n")

    with run_lock(h):
        run["conditions"] = conditions(h, harness_dir, params)
        save(run_searches(h, collectors, versions, params, on_result=save))
    log(f"run saved to {saved} (re-render: ingest.py report {saved})")
    _emit(run, a.write, Path(a.results_md), sys.stdout)


def cmd_report(a: argparse.Namespace) -> None:
    run = json.loads(Path(a.run_file).read_text())
    _emit(run, a.write, Path(a.results_md), sys.stdout)


def _emit(run: dict[str, Any], write: bool, results_md: Path, stream: TextIO) -> None:
    text = render(run)
    stream.write(text)
    if write:
        mode = (run["conditions"].get("params") or {}).get("mode", "?")
        append_results_md(text, results_md, mode, run["conditions"]["date_utc"])
        log(f"appended to {results_md}")


def cmd_trial(h: ModuleType, a: argparse.Namespace) -> None:
    _check(h, [a.collector], a)
    if a.version not in h.ADAPTERS[a.collector].versions:
        sys.exit(f"{a.collector} does not support {a.version}")
    with run_lock(h):
        rec = h.trial(
            a.collector, a.version, a.rate, a.duration, grace=a.grace, phase="ingest-trial"
        )
    print(json.dumps(rec))
    keys = (
        "collector",
        "version",
        "rate_target",
        "offered_rps",
        "processed_rps",
        "loss",
        "kernel_drops_pkts",
        "cpu_pct",
        "peak_rss_mb",
        "peak_pss_mb",
        "load_before",
        "sender_limited",
    )
    print("| " + " | ".join(keys) + " |")
    print("|" + " --- |" * len(keys))
    print("| " + " | ".join(str(rec.get(k)) for k in keys) + " |")


def _check(h: ModuleType, collectors: Sequence[str], a: argparse.Namespace) -> None:
    problems = preflight(h, collectors, a.divertor_bin)
    if problems:
        msg = "preflight:\n  " + "\n  ".join(problems)
        if a.force:
            log(msg + "\n(--force: continuing)")
        else:
            sys.exit(msg + "\n(--force to run anyway)")


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--harness",
        default=str(DEFAULT_HARNESS),
        help="directory holding bench.py (default %(default)s)",
    )
    ap.add_argument(
        "--out",
        default=str(DEFAULT_OUT),
        help="where compiled tools and jsonl results go (default %(default)s)",
    )
    ap.add_argument("--port", type=int, help="UDP port (default NFBENCH_PORT or 20555)")
    ap.add_argument("--divertor-bin", default=str(DEFAULT_DIVERTOR_BIN))
    ap.add_argument(
        "--divertor-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for every divertor* collector (repeatable)",
    )
    ap.add_argument("--force", action="store_true", help="run despite preflight problems")
    sub = ap.add_subparsers(dest="cmd", required=True)

    c = sub.add_parser("compare", help="search max lossless rate per collector × version")
    c.add_argument(
        "--collectors",
        default=",".join(DEFAULT_COLLECTORS),
        help="comma list (default %(default)s; also divertor-rates, nfcapd, ...)",
    )
    c.add_argument("--versions", default=",".join(DEFAULT_VERSIONS))
    c.add_argument("--quick", action="store_true", help="short runs: smoke test only")
    c.add_argument("--duration", type=float, help="confirm run length (full 20, quick 3)")
    c.add_argument("--search-duration", type=float, help="bisection run length (6 / 2)")
    c.add_argument("--repeats", type=int, help="confirm runs (3 / 1)")
    c.add_argument("--max-steps", type=int, help="bisection runs (5 / 2)")
    c.add_argument("--sat-duration", type=float, help="flat-out probe length (5 / 2)")
    c.add_argument("--start", type=float, help="first rate to try (default 0.95 × flat-out)")
    c.add_argument("--write", action="store_true", help="append the tables to bench/RESULTS.md")
    c.add_argument("--results-md", default=str(RESULTS_MD))

    t = sub.add_parser("trial", help="one run at a fixed rate (smoke test)")
    t.add_argument("-c", "--collector", default="nfacctd")
    t.add_argument("-v", "--version", default="v9", choices=DEFAULT_VERSIONS)
    t.add_argument("-r", "--rate", type=float, default=100000, help="records/s, 0 = flat out")
    t.add_argument("-d", "--duration", type=float, default=3.0)
    t.add_argument("--grace", type=float, default=1.0)

    r = sub.add_parser("report", help="re-render a saved run (bench/out/results/ingest-*.json)")
    r.add_argument("run_file")
    r.add_argument("--write", action="store_true")
    r.add_argument("--results-md", default=str(RESULTS_MD))

    sub.add_parser("list", help="adapters known to the harness, plus divertor*")
    a = ap.parse_args(argv)
    # SIGTERM -> KeyboardInterrupt, so the harness's finally: blocks stop the collector (and
    # fastnetmon-bigbuf restores rmem_default) instead of leaving them running.
    signal.signal(signal.SIGTERM, _raise_interrupt)

    if a.cmd == "report":
        cmd_report(a)
        return
    harness_dir, out_dir = Path(a.harness).resolve(), Path(a.out).resolve()
    # the collector is started with cwd = its work dir: a relative --divertor-bin would pass
    # the preflight (run from here) and then fail to start (taskset: No such file)
    a.divertor_bin = os.path.abspath(a.divertor_bin)
    h = load_harness(harness_dir, out_dir, a.port)
    register_divertor(h, a.divertor_bin, a.divertor_arg)
    if a.cmd == "list":
        for name, cls in h.ADAPTERS.items():
            doc = (cls.__doc__ or "").strip().splitlines()
            print(f"{name:26s} {','.join(cls.versions):14s} {doc[0] if doc else ''}")
    elif a.cmd == "trial":
        try:
            cmd_trial(h, a)
        except KeyboardInterrupt as e:
            sys.exit(f"trial interrupted ({e or 'Ctrl-C'}); collector stopped")
    else:
        cmd_compare(h, a, harness_dir, out_dir)


if __name__ == "__main__":
    main()
