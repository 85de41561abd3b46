package config

import (
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func parseFor(t *testing.T, jobs Jobs, src string) (*Config, error) {
	t.Helper()
	return ParseFor([]byte(src), "/etc/consul-rehydrate/deploy.hcl", jobs, nil)
}

func TestParseFor_DeployNeedsNoClusterServersOrProvider(t *testing.T) {
	c, err := parseFor(t, JobDeploy, `
deploy "web" {
  command = ["bin/deploy", "--fast"]
}
`)
	require.NoError(t, err)
	d := c.Deploy("web")
	require.NotNil(t, d)
	// A relative program resolves against the file's directory, and the rollback
	// command defaults to the deploy command.
	assert.Equal(t, []string{"/etc/consul-rehydrate/bin/deploy", "--fast"}, d.Command)
	assert.Equal(t, d.Command, d.RollbackCommand)
	assert.Equal(t, DefaultDeployTimeout, d.Timeout)
	assert.Equal(t, DefaultDeployHealthTimeout, d.HealthTimeout)
	assert.Equal(t, DefaultDeployMinHealthyTime, d.MinHealthyTime)
	assert.Nil(t, c.Deploy("api"))

	// The same file is not enough for the roll.
	_, err = parseFor(t, JobRoll, `deploy "web" { command = ["deploy"] }`)
	assertLines(t, []string{
		"/etc/consul-rehydrate/deploy.hcl:1:1: missing provider block",
		"/etc/consul-rehydrate/deploy.hcl:1:1: cluster is required",
		"/etc/consul-rehydrate/deploy.hcl:1:1: servers is required",
	}, err)
}

func TestParseFor_BareDeployProgramIsLeftForPATHLookup(t *testing.T) {
	c, err := parseFor(t, JobDeploy, `deploy "web" { command = ["deploy-web"] }`)
	require.NoError(t, err)
	assert.Equal(t, []string{"deploy-web"}, c.Deploy("web").Command)
	assert.False(t, filepath.IsAbs(c.Deploy("web").Command[0]))
}

func TestParseFor_RejectsBadDeployBlocksWithPositionAndKey(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want []string
	}{
		{"no deploy block", `log_level = "info"`, []string{
			`deploy.hcl:1:1: a deploy "<service>" block is required`,
		}},
		{"no command", `deploy "web" {}`, []string{
			`deploy.hcl:1:1: deploy.web.command is required`,
		}},
		{"empty program", `deploy "web" { command = [""] }`, []string{
			`deploy.hcl:1:16: deploy.web.command is required`,
		}},
		{"empty rollback program", `deploy "web" {
  command          = ["d"]
  rollback_command = []
}`, []string{
			`deploy.hcl:3:3: deploy.web.rollback_command is required`,
		}},
		{"command not a list", `deploy "web" { command = "deploy.sh" }`, []string{
			`deploy.hcl:1:27: invalid value for deploy.web.command: list of string required`,
		}},
		{"service unsafe in a key", `deploy "web/../x" { command = ["d"] }`, []string{
			`deploy.hcl:1:1: deploy service "web/../x" must be 1 to 63 characters`,
		}},
		{"duplicate", "deploy \"web\" { command = [\"d\"] }\ndeploy \"web\" { command = [\"e\"] }", []string{
			`deploy.hcl:2:1: duplicate deploy block for service "web": the first is at deploy.hcl:1:1`,
		}},
		{"bad durations", `deploy "web" {
  command          = ["d"]
  timeout          = "0s"
  health_timeout   = "soon"
  min_healthy_time = "-1s"
}`, []string{
			`deploy.hcl:3:3: deploy.web.timeout must be positive, got 0s`,
			`deploy.hcl:4:3: invalid duration "soon" for deploy.web.health_timeout`,
			`deploy.hcl:5:3: deploy.web.min_healthy_time must not be negative, got -1s`,
		}},
		{"min healthy time outlasts the health timeout", `deploy "web" {
  command          = ["d"]
  health_timeout   = "10s"
  min_healthy_time = "10s"
}`, []string{
			`deploy.hcl:4:3: deploy.web.min_healthy_time (10s) must be shorter than health_timeout (10s)`,
		}},
		{"unknown attribute", `deploy "web" {
  command = ["d"]
  comand  = ["d"]
}`, []string{
			`deploy.hcl:3:3: unsupported argument: an argument named "comand" is not expected here`,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseFor([]byte(tt.src), "deploy.hcl", JobDeploy, nil)
			assertLines(t, tt.want, err)
		})
	}
}

