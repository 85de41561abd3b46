# ACL policy for the token that runs `rehydrate deploy start|status --service web`
# (CONSUL_HTTP_TOKEN, or token_file in a -config file). Rename "web".

# every node's desired value, status and current version; the rollout's lock and record
key_prefix "deploy/web/" {
  policy = "write"
}

# the session behind the rollout's lock
session_prefix "" {
  policy = "write"
}

# the nodes web runs on, and their health
service "web" {
  policy = "read"
}
node_prefix "" {
  policy = "read"
}
