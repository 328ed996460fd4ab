"""Where the shared assets (../shared: captures, scenarios, BGP lab) are."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("DIVERTOR_SHARED", str(ROOT.parent / "shared")))
FLOWS = SHARED / "testdata" / "flows"
CAPTURES = FLOWS / "captures"
SCENARIOS = SHARED / "testdata" / "scenarios"
