#!/usr/bin/env python3
"""Offline decode throughput of Divertor's collector, independent of any socket.

Loads UDP payloads into ``DatagramBatch``es of ``--batch-size`` (default 1024) datagrams and
times ``collector.decoder.Decoder().decode(batch)`` over many repetitions, per format:

* ``harness``: the stream the ingest benchmark replays (``gen_packets.py`` of the shared
  harness, default 4000-packet cycle: v5 30 rec/pkt, v9 27, IPFIX 23 IPv4 / 17 IPv6, templates
  and options every 200 data packets), for v5, v9 and IPFIX;
* ``corpus``: a few captures of ``shared/testdata/flows`` (softflowd, pmacctd, nProbe, Cisco
  via pmacct's tests), for v5, v9, IPFIX and sFlow v5.

Datagrams of a source are repeated in order to fill the batches (a capture of 20 datagrams
fills a batch of 1024 with 51 copies of itself); every case is first decoded once untimed so
that its templates are known, as in a running collector.  ``records`` = flow records in the
returned FlowBatch (v5/v9/IPFIX flow records, sFlow flow samples; options records and counter
samples are not counted, as in ``divertor collect``'s ``flow_records``).  Nothing is received,
copied off a socket or queued: this is the decoder alone (DatagramBatch -> FlowBatch).

Timing: every round decodes all batches of a case; its thread CPU time (``time.thread_time``)
and wall time (``time.perf_counter``) are read.  The main figure, records per CPU second, is
what one core does even when another process shares that CPU (the bench machine is shared);
the wall-clock rate and the CPU share (CPU / wall over all rounds; < 100 % = the CPU was
shared, or the thread slept) are printed beside it.  Medians over rounds; rounds run for at
least ``--min-time`` s and ``--min-rounds`` rounds per case.

Run pinned to one CPU for figures per core::

    taskset -c 1 .venv/bin/python bench/decode_speed.py
    taskset -c 1 .venv/bin/python bench/decode_speed.py --min-time 1 --json bench/out/ds.json
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import os
import platform
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from collector.datagram import DatagramBatch
from collector.decoder import Decoder
from collector.sources.pcap import read_pcap

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_HARNESS = Path(
    os.environ.get(
        "DIVERTOR_BENCH_HARNESS", str(PROJECT_ROOT.parent / "shared" / "bench" / "collectors")
    )
)
DEFAULT_CORPUS = PROJECT_ROOT.parent / "shared" / "testdata" / "flows" / "captures"
FORMATS = ("v5", "v9", "ipfix", "sflow")
# A few of the largest captures of each format in the corpus (flow records / samples).
CORPUS_CAPTURES: dict[str, tuple[str, ...]] = {
    "v5": ("gen__softflowd_v5.pcap", "gen__pmacctd_nfprobe_v5.pcap"),
    "v9": ("gen__softflowd_v9.pcap", "graylog__nprobe-netflow9-3.pcap"),
    "ipfix": (
        "gen__softflowd_ipfix.pcap",
        "gen__pmacctd_nfprobe_ipfix.pcap",
        "pmacct__401-IPFIXv10-BMP-IPv6-CISCO-MPLS-multiple-sources__traffic-00.pcap",
    ),
    "sflow": ("gen__pmacctd_sfprobe.pcap",),
}
STREAM_MAGIC = b"NFBS1\0\0\0"
EXPORTER = "127.0.0.1"  # the blaster's source address


@dataclass
class Case:
    source: str  # "harness" or the capture's file name
    fmt: str
    datagrams: list[tuple[str, bytes]]  # (exporter, payload), in order


@dataclass
class Result:
    source: str
    fmt: str
    distinct_datagrams: int
    batches: int
    batch_size: int
    records_per_datagram: float
    bytes_per_datagram: float
    rounds: int
    # per CPU second of the decoding thread (time.thread_time): what one core does, even when
    # another process shares the CPU; medians over rounds, min/max over rounds
    records_per_cpu_s: float
    records_per_cpu_s_min: float
    records_per_cpu_s_max: float
    us_per_datagram: float  # thread CPU time
    us_per_batch: float
    # wall clock (time.perf_counter): lower than the above when the CPU was shared
    records_per_s_wall: float
    cpu_share: float  # thread CPU time / wall time over all rounds
    errors: dict[str, int]


# ------------------------------------------------------------------ inputs
def payload_format(payload: bytes) -> str | None:
    head = payload[:4]
    if head == b"\x00\x00\x00\x05":
        return "sflow"
    return {b"\x00\x05": "v5", b"\x00\x09": "v9", b"\x00\x0a": "ipfix"}.get(head[:2])


def read_stream(path: Path) -> list[bytes]:
    """Packets of a gen_packets.py stream file (format in gen_packets.py's docstring)."""
    data = path.read_bytes()
    if data[:8] != STREAM_MAGIC:
        raise ValueError(f"{path}: not a gen_packets.py stream file")
    count, _records = struct.unpack_from("<II", data, 8)
    off, out = 16, []
    for _ in range(count):
        length, _nrec, _kind, _is_tpl, _pad = struct.unpack_from("<HHBBH", data, off)
        off += 8
        out.append(data[off : off + length])
        off += length
    return out


def harness_cases(harness: Path, versions: Iterable[str], packets: int) -> list[Case]:
    gen = harness / "gen_packets.py"
    if not gen.is_file():
        sys.exit(f"{gen} not found (set --harness or DIVERTOR_BENCH_HARNESS)")
    cases = []
    with tempfile.TemporaryDirectory(prefix="decode-speed-") as tmp:
        for v in versions:
            out = Path(tmp) / f"{v}.bin"
            subprocess.run(
                [sys.executable, str(gen), v, "-o", str(out), "-n", str(packets)],
                check=True,
                capture_output=True,
            )
            cases.append(Case("harness", v, [(EXPORTER, p) for p in read_stream(out)]))
    return cases


def corpus_cases(corpus: Path, formats: Iterable[str], names: Sequence[str] = ()) -> list[Case]:
    wanted = [(f, n) for f in formats for n in CORPUS_CAPTURES.get(f, ())]
    wanted += [("", n) for n in names]  # --capture: every format found in it
    cases = []
    for fmt, name in wanted:
        path = Path(name) if os.sep in name else corpus / name
        if not path.is_file():
            print(f"skipped (missing): {path}", file=sys.stderr)
            continue
        by_fmt: dict[str, list[tuple[str, bytes]]] = {}
        for _ts, _frame, exporter, payload in read_pcap(path):
            f = payload_format(payload)
            if f is not None:
                by_fmt.setdefault(f, []).append((exporter, payload))
        for f, dgrams in by_fmt.items():
            if not fmt or f == fmt:
                cases.append(Case(path.name, f, dgrams))
    return cases


def make_batches(case: Case, batch_size: int) -> list[DatagramBatch]:
    """Full batches covering the case's datagrams at least once, repeated in order as needed
    (frames 1..n)."""
    n_batches = -(-len(case.datagrams) // batch_size)
    src = case.datagrams
    now = time.time()
    batches, i = [], 0
    for _ in range(n_batches):
        b = DatagramBatch()
        for _ in range(batch_size):
            exporter, payload = src[i % len(src)]
            i += 1
            b.append(now, i, exporter, payload)
        batches.append(b)
    return batches


# ------------------------------------------------------------------ timing
def run_case(case: Case, batch_size: int, min_time: float, min_rounds: int) -> Result:
    batches = make_batches(case, batch_size)
    decoder = Decoder()
    for b in batches:  # warm-up: templates, sampling options, numpy dtype caches
        decoder.decode(b)
    per_round_records = sum(len(decoder.decode(b)) for b in batches)  # steady state
    n_dgrams = len(batches) * batch_size
    cpu_rates, wall_rates, cpu_total, wall_total = [], [], 0.0, 0.0
    perf, cpu = time.perf_counter, time.thread_time
    started = perf()
    while len(cpu_rates) < min_rounds or perf() - started < min_time:
        records = 0
        w0, c0 = perf(), cpu()
        for b in batches:
            records += len(decoder.decode(b))
        c1, w1 = cpu(), perf()
        if records != per_round_records:
            raise RuntimeError(f"{case.source} {case.fmt}: {records} != {per_round_records}")
        cpu_rates.append(records / (c1 - c0))
        wall_rates.append(records / (w1 - w0))
        cpu_total += c1 - c0
        wall_total += w1 - w0
    errors: dict[str, int] = {}
    for st in decoder.stats.as_dict().values():
        for reason, n in st.get("errors", {}).items():
            errors[reason] = errors.get(reason, 0) + n
    rate = statistics.median(cpu_rates)
    us = per_round_records / rate / n_dgrams * 1e6
    return Result(
        source=case.source,
        fmt=case.fmt,
        distinct_datagrams=len(case.datagrams),
        batches=len(batches),
        batch_size=batch_size,
        records_per_datagram=per_round_records / n_dgrams,
        bytes_per_datagram=sum(len(p) for b in batches for p in b.payload) / n_dgrams,
        rounds=len(cpu_rates),
        records_per_cpu_s=rate,
        records_per_cpu_s_min=min(cpu_rates),
        records_per_cpu_s_max=max(cpu_rates),
        us_per_datagram=us,
        us_per_batch=us * batch_size,
        records_per_s_wall=statistics.median(wall_rates),
        cpu_share=cpu_total / wall_total,
        errors=errors,
    )


# ------------------------------------------------------------------ conditions / output
def conditions(batch_size: int, min_time: float) -> dict[str, Any]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    git = subprocess.run(
        ["git", "-C", str(PROJECT_ROOT), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return {
        "date_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "cpu": f"{cpu} × {os.cpu_count()} vCPU",
        "affinity": affinity,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "numpy": importlib.metadata.version("numpy"),
        "divertor": f"{importlib.metadata.version('divertor')} (git {git or '?'})",
        "batch_size": batch_size,
        "min_time_per_case_s": min_time,
        "gc": "enabled" if gc.isenabled() else "disabled",
        "load_start": [round(x, 2) for x in os.getloadavg()],
    }


def table(results: Sequence[Result]) -> list[str]:
    lines = [
        "| format | source | distinct datagrams | rec/datagram | B/datagram | rounds "
        "| rec/CPU-s (median) | rec/CPU-s min–max | µs/datagram | ms/batch "
        "| rec/s wall (median) | CPU share | decoder errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        errs = ", ".join(f"{k} {v}" for k, v in sorted(r.errors.items())) or "none"
        lines.append(
            f"| {r.fmt} | {r.source} | {r.distinct_datagrams} | {r.records_per_datagram:.2f} "
            f"| {r.bytes_per_datagram:.0f} | {r.rounds} | {r.records_per_cpu_s:,.0f} "
            f"| {r.records_per_cpu_s_min:,.0f}–{r.records_per_cpu_s_max:,.0f} "
            f"| {r.us_per_datagram:.2f} | {r.us_per_batch / 1000:.2f} "
            f"| {r.records_per_s_wall:,.0f} | {100 * r.cpu_share:.0f} % | {errs} |"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--formats", default=",".join(FORMATS), help="default %(default)s")
    ap.add_argument("--sources", default="harness,corpus", help="default %(default)s")
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--min-time", type=float, default=3.0, help="timed seconds per case")
    ap.add_argument("--min-rounds", type=int, default=5, help="timed rounds per case")
    ap.add_argument("--packets", type=int, default=4000, help="harness stream cycle length")
    ap.add_argument("--harness", default=str(DEFAULT_HARNESS))
    ap.add_argument("--corpus", default=str(DEFAULT_CORPUS))
    ap.add_argument("--capture", action="append", default=[], help="extra capture (name or path)")
    ap.add_argument("--json", help="also write conditions and results here")
    a = ap.parse_args(argv)
    formats = [f for f in a.formats.split(",") if f]
    sources = {s for s in a.sources.split(",") if s}
    if bad := [f for f in formats if f not in FORMATS]:
        sys.exit(f"unknown format(s) {bad}; known {FORMATS}")

    cond = conditions(a.batch_size, a.min_time)
    cases: list[Case] = []
    if "harness" in sources:
        cases += harness_cases(Path(a.harness), [f for f in formats if f != "sflow"], a.packets)
    if "corpus" in sources:
        cases += corpus_cases(Path(a.corpus), formats, a.capture)
    cases.sort(key=lambda c: (FORMATS.index(c.fmt), c.source != "harness"))

    results = []
    for case in cases:
        r = run_case(case, a.batch_size, a.min_time, a.min_rounds)
        print(
            f"{r.fmt:6s} {r.source[:60]:60s} {r.records_per_cpu_s:>12,.0f} rec/CPU-s "
            f"{r.us_per_datagram:7.2f} µs/dgram, CPU share {100 * r.cpu_share:.0f} %",
            file=sys.stderr,
            flush=True,
        )
        results.append(r)
    cond["load_end"] = [round(x, 2) for x in os.getloadavg()]

    print("Conditions: " + "; ".join(f"{k} {v}" for k, v in cond.items()))
    print()
    print("\n".join(table(results)))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        doc = {"conditions": cond, "results": [asdict(r) for r in results]}
        Path(a.json).write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
