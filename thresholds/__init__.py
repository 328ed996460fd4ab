"""The threshold file: the NOC's YAML of protected prefixes, thresholds and diversion settings.

``load``/``loads`` validate a file and return a ``ThresholdSet`` (``thresholds.model``) of
effective, inherited settings; ``ThresholdError`` lists every problem with file, line, column
and key path. ``show`` and ``check`` serve `divertor thresholds show|check`. The format is
described in docs/thresholds.md.
"""

from thresholds.errors import Problem, ThresholdError
from thresholds.loader import load, loads
from thresholds.schema import json_schema
from thresholds.show import NotProtected, check, effective, show

__all__ = [
    "NotProtected",
    "Problem",
    "ThresholdError",
    "check",
    "effective",
    "json_schema",
    "load",
    "loads",
    "show",
]
