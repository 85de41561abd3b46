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

	consuld "github.com/consul-rehydrate/consul-rehydrate/consul.d"
	"github.com/consul-rehydrate/consul-rehydrate/internal/app"
	"github.com/consul-rehydrate/consul-rehydrate/internal/command"
	"github.com/consul-rehydrate/consul-rehydrate/internal/deploy"
	"github.com/consul-rehydrate/consul-rehydrate/test/testcluster"
)

// TestDeployPolicies_AreEnoughForARolloutAndATokenWithoutThemIsRefused runs a rollout of "web" to
// one node on a cluster with ACLs on and default deny: the rollout with a token of
// consul.d/acl/deploy-rollout.hcl, the node's handler with one of
// consul.d/acl/deploy-handler.hcl, each rendered for the node and "web". Tokens without
// them, or with the handler's rendered for another node, are refused and change
// nothing.
func TestDeployPolicies_AreEnoughForARolloutAndATokenWithoutThemIsRefused(t *testing.T) {
	c := startACLCluster(t, testcluster.Options{Servers: 1, Clients: 1})
	node := c.Clients[0]
	admin := node.Client()
	require.NoError(t, admin.Agent().ServiceRegister(&api.AgentServiceRegistration{
		Name: "web", Port: 8080, Check: &api.AgentServiceCheck{CheckID: "web-ttl", TTL: "10m", Status: api.HealthPassing},
	}))
	testcluster.WaitFor(t, 20*time.Second, "web in the catalog", func() (bool, string) {
		svcs, _, err := admin.Health().Service("web", "", true, nil)
		return err == nil && len(svcs) == 1, fmt.Sprint(err)
	})

	dir := t.TempDir()
	config := func(name, tok string) string {
		tf := filepath.Join(dir, name+".token")
		require.NoError(t, os.WriteFile(tf, []byte(tok+"\n"), 0o600))
		cfg := filepath.Join(dir, name+".hcl")
		require.NoError(t, os.WriteFile(cfg, []byte(fmt.Sprintf(`consul {
  address    = %q
  token_file = %q
  tls {
    ca_file = %q
  }
}
deploy "web" {
  command          = ["/bin/sh", "-c", "echo deployed $REHYDRATE_DEPLOY_VERSION"]
  health_timeout   = "10s"
  min_healthy_time = "200ms"
}
`, node.APIAddr(), tf, c.CAFile())), 0o644))
		return cfg
	}
	// The rollout talks to node's agent, so its lock session is on node.
	vars := consuld.PolicyVars{Node: node.Name, Service: "web"}
	bare := config("bare", bareToken(t, admin))
	handlerCfg := config("handler", policyToken(t, admin, consuld.PolicyDeployHandler, vars))
	rolloutCfg := config("rollout", policyToken(t, admin, consuld.PolicyDeployRollout, vars))
	otherNodeCfg := config("other-node", policyToken(t, admin, consuld.PolicyDeployHandler, consuld.PolicyVars{Node: node.Name + "0", Service: "web"}))
	envOf := func(stdin string, out *strings.Builder) app.Env {
		return app.Env{Stdin: strings.NewReader(stdin), Stdout: out, Stderr: out, Getenv: func(k string) string {
			if strings.HasPrefix(k, "CONSUL_") || k == app.EnvConfig {
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

	// Without the policies: refused, nothing written. Consul filters out of a read what
	// the token may not see, so to a token without service:read the catalog has no
	// web at all; whichever the rollout meets first, it stops.
	code, out := rollout(bare)
	assert.NotEqual(t, app.ExitOK, code, out)
	assert.Regexp(t, `Permission denied|no instance of service web in the catalog`, out)
	_, err := admin.KV().Put(&api.KVPair{Key: desiredKey, Value: []byte(`{"id":"by-hand","version":"v1"}`)}, nil)
	require.NoError(t, err)
	var pair *api.KVPair
	pair, _, err = admin.KV().Get(desiredKey, nil)
	require.NoError(t, err)
	code, out = handle(bare, pair)
	assert.Equal(t, app.ExitConsul, code, out)
	assert.Contains(t, out, "Permission denied")
	// The handler's policy rendered for another node ("client-10" against
	// "client-1": a prefix of one name must not cover the other) takes no lock here.
	code, out = handle(otherNodeCfg, pair)
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
		for _, f := range []string{handlerCfg, rolloutCfg, bare, otherNodeCfg} {
			tok, _ := os.ReadFile(strings.TrimSuffix(f, ".hcl") + ".token")
			assert.NotContains(t, o, strings.TrimSpace(string(tok)), "a token is never printed")
		}
	}
}

// TestDeployPolicies_ReachOnlyTheirOwnNodeServiceAndSessions holds the deploy-handler
// policy rendered for client-1 and "web", and the deploy-rollout policy rendered for
// client-1 and "web", against what the old shipped policies allowed. The handler
// writes its own node's keys but not its desired key (whoever writes a node's desired
// key runs code there), nor any other node's keys — "client-10" included, whose name
// starts with "client-1" —, nor another service's; it maintains web but not another
// service on its node. Neither token may destroy, renew or create a session on another
// node: another application's lock stays.
func TestDeployPolicies_ReachOnlyTheirOwnNodeServiceAndSessions(t *testing.T) {
	c := startACLCluster(t, testcluster.Options{Servers: 1, Clients: 1})
	server, node := c.Servers[0], c.Clients[0]
	admin := node.Client()
	for _, svc := range []string{"web", "api"} {
		require.NoError(t, admin.Agent().ServiceRegister(&api.AgentServiceRegistration{
			Name: svc, Port: 8080, Check: &api.AgentServiceCheck{CheckID: svc + "-ttl", TTL: "10m", Status: api.HealthPassing},
		}))
	}
	testcluster.WaitFor(t, 20*time.Second, "web in the catalog", func() (bool, string) {
		svcs, _, err := admin.Health().Service("web", "", true, nil)
		return err == nil && len(svcs) == 1, fmt.Sprint(err)
	})
	vars := consuld.PolicyVars{Node: node.Name, Service: "web"}
	h := as(t, node, policyToken(t, admin, consuld.PolicyDeployHandler, vars))
	r := as(t, node, policyToken(t, admin, consuld.PolicyDeployRollout, vars))

	// The handler's job: its node's status, current and lock, under its own session;
	// web's maintenance; web's health on its node; its agent's name.
	for _, name := range []string{deploy.KeyStatus, deploy.KeyCurrent} {
		_, err := h.KV().Put(&api.KVPair{Key: deploy.NodeKey("web", node.Name, name), Value: []byte("x")}, nil)
		require.NoError(t, err, "the handler writes its node's %s", name)
	}
	own, _, err := h.Session().Create(&api.SessionEntry{Name: "node lock", TTL: "10m"}, nil)
	require.NoError(t, err, "a session on its own node")
	ok, _, err := h.KV().Acquire(&api.KVPair{Key: deploy.NodeKey("web", node.Name, deploy.KeyLock), Session: own}, nil)
	require.NoError(t, err)
	assert.True(t, ok, "its node's lock")
	_, err = h.Session().Destroy(own, nil)
	require.NoError(t, err)
	require.NoError(t, h.Agent().EnableServiceMaintenance("web", "test"))
	require.NoError(t, h.Agent().DisableServiceMaintenance("web"))
	entries, _, err := h.Health().Service("web", "", false, nil)
	require.NoError(t, err)
	assert.Len(t, entries, 1, "web's health on its node")
	name, err := h.Agent().NodeName()
	require.NoError(t, err)
	assert.Equal(t, node.Name, name)

	// ...and nothing else.
	for _, key := range []string{
		deploy.NodeKey("web", node.Name, deploy.KeyDesired), // its own desired key: the rollout's
		deploy.NodeKey("web", "client-2", deploy.KeyDesired),
		deploy.NodeKey("web", "client-2", deploy.KeyStatus),
		deploy.NodeKey("web", node.Name+"0", deploy.KeyDesired),
		deploy.NodeKey("api", node.Name, deploy.KeyStatus),
		deploy.ServiceKey("web", "rollout"),
		deploy.ServiceKey("web", deploy.KeyLock),
	} {
		_, err := h.KV().Put(&api.KVPair{Key: key, Value: []byte(`{"id":"evil","version":"v6"}`)}, nil)
		assertDenied(t, err, "key:write", "the handler writing "+key)
	}
	err = h.Agent().EnableServiceMaintenance("api", "test")
	assertDenied(t, err, "service:write", "maintenance of another service")

	// The rollout's job: every web node's desired key, its lock and record, under a
	// session on the node of the agent it talks to; web's nodes and health.
	for _, key := range []string{deploy.NodeKey("web", node.Name, deploy.KeyDesired), deploy.NodeKey("web", "client-2", deploy.KeyDesired), deploy.ServiceKey("web", "rollout")} {
		_, err := r.KV().Put(&api.KVPair{Key: key, Value: []byte(`{}`)}, nil)
		require.NoError(t, err, "the rollout writes %s", key)
	}
	rs, _, err := r.Session().Create(&api.SessionEntry{Name: "rollout lock", TTL: "10m"}, nil)
	require.NoError(t, err, "a session on the node of its agent")
	_, err = r.Session().Destroy(rs, nil)
	require.NoError(t, err)
	entries, _, err = r.Health().Service("web", "", false, nil)
	require.NoError(t, err)
	assert.Len(t, entries, 1, "web's nodes and health")
	// ...and no other service's keys.
	_, err = r.KV().Put(&api.KVPair{Key: deploy.NodeKey("api", node.Name, deploy.KeyDesired), Value: []byte(`{}`)}, nil)
	assertDenied(t, err, "key:write", "the rollout writing another service's desired key")
	_, err = r.KV().Put(&api.KVPair{Key: "deploy/webx/rollout", Value: []byte(`{}`)}, nil)
	assertDenied(t, err, "key:write", "the rollout writing deploy/webx/")

	// Sessions on another node — another application's lock — are out of reach of both.
	other := otherSession(t, admin, server.Name)
	for who, cl := range map[string]*api.Client{"handler": h, "rollout": r} {
		_, err = cl.Session().Destroy(other, nil)
		assertDenied(t, err, "session:write", "the "+who+" destroying a session on "+server.Name)
		_, _, err = cl.Session().Renew(other, nil)
		assertDenied(t, err, "", "the "+who+" renewing a session on "+server.Name)
		_, _, err = cl.Session().Create(&api.SessionEntry{Node: server.Name, Name: "x"}, nil)
		assertDenied(t, err, "session:write", "the "+who+" creating a session on "+server.Name)
	}
	assertSessionLives(t, admin, other)
}
