"""IPFIX (RFC 7011): message header, sets, template and options template records.

Pure parsing: no state, no sockets. The decoder keeps the templates. A template record
with a field count of 0 is a withdrawal (RFC 7011 section 8.1); template id 2 (3 in an
options template set) withdraws all templates of the domain.
"""

from __future__ import annotations

import struct

from construct import Array, ConstructError, If, Int16ub, Int32ub, Struct, Tell, this

from collector.templates import Field
from collector.wire.layout import fast_struct

VERSION = 10
HEADER = Struct(
    "version" / Int16ub,
    "length" / Int16ub,
    "export_time" / Int32ub,
    "sequence" / Int32ub,
    "observation_domain_id" / Int32ub,
)
SET_HEADER = Struct("set_id" / Int16ub, "length" / Int16ub)
FIELD_SPEC = Struct(
    "id" / Int16ub,
    "length" / Int16ub,
    "enterprise" / If(this.id & 0x8000, Int32ub),
)
TEMPLATE_RECORD = Struct(
    "template_id" / Int16ub,
    "field_count" / Int16ub,
    "fields" / Array(this.field_count, FIELD_SPEC),
    "end" / Tell,
).compile()
OPTIONS_TEMPLATE_RECORD = Struct(
    "template_id" / Int16ub,
    "field_count" / Int16ub,
    "scope_field_count" / If(this.field_count > 0, Int16ub),
    "fields" / Array(this.field_count, FIELD_SPEC),
    "end" / Tell,
).compile()

HEADER_FAST = fast_struct(HEADER)
HEADER_LEN = HEADER_FAST.size  # 16
SET_FAST = fast_struct(SET_HEADER)
TEMPLATE_SET, OPTIONS_TEMPLATE_SET, MIN_DATA_SET = 2, 3, 256
WITHDRAW_ALL = (2, 3)  # template ids meaning "all templates" in a withdrawal

#: (template id, fields); fields None = withdrawal of that template id
TemplateRecord = tuple[int, tuple[Field, ...] | None]


class TemplateError(ValueError):
    """A template set that cannot be read (truncated or impossible lengths)."""


def parse_templates(body: bytes, options: bool) -> list[TemplateRecord]:
    """Template records of one template (or options template) set body."""
    out: list[TemplateRecord] = []
    off = 0
    rec = OPTIONS_TEMPLATE_RECORD if options else TEMPLATE_RECORD
    while len(body) - off >= 4:
        try:
            r = rec.parse(body[off:])
        except (ConstructError, struct.error) as e:  # compiled parsers raise struct.error
            raise TemplateError(f"truncated template record at {off}") from e
        if r.field_count == 0:
            if r.template_id in WITHDRAW_ALL or r.template_id >= MIN_DATA_SET:
                out.append((r.template_id, None))
                off += r.end
                continue
            if any(body[off:]):
                raise TemplateError(f"template id {r.template_id} < 256")
            break  # padding
        if r.template_id < MIN_DATA_SET:
            raise TemplateError(f"template id {r.template_id} < 256")
        scopes = r.scope_field_count if options else 0
        if options and not 0 < scopes <= r.field_count:
            raise TemplateError(f"template {r.template_id}: scope field count {scopes}")
        fields = tuple(
            Field(f.id & 0x7FFF, f.length, f.enterprise or 0, i < scopes)
            for i, f in enumerate(r.fields)
        )
        out.append((r.template_id, fields))
        off += r.end
    return out
