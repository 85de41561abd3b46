#!/usr/bin/env bash
# Boot-time configuration of a Consul server instance (the launch template's user
# data). It reads who this instance is from the instance metadata service (IMDSv2),
# writes the per-server agent settings next to the shared server.hcl, and starts
# Consul. Every replacement server boots exactly like the first ones did.
#
# Environment (defaults are what an instance uses; tests override them):
#   CONSUL_SERVERS   desired number of servers, used as bootstrap_expect (default 3)
#   JOIN_TAG_KEY     EC2 tag key of the servers, for cloud auto-join (default consul-cluster)
#   JOIN_TAG_VALUE   its value (default main)
#   IMDS_ENDPOINT    instance metadata service (default http://169.254.169.254)
#   ROOT             prefix for every path written (default empty: the real root)
#   SKIP_SYSTEMD     1 to write the configuration only
set -euo pipefail

CONSUL_SERVERS="${CONSUL_SERVERS:-3}"
JOIN_TAG_KEY="${JOIN_TAG_KEY:-consul-cluster}"
JOIN_TAG_VALUE="${JOIN_TAG_VALUE:-main}"
IMDS_ENDPOINT="${IMDS_ENDPOINT:-http://169.254.169.254}"
ROOT="${ROOT:-}"
SKIP_SYSTEMD="${SKIP_SYSTEMD:-0}"

die() {
	echo "user-data: $*" >&2
	exit 1
}

case "$CONSUL_SERVERS" in
'' | *[!0-9]*) die "CONSUL_SERVERS must be a number, got '$CONSUL_SERVERS'" ;;
esac

# IMDSv2: a session token first, then every read carries it.
token=$(curl -fsS --max-time 5 -X PUT "$IMDS_ENDPOINT/latest/api/token" \
	-H "X-aws-ec2-metadata-token-ttl-seconds: 300") || die "no IMDSv2 token from $IMDS_ENDPOINT"

metadata() {
	curl -fsS --max-time 5 -H "X-aws-ec2-metadata-token: $token" "$IMDS_ENDPOINT/latest/meta-data/$1" ||
		die "read meta-data/$1"
}

instance_id=$(metadata instance-id)
image_id=$(metadata ami-id)
private_ip=$(metadata local-ipv4)
region=$(metadata placement/region)

for v in instance_id image_id private_ip region; do
	[ -n "${!v}" ] || die "empty $v from the metadata service"
done

mkdir -p "$ROOT/etc/consul.d" "$ROOT/opt/consul/data"
# bootstrap_expect is the same on every server, first or replacement, as HashiCorp
# recommends: a server that finds an existing cluster joins it and never bootstraps.
cat >"$ROOT/etc/consul.d/node.hcl" <<HCL
# Written at boot by user-data.sh from the instance metadata service.
node_name        = "$instance_id"
datacenter       = "$region"
data_dir         = "$ROOT/opt/consul/data"
bind_addr        = "$private_ip"
advertise_addr   = "$private_ip"
client_addr      = "127.0.0.1 $private_ip"
bootstrap_expect = $CONSUL_SERVERS
retry_join       = ["provider=aws region=$region tag_key=$JOIN_TAG_KEY tag_value=$JOIN_TAG_VALUE"]

node_meta {
  image_id    = "$image_id"
  instance_id = "$instance_id"
}
HCL
echo "user-data: configured $instance_id ($image_id) at $private_ip in $region"

if [ "$SKIP_SYSTEMD" != 1 ]; then
	systemctl daemon-reload
	systemctl enable --now consul.service
fi
