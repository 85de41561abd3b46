cluster = "a"
servers = 3
lock {
  session_ttl = "20s"
  wait        = "30s"
}
provider "local" {
  state_dir = "state"
  addresses = "127.0.0.0/29"
}
