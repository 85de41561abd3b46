#!/usr/bin/env bash
# Installs the consul-rehydrate handlers into the image (run by Packer after
# install-consul.sh). The agent runs them from the paths consul.d/watches.hcl names.
#
# Environment:
#   SRC  where Packer uploaded bin/ (default /tmp)
set -euo pipefail

SRC="${SRC:-/tmp}"
for h in spinup spindown rehydrate; do
	[ -x "$SRC/bin/$h" ] || {
		echo "install-handlers: $SRC/bin/$h missing: run 'make build' before 'packer build'" >&2
		exit 1
	}
done
sudo install -d -m 0755 /opt/consul-rehydrate/bin
sudo install -m 0755 "$SRC/bin/spinup" "$SRC/bin/spindown" "$SRC/bin/rehydrate" /opt/consul-rehydrate/bin/
# The handlers' configuration and ACL token are written at deploy time (user data or
# configuration management), never baked into the image.
sudo install -d -o consul -g consul -m 0750 /etc/consul-rehydrate
