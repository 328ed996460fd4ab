"""Decoder (collector/decoder.py): hand-built datagrams and real captures, step by step.

In the manner of akvorado's decoder tests: feed templates, then options, then data, and
assert the exporter's counters (datagrams, records, options_records, templates,
pending_decoded, errors by reason) after each step.
"""

from __future__ import annotations

import ipaddress
import json
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from collector import stats as reasons
from collector.datagram import DatagramBatch
from collector.decoder import Decoder, DecoderConfig
from collector.flowbatch import VERSION_SFLOW5, FlowBatch, addr_to_pair, pair_to_str
from collector.sources.pcap import read_pcap
from tests import shared
from tests.builders import (
    T0,
    VARLEN,
    Value,
    batch,
    data_set,
    ipfix,
    ipfix_options_template_set,
    ipfix_template_set,
    ipfix_withdraw,
    mixed,
    record,
    sflow_ipv4,
    v5,
    v5_record,
    v9,
    v9_options_template_set,
    v9_template_set,
)

CAPTURES = shared.CAPTURES
needs_corpus = pytest.mark.skipif(not CAPTURES.is_dir(), reason="flow capture corpus not present")

EXP = "192.0.2.10"
EXP2 = "192.0.2.20"

# a plain IPv4 flow template: src, dst, bytes, packets, ports, protocol
FLOW = [(8, 4), (12, 4), (1, 4), (2, 4), (7, 2), (11, 2), (4, 1)]


def flow(src: str = "10.0.0.1", dst: str = "10.0.0.2", nbytes: int = 1000, pkts: int = 10) -> bytes:
    return record(FLOW, [src, dst, nbytes, pkts, 1234, 80, 6])


def decode(dec: Decoder, b: DatagramBatch) -> FlowBatch:
    before = dec.stats.totals().records
    out = dec.decode(b)
    out.validate()
    assert dec.stats.totals().records - before == len(out)
    return out


def counters(dec: Decoder, exporter: str = EXP) -> dict[str, Any]:
    st = dec.stats.by_exporter.get(exporter)
    assert st is not None, f"no stats for {exporter}"
    d = st.as_dict()
    del d["bytes"], d["counter_samples"]
    return d


def want(
    datagrams: int,
    records: int = 0,
    options_records: int = 0,
    templates: int = 0,
    pending_decoded: int = 0,
    **errors: int,
) -> dict[str, Any]:
    return {
        "datagrams": datagrams,
        "records": records,
        "options_records": options_records,
        "templates": templates,
        "pending_decoded": pending_decoded,
        "errors": dict(sorted(errors.items())),
    }


def addr(b: FlowBatch, side: str, i: int = 0) -> str:
    return pair_to_str(getattr(b, f"{side}_hi")[i], getattr(b, f"{side}_lo")[i])


def col(b: FlowBatch, name: str) -> list[Any]:
    return list(getattr(b, name).tolist())


# =========================================================================== sampling
V9_OPTIONS_RATE = v9_options_template_set(257, [(1, 4)], [(34, 4), (35, 1)])  # system scope


def test_v9_template_options_data_step_by_step() -> None:
    dec = Decoder()
    out = decode(dec, batch(v9(v9_template_set((256, FLOW)))))
    assert len(out) == 0
    assert counters(dec) == want(datagrams=1, templates=1)

    out = decode(dec, batch(v9(V9_OPTIONS_RATE), frame=2))
    assert len(out) == 0
    assert counters(dec) == want(datagrams=2, templates=2)

    opts = record([(1, 4), (34, 4), (35, 1)], [0, 1000, 2])
    out = decode(dec, batch(v9(data_set(257, opts, pad=3)), frame=3))
    assert len(out) == 0
    assert counters(dec) == want(datagrams=3, options_records=1, templates=2)

    out = decode(dec, batch(v9(data_set(256, flow(), flow("10.0.0.3", nbytes=77))), frame=4))
    assert counters(dec) == want(datagrams=4, records=2, options_records=1, templates=2)
    assert col(out, "sampling_rate") == [1000, 1000]
    assert col(out, "bytes") == [1000, 77]
    assert [addr(out, "src", i) for i in range(2)] == ["10.0.0.1", "10.0.0.3"]
    assert addr(out, "dst") == "10.0.0.2"
    assert col(out, "frame") == [4, 4]
    assert col(out, "template_id") == [256, 256]
    assert col(out, "version") == [9, 9]
    assert col(out, "src_port") == [1234, 1234] and col(out, "protocol") == [6, 6]
    assert (out.exporter_hi[0], out.exporter_lo[0]) == addr_to_pair(EXP)


def _ipfix_domain_rate(rate: int, domain: int = 0) -> bytes:
    """IPFIX options (scope observationDomainId) announcing samplingInterval for a domain."""
    return ipfix(
        ipfix_options_template_set((400, [(149, 4)], [(34, 4)])),
        data_set(400, record([(149, 4), (34, 4)], [domain, rate])),
        domain=domain,
    )


def _ipfix_sampler_rate(sampler: int, rate: int, domain: int = 0) -> bytes:
    """IPFIX options (scope samplerId) announcing samplerRandomInterval (IE 50)."""
    spec = [(48, 2), (50, 4)]
    return ipfix(
        ipfix_options_template_set((401, [(48, 2)], [(50, 4)])),
        data_set(401, record(spec, [sampler, rate])),
        domain=domain,
    )


def test_ipfix_sampler_id_and_random_interval() -> None:
    dec = Decoder(DecoderConfig(default_sampling_rate=3))
    tpl = (*FLOW, (48, 2))
    decode(dec, batch(ipfix(ipfix_template_set((300, tpl)))))
    assert counters(dec) == want(datagrams=1, templates=1)
    decode(dec, batch(_ipfix_sampler_rate(1, 100), _ipfix_sampler_rate(2, 500), frame=2))
    assert counters(dec) == want(datagrams=3, options_records=2, templates=3)

    recs = [record(tpl, ["10.0.0.1", "10.0.0.2", 1, 1, 1, 1, 6, s]) for s in (1, 2, 9, 1)]
    out = decode(dec, batch(ipfix(data_set(300, *recs)), frame=4))
    assert counters(dec) == want(datagrams=4, records=4, options_records=2, templates=3)
    # sampler 9 was never announced; two samplers with different rates: the default applies
    assert col(out, "sampling_rate") == [100, 500, 3, 100]

    # records naming no sampler: two rates announced, so none of them is "the" rate
    decode(dec, batch(ipfix(ipfix_template_set((301, FLOW))), frame=5))
    out = decode(dec, batch(ipfix(data_set(301, flow())), frame=6))
    assert col(out, "sampling_rate") == [3]


