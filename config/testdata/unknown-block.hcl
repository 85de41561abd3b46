cluster = "main"
servers = 3

autopilot {
  cleanup_dead_servers = true
}

provider "local" {
  state_dir = "state"
}
