"""The collector's input: datagrams taken off a socket or read from a capture."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class DatagramBatch:
    """Parallel lists of many datagrams; a source fills it, the decoder empties it.

    ``exporter`` is the datagram's source address as text (IPv4 dotted or IPv6), the key of
    all per-exporter state. ``frame`` is the capture's 1-based packet number (pcap) or a
    running datagram counter (live).
    """

    arrival: list[float] = field(default_factory=list)
    frame: list[int] = field(default_factory=list)
    exporter: list[str] = field(default_factory=list)
    payload: list[bytes] = field(default_factory=list)

    def append(self, arrival: float, frame: int, exporter: str, payload: bytes) -> None:
        self.arrival.append(arrival)
        self.frame.append(frame)
        self.exporter.append(exporter)
        self.payload.append(payload)

    def __len__(self) -> int:
        return len(self.payload)

    def clear(self) -> None:
        self.arrival.clear()
        self.frame.clear()
        self.exporter.clear()
        self.payload.clear()
