"""The collector's decoder: DatagramBatch -> FlowBatch, with all per-exporter state.

Sans-I/O: it knows nothing of sockets or files (the sources feed it) and reads no clock
(event time is the datagrams' arrival). Nothing that comes from the network raises out of
``decode``: every problem is counted per exporter and reason in ``stats``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from collector import stats as reasons
from collector.datagram import DatagramBatch
from collector.flowbatch import FlowBatch
from collector.pending import PendingSet, PendingSets
from collector.records import SetGroup, decode_fields, flow_batch, options_values
from collector.sampling import SamplingState, rate_from_options, sampler_id_of
from collector.stats import StatsRegistry
from collector.templates import Field, Template, TemplateKey, TemplateLimitError, TemplateRegistry
from collector.wire import ipfix, netflow5, netflow9, sflow

log = logging.getLogger(__name__)

STATE_FORMAT = 1
MAX_SETS_PER_DATAGRAM = 4095  # sets beyond this in one datagram are not decoded
MAX_FIELDS = 512
PARSED_CACHE_ENTRIES = 1024
PARSED_CACHE_MAX_BODY = 2048


@dataclass(slots=True)
class DecoderConfig:
    """Limits and sampling defaults (the application's typed config fills it)."""

    default_sampling_rate: int = 1
    sampling_overrides: dict[str, int] = field(default_factory=dict)
    max_exporters: int = 4096
    max_templates_per_exporter: int = 1024
    max_samplers_per_exporter: int = 256
    max_pending_sets: int = 8192
    max_pending_per_exporter: int = 1024
    max_pending_bytes: int = 16 << 20
    pending_max_age: float = 120.0


class Decoder:
    """NetFlow v5/v9, IPFIX and sFlow v5 decoding with templates, sampling and pending data."""

    def __init__(self, config: DecoderConfig | None = None) -> None:
        self.config = config or DecoderConfig()
        c = self.config
        self.stats = StatsRegistry(c.max_exporters)
        self.templates = TemplateRegistry(c.max_templates_per_exporter, c.max_exporters)
        self.sampling = SamplingState(
            c.default_sampling_rate, c.sampling_overrides, c.max_samplers_per_exporter
        )
        self.pending = PendingSets(
            c.max_pending_sets, c.max_pending_per_exporter, c.max_pending_bytes, c.pending_max_age
        )
        # (exporter, domain) -> systemInitTimeMilliseconds announced in IPFIX options
        self.sys_init_ms: dict[tuple[str, int], float] = {}
        self._groups: dict[int, SetGroup] = {}
        #: parsed template sets by their bytes (bounded: entries and body size)
        self._parsed: dict[tuple[int, bool, bytes], list[Any]] = {}

    # ------------------------------------------------------------------ decoding
    def decode(self, batch: DatagramBatch) -> FlowBatch:
        """Decode every datagram of the batch; flow records come out in datagram order."""
        self._groups = {}
        v5: list[tuple[float, int, str, bytes]] = []
        sf: list[tuple[float, int, str, bytes]] = []
        for arrival, frame, exporter, payload in zip(
            batch.arrival, batch.frame, batch.exporter, batch.payload, strict=True
        ):
            head = payload[:4]
            if head[:2] == b"\x00\x05" or head[:2] == b"\x00\x09" or head[:2] == b"\x00\x0a":
                st = self.stats.get(exporter)
                st.datagrams += 1
                st.bytes += len(payload)
                if head[1] == 5:
                    v5.append((arrival, frame, exporter, payload))
                else:
                    self._walk(arrival, frame, exporter, payload)
            elif head == b"\x00\x00\x00\x05":
                sf.append((arrival, frame, exporter, payload))
            else:
                st = self.stats.get(exporter)
                st.datagrams += 1
                st.bytes += len(payload)
                self.stats.error(exporter, reasons.BAD_VERSION)
        if batch.arrival:
            self._expire(max(batch.arrival))
        parts: list[FlowBatch] = []
        orders: list[npt.NDArray[np.int64]] = []
        for decoded in (
            _safe(netflow5.decode, v5, self.stats, self.sampling.configured),
            _safe(sflow.decode, sf, self.stats),
        ):
            if len(decoded):
                parts.append(decoded)
                orders.append(decoded.frame * (MAX_SETS_PER_DATAGRAM + 1))
        self._finish_groups(parts, orders)
        if not parts:
            return FlowBatch.empty()
        out = FlowBatch.concat(parts)
        order = np.concatenate(orders)
        if len(order) > 1 and (np.diff(order) < 0).any():
            out = out.take(np.argsort(order, kind="stable"))
        return out

    def _walk(self, arrival: float, frame: int, exporter: str, payload: bytes) -> None:
        """Walk the sets of the NetFlow v9 / IPFIX messages of one datagram."""
        size = len(payload)
        off = 0
        index = 0
        while off < size:
            ver = payload[off + 1] if off + 1 < size and payload[off] == 0 else 0
            if ver == 9:
                wire: Any = netflow9
            elif ver == 10:
                wire = ipfix
            elif off and not any(payload[off:]):
                return  # zero padding after the last message
            else:
                self.stats.error(exporter, reasons.BAD_VERSION)
                return
            if size - off < wire.HEADER_LEN:
                self.stats.error(exporter, reasons.TRUNCATED)
                return
            if ver == 9:
                _, _, uptime, export, _, domain = netflow9.HEADER_FAST.unpack_from(payload, off)
                end = size
            else:
                _, length, export, _, domain = ipfix.HEADER_FAST.unpack_from(payload, off)
                uptime = -1
                if length < ipfix.HEADER_LEN or off + length > size:
                    self.stats.error(exporter, reasons.BAD_LENGTH)
                    return
                end = off + length
            off += wire.HEADER_LEN
            while end - off >= 4:
                set_id, set_len = wire.SET_FAST.unpack_from(payload, off)
                if ver == 9 and set_id == 9 and end - off >= netflow9.HEADER_LEN:
                    break  # a second v9 message in the same datagram
                if set_len < 4 or off + set_len > end:
                    if not any(payload[off:end]):
                        break  # zero padding at the end (Cisco ACI, PAN-OS)
                    self.stats.error(exporter, reasons.BAD_LENGTH)
                    return
                body = payload[off + 4 : off + set_len]
                off += set_len
                index += 1
                if index > MAX_SETS_PER_DATAGRAM:
                    self.stats.error(exporter, reasons.BAD_LENGTH)
                    return
                if set_id >= wire.MIN_DATA_SET:
                    key = TemplateKey(exporter, ver, domain, set_id)
                    order = frame * (MAX_SETS_PER_DATAGRAM + 1) + index
                    self._data(key, body, arrival, frame, float(export), uptime, order)
                elif set_id in (wire.TEMPLATE_SET, wire.OPTIONS_TEMPLATE_SET):
                    self._templates(wire, exporter, ver, domain, body, set_id)
                else:
                    self.stats.error(exporter, reasons.UNSUPPORTED)
            if ver == 9:
                if end - off >= netflow9.HEADER_LEN and payload[off : off + 2] == b"\x00\x09":
                    continue
                return
            if off != end:
                off = end  # IPFIX padding smaller than a set header

    def _data(
        self,
        key: TemplateKey,
        body: bytes,
        arrival: float,
        frame: int,
        export: float,
        uptime: int,
        order: int,
        late: bool = False,
    ) -> None:
        tpl = self.templates.get(key)
        if tpl is None:
            self.stats.error(key.exporter, reasons.UNKNOWN_TEMPLATE)
            item = PendingSet(key, body, arrival, frame, export, uptime, order)
            for dropped in self.pending.add(item):
                self.stats.error(dropped.key.exporter, reasons.PENDING_DROPPED)
            return
        group = self._groups.get(id(tpl))
        if group is None:
            group = self._groups[id(tpl)] = SetGroup(key, tpl)
        group.add(body, arrival, frame, export, uptime, order, late)

    def _templates(
        self, wire: Any, exporter: str, ver: int, domain: int, body: bytes, set_id: int
    ) -> None:
        options = set_id == wire.OPTIONS_TEMPLATE_SET
        # exporters re-send the same template sets every few seconds: parse each text once
        cache_key = (ver, options, body)
        records = self._parsed.get(cache_key)
        if records is None:
            try:
                records = wire.parse_templates(body, options)
            except (netflow9.TemplateError, ipfix.TemplateError):
                self.stats.error(exporter, reasons.BAD_TEMPLATE)
                return
            if len(body) <= PARSED_CACHE_MAX_BODY:
                if len(self._parsed) >= PARSED_CACHE_ENTRIES:
                    del self._parsed[next(iter(self._parsed))]
                self._parsed[cache_key] = records
        for template_id, fields in records:
            if fields is None:
                if template_id in ipfix.WITHDRAW_ALL:
                    self.templates.withdraw_all(exporter, ver, domain, options)
                else:
                    self.templates.withdraw(TemplateKey(exporter, ver, domain, template_id))
                continue
            self._template(TemplateKey(exporter, ver, domain, template_id), fields, options)

    def _template(self, key: TemplateKey, fields: tuple[Field, ...], options: bool) -> None:
        st = self.stats.get(key.exporter)
        st.templates += 1
        old = self.templates.get(key)
        if old is not None and old.fields == fields and old.options == options:
            return
        if old is None and self.templates.count(key.exporter) >= self.templates.max_per_exporter:
            self.stats.error(key.exporter, reasons.TEMPLATE_LIMIT)  # before building its dtype
            return
        tpl = Template(key.template_id, fields, options)
        if tpl.record_length == 0 or len(fields) > MAX_FIELDS:
            self.stats.error(key.exporter, reasons.BAD_TEMPLATE)
            return
        try:
            conflict = self.templates.put(key, tpl)
        except TemplateLimitError:
            self.stats.error(key.exporter, reasons.TEMPLATE_LIMIT)
            return
        if conflict:
            self.stats.error(key.exporter, reasons.TEMPLATE_CONFLICT)
        for p in self.pending.take(key):
            self._data(
                key, p.body, p.arrival, p.frame, p.export_time, p.sysuptime_ms, p.order, late=True
            )

    def _expire(self, now: float) -> None:
        for item in self.pending.expire(now):
            self.stats.error(item.key.exporter, reasons.PENDING_EXPIRED)

    def _finish_groups(self, parts: list[FlowBatch], orders: list[npt.NDArray[np.int64]]) -> None:
        groups = sorted(self._groups.values(), key=lambda g: not g.template.options)
        self._groups = {}
        for g in groups:
            exporter = g.key.exporter
            try:
                fields, counts = decode_fields(g)
                st = self.stats.get(exporter)
                late = int(counts[np.asarray(g.late, dtype=bool)].sum())
                st.pending_decoded += late
                if g.template.options:
                    st.options_records += fields.n
                    self._options(g.key, options_values(fields))
                    continue
                b = flow_batch(
                    g,
                    fields,
                    counts,
                    self.sampling,
                    self.sys_init_ms.get((exporter, g.key.domain_id)),
                )
                st.records += len(b)
            except Exception:  # a template/data combination numpy cannot read
                log.exception("decoding template %s", g.key)
                self.stats.error(exporter, reasons.BAD_TEMPLATE)
                continue
            parts.append(b)
            orders.append(np.repeat(np.asarray(g.order, dtype=np.int64), counts))

    def _options(self, key: TemplateKey, rows: list[dict[int, int]]) -> None:
        for values in rows:
            rate = rate_from_options(values)
            if rate is not None and not self.sampling.announce(
                key.exporter, key.domain_id, sampler_id_of(values), rate
            ):
                self.stats.error(key.exporter, reasons.SAMPLER_LIMIT)
            init = values.get(160)
            if init and (
                (key.exporter, key.domain_id) in self.sys_init_ms
                or len(self.sys_init_ms) < self.config.max_exporters * 4
            ):
                self.sys_init_ms[(key.exporter, key.domain_id)] = float(init)

    # ------------------------------------------------------------------ state
    def snapshot(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "templates": self.templates.snapshot(),
            "sampling": self.sampling.snapshot(),
            "sys_init_ms": [[e, d, v] for (e, d), v in self.sys_init_ms.items()],
        }

    def restore(self, state: dict[str, Any]) -> None:
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            got = state.get("format") if isinstance(state, dict) else type(state).__name__
            raise ValueError(f"unknown decoder state format {got!r}")
        try:
            self.templates.restore(state["templates"])
            self.sampling.restore(state["sampling"])
            for e, d, v in state["sys_init_ms"]:
                self.sys_init_ms[(str(e), int(d))] = float(v)
        except (KeyError, TypeError, AttributeError, AssertionError) as exc:
            raise ValueError(f"malformed decoder state: {exc!r}") from exc

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the template and sampling state atomically (write, fsync, rename)."""
        directory = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(prefix=".decoder-state.", dir=directory)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(self.snapshot(), fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise

    def load(self, path: str | os.PathLike[str]) -> bool:
        """Restore state saved by ``save``; False when there is none yet."""
        try:
            with open(path) as fh:
                state = json.load(fh)
        except FileNotFoundError:
            return False
        self.restore(state)
        return True


def _safe(
    fn: Any, datagrams: list[tuple[float, int, str, bytes]], st: StatsRegistry, *args: Any
) -> FlowBatch:
    if not datagrams:
        return FlowBatch.empty()
    try:
        result: FlowBatch = fn(datagrams, st, *args)
        return result
    except Exception:  # the wire modules count their errors; this is the last net
        log.exception("decoder failure")
        for d in datagrams:
            st.error(d[2], "decode_error")
        return FlowBatch.empty()
