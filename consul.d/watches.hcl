# The watches that drive the roll. Every server runs both; the handlers coordinate
# through a session lock in KV, so only one acts at a time.
watches = [
  {
    # `rehydrate fire` or `consul event -name consul-rehydrate '{"image_id":"ami-..."}'`
    type = "event"
    name = "consul-rehydrate"
    args = ["/opt/consul-rehydrate/bin/spinup", "-config", "/etc/consul-rehydrate/config.hcl"]
  },
  {
    # Fires when servers join, leave or change health: the roll's next step.
    type    = "service"
    service = "consul"
    args    = ["/opt/consul-rehydrate/bin/spindown", "-config", "/etc/consul-rehydrate/config.hcl"]
  },
]
