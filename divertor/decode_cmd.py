"""`divertor decode FILE.pcap`: flow records of a capture as JSON Lines (a CLI contract).

Keys (keep exactly; tools outside the project read them): frame, exporter, version,
domain_id, template_id, src_addr, dst_addr, src_port, dst_port, protocol, tcp_flags,
input_if, output_if, packets, bytes, sampling_rate, first_epoch, last_epoch.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from typing import Any, TextIO

import numpy as np

from collector.decoder import Decoder, DecoderConfig
from collector.flowbatch import VERSION_SFLOW5, FlowBatch, pair_to_str
from collector.sources.pcap import read_pcap_batches

INT_COLUMNS = (
    "frame",
    "domain_id",
    "template_id",
    "src_port",
    "dst_port",
    "protocol",
    "tcp_flags",
    "input_if",
    "output_if",
    "packets",
    "bytes",
    "sampling_rate",
)


def _addresses(hi: np.ndarray, lo: np.ndarray) -> list[str]:
    """Text of each address, converting each distinct value once."""
    pairs = np.stack([hi, lo], axis=1)
    uniq, inverse = np.unique(pairs, axis=0, return_inverse=True)
    text = [pair_to_str(h, low) for h, low in uniq.tolist()]
    return [text[i] for i in inverse.ravel().tolist()]


def records(batch: FlowBatch) -> Iterator[dict[str, Any]]:
    """The contract's objects for every record of a batch, in batch order."""
    if not len(batch):
        return
    cols = {name: getattr(batch, name).tolist() for name in INT_COLUMNS}
    exporter = _addresses(batch.exporter_hi, batch.exporter_lo)
    src = _addresses(batch.src_hi, batch.src_lo)
    dst = _addresses(batch.dst_hi, batch.dst_lo)
    has_addr = (batch.ip_version != 0).tolist()
    versions = batch.version.tolist()
    first = batch.first.tolist()
    last = batch.last.tolist()
    for i in range(len(batch)):
        row: dict[str, Any] = {
            "frame": cols["frame"][i],
            "exporter": exporter[i],
            "version": "sflow5" if versions[i] == VERSION_SFLOW5 else versions[i],
            "domain_id": cols["domain_id"][i],
            "template_id": cols["template_id"][i],
            "src_addr": src[i] if has_addr[i] else None,
            "dst_addr": dst[i] if has_addr[i] else None,
        }
        for name in INT_COLUMNS[3:]:
            row[name] = cols[name][i]
        row["first_epoch"] = None if math.isnan(first[i]) else first[i]
        row["last_epoch"] = None if math.isnan(last[i]) else last[i]
        yield row


def decode_file(
    path: str, config: DecoderConfig | None = None
) -> tuple[list[dict[str, Any]], Decoder]:
    """Decode a whole capture (tests and tools); returns the records and the decoder."""
    decoder = Decoder(config)
    out: list[dict[str, Any]] = []
    for batch in read_pcap_batches(path):
        out.extend(records(decoder.decode(batch)))
    return out, decoder


def run(path: str, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> int:
    decoder = Decoder()
    n = 0
    for batch in read_pcap_batches(path):
        lines = [json.dumps(r, separators=(", ", ": ")) for r in records(decoder.decode(batch))]
        if lines:
            out.write("\n".join(lines) + "\n")
        n += len(lines)
    json.dump({"records": n, "exporters": decoder.stats.as_dict()}, err, indent=1)
    err.write("\n")
    return 0
