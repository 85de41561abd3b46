package config

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseFor_ReconfigureDefaultsAndTemplateFile(t *testing.T) {
	dir := t.TempDir()
	write(t, filepath.Join(dir, "tmpl", "lb.tmpl"), "{{ range .Instances }}{{ .Address }}\n{{ end }}")
	write(t, filepath.Join(dir, "c.hcl"), `reconfigure "lb" {
  template_file = "tmpl/lb.tmpl"
  destination   = "out/lb.conf"
}
`)
	c, err := LoadFor(filepath.Join(dir, "c.hcl"), JobReconfigure, nil)
	require.NoError(t, err)
	r := c.Reconfigure("lb")
	require.NotNil(t, r)
	assert.Equal(t, "lb", r.Service, "the service defaults to the label")
	assert.Equal(t, filepath.Join(dir, "tmpl", "lb.tmpl"), r.TemplateFile)
	assert.Equal(t, r.TemplateFile, r.TemplateName())
	assert.Equal(t, "{{ range .Instances }}{{ .Address }}\n{{ end }}", r.Template)
	assert.Equal(t, filepath.Join(dir, "out", "lb.conf"), r.Destination)
	assert.Equal(t, os.FileMode(0), r.Mode, "unset: keep the file's mode")
	assert.Nil(t, r.ReloadCommand)
	assert.Equal(t, DefaultReconfigureReloadTimeout, r.ReloadTimeout)
	assert.Equal(t, DefaultReconfigureExpectReplacement, r.ExpectReplacement)
	assert.Equal(t, DefaultReconfigureProbation, r.Probation)
	assert.Equal(t, filepath.Join(DefaultReconfigureStateDir, "lb.json"), r.StateFile)
	assert.Nil(t, c.Reconfigure("other"))
}

func TestParseFor_RejectsBadReconfigureBlocksWithPositionAndKey(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want []string
	}{
		{"no block", `log_level = "info"`, []string{
			`r.hcl:1:1: a reconfigure "<name>" block is required`,
		}},
		{"nothing to render and nowhere", `reconfigure "lb" {}`, []string{
			`r.hcl:1:1: reconfigure.lb.template or template_file is required`,
			`r.hcl:1:1: reconfigure.lb.destination is required`,
		}},
		{"template that does not parse", `reconfigure "lb" {
  destination = "/tmp/lb.conf"
  template    = <<EOT
upstream {
{{ range .Instances }}
EOT
}`, []string{
			`r.hcl:3:3: reconfigure.lb.template does not parse: template: reconfigure.lb.template:3: unexpected EOF`,
		}},
		{"template calling an unknown function", `reconfigure "lb" {
  destination = "/tmp/lb.conf"
  template    = "{{ upper .Service }}"
}`, []string{
			`r.hcl:3:3: reconfigure.lb.template does not parse: template: reconfigure.lb.template:1: function "upper" not defined`,
		}},
		{"both template and template_file", `reconfigure "lb" {
  destination   = "/tmp/lb.conf"
  template      = "x"
  template_file = "/tmp/x.tmpl"
}`, []string{
			`r.hcl:4:3: reconfigure.lb.template and template_file are mutually exclusive`,
		}},
		{"missing template file", `reconfigure "lb" {
  destination   = "/tmp/lb.conf"
  template_file = "/nonexistent/x.tmpl"
}`, []string{
			`r.hcl:3:3: reconfigure.lb.template_file: open /nonexistent/x.tmpl: no such file or directory`,
		}},
		{"bad mode, empty reload, bad durations", `reconfigure "lb" {
  template           = "x"
  destination        = "/tmp/lb.conf"
  mode               = "rw-r--r--"
  reload_command     = []
  expect_replacement = "0s"
  probation          = "later"
}`, []string{
			`r.hcl:4:3: invalid reconfigure.lb.mode "rw-r--r--": want an octal permission such as "0644"`,
			`r.hcl:5:3: reconfigure.lb.reload_command must name a program, or be left out`,
			`r.hcl:6:3: reconfigure.lb.expect_replacement must be positive, got 0s`,
			`r.hcl:7:3: invalid duration "later" for reconfigure.lb.probation`,
		}},
		{"service unsafe", `reconfigure "lb" {
  service     = "web/x"
  template    = "x"
  destination = "/tmp/lb.conf"
}`, []string{
			`r.hcl:2:3: reconfigure.lb.service "web/x" must be a service name`,
		}},
		{"duplicate", "reconfigure \"lb\" {\n  template = \"x\"\n  destination = \"/tmp/a\"\n}\nreconfigure \"lb\" {\n  template = \"x\"\n  destination = \"/tmp/a\"\n}", []string{
			`r.hcl:5:1: duplicate reconfigure block "lb": the first is at r.hcl:1:1`,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseFor([]byte(tt.src), "r.hcl", JobReconfigure, nil)
			assertLines(t, tt.want, err)
		})
	}
}
