"""YAML into typed dataclasses, with file:line:column on every error.

One typed schema: the dataclasses are the schema and hold the defaults; unknown keys,
wrong types and duplicate keys are refused with where they are.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration that does not validate: every problem, one per line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("\n".join(problems))


class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[str] = []

    def fail(self, node: yaml.Node, path: str, message: str) -> None:
        m = node.start_mark
        where = f"{self.source}:{m.line + 1}:{m.column + 1}"
        self.problems.append(f"{where}: {path}: {message}" if path else f"{where}: {message}")

    def value(self, tp: Any, node: yaml.Node, path: str) -> Any:
        origin = typing.get_origin(tp)
        args = typing.get_args(tp)
        if origin in (typing.Union, types.UnionType):
            null = isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null")
            if null and type(None) in args:
                return None
            inner = [a for a in args if a is not type(None)]
            return self.value(inner[0], node, path)
        if dataclasses.is_dataclass(tp):
            return self.dataclass(tp, node, path)  # type: ignore[arg-type]
        if origin in (list, tuple):
            if not isinstance(node, yaml.SequenceNode):
                self.fail(node, path, "expected a list")
                return []
            items = [self.value(args[0], n, f"{path}[{i}]") for i, n in enumerate(node.value)]
            return items if origin is list else tuple(items)
        if origin is dict:
            if not isinstance(node, yaml.MappingNode):
                self.fail(node, path, "expected a mapping")
                return {}
            out = {}
            for k, v in node.value:
                key = self.value(args[0], k, path)
                out[key] = self.value(args[1], v, f"{path}.{k.value}")
            return out
        if not isinstance(node, yaml.ScalarNode):
            self.fail(node, path, f"expected {_name(tp)}")
            return None
        loaded = yaml.safe_load(yaml.serialize(node))
        if tp is float and isinstance(loaded, int) and not isinstance(loaded, bool):
            return float(loaded)
        if tp is str and isinstance(loaded, (int, float)) and not isinstance(loaded, bool):
            return node.value
        if not isinstance(loaded, tp) or (tp is int and isinstance(loaded, bool)):
            self.fail(node, path, f"expected {_name(tp)}, got {node.value!r}")
            return None
        return loaded

    def dataclass(self, cls: type[T], node: yaml.Node, path: str) -> T | None:
        if not isinstance(node, yaml.MappingNode):
            self.fail(node, path, "expected a mapping")
            return None
        before = len(self.problems)
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
        kwargs: dict[str, Any] = {}
        for k, v in node.value:
            name = str(k.value)
            sub = f"{path}.{name}" if path else name
            if name in kwargs:
                self.fail(k, sub, "duplicate key")
                continue
            if name not in fields:
                known = ", ".join(sorted(fields))
                self.fail(k, sub, f"unknown key (known: {known})")
                continue
            kwargs[name] = self.value(hints[name], v, sub)
        for name, f in fields.items():
            if (
                name not in kwargs
                and f.default is dataclasses.MISSING
                and (f.default_factory is dataclasses.MISSING)
            ):
                self.fail(node, f"{path}.{name}" if path else name, "required key missing")
        if len(self.problems) > before:
            return None
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as e:
            self.fail(node, path, str(e))
            return None


def _name(tp: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def load(cls: type[T], text: str, source: str) -> T:
    """Parse ``text`` into ``cls``; raises ConfigError listing every problem."""
    reader = _Reader(source)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        raise ConfigError([f"{where}: {getattr(e, 'problem', e)}"]) from None
    if node is None:
        node = yaml.MappingNode("tag:yaml.org,2002:map", [])
    result = reader.dataclass(cls, node, "")
    if reader.problems or result is None:
        raise ConfigError(reader.problems)
    return result
