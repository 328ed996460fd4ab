"""Threshold files: units, inheritance, validation (golden messages), show/check, schema, docs.

Golden files: ``tests/golden/thresholds/NAME.yaml`` is refused with exactly the text of
``NAME.txt``; ``valid/*.yaml`` load. Regenerate the expected texts after a deliberate change
of a message with ``UPDATE_GOLDEN=1 .venv/bin/pytest tests/test_thresholds.py`` and review
the diff.
"""

from __future__ import annotations

import ipaddress
import json
import os
import random
import re
from pathlib import Path

import pytest

import thresholds
from thresholds import (
    Problem,
    ThresholdError,
    check,
    effective,
    json_schema,
    load,
    loads,
    show,
    units,
)
from thresholds.model import CLASSES, METRICS, Limit, PortSets, ThresholdSet, Timing
from thresholds.schema import SCHEMA_PATH, schema_text
from thresholds.spec import (
    ANNOUNCE_KEYS,
    ANOMALY_KEYS,
    ENTRY_KEYS,
    GLOBAL_KEYS,
    PORT_KEYS,
    TIMING_KEYS,
    builtin_defaults,
)

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden" / "thresholds"
ERROR_CASES = sorted(GOLDEN.glob("*.yaml"))
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"
EXAMPLE = GOLDEN / "valid" / "example.yaml"


def golden_compare(got: str, expected: Path) -> None:
    if UPDATE:
        expected.write_text(got, encoding="utf-8")
    assert expected.exists(), f"missing golden file {expected} (run with UPDATE_GOLDEN=1)"
    assert got == expected.read_text(encoding="utf-8")


def refuse(text: str) -> list[str]:
    with pytest.raises(ThresholdError) as info:
        loads(text, source="t.yaml")
    return str(info.value).splitlines()


# -- golden error messages ----------------------------------------------------------------------


def test_golden_cases_are_there() -> None:
    assert len(ERROR_CASES) >= 20
    for case in ERROR_CASES:
        assert case.with_suffix(".txt").exists() or UPDATE, case


@pytest.mark.parametrize("case", ERROR_CASES, ids=lambda p: p.stem)
def test_error_golden(case: Path) -> None:
    with pytest.raises(ThresholdError) as info:
        loads(case.read_text(encoding="utf-8"), source=case.name)
    err = info.value
    assert err.problems, "a ThresholdError carries its problems"
    assert all(isinstance(p, Problem) and p.file == case.name for p in err.problems)
    golden_compare(str(err) + "\n", case.with_suffix(".txt"))


def test_every_problem_is_reported_in_file_order() -> None:
    with pytest.raises(ThresholdError) as info:
        loads((GOLDEN / "rates.yaml").read_text(), source="rates.yaml")
    problems = info.value.problems
    assert len(problems) == 12
    assert [(p.line, p.column) for p in problems] == sorted((p.line, p.column) for p in problems)
    first = problems[0]
    assert (first.line, first.column) == (8, 20)
    assert first.key_path == "prefixes[198.18.10.0/24].thresholds.total.pps"
    assert first.message == "expected a rate like 400k or 10G, got '40 kpps' (no spaces: 40kpps)"
    assert isinstance(info.value, ValueError)


def test_load_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "site.yaml"
    path.write_text("version: 1\nprefixes:\n  198.18.10.1/24: {}\n")
    with pytest.raises(ThresholdError) as info:
        load(path)
    assert str(info.value) == (
        f"{path}:3:3: prefixes[198.18.10.1/24]: '198.18.10.1/24' has host bits set; "
        "the network is 198.18.10.0/24"
    )


def test_problem_without_key_path() -> None:
    assert str(Problem("f.yaml", 3, 1, "", "YAML syntax: x")) == "f.yaml:3:1: YAML syntax: x"
    assert str(Problem("f.yaml", 3, 1, "a.b", "bad")) == "f.yaml:3:1: a.b: bad"


