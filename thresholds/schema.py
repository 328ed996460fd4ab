"""JSON Schema (draft 2020-12) of the threshold file, for editors (yaml-language-server).

Built from the same key tables as the loader (``thresholds.spec``); the checked-in
``thresholds/thresholds.schema.json`` is regenerated with
``python -c 'import thresholds.schema as s; s.write_schema()'``
(a test fails when it is stale). The loader stays the judge: the schema cannot say, for
instance, that a more specific entry must lie inside its parent's announce list.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from thresholds.model import ANOMALY_STATS, CLASSES, METRICS
from thresholds.spec import (
    ANNOUNCE_KEYS,
    ANNOUNCE_MODES,
    ANOMALY_KEYS,
    ANOMALY_METRICS,
    ANOMALY_MODES,
    DEFAULTS_ANNOUNCE_KEYS,
    DEFAULTS_KEYS,
    ENTRY_KEYS,
    MAX_ANNOUNCE,
    METRIC_DOC,
    MODES,
    PORT_KEYS,
    TIMING_KEYS,
    TOP_KEYS,
    VERSION,
    Key,
    builtin_defaults,
)
from thresholds.units import format_duration, format_ratio

SCHEMA_PATH = Path(__file__).with_name("thresholds.schema.json")
_NUM = r"[0-9][0-9_]*(\.[0-9]+)?([eE][+-]?[0-9]+)?"
_IPV4 = r"([0-9]{1,3}\.){3}[0-9]{1,3}"
_IPV6 = r"[0-9A-Fa-f]{0,4}(:[0-9A-Fa-f]{0,4}){1,7}(:" + _IPV4 + ")?"


#: a YAML 1.1 parser reads an unquoted off as false (the loader reads the text: off)
_OFF_AS_FALSE = {"const": False, "description": "off, as read by a YAML 1.1 parser"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/$defs/{name}"}


def _rate(metric: str) -> dict[str, Any]:
    return {
        "description": f"{METRIC_DOC[metric]}: a number with k, M, G or T (decimal), optionally "
        f"followed by {metric}, e.g. 400k, 10G, 60k{metric}; off for no threshold",
        "anyOf": [
            {"type": "number", "exclusiveMinimum": 0},
            {"type": "string", "pattern": rf"^({_NUM}[kKMGgTt]?({metric})?|off)$"},
            _OFF_AS_FALSE,
        ],
    }


_KIND_REF = {
    "duration": "duration",
    "clear": "share",
    "share": "share",
    "backoff": "backoff",
    "count": "count",
    "text": "text",
    "mode": "mode",
    "announce_mode": "announce_mode",
    "prefix_list": "prefix_list",
    "communities": "communities",
    "large_communities": "large_communities",
    "port_list": "port_list",
    "port_range": "port_range",
    "next_hop": "next_hop",
    "limits": "class_limits",
    "timing": "timing",
    "announce": "announce",
    "ports": "ports",
    "anomaly": "anomaly",
    "anomaly_rule": "anomaly_rule",
    "class_list": "class_list",
    "anomaly_metric": "anomaly_metric",
    "anomaly_mode": "anomaly_mode",
    "floor": "floor",
    "mix": "mix",
}


def _default_text(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "duration":
        return format_duration(value)
    if kind in ("clear", "share"):
        return format_ratio(value)
    if kind == "port_list":
        return list(value)
    if kind == "port_range":
        return f"{value[0]}-{value[1]}"
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _object(keys: tuple[Key, ...], parent: tuple[str, ...]) -> Any:
    defaults = builtin_defaults()
    props: dict[str, Any] = {}
    prop: dict[str, Any]
    for k in keys:
        if k.kind in ("subnet_length_v4", "subnet_length_v6"):
            top = MAX_ANNOUNCE[4 if k.kind.endswith("v4") else 6]
            prop = {"description": k.doc, "type": "integer", "minimum": 1, "maximum": top}
        else:
            prop = {"description": k.doc, **_ref(_KIND_REF[k.kind])}
        leaf = (*parent, k.name)
        if k.name == "next_hop":
            leaf = (*leaf, "ipv4")
        if leaf in defaults:
            default = _default_text(k.kind, defaults[leaf])
            if default is not None:
                prop["default"] = default
        props[k.name] = prop
    return {"type": "object", "additionalProperties": False, "properties": props}


def json_schema() -> dict[str, Any]:
    """The JSON Schema of the threshold file format."""
    port = {"type": "integer", "minimum": 1, "maximum": 65535}
    range_pattern = r"^[0-9]{1,5}-[0-9]{1,5}$"
    _stats = "(" + "|".join(ANOMALY_STATS) + ")"
    defs: dict[str, Any] = {
        **{f"rate_{m}": _rate(m) for m in METRICS},
        "limit": {
            "description": "thresholds of one class, by metric",
            "type": "object",
            "additionalProperties": False,
            "properties": {m: _ref(f"rate_{m}") for m in METRICS},
        },
        "class_limits": {
            "description": "per class: {bps, pps, fps}; a class left out inherits; off clears",
            "type": "object",
            "additionalProperties": False,
            "properties": {
                c: {"anyOf": [_ref("limit"), {"const": "off"}, _OFF_AS_FALSE]} for c in CLASSES
            },
        },
        "duration": {
            "description": "seconds, or a number with s, m, h, d (combinable: 1h30m)",
            "anyOf": [
                {"type": "number", "minimum": 0},
                {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?[smhd])+$"},
            ],
        },
        "share": {
            "description": "a share: 80% or 0.8",
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?%$"},
            ],
        },
        "backoff": {"type": "number", "minimum": 1},
        "count": {"type": "integer", "minimum": 1},
        "text": {"type": "string"},
        "mode": {"enum": list(MODES)},
        "announce_mode": {"enum": list(ANNOUNCE_MODES)},
        "prefix": {
            "description": "a network: address/length, no host bits set",
            "type": "string",
            "pattern": rf"^({_IPV4}/[0-9]{{1,2}}|{_IPV6}/[0-9]{{1,3}})$",
        },
        "address": {"type": "string", "pattern": rf"^({_IPV4}|{_IPV6})$"},
        "prefix_list": {"type": "array", "minItems": 1, "items": _ref("prefix")},
        "next_hop": {
            "anyOf": [
                _ref("address"),
                {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"ipv4": _ref("address"), "ipv6": _ref("address")},
                },
            ]
        },
        "communities": {
            "type": "array",
            "items": {"type": "string", "pattern": r"^[0-9]{1,5}:[0-9]{1,5}$"},
        },
        "large_communities": {
            "type": "array",
            "items": {"type": "string", "pattern": r"^[0-9]{1,10}:[0-9]{1,10}:[0-9]{1,10}$"},
        },
        "port_list": {
            "type": "array",
            "items": {"anyOf": [port, {"type": "string", "pattern": range_pattern}]},
        },
        "port_range": {"type": "string", "pattern": range_pattern},
        "timing": _object(TIMING_KEYS, ("timing",)),
        "announce": _object(ANNOUNCE_KEYS, ("announce",)),
        "announce_defaults": _object(DEFAULTS_ANNOUNCE_KEYS, ("announce",)),
        "anomaly": _object(ANOMALY_KEYS, ("anomaly",)),
        "anomaly_rule": {
            "description": "FACTOR x STAT ('5x p99') or STAT + K mad ('p99 + 6 mad'); off",
            "type": "string",
            "pattern": rf"^\s*([0-9.]+\s*[xX*]\s*{_stats}|{_stats}\s*\+\s*[0-9.]+\s*mads?|off)\s*$",
        },
        "class_list": {"type": "array", "items": {"enum": list(CLASSES)}},
        "anomaly_metric": {"enum": list(ANOMALY_METRICS)},
        "anomaly_mode": {"enum": list(ANOMALY_MODES)},
        "floor": {
            "description": "never anomalous below these rates",
            "type": "object",
            "additionalProperties": False,
            "properties": {m: _ref(f"rate_{m}") for m in ANOMALY_METRICS},
        },
        "mix": {
            "description": "a level like 99.9%, or off",
            "anyOf": [
                {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?%|off)$"},
                _OFF_AS_FALSE,
            ],
        },
        "ports": _object(PORT_KEYS, ("ports",)),
        "entry": _object(ENTRY_KEYS, ()),
        "defaults": _object(DEFAULTS_KEYS, ()),
    }
    defs["defaults"]["properties"]["announce"] = {
        "description": defs["defaults"]["properties"]["announce"]["description"],
        **_ref("announce_defaults"),
    }
    top = {k.name: k.doc for k in TOP_KEYS}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "urn:divertor:thresholds:1",
        "title": "Divertor threshold file",
        "description": "Protected prefixes, their thresholds and how to divert them. "
        "See docs/thresholds.md.",
        "type": "object",
        "additionalProperties": False,
        "required": ["version", "prefixes"],
        "properties": {
            "version": {"description": top["version"], "const": VERSION},
            "defaults": {"description": top["defaults"], **_ref("defaults")},
            "prefixes": {
                "description": top["prefixes"],
                "type": "object",
                "minProperties": 1,
                "propertyNames": _ref("prefix"),
                "additionalProperties": {"anyOf": [_ref("entry"), {"type": "null"}]},
            },
        },
        "$defs": defs,
    }


def schema_text() -> str:
    return json.dumps(json_schema(), indent=2, ensure_ascii=False) + "\n"


def write_schema(path: Path = SCHEMA_PATH) -> Path:
    path.write_text(schema_text(), encoding="utf-8")
    return path
