"""Per-exporter counters: what the collector returns beside each FlowBatch.

Logs and metrics are made from these (house rule: stats come from what a stage returns).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

#: error reasons (keep names stable: they become metric labels)
TRUNCATED = "truncated"
BAD_VERSION = "bad_version"
BAD_LENGTH = "bad_length"
BAD_COUNT = "bad_count"
BAD_TEMPLATE = "bad_template"
UNKNOWN_TEMPLATE = "unknown_template"
TEMPLATE_CONFLICT = "template_conflict"
TEMPLATE_LIMIT = "template_limit"
PENDING_DROPPED = "pending_dropped"
PENDING_EXPIRED = "pending_expired"
EXPORTER_LIMIT = "exporter_limit"
SAMPLER_LIMIT = "sampler_limit"
BAD_SAMPLE = "bad_sample"
UNSUPPORTED = "unsupported"
NOT_FLOW_EXPORT = "not_flow_export"


@dataclass(slots=True)
class ExporterStats:
    """Counters of one exporter (by source address)."""

    datagrams: int = 0
    records: int = 0  # flow records put into FlowBatches
    options_records: int = 0
    templates: int = 0  # template records received (including refreshes)
    bytes: int = 0  # datagram payload bytes
    counter_samples: int = 0  # sFlow counter samples (counted, not decoded)
    pending_decoded: int = 0  # records decoded late, after their template arrived
    errors: Counter[str] = field(default_factory=Counter)

    def as_dict(self) -> dict[str, object]:
        return {
            "datagrams": self.datagrams,
            "records": self.records,
            "options_records": self.options_records,
            "templates": self.templates,
            "bytes": self.bytes,
            "counter_samples": self.counter_samples,
            "pending_decoded": self.pending_decoded,
            "errors": dict(sorted(self.errors.items())),
        }


class StatsRegistry:
    """Counters keyed by exporter address text, bounded by ``max_exporters``.

    Exporters past the cap share the ``"other"`` entry, so a spoofed flood cannot grow it.
    """

    OTHER = "other"

    def __init__(self, max_exporters: int = 4096) -> None:
        self.max_exporters = max_exporters
        self.by_exporter: dict[str, ExporterStats] = {}

    def get(self, exporter: str) -> ExporterStats:
        st = self.by_exporter.get(exporter)
        if st is None:
            if len(self.by_exporter) >= self.max_exporters:
                exporter = self.OTHER
                st = self.by_exporter.get(exporter)
                if st is not None:
                    return st
            st = ExporterStats()
            self.by_exporter[exporter] = st
        return st

    def error(self, exporter: str, reason: str, n: int = 1) -> None:
        self.get(exporter).errors[reason] += n

    def as_dict(self) -> dict[str, dict[str, object]]:
        return {k: v.as_dict() for k, v in sorted(self.by_exporter.items())}

    def totals(self) -> ExporterStats:
        t = ExporterStats()
        for st in self.by_exporter.values():
            t.datagrams += st.datagrams
            t.records += st.records
            t.options_records += st.options_records
            t.templates += st.templates
            t.bytes += st.bytes
            t.counter_samples += st.counter_samples
            t.pending_decoded += st.pending_decoded
            t.errors.update(st.errors)
        return t
