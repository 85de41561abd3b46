# ACL policy for the token the deploy handler uses (token_file in its configuration)
# on the nodes that deploy "web". One policy per deployed service; rename "web".

# the node's desired value (read) and its status, current and lock (write); Consul
# policies cannot name "this node", so every web node's token may write every web
# node's keys
key_prefix "deploy/web/nodes/" {
  policy = "write"
}

# the session behind the node's lock
session_prefix "" {
  policy = "write"
}

# maintenance of web's instances on this node, and their health
service "web" {
  policy = "write"
}

# the node checks that count towards web's health, and the agent's own name
node_prefix "" {
  policy = "read"
}
agent_prefix "" {
  policy = "read"
}