def test_single_announced_sampler_is_the_domain_rate() -> None:
    dec = Decoder(DecoderConfig(default_sampling_rate=3))
    decode(dec, batch(ipfix(ipfix_template_set((301, FLOW))), _ipfix_sampler_rate(7, 64)))
    out = decode(dec, batch(ipfix(data_set(301, flow())), frame=3))
    assert col(out, "sampling_rate") == [64]
    # another observation domain has its own rates
    out = decode(
        dec, batch(ipfix(ipfix_template_set((301, FLOW)), data_set(301, flow()), domain=5))
    )
    assert col(out, "sampling_rate") == [3]


@pytest.mark.parametrize(
    ("algorithm", "values", "rate"),
    [
        (1, {305: 1, 306: 99}, 100),  # systematic count-based: 1 in (interval + space)
        (1, {305: 10, 306: 90}, 10),
        (3, {309: 1, 310: 2000}, 2000),  # random n-out-of-N: population / size
        (3, {305: 1, 306: 1, 309: 2, 310: 1000}, 500),  # algorithm 3 takes size/population
    ],
)
def test_ipfix_psamp_selector_rates(algorithm: int, values: dict[int, int], rate: int) -> None:
    dec = Decoder()
    opts = [(304, 1)] + [(e, 4) for e in values]
    tpl = (*FLOW, (302, 4))
    msg = ipfix(
        ipfix_template_set((300, tpl)),
        ipfix_options_template_set((500, [(302, 4)], opts)),
        data_set(500, record([(302, 4), *opts], [77, algorithm, *values.values()])),
    )
    decode(dec, batch(msg))
    assert counters(dec) == want(datagrams=1, options_records=1, templates=2)
    data = [record(tpl, ["10.0.0.1", "10.0.0.2", 1, 1, 1, 1, 6, sel]) for sel in (77, 78)]
    out = decode(dec, batch(ipfix(data_set(300, *data)), frame=2))
    assert counters(dec) == want(datagrams=2, records=2, options_records=1, templates=2)
    # selector 78 unknown: the single announced selector is the domain's rate
    assert col(out, "sampling_rate") == [rate, rate]


def test_sampling_precedence() -> None:
    """record's own IE 34 > its sampler's rate > domain rate > override > default."""
    other = "192.0.2.99"
    cfg = DecoderConfig(default_sampling_rate=7, sampling_overrides={EXP: 11})
    dec = Decoder(cfg)
    plain, with_sampler, with_own = 300, 301, 302
    f_s = (*FLOW, (48, 1))
    f_o = (*FLOW, (48, 1), (34, 4))
    templates = ipfix(ipfix_template_set((plain, FLOW), (with_sampler, f_s), (with_own, f_o)))

    def data(frame: int) -> FlowBatch:
        msg = ipfix(
            data_set(plain, flow()),
            data_set(with_sampler, record(f_s, ["10.0.0.1", "10.0.0.2", 1, 1, 1, 1, 6, 5])),
            data_set(with_sampler, record(f_s, ["10.0.0.1", "10.0.0.2", 1, 1, 1, 1, 6, 6])),
            data_set(with_own, record(f_o, ["10.0.0.1", "10.0.0.2", 1, 1, 1, 1, 6, 5, 19])),
            data_set(with_own, record(f_o, ["10.0.0.1", "10.0.0.2", 1, 1, 1, 1, 6, 5, 0])),
        )
        return decode(dec, mixed([(T0, frame, EXP, msg), (T0, frame + 1, other, msg)]))

    decode(dec, mixed([(T0, 1, EXP, templates), (T0, 2, other, templates)]))
    out = data(3)
    # nothing announced: override for EXP, default for the other exporter (own IE 34 wins)
    assert col(out, "sampling_rate") == [11, 11, 11, 19, 11, 7, 7, 7, 19, 7]

    decode(dec, batch(_ipfix_domain_rate(13), frame=5))
    out = data(6)
    assert col(out, "sampling_rate")[:5] == [13, 13, 13, 19, 13]  # domain rate > override
    assert col(out, "sampling_rate")[5:] == [7, 7, 7, 19, 7]  # only EXP announced

    decode(dec, batch(_ipfix_sampler_rate(5, 17), frame=8))
    out = data(9)
    # sampler 5: 17; sampler 6 (never announced): the domain rate; an own IE 34 of 0: sampler
    assert col(out, "sampling_rate")[:5] == [13, 17, 13, 19, 17]
    assert counters(dec) == want(datagrams=6, records=15, options_records=2, templates=5)

    # the rate of one domain is not that of another
    msg = ipfix(ipfix_template_set((plain, FLOW)), data_set(plain, flow()), domain=1)
    assert col(decode(dec, batch(msg, frame=10)), "sampling_rate") == [11]


def test_v9_sampler_options_and_rate_in_record() -> None:
    dec = Decoder()
    tpl = (*FLOW, (48, 1))
    sampler_opts = v9_options_template_set(260, [(1, 4)], [(48, 1), (49, 1), (50, 4)])
    opts = [
        record([(1, 4), (48, 1), (49, 1), (50, 4)], [0, sid, 2, rate])
        for sid, rate in ((1, 10), (2, 20))
    ]
    decode(dec, batch(v9(v9_template_set((256, tpl)), sampler_opts, data_set(260, *opts))))
    assert counters(dec) == want(datagrams=1, options_records=2, templates=2)
    recs = [record(tpl, ["10.0.0.1", "10.0.0.2", 1, 1, 1, 1, 6, s]) for s in (2, 1)]
    out = decode(dec, batch(v9(data_set(256, *recs)), frame=2))
    assert col(out, "sampling_rate") == [20, 10]


