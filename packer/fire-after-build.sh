#!/bin/sh
# Asks the cluster to roll to the image this Packer run has just built:
# `rehydrate -config FILE fire --image AMI`. consul-server.pkr.hcl runs it as a
# shell-local post-processor, after the manifest post-processor of the same chain, when
# -var fire_after_build=true. rehydrate fire refuses what every handler would refuse
# (an image outside the filter, a downgrade) and says why.
#
# Environment, set by the template:
#   REHYDRATE_BIN     the rehydrate binary `make build` put into bin/
#   REHYDRATE_CONFIG  its configuration file
#   MANIFEST          packer-manifest.json, which the manifest post-processor has just written
#   BUILD_REGION      the region the image was built in
# and by Packer itself: PACKER_RUN_UUID, which packer exports to every process it
# starts (hashicorp/packer main.go) and the manifest post-processor records with each
# build (post-processor/manifest/post-processor.go).
#
# The AMI id reaches a post-processor only through the manifest: build.ID there is the
# temporary build instance, and shell-local passes no artifact id. Each build entry
# reads {"name", "builder_type", "build_time", "files", "artifact_id",
# "packer_run_uuid", "custom_data"} (post-processor/manifest/artifact.go), earlier
# runs' builds stay in the file, and amazon-ebs's artifact_id is
# "<region>:<ami>[,<region>:<ami>...]" (packer-plugin-amazon builder/common/artifact.go).
set -eu

fail() {
	echo "fire-after-build: $*" >&2
	exit 1
}

: "${REHYDRATE_BIN:?set by consul-server.pkr.hcl}" "${MANIFEST:?set by consul-server.pkr.hcl}"
[ -n "${REHYDRATE_CONFIG:-}" ] || fail "no configuration for rehydrate fire: pass -var rehydrate_config=FILE or set REHYDRATE_CONFIG"
[ -f "$REHYDRATE_CONFIG" ] || fail "rehydrate configuration $REHYDRATE_CONFIG: no such file"
[ -x "$REHYDRATE_BIN" ] || fail "$REHYDRATE_BIN: not an executable: run make build"
[ -f "$MANIFEST" ] || fail "$MANIFEST: not written: the manifest post-processor must run first"

# Both values end up inside sed expressions below: allow only what they can be.
case ${BUILD_REGION:-} in
'' | *[!a-z0-9-]*) fail "BUILD_REGION \"${BUILD_REGION:-}\" is not a region name" ;;
esac
case ${PACKER_RUN_UUID:-} in
'' | *[!0-9a-f-]*) fail "PACKER_RUN_UUID \"${PACKER_RUN_UUID:-}\" is not a packer run id: run this only from packer build" ;;
esac

# No JSON tool is assumed on the build host. The manifest is packer's own indented
# JSON, and no value in a build entry holds white space, a brace or a bracket: drop the
# white space, blank each build's two nested values (files, custom_data), and cut
# before every "{": each build is then one line, whatever the order of its keys.
entries=$(tr -d ' \t\r\n' <"$MANIFEST" |
	sed -e 's/"files":\[[^]]*\]/"files":null/g' -e 's/"custom_data":{[^}]*}/"custom_data":null/g' |
	tr '{' '\n' | sed -n "/\"packer_run_uuid\":\"$PACKER_RUN_UUID\"/p")
[ -n "$entries" ] || fail "$MANIFEST has no build of this run ($PACKER_RUN_UUID)"
[ "$(printf '%s\n' "$entries" | sed -n '$=')" = 1 ] || fail "$MANIFEST has more than one build of this run ($PACKER_RUN_UUID): fire by hand"
artifact=$(printf '%s\n' "$entries" | sed -n 's/.*"artifact_id":"\([^"]*\)".*/\1/p')
ami=$(printf '%s\n' "$artifact" | tr ',' '\n' | sed -n "s/^$BUILD_REGION:\(.*\)\$/\1/p")

# An AMI id is "ami-" and 8 or 17 hex digits
# (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/resource-ids.html).
hex=${ami#ami-}
case $ami in
ami-*) ;;
*) fail "the artifact of this run, \"$artifact\", has no AMI for region $BUILD_REGION" ;;
esac
case $hex in
'' | *[!0-9a-f]*) fail "\"$ami\" (region $BUILD_REGION in \"$artifact\") is not an AMI id" ;;
esac
[ ${#hex} -eq 8 ] || [ ${#hex} -eq 17 ] || fail "\"$ami\" (region $BUILD_REGION in \"$artifact\") is not an AMI id"

echo "fire-after-build: asking the cluster to roll to $ami"
"$REHYDRATE_BIN" -config "$REHYDRATE_CONFIG" fire --image "$ami" ||
	fail "rehydrate fire failed (exit $?); the image $ami is built: fire the roll with $REHYDRATE_BIN -config $REHYDRATE_CONFIG fire --image $ami"
