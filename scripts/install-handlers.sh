#!/usr/bin/env bash
# Installs the consul-rehydrate handlers into the image (run by Packer, as root, after
# install-consul.sh). The agent runs spinup and spindown from the paths
# consul.d/watches.hcl names; consul.service's stop runs `rehydrate leave`; the
# termination gate `lifecycle` runs as rehydrate-lifecycle.service, installed and
# enabled here (not started: the build instance has no cluster; it starts with Consul
# on the servers launched from the image).
#
# Environment:
#   SRC          where Packer uploaded bin/ and scripts/ (default /tmp)
#   ROOT         prefix for every path written (default empty: the real root)
#   SKIP_SYSTEM  1: no ownership (tests, which install into ROOT). The unit is
#                enabled all the same: `systemctl --root` only makes its links.
set -euo pipefail

SRC="${SRC:-/tmp}"
ROOT="${ROOT:-}"
SKIP_SYSTEM="${SKIP_SYSTEM:-0}"

die() {
	echo "install-handlers: $*" >&2
	exit 1
}

bins=(spinup spindown rehydrate lifecycle)
for h in "${bins[@]}"; do
	[ -x "$SRC/bin/$h" ] || die "$SRC/bin/$h missing: run 'make build' before 'packer build'"
done
unit="$SRC/scripts/rehydrate-lifecycle.service"
[ -s "$unit" ] || die "$unit missing"

own_consul=()
systemctl_root=()
if [ "$SKIP_SYSTEM" != 1 ]; then
	own_consul=(-o consul -g consul)
fi
if [ -n "$ROOT" ]; then
	systemctl_root=(--root="$ROOT")
fi

install -d -m 0755 "$ROOT/opt/consul-rehydrate/bin" "$ROOT/etc/systemd/system"
install -m 0755 "${bins[@]/#/$SRC/bin/}" "$ROOT/opt/consul-rehydrate/bin/"
# The handlers' configuration and ACL token are written at deploy time (user data or
# configuration management), never baked into the image.
install -d "${own_consul[@]}" -m 0750 "$ROOT/etc/consul-rehydrate"
install -m 0644 "$unit" "$ROOT/etc/systemd/system/rehydrate-lifecycle.service"
# WantedBy=consul.service: a link in consul.service.wants/, so the gate starts with
# Consul. Enabling only writes that link; nothing starts now.
systemctl "${systemctl_root[@]}" enable rehydrate-lifecycle.service