def test_options_in_same_datagram_apply_to_its_data() -> None:
    dec = Decoder()
    opts = record([(1, 4), (34, 4), (35, 1)], [0, 250, 2])
    msg = v9(
        v9_template_set((256, FLOW)),
        data_set(256, flow()),  # before the options set: still decoded with the rate
        V9_OPTIONS_RATE,
        data_set(257, opts),
    )
    out = decode(dec, batch(msg))
    assert col(out, "sampling_rate") == [250]
    assert counters(dec) == want(datagrams=1, records=1, options_records=1, templates=2)


# =========================================================================== pending data
def test_data_before_template_in_an_earlier_batch() -> None:
    dec = Decoder()
    out = decode(dec, batch(v9(data_set(256, flow(), flow(nbytes=5))), arrival=T0, frame=3))
    assert len(out) == 0
    assert len(dec.pending) == 1
    assert counters(dec) == want(datagrams=1, unknown_template=1)

    b = batch(v9(v9_template_set((256, FLOW)), data_set(256, flow(nbytes=9))), arrival=T0 + 5)
    b.frame[0] = 7
    out = decode(dec, b)
    assert len(dec.pending) == 0
    assert counters(dec) == want(
        datagrams=2, records=3, templates=1, pending_decoded=2, unknown_template=1
    )
    # held records keep the frame and arrival of the datagram that carried them, and come
    # out first (frame order)
    assert col(out, "frame") == [3, 3, 7]
    assert col(out, "arrival") == [T0, T0, T0 + 5]
    assert col(out, "bytes") == [1000, 5, 9]


def test_data_before_template_in_the_same_datagram_and_batch() -> None:
    dec = Decoder()
    msg = ipfix(data_set(300, flow()), ipfix_template_set((300, FLOW)), data_set(300, flow()))
    out = decode(dec, batch(msg))
    assert counters(dec) == want(
        datagrams=1, records=2, templates=1, pending_decoded=1, unknown_template=1
    )
    assert len(dec.pending) == 0 and col(out, "frame") == [1, 1]

    # data in frame 1, its template in frame 2, another exporter's records in frame 3
    dec = Decoder()
    items = [
        (T0, 1, EXP, ipfix(data_set(300, flow(nbytes=1)))),
        (T0 + 1, 2, EXP, ipfix(ipfix_template_set((300, FLOW)))),
        (T0 + 2, 3, EXP2, v5(v5_record(octets=3))),
    ]
    out = decode(dec, mixed(items))
    assert col(out, "frame") == [1, 3] and col(out, "bytes") == [1, 3]
    assert col(out, "arrival") == [T0, T0 + 2]
    assert counters(dec) == want(
        datagrams=2, records=1, templates=1, pending_decoded=1, unknown_template=1
    )


def test_pending_bounded_by_count() -> None:
    dec = Decoder(DecoderConfig(max_pending_sets=4, max_pending_per_exporter=3))
    sets = [data_set(300, flow(nbytes=i)) for i in range(1, 5)]
    decode(dec, batch(ipfix(*sets)))
    # the fourth set of EXP pushes out its oldest (per-exporter cap)
    assert len(dec.pending) == 3
    assert counters(dec) == want(datagrams=1, unknown_template=4, pending_dropped=1)

    decode(dec, batch(ipfix(data_set(300, flow()), data_set(300, flow())), exporter=EXP2))
    # the global cap pushes out the oldest set of all (EXP's)
    assert len(dec.pending) == 4
    assert counters(dec) == want(datagrams=1, unknown_template=4, pending_dropped=2)
    assert counters(dec, EXP2) == want(datagrams=1, unknown_template=2)

    out = decode(dec, batch(ipfix(ipfix_template_set((300, FLOW))), frame=9))
    assert col(out, "bytes") == [3, 4]  # the newest survive
    assert counters(dec) == want(
        datagrams=2,
        records=2,
        templates=1,
        pending_decoded=2,
        unknown_template=4,
        pending_dropped=2,
    )
    assert len(dec.pending) == 2


def test_pending_bounded_by_bytes() -> None:
    dec = Decoder(DecoderConfig(max_pending_bytes=3 * len(flow())))
    decode(dec, batch(ipfix(*(data_set(300, flow()) for _ in range(4)))))
    assert len(dec.pending) == 3 and dec.pending.nbytes == 3 * len(flow())
    # a set larger than the whole budget is not held at all
    decode(dec, batch(ipfix(data_set(300, *(flow() for _ in range(4)))), frame=2))
    assert len(dec.pending) == 3
    assert counters(dec) == want(datagrams=2, unknown_template=5, pending_dropped=2)


def test_pending_expires_on_event_time() -> None:
    dec = Decoder(DecoderConfig(pending_max_age=10.0))
    decode(dec, batch(ipfix(data_set(300, flow())), arrival=T0))
    # another exporter's datagrams move event time on
    decode(dec, batch(v5(v5_record()), exporter=EXP2, arrival=T0 + 9, frame=2))
    assert len(dec.pending) == 1
    decode(dec, batch(v5(v5_record()), exporter=EXP2, arrival=T0 + 10.5, frame=3))
    assert len(dec.pending) == 0
    assert counters(dec) == want(datagrams=1, unknown_template=1, pending_expired=1)
    out = decode(dec, batch(ipfix(ipfix_template_set((300, FLOW))), arrival=T0 + 11, frame=4))
    assert len(out) == 0
    assert counters(dec) == want(datagrams=2, templates=1, unknown_template=1, pending_expired=1)


def test_unknown_template_flood_keeps_pending_bounded() -> None:
    cfg = DecoderConfig(max_pending_sets=64, max_pending_per_exporter=8, max_pending_bytes=4096)
    dec = Decoder(cfg)
    items = []
    for i in range(400):
        exporter = f"198.51.100.{i % 50}"
        sets = [data_set(256 + (i * 7 + k) % 900, bytes(40 + k)) for k in range(3)]
        items.append((T0 + i * 0.01, i + 1, exporter, ipfix(*sets)))
    decode(dec, mixed(items))
    assert len(dec.pending) <= 64
    assert dec.pending.nbytes <= 4096
    per: dict[str, int] = {}
    for p in dec.pending._items.values():
        per[p.key.exporter] = per.get(p.key.exporter, 0) + 1
    assert max(per.values()) <= 8
    totals = dec.stats.totals()
    assert totals.errors[reasons.UNKNOWN_TEMPLATE] == 1200
    assert totals.errors[reasons.PENDING_DROPPED] == 1200 - len(dec.pending)


