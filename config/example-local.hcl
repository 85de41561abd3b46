# The smallest configuration for the local provider: a three-server cluster
# of consul processes on 127.0.2.0/28, state kept next to this file.
cluster = "demo"
servers = 3

provider "local" {
  state_dir = "state"
  addresses = "127.0.2.0/28"
}
