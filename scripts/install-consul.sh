#!/usr/bin/env bash
# Installs Consul and its server configuration into the image (run by Packer, as
# root). Consul comes from HashiCorp's release archive, and is installed only if
#   1. the release's SHA256SUMS carries a good signature by HashiCorp's release key,
#      the one committed next to this script (scripts/hashicorp.asc, fingerprint
#      C874 011F 0AB4 0511 0D02 1055 3436 5D94 72D7 468F, as published at
#      https://www.hashicorp.com/.well-known/pgp-key.txt and
#      https://www.hashicorp.com/security), checked with gpgv against that key alone,
#      and refused if the key has expired or been revoked or the signature has expired;
#   2. the zip's SHA-256 is the one that signed SHA256SUMS lists for it.
# A checksum file from the same host as the zip proves nothing by itself: whoever can
# swap the zip can swap the sums. Any failure stops the script before anything is
# installed.
#
# The image gets no secret: the gossip key, TLS certificates and ACL tokens are
# written at boot by user-data.sh (installed here as consul-user-data).
#
# Environment:
#   CONSUL_VERSION  e.g. 1.22.3 (required)
#   SRC             where Packer uploaded consul.d/ and scripts/ (default /tmp)
#   RELEASES_URL    the release archive (default https://releases.hashicorp.com)
#   HASHICORP_KEY   the armored public key to check the signature with (default
#                   $SRC/scripts/hashicorp.asc; tests use a key of their own)
#   ROOT            prefix for every path written (default empty: the real root)
#   SKIP_SYSTEM     1: no apt-get, no user, no ownership, no systemd unit
#                   reload (tests, which install into ROOT)
set -euo pipefail

: "${CONSUL_VERSION:?set CONSUL_VERSION, e.g. 1.22.3}"
SRC="${SRC:-/tmp}"
RELEASES_URL="${RELEASES_URL:-https://releases.hashicorp.com}"
HASHICORP_KEY="${HASHICORP_KEY:-$SRC/scripts/hashicorp.asc}"
ROOT="${ROOT:-}"
SKIP_SYSTEM="${SKIP_SYSTEM:-0}"

die() {
	echo "install-consul: $*" >&2
	exit 1
}

[[ $CONSUL_VERSION =~ ^[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.]+)?(\+ent)?$ ]] ||
	die "CONSUL_VERSION must be a release version such as 1.22.3, got '$CONSUL_VERSION'"
[ -s "$HASHICORP_KEY" ] || die "no release signing key at $HASHICORP_KEY"

arch=amd64
base="$RELEASES_URL/consul/${CONSUL_VERSION}"
zip="consul_${CONSUL_VERSION}_linux_${arch}.zip"
sums="consul_${CONSUL_VERSION}_SHA256SUMS"
# The signature by key 72D7468F by name, so a future key rotation cannot silently
# switch which key the file is signed with.
sig="$sums.72D7468F.sig"

if [ "$SKIP_SYSTEM" != 1 ]; then
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	# gpg for --dearmor, gpgv to check the signature; openssl and awscli for
	# user-data.sh (certificate checks, SSM Parameter Store).
	apt-get install -y -qq curl unzip ca-certificates gpg gpgv openssl awscli
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for f in "$zip" "$sums" "$sig"; do
	curl -fsSL --proto '=https,http' -o "$work/$f" "$base/$f" || die "download $base/$f"
done

# gpgv takes a binary keyring and trusts every key in it: only HashiCorp's.
mkdir -m 0700 "$work/gnupg"
gpg --batch --quiet --homedir "$work/gnupg" --dearmor <"$HASHICORP_KEY" >"$work/hashicorp.gpg" ||
	die "$HASHICORP_KEY is not an armored OpenPGP public key"
