server = true
autopilot {
  cleanup_dead_servers = "maybe"
}
bootstrap_expect = -1
