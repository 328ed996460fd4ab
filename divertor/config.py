"""`divertor.yaml`: the engine's one typed configuration schema, with its defaults.

Every key is documented in docs/configuration.md. Unknown keys are refused with file:line.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field

from collector.decoder import DecoderConfig
from divertor import typedyaml


@dataclass(slots=True)
class CollectorConfig:
    listen: list[str] = field(
        default_factory=lambda: [
            f"{h}:{p}" for p in (2055, 4739, 6343) for h in ("0.0.0.0", "[::]")
        ]
    )
    rcvbuf: int = 32 << 20
    state_file: str | None = None
    default_sampling_rate: int = 1
    sampling_overrides: dict[str, int] = field(default_factory=dict)  # exporter -> 1:N
    max_exporters: int = 4096
    max_templates_per_exporter: int = 1024
    max_pending_sets: int = 8192
    pending_max_age: float = 120.0

    def __post_init__(self) -> None:
        if self.default_sampling_rate < 1:
            raise ValueError("default_sampling_rate must be >= 1")
        for exporter, rate in self.sampling_overrides.items():
            ipaddress.ip_address(exporter)
            if rate < 1:
                raise ValueError(f"sampling_overrides.{exporter}: rate must be >= 1")

    def decoder(self) -> DecoderConfig:
        return DecoderConfig(
            default_sampling_rate=self.default_sampling_rate,
            sampling_overrides=dict(self.sampling_overrides),
            max_exporters=self.max_exporters,
            max_templates_per_exporter=self.max_templates_per_exporter,
            max_pending_sets=self.max_pending_sets,
            pending_max_age=self.pending_max_age,
        )


@dataclass(slots=True)
class DetectorConfig:
    window: float = 96.0  # seconds of bins kept open for late records
    horizon: float = 64.0  # over runs are looked for this far back (>= max export delay)
    under_window: float = 45.0  # "under" = no bin above the clear level this far back

    def __post_init__(self) -> None:
        if not 0 < self.under_window <= self.horizon < self.window:
            raise ValueError("need 0 < under_window <= horizon < window")


@dataclass(slots=True)
class BgpConfig:
    mode: str = "dry-run"  # dry-run | manual-approval | automatic
    max_prefix_length_v4: int = 24
    max_prefix_length_v6: int = 48
    max_diversions: int = 32
    max_changes_per_hour: int = 120

    def __post_init__(self) -> None:
        if self.mode not in ("dry-run", "manual-approval", "automatic"):
            raise ValueError(f"mode {self.mode!r}: expected dry-run, manual-approval or automatic")
        if not 8 <= self.max_prefix_length_v4 <= 32 or not 16 <= self.max_prefix_length_v6 <= 128:
            raise ValueError("max_prefix_length out of range")


@dataclass(slots=True)
class CleanReturn:
    """Flows of clean traffic coming back from the scrubbing center (GRE, VLAN)."""

    exporter: str
    interface: int

    def __post_init__(self) -> None:
        ipaddress.ip_address(self.exporter)


@dataclass(slots=True)
class Config:
    thresholds: str  # path of the thresholds file, relative to this file
    collector: CollectorConfig = field(default_factory=CollectorConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    bgp: BgpConfig = field(default_factory=BgpConfig)
    clean_return: list[CleanReturn] = field(default_factory=list)
    source: str = field(default="", init=False)


def load(path: str) -> Config:
    with open(path) as fh:
        cfg = typedyaml.load(Config, fh.read(), path)
    cfg.source = path
    if not os.path.isabs(cfg.thresholds):
        cfg.thresholds = os.path.join(os.path.dirname(os.path.abspath(path)), cfg.thresholds)
    return cfg