# =========================================================================== templates
def test_ipfix_template_withdrawal() -> None:
    dec = Decoder()
    decode(dec, batch(ipfix(ipfix_template_set((300, FLOW)), data_set(300, flow()))))
    assert counters(dec) == want(datagrams=1, records=1, templates=1)
    decode(dec, batch(ipfix(ipfix_withdraw(300)), frame=2))
    assert dec.templates.count(EXP) == 0
    out = decode(dec, batch(ipfix(data_set(300, flow())), frame=3))
    assert len(out) == 0
    assert counters(dec) == want(datagrams=3, records=1, templates=1, unknown_template=1)


def test_ipfix_withdraw_all() -> None:
    dec = Decoder()
    opts = ipfix_options_template_set((400, [(149, 4)], [(34, 4)]))
    decode(dec, batch(ipfix(ipfix_template_set((300, FLOW), (301, FLOW)), opts)))
    decode(dec, batch(ipfix(ipfix_template_set((300, FLOW)), domain=1), frame=2))
    assert dec.templates.count(EXP) == 4

    decode(dec, batch(ipfix(ipfix_withdraw(2)), frame=3))  # all templates of domain 0
    assert dec.templates.count(EXP) == 2  # the options template and domain 1 remain
    decode(dec, batch(ipfix(ipfix_withdraw(3, options=True)), frame=4))  # all options templates
    assert dec.templates.count(EXP) == 1

    msg = ipfix(data_set(300, flow()), data_set(301, flow()), data_set(400, bytes(8)))
    assert len(decode(dec, batch(msg, frame=5))) == 0
    out = decode(dec, batch(ipfix(data_set(300, flow()), domain=1), frame=6))
    assert len(out) == 1
    assert counters(dec) == want(datagrams=6, records=1, templates=4, unknown_template=3)


@pytest.mark.parametrize("version", [9, 10])
def test_template_redefinition(version: int) -> None:
    def msg(*sets: bytes) -> bytes:
        return v9(*sets) if version == 9 else ipfix(*sets)

    tset = v9_template_set if version == 9 else ipfix_template_set
    new = [(2, 4), (1, 8), (12, 4), (8, 4)]  # another layout under the same id
    dec = Decoder()
    decode(dec, batch(msg(tset((300, FLOW)), data_set(300, flow()))))
    decode(dec, batch(msg(tset((300, FLOW))), frame=2))  # a refresh is no conflict
    assert counters(dec) == want(datagrams=2, records=1, templates=2)

    rec = record(new, [5, 12345, "10.1.1.2", "10.1.1.1"])
    out = decode(dec, batch(msg(tset((300, new)), data_set(300, rec)), frame=3))
    assert counters(dec) == want(datagrams=3, records=2, templates=3, template_conflict=1)
    assert col(out, "bytes") == [12345] and col(out, "packets") == [5]
    assert (addr(out, "src"), addr(out, "dst")) == ("10.1.1.1", "10.1.1.2")
    assert col(out, "src_port") == [0]


def test_template_redefined_within_one_batch_decodes_each_set_with_its_layout() -> None:
    dec = Decoder()
    new = [(1, 8), (8, 4)]
    msg = ipfix(
        ipfix_template_set((300, FLOW)),
        data_set(300, flow(nbytes=1)),
        ipfix_template_set((300, new)),
        data_set(300, record(new, [2, "10.7.7.7"])),
    )
    out = decode(dec, batch(msg))
    assert col(out, "bytes") == [1, 2]
    assert addr(out, "src", 1) == "10.7.7.7"
    assert counters(dec) == want(datagrams=1, records=2, templates=2, template_conflict=1)


def test_bad_templates_are_counted() -> None:
    dec = Decoder()
    bad = [
        ipfix(ipfix_template_set((100, FLOW))),  # template id < 256
        ipfix(ipfix_template_set((300, [(1, 0), (2, 0)]))),  # records of 0 bytes
        ipfix(struct.pack(">HH", 2, 12) + struct.pack(">HHHH", 300, 9, 1, 4)),  # cut short
        ipfix(ipfix_options_template_set((400, [], [(34, 4)]))),  # options without scope
        v9(struct.pack(">HH", 0, 8) + struct.pack(">HH", 300, 0)),  # v9 template, no fields
    ]
    out = decode(dec, batch(*bad))
    assert len(out) == 0
    assert counters(dec) == want(datagrams=5, templates=1, bad_template=5)
    assert dec.templates.count() == 0


# =========================================================================== layouts
ENTERPRISE = 29305


def test_ipfix_variable_length_and_enterprise_fields() -> None:
    tpl = [
        (8, 4),
        (82, VARLEN),  # interfaceName
        (1, 8),
        (1, VARLEN, ENTERPRISE),  # enterprise element 1 is not octetDeltaCount
        (12, 4),
        (5, 4, ENTERPRISE),
        (2, 4),
        (7, 2),
        (11, 2),
        (94, VARLEN),  # applicationDescription
    ]
    long_name = b"x" * 300  # 255 + 2-byte length form
    rows: list[list[Value]] = [
        ["10.0.0.1", b"eth0", 1500, b"\x01" * 9, "10.0.0.2", 9, 3, 53, 5353, b""],
        ["10.0.0.3", long_name, 40, b"", "10.0.0.4", 9, 1, 443, 1024, long_name],
        ["10.0.0.5", b"", 60, long_name, "10.0.0.6", 9, 2, 22, 2222, b"a"],
    ]
    data = data_set(300, *(record(tpl, r) for r in rows), pad=2)
    dec = Decoder()
    out = decode(dec, batch(ipfix(ipfix_template_set((300, tpl)), data)))
    assert counters(dec) == want(datagrams=1, records=3, templates=1)
    assert col(out, "bytes") == [1500, 40, 60]
    assert col(out, "packets") == [3, 1, 2]
    assert col(out, "src_port") == [53, 443, 22]
    assert col(out, "dst_port") == [5353, 1024, 2222]
    assert [addr(out, "src", i) for i in range(3)] == ["10.0.0.1", "10.0.0.3", "10.0.0.5"]
    assert [addr(out, "dst", i) for i in range(3)] == ["10.0.0.2", "10.0.0.4", "10.0.0.6"]
    assert col(out, "tos") == [0, 0, 0]  # enterprise element 5 is not ipClassOfService


