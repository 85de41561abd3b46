# consul-rehydrate configuration of a node that reconfigures itself when a service's
# healthy instances change: the reconfigure handler's file (see
# consul.d/reconfigure-watch.hcl for the watch and the check that run it).

# One block per rendered file, labelled with a name; the handler's -name flag picks
# the block when the file has more than one.
reconfigure "monitoring" {
  # The Consul service whose healthy instances (every check passing) are rendered.
  # Default: the label.
  service = "prometheus"

  # A Go text/template over .Service and .Instances, each with .Node, .Address,
  # .Port, .ID, .Tags, .Meta, .NodeMeta and .Datacenter. Instances are sorted by
  # node, then ID. Or template_file = "monitoring.tmpl" (relative to this file). A
  # template that does not parse is a configuration error naming its line.
  #
  # Every field comes from whoever may register the service or a node, so:
  # - A healthy instance with a control character (a line break, a tab, an escape)
  #   or invalid UTF-8 in any field, or whose .Address (the service's, else its
  #   node's) is neither an IP address nor an RFC 1123 hostname, is refused: left
  #   out of the file, and named with the field in the handler's log and the
  #   check's output (a warning).
  # - Other characters still mean something to the file's reader (a space, #, ", ').
  #   Quote what is not .Address or .Port:
  #     quote "s"       a JSON string "…", also a YAML double-quoted string
  #                     (prometheus.yml, file_sd JSON)
  #     json .Meta      any value as JSON, e.g. a labels object for file_sd
  #     shellquote "s"  a POSIX shell word '…', for a script
  #     hclquote "s"    an HCL string "…", ${ and %{ escaped
  #     join .Tags ","  strings.Join
  #   nginx has no escape for $ in its strings: render only .Address and .Port there.
  # - A meta key an instance lacks is "" ({{ .Meta.k }} as {{ index .Meta "k" }}), so
  #   one instance registered without it does not fail the render for the others;
  #   test it with {{ with .Meta.k }}…{{ end }}.
  # - A render that fails (e.g. {{ index .Instances 0 }} with none healthy) keeps the
  #   previous file and turns the check critical, naming the error, until a render
  #   succeeds; so does a failed write or reload.
  template = <<-EOT
    # rendered by consul-rehydrate from the healthy instances of {{ .Service }}
    {{- range .Instances }}
    target {{ quote .Node }} {{ .Address }}:{{ .Port }}{{ if .Tags }} tags={{ quote (join .Tags ",") }}{{ end }}
    {{- end }}
    EOT

  # The rendered file: written atomically (a temporary file in the same directory,
  # then a rename), and only when its content changes. Required.
  destination = "/etc/app/monitoring.conf"

  # Its mode, in octal. Unset, an existing file keeps its mode; a new one gets 0644.
  mode = "0640"

  # Run after the file changed (argv, no shell); never when it did not. If it fails
  # or times out, the previous file is put back, and the next change tries again.
  # Unset, nothing runs.
  reload_command = ["/bin/systemctl", "reload", "app"]
  reload_timeout = "30s"

  # When the last healthy instance goes, the file is rendered with none, and a
  # replacement is expected within this long; after that the check is critical.
  expect_replacement = "10m"

  # A new instance is watched this long; if it leaves (fails or goes) within it,
  # the check warns until it has been steady for this long again.
  probation = "5m"

  # What the handler saw, for the check to judge. Default:
  # /var/lib/consul-rehydrate/reconfigure/<label>.json
  state_file = "/var/lib/consul-rehydrate/reconfigure/monitoring.json"
}
