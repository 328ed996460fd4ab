"""Sampling rates per exporter, observation domain and sampler.

Exporters announce their rate in many forms (options data of NetFlow v9 and IPFIX, headers
of v5 and sFlow). ``rate_from_options`` turns one options record into a rate; the state
keeps them per (exporter, domain, sampler id) and answers, for a column of sampler ids,
the rate to apply. Precedence, most specific first: the record's own interval, its
sampler's announced rate, the rate announced for its domain without a sampler id, the
configured per-exporter override, the configured default.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from collector import elements as ie

NO_SAMPLER = -1
MAX_RATE = 0xFFFFFFFF  # the FlowBatch column is uint32


def _rate(value: int) -> int:
    return min(max(1, int(value)), MAX_RATE)


def rate_from_options(values: Mapping[int, int]) -> int | None:
    """The 1-in-N rate an options record announces, or None if it announces none."""
    interval = values.get(ie.SAMPLING_INTERVAL) or values.get(ie.SAMPLER_RANDOM_INTERVAL)
    if interval:
        return int(interval)
    size = values.get(ie.SAMPLING_SIZE)
    population = values.get(ie.SAMPLING_POPULATION)
    pkt_interval = values.get(ie.SAMPLING_PACKET_INTERVAL)
    # PSAMP (RFC 5476): random n-out-of-N (selector algorithm 3) is size and population;
    # systematic count-based (1) is packet interval and space
    if size and population and (values.get(ie.SELECTOR_ALGORITHM) == 3 or not pkt_interval):
        return max(1, round(population / size))
    if pkt_interval:
        space = values.get(ie.SAMPLING_PACKET_SPACE, 0)
        return max(1, round((pkt_interval + space) / pkt_interval))
    if ie.SAMPLING_INTERVAL in values or ie.SAMPLER_RANDOM_INTERVAL in values:
        return 1  # an explicit 0: unsampled
    return None


def sampler_id_of(values: Mapping[int, int]) -> int:
    if ie.SAMPLER_ID in values:
        return int(values[ie.SAMPLER_ID])
    if ie.SELECTOR_ID in values:
        return int(values[ie.SELECTOR_ID])
    return NO_SAMPLER


class SamplingState:
    """Announced rates, bounded per exporter; configured default and overrides."""

    def __init__(
        self,
        default_rate: int = 1,
        overrides: Mapping[str, int] | None = None,
        max_samplers_per_exporter: int = 256,
    ) -> None:
        self.default_rate = _rate(default_rate)
        self.overrides = {k: _rate(v) for k, v in (overrides or {}).items()}
        self.max_samplers = max_samplers_per_exporter
        # exporter -> {(domain, sampler): rate}
        self._rates: dict[str, dict[tuple[int, int], int]] = {}

    def announce(self, exporter: str, domain_id: int, sampler_id: int, rate: int) -> bool:
        """Record an announced rate; False when the exporter's table is full."""
        table = self._rates.setdefault(exporter, {})
        key = (domain_id, sampler_id)
        if key not in table and len(table) >= self.max_samplers:
            return False
        table[key] = _rate(rate)
        return True

    def configured(self, exporter: str) -> int:
        """The configured rate of an exporter: its override, else the default."""
        return self.overrides.get(exporter, self.default_rate)

    def fallback(self, exporter: str, domain_id: int) -> int:
        """Rate for records that name no sampler (or one never announced)."""
        table = self._rates.get(exporter)
        if table:
            rate = table.get((domain_id, NO_SAMPLER))
            if rate is not None:
                return rate
            # one sampler announced for the domain: it is the one in use
            rates = {r for (d, _), r in table.items() if d == domain_id}
            if len(rates) == 1:
                return rates.pop()
        return self.configured(exporter)

    def rates_for(
        self,
        exporter: str,
        domain_id: int,
        sampler_ids: npt.NDArray[np.integer] | None,
        n: int,
    ) -> npt.NDArray[np.uint32]:
        """Rate per record from a column of sampler ids (or None when records name none)."""
        base = self.fallback(exporter, domain_id)
        out = np.full(n, base, dtype=np.uint32)
        table = self._rates.get(exporter)
        if sampler_ids is None or not table:
            return out
        for sid in np.unique(sampler_ids):
            rate = table.get((domain_id, int(sid)))
            if rate is not None:
                out[sampler_ids == sid] = rate
        return out

    def snapshot(self) -> dict[str, list[list[int]]]:
        return {
            exp: [[d, s, r] for (d, s), r in table.items()] for exp, table in self._rates.items()
        }

    def restore(self, data: Mapping[str, list[list[int]]]) -> None:
        for exp, rows in data.items():
            for d, s, r in rows:
                self.announce(exp, int(d), int(s), int(r))
