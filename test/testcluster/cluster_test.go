package testcluster

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/consul/api"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestCluster_LeaderCrashElectsNewLeaderAndRestartHeals(t *testing.T) {
	t.Parallel()
	c := Start(t, Options{Servers: 3, Clients: 1})

	// The cluster works end to end: a write through the client agent is readable
	// consistently from a server.
	_, err := c.Clients[0].Client().KV().Put(&api.KVPair{Key: "probe", Value: []byte("1")}, nil)
	require.NoError(t, err)
	kv, _, err := c.Servers[0].Client().KV().Get("probe", &api.QueryOptions{RequireConsistent: true})
	require.NoError(t, err)
	require.NotNil(t, kv)
	assert.Equal(t, "1", string(kv.Value))

	old := c.Leader(t)
	old.Kill(t)
	require.False(t, old.Running())

	newLeader := c.WaitForLeader(t, 30*time.Second)
	assert.NotEqual(t, old.Name, newLeader.Name, "a killed leader cannot lead")
	c.WaitUnhealthy(t, 30*time.Second)
	h, err := c.Health()
	require.NoError(t, err)
	assert.False(t, h.Healthy)

	old.Restart(t)
	c.WaitHealthy(t, 60*time.Second)
	h, err = c.Health()
	require.NoError(t, err)
	assert.True(t, h.Healthy)
	assert.Len(t, h.Servers, 3)
}

func TestCluster_GracefulLeaveShrinksRaftConfiguration(t *testing.T) {
	t.Parallel()
	c := Start(t, Options{Servers: 3})

	var follower *Agent
	leader := c.Leader(t)
	for _, s := range c.Servers {
		if s != leader {
			follower = s
			break
		}
	}
	follower.Leave(t)
	require.False(t, follower.Running())

	WaitFor(t, 30*time.Second, "raft configuration of 2", func() (bool, string) {
		cfg, err := leader.Client().Operator().RaftGetConfiguration(nil)
		if err != nil {
			return false, err.Error()
		}
		return len(cfg.Servers) == 2, "servers in raft: " + itoa(len(cfg.Servers))
	})
	// A leave is not a failure: the two remaining servers are a healthy cluster.
	c.WaitHealthy(t, 30*time.Second)
}

func TestAllocateBlock_NeverHandsOutTheSameBlockTwice(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 5; i++ {
		b := AllocateBlock(t)
		require.False(t, seen[b.Addr(1)], "block %s handed out twice", b.Addr(1))
		seen[b.Addr(1)] = true
		assert.True(t, b.Prefix().Contains(mustAddr(t, b.Addr(200))))
		assert.False(t, b.Prefix().Contains(mustAddr(t, b.Addr(1))), "the harness's own agents stay outside Prefix")
	}
}

func itoa(i int) string { return fmt.Sprint(i) }

func mustAddr(t *testing.T, s string) netip.Addr {
	t.Helper()
	a, err := netip.ParseAddr(s)
	require.NoError(t, err)
	return a
}

