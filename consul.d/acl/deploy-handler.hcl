# ACL policy for the token the deploy handler uses (token_file in its configuration)
# on ONE node that deploys one service. It is a template: render it once per node and
# service,
#
#   consuld.RenderPolicy("deploy-handler", consuld.PolicyVars{Node: "<node_name>", Service: "<service>"})
#
# NODE_NAME is the node's node_name (as in deploy-web.hcl), SERVICE_NAME the deployed
# service. Each node gets its own token: whoever may write a node's desired key may
# run code on that node, so no node's token may write another node's keys.

# This node's status, current version and lock. The trailing slash keeps "node-1"
# from covering "node-10".
key_prefix "deploy/SERVICE_NAME/nodes/NODE_NAME/" {
  policy = "write"
}

# ...but only read its desired value: the rollout writes it, the handler acts on it. An
# exact `key` rule wins over the prefix above (Consul's rule matching: an exact match
# before the longest prefix, acl/policy_authorizer.go getPolicy).
key "deploy/SERVICE_NAME/nodes/NODE_NAME/desired" {
  policy = "read"
}

# The session behind the node's lock: created by the handler's agent on its own node,
# and creating, renewing and destroying it need session:write on that node. An exact
# rule: sessions on other nodes stay out of reach.
session "NODE_NAME" {
  policy = "write"
}

# Maintenance of the service's instances on this node (PUT
# /v1/agent/service/maintenance/<id> needs service:write), and their health.
service "SERVICE_NAME" {
  policy = "write"
}

# This node's checks, which count towards the service's health here (the health API
# filters out nodes the token cannot read), and the agent's own name (GET /v1/agent/self).
node "NODE_NAME" {
  policy = "read"
}
agent "NODE_NAME" {
  policy = "read"
}
