# A service deployed node by node from Consul KV: the "web" service with an HTTP
# check, and the deploy handler's key watch. Install it on every node that runs web,
# with NODE_NAME replaced by the agent's node_name (user-data knows it: the watch
# must name this node's key, and agent configuration has no variables).
#
# `rehydrate deploy start --service web --version v2` writes each node's desired key
# in turn; the handler here puts web in maintenance, runs the deploy command (see
# deploy "web" in /etc/consul-rehydrate/deploy.hcl), takes it out of maintenance and
# waits for the check below to pass. Load balancers that follow Consul (DNS
# web.service.consul, consul-template, a service mesh) stop sending traffic to the
# node as soon as it enters maintenance.
#
# Whoever may write this node's desired key may run code on it: the deploy command
# runs with the version, artifact and sha256 they choose. The handler holds them to
# the deploy block (a plain version; the artifacts allow-list and require_sha256, see
# config/example-deploy.hcl), and consul.d/acl/deploy-handler.hcl, rendered for this
# node, lets this node's token only read its own desired key.

service {
  name = "web"
  port = 8080
  meta = {
    deployed_by = "consul-rehydrate"
  }
  check {
    id       = "web-http"
    name     = "web answers HTTP"
    http     = "http://127.0.0.1:8080/health"
    interval = "1s"
    timeout  = "1s"
  }
}

watches = [
  {
    type = "key"
    key  = "deploy/web/nodes/NODE_NAME/desired"
    args = ["/opt/consul-rehydrate/bin/deploy", "-config", "/etc/consul-rehydrate/deploy.hcl"]
  },
]
