# Builds the Consul server image that the rehydrate handlers launch.
#
# The handlers pick the newest image owned by "self" whose name matches
# "consul-server-*" and whose tags include role = "consul-server"
# (config/example-aws.hcl): keep image_name_prefix and image_tags in step with
# the `image` block of the handlers' configuration.
#
# Needs `make build` first: the handler binaries are uploaded from ../bin/.
# With -var fire_after_build=true (and -var rehydrate_config=FILE), ../bin/rehydrate
# then asks the cluster to roll to the new image (fire-after-build.sh).
# `packer validate` does not run the amazon-ami data source (no AWS calls)
# unless -evaluate-datasources is given.

packer {
  required_version = ">= 1.12.0"
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = "~> 1.3"
    }
  }
}

variable "region" {
  description = "AWS region the image is built in (and registered to)."
  type        = string
  default     = "eu-west-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-[a-z]+)+-[0-9]+$", var.region))
    error_message = "The region must look like an AWS region name, e.g. \"eu-west-1\"."
  }
}

variable "instance_type" {
  description = "EC2 instance type of the temporary build instance."
  type        = string
  default     = "t3.small"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", var.instance_type))
    error_message = "The instance_type must look like an EC2 instance type, e.g. \"t3.small\"."
  }
}

variable "subnet_id" {
  description = "Subnet to launch the build instance in. Empty: the default VPC's default subnet."
  type        = string
  default     = ""

  validation {
    condition     = var.subnet_id == "" || can(regex("^subnet-[0-9a-f]+$", var.subnet_id))
    error_message = "The subnet_id must be empty or a subnet ID, e.g. \"subnet-0123456789abcdef0\"."
  }
}

variable "vpc_id" {
  description = "VPC of subnet_id, for the temporary security group. Empty: derived from subnet_id, or the default VPC."
  type        = string
  default     = ""

  validation {
    condition     = var.vpc_id == "" || can(regex("^vpc-[0-9a-f]+$", var.vpc_id))
    error_message = "The vpc_id must be empty or a VPC ID, e.g. \"vpc-0123456789abcdef0\"."
  }
}

variable "consul_version" {
  description = "Consul release installed in the image (passed to install-consul.sh as CONSUL_VERSION)."
  type        = string
  default     = "1.22.3"

  validation {
    condition     = can(regex("^[0-9]+\\.[0-9]+\\.[0-9]+(-[0-9A-Za-z.]+)?(\\+ent)?$", var.consul_version))
    error_message = "The consul_version must be a release version such as \"1.22.3\", without a leading \"v\"."
  }
}

variable "image_name_prefix" {
  description = "Image names are \"<prefix>-<UTC timestamp>\"; the handlers' name_pattern must match them."
  type        = string
  default     = "consul-server"

  validation {
    condition     = can(regex("^[A-Za-z0-9()\\[\\]./'@_-]{3,100}$", var.image_name_prefix))
    error_message = "The image_name_prefix must be 3-100 characters allowed in AMI names (letters, digits, ()[]./'@_-)."
  }
}

variable "image_tags" {
  description = "Tags put on the image and its snapshots; the handlers' image filter `tags` selects on them. consul_version is added."
  type        = map(string)
  default = {
    role = "consul-server"
  }

  validation {
    condition     = alltrue([for k in keys(var.image_tags) : length(regexall("^(?i)aws:", k)) == 0])
    error_message = "Tag keys may not start with \"aws:\"."
  }
}

variable "fire_after_build" {
  description = "After a successful build, run `rehydrate fire --image <the new AMI>` from this machine (packer/fire-after-build.sh). Off by default: the EventBridge trigger can start the roll instead."
  type        = bool
  default     = false
}

variable "rehydrate_config" {
  description = "The handlers' configuration file `rehydrate fire` reads (its -config) when fire_after_build is set. Default: $REHYDRATE_CONFIG, as for rehydrate itself."
  type        = string
  default     = env("REHYDRATE_CONFIG")

  validation {
    condition     = var.rehydrate_config == "" ? true : fileexists(var.rehydrate_config)
    error_message = "The rehydrate_config must name an existing file (the configuration `rehydrate fire` reads)."
  }
}

locals {
  # Packer's variable validation may refer to its own variable only, and Packer has no
  # assertion function, so the pair is checked here: file() of a sentence fails the run,
  # at validate as at build, with the sentence in its error ("no file exists at ..."),
  # before a build of several minutes is spent.
  fire_after_build = var.fire_after_build && var.rehydrate_config == "" ? file("ERROR: fire_after_build=true needs rehydrate_config=FILE or $REHYDRATE_CONFIG") : var.fire_after_build
  manifest         = "${path.root}/packer-manifest.json"
}

locals {
  # formatdate needs a fixed timestamp: timestamp() is evaluated once per run.
  build_time = formatdate("YYYYMMDDhhmmss", timestamp())
  image_tags = merge(var.image_tags, {
    consul_version = var.consul_version
  })
}

