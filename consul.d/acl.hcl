# ACLs on, default deny. Kept apart from server.hcl so the local provider's
# throwaway clusters (make demo, the end-to-end tests) can run without tokens; every
# real server installs it. The agent token comes from the environment or
# `consul acl set-agent-token`, never from this file.
acl {
  enabled                  = true
  default_policy           = "deny"
  down_policy              = "extend-cache"
  enable_token_persistence = true
}
