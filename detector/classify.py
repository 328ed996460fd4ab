"""Traffic classes of flow records, as one boolean matrix per FlowBatch (no per-record code)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from collector.flowbatch import FlowBatch
from thresholds.model import CLASSES, PortSets

TCP, UDP, ICMP, ICMP6 = 6, 17, 1, 58
SYN, ACK = 0x02, 0x10
CLASS_INDEX = {name: i for i, name in enumerate(CLASSES)}

#: allowlist membership of a column of source addresses (hi, lo) -> bool mask
Membership = Callable[[npt.NDArray[np.uint64], npt.NDArray[np.uint64]], npt.NDArray[np.bool_]]


class Classifier:
    def __init__(self, ports: PortSets, allowlisted: Membership | None = None) -> None:
        self.amplification = _table(ports.amplification)
        self.sip = _table(ports.sip)
        self.rtp_low, self.rtp_high = ports.rtp_low, ports.rtp_high
        self.allowlisted = allowlisted

    def classes(self, b: FlowBatch) -> npt.NDArray[np.bool_]:
        """(records, classes) matrix: which classes each record counts in."""
        n = len(b)
        m = np.zeros((n, len(CLASSES)), dtype=bool)
        proto = b.protocol
        tcp = proto == TCP
        udp = proto == UDP
        m[:, CLASS_INDEX["total"]] = True
        m[:, CLASS_INDEX["tcp"]] = tcp
        m[:, CLASS_INDEX["tcp_syn"]] = tcp & ((b.tcp_flags & SYN) != 0) & ((b.tcp_flags & ACK) == 0)
        m[:, CLASS_INDEX["udp"]] = udp
        m[:, CLASS_INDEX["icmp"]] = (proto == ICMP) | (proto == ICMP6)
        m[:, CLASS_INDEX["fragments"]] = b.fragment != 0
        m[:, CLASS_INDEX["amplification"]] = udp & self.amplification[b.src_port]
        sip = (udp | tcp) & (self.sip[b.dst_port] | self.sip[b.src_port])
        m[:, CLASS_INDEX["sip"]] = sip
        rtp = udp & (b.dst_port >= self.rtp_low) & (b.dst_port <= self.rtp_high)
        m[:, CLASS_INDEX["rtp"]] = rtp
        if self.allowlisted is not None:
            unlisted = ~self.allowlisted(b.src_hi, b.src_lo)
            m[:, CLASS_INDEX["unlisted_udp"]] = udp & unlisted
            m[:, CLASS_INDEX["unlisted_sip"]] = sip & unlisted
            m[:, CLASS_INDEX["unlisted_rtp"]] = rtp & unlisted
        return m


def _table(ports: frozenset[int]) -> npt.NDArray[np.bool_]:
    t = np.zeros(65536, dtype=bool)
    t[list(ports)] = True
    return t