status=$(gpgv --status-fd 1 --keyring "$work/hashicorp.gpg" "$work/$sig" "$work/$sums" 2>"$work/gpgv.err") || {
	cat "$work/gpgv.err" >&2
	die "$sums: no good signature by the key in $HASHICORP_KEY: refusing to install"
}
# gpgv's exit status is not enough: it exits 0 for a signature that is only
# cryptographically valid, made by a key that has since expired or been revoked.
# VALIDSIG does not rule those out either: GnuPG emits it beside EXPSIG, EXPKEYSIG
# or REVKEYSIG as well as beside GOODSIG. GnuPG's doc/DETAILS ("Format of the
# --status-fd output"): for each signature "only one of the codes GOODSIG, BADSIG,
# EXPSIG, EXPKEYSIG, REVKEYSIG or ERRSIG will be emitted", and VALIDSIG "is similar to
# GOODSIG, EXPSIG, EXPKEYSIG, or REVKEYSIG (depending on the date and the state of
# the signature and signing key)" with "Multiple status lines (VALIDSIG and the other
# appropriate *SIG status)" for one valid signature. So: any of those five refuses,
# and a GOODSIG and a VALIDSIG are both required.
goodsig=0 validsig=0
while read -r tag keyword _; do
	[ "$tag" = "[GNUPG:]" ] || continue
	case $keyword in
	GOODSIG) goodsig=1 ;;
	VALIDSIG) validsig=1 ;;
	EXPKEYSIG) die "$sums: signed by an expired key ($keyword): refusing to install" ;;
	REVKEYSIG) die "$sums: signed by a revoked key ($keyword): refusing to install" ;;
	EXPSIG) die "$sums: the signature has expired ($keyword): refusing to install" ;;
	BADSIG | ERRSIG) die "$sums: bad or uncheckable signature ($keyword): refusing to install" ;;
	esac
done <<<"$status"
if [ "$goodsig" != 1 ] || [ "$validsig" != 1 ]; then
	die "$sums: no good, valid signature (GOODSIG and VALIDSIG): refusing to install"
fi

# Exactly one line for the zip in the signed sums, and the zip must match it.
lines=$(awk -v f="$zip" '$2 == f' "$work/$sums")
[ -n "$lines" ] || die "$sums lists no $zip: refusing to install"
[ "$(printf '%s\n' "$lines" | wc -l)" -eq 1 ] || die "$sums lists $zip more than once: refusing to install"
(cd "$work" && printf '%s\n' "$lines" | sha256sum --check --strict --quiet -) ||
	die "$zip does not match its SHA-256 in the signed $sums: refusing to install"
signer=$(awk '$2 == "VALIDSIG" {print $NF}' <<<"$status")
echo "install-consul: $zip matches $sums, signed by key $signer"

unzip -q "$work/$zip" consul -d "$work/bin"

own_consul=()
if [ "$SKIP_SYSTEM" != 1 ]; then
	useradd --system --home /etc/consul.d --shell /bin/false consul 2>/dev/null || true
	own_consul=(-o consul -g consul)
fi
install -d -m 0755 "$ROOT/usr/local/bin" "$ROOT/usr/local/sbin" "$ROOT/etc/systemd/system"
install -m 0755 "$work/bin/consul" "$ROOT/usr/local/bin/consul"
install -d "${own_consul[@]}" -m 0750 "$ROOT/etc/consul.d" "$ROOT/opt/consul" "$ROOT/opt/consul/data"
# The shared, secret-free configuration only: no encrypt, no tls, no token.
install "${own_consul[@]}" -m 0640 "$SRC/consul.d/server.hcl" "$SRC/consul.d/watches.hcl" "$SRC/consul.d/acl.hcl" "$SRC/consul.d/check-roll.hcl" "$ROOT/etc/consul.d/"
install -m 0644 "$SRC/scripts/consul.service" "$ROOT/etc/systemd/system/consul.service"
install -m 0755 "$SRC/scripts/user-data.sh" "$ROOT/usr/local/sbin/consul-user-data"
"$ROOT/usr/local/bin/consul" version
