# ACL policy for the token the spinup and spindown handlers, `rehydrate leave`
# (consul.service's stop) and the termination gate (rehydrate-lifecycle.service) use on
# ONE server (token_file in their configuration, or CONSUL_HTTP_TOKEN_FILE of the
# units). It is a template: render it once per server,
#
#   consuld.RenderPolicy("rehydrate-handlers", consuld.PolicyVars{
#       Cluster: "<cluster>", Node: "<node_name>", EventName: "<roll.event_name>"})
#
# CLUSTER_NAME is the configuration's `cluster`, NODE_NAME the server's node_name (the
# instance id in AWS, scripts/user-data.sh), EVENT_NAME its roll.event_name (default
# "consul-rehydrate"). Each server gets its own policy and token. It grants only what
# a roll step, the stop and the gate do; test/acl proves it is enough and that it
# reaches no further.

# The lock, roll record, receipts, handled events, bad images and the gate's departure
# lock (rehydrate/CLUSTER_NAME/departure) of this cluster only.
# The trailing slash matters: "rehydrate/prod" would also cover "rehydrate/prod-2/".
key_prefix "rehydrate/CLUSTER_NAME/" {
  policy = "write"
}

# The session behind the lock. The handler's agent creates it on its own node (PUT
# /v1/session/create defaults Node to the agent's node_name), and creating, renewing and
# destroying a session each need session:write on the session's node (Consul
# agent/consul/session_endpoint.go, Session.Apply and Session.Renew). An exact `session`
# rule, not `session_prefix ""`: sessions on every other node, other applications' locks
# among them, stay out of reach. Consul scopes session rules by node only, so another
# application's session on this same node is not protected from this token. Taking the
# lock itself is a KV acquire, which needs key:write on the lock key (above).
# https://developer.hashicorp.com/consul/docs/reference/acl/rule#session-rules
session "NODE_NAME" {
  policy = "write"
}

# Firing the roll's event again to hand a step over or continue the roll. An exact
# rule: no other event name.
event "EVENT_NAME" {
  policy = "write"
}

# Leadership transfer (PUT /v1/operator/raft/transfer-leader) needs operator:write;
# autopilot health and the Raft configuration need operator:read, which write includes.
# operator:write ALSO allows, per Consul 1.22's source (every OperatorWriteAllowed check):
#   - removing any server from Raft (DELETE /v1/operator/raft/peer, by address or id):
#     enough to break quorum;
#   - changing the autopilot configuration (PUT /v1/operator/autopilot/configuration),
#     e.g. turning off dead-server cleanup;
#   - force-leave of any member (PUT /v1/agent/force-leave/<node>, with ?prune);
#   - reading and changing the Connect CA configuration (GET/PUT /v1/connect/ca/configuration)
#     and signing intermediate certificates, when Connect is on;
#   - writing WAN federation states (mesh gateway federation);
#   - and, through operator:read, /v1/agent/host, /v1/operator/usage and the
#     /debug/pprof profiles.
# It does NOT allow the gossip keyring (that is the separate `keyring` rule), ACLs or
# snapshots (`acl = "write"`), nor KV, services or nodes beyond the rules here.
operator = "write"

# Consul grants mesh:write and peering:write to any token with operator:write unless the
# policy sets them (acl/policy_authorizer.go: MeshWrite and PeeringWrite "default to
# OperatorWrite access"): mesh and proxy config entries, gateways, intentions defaults,
# cluster peering. The handlers need none of it.
mesh    = "deny"
peering = "deny"

# The servers in the catalog and their node meta (every server's, so every node).
node_prefix "" {
  policy = "read"
}
service "consul" {
  policy = "read"
}

# This agent only (an exact rule: no other node's agent). agent:read for its node name
# and meta (GET /v1/agent/self). agent:write for the leave of `rehydrate leave`
# (consul.service's stop) and of the termination gate: PUT /v1/agent/leave checks
# AgentWriteAllowed on the agent's own node (Consul 1.22 agent/agent_endpoint.go,
# AgentLeave). agent:write on this node ALSO allows, per the same file (every
# AgentWriteAllowed check), on this agent only:
#   - PUT /v1/agent/reload (AgentReload): reload its configuration files;
#   - PUT /v1/agent/join/<address>, with ?wan (AgentJoin): join it to other agents;
#   - PUT /v1/agent/token/<name> (AgentToken): replace its ACL tokens (default, agent,
#     agent_recovery, replication, dns, config_file_service_registration) with any
#     secret the caller knows; acl.hcl persists them (enable_token_persistence). E.g.
#     this token as the default one would lend its rights to every token-less request
#     to this agent.
# Force-leave of a member (PUT /v1/agent/force-leave) is operator:write (above), not
# this rule. Maintenance mode needs node:write or service:write, the monitor and the
# metrics agent:read, so agent:write adds nothing there.
agent "NODE_NAME" {
  policy = "write"
}
