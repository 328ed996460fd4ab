"""Settled RateFrames -> minute blocks of 1 s rates and their 1 min roll-up (sans-I/O).

A minute block holds, for each prefix and channel (class x metric), the minute's bins as
float32, NaN where the history has no data (before the first frame of a session, after its
last one). The rates stage emits no frame for a bin without any traffic, so a missing bin
between two frames of one session is zero traffic, not a gap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from detector.contracts import RateFrame
from thresholds.model import CLASSES, METRICS

#: channel names, in the order of RateFrame.values[prefix, class, metric] flattened
CHANNELS: tuple[str, ...] = tuple(f"{c}.{m}" for c in CLASSES for m in METRICS)
MINUTE = 60

F32 = npt.NDArray[np.float32]


def channel_index(name: str) -> int:
    """``udp.pps`` -> its position in CHANNELS; ValueError naming the known ones."""
    try:
        return CHANNELS.index(name)
    except ValueError:
        raise ValueError(f"unknown channel {name!r} (class.metric, e.g. udp.pps)") from None


@dataclass(frozen=True, slots=True)
class MinuteBlock:
    """One minute of history: values[prefix, channel, bin] (rates per second, float32)."""

    t: int  # minute start, unix seconds (event time)
    prefixes: tuple[str, ...]
    values: F32  # (P, len(CHANNELS), bins per minute), NaN = no data

    @property
    def covered(self) -> int:
        """Bins of the minute with data."""
        return int((~np.isnan(self.values[:, 0, :])).any(axis=0).sum()) if len(self.values) else 0

    def stats(self) -> tuple[F32, F32]:
        """Mean and max of each (prefix, channel) over the covered bins: (P, C) each."""
        if self.covered == 0:
            nan = np.full(self.values.shape[:2], np.nan, dtype=np.float32)
            return nan, nan
        return (
            np.nanmean(self.values, axis=2).astype(np.float32),
            np.nanmax(self.values, axis=2).astype(np.float32),
        )


def bins_per_minute(bin_seconds: float) -> int:
    n = MINUTE / bin_seconds
    if bin_seconds <= 0 or abs(n - round(n)) > 1e-9:
        raise ValueError(f"bin {bin_seconds:g}s: the history needs a bin that divides a minute")
    return round(n)


class MinuteAccumulator:
    """Collects settled RateFrames (in time order) into MinuteBlocks.

    ``add`` returns the minutes that a frame of a later minute completed; ``flush`` the
    open one (end of a replay or shutdown: its bins after the last frame stay NaN).
    """

    def __init__(self, bin_seconds: float = 1.0) -> None:
        self.bin_seconds = bin_seconds
        self.bins = bins_per_minute(bin_seconds)
        self.minute: int | None = None
        self.prefixes: tuple[str, ...] = ()
        self.values: F32 = np.zeros((0, len(CHANNELS), self.bins), dtype=np.float32)
        self.last_bin = -1  # last bin index within the open minute that has a frame

    def _open(self, minute: int, prefixes: tuple[str, ...], first: int, gone_on: bool) -> None:
        """Open a minute whose first frame is bin ``first``; bins before it are zero
        traffic when the session ``gone_on`` through them, else no data."""
        self.minute, self.prefixes = minute, prefixes
        self.values = np.full((len(prefixes), len(CHANNELS), self.bins), np.nan, np.float32)
        if gone_on:
            self.values[:, :, :first] = 0.0
        self.last_bin = first - 1

    def _close(self, through_end: bool) -> MinuteBlock:
        assert self.minute is not None
        if through_end:
            self.values[:, :, self.last_bin + 1 :] = 0.0
        block = MinuteBlock(self.minute, self.prefixes, self.values)
        self.minute = None
        return block

    def add(self, frames: list[RateFrame]) -> list[MinuteBlock]:
        out: list[MinuteBlock] = []
        for f in frames:
            if not math.isclose(f.seconds, self.bin_seconds):
                raise ValueError(f"frame of {f.seconds:g}s, history bins are {self.bin_seconds:g}s")
            k = math.floor(f.start / self.bin_seconds + 1e-9)
            minute, b = divmod(k, self.bins)
            minute_t = int(minute * MINUTE)
            if self.minute is not None and (minute_t != self.minute or f.prefixes != self.prefixes):
                same_session = f.prefixes == self.prefixes and minute_t > self.minute
                out.append(self._close(through_end=same_session))
                self._open(minute_t, f.prefixes, b, same_session)
            elif self.minute is None:
                self._open(minute_t, f.prefixes, b, False)
            if b > self.last_bin + 1:
                self.values[:, :, self.last_bin + 1 : b] = 0.0
            self.values[:, :, b] = f.values.reshape(len(f.prefixes), -1)
            self.last_bin = max(self.last_bin, b)
        return out

    def flush(self) -> list[MinuteBlock]:
        return [self._close(through_end=False)] if self.minute is not None else []


def trailing(values: F32, a: int) -> F32:
    """Trailing mean of ``a`` bins along axis 0 (rows before the first count as 0; NaN
    stays NaN), as the detector averages its bins."""
    out = values.copy()
    for k in range(1, a):
        out[k:] += values[:-k]
    out /= np.float32(a)
    return out
