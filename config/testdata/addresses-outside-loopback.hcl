cluster = "main"
servers = 3

provider "local" {
  state_dir = "state"
  addresses = "10.0.1.0/24"
}