# -- units ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "metric", "value"),
    [
        ("400k", "pps", 400e3),
        ("400K", "pps", 400e3),
        ("10G", "bps", 1e10),
        ("10g", "bps", 1e10),
        ("400Mbps", "bps", 4e8),
        ("60kpps", "pps", 6e4),
        ("5kfps", "fps", 5e3),
        ("1.5k", "pps", 1500.0),
        ("2T", "bps", 2e12),
        ("2e6", "pps", 2e6),
        ("60_000", "pps", 6e4),
        ("1234", "pps", 1234.0),
        ("off", "pps", None),
        ("OFF", "bps", None),
    ],
)
def test_parse_rate(text: str, metric: str, value: float | None) -> None:
    assert units.parse_rate(text, metric) == value


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("10", 10.0), ("10s", 10.0), ("5m", 300.0), ("1h", 3600.0), ("1d", 86400.0),
     ("1h30m", 5400.0), ("0.5s", 0.5), ("2.5", 2.5), ("0", 0.0)],
)  # fmt: skip
def test_parse_duration(text: str, seconds: float) -> None:
    assert units.parse_duration(text) == seconds


@pytest.mark.parametrize(("text", "ratio"), [("80%", 0.8), ("0.8", 0.8), ("12.5%", 0.125)])
def test_parse_ratio(text: str, ratio: float) -> None:
    assert units.parse_ratio(text) == pytest.approx(ratio)


@pytest.mark.parametrize(
    ("value", "text"),
    [(1e10, "10G"), (4e8, "400M"), (6e4, "60k"), (1500.0, "1.5k"), (2.5e9, "2.5G"),
     (999.0, "999"), (1234567.0, "1.234567M"), (None, "off")],
)  # fmt: skip
def test_format_rate(value: float | None, text: str) -> None:
    assert units.format_rate(value) == text
    assert units.parse_rate(text, "pps") == value


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(10.0, "10s"), (60.0, "1m"), (90.0, "1m30s"), (3600.0, "1h"), (86400.0, "1d"), (0.5, "0.5s")],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert units.format_duration(seconds) == text
    assert units.parse_duration(text) == seconds


def test_format_ratio() -> None:
    assert units.format_ratio(0.8) == "80%"
    assert units.format_ratio(0.07) == "7%"
    assert units.format_ratio(0.125) == "12.5%"


# -- the example, inheritance ------------------------------------------------------------------


def test_example_loads() -> None:
    ts = load(EXAMPLE)
    assert isinstance(ts, ThresholdSet)
    assert ts.source == str(EXAMPLE)
    assert [str(p.prefix) for p in ts.policies] == [
        "198.18.10.0/24",
        "198.18.64.0/22",
        "198.18.66.0/24",
        "2001:db8:a00::/48",
    ]
    sbc = ts.policy("198.18.10.0/24")
    assert sbc is not None
    assert sbc.name == "SBCs"
    assert sbc.thresholds == {
        "total": Limit(bps=400e6, pps=60e3),
        "udp": Limit(pps=40e3),
        "amplification": Limit(pps=5e3),
    }
    assert sbc.host_thresholds == {"udp": Limit(pps=20e3)}
    assert sbc.timing == Timing()
    assert sbc.announce.next_hop == "192.0.2.254"
    assert sbc.announce.communities == ("65000:666",)
    assert sbc.source_line == 18
    relays = ts.policy("198.18.64.0/22")
    assert relays is not None and relays.announce.mode == "subnets"
    relay3 = ts.policy("198.18.66.0/24")
    assert relay3 is not None
    assert relay3.parent == "198.18.64.0/22"
    assert relay3.name == ""  # names are not inherited
    assert relay3.thresholds == {"total": Limit(bps=10e9, pps=2e6), "udp": Limit(pps=10e3)}
    assert relay3.announce.mode == "prefix"  # subnets of a /24: the /24 itself
    v6 = ts.policy("2001:db8:a00::/48")
    assert v6 is not None
    assert v6.announce.mode == "list"
    assert v6.announce.prefixes == ("2001:db8:a00::/48",)
    assert ts.ports == PortSets()
    assert (ts.bin_seconds, ts.average_seconds) == (1.0, 5.0)


