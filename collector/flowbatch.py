"""FlowBatch: the collector's output contract (DESIGN.md, "Contracts between the stages").

Columns, not objects: one numpy array per field over many records. Addresses of both
families share one representation: 128 bits as two big-endian halves (``*_hi``, ``*_lo``,
uint64), IPv4 as IPv4-mapped IPv6 (``::ffff:a.b.c.d``). Unknown times are NaN.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

#: ``version`` column value of sFlow v5 records (NetFlow/IPFIX use 5, 9 and 10).
VERSION_SFLOW5 = 0x5F05
V4_MAPPED_HI = np.uint64(0)
V4_MAPPED_LO_BASE = np.uint64(0x0000FFFF00000000)

#: column name -> dtype; the single place that declares the schema.
COLUMNS: dict[str, str] = {
    "arrival": "f8",  # event time the datagram arrived (unix s): socket time or pcap time
    "frame": "i8",  # 1-based packet number in a capture, or the datagram sequence when live
    "exporter_hi": "u8",
    "exporter_lo": "u8",
    "version": "u2",  # 5, 9, 10, VERSION_SFLOW5
    "domain_id": "u4",  # v9 source id, IPFIX observation domain, sFlow sub-agent, v5 engine
    "template_id": "u2",  # 0 for v5 and sFlow
    "src_hi": "u8",
    "src_lo": "u8",
    "dst_hi": "u8",
    "dst_lo": "u8",
    "src_port": "u2",
    "dst_port": "u2",
    "protocol": "u1",
    "tcp_flags": "u2",
    "tos": "u1",
    "icmp_type_code": "u2",
    "input_if": "u4",
    "output_if": "u4",
    "vlan": "u2",
    "packets": "u8",  # as carried (sFlow: 1)
    "bytes": "u8",  # as carried (sFlow: frame length)
    "sampling_rate": "u4",  # rate to apply (1 = unsampled)
    "first": "f8",  # flow start, unix seconds (NaN when unknown)
    "last": "f8",  # flow end, unix seconds (NaN when unknown)
    "fragment": "u1",  # 1 when the record describes IP fragments (non-first or MF set)
    "ip_version": "u1",  # 4 or 6 (0 when the record carries no address)
}


@dataclass(slots=True)
class FlowBatch:
    """Flow records as columns. All arrays have the same length."""

    arrival: npt.NDArray[np.float64]
    frame: npt.NDArray[np.int64]
    exporter_hi: npt.NDArray[np.uint64]
    exporter_lo: npt.NDArray[np.uint64]
    version: npt.NDArray[np.uint16]
    domain_id: npt.NDArray[np.uint32]
    template_id: npt.NDArray[np.uint16]
    src_hi: npt.NDArray[np.uint64]
    src_lo: npt.NDArray[np.uint64]
    dst_hi: npt.NDArray[np.uint64]
    dst_lo: npt.NDArray[np.uint64]
    src_port: npt.NDArray[np.uint16]
    dst_port: npt.NDArray[np.uint16]
    protocol: npt.NDArray[np.uint8]
    tcp_flags: npt.NDArray[np.uint16]
    tos: npt.NDArray[np.uint8]
    icmp_type_code: npt.NDArray[np.uint16]
    input_if: npt.NDArray[np.uint32]
    output_if: npt.NDArray[np.uint32]
    vlan: npt.NDArray[np.uint16]
    packets: npt.NDArray[np.uint64]
    bytes: npt.NDArray[np.uint64]
    sampling_rate: npt.NDArray[np.uint32]
    first: npt.NDArray[np.float64]
    last: npt.NDArray[np.float64]
    fragment: npt.NDArray[np.uint8]
    ip_version: npt.NDArray[np.uint8]

    NAMES: ClassVar[tuple[str, ...]] = tuple(COLUMNS)

    def __len__(self) -> int:
        return int(self.arrival.shape[0])

    @classmethod
    def empty(cls, n: int = 0) -> FlowBatch:
        """A batch of ``n`` zeroed records (times NaN, sampling rate 1)."""
        cols = {name: np.zeros(n, dtype=dt) for name, dt in COLUMNS.items()}
        cols["first"][:] = np.nan
        cols["last"][:] = np.nan
        cols["sampling_rate"][:] = 1
        return cls(**cols)

    @classmethod
    def concat(cls, batches: list[FlowBatch]) -> FlowBatch:
        if not batches:
            return cls.empty()
        if len(batches) == 1:
            return batches[0]
        return cls(
            **{name: np.concatenate([getattr(b, name) for b in batches]) for name in COLUMNS}
        )

    def take(self, index: npt.NDArray[np.intp] | npt.NDArray[np.bool_]) -> FlowBatch:
        """Rows selected by an index or mask, as a new batch."""
        return FlowBatch(**{name: getattr(self, name)[index] for name in COLUMNS})

    def validate(self) -> None:
        """Raise ValueError if a column has the wrong dtype or length (tests, debugging)."""
        n = len(self)
        for f in fields(self):
            arr = getattr(self, f.name)
            if arr.shape != (n,) or arr.dtype != np.dtype(COLUMNS[f.name]):
                raise ValueError(f"column {f.name}: {arr.dtype}{arr.shape}, want {n}")


def addr_to_pair(address: str) -> tuple[int, int]:
    """Text address -> (hi, lo) in the FlowBatch representation."""
    ip = ipaddress.ip_address(address)
    value = int(ip) | (0xFFFF00000000 if ip.version == 4 else 0)
    return value >> 64, value & 0xFFFFFFFFFFFFFFFF


def pair_to_str(hi: int, lo: int) -> str:
    """(hi, lo) -> text address; IPv4-mapped values print as dotted quads."""
    hi, lo = int(hi), int(lo)
    if hi == 0 and (lo >> 32) == 0xFFFF:
        return str(ipaddress.IPv4Address(lo & 0xFFFFFFFF))
    return str(ipaddress.IPv6Address((hi << 64) | lo))


def v4_to_pair(
    addr: npt.NDArray[np.unsignedinteger],
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    """Vector of IPv4 addresses (host-order integers) -> (hi, lo) columns."""
    lo = addr.astype(np.uint64) | V4_MAPPED_LO_BASE
    return np.zeros(addr.shape[0], dtype=np.uint64), lo


def v6_bytes_to_pair(
    raw: npt.NDArray[Any],
) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    """(n, 16) uint8 array of IPv6 addresses in network order -> (hi, lo) columns."""
    be = np.ascontiguousarray(raw).view(">u8").reshape(-1, 2)
    return be[:, 0].astype(np.uint64), be[:, 1].astype(np.uint64)
