"""/metrics: the daemon's status in the Prometheus text format (prometheus-client).

Nothing is counted here: each scrape turns the stats the stages return (the daemon's
``status()`` and the BGP engine's ``status()``) into metric families, so the log, /status
and /metrics can never disagree.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from detector.contracts import State
from thresholds.model import CLASSES, METRICS


def _counter(name: str, doc: str, labels: list[str] | None = None) -> CounterMetricFamily:
    return CounterMetricFamily(f"divertor_{name}", doc, labels=labels)


def _gauge(name: str, doc: str, labels: list[str] | None = None) -> GaugeMetricFamily:
    return GaugeMetricFamily(f"divertor_{name}", doc, labels=labels)


class _Families:
    def __init__(self, status: Mapping[str, Any], bgp: Mapping[str, Any]) -> None:
        self.status, self.bgp = status, bgp

    def collect(self) -> Iterator[Metric]:
        s = self.status
        exporters: Mapping[str, Mapping[str, Any]] = s.get("exporters", {})
        dg = _counter("datagrams", "Flow export datagrams decoded, per exporter", ["exporter"])
        rec = _counter("flow_records", "Flow records decoded, per exporter", ["exporter"])
        err = _counter(
            "decode_errors",
            "Datagrams or sets refused, per exporter and reason",
            ["exporter", "reason"],
        )
        tpl = _counter("templates", "Template records received, per exporter", ["exporter"])
        for name, ex in exporters.items():
            dg.add_metric([name], ex.get("datagrams", 0))
            rec.add_metric([name], ex.get("records", 0))
            tpl.add_metric([name], ex.get("templates", 0))
            for reason, n in ex.get("errors", {}).items():
                err.add_metric([name, reason], n)
        yield from (dg, rec, err, tpl)
        simple = (
            ("received_datagrams", "Datagrams taken off the sockets", "datagrams"),
            ("socket_drops", "Datagrams the kernel dropped (socket buffer full)", "socket_drops"),
            (
                "overload_dropped_datagrams",
                "Datagrams dropped at the hand-over queue (decoding fell behind)",
                "overload_datagrams",
            ),
            (
                "overload_dropped_batches",
                "Batches dropped at the hand-over queue",
                "overload_batches",
            ),
        )
        for name, doc, key in simple:
            c = _counter(name, doc)
            c.add_metric([], s.get(key, 0))
            yield c
        reloads = _counter("config_reloads", "SIGHUP reloads, by result", ["result"])
        reloads.add_metric(["ok"], s.get("reloads_ok", 0))
        reloads.add_metric(["refused"], s.get("reloads_refused", 0))
        yield reloads
        for name, doc, key in (
            (
                "decode_lag_seconds",
                "Arrival of the last datagram decoded to its decoding",
                "decode_lag",
            ),
            ("queue_batches", "Batches waiting at the hand-over queue", "queue"),
            ("timeline_backlog", "Items waiting for the timeline store writer", "timeline_backlog"),
            ("uptime_seconds", "Seconds since divertor run started", "uptime"),
        ):
            g = _gauge(name, doc)
            g.add_metric([], float(s.get(key, 0.0)))
            yield g
        rates = _gauge(
            "prefix_rate",
            "Rate to a protected prefix by class: peak over detector.horizon of the verdicts' "
            "rolling average; "
            "metric bps, pps or fps",
            ["prefix", "class", "metric"],
        )
        for prefix, values in s.get("rates", {}).items():
            for k, cls in enumerate(CLASSES):
                for m, metric in enumerate(METRICS):
                    rates.add_metric([prefix, cls, metric], float(values[k][m]))
        yield rates
        by_state = Counter(t["state"] for t in s.get("prefixes", {}).values())
        inc = _gauge("incidents", "Protected prefixes by incident state", ["state"])
        for state in State:
            inc.add_metric([state.value], by_state.get(state.value, 0))
        yield inc
        yield from self._bgp()

    def _bgp(self) -> Iterator[Metric]:
        b = self.bgp
        div = _gauge("diversions", "Routes the engine wants announced (target)")
        div.add_metric([], len(b.get("target", {})))
        yield div
        ann = _gauge("announced_routes", "Routes ExaBGP acknowledged as announced")
        ann.add_metric([], len(b.get("announced", {})))
        yield ann
        pend = _gauge("pending_approvals", "Diversions waiting for an operator's approval")
        pend.add_metric([], len(b.get("pending", [])))
        yield pend
        up = _gauge("bgp_session_up", "BGP session state per peer (1 established)", ["peer"])
        for peer, state in (b.get("bridge", {}).get("sessions") or {}).items():
            up.add_metric([peer], 1.0 if state == "up" else 0.0)
        yield up


def render_metrics(status: Mapping[str, Any], bgp: Mapping[str, Any]) -> tuple[bytes, str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(status, bgp))
    return generate_latest(registry), CONTENT_TYPE_LATEST
