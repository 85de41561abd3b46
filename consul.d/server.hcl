# Settings every Consul server of a rehydrated cluster shares. user-data.sh (AWS) and
# the local provider add what differs per server: addresses, node meta, data_dir, join.
server = true

# A server that is stopped (systemd stop, instance shutdown) leaves the cluster
# gracefully, so raft shrinks at once instead of counting a failed voter.
leave_on_terminate = true

autopilot {
  cleanup_dead_servers      = true
  last_contact_threshold    = "200ms"
  max_trailing_logs         = 250
  server_stabilization_time = "10s"
}

performance {
  raft_multiplier = 1
}
