#!/usr/bin/env bash
# Creates .venv with Divertor and its development tools. Idempotent; Debian 12 or later.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  if ! python3 -m venv .venv 2>/dev/null; then
    rm -rf .venv
    echo "setup: python3 -m venv failed; installing python3-venv (needs root)" >&2
    if [ "$(id -u)" -eq 0 ]; then apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
    else sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv >/dev/null; fi
    python3 -m venv .venv
  fi
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