data "amazon-ami" "base" {
  region      = var.region
  owners      = ["136693071363"] # Debian
  most_recent = true

  filters = {
    name                = "debian-12-amd64-*"
    architecture        = "x86_64"
    root-device-type    = "ebs"
    virtualization-type = "hvm"
  }
}

source "amazon-ebs" "consul" {
  region        = var.region
  instance_type = var.instance_type
  subnet_id     = var.subnet_id
  vpc_id        = var.vpc_id
  source_ami    = data.amazon-ami.base.id

  ami_name        = "${var.image_name_prefix}-${local.build_time}"
  ami_description = "Consul ${var.consul_version} server on Debian 12 (${data.amazon-ami.base.name})"
  tags            = local.image_tags
  snapshot_tags   = local.image_tags
  run_tags        = merge(local.image_tags, { Name = "packer-${var.image_name_prefix}" })

  # The build instance and every instance launched from the image: IMDSv2 only.
  imds_support = "v2.0"
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  ssh_username = "admin"
}

build {
  name    = "consul-server"
  sources = ["source.amazon-ebs.consul"]

  # The file provisioner uploads a directory's contents ("dir/") only into a
  # destination directory that already exists.
  provisioner "shell" {
    inline = ["mkdir -p /tmp/bin /tmp/consul.d /tmp/scripts"]
  }

  provisioner "file" {
    source      = "${path.root}/../bin/"
    destination = "/tmp/bin"
  }

  provisioner "file" {
    source      = "${path.root}/../consul.d/"
    destination = "/tmp/consul.d"
  }

  provisioner "file" {
    source      = "${path.root}/../scripts/"
    destination = "/tmp/scripts"
  }

  provisioner "shell" {
    environment_vars = ["CONSUL_VERSION=${var.consul_version}"]
    execute_command  = "chmod +x {{ .Path }}; sudo env {{ .Vars }} {{ .Path }}"
    inline = [
      "chmod +x /tmp/scripts/install-consul.sh",
      "/tmp/scripts/install-consul.sh",
    ]
  }

  # The handlers, `rehydrate leave` (consul.service's stop) and the termination gate
  # `lifecycle` with its unit, rehydrate-lifecycle.service: enabled, so it starts with
  # Consul on every server launched from the image; not started here.
  provisioner "shell" {
    execute_command = "chmod +x {{ .Path }}; sudo env {{ .Vars }} {{ .Path }}"
    inline = [
      "chmod +x /tmp/scripts/install-handlers.sh",
      "/tmp/scripts/install-handlers.sh",
    ]
  }

  # The image carries no secret: the gossip key, TLS certificate and key and the ACL
  # tokens come from the secret store at boot (scripts/user-data.sh). Fail the build
  # if any found its way into the agent's configuration, and leave no upload behind.
  provisioner "shell" {
    execute_command = "chmod +x {{ .Path }}; sudo env {{ .Vars }} {{ .Path }}"
    inline = [
      "rm -rf /tmp/bin /tmp/consul.d /tmp/scripts",
      "if grep -rlE '^[[:space:]]*(encrypt|ca_file|cert_file|key_file|agent|default|initial_management)[[:space:]]*=' /etc/consul.d /etc/consul-rehydrate; then echo 'secrets baked into the image' >&2; exit 1; fi",
      "if find /etc/consul.d /etc/consul-rehydrate -name '*.pem' -o -name '*.token' -o -name secure.hcl -o -name node.hcl | grep .; then echo 'secrets baked into the image' >&2; exit 1; fi",
    ]
  }

  # One chain, so the manifest is written before the roll is fired: the AMI id reaches
  # the fire step only through it. A post-processor's build.ID is the temporary build
  # instance, not the image (packer-plugin-sdk's PopulateProvisionHookData sets ID from
  # "instance_id"), and shell-local passes no artifact id to its script
  # (packer-plugin-sdk shell-local/run.go); the manifest records each build's
  # artifact_id, "<region>:<ami id>" for amazon-ebs (packer-plugin-amazon
  # builder/common/artifact.go, Artifact.Id), with the run's PACKER_RUN_UUID.
  post-processors {
    post-processor "manifest" {
      output     = local.manifest
      strip_path = true
      custom_data = {
        consul_version = var.consul_version
      }
    }

    # Present only with -var fire_after_build=true. The values reach the script as
    # environment variables, which shell-local quotes, never spliced into a command.
    dynamic "post-processor" {
      for_each = local.fire_after_build ? ["fire"] : []
      labels   = ["shell-local"]
      content {
        script          = "${path.root}/fire-after-build.sh"
        execute_command = ["/bin/sh", "-c", "{{.Vars}} /bin/sh '{{.Script}}'"]
        environment_vars = [
          "REHYDRATE_BIN=${path.root}/../bin/rehydrate",
          "REHYDRATE_CONFIG=${var.rehydrate_config}",
          "MANIFEST=${local.manifest}",
          "BUILD_REGION=${var.region}",
        ]
      }
    }
  }
}
