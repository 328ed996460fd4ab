"""Fuzzing the whole Decoder (NetFlow v5, v9, IPFIX) with Hypothesis.

Mutated corpus datagrams (truncations, bit flips, overwritten lengths), random templates
followed by random data, random set lengths and template floods from many exporters.
Asserted after every ``decode``: nothing escapes, the FlowBatch is well formed and its
length matches the records counted, and every per-exporter table stays within its cap.

The decoder keeps a last-resort ``except Exception`` around group decoding (``log.exception``
then ``bad_template`` / ``decode_error``). Here that net is a failure: ``log.exception`` is
patched to raise, chained to the exception it caught, and sFlow's net is emptied.

``DIVERTOR_FUZZ_SCALE=10`` multiplies the example counts (bug hunting; the default keeps
this file well under a minute).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from unittest import mock

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from collector import decoder as decoder_module
from collector.datagram import DatagramBatch
from collector.decoder import Decoder, DecoderConfig
from collector.elements import OPTION_ELEMENTS, USED_ELEMENTS
from collector.flowbatch import FlowBatch
from collector.sources.pcap import read_pcap
from collector.wire import sflow
from tests import shared
from tests.builders import T0, VARLEN

CAPTURES = shared.CAPTURES
SCALE = max(1, int(os.environ.get("DIVERTOR_FUZZ_SCALE", "1")))


def fuzz(n: int) -> Any:
    return settings(
        max_examples=n * SCALE,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# --------------------------------------------------------------------------- checking
@contextmanager
def no_safety_net() -> Iterator[None]:
    """Any exception the decoder's last-resort handlers catch fails the test."""

    def caught(msg: str, *args: object, **kwargs: object) -> None:
        raise AssertionError("decoder safety net caught an exception: " + msg % args)

    saved = sflow._SAFETY_NET
    sflow._SAFETY_NET = ()
    try:
        with mock.patch.object(decoder_module.log, "exception", side_effect=caught) as net:
            yield
        assert not net.called
    finally:
        sflow._SAFETY_NET = saved


def assert_bounded(dec: Decoder) -> None:
    c = dec.config
    assert len(dec.stats.by_exporter) <= c.max_exporters + 1
    tables = dec.templates._by_exporter
    assert len(tables) <= c.max_exporters
    assert all(len(t) <= c.max_templates_per_exporter for t in tables.values())
    assert dec.templates.count() <= c.max_exporters * c.max_templates_per_exporter
    assert len(dec.pending) <= c.max_pending_sets
    assert dec.pending.nbytes <= c.max_pending_bytes
    assert all(n <= c.max_pending_per_exporter for n in dec.pending._per_exporter.values())
    assert sum(dec.pending._per_exporter.values()) == len(dec.pending)
    assert len(dec.sys_init_ms) <= 4 * c.max_exporters
    rates = dec.sampling._rates
    assert len(rates) <= c.max_exporters
    assert all(len(t) <= c.max_samplers_per_exporter for t in rates.values())


def run(dec: Decoder, batches: Sequence[DatagramBatch]) -> list[FlowBatch]:
    """Decode the batches (frames must increase) and check every result."""
    outs = []
    seen_frames: set[int] = set()
    with no_safety_net():
        for b in batches:
            seen_frames.update(b.frame)
            before = dec.stats.totals()
            out = dec.decode(b)
            after = dec.stats.totals()
            out.validate()
            assert after.records - before.records == len(out)
            assert after.datagrams - before.datagrams == len(b)
            assert "decode_error" not in after.errors
            late = after.pending_decoded - before.pending_decoded
            assert late <= len(out) + after.options_records - before.options_records
            assert np.isin(out.ip_version, (0, 4, 6)).all()
            assert (out.sampling_rate >= 1).all()
            assert np.isin(out.version, (5, 9, 10, 0x5F05)).all()
            if len(out):
                assert (np.diff(out.frame) >= 0).all()  # datagram order
                assert set(out.frame.tolist()) <= seen_frames
            assert_bounded(dec)
            outs.append(out)
    return outs


