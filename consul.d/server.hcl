# Settings every Consul server of a rehydrated cluster shares. user-data.sh (AWS) and
# the local provider add what differs per server: addresses, node meta, data_dir, join.
server = true

# A server that is stopped (systemd stop, instance shutdown) leaves the cluster
# gracefully, so raft shrinks at once instead of counting a failed voter.
leave_on_terminate = true

# server_stabilization_time is below Consul's 10s default on purpose. Autopilot
# promotes a new server to voter only on its reconcile tick, every 10s, so with 10s
# here the promotion came 10 to 20s after the server turned healthy. The roll's own
# roll.stabilization (10s from the same moment) still gates every retire: no old
# server goes before its replacement has been a healthy voter that long. With 3s
# the promotion overlaps that wait instead of following it.
autopilot {
  cleanup_dead_servers      = true
  last_contact_threshold    = "200ms"
  max_trailing_logs         = 250
  server_stabilization_time = "3s"
}

performance {
  raft_multiplier = 1
}
