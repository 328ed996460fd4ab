#!/usr/bin/env bash
# Installs Divertor on a Debian 12 VM (as root). Idempotent: run it again to upgrade.
#
#   bash packaging/install.sh [--start] [--plugin-exabgp] [--no-user] [--no-venv] [--source DIR]
#
#   /opt/divertor            a copy of the source tree (DIR, default: this checkout) and its
#                            .venv (made by scripts/setup.sh: needs python3 and the network)
#   /etc/divertor            divertor.yaml, thresholds.yaml, api.token: written only if absent
#   /var/lib/divertor        state (timeline.sqlite, bgp/), owned by the user divertor
#   /etc/systemd/system      divertor.service, divertor-exabgp.service
#   /etc/sysusers.d, /etc/tmpfiles.d   divertor.conf; /etc/sysctl.d/90-divertor.conf
#   /usr/local/bin/divertor  the CLI (runs as the user divertor when called by root)
#
# Nothing is started unless --start is given (then: enable --now divertor, and
# divertor-exabgp with --plugin-exabgp). DESTDIR=/some/root installs every file under that
# prefix and runs no systemctl (for packaging and tests); --no-user skips useradd and the
# chown to divertor, --no-venv skips the virtualenv. See docs/deployment.md.
set -euo pipefail

DESTDIR=${DESTDIR:-}
HOME_DIR=/opt/divertor
START=0 MAKE_USER=1 MAKE_VENV=1 PLUGIN=0
SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

die() { echo "install.sh: $*" >&2; exit 2; }
say() { echo "install.sh: $*"; }

while [ $# -gt 0 ]; do
  case "$1" in
    --start) START=1 ;;
    --plugin-exabgp) PLUGIN=1 ;;
    --no-user) MAKE_USER=0 ;;
    --no-venv) MAKE_VENV=0 ;;
    --source) [ $# -ge 2 ] || die "--source needs a directory"; SRC=$(cd "$2" && pwd); shift ;;
    -h|--help) sed -n '2,/^set /{/^#/p}' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die "unknown option $1 (try --help)" ;;
  esac
  shift
done

[ -f "$SRC/pyproject.toml" ] && [ -d "$SRC/divertor" ] || die "$SRC is not a Divertor source tree"
if [ -z "$DESTDIR" ] && [ "$(id -u)" -ne 0 ]; then die "run as root (or set DESTDIR)"; fi
if [ -n "$DESTDIR" ] && [ "$START" -eq 1 ]; then die "--start makes no sense with DESTDIR"; fi
DESTDIR=${DESTDIR%/}
DEST=$DESTDIR$HOME_DIR
OWNER=""  # user:group for the state directory and config files, once the user exists

# ---------------------------------------------------------------- the user
if [ "$MAKE_USER" -eq 1 ]; then
  if ! getent passwd divertor >/dev/null; then
    useradd --system --user-group --home-dir /var/lib/divertor --no-create-home \
      --shell /usr/sbin/nologin --comment "Divertor DDoS detection" divertor
    say "created the system user divertor"
  fi
  OWNER=divertor
fi

# ---------------------------------------------------------------- the source tree
# Copied into a fresh directory, then swapped in, so that files removed upstream go too;
# an existing .venv moves over (its paths stay /opt/divertor/.venv).
if [ "$(realpath "$SRC")" != "$(realpath -m "$DEST")" ]; then
  mkdir -p "$(dirname "$DEST")"
  rm -rf "$DEST.new" "$DEST.old"
  mkdir "$DEST.new"
  tar -C "$SRC" --exclude=./.venv --exclude=./.git --exclude='__pycache__' \
    --exclude=./.mypy_cache --exclude=./.pytest_cache --exclude=./.ruff_cache \
    --exclude=./.hypothesis --exclude='*.egg-info' -cf - . | tar -C "$DEST.new" -xf -
  if [ -d "$DEST/.venv" ]; then mv "$DEST/.venv" "$DEST.new/.venv"; fi
  if [ -d "$DEST" ]; then mv "$DEST" "$DEST.old"; fi
  mv "$DEST.new" "$DEST"
  rm -rf "$DEST.old"
  chmod -R u=rwX,go=rX "$DEST"
  say "copied $SRC to $DEST"
