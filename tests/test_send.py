"""`divertor send`: a capture replayed over UDP at its pace, retimed, one source per exporter."""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from collector.sources.pcap import PcapReader
from collector.sources.pcapwriter import PcapWriter
from divertor import cli, send_cmd
from tests import builders, shared

ROOT = Path(__file__).resolve().parents[1]
FLOOD = shared.SCENARIOS / "udp-flood" / "flows.pcap"
needs_scenarios = pytest.mark.skipif(
    not FLOOD.is_file(), reason="shared/testdata not beside the repo"
)


def _send(*argv: str) -> tuple[list[tuple[bytes, str, float]], subprocess.CompletedProcess[str]]:
    """Run `divertor send ... --to <a socket of ours>`; what arrived (payload, source, time)."""
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    rx.bind(("127.0.0.1", 0))
    port = rx.getsockname()[1]
    cmd = [sys.executable, "-m", "divertor.cli", "send", *argv, "--to", f"127.0.0.1:{port}"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env
    )
    got: list[tuple[bytes, str, float]] = []
    try:
        while True:
            ready, _, _ = select.select([rx], [], [], 0.05)
            if ready:
                data, addr = rx.recvfrom(65535)
                got.append((data, addr[0], time.monotonic()))
            elif proc.poll() is not None:
                break
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        rx.close()
    return got, subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _slice(path: Path, start: float, duration: float) -> list[tuple[float, str, bytes]]:
    """The datagrams of a slice, counted independently of send_cmd."""
    items = [(ts, src, payload) for ts, _f, src, payload in PcapReader(path)]
    origin = items[0][0]
    return [i for i in items if start <= i[0] - origin < start + duration]


# ---------------------------------------------------------------------- pure parts
@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("127.0.0.1:2055", ("127.0.0.1", 2055)),
        ("[::1]:4739", ("::1", 4739)),
        ("localhost:6343", None),  # resolved: 127.0.0.1 or ::1
    ],
)
def test_parse_target(text: str, want: tuple[str, int] | None) -> None:
    host, port = send_cmd.parse_target(text)
    if want is None:
        assert host in ("127.0.0.1", "::1") and port == 6343
    else:
        assert (host, port) == want


@pytest.mark.parametrize(
    "text",
    ["127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:x", ":2055", "::1:2055",
     "[nope]:2055", "no-such-host.invalid:2055"],
)  # fmt: skip
def test_bad_target_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="--to"):
        send_cmd.parse_target(text)


@pytest.mark.parametrize("text", ["127.0.0.1", "127.0.0.1:0", "[::1:2055", "host:port"])
def test_bad_target_exits_2(text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["send", str(tmp_path / "absent.pcap"), "--to", text]) == 2
    assert "--to" in capsys.readouterr().err


def test_unreadable_capture_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(b"this is not a capture")
    assert cli.main(["send", str(junk), "--to", "127.0.0.1:2055"]) == 2
    assert "not a pcap" in capsys.readouterr().err
    assert cli.main(["send", str(tmp_path / "absent.pcap"), "--to", "127.0.0.1:2055"]) == 2


def test_retime_moves_only_the_header_time() -> None:
    v9 = builders.v9(b"", secs=1000, uptime=5)
    out, kind = send_cmd.retime(v9, 7)
    assert kind == "netflow9" and struct.unpack_from("!I", out, 8)[0] == 1007
    assert out[:8] == v9[:8] and out[12:] == v9[12:]
    v5 = builders.v5(builders.v5_record(), secs=0xFFFFFFFF)
    out, kind = send_cmd.retime(v5, 2)  # wraps like the 32-bit field does
    assert kind == "netflow5" and struct.unpack_from("!I", out, 8)[0] == 1
    fix = builders.ipfix(export_time=50)
    out, kind = send_cmd.retime(fix, -10)
    assert kind == "ipfix" and struct.unpack_from("!I", out, 4)[0] == 40 and out[8:] == fix[8:]
    sflow = builders.sflow_ipv4()
    assert send_cmd.retime(sflow, 100) == (sflow, None)


def test_source_addresses() -> None:
    binds, note = send_cmd.source_addresses(3, "127.0.0.1", None)
    assert binds == [("127.0.0.1", 0), ("127.0.0.2", 0), ("127.0.0.3", 0)] and note is None
    binds, _ = send_cmd.source_addresses(2, "127.0.0.1", "127.0.1.10")
    assert binds == [("127.0.1.10", 0), ("127.0.1.11", 0)]
    binds, note = send_cmd.source_addresses(2, "::1", None)
    assert binds == [("::1", 0), ("::1", 0)] and note and "::1" in note
    binds, note = send_cmd.source_addresses(2, "192.0.2.254", None)
    assert binds == [("0.0.0.0", 0), ("0.0.0.0", 0)] and note and "wildcard" in note
    with pytest.raises(ValueError, match="family"):
        send_cmd.source_addresses(1, "::1", "127.0.0.1")


