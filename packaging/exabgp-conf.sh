#!/bin/sh
# ExaBGP's configuration for divertor-exabgp.service: `divertor bgp config` (neighbors from
# bgp.local_as, router_id, peers of divertor.yaml) with Divertor's bridge, run from the venv,
# as ExaBGP's API process (the generated STATE_DIR/bridge.sh exists only when `divertor run`
# starts ExaBGP itself).
#   exabgp-conf.sh [CONFIG [OUTPUT]]    (default /etc/divertor/divertor.yaml, stdout)
# DIVERTOR_HOME (default /opt/divertor) is where Divertor and its .venv are installed.
set -eu
config=${1:-/etc/divertor/divertor.yaml}
out=${2:-}
home=${DIVERTOR_HOME:-/opt/divertor}
case "$config$home" in
  *[!A-Za-z0-9._/-]*) echo "exabgp-conf: paths may hold only A-Z a-z 0-9 . _ / -" >&2; exit 2 ;;
esac
text=$("$home/.venv/bin/divertor" bgp config --config "$config")
text=$(printf '%s\n' "$text" |
  sed "s|^\([[:space:]]*run \).*;\$|\1$home/.venv/bin/python -m bgp.bridge --config $config;|")
case "$text" in
  *"bgp.bridge --config $config;"*) ;;
  *) echo "exabgp-conf: no process 'run' line in the output of divertor bgp config" >&2; exit 1 ;;
esac
if [ -z "$out" ]; then
  printf '%s\n' "$text"
else
  printf '%s\n' "$text" > "$out.tmp"
  mv "$out.tmp" "$out"
fi
