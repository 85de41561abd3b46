# ACLs on, default deny: a request without a token, or with a token whose policy does
# not name the resource, is refused. Every agent runs with it: the image's servers
# (scripts/install-consul.sh), and the local provider's clusters behind `make demo`
# and the end-to-end tests. The agent's tokens come from the secret store at boot
# (user-data.sh writes acl.tokens.agent into secure.hcl) or
# `consul acl set-agent-token`, never from this file.
# https://developer.hashicorp.com/consul/docs/reference/agent/configuration-file/acl
acl {
  enabled                  = true
  default_policy           = "deny"
  down_policy              = "extend-cache"
  enable_token_persistence = true
}
