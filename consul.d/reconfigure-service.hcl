# The watched side of a reconfiguration: a "monitoring" service with an HTTP check, on
# every node that provides it. Nodes that depend on it run the reconfigure handler
# (consul.d/reconfigure-watch.hcl), which re-renders their configuration from its
# healthy instances. The check decides what "healthy" means: an instance whose check
# fails leaves the rendered files, the health API
# (/v1/health/service/monitoring?passing) and DNS (monitoring.service.consul) at once.
#
# Other nodes can also look it up by DNS through their local agent (port 8600):
#   dig @127.0.0.1 -p 8600 monitoring.service.consul          A records, healthy only
#   dig @127.0.0.1 -p 8600 monitoring.service.consul SRV      with ports and node names
# A script check works the same way (like an Elasticsearch cluster-health check):
#   check { args = ["/usr/local/bin/check-es-health"], interval = "10s" }
# which needs enable_local_script_checks = true on the agent.

service {
  name = "monitoring"
  port = 9090
  tags = ["prometheus"]
  check {
    id       = "monitoring-http"
    name     = "monitoring answers HTTP"
    http     = "http://127.0.0.1:9090/health"
    interval = "1s"
    timeout  = "1s"
  }
}