def test_ipfix_several_sets_and_messages_in_one_datagram() -> None:
    other = [(1, 4), (2, 4), (8, 4), (12, 4)]
    msg1 = ipfix(
        ipfix_template_set((300, FLOW), (301, other)),
        data_set(300, flow(nbytes=1)),
        data_set(301, record(other, [2, 1, "10.0.1.1", "10.0.1.2"]), pad=3),
        data_set(300, flow(nbytes=3), flow(nbytes=4)),
    )
    msg2 = ipfix(ipfix_template_set((300, other)), data_set(300, record(other, [5, 1, 0, 0])))
    msg2 = msg2[:12] + struct.pack(">I", 7) + msg2[16:]  # observation domain 7
    dec = Decoder()
    out = decode(dec, batch(msg1 + msg2))
    assert col(out, "bytes") == [1, 2, 3, 4, 5]
    assert col(out, "domain_id") == [0, 0, 0, 0, 7]
    assert col(out, "template_id") == [300, 301, 300, 300, 300]
    assert counters(dec) == want(datagrams=1, records=5, templates=3)


def test_ipfix_zero_padding() -> None:
    dec = Decoder()
    msg = ipfix(ipfix_template_set((300, FLOW)), data_set(300, flow(), pad=3))
    # padding after the last set inside the message, and zeros after the message
    padded = msg[:2] + struct.pack(">H", len(msg) + 3) + msg[4:] + bytes(3)
    out = decode(dec, batch(padded, msg + bytes(8)))
    assert len(out) == 2
    assert counters(dec) == want(datagrams=2, records=2, templates=2)


def test_v9_several_flowsets_and_zero_padded_tail() -> None:
    other = [(1, 4), (2, 4), (8, 4), (12, 4)]
    msg = v9(
        v9_template_set((256, FLOW), (257, other)),
        data_set(256, flow(nbytes=1), pad=1),
        data_set(257, record(other, [2, 1, "10.0.1.1", "10.0.1.2"])),
        data_set(256, flow(nbytes=3)),
    )
    dec = Decoder()
    out = decode(dec, batch(msg + bytes(5), msg + bytes(2)))  # Cisco ACI, PAN-OS pad
    assert col(out, "bytes") == [1, 2, 3, 1, 2, 3]
    assert col(out, "frame") == [1, 1, 1, 2, 2, 2]
    assert counters(dec) == want(datagrams=2, records=6, templates=4)


def test_v9_two_messages_in_one_datagram() -> None:
    dec = Decoder()
    m1 = v9(v9_template_set((256, FLOW)), data_set(256, flow(nbytes=1)), source_id=1)
    m2 = v9(v9_template_set((256, FLOW)), data_set(256, flow(nbytes=2)), source_id=2)
    out = decode(dec, batch(m1 + m2))
    assert col(out, "bytes") == [1, 2] and col(out, "domain_id") == [1, 2]


def test_bad_set_lengths() -> None:
    dec = Decoder()
    good = ipfix(ipfix_template_set((300, FLOW)), data_set(300, flow()))
    too_long = good[:-4] + struct.pack(">I", 1)  # data set ends past the message
    overrun = good[:2] + struct.pack(">H", len(good) + 10) + good[4:]
    cut = good[:10]
    set_len_2 = ipfix(struct.pack(">HH", 300, 2) + b"\x01\x02\x03\x04")
    out = decode(dec, batch(good, overrun, cut, set_len_2, too_long))
    assert len(out) == 2  # the good one and the intact sets of the last one
    assert counters(dec) == want(datagrams=5, records=2, templates=2, bad_length=2, truncated=1)


def test_set_ids_reserved_are_unsupported() -> None:
    dec = Decoder()
    out = decode(dec, batch(ipfix(data_set(5, bytes(8))), v9(data_set(100, bytes(8)))))
    assert len(out) == 0
    assert counters(dec) == want(datagrams=2, unsupported=2)


# =========================================================================== times
def test_v9_sysuptime_across_the_32_bit_wrap() -> None:
    tpl = [*FLOW, (22, 4), (21, 4)]
    rows: list[list[Value]] = [
        ["10.0.0.1", "10.0.0.2", 1, 1, 1, 1, 6, 2**32 - 5000, 500],  # started before the wrap
        ["10.0.0.1", "10.0.0.2", 1, 1, 1, 1, 6, 200, 900],
        ["10.0.0.1", "10.0.0.2", 1, 1, 1, 1, 6, 900, 1100],  # stamped after the header
    ]
    dec = Decoder()
    decode(dec, batch(v9(v9_template_set((256, tpl)))))
    msg = v9(data_set(256, *(record(tpl, r) for r in rows)), uptime=1000, secs=int(T0))
    out = decode(dec, batch(msg, frame=2))
    assert out.first.tolist() == pytest.approx([T0 - 6.0, T0 - 0.8, T0 - 0.1])
    assert out.last.tolist() == pytest.approx([T0 - 0.5, T0 - 0.1, T0 + 0.1])


def test_ipfix_absolute_times() -> None:
    tpl_ms = [*FLOW, (152, 8), (153, 8)]
    tpl_s = [*FLOW, (150, 4), (151, 4)]
    tpl_delta = [*FLOW, (158, 4), (159, 4)]
    tpl_dur = [*FLOW, (152, 8), (161, 4)]
    start_ms = int(T0 * 1000) - 2500
    dec = Decoder()
    msg = ipfix(
        ipfix_template_set((300, tpl_ms), (301, tpl_s), (302, tpl_delta), (303, tpl_dur)),
        data_set(
            300, record(tpl_ms, ["10.0.0.1", "10.0.0.2", 1, 1, 1, 1, 6, start_ms, start_ms + 1500])
        ),
        data_set(
            301, record(tpl_s, ["10.0.0.1", "10.0.0.2", 1, 1, 1, 1, 6, int(T0) - 60, int(T0) - 1])
        ),
        data_set(
            302, record(tpl_delta, ["10.0.0.1", "10.0.0.2", 1, 1, 1, 1, 6, 3_000_000, 250_000])
        ),
        data_set(303, record(tpl_dur, ["10.0.0.1", "10.0.0.2", 1, 1, 1, 1, 6, start_ms, 2000])),
        export_time=int(T0),
    )
    out = decode(dec, batch(msg))
    assert out.first.tolist() == pytest.approx([T0 - 2.5, T0 - 60, T0 - 3.0, T0 - 2.5])
    assert out.last.tolist() == pytest.approx([T0 - 1.0, T0 - 1, T0 - 0.25, T0 - 0.5])


