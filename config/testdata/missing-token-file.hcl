cluster = "main"
servers = 3

consul {
  token_file = "no-such.token"
}

provider "local" {
  state_dir = "state"
}
