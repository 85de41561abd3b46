# ACL policy for the token the spinup and spindown handlers use (token_file in their
# configuration). It grants only what a roll step does:

# the lock, roll record, receipts, handled events and bad images
key_prefix "rehydrate/" {
  policy = "write"
}

# the session behind the lock, created on whichever server the handler runs on
session_prefix "" {
  policy = "write"
}

# firing the event again to hand a step over or continue the roll
event "consul-rehydrate" {
  policy = "write"
}

# autopilot health (read) and leadership transfer (write)
operator = "write"

# the servers' node meta in the catalog, and the agent's own node meta (agent self)
node_prefix "" {
  policy = "read"
}
agent_prefix "" {
  policy = "read"
}
service "consul" {
  policy = "read"
}
