# Every line below but the blank ones has a problem; all are reported at once.
cluster = "Main!"
servers = "three"
log_level = "loud"

lock {
  session_ttl = "5s"
  wait = "soon"
}

roll {
  stabilization = "10x"
  max_trailing_logs = -1
  unknown = true
}

provider "local" {
  state_dir = "state"
  addresses = "127.0.1.0/33"
}