def as_batches(
    items: Sequence[tuple[str, bytes]], split: int = 0, t0: float = T0
) -> list[DatagramBatch]:
    """(exporter, payload) items as one batch, or two when ``split`` is inside."""
    batches = [DatagramBatch()]
    for i, (exporter, payload) in enumerate(items):
        if i == split and i:
            batches.append(DatagramBatch())
        batches[-1].append(t0 + i, i + 1, exporter, payload)
    return batches


# --------------------------------------------------------------------------- corpus
CORPUS_CAPTURES = {
    # NetFlow v5
    "gen__softflowd_v5.pcap": 3,
    "graylog__netflow5.pcap": 3,
    "logstash__netflow5_test_invalid01.wrapped.pcap": 1,
    # NetFlow v9 with options, padding, sampling
    "akvorado__options-template-data.combined.pcap": 4,
    "akvorado__data+templates.pcap": 1,
    "logstash__netflow9_test_cisco_nbar.wrapped.pcap": 3,
    "logstash__netflow9_test_cisco_aci.wrapped.pcap": 2,
    "gen__softflowd_v9.pcap": 3,
    "logstash__netflow9_test_0length_fields.wrapped.pcap": 1,
    # IPFIX with variable-length and enterprise fields, options, sysuptime
    "logstash__ipfix_test_yaf.wrapped.pcap": 5,
    "gen__softflowd_ipfix_biflow.pcap": 3,
    "pmacct__401-IPFIXv10-BMP-IPv6-CISCO-MPLS-multiple-sources__traffic-00.pcap": 12,
    "logstash__ipfix_test_procera.wrapped.pcap": 2,
    "ndpi__netflow-fritz.pcap": 1,
    "akvorado__datalink.combined.pcap": 2,
    "akvorado__mpls.pcap": 1,
}


def _scenarios() -> list[list[tuple[str, bytes]]]:
    out = []
    for name, n in CORPUS_CAPTURES.items():
        path = CAPTURES / name
        if path.is_file():
            out.append([(d[2], d[3]) for d in list(read_pcap(path))[:n]])
    return out


SCENARIOS = _scenarios()


def test_corpus_is_there() -> None:
    if CAPTURES.is_dir():
        assert len(SCENARIOS) == len(CORPUS_CAPTURES)
        for scenario in SCENARIOS:
            dec = Decoder()
            run(dec, as_batches(scenario))
            assert not dec.stats.totals().errors.keys() - {
                "unknown_template",
                "bad_count",  # logstash's invalid v5
            }


def _mutate(payload: bytes, data: st.DataObject) -> bytes:
    buf = bytearray(payload)
    for _ in range(data.draw(st.integers(0, 3), label="mutations")):
        kind = data.draw(st.sampled_from(["flip", "u16", "cut", "zero", "insert"]))
        if not buf:
            break
        pos = data.draw(st.integers(0, len(buf) - 1), label="pos")
        if kind == "flip":
            buf[pos] ^= data.draw(st.integers(1, 255), label="mask")
        elif kind == "u16":  # set lengths, field counts, template ids, element lengths...
            value = data.draw(
                st.sampled_from([0, 1, 3, 4, 255, 256, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF])
                | st.integers(0, 0xFFFF),
                label="u16",
            )
            buf[pos : pos + 2] = struct.pack(">H", value)[: len(buf) - pos]
        elif kind == "cut":
            del buf[pos:]
        elif kind == "zero":
            end = data.draw(st.integers(pos, len(buf)), label="end")
            buf[pos:end] = bytes(end - pos)
        else:
            buf[pos:pos] = data.draw(st.binary(max_size=16), label="insert")
    return bytes(buf)