THREE_LEVELS = """\
version: 1
defaults:
  thresholds:
    total: {bps: 10G, pps: 2M}
    udp: {bps: 5G, pps: 1M, fps: 50k}
  timing: {trigger: 10s, min_divert: 5m}
  announce: {next_hop: {ipv4: 192.0.2.254, ipv6: "2001:db8::fe"}, communities: ["65000:666"]}
prefixes:
  198.18.64.0/22:
    name: media relays
    mode: monitor
    thresholds:
      udp: {pps: 500k}
    timing: {trigger: 20s}
    announce: {mode: subnets, communities: ["65000:1"]}
  198.18.66.0/23:
    thresholds:
      udp: {bps: 1G}
      icmp: {pps: 1k}
    announce: {next_hop: {ipv4: 192.0.2.1}}
  198.18.66.0/24:
    mode: enforce
    thresholds:
      udp: {fps: off}
      total: off
    timing: {min_divert: 10m}
  198.18.67.0/24: {}
  2001:db8:a00::/48:
"""


def test_three_levels_per_metric() -> None:
    ts = loads(THREE_LEVELS)
    leaf = ts.policy("198.18.66.0/24")
    mid = ts.policy("198.18.66.0/23")
    top = ts.policy("198.18.64.0/22")
    assert leaf is not None and mid is not None and top is not None
    assert (top.parent, mid.parent, leaf.parent) == (None, "198.18.64.0/22", "198.18.66.0/23")
    # udp: pps from the /22, bps from the /23, fps cancelled here
    assert leaf.thresholds["udp"] == Limit(bps=1e9, pps=500e3, fps=None)
    assert mid.thresholds["udp"] == Limit(bps=1e9, pps=500e3, fps=50e3)
    assert top.thresholds["udp"] == Limit(bps=5e9, pps=500e3, fps=50e3)
    assert "total" not in leaf.thresholds  # "total: off"
    assert leaf.thresholds["icmp"] == Limit(pps=1e3)
    assert leaf.timing.trigger == 20.0 and leaf.timing.min_divert == 600.0
    assert mid.timing.min_divert == 300.0
    assert (top.mode, mid.mode, leaf.mode) == ("monitor", "monitor", "enforce")
    assert leaf.announce.communities == ("65000:1",)
    assert leaf.announce.next_hop == "192.0.2.1"
    assert top.announce.next_hop == "192.0.2.254"
    assert mid.name == "" and leaf.name == ""
    sibling = ts.policy("198.18.67.0/24")
    assert sibling is not None and sibling.parent == "198.18.66.0/23"
    v6 = ts.policy("2001:db8:a00::/48")
    assert v6 is not None and v6.announce.next_hop == "2001:db8::fe"
    assert v6.timing.trigger == 10.0

    o = leaf.origins
    assert o["thresholds.udp.pps"] == "from 198.18.64.0/22"
    assert o["thresholds.udp.bps"] == "from 198.18.66.0/23"
    assert o["thresholds.udp.fps"] == "set here"
    assert o["thresholds.total.pps"] == "set here"
    assert o["timing.trigger"] == "from 198.18.64.0/22"
    assert o["timing.hold_down"] == "built-in default"
    assert o["announce.communities"] == "from 198.18.64.0/22"
    assert o["announce.next_hop"] == "from 198.18.66.0/23"
    assert v6.origins["announce.next_hop"] == "default"


def test_entry_order_does_not_matter_for_inheritance() -> None:
    text = """\
version: 1
prefixes:
  198.18.66.0/24: {thresholds: {udp: {pps: 10k}}}
  198.18.64.0/22: {thresholds: {udp: {bps: 1G}}}
"""
    leaf = loads(text).policy("198.18.66.0/24")
    assert leaf is not None and leaf.thresholds["udp"] == Limit(bps=1e9, pps=1e4)


def test_unquoted_communities_are_read_as_written() -> None:
    # YAML 1.1 reads 65000:666 as a base-60 integer; the loader uses the text as written
    text = (
        "version: 1\ndefaults:\n  announce: {communities: [65000:666]}\nprefixes:\n  10.0.0.0/8:\n"
    )
    p = loads(text).policies[0]
    assert p.announce.communities == ("65000:666",)


def test_ports_with_ranges() -> None:
    text = (
        "version: 1\ndefaults:\n  ports: {amplification: [53, 1900-1902], sip: [5060], "
        "rtp: 10000-20000}\nprefixes:\n  198.18.10.0/24:\n"
    )
    ts = loads(text)
    assert ts.ports == PortSets(frozenset({53, 1900, 1901, 1902}), frozenset({5060}), 10000, 20000)
    assert ts.origins["ports.sip"] == "default"


