package acl

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/consul-rehydrate/consul-rehydrate/internal/app"
	"github.com/consul-rehydrate/consul-rehydrate/internal/command"
	"github.com/consul-rehydrate/consul-rehydrate/internal/deploy"
	"github.com/consul-rehydrate/consul-rehydrate/test/testcluster"
)

// TestDeployPolicies_AreEnoughForARolloutAndATokenWithoutThemIsRefused runs a rollout of "web" to
// one node on a cluster with ACLs on and default deny: the rollout with a token of
// consul.d/acl/deploy-rollout.hcl, the node's handler with one of
// consul.d/acl/deploy-handler.hcl. Tokens without them are refused and change nothing.
func TestDeployPolicies_AreEnoughForARolloutAndATokenWithoutThemIsRefused(t *testing.T) {
	aclHCL, err := os.ReadFile("../../consul.d/acl.hcl")
	require.NoError(t, err)
	c := testcluster.Start(t, testcluster.Options{
		Servers: 1, Clients: 1, Token: management,
		Files: func(*testcluster.Agent) map[string]string {
			return map[string]string{
				"acl.hcl":        string(aclHCL),
				"acl-tokens.hcl": fmt.Sprintf("acl { tokens { initial_management = %q\nagent = %q } }\n", management, management),
			}
		},
	})
	node := c.Clients[0]
	admin := node.Client()
	require.NoError(t, admin.Agent().ServiceRegister(&api.AgentServiceRegistration{
		Name: "web", Port: 8080, Check: &api.AgentServiceCheck{CheckID: "web-ttl", TTL: "10m", Status: api.HealthPassing},
	}))
	testcluster.WaitFor(t, 20*time.Second, "web in the catalog", func() (bool, string) {
		svcs, _, err := admin.Health().Service("web", "", true, nil)
		return err == nil && len(svcs) == 1, fmt.Sprint(err)
	})

	token := func(policyFile string) string {
		if policyFile == "" {
			tok, _, err := admin.ACL().TokenCreate(&api.ACLToken{Description: "no policy"}, nil)
			require.NoError(t, err)
			return tok.SecretID
		}
		rules, err := os.ReadFile(filepath.Join("../../consul.d/acl", policyFile))
		require.NoError(t, err)
		p, _, err := admin.ACL().PolicyCreate(&api.ACLPolicy{Name: strings.TrimSuffix(policyFile, ".hcl"), Rules: string(rules)}, nil)
		require.NoError(t, err, "%s parses as Consul ACL rules", policyFile)
		tok, _, err := admin.ACL().TokenCreate(&api.ACLToken{Description: policyFile, Policies: []*api.ACLTokenPolicyLink{{ID: p.ID}}}, nil)
		require.NoError(t, err)
		return tok.SecretID
	}
	dir := t.TempDir()
	config := func(name, tok string) string {
		tf := filepath.Join(dir, name+".token")
		require.NoError(t, os.WriteFile(tf, []byte(tok+"\n"), 0o600))
		cfg := filepath.Join(dir, name+".hcl")
		require.NoError(t, os.WriteFile(cfg, []byte(fmt.Sprintf(`consul {
  address    = %q
  token_file = %q
}
deploy "web" {
  command          = ["/bin/sh", "-c", "echo deployed $REHYDRATE_DEPLOY_VERSION"]
  health_timeout   = "10s"
  min_healthy_time = "200ms"
}
`, node.HTTPAddr(), tf)), 0o644))
		return cfg
	}
	bare := config("bare", token(""))
	handlerCfg := config("handler", token("deploy-handler.hcl"))
	rolloutCfg := config("rollout", token("deploy-rollout.hcl"))
	envOf := func(stdin string, out *strings.Builder) app.Env {
		return app.Env{Stdin: strings.NewReader(stdin), Stdout: out, Stderr: out, Getenv: func(k string) string {
			if strings.HasPrefix(k, "CONSUL_HTTP_") || k == app.EnvConfig {
				return ""
			}
			return os.Getenv(k)
		}}
	}
	rollout := func(cfg string) (int, string) {
		var out strings.Builder
		code := command.Rehydrate([]string{"deploy", "start", "-config", cfg, "--service", "web", "--version", "v2", "--node-timeout", "30s"}, envOf("", &out))
		return code, out.String()
	}
	handle := func(cfg string, pair *api.KVPair) (int, string) {
		b, err := json.Marshal(pair)
		require.NoError(t, err)
		var out strings.Builder
		code := deploy.Main([]string{"-config", cfg}, envOf(string(b), &out))
		return code, out.String()
	}
	desiredKey := deploy.NodeKey("web", node.Name, deploy.KeyDesired)

	// Without the policies: refused by Consul, nothing written.
	code, out := rollout(bare)
	assert.Equal(t, app.ExitConsul, code, out)
	assert.Contains(t, out, "Permission denied")
	_, err = admin.KV().Put(&api.KVPair{Key: desiredKey, Value: []byte(`{"id":"by-hand","version":"v1"}`)}, nil)
	require.NoError(t, err)
	pair, _, err := admin.KV().Get(desiredKey, nil)
	require.NoError(t, err)
	code, out = handle(bare, pair)
	assert.Equal(t, app.ExitConsul, code, out)
	assert.Contains(t, out, "Permission denied")
	keys, _, err := admin.KV().Keys("deploy/", "", nil)
	require.NoError(t, err)
	assert.Equal(t, []string{desiredKey}, keys, "nothing but the desired value written by hand")

	// With them: the rollout writes the node's desired value, the handler (run here
	// by hand, as the node's watch would) deploys, and the rollout sees it succeed.
	done := make(chan struct{})
	var rcode int
	var rout string
	go func() {
		defer close(done)
		rcode, rout = rollout(rolloutCfg)
	}()
	testcluster.WaitFor(t, 20*time.Second, "the rollout's desired value", func() (bool, string) {
		pair, _, err = admin.KV().Get(desiredKey, nil)
		return err == nil && pair != nil && strings.Contains(string(pair.Value), `"v2"`), fmt.Sprint(err)
	})
	code, out = handle(handlerCfg, pair)
	require.Equal(t, app.ExitOK, code, out)
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("the rollout did not end within 60s")
	}
	require.Equal(t, app.ExitOK, rcode, rout)
	cur, _, err := admin.KV().Get(deploy.NodeKey("web", node.Name, deploy.KeyCurrent), nil)
	require.NoError(t, err)
	require.NotNil(t, cur)
	assert.Equal(t, "v2", string(cur.Value))
	for _, o := range []string{out, rout} {
		for _, f := range []string{handlerCfg, rolloutCfg, bare} {
			tok, _ := os.ReadFile(strings.TrimSuffix(f, ".hcl") + ".token")
			assert.NotContains(t, o, strings.TrimSpace(string(tok)), "a token is never printed")
		}
	}
}