fi
if [ "$MAKE_VENV" -eq 1 ]; then
  bash "$DEST/scripts/setup.sh"
  say "virtualenv ready: $DEST/.venv/bin/divertor"
fi

# ---------------------------------------------------------------- configuration and state
install -d -m 0755 "$DESTDIR/etc/divertor"
config_file() {  # config_file SOURCE NAME: install /etc/divertor/NAME if absent
  local target="$DESTDIR/etc/divertor/$2"
  if [ -e "$target" ]; then
    say "kept $target"
    return
  fi
  install -m 0640 "$1" "$target"
  if [ -n "$OWNER" ]; then chgrp "$OWNER" "$target"; fi
  say "installed $target"
}
config_file "$SRC/packaging/divertor.yaml" divertor.yaml
config_file "$SRC/examples/scenarios/voip-site.thresholds.yaml" thresholds.yaml
if [ ! -e "$DESTDIR/etc/divertor/api.token" ]; then
  token=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
  (umask 0137 && printf '%s\n' "$token" > "$DESTDIR/etc/divertor/api.token")
  if [ -n "$OWNER" ]; then chgrp "$OWNER" "$DESTDIR/etc/divertor/api.token"; fi
  say "wrote a new API token to $DESTDIR/etc/divertor/api.token"
fi
install -d -m 0750 "$DESTDIR/var/lib/divertor" "$DESTDIR/var/lib/divertor/bgp"
if [ -n "$OWNER" ]; then
  chown "$OWNER:$OWNER" "$DESTDIR/var/lib/divertor" "$DESTDIR/var/lib/divertor/bgp"
fi

# ---------------------------------------------------------------- systemd files
install -D -m 0644 "$SRC/packaging/systemd/divertor.service" \
  "$DESTDIR/etc/systemd/system/divertor.service"
install -D -m 0644 "$SRC/packaging/systemd/divertor-exabgp.service" \
  "$DESTDIR/etc/systemd/system/divertor-exabgp.service"
install -D -m 0644 "$SRC/packaging/sysusers.d/divertor.conf" "$DESTDIR/etc/sysusers.d/divertor.conf"
install -D -m 0644 "$SRC/packaging/tmpfiles.d/divertor.conf" "$DESTDIR/etc/tmpfiles.d/divertor.conf"
dropin="$DESTDIR/etc/systemd/system/divertor.service.d/plugin-exabgp.conf"
if [ "$PLUGIN" -eq 1 ]; then
  install -D -m 0644 "$SRC/packaging/systemd/divertor.service.d/plugin-exabgp.conf" "$dropin"
  say "ExaBGP runs in its own unit (divertor-exabgp.service)"
elif [ -e "$dropin" ]; then
  rm -f "$dropin"
  say "removed $dropin: divertor run starts ExaBGP itself"
fi
say "installed the units in $DESTDIR/etc/systemd/system"
install -D -m 0644 "$SRC/packaging/sysctl.d/90-divertor.conf" \
  "$DESTDIR/etc/sysctl.d/90-divertor.conf"
install -D -m 0755 "$SRC/packaging/divertor-cli.sh" "$DESTDIR/usr/local/bin/divertor"
say "installed $DESTDIR/usr/local/bin/divertor (the CLI, as the user divertor)"

if [ -z "$DESTDIR" ] && [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  say "systemctl daemon-reload done"
  if [ "$START" -eq 1 ]; then
    sysctl -q -p /etc/sysctl.d/90-divertor.conf || say "could not apply 90-divertor.conf"
    if [ "$PLUGIN" -eq 1 ]; then systemctl enable --now divertor-exabgp.service; fi
    systemctl enable --now divertor.service
    say "started: systemctl status divertor; divertor status"
  fi
elif [ "$START" -eq 1 ]; then
  die "systemd is not running here: cannot --start"
fi
if [ "$START" -eq 0 ]; then
  say "nothing started. Next: edit /etc/divertor/divertor.yaml and thresholds.yaml, then"
  say "  systemctl enable --now divertor    (docs/deployment.md)"
fi