def test_ipfix_sysuptime_with_system_init_time_from_options() -> None:
    tpl = [*FLOW, (22, 4), (21, 4)]
    init_ms = int(T0 * 1000) - 86_400_000  # booted a day ago
    rec = record(tpl, ["10.0.0.1", "10.0.0.2", 1, 1, 1, 1, 6, 86_390_000, 86_399_000])
    dec = Decoder()
    # without systemInitTimeMilliseconds the times are unknown
    out = decode(dec, batch(ipfix(ipfix_template_set((300, tpl)), data_set(300, rec))))
    assert math.isnan(out.first[0]) and math.isnan(out.last[0])

    opts = ipfix(
        ipfix_options_template_set((400, [(144, 4)], [(160, 8)])),  # exportingProcessId scope
        data_set(400, record([(144, 4), (160, 8)], [1, init_ms])),
    )
    out = decode(dec, batch(opts, ipfix(data_set(300, rec)), frame=2))
    assert out.first.tolist() == pytest.approx([T0 - 10.0])
    assert out.last.tolist() == pytest.approx([T0 - 1.0])
    assert counters(dec) == want(datagrams=3, records=2, options_records=1, templates=2)
    # other domains do not share it
    out = decode(dec, batch(ipfix(ipfix_template_set((300, tpl)), data_set(300, rec), domain=3)))
    assert math.isnan(out.first[0])


# =========================================================================== caps
def test_template_flood_stops_at_the_per_exporter_cap() -> None:
    dec = Decoder(DecoderConfig(max_templates_per_exporter=8))
    flood = ipfix(ipfix_template_set(*((300 + i, FLOW) for i in range(20))))
    decode(dec, batch(flood))
    assert dec.templates.count(EXP) == 8
    assert counters(dec) == want(datagrams=1, templates=20, template_limit=12)
    # the templates in place still work and can be refreshed; the others do not exist
    msg = ipfix(ipfix_template_set((300, FLOW)), data_set(300, flow()), data_set(315, flow()))
    assert len(decode(dec, batch(msg, frame=2))) == 1
    assert counters(dec) == want(
        datagrams=2, records=1, templates=21, template_limit=12, unknown_template=1
    )
    # a withdrawal makes room
    decode(dec, batch(ipfix(ipfix_withdraw(301), ipfix_template_set((315, FLOW))), frame=3))
    assert dec.templates.count(EXP) == 8
    assert counters(dec)["errors"]["template_limit"] == 12
    # another exporter has its own allowance
    decode(dec, batch(flood, exporter=EXP2))
    assert dec.templates.count(EXP2) == 8 and dec.templates.count() == 16


def test_exporters_beyond_the_cap_share_other() -> None:
    dec = Decoder(DecoderConfig(max_exporters=3))
    tpl = ipfix(ipfix_template_set((300, FLOW)))
    items = [(T0, i + 1, f"198.51.100.{i}", tpl) for i in range(3)]
    items += [(T0, i + 4, f"198.51.100.{i}", v5(v5_record())) for i in range(6)]
    out = decode(dec, mixed(items))
    assert len(out) == 6  # records are still decoded
    assert set(dec.stats.by_exporter) == {"198.51.100.0", "198.51.100.1", "198.51.100.2", "other"}
    assert counters(dec, "198.51.100.0") == want(datagrams=2, records=1, templates=1)
    assert counters(dec, "other") == want(datagrams=3, records=3)
    # the template table is bounded by exporters too: theirs are not kept
    decode(dec, batch(tpl, exporter="198.51.100.9", frame=10))
    assert counters(dec, "other") == want(datagrams=4, records=3, templates=1, template_limit=1)
    assert dec.templates.count() == 3


# =========================================================================== state
def _capture(name: str) -> list[tuple[float, int, str, bytes]]:
    return list(read_pcap(CAPTURES / name))


def _assert_same(a: FlowBatch, b: FlowBatch) -> None:
    assert len(a) == len(b)
    for name in FlowBatch.NAMES:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


@needs_corpus
def test_state_save_and_load_across_a_restart(tmp_path: Path) -> None:
    datagrams = _capture("gen__softflowd_ipfix.pcap")[:16]  # templates only in frame 1
    first, second = mixed(datagrams[:8]), mixed(datagrams[8:])
    reference = Decoder()
    reference.decode(mixed(datagrams[:8]))
    want_second = reference.decode(mixed(datagrams[8:]))
    assert len(want_second) > 100 and not np.isnan(want_second.first).any()

    dec = Decoder()
    decode(dec, first)
    path = tmp_path / "decoder-state.json"
    dec.save(path)
    assert not list(tmp_path.glob(".decoder-state.*"))  # no temporary left behind

    fresh = Decoder()
    assert fresh.load(path)
    out = decode(fresh, second)
    _assert_same(out, want_second)
    st = fresh.stats.get("127.0.0.1")
    assert st.templates == 0 and st.pending_decoded == 0 and not st.errors
    assert fresh.sys_init_ms == dec.sys_init_ms


@needs_corpus
def test_state_restores_sampling_rates(tmp_path: Path) -> None:
    datagrams = _capture("akvorado__options-template-data.combined.pcap")
    dec = Decoder()
    decode(dec, mixed(datagrams[:3]))  # options template, options data, template
    path = tmp_path / "state.json"
    dec.save(path)
    fresh = Decoder()
    fresh.load(path)
    out = decode(fresh, mixed(datagrams[3:]))
    assert col(out, "sampling_rate") == [30000] * 4
    assert counters(fresh, "192.0.2.100") == want(datagrams=1, records=4)
    assert fresh.sampling.snapshot() == dec.sampling.snapshot()
    # saving over an existing state replaces it
    fresh.save(path)
    assert json.loads(path.read_text())["format"] == 1