@fuzz(150)
@given(data=st.data())
def test_mutated_corpus_datagrams(data: st.DataObject) -> None:
    scenario = data.draw(st.sampled_from(SCENARIOS), label="capture")
    target = data.draw(st.integers(0, len(scenario) - 1), label="mutated datagram")
    items = list(scenario)
    exporter, payload = items[target]
    items[target] = (exporter, _mutate(payload, data))
    if data.draw(st.booleans(), label="repeat"):  # mutated data after intact templates
        items.append(items[target])
    split = data.draw(st.integers(0, len(items)), label="split")
    dec = Decoder()
    run(dec, as_batches(items, split))


@fuzz(150)
@given(
    data=st.data(),
    cut=st.integers(0, 2000),
)
def test_truncated_corpus_datagrams(data: st.DataObject, cut: int) -> None:
    scenario = data.draw(st.sampled_from(SCENARIOS), label="capture")
    items = [(e, p[: cut % (len(p) + 1)]) for e, p in scenario]
    dec = Decoder()
    # intact first (templates known), then every datagram cut at the same point
    run(dec, as_batches(list(scenario) + items, len(scenario)))


# --------------------------------------------------------------------------- random templates
# (Hypothesis favours the first entries: the plain widths come first)
INTERESTING_LENGTHS = [4, 2, 1, 8, 16, 3, 0, 5, 6, 9, 17, 255, 256, VARLEN - 1, VARLEN]
element = st.sampled_from(sorted(USED_ELEMENTS)) | st.integers(0, 0x7FFF)
length = st.sampled_from(INTERESTING_LENGTHS) | st.integers(0, 0xFFFF)
enterprise = st.just(0) | st.integers(1, 0xFFFFFFFF)
field_spec = st.tuples(element, length, enterprise)
small_field_spec = st.tuples(element, st.sampled_from([4, 2, 1, 8, 16, VARLEN, 3, 0]), enterprise)


def rarely(draw: st.DrawFn, label: str) -> bool:
    """True about one time in eight: anomalies stay frequent, most input stays decodable."""
    return draw(st.integers(0, 7), label=label) == 3  # not 0: Hypothesis favours bounds


def _specs(fields: Sequence[tuple[int, int, int]], ipfix: bool) -> bytes:
    out = b""
    for eid, ln, ent in fields:
        if ipfix and ent:
            out += struct.pack(">HHI", eid | 0x8000, ln, ent)
        else:
            out += struct.pack(">HH", eid, ln)
    return out


def _set(set_id: int, body: bytes, length: int | None = None) -> bytes:
    return struct.pack(">HH", set_id, 4 + len(body) if length is None else length) + body


def _message(version: int, sets: Sequence[bytes], domain: int, uptime: int = 100_000) -> bytes:
    body = b"".join(sets)
    if version == 9:
        return struct.pack(">HHIIII", 9, len(sets), uptime, int(T0), 0, domain) + body
    return struct.pack(">HHIII", 10, min(16 + len(body), 0xFFFF), int(T0), 0, domain) + body


@st.composite
def template_record(
    draw: st.DrawFn, version: int, options: bool, template_id: int, small: bool = False
) -> tuple[bytes, list[tuple[int, int, int]]]:
    fields = draw(st.lists(small_field_spec if small else field_spec, min_size=1, max_size=24))
    ipfix = version == 10
    declared = len(fields)
    if rarely(draw, "wrong count"):
        declared = draw(st.integers(0, 0xFFFF) | st.sampled_from([0, 0xFFFF]), label="count")
    if not options:
        head = struct.pack(">HH", template_id, declared)
    elif ipfix:
        scopes = draw(st.integers(1, max(len(fields), 1)), label="scopes")
        if rarely(draw, "wrong scopes"):
            scopes = draw(st.integers(0, 0xFFFF), label="scope count")
        head = struct.pack(">HHH", template_id, declared, scopes)
    else:
        n_scope = draw(st.integers(0, len(fields)), label="v9 scopes")
        scope_len, opt_len = 4 * n_scope, 4 * (len(fields) - n_scope)
        if rarely(draw, "wrong lengths"):
            scope_len = draw(st.integers(0, 0xFFFF), label="scope length")
            opt_len = draw(st.integers(0, 0xFFFF), label="option length")
        head = struct.pack(">HHH", template_id, scope_len, opt_len)
    return head + _specs(fields, ipfix), fields


