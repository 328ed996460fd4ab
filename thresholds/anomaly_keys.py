"""Reading the ``anomaly`` section of a prefix entry (or of defaults) into its layer.

Its leaves are ``("anomaly", KEY)`` and ``("anomaly", "floor", METRIC)``, inherited one by
one like every other value. The rule's grammar is ``thresholds.scalars.parse_anomaly_rule``.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from yaml.nodes import Node

from thresholds import units
from thresholds.layers import Layer, Setting
from thresholds.scalars import join, parse_class, suggest
from thresholds.spec import ANOMALY_KEYS, ANOMALY_METRICS

if TYPE_CHECKING:
    from thresholds.loader import Reader


def read_anomaly(reader: Reader, node: Node, path: str, place: str, layer: Layer) -> None:
    for key, _knode, vnode in reader.known(node, path, ANOMALY_KEYS, place):
        kpath = join(path, key.name)
        if key.kind == "class_list":
            classes = reader.items(vnode, kpath, '["udp", "sip"]', parse_class)
            if classes is not None:
                layer[("anomaly", "classes")] = Setting(tuple(classes), vnode)
        elif key.kind == "floor":
            for metric, mknode, mnode in reader.mapping(vnode, kpath):
                mpath = join(kpath, metric)
                if metric not in ANOMALY_METRICS:
                    msg = f"unknown metric '{metric}'; {suggest(metric, ANOMALY_METRICS)}"
                    reader.add(mknode, mpath, msg)
                    continue
                rate = reader.convert(
                    mnode,
                    mpath,
                    "a rate like 20k or 100M",
                    functools.partial(units.parse_rate, metric=metric),
                )
                if rate is not None or reader._is_off(mnode):
                    layer[("anomaly", "floor", metric)] = Setting(rate, mnode)
        else:
            reader.value(key, vnode, kpath, ("anomaly", key.name), layer)
