"""`divertor allowlist ...` on a store, and `divertor replay --allowlist-feed` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from collector.sources.pcapwriter import PcapWriter
from divertor.cli import main
from tests.builders import v5, v5_record

ROOT = Path(__file__).resolve().parents[1]
FEED = ROOT.parent / "shared" / "testdata" / "scenarios" / "udp-flood" / "allowlist.jsonl"
T0 = 1_700_000_000


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def _expected(lines: list[str], at: float) -> dict[str, float]:
    expiry: dict[str, float] = {}
    for line in lines:
        o = json.loads(line)
        if o["time"] > at:
            break
        if o["op"] == "add":
            expiry[o["ip"]] = max(expiry.get(o["ip"], 0.0), o["time"] + o["ttl"])
        else:
            expiry.pop(o["ip"], None)
    return {ip: e for ip, e in expiry.items() if e > at}


@pytest.mark.skipif(not FEED.is_file(), reason="shared/testdata not beside the repo")
def test_load_stats_show_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = str(tmp_path / "allow.sqlite")
    raw = FEED.read_text().splitlines()
    last = json.loads(raw[-1])["time"]
    want = _expected(raw, last)
    code, out, _ = _run(capsys, "allowlist", "load", str(FEED), "--store", db)
    summary = json.loads(out)
    assert code == 0 and summary["applied"] == len(raw) and summary["refused"] == 0
    assert summary["entries_now"] == len(want)
    code, out, _ = _run(capsys, "allowlist", "stats", "--store", db)
    stats = json.loads(out)
    assert stats["entries"] == len(want) and stats["by_source"] == {"feed": len(want)}
    assert stats["version"] == summary["version"] and stats["store"]["version"] == stats["version"]
    ip = sorted(want)[0]
    code, out, _ = _run(capsys, "allowlist", "show", ip, "--store", db)
    shown = json.loads(out)
    assert code == 0 and shown["allowlisted"]
    assert shown["entries"] == [{"entry": ip, "source": "feed", "expires": want[ip]}]
    gone = next(json.loads(x)["ip"] for x in raw if json.loads(x)["op"] == "remove")
    code, out, _ = _run(capsys, "allowlist", "show", gone, "--store", db)
    assert code == (0 if gone in want else 1)
    plain = tmp_path / "allow.txt"
    assert _run(capsys, "allowlist", "export", "--store", db, "-o", str(plain))[0] == 0
    assert set(plain.read_text().split()) == set(want)
    version = stats["version"]
    # a snapshot with a bad line: refused with file:line, the rest applied
    snap = tmp_path / "snapshot.txt"
    snap.write_text("192.0.2.0/24\nnot-an-address\n2001:db8::7\n")
    code, out, err = _run(capsys, "allowlist", "load", str(snap), "--store", db)
    assert code == 0 and f"{snap}:2: refused: not an IPv4 or IPv6 address" in err
    assert json.loads(out)["entries"] == 2
    code, out, _ = _run(
        capsys, "allowlist", "export", "--store", db, "--format", "json", "--since", str(version)
    )
    d = json.loads(out)
    assert d["since"] == version and set(d["add"]) == {"192.0.2.0/24", "2001:db8::7"}
    assert d["remove"] == []
    code, out, _ = _run(capsys, "allowlist", "show", "192.0.2.9", "--store", db)
    assert code == 0 and json.loads(out)["entries"][0]["entry"] == "192.0.2.0/24"
    # event time moves on: every registration expires, the snapshot stays
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, out, _ = _run(
        capsys,
        "allowlist",
        "load",
        str(empty),
        "--format",
        "feed",
        "--store",
        db,
        "--now",
        str(last + 7200),
    )
    assert json.loads(out)["entries_now"] == 2


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _run(capsys, "allowlist", "stats")
    assert code == 2 and "no store" in err
    code, _, err = _run(capsys, "allowlist", "show", "nope", "--store", str(tmp_path / "s.db"))
    assert code == 2 and "not an IPv4 or IPv6 address" in err


# --------------------------------------------------------------------------- replay
THRESHOLDS = """
version: 1
defaults: {average: 5s, announce: {next_hop: 192.0.2.254}}
prefixes:
  198.18.10.0/24:
    thresholds: {sip: {pps: 80k}, unlisted_sip: {pps: 6k}}
"""
FLOOD = [f"203.0.113.{i}" for i in range(1, 31)]


def _capture(path: Path, seconds: int = 150) -> None:
    """A SIP flood from FLOOD (15k pps) from second 60 on, as NetFlow v5 in a pcap."""
    with PcapWriter(path) as w:
        for s in range(seconds):
            recs = [
                v5_record(
                    src,
                    "198.18.10.5",
                    proto=17,
                    sport=5060,
                    dport=5060,
                    packets=500,
                    octets=300_000,
                    first=99_100,
                    last=99_400,
                    tcp_flags=0,
                )
                for src in (FLOOD if s >= 60 else FLOOD[:1])
            ]
            w.write(
                T0 + s + 1.0, "192.0.2.1", "192.0.2.254", 2055, 2055, v5(*recs, secs=T0 + s + 1)
            )


@pytest.mark.parametrize(
    ("register_at", "expect"),
    [(30, "nothing"), (66, "suspected only"), (None, "diverted")],
)
def test_replay_interleaves_the_feed_on_event_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], register_at: int | None, expect: str
) -> None:
    pcap, feed = tmp_path / "c.pcap", tmp_path / "feed.jsonl"
    _capture(pcap)
    (tmp_path / "t.yaml").write_text(THRESHOLDS)
    cfg = tmp_path / "divertor.yaml"
    cfg.write_text("thresholds: t.yaml\n")
    lines = [
        # before the capture: one registration long expired at its start, one still valid
        {"time": T0 - 9000, "op": "add", "ip": FLOOD[1], "ttl": 3600},
        {"time": T0 - 100, "op": "add", "ip": FLOOD[0], "ttl": 3600},
    ]
    if register_at is not None:
        lines += [{"time": T0 + register_at, "op": "add", "ip": ip, "ttl": 600} for ip in FLOOD]
    feed.write_text("".join(json.dumps(x) + "\n" for x in lines) + "garbage\n")
    code, out, err = _run(
        capsys,
        "replay",
        str(pcap),
        "--config",
        str(cfg),
        "--allowlist-feed",
        str(feed),
        "--drain",
        "100",
    )
    assert code == 0, err
    assert f"{feed}:{len(lines) + 1}: refused" in err
    timeline = [json.loads(x) for x in out.splitlines()]
    incidents = [x for x in timeline if x["type"] == "incident"]
    announces = [x for x in timeline if x["type"] == "announce"]
    stats = json.loads(err.strip().splitlines()[-1])["stats"]["allowlist"]
    if expect == "nothing":
        assert incidents == [] and stats["entries"] == 30
    elif expect == "suspected only":  # unlisted for 6 s, less than the trigger
        assert [x["to"] for x in incidents] == ["suspected", "closed"] and announces == []
        assert incidents[0]["allowlisted_share"]["before"]["sip"] == 1.0
    else:
        assert [x["vector"] for x in announces] == ["sip_flood"]
        assert "unlisted_sip" in announces[0]["reason"] and stats["entries"] == 1
