# The depending side: the reconfigure handler in a service watch on "monitoring",
# and the check that judges what the handler saw. Install it on every node whose
# configuration follows monitoring, with a reconfigure "monitoring" block in
# /etc/consul-rehydrate/reconfigure.hcl (see config/example-reconfigure.hcl).
#
# The watch fires whenever an instance of monitoring comes, goes or changes health;
# the handler re-renders the file and runs the reload command only when the content
# changed. Whether a replacement came in time, or a new instance flapped during its
# probation, depends on the clock as much as on changes, so the agent runs the same
# program as a check every interval: critical when no healthy instance came back
# within expect_replacement, or when the last run could not bring the file up to
# date (its render, write or reload failed: the file stays as the last good run left
# it, and the check stays critical until a run succeeds); warning while one is
# expected, after a flap, or while a healthy instance is refused (a control
# character in a field, or an address that is no IP or hostname: it is left out of
# the file and named in the check's output).
#
# The reload command runs with a scrubbed environment: PATH, HOME, USER, LOGNAME,
# LANG, LANGUAGE, LC_*, TZ, TMPDIR, SSL_CERT_FILE and SSL_CERT_DIR of the agent's,
# and REHYDRATE_RECONFIGURE_FILE and _INSTANCES; never the agent's
# CONSUL_HTTP_TOKEN or AWS credentials.
#
# The check is a node check: when critical, the agent fails every service on this
# node, which takes them out of DNS. To warn about monitoring without that, add
# service_id = "<a service of this node>" to the check, or alert on it instead.

# Script checks defined in the agent's own files only (not through the API).
enable_local_script_checks = true

watches = [
  {
    type    = "service"
    service = "monitoring"
    args    = ["/opt/consul-rehydrate/bin/reconfigure", "-config", "/etc/consul-rehydrate/reconfigure.hcl", "-name", "monitoring"]
  },
]

check {
  id       = "reconfigure-monitoring"
  name     = "monitoring is where it should be"
  args     = ["/opt/consul-rehydrate/bin/reconfigure", "-config", "/etc/consul-rehydrate/reconfigure.hcl", "-name", "monitoring", "-check"]
  interval = "10s"
  timeout  = "5s"
}
