cluster = "main"
servers = 3

consul {
  token      = "00000000-0000-0000-0000-000000000000"
  token_file = "token-and-token-file.hcl"
}

provider "local" {
  state_dir = "state"
}
