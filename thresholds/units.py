"""Numbers with units as the NOC writes them: rates (400k, 10G, 60kpps), durations (10s, 5m,
1h30m), shares (80%, 0.8). Parsers raise ``UnitError`` with a message for a human."""

from __future__ import annotations

import math
import re

RATE_SCALE: dict[str, float] = {
    "": 1.0,
    "k": 1e3,
    "K": 1e3,
    "M": 1e6,
    "G": 1e9,
    "g": 1e9,
    "T": 1e12,
    "t": 1e12,
}
RATE_UNITS: tuple[str, ...] = ("bps", "pps", "fps")
RATE_UNIT_WORD = {"bps": "a bit rate", "pps": "a packet rate", "fps": "a flow rate"}
DURATION_SCALE: dict[str, float] = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

#: "off" cancels an inherited threshold
OFF = "off"

_NUMBER = r"[0-9][0-9_]*(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?"
_RATE_RE = re.compile(rf"^(?P<sign>[-+]?)(?P<num>{_NUMBER})(?P<suffix>[A-Za-z/]*)$")
_DURATION_PART_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)([A-Za-z]+)")
_PLAIN_RE = re.compile(rf"^[-+]?{_NUMBER}$")


class UnitError(ValueError):
    """A value that cannot be read; the message says what was expected."""


def _number(text: str) -> float | None:
    """A plain number (no unit), or None if ``text`` is not one."""
    if not _PLAIN_RE.match(text):
        return None
    value = float(text.replace("_", ""))
    return value if math.isfinite(value) else None


def _spaced_hint(text: str) -> str:
    return f" (no spaces: {''.join(text.split())})" if " " in text.strip() else ""


def parse_rate(text: str, metric: str) -> float | None:
    """A threshold of ``metric`` (bps, pps or fps); None for "off"."""
    text = text.strip()
    if text.lower() == OFF:
        return None
    m = _RATE_RE.match(text)
    if m is None:
        raise UnitError(f"expected a rate like 400k or 10G, got '{text}'{_spaced_hint(text)}")
    suffix = m["suffix"]
    unit = suffix[-3:] if suffix[-3:] in RATE_UNITS else ""
    prefix = suffix[: len(suffix) - len(unit)]
    if prefix == "m":
        raise UnitError(f"'m' in '{text}' is ambiguous: write M for million ({m['num']}M{unit})")
    if prefix not in RATE_SCALE:
        raise UnitError(
            f"unknown unit '{suffix}' in '{text}'; rates take k, M, G or T (decimal), "
            f"optionally followed by {metric}"
        )
    if unit and unit != metric:
        raise UnitError(
            f"'{text}' is {RATE_UNIT_WORD[unit]}, but {metric} takes {RATE_UNIT_WORD[metric]} "
            f"(like {m['num']}{prefix}{metric})"
        )
    value = float(m["num"].replace("_", "")) * RATE_SCALE[prefix]
    if m["sign"] == "-":
        value = -value
    if not math.isfinite(value):
        raise UnitError(f"expected a rate like 400k or 10G, got '{text}'")
    if value <= 0:
        raise UnitError(f"a threshold must be above 0, got '{text}'; write off for no threshold")
    return value


def parse_duration(text: str) -> float:
    """Seconds from "10s", "5m", "1h30m", "1d" or a plain number of seconds (not negative)."""
    text = text.strip()
    plain = _number(text)
    if plain is not None:
        if plain < 0:
            raise UnitError(f"a duration must not be negative, got '{text}'")
        return plain
    negative = text.startswith("-")
    body = text[1:] if negative else text
    parts = _DURATION_PART_RE.findall(body)
    if not parts or "".join(n + u for n, u in parts) != body:
        raise UnitError(
            f"expected a duration like 10s, 5m, 1h or 1d, got '{text}'{_spaced_hint(text)}"
        )
    total = 0.0
    for number, unit in parts:
        if unit not in DURATION_SCALE:
            raise UnitError(f"unknown unit '{unit}' in '{text}'; durations take s, m, h or d")
        total += float(number) * DURATION_SCALE[unit]
    if negative:
        raise UnitError(f"a duration must not be negative, got '{text}'")
    return total


def parse_ratio(text: str) -> float:
    """A share from "80%" or "0.8"; a bare number above 1 is refused (did they mean %?)."""
    text = text.strip()
    if text.endswith("%"):
        value = _number(text[:-1].strip())
        if value is None:
            raise UnitError(f"expected a share like 80% or 0.8, got '{text}'")
        return value / 100.0
    value = _number(text)
    if value is None:
        raise UnitError(f"expected a share like 80% or 0.8, got '{text}'")
    if value > 1:
        raise UnitError(f"expected a share like 80% or 0.8, got '{text}' (write {text}%)")
    return value


def parse_number(text: str, what: str = "a number like 2 or 1.5") -> float:
    value = _number(text.strip())
    if value is None:
        raise UnitError(f"expected {what}, got '{text}'")
    return value


def parse_int(text: str, what: str = "a whole number") -> int:
    text = text.strip()
    if not re.fullmatch(r"[-+]?[0-9][0-9_]*", text):
        raise UnitError(f"expected {what}, got '{text}'")
    return int(text.replace("_", ""))


def _g(value: float) -> str:
    """Shortest exact-looking decimal: 10.0 -> "10", 2.5 -> "2.5"."""
    text = f"{value:.6g}"
    if "e" in text or not math.isclose(float(text), value, rel_tol=1e-12, abs_tol=0.0):
        text = repr(value)
    return text[:-2] if text.endswith(".0") else text


def format_rate(value: float | None) -> str:
    if value is None:
        return OFF
    for suffix in ("T", "G", "M", "k"):
        scale = RATE_SCALE[suffix]
        if value >= scale:
            scaled = f"{value / scale:.12g}"
            if "e" not in scaled and math.isclose(float(scaled) * scale, value, rel_tol=1e-12):
                return scaled + suffix
    return _g(value)


def format_duration(seconds: float) -> str:
    if seconds <= 0:
        return "0s"
    if seconds != int(seconds):
        return _g(seconds) + "s"
    rest = int(seconds)
    out = []
    for unit in ("d", "h", "m", "s"):
        scale = int(DURATION_SCALE[unit])
        if rest >= scale:
            out.append(f"{rest // scale}{unit}")
            rest %= scale
    return "".join(out)


def format_ratio(value: float) -> str:
    return _g(round(value * 100.0, 9)) + "%"
