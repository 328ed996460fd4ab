"""Settings of the rate history: ``DIR/history.yaml`` (optional; every key has a default).

Loaded by divertor.history_cmd (with file:line errors); the history package only reads them.

Durations are seconds (numbers), as in divertor.yaml. docs/history.md lists every key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CONFIG_FILE = "history.yaml"  # read by divertor.history_cmd.load_config
DAY = 86400.0


@dataclass(frozen=True, slots=True)
class Retention:
    """How long each resolution is kept (data time before the newest minute written)."""

    seconds: float = 6 * 3600.0  # the 1 s table
    minutes: float = 35 * DAY  # the 1 min roll-up

    def __post_init__(self) -> None:
        if not 0 < self.seconds <= self.minutes:
            raise ValueError("need 0 < seconds <= minutes")
        if self.minutes > 400 * DAY:
            raise ValueError("minutes: at most 400 days (the history stays bounded)")


@dataclass(frozen=True, slots=True)
class BaselineConfig:
    """How baselines are learned from the history."""

    days: float = 14.0  # look back this many days before the newest data
    source: str = "minutes"  # "minutes": per-minute peaks of the 1 min roll-up; "seconds": 1 s
    average: int = 5  # source seconds: samples are trailing means of this many bins
    metrics: tuple[str, ...] = ("bps", "pps")
    min_samples: int = 30  # per slot (hour of day), else "not enough history"
    min_days: int = 3  # distinct days with data in a slot, else "not enough history"
    min_coverage: float = 0.5  # share of the slot's expected samples present, else a gap
    weekly_after_days: float = 14.0  # day-of-week slots once the history spans this long
    refresh: float = 3600.0  # recompute when the stored baseline is older than this (data time)
    timezone: str = "UTC"  # hour of day and day of week are of this zone

    def __post_init__(self) -> None:
        if self.source not in ("minutes", "seconds"):
            raise ValueError(f"source {self.source!r}: expected minutes or seconds")
        bad = [m for m in self.metrics if m not in ("bps", "pps", "fps")]
        if bad or not self.metrics:
            raise ValueError(f"metrics {list(self.metrics)}: expected some of bps, pps, fps")
        if self.days <= 0 or self.refresh <= 0 or self.weekly_after_days <= 0:
            raise ValueError("days, refresh and weekly_after_days must be above 0")
        if self.average < 1:
            raise ValueError("average: at least 1 bin")
        if self.min_samples < 1 or self.min_days < 1 or not 0 <= self.min_coverage <= 1:
            raise ValueError("need min_samples >= 1, min_days >= 1, 0 <= min_coverage <= 1")


@dataclass(frozen=True, slots=True)
class HistoryConfig:
    retention: Retention = field(default_factory=Retention)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