@st.composite
def records_for(draw: st.DrawFn, fields: Sequence[tuple[int, int, int]]) -> bytes:
    """Data records that follow the template (values random), or random bytes."""
    if rarely(draw, "random body"):
        return draw(st.binary(max_size=400))
    out = b""
    for _ in range(draw(st.integers(0, 6), label="records")):
        for _, ln, _ in fields:
            if ln == VARLEN:
                n = draw(st.sampled_from([0, 1, 4, 16, 254, 255, 300]), label="varlen")
                prefix = bytes([n]) if n < 255 else b"\xff" + struct.pack(">H", n)
                if draw(st.booleans(), label="varlen long form"):
                    prefix = b"\xff" + struct.pack(">H", n)
                out += prefix + draw(st.binary(min_size=n, max_size=n))
            elif ln <= 16:
                out += draw(
                    st.binary(min_size=ln, max_size=ln)
                    | st.sampled_from([b"\xff" * ln, b"\x00" * ln]),
                    label="value",
                )
            else:
                out += bytes(min(ln, 5000))
            if len(out) > 4000:  # a datagram has room for little more
                return out
    return out


@st.composite
def exchange(draw: st.DrawFn, small: bool = False) -> list[bytes]:
    """Messages of one exporter: random templates / options templates, then data for them."""
    version = draw(st.sampled_from([9, 10]), label="version")
    domain = draw(st.sampled_from([0, 1, 0xFFFFFFFF]), label="domain")
    uptime = draw(st.sampled_from([0, 1000, 2**31, 2**32 - 1]), label="uptime")
    messages = []
    templates = []
    for _ in range(draw(st.integers(1, 3), label="templates")):
        options = draw(st.booleans(), label="options")
        tid = draw(st.integers(256, 258), label="template id")
        if rarely(draw, "odd template id"):
            tid = draw(st.integers(0, 0xFFFF), label="any template id")
        rec, fields = draw(template_record(version, options, tid, small))
        set_id = (1 if options else 0) if version == 9 else (3 if options else 2)
        messages.append(_message(version, [_set(set_id, rec)], domain, uptime))
        templates.append((tid, fields))
    for _ in range(draw(st.integers(1, 4), label="data messages")):
        sets = []
        for _ in range(draw(st.integers(1, 3), label="sets")):
            tid, fields = draw(st.sampled_from(templates))
            body = draw(records_for(fields))
            length = None
            if rarely(draw, "wrong set length"):
                length = draw(st.integers(0, 0xFFFF), label="set length")
            sets.append(_set(tid, body, length))
        messages.append(_message(version, sets, domain, uptime))
    if rarely(draw, "data first"):
        messages.reverse()
    if draw(st.booleans(), label="together"):  # templates and data in one datagram
        messages = [b"".join(messages)] if version == 10 else messages
    return messages


@fuzz(200)
@given(messages=exchange(), split=st.integers(0, 8))
def test_random_templates_then_random_data(messages: list[bytes], split: int) -> None:
    dec = Decoder()
    run(dec, as_batches([("192.0.2.1", m) for m in messages], split))


@fuzz(200)
@given(messages=exchange(small=True), split=st.integers(0, 8))
def test_random_small_templates_then_data(messages: list[bytes], split: int) -> None:
    """Templates of the elements the decoder reads, in widths it has to convert."""
    dec = Decoder()
    run(dec, as_batches([("192.0.2.1", m) for m in messages], split))


