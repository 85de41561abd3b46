# consul-rehydrate configuration of a node that deploys a service: the deploy
# handler's file. A node that only deploys needs no cluster, servers or provider
# (they are for the roll); it may still set them, and one file may serve both.

consul {
  address    = "127.0.0.1:8500"
  token_file = "consul.token"
}

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
  # (empty on the first deploy) and REHYDRATE_DEPLOY_ROLLBACK ("true" when it
  # runs to roll back). Exit 0 means deployed. Required. A relative path
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
}
