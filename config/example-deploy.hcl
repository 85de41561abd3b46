# consul-rehydrate configuration of a node that deploys a service: the deploy
# handler's file. A node that only deploys needs no cluster, servers or provider
# (they are for the roll); it may still set them, and one file may serve both.

consul {
  address    = "127.0.0.1:8500"
  token_file = "consul.token"
}

# Whoever may write this node's desired key (deploy/<service>/nodes/<node>/desired)
# chooses the version, artifact and digest the deploy command runs with: they can
# run code on this node. Give that right to this node's own token and to the
# rollout's (consul.d/acl/), and to nobody else. What a desired value may say is
# narrowed three ways: its version must be 1 to 128 characters of A-Z, a-z, 0-9
# and . _ + -, starting with a letter or digit, without ".." (so it is safe as a
# file name and an argument); and artifacts and require_sha256 below.

# One block per service this node deploys, labelled with the Consul service name.
# The handler watches deploy/<service>/nodes/<node>/desired (see
# consul.d/deploy-web.hcl) and, for each new deployment: puts the service in
# maintenance, runs command, takes it out of maintenance and waits for the
# service's checks to pass. On failure it runs rollback_command with the previous
# version.
deploy "web" {
  # The deploy command: argv, no shell. It reads what to deploy from the
  # environment: REHYDRATE_DEPLOY_VERSION, REHYDRATE_DEPLOY_ID,
  # REHYDRATE_DEPLOY_ARTIFACT (may be empty), REHYDRATE_DEPLOY_PREVIOUS_VERSION
  # (empty on the first deploy), REHYDRATE_DEPLOY_SHA256 (may be empty) and
  # REHYDRATE_DEPLOY_ROLLBACK ("true" when it runs to roll back; the artifact and
  # digest are then empty). Exit 0 means deployed. Required. A relative path
  # resolves against this file's directory; a bare name is looked up on PATH.
  command = ["/opt/web/bin/deploy", "--restart"]

  # Run with the previous version after a failed deploy. Default: command.
  rollback_command = ["/opt/web/bin/deploy", "--restart", "--rollback"]

  # Each run of a command is killed (its whole process group) after this.
  timeout = "5m"

  # How long the service's checks on this node may take to pass after a run.
  health_timeout = "2m"

  # How long the checks must pass without a break to count: at least one
  # check interval, so that a check that passed before the deploy has run again.
  min_healthy_time = "10s"

  # The artifacts a desired value may name (REHYDRATE_DEPLOY_ARTIFACT): patterns
  # in Go's path.Match syntax, where "*" matches within one path segment. With
  # the list set, a desired value must name an artifact that matches one, and
  # the artifact may not hold "..", "\", "@", "#" or a percent-encoded ".", "/"
  # or "\". A URL pattern spells out its scheme and host (no wildcard before
  # the path). Default: unset, any artifact the desired key's writer chooses.
  artifacts = ["https://releases.example.com/web/*"]

  # Refuse a desired value that does not pin its artifact's SHA-256: a "sha256"
  # of 64 hex digits (`rehydrate deploy start --sha256 ...`). The handler
  # downloads nothing itself: it hands the digest to the command as
  # REHYDRATE_DEPLOY_SHA256, and the command must check what it downloads
  # against it, e.g. echo "$REHYDRATE_DEPLOY_SHA256  web.tar.gz" | sha256sum -c.
  # Default: false (a sha256 that is given is still checked and passed on).
  require_sha256 = true

  # The nodes a rollout (`rehydrate deploy start -config <this file>`) may deploy
  # to: a Consul filter expression over the catalog's entries of the service, the
  # fields `consul catalog nodes -service web -filter` takes (Node, Address,
  # NodeMeta.<key>, ServiceTags, ServiceMeta.<key>, ...). The catalog is anyone's
  # to write who may register a node or service; this says which nodes are meant.
  # A rollout's --node-filter can only narrow it (both apply). Checked to parse
  # when the file is loaded; a field the catalog does not have is reported by the
  # first rollout. The deploy handler itself does not use it. Default: unset,
  # every node of the service (that is a gossip member with a key-safe name).
  node_filter = "NodeMeta.role == \"web\""
}