# ---------------------------------------------------------------------- a synthetic capture
def test_every_format_and_exporter(tmp_path: Path) -> None:
    t0 = 1_700_000_000.0
    frames = [
        (t0, "192.0.2.1", builders.v9(b"", secs=int(t0) + 3, source_id=1)),
        (t0 + 0.01, "192.0.2.2", builders.ipfix(export_time=int(t0) - 2)),
        (t0 + 0.02, "192.0.2.3", builders.v5(builders.v5_record(), secs=int(t0))),
        (t0 + 0.03, "192.0.2.4", builders.sflow_ipv4()),
        (t0 + 0.04, "192.0.2.2", builders.ipfix(export_time=int(t0) - 1)),
        (t0 + 0.05, "192.0.2.1", builders.v9(b"", secs=int(t0) + 4, source_id=1)),
    ]
    pcap = tmp_path / "mixed.pcap"
    with PcapWriter(pcap) as w:
        for ts, src, payload in frames:
            w.write(ts, src, "192.0.2.254", 2055, 2055, payload)
    before = time.time()
    got, done = _send(str(pcap), "--speed", "100")
    after = time.time()
    assert done.returncode == 0, done.stderr
    assert len(got) == len(frames)
    shifts = set()
    for (_, _, sent), (data, _, _) in zip(frames, got, strict=True):
        where = send_cmd.header_time(sent)
        if where is None:  # sFlow: unchanged
            assert data == sent
            continue
        off = where[0]
        assert data[:off] == sent[:off] and data[off + 4 :] == sent[off + 4 :]
        shifts.add(struct.unpack_from("!I", data, off)[0] - struct.unpack_from("!I", sent, off)[0])
    assert len(shifts) == 1
    shift = shifts.pop()
    assert before - t0 - 1 <= shift <= after - t0 + 1
    assert done.stderr.count("warning: IPFIX") == 1  # once, though two IPFIX datagrams
    # one source address per exporter, in order of first appearance, as the summary says
    sources = {src: addr for (_, src, _), (_, addr, _) in zip(frames, got, strict=True)}
    assert sources == {f"192.0.2.{i}": f"127.0.0.{i}" for i in (1, 2, 3, 4)}
    summary = json.loads(done.stdout)
    assert summary["datagrams"] == 6 and summary["header_shift_seconds"] == shift
    assert summary["bytes"] == sum(len(d) for d, _, _ in got)
    assert {e: v["source"].split(":")[0] for e, v in summary["exporters"].items()} == sources
    assert "192.0.2.3 -> 127.0.0.3" in done.stderr


# ---------------------------------------------------------------------- the udp-flood scenario
@needs_scenarios
def test_scenario_slice_is_sent_retimed_and_paced() -> None:
    start, duration, speed = 300.0, 10.0, 10.0
    want = _slice(FLOOD, start, duration)
    assert len(want) > 20
    got, done = _send(
        str(FLOOD), "--from", str(start), "--duration", str(duration), "--speed", str(speed)
    )
    assert done.returncode == 0, done.stderr
    assert len(got) == len(want)
    shifts = set()
    for (_, _, sent), (data, _, _) in zip(want, got, strict=True):
        assert sent[:2] == b"\x00\x09"  # NetFlow v9 in this scenario
        assert data[:8] == sent[:8] and data[12:] == sent[12:]
        shifts.add(struct.unpack_from("!I", data, 8)[0] - struct.unpack_from("!I", sent, 8)[0])
    assert len(shifts) == 1, "the header time moves by the same amount for every datagram"
    # distinct source address per capture exporter, and the same one for all its datagrams
    pairs = {(src, addr) for (_, src, _), (_, addr, _) in zip(want, got, strict=True)}
    exporters = {src for _, src, _ in want}
    assert len(pairs) == len(exporters) == len({addr for _, addr in pairs}) >= 2
    # pacing: the slice's span divided by the speed, at least (a lower bound, not a speed figure)
    span = want[-1][0] - want[0][0]
    assert got[-1][2] - got[0][2] >= span / speed * 0.9
    summary = json.loads(done.stdout)
    assert summary["datagrams"] == len(want)
    assert summary["seconds"] >= span / speed * 0.9
    assert sum(v["datagrams"] for v in summary["exporters"].values()) == len(want)


@needs_scenarios
def test_scenario_no_retime_is_byte_identical() -> None:
    want = _slice(FLOOD, 0.0, 3.0)
    got, done = _send(str(FLOOD), "--duration", "3", "--speed", "50", "--no-retime")
    assert done.returncode == 0, done.stderr
    assert [d for d, _, _ in got] == [p for _, _, p in want]
    assert json.loads(done.stdout)["header_shift_seconds"] == 0
