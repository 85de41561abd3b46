# ACL policy for the token that runs `rehydrate deploy start|status --service <service>`
# (CONSUL_HTTP_TOKEN, or token_file in a -config file). It is a template: render it per
# service and per agent the rollout talks to,
#
#   consuld.RenderPolicy("deploy-rollout", consuld.PolicyVars{Node: "<node_name>", Service: "<service>"})
#
# SERVICE_NAME is the deployed service, NODE_NAME the node_name of the agent the rollout
# reaches (CONSUL_HTTP_ADDR): the rollout's lock session is created on that agent's node.
# This token may write every node's desired key of the service, so it may run code on
# every node of the service: keep it with the people or pipeline that deploy.

# Every node's desired value, status and current version; the rollout's lock and record.
key_prefix "deploy/SERVICE_NAME/" {
  policy = "write"
}

# The session behind the rollout's lock, on the node of the agent it talks to. An exact
# rule: sessions on every other node stay out of reach.
session "NODE_NAME" {
  policy = "write"
}

# The nodes the service runs on, and their health.
service "SERVICE_NAME" {
  policy = "read"
}
node_prefix "" {
  policy = "read"
}
