#!/usr/bin/env bash
# Boot-time configuration of a Consul server instance (the launch template's user
# data). It reads who this instance is from the instance metadata service (IMDSv2),
# fetches the cluster's secrets (gossip key, TLS certificate and key, ACL tokens)
# from the secret store with the instance role, writes the per-server agent settings
# next to the shared server.hcl, and starts Consul. Every replacement server boots
# exactly like the first ones did. The image itself holds no key, certificate or
# token: whoever can read an AMI cannot join or read the cluster.
#
# It refuses to configure anything (and so Consul does not start) when a secret is
# missing or wrong: no gossip key, a certificate not signed by the CA, not valid for
# server.<datacenter>.consul, not matching its key, expired, or a token that is not
# a UUID. Nothing is written before every check has passed.
#
# Environment (defaults are what an instance uses; tests override them):
#   CONSUL_SERVERS   desired number of servers, used as bootstrap_expect (default 3)
#   JOIN_TAG_KEY     EC2 tag key of the servers, for cloud auto-join (default consul-cluster)
#   JOIN_TAG_VALUE   its value (default main)
#   SSM_PREFIX       SSM Parameter Store path of the secrets (default
#                    /consul-rehydrate/$JOIN_TAG_VALUE): SecureString parameters
#                    $SSM_PREFIX/gossip-key, ca.pem, server.pem, server-key.pem,
#                    agent-token and handler-token (see "Secrets" below)
#   SSM_ENDPOINT     SSM endpoint URL (default: the region's)
#   SECRETS_DIR      read the secrets from files of those names in this directory
#                    instead of SSM (tests, or secrets delivered another way)
#   IMDS_ENDPOINT    instance metadata service (default http://169.254.169.254)
#   ROOT             prefix for every path written (default empty: the real root)
#   CONSUL_OWNER     owner:group of the secret files (default root:consul)
#   HANDLER_OWNER    owner:group of the handlers' token file (default consul:consul)
#   SKIP_SYSTEMD     1 to write the configuration only
#
# Secrets:
#   gossip-key      `consul keygen`: the serf gossip encryption key
#   ca.pem          the CA certificate (`consul tls ca create`); its key stays offline
#   server.pem      a server certificate from that CA for server.<region>.consul and
#   server-key.pem  127.0.0.1 (`consul tls cert create -server -dc <region>`), shared
#                   by the servers of the cluster: they are interchangeable
#   agent-token     the agent's ACL token (acl.tokens.agent): node:write on its node,
#                   service:read; with default deny a server without it cannot
#                   update its own catalog entry. It also registers the services of
#                   the agent's own files (acl.tokens.config_file_service_registration):
#                   give it a service identity for consul-rehydrate, whose check
#                   (consul.d/check-roll.hcl, `rehydrate check`) is the roll's alarm
#   handler-token   the handlers' ACL token, one for every server of the cluster
#                   (policy consul.d/acl/rehydrate-handlers-shared.hcl), written to
#                   /etc/consul-rehydrate/consul.token; consul.service points
#                   CONSUL_HTTP_TOKEN_FILE at it, so the agent's token-less watches
#                   read with it too
set -euo pipefail

CONSUL_SERVERS="${CONSUL_SERVERS:-3}"
JOIN_TAG_KEY="${JOIN_TAG_KEY:-consul-cluster}"
JOIN_TAG_VALUE="${JOIN_TAG_VALUE:-main}"
SSM_PREFIX="${SSM_PREFIX:-/consul-rehydrate/$JOIN_TAG_VALUE}"
SSM_ENDPOINT="${SSM_ENDPOINT:-}"
SECRETS_DIR="${SECRETS_DIR:-}"
IMDS_ENDPOINT="${IMDS_ENDPOINT:-http://169.254.169.254}"
ROOT="${ROOT:-}"
CONSUL_OWNER="${CONSUL_OWNER:-root:consul}"
HANDLER_OWNER="${HANDLER_OWNER:-consul:consul}"
SKIP_SYSTEMD="${SKIP_SYSTEMD:-0}"

die() {
	echo "user-data: $*" >&2
	exit 1
}

case "$CONSUL_SERVERS" in
'' | *[!0-9]*) die "CONSUL_SERVERS must be a number, got '$CONSUL_SERVERS'" ;;
esac
# ROOT and the tag end up inside quoted HCL strings.
case "$ROOT$JOIN_TAG_KEY$JOIN_TAG_VALUE" in
*'"'* | *\\* | *'$'* | *[[:cntrl:]]*) die "ROOT, JOIN_TAG_KEY and JOIN_TAG_VALUE may not contain quotes, backslashes, \$ or control characters" ;;
esac
for o in "$CONSUL_OWNER" "$HANDLER_OWNER"; do
	[[ $o =~ ^[a-z0-9_][a-z0-9_-]*:[a-z0-9_][a-z0-9_-]*$ ]] || die "CONSUL_OWNER and HANDLER_OWNER must be owner:group, got '$o'"
