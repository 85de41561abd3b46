# The roll's alarm: `rehydrate check` as a Consul script check on every server, so a
# roll that is stuck or failed shows where operators already look: the Consul UI,
# `consul watch -type=checks`, /v1/health/state/critical, and every monitor that
# follows Consul's checks. Install it on every server beside watches.hcl.
#
# The check reads the roll record (rehydrate/<cluster>/roll) and exits as a script
# check does: 0 passing, 1 warning, anything else critical.
#   passing   no roll has run, the last one is done, or the roll in progress made
#             progress (took a step) within roll.stuck_warning;
#   warning   the roll in progress has made no progress for longer than
#             roll.stuck_warning (default: half of roll.launch_timeout);
#   critical  the last roll failed (until a new roll starts: publish a fixed image,
#             or `rehydrate fire --image`), the roll in progress has made no
#             progress for longer than roll.launch_timeout, or the check cannot
#             judge (Consul unreachable, the token refused, a broken configuration).
# A hold (the cluster unhealthy, the group below size) is waiting, not progress. The
# output says why, and ends with the `rehydrate status` command to run.
#
# It runs with the agent's environment, like the watches: CONSUL_HTTP_ADDR,
# CONSUL_CACERT and CONSUL_HTTP_TOKEN_FILE (the handlers' token, which reads the roll
# record; consul.d/acl/rehydrate-handlers.hcl), and the handlers' configuration file.
#
# A check of its own service, not a node check: a critical node check fails every
# service of the node, `consul` included, which would take the servers out of
# consul.service.consul DNS and every ?passing query for as long as a failed roll
# stays critical. The agent registers this service and its check in the catalog with
# its acl.tokens.config_file_service_registration token (Consul
# agent/local/state.go: a service from a configuration file syncs with that token,
# else the default token); with ACLs on and default deny, that token needs
# service:write on consul-rehydrate (a service identity). Without it the check still
# runs, and the agent's own /v1/agent/checks shows it, but the catalog, the UI and
# `consul watch -type=checks` do not.
#
# Script checks: https://developer.hashicorp.com/consul/docs/discovery/checks ("Exit code 0
# - Check is passing; Exit code 1 - Check is warning; Any other code - Check is failing").

# Script checks from the agent's own configuration files only. Never
# enable_script_checks: it lets anyone who may register a check through the HTTP API
# run a command on the server.
enable_local_script_checks = true

service {
  id   = "consul-rehydrate"
  name = "consul-rehydrate"
  meta = {
    about = "the roll of the Consul servers: rehydrate check"
  }
  check {
    id   = "rehydrate-roll"
    name = "the roll is not stuck"
    args = ["/opt/consul-rehydrate/bin/rehydrate", "-config", "/etc/consul-rehydrate/config.hcl", "check"]
    # Minutes matter here, not seconds: a step is slow after roll.stuck_warning.
    interval = "30s"
    # Above the check's own bound on its Consul read (5s), so a Consul that does not
    # answer is reported with the check's reason, not the agent's "Timed out".
    timeout = "10s"
    # A new check is critical until its first run, up to one interval later. Every
    # server a roll launches would raise the alarm for those seconds in every healthy
    # roll; the first run, within 30s, sets the real status.
    status = "passing"
    # One run that cannot read the record is no alarm: a server that has not joined
    # yet, or the moment without a leader while a roll moves leadership, would raise
    # it in every healthy roll. Two in a row are (one interval later). A run that
    # judges warning or passing counts at once (Consul agent/checks/check.go,
    # StatusHandler.updateCheck).
    failures_before_critical = 2
  }
}
