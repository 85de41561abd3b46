cluster = "main"
servers = 3

roll {
  allow_downgrade = "sometimes"
  max_trailing_logs = [250]
}

provider "local" {
  state_dir = "state"
}