done

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

# Each value goes into the agent's configuration and the node meta the handlers
# trust: only the shapes EC2 hands out.
[[ $instance_id =~ ^i-[0-9a-f]{8,32}$ ]] || die "instance-id from the metadata service is not an instance id: '$instance_id'"
[[ $image_id =~ ^ami-[0-9a-f]{8,32}$ ]] || die "ami-id from the metadata service is not an image id: '$image_id'"
[[ $private_ip =~ ^([0-9]{1,3}\.){3}[0-9]{1,3}$ ]] || die "local-ipv4 from the metadata service is not an IPv4 address: '$private_ip'"
[[ $region =~ ^[a-z]{2}(-[a-z]+)+-[0-9]+$ ]] || die "placement/region from the metadata service is not a region: '$region'"
datacenter=$region

# Secrets are staged in a private directory, checked, and only then installed.
umask 077
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

secret_names=(gossip-key ca.pem server.pem server-key.pem agent-token handler-token)
for name in "${secret_names[@]}"; do
	if [ -n "$SECRETS_DIR" ]; then
		[ -s "$SECRETS_DIR/$name" ] || die "secret $name missing or empty in $SECRETS_DIR: refusing to start a server without it"
		cp "$SECRETS_DIR/$name" "$stage/$name"
	else
		# --with-decryption: the parameters are SecureStrings. The value never reaches
		# the command line or the log, only the staged file.
		endpoint=()
		[ -z "$SSM_ENDPOINT" ] || endpoint=(--endpoint-url "$SSM_ENDPOINT")
		aws ssm get-parameter --region "$region" "${endpoint[@]}" --name "$SSM_PREFIX/$name" \
			--with-decryption --query Parameter.Value --output text >"$stage/$name" ||
			die "read secret $SSM_PREFIX/$name from SSM Parameter Store: refusing to start a server without it"
		[ -s "$stage/$name" ] || die "secret $SSM_PREFIX/$name is empty: refusing to start a server without it"
	fi
done

# The checks name the problem, never the secret's value.
gossip_key=$(tr -d '[:space:]' <"$stage/gossip-key")
[[ $gossip_key =~ ^[A-Za-z0-9+/]+=*$ ]] || die "gossip-key is not base64 (make one with consul keygen)"
key_len=$(printf '%s' "$gossip_key" | base64 -d 2>/dev/null | wc -c) || die "gossip-key is not base64 (make one with consul keygen)"
case "$key_len" in
16 | 24 | 32) ;;
*) die "gossip-key must decode to 16, 24 or 32 bytes (AES-128/192/256), not $key_len (make one with consul keygen)" ;;
esac

uuid='^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
agent_token=$(tr -d '[:space:]' <"$stage/agent-token")
handler_token=$(tr -d '[:space:]' <"$stage/handler-token")
[[ $agent_token =~ $uuid ]] || die "agent-token is not an ACL token secret ID (a UUID)"
[[ $handler_token =~ $uuid ]] || die "handler-token is not an ACL token secret ID (a UUID)"

for pem in ca.pem server.pem; do
	openssl x509 -in "$stage/$pem" -noout 2>/dev/null || die "$pem is not a PEM certificate"
done
openssl pkey -in "$stage/server-key.pem" -noout 2>/dev/null || die "server-key.pem is not a PEM private key"
openssl verify -CAfile "$stage/ca.pem" "$stage/server.pem" >/dev/null 2>&1 ||
	die "server.pem is not signed by ca.pem (or either has expired)"
openssl x509 -in "$stage/server.pem" -noout -checkend 0 >/dev/null || die "server.pem has expired"
# verify_server_hostname: a server's certificate must be valid for
# server.<datacenter>.<domain>, or the other servers refuse its RPC. The agent's
# watches reach its HTTPS API at 127.0.0.1 and verify the certificate there.
# https://developer.hashicorp.com/consul/docs/reference/agent/configuration-file/tls
check=$(openssl x509 -in "$stage/server.pem" -noout -checkhost "server.$datacenter.consul")
[[ $check == *"does match"* ]] ||
	die "server.pem is not valid for server.$datacenter.consul (make it with consul tls cert create -server -dc $datacenter)"
