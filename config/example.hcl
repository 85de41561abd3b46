# consul-rehydrate configuration: every setting, with its default.
#
# Every handler (spinup, spindown, deploy, reconfigure, rehydrate) reads this
# one file. Unknown settings are errors. Durations are strings such as "10s",
# "2m" or "1h30m". Relative paths resolve against this file's directory.

# The cluster's name. Coordination data lives in Consul KV under
# rehydrate/<cluster>/. Required; 1 to 63 characters of a-z, 0-9, - and _.
cluster = "main"

# How many Consul servers the cluster should have: an odd number from 1 to 7,
# usually 3 or 5. A roll briefly runs one more. Required.
servers = 3

# trace, debug, info, warn or error.
log_level = "info"

# How handlers reach the local Consul agent's HTTP API. The block is optional.
consul {
  # host:port (or http://, https://, unix:// addresses). If this line is
  # absent, $CONSUL_HTTP_ADDR is used when set; the file wins over it. So it
  # is for every setting of this block: each one the file leaves out comes from
  # the consul CLI's variable when that is set (the agent hands a watch handler
  # its own), and the file wins.
  address = "127.0.0.1:8500"

  # http or https. Left out: https when the address starts with https:// or
  # $CONSUL_HTTP_SSL is true.
  scheme = "http"

  # Empty means the agent's own datacenter.
  datacenter = ""

  # The ACL token. Prefer token_file: a token written here ends up in backups
  # and diffs. token and token_file are mutually exclusive; with neither,
  # $CONSUL_HTTP_TOKEN_FILE is used, else $CONSUL_HTTP_TOKEN, else no token.
  # The token file must be readable and writable by its owner only (chmod 600):
  # one that group or others may read or write is refused.
  # token_file = "/etc/consul-rehydrate/consul.token"

  # TLS for the HTTP API, when scheme = "https". Files must exist. Left out:
  # ca_file from $CONSUL_CACERT, cert_file and key_file from $CONSUL_CLIENT_CERT
  # and $CONSUL_CLIENT_KEY (as a pair, only when the file sets neither), and
  # server_name from $CONSUL_TLS_SERVER_NAME.
  # tls {
  #   ca_file              = "/etc/consul.d/tls/consul-agent-ca.pem"
  #   cert_file            = "/etc/consul.d/tls/client.pem"
  #   key_file             = "/etc/consul.d/tls/client-key.pem"
  #   server_name          = "localhost"
  #   insecure_skip_verify = false
  # }
}

# The session lock that lets only one handler act at a time.
lock {
  # The session's TTL: from 10s to 24h (Consul's limits).
  session_ttl = "15s"
  # How long Consul keeps the lock after its holder's session is invalidated:
  # from 0s to 60s.
  lock_delay = "5s"
  # How long a handler waits for the lock before giving up. It must be more
  # than 2 x session_ttl + lock_delay: Consul invalidates a crashed holder's
  # session up to twice its TTL late, then holds the lock for lock_delay, and the
  # handlers woken with the crashed one must still be waiting then.
  wait = "45s"
}

# The roll: replacing servers one at a time.
roll {
  # The Consul user event that starts or continues a roll. It must match the
  # event watch in the agent's configuration.
  event_name = "consul-rehydrate"
  # How long a new server must be a healthy voter before an old one is
  # retired. Matches Consul autopilot's server_stabilization_time.
  stabilization = "10s"
  # How long a new server may take to become a healthy voter. After that it
  # is terminated and its image marked bad.
  launch_timeout = "10m"
  # How long a retiring server may take to leave gracefully.
  leave_timeout = "2m"
  # How long a roll in progress may go without taking a step before
  # `rehydrate check` warns; after launch_timeout it is critical.
  # Default: half of launch_timeout.
  stuck_warning = "5m"
  # How far behind the leader's log a new server may be and still count as
  # caught up. Matches Consul autopilot's max_trailing_logs.
  max_trailing_logs = 250
  # Whether a roll may move the cluster to an older image than it runs.
  allow_downgrade = false
  # How often bounded waits re-check the cluster.
  poll_interval = "1s"
}

# Where servers come from: exactly one provider block, labelled "local" or
# "aws". "local" runs each server as a consul process on its own loopback
# address: the demo and the end-to-end tests use it.
provider "local" {
  # Images, instances and their data live here. Required.
  state_dir = "/var/lib/consul-rehydrate/local"
  # The consul executable. A bare name is looked up on PATH when a server is
  # started, not when this file is loaded.
  consul_binary = "consul"
  # The loopback network servers take their addresses from: inside
  # 127.0.0.0/8, with room for servers + 1 addresses.
  addresses = "127.0.1.0/24"
}
