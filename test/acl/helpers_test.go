package acl

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	consuld "github.com/consul-rehydrate/consul-rehydrate/consul.d"
	"github.com/consul-rehydrate/consul-rehydrate/test/testcluster"
)

// startACLCluster starts a secure cluster (testcluster.Options.Secure): the shipped
// consul.d/acl.hcl (ACLs on, default deny), gossip encryption, TLS and the API on
// HTTPS only, each agent holding a node identity, and management as the harness's
// token.
func startACLCluster(t *testing.T, opts testcluster.Options) *testcluster.Cluster {
	t.Helper()
	opts.Secure = true
	opts.Token = management
	return testcluster.Start(t, opts)
}

// policyToken renders the policy template name with v, creates it (Consul parses the
// rules) under a name unique to v, and returns the secret of a new token holding only it.
func policyToken(t *testing.T, admin *api.Client, name string, v consuld.PolicyVars) string {
	t.Helper()
	rules, err := consuld.RenderPolicy(name, v)
	require.NoError(t, err)
	pname := strings.Join(nonEmpty(name, v.Cluster, v.Service, v.Node), "-")
	p, _, err := admin.ACL().PolicyCreate(&api.ACLPolicy{Name: pname, Rules: rules}, nil)
	require.NoError(t, err, "the rendered %s parses as Consul ACL rules", name)
	tok, _, err := admin.ACL().TokenCreate(&api.ACLToken{Description: pname, Policies: []*api.ACLTokenPolicyLink{{ID: p.ID}}}, nil)
	require.NoError(t, err)
	return tok.SecretID
}

// bareToken returns the secret of a new token with no policy.
func bareToken(t *testing.T, admin *api.Client) string {
	t.Helper()
	tok, _, err := admin.ACL().TokenCreate(&api.ACLToken{Description: "no policy"}, nil)
	require.NoError(t, err)
	return tok.SecretID
}

func nonEmpty(ss ...string) []string {
	var out []string
	for _, s := range ss {
		if s != "" {
			out = append(out, s)
		}
	}
	return out
}

// as returns an API client of agent a (HTTPS, verified with the cluster's CA) that
// sends token.
func as(t *testing.T, a *testcluster.Agent, token string) *api.Client {
	t.Helper()
	cfg := api.DefaultConfig()
	cfg.Address, cfg.Scheme, cfg.Token, cfg.TokenFile = a.HTTPSAddr(), "https", token, ""
	cfg.TLSConfig = api.TLSConfig{CAFile: a.Cluster().CAFile()}
	c, err := api.NewClient(cfg)
	require.NoError(t, err)
	return c
}

// assertDenied asserts that err is Consul's ACL refusal (HTTP 403) and, unless perm is
// "", that it names the permission perm ("key:write", "session:write", …). Some
// endpoints answer a bare 403 (session renew) or "Permission denied" without the
// permission (event fire).
func assertDenied(t *testing.T, err error, perm string, what string) {
	t.Helper()
	if assert.Error(t, err, "%s must be refused", what) {
		assert.Contains(t, err.Error(), "Unexpected response code: 403", what)
		if perm != "" {
			assert.Contains(t, err.Error(), "Permission denied", what)
			assert.Contains(t, err.Error(), "'"+perm+"'", what)
		}
	}
}

// otherSession creates, as the management token, a session on node: another
// application's lock, which a scoped token must not be able to destroy.
func otherSession(t *testing.T, admin *api.Client, node string) string {
	t.Helper()
	id, _, err := admin.Session().Create(&api.SessionEntry{Node: node, Name: "another application's lock", TTL: "10m"}, nil)
	require.NoError(t, err)
	return id
}

// assertSessionLives asserts that session id still exists.
func assertSessionLives(t *testing.T, admin *api.Client, id string) {
	t.Helper()
	s, _, err := admin.Session().Info(id, nil)
	require.NoError(t, err)
	assert.NotNil(t, s, "session %s still exists", id)
}

// waitKnown waits until each agent knows each token from its own state. A follower
// server resolves tokens from its own replica, which may lag the write that created
// them, and a plain read of the token is forwarded to the leader, which knows it at
// once: so the read is stale, answered by the agent's own server (a client's by the
// server it forwards to).
func waitKnown(t *testing.T, agents []*testcluster.Agent, tokens ...string) {
	t.Helper()
	for _, a := range agents {
		for _, tok := range tokens {
			testcluster.WaitFor(t, 10*time.Second, "the token on "+a.Name, func() (bool, string) {
				if _, _, err := as(t, a, tok).ACL().TokenReadSelf(&api.QueryOptions{AllowStale: true}); err != nil {
					return false, err.Error()
				}
				return true, ""
			})
		}
	}
}

// leaveConfig writes the handlers' configuration `rehydrate leave` runs with in these
// tests (consul.service's ExecStop names one): this cluster, an aws provider that the
// leave never calls.
func leaveConfig(t *testing.T) string {
	t.Helper()
	cfg := filepath.Join(t.TempDir(), "config.hcl")
	require.NoError(t, os.WriteFile(cfg, []byte(`cluster = "acl"
servers = 3
roll {
  leave_timeout = "30s"
}
provider "aws" {
  region            = "us-east-1"
  autoscaling_group = "consul-servers"
  launch_template   = "consul-server"
  image {
    name_pattern = "consul-server-*"
  }
}
`), 0o644))
	return cfg
}
