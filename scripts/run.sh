#!/usr/bin/env bash
# The main job on its embedded defaults: set-up, then the collector listening for flows on
# UDP 2055 (NetFlow), 4739 (IPFIX) and 6343 (sFlow), IPv4 and IPv6, logging its counters.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/divertor collect "$@"
