"""The ``allowlist:`` section of divertor.yaml (the dataclasses hold the defaults)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from allowlist import addr
from allowlist.export import FORMATS, Names


@dataclass(slots=True)
class ExportTarget:
    """A file the set is written to (atomically) whenever it changed."""

    path: str
    format: str = "plain"

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"format {self.format!r}: expected one of {', '.join(FORMATS)}")


@dataclass(slots=True)
class AllowlistConfig:
    store: str | None = None  # SQLite file of the durable set; None: in memory only
    feed: str | None = None  # JSON Lines feed of registrations, followed as it grows
    snapshot_dir: str | None = None  # full snapshots dropped here (one entry per line)
    static: list[str] = field(default_factory=list)  # trunks, gateways: never expire
    min_prefix_v4: int = 8  # shorter prefixes are refused
    min_prefix_v6: int = 32
    checkpoint_every: float = 600.0  # seconds between checkpoints of the store
    keep_versions: int = 1_000_000  # log kept before a checkpoint (deltas since then)
    exports: list[ExportTarget] = field(default_factory=list)
    export_every: float = 10.0  # seconds between exports and pushes of a changed set
    push_url: str | None = None  # the scrubbing side's endpoint (POST)
    push_token: str | None = None
    push_format: str = "json"
    api_listen: str | None = None  # "127.0.0.1:8081": the HTTP API (batch POST)
    api_token: str | None = None  # required with api_listen
    ipset_name: str = "divertor_allow"
    nft_table: str = "divertor"
    nft_set: str = "allow"

    def __post_init__(self) -> None:
        lim = self.limits()
        if not 0 <= self.min_prefix_v4 <= 32 or not 0 <= self.min_prefix_v6 <= 128:
            raise ValueError("min_prefix_v4 / min_prefix_v6 out of range")
        for i, entry in enumerate(self.static):
            try:
                addr.parse(entry, lim)
            except ValueError as e:
                raise ValueError(f"static[{i}]: {e}") from None
        if self.push_format not in FORMATS:
            raise ValueError(f"push_format {self.push_format!r}: expected one of {FORMATS}")
        if self.push_url is not None and not self.push_url.startswith(("http://", "https://")):
            raise ValueError(f"push_url {self.push_url!r}: expected http:// or https://")
        if self.api_listen is not None and not self.api_token:
            raise ValueError("api_listen needs api_token")
        if self.checkpoint_every <= 0 or self.export_every < 0 or self.keep_versions < 0:
            raise ValueError("checkpoint_every, export_every and keep_versions must be positive")
        self.names()

    def limits(self) -> addr.Limits:
        return addr.Limits(self.min_prefix_v4, self.min_prefix_v6)

    def names(self) -> Names:
        return Names(ipset=self.ipset_name, nft_table=self.nft_table, nft_set=self.nft_set)

    def static_keys(self) -> list[int]:
        return [addr.parse(e, self.limits()) for e in self.static]

    def resolve(self, base: str) -> None:
        """Make relative paths relative to the configuration file's directory."""

        def rel(p: str | None) -> str | None:
            return p if p is None or os.path.isabs(p) else os.path.join(base, p)

        self.store, self.feed, self.snapshot_dir = (
            rel(self.store),
            rel(self.feed),
            rel(self.snapshot_dir),
        )
        for t in self.exports:
            t.path = rel(t.path) or t.path
