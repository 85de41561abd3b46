cluster = "main"
servers = 3

provider "local" {
  state_dir = "state"
}

provider "aws" {
  autoscaling_group = "consul-servers"
  launch_template   = "consul-server"
  image {
    name_pattern = "consul-server-*"
  }
}
