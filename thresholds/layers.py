"""What the loader reads, before inheritance: one layer of settings per level."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from yaml.nodes import Node, ScalarNode

from thresholds.model import Network

#: a settable value, by its key path in the file: ("timing", "trigger"), ("thresholds", "udp",
#: "pps"), ("announce", "next_hop", "ipv4")
Leaf = tuple[str, ...]


@dataclass(slots=True)
class Setting:
    value: Any  # already converted (seconds, bits/s, tuples); None = "off"
    node: Node  # where it is written


Layer = dict[Leaf, Setting]


@dataclass(slots=True)
class Entry:
    text: str  # the network, normalised
    network: Network
    node: ScalarNode  # its key in the file
    path: str  # "prefixes[198.18.10.0/24]"
    layer: Layer


@dataclass(slots=True)
class Document:
    defaults: Layer
    entries: list[Entry]
    root: Node
    defaults_node: Node | None = field(default=None)