@pytest.mark.parametrize(
    "content",
    [
        '{"format": 99, "templates": [], "sampling": {}, "sys_init_ms": []}',
        "not json",
        "[1, 2]",
        "{}",
    ],
)
def test_load_rejects_a_wrong_format(tmp_path: Path, content: str) -> None:
    path = tmp_path / "state.json"
    path.write_text(content)
    with pytest.raises(ValueError):
        Decoder().load(path)


def test_load_without_a_state_file(tmp_path: Path) -> None:
    assert Decoder().load(tmp_path / "missing.json") is False


# =========================================================================== families, v5
def test_ipv6_exporter_and_flow_addresses() -> None:
    exporter = "2001:db8:ffff::1"
    tpl6 = [(27, 16), (28, 16), (1, 4), (2, 4), (7, 2), (11, 2), (4, 1)]
    both = [(8, 4), (12, 4), (27, 16), (28, 16), (1, 4)]
    rows = [
        record(tpl6, ["2001:db8::a", "2001:db8::b", 100, 1, 1, 2, 17]),
        record(tpl6, ["::ffff:10.1.2.3", "fe80::1", 200, 2, 3, 4, 6]),
    ]
    dec = Decoder()
    msg = ipfix(
        ipfix_template_set((300, tpl6), (301, both)),
        data_set(300, *rows),
        data_set(301, record(both, ["0.0.0.0", "0.0.0.0", "2001:db8::c", "2001:db8::d", 5])),
        data_set(301, record(both, ["10.0.0.1", "10.0.0.2", "::", "::", 6])),
    )
    v9msg = v9(v9_template_set((256, tpl6)), data_set(256, rows[0]))
    out = decode(dec, batch(msg, v9msg, exporter=exporter))
    assert counters(dec, exporter) == want(datagrams=2, records=5, templates=3)
    assert [addr(out, "src", i) for i in range(5)] == [
        "2001:db8::a",
        "10.1.2.3",  # IPv4-mapped is the one representation of IPv4
        "2001:db8::c",
        "10.0.0.1",
        "2001:db8::a",
    ]
    assert addr(out, "dst", 1) == "fe80::1" and addr(out, "dst", 2) == "2001:db8::d"
    assert col(out, "ip_version") == [6, 6, 6, 4, 6]
    ehi, elo = addr_to_pair(exporter)
    assert set(col(out, "exporter_hi")) == {ehi} and set(col(out, "exporter_lo")) == {elo}
    assert int(ipaddress.ip_address(exporter)) == (ehi << 64) | elo


def test_v5_header_sampling_and_fields() -> None:
    dec = Decoder()
    recs = [v5_record("10.0.0.1", "10.0.0.2", octets=100), v5_record("10.0.0.3", "10.0.0.4")]
    out = decode(
        dec, batch(v5(*recs, sampling=0x4000 | 100, engine_type=1, engine_id=2, uptime=100_000))
    )
    assert counters(dec) == want(datagrams=1, records=2)
    assert col(out, "sampling_rate") == [100, 100]
    assert col(out, "domain_id") == [0x0102, 0x0102]
    assert col(out, "bytes") == [100, 1000] and col(out, "packets") == [10, 10]
    assert (addr(out, "src", 1), addr(out, "dst", 1)) == ("10.0.0.3", "10.0.0.4")
    assert col(out, "input_if") == [1, 1] and col(out, "output_if") == [2, 2]
    assert col(out, "tcp_flags") == [0x12, 0x12] and col(out, "protocol") == [6, 6]
    assert out.first.tolist() == pytest.approx([T0 - 10.0] * 2)
    assert out.last.tolist() == pytest.approx([T0 - 1.0] * 2)
    assert col(out, "version") == [5, 5] and col(out, "template_id") == [0, 0]


def test_v5_without_header_sampling_takes_the_configured_rate() -> None:
    cfg = DecoderConfig(default_sampling_rate=4, sampling_overrides={EXP: 64})
    dec = Decoder(cfg)
    items = [
        (T0, 1, EXP, v5(v5_record())),
        (T0, 2, EXP2, v5(v5_record())),
        (T0, 3, EXP, v5(v5_record(), sampling=0x4000 | 10)),  # the header's rate wins
    ]
    out = decode(dec, mixed(items))
    assert col(out, "sampling_rate") == [64, 4, 10]


def test_v5_count_mismatch_and_truncation() -> None:
    dec = Decoder()
    two = [v5_record(), v5_record()]
    bad = [
        v5(*two, count=3),  # the count does not fit the datagram
        v5(*(two * 16), count=31),  # more than 30 records
        v5(*two)[:20],  # a cut header
    ]
    out = decode(dec, batch(*bad))
    assert len(out) == 0
    assert counters(dec) == want(datagrams=3, bad_count=2, truncated=1)
    # two v5 messages back to back in one datagram
    out = decode(dec, batch(v5(*two) + v5(v5_record(octets=7)), frame=4))
    assert col(out, "bytes") == [1000, 1000, 7]
    assert counters(dec) == want(datagrams=4, records=3, bad_count=2, truncated=1)


def test_unknown_versions() -> None:
    dec = Decoder()
    payloads = [b"", b"\x00", b"\x00\x07" + bytes(30), b"\x01\x09" + bytes(30), b"hello world"]
    out = decode(dec, batch(*payloads))
    assert len(out) == 0
    assert counters(dec) == want(datagrams=5, bad_version=5)
    # an IPFIX message followed by something that is not one
    out = decode(dec, batch(ipfix(ipfix_template_set((300, FLOW))) + b"\x00\x07junk", frame=9))
    assert counters(dec) == want(datagrams=6, templates=1, bad_version=6)


