# A five-server cluster in an EC2 Auto Scaling group, rolled onto the newest
# AMI that Packer built from consul-server.pkr.hcl.
cluster   = "prod-eu"
servers   = 5
log_level = "warn"

consul {
  # The ACL token, in a file next to this one (mode 0600, owned by consul).
  token_file = "consul.token"
}

roll {
  # Give a new server longer to sync a large snapshot.
  launch_timeout = "20m"
}

provider "aws" {
  # Empty: the SDK's default chain (instance metadata on a server).
  region            = "eu-west-1"
  autoscaling_group = "consul-servers"
  launch_template   = "consul-server"
  max_attempts      = 5

  # The termination gate (handlers/lifecycle, on every server): the group's
  # termination lifecycle hook it completes, and how long at most it holds a
  # termination while quorum still needs the server.
  lifecycle_hook = "consul-rehydrate"
  gate_max_hold  = "20m"

  # The images servers may run: the newest match wins.
  image {
    owners       = ["self"]
    name_pattern = "consul-server-*"
    tags         = { role = "consul-server" }
  }
}
