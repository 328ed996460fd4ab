"""CI runs with DIVERTOR_REQUIRE_SHARED=1: a missing ../shared fails the run instead of
silently skipping the tests that read real captures."""

from __future__ import annotations

import os

import pytest

from tests.shared import SHARED


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.environ.get("DIVERTOR_REQUIRE_SHARED") == "1" and not SHARED.is_dir():
        raise pytest.UsageError(f"shared assets not found at {SHARED} (set DIVERTOR_SHARED)")