def test_more_specific_announcing_the_covering_24() -> None:
    text = """\
version: 1
prefixes:
  198.18.10.0/24: {}
  198.18.10.128/25:
    announce: {mode: list, prefixes: [198.18.10.0/24]}
"""
    p = loads(text).policy("198.18.10.128/25")
    assert p is not None and p.announce.prefixes == ("198.18.10.0/24",)


# -- show, effective, check -------------------------------------------------------------------


def test_show_golden() -> None:
    ts = loads(EXAMPLE.read_text(), source="example.yaml")
    golden_compare(show(ts, "198.18.66.0/24") + "\n", GOLDEN / "valid" / "example.show.txt")


def test_show_annotations() -> None:
    ts = loads(THREE_LEVELS, source="three.yaml")
    text = show(ts, "198.18.66.0/24")
    assert "# inherits from 198.18.66.0/23, then 198.18.64.0/22, then defaults" in text
    assert re.search(r"^ {8}pps: 500k +# from 198\.18\.64\.0/22$", text, re.M)
    assert re.search(r"^ {8}bps: 1G +# from 198\.18\.66\.0/23$", text, re.M)
    assert re.search(r"^ {8}fps: off +# set here$", text, re.M)
    assert re.search(r"^ {6}hold_down: 1m +# built-in default$", text, re.M)
    assert re.search(r"^ {6}min_divert: 10m +# set here$", text, re.M)
    assert re.search(r"^ {2}bin: 1s +# built-in default$", text, re.M)


@pytest.mark.parametrize("prefix", ["198.18.10.0/24", "198.18.66.0/24", "2001:db8:a00::/48"])
def test_show_output_loads_back_to_the_same_policy(prefix: str) -> None:
    ts = load(EXAMPLE)
    original = ts.policy(prefix)
    again = loads(show(ts, prefix)).policies
    assert original is not None and len(again) == 1
    assert again[0] == original.__class__(
        **{
            **{f: getattr(original, f) for f in original.__dataclass_fields__},
            "parent": None,
            "source_line": again[0].source_line,
        }
    )


def test_effective() -> None:
    ts = load(EXAMPLE)
    assert str(effective(ts, "198.18.66.7").prefix) == "198.18.66.0/24"
    assert str(effective(ts, "198.18.65.0/25").prefix) == "198.18.64.0/22"
    assert str(effective(ts, "198.18.64.0/22").prefix) == "198.18.64.0/22"
    assert str(effective(ts, "2001:db8:a00:5::1").prefix) == "2001:db8:a00::/48"
    with pytest.raises(LookupError, match="not inside any protected prefix") as info:
        effective(ts, "192.0.2.1")
    assert isinstance(info.value, ValueError)  # the CLI reports ValueErrors
    with pytest.raises(ValueError, match="expected a prefix or an address"):
        effective(ts, "sbc")
    text = show(ts, "198.18.66.7")
    assert text.startswith("# 198.18.66.7 is covered by 198.18.66.0/24")


def test_check_summary() -> None:
    out = check(EXAMPLE)
    lines = out.splitlines()
    assert lines[0] == (
        f"ok: {EXAMPLE}: 4 prefixes (3 IPv4, 1 IPv6), 1 inside another, 0 monitor only; "
        "bin 1s, average 5s"
    )
    assert re.match(r"^  198\.18\.10\.0/24 +SBCs +enforce +announce prefix +thresholds: "
                    r"total, udp, amplification; per host: udp$", lines[1])  # fmt: skip
    assert "(in 198.18.64.0/22)" in lines[3]
    assert lines[-1].startswith("warning: 2001:db8:a00::/48: next_hop 192.0.2.254 is IPv4")


