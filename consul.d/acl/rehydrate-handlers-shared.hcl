# ACL policy for ONE token SHARED by every server of a cluster: what the spinup and
# spindown handlers, `rehydrate leave` (consul.service's stop) and the termination gate
# (rehydrate-lifecycle.service) use when a per-server token (rehydrate-handlers) cannot
# be minted before the server exists, as on AWS, where a replacement server's node name
# is its instance id. It is a template: render it once per cluster,
#
#   consuld.RenderPolicy("rehydrate-handlers-shared", consuld.PolicyVars{
#       Cluster: "<cluster>", NodePrefix: "i-", EventName: "<roll.event_name>"})
#
# NODE_PREFIX is what every server's node_name starts with ("i-" for the instance ids
# scripts/user-data.sh uses), CLUSTER_NAME and EVENT_NAME as in rehydrate-handlers.
#
# It is rehydrate-handlers with its two node-exact rules turned into prefix rules,
# because the token does not know which server holds it. That is WIDER than a token per
# server: on every node whose name starts with NODE_PREFIX (client agents named by
# instance id too, not only this cluster's servers), it may
#   - create, renew and destroy any session: other applications' locks on those nodes
#     included;
#   - make the agent leave, reload its configuration, join it to other agents and
#     replace its ACL tokens (agent:write; see rehydrate-handlers for the list).
# So one stolen server's token reaches every such agent, not only its own. Prefer
# rehydrate-handlers, rendered per server, wherever the node name is known in advance.

# As rehydrate-handlers: this cluster's keys only; the trailing slash keeps "prod" from
# covering "prod-2".
key_prefix "rehydrate/CLUSTER_NAME/" {
  policy = "write"
}

# The lock's session, and the termination gate's departure lock: each handler's agent
# creates it on its own node, and the token may be on any server, so session:write on
# every node named NODE_PREFIX... (Session.Apply and Session.Renew check the session's
# node). Nodes named otherwise stay out of reach.
session_prefix "NODE_PREFIX" {
  policy = "write"
}

# Firing the roll's event again. An exact rule: no other event name.
event "EVENT_NAME" {
  policy = "write"
}

# Leadership transfer; see rehydrate-handlers for everything else operator:write allows.
operator = "write"

# operator:write would otherwise grant mesh:write and peering:write.
mesh    = "deny"
peering = "deny"

# The servers in the catalog and their node meta.
node_prefix "" {
  policy = "read"
}
service "consul" {
  policy = "read"
}

# What the code asks of the agent it talks to, which may be any server's: GET
# /v1/agent/self (agent:read: the roll step's own instance id, roll.selfInstance, and
# the gate's node name) and PUT /v1/agent/leave (agent:write: `rehydrate leave` and the
# gate, gate.Leave). Nothing else of the agent API. write includes read. A prefix rule:
# every agent whose node name starts with NODE_PREFIX, not only the one it runs on.
agent_prefix "NODE_PREFIX" {
  policy = "write"
}