@st.composite
def option_values(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """An IPFIX options template of option elements in random widths, and one record."""
    elements = draw(st.lists(st.sampled_from(sorted(OPTION_ELEMENTS)), min_size=1, max_size=6))
    widths = [draw(st.sampled_from([1, 2, 3, 4, 8, 9, 16])) for _ in elements]
    fields = [(e, w, 0) for e, w in zip(elements, widths, strict=True)]
    head = struct.pack(">HHH", 400, len(fields), 1)
    values = b"".join(
        draw(st.binary(min_size=w, max_size=w) | st.just(b"\xff" * w) | st.just(b"\0" * w))
        for w in widths
    )
    return head + _specs(fields, True), values


@fuzz(150)
@given(opts=st.lists(option_values(), min_size=1, max_size=3), sampler=st.integers(0, 0xFFFF))
def test_random_sampling_options_then_data(opts: list[tuple[bytes, bytes]], sampler: int) -> None:
    """Announced rates of any size and form; data naming samplers, selectors, own intervals."""
    tpl = [(8, 4, 0), (1, 4, 0), (48, 2, 0), (302, 4, 0), (34, 4, 0)]
    sets = [_set(2, struct.pack(">HH", 300, len(tpl)) + _specs(tpl, True))]
    for template, values in opts:
        sets += [_set(3, template), _set(400, values)]
    records = b"".join(
        struct.pack(">IIHII", 0x0A000001, 100, s, s, own)
        for s, own in ((sampler, 0), (sampler ^ 1, 0), (0, 0xFFFFFFFF), (sampler, 5))
    )
    sets.append(_set(300, records))
    dec = Decoder(DecoderConfig(default_sampling_rate=0xFFFFFFFF))
    out = run(dec, as_batches([("192.0.2.1", _message(10, sets, 0))]))[0]
    assert len(out) == 4
    assert out.sampling_rate[3] == 5 and out.sampling_rate[2] == 0xFFFFFFFF


# --------------------------------------------------------------------------- sets, v5, floods
@fuzz(150)
@given(
    version=st.sampled_from([9, 10]),
    sets=st.lists(
        st.tuples(
            st.sampled_from([0, 1, 2, 3, 4, 9, 255, 256, 257]) | st.integers(0, 0xFFFF),
            st.sampled_from([0, 1, 3, 4, 5]) | st.integers(0, 0xFFFF),
            st.binary(max_size=64),
        ),
        max_size=8,
    ),
    tail=st.binary(max_size=8),
)
def test_random_set_ids_and_lengths(
    version: int, sets: list[tuple[int, int, bytes]], tail: bytes
) -> None:
    body = [_set(sid, b, ln) for sid, ln, b in sets]
    msg = _message(version, body, 0) + tail
    dec = Decoder()
    # the same datagram twice: templates it may define are used by its second copy
    run(dec, as_batches([("192.0.2.1", msg), ("192.0.2.1", msg)], 1))


@fuzz(150)
@given(
    count=st.integers(0, 40) | st.integers(0, 0xFFFF),
    sampling=st.integers(0, 0xFFFF),
    records=st.integers(0, 31),
    tail=st.binary(max_size=60),
    messages=st.integers(1, 3),
)
def test_random_v5(count: int, sampling: int, records: int, tail: bytes, messages: int) -> None:
    head = struct.pack(">HHIIIIBBH", 5, count, 1000, int(T0), 0, 0, 1, 2, sampling)
    body = bytes(range(48)) * records
    payload = (head + body) * messages + tail
    dec = Decoder(DecoderConfig(default_sampling_rate=10))
    out = run(dec, as_batches([("192.0.2.5", payload), ("192.0.2.5", payload[:-1])]))[0]
    if len(out):
        rate = sampling & 0x3FFF
        assert set(out.sampling_rate.tolist()) == {rate or 10}


@fuzz(150)
@given(
    prefix=st.sampled_from([b"\x00\x05", b"\x00\x09", b"\x00\x0a", b"\x00\x00\x00\x05", b""]),
    tail=st.binary(max_size=200),
)
def test_random_bytes_after_a_version(prefix: bytes, tail: bytes) -> None:
    dec = Decoder()
    run(dec, as_batches([("192.0.2.7", prefix + tail)] * 2))


FLOOD_CONFIG = DecoderConfig(
    max_exporters=6,
    max_templates_per_exporter=5,
    max_samplers_per_exporter=3,
    max_pending_sets=20,
    max_pending_per_exporter=4,
    max_pending_bytes=3000,
    pending_max_age=5.0,
)


@st.composite
def flood_event(draw: st.DrawFn) -> tuple[str, bytes]:
    exporter = f"203.0.113.{draw(st.integers(0, 9), label='exporter')}"
    version = draw(st.sampled_from([9, 10]))
    tid = draw(st.integers(256, 262), label="template id")
    kind = draw(st.sampled_from(["template", "options", "data", "withdraw"]))
    if kind == "data":
        body = draw(st.binary(min_size=4, max_size=300))
        return exporter, _message(version, [_set(tid, body)], draw(st.integers(0, 1)))
    if kind == "withdraw" and version == 10:
        wid = draw(st.sampled_from([tid, 2]))
        return exporter, _message(10, [_set(2, struct.pack(">HH", wid, 0))], 0)
    options = kind == "options"
    n = draw(st.integers(1, 8) | st.integers(1, 60), label="templates in the set")
    recs = b""
    for i in range(n):
        elements = [(8, 4, 0), (1, 4, 0), (48, 1, 0), (34, 4, 0), (160, 8, 0)]
        if options and version == 10:
            recs += struct.pack(">HHH", tid + i, len(elements), 1) + _specs(elements, True)
        elif options:
            recs += struct.pack(">HHH", tid + i, 4, 4 * (len(elements) - 1))
            recs += _specs(elements, False)
        else:
            recs += struct.pack(">HH", tid + i, len(elements)) + _specs(elements, version == 10)
    set_id = (1 if options else 0) if version == 9 else (3 if options else 2)
    sets = [_set(set_id, recs)]
    if options:  # and options data announcing samplers
        sets += [_set(tid + i, draw(st.binary(min_size=21, max_size=21))) for i in range(n)]
    return exporter, _message(version, sets, draw(st.integers(0, 1)))


@fuzz(60)
@given(events=st.lists(flood_event(), min_size=1, max_size=80), splits=st.integers(1, 6))
def test_floods_from_many_exporters_stay_bounded(
    events: list[tuple[str, bytes]], splits: int
) -> None:
    dec = Decoder(FLOOD_CONFIG)
    size = max(1, len(events) // splits)
    batches = []
    for start in range(0, len(events), size):
        b = DatagramBatch()
        for i, (exporter, payload) in enumerate(events[start : start + size], start):
            b.append(T0 + i * 0.5, i + 1, exporter, payload)  # event time moves: pending expires
        batches.append(b)
    run(dec, batches)
    totals = dec.stats.totals()
    assert totals.datagrams == len(events)
    assert sum(st.datagrams for st in dec.stats.by_exporter.values()) == len(events)


def test_a_long_template_and_data_flood_stays_bounded() -> None:
    """Deterministic: 20 000 template records and 5 000 unknown data sets from 300 exporters."""
    dec = Decoder(FLOOD_CONFIG)
    spec = _specs([(8, 4, 0), (1, 4, 0)], True)
    items = []
    for i in range(300):
        exporter = f"2001:db8::{i:x}"
        recs = b"".join(struct.pack(">HH", 256 + k, 2) + spec for k in range(66))
        items.append((exporter, _message(10, [_set(2, recs)], i % 3)))
        data = [_set(1000 + k, bytes(64)) for k in range(17)]
        items.append((exporter, _message(10, data, 0)))
    outs = run(dec, as_batches(items, len(items) // 2))
    assert sum(len(o) for o in outs) == 0
    totals = dec.stats.totals()
    assert totals.templates == 300 * 66
    assert totals.errors["template_limit"] == 300 * 66 - FLOOD_CONFIG.max_exporters * 5
    assert totals.errors["unknown_template"] == 300 * 17
    assert 0 < len(dec.pending) <= FLOOD_CONFIG.max_pending_sets
    assert set(dec.stats.by_exporter) >= {"other"}
