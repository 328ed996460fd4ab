"""Timeline lines for exporters appearing, going silent and coming back, and for allowlist
versions: sans-I/O, fed the decoder's per-exporter datagram counters and the time."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ExporterWatch:
    def __init__(self, silent_after: float) -> None:
        self.silent_after = silent_after
        self.seen: dict[str, tuple[int, float, bool]] = {}  # datagrams, since, silent
        self.allowlist_version: int | None = None

    def check(self, datagrams: Mapping[str, int], now: float) -> list[dict[str, Any]]:
        """``datagrams``: exporter -> datagrams so far. Lines of what changed since."""
        lines = []
        for name, count in datagrams.items():
            seen = self.seen.get(name)
            if seen is None:
                self.seen[name] = (count, now, False)
                lines.append(_line(now, name, "appeared", count))
            elif count != seen[0]:
                if seen[2]:
                    lines.append(_line(now, name, "back", count, f"after {now - seen[1]:.0f}s"))
                self.seen[name] = (count, now, False)
            elif not seen[2] and now - seen[1] >= self.silent_after:
                self.seen[name] = (seen[0], seen[1], True)
                lines.append(
                    _line(now, name, "silent", count, f"no datagram for {now - seen[1]:.0f}s")
                )
        return lines

    def allowlist(self, version: int, entries: int, now: float) -> list[dict[str, Any]]:
        if version == self.allowlist_version:
            return []
        self.allowlist_version = version
        return [{"time": now, "type": "allowlist", "version": version, "entries": entries}]


def _line(now: float, name: str, event: str, datagrams: int, reason: str = "") -> dict[str, Any]:
    line: dict[str, Any] = {
        "time": now,
        "type": "exporter",
        "exporter": name,
        "event": event,
        "datagrams": datagrams,
    }
    if reason:
        line["reason"] = reason
    return line