def test_check_warns_about_a_prefix_without_thresholds(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("version: 1\nprefixes:\n  198.18.10.0/24:\n")
    assert "warning: 198.18.10.0/24: no thresholds at all, it never diverts" in check(path)


def test_check_raises_on_invalid(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text("version: 1\nprefixes:\n  198.18.10.0/24: {mode: on}\n")
    with pytest.raises(ThresholdError, match=r"t\.yaml:3:26: prefixes\[198\.18\.10\.0/24\]\.mode"):
        check(path)


def test_mangled_files_are_refused_cleanly() -> None:
    """Random edits of the golden files: a ThresholdError with one-line problems, or a valid
    set; never another exception."""
    corpus = [p.read_text() for p in [*ERROR_CASES, EXAMPLE]]
    alphabet = [*" :-{}[],#\n0123456789kMGsmh%./abcdefx'\"&*<>!|", "off", "  ", "\n  "]
    rnd = random.Random(20240611)
    refused = 0
    for _ in range(400):
        text = list(rnd.choice(corpus))
        for _ in range(rnd.randint(1, 5)):
            pos = rnd.randrange(len(text) + 1)
            if rnd.random() < 0.4 and pos < len(text):
                del text[pos]
            else:
                text.insert(pos, rnd.choice(alphabet))
        try:
            loads("".join(text))
        except ThresholdError as e:
            refused += 1
            for p in e.problems:
                assert p.line >= 1 and p.column >= 1 and "\n" not in p.message, p
    assert refused > 300


# -- a large file ------------------------------------------------------------------------------


def large_file() -> str:
    lines = [
        "version: 1",
        "defaults:",
        "  thresholds: {total: {bps: 10G, pps: 2M}, udp: {pps: 1M}}",
        "  host_thresholds: {udp: {pps: 200k}, tcp_syn: {pps: 50k}}",
        "  announce: {next_hop: {ipv4: 192.0.2.254, ipv6: '2001:db8::fe'}, "
        "communities: ['65000:666']}",
        "prefixes:",
    ]
    for i in range(100):
        base = ipaddress.ip_network(f"100.{64 + i // 64}.{(i % 64) * 4}.0/22")
        lines += [f"  {base}:", f"    name: pop {i}", "    announce: {mode: subnets}"]
        for j, sub in enumerate(base.subnets(new_prefix=24)):
            lines += [f"  {sub}:", f"    thresholds: {{udp: {{pps: {10 + j}k}}}}"]
            if j == 3:
                lines += ["    mode: monitor"]
    for i in range(300):
        lines += [f"  2001:db8:{i:x}::/48:", f"    thresholds: {{total: {{pps: {i + 1}k}}}}"]
    return "\n".join(lines) + "\n"


def test_large_valid_file() -> None:
    ts = loads(large_file(), source="large.yaml")
    assert len(ts.policies) == 100 * 5 + 300
    leaf = ts.policy("100.64.4.0/24")  # second /24 of the second /22
    assert leaf is not None
    assert leaf.parent == "100.64.4.0/22"
    assert leaf.thresholds["udp"] == Limit(pps=10e3)
    assert leaf.thresholds["total"] == Limit(bps=10e9, pps=2e6)
    assert leaf.announce.mode == "prefix"
    v6 = ts.policy("2001:db8:12b::/48")
    assert v6 is not None and v6.thresholds["total"].pps == 300e3
    assert v6.announce.next_hop == "2001:db8::fe"
    assert sum(p.mode == "monitor" for p in ts.policies) == 100
    assert check_lines(ts) == 800


def check_lines(ts: ThresholdSet) -> int:
    from thresholds.show import summary

    out = summary(ts)
    assert not out.endswith("\n")
    return len(out.splitlines()) - 1


# -- schema ------------------------------------------------------------------------------------


def test_schema_file_is_up_to_date() -> None:
    assert SCHEMA_PATH.read_text(encoding="utf-8") == schema_text(), (
        "thresholds/thresholds.schema.json is stale: run "
        ".venv/bin/python -c 'import thresholds.schema as s; s.write_schema()'"
    )
    assert json.loads(SCHEMA_PATH.read_text()) == json_schema()


def test_schema_covers_every_key() -> None:
    defs = json_schema()["$defs"]
    assert set(defs["entry"]["properties"]) == {k.name for k in ENTRY_KEYS}
    assert set(defs["timing"]["properties"]) == {k.name for k in TIMING_KEYS}
    assert set(defs["announce"]["properties"]) == {k.name for k in ANNOUNCE_KEYS}
    assert set(defs["ports"]["properties"]) == {k.name for k in PORT_KEYS}
    assert set(defs["class_limits"]["properties"]) == set(CLASSES)
    assert set(defs["limit"]["properties"]) == set(METRICS)
    assert defs["timing"]["properties"]["trigger"]["default"] == "10s"


def test_schema_accepts_the_examples_and_refuses_mistakes() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    yaml = pytest.importorskip("yaml")
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for text in (EXAMPLE.read_text(), THREE_LEVELS, large_file()):
        assert list(validator.iter_errors(yaml.safe_load(text))) == []
    bad = yaml.safe_load(EXAMPLE.read_text())
    bad["defaults"]["timing"]["hold_dwon"] = "5s"
    bad["prefixes"]["198.18.10.0/24"]["thresholds"]["udp"] = {"pps": "40 kpps"}
    assert len(list(validator.iter_errors(bad))) == 2


# -- docs --------------------------------------------------------------------------------------

DOC = ROOT / "docs" / "thresholds.md"
_ROW = re.compile(r"^\| `([a-zA-Z0-9_.]+)` \| [^|]+ \| ([^|]+) \|", re.M)


def documented_defaults() -> dict[str, str]:
    return {m[1]: m[2].strip() for m in _ROW.finditer(DOC.read_text(encoding="utf-8"))}


def expected_default(leaf: tuple[str, ...], value: object) -> str:
    if value is None:
        return "none"
    if leaf == ("ports", "rtp"):
        assert isinstance(value, tuple)
        return f"`{value[0]}-{value[1]}`"
    if isinstance(value, tuple):
        return "`[" + ", ".join(str(v) for v in value) + "]`"
    if (leaf[0] == "timing" and leaf[1] == "clear") or leaf == ("announce", "subnet_share"):
        assert isinstance(value, float)
        return f"`{units.format_ratio(value)}`"
    if leaf[0] in ("bin", "average") or (leaf[0] == "timing" and leaf[1] != "backoff"):
        assert isinstance(value, float)
        return f"`{units.format_duration(value)}`"
    if isinstance(value, float) and value.is_integer():
        return f"`{int(value)}`"
    return f"`{value}`"


def test_documented_defaults_match_the_model() -> None:
    documented = documented_defaults()
    for leaf, value in builtin_defaults().items():
        if leaf[:2] == ("announce", "next_hop"):
            key, leaf = "announce.next_hop", leaf[:2]
        else:
            key = ".".join(leaf)
        assert key in documented, f"{key} is not in the keys tables of {DOC.name}"
        assert documented[key] == expected_default(leaf, value), key


def test_every_key_is_documented() -> None:
    documented = documented_defaults()
    names = [k.name for k in GLOBAL_KEYS if k.name != "ports"]
    names += [f"ports.{k.name}" for k in PORT_KEYS]
    names += [
        k.name for k in ENTRY_KEYS if k.kind not in ("timing", "announce", "limits", "anomaly")
    ]
    names += [f"anomaly.{k.name}" for k in ANOMALY_KEYS if k.name != "floor"]
    names += ["anomaly.floor.METRIC"]
    names += [f"timing.{k.name}" for k in TIMING_KEYS]
    names += [f"announce.{k.name}" for k in ANNOUNCE_KEYS]
    names += ["thresholds.CLASS.METRIC", "host_thresholds.CLASS.METRIC"]
    assert sorted(documented) == sorted(names)
    text = DOC.read_text(encoding="utf-8")
    for cls in CLASSES:
        assert f"| `{cls}` |" in text, cls


def test_documented_messages_are_real() -> None:
    """Every message quoted in the docs is the exact text of a golden file."""
    text = DOC.read_text(encoding="utf-8")
    goldens = "".join(p.read_text() for p in GOLDEN.glob("*.txt"))
    quoted = re.findall(r"^([a-z_]+\.yaml:\d+:\d+: .*)$", text, re.M)
    assert len(quoted) > 30
    for line in quoted:
        assert line + "\n" in goldens, line


def test_public_api() -> None:
    assert set(thresholds.__all__) >= {
        "load", "loads", "ThresholdError", "Problem", "show", "check", "json_schema", "effective",
        "NotProtected",
    }  # fmt: skip
