# Deliberately invalid: `packer validate` must reject it. It references a
# variable that is not declared, so a typo'd variable name in
# ../consul-server.pkr.hcl would be caught the same way.
packer {
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = "~> 1.3"
    }
  }
}

source "amazon-ebs" "consul" {
  region        = var.region
  instance_type = "t3.small"
  source_ami    = "ami-0123456789abcdef0"
  ami_name      = "consul-server-broken"
  ssh_username  = "admin"
}

build {
  sources = ["source.amazon-ebs.consul"]
}
