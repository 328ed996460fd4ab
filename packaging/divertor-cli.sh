#!/bin/sh
# /usr/local/bin/divertor, installed by packaging/install.sh: the Divertor CLI with this
# installation's paths, run as the user divertor when called by root, so that the SQLite
# stores of /var/lib/divertor (and their -wal / -shm files) stay the daemon's.
# `--who` of divert/withdraw defaults to $SUDO_USER, else the calling user.
export DIVERTOR_CONFIG="${DIVERTOR_CONFIG:-/etc/divertor/divertor.yaml}"
export DIVERTOR_STORE="${DIVERTOR_STORE:-/var/lib/divertor/timeline.sqlite}"
bin=/opt/divertor/.venv/bin/divertor
if [ "$(id -u)" -eq 0 ] && id divertor >/dev/null 2>&1; then
  SUDO_USER="${SUDO_USER:-$(id -un)}"
  export SUDO_USER
  exec runuser -u divertor -- "$bin" "$@"
fi
exec "$bin" "$@"
