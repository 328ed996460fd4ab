"""`divertor collect`: the live collector alone (UDP -> decoder), for operation and bench/.

The receive thread only takes datagrams off the sockets into batches and puts them on a
bounded queue; the main thread decodes. When decoding falls behind, whole batches are
dropped at the queue and counted (overload is visible, the receive loop never blocks).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import thresholds
from collector.datagram import DatagramBatch
from collector.decoder import Decoder, DecoderConfig
from collector.flowbatch import FlowBatch
from collector.sources.udp import UdpListener, UdpListenerConfig
from divertor import config as config_mod
from divertor.pipeline import Pipeline, Timeline

log = logging.getLogger(__name__)

#: NetFlow (2055), IPFIX (4739) and sFlow (6343), IPv4 and IPv6
DEFAULT_LISTEN = [f"{host}:{port}" for port in (2055, 4739, 6343) for host in ("0.0.0.0", "[::]")]


@dataclass
class CollectOptions:
    listen: list[str]
    rcvbuf: int = 32 << 20
    queue_batches: int = 32  # hand-over queue; a full queue drops whole batches (counted)
    stats_file: str | None = None
    state_file: str | None = None
    stats_interval: float = 10.0
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    #: divertor.yaml: run rates, verdicts, incidents and the dry-run planner too
    pipeline_config: str | None = None


class Collector:
    """Listener + decoder. ``start()`` binds, ``run()`` decodes until ``stop()``."""

    def __init__(self, options: CollectOptions) -> None:
        self.options = options
        self.pipeline: Pipeline | None = None
        self.timeline = Timeline()
        if options.pipeline_config:
            cfg = config_mod.load(options.pipeline_config)
            self.pipeline = Pipeline(cfg, thresholds.load(cfg.thresholds))
            self.decoder = self.pipeline.decoder
        else:
            self.decoder = Decoder(options.decoder)
        self.queue: queue.Queue[DatagramBatch] = queue.Queue(options.queue_batches)
        self.listener = UdpListener(
            UdpListenerConfig(listen=options.listen, rcvbuf=options.rcvbuf), self._enqueue
        )
        self.stop_event = threading.Event()
        self.overload_batches = 0
        self.overload_datagrams = 0
        self.flow_records = 0  # decoded while running
        self.flow_records_drained = 0  # decoded after the stop request, from the queue
        self.kernel_drops = 0  # the sockets' drops, kept when they close
        self._thread: threading.Thread | None = None

    def _enqueue(self, batch: DatagramBatch) -> None:
        try:
            self.queue.put_nowait(batch)
        except queue.Full:
            self.overload_batches += 1
            self.overload_datagrams += len(batch)

    def start(self) -> None:
        if self.options.state_file and self.decoder.load(self.options.state_file):
            log.info("restored decoder state from %s", self.options.state_file)
        self.listener.start()
        self._thread = threading.Thread(
            target=self.listener.run, args=(self.stop_event,), name="udp-receive", daemon=True
        )
        self._thread.start()
        log.info(
            "listening on %s (rcvbuf %d)", self.listener.addresses, self.listener.rcvbuf_effective
        )

    def run(self, on_flows: Any = None) -> None:
        next_stats = time.monotonic() + self.options.stats_interval
        while not self.stop_event.is_set():
            try:
                batch = self.queue.get(timeout=0.2)
            except queue.Empty:
                continue
            self.flow_records += self.process(batch, on_flows)
            if time.monotonic() >= next_stats:
                next_stats += self.options.stats_interval
                log.info("stats %s", json.dumps(self.summary()))

    def process(self, batch: DatagramBatch, on_flows: Any = None) -> int:
        """Decode a batch (and run the pipeline when configured); returns its flow records."""
        if self.pipeline is not None:
            before = self.pipeline.records
            self.pipeline.feed(batch, self.timeline)
            for line in self.timeline.lines:
                if line["type"] != "verdict":
                    log.info("timeline %s", json.dumps(line))
            self.timeline.lines.clear()
            return self.pipeline.records - before
        flows: FlowBatch = self.decoder.decode(batch)
        if on_flows is not None:
            on_flows(flows)
        return len(flows)

    def stop(self) -> None:
        self.stop_event.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.kernel_drops = self.listener.kernel_drops()  # read before the sockets close
        self.listener.stop()

    def summary(self) -> dict[str, Any]:
        return {
            "flow_records": self.flow_records,
            "flow_records_drained": self.flow_records_drained,
            "datagrams": self.listener.datagrams,
            "overload_batches": self.overload_batches,
            "overload_datagrams": self.overload_datagrams,
            "kernel_drops": self.listener.kernel_drops() or self.kernel_drops,
            "rcvbuf_effective": self.listener.rcvbuf_effective,
            "exporters": self.decoder.stats.as_dict(),
        }

    def write_outputs(self) -> None:
        if self.options.state_file:
            self.decoder.save(self.options.state_file)
        if self.options.stats_file:
            tmp = self.options.stats_file + ".tmp"
            with open(tmp, "w") as fh:
                json.dump(self.summary(), fh, indent=1)
            os.replace(tmp, self.options.stats_file)


def run(options: CollectOptions) -> int:
    collector = Collector(options)
    collector.start()

    def _stop(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping", signum)
        collector.stop_event.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        collector.run()
    finally:
        collector.stop()
        # decode what the receive thread handed over before it stopped (counted apart:
        # bench/ measures what is decoded while running, as for the C peers)
        while not collector.queue.empty():
            collector.flow_records_drained += collector.process(collector.queue.get_nowait())
        collector.write_outputs()
        log.info(
            "final %s",
            json.dumps({k: v for k, v in collector.summary().items() if k != "exporters"}),
        )
    return 0