def test_mixed_versions_come_out_in_datagram_order() -> None:
    dec = Decoder()
    v9_tpl = v9(v9_template_set((256, FLOW)))
    ipfix_tpl = ipfix(ipfix_template_set((300, FLOW)))
    items = [
        (T0, 1, EXP, v9_tpl),
        (T0, 2, EXP, ipfix_tpl),
        (T0 + 1, 3, EXP, ipfix(data_set(300, flow(nbytes=3), flow(nbytes=3)))),
        (T0 + 1, 4, EXP2, sflow_ipv4(length=4)),
        (T0 + 1, 5, EXP, v5(v5_record(octets=5))),
        (T0 + 2, 6, EXP, v9(data_set(256, flow(nbytes=6)))),
        (T0 + 2, 7, EXP2, sflow_ipv4(length=7)),
        (T0 + 2, 8, EXP, ipfix(data_set(300, flow(nbytes=8)))),
        (T0 + 3, 9, EXP, v5(v5_record(octets=9), v5_record(octets=9))),
        (T0 + 3, 10, EXP, v9(data_set(256, flow(nbytes=10)), data_set(256, flow(nbytes=10)))),
    ]
    out = decode(dec, mixed(items))
    assert col(out, "frame") == [3, 3, 4, 5, 6, 7, 8, 9, 9, 10, 10]
    assert col(out, "bytes") == col(out, "frame")
    assert col(out, "version") == [10, 10, VERSION_SFLOW5, 5, 9, VERSION_SFLOW5, 10, 5, 5, 9, 9]
    assert col(out, "sampling_rate") == [1, 1, 512, 1, 1, 512, 1, 1, 1, 1, 1]
    assert counters(dec) == want(datagrams=8, records=9, templates=2)
    assert counters(dec, EXP2) == want(datagrams=2, records=2)


def test_sets_of_several_templates_keep_their_order_in_a_datagram() -> None:
    other = [(1, 4), (8, 4)]
    dec = Decoder()
    msg = ipfix(
        ipfix_template_set((300, FLOW), (301, other)),
        data_set(300, flow(nbytes=1)),
        data_set(301, record(other, [2, "10.0.0.9"])),
        data_set(300, flow(nbytes=3)),
        data_set(301, record(other, [4, "10.0.0.9"])),
    )
    out = decode(dec, batch(msg, msg))
    assert col(out, "bytes") == [1, 2, 3, 4] * 2


def test_empty_batch() -> None:
    out = Decoder().decode(DatagramBatch())
    out.validate()
    assert len(out) == 0


# =========================================================================== real captures
AKVORADO = "akvorado__{}.pcap"


@needs_corpus
def test_akvorado_v9_options_template_options_data_template_data() -> None:
    """akvorado's TestDecode: each capture is one step, counters checked after each."""
    dec = Decoder()
    exporter = "192.0.2.100"
    steps = [
        ("options-template", want(datagrams=1, templates=1)),
        ("options-data", want(datagrams=2, options_records=4, templates=1)),
        ("template", want(datagrams=3, options_records=4, templates=2)),
        ("data", want(datagrams=4, records=4, options_records=4, templates=2)),
    ]
    out = FlowBatch.empty()
    for name, expected in steps:
        out = decode(dec, mixed(_capture(AKVORADO.format(name))))
        assert counters(dec, exporter) == expected, name
        if name != "data":
            assert len(out) == 0
    assert col(out, "sampling_rate") == [30000] * 4
    assert [addr(out, "src", i) for i in range(4)] == [
        "198.38.121.178",
        "198.38.121.219",
        "173.194.190.106",
        "74.125.100.234",
    ]
    assert [addr(out, "dst", i) for i in range(4)] == [
        "91.170.143.87",
        "88.122.57.97",
        "37.165.129.20",
        "88.120.219.117",
    ]
    assert col(out, "input_if") == [335, 335, 461, 461]
    assert col(out, "output_if") == [450, 452, 306, 451]
    assert col(out, "bytes") == [1500, 1500, 1400, 1448]
    assert col(out, "packets") == [1] * 4 and col(out, "protocol") == [6] * 4
    assert col(out, "src_port") == [443] * 4
    assert col(out, "dst_port") == [19624, 2444, 53697, 52300]
    assert col(out, "tcp_flags") == [16] * 4


@needs_corpus
def test_akvorado_sampling_rate_in_data_records() -> None:
    dec = Decoder()
    decode(dec, mixed(_capture(AKVORADO.format("samplingrate-template"))))
    out = decode(dec, mixed(_capture(AKVORADO.format("samplingrate-data"))))
    assert counters(dec, "192.168.0.1") == want(datagrams=2, records=6, templates=1)
    assert col(out, "sampling_rate") == [2048] * 6
    assert (addr(out, "src"), addr(out, "dst")) == ("232.131.215.65", "142.183.180.65")
    assert (out.input_if[0], out.vlan[0], out.bytes[0], out.packets[0]) == (13, 701, 160, 1)
    assert (out.src_port[0], out.dst_port[0], out.protocol[0]) == (13245, 10907, 6)


@needs_corpus
def test_akvorado_data_and_templates_in_one_datagram() -> None:
    """akvorado's TestTemplatesMixedWithData: data sets before their templates."""
    dec = Decoder()
    out = decode(dec, mixed(_capture(AKVORADO.format("data+templates"))))
    c = counters(dec, "102.102.144.1")
    assert c["templates"] == 2 and c["options_records"] == 1
    assert c["errors"] == {"unknown_template": 1}
    assert c["pending_decoded"] == 11 and c["records"] == len(out) == 21
    assert len(dec.pending) == 0
    assert set(col(out, "sampling_rate")) == {100}


@needs_corpus
def test_capture_decoded_datagram_by_datagram_equals_one_batch() -> None:
    # (not for captures whose options change mid-capture: in one batch, options apply to
    # every data set of the batch)
    names = (
        "gen__softflowd_v9.pcap",
        "gen__softflowd_ipfix.pcap",
        "logstash__ipfix_test_yaf.wrapped.pcap",
    )
    for name in names:
        datagrams = _capture(name)
        whole = Decoder()
        one = decode(whole, mixed(datagrams))
        step = Decoder()
        parts = [decode(step, mixed([d])) for d in datagrams]
        many = FlowBatch.concat(parts)
        assert len(one) == len(many)
        # the same records; in one batch held records come out in their datagram's place
        key = np.lexsort((one.bytes, one.src_lo, one.frame))
        key2 = np.lexsort((many.bytes, many.src_lo, many.frame))
        _assert_same(one.take(key), many.take(key2))
        assert whole.stats.as_dict() == step.stats.as_dict()
