#!/usr/bin/env bash
# The test command of the README: set-up, then lint, types and tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check collector detector bgp thresholds divertor allowlist history tests bench
.venv/bin/ruff format --check collector detector bgp thresholds divertor allowlist history tests bench
.venv/bin/mypy
.venv/bin/pytest "$@"
