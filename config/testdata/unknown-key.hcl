cluster = "main"
servers = 3

consul {
  adress = "127.0.0.1:8500"
}

provider "local" {
  state_dir = "state"
}
