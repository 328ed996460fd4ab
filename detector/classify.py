"""Traffic classes of flow records, as one bit code per record (no per-record code).

Bit k of a record's code is set when the record counts in class ``CLASSES[k]``. The codes
come from a few small tables: the protocol gives total/tcp/udp/icmp and which port- and
flag-based classes may apply; the source and destination ports give amplification, SIP and
RTP; the TCP flags give SYN.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from collector.flowbatch import FlowBatch
from thresholds.model import CLASSES, PortSets

TCP, UDP, ICMP, ICMP6 = 6, 17, 1, 58
SYN, ACK = 0x02, 0x10
CLASS_INDEX = {name: i for i, name in enumerate(CLASSES)}
#: one bit per class in a record's code
BIT = {name: np.uint16(1 << i) for i, name in enumerate(CLASSES)}
assert len(CLASSES) <= 16, "class codes are uint16"

#: allowlist membership of a column of source addresses (hi, lo) -> bool mask
Membership = Callable[[npt.NDArray[np.uint64], npt.NDArray[np.uint64]], npt.NDArray[np.bool_]]


class Classifier:
    def __init__(self, ports: PortSets, allowlisted: Membership | None = None) -> None:
        self.amplification = _table(ports.amplification)
        self.sip = _table(ports.sip)
        self.rtp_low, self.rtp_high = ports.rtp_low, ports.rtp_high
        self.allowlisted = allowlisted
        # protocol -> classes it is in; protocol -> port/flag classes that may apply to it
        self._proto = np.full(256, BIT["total"], dtype=np.uint16)
        self._proto[TCP] |= BIT["tcp"]
        self._proto[UDP] |= BIT["udp"]
        self._proto[[ICMP, ICMP6]] |= BIT["icmp"]
        self._applies = np.zeros(256, dtype=np.uint16)
        self._applies[TCP] = BIT["tcp_syn"] | BIT["sip"]
        self._applies[UDP] = BIT["amplification"] | BIT["sip"] | BIT["rtp"]
        # port -> classes it may make a record of (sources: reflection and SIP; destinations:
        # SIP and RTP)
        self._src = np.where(self.amplification, BIT["amplification"], 0).astype(np.uint16)
        self._src |= np.where(self.sip, BIT["sip"], 0).astype(np.uint16)
        ports_all = np.arange(65536)
        rtp = (ports_all >= self.rtp_low) & (ports_all <= self.rtp_high)
        self._dst = np.where(self.sip, BIT["sip"], 0).astype(np.uint16)
        self._dst |= np.where(rtp, BIT["rtp"], 0).astype(np.uint16)

    def codes(self, b: FlowBatch) -> npt.NDArray[np.uint16]:
        """Bit code of the classes of each record (bit k: class ``CLASSES[k]``)."""
        proto = b.protocol
        syn = (b.tcp_flags & (SYN | ACK)) == SYN
        # ``take``: fancy indexing with a non-intp index is several times slower
        maybe = self._src.take(b.src_port) | self._dst.take(b.dst_port)
        maybe |= syn * BIT["tcp_syn"]
        maybe &= self._applies.take(proto)
        code = self._proto.take(proto)
        code |= maybe
        code |= (b.fragment != 0) * BIT["fragments"]
        if self.allowlisted is not None:
            unlisted = ~self.allowlisted(b.src_hi, b.src_lo)
            for cls in ("udp", "sip", "rtp"):
                hit = ((code & BIT[cls]) != 0) & unlisted
                code |= hit * BIT[f"unlisted_{cls}"]
        return code

    def classes(self, b: FlowBatch) -> npt.NDArray[np.bool_]:
        """(records, classes) matrix: which classes each record counts in."""
        return unpack(self.codes(b))


def unpack(codes: npt.NDArray[np.uint16]) -> npt.NDArray[np.bool_]:
    """(records, classes) boolean matrix of bit codes."""
    shifts = np.arange(len(CLASSES), dtype=np.uint16)
    return ((codes[:, None] >> shifts) & 1).astype(bool)


def _table(ports: frozenset[int]) -> npt.NDArray[np.bool_]:
    t = np.zeros(65536, dtype=bool)
    t[list(ports)] = True
    return t
