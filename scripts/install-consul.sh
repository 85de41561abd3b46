#!/usr/bin/env bash
# Installs Consul and its server configuration into the image (run by Packer).
# Consul itself comes from HashiCorp's release archive, checked against its SHA256SUMS.
#
# Environment:
#   CONSUL_VERSION  e.g. 1.22.3 (required)
#   SRC             where Packer uploaded consul.d/ and scripts/ (default /tmp)
set -euo pipefail

: "${CONSUL_VERSION:?set CONSUL_VERSION, e.g. 1.22.3}"
SRC="${SRC:-/tmp}"
arch=amd64
base="https://releases.hashicorp.com/consul/${CONSUL_VERSION}"
zip="consul_${CONSUL_VERSION}_linux_${arch}.zip"

export DEBIAN_FRONTEND=noninteractive
sudo apt-get update -qq
sudo apt-get install -y -qq curl unzip ca-certificates

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
curl -fsSL -o "$work/$zip" "$base/$zip"
curl -fsSL -o "$work/SHA256SUMS" "$base/consul_${CONSUL_VERSION}_SHA256SUMS"
(cd "$work" && grep " $zip\$" SHA256SUMS | sha256sum -c -)
unzip -q "$work/$zip" -d "$work"
sudo install -m 0755 "$work/consul" /usr/local/bin/consul

sudo useradd --system --home /etc/consul.d --shell /bin/false consul 2>/dev/null || true
sudo install -d -o consul -g consul -m 0750 /etc/consul.d /opt/consul /opt/consul/data
sudo install -o consul -g consul -m 0640 "$SRC/consul.d/server.hcl" "$SRC/consul.d/watches.hcl" "$SRC/consul.d/acl.hcl" /etc/consul.d/
sudo install -m 0644 "$SRC/scripts/consul.service" /etc/systemd/system/consul.service
sudo install -m 0755 "$SRC/scripts/user-data.sh" /usr/local/sbin/consul-user-data
/usr/local/bin/consul version
