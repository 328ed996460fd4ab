"""Bridges from construct declarations to the hot path.

Wire layouts are declared once, with construct. Fixed headers are then read on the hot path
through a ``struct.Struct`` or a numpy dtype derived from that same declaration (a compiled
construct parse costs about 2 us; ``struct.unpack_from`` a tenth of that).
"""

from __future__ import annotations

import struct

import construct
import numpy as np


def _format_fields(decl: construct.Struct) -> list[tuple[str, str]]:
    out = []
    for sc in decl.subcons:
        inner = sc.subcon if isinstance(sc, construct.Renamed) else sc
        if not isinstance(inner, construct.FormatField):
            raise TypeError(f"{sc.name}: only fixed-size integer fields can be derived")
        out.append((sc.name, inner.fmtstr))
    return out


def fast_struct(decl: construct.Struct) -> struct.Struct:
    """A ``struct.Struct`` with the same layout as a construct Struct of integer fields."""
    fields = _format_fields(decl)
    order = {f[0] for _, f in fields}
    if len(order) != 1:
        raise TypeError("mixed byte orders")
    return struct.Struct(order.pop() + "".join(f[1:] for _, f in fields))


_NUMPY = {
    "B": "u1",
    "H": "u2",
    "I": "u4",
    "L": "u4",
    "Q": "u8",
    "b": "i1",
    "h": "i2",
    "i": "i4",
    "l": "i4",
    "q": "i8",
}


def numpy_dtype(decl: construct.Struct) -> np.dtype:
    """A structured numpy dtype with the same layout as a construct Struct of integers."""
    return np.dtype([(name, fmt[0] + _NUMPY[fmt[1:]]) for name, fmt in _format_fields(decl)])
