"""NetFlow v9 (RFC 3954): message header, flowsets, template and options template records.

Pure parsing: no state, no sockets. The decoder keeps the templates.
"""

from __future__ import annotations

import struct

from construct import Array, ConstructError, Int16ub, Int32ub, Struct, Tell, this

from collector.templates import V9_SCOPE_ENTERPRISE, Field
from collector.wire.layout import fast_struct

VERSION = 9
HEADER = Struct(
    "version" / Int16ub,
    "count" / Int16ub,
    "sys_uptime" / Int32ub,
    "unix_secs" / Int32ub,
    "sequence" / Int32ub,
    "source_id" / Int32ub,
)
SET_HEADER = Struct("flowset_id" / Int16ub, "length" / Int16ub)
FIELD_SPEC = Struct("type" / Int16ub, "length" / Int16ub)
TEMPLATE_RECORD = Struct(
    "template_id" / Int16ub,
    "field_count" / Int16ub,
    "fields" / Array(this.field_count, FIELD_SPEC),
    "end" / Tell,
).compile()
OPTIONS_TEMPLATE_RECORD = Struct(
    "template_id" / Int16ub,
    "scope_length" / Int16ub,
    "option_length" / Int16ub,
    "scopes" / Array(this.scope_length // 4, FIELD_SPEC),
    "options" / Array(this.option_length // 4, FIELD_SPEC),
    "end" / Tell,
).compile()

HEADER_FAST = fast_struct(HEADER)
HEADER_LEN = HEADER_FAST.size  # 20
SET_FAST = fast_struct(SET_HEADER)
TEMPLATE_SET, OPTIONS_TEMPLATE_SET, MIN_DATA_SET = 0, 1, 256


class TemplateError(ValueError):
    """A template set that cannot be read (truncated or impossible lengths)."""


def parse_templates(body: bytes, options: bool) -> list[tuple[int, tuple[Field, ...]]]:
    """Template records of one template (or options template) flowset body."""
    out: list[tuple[int, tuple[Field, ...]]] = []
    off = 0
    rec = OPTIONS_TEMPLATE_RECORD if options else TEMPLATE_RECORD
    min_len = 6 if options else 4
    while len(body) - off >= min_len:
        try:
            r = rec.parse(body[off:])
        except (ConstructError, struct.error) as e:  # compiled parsers raise struct.error
            raise TemplateError(f"truncated template record at {off}") from e
        if r.template_id < MIN_DATA_SET:
            if any(body[off:]):
                raise TemplateError(f"template id {r.template_id} < 256")
            break  # padding
        if options:
            if r.scope_length % 4 or r.option_length % 4:
                raise TemplateError("options template lengths not a multiple of 4")
            fields = tuple(Field(f.type, f.length, V9_SCOPE_ENTERPRISE, True) for f in r.scopes)
            fields += tuple(Field(f.type, f.length) for f in r.options)
        else:
            fields = tuple(Field(f.type, f.length) for f in r.fields)
        if not fields:
            raise TemplateError(f"template {r.template_id} has no fields")
        out.append((r.template_id, fields))
        off += r.end
    return out