func TestParseFor_OneFileServesTheRollAndDeploys(t *testing.T) {
	c, err := parseFor(t, JobRoll|JobDeploy, minimal+`
deploy "web" {
  command        = ["/opt/web/deploy"]
  timeout        = "30s"
  health_timeout = "1m"
}
`)
	require.NoError(t, err)
	assert.Equal(t, "main", c.Cluster)
	assert.Equal(t, 30*time.Second, c.Deploy("web").Timeout)
	assert.Equal(t, time.Minute, c.Deploy("web").HealthTimeout)
}

func TestParseFor_DeployArtifactsAllowListAndRequireSHA256(t *testing.T) {
	c, err := parseFor(t, JobDeploy, `
deploy "web" {
  command        = ["d"]
  artifacts      = ["https://releases.example.com/web/*", "s3://releases/web/*.tar.gz", "file:///srv/web/*", "/srv/web/*"]
  require_sha256 = true
}
deploy "api" {
  command = ["d"]
}
`)
	require.NoError(t, err)
	assert.Equal(t, []string{"https://releases.example.com/web/*", "s3://releases/web/*.tar.gz", "file:///srv/web/*", "/srv/web/*"},
		c.Deploy("web").Artifacts)
	assert.True(t, c.Deploy("web").RequireSHA256)
	assert.Nil(t, c.Deploy("api").Artifacts, "unset: no allow-list")
	assert.False(t, c.Deploy("api").RequireSHA256)

	bad := []struct{ pattern, want string }{
		{"https://*.example.com/web/*", "the host must be spelled out, without wildcards"},
		{"https://releases.example.com?/web/*", "the host must be spelled out, without wildcards"},
		{"https:///web/*", "the host must be spelled out"},
		{"*://releases.example.com/web/*", "the scheme must be spelled out"},
		{"https://releases.example.com", "the host must be followed by a path"},
		{"https://releases.example.com/web/[", "not a path.Match pattern"},
		{"https://releases.example.com/web/../*", `".." is not allowed`},
		{"", "want a URL or path pattern"},
		{"https://releases.example.com/web/ *", "want a URL or path pattern"},
		{"https://releases.example.com/web/\t*", "want a URL or path pattern"},
	}
	for _, b := range bad {
		t.Run(b.pattern, func(t *testing.T) {
			_, err := ParseFor([]byte(`deploy "web" {
  command   = ["d"]
  artifacts = ["https://releases.example.com/ok/*", `+strconv.Quote(b.pattern)+`]
}`), "deploy.hcl", JobDeploy, nil)
			assertLines(t, []string{`deploy.hcl:3:3: deploy.web.artifacts[1] ` + strconv.Quote(b.pattern) + `: ` + b.want}, err)
		})
	}

	_, err = ParseFor([]byte(`deploy "web" {
  command        = ["d"]
  require_sha256 = "yes"
}`), "deploy.hcl", JobDeploy, nil)
	assertLines(t, []string{`deploy.hcl:3:21: invalid value for deploy.web.require_sha256: a bool is required`}, err)
}

func TestParseFor_DeployNodeFilter(t *testing.T) {
	c, err := parseFor(t, JobDeploy, `
deploy "web" {
  command     = ["d"]
  node_filter = "NodeMeta.pool == \"blue\" and Node matches \"^web-\""
}
deploy "api" {
  command = ["d"]
}
`)
	require.NoError(t, err)
	assert.Equal(t, `NodeMeta.pool == "blue" and Node matches "^web-"`, c.Deploy("web").NodeFilter)
	assert.Empty(t, c.Deploy("api").NodeFilter, "unset: every node of the service")

	// A filter Consul would not parse is refused at load, at its line, with go-bexpr's
	// own reason (the parser Consul filters with).
	bad := []struct{ filter, want string }{
		{`Node ===`, "1:8 (7): no match found"},
		{`Node == "web`, "Unterminated string literal"},
		{`(Node == "web"`, "Unmatched parentheses"},
		{`Node matches "("`, "error parsing regexp"},
		{`NodeMeta[pool] == "blue"`, "Invalid index"},
		{`ServicePort == 80x`, "Invalid number literal"},
		{`Node == "web" and`, "no match found"},
		{` `, "no match found"},
	}
	for _, b := range bad {
		t.Run(b.filter, func(t *testing.T) {
			_, err := ParseFor([]byte(`deploy "web" {
  command     = ["d"]
  node_filter = `+strconv.Quote(b.filter)+`
}`), "deploy.hcl", JobDeploy, nil)
			assertLines(t, []string{`deploy.hcl:3:3: deploy.web.node_filter ` + strconv.Quote(b.filter) + ` is not a Consul filter expression: `}, err)
			assert.Contains(t, err.Error(), b.want)
		})
	}
}