// A secure cluster speaks HTTPS only, with a certificate its CA signed; refuses a
// request without a token; and runs each agent's watches with the token
// HandlerPolicy gives it, its DNS with DNSPolicy's, and registers its files'
// services with its own registration token.
func TestCluster_SecureServesHTTPSOnlyAndDeniesByDefault(t *testing.T) {
	t.Parallel()
	c := Start(t, Options{
		Servers: 1, Clients: 1, Secure: true,
		Files: func(a *Agent) map[string]string {
			if a.Server {
				return nil
			}
			return map[string]string{"watch.hcl": fmt.Sprintf(`
service {
  name = "probe-svc"
  port = 9999
}
watches = [{
  type = "key"
  key  = "probe/watched"
  args = ["/bin/sh", "-c", "cat > %[1]s/payload.tmp; env > %[1]s/env; mv %[1]s/payload.tmp %[1]s/payload"]
}]
`, a.Dir)}
		},
		Services: func(a *Agent) []string {
			if a.Server {
				return nil
			}
			return []string{"probe-svc"}
		},
		HandlerPolicy: func(a *Agent) string { return `key "probe/watched" { policy = "read" }` },
		DNSPolicy: func(a *Agent) string {
			return `service "probe-svc" { policy = "read" }` + "\n" + `node_prefix "" { policy = "read" }`
		},
	})
	client := c.Clients[0]
	require.NotEmpty(t, c.CAFile())
	assert.Equal(t, "https://"+client.IP+":8501", client.APIAddr())

	// No plain HTTP at all.
	for _, a := range c.Agents() {
		_, err := (&http.Client{Timeout: 5 * time.Second}).Get("http://" + a.HTTPAddr() + "/v1/status/leader")
		require.Error(t, err, "%s serves plain HTTP", a.Name)
		assert.Contains(t, err.Error(), "connection refused")
	}
	// HTTPS with a certificate of the cluster's CA only.
	_, err := (&http.Client{Timeout: 5 * time.Second}).Get("https://" + client.HTTPSAddr() + "/v1/status/leader")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "certificate signed by unknown authority")

	// No token: refused, and nothing written.
	anon := anonymous(t, client)
	_, err = anon.KV().Put(&api.KVPair{Key: "probe/anon", Value: []byte("x")}, nil)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "403")
	kv, _, err := client.Client().KV().Get("probe/anon", nil)
	require.NoError(t, err)
	assert.Nil(t, kv)

	// A token of a policy can do what it says and nothing more.
	tok := c.Token(t, "probe-writer", `key_prefix "probe/w/" { policy = "write" }`)
	scoped := anonymous(t, client)
	scoped.AddHeader("X-Consul-Token", tok)
	_, err = scoped.KV().Put(&api.KVPair{Key: "probe/w/1", Value: []byte("x")}, nil)
	require.NoError(t, err)
	_, err = scoped.KV().Put(&api.KVPair{Key: "probe/other", Value: []byte("x")}, nil)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "Permission denied")
	tf := c.TokenFile(t, "probe-reader", `key_prefix "probe/" { policy = "read" }`)
	fi, err := os.Stat(tf)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())

	// The agent registered its file's service with its registration token.
	WaitFor(t, 20*time.Second, "probe-svc in the catalog", func() (bool, string) {
		svcs, _, err := c.Client(t).Catalog().Service("probe-svc", "", nil)
		return err == nil && len(svcs) == 1, fmt.Sprintf("%d, %v", len(svcs), err)
	})
	// Its key watch reads with the handler token, and its handler gets the agent's
	// HTTPS address, CA and that token's file.
	_, err = c.Client(t).KV().Put(&api.KVPair{Key: "probe/watched", Value: []byte("hello")}, nil)
	require.NoError(t, err)
	WaitFor(t, 30*time.Second, "the watch's handler to see the value", func() (bool, string) {
		b, err := os.ReadFile(filepath.Join(client.Dir, "payload"))
		return err == nil && strings.Contains(string(b), `"Key":"probe/watched"`), fmt.Sprintf("%s %v", b, err)
	})
	env, err := os.ReadFile(filepath.Join(client.Dir, "env"))
	require.NoError(t, err)
	for _, kv := range client.Env(client.HandlerTokenFile()) {
		assert.Contains(t, strings.Split(string(env), "\n"), kv)
	}
	b, err := os.ReadFile(client.HandlerTokenFile())
	require.NoError(t, err)
	assert.NotEqual(t, c.opts.Token, strings.TrimSpace(string(b)), "the handler token is not the management token")

	// DNS answers with the agent's DNS token.
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "udp", client.DNSAddr())
	}}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	hosts, err := r.LookupHost(ctx, "probe-svc.service.consul.")
	require.NoError(t, err)
	assert.Equal(t, []string{client.IP}, hosts)
}

// anonymous returns an HTTPS client of a, verified with the cluster's CA, that sends
// no token.
func anonymous(t *testing.T, a *Agent) *api.Client {
	t.Helper()
	cfg := api.DefaultConfig()
	cfg.Address, cfg.Scheme, cfg.Token, cfg.TokenFile = a.HTTPSAddr(), "https", "", ""
	cfg.TLSConfig = api.TLSConfig{CAFile: a.cluster.CAFile()}
	cl, err := api.NewClient(cfg)
	require.NoError(t, err)
	return cl
}
