"""Inheritance and the checks that need effective values; builds the ``ThresholdSet``.

Each leaf of an entry comes from the entry itself, else from its nearest covering configured
entry (which got it the same way), else from ``defaults``, else from the model's built-in
default. ``name`` and ``announce.prefixes`` are never inherited.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from yaml.nodes import Node

from thresholds.layers import Document, Entry, Leaf
from thresholds.model import (
    CLASSES,
    METRICS,
    Announce,
    Anomaly,
    Limit,
    Network,
    PortSets,
    PrefixPolicy,
    ThresholdSet,
    Timing,
)
from thresholds.spec import MAX_ANNOUNCE, TIMING_KEYS, builtin_defaults, leaf_label
from thresholds.units import format_duration

if TYPE_CHECKING:
    from thresholds.loader import Reader

HERE = "set here"
DEFAULT = "default"
BUILTIN = "built-in default"
NOT_INHERITED: frozenset[Leaf] = frozenset({("name",), ("announce", "prefixes")})


@dataclass(slots=True)
class Level:
    """The effective values of one level (defaults or an entry), with where each came from."""

    values: dict[Leaf, Any]
    origins: dict[Leaf, str]
    nodes: dict[Leaf, Node]

    def inherit(self, parent_text: str) -> Level:
        values, origins, nodes = {}, {}, {}
        for leaf, value in self.values.items():
            if leaf in NOT_INHERITED:
                continue
            values[leaf] = value
            origin = self.origins[leaf]
            origins[leaf] = f"from {parent_text}" if origin == HERE else origin
            if leaf in self.nodes:
                nodes[leaf] = self.nodes[leaf]
        return Level(values, origins, nodes)


def resolve(doc: Document, reader: Reader) -> ThresholdSet:
    base = Level(builtin_defaults(), {}, {})
    base.origins = dict.fromkeys(base.values, BUILTIN)
    for leaf, setting in doc.defaults.items():
        base.values[leaf] = setting.value
        base.origins[leaf] = DEFAULT
        base.nodes[leaf] = setting.node
    check_globals(base, reader)
    check_timing(base, "defaults", DEFAULT, reader)

    protected = [e.network for e in doc.entries]
    levels: dict[Network, Level] = {}
    parents: dict[Network, str | None] = {}
    lengths: dict[int, set[int]] = {}
    for e in sorted(doc.entries, key=lambda e: (e.network.version, e.network.prefixlen)):
        family_lengths = lengths.setdefault(e.network.version, set())
        parent = covering(e.network, levels, family_lengths)
        family_lengths.add(e.network.prefixlen)
        if parent is None:
            level = base.inherit("defaults")
            parents[e.network] = None
        else:
            level = levels[parent].inherit(str(parent))
            parents[e.network] = str(parent)
        for leaf, setting in e.layer.items():
            level.values[leaf] = setting.value
            level.origins[leaf] = HERE
            level.nodes[leaf] = setting.node
        levels[e.network] = level
        check_timing(level, e.path, HERE, reader)

    policies = tuple(
        build_policy(e, levels[e.network], parents[e.network], protected, reader)
        for e in doc.entries
    )
    v = base.values
    ports = PortSets(
        amplification=frozenset(v[("ports", "amplification")]),
        sip=frozenset(v[("ports", "sip")]),
        rtp_low=v[("ports", "rtp")][0],
        rtp_high=v[("ports", "rtp")][1],
    )
    origins = {
        leaf_label(leaf): base.origins[leaf] for leaf in base.values if leaf[0] in GLOBAL_ROOTS
    }
    return ThresholdSet(
        policies=policies,
        ports=ports,
        bin_seconds=float(v[("bin",)]),
        average_seconds=float(v[("average",)]),
        source=reader.source,
        origins=origins,
    )


GLOBAL_ROOTS = ("bin", "average", "ports")


def covering(net: Network, levels: dict[Network, Level], lengths: set[int]) -> Network | None:
    """The longest configured network strictly containing ``net``; ``lengths``: the prefix
    lengths configured for its address family (few: the loop stays short)."""
    bits = net.max_prefixlen
    address = int(net.network_address)
    for length in sorted((n for n in lengths if n < net.prefixlen), reverse=True):
        mask = ((1 << length) - 1) << (bits - length)
        sup = ipaddress.ip_network((address & mask, length))
        if sup in levels:
            return sup
    return None


def check_globals(base: Level, reader: Reader) -> None:
    bin_s, avg = float(base.values[("bin",)]), float(base.values[("average",)])
    node = base.nodes.get(("average",)) or base.nodes.get(("bin",))
    if node is None:
        return
    if avg < bin_s:
        reader.add(
            node,
            "defaults.average",
            f"average ({format_duration(avg)}) must be at least one bin ({format_duration(bin_s)})",
        )
    elif not math.isclose(avg / bin_s, round(avg / bin_s), abs_tol=1e-9):
        reader.add(
            node,
            "defaults.average",
            f"average ({format_duration(avg)}) must be a "
            f"whole number of bins ({format_duration(bin_s)})",
        )


def check_timing(level: Level, path: str, own: str, reader: Reader) -> None:
    """Combinations of timing values, reported where one of them is set."""
    lo, hi = ("timing", "min_divert"), ("timing", "max_divert_hold")
    if own not in (level.origins[lo], level.origins[hi]):
        return
    if level.values[hi] < level.values[lo]:
        at = hi if level.origins[hi] == own else lo
        reader.add(
            level.nodes[at],
            f"{path}.{leaf_label(at)}",
            f"max_divert_hold ({format_duration(level.values[hi])}) is shorter than "
            f"min_divert ({format_duration(level.values[lo])})",
        )


def build_policy(
    e: Entry, level: Level, parent: str | None, protected: list[Network], reader: Reader
) -> PrefixPolicy:
    v = level.values
    fam = f"ipv{e.network.version}"
    origins = {
        leaf_label(leaf): origin
        for leaf, origin in level.origins.items()
        if leaf[0] not in GLOBAL_ROOTS
        and not (leaf[:2] == ("announce", "next_hop") and leaf[2] != fam)
        and not (
            leaf[0] == "announce"
            and leaf[1].startswith("subnet_length_")
            and not leaf[1].endswith(f"v{e.network.version}")
        )
    }
    timing = Timing(**{k.field or k.name: float(v[("timing", k.name)]) for k in TIMING_KEYS})
    announce = build_announce(e, level, protected, reader, origins)
    return PrefixPolicy(
        prefix=e.network,
        name=v.get(("name",)) or "",
        mode=v[("mode",)],
        thresholds=limits(v, "thresholds"),
        host_thresholds=limits(v, "host_thresholds"),
        carpet_min_hosts=int(v[("carpet_min_hosts",)]),
        timing=timing,
        announce=announce,
        anomaly=build_anomaly(v),
        parent=parent,
        source_line=e.node.start_mark.line + 1,
        origins=origins,
    )


def build_anomaly(v: dict[Leaf, Any]) -> Anomaly:
    rule, mix = v[("anomaly", "rule")], v[("anomaly", "mix")]
    floor = {m: v.get(("anomaly", "floor", m)) for m in ("bps", "pps")}
    return Anomaly(
        rule=None if rule in (None, "off") else rule,
        classes=tuple(v[("anomaly", "classes")]),
        metric=v[("anomaly", "metric")],
        floor=Limit(**{m: None if x is None else float(x) for m, x in floor.items()}),
        mode=v[("anomaly", "mode")],
        mix=None if mix in (None, "off") else float(mix),
        baselines=v[("anomaly", "baselines")],
    )


def limits(values: dict[Leaf, Any], base: str) -> dict[str, Limit]:
    found: dict[str, dict[str, Any]] = {}
    for leaf, value in values.items():
        if leaf[0] == base:
            found.setdefault(leaf[1], {})[leaf[2]] = value
    out: dict[str, Limit] = {}
    for cls in CLASSES:
        got = found.get(cls)
        if got and any(x is not None for x in got.values()):
            out[cls] = Limit(**{m: None if got.get(m) is None else float(got[m]) for m in METRICS})
    return out


def _source(origin: str) -> str:
    """An origin as said in a message: "from defaults", "built-in default", "from <prefix>"."""
    return {DEFAULT: "from defaults", BUILTIN: "by default"}.get(origin, origin)


def build_announce(
    e: Entry, level: Level, protected: list[Network], reader: Reader, origins: dict[str, str]
) -> Announce:
    net, v = e.network, level.values
    maxlen = MAX_ANNOUNCE[net.version]
    sublen = int(v[("announce", f"subnet_length_v{net.version}")])
    mode = v[("announce", "mode")]
    mode_origin = level.origins[("announce", "mode")]
    here = mode_origin == HERE
    mode_node = level.nodes[("announce", "mode")] if here else e.node
    mode_path = f"{e.path}.announce.mode"
    whence = "" if here else f" (mode {mode} {_source(mode_origin)})"
    enforce = v[("mode",)] == "enforce"
    own_list = e.layer.get(("announce", "prefixes"))
    listed: list[str] = []
    supernet = net.supernet(new_prefix=maxlen) if net.prefixlen > maxlen else None
    cover_ok = supernet is not None and any(
        p.version == net.version and p.supernet_of(supernet)  # type: ignore[arg-type]
        for p in protected
    )

    if own_list is not None:
        lpath = f"{e.path}.announce.prefixes"
        if mode != "list":
            reader.add(
                own_list.node,
                lpath,
                "prefixes are only used with mode list; "
                + (
                    f"this entry sets mode {mode}"
                    if here
                    else f"mode is {mode} {_source(mode_origin)}"
                ),
            )
        for p, node, i in own_list.value:
            if p.version == net.version and (p.subnet_of(net) or (cover_ok and p == supernet)):
                if p.prefixlen > maxlen:
                    reader.add(
                        node,
                        f"{lpath}[{i}]",
                        f"{p} is longer than /{maxlen}, the longest prefix the Internet accepts",
                    )
                listed.append(str(p))
            else:
                reader.add(node, f"{lpath}[{i}]", f"{p} is outside this entry ({net})")

    if mode == "subnets" and net.prefixlen >= sublen:
        if here:
            reader.add(
                mode_node,
                mode_path,
                f"mode subnets announces the attacked /{sublen}s "
                f"of a prefix, but {net} is already a /{net.prefixlen}; use mode prefix",
            )
        mode = "prefix"
        origins["announce.mode"] = (
            f"{mode_origin}: subnets of a /{net.prefixlen} is the /{net.prefixlen} itself"
        )
    if enforce and mode == "list" and own_list is None:
        reader.add(
            mode_node,
            mode_path,
            f"mode list needs prefixes: [...] on this entry; they are not inherited{whence}",
        )
    if enforce and mode == "prefix" and net.prefixlen > maxlen:
        hint = "set mode: monitor on this entry"
        if cover_ok:
            hint += f", or announce: {{mode: list, prefixes: [{supernet}]}}"
        reader.add(
            mode_node,
            mode_path,
            f"{net} cannot be announced: it is longer than /{maxlen}, the longest prefix "
            f"the Internet accepts{whence}; {hint}",
        )
    fam = f"ipv{net.version}"
    return Announce(
        mode=mode,
        prefixes=tuple(listed) if mode == "list" else (),
        subnet_length_v4=int(v[("announce", "subnet_length_v4")]),
        subnet_length_v6=int(v[("announce", "subnet_length_v6")]),
        subnet_share=float(v[("announce", "subnet_share")]),
        next_hop=v[("announce", "next_hop", fam)],
        communities=tuple(v[("announce", "communities")]),
        large_communities=tuple(v[("announce", "large_communities")]),
    )
