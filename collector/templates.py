"""Template registry: templates per (exporter, version, observation domain, template id).

A template is immutable once built; its numpy dtype (for fixed-length templates) is built
once, here, so data sets of that template decode with one ``numpy.frombuffer``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from collector.elements import USED_ELEMENTS, VARIABLE_LENGTH


class TemplateKey(NamedTuple):
    exporter: str
    version: int
    domain_id: int
    template_id: int


class Field(NamedTuple):
    element_id: int
    length: int
    enterprise: int = 0
    scope: bool = False  # a v9/IPFIX options scope field


@dataclass(frozen=True, slots=True, eq=False)
class Template:
    """One template or options template definition."""

    template_id: int
    fields: tuple[Field, ...]
    options: bool = False
    # derived once
    fixed: bool = field(init=False)
    record_length: int = field(init=False)  # minimum length when variable
    dtype: np.dtype | None = field(init=False)
    # element id -> index of its first occurrence (enterprise 0, non-scope for v9 options)
    index: dict[int, int] = field(init=False)

    def __post_init__(self) -> None:
        fixed = all(f.length != VARIABLE_LENGTH for f in self.fields)
        object.__setattr__(self, "fixed", fixed)
        object.__setattr__(
            self,
            "record_length",
            sum(f.length if f.length != VARIABLE_LENGTH else 1 for f in self.fields),
        )
        index: dict[int, int] = {}
        for i, f in enumerate(self.fields):
            if f.enterprise == 0 and f.element_id not in index and not _v9_scope(f):
                index[f.element_id] = i
        object.__setattr__(self, "index", index)
        object.__setattr__(self, "dtype", _build_dtype(self.fields, index) if fixed else None)

    def same_definition(self, other: Template) -> bool:
        return self.fields == other.fields and self.options == other.options

    def to_json(self) -> dict[str, object]:
        return {
            "template_id": self.template_id,
            "options": self.options,
            "fields": [list(f) for f in self.fields],
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> Template:
        raw_fields = data["fields"]
        assert isinstance(raw_fields, list)
        return cls(
            template_id=int(data["template_id"]),  # type: ignore[call-overload]
            fields=tuple(Field(int(a), int(b), int(c), bool(d)) for a, b, c, d in raw_fields),
            options=bool(data["options"]),
        )


V9_SCOPE_ENTERPRISE = -1  # v9 scope types (system, interface, ...) are their own namespace


def _v9_scope(f: Field) -> bool:
    return f.enterprise == V9_SCOPE_ENTERPRISE


def _build_dtype(fields: tuple[Field, ...], index: dict[int, int]) -> np.dtype:
    """A structured dtype over the record: the used elements as big-endian integers or byte
    arrays, everything else as opaque padding (numpy skips it with ``offsets``)."""
    names: list[str] = []
    formats: list[object] = []
    offsets: list[int] = []
    off = 0
    wanted = {i for e, i in index.items() if e in USED_ELEMENTS}
    for i, f in enumerate(fields):
        if i in wanted and f.length > 0:
            names.append(f"f{i}")
            formats.append(f">u{f.length}" if f.length in (1, 2, 4, 8) else ("u1", (f.length,)))
            offsets.append(off)
        off += f.length
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": off})


class TemplateLimitError(Exception):
    """An exporter has as many templates as it may have."""


class TemplateRegistry:
    """All templates, bounded per exporter. Sans-I/O; JSON snapshot for restarts."""

    def __init__(self, max_per_exporter: int = 1024, max_exporters: int = 4096) -> None:
        self.max_per_exporter = max_per_exporter
        self.max_exporters = max_exporters
        self._by_exporter: dict[str, dict[TemplateKey, Template]] = {}

    def get(self, key: TemplateKey) -> Template | None:
        exp = self._by_exporter.get(key.exporter)
        return exp.get(key) if exp is not None else None

    def put(self, key: TemplateKey, template: Template) -> bool:
        """Store a template; True if it replaced a different definition (a conflict).

        Raises TemplateLimitError when the exporter (or the exporter table) is full.
        """
        exp = self._by_exporter.get(key.exporter)
        if exp is None:
            if len(self._by_exporter) >= self.max_exporters:
                raise TemplateLimitError(key.exporter)
            exp = self._by_exporter[key.exporter] = {}
        old = exp.get(key)
        if old is None and len(exp) >= self.max_per_exporter:
            raise TemplateLimitError(key.exporter)
        exp[key] = template
        return old is not None and not old.same_definition(template)

    def withdraw(self, key: TemplateKey) -> bool:
        exp = self._by_exporter.get(key.exporter)
        return exp is not None and exp.pop(key, None) is not None

    def withdraw_all(self, exporter: str, version: int, domain_id: int, options: bool) -> int:
        exp = self._by_exporter.get(exporter, {})
        gone = [
            k
            for k, t in exp.items()
            if k.version == version and k.domain_id == domain_id and t.options == options
        ]
        for k in gone:
            del exp[k]
        return len(gone)

    def count(self, exporter: str | None = None) -> int:
        if exporter is not None:
            return len(self._by_exporter.get(exporter, {}))
        return sum(len(v) for v in self._by_exporter.values())

    def snapshot(self) -> list[dict[str, object]]:
        return [
            {"key": list(k), "template": t.to_json()}
            for exp in self._by_exporter.values()
            for k, t in exp.items()
        ]

    def restore(self, items: list[dict[str, object]]) -> int:
        n = 0
        for item in items:
            k = item["key"]
            assert isinstance(k, list)
            key = TemplateKey(str(k[0]), int(k[1]), int(k[2]), int(k[3]))
            tpl = item["template"]
            assert isinstance(tpl, dict)
            try:
                self.put(key, Template.from_json(tpl))
                n += 1
            except TemplateLimitError:
                break
        return n