check=$(openssl x509 -in "$stage/server.pem" -noout -checkip 127.0.0.1)
[[ $check == *"does match"* ]] || die "server.pem is not valid for 127.0.0.1, where the agent's watches reach its HTTPS API"
[ "$(openssl x509 -in "$stage/server.pem" -noout -pubkey)" = "$(openssl pkey -in "$stage/server-key.pem" -pubout)" ] ||
	die "server-key.pem is not the key of server.pem"

# Every check passed: install.
etc="$ROOT/etc/consul.d"
tls="$etc/tls"
handlers="$ROOT/etc/consul-rehydrate"
mkdir -p "$etc" "$ROOT/opt/consul/data"
install -d -m 0750 -o "${CONSUL_OWNER%%:*}" -g "${CONSUL_OWNER##*:}" "$tls"
install -d -m 0750 -o "${HANDLER_OWNER%%:*}" -g "${HANDLER_OWNER##*:}" "$handlers"
# Readable by the consul group (the agent, and the handlers it runs), writable by
# root only. The key must be readable by the agent; nothing else needs it.
for f in ca.pem server.pem server-key.pem; do
	install -m 0640 -o "${CONSUL_OWNER%%:*}" -g "${CONSUL_OWNER##*:}" "$stage/$f" "$tls/$f"
done
# The handlers refuse a token file that others can read.
printf '%s\n' "$handler_token" >"$stage/consul.token"
install -m 0600 -o "${HANDLER_OWNER%%:*}" -g "${HANDLER_OWNER##*:}" "$stage/consul.token" "$handlers/consul.token"

# Consul agent configuration reference for each setting:
# https://developer.hashicorp.com/consul/docs/reference/agent/configuration-file/general
# (encrypt, encrypt_verify_*), .../configuration-file/tls (tls stanza),
# .../configuration-file/address (addresses, ports, client_addr),
# .../configuration-file/acl (acl.tokens), .../configuration-file/auto-encrypt.
cat >"$stage/secure.hcl" <<HCL
# Written at boot by user-data.sh from the secret store; never baked into the image.

# Gossip (serf LAN) encryption: a member without the key can neither join nor read
# or forge gossip, user events included. Both verify flags are Consul's defaults,
# stated so nobody turns them off while rotating keys.
encrypt                 = "$gossip_key"
encrypt_verify_incoming = true
encrypt_verify_outgoing = true

tls {
  # RPC (8300) and HTTPS: both sides present a certificate from the CA.
  defaults {
    ca_file         = "$tls/ca.pem"
    cert_file       = "$tls/server.pem"
    key_file        = "$tls/server-key.pem"
    verify_incoming = true
    verify_outgoing = true
  }
  # Only a certificate for server.$datacenter.consul may act as a server: a client
  # certificate (or auto-encrypt's) cannot join Raft.
  internal_rpc {
    verify_server_hostname = true
  }
  # The HTTPS API authenticates callers by ACL token (default deny: no token, no
  # access), as the local provider's clusters do; TLS still authenticates the server
  # and encrypts. Requiring client certificates too would hand every operator and
  # handler a certificate to guard.
  https {
    verify_incoming = false
  }
}

# Client agents may fetch their certificates from the servers (auto_encrypt { tls =
# true } on the client) instead of carrying a CA-signed one.
auto_encrypt {
  allow_tls = true
}

# Plain HTTP on loopback only; HTTPS (8501) on client_addr (loopback and the private
# IP). The agent's watches use HTTPS, first address: 127.0.0.1.
addresses {
  http = "127.0.0.1"
}
ports {
  http  = 8500
  https = 8501
}

acl {
  tokens {
    agent                           = "$agent_token"
    config_file_service_registration = "$agent_token"
  }
}

# No call home to HashiCorp's update check: servers talk to their cluster, the
# metadata service and the secret store only.
disable_update_check = true
HCL
install -m 0640 -o "${CONSUL_OWNER%%:*}" -g "${CONSUL_OWNER##*:}" "$stage/secure.hcl" "$etc/secure.hcl"

# bootstrap_expect is the same on every server, first or replacement, as HashiCorp
# recommends: a server that finds an existing cluster joins it and never bootstraps.
# Written last: consul.service starts only once node.hcl is there.
cat >"$stage/node.hcl" <<HCL
# Written at boot by user-data.sh from the instance metadata service.
node_name        = "$instance_id"
datacenter       = "$datacenter"
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
install -m 0644 "$stage/node.hcl" "$etc/node.hcl"
echo "user-data: configured $instance_id ($image_id) at $private_ip in $region, gossip encryption, TLS and ACL tokens from ${SECRETS_DIR:-SSM $SSM_PREFIX}"

if [ "$SKIP_SYSTEMD" != 1 ]; then
	systemctl daemon-reload
	systemctl enable --now consul.service
fi
