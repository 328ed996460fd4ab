#!/usr/bin/env bash
# The main job on the example configuration: set-up, then `divertor run` (flows on UDP 2055,
# 4739 and 6343, IPv4 and IPv6 -> rates -> incidents -> BGP; timeline in var/; API on
# http://127.0.0.1:9180). When the BGP lab of ../shared/labs/bgp can run here (BIRD 2; it is
# installed if missing and we are root), a local BIRD is started and Divertor's ExaBGP peers
# with it (mode automatic): send a scenario with
#   .venv/bin/divertor send ../shared/testdata/scenarios/udp-flood/flows.pcap --to 127.0.0.1:2055 --from 270
# and watch the route appear at BIRD (`../shared/labs/bgp/bgp-lab routes var/lab`) and go.
# Otherwise (or with DIVERTOR_NO_LAB=1) BGP is dry-run. Other arguments go to `divertor run`;
# `--config FILE` runs your own configuration instead.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
bash scripts/setup.sh
mkdir -p var
for arg in "$@"; do
  if [ "$arg" = "--config" ]; then exec .venv/bin/divertor run "$@"; fi
done
LAB=${BGP_LAB:-$ROOT/../shared/labs/bgp/bgp-lab}
CONFIG=$ROOT/examples/run/divertor.yaml
cleanup() { :; }
if [ -z "${DIVERTOR_NO_LAB:-}" ] && [ -x "$LAB" ] \
    && BGP_LAB_PYTHON=$ROOT/.venv/bin/python "$LAB" install >var/lab-install.log 2>&1; then
  "$LAB" down var/lab >/dev/null 2>&1 || true
  BGP_LAB_PYTHON=$ROOT/.venv/bin/python "$LAB" up var/lab >var/lab-up.log 2>&1
  # keep the lab's BIRD; its own ExaBGP goes: Divertor runs (and keeps) its own
  kill "$(cat var/lab/exabgp.pid)" 2>/dev/null || true
  PORT=$(sed -n 's/^LAB_PORT=//p' var/lab/lab.env)
  sed -e "s|^thresholds: .*|thresholds: $ROOT/examples/scenarios/voip-site.thresholds.yaml|" \
      -e "s|\.\./\.\./var/|$ROOT/var/|" -e "s|  mode: dry-run|  mode: automatic|" \
      "$CONFIG" > var/divertor.yaml
  sed -i "/^  mode: automatic/a\\  local_as: 65001\n  router_id: 127.0.0.1\n  peers:\n    - {address: 127.0.0.2, peer_as: 65000, port: $PORT, description: bgp lab BIRD}" var/divertor.yaml
  CONFIG=$ROOT/var/divertor.yaml
  echo "run: BGP lab up (BIRD on 127.0.0.2:$PORT); routes: $LAB routes var/lab" >&2
  cleanup() {
    .venv/bin/divertor bgp stop --config "$CONFIG" >/dev/null 2>&1 || true
    "$LAB" down var/lab >/dev/null 2>&1 || true
  }
else
  echo "run: no BGP lab here: BGP in dry-run (diversions are planned and recorded only)" >&2
fi
trap cleanup EXIT
.venv/bin/divertor run --config "$CONFIG" "$@"
