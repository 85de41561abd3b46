cluster = "main"
servers = 4

provider "local" {
  state_dir = "state"
}
