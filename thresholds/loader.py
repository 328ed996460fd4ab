"""Reading a threshold file: YAML nodes (with their lines) to per-level settings.

``loads`` composes the YAML with PyYAML's SafeLoader (nodes keep their marks), reads every key
of the defaults and of each prefix entry into a *layer* (key path -> value and node), and
hands the layers to ``thresholds.resolve`` for inheritance and the checks that need the
effective values. Every problem is collected; ``ThresholdError`` reports them all.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from thresholds import units
from thresholds.anomaly_keys import read_anomaly
from thresholds.errors import Problem, ThresholdError, sorted_problems
from thresholds.layers import Document, Entry, Layer, Setting
from thresholds.model import CLASSES, METRICS, Network, ThresholdSet
from thresholds.scalars import (
    SCALAR_KINDS,
    describe,
    is_empty,
    join,
    parse_community,
    parse_port,
    parse_port_range,
    parse_prefix,
    suggest,
)
from thresholds.spec import (
    ANNOUNCE_KEYS,
    DEFAULTS_ANNOUNCE_KEYS,
    DEFAULTS_KEYS,
    ENTRY_KEYS,
    MISPLACED,
    PORT_KEYS,
    TIMING_KEYS,
    TOP_KEYS,
    VERSION,
    Key,
    by_name,
)

_MERGE_TAG = "tag:yaml.org,2002:merge"
#: libyaml's parser when PyYAML has it (same nodes and marks, several times faster)
_FAST_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load(path: str | Path) -> ThresholdSet:
    """Read and validate a threshold file; raises ``ThresholdError`` listing every problem
    (and ``OSError`` if the file cannot be read)."""
    text = Path(path).read_text(encoding="utf-8")
    return loads(text, source=str(path))


def loads(text: str, source: str = "<string>") -> ThresholdSet:
    """Validate the text of a threshold file; ``source`` names it in problems."""
    ts, problems = _read(text, source, _FAST_LOADER)
    if problems and _FAST_LOADER is not yaml.SafeLoader:
        # report with PyYAML's own parser: the same messages and columns everywhere
        ts, problems = _read(text, source, yaml.SafeLoader)
    if problems or ts is None:
        raise ThresholdError(sorted_problems(problems))
    return ts


def _read(text: str, source: str, loader: Any) -> tuple[ThresholdSet | None, list[Problem]]:
    from thresholds.resolve import resolve

    reader = Reader(source)
    doc = reader.document(text, loader)
    if doc is None:
        return None, reader.problems
    # resolved even after problems: some problems need the effective values to be seen
    return resolve(doc, reader), reader.problems


class Reader:
    """Walks the YAML nodes, collects problems, fills layers."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[Problem] = []

    def add(self, node: Node, path: str, message: str) -> None:
        mark = node.start_mark
        message = message.replace("\r", "\\r").replace("\n", "\\n")  # one line per problem
        self.problems.append(Problem(self.source, mark.line + 1, mark.column + 1, path, message))

    # -- structure ---------------------------------------------------------------------------

    def mapping(
        self, node: Node, path: str, duplicates: bool = False
    ) -> list[tuple[str, ScalarNode, Node]]:
        """The (key, key node, value node) of a mapping; empty for a missing value. Repeated
        keys are refused unless ``duplicates`` (the caller checks them)."""
        if is_empty(node):
            return []
        if not isinstance(node, MappingNode):
            self.add(node, path, f"expected a mapping of keys, got {describe(node)}")
            return []
        seen: dict[str, ScalarNode] = {}
        out: list[tuple[str, ScalarNode, Node]] = []
        for knode, vnode in node.value:
            if not isinstance(knode, ScalarNode):
                self.add(knode, path, f"a key must be plain text, got {describe(knode)}")
                continue
            if knode.tag == _MERGE_TAG:
                self.add(
                    knode,
                    path,
                    "YAML merge keys (<<) are not supported; defaults and "
                    "covering prefixes are inherited already",
                )
                continue
            name = knode.value
            if name in seen and not duplicates:
                first = seen[name].start_mark.line + 1
                self.add(knode, join(path, name), f"duplicate key '{name}' (first at line {first})")
                continue
            seen[name] = knode
            out.append((name, knode, vnode))
        return out

    def known(
        self, node: Node, path: str, keys: tuple[Key, ...], place: str
    ) -> list[tuple[Key, ScalarNode, Node]]:
        table = by_name(keys)
        out: list[tuple[Key, ScalarNode, Node]] = []
        for name, knode, vnode in self.mapping(node, path):
            key = table.get(name)
            if key is None:
                why = MISPLACED.get((place, name))
                msg = why or f"unknown key '{name}'; {suggest(name, list(table))}"
                self.add(knode, join(path, name), msg)
                continue
            out.append((key, knode, vnode))
        return out

    def scalar(self, node: Node, path: str, what: str) -> str | None:
        if isinstance(node, ScalarNode) and not is_empty(node):
            return str(node.value)
        self.add(node, path, f"expected {what}, got {describe(node)}")
        return None

    def sequence(self, node: Node, path: str, example: str) -> list[Node]:
        if isinstance(node, SequenceNode):
            return list(node.value)
        self.add(node, path, f"expected a list like {example}, got {describe(node)}")
        return []

    def convert(self, node: Node, path: str, what: str, fn: Callable[[str], Any]) -> Any:
        """``fn`` of the scalar's text; a problem (and None) if it raises ``UnitError``."""
        text = self.scalar(node, path, what)
        if text is None:
            return None
        try:
            return fn(text)
        except units.UnitError as e:
            self.add(node, path, str(e))
            return None

    # -- the document ------------------------------------------------------------------------

    def document(self, text: str, loader: Any = yaml.SafeLoader) -> Document | None:
        try:
            root = yaml.compose(text, Loader=loader)
        except yaml.MarkedYAMLError as e:
            self.syntax_error(e)
            return None
        except yaml.YAMLError as e:
            self.problems.append(Problem(self.source, 1, 1, "", f"YAML: {e}"))
            return None
        if root is None or is_empty(root):
            self.problems.append(Problem(self.source, 1, 1, "", "the file is empty"))
            return None
        return self.top(root)

    def syntax_error(self, e: yaml.MarkedYAMLError) -> None:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        what = e.problem or "cannot parse"
        if e.context and e.context_mark is not None:
            what += f" ({e.context} at line {e.context_mark.line + 1})"
        elif e.context:
            what += f" ({e.context})"
        self.problems.append(Problem(self.source, line, col, "", f"YAML syntax: {what}"))

    def top(self, root: Node) -> Document:
        doc = Document(defaults={}, entries=[], root=root)
        top = self.known(root, "", TOP_KEYS, "top")
        names = {k.name for k, _, _ in top}
        if "version" not in names and isinstance(root, MappingNode):
            self.add(root, "version", f"missing: the file must say version: {VERSION}")
        if "prefixes" not in names and isinstance(root, MappingNode):
            self.add(root, "prefixes", "missing: list the protected prefixes under prefixes:")
        for key, _knode, vnode in top:
            if key.name == "version":
                v = self.convert(vnode, "version", f"version: {VERSION}", units.parse_int)
                if v is not None and v != VERSION:
                    self.add(vnode, "version", f"unsupported version {v}; this reads {VERSION}")
            elif key.name == "defaults":
                doc.defaults_node = vnode
                self.settings(vnode, "defaults", DEFAULTS_KEYS, "defaults", doc.defaults)
            else:
                self.prefixes(vnode, doc)
        return doc

    def prefixes(self, node: Node, doc: Document) -> None:
        items = self.mapping(node, "prefixes", duplicates=True)
        if not items and (is_empty(node) or isinstance(node, MappingNode)):
            self.add(node, "prefixes", "no protected prefixes: list them under prefixes:")
        first: dict[Network, tuple[str, ScalarNode]] = {}
        for text, knode, vnode in items:
            path = f"prefixes[{text}]"
            layer: Layer = {}
            try:
                net: Network | None = parse_prefix(text)
            except units.UnitError as e:
                self.add(knode, path, str(e))
                net = None
            if net is not None and net in first:
                ftext, fnode = first[net]
                line = fnode.start_mark.line + 1
                same = "" if ftext == text else f": the same network as {ftext}"
                self.add(knode, path, f"duplicate prefix {net}{same} (first at line {line})")
                net = None
            elif net is not None:
                first[net] = (text, knode)
            self.settings(vnode, path, ENTRY_KEYS, "entry", layer)
            if net is not None:
                doc.entries.append(
                    Entry(text=str(net), network=net, node=knode, path=path, layer=layer)
                )

    # -- settings ----------------------------------------------------------------------------

    def settings(
        self, node: Node, path: str, keys: tuple[Key, ...], place: str, layer: Layer
    ) -> None:
        for key, _knode, vnode in self.known(node, path, keys, place):
            kpath = join(path, key.name)
            if key.kind == "limits":
                self.limits(vnode, kpath, key.name, layer)
            elif key.kind == "timing":
                for tkey, _, tnode in self.known(vnode, kpath, TIMING_KEYS, place):
                    self.value(tkey, tnode, join(kpath, tkey.name), ("timing", tkey.name), layer)
            elif key.kind == "announce":
                keys = ANNOUNCE_KEYS if place == "entry" else DEFAULTS_ANNOUNCE_KEYS
                for akey, _, anode in self.known(vnode, kpath, keys, place):
                    self.value(akey, anode, join(kpath, akey.name), ("announce", akey.name), layer)
            elif key.kind == "anomaly":
                read_anomaly(self, vnode, kpath, place, layer)
            elif key.kind == "ports":
                for pkey, _, pnode in self.known(vnode, kpath, PORT_KEYS, place):
                    self.value(pkey, pnode, join(kpath, pkey.name), ("ports", pkey.name), layer)
            else:
                self.value(key, vnode, kpath, (key.name,), layer)

    def limits(self, node: Node, path: str, base: str, layer: Layer) -> None:
        for cls, knode, cnode in self.mapping(node, path):
            cpath = join(path, cls)
            if cls not in CLASSES:
                self.add(knode, cpath, f"unknown class '{cls}'; {suggest(cls, CLASSES)}")
                continue
            if isinstance(cnode, ScalarNode) and not is_empty(cnode):
                if cnode.value.strip().lower() == units.OFF:
                    for metric in METRICS:
                        layer[(base, cls, metric)] = Setting(None, cnode)
                    continue
                self.add(
                    cnode,
                    cpath,
                    f"{cls} takes metrics, like {cls}: {{pps: 40k}}; "
                    f"got a bare value '{cnode.value}'",
                )
                continue
            for metric, mknode, mnode in self.mapping(cnode, cpath):
                mpath = join(cpath, metric)
                if metric not in METRICS:
                    self.add(
                        mknode, mpath, f"unknown metric '{metric}'; {suggest(metric, METRICS)}"
                    )
                    continue
                rate = self.convert(
                    mnode,
                    mpath,
                    "a rate like 400k or 10G",
                    functools.partial(units.parse_rate, metric=metric),
                )
                if rate is not None or self._is_off(mnode):
                    layer[(base, cls, metric)] = Setting(rate, mnode)

    @staticmethod
    def _is_off(node: Node) -> bool:
        return isinstance(node, ScalarNode) and node.value.strip().lower() == units.OFF

    def value(self, key: Key, node: Node, path: str, leaf: tuple[str, ...], layer: Layer) -> None:
        """Read one leaf of kind ``key.kind`` and store it in ``layer`` if it is valid."""
        kind = key.kind
        v: Any = None
        if kind in SCALAR_KINDS:
            what, fn = SCALAR_KINDS[kind]

            def bound(text: str) -> Any:
                return fn(text, key.name)

            v = self.convert(node, path, what, bound)
        elif kind == "next_hop":
            self.next_hop(node, path, layer)
            return
        elif kind == "prefix_list":
            v = self.items(node, path, '["198.18.10.0/24"]', parse_prefix, keep_node=True)
        elif kind in ("communities", "large_communities"):
            parts = 2 if kind == "communities" else 3
            example = '["65000:666"]' if parts == 2 else '["65000:1:2"]'
            v = self.items(node, path, example, functools.partial(parse_community, parts=parts))
        elif kind == "port_list":
            v = self.ports(node, path)
        else:  # pragma: no cover - the spec tables and this method go together
            raise AssertionError(kind)
        if v is not None:
            layer[leaf] = Setting(v, node)

    def items(
        self, node: Node, path: str, example: str, fn: Callable[[str], Any], keep_node: bool = False
    ) -> tuple[Any, ...] | None:
        """The valid items of a list (a problem for each bad one: the file is refused then)."""
        if not isinstance(node, SequenceNode):
            self.sequence(node, path, example)
            return None
        out: list[Any] = []
        seen: dict[Any, int] = {}
        for i, item in enumerate(node.value):
            ipath = f"{path}[{i}]"
            value = self.convert(item, ipath, f"an item like {example[1:-1]}", fn)
            if value is None:
                continue
            if value in seen:
                self.add(item, ipath, f"{value} is listed twice (first as item {seen[value]})")
                continue
            seen[value] = i
            out.append((value, item, i) if keep_node else value)
        return tuple(out)

    def ports(self, node: Node, path: str) -> tuple[int, ...] | None:
        if not isinstance(node, SequenceNode):
            self.sequence(node, path, "[53, 123, 1900]")
            return None
        out: set[int] = set()
        for i, item in enumerate(node.value):
            ipath = f"{path}[{i}]"
            text = self.scalar(item, ipath, "a port or a range like 1000-2000")
            if text is None:
                continue
            try:
                if "-" in text:
                    low, high = parse_port_range(text, "port")
                    out.update(range(low, high + 1))
                else:
                    out.add(parse_port(text))
            except units.UnitError as e:
                self.add(item, ipath, str(e))
        return tuple(sorted(out))

    def next_hop(self, node: Node, path: str, layer: Layer) -> None:
        """An address for both families, or {ipv4: ..., ipv6: ...}."""

        def address(n: Node, p: str, version: int | None) -> str | None:
            text = self.scalar(n, p, "an IP address")
            if text is None:
                return None
            try:
                addr = ipaddress.ip_address(text.strip())
            except ValueError:
                self.add(n, p, f"expected an IPv4 or IPv6 address, got '{text}'")
                return None
            if version is not None and addr.version != version:
                self.add(n, p, f"expected an IPv{version} address, got '{text}'")
                return None
            return str(addr)

        if isinstance(node, MappingNode):
            for fam, knode, vnode in self.mapping(node, path):
                if fam not in ("ipv4", "ipv6"):
                    self.add(
                        knode,
                        join(path, fam),
                        f"unknown key '{fam}'; {suggest(fam, ['ipv4', 'ipv6'])}",
                    )
                    continue
                addr = address(vnode, join(path, fam), int(fam[-1]))
                if addr is not None:
                    layer[("announce", "next_hop", fam)] = Setting(addr, vnode)
            return
        addr = address(node, path, None)
        if addr is not None:
            for fam in ("ipv4", "ipv6"):
                layer[("announce", "next_hop", fam)] = Setting(addr, node)
